//! gRPC handlers. Every RPC the comarketing issue has not implemented yet answers UNIMPLEMENTED
//! (the generated default), after the kit has authenticated the caller.

use lianyu_kit::Mount;
use lianyu_proto::comarketing::v1 as pb;
use sea_orm::DatabaseConnection;

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    #[allow(
        dead_code,
        reason = "used as the comarketing issue implements its RPCs"
    )]
    db: DatabaseConnection,
}

pub(crate) fn register(mount: &mut Mount, db: DatabaseConnection) {
    let api = Api { db };
    lianyu_kit::mount!(
        mount,
        pb::campaign_service_server::CampaignServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::audience_service_server::AudienceServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::contact_service_server::ContactServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::funnel_service_server::FunnelServiceServer::new(api.clone())
    );
}

#[tonic::async_trait]
impl pb::campaign_service_server::CampaignService for Api {}

#[tonic::async_trait]
impl pb::audience_service_server::AudienceService for Api {}

#[tonic::async_trait]
impl pb::contact_service_server::ContactService for Api {}

#[tonic::async_trait]
impl pb::funnel_service_server::FunnelService for Api {}
