//! The entitlements tables.

#![allow(unreachable_pub, reason = "sea-orm's derives generate pub items")]

use lianyu_kit::entity;
use sea_orm::entity::prelude::*;

/// A benefit's state as stored (see `domain::BenefitState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum State {
    #[sea_orm(string_value = "draft")]
    Draft,
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "paused")]
    Paused,
    #[sea_orm(string_value = "ended")]
    Ended,
}

/// A benefit's kind as stored (see `domain::BenefitKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(24))")]
pub enum Kind {
    #[sea_orm(string_value = "fixed_coupon")]
    FixedCoupon,
    #[sea_orm(string_value = "percent_coupon")]
    PercentCoupon,
    #[sea_orm(string_value = "threshold_coupon")]
    ThresholdCoupon,
    #[sea_orm(string_value = "points")]
    Points,
    #[sea_orm(string_value = "stored_value")]
    StoredValue,
    #[sea_orm(string_value = "gift")]
    Gift,
    #[sea_orm(string_value = "service")]
    Service,
}

entity!(benefit, "benefits", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub display_name: String,
    pub kind: crate::store::entities::Kind,
    pub issuer: String,
    pub funder: String,
    /// Integer minor units; the currency alongside.
    pub value_currency: Option<String>,
    pub value_minor_units: Option<i64>,
    pub threshold_currency: Option<String>,
    pub threshold_minor_units: Option<i64>,
    pub percent_off_bps: i32,
    pub budget_units: i64,
    pub granted_units: i64,
    pub per_member_limit: i32,
    pub valid_from: i64,
    pub valid_until: i64,
    pub state: crate::store::entities::State,
    pub created_at: i64,
});

// Who may see a benefit (issuer, funder, honouring partners) and in which role: the tenant
// scope of every benefit query.
entity!(benefit_party, "benefit_parties", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub benefit_id: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub partner_id: String,
    pub honours: bool,
});
