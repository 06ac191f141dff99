//! The live tables.

#![allow(unreachable_pub, reason = "sea-orm's derives generate pub items")]

use lianyu_kit::entity;
use sea_orm::entity::prelude::*;

/// A session's state as stored (see `domain::SessionState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum State {
    #[sea_orm(string_value = "scheduled")]
    Scheduled,
    #[sea_orm(string_value = "live")]
    Live,
    #[sea_orm(string_value = "ended")]
    Ended,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

entity!(session, "sessions", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub title: String,
    pub store_partner_id: Option<String>,
    pub store_id: Option<String>,
    pub stream_url: String,
    pub scheduled_start: i64,
    pub state: crate::store::entities::State,
    pub created_by: String,
    pub created_at: i64,
    /// Presenters, assistants, guides and revenue shares, as JSON (store.rs `StoredProfile`).
    pub profile: String,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// The session's pseudonym salt.
    pub salt: String,
    pub peak_viewers: i64,
    /// Whether every host has accepted at least once (domain `Session::announced`).
    pub announced: bool,
});

// Who co-hosts which session: the tenant scope of every session query.
entity!(session_host, "session_hosts", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub partner_id: String,
    /// Order among the hosts, the creator first.
    pub position: i32,
    /// Whether the host has accepted to co-host (the creator always has; hosts of sessions
    /// scheduled before acceptance existed count as having accepted).
    pub accepted: bool,
});

// A product on show in a session.
entity!(product, "products", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub session_id: String,
    pub sku: String,
    pub title: String,
    pub currency: String,
    pub price: i64,
    pub seller_id: String,
    pub category: String,
    pub pinned: bool,
});

// Every pin, kept so a replay can jump to the moment a product was presented.
entity!(pin_marker, "pin_markers", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub session_id: String,
    pub product_id: String,
    pub pinned_at: i64,
    pub offset_millis: i64,
});

// A flash sale; `remaining` only ever changes by one conditional update.
entity!(flash_sale, "flash_sales", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub session_id: String,
    pub product_id: String,
    pub currency: String,
    pub price: i64,
    pub total_stock: i64,
    pub remaining: i64,
    pub per_member_limit: i32,
    pub starts_at: i64,
    pub ends_at: i64,
});

// Units each member holds of a flash sale: the per-member limit's one row.
entity!(sale_buyer, "sale_buyers", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub flash_sale_id: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub member_id: String,
    pub bought: i32,
});

// An order: the buyer by mesh id only (NULL once erased), with its session pseudonym.
entity!(order, "orders", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub session_id: String,
    #[sea_orm(indexed)]
    pub member_id: Option<String>,
    pub pseudonym: String,
    #[sea_orm(indexed)]
    pub placed_by: String,
    pub product_id: String,
    pub flash_sale_id: Option<String>,
    pub quantity: i32,
    pub currency: String,
    pub amount: i64,
    pub seller_id: String,
    pub store: String,
    pub guide: String,
    pub share_code: String,
    pub payment_reference: String,
    pub cancelled: bool,
    pub created_at: i64,
});

// Identified viewers of a session, once each: unique viewers and conversion.
entity!(viewer, "session_viewers", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub member_id: String,
    pub partner_id: String,
    pub joined_at: i64,
});

// Each replica's viewers of a session, refreshed every few seconds: viewers now and peak
// across replicas, and anonymous joins counted without a write per join.
entity!(presence, "presence", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub replica: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub session_id: String,
    pub viewers: i64,
    pub anonymous_joins: i64,
    pub updated_at: i64,
});

// A coupon drop; `remaining` only ever changes by one conditional update.
entity!(coupon_drop, "coupon_drops", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub session_id: String,
    pub benefit_id: String,
    pub quantity: i64,
    pub remaining: i64,
    pub opens_at: i64,
    pub closes_at: i64,
});

// A claim of a drop's unit, keyed by the claiming partner's request id: PENDING from taking
// the unit until entitlements answers, then DONE with the wallet item's id. No member id:
// the claim is the partner's request, the unit is entitlements'.
entity!(drop_claim, "drop_claims", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub drop_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    #[sea_orm(indexed)]
    pub session_id: String,
    /// A hash of what was asked (the member), so a reused request id is told apart.
    pub fingerprint: String,
    pub wallet_item_id: Option<String>,
    pub created_at: i64,
});
