//! Background upkeep that runs in bounded batches: sweeps of expired rows, lapsed consents,
//! later reservations and contact windows. One loop for all of them: a batch, again at once
//! while batches come back full, then a pause until the next period (or an early wake).

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Runs `batch` every `period` until `stopping`, and at once when `wake` is notified. A batch
/// returns how many rows it handled (`Ok(0)`: nothing to do) or an error, which is logged and
/// retried at the next period; `name` names the job in those lines.
pub async fn periodic<F, Fut, E>(
    name: &'static str,
    period: Duration,
    first_wait: bool,
    wake: Option<Arc<Notify>>,
    stopping: CancellationToken,
    mut batch: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, E>>,
    E: std::fmt::Display,
{
    let mut wait = first_wait;
    loop {
        if wait {
            let woken = async {
                match &wake {
                    Some(w) => w.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = woken => {}
                () = stopping.cancelled() => return,
            }
        }
        wait = true;
        // Batch after batch while there is work, so a backlog never waits a period per batch.
        loop {
            match batch().await {
                Ok(0) => break,
                Ok(n) => tracing::info!(job = name, handled = n, "background batch done"),
                Err(e) => {
                    tracing::warn!(job = name, error = %e, "background batch failed; retrying later");
                    break;
                }
            }
        }
    }
}
