//! gRPC handlers: decode, call the domain and the store, encode; errors map to statuses once,
//! in [`unary`]. Every RPC the entitlements issue has not implemented yet answers UNIMPLEMENTED
//! (the generated default), after the kit has authenticated the caller.

use lianyu_kit::{
    KitError, Mount,
    call::unary,
    ids::PartnerId,
    money::Money,
    mutation::Mutations,
    names,
    time::{millis, now_millis, required_millis, timestamp},
};
use lianyu_proto::{common::v1 as common, entitlements::v1 as pb};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::{
    domain::{Benefit, BenefitDraft, BenefitKind, BenefitState, EntitlementsError},
    store,
};

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    db: DatabaseConnection,
    mutations: Mutations<EntitlementsError>,
}

pub(crate) fn register(mount: &mut Mount, db: DatabaseConnection) {
    let api = Api {
        mutations: Mutations::new(db.clone()),
        db,
    };
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

lianyu_kit::service_error!(EntitlementsError, "lianyu.entitlements", {
    BenefitNotFound => (NotFound, "BENEFIT_NOT_FOUND"),
});

#[tonic::async_trait]
impl pb::benefit_service_server::BenefitService for Api {
    async fn create_benefit(
        &self,
        request: Request<pb::CreateBenefitRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |call, r| {
            if call.who.operator {
                return Err(KitError::Denied(
                    "OPERATOR_ISSUES_NOTHING",
                    "the mesh operator issues no benefits",
                )
                .into());
            }
            // A definition binds the whole partner's money, never one store's.
            lianyu_kit::call::partner_wide(&call.who)?;
            let given = r.benefit.clone().unwrap_or_default();
            let benefit = Benefit::define(
                &PartnerId::new(call.partner_id()),
                &draft(&given),
                now_millis(),
            )?;
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    store::insert_benefit(txn, &benefit, now_millis()).await?;
                    Ok(to_proto(&benefit))
                })
                .await
        })
        .await
    }

    async fn get_benefit(
        &self,
        request: Request<pb::GetBenefitRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |call, r| {
            let [id] = names::parse(&r.name, "benefits/{benefit}")
                .map_err(|e| KitError::invalid("name", e))?;
            let benefit = store::benefit_for_party(&self.db, call.partner_id(), id)
                .await?
                .ok_or(EntitlementsError::BenefitNotFound)?;
            Ok::<_, EntitlementsError>(to_proto(&benefit))
        })
        .await
    }
}

/// The request's definition, each part parsed with its own violation.
fn draft(b: &pb::Benefit) -> BenefitDraft<'_> {
    let money = |m: &Option<common::Money>| {
        m.as_ref()
            .map(|m| Money::positive(&m.currency_code, m.minor_units))
    };
    BenefitDraft {
        display_name: &b.display_name,
        kind: match pb::BenefitKind::try_from(b.kind) {
            Ok(pb::BenefitKind::FixedCoupon) => Some(BenefitKind::FixedCoupon),
            Ok(pb::BenefitKind::PercentCoupon) => Some(BenefitKind::PercentCoupon),
            Ok(pb::BenefitKind::ThresholdCoupon) => Some(BenefitKind::ThresholdCoupon),
            Ok(pb::BenefitKind::Points) => Some(BenefitKind::Points),
            Ok(pb::BenefitKind::StoredValue) => Some(BenefitKind::StoredValue),
            Ok(pb::BenefitKind::Gift) => Some(BenefitKind::Gift),
            Ok(pb::BenefitKind::Service) => Some(BenefitKind::Service),
            Ok(pb::BenefitKind::Unspecified) | Err(_) => None,
        },
        funder: &b.funder,
        honoured_by: &b.honoured_by,
        value: money(&b.value),
        threshold: money(&b.threshold),
        percent_off_bps: b.percent_off_bps,
        budget_units: b.budget_units,
        per_member_limit: b.per_member_limit,
        valid_from: b.valid_from.as_ref().map(|t| Ok(millis(t))),
        valid_until: required_millis(b.valid_until.as_ref()),
    }
}

fn to_proto(b: &Benefit) -> pb::Benefit {
    let money = |m: &Option<Money>| {
        m.as_ref().map(|m| common::Money {
            currency_code: m.currency().to_owned(),
            minor_units: m.minor_units(),
        })
    };
    pb::Benefit {
        name: format!("benefits/{}", b.id),
        display_name: b.display_name.clone(),
        kind: match b.kind {
            BenefitKind::FixedCoupon => pb::BenefitKind::FixedCoupon,
            BenefitKind::PercentCoupon => pb::BenefitKind::PercentCoupon,
            BenefitKind::ThresholdCoupon => pb::BenefitKind::ThresholdCoupon,
            BenefitKind::Points => pb::BenefitKind::Points,
            BenefitKind::StoredValue => pb::BenefitKind::StoredValue,
            BenefitKind::Gift => pb::BenefitKind::Gift,
            BenefitKind::Service => pb::BenefitKind::Service,
        } as i32,
        funder: format!("partners/{}", b.funder),
        honoured_by: b
            .honoured_by
            .iter()
            .map(|p| format!("partners/{p}"))
            .collect(),
        value: money(&b.value),
        threshold: money(&b.threshold),
        percent_off_bps: b.percent_off_bps,
        budget_units: b.budget_units,
        granted_units: b.granted_units,
        per_member_limit: b.per_member_limit,
        valid_from: timestamp(b.valid_from_millis),
        valid_until: timestamp(b.valid_until_millis),
        state: match b.state {
            BenefitState::Draft => pb::BenefitState::Draft,
            BenefitState::Active => pb::BenefitState::Active,
            BenefitState::Paused => pb::BenefitState::Paused,
            BenefitState::Ended => pb::BenefitState::Ended,
        } as i32,
        alliance: String::new(),
    }
}

#[tonic::async_trait]
impl pb::wallet_service_server::WalletService for Api {}

#[tonic::async_trait]
impl pb::redemption_service_server::RedemptionService for Api {}

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for Api {}
