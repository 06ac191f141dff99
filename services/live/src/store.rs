//! The live repository: its migrations (the kit's tables first), sessions and their hosts.
//! Showcase, orders and audience figures live in submodules. It returns domain types; no row
//! leaves this module.

mod drops;
mod entities;
mod sales;
mod viewers;

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    page::Page,
    storage::{StorageError, with_kit_tables},
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, Iterable, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Alias, Expr, ExprTrait, Order, Query},
};
use sea_orm_migration::{MigrationTrait, MigratorTrait, SchemaManager, async_trait::async_trait};
use serde::{Deserialize, Serialize};

use crate::domain::{Guide, Profile, Session, SessionState};
use entities::{State, session, session_host};

pub(crate) use drops::*;
pub(crate) use sales::*;
pub(crate) use viewers::*;

/// A fresh live database for a store test (SQLite, or PostgreSQL under
/// `LIANYU_TEST_BACKEND=postgres`), migrated; keep the guard alive while it is used.
#[cfg(test)]
pub(crate) async fn test_database(
    test: &str,
) -> (
    lianyu_kit::testing::TestDatabase,
    sea_orm::DatabaseConnection,
) {
    lianyu_kit::testing::TestDatabase::migrated::<Migrator>(test, "live").await
}

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_kit_tables(vec![
            Box::new(Sessions),
            Box::new(SessionColumns),
            Box::new(Showcase),
            Box::new(Drops),
            Box::new(HostAcceptance),
        ])
    }
}

lianyu_kit::tables_migration!(
    /// Sessions and their co-hosts.
    Sessions,
    "m20261202_000010_live_sessions",
    [session::Entity, session_host::Entity]
);

lianyu_kit::tables_migration!(
    /// Products, pins, flash sales and what members bought of them, orders, and viewers.
    Showcase,
    "m20261202_000012_live_showcase",
    [
        entities::product::Entity,
        entities::pin_marker::Entity,
        entities::flash_sale::Entity,
        entities::sale_buyer::Entity,
        entities::order::Entity,
        entities::viewer::Entity,
        entities::presence::Entity
    ]
);

lianyu_kit::tables_migration!(
    /// Coupon drops and the claims against them.
    Drops,
    "m20261202_000013_live_drops",
    [entities::coupon_drop::Entity, entities::drop_claim::Entity]
);

/// Whether each co-host has accepted, and whether every host of a session has accepted at
/// least once (added to the tables a first version created without them; the sessions
/// already there were scheduled under the old rule and count as accepted and announced).
pub(crate) struct HostAcceptance;

impl sea_orm_migration::MigrationName for HostAcceptance {
    fn name(&self) -> &str {
        "m20261206_000014_live_host_acceptance"
    }
}

#[async_trait]
impl MigrationTrait for HostAcceptance {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        for (table, column) in [("session_hosts", "accepted"), ("sessions", "announced")] {
            lianyu_kit::storage::add_columns(
                manager,
                table,
                [ColumnDef::new(Alias::new(column))
                    .boolean()
                    .not_null()
                    .default(true)
                    .to_owned()],
            )
            .await?;
        }
        Ok(())
    }
}

/// A session's profile, times, pseudonym salt and peak (added to the table a first version
/// created without them).
pub(crate) struct SessionColumns;

impl sea_orm_migration::MigrationName for SessionColumns {
    fn name(&self) -> &str {
        "m20261202_000011_live_session_columns"
    }
}

#[async_trait]
impl MigrationTrait for SessionColumns {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        lianyu_kit::storage::add_columns(
            manager,
            "sessions",
            [
                ColumnDef::new(Alias::new("profile"))
                    .text()
                    .not_null()
                    .default("{}")
                    .to_owned(),
                ColumnDef::new(Alias::new("started_at"))
                    .big_integer()
                    .null()
                    .to_owned(),
                ColumnDef::new(Alias::new("ended_at"))
                    .big_integer()
                    .null()
                    .to_owned(),
                ColumnDef::new(Alias::new("salt"))
                    .string()
                    .not_null()
                    .default("")
                    .to_owned(),
                ColumnDef::new(Alias::new("peak_viewers"))
                    .big_integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
            ],
        )
        .await
    }
}

