//! Partner credentials for the client-credentials exchange: a public client id and a secret
//! shown once. Only a keyed hash of a secret is kept; during a rotation the previous secret
//! keeps working until its overlap ends; a revoked credential accepts nothing.

use std::collections::BTreeSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::secrets::Secrets;

/// How long the old secret works after a rotation when the caller does not say.
pub const DEFAULT_OVERLAP_SECONDS: i64 = 3600;
/// The longest overlap a rotation may ask for: a week.
pub const MAX_OVERLAP_SECONDS: i64 = 7 * 24 * 3600;
/// Credentials a partner may hold that are not revoked.
pub const MAX_ACTIVE_PER_PARTNER: u64 = 20;

/// A new client id: `lyc_` and 16 random bytes, hex.
pub fn new_client_id() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("lyc_{}", lianyu_kit::keycodec::hex(&bytes))
}

/// A new secret: `lys_` and 32 random bytes, base64url. With 256 bits of entropy a keyed hash
/// is as strong as a password hash, and lets `IssueToken` stay cheap.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("lys_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored state of a credential, as far as accepting a secret goes.
#[derive(Clone, Debug)]
pub struct SecretState {
    pub secret_hash: String,
    pub previous_hash: Option<String>,
    pub previous_until: Option<i64>,
    pub revoked: bool,
}

impl SecretState {
    /// Whether `secret` opens this credential at `now` (milliseconds). Both hashes are always
    /// compared, in constant time, so timing tells nothing about which one matched.
    pub fn accepts(&self, secrets: &Secrets, secret: &str, now: i64) -> bool {
        let current = secrets.credential_matches(secret, &self.secret_hash);
        let previous = match (&self.previous_hash, self.previous_until) {
            (Some(hash), Some(until)) => secrets.credential_matches(secret, hash) && now < until,
            _ => false,
        };
        !self.revoked && (current || previous)
    }
}

/// The scopes a token gets: what was asked for (everything the credential allows when nothing
/// was), each of which the credential must allow. Errors name the index of a refused scope.
pub fn token_scopes(
    allowed: &BTreeSet<String>,
    requested: &[String],
) -> Result<BTreeSet<String>, Vec<(usize, String)>> {
    if requested.is_empty() {
        return Ok(allowed.clone());
    }
    let refused: Vec<_> = requested
        .iter()
        .enumerate()
        .filter(|(_, s)| !allowed.contains(*s))
        .map(|(i, s)| (i, format!("{s:?} is not granted to this credential")))
        .collect();
    if refused.is_empty() {
        Ok(requested.iter().cloned().collect())
    } else {
        Err(refused)
    }
}

/// Who a credential's tokens speak for: a partner (brand, mall or the operator), or a mesh
/// service. Stored in the credential's `partner_id` as the partner id or `service:<name>`,
/// which no partner id can equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Partner(String),
    Service(String),
}

impl Owner {
    /// The owner from a parent name: `partners/{partner}` or `services/{service}` (a mesh
    /// service: one of `MESH_SERVICES`).
    pub fn parse_parent(parent: &str) -> Result<Self, String> {
        if parent.starts_with("services/") {
            let [service] = lianyu_kit::names::parse(parent, "services/{service}")?;
            return Self::service(service);
        }
        super::partner::parse_partner_name(parent)
            .map(Owner::Partner)
            .map_err(|_| "expected partners/{partner} or services/{service}".to_owned())
    }

