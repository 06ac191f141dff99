//! Closing a settlement period between two partners: the closed statement never changes,
//! not even for redemptions racing the close or a refund posted after it (that lands in the
//! next period); either side reads it closed; a period closes once.

use futures::{StreamExt, stream::FuturesUnordered};
use lianyu_kit::{
    testing::{BRAND, MALL, TestServer, reason, violations},
    time::{now_millis, timestamp},
};
use lianyu_proto::entitlements::v1 as pb;
use tonic::Code;

use crate::wallets::{active, consent, enrol, grant, ledger, redeem, start, till, wallet};

fn close(rid: &str, counterparty: &str, end: i64) -> pb::CloseSettlementPeriodRequest {
    pb::CloseSettlementPeriodRequest {
        request_id: rid.into(),
        counterparty: format!("partners/{counterparty}"),
        end_time: timestamp(end),
    }
}

async fn statement(
    s: &TestServer,
    of: &str,
    other: &str,
    from: Option<i64>,
    until: Option<i64>,
) -> pb::SettlementStatement {
    ledger(s, of)
        .get_settlement_statement(pb::GetSettlementStatementRequest {
            counterparty: format!("partners/{other}"),
            start_time: from.and_then(timestamp),
            end_time: until.and_then(timestamp),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The net owed in CNY minor units, from the brand to the mall.
fn brand_owes(s: &pb::SettlementStatement) -> i64 {
    s.net
        .iter()
        .map(|l| {
            let amount = l.amount.as_ref().map_or(0, |m| m.minor_units);
            if l.debtor == format!("partners/{BRAND}") {
                amount
            } else {
                -amount
            }
        })
        .sum()
}

#[tokio::test]
async fn a_closed_period_never_changes_even_with_redemptions_racing_the_close() {
    let s = start("settle_close", |config| {
        config.limits.max_concurrent_requests = 256;
        config.limits.admission_wait = std::time::Duration::from_secs(5);
    })
    .await;
    // The mall's coupon the brand pays for, 50.00 off 300.00, as many as a member likes.
    let coupon = active(&s, MALL, BRAND, MALL, |b| b.per_member_limit = 0).await;
    let member = enrol(&s, MALL, "13800139101").await;
    consent(&s, MALL, &member, BRAND).await;
    let mut items = Vec::new();
    for i in 0..40 {
        let item = wallet(&s, MALL)
            .grant_benefit(grant(&member, &coupon.name, &format!("g{i}")))
            .await
            .unwrap()
            .into_inner();
        items.push(item.name);
    }
    let counter = s.store_token(MALL, "sh01");
    let first = till(&s, &counter)
        .redeem(redeem(&items[0], "r0", 40_000))
        .await
        .unwrap()
        .into_inner();

    // Thirty-nine redemptions in flight; the close is sent when the tenth answers, with the
    // end of the period at that moment, so some of the others are mid-transaction.
    let mut inflight: FuturesUnordered<_> = items[1..]
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut t = till(&s, &counter);
            let r = redeem(item, &format!("r{}", i + 1), 40_000);
            async move { t.redeem(r).await }
        })
        .collect();
    let mut answered = 0;
    while answered < 10 {
        inflight.next().await.unwrap().unwrap();
        answered += 1;
    }
    let end = now_millis();
    let (closed, rest) = tokio::join!(
        async {
            ledger(&s, MALL)
                .close_settlement_period(close("c1", BRAND, end))
                .await
        },
        async {
            let mut n = 0;
            while let Some(r) = inflight.next().await {
                r.unwrap();
                n += 1;
            }
            n
        }
    );
    assert_eq!(answered + rest, 39);
    let closed = closed.unwrap().into_inner();
    assert!(closed.closed);
    assert_eq!(
        closed.start_time, None,
        "the first period starts at the beginning"
    );
    // Rebuilt from the postings after every racing redemption committed: the same.
    let again = statement(&s, MALL, BRAND, None, Some(end)).await;
    assert!(again.closed);
    assert_eq!(
        (again.lines.clone(), again.net.clone()),
        (closed.lines.clone(), closed.net.clone())
    );
    let owed_closed = brand_owes(&closed);
    assert!(
        owed_closed >= 11 * 5_000,
        "at least the eleven answered before the close"
    );
    assert_eq!(owed_closed % 5_000, 0);
    // The brand's side reads the same period closed and owing the same.
    let theirs = statement(&s, BRAND, MALL, None, Some(end)).await;
    assert!(theirs.closed);
    assert_eq!(brand_owes(&theirs), owed_closed);

    // A refund of a redemption from the closed period posts into the next one.
    till(&s, &counter)
        .refund_redemption(pb::RefundRedemptionRequest {
            request_id: "refund-first".into(),
            name: first.name.clone(),
            amount: None,
        })
        .await
        .unwrap();
    let after_refund = statement(&s, MALL, BRAND, None, Some(end)).await;
    assert_eq!(
        brand_owes(&after_refund),
        owed_closed,
        "the closed period did not move"
    );
    let next = statement(&s, MALL, BRAND, Some(end), None).await;
    assert!(!next.closed);
    assert_eq!(
        owed_closed + brand_owes(&next),
        40 * 5_000 - 5_000,
        "every redemption is in one period or the other, and the refund in the next"
    );

    // A period closes once; a retry returns the first answer; bad requests name the field.
    let replay = ledger(&s, MALL)
        .close_settlement_period(close("c1", BRAND, end))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, closed);
    let e = ledger(&s, BRAND)
        .close_settlement_period(close("c2", MALL, end))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "PERIOD_ALREADY_CLOSED")
    );
    let e = ledger(&s, MALL)
        .close_settlement_period(close("c3", MALL, now_millis() + 60_000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut fields = violations(&e);
    fields.sort();
    assert_eq!(fields, ["counterparty", "end_time"]);
    let e = lianyu_proto::entitlements::v1::ledger_service_client::LedgerServiceClient::new(
        s.as_token(&counter),
    )
    .close_settlement_period(close("c4", BRAND, now_millis()))
    .await
    .unwrap_err();
    assert_eq!(reason(&e), "STORE_TOKEN_NOT_ALLOWED");
    // The brand closes the next period up to now; its statement is the rest.
    let second = ledger(&s, BRAND)
        .close_settlement_period(close("c5", MALL, now_millis()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.start_time, timestamp(end));
    assert_eq!(brand_owes(&second), brand_owes(&next));
}

#[tokio::test]
async fn a_split_rule_makes_the_funder_pay_its_share_and_the_honouring_partner_the_rest() {
    let s = start("settle_split", |_| {}).await;
    // Out of range: refused with its field, nothing defined.
    let e = crate::wallets::benefits(&s, MALL)
        .create_benefit(pb::CreateBenefitRequest {
            request_id: "bad".into(),
            benefit: Some(pb::Benefit {
                display_name: "split".into(),
                kind: pb::BenefitKind::FixedCoupon as i32,
                value: crate::wallets::cny(5_000),
                budget_units: 1,
                funder_share_bps: 10_001,
                valid_until: timestamp(now_millis() + 3_600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), ["benefit.funder_share_bps"]);
    assert_eq!(
        crate::support::rows(&s, "entitlements", "benefits").await,
        0
    );

    // The brand pays 60 % of what the mall takes off.
    let coupon = active(&s, MALL, BRAND, MALL, |b| b.funder_share_bps = 6_000).await;
    assert_eq!(coupon.funder_share_bps, 6_000);
    let member = enrol(&s, MALL, "13800139102").await;
    consent(&s, MALL, &member, BRAND).await;
    let item = wallet(&s, MALL)
        .grant_benefit(grant(&member, &coupon.name, "g"))
        .await
        .unwrap()
        .into_inner();
    let r = till(&s, &s.store_token(MALL, "sh01"))
        .redeem(redeem(&item.name, "r", 40_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.discount, crate::wallets::cny(5_000));
    assert_eq!(
        brand_owes(&statement(&s, MALL, BRAND, None, None).await),
        3_000
    );
    assert_eq!(
        brand_owes(&statement(&s, BRAND, MALL, None, None).await),
        3_000
    );
    // A half refund reverses half of each part.
    till(&s, &s.store_token(MALL, "sh01"))
        .refund_redemption(pb::RefundRedemptionRequest {
            request_id: "half".into(),
            name: r.name,
            amount: crate::wallets::cny(20_000),
        })
        .await
        .unwrap();
    assert_eq!(
        brand_owes(&statement(&s, MALL, BRAND, None, None).await),
        1_500
    );
    assert_eq!(crate::wallets::unbalanced(&s).await, 0);
}
