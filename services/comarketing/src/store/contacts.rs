//! Contacts, the per-member lock that serialises cap decisions, quiet hours and policies.

use lianyu_kit::{KitError, writes::Writes};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Alias, Expr, ExprTrait, Func, OnConflict, Query, SelectStatement, UnionType},
};

use super::{
    entities::{consent, contact, contact_lock, contact_policy, member, quiet_hours},
    storage,
};
use crate::domain::contact::{DAY, DEFAULT_POLICY, Policy, QuietHours};

/// The longest window a policy may have ([`Policy::check`]): what one read of a member's
/// contacts covers, whichever policy then applies.
const LONGEST_WINDOW: i64 = 90 * DAY;

/// What RequestContact decides from, read in **one** statement before anything is held: on
/// SQLite every statement is a hand-off to a connection's thread and back, and these were
/// four reads per request, then a fifth in the transaction.
#[derive(Clone, Debug)]
pub(crate) struct ContactFacts {
    /// The member's number, if the service has heard of them.
    pub(crate) member: Option<i32>,
    pub(crate) quiet: Option<QuietHours>,
    /// The partners whose consent to the grantee for the purpose the mesh feed has shown.
    pub(crate) grounds: Vec<String>,
    /// The policy asked for, else the default's, else the built-in default.
    pub(crate) policy: Policy,
    /// The times of the member's contacts that count at `now` ([`counted_contacts`]) within
    /// the policy's window.
    pub(crate) counted: Vec<i64>,
}

/// One branch of [`contact_facts`]'s union: `(kind, a, b, c, s)`.
fn branch(kind: &str, a: Expr, b: Expr, c: Expr, s: Expr) -> SelectStatement {
    let big = |e: Expr| Func::cast_as(e, Alias::new("BIGINT"));
    Query::select()
        .expr_as(Expr::val(kind), Alias::new("kind"))
        .expr_as(big(a), Alias::new("a"))
        .expr_as(big(b), Alias::new("b"))
        .expr_as(big(c), Alias::new("c"))
        .expr_as(s, Alias::new("s"))
        .to_owned()
}

/// [`ContactFacts`] of the member `mesh_member` for `grantee`'s `purpose` under the policy
/// named `policy`, at `now`.
pub(crate) async fn contact_facts(
    conn: &impl ConnectionTrait,
    mesh_member: &str,
    grantee: &str,
    purpose: i32,
    policy: &str,
    now: i64,
) -> Result<ContactFacts, KitError> {
    let zero = || Expr::val(0i64);
    let none = || Expr::val("");
    let of_member = |select: &mut SelectStatement, idx: Expr| {
        select.and_where(
            idx.in_subquery(
                Query::select()
                    .column(member::Column::Idx)
                    .from(member::Entity)
                    .and_where(Expr::col(member::Column::MeshMember).eq(mesh_member))
                    .to_owned(),
            ),
        );
    };
    let mut select = branch(
        "p",
        Expr::col(contact_policy::Column::MaxContacts),
        Expr::col(contact_policy::Column::WindowDays),
        zero(),
        Expr::col(contact_policy::Column::Name),
    );
    select
        .from(contact_policy::Entity)
        .and_where(Expr::col(contact_policy::Column::Name).is_in([policy, "default"]));
    let mut known = branch("m", Expr::col(member::Column::Idx), zero(), zero(), none());
    known
        .from(member::Entity)
        .and_where(Expr::col(member::Column::MeshMember).eq(mesh_member));
    let mut quiet = branch(
        "q",
        Expr::col(quiet_hours::Column::StartMinute),
        Expr::col(quiet_hours::Column::EndMinute),
        Expr::col(quiet_hours::Column::UtcOffsetMinutes),
        none(),
    );
    quiet.from(quiet_hours::Entity);
    of_member(&mut quiet, Expr::col(quiet_hours::Column::MemberIdx));
    let mut grounds = branch(
        "g",
        zero(),
        zero(),
        zero(),
        Expr::col(consent::Column::Collector),
    );
    grounds
        .from(consent::Entity)
        .and_where(Expr::col(consent::Column::Grantee).eq(grantee))
        .and_where(Expr::col(consent::Column::Purpose).eq(purpose));
    of_member(&mut grounds, Expr::col(consent::Column::MemberIdx));
    let mut counted = branch(
        "c",
        Func::coalesce([
            Expr::col(contact::Column::SentAt),
            Expr::col(contact::Column::RequestedAt),
        ])
        .into(),
        zero(),
        zero(),
        none(),
    );
    counted
        .from(contact::Entity)
        .cond_where(counts_at(now, LONGEST_WINDOW));
    of_member(&mut counted, Expr::col(contact::Column::MemberIdx));
    select.unions([
        (UnionType::All, known),
        (UnionType::All, quiet),
        (UnionType::All, grounds),
        (UnionType::All, counted),
    ]);
    let rows = conn
        .query_all_raw(conn.get_database_backend().build(&select))
        .await
        .map_err(storage)?;
    let (mut member, mut quiet, mut grounds) = (None, None, Vec::new());
    let (mut named, mut default) = (None, None);
    let mut times = Vec::new();
    for row in &rows {
        let kind: String = row.try_get("", "kind").map_err(storage)?;
        let a: i64 = row.try_get("", "a").map_err(storage)?;
        let b: i64 = row.try_get("", "b").map_err(storage)?;
        let c: i64 = row.try_get("", "c").map_err(storage)?;
        let s: String = row.try_get("", "s").map_err(storage)?;
        let small = |v: i64| i32::try_from(v).map_err(|e| KitError::Internal(e.to_string()));
        match kind.as_str() {
            "p" => {
                let p = Policy {
                    max_contacts: small(a)?,
                    window_days: small(b)?,
                };
                if s == policy {
                    named = Some(p);
                } else {
                    default = Some(p);
                }
            }
            "m" => member = Some(small(a)?),
            "q" => {
                quiet = Some(QuietHours {
                    start_minute: small(a)?,
                    end_minute: small(b)?,
                    utc_offset_minutes: small(c)?,
                });
            }
            "g" => grounds.push(s),
            _ => times.push(a),
        }
    }
    let policy = named.or(default).unwrap_or(DEFAULT_POLICY);
    let since = now - policy.window();
    times.retain(|t| *t > since);
    Ok(ContactFacts {
        member,
        quiet,
        grounds,
        policy,
        counted: times,
    })
}

