//! Outbox, Watch and a consumer that resumes from its stored cursor after restarts.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use lianyu_kit::{Config, feed::Consumer, testing::TestDatabase};
use lianyu_proto::{
    common::v1::FeedCursor,
    identity::v1::{CreatePartnerRequest, WatchConsentEventsRequest},
};
use tokio_util::sync::CancellationToken;

use crate::harness::TestServer;

async fn create(server: &TestServer, token: &str, id: &str) {
    let mut client = server.partners(Some(token.to_owned())).await;
    client
        .create_partner(CreatePartnerRequest {
            request_id: format!("r-{id}"),
            partner_id: id.into(),
            partner: None,
        })
        .await
        .unwrap();
}

async fn watch(
    server: &TestServer,
    token: &str,
    after: i64,
) -> tonic::Streaming<lianyu_proto::identity::v1::WatchConsentEventsResponse> {
    let mut client = server.consents(Some(token.to_owned())).await;
    client
        .watch_consent_events(WatchConsentEventsRequest {
            after: Some(FeedCursor { sequence: after }),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(
    stream: &mut tonic::Streaming<lianyu_proto::identity::v1::WatchConsentEventsResponse>,
) -> (i64, String) {
    let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap();
    (event.cursor.unwrap().sequence, event.member)
}

#[tokio::test]
async fn watch_replays_from_the_cursor_then_tails_live() {
    let server = TestServer::start("feed_watch").await;
    let token = server.token("brand-a");
    for id in ["a", "b", "c"] {
        create(&server, &token, id).await;
    }
    let mut stream = watch(&server, &token, 1).await;
    assert_eq!(next(&mut stream).await, (2, "partners/b".into()));
    assert_eq!(next(&mut stream).await, (3, "partners/c".into()));
    create(&server, &token, "d").await;
    assert_eq!(next(&mut stream).await, (4, "partners/d".into()));
}

#[tokio::test]
async fn a_restarted_server_serves_the_feed_from_a_cursor() {
    let db = TestDatabase::new("feed_restart").await;
    let url = db.url.clone();
    let mut first = TestServer::start_with(Config::local("unused"), url.clone(), None).await;
    let token = first.token("brand-a");
    create(&first, &token, "a").await;
    create(&first, &token, "b").await;
    first.stop();
    first.handle.await.unwrap().unwrap();
    let second = TestServer::start_with(Config::local("unused"), url, Some(db)).await;
    let token = second.token("brand-a");
    create(&second, &token, "c").await;
    let mut stream = watch(&second, &token, 1).await;
    assert_eq!(next(&mut stream).await, (2, "partners/b".into()));
    assert_eq!(next(&mut stream).await, (3, "partners/c".into()));
}

/// A consuming service's database (the kit's tables: its cursors), kept while the first lives.
async fn consumer_database(name: &str) -> (TestDatabase, sea_orm::DatabaseConnection) {
    let db = TestDatabase::new(name).await;
    let conn = lianyu_kit::storage::open::<crate::harness::Migrator>(
        &{
            let mut c = Config::local("unused");
            c.set_database_url("consumer", db.url.clone());
            c
        },
        "consumer",
    )
    .await
    .unwrap();
    (db, conn)
}

#[tokio::test]
async fn a_consumer_resumes_after_a_restart_without_loss_or_repeats() {
    let server = TestServer::start("feed_consumer").await;
    let token = server.token("brand-a");
    let (_consumer_db, consumer_conn) = consumer_database("feed_consumer_side").await;
    for id in ["a", "b"] {
        create(&server, &token, id).await;
    }
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let run = |stop: CancellationToken| {
        let consumer = Consumer::new(consumer_conn.clone(), "probe-feed");
        let seen = seen.clone();
        let (address, token) = (server.address.clone(), token.clone());
        tokio::spawn(async move {
            let open = |after: i64| {
                let (address, token) = (address.clone(), token.clone());
                async move {
                    let channel = tonic::transport::Channel::from_shared(address)
                        .unwrap()
                        .connect()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    let mut client = lianyu_proto::identity::v1::consent_service_client::ConsentServiceClient::with_interceptor(
                        channel,
                        crate::harness::Bearer::new(&token),
                    );
                    let stream = client
                        .watch_consent_events(WatchConsentEventsRequest {
                            after: Some(FeedCursor { sequence: after }),
                        })
                        .await?
                        .into_inner();
                    Ok(stream.map(|r| r.map(|e| (e.cursor.map_or(0, |c| c.sequence), e.member))))
                }
            };
            consumer
                .run(
                    open,
                    |_txn, member: String| {
                        seen.lock().unwrap().push(member);
                        Box::pin(async { Ok(()) })
                    },
                    stop,
                )
                .await
        })
    };
    let wait_for = |n: usize| {
        let seen = seen.clone();
        async move {
            for _ in 0..100 {
                if seen.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("consumer saw {:?}, wanted {n} events", seen.lock().unwrap());
        }
    };
    let stop = CancellationToken::new();
    let task = run(stop.clone());
    wait_for(2).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        Consumer::new(consumer_conn.clone(), "probe-feed")
            .position()
            .await
            .unwrap(),
        2
    );

    // Events published while the consumer is down are picked up after its restart.
    create(&server, &token, "c").await;
    let stop = CancellationToken::new();
    let task = run(stop.clone());
    wait_for(3).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["partners/a", "partners/b", "partners/c"]
    );
}

/// Many open streams share one reader: each gets every event once and in order, and one that
/// stops reading neither stops the others nor loses anything — it catches up from the database
/// when it reads again.
#[tokio::test]
async fn many_streams_share_one_reader_and_a_stalled_one_loses_nothing() {
    const STREAMS: usize = 200;
    const EVENTS: usize = 40;
    let server = TestServer::start("feed_fanout").await;
    let token = server.token("brand-a");
    let mut stalled = watch(&server, &token, 0).await;
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
        readers.push(watch(&server, &token, 0).await);
    }
    for i in 0..EVENTS {
        create(&server, &token, &format!("p{i}")).await;
    }
    let expected: Vec<(i64, String)> = (0..EVENTS)
        .map(|i| (i as i64 + 1, format!("partners/p{i}")))
        .collect();
    let all = futures::future::join_all(readers.iter_mut().map(|stream| async {
        let mut got = Vec::new();
        for _ in 0..EVENTS {
            got.push(next(stream).await);
        }
        got
    }))
    .await;
    for got in all {
        assert_eq!(got, expected);
    }
    let mut got = Vec::new();
    for _ in 0..EVENTS {
        got.push(next(&mut stalled).await);
    }
    assert_eq!(
        got, expected,
        "the stalled stream, read late, has every event once"
    );
}

/// Two services' feeds in one process (`lianyu up`): an append to one counts on that feed only,
/// so a mutation of one service never makes another re-read its feed or wake its watchers.
#[tokio::test]
async fn an_append_counts_on_its_own_feed_only() {
    use lianyu_kit::feed::{Feed, NewEvent};
    use sea_orm::TransactionTrait;
    let open = async |name: &str| {
        let db = TestDatabase::new(&format!("feed_signal_{name}")).await;
        let mut config = Config::local("unused");
        config.set_database_url(name, db.url.clone());
        let conn = lianyu_kit::storage::open::<crate::harness::Migrator>(&config, name)
            .await
            .unwrap();
        (db, Feed::new(conn.clone(), CancellationToken::new()), conn)
    };
    let (_a_db, a, a_conn) = open("a").await;
    let (_b_db, b, _) = open("b").await;
    let txn = a_conn.begin().await.unwrap();
    a.append(
        &txn,
        NewEvent {
            kind: "probe".into(),
            partner_id: None,
            payload: Vec::new(),
            subject: None,
        },
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    assert_eq!((a.appended(), b.appended()), (1, 0));
    assert_eq!(a.clone().appended(), 1, "clones share the count");
}

/// Records in the consumer tests' `applied` table that `seq` took effect (in `txn`).
async fn record_applied(
    txn: &sea_orm::DatabaseTransaction,
    seq: i64,
) -> Result<(), lianyu_kit::KitError> {
    use sea_orm::{ConnectionTrait, Statement};
    let backend = txn.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => "INSERT INTO applied (seq) VALUES ($1)",
        _ => "INSERT INTO applied (seq) VALUES (?)",
    };
    txn.execute_raw(Statement::from_sql_and_values(backend, sql, [seq.into()]))
        .await
        .map_err(|e| lianyu_kit::KitError::Internal(e.to_string()))?;
    Ok(())
}

/// Every `seq` recorded in `applied`, in order.
async fn applied(conn: &sea_orm::DatabaseConnection) -> Vec<i64> {
    use sea_orm::{ConnectionTrait, Statement};
    conn.query_all_raw(Statement::from_string(
        conn.get_database_backend(),
        "SELECT seq FROM applied ORDER BY seq",
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get_by_index::<i64>(0).unwrap())
    .collect()
}

/// Waits (ten seconds at most) until consumer `name`'s cursor reaches `last`, stops it, and
/// checks that the cursor ends there and that every event 1..=`last` took effect exactly once.
async fn all_applied_once(
    conn: &sea_orm::DatabaseConnection,
    name: &str,
    last: i64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), lianyu_kit::storage::StorageError>>,
) {
    let position = Consumer::new(conn.clone(), name);
    for _ in 0..200 {
        if position.position().await.unwrap() == last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(position.position().await.unwrap(), last);
    assert_eq!(
        applied(conn).await,
        (1..=last).collect::<Vec<_>>(),
        "each effect once"
    );
}

/// Events that arrive together are applied in one transaction with the cursor: when one of
/// them fails, the ones before it in the batch are undone with it and applied again on the
/// retry — each event's effect lands exactly once, and the cursor ends on the last.
#[tokio::test]
async fn a_consumer_applies_a_burst_in_one_transaction_and_a_failure_undoes_all_of_it() {
    use sea_orm::ConnectionTrait;
    const EVENTS: i64 = 10;
    const FAILS_ONCE: i64 = 7;
    let (_db, conn) = consumer_database("feed_consumer_batch").await;
    conn.execute_unprepared("CREATE TABLE applied (seq BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::<i64>::new()));
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let consumer = Consumer::new(conn.clone(), "burst");
    let task = tokio::spawn({
        let (calls, failed, stop) = (calls.clone(), failed.clone(), stop.clone());
        async move {
            consumer
                .run(
                    // All events after the cursor are there at once (a burst).
                    |after: i64| async move {
                        Ok(futures::stream::iter(
                            ((after + 1)..=EVENTS).map(|seq| Ok::<_, tonic::Status>((seq, seq))),
                        ))
                    },
                    |txn, seq: i64| {
                        calls.lock().unwrap().push(seq);
                        let fail = seq == FAILS_ONCE
                            && !failed.swap(true, std::sync::atomic::Ordering::SeqCst);
                        Box::pin(async move {
                            record_applied(txn, seq).await?;
                            if fail {
                                return Err(lianyu_kit::KitError::Internal("once".into()));
                            }
                            Ok(())
                        })
                    },
                    stop,
                )
                .await
        }
    });
    all_applied_once(&conn, "burst", EVENTS, stop, task).await;
    // The failed try handled 1..=7 in one transaction; the retry began again at 1.
    let expected: Vec<i64> = (1..=FAILS_ONCE).chain(1..=EVENTS).collect();
    assert_eq!(*calls.lock().unwrap(), expected);
}

/// A batch handler gets a burst's events together, in sequence order and at most 256 at a
/// time, in the transaction that stores the cursor: a batch that fails is undone whole and
/// handed over again whole, so each event's effect lands exactly once.
#[tokio::test]
async fn a_batch_handler_gets_a_burst_together_and_a_failed_batch_again_whole() {
    use sea_orm::ConnectionTrait;
    const EVENTS: i64 = 600;
    const FAILS_ONCE: i64 = 300;
    let (_db, conn) = consumer_database("feed_consumer_batches").await;
    conn.execute_unprepared("CREATE TABLE applied (seq BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let batches = Arc::new(Mutex::new(Vec::<Vec<i64>>::new()));
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let consumer = Consumer::new(conn.clone(), "batches");
    let task = tokio::spawn({
        let (batches, failed, stop) = (batches.clone(), failed.clone(), stop.clone());
        async move {
            consumer
                .run_batches(
                    |after: i64| async move {
                        Ok(futures::stream::iter(
                            ((after + 1)..=EVENTS).map(|seq| Ok::<_, tonic::Status>((seq, seq))),
                        ))
                    },
                    |txn, seqs: Vec<i64>| {
                        batches.lock().unwrap().push(seqs.clone());
                        let fail = seqs.contains(&FAILS_ONCE)
                            && !failed.swap(true, std::sync::atomic::Ordering::SeqCst);
                        Box::pin(async move {
                            for seq in seqs {
                                record_applied(txn, seq).await?;
                            }
                            if fail {
                                return Err(lianyu_kit::KitError::Internal("once".into()));
                            }
                            Ok(())
                        })
                    },
                    stop,
                )
                .await
        }
    });
    all_applied_once(&conn, "batches", EVENTS, stop, task).await;
    let batches = batches.lock().unwrap().clone();
    assert_eq!(
        batches[0],
        (1..=256).collect::<Vec<_>>(),
        "the burst, 256 at once"
    );
    assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 256));
    let failing = batches
        .iter()
        .position(|b| b.contains(&FAILS_ONCE))
        .unwrap();
    assert_eq!(
        batches[failing + 1][0],
        batches[failing][0],
        "the retry starts where the failed batch did"
    );
    // Without the failed try, the batches are the events in order, each once.
    let kept: Vec<i64> = batches
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != failing)
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    assert_eq!(kept, (1..=EVENTS).collect::<Vec<_>>());
}

/// Events staged by concurrent grouped mutations are numbered at commit, a batch's in one move
/// of the counter: every kept event is in the outbox once, under gapless sequences, beside
/// events appended directly; a refused mutation's events are not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_events_of_concurrent_batches_get_gapless_sequences_once_each() {
    use lianyu_kit::{
        feed::{Feed, NewEvent},
        group::Writer,
        writes::Writes,
    };
    let db = TestDatabase::new("feed_staged").await;
    let mut config = Config::local("unused");
    config.set_database_url("staged", db.url.clone());
    let conn = lianyu_kit::storage::open::<crate::harness::Migrator>(&config, "staged")
        .await
        .unwrap();
    let feed = Feed::new(conn.clone(), CancellationToken::new());
    let writer = Writer::grouped(conn.clone());
    let event = |name: String| NewEvent {
        kind: "probe".into(),
        partner_id: None,
        payload: name.into_bytes(),
        subject: None,
    };
    let results = futures::future::join_all((0..90).map(|i: usize| {
        let (writer, feed) = (writer.clone(), feed.clone());
        async move {
            loop {
                let attempt = writer
                    .transact_deferring(async |txn| {
                        if i.is_multiple_of(10) {
                            // Appended at once, mid-batch, beside the staged ones.
                            feed.append(txn, event(format!("{i}-direct")))
                                .await
                                .map_err(|_| i)?;
                        }
                        let mut writes = Writes::new();
                        for k in 0..(i % 3 + 1) {
                            feed.append_staged(&mut writes, event(format!("{i}-{k}")));
                        }
                        if i % 9 == 4 {
                            return Err(i);
                        }
                        let at_commit = writes.take_at_commit();
                        writes.send(txn).await.map_err(|_| i)?;
                        Ok((i, at_commit))
                    })
                    .await;
                match attempt {
                    Err(lianyu_kit::storage::StorageError::Conflict(_)) => continue,
                    other => return other.unwrap(),
                }
            }
        }
    }))
    .await;
    let mut expected: Vec<String> = Vec::new();
    for kept in results.iter().filter_map(|r| r.as_ref().ok()) {
        if kept.is_multiple_of(10) {
            expected.push(format!("{kept}-direct"));
        }
        expected.extend((0..(kept % 3 + 1)).map(|k| format!("{kept}-{k}")));
    }
    let stored = feed.read_after(0, None, 10_000).await.unwrap();
    let sequences: Vec<i64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(
        sequences,
        (1..=expected.len() as i64).collect::<Vec<_>>(),
        "gapless, one per kept event"
    );
    assert_eq!(feed.head().await.unwrap(), expected.len() as i64);
    let mut names: Vec<String> = stored
        .iter()
        .map(|e| String::from_utf8(e.payload.clone()).unwrap())
        .collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "each kept event once, no refused one");
}

