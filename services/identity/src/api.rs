//! gRPC handlers. Every RPC the identity issue has not implemented yet answers UNIMPLEMENTED
//! (the generated default), after the kit has authenticated the caller.

use lianyu_kit::Mount;
use lianyu_proto::identity::v1 as pb;
use sea_orm::DatabaseConnection;

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    #[allow(dead_code, reason = "used as the identity issue implements its RPCs")]
    db: DatabaseConnection,
}

pub(crate) fn register(mount: &mut Mount, db: DatabaseConnection) {
    let api = Api { db };
    lianyu_kit::mount!(
        mount,
        pb::partner_service_server::PartnerServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::auth_service_server::AuthServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::member_service_server::MemberServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::consent_service_server::ConsentServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::audit_service_server::AuditServiceServer::new(api.clone())
    );
}

#[tonic::async_trait]
impl pb::partner_service_server::PartnerService for Api {}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for Api {}

#[tonic::async_trait]
impl pb::member_service_server::MemberService for Api {}

#[tonic::async_trait]
impl pb::consent_service_server::ConsentService for Api {}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for Api {}
