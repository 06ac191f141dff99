//! gRPC handlers: decode, call the domain and the store, encode; errors map to statuses once,
//! in [`unary`]. Every change viewers or the funnel should hear of is appended to the
//! service's event log in the transaction that makes it (see `viewers.rs`).

mod drops;
mod orders;
mod sessions;
mod showcase;
mod stats;
mod viewers;

use lianyu_kit::{
    Call, KitError, Mount,
    batched::Batched,
    directory::Directory,
    feed::{Feed, NewEvent},
    ids::{MeshMemberId, ScopedMemberId},
    names,
    storage::StorageError,
    time::timestamp,
    writes::Writes,
};
use lianyu_proto::{common::v1 as common, live::v1 as pb};
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::{
    domain::{FlashSale, LiveError, Product, Session, SessionState},
    store,
};

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    /// The writer, for what is not a keyed mutation (a viewer's join).
    db: DatabaseConnection,
    /// Streams end with UNAVAILABLE when the server stops.
    stopping: tokio_util::sync::CancellationToken,
    /// Reads outside a mutation.
    read: DatabaseConnection,
    mutations: lianyu_kit::mutation::Mutations<LiveError>,
    /// Orders: the hot path, group-committed.
    orders: lianyu_kit::mutation::Mutations<LiveError>,
    /// Identity: members' mesh ids and consent decisions; `None` when identity is not
    /// configured, and then every call that needs it fails closed.
    directory: Option<Directory>,
    /// Entitlements, which grants a drop's units; `None` when not configured (claims then
    /// answer UNAVAILABLE).
    entitlements: Option<lianyu_kit::peer::Peer>,
    /// The session event log, shared by every replica through the database.
    feed: Feed,
    /// Viewers on this replica, fed from the log.
    hub: viewers::Hub,
    /// What viewers' snapshots are read from.
    snapshots: std::sync::Arc<viewers::Snapshots>,
    /// Flash sales this replica has seen sell out: orders for them are answered SOLD_OUT
    /// without asking identity or writing (a replay still gets its order back). A cancel
    /// here reopens the sale; another replica's cancel is found by the next write after
    /// [`orders::SOLD_OUT_RECHECK`].
    sold_out: orders::SoldOut,
    /// Coupon drops this replica has seen claimed out, the same way: claims of them are
    /// answered DROP_EXHAUSTED without a transaction on the writer (a replay still gets its
    /// wallet item). A unit put back here reopens the drop; another replica's is found
    /// after [`orders::SOLD_OUT_RECHECK`].
    exhausted: orders::SoldOut,
    /// Flash sales and their products by (session, sale), as read once
    /// ([`Api::sale_and_product`]).
    sales: moka::sync::Cache<(String, String), std::sync::Arc<(FlashSale, Product)>>,
    /// Reads of sessions on [`Self::read`], batched: in a burst every buyer's order reads its
    /// session, and those made while one read runs share the next ([`Api::read_session`]).
    sessions: Batched<String, Result<Option<Session>, StorageError>>,
    /// Reads of flash sales with their products, batched the same way, for the buyers that
    /// arrive before the first read has filled [`Self::sales`].
    sale_reads: Batched<(String, String), SaleRead>,
    /// Reads of a claim already made (drop, partner, request id), batched: every claim of a
    /// drop checks for one before it takes a unit or is refused, thousands in a drop's burst.
    claim_reads: Batched<((String, String), String), ClaimRead>,
}

