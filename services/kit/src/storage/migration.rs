//! The migration creating the kit's tables; each service lists it first in its migrator.

use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait, Schema};
use sea_orm_migration::{
    MigrationName, MigrationTrait, SchemaManager, async_trait::async_trait, prelude::DbErr,
};

use super::entities::{feed_cursor, idempotency_key, outbox_counter, outbox_event};

/// The table a guard ([`crate::writes::Writes::guard_none`]) inserts into: its one column
/// must be 0, so the insert of a 1 — made only when the guarded query finds a row — breaks the
/// named check and fails the trip (the storage error maps the name to a conflict).
pub const GUARD_TABLE: &str = "kit_guards";

/// The check a guard breaks; its name in an error means a guard found a row.
pub const GUARD_CHECK: &str = "kit_guards_found";

/// The statement that makes [`GUARD_TABLE`] (the kit's migration runs it).
pub fn guard_table_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {GUARD_TABLE} \
         (found INTEGER NOT NULL CONSTRAINT {GUARD_CHECK} CHECK (found = 0))"
    )
}

/// Creates `entity`'s table and the indexes its definition declares, each only if absent, so a
/// migration that was interrupted can simply run again.
pub async fn create_entity_table<E: EntityTrait>(
    manager: &SchemaManager<'_>,
    entity: E,
) -> Result<(), DbErr> {
    let schema = Schema::new(manager.get_database_backend());
    manager
        .create_table(
            schema
                .create_table_from_entity(entity)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
    for mut index in schema.create_index_from_entity(entity) {
        manager
            .create_index(index.if_not_exists().to_owned())
            .await?;
    }
    Ok(())
}

/// Adds each column `table` lacks (a database created from the current entity already has
/// them all).
pub async fn add_columns(
    manager: &SchemaManager<'_>,
    table: &str,
    columns: impl IntoIterator<Item = sea_orm_migration::prelude::ColumnDef>,
) -> Result<(), DbErr> {
    use sea_orm_migration::prelude::{Alias, Table};
    for mut def in columns {
        let column = def.get_column_name();
        if !manager.has_column(table, &column).await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(table))
                        .add_column(&mut def)
                        .to_owned(),
                )
                .await?;
        }
    }
    Ok(())
}

/// A service's migrations after the kit's own (idempotency keys, outbox, feed cursors, reply
/// subjects), which every service database holds first.
pub fn with_kit_tables(own: Vec<Box<dyn MigrationTrait>>) -> Vec<Box<dyn MigrationTrait>> {
    let mut all: Vec<Box<dyn MigrationTrait>> = vec![
        Box::new(KitTables),
        Box::new(KitIndexes),
        Box::new(KitReplySubjects),
        Box::new(KitGuards),
        Box::new(KitFeedSubjects),
    ];
    all.extend(own);
    all
}

