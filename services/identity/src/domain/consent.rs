//! Consent: purpose-bound, per (member, collector, grantee), with a validity window, and
//! bound to the alliance terms it was given under.

use super::partner::Alliance;

pub use super::purpose::Purpose;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentState {
    Granted,
    Withdrawn,
}

/// The latest word of a member on one (collector, grantee, purpose).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consent {
    pub receipt_id: String,
    pub collector: String,
    pub grantee: String,
    pub purpose: Purpose,
    pub state: ConsentState,
    pub valid_from: i64,
    pub valid_until: i64,
    pub alliance_id: String,
    /// The alliance's terms version the member saw; newer terms make this consent stale.
    pub terms_version: i64,
}

/// What happened to a consent (or to the member behind it), as a watcher hears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Granted,
    Withdrawn,
    Expired,
    Stale,
    /// The watcher erased its own records of the member.
    Erased,
    /// The person asked, through another partner, to leave the joint domain.
    ErasureRequested,
    /// Another of the watcher's ids for the person was merged into this one.
    Merged,
}

/// What the consent feed carries: already in the grantee's terms (its own scoped id for the
/// member), so the stream needs no lookup and never exposes another partner's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentEvent {
    pub kind: EventKind,
    /// The grantee's scoped id for the member; empty when the grantee has not enrolled them.
    pub member: String,
    pub collector: String,
    pub grantee: String,
    pub purposes: Vec<i32>,
    pub receipt_id: String,
}

/// Why a consent does or does not count at a point of use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Live,
    Withdrawn,
    Expired,
    /// The alliance's purposes, method or categories changed since the member consented.
    Stale,
    /// The alliance ended or no longer allows the purpose.
    NoAlliance,
}

impl Consent {
    pub fn liveness(&self, alliance: Option<&Alliance>, now: i64) -> Liveness {
        if self.state == ConsentState::Withdrawn {
            return Liveness::Withdrawn;
        }
        if !(self.valid_from..self.valid_until).contains(&now) {
            return Liveness::Expired;
        }
        match alliance {
            Some(a) if a.allows(&self.collector, &self.grantee, self.purpose, now) => {
                if a.terms_version == self.terms_version {
                    Liveness::Live
                } else {
                    Liveness::Stale
                }
            }
            _ => Liveness::NoAlliance,
        }
    }
}

/// A consent receipt as kept: what the member was shown when they consented (or withdrew).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub id: String,
    /// The mesh member; never shown to a partner.
    pub member_id: String,
    pub collector: String,
    pub grantee: String,
    /// Consent purpose numbers.
    pub purposes: Vec<i32>,
    pub data_categories: Vec<String>,
    pub processing_method: String,
    pub policy_version: String,
    pub channel: i32,
    /// GRANTED, or WITHDRAWN once withdrawn (or erased) — a withdrawal's own receipt too.
    pub state: ConsentState,
    pub valid_from: i64,
    pub valid_until: i64,
    pub alliance_id: String,
    pub issued_at: i64,
    /// The alliance's terms version the member was shown; 0 when not recorded.
    pub terms_version: i64,
}

impl Receipt {
    /// Where the receipt stands `now` under its alliance as it is.
    pub fn status(&self, alliance: Option<&Alliance>, now: i64) -> ReceiptStatus {
        receipt_status(
            self.state == ConsentState::Withdrawn,
            self.valid_until,
            self.terms_version,
            alliance,
            now,
        )
    }
}

/// Where a consent receipt stands when it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptStatus {
    Granted,
    Withdrawn,
    Expired,
    Stale,
}

/// A receipt's status now: WITHDRAWN once withdrawn (or erased) — a withdrawal's own receipt
/// too —, EXPIRED when its window closed or its alliance ended, STALE when the alliance's
/// terms changed since it was given (`terms_version` 0: not recorded, not judged).
pub fn receipt_status(
    withdrawn: bool,
    valid_until: i64,
    terms_version: i64,
    alliance: Option<&Alliance>,
    now: i64,
) -> ReceiptStatus {
    use super::partner::AllianceStatus;
    if withdrawn {
        return ReceiptStatus::Withdrawn;
    }
    match alliance {
        _ if valid_until <= now => ReceiptStatus::Expired,
        None => ReceiptStatus::Expired,
        Some(a) if a.status == AllianceStatus::Ended => ReceiptStatus::Expired,
        Some(a) if terms_version > 0 && a.terms_version > terms_version => ReceiptStatus::Stale,
        Some(_) => ReceiptStatus::Granted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::partner::AllianceStatus;

    fn alliance(terms_version: i64) -> Alliance {
        Alliance {
            id: "a1".into(),
            display_name: "x".into(),
            partners: ["brand".to_owned(), "mall".to_owned()].into(),
            accepted: ["brand".to_owned(), "mall".to_owned()].into(),
            purposes: [Purpose::ShareProfile].into(),
            data_categories: vec![],
            processing_method: "m".into(),
            valid_from: 0,
            valid_until: 10_000,
            status: AllianceStatus::Active,
            terms_version,
            accepted_methods: Default::default(),
        }
    }

    fn consent() -> Consent {
        Consent {
            receipt_id: "r".into(),
            collector: "brand".into(),
            grantee: "mall".into(),
            purpose: Purpose::ShareProfile,
            state: ConsentState::Granted,
            valid_from: 100,
            valid_until: 1_000,
            alliance_id: "a1".into(),
            terms_version: 1,
        }
    }

    #[test]
    fn a_receipt_tells_where_it_stands() {
        let a = alliance(1);
        assert_eq!(
            receipt_status(false, 1_000, 1, Some(&a), 500),
            ReceiptStatus::Granted
        );
        assert_eq!(
            receipt_status(true, 1_000, 1, Some(&a), 500),
            ReceiptStatus::Withdrawn
        );
        assert_eq!(
            receipt_status(false, 1_000, 1, Some(&a), 1_000),
            ReceiptStatus::Expired
        );
        assert_eq!(
            receipt_status(false, 1_000, 1, Some(&alliance(2)), 500),
            ReceiptStatus::Stale
        );
        let mut ended = alliance(1);
        ended.end();
        assert_eq!(
            receipt_status(false, 1_000, 1, Some(&ended), 500),
            ReceiptStatus::Expired
        );
        assert_eq!(
            receipt_status(false, 1_000, 1, None, 500),
            ReceiptStatus::Expired
        );
    }

    #[test]
    fn a_consent_counts_only_inside_its_window_and_terms() {
        let a = alliance(1);
        assert_eq!(consent().liveness(Some(&a), 500), Liveness::Live);
        assert_eq!(consent().liveness(Some(&a), 1_000), Liveness::Expired);
        assert_eq!(consent().liveness(Some(&a), 50), Liveness::Expired);
        assert_eq!(consent().liveness(Some(&alliance(2)), 500), Liveness::Stale);
        assert_eq!(consent().liveness(None, 500), Liveness::NoAlliance);
        let withdrawn = Consent {
            state: ConsentState::Withdrawn,
            ..consent()
        };
        assert_eq!(withdrawn.liveness(Some(&a), 500), Liveness::Withdrawn);
    }
}
