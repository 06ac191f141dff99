//! Event feeds between services. A service appends events to its outbox in the same
//! transaction as the change ([`Feed::append`]); [`Feed::watch`] serves them to a `Watch…`
//! RPC from a client's cursor, then live; a [`Consumer`] on the other side stores its cursor
//! with each handled event, so a restart resumes exactly where it stopped.
//!
//! Live events come from one reader per feed per process (the tail), which wakes when this
//! process commits an append and, on PostgreSQL, when any replica commits one (each append
//! sends a NOTIFY that the tail LISTENs for; polling is only the fallback), and fans each new
//! event out to every open stream through a broadcast channel. An idle stream therefore costs a
//! parked task and its buffer, never a query; a stream that falls behind the broadcast buffer
//! catches up from the database instead of holding memory.

mod consumer;

use std::time::Duration;

use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use consumer::{Consumer, Handled, record_lag};

use crate::storage::{
    StorageError,
    entities::{outbox_counter, outbox_event},
    now_millis,
};
use crate::writes::{OutboxRow, Writes};

/// Events buffered per watcher; a slow watcher holds the reader back instead of growing memory.
const WATCH_BUFFER: usize = 256;
/// Rows read from the outbox per query.
const READ_BATCH: u64 = 500;
/// New events the tail keeps for streams that are a little behind; one further behind
/// re-reads from the database.
const TAIL_BUFFER: usize = 4096;

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: String,
    pub partner_id: Option<String>,
    pub payload: Vec<u8>,
    /// The person the payload names, if any ([`NewEvent::about`]).
    pub subject: Option<String>,
}

impl NewEvent {
    /// An event whose payload is a contract message (a `Watch…Response` body without its
    /// cursor and time, which the feed adds when it serves it): the outbox holds the contract's
    /// own wire format, never a second schema.
    pub fn message(kind: &str, partner_id: Option<String>, body: &impl prost::Message) -> Self {
        Self {
            kind: kind.to_owned(),
            partner_id,
            payload: body.encode_to_vec(),
            subject: None,
        }
    }

    /// The event names `subject` (a mesh member id): stored beside it, so that when the person
    /// is erased the service finds the event and rewrites it ([`Feed::rewrite_about`]).
    #[must_use]
    pub fn about(mut self, subject: &str) -> Self {
        self.subject = Some(subject.to_owned());
        self
    }
}

/// An event as stored, with its sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub kind: String,
    pub partner_id: Option<String>,
    pub payload: Vec<u8>,
    pub created_at_millis: i64,
}

impl From<outbox_event::Model> for StoredEvent {
    fn from(r: outbox_event::Model) -> Self {
        Self {
            seq: r.seq,
            kind: r.kind,
            partner_id: r.partner_id,
            payload: r.payload,
            created_at_millis: r.created_at,
        }
    }
}

impl StoredEvent {
    /// The payload as the contract message it was appended as; `None` if it is not one.
    pub fn decode<M: prost::Message + Default>(&self) -> Option<M> {
        M::decode(self.payload.as_slice()).ok()
    }
}

/// [`Feed::changes`]: `while changes.next().await { catch up }`.
pub struct Changes {
    published: watch::Receiver<u64>,
    poll: Duration,
    stopping: CancellationToken,
    started: bool,
}

impl Changes {
    /// Waits for the next time to catch up; `false` once stopping.
    pub async fn next(&mut self) -> bool {
        if !std::mem::replace(&mut self.started, true) {
            return !self.stopping.is_cancelled();
        }
        tokio::select! {
            _ = self.published.changed() => true,
            () = tokio::time::sleep(self.poll) => true,
            () = self.stopping.cancelled() => false,
        }
    }
}

/// A service's outbox and its watchers.
#[derive(Clone)]
pub struct Feed {
    db: DatabaseConnection,
    published: watch::Sender<u64>,
    shutdown: CancellationToken,
    /// Another replica may append to the same database; the tail polls at this interval too.
    poll: Duration,
    /// The tail's broadcast of new events, started with the first watcher.
    tail: std::sync::Arc<std::sync::OnceLock<broadcast::Sender<Arc<StoredEvent>>>>,
    /// PostgreSQL: the URL and channel the tail LISTENs on for other replicas' appends.
    notify: Option<(String, String)>,
    /// Appends made through this feed in this process, counted for [`Feed::appended`].
    appends: Arc<std::sync::atomic::AtomicU64>,
    /// The sequence the tail has read up to, sent after the events up to it were broadcast. A
    /// stream that sees it pass its cursor without the events in between (the tail started,
    /// or skipped ahead while nobody listened, after the stream read the database) goes back
    /// to the database for them instead of waiting for a later event to reveal the gap.
    position: watch::Sender<i64>,
}

