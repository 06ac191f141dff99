//! Partners and alliances: who may share with whom, for which purposes, until when.

use lianyu_kit::names;
use std::collections::BTreeSet;

use super::{identifier::Method, purpose::Purpose};

/// Whether a partner may act in the mesh; only the operator changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartnerStatus {
    Active,
    /// Every token of the partner is refused, and none is issued.
    Suspended,
}

/// A company in the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partner {
    pub id: String,
    pub kind: PartnerKind,
    /// The name members read on their receipts.
    pub display_name: String,
    pub status: PartnerStatus,
    /// How a member reaches the partner's privacy contact.
    pub privacy_contact: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A physical store of a partner (a counter, a branch); store tokens act only within one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerStore {
    pub partner_id: String,
    pub id: String,
    pub display_name: String,
    pub city: String,
    /// An inactive store issues no store tokens.
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The kind of a partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartnerKind {
    Brand,
    Mall,
    Operator,
}

/// Checks a partner id: 3 to 40 of lowercase letters, digits and '-', starting with a letter.
pub fn partner_id(s: &str) -> Result<String, String> {
    let ok = (3..=40).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("3-40 lowercase letters, digits or '-', starting with a letter".into())
    }
}

/// `partners/{id}` → id.
pub fn parse_partner_name(name: &str) -> Result<String, String> {
    let [partner] = names::parse(name, "partners/{partner}")?;
    partner_id(partner)
}

/// `partners/{partner}/stores/{store}` → (partner, store). Store ids follow the partner id rule.
pub fn parse_store_name(name: &str) -> Result<(String, String), String> {
    const PATTERN: &str = "partners/{partner}/stores/{store}";
    let [partner, store] = names::parse(name, PATTERN)?;
    Ok((
        partner_id(partner).map_err(|_| format!("expected {PATTERN}"))?,
        partner_id(store).map_err(|e| format!("store id: {e}"))?,
    ))
}

/// `partners/{partner}/credentials/{credential}` → (partner, credential).
pub fn parse_credential_name(name: &str) -> Result<(String, String), String> {
    const PATTERN: &str = "partners/{partner}/credentials/{credential}";
    let [partner, id] = names::parse(name, PATTERN)?;
    if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("expected {PATTERN}"));
    }
    Ok((
        partner_id(partner).map_err(|_| format!("expected {PATTERN}"))?,
        id.to_owned(),
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllianceStatus {
    Proposed,
    Active,
    Ended,
}

/// The fields an `UpdateAlliance` names; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct Amendment {
    pub display_name: Option<String>,
    pub purposes: Option<BTreeSet<Purpose>>,
    pub data_categories: Option<Vec<String>>,
    pub processing_method: Option<String>,
    pub valid_until: Option<i64>,
    pub accepted_methods: Option<BTreeSet<Method>>,
}

/// A joint domain between partners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alliance {
    pub id: String,
    pub display_name: String,
    pub partners: BTreeSet<String>,
    pub accepted: BTreeSet<String>,
    pub purposes: BTreeSet<Purpose>,
    pub data_categories: Vec<String>,
    pub processing_method: String,
    pub valid_from: i64,
    pub valid_until: i64,
    pub status: AllianceStatus,
    pub terms_version: i64,
    /// The verification methods the partners accept from each other as proof that their
    /// members are one person; empty accepts any.
    pub accepted_methods: BTreeSet<Method>,
}