    /// The owner and id from a credential name: `partners/{partner}/credentials/{id}` or
    /// `services/{service}/credentials/{id}`.
    pub fn parse_credential(name: &str) -> Result<(Self, String), String> {
        if name.starts_with("services/") {
            const PATTERN: &str = "services/{service}/credentials/{credential}";
            let [service, id] = lianyu_kit::names::parse(name, PATTERN)?;
            if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("expected {PATTERN}"));
            }
            return Ok((Self::service(service)?, id.to_owned()));
        }
        super::partner::parse_credential_name(name).map(|(p, id)| (Owner::Partner(p), id))
    }

    fn service(name: &str) -> Result<Self, String> {
        if MESH_SERVICES.contains(&name) {
            Ok(Owner::Service(name.to_owned()))
        } else {
            Err(format!(
                "no mesh service {name:?}; one of {}",
                MESH_SERVICES.join(", ")
            ))
        }
    }

    /// As stored in `partner_id`.
    pub fn key(&self) -> String {
        match self {
            Owner::Partner(p) => p.clone(),
            Owner::Service(s) => format!("{}{s}", lianyu_kit::auth::SERVICE_PRINCIPAL_PREFIX),
        }
    }

    /// From a stored `partner_id`.
    pub fn from_key(key: &str) -> Self {
        match key.strip_prefix(lianyu_kit::auth::SERVICE_PRINCIPAL_PREFIX) {
            Some(service) => Owner::Service(service.to_owned()),
            None => Owner::Partner(key.to_owned()),
        }
    }

    /// Its resource name: `partners/{partner}` or `services/{service}`.
    pub fn name(&self) -> String {
        match self {
            Owner::Partner(p) => format!("partners/{p}"),
            Owner::Service(s) => format!("services/{s}"),
        }
    }
}

/// The mesh services that may hold service credentials: every service with a contract.
pub const MESH_SERVICES: &[&str] = lianyu_kit::auth::MESH_SERVICES;

/// The scopes a new credential may carry. A partner's: known partner scopes — an internal one
/// is PERMISSION_DENIED / INTERNAL_SCOPE, never granted —, and for a partner caller only scopes
/// its own token holds (no escalation). A service's: only the internal scopes of the contracts
/// that service calls ([`lianyu_kit::auth::service_scopes`]; all of those when none are named),
/// and none at all for a service that calls no internal contract (identity).
pub fn credential_scopes(
    owner: &Owner,
    caller_scopes: Option<&BTreeSet<String>>,
    scopes: &[String],
) -> Result<BTreeSet<String>, lianyu_kit::KitError> {
    use lianyu_kit::{
        KitError,
        auth::{ALL_SCOPES, INTERNAL_SCOPES, service_scopes},
        validate::Violations,
    };
    let mut v = Violations::default();
    match owner {
        Owner::Service(service) => {
            let needed = service_scopes(service);
            if needed.is_empty() {
                return Err(KitError::invalid(
                    "parent",
                    format!(
                        "the {service} service calls no other service's internal contract: \
                         it needs no service credential"
                    ),
                ));
            }
            if scopes.is_empty() {
                return Ok(needed.iter().map(|s| (*s).to_owned()).collect());
            }
            for (i, scope) in scopes.iter().enumerate() {
                if !needed.contains(&scope.as_str()) {
                    v.add(
                        format!("scopes[{i}]"),
                        format!(
                            "the {service} service's credential carries only the internal \
                             scopes of the contracts it calls: {}",
                            needed.join(", ")
                        ),
                    );
                }
            }
        }
        Owner::Partner(_) => {
            if scopes.iter().any(|s| INTERNAL_SCOPES.contains(&s.as_str())) {
                return Err(internal_scope_denied());
            }
            if scopes.is_empty() {
                v.add("scopes", "at least one scope");
            }
            for (i, scope) in scopes.iter().enumerate() {
                if !ALL_SCOPES.contains(&scope.as_str()) {
                    v.add(
                        format!("scopes[{i}]"),
                        format!("unknown scope; one of {}", ALL_SCOPES.join(", ")),
                    );
                }
            }
        }
    }
    v.finish()?;
    if let Some(held) = caller_scopes
        && scopes.iter().any(|s| !held.contains(s))
    {
        return Err(KitError::Denied(
            "SCOPE_ESCALATION",
            "a credential cannot carry a scope the caller's own token lacks",
        ));
    }
    Ok(scopes.iter().cloned().collect())
}

