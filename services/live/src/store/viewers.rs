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

/// This replica's count for a session: viewers now, and `new_anonymous_joins` more anonymous
/// joins since its last report (added to its row: a room this replica dropped while nobody
/// watched and opened again starts counting from zero, and must not undo what it reported).
pub(crate) async fn report_presence(
    conn: &impl ConnectionTrait,
    replica: &str,
    session: &str,
    viewers: i64,
    new_anonymous_joins: i64,
    at: i64,
) -> Result<(), KitError> {
    presence::Entity::insert(presence::ActiveModel {
        replica: Set(replica.to_owned()),
        session_id: Set(session.to_owned()),
        viewers: Set(viewers),
        anonymous_joins: Set(new_anonymous_joins),
        updated_at: Set(at),
    })
    .on_conflict(
        OnConflict::columns([presence::Column::Replica, presence::Column::SessionId])
            .update_columns([presence::Column::Viewers, presence::Column::UpdatedAt])
            .value(
                presence::Column::AnonymousJoins,
                sea_orm::sea_query::ExprTrait::add(
                    Expr::col((presence::Entity, presence::Column::AnonymousJoins)),
                    new_anonymous_joins,
                ),
            )
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

/// The answering replica's own counts for a session, as they are now: its viewers stand in
/// for the number it last reported and its anonymous joins not yet reported are added (a
/// report is up to a presence tick old), so a viewer who just joined through it counts at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Here<'a> {
    pub(crate) replica: &'a str,
    pub(crate) viewers: i64,
    pub(crate) unreported_anonymous_joins: i64,
}

/// The session's audience at `now`, with `here`'s live counts.
pub(crate) async fn audience(
    conn: &impl ConnectionTrait,
    session: &str,
    now: i64,
    here: Option<Here<'_>>,
) -> Result<Audience, KitError> {
    let rows = presence::Entity::find()
        .filter(presence::Column::SessionId.eq(session))
        .all(conn)
        .await
        .map_err(storage)?;
    let others = || {
        rows.iter()
            .filter(|r| here.is_none_or(|h| r.replica != h.replica))
    };
    let watching: i64 = others()
        .filter(|r| r.updated_at > now - PRESENCE_TTL_MILLIS)
        .map(|r| r.viewers)
        .sum::<i64>()
        + here.map_or(0, |h| h.viewers);
    let anonymous: i64 = rows.iter().map(|r| r.anonymous_joins).sum::<i64>()
        + here.map_or(0, |h| h.unreported_anonymous_joins);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_database as database;

    const NOW: i64 = 1_800_000_000_000;

    /// Anonymous joins only ever add up: a replica reports the joins since its last report,
    /// so one that dropped a session's room while nobody watched and opened it again (its
    /// count starting over) adds to what it reported before instead of replacing it. The
    /// answering replica's viewers and unreported joins count at once, its stale row's
    /// viewers not at all; a replica silent for longer than the presence TTL counts no viewers,
    /// but the joins it reported stand.
    #[tokio::test]
    async fn reported_anonymous_joins_add_up_and_the_answering_replicas_own_counts_are_current() {
        let (_database, db) = database("live_presence").await;
        report_presence(&db, "a", "s", 3, 5, NOW).await.unwrap();
        report_presence(&db, "b", "s", 2, 4, NOW).await.unwrap();
        // Replica a's room emptied, was dropped and opened again: one new join, one watching.
        report_presence(&db, "a", "s", 1, 1, NOW + 2_000)
            .await
            .unwrap();
        let seen = audience(&db, "s", NOW + 2_000, None).await.unwrap();
        assert_eq!((seen.now, seen.total), (3, 10), "{seen:?}");
        // Asked through replica a, which has 4 watching and 2 joins it has not reported yet.
        let here = Here {
            replica: "a",
            viewers: 4,
            unreported_anonymous_joins: 2,
        };
        let seen = audience(&db, "s", NOW + 2_000, Some(here)).await.unwrap();
        assert_eq!((seen.now, seen.total), (6, 12), "{seen:?}");
        // Replica b went quiet: its viewers stop counting, its joins do not.
        let later = NOW + PRESENCE_TTL_MILLIS + 1;
        let seen = audience(&db, "s", later, Some(here)).await.unwrap();
        assert_eq!((seen.now, seen.total), (4, 12), "{seen:?}");
        // Another session's presence is its own.
        let other = audience(&db, "t", NOW, None).await.unwrap();
        assert_eq!((other.now, other.total), (0, 0));
    }
}
