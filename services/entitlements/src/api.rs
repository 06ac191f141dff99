//! gRPC handlers: decode, call the domain and the store, encode; errors map to statuses once,
//! in [`unary`].

mod balances;
mod gate;
mod ledger;
mod redemptions;
mod wallet;

use lianyu_kit::{
    KitError, Mount,
    batched::Batched,
    call::unary,
    directory::{Directory, Question},
    feed::{Feed, NewEvent},
    ids::{MeshMemberId, PartnerId, ScopedMemberId},
    money::Money,
    mutation::Mutations,
    names,
    page::Page,
    storage::StorageError,
    time::{millis, now_millis, required_millis, timestamp},
    writes::Writes,
};
use lianyu_proto::{
    common::v1 as common,
    entitlements::{internal::v1 as internal, v1 as pb},
};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::{
    domain::{Benefit, BenefitDraft, BenefitKind, BenefitState, EntitlementsError, Transition},
    store,
};

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    /// The writer; reads outside a mutation use `read`.
    db: DatabaseConnection,
    read: DatabaseConnection,
    mutations: Mutations<EntitlementsError>,
    /// Claims and redemptions: the hot paths, group-committed.
    hot: Mutations<EntitlementsError>,
    /// Identity: members' mesh ids and consent decisions. `None` when identity is not
    /// configured, and then every call that needs it fails closed.
    directory: Option<Directory>,
    /// Claims meet a benefit's gate before the database (see gate.rs).
    gates: gate::Gates,
    /// The ledger's outbox: each party's side of every ledger transaction.
    feed: Feed,
    /// Reads of benefit definitions on `read`, batched: every grant and every redemption
    /// reads its benefit, and those asked while one read runs share the next
    /// ([`Api::benefit_now`]) — never an answer read before the call began.
    benefit_reads: Batched<String, Result<Option<Benefit>, StorageError>>,
}

/// The benefit id a name "benefits/{benefit}" in `field` gives.
pub(crate) fn benefit_id<'a>(name: &'a str, field: &str) -> Result<&'a str, KitError> {
    let [id] = names::parse(name, "benefits/{benefit}").map_err(|e| KitError::invalid(field, e))?;
    Ok(id)
}

/// Callers one batched read of benefits answers at most.
const BENEFIT_READS: usize = 256;

pub(crate) fn register(
    ctx: &lianyu_kit::server::ServerContext,
    mount: &mut Mount,
    db: DatabaseConnection,
    read: DatabaseConnection,
    directory: Option<Directory>,
) -> Option<lianyu_kit::directory::MeshHook> {
    let feed = Feed::new(read.clone(), ctx.stopping.clone())
        .listening(&ctx.config.database_url(crate::NAME), crate::NAME);
    let api = Api {
        read: read.clone(),
        // Nearly every mutation posts to the ledger, and so appends to the feed: its events
        // are staged (`Api::post`) and numbered at commit, so the feed's counter is the last
        // lock any transaction here takes, held only while it commits; grouped transactions
        // never wait on it for another's whole batch and never deadlock on it.
        mutations: Mutations::new(db.clone())
            .reading(read.clone())
            .publishing(feed.clone(), None),
        // Lanes (several on PostgreSQL): each mutation takes the lane its contended row
        // hashes to ([`Mutations::keyed`]) — a grant or a claim its benefit's (every grant of
        // a benefit updates its budget row, so they queue in one lane instead of holding each
        // other's batches up across lanes, and a benefit's row is only ever locked by one
        // lane, so two batches cannot take two budget rows in opposite orders), a redemption
        // at a till or a confirmed hold its member's, and whatever may spend or give back a
        // money budget (a till's redemption of such a benefit, a refund, a cancelled hold)
        // its benefit's. On SQLite's one writer all share its one lane.
        hot: Mutations::new(db.clone())
            .grouped()
            .reading(read.clone())
            .publishing(feed.clone(), None),
        feed,
        directory,
        gates: gate::Gates::default(),
        benefit_reads: Batched::new(BENEFIT_READS),
        db,
    };
    // How stored replies are kept: an erasure purges those about the person.
    let at_rest = api.hot.at_rest();
    tokio::spawn(redemptions::expire_holds(api.clone(), ctx.stopping.clone()));
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
    lianyu_kit::mount!(
        mount,
        lianyu_proto::entitlements::internal::v1::drop_service_server::DropServiceServer::new(
            api.clone()
        )
    );
    lianyu_kit::mount!(
        mount,
        internal::ledger_feed_service_server::LedgerFeedServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        internal::campaign_budget_service_server::CampaignBudgetServiceServer::new(api.clone())
    );
    Some(std::sync::Arc::new(move |txn, events| {
        let at_rest = at_rest.clone();
        Box::pin(async move {
            for event in &events {
                on_mesh_event(txn, event, at_rest.as_ref()).await?;
            }
            Ok(())
        })
    }))
}

