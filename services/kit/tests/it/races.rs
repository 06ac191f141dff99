//! A deadlock between two transactions is a race the kit retries, not an internal error: on
//! PostgreSQL two transactions lock two rows in opposite orders, one of them is chosen as the
//! victim, and its error is classified CONCURRENT_UPDATE (it carries no SQLSTATE in its text).

use lianyu_kit::{
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
