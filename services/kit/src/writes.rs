//! Writes a mutation stages and sends to the database together.
//!
//! On SQLite every statement is a hand-off to the connection's worker thread and back, and on
//! the one writer those hand-offs, not the statements, are most of a write's cost (a profile of
//! enrolment: two thirds of the time in the kernel switching threads, under 1 % executing
//! SQL). A mutation whose last statements only insert or update — nothing it reads afterwards
//! depends on them — stages them here, and they go as **one** multi-statement query: one
//! hand-off however many rows. Values stay bound parameters (SQLite binds `?` placeholders
//! across the statements of one query in order); nothing is spliced into the SQL text.
//! PostgreSQL's extended protocol takes one statement per query, so there they run one after
//! the other on the transaction, exactly as if executed directly.
//!
//! Staged writes run inside the caller's transaction: if one fails, those before it are undone
//! with the transaction (or its savepoint) like any other statement of the mutation.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryTrait, Statement,
    Values,
    sea_query::{Expr, ExprTrait, Query, SelectStatement},
};

use crate::storage::{
    GUARD_TABLE, StorageError,
    entities::{outbox_counter, outbox_event},
};

/// Outbox rows per insert statement (six bound values each).
const OUTBOX_ROWS_PER_INSERT: usize = 1_000;

/// Statements staged for one trip to the database, in order, and statements deferred to just
/// before the transaction commits.
#[derive(Default, Debug)]
pub struct Writes {
    statements: Vec<Statement>,
    at_commit: Vec<Statement>,
    /// Events for the service's outbox, appended at commit (`Feed::append_staged`).
    outbox: Vec<OutboxRow>,
    /// Whether the staged statements may wait for the commit too ([`Self::deferrable`]).
    deferrable: bool,
}

/// An event bound for the outbox, before it has a sequence.
#[derive(Debug)]
pub(crate) struct OutboxRow {
    pub(crate) kind: String,
    pub(crate) partner_id: Option<String>,
    pub(crate) payload: Vec<u8>,
    pub(crate) created_at: i64,
    pub(crate) subject: Option<String>,
}

impl Writes {
    /// Nothing staged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stages a query built by sea-orm (an insert, an update) for `backend`.
    pub fn add(&mut self, backend: DbBackend, query: &impl QueryTrait) {
        self.statements.push(query.build(backend));
    }

    /// Stages a statement as it is.
    pub fn push(&mut self, statement: Statement) {
        self.statements.push(statement);
    }

    /// Defers a statement to just before the transaction commits: for a write on a hot row
    /// every writer takes (a feed's counter), so that its lock is held for the commit only
    /// and not while the rest of the transaction — in group commit, the rest of a batch — runs.
    /// Nothing in the transaction may read what it writes.
    pub fn defer(&mut self, statement: Statement) {
        self.at_commit.push(statement);
    }

    /// Stages a guard: the trip fails with [`StorageError::Conflict`] (nothing of the
    /// transaction kept) if `select` finds a row *when the guard runs*. A mutation that decided
    /// from a read made before its transaction ("nobody holds this identifier") stages the
    /// read again as a guard ahead of the writes that rest on it. The guard sees what was
    /// committed and what its own transaction wrote before it — on SQLite, whose one writer
    /// serialises every write, that is everything; under PostgreSQL's READ COMMITTED it does
    /// not see concurrent transactions, so there a guard alone does not make a decision
    /// race-free.
    pub fn guard_none(&mut self, backend: DbBackend, select: &SelectStatement) {
        let inner = backend.build(select);
        self.statements.push(Statement {
            sql: format!(
                "INSERT INTO {GUARD_TABLE} (found) SELECT 1 WHERE EXISTS ({})",
                inner.sql
            ),
            ..inner
        });
    }

    /// Declares that every statement staged here may be sent as late as the commit: nothing
    /// the mutation reads depends on them, and whatever they assume of rows they did not read
    /// in the transaction is guarded ([`Self::guard_none`]). A grouped writer on SQLite then
    /// sends them with its batch's commit — one trip for the whole batch — instead of one
    /// trip per mutation while the batch is held (see `crate::group`).
    pub fn deferrable(&mut self) {
        self.deferrable = true;
    }

