//! Coupon drops: a co-host opens one on an entitlements benefit; viewers claim through their
//! partner's app. A claim takes the drop's unit here first (so a drop never hands out more
//! than its quantity), then asks entitlements to grant it as a service on the viewer's behalf
//! (`ClaimForViewer`, keyed by the claim, so a retry never grants twice); a refusal there puts
//! the unit back, an unreachable entitlements keeps it for the retry.

use lianyu_kit::keycodec::hex;
use lianyu_kit::{
    Call, KitError,
    call::status,
    names,
    peer::{Idempotency, Peer},
    time::{millis, now_millis, required_millis, timestamp},
    validate::Violations,
    writes::Writes,
};
use lianyu_proto::{
    entitlements::{
        internal::v1::{
            ClaimForViewerRequest, GetBenefitAsRequest, drop_service_client::DropServiceClient,
        },
        v1::{Benefit, BenefitState},
    },
    live::v1 as pb,
};
use sea_orm::TransactionTrait;
use sha2::{Digest, Sha256};
use tonic::Status;

use super::{Api, Role};
use crate::{
    domain::{CouponDrop, CouponDropDraft, LiveError, SessionState},
    store,
};
use store::Claim;

pub(super) fn drop_proto(d: &CouponDrop) -> pb::CouponDrop {
    pb::CouponDrop {
        name: d.name(),
        benefit: format!("benefits/{}", d.benefit_id),
        quantity: d.quantity,
        remaining: d.remaining,
        open_time: timestamp(d.window.start),
        close_time: timestamp(d.window.end),
    }
}

/// Whether viewers could claim `b` from a drop opening at `opens`: FAILED_PRECONDITION /
/// BENEFIT_STATE unless it is ACTIVE (a DRAFT or PAUSED benefit refuses every claim, an ENDED
/// one always will), BENEFIT_NOT_VALID_NOW when its validity ends before the drop opens.
fn claimable(b: &Benefit, opens: i64) -> Result<(), LiveError> {
    let state = BenefitState::try_from(b.state).unwrap_or_default();
    if state != BenefitState::Active {
        let shown = state.as_str_name();
        return Err(KitError::WrongState(
            "BENEFIT_STATE",
            shown.strip_prefix("BENEFIT_STATE_").unwrap_or(shown),
            "a coupon drop hands out an ACTIVE benefit".into(),
        )
        .into());
    }
    if b.valid_until.as_ref().is_some_and(|t| millis(t) <= opens) {
        return Err(KitError::Precondition(
            "BENEFIT_NOT_VALID_NOW",
            "the benefit's validity ends before the drop opens".into(),
        )
        .into());
    }
    Ok(())
}

/// FAILED_PRECONDITION / DROP_EXHAUSTED.
fn exhausted() -> KitError {
    KitError::Precondition(
        "DROP_EXHAUSTED",
        "every unit of this drop has been claimed".into(),
    )
}

fn storage(e: sea_orm::DbErr) -> LiveError {
    LiveError::Kit(KitError::Storage(e.into()))
}

impl Api {
    /// Entitlements, as this service's principal; UNAVAILABLE / ENTITLEMENTS_UNAVAILABLE when
    /// it is not configured.
    fn entitlements(&self) -> Result<&Peer, KitError> {
        self.entitlements.as_ref().ok_or_else(|| {
            KitError::Unavailable(
                "ENTITLEMENTS_UNAVAILABLE",
                "entitlements is not configured for this service".into(),
            )
        })
    }