/// Integer minor units of a currency, as the contract carries them.
fn money(currency: &str, minor_units: i64) -> Option<common::Money> {
    Some(common::Money {
        currency_code: currency.to_owned(),
        minor_units,
    })
}

/// Identity's word on a member, acted on in the transaction that stores the feed's cursor:
/// a withdrawn BENEFIT_REDEMPTION consent cancels the holds the grantee has on the member's
/// units granted through the collector (new redemptions there already ask identity and are
/// refused); an erasure at a partner closes the member's wallet there, and removes the member
/// from what the service keeps of what they did through that partner: the internal ledger
/// feed's events and the partner's stored replies. Postings name partners' accounts only,
/// never a member.
async fn on_mesh_event(
    txn: &sea_orm::DatabaseTransaction,
    event: &lianyu_proto::identity::internal::v1::WatchMeshEventsResponse,
    at_rest: &dyn lianyu_kit::idempotency::AtRest,
) -> Result<(), KitError> {
    use lianyu_proto::identity::internal::v1::MeshEventKind;
    let (Some(member), Some(partner)) = (
        event.mesh_member.strip_prefix("meshMembers/"),
        event.partner.strip_prefix("partners/"),
    ) else {
        return Ok(());
    };
    match event.kind() {
        MeshEventKind::ConsentWithdrawn
            if event
                .purposes
                .contains(&(common::ConsentPurpose::BenefitRedemption as i32)) =>
        {
            let grantee = event.grantee.strip_prefix("partners/");
            let n = store::cancel_holds(txn, member, partner, grantee).await?;
            if n > 0 {
                tracing::info!(holds = n, "consent withdrawn: holds cancelled");
            }
        }
        MeshEventKind::MemberErased => {
            let units = store::close_wallet(txn, member, partner).await?;
            let events = forget_in_ledger_feed(txn, member, partner).await?;
            // The partner's stored replies about the person (its grants, claims, top-ups,
            // earnings, redemptions): a replay returns nothing of them from now on
            // (NOT_FOUND / MEMBER_ERASED), and takes nothing again.
            let replies = lianyu_kit::idempotency::forget_subjects(
                txn,
                at_rest,
                Some(partner),
                &[member.to_owned()],
            )
            .await?;
            tracing::info!(units, events, replies, "member erased: wallet closed");
        }
        _ => {}
    }
    Ok(())
}

/// Rewrites the internal ledger feed's transactions in which `member` acted through `partner`
/// (a grant or claim through it, a redemption, refund or balance movement at it): they keep
/// their sequence, postings and partner, and name no member. What the member did through
/// another partner is that partner's, and stays. The partners' own ledger feeds never name a
/// member.
async fn forget_in_ledger_feed(
    txn: &sea_orm::DatabaseTransaction,
    member: &str,
    partner: &str,
) -> Result<u64, KitError> {
    let through = format!("partners/{partner}");
    Ok(Feed::rewrite_about(txn, member, |stored| {
        let mut body = stored.decode::<internal::WatchLedgerResponse>()?;
        let transaction = body.transaction.as_mut()?;
        if transaction.partner != through {
            return None;
        }
        transaction.mesh_member.clear();
        Some(prost::Message::encode_to_vec(&body))
    })
    .await?)
}