/// The contacts that count at `now` within `window`: sent, or held and not yet expired.
fn counts_at(now: i64, window: i64) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(contact::Column::RequestedAt.gt(now - window))
        .add(
            sea_orm::Condition::any()
                .add(contact::Column::SentAt.is_not_null())
                .add(contact::Column::ExpiresAt.gt(now)),
        )
}

/// A select that finds a row unless `member`'s contacts counting at `now` within `window` are
/// exactly `expected`: the guard ([`lianyu_kit::writes::Writes::guard_none`]) of a contact
/// held on a count read before its transaction.
pub(crate) fn counted_other_than(
    member: i32,
    now: i64,
    window: i64,
    expected: usize,
) -> SelectStatement {
    let expected = i64::try_from(expected).unwrap_or(i64::MAX);
    Query::select()
        .expr(Expr::col(contact::Column::MemberIdx).count())
        .from(contact::Entity)
        .and_where(Expr::col(contact::Column::MemberIdx).eq(member))
        .cond_where(counts_at(now, window))
        .and_having(Expr::col(contact::Column::MemberIdx).count().ne(expected))
        .to_owned()
}

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

/// The times of the member's contacts that count now: sent, or held and not yet expired,
/// within the last `window` milliseconds.
pub(crate) async fn counted_contacts(
    conn: &impl ConnectionTrait,
    member: i32,
    now: i64,
    window: i64,
) -> Result<Vec<i64>, KitError> {
    let rows: Vec<(i64, Option<i64>)> = contact::Entity::find()
        .filter(contact::Column::MemberIdx.eq(member))
        .filter(counts_at(now, window))
        .select_only()
        .columns([contact::Column::RequestedAt, contact::Column::SentAt])
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    Ok(rows
        .into_iter()
        .map(|(requested, sent)| sent.unwrap_or(requested))
        .collect())
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

/// Holds a slot: the insert is staged in `writes`, sent with the call's stored reply.
pub(crate) fn stage_contact(writes: &mut Writes, backend: DbBackend, c: &NewContact<'_>) {
    writes.add(
        backend,
        &contact::Entity::insert(contact::ActiveModel {
            id: Set(c.id.to_owned()),
            member_idx: Set(c.member),
            partner: Set(c.partner.to_owned()),
            campaign_id: Set(c.campaign.to_owned()),
            channel: Set(c.channel),
            requested_at: Set(c.at),
            expires_at: Set(c.expires_at),
            sent_at: Set(None),
        }),
    );
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
/// built-in default.
pub(crate) async fn policy(conn: &impl ConnectionTrait, name: &str) -> Result<Policy, KitError> {
    for n in [name, "default"] {
        if let Some(r) = contact_policy::Entity::find_by_id(n)
            .one(conn)
            .await
            .map_err(storage)?
        {
            return Ok(Policy {
                max_contacts: r.max_contacts,
                window_days: r.window_days,
            });
        }
    }
    Ok(DEFAULT_POLICY)
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
