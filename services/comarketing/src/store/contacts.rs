//! Contacts, the per-member lock that serialises cap decisions, quiet hours and policies.

use std::collections::HashMap;

use lianyu_kit::KitError;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait,
    QueryFilter, QuerySelect, sea_query::ExprTrait, sea_query::OnConflict,
};

use super::{
    entities::{contact, contact_lock, contact_policy, member, quiet_hours},
    storage,
};
use crate::domain::contact::{DEFAULT_POLICY, Policy, QuietHours};

/// Takes the member's contact lock to the end of `txn`: concurrent requests for one member,
/// from any partner and any replica, decide one after another (PostgreSQL holds the row lock
/// the update takes; SQLite has one writer).
pub(crate) async fn lock_member(conn: &impl ConnectionTrait, member: i32) -> Result<(), KitError> {
    if conn.get_database_backend() == sea_orm::DbBackend::Sqlite {
        // One writer: the transaction already excludes every other (and a second process's
        // write to the file waits for it, then re-runs on a changed snapshot).
        return Ok(());
    }
    contact_lock::Entity::insert(contact_lock::ActiveModel {
        member_idx: Set(member),
        version: Set(0),
    })
    .on_conflict(
        OnConflict::column(contact_lock::Column::MemberIdx)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .map_err(storage)?;
    contact_lock::Entity::update_many()
        .col_expr(
            contact_lock::Column::Version,
            sea_orm::sea_query::Expr::col(contact_lock::Column::Version).add(1),
        )
        .filter(contact_lock::Column::MemberIdx.eq(member))
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// When a contact happened for the cap: sent, else requested.
fn contact_time() -> sea_orm::sea_query::Expr {
    use sea_orm::sea_query::{Expr, Func};
    Expr::expr(Func::coalesce([
        Expr::col(contact::Column::SentAt),
        Expr::col(contact::Column::RequestedAt),
    ]))
}

/// The member's contacts that count against the cap at `now`: sent, or held and not yet
/// expired, within the last `window` milliseconds. The one definition of the rule.
fn counting(member: i32, now: i64, window: i64) -> sea_orm::Select<contact::Entity> {
    use sea_orm::sea_query::Condition;
    contact::Entity::find()
        .filter(contact::Column::MemberIdx.eq(member))
        .filter(contact::Column::RequestedAt.gt(now - window))
        .filter(
            Condition::any()
                .add(contact::Column::SentAt.is_not_null())
                .add(contact::Column::ExpiresAt.gt(now)),
        )
        .filter(contact_time().gt(now - window))
}

/// How the member's contacts stand against a cap of `max` in `window` milliseconds at `now`:
/// how many count (sent, or held and not yet expired, within the window) and, when they are
/// `max` or more, the time of the `max`-th most recent — when it leaves the window a slot
/// frees. One row read for an admitted request, two for a refused one, however many contacts
/// the member has.
pub(crate) async fn cap_standing(
    conn: &impl ConnectionTrait,
    member: i32,
    now: i64,
    window: i64,
    max: i32,
) -> Result<(u64, Option<i64>), KitError> {
    use sea_orm::{Order, PaginatorTrait, QueryOrder};
    let counting = counting(member, now, window);
    let counted = counting.clone().count(conn).await.map_err(storage)?;
    let max = u64::try_from(max).unwrap_or(0);
    if counted < max || max == 0 {
        return Ok((counted, None));
    }
    let nth: Option<i64> = counting
        .select_only()
        .expr(contact_time())
        .order_by(contact_time(), Order::Desc)
        .offset(max - 1)
        .limit(1)
        .into_tuple()
        .one(conn)
        .await
        .map_err(storage)?;
    Ok((counted, nth))
}

/// A held contact.
pub(crate) struct NewContact<'a> {
    pub(crate) id: &'a str,
    pub(crate) member: i32,
    pub(crate) partner: &'a str,
    pub(crate) campaign: &'a str,
    pub(crate) channel: i32,
    pub(crate) at: i64,
    pub(crate) expires_at: i64,
}

/// Holds a slot for `c` if fewer than `max` of the member's contacts count in `window`
/// milliseconds at `c.at` (see [`cap_standing`]), under the member's lock ([`lock_member`]):
/// how many count with the new one when it was held, `None` when the cap was reached and
/// nothing was written. On SQLite the count, the insert and the check of what happened go to
/// the writer in one trip; elsewhere they are two statements.
pub(crate) async fn hold_under_cap(
    conn: &impl ConnectionTrait,
    c: &NewContact<'_>,
    window: i64,
    max: i32,
) -> Result<Option<u64>, KitError> {
    use sea_orm::{FromQueryResult, QueryTrait, Statement};
    if conn.get_database_backend() != DbBackend::Sqlite {
        let (counted, _) = cap_standing(conn, c.member, c.at, window, max).await?;
        if counted >= u64::try_from(max).unwrap_or(0) {
            return Ok(None);
        }
        contact_row(c).insert(conn).await.map_err(storage)?;
        return Ok(Some(counted + 1));
    }
    // The counting rule of `cap_standing`, as SQL with its values, twice: in the condition of
    // the insert and in the count after it.
    let count = DbBackend::Sqlite.build(
        &counting(c.member, c.at, window)
            .select_only()
            .expr(sea_orm::sea_query::Expr::cust("COUNT(*)"))
            .into_query(),
    );
    let count_values = count.values.map(|v| v.0).unwrap_or_default();
    let mut values: Vec<sea_orm::Value> = vec![
        c.id.into(),
        c.member.into(),
        c.partner.into(),
        c.campaign.into(),
        c.channel.into(),
        c.at.into(),
        c.expires_at.into(),
    ];
    values.extend(count_values.iter().cloned());
    values.push(max.into());
    values.extend(count_values);
    values.push(c.id.into());
    let counting_sql = count.sql;
    let sql = format!(
        "INSERT INTO contacts \
         (id, member_idx, partner, campaign_id, channel, requested_at, expires_at, sent_at) \
         SELECT ?, ?, ?, ?, ?, ?, ?, NULL WHERE ({counting_sql}) < ?; \
         SELECT ({counting_sql}) AS counted, \
         EXISTS (SELECT 1 FROM contacts WHERE id = ?) AS held"
    );
    #[derive(FromQueryResult)]
    struct Outcome {
        counted: i64,
        held: bool,
    }
    let outcome = Outcome::find_by_statement(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        sql,
        values,
    ))
    .one(conn)
    .await
    .map_err(storage)?
    .ok_or_else(|| KitError::Internal("the cap's count returned no row".into()))?;
    Ok(outcome
        .held
        .then(|| u64::try_from(outcome.counted).unwrap_or(0)))
}

