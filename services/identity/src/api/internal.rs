//! Identity's internal contract (`lianyu.identity.internal.v1.DirectoryService`): id
//! translation, consent decisions by mesh id and the mesh feed, for the mesh's own services.
//! The auth layer lets only service principals in (ACCESS_INTERNAL); partners and the operator
//! are refused before any handler runs.

use std::collections::BTreeMap;

use lianyu_kit::{
    Call, KitError,
    call::unary,
    ids::{MeshMemberId, ScopedMemberId},
};
use lianyu_proto::{
    common::v1::FeedCursor,
    identity::internal::v1::{self as pb, directory_service_server::DirectoryService},
};
use tonic::{Request, Response, Status};

use super::{Api, caller, convert, status};
use crate::{
    domain::{
        IdentityError, Violations, audit::Access, consent::Purpose, partner::parse_partner_name,
    },
    store::{Store, mesh::MESH_TOPIC, now},
};

/// Ids or questions per call.
const MAX_BATCH: usize = 1000;

type MeshStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchMeshEventsResponse, Status>> + Send>,
>;

/// `meshMembers/{id}` → the id.
fn mesh_name(name: &str) -> Result<MeshMemberId, String> {
    match lianyu_kit::names::parse(name, "meshMembers/{member}") {
        Ok([id]) if id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            Ok(MeshMemberId::new(id))
        }
        _ => Err("expected meshMembers/{member}".into()),
    }
}

fn batch_size(v: &mut Violations, field: &str, n: usize) {
    if n == 0 || n > MAX_BATCH {
        v.add(field, format!("between 1 and {MAX_BATCH}"));
    }
}

