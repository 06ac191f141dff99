//! Wallets: grants, first-come-first-served claims of a drop, and a member's units.

use lianyu_kit::{
    KitError,
    call::{Call, unary},
    ids::{MeshMemberId, PartnerId},
    names,
    page::Page,
    time::{now_millis, timestamp},
    validate::Violations,
};
use lianyu_proto::entitlements::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Api, Movement};
use crate::{
    domain::{Benefit, EntitlementsError},
    store::{self, ItemRow, ItemState},
};

/// How the unit is asked for: granted by its issuer or funder, or claimed by the member
/// through any party's app.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Grant,
    Claim,
}

/// The member's scoped id from "members/{member}".
pub(super) fn member<'a>(name: &'a str, field: &str) -> Result<&'a str, KitError> {
    let [id] = names::parse(name, "members/{member}").map_err(|e| KitError::invalid(field, e))?;
    Ok(id)
}

pub(super) fn item_proto(scoped: &str, row: &ItemRow, now: i64) -> pb::WalletItem {
    let state = match row.state {
        ItemState::Available if row.expires_at <= now => pb::WalletItemState::Expired,
        ItemState::Available => pb::WalletItemState::Available,
        ItemState::Reserved => pb::WalletItemState::Reserved,
        ItemState::Redeemed => pb::WalletItemState::Redeemed,
        ItemState::Refunded => pb::WalletItemState::Refunded,
        ItemState::Closed => pb::WalletItemState::Closed,
        ItemState::Expired => pb::WalletItemState::Expired,
    };
    pb::WalletItem {
        name: format!("members/{scoped}/walletItems/{}", row.id),
        benefit: format!("benefits/{}", row.benefit_id),
        state: state as i32,
        grant_time: timestamp(row.granted_at),
        expire_time: timestamp(row.expires_at),
    }
}

impl Api {
    /// Grant or claim: the checks before any write (the caller's role, the benefit's state,
    /// the member, consent), then one unit taken from the budget and stored in one
    /// transaction.
    async fn give(
        &self,
        call: &Call,
        route: Route,
        request_id: &str,
        request: &impl prost::Message,
        (member_name, benefit_name, claim_code): (&str, &str, Option<&str>),
    ) -> Result<pb::WalletItem, EntitlementsError> {
        let give = async {
            let scoped = member(member_name, "member")?;
            let me = PartnerId::new(call.partner_id());
            if route == Route::Claim {
                return self
                    .claim(
                        call,
                        request_id,
                        request,
                        (scoped, benefit_name, claim_code),
                    )
                    .await;
            }
            let benefit = self
                .party_benefit_now(me.as_str(), benefit_name, "benefit")
                .await?;
            self.give_unit(
                call,
                route,
                request_id,
                request,
                (scoped, claim_code),
                &benefit,
            )
            .await
            .map(|(item, _)| item)
        };
        // A retry of a grant or claim that was answered gets its unit, whatever changed since.
        self.hot.replayable(call, request_id, request, give).await
    }

    /// A claim through the drop gate: a permit first (none left: BUDGET_EXHAUSTED at once,
    /// unless the call is a replay of a claim that won), then the unit.
    async fn claim(
        &self,
        call: &Call,
        request_id: &str,
        request: &impl prost::Message,
        (scoped, benefit_name, claim_code): (&str, &str, Option<&str>),
    ) -> Result<pb::WalletItem, EntitlementsError> {
        let me = PartnerId::new(call.partner_id());
        let id = super::benefit_id(benefit_name, "benefit")?;
        let gate = self.gates.gate(id);
        let loaded = gate
            .load(async || {
                store::benefit_by_id(&self.read, id)
                    .await?
                    .ok_or(EntitlementsError::BenefitNotFound)
            })
            .await?;
        if !loaded.benefit.parties().contains(&me) {
            return Err(EntitlementsError::BenefitNotFound);
        }
        let Some(permit) = gate.enter().await else {
            // The rush after the last unit: no directory, no write (a replay of a claim that
            // won gets its unit from `give`).
            return Err(exhausted());
        };
        let result = self
            .give_unit(
                call,
                Route::Claim,
                request_id,
                request,
                (scoped, claim_code),
                &loaded.benefit,
            )
            .await;
        match &result {
            // A unit this call took from the budget spends its permit. A replay's does not —
            // its unit was counted by the call that took it, even when that call raced this
            // one (a client firing its retries at once): counted twice, the gate would close
            // with units left, telling the next claimers BUDGET_EXHAUSTED.
            Ok((_, true)) => gate.used(permit),
            Err(e) if lianyu_kit::ServiceError::reason(e) == "BUDGET_EXHAUSTED" => gate.close(),
            _ => drop(permit),
        }
        result.map(|(item, _)| item)
    }

