//! The comarketing database: its migrations. The kit's tables (idempotency keys, outbox, feed
//! cursors) come first; the service's own tables follow as its issue builds them.

use lianyu_kit::storage::{KitIndexes, KitReplySubjects, KitTables};
use sea_orm_migration::{MigrationTrait, MigratorTrait, async_trait::async_trait};

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(KitTables),
            Box::new(KitIndexes),
            Box::new(KitReplySubjects),
        ]
    }
}
