//! The demo's last chapter, the joint campaign: Jade and Aurora plan a festival with a shared
//! budget and attach the coupon to it before the shopper uses it; the budget burns down as she
//! redeems, she lets Jade contact her, Jade's audience export holds her, the alliance's cap
//! refuses a third message inside the week, the report shows the result, and once she
//! withdraws, Jade's export no longer holds her.

use std::time::Duration;

use lianyu_proto::{
    comarketing::v1::{
        self as cm, audience_service_client::AudienceServiceClient,
        campaign_service_client::CampaignServiceClient,
        contact_service_client::ContactServiceClient, funnel_service_client::FunnelServiceClient,
        operations_service_client::OperationsServiceClient,
    },
    common::v1::{ConsentPurpose, Money},
    identity::v1 as pb,
};
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::bearer::Bearer;

type Authed = InterceptedService<Channel, Bearer>;

/// Who takes part: the brand and the mall, and the shopper's pseudonymous id at each.
pub(crate) struct Cast<'a> {
    pub(crate) brand: &'a str,
    pub(crate) mall: &'a str,
    pub(crate) at_brand: &'a str,
    pub(crate) at_mall: &'a str,
}

fn cny(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "CNY".into(),
        minor_units,
    })
}

fn yuan(m: Option<&Money>) -> String {
    let n = m.map_or(0, |m| m.minor_units);
    format!("¥{}.{:02}", n / 100, n % 100)
}

