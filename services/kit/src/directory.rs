//! What every service but identity needs of identity, built once: the member-id resolver, the
//! consent client, and the follower of identity's mesh feed that keeps both (and the token
//! verifier) fresh.
//!
//! - [`Directory::mesh_ids`] turns a partner's scoped ids into mesh ids. Lookups arriving
//!   within [`BATCH_WINDOW`] of each other share one `ResolveMeshIds` call (per partner);
//!   answers are kept in a bounded cache (moka) that merge and erasure events empty. Services
//!   store mesh ids only; [`Directory::scoped_ids`] translates back at their edge.
//! - [`Directory::decide`] asks identity's `CheckConsents` every time: for decisions that move
//!   value or personal data across partners. [`Directory::decide_cached`] answers from a
//!   cache where a bounded staleness is acceptable (views that may lag a little): an answer is
//!   kept at most [`DECISION_TTL`], and consent, erasure and merge events drop it at once.
//!   Either way, when identity does not answer within the deadline the answer is
//!   UNAVAILABLE / IDENTITY_UNAVAILABLE — it fails closed, and the caller writes nothing.
//! - [`Directory::follow`] consumes `WatchMeshEvents` with the kit's [`Consumer`], its cursor
//!   in the service's own database: revoked credentials and suspended partners reach the
//!   verifier within the feed's latency (well under a second), not at the next key refresh.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lianyu_proto::identity::internal::v1::{
    self as pb, MeshEventKind, directory_service_client::DirectoryServiceClient,
};
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    KitError,
    auth::TokenVerifier,
    feed::Consumer,
    ids::{MeshMemberId, ScopedMemberId},
    peer::{Idempotency, Peer},
};

/// How long a lookup waits for others to share its call.
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Ids per call (identity's limit).
const MAX_BATCH: usize = 1000;
/// Translations and decisions kept.
const CACHE_ENTRIES: u64 = 100_000;
/// Members [`Directory::forget`] keeps track of before it empties the caches and starts again.
const HELD_MEMBERS: usize = 4 * CACHE_ENTRIES as usize;
/// The longest a store's state is used before identity is asked again.
pub const STORE_TTL: Duration = Duration::from_secs(30);
/// The longest a store's state stands in while identity does not answer.
pub const STORE_STALE: Duration = Duration::from_secs(600);
/// The longest a cached consent decision is used.
pub const DECISION_TTL: Duration = Duration::from_secs(30);

/// What a consuming service does in its own database when mesh events arrive (cancel holds
/// on a withdrawal, close a wallet on an erasure), inside the transaction that stores the
/// feed's cursor with them: the events already received when the first is come together, in
/// sequence order (at most 256), so that a burst of enrolments costs a few statements, not a
/// few per event; they are acted on exactly once, or not at all and delivered again whole.
pub type MeshHook = Arc<
    dyn for<'a> Fn(
            &'a sea_orm::DatabaseTransaction,
            Vec<pb::WatchMeshEventsResponse>,
        ) -> crate::feed::Handled<'a>
        + Send
        + Sync,
>;

/// The erasures and withdrawals awaiting their second pass ([`Directory::follow`]). A later
/// enrolment of the same member at the same partner calls an erasure's pass off; a later
/// grant, through the same partner to the same grantee, of every purpose a withdrawal took
/// back calls the withdrawal's off: what the member does after returning is theirs to keep,
/// and must not be erased or withdrawn by a pass over what came before. A grant of other
/// purposes, or to another grantee, calls nothing off.
#[derive(Clone, Default)]
struct SecondPasses(Arc<Mutex<HashMap<Pass, Arc<AtomicBool>>>>);

/// What a second pass covers, as a mesh event names it: the member, the partner, and for a
/// withdrawal the grantee and the purposes taken back (sorted; both empty for an erasure).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pass {
    member: String,
    partner: String,
    grantee: String,
    purposes: Vec<i32>,
}

