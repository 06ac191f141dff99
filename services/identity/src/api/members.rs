//! MemberService: enrol what a partner knows of a person, resolve and read members through
//! partner-scoped ids; other partners' fields only under a live consent, each read audited.

use lianyu_kit::KitError;
use lianyu_kit::ids::ScopedMemberId;
use lianyu_kit::storage::StorageError;
use lianyu_kit::writes::Writes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use lianyu_kit::{Call, Principal, page::Page};
use lianyu_proto::identity::v1::{self as pb, member_service_server::MemberService};
use tonic::{Request, Response, Status};

use super::{Api, caller, convert, status};
use crate::{
    domain::{
        IdentityError, Violations,
        audit::Access,
        consent::{ConsentEvent, EventKind, Purpose},
        identifier::Identifier,
    },
    store::{Store, consents::append_event, now},
};
use lianyu_kit::call::unary;

const MAX_IDENTIFIERS: usize = 20;
const MAX_PROFILE_FIELDS: usize = 50;

#[tonic::async_trait]
impl MemberService for Api {
    async fn enroll_member(
        &self,
        request: Request<pb::EnrollMemberRequest>,
    ) -> Result<Response<pb::EnrollMemberResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.into_inner();
        let (ids, fields) = enrolment(&r, &who.partner_id).map_err(status)?;
        // A new person is the common case: when nobody holds these identifiers yet (read
        // beside the writer, on SQLite), the first try makes the member without reading in
        // the transaction, guarded; a try after a conflict reads again and links.
        let unseen = AtomicBool::new(self.store.unseen(&ids).await.map_err(status)?);
        let unseen = &unseen;
        let out = self
            .enrolments
            .run_staged(&call, &r.request_id, &r, async |txn| {
                let mut writes = Writes::new();
                let first_unseen = unseen.swap(false, Ordering::Relaxed);
                let enrolled = self
                    .store
                    .enroll(
                        txn,
                        &mut writes,
                        &who.partner_id,
                        &ids,
                        &fields,
                        first_unseen,
                    )
                    .await?;
                // The mesh learns who is enrolled where (comarketing's segments and loyalty).
                crate::store::mesh::stage_mesh(
                    &self.store.feed,
                    &mut writes,
                    lianyu_proto::identity::internal::v1::MeshEventKind::MemberEnrolled,
                    crate::store::mesh::MeshEvent {
                        member: enrolled.member_id.as_str(),
                        partner: who.partner_id.as_str(),
                        ..Default::default()
                    },
                );
                let view = match enrolled.view {
                    Some(view) => view,
                    None => {
                        self.store
                            .contributed(txn, &enrolled.member_id, &who.partner_id)
                            .await?
                    }
                };
                let reply = pb::EnrollMemberResponse {
                    member: Some(member(&enrolled.scoped_id, &view, Vec::new())),
                    linked_existing: enrolled.linked_existing,
                    unverified_candidate_count: enrolled.candidates,
                };
                Ok((reply, Some(enrolled.member_id), writes))
            })
            .await
            .map_err(status)?;
        Ok(Response::new(out))
    }

    async fn resolve_member(
        &self,
        request: Request<pb::ResolveMemberRequest>,
    ) -> Result<Response<pb::ResolveMemberResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let id = request.get_ref().identifier.clone().unwrap_or_default();
        let id = identifier(&id, &who.partner_id)
            .map_err(|e| status(KitError::invalid("identifier", e)))?;
        let scoped = self
            .store
            .resolve(&who.partner_id, &id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResolveMemberResponse {
            member: format!("members/{scoped}"),
        }))
    }

    async fn erase_member(
        &self,
        request: Request<pb::EraseMemberRequest>,
    ) -> Result<Response<pb::EraseMemberResponse>, Status> {
        unary(request, async |call, r| self.erase(&call, &r).await).await
    }

    /// The person's access request, through a partner that holds them: what that partner
    /// holds, every consent receipt of theirs, and the reads of their data the partner may see.
    async fn export_member_data(
        &self,
        request: Request<pb::ExportMemberDataRequest>,
    ) -> Result<Response<pb::ExportMemberDataResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let member = request.get_ref().member.clone();
        let scoped =
            convert::member_name(&member).map_err(|e| status(KitError::invalid("member", e)))?;
        let db = &self.store.read;
        let member_id = Store::member_for(db, &who.partner_id, &scoped)
            .await
            .map_err(status)?;
        let own = self
            .store
            .contributed(db, &member_id, &who.partner_id)
            .await
            .map_err(status)?;
        // One page of the largest size: an export past 1,000 receipts or reads is cut there.
        let page = Page::parse(i32::MAX, "", &[&who.partner_id, &member]).map_err(status)?;
        let (consents, _) = self
            .list(&who.partner_id, &member, &page)
            .await
            .map_err(status)?;
        let (access_records, _) = self
            .access_records(&who.partner_id, Some(&member_id), &page)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ExportMemberDataResponse {
            member: Some(self::member(&scoped, &own, Vec::new())),
            consents,
            access_records,
        }))
    }

    async fn link_identifier(
        &self,
        request: Request<pb::LinkIdentifierRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        unary(request, async |call, r| {
            let change = IdentifierChange {
                request_id: &r.request_id,
                member: &r.member,
                identifier: r.identifier.as_ref(),
                link: true,
            };
            self.change_identifier(&call, &r, change).await
        })
        .await
    }

    async fn unlink_identifier(
        &self,
        request: Request<pb::UnlinkIdentifierRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        unary(request, async |call, r| {
            let change = IdentifierChange {
                request_id: &r.request_id,
                member: &r.member,
                identifier: r.identifier.as_ref(),
                link: false,
            };
            self.change_identifier(&call, &r, change).await
        })
        .await
    }

    async fn merge_members(
        &self,
        request: Request<pb::MergeMembersRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        unary(request, async |call, r| self.merge(&call, &r).await).await
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.get_ref();
        let scoped =
            convert::member_name(&r.name).map_err(|e| status(KitError::invalid("name", e)))?;
        let purpose = if r.purpose == 0 {
            Ok(Purpose::ShareProfile)
        } else {
            convert::purpose(r.purpose)
        }
        .map_err(|e| status(KitError::invalid("purpose", e)))?;
        let view = self
            .read_member(who, &scoped, purpose)
            .await
            .map_err(status)?;
        Ok(Response::new(view))
    }
}

