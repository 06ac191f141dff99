//! The identity tables. No other service reads them; the mapping between partner-scoped ids
//! and members exists only here.

#![allow(unreachable_pub, reason = "sea-orm's derives generate pub items")]

use lianyu_kit::entity;
use sea_orm::entity::prelude::*;

/// A partner's kind as stored (see `domain::partner::PartnerKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum StoredPartnerKind {
    #[sea_orm(string_value = "brand")]
    Brand,
    #[sea_orm(string_value = "mall")]
    Mall,
    #[sea_orm(string_value = "operator")]
    Operator,
}

/// Whether a partner may act, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum StoredPartnerStatus {
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "suspended")]
    Suspended,
}

/// An alliance's state as stored (see `domain::partner::AllianceStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum StoredAllianceStatus {
    #[sea_orm(string_value = "proposed")]
    Proposed,
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "ended")]
    Ended,
}

/// A person in the mesh: held by some partner, folded into another by a merge, or gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum StoredMemberStatus {
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "merged")]
    Merged,
    #[sea_orm(string_value = "erased")]
    Erased,
}

/// A consent (and its receipt) as given or withdrawn, as stored. The lapse sweep
/// (`store::sweep`) marks a granted consent `expired` (its window or its alliance ended) or
/// `stale` (its alliance's terms changed) once it has announced the lapse on the feed: the
/// member's word is still a grant, whose liveness the domain works out from the window, the
/// alliance and the terms ([`crate::domain::consent::Consent::liveness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum StoredConsentState {
    #[sea_orm(string_value = "granted")]
    Granted,
    #[sea_orm(string_value = "withdrawn")]
    Withdrawn,
    #[sea_orm(string_value = "expired")]
    Expired,
    #[sea_orm(string_value = "stale")]
    Stale,
}

impl From<crate::domain::partner::PartnerKind> for StoredPartnerKind {
    fn from(kind: crate::domain::partner::PartnerKind) -> Self {
        use crate::domain::partner::PartnerKind as K;
        match kind {
            K::Brand => Self::Brand,
            K::Mall => Self::Mall,
            K::Operator => Self::Operator,
        }
    }
}

