//! Storage: one sea-orm connection per service from its database URL (SQLite in WAL mode by
//! default, PostgreSQL when the URL says so, the same code either way), the kit's own tables
//! (idempotency keys, the outbox, feed cursors), and the one place storage errors are classified.

pub mod entities;

/// A sea-orm entity without relations in one line per table:
/// `entity!(session, "sessions", { #[sea_orm(primary_key, auto_increment = false)] pub id: String, … });`
/// makes `mod session` with its `Model`, `Entity`, `Column` and `ActiveModel`. The calling
/// crate depends on `sea-orm`.
#[macro_export]
macro_rules! entity {
    ($module:ident, $table:literal, { $($body:tt)* }) => {
        pub mod $module {
            use sea_orm::entity::prelude::*;

            #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
            #[sea_orm(table_name = $table)]
            pub struct Model { $($body)* }

            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}

            impl ActiveModelBehavior for ActiveModel {}
        }
    };
}
mod migration;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    Iterable, PrimaryKeyToColumn, PrimaryKeyTrait, QuerySelect, SqlErr,
};
use tonic::Code;

pub use migration::{
    GUARD_CHECK, GUARD_TABLE, KitFeedSubjects, KitGuards, KitIndexes, KitReplySubjects, KitTables,
    add_columns, create_entity_table, guard_table_sql, with_kit_tables,
};

/// A storage failure, classified once at the store boundary.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StorageError {
    /// ALREADY_EXISTS, reason ALREADY_EXISTS: a unique constraint was violated.
    #[error("already exists")]
    AlreadyExists,
    /// NOT_FOUND, reason NOT_FOUND.
    #[error("not found")]
    NotFound,
    /// UNAVAILABLE, reason STORAGE_UNAVAILABLE: the pool or the connection timed out; retry.
    #[error("storage unavailable, retry")]
    Unavailable(String),
    /// RESOURCE_EXHAUSTED, reason STORAGE_FULL: the disk is full (SQLITE_FULL, PostgreSQL's
    /// 53100). Nothing was written; retry once the operator has freed space.
    #[error("storage full")]
    Full(String),
    /// ABORTED, reason CONCURRENT_UPDATE: a serialization failure or deadlock; retry.
    #[error("concurrent update, retry")]
    Conflict(String),
    /// INTERNAL, reason STORAGE_ERROR.
    #[error("storage error: {0}")]
    Other(String),
}

impl StorageError {
    pub(crate) fn code(&self) -> Code {
        match self {
            StorageError::AlreadyExists => Code::AlreadyExists,
            StorageError::NotFound => Code::NotFound,
            StorageError::Unavailable(_) => Code::Unavailable,
            StorageError::Conflict(_) => Code::Aborted,
            StorageError::Full(_) => Code::ResourceExhausted,
            StorageError::Other(_) => Code::Internal,
        }
    }

    pub(crate) fn reason(&self) -> &'static str {
        match self {
            StorageError::AlreadyExists => "ALREADY_EXISTS",
            StorageError::NotFound => "NOT_FOUND",
            StorageError::Unavailable(_) => "STORAGE_UNAVAILABLE",
            StorageError::Conflict(_) => "CONCURRENT_UPDATE",
            StorageError::Full(_) => "STORAGE_FULL",
            StorageError::Other(_) => "STORAGE_ERROR",
        }
    }
}

/// Whether a database error means the connection or the server went away (retry elsewhere or
/// later) rather than that the statement was wrong: I/O and protocol failures, a closed or
/// timed-out pool, SQLSTATE class 08 (connection exception) and 57P (the server shutting down).
fn connection_lost(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error;
    let Some(sqlx) = driver_error(err) else {
        return false;
    };
    match sqlx {
        Error::Io(_)
        | Error::Tls(_)
        | Error::Protocol(_)
        | Error::PoolTimedOut
        | Error::PoolClosed
        | Error::WorkerCrashed => true,
        Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// The driver's error under a sea-orm error, when there is one.
fn driver_error(err: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    use sea_orm::RuntimeErr;
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e))
        | DbErr::Conn(RuntimeErr::SqlxError(e)) => Some(e.as_ref()),
        _ => None,
    }
}

