//! Background upkeep: consents whose window ended are marked expired and announced on the
//! grantee's feed, so services that cached a consent hear that it lapsed.

use std::time::Duration;

use sea_orm::TransactionTrait;
use tokio_util::sync::CancellationToken;

use super::{Store, now};
use crate::domain::IdentityError;

/// How often the sweep looks for ended windows (one indexed range query when none).
const EVERY: Duration = Duration::from_secs(2);
/// Consents expired per transaction.
const BATCH: u64 = 500;

/// Runs until `stopping` is cancelled.
pub(crate) async fn expire_consents(store: Store, stopping: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = stopping.cancelled() => return,
        }
        loop {
            match expire_batch(&store).await {
                Ok(n) => {
                    if n > 0 {
                        store.feed.published();
                        tracing::info!(expired = n, "consents expired");
                    }
                    if (n as u64) < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consent expiry sweep failed; retrying later");
                    break;
                }
            }
        }
    }
}

async fn expire_batch(store: &Store) -> Result<usize, IdentityError> {
    let txn = store
        .db
        .begin()
        .await
        .map_err(lianyu_kit::storage::StorageError::from)?;
    let n = Store::expire_due(&txn, &store.secrets, now(), BATCH).await?;
    txn.commit()
        .await
        .map_err(lianyu_kit::storage::StorageError::from)?;
    Ok(n)
}
