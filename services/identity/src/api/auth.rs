//! AuthService: partner credentials and the client-credentials exchange. `IssueToken` and
//! `GetSigningKeys` are the two calls that need no token (the kit's auth layer lets them by).

use lianyu_kit::KitError;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use lianyu_kit::{
    Principal,
    auth::{Signer, TokenRequest},
    config::{AuthConfig, TrustedKey},
    page::Page,
};
use lianyu_proto::identity::v1::{self as pb, auth_service_server::AuthService};
use tonic::{Request, Response, Status};

use super::{Api, caller, convert, status};
use crate::{
    domain::{
        IdentityError, Violations,
        credential::{
            Credential, DEFAULT_OVERLAP_SECONDS, Holder, MAX_ACTIVE_PER_PARTNER,
            MAX_OVERLAP_SECONDS, Owner, SecretState, StoreAsked, credential_scopes, grant,
            new_client_id, new_secret,
        },
        partner::{PartnerKind, PartnerStatus, parse_store_name},
    },
    store::{Store, now},
};

/// What `IssueToken` signs with and `GetSigningKeys` publishes.
#[derive(Clone)]
pub(crate) struct Tokens {
    /// None in production without `LIANYU_SIGNING_KEY`: such an instance verifies but never issues.
    pub(crate) signer: Option<Arc<Signer>>,
    pub(crate) auth: AuthConfig,
    /// The signer's public key and the keys still trusted from before a rotation.
    pub(crate) published: Vec<TrustedKey>,
    /// Successful exchanges per credential: a backend needs one token per quarter hour, so a
    /// client asking many times a second is looping. Only a caller holding the secret counts
    /// here, so a stranger cannot spend a partner's allowance.
    pub(crate) per_client: Arc<governor::DefaultKeyedRateLimiter<String>>,
    /// Failed secrets per (client id, source address) in the last minute: guessing is stopped
    /// where it comes from, and a stranger's failures never lock the partner out of its own
    /// address. Bounded and self-expiring (moka), keyed only by client ids that exist.
    pub(crate) failures: moka::sync::Cache<(String, Option<std::net::IpAddr>), Arc<AtomicU32>>,
    /// This process's verifier: a revocation here refuses the credential's tokens at once.
    pub(crate) verifier: Arc<lianyu_kit::auth::TokenVerifier>,
}

impl Tokens {
    pub(crate) fn new(
        signer: Option<Arc<Signer>>,
        auth: AuthConfig,
        published: Vec<TrustedKey>,
        verifier: Arc<lianyu_kit::auth::TokenVerifier>,
    ) -> Self {
        let quota = governor::Quota::per_second(std::num::NonZeroU32::MIN.saturating_add(4))
            .allow_burst(std::num::NonZeroU32::MIN.saturating_add(19));
        Self {
            signer,
            auth,
            published,
            per_client: Arc::new(governor::RateLimiter::keyed(quota)),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
            verifier,
        }
    }
}

/// The answer to every credential that does not open: unknown, wrong secret, revoked. One
/// answer, so a caller learns nothing about which.
const INVALID_CLIENT: KitError = KitError::Unauthenticated(
    "INVALID_CLIENT",
    "unknown client id, wrong secret, or a revoked credential",
);