/// Whether the database refused a statement because of a concurrent transaction, to be run
/// again: PostgreSQL's serialization_failure (40001) and deadlock_detected (40P01) by their
/// SQLSTATE (the message does not carry it), SQLite's busy database.
fn lost_to_concurrency(err: &DbErr, text: &str) -> bool {
    let code = driver_error(err)
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code().map(|c| c.into_owned()));
    matches!(code.as_deref(), Some("40001" | "40P01"))
        || text.contains("40001")
        || text.contains("40P01")
        || text.contains("database is locked")
}

impl From<DbErr> for StorageError {
    fn from(err: DbErr) -> Self {
        if let Some(SqlErr::UniqueConstraintViolation(_)) = err.sql_err() {
            return StorageError::AlreadyExists;
        }
        let text = err.to_string();
        match &err {
            DbErr::RecordNotFound(_) => StorageError::NotFound,
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => StorageError::Unavailable(text),
            _ if connection_lost(&err) => StorageError::Unavailable(text),
            _ if text.contains("database or disk is full")
                || text.contains("53100")
                || text.contains("No space left on device") =>
            {
                tracing::error!(error = %text, "storage is full");
                StorageError::Full(text)
            }
            _ if lost_to_concurrency(&err, &text) => StorageError::Conflict(text),
            // A guard found what it guards against: the decision it protected was made on data
            // that has changed since (`Writes::guard_none`); decided again, it stands.
            _ if text.contains(GUARD_CHECK) => {
                StorageError::Conflict("a guarded write found a row written meanwhile".into())
            }
            _ => StorageError::Other(text),
        }
    }
}

/// The commit that leaves the write-ahead log longer than this many pages (64 MiB of 4 KiB
/// pages, unless `LIANYU_SQLITE_WAL_MIB` says otherwise: [`wal_pages`]) checkpoints it before its
/// caller hears back. That checkpoint is also what lets the next transaction write the log again
/// from its start, so it is what bounds the log's size: a checkpoint by another connection copies
/// pages but, with commits arriving all the time, almost never finds the log fully copied when a
/// transaction begins — the log would only grow.
///
/// SQLite's default is 1,000 pages (4 MB). Under a steady stream of writes (enrolments dirty
/// about 150 pages a commit) the writer then reached it every few dozen milliseconds, before
/// the background checkpointer's next pass, and did nearly all the copying and both of each
/// checkpoint's syncs itself while its callers waited: enrolments ran about a fifth slower
/// (`BENCHMARKS.md`, measured with 16,000 pages). With a longer log the background task copies
/// almost everything, each page once however often it changed between passes, and the writer's
/// own checkpoint finds little left. The price is disk: up to this much log per service's
/// database, kept for reuse; a small volume can set less.
const WAL_AUTOCHECKPOINT_PAGES: u32 = wal_pages(crate::config::DEFAULT_SQLITE_WAL_MIB);

/// SQLite's page size as the kit's databases use it (SQLite's default).
const PAGE_BYTES: u32 = 4096;

/// The write-ahead log's threshold in pages for a length in MiB (`LIANYU_SQLITE_WAL_MIB`).
const fn wal_pages(mib: u32) -> u32 {
    mib.saturating_mul(1024 * 1024 / PAGE_BYTES)
}

/// How often the background checkpointer copies the log back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How long the background checkpointer pauses once the log is past the writer's threshold,
/// leaving the checkpoint that lets the log start over to the writer.
const STAND_ASIDE: Duration = Duration::from_millis(500);

/// Connects a service to its database. On PostgreSQL the service's tables live in a schema of
/// their own (`lianyu_<service>`), so services sharing one server never read each other's tables.
pub async fn connect(
    url: &str,
    service: &str,
    max_connections: Option<u32>,
) -> Result<DatabaseConnection, StorageError> {
    connect_with_log(url, service, max_connections, WAL_AUTOCHECKPOINT_PAGES).await
}

