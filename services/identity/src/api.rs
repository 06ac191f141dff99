//! gRPC handlers: decode, call the domain and the store, encode. Errors map to statuses in one
//! place (`status`); every mutation runs under `request_id` idempotency.

mod audit;
mod auth;
mod consents;
mod convert;
mod erasure;
mod members;
mod partners;
mod stores;

use lianyu_kit::{
    Mount, Principal,
    error::to_status,
    idempotency::{self, CallKey},
};
use lianyu_proto::identity::v1 as pb;
use sea_orm::DatabaseTransaction;
use tonic::{Request, Status};

use crate::{domain::IdentityError, store::Store};

/// The service's handlers.
#[derive(Clone)]
pub(crate) struct Api {
    store: Store,
    tokens: Tokens,
}

pub(crate) use auth::{REVOKED_FOR_MILLIS, Tokens};

pub(crate) fn register(mount: &mut Mount, store: Store, tokens: Tokens) {
    let api = Api { store, tokens };
    lianyu_kit::mount!(
        mount,
        pb::partner_service_server::PartnerServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::auth_service_server::AuthServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::member_service_server::MemberServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::consent_service_server::ConsentServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::audit_service_server::AuditServiceServer::new(api)
    );
}

/// The one mapping from the service's errors to gRPC statuses.
pub(crate) fn status(error: IdentityError) -> Status {
    to_status("lianyu.identity", &error)
}

/// Refuses a store-narrowed token (a POS, a guide's app) for a partner-wide action: a store
/// principal acts only within its store — no credentials, no partner settings, no other
/// stores, no alliances, and no erasure or merge of the partner's members.
fn partner_wide(who: &Principal) -> Result<(), IdentityError> {
    if who.store.is_some() {
        return Err(IdentityError::Denied(
            "STORE_TOKEN_NOT_ALLOWED",
            "a store token acts only within its store; use a partner-wide token for this",
        ));
    }
    Ok(())
}

/// Refuses the operator where a member partner acts: it runs the mesh and never reads members,
/// so it joins no alliance (and so can never be granted a consent).
fn not_the_operator(who: &Principal) -> Result<(), IdentityError> {
    if who.operator {
        return Err(IdentityError::Denied(
            "OPERATOR_JOINS_NO_ALLIANCE",
            "the mesh operator joins no alliance; it never reads members",
        ));
    }
    Ok(())
}

/// The caller, as verified by the kit's auth layer.
fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    Principal::from_request(request).cloned()
}

impl Api {
    /// Runs a mutation once per (caller, method, request_id) and wakes feed watchers after it.
    async fn mutate<Req, Resp, F>(
        &self,
        who: &Principal,
        method: &str,
        request_id: &str,
        request: &Req,
        effect: F,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
        F: AsyncFnOnce(&DatabaseTransaction) -> Result<Resp, IdentityError> + Clone,
    {
        self.mutate_about(who, method, request_id, request, async |txn| {
            effect(txn).await.map(|r| (r, None))
        })
        .await
    }

    /// [`Self::mutate`] for a mutation about one member: `effect` also returns the member's
    /// id, which tags the stored reply so that erasing the member purges it.
    async fn mutate_about<Req, Resp, F>(
        &self,
        who: &Principal,
        method: &str,
        request_id: &str,
        request: &Req,
        effect: F,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
        F: AsyncFnOnce(&DatabaseTransaction) -> Result<(Resp, Option<String>), IdentityError>
            + Clone,
    {
        let key = CallKey {
            partner_id: &who.partner_id,
            method,
            request_id,
        };
        let appends = lianyu_kit::feed::Feed::appends_in_process();
        let response = idempotency::once_about(
            &self.store.db,
            self.store.secrets.as_ref(),
            key,
            request,
            effect,
        )
        .await
        .map_err(status)?;
        // This replica's consent index drops what the mutation changed before the caller
        // hears back, so a withdrawal answered here is never checked as granted here.
        // (A mutation that appended nothing — most enrolments — has nothing to drop.)
        if lianyu_kit::feed::Feed::appends_in_process() != appends {
            self.store.consent_index.catch_up(&self.store.feed).await;
            self.store.feed.published();
        }
        Ok(response)
    }
}
