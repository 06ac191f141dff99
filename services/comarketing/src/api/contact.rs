//! ContactService: the one place over-messaging is stopped — consent, quiet hours and the
//! mesh-wide cap, decided under the member's lock so concurrent requests never exceed it.

use lianyu_kit::{
    Call, KitError, batched,
    call::unary,
    directory::Question,
    names,
    time::{millis, now_millis, timestamp},
    validate::Violations,
};
use lianyu_proto::comarketing::v1 as pb;
use tonic::{Request, Response, Status};

use super::Api;
use crate::{
    domain::{
        CampaignState, ComarketingError,
        contact::{HOLD, Policy, QuietHours},
        funnel::EventKind,
    },
    store,
};

/// `MARKETING_CONTACT` in `lianyu.common.v1.ConsentPurpose`.
const MARKETING_CONTACT: i32 = 2;

/// The operator messages nobody.
fn not_operator(call: &Call) -> Result<(), KitError> {
    if call.who.operator {
        return Err(KitError::Denied(
            "OPERATOR_CONTACTS_NO_ONE",
            "the mesh operator contacts no member",
        ));
    }
    Ok(())
}

fn policy_proto(name: &str, p: Policy) -> pb::ContactPolicy {
    pb::ContactPolicy {
        name: format!("contactPolicies/{name}"),
        max_contacts: p.max_contacts,
        window_days: p.window_days,
    }
}

fn quiet_proto(q: QuietHours) -> pb::QuietHours {
    pb::QuietHours {
        start_minute: q.start_minute,
        end_minute: q.end_minute,
        utc_offset_minutes: q.utc_offset_minutes,
    }
}

fn refusal(
    decision: pb::ContactDecision,
    next: Option<i64>,
    policy: pb::ContactPolicy,
) -> pb::RequestContactResponse {
    pb::RequestContactResponse {
        allowed: false,
        decision: decision as i32,
        next_allowed_time: next.and_then(timestamp),
        policy: Some(policy),
        ..Default::default()
    }
}

impl Api {
    /// The contact policy named `name` (see [`store::policy`]), from a read that began after
    /// this call: an operator's change is in force for every request after it.
    async fn contact_policy(&self, name: &str) -> Result<Policy, KitError> {
        self.contact_policies
            .get(name.to_owned(), |names| async move {
                futures::future::join_all(names.iter().map(|n| async move {
                    store::policy(&self.read, n)
                        .await
                        .map_err(KitError::into_storage)
                }))
                .await
            })
            .await
            .map_err(KitError::Storage)
    }

    /// What the feed and the partners' own calls have told comarketing of `mesh` for `me`
    /// (the member's number, MARKETING_CONTACT grounds to `me`, quiet hours), from a read that
    /// began after this call; the requests in flight share it.
    async fn contact_facts(&self, me: &str, mesh: &str) -> Result<store::ContactFacts, KitError> {
        let facts = self
            .contact_facts
            .get((me.to_owned(), mesh.to_owned()), |keys| async move {
                batched::by_group(&keys, async |grantee: String, members| {
                    store::contact_facts(&self.read, members, &grantee, MARKETING_CONTACT)
                        .await
                        .map_err(KitError::into_storage)
                })
                .await
            })
            .await
            .map_err(KitError::Storage)?;
        Ok(facts.unwrap_or_default())
    }
}