/// [`connect`], with SQLite's write-ahead log allowed `wal_pages` pages before the commit
/// that passes them checkpoints it.
async fn connect_with_log(
    url: &str,
    service: &str,
    max_connections: Option<u32>,
    wal_pages: u32,
) -> Result<DatabaseConnection, StorageError> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        // A call waits at most this for a connection; the database watcher (server.rs) refuses
        // calls at once while the database is known to be down.
        .acquire_timeout(Duration::from_secs(2));
    let postgres = url.starts_with("postgres");
    if postgres {
        let schema = format!("lianyu_{service}");
        ensure_schema(url, &schema).await?;
        options
            .set_schema_search_path(schema)
            .max_connections(max_connections.unwrap_or(16))
            .map_sqlx_postgres_pool_opts(|o| {
                o.after_release(discard_if_inside_transaction::<sea_orm::sqlx::Postgres>)
            });
    } else {
        if let Some(dir) = sqlite_dir(url) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::Other(format!("data directory: {e}")))?;
        }
        // SQLite takes one writer at a time; a single connection makes writes queue in the pool
        // instead of failing with SQLITE_BUSY when a read transaction upgrades to a write.
        options
            .max_connections(max_connections.unwrap_or(1))
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    .pragma("wal_autocheckpoint", wal_pages.to_string())
            })
            .map_sqlx_sqlite_pool_opts(|o| {
                o.after_release(discard_if_inside_transaction::<sea_orm::sqlx::Sqlite>)
            });
    }
    Ok(Database::connect(options).await?)
}

/// One connection to the database server for asking whether it answers: no schema to ensure
/// (a concurrent `CREATE SCHEMA IF NOT EXISTS` can fail on PostgreSQL, which must not read as
/// an outage), no pool to fill.
pub async fn probe(url: &str) -> Result<DatabaseConnection, StorageError> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(2));
    Ok(Database::connect(options).await?)
}

/// An OK must mean committed. After a failed statement or commit (SQLITE_FULL, a dropped
/// PostgreSQL connection) the driver can be left believing a transaction is still open: SQLite
/// had already rolled it back itself, so the driver's ROLLBACK fails and it keeps counting the
/// transaction. The next transaction on that connection then becomes a savepoint inside a
/// transaction that never commits — answered OK, lost at the next failure. So a connection
/// coming back to the pool still inside a transaction is closed, never reused (the pool opens
/// a fresh one). A connection the driver counts inside a transaction is pinged first, which
/// lets a rollback queued by a dropped transaction finish (SQLite's worker lowers the count
/// only once it ran); one it counts outside is not, since a ping is a trip to the database —
/// on SQLite's single writer, one more hand-off between every two transactions (the pool
/// pings every returning connection once itself, after this).
fn discard_if_inside_transaction<DB: sea_orm::sqlx::Database>(
    conn: &mut DB::Connection,
    _meta: sea_orm::sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<bool, sea_orm::sqlx::Error>> {
    use sea_orm::sqlx::Connection;
    Box::pin(async move {
        if !conn.is_in_transaction() {
            return Ok(true);
        }
        conn.ping().await?;
        let inside = conn.is_in_transaction();
        if inside {
            tracing::warn!("a connection came back inside a failed transaction; closing it");
        }
        Ok(!inside)
    })
}

async fn ensure_schema(url: &str, schema: &str) -> Result<(), StorageError> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5));
    let db = Database::connect(options).await?;
    let created = db
        .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .await;
    if let Err(e) = created {
        // Two connections creating the schema at once: one of them is told the name is taken
        // (PostgreSQL's IF NOT EXISTS does not cover the race). It exists either way.
        let exists = db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 AS one FROM pg_namespace WHERE nspname = $1",
                [schema.into()],
            ))
            .await?
            .is_some();
        if !exists {
            return Err(e.into());
        }
    }
    db.close().await?;
    Ok(())
}

fn sqlite_dir(url: &str) -> Option<&std::path::Path> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path == ":memory:" || path.is_empty() {
        return None;
    }
    std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
}

/// Which backend a connection talks to, for the rare statement that differs.
pub fn backend(db: &impl ConnectionTrait) -> DbBackend {
    db.get_database_backend()
}

