//! `request_id` idempotency (AIP-155): the first call's response is stored in the same
//! transaction as its effect; a replay with the same id and the same request gets the stored
//! response; the same id with a different request is ALREADY_EXISTS / REQUEST_ID_REUSED.

use prost::Message;
use std::sync::Arc;

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter,
};
use sha2::{Digest, Sha256};

use crate::{
    batched::{self, Batched},
    error::{KitError, ServiceError},
    group::Writer,
    storage::{StorageError, entities::idempotency_key, now_millis},
    writes::Writes,
};

/// How requests and responses are kept at rest. A service whose responses carry personal data
/// (identity echoes identifiers) seals them and digests requests with a key, so neither the
/// table nor a brute force over its hashes reveals a phone number.
pub trait AtRest: Send + Sync {
    fn digest(&self, request: &[u8]) -> Vec<u8>;
    fn seal(&self, response: &[u8]) -> Vec<u8>;
    fn open(&self, stored: &[u8]) -> Option<Vec<u8>>;
}

/// Plain storage, for services whose responses hold no personal data.
pub struct Plain;

impl AtRest for Plain {
    fn digest(&self, request: &[u8]) -> Vec<u8> {
        Sha256::digest(request).to_vec()
    }

    fn seal(&self, response: &[u8]) -> Vec<u8> {
        response.to_vec()
    }

    fn open(&self, stored: &[u8]) -> Option<Vec<u8>> {
        Some(stored.to_vec())
    }
}

/// Longest accepted `request_id` (a UUID is 36).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Who made a call and which call: ids are unique per partner and method.
#[derive(Clone, Copy, Debug)]
pub struct CallKey<'a> {
    pub partner_id: &'a str,
    pub method: &'a str,
    pub request_id: &'a str,
    /// The store of a store token: part of what the request is, so that a store's till never
    /// receives the reply to a call its partner made elsewhere under the same request id
    /// (REQUEST_ID_REUSED instead).
    pub store: Option<&'a str>,
}

impl CallKey<'_> {
    /// The digest a request is stored and compared under.
    fn digest(&self, at_rest: &dyn AtRest, request: &impl Message) -> Vec<u8> {
        let mut bytes = request.encode_to_vec();
        if let Some(store) = self.store {
            bytes.extend_from_slice(b"\0store:");
            bytes.extend_from_slice(store.as_bytes());
        }
        at_rest.digest(&bytes)
    }
}

/// How often a mutation that lost a race (a unique key taken meanwhile, a serialization
/// failure or deadlock) is run again before its error is returned.
const RACE_RETRIES: u32 = 4;

