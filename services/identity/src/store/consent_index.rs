//! The consent check is the mesh's hot path: every other service asks it for every member it
//! touches. This index keeps, per (grantee, grantee's scoped id, purpose), the granted consent
//! rows the database holds — never a verdict: expiry, terms and the alliance are judged at each
//! check, so time alone never makes an entry wrong.
//!
//! Entries are dropped by the consent feed: every change that can alter them (grant,
//! withdrawal, expiry, staleness, erasure, merge) appends an outbox event in the same
//! transaction. A writer on this replica drops what it changed before it answers (`catch_up`
//! runs after its commit); another replica's writes are seen within one feed poll.
//!
//! A load that raced with a change is not kept: an entry is stored only when no event was
//! applied between the start of its load and its insertion (the epoch check).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use lianyu_kit::feed::Feed;
use tokio_util::sync::CancellationToken;

use lianyu_proto::identity::v1::{ConsentEventKind, WatchConsentEventsResponse};

use crate::domain::consent::Purpose;

/// One granted consent row, as the check needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Granted {
    pub(crate) receipt_id: String,
    pub(crate) collector: String,
    pub(crate) valid_from: i64,
    pub(crate) valid_until: i64,
    pub(crate) alliance_id: String,
    pub(crate) terms_version: i64,
}

/// (grantee, the grantee's scoped id): what a feed event names.
type Key = (String, String);

/// Entries kept at most; the index is emptied when it fills (a rebuild is just misses).
const CAPACITY: usize = 250_000;

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, HashMap<Purpose, Arc<Vec<Granted>>>>,
    /// Bumped by every applied event batch.
    epoch: u64,
}

#[derive(Clone, Default)]
pub(crate) struct ConsentIndex {
    inner: Arc<Mutex<Inner>>,
    /// The outbox sequence applied so far; the lock also serialises catch-ups.
    cursor: Arc<tokio::sync::Mutex<Option<i64>>>,
}

impl ConsentIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current epoch, taken before a load from the database.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    pub(crate) fn get(
        &self,
        grantee: &str,
        scoped: &str,
        purpose: Purpose,
    ) -> Option<Arc<Vec<Granted>>> {
        self.lock()
            .entries
            .get(&(grantee.to_owned(), scoped.to_owned()))
            .and_then(|by_purpose| by_purpose.get(&purpose))
            .cloned()
    }

    /// Keeps loaded entries unless an event was applied since `epoch` was read.
    pub(crate) fn insert(
        &self,
        epoch: u64,
        grantee: &str,
        purpose: Purpose,
        loaded: impl IntoIterator<Item = (String, Vec<Granted>)>,
    ) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if inner.entries.len() >= CAPACITY {
            inner.entries.clear();
        }
        for (scoped, rows) in loaded {
            inner
                .entries
                .entry((grantee.to_owned(), scoped))
                .or_default()
                .insert(purpose, Arc::new(rows));
        }
    }

    /// Applies every outbox event after the cursor. The first call only sets the cursor to
    /// the head: the index starts empty, so nothing older can be in it.
    pub(crate) async fn catch_up(&self, feed: &Feed) {
        let mut cursor = self.cursor.lock().await;
        loop {
            let Some(after) = *cursor else {
                match feed.head().await {
                    Ok(head) => *cursor = Some(head),
                    Err(e) => {
                        tracing::warn!(error = %e, "consent index: cannot read the feed head");
                        self.clear();
                    }
                }
                return;
            };
            let batch = match feed.read_after(after, None, 1_000).await {
                Ok(batch) => batch,
                Err(e) => {
                    // Without the events the index cannot be trusted: start over.
                    tracing::warn!(error = %e, "consent index: feed read failed, clearing");
                    self.clear();
                    *cursor = None;
                    return;
                }
            };
            let full = batch.len() == 1_000;
            let mut inner = self.lock();
            for event in &batch {
                *cursor = Some(event.seq);
                let Some(e) = event.decode::<WatchConsentEventsResponse>() else {
                    continue;
                };
                if e.kind == ConsentEventKind::MembersMerged as i32 {
                    // A merge moves consents between members: rare, so start over.
                    inner.entries.clear();
                    continue;
                }
                // The grantee is the feed row's partner (an erasure request names none).
                let member = e.member.strip_prefix("members/").unwrap_or_default();
                if let Some(grantee) = &event.partner_id {
                    inner.entries.remove(&(grantee.clone(), member.to_owned()));
                }
            }
            if !batch.is_empty() {
                inner.epoch = inner.epoch.wrapping_add(1);
            }
            drop(inner);
            if !full {
                return;
            }
        }
    }

    fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.epoch = inner.epoch.wrapping_add(1);
    }

    /// Follows the feed for other replicas' writes until `stopping`.
    pub(crate) async fn follow(self, feed: Feed, stopping: CancellationToken) {
        let mut changes = feed.changes(stopping);
        while changes.next().await {
            self.catch_up(&feed).await;
        }
    }
}
