//! Calls between services through the kit's `Peer`: the service's own token on every call, the
//! served call's remaining deadline passed on (never a longer one), and retries only for
//! idempotent calls. The peer here is a stand-in for identity's internal contract that records
//! what reached it and fails on demand.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lianyu_kit::{
    Config,
    auth::{Signer, TokenVerifier},
    peer::{Idempotency, Peer, ServiceToken, with_deadline},
};
use lianyu_proto::identity::internal::v1::{
    self as pb,
    directory_service_client::DirectoryServiceClient,
    directory_service_server::{DirectoryService, DirectoryServiceServer},
};
use tonic::{Code, Request, Response, Status};

/// What the stand-in saw of each call.
#[derive(Clone, Debug)]
struct Seen {
    authorization: String,
    timeout: Option<Duration>,
}

#[derive(Clone, Default)]
struct StandIn {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Calls answered UNAVAILABLE before the first success.
    failures: Arc<Mutex<u32>>,
}

#[tonic::async_trait]
impl DirectoryService for StandIn {
    async fn resolve_mesh_ids(
        &self,
        request: Request<pb::ResolveMeshIdsRequest>,
    ) -> Result<Response<pb::ResolveMeshIdsResponse>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.seen.lock().unwrap().push(Seen {
            authorization: header("authorization").unwrap_or_default(),
            timeout: header("grpc-timeout")
                .as_deref()
                .and_then(lianyu_kit::peer::parse_grpc_timeout),
        });
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(Status::unavailable("down for a moment"));
        }
        // Every member is known, as mesh member "m-{scoped id}".
        let members = request
            .get_ref()
            .members
            .iter()
            .map(|name| pb::MemberIds {
                member: name.clone(),
                mesh_member: name.replacen("members/", "meshMembers/m-", 1),
            })
            .collect();
        Ok(Response::new(pb::ResolveMeshIdsResponse { members }))
    }
}

struct Setup {
    stand_in: StandIn,
    peer: Peer,
    verifier: TokenVerifier,
    _data: tempfile::TempDir,
}

