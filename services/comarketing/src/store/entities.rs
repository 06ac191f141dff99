//! The comarketing tables.

#![allow(unreachable_pub, reason = "sea-orm's derives generate pub items")]

use lianyu_kit::entity;
use sea_orm::entity::prelude::*;

/// A campaign's state as stored (see `domain::CampaignState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum State {
    #[sea_orm(string_value = "proposed")]
    Proposed,
    #[sea_orm(string_value = "accepted")]
    Accepted,
    #[sea_orm(string_value = "live")]
    Live,
    #[sea_orm(string_value = "ended")]
    Ended,
}

entity!(campaign, "campaigns", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub display_name: String,
    pub start_time: i64,
    pub end_time: i64,
    pub state: crate::store::entities::State,
    pub created_at: i64,
});

// Who takes part in which campaign, with its budget share and acceptance: the tenant scope of
// every campaign query.
entity!(campaign_partner, "campaign_partners", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub campaign_id: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub partner_id: String,
    /// Order among the participants, the proposer first.
    pub position: i32,
    pub accepted: bool,
    /// Budget share in integer minor units, with its currency; none when the partner funds
    /// nothing.
    pub budget_currency: Option<String>,
    pub budget_minor_units: Option<i64>,
});