fn contact_row(c: &NewContact<'_>) -> contact::ActiveModel {
    contact::ActiveModel {
        id: Set(c.id.to_owned()),
        member_idx: Set(c.member),
        partner: Set(c.partner.to_owned()),
        campaign_id: Set(c.campaign.to_owned()),
        channel: Set(c.channel),
        requested_at: Set(c.at),
        expires_at: Set(c.expires_at),
        sent_at: Set(None),
    }
}

/// A contact of `partner` as stored: (member, expires_at, sent_at, campaign).
pub(crate) async fn contact_of(
    conn: &impl ConnectionTrait,
    partner: &str,
    id: &str,
) -> Result<Option<(i32, i64, Option<i64>, String)>, KitError> {
    Ok(contact::Entity::find_by_id(id)
        .filter(contact::Column::Partner.eq(partner))
        .one(conn)
        .await
        .map_err(storage)?
        .map(|r| (r.member_idx, r.expires_at, r.sent_at, r.campaign_id)))
}

/// Marks a held contact sent.
pub(crate) async fn mark_sent(
    conn: &impl ConnectionTrait,
    id: &str,
    at: i64,
) -> Result<(), KitError> {
    contact::Entity::update_many()
        .col_expr(contact::Column::SentAt, sea_orm::sea_query::Expr::value(at))
        .filter(contact::Column::Id.eq(id))
        .filter(contact::Column::SentAt.is_null())
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Sent contacts under a campaign.
pub(crate) async fn campaign_contacts(
    conn: &impl ConnectionTrait,
    campaign: &str,
) -> Result<i64, KitError> {
    use sea_orm::PaginatorTrait;
    let n = contact::Entity::find()
        .filter(contact::Column::CampaignId.eq(campaign))
        .filter(contact::Column::SentAt.is_not_null())
        .count(conn)
        .await
        .map_err(storage)?;
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// What RequestContact reads about a member before it decides, for one asking partner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ContactFacts {
    /// The member's dense number; `None` for a member comarketing never heard of (no consent
    /// of theirs has reached it, no quiet hours set).
    pub(crate) number: Option<i32>,
    /// Partners whose consent for `purpose` to the asking partner the feed has shown.
    pub(crate) grantors: Vec<String>,
    /// The member's quiet hours, if set.
    pub(crate) quiet: Option<QuietHours>,
}

/// [`ContactFacts`] of several members (mesh ids without "meshMembers/") for one `grantee`
/// and `purpose`: three queries however many members (their numbers, then their consents and
/// quiet hours side by side). A member never heard of is left out.
pub(crate) async fn contact_facts(
    conn: &impl ConnectionTrait,
    mesh_members: Vec<String>,
    grantee: &str,
    purpose: i32,
) -> Result<HashMap<String, ContactFacts>, KitError> {
    let numbered: Vec<(i32, String)> = member::Entity::find()
        .filter(member::Column::MeshMember.is_in(mesh_members))
        .select_only()
        .columns([member::Column::Idx, member::Column::MeshMember])
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    if numbered.is_empty() {
        return Ok(HashMap::new());
    }
    let numbers: Vec<i32> = numbered.iter().map(|(n, _)| *n).collect();
    let unsigned: Vec<u32> = numbers
        .iter()
        .filter_map(|n| u32::try_from(*n).ok())
        .collect();
    let consents = super::grounds(conn, &unsigned, grantee, purpose);
    let quiet = async {
        quiet_hours::Entity::find()
            .filter(quiet_hours::Column::MemberIdx.is_in(numbers))
            .all(conn)
            .await
            .map_err(storage)
    };
    let (consents, quiet) = futures::try_join!(consents, quiet)?;
    let mut by_number: HashMap<i32, ContactFacts> = numbered
        .iter()
        .map(|(n, _)| {
            let facts = ContactFacts {
                number: Some(*n),
                ..Default::default()
            };
            (*n, facts)
        })
        .collect();
    for (n, collectors) in consents {
        if let Some(f) = i32::try_from(n).ok().and_then(|n| by_number.get_mut(&n)) {
            f.grantors = collectors;
        }
    }
    for q in quiet {
        if let Some(f) = by_number.get_mut(&q.member_idx) {
            f.quiet = Some(QuietHours {
                start_minute: q.start_minute,
                end_minute: q.end_minute,
                utc_offset_minutes: q.utc_offset_minutes,
            });
        }
    }
    Ok(numbered
        .into_iter()
        .filter_map(|(n, mesh)| by_number.remove(&n).map(|f| (mesh, f)))
        .collect())
}

/// Sets or clears the member's quiet hours.
pub(crate) async fn set_quiet_hours(
    conn: &impl ConnectionTrait,
    member: i32,
    q: Option<QuietHours>,
) -> Result<(), KitError> {
    quiet_hours::Entity::delete_by_id(member)
        .exec(conn)
        .await
        .map_err(storage)?;
    if let Some(q) = q {
        quiet_hours::ActiveModel {
            member_idx: Set(member),
            start_minute: Set(q.start_minute),
            end_minute: Set(q.end_minute),
            utc_offset_minutes: Set(q.utc_offset_minutes),
        }
        .insert(conn)
        .await
        .map_err(storage)?;
    }
    Ok(())
}

/// The policy named `name` ("default" or an alliance id), else the default's, else the
/// built-in default: one query.
pub(crate) async fn policy(conn: &impl ConnectionTrait, name: &str) -> Result<Policy, KitError> {
    let rows = contact_policy::Entity::find()
        .filter(contact_policy::Column::Name.is_in([name, "default"]))
        .all(conn)
        .await
        .map_err(storage)?;
    let named = |n: &str| rows.iter().find(|r| r.name == n);
    Ok(named(name)
        .or_else(|| named("default"))
        .map_or(DEFAULT_POLICY, |r| Policy {
            max_contacts: r.max_contacts,
            window_days: r.window_days,
        }))
}

/// Sets a policy.
pub(crate) async fn set_policy(
    conn: &impl ConnectionTrait,
    name: &str,
    p: Policy,
) -> Result<(), KitError> {
    contact_policy::Entity::insert(contact_policy::ActiveModel {
        name: Set(name.to_owned()),
        max_contacts: Set(p.max_contacts),
        window_days: Set(p.window_days),
    })
    .on_conflict(
        OnConflict::column(contact_policy::Column::Name)
            .update_columns([
                contact_policy::Column::MaxContacts,
                contact_policy::Column::WindowDays,
            ])
            .to_owned(),
    )
    .exec(conn)
    .await
    .map_err(storage)?;
    Ok(())
}
