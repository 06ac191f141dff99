//! Partner authentication: every `lianyu.*` call carries `authorization: Bearer <token>`,
//! an EdDSA (Ed25519) JWT that each service verifies on its own against trusted public keys.
//! The verified caller becomes a [`Principal`] in the request extensions.

mod keys;
mod layer;
mod scope;
mod signer;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

pub use keys::refresh_keys;
pub use layer::AuthLayer;
pub use scope::{
    ALL_SCOPES, INTERNAL_SCOPES, MESH_SERVICES, Requirement, required_scope, requirement,
    service_scopes,
};
pub use signer::{Signer, SignerError, TokenRequest, load_or_create_local_secret};

use crate::config::{AuthConfig, TrustedKey};

/// The claims of a Lianyu access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The partner id.
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    /// Narrows the caller to one store (a POS, a guide's app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Space-separated scopes, OAuth style.
    #[serde(default)]
    pub scope: String,
    /// `operator` for the mesh operator, `service` for a mesh service (`sub` is then the
    /// service's name); empty for brands and malls.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// The credential the token was issued for; its revocation ends the token at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// The `role` claim of a mesh service's token.
pub const SERVICE_ROLE: &str = "service";

/// What [`Principal::partner_id`] starts with for a mesh service: a `:` no partner id can hold,
/// so a service principal never matches any partner's rows.
pub const SERVICE_PRINCIPAL_PREFIX: &str = "service:";

/// Whether a token's role fits its scopes: a service token carries internal scopes only and no
/// store; a partner's or the operator's never carries an internal scope.
pub(crate) fn role_fits_scopes<'a>(
    service: bool,
    operator: bool,
    store: bool,
    mut scopes: impl Iterator<Item = &'a str>,
) -> Result<(), &'static str> {
    if service {
        if operator || store {
            return Err("a service token is neither the operator's nor a store's");
        }
        if !scopes.all(|s| INTERNAL_SCOPES.contains(&s)) {
            return Err("a service token carries internal scopes only");
        }
    } else if scopes.any(|s| INTERNAL_SCOPES.contains(&s)) {
        return Err("only a mesh service's token carries an internal scope");
    }
    Ok(())
}

/// The authenticated caller of an RPC: a partner (brand or mall, maybe narrowed to a store),
/// the operator, or a mesh service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The partner; for a mesh service, `service:<name>`, which matches no partner.
    pub partner_id: String,
    pub store: Option<String>,
    pub scopes: BTreeSet<String>,
    pub operator: bool,
    /// The credential the token was issued for (`IssueToken`); none for dev tokens.
    pub credential: Option<String>,
    /// The mesh service calling (`entitlements`, …) for a service token.
    pub service: Option<String>,
    /// The id of the key that signed the token (`kid`); none for a principal made in-process.
    pub key_id: Option<String>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// The principal of a request that passed the [`AuthLayer`]. A request without one never
    /// reaches a handler, so its absence is reported as UNAUTHENTICATED rather than a panic.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<&Principal, tonic::Status> {
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| AuthError::Missing.into_status())
    }
}

/// Why a call was refused before reaching its handler.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// UNAUTHENTICATED, reason TOKEN_MISSING.
    #[error("missing bearer token in the authorization header")]
    Missing,
    /// UNAUTHENTICATED, reason TOKEN_INVALID: malformed, bad signature, unknown key, wrong issuer.
    #[error("invalid token")]
    Invalid,
    /// UNAUTHENTICATED, reason TOKEN_EXPIRED.
    #[error("token expired")]
    Expired,
    /// UNAUTHENTICATED, reason TOKEN_REVOKED: its credential was revoked.
    #[error("the token's credential was revoked")]
    Revoked,
    /// PERMISSION_DENIED, reason PARTNER_SUSPENDED: the operator suspended the token's partner.
    #[error("the partner is suspended")]
    Suspended,
    /// PERMISSION_DENIED, reason STORE_CLOSED: the token is narrowed to a store its partner
    /// closed.
    #[error("the token's store is closed")]
    StoreClosed,
    /// UNAUTHENTICATED, reason TOKEN_AUDIENCE_MISMATCH.
    #[error("token was issued for another audience")]
    WrongAudience,
    /// PERMISSION_DENIED, reason SCOPE_MISSING.
    #[error("token lacks the scope {0}")]
    MissingScope(String),
}