/// Holds the rows of entity `E` whose (single-column) primary keys are `ids` until `txn` ends,
/// taking them in key order so that two transactions holding the same rows never wait on each
/// other crosswise: PostgreSQL `SELECT … FOR UPDATE`. On SQLite it does nothing — the one
/// writer already runs changes one at a time, and SQLite has no row locks. For a
/// read-modify-write of a row (a field-masked update, a state change, an acceptance) that must
/// build on what the one before it committed, instead of writing back what it read before
/// that commit. A missing row holds nothing.
pub async fn hold_rows<E>(txn: &impl ConnectionTrait, ids: &[&str]) -> Result<(), StorageError>
where
    E: EntityTrait,
    <E::PrimaryKey as PrimaryKeyTrait>::ValueType: From<String>,
{
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let Some(key) = E::PrimaryKey::iter().next() else {
        return Ok(());
    };
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        E::find_by_id(id.to_owned())
            .select_only()
            .column(key.into_column())
            .lock_exclusive()
            .into_tuple::<String>()
            .one(txn)
            .await?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, the kit tables' time unit.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Connects a service to its database and, unless `LIANYU_MIGRATE=false`, brings its schema up
/// to date with the service's migrator `M`. With `LIANYU_MIGRATE=false` (Kubernetes, where a
/// Job runs `--migrate-only` once per rollout) it waits until the schema is current instead:
/// every migration this build knows has been applied.
pub async fn open<M: sea_orm_migration::MigratorTrait>(
    config: &crate::config::Config,
    service: &str,
) -> Result<DatabaseConnection, OpenError> {
    let url = config
        .checked_database_url(service)
        .map_err(OpenError::Config)?;
    let log = wal_pages(config.sqlite_wal_mib);
    let db = connect_with_log(&url, service, config.db_max_connections, log).await?;
    if !url.starts_with("postgres") {
        spawn_checkpointer(&url, service, log).await?;
    }
    if config.migrate {
        migrate::<M>(&db, &url, service).await?;
    } else {
        wait_for_schema::<M>(&db, service).await;
    }
    Ok(db)
}

/// Copies a SQLite database's write-ahead log back into its file every [`CHECKPOINT_EVERY`],
/// on a connection of its own, ahead of the writer: the commit that takes the log past
/// `wal_pages` ([`WAL_AUTOCHECKPOINT_PAGES`] unless configured) still checkpoints — that is
/// what lets the log start over, and so what keeps it from growing without bound under steady
/// writes — but copies only the pages this task has not yet copied, with the writer's other
/// calls waiting meanwhile. The checkpoint is PASSIVE: it copies what no reader still needs and
/// never waits for a reader or blocks a writer. What is durable does not change: a commit is in
/// the log either way. Runs as long as the runtime.
async fn spawn_checkpointer(url: &str, service: &str, wal_pages: u32) -> Result<(), StorageError> {
    let db = connect_with_log(url, service, Some(1), wal_pages).await?;
    let service = service.to_owned();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            every.tick().await;
            let pass = db
                .query_one_raw(sea_orm::Statement::from_string(
                    DbBackend::Sqlite,
                    "PRAGMA wal_checkpoint(PASSIVE)",
                ))
                .await
                .and_then(|row| match row {
                    Some(row) => row.try_get_by_index::<i64>(1),
                    None => Ok(0),
                });
            match pass {
                Ok(log) => {
                    failing = false;
                    // Past the writer's threshold its next commit checkpoints, and only that
                    // checkpoint lets the log start over; one of ours running at that moment
                    // would make it give up (one checkpoint at a time). Stand aside meanwhile.
                    if log >= i64::from(wal_pages) {
                        tokio::time::sleep(STAND_ASIDE).await;
                    }
                }
                // Logged once per run of failures (a full disk, say): the writer's own
                // checkpoint still bounds the log, and the next pass tries again.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(service = %service, error = %e, "WAL checkpoint failed");
                }
                Err(_) => {}
            }
        }
    });
    Ok(())
}

/// `--migrate-only`: brings `service`'s schema up to date under its migration lock, whatever
/// `LIANYU_MIGRATE` says; the number of migrations applied.
pub async fn migrate_only<M: sea_orm_migration::MigratorTrait>(
    config: &crate::config::Config,
    service: &str,
) -> Result<usize, OpenError> {
    let url = config
        .checked_database_url(service)
        .map_err(OpenError::Config)?;
    let db = connect(&url, service, Some(1)).await?;
    let pending = pending_migrations::<M>(&db).await.len();
    migrate::<M>(&db, &url, service).await?;
    let _ = db.close().await;
    Ok(pending)
}

