//! Races between transactions on PostgreSQL. A deadlock is a race the kit retries, not an
//! internal error: two transactions lock two rows in opposite orders, one of them is chosen as
//! the victim, and its error is classified CONCURRENT_UPDATE (it carries no SQLSTATE in its
//! text). And group commit keeps mutations about one key off two lanes at once, so that they
//! never deadlock each other in the first place.

use lianyu_kit::{
    group::Writer,
    storage::{StorageError, connect},
    testing::{TestDatabase, backend_is_postgres},
};
use sea_orm::{ConnectionTrait, TransactionTrait};

#[tokio::test]
async fn a_deadlock_victim_is_told_to_retry() {
    if !backend_is_postgres() {
        // SQLite has one writer: two write transactions never hold locks at once.
        return;
    }
    let db = TestDatabase::new("kit_deadlock").await;
    let conn = connect(&db.url, "races", Some(4)).await.unwrap();
    conn.execute_unprepared(
        "CREATE TABLE pair (id INT PRIMARY KEY, n INT NOT NULL); INSERT INTO pair VALUES (1, 0), (2, 0)",
    )
    .await
    .unwrap();
    let (a, b) = (conn.begin().await.unwrap(), conn.begin().await.unwrap());
    a.execute_unprepared("UPDATE pair SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    b.execute_unprepared("UPDATE pair SET n = n + 1 WHERE id = 2")
        .await
        .unwrap();
    // Each now wants the other's row, at the same time.
    let (ra, rb) = tokio::join!(
        a.execute_unprepared("UPDATE pair SET n = n + 1 WHERE id = 2"),
        b.execute_unprepared("UPDATE pair SET n = n + 1 WHERE id = 1"),
    );
    let errors: Vec<StorageError> = [ra.err(), rb.err()]
        .into_iter()
        .flatten()
        .map(StorageError::from)
        .collect();
    assert_eq!(errors.len(), 1, "exactly one victim: {errors:?}");
    assert!(
        matches!(errors[0], StorageError::Conflict(_)),
        "{:?}",
        errors[0]
    );
}

/// Group commit's lanes on PostgreSQL are open transactions side by side, each holding the
/// locks of its batch to its commit. Mutations about one key that lock the key's rows in
/// opposite orders deadlock when round robin puts them on two lanes; a writer keyed by what
/// they lock puts them on one lane, where a batch waits for the one before it to commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutations_keyed_alike_never_deadlock_across_lanes() {
    if !backend_is_postgres() {
        // SQLite has one writer, and group commit one lane there.
        return;
    }
    const KEYS: i32 = 3;
    const PER_KEY: i32 = 40;
    let db = TestDatabase::new("kit_keyed_lanes").await;
    let conn = connect(&db.url, "races", Some(16)).await.unwrap();
    conn.execute_unprepared(&format!(
        "CREATE TABLE pair (id INT PRIMARY KEY, n INT NOT NULL); \
         INSERT INTO pair SELECT g, 0 FROM generate_series(0, {}) g",
        KEYS * 2 - 1
    ))
    .await
    .unwrap();
    let writer = Writer::grouped(conn.clone());
    let start = std::sync::Arc::new(tokio::sync::Barrier::new((KEYS * PER_KEY) as usize));
    let tasks: Vec<_> = (0..KEYS * PER_KEY)
        .map(|i| {
            let key = i % KEYS;
            let (first, second) = if i % 2 == 0 {
                (key * 2, key * 2 + 1)
            } else {
                (key * 2 + 1, key * 2)
            };
            let writer = writer.keyed(&format!("member-{key}"));
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                writer
                    .transact(async |txn| {
                        for row in [first, second] {
                            txn.execute_unprepared(&format!(
                                "UPDATE pair SET n = n + 1 WHERE id = {row}"
                            ))
                            .await
                            .map_err(|e| Some(e.to_string()))?;
                            tokio::task::yield_now().await;
                        }
                        Ok(None::<String>)
                    })
                    .await
            })
        })
        .collect();
    let mut failed = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(Ok(None)) => {}
            other => failed.push(format!("{other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    // Every mutation's two increments are committed, none lost and none twice.
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT n FROM pair ORDER BY id",
        ))
        .await
        .unwrap();
    let counts: Vec<i32> = rows
        .iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect();
    assert_eq!(counts, vec![PER_KEY; (KEYS * 2) as usize]);
}