fn storage(e: sea_orm::DbErr) -> KitError {
    KitError::Storage(StorageError::from(e))
}

/// The profile as stored (JSON in `sessions.profile`).
#[derive(Default, Serialize, Deserialize)]
struct StoredProfile {
    #[serde(default)]
    presenters: Vec<String>,
    #[serde(default)]
    assistants: Vec<String>,
    #[serde(default)]
    guides: Vec<StoredGuide>,
    #[serde(default)]
    revenue_shares: Vec<(String, i32)>,
}

#[derive(Serialize, Deserialize)]
struct StoredGuide {
    id: String,
    display_name: String,
    partner: String,
    store: String,
    share_code: String,
}

fn profile_json(p: &Profile) -> String {
    let stored = StoredProfile {
        presenters: p.presenters.clone(),
        assistants: p.assistants.iter().map(ToString::to_string).collect(),
        guides: p
            .guides
            .iter()
            .map(|g| StoredGuide {
                id: g.guide_id.clone(),
                display_name: g.display_name.clone(),
                partner: g.partner.to_string(),
                store: g.store.clone(),
                share_code: g.share_code.clone(),
            })
            .collect(),
        revenue_shares: p
            .revenue_shares
            .iter()
            .map(|(p, b)| (p.to_string(), *b))
            .collect(),
    };
    serde_json::to_string(&stored).unwrap_or_else(|_| "{}".into())
}

fn profile_of(json: &str, created_by: &str) -> Profile {
    let stored: StoredProfile = serde_json::from_str(json).unwrap_or_default();
    let mut revenue_shares: Vec<(PartnerId, i32)> = stored
        .revenue_shares
        .into_iter()
        .map(|(p, b)| (PartnerId::new(p), b))
        .collect();
    if revenue_shares.is_empty() {
        revenue_shares.push((PartnerId::new(created_by), crate::domain::WHOLE_BPS));
    }
    Profile {
        presenters: stored.presenters,
        assistants: stored.assistants.into_iter().map(PartnerId::new).collect(),
        guides: stored
            .guides
            .into_iter()
            .map(|g| Guide {
                guide_id: g.id,
                display_name: g.display_name,
                partner: PartnerId::new(g.partner),
                store: g.store,
                share_code: g.share_code,
            })
            .collect(),
        revenue_shares,
    }
}

/// Stores a newly scheduled session with its hosts, inside the caller's transaction.
pub(crate) async fn insert_session(
    txn: &impl ConnectionTrait,
    s: &Session,
    at: i64,
) -> Result<(), KitError> {
    session::ActiveModel {
        id: Set(s.id.clone()),
        title: Set(s.title.clone()),
        store_partner_id: Set(s.store.as_ref().map(|(p, _)| p.to_string())),
        store_id: Set(s.store.as_ref().map(|(_, id)| id.clone())),
        stream_url: Set(s.stream_url.clone()),
        scheduled_start: Set(s.scheduled_start_millis),
        state: Set(state(s.state)),
        created_by: Set(s.created_by.to_string()),
        created_at: Set(at),
        profile: Set(profile_json(&s.profile)),
        started_at: Set(s.started_at),
        ended_at: Set(s.ended_at),
        salt: Set(s.salt.clone()),
        peak_viewers: Set(0),
        announced: Set(s.announced),
    }
    .insert(txn)
    .await
    .map_err(storage)?;
    for (position, host) in (0..).zip(&s.hosts) {
        session_host::ActiveModel {
            session_id: Set(s.id.clone()),
            partner_id: Set(host.to_string()),
            position: Set(position),
            accepted: Set(!s.pending.contains(host)),
        }
        .insert(txn)
        .await
        .map_err(storage)?;
    }
    Ok(())
}

