//! Comarketing's audiences and contacts end to end through identity: members enrolled at a
//! brand, some of whom consent to a mall; the mall's segment, computed as an operation, counts
//! and exports only those who consented (as the mall's own ids), a withdrawal applies to the
//! next export at once, small overlaps are never told, and the mesh-wide contact cap holds
//! across partners and at any concurrency. Refusals change nothing.

use std::time::Duration;

use futures::future::join_all;
use lianyu_kit::{
    testing::{BRAND, MALL, OUTSIDER, TestServer, reason, violations},
    time::{now_millis, timestamp},
};
use lianyu_proto::{
    comarketing::v1::{
        self as pb, audience_service_client::AudienceServiceClient,
        campaign_service_client::CampaignServiceClient,
        contact_service_client::ContactServiceClient, funnel_service_client::FunnelServiceClient,
        operations_service_client::OperationsServiceClient, rule::Rule as R,
    },
    common::v1::{ConsentPurpose, Money},
    identity::v1::{self as id, consent_service_client::ConsentServiceClient},
};
use prost::Message;
use tonic::{Code, codegen::InterceptedService, transport::Channel};

use crate::{support::rows, wallets::enrol};

type Svc = InterceptedService<Channel, lianyu_kit::client::Bearer>;

/// Counts of five or more are told in these tests (the default is 50).
const COHORT: &str = "5";

pub(crate) async fn mesh(test: &str) -> TestServer {
    crate::support::with_identity!(test, "comarketing", lianyu_comarketing::mount, |c| {
        c.set_var("LIANYU_COMARKETING_MINIMUM_COHORT", COHORT)
    })
}

pub(crate) fn audience(s: &TestServer, partner: &str) -> AudienceServiceClient<Svc> {
    AudienceServiceClient::new(s.as_token(&s.token(partner)))
}

pub(crate) fn contacts(s: &TestServer, token: &str) -> ContactServiceClient<Svc> {
    ContactServiceClient::new(s.as_token(token))
}

/// `member` (known to `partner`) lets `grantee` use them for `purposes`, or withdraws them.
pub(crate) async fn consent_to(
    s: &TestServer,
    partner: &str,
    member: &str,
    grantee: &str,
    purposes: &[ConsentPurpose],
    granted: bool,
) {
    let mut client = ConsentServiceClient::new(s.as_token(&s.token(partner)));
    let purposes: Vec<i32> = purposes.iter().map(|p| *p as i32).collect();
    if granted {
        client
            .grant_consent(id::GrantConsentRequest {
                request_id: format!("grant-{member}-{grantee}"),
                member: member.into(),
                grantee: format!("partners/{grantee}"),
                purposes,
                channel: id::ConsentChannel::MiniProgram as i32,
                policy_version: "2026-10".into(),
                valid_until: None,
            })
            .await
            .unwrap();
    } else {
        client
            .withdraw_consent(id::WithdrawConsentRequest {
                request_id: format!("withdraw-{member}-{grantee}"),
                member: member.into(),
                grantee: format!("partners/{grantee}"),
                purposes,
            })
            .await
            .unwrap();
    }
}

