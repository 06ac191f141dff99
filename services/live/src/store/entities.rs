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
});

// Who co-hosts which session: the tenant scope of every session query.
entity!(session_host, "session_hosts", {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    #[sea_orm(primary_key, auto_increment = false, indexed)]
    pub partner_id: String,
    /// Order among the hosts, the creator first.
    pub position: i32,
});