/// A fresh database with the kit's tables, and its feed.
async fn outbox(
    test: &str,
) -> (
    TestDatabase,
    sea_orm::DatabaseConnection,
    lianyu_kit::feed::Feed,
) {
    let db = TestDatabase::new(test).await;
    let mut config = Config::local("unused");
    config.set_database_url("outbox", db.url.clone());
    let conn = lianyu_kit::storage::open::<crate::harness::Migrator>(&config, "outbox")
        .await
        .unwrap();
    let feed = lianyu_kit::feed::Feed::new(conn.clone(), CancellationToken::new());
    (db, conn, feed)
}

/// An outbox whose counter row is gone (a botched restore, a hand-run cleanup) cannot number
/// events: on PostgreSQL, where the counter's move, the rows and the NOTIFY are one statement,
/// a transaction staging events then fails and nothing of it is written — never an event
/// silently dropped. (SQLite's one writer numbers such a row by its rowid, the next after the
/// last; this test runs on PostgreSQL only.)
#[tokio::test]
async fn staged_events_without_the_outbox_counter_fail_the_transaction() {
    use lianyu_kit::{feed::NewEvent, writes::Writes};
    use sea_orm::{ConnectionTrait, TransactionTrait};
    if !lianyu_kit::testing::backend_is_postgres() {
        return;
    }
    let (_db, conn, feed) = outbox("feed_no_counter").await;
    conn.execute_unprepared("DELETE FROM kit_outbox_counter")
        .await
        .unwrap();
    let txn = conn.begin().await.unwrap();
    let mut writes = Writes::new();
    for n in 0..3u8 {
        feed.append_staged(
            &mut writes,
            NewEvent {
                kind: "probe".into(),
                partner_id: None,
                payload: vec![n],
                subject: None,
            },
        );
    }
    assert!(writes.send(&txn).await.is_err());
    drop(txn);
    assert!(feed.read_after(0, None, 10).await.unwrap().is_empty());
}

