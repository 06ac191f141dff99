//! CampaignService: propose, read, list, change, accept, launch and end joint campaigns.

use lianyu_kit::{
    KitError, call::unary, ids::PartnerId, mask, page::Page, time::now_millis,
    time::required_millis,
};
use lianyu_proto::comarketing::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Api, amount, campaign_proto, partner_only};
use crate::{
    domain::{Campaign, CampaignDraft, CampaignState, ComarketingError, UPDATABLE},
    store,
};

/// A proposal's fields as the domain checks them.
fn draft(given: &pb::Campaign) -> CampaignDraft<'_> {
    CampaignDraft {
        display_name: &given.display_name,
        partners: &given.partners,
        budget: given
            .budget
            .iter()
            .map(|share| (share.partner.as_str(), amount(share.amount.as_ref())))
            .collect(),
        start: required_millis(given.start_time.as_ref()),
        end: required_millis(given.end_time.as_ref()),
        alliance: &given.alliance,
        channels: &given.channels,
        benefits: &given.benefits,
        sessions: &given.sessions,
    }
}

/// What a transition does to a campaign the caller takes part in.
type Step = fn(&mut Campaign, &PartnerId, i64) -> Result<(), KitError>;

impl Api {
    /// Runs `step` on the campaign `name` under its row lock, as the caller's mutation; when
    /// `etag` is given, only on the terms it stands for (ABORTED / ETAG_MISMATCH otherwise).
    async fn transition(
        &self,
        call: lianyu_kit::Call,
        request_id: &str,
        request: &impl prost::Message,
        (name, etag): (&str, &str),
        step: Step,
    ) -> Result<pb::Campaign, ComarketingError> {
        partner_only(&call)?;
        let [id] = lianyu_kit::names::parse(name, "campaigns/{campaign}")
            .map_err(|e| KitError::invalid("name", e))?;
        let me = PartnerId::new(call.partner_id());
        self.mutations
            .run(&call, request_id, request, async |txn| {
                let mut c = store::campaign_for_participant(txn, me.as_str(), id, true)
                    .await?
                    .ok_or(ComarketingError::CampaignNotFound)?;
                if !etag.is_empty() && etag != campaign_proto(&c).etag {
                    return Err(ComarketingError::EtagMismatch);
                }
                step(&mut c, &me, now_millis())?;
                store::save_campaign(txn, &c).await?;
                Ok(campaign_proto(&c))
            })
            .await
    }
}

#[tonic::async_trait]
impl pb::campaign_service_server::CampaignService for Api {
    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        unary(request, async |call, r| {
            partner_only(&call)?;
            let given = r.campaign.clone().unwrap_or_default();
            let campaign = Campaign::propose(
                &PartnerId::new(call.partner_id()),
                &draft(&given),
                now_millis(),
            )?;
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    store::insert_campaign(txn, &campaign).await?;
                    Ok(campaign_proto(&campaign))
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
            Ok::<_, ComarketingError>(campaign_proto(
                &self.campaign(&call, &r.name, "name").await?,
            ))
        })
        .await
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        unary(request, async |call, r| {
            let state = match pb::CampaignState::try_from(r.state) {
                Ok(pb::CampaignState::Unspecified) => None,
                Ok(pb::CampaignState::Draft) => Some(CampaignState::Draft),
                Ok(pb::CampaignState::Scheduled) => Some(CampaignState::Scheduled),
                Ok(pb::CampaignState::Running) => Some(CampaignState::Running),
                Ok(pb::CampaignState::Ended) => Some(CampaignState::Ended),
                Err(_) => return Err(KitError::invalid("state", "not a campaign state").into()),
            };
            let filter = r.state.to_string();
            let mut page = Page::parse(r.page_size, &r.page_token, &[call.partner_id(), &filter])?;
            page.size = page.size.min(500);
            let (campaigns, next_page_token) =
                store::list_campaigns(&self.read, call.partner_id(), state, &page).await?;
            Ok::<_, ComarketingError>(pb::ListCampaignsResponse {
                campaigns: campaigns.iter().map(campaign_proto).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn update_campaign(
        &self,
        request: Request<pb::UpdateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        unary(request, async |call, r| {
            partner_only(&call)?;
            let given = r.campaign.clone().unwrap_or_default();
            let [id] = lianyu_kit::names::parse(&given.name, "campaigns/{campaign}")
                .map_err(|e| KitError::invalid("campaign.name", e))?;
            let paths = mask::paths(r.update_mask.as_ref(), UPDATABLE)?;
            let me = PartnerId::new(call.partner_id());
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let mut c = store::campaign_for_participant(txn, me.as_str(), id, true)
                        .await?
                        .ok_or(ComarketingError::CampaignNotFound)?;
                    if c.state != CampaignState::Draft {
                        return Err(c.state.refuse("only a DRAFT campaign changes").into());
                    }
                    // The current terms with the masked fields replaced, checked as a whole.
                    let mut merged = campaign_proto(&c);
                    // The proposer is added first by the check; list the others.
                    let proposer = c.partners.first().cloned().ok_or_else(|| {
                        KitError::Internal("a stored campaign without participants".into())
                    })?;
                    merged
                        .partners
                        .retain(|p| *p != format!("partners/{proposer}"));
                    for path in &paths {
                        match *path {
                            "display_name" => merged.display_name = given.display_name.clone(),
                            "partners" => merged.partners = given.partners.clone(),
                            "budget" => merged.budget = given.budget.clone(),
                            "start_time" => merged.start_time = given.start_time,
                            "end_time" => merged.end_time = given.end_time,
                            "channels" => merged.channels = given.channels.clone(),
                            "benefits" => merged.benefits = given.benefits.clone(),
                            "sessions" => merged.sessions = given.sessions.clone(),
                            _ => merged.alliance = given.alliance.clone(),
                        }
                    }
                    let changed = Campaign::propose(&proposer, &draft(&merged), now_millis())?;
                    c.revise(&me, changed, now_millis())?;
                    store::save_campaign(txn, &c).await?;
                    Ok(campaign_proto(&c))
                })
                .await
        })
        .await
    }

    async fn accept_campaign(
        &self,
        request: Request<pb::AcceptCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        unary(request, async |call, r| {
            self.transition(call, &r.request_id, &r, (&r.name, &r.etag), |c, me, now| {
                c.accept(me, now)
            })
            .await
        })
        .await
    }

    async fn launch_campaign(
        &self,
        request: Request<pb::LaunchCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        unary(request, async |call, r| {
            self.transition(call, &r.request_id, &r, (&r.name, ""), |c, _, now| {
                c.launch(now)
            })
            .await
        })
        .await
    }

    async fn end_campaign(
        &self,
        request: Request<pb::EndCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        unary(request, async |call, r| {
            self.transition(call, &r.request_id, &r, (&r.name, ""), |c, _, now| {
                c.end(now)
            })
            .await
        })
        .await
    }
}
