//! FunnelService: partners' own events, the AIPL funnel as the caller may see it, and the
//! campaign report every participant reads alike.

use std::collections::{BTreeMap, HashMap};

use lianyu_kit::{
    Call,
    call::unary,
    ids::{PartnerId, ScopedMemberId},
    names,
    time::{millis, now_millis},
    validate::{Violations, partner},
};
use lianyu_proto::comarketing::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Api, audience::JOINT_ANALYTICS, money, partner_only};
use crate::{
    domain::{
        Campaign, ComarketingError,
        contact::DAY,
        funnel::{EventKind, STAGES, Stage, stages},
        overlap::threshold,
    },
    store,
};

/// "YYYY-MM-DD" of a UTC midnight in milliseconds.
fn day_name(midnight: i64) -> String {
    // Civil from days (Howard Hinnant's algorithm).
    let z = midnight.div_euclid(DAY) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Api {
    /// The campaign's funnel as `call`'s partner may see it.
    async fn funnel(
        &self,
        call: &Call,
        campaign: &Campaign,
        through: Option<&PartnerId>,
        from: i64,
        until: i64,
        repeat_days: i32,
    ) -> Result<pb::Funnel, ComarketingError> {
        let me = call.partner_id();
        let countable = store::usable_by(&self.read, me, JOINT_ANALYTICS, true).await?;
        // An event is read only where it came through the caller, or the member consented
        // through the partner it came through to JOINT_ANALYTICS by the caller: another
        // partner's record of her never moves the caller's counts (padded with its own
        // members past the cohort, one person's purchase elsewhere would show).
        let shared = store::consented_by_holder(&self.read, me, JOINT_ANALYTICS).await?;
        let readable = |m: u32, holder: &str| {
            holder == me || shared.get(holder).is_some_and(|s| s.contains(m))
        };
        let events = store::campaign_events(&self.read, &campaign.id, from, until).await?;
        let mut by_member: HashMap<u32, Vec<crate::domain::funnel::Event>> = HashMap::new();
        for (m, e, _) in events {
            if !countable.contains(m)
                || !readable(m, &e.partner)
                || through.is_some_and(|p| p.as_str() != e.partner)
            {
                continue;
            }
            by_member.entry(m).or_default().push(e);
        }
        let mut totals: BTreeMap<Stage, u64> = BTreeMap::new();
        let mut days: BTreeMap<i64, BTreeMap<Stage, u64>> = BTreeMap::new();
        for events in by_member.values() {
            for (stage, day) in stages(events, repeat_days) {
                *totals.entry(stage).or_default() += 1;
                *days.entry(day).or_default().entry(stage).or_default() += 1;
            }
        }
        let cohort = self.minimum_cohort;
        let counts = |m: &BTreeMap<Stage, u64>| -> Vec<pb::FunnelStageCount> {
            STAGES
                .iter()
                .map(|s| {
                    let n = m.get(s).copied().unwrap_or(0);
                    let told = if n == 0 {
                        Some(0)
                    } else {
                        threshold(n, cohort)
                    };
                    pb::FunnelStageCount {
                        stage: *s as i32,
                        members: told.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                        suppressed: told.is_none(),
                    }
                })
                .collect()
        };
        Ok(pb::Funnel {
            campaign: format!("campaigns/{}", campaign.id),
            stages: counts(&totals),
            days: days
                .iter()
                .map(|(d, m)| pb::FunnelDay {
                    day: day_name(*d),
                    stages: counts(m),
                })
                .collect(),
            partner: through.map(|p| format!("partners/{p}")).unwrap_or_default(),
            minimum_cohort: i64::try_from(cohort).unwrap_or(i64::MAX),
        })
    }
}

#[tonic::async_trait]
impl pb::funnel_service_server::FunnelService for Api {
    async fn ingest_events(
        &self,
        request: Request<pb::IngestEventsRequest>,
    ) -> Result<Response<pb::IngestEventsResponse>, Status> {
        unary(request, async |call, r| {
            partner_only(&call)?;
            let now = now_millis();
            let mut v = Violations::default();
            if r.events.is_empty() || r.events.len() > 1000 {
                v.add("events", "1 to 1000 events");
            }
            let mut campaigns: HashMap<String, Campaign> = HashMap::new();
            let mut parsed = Vec::new();
            for (i, e) in r.events.iter().enumerate() {
                let f = |s: &str| format!("events[{i}].{s}");
                let member = v.check(
                    f("member"),
                    names::parse(&e.member, "members/{member}").map(|[m]| m.to_owned()),
                );
                let campaign = match names::parse(&e.campaign, "campaigns/{campaign}") {
                    Ok([id]) => match campaigns.get(id) {
                        Some(c) => Some(c.clone()),
                        None => match store::campaign_for_participant(
                            &self.read,
                            call.partner_id(),
                            id,
                            false,
                        )
                        .await?
                        {
                            Some(c) => {
                                campaigns.insert(id.to_owned(), c.clone());
                                Some(c)
                            }
                            None => return Err(ComarketingError::CampaignNotFound),
                        },
                    },
                    Err(err) => {
                        v.add(f("campaign"), err);
                        None
                    }
                };
                let kind = match EventKind::from_i32(e.kind) {
                    Some(EventKind::Enrolled) => {
                        v.add(f("kind"), "ENROLLED comes from identity only");
                        None
                    }
                    Some(k) => Some(k),
                    None => {
                        v.add(f("kind"), "required: an event kind");
                        None
                    }
                };
                let at = match &e.event_time {
                    None => {
                        v.add(f("event_time"), "required");
                        None
                    }
                    Some(t) => {
                        let at = millis(t);
                        if at > now + 60_000 {
                            v.add(f("event_time"), "must not be in the future");
                            None
                        } else if campaign.as_ref().is_some_and(|c| at < c.created_at) {
                            v.add(f("event_time"), "not before the campaign was created");
                            None
                        } else {
                            Some(at)
                        }
                    }
                };
                let amount = match (kind, &e.amount) {
                    (Some(EventKind::Ordered), Some(m)) => {
                        let currency = campaign
                            .as_ref()
                            .and_then(Campaign::budget_total)
                            .map(|(c, _)| c);
                        if m.minor_units <= 0 {
                            v.add(f("amount"), "above zero, integer minor units");
                        } else if currency.is_some_and(|c| c != m.currency_code) {
                            v.add(f("amount"), "in the campaign's currency");
                        }
                        m.minor_units
                    }
                    (Some(EventKind::Ordered), None) => {
                        v.add(f("amount"), "required for ORDERED");
                        0
                    }
                    (_, Some(_)) => {
                        v.add(f("amount"), "only for ORDERED");
                        0
                    }
                    _ => 0,
                };
                parsed.push((member, campaign, kind, at, amount));
            }
            v.finish()?;
            let me = call.partner_id().to_owned();
            let scoped: Vec<ScopedMemberId> = parsed
                .iter()
                .map(|(m, ..)| ScopedMemberId::new(m.clone().unwrap_or_default()))
                .collect();
            let mesh = self.directory()?.mesh_ids(&me, &scoped).await?;
            let request_id = r.request_id.clone();
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let known: Vec<&str> = mesh.iter().flatten().map(|m| m.as_str()).collect();
                    let numbers = store::member_numbers(txn, &known, now).await?;
                    let mut events = Vec::new();
                    let mut unknown = 0;
                    for (i, ((_, campaign, kind, at, amount), m)) in
                        parsed.iter().zip(&mesh).enumerate()
                    {
                        let (Some(c), Some(kind), Some(at), Some(m)) = (campaign, kind, at, m)
                        else {
                            unknown += 1;
                            continue;
                        };
                        let Some(n) = numbers.get(m.as_str()) else {
                            unknown += 1;
                            continue;
                        };
                        events.push(store::NewEvent {
                            key: format!("ingest:{me}:{request_id}:{i}"),
                            campaign: &c.id,
                            member: *n,
                            partner: &me,
                            kind: *kind,
                            at: *at,
                            amount: *amount,
                        });
                    }
                    store::insert_events(txn, &events).await?;
                    for e in &events {
                        if e.kind == EventKind::Ordered {
                            store::add_tally(txn, e.campaign, "orders", 1).await?;
                            store::add_tally(txn, e.campaign, "gmv", e.amount).await?;
                        }
                    }
                    store::touch(txn, &me, events.iter().map(|e| (e.member, e.at))).await?;
                    Ok(pb::IngestEventsResponse {
                        accepted: i32::try_from(events.len()).unwrap_or(i32::MAX),
                        unknown,
                    })
                })
                .await
        })
        .await
    }

    async fn get_funnel(
        &self,
        request: Request<pb::GetFunnelRequest>,
    ) -> Result<Response<pb::Funnel>, Status> {
        unary(request, async |call, r| {
            let campaign = self.campaign(&call, &r.campaign, "campaign").await?;
            let mut v = Violations::default();
            let through = if r.partner.is_empty() {
                None
            } else {
                let p = v.check("partner", partner(&r.partner));
                if p.as_ref().is_some_and(|p| !campaign.includes(p.as_str())) {
                    v.add("partner", "must take part in the campaign");
                }
                p
            };
            let from = r.start_time.as_ref().map_or(campaign.created_at, millis);
            let until = r.end_time.as_ref().map_or(now_millis() + 60_000, millis);
            if until <= from {
                v.add("end_time", "after start_time");
            }
            let repeat = match r.repeat_window_days {
                0 => 30,
                d if (1..=365).contains(&d) => d,
                _ => {
                    v.add("repeat_window_days", "1 to 365");
                    30
                }
            };
            v.finish()?;
            self.funnel(&call, &campaign, through.as_ref(), from, until, repeat)
                .await
        })
        .await
    }

    async fn get_campaign_report(
        &self,
        request: Request<pb::GetCampaignReportRequest>,
    ) -> Result<Response<pb::CampaignReport>, Status> {
        unary(request, async |call, r| {
            let campaign = self.campaign(&call, &r.campaign, "campaign").await?;
            let funnel = self
                .funnel(
                    &call,
                    &campaign,
                    None,
                    campaign.created_at,
                    now_millis() + 60_000,
                    30,
                )
                .await?;
            let tallies = store::tallies(&self.read, &campaign.id).await?;
            let get = |k: &str| {
                tallies
                    .iter()
                    .find(|(key, _)| key == k)
                    .map_or(0, |(_, v)| *v)
            };
            let cost_by_funder: Vec<(PartnerId, i64)> = tallies
                .iter()
                .filter_map(|(k, v)| Some((PartnerId::new(k.strip_prefix("cost:")?), *v)))
                .collect();
            let (currency, total) = campaign.budget_total().unwrap_or_default();
            let gmv = get("gmv");
            let m = |n: i64| money(&currency, n);
            Ok::<_, ComarketingError>(pb::CampaignReport {
                campaign: format!("campaigns/{}", campaign.id),
                funnel: Some(funnel),
                spend: m(campaign.spent),
                gmv: m(gmv),
                contacts: store::campaign_contacts(&self.read, &campaign.id).await?,
                redemptions: get("redemptions"),
                claims: get("claims"),
                cost_by_funder: cost_by_funder
                    .iter()
                    .map(|(p, c)| pb::FunderCost {
                        funder: format!("partners/{p}"),
                        cost: m(*c),
                    })
                    .collect(),
                budget: m(total),
                return_on_budget_bps: if campaign.spent > 0 {
                    i64::try_from(i128::from(gmv) * 10_000 / i128::from(campaign.spent))
                        .unwrap_or(i64::MAX)
                } else {
                    0
                },
                settlement: campaign
                    .settlement(&cost_by_funder)
                    .into_iter()
                    .map(|(debtor, creditor, amount)| pb::SettlementLine {
                        debtor: format!("partners/{debtor}"),
                        creditor: format!("partners/{creditor}"),
                        amount: m(amount),
                    })
                    .collect(),
                orders: get("orders"),
            })
        })
        .await
    }
}
