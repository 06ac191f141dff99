//! ConsentService: grants and withdrawals by the collecting partner, one call each, with a
//! receipt; checks by the grantee, one member or hundreds at once.

use lianyu_kit::KitError;
use lianyu_kit::ids::{MeshMemberId, ScopedMemberId};
use lianyu_kit::page::Page;
use lianyu_proto::{
    common::v1::FeedCursor,
    identity::v1::{self as pb, consent_service_server::ConsentService},
};
use sea_orm::DatabaseTransaction;
use tonic::{Request, Response, Status};

use super::{Api, caller, convert, status};
use crate::{
    domain::{
        IdentityError, Violations,
        consent::{ConsentState, Purpose},
        partner::{Alliance, AllianceStatus, parse_partner_name},
        text,
    },
    store::{Store, consents::ConsentChange, now},
};

/// Most members one BatchCheckConsent may ask about.
pub(crate) const MAX_BATCH: usize = 1000;

/// What a grant or withdrawal asks, checked.
struct Change {
    scoped: ScopedMemberId,
    grantee: String,
    purposes: Vec<Purpose>,
}

#[tonic::async_trait]
impl ConsentService for Api {
    async fn grant_consent(
        &self,
        request: Request<pb::GrantConsentRequest>,
    ) -> Result<Response<pb::ConsentReceipt>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.into_inner();
        let mut v = Violations::default();
        let change = change(&mut v, &r.member, &r.grantee, &r.purposes, &who.partner_id);
        let channel = v.check(
            "channel",
            match pb::ConsentChannel::try_from(r.channel) {
                Ok(c) if c != pb::ConsentChannel::Unspecified => Ok(c as i32),
                _ => Err("MINI_PROGRAM, STORE, LIVESTREAM or GUIDE".into()),
            },
        );
        let policy = v.check("policy_version", text(&r.policy_version, true, 64));
        let requested_until = r.valid_until.as_ref().map(convert::millis);
        if requested_until.is_some_and(|u| u <= now()) {
            v.add("valid_until", "must be in the future");
        }
        v.finish().map_err(status)?;
        let (change, channel, policy) = (
            change.unwrap_or_else(|| unreachable!()),
            channel.unwrap_or_default(),
            policy.unwrap_or_default(),
        );
        let out = self
            .mutations
            .run_about(&call, &r.request_id, &r, async |txn| {
                let member_id = Store::member_for(txn, &who.partner_id, &change.scoped).await?;
                let alliance =
                    sharing_alliance(txn, &who.partner_id, &change.grantee, &change.purposes)
                        .await?;
                let from = now();
                let until =
                    requested_until.map_or(alliance.valid_until, |u| u.min(alliance.valid_until));
                let c = ConsentChange {
                    member_id: &member_id,
                    collector: &who.partner_id,
                    grantee: &change.grantee,
                    purposes: &change.purposes,
                    channel,
                    policy_version: &policy,
                    valid_from: from,
                    valid_until: until,
                    alliance: &alliance,
                    state: ConsentState::Granted,
                };
                let receipt = receipt(txn, &self.store, &c, &change.scoped).await?;
                Ok((receipt, Some(member_id.to_string())))
            })
            .await
            .map_err(status)?;
        Ok(Response::new(out))
    }

    async fn withdraw_consent(
        &self,
        request: Request<pb::WithdrawConsentRequest>,
    ) -> Result<Response<pb::ConsentReceipt>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.into_inner();
        let mut v = Violations::default();
        let change = change(&mut v, &r.member, &r.grantee, &r.purposes, &who.partner_id);
        v.finish().map_err(status)?;
        let change = change.unwrap_or_else(|| unreachable!());
        let out = self
            .mutations
            .run_about(&call, &r.request_id, &r, async |txn| {
                let member_id = Store::member_for(txn, &who.partner_id, &change.scoped).await?;
                // Withdrawal never needs a live alliance: it must work after one ended, too.
                let alliance = Store::alliances_of(txn, &who.partner_id)
                    .await?
                    .into_iter()
                    .find(|a| a.partners.contains(&change.grantee))
                    .ok_or_else(|| {
                        KitError::Precondition(
                            "NO_ALLIANCE",
                            "no alliance joins these partners".into(),
                        )
                    })?;
                let at = now();
                let c = ConsentChange {
                    member_id: &member_id,
                    collector: &who.partner_id,
                    grantee: &change.grantee,
                    purposes: &change.purposes,
                    channel: 0,
                    policy_version: "",
                    valid_from: at,
                    valid_until: at,
                    alliance: &alliance,
                    state: ConsentState::Withdrawn,
                };
                let receipt = receipt(txn, &self.store, &c, &change.scoped).await?;
                Ok((receipt, Some(member_id.to_string())))
            })
            .await
            .map_err(status)?;
        Ok(Response::new(out))
    }

    async fn check_consent(
        &self,
        request: Request<pb::CheckConsentRequest>,
    ) -> Result<Response<pb::CheckConsentResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.get_ref();
        let mut v = Violations::default();
        let scoped = v.check("member", convert::member_name(&r.member));
        let purpose = v.check("purpose", convert::purpose(r.purpose));
        v.finish().map_err(status)?;
        let (scoped, purpose) = (
            scoped.unwrap_or_default(),
            purpose.unwrap_or(Purpose::ShareProfile),
        );
        let mut results = self
            .check(&who.partner_id, &[scoped], purpose)
            .await
            .map_err(status)?;
        Ok(Response::new(results.pop().unwrap_or_default()))
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.get_ref();
        let page = Page::parse(r.page_size, &r.page_token, &[&who.partner_id, &r.member])
            .map_err(status)?;
        let (consents, next_page_token) = self
            .list(&who.partner_id, &r.member, &page)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListConsentsResponse {
            consents,
            next_page_token,
        }))
    }

    /// Grants and withdrawals to the caller, from `after`, then live.
    async fn watch_consent_events(
        &self,
        request: Request<pb::WatchConsentEventsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let after = request.get_ref().after.as_ref().map_or(0, |c| c.sequence);
        if after < 0 {
            return Err(status(KitError::invalid(
                "after.sequence",
                "must not be negative",
            )));
        }
        let me = who.partner_id.clone();
        let stream = self
            .store
            .feed
            .watch(after, Some(me.clone()), move |event| {
                if event.partner_id.as_deref() != Some(me.as_str()) {
                    return None;
                }
                // Stored as the message itself; the feed adds where it stands and when.
                let body: pb::WatchConsentEventsResponse = event.decode()?;
                if body.member.is_empty() {
                    return None;
                }
                Some(pb::WatchConsentEventsResponse {
                    cursor: Some(FeedCursor {
                        sequence: event.seq,
                    }),
                    event_time: convert::timestamp(event.created_at_millis),
                    ..body
                })
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn batch_check_consent(
        &self,
        request: Request<pb::BatchCheckConsentRequest>,
    ) -> Result<Response<pb::BatchCheckConsentResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.get_ref();
        let mut v = Violations::default();
        if r.members.is_empty() || r.members.len() > MAX_BATCH {
            v.add("members", format!("between 1 and {MAX_BATCH} members"));
        }
        let scoped: Vec<ScopedMemberId> = r
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| v.check(format!("members[{i}]"), convert::member_name(m)))
            .collect();
        let purpose = v.check("purpose", convert::purpose(r.purpose));
        v.finish().map_err(status)?;
        let results = self
            .check(
                &who.partner_id,
                &scoped,
                purpose.unwrap_or(Purpose::ShareProfile),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::BatchCheckConsentResponse { results }))
    }
}

type WatchStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchConsentEventsResponse, Status>> + Send>,
>;

impl Api {
    /// The caller's consent receipts: about one member (the person's own view, through any
    /// partner that holds them), or, without a member, every receipt granted to the caller.
    pub(super) async fn list(
        &self,
        who: &str,
        member: &str,
        page: &Page,
    ) -> Result<(Vec<pb::ConsentReceipt>, String), IdentityError> {
        let db = &self.store.read;
        let member_id = if member.is_empty() {
            None
        } else {
            let scoped =
                convert::member_name(member).map_err(|e| KitError::invalid("member", e))?;
            Some(Store::member_for(db, who, &scoped).await?)
        };
        let rows = Store::receipts(db, member_id.as_deref(), who, page).await?;
        let (rows, token) = page.finish(rows, |r| r.id.clone());
        let members: Vec<MeshMemberId> = rows
            .iter()
            .map(|r| MeshMemberId::new(r.member_id.clone()))
            .collect();
        let scoped = Store::scoped_ids_of(db, &self.store.secrets, who, &members).await?;
        let mut partners = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            for id in [&row.collector, &row.grantee] {
                if !partners.contains_key(id) {
                    let p = Store::partner(db, id)
                        .await?
                        .ok_or(KitError::NotFound("PARTNER_NOT_FOUND"))?;
                    partners.insert(id.clone(), p);
                }
            }
            let member = scoped
                .get(row.member_id.as_str())
                .map(|s| s.to_string())
                .unwrap_or_default();
            let alliance = self.store.alliances.get(db, &row.alliance_id).await?;
            out.push(convert::receipt(
                row,
                &member,
                &partners[&row.collector],
                &partners[&row.grantee],
                alliance.as_ref(),
            ));
        }
        Ok((out, token))
    }

    /// For each of `grantee`'s scoped ids, in order, whether a live consent allows `purpose`.
    /// Unknown and foreign ids are simply not allowed, so a batch reveals nothing about them.
    async fn check(
        &self,
        grantee: &str,
        scoped: &[ScopedMemberId],
        purpose: Purpose,
    ) -> Result<Vec<pb::CheckConsentResponse>, IdentityError> {
        let live = self
            .store
            .live_consents_by_scoped_id(grantee, scoped, purpose)
            .await?;
        Ok(scoped
            .iter()
            .map(|s| match live.get(s.as_str()) {
                Some(c) => pb::CheckConsentResponse {
                    allowed: true,
                    consent_receipt: format!("consentReceipts/{}", c.receipt_id),
                    valid_until: convert::timestamp(c.valid_until),
                },
                None => pb::CheckConsentResponse::default(),
            })
            .collect())
    }
}