impl AuthError {
    pub fn into_status(self) -> tonic::Status {
        let (code, reason) = match &self {
            AuthError::Missing => (tonic::Code::Unauthenticated, "TOKEN_MISSING"),
            AuthError::Invalid => (tonic::Code::Unauthenticated, "TOKEN_INVALID"),
            AuthError::Expired => (tonic::Code::Unauthenticated, "TOKEN_EXPIRED"),
            AuthError::Revoked => (tonic::Code::Unauthenticated, "TOKEN_REVOKED"),
            AuthError::Suspended => (tonic::Code::PermissionDenied, "PARTNER_SUSPENDED"),
            AuthError::StoreClosed => (tonic::Code::PermissionDenied, "STORE_CLOSED"),
            AuthError::WrongAudience => (tonic::Code::Unauthenticated, "TOKEN_AUDIENCE_MISMATCH"),
            AuthError::MissingScope(_) => (tonic::Code::PermissionDenied, "SCOPE_MISSING"),
        };
        let mut meta = HashMap::new();
        if let AuthError::MissingScope(scope) = &self {
            meta.insert("scope".to_owned(), scope.clone());
        }
        crate::error::status_with_info(code, self.to_string(), reason, AUTH_DOMAIN, meta)
    }
}

/// The `ErrorInfo` domain of the auth layer's refusals.
pub const AUTH_DOMAIN: &str = "lianyu.auth";

/// Who holds a verified token, as much as deciding whether it is still accepted needs (kept
/// by every open stream, so small).
#[derive(Clone, Debug)]
pub struct Holder {
    partner: Box<str>,
    store: Option<Box<str>>,
    credential: Option<Box<str>>,
    key: Option<Box<str>>,
}

impl Holder {
    pub fn of(principal: &Principal) -> Self {
        Self {
            partner: principal.partner_id.as_str().into(),
            store: principal.store.as_deref().map(Into::into),
            credential: principal.credential.as_deref().map(Into::into),
            key: principal.key_id.as_deref().map(Into::into),
        }
    }
}

/// Verified tokens kept at most; the cache is emptied when it fills.
const VERIFIED_CACHE: usize = 10_000;

/// Verifies tokens against a set of trusted keys that can be replaced while running (key rotation).
///
/// A verified token is remembered until it expires: a caller sends the same token on every
/// call, and an Ed25519 verification costs more than a whole consent check.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<RwLock<HashMap<String, DecodingKey>>>,
    /// The trusted keys as configured or published (id → public key): a refresh that brings
    /// the same ones changes nothing.
    key_material: Arc<RwLock<std::collections::BTreeMap<String, String>>>,
    validation: Validation,
    verified: Arc<std::sync::Mutex<HashMap<String, (Principal, i64)>>>,
    /// Signalled when a token names a key id not trusted (yet): the key refresher re-reads
    /// identity's keys at once instead of waiting for its interval.
    unknown_key: Arc<tokio::sync::Notify>,
    /// Credentials revoked while tokens they issued may still be unexpired.
    revoked: Arc<RwLock<std::collections::HashSet<String>>>,
    /// Partners the operator suspended: every token of theirs is refused, however fresh.
    suspended: Arc<RwLock<std::collections::HashSet<String>>>,
    /// Stores ("partners/{partner}/stores/{store}") their partner closed: every token narrowed
    /// to one is refused, however fresh.
    closed_stores: Arc<RwLock<std::collections::HashSet<String>>>,
    /// Counts single revocations, suspensions and store closings, so a whole list read before one of them
    /// (the key refresher's) never undoes it ([`TokenVerifier::replace_lists_as_of`]).
    changes: Arc<std::sync::atomic::AtomicU64>,
    /// Moves whenever a token accepted before may be refused now (or the other way): an open
    /// stream re-checks its token then ([`TokenVerifier::watch_refusals`]).
    refusals: Arc<tokio::sync::watch::Sender<u64>>,
}

