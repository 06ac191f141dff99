//! Points and stored value end to end through identity: a mall's stored-value card topped up
//! with its bonus and spent at any concurrency without going below zero; a brand's points
//! pending until the purchase's return window closes, reversed by a return inside it and
//! never clawed back after it; spending at another partner only with the member's consent,
//! settled between the partners. Refusals change nothing; the audit finds every member
//! balance equal to its postings.

use futures::future::join_all;
use lianyu_kit::testing::{BRAND, MALL, OUTSIDER, TestServer, reason, violations};
use lianyu_proto::{common::v1::Money, entitlements::v1 as pb};
use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::wallets::{
    active, close_store, cny, consent, enrol, ledger, mesh, till, unbalanced, wallet,
};

/// The member balances the audit finds different from their postings, where they live.
async fn balance_differences(s: &TestServer) -> usize {
    let db = s.database("entitlements").await;
    lianyu_entitlements::audit_ledger(&db)
        .await
        .unwrap()
        .balances
        .len()
}

async fn balance(s: &TestServer, partner: &str, member: &str, benefit: &str) -> pb::Balance {
    wallet(s, partner)
        .get_balance(pb::GetBalanceRequest {
            member: member.into(),
            benefit: benefit.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn spend(member: &str, benefit: &str, rid: &str, store: &str) -> pb::SpendBalanceRequest {
    pb::SpendBalanceRequest {
        request_id: rid.into(),
        member: member.into(),
        benefit: benefit.into(),
        store: store.into(),
        ..Default::default()
    }
}

/// A stored-value card the mall issues and funds, honoured by the mall and the brand, with a
/// 10 % top-up bonus.
pub(crate) async fn card(s: &TestServer) -> pb::Benefit {
    active(s, MALL, MALL, MALL, |b| {
        b.display_name = "Jade gift card".into();
        b.kind = pb::BenefitKind::StoredValue as i32;
        b.value = cny(1);
        b.threshold = None;
        b.per_member_limit = 0;
        b.top_up_bonus_bps = 1_000;
        b.honoured_by = vec![format!("partners/{MALL}"), format!("partners/{BRAND}")];
    })
    .await
}

/// What the mall's ledger says it and the brand owe each other.
async fn mall_statement(s: &TestServer) -> pb::SettlementStatement {
    ledger(s, MALL)
        .get_settlement_statement(pb::GetSettlementStatementRequest {
            counterparty: format!("partners/{BRAND}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The brand's points, worth 0.01 each, honoured at its own counters and the mall's.
async fn points_programme(s: &TestServer) -> pb::Benefit {
    active(s, BRAND, BRAND, BRAND, |b| {
        b.display_name = "Aurora points".into();
        b.kind = pb::BenefitKind::Points as i32;
        b.value = cny(1);
        b.threshold = None;
        b.per_member_limit = 0;
        b.honoured_by = vec![format!("partners/{BRAND}"), format!("partners/{MALL}")];
    })
    .await
}

#[tokio::test]
async fn stored_value_tops_up_with_its_bonus_and_never_goes_below_zero() {
    let s = mesh("bal_stored_value").await;
    let card = card(&s).await;
    let member = enrol(&s, MALL, "13800139001").await;
    let top_up = |rid: &str, amount: Option<Money>| pb::TopUpRequest {
        request_id: rid.into(),
        member: member.clone(),
        benefit: card.name.clone(),
        amount,
        payment_reference: "pos-778".into(),
    };
    let topped = wallet(&s, MALL)
        .top_up(top_up("t1", cny(50_000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topped.stored_value, cny(55_000), "500.00 plus 10 %");
    assert_eq!(topped.member, member, "named by the caller's own id");
    let replay = wallet(&s, MALL)
        .top_up(top_up("t1", cny(50_000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, topped, "a retry returns the first answer");
    assert_eq!(
        balance(&s, MALL, &member, &card.name).await.stored_value,
        cny(55_000),
        "and adds nothing"
    );

    // Bad input names its field; a foreign currency and a units call are refused; nothing moves.
    let e = wallet(&s, MALL)
        .top_up(pb::TopUpRequest {
            payment_reference: String::new(),
            ..top_up("t2", cny(-5))
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let fields = violations(&e);
    assert!(fields.iter().any(|f| f == "amount"), "{fields:?}");
    assert!(
        fields.iter().any(|f| f == "payment_reference"),
        "{fields:?}"
    );
    let usd = Some(Money {
        currency_code: "USD".into(),
        minor_units: 100,
    });
    let e = wallet(&s, MALL)
        .top_up(top_up("t3", usd))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CURRENCY_MISMATCH");
    let e = wallet(&s, MALL)
        .grant_benefit(pb::GrantBenefitRequest {
            request_id: "g1".into(),
            member: member.clone(),
            benefit: card.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NOT_A_UNIT");
    let e = wallet(&s, OUTSIDER)
        .top_up(top_up("t4", cny(100)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_NOT_FOUND");
    assert_eq!(
        balance(&s, MALL, &member, &card.name).await.stored_value,
        cny(55_000)
    );

    // Twenty tills at once spend 100.00 each from 550.00: exactly five fit.
    let counter = format!("partners/{MALL}/stores/sh01");
    let calls = (0..20).map(|i| {
        let mut till = till(&s, &s.token(MALL));
        let mut r = spend(&member, &card.name, &format!("s{i}"), &counter);
        r.amount = cny(10_000);
        async move { till.spend_balance(r).await }
    });
    let outcomes = join_all(calls).await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 5);
    for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(
            (e.code(), reason(e).as_str()),
            (Code::FailedPrecondition, "INSUFFICIENT_BALANCE")
        );
    }
    assert_eq!(
        balance(&s, MALL, &member, &card.name).await.stored_value,
        cny(5_000)
    );
    // The order of one spend is returned: its 100.00 comes back, once, and only the mall
    // that took it gives it back.
    let first = outcomes
        .iter()
        .find_map(|o| o.as_ref().ok())
        .unwrap()
        .get_ref()
        .clone();
    let refund = |rid: &str| pb::RefundBalanceSpendRequest {
        request_id: rid.into(),
        ledger_entry: first.ledger_entry.clone(),
    };
    let e = till(&s, &s.token(BRAND))
        .refund_balance_spend(refund("x1"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "SPEND_NOT_FOUND");
    let back = till(&s, &s.token(MALL))
        .refund_balance_spend(refund("x2"))
        .await
        .unwrap()
        .into_inner();
    assert!(back.refunded);
    assert_eq!(back.balance.unwrap().stored_value, cny(15_000));
    let e = till(&s, &s.token(MALL))
        .refund_balance_spend(refund("x3"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ALREADY_REFUNDED");
    assert_eq!(
        balance(&s, MALL, &member, &card.name).await.stored_value,
        cny(15_000)
    );
    let mut r = spend(&member, &card.name, "s-points", &counter);
    r.points = 5;
    r.amount = cny(100);
    let e = till(&s, &s.token(MALL)).spend_balance(r).await.unwrap_err();
    assert_eq!(violations(&e), ["points"]);
    assert_eq!(unbalanced(&s).await, 0);
    assert_eq!(balance_differences(&s).await, 0);
}

#[tokio::test]
async fn points_wait_for_the_return_window_and_a_return_never_claws_back_spendable_points() {
    let s = mesh("bal_points").await;
    let points = points_programme(&s).await;
    let member = enrol(&s, BRAND, "13800139002").await;
    let earn = |rid: &str, n: i64, days: i32| pb::EarnPointsRequest {
        request_id: rid.into(),
        member: member.clone(),
        benefit: points.name.clone(),
        points: n,
        order_reference: format!("order-{rid}"),
        return_window_days: Some(days),
    };
    let pending = wallet(&s, BRAND)
        .earn_points(earn("e1", 800, 7))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.state, pb::PointsEarningState::Pending as i32);
    let at_once = wallet(&s, BRAND)
        .earn_points(earn("e2", 300, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at_once.state, pb::PointsEarningState::Available as i32);
    let b = balance(&s, BRAND, &member, &points.name).await;
    assert_eq!((b.points_available, b.points_pending), (300, 800));
    assert!(b.next_release_time.is_some());

    // Pending points are not spendable.
    let counter = format!("partners/{BRAND}/stores/bj01");
    let mut r = spend(&member, &points.name, "sp1", &counter);
    r.points = 400;
    let e = till(&s, &s.token(BRAND))
        .spend_balance(r)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INSUFFICIENT_BALANCE");

    // A return inside the window reverses them, once.
    let reverse = |rid: &str, name: &str| pb::ReversePointsRequest {
        request_id: rid.into(),
        name: name.into(),
    };
    let reversed = wallet(&s, BRAND)
        .reverse_points(reverse("r1", &pending.name))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reversed.state, pb::PointsEarningState::Reversed as i32);
    let e = wallet(&s, BRAND)
        .reverse_points(reverse("r2", &pending.name))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "EARNING_STATE")
    );
    // Points available at once are the member's: a return does not take them back.
    let e = wallet(&s, BRAND)
        .reverse_points(reverse("r3", &at_once.name))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "EARNING_STATE");
    let e = wallet(&s, MALL)
        .reverse_points(reverse("r4", &at_once.name))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "EARNING_NOT_FOUND", "only the awarding partner");
    let b = balance(&s, BRAND, &member, &points.name).await;
    assert_eq!((b.points_available, b.points_pending), (300, 0));

    // A window that closes makes its points spendable (time moved on where it is kept).
    let later = wallet(&s, BRAND)
        .earn_points(earn("e3", 500, 30))
        .await
        .unwrap()
        .into_inner();
    let db = s.database("entitlements").await;
    let id = later.name.trim_start_matches("pointsEarnings/");
    db.execute_unprepared(&format!(
        "UPDATE point_lots SET release_at = 0 WHERE id = '{id}'"
    ))
    .await
    .unwrap();
    let b = balance(&s, BRAND, &member, &points.name).await;
    assert_eq!((b.points_available, b.points_pending), (800, 0));
    let e = wallet(&s, BRAND)
        .reverse_points(reverse("r5", &later.name))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "EARNING_STATE", "the window closed");

    // Ten tills at once spend 100 points each from 800: exactly eight fit.
    let calls = (0..10).map(|i| {
        let mut till = till(&s, &s.token(BRAND));
        let mut r = spend(&member, &points.name, &format!("p{i}"), &counter);
        r.points = 100;
        async move { till.spend_balance(r).await }
    });
    let won = join_all(calls).await.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 8);
    let b = balance(&s, BRAND, &member, &points.name).await;
    assert_eq!((b.points_available, b.points_pending), (0, 0));
    assert_eq!(unbalanced(&s).await, 0);
    assert_eq!(balance_differences(&s).await, 0);
}

#[tokio::test]
async fn spending_at_another_partner_needs_consent_and_the_funder_owes_what_it_took() {
    let s = mesh("bal_cross_partner").await;
    let points = points_programme(&s).await;
    // One person, enrolled at both: the account is opened through the brand.
    let at_brand = enrol(&s, BRAND, "13800139003").await;
    let at_mall = enrol(&s, MALL, "13800139003").await;
    wallet(&s, BRAND)
        .earn_points(pb::EarnPointsRequest {
            request_id: "e1".into(),
            member: at_brand.clone(),
            benefit: points.name.clone(),
            points: 1_000,
            order_reference: "o1".into(),
            return_window_days: Some(0),
        })
        .await
        .unwrap();
    let counter = format!("partners/{MALL}/stores/sh01");
    let mut r = spend(&at_mall, &points.name, "m1", &counter);
    r.points = 600;
    let e = till(&s, &s.token(MALL))
        .spend_balance(r.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "CONSENT_REQUIRED")
    );
    let e = wallet(&s, MALL)
        .get_balance(pb::GetBalanceRequest {
            member: at_mall.clone(),
            benefit: points.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CONSENT_REQUIRED", "nor may the mall read it");
    // A store token spends at its own store only.
    let mut other = r.clone();
    other.store = format!("partners/{MALL}/stores/sh02");
    let e = till(&s, &s.store_token(MALL, "sh01"))
        .spend_balance(other)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_MISMATCH");
    assert_eq!(
        balance(&s, BRAND, &at_brand, &points.name)
            .await
            .points_available,
        1_000,
        "refusals took nothing"
    );

    consent(&s, BRAND, &at_brand, MALL).await;
    let spent = till(&s, &s.token(MALL))
        .spend_balance(r)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spent.amount, cny(600), "600 points at 0.01");
    assert_eq!(spent.balance.unwrap().points_available, 400);
    // The brand owes the mall what its points took off the order.
    let statement = mall_statement(&s).await;
    assert_eq!(statement.net.len(), 1);
    assert_eq!(statement.net[0].debtor, format!("partners/{BRAND}"));
    assert_eq!(statement.net[0].amount, cny(600));
    // Given back: the points return and the brand owes the mall nothing for it.
    let back = till(&s, &s.token(MALL))
        .refund_balance_spend(pb::RefundBalanceSpendRequest {
            request_id: "m1-back".into(),
            ledger_entry: spent.ledger_entry.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.balance.unwrap().points_available, 1_000);
    let after = mall_statement(&s).await;
    assert!(after.net.is_empty(), "{after:?}");
    // The ledger entry the spend names is the mall's to read.
    let entries = ledger(&s, MALL)
        .list_entries(pb::ListEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        entries
            .iter()
            .any(|e| e.name == spent.ledger_entry && e.transaction == "BALANCE_SPEND")
    );
    // The outsider sees no such benefit.
    let e = wallet(&s, OUTSIDER)
        .get_balance(pb::GetBalanceRequest {
            member: at_mall,
            benefit: points.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_NOT_FOUND");
    assert_eq!(unbalanced(&s).await, 0);
    assert_eq!(balance_differences(&s).await, 0);
}

/// Every other caller of the balance RPCs: an unallied partner learns nothing and moves
/// nothing; the allied partner that is no party to a points programme cannot award, reverse
/// or give back; a store token tops up and spends only at its own store. Each refusal is read
/// back: the balance, the pending points and the ledger are as they were.
#[tokio::test]
async fn other_callers_of_balances_are_refused_and_change_nothing() {
    let s = mesh("bal_other_callers").await;
    // The mall's own points, honoured by the mall alone.
    let points = active(&s, MALL, MALL, MALL, |b| {
        b.display_name = "Jade points".into();
        b.kind = pb::BenefitKind::Points as i32;
        b.value = cny(1);
        b.threshold = None;
        b.per_member_limit = 0;
    })
    .await;
    let member = enrol(&s, MALL, "13800139201").await;
    let at_brand = enrol(&s, BRAND, "13800139201").await;
    let earned = wallet(&s, MALL)
        .earn_points(pb::EarnPointsRequest {
            request_id: "e1".into(),
            member: member.clone(),
            benefit: points.name.clone(),
            points: 500,
            order_reference: "o1".into(),
            return_window_days: Some(7),
        })
        .await
        .unwrap()
        .into_inner();
    let counter = format!("partners/{MALL}/stores/sh01");
    let mut own_spend = spend(&member, &points.name, "own", &counter);
    own_spend.points = 1;
    // Nothing spendable yet (pending): refused, but it shows the RPC reaches the balance.
    let e = till(&s, &s.token(MALL))
        .spend_balance(own_spend)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INSUFFICIENT_BALANCE");
    let rows_before = crate::support::rows(&s, "entitlements", "ledger_postings").await;

    for (partner, name) in [(OUTSIDER, "outsider"), (BRAND, "brand")] {
        let who = if partner == BRAND { &at_brand } else { &member };
        let e = wallet(&s, partner)
            .earn_points(pb::EarnPointsRequest {
                request_id: format!("{name}-earn"),
                member: who.clone(),
                benefit: points.name.clone(),
                points: 1_000,
                order_reference: "x".into(),
                return_window_days: Some(0),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "BENEFIT_NOT_FOUND", "{name}");
        let e = wallet(&s, partner)
            .get_balance(pb::GetBalanceRequest {
                member: who.clone(),
                benefit: points.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "BENEFIT_NOT_FOUND", "{name}");
        let e = wallet(&s, partner)
            .reverse_points(pb::ReversePointsRequest {
                request_id: format!("{name}-reverse"),
                name: earned.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "EARNING_NOT_FOUND", "{name}");
        let mut r = spend(who, &points.name, &format!("{name}-spend"), "");
        r.store = format!("partners/{partner}/stores/sh01");
        r.points = 1;
        let e = till(&s, &s.token(partner))
            .spend_balance(r)
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "BENEFIT_NOT_FOUND", "{name}");
        let e = till(&s, &s.token(partner))
            .refund_balance_spend(pb::RefundBalanceSpendRequest {
                request_id: format!("{name}-refund"),
                ledger_entry: "ledgerEntries/0000".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "SPEND_NOT_FOUND", "{name}");
    }
    // A store token names no other store.
    let mut elsewhere = spend(&member, &points.name, "elsewhere", "");
    elsewhere.store = format!("partners/{MALL}/stores/sh02");
    elsewhere.points = 1;
    let e = till(&s, &s.store_token(MALL, "sh01"))
        .spend_balance(elsewhere)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_MISMATCH");

    let b = balance(&s, MALL, &member, &points.name).await;
    assert_eq!((b.points_available, b.points_pending), (0, 500));
    assert_eq!(
        crate::support::rows(&s, "entitlements", "ledger_postings").await,
        rows_before,
        "no refusal posted anything"
    );
    assert_eq!(balance_differences(&s).await, 0);
}

/// A spend is recorded only at a store identity knows and its partner keeps open: a typo'd
/// store is NOT_FOUND / STORE_NOT_FOUND, a closed one FAILED_PRECONDITION / STORE_CLOSED (a
/// store token of the closed store PERMISSION_DENIED / STORE_CLOSED: its tokens are refused),
/// and neither takes anything from the card.
#[tokio::test]
async fn a_spend_is_recorded_only_at_a_registered_open_store() {
    let s = mesh("bal_store_open").await;
    let card = card(&s).await;
    let member = enrol(&s, MALL, "13800139301").await;
    wallet(&s, MALL)
        .top_up(pb::TopUpRequest {
            request_id: "t".into(),
            member: member.clone(),
            benefit: card.name.clone(),
            amount: cny(10_000),
            payment_reference: "pos-1".into(),
        })
        .await
        .unwrap();
    close_store(&s, MALL, "sh02").await;
    let at = |rid: &str, store: &str| pb::SpendBalanceRequest {
        amount: cny(1_000),
        ..spend(&member, &card.name, rid, store)
    };
    for (token, request, code, why) in [
        (
            s.token(MALL),
            at("typo", &format!("partners/{MALL}/stores/sh0l")),
            Code::NotFound,
            "STORE_NOT_FOUND",
        ),
        (
            s.token(MALL),
            at("closed", &format!("partners/{MALL}/stores/sh02")),
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
        let e = till(&s, &token).spend_balance(request).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why));
    }
    assert_eq!(
        balance(&s, MALL, &member, &card.name).await.stored_value,
        cny(11_000),
        "nothing was spent"
    );
    till(&s, &s.token(MALL))
        .spend_balance(at("open", &format!("partners/{MALL}/stores/sh01")))
        .await
        .unwrap();
    assert_eq!(
        balance(&s, MALL, &member, &card.name).await.stored_value,
        cny(10_000)
    );
}