fn change(
    v: &mut Violations,
    member: &str,
    grantee: &str,
    purposes: &[i32],
    caller: &str,
) -> Option<Change> {
    let scoped = v.check("member", convert::member_name(member));
    let grantee = v.check("grantee", parse_partner_name(grantee));
    if grantee.as_deref() == Some(caller) {
        v.add("grantee", "must be another partner");
    }
    if purposes.is_empty() {
        v.add("purposes", "at least one purpose");
    }
    let mut checked: Vec<Purpose> = purposes
        .iter()
        .enumerate()
        .filter_map(|(i, p)| v.check(format!("purposes[{i}]"), convert::purpose(*p)))
        .collect();
    checked.sort();
    checked.dedup();
    Some(Change {
        scoped: scoped?,
        grantee: grantee?,
        purposes: checked,
    })
}

/// The active alliance joining `collector` and `grantee` that allows every purpose.
async fn sharing_alliance(
    txn: &DatabaseTransaction,
    collector: &str,
    grantee: &str,
    purposes: &[Purpose],
) -> Result<Alliance, IdentityError> {
    let at = now();
    let joined: Vec<Alliance> = Store::alliances_of(txn, collector)
        .await?
        .into_iter()
        .filter(|a| {
            a.partners.contains(grantee)
                && a.status == AllianceStatus::Active
                && (a.valid_from..a.valid_until).contains(&at)
        })
        .collect();
    if joined.is_empty() {
        return Err(KitError::Precondition(
            "NO_ACTIVE_ALLIANCE",
            "no active alliance joins the collector and the grantee".into(),
        )
        .into());
    }
    joined
        .into_iter()
        .find(|a| {
            purposes
                .iter()
                .all(|p| a.allows(collector, grantee, *p, at))
        })
        .ok_or_else(|| {
            KitError::Precondition(
                "PURPOSE_NOT_ALLOWED",
                "the alliance does not allow every purpose asked for".into(),
            )
            .into()
        })
}

async fn receipt(
    txn: &DatabaseTransaction,
    store: &Store,
    c: &ConsentChange<'_>,
    scoped: &str,
) -> Result<pb::ConsentReceipt, IdentityError> {
    let row = Store::change_consent(txn, &store.secrets, &store.feed, c).await?;
    let collector = Store::partner(txn, c.collector)
        .await?
        .ok_or(KitError::NotFound("PARTNER_NOT_FOUND"))?;
    let grantee = Store::partner(txn, c.grantee)
        .await?
        .ok_or(KitError::NotFound("PARTNER_NOT_FOUND"))?;
    Ok(convert::receipt(
        &row,
        scoped,
        &collector,
        &grantee,
        Some(c.alliance),
    ))
}
