//! The kit's view of identity, as entitlements, live and comarketing use it against a real
//! identity: batched and cached id translation, consent decisions asked now or from a cache
//! the mesh feed keeps fresh, and failing closed when identity does not answer.

use std::time::Duration;

use lianyu_kit::{
    KitError, ServerContext, ServiceError,
    directory::{Directory, Question},
    ids::{MeshMemberId, ScopedMemberId},
};
use lianyu_proto::common::v1::ConsentPurpose;
use lianyu_proto::identity::v1 as pb;

use crate::harness::{Identity, details, enroll, grant, phone, store_active};

struct KitTables;

#[sea_orm_migration::async_trait::async_trait]
impl sea_orm_migration::MigratorTrait for KitTables {
    fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
        vec![
            Box::new(lianyu_kit::storage::KitTables),
            Box::new(lianyu_kit::storage::KitIndexes),
        ]
    }
}

/// A directory as `live` would hold it, calling `identity`, and following its mesh feed with
/// the cursor in a database of its own.
async fn directory_of(
    identity: &Identity,
    follow: bool,
) -> (Directory, ServerContext, tempfile::TempDir) {
    let mut config = identity.config.clone();
    config.set_peer_url("identity", identity.address());
    let ctx = ServerContext::new(config.clone()).unwrap();
    let peer = ctx.peer("live", "identity").unwrap();
    let directory = Directory::new(peer, ctx.stopping.clone());
    let dir = tempfile::tempdir().unwrap();
    if follow {
        config.set_database_url(
            "live",
            format!("sqlite://{}/live.db?mode=rwc", dir.path().display()),
        );
        let db = lianyu_kit::storage::open::<KitTables>(&config, "live")
            .await
            .unwrap();
        tokio::spawn(directory.clone().follow(
            db,
            "live:identity.mesh".into(),
            ctx.verifier.clone(),
            ctx.stopping.clone(),
            (None, std::time::Duration::from_secs(30)),
        ));
    }
    (directory, ctx, dir)
}

fn scoped(name: &str) -> ScopedMemberId {
    ScopedMemberId::new(name.strip_prefix("members/").unwrap())
}

#[tokio::test]
async fn concurrent_lookups_share_one_call_and_are_answered_from_the_cache_after() {
    let identity = Identity::with_partners("dir_batch").await;
    let mut brand = identity.as_partner("brand-a");
    let mut members = Vec::new();
    for i in 0..40 {
        let name = brand
            .enrolled(enroll(
                &format!("e{i}"),
                vec![phone(&format!("1390000{i:04}"), true)],
                &[],
            ))
            .await;
        members.push(scoped(&name));
    }
    let (directory, _ctx, _dir) = directory_of(&identity, false).await;
    let mut asked = members.clone();
    asked.push(ScopedMemberId::new("nobody1"));
    let found = directory.mesh_ids("brand-a", &asked).await.unwrap();
    assert_eq!(
        directory.resolve_calls(),
        1,
        "40 concurrent lookups, one call"
    );
    assert!(found[..40].iter().all(Option::is_some));
    assert_eq!(found[40], None);
    let again = directory.mesh_ids("brand-a", &members).await.unwrap();
    assert_eq!(again, found[..40]);
    assert_eq!(directory.resolve_calls(), 1, "from the cache");
    // Another partner's view of the same ids: none of them are its own.
    let theirs = directory.mesh_ids("mall-b", &members[..3]).await.unwrap();
    assert_eq!(theirs, [None, None, None]);
    // And back: the brand's own scoped ids for the mesh ids, nothing for brand-c.
    let mesh: Vec<MeshMemberId> = found[..3].iter().flatten().cloned().collect();
    let back = directory.scoped_ids("brand-a", &mesh).await.unwrap();
    assert_eq!(
        back,
        members[..3].iter().cloned().map(Some).collect::<Vec<_>>()
    );
    assert_eq!(
        directory.scoped_ids("brand-c", &mesh).await.unwrap(),
        [None, None, None]
    );
}