impl Feed {
    /// A feed read from `db`. Appends go through the writer's own transactions, so `db` may be
    /// a read pool, which keeps watchers off the writer.
    pub fn new(db: DatabaseConnection, shutdown: CancellationToken) -> Self {
        Self {
            db,
            published: watch::Sender::new(0),
            shutdown,
            poll: Duration::from_millis(500),
            tail: Arc::default(),
            notify: None,
            appends: Arc::default(),
            position: watch::Sender::new(0),
        }
    }

    /// On PostgreSQL (`url`), the tail also wakes on other replicas' appends to `service`'s
    /// outbox through LISTEN/NOTIFY, so their events reach this replica's streams at once.
    pub fn listening(mut self, url: &str, service: &str) -> Self {
        if url.starts_with("postgres") {
            self.notify = Some((url.to_owned(), notify_channel(&format!("lianyu_{service}"))));
        }
        self
    }

    /// How long the tail waits between polls when nothing woke it (other replicas' appends on
    /// SQLite, or a lost LISTEN connection).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The tail's broadcast, starting the tail on first use.
    fn tail(&self) -> broadcast::Sender<Arc<StoredEvent>> {
        self.tail
            .get_or_init(|| {
                let (events, _) = broadcast::channel(TAIL_BUFFER);
                tokio::spawn(self.clone().run_tail(events.clone()));
                events
            })
            .clone()
    }