impl Pass {
    fn of(event: &pb::WatchMeshEventsResponse) -> Self {
        let consent = matches!(
            event.kind(),
            MeshEventKind::ConsentWithdrawn | MeshEventKind::ConsentGranted
        );
        let mut purposes = if consent {
            event.purposes.clone()
        } else {
            Vec::new()
        };
        purposes.sort_unstable();
        purposes.dedup();
        Self {
            member: event.mesh_member.clone(),
            partner: event.partner.clone(),
            grantee: if consent {
                event.grantee.clone()
            } else {
                String::new()
            },
            purposes,
        }
    }
}

/// Calls off, and forgets, every pending pass `covered` says a later event covers.
fn call_off(pending: &mut HashMap<Pass, Arc<AtomicBool>>, covered: impl Fn(&Pass) -> bool) {
    pending.retain(|pass, flag| {
        let off = covered(pass);
        if off {
            flag.store(true, Ordering::Relaxed);
        }
        !off
    });
}

impl SecondPasses {
    /// Takes note of `event` in feed order: an erasure or withdrawal gets a second pass (its
    /// flag, set when it is called off); an enrolment or grant calls off the pending passes it
    /// covers.
    fn note(&self, event: &pb::WatchMeshEventsResponse) -> Option<Arc<AtomicBool>> {
        let key = Pass::of(event);
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match event.kind() {
            MeshEventKind::MemberErased | MeshEventKind::ConsentWithdrawn => {
                let pass = Arc::new(AtomicBool::new(false));
                if let Some(earlier) = pending.insert(key, pass.clone()) {
                    // One pass, the latest, covers the same erasure or withdrawal.
                    earlier.store(true, Ordering::Relaxed);
                }
                Some(pass)
            }
            MeshEventKind::MemberEnrolled => {
                call_off(&mut pending, |pass| *pass == key);
                None
            }
            MeshEventKind::ConsentGranted => {
                call_off(&mut pending, |pass| {
                    !pass.grantee.is_empty()
                        && (&pass.member, &pass.partner, &pass.grantee)
                            == (&key.member, &key.partner, &key.grantee)
                        && pass.purposes.iter().all(|p| key.purposes.contains(p))
                });
                None
            }
            _ => None,
        }
    }

    /// `pass` ran or was called off: forgotten, unless a later one took its place.
    fn done(&self, event: &pb::WatchMeshEventsResponse, pass: &Arc<AtomicBool>) {
        let key = Pass::of(event);
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pending.get(&key).is_some_and(|p| Arc::ptr_eq(p, pass)) {
            pending.remove(&key);
        }
    }
}

/// What a mesh event changes in which tokens `verifier` refuses: a revoked credential's, a
/// suspended partner's, a closed store's (and back, on reinstatement or reopening). Identity
/// applies its own events with it too, in commit order.
pub fn refuse_as_told(event: &pb::WatchMeshEventsResponse, verifier: &TokenVerifier) {
    let partner = event.partner.strip_prefix("partners/").unwrap_or_default();
    match event.kind() {
        MeshEventKind::CredentialRevoked => verifier.revoke(&event.credential),
        MeshEventKind::PartnerSuspended => verifier.set_partner_suspended(partner, true),
        MeshEventKind::PartnerReinstated => verifier.set_partner_suspended(partner, false),
        MeshEventKind::StoreClosed => verifier.set_store_closed(&event.store, true),
        MeshEventKind::StoreReopened => verifier.set_store_closed(&event.store, false),
        _ => {}
    }
}

/// Replaces `verifier`'s closed stores with identity's list. A single closing or reopening
/// applied while the list was read is newer than it: the list is then read again (the feed
/// that follows brings the rest).
async fn closed_stores(peer: &Peer, verifier: &TokenVerifier) -> Result<(), tonic::Status> {
    for _ in 0..3 {
        let seen = verifier.changes();
        let asked = peer
            .call(
                Idempotency::Idempotent,
                pb::ListClosedStoresRequest {},
                |ch, r| async move { DirectoryServiceClient::new(ch).list_closed_stores(r).await },
            )
            .await;
        let list = match asked {
            Ok(reply) => reply.stores,
            // An identity older than this service (a rolling upgrade, services first): follow
            // the feed without the list rather than not at all.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::warn!("identity does not list closed stores yet; following without");
                return Ok(());
            }
            Err(status) => return Err(status),
        };
        if verifier.replace_closed_stores_as_of(seen, list) {
            break;
        }
    }
    Ok(())
}

