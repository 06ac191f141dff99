//! The identity database: migrations and the repository. Every finder that takes a caller
//! is scoped to that caller's partner; the scoped-id ↔ member mapping never leaves here.

mod access;
pub(crate) mod alliances;
pub(crate) mod consent_index;
pub(crate) mod consents;
mod credentials;
pub(crate) mod entities;
pub(crate) mod erasure;
mod links;
mod members;
pub(crate) mod mesh;
mod migration;
mod partners;
pub(crate) mod refusals;
mod stores;
pub(crate) mod sweep;

use std::sync::Arc;

use lianyu_kit::{
    feed::Feed,
    storage::{KitGuards, KitIndexes, KitReplySubjects, KitTables},
};
use sea_orm::DatabaseConnection;
use sea_orm_migration::{MigrationTrait, MigratorTrait, async_trait::async_trait};

use crate::domain::secrets::Secrets;

pub(crate) use members::MemberView;

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(KitTables),
            Box::new(migration::IdentityTables),
            Box::new(migration::StoresAndCredentials),
            Box::new(KitIndexes),
            Box::new(KitReplySubjects),
            Box::new(migration::TrustModel),
            Box::new(migration::TypedConsentFeed),
            Box::new(migration::ServiceAudit),
            Box::new(KitGuards),
            Box::new(migration::FewerIndexEntries),
        ]
    }
}

/// The repository: the database (a writer, and a pool for reads outside transactions), the
/// keys identifiers are hashed and sealed with, the feed.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) db: DatabaseConnection,
    pub(crate) read: DatabaseConnection,
    pub(crate) secrets: Arc<Secrets>,
    pub(crate) feed: Feed,
    pub(crate) alliances: alliances::AllianceCache,
    pub(crate) consent_index: consent_index::ConsentIndex,
    /// The tokens this process refuses, kept by the mesh events it and other replicas commit.
    pub(crate) refusals: refusals::Refusals,
    /// Wakes the lapse sweep when an alliance ended or changed terms.
    pub(crate) sweep_wake: Arc<tokio::sync::Notify>,
}

pub(crate) fn now() -> i64 {
    lianyu_kit::storage::now_millis()
}