/// A LinkIdentifier or UnlinkIdentifier call.
struct IdentifierChange<'a> {
    request_id: &'a str,
    member: &'a str,
    identifier: Option<&'a pb::Identifier>,
    link: bool,
}

impl Api {
    /// Adds an identifier to, or removes it from, the caller's record of a member; answers with
    /// the caller's view of the member afterwards.
    async fn change_identifier<Req: prost::Message>(
        &self,
        call: &Call,
        request: &Req,
        change: IdentifierChange<'_>,
    ) -> Result<pb::Member, IdentityError> {
        let who = &call.who;
        let (scoped, id) =
            member_and_identifier(change.member, change.identifier, &who.partner_id)?;
        self.mutations
            .run_about(call, change.request_id, request, async |txn| {
                let member_id = Store::member_for(txn, &who.partner_id, &scoped).await?;
                if change.link {
                    self.store
                        .link_identifier(txn, &who.partner_id, &member_id, &id)
                        .await?;
                } else {
                    self.store
                        .unlink_identifier(txn, &who.partner_id, &member_id, &id)
                        .await?;
                }
                let view = self
                    .store
                    .contributed(txn, &member_id, &who.partner_id)
                    .await?;
                Ok((
                    member(&scoped, &view, Vec::new()),
                    Some(member_id.into_string()),
                ))
            })
            .await
    }

