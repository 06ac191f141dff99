//! What a newcomer's tools see: reflection lists every service, health reports each one.

use futures::StreamExt;
use lianyu_tests::Mesh;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const EXPECTED: [&str; 19] = [
    "lianyu.identity.v1.PartnerService",
    "lianyu.identity.v1.AuthService",
    "lianyu.identity.v1.MemberService",
    "lianyu.identity.v1.ConsentService",
    "lianyu.identity.v1.AuditService",
    "lianyu.entitlements.v1.BenefitService",
    "lianyu.entitlements.v1.WalletService",
    "lianyu.entitlements.v1.RedemptionService",
    "lianyu.entitlements.v1.LedgerService",
    "lianyu.live.v1.SessionService",
    "lianyu.live.v1.ShowcaseService",
    "lianyu.live.v1.ViewerService",
    "lianyu.live.v1.OrderService",
    "lianyu.live.v1.StatsService",
    "lianyu.comarketing.v1.CampaignService",
    "lianyu.comarketing.v1.AudienceService",
    "lianyu.comarketing.v1.ContactService",
    "lianyu.comarketing.v1.FunnelService",
    "lianyu.comarketing.v1.OperationsService",
];

/// One reflection v1 request on `channel` and its answer.
async fn reflect(
    channel: tonic::transport::Channel,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> tonic_reflection::pb::v1::server_reflection_response::MessageResponse {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }]))
        .await
        .unwrap()
        .into_inner();
    replies
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

#[tokio::test]
async fn reflection_v1_lists_every_lianyu_service_and_health() {
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mesh = Mesh::start("reflection_v1").await;
    let MessageResponse::ListServicesResponse(list) = reflect(
        mesh.channel().await,
        MessageRequest::ListServices(String::new()),
    )
    .await
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in EXPECTED.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn reflection_v1alpha_answers_for_older_clients() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mesh = Mesh::start("reflection_v1alpha").await;
    let mut client = ServerReflectionClient::new(mesh.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "lianyu.identity.v1.ConsentService".into(),
        )),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        replies.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn health_reports_every_service_serving_by_its_full_name() {
    let mesh = Mesh::start("health").await;
    let mut health = HealthClient::new(mesh.channel().await);
    for service in EXPECTED.iter().chain(&[""]) {
        let reply = health
            .check(HealthCheckRequest {
                service: (*service).into(),
            })
            .await
            .unwrap();
        assert_eq!(
            reply.into_inner().status,
            ServingStatus::Serving as i32,
            "{service}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "lianyu.nope.v1.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// Error details decode in tools that rely on reflection (`buf curl`, grpcurl): the server
/// serves `google/rpc/error_details.proto`, by name and by any of its messages.
#[tokio::test]
async fn reflection_serves_the_error_details_every_refusal_carries() {
    use prost::Message;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mesh = Mesh::start("reflection_error_details").await;
    let requests = [
        MessageRequest::FileByFilename("google/rpc/error_details.proto".into()),
        MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into()),
        MessageRequest::FileContainingSymbol("google.rpc.ErrorInfo".into()),
        MessageRequest::FileContainingSymbol("google.rpc.Status".into()),
    ];
    for request in requests {
        let asked = format!("{request:?}");
        let MessageResponse::FileDescriptorResponse(files) =
            reflect(mesh.channel().await, request).await
        else {
            panic!("{asked}: expected file descriptors");
        };
        let names: Vec<String> = files
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
            .map(|file| file.name().to_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("google/rpc/")),
            "{asked}: {names:?}"
        );
    }
}
