//! The consuming side of a feed: open a `Watch…` stream from the stored cursor, handle each
//! event in a transaction that also advances the cursor, and reconnect with backoff on errors.

use std::{future::Future, pin::Pin, time::Duration};

use futures::{FutureExt, Stream, StreamExt};
use sea_orm::{
    ActiveValue::Set, DatabaseConnection, DatabaseTransaction, EntityTrait, TransactionTrait,
    sea_query::OnConflict,
};
use tokio_util::sync::CancellationToken;

use crate::{
    error::KitError,
    storage::{StorageError, entities::feed_cursor, now_millis},
};

/// Events applied in one transaction at most: those already received when the first is.
const APPLY_BATCH: usize = 256;

/// What a consumer's handler returns: a `Send` future borrowing the transaction. (A plain
/// async closure cannot promise `Send` for every transaction lifetime, which `tokio::spawn` needs.)
pub type Handled<'a> = Pin<Box<dyn Future<Output = Result<(), KitError>> + Send + 'a>>;

/// A named consumer of one feed, with its cursor in the consuming service's database.
pub struct Consumer {
    db: DatabaseConnection,
    name: String,
}

impl Consumer {
    pub fn new(db: DatabaseConnection, name: impl Into<String>) -> Self {
        Self {
            db,
            name: name.into(),
        }
    }

    /// The last sequence handled (0 before the first).
    pub async fn position(&self) -> Result<i64, StorageError> {
        Ok(feed_cursor::Entity::find_by_id(self.name.clone())
            .one(&self.db)
            .await?
            .map_or(0, |c| c.position))
    }

