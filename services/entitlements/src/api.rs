//! gRPC handlers. Every RPC the entitlements issue has not implemented yet answers UNIMPLEMENTED
//! (the generated default), after the kit has authenticated the caller.

use lianyu_kit::Mount;
use lianyu_proto::entitlements::v1 as pb;
use sea_orm::DatabaseConnection;

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    #[allow(
        dead_code,
        reason = "used as the entitlements issue implements its RPCs"
    )]
    db: DatabaseConnection,
}

pub(crate) fn register(mount: &mut Mount, db: DatabaseConnection) {
    let api = Api { db };
    lianyu_kit::mount!(
        mount,
        pb::benefit_service_server::BenefitServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::wallet_service_server::WalletServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::redemption_service_server::RedemptionServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::ledger_service_server::LedgerServiceServer::new(api.clone())
    );
}

#[tonic::async_trait]
impl pb::benefit_service_server::BenefitService for Api {}

#[tonic::async_trait]
impl pb::wallet_service_server::WalletService for Api {}

#[tonic::async_trait]
impl pb::redemption_service_server::RedemptionService for Api {}

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for Api {}
