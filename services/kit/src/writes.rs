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

use sea_orm::{ConnectionTrait, DbBackend, QueryTrait, Statement, Values};

use crate::storage::StorageError;

/// Statements staged for one trip to the database, in order.
#[derive(Default, Debug)]
pub struct Writes {
    statements: Vec<Statement>,
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

    /// Statements staged.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Sends every staged statement in order: on SQLite as one query, elsewhere one by one.
    pub async fn send(self, db: &impl ConnectionTrait) -> Result<(), StorageError> {
        match db.get_database_backend() {
            DbBackend::Sqlite if self.statements.len() > 1 => {
                db.execute_raw(joined(self.statements)).await?;
            }
            _ => {
                for statement in self.statements {
                    db.execute_raw(statement).await?;
                }
            }
        }
        Ok(())
    }
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
