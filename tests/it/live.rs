//! Live's sessions: a co-host schedules a session, every co-host reads all of it, another
//! partner only its public view; each refusal leaves nothing behind.

use lianyu_kit::{
    testing::{BRAND, MALL, OUTSIDER, TestServer, first_violation, reason, violations},
    time::{now_millis, timestamp},
};
use lianyu_proto::live::v1::{
    self as pb, session_service_client::SessionServiceClient,
    showcase_service_client::ShowcaseServiceClient,
};
use tonic::{Code, codegen::InterceptedService, transport::Channel};

use crate::support::rows;

type Sessions = SessionServiceClient<InterceptedService<Channel, lianyu_kit::client::Bearer>>;

async fn mesh(test: &str) -> TestServer {
    crate::support::with_identity!(test, "live", lianyu_live::mount)
}

fn sessions(server: &TestServer, token: &str) -> Sessions {
    SessionServiceClient::new(server.as_token(token))
}

fn draft(store: &str) -> pb::Session {
    pb::Session {
        title: "Double 12 at the flagship".into(),
        hosts: vec![format!("partners/{MALL}")],
        store: store.into(),
        stream_url: "https://cdn.example/live/1.m3u8".into(),
        scheduled_start_time: timestamp(now_millis() + 3_600_000),
        ..Default::default()
    }
}

fn create(request_id: &str, session: pb::Session) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        request_id: request_id.into(),
        session: Some(session),
    }
}

async fn accept(
    server: &TestServer,
    partner: &str,
    name: &str,
    rid: &str,
) -> Result<pb::Session, tonic::Status> {
    accept_with(server, &server.token(partner), name, rid).await
}

async fn accept_with(
    server: &TestServer,
    token: &str,
    name: &str,
    rid: &str,
) -> Result<pb::Session, tonic::Status> {
    sessions(server, token)
        .accept_session(pb::AcceptSessionRequest {
            request_id: rid.into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn start(
    server: &TestServer,
    partner: &str,
    name: &str,
    rid: &str,
) -> Result<pb::Session, tonic::Status> {
    sessions(server, &server.token(partner))
        .start_session(pb::StartSessionRequest {
            request_id: rid.into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn stored_sessions(server: &TestServer) -> i64 {
    rows(server, "live", "sessions").await
}

#[tokio::test]
async fn a_scheduled_session_is_seen_whole_by_co_hosts_and_public_by_others() {
    let server = mesh("live_co_hosts").await;
    let created = sessions(&server, &server.token(BRAND))
        .create_session(create("s1", draft(&format!("partners/{MALL}/stores/sh01"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.state, pb::SessionState::Scheduled as i32);
    assert_eq!(
        created.hosts,
        [format!("partners/{BRAND}"), format!("partners/{MALL}")]
    );
    let get = || pb::GetSessionRequest {
        name: created.name.clone(),
    };
    let by_mall = sessions(&server, &server.token(MALL))
        .get_session(get())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_mall, created);
    // A store acts only within itself: the hosting store's token sees all of the session,
    // another store's of the same partner only its public view.
    let by_store = sessions(&server, &server.store_token(MALL, "sh01"))
        .get_session(get())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_store, created);
    let elsewhere = sessions(&server, &server.store_token(MALL, "sh02"))
        .get_session(get())
        .await
        .unwrap()
        .into_inner();
    assert!(elsewhere.public_view && elsewhere.guides.is_empty());
    // Another partner's app sees nothing until the mall accepted, then the public view only;
    // the operator reads no session.
    let e = sessions(&server, &server.token(OUTSIDER))
        .get_session(get())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "SESSION_NOT_FOUND")
    );
    accept(&server, MALL, &created.name, "a1").await.unwrap();
    let public = sessions(&server, &server.token(OUTSIDER))
        .get_session(get())
        .await
        .unwrap()
        .into_inner();
    assert!(public.public_view && !created.public_view);
    assert_eq!(
        (public.title.as_str(), public.revenue_shares.len()),
        (created.title.as_str(), 0)
    );
    let e = sessions(&server, &server.operator_token())
        .get_session(get())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "SESSION_NOT_FOUND")
    );
    let e = sessions(&server, &server.token(MALL))
        .get_session(pb::GetSessionRequest {
            name: "sessions/../x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), first_violation(&e).as_deref()),
        (Code::InvalidArgument, Some("name"))
    );
}

#[tokio::test]
async fn a_retried_schedule_is_one_session_and_a_reused_request_id_is_refused() {
    let server = mesh("live_replay").await;
    let mut brand = sessions(&server, &server.token(BRAND));
    let request = create("s1", draft(""));
    let first = brand.create_session(request.clone()).await.unwrap();
    let again = brand.create_session(request.clone()).await.unwrap();
    assert_eq!(first.into_inner(), again.into_inner());
    let other = pb::Session {
        title: "Another show".into(),
        ..request.session.clone().unwrap()
    };
    let e = brand.create_session(create("s1", other)).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::AlreadyExists, "REQUEST_ID_REUSED")
    );
    assert_eq!(stored_sessions(&server).await, 1);
}

#[tokio::test]
async fn refused_schedules_name_every_bad_field_and_store_nothing() {
    let server = mesh("live_refusals").await;
    let bad = pb::Session {
        title: " ".into(),
        hosts: vec!["mall-b".into()],
        stream_url: "ftp://x".into(),
        scheduled_start_time: timestamp(now_millis() - 1000),
        ..draft("")
    };
    let e = sessions(&server, &server.token(BRAND))
        .create_session(create("bad", bad))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&e),
        [
            "session.title",
            "session.hosts[0]",
            "session.stream_url",
            "session.scheduled_start_time"
        ]
    );
    // A store token schedules only in its own store; the operator hosts nothing.
    let e = sessions(&server, &server.store_token(MALL, "sh02"))
        .create_session(create("s", draft(&format!("partners/{MALL}/stores/sh01"))))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "STORE_TOKEN_NOT_ALLOWED")
    );
    let e = sessions(&server, &server.operator_token())
        .create_session(create("s", draft("")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "OPERATOR_HOSTS_NOTHING")
    );
    assert_eq!(
        stored_sessions(&server).await,
        0,
        "a refused call stores nothing"
    );
    // The store's own token may.
    sessions(&server, &server.store_token(MALL, "sh01"))
        .create_session(create("s", draft(&format!("partners/{MALL}/stores/sh01"))))
        .await
        .unwrap();
    assert_eq!(stored_sessions(&server).await, 1);
}

