//! Lianyu comarketing: joint campaigns, consent-filtered audiences, contact caps, the AIPL funnel.
//!
//! `run` serves it alone; `mount` adds it to a shared server (`lianyu up`).

mod api;
pub mod domain;
mod store;

pub use store::synthetic;

/// The service's name: its database, its schema, its config prefix.
pub const NAME: &str = "comarketing";

lianyu_kit::service_entry_points!(NAME, store::Migrator, api::register);
