//! The comarketing tables. Members are stored by mesh id only, each with a dense number
//! (`members.idx`) that segment results, as bitmaps, are made of.

#![allow(unreachable_pub, reason = "sea-orm's derives generate pub items")]

use lianyu_kit::entity;
use sea_orm::entity::prelude::*;

/// A campaign's state as stored (see `domain::CampaignState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum State {
    #[sea_orm(string_value = "draft")]
    Draft,
    #[sea_orm(string_value = "scheduled")]
    Scheduled,
    #[sea_orm(string_value = "running")]
    Running,
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
    /// The alliance whose contact policy applies; empty for the default.
    pub alliance: String,
    /// Contact channel numbers, comma-separated.
    pub channels: String,
    /// Spent so far, minor units of the budget's currency.
    pub spent: i64,
    pub exhausted_at: Option<i64>,
    pub updated_at: i64,
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

// Benefits and sessions attached to a campaign; the feeds look campaigns up by target.
entity!(campaign_link, "campaign_links", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub campaign_id: String,
    /// "benefit" or "session".
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub target: String,
    pub position: i32,
});

// Every member the service has heard of, by mesh id, with a dense number.
entity!(member, "members", {
    #[sea_orm(primary_key)]
    pub idx: i32,
    #[sea_orm(unique)]
    pub mesh_member: String,
    /// When the member first became known; not moved afterwards. No rule reads it:
    /// "inactive" reads only the facts a segment's owner may read (`store::Sight`).
    pub last_at: i64,
});

// A partner's latest erasure of a member, kept after its records there went: live's and
// entitlements' feeds run behind identity's, and what they tell late about the member through
// that partner, from before this time, is not recorded again. A number, a partner and a time:
// nothing that names the person.
entity!(erasure, "member_erasures", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_idx: i32,
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner: String,
    pub erased_at: i64,
});

// A member merged into another (identity's merge): what other feeds tell late about it counts
// for the survivor.
entity!(merged_member, "merged_members", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_idx: i32,
    pub into_idx: i32,
});

// What the mesh knows of a member at a partner: enrolled, tag, tier; joined, ordered,
// claimed, redeemed (subject: the session or benefit; partner: through whom).
entity!(member_fact, "member_facts", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub subject: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub member_idx: i32,
    pub first_at: i64,
    pub last_at: i64,
});

// Consents in force by member, from identity's mesh feed: what counts and exports may rely on
// between synchronous checks.
entity!(consent, "consents", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub grantee: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub purpose: i32,
    #[sea_orm(primary_key, auto_increment = false)]
    pub collector: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub member_idx: i32,
});

// A partner's segment of a campaign, its rule (protobuf bytes) and its last result (a
// serialized bitmap of member numbers).
entity!(segment, "segments", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub campaign_id: String,
    pub owner: String,
    pub display_name: String,
    pub rule: Vec<u8>,
    pub created_at: i64,
    pub computed_at: Option<i64>,
    pub result: Option<Vec<u8>>,
    /// The operation computing it now, if any.
    pub computing: Option<String>,
});

// Long-running operations: segment computations.
entity!(operation, "operations", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub partner: String,
    /// "campaigns/{c}/segments/{s}".
    pub target: String,
    /// "running", "done", "failed", "cancelled".
    pub state: String,
    pub scanned: i64,
    pub total: i64,
    pub error: String,
    pub created_at: i64,
    pub done_at: Option<i64>,
});

// Every overlap query, for every participant to read.
entity!(overlap_query, "overlap_queries", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub campaign_id: String,
    pub partner: String,
    pub segment: String,
    pub other_segment: String,
    pub overlap: i64,
    pub suppressed: bool,
    pub asked_at: i64,
});

// Marketing contacts, held and sent, of every member by every partner.
entity!(contact, "contacts", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(indexed)]
    pub member_idx: i32,
    pub partner: String,
    pub campaign_id: String,
    pub channel: i32,
    pub requested_at: i64,
    /// A held slot is released at this time unless sent.
    pub expires_at: i64,
    pub sent_at: Option<i64>,
});

// One row per contacted member: the lock that serializes cap decisions for the member.
entity!(contact_lock, "contact_locks", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_idx: i32,
    pub version: i64,
});

// Members' quiet hours.
entity!(quiet_hours, "quiet_hours", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_idx: i32,
    pub start_minute: i32,
    pub end_minute: i32,
    pub utc_offset_minutes: i32,
});

// Contact policies: "default" or an alliance id.
entity!(contact_policy, "contact_policies", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub max_contacts: i32,
    pub window_days: i32,
});

// Funnel events, from partners and the feeds; `key` makes each source's event count once.
entity!(funnel_event, "funnel_events", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    #[sea_orm(indexed)]
    pub campaign_id: String,
    pub member_idx: i32,
    /// Through which partner.
    pub partner: String,
    pub kind: String,
    pub at: i64,
    /// ORDERED: the amount in minor units (negative for a cancellation); 0 otherwise.
    pub amount: i64,
});

// A campaign's running totals from the feeds: cost per funder ("cost:{partner}"), "claims",
// "redemptions", "orders", "gmv".
entity!(campaign_tally, "campaign_tallies", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub campaign_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub value: i64,
});

// The co-hosts of live sessions, from live's feed: a session counts toward a campaign only
// when a participant hosts it.
entity!(session_host, "session_hosts", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner: String,
});