/// How often a replica that does not migrate looks for the schema it needs.
const SCHEMA_POLL: Duration = Duration::from_millis(500);

/// Returns once every migration of `M` is recorded as applied (a newer build's migrations may
/// be there too: schema changes are additive across one rollout). Logs what it waits for.
async fn wait_for_schema<M: sea_orm_migration::MigratorTrait>(
    db: &DatabaseConnection,
    service: &str,
) {
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let pending = pending_migrations::<M>(db).await;
        if pending.is_empty() {
            return;
        }
        if last_log.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
            tracing::warn!(
                service,
                pending = pending.len(),
                first = %pending[0],
                "waiting for the schema: run this image with --migrate-only (the migration Job)"
            );
            last_log = Some(std::time::Instant::now());
        }
        tokio::time::sleep(SCHEMA_POLL).await;
    }
}

/// The migrations of `M` not recorded in its migration table (all of them while the table
/// does not exist or cannot be read). Reads only: a replica that does not migrate never
/// creates anything.
pub async fn pending_migrations<M: sea_orm_migration::MigratorTrait>(
    db: &DatabaseConnection,
) -> Vec<String> {
    let table = M::migration_table_name().to_string();
    let applied: std::collections::HashSet<String> = match db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT version FROM \"{table}\""),
        ))
        .await
    {
        Ok(rows) => rows
            .iter()
            .filter_map(|row| row.try_get::<String>("", "version").ok())
            .collect(),
        Err(_) => std::collections::HashSet::new(),
    };
    M::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .filter(|name| !applied.contains(name))
        .collect()
}

/// Brings `service`'s schema up to date under its migration lock (`--migrate-only` and
/// every start with `LIANYU_MIGRATE` unset).
async fn migrate<M: sea_orm_migration::MigratorTrait>(
    db: &DatabaseConnection,
    url: &str,
    service: &str,
) -> Result<(), OpenError> {
    // Replicas starting together take turns: on PostgreSQL an advisory lock per service
    // schema, held on a connection of its own for as long as the migrations run (and
    // released by the server if this process dies); on SQLite a file lock beside the
    // database. The second finds the schema current instead of racing the first's
    // CREATE TABLEs.
    let lock = migration_lock(url, service).await?;
    let migrated = M::up(db, None)
        .await
        .map_err(|e| OpenError::Migration(format!("{service}: {e}")));
    match lock {
        MigrationLock::Postgres(conn) => {
            let _ = conn
                .execute_unprepared(&format!(
                    "SELECT pg_advisory_unlock({})",
                    migration_key(service)
                ))
                .await;
            let _ = conn.close().await;
        }
        // Closing the file releases its lock.
        MigrationLock::File(file) => drop(file),
        MigrationLock::None => {}
    }
    migrated?;
    Ok(())
}

/// The advisory lock key of `service`'s migrations: stable across processes and versions.
fn migration_key(service: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("lianyu migrations lianyu_{service}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// A held migration lock, released when the migrations are done (or by the database server
/// or the OS when the process dies).
enum MigrationLock {
    /// A PostgreSQL session holding the service's advisory lock.
    Postgres(DatabaseConnection),
    /// An exclusive lock on a file beside the SQLite database (processes sharing the file).
    File(std::fs::File),
    /// An in-memory database: nobody to take turns with.
    None,
}

/// Waits for and takes `service`'s migration lock: on PostgreSQL an advisory lock on a
/// connection of its own; on SQLite an exclusive lock on `<database>.migrate-lock`.
async fn migration_lock(url: &str, service: &str) -> Result<MigrationLock, StorageError> {
    if url.starts_with("postgres") {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .sqlx_logging(false)
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10));
        let conn = Database::connect(options).await?;
        conn.execute_unprepared(&format!(
            "SELECT pg_advisory_lock({})",
            migration_key(service)
        ))
        .await?;
        return Ok(MigrationLock::Postgres(conn));
    }
    let Some(path) = sqlite_file(url) else {
        return Ok(MigrationLock::None);
    };
    let lock_path = format!("{path}.migrate-lock");
    let file = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| StorageError::Other(format!("migration lock: {e}")))?
    .map_err(|e| StorageError::Other(format!("migration lock: {e}")))?;
    Ok(MigrationLock::File(file))
}