    /// Whether the calling co-host may hand out `benefit` in a drop opening at `opens`: it
    /// must issue or fund it, as it must to grant it (`WalletService.GrantBenefit`) — a drop
    /// spends the funder's budget, and a co-host spends only its own — and viewers must be
    /// able to claim it: the benefit ACTIVE, and valid after the drop opens. Asked of
    /// entitlements before the drop's transaction (never holding the writer across a call to
    /// another service); a benefit name that does not parse is left to the draft's field
    /// checks.
    async fn may_drop(&self, call: &Call, benefit: &str, opens: i64) -> Result<(), LiveError> {
        if names::parse::<1>(benefit, "benefits/{benefit}").is_err() {
            return Ok(());
        }
        let partner = format!("partners/{}", call.partner_id());
        let request = GetBenefitAsRequest {
            partner: partner.clone(),
            name: benefit.to_owned(),
        };
        let found = self
            .entitlements()?
            .call(Idempotency::Idempotent, request, |ch, req| async move {
                DropServiceClient::new(ch).get_benefit_as(req).await
            })
            .await;
        match found {
            Ok(b) if b.issuer == partner || b.funder == partner => claimable(&b, opens),
            Ok(_) => Err(KitError::Denied(
                "NOT_ISSUER_OR_FUNDER",
                "a coupon drop hands out a benefit the calling co-host issues or funds",
            )
            .into()),
            Err(e) if e.code() == tonic::Code::NotFound => Err(LiveError::BenefitNotFound),
            Err(e) => Err(KitError::Unavailable(
                "ENTITLEMENTS_UNAVAILABLE",
                format!("entitlements did not answer ({:?}); retry", e.code()),
            )
            .into()),
        }
    }

    pub(super) async fn create_drop(
        &self,
        call: &Call,
        r: &pb::CreateCouponDropRequest,
    ) -> Result<pb::CouponDrop, LiveError> {
        let given = r.coupon_drop.clone().unwrap_or_default();
        // Only a co-host goes on to ask entitlements about the benefit.
        let (session, role) = self.read_session(call, &r.parent, "parent").await?;
        super::as_host(call, &session, role)?;
        let opens = given
            .open_time
            .as_ref()
            .map_or_else(now_millis, |t| millis(t).max(now_millis()));
        self.may_drop(call, &given.benefit, opens).await?;
        self.mutations
            .run_writing(call, &r.request_id, r, async |txn, writes| {
                let session = self.hosted(txn, call, &r.parent, "parent").await?;
                let drop = CouponDrop::new(
                    &session.id,
                    &CouponDropDraft {
                        benefit: &given.benefit,
                        quantity: given.quantity,
                        open: given.open_time.as_ref().map(|t| required_millis(Some(t))),
                        close: required_millis(given.close_time.as_ref()),
                    },
                    now_millis(),
                )?;
                if !matches!(session.state, SessionState::Scheduled | SessionState::Live) {
                    return Err(session.state.refuse("a SCHEDULED or LIVE session").into());
                }
                store::insert_drop(txn, &drop).await?;
                let shown = drop_proto(&drop);
                self.tell_viewers(
                    writes,
                    &session.id,
                    pb::join_session_response::Update::CouponDrop(shown.clone()),
                );
                Ok(shown)
            })
            .await
    }

    pub(super) async fn get_drop(
        &self,
        call: &Call,
        name: &str,
    ) -> Result<pb::CouponDrop, LiveError> {
        let [session_id, drop_id] = names::parse(name, "sessions/{session}/couponDrops/{drop}")
            .map_err(|e| KitError::invalid("name", e))?;
        let (session, _) = self
            .session(&self.read, call, &format!("sessions/{session_id}"), "name")
            .await
            .map_err(|_| LiveError::CouponDropNotFound)?;
        let drop = store::coupon_drop(&self.read, &session.id, drop_id)
            .await?
            .ok_or(LiveError::CouponDropNotFound)?;
        Ok(drop_proto(&drop))
    }

