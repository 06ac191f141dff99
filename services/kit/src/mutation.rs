//! The pipeline every mutation of every service runs through: the calling partner and the
//! RPC come from the [`Call`] (never typed by hand), the effect runs at most once per
//! `request_id` with its reply stored — sealed at rest when the service says so — in the same
//! transaction, and after a mutation that appended to the service's feed, the service's hook
//! runs and the feed's watchers are woken before the caller hears back.

use std::{future::Future, marker::PhantomData, pin::Pin, sync::Arc};

use prost::Message;
use sea_orm::{DatabaseConnection, DatabaseTransaction};

use crate::{
    call::Call,
    error::{KitError, ServiceError},
    feed::Feed,
    group::Writer,
    idempotency::{self, AtRest, CallKey, Plain, Replays},
    writes::Writes,
};

/// Work a service does after a mutation appended to its feed, before the caller hears back
/// (identity drops the consents the mutation changed from its in-memory index).
pub type BeforeReply = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A service's mutation pipeline, answering with the service's error type `E`; cheap to clone.
pub struct Mutations<E> {
    writer: Writer,
    /// Where committed replies are read back (a replay, a refusal's check for one): the read
    /// pool when set ([`Self::reading`]), else the writer's database.
    replays: Replays,
    at_rest: Arc<dyn AtRest>,
    feed: Option<Feed>,
    before_reply: Option<BeforeReply>,
    error: PhantomData<fn() -> E>,
}

impl<E> Clone for Mutations<E> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            replays: self.replays.clone(),
            at_rest: self.at_rest.clone(),
            feed: self.feed.clone(),
            before_reply: self.before_reply.clone(),
            error: PhantomData,
        }
    }
}