pub(crate) fn register(
    ctx: &lianyu_kit::server::ServerContext,
    mount: &mut Mount,
    db: DatabaseConnection,
    read: DatabaseConnection,
    directory: Option<Directory>,
) -> Option<lianyu_kit::directory::MeshHook> {
    let feed = Feed::new(read.clone(), ctx.stopping.clone())
        .listening(&ctx.config.database_url(crate::NAME), crate::NAME);
    let api = Api {
        // Events are staged and numbered at commit (`tell_viewers`, `tell_hosts`): the feed's
        // counter is the last lock a transaction here takes, held only while it commits. Orders
        // run in one lane: a batch takes the stock rows of the sales it sells from, and two
        // batches taking two sales' rows in opposite orders would deadlock.
        mutations: lianyu_kit::mutation::Mutations::new(db.clone())
            .reading(read.clone())
            .publishing(feed.clone(), None),
        orders: lianyu_kit::mutation::Mutations::new(db.clone())
            .grouped_single_lane()
            .reading(read.clone())
            .publishing(feed.clone(), None),
        hub: viewers::Hub::start(feed.clone(), db.clone(), read.clone(), ctx.stopping.clone()),
        snapshots: viewers::Snapshots::new(read.clone(), feed.clone()),
        sold_out: orders::SoldOut::default(),
        exhausted: orders::SoldOut::default(),
        sales: moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_idle(std::time::Duration::from_secs(600))
            .build(),
        sessions: Batched::new(SESSION_READS),
        sale_reads: Batched::new(SESSION_READS),
        claim_reads: Batched::new(SESSION_READS),
        feed,
        directory,
        entitlements: match ctx.peer(crate::NAME, "entitlements") {
            Ok(peer) => Some(peer),
            Err(e) => {
                tracing::warn!(error = %e, "no entitlements peer: coupon drop claims answer UNAVAILABLE");
                None
            }
        },
        read,
        db,
        stopping: ctx.stopping.clone(),
    };
    // How stored order replies are sealed: an erasure purges those about the person.
    let at_rest = api.orders.at_rest();
    lianyu_kit::mount!(
        mount,
        pb::session_service_server::SessionServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::showcase_service_server::ShowcaseServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::viewer_service_server::ViewerServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::order_service_server::OrderServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::stats_service_server::StatsServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        lianyu_proto::live::internal::v1::live_feed_service_server::LiveFeedServiceServer::new(api)
    );
    Some(std::sync::Arc::new(move |txn, events| {
        let at_rest = at_rest.clone();
        Box::pin(async move {
            for event in &events {
                on_mesh_event(txn, event, at_rest.as_ref()).await?;
            }
            Ok(())
        })
    }))
}

/// Identity's word on a member, acted on in the transaction that stores the feed's cursor: an
/// erasure at a partner removes the member from the orders and viewers that partner brought,
/// so co-hosts see pseudonyms from then on. A withdrawn consent needs nothing here: buyers are
/// named only after asking identity at read time.
async fn on_mesh_event(
    txn: &sea_orm::DatabaseTransaction,
    event: &lianyu_proto::identity::internal::v1::WatchMeshEventsResponse,
    at_rest: &dyn lianyu_kit::idempotency::AtRest,
) -> Result<(), KitError> {
    use lianyu_proto::identity::internal::v1::MeshEventKind;
    let (Some(member), Some(partner)) = (
        event.mesh_member.strip_prefix("meshMembers/"),
        event.partner.strip_prefix("partners/"),
    ) else {
        return Ok(());
    };
    if event.kind() == MeshEventKind::MemberErased {
        let orders = store::forget_buyer(txn, member, partner).await?;
        let viewers = store::forget_viewer(txn, member, partner).await?;
        let events = forget_in_feed(txn, member, partner).await?;
        // The partner's stored order replies about the person: a replay of one returns
        // nothing of them from now on (NOT_FOUND), and places nothing again.
        let replies = lianyu_kit::idempotency::forget_subjects(
            txn,
            at_rest,
            Some(partner),
            &[member.to_owned()],
        )
        .await?;
        tracing::info!(
            orders,
            viewers,
            events,
            replies,
            "member erased: buyer forgotten"
        );
    }
    Ok(())
}