#[tonic::async_trait]
impl pb::contact_service_server::ContactService for Api {
    async fn request_contact(
        &self,
        request: Request<pb::RequestContactRequest>,
    ) -> Result<Response<pb::RequestContactResponse>, Status> {
        unary(request, async |call, r| {
            not_operator(&call)?;
            let mut v = Violations::default();
            let scoped = v.check(
                "member",
                names::parse(&r.member, "members/{member}").map(|[m]| m.to_owned()),
            );
            if !(1..=4).contains(&r.channel) {
                v.add("channel", "required: a contact channel");
            }
            v.finish()?;
            let decide = async {
                let campaign = if r.campaign.is_empty() {
                    None
                } else {
                    let c = self.campaign(&call, &r.campaign, "campaign").await?;
                    if c.state != CampaignState::Running {
                        return Err(c
                            .state
                            .refuse("contacts count only while the campaign is RUNNING")
                            .into());
                    }
                    Some(c)
                };
                let policy_name = campaign
                    .as_ref()
                    .filter(|c| !c.alliance.is_empty())
                    .map_or("default".to_owned(), |c| c.alliance.clone());
                let policy = self.contact_policy(&policy_name).await?;
                let policy_out = policy_proto(&policy_name, policy);
                let me = call.partner_id().to_owned();
                let now = now_millis();
                // Decided before anything is held; a refusal is the answer, stored like any other.
                let refused = async |d: pb::ContactDecision, next: Option<i64>| {
                    let reply = refusal(d, next, policy_out.clone());
                    self.contacts
                        .run(&call, &r.request_id, &r, async |_txn| Ok(reply.clone()))
                        .await
                };
                if let Some(c) = &campaign
                    && !c.channels.is_empty()
                    && !c.channels.contains(&r.channel)
                {
                    return refused(pb::ContactDecision::ChannelNotInCampaign, None).await;
                }
                let directory = self.directory()?;
                let Some(mesh) = directory
                    .mesh_id(
                        &me,
                        &lianyu_kit::ids::ScopedMemberId::new(scoped.unwrap_or_default()),
                    )
                    .await?
                else {
                    return refused(pb::ContactDecision::NoConsent, None).await;
                };
                // Who the member may be known through: the caller itself (its own member), and
                // every partner whose consent to the caller the feed has shown; identity decides.
                let facts = self.contact_facts(&me, mesh.as_str()).await?;
                let mut grantors = vec![me.clone()];
                for g in facts.grantors {
                    if !grantors.contains(&g) {
                        grantors.push(g);
                    }
                }
                let questions: Vec<Question> = grantors
                    .iter()
                    .map(|g| Question {
                        member: mesh.clone(),
                        grantor: g.clone(),
                        grantee: me.clone(),
                        purpose: MARKETING_CONTACT,
                    })
                    .collect();
                // From the consent cache the mesh feed keeps fresh (a withdrawal drops it at once),
                // else identity: a contact moves no data, so the feed's sub-second staleness is the
                // bound; the export, which hands over ids, asks identity every time.
                let decisions = directory.decide_cached(&me, &questions).await?;
                if !decisions.iter().any(|d| d.allowed) {
                    return refused(pb::ContactDecision::NoConsent, None).await;
                }
                if let Some(end) = facts.quiet.and_then(|q| q.ends_after(now)) {
                    return refused(pb::ContactDecision::QuietHours, Some(end)).await;
                }
                let campaign_id = campaign.as_ref().map(|c| c.id.clone()).unwrap_or_default();
                // Every request about one member takes one lane of shared transactions: a batch
                // holds its members' locks to its commit, and two lanes taking two members' locks
                // in opposite orders would deadlock (a second lost on PostgreSQL each time).
                self.contacts
                    .keyed(mesh.as_str())
                    .run_writing(&call, &r.request_id, &r, async |txn, writes| {
                        let number = match facts.number {
                            Some(n) => n,
                            None => store::member_number(txn, mesh.as_str(), now).await?,
                        };
                        store::lock_member(txn, number).await?;
                        let id = uuid::Uuid::now_v7().simple().to_string();
                        let contact = store::NewContact {
                            id: &id,
                            member: number,
                            partner: &me,
                            campaign: &campaign_id,
                            channel: r.channel,
                            at: now,
                            expires_at: now + HOLD,
                        };
                        // Nothing this request reads depends on its reply's row: on SQLite it
                        // goes with the batch's commit.
                        writes.deferrable();
                        let Some(in_window) = store::hold_under_cap(
                            txn,
                            &contact,
                            policy.window(),
                            policy.max_contacts,
                        )
                        .await?
                        else {
                            let (counted, nth) = store::cap_standing(
                                txn,
                                number,
                                now,
                                policy.window(),
                                policy.max_contacts,
                            )
                            .await?;
                            let next = policy.admit(counted, nth).err();
                            let mut reply =
                                refusal(pb::ContactDecision::CapReached, next, policy_out.clone());
                            reply.contacts_in_window = i32::try_from(counted).unwrap_or(i32::MAX);
                            return Ok(reply);
                        };
                        Ok(pb::RequestContactResponse {
                            allowed: true,
                            decision: pb::ContactDecision::Allowed as i32,
                            next_allowed_time: None,
                            contact_token: id,
                            expire_time: timestamp(now + HOLD),
                            contacts_in_window: i32::try_from(in_window).unwrap_or(i32::MAX),
                            policy: Some(policy_out.clone()),
                        })
                    })
                    .await
            };
            // A retry of a request that was answered gets that answer, whatever changed
            // since (the campaign ended, identity unreachable).
            self.contacts
                .replayable(&call, &r.request_id, &r, decide)
                .await
        })
        .await
    }