#[tonic::async_trait]
impl AuthService for Api {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let source = request.remote_addr().map(|a| a.ip());
        let r = request.into_inner();
        self.issue(&r, source)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn create_credential(
        &self,
        request: Request<pb::CreateCredentialRequest>,
    ) -> Result<Response<pb::CreateCredentialResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        super::partner_wide(who).map_err(status)?;
        let r = request.into_inner();
        let owner = owned(who, &r.parent).map_err(status)?;
        let held = (!who.operator).then_some(&who.scopes);
        let scopes = credential_scopes(&owner, held, &r.scopes).map_err(status)?;
        let partner = owner.key();
        let out = self
            .mutations.run(&call, &r.request_id, &r, async |txn| {
                if let Owner::Partner(id) = &owner {
                    Store::partner(txn, id)
                        .await?
                        .ok_or(KitError::NotFound("PARTNER_NOT_FOUND"))?;
                }
                Store::lock_credentials_of(txn, &partner).await?;
                if Store::active_credentials(txn, &partner).await? >= MAX_ACTIVE_PER_PARTNER {
                    return Err(KitError::Precondition(
                        "TOO_MANY_CREDENTIALS",
                        format!(
                            "a partner holds at most {MAX_ACTIVE_PER_PARTNER} credentials; revoke one first"
                        ),
                    )
                    .into());
                }
                let secret = new_secret();
                let row = Store::insert_credential(
                    txn,
                    Credential {
                        id: uuid::Uuid::now_v7().simple().to_string(),
                        partner_id: partner.clone(),
                        client_id: new_client_id(),
                        secret_hash: self.store.secrets.credential_hash(&secret),
                        previous_secret_hash: None,
                        previous_secret_until: None,
                        scopes: scopes.iter().cloned().collect(),
                        revoked_at: None,
                        created_at: now(),
                    },
                )
                .await?;
                tracing::info!(partner = %partner, credential = %row.id, "credential created");
                Ok(pb::CreateCredentialResponse {
                    credential: Some(convert::credential(&row, now())),
                    client_secret: secret,
                })
            })
            .await.map_err(status)?;
        Ok(Response::new(out))
    }

    async fn rotate_credential(
        &self,
        request: Request<pb::RotateCredentialRequest>,
    ) -> Result<Response<pb::RotateCredentialResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        super::partner_wide(who).map_err(status)?;
        let r = request.into_inner();
        let (partner, id) = owned_credential(who, &r.name).map_err(status)?;
        let partner = partner.key();
        let overlap = match r.overlap_seconds {
            0 => DEFAULT_OVERLAP_SECONDS,
            s if s < 0 || i64::from(s) > MAX_OVERLAP_SECONDS => {
                return Err(status(KitError::invalid(
                    "overlap_seconds",
                    format!("between 1 and {MAX_OVERLAP_SECONDS}; 0 means one hour"),
                )));
            }
            s => i64::from(s),
        };
        let out = self
            .mutations.run(&call, &r.request_id, &r, async |txn| {
                let mut row = Store::credential_for_update(txn, &partner, &id)
                    .await?
                    .ok_or(KitError::NotFound("CREDENTIAL_NOT_FOUND"))?;
                if row.revoked_at.is_some() {
                    return Err(KitError::Precondition(
                        "CREDENTIAL_REVOKED",
                        "a revoked credential cannot be rotated; create a new one".into(),
                    )
                    .into());
                }
                let secret = new_secret();
                let at = now();
                row.previous_secret_hash = Some(row.secret_hash.clone());
                row.previous_secret_until = Some(at + overlap * 1000);
                row.secret_hash = self.store.secrets.credential_hash(&secret);
                let row = Store::save_credential(txn, row).await?;
                tracing::info!(partner = %partner, credential = %id, overlap_seconds = overlap, "credential rotated");
                Ok(pb::RotateCredentialResponse {
                    credential: Some(convert::credential(&row, at)),
                    client_secret: secret,
                })
            })
            .await.map_err(status)?;
        Ok(Response::new(out))
    }

    async fn revoke_credential(
        &self,
        request: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        super::partner_wide(who).map_err(status)?;
        let r = request.into_inner();
        let (owner, id) = owned_credential(who, &r.name).map_err(status)?;
        let partner = owner.key();
        let out = self
            .mutations
            .run(&call, &r.request_id, &r, async |txn| {
                let mut row = Store::credential_for_update(txn, &partner, &id)
                    .await?
                    .ok_or(KitError::NotFound("CREDENTIAL_NOT_FOUND"))?;
                let at = now();
                if row.revoked_at.is_none() {
                    crate::store::mesh::append_mesh(
                        &self.store.feed,
                        txn,
                        lianyu_proto::identity::internal::v1::MeshEventKind::CredentialRevoked,
                        crate::store::mesh::MeshEvent {
                            partner: match &owner {
                                Owner::Partner(p) => p,
                                Owner::Service(_) => "",
                            },
                            credential: &id,
                            ..Default::default()
                        },
                    )
                    .await?;
                    row.revoked_at = Some(at);
                    row.previous_secret_hash = None;
                    row.previous_secret_until = None;
                    row = Store::save_credential(txn, row).await?;
                    tracing::info!(partner = %partner, credential = %id, "credential revoked");
                }
                Ok(convert::credential(&row, at))
            })
            .await
            .map_err(status)?;
        self.tokens.verifier.revoke(&id);
        Ok(Response::new(out))
    }

    async fn list_credentials(
        &self,
        request: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        super::partner_wide(who).map_err(status)?;
        let r = request.get_ref();
        let partner = owned(who, &r.parent).map_err(status)?.key();
        let page = Page::parse(r.page_size, &r.page_token, &[&partner]).map_err(status)?;
        let rows = self
            .store
            .list_credentials(&partner, &page)
            .await
            .map_err(status)?;
        let (rows, next_page_token) = page.finish(rows, |c| c.id.clone());
        let at = now();
        Ok(Response::new(pb::ListCredentialsResponse {
            credentials: rows.iter().map(|c| convert::credential(c, at)).collect(),
            next_page_token,
        }))
    }

    async fn get_signing_keys(
        &self,
        _request: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
        let revoked_credentials = self
            .store
            .recently_revoked(now() - REVOKED_FOR_MILLIS)
            .await
            .map_err(status)?;
        let suspended_partners = Store::suspended_partners(&self.store.read)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetSigningKeysResponse {
            revoked_credentials,
            suspended_partners,
            keys: self
                .tokens
                .published
                .iter()
                .map(|k| pb::SigningKey {
                    key_id: k.key_id.clone(),
                    algorithm: "EdDSA".into(),
                    public_key: k.public_key.clone(),
                    not_after: None,
                })
                .collect(),
        }))
    }
}