    /// Takes a unit of the drop for a new claim and records the claim as pending, telling
    /// viewers when it was the last. `Ok(false)` when the same claim was recorded meanwhile.
    async fn take_for_claim(
        &self,
        call: &Call,
        session_id: &str,
        drop_id: &str,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<bool, LiveError> {
        let since = self.exhausted.since(drop_id);
        let txn = self.db.begin().await.map_err(storage)?;
        let (session, role) = self
            .session(&txn, call, &format!("sessions/{session_id}"), "name")
            .await
            .map_err(|e| match e {
                LiveError::SessionNotFound => LiveError::CouponDropNotFound,
                e => e,
            })?;
        if call.who.store.is_some() && role != Role::Host {
            return Err(KitError::Denied(
                "STORE_TOKEN_NOT_ALLOWED",
                "a store token claims only in a session of its store",
            )
            .into());
        }
        if session.state != SessionState::Live {
            return Err(session.state.refuse("a LIVE session").into());
        }
        let drop = store::coupon_drop(&txn, &session.id, drop_id)
            .await?
            .ok_or(LiveError::CouponDropNotFound)?;
        let now = now_millis();
        drop.window.open_at(now, "DROP_NOT_OPEN")?;
        let Some(left) = store::take_unit(&txn, &drop.id, now).await? else {
            // Read committed: the writer's conditional update waited for any other take, or
            // for a co-host's close of the drop (CloseCouponDrop), which is not "exhausted".
            if let Some(now_closed) = store::coupon_drop(&txn, &session.id, &drop.id).await? {
                now_closed.window.open_at(now, "DROP_NOT_OPEN")?;
            }
            self.exhausted.mark(&drop.id, since);
            return Err(exhausted().into());
        };
        if !store::insert_claim(
            &txn,
            &drop,
            call.partner_id(),
            request_id,
            fingerprint,
            now_millis(),
        )
        .await?
        {
            // The same claim, sent twice at once: the other one holds its unit.
            txn.rollback().await.map_err(storage)?;
            return Ok(false);
        }
        let mut writes = Writes::new();
        if left == 0 {
            self.tell_viewers(
                &mut writes,
                &session.id,
                pb::join_session_response::Update::CouponDrop(drop_proto(&CouponDrop {
                    remaining: 0,
                    ..drop
                })),
            );
        }
        writes.send(&txn).await.map_err(KitError::Storage)?;
        txn.commit().await.map_err(storage)?;
        if left == 0 {
            self.feed.published();
        }
        Ok(true)
    }

    /// Records a granted claim and tells the hosts' feed (naming the member by mesh id there,
    /// as every feed event does; readers see it as ListOrders names buyers).
    async fn finish_claim(
        &self,
        call: &Call,
        (session_id, drop_id): (&str, &str),
        request: &pb::ClaimCouponDropRequest,
        item: &str,
    ) -> Result<(), LiveError> {
        let (request_id, member) = (request.request_id.as_str(), request.member.as_str());
        let drop_name = format!("sessions/{session_id}/couponDrops/{drop_id}");
        let mesh = self.mesh_id(call, member, "member").await.ok();
        let txn = self.db.begin().await.map_err(storage)?;
        store::finish_claim(&txn, drop_id, call.partner_id(), request_id, item).await?;
        let mut writes = Writes::new();
        if let (Some(mesh), Some(session)) = (mesh, store::load_session(&txn, session_id).await?) {
            self.tell_hosts(
                &mut writes,
                &session,
                pb::watch_live_events_response::Event::DropClaimed(pb::DropClaimed {
                    coupon_drop: drop_name,
                    member: format!("meshMembers/{mesh}"),
                    partner: format!("partners/{}", call.partner_id()),
                }),
                now_millis(),
            );
        }
        writes.send(&txn).await.map_err(KitError::Storage)?;
        txn.commit().await.map_err(storage)?;
        self.feed.published();
        Ok(())
    }

    /// Claims a unit for a viewer: see the module's comment. Errors from entitlements are
    /// answered as entitlements gave them.
    pub(super) async fn claim_drop(
        &self,
        call: &Call,
        r: &pb::ClaimCouponDropRequest,
    ) -> Result<pb::ClaimCouponDropResponse, Status> {
        let fail = |e: LiveError| status(&e);
        let mut v = Violations::default();
        let parsed = v.check(
            "name",
            names::parse::<2>(&r.name, "sessions/{session}/couponDrops/{drop}"),
        );
        let member = v.check("member", names::parse::<1>(&r.member, "members/{member}"));
        if let Err(KitError::Invalid(fields)) = lianyu_kit::idempotency::validate(&r.request_id) {
            for f in fields {
                v.add(f.field, f.description);
            }
        }
        v.finish().map_err(|e| fail(e.into()))?;
        let (Some([session_id, drop_id]), Some(_)) = (parsed, member) else {
            return Err(fail(KitError::invalid("name", "required").into()));
        };
        if call.who.operator {
            return Err(fail(LiveError::CouponDropNotFound));
        }
        let fingerprint = hex(&Sha256::digest(r.member.as_bytes())[..16]);
        let partner = call.partner_id();
        let existing = self
            .claim_read(drop_id, partner, &r.request_id)
            .await
            .map_err(|e| fail(e.into()))?;
        match existing {
            Some(c) if c.fingerprint != fingerprint => {
                return Err(fail(KitError::RequestIdReused.into()));
            }
            Some(Claim {
                wallet_item_id: Some(item),
                ..
            }) => return self.claimed(&r.member, session_id, drop_id, &item).await,
            // Pending: entitlements did not answer last time; ask again.
            Some(_) => {}
            // Claimed out lately, as seen here: refused without the writer. A store token
            // goes the whole way, so that one of another store learns only that it may not.
            None if call.who.store.is_none() && self.exhausted.is(drop_id) => {
                return Err(fail(exhausted().into()));
            }
            None => {
                self.take_for_claim(call, session_id, drop_id, &r.request_id, &fingerprint)
                    .await
                    .map_err(fail)?;
            }
        }
        let drop = store::coupon_drop(&self.db, session_id, drop_id)
            .await
            .map_err(|e| fail(e.into()))?
            .ok_or_else(|| fail(LiveError::CouponDropNotFound))?;
        let key = hex(&Sha256::new()
            .chain_update(drop_id.as_bytes())
            .chain_update([0])
            .chain_update(partner.as_bytes())
            .chain_update([0])
            .chain_update(r.request_id.as_bytes())
            .finalize()[..20]);
        let request = ClaimForViewerRequest {
            request_id: format!("live-drop-{key}"),
            partner: format!("partners/{partner}"),
            member: r.member.clone(),
            benefit: format!("benefits/{}", drop.benefit_id),
            claim_code: drop.name(),
        };
        let peer = self.entitlements().map_err(|e| fail(e.into()))?;
        let granted = peer
            .call(Idempotency::Idempotent, request, |ch, req| async move {
                DropServiceClient::new(ch).claim_for_viewer(req).await
            })
            .await;
        match granted {
            Ok(item) => {
                let id = item.name.rsplit('/').next().unwrap_or_default().to_owned();
                self.finish_claim(call, (session_id, drop_id), r, &id)
                    .await
                    .map_err(fail)?;
                self.claimed(&r.member, session_id, drop_id, &id).await
            }
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                        | tonic::Code::Internal
                ) =>
            {
                // Entitlements may or may not have granted it: the unit stays held, and a
                // retry with the same request id asks again (entitlements answers a repeat
                // with its first answer).
                Err(fail(
                    KitError::Unavailable(
                        "ENTITLEMENTS_UNAVAILABLE",
                        "entitlements did not answer; retry with the same request_id".into(),
                    )
                    .into(),
                ))
            }
            Err(refused) => {
                let txn = self.db.begin().await.map_err(|e| fail(storage(e)))?;
                store::release_claim(&txn, drop_id, partner, &r.request_id)
                    .await
                    .map_err(|e| fail(e.into()))?;
                txn.commit().await.map_err(|e| fail(storage(e)))?;
                self.exhausted.reopen(drop_id);
                Err(refused)
            }
        }
    }

    /// The claim `partner` made on `drop` with `request_id`, if any, read in a batch with
    /// the others asked for meanwhile ([`lianyu_kit::batched`]).
    async fn claim_read(
        &self,
        drop: &str,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<store::Claim>, KitError> {
        let key = ((drop.to_owned(), partner.to_owned()), request_id.to_owned());
        self.claim_reads
            .get(key, |keys| async move {
                lianyu_kit::batched::by_group(&keys, |(drop, partner), ids| async move {
                    store::claims(&self.read, &drop, &partner, ids)
                        .await
                        .map_err(KitError::into_storage)
                })
                .await
            })
            .await
            .map_err(KitError::Storage)
    }

    async fn claimed(
        &self,
        member: &str,
        session_id: &str,
        drop_id: &str,
        item: &str,
    ) -> Result<pb::ClaimCouponDropResponse, Status> {
        let remaining = store::coupon_drop(&self.read, session_id, drop_id)
            .await
            .map_err(|e| status(&LiveError::from(e)))?
            .map_or(0, |d| d.remaining);
        Ok(pb::ClaimCouponDropResponse {
            wallet_item: format!("{member}/walletItems/{item}"),
            remaining,
        })
    }
}