/// A migration that creates entities' tables (and their declared indexes) if absent:
/// `tables_migration!(Sessions, "m20261202_000010_live_sessions", [session::Entity]);`. The
/// calling crate depends on `sea-orm-migration`.
#[macro_export]
macro_rules! tables_migration {
    ($(#[$meta:meta])* $name:ident, $id:literal, [$($entity:path),+ $(,)?]) => {
        $(#[$meta])*
        pub(crate) struct $name;

        impl sea_orm_migration::MigrationName for $name {
            fn name(&self) -> &str {
                $id
            }
        }

        #[sea_orm_migration::async_trait::async_trait]
        impl sea_orm_migration::MigrationTrait for $name {
            async fn up(
                &self,
                manager: &sea_orm_migration::SchemaManager,
            ) -> Result<(), sea_orm_migration::prelude::DbErr> {
                $($crate::storage::create_entity_table(manager, $entity).await?;)+
                Ok(())
            }
        }
    };
}

pub struct KitTables;

impl MigrationName for KitTables {
    fn name(&self) -> &str {
        "m20261122_000001_kit_tables"
    }
}

#[async_trait]
impl MigrationTrait for KitTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(idempotency_key::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(outbox_event::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(outbox_counter::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(feed_cursor::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        if outbox_counter::Entity::find_by_id(1)
            .one(db)
            .await?
            .is_none()
        {
            outbox_counter::ActiveModel {
                id: Set(1),
                last_seq: Set(0),
            }
            .insert(db)
            .await?;
        }
        Ok(())
    }
}

/// Indexes for the kit's background and per-partner reads: idempotency keys by age (the expiry
/// sweep) and outbox events by partner (a partner's feed reads only its own events).
pub struct KitIndexes;

impl MigrationName for KitIndexes {
    fn name(&self) -> &str {
        "m20261123_000001_kit_indexes"
    }
}

#[async_trait]
impl MigrationTrait for KitIndexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm::sea_query::Index;
        manager
            .create_index(
                Index::create()
                    .name("kit_idempotency_keys_created_at")
                    .table(idempotency_key::Entity)
                    .col(idempotency_key::Column::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("kit_outbox_events_partner_seq")
                    .table(outbox_event::Entity)
                    .col(outbox_event::Column::PartnerId)
                    .col(outbox_event::Column::Seq)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// Stored replies tagged with the person they are about, so an erasure can purge them.
pub struct KitReplySubjects;

impl MigrationName for KitReplySubjects {
    fn name(&self) -> &str {
        "m20261202_000001_kit_reply_subjects"
    }
}

#[async_trait]
impl MigrationTrait for KitReplySubjects {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm::sea_query::{ColumnDef, Index, Table};
        let table = "kit_idempotency_keys";
        // Databases made before this migration lack the columns; KitTables creates new ones
        // from the entity, columns included.
        for (column, def) in [
            (
                "subject",
                ColumnDef::new(idempotency_key::Column::Subject)
                    .var_binary(64)
                    .null()
                    .to_owned(),
            ),
            (
                "erased_at",
                ColumnDef::new(idempotency_key::Column::ErasedAt)
                    .big_integer()
                    .null()
                    .to_owned(),
            ),
        ] {
            if !manager.has_column(table, column).await? {
                manager
                    .alter_table(
                        Table::alter()
                            .table(idempotency_key::Entity)
                            .add_column(def)
                            .to_owned(),
                    )
                    .await?;
            }
        }
        manager
            .create_index(
                Index::create()
                    .name("kit_idempotency_keys_subject")
                    .table(idempotency_key::Entity)
                    .col(idempotency_key::Column::Subject)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// Outbox events tagged with the person they name, so an erasure can find and rewrite them
/// ([`crate::feed::Feed::rewrite_about`]). The index holds only tagged events (most name no
/// one), on SQLite and PostgreSQL alike.
pub struct KitFeedSubjects;

impl MigrationName for KitFeedSubjects {
    fn name(&self) -> &str {
        "m20261206_000001_kit_feed_subjects"
    }
}

#[async_trait]
impl MigrationTrait for KitFeedSubjects {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm::sea_query::{ColumnDef, Table};
        // Databases made before this migration lack the column; KitTables creates new ones
        // from the entity, the column included.
        if !manager.has_column("kit_outbox_events", "subject").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(outbox_event::Entity)
                        .add_column(
                            ColumnDef::new(outbox_event::Column::Subject)
                                .string()
                                .null()
                                .to_owned(),
                        )
                        .to_owned(),
                )
                .await?;
        }
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS kit_outbox_events_subject \
                 ON kit_outbox_events (subject) WHERE subject IS NOT NULL",
            )
            .await
            .map(drop)
    }
}

/// The table guards write into ([`GUARD_TABLE`]). It never holds a row: a guard inserts only
/// when it finds what it guards against, and its check refuses that row.
pub struct KitGuards;

impl MigrationName for KitGuards {
    fn name(&self) -> &str {
        "m20261204_000001_kit_guards"
    }
}

#[async_trait]
impl MigrationTrait for KitGuards {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&guard_table_sql())
            .await
            .map(drop)
    }
}
