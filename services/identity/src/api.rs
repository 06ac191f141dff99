//! gRPC handlers: decode, call the domain and the store, encode. Errors map to statuses in one
//! place (`status`); every mutation runs under `request_id` idempotency.

mod audit;
mod auth;
mod consents;
mod convert;
mod erasure;
mod internal;
mod members;
mod partners;
mod stores;

use std::sync::Arc;

use lianyu_kit::{Call, KitError, Mount, Principal, mutation::Mutations};
use lianyu_proto::identity::v1 as pb;
use tonic::Status;

use crate::{domain::IdentityError, store::Store};

/// The service's handlers.
#[derive(Clone)]
pub(crate) struct Api {
    store: Store,
    tokens: Tokens,
    mutations: Mutations<IdentityError>,
    /// Enrolment, the hot write path: concurrent enrolments share transactions and commits.
    enrolments: Mutations<IdentityError>,
}

pub(crate) use auth::{REVOKED_FOR_MILLIS, Tokens};

pub(crate) fn register(mount: &mut Mount, store: Store, tokens: Tokens) {
    // Replies echo identifiers, so they are sealed at rest. After a mutation that appended a
    // consent event, this replica's consent index drops what it changed before the caller
    // hears back, so a withdrawal answered here is never checked as granted here.
    let index = store.clone();
    let mutations = Mutations::new(store.db.clone())
        .reading(store.read.clone())
        .sealed(store.secrets.clone())
        .publishing(
            store.feed.clone(),
            Some(Arc::new(move || {
                let store = index.clone();
                Box::pin(async move { store.consent_index.catch_up(&store.feed).await })
            })),
        );
    // An enrolment changes no consent (it appends only the mesh's MEMBER_ENROLLED), so it
    // wakes the feed's watchers without bringing the consent index up to date first.
    let enrolments = mutations
        .clone()
        .publishing(store.feed.clone(), None)
        .grouped();
    let api = Api {
        store,
        tokens,
        enrolments,
        mutations,
    };
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
        pb::audit_service_server::AuditServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        lianyu_proto::identity::internal::v1::directory_service_server::DirectoryServiceServer::new(
            api
        )
    );
}

/// The one mapping from the service's errors to gRPC statuses.
pub(crate) fn status(error: impl Into<IdentityError>) -> Status {
    lianyu_kit::call::status(&error.into())
}

lianyu_kit::service_error!(IdentityError, "lianyu.identity", {
    MemberNotFound => (NotFound, "MEMBER_NOT_FOUND"),
    MemberErased => (NotFound, "MEMBER_ERASED"),
    TermsVersionMismatch => (Aborted, "TERMS_VERSION_MISMATCH"),
});

/// A store principal acts only within its store — no credentials, no partner settings, no
/// other stores, no alliances, and no erasure or merge of the partner's members.
use lianyu_kit::call::partner_wide;

/// Refuses the operator where a member partner acts: it runs the mesh and never reads members,
/// so it joins no alliance (and so can never be granted a consent).
fn not_the_operator(who: &Principal) -> Result<(), KitError> {
    if who.operator {
        return Err(KitError::Denied(
            "OPERATOR_JOINS_NO_ALLIANCE",
            "the mesh operator joins no alliance; it never reads members",
        ));
    }
    Ok(())
}

/// The caller of a request, as the kit's auth layer verified it, and the RPC it calls.
fn caller<T>(request: &tonic::Request<T>) -> Result<Call, Status> {
    Call::of(request).map_err(status)
}
