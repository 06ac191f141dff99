//! Background upkeep: consents whose window ended, whose alliance ended or whose alliance's
//! terms changed are marked expired or stale and announced on the grantee's feed in bounded
//! batches (one transaction each), so services that cached a consent hear that it lapsed, and
//! a very large alliance never makes one huge transaction.

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
    let wake = store.sweep_wake.clone();
    lianyu_kit::jobs::periodic("consent-lapses", EVERY, true, Some(wake), stopping, || {
        let store = store.clone();
        async move {
            let n = expire_batch(&store).await?;
            if n > 0 {
                store.feed.published();
            }
            Ok::<u64, IdentityError>(n as u64)
        }
    })
    .await;
}

async fn expire_batch(store: &Store) -> Result<usize, IdentityError> {
    let txn = store
        .db
        .begin()
        .await
        .map_err(lianyu_kit::storage::StorageError::from)?;
    let at = now();
    let mut n = Store::expire_due(&txn, &store.secrets, &store.feed, at, BATCH).await?;
    n += Store::lapse_due(&txn, &store.secrets, &store.feed, at, BATCH).await?;
    txn.commit()
        .await
        .map_err(lianyu_kit::storage::StorageError::from)?;
    Ok(n)
}