impl Alliance {
    /// Records `partner`'s acceptance; the alliance becomes active when every partner has
    /// accepted. Returns whether this call activated it.
    pub fn accept(&mut self, partner: &str) -> Result<bool, &'static str> {
        if self.status != AllianceStatus::Proposed {
            return if self.accepted.contains(partner) {
                Ok(false)
            } else {
                Err("ALLIANCE_NOT_PROPOSED")
            };
        }
        self.accepted.insert(partner.to_owned());
        if self.accepted == self.partners {
            self.status = AllianceStatus::Active;
            return Ok(true);
        }
        Ok(false)
    }

    /// Applies an update by member partner `by`. A change to what a member is told on a
    /// receipt (purposes, data categories, processing method) is a change of terms: the terms
    /// version increases, so consents given under the old terms turn stale, and the other
    /// partners must accept the new terms before the alliance is active again. Returns whether
    /// the terms changed.
    pub fn amend(&mut self, by: &str, change: Amendment) -> Result<bool, &'static str> {
        if self.status == AllianceStatus::Ended {
            return Err("ALLIANCE_ENDED");
        }
        if let Some(name) = change.display_name {
            self.display_name = name;
        }
        if let Some(until) = change.valid_until {
            self.valid_until = until;
        }
        let mut terms_changed = false;
        if let Some(purposes) = change.purposes.filter(|p| *p != self.purposes) {
            self.purposes = purposes;
            terms_changed = true;
        }
        if let Some(categories) = change
            .data_categories
            .filter(|c| *c != self.data_categories)
        {
            self.data_categories = categories;
            terms_changed = true;
        }
        if let Some(method) = change
            .processing_method
            .filter(|m| *m != self.processing_method)
        {
            self.processing_method = method;
            terms_changed = true;
        }
        if let Some(methods) = change
            .accepted_methods
            .filter(|m| *m != self.accepted_methods)
        {
            self.accepted_methods = methods;
            terms_changed = true;
        }
        if terms_changed {
            self.terms_version += 1;
            self.accepted = [by.to_owned()].into();
            if self.accepted != self.partners {
                self.status = AllianceStatus::Proposed;
            }
        }
        Ok(terms_changed)
    }

    /// Ends the alliance; nothing under it counts any more. Returns whether this call ended it.
    pub fn end(&mut self) -> bool {
        let ended = self.status != AllianceStatus::Ended;
        self.status = AllianceStatus::Ended;
        ended
    }

    /// Whether, at `now`, `a` and `b` are allied here at all (an ACTIVE alliance in its window).
    pub fn joins(&self, a: &str, b: &str, now: i64) -> bool {
        self.status == AllianceStatus::Active
            && self.partners.contains(a)
            && self.partners.contains(b)
            && (self.valid_from..self.valid_until).contains(&now)
    }

    /// Whether, at `now`, `a` and `b` accept each other's verification by these methods as
    /// proof that their records are one person.
    pub fn trusts_verification(&self, a: &str, b: &str, methods: &[Method], now: i64) -> bool {
        self.joins(a, b, now)
            && (self.accepted_methods.is_empty()
                || methods.iter().all(|m| self.accepted_methods.contains(m)))
    }

    /// Whether, at `now`, the alliance lets `a` and `b` share for `purpose`.
    pub fn allows(&self, a: &str, b: &str, purpose: Purpose, now: i64) -> bool {
        self.status == AllianceStatus::Active
            && self.partners.contains(a)
            && self.partners.contains(b)
            && self.purposes.contains(&purpose)
            && (self.valid_from..self.valid_until).contains(&now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposed() -> Alliance {
        Alliance {
            id: "a1".into(),
            display_name: "Spring".into(),
            partners: ["brand".to_owned(), "mall".to_owned()].into(),
            accepted: ["brand".to_owned()].into(),
            purposes: [Purpose::ShareProfile].into(),
            data_categories: vec!["profile.basic".into()],
            processing_method: "joint CRM".into(),
            valid_from: 0,
            valid_until: 1_000,
            status: AllianceStatus::Proposed,
            terms_version: 1,
            accepted_methods: BTreeSet::new(),
        }
    }

    #[test]
    fn verification_is_trusted_only_between_active_allies_by_accepted_methods() {
        let mut a = proposed();
        let sms = [Method::SmsCode, Method::SmsCode];
        assert!(
            !a.trusts_verification("brand", "mall", &sms, 10),
            "not active yet"
        );
        a.accept("mall").unwrap();
        assert!(
            a.trusts_verification("brand", "mall", &sms, 10),
            "empty accepts any"
        );
        assert!(
            !a.trusts_verification("brand", "other", &sms, 10),
            "not a member"
        );
        a.accepted_methods = [Method::SmsCode].into();
        assert!(a.trusts_verification("brand", "mall", &sms, 10));
        assert!(!a.trusts_verification(
            "brand",
            "mall",
            &[Method::SmsCode, Method::InStoreCheck],
            10
        ));
        assert!(!a.trusts_verification("brand", "mall", &[Method::Unstated], 10));
        assert!(
            !a.trusts_verification("brand", "mall", &sms, 1_000),
            "window ended"
        );
    }

    #[test]
    fn active_only_when_everyone_accepted() {
        let mut a = proposed();
        assert!(!a.allows("brand", "mall", Purpose::ShareProfile, 10));
        assert_eq!(a.accept("brand"), Ok(false));
        assert_eq!(a.accept("mall"), Ok(true));
        assert!(a.allows("brand", "mall", Purpose::ShareProfile, 10));
        assert!(
            !a.allows("brand", "mall", Purpose::MarketingContact, 10),
            "purpose not declared"
        );
        assert!(
            !a.allows("brand", "mall", Purpose::ShareProfile, 1_000),
            "window ended"
        );
        assert!(
            !a.allows("brand", "other", Purpose::ShareProfile, 10),
            "not a member"
        );
    }

    #[test]
    fn new_terms_make_a_new_version_that_every_partner_accepts_again() {
        let mut a = proposed();
        a.accept("mall").unwrap();
        let renamed = a
            .amend(
                "mall",
                Amendment {
                    display_name: Some("Summer".into()),
                    purposes: Some(a.purposes.clone()),
                    ..Amendment::default()
                },
            )
            .unwrap();
        assert!(
            !renamed,
            "a new name or the same purposes are not new terms"
        );
        assert_eq!((a.terms_version, a.status), (1, AllianceStatus::Active));

        let changed = a
            .amend(
                "mall",
                Amendment {
                    processing_method: Some("joint CRM and lookalike modelling".into()),
                    ..Amendment::default()
                },
            )
            .unwrap();
        assert!(changed);
        assert_eq!((a.terms_version, a.status), (2, AllianceStatus::Proposed));
        assert!(!a.allows("brand", "mall", Purpose::ShareProfile, 10));
        assert_eq!(
            a.accept("brand"),
            Ok(true),
            "the other partner accepts again"
        );

        assert!(a.end());
        assert!(!a.end(), "ending twice changes nothing");
        assert_eq!(
            a.amend("brand", Amendment::default()),
            Err("ALLIANCE_ENDED")
        );
        assert!(!a.allows("brand", "mall", Purpose::ShareProfile, 10));
    }

    #[test]
    fn ids_are_checked() {
        assert!(partner_id("brand-a").is_ok());
        assert!(partner_id("Brand").is_err());
        assert!(partner_id("1brand").is_err());
        assert_eq!(parse_partner_name("partners/mall-b").unwrap(), "mall-b");
        assert!(parse_partner_name("mall-b").is_err());
    }
}
