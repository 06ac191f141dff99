//! Group commit: concurrent mutations of one service share one transaction and one commit
//! (one flush on PostgreSQL, one turn of SQLite's single writer) instead of paying for their
//! own; and no caller is answered before the commit that holds its write — when that commit
//! fails, every member of the batch gets the failure and nothing of theirs was written.
//!
//! Members run optimistically, straight in the shared transaction: a savepoint and its release
//! cost as much as the rest of an enrolment. When a member fails, its partial writes cannot be
//! told from the others', so the whole open batch is rolled back: the members before it get
//! ABORTED / CONCURRENT_UPDATE, which the mutation pipeline retries at once, and so does the
//! failing member unless it was first in the transaction — its refusal may rest on their
//! writes, now undone (a budget that looked spent), so it is decided again. For a while after a failure ([`CAREFUL_FOR`]) every member runs in
//! a savepoint of its own instead, so one failing caller cannot keep aborting everyone else's
//! work.
//!
//! On SQLite's one lane a member's first try may hand all its writes to the batch's commit
//! ([`Writes::deferrable`]: it read nothing in the transaction that they depend on, and guards
//! what it read before): the whole batch's writes then go to the single writer in one trip
//! instead of one trip per member while everyone else waits. A deferred write that fails there
//! (a guard that found a row, a request id replayed) fails the whole batch; every member runs
//! again, sending its own writes, and the lane turns careful.
//!
//! Batches form by themselves: while one mutation runs its effect, the others queue for the
//! transaction; the last of a run of queued mutations (or the one that fills the batch)
//! commits. A mutation arriving at an idle writer commits alone, at once — group commit adds
//! no waiting when there is nothing to group. A member cancelled before it could commit (its
//! caller went away) leaves the commit to the members still waiting.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::sync::{Mutex, MutexGuard, watch};

use crate::{storage::StorageError, writes::Writes};

/// Shared transactions open at once on PostgreSQL (each on its own pooled connection).
pub const POSTGRES_LANES: usize = 8;

/// Mutations per shared transaction at most: bounds how long the first one waits.
pub const MAX_BATCH: usize = 128;

/// How long after a failed member the lane runs every member in a savepoint.
pub const CAREFUL_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a waiting member checks that its batch has not been orphaned.
const ORPHAN_CHECK: std::time::Duration = std::time::Duration::from_millis(5);

/// How a batch's commit ended, for every member to read.
type Outcome = Option<Result<(), StorageError>>;

struct Batch {
    txn: Option<DatabaseTransaction>,
    /// What the kept members deferred to the commit ([`Writes::defer`]), sent just before it.
    at_commit: Writes,
    /// Which batch is open: a waiting member commits an orphaned batch only if it is its own.
    generation: u64,
    members: usize,
    done: watch::Sender<Outcome>,
}

/// Counts a mutation as queued until it holds the batch, or is cancelled while waiting.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Group {
    batch: Mutex<Batch>,
    /// Until when members run in savepoints (after a member failed).
    careful_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Mutations waiting for the batch's lock.
    queued: AtomicUsize,
    /// Commits made, and mutations committed: their ratio is the mean batch size.
    commits: AtomicUsize,
    committed: AtomicUsize,
}

impl Group {
    fn turn_careful(&self) {
        *self.careful_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now() + CAREFUL_FOR);
    }

    fn is_careful(&self) -> bool {
        self.careful_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Commits the open batch and tells its members how it went. The lock is let go first, so
    /// the next batch may begin (on PostgreSQL, on another connection) during the commit.
    async fn commit(&self, mut batch: MutexGuard<'_, Batch>) {
        let Some(txn) = batch.txn.take() else {
            return;
        };
        let members = batch.members;
        let signal = batch.done.clone();
        let at_commit = std::mem::take(&mut batch.at_commit);
        drop(batch);
        let committed = match at_commit.send(&txn).await {
            Ok(()) => txn.commit().await.map_err(StorageError::from),
            // Rolled back with the transaction: nobody of the batch is told it succeeded. A
            // deferred write that lost a race (a guard, a key taken) cannot be told from the
            // rest of the batch's: every member runs again, the lane careful for a while so
            // that each sends its writes itself and the one that lost meets its conflict alone.
            Err(StorageError::AlreadyExists | StorageError::Conflict(_)) => {
                self.turn_careful();
                Err(StorageError::Conflict(
                    "a write sent with the batch's commit conflicted; retry".into(),
                ))
            }
            Err(failed) => Err(failed),
        };
        if committed.is_ok() {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.committed.fetch_add(members, Ordering::Relaxed);
        }
        signal.send_replace(Some(committed));
    }
}