    /// Consumes until `shutdown`. `open(cursor)` opens a stream of `(sequence, event)` after
    /// `cursor`; `handle` applies one event inside the transaction that stores the new cursor,
    /// so an event's effect and the cursor move together or not at all.
    pub async fn run<T, S, Open, OpenFut, Handle>(
        &self,
        open: Open,
        handle: Handle,
        shutdown: CancellationToken,
    ) -> Result<(), StorageError>
    where
        T: Send,
        Open: FnMut(i64) -> OpenFut,
        OpenFut: Future<Output = Result<S, tonic::Status>>,
        S: Stream<Item = Result<(i64, T), tonic::Status>> + Unpin,
        Handle: for<'a> FnMut(&'a DatabaseTransaction, T) -> Handled<'a> + Send,
    {
        self.consume(open, EachEvent(handle), shutdown).await
    }

    /// [`Consumer::run`], with `handle` given every event of a batch at once (in sequence
    /// order; those already received when the first is, at most 256), inside the transaction
    /// that stores the batch's last sequence as the cursor: a handler that looks the same
    /// things up for many events (a session's hosts, a benefit's campaigns) or writes one row
    /// per event does it once per batch. All of the batch's effects and the cursor move
    /// together or not at all; a failed batch is applied again whole.
    pub async fn run_batches<T, S, Open, OpenFut, Handle>(
        &self,
        open: Open,
        handle: Handle,
        shutdown: CancellationToken,
    ) -> Result<(), StorageError>
    where
        T: Send,
        Open: FnMut(i64) -> OpenFut,
        OpenFut: Future<Output = Result<S, tonic::Status>>,
        S: Stream<Item = Result<(i64, T), tonic::Status>> + Unpin,
        Handle: for<'a> FnMut(&'a DatabaseTransaction, Vec<T>) -> Handled<'a> + Send,
    {
        self.consume(open, WholeBatch(handle), shutdown).await
    }

    async fn consume<T, S, Open, OpenFut, A>(
        &self,
        mut open: Open,
        mut handle: A,
        shutdown: CancellationToken,
    ) -> Result<(), StorageError>
    where
        Open: FnMut(i64) -> OpenFut,
        OpenFut: Future<Output = Result<S, tonic::Status>>,
        S: Stream<Item = Result<(i64, T), tonic::Status>> + Unpin,
        A: Apply<T>,
    {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let cursor = self.position().await?;
            let mut stream = tokio::select! {
                opened = open(cursor) => match opened {
                    Ok(stream) => stream,
                    Err(status) => {
                        tracing::warn!(consumer = %self.name, code = ?status.code(), "feed open failed, retrying");
                        sleep_or_stop(&shutdown, &mut backoff).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    () = shutdown.cancelled() => return Ok(()),
                };
                match item {
                    Some(Ok(first)) => {
                        // Every event already here goes in the same transaction: one commit
                        // and one cursor write for a burst, not one per event.
                        let mut batch = vec![first];
                        let mut after = None;
                        while batch.len() < APPLY_BATCH {
                            match stream.next().now_or_never() {
                                Some(Some(Ok(item))) => batch.push(item),
                                Some(rest) => {
                                    after = Some(rest);
                                    break;
                                }
                                None => break,
                            }
                        }
                        let last = batch.last().map_or(0, |(seq, _)| *seq);
                        if let Err(err) = self.apply(batch, &mut handle).await {
                            tracing::error!(consumer = %self.name, seq = last, error = %err, "feed events failed, retrying");
                            sleep_or_stop(&shutdown, &mut backoff).await;
                            break;
                        }
                        backoff = Duration::from_millis(100);
                        if let Some(rest) = after {
                            if let Some(Err(status)) = rest {
                                interrupted(&self.name, &status);
                            }
                            sleep_or_stop(&shutdown, &mut backoff).await;
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        interrupted(&self.name, &status);
                        sleep_or_stop(&shutdown, &mut backoff).await;
                        break;
                    }
                    None => {
                        sleep_or_stop(&shutdown, &mut backoff).await;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies `batch` (in sequence order) and stores the last sequence as the cursor, all in
    /// one transaction: every event's effect and the cursor move together or not at all.
    async fn apply<T, A: Apply<T>>(
        &self,
        batch: Vec<(i64, T)>,
        handle: &mut A,
    ) -> Result<(), KitError> {
        let Some(seq) = batch.last().map(|(seq, _)| *seq) else {
            return Ok(());
        };
        let txn = self.db.begin().await.map_err(StorageError::from)?;
        handle.apply(&txn, batch).await?;
        let row = feed_cursor::ActiveModel {
            consumer: Set(self.name.clone()),
            position: Set(seq),
            updated_at: Set(now_millis()),
        };
        feed_cursor::Entity::insert(row)
            .on_conflict(
                OnConflict::column(feed_cursor::Column::Consumer)
                    .update_columns([
                        feed_cursor::Column::Position,
                        feed_cursor::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(&txn)
            .await
            .map_err(StorageError::from)?;
        txn.commit().await.map_err(StorageError::from)?;
        position_gauge().record(
            seq,
            &[opentelemetry::KeyValue::new("consumer", self.name.clone())],
        );
        Ok(())
    }
}

/// How a consumer's handler takes a batch: event by event ([`Consumer::run`]) or whole
/// ([`Consumer::run_batches`]).
trait Apply<T> {
    fn apply<'a>(&'a mut self, txn: &'a DatabaseTransaction, batch: Vec<(i64, T)>) -> Handled<'a>
    where
        T: 'a;
}

struct EachEvent<H>(H);

impl<T, H> Apply<T> for EachEvent<H>
where
    T: Send,
    H: for<'a> FnMut(&'a DatabaseTransaction, T) -> Handled<'a> + Send,
{
    fn apply<'a>(&'a mut self, txn: &'a DatabaseTransaction, batch: Vec<(i64, T)>) -> Handled<'a>
    where
        T: 'a,
    {
        Box::pin(async move {
            for (_, event) in batch {
                (self.0)(txn, event).await?;
            }
            Ok(())
        })
    }
}

struct WholeBatch<H>(H);

impl<T, H> Apply<T> for WholeBatch<H>
where
    H: for<'a> FnMut(&'a DatabaseTransaction, Vec<T>) -> Handled<'a>,
{
    fn apply<'a>(&'a mut self, txn: &'a DatabaseTransaction, batch: Vec<(i64, T)>) -> Handled<'a>
    where
        T: 'a,
    {
        (self.0)(txn, batch.into_iter().map(|(_, event)| event).collect())
    }
}

/// `lianyu.feed.consumer.position`: the last sequence each consumer applied (compare with the
/// producer's feed head; `lianyu.feed.consumer.lag` gives the lag in time where events carry one).
fn position_gauge() -> &'static opentelemetry::metrics::Gauge<i64> {
    static GAUGE: std::sync::OnceLock<opentelemetry::metrics::Gauge<i64>> =
        std::sync::OnceLock::new();
    GAUGE.get_or_init(|| {
        opentelemetry::global::meter("lianyu")
            .i64_gauge("lianyu.feed.consumer.position")
            .with_description("The last feed sequence a consumer applied")
            .build()
    })
}

/// `lianyu.feed.consumer.lag`: seconds between an event's commit at its producer and its
/// application here.
pub fn record_lag(consumer: &str, event_millis: i64) {
    static GAUGE: std::sync::OnceLock<opentelemetry::metrics::Gauge<f64>> =
        std::sync::OnceLock::new();
    let gauge = GAUGE.get_or_init(|| {
        opentelemetry::global::meter("lianyu")
            .f64_gauge("lianyu.feed.consumer.lag")
            .with_unit("s")
            .with_description("How far behind its producer a feed consumer is")
            .build()
    });
    let lag = (crate::storage::now_millis() - event_millis).max(0) as f64 / 1000.0;
    gauge.record(
        lag,
        &[opentelemetry::KeyValue::new(
            "consumer",
            consumer.to_owned(),
        )],
    );
}

async fn sleep_or_stop(shutdown: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

/// Logs why a consumer's feed stopped. A feed that no longer keeps the events after the
/// consumer's cursor (CURSOR_EXPIRED: the consumer was away longer than the producer's
/// `LIANYU_FEED_RETENTION`) is an error an operator must see — the consumer cannot catch up
/// without missing events, and it keeps trying rather than skip them.
fn interrupted(consumer: &str, status: &tonic::Status) {
    use tonic_types::StatusExt;
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    if reason == "TOKEN_EXPIRED" {
        // A stream ends when the token it was opened with expires; the next opens with the
        // token renewed meanwhile.
        tracing::debug!(
            consumer,
            "feed stream's token expired, resuming with a fresh one"
        );
    } else if reason == "CURSOR_EXPIRED" {
        tracing::error!(
            consumer,
            "the feed no longer keeps the events after this consumer's cursor; it cannot catch \
             up without missing them (raise the producer's LIANYU_FEED_RETENTION, or rebuild \
             this consumer's state)"
        );
    } else {
        tracing::warn!(consumer, code = ?status.code(), "feed interrupted, resuming");
    }
}
