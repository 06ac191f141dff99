//! gRPC handlers: decode, call the domain and the store, encode; errors map to statuses once,
//! in [`unary`]. Every RPC the comarketing issue has not implemented yet answers UNIMPLEMENTED
//! (the generated default), after the kit has authenticated the caller.

use lianyu_kit::{
    KitError, Mount,
    call::{partner_wide, unary},
    ids::PartnerId,
    money::Money,
    mutation::Mutations,
    names,
    time::{now_millis, required_millis, timestamp},
};
use lianyu_proto::{comarketing::v1 as pb, common::v1 as common};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::{
    domain::{Campaign, CampaignDraft, CampaignState, ComarketingError},
    store,
};

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    db: DatabaseConnection,
    mutations: Mutations<ComarketingError>,
}

pub(crate) fn register(
    _ctx: &lianyu_kit::server::ServerContext,
    mount: &mut Mount,
    db: DatabaseConnection,
    _read: DatabaseConnection,
    _directory: Option<lianyu_kit::directory::Directory>,
) -> Option<lianyu_kit::directory::MeshHook> {
    let api = Api {
        mutations: Mutations::new(db.clone()),
        db,
    };
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
    None
}

lianyu_kit::service_error!(ComarketingError, "lianyu.comarketing", {
    CampaignNotFound => (NotFound, "CAMPAIGN_NOT_FOUND"),
});

#[tonic::async_trait]
impl pb::campaign_service_server::CampaignService for Api {
    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        unary(request, async |call, r| {
            if call.who.operator {
                return Err(KitError::Denied(
                    "OPERATOR_JOINS_NO_CAMPAIGN",
                    "the mesh operator takes part in no campaign",
                )
                .into());
            }
            // A campaign commits the whole partner's budget, never one store's.
            partner_wide(&call.who)?;
            let given = r.campaign.clone().unwrap_or_default();
            let draft = CampaignDraft {
                display_name: &given.display_name,
                partners: &given.partners,
                budget: given
                    .budget
                    .iter()
                    .map(|share| (share.partner.as_str(), amount(share.amount.as_ref())))
                    .collect(),
                start: required_millis(given.start_time.as_ref()),
                end: required_millis(given.end_time.as_ref()),
            };
            let campaign =
                Campaign::propose(&PartnerId::new(call.partner_id()), &draft, now_millis())?;
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    store::insert_campaign(txn, &campaign, now_millis()).await?;
                    Ok(to_proto(&campaign))
                })
                .await
        })
        .await
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        unary(request, async |call, r| {
            let [id] = names::parse(&r.name, "campaigns/{campaign}")
                .map_err(|e| KitError::invalid("name", e))?;
            let campaign = store::campaign_for_participant(&self.db, call.partner_id(), id)
                .await?
                .ok_or(ComarketingError::CampaignNotFound)?;
            Ok::<_, ComarketingError>(to_proto(&campaign))
        })
        .await
    }
}

/// A budget share's amount: required, above zero, integer minor units.
fn amount(m: Option<&common::Money>) -> Result<Money, String> {
    let m = m.ok_or("required")?;
    Money::positive(&m.currency_code, m.minor_units)
}

fn to_proto(c: &Campaign) -> pb::Campaign {
    let partner = |p: &PartnerId| format!("partners/{p}");
    pb::Campaign {
        name: format!("campaigns/{}", c.id),
        display_name: c.display_name.clone(),
        partners: c.partners.iter().map(partner).collect(),
        budget: c
            .budget
            .iter()
            .map(|(p, m)| pb::BudgetShare {
                partner: partner(p),
                amount: Some(common::Money {
                    currency_code: m.currency().to_owned(),
                    minor_units: m.minor_units(),
                }),
            })
            .collect(),
        start_time: timestamp(c.start_millis),
        end_time: timestamp(c.end_millis),
        state: match c.state {
            CampaignState::Proposed => pb::CampaignState::Proposed,
            CampaignState::Accepted => pb::CampaignState::Accepted,
            CampaignState::Live => pb::CampaignState::Live,
            CampaignState::Ended => pb::CampaignState::Ended,
        } as i32,
        accepted_by: c.accepted_by.iter().map(partner).collect(),
        alliance: String::new(),
    }
}

#[tonic::async_trait]
impl pb::audience_service_server::AudienceService for Api {}

#[tonic::async_trait]
impl pb::contact_service_server::ContactService for Api {}

#[tonic::async_trait]
impl pb::funnel_service_server::FunnelService for Api {}
