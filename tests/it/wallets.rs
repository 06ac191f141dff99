//! Entitlements end to end through identity: a mall issues a coupon the brand funds, grants and
//! claims hold the budget and the per-member limit at any concurrency, a unit is redeemed once,
//! holds end exactly once, consent is asked of identity (and its absence refuses), and the
//! ledger balances into a statement of what the brand owes the mall. Refusals write nothing.

use futures::future::join_all;
use lianyu_kit::{
    testing::{BRAND, MALL, OUTSIDER, TestServer, reason},
    time::{now_millis, timestamp},
};
use lianyu_proto::{
    common::v1::{ConsentPurpose, Money},
    entitlements::v1::{
        self as pb, benefit_service_client::BenefitServiceClient,
        ledger_service_client::LedgerServiceClient,
        redemption_service_client::RedemptionServiceClient,
        wallet_service_client::WalletServiceClient,
    },
    identity::v1::{
        self as id, consent_service_client::ConsentServiceClient,
        member_service_client::MemberServiceClient,
    },
};
use tonic::{Code, codegen::InterceptedService, transport::Channel};
use tonic_types::StatusExt;

use crate::support::{rows, stored_reply};

pub(crate) type Svc = InterceptedService<Channel, lianyu_kit::client::Bearer>;

pub(crate) async fn mesh(test: &str) -> TestServer {
    start(test, |_| {}).await
}

/// Identity and entitlements in one server, `configure`d, with the partners set up.
pub(crate) async fn start(
    test: &str,
    configure: impl FnOnce(&mut lianyu_kit::Config),
) -> TestServer {
    crate::support::with_identity!(test, "entitlements", lianyu_entitlements::mount, configure)
}

pub(crate) fn cny(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "CNY".into(),
        minor_units,
    })
}

pub(crate) fn benefits(s: &TestServer, partner: &str) -> BenefitServiceClient<Svc> {
    BenefitServiceClient::new(s.as_token(&s.token(partner)))
}
pub(crate) fn wallet(s: &TestServer, partner: &str) -> WalletServiceClient<Svc> {
    WalletServiceClient::new(s.as_token(&s.token(partner)))
}
pub(crate) fn till(s: &TestServer, token: &str) -> RedemptionServiceClient<Svc> {
    RedemptionServiceClient::new(s.as_token(token))
}
pub(crate) fn ledger(s: &TestServer, partner: &str) -> LedgerServiceClient<Svc> {
    LedgerServiceClient::new(s.as_token(&s.token(partner)))
}