impl<E: From<KitError> + ServiceError> Mutations<E> {
    /// Mutations on `db` whose replies are stored as they are.
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            replays: Replays::new(db.clone()),
            writer: Writer::direct(db),
            at_rest: Arc::new(Plain),
            feed: None,
            before_reply: None,
            error: PhantomData,
        }
    }

    /// Reads committed replies from `read` (a read pool beside the writer: on SQLite the
    /// writer's one connection stays with the writes).
    pub fn reading(mut self, read: DatabaseConnection) -> Self {
        self.replays = Replays::new(read);
        self
    }

    /// The reply `request` got under `request_id` if it was answered before, read without a
    /// write: a handler that can refuse at once unless the call is a replay asks this first.
    pub async fn stored<Req, Resp>(
        &self,
        call: &Call,
        request_id: &str,
        request: &Req,
    ) -> Result<Option<Resp>, E>
    where
        Req: Message,
        Resp: Message + Default,
    {
        Ok(idempotency::stored(
            &self.replays,
            self.at_rest.as_ref(),
            call_key(call, request_id),
            request,
        )
        .await?)
    }

    /// Runs `handle` — a mutation's checks, then the mutation — as a retry must see it: a
    /// refusal the checks drew from the world as it is now (a consent since withdrawn, a
    /// benefit since paused, a member since erased at another partner, identity unreachable)
    /// gives way to the stored reply when the call repeats one that was answered — the client
    /// that lost the first reply learns what happened, not that it did not. A reply purged by an
    /// erasure answers NOT_FOUND / MEMBER_ERASED. Costs one read, on refusals only.
    pub async fn replayable<Req, Resp>(
        &self,
        call: &Call,
        request_id: &str,
        request: &Req,
        handle: impl Future<Output = Result<Resp, E>>,
    ) -> Result<Resp, E>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let refusal = match handle.await {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        if request_id.is_empty() {
            return Err(refusal);
        }
        match self.stored(call, request_id, request).await {
            Ok(Some(reply)) => Ok(reply),
            Err(purged) if purged.reason() == KitError::SubjectErased.reason() => Err(purged),
            // Never answered (or answered to another request, or the read failed): the refusal.
            _ => Err(refusal),
        }
    }

    /// Concurrent mutations share transactions and commits ([`crate::group`]): for a hot write
    /// path (enrolment, claims, orders). Each caller still hears back only after the commit
    /// that holds its write.
    pub fn grouped(mut self) -> Self {
        self.writer = Writer::grouped(self.writer.db().clone());
        self
    }

    /// [`Self::grouped`] with one shared transaction at a time on PostgreSQL too
    /// ([`Writer::single_lane`]).
    pub fn grouped_single_lane(mut self) -> Self {
        self.writer = Writer::single_lane(self.writer.db().clone());
        self
    }

    /// This pipeline with every mutation in the shared-transaction lane `key` picks
    /// ([`Writer::keyed`]): for mutations that lock rows about `key` (a member's), so that two
    /// batches never hold them in opposite orders.
    pub fn keyed(&self, key: &str) -> Self {
        Self {
            writer: self.writer.keyed(key),
            ..self.clone()
        }
    }

    /// (commits, mutations committed) by a grouped pipeline; `None` otherwise.
    pub fn batching(&self) -> Option<(usize, usize)> {
        self.writer.batching()
    }

    /// Stores requests' digests and replies through `at_rest` (a service whose replies carry
    /// personal data seals them).
    pub fn sealed(mut self, at_rest: Arc<dyn AtRest>) -> Self {
        self.at_rest = at_rest;
        self
    }

    /// Wakes `feed`'s watchers after each mutation that appended to it, running `before_reply`
    /// first.
    pub fn publishing(mut self, feed: Feed, before_reply: Option<BeforeReply>) -> Self {
        self.feed = Some(feed);
        self.before_reply = before_reply;
        self
    }

    /// Runs `effect` once per (calling partner, RPC, `request_id`); a replay gets the stored
    /// reply.
    pub async fn run<Req, Resp, F>(
        &self,
        call: &Call,
        request_id: &str,
        request: &Req,
        effect: F,
    ) -> Result<Resp, E>
    where
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&DatabaseTransaction) -> Result<Resp, E> + Clone,
    {
        self.run_about(call, request_id, request, async |txn| {
            effect(txn).await.map(|r| (r, None))
        })
        .await
    }

    /// [`Self::run`] for an effect that stages writes as it goes ([`Writes`]; an event for the
    /// feed, [`Feed::append_staged`]): whatever it defers is sent just before its transaction
    /// — in group commit, its batch's — commits, every event of the batch numbered in one move
    /// of the feed's counter instead of one per event.
    pub async fn run_writing<Req, Resp, F>(
        &self,
        call: &Call,
        request_id: &str,
        request: &Req,
        effect: F,
    ) -> Result<Resp, E>
    where
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&DatabaseTransaction, &mut Writes) -> Result<Resp, E> + Clone,
    {
        self.run_writing_tagged(call, (request_id, request), None, effect)
            .await
    }

    /// [`Self::run_writing`] for a mutation about one person known before it runs
    /// (`subject`, the person's id): the stored reply is tagged with it, so that erasing them
    /// purges it ([`idempotency::forget_subjects`]) and a replay no longer returns it.
    pub async fn run_writing_about<Req, Resp, F>(
        &self,
        call: &Call,
        request_id: &str,
        request: &Req,
        subject: &str,
        effect: F,
    ) -> Result<Resp, E>
    where
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&DatabaseTransaction, &mut Writes) -> Result<Resp, E> + Clone,
    {
        self.run_writing_tagged(call, (request_id, request), Some(subject), effect)
            .await
    }

    async fn run_writing_tagged<Req, Resp, F>(
        &self,
        call: &Call,
        (request_id, request): (&str, &Req),
        subject: Option<&str>,
        effect: F,
    ) -> Result<Resp, E>
    where
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&DatabaseTransaction, &mut Writes) -> Result<Resp, E> + Clone,
    {
        self.run_staged(call, request_id, request, async |txn| {
            let mut writes = Writes::new();
            let reply = effect(txn, &mut writes).await?;
            Ok((reply, subject.map(str::to_owned), writes))
        })
        .await
    }

    /// What stored replies are sealed with ([`Self::sealed`]): an erasure purging them
    /// ([`idempotency::forget_subjects`]) digests its subjects the same way.
    pub fn at_rest(&self) -> Arc<dyn AtRest> {
        self.at_rest.clone()
    }

    /// [`Self::run`] for a mutation about one person: `effect` also returns the person's id,
    /// which tags the stored reply so that erasing them purges it
    /// ([`idempotency::forget_subjects`]).
    pub async fn run_about<Req, Resp, F>(
        &self,
        call: &Call,
        request_id: &str,
        request: &Req,
        effect: F,
    ) -> Result<Resp, E>
    where
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&DatabaseTransaction) -> Result<(Resp, Option<String>), E> + Clone,
    {
        self.run_staged(call, request_id, request, async |txn| {
            effect(txn).await.map(|(r, s)| (r, s, Writes::new()))
        })
        .await
    }

    /// [`Self::run_about`] for a mutation that stages its last writes ([`Writes`]): they are
    /// sent with the stored reply's row in one trip to the database (SQLite), after
    /// `effect` has done its reads. Nothing `effect` reads may depend on what it staged.
    pub async fn run_staged<Req, Resp, F>(
        &self,
        call: &Call,
        request_id: &str,
        request: &Req,
        effect: F,
    ) -> Result<Resp, E>
    where
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&DatabaseTransaction) -> Result<(Resp, Option<String>, Writes), E> + Clone,
    {
        let key = call_key(call, request_id);
        let appended = self.feed.as_ref().map(Feed::appended);
        let reply = idempotency::once_about(
            &self.writer,
            &self.replays,
            self.at_rest.as_ref(),
            key,
            request,
            effect,
        )
        .await?;
        if let Some(feed) = &self.feed
            && Some(feed.appended()) != appended
        {
            if let Some(hook) = &self.before_reply {
                hook().await;
            }
            feed.published();
        }
        Ok(reply)
    }
}

/// What a call's reply is stored under: the calling partner, the RPC and its `request_id`.
fn call_key<'a>(call: &'a Call, request_id: &'a str) -> CallKey<'a> {
    CallKey {
        partner_id: &call.who.partner_id,
        method: call.method,
        request_id,
        store: call.who.store.as_deref(),
    }
}
