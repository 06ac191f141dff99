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
    pub valid_days: i32,
    pub funding_accepted: bool,
    pub top_up_bonus_bps: i32,
    pub funder_share_bps: i32,
    /// The stores and the categories it is restricted to, one per line; empty: none.
    pub stores: String,
    pub categories: String,
    pub stacking_group: String,
    /// The money budget (its currency beside) and what redemptions used of it.
    pub budget_value_currency: Option<String>,
    pub budget_value_minor_units: Option<i64>,
    pub spent_value_minor_units: i64,
    /// A larger budget proposed for a live benefit another partner funds, until the funder
    /// accepts it (the money one in the budget's currency).
    pub proposed_budget_units: Option<i64>,
    pub proposed_budget_value_minor_units: Option<i64>,
});

// A payment from a balance at a till, by its ledger transaction: what a refund gives back.
entity!(balance_spend, "balance_spends", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub transaction_id: String,
    pub benefit_id: String,
    pub member: String,
    /// The partner that took it, and its store.
    pub partner_id: String,
    pub store_id: String,
    pub points: i64,
    /// Stored value spent, or the points' worth; its currency beside (none for points
    /// without a worth).
    pub currency: Option<String>,
    pub amount: i64,
    pub refunded: bool,
    pub created_at: i64,
});

// One unit of a stacking group on an order at a partner: the primary key lets only one in,
// at any concurrency. Removed when that redemption is cancelled or refunded in full.
entity!(order_stack, "order_stacks", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub order_reference: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub stacking_group: String,
    #[sea_orm(indexed)]
    pub redemption_id: String,
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

/// A wallet unit's state as stored (see `WalletItemState` in the contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum ItemState {
    #[sea_orm(string_value = "available")]
    Available,
    #[sea_orm(string_value = "reserved")]
    Reserved,
    #[sea_orm(string_value = "redeemed")]
    Redeemed,
    #[sea_orm(string_value = "refunded")]
    Refunded,
    /// The member was erased at the partner it was granted through.
    #[sea_orm(string_value = "closed")]
    Closed,
    /// Past its expiry unused; its booked liability was released (the EXPIRY posting).
    #[sea_orm(string_value = "expired")]
    Expired,
}

/// A redemption's state as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum RedemptionState {
    #[sea_orm(string_value = "reserved")]
    Reserved,
    #[sea_orm(string_value = "confirmed")]
    Confirmed,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
    #[sea_orm(string_value = "refunded")]
    Refunded,
}

// One unit of a benefit a member holds. The member is the mesh id only; the partner it was
// granted through (`holder`) is the one that names it on the wire.
entity!(wallet_item, "wallet_items", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub benefit_id: String,
    #[sea_orm(indexed)]
    pub member: String,
    pub holder: String,
    pub state: crate::store::entities::ItemState,
    pub granted_at: i64,
    pub expires_at: i64,
    pub claim_code: Option<String>,
});

// The n-th unit of a benefit a member holds: its primary key makes the per-member limit hold
// under any concurrency (two grants counting the same n collide, and the loser is re-run).
entity!(holding, "wallet_holdings", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub benefit_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub member: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub ordinal: i32,
    pub item_id: String,
});

// One use of a unit at a till.
entity!(redemption, "redemptions", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub item_id: String,
    /// The honouring partner that redeemed it, and its store.
    #[sea_orm(indexed)]
    pub partner_id: String,
    pub store_id: String,
    pub currency: String,
    pub order_minor_units: i64,
    pub discount_minor_units: i64,
    /// Of the order, refunded so far.
    pub refunded_minor_units: i64,
    /// What it took from the benefit's money budget (the funder's part of the discount).
    pub budget_spent: i64,
    pub state: crate::store::entities::RedemptionState,
    pub hold_until: i64,
    pub created_at: i64,
});

// One posting of a ledger transaction on a partner's account: debit positive, credit
// negative, integer minor units. A transaction's postings sum to zero per currency.
entity!(posting, "ledger_postings", {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(indexed)]
    pub transaction_id: String,
    /// GRANT or REDEMPTION.
    pub kind: String,
    #[sea_orm(indexed)]
    pub partner_id: String,
    pub account: String,
    pub currency: String,
    pub amount: i64,
    pub benefit_id: String,
    pub redemption_id: Option<String>,
    #[sea_orm(indexed)]
    pub posted_at: i64,
    /// The member (mesh id) of a balance liability's sub-account (points, stored value).
    pub member_id: Option<String>,
});

// A member's points or stored-value account in one benefit, opened through `holder` (the
// partner whose id of the member opened it). `available` never goes below zero: every debit
// is one conditional update.
entity!(balance, "balances", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub benefit_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub member: String,
    pub holder: String,
    /// Points, or minor units of the benefit's currency.
    pub available: i64,
    pub closed: bool,
    pub opened_at: i64,
});

/// Where earned points stand as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum LotState {
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Added to the balance's `available`.
    #[sea_orm(string_value = "released")]
    Released,
    #[sea_orm(string_value = "reversed")]
    Reversed,
}

// Points one purchase earned: pending until `release_at`, then moved into the balance by
// one conditional update (whoever moves it first; a reversal races it the same way).
entity!(point_lot, "point_lots", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub benefit_id: String,
    #[sea_orm(indexed)]
    pub member: String,
    /// The partner that awarded them.
    pub partner_id: String,
    pub points: i64,
    pub release_at: i64,
    pub state: crate::store::entities::LotState,
    pub order_reference: String,
    pub created_at: i64,
});

// How far the ledger between two partners is closed: `pair` is "a|b" with a < b. Every
// posting transaction between them reads it (FOR SHARE on PostgreSQL) and is dated no
// earlier than `closed_until`; a close updates it, so a closed period never changes.
entity!(settlement_close, "settlement_closes", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub pair: String,
    pub closed_until: i64,
    pub closed_at: i64,
    pub closed_by: String,
});