/// Enrols a verified phone at `partner`; the partner's scoped member name.
pub(crate) async fn enrol(s: &TestServer, partner: &str, phone: &str) -> String {
    MemberServiceClient::new(s.as_token(&s.token(partner)))
        .enroll_member(id::EnrollMemberRequest {
            request_id: format!("enrol-{phone}"),
            identifiers: vec![id::Identifier {
                kind: id::IdentifierKind::Phone as i32,
                value: phone.into(),
                verified: true,
                verification_method: id::VerificationMethod::SmsCode as i32,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("enrol {phone}: {e}"))
        .into_inner()
        .member
        .unwrap()
        .name
}

/// `n` members enrolled at `partner` (phones `{prefix}0000`, …), 25 at a time.
async fn enrol_many(s: &TestServer, partner: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut members = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        members.extend(
            join_all(chunk.iter().map(|i| {
                let phone = format!("{prefix}{i:04}");
                async move { enrol(s, partner, &phone).await }
            }))
            .await,
        );
    }
    members
}

/// `member` (known to `partner`) consents that `grantee` redeem benefits with them.
pub(crate) async fn consent(s: &TestServer, partner: &str, member: &str, grantee: &str) {
    ConsentServiceClient::new(s.as_token(&s.token(partner)))
        .grant_consent(id::GrantConsentRequest {
            request_id: format!("consent-{member}-{grantee}"),
            member: member.into(),
            grantee: format!("partners/{grantee}"),
            purposes: vec![ConsentPurpose::BenefitRedemption as i32],
            channel: id::ConsentChannel::MiniProgram as i32,
            policy_version: "2026-10".into(),
            valid_until: None,
        })
        .await
        .unwrap();
}

/// A benefit `issuer` defines, `funder` pays for and `honoured_by` honours, made ACTIVE
/// (accepted by the funder first when it is another partner).
pub(crate) async fn active(
    s: &TestServer,
    issuer: &str,
    funder: &str,
    honoured_by: &str,
    shape: impl FnOnce(&mut pb::Benefit),
) -> pb::Benefit {
    let mut b = pb::Benefit {
        display_name: "50 off 300".into(),
        kind: pb::BenefitKind::ThresholdCoupon as i32,
        funder: format!("partners/{funder}"),
        honoured_by: vec![format!("partners/{honoured_by}")],
        value: cny(5_000),
        threshold: cny(30_000),
        budget_units: 1_000,
        per_member_limit: 1,
        valid_until: timestamp(now_millis() + 7 * 24 * 3_600_000),
        ..Default::default()
    };
    shape(&mut b);
    let created = benefits(s, issuer)
        .create_benefit(pb::CreateBenefitRequest {
            request_id: format!("define-{}", b.display_name.replace(' ', "-")),
            benefit: Some(b),
        })
        .await
        .unwrap()
        .into_inner();
    if funder != issuer {
        benefits(s, funder)
            .accept_benefit_funding(pb::AcceptBenefitFundingRequest {
                request_id: format!("accept-{}", created.name),
                name: created.name.clone(),
                etag: created.etag.clone(),
            })
            .await
            .unwrap();
    }
    benefits(s, issuer)
        .activate_benefit(pb::ActivateBenefitRequest {
            request_id: format!("activate-{}", created.name),
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) fn grant(member: &str, benefit: &str, request_id: &str) -> pb::GrantBenefitRequest {
    pb::GrantBenefitRequest {
        request_id: request_id.into(),
        member: member.into(),
        benefit: benefit.into(),
    }
}

pub(crate) fn redeem(item: &str, request_id: &str, order: i64) -> pb::RedeemRequest {
    pb::RedeemRequest {
        request_id: request_id.into(),
        wallet_item: item.into(),
        store: format!("partners/{MALL}/stores/sh01"),
        order_amount: cny(order),
        ..Default::default()
    }
}

/// Ledger transactions whose postings do not sum to zero, as `lianyu audit ledger` finds them
/// where the postings live.
pub(crate) async fn unbalanced(s: &TestServer) -> usize {
    let db = s.database("entitlements").await;
    lianyu_entitlements::audit_ledger(&db)
        .await
        .unwrap()
        .unbalanced
        .len()
}

/// The member's scoped id at the mall becomes the wallet item's prefix there.
fn item_at(member: &str, item: &str) -> String {
    let id = item.rsplit('/').next().unwrap();
    format!("{member}/walletItems/{id}")
}

/// `partner` erases its member `member` (its scoped name), for its own records only.
async fn erase_at(s: &TestServer, partner: &str, member: &str) {
    MemberServiceClient::new(s.as_token(&s.token(partner)))
        .erase_member(id::EraseMemberRequest {
            request_id: format!("erase-{member}"),
            member: member.to_owned(),
            scope: id::ErasureScope::Partner as i32,
        })
        .await
        .unwrap();
}

/// Waits (20 s at most) until entitlements, acting on identity's feed, has closed unit `id`.
async fn until_closed(s: &TestServer, id: &str) {
    use sea_orm::{ConnectionTrait, Statement};
    let db = s.database("entitlements").await;
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT state FROM wallet_items WHERE id = '{id}'"),
            ))
            .await
            .unwrap()
            .unwrap();
        let state: String = row.try_get("", "state").unwrap();
        if state == "closed" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "unit {id} never closed ({state})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The mall's coupon without a per-member limit, honoured at the brand's counters too, and a
/// person (`phone`) enrolled at both who consented that the brand redeem the mall's benefits
/// with them: the coupon and the mall's and the brand's names of the member.
async fn honoured_by_both(s: &TestServer, phone: &str) -> (pb::Benefit, String, String) {
    let coupon = active(s, MALL, MALL, MALL, |b| {
        b.honoured_by = vec![format!("partners/{MALL}"), format!("partners/{BRAND}")];
        b.per_member_limit = 0;
    })
    .await;
    let at_mall = enrol(s, MALL, phone).await;
    let at_brand = enrol(s, BRAND, phone).await;
    consent(s, MALL, &at_mall, BRAND).await;
    (coupon, at_mall, at_brand)
}

/// UpdateBenefit of benefit `name` setting `path` from `change`.
fn masked(name: &str, rid: &str, change: pb::Benefit, path: &str) -> pb::UpdateBenefitRequest {
    pb::UpdateBenefitRequest {
        request_id: rid.into(),
        benefit: Some(pb::Benefit {
            name: name.into(),
            ..change
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![path.into()],
        }),
    }
}

/// A DRAFT coupon the mall issues and the brand is asked to fund: 10 units of 50.00, one per
/// member.
async fn joint_draft(s: &TestServer) -> pb::Benefit {
    benefits(s, MALL)
        .create_benefit(pb::CreateBenefitRequest {
            request_id: "d1".into(),
            benefit: Some(pb::Benefit {
                display_name: "Joint 50".into(),
                kind: pb::BenefitKind::FixedCoupon as i32,
                funder: format!("partners/{BRAND}"),
                value: cny(5_000),
                budget_units: 10,
                per_member_limit: 1,
                valid_until: timestamp(now_millis() + 3_600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

/// `token`'s AcceptBenefitFunding of benefit `name`, with the etag it read.
async fn accept_funding(
    s: &TestServer,
    token: String,
    name: String,
    request_id: &str,
    etag: String,
) -> Result<pb::Benefit, tonic::Status> {
    BenefitServiceClient::new(s.as_token(&token))
        .accept_benefit_funding(pb::AcceptBenefitFundingRequest {
            request_id: request_id.into(),
            name,
            etag,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Benefit `name` as `partner` reads it.
async fn read_benefit(s: &TestServer, partner: &str, name: String) -> pb::Benefit {
    benefits(s, partner)
        .get_benefit(pb::GetBenefitRequest { name })
        .await
        .unwrap()
        .into_inner()
}

/// A funder accepts to pay for terms; the issuer changing them afterwards (a budget a hundred
/// times larger, say) must not keep that acceptance. With the etag it read, the funder accepts
/// exactly those terms or nothing; a change of what it pays for withdraws an acceptance given;
/// a new display name does not. Every refusal is read back as having changed nothing.
#[tokio::test]
async fn the_funder_accepts_the_terms_it_read_and_a_change_of_them_asks_again() {
    let s = mesh("ent_funder_terms").await;
    let created = joint_draft(&s).await;
    let name = created.name.clone();
    let read = |partner: &'static str| read_benefit(&s, partner, name.clone());
    let accept = |token: String, rid: &'static str, etag: String| {
        accept_funding(&s, token, name.clone(), rid, etag)
    };
    let update = |rid: &'static str, change: pb::Benefit, path: &str| {
        let mut c = benefits(&s, MALL);
        let request = masked(&name, rid, change, path);
        async move { c.update_benefit(request).await.unwrap().into_inner() }
    };
    let activate = |rid: &'static str| {
        let mut c = benefits(&s, MALL);
        let name = name.clone();
        async move {
            c.activate_benefit(pb::ActivateBenefitRequest {
                request_id: rid.into(),
                name,
            })
            .await
        }
    };
    // The brand reads the terms; the mall then makes the budget a hundred times larger.
    let seen = read(BRAND).await;
    assert_eq!(seen.etag, created.etag);
    assert!(!seen.etag.is_empty());
    let grown = update(
        "grow",
        pb::Benefit {
            budget_units: 1_000,
            ..Default::default()
        },
        "budget_units",
    )
    .await;
    assert_ne!(grown.etag, seen.etag, "the terms changed, so did the etag");
    // Accepting what it read accepts nothing.
    let e = accept(s.token(BRAND), "stale", seen.etag.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Aborted, "ETAG_MISMATCH")
    );
    assert_eq!(
        read(MALL).await,
        grown,
        "a refused acceptance changed nothing"
    );
    let e = activate("a1").await.unwrap_err();
    assert_eq!(reason(&e), "FUNDER_ACCEPTANCE_REQUIRED");
    // Nobody else gets past the check by holding the right etag: not the issuer, not an
    // outsider, not one of the funder's stores.
    for (token, want) in [
        (s.token(MALL), "FUNDER_ONLY"),
        (s.token(OUTSIDER), "BENEFIT_NOT_FOUND"),
        (s.store_token(BRAND, "sh01"), "STORE_TOKEN_NOT_ALLOWED"),
    ] {
        let e = accept(token, "other", grown.etag.clone())
            .await
            .unwrap_err();
        assert_eq!(reason(&e), want);
    }
    assert_eq!(read(MALL).await, grown, "refusals changed nothing");
    // The brand reads again and accepts the terms as they are now.
    let now = read(BRAND).await;
    let accepted = accept(s.token(BRAND), "fresh", now.etag.clone())
        .await
        .unwrap();
    assert!(accepted.funding_accepted);
    assert_eq!((accepted.budget_units, accepted.etag), (1_000, now.etag));
    // A new display name keeps the acceptance (the funder pays for nothing new)...
    let renamed = update(
        "rename",
        pb::Benefit {
            display_name: "Joint 50 for Double 12".into(),
            ..Default::default()
        },
        "display_name",
    )
    .await;
    assert!(renamed.funding_accepted);
    assert!(read(BRAND).await.funding_accepted);
    // ...a higher per-member limit withdraws it: the brand would pay for more per member.
    let raised = update(
        "raise",
        pb::Benefit {
            per_member_limit: 5,
            ..Default::default()
        },
        "per_member_limit",
    )
    .await;
    assert!(!raised.funding_accepted);
    assert!(!read(BRAND).await.funding_accepted);
    let e = activate("a2").await.unwrap_err();
    assert_eq!(reason(&e), "FUNDER_ACCEPTANCE_REQUIRED");
    assert_eq!(read(MALL).await.state, pb::BenefitState::Draft as i32);
    // Accepting without an etag accepts the current terms; then it goes live.
    let accepted = accept(s.token(BRAND), "current", String::new())
        .await
        .unwrap();
    assert_eq!(
        (accepted.per_member_limit, accepted.funding_accepted),
        (5, true)
    );
    let on = activate("a3").await.unwrap().into_inner();
    assert_eq!(on.state, pb::BenefitState::Active as i32);
    assert_eq!(
        on.etag, accepted.etag,
        "a state change is not a change of terms"
    );
}

/// A live benefit another partner funds grows only with that partner's word: the issuer's
/// larger budget (units or money) is a proposal, grants stop at the budget in force until the
/// funder accepts it — with the etag of the proposal it read — and the benefit never loses its
/// money budget. A benefit its issuer funds grows at once.
#[tokio::test]
async fn a_live_benefit_grows_past_what_its_funder_accepted_only_when_the_funder_accepts() {
    let s = mesh("ent_funded_growth").await;
    let coupon = active(&s, MALL, BRAND, MALL, |b| {
        b.budget_units = 1;
        b.per_member_limit = 0;
        b.budget_value = cny(10_000);
    })
    .await;
    let name = coupon.name.clone();
    let update = |rid: &'static str, change: pb::Benefit, path: &'static str| {
        let mut c = benefits(&s, MALL);
        let request = masked(&name, rid, change, path);
        async move {
            c.update_benefit(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let accept = |token: String, rid: &'static str, etag: String| {
        accept_funding(&s, token, name.clone(), rid, etag)
    };
    let read = || read_benefit(&s, BRAND, name.clone());
    // Nothing is proposed yet: the funder has nothing to accept.
    let e = accept(s.token(BRAND), "nothing", String::new())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_STATE");
    let proposed = update(
        "grow",
        pb::Benefit {
            budget_units: 2,
            ..Default::default()
        },
        "budget_units",
    )
    .await
    .unwrap();
    assert_eq!(
        (proposed.budget_units, proposed.proposed_budget_units),
        (1, 2)
    );
    assert_ne!(proposed.etag, coupon.etag);
    // The budget in force is still one unit.
    let member = enrol(&s, MALL, "13800138051").await;
    consent(&s, MALL, &member, BRAND).await;
    wallet(&s, MALL)
        .grant_benefit(grant(&member, &name, "g1"))
        .await
        .unwrap();
    let e = wallet(&s, MALL)
        .grant_benefit(grant(&member, &name, "g2"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BUDGET_EXHAUSTED");
    // The money budget is never removed, and may be proposed larger beside the units.
    let e = update(
        "drop-money",
        pb::Benefit {
            budget_value: None,
            ..Default::default()
        },
        "budget_value",
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&e), "BUDGET_MAY_ONLY_GROW");
    let both = update(
        "more-money",
        pb::Benefit {
            budget_value: cny(20_000),
            ..Default::default()
        },
        "budget_value",
    )
    .await
    .unwrap();
    assert_eq!(
        (
            both.budget_value.clone(),
            both.proposed_budget_value.clone()
        ),
        (cny(10_000), cny(20_000))
    );
    assert_eq!(both.proposed_budget_units, 2);
    // Only the funder accepts, and only what it read.
    let e = accept(s.token(MALL), "self", both.etag.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "FUNDER_ONLY");
    let e = accept(s.token(BRAND), "stale", proposed.etag.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ETAG_MISMATCH");
    assert_eq!(read().await, both, "refusals changed nothing");
    let accepted = accept(s.token(BRAND), "yes", both.etag.clone())
        .await
        .unwrap();
    assert_eq!(
        (
            accepted.budget_units,
            accepted.budget_value.clone(),
            accepted.proposed_budget_units,
            accepted.proposed_budget_value.clone()
        ),
        (2, cny(20_000), 0, None)
    );
    assert_eq!(read().await, accepted);
    wallet(&s, MALL)
        .grant_benefit(grant(&member, &name, "g3"))
        .await
        .unwrap();
    // A proposal the issuer takes back: the budget in force again withdraws it.
    let again = update(
        "grow-again",
        pb::Benefit {
            budget_units: 5,
            ..Default::default()
        },
        "budget_units",
    )
    .await
    .unwrap();
    assert_eq!(again.proposed_budget_units, 5);
    let back = update(
        "take-back",
        pb::Benefit {
            budget_units: 2,
            ..Default::default()
        },
        "budget_units",
    )
    .await
    .unwrap();
    assert_eq!((back.budget_units, back.proposed_budget_units), (2, 0));
    // A proposal still open when the issuer ends the benefit ends with it: nothing is left
    // for the funder to accept, and the budget in force is what was granted against.
    let open = update(
        "grow-before-end",
        pb::Benefit {
            budget_units: 9,
            ..Default::default()
        },
        "budget_units",
    )
    .await
    .unwrap();
    assert_eq!(open.proposed_budget_units, 9);
    let ended = benefits(&s, MALL)
        .end_benefit(pb::EndBenefitRequest {
            name: name.clone(),
            request_id: "end-with-proposal".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            ended.state,
            ended.budget_units,
            ended.proposed_budget_units,
            ended.proposed_budget_value.clone()
        ),
        (pb::BenefitState::Ended as i32, 2, 0, None)
    );
    assert_eq!(read().await, ended);
    let e = accept(s.token(BRAND), "after-end", ended.etag.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_STATE");
    // A benefit the mall funds itself grows at once.
    let own = active(&s, MALL, MALL, MALL, |b| {
        b.display_name = "Own coupon".into();
        b.budget_units = 1;
    })
    .await;
    let grown = benefits(&s, MALL)
        .update_benefit(masked(
            &own.name,
            "own",
            pb::Benefit {
                budget_units: 3,
                ..Default::default()
            },
            "budget_units",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((grown.budget_units, grown.proposed_budget_units), (3, 0));
}

/// The funder accepting what it read while the issuer grows the budget, sent at once: either
/// the acceptance commits first and the change then withdraws it, or the change does and the
/// acceptance is refused (ETAG_MISMATCH). Either way the benefit ends up on the new budget
/// with nobody's acceptance of it, and cannot go live until the funder accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_funders_acceptance_racing_a_change_of_terms_never_covers_terms_it_did_not_read() {
    let s = mesh("ent_funder_race").await;
    for trial in 0..24 {
        let created = benefits(&s, MALL)
            .create_benefit(pb::CreateBenefitRequest {
                request_id: format!("d{trial}"),
                benefit: Some(pb::Benefit {
                    display_name: format!("Joint {trial}"),
                    kind: pb::BenefitKind::FixedCoupon as i32,
                    funder: format!("partners/{BRAND}"),
                    value: cny(5_000),
                    budget_units: 10,
                    valid_until: timestamp(now_millis() + 3_600_000),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let (accepted, grown) = tokio::join!(
            tokio::spawn({
                let mut c = benefits(&s, BRAND);
                let request = pb::AcceptBenefitFundingRequest {
                    request_id: format!("a{trial}"),
                    name: created.name.clone(),
                    etag: created.etag.clone(),
                };
                async move { c.accept_benefit_funding(request).await }
            }),
            tokio::spawn({
                let mut c = benefits(&s, MALL);
                let request = pb::UpdateBenefitRequest {
                    request_id: format!("g{trial}"),
                    benefit: Some(pb::Benefit {
                        name: created.name.clone(),
                        budget_units: 1_000,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["budget_units".into()],
                    }),
                };
                async move { c.update_benefit(request).await }
            }),
        );
        let grown = grown
            .unwrap()
            .expect("the issuer's change of a DRAFT stands");
        if let Err(e) = accepted.unwrap() {
            assert_eq!(reason(&e), "ETAG_MISMATCH", "trial {trial}");
        }
        let now = benefits(&s, BRAND)
            .get_benefit(pb::GetBenefitRequest {
                name: created.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(now.budget_units, 1_000, "trial {trial}");
        assert_eq!(now.etag, grown.into_inner().etag, "trial {trial}");
        assert!(
            !now.funding_accepted,
            "trial {trial}: the funder never accepted a budget of 1,000"
        );
        let e = benefits(&s, MALL)
            .activate_benefit(pb::ActivateBenefitRequest {
                request_id: format!("on{trial}"),
                name: created.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "FUNDER_ACCEPTANCE_REQUIRED", "trial {trial}");
    }
}

#[tokio::test]
async fn the_issuer_alone_moves_a_benefit_and_the_funder_accepts_first() {
    let s = mesh("ent_lifecycle").await;
    let created = joint_draft(&s).await;
    assert!(!created.funding_accepted);
    let name = created.name.clone();
    let activate = |rid: &str| pb::ActivateBenefitRequest {
        request_id: rid.into(),
        name: name.clone(),
    };
    let e = benefits(&s, MALL)
        .activate_benefit(activate("a1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "FUNDER_ACCEPTANCE_REQUIRED")
    );
    // The funder may not activate for the issuer, nor the issuer accept for the funder.
    let e = benefits(&s, BRAND)
        .activate_benefit(activate("a2"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ISSUER_ONLY");
    let e = benefits(&s, MALL)
        .accept_benefit_funding(pb::AcceptBenefitFundingRequest {
            request_id: "x".into(),
            name: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "FUNDER_ONLY");
    let read = benefits(&s, MALL)
        .get_benefit(pb::GetBenefitRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created, "refusals changed nothing");
    // An outsider learns nothing.
    let e = benefits(&s, OUTSIDER)
        .activate_benefit(activate("a3"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_NOT_FOUND");

    benefits(&s, BRAND)
        .accept_benefit_funding(pb::AcceptBenefitFundingRequest {
            request_id: "acc".into(),
            name: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let on = benefits(&s, MALL)
        .activate_benefit(activate("a4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on.state, pb::BenefitState::Active as i32);
    // Resuming what is not paused names the current state.
    let e = benefits(&s, MALL)
        .resume_benefit(pb::ResumeBenefitRequest {
            request_id: "r1".into(),
            name: name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_STATE");
    let details = e.get_error_details();
    assert_eq!(
        details
            .error_info()
            .unwrap()
            .metadata
            .get("state")
            .map(String::as_str),
        Some("ACTIVE")
    );
    // A live budget grows, never shrinks.
    let update = |rid: &str, units: i64| pb::UpdateBenefitRequest {
        request_id: rid.into(),
        benefit: Some(pb::Benefit {
            name: name.clone(),
            budget_units: units,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["budget_units".into()],
        }),
    };
    let e = benefits(&s, MALL)
        .update_benefit(update("u1", 5))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BUDGET_MAY_ONLY_GROW");
    let e = benefits(&s, BRAND)
        .update_benefit(update("u2", 50))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ISSUER_ONLY");
    // The brand funds it: a larger budget is proposed to the brand, and stands once it accepts.
    let grown = benefits(&s, MALL)
        .update_benefit(update("u3", 20))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((grown.budget_units, grown.proposed_budget_units), (10, 20));
    let grown = benefits(&s, BRAND)
        .accept_benefit_funding(pb::AcceptBenefitFundingRequest {
            request_id: "grow".into(),
            name: name.clone(),
            etag: grown.etag,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((grown.budget_units, grown.proposed_budget_units), (20, 0));
    let paused = benefits(&s, MALL)
        .pause_benefit(pb::PauseBenefitRequest {
            request_id: "p1".into(),
            name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.state, pb::BenefitState::Paused as i32);
    let listed = benefits(&s, BRAND)
        .list_benefits(pb::ListBenefitsRequest {
            state: pb::BenefitState::Paused as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.benefits, [paused]);
    let none = benefits(&s, OUTSIDER)
        .list_benefits(pb::ListBenefitsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.benefits.is_empty());
}

#[tokio::test]
async fn a_cross_partner_grant_needs_the_members_consent_to_the_funder() {
    let s = mesh("ent_grant_consent").await;
    let coupon = active(&s, MALL, BRAND, MALL, |_| {}).await;
    let member = enrol(&s, MALL, "13800138001").await;
    let e = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "CONSENT_REQUIRED")
    );
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 0);
    assert_eq!(rows(&s, "entitlements", "ledger_postings").await, 0);
    // An outsider cannot grant it, and a member the caller does not hold is not found.
    let e = wallet(&s, OUTSIDER)
        .grant_benefit(grant(&member, &coupon.name, "g2"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_NOT_FOUND");
    let e = wallet(&s, BRAND)
        .grant_benefit(grant(&member, &coupon.name, "g3"))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&e),
        "MEMBER_NOT_FOUND",
        "the mall's id means nothing to the brand"
    );

    consent(&s, MALL, &member, BRAND).await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g4"))
        .await
        .unwrap()
        .into_inner();
    assert!(item.name.starts_with(&format!("{member}/walletItems/")));
    assert_eq!(item.state, pb::WalletItemState::Available as i32);
    let replay = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, item, "a retry returns the first grant");
    let listed = wallet(&s, MALL)
        .list_wallet(pb::ListWalletRequest {
            member: member.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.items, [item]);
    // The per-member limit (1) holds.
    let e = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g5"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PER_MEMBER_LIMIT");
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 1);
    assert_eq!(unbalanced(&s).await, 0);
}

/// Forty grants at once against a budget of five; twenty at once to one member with a limit
/// of one. Real parallel calls; the budget and the limit hold where they live.
#[tokio::test]
async fn grants_never_exceed_the_budget_or_the_per_member_limit_at_any_concurrency() {
    let s = mesh("ent_budget_race").await;
    let coupon = active(&s, BRAND, BRAND, BRAND, |b| {
        b.budget_units = 5;
        b.per_member_limit = 0;
        b.display_name = "five".into();
    })
    .await;
    let member = enrol(&s, BRAND, "13800138002").await;
    let replies = join_all((0..40).map(|i| {
        let mut w = wallet(&s, BRAND);
        let r = grant(&member, &coupon.name, &format!("b{i}"));
        async move { w.grant_benefit(r).await }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5);
    for e in replies.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            (e.code(), reason(e).as_str()),
            (Code::FailedPrecondition, "BUDGET_EXHAUSTED")
        );
    }
    let read = benefits(&s, BRAND)
        .get_benefit(pb::GetBenefitRequest {
            name: coupon.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.granted_units, 5);
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 5);

    let limited = active(&s, BRAND, BRAND, BRAND, |b| {
        b.per_member_limit = 1;
        b.display_name = "one each".into();
    })
    .await;
    let replies = join_all((0..20).map(|i| {
        let mut w = wallet(&s, BRAND);
        let r = grant(&member, &limited.name, &format!("l{i}"));
        async move { w.grant_benefit(r).await }
    }))
    .await;
    assert_eq!(replies.iter().filter(|r| r.is_ok()).count(), 1);
    for e in replies.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(e), "PER_MEMBER_LIMIT");
    }
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 6);
    assert_eq!(unbalanced(&s).await, 0);
}

/// A drop of 40 units and 400 members pressing "claim" at once: exactly 40 handed out, one to
/// each of 40 different members; the rest hear BUDGET_EXHAUSTED. (The full 1,000-of-10,000
/// rush is `lianyu bench claim-drop`, on a release build.)
#[tokio::test]
async fn a_drop_hands_out_exactly_its_units_to_distinct_members() {
    // A rush from one partner's app: all admitted (see the redemption race below).
    let s = start("ent_drop", |config| {
        config.limits.max_concurrent_requests = 512;
        config.limits.admission_wait = std::time::Duration::from_secs(10);
    })
    .await;
    let drop = active(&s, BRAND, BRAND, BRAND, |b| {
        b.budget_units = 40;
        b.display_name = "drop".into();
    })
    .await;
    let members = enrol_many(&s, BRAND, "1390000", 400).await;
    let token = s.token(BRAND);
    let replies = join_all(members.iter().map(|m| {
        let mut w = WalletServiceClient::new(s.as_token(&token));
        let r = pb::ClaimBenefitRequest {
            request_id: format!("claim-{m}"),
            member: m.clone(),
            benefit: drop.name.clone(),
            claim_code: "LIVE-1".into(),
        };
        async move { w.claim_benefit(r).await.map(tonic::Response::into_inner) }
    }))
    .await;
    let won: Vec<_> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    for e in replies.iter().filter_map(|r| r.as_ref().err()) {
        *refusals
            .entry(format!("{:?} {}", e.code(), reason(e)))
            .or_default() += 1;
    }
    assert_eq!(won.len(), 40, "refusals: {refusals:?}");
    let mut owners: Vec<_> = won
        .iter()
        .map(|i| i.name.split("/walletItems/").next().unwrap())
        .collect();
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), 40, "no member got two");
    for e in replies.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(e), "BUDGET_EXHAUSTED", "{e:?}");
    }
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 40);
}

/// A claim retried many times at once (an app that timed out and fired again) while others
/// claim the same drop: the retries get one unit between them, each the same, and the drop's
/// other units go to the other claimers — however the retries and the others share a commit.
#[tokio::test]
async fn racing_retries_of_one_claim_take_one_unit_and_all_get_it() {
    let s = start("ent_claim_retries", |config| {
        config.limits.max_concurrent_requests = 512;
        config.limits.admission_wait = std::time::Duration::from_secs(10);
    })
    .await;
    let drop = active(&s, BRAND, BRAND, BRAND, |b| {
        b.budget_units = 20;
        b.display_name = "retried".into();
    })
    .await;
    let members = enrol_many(&s, BRAND, "1391000", 40).await;
    let token = s.token(BRAND);
    let claim = |member: &str, request_id: String| pb::ClaimBenefitRequest {
        request_id,
        member: member.to_owned(),
        benefit: drop.name.clone(),
        claim_code: String::new(),
    };
    // The retried claim's copies interleaved with the others', all sent at once.
    let mut calls = Vec::new();
    for (i, m) in members.iter().enumerate().skip(1) {
        calls.push(claim(m, format!("other-{i}")));
        if i % 3 == 0 {
            calls.push(claim(&members[0], "retried".into()));
        }
    }
    let replies = join_all(calls.iter().cloned().map(|r| {
        let mut w = WalletServiceClient::new(s.as_token(&token));
        async move {
            let retried = r.request_id == "retried";
            (
                retried,
                w.claim_benefit(r).await.map(tonic::Response::into_inner),
            )
        }
    }))
    .await;
    let retried: Vec<_> = replies.iter().filter(|(r, _)| *r).map(|(_, a)| a).collect();
    assert_eq!(retried.len(), 13);
    let first = retried[0]
        .as_ref()
        .unwrap_or_else(|e| panic!("a retry was refused: {e:?}"));
    for reply in &retried {
        assert_eq!(
            reply.as_ref().ok(),
            Some(first),
            "every retry gets the first claim's unit"
        );
    }
    let others_won = replies.iter().filter(|(r, a)| !*r && a.is_ok()).count();
    for (_, reply) in replies.iter().filter(|(r, _)| !*r) {
        if let Err(e) = reply {
            assert_eq!(reason(e), "BUDGET_EXHAUSTED", "{e:?}");
        }
    }
    assert_eq!(others_won, 19, "the drop's other units went to the others");
    // Read back: twenty units held, one of them the retried member's.
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 20);
    let held = WalletServiceClient::new(s.as_token(&token))
        .list_wallet(pb::ListWalletRequest {
            member: members[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.items.len(), 1, "{held:?}");
    assert_eq!(&held.items[0], first);
}

/// 200 tills redeem one single-use coupon at once: one succeeds, 199 hear ALREADY_REDEEMED;
/// the ledger posts once and the statement shows what the brand owes the mall.
#[tokio::test]
async fn a_unit_is_redeemed_once_and_the_brand_owes_the_mall_its_discount() {
    // Two hundred tills at once from one partner: admitted all (the default admits 96 per
    // partner and sheds the rest with RESOURCE_EXHAUSTED, which is not what is tested here).
    let s = start("ent_redeem_once", |config| {
        config.limits.max_concurrent_requests = 512;
        config.limits.admission_wait = std::time::Duration::from_secs(5);
    })
    .await;
    let coupon = active(&s, MALL, BRAND, MALL, |_| {}).await;
    let member = enrol(&s, MALL, "13800138003").await;
    consent(&s, MALL, &member, BRAND).await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    // Below the threshold: refused, nothing held.
    let e = till(&s, &s.store_token(MALL, "sh01"))
        .redeem(redeem(&item.name, "low", 29_999))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "THRESHOLD_NOT_MET");
    let counter = s.store_token(MALL, "sh01");
    let replies = join_all((0..200).map(|i| {
        let mut t = till(&s, &counter);
        let r = redeem(&item.name, &format!("r{i}"), 45_000);
        async move { t.redeem(r).await.map(tonic::Response::into_inner) }
    }))
    .await;
    let ok: Vec<_> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].discount, cny(5_000));
    assert_eq!(ok[0].state, pb::RedemptionState::Confirmed as i32);
    for e in replies.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            (e.code(), reason(e).as_str()),
            (Code::FailedPrecondition, "ALREADY_REDEEMED")
        );
    }
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 1);
    assert_eq!(unbalanced(&s).await, 0);

    let statement = |of: &str, other: &str| {
        let mut l = ledger(&s, of);
        let r = pb::GetSettlementStatementRequest {
            counterparty: format!("partners/{other}"),
            ..Default::default()
        };
        async move { l.get_settlement_statement(r).await.unwrap().into_inner() }
    };
    for (of, other) in [(BRAND, MALL), (MALL, BRAND)] {
        let st = statement(of, other).await;
        assert_eq!(st.net.len(), 1, "{of}");
        let line = &st.net[0];
        assert_eq!(
            (
                line.debtor.as_str(),
                line.creditor.as_str(),
                line.amount.clone()
            ),
            ("partners/brand-a", "partners/mall-b", cny(5_000)),
            "{of}'s books"
        );
        assert_eq!(st.lines[0].benefit, coupon.name);
    }
    // The outsider has no postings and owes nobody.
    let st = statement(OUTSIDER, BRAND).await;
    assert!(st.lines.is_empty() && st.net.is_empty());
    let entries = ledger(&s, BRAND)
        .list_entries(pb::ListEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(
        entries
            .iter()
            .map(|e| e.transaction.as_str())
            .collect::<Vec<_>>(),
        ["GRANT", "REDEMPTION"]
    );
    assert!(
        entries
            .iter()
            .flat_map(|e| &e.postings)
            .all(|p| !p.account.starts_with("receivable")),
        "the brand sees its own accounts only"
    );

    // The audit finds a posting slipped in by hand that breaks the zero sum.
    let db = s.database("entitlements").await;
    let audit = lianyu_entitlements::audit_ledger(&db).await.unwrap();
    assert_eq!((audit.transactions, audit.unbalanced.len()), (2, 0));
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(
        "INSERT INTO ledger_postings (transaction_id, kind, partner_id, account, currency, \
         amount, benefit_id, redemption_id, posted_at) \
         VALUES ('forged', 'REDEMPTION', 'mall-b', 'discounts_given', 'CNY', -100, 'x', NULL, 0)",
    )
    .await
    .unwrap();
    let audit = lianyu_entitlements::audit_ledger(&db).await.unwrap();
    assert_eq!(
        audit.unbalanced,
        [("forged".to_owned(), "CNY".to_owned(), -100)]
    );
}

/// A reservation ends exactly once: confirm and cancel racing, and a hold that expires.
#[tokio::test]
async fn a_hold_ends_exactly_once() {
    let s = mesh("ent_holds").await;
    let coupon = active(&s, MALL, MALL, MALL, |b| b.per_member_limit = 0).await;
    let member = enrol(&s, MALL, "13800138004").await;
    let counter = s.store_token(MALL, "sh01");
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    let reserve = |rid: &str, hold: i32| pb::ReserveRedemptionRequest {
        request_id: rid.into(),
        wallet_item: item.name.clone(),
        store: String::new(),
        order_amount: cny(40_000),
        hold_seconds: hold,
        ..Default::default()
    };
    for round in 0..5 {
        let held = till(&s, &counter)
            .reserve_redemption(reserve(&format!("h{round}"), 60))
            .await
            .unwrap()
            .into_inner();
        // A second till cannot take the held unit.
        let e = till(&s, &counter)
            .redeem(redeem(&item.name, &format!("x{round}"), 40_000))
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "ITEM_RESERVED");
        let (mut a, mut b) = (till(&s, &counter), till(&s, &counter));
        let (confirm, cancel) = tokio::join!(
            a.confirm_redemption(pb::ConfirmRedemptionRequest {
                request_id: format!("c{round}"),
                name: held.name.clone(),
            }),
            b.cancel_reservation(pb::CancelReservationRequest {
                request_id: format!("k{round}"),
                name: held.name.clone(),
            }),
        );
        assert!(
            confirm.is_ok() != cancel.is_ok(),
            "exactly one of confirm and cancel wins"
        );
        let loser = confirm.err().or(cancel.err()).unwrap();
        assert_eq!(reason(&loser), "REDEMPTION_STATE");
        // A cancel that won leaves the unit free for the next round; a confirm ends it.
        if !cancel_won(&loser) {
            break;
        }
    }
    // A one-second hold nobody ends is released by expiry; confirming it afterwards fails.
    let fresh = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g2"))
        .await
        .unwrap()
        .into_inner();
    let postings_before = rows(&s, "entitlements", "ledger_postings").await;
    let held = till(&s, &counter)
        .reserve_redemption(pb::ReserveRedemptionRequest {
            wallet_item: fresh.name.clone(),
            ..reserve("short", 1)
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let items = wallet(&s, MALL)
            .list_wallet(pb::ListWalletRequest {
                member: member.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        let now = items.iter().find(|i| i.name == fresh.name).unwrap();
        if now.state == pb::WalletItemState::Available as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let e = till(&s, &counter)
        .confirm_redemption(pb::ConfirmRedemptionRequest {
            request_id: "late".into(),
            name: held.name,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "REDEMPTION_STATE");
    assert_eq!(
        rows(&s, "entitlements", "ledger_postings").await,
        postings_before
    );
    assert_eq!(unbalanced(&s).await, 0);
}

/// A per-member limit lowered through one instance holds at once on another that already
/// serves the drop (and caches its definition).
#[tokio::test]
async fn a_lowered_limit_holds_on_every_instance_at_once() {
    let s = mesh("ent_limit_replicas").await;
    let replica = crate::support::second_instance!(s, lianyu_entitlements::mount);
    let drop = active(&s, BRAND, BRAND, BRAND, |b| {
        b.per_member_limit = 0;
        b.display_name = "open".into();
    })
    .await;
    let member = enrol(&s, BRAND, "13800138012").await;
    let token = s.token(BRAND);
    let claim = |rid: &str| pb::ClaimBenefitRequest {
        request_id: rid.into(),
        member: member.clone(),
        benefit: drop.name.clone(),
        claim_code: String::new(),
    };
    let mut on_replica = WalletServiceClient::new(InterceptedService::new(
        replica,
        lianyu_kit::client::Bearer::new(&token),
    ));
    on_replica.claim_benefit(claim("c1")).await.unwrap();
    benefits(&s, BRAND)
        .update_benefit(pb::UpdateBenefitRequest {
            request_id: "limit".into(),
            benefit: Some(pb::Benefit {
                name: drop.name.clone(),
                per_member_limit: 1,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["per_member_limit".into()],
            }),
        })
        .await
        .unwrap();
    let e = on_replica.claim_benefit(claim("c2")).await.unwrap_err();
    assert_eq!(reason(&e), "PER_MEMBER_LIMIT");
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 1);
}

/// Two entitlements instances on one database (the second beside the first's identity, as two
/// replicas of a Deployment): 200 members claim a drop of 50 through both at once, and the
/// budget holds where it lives — 50 units, no more, whichever replica answered.
#[tokio::test]
async fn two_instances_on_one_database_share_one_budget() {
    let s = start("ent_two_instances", |config| {
        config.limits.max_concurrent_requests = 512;
        config.limits.admission_wait = std::time::Duration::from_secs(10);
    })
    .await;
    let replica = crate::support::second_instance!(s, lianyu_entitlements::mount);
    let drop = active(&s, BRAND, BRAND, BRAND, |b| {
        b.budget_units = 50;
        b.display_name = "shared".into();
    })
    .await;
    let members = enrol_many(&s, BRAND, "1370000", 200).await;
    let token = s.token(BRAND);
    let replies = join_all(members.iter().enumerate().map(|(i, m)| {
        let channel = if i % 2 == 0 {
            s.channel.clone()
        } else {
            replica.clone()
        };
        let mut w = WalletServiceClient::new(InterceptedService::new(
            channel,
            lianyu_kit::client::Bearer::new(&token),
        ));
        let r = pb::ClaimBenefitRequest {
            request_id: format!("claim-{i}"),
            member: m.clone(),
            benefit: drop.name.clone(),
            claim_code: String::new(),
        };
        async move { w.claim_benefit(r).await }
    }))
    .await;
    let mut refusals = std::collections::BTreeMap::<String, usize>::new();
    for e in replies.iter().filter_map(|r| r.as_ref().err()) {
        *refusals.entry(reason(e)).or_default() += 1;
    }
    assert_eq!(
        replies.iter().filter(|r| r.is_ok()).count(),
        50,
        "refusals: {refusals:?}"
    );
    assert_eq!(refusals.keys().collect::<Vec<_>>(), ["BUDGET_EXHAUSTED"]);
    let read = benefits(&s, BRAND)
        .get_benefit(pb::GetBenefitRequest {
            name: drop.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.granted_units, 50);
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 50);
}

fn cancel_won(loser: &tonic::Status) -> bool {
    loser
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("state").cloned())
        .as_deref()
        == Some("CANCELLED")
}

/// Identity cannot answer: a grant that needs it and a redemption answer UNAVAILABLE and
/// write nothing.
#[tokio::test]
async fn without_identity_grants_and_redemptions_fail_closed() {
    let s = start("ent_fail_closed", |config| {
        config.set_peer_url("identity", "http://127.0.0.1:9");
    })
    .await;
    let coupon = active(&s, MALL, MALL, MALL, |_| {}).await;
    let member = enrol(&s, MALL, "13800138005").await;
    let e = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unavailable, "IDENTITY_UNAVAILABLE")
    );
    let e = till(&s, &s.store_token(MALL, "sh01"))
        .redeem(redeem(&item_at(&member, "walletItems/0"), "r", 40_000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 0);
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 0);
    assert_eq!(rows(&s, "entitlements", "ledger_postings").await, 0);
}

/// The drop gate gives back what a refused claim held: one member pressing "claim" ten times
/// at once (one unit each, limit one) beside another member, on a drop of two units — both
/// members get one. After the drop is spent, a retry of a winning claim still returns its unit.
#[tokio::test]
async fn a_refused_claim_leaves_its_unit_to_the_next_claimer_and_a_winner_can_retry() {
    let s = start("ent_gate", |config| {
        config.limits.max_concurrent_requests = 512;
        config.limits.admission_wait = std::time::Duration::from_secs(5);
    })
    .await;
    let drop = active(&s, BRAND, BRAND, BRAND, |b| {
        b.budget_units = 2;
        b.display_name = "two".into();
    })
    .await;
    let eager = enrol(&s, BRAND, "13800138006").await;
    let patient = enrol(&s, BRAND, "13800138007").await;
    let claim = |member: &str, rid: String| pb::ClaimBenefitRequest {
        request_id: rid,
        member: member.to_owned(),
        benefit: drop.name.clone(),
        claim_code: String::new(),
    };
    let token = s.token(BRAND);
    let mut calls: Vec<_> = (0..10).map(|i| claim(&eager, format!("e{i}"))).collect();
    calls.push(claim(&patient, "p".into()));
    let replies = join_all(calls.into_iter().map(|r| {
        let mut w = WalletServiceClient::new(s.as_token(&token));
        async move { w.claim_benefit(r).await.map(tonic::Response::into_inner) }
    }))
    .await;
    let won: Vec<_> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 2, "{replies:?}");
    assert!(won.iter().any(|i| i.name.starts_with(&patient)));
    assert!(won.iter().any(|i| i.name.starts_with(&eager)));
    for e in replies.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(e), "PER_MEMBER_LIMIT");
    }
    // Spent: a new claimer hears so at once; the patient member's retry gets its unit back.
    let late = enrol(&s, BRAND, "13800138008").await;
    let e = WalletServiceClient::new(s.as_token(&token))
        .claim_benefit(claim(&late, "late".into()))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BUDGET_EXHAUSTED");
    let again = WalletServiceClient::new(s.as_token(&token))
        .claim_benefit(claim(&patient, "p".into()))
        .await
        .unwrap()
        .into_inner();
    assert!(won.contains(&&again));
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 2);
}

/// Identity's feed reaches the wallet: when the member withdraws their BENEFIT_REDEMPTION
/// consent to the brand, the brand's hold on their unit is cancelled and the brand can no
/// longer redeem it; when the mall erases the member, the units granted through the mall are
/// closed.
#[tokio::test]
async fn a_withdrawal_cancels_the_grantees_holds_and_an_erasure_closes_the_wallet() {
    let s = mesh("ent_feed").await;
    let (coupon, at_mall, at_brand) = honoured_by_both(&s, "13800138009").await;
    let granted = |rid: &'static str| {
        let mut w = wallet(&s, MALL);
        let r = grant(&at_mall, &coupon.name, rid);
        async move { w.grant_benefit(r).await.unwrap().into_inner() }
    };
    let (first, second) = (granted("g1").await, granted("g2").await);
    // The brand knows the unit by its own id of the member.
    let first_at_brand = item_at(&at_brand, &first.name);
    let held = till(&s, &s.token(BRAND))
        .reserve_redemption(pb::ReserveRedemptionRequest {
            request_id: "hold".into(),
            wallet_item: first_at_brand.clone(),
            store: format!("partners/{BRAND}/stores/b01"),
            order_amount: cny(40_000),
            hold_seconds: 3600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.state, pb::RedemptionState::Reserved as i32);

    ConsentServiceClient::new(s.as_token(&s.token(MALL)))
        .withdraw_consent(id::WithdrawConsentRequest {
            request_id: "withdraw".into(),
            member: at_mall.clone(),
            grantee: format!("partners/{BRAND}"),
            purposes: vec![ConsentPurpose::BenefitRedemption as i32],
        })
        .await
        .unwrap();
    let state_of = |name: String| {
        let mut w = wallet(&s, MALL);
        let member = at_mall.clone();
        async move {
            w.list_wallet(pb::ListWalletRequest {
                member,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| i.state)
        }
    };
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while state_of(first.name.clone()).await != Some(pb::WalletItemState::Available as i32) {
        assert!(
            tokio::time::Instant::now() < until,
            "the hold was never cancelled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let e = till(&s, &s.token(BRAND))
        .confirm_redemption(pb::ConfirmRedemptionRequest {
            request_id: "confirm".into(),
            name: held.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "REDEMPTION_STATE");
    let e = till(&s, &s.token(BRAND))
        .redeem(pb::RedeemRequest {
            store: format!("partners/{BRAND}/stores/b01"),
            ..redeem(&first_at_brand, "after", 40_000)
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CONSENT_REQUIRED");
    // The mall itself still honours its own unit.
    till(&s, &s.store_token(MALL, "sh01"))
        .redeem(redeem(&first.name, "own", 40_000))
        .await
        .unwrap();

    // The member also holds stored value through the mall.
    let card = crate::balances::card(&s).await;
    wallet(&s, MALL)
        .top_up(pb::TopUpRequest {
            request_id: "top-up".into(),
            member: at_mall.clone(),
            benefit: card.name.clone(),
            amount: cny(10_000),
            payment_reference: "pos-1".into(),
        })
        .await
        .unwrap();

    erase_at(&s, MALL, &at_mall).await;
    until_closed(&s, second.name.rsplit('/').next().unwrap()).await;
    // In the same transaction the stored-value account opened through the mall was closed.
    assert_eq!(
        rows(&s, "entitlements", "balances WHERE closed = true").await,
        1
    );
}

/// A retry is answered with what its first call did, whatever changed since: a grant retried
/// after the issuer paused the benefit gets its unit, a redemption retried after the member
/// withdrew the consent it relied on gets its redemption — and a new call is refused by the
/// same change and writes nothing.
#[tokio::test]
async fn a_retry_gets_what_its_first_call_did_after_the_world_changed() {
    let s = mesh("ent_retry_after_change").await;
    let (coupon, at_mall, at_brand) = honoured_by_both(&s, "13800138041").await;
    let granted = wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g1"))
        .await
        .unwrap()
        .into_inner();
    wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g2"))
        .await
        .unwrap();
    let at_counter = pb::RedeemRequest {
        store: format!("partners/{BRAND}/stores/b01"),
        ..redeem(&item_at(&at_brand, &granted.name), "b-redeem", 40_000)
    };
    let redeemed = till(&s, &s.token(BRAND))
        .redeem(at_counter.clone())
        .await
        .unwrap()
        .into_inner();

    benefits(&s, MALL)
        .pause_benefit(pb::PauseBenefitRequest {
            request_id: "pause".into(),
            name: coupon.name.clone(),
        })
        .await
        .unwrap();
    ConsentServiceClient::new(s.as_token(&s.token(MALL)))
        .withdraw_consent(id::WithdrawConsentRequest {
            request_id: "withdraw".into(),
            member: at_mall.clone(),
            grantee: format!("partners/{BRAND}"),
            purposes: vec![ConsentPurpose::BenefitRedemption as i32],
        })
        .await
        .unwrap();
    let (units, redemptions, postings) = (
        rows(&s, "entitlements", "wallet_items").await,
        rows(&s, "entitlements", "redemptions").await,
        rows(&s, "entitlements", "ledger_postings").await,
    );
    let again = wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, granted);
    let e = wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g3"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_STATE");
    let again = till(&s, &s.token(BRAND))
        .redeem(at_counter)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, redeemed);
    let second = format!(
        "{at_brand}/walletItems/{}",
        other_unit(&s, &granted.name).await
    );
    let e = till(&s, &s.token(BRAND))
        .redeem(pb::RedeemRequest {
            store: format!("partners/{BRAND}/stores/b01"),
            ..redeem(&second, "b-new", 40_000)
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CONSENT_REQUIRED");
    assert_eq!(
        (
            rows(&s, "entitlements", "wallet_items").await,
            rows(&s, "entitlements", "redemptions").await,
            rows(&s, "entitlements", "ledger_postings").await,
        ),
        (units, redemptions, postings),
        "the retries and the refusals wrote nothing"
    );
}

/// The id of the one stored unit other than `item`.
async fn other_unit(s: &TestServer, item: &str) -> String {
    use sea_orm::{ConnectionTrait, Statement};
    let id = item.rsplit('/').next().unwrap();
    let db = s.database("entitlements").await;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT id FROM wallet_items WHERE id <> '{id}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "id").unwrap()
}

/// A retry answered from the stored reply is answered only to the caller that made the call: a
/// till at another store that sends the mall's redemption again, same request id and all, is
/// refused as before (its store token may not redeem there) and learns nothing of it; the
/// store that redeemed gets its reply back.
#[tokio::test]
async fn a_stored_reply_is_never_given_to_another_stores_till() {
    let s = mesh("ent_replay_other_store").await;
    let (coupon, at_mall, _) = honoured_by_both(&s, "13800138061").await;
    let unit = wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g1"))
        .await
        .unwrap()
        .into_inner();
    let at_sh01 = redeem(&unit.name, "r1", 40_000);
    let redeemed = till(&s, &s.store_token(MALL, "sh01"))
        .redeem(at_sh01.clone())
        .await
        .unwrap()
        .into_inner();
    let e = till(&s, &s.store_token(MALL, "sh02"))
        .redeem(at_sh01.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_MISMATCH", "{e:?}");
    // The partner-wide token made no such call either: its id is the till's, not its own.
    let e = till(&s, &s.token(MALL))
        .redeem(at_sh01.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "REQUEST_ID_REUSED", "{e:?}");
    // Another partner — allied or not — sending it gets its own refusal, and no token none at all.
    for partner in [BRAND, OUTSIDER] {
        let e = till(&s, &s.token(partner))
            .redeem(at_sh01.clone())
            .await
            .unwrap_err();
        // The mall's store is not one of its own: refused on the field; its key holds no reply.
        assert_eq!(e.code(), Code::InvalidArgument, "{partner}: {e:?}");
    }
    let e = RedemptionServiceClient::new(s.channel.clone())
        .redeem(at_sh01.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let again = till(&s, &s.store_token(MALL, "sh01"))
        .redeem(at_sh01)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, redeemed);
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 1);
}

/// An erasure at a partner reaches what entitlements keeps of what the member did through it:
/// the internal ledger feed's transactions (grants, a drop claim, a top-up through the mall)
/// name no member from then on, at the sequences they had, and the mall's stored replies about
/// the person are purged — a replay answers NOT_FOUND and takes nothing again, even where a
/// shut drop answers replays without asking identity. What the member did through the brand
/// (a redemption at its counter) is the brand's, and stays.
#[tokio::test]
async fn an_erasure_leaves_the_member_in_no_ledger_event_or_stored_reply_it_covers() {
    let s = mesh("ent_erasure_feed").await;
    let (coupon, at_mall, at_brand) = honoured_by_both(&s, "13800138031").await;
    let drop = active(&s, MALL, MALL, MALL, |b| {
        b.display_name = "drop".into();
        b.budget_units = 1;
    })
    .await;
    let card = crate::balances::card(&s).await;
    let other = enrol(&s, MALL, "13800138032").await;
    let first = wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g1"))
        .await
        .unwrap()
        .into_inner();
    wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g2"))
        .await
        .unwrap();
    let claim = |member: &str, rid: &str| pb::ClaimBenefitRequest {
        request_id: rid.into(),
        member: member.into(),
        benefit: drop.name.clone(),
        claim_code: "LIVE-1".into(),
    };
    let claimed = wallet(&s, MALL)
        .claim_benefit(claim(&at_mall, "c1"))
        .await
        .unwrap()
        .into_inner();
    assert!(claimed.name.starts_with(&at_mall), "{claimed:?}");
    // The last unit is gone: the drop's gate shuts, and answers replays from stored replies.
    let e = wallet(&s, MALL)
        .claim_benefit(claim(&other, "c2"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BUDGET_EXHAUSTED");
    wallet(&s, MALL)
        .top_up(pb::TopUpRequest {
            request_id: "top-up".into(),
            member: at_mall.clone(),
            benefit: card.name.clone(),
            amount: cny(10_000),
            payment_reference: "pos-1".into(),
        })
        .await
        .unwrap();
    let at_counter = pb::RedeemRequest {
        store: format!("partners/{BRAND}/stores/b01"),
        ..redeem(&item_at(&at_brand, &first.name), "b-redeem", 40_000)
    };
    let redeemed = till(&s, &s.token(BRAND))
        .redeem(at_counter.clone())
        .await
        .unwrap()
        .into_inner();
    let mesh_id = {
        use sea_orm::{ConnectionTrait, Statement};
        let db = s.database("entitlements").await;
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT DISTINCT member FROM wallet_items".to_owned(),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<String>("", "member").unwrap()
    };
    let holding = || crate::support::stored_events_holding(&s, "entitlements", &mesh_id);
    // Two grants, the claim and the top-up through the mall, the redemption at the brand.
    let before = holding().await;
    assert_eq!(before.len(), 5, "{before:?}");
    let events = rows(&s, "entitlements", "kit_outbox_events").await;

    erase_at(&s, MALL, &at_mall).await;
    // Entitlements acts on identity's feed as it comes; wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let left = loop {
        let left = holding().await;
        if left.len() < before.len() {
            break left;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still named: {left:?}"
        );
        tokio::task::yield_now().await;
    };
    // Only the redemption at the brand's counter still names the member; every event kept its
    // place in the feed.
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(before.contains(&left[0]));
    assert_eq!(rows(&s, "entitlements", "kit_outbox_events").await, events);

    for request in ["g1", "g2", "c1", "top-up"] {
        assert_eq!(
            stored_reply(&s, "entitlements", MALL, request).await,
            (true, true),
            "{request} purged"
        );
    }
    assert_eq!(
        stored_reply(&s, "entitlements", BRAND, "b-redeem").await,
        (false, false),
        "kept"
    );
    let units = rows(&s, "entitlements", "wallet_items").await;
    let e = wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = wallet(&s, MALL)
        .claim_benefit(claim(&at_mall, "c1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "MEMBER_ERASED"),
        "{e:?}"
    );
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, units);
    let again = till(&s, &s.token(BRAND))
        .redeem(at_counter)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, redeemed, "the brand's replay is its own, as it was");
}

/// A grant that checked the member before the mall erased them and commits after entitlements
/// acted on the erasure (a call in flight across it) does not outlive the erasure: identity's
/// erasure is acted on again once every call in flight then has ended
/// (`LIANYU_REQUEST_TIMEOUT` and a margin), and closes the late unit too. The late unit is
/// written straight into the table after the first pass was seen, as such a grant would.
#[tokio::test]
async fn a_grant_in_flight_across_an_erasure_is_closed_by_the_second_pass() {
    use sea_orm::{ConnectionTrait, Statement};
    let s = start("ent_erasure_late", |config| {
        config.limits.request_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let (coupon, at_mall, _) = honoured_by_both(&s, "13800138051").await;
    let granted = wallet(&s, MALL)
        .grant_benefit(grant(&at_mall, &coupon.name, "g1"))
        .await
        .unwrap()
        .into_inner();
    let db = s.database("entitlements").await;
    let first = granted.name.rsplit('/').next().unwrap().to_owned();
    let mesh: String = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT member FROM wallet_items WHERE id = '{first}'"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "member")
        .unwrap();
    erase_at(&s, MALL, &at_mall).await;
    until_closed(&s, &first).await;
    // The first pass is done; now the grant that was in flight commits.
    let now = lianyu_kit::time::now_millis();
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        format!(
            "INSERT INTO wallet_items (id, benefit_id, member, holder, state, granted_at, \
             expires_at, claim_code) VALUES ('late', '{}', '{mesh}', '{MALL}', 'available', \
             {now}, {}, NULL)",
            coupon.name.rsplit('/').next().unwrap(),
            now + 86_400_000
        ),
    ))
    .await
    .unwrap();
    until_closed(&s, "late").await;
}

/// Refunds at the till: half the order refunded reverses half the brand's subsidy; ten
/// refunds racing for the rest never refund more than was paid; the full refund leaves the
/// books square between brand and mall.
#[tokio::test]
async fn refunds_reverse_the_subsidy_in_proportion_and_never_exceed_the_order() {
    let s = start("ent_refunds", |config| {
        config.limits.max_concurrent_requests = 512;
    })
    .await;
    let coupon = active(&s, MALL, BRAND, MALL, |_| {}).await;
    let member = enrol(&s, MALL, "13800138010").await;
    consent(&s, MALL, &member, BRAND).await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    let counter = s.store_token(MALL, "sh01");
    let sale = till(&s, &counter)
        .redeem(redeem(&item.name, "sale", 45_000))
        .await
        .unwrap()
        .into_inner();
    let refund = |rid: String, amount: Option<i64>| pb::RefundRedemptionRequest {
        request_id: rid,
        name: sale.name.clone(),
        amount: amount.and_then(cny),
    };
    let owed = || {
        let mut l = ledger(&s, BRAND);
        async move {
            l.get_settlement_statement(pb::GetSettlementStatementRequest {
                counterparty: format!("partners/{MALL}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .net
            .first()
            .and_then(|l| l.amount.clone())
            .map_or(0, |m| m.minor_units)
        }
    };
    assert_eq!(owed().await, 5_000);
    let half = till(&s, &counter)
        .refund_redemption(refund("half".into(), Some(22_500)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(half.refunded_amount, cny(22_500));
    assert_eq!(owed().await, 2_500, "half the subsidy reversed");
    let e = till(&s, &counter)
        .refund_redemption(refund("too-much".into(), Some(30_000)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "REFUND_EXCEEDS_ORDER");
    assert_eq!(owed().await, 2_500, "a refused refund changed nothing");
    // Another partner's till cannot refund it.
    let e = till(&s, &s.token(BRAND))
        .refund_redemption(refund("brand".into(), None))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "REDEMPTION_NOT_FOUND");
    let replies = join_all((0..10).map(|i| {
        let mut t = till(&s, &counter);
        let r = refund(format!("r{i}"), Some(4_500));
        async move { t.refund_redemption(r).await }
    }))
    .await;
    assert_eq!(
        replies.iter().filter(|r| r.is_ok()).count(),
        5,
        "{replies:?}"
    );
    let after = till(&s, &counter)
        .refund_redemption(refund("none-left".into(), None))
        .await
        .unwrap_err();
    assert_eq!(reason(&after), "REDEMPTION_STATE");
    assert_eq!(
        owed().await,
        0,
        "the full refund reversed the whole subsidy"
    );
    let listed = wallet(&s, MALL)
        .list_wallet(pb::ListWalletRequest {
            member: member.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.items[0].state, pb::WalletItemState::Refunded as i32);
    assert_eq!(unbalanced(&s).await, 0);
}

async fn next_entry(
    feed: &mut tonic::Streaming<pb::WatchLedgerEventsResponse>,
) -> pb::WatchLedgerEventsResponse {
    use futures::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
}

/// The ledger feed: each party follows its own side of every transaction from a cursor, and
/// nobody sees another partner's accounts.
#[tokio::test]
async fn each_party_follows_its_own_side_of_the_ledger() {
    use futures::StreamExt;
    let s = mesh("ent_ledger_feed").await;
    let watch = |partner: &str, after: i64| {
        let mut l = ledger(&s, partner);
        async move {
            l.watch_ledger_events(pb::WatchLedgerEventsRequest {
                after: Some(lianyu_proto::common::v1::FeedCursor { sequence: after }),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let mut brand_feed = watch(BRAND, 0).await;
    let coupon = active(&s, MALL, BRAND, MALL, |_| {}).await;
    let member = enrol(&s, MALL, "13800138011").await;
    consent(&s, MALL, &member, BRAND).await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    till(&s, &s.store_token(MALL, "sh01"))
        .redeem(redeem(&item.name, "r", 45_000))
        .await
        .unwrap();
    let granted = next_entry(&mut brand_feed).await;
    let redeemed = next_entry(&mut brand_feed).await;
    let kinds = |e: &pb::WatchLedgerEventsResponse| {
        let entry = e.entry.clone().unwrap();
        (
            entry.transaction,
            entry
                .postings
                .into_iter()
                .map(|p| (p.account, p.amount.unwrap().minor_units))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        kinds(&granted),
        (
            "GRANT".into(),
            vec![
                ("marketing_expense".into(), 5_000),
                ("benefit_liability".into(), -5_000)
            ]
        )
    );
    assert_eq!(
        kinds(&redeemed),
        (
            "REDEMPTION".into(),
            vec![
                ("benefit_liability".into(), 5_000),
                (format!("payable:{MALL}"), -5_000)
            ]
        ),
        "the brand sees its own accounts, not the mall's"
    );
    // The mall resumes from the start and sees only its side; the outsider sees nothing.
    let mut mall_feed = watch(MALL, 0).await;
    assert_eq!(
        kinds(&next_entry(&mut mall_feed).await).1,
        [
            (format!("receivable:{BRAND}"), 5_000),
            ("discounts_given".into(), -5_000)
        ]
    );
    // Resuming after the grant's cursor gives the redemption only.
    let mut resumed = watch(BRAND, granted.cursor.unwrap().sequence).await;
    assert_eq!(next_entry(&mut resumed).await.entry, redeemed.entry);
    let mut outsider = watch(OUTSIDER, 0).await;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), outsider.next())
            .await
            .is_err()
    );
}

/// Every other kind of caller of the till and the ledger: another store's counter, an ally, an
/// outsider, and a store token asking for partner-wide things. None of them changes or learns
/// anything (no token at all is refused for every RPC in `edge.rs`).
#[tokio::test]
async fn other_callers_of_the_till_and_the_ledger_are_refused_and_change_nothing() {
    let s = mesh("ent_callers").await;
    let coupon = active(&s, MALL, MALL, MALL, |b| b.per_member_limit = 0).await;
    let member = enrol(&s, MALL, "13800138013").await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    let held = till(&s, &s.store_token(MALL, "sh01"))
        .reserve_redemption(pb::ReserveRedemptionRequest {
            request_id: "hold".into(),
            wallet_item: item.name.clone(),
            store: String::new(),
            order_amount: cny(40_000),
            hold_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let other_store = s.store_token(MALL, "sh02");
    let e = till(&s, &other_store)
        .confirm_redemption(pb::ConfirmRedemptionRequest {
            request_id: "c".into(),
            name: held.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "REDEMPTION_NOT_FOUND", "another counter's hold");
    let e = till(&s, &other_store)
        .redeem(redeem(&item.name, "elsewhere", 40_000))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_MISMATCH");
    for partner in [BRAND, OUTSIDER] {
        let e = till(&s, &s.token(partner))
            .cancel_reservation(pb::CancelReservationRequest {
                request_id: "k".into(),
                name: held.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "REDEMPTION_NOT_FOUND", "{partner}");
        let e = till(&s, &s.token(partner))
            .redeem(pb::RedeemRequest {
                store: format!("partners/{partner}/stores/sh01"),
                ..redeem(&item.name, "foreign", 40_000)
            })
            .await
            .unwrap_err();
        assert_eq!(
            reason(&e),
            "MEMBER_NOT_FOUND",
            "the mall's id means nothing to {partner}"
        );
        let e = wallet(&s, partner)
            .list_wallet(pb::ListWalletRequest {
                member: member.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "MEMBER_NOT_FOUND");
    }
    let counter = s.store_token(MALL, "sh01");
    let e = LedgerServiceClient::new(s.as_token(&counter))
        .list_entries(pb::ListEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_TOKEN_NOT_ALLOWED");
    let e = LedgerServiceClient::new(s.as_token(&counter))
        .get_settlement_statement(pb::GetSettlementStatementRequest {
            counterparty: format!("partners/{BRAND}"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_TOKEN_NOT_ALLOWED");
    let e = BenefitServiceClient::new(s.as_token(&counter))
        .pause_benefit(pb::PauseBenefitRequest {
            request_id: "p".into(),
            name: coupon.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_TOKEN_NOT_ALLOWED");
    // Nothing moved: the hold stands, the benefit is ACTIVE, the unit is reserved.
    let read = benefits(&s, MALL)
        .get_benefit(pb::GetBenefitRequest {
            name: coupon.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.state, pb::BenefitState::Active as i32);
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 1);
    let confirmed = till(&s, &counter)
        .confirm_redemption(pb::ConfirmRedemptionRequest {
            request_id: "mine".into(),
            name: held.name,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.state, pb::RedemptionState::Confirmed as i32);
}

/// A unit nobody redeemed before its expiry becomes EXPIRED and the liability its grant
/// booked at the funder is released (an EXPIRY ledger transaction); the till refuses it.
#[tokio::test]
async fn a_unit_that_expires_unused_releases_the_funders_liability() {
    use sea_orm::ConnectionTrait;
    let s = mesh("ent_expiry").await;
    let coupon = active(&s, MALL, BRAND, MALL, |b| {
        b.kind = pb::BenefitKind::FixedCoupon as i32;
        b.threshold = None;
    })
    .await;
    let member = enrol(&s, MALL, "13800138031").await;
    consent(&s, MALL, &member, BRAND).await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    // Time moves on where it is kept: the unit's expiry is now in the past.
    let id = item.name.rsplit('/').next().unwrap();
    s.database("entitlements")
        .await
        .execute_unprepared(&format!(
            "UPDATE wallet_items SET expires_at = 1 WHERE id = '{id}'"
        ))
        .await
        .unwrap();
    // The expiry job runs every second; wait for its answer (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let liability = loop {
        let entries = ledger(&s, BRAND)
            .list_entries(pb::ListEntriesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries;
        if entries.iter().any(|e| e.transaction == "EXPIRY") {
            break entries
                .iter()
                .flat_map(|e| &e.postings)
                .filter(|p| p.account == "benefit_liability")
                .map(|p| p.amount.as_ref().unwrap().minor_units)
                .sum::<i64>();
        }
        assert!(std::time::Instant::now() < deadline, "no EXPIRY posted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        liability, 0,
        "the brand owes nothing for a unit nobody used"
    );
    let listed = wallet(&s, MALL)
        .list_wallet(pb::ListWalletRequest {
            member: member.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.items[0].state, pb::WalletItemState::Expired as i32);
    let e = till(&s, &s.store_token(MALL, "sh01"))
        .redeem(redeem(&item.name, "late", 40_000))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ITEM_EXPIRED");
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 0);
    assert_eq!(unbalanced(&s).await, 0);
}

/// A benefit honoured only at some stores and for some categories (the brand pays for beauty
/// purchases at the mall's cosmetics counters, not elsewhere): a till at another store or an
/// order of another category is refused and nothing is taken; a definition naming a store of
/// a partner that does not honour it is refused with its field.
#[tokio::test]
async fn a_benefit_is_honoured_only_at_its_stores_and_for_its_categories() {
    let s = mesh("ent_places").await;
    let e = benefits(&s, MALL)
        .create_benefit(pb::CreateBenefitRequest {
            request_id: "bad-places".into(),
            benefit: Some(pb::Benefit {
                display_name: "Beauty 50".into(),
                kind: pb::BenefitKind::FixedCoupon as i32,
                value: cny(5_000),
                budget_units: 10,
                stores: vec![format!("partners/{BRAND}/stores/b01")],
                categories: vec!["Cosmetics!".into()],
                valid_until: timestamp(now_millis() + 3_600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    let mut fields = lianyu_kit::testing::violations(&e);
    fields.sort();
    assert_eq!(fields, ["benefit.categories[0]", "benefit.stores[0]"]);
    assert_eq!(rows(&s, "entitlements", "benefits").await, 0);

    let coupon = active(&s, MALL, BRAND, MALL, |b| {
        b.stores = vec![format!("partners/{MALL}/stores/sh01")];
        b.categories = vec!["cosmetics".into(), "fragrance".into()];
    })
    .await;
    assert_eq!(coupon.categories, ["cosmetics", "fragrance"]);
    let member = enrol(&s, MALL, "13800138041").await;
    consent(&s, MALL, &member, BRAND).await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    let at = |store: &str, category: &str, rid: &str| pb::RedeemRequest {
        store: format!("partners/{MALL}/stores/{store}"),
        category: category.into(),
        ..redeem(&item.name, rid, 40_000)
    };
    let mut mall = till(&s, &s.token(MALL));
    let e = mall
        .redeem(at("sh02", "cosmetics", "r1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "NOT_HONOURED_HERE")
    );
    let e = mall.redeem(at("sh01", "shoes", "r2")).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "CATEGORY_NOT_ELIGIBLE")
    );
    let e = mall.redeem(at("sh01", "", "r3")).await.unwrap_err();
    assert_eq!(
        reason(&e),
        "CATEGORY_NOT_ELIGIBLE",
        "a category must be given"
    );
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 0);
    let ok = mall
        .redeem(at("sh01", "fragrance", "r4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.discount, cny(5_000));
}

/// Two coupons of one stacking group do not combine on one order: the second is refused
/// with STACKING_CONFLICT while the first stands, and allowed once it is cancelled; on
/// another order it is fine. Two tills racing to put one on the same order: exactly one wins.
#[tokio::test]
async fn coupons_of_one_stacking_group_never_combine_on_an_order() {
    let s = mesh("ent_stacking").await;
    let shaped = |name: &'static str| {
        move |b: &mut pb::Benefit| {
            b.display_name = name.into();
            b.per_member_limit = 0;
            b.stacking_group = "store-coupons".into();
        }
    };
    let a = active(&s, MALL, MALL, MALL, shaped("coupon a")).await;
    let b = active(&s, MALL, MALL, MALL, shaped("coupon b")).await;
    let member = enrol(&s, MALL, "13800138051").await;
    let mut units = Vec::new();
    for (i, coupon) in [&a, &b, &a, &b].into_iter().enumerate() {
        let item = wallet(&s, MALL)
            .grant_benefit(grant(&member, &coupon.name, &format!("g{i}")))
            .await
            .unwrap()
            .into_inner();
        units.push(item.name);
    }
    let on = |unit: &str, order: &str, rid: &str| pb::RedeemRequest {
        order_reference: order.into(),
        ..redeem(unit, rid, 40_000)
    };
    let mut mall = till(&s, &s.token(MALL));
    let e = mall.redeem(on(&units[0], "", "r0")).await.unwrap_err();
    assert_eq!(lianyu_kit::testing::violations(&e), ["order_reference"]);
    mall.redeem(on(&units[0], "o1", "r1")).await.unwrap();
    let e = mall.redeem(on(&units[1], "o1", "r2")).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "STACKING_CONFLICT")
    );
    mall.redeem(on(&units[1], "o2", "r3")).await.unwrap();

    // A reservation holds the group on its order until it is cancelled.
    let held = mall
        .reserve_redemption(pb::ReserveRedemptionRequest {
            request_id: "h1".into(),
            wallet_item: units[2].clone(),
            store: format!("partners/{MALL}/stores/sh01"),
            order_amount: cny(40_000),
            order_reference: "o3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = mall.redeem(on(&units[3], "o3", "r4")).await.unwrap_err();
    assert_eq!(reason(&e), "STACKING_CONFLICT");
    mall.cancel_reservation(pb::CancelReservationRequest {
        request_id: "c1".into(),
        name: held.name,
    })
    .await
    .unwrap();
    mall.redeem(on(&units[3], "o3", "r5")).await.unwrap();

    // Two tills at once, the same order, two units of the group: one wins.
    let more: Vec<String> =
        futures::future::join_all([&a, &b].into_iter().enumerate().map(|(i, coupon)| {
            let mut w = wallet(&s, MALL);
            let r = grant(&member, &coupon.name, &format!("race-g{i}"));
            async move { w.grant_benefit(r).await.unwrap().into_inner().name }
        }))
        .await;
    let outcomes = join_all(more.iter().enumerate().map(|(i, unit)| {
        let mut t = till(&s, &s.token(MALL));
        let r = on(unit, "o4", &format!("race-r{i}"));
        async move { t.redeem(r).await }
    }))
    .await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    let lost = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
    assert_eq!(reason(lost), "STACKING_CONFLICT");
    assert_eq!(unbalanced(&s).await, 0);
}

/// A money budget beside the units: ten tills at once redeem 50.00 coupons against a budget
/// of 120.00 and exactly two fit; a full refund gives its share back, so one more fits; a
/// live money budget only grows.
#[tokio::test]
async fn the_discounts_never_pass_a_money_budget_at_any_concurrency() {
    let s = start("ent_money_budget", |config| {
        config.limits.max_concurrent_requests = 256;
    })
    .await;
    let coupon = active(&s, MALL, MALL, MALL, |b| {
        b.kind = pb::BenefitKind::FixedCoupon as i32;
        b.threshold = None;
        b.per_member_limit = 0;
        b.budget_value = cny(12_000);
    })
    .await;
    let member = enrol(&s, MALL, "13800138061").await;
    let mut units = Vec::new();
    for i in 0..11 {
        let item = wallet(&s, MALL)
            .grant_benefit(grant(&member, &coupon.name, &format!("g{i}")))
            .await
            .unwrap()
            .into_inner();
        units.push(item.name);
    }
    let outcomes = join_all(units[..10].iter().enumerate().map(|(i, unit)| {
        let mut t = till(&s, &s.token(MALL));
        let r = redeem(unit, &format!("r{i}"), 40_000);
        async move { t.redeem(r).await.map(tonic::Response::into_inner) }
    }))
    .await;
    let won: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(won.len(), 2, "two discounts of 50.00 fit in 120.00");
    for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(
            (e.code(), reason(e).as_str()),
            (Code::FailedPrecondition, "BUDGET_EXHAUSTED")
        );
    }
    let read = |s: &TestServer| {
        let mut b = benefits(s, MALL);
        let name = coupon.name.clone();
        async move {
            b.get_benefit(pb::GetBenefitRequest { name })
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(read(&s).await.spent_value, cny(10_000));
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 2);

    // A full refund gives its share back: one more fits.
    till(&s, &s.token(MALL))
        .refund_redemption(pb::RefundRedemptionRequest {
            request_id: "refund".into(),
            name: won[0].name.clone(),
            amount: None,
        })
        .await
        .unwrap();
    assert_eq!(read(&s).await.spent_value, cny(5_000));
    till(&s, &s.token(MALL))
        .redeem(redeem(&units[10], "r-after-refund", 40_000))
        .await
        .unwrap();

    // A live money budget only grows.
    let update = |rid: &str, minor: i64| pb::UpdateBenefitRequest {
        request_id: rid.into(),
        benefit: Some(pb::Benefit {
            name: coupon.name.clone(),
            budget_value: cny(minor),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["budget_value".into()],
        }),
    };
    let e = benefits(&s, MALL)
        .update_benefit(update("u1", 11_000))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BUDGET_MAY_ONLY_GROW");
    let grown = benefits(&s, MALL)
        .update_benefit(update("u2", 50_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.budget_value, cny(50_000));
    assert_eq!(grown.spent_value, cny(10_000));
    // A hold takes its share at once and a cancel gives it back.
    let free = outcomes.iter().position(Result::is_err).unwrap();
    let mut counter = till(&s, &s.token(MALL));
    let held = counter
        .reserve_redemption(pb::ReserveRedemptionRequest {
            request_id: "hold".into(),
            wallet_item: units[free].clone(),
            store: format!("partners/{MALL}/stores/sh01"),
            order_amount: cny(40_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read(&s).await.spent_value, cny(15_000));
    counter
        .cancel_reservation(pb::CancelReservationRequest {
            request_id: "cancel".into(),
            name: held.name,
        })
        .await
        .unwrap();
    assert_eq!(read(&s).await.spent_value, cny(10_000));
    assert_eq!(unbalanced(&s).await, 0);
}

/// Live's coupon drop claims for a viewer as the mesh service `live`, through the internal
/// contract: the unit is the viewer's at the partner whose app they watch through (named by
/// that partner's id), the budget holds the same, a replay returns the first answer, and a
/// partner's token — whatever it asks — is refused before anything is read.
#[tokio::test]
async fn the_live_service_claims_a_drop_for_a_viewer_and_no_partner_can() {
    use lianyu_proto::entitlements::internal::v1::{
        ClaimForViewerRequest, drop_service_client::DropServiceClient,
    };
    let s = mesh("ent_claim_for_viewer").await;
    let drop = active(&s, MALL, MALL, MALL, |b| b.budget_units = 1).await;
    let viewer = enrol(&s, MALL, "13800138071").await;
    let other = enrol(&s, MALL, "13800138072").await;
    let live = s.mint(&lianyu_kit::auth::TokenRequest::service(
        "live",
        std::time::Duration::from_secs(600),
    ));
    let claim = |member: &str, rid: &str| ClaimForViewerRequest {
        request_id: rid.into(),
        partner: format!("partners/{MALL}"),
        member: member.into(),
        benefit: drop.name.clone(),
        claim_code: "drop-1".into(),
    };
    let mut as_live = DropServiceClient::new(s.as_token(&live));
    let item = as_live
        .claim_for_viewer(claim(&viewer, "c1"))
        .await
        .unwrap()
        .into_inner();
    assert!(item.name.starts_with(&format!("{viewer}/walletItems/")));
    let replay = as_live
        .claim_for_viewer(claim(&viewer, "c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, item);
    let e = as_live
        .claim_for_viewer(claim(&other, "c2"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BUDGET_EXHAUSTED", "one unit, already claimed");
    // The viewer's wallet at the mall holds it.
    let listed = wallet(&s, MALL)
        .list_wallet(pb::ListWalletRequest {
            member: viewer.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.items, [item]);
    // A partner cannot use the internal contract, not even for its own member.
    let e = DropServiceClient::new(s.as_token(&s.token(MALL)))
        .claim_for_viewer(claim(&other, "c3"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Nor can a mesh service that does not run coupon drops (its token lacks the scope).
    for service in ["entitlements", "identity"] {
        let token = s.mint(&lianyu_kit::auth::TokenRequest::service(
            service,
            std::time::Duration::from_secs(600),
        ));
        let e = DropServiceClient::new(s.as_token(&token))
            .claim_for_viewer(claim(&other, "c4"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e)),
            (Code::PermissionDenied, "SCOPE_MISSING".into())
        );
    }
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 1);
}

/// `GetBenefitAs` answers the live service a benefit as one partner may see it: the mall's
/// own, but not to the brand (not a party: as missing); bad names field by field; a
/// partner's token never.
#[tokio::test]
async fn the_live_service_reads_a_benefit_as_a_partner_sees_it_and_no_partner_can() {
    use lianyu_proto::entitlements::internal::v1::{
        GetBenefitAsRequest, drop_service_client::DropServiceClient,
    };
    let s = mesh("ent_benefit_as").await;
    let coupon = active(&s, MALL, MALL, MALL, |_| {}).await;
    let live = s.mint(&lianyu_kit::auth::TokenRequest::service(
        "live",
        std::time::Duration::from_secs(600),
    ));
    let ask = |token: String, partner: &str, name: &str| {
        let mut client = DropServiceClient::new(s.as_token(&token));
        let request = GetBenefitAsRequest {
            partner: partner.into(),
            name: name.into(),
        };
        async move {
            client
                .get_benefit_as(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let seen = ask(live.clone(), &format!("partners/{MALL}"), &coupon.name)
        .await
        .unwrap();
    assert_eq!(
        (seen.name.as_str(), seen.issuer.clone()),
        (coupon.name.as_str(), format!("partners/{MALL}"))
    );
    for (partner, name) in [
        (format!("partners/{BRAND}"), coupon.name.clone()),
        (format!("partners/{MALL}"), "benefits/nope".to_owned()),
    ] {
        let e = ask(live.clone(), &partner, &name).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e)),
            (Code::NotFound, "BENEFIT_NOT_FOUND".into())
        );
    }
    let e = ask(live.clone(), "mall", "coupon").await.unwrap_err();
    assert_eq!(
        (e.code(), lianyu_kit::testing::violations(&e)),
        (
            Code::InvalidArgument,
            vec!["partner".to_owned(), "name".to_owned()]
        )
    );
    let e = ask(s.token(MALL), &format!("partners/{MALL}"), &coupon.name)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::PermissionDenied, "SCOPE_MISSING".into())
    );
}

/// `partner` closes its store `store` (UpdateStore, `active` false).
pub(crate) async fn close_store(s: &TestServer, partner: &str, store: &str) {
    use lianyu_proto::identity::v1::partner_service_client::PartnerServiceClient;
    PartnerServiceClient::new(s.as_token(&s.token(partner)))
        .update_store(id::UpdateStoreRequest {
            request_id: format!("close-{store}"),
            store: Some(id::Store {
                name: format!("partners/{partner}/stores/{store}"),
                active: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["active".into()],
            }),
        })
        .await
        .unwrap();
}

/// A redemption is taken only at a store identity knows and its partner keeps open: a typo'd
/// store is NOT_FOUND / STORE_NOT_FOUND, a closed one FAILED_PRECONDITION / STORE_CLOSED (for
/// a hold too; the closed store's own till is refused its tokens, PERMISSION_DENIED /
/// STORE_CLOSED), and the unit stays in the wallet with no
/// redemption recorded; at an open store it is redeemed.
#[tokio::test]
async fn a_redemption_is_taken_only_at_a_registered_open_store() {
    let s = mesh("ent_store_open").await;
    let coupon = active(&s, MALL, MALL, MALL, |_| {}).await;
    let member = enrol(&s, MALL, "13800138301").await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    close_store(&s, MALL, "sh02").await;
    let at = |rid: &str, store: &str| pb::RedeemRequest {
        store: store.into(),
        ..redeem(&item.name, rid, 40_000)
    };
    let typo = format!("partners/{MALL}/stores/sh0l");
    let closed = format!("partners/{MALL}/stores/sh02");
    for (token, request, code, why) in [
        (
            s.token(MALL),
            at("typo", &typo),
            Code::NotFound,
            "STORE_NOT_FOUND",
        ),
        (
            s.token(MALL),
            at("closed", &closed),
            Code::FailedPrecondition,
            "STORE_CLOSED",
        ),
        (
            s.store_token(MALL, "sh02"),
            at("closed-till", ""),
            // The closed store's own till is turned away before anything is read.
            Code::PermissionDenied,
            "STORE_CLOSED",
        ),
    ] {
        let e = till(&s, &token).redeem(request).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why));
    }
    let e = till(&s, &s.token(MALL))
        .reserve_redemption(pb::ReserveRedemptionRequest {
            request_id: "hold".into(),
            wallet_item: item.name.clone(),
            store: typo.clone(),
            order_amount: cny(40_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_NOT_FOUND");
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 0);
    let listed = wallet(&s, MALL)
        .list_wallet(pb::ListWalletRequest {
            member: member.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.items.iter().map(|i| i.state()).collect::<Vec<_>>(),
        [pb::WalletItemState::Available],
        "the unit is still there"
    );
    till(&s, &s.token(MALL))
        .redeem(at("open", &format!("partners/{MALL}/stores/sh01")))
        .await
        .unwrap();
    assert_eq!(rows(&s, "entitlements", "redemptions").await, 1);
}

/// A redemption is read back as it stands — held, confirmed, partly refunded — by the partner
/// that made it and by the store it was made at, exactly as the calls that moved it answered;
/// another store, another partner and the operator find nothing, and a bad name names its field.
#[tokio::test]
async fn a_redemption_is_read_back_as_it_stands_by_the_partner_that_made_it_only() {
    let s = mesh("ent_get_redemption").await;
    let coupon = active(&s, MALL, MALL, MALL, |b| b.per_member_limit = 0).await;
    let member = enrol(&s, MALL, "13800138021").await;
    let counter = s.store_token(MALL, "sh01");
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    let held = till(&s, &counter)
        .reserve_redemption(pb::ReserveRedemptionRequest {
            request_id: "hold".into(),
            wallet_item: item.name.clone(),
            order_amount: cny(40_000),
            hold_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let get = |token: String, name: String| {
        let mut client = till(&s, &token);
        async move {
            client
                .get_redemption(pb::GetRedemptionRequest { name })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let readers = [s.token(MALL), counter.clone()];
    for token in &readers {
        assert_eq!(get(token.clone(), held.name.clone()).await.unwrap(), held);
    }
    let confirmed = till(&s, &counter)
        .confirm_redemption(pb::ConfirmRedemptionRequest {
            request_id: "confirm".into(),
            name: held.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        get(counter.clone(), held.name.clone()).await.unwrap(),
        confirmed
    );
    let refunded = till(&s, &counter)
        .refund_redemption(pb::RefundRedemptionRequest {
            request_id: "refund".into(),
            name: held.name.clone(),
            amount: cny(10_000),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refunded.refunded_amount, cny(10_000));
    for token in &readers {
        let read = get(token.clone(), held.name.clone()).await.unwrap();
        assert_eq!(read, refunded);
        assert_eq!(read.state, pb::RedemptionState::Confirmed as i32);
    }

    for (who, token) in [
        ("another store of the mall", s.store_token(MALL, "sh02")),
        ("the brand", s.token(BRAND)),
        ("a partner outside the alliance", s.token(OUTSIDER)),
        ("the operator", s.operator_token()),
    ] {
        let e = get(token, held.name.clone()).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::NotFound, "REDEMPTION_NOT_FOUND"),
            "{who}"
        );
    }
    let e = RedemptionServiceClient::new(s.channel.clone())
        .get_redemption(pb::GetRedemptionRequest {
            name: held.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    for name in ["", "redemptions/", "benefits/x", "redemptions/a/b"] {
        let e = get(s.token(MALL), name.into()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name:?}");
        assert_eq!(
            lianyu_kit::testing::violations(&e),
            vec!["name"],
            "{name:?}"
        );
    }
    let e = get(s.token(MALL), "redemptions/nothing-here".into())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "REDEMPTION_NOT_FOUND");
}

/// Changes of one benefit at once are each made on what the one before committed (its row is
/// held for the change on PostgreSQL): a rename and a grown budget sent together both stand;
/// of four ends sent beside a pause and a rename exactly one ends it and the others are
/// refused naming the state it is in — never an internal error, never a change to an ENDED
/// benefit. Ended, it grants nothing more, and a unit granted before is still honoured.
#[tokio::test]
async fn changes_of_one_benefit_sent_at_once_each_build_on_the_last() {
    const TRIALS: usize = 8;
    let s = mesh("ent_benefit_races").await;
    let mut made = Vec::new();
    for t in 0..TRIALS {
        made.push(
            active(&s, MALL, MALL, MALL, |b| {
                b.display_name = format!("race {t}")
            })
            .await,
        );
    }
    let update = |name: &str, rid: String, b: pb::Benefit, path: &str| pb::UpdateBenefitRequest {
        request_id: rid,
        benefit: Some(pb::Benefit {
            name: name.to_owned(),
            ..b
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![path.to_owned()],
        }),
    };
    let rename = |name: &str, rid: String, to: String| {
        update(
            name,
            rid,
            pb::Benefit {
                display_name: to,
                ..Default::default()
            },
            "display_name",
        )
    };
    // Two field-masked updates at once: both stand.
    join_all(made.iter().enumerate().map(|(t, b)| {
        let grow = update(
            &b.name,
            format!("grow-{t}"),
            pb::Benefit {
                budget_units: 2_000,
                ..Default::default()
            },
            "budget_units",
        );
        let renamed = rename(&b.name, format!("rename-{t}"), format!("renamed {t}"));
        let (mut a, mut b) = (benefits(&s, MALL), benefits(&s, MALL));
        async move {
            let (grown, renamed) = tokio::join!(a.update_benefit(grow), b.update_benefit(renamed));
            grown.unwrap_or_else(|e| panic!("trial {t}: grow: {e:?}"));
            renamed.unwrap_or_else(|e| panic!("trial {t}: rename: {e:?}"));
        }
    }))
    .await;
    for (t, b) in made.iter().enumerate() {
        let read = benefits(&s, MALL)
            .get_benefit(pb::GetBenefitRequest {
                name: b.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (read.display_name.as_str(), read.budget_units),
            (format!("renamed {t}").as_str(), 2_000),
            "trial {t}: both updates stand"
        );
    }

    // A unit granted before the end, to be honoured after it.
    let member = enrol(&s, MALL, "13800138077").await;
    let unit = wallet(&s, MALL)
        .grant_benefit(grant(&member, &made[0].name, "before-end"))
        .await
        .unwrap()
        .into_inner();

    // Four ends beside a pause and a rename: one end ends it, the rest see it ENDED.
    let state_of = |e: &tonic::Status| {
        e.get_error_details()
            .error_info()
            .and_then(|i| i.metadata.get("state").cloned())
            .unwrap_or_default()
    };
    join_all(made.iter().enumerate().map(|(t, b)| {
        let name = b.name.clone();
        let s = &s;
        async move {
            let ends = join_all((0..4).map(|i| {
                let mut c = benefits(s, MALL);
                let end = pb::EndBenefitRequest {
                    request_id: format!("end-{t}-{i}"),
                    name: name.clone(),
                };
                async move { c.end_benefit(end).await }
            }));
            let mut pauser = benefits(s, MALL);
            let pause = pauser.pause_benefit(pb::PauseBenefitRequest {
                request_id: format!("pause-{t}"),
                name: name.clone(),
            });
            let mut renamer = benefits(s, MALL);
            let late = renamer.update_benefit(rename(&name, format!("late-{t}"), "late".into()));
            let (ends, paused, renamed) = tokio::join!(ends, pause, late);
            let ended = ends.iter().filter(|e| e.is_ok()).count();
            assert_eq!(ended, 1, "trial {t}: one end ends it: {ends:?}");
            for refused in ends.iter().filter_map(|e| e.as_ref().err()) {
                assert_eq!(
                    (refused.code(), reason(refused), state_of(refused)),
                    (
                        Code::FailedPrecondition,
                        "BENEFIT_STATE".into(),
                        "ENDED".into()
                    ),
                    "trial {t}"
                );
            }
            for other in [
                paused.map(drop),
                renamed.as_ref().map(drop).map_err(Clone::clone),
            ] {
                if let Err(e) = other {
                    assert_eq!(
                        (reason(&e), state_of(&e)),
                        ("BENEFIT_STATE".into(), "ENDED".into()),
                        "trial {t}: refused only for having ended"
                    );
                }
            }
            let read = benefits(s, MALL)
                .get_benefit(pb::GetBenefitRequest { name: name.clone() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(read.state, pb::BenefitState::Ended as i32, "trial {t}");
            let expected = if renamed.is_ok() {
                "late".to_owned()
            } else {
                format!("renamed {t}")
            };
            assert_eq!(
                read.display_name, expected,
                "trial {t}: renamed only if accepted"
            );
        }
    }))
    .await;

    // Ended for good: nothing more is granted, nothing changes it, and what was granted
    // before is honoured.
    let e = wallet(&s, MALL)
        .grant_benefit(grant(&member, &made[0].name, "after-end"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e), state_of(&e)),
        (
            Code::FailedPrecondition,
            "BENEFIT_STATE".into(),
            "ENDED".into()
        )
    );
    let e = benefits(&s, MALL)
        .resume_benefit(pb::ResumeBenefitRequest {
            request_id: "resume-ended".into(),
            name: made[0].name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_STATE");
    let units = rows(&s, "entitlements", "wallet_items").await;
    assert_eq!(units, 1, "the refused grant wrote nothing");
    let redeemed = till(&s, &s.store_token(MALL, "sh01"))
        .redeem(redeem(&unit.name, "honoured", 40_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        redeemed.state,
        pb::RedemptionState::Confirmed as i32,
        "a unit granted before the end is honoured after it"
    );
}