/// The brand names the mall a co-host of a show in the mall's store: the mall is invited, not
/// enlisted. Until it accepts, the show cannot go on air, the mall changes nothing in it, and
/// no other partner sees it — each refusal read back as having changed nothing. Accepting is
/// the mall's alone (its other store's token may not), harmless twice; starting accepts;
/// cancelling declines; and an accept racing a start never leaves a LIVE show with a host
/// that has not accepted.
#[tokio::test]
async fn a_named_co_host_is_invited_and_nothing_goes_on_air_in_its_name_until_it_accepts() {
    let server = mesh("live_invited").await;
    let mall_store = format!("partners/{MALL}/stores/sh01");
    let mut brand = sessions(&server, &server.token(BRAND));
    let created = brand
        .create_session(create("s1", draft(&mall_store)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.pending_hosts, [format!("partners/{MALL}")]);
    let name = created.name.clone();
    let read = |token: String| {
        let mut client = sessions(&server, &token);
        let request = pb::GetSessionRequest { name: name.clone() };
        async move {
            client
                .get_session(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let refused = |e: tonic::Status| (e.code(), reason(&e));

    // Not on air without the mall's word.
    let e = start(&server, BRAND, &name, "go").await.unwrap_err();
    assert_eq!(
        refused(e.clone()),
        (Code::FailedPrecondition, "HOSTS_NOT_ACCEPTED".into())
    );
    assert!(e.message().contains(&format!("partners/{MALL}")), "{e:?}");
    // The mall reads its invitation whole and finds it in its list…
    assert_eq!(read(server.token(MALL)).await.unwrap(), created);
    let listed = sessions(&server, &server.token(MALL))
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed, std::slice::from_ref(&created));
    // …but changes nothing in it before it accepts.
    let e = sessions(&server, &server.token(MALL))
        .update_session(pb::UpdateSessionRequest {
            request_id: "u1".into(),
            session: Some(pb::Session {
                name: name.clone(),
                title: "Renamed by the mall".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["title".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused(e),
        (Code::PermissionDenied, "HOST_NOT_ACCEPTED".into())
    );
    let e = ShowcaseServiceClient::new(server.as_token(&server.token(MALL)))
        .add_product(pb::AddProductRequest {
            request_id: "p1".into(),
            parent: name.clone(),
            product: Some(pb::Product {
                sku: "sku-1".into(),
                title: "Lipstick".into(),
                price: Some(lianyu_proto::common::v1::Money {
                    currency_code: "CNY".into(),
                    minor_units: 19_900,
                }),
                category: "cosmetics".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused(e),
        (Code::PermissionDenied, "HOST_NOT_ACCEPTED".into())
    );
    assert_eq!(rows(&server, "live", "products").await, 0);
    // Nobody else sees it: not another partner, not its app's viewers' listings.
    for e in [
        read(server.token(OUTSIDER)).await.unwrap_err(),
        ShowcaseServiceClient::new(server.as_token(&server.token(OUTSIDER)))
            .list_products(pb::ListProductsRequest {
                parent: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        accept(&server, OUTSIDER, &name, "a0").await.unwrap_err(),
    ] {
        assert_eq!(refused(e), (Code::NotFound, "SESSION_NOT_FOUND".into()));
    }
    // A token of another of the mall's stores does not accept for the mall.
    let e = accept_with(&server, &server.store_token(MALL, "sh02"), &name, "a0")
        .await
        .unwrap_err();
    assert_eq!(
        refused(e),
        (Code::PermissionDenied, "STORE_TOKEN_NOT_ALLOWED".into())
    );
    let unchanged = read(server.token(BRAND)).await.unwrap();
    assert_eq!(
        unchanged, created,
        "every refusal left the session as it was"
    );

    // The mall accepts; again is harmless, and so is the creator's.
    let accepted = accept(&server, MALL, &name, "a1").await.unwrap();
    assert!(accepted.pending_hosts.is_empty());
    assert_eq!(accept(&server, MALL, &name, "a2").await.unwrap(), accepted);
    assert_eq!(accept(&server, BRAND, &name, "a3").await.unwrap(), accepted);
    assert!(read(server.token(OUTSIDER)).await.unwrap().public_view);
    // Once it is announced, a partner that is not a host is refused, not told it is missing.
    let e = accept(&server, OUTSIDER, &name, "a0").await.unwrap_err();
    assert_eq!(refused(e), (Code::PermissionDenied, "HOST_ONLY".into()));

    // New revenue shares are the other host's to accept: the mall asks for 90 %, and the
    // brand — the creator — is pending until it agrees; the show stays announced.
    let shares = |mall: i32| pb::UpdateSessionRequest {
        request_id: format!("shares-{mall}"),
        session: Some(pb::Session {
            name: name.clone(),
            revenue_shares: vec![
                pb::RevenueShare {
                    partner: format!("partners/{BRAND}"),
                    share_bps: 10_000 - mall,
                },
                pb::RevenueShare {
                    partner: format!("partners/{MALL}"),
                    share_bps: mall,
                },
            ],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["revenue_shares".into()],
        }),
    };
    let reshared = sessions(&server, &server.token(MALL))
        .update_session(shares(9_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reshared.pending_hosts, [format!("partners/{BRAND}")]);
    let e = start(&server, MALL, &name, "go1").await.unwrap_err();
    assert_eq!(
        refused(e),
        (Code::FailedPrecondition, "HOSTS_NOT_ACCEPTED".into())
    );
    assert!(read(server.token(OUTSIDER)).await.unwrap().public_view);
    // Accepting with the etag of what was read before the change accepts nothing; with the
    // etag of the new terms it accepts them.
    let accept_read = |etag: String, rid: &'static str| {
        let mut client = sessions(&server, &server.token(BRAND));
        let request = pb::AcceptSessionRequest {
            request_id: rid.into(),
            name: name.clone(),
            etag,
        };
        async move {
            client
                .accept_session(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    assert_ne!(accepted.etag, reshared.etag);
    let e = accept_read(accepted.etag.clone(), "a4").await.unwrap_err();
    assert_eq!(refused(e), (Code::Aborted, "ETAG_MISMATCH".into()));
    assert_eq!(
        read(server.token(BRAND)).await.unwrap(),
        reshared,
        "nothing accepted"
    );
    // Starting accepts too, so it is bound to what was read the same way.
    let start_as = |token: String, etag: String, rid: &'static str| {
        let mut client = sessions(&server, &token);
        let request = pb::StartSessionRequest {
            request_id: rid.into(),
            name: name.clone(),
            etag,
        };
        async move {
            client
                .start_session(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let start_read = |etag: String, rid: &'static str| start_as(server.token(BRAND), etag, rid);
    let e = start_read(accepted.etag.clone(), "go-stale")
        .await
        .unwrap_err();
    assert_eq!(refused(e), (Code::Aborted, "ETAG_MISMATCH".into()));
    // An etag opens nothing to a caller that may not start the show, and tells it nothing
    // about the session's version: another partner, a store token of another store, no token.
    for (token, expected) in [
        (
            server.token(OUTSIDER),
            (Code::PermissionDenied, "HOST_ONLY"),
        ),
        (
            server.store_token(MALL, "sh02"),
            (Code::PermissionDenied, "STORE_TOKEN_NOT_ALLOWED"),
        ),
    ] {
        for etag in [reshared.etag.clone(), "stale".to_owned()] {
            let e = start_as(token.clone(), etag, "go-other").await.unwrap_err();
            assert_eq!(refused(e), (expected.0, expected.1.into()));
        }
    }
    let e = start_as(String::new(), reshared.etag.clone(), "go-anon")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(
        read(server.token(BRAND)).await.unwrap(),
        reshared,
        "nothing accepted, nothing started"
    );
    let now = accept_read(reshared.etag.clone(), "a5").await.unwrap();
    assert!(now.pending_hosts.is_empty());
    let live = start_read(now.etag.clone(), "go2").await.unwrap();
    assert_eq!(live.state, pb::SessionState::Live as i32);
    // On air the shares are fixed: refused, and read back as they were.
    let e = brand.update_session(shares(1_000)).await.unwrap_err();
    assert_eq!(
        refused(e),
        (Code::FailedPrecondition, "SESSION_STATE".into())
    );
    assert_eq!(
        read(server.token(BRAND)).await.unwrap().revenue_shares,
        reshared.revenue_shares
    );

    // Starting accepts; cancelling declines.
    let second = brand
        .create_session(create("s2", draft(&mall_store)))
        .await
        .unwrap()
        .into_inner();
    // The hosting store's token accepts for the mall (the store runs the show).
    let by_store = accept_with(
        &server,
        &server.store_token(MALL, "sh01"),
        &second.name,
        "s-a",
    )
    .await
    .unwrap();
    assert!(by_store.pending_hosts.is_empty());
    let started = start(&server, MALL, &second.name, "go").await.unwrap();
    assert_eq!(
        (started.state, started.pending_hosts.len()),
        (pb::SessionState::Live as i32, 0)
    );
    let third = brand
        .create_session(create("s3", draft(&mall_store)))
        .await
        .unwrap()
        .into_inner();
    let declined = sessions(&server, &server.token(MALL))
        .cancel_session(pb::CancelSessionRequest {
            request_id: "no".into(),
            name: third.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declined.state, pb::SessionState::Cancelled as i32);
    let e = accept(&server, MALL, &third.name, "late")
        .await
        .unwrap_err();
    assert_eq!(
        refused(e),
        (Code::FailedPrecondition, "SESSION_STATE".into())
    );

    // Two invited hosts accepting at once both count, many times over; the show then starts.
    for i in 0..10 {
        let three = pb::Session {
            hosts: vec![format!("partners/{MALL}"), format!("partners/{OUTSIDER}")],
            ..draft(&mall_store)
        };
        let show = brand
            .create_session(create(&format!("three-{i}"), three))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(show.pending_hosts.len(), 2);
        let (m, o) = (format!("three-m-{i}"), format!("three-o-{i}"));
        let (by_mall, by_outsider) = tokio::join!(
            accept(&server, MALL, &show.name, &m),
            accept(&server, OUTSIDER, &show.name, &o),
        );
        by_mall.unwrap();
        by_outsider.unwrap();
        let started = start(&server, BRAND, &show.name, &format!("three-go-{i}"))
            .await
            .unwrap();
        assert!(started.pending_hosts.is_empty(), "{i}: {started:?}");
    }

    // The mall's accept and the brand's start, sent together, many times over.
    for i in 0..20 {
        let show = brand
            .create_session(create(&format!("race-{i}"), draft(&mall_store)))
            .await
            .unwrap()
            .into_inner();
        let (a, go) = (format!("race-a-{i}"), format!("race-go-{i}"));
        let (accepted, started) = tokio::join!(
            accept(&server, MALL, &show.name, &a),
            start(&server, BRAND, &show.name, &go),
        );
        accepted.unwrap();
        let now = sessions(&server, &server.token(BRAND))
            .get_session(pb::GetSessionRequest {
                name: show.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(now.pending_hosts.is_empty());
        match started {
            Ok(s) => assert!(s.pending_hosts.is_empty()),
            Err(e) => {
                assert_eq!(
                    refused(e),
                    (Code::FailedPrecondition, "HOSTS_NOT_ACCEPTED".into())
                );
                assert_eq!(now.state, pb::SessionState::Scheduled as i32);
            }
        }
    }
}
