//! `request_id` idempotency: replays get the stored response, reuse is refused.

use lianyu_kit::storage::entities::outbox_event;
use lianyu_proto::identity::v1::CreatePartnerRequest;
use sea_orm::{EntityTrait, PaginatorTrait};
use tonic::Code;

use crate::harness::{TestServer, reason};

fn create(request_id: &str, partner_id: &str) -> CreatePartnerRequest {
    CreatePartnerRequest {
        request_id: request_id.into(),
        partner_id: partner_id.into(),
        partner: None,
    }
}

#[tokio::test]
async fn a_replay_returns_the_first_response_without_repeating_the_effect() {
    let server = TestServer::start("idem_replay").await;
    let mut client = server.partners(Some(server.token("brand-a"))).await;
    let first = client
        .create_partner(create("r-1", "p1"))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_partner(create("r-1", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(
        outbox_event::Entity::find()
            .count(&server.db)
            .await
            .unwrap(),
        1
    );
    // A new request_id is a new call.
    let other = client
        .create_partner(create("r-2", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.display_name, first.display_name);
}

#[tokio::test]
async fn the_same_request_id_with_a_different_request_is_refused() {
    let server = TestServer::start("idem_reuse").await;
    let mut client = server.partners(Some(server.token("brand-a"))).await;
    client.create_partner(create("r-1", "p1")).await.unwrap();
    let status = client
        .create_partner(create("r-1", "p2"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(reason(&status), "REQUEST_ID_REUSED");
    assert_eq!(
        outbox_event::Entity::find()
            .count(&server.db)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn request_ids_are_scoped_to_the_calling_partner() {
    let server = TestServer::start("idem_scope").await;
    let mut a = server.partners(Some(server.token("brand-a"))).await;
    let mut b = server.partners(Some(server.token("mall-b"))).await;
    a.create_partner(create("same", "p1")).await.unwrap();
    b.create_partner(create("same", "p2")).await.unwrap();
    assert_eq!(
        outbox_event::Entity::find()
            .count(&server.db)
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn a_malformed_request_id_is_invalid_argument() {
    let server = TestServer::start("idem_invalid").await;
    let mut client = server.partners(Some(server.token("brand-a"))).await;
    let status = client
        .create_partner(create(&"x".repeat(200), "p1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn expired_keys_are_forgotten_and_fresh_ones_kept() {
    let server = TestServer::start("idem_expiry").await;
    let mut client = server.partners(Some(server.token("brand-a"))).await;
    let first = client
        .create_partner(create("r-1", "p1"))
        .await
        .unwrap()
        .into_inner();
    let keep_a_day = std::time::Duration::from_secs(24 * 3600);
    assert_eq!(
        lianyu_kit::idempotency::expire(&server.db, keep_a_day)
            .await
            .unwrap(),
        0,
        "a fresh key is kept"
    );
    assert_eq!(
        client
            .create_partner(create("r-1", "p1"))
            .await
            .unwrap()
            .into_inner(),
        first
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        lianyu_kit::idempotency::expire(&server.db, std::time::Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    // Forgotten: the same id now runs the effect again.
    let again = client
        .create_partner(create("r-1", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.display_name, first.display_name);
    assert_eq!(
        outbox_event::Entity::find()
            .count(&server.db)
            .await
            .unwrap(),
        2
    );
}