/// Jade proposes the festival with the coupon attached, Aurora accepts, Jade launches it.
/// Returns the campaign's name.
pub(crate) async fn plan(
    channel: &Channel,
    tokens: &[String],
    (brand, mall): (&str, &str),
    coupon: &str,
    alliance: &str,
    say: &impl Fn(&str),
) -> anyhow::Result<String> {
    let ch = |token: &str| InterceptedService::new(channel.clone(), Bearer::new(token));
    let (brand_token, mall_token) = (&tokens[0], &tokens[1]);
    let now = lianyu_kit::time::now_millis();
    let campaign = CampaignServiceClient::new(ch(mall_token))
        .create_campaign(cm::CreateCampaignRequest {
            request_id: "demo-campaign".into(),
            campaign: Some(cm::Campaign {
                display_name: "Aurora × Jade Double 12".into(),
                partners: vec![format!("partners/{brand}")],
                budget: vec![
                    cm::BudgetShare {
                        partner: format!("partners/{mall}"),
                        amount: cny(50_000),
                        share_bps: 0,
                    },
                    cm::BudgetShare {
                        partner: format!("partners/{brand}"),
                        amount: cny(100_000),
                        share_bps: 0,
                    },
                ],
                start_time: lianyu_kit::time::timestamp(now),
                end_time: lianyu_kit::time::timestamp(now + 14 * 24 * 3_600_000),
                alliance: alliance.to_owned(),
                channels: vec![
                    cm::ContactChannel::Sms as i32,
                    cm::ContactChannel::Push as i32,
                ],
                benefits: vec![coupon.to_owned()],
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    // Aurora reads the terms and accepts exactly what it read (the etag).
    let mut brand_campaigns = CampaignServiceClient::new(ch(brand_token));
    let read = brand_campaigns
        .get_campaign(cm::GetCampaignRequest {
            name: campaign.name.clone(),
        })
        .await?
        .into_inner();
    brand_campaigns
        .accept_campaign(cm::AcceptCampaignRequest {
            request_id: "demo-campaign-accept".into(),
            name: campaign.name.clone(),
            etag: read.etag,
        })
        .await?;
    let running = CampaignServiceClient::new(ch(mall_token))
        .launch_campaign(cm::LaunchCampaignRequest {
            request_id: "demo-campaign-launch".into(),
            name: campaign.name.clone(),
        })
        .await?
        .into_inner();
    say(&format!(
        "Jade proposes the joint campaign {} with the coupon attached (budget {} from Jade, {} from Aurora); Aurora accepts the terms it read (their etag); it is {}",
        running.name,
        yuan(cny(50_000).as_ref()),
        yuan(cny(100_000).as_ref()),
        cm::CampaignState::try_from(running.state).map_or("?", |s| s.as_str_name())
    ));
    Ok(campaign.name)
}

/// Polls `read` every 100 ms until `done` holds of its answer, for at most ten seconds (the
/// feeds between services deliver well within that); returns the last answer either way.
async fn until<T, F, Fut>(mut read: F, done: impl Fn(&T) -> bool) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = read().await?;
        if done(&answer) || tokio::time::Instant::now() >= deadline {
            return Ok(answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rest of the campaign's story, after the shopper redeemed the coupon. `tokens` holds the
/// brand's, the mall's and the operator's.
pub(crate) async fn run(
    channel: &Channel,
    tokens: &[String],
    campaign: &str,
    alliance: &str,
    cast: &Cast<'_>,
    brand_consents: &mut lianyu_proto::identity::v1::consent_service_client::ConsentServiceClient<
        Authed,
    >,
    say: &impl Fn(&str),
) -> anyhow::Result<()> {
    let ch = |token: &str| InterceptedService::new(channel.clone(), Bearer::new(token));
    let (brand_token, mall_token, operator_token) = (&tokens[0], &tokens[1], &tokens[2]);
    let read = || async {
        Ok(CampaignServiceClient::new(ch(mall_token))
            .get_campaign(cm::GetCampaignRequest {
                name: campaign.to_owned(),
            })
            .await?
            .into_inner())
    };
    let burned = until(read, |c: &cm::Campaign| {
        c.spent.as_ref().is_some_and(|m| m.minor_units > 0)
    })
    .await?;
    say(&format!(
        "the campaign's budget burns down as the shopper redeems, from entitlements' ledger: {} spent, {} left",
        yuan(burned.spent.as_ref()),
        yuan(burned.remaining.as_ref())
    ));

    // The alliance's cap: two marketing messages a week, by both partners together.
    let alliance_id = alliance.trim_start_matches("alliances/");
    ContactServiceClient::new(ch(operator_token))
        .update_contact_policy(cm::UpdateContactPolicyRequest {
            request_id: "demo-policy".into(),
            policy: Some(cm::ContactPolicy {
                name: format!("contactPolicies/{alliance_id}"),
                max_contacts: 2,
                window_days: 7,
            }),
        })
        .await?;
    say(
        "the operator caps the festival alliance at 2 marketing messages per shopper per 7 days, across all partners",
    );

    brand_consents
        .grant_consent(pb::GrantConsentRequest {
            request_id: "demo-grant-marketing".into(),
            member: cast.at_brand.to_owned(),
            grantee: format!("partners/{}", cast.mall),
            purposes: vec![
                ConsentPurpose::MarketingContact as i32,
                ConsentPurpose::JointAnalytics as i32,
            ],
            channel: pb::ConsentChannel::MiniProgram as i32,
            policy_version: "2026-11".into(),
            valid_until: None,
        })
        .await?;
    say(
        "in Aurora's mini-program the shopper lets Jade send her festival offers (MARKETING_CONTACT, JOINT_ANALYTICS)",
    );

    let mut audience = AudienceServiceClient::new(ch(mall_token));
    let segment = audience
        .create_segment(cm::CreateSegmentRequest {
            request_id: "demo-segment".into(),
            parent: campaign.to_owned(),
            segment: Some(cm::Segment {
                display_name: "Aurora members".into(),
                rule: Some(cm::Rule {
                    rule: Some(cm::rule::Rule::Enrolled(cm::EnrolledCondition {
                        partner: format!("partners/{}", cast.brand),
                        since: None,
                    })),
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let operations = OperationsServiceClient::new(ch(mall_token));
    let export = || {
        let mut audience = audience.clone();
        let mut operations = operations.clone();
        let name = segment.name.clone();
        async move {
            let op = audience
                .compute_segment(cm::ComputeSegmentRequest {
                    request_id: format!("demo-compute-{}", lianyu_kit::time::now_millis()),
                    name: name.clone(),
                })
                .await?
                .into_inner();
            operations
                .wait_operation(cm::WaitOperationRequest {
                    name: op.name,
                    timeout_millis: 10_000,
                })
                .await?;
            Ok(audience
                .export_audience(cm::ExportAudienceRequest {
                    segment: name,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .members)
        }
    };
    let exported = until(export, |m: &Vec<String>| !m.is_empty()).await?;
    say(&format!(
        "Jade's segment {} (enrolled with Aurora), computed as an operation; its audience export: {} member(s) {:?} — Jade's own id for her",
        segment.name,
        exported.len(),
        exported
    ));

    let ask = |token: &str, id: &str, member: &str, channel: cm::ContactChannel| {
        let mut contacts = ContactServiceClient::new(ch(token));
        let request = cm::RequestContactRequest {
            request_id: id.to_owned(),
            member: member.to_owned(),
            campaign: campaign.to_owned(),
            channel: channel as i32,
        };
        async move {
            let answer = contacts.request_contact(request).await?.into_inner();
            if answer.allowed {
                contacts
                    .record_contact(cm::RecordContactRequest {
                        request_id: format!("{}-sent", answer.contact_token),
                        contact_token: answer.contact_token.clone(),
                        contact_time: None,
                    })
                    .await?;
            }
            anyhow::Ok(answer)
        }
    };
    let decision = |a: &cm::RequestContactResponse| {
        cm::ContactDecision::try_from(a.decision).map_or("?", |d| d.as_str_name())
    };
    let first = ask(
        brand_token,
        "demo-contact-1",
        cast.at_brand,
        cm::ContactChannel::Push,
    )
    .await?;
    let second = ask(
        mall_token,
        "demo-contact-2",
        cast.at_mall,
        cm::ContactChannel::Sms,
    )
    .await?;
    let third = ask(
        brand_token,
        "demo-contact-3",
        cast.at_brand,
        cm::ContactChannel::Sms,
    )
    .await?;
    say(&format!(
        "Aurora pushes the festival ({}), Jade texts her ({}); a third message inside the week: {} (next allowed in {} days)",
        decision(&first),
        decision(&second),
        decision(&third),
        third
            .next_allowed_time
            .map_or(0, |t| (t.seconds - chrono::Utc::now().timestamp() + 43_200)
                / 86_400)
    ));

    FunnelServiceClient::new(ch(mall_token))
        .ingest_events(cm::IngestEventsRequest {
            request_id: "demo-ingest".into(),
            events: vec![cm::FunnelEvent {
                member: cast.at_mall.to_owned(),
                campaign: campaign.to_owned(),
                kind: cm::FunnelEventKind::Ordered as i32,
                event_time: lianyu_kit::time::timestamp(lianyu_kit::time::now_millis()),
                amount: cny(45_000),
            }],
        })
        .await?;
    let report = FunnelServiceClient::new(ch(brand_token))
        .get_campaign_report(cm::GetCampaignReportRequest {
            campaign: campaign.to_owned(),
        })
        .await?
        .into_inner();
    say(&format!(
        "the campaign report: {} spent of {}, GMV {} ({} order(s)), {} claim(s), {} contact(s), return on budget {:.1}×",
        yuan(report.spend.as_ref()),
        yuan(report.budget.as_ref()),
        yuan(report.gmv.as_ref()),
        report.orders,
        report.claims,
        report.contacts,
        report.return_on_budget_bps as f64 / 10_000.0
    ));
    for line in &report.settlement {
        say(&format!(
            "  settlement by budget share: {} owes {} {}",
            line.debtor,
            line.creditor,
            yuan(line.amount.as_ref())
        ));
    }
    let funnel = report.funnel.unwrap_or_default();
    let stages: Vec<String> = funnel
        .stages
        .iter()
        .map(|s| {
            let name = cm::FunnelStage::try_from(s.stage).map_or("?", |s| s.as_str_name());
            let name = name.trim_start_matches("FUNNEL_STAGE_");
            if s.suppressed {
                format!("{name} withheld")
            } else {
                format!("{name} {}", s.members)
            }
        })
        .collect();
    say(&format!(
        "the AIPL funnel: {} — counts under {} people are never told, so one shopper's path stays hers",
        stages.join(", "),
        funnel.minimum_cohort
    ));

    brand_consents
        .withdraw_consent(pb::WithdrawConsentRequest {
            request_id: "demo-withdraw-marketing".into(),
            member: cast.at_brand.to_owned(),
            grantee: format!("partners/{}", cast.mall),
            purposes: vec![ConsentPurpose::MarketingContact as i32],
        })
        .await?;
    let after = audience
        .export_audience(cm::ExportAudienceRequest {
            segment: segment.name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .members;
    say(&format!(
        "the shopper withdraws MARKETING_CONTACT from Jade; Jade's export of the same segment now holds {} member(s)",
        after.len()
    ));
    Ok(())
}