/// The second pass of [`Directory::follow`]: after `late`, unless called off, `event` (an
/// erasure or a withdrawal) is handed to `hook` again in a transaction of its own. A failure
/// is logged, not retried: the first pass stands.
async fn act_again(
    (db, hook): (DatabaseConnection, MeshHook),
    event: pb::WatchMeshEventsResponse,
    (passes, called_off, late): (SecondPasses, Arc<AtomicBool>, Duration),
    stopping: CancellationToken,
) {
    use sea_orm::TransactionTrait;
    tokio::select! {
        () = tokio::time::sleep(late) => {}
        () = stopping.cancelled() => return,
    }
    passes.done(&event, &called_off);
    if called_off.load(Ordering::Relaxed) {
        return;
    }
    let outcome = async {
        let txn = db
            .begin()
            .await
            .map_err(crate::storage::StorageError::from)?;
        hook(&txn, vec![event]).await?;
        txn.commit()
            .await
            .map_err(crate::storage::StorageError::from)?;
        Ok::<_, KitError>(())
    }
    .await;
    if let Err(e) = outcome {
        tracing::error!(error = %e, "the second pass over erasures and withdrawals failed");
    }
}

/// One consent question: may `grantee` use the member, known through `grantor`, for `purpose`?
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Question {
    pub member: MeshMemberId,
    pub grantor: String,
    pub grantee: String,
    /// A `lianyu.common.v1.ConsentPurpose` number.
    pub purpose: i32,
}

/// Identity's answer to a [`Question`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `consentReceipts/{id}` that allows it.
    pub receipt: String,
}

struct Lookup {
    partner: String,
    scoped: ScopedMemberId,
    reply: oneshot::Sender<Result<Option<MeshMemberId>, KitError>>,
}

/// The service's view of identity.
#[derive(Clone)]
pub struct Directory {
    peer: Peer,
    mesh: moka::sync::Cache<(String, ScopedMemberId), MeshMemberId>,
    scoped: moka::sync::Cache<(String, MeshMemberId), ScopedMemberId>,
    decisions: moka::sync::Cache<Question, Decision>,
    /// Every member with an entry in one of the caches (and maybe some whose entries have
    /// gone): see [`Directory::forget`].
    held: Arc<std::sync::Mutex<HashSet<MeshMemberId>>>,
    lookups: mpsc::Sender<Lookup>,
    /// Stores' states as identity last gave them, and when ([`Directory::open_store`]).
    stores: Arc<Mutex<HashMap<String, (pb::StoreState, std::time::Instant)>>>,
    /// How long a store's state is used before identity is asked again: [`STORE_TTL`].
    store_ttl: Duration,
    /// Calls made to identity's `ResolveMeshIds`, for tests and metrics.
    resolve_calls: Arc<std::sync::atomic::AtomicU64>,
    /// Feed events that had something cached to drop, for tests and metrics.
    forgotten: Arc<std::sync::atomic::AtomicU64>,
}

fn unavailable(status: &tonic::Status) -> KitError {
    KitError::Unavailable(
        "IDENTITY_UNAVAILABLE",
        format!(
            "identity did not answer ({:?}); nothing was done, retry",
            status.code()
        ),
    )
}

/// The service's directory, or UNAVAILABLE / IDENTITY_UNAVAILABLE when identity is not
/// configured: every call that needs identity fails closed.
pub fn required(directory: Option<&Directory>) -> Result<&Directory, KitError> {
    directory.ok_or_else(|| {
        KitError::Unavailable(
            "IDENTITY_UNAVAILABLE",
            "identity is not configured for this service".into(),
        )
    })
}

impl Directory {
    /// A directory calling identity through `peer`; its batching task ends with `stopping`.
    pub fn new(peer: Peer, stopping: CancellationToken) -> Self {
        let (lookups, queue) = mpsc::channel(10_000);
        let directory = Self {
            peer,
            mesh: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .support_invalidation_closures()
                .build(),
            scoped: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .support_invalidation_closures()
                .build(),
            decisions: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(DECISION_TTL)
                .support_invalidation_closures()
                .build(),
            held: Arc::default(),
            stores: Arc::default(),
            store_ttl: STORE_TTL,
            lookups,
            resolve_calls: Arc::default(),
            forgotten: Arc::default(),
        };
        tokio::spawn(directory.clone().batch(queue, stopping));
        directory
    }