/// A service's writer: one transaction per mutation, or shared ones.
#[derive(Clone)]
pub struct Writer {
    db: DatabaseConnection,
    /// The shared transactions open at once: one on SQLite (its single writer), several on
    /// PostgreSQL, whose writers run in parallel — one batch at a time would serialise them.
    lanes: Arc<[Group]>,
    next: Arc<AtomicUsize>,
    /// The lane every mutation of this writer takes ([`Self::keyed`]); round robin if `None`.
    pinned: Option<usize>,
}

impl Writer {
    /// One transaction per mutation.
    pub fn direct(db: DatabaseConnection) -> Self {
        Self {
            db,
            lanes: Arc::from(Vec::new()),
            next: Arc::default(),
            pinned: None,
        }
    }

    /// Concurrent mutations share transactions (see the module): one lane of batches on
    /// SQLite, [`POSTGRES_LANES`] on PostgreSQL.
    pub fn grouped(db: DatabaseConnection) -> Self {
        let lanes = match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => POSTGRES_LANES,
            _ => 1,
        };
        Self::lanes(db, lanes)
    }

    /// Concurrent mutations share transactions in one lane on any database: for a service
    /// whose writes all serialise on one lock anyway (its feed's), where parallel lanes would
    /// only wait for each other and one lane makes the batches larger.
    pub fn single_lane(db: DatabaseConnection) -> Self {
        Self::lanes(db, 1)
    }

    fn lanes(db: DatabaseConnection, lanes: usize) -> Self {
        Self {
            db,
            lanes: (0..lanes)
                .map(|_| Group {
                    batch: Mutex::new(Batch {
                        txn: None,
                        at_commit: Writes::new(),
                        generation: 0,
                        members: 0,
                        done: watch::Sender::new(None),
                    }),
                    careful_until: std::sync::Mutex::new(None),
                    queued: AtomicUsize::new(0),
                    commits: AtomicUsize::new(0),
                    committed: AtomicUsize::new(0),
                })
                .collect(),
            next: Arc::default(),
            pinned: None,
        }
    }

    /// This writer with every mutation in the lane `key` hashes to: mutations about one thing
    /// (a member whose row they lock) then never sit in two open shared transactions at once.
    /// Two batches on different lanes that locked the same rows in opposite orders would
    /// deadlock — PostgreSQL breaks the cycle only after `deadlock_timeout` (a second), and
    /// both batches run again; in one lane the later batch just waits for the earlier commit.
    /// Other processes' writers still race on the database, which resolves it as before.
    pub fn keyed(&self, key: &str) -> Self {
        use std::hash::BuildHasher;
        let hash =
            std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(key);
        Self {
            pinned: Some(usize::try_from(hash % 1024).unwrap_or(0)),
            ..self.clone()
        }
    }

    /// Whether a mutation's [deferrable](Writes::deferrable) writes go with its batch's
    /// commit now: on SQLite's one lane, where the batch's writes then cost one trip to the
    /// single writer instead of one per member, and not while the lane is careful (a deferred
    /// write failed lately, or a member did). Elsewhere a member sends them itself, as usual.
    pub fn defers_writes(&self) -> bool {
        self.db.get_database_backend() == sea_orm::DbBackend::Sqlite
            && self.lanes.len() == 1
            && self.lanes.first().is_some_and(|g| !g.is_careful())
    }

    /// Waits until the shared transactions open now — or committing — have ended, committed
    /// or rolled back: a mutation that found its request id taken by a twin it cannot see yet
    /// (a client's retry racing its first try, in the same batch) runs again after this, and
    /// then finds the twin's reply instead of meeting it in the same batch once more.
    pub async fn settled(&self) {
        for group in self.lanes.iter() {
            let mut done = {
                let batch = group.batch.lock().await;
                let pending = batch.txn.is_some() || batch.members > 0;
                if !pending || batch.done.borrow().is_some() {
                    continue;
                }
                batch.done.subscribe()
            };
            // A batch that began after this one replaced its sender: ended too.
            while done.borrow_and_update().is_none() {
                if done.changed().await.is_err() {
                    break;
                }
            }
        }
    }

    /// The database written to.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// (commits, mutations committed) so far; `None` for a direct writer.
    pub fn batching(&self) -> Option<(usize, usize)> {
        if self.lanes.is_empty() {
            return None;
        }
        Some(self.lanes.iter().fold((0, 0), |(c, m), g| {
            (
                c + g.commits.load(Ordering::Relaxed),
                m + g.committed.load(Ordering::Relaxed),
            )
        }))
    }

    /// Runs `body` in a transaction: `Ok` keeps its writes, `Err` rolls them back (only its
    /// own, in a shared transaction). Returns once what `body` kept is committed; the outer
    /// error is a failed begin or commit, after which nothing of `body`'s was written.
    pub async fn transact<T, F>(&self, body: F) -> Result<Result<T, T>, StorageError>
    where
        F: AsyncFnOnce(&DatabaseTransaction) -> Result<T, T>,
    {
        self.transact_deferring(async |txn| body(txn).await.map(|kept| (kept, Writes::new())))
            .await
    }

    /// [`Self::transact`] for a `body` that also hands over writes deferred to the commit
    /// ([`Writes::defer`]): they are sent just before the transaction — in group commit, the
    /// batch's — commits, after every member's own work.
    pub async fn transact_deferring<T, F>(&self, body: F) -> Result<Result<T, T>, StorageError>
    where
        F: AsyncFnOnce(&DatabaseTransaction) -> Result<(T, Writes), T>,
    {
        let lane = match self.lanes.len() {
            0 => None,
            1 => self.lanes.first(),
            n => self.lanes.get(
                self.pinned
                    .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed))
                    % n,
            ),
        };
        let Some(group) = lane else {
            let txn = self.db.begin().await?;
            return match body(&txn).await {
                Ok((kept, at_commit)) => {
                    at_commit.send(&txn).await?;
                    txn.commit().await?;
                    Ok(Ok(kept))
                }
                Err(undone) => {
                    drop(txn);
                    Ok(Err(undone))
                }
            };
        };
        let queued = Queued::new(&group.queued);
        let mut batch = group.batch.lock().await;
        drop(queued);
        if batch.txn.is_none() {
            batch.txn = Some(self.db.begin().await?);
            batch.at_commit = Writes::new();
            batch.generation += 1;
            batch.members = 0;
            batch.done = watch::Sender::new(None);
        }
        let generation = batch.generation;
        let careful = group.is_careful();
        let outcome = match batch.txn.as_ref() {
            Some(txn) if careful => run_in_savepoint(txn, body).await,
            Some(txn) => match body(txn).await {
                Ok(kept) => Ok(Ok(kept)),
                Err(undone) => {
                    // Its writes are mixed with the batch's: undo the whole open batch. The
                    // members before it retry (CONCURRENT_UPDATE); the lane turns careful.
                    group.turn_careful();
                    let failed = batch.txn.take();
                    batch.done.send_replace(Some(Err(StorageError::Conflict(
                        "another mutation of the batch failed; retry".into(),
                    ))));
                    drop(failed);
                    // Its refusal may rest on writes of the members before it, now undone
                    // (a budget that looked spent): it is decided again, in a savepoint.
                    // Alone in the transaction, it saw only committed data: it stands.
                    if batch.members > 0 {
                        return Err(StorageError::Conflict(
                            "decided against writes that were rolled back; retry".into(),
                        ));
                    }
                    return Ok(Err(undone));
                }
            },
            None => Err(StorageError::Other(
                "group commit lost its transaction".into(),
            )),
        };
        if outcome.is_err() {
            // The shared transaction is unusable (a savepoint could not be made or
            // released): the whole batch fails, and the next mutation starts afresh.
            let failed = batch.txn.take();
            let error = outcome.as_ref().err().cloned();
            batch.done.send_replace(error.map(Err));
            drop(failed);
        }
        // A kept member's deferred writes join the batch's, sent just before its commit.
        let outcome = outcome.map(|kept| {
            kept.map(|(kept, at_commit)| {
                batch.at_commit.extend(at_commit);
                kept
            })
        });
        batch.members += 1;
        let mut done = batch.done.subscribe();
        // The last of the queue, or a full batch, commits; the others wait for it.
        if group.queued.load(Ordering::SeqCst) == 0 || batch.members >= MAX_BATCH {
            group.commit(batch).await;
        } else {
            drop(batch);
        }
        let outcome = outcome?;
        if let Err(undone) = outcome {
            // Rolled back already: nothing of it waits on the commit.
            return Ok(Err(undone));
        }
        let committed = loop {
            if let Some(result) = done.borrow_and_update().clone() {
                break result;
            }
            tokio::select! {
                changed = done.changed() => {
                    if changed.is_err() {
                        break Err(StorageError::Other("group commit ended without committing".into()));
                    }
                }
                () = tokio::time::sleep(ORPHAN_CHECK) => {
                    // The member that was to commit was cancelled: commit in its place.
                    if let Ok(batch) = group.batch.try_lock()
                        && batch.generation == generation
                        && batch.txn.is_some()
                        && group.queued.load(Ordering::SeqCst) == 0
                    {
                        group.commit(batch).await;
                    }
                }
            }
        };
        committed?;
        Ok(outcome)
    }
}

