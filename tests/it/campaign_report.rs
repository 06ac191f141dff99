//! A two-partner campaign from planning to report, with the whole mesh in one server: the
//! mall issues a coupon the brand funds, attaches it to a joint campaign, and as units are
//! granted the budget burns down from entitlements' ledger; once it is spent the coupon stops
//! being granted; the funnel and the report show what happened, and who owes whom.

use lianyu_kit::{
    testing::{BRAND, MALL, TestServer, reason},
    time::{now_millis, timestamp},
};
use lianyu_proto::{
    comarketing::v1::{
        self as pb, campaign_service_client::CampaignServiceClient,
        funnel_service_client::FunnelServiceClient,
    },
    common::v1::{ConsentPurpose, Money},
    entitlements::v1 as ent,
};

use crate::{
    audience::{audience, compute, consent_to, eventually, segment},
    wallets::{active, benefits, enrol, grant, wallet},
};

/// The four services in one server, as `lianyu up` runs them; counts of three or more are
/// told.
async fn whole_mesh(test: &str) -> TestServer {
    TestServer::start(
        test,
        &["identity", "entitlements", "live", "comarketing"],
        |config| config.set_var("LIANYU_COMARKETING_MINIMUM_COHORT", "3"),
        |config, listener| {
            lianyu_kit::server::run_service(
                config,
                listener,
                std::future::pending(),
                async |ctx, mount| {
                    lianyu_identity::mount(ctx, mount).await?;
                    lianyu_entitlements::mount(ctx, mount).await?;
                    lianyu_live::mount(ctx, mount).await?;
                    lianyu_comarketing::mount(ctx, mount).await
                },
            )
        },
    )
    .await
    .with_partners()
    .await
}

fn cny(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "CNY".into(),
        minor_units,
    })
}

