//! The error mapping seen by a client, graceful shutdown, and load shedding.

use std::time::Duration;

use lianyu_kit::Config;
use lianyu_proto::identity::v1::{GetPartnerRequest, ListPartnersRequest};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::TestServer;

#[tokio::test]
async fn invalid_arguments_arrive_with_field_violations_and_error_info() {
    let server = TestServer::start("errors_invalid").await;
    let mut client = server.partners(Some(server.token("brand-a"))).await;
    let status = client
        .list_partners(ListPartnersRequest {
            page_size: -5,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("INVALID_ARGUMENT", "lianyu.probe")
    );
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "page_size"
    );
    let status = client
        .list_partners(ListPartnersRequest {
            page_size: 10,
            page_token: "forged".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .field,
        "page_token"
    );
}

#[tokio::test]
async fn shutdown_turns_health_off_first_and_lets_an_in_flight_call_finish() {
    let mut config = Config::local("unused");
    config.limits.shutdown_delay = Duration::from_millis(400);
    let db = lianyu_kit::testing::TestDatabase::new("shutdown_drain").await;
    let mut server = TestServer::start_with(config, db.url.clone(), Some(db)).await;
    let mut client = server.partners(Some(server.token("brand-a"))).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let call = tokio::spawn(async move {
        client
            .get_partner(GetPartnerRequest {
                name: "sleep/900".into(),
            })
            .await
    });
    server.started.notified().await;
    server.stop();
    // Within the shutdown delay the listener is still open and health already says NOT_SERVING,
    // so a load balancer stops sending before connections close.
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let started = std::time::Instant::now();
    loop {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("still listening within the shutdown delay");
        if reply.into_inner().status == not_serving {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "health never turned NOT_SERVING"
        );
        tokio::task::yield_now().await;
    }
    let reply = call.await.unwrap().expect("the in-flight call completes");
    assert_eq!(reply.into_inner().name, "sleep/900");
    tokio::time::timeout(Duration::from_secs(5), server.handle)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn over_the_concurrency_limit_calls_are_shed_with_resource_exhausted() {
    let mut config = Config::local("unused");
    config.limits.max_concurrent_requests = 1;
    let db = lianyu_kit::testing::TestDatabase::new("shedding").await;
    let server = TestServer::start_with(config, db.url.clone(), Some(db)).await;
    let token = Some(server.token("brand-a"));
    let mut slow = server.partners(token.clone()).await;
    let busy = tokio::spawn(async move {
        slow.get_partner(GetPartnerRequest {
            name: "sleep/800".into(),
        })
        .await
    });
    server.started.notified().await;
    let mut client = server.partners(token).await;
    let status = client
        .get_partner(GetPartnerRequest { name: "now".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    busy.await
        .unwrap()
        .expect("the admitted call still completes");
    // Capacity is back once the slow call is done.
    client
        .get_partner(GetPartnerRequest { name: "now".into() })
        .await
        .unwrap();
}