    /// Reads each new event once and broadcasts it to every stream of this process.
    async fn run_tail(self, events: broadcast::Sender<Arc<StoredEvent>>) {
        let mut published = self.published.subscribe();
        let mut listener = None;
        let mut head = loop {
            match self.head().await {
                Ok(head) => break head,
                Err(e) => {
                    tracing::warn!(error = %e, "feed tail cannot read the head; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.poll) => {}
                        () = self.shutdown.cancelled() => return,
                    }
                }
            }
        };
        loop {
            published.mark_unchanged();
            // Nobody listening: nothing to read (a new stream catches up from the database).
            if events.receiver_count() > 0 {
                loop {
                    match self.read_after(head, None, READ_BATCH).await {
                        Ok(batch) => {
                            let full = batch.len() as u64 == READ_BATCH;
                            for event in batch {
                                head = event.seq;
                                let _ = events.send(Arc::new(event));
                            }
                            if !full {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "feed tail read failed; retrying");
                            break;
                        }
                    }
                }
            } else if let Ok(now) = self.head().await {
                head = now;
            }
            self.position.send_if_modified(|p| {
                let moved = *p != head;
                *p = head;
                moved
            });
            if listener.is_none()
                && let Some((url, channel)) = &self.notify
            {
                listener = listen(url, channel).await;
            }
            tokio::select! {
                _ = published.changed() => {}
                () = tokio::time::sleep(self.poll) => {}
                woke = notified(&mut listener) => if woke {
                    // Another replica appended: wake this process's other followers too.
                    self.published();
                } else {
                    tracing::warn!("feed LISTEN connection lost; polling until it is back");
                    listener = None;
                },
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Appends an event inside the caller's transaction and returns its sequence.
    ///
    /// The counter row is updated first: its row lock is held until the transaction ends, so
    /// sequences become visible in commit order and a tailing reader never skips a late commit.
    /// A transaction that also locks other shared rows (a budget, a stock row) stages its
    /// events instead ([`Feed::append_staged`]): the counter is then the last lock it takes,
    /// and two such transactions cannot deadlock on it.
    pub async fn append(
        &self,
        txn: &impl ConnectionTrait,
        event: NewEvent,
    ) -> Result<i64, StorageError> {
        let bumped = outbox_counter::Entity::update_many()
            .col_expr(
                outbox_counter::Column::LastSeq,
                Expr::col(outbox_counter::Column::LastSeq).add(1),
            )
            .filter(outbox_counter::Column::Id.eq(1))
            .exec(txn)
            .await?;
        if bumped.rows_affected != 1 {
            return Err(StorageError::Other("outbox counter row is missing".into()));
        }
        let seq = outbox_counter::Entity::find_by_id(1)
            .one(txn)
            .await?
            .ok_or(StorageError::NotFound)?
            .last_seq;
        outbox_event::ActiveModel {
            seq: Set(seq),
            kind: Set(event.kind),
            partner_id: Set(event.partner_id),
            payload: Set(event.payload),
            created_at: Set(now_millis()),
            subject: Set(event.subject),
        }
        .insert(txn)
        .await?;
        if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
            // Delivered at commit (and once per transaction): every replica's tail wakes.
            txn.execute_unprepared("SELECT pg_notify('lianyu_feed_' || current_schema(), '')")
                .await?;
        }
        self.appends
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(seq)
    }

    /// [`Feed::append`] deferred in `writes` to just before the commit: the event is numbered
    /// then, with every other event of the transaction (in group commit, of the batch) in one
    /// move of the counter ([`Writes::send`]). The counter's row lock — which every appending
    /// transaction takes and which orders sequences by commit, as in `append` — is held only
    /// while the transaction commits, so on PostgreSQL appending writers (group-commit lanes)
    /// no longer wait for each other's whole transactions. The sequence is not returned.
    pub fn append_staged(&self, writes: &mut Writes, event: NewEvent) {
        writes.append_to_outbox(OutboxRow {
            kind: event.kind,
            partner_id: event.partner_id,
            payload: event.payload,
            created_at: now_millis(),
            subject: event.subject,
        });
        self.appends
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// How many events this process has appended to this feed (in transactions that may yet
    /// roll back). A caller that compares it before and after its own transaction knows
    /// whether that transaction may have appended, and skips waking watchers when it did not;
    /// another service's appends (`lianyu up` runs four) never count here.
    pub fn appended(&self) -> u64 {
        self.appends.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The last sequence appended (0 for an empty outbox).
    pub async fn head(&self) -> Result<i64, StorageError> {
        Ok(outbox_counter::Entity::find_by_id(1)
            .one(&self.db)
            .await?
            .map_or(0, |row| row.last_seq))
    }

    /// The earliest cursor a stream resumes from without a gap: the sequence before the oldest
    /// event kept, or the head when none is kept ([`expire`] removes events from the front).
    pub async fn horizon(&self) -> Result<i64, StorageError> {
        let oldest: Option<i64> = outbox_event::Entity::find()
            .select_only()
            .column(outbox_event::Column::Seq)
            .order_by_asc(outbox_event::Column::Seq)
            .limit(1)
            .into_tuple()
            .one(&self.db)
            .await?;
        match oldest {
            Some(seq) => Ok(seq - 1),
            None => self.head().await,
        }
    }

    /// A receiver that changes whenever this process publishes (see [`Feed::published`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// When an in-process follower of the feed (a cache, a verifier) should catch up: at once,
    /// then whenever this process publishes and every poll interval (other replicas' appends),
    /// until `stopping`.
    pub fn changes(&self, stopping: CancellationToken) -> Changes {
        Changes {
            published: self.subscribe(),
            poll: self.poll,
            stopping,
            started: false,
        }
    }

    /// How often readers poll for other replicas' appends.
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// Wakes watchers after a transaction that appended has committed.
    pub fn published(&self) {
        self.published.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The events that name `subject` ([`NewEvent::about`]) and have not been rewritten since,
    /// in sequence order, read in the caller's transaction — for an erasure to decide which it
    /// covers and [`Feed::rewrite`] them.
    pub async fn naming(
        txn: &impl ConnectionTrait,
        subject: &str,
    ) -> Result<Vec<StoredEvent>, StorageError> {
        let rows = outbox_event::Entity::find()
            .filter(outbox_event::Column::Subject.eq(subject.to_owned()))
            .order_by_asc(outbox_event::Column::Seq)
            .all(txn)
            .await?;
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// Replaces event `seq`'s payload with `payload` — which no longer names the person — and
    /// clears its subject, inside the caller's transaction. The event keeps its sequence, so
    /// every cursor stays valid and a reader from the start still sees it happen, without the
    /// person. Events already delivered — and those a stream a little behind still receives
    /// from this process's tail — are not recalled.
    pub async fn rewrite(
        txn: &impl ConnectionTrait,
        seq: i64,
        payload: Vec<u8>,
    ) -> Result<(), StorageError> {
        outbox_event::ActiveModel {
            seq: Set(seq),
            payload: Set(payload),
            subject: Set(None),
            ..Default::default()
        }
        .update(txn)
        .await?;
        Ok(())
    }

    /// [`Feed::naming`] then [`Feed::rewrite`]: `rewrite` answers each event's new payload, or
    /// `None` to leave it as it is (an event the erasure does not cover: the person's activity
    /// through another partner). Returns how many were rewritten.
    pub async fn rewrite_about(
        txn: &impl ConnectionTrait,
        subject: &str,
        mut rewrite: impl FnMut(&StoredEvent) -> Option<Vec<u8>>,
    ) -> Result<u64, StorageError> {
        let mut rewritten = 0;
        for event in Self::naming(txn, subject).await? {
            if let Some(payload) = rewrite(&event) {
                Self::rewrite(txn, event.seq, payload).await?;
                rewritten += 1;
            }
        }
        Ok(rewritten)
    }

    /// Up to `limit` events after `after`, in sequence order; with `only`, just the events
    /// concerning that partner (read through the partner index, so one partner's feed does not
    /// scan the others').
    pub async fn read_after(
        &self,
        after: i64,
        only: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredEvent>, StorageError> {
        let mut query = outbox_event::Entity::find()
            .filter(outbox_event::Column::Seq.gt(after))
            .order_by_asc(outbox_event::Column::Seq)
            .limit(limit);
        if let Some(partner) = only {
            query = query.filter(outbox_event::Column::PartnerId.eq(partner.to_owned()));
        }
        let rows = query.all(&self.db).await?;
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// Streams every event after `after`, then new ones as they commit, until the client
    /// leaves or the server shuts down (then UNAVAILABLE, so the client resumes elsewhere).
    /// `only` limits the stream to one partner's events; `map` turns an event into the RPC's
    /// message, or `None` to skip it for this watcher.
    pub fn watch<T, F>(
        &self,
        after: i64,
        only: Option<String>,
        mut map: F,
    ) -> ReceiverStream<Result<T, tonic::Status>>
    where
        T: Send + 'static,
        F: FnMut(StoredEvent) -> Option<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let feed = self.clone();
        let tail = self.tail();
        let mut position = self.position.subscribe();
        tokio::spawn(async move {
            let mut cursor = after;
            let mut live = tail.subscribe();
            loop {
                // Catch up from the database (history, or after falling behind the tail). Every
                // event up to `head` is committed, so afterwards the stream has seen all of them.
                let Some(head) = read_or_end(&tx, feed.head().await).await else {
                    return;
                };
                // A cursor from before what the feed keeps would skip what was removed: the
                // client is told, never silently moved on. Unset (0) reads what is kept.
                if cursor > 0 {
                    let Some(horizon) = read_or_end(&tx, feed.horizon().await).await else {
                        return;
                    };
                    if cursor < horizon {
                        let _ = tx.send(Err(expired(horizon))).await;
                        return;
                    }
                }
                loop {
                    let Some(batch) = read_or_end(
                        &tx,
                        feed.read_after(cursor, only.as_deref(), READ_BATCH).await,
                    )
                    .await
                    else {
                        return;
                    };
                    let full = batch.len() as u64 == READ_BATCH;
                    for event in batch {
                        cursor = event.seq;
                        if let Some(message) = map(event)
                            && tx.send(Ok(message)).await.is_err()
                        {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                cursor = Ord::max(cursor, head);
                // Then live from the tail; events already sent from the database are skipped,
                // and a jump in sequence (the tail started after this stream's read) sends the
                // stream back to the database for what lies between.
                let fell_behind = loop {
                    tokio::select! {
                        received = live.recv() => match received {
                            Ok(event) => match deliver(&event, &mut cursor, only.as_deref(), &mut map, &tx).await {
                                Ok(()) => {}
                                Err(Stop::Gap) => break false,
                                Err(Stop::Lagged) => break true,
                                Err(Stop::Closed) => return,
                            },
                            Err(broadcast::error::RecvError::Lagged(_)) => break true,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        changed = position.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            // The tail broadcasts before it moves its position: what it sent
                            // is already queued. Drain that, then anything still missing
                            // below the position is read from the database.
                            let reached = *position.borrow_and_update();
                            if reached <= cursor {
                                continue;
                            }
                            match drain(&mut live, &mut cursor, only.as_deref(), &mut map, &tx).await {
                                Ok(()) if reached > cursor => break false,
                                Ok(()) => {}
                                Err(Stop::Gap) => break false,
                                Err(Stop::Lagged) => break true,
                                Err(Stop::Closed) => return,
                            }
                        }
                        () = tx.closed() => return,
                        () = feed.shutdown.cancelled() => {
                            let _ = tx.send(Err(tonic::Status::unavailable("server shutting down, resume from your cursor"))).await;
                            return;
                        }
                    }
                };
                if fell_behind {
                    live = live.resubscribe();
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

/// FAILED_PRECONDITION / CURSOR_EXPIRED: the events after a stream's cursor up to `horizon`
/// are no longer kept.
fn expired(horizon: i64) -> tonic::Status {
    crate::error::status_with_info(
        tonic::Code::FailedPrecondition,
        format!(
            "the events after this cursor are no longer kept (LIANYU_FEED_RETENTION): resume \
             from {horizon} or later, or with no cursor for every event kept"
        ),
        "CURSOR_EXPIRED",
        "lianyu.feed",
        std::collections::HashMap::from([("oldest_cursor".to_owned(), horizon.to_string())]),
    )
}

/// Events looked at per round of [`expire`].
const EXPIRE_BATCH: u64 = 1_000;

/// Removes the events older than `retention` from the front of the feed, oldest first, and
/// returns how many: it stops at the first event still within `retention` (one committed out
/// of order keeps those after it a little longer), so what is kept is always everything after
/// a sequence, [`Feed::horizon`], and a stream never skips a removed event unknowingly.
pub async fn expire(db: &DatabaseConnection, retention: Duration) -> Result<u64, StorageError> {
    let cutoff =
        now_millis().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let mut removed = 0;
    loop {
        let oldest: Vec<(i64, i64)> = outbox_event::Entity::find()
            .select_only()
            .column(outbox_event::Column::Seq)
            .column(outbox_event::Column::CreatedAt)
            .order_by_asc(outbox_event::Column::Seq)
            .limit(EXPIRE_BATCH)
            .into_tuple()
            .all(db)
            .await?;
        let past = oldest.iter().take_while(|(_, at)| *at < cutoff).count();
        let Some(&(through, _)) = past.checked_sub(1).and_then(|i| oldest.get(i)) else {
            break;
        };
        removed += outbox_event::Entity::delete_many()
            .filter(outbox_event::Column::Seq.lte(through))
            .exec(db)
            .await?
            .rows_affected;
        if past < oldest.len() || (oldest.len() as u64) < EXPIRE_BATCH {
            break;
        }
    }
    Ok(removed)
}

/// Runs [`expire`] every tenth of `retention` (between a minute and an hour) until `stopping`.
pub async fn expire_periodically(
    db: DatabaseConnection,
    retention: Duration,
    stopping: CancellationToken,
) {
    let every = (retention / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    crate::jobs::periodic("feed-retention", every, false, None, stopping, || {
        let db = db.clone();
        async move { expire(&db, retention).await }
    })
    .await;
}

/// Why a stream stops taking live events.
enum Stop {
    /// An event lies beyond the next sequence: the stream catches up from the database.
    Gap,
    /// The stream fell behind the broadcast: it resubscribes and catches up.
    Lagged,
    /// The client left.
    Closed,
}

/// Sends `event` on a stream standing at `cursor` (skipping what it has seen and what is not
/// its partner's), moving the cursor.
async fn deliver<T, F>(
    event: &StoredEvent,
    cursor: &mut i64,
    only: Option<&str>,
    map: &mut F,
    tx: &mpsc::Sender<Result<T, tonic::Status>>,
) -> Result<(), Stop>
where
    F: FnMut(StoredEvent) -> Option<T>,
{
    if event.seq <= *cursor {
        return Ok(());
    }
    if event.seq > *cursor + 1 {
        return Err(Stop::Gap);
    }
    *cursor = event.seq;
    if only.is_some() && event.partner_id.as_deref() != only {
        return Ok(());
    }
    if let Some(message) = map(event.clone())
        && tx.send(Ok(message)).await.is_err()
    {
        return Err(Stop::Closed);
    }
    Ok(())
}

/// Delivers everything the tail has already queued for a stream.
async fn drain<T, F>(
    live: &mut broadcast::Receiver<Arc<StoredEvent>>,
    cursor: &mut i64,
    only: Option<&str>,
    map: &mut F,
    tx: &mpsc::Sender<Result<T, tonic::Status>>,
) -> Result<(), Stop>
where
    F: FnMut(StoredEvent) -> Option<T>,
{
    loop {
        match live.try_recv() {
            Ok(event) => deliver(&event, cursor, only, map, tx).await?,
            Err(broadcast::error::TryRecvError::Empty) => return Ok(()),
            Err(broadcast::error::TryRecvError::Lagged(_)) => return Err(Stop::Lagged),
            Err(broadcast::error::TryRecvError::Closed) => return Err(Stop::Closed),
        }
    }
}

/// The NOTIFY channel of a schema's outbox.
fn notify_channel(schema: &str) -> String {
    format!("lianyu_feed_{schema}")
}

/// A LISTEN connection on `channel`, or `None` (the tail then polls) when it cannot be made.
async fn listen(url: &str, channel: &str) -> Option<sea_orm::sqlx::postgres::PgListener> {
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect(url)
        .await
        .map_err(|e| tracing::warn!(error = %e, "feed cannot LISTEN; polling"))
        .ok()?;
    listener
        .listen(channel)
        .await
        .map_err(|e| tracing::warn!(error = %e, "feed cannot LISTEN; polling"))
        .ok()?;
    Some(listener)
}

/// Completes with `true` on a notification, `false` when the connection failed; never while
/// there is no listener.
async fn notified(listener: &mut Option<sea_orm::sqlx::postgres::PgListener>) -> bool {
    match listener {
        Some(l) => l.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The value read, or — when the read failed — `None` after telling the stream UNAVAILABLE,
/// so the client resumes from its cursor (here or on another replica).
async fn read_or_end<T, M>(
    tx: &mpsc::Sender<Result<M, tonic::Status>>,
    read: Result<T, StorageError>,
) -> Option<T> {
    match read {
        Ok(value) => Some(value),
        Err(err) => {
            tracing::warn!(error = %err, "feed read failed");
            let _ = tx
                .send(Err(tonic::Status::unavailable(
                    "feed unavailable, resume from your cursor",
                )))
                .await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test")]

    use futures::StreamExt;
    use sea_orm::TransactionTrait;

    use super::*;

    struct Migrator;

    #[sea_orm_migration::async_trait::async_trait]
    impl sea_orm_migration::MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
            vec![
                Box::new(crate::storage::KitTables),
                Box::new(crate::storage::KitIndexes),
            ]
        }
    }

    async fn append(feed: &Feed, db: &DatabaseConnection, n: u8) -> i64 {
        let txn = db.begin().await.unwrap();
        let event = NewEvent {
            kind: "probe".into(),
            partner_id: None,
            payload: vec![n],
            subject: None,
        };
        let seq = feed.append(&txn, event).await.unwrap();
        txn.commit().await.unwrap();
        seq
    }

    /// The tail may read its starting point after a stream read the database (it starts with
    /// the first stream, concurrently), or skip ahead while nobody listened; the events in
    /// between are then never broadcast. The stream must fetch them when the tail's position
    /// passes it, not wait for a later event to reveal the gap: here nothing follows, and
    /// polling is off, so only the position can deliver the event.
    #[tokio::test]
    async fn a_stream_the_tail_passed_without_broadcasting_fetches_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::Config::local(dir.path());
        config.set_database_url(
            "probe",
            format!("sqlite://{}/feed.db?mode=rwc", dir.path().display()),
        );
        let db = crate::storage::open::<Migrator>(&config, "probe")
            .await
            .unwrap();
        let feed = Feed::new(db.clone(), CancellationToken::new())
            .with_poll_interval(Duration::from_secs(3600));
        // A tail that broadcasts only what the test sends: no tail task runs.
        let (events, _) = broadcast::channel(TAIL_BUFFER);
        assert!(feed.tail.set(events).is_ok());

        let first = append(&feed, &db, 1).await;
        let mut stream = feed.watch(0, None, |e| Some(e.payload));
        // Read from the database: the stream is now waiting on the tail.
        let got = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert_eq!(got.unwrap().unwrap().unwrap(), [1]);

        let second = append(&feed, &db, 2).await;
        assert_eq!(second, first + 1);
        feed.position.send_replace(second);
        let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream fetches the event the tail passed over");
        assert_eq!(got.unwrap().unwrap(), [2]);
    }
}