#[tokio::test]
async fn a_joint_campaigns_budget_burns_down_stops_its_coupon_and_settles() {
    let s = whole_mesh("cm_burn_down").await;
    // The mall issues a 50.00 coupon the brand pays for.
    let coupon = active(&s, MALL, BRAND, MALL, |b| {
        b.display_name = "50 off".into();
        b.kind = ent::BenefitKind::FixedCoupon as i32;
        b.threshold = None;
    })
    .await;
    let day = 24 * 3_600_000;
    let mut mall = CampaignServiceClient::new(s.as_token(&s.token(MALL)));
    // Budget 150.00: the mall puts in 50.00, the brand 100.00 — three coupons' worth.
    let created = mall
        .create_campaign(pb::CreateCampaignRequest {
            request_id: "double-12".into(),
            campaign: Some(pb::Campaign {
                display_name: "Double 12".into(),
                partners: vec![format!("partners/{BRAND}")],
                budget: vec![
                    pb::BudgetShare {
                        partner: format!("partners/{MALL}"),
                        amount: cny(5_000),
                        share_bps: 0,
                    },
                    pb::BudgetShare {
                        partner: format!("partners/{BRAND}"),
                        amount: cny(10_000),
                        share_bps: 0,
                    },
                ],
                start_time: timestamp(now_millis()),
                end_time: timestamp(now_millis() + 7 * day),
                benefits: vec![coupon.name.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    CampaignServiceClient::new(s.as_token(&s.token(BRAND)))
        .accept_campaign(pb::AcceptCampaignRequest {
            request_id: "a".into(),
            name: created.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    mall.launch_campaign(pb::LaunchCampaignRequest {
        request_id: "l".into(),
        name: created.name.clone(),
    })
    .await
    .unwrap();
    // Three shoppers of the mall, who let the brand fund their benefits and count them.
    let mut shoppers = Vec::new();
    for i in 0..4 {
        let m = enrol(&s, MALL, &format!("1330000{i:04}")).await;
        consent_to(
            &s,
            MALL,
            &m,
            BRAND,
            &[
                ConsentPurpose::BenefitRedemption,
                ConsentPurpose::JointAnalytics,
            ],
            true,
        )
        .await;
        shoppers.push(m);
    }
    for (i, m) in shoppers[..3].iter().enumerate() {
        wallet(&s, MALL)
            .grant_benefit(grant(m, &coupon.name, &format!("g{i}")))
            .await
            .unwrap();
    }
    let read = || {
        let mut c = CampaignServiceClient::new(s.as_token(&s.token(BRAND)));
        let name = created.name.clone();
        async move {
            c.get_campaign(pb::GetCampaignRequest { name })
                .await
                .unwrap()
                .into_inner()
        }
    };
    eventually("the three grants burn the budget down", || async {
        read().await.spent == cny(15_000)
    })
    .await;
    let spent = read().await;
    assert_eq!(spent.remaining, cny(0));
    assert!(spent.exhaust_time.is_some());
    // Spent: entitlements is told to stop granting the coupon.
    eventually("the coupon stops being granted", || async {
        benefits(&s, MALL)
            .get_benefit(ent::GetBenefitRequest {
                name: coupon.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .state
            == ent::BenefitState::Paused as i32
    })
    .await;
    let e = wallet(&s, MALL)
        .grant_benefit(grant(&shoppers[3], &coupon.name, "g3"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BENEFIT_STATE");

    // The funnel: three shoppers showed interest (claimed), as the mall counts them.
    let mut funnel = FunnelServiceClient::new(s.as_token(&s.token(MALL)));
    let f = funnel
        .get_funnel(pb::GetFunnelRequest {
            campaign: created.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let interest = &f.stages[1];
    assert_eq!(interest.stage, pb::FunnelStage::Interest as i32);
    assert_eq!((interest.members, interest.suppressed), (3, false));
    assert_eq!(f.days.len(), 1);
    // The mall's ORDERED events at its counter add to the report's GMV.
    let ingested = funnel
        .ingest_events(pb::IngestEventsRequest {
            request_id: "pos-1".into(),
            events: shoppers[..3]
                .iter()
                .map(|m| pb::FunnelEvent {
                    member: m.clone(),
                    campaign: created.name.clone(),
                    kind: pb::FunnelEventKind::Ordered as i32,
                    event_time: timestamp(now_millis()),
                    amount: cny(30_000),
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ingested.accepted, 3);
    let report = FunnelServiceClient::new(s.as_token(&s.token(BRAND)))
        .get_campaign_report(pb::GetCampaignReportRequest {
            campaign: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.spend, cny(15_000));
    assert_eq!(report.budget, cny(15_000));
    assert_eq!(report.claims, 3);
    assert_eq!(report.gmv, cny(90_000));
    assert_eq!(report.orders, 3);
    assert_eq!(report.return_on_budget_bps, 60_000);
    assert_eq!(
        report.cost_by_funder,
        [pb::FunderCost {
            funder: format!("partners/{BRAND}"),
            cost: cny(15_000)
        }]
    );
    // The brand paid for all three coupons; the mall's share of the budget is a third.
    assert_eq!(
        report.settlement,
        [pb::SettlementLine {
            debtor: format!("partners/{MALL}"),
            creditor: format!("partners/{BRAND}"),
            amount: cny(5_000),
        }]
    );
    // The brand's own funnel counts the shoppers who let it (JOINT_ANALYTICS) — all of them.
    assert_eq!(report.funnel.unwrap().stages[2].members, 3);
}

/// A campaign's live session: the members who join it and buy in it reach the funnel's
/// interest and purchase stages, and their orders its GMV — through live's feed.
#[tokio::test]
async fn a_campaigns_livestream_feeds_its_funnel_and_its_gmv() {
    use crate::live_show::{add_product, buy, buy_product, flash_sale, on_air, orders, viewers};
    use futures::future::join_all;
    use lianyu_proto::live::v1 as live;
    use pb::rule::Rule as R;
    let s = whole_mesh("cm_live_funnel").await;
    let session = on_air(&s).await;
    let day = 24 * 3_600_000;
    let mut brand = CampaignServiceClient::new(s.as_token(&s.token(BRAND)));
    let created = brand
        .create_campaign(pb::CreateCampaignRequest {
            request_id: "show".into(),
            campaign: Some(pb::Campaign {
                display_name: "Double 12 live".into(),
                partners: vec![format!("partners/{MALL}")],
                budget: vec![pb::BudgetShare {
                    partner: format!("partners/{BRAND}"),
                    amount: cny(100_000),
                    share_bps: 0,
                }],
                start_time: timestamp(now_millis()),
                end_time: timestamp(now_millis() + day),
                sessions: vec![session.name.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    CampaignServiceClient::new(s.as_token(&s.token(MALL)))
        .accept_campaign(pb::AcceptCampaignRequest {
            request_id: "a".into(),
            name: created.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    brand
        .launch_campaign(pb::LaunchCampaignRequest {
            request_id: "l".into(),
            name: created.name.clone(),
        })
        .await
        .unwrap();
    let lipstick = add_product(&s, &session.name, "LIP-520", 29_900).await;
    let sale = flash_sale(&s, &session.name, &lipstick.name, 10, 1).await;
    // Four of the brand's members watch in its app, all at once, and each buys twice at the
    // same moment: the sale's unit and the lipstick at list price. Comarketing takes live's
    // feed in batches (a batch holds what has arrived), so one batch carries several events of
    // one member and session — each must count, and each member once in a segment.
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(enrol(&s, BRAND, &format!("1310000{i:04}")).await);
    }
    let streams = join_all(members.iter().map(|member| {
        let mut client = viewers(&s, &s.token(BRAND));
        let request = live::JoinSessionRequest {
            session: session.name.clone(),
            member: member.clone(),
        };
        async move { client.join_session(request).await.unwrap().into_inner() }
    }))
    .await;
    let placed = join_all(members.iter().enumerate().flat_map(|(i, member)| {
        [
            buy(&session.name, &sale.name, member, &format!("o{i}"), ""),
            buy_product(&session.name, &lipstick.name, member, &format!("p{i}")),
        ]
        .map(|request| {
            let mut client = orders(&s, &s.token(BRAND));
            async move { client.place_order(request).await }
        })
    }))
    .await;
    assert!(placed.iter().all(Result::is_ok), "{placed:?}");
    let report = || async {
        FunnelServiceClient::new(s.as_token(&s.token(BRAND)))
            .get_campaign_report(pb::GetCampaignReportRequest {
                campaign: created.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    eventually("the show's orders reach the campaign", || async {
        report().await.orders == 8
    })
    .await;
    let r = report().await;
    assert_eq!(r.gmv, cny(4 * (9_900 + 29_900)));
    let funnel = r.funnel.unwrap();
    let counts: Vec<i64> = funnel.stages.iter().map(|c| c.members).collect();
    assert_eq!(
        counts,
        [0, 4, 4, 4],
        "interest (joined), purchase (ordered) and loyalty (each bought again the same day)"
    );
    // The same events as facts for segments: who joined the session, who ordered in it.
    for (what, rule) in [
        ("joined", R::JoinedSession as fn(pb::SessionCondition) -> R),
        ("ordered", R::OrderedInSession),
    ] {
        let rule = pb::Rule {
            rule: Some(rule(pb::SessionCondition {
                session: session.name.clone(),
            })),
        };
        let seg = segment(&s, BRAND, &created.name, rule).await;
        compute(&s, BRAND, &seg.name, &format!("compute-{what}")).await;
        let size = audience(&s, BRAND)
            .get_segment_size(pb::GetSegmentSizeRequest {
                name: seg.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(size.size, 4, "members who {what}");
    }
    drop(streams);
}
