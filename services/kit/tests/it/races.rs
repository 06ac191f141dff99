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

/// On PostgreSQL the next batch of a lane opens while the one before it commits. A member
/// refused in its savepoint there (the lane careful after a failure) waits for no commit; the
/// batch it leaves must not stay open for lack of anyone to commit it — the lane would keep a
/// transaction and a connection, and a refused call that waits for its lane to settle (a
/// retry racing its twin) would hang. (A version of group commit that held batches open to
/// gather members during a commit in flight did exactly that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_a_refused_member_leaves_during_a_commit_does_not_stay_open() {
    if !backend_is_postgres() {
        // SQLite's one connection holds the next batch back until a commit ends.
        return;
    }
    let db = TestDatabase::new("kit_gather_refused").await;
    let conn = connect(&db.url, "races", Some(8)).await.unwrap();
    conn.execute_unprepared(
        "CREATE TABLE t (id INT PRIMARY KEY, n INT NOT NULL); INSERT INTO t VALUES (1, 0)",
    )
    .await
    .unwrap();
    let writer = Writer::single_lane(conn.clone());
    // A refusal turns the lane careful: the next members run in savepoints of their own.
    let refused = writer.transact(async |_| Err::<&str, _>("no")).await;
    assert!(matches!(refused, Ok(Err("no"))));
    // A commit held in flight: its deferred write waits for a row another transaction locked.
    let blocker = conn.begin().await.unwrap();
    blocker
        .execute_unprepared("UPDATE t SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    let held = tokio::spawn({
        let writer = writer.clone();
        async move {
            writer
                .transact_deferring(async |_| {
                    let mut writes = lianyu_kit::writes::Writes::new();
                    writes.defer(sea_orm::Statement::from_string(
                        sea_orm::DbBackend::Postgres,
                        "UPDATE t SET n = n + 10 WHERE id = 1",
                    ));
                    Ok::<_, ()>(((), writes))
                })
                .await
        }
    });
    // Until PostgreSQL shows that commit waiting on the lock.
    loop {
        let waiting = conn
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE t SET n = n + 10%'",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        if waiting == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let refused = writer.transact(async |_| Err::<&str, _>("refused")).await;
    assert!(matches!(refused, Ok(Err("refused"))));
    blocker.commit().await.unwrap();
    assert!(matches!(held.await.unwrap(), Ok(Ok(()))));
    // Every batch of the lane has ended: none is left open.
    tokio::time::timeout(std::time::Duration::from_secs(10), writer.settled())
        .await
        .expect("the lane settles once the commit in flight has ended");
}

/// A bare table of counters for [`hold_rows`]: one text key, one number.
mod counter {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "counter")]
    pub(super) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub n: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(super) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `hold_rows` is what a read-modify-write of one row (a field-masked update, an acceptance)
/// rests on under PostgreSQL's READ COMMITTED: every transaction that holds the row before
/// reading it builds on what the one before it committed, so twenty increments sent at once
/// make twenty; and rows held in opposite orders by two transactions are taken in one order,
/// so they never deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_rows_make_each_read_modify_write_build_on_the_last_and_never_deadlock() {
    use lianyu_kit::storage::hold_rows;
    use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};
    if !backend_is_postgres() {
        // SQLite has one writer and no row locks: `hold_rows` does nothing there.
        return;
    }
    let db = TestDatabase::new("kit_hold_rows").await;
    let conn = connect(&db.url, "races", Some(24)).await.unwrap();
    conn.execute_unprepared(
        "CREATE TABLE counter (id TEXT PRIMARY KEY, n BIGINT NOT NULL); \
         INSERT INTO counter VALUES ('a', 0), ('b', 0)",
    )
    .await
    .unwrap();
    // Each adds one to every row it names: holds them, reads them, writes them back.
    let add_one = |ids: Vec<&'static str>| {
        let conn = conn.clone();
        async move {
            let txn = conn.begin().await?;
            hold_rows::<counter::Entity>(&txn, &ids).await?;
            for id in ids {
                let row = counter::Entity::find_by_id(id).one(&txn).await?.unwrap();
                let n = row.n;
                let mut row = row.into_active_model();
                row.n = Set(n + 1);
                row.update(&txn).await?;
            }
            txn.commit().await.map_err(StorageError::from)
        }
    };
    let counts = async || {
        let mut counts: Vec<(String, i64)> = counter::Entity::find()
            .all(&conn)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.n))
            .collect();
        counts.sort();
        counts
    };
    let run_all = async |batches: Vec<Vec<&'static str>>| {
        let replies =
            futures::future::join_all(batches.into_iter().map(|ids| tokio::spawn(add_one(ids))))
                .await;
        for reply in replies {
            reply.unwrap().unwrap();
        }
    };
    // Twenty increments of one row at once: none is lost.
    run_all(vec![vec!["a"]; 20]).await;
    assert_eq!(counts().await, [("a".to_owned(), 20), ("b".to_owned(), 0)]);
    // Twenty of two rows, half naming them the other way round: none deadlocks.
    run_all(
        (0..20)
            .map(|i| {
                if i % 2 == 0 {
                    vec!["a", "b"]
                } else {
                    vec!["b", "a"]
                }
            })
            .collect(),
    )
    .await;
    assert_eq!(counts().await, [("a".to_owned(), 40), ("b".to_owned(), 20)]);
    // A missing row holds nothing and is no error.
    let txn = conn.begin().await.unwrap();
    hold_rows::<counter::Entity>(&txn, &["none"]).await.unwrap();
    txn.commit().await.unwrap();
}
