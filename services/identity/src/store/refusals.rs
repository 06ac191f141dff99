//! Which tokens identity refuses, kept by its own mesh events: a revoked credential's, a
//! suspended partner's, a closed store's. Applied in commit order — by the call that made the
//! change before it answers (so its caller sees it at once), and by a follower for what
//! another replica committed — so a replayed request, answered with its stored reply, never
//! undoes a later change.

use std::sync::Arc;

use lianyu_kit::{auth::TokenVerifier, feed::Feed, storage::StorageError};
use lianyu_proto::identity::internal::v1::WatchMeshEventsResponse;
use tokio_util::sync::CancellationToken;

use super::mesh::MESH_TOPIC;

/// Mesh events read at once at most.
const BATCH: u64 = 1_000;

/// The mesh events applied to the verifier so far.
#[derive(Clone)]
pub(crate) struct Refusals {
    verifier: Arc<TokenVerifier>,
    cursor: Arc<tokio::sync::Mutex<i64>>,
}

impl Refusals {
    /// Starts after the feed's head: read it before loading the lists of refused tokens, so
    /// that nothing committed in between is missed.
    pub(crate) async fn from_head(
        verifier: Arc<TokenVerifier>,
        feed: &Feed,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            verifier,
            cursor: Arc::new(tokio::sync::Mutex::new(feed.head().await?)),
        })
    }

    /// Applies every mesh event committed after the cursor.
    pub(crate) async fn catch_up(&self, feed: &Feed) {
        let mut cursor = self.cursor.lock().await;
        loop {
            let batch = match feed.read_after(*cursor, Some(MESH_TOPIC), BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    // Read again at the next change or poll; the cursor has not moved.
                    tracing::warn!(error = %e, "cannot read the mesh events for token refusals");
                    return;
                }
            };
            for event in &batch {
                if let Some(e) = event.decode::<WatchMeshEventsResponse>() {
                    lianyu_kit::directory::refuse_as_told(&e, &self.verifier);
                }
                *cursor = event.seq;
            }
            if (batch.len() as u64) < BATCH {
                return;
            }
        }
    }

    /// Follows the feed for other replicas' changes until `stopping`.
    pub(crate) async fn follow(self, feed: Feed, stopping: CancellationToken) {
        let mut changes = feed.changes(stopping);
        while changes.next().await {
            self.catch_up(&feed).await;
        }
    }
}
