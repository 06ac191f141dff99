//! Redemptions survive SIGKILL: sixteen tills grant and redeem coupons as fast as they can
//! while the process is killed mid-stream; after a restart every till retries what it had
//! sent with the same request ids. Every acknowledged redemption is replayed unchanged, every
//! unit is redeemed exactly once, and the ledger balances (`lianyu audit ledger`).

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use lianyu_kit::{
    testing::{TestDatabase, connect},
    time::{now_millis, timestamp},
};
use lianyu_proto::{
    common::v1::Money,
    entitlements::v1::{
        self as pb, benefit_service_client::BenefitServiceClient,
        ledger_service_client::LedgerServiceClient,
        redemption_service_client::RedemptionServiceClient,
        wallet_service_client::WalletServiceClient,
    },
    identity::v1::{self as id, member_service_client::MemberServiceClient},
};
use tonic::transport::Channel;

use super::{BIN, bearer, mint, on_database, start_up};

const MALL: &str = "jade-plaza";
const TILLS: usize = 16;

fn cny(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "CNY".into(),
        minor_units,
    })
}

fn grant(member: &str, benefit: &str, till: usize, n: usize) -> pb::GrantBenefitRequest {
    pb::GrantBenefitRequest {
        request_id: format!("g-{till}-{n}"),
        member: member.into(),
        benefit: benefit.into(),
    }
}

fn redeem(item: &str, till: usize, n: usize) -> pb::RedeemRequest {
    pb::RedeemRequest {
        request_id: format!("r-{till}-{n}"),
        wallet_item: item.into(),
        store: format!("partners/{MALL}/stores/cosmetics"),
        order_amount: cny(20_000),
        ..Default::default()
    }
}

/// What one till did: per step `n`, the unit it was granted (if the grant was answered) and
/// the redemption it was answered with (if it was).
type Steps = BTreeMap<usize, (Option<String>, Option<pb::Redemption>)>;

/// Grants and redeems until the server stops answering; records every answer.
async fn till_loop(
    channel: Channel,
    token: String,
    member: String,
    benefit: String,
    till: usize,
    log: Arc<Mutex<Steps>>,
) {
    let mut wallet = WalletServiceClient::new(channel.clone());
    let mut counter = RedemptionServiceClient::new(channel);
    for n in 0.. {
        let Ok(item) = wallet
            .grant_benefit(bearer(grant(&member, &benefit, till, n), &token))
            .await
        else {
            log.lock().unwrap().insert(n, (None, None));
            return;
        };
        let item = item.into_inner().name;
        log.lock().unwrap().insert(n, (Some(item.clone()), None));
        match counter.redeem(bearer(redeem(&item, till, n), &token)).await {
            Ok(r) => {
                log.lock()
                    .unwrap()
                    .insert(n, (Some(item), Some(r.into_inner())));
            }
            Err(_) => return,
        }
    }
}

#[tokio::test]
async fn no_acknowledged_redemption_is_lost_or_doubled_when_the_process_is_killed() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let db = TestDatabase::new("kill_redeem").await;
    let (mut up, address) = start_up(dir, &db);
    let channel = connect(&address).await;
    // The demo made the mall; it issues and funds its own coupon, 30.00 off.
    let token = mint(dir, &db, &["--partner", MALL]);
    let benefits = BenefitServiceClient::new(channel.clone());
    let coupon = benefits
        .clone()
        .create_benefit(bearer(
            pb::CreateBenefitRequest {
                request_id: "kill-coupon".into(),
                benefit: Some(pb::Benefit {
                    display_name: "30 off".into(),
                    kind: pb::BenefitKind::FixedCoupon as i32,
                    value: cny(3_000),
                    budget_units: 1_000_000,
                    valid_until: timestamp(now_millis() + 86_400_000),
                    ..Default::default()
                }),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    benefits
        .clone()
        .activate_benefit(bearer(
            pb::ActivateBenefitRequest {
                request_id: "kill-activate".into(),
                name: coupon.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap();
    let member = MemberServiceClient::new(channel.clone())
        .enroll_member(bearer(
            id::EnrollMemberRequest {
                request_id: "kill-member".into(),
                identifiers: vec![id::Identifier {
                    kind: id::IdentifierKind::Phone as i32,
                    value: "+8613900000077".into(),
                    verified: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap()
        .name;

    let logs: Vec<Arc<Mutex<Steps>>> = (0..TILLS).map(|_| Arc::default()).collect();
    let tills: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(till, log)| {
            tokio::spawn(till_loop(
                channel.clone(),
                token.clone(),
                member.clone(),
                coupon.name.clone(),
                till,
                log.clone(),
            ))
        })
        .collect();
    let redeemed = || {
        logs.iter()
            .map(|l| l.lock().unwrap().values().filter(|s| s.1.is_some()).count())
            .sum::<usize>()
    };
    // Kill once a couple of hundred are acknowledged, mid-stream (polled, not ordered).
    while redeemed() < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = up.0.kill();
    let _ = up.0.wait();
    for t in tills {
        let _ = t.await;
    }
    let before = redeemed();

    let (_up, address) = start_up(dir, &db);
    let channel = connect(&address).await;
    let mut wallet = WalletServiceClient::new(channel.clone());
    let mut counter = RedemptionServiceClient::new(channel.clone());
    let mut units = 0;
    for (till, log) in logs.iter().enumerate() {
        let steps = log.lock().unwrap().clone();
        for (n, (item, answered)) in steps {
            // The till retries its last grant (answered or not) with the same request id: the
            // same unit comes back, or it is granted now, once.
            let again = wallet
                .grant_benefit(bearer(grant(&member, &coupon.name, till, n), &token))
                .await
                .unwrap()
                .into_inner()
                .name;
            if let Some(item) = &item {
                assert_eq!(&again, item, "grant {till}-{n} replayed");
            }
            let r = counter
                .redeem(bearer(redeem(&again, till, n), &token))
                .await
                .unwrap_or_else(|e| panic!("redemption {till}-{n} after the restart: {e:?}"))
                .into_inner();
            if let Some(first) = answered {
                assert_eq!(
                    r, first,
                    "acknowledged redemption {till}-{n} replayed unchanged"
                );
            }
            assert_eq!(r.state, pb::RedemptionState::Confirmed as i32);
            units += 1;
        }
    }
    assert!(units >= before);

    // Exactly one REDEMPTION and one GRANT ledger transaction per unit, read from outside.
    let mut ledger = LedgerServiceClient::new(channel);
    let (mut grants, mut redemptions, mut page_token) = (0, 0, String::new());
    loop {
        let page = ledger
            .list_entries(bearer(
                pb::ListEntriesRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let ours = page.entries.iter().filter(|e| {
            e.postings.first().map(|p| p.benefit.as_str()) == Some(coupon.name.as_str())
        });
        for e in ours {
            match e.transaction.as_str() {
                "GRANT" => grants += 1,
                "REDEMPTION" => redemptions += 1,
                _ => {}
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!((grants, redemptions), (units, units));
    drop(_up);
    let audit = on_database(&mut Command::new(BIN), &db)
        .args(["audit", "ledger", "--data-dir", dir])
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    eprintln!(
        "{before} acknowledged redemptions survived SIGKILL; {units} units redeemed once each"
    );
}