    /// Folds the caller's `duplicate_member` into `member` on verified evidence. Every
    /// partner that held the duplicate keeps its scoped id and hears MEMBERS_MERGED.
    async fn merge(
        &self,
        call: &Call,
        r: &pb::MergeMembersRequest,
    ) -> Result<pb::Member, IdentityError> {
        let who = &call.who;
        let mut v = Violations::default();
        let keep = v.check("member", convert::member_name(&r.member));
        let dup = v.check(
            "duplicate_member",
            convert::member_name(&r.duplicate_member),
        );
        if keep.is_some() && keep == dup {
            v.add("duplicate_member", "must name a different member");
        }
        let evidence = match &r.evidence {
            None => {
                v.add(
                    "evidence",
                    "required: the verified identifier that proves it",
                );
                None
            }
            Some(e) => v.check("evidence", identifier(e, &who.partner_id)),
        };
        v.finish()?;
        let (Some(keep), Some(dup), Some(evidence)) = (keep, dup, evidence) else {
            return Err(KitError::invalid("member", "required").into());
        };
        super::partner_wide(who)?;
        self.mutations.run_about(call, &r.request_id, r, async |txn| {
            let keep_id = Store::member_for(txn, &who.partner_id, &keep).await?;
            let dup_id = Store::member_for(txn, &who.partner_id, &dup).await?;
            // Both people held for the merge, then named again: a merge of the pair that
            // committed meanwhile (the opposite one, sent at the same moment) is seen, and
            // this one finds them one person instead of folding each into the other.
            Store::lock_members(txn, [keep_id.as_str(), dup_id.as_str()]).await?;
            if Store::member_for(txn, &who.partner_id, &keep).await? != keep_id
                || Store::member_for(txn, &who.partner_id, &dup).await? != dup_id
            {
                return Err(KitError::Storage(StorageError::Conflict(
                    "the pair was merged meanwhile".into(),
                ))
                .into());
            }
            if keep_id != dup_id {
                let held = self
                    .store
                    .holds_verified(txn, &who.partner_id, [&keep_id, &dup_id], &evidence)
                    .await?;
                crate::domain::merge::check_evidence(&evidence, held).map_err(|reason| {
                    KitError::Precondition(
                        reason,
                        "a merge needs a verified phone, UnionID, OpenID or email you hold on one of the two"
                            .into(),
                    )
                })?;
                self.merge_is_trusted(txn, &who.partner_id, [&keep_id, &dup_id], &evidence)
                    .await?;
                crate::store::mesh::append_mesh(
                    &self.store.feed,
                    txn,
                    lianyu_proto::identity::internal::v1::MeshEventKind::MembersMerged,
                    crate::store::mesh::MeshEvent {
                        member: dup_id.as_str(),
                        into_member: keep_id.as_str(),
                        ..Default::default()
                    },
                )
                .await?;
                for (partner, their_id) in self.store.merge_members(txn, &keep_id, &dup_id).await? {
                    append_event(&self.store.feed, txn,
                        ConsentEvent {
                            kind: EventKind::Merged,
                            member: their_id,
                            collector: who.partner_id.clone(),
                            grantee: partner,
                            purposes: Vec::new(),
                            receipt_id: String::new(),
                        },
                    )
                    .await?;
                }
                self.store
                    .link_identifier(txn, &who.partner_id, &keep_id, &evidence)
                    .await?;
                tracing::info!(partner = %who.partner_id, "members merged");
            }
            let view = self
                .store
                .contributed(txn, &keep_id, &who.partner_id)
                .await?;
            Ok((member(&keep, &view, Vec::new()), Some(keep_id.into_string())))
        })
        .await
    }

    /// A merge changes what every other holder of either member sees, so each of them must be
    /// allied with the caller on terms that accept the evidence's verification method.
    async fn merge_is_trusted(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        caller: &str,
        members: [&str; 2],
        evidence: &Identifier,
    ) -> Result<(), IdentityError> {
        let others = Store::other_holders(txn, caller, &members).await?;
        if others.is_empty() {
            return Ok(());
        }
        let alliances = Store::alliances_of(txn, caller).await?;
        let at = now();
        let untrusting = others.iter().any(|other| {
            !alliances
                .iter()
                .any(|a| a.trusts_verification(caller, other, &[evidence.method], at))
        });
        if untrusting {
            return Err(KitError::Precondition(
                "MERGE_AFFECTS_OTHER_PARTNER",
                "another partner holds one of these members and is not allied with you on terms that accept this evidence; the merge would change its records".into(),
            ).into());
        }
        Ok(())
    }

