//! The live repository: its migrations (the kit's tables first) and the session finders, each
//! scoped to the calling partner. It returns domain types; no row leaves this module.

mod entities;

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    storage::{StorageError, with_kit_tables},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder,
};
use sea_orm_migration::{MigrationTrait, MigratorTrait, async_trait::async_trait};

use crate::domain::{Session, SessionState};
use entities::{State, session, session_host};

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_kit_tables(vec![Box::new(Sessions)])
    }
}

lianyu_kit::tables_migration!(
    /// Sessions and their co-hosts.
    Sessions,
    "m20261202_000010_live_sessions",
    [session::Entity, session_host::Entity]
);

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
    }
    .insert(txn)
    .await
    .map_err(StorageError::from)?;
    for (position, host) in (0..).zip(&s.hosts) {
        session_host::ActiveModel {
            session_id: Set(s.id.clone()),
            partner_id: Set(host.to_string()),
            position: Set(position),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
    }
    Ok(())
}

/// The session `id` when `partner` co-hosts it; `None` otherwise, so another partner's session
/// and a missing one look alike.
pub(crate) async fn session_for_host(
    conn: &impl ConnectionTrait,
    partner: &str,
    id: &str,
) -> Result<Option<Session>, KitError> {
    let hosts = session_host::Entity::find()
        .filter(session_host::Column::SessionId.eq(id))
        .order_by_asc(session_host::Column::Position)
        .all(conn)
        .await
        .map_err(StorageError::from)?;
    if !hosts.iter().any(|h| h.partner_id == partner) {
        return Ok(None);
    }
    let Some(row) = session::Entity::find_by_id(id)
        .one(conn)
        .await
        .map_err(StorageError::from)?
    else {
        return Ok(None);
    };
    Ok(Some(Session {
        id: row.id,
        title: row.title,
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
        created_by: PartnerId::new(row.created_by),
    }))
}

fn state(s: SessionState) -> State {
    match s {
        SessionState::Scheduled => State::Scheduled,
        SessionState::Live => State::Live,
        SessionState::Ended => State::Ended,
        SessionState::Cancelled => State::Cancelled,
    }
}
