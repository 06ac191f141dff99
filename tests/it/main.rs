//! Mesh-level tests: the whole mesh as a partner's integration engineer meets it.

#![allow(clippy::unwrap_used, reason = "a test crate")]

mod audience;
mod balances;
mod campaign_report;
mod comarketing;
mod discovery;
mod edge;
mod entitlements;
mod keys;
mod live;
mod live_show;
mod rollout;
mod settlement;
mod support;
mod wallets;