#[tokio::test]
async fn the_mesh_feed_drops_cached_translations_and_decisions_as_they_change() {
    let identity = Identity::with_partners("dir_follow").await;
    let (brand, _mall) = identity.shared_member("13800000201").await;
    let (directory, _ctx, _dir) = directory_of(&identity, true).await;
    let mesh = directory
        .mesh_id("brand-a", &scoped(&brand))
        .await
        .unwrap()
        .unwrap();
    let mut as_brand = identity.as_partner("brand-a");
    as_brand
        .consents
        .grant_consent(grant(&brand, "mall-b", &[ConsentPurpose::MarketingContact]))
        .await
        .unwrap();
    let question = Question {
        member: mesh.clone(),
        grantor: "brand-a".into(),
        grantee: "mall-b".into(),
        purpose: ConsentPurpose::MarketingContact as i32,
    };
    let allowed = |d: Vec<lianyu_kit::directory::Decision>| d[0].allowed;
    assert!(allowed(
        directory
            .decide("mall-b", std::slice::from_ref(&question))
            .await
            .unwrap()
    ));
    assert!(allowed(
        directory
            .decide_cached("mall-b", std::slice::from_ref(&question))
            .await
            .unwrap()
    ));
    as_brand
        .consents
        .withdraw_consent(pb::WithdrawConsentRequest {
            request_id: "w".into(),
            member: brand.clone(),
            grantee: "partners/mall-b".into(),
            purposes: vec![ConsentPurpose::MarketingContact as i32],
        })
        .await
        .unwrap();
    // The withdrawal reaches the cache through the feed (polled, not slept on).
    let mut cached = true;
    for _ in 0..500 {
        cached = allowed(
            directory
                .decide_cached("mall-b", std::slice::from_ref(&question))
                .await
                .unwrap(),
        );
        if !cached {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!cached, "the cached decision outlived the withdrawal");
    // Erasure at the brand: the cached translation goes too.
    as_brand
        .members
        .erase_member(pb::EraseMemberRequest {
            request_id: "erase".into(),
            member: brand.clone(),
            scope: 0,
        })
        .await
        .unwrap();
    let mut translated = Some(mesh);
    for _ in 0..500 {
        translated = directory.mesh_id("brand-a", &scoped(&brand)).await.unwrap();
        if translated.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(translated, None);
}

#[tokio::test]
async fn when_identity_does_not_answer_every_question_fails_closed() {
    let identity = Identity::with_partners("dir_closed").await;
    // A directory whose identity is a port nobody answers on.
    let mut config = identity.config.clone();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = dead.local_addr().unwrap();
    drop(dead);
    config.set_peer_url("identity", format!("http://{address}"));
    let ctx = ServerContext::new(config).unwrap();
    let directory = Directory::new(ctx.peer("live", "identity").unwrap(), ctx.stopping.clone());
    let question = Question {
        member: MeshMemberId::new("m1"),
        grantor: "brand-a".into(),
        grantee: "mall-b".into(),
        purpose: ConsentPurpose::MarketingContact as i32,
    };
    let expect_closed = |e: KitError| {
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert_eq!(e.reason(), "IDENTITY_UNAVAILABLE");
    };
    expect_closed(
        directory
            .decide("mall-b", std::slice::from_ref(&question))
            .await
            .unwrap_err(),
    );
    expect_closed(
        directory
            .decide_cached("mall-b", &[question])
            .await
            .unwrap_err(),
    );
    expect_closed(
        directory
            .mesh_id("brand-a", &ScopedMemberId::new("x1"))
            .await
            .unwrap_err(),
    );
    expect_closed(
        directory
            .scoped_ids("brand-a", &[MeshMemberId::new("m1")])
            .await
            .unwrap_err(),
    );
}

/// A listener on `address` that can be bound again right after a server on it was killed.
fn rebindable(address: std::net::SocketAddr) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(address).unwrap();
    socket.listen(1024).unwrap()
}

/// A consumer of identity's mesh feed keeps its cursor with each applied event; identity is
/// killed (its task aborted: connections cut mid-stream) and restarted twice while events keep
/// coming. Every event is applied exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_consumer_loses_and_repeats_nothing_when_the_feed_server_is_killed_mid_stream() {
    use futures::StreamExt;
    use lianyu_kit::feed::Consumer;
    use lianyu_proto::identity::internal::v1 as internal;

    let first = Identity::with_partners("dir_killed_feed").await;
    let (brand, _mall) = first.shared_member("13800000301").await;
    // Identity again, on an address of our own that survives restarts, same database and keys.
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let start = |config: lianyu_kit::Config| {
        tokio::spawn(lianyu_identity::run(
            config,
            rebindable(address),
            std::future::pending(),
        ))
    };
    let mut server = start(first.config.clone());
    let url = format!("http://{address}");
    lianyu_kit::testing::connect(&url).await;

    let mut config = first.config.clone();
    config.set_peer_url("identity", url.clone());
    let dir = tempfile::tempdir().unwrap();
    config.set_database_url(
        "live",
        format!("sqlite://{}/live.db?mode=rwc", dir.path().display()),
    );
    let db = lianyu_kit::storage::open::<KitTables>(&config, "live")
        .await
        .unwrap();
    let ctx = ServerContext::new(config).unwrap();
    let peer = ctx.peer("live", "identity").unwrap();
    let applied = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let consumer = {
        let (applied, stopping, peer) = (applied.clone(), ctx.stopping.clone(), peer.clone());
        tokio::spawn(async move {
            Consumer::new(db, "live:identity.mesh")
                .run(
                    |cursor| {
                        let peer = peer.clone();
                        async move {
                            let stream = peer
                                .open_stream(
                                    internal::WatchMeshEventsRequest {
                                        after: Some(lianyu_proto::common::v1::FeedCursor {
                                            sequence: cursor,
                                        }),
                                    },
                                    |ch, r| async move {
                                        internal::directory_service_client::DirectoryServiceClient::new(ch)
                                            .watch_mesh_events(r)
                                            .await
                                    },
                                )
                                .await?;
                            Ok(stream.map(|e| e.map(|e| (e.cursor.map_or(0, |c| c.sequence), e))))
                        }
                    },
                    move |_txn, event| {
                        applied
                            .lock()
                            .unwrap()
                            .push(event.cursor.map_or(0, |c| c.sequence));
                        Box::pin(async { Ok(()) })
                    },
                    stopping,
                )
                .await
        })
    };
    // Each grant and withdrawal is one mesh event.
    let mut as_brand = identity_client(&first, &url);
    let mut made = 0;
    for round in 0..3 {
        for i in 0..10 {
            let purpose = ConsentPurpose::MarketingContact as i32;
            let request_id = format!("r{round}-{i}");
            if i % 2 == 0 {
                as_brand
                    .grant_consent(pb::GrantConsentRequest {
                        request_id,
                        ..grant(&brand, "mall-b", &[ConsentPurpose::MarketingContact])
                    })
                    .await
                    .unwrap();
            } else {
                as_brand
                    .withdraw_consent(pb::WithdrawConsentRequest {
                        request_id,
                        member: brand.clone(),
                        grantee: "partners/mall-b".into(),
                        purposes: vec![purpose],
                    })
                    .await
                    .unwrap();
            }
            made += 1;
        }
        if round < 2 {
            // Kill identity mid-stream and start it again on the same address.
            server.abort();
            let _ = server.await;
            server = start(first.config.clone());
            lianyu_kit::testing::connect(&url).await;
            as_brand = identity_client(&first, &url);
        }
    }
    // Every event identity made, once each, in order (polled, not slept on).
    let expected: Vec<i64> = {
        let mut all = Vec::new();
        let mut stream = first
            .directory(&first.service_token("live"))
            .watch_mesh_events(internal::WatchMeshEventsRequest { after: None })
            .await
            .unwrap()
            .into_inner();
        while let Ok(Some(Ok(e))) =
            tokio::time::timeout(Duration::from_millis(500), stream.next()).await
        {
            all.push(e.cursor.unwrap().sequence);
        }
        all
    };
    assert!(
        expected.len() >= made,
        "{} events for {made} changes",
        expected.len()
    );
    let mut seen = Vec::new();
    for _ in 0..1000 {
        seen = applied.lock().unwrap().clone();
        if seen.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen, expected,
        "applied exactly the feed, once each, in order"
    );
    ctx.stopping.cancel();
    consumer.await.unwrap().unwrap();
}