lianyu_kit::service_error!(EntitlementsError, "lianyu.entitlements", {
    BenefitNotFound => (NotFound, "BENEFIT_NOT_FOUND"),
    MemberNotFound => (NotFound, "MEMBER_NOT_FOUND"),
    WalletItemNotFound => (NotFound, "WALLET_ITEM_NOT_FOUND"),
    RedemptionNotFound => (NotFound, "REDEMPTION_NOT_FOUND"),
    EarningNotFound => (NotFound, "EARNING_NOT_FOUND"),
    SpendNotFound => (NotFound, "SPEND_NOT_FOUND"),
    EtagMismatch => (Aborted, "ETAG_MISMATCH"),
});

/// The outbox topic of the internal ledger feed: a `:` no partner id holds, so no partner's
/// WatchLedgerEvents ever serves one.
pub(crate) const WHOLE_LEDGER: &str = ":ledger";

/// What a ledger transaction is: its kind, benefit and redemption, and the member it is about
/// with the partner they acted through (for the internal ledger feed).
pub(crate) struct Movement<'a> {
    pub(crate) kind: &'static str,
    pub(crate) benefit: &'a crate::domain::Benefit,
    pub(crate) redemption: Option<&'a str>,
    pub(crate) member: Option<&'a str>,
    pub(crate) through: Option<&'a PartnerId>,
}

impl Api {
    /// Posts a balanced ledger transaction and tells each party its own side on the ledger
    /// feed, and the mesh's services the whole of it on the internal ledger feed, in the
    /// caller's transaction: the postings now, the feed's events staged in `writes` for its
    /// commit. Returns the transaction's id (`None` when there was nothing to post).
    async fn post(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        writes: &mut Writes,
        m: Movement<'_>,
        postings: &[crate::domain::Posting],
        at: i64,
    ) -> Result<Option<String>, KitError> {
        let (kind, benefit_id, redemption_id) = (m.kind, m.benefit.id.as_str(), m.redemption);
        let Some((transaction, at)) =
            store::post(txn, writes, kind, benefit_id, redemption_id, postings, at).await?
        else {
            return Ok(None);
        };
        let mut parties: Vec<&PartnerId> = postings.iter().map(|p| &p.partner).collect();
        parties.sort();
        parties.dedup();
        for party in parties {
            let entry = pb::LedgerEntry {
                name: format!("ledgerEntries/{transaction}"),
                transaction: kind.to_owned(),
                postings: postings
                    .iter()
                    .filter(|p| p.partner == *party)
                    .map(|p| pb::Posting {
                        account: p.account.clone(),
                        amount: money(&p.currency, p.amount),
                        benefit: format!("benefits/{benefit_id}"),
                    })
                    .collect(),
                redemption: redemption_id
                    .map(|r| format!("redemptions/{r}"))
                    .unwrap_or_default(),
                post_time: timestamp(at),
            };
            let body = pb::WatchLedgerEventsResponse {
                cursor: None,
                entry: Some(entry),
            };
            self.feed.append_staged(
                writes,
                NewEvent::message(kind, Some(party.to_string()), &body),
            );
        }
        let whole = internal::WatchLedgerResponse {
            cursor: None,
            transaction: Some(internal::LedgerTransaction {
                name: format!("ledgerEntries/{transaction}"),
                transaction: kind.to_owned(),
                benefit: format!("benefits/{benefit_id}"),
                issuer: format!("partners/{}", m.benefit.issuer),
                funder: format!("partners/{}", m.benefit.funder),
                postings: postings
                    .iter()
                    .map(|p| internal::PartyPosting {
                        partner: format!("partners/{}", p.partner),
                        account: p.account.clone(),
                        amount: money(&p.currency, p.amount),
                    })
                    .collect(),
                mesh_member: m
                    .member
                    .map(|x| format!("meshMembers/{x}"))
                    .unwrap_or_default(),
                partner: m
                    .through
                    .map(|x| format!("partners/{x}"))
                    .unwrap_or_default(),
                redemption: redemption_id
                    .map(|r| format!("redemptions/{r}"))
                    .unwrap_or_default(),
                post_time: timestamp(at),
            }),
        };
        // Tagged with the member it names, by mesh id: an erasure finds it and rewrites it.
        let whole = NewEvent::message(kind, Some(WHOLE_LEDGER.to_owned()), &whole);
        self.feed.append_staged(
            writes,
            match m.member {
                Some(member) => whole.about(member),
                None => whole,
            },
        );
        Ok(Some(transaction))
    }

