//! AudienceService: tags, segments, their computation, sizes, consent-filtered exports and
//! overlap counts. No list of members leaves but the caller's own ids of those who consented
//! to it; every count is suppressed below the minimum cohort.

use lianyu_kit::{
    Call, KitError,
    call::unary,
    directory::Question,
    ids::{MeshMemberId, PartnerId, ScopedMemberId},
    names,
    page::Page,
    time::{millis, now_millis, timestamp},
    validate::{Violations, partner, text},
};
use lianyu_proto::comarketing::v1::{self as pb, rule::Rule as R};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Api, partner_only};
use crate::{
    domain::{
        Campaign, ComarketingError,
        overlap::{QUERY_BUDGET, disclose, threshold},
        rule::{Condition, MAX_CHILDREN, MAX_CONDITIONS, MAX_DEPTH, Rule},
    },
    store::{self, StoredSegment},
};

/// `MARKETING_CONTACT` and `JOINT_ANALYTICS` in `lianyu.common.v1.ConsentPurpose`.
pub(super) const MARKETING_CONTACT: i32 =
    lianyu_proto::common::v1::ConsentPurpose::MarketingContact as i32;
pub(super) const JOINT_ANALYTICS: i32 = store::JOINT_ANALYTICS;

/// A tag or tier: 1 to 64 of [A-Za-z0-9_.:-].
fn label(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 {
        return Err("1 to 64 characters".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        return Err("letters, digits and _ . : - only".into());
    }
    Ok(s.to_owned())
}

/// Checks a rule as data, every problem under its own field, against the campaign: partners
/// must take part, benefits and sessions must be attached.
pub(crate) fn parse_rule(
    rule: Option<&pb::Rule>,
    field: &str,
    campaign: &Campaign,
    depth: usize,
    conditions: &mut usize,
    v: &mut Violations,
) -> Option<Rule> {
    let Some(r) = rule.and_then(|r| r.rule.as_ref()) else {
        v.add(field, "required: a condition, or all / any / not of rules");
        return None;
    };
    if depth > MAX_DEPTH {
        v.add(field, format!("at most {MAX_DEPTH} levels deep"));
        return None;
    }
    let participant = |v: &mut Violations, f: String, name: &str| -> Option<PartnerId> {
        let p = v.check(f.clone(), partner(name))?;
        if !campaign.includes(p.as_str()) {
            v.add(f, "must take part in the campaign");
            return None;
        }
        Some(p)
    };
    let attached = |v: &mut Violations, f: String, name: &str, pattern: &str, list: &[String]| {
        let [id] = v.check(f.clone(), names::parse(name, pattern))?;
        if !list.iter().any(|l| l == id) {
            v.add(f, "must be attached to the campaign");
            return None;
        }
        Some(id.to_owned())
    };
    let mut leaf = |c: Option<Condition>| {
        *conditions += 1;
        c.map(Rule::Is)
    };
    match r {
        R::All(list) | R::Any(list) => {
            let f = if matches!(r, R::All(_)) { "all" } else { "any" };
            if list.rules.is_empty() || list.rules.len() > MAX_CHILDREN {
                v.add(
                    format!("{field}.{f}.rules"),
                    format!("1 to {MAX_CHILDREN} rules"),
                );
                return None;
            }
            let children: Vec<Option<Rule>> = list
                .rules
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    parse_rule(
                        Some(c),
                        &format!("{field}.{f}.rules[{i}]"),
                        campaign,
                        depth + 1,
                        conditions,
                        v,
                    )
                })
                .collect();
            let children: Option<Vec<Rule>> = children.into_iter().collect();
            let children = children?;
            Some(if matches!(r, R::All(_)) {
                Rule::All(children)
            } else {
                Rule::Any(children)
            })
        }
        R::Not(inner) => parse_rule(
            Some(inner),
            &format!("{field}.not"),
            campaign,
            depth + 1,
            conditions,
            v,
        )
        .map(|r| Rule::Not(Box::new(r))),
        R::Enrolled(c) => {
            let p = participant(v, format!("{field}.enrolled.partner"), &c.partner);
            leaf(p.map(|partner| Condition::Enrolled {
                partner,
                since: c.since.as_ref().map(millis),
            }))
        }
        R::Tagged(c) => {
            let p = participant(v, format!("{field}.tagged.partner"), &c.partner);
            let t = v.check(format!("{field}.tagged.tag"), label(&c.tag));
            leaf(
                p.zip(t)
                    .map(|(partner, tag)| Condition::Tagged { partner, tag }),
            )
        }
        R::Tier(c) => {
            let p = participant(v, format!("{field}.tier.partner"), &c.partner);
            let t = v.check(format!("{field}.tier.tier"), label(&c.tier));
            leaf(
                p.zip(t)
                    .map(|(partner, tier)| Condition::Tier { partner, tier }),
            )
        }
        R::JoinedSession(c) => {
            let s = attached(
                v,
                format!("{field}.joined_session.session"),
                &c.session,
                "sessions/{session}",
                &campaign.sessions,
            );
            leaf(s.map(Condition::JoinedSession))
        }
        R::OrderedInSession(c) => {
            let s = attached(
                v,
                format!("{field}.ordered_in_session.session"),
                &c.session,
                "sessions/{session}",
                &campaign.sessions,
            );
            leaf(s.map(Condition::OrderedInSession))
        }
        R::ClaimedBenefit(c) => {
            let b = attached(
                v,
                format!("{field}.claimed_benefit.benefit"),
                &c.benefit,
                "benefits/{benefit}",
                &campaign.benefits,
            );
            leaf(b.map(Condition::ClaimedBenefit))
        }
        R::RedeemedBenefit(c) => {
            let b = attached(
                v,
                format!("{field}.redeemed_benefit.benefit"),
                &c.benefit,
                "benefits/{benefit}",
                &campaign.benefits,
            );
            leaf(b.map(Condition::RedeemedBenefit))
        }
        R::Inactive(c) => {
            if !(1..=3650).contains(&c.days) {
                v.add(format!("{field}.inactive.days"), "1 to 3650");
                return None;
            }
            leaf(Some(Condition::Inactive { days: c.days }))
        }
    }
}

