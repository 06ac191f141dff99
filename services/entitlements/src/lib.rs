//! Lianyu entitlements: benefits, wallets, two-phase redemptions, the ledger and settlement.
//!
//! `run` serves it alone; `mount` adds it to a shared server (`lianyu up`).

mod api;
pub mod domain;
mod store;

/// The service's name: its database, its schema, its config prefix.
pub const NAME: &str = "entitlements";

lianyu_kit::service_entry_points!(NAME, store::Migrator, api::register);

/// What `lianyu audit ledger` found: how many ledger transactions there are, each one whose
/// postings do not sum to zero in a currency (transaction id, currency, sum), and each
/// member's points or stored-value account that differs from its postings (benefit id, what
/// the postings say, what the account and its pending points hold; no member is named).
#[derive(Debug, Default)]
pub struct LedgerAudit {
    pub transactions: u64,
    pub unbalanced: Vec<(String, String, i64)>,
    pub balances: Vec<(String, i64, i64)>,
}

/// Recomputes every ledger transaction's sum and every member balance from the postings, on
/// the entitlements database `db`. Read-only.
pub async fn audit_ledger(
    db: &sea_orm::DatabaseConnection,
) -> Result<LedgerAudit, lianyu_kit::KitError> {
    Ok(LedgerAudit {
        transactions: store::transactions(db).await?,
        unbalanced: store::unbalanced(db).await?,
        balances: store::balance_differences(db).await?,
    })
}
