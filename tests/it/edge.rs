//! The edge of the mesh: every RPC authenticates its caller.

use lianyu_kit::testing::{self, all_rpcs, call_empty, connect};
use lianyu_tests::Mesh;
use tonic::Code;
use tonic_types::StatusExt;

/// Callable without a token: the credential exchange and the public keys.
const PUBLIC: [&str; 2] = [
    "/lianyu.identity.v1.AuthService/IssueToken",
    "/lianyu.identity.v1.AuthService/GetSigningKeys",
];

#[tokio::test]
async fn every_rpc_without_a_token_is_unauthenticated() {
    let mesh = Mesh::start("edge_no_token").await;
    let channel = mesh.channel().await;
    let rpcs = all_rpcs();
    assert!(
        rpcs.len() > 80,
        "the descriptor set lists {} RPCs",
        rpcs.len()
    );
    // The code, reason and domain lianyu/common/v1/common.proto promises for every RPC.
    for rpc in rpcs.iter().filter(|r| !PUBLIC.contains(&r.path.as_str())) {
        for (token, reason) in [
            (None, "TOKEN_MISSING"),
            (Some("not-a-token"), "TOKEN_INVALID"),
        ] {
            let status = call_empty(channel.clone(), rpc, token).await;
            assert_eq!(
                (
                    status.code(),
                    testing::reason(&status),
                    testing::domain(&status)
                ),
                (Code::Unauthenticated, reason.into(), "lianyu.auth".into()),
                "{}",
                rpc.path
            );
        }
    }
    for rpc in rpcs.iter().filter(|r| PUBLIC.contains(&r.path.as_str())) {
        assert_ne!(
            call_empty(channel.clone(), rpc, None).await.code(),
            Code::Unauthenticated,
            "{}",
            rpc.path
        );
    }
}

/// Whether `path` belongs to an internal contract (mesh services only).
fn internal(path: &str) -> bool {
    lianyu_proto::access::of(path) == Some(lianyu_proto::access::Access::Internal)
}

#[tokio::test]
async fn with_a_valid_token_every_rpc_gets_past_authentication() {
    let mesh = Mesh::start("edge_token").await;
    let channel = mesh.channel().await;
    let partner = mesh.token("brand-a");
    // Comarketing's token holds every internal scope there is (it calls every internal
    // contract); `a_service_token_reaches_only_the_internal_contracts_its_service_calls` checks
    // the others'.
    let service = mesh.service_token("comarketing");
    let rpcs = all_rpcs();
    assert!(rpcs.iter().any(|r| internal(&r.path)));
    for rpc in rpcs {
        // A partner's token reaches every partner RPC, a service's every internal one it calls.
        // A domain rule may still refuse (OPERATOR_ONLY); the token and its scopes may not.
        let (token, other) = if internal(&rpc.path) {
            (&service, &partner)
        } else {
            (&partner, &service)
        };
        let status = call_empty(channel.clone(), &rpc, Some(token)).await;
        let reason = status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default();
        assert!(
            !matches!(status.code(), Code::Unauthenticated | Code::Internal),
            "{}: {status:?}",
            rpc.path
        );
        assert_ne!(reason, "SCOPE_MISSING", "{}", rpc.path);
        // The other kind of caller is refused before any handler runs.
        if lianyu_proto::access::of(&rpc.path) != Some(lianyu_proto::access::Access::Public) {
            let refused = call_empty(channel.clone(), &rpc, Some(other)).await;
            assert_eq!(refused.code(), Code::PermissionDenied, "{}", rpc.path);
        }
    }
}

/// Least privilege between services: each mesh service's token gets past authentication on
/// exactly the internal contracts of the services it calls, and every other internal RPC
/// answers it PERMISSION_DENIED / SCOPE_MISSING before any handler runs — entitlements cannot
/// claim live's coupon drops, identity (which calls nobody) reaches no internal contract.
#[tokio::test]
async fn a_service_token_reaches_only_the_internal_contracts_its_service_calls() {
    let mesh = Mesh::start("edge_service_scopes").await;
    let channel = mesh.channel().await;
    let internal_rpcs: Vec<_> = all_rpcs()
        .into_iter()
        .filter(|r| internal(&r.path))
        .collect();
    let mut refused = 0;
    for service in lianyu_kit::auth::MESH_SERVICES {
        let token = mesh.service_token(service);
        let held = lianyu_kit::auth::service_scopes(service);
        for rpc in &internal_rpcs {
            let scope = lianyu_kit::auth::required_scope(&rpc.path).unwrap();
            let status = call_empty(channel.clone(), rpc, Some(&token)).await;
            let reason = status
                .get_error_details()
                .error_info()
                .map(|i| i.reason.clone())
                .unwrap_or_default();
            if held.contains(&scope.as_str()) {
                assert_ne!(reason, "SCOPE_MISSING", "{service} {}", rpc.path);
                assert_ne!(
                    status.code(),
                    Code::Unauthenticated,
                    "{service} {}",
                    rpc.path
                );
            } else {
                assert_eq!(
                    (status.code(), reason.as_str()),
                    (Code::PermissionDenied, "SCOPE_MISSING"),
                    "{service} {}",
                    rpc.path
                );
                // Named in the metadata, in the shared layer's domain (common.proto).
                let scope_named = status
                    .get_error_details()
                    .error_info()
                    .and_then(|i| i.metadata.get("scope").cloned());
                assert_eq!(
                    (testing::domain(&status), scope_named),
                    ("lianyu.auth".to_owned(), Some(scope.clone())),
                    "{service} {}",
                    rpc.path
                );
                refused += 1;
            }
        }
    }
    // Identity is refused everywhere, entitlements on entitlements' and live's contracts, live
    // on its own: not a vacuous pass.
    assert!(refused >= internal_rpcs.len() + 2, "{refused}");
}