impl From<partner::Model> for crate::domain::partner::Partner {
    fn from(row: partner::Model) -> Self {
        use crate::domain::partner::{PartnerKind as K, PartnerStatus as S};
        Self {
            id: row.id,
            kind: match row.kind {
                StoredPartnerKind::Brand => K::Brand,
                StoredPartnerKind::Mall => K::Mall,
                StoredPartnerKind::Operator => K::Operator,
            },
            display_name: row.display_name,
            status: match row.status {
                StoredPartnerStatus::Active => S::Active,
                StoredPartnerStatus::Suspended => S::Suspended,
            },
            privacy_contact: row.privacy_contact,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl From<crate::domain::partner::Partner> for partner::Model {
    fn from(p: crate::domain::partner::Partner) -> Self {
        use crate::domain::partner::PartnerStatus as S;
        Self {
            id: p.id,
            kind: p.kind.into(),
            display_name: p.display_name,
            status: match p.status {
                S::Active => StoredPartnerStatus::Active,
                S::Suspended => StoredPartnerStatus::Suspended,
            },
            privacy_contact: p.privacy_contact,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

impl From<store::Model> for crate::domain::partner::PartnerStore {
    fn from(row: store::Model) -> Self {
        Self {
            partner_id: row.partner_id,
            id: row.id,
            display_name: row.display_name,
            city: row.city,
            active: row.active,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl From<crate::domain::partner::PartnerStore> for store::Model {
    fn from(s: crate::domain::partner::PartnerStore) -> Self {
        Self {
            partner_id: s.partner_id,
            id: s.id,
            display_name: s.display_name,
            city: s.city,
            active: s.active,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

impl From<credential::Model> for crate::domain::credential::Credential {
    fn from(row: credential::Model) -> Self {
        Self {
            id: row.id,
            partner_id: row.partner_id,
            client_id: row.client_id,
            secret_hash: row.secret_hash,
            previous_secret_hash: row.previous_secret_hash,
            previous_secret_until: row.previous_secret_until,
            scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
            revoked_at: row.revoked_at,
            created_at: row.created_at,
        }
    }
}

impl From<crate::domain::credential::Credential> for credential::Model {
    fn from(c: crate::domain::credential::Credential) -> Self {
        Self {
            id: c.id,
            partner_id: c.partner_id,
            client_id: c.client_id,
            secret_hash: c.secret_hash,
            previous_secret_hash: c.previous_secret_hash,
            previous_secret_until: c.previous_secret_until,
            // Space-separated, as stored.
            scopes: c.scopes.join(" "),
            revoked_at: c.revoked_at,
            created_at: c.created_at,
        }
    }
}

impl From<consent_receipt::Model> for crate::domain::consent::Receipt {
    fn from(row: consent_receipt::Model) -> Self {
        Self {
            id: row.id,
            member_id: row.member_id,
            collector: row.collector,
            grantee: row.grantee,
            // Comma-separated purpose numbers and a JSON array, as stored.
            purposes: row
                .purposes
                .split(',')
                .filter_map(|p| p.parse().ok())
                .collect(),
            data_categories: serde_json::from_str(&row.data_categories).unwrap_or_default(),
            processing_method: row.processing_method,
            policy_version: row.policy_version,
            channel: row.channel,
            state: row.status.into(),
            valid_from: row.valid_from,
            valid_until: row.valid_until,
            alliance_id: row.alliance_id,
            issued_at: row.issued_at,
            terms_version: row.terms_version,
        }
    }
}

impl From<access_record::Model> for crate::domain::audit::AccessRecord {
    fn from(row: access_record::Model) -> Self {
        Self {
            access: crate::domain::audit::Access {
                seq: row.seq,
                accessor: row.accessor,
                source: row.source,
                member_id: row.member_id,
                purpose: row.purpose,
                receipt_id: row.receipt_id,
                allowed: row.allowed,
                at_millis: row.at,
                via_service: row.via_service.unwrap_or_default(),
                acting_partner: row.acting_partner.unwrap_or_default(),
            },
            chain_hash: row.hash,
        }
    }
}

impl consent::Model {
    /// The consent as the domain judges it; `None` for a purpose number no contract knows
    /// (never written).
    pub fn to_domain(&self) -> Option<crate::domain::consent::Consent> {
        use crate::domain::consent::Consent;
        Some(Consent {
            receipt_id: self.receipt_id.clone(),
            collector: self.collector.clone(),
            grantee: self.grantee.clone(),
            purpose: crate::domain::purpose::Purpose::from_number(self.purpose)?,
            state: self.state.into(),
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            alliance_id: self.alliance_id.clone(),
            terms_version: self.terms_version,
        })
    }
}

impl From<crate::domain::partner::AllianceStatus> for StoredAllianceStatus {
    fn from(status: crate::domain::partner::AllianceStatus) -> Self {
        use crate::domain::partner::AllianceStatus as S;
        match status {
            S::Proposed => Self::Proposed,
            S::Active => Self::Active,
            S::Ended => Self::Ended,
        }
    }
}

impl From<StoredAllianceStatus> for crate::domain::partner::AllianceStatus {
    fn from(status: StoredAllianceStatus) -> Self {
        match status {
            StoredAllianceStatus::Proposed => Self::Proposed,
            StoredAllianceStatus::Active => Self::Active,
            StoredAllianceStatus::Ended => Self::Ended,
        }
    }
}

impl From<StoredConsentState> for crate::domain::consent::ConsentState {
    fn from(state: StoredConsentState) -> Self {
        match state {
            // A lapse the sweep announced: still the member's grant, no longer live.
            StoredConsentState::Granted
            | StoredConsentState::Expired
            | StoredConsentState::Stale => Self::Granted,
            StoredConsentState::Withdrawn => Self::Withdrawn,
        }
    }
}

impl From<crate::domain::consent::ConsentState> for StoredConsentState {
    fn from(state: crate::domain::consent::ConsentState) -> Self {
        match state {
            crate::domain::consent::ConsentState::Granted => Self::Granted,
            crate::domain::consent::ConsentState::Withdrawn => Self::Withdrawn,
        }
    }
}

entity!(partner, "partners", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub kind: crate::store::entities::StoredPartnerKind,
    pub display_name: String,
    pub status: crate::store::entities::StoredPartnerStatus,
    pub privacy_contact: String,
    pub created_at: i64,
    pub updated_at: i64,
});

entity!(alliance, "alliances", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub display_name: String,
    /// Purpose numbers, comma-separated.
    pub purposes: String,
    /// JSON array of strings.
    pub data_categories: String,
    pub processing_method: String,
    pub valid_from: i64,
    pub valid_until: i64,
    pub status: crate::store::entities::StoredAllianceStatus,
    pub terms_version: i64,
    pub created_at: i64,
    /// Verification methods the partners accept from each other for linking, comma-separated;
    /// empty accepts any.
    pub accepted_methods: String,
});

entity!(alliance_partner, "alliance_partners", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub alliance_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner_id: String,
    pub accepted: bool,
});

entity!(member, "members", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub status: crate::store::entities::StoredMemberStatus,
    pub created_at: i64,
    pub erased_at: Option<i64>,
});

entity!(identifier, "identifiers", {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(indexed)]
    pub member_id: String,
    /// The partner that submitted it.
    pub partner_id: String,
    pub kind: String,
    pub namespace: String,
    /// Keyed hash of kind, namespace and value; unique with the partner, and the lead of
    /// that index, which every lookup by hash uses ([`crate::store::migration`]).
    pub lookup_hash: String,
    /// The value, encrypted.
    pub sealed: Vec<u8>,
    pub verified: bool,
    pub created_at: i64,
    /// How the partner verified it (`sms_code`, …); empty when unstated or unverified.
    pub verification_method: String,
});

entity!(profile, "profiles", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner_id: String,
    /// The fields, JSON, encrypted.
    pub sealed: Vec<u8>,
    pub updated_at: i64,
});

entity!(scoped_id, "scoped_ids", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub scoped_id: String,
    /// Found with the member: one index on (member, partner) ([`crate::store::migration`]).
    pub partner_id: String,
    pub member_id: String,
    /// When the partner erased its relationship with the member: the id then answers
    /// MEMBER_ERASED and is never handed out again.
    pub erased_at: Option<i64>,
});

entity!(consent_receipt, "consent_receipts", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub member_id: String,
    pub collector: String,
    pub grantee: String,
    pub purposes: String,
    pub data_categories: String,
    pub processing_method: String,
    pub policy_version: String,
    pub channel: i32,
    pub status: crate::store::entities::StoredConsentState,
    pub valid_from: i64,
    pub valid_until: i64,
    pub alliance_id: String,
    pub issued_at: i64,
    /// The alliance's terms version the member was shown; 0 on receipts made before it was kept.
    pub terms_version: i64,
});

entity!(consent, "consents", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub grantee: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub purpose: i32,
    #[sea_orm(primary_key, auto_increment = false)]
    pub collector: String,
    pub receipt_id: String,
    pub state: crate::store::entities::StoredConsentState,
    pub valid_from: i64,
    pub valid_until: i64,
    pub alliance_id: String,
    pub terms_version: i64,
    pub updated_at: i64,
});

entity!(access_record, "access_records", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    #[sea_orm(indexed)]
    pub accessor: String,
    #[sea_orm(indexed)]
    pub source: String,
    pub member_id: String,
    pub purpose: i32,
    pub receipt_id: String,
    pub allowed: bool,
    pub at: i64,
    pub hash: String,
    /// The mesh service that asked, and for which partner (internal CheckConsents).
    pub via_service: Option<String>,
    pub acting_partner: Option<String>,
});

entity!(audit_head, "audit_head", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    pub seq: i64,
    pub hash: String,
});

entity!(store, "stores", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub display_name: String,
    pub city: String,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
});

entity!(credential, "credentials", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub partner_id: String,
    #[sea_orm(unique)]
    pub client_id: String,
    /// Keyed hash of the secret; the secret itself is never stored.
    pub secret_hash: String,
    pub previous_secret_hash: Option<String>,
    pub previous_secret_until: Option<i64>,
    /// Space-separated scopes.
    pub scopes: String,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
});

entity!(member_merge, "member_merges", {
    /// The member folded into another; its records that cannot move (the hash-chained access
    /// log) keep its id, so reads about the survivor look here too.
    #[sea_orm(primary_key, auto_increment = false)]
    pub duplicate_id: String,
    #[sea_orm(indexed)]
    pub survivor_id: String,
    pub merged_at: i64,
});
