//! Funnel events and each campaign's running totals.

use lianyu_kit::KitError;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, sea_query::ExprTrait,
    sea_query::OnConflict,
};

use super::{
    entities::{campaign_tally, funnel_event},
    storage,
};
use crate::domain::funnel::{Event, EventKind};

/// A funnel event to store; `key` names it uniquely within its source.
pub(crate) struct NewEvent<'a> {
    pub(crate) key: String,
    pub(crate) campaign: &'a str,
    pub(crate) member: i32,
    pub(crate) partner: &'a str,
    pub(crate) kind: EventKind,
    pub(crate) at: i64,
    pub(crate) amount: i64,
}

/// Stores events; one already stored under its key is left as it is. Returns how many were
/// new.
pub(crate) async fn insert_events(
    conn: &impl ConnectionTrait,
    events: &[NewEvent<'_>],
) -> Result<u64, KitError> {
    let mut added = 0;
    for chunk in events.chunks(500) {
        let rows = chunk.iter().map(|e| funnel_event::ActiveModel {
            key: Set(e.key.clone()),
            campaign_id: Set(e.campaign.to_owned()),
            member_idx: Set(e.member),
            partner: Set(e.partner.to_owned()),
            kind: Set(e.kind.as_str().to_owned()),
            at: Set(e.at),
            amount: Set(e.amount),
        });
        let done = funnel_event::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(funnel_event::Column::Key)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await
            .map_err(storage)?;
        added += done;
    }
    Ok(added)
}

/// A campaign's events between `from` and `until`, by member.
pub(crate) async fn campaign_events(
    conn: &impl ConnectionTrait,
    campaign: &str,
    from: i64,
    until: i64,
) -> Result<Vec<(u32, Event, i64)>, KitError> {
    let rows = funnel_event::Entity::find()
        .filter(funnel_event::Column::CampaignId.eq(campaign))
        .filter(funnel_event::Column::At.gte(from))
        .filter(funnel_event::Column::At.lt(until))
        .all(conn)
        .await
        .map_err(storage)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some((
                u32::try_from(r.member_idx).ok()?,
                Event {
                    kind: EventKind::parse(&r.kind)?,
                    at: r.at,
                    partner: r.partner,
                },
                r.amount,
            ))
        })
        .collect())
}

/// Forgets what a member did through `partner` (its erasure).
pub(crate) async fn erase_events(
    conn: &impl ConnectionTrait,
    member: i32,
    partner: &str,
) -> Result<(), KitError> {
    funnel_event::Entity::delete_many()
        .filter(funnel_event::Column::MemberIdx.eq(member))
        .filter(funnel_event::Column::Partner.eq(partner))
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Moves a merged-away member's events to the survivor.
pub(crate) async fn move_events(
    conn: &impl ConnectionTrait,
    from: i32,
    into: i32,
) -> Result<(), KitError> {
    funnel_event::Entity::update_many()
        .col_expr(
            funnel_event::Column::MemberIdx,
            sea_orm::sea_query::Expr::value(into),
        )
        .filter(funnel_event::Column::MemberIdx.eq(from))
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Adds `by` to a campaign's running total `key`; returns the new total.
pub(crate) async fn add_tally(
    conn: &impl ConnectionTrait,
    campaign: &str,
    key: &str,
    by: i64,
) -> Result<(), KitError> {
    campaign_tally::Entity::insert(campaign_tally::ActiveModel {
        campaign_id: Set(campaign.to_owned()),
        key: Set(key.to_owned()),
        value: Set(by),
    })
    .on_conflict(
        OnConflict::columns([
            campaign_tally::Column::CampaignId,
            campaign_tally::Column::Key,
        ])
        .value(
            campaign_tally::Column::Value,
            sea_orm::sea_query::Expr::col((campaign_tally::Entity, campaign_tally::Column::Value))
                .add(by),
        )
        .to_owned(),
    )
    .exec(conn)
    .await
    .map_err(storage)?;
    Ok(())
}

/// A campaign's running totals.
pub(crate) async fn tallies(
    conn: &impl ConnectionTrait,
    campaign: &str,
) -> Result<Vec<(String, i64)>, KitError> {
    Ok(campaign_tally::Entity::find()
        .filter(campaign_tally::Column::CampaignId.eq(campaign))
        .all(conn)
        .await
        .map_err(storage)?
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect())
}