/// What a partner or the operator gets for asking for an internal scope, however it asks.
pub fn internal_scope_denied() -> lianyu_kit::KitError {
    lianyu_kit::KitError::Denied(
        "INTERNAL_SCOPE",
        "internal scopes are carried only by mesh services' tokens, never a partner's or the operator's",
    )
}

/// A client credential as kept: only keyed hashes of its secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub partner_id: String,
    pub client_id: String,
    pub secret_hash: String,
    /// During a rotation's overlap, the previous secret's hash and until when it works.
    pub previous_secret_hash: Option<String>,
    pub previous_secret_until: Option<i64>,
    /// The scopes its tokens may carry.
    pub scopes: Vec<String>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

/// The credential a secret opened, with what its partner is now.
pub struct Holder<'a> {
    pub credential_id: &'a str,
    /// The credential's stored owner: a partner id, or `service:<name>`.
    pub partner_id: &'a str,
    /// The scopes the credential may carry.
    pub allowed_scopes: &'a [String],
    pub partner_is_operator: bool,
    pub partner_is_active: bool,
}

/// A store a token asks to be narrowed to: its name, and whether it is an active store of the
/// credential's own partner.
pub struct StoreAsked<'a> {
    pub name: &'a str,
    pub active_store_of_holder: bool,
}

/// What a token grants.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    /// The partner, or for a service credential the service's name.
    pub partner_id: String,
    pub operator: bool,
    /// A mesh service's token.
    pub service: bool,
    pub store: Option<String>,
    pub scopes: BTreeSet<String>,
    pub credential: String,
}

/// IssueToken's rules once the secret has opened a credential: a suspended partner gets no
/// token; the token carries the scopes asked for (all the credential allows when none are),
/// never one it lacks; a store narrowing must name an active store of the same partner.
pub fn grant(
    holder: &Holder<'_>,
    scopes: &[String],
    store: Option<StoreAsked<'_>>,
) -> Result<Grant, lianyu_kit::KitError> {
    use lianyu_kit::KitError;
    if let Owner::Service(service) = Owner::from_key(holder.partner_id) {
        // A mesh service: internal scopes only, never narrowed to a store.
        if store.is_some() {
            return Err(KitError::invalid(
                "store",
                "a service credential's token is never narrowed to a store",
            ));
        }
        // What the credential allows, and never more than the service calls (a credential
        // made before the service's scopes were narrowed still gets only those).
        let needed = lianyu_kit::auth::service_scopes(&service);
        let allowed: BTreeSet<String> = holder
            .allowed_scopes
            .iter()
            .filter(|s| needed.contains(&s.as_str()))
            .cloned()
            .collect();
        let scopes = token_scopes(&allowed, scopes).map_err(refused_scopes)?;
        return Ok(Grant {
            partner_id: service,
            operator: false,
            service: true,
            store: None,
            scopes,
            credential: holder.credential_id.to_owned(),
        });
    }
    if scopes
        .iter()
        .any(|s| lianyu_kit::auth::INTERNAL_SCOPES.contains(&s.as_str()))
    {
        return Err(internal_scope_denied());
    }
    if !holder.partner_is_active {
        return Err(KitError::Denied(
            "PARTNER_SUSPENDED",
            "the partner is suspended; no tokens are issued",
        ));
    }
    let allowed: BTreeSet<String> = holder.allowed_scopes.iter().cloned().collect();
    let scopes = token_scopes(&allowed, scopes).map_err(refused_scopes)?;
    if store.as_ref().is_some_and(|s| !s.active_store_of_holder) {
        return Err(KitError::invalid(
            "store",
            "no active store of this credential's partner by that name",
        ));
    }
    Ok(Grant {
        partner_id: holder.partner_id.to_owned(),
        operator: holder.partner_is_operator,
        service: false,
        store: store.map(|s| s.name.to_owned()),
        scopes,
        credential: holder.credential_id.to_owned(),
    })
}