/// A consent client of `identity`'s data and keys, talking to the server at `url`.
fn identity_client(
    identity: &Identity,
    url: &str,
) -> pb::consent_service_client::ConsentServiceClient<crate::harness::Auth> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect_lazy();
    pb::consent_service_client::ConsentServiceClient::new(tonic::codegen::InterceptedService::new(
        channel,
        crate::harness::Bearer::new(&identity.partner_token("brand-a")),
    ))
}

/// After a merge, the merged-away scoped id translates to the surviving mesh id: the merge
/// event drops the cached translation of the old one.
#[tokio::test]
async fn a_merge_event_redirects_a_cached_translation_to_the_survivor() {
    let identity = Identity::with_partners("dir_merge").await;
    let mut brand = identity.as_partner("brand-a");
    let keep = brand
        .enrolled(enroll(
            "k",
            vec![crate::harness::unionid(
                "oU_dirmerge_00000000000001",
                "open-brand-a",
            )],
            &[],
        ))
        .await;
    let dup = brand
        .enrolled(enroll("d", vec![phone("13611136222", true)], &[]))
        .await;
    let (directory, _ctx, _dir) = directory_of(&identity, true).await;
    let survivor = directory
        .mesh_id("brand-a", &scoped(&keep))
        .await
        .unwrap()
        .unwrap();
    let before = directory
        .mesh_id("brand-a", &scoped(&dup))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(before, survivor);
    brand
        .members
        .merge_members(pb::MergeMembersRequest {
            request_id: "merge".into(),
            member: keep.clone(),
            duplicate_member: dup.clone(),
            evidence: Some(phone("13611136222", true)),
        })
        .await
        .unwrap();
    let mut now = Some(before.clone());
    for _ in 0..500 {
        now = directory.mesh_id("brand-a", &scoped(&dup)).await.unwrap();
        if now.as_ref() != Some(&before) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        now,
        Some(survivor),
        "the old id now names the surviving member"
    );
}