    /// Identity's view, or UNAVAILABLE / IDENTITY_UNAVAILABLE (fail closed).
    fn directory(&self) -> Result<&Directory, KitError> {
        lianyu_kit::directory::required(self.directory.as_ref())
    }

    /// The mesh id of the caller's member `scoped`; MEMBER_NOT_FOUND when the caller holds
    /// no such member.
    async fn mesh_id(
        &self,
        partner: &str,
        scoped: &str,
    ) -> Result<MeshMemberId, EntitlementsError> {
        self.directory()?
            .mesh_id(partner, &ScopedMemberId::new(scoped))
            .await?
            .ok_or(EntitlementsError::MemberNotFound)
    }

    /// Whether the member, known to `grantor`, consented that `grantee` use them for benefit
    /// redemption: asked of identity now (value moves on it), audited there.
    async fn may_redeem(
        &self,
        acting: &str,
        member: &MeshMemberId,
        grantor: &str,
        grantee: &str,
    ) -> Result<bool, KitError> {
        if grantor == grantee {
            return Ok(true);
        }
        let decision = self
            .directory()?
            .decide(
                acting,
                &[Question {
                    member: member.clone(),
                    grantor: grantor.to_owned(),
                    grantee: grantee.to_owned(),
                    purpose: common::ConsentPurpose::BenefitRedemption as i32,
                }],
            )
            .await?;
        Ok(decision.first().is_some_and(|d| d.allowed))
    }

    /// The benefit `name` as `partner` may see it (issuer, funder, honouring partner).
    /// Benefit `id` as committed when this call began or later, read on the read pool in a
    /// lookup shared with the calls that asked while the previous one ran.
    async fn benefit_now(&self, id: &str) -> Result<Option<Benefit>, KitError> {
        self.benefit_reads
            .get(id.to_owned(), |ids| async move {
                match store::benefits_by_ids(&self.read, &ids).await {
                    Ok(found) => found.into_iter().map(Ok).collect(),
                    Err(e) => {
                        let e = e.into_storage();
                        ids.iter().map(|_| Err(e.clone())).collect()
                    }
                }
            })
            .await
            .map_err(KitError::Storage)
    }

    /// The benefit `name` (in `field`) when `partner` issues, funds or honours it, read as
    /// [`Self::benefit_now`] does; BENEFIT_NOT_FOUND otherwise, another partner's benefit and
    /// a missing one alike.
    async fn party_benefit_now(
        &self,
        partner: &str,
        name: &str,
        field: &str,
    ) -> Result<Benefit, EntitlementsError> {
        self.benefit_now(benefit_id(name, field)?)
            .await?
            .filter(|b| b.parties().iter().any(|p| p.as_str() == partner))
            .ok_or(EntitlementsError::BenefitNotFound)
    }

    async fn party_benefit(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        partner: &str,
        name: &str,
        field: &str,
    ) -> Result<Benefit, EntitlementsError> {
        store::benefit_for_party(conn, partner, benefit_id(name, field)?)
            .await?
            .ok_or(EntitlementsError::BenefitNotFound)
    }

    /// [`Self::party_benefit`] read for a change to it: its row held until `txn` ends
    /// ([`store::lock_benefit`]).
    async fn party_benefit_for_change(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        partner: &str,
        name: &str,
        field: &str,
    ) -> Result<Benefit, EntitlementsError> {
        store::lock_benefit(txn, benefit_id(name, field)?).await?;
        self.party_benefit(txn, partner, name, field).await
    }