    /// Whether [`Self::deferrable`] was declared.
    pub fn is_deferrable(&self) -> bool {
        self.deferrable
    }

    /// All of these writes as writes deferred to the commit, the staged statements first.
    pub fn into_deferred(mut self) -> Writes {
        self.statements.append(&mut self.at_commit);
        Writes {
            statements: Vec::new(),
            at_commit: self.statements,
            outbox: self.outbox,
            deferrable: false,
        }
    }

    /// Queues an event for the outbox at commit.
    pub(crate) fn append_to_outbox(&mut self, row: OutboxRow) {
        self.outbox.push(row);
    }

    /// Writes staged, to run now and at commit (an outbox event counts as one).
    pub fn len(&self) -> usize {
        self.statements.len() + self.at_commit.len() + self.outbox.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The writes deferred to the commit, taken out as writes to send then.
    pub fn take_at_commit(&mut self) -> Writes {
        Writes {
            statements: Vec::new(),
            at_commit: std::mem::take(&mut self.at_commit),
            outbox: std::mem::take(&mut self.outbox),
            deferrable: false,
        }
    }

    /// Adds `other`'s writes after these (now and at commit alike). Whether they are
    /// [deferrable](Self::deferrable) stays as declared here: `other`'s declaration covers
    /// only what it staged itself, so it is not carried over.
    pub fn extend(&mut self, other: Writes) {
        self.statements.extend(other.statements);
        self.at_commit.extend(other.at_commit);
        self.outbox.extend(other.outbox);
    }

    /// Sends every staged statement in order, those deferred to the commit last (for a caller
    /// that commits next) and the outbox's events after them: on SQLite as one query, elsewhere
    /// one by one. However many events there are, the outbox costs three statements (one on
    /// PostgreSQL): the counter moved once by their number, their rows numbered back from it,
    /// one NOTIFY.
    pub async fn send(mut self, db: &impl ConnectionTrait) -> Result<(), StorageError> {
        let backend = db.get_database_backend();
        let mut statements = std::mem::take(&mut self.statements);
        statements.append(&mut self.at_commit);
        let outbox = std::mem::take(&mut self.outbox);
        let one_append = backend == DbBackend::Postgres
            && !outbox.is_empty()
            && outbox.len() <= POSTGRES_OUTBOX_ROWS;
        let outbox = if one_append {
            Some(outbox)
        } else {
            statements.extend(outbox_statements(backend, outbox)?);
            None
        };
        match backend {
            DbBackend::Sqlite if statements.len() > 1 => {
                db.execute_raw(joined(statements)).await?;
            }
            _ => {
                for statement in statements {
                    db.execute_raw(statement).await?;
                }
            }
        }
        if let Some(rows) = outbox {
            let expected = i64::try_from(rows.len()).unwrap_or(i64::MAX);
            let appended = db
                .query_one_raw(postgres_append(rows))
                .await?
                .map(|row| row.try_get_by_index::<i64>(0))
                .transpose()?;
            if appended != Some(expected) {
                return Err(StorageError::Other("outbox counter row is missing".into()));
            }
        }
        Ok(())
    }
}

/// The statements that append `rows` to the outbox, in order: the counter's row is locked and
/// moved by their number, and the rows take the sequences just below its new value.
fn outbox_statements(
    backend: DbBackend,
    rows: Vec<OutboxRow>,
) -> Result<Vec<Statement>, StorageError> {
    let count = i64::try_from(rows.len())
        .map_err(|_| StorageError::Other("too many outbox events in one transaction".into()))?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut statements = vec![
        outbox_counter::Entity::update_many()
            .col_expr(
                outbox_counter::Column::LastSeq,
                Expr::col(outbox_counter::Column::LastSeq).add(bigint(count)),
            )
            .filter(outbox_counter::Column::Id.eq(1))
            .build(backend),
    ];
    let last = Query::select()
        .column(outbox_counter::Column::LastSeq)
        .from(outbox_counter::Entity)
        .and_where(Expr::col(outbox_counter::Column::Id).eq(1))
        .to_owned();
    let mut below: i64 = count;
    for chunk in rows.chunks(OUTBOX_ROWS_PER_INSERT) {
        let mut insert = Query::insert();
        insert.into_table(outbox_event::Entity).columns([
            outbox_event::Column::Seq,
            outbox_event::Column::Kind,
            outbox_event::Column::PartnerId,
            outbox_event::Column::Payload,
            outbox_event::Column::CreatedAt,
            outbox_event::Column::Subject,
        ]);
        for row in chunk {
            below -= 1;
            insert
                .values([
                    Expr::SubQuery(None, Box::new(last.clone().into())).sub(bigint(below)),
                    row.kind.clone().into(),
                    row.partner_id.clone().into(),
                    row.payload.clone().into(),
                    row.created_at.into(),
                    row.subject.clone().into(),
                ])
                .map_err(|e| StorageError::Other(format!("outbox insert: {e}")))?;
        }
        statements.push(backend.build(&insert));
    }
    if backend == DbBackend::Postgres {
        // Delivered at commit (once per transaction): every replica's tail wakes.
        statements.push(Statement::from_string(
            backend,
            "SELECT pg_notify('lianyu_feed_' || current_schema(), '')",
        ));
    }
    Ok(statements)
}

/// Outbox rows PostgreSQL appends in one statement at most (six parameters each, of the
/// 65,535 one statement may bind); more go as the separate statements.
const POSTGRES_OUTBOX_ROWS: usize = 10_000;

/// On PostgreSQL, the outbox's three statements as one: the counter moved (its row locked to
/// the commit), the rows numbered back from its new value, and the NOTIFY, in data-modifying
/// `WITH` queries; it answers how many rows it appended (none when the counter's row is
/// missing). Every appending transaction waits for that row lock, held from this statement to
/// the end of the commit, so each round trip fewer inside it is one fewer for every writer
/// queued behind it.
fn postgres_append(rows: Vec<OutboxRow>) -> Statement {
    use sea_orm::EntityName;
    let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(1 + rows.len() * 6);
    values.push(count.into());
    let mut tuples = Vec::with_capacity(rows.len());
    let mut below = count;
    for row in rows {
        below -= 1;
        let k = values.len();
        tuples.push(format!(
            "(CAST(${} AS BIGINT), ${}, ${}, ${}, CAST(${} AS BIGINT), ${})",
            k + 1,
            k + 2,
            k + 3,
            k + 4,
            k + 5,
            k + 6
        ));
        values.extend([
            below.into(),
            row.kind.into(),
            row.partner_id.into(),
            row.payload.into(),
            row.created_at.into(),
            row.subject.into(),
        ]);
    }
    let sql = format!(
        "WITH counter AS (UPDATE \"{counter}\" SET last_seq = last_seq + CAST($1 AS BIGINT) \
                          WHERE id = 1 RETURNING last_seq), \
              appended AS (INSERT INTO \"{events}\" \
                                  (seq, kind, partner_id, payload, created_at, subject) \
                           SELECT counter.last_seq - e.below, e.kind, e.partner_id, e.payload, \
                                  e.created_at, e.subject \
                           FROM counter, (VALUES {tuples}) \
                                AS e (below, kind, partner_id, payload, created_at, subject) \
                           RETURNING 1) \
         SELECT (SELECT COUNT(*) FROM appended), \
                pg_notify('lianyu_feed_' || current_schema(), '')",
        counter = outbox_counter::Entity.table_name(),
        events = outbox_event::Entity.table_name(),
        tuples = tuples.join(", "),
    );
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// `n` as a typed parameter: PostgreSQL would take a bare one beside a BIGINT for an INTEGER
/// and refuse the 8-byte value bound to it.
fn bigint(n: i64) -> Expr {
    Expr::val(n).cast_as("BIGINT")
}

/// SQLite statements as one query: the texts joined, the values appended in order.
fn joined(statements: Vec<Statement>) -> Statement {
    let mut sql = String::new();
    let mut values = Vec::new();
    for statement in statements {
        if !sql.is_empty() {
            sql.push_str(";\n");
        }
        sql.push_str(statement.sql.trim_end().trim_end_matches(';'));
        if let Some(Values(v)) = statement.values {
            values.extend(v);
        }
    }
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

#[cfg(test)]
mod tests {
    use sea_orm::{DatabaseConnection, TransactionTrait};

    use super::*;

    async fn database(dir: &tempfile::TempDir) -> DatabaseConnection {
        let url = format!("sqlite://{}/writes.db?mode=rwc", dir.path().display());
        let db = crate::storage::connect(&url, "writes", None).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
            .await
            .unwrap();
        db
    }

    fn insert(id: i64, note: &str) -> Statement {
        Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO t (id, note) VALUES (?, ?)",
            [id.into(), note.into()],
        )
    }

    async fn rows(db: &DatabaseConnection) -> Vec<(i64, String)> {
        db.query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT id, note FROM t ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
            )
        })
        .collect()
    }

    #[tokio::test]
    async fn staged_statements_run_in_order_with_their_own_values() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let mut writes = Writes::new();
        // A value that would break SQL spliced into text stays a value.
        writes.push(insert(1, "it's; DROP TABLE t; --"));
        writes.push(insert(2, "two"));
        writes.push(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "UPDATE t SET note = note || ? WHERE id = ?",
            ["!".into(), 2i64.into()],
        ));
        assert_eq!(writes.len(), 3);
        writes.send(&db).await.unwrap();
        assert_eq!(
            rows(&db).await,
            vec![
                (1, "it's; DROP TABLE t; --".to_owned()),
                (2, "two!".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_guard_fails_the_trip_as_a_conflict_only_when_its_query_finds_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        db.execute_unprepared(&crate::storage::guard_table_sql())
            .await
            .unwrap();
        let taken = |id: i64| {
            Query::select()
                .expr(Expr::val(1))
                .from(sea_orm::sea_query::Alias::new("t"))
                .and_where(Expr::col(sea_orm::sea_query::Alias::new("id")).eq(id))
                .to_owned()
        };
        // Nothing found: the writes behind the guard go through.
        let mut writes = Writes::new();
        writes.guard_none(DbBackend::Sqlite, &taken(1));
        writes.push(insert(1, "first"));
        writes.send(&db).await.unwrap();
        // The guarded row exists now: the guard fails the trip, and its transaction keeps
        // nothing of it — not the statements before the guard either.
        let txn = db.begin().await.unwrap();
        let mut writes = Writes::new();
        writes.push(insert(2, "before the guard"));
        writes.guard_none(DbBackend::Sqlite, &taken(1));
        writes.push(insert(3, "behind the guard"));
        let failed = writes.send(&txn).await;
        assert!(
            matches!(failed, Err(StorageError::Conflict(_))),
            "{failed:?}"
        );
        drop(txn);
        assert_eq!(rows(&db).await, vec![(1, "first".to_owned())]);
        // A guard sees what its own trip wrote before it.
        let mut writes = Writes::new();
        writes.push(insert(4, "written first"));
        writes.guard_none(DbBackend::Sqlite, &taken(4));
        let failed = writes.send(&db.begin().await.unwrap()).await;
        assert!(matches!(failed, Err(StorageError::Conflict(_))));
        let guards = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("SELECT COUNT(*) FROM {GUARD_TABLE}"),
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        assert_eq!(guards, 0, "the guard table never holds a row");
    }

    #[tokio::test]
    async fn a_failing_statement_fails_the_trip_and_its_transaction_undoes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let txn = db.begin().await.unwrap();
        let mut writes = Writes::new();
        writes.push(insert(1, "kept only if all go"));
        writes.push(insert(1, "a duplicate key"));
        writes.push(insert(3, "never reached"));
        let failed = writes.send(&txn).await;
        assert!(
            matches!(failed, Err(StorageError::AlreadyExists)),
            "{failed:?}"
        );
        drop(txn);
        assert!(rows(&db).await.is_empty(), "the rolled-back trip left rows");
    }
}