/// A store's state as the kit keeps it: asked of identity (every time, with no TTL), an open
/// store stands in for up to `STORE_STALE` when identity stops answering — a till keeps
/// selling through a short outage — while a store identity never confirmed fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_store_stands_in_while_identity_is_down_and_an_unknown_one_fails_closed() {
    let first = Identity::with_partners("dir_store_outage").await;
    first
        .as_partner("brand-a")
        .partners
        .create_store(pb::CreateStoreRequest {
            request_id: "s".into(),
            parent: "partners/brand-a".into(),
            store_id: "sanlitun".into(),
            store: Some(pb::Store {
                display_name: "Sanlitun".into(),
                city: "Beijing".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // Identity again, on an address of our own, same database and keys: killed below.
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let server = tokio::spawn(lianyu_identity::run(
        first.config.clone(),
        rebindable(address),
        std::future::pending(),
    ));
    let url = format!("http://{address}");
    lianyu_kit::testing::connect(&url).await;
    let mut config = first.config.clone();
    config.set_peer_url("identity", url);
    let ctx = ServerContext::new(config).unwrap();
    let directory = Directory::new(ctx.peer("live", "identity").unwrap(), ctx.stopping.clone())
        .with_store_ttl(Duration::ZERO);
    let (open, typo) = (
        "partners/brand-a/stores/sanlitun",
        "partners/brand-a/stores/sanlitum",
    );
    directory.open_store(open).await.unwrap();
    let e = directory.open_store(typo).await.unwrap_err();
    assert_eq!(
        (e.code(), e.reason()),
        (tonic::Code::NotFound, "STORE_NOT_FOUND")
    );
    server.abort();
    let _ = server.await;
    directory.open_store(open).await.unwrap();
    let e = directory.open_store(typo).await.unwrap_err();
    assert_eq!(
        (e.code(), e.reason()),
        (tonic::Code::Unavailable, "IDENTITY_UNAVAILABLE")
    );
    // Stores another partner never registered fail closed the same way.
    let e = directory
        .open_store("partners/mall-b/stores/sanlitun")
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "IDENTITY_UNAVAILABLE");
}

/// Polls `check` every 10 ms for up to 5 s until it holds (a feed is followed, never slept on).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test]
async fn a_closed_stores_tokens_are_refused_everywhere_at_once_until_it_reopens() {
    let identity = Identity::with_partners("dir_store_tokens").await;
    let mut brand = identity.as_partner("brand-a");
    for id in ["sanlitun", "guomao", "xidan"] {
        brand
            .partners
            .create_store(pb::CreateStoreRequest {
                request_id: format!("create-{id}"),
                parent: "partners/brand-a".into(),
                store_id: id.into(),
                store: Some(pb::Store {
                    display_name: id.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let token = |id: &str| {
        lianyu_kit::testing::mint(
            &identity.config.data_dir,
            &identity.config.auth,
            &lianyu_kit::auth::TokenRequest {
                store: Some(format!("partners/brand-a/stores/{id}")),
                ..lianyu_kit::testing::partner_token("brand-a")
            },
        )
    };
    let (sanlitun, guomao, xidan) = (token("sanlitun"), token("guomao"), token("xidan"));
    let get = |id: &str| pb::GetStoreRequest {
        name: format!("partners/brand-a/stores/{id}"),
    };
    // What a store's till reads of its own store with `token`: the refusal's code and reason.
    let till_reads = async |token: &str, id: &str| {
        identity
            .with_token(token)
            .partners
            .get_store(get(id))
            .await
            .map(|_| ())
            .map_err(|e| (e.code(), details(&e).0))
    };
    let closed = Err((tonic::Code::PermissionDenied, "STORE_CLOSED".to_owned()));
    let active = async |id: &str| {
        identity
            .as_partner("brand-a")
            .partners
            .get_store(get(id))
            .await
            .unwrap()
            .into_inner()
            .active
    };
    // Closed before a standalone service starts following the mesh feed.
    brand
        .partners
        .update_store(store_active("brand-a", "guomao", false, "close-g"))
        .await
        .unwrap();
    assert_eq!(
        till_reads(&guomao, "guomao").await,
        closed,
        "identity refuses the closed store's token at once"
    );
    // The store's own till cannot reopen it either; it stays closed.
    let refused = identity
        .with_token(&guomao)
        .partners
        .update_store(store_active("brand-a", "guomao", true, "reopen-by-till"))
        .await
        .unwrap_err();
    assert_eq!(details(&refused).0, "STORE_CLOSED");
    assert!(!active("guomao").await);
    // Other stores' tokens and the partner's own are unaffected.
    assert_eq!(till_reads(&sanlitun, "sanlitun").await, Ok(()));
    assert!(active("sanlitun").await);

    // Identity's internal list, for services only.
    let listed = identity
        .directory(&identity.service_token("live"))
        .list_closed_stores(lianyu_proto::identity::internal::v1::ListClosedStoresRequest {})
        .await
        .unwrap()
        .into_inner()
        .stores;
    assert_eq!(listed, ["partners/brand-a/stores/guomao"]);
    // The store's own partner, an unallied partner, the operator, a till: no internal scope.
    for intruder in [
        identity.partner_token("brand-a"),
        identity.partner_token("brand-c"),
        identity.partner_token("operator"),
        sanlitun.clone(),
    ] {
        let refused = identity
            .directory(&intruder)
            .list_closed_stores(lianyu_proto::identity::internal::v1::ListClosedStoresRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }
    let refused = identity
        .directory("")
        .list_closed_stores(lianyu_proto::identity::internal::v1::ListClosedStoresRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "no token");

    // A service with a verifier of its own (as standalone): the list read when it starts.
    let (directory, ctx, _dir) = directory_of(&identity, true).await;
    let verifier = ctx.verifier.clone();
    let refuses = |t: &str| verifier.verify(t) == Err(lianyu_kit::auth::AuthError::StoreClosed);
    eventually("a store closed before the start", || refuses(&guomao)).await;
    assert!(verifier.verify(&sanlitun).is_ok());
    assert!(verifier.verify(&xidan).is_ok());
    // A store's state the service holds (kept 30 s) is dropped by the feed's event.
    directory
        .open_store("partners/brand-a/stores/sanlitun")
        .await
        .unwrap();

    // Closed while it follows: identity at once, the service from the feed.
    brand
        .partners
        .update_store(store_active("brand-a", "sanlitun", false, "close-s"))
        .await
        .unwrap();
    assert_eq!(till_reads(&sanlitun, "sanlitun").await, closed);
    eventually("a store closed after the start", || refuses(&sanlitun)).await;
    let mut cached_open = true;
    for _ in 0..500 {
        cached_open = directory
            .open_store("partners/brand-a/stores/sanlitun")
            .await
            .is_ok();
        if !cached_open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !cached_open,
        "the cached open state outlived the closing (kept 30 s unless the feed drops it)"
    );
    assert!(verifier.verify(&xidan).is_ok(), "only the closed store's");

    // Reopened: its unexpired tokens work again, here and there.
    brand
        .partners
        .update_store(store_active("brand-a", "guomao", true, "reopen-g"))
        .await
        .unwrap();
    assert_eq!(till_reads(&guomao, "guomao").await, Ok(()));
    eventually("a reopened store", || verifier.verify(&guomao).is_ok()).await;

    // Reopen sanlitun, then replay its old closing: the replay answers what it answered, and
    // changes nothing — the store and its tokens stay open.
    brand
        .partners
        .update_store(store_active("brand-a", "sanlitun", true, "reopen-s"))
        .await
        .unwrap();
    assert_eq!(till_reads(&sanlitun, "sanlitun").await, Ok(()));
    let replayed = brand
        .partners
        .update_store(store_active("brand-a", "sanlitun", false, "close-s"))
        .await
        .unwrap()
        .into_inner();
    assert!(!replayed.active, "the stored reply");
    assert!(active("sanlitun").await);
    assert_eq!(till_reads(&sanlitun, "sanlitun").await, Ok(()));
}