    /// The caller's own data, plus each other partner's profile that a live consent lets the
    /// caller read. Every cross-partner read, allowed or not, is recorded before data is returned.
    async fn read_member(
        &self,
        who: &Principal,
        scoped: &ScopedMemberId,
        purpose: Purpose,
    ) -> Result<pb::Member, IdentityError> {
        let db = &self.store.read;
        let member_id = Store::member_for(db, &who.partner_id, scoped).await?;
        let own = self
            .store
            .contributed(db, &member_id, &who.partner_id)
            .await?;
        let mut shared = Vec::new();
        let mut reads = Vec::new();
        // Only SHARE_PROFILE reads other partners' profiles, and only from partners the
        // person has a consent relationship with for the caller: any other attempt would put
        // a "refused read" in a stranger's audit trail, telling it who else holds the person.
        let sources = if purpose == Purpose::ShareProfile {
            Store::consenting_sources(db, &member_id, &who.partner_id).await?
        } else {
            Vec::new()
        };
        for source in sources {
            let consents = self
                .store
                .live_consents(
                    std::slice::from_ref(&member_id),
                    &who.partner_id,
                    purpose,
                    Some(&source),
                )
                .await?;
            let consent = consents.get(member_id.as_str());
            if let Some(consent) = consent {
                let profile = self
                    .store
                    .profile(db, &member_id, &source)
                    .await?
                    .unwrap_or_default();
                let name = Store::partner(db, &source)
                    .await?
                    .map(|p| p.display_name)
                    .unwrap_or_default();
                shared.push(pb::SharedProfile {
                    source_partner_display_name: name,
                    profile: profile.into_iter().collect(),
                    consent_receipt: format!("consentReceipts/{}", consent.receipt_id),
                });
            }
            reads.push(Access {
                seq: 0,
                accessor: who.partner_id.clone(),
                source,
                member_id: member_id.to_string(),
                purpose: purpose as i32,
                receipt_id: consent.map(|c| c.receipt_id.clone()).unwrap_or_default(),
                allowed: consent.is_some(),
                at_millis: now(),
                via_service: String::new(),
                acting_partner: String::new(),
            });
        }
        self.store.record_accesses(reads).await?;
        Ok(member(scoped, &own, shared))
    }
}

fn member(
    scoped: &str,
    view: &crate::store::MemberView,
    shared: Vec<pb::SharedProfile>,
) -> pb::Member {
    pb::Member {
        name: format!("members/{scoped}"),
        identifiers: view
            .identifiers
            .iter()
            .map(convert::identifier_out)
            .collect(),
        profile: view.profile.clone().into_iter().collect(),
        shared_profiles: shared,
        create_time: convert::timestamp(view.created_at),
    }
}

fn identifier(id: &pb::Identifier, partner: &str) -> Result<Identifier, String> {
    let method = crate::domain::identifier::Method::from_number(id.verification_method)
        .ok_or("verification_method: unknown method")?;
    Ok(Identifier::parse(
        convert::kind(id.kind)?,
        &id.value,
        &id.namespace,
        id.verified,
        partner,
    )?
    .verified_by(method))
}

fn member_and_identifier(
    name: &str,
    id: Option<&pb::Identifier>,
    partner: &str,
) -> Result<(ScopedMemberId, Identifier), IdentityError> {
    let mut v = Violations::default();
    let scoped = v.check("member", convert::member_name(name));
    let id = match id {
        None => {
            v.add("identifier", "required");
            None
        }
        Some(id) => v.check("identifier", identifier(id, partner)),
    };
    v.finish()?;
    match (scoped, id) {
        (Some(scoped), Some(id)) => Ok((scoped, id)),
        _ => Err(KitError::invalid("identifier", "required").into()),
    }
}

fn enrolment(
    r: &pb::EnrollMemberRequest,
    partner: &str,
) -> Result<(Vec<Identifier>, BTreeMap<String, String>), IdentityError> {
    let mut v = Violations::default();
    if r.identifiers.is_empty() {
        v.add("identifiers", "at least one identifier");
    }
    if r.identifiers.len() > MAX_IDENTIFIERS {
        v.add("identifiers", format!("at most {MAX_IDENTIFIERS}"));
    }
    let ids: Vec<Identifier> = r
        .identifiers
        .iter()
        .enumerate()
        .filter_map(|(i, id)| v.check(format!("identifiers[{i}]"), identifier(id, partner)))
        .collect();
    if r.profile.len() > MAX_PROFILE_FIELDS {
        v.add("profile", format!("at most {MAX_PROFILE_FIELDS} fields"));
    }
    let mut fields = BTreeMap::new();
    for (key, value) in &r.profile {
        let key_ok = (1..=64).contains(&key.len())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.'));
        if !key_ok {
            v.add(
                format!("profile[{key:.64}]"),
                "keys are 1-64 of a-z, 0-9, '_' and '.'",
            );
        } else if let Some(value) = v.check(
            format!("profile[{key}]"),
            crate::domain::text(value, false, 1024),
        ) {
            fields.insert(key.clone(), value);
        }
    }
    v.finish()?;
    Ok((ids, fields))
}
