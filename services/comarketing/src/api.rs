//! gRPC handlers: decode, call the domain and the store, encode; errors map to statuses once,
//! through [`unary`] and the service's error domain `lianyu.comarketing`.

mod audience;
mod campaigns;
mod contact;
mod follow;
mod funnel;
mod operations;

use lianyu_kit::storage::StorageError;
use lianyu_kit::{
    Call, KitError, Mount,
    batched::Batched,
    directory::Directory,
    ids::{MeshMemberId, PartnerId, ScopedMemberId},
    money::Money,
    mutation::Mutations,
    names,
    time::timestamp,
};
use lianyu_proto::{comarketing::v1 as pb, common::v1 as common};
use sea_orm::DatabaseConnection;

use crate::{
    domain::{Campaign, CampaignState, ComarketingError, contact::Policy},
    store,
};

/// Requests one shared read of members or policies answers at most.
const CONTACT_READS: usize = 256;

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    db: DatabaseConnection,
    read: DatabaseConnection,
    mutations: Mutations<ComarketingError>,
    /// RequestContact, the hot write: concurrent requests share transactions and commits.
    contacts: Mutations<ComarketingError>,
    /// RequestContact's reads of a member (key: asking partner, mesh id) and of a contact
    /// policy: requests made while one read runs share the next, each answered by a read that
    /// began after it asked.
    contact_facts: Batched<(String, String), Result<Option<store::ContactFacts>, StorageError>>,
    contact_policies: Batched<String, Result<Policy, StorageError>>,
    directory: Option<Directory>,
    jobs: operations::Jobs,
    /// Keys the overlap's offsets (see `domain::overlap`): fixed per deployment, so an answer
    /// repeats across replicas and restarts.
    overlap_key: std::sync::Arc<[u8]>,
    minimum_cohort: u64,
}

pub(crate) fn register(
    ctx: &lianyu_kit::server::ServerContext,
    mount: &mut Mount,
    db: DatabaseConnection,
    read: DatabaseConnection,
    directory: Option<Directory>,
) -> Option<lianyu_kit::directory::MeshHook> {
    let api = Api {
        mutations: Mutations::new(db.clone()).reading(read.clone()),
        contacts: Mutations::new(db.clone()).grouped().reading(read.clone()),
        contact_facts: Batched::new(CONTACT_READS),
        contact_policies: Batched::new(CONTACT_READS),
        jobs: operations::Jobs::new(db.clone(), read.clone(), ctx.stopping.clone()),
        overlap_key: overlap_key(ctx),
        minimum_cohort: minimum_cohort(ctx),
        db,
        read,
        directory,
    };
    follow::start(ctx, &api);
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
        pb::operations_service_server::OperationsServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::contact_service_server::ContactServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::funnel_service_server::FunnelServiceServer::new(api)
    );
    Some(std::sync::Arc::new(|txn, events| {
        Box::pin(async move { follow::on_mesh_events(txn, &events).await })
    }))
}

/// The overlap's key: `LIANYU_COMARKETING_OVERLAP_KEY` when set (shared by every replica),
/// else derived from the database URL, which every replica shares too.
fn overlap_key(ctx: &lianyu_kit::server::ServerContext) -> std::sync::Arc<[u8]> {
    use sha2::Digest;
    let secret = ctx
        .config
        .secret("LIANYU_COMARKETING_OVERLAP_KEY")
        .map_or_else(
            || ctx.config.database_url(crate::NAME),
            |s| s.expose().to_owned(),
        );
    sha2::Sha256::digest(secret.as_bytes()).to_vec().into()
}

/// `LIANYU_COMARKETING_MINIMUM_COHORT` (a positive number), else 50. Lowering it weakens
/// every count's protection; tests lower it to work with a handful of members.
fn minimum_cohort(ctx: &lianyu_kit::server::ServerContext) -> u64 {
    ctx.config
        .var("LIANYU_COMARKETING_MINIMUM_COHORT")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(crate::domain::overlap::MINIMUM_COHORT)
}

lianyu_kit::service_error!(ComarketingError, "lianyu.comarketing", {
    CampaignNotFound => (NotFound, "CAMPAIGN_NOT_FOUND"),
    SegmentNotFound => (NotFound, "SEGMENT_NOT_FOUND"),
    OperationNotFound => (NotFound, "OPERATION_NOT_FOUND"),
    ContactNotFound => (NotFound, "CONTACT_NOT_FOUND"),
    MemberNotFound => (NotFound, "MEMBER_NOT_FOUND"),
    EtagMismatch => (Aborted, "ETAG_MISMATCH"),
});