/// Writes a changed session back, if it is still in `was` (a concurrent transition that won
/// makes this false, and the caller answers with the state it finds).
pub(crate) async fn save_session(
    txn: &impl ConnectionTrait,
    s: &Session,
    was: SessionState,
) -> Result<bool, KitError> {
    let done = session::Entity::update_many()
        .col_expr(session::Column::Title, Expr::value(s.title.clone()))
        .col_expr(
            session::Column::StreamUrl,
            Expr::value(s.stream_url.clone()),
        )
        .col_expr(
            session::Column::ScheduledStart,
            Expr::value(s.scheduled_start_millis),
        )
        .col_expr(session::Column::State, Expr::value(state(s.state)))
        .col_expr(
            session::Column::Profile,
            Expr::value(profile_json(&s.profile)),
        )
        .col_expr(session::Column::StartedAt, Expr::value(s.started_at))
        .col_expr(session::Column::EndedAt, Expr::value(s.ended_at))
        .filter(session::Column::Id.eq(s.id.clone()))
        .filter(session::Column::State.eq(state(was)))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Holds the session's row to the end of the caller's transaction (PostgreSQL; see
/// [`lianyu_kit::storage::hold_rows`]), so that a change of who has accepted, or of the terms
/// they accepted, is made on what the one before it committed — two hosts accepting at once,
/// or an accept beside new revenue shares, never lose either.
pub(crate) async fn lock_session(txn: &impl ConnectionTrait, id: &str) -> Result<(), KitError> {
    Ok(lianyu_kit::storage::hold_rows::<session::Entity>(txn, &[id]).await?)
}

/// Stores which of the session's hosts have accepted (those not in `s.pending`) and whether
/// it is announced.
pub(crate) async fn set_pending(txn: &impl ConnectionTrait, s: &Session) -> Result<(), KitError> {
    let pending: Vec<String> = s.pending.iter().map(ToString::to_string).collect();
    for (accepted, filter) in [
        (
            false,
            session_host::Column::PartnerId.is_in(pending.clone()),
        ),
        (true, session_host::Column::PartnerId.is_not_in(pending)),
    ] {
        session_host::Entity::update_many()
            .col_expr(session_host::Column::Accepted, Expr::value(accepted))
            .filter(session_host::Column::SessionId.eq(s.id.clone()))
            .filter(filter)
            .exec(txn)
            .await
            .map_err(storage)?;
    }
    session::Entity::update_many()
        .col_expr(session::Column::Announced, Expr::value(s.announced))
        .filter(session::Column::Id.eq(s.id.clone()))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Column names of a host beside its session's row ([`load_session`]).
const HOST_PARTNER: &str = "host_partner_id";
const HOST_POSITION: &str = "host_position";
const HOST_ACCEPTED: &str = "host_accepted";

/// The session `id`, whoever asks (the caller decides what the asker may see of it).
/// The sessions of `ids` that exist, by id (each read once, however often it is named).
pub(crate) async fn load_sessions<'a>(
    conn: &impl ConnectionTrait,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<std::collections::HashMap<String, Session>, KitError> {
    let mut out = std::collections::HashMap::new();
    let wanted: std::collections::BTreeSet<&str> = ids.into_iter().collect();
    for id in wanted {
        if let Some(found) = load_session(conn, id).await? {
            out.insert(id.to_owned(), found);
        }
    }
    Ok(out)
}

pub(crate) async fn load_session(
    conn: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<Session>, KitError> {
    // One statement: the session's row beside each of its hosts (it always has one, its
    // creator), not a read for the session and another for its hosts — every call in a
    // session reads this, an order in a flash sale's burst too.
    let mut select = Query::select();
    select
        .columns(session::Column::iter().map(|c| (session::Entity, c)))
        .expr_as(
            Expr::col((session_host::Entity, session_host::Column::PartnerId)),
            Alias::new(HOST_PARTNER),
        )
        .expr_as(
            Expr::col((session_host::Entity, session_host::Column::Position)),
            Alias::new(HOST_POSITION),
        )
        .expr_as(
            Expr::col((session_host::Entity, session_host::Column::Accepted)),
            Alias::new(HOST_ACCEPTED),
        )
        .from(session::Entity)
        .left_join(
            session_host::Entity,
            Expr::col((session_host::Entity, session_host::Column::SessionId))
                .equals((session::Entity, session::Column::Id)),
        )
        .and_where(Expr::col((session::Entity, session::Column::Id)).eq(id))
        .order_by(
            (session_host::Entity, session_host::Column::Position),
            Order::Asc,
        );
    let rows = conn
        .query_all_raw(conn.get_database_backend().build(&select))
        .await
        .map_err(storage)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let session = session::Model::from_query_result(first, "").map_err(storage)?;
    let mut hosts = Vec::with_capacity(rows.len());
    for row in &rows {
        let partner: Option<String> = row.try_get("", HOST_PARTNER).map_err(storage)?;
        let position: Option<i32> = row.try_get("", HOST_POSITION).map_err(storage)?;
        let accepted: Option<bool> = row.try_get("", HOST_ACCEPTED).map_err(storage)?;
        if let (Some(partner_id), Some(position), Some(accepted)) = (partner, position, accepted) {
            hosts.push(session_host::Model {
                session_id: session.id.clone(),
                partner_id,
                position,
                accepted,
            });
        }
    }
    Ok(Some(to_domain(session, hosts)))
}

/// The sessions `partner` co-hosts (with a store token, those in `own_store`), in the order
/// they were scheduled, after the page's key; only those in `only` when given.
pub(crate) async fn list_sessions(
    conn: &impl ConnectionTrait,
    partner: &str,
    own_store: Option<&str>,
    only: Option<SessionState>,
    page: &Page,
) -> Result<(Vec<Session>, String), KitError> {
    let mut query = session::Entity::find()
        .filter(
            session::Column::Id.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(session_host::Column::SessionId)
                    .from(session_host::Entity)
                    .and_where(Expr::col(session_host::Column::PartnerId).eq(partner))
                    .to_owned(),
            ),
        )
        .order_by_asc(session::Column::Id)
        .limit(page.size + 1);
    if let Some(after) = &page.after {
        query = query.filter(session::Column::Id.gt(after.clone()));
    }
    if let Some(s) = only {
        query = query.filter(session::Column::State.eq(state(s)));
    }
    if let Some(own) = own_store {
        let [p, s] =
            lianyu_kit::names::parse(own, "partners/{partner}/stores/{store}").unwrap_or(["", ""]);
        query = query
            .filter(session::Column::StorePartnerId.eq(p))
            .filter(session::Column::StoreId.eq(s));
    }
    let rows = query.all(conn).await.map_err(storage)?;
    let (rows, token) = page.finish(rows, |r| r.id.clone());
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let hosts = session_host::Entity::find()
            .filter(session_host::Column::SessionId.eq(row.id.clone()))
            .order_by_asc(session_host::Column::Position)
            .all(conn)
            .await
            .map_err(storage)?;
        out.push(to_domain(row, hosts));
    }
    Ok((out, token))
}

fn to_domain(row: session::Model, hosts: Vec<session_host::Model>) -> Session {
    Session {
        profile: profile_of(&row.profile, &row.created_by),
        id: row.id,
        title: row.title,
        pending: hosts
            .iter()
            .filter(|h| !h.accepted)
            .map(|h| PartnerId::new(h.partner_id.clone()))
            .collect(),
        hosts: hosts
            .into_iter()
            .map(|h| PartnerId::new(h.partner_id))
            .collect(),
        store: row
            .store_partner_id
            .zip(row.store_id)
            .map(|(partner, store)| (PartnerId::new(partner), store)),
        stream_url: row.stream_url,
        scheduled_start_millis: row.scheduled_start,
        state: match row.state {
            State::Scheduled => SessionState::Scheduled,
            State::Live => SessionState::Live,
            State::Ended => SessionState::Ended,
            State::Cancelled => SessionState::Cancelled,
        },
        announced: row.announced,
        created_by: PartnerId::new(row.created_by),
        started_at: row.started_at,
        ended_at: row.ended_at,
        salt: row.salt,
    }
}

fn state(s: SessionState) -> State {
    match s {
        SessionState::Scheduled => State::Scheduled,
        SessionState::Live => State::Live,
        SessionState::Ended => State::Ended,
        SessionState::Cancelled => State::Cancelled,
    }
}
