//! What comarketing learns from the mesh's feeds. Identity's mesh feed (through the kit's
//! directory follower, in the transaction that stores its cursor): enrolments, consents
//! granted and withdrawn (the consent index counts rely on between synchronous checks),
//! erasures and merges.

use lianyu_kit::KitError;
use lianyu_proto::identity::internal::v1::{MeshEventKind, WatchMeshEventsResponse};

use super::Api;
use crate::store;

/// Starts the followers of entitlements' and live's feeds (none yet).
pub(super) fn start(_ctx: &lianyu_kit::server::ServerContext, _api: &Api) {}

/// Acts on one mesh event inside the consumer's transaction.
pub(super) async fn on_mesh_event(
    txn: &sea_orm::DatabaseTransaction,
    event: &WatchMeshEventsResponse,
) -> Result<(), KitError> {
    let Some(member) = event.mesh_member.strip_prefix("meshMembers/") else {
        return Ok(());
    };
    let partner = event.partner.strip_prefix("partners/").unwrap_or_default();
    let at = event
        .event_time
        .as_ref()
        .map_or_else(lianyu_kit::time::now_millis, lianyu_kit::time::millis);
    match event.kind() {
        MeshEventKind::MemberEnrolled => {
            let n = store::member_number(txn, member, at).await?;
            store::record_facts(
                txn,
                &[store::Fact {
                    member: n,
                    kind: "enrolled",
                    subject: "",
                    partner,
                    at,
                }],
            )
            .await?;
        }
        MeshEventKind::ConsentGranted | MeshEventKind::ConsentWithdrawn => {
            let grantee = event.grantee.strip_prefix("partners/").unwrap_or_default();
            let granted = event.kind() == MeshEventKind::ConsentGranted;
            let n = store::member_number(txn, member, at).await?;
            for purpose in &event.purposes {
                store::set_consent(txn, n, partner, grantee, *purpose, granted).await?;
            }
        }
        MeshEventKind::MemberErased => {
            let n = store::member_number(txn, member, at).await?;
            store::erase_at(txn, n, partner).await?;
        }
        MeshEventKind::MembersMerged => {
            let Some(into) = event.into_mesh_member.strip_prefix("meshMembers/") else {
                return Ok(());
            };
            let from = store::member_number(txn, member, at).await?;
            let into = store::member_number(txn, into, at).await?;
            store::merge_members(txn, from, into).await?;
        }
        _ => {}
    }
    Ok(())
}