async fn setup(failures: u32) -> Setup {
    let stand_in = StandIn {
        failures: Arc::new(Mutex::new(failures)),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let server = DirectoryServiceServer::new(stand_in.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    lianyu_kit::testing::connect(&address).await;
    let data = tempfile::tempdir().unwrap();
    let config = Config::local(data.path());
    let signer = Arc::new(Signer::load_or_create(data.path()).unwrap());
    let mut auth = config.auth.clone();
    auth.trusted_keys.push(signer.trusted_key());
    let token = Arc::new(ServiceToken::minted(
        "live",
        signer,
        config.auth.clone(),
        Duration::from_secs(600),
    ));
    let channel = lianyu_kit::client::peer(&address, Duration::from_secs(5)).unwrap();
    Setup {
        stand_in,
        peer: Peer::new("identity", channel, token, Duration::from_secs(2)),
        verifier: TokenVerifier::new(&auth).unwrap(),
        _data: data,
    }
}

async fn call(peer: &Peer, idempotency: Idempotency) -> Result<pb::ResolveMeshIdsResponse, Status> {
    peer.call(
        idempotency,
        pb::ResolveMeshIdsRequest::default(),
        |ch, r| async move { DirectoryServiceClient::new(ch).resolve_mesh_ids(r).await },
    )
    .await
}

#[tokio::test]
async fn a_peer_call_carries_the_services_own_token_and_the_callers_remaining_deadline() {
    let s = setup(0).await;
    // Outside any served call: the peer's default deadline.
    call(&s.peer, Idempotency::Idempotent).await.unwrap();
    // Inside a call with 300 ms left: never more than that is passed on.
    with_deadline(
        tokio::time::Instant::now() + Duration::from_millis(300),
        call(&s.peer, Idempotency::Idempotent),
    )
    .await
    .unwrap();
    let seen = s.stand_in.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let default = seen[0].timeout.unwrap();
    assert!(
        default <= Duration::from_secs(2) && default > Duration::from_millis(1500),
        "{default:?}"
    );
    let passed = seen[1].timeout.unwrap();
    assert!(passed <= Duration::from_millis(300), "{passed:?}");
    // The token is the service's: role service, internal scopes only.
    let token = seen[1].authorization.strip_prefix("Bearer ").unwrap();
    let who = s.verifier.verify(token).unwrap();
    assert_eq!(who.service.as_deref(), Some("live"));
    assert!(who.has_scope("identity.internal"));
    // A call whose deadline has passed is not sent at all.
    let e = with_deadline(
        tokio::time::Instant::now(),
        call(&s.peer, Idempotency::Idempotent),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert_eq!(s.stand_in.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn only_idempotent_calls_are_retried() {
    let s = setup(1).await;
    // Sent once: the failure is the caller's to handle.
    let e = call(&s.peer, Idempotency::Once).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(s.stand_in.seen.lock().unwrap().len(), 1);
    // Idempotent: retried after the failure, and answered.
    *s.stand_in.failures.lock().unwrap() = 2;
    call(&s.peer, Idempotency::Idempotent).await.unwrap();
    assert_eq!(s.stand_in.seen.lock().unwrap().len(), 4);
    // A peer that stays down gets three attempts, no more.
    *s.stand_in.failures.lock().unwrap() = 100;
    let e = call(&s.peer, Idempotency::Idempotent).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(s.stand_in.seen.lock().unwrap().len(), 7);
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let s = setup(u32::MAX).await;
    // Many concurrent calls to a peer that is down: retries add at most about a fifth (plus
    // the budget's floor of ten a second) to the calls made, never three times as many.
    let calls = 200;
    let results =
        futures::future::join_all((0..calls).map(|_| call(&s.peer, Idempotency::Idempotent))).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.code() == Code::Unavailable))
    );
    let attempts = s.stand_in.seen.lock().unwrap().len();
    assert!(attempts >= calls, "{attempts}");
    assert!(
        attempts <= calls + calls / 5 + 10 * 10 + 10,
        "{attempts} attempts for {calls} calls"
    );
}

/// The directory's translations follow identity's feed: an event about a member with nothing
/// cached (a new enrolment — most of a busy feed) drops nothing and costs nothing; an event
/// about a cached member drops that member's translations, and only theirs.
#[tokio::test]
async fn a_feed_event_drops_the_cached_translations_of_its_member_only() {
    use lianyu_kit::{
        directory::Directory,
        ids::{MeshMemberId, ScopedMemberId},
    };
    use pb::MeshEventKind;

    let s = setup(0).await;
    let directory = Directory::new(s.peer.clone(), tokio_util::sync::CancellationToken::new());
    let resolve = async |scoped: &str| {
        directory
            .mesh_id("brand", &ScopedMemberId::new(scoped))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(resolve("a").await, MeshMemberId::new("m-a"));
    assert_eq!(resolve("b").await, MeshMemberId::new("m-b"));
    let asked = directory.resolve_calls();
    let event = |kind: MeshEventKind, member: &str| pb::WatchMeshEventsResponse {
        kind: kind as i32,
        mesh_member: format!("meshMembers/{member}"),
        ..Default::default()
    };

    directory.apply(&event(MeshEventKind::MemberEnrolled, "m-new"), &s.verifier);
    assert_eq!(directory.forgotten(), 0, "nothing was cached about m-new");
    resolve("a").await;
    resolve("b").await;
    assert_eq!(
        directory.resolve_calls(),
        asked,
        "both still answered from the cache"
    );

    directory.apply(&event(MeshEventKind::MemberErased, "m-a"), &s.verifier);
    assert_eq!(directory.forgotten(), 1);
    resolve("b").await;
    assert_eq!(directory.resolve_calls(), asked, "b's translation is kept");
    assert_eq!(resolve("a").await, MeshMemberId::new("m-a"));
    assert_eq!(
        directory.resolve_calls(),
        asked + 1,
        "a's translation was dropped and asked again"
    );
}