impl Api {
    /// The client-credentials exchange.
    async fn issue(
        &self,
        r: &pb::IssueTokenRequest,
        source: Option<std::net::IpAddr>,
    ) -> Result<pb::IssueTokenResponse, IdentityError> {
        let mut v = Violations::default();
        if r.client_id.is_empty() || r.client_id.len() > 64 {
            v.add("client_id", "required, at most 64 characters");
        }
        if r.client_secret.is_empty() || r.client_secret.len() > 128 {
            v.add("client_secret", "required, at most 128 characters");
        }
        let store = if r.store.is_empty() {
            None
        } else {
            v.check("store", parse_store_name(&r.store))
        };
        v.finish()?;
        let signer = self.tokens.signer.as_ref().ok_or_else(|| {
            KitError::Precondition(
                "TOKEN_ISSUING_DISABLED",
                "this identity instance has no signing key (LIANYU_SIGNING_KEY)".into(),
            )
        })?;
        let Some(row) = self.store.credential_by_client_id(&r.client_id).await? else {
            // Spend the same work as a real check, so timing does not tell ids that exist.
            let _ = self
                .store
                .secrets
                .credential_matches(&r.client_secret, UNKNOWN_CLIENT_HASH);
            return Err(INVALID_CLIENT.into());
        };
        let source_key = (row.client_id.clone(), source);
        let failed = self
            .tokens
            .failures
            .get(&source_key)
            .map_or(0, |n| n.load(Ordering::Relaxed));
        if failed >= MAX_FAILURES {
            return Err(KitError::Exhausted(
                "TOO_MANY_FAILED_SECRETS",
                "too many wrong secrets for this client from this address; wait a minute",
            )
            .into());
        }
        let state = SecretState {
            secret_hash: row.secret_hash.clone(),
            previous_hash: row.previous_secret_hash.clone(),
            previous_until: row.previous_secret_until,
            revoked: row.revoked_at.is_some(),
        };
        if !state.accepts(&self.store.secrets, &r.client_secret, now()) {
            self.tokens
                .failures
                .get_with(source_key, Arc::default)
                .fetch_add(1, Ordering::Relaxed);
            return Err(INVALID_CLIENT.into());
        }
        if self.tokens.per_client.check_key(&row.client_id).is_err() {
            return Err(KitError::Exhausted(
                "TOO_MANY_TOKEN_REQUESTS",
                "this client asks for tokens too often; reuse a token until it nears expiry",
            )
            .into());
        }
        // A service credential has no partner row: its owner is a mesh service.
        let partner = match Owner::from_key(&row.partner_id) {
            Owner::Partner(id) => Some(
                Store::partner(&self.store.read, &id)
                    .await?
                    .ok_or(INVALID_CLIENT)?,
            ),
            Owner::Service(_) => None,
        };
        let store = match &store {
            None => None,
            Some((owner, id)) => Some(StoreAsked {
                name: &r.store,
                active_store_of_holder: owner == &row.partner_id
                    && Store::store(&self.store.read, owner, id)
                        .await?
                        .is_some_and(|s| s.active),
            }),
        };
        let holder = Holder {
            credential_id: &row.id,
            partner_id: &row.partner_id,
            allowed_scopes: &row.scopes,
            partner_is_operator: partner
                .as_ref()
                .is_some_and(|p| p.kind == PartnerKind::Operator),
            partner_is_active: partner
                .as_ref()
                .is_none_or(|p| p.status == PartnerStatus::Active),
        };
        let granted = grant(&holder, &r.scopes, store)?;
        let ttl: Duration = self.tokens.auth.token_ttl;
        let token = signer
            .mint(
                &self.tokens.auth,
                &TokenRequest {
                    partner_id: granted.partner_id,
                    operator: granted.operator,
                    service: granted.service,
                    store: granted.store,
                    scopes: granted.scopes.iter().cloned().collect(),
                    ttl,
                    credential: Some(granted.credential),
                },
            )
            .map_err(|e| KitError::Internal(format!("signing a token: {e}")))?;
        let scopes = granted.scopes;
        let expires = now() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        Ok(pb::IssueTokenResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expire_time: convert::timestamp(expires),
            scopes: scopes.into_iter().collect(),
        })
    }
}