fn refused_scopes(refused: Vec<(usize, String)>) -> lianyu_kit::KitError {
    lianyu_kit::KitError::Invalid(
        refused
            .into_iter()
            .map(|(i, why)| lianyu_kit::FieldViolation::new(format!("scopes[{i}]"), why))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(active: bool) -> Holder<'static> {
        Holder {
            credential_id: "c1",
            partner_id: "mall-b",
            allowed_scopes: Box::leak(Box::new([
                "identity.read".to_owned(),
                "identity.write".to_owned(),
            ])),
            partner_is_operator: false,
            partner_is_active: active,
        }
    }

    #[test]
    fn a_token_carries_only_what_the_credential_allows_within_the_partners_own_store() {
        let all = grant(&holder(true), &[], None).unwrap();
        assert_eq!(all.scopes.len(), 2);
        let read = grant(&holder(true), &["identity.read".into()], None).unwrap();
        assert_eq!(read.scopes, ["identity.read".to_owned()].into());
        let e = grant(
            &holder(true),
            &["identity.read".into(), "live.write".into()],
            None,
        )
        .unwrap_err();
        assert_eq!(
            lianyu_kit::ServiceError::field_violations(&e)[0].field,
            "scopes[1]"
        );
        let store = |active| StoreAsked {
            name: "partners/mall-b/stores/sh01",
            active_store_of_holder: active,
        };
        assert_eq!(
            grant(&holder(true), &[], Some(store(true)))
                .unwrap()
                .store
                .as_deref(),
            Some("partners/mall-b/stores/sh01")
        );
        assert!(grant(&holder(true), &[], Some(store(false))).is_err());
        let e = grant(&holder(false), &[], None).unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "PARTNER_SUSPENDED");
    }

    fn state(secrets: &Secrets, current: &str, previous: Option<(&str, i64)>) -> SecretState {
        SecretState {
            secret_hash: secrets.credential_hash(current),
            previous_hash: previous.map(|(s, _)| secrets.credential_hash(s)),
            previous_until: previous.map(|(_, until)| until),
            revoked: false,
        }
    }

    #[test]
    fn the_previous_secret_works_only_until_the_overlap_ends() {
        let secrets = Secrets::from_master(&[3; 32]);
        let (old, new) = (new_secret(), new_secret());
        let s = state(&secrets, &new, Some((&old, 1_000)));
        assert!(s.accepts(&secrets, &new, 5_000));
        assert!(s.accepts(&secrets, &old, 999));
        assert!(!s.accepts(&secrets, &old, 1_000));
        assert!(!s.accepts(&secrets, "lys_guess", 10));
    }

    #[test]
    fn a_revoked_credential_accepts_nothing() {
        let secrets = Secrets::from_master(&[3; 32]);
        let secret = new_secret();
        let mut s = state(&secrets, &secret, None);
        assert!(s.accepts(&secrets, &secret, 0));
        s.revoked = true;
        assert!(!s.accepts(&secrets, &secret, 0));
    }

    #[test]
    fn hashes_depend_on_the_master_key() {
        let a = Secrets::from_master(&[3; 32]);
        let b = Secrets::from_master(&[4; 32]);
        let secret = new_secret();
        assert!(!b.credential_matches(&secret, &a.credential_hash(&secret)));
    }

    #[test]
    fn a_token_gets_only_scopes_the_credential_allows() {
        let allowed: BTreeSet<String> = ["identity.read".to_owned(), "live.read".to_owned()].into();
        assert_eq!(token_scopes(&allowed, &[]).unwrap(), allowed);
        assert_eq!(
            token_scopes(&allowed, &["live.read".into()]).unwrap(),
            ["live.read".to_owned()].into()
        );
        let refused = token_scopes(&allowed, &["live.read".into(), "live.write".into()]);
        assert_eq!(refused.unwrap_err()[0].0, 1);
    }
}
