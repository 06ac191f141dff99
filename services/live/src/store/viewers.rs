//! Who watches: identified viewers once each, and each replica's presence per session
//! (viewers now, anonymous joins), which the figures sum across replicas.

use lianyu_kit::KitError;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    sea_query::{Expr, OnConflict},
};

use super::{
    entities::{presence, session, viewer},
    storage,
};

/// How long a replica's presence counts after its last refresh: a replica that died stops
/// counting after this.
pub(crate) const PRESENCE_TTL_MILLIS: i64 = 15_000;

/// Records an identified member's join (once per session); true the first time.
pub(crate) async fn record_viewer(
    txn: &impl ConnectionTrait,
    session: &str,
    member: &str,
    partner: &str,
    at: i64,
) -> Result<bool, KitError> {
    let n = viewer::Entity::insert(viewer::ActiveModel {
        session_id: Set(session.to_owned()),
        member_id: Set(member.to_owned()),
        partner_id: Set(partner.to_owned()),
        joined_at: Set(at),
    })
    .on_conflict(
        OnConflict::columns([viewer::Column::SessionId, viewer::Column::MemberId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(txn)
    .await
    .map_err(storage)?;
    Ok(n == 1)
}

/// This replica's count for a session: viewers now and anonymous joins so far.
pub(crate) async fn report_presence(
    conn: &impl ConnectionTrait,
    replica: &str,
    session: &str,
    viewers: i64,
    anonymous_joins: i64,
    at: i64,
) -> Result<(), KitError> {
    presence::Entity::insert(presence::ActiveModel {
        replica: Set(replica.to_owned()),
        session_id: Set(session.to_owned()),
        viewers: Set(viewers),
        anonymous_joins: Set(anonymous_joins),
        updated_at: Set(at),
    })
    .on_conflict(
        OnConflict::columns([presence::Column::Replica, presence::Column::SessionId])
            .update_columns([
                presence::Column::Viewers,
                presence::Column::AnonymousJoins,
                presence::Column::UpdatedAt,
            ])
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .map_err(storage)?;
    Ok(())
}

/// Raises the session's peak to `viewers` if that is higher.
pub(crate) async fn raise_peak(
    conn: &impl ConnectionTrait,
    session: &str,
    viewers: i64,
) -> Result<(), KitError> {
    session::Entity::update_many()
        .col_expr(session::Column::PeakViewers, Expr::value(viewers))
        .filter(session::Column::Id.eq(session))
        .filter(session::Column::PeakViewers.lt(viewers))
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Who watches a session, across replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Audience {
    pub(crate) now: i64,
    pub(crate) peak: i64,
    /// Identified members once each, plus every anonymous join.
    pub(crate) total: i64,
    pub(crate) identified: i64,
}

/// The session's audience at `now`.
pub(crate) async fn audience(
    conn: &impl ConnectionTrait,
    session: &str,
    now: i64,
) -> Result<Audience, KitError> {
    let rows = presence::Entity::find()
        .filter(presence::Column::SessionId.eq(session))
        .all(conn)
        .await
        .map_err(storage)?;
    let watching: i64 = rows
        .iter()
        .filter(|r| r.updated_at > now - PRESENCE_TTL_MILLIS)
        .map(|r| r.viewers)
        .sum();
    let anonymous: i64 = rows.iter().map(|r| r.anonymous_joins).sum();
    let identified = i64::try_from(
        viewer::Entity::find()
            .filter(viewer::Column::SessionId.eq(session))
            .count(conn)
            .await
            .map_err(storage)?,
    )
    .unwrap_or(i64::MAX);
    let peak = session::Entity::find_by_id(session)
        .one(conn)
        .await
        .map_err(storage)?
        .map_or(0, |s| s.peak_viewers);
    Ok(Audience {
        now: watching,
        peak: peak.max(watching),
        total: identified + anonymous,
        identified,
    })
}

/// Forgets that `member`, erased at `partner`, watched through it.
pub(crate) async fn forget_viewer(
    txn: &impl ConnectionTrait,
    member: &str,
    partner: &str,
) -> Result<u64, KitError> {
    let done = viewer::Entity::delete_many()
        .filter(viewer::Column::MemberId.eq(member))
        .filter(viewer::Column::PartnerId.eq(partner))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected)
}