    /// One unit of `benefit` to the caller's member `scoped`: the caller's role, the benefit's
    /// window, the member and their consent, then the unit taken from the budget and stored in
    /// one transaction. With the unit, whether this call took it (`false`: the stored reply of
    /// an earlier or a racing call with the same request id).
    async fn give_unit(
        &self,
        call: &Call,
        route: Route,
        request_id: &str,
        request: &impl prost::Message,
        (scoped, claim_code): (&str, Option<&str>),
        benefit: &Benefit,
    ) -> Result<(pb::WalletItem, bool), EntitlementsError> {
        let me = PartnerId::new(call.partner_id());
        let may = match route {
            Route::Grant => me == benefit.issuer || me == benefit.funder,
            Route::Claim => true,
        };
        if !may {
            return Err(KitError::Denied(
                "GRANTER_NOT_PARTY",
                "only the benefit's issuer or funder grants it",
            )
            .into());
        }
        let now = now_millis();
        benefit.grantable(now)?;
        let mesh = self.mesh_id(me.as_str(), scoped).await?;
        // The funder learns this member holds its benefit: the member must have agreed.
        if !self
            .may_redeem(me.as_str(), &mesh, me.as_str(), benefit.funder.as_str())
            .await?
        {
            return Err(KitError::Denied(
                "CONSENT_REQUIRED",
                "the member has not consented to benefit redemption with the funder",
            )
            .into());
        }
        // The id of the unit the last try made: the reply names it only if that try's
        // transaction committed (a try undone with its batch is followed by another, or by the
        // stored reply of a twin).
        let made = std::sync::Mutex::new(String::new());
        let made = &made;
        // Grants and claims are hot writes (a campaign grants to thousands): group-committed.
        let item = self
            .hot
            .keyed(&benefit.id)
            .run_writing_about(
                call,
                request_id,
                request,
                mesh.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    let id = uuid::Uuid::now_v7().simple().to_string();
                    id.clone_into(&mut made.lock().unwrap_or_else(|p| p.into_inner()));
                    let row = ItemRow {
                        id,
                        benefit_id: benefit.id.clone(),
                        member: mesh.to_string(),
                        holder: me.to_string(),
                        state: ItemState::Available,
                        granted_at: now,
                        expires_at: benefit.expiry(now),
                        claim_code: claim_code.filter(|c| !c.is_empty()).map(str::to_owned),
                    };
                    if !store::take_and_store_unit(txn, &row).await? {
                        return Err(self.why_not_taken(txn, benefit).await);
                    }
                    self.post(
                        txn,
                        writes,
                        Movement {
                            kind: "GRANT",
                            benefit,
                            redemption: None,
                            member: Some(mesh.as_str()),
                            through: Some(&me),
                        },
                        &benefit.grant_postings(),
                        now,
                    )
                    .await?;
                    // The postings (and the stored reply) may wait for the batch's commit: nothing
                    // in a transaction reads the postings it posts, and the unit and the member's
                    // holding, which the next claim does read, were written above. On SQLite's one
                    // writer a drop's winners then cost one trip each under the batch's lock.
                    writes.deferrable();
                    Ok(item_proto(scoped, &row, now))
                },
            )
            .await?;
        let made = made.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = !made.is_empty() && item.name.ends_with(&format!("/walletItems/{made}"));
        Ok((item, fresh))
    }

    /// Why no unit could be taken: the benefit left ACTIVE, or its budget is spent.
    async fn why_not_taken(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        benefit: &Benefit,
    ) -> EntitlementsError {
        match store::benefit_by_id(txn, &benefit.id).await {
            Ok(Some(now)) => match now.grantable(now_millis()) {
                Err(e) => e.into(),
                Ok(()) => exhausted(),
            },
            Ok(None) => EntitlementsError::BenefitNotFound,
            Err(e) => e.into(),
        }
    }

    /// The caller's member's mesh id and the caller.
    async fn own_member(
        &self,
        call: &Call,
        name: &str,
    ) -> Result<(String, MeshMemberId), EntitlementsError> {
        let scoped = member(name, "member")?;
        let mesh = self.mesh_id(call.partner_id(), scoped).await?;
        Ok((scoped.to_owned(), mesh))
    }
}

fn exhausted() -> EntitlementsError {
    KitError::Precondition(
        "BUDGET_EXHAUSTED",
        "every unit of this benefit has been given out".into(),
    )
    .into()
}

