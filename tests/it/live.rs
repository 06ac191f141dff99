//! Live's sessions: a co-host schedules a session, every co-host reads all of it, another
//! partner only its public view; each refusal leaves nothing behind.

use lianyu_kit::{
    testing::{BRAND, MALL, OUTSIDER, TestServer, first_violation, reason, violations},
    time::{now_millis, timestamp},
};
use lianyu_proto::live::v1::{self as pb, session_service_client::SessionServiceClient};
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
    // Another partner's app sees the public view only; the operator reads no session.
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