/// Rewrites the feed's events that name `member` as having come through `partner` — the
/// erasing partner's orders, joins and drop claims: an order names the pseudonym of its own
/// that `ListOrders` shows from then on ([`Session::erased_pseudonym`]), a join or a claim no
/// one. The whole feed for the mesh's services then names no one (comarketing reads only mesh
/// ids), and nothing a co-host reads links the erased member to anything — not to the
/// pseudonym their activity through the other co-host keeps. What the member did through
/// another partner is that partner's, and stays.
async fn forget_in_feed(
    txn: &sea_orm::DatabaseTransaction,
    member: &str,
    partner: &str,
) -> Result<u64, KitError> {
    let through = format!("partners/{partner}");
    let mut covered = Vec::new();
    for stored in Feed::naming(txn, member).await? {
        let Some(body) = stored.decode::<pb::WatchLiveEventsResponse>() else {
            continue;
        };
        let Some((session, _, came_through)) = body.event.as_ref().and_then(stats::named_in) else {
            continue;
        };
        if came_through == through {
            let id = session
                .strip_prefix("sessions/")
                .unwrap_or_default()
                .to_owned();
            covered.push((stored.seq, id, body));
        }
    }
    let sessions = store::load_sessions(txn, covered.iter().map(|(_, id, _)| id.as_str())).await?;
    let rewritten = covered.len() as u64;
    for (seq, session, mut body) in covered {
        if let Some(event) = body.event.as_mut() {
            let erased = sessions
                .get(&session)
                .map(|s| stats::once_erased(s, event))
                .unwrap_or_default();
            stats::rename(event, erased);
        }
        Feed::rewrite(txn, seq, body.encode_to_vec()).await?;
    }
    Ok(rewritten)
}

lianyu_kit::service_error!(LiveError, "lianyu.live", {
    SessionNotFound => (NotFound, "SESSION_NOT_FOUND"),
    ProductNotFound => (NotFound, "PRODUCT_NOT_FOUND"),
    FlashSaleNotFound => (NotFound, "FLASH_SALE_NOT_FOUND"),
    OrderNotFound => (NotFound, "ORDER_NOT_FOUND"),
    CouponDropNotFound => (NotFound, "COUPON_DROP_NOT_FOUND"),
    MemberNotFound => (NotFound, "MEMBER_NOT_FOUND"),
    BenefitNotFound => (NotFound, "BENEFIT_NOT_FOUND"),
    EtagMismatch => (Aborted, "ETAG_MISMATCH"),
});

/// What a caller is to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A co-host (a store token: of a session in its store): sees and changes all of it.
    Host,
    /// A host named by the creator that has not yet accepted: sees all of it, accepts,
    /// starts (accepting) or cancels (declining), changes nothing else.
    Invited,
    /// An assisting partner: pins and announces.
    Assistant,
    /// Anyone else: the public view.
    Public,
}

impl Api {
    /// Identity's view, or UNAVAILABLE / IDENTITY_UNAVAILABLE (fail closed).
    fn directory(&self) -> Result<&Directory, KitError> {
        lianyu_kit::directory::required(self.directory.as_ref())
    }

