//! Authentication at the edge of every `lianyu.*` call.

use lianyu_kit::auth::Claims;
use lianyu_proto::identity::v1::GetPartnerRequest;
use tonic::Code;

use crate::harness::{TestServer, reason};

fn claims(server: &TestServer, exp_offset: i64) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        iss: server.config.auth.issuer.clone(),
        aud: server.config.auth.audience.clone(),
        sub: "brand-a".into(),
        exp: now + exp_offset,
        iat: now,
        jti: "t".into(),
        store: None,
        scope: "identity.read identity.write".into(),
        role: String::new(),
        cid: None,
    }
}

async fn get(server: &TestServer, token: Option<String>) -> Result<String, tonic::Status> {
    let mut client = server.partners(token).await;
    let reply = client
        .get_partner(GetPartnerRequest {
            name: "partners/x".into(),
        })
        .await?;
    Ok(reply.into_inner().display_name)
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler_as_its_partner() {
    let server = TestServer::start("auth_valid").await;
    assert_eq!(
        get(&server, Some(server.token("brand-a"))).await.unwrap(),
        "brand-a"
    );
}

#[tokio::test]
async fn no_token_is_unauthenticated() {
    let server = TestServer::start("auth_missing").await;
    let status = get(&server, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_MISSING");
}

#[tokio::test]
async fn a_tampered_signature_is_unauthenticated() {
    let server = TestServer::start("auth_signature").await;
    let token = server.token("brand-a");
    let (head, sig) = token.rsplit_once('.').unwrap();
    // Change the signature's first character: still base64url, no longer a valid signature.
    let first = if sig.starts_with('A') { "B" } else { "A" };
    let flipped = format!("{first}{}", &sig[1..]);
    let status = get(&server, Some(format!("{head}.{flipped}")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_INVALID");
    // A key the server does not trust, with the trusted key's id, fails the same way.
    let stranger = lianyu_kit::auth::Signer::generate();
    let forged = stranger.sign(&claims(&server, 600)).unwrap();
    assert_eq!(
        get(&server, Some(forged)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let server = TestServer::start("auth_expired").await;
    let token = server.dev_key().sign(&claims(&server, -120)).unwrap();
    let status = get(&server, Some(token)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_EXPIRED");
}

#[tokio::test]
async fn a_token_for_another_audience_is_unauthenticated() {
    let server = TestServer::start("auth_audience").await;
    let mut c = claims(&server, 600);
    c.aud = "someone-else".into();
    let status = get(&server, Some(server.dev_key().sign(&c).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "TOKEN_AUDIENCE_MISMATCH");
}

#[tokio::test]
async fn a_missing_scope_is_permission_denied() {
    let server = TestServer::start("auth_scope").await;
    let mut c = claims(&server, 600);
    c.scope = "live.read identity.write".into();
    let status = get(&server, Some(server.dev_key().sign(&c).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "SCOPE_MISSING");
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let server = TestServer::start("auth_open").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "lianyu.identity.v1.PartnerService".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        reply.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