/// A RUNNING campaign of the mall and the brand (proposed by `proposer`), contacting by SMS
/// and push.
pub(crate) async fn running_campaign(s: &TestServer, proposer: &str, other: &str) -> pb::Campaign {
    let day = 24 * 3_600_000;
    let mut campaigns = CampaignServiceClient::new(s.as_token(&s.token(proposer)));
    let created = campaigns
        .create_campaign(pb::CreateCampaignRequest {
            request_id: format!("c-{proposer}-{other}"),
            campaign: Some(pb::Campaign {
                display_name: "Double 12".into(),
                partners: vec![format!("partners/{other}")],
                budget: vec![pb::BudgetShare {
                    partner: format!("partners/{proposer}"),
                    amount: Some(Money {
                        currency_code: "CNY".into(),
                        minor_units: 1_000_000,
                    }),
                    share_bps: 0,
                }],
                start_time: timestamp(now_millis()),
                end_time: timestamp(now_millis() + 7 * day),
                channels: vec![
                    pb::ContactChannel::Sms as i32,
                    pb::ContactChannel::Push as i32,
                ],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    CampaignServiceClient::new(s.as_token(&s.token(other)))
        .accept_campaign(pb::AcceptCampaignRequest {
            request_id: "accept".into(),
            name: created.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    campaigns
        .launch_campaign(pb::LaunchCampaignRequest {
            request_id: "launch".into(),
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn enrolled_with(partner: &str) -> pb::Rule {
    pb::Rule {
        rule: Some(R::Enrolled(pb::EnrolledCondition {
            partner: format!("partners/{partner}"),
            since: None,
        })),
    }
}

fn tagged(partner: &str, tag: &str) -> pb::Rule {
    pb::Rule {
        rule: Some(R::Tagged(pb::TagCondition {
            partner: format!("partners/{partner}"),
            tag: tag.into(),
        })),
    }
}

pub(crate) async fn segment(
    s: &TestServer,
    owner: &str,
    campaign: &str,
    rule: pb::Rule,
) -> pb::Segment {
    audience(s, owner)
        .create_segment(pb::CreateSegmentRequest {
            request_id: format!("seg-{}", hash(&rule.encode_to_vec())),
            parent: campaign.into(),
            segment: Some(pb::Segment {
                display_name: "brand fans".into(),
                rule: Some(rule),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

/// A short stand-in for `bytes`, for a request id (a long rule's bytes would pass its limit).
fn hash(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Computes `segment` and waits for the operation to finish.
pub(crate) async fn compute(s: &TestServer, owner: &str, segment: &str, request_id: &str) {
    let op = audience(s, owner)
        .compute_segment(pb::ComputeSegmentRequest {
            request_id: request_id.into(),
            name: segment.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let done = OperationsServiceClient::new(s.as_token(&s.token(owner)))
        .wait_operation(pb::WaitOperationRequest {
            name: op.name.clone(),
            timeout_millis: 30_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.done && done.error.is_none(), "{done:?}");
    let response = pb::Segment::decode(done.response.unwrap().value.as_slice()).unwrap();
    assert_eq!(response.name, segment);
    assert!(response.compute_time.is_some());
}

/// `segment` computed again now by `owner`, and its size as `owner` may count it.
async fn computed_size(s: &TestServer, owner: &str, segment: &str) -> pb::GetSegmentSizeResponse {
    compute(s, owner, segment, &format!("compute-{}", now_millis())).await;
    audience(s, owner)
        .get_segment_size(pb::GetSegmentSizeRequest {
            name: segment.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Everything the mall may export from `segment`, all pages.
async fn export(s: &TestServer, segment: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = audience(s, MALL)
            .export_audience(pb::ExportAudienceRequest {
                segment: segment.into(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.members);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    out.sort();
    out
}

/// Polls `check` until it holds (identity's feed reaches comarketing within well under a
/// second); panics after ten seconds.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_malls_audience_holds_only_members_who_consented_to_it_as_its_own_ids() {
    let s = mesh("aud_export").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    // Eight shoppers of both the brand and the mall (one verified phone links them); six let
    // the mall contact and count them through the brand, two do not.
    let mut members = Vec::new();
    let mut at_mall = Vec::new();
    for i in 0..8 {
        let phone = format!("1390000{i:04}");
        members.push(enrol(&s, BRAND, &phone).await);
        at_mall.push(enrol(&s, MALL, &phone).await);
    }
    for m in &members[..6] {
        consent_to(
            &s,
            BRAND,
            m,
            MALL,
            &[
                ConsentPurpose::MarketingContact,
                ConsentPurpose::JointAnalytics,
            ],
            true,
        )
        .await;
    }
    let seg = segment(&s, MALL, &campaign.name, enrolled_with(BRAND)).await;
    assert_eq!(seg.owner, format!("partners/{MALL}"));
    // Before any computation there is nothing to count or export.
    let e = audience(&s, MALL)
        .get_segment_size(pb::GetSegmentSizeRequest {
            name: seg.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "SEGMENT_NOT_COMPUTED");
    let size = || computed_size(&s, MALL, &seg.name);
    // Six, not eight: the two who did not consent are the mall's own members too, but that
    // the brand enrolled them is the brand's record, which the mall's rule may not read.
    eventually("the enrolments and consents reach comarketing", || async {
        size().await.size == 6
    })
    .await;
    eventually("the marketing consents reach comarketing", || async {
        export(&s, &seg.name).await.len() == 6
    })
    .await;
    let exported = export(&s, &seg.name).await;
    let mut consenting = at_mall[..6].to_vec();
    consenting.sort();
    assert_eq!(
        exported, consenting,
        "the mall's own ids of the six, never the brand's"
    );
    // The mall can now ask to contact one of them: its consent is in force.
    let allowed = contacts(&s, &s.token(MALL))
        .request_contact(pb::RequestContactRequest {
            request_id: "rc-1".into(),
            member: exported[0].clone(),
            campaign: campaign.name.clone(),
            channel: pb::ContactChannel::Sms as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.decision, pb::ContactDecision::Allowed as i32);

    // The brand can neither export nor size the mall's segment (its count of it would move
    // with the brand's own enrolments and erasures); an outsider does not see it.
    let refused = |e: tonic::Status, code: Code, why: &str| {
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{e:?}");
    };
    let brands_export = audience(&s, BRAND)
        .export_audience(pb::ExportAudienceRequest {
            segment: seg.name.clone(),
            ..Default::default()
        })
        .await;
    refused(
        brands_export.unwrap_err(),
        Code::PermissionDenied,
        "SEGMENT_OWNER_ONLY",
    );
    for (who, code, why) in [
        (BRAND, Code::PermissionDenied, "SEGMENT_OWNER_ONLY"),
        (OUTSIDER, Code::NotFound, "SEGMENT_NOT_FOUND"),
    ] {
        let size = audience(&s, who)
            .get_segment_size(pb::GetSegmentSizeRequest {
                name: seg.name.clone(),
            })
            .await;
        refused(size.unwrap_err(), code, why);
    }
    // A store of the mall (a guide's app) reads its partner's segment's size like the mall.
    let at_store = AudienceServiceClient::new(s.as_token(&s.store_token(MALL, "sh01")))
        .get_segment_size(pb::GetSegmentSizeRequest {
            name: seg.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at_store.size, 6);

    // One member withdraws from the mall: the very next export, from the same cached result,
    // leaves her out, and so does the contact allowance.
    consent_to(
        &s,
        BRAND,
        &members[0],
        MALL,
        &[ConsentPurpose::MarketingContact],
        false,
    )
    .await;
    eventually("the withdrawal applies to the export", || async {
        export(&s, &seg.name).await.len() == 5
    })
    .await;
    let after = export(&s, &seg.name).await;
    let withdrawn: Vec<&String> = exported.iter().filter(|m| !after.contains(m)).collect();
    assert_eq!(withdrawn.len(), 1);
    // She is still the mall's own member: the mall may message her through its own
    // relationship (and within the cap), just no longer because the brand's consent says so.
    let own = contacts(&s, &s.token(MALL))
        .request_contact(pb::RequestContactRequest {
            request_id: "rc-2".into(),
            member: withdrawn[0].clone(),
            campaign: campaign.name.clone(),
            channel: pb::ContactChannel::Sms as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.decision, pb::ContactDecision::Allowed as i32);
    // Counted for analytics as before: withdrawing MARKETING_CONTACT alone leaves her
    // JOINT_ANALYTICS consent, by which the mall's rule reads the brand's enrolment.
    assert_eq!(size().await.size, 6);
}

/// Tags `members` (the partner's own ids) with `tag`.
async fn tag(s: &TestServer, partner: &str, members: &[String], tag: &str) {
    let tagged = audience(s, partner)
        .tag_members(pb::TagMembersRequest {
            request_id: format!("tag-{tag}-{}", members.len()),
            members: members.to_vec(),
            add_tags: vec![tag.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tagged.updated as usize, members.len());
}

/// Six of the brand's own members (past the tests' cohort of five) to pad a count with, and
/// one person both partners hold: her brand id and her mall id. Phones start with `prefix`.
async fn pad_and_her(s: &TestServer, prefix: &str) -> (Vec<String>, String, String) {
    let mut pad = Vec::new();
    for i in 0..6 {
        pad.push(enrol(s, BRAND, &format!("{prefix}0000{i:04}")).await);
    }
    let phone = format!("{prefix}00009999");
    let her_at_brand = enrol(s, BRAND, &phone).await;
    (pad, her_at_brand, enrol(s, MALL, &phone).await)
}

/// The differencing attack on a segment's size: the brand pads a rule with its own members
/// (enough to pass the cohort) and ORs in one person it also holds AND a fact of the mall's
/// (the mall's "vip" tag). Were the mall's record read for her, the size would move by one
/// and tell the brand what the mall holds of her. It does not move until she consents,
/// through the mall, to JOINT_ANALYTICS by the brand; then it does.
#[tokio::test]
async fn a_segment_never_reads_another_partners_record_of_a_person_without_her_consent() {
    let s = mesh("aud_differencing").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let (pad, her_at_brand, her_at_mall) = pad_and_her(&s, "135").await;
    tag(&s, BRAND, &pad, "pad").await;
    tag(&s, BRAND, std::slice::from_ref(&her_at_brand), "target").await;
    tag(&s, MALL, std::slice::from_ref(&her_at_mall), "vip").await;
    let probe = pb::Rule {
        rule: Some(R::Any(pb::RuleList {
            rules: vec![
                tagged(BRAND, "pad"),
                pb::Rule {
                    rule: Some(R::All(pb::RuleList {
                        rules: vec![tagged(BRAND, "target"), tagged(MALL, "vip")],
                    })),
                },
            ],
        })),
    };
    let seg = segment(&s, BRAND, &campaign.name, probe).await;
    let size = || computed_size(&s, BRAND, &seg.name);
    // The pad is in (the tags are written at once; the enrolments come on identity's feed).
    eventually("the brand's members reach its segments", || async {
        size().await.size == 6
    })
    .await;
    // However often it is computed again, the mall's tag does not count her in.
    for _ in 0..3 {
        assert_eq!(
            size().await.size,
            6,
            "the mall's record of her moved the count"
        );
    }
    // Her consent, through the mall, to be counted by the brand: now the mall's tag is read.
    // Withdrawn: the next computation reads it no more.
    for (granted, counted) in [(true, 7), (false, 6)] {
        consent_to(
            &s,
            MALL,
            &her_at_mall,
            BRAND,
            &[ConsentPurpose::JointAnalytics],
            granted,
        )
        .await;
        eventually(
            "her consent or its withdrawal reaches comarketing",
            || async { size().await.size == counted },
        )
        .await;
    }
}

/// `partner` tells the funnel that `members` (its own ids) ordered in `campaign` now.
async fn ordered(s: &TestServer, partner: &str, campaign: &str, members: &[String]) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let accepted = FunnelServiceClient::new(s.as_token(&s.token(partner)))
        .ingest_events(pb::IngestEventsRequest {
            request_id: format!("orders-{partner}-{nanos}"),
            events: members
                .iter()
                .map(|member| pb::FunnelEvent {
                    member: member.clone(),
                    campaign: campaign.into(),
                    kind: pb::FunnelEventKind::Ordered as i32,
                    event_time: timestamp(now_millis()),
                    amount: Some(Money {
                        currency_code: "CNY".into(),
                        minor_units: 10_000,
                    }),
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted as usize, members.len());
}

/// The same attack on the funnel: the brand ingests purchases of its own members past the
/// cohort; the mall records a purchase of one person the brand also holds. The brand's
/// PURCHASE count must not move by her — the purchase is the mall's record — until she
/// consents, through the mall, to JOINT_ANALYTICS by the brand.
#[tokio::test]
async fn a_funnel_never_counts_another_partners_record_of_a_person_without_her_consent() {
    let s = mesh("aud_funnel_differencing").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let (pad, _, her_at_mall) = pad_and_her(&s, "134").await;
    let purchases = || async {
        let f = FunnelServiceClient::new(s.as_token(&s.token(BRAND)))
            .get_funnel(pb::GetFunnelRequest {
                campaign: campaign.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let purchase = f
            .stages
            .iter()
            .find(|c| c.stage == pb::FunnelStage::Purchase as i32)
            .unwrap();
        purchase.members
    };
    eventually("the enrolments reach comarketing", || async {
        ordered(&s, BRAND, &campaign.name, &pad).await;
        ordered(&s, MALL, &campaign.name, std::slice::from_ref(&her_at_mall)).await;
        purchases().await == 6
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            purchases().await,
            6,
            "the mall's record of her moved the count"
        );
    }
    consent_to(
        &s,
        MALL,
        &her_at_mall,
        BRAND,
        &[ConsentPurpose::JointAnalytics],
        true,
    )
    .await;
    eventually("her consent reaches comarketing", || async {
        purchases().await == 7
    })
    .await;
}

#[tokio::test]
async fn a_rule_is_validated_data_with_every_bad_field_named() {
    let s = mesh("aud_rules").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let bad = pb::Rule {
        rule: Some(R::All(pb::RuleList {
            rules: vec![
                enrolled_with(OUTSIDER),
                tagged(BRAND, "no spaces allowed"),
                pb::Rule {
                    rule: Some(R::JoinedSession(pb::SessionCondition {
                        session: "sessions/not-attached".into(),
                    })),
                },
                pb::Rule {
                    rule: Some(R::Not(Box::new(pb::Rule {
                        rule: Some(R::Inactive(pb::InactiveCondition { days: 0 })),
                    }))),
                },
                pb::Rule { rule: None },
            ],
        })),
    };
    let e = audience(&s, MALL)
        .create_segment(pb::CreateSegmentRequest {
            request_id: "bad".into(),
            parent: campaign.name.clone(),
            segment: Some(pb::Segment {
                display_name: String::new(),
                rule: Some(bad),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&e),
        [
            "segment.display_name",
            "segment.rule.all.rules[0].enrolled.partner",
            "segment.rule.all.rules[1].tagged.tag",
            "segment.rule.all.rules[2].joined_session.session",
            "segment.rule.all.rules[3].not.inactive.days",
            "segment.rule.all.rules[4]",
        ]
    );
    assert_eq!(rows(&s, "comarketing", "segments").await, 0);
    // An outsider cannot define a segment of a campaign it is not part of.
    let e = audience(&s, OUTSIDER)
        .create_segment(pb::CreateSegmentRequest {
            request_id: "x".into(),
            parent: campaign.name.clone(),
            segment: Some(pb::Segment {
                display_name: "x".into(),
                rule: Some(enrolled_with(BRAND)),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CAMPAIGN_NOT_FOUND");
    assert_eq!(rows(&s, "comarketing", "segments").await, 0);
}

#[tokio::test]
async fn overlaps_below_the_cohort_are_never_told_and_every_query_is_logged() {
    let s = mesh("aud_overlap").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    // Twelve people enrolled at both partners (one verified phone links them), three only
    // at the brand. The brand tags four of the shared ones "vip".
    let mut shared = Vec::new();
    for i in 0..12 {
        let phone = format!("1370000{i:04}");
        shared.push(enrol(&s, BRAND, &phone).await);
        enrol(&s, MALL, &phone).await;
    }
    for i in 0..3 {
        enrol(&s, BRAND, &format!("1360000{i:04}")).await;
    }
    let tagged_ok = audience(&s, BRAND)
        .tag_members(pb::TagMembersRequest {
            request_id: "tag".into(),
            members: shared[..4]
                .iter()
                .cloned()
                .chain(["members/nobody".to_owned()])
                .collect(),
            add_tags: vec!["vip".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tagged_ok.updated, tagged_ok.unknown.as_slice()),
        (4, &["members/nobody".to_owned()][..])
    );
    let malls = segment(&s, MALL, &campaign.name, enrolled_with(MALL)).await;
    let brands = segment(&s, BRAND, &campaign.name, enrolled_with(BRAND)).await;
    let vips = segment(&s, BRAND, &campaign.name, tagged(BRAND, "vip")).await;
    eventually("every enrolment reaches comarketing", || async {
        compute(&s, MALL, &malls.name, &format!("m-{}", now_millis())).await;
        audience(&s, MALL)
            .get_segment_size(pb::GetSegmentSizeRequest {
                name: malls.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .size
            == 12
    })
    .await;
    compute(&s, BRAND, &brands.name, "b").await;
    compute(&s, BRAND, &vips.name, "v").await;
    // Every participant lists the campaign's segments, each with its owner and rule.
    let listed = audience(&s, MALL)
        .list_segments(pb::ListSegmentsRequest {
            parent: campaign.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .segments;
    assert_eq!(
        listed.iter().map(|x| x.owner.as_str()).collect::<Vec<_>>(),
        [
            format!("partners/{MALL}"),
            format!("partners/{BRAND}"),
            format!("partners/{BRAND}")
        ]
    );
    let read = audience(&s, MALL)
        .get_segment(pb::GetSegmentRequest {
            name: vips.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.rule, Some(tagged(BRAND, "vip")));
    assert!(read.compute_time.is_some());
    // Twelve shared: told, rounded to tens after the fixed offset.
    let asked = audience(&s, MALL)
        .get_audience_overlap(pb::GetAudienceOverlapRequest {
            segment: malls.name.clone(),
            other_segment: brands.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!asked.suppressed);
    assert!([0, 10].contains(&asked.overlap), "{asked:?}");
    assert_eq!(asked.overlap % 10, 0);
    assert_eq!(asked.minimum_cohort, 5);
    let again = audience(&s, MALL)
        .get_audience_overlap(pb::GetAudienceOverlapRequest {
            segment: malls.name.clone(),
            other_segment: brands.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.overlap, asked.overlap,
        "asking again tells nothing new"
    );
    assert_eq!(again.queries_left, asked.queries_left - 1);
    // Four VIPs: below the cohort, withheld.
    let small = audience(&s, MALL)
        .get_audience_overlap(pb::GetAudienceOverlapRequest {
            segment: malls.name.clone(),
            other_segment: vips.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(small.suppressed);
    assert_eq!(small.overlap, 0);
    // The brand's VIP segment itself is too small to be sized for anyone.
    let vip_size = audience(&s, BRAND)
        .get_segment_size(pb::GetSegmentSizeRequest {
            name: vips.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(vip_size.suppressed && vip_size.size == 0);
    // A partner's own two segments are no overlap question; nor is another campaign's.
    let e = audience(&s, BRAND)
        .get_audience_overlap(pb::GetAudienceOverlapRequest {
            segment: brands.name.clone(),
            other_segment: vips.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), ["other_segment"]);
    // Every query is logged, for every participant to read.
    let log = audience(&s, BRAND)
        .list_overlap_queries(pb::ListOverlapQueriesRequest {
            campaign: campaign.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.queries.len(), 3);
    assert!(log.queries[0].suppressed && log.queries[0].overlap == 0);
    assert!(
        log.queries
            .iter()
            .all(|q| q.partner == format!("partners/{MALL}"))
    );
}

/// Parallel requests from two partners for one member: exactly the cap is allowed, and the
/// held slots are what the database holds.
#[tokio::test]
async fn the_mesh_wide_cap_holds_across_partners_at_any_concurrency() {
    let s = mesh("aud_cap").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let phone = "13500000001";
    let at_brand = enrol(&s, BRAND, phone).await;
    let at_mall = enrol(&s, MALL, phone).await;
    let requests = (0..12).map(|i| {
        let (partner, member) = if i % 2 == 0 {
            (BRAND, &at_brand)
        } else {
            (MALL, &at_mall)
        };
        let mut client = contacts(&s, &s.token(partner));
        let request = pb::RequestContactRequest {
            request_id: format!("race-{i}"),
            member: member.clone(),
            campaign: campaign.name.clone(),
            channel: pb::ContactChannel::Push as i32,
        };
        async move { client.request_contact(request).await.unwrap().into_inner() }
    });
    let answers = join_all(requests).await;
    let allowed: Vec<_> = answers.iter().filter(|a| a.allowed).collect();
    assert_eq!(allowed.len(), 3, "{answers:?}");
    assert!(
        answers
            .iter()
            .filter(|a| !a.allowed)
            .all(|a| a.decision == pb::ContactDecision::CapReached as i32
                && a.next_allowed_time.is_some()
                && a.contacts_in_window == 3)
    );
    assert_eq!(rows(&s, "comarketing", "contacts").await, 3);
    // A retry returns its first answer and holds no second slot.
    let replay = contacts(&s, &s.token(BRAND))
        .request_contact(pb::RequestContactRequest {
            request_id: "race-0".into(),
            member: at_brand.clone(),
            campaign: campaign.name.clone(),
            channel: pb::ContactChannel::Push as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, answers[0]);
    assert_eq!(rows(&s, "comarketing", "contacts").await, 3);
    // Recording a held slot; another partner's token is not found; recording twice is fine.
    let mine = allowed[0].contact_token.clone();
    let owner = if answers[0].contact_token == mine
        || answers.iter().step_by(2).any(|a| a.contact_token == mine)
    {
        BRAND
    } else {
        MALL
    };
    let other = if owner == BRAND { MALL } else { BRAND };
    let record = |partner: &str, id: &str| {
        let mut c = contacts(&s, &s.token(partner));
        let request = pb::RecordContactRequest {
            request_id: id.into(),
            contact_token: mine.clone(),
            contact_time: None,
        };
        async move { c.record_contact(request).await }
    };
    let e = record(other, "r0").await.unwrap_err();
    assert_eq!(reason(&e), "CONTACT_NOT_FOUND");
    let first = record(owner, "r1").await.unwrap().into_inner();
    let second = record(owner, "r2").await.unwrap().into_inner();
    assert_eq!(first, second);
}

/// A known member's requests, batched into shared transactions by group commit: the cap
/// still holds exactly when dozens of them, from two partners, race for the last slots —
/// each decided under the member's lock on the count it reads there.
#[tokio::test]
async fn the_cap_holds_for_a_known_member_when_every_request_races_for_the_last_slots() {
    let s = mesh("aud_cap_known").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let phone = "13500000002";
    let at_brand = enrol(&s, BRAND, phone).await;
    let at_mall = enrol(&s, MALL, phone).await;
    let ask = |partner: &'static str, member: String, id: String| {
        let mut client = contacts(&s, &s.token(partner));
        let request = pb::RequestContactRequest {
            request_id: id,
            member,
            campaign: campaign.name.clone(),
            channel: pb::ContactChannel::Push as i32,
        };
        async move { client.request_contact(request).await.unwrap().into_inner() }
    };
    // The first contact makes her known to the cap (her number, her counted contacts).
    let first = ask(BRAND, at_brand.clone(), "known-0".into()).await;
    assert!(first.allowed, "{first:?}");
    assert_eq!(first.contacts_in_window, 1);
    let answers = join_all((1..=40).map(|i| {
        if i % 2 == 0 {
            ask(BRAND, at_brand.clone(), format!("known-{i}"))
        } else {
            ask(MALL, at_mall.clone(), format!("known-{i}"))
        }
    }))
    .await;
    let mut held: Vec<i32> = answers
        .iter()
        .filter(|a| a.allowed)
        .map(|a| a.contacts_in_window)
        .collect();
    held.sort_unstable();
    // Two slots were left: two holds, each told its own place in the window.
    assert_eq!(held, [2, 3], "{answers:?}");
    for refused in answers.iter().filter(|a| !a.allowed) {
        assert_eq!(
            refused.decision,
            pb::ContactDecision::CapReached as i32,
            "{refused:?}"
        );
        assert_eq!(refused.contacts_in_window, 3, "{refused:?}");
        assert!(refused.next_allowed_time.is_some());
    }
    assert_eq!(rows(&s, "comarketing", "contacts").await, 3);
}

/// A client that sends one request many times at once (retries racing their first try)
/// holds one slot and gets one answer, however the tries fall into shared transactions.
#[tokio::test]
async fn parallel_retries_of_one_request_hold_one_slot() {
    let s = mesh("aud_contact_retries").await;
    let member = enrol(&s, BRAND, "13400000031").await;
    let request = pb::RequestContactRequest {
        request_id: "retried".into(),
        member: member.clone(),
        campaign: String::new(),
        channel: pb::ContactChannel::Push as i32,
    };
    // Other requests about her keep the transactions shared while the retries race.
    let answers = join_all((0..24).map(|i| {
        let mut c = contacts(&s, &s.token(BRAND));
        let mut request = request.clone();
        if i % 3 == 0 {
            request.request_id = format!("other-{i}");
        }
        async move { c.request_contact(request).await.unwrap().into_inner() }
    }))
    .await;
    let retried: Vec<_> = answers
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, a)| a)
        .collect();
    assert!(retried.iter().all(|a| *a == retried[0]), "{retried:?}");
    let held = answers.iter().filter(|a| a.allowed).count();
    let others_held = answers.iter().step_by(3).filter(|a| a.allowed).count();
    // The cap is three: the retried request holds at most one of them, once.
    assert_eq!(
        held - others_held,
        if retried[0].allowed { retried.len() } else { 0 }
    );
    let stored = usize::try_from(rows(&s, "comarketing", "contacts").await).unwrap();
    assert_eq!(stored, others_held + usize::from(retried[0].allowed));
    assert_eq!(others_held + usize::from(retried[0].allowed), 3);
}

/// RequestContact reads a member's facts and the policy in reads shared by the requests in
/// flight; a request made after quiet hours were set or the policy lowered still decides on
/// them, however busy the reads are with requests from before.
#[tokio::test]
async fn quiet_hours_and_a_lowered_cap_apply_to_every_request_after_them_during_a_burst() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let s = mesh("aud_contact_burst").await;
    let member = enrol(&s, BRAND, "13400000011").await;
    let others: Vec<String> = join_all((0..4).map(|i| {
        let s = &s;
        async move { enrol(s, BRAND, &format!("1340000002{i}")).await }
    }))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let (warm, warmed) = tokio::sync::oneshot::channel::<()>();
    let warm = Arc::new(std::sync::Mutex::new(Some(warm)));
    // Eight callers keep asking about her and four others until told to stop.
    let burst: Vec<_> = (0..8)
        .map(|w| {
            let mut c = contacts(&s, &s.token(BRAND));
            let (stop, asked, warm) = (stop.clone(), asked.clone(), warm.clone());
            let members: Vec<String> = std::iter::once(member.clone())
                .chain(others.iter().cloned())
                .collect();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let request = pb::RequestContactRequest {
                        request_id: format!("burst-{w}-{i}"),
                        member: members[i % members.len()].clone(),
                        campaign: String::new(),
                        channel: pb::ContactChannel::Push as i32,
                    };
                    c.request_contact(request).await.unwrap();
                    i += 1;
                    if asked.fetch_add(1, Ordering::SeqCst) == 100
                        && let Some(warm) = warm.lock().unwrap().take()
                    {
                        let _ = warm.send(());
                    }
                }
            })
        })
        .collect();
    warmed.await.unwrap();
    let now_minute = i32::try_from((now_millis() / 60_000) % 1440).unwrap();
    contacts(&s, &s.token(BRAND))
        .set_quiet_hours(pb::SetQuietHoursRequest {
            request_id: "burst-quiet".into(),
            member: member.clone(),
            quiet_hours: Some(pb::QuietHours {
                start_minute: now_minute,
                end_minute: (now_minute + 1439) % 1440,
                utc_offset_minutes: 0,
            }),
        })
        .await
        .unwrap();
    let ask = |id: String, member: String| {
        let mut c = contacts(&s, &s.token(BRAND));
        let request = pb::RequestContactRequest {
            request_id: id,
            member,
            campaign: String::new(),
            channel: pb::ContactChannel::Push as i32,
        };
        async move { c.request_contact(request).await.unwrap().into_inner() }
    };
    let hushed = join_all((0..16).map(|i| ask(format!("after-quiet-{i}"), member.clone()))).await;
    for a in &hushed {
        assert_eq!(a.decision, pb::ContactDecision::QuietHours as i32, "{a:?}");
    }
    // The operator closes the cap at one a week: a member with contacts held is refused.
    contacts(&s, &s.operator_token())
        .update_contact_policy(pb::UpdateContactPolicyRequest {
            request_id: "burst-policy".into(),
            policy: Some(pb::ContactPolicy {
                name: "contactPolicies/default".into(),
                max_contacts: 1,
                window_days: 7,
            }),
        })
        .await
        .unwrap();
    let capped = join_all((0..16).map(|i| {
        ask(
            format!("after-policy-{i}"),
            others[i % others.len()].clone(),
        )
    }))
    .await;
    for a in &capped {
        assert_eq!(a.decision, pb::ContactDecision::CapReached as i32, "{a:?}");
        assert_eq!(a.policy.as_ref().map(|p| p.max_contacts), Some(1), "{a:?}");
    }
    stop.store(true, Ordering::SeqCst);
    for b in burst {
        b.await.unwrap();
    }
}

/// A contact request retried after its campaign ended gets what its first call got — the
/// contact it holds — not CAMPAIGN_STATE (the sender that lost the reply must not message the
/// member a second time on a fresh request); a new request is refused and holds nothing.
#[tokio::test]
async fn a_contact_request_retried_after_its_campaign_ended_gets_its_first_answer() {
    let s = mesh("aud_contact_retry").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let member = enrol(&s, BRAND, "13400000051").await;
    let ask = |id: &str| {
        let mut c = contacts(&s, &s.token(BRAND));
        let request = pb::RequestContactRequest {
            request_id: id.into(),
            member: member.clone(),
            campaign: campaign.name.clone(),
            channel: pb::ContactChannel::Sms as i32,
        };
        async move { c.request_contact(request).await }
    };
    let first = ask("r1").await.unwrap().into_inner();
    assert_eq!(first.decision, pb::ContactDecision::Allowed as i32);
    CampaignServiceClient::new(s.as_token(&s.token(MALL)))
        .end_campaign(pb::EndCampaignRequest {
            request_id: "end".into(),
            name: campaign.name.clone(),
        })
        .await
        .unwrap();
    let held = rows(&s, "comarketing", "contacts").await;
    assert_eq!(ask("r1").await.unwrap().into_inner(), first);
    let e = ask("r2").await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "CAMPAIGN_STATE")
    );
    assert_eq!(rows(&s, "comarketing", "contacts").await, held);
}

#[tokio::test]
async fn contacts_respect_channels_quiet_hours_and_the_operators_policy() {
    let s = mesh("aud_contact_rules").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let member = enrol(&s, BRAND, "13400000001").await;
    let ask = |token: String, id: &str, channel: pb::ContactChannel, member: &str| {
        let mut c = contacts(&s, &token);
        let request = pb::RequestContactRequest {
            request_id: id.into(),
            member: member.into(),
            campaign: campaign.name.clone(),
            channel: channel as i32,
        };
        async move { c.request_contact(request).await }
    };
    let wrong = ask(
        s.token(BRAND),
        "c1",
        pb::ContactChannel::WechatTemplate,
        &member,
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        wrong.decision,
        pb::ContactDecision::ChannelNotInCampaign as i32
    );
    // A member the caller does not hold: no consent, nothing held.
    let unknown = ask(s.token(MALL), "c2", pb::ContactChannel::Sms, &member)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.decision, pb::ContactDecision::NoConsent as i32);
    // Quiet all day but the current minute's neighbour: always quiet now.
    let now_minute = i32::try_from((now_millis() / 60_000) % 1440).unwrap();
    let quiet = pb::QuietHours {
        start_minute: now_minute,
        end_minute: (now_minute + 1439) % 1440,
        utc_offset_minutes: 0,
    };
    contacts(&s, &s.token(BRAND))
        .set_quiet_hours(pb::SetQuietHoursRequest {
            request_id: "q".into(),
            member: member.clone(),
            quiet_hours: Some(quiet),
        })
        .await
        .unwrap();
    let hushed = ask(s.token(BRAND), "c3", pb::ContactChannel::Sms, &member)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hushed.decision, pb::ContactDecision::QuietHours as i32);
    assert!(hushed.next_allowed_time.is_some());
    assert_eq!(
        rows(&s, "comarketing", "contacts").await,
        0,
        "refusals hold nothing"
    );
    let e = contacts(&s, &s.token(BRAND))
        .set_quiet_hours(pb::SetQuietHoursRequest {
            request_id: "q2".into(),
            member: member.clone(),
            quiet_hours: Some(pb::QuietHours {
                start_minute: 1440,
                end_minute: 5,
                utc_offset_minutes: 900,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violations(&e),
        ["quiet_hours.start_minute", "quiet_hours.utc_offset_minutes"]
    );
    contacts(&s, &s.token(BRAND))
        .set_quiet_hours(pb::SetQuietHoursRequest {
            request_id: "q3".into(),
            member: member.clone(),
            quiet_hours: None,
        })
        .await
        .unwrap();
    // Any caller reads the policy in force: the default until the operator sets one.
    let default = contacts(&s, &s.token(BRAND))
        .get_contact_policy(pb::GetContactPolicyRequest {
            name: "contactPolicies/default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((default.max_contacts, default.window_days), (3, 7));
    // The operator lowers the mesh's cap to one; partners cannot change it.
    let policy = pb::ContactPolicy {
        name: "contactPolicies/default".into(),
        max_contacts: 1,
        window_days: 7,
    };
    let e = contacts(&s, &s.token(BRAND))
        .update_contact_policy(pb::UpdateContactPolicyRequest {
            request_id: "p0".into(),
            policy: Some(policy.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "OPERATOR_ONLY")
    );
    let set = contacts(&s, &s.operator_token())
        .update_contact_policy(pb::UpdateContactPolicyRequest {
            request_id: "p1".into(),
            policy: Some(policy.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set, policy);
    let first = ask(s.token(BRAND), "c4", pb::ContactChannel::Sms, &member)
        .await
        .unwrap()
        .into_inner();
    assert!(first.allowed);
    assert_eq!(first.policy, Some(policy));
    let second = ask(s.token(BRAND), "c5", pb::ContactChannel::Sms, &member)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.decision, pb::ContactDecision::CapReached as i32);
    // A store's guide asks too (store tokens may); the operator contacts no one.
    let guide = ask(
        s.store_token(BRAND, "sh01"),
        "c6",
        pb::ContactChannel::Sms,
        &member,
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(guide.decision, pb::ContactDecision::CapReached as i32);
    let e = ask(s.operator_token(), "c7", pb::ContactChannel::Sms, &member)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "OPERATOR_CONTACTS_NO_ONE");
    let e = ask(
        s.token(BRAND),
        "",
        pb::ContactChannel::Unspecified,
        "people/1",
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&e), ["member", "channel"]);
}

/// Everything a campaign holds, asked by a partner that is not in it, and by the mall of
/// things that are the brand's: nothing found, nothing changed (read back).
#[tokio::test]
async fn an_outsider_learns_nothing_of_a_campaign_and_changes_nothing() {
    let s = mesh("aud_outsider").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let member = enrol(&s, BRAND, "13200000001").await;
    let seg = segment(&s, BRAND, &campaign.name, enrolled_with(BRAND)).await;
    let op = audience(&s, BRAND)
        .compute_segment(pb::ComputeSegmentRequest {
            request_id: "c".into(),
            name: seg.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let token = s.token(OUTSIDER);
    let not_found = |e: tonic::Status, expected: &str| {
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::NotFound, expected),
            "{e:?}"
        );
    };
    let mut funnel = lianyu_proto::comarketing::v1::funnel_service_client::FunnelServiceClient::new(
        s.as_token(&token),
    );
    not_found(
        funnel
            .get_funnel(pb::GetFunnelRequest {
                campaign: campaign.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "CAMPAIGN_NOT_FOUND",
    );
    not_found(
        funnel
            .get_campaign_report(pb::GetCampaignReportRequest {
                campaign: campaign.name.clone(),
            })
            .await
            .unwrap_err(),
        "CAMPAIGN_NOT_FOUND",
    );
    not_found(
        funnel
            .ingest_events(pb::IngestEventsRequest {
                request_id: "i".into(),
                events: vec![pb::FunnelEvent {
                    member: "members/x".into(),
                    campaign: campaign.name.clone(),
                    kind: pb::FunnelEventKind::Viewed as i32,
                    event_time: timestamp(now_millis()),
                    amount: None,
                }],
            })
            .await
            .unwrap_err(),
        "CAMPAIGN_NOT_FOUND",
    );
    let mut outsider = AudienceServiceClient::new(s.as_token(&token));
    not_found(
        outsider
            .list_segments(pb::ListSegmentsRequest {
                parent: campaign.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "CAMPAIGN_NOT_FOUND",
    );
    not_found(
        outsider
            .list_overlap_queries(pb::ListOverlapQueriesRequest {
                campaign: campaign.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "CAMPAIGN_NOT_FOUND",
    );
    not_found(
        outsider
            .compute_segment(pb::ComputeSegmentRequest {
                request_id: "x".into(),
                name: seg.name.clone(),
            })
            .await
            .unwrap_err(),
        "SEGMENT_NOT_FOUND",
    );
    // Another partner's operation is not found, even by a participant; nor can it be cancelled.
    let mut mall_ops = OperationsServiceClient::new(s.as_token(&s.token(MALL)));
    not_found(
        mall_ops
            .get_operation(pb::GetOperationRequest {
                name: op.name.clone(),
            })
            .await
            .unwrap_err(),
        "OPERATION_NOT_FOUND",
    );
    not_found(
        mall_ops
            .cancel_operation(pb::CancelOperationRequest {
                name: op.name.clone(),
            })
            .await
            .unwrap_err(),
        "OPERATION_NOT_FOUND",
    );
    assert!(
        mall_ops
            .list_operations(pb::ListOperationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .operations
            .is_empty()
    );
    // The outsider cannot tag another partner's member, nor set their quiet hours.
    let tagged = outsider
        .tag_members(pb::TagMembersRequest {
            request_id: "t".into(),
            members: vec![member.clone()],
            add_tags: vec!["vip".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tagged.updated, tagged.unknown), (0, vec![member.clone()]));
    let e = contacts(&s, &token)
        .set_quiet_hours(pb::SetQuietHoursRequest {
            request_id: "q".into(),
            member: member.clone(),
            quiet_hours: None,
        })
        .await
        .unwrap_err();
    not_found(e, "MEMBER_NOT_FOUND");
    assert_eq!(rows(&s, "comarketing", "quiet_hours").await, 0);
    assert_eq!(rows(&s, "comarketing", "funnel_events").await, 0);
    // The owner's operation finishes, and its own listing shows it.
    let done = OperationsServiceClient::new(s.as_token(&s.token(BRAND)))
        .wait_operation(pb::WaitOperationRequest {
            name: op.name.clone(),
            timeout_millis: 30_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.done);
    // Cancelling a finished operation changes nothing.
    let after = OperationsServiceClient::new(s.as_token(&s.token(BRAND)))
        .cancel_operation(pb::CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after.done && after.error.is_none() && after.response.is_some());
    let listed = OperationsServiceClient::new(s.as_token(&s.token(BRAND)))
        .list_operations(pb::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert_eq!(
        listed.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        [op.name.as_str()]
    );
}

/// `ListOperations` keeps what its filter names: finished or running, one segment's — only
/// ever among the caller's own; a filter it cannot apply, or a page token from a list with
/// another filter, is INVALID_ARGUMENT on that field.
#[tokio::test]
async fn operations_are_listed_by_whether_they_are_done_and_by_segment() {
    let s = mesh("aud_ops_filter").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let a = segment(&s, BRAND, &campaign.name, enrolled_with(BRAND)).await;
    let b = segment(&s, BRAND, &campaign.name, enrolled_with(MALL)).await;
    compute(&s, BRAND, &a.name, "a1").await;
    compute(&s, BRAND, &a.name, "a2").await;
    compute(&s, BRAND, &b.name, "b1").await;
    let list = |partner: &'static str, filter: String, page_size: i32, page_token: String| {
        let mut ops = OperationsServiceClient::new(s.as_token(&s.token(partner)));
        async move {
            ops.list_operations(pb::ListOperationsRequest {
                page_size,
                page_token,
                filter,
            })
            .await
            .map(tonic::Response::into_inner)
        }
    };
    let names = |r: pb::ListOperationsResponse| {
        let mut n: Vec<String> = r.operations.into_iter().map(|o| o.name).collect();
        n.sort();
        n
    };
    let all = names(list(BRAND, String::new(), 0, String::new()).await.unwrap());
    assert_eq!(all.len(), 3);
    let of = |segment: &str| format!("segment = \"{segment}\"");
    let of_a = names(list(BRAND, of(&a.name), 0, String::new()).await.unwrap());
    let of_b = names(list(BRAND, of(&b.name), 0, String::new()).await.unwrap());
    assert_eq!((of_a.len(), of_b.len()), (2, 1));
    let mut both = [of_a.clone(), of_b].concat();
    both.sort();
    assert_eq!(both, all, "each operation is its one segment's");
    let done = names(
        list(BRAND, "done = true".into(), 0, String::new())
            .await
            .unwrap(),
    );
    assert_eq!(done, all);
    let running = list(BRAND, "done = false".into(), 0, String::new())
        .await
        .unwrap();
    assert!(running.operations.is_empty());
    let finished_of_a = format!("done = true AND {}", of(&a.name));
    assert_eq!(
        names(
            list(BRAND, finished_of_a.clone(), 0, String::new())
                .await
                .unwrap()
        ),
        of_a
    );
    // Paged under one filter; its token is no good under another.
    let first = list(BRAND, finished_of_a.clone(), 1, String::new())
        .await
        .unwrap();
    assert_eq!(first.operations.len(), 1);
    let second = list(BRAND, finished_of_a, 1, first.next_page_token.clone())
        .await
        .unwrap();
    let mut paged = [names(first.clone()), names(second)].concat();
    paged.sort();
    assert_eq!(paged, of_a);
    let e = list(BRAND, String::new(), 1, first.next_page_token)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), violations(&e)),
        (Code::InvalidArgument, vec!["page_token".to_owned()])
    );
    for bad in [
        "state = done",
        "done = maybe",
        "segment = segments/x",
        "done",
    ] {
        let e = list(BRAND, bad.into(), 0, String::new()).await.unwrap_err();
        assert_eq!(
            (e.code(), violations(&e)),
            (Code::InvalidArgument, vec!["filter".to_owned()]),
            "{bad}"
        );
    }
    // Another participant's filter on the brand's segment finds none of the brand's.
    let mall = list(MALL, of(&a.name), 0, String::new()).await.unwrap();
    assert!(mall.operations.is_empty());
}

/// A partner erases its records of a member: comarketing forgets what it knew of her through
/// that partner, so the next computation of a segment over it no longer counts her.
#[tokio::test]
async fn an_erasure_removes_the_member_from_what_is_computed_after_it() {
    let s = mesh("aud_erasure").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let mut members = Vec::new();
    for i in 0..6 {
        members.push(enrol(&s, BRAND, &format!("1350000{i:04}")).await);
    }
    let seg = segment(&s, BRAND, &campaign.name, enrolled_with(BRAND)).await;
    let size = || async {
        compute(&s, BRAND, &seg.name, &format!("c-{}", now_millis())).await;
        audience(&s, BRAND)
            .get_segment_size(pb::GetSegmentSizeRequest {
                name: seg.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    eventually("the enrolments arrive", || async { size().await.size == 6 }).await;
    lianyu_proto::identity::v1::member_service_client::MemberServiceClient::new(
        s.as_token(&s.token(BRAND)),
    )
    .erase_member(id::EraseMemberRequest {
        request_id: "erase".into(),
        member: members[0].clone(),
        scope: 0,
    })
    .await
    .unwrap();
    eventually("the erasure arrives", || async { size().await.size == 5 }).await;
    // Below the cohort once more would not be told at all: one more erasure.
    lianyu_proto::identity::v1::member_service_client::MemberServiceClient::new(
        s.as_token(&s.token(BRAND)),
    )
    .erase_member(id::EraseMemberRequest {
        request_id: "erase-2".into(),
        member: members[1].clone(),
        scope: 0,
    })
    .await
    .unwrap();
    eventually("the second erasure arrives", || async {
        let told = size().await;
        told.suppressed && told.size == 0
    })
    .await;
}

/// Sixty overlap queries at once against a budget of fifty: exactly fifty are answered (and
/// logged), the rest refused, however they interleave.
#[tokio::test]
async fn the_overlap_query_budget_holds_under_parallel_queries() {
    let s = mesh("aud_overlap_budget").await;
    let campaign = running_campaign(&s, MALL, BRAND).await;
    let malls = segment(&s, MALL, &campaign.name, enrolled_with(MALL)).await;
    let brands = segment(&s, BRAND, &campaign.name, enrolled_with(BRAND)).await;
    compute(&s, MALL, &malls.name, "m").await;
    compute(&s, BRAND, &brands.name, "b").await;
    let asks = (0..60).map(|_| {
        let mut client = audience(&s, MALL);
        let request = pb::GetAudienceOverlapRequest {
            segment: malls.name.clone(),
            other_segment: brands.name.clone(),
        };
        async move { client.get_audience_overlap(request).await }
    });
    let answers = join_all(asks).await;
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(answered, 50);
    assert!(
        answers
            .iter()
            .filter_map(|a| a.as_ref().err())
            .all(|e| e.code() == Code::ResourceExhausted
                && reason(e) == "OVERLAP_QUERY_BUDGET_SPENT")
    );
    assert_eq!(rows(&s, "comarketing", "overlap_queries").await, 50);
}