    /// Runs an issuer's transition of benefit `name`.
    async fn transition(
        &self,
        call: &lianyu_kit::call::Call,
        request_id: &str,
        request: &impl prost::Message,
        name: &str,
        t: Transition,
    ) -> Result<pb::Benefit, EntitlementsError> {
        lianyu_kit::call::partner_wide(&call.who)?;
        let me = PartnerId::new(call.partner_id());
        self.mutations
            .run(call, request_id, request, async |txn| {
                let mut b = self
                    .party_benefit_for_change(txn, me.as_str(), name, "name")
                    .await?;
                let next = b.transition(&me, t)?;
                if !store::set_state(txn, &b.id, b.state, next).await? {
                    return Err(changed_meanwhile());
                }
                b.state = next;
                // An ended benefit grows no more: a growth its funder never accepted goes with it.
                if next == BenefitState::Ended && b.growth_proposed() {
                    b.withdraw_proposed_growth();
                    store::update_terms(txn, &b).await?;
                }
                Ok(to_proto(&b))
            })
            .await
            .inspect(|b| self.gates.forget(b.name.trim_start_matches("benefits/")))
    }
}

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
            let id = benefit_id(&r.name, "name")?;
            let benefit = store::benefit_for_party(&self.read, call.partner_id(), id)
                .await?
                .ok_or(EntitlementsError::BenefitNotFound)?;
            Ok::<_, EntitlementsError>(to_proto(&benefit))
        })
        .await
    }

    async fn list_benefits(
        &self,
        request: Request<pb::ListBenefitsRequest>,
    ) -> Result<Response<pb::ListBenefitsResponse>, Status> {
        unary(request, async |call, r| {
            let only = match pb::BenefitState::try_from(r.state) {
                Ok(pb::BenefitState::Unspecified) => None,
                Ok(pb::BenefitState::Draft) => Some(BenefitState::Draft),
                Ok(pb::BenefitState::Active) => Some(BenefitState::Active),
                Ok(pb::BenefitState::Paused) => Some(BenefitState::Paused),
                Ok(pb::BenefitState::Ended) => Some(BenefitState::Ended),
                Err(_) => return Err(KitError::invalid("state", "not a BenefitState").into()),
            };
            let filter = r.state.to_string();
            let page = Page::parse(r.page_size, &r.page_token, &[call.partner_id(), &filter])?;
            let (benefits, next_page_token) =
                store::list_benefits(&self.read, call.partner_id(), &page, only).await?;
            Ok::<_, EntitlementsError>(pb::ListBenefitsResponse {
                benefits: benefits.iter().map(to_proto).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn update_benefit(
        &self,
        request: Request<pb::UpdateBenefitRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |call, r| {
            lianyu_kit::call::partner_wide(&call.who)?;
            let paths = lianyu_kit::mask::paths(
                r.update_mask.as_ref(),
                &[
                    "display_name",
                    "budget_units",
                    "budget_value",
                    "per_member_limit",
                    "valid_until",
                ],
            )?;
            let given = r.benefit.clone().unwrap_or_default();
            let me = PartnerId::new(call.partner_id());
            let benefit = self
                .mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let mut b = self
                        .party_benefit_for_change(txn, me.as_str(), &given.name, "benefit.name")
                        .await?;
                    b.update(&me, &paths, &draft(&given), now_millis())?;
                    store::update_terms(txn, &b).await?;
                    Ok(to_proto(&b))
                })
                .await?;
            // A grown budget (or any new term) is claimed at once here.
            self.gates
                .forget(benefit.name.trim_start_matches("benefits/"));
            Ok::<_, EntitlementsError>(benefit)
        })
        .await
    }

    async fn accept_benefit_funding(
        &self,
        request: Request<pb::AcceptBenefitFundingRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |call, r| {
            lianyu_kit::call::partner_wide(&call.who)?;
            let me = PartnerId::new(call.partner_id());
            let benefit = self
                .mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let mut b = self
                        .party_benefit_for_change(txn, me.as_str(), &r.name, "name")
                        .await?;
                    b.accept_funding(&me)?;
                    if !r.etag.is_empty() && r.etag != to_proto(&b).etag {
                        return Err(EntitlementsError::EtagMismatch);
                    }
                    if b.state == BenefitState::Draft {
                        if !store::accept_funding(txn, &b.id).await? {
                            return Err(changed_meanwhile());
                        }
                        b.funding_accepted = true;
                    } else {
                        // A live benefit's proposed budget, now the funder's word.
                        b.take_proposed_growth();
                        store::update_terms(txn, &b).await?;
                    }
                    Ok(to_proto(&b))
                })
                .await?;
            // A budget accepted larger is claimed at once here, as after UpdateBenefit.
            self.gates
                .forget(benefit.name.trim_start_matches("benefits/"));
            Ok::<_, EntitlementsError>(benefit)
        })
        .await
    }

    async fn activate_benefit(
        &self,
        request: Request<pb::ActivateBenefitRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |call, r| {
            self.transition(&call, &r.request_id, &r, &r.name, Transition::Activate)
                .await
        })
        .await
    }

    async fn pause_benefit(
        &self,
        request: Request<pb::PauseBenefitRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |call, r| {
            self.transition(&call, &r.request_id, &r, &r.name, Transition::Pause)
                .await
        })
        .await
    }

    async fn resume_benefit(
        &self,
        request: Request<pb::ResumeBenefitRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |call, r| {
            self.transition(&call, &r.request_id, &r, &r.name, Transition::Resume)
                .await
        })
        .await
    }

    async fn end_benefit(
        &self,
        request: Request<pb::EndBenefitRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |call, r| {
            self.transition(&call, &r.request_id, &r, &r.name, Transition::End)
                .await
        })
        .await
    }
}

