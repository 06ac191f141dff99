//! Contacts, the per-member lock that serialises cap decisions, quiet hours and policies.

use lianyu_kit::KitError;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QuerySelect, sea_query::ExprTrait, sea_query::OnConflict,
};

use super::{
    entities::{contact, contact_lock, contact_policy, quiet_hours},
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

/// The times of the member's contacts that count now: sent, or held and not yet expired,
/// within the last `window` milliseconds.
pub(crate) async fn counted_contacts(
    conn: &impl ConnectionTrait,
    member: i32,
    now: i64,
    window: i64,
) -> Result<Vec<i64>, KitError> {
    let rows: Vec<(i64, i64, Option<i64>)> = contact::Entity::find()
        .filter(contact::Column::MemberIdx.eq(member))
        .filter(contact::Column::RequestedAt.gt(now - window))
        .select_only()
        .columns([
            contact::Column::RequestedAt,
            contact::Column::ExpiresAt,
            contact::Column::SentAt,
        ])
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    Ok(rows
        .into_iter()
        .filter(|(_, expires, sent)| sent.is_some() || *expires > now)
        .map(|(requested, _, sent)| sent.unwrap_or(requested))
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

/// Holds a slot.
pub(crate) async fn insert_contact(
    conn: &impl ConnectionTrait,
    c: &NewContact<'_>,
) -> Result<(), KitError> {
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
    .insert(conn)
    .await
    .map_err(storage)?;
    Ok(())
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

/// The member's quiet hours.
pub(crate) async fn quiet_hours_of(
    conn: &impl ConnectionTrait,
    member: i32,
) -> Result<Option<QuietHours>, KitError> {
    Ok(quiet_hours::Entity::find_by_id(member)
        .one(conn)
        .await
        .map_err(storage)?
        .map(|r| QuietHours {
            start_minute: r.start_minute,
            end_minute: r.end_minute,
            utc_offset_minutes: r.utc_offset_minutes,
        }))
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
