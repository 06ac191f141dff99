//! gRPC handlers. Every RPC the live issue has not implemented yet answers UNIMPLEMENTED
//! (the generated default), after the kit has authenticated the caller.

use lianyu_kit::Mount;
use lianyu_proto::live::v1 as pb;
use sea_orm::DatabaseConnection;

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    #[allow(dead_code, reason = "used as the live issue implements its RPCs")]
    db: DatabaseConnection,
}

pub(crate) fn register(mount: &mut Mount, db: DatabaseConnection) {
    let api = Api { db };
    lianyu_kit::mount!(
        mount,
        pb::session_service_server::SessionServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::showcase_service_server::ShowcaseServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::viewer_service_server::ViewerServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::order_service_server::OrderServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::stats_service_server::StatsServiceServer::new(api.clone())
    );
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for Api {}

#[tonic::async_trait]
impl pb::showcase_service_server::ShowcaseService for Api {}

#[tonic::async_trait]
impl pb::viewer_service_server::ViewerService for Api {}

#[tonic::async_trait]
impl pb::order_service_server::OrderService for Api {}

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for Api {}
