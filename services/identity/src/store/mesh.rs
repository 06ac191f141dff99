//! The mesh feed: events for the mesh's own services (internal contract, WatchMeshEvents),
//! keyed by mesh id and never carrying a scoped id or personal data. They share identity's
//! outbox with the partners' consent feeds under a topic no partner id can equal, so each is
//! appended in the same transaction as the change it reports.

use lianyu_kit::feed::{Feed, NewEvent};
use lianyu_kit::writes::Writes;
use lianyu_proto::identity::internal::v1::{MeshEventKind, WatchMeshEventsResponse};
use sea_orm::ConnectionTrait;

use crate::domain::{IdentityError, consent::Purpose};

/// The outbox `partner_id` of mesh events: a `:` no partner id holds, so no partner's consent
/// feed ever serves one.
pub(crate) const MESH_TOPIC: &str = ":mesh";

/// One mesh event to append.
#[derive(Debug, Default)]
pub(crate) struct MeshEvent<'a> {
    pub(crate) member: &'a str,
    pub(crate) into_member: &'a str,
    pub(crate) partner: &'a str,
    pub(crate) grantee: &'a str,
    pub(crate) purposes: &'a [Purpose],
    pub(crate) credential: &'a str,
    /// "partners/{partner}/stores/{store}", for store events.
    pub(crate) store: &'a str,
}

/// Appends `event` of `kind` to the mesh feed in `txn`.
pub(crate) async fn append_mesh(
    feed: &Feed,
    txn: &impl ConnectionTrait,
    kind: MeshEventKind,
    event: MeshEvent<'_>,
) -> Result<(), IdentityError> {
    feed.append(txn, mesh_event(kind, &event)).await?;
    Ok(())
}

/// [`append_mesh`] staged in `writes`, sent with the mutation's other staged writes.
pub(crate) fn stage_mesh(
    feed: &Feed,
    writes: &mut Writes,
    kind: MeshEventKind,
    event: MeshEvent<'_>,
) {
    feed.append_staged(writes, mesh_event(kind, &event));
}

fn mesh_event(kind: MeshEventKind, event: &MeshEvent<'_>) -> NewEvent {
    let name = |prefix: &str, id: &str| {
        if id.is_empty() {
            String::new()
        } else {
            format!("{prefix}/{id}")
        }
    };
    let body = WatchMeshEventsResponse {
        cursor: None,
        kind: kind as i32,
        mesh_member: name("meshMembers", event.member),
        into_mesh_member: name("meshMembers", event.into_member),
        partner: name("partners", event.partner),
        grantee: name("partners", event.grantee),
        purposes: event.purposes.iter().map(|p| *p as i32).collect(),
        credential: event.credential.to_owned(),
        event_time: None,
        store: event.store.to_owned(),
    };
    let label = format!("mesh.{}", kind.as_str_name().to_lowercase());
    NewEvent::message(&label, Some(MESH_TOPIC.to_owned()), &body)
}