/// A service's `run`, as its `main` calls it.
type RunAlone = fn(
    lianyu_kit::Config,
    tokio::net::TcpListener,
) -> futures::future::BoxFuture<'static, Result<(), lianyu_kit::StartError>>;

#[tokio::test]
async fn each_service_also_runs_alone() {
    let runs: [(&str, RunAlone); 4] = [
        ("identity", |c, l| {
            Box::pin(lianyu_identity::run(c, l, std::future::pending()))
        }),
        ("entitlements", |c, l| {
            Box::pin(lianyu_entitlements::run(c, l, std::future::pending()))
        }),
        ("live", |c, l| {
            Box::pin(lianyu_live::run(c, l, std::future::pending()))
        }),
        ("comarketing", |c, l| {
            Box::pin(lianyu_comarketing::run(c, l, std::future::pending()))
        }),
    ];
    for (service, run) in runs {
        let data = tempfile::tempdir().unwrap();
        let db = lianyu_kit::testing::TestDatabase::new(&format!("alone_{service}")).await;
        let mut config = lianyu_kit::Config::local(data.path());
        config.set_database_url(service, db.url.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(run(config.clone(), listener));
        let channel = connect(&address).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let ours = all_rpcs()
            .into_iter()
            .find(|r| r.path.starts_with(&format!("/lianyu.{service}.")))
            .unwrap();
        let service_name = ours
            .path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service_name.clone(),
            })
            .await
            .unwrap();
        assert_eq!(
            reply.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        assert_eq!(
            call_empty(channel.clone(), &ours, None).await.code(),
            Code::Unauthenticated
        );
        // Another service's contract is not served here.
        let foreign = all_rpcs()
            .into_iter()
            .find(|r| !r.path.starts_with(&format!("/lianyu.{service}.")))
            .unwrap();
        let token = lianyu_kit::testing::mint(
            data.path(),
            &config.auth,
            &lianyu_kit::testing::partner_token("brand-a"),
        );
        assert_eq!(
            call_empty(channel, &foreign, Some(&token)).await.code(),
            Code::Unimplemented,
            "{}",
            foreign.path
        );
        server.abort();
    }
}

/// Suspension reaches every service of the mesh at once, not at the token's expiry: a
/// suspended partner's fresh token is refused by every RPC of every service, and works again
/// the moment the operator reinstates the partner.
#[tokio::test]
async fn a_suspended_partners_tokens_are_refused_by_every_service_at_once() {
    use lianyu_proto::{common::v1::PartnerKind, identity::v1 as pb};
    let mesh = Mesh::start("edge_suspended").await;
    let channel = mesh.channel().await;
    let operator = lianyu_kit::testing::mint(
        &mesh.config.data_dir,
        &mesh.config.auth,
        &lianyu_kit::auth::TokenRequest {
            operator: true,
            ..lianyu_kit::testing::partner_token("operator")
        },
    );
    let mut partners = pb::partner_service_client::PartnerServiceClient::with_interceptor(
        channel.clone(),
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {operator}").parse().unwrap(),
            );
            Ok(r)
        },
    );
    partners
        .create_partner(pb::CreatePartnerRequest {
            request_id: "create".into(),
            partner_id: "brand-s".into(),
            partner: Some(pb::Partner {
                kind: PartnerKind::Brand as i32,
                display_name: "Brand S".into(),
                privacy_contact: "privacy@brand-s.example".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let token = mesh.token("brand-s");
    let status = |status: pb::PartnerStatus, id: &str| pb::UpdatePartnerRequest {
        request_id: id.into(),
        partner: Some(pb::Partner {
            name: "partners/brand-s".into(),
            status: status as i32,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["status".into()],
        }),
    };
    partners
        .update_partner(status(pb::PartnerStatus::Suspended, "suspend"))
        .await
        .unwrap();
    let rpcs = all_rpcs();
    for rpc in rpcs.iter().filter(|r| !PUBLIC.contains(&r.path.as_str())) {
        let refused = call_empty(channel.clone(), rpc, Some(&token)).await;
        // In the shared layer's domain, as common.proto documents.
        assert_eq!(
            (
                refused.code(),
                testing::reason(&refused),
                testing::domain(&refused)
            ),
            (
                Code::PermissionDenied,
                "PARTNER_SUSPENDED".into(),
                "lianyu.auth".into()
            ),
            "{}",
            rpc.path
        );
    }
    partners
        .update_partner(status(pb::PartnerStatus::Active, "reinstate"))
        .await
        .unwrap();
    for rpc in rpcs.iter().filter(|r| !PUBLIC.contains(&r.path.as_str())) {
        let status = call_empty(channel.clone(), rpc, Some(&token)).await;
        assert!(
            !matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) || status.message().contains("OPERATOR")
                || status
                    .get_error_details()
                    .error_info()
                    .is_some_and(|i| i.reason != "PARTNER_SUSPENDED"),
            "{}: {status:?}",
            rpc.path
        );
    }
}