    /// Every store named in `stores` ("partners/{partner}/stores/{store}"; empty ones skipped)
    /// registered with identity and open: NOT_FOUND / STORE_NOT_FOUND, FAILED_PRECONDITION /
    /// STORE_CLOSED otherwise. Asked before a transaction, never inside one.
    async fn stores_open<'a>(
        &self,
        stores: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), LiveError> {
        // A malformed name is left to the field checks, which name its field.
        let named: std::collections::BTreeSet<&str> = stores
            .into_iter()
            .filter(|s| names::parse::<2>(s, "partners/{partner}/stores/{store}").is_ok())
            .collect();
        for store in named {
            self.directory()?.open_store(store).await?;
        }
        Ok(())
    }

    /// The mesh id of the caller's member "members/{member}" (`field` names it in errors);
    /// MEMBER_NOT_FOUND when the caller holds no such member.
    async fn mesh_id(
        &self,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<MeshMemberId, LiveError> {
        let [id] =
            names::parse(name, "members/{member}").map_err(|e| KitError::invalid(field, e))?;
        self.directory()?
            .mesh_id(call.partner_id(), &ScopedMemberId::new(id))
            .await?
            .ok_or(LiveError::MemberNotFound)
    }

    /// The session "sessions/{session}" in `field`, and what the caller is to it. The operator
    /// reads no session.
    async fn session(
        &self,
        conn: &impl ConnectionTrait,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<(Session, Role), LiveError> {
        let id = session_id(call, name, field)?;
        let session = store::load_session(conn, id)
            .await?
            .ok_or(LiveError::SessionNotFound)?;
        let role = role_of(call, &session)?;
        Ok((session, role))
    }

    /// [`Self::session`] read outside a mutation, through the batched reads: a read made
    /// while another of the session runs waits for the next and shares it, and never gets
    /// an answer read before it was asked.
    async fn read_session(
        &self,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<(Session, Role), LiveError> {
        let id = session_id(call, name, field)?;
        let session = self
            .sessions
            .get(id.to_owned(), |ids| async move {
                // Sessions apart are read side by side, as the pool allows.
                futures::future::join_all(ids.iter().map(|id| async move {
                    store::load_session(&self.read, id)
                        .await
                        .map_err(KitError::into_storage)
                }))
                .await
            })
            .await
            .map_err(KitError::Storage)?
            .ok_or(LiveError::SessionNotFound)?;
        let role = role_of(call, &session)?;
        Ok((session, role))
    }

    /// [`Self::session`] for a mutation that changes who has accepted or the terms they
    /// accepted: the session's row is held to the end of `txn` first
    /// ([`store::lock_session`]).
    async fn session_locked(
        &self,
        txn: &impl ConnectionTrait,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<(Session, Role), LiveError> {
        store::lock_session(txn, session_id(call, name, field)?).await?;
        self.session(txn, call, name, field).await
    }

    /// The session, for a change only a co-host makes: PERMISSION_DENIED otherwise (another
    /// store's token: STORE_TOKEN_NOT_ALLOWED; anyone else: HOST_ONLY).
    async fn hosted(
        &self,
        conn: &impl ConnectionTrait,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<Session, LiveError> {
        let (session, role) = self.session(conn, call, name, field).await?;
        as_host(call, &session, role)?;
        Ok(session)
    }

    /// Stages a change for the session's viewers' log in `writes`: appended when the
    /// caller's transaction commits.
    fn tell_viewers(
        &self,
        writes: &mut Writes,
        session: &str,
        update: pb::join_session_response::Update,
    ) {
        let body = pb::JoinSessionResponse {
            update: Some(update),
        };
        self.feed.append_staged(
            writes,
            NewEvent::message(&viewers::viewer_kind(session), None, &body),
        );
    }

    /// Stages an event of the live feed once per host (each reads its own), and once whole
    /// for the mesh's services, in `writes`: appended when the caller's transaction commits.
    fn tell_hosts(
        &self,
        writes: &mut Writes,
        session: &Session,
        event: pb::watch_live_events_response::Event,
        at: i64,
    ) {
        // The member it names, by mesh id: an erasure finds the event by it and rewrites it.
        let subject = stats::named_in(&event)
            .and_then(|(_, m, _)| m.strip_prefix("meshMembers/").map(str::to_owned));
        let body = pb::WatchLiveEventsResponse {
            cursor: None,
            event: Some(event),
            event_time: timestamp(at),
        };
        let tagged = |event: NewEvent| match &subject {
            Some(member) => event.about(member),
            None => event,
        };
        for host in &session.hosts {
            self.feed.append_staged(
                writes,
                tagged(NewEvent::message(
                    stats::FUNNEL_KIND,
                    Some(host.to_string()),
                    &body,
                )),
            );
        }
        // Once more, whole and by mesh id, for the mesh's services (LiveFeedService).
        self.feed.append_staged(
            writes,
            tagged(NewEvent::message(
                stats::FUNNEL_KIND,
                Some(stats::WHOLE_FEED.to_owned()),
                &body,
            )),
        );
    }
}

/// A flash sale with its product as one batched read answers it.
type SaleRead = Result<Option<(FlashSale, Product)>, StorageError>;

/// A coupon drop's claim as one batched read answers it.
type ClaimRead = Result<Option<store::Claim>, StorageError>;

/// The session id `name` names, for a caller that may read sessions (the operator reads none).
fn session_id<'a>(call: &Call, name: &'a str, field: &str) -> Result<&'a str, LiveError> {
    let [id] = names::parse(name, "sessions/{session}").map_err(|e| KitError::invalid(field, e))?;
    if call.who.operator {
        return Err(LiveError::SessionNotFound);
    }
    Ok(id)
}

/// Session reads one batched read answers at most.
const SESSION_READS: usize = 256;

/// What `call`'s caller is to `session`; SESSION_NOT_FOUND for anyone but its hosts while
/// a host has not accepted (no partner is shown on air without its word).
fn role_of(call: &Call, session: &Session) -> Result<Role, LiveError> {
    let role = if session.visible_to(call.partner_id(), call.who.store.as_deref()) {
        if session.awaits(call.partner_id()) {
            Role::Invited
        } else {
            Role::Host
        }
    } else if call.who.store.is_none() && session.assisted_by(call.partner_id()) {
        Role::Assistant
    } else {
        Role::Public
    };
    if !session.announced && !session.hosted_by(call.partner_id()) {
        return Err(LiveError::SessionNotFound);
    }
    Ok(role)
}

/// Whether a caller that is `role` to `session` makes a co-host's change: PERMISSION_DENIED
/// otherwise (an invited host before it accepted: HOST_NOT_ACCEPTED; see
/// [`refuse_non_host`] for the rest).
fn as_host(call: &Call, session: &Session, role: Role) -> Result<(), KitError> {
    match role {
        Role::Host => Ok(()),
        Role::Invited => Err(KitError::Denied(
            "HOST_NOT_ACCEPTED",
            "accept to co-host the session first (AcceptSession)",
        )),
        Role::Assistant | Role::Public => Err(refuse_non_host(call, session)),
    }
}

/// Why a caller that is not a co-host may not change a session.
fn refuse_non_host(call: &Call, session: &Session) -> KitError {
    if call.who.store.is_some() && session.hosted_by(call.partner_id()) {
        KitError::Denied(
            "STORE_TOKEN_NOT_ALLOWED",
            "a store token acts only on sessions in its own store",
        )
    } else {
        KitError::Denied("HOST_ONLY", "only a co-host changes the session")
    }
}

/// A session as `role` sees it: a co-host (an invited one too) all of it, anyone else its
/// public view.
fn session_proto(s: &Session, role: Role) -> pb::Session {
    let full = matches!(role, Role::Host | Role::Invited);
    let mut out = pb::Session {
        name: format!("sessions/{}", s.id),
        title: s.title.clone(),
        hosts: s.hosts.iter().map(|h| format!("partners/{h}")).collect(),
        store: s.store_name().unwrap_or_default(),
        stream_url: s.stream_url.clone(),
        scheduled_start_time: timestamp(s.scheduled_start_millis),
        start_time: s.started_at.and_then(timestamp),
        end_time: s.ended_at.and_then(timestamp),
        state: state_proto(s.state) as i32,
        presenters: s.profile.presenters.clone(),
        public_view: !full,
        ..Default::default()
    };
    if full {
        out.assistants = s
            .profile
            .assistants
            .iter()
            .map(|a| format!("partners/{a}"))
            .collect();
        out.guides = s
            .profile
            .guides
            .iter()
            .map(|g| pb::Guide {
                guide_id: g.guide_id.clone(),
                display_name: g.display_name.clone(),
                partner: format!("partners/{}", g.partner),
                store: g.store_name(),
                share_code: g.share_code.clone(),
            })
            .collect();
        out.revenue_shares = s
            .profile
            .revenue_shares
            .iter()
            .map(|(p, bps)| pb::RevenueShare {
                partner: format!("partners/{p}"),
                share_bps: *bps,
            })
            .collect();
        // The etag covers all a host sees but who has yet to accept.
        out.etag = lianyu_kit::keycodec::etag(&out);
        out.pending_hosts = s.pending.iter().map(|p| format!("partners/{p}")).collect();
    }
    out
}

fn state_proto(s: SessionState) -> pb::SessionState {
    match s {
        SessionState::Scheduled => pb::SessionState::Scheduled,
        SessionState::Live => pb::SessionState::Live,
        SessionState::Ended => pb::SessionState::Ended,
        SessionState::Cancelled => pb::SessionState::Cancelled,
    }
}

/// Integer minor units of a currency, as the contract carries them.
fn money(m: &lianyu_kit::money::Money) -> Option<common::Money> {
    Some(common::Money {
        currency_code: m.currency().to_owned(),
        minor_units: m.minor_units(),
    })
}

/// `(currency, minor units)` of a contract amount, for the domain's checks.
fn amount(m: Option<&common::Money>) -> Option<(&str, i64)> {
    m.map(|m| (m.currency_code.as_str(), m.minor_units))
}