impl TokenVerifier {
    pub fn new(auth: &AuthConfig) -> Result<Self, String> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[&auth.audience]);
        validation.set_issuer(&[&auth.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 30;
        let verifier = Self {
            keys: Arc::default(),
            key_material: Arc::default(),
            validation,
            verified: Arc::default(),
            unknown_key: Arc::default(),
            revoked: Arc::default(),
            suspended: Arc::default(),
            closed_stores: Arc::default(),
            changes: Arc::default(),
            refusals: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        verifier.replace_keys(&auth.trusted_keys)?;
        Ok(verifier)
    }

    /// Replaces the trusted keys, for rotation.
    pub fn replace_keys(&self, keys: &[TrustedKey]) -> Result<(), String> {
        let material: std::collections::BTreeMap<String, String> = keys
            .iter()
            .map(|k| (k.key_id.clone(), k.public_key.clone()))
            .collect();
        if *self.key_material.read().unwrap_or_else(|p| p.into_inner()) == material {
            return Ok(());
        }
        let mut map = HashMap::new();
        for key in keys {
            decode_public_key(&key.public_key)?;
            let decoding =
                DecodingKey::from_ed_components(&key.public_key).map_err(|e| e.to_string())?;
            map.insert(key.key_id.clone(), decoding);
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = map;
        let before = std::mem::replace(
            &mut *self.key_material.write().unwrap_or_else(|p| p.into_inner()),
            material.clone(),
        );
        // Tokens signed by a key no longer trusted must not be accepted from the cache.
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // A key rotated out (or replaced under its id) ends the open streams its tokens
        // hold; a key only added wakes none of them.
        if before.iter().any(|(id, key)| material.get(id) != Some(key)) {
            self.refusals_changed();
        }
        Ok(())
    }

    /// A receiver that changes whenever revocations, suspensions, closed stores or the trusted
    /// keys change (a key removed or replaced): a long-lived call checks its token's holder
    /// again then ([`TokenVerifier::still_accepts`]).
    pub fn watch_refusals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.refusals.subscribe()
    }

    fn refusals_changed(&self) {
        self.refusals.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Completes when a token with an unknown key id was seen since the last call.
    pub async fn unknown_key_seen(&self) {
        self.unknown_key.notified().await;
    }

    /// The key ids trusted now.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Refuses from now on every token issued for `credential`.
    pub fn revoke(&self, credential: &str) {
        self.mark(&self.revoked, credential, true);
    }

    /// A mark of the single revocations and suspensions applied so far: read it before
    /// fetching identity's whole lists, and hand it to [`TokenVerifier::replace_lists_as_of`].
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Replaces the revoked credentials and the suspended partners with lists read when
    /// [`TokenVerifier::changes`] was `seen` — unless a single revocation, suspension or
    /// reinstatement came since (`false`, nothing replaced): the lists may predate it, and a
    /// suspension applied the moment it was made (or learnt from the feed) must never be
    /// undone by lists fetched just before it. The next read brings both.
    pub fn replace_lists_as_of(
        &self,
        seen: u64,
        revoked: impl IntoIterator<Item = String>,
        suspended: impl IntoIterator<Item = String>,
    ) -> bool {
        // Both locks, always in this order (no other path holds both), so no single change
        // lands between the check and the replacement.
        let mut revoked_now = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        let mut suspended_now = self.suspended.write().unwrap_or_else(|p| p.into_inner());
        if self.changes() != seen {
            return false;
        }
        *revoked_now = revoked.into_iter().collect();
        *suspended_now = suspended.into_iter().collect();
        drop((revoked_now, suspended_now));
        self.refusals_changed();
        true
    }

    /// Replaces the revoked credentials with `credentials` (as identity publishes them).
    pub fn set_revoked(&self, credentials: impl IntoIterator<Item = String>) {
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) =
            credentials.into_iter().collect();
        self.refusals_changed();
    }

    /// Refuses from now on every token of `partner` (`true`), or accepts them again (`false`).
    pub fn set_partner_suspended(&self, partner: &str, suspended: bool) {
        self.mark(&self.suspended, partner, suspended);
    }

    /// One single change: `key` put in `set` (`true`) or taken out, counted for
    /// [`TokenVerifier::changes`] while the set is held, then told to open streams.
    fn mark(&self, set: &RwLock<std::collections::HashSet<String>>, key: &str, present: bool) {
        let mut set = set.write().unwrap_or_else(|p| p.into_inner());
        if present {
            set.insert(key.to_owned());
        } else {
            set.remove(key);
        }
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        drop(set);
        self.refusals_changed();
    }

    /// Replaces the suspended partners with `partners` (as identity publishes them).
    pub fn set_suspended(&self, partners: impl IntoIterator<Item = String>) {
        *self.suspended.write().unwrap_or_else(|p| p.into_inner()) = partners.into_iter().collect();
        self.refusals_changed();
    }

    /// Refuses from now on every token narrowed to `store` (`true`), or accepts them again
    /// (`false`).
    pub fn set_store_closed(&self, store: &str, closed: bool) {
        self.mark(&self.closed_stores, store, closed);
    }

    /// Replaces the closed stores with `stores`, read when [`TokenVerifier::changes`] was
    /// `seen` — unless a single change came since (`false`, nothing replaced), for the same
    /// reason as [`TokenVerifier::replace_lists_as_of`].
    pub fn replace_closed_stores_as_of(
        &self,
        seen: u64,
        stores: impl IntoIterator<Item = String>,
    ) -> bool {
        let mut closed = self
            .closed_stores
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if self.changes() != seen {
            return false;
        }
        *closed = stores.into_iter().collect();
        drop(closed);
        self.refusals_changed();
        true
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_until(token).map(|(principal, _)| principal)
    }

    /// [`TokenVerifier::verify`], with when the token expires (seconds since the epoch).
    pub fn verify_until(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        let (principal, exp) = self.verify_unrevoked(token)?;
        self.accepts(
            &principal.partner_id,
            principal.store.as_deref(),
            principal.credential.as_deref(),
            principal.key_id.as_deref(),
        )?;
        Ok((principal, exp))
    }

    /// Whether a token of `holder`, verified before, is still accepted: its signing key still
    /// trusted, its partner not suspended, its store not closed, its credential not revoked.
    pub fn still_accepts(&self, holder: &Holder) -> Result<(), AuthError> {
        self.accepts(
            &holder.partner,
            holder.store.as_deref(),
            holder.credential.as_deref(),
            holder.key.as_deref(),
        )
    }

    /// [`TokenVerifier::still_accepts`] on borrowed parts: every call checks its principal
    /// without making a [`Holder`] (only an open stream keeps one).
    fn accepts(
        &self,
        partner: &str,
        store: Option<&str>,
        credential: Option<&str>,
        key: Option<&str>,
    ) -> Result<(), AuthError> {
        if let Some(key) = key
            && !self
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(key)
        {
            return Err(AuthError::Invalid);
        }
        if self
            .suspended
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(partner)
        {
            return Err(AuthError::Suspended);
        }
        if let Some(store) = store
            && self
                .closed_stores
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(store)
        {
            return Err(AuthError::StoreClosed);
        }
        if let Some(credential) = credential
            && self
                .revoked
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(credential)
        {
            return Err(AuthError::Revoked);
        }
        Ok(())
    }

    /// How long after its `exp` a token is still accepted (clock skew between replicas).
    pub fn leeway(&self) -> u64 {
        self.validation.leeway
    }

    fn verify_unrevoked(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        let now = chrono::Utc::now().timestamp();
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .filter(|(_, exp)| *exp > now)
            .cloned();
        if let Some(cached) = cached {
            return Ok(cached);
        }
        let (principal, exp) = self.verify_signature(token)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_CACHE {
            cache.clear();
        }
        cache.insert(token.to_owned(), (principal.clone(), exp));
        Ok((principal, exp))
    }

    fn verify_signature(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let kid = header.kid.ok_or(AuthError::Invalid)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let Some(key) = keys.get(&kid) else {
            self.unknown_key.notify_one();
            return Err(AuthError::Invalid);
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    _ => AuthError::Invalid,
                }
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.contains(':') {
            return Err(AuthError::Invalid);
        }
        let service = claims.role == SERVICE_ROLE;
        let operator = claims.role == "operator";
        // A token whose role does not fit its scopes was not made by any of our signers'
        // paths; refuse it whole rather than trust part of it.
        role_fits_scopes(
            service,
            operator,
            claims.store.is_some(),
            claims.scope.split_whitespace(),
        )
        .map_err(|_| AuthError::Invalid)?;
        let principal = Principal {
            partner_id: if service {
                format!("{SERVICE_PRINCIPAL_PREFIX}{}", claims.sub)
            } else {
                claims.sub.clone()
            },
            store: claims.store,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
            operator,
            credential: claims.cid,
            service: service.then_some(claims.sub),
            key_id: Some(kid),
        };
        Ok((principal, claims.exp))
    }
}

pub use crate::keycodec::decode_public_key;

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_list_read_before_a_suspension_or_revocation_never_undoes_it() {
        let verifier = TokenVerifier::new(&AuthConfig {
            issuer: "lianyu".into(),
            audience: "mesh".into(),
            trusted_keys: vec![Signer::generate().trusted_key()],
            signing_key: None,
            token_ttl: Duration::from_secs(600),
            key_refresh: Duration::from_secs(300),
        })
        .unwrap();
        // The key refresher starts reading identity's lists...
        let seen = verifier.changes();
        // ...the operator suspends a partner and revokes a credential meanwhile...
        verifier.set_partner_suspended("brand-s", true);
        verifier.revoke("cred-1");
        // ...and the lists, read before, arrive after: they are not applied.
        assert!(!verifier.replace_lists_as_of(seen, Vec::new(), Vec::new()));
        assert!(verifier.suspended.read().unwrap().contains("brand-s"));
        assert!(verifier.revoked.read().unwrap().contains("cred-1"));
        // Lists read after both are applied whole, reinstatement included.
        let seen = verifier.changes();
        assert!(verifier.replace_lists_as_of(seen, vec!["cred-1".to_owned()], Vec::new()));
        assert!(!verifier.suspended.read().unwrap().contains("brand-s"));
        assert!(verifier.revoked.read().unwrap().contains("cred-1"));
    }

    /// The auth settings of a test verifier that trusts `key`.
    pub(crate) fn trusting(key: &Signer) -> AuthConfig {
        AuthConfig {
            issuer: "lianyu".into(),
            audience: "mesh".into(),
            trusted_keys: vec![key.trusted_key()],
            signing_key: None,
            token_ttl: Duration::from_secs(600),
            key_refresh: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_cached_token_stops_working_when_its_key_is_rotated_out() {
        let old = Signer::generate();
        let new = Signer::generate();
        let auth = trusting(&old);
        let verifier = TokenVerifier::new(&auth).unwrap();
        let request = TokenRequest {
            partner_id: "brand-a".into(),
            operator: false,
            store: None,
            scopes: vec![],
            ttl: Duration::from_secs(600),
            credential: None,
            service: false,
        };
        let token = old.mint(&auth, &request).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().partner_id, "brand-a");
        assert_eq!(
            verifier.verify(&token).unwrap().partner_id,
            "brand-a",
            "served from the cache"
        );
        verifier.replace_keys(&[new.trusted_key()]).unwrap();
        assert_eq!(verifier.verify(&token), Err(AuthError::Invalid));
        assert!(verifier.verify(&new.mint(&auth, &request).unwrap()).is_ok());
    }

    fn auth(key: &Signer) -> AuthConfig {
        AuthConfig {
            issuer: "lianyu".into(),
            audience: "mesh".into(),
            trusted_keys: vec![key.trusted_key()],
            signing_key: None,
            token_ttl: Duration::from_secs(600),
            key_refresh: Duration::from_secs(300),
        }
    }

    fn claims(sub: &str, role: &str, scope: &str) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: "lianyu".into(),
            aud: "mesh".into(),
            sub: sub.into(),
            exp: now + 600,
            iat: now,
            jti: "j".into(),
            store: None,
            scope: scope.into(),
            role: role.into(),
            cid: None,
        }
    }

    #[test]
    fn a_service_token_is_a_service_principal_that_matches_no_partner() {
        let key = Signer::generate();
        let auth = auth(&key);
        let verifier = TokenVerifier::new(&auth).unwrap();
        let token = key
            .mint(
                &auth,
                &TokenRequest::service("entitlements", Duration::from_secs(60)),
            )
            .unwrap();
        let p = verifier.verify(&token).unwrap();
        assert_eq!(p.service.as_deref(), Some("entitlements"));
        assert_eq!(p.partner_id, "service:entitlements");
        assert!(!p.operator);
        assert!(p.has_scope("identity.internal"));
        assert!(ALL_SCOPES.iter().all(|s| !p.has_scope(s)));
    }

    #[test]
    fn no_signer_path_mixes_internal_scopes_with_partner_or_operator_roles() {
        let key = Signer::generate();
        let auth = auth(&key);
        let internal = vec!["identity.internal".to_owned()];
        for operator in [false, true] {
            let mut asked = TokenRequest::partner("brand-a");
            asked.operator = operator;
            asked.scopes.extend(internal.clone());
            assert!(matches!(
                key.mint(&auth, &asked),
                Err(SignerError::Refused(_))
            ));
        }
        let mut service = TokenRequest::service("live", Duration::from_secs(60));
        service.scopes.push("identity.write".into());
        assert!(matches!(
            key.mint(&auth, &service),
            Err(SignerError::Refused(_))
        ));
        let mut store = TokenRequest::service("live", Duration::from_secs(60));
        store.store = Some("partners/brand-a/stores/s1".into());
        assert!(key.mint(&auth, &store).is_err());
    }

    #[test]
    fn the_verifier_refuses_a_signed_token_whose_role_does_not_fit_its_scopes() {
        let key = Signer::generate();
        let verifier = TokenVerifier::new(&auth(&key)).unwrap();
        for (sub, role, scope) in [
            ("brand-a", "", "identity.read identity.internal"),
            ("op", "operator", "identity.internal"),
            ("live", "service", "identity.internal identity.read"),
            ("service:live", "", "identity.read"),
        ] {
            let token = key.sign(&claims(sub, role, scope)).unwrap();
            assert_eq!(
                verifier.verify(&token),
                Err(AuthError::Invalid),
                "{role:?} with {scope:?}"
            );
        }
        let ok = key
            .sign(&claims("live", "service", "identity.internal"))
            .unwrap();
        assert!(verifier.verify(&ok).is_ok());
    }
}