/// An erasure finds the events that name the person — appended one at a time or staged with a
/// batch — and rewrites those it covers in place: the same sequences, so every cursor stays
/// valid, and nothing of the person left in them or beside them. Events about someone else, or
/// that the erasure does not cover (the person's activity through another partner), are left
/// as they were and can still be found.
#[tokio::test]
async fn events_naming_an_erased_person_are_rewritten_in_place_and_only_those() {
    use lianyu_kit::{
        feed::{Feed, NewEvent},
        storage::entities::outbox_event,
        writes::Writes,
    };
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
    let (_db, conn, feed) = outbox("feed_rewrite_about").await;
    let event = |text: &str| NewEvent {
        kind: "probe".into(),
        partner_id: Some(text.rsplit(' ').next().unwrap_or_default().to_owned()),
        payload: text.as_bytes().to_vec(),
        subject: None,
    };
    let txn = conn.begin().await.unwrap();
    feed.append(&txn, event("m1 via brand").about("m1"))
        .await
        .unwrap();
    let mut writes = Writes::new();
    feed.append_staged(&mut writes, event("m1 via mall").about("m1"));
    feed.append_staged(&mut writes, event("m2 via brand").about("m2"));
    feed.append_staged(&mut writes, event("a pin via brand"));
    writes.send(&txn).await.unwrap();
    txn.commit().await.unwrap();

    // The brand erased m1: its event is rewritten, the mall's is not covered.
    let txn = conn.begin().await.unwrap();
    let rewritten = Feed::rewrite_about(&txn, "m1", |e| {
        (e.partner_id.as_deref() == Some("brand")).then(|| b"someone via brand".to_vec())
    })
    .await
    .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(rewritten, 1);
    let read = |feed: Feed| async move {
        feed.read_after(0, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, String::from_utf8(e.payload).unwrap()))
            .collect::<Vec<_>>()
    };
    let all = read(feed.clone()).await;
    let first = all[0].0;
    assert_eq!(
        all,
        [
            (first, "someone via brand".to_owned()),
            (first + 1, "m1 via mall".to_owned()),
            (first + 2, "m2 via brand".to_owned()),
            (first + 3, "a pin via brand".to_owned()),
        ]
    );
    let naming = |subject: &'static str| {
        let conn = conn.clone();
        async move {
            outbox_event::Entity::find()
                .filter(outbox_event::Column::Subject.eq(subject))
                .all(&conn)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        naming("m1").await,
        [first + 1],
        "the rewritten event names no one"
    );
    assert_eq!(naming("m2").await, [first + 2]);

    // The mall erases m1 too: only its event is left to rewrite.
    let txn = conn.begin().await.unwrap();
    let again = Feed::rewrite_about(&txn, "m1", |_| Some(b"someone via mall".to_vec()))
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(again, 1);
    assert!(naming("m1").await.is_empty());
    assert_eq!(
        read(feed).await[1],
        (first + 1, "someone via mall".to_owned())
    );
}