#[tonic::async_trait]
impl pb::wallet_service_server::WalletService for Api {
    async fn grant_benefit(
        &self,
        request: Request<pb::GrantBenefitRequest>,
    ) -> Result<Response<pb::WalletItem>, Status> {
        unary(request, async |call, r| {
            self.give(
                &call,
                Route::Grant,
                &r.request_id,
                &r,
                (&r.member, &r.benefit, None),
            )
            .await
        })
        .await
    }

    async fn claim_benefit(
        &self,
        request: Request<pb::ClaimBenefitRequest>,
    ) -> Result<Response<pb::WalletItem>, Status> {
        unary(request, async |call, r| {
            self.give(
                &call,
                Route::Claim,
                &r.request_id,
                &r,
                (&r.member, &r.benefit, Some(&r.claim_code)),
            )
            .await
        })
        .await
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        unary(request, async |call, r| {
            self.get_balance_of(&call, &r).await
        })
        .await
    }

    async fn top_up(
        &self,
        request: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, self.top_up(&call, &r))
                .await
        })
        .await
    }

    async fn earn_points(
        &self,
        request: Request<pb::EarnPointsRequest>,
    ) -> Result<Response<pb::PointsEarning>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, self.earn_points(&call, &r))
                .await
        })
        .await
    }

    async fn reverse_points(
        &self,
        request: Request<pb::ReversePointsRequest>,
    ) -> Result<Response<pb::PointsEarning>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, async {
                    self.reverse_points(&call, &r).await
                })
                .await
        })
        .await
    }

    async fn list_wallet(
        &self,
        request: Request<pb::ListWalletRequest>,
    ) -> Result<Response<pb::ListWalletResponse>, Status> {
        unary(request, async |call, r| {
            let page = Page::parse(r.page_size, &r.page_token, &[call.partner_id(), &r.member])?;
            let (scoped, mesh) = self.own_member(&call, &r.member).await?;
            let (rows, next_page_token) =
                store::items_of(&self.read, mesh.as_str(), call.partner_id(), &page).await?;
            let now = now_millis();
            Ok::<_, EntitlementsError>(pb::ListWalletResponse {
                items: rows
                    .iter()
                    .map(|row| item_proto(&scoped, row, now))
                    .collect(),
                next_page_token,
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl lianyu_proto::entitlements::internal::v1::drop_service_server::DropService for Api {
    async fn claim_for_viewer(
        &self,
        request: Request<lianyu_proto::entitlements::internal::v1::ClaimForViewerRequest>,
    ) -> Result<Response<pb::WalletItem>, Status> {
        unary(request, async |call, r| {
            // Only a mesh service's token carries the internal scope the auth layer asked
            // for; the claim is then made exactly as `partner`'s own ClaimBenefit, its replies
            // kept under this RPC's path (never mixed with the partner's own request ids).
            let Some(service) = call.who.service.clone() else {
                return Err(KitError::Denied(
                    "SERVICE_ONLY",
                    "only a mesh service claims for a viewer",
                )
                .into());
            };
            let [partner] = names::parse(&r.partner, "partners/{partner}")
                .map_err(|e| KitError::invalid("partner", e))?;
            let on_behalf = Call {
                who: lianyu_kit::auth::Principal {
                    partner_id: partner.to_owned(),
                    store: None,
                    scopes: Default::default(),
                    operator: false,
                    credential: None,
                    service: Some(service),
                    key_id: None,
                },
                method: call.method,
            };
            self.give(
                &on_behalf,
                Route::Claim,
                &r.request_id,
                &r,
                (&r.member, &r.benefit, Some(&r.claim_code)),
            )
            .await
        })
        .await
    }

    async fn get_benefit_as(
        &self,
        request: Request<lianyu_proto::entitlements::internal::v1::GetBenefitAsRequest>,
    ) -> Result<Response<pb::Benefit>, Status> {
        unary(request, async |_call, r| {
            let mut v = Violations::default();
            let partner = v.check(
                "partner",
                names::parse::<1>(&r.partner, "partners/{partner}"),
            );
            let id = v.check("name", names::parse::<1>(&r.name, "benefits/{benefit}"));
            v.finish()?;
            let (Some([partner]), Some([id])) = (partner, id) else {
                return Err(KitError::invalid("name", "required").into());
            };
            let benefit = store::benefit_for_party(&self.read, partner, id)
                .await?
                .ok_or(EntitlementsError::BenefitNotFound)?;
            Ok::<_, EntitlementsError>(crate::api::to_proto(&benefit))
        })
        .await
    }
}
