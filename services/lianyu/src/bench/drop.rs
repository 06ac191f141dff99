//! `claim-drop`: a livestream coupon drop. `units` units of a benefit, `claimers` members
//! pressing "claim" at the same moment, each once. Measured: how long until every claimer has
//! an answer, and that exactly `units` were handed out, no member twice.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Context;
use futures::{StreamExt, stream};
use lianyu_proto::{
    common::v1::Money,
    entitlements::v1::{
        self as ent, benefit_service_client::BenefitServiceClient,
        wallet_service_client::WalletServiceClient,
    },
    identity::v1 as pb,
};
use serde::Serialize;

use super::setup::Target;

/// What a drop did.
#[derive(Debug, Serialize)]
pub struct DropReport {
    pub scenario: &'static str,
    pub claimers: usize,
    pub budget_units: i64,
    /// Claims answered with a unit.
    pub units_granted: usize,
    /// Distinct members among them (equal to `units_granted` when no one got two).
    pub distinct_members: usize,
    /// From the first claim sent to the last answer received.
    pub seconds: f64,
    /// The baseline in the same run: as many health checks through the mesh's full stack,
    /// sent at once the same way, until the last is answered.
    pub baseline_seconds: f64,
    /// Every other answer, by gRPC code and reason.
    pub refusals: BTreeMap<String, usize>,
}

/// Enrols `claimers` members at the brand, defines and activates a drop of `units`, then sends
/// every claim at once over `channels` connections.
pub async fn claim_drop(
    target: &Target,
    claimers: usize,
    units: i64,
    channels: usize,
) -> anyhow::Result<DropReport> {
    let channel = target.channel();
    let run = target.run_id;
    let members = enrol_members(target, claimers, "drop", "13").await?;

    let mut benefits = BenefitServiceClient::new(target.as_brand(channel.clone()));
    let until = chrono::Utc::now().timestamp() + 24 * 3600;
    let benefit = benefits
        .create_benefit(ent::CreateBenefitRequest {
            request_id: format!("drop-{run}-{}", uuid::Uuid::new_v4().simple()),
            benefit: Some(ent::Benefit {
                display_name: "livestream drop".into(),
                kind: ent::BenefitKind::FixedCoupon as i32,
                value: Some(Money {
                    currency_code: "CNY".into(),
                    minor_units: 2_000,
                }),
                budget_units: units,
                per_member_limit: 1,
                valid_until: Some(prost_types::Timestamp {
                    seconds: until,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .context("defining the drop")?
        .into_inner();
    benefits
        .activate_benefit(ent::ActivateBenefitRequest {
            request_id: format!("drop-activate-{}", benefit.name),
            name: benefit.name.clone(),
        })
        .await
        .context("activating the drop")?;

    let connections: Vec<_> = (0..channels.max(1)).map(|_| target.channel()).collect();
    // Connect them first: the rush measures claims, not handshakes.
    for c in &connections {
        let _ = tonic_health::pb::health_client::HealthClient::new(c.clone())
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await;
    }
    let baseline_seconds = burst_baseline(&connections, claimers).await;

    let started = Instant::now();
    let claims = members.iter().enumerate().map(|(i, member)| {
        let mut wallet =
            WalletServiceClient::new(target.as_brand(connections[i % connections.len()].clone()));
        let request = ent::ClaimBenefitRequest {
            // Unique to this drop: a second run against the same mesh is not a replay.
            request_id: format!("claim-{}-{i}", benefit.name),
            member: member.clone(),
            benefit: benefit.name.clone(),
            claim_code: "LIVE".into(),
        };
        tokio::spawn(async move { wallet.claim_benefit(request).await.map(|r| r.into_inner()) })
    });
    let answers = futures::future::join_all(claims).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut owners = Vec::new();
    let mut refusals = BTreeMap::new();
    for answer in answers {
        match answer {
            Ok(Ok(item)) => owners.push(item.name.split("/walletItems/").next().map(str::to_owned)),
            Ok(Err(status)) => *refusals.entry(refusal(&status)).or_default() += 1,
            Err(_) => *refusals.entry("client task failed".into()).or_default() += 1,
        }
    }
    let units_granted = owners.len();
    owners.sort();
    owners.dedup();
    Ok(DropReport {
        scenario: "claim-drop",
        claimers,
        budget_units: units,
        units_granted,
        distinct_members: owners.len(),
        seconds,
        baseline_seconds,
        refusals,
    })
}

/// `n` members enrolled at the brand with new verified phones ("{prefix}{run}{i:08}"), 64 at a
/// time; request ids are "{tag}-{run}-{i}".
pub(super) async fn enrol_members(
    target: &Target,
    n: usize,
    tag: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let channel = target.channel();
    let run = target.run_id;
    let members: Vec<anyhow::Result<String>> = stream::iter(0..n)
        .map(|i| {
            let channel = channel.clone();
            async move {
                let mut members =
                    pb::member_service_client::MemberServiceClient::new(target.as_brand(channel));
                let reply = members
                    .enroll_member(pb::EnrollMemberRequest {
                        request_id: format!("{tag}-{run}-{i}"),
                        identifiers: vec![pb::Identifier {
                            kind: pb::IdentifierKind::Phone as i32,
                            value: format!("{prefix}{}{:08}", run % 10, i),
                            namespace: String::new(),
                            verified: true,
                            verification_method: pb::VerificationMethod::SmsCode as i32,
                        }],
                        profile: Default::default(),
                    })
                    .await
                    .context("enrolling a member")?;
                Ok(reply.into_inner().member.unwrap_or_default().name)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    members.into_iter().collect()
}

/// The baseline of a rush: `n` health checks through the full stack sent at once over
/// `connections`, until the last is answered (seconds).
pub(super) async fn burst_baseline(connections: &[tonic::transport::Channel], n: usize) -> f64 {
    let started = Instant::now();
    let checks = (0..n).map(|i| {
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            connections[i % connections.len()].clone(),
        );
        tokio::spawn(async move {
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
        })
    });
    futures::future::join_all(checks).await;
    started.elapsed().as_secs_f64()
}

/// A refused call as "Code REASON".
pub(super) fn refusal(status: &tonic::Status) -> String {
    let reason = tonic_types::StatusExt::get_error_details(status)
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    format!("{:?} {reason}", status.code())
}