/// An outbox made before events named their subject gets the column (and its index) from the
/// migration, and its events from before stay as they were, naming no one.
#[tokio::test]
async fn an_outbox_made_before_subjects_gains_them_and_keeps_its_events() {
    use lianyu_kit::feed::{Feed, NewEvent};
    use sea_orm::{ConnectionTrait, TransactionTrait};
    use sea_orm_migration::{MigrationTrait, SchemaManager};
    let (_db, conn, feed) = outbox("feed_subject_migration").await;
    // The outbox as it was: one event in it, then no subject column.
    let txn = conn.begin().await.unwrap();
    feed.append(
        &txn,
        NewEvent {
            kind: "probe".into(),
            partner_id: None,
            payload: b"old".to_vec(),
            subject: None,
        },
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    conn.execute_unprepared("DROP INDEX kit_outbox_events_subject")
        .await
        .unwrap();
    conn.execute_unprepared("ALTER TABLE kit_outbox_events DROP COLUMN subject")
        .await
        .unwrap();
    lianyu_kit::storage::KitFeedSubjects
        .up(&SchemaManager::new(&conn))
        .await
        .unwrap();
    let txn = conn.begin().await.unwrap();
    feed.append(
        &txn,
        NewEvent {
            kind: "probe".into(),
            partner_id: None,
            payload: b"new".to_vec(),
            subject: None,
        }
        .about("m1"),
    )
    .await
    .unwrap();
    let rewritten = Feed::rewrite_about(&txn, "m1", |_| Some(b"someone".to_vec()))
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(rewritten, 1);
    let payloads: Vec<Vec<u8>> = feed
        .read_after(0, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(payloads, [b"old".to_vec(), b"someone".to_vec()]);
}

/// A feed keeps its events for `LIANYU_FEED_RETENTION`: older ones are removed from the front
/// only (an old event behind a newer one waits for it), and a stream resuming from a cursor
/// inside what was removed is told FAILED_PRECONDITION / CURSOR_EXPIRED with the oldest cursor
/// that resumes without a gap — never moved on silently; from that cursor, or with none, it
/// reads everything kept.
#[tokio::test]
async fn a_feed_keeps_its_retention_and_never_skips_what_it_removed_unsaid() {
    use futures::StreamExt;
    use lianyu_kit::{
        feed::{NewEvent, expire},
        storage::entities::outbox_event,
    };
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait, sea_query::Expr};
    let (_db, conn, feed) = outbox("feed_retention").await;
    let txn = conn.begin().await.unwrap();
    for i in 1..=6 {
        feed.append(
            &txn,
            NewEvent {
                kind: "probe".into(),
                partner_id: None,
                payload: format!("e{i}").into_bytes(),
                subject: None,
            },
        )
        .await
        .unwrap();
    }
    txn.commit().await.unwrap();
    let stored = || async {
        feed.read_after(0, None, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<i64>>()
    };
    let seqs = stored().await;
    // Two days old: the first three, and the fifth (committed after a newer one).
    let two_days_ago = lianyu_kit::time::now_millis() - 2 * 24 * 3_600_000;
    outbox_event::Entity::update_many()
        .col_expr(outbox_event::Column::CreatedAt, Expr::value(two_days_ago))
        .filter(outbox_event::Column::Seq.is_in([seqs[0], seqs[1], seqs[2], seqs[4]]))
        .exec(&conn)
        .await
        .unwrap();
    let day = std::time::Duration::from_secs(24 * 3600);
    assert_eq!(expire(&conn, day).await.unwrap(), 3);
    assert_eq!(
        expire(&conn, day).await.unwrap(),
        0,
        "nothing more to remove"
    );
    assert_eq!(
        stored().await,
        seqs[3..],
        "the front went, the fifth waits behind the fourth"
    );
    assert_eq!(feed.horizon().await.unwrap(), seqs[2]);

    let first = |after: i64| {
        let mut stream = feed.watch(after, None, |e| Some(e.seq));
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let refused = first(seqs[1]).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(lianyu_kit::testing::reason(&refused), "CURSOR_EXPIRED");
    let oldest = {
        use tonic_types::StatusExt;
        refused.get_details_error_info().unwrap().metadata["oldest_cursor"].clone()
    };
    assert_eq!(oldest, seqs[2].to_string());
    assert_eq!(
        first(seqs[2]).await.unwrap(),
        seqs[3],
        "from the horizon on"
    );
    assert_eq!(
        first(0).await.unwrap(),
        seqs[3],
        "no cursor: everything kept"
    );

    // Everything removed: the horizon is the head; a stream there waits for what comes.
    outbox_event::Entity::update_many()
        .col_expr(outbox_event::Column::CreatedAt, Expr::value(two_days_ago))
        .exec(&conn)
        .await
        .unwrap();
    assert_eq!(expire(&conn, day).await.unwrap(), 3);
    assert_eq!(feed.horizon().await.unwrap(), seqs[5]);
    let refused = first(seqs[4]).await.unwrap_err();
    assert_eq!(lianyu_kit::testing::reason(&refused), "CURSOR_EXPIRED");
}
