//! Comarketing scenarios.
//!
//! `segment`: `members` synthetic members (written straight into comarketing's tables, with
//! what the mesh would know of them: enrolments, tags, tiers, joins, claims, redemptions,
//! activity) and a ten-condition segment of a running campaign, computed through the contract
//! (ComputeSegment, then WaitOperation). Reported: members, the segment's size, and the
//! seconds from ComputeSegment until the operation is done; baseline in the same run: the
//! same members under a one-condition segment, computed the same way.
//!
//! `overlap`: the same members; the mall's segment (enrolled with the mall) and the brand's
//! (enrolled with the brand), each computed, then GetAudienceOverlap between them. Reported:
//! the overlap's answer and its seconds (median of five); baseline in the same run:
//! GetSegmentSize of the mall's segment (median of five).
//!
//! `request-contact` is a call-loop scenario (see `bench::run`).

use std::time::{Duration, Instant};

use anyhow::Context;
use lianyu_proto::comarketing::v1::{
    self as cm, audience_service_client::AudienceServiceClient,
    campaign_service_client::CampaignServiceClient,
    operations_service_client::OperationsServiceClient, rule::Rule as R,
};
use serde::Serialize;

use super::setup::{BRAND, MALL, Target};

const SESSION: &str = "bench-session";
const BENEFIT: &str = "bench-benefit";

/// What the segment scenario measured.
#[derive(Debug, Serialize)]
pub struct SegmentReport {
    pub scenario: &'static str,
    /// Members the mesh knows (the synthetic ones and any before).
    pub members: u64,
    /// Fact rows written for them.
    pub facts: u64,
    pub seed_seconds: f64,
    /// Conditions in the measured segment.
    pub conditions: usize,
    /// The segment's size as the mall may count it.
    pub matched: i64,
    /// ComputeSegment until its operation is done.
    pub seconds: f64,
    /// The same run's baseline: a one-condition segment over the same members.
    pub baseline_seconds: f64,
}

/// What the overlap scenario measured.
#[derive(Debug, Serialize)]
pub struct OverlapReport {
    pub scenario: &'static str,
    pub members: u64,
    /// Each segment's computation.
    pub compute_seconds: [f64; 2],
    /// The answer (rounded, suppressed below the cohort).
    pub overlap: i64,
    /// GetAudienceOverlap, median of five.
    pub seconds: f64,
    /// The same run's baseline: GetSegmentSize of one of them, median of five.
    pub baseline_seconds: f64,
}

fn leaf(rule: R) -> cm::Rule {
    cm::Rule { rule: Some(rule) }
}

fn partner(p: &str) -> String {
    format!("partners/{p}")
}

fn enrolled(p: &str) -> cm::Rule {
    leaf(R::Enrolled(cm::EnrolledCondition {
        partner: partner(p),
        since: None,
    }))
}

/// Ten conditions: Aurora-style "brand members who are VIPs, gold or watched the show, are
/// not mall-only, have not redeemed yet, and were active this year".
fn ten_conditions(now: i64) -> cm::Rule {
    let since = lianyu_kit::time::timestamp(now - 200 * 24 * 3_600_000);
    leaf(R::All(cm::RuleList {
        rules: vec![
            enrolled(BRAND),
            leaf(R::Any(cm::RuleList {
                rules: vec![
                    leaf(R::Tagged(cm::TagCondition {
                        partner: partner(BRAND),
                        tag: "vip".into(),
                    })),
                    leaf(R::Tier(cm::TierCondition {
                        partner: partner(MALL),
                        tier: "gold".into(),
                    })),
                    leaf(R::JoinedSession(cm::SessionCondition {
                        session: format!("sessions/{SESSION}"),
                    })),
                ],
            })),
            leaf(R::Not(Box::new(leaf(R::RedeemedBenefit(
                cm::BenefitCondition {
                    benefit: format!("benefits/{BENEFIT}"),
                },
            ))))),
            leaf(R::Any(cm::RuleList {
                rules: vec![
                    leaf(R::Enrolled(cm::EnrolledCondition {
                        partner: partner(MALL),
                        since,
                    })),
                    leaf(R::ClaimedBenefit(cm::BenefitCondition {
                        benefit: format!("benefits/{BENEFIT}"),
                    })),
                    leaf(R::Tier(cm::TierCondition {
                        partner: partner(MALL),
                        tier: "silver".into(),
                    })),
                ],
            })),
            leaf(R::Not(Box::new(leaf(R::Inactive(cm::InactiveCondition {
                days: 300,
            }))))),
            leaf(R::Not(Box::new(leaf(R::OrderedInSession(
                cm::SessionCondition {
                    session: format!("sessions/{SESSION}"),
                },
            ))))),
        ],
    }))
}

/// A running campaign of the bench's two partners with the synthetic session and benefit
/// attached, and `members` synthetic members in comarketing's database at `database_url`.
pub struct Prepared {
    campaign: String,
    members: u64,
    facts: u64,
    seed_seconds: f64,
}