    /// Members whose cached entries a feed event dropped so far (an event about a member with
    /// nothing cached is not counted: it drops nothing).
    pub fn forgotten(&self) -> u64 {
        self.forgotten.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls made to `ResolveMeshIds` so far.
    pub fn resolve_calls(&self) -> u64 {
        self.resolve_calls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The mesh id behind `partner`'s scoped id; `None` when the partner holds no such member.
    pub async fn mesh_id(
        &self,
        partner: &str,
        scoped: &ScopedMemberId,
    ) -> Result<Option<MeshMemberId>, KitError> {
        let key = (partner.to_owned(), scoped.clone());
        if let Some(mesh) = self.mesh.get(&key) {
            return Ok(Some(mesh));
        }
        let (reply, answer) = oneshot::channel();
        self.lookups
            .send(Lookup {
                partner: partner.to_owned(),
                scoped: scoped.clone(),
                reply,
            })
            .await
            .map_err(|_| unavailable(&tonic::Status::cancelled("shutting down")))?;
        let wait = crate::peer::current_deadline().map_or(crate::peer::PEER_DEADLINE, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        });
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(result)) => result,
            _ => Err(unavailable(&tonic::Status::deadline_exceeded("no answer"))),
        }
    }

    /// The mesh ids behind several of `partner`'s scoped ids, in order.
    pub async fn mesh_ids(
        &self,
        partner: &str,
        scoped: &[ScopedMemberId],
    ) -> Result<Vec<Option<MeshMemberId>>, KitError> {
        futures::future::try_join_all(scoped.iter().map(|s| self.mesh_id(partner, s))).await
    }

    /// `partner`'s scoped ids for `members`, in order: `None` for a member the partner may not
    /// know (never enrolled with it, or erased there).
    pub async fn scoped_ids(
        &self,
        partner: &str,
        members: &[MeshMemberId],
    ) -> Result<Vec<Option<ScopedMemberId>>, KitError> {
        let mut out: Vec<Option<ScopedMemberId>> = members
            .iter()
            .map(|m| self.scoped.get(&(partner.to_owned(), m.clone())))
            .collect();
        let missing: Vec<usize> = (0..members.len()).filter(|i| out[*i].is_none()).collect();
        for chunk in missing.chunks(MAX_BATCH) {
            let request = pb::ScopeMemberIdsRequest {
                partner: format!("partners/{partner}"),
                mesh_members: chunk
                    .iter()
                    .map(|i| format!("meshMembers/{}", members[*i]))
                    .collect(),
            };
            let reply = self
                .peer
                .call(Idempotency::Idempotent, request, |ch, r| async move {
                    DirectoryServiceClient::new(ch).scope_member_ids(r).await
                })
                .await
                .map_err(|s| unavailable(&s))?;
            for (i, ids) in chunk.iter().zip(reply.members) {
                if let Some(id) = ids.member.strip_prefix("members/") {
                    let id = ScopedMemberId::new(id);
                    self.cache(&members[*i], || {
                        self.scoped
                            .insert((partner.to_owned(), members[*i].clone()), id.clone());
                    });
                    out[*i] = Some(id);
                }
            }
        }
        Ok(out)
    }

    /// The same directory, using a store's state for `ttl` instead of [`STORE_TTL`] (zero:
    /// identity is asked every time it answers).
    pub fn with_store_ttl(self, ttl: Duration) -> Self {
        Self {
            store_ttl: ttl,
            ..self
        }
    }

    /// Whether `store` ("partners/{partner}/stores/{store}") is registered and open, as a
    /// call that records something at it needs: NOT_FOUND / STORE_NOT_FOUND when identity has
    /// no such store, FAILED_PRECONDITION / STORE_CLOSED when its partner closed it. An open
    /// or closed state is kept [`STORE_TTL`] (a store closed or reopened is seen within it
    /// everywhere); an unknown one is asked again every time, so a store registered a moment
    /// ago is used at once. When identity does not answer, a state known in the last
    /// [`STORE_STALE`] stands in (a till keeps selling through a short outage); without one,
    /// UNAVAILABLE / IDENTITY_UNAVAILABLE.
    pub async fn open_store(&self, store: &str) -> Result<(), KitError> {
        if crate::names::parse::<2>(store, "partners/{partner}/stores/{store}").is_err() {
            return Err(KitError::NotFound("STORE_NOT_FOUND"));
        }
        let known = self.lock_stores().get(store).copied();
        let state = match known {
            Some((state, at)) if at.elapsed() < self.store_ttl => state,
            _ => {
                let request = pb::CheckStoresRequest {
                    stores: vec![store.to_owned()],
                };
                let asked = self
                    .peer
                    .call(Idempotency::Idempotent, request, |ch, r| async move {
                        DirectoryServiceClient::new(ch).check_stores(r).await
                    })
                    .await;
                match (asked, known) {
                    (Ok(reply), _) => {
                        let state = reply
                            .stores
                            .first()
                            .map_or(pb::StoreState::Unknown, |s| s.state());
                        let mut stores = self.lock_stores();
                        if state == pb::StoreState::Unknown {
                            stores.remove(store);
                        } else {
                            if stores.len() >= CACHE_ENTRIES as usize {
                                stores.clear();
                            }
                            stores.insert(store.to_owned(), (state, std::time::Instant::now()));
                        }
                        state
                    }
                    (Err(_), Some((state, at))) if at.elapsed() < STORE_STALE => state,
                    (Err(status), _) => return Err(unavailable(&status)),
                }
            }
        };
        match state {
            pb::StoreState::Open => Ok(()),
            pb::StoreState::Closed => Err(KitError::Precondition(
                "STORE_CLOSED",
                "the store is closed: its partner reopens it with UpdateStore".into(),
            )),
            _ => Err(KitError::NotFound("STORE_NOT_FOUND")),
        }
    }

    fn lock_stores(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (pb::StoreState, std::time::Instant)>> {
        self.stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Identity's decisions, asked now (for what moves value or data across partners), on
    /// behalf of `acting` partner. Fails closed: UNAVAILABLE / IDENTITY_UNAVAILABLE.
    pub async fn decide(
        &self,
        acting: &str,
        questions: &[Question],
    ) -> Result<Vec<Decision>, KitError> {
        let mut out = Vec::with_capacity(questions.len());
        for chunk in questions.chunks(MAX_BATCH) {
            let request = pb::CheckConsentsRequest {
                acting_partner: format!("partners/{acting}"),
                checks: chunk
                    .iter()
                    .map(|q| pb::ConsentQuestion {
                        mesh_member: format!("meshMembers/{}", q.member),
                        grantor: format!("partners/{}", q.grantor),
                        grantee: format!("partners/{}", q.grantee),
                        purpose: q.purpose,
                    })
                    .collect(),
            };
            let reply = self
                .peer
                .call(Idempotency::Idempotent, request, |ch, r| async move {
                    DirectoryServiceClient::new(ch).check_consents(r).await
                })
                .await
                .map_err(|s| unavailable(&s))?;
            for (q, d) in chunk.iter().zip(reply.decisions) {
                let decision = Decision {
                    allowed: d.allowed,
                    receipt: d.consent_receipt,
                };
                self.cache(&q.member, || {
                    self.decisions.insert(q.clone(), decision.clone());
                });
                out.push(decision);
            }
        }
        Ok(out)
    }

    /// Decisions from the cache where it has them (at most [`DECISION_TTL`] old, and dropped
    /// by the feed's consent events), identity's for the rest.
    pub async fn decide_cached(
        &self,
        acting: &str,
        questions: &[Question],
    ) -> Result<Vec<Decision>, KitError> {
        let cached: Vec<Option<Decision>> =
            questions.iter().map(|q| self.decisions.get(q)).collect();
        let missing: Vec<Question> = questions
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(q, _)| q.clone())
            .collect();
        let mut asked = if missing.is_empty() {
            Vec::new()
        } else {
            self.decide(acting, &missing).await?
        }
        .into_iter();
        Ok(cached
            .into_iter()
            .map(|c| c.unwrap_or_else(|| asked.next().unwrap_or_default()))
            .collect())
    }

    /// Runs `insert`, which caches something about `member`, with `member` counted as held.
    /// When the count is full the caches are emptied first and counting starts again, so no
    /// entry is ever cached for a member missing from the count.
    fn cache(&self, member: &MeshMemberId, insert: impl FnOnce()) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() >= HELD_MEMBERS && !held.contains(member) {
            held.clear();
            self.mesh.invalidate_all();
            self.scoped.invalidate_all();
            self.decisions.invalidate_all();
        }
        held.insert(member.clone());
        insert();
    }

    /// Drops everything cached about `member`. Nothing to do for a member never cached (a
    /// new enrolment, most events): an invalidation predicate is scanned over its whole
    /// cache, and registering three of them for every event of a busy feed cost the services
    /// following it about 6 % of their CPU (`lianyu bench enroll`, three followers).
    pub fn forget(&self, member: &MeshMemberId) {
        if !self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(member)
        {
            return;
        }
        self.forgotten
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let m = member.clone();
        let _ = self.mesh.invalidate_entries_if(move |_, v| *v == m);
        let m = member.clone();
        let _ = self.scoped.invalidate_entries_if(move |k, _| k.1 == m);
        let m = member.clone();
        let _ = self
            .decisions
            .invalidate_entries_if(move |k, _| k.member == m);
    }

    /// Applies one mesh event to the caches and `verifier`.
    pub fn apply(&self, event: &pb::WatchMeshEventsResponse, verifier: &TokenVerifier) {
        let member = |name: &str| name.strip_prefix("meshMembers/").map(MeshMemberId::new);
        match event.kind() {
            MeshEventKind::MembersMerged
            | MeshEventKind::MemberErased
            | MeshEventKind::ConsentWithdrawn
            | MeshEventKind::ConsentGranted
            | MeshEventKind::MemberEnrolled => {
                for m in [&event.mesh_member, &event.into_mesh_member]
                    .into_iter()
                    .filter_map(|n| member(n))
                {
                    self.forget(&m);
                }
            }
            MeshEventKind::StoreClosed | MeshEventKind::StoreReopened => {
                self.lock_stores().remove(&event.store);
            }
            _ => {}
        }
        refuse_as_told(event, verifier);
    }

    /// Follows identity's mesh feed until `stopping`, its cursor stored in `db` (the consuming
    /// service's own database) with each applied event; reconnects with backoff.
    ///
    /// An erasure or a withdrawal is acted on again `late_writes` after it was (the longest a
    /// call in flight may still commit, `LIANYU_REQUEST_TIMEOUT` and a margin): a call that
    /// checked the member or the consent before identity's change and commits after the hook
    /// ran — an order, a grant, a hold — is caught by the second pass, so nothing it wrote
    /// outlives the erasure or the withdrawal. Every hook's reaction is idempotent.
    pub async fn follow(
        self,
        db: DatabaseConnection,
        consumer: String,
        verifier: Arc<TokenVerifier>,
        stopping: CancellationToken,
        (hook, late_writes): (Option<MeshHook>, Duration),
    ) {
        let peer = self.peer.clone();
        let again = (db.clone(), stopping.clone());
        let second_passes = SecondPasses::default();
        let lag_name = consumer.clone();
        let consumer = Consumer::new(db, consumer);
        let result = consumer
            .run_batches(
                |cursor| {
                    let peer = peer.clone();
                    let verifier = verifier.clone();
                    async move {
                        // Stores closed before this (re)start: the feed from the cursor on
                        // brings only what changes after.
                        closed_stores(&peer, &verifier).await?;
                        let request = pb::WatchMeshEventsRequest {
                            after: Some(lianyu_proto::common::v1::FeedCursor { sequence: cursor }),
                        };
                        let stream = peer
                            .open_stream(request, |ch, r| async move {
                                DirectoryServiceClient::new(ch).watch_mesh_events(r).await
                            })
                            .await?;
                        Ok(futures::StreamExt::map(stream, |item| {
                            item.map(|e| (e.cursor.map_or(0, |c| c.sequence), e))
                        }))
                    }
                },
                |txn, events| {
                    for event in &events {
                        self.apply(event, &verifier);
                    }
                    if let Some(at) = events.iter().rev().find_map(|e| e.event_time.as_ref()) {
                        crate::feed::record_lag(
                            &lag_name,
                            at.seconds * 1000 + i64::from(at.nanos) / 1_000_000,
                        );
                    }
                    match &hook {
                        Some(hook) => {
                            for event in &events {
                                let Some(pass) = second_passes.note(event) else {
                                    continue;
                                };
                                let (db, stopping) = again.clone();
                                tokio::spawn(act_again(
                                    (db, hook.clone()),
                                    event.clone(),
                                    (second_passes.clone(), pass, late_writes),
                                    stopping,
                                ));
                            }
                            hook(txn, events)
                        }
                        None => Box::pin(async { Ok(()) }),
                    }
                },
                stopping,
            )
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the mesh feed's cursor cannot be stored; following stopped");
        }
    }

    /// Lookups that arrive within [`BATCH_WINDOW`] of the first go out together, one call per
    /// partner, each answered from it.
    async fn batch(self, mut queue: mpsc::Receiver<Lookup>, stopping: CancellationToken) {
        loop {
            let first = tokio::select! {
                next = queue.recv() => match next { Some(l) => l, None => return },
                () = stopping.cancelled() => return,
            };
            let mut batch = vec![first];
            let until = tokio::time::Instant::now() + BATCH_WINDOW;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, queue.recv()).await {
                    Ok(Some(lookup)) => batch.push(lookup),
                    _ => break,
                }
            }
            let mut by_partner: HashMap<String, Vec<Lookup>> = HashMap::new();
            for lookup in batch {
                by_partner
                    .entry(lookup.partner.clone())
                    .or_default()
                    .push(lookup);
            }
            for (partner, lookups) in by_partner {
                tokio::spawn(self.clone().resolve(partner, lookups));
            }
        }
    }

    async fn resolve(self, partner: String, lookups: Vec<Lookup>) {
        let mut ids: Vec<ScopedMemberId> = lookups.iter().map(|l| l.scoped.clone()).collect();
        ids.sort();
        ids.dedup();
        let request = pb::ResolveMeshIdsRequest {
            partner: format!("partners/{partner}"),
            members: ids.iter().map(|s| format!("members/{s}")).collect(),
        };
        self.resolve_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply = self
            .peer
            .call(Idempotency::Idempotent, request, |ch, r| async move {
                DirectoryServiceClient::new(ch).resolve_mesh_ids(r).await
            })
            .await;
        match reply {
            Ok(reply) => {
                let found: HashMap<ScopedMemberId, MeshMemberId> = ids
                    .into_iter()
                    .zip(reply.members)
                    .filter_map(|(scoped, m)| {
                        let mesh = m.mesh_member.strip_prefix("meshMembers/")?;
                        Some((scoped, MeshMemberId::new(mesh)))
                    })
                    .collect();
                for (scoped, mesh) in &found {
                    self.cache(mesh, || {
                        self.mesh
                            .insert((partner.clone(), scoped.clone()), mesh.clone());
                    });
                }
                for lookup in lookups {
                    let _ = lookup.reply.send(Ok(found.get(&lookup.scoped).cloned()));
                }
            }
            Err(status) => {
                for lookup in lookups {
                    let _ = lookup.reply.send(Err(unavailable(&status)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test")]

    use lianyu_proto::common::v1::ConsentPurpose;

    use super::*;

    fn event(kind: MeshEventKind, member: &str, partner: &str) -> pb::WatchMeshEventsResponse {
        let mut e = pb::WatchMeshEventsResponse {
            mesh_member: format!("meshMembers/{member}"),
            partner: format!("partners/{partner}"),
            ..Default::default()
        };
        e.set_kind(kind);
        e
    }

    /// An erasure's second pass is called off when the member comes back at that partner
    /// before it runs — and only then: not by another partner's enrolment, nor by another
    /// member's; a second erasure takes the first one's place.
    #[test]
    fn a_second_pass_is_called_off_by_the_members_return_at_that_partner_only() {
        let passes = SecondPasses::default();
        let erased = passes
            .note(&event(MeshEventKind::MemberErased, "m1", "mall"))
            .unwrap();
        assert!(
            passes
                .note(&event(MeshEventKind::MemberEnrolled, "m1", "brand"))
                .is_none()
        );
        passes.note(&event(MeshEventKind::MemberEnrolled, "m2", "mall"));
        assert!(
            !erased.load(Ordering::Relaxed),
            "someone else came, not her"
        );
        passes.note(&event(MeshEventKind::MemberEnrolled, "m1", "mall"));
        assert!(erased.load(Ordering::Relaxed), "she came back to the mall");

        let withdrawn = passes
            .note(&consent(
                MeshEventKind::ConsentWithdrawn,
                "m3",
                "brand",
                &[ConsentPurpose::MarketingContact],
            ))
            .unwrap();
        let again = passes
            .note(&consent(
                MeshEventKind::ConsentWithdrawn,
                "m3",
                "brand",
                &[ConsentPurpose::MarketingContact],
            ))
            .unwrap();
        assert!(
            withdrawn.load(Ordering::Relaxed),
            "the later pass covers it"
        );
        passes.done(
            &consent(
                MeshEventKind::ConsentWithdrawn,
                "m3",
                "brand",
                &[ConsentPurpose::MarketingContact],
            ),
            &withdrawn,
        );
        passes.note(&consent(
            MeshEventKind::ConsentGranted,
            "m3",
            "brand",
            &[ConsentPurpose::MarketingContact],
        ));
        assert!(again.load(Ordering::Relaxed), "granted again: called off");
        passes.done(
            &consent(
                MeshEventKind::ConsentWithdrawn,
                "m3",
                "brand",
                &[ConsentPurpose::MarketingContact],
            ),
            &again,
        );
        assert!(passes.0.lock().unwrap().is_empty(), "nothing left behind");
    }

    fn consent(
        kind: MeshEventKind,
        member: &str,
        grantee: &str,
        purposes: &[ConsentPurpose],
    ) -> pb::WatchMeshEventsResponse {
        pb::WatchMeshEventsResponse {
            grantee: format!("partners/{grantee}"),
            purposes: purposes.iter().map(|p| *p as i32).collect(),
            ..event(kind, member, "mall")
        }
    }

    /// A withdrawal's second pass is called off only by a grant, through the same partner to
    /// the same grantee, of every purpose it took back: not by a grant of other purposes, nor
    /// of some of them, nor to another grantee; and a grant never calls off an erasure.
    #[test]
    fn a_withdrawals_second_pass_is_called_off_only_by_a_grant_of_what_it_took_back() {
        use ConsentPurpose::{JointAnalytics, MarketingContact, ShareProfile};
        let passes = SecondPasses::default();
        let withdrawn = passes
            .note(&consent(
                MeshEventKind::ConsentWithdrawn,
                "m1",
                "brand",
                &[MarketingContact, ShareProfile],
            ))
            .unwrap();
        let erased = passes
            .note(&event(MeshEventKind::MemberErased, "m2", "mall"))
            .unwrap();
        for (grantee, purposes, member) in [
            ("brand", &[JointAnalytics][..], "m1"),
            ("brand", &[MarketingContact][..], "m1"),
            ("outsider", &[MarketingContact, ShareProfile][..], "m1"),
            ("brand", &[MarketingContact, ShareProfile][..], "m2"),
        ] {
            passes.note(&consent(
                MeshEventKind::ConsentGranted,
                member,
                grantee,
                purposes,
            ));
            assert!(
                !withdrawn.load(Ordering::Relaxed),
                "{grantee} {purposes:?} {member}"
            );
            assert!(
                !erased.load(Ordering::Relaxed),
                "a grant calls off no erasure"
            );
        }
        passes.note(&consent(
            MeshEventKind::ConsentGranted,
            "m1",
            "brand",
            &[ShareProfile, JointAnalytics, MarketingContact],
        ));
        assert!(
            withdrawn.load(Ordering::Relaxed),
            "everything taken back, granted again"
        );
        assert!(!erased.load(Ordering::Relaxed));
    }
}