/// Wrong secrets allowed per (client id, source address) within `FAILURE_WINDOW`.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// How long a revoked credential is published: longer than any token lives (`LIANYU_TOKEN_TTL`
/// is at most a day).
pub(crate) const REVOKED_FOR_MILLIS: i64 = 24 * 3600 * 1000;

/// A well-formed hash no secret produces in practice, compared against for unknown client ids.
const UNKNOWN_CLIENT_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// The owner in `parent`: the caller's own partner, any partner for the operator, and a mesh
/// service for the operator only.
fn owned(who: &Principal, parent: &str) -> Result<Owner, IdentityError> {
    let owner = Owner::parse_parent(parent).map_err(|e| KitError::invalid("parent", e))?;
    allowed_owner(who, owner, "PARTNER_NOT_FOUND")
}

/// The (owner, credential) in `name`, when the caller owns it or is the operator.
fn owned_credential(who: &Principal, name: &str) -> Result<(Owner, String), IdentityError> {
    let (owner, id) = Owner::parse_credential(name).map_err(|e| KitError::invalid("name", e))?;
    Ok((allowed_owner(who, owner, "CREDENTIAL_NOT_FOUND")?, id))
}

fn allowed_owner(
    who: &Principal,
    owner: Owner,
    not_found: &'static str,
) -> Result<Owner, IdentityError> {
    match &owner {
        Owner::Service(_) if who.operator => Ok(owner),
        Owner::Service(_) => Err(KitError::Denied(
            "OPERATOR_ONLY",
            "only the operator manages mesh services' credentials",
        )
        .into()),
        Owner::Partner(p) if who.operator || &who.partner_id == p => Ok(owner),
        Owner::Partner(_) => Err(KitError::NotFound(not_found).into()),
    }
}
