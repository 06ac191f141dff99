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
    format!(
        "lyc_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
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

/// A partner's client credential as kept: only keyed hashes of its secrets.
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
    pub partner_id: String,
    pub operator: bool,
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
    use lianyu_kit::{FieldViolation, KitError};
    if !holder.partner_is_active {
        return Err(KitError::Denied(
            "PARTNER_SUSPENDED",
            "the partner is suspended; no tokens are issued",
        ));
    }
    let allowed: BTreeSet<String> = holder.allowed_scopes.iter().cloned().collect();
    let scopes = token_scopes(&allowed, scopes).map_err(|refused| {
        KitError::Invalid(
            refused
                .into_iter()
                .map(|(i, why)| FieldViolation::new(format!("scopes[{i}]"), why))
                .collect(),
        )
    })?;
    if store.as_ref().is_some_and(|s| !s.active_store_of_holder) {
        return Err(KitError::invalid(
            "store",
            "no active store of this credential's partner by that name",
        ));
    }
    Ok(Grant {
        partner_id: holder.partner_id.to_owned(),
        operator: holder.partner_is_operator,
        store: store.map(|s| s.name.to_owned()),
        scopes,
        credential: holder.credential_id.to_owned(),
    })
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