/// Checks a whole rule into `v`: at most [`MAX_CONDITIONS`] conditions.
pub(crate) fn check_rule(
    rule: Option<&pb::Rule>,
    field: &str,
    campaign: &Campaign,
    v: &mut Violations,
) -> Option<Rule> {
    let mut count = 0;
    let parsed = parse_rule(rule, field, campaign, 1, &mut count, v);
    if count > MAX_CONDITIONS {
        v.add(field, format!("at most {MAX_CONDITIONS} conditions"));
        return None;
    }
    parsed
}

pub(super) fn segment_proto(s: &StoredSegment) -> pb::Segment {
    pb::Segment {
        name: format!("campaigns/{}/segments/{}", s.campaign_id, s.id),
        display_name: s.display_name.clone(),
        owner: format!("partners/{}", s.owner),
        rule: pb::Rule::decode(s.rule.as_slice()).ok(),
        compute_time: s.computed_at.and_then(timestamp),
        create_time: timestamp(s.created_at),
    }
}

impl Api {
    /// The segment named `name` (`field` in errors) of a campaign the caller takes part in,
    /// with the campaign.
    pub(super) async fn segment(
        &self,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<(Campaign, StoredSegment), ComarketingError> {
        let [campaign, segment] = names::parse(name, "campaigns/{campaign}/segments/{segment}")
            .map_err(|e| KitError::invalid(field, e))?;
        let c = store::campaign_for_participant(&self.read, call.partner_id(), campaign, false)
            .await?
            .ok_or(ComarketingError::SegmentNotFound)?;
        let s = store::segment(&self.read, campaign, segment)
            .await?
            .ok_or(ComarketingError::SegmentNotFound)?;
        Ok((c, s))
    }

    /// A segment's last result; SEGMENT_NOT_COMPUTED before the first computation.
    async fn result(
        &self,
        s: &StoredSegment,
    ) -> Result<(roaring::RoaringBitmap, i64, Vec<u8>), ComarketingError> {
        Ok(store::segment_result(&self.read, &s.id)
            .await?
            .ok_or_else(|| {
                KitError::Precondition("SEGMENT_NOT_COMPUTED", "compute the segment first".into())
            })?)
    }
}

fn owner_only(call: &Call, s: &StoredSegment) -> Result<(), KitError> {
    if s.owner != call.partner_id() {
        return Err(KitError::Denied(
            "SEGMENT_OWNER_ONLY",
            "only the partner that defined the segment computes, sizes and exports it",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::audience_service_server::AudienceService for Api {
    async fn tag_members(
        &self,
        request: Request<pb::TagMembersRequest>,
    ) -> Result<Response<pb::TagMembersResponse>, Status> {
        unary(request, async |call, r| {
            partner_only(&call)?;
            let mut v = Violations::default();
            if r.members.is_empty() || r.members.len() > 1000 {
                v.add("members", "1 to 1000 members");
            }
            let scoped: Vec<Option<String>> = r
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    v.check(
                        format!("members[{i}]"),
                        names::parse(m, "members/{member}").map(|[m]| m.to_owned()),
                    )
                })
                .collect();
            if r.add_tags.len() > 32 || r.remove_tags.len() > 32 {
                v.add("add_tags", "at most 32 tags each to add and remove");
            }
            let adds: Vec<String> = r
                .add_tags
                .iter()
                .enumerate()
                .filter_map(|(i, t)| v.check(format!("add_tags[{i}]"), label(t)))
                .collect();
            let removes: Vec<String> = r
                .remove_tags
                .iter()
                .enumerate()
                .filter_map(|(i, t)| v.check(format!("remove_tags[{i}]"), label(t)))
                .collect();
            let tier = if r.tier.is_empty() {
                None
            } else {
                v.check("tier", label(&r.tier))
            };
            if adds.is_empty() && removes.is_empty() && tier.is_none() && v.is_empty() {
                v.add(
                    "add_tags",
                    "nothing to change: add or remove a tag, or set a tier",
                );
            }
            v.finish()?;
            let me = call.partner_id().to_owned();
            let scoped: Vec<ScopedMemberId> = scoped
                .into_iter()
                .flatten()
                .map(ScopedMemberId::new)
                .collect();
            let mesh = self.directory()?.mesh_ids(&me, &scoped).await?;
            let unknown: Vec<String> = scoped
                .iter()
                .zip(&mesh)
                .filter(|(_, m)| m.is_none())
                .map(|(s, _)| format!("members/{}", s.as_str()))
                .collect();
            let known: Vec<MeshMemberId> = mesh.into_iter().flatten().collect();
            let now = now_millis();
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let ids: Vec<&str> = known.iter().map(MeshMemberId::as_str).collect();
                    let numbers = store::member_numbers(txn, &ids, now).await?;
                    let mut facts = Vec::new();
                    for id in &ids {
                        let Some(n) = numbers.get(*id).copied() else {
                            continue;
                        };
                        for t in &removes {
                            store::remove_facts(txn, n, &me, "tag", Some(t)).await?;
                        }
                        if let Some(t) = &tier {
                            store::remove_facts(txn, n, &me, "tier", None).await?;
                            facts.push((n, "tier", t.as_str()));
                        }
                        for t in &adds {
                            facts.push((n, "tag", t.as_str()));
                        }
                    }
                    let facts: Vec<store::Fact<'_>> = facts
                        .iter()
                        .map(|(n, kind, subject)| store::Fact {
                            member: *n,
                            kind,
                            subject,
                            partner: &me,
                            at: now,
                        })
                        .collect();
                    store::record_facts(txn, &facts).await?;
                    Ok(pb::TagMembersResponse {
                        updated: i32::try_from(numbers.len()).unwrap_or(i32::MAX),
                        unknown: unknown.clone(),
                    })
                })
                .await
        })
        .await
    }

    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        unary(request, async |call, r| {
            partner_only(&call)?;
            let campaign = self.campaign(&call, &r.parent, "parent").await?;
            let given = r.segment.clone().unwrap_or_default();
            let mut v = Violations::default();
            let display_name =
                v.check("segment.display_name", text(&given.display_name, true, 100));
            let rule = check_rule(given.rule.as_ref(), "segment.rule", &campaign, &mut v);
            v.finish()?;
            let (Some(display_name), Some(_)) = (display_name, rule) else {
                return Err(KitError::invalid("segment", "required").into());
            };
            let segment = StoredSegment {
                id: uuid::Uuid::now_v7().simple().to_string(),
                campaign_id: campaign.id.clone(),
                owner: call.partner_id().to_owned(),
                display_name,
                rule: given.rule.unwrap_or_default().encode_to_vec(),
                created_at: now_millis(),
                computed_at: None,
                computing: None,
            };
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    store::insert_segment(txn, &segment).await?;
                    Ok(segment_proto(&segment))
                })
                .await
        })
        .await
    }

    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        unary(request, async |call, r| {
            let (_, s) = self.segment(&call, &r.name, "name").await?;
            Ok::<_, ComarketingError>(segment_proto(&s))
        })
        .await
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        unary(request, async |call, r| {
            let campaign = self.campaign(&call, &r.parent, "parent").await?;
            let mut page = Page::parse(
                r.page_size,
                &r.page_token,
                &[call.partner_id(), &campaign.id],
            )?;
            page.size = page.size.min(500);
            let (segments, next_page_token) =
                store::list_segments(&self.read, &campaign.id, &page).await?;
            Ok::<_, ComarketingError>(pb::ListSegmentsResponse {
                segments: segments.iter().map(segment_proto).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn compute_segment(
        &self,
        request: Request<lianyu_proto::comarketing::v1::ComputeSegmentRequest>,
    ) -> Result<Response<lianyu_proto::common::v1::Operation>, Status> {
        unary(request, async |call, r| {
            partner_only(&call)?;
            let (campaign, s) = self.segment(&call, &r.name, "name").await?;
            owner_only(&call, &s)?;
            // Checked again against the campaign as it is now (a stored rule stays valid:
            // a DRAFT campaign's attachments can change under it).
            let mut v = Violations::default();
            let rule = check_rule(
                pb::Rule::decode(s.rule.as_slice()).ok().as_ref(),
                "segment.rule",
                &campaign,
                &mut v,
            );
            v.finish()?;
            let rule = rule.ok_or_else(|| KitError::invalid("segment.rule", "required"))?;
            self.jobs.compute(&self.mutations, &call, &r, s, rule).await
        })
        .await
    }

    async fn get_segment_size(
        &self,
        request: Request<pb::GetSegmentSizeRequest>,
    ) -> Result<Response<pb::GetSegmentSizeResponse>, Status> {
        unary(request, async |call, r| {
            let (_, s) = self.segment(&call, &r.name, "name").await?;
            // Another participant's count of it would move with its own enrolments and
            // erasures, and tell it, one person at a time, what the owner's rule read.
            owner_only(&call, &s)?;
            let (result, at, _) = self.result(&s).await?;
            let countable =
                store::usable_by(&self.read, call.partner_id(), JOINT_ANALYTICS, true).await?;
            let size = result.intersection_len(&countable);
            let told = threshold(size, self.minimum_cohort);
            Ok::<_, ComarketingError>(pb::GetSegmentSizeResponse {
                size: told.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                as_of: timestamp(at),
                suppressed: told.is_none(),
            })
        })
        .await
    }

    async fn export_audience(
        &self,
        request: Request<pb::ExportAudienceRequest>,
    ) -> Result<Response<pb::ExportAudienceResponse>, Status> {
        unary(request, async |call, r| {
            partner_only(&call)?;
            let (_, s) = self.segment(&call, &r.segment, "segment").await?;
            owner_only(&call, &s)?;
            let page = Page::parse(r.page_size, &r.page_token, &[call.partner_id(), &s.id])?;
            let size = if r.page_size == 0 {
                500
            } else {
                page.size.min(1000)
            };
            let after: u32 = match &page.after {
                Some(a) => a.parse().map_err(|_| {
                    KitError::invalid("page_token", "not a page token from this query")
                })?,
                None => 0,
            };
            let (result, _, _) = self.result(&s).await?;
            let me = call.partner_id().to_owned();
            // Candidates in member order after the token, by the feed's consents; identity
            // then decides each one now.
            let usable = store::usable_by(&self.read, &me, MARKETING_CONTACT, false).await?;
            let mut candidates = result & usable;
            if page.after.is_some() {
                candidates.remove_range(0..=after);
            }
            let batch: Vec<u32> = candidates
                .iter()
                .take(usize::try_from(size).unwrap_or(500))
                .collect();
            let more = candidates.len() > batch.len() as u64;
            let grounds = store::grounds(&self.read, &batch, &me, MARKETING_CONTACT).await?;
            let mesh = store::mesh_members_of(&self.read, &batch).await?;
            let mut questions = Vec::new();
            let mut asked = Vec::new();
            for (n, m) in &mesh {
                for g in grounds.get(n).into_iter().flatten() {
                    questions.push(Question {
                        member: MeshMemberId::new(m.clone()),
                        grantor: g.clone(),
                        grantee: me.clone(),
                        purpose: MARKETING_CONTACT,
                    });
                    asked.push(*n);
                }
            }
            let directory = self.directory()?;
            let decisions = directory.decide(&me, &questions).await?;
            let allowed: std::collections::BTreeSet<u32> = asked
                .iter()
                .zip(&decisions)
                .filter(|(_, d)| d.allowed)
                .map(|(n, _)| *n)
                .collect();
            let kept: Vec<(u32, MeshMemberId)> = mesh
                .into_iter()
                .filter(|(n, _)| allowed.contains(n))
                .map(|(n, m)| (n, MeshMemberId::new(m)))
                .collect();
            let ids: Vec<MeshMemberId> = kept.iter().map(|(_, m)| m.clone()).collect();
            let scoped = directory.scoped_ids(&me, &ids).await?;
            let members = scoped
                .into_iter()
                .flatten()
                .map(|s| format!("members/{}", s.as_str()))
                .collect();
            let last = batch.last().map(u32::to_string);
            Ok::<_, ComarketingError>(pb::ExportAudienceResponse {
                members,
                next_page_token: page.next_token(last.as_deref(), more),
            })
        })
        .await
    }

    async fn get_audience_overlap(
        &self,
        request: Request<pb::GetAudienceOverlapRequest>,
    ) -> Result<Response<pb::GetAudienceOverlapResponse>, Status> {
        unary(request, async |call, r| {
            partner_only(&call)?;
            let (campaign, mine) = self.segment(&call, &r.segment, "segment").await?;
            owner_only(&call, &mine)?;
            let (_, other) = self
                .segment(&call, &r.other_segment, "other_segment")
                .await?;
            if other.campaign_id != campaign.id || other.owner == mine.owner {
                return Err(KitError::invalid(
                    "other_segment",
                    "another participant's segment of the same campaign",
                )
                .into());
            }
            let (a, _, a_bytes) = self.result(&mine).await?;
            let (b, _, b_bytes) = self.result(&other).await?;
            let me = call.partner_id().to_owned();
            let countable = store::usable_by(&self.read, &me, JOINT_ANALYTICS, true).await?;
            let shared = (a & b).intersection_len(&countable);
            let told = disclose(
                shared,
                self.minimum_cohort,
                &self.overlap_key,
                [&a_bytes, &b_bytes],
            );
            // The budget is checked and the query logged in one transaction under the
            // campaign's row lock, so parallel queries cannot overspend it; a query refused
            // for the budget is not logged (it told nothing).
            let queries_left = {
                use sea_orm::TransactionTrait;
                let txn = self.db.begin().await.map_err(store::storage)?;
                store::campaign_for_participant(&txn, &me, &campaign.id, true).await?;
                let asked = store::overlap_queries_asked(&txn, &campaign.id, &me).await?;
                if asked >= QUERY_BUDGET {
                    return Err(KitError::Exhausted(
                        "OVERLAP_QUERY_BUDGET_SPENT",
                        "this partner has asked every overlap query this campaign allows",
                    )
                    .into());
                }
                let segments = (r.segment.as_str(), r.other_segment.as_str());
                store::log_overlap(&txn, &campaign.id, &me, segments, told, now_millis()).await?;
                txn.commit().await.map_err(store::storage)?;
                i32::try_from(QUERY_BUDGET - asked - 1).unwrap_or(0)
            };
            Ok::<_, ComarketingError>(pb::GetAudienceOverlapResponse {
                overlap: told.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                suppressed: told.is_none(),
                minimum_cohort: i64::try_from(self.minimum_cohort).unwrap_or(i64::MAX),
                queries_left,
            })
        })
        .await
    }

    async fn list_overlap_queries(
        &self,
        request: Request<pb::ListOverlapQueriesRequest>,
    ) -> Result<Response<pb::ListOverlapQueriesResponse>, Status> {
        unary(request, async |call, r| {
            let campaign = self.campaign(&call, &r.campaign, "campaign").await?;
            let mut page = Page::parse(
                r.page_size,
                &r.page_token,
                &[call.partner_id(), &campaign.id],
            )?;
            page.size = page.size.min(500);
            let (rows, next_page_token) =
                store::list_overlaps(&self.read, &campaign.id, &page).await?;
            Ok::<_, ComarketingError>(pb::ListOverlapQueriesResponse {
                queries: rows
                    .into_iter()
                    .map(|q| pb::OverlapQuery {
                        partner: format!("partners/{}", q.partner),
                        segment: q.segment,
                        other_segment: q.other_segment,
                        overlap: q.overlap,
                        suppressed: q.suppressed,
                        query_time: timestamp(q.asked_at),
                    })
                    .collect(),
                next_page_token,
            })
        })
        .await
    }
}