/// The database file of a SQLite URL; `None` for an in-memory one.
fn sqlite_file(url: &str) -> Option<String> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    (path != ":memory:" && !path.is_empty()).then(|| path.to_owned())
}

/// Why a service's database could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The service's database URL is missing or malformed; names the variable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    #[error("migrations: {0}")]
    Migration(String),
}

/// A pool for reads outside transactions. On SQLite the writer is one connection, so reads get
/// their own read-only pool (WAL lets them run beside the writer and see every commit); on
/// PostgreSQL the one pool serves both.
pub async fn open_reader(
    config: &crate::config::Config,
    service: &str,
    writer: &DatabaseConnection,
) -> Result<DatabaseConnection, StorageError> {
    let url = config.database_url(service);
    if url.starts_with("postgres") {
        return Ok(writer.clone());
    }
    let readers = std::thread::available_parallelism().map_or(4, |n| n.get() as u32 * 2);
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .acquire_timeout(Duration::from_secs(5))
        .max_connections(readers)
        .map_sqlx_sqlite_opts(|o| {
            o.read_only(true)
                .busy_timeout(Duration::from_secs(5))
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
        });
    Ok(Database::connect(options).await?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{DbErr, RuntimeErr, sqlx};

    use super::StorageError;

    fn exec(e: sqlx::Error) -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
    }

    #[test]
    fn a_lost_connection_is_unavailable_not_internal() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        for lost in [
            exec(sqlx::Error::Io(reset)),
            exec(sqlx::Error::PoolTimedOut),
            exec(sqlx::Error::PoolClosed),
            exec(sqlx::Error::Protocol("unexpected end of stream".into())),
        ] {
            let classified = StorageError::from(lost);
            assert!(
                matches!(classified, StorageError::Unavailable(_)),
                "{classified:?}"
            );
            assert_eq!(classified.code(), tonic::Code::Unavailable);
        }
    }

    /// The bundled SQLite is built with the query planner stability guarantee
    /// (`.cargo/config.toml`): without it every query ending in `LIMIT ?` — every sea-orm
    /// `.one()` — was parsed and planned again each time it ran (BENCHMARKS.md). And a `LIMIT`
    /// bound anew on the same cached statement still limits by the new value.
    #[tokio::test]
    async fn the_bundled_sqlite_plans_without_looking_at_bound_values() {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("qpsg.db").display());
        let db = super::connect(&url, "qpsg", None).await.unwrap();
        let options: Vec<String> = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA compile_options",
            ))
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get_by_index(0).unwrap())
            .collect();
        assert!(
            options.iter().any(|o| o == "ENABLE_QPSG"),
            "SQLite built without ENABLE_QPSG: {options:?}"
        );
        db.execute_unprepared(
            "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3)",
        )
        .await
        .unwrap();
        for limit in [1_i64, 3, 2, 1] {
            let rows = db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "SELECT id FROM t ORDER BY id LIMIT ?",
                    [limit.into()],
                ))
                .await
                .unwrap();
            assert_eq!(rows.len() as i64, limit);
        }
    }

    /// Writes three times `threshold` bytes into `db`'s table `t` in back-to-back commits of
    /// `commit_kb` KB; how often the log at `wal` started over meanwhile, and the longest it got.
    /// Each start over is counted where SQLite records it: the log header's checkpoint sequence
    /// number (bytes 12..16, big-endian), which goes up by one each time the log is written
    /// again from its start.
    async fn write_three_logs(
        db: &sea_orm::DatabaseConnection,
        wal: &std::path::Path,
        threshold: u64,
        commit_kb: u64,
    ) -> (u32, u64) {
        use sea_orm::ConnectionTrait;
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)")
            .await
            .unwrap();
        let restarts_so_far = || {
            use std::io::Read;
            let mut header = [0u8; 16];
            std::fs::File::open(wal)
                .and_then(|mut f| f.read_exact(&mut header))
                .map(|()| u32::from_be_bytes([header[12], header[13], header[14], header[15]]))
                .unwrap_or_default()
        };
        let (mut longest, mut restarts, mut last) = (0, 0, restarts_so_far());
        for _ in 0..3 * threshold / (commit_kb * 1024) {
            db.execute_unprepared(&format!(
                "INSERT INTO t (pad) SELECT randomblob(1024) FROM \
                 (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < \
                 {commit_kb}) SELECT i FROM n)"
            ))
            .await
            .unwrap();
            longest = longest.max(std::fs::metadata(wal).unwrap().len());
            let now = restarts_so_far();
            restarts += u32::from(now != last);
            last = now;
        }
        (restarts, longest)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_steady_writes_the_log_starts_over_again_and_again_and_is_copied_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wal.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let db = super::connect(&url, "wal", None).await.unwrap();
        super::spawn_checkpointer(&url, "wal", super::WAL_AUTOCHECKPOINT_PAGES)
            .await
            .unwrap();
        // Three times the writer's threshold in back-to-back commits of 80 KB, the background
        // checkpointer running beside them: the log must start over again and again, and what
        // was written reaches the database file.
        let threshold = u64::from(super::WAL_AUTOCHECKPOINT_PAGES) * 4096;
        let (restarts, longest) =
            write_three_logs(&db, &dir.path().join("wal.db-wal"), threshold, 80).await;
        // About three starts over here, one each time the log passes the writer's threshold.
        // Without the writer's own checkpoint the log never started over and grew to all that
        // was written (measured with the threshold of 1,000 pages this test was first written
        // for: 0 starts over, 79 MB of log for 40 MB written). How far past the threshold the
        // log runs before it starts over is not this test's: when the writer's checkpoint meets
        // a background pass (one checkpoint at a time) it runs on a little, further when the
        // checkpointer's thread is descheduled while it holds the checkpoint on a loaded
        // machine (BENCHMARKS.md). The property is that the log starts over again and again —
        // it never holds everything written — and that what was written reaches the database
        // file.
        assert!(
            restarts >= 2 && longest < 2 * threshold,
            "the log started over {restarts} times, and grew to {longest} bytes"
        );
        assert!(std::fs::metadata(&file).unwrap().len() > 2 * threshold);
    }

    /// No migrations: [`super::open`] with nothing but a connection to make.
    struct NoMigrations;

    #[sea_orm_migration::async_trait::async_trait]
    impl sea_orm_migration::MigratorTrait for NoMigrations {
        fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
            Vec::new()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_opened_with_a_shorter_log_keeps_its_log_that_short() {
        use sea_orm::ConnectionTrait;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let config = crate::config::Config::from_vars(move |name| match name {
            "LIANYU_SQLITE_WAL_MIB" => Some("1".into()),
            "LIANYU_DATA_DIR" => Some(data.clone()),
            _ => None,
        })
        .unwrap();
        let db = super::open::<NoMigrations>(&config, "small").await.unwrap();
        let pages = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "PRAGMA wal_autocheckpoint",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        assert_eq!(pages, 256, "1 MiB of 4 KiB pages");
        // The log starts over each time it passes 1 MiB, never near the default's 64 MiB.
        let threshold = 1024 * 1024;
        let (restarts, longest) =
            write_three_logs(&db, &dir.path().join("small.db-wal"), threshold, 16).await;
        assert!(
            restarts >= 2 && longest < 2 * threshold,
            "the log started over {restarts} times, and grew to {longest} bytes"
        );
    }

    #[test]
    fn a_full_disk_is_resource_exhausted_and_other_failures_internal() {
        let full = StorageError::from(DbErr::Custom("database or disk is full".into()));
        assert_eq!(
            (full.code(), full.reason()),
            (tonic::Code::ResourceExhausted, "STORAGE_FULL")
        );
        let other = StorageError::from(DbErr::Custom("no such column: x".into()));
        assert_eq!(other.code(), tonic::Code::Internal);
    }
}