    async fn record_contact(
        &self,
        request: Request<pb::RecordContactRequest>,
    ) -> Result<Response<pb::RecordContactResponse>, Status> {
        unary(request, async |call, r| {
            not_operator(&call)?;
            let now = now_millis();
            let mut v = Violations::default();
            if r.contact_token.is_empty() || r.contact_token.len() > 64 {
                v.add(
                    "contact_token",
                    "required: the token RequestContact returned",
                );
            }
            let sent = r.contact_time.as_ref().map_or(now, millis);
            if sent > now + 60_000 {
                v.add("contact_time", "must not be in the future");
            }
            v.finish()?;
            let me = call.partner_id().to_owned();
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let (member, expires_at, sent_at, campaign) =
                        store::contact_of(txn, &me, &r.contact_token)
                            .await?
                            .ok_or(ComarketingError::ContactNotFound)?;
                    if let Some(at) = sent_at {
                        return Ok(pb::RecordContactResponse {
                            contact_time: timestamp(at),
                        });
                    }
                    if expires_at <= now {
                        return Err(KitError::Precondition(
                            "CONTACT_EXPIRED",
                            "the slot was released an hour after it was allowed; request again"
                                .into(),
                        )
                        .into());
                    }
                    store::mark_sent(txn, &r.contact_token, sent).await?;
                    store::touch(txn, &me, [(member, sent)]).await?;
                    if !campaign.is_empty() {
                        store::insert_events(
                            txn,
                            &[store::NewEvent {
                                key: format!("contact:{}", r.contact_token),
                                campaign: &campaign,
                                member,
                                partner: &me,
                                kind: EventKind::Reached,
                                at: sent,
                                amount: 0,
                            }],
                        )
                        .await?;
                    }
                    Ok(pb::RecordContactResponse {
                        contact_time: timestamp(sent),
                    })
                })
                .await
        })
        .await
    }

    async fn set_quiet_hours(
        &self,
        request: Request<pb::SetQuietHoursRequest>,
    ) -> Result<Response<pb::SetQuietHoursResponse>, Status> {
        unary(request, async |call, r| {
            not_operator(&call)?;
            let quiet = r
                .quiet_hours
                .map(|q| QuietHours::check(q.start_minute, q.end_minute, q.utc_offset_minutes))
                .transpose()?;
            let mesh = self.mesh_id(&call, &r.member, "member").await?;
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let number = store::member_number(txn, mesh.as_str(), 0).await?;
                    store::set_quiet_hours(txn, number, quiet).await?;
                    Ok(pb::SetQuietHoursResponse {
                        quiet_hours: quiet.map(quiet_proto),
                    })
                })
                .await
        })
        .await
    }

    async fn get_contact_policy(
        &self,
        request: Request<pb::GetContactPolicyRequest>,
    ) -> Result<Response<pb::ContactPolicy>, Status> {
        unary(request, async |_call, r| {
            let [name] = names::parse(&r.name, "contactPolicies/{policy}")
                .map_err(|e| KitError::invalid("name", e))?;
            let p = self.contact_policy(name).await?;
            Ok::<_, ComarketingError>(policy_proto(name, p))
        })
        .await
    }

    async fn update_contact_policy(
        &self,
        request: Request<pb::UpdateContactPolicyRequest>,
    ) -> Result<Response<pb::ContactPolicy>, Status> {
        unary(request, async |call, r| {
            if !call.who.operator {
                return Err(KitError::Denied(
                    "OPERATOR_ONLY",
                    "only the mesh operator sets contact policies",
                )
                .into());
            }
            let given = r.policy.clone().unwrap_or_default();
            let name = names::parse(&given.name, "contactPolicies/{policy}")
                .map(|[n]| n.to_owned())
                .map_err(|e| KitError::invalid("policy.name", e));
            let policy = Policy::check(given.max_contacts, given.window_days);
            let (name, policy) = match (name, policy) {
                (Ok(n), Ok(p)) => (n, p),
                (Err(KitError::Invalid(mut a)), Err(KitError::Invalid(b))) => {
                    a.extend(b);
                    return Err(KitError::Invalid(a).into());
                }
                (Err(e), _) | (_, Err(e)) => return Err(e.into()),
            };
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    store::set_policy(txn, &name, policy).await?;
                    Ok(policy_proto(&name, policy))
                })
                .await
        })
        .await
    }
}