/// The request's definition, each part parsed with its own violation.
pub(crate) fn draft(b: &pb::Benefit) -> BenefitDraft<'_> {
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
        valid_days: b.valid_days,
        top_up_bonus_bps: b.top_up_bonus_bps,
        funder_share_bps: b.funder_share_bps,
        stores: &b.stores,
        categories: &b.categories,
        stacking_group: &b.stacking_group,
        budget_value: money(&b.budget_value),
    }
}

/// A benefit on the wire, with the etag of its terms.
pub(crate) fn to_proto(b: &Benefit) -> pb::Benefit {
    let mut out = terms_proto(b);
    out.etag = lianyu_kit::keycodec::etag(&pb::Benefit {
        granted_units: 0,
        spent_value: None,
        state: 0,
        funding_accepted: false,
        ..out.clone()
    });
    out
}

/// A benefit on the wire without its etag.
fn terms_proto(b: &Benefit) -> pb::Benefit {
    let money = |m: &Option<Money>| {
        m.as_ref()
            .and_then(|m| money(m.currency(), m.minor_units()))
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
        issuer: format!("partners/{}", b.issuer),
        funding_accepted: b.funding_accepted,
        valid_days: b.valid_days,
        top_up_bonus_bps: b.top_up_bonus_bps,
        funder_share_bps: b.funder_share_bps,
        stores: b.stores.clone(),
        categories: b.categories.clone(),
        stacking_group: b.stacking_group.clone(),
        budget_value: money(&b.budget_value),
        spent_value: b
            .budget_value
            .as_ref()
            .and_then(|m| self::money(m.currency(), b.spent_value)),
        etag: String::new(),
        proposed_budget_units: b.proposed_budget_units.unwrap_or_default(),
        proposed_budget_value: money(&b.proposed_budget_value),
    }
}

/// A guarded write found the benefit changed since it was read (its row is held for the
/// change on PostgreSQL, so this is a safeguard): the kit runs the call again on what is
/// committed now, which answers it — with the state it is in, if that refuses it.
fn changed_meanwhile() -> EntitlementsError {
    KitError::Storage(StorageError::Conflict(
        "the benefit changed meanwhile".into(),
    ))
    .into()
}