pub async fn prepare(
    target: &Target,
    database_url: &str,
    members: usize,
) -> anyhow::Result<Prepared> {
    let now = lianyu_kit::time::now_millis();
    let mut mall = CampaignServiceClient::new(target.as_mall(target.channel()));
    let created = mall
        .create_campaign(cm::CreateCampaignRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            campaign: Some(cm::Campaign {
                display_name: "bench festival".into(),
                partners: vec![partner(BRAND)],
                start_time: lianyu_kit::time::timestamp(now),
                end_time: lianyu_kit::time::timestamp(now + 24 * 3_600_000),
                benefits: vec![format!("benefits/{BENEFIT}")],
                sessions: vec![format!("sessions/{SESSION}")],
                ..Default::default()
            }),
        })
        .await
        .context("proposing the bench campaign")?
        .into_inner();
    CampaignServiceClient::new(target.as_brand(target.channel()))
        .accept_campaign(cm::AcceptCampaignRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            name: created.name.clone(),
            etag: created.etag.clone(),
        })
        .await?;
    mall.launch_campaign(cm::LaunchCampaignRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        name: created.name.clone(),
    })
    .await?;
    eprintln!("writing {members} synthetic members into comarketing's database…");
    // The service's own connection (on PostgreSQL, its schema).
    let db = lianyu_kit::storage::connect(database_url, lianyu_comarketing::NAME, Some(1))
        .await
        .context("opening comarketing's database")?;
    let began = Instant::now();
    let facts = lianyu_comarketing::synthetic::seed(
        &db,
        members,
        &lianyu_comarketing::synthetic::Synthetic {
            brand: BRAND,
            mall: MALL,
            session: SESSION,
            benefit: BENEFIT,
            now,
        },
    )
    .await?;
    Ok(Prepared {
        campaign: created.name,
        members: members as u64,
        facts,
        seed_seconds: began.elapsed().as_secs_f64(),
    })
}

/// Defines `rule` as `owner`'s segment and computes it; returns its name and the seconds from
/// ComputeSegment until the operation is done.
async fn computed(
    target: &Target,
    owner: &str,
    campaign: &str,
    rule: cm::Rule,
) -> anyhow::Result<(String, f64)> {
    let as_owner = || {
        if owner == MALL {
            target.as_mall(target.channel())
        } else {
            target.as_brand(target.channel())
        }
    };
    let mut audience = AudienceServiceClient::new(as_owner());
    let segment = audience
        .create_segment(cm::CreateSegmentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            parent: campaign.to_owned(),
            segment: Some(cm::Segment {
                display_name: "bench".into(),
                rule: Some(rule),
                ..Default::default()
            }),
        })
        .await
        .context("defining the bench segment")?
        .into_inner();
    let began = Instant::now();
    let op = audience
        .compute_segment(cm::ComputeSegmentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            name: segment.name.clone(),
        })
        .await?
        .into_inner();
    let mut operations = OperationsServiceClient::new(as_owner());
    loop {
        let o = operations
            .wait_operation(cm::WaitOperationRequest {
                name: op.name.clone(),
                timeout_millis: 60_000,
            })
            .await?
            .into_inner();
        if o.done {
            anyhow::ensure!(o.error.is_none(), "the computation failed: {:?}", o.error);
            break;
        }
    }
    Ok((segment.name, began.elapsed().as_secs_f64()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub async fn segment(target: &Target, p: &Prepared) -> anyhow::Result<SegmentReport> {
    let now = lianyu_kit::time::now_millis();
    let (_, baseline_seconds) = computed(target, MALL, &p.campaign, enrolled(MALL)).await?;
    let (name, seconds) = computed(target, MALL, &p.campaign, ten_conditions(now)).await?;
    let size = AudienceServiceClient::new(target.as_mall(target.channel()))
        .get_segment_size(cm::GetSegmentSizeRequest { name })
        .await?
        .into_inner();
    Ok(SegmentReport {
        scenario: "segment",
        members: p.members,
        facts: p.facts,
        seed_seconds: p.seed_seconds,
        conditions: 10,
        matched: size.size,
        seconds,
        baseline_seconds,
    })
}

pub async fn overlap(target: &Target, p: &Prepared) -> anyhow::Result<OverlapReport> {
    let (malls, a) = computed(target, MALL, &p.campaign, enrolled(MALL)).await?;
    let (brands, b) = computed(target, BRAND, &p.campaign, enrolled(BRAND)).await?;
    let mut audience = AudienceServiceClient::new(target.as_mall(target.channel()));
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    let mut answer = 0;
    for _ in 0..5 {
        let began = Instant::now();
        answer = audience
            .get_audience_overlap(cm::GetAudienceOverlapRequest {
                segment: malls.clone(),
                other_segment: brands.clone(),
            })
            .await?
            .into_inner()
            .overlap;
        times.push(began.elapsed().as_secs_f64());
        let began = Instant::now();
        audience
            .get_segment_size(cm::GetSegmentSizeRequest {
                name: malls.clone(),
            })
            .await?;
        sizes.push(began.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(OverlapReport {
        scenario: "overlap",
        members: p.members,
        compute_seconds: [a, b],
        overlap: answer,
        seconds: median(times),
        baseline_seconds: median(sizes),
    })
}