#[tonic::async_trait]
impl DirectoryService for Api {
    async fn resolve_mesh_ids(
        &self,
        request: Request<pb::ResolveMeshIdsRequest>,
    ) -> Result<Response<pb::ResolveMeshIdsResponse>, Status> {
        unary(request, async |_call, r| {
            let mut v = Violations::default();
            let partner = v.check("partner", parse_partner_name(&r.partner));
            batch_size(&mut v, "members", r.members.len());
            let scoped: Vec<Option<ScopedMemberId>> = r
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| v.check(format!("members[{i}]"), convert::member_name(m)))
                .collect();
            v.finish()?;
            let partner = partner.unwrap_or_default();
            let ids: Vec<ScopedMemberId> = scoped.iter().flatten().cloned().collect();
            let found = Store::mesh_ids_of(&self.store.read, &partner, &ids).await?;
            Ok::<_, IdentityError>(pb::ResolveMeshIdsResponse {
                members: r
                    .members
                    .iter()
                    .zip(&scoped)
                    .map(|(name, id)| pb::MemberIds {
                        member: name.clone(),
                        mesh_member: id
                            .as_ref()
                            .and_then(|id| found.get(id))
                            .map(|m| format!("meshMembers/{m}"))
                            .unwrap_or_default(),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn check_stores(
        &self,
        request: Request<pb::CheckStoresRequest>,
    ) -> Result<Response<pb::CheckStoresResponse>, Status> {
        unary(request, async |_call, r| {
            let mut v = Violations::default();
            batch_size(&mut v, "stores", r.stores.len());
            let named: Vec<Option<[&str; 2]>> = r
                .stores
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    v.check(
                        format!("stores[{i}]"),
                        lianyu_kit::names::parse(s, "partners/{partner}/stores/{store}"),
                    )
                })
                .collect();
            v.finish()?;
            let mut stores = Vec::with_capacity(named.len());
            for (name, parts) in r.stores.iter().zip(named) {
                let [partner, id] = parts.unwrap_or_default();
                let state = match Store::store(&self.store.read, partner, id).await? {
                    None => pb::StoreState::Unknown,
                    Some(s) if s.active => pb::StoreState::Open,
                    Some(_) => pb::StoreState::Closed,
                };
                stores.push(pb::StoreCheck {
                    store: name.clone(),
                    state: state as i32,
                });
            }
            Ok::<_, IdentityError>(pb::CheckStoresResponse { stores })
        })
        .await
    }

    async fn list_closed_stores(
        &self,
        request: Request<pb::ListClosedStoresRequest>,
    ) -> Result<Response<pb::ListClosedStoresResponse>, Status> {
        unary(request, async |_call, _r| {
            Ok::<_, IdentityError>(pb::ListClosedStoresResponse {
                stores: Store::closed_stores(&self.store.read).await?,
            })
        })
        .await
    }

    async fn scope_member_ids(
        &self,
        request: Request<pb::ScopeMemberIdsRequest>,
    ) -> Result<Response<pb::ScopeMemberIdsResponse>, Status> {
        unary(request, async |_call, r| {
            let mut v = Violations::default();
            let partner = v.check("partner", parse_partner_name(&r.partner));
            batch_size(&mut v, "mesh_members", r.mesh_members.len());
            let mesh: Vec<Option<MeshMemberId>> = r
                .mesh_members
                .iter()
                .enumerate()
                .map(|(i, m)| v.check(format!("mesh_members[{i}]"), mesh_name(m)))
                .collect();
            v.finish()?;
            let partner = partner.unwrap_or_default();
            let ids: Vec<MeshMemberId> = mesh.iter().flatten().cloned().collect();
            // Only members the partner holds: a scoped id is its own relationship with them.
            let held =
                Store::scoped_ids_of(&self.store.read, &self.store.secrets, &partner, &ids).await?;
            Ok::<_, IdentityError>(pb::ScopeMemberIdsResponse {
                members: r
                    .mesh_members
                    .iter()
                    .zip(&mesh)
                    .map(|(name, id)| pb::MemberIds {
                        member: id
                            .as_ref()
                            .and_then(|id| held.get(id))
                            .map(|s| format!("members/{s}"))
                            .unwrap_or_default(),
                        mesh_member: name.clone(),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn check_consents(
        &self,
        request: Request<pb::CheckConsentsRequest>,
    ) -> Result<Response<pb::CheckConsentsResponse>, Status> {
        unary(request, async |call, r| {
            self.check_consents_call(&call, &r).await
        })
        .await
    }

    async fn watch_mesh_events(
        &self,
        request: Request<pb::WatchMeshEventsRequest>,
    ) -> Result<Response<MeshStream>, Status> {
        caller(&request)?;
        let after = request.get_ref().after.as_ref().map_or(0, |c| c.sequence);
        if after < 0 {
            return Err(status(KitError::invalid(
                "after.sequence",
                "must not be negative",
            )));
        }
        let stream = self
            .store
            .feed
            .watch(after, Some(MESH_TOPIC.to_owned()), move |event| {
                if event.partner_id.as_deref() != Some(MESH_TOPIC) {
                    return None;
                }
                let body: pb::WatchMeshEventsResponse = event.decode()?;
                Some(pb::WatchMeshEventsResponse {
                    cursor: Some(FeedCursor {
                        sequence: event.seq,
                    }),
                    event_time: convert::timestamp(event.created_at_millis),
                    ..body
                })
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One validated question.
struct Question {
    member: MeshMemberId,
    grantor: String,
    grantee: String,
    purpose: Purpose,
}

impl Api {
    /// The public CheckConsent's rule by mesh id, grantor named; every cross-partner decision
    /// between parties the member has a consent relationship with is recorded, allowed or not,
    /// with the calling service and the acting partner, before the answer leaves.
    async fn check_consents_call(
        &self,
        call: &Call,
        r: &pb::CheckConsentsRequest,
    ) -> Result<pb::CheckConsentsResponse, IdentityError> {
        let service = call
            .who
            .service
            .clone()
            .ok_or(KitError::Denied("SERVICE_ONLY", "mesh services only"))?;
        let mut v = Violations::default();
        let acting = v.check("acting_partner", parse_partner_name(&r.acting_partner));
        batch_size(&mut v, "checks", r.checks.len());
        let questions: Vec<Option<Question>> = r
            .checks
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let member = v.check(
                    format!("checks[{i}].mesh_member"),
                    mesh_name(&q.mesh_member),
                );
                let grantor = v.check(
                    format!("checks[{i}].grantor"),
                    parse_partner_name(&q.grantor),
                );
                let grantee = v.check(
                    format!("checks[{i}].grantee"),
                    parse_partner_name(&q.grantee),
                );
                let purpose = v.check(format!("checks[{i}].purpose"), convert::purpose(q.purpose));
                Some(Question {
                    member: member?,
                    grantor: grantor?,
                    grantee: grantee?,
                    purpose: purpose?,
                })
            })
            .collect();
        v.finish()?;
        let acting = acting.unwrap_or_default();
        let questions: Vec<Question> = questions.into_iter().flatten().collect();
        // One lookup per (grantor, grantee, purpose).
        let mut groups: BTreeMap<(&str, &str, Purpose), Vec<MeshMemberId>> = BTreeMap::new();
        for q in &questions {
            groups
                .entry((&q.grantor, &q.grantee, q.purpose))
                .or_default()
                .push(q.member.clone());
        }
        let db = &self.store.read;
        let mut decided: BTreeMap<(&str, &str, Purpose, &str), pb::ConsentDecision> =
            BTreeMap::new();
        // Cross-partner questions worth a record, with the receipt that allowed them (empty: refused).
        let mut recorded: BTreeMap<(&str, &str, Purpose, &str), String> = BTreeMap::new();
        let at = now();
        for ((grantor, grantee, purpose), members) in &groups {
            if grantor == grantee {
                // The partner's own member: allowed while it holds them.
                let held = Store::scoped_ids_of(db, &self.store.secrets, grantor, members).await?;
                for m in members {
                    decided.insert(
                        (grantor, grantee, *purpose, m.as_str()),
                        pb::ConsentDecision {
                            allowed: held.contains_key(m),
                            ..Default::default()
                        },
                    );
                }
                continue;
            }
            let live = self
                .store
                .live_consents(members, grantee, *purpose, Some(grantor))
                .await?;
            let ids: Vec<String> = members.iter().map(ToString::to_string).collect();
            let related = Store::related_members(db, &ids, grantor, grantee).await?;
            for m in members {
                let consent = live.get(m.as_str());
                let key = (*grantor, *grantee, *purpose, m.as_str());
                if related.contains(m.as_str()) {
                    recorded.insert(
                        key,
                        consent.map(|c| c.receipt_id.clone()).unwrap_or_default(),
                    );
                }
                decided.insert(
                    key,
                    consent.map_or_else(pb::ConsentDecision::default, |c| pb::ConsentDecision {
                        allowed: true,
                        consent_receipt: format!("consentReceipts/{}", c.receipt_id),
                        valid_until: convert::timestamp(c.valid_until),
                    }),
                );
            }
        }
        // One record per question asked, in the order asked.
        let reads: Vec<Access> = questions
            .iter()
            .filter_map(|q| {
                let key = (
                    q.grantor.as_str(),
                    q.grantee.as_str(),
                    q.purpose,
                    q.member.as_str(),
                );
                let receipt = recorded.get(&key)?;
                Some(Access {
                    seq: 0,
                    accessor: q.grantee.clone(),
                    source: q.grantor.clone(),
                    member_id: q.member.to_string(),
                    purpose: q.purpose as i32,
                    receipt_id: receipt.clone(),
                    allowed: !receipt.is_empty(),
                    at_millis: at,
                    via_service: service.clone(),
                    acting_partner: acting.clone(),
                })
            })
            .collect();
        self.store.record_accesses(reads).await?;
        Ok(pb::CheckConsentsResponse {
            decisions: questions
                .iter()
                .map(|q| {
                    decided
                        .get(&(
                            q.grantor.as_str(),
                            q.grantee.as_str(),
                            q.purpose,
                            q.member.as_str(),
                        ))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect(),
        })
    }
}