/// Runs `effect` in a transaction at most once per key, storing its response with it; a replay
/// with the same request gets the stored response. The effect is `Clone` so that a try that
/// lost a race can run again from a fresh copy. A mutation without a `request_id` is
/// INVALID_ARGUMENT: silently running it without replay protection would turn a client's
/// retry into a second effect. (Services call it through [`crate::mutation::Mutations`].)
///
/// Optimistic: the key is not looked up first (on the hot path every id is new, and a lookup
/// costs a statement). A replay runs the effect in a transaction that is rolled back: its key
/// insert conflicts, or the effect fails because the first call already happened; either way
/// the stored reply is returned (or REQUEST_ID_REUSED when the request differs).
///
/// `effect` also names the reply's subject (a member's id) when there is one, stored as a
/// keyed digest beside the reply so that [`forget_subjects`] can purge the reply when the
/// person is erased, and the writes it staged ([`Writes`]): they are sent together with the
/// reply's own row, in one trip to the database on SQLite.
///
/// A mutation that lost a race with a concurrent one — a unique key the other committed first,
/// a serialization failure, a deadlock — runs again (up to four times, after a short jittered
/// pause) on the data as it now is, instead of surfacing ALREADY_EXISTS or ABORTED to a caller
/// who did nothing wrong. Its transaction was rolled back, so nothing of the lost try remains.
pub async fn once_about<Req, Resp, E, F>(
    writer: &Writer,
    reader: &Replays,
    at_rest: &dyn AtRest,
    key: CallKey<'_>,
    request: &Req,
    effect: F,
) -> Result<Resp, E>
where
    Req: Message,
    Resp: Message + Default,
    E: From<KitError> + ServiceError,
    F: AsyncFnOnce(&DatabaseTransaction) -> Result<(Resp, Option<String>, Writes), E> + Clone,
{
    validate(key.request_id)?;
    let hash = key.digest(at_rest, request);
    let mut tries = 0;
    loop {
        // Only a first try defers: a try after a lost race sends its writes itself, so that
        // a conflict of its own (a replayed id, a guard) is met by it alone.
        let defer = tries == 0 && writer.defers_writes();
        match try_once(writer, reader, at_rest, key, &hash, defer, effect.clone()).await {
            Err(e) if tries < RACE_RETRIES && lost_a_race(&e) => {
                tries += 1;
                let pause = rand::random::<u64>() % (2 << tries);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Whether an error is a race with a concurrent transaction, not the caller's fault.
fn lost_a_race<E: ServiceError>(e: &E) -> bool {
    matches!(e.reason(), "CONCURRENT_UPDATE" | "ALREADY_EXISTS")
}

/// How one attempt inside the writer's transaction ended.
enum Attempt<Resp, E> {
    /// The effect ran and its reply is stored: keep it.
    Done(Resp),
    /// The effect refused (or failed): undo it.
    Failed(E),
    /// A unique key was taken: the request id's (a replay, or a concurrent twin), or one of
    /// the staged writes' (a race lost). Undo ours and answer with the reply stored under the
    /// request id, or run again when none is committed.
    Stored,
}

async fn try_once<Resp, E, F>(
    writer: &Writer,
    reader: &Replays,
    at_rest: &dyn AtRest,
    key: CallKey<'_>,
    hash: &[u8],
    defer: bool,
    effect: F,
) -> Result<Resp, E>
where
    Resp: Message + Default,
    E: From<KitError> + ServiceError,
    F: AsyncFnOnce(&DatabaseTransaction) -> Result<(Resp, Option<String>, Writes), E>,
{
    let attempt = writer
        .transact_deferring(async |txn| {
            let (response, subject, mut writes) = match effect(txn).await {
                Ok(done) => done,
                Err(error) => return Err(Attempt::Failed(error)),
            };
            let row = idempotency_key::ActiveModel {
                partner_id: Set(key.partner_id.to_owned()),
                method: Set(key.method.to_owned()),
                request_id: Set(key.request_id.to_owned()),
                request_hash: Set(hash.to_vec()),
                response: Set(at_rest.seal(&response.encode_to_vec())),
                created_at: Set(now_millis()),
                subject: Set(subject.map(|s| subject_digest(at_rest, &s))),
                erased_at: Set(None),
            };
            if defer && writes.is_deferrable() {
                // All of it, the reply's row too, goes with the batch's commit: a conflict
                // there (this id replayed, a guard) fails the batch, whose members all run
                // again — each then sending its own writes (`defer` is for first tries).
                writes.add(
                    txn.get_database_backend(),
                    &idempotency_key::Entity::insert(row),
                );
                return Ok((Attempt::Done(response), writes.into_deferred()));
            }
            // What the effect deferred goes with its transaction's commit; the rest now.
            let at_commit = writes.take_at_commit();
            writes.add(
                txn.get_database_backend(),
                &idempotency_key::Entity::insert(row),
            );
            match writes.send(txn).await {
                Ok(()) => Ok((Attempt::Done(response), at_commit)),
                Err(StorageError::AlreadyExists) => Err(Attempt::Stored),
                Err(other) => Err(Attempt::Failed(KitError::from(other).into())),
            }
        })
        .await
        .map_err(kit)?;
    // Committed replies are read beside the writer (on SQLite its one connection is busy with
    // the next batch; a refusal must not queue for it).
    let db = reader;
    match attempt {
        Ok(Attempt::Done(response)) => Ok(response),
        Err(Attempt::Failed(error)) => {
            if let Some(stored) = replay(db, at_rest, key, hash).await? {
                return Ok(stored);
            }
            // In a shared transaction the refusal may rest on a twin of this very request (a
            // client's retry racing its first try) whose write is in the same batch, not
            // committed yet — a drop's "the member already holds one" is the twin's unit.
            // Once that batch has ended, the twin's reply, if any, is this call's.
            if writer.batching().is_some() {
                writer.settled().await;
                if let Some(stored) = replay(db, at_rest, key, hash).await? {
                    return Ok(stored);
                }
            }
            Err(error)
        }
        Err(Attempt::Stored) => match replay(db, at_rest, key, hash).await? {
            Some(stored) => Ok(stored),
            // No reply is committed under the key: a staged write lost a race, or a twin of
            // this very request (a client's retry racing its first try) holds the key in the
            // same shared transaction, not committed yet. Either way the try is run again
            // (`once_about`) once that transaction has ended: then it finds the twin's reply.
            None => {
                writer.settled().await;
                Err(kit(StorageError::AlreadyExists).into())
            }
        },
        // The body keeps only Done and undoes only the rest.
        Ok(_) | Err(Attempt::Done(_)) => {
            Err(KitError::Internal("group commit mixed up an attempt".into()).into())
        }
    }
}

/// The keyed digest a subject is stored under.
fn subject_digest(at_rest: &dyn AtRest, subject: &str) -> Vec<u8> {
    at_rest.digest(format!("subject:{subject}").as_bytes())
}

/// Purges the stored replies about `subjects` (of one partner, or of every partner with
/// `None`), inside the caller's transaction: the reply is emptied and marked erased, so a
/// replay returns NOT_FOUND / MEMBER_ERASED instead of the person's data — and does not run
/// the effect again, which would bring the erased data back. Returns how many were purged.
pub async fn forget_subjects(
    txn: &impl sea_orm::ConnectionTrait,
    at_rest: &dyn AtRest,
    partner_id: Option<&str>,
    subjects: &[String],
) -> Result<u64, StorageError> {
    use sea_orm::{ColumnTrait, QueryFilter, sea_query::Expr};
    let digests: Vec<Vec<u8>> = subjects
        .iter()
        .map(|s| subject_digest(at_rest, s))
        .collect();
    let mut update = idempotency_key::Entity::update_many()
        .col_expr(
            idempotency_key::Column::Response,
            Expr::value(Vec::<u8>::new()),
        )
        .col_expr(idempotency_key::Column::ErasedAt, Expr::value(now_millis()))
        .filter(idempotency_key::Column::Subject.is_in(digests));
    if let Some(partner) = partner_id {
        update = update.filter(idempotency_key::Column::PartnerId.eq(partner.to_owned()));
    }
    Ok(update.exec(txn).await?.rows_affected)
}

/// Deletes keys older than `ttl`; returns how many. A `request_id` replayed after that runs
/// again, so `ttl` must outlast any client's retries (a day by default).
pub async fn expire(
    db: &DatabaseConnection,
    ttl: std::time::Duration,
) -> Result<u64, StorageError> {
    use sea_orm::{ColumnTrait, QueryFilter};
    let cutoff = now_millis() - i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let done = idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::CreatedAt.lt(cutoff))
        .exec(db)
        .await?;
    Ok(done.rows_affected)
}

/// Expires keys older than `ttl` now and then every tenth of `ttl` (at most hourly), until
/// `stopping` is cancelled. Stored responses can hold personal data (sealed), so they are not
/// kept longer than retries need.
pub async fn expire_periodically(
    db: DatabaseConnection,
    ttl: std::time::Duration,
    stopping: tokio_util::sync::CancellationToken,
) {
    let every = (ttl / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(3600),
    );
    crate::jobs::periodic("idempotency-expiry", every, false, None, stopping, || {
        let db = db.clone();
        async move { expire(&db, ttl).await }
    })
    .await;
}

/// Checks a request id: 1 to 128 characters, no spaces or control characters
/// (INVALID_ARGUMENT on `request_id`). Mutations check it themselves; a call keyed outside
/// them (a claim that spans a peer call) checks it here.
pub fn validate(request_id: &str) -> Result<(), KitError> {
    if request_id.is_empty() {
        return Err(KitError::invalid(
            "request_id",
            "required: a unique id per mutation (a UUID), reused only to retry it",
        ));
    }
    if request_id.len() > MAX_REQUEST_ID_LEN {
        return Err(KitError::invalid(
            "request_id",
            format!("at most {MAX_REQUEST_ID_LEN} characters"),
        ));
    }
    if request_id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(KitError::invalid(
            "request_id",
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

/// The stored reply of `request` under `key`, if it was answered before: read-only, for a
/// caller that can refuse without a write unless it is a replay (a sold-out drop).
pub async fn stored<Req: Message, Resp: Message + Default>(
    reader: &Replays,
    at_rest: &dyn AtRest,
    key: CallKey<'_>,
    request: &Req,
) -> Result<Option<Resp>, KitError> {
    validate(key.request_id)?;
    let hash = key.digest(at_rest, request);
    replay(reader, at_rest, key, &hash).await
}

async fn replay<Resp: Message + Default>(
    replays: &Replays,
    at_rest: &dyn AtRest,
    key: CallKey<'_>,
    hash: &[u8],
) -> Result<Option<Resp>, KitError> {
    match replays.find(key).await.map_err(kit)? {
        None => Ok(None),
        Some(row) if row.request_hash == hash && row.erased_at.is_some() => {
            Err(KitError::SubjectErased)
        }
        Some(row) if row.request_hash == hash => at_rest
            .open(&row.response)
            .and_then(|plain| Resp::decode(plain.as_slice()).ok())
            .map(Some)
            .ok_or_else(|| {
                StorageError::Other("stored response does not open or decode".into()).into()
            }),
        Some(_) => Err(KitError::RequestIdReused),
    }
}

/// Stored-reply rows one lookup reads at most.
const REPLAY_BATCH: usize = 256;

/// Reads of stored replies, batched ([`crate::batched`]): a refusal checks for a stored reply
/// before it answers (a sold-out flash sale refuses thousands of buyers in a second, each
/// checking), and every check was a trip to the database of its own. Lookups made while one
/// is running queue up and the next goes as one query per partner and method
/// (`request_id IN (…)`, on the primary key). Cheap to clone; clones share the queue.
#[derive(Clone)]
pub struct Replays {
    db: DatabaseConnection,
    /// Keyed by (partner, method) and request id.
    batched: Batched<((String, String), String), Found>,
    /// Queries sent, for the tests.
    queries: Arc<std::sync::atomic::AtomicUsize>,
}

type Found = Result<Option<idempotency_key::Model>, StorageError>;

impl Replays {
    /// Lookups on `db` (a read pool beside the writer, where there is one).
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            batched: Batched::new(REPLAY_BATCH),
            queries: Arc::default(),
        }
    }

    /// The row stored under `key`, if any.
    async fn find(&self, key: CallKey<'_>) -> Found {
        let key = (
            (key.partner_id.to_owned(), key.method.to_owned()),
            key.request_id.to_owned(),
        );
        self.batched
            .get(key, |keys| async move {
                batched::by_group(&keys, |(partner_id, method), ids| async move {
                    self.queries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    idempotency_key::Entity::find()
                        .filter(idempotency_key::Column::PartnerId.eq(partner_id))
                        .filter(idempotency_key::Column::Method.eq(method))
                        .filter(idempotency_key::Column::RequestId.is_in(ids))
                        .all(&self.db)
                        .await
                        .map(|rows| {
                            rows.into_iter()
                                .map(|r| (r.request_id.clone(), r))
                                .collect()
                        })
                        .map_err(StorageError::from)
                })
                .await
            })
            .await
    }
}

fn kit(err: impl Into<StorageError>) -> KitError {
    KitError::Storage(err.into())
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, Schema};

    use super::*;

    async fn table(dir: &tempfile::TempDir) -> DatabaseConnection {
        let url = format!("sqlite://{}/replays.db?mode=rwc", dir.path().display());
        let db = crate::storage::connect(&url, "replays", None)
            .await
            .unwrap();
        let schema = Schema::new(DbBackend::Sqlite);
        db.execute(&schema.create_table_from_entity(idempotency_key::Entity))
            .await
            .unwrap();
        db
    }

    fn row(partner: &str, method: &str, id: &str) -> idempotency_key::ActiveModel {
        idempotency_key::ActiveModel {
            partner_id: Set(partner.into()),
            method: Set(method.into()),
            request_id: Set(id.into()),
            request_hash: Set(format!("{partner}{method}{id}").into_bytes()),
            response: Set(Vec::new()),
            created_at: Set(0),
            subject: Set(None),
            erased_at: Set(None),
        }
    }

    /// Lookups made at once share queries, each caller gets the row of its own key (or none)
    /// whatever partner, method and id the others asked for, and callers that go away while
    /// their lookup runs leave the rest answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_share_queries_and_each_gets_its_own_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = table(&dir).await;
        let keys: Vec<(String, String, String)> = (0..800)
            .map(|i| {
                (
                    ["brand", "mall"][i % 2].to_owned(),
                    ["/a.A/Buy", "/a.A/Claim"][i / 2 % 2].to_owned(),
                    format!("r-{}", i / 4),
                )
            })
            .collect();
        // And every key asked for twice at once (racing retries of one call).
        let keys: Vec<_> = keys.iter().chain(keys.iter()).cloned().collect();
        // Every other key is stored.
        idempotency_key::Entity::insert_many(
            keys.iter()
                .take(800)
                .step_by(2)
                .map(|(p, m, id)| row(p, m, id))
                .collect::<Vec<_>>(),
        )
        .exec(&db)
        .await
        .unwrap();
        let replays = Replays::new(db);
        let lookups = keys.iter().enumerate().map(|(i, (p, m, id))| {
            let replays = replays.clone();
            let (p, m, id) = (p.clone(), m.clone(), id.clone());
            tokio::spawn(async move {
                let key = CallKey {
                    partner_id: &p,
                    method: &m,
                    request_id: &id,
                    store: None,
                };
                let found = replays.find(key).await.unwrap();
                (i, found.map(|r| r.request_hash))
            })
        });
        let handles: Vec<_> = lookups.collect();
        // Some callers go away mid-lookup.
        for handle in handles.iter().skip(3).step_by(50) {
            handle.abort();
        }
        let mut answered = 0;
        for handle in handles {
            let Ok((i, hash)) = handle.await else {
                continue;
            };
            answered += 1;
            let (p, m, id) = &keys[i];
            let expected = (i % 2 == 0).then(|| format!("{p}{m}{id}").into_bytes());
            assert_eq!(hash, expected, "lookup {i} got its own key's answer");
        }
        assert!(
            answered >= 1568,
            "only the aborted callers went unanswered: {answered}"
        );
        let queries = replays.queries.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            queries < answered,
            "{queries} queries for {answered} lookups: they were not shared"
        );
    }
}