/// `body` inside a savepoint of `txn`: released when it keeps its writes, rolled back when not.
async fn run_in_savepoint<K, U, F>(
    txn: &DatabaseTransaction,
    body: F,
) -> Result<Result<K, U>, StorageError>
where
    F: AsyncFnOnce(&DatabaseTransaction) -> Result<K, U>,
{
    let savepoint = txn.begin().await?;
    match body(&savepoint).await {
        Ok(kept) => {
            savepoint.commit().await?;
            Ok(Ok(kept))
        }
        Err(undone) => {
            savepoint.rollback().await?;
            Ok(Err(undone))
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::*;

    async fn database(dir: &tempfile::TempDir) -> DatabaseConnection {
        let url = format!("sqlite://{}/group.db?mode=rwc", dir.path().display());
        let db = crate::storage::connect(&url, "group", None).await.unwrap();
        for sql in [
            "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
            "INSERT INTO parent (id) VALUES (1)",
        ] {
            db.execute_unprepared(sql).await.unwrap();
        }
        db
    }

    async fn children(db: &DatabaseConnection) -> Vec<i64> {
        db.query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT id FROM child ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_by_index::<i64>(0).unwrap())
        .collect()
    }

    /// Inserts child `id` under `parent`; odd ids under `refuse` are undone by their body. A
    /// batch aborted by another member's failure is retried, as the mutation pipeline does.
    async fn insert(
        writer: &Writer,
        id: i64,
        parent: i64,
        refuse: bool,
    ) -> Result<Result<i64, i64>, StorageError> {
        loop {
            let attempt = writer
                .transact(async |txn| {
                    let inserted = txn
                        .execute_unprepared(&format!(
                            "INSERT INTO child (id, parent) VALUES ({id}, {parent})"
                        ))
                        .await;
                    if inserted.is_err() || (refuse && id % 2 == 1) {
                        Err(id)
                    } else {
                        Ok(id)
                    }
                })
                .await;
            match attempt {
                Err(StorageError::Conflict(_)) => continue,
                other => return other,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_mutations_share_commits_and_a_refusal_undoes_only_itself() {
        // Refusals abort the optimistic batch they fall in (the others retry), then the lane
        // runs members in savepoints for a while: either way only the kept ones are written.
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let writer = Writer::grouped(db.clone());
        let results = futures::future::join_all((1..=200).map(|id| {
            let writer = writer.clone();
            async move { insert(&writer, id, 1, true).await }
        }))
        .await;
        let kept: Vec<i64> = results
            .iter()
            .filter_map(|r| r.as_ref().unwrap().as_ref().ok().copied())
            .collect();
        assert_eq!(kept, (1..=200).filter(|i| i % 2 == 0).collect::<Vec<_>>());
        assert_eq!(
            children(&db).await,
            kept,
            "exactly the kept ones were written"
        );
        let (commits, committed) = writer.batching().unwrap();
        assert!(committed >= kept.len(), "{committed}");
        assert!(
            commits < kept.len(),
            "{commits} commits for {} kept mutations: nothing was grouped",
            kept.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_deferred_to_the_commit_land_for_kept_members_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        db.execute_unprepared("CREATE TABLE tally (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            .await
            .unwrap();
        db.execute_unprepared("INSERT INTO tally (id, n) VALUES (1, 0)")
            .await
            .unwrap();
        let writer = Writer::grouped(db.clone());
        let results = futures::future::join_all((1..=120).map(|id: i64| {
            let writer = writer.clone();
            async move {
                loop {
                    let attempt = writer
                        .transact_deferring(async |txn| {
                            let inserted = txn
                                .execute_unprepared(&format!(
                                    "INSERT INTO child (id, parent) VALUES ({id}, 1)"
                                ))
                                .await;
                            if inserted.is_err() || id % 3 == 0 {
                                return Err(id);
                            }
                            let mut at_commit = Writes::new();
                            at_commit.defer(Statement::from_string(
                                DbBackend::Sqlite,
                                "UPDATE tally SET n = n + 1 WHERE id = 1",
                            ));
                            Ok((id, at_commit))
                        })
                        .await;
                    match attempt {
                        Err(StorageError::Conflict(_)) => continue,
                        other => return other,
                    }
                }
            }
        }))
        .await;
        let kept = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(kept, 80);
        let tally = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT n FROM tally WHERE id = 1",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        assert_eq!(
            tally, 80,
            "one deferred write per kept member, none for refused ones"
        );
        assert_eq!(children(&db).await.len(), 80);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deferred_write_that_conflicts_at_commit_fails_its_batch_and_the_others_retry() {
        // Members hand all their writes to the batch's commit, as a first try does on SQLite
        // (`Writes::deferrable`); one collides with a row that exists. Nobody of its batch is
        // told it succeeded; run again (sending their own writes), every other member is kept
        // and the colliding one alone is refused.
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        db.execute_unprepared("INSERT INTO child (id, parent) VALUES (1000, 1)")
            .await
            .unwrap();
        let writer = Writer::grouped(db.clone());
        assert!(writer.defers_writes(), "SQLite's one lane defers");
        let retried = AtomicUsize::new(0);
        let results = futures::future::join_all((1..=100).map(|id: i64| {
            let (writer, retried) = (writer.clone(), &retried);
            async move {
                let child = if id == 50 { 1000 } else { id };
                let mut tries = 0;
                loop {
                    let defer = tries == 0 && writer.defers_writes();
                    let attempt = writer
                        .transact_deferring(async |txn| {
                            let mut writes = Writes::new();
                            writes.push(Statement::from_string(
                                DbBackend::Sqlite,
                                format!("INSERT INTO child (id, parent) VALUES ({child}, 1)"),
                            ));
                            if defer {
                                return Ok((id, writes.into_deferred()));
                            }
                            match writes.send(txn).await {
                                Ok(()) => Ok((id, Writes::new())),
                                Err(_) => Err(id),
                            }
                        })
                        .await;
                    match attempt {
                        Err(StorageError::Conflict(_)) => {
                            tries += 1;
                            retried.fetch_add(1, Ordering::SeqCst);
                        }
                        other => return other,
                    }
                }
            }
        }))
        .await;
        let kept: Vec<i64> = results
            .iter()
            .filter_map(|r| r.as_ref().unwrap().as_ref().ok().copied())
            .collect();
        assert_eq!(kept, (1..=100).filter(|&i| i != 50).collect::<Vec<_>>());
        assert!(matches!(results[49], Ok(Err(50))), "{:?}", results[49]);
        let mut expected = kept.clone();
        expected.push(1000);
        assert_eq!(
            children(&db).await,
            expected,
            "every kept member, nothing else"
        );
        assert!(
            retried.load(Ordering::SeqCst) >= 1,
            "the colliding member's batch failed at its commit and was run again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_the_shared_commit_fails_no_member_is_told_it_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        db.execute_unprepared("PRAGMA foreign_keys = ON")
            .await
            .unwrap();
        let writer = Writer::grouped(db.clone());
        // One member breaks a deferred constraint: its savepoint is fine, the commit is not.
        let results = futures::future::join_all((1..=50).map(|id| {
            let writer = writer.clone();
            async move { insert(&writer, id, if id == 25 { 99 } else { 1 }, false).await }
        }))
        .await;
        let written = children(&db).await;
        for (id, result) in (1..=50).zip(&results) {
            match result {
                Ok(Ok(_)) => assert!(
                    written.contains(&id),
                    "{id} was acknowledged but not written"
                ),
                Ok(Err(_)) => unreachable!("no body refused"),
                Err(_) => assert!(!written.contains(&id), "{id} failed but was written"),
            }
        }
        assert!(
            results.iter().any(Result::is_err),
            "the broken commit failed someone"
        );
        assert!(!written.contains(&25));
    }
}