/// Refuses the operator and store tokens: campaigns commit a whole partner.
fn partner_only(call: &Call) -> Result<(), KitError> {
    if call.who.operator {
        return Err(KitError::Denied(
            "OPERATOR_JOINS_NO_CAMPAIGN",
            "the mesh operator takes part in no campaign",
        ));
    }
    lianyu_kit::call::partner_wide(&call.who)
}

impl Api {
    /// Identity's view, or UNAVAILABLE / IDENTITY_UNAVAILABLE (fail closed).
    fn directory(&self) -> Result<&Directory, KitError> {
        lianyu_kit::directory::required(self.directory.as_ref())
    }

    /// The campaign named `name` ("campaigns/{campaign}", `field` in errors) that the caller
    /// takes part in.
    async fn campaign(
        &self,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<Campaign, ComarketingError> {
        let [id] =
            names::parse(name, "campaigns/{campaign}").map_err(|e| KitError::invalid(field, e))?;
        store::campaign_for_participant(&self.read, call.partner_id(), id, false)
            .await?
            .ok_or(ComarketingError::CampaignNotFound)
    }

    /// The mesh id of the caller's member "members/{member}" (`field` in errors);
    /// MEMBER_NOT_FOUND when the caller holds no such member.
    async fn mesh_id(
        &self,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<MeshMemberId, ComarketingError> {
        let [id] =
            names::parse(name, "members/{member}").map_err(|e| KitError::invalid(field, e))?;
        self.directory()?
            .mesh_id(call.partner_id(), &ScopedMemberId::new(id))
            .await?
            .ok_or(ComarketingError::MemberNotFound)
    }
}

fn money(currency: &str, minor_units: i64) -> Option<common::Money> {
    Some(common::Money {
        currency_code: currency.to_owned(),
        minor_units,
    })
}

fn partner_name(p: &PartnerId) -> String {
    format!("partners/{p}")
}

fn campaign_proto(c: &Campaign) -> pb::Campaign {
    let mut out = terms_proto(c);
    out.etag = lianyu_kit::keycodec::etag(&pb::Campaign {
        name: out.name.clone(),
        display_name: out.display_name.clone(),
        partners: out.partners.clone(),
        budget: out.budget.clone(),
        start_time: out.start_time,
        end_time: out.end_time,
        alliance: out.alliance.clone(),
        channels: out.channels.clone(),
        benefits: out.benefits.clone(),
        sessions: out.sessions.clone(),
        ..Default::default()
    });
    out
}

/// A campaign on the wire without its etag.
fn terms_proto(c: &Campaign) -> pb::Campaign {
    let shares = c.share_bps();
    let (currency, total) = c.budget_total().unwrap_or_default();
    let remaining = (total - c.spent).max(0);
    pb::Campaign {
        name: format!("campaigns/{}", c.id),
        display_name: c.display_name.clone(),
        partners: c.partners.iter().map(partner_name).collect(),
        budget: c
            .budget
            .iter()
            .map(|(p, m)| pb::BudgetShare {
                partner: partner_name(p),
                amount: money(m.currency(), m.minor_units()),
                share_bps: shares.iter().find(|(q, _)| q == p).map_or(0, |(_, b)| *b),
            })
            .collect(),
        start_time: timestamp(c.start_millis),
        end_time: timestamp(c.end_millis),
        state: match c.state {
            CampaignState::Draft => pb::CampaignState::Draft,
            CampaignState::Scheduled => pb::CampaignState::Scheduled,
            CampaignState::Running => pb::CampaignState::Running,
            CampaignState::Ended => pb::CampaignState::Ended,
        } as i32,
        accepted_by: c.accepted_by.iter().map(partner_name).collect(),
        alliance: if c.alliance.is_empty() {
            String::new()
        } else {
            format!("alliances/{}", c.alliance)
        },
        channels: c.channels.clone(),
        benefits: c.benefits.iter().map(|b| format!("benefits/{b}")).collect(),
        sessions: c.sessions.iter().map(|s| format!("sessions/{s}")).collect(),
        spent: (!currency.is_empty())
            .then(|| money(&currency, c.spent))
            .flatten(),
        remaining: (!currency.is_empty())
            .then(|| money(&currency, remaining))
            .flatten(),
        exhaust_time: c.exhausted_at.and_then(timestamp),
        create_time: timestamp(c.created_at),
        update_time: timestamp(c.updated_at),
        etag: String::new(),
    }
}

/// A budget share's amount: required, above zero, integer minor units.
fn amount(m: Option<&common::Money>) -> Result<Money, String> {
    let m = m.ok_or("required")?;
    Money::positive(&m.currency_code, m.minor_units)
}
