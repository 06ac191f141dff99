//! The drop gate: an in-memory count of a benefit's units left, in front of the database, so
//! a rush of claims meets a semaphore rather than the writer. Each replica's gate starts from
//! the units the database has left (an upper bound of what this replica can hand out); the
//! database's conditional update stays the judge, so no number of replicas over-grants.
//!
//! A claim takes a permit before any read or write and gives it back when it fails for its
//! own reasons (the member's limit, no consent), so a later claimer can have the unit; it
//! waits (within its deadline) while permits are held by claims still in flight, rather than
//! being refused a unit that may come back. When every permit is used, or the database says
//! the budget is spent, the gate closes: claims are then answered BUDGET_EXHAUSTED at once. A
//! closed gate is checked against the database again after [`RECHECK`] (another replica may
//! have grown the budget).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

use crate::domain::Benefit;

/// How long a closed gate is trusted before the database is asked again.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// One benefit's gate.
pub(crate) struct Gate {
    loaded: OnceCell<Loaded>,
    consumed: AtomicUsize,
    closed_at: Mutex<Option<Instant>>,
}

/// What a gate knows once it has read the benefit.
pub(crate) struct Loaded {
    /// The definition as read when the gate opened (parties, terms); the database still checks
    /// state and budget on every unit.
    pub(crate) benefit: Benefit,
    permits: Arc<Semaphore>,
    initial: usize,
}

/// A claim's hold on one unit: used with [`Permit::used`], given back when dropped.
pub(crate) struct Permit {
    permit: Option<OwnedSemaphorePermit>,
}

/// The gates of one replica, by benefit id.
#[derive(Clone, Default)]
pub(crate) struct Gates {
    gates: Arc<Mutex<HashMap<String, Arc<Gate>>>>,
}

impl Gates {
    /// The gate of `id`, made (not yet loaded) on first use; a gate closed longer than
    /// [`RECHECK`] ago is replaced, so it is loaded again from the database.
    pub(crate) fn gate(&self, id: &str) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = gates.get(id)
            && !g.stale()
        {
            return g.clone();
        }
        let fresh = Arc::new(Gate {
            loaded: OnceCell::new(),
            consumed: AtomicUsize::new(0),
            closed_at: Mutex::new(None),
        });
        gates.insert(id.to_owned(), fresh.clone());
        fresh
    }

    /// Forgets `id`'s gate (its budget grew here): the next claim loads it afresh.
    pub(crate) fn forget(&self, id: &str) {
        let old = self
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        // Claims waiting on the old gate are answered by the database, not left waiting.
        if let Some(g) = old
            && let Some(l) = g.loaded.get()
        {
            l.permits.close();
        }
    }
}

impl Gate {
    /// Loads the gate with `benefit` and the units the database has left, once.
    pub(crate) async fn load<E>(
        &self,
        read: impl AsyncFnOnce() -> Result<Benefit, E>,
    ) -> Result<&Loaded, E> {
        self.loaded
            .get_or_try_init(async || {
                let benefit = read().await?;
                let left = usize::try_from(benefit.budget_units - benefit.granted_units)
                    .unwrap_or(0)
                    .min(Semaphore::MAX_PERMITS);
                let permits = Arc::new(Semaphore::new(left));
                if left == 0 {
                    permits.close();
                    self.mark_closed();
                }
                Ok(Loaded {
                    benefit,
                    permits,
                    initial: left,
                })
            })
            .await
    }

    /// A permit for one unit, waiting while claims in flight hold the rest; `None` once the
    /// gate is closed (every unit used, or the database found none left).
    pub(crate) async fn enter(&self) -> Option<Permit> {
        let loaded = self.loaded.get()?;
        let permit = loaded.permits.clone().acquire_owned().await.ok()?;
        Some(Permit {
            permit: Some(permit),
        })
    }

    /// The claim holding `permit` got its unit: the permit is spent, and the gate closes when
    /// all are.
    pub(crate) fn used(&self, mut permit: Permit) {
        if let Some(p) = permit.permit.take() {
            p.forget();
        }
        let Some(loaded) = self.loaded.get() else {
            return;
        };
        if self.consumed.fetch_add(1, Ordering::AcqRel) + 1 >= loaded.initial {
            self.close();
        }
    }

    /// The database said the budget is spent (another replica used the rest).
    pub(crate) fn close(&self) {
        if let Some(l) = self.loaded.get() {
            l.permits.close();
        }
        self.mark_closed();
    }

    fn mark_closed(&self) {
        let mut at = self.closed_at.lock().unwrap_or_else(|p| p.into_inner());
        at.get_or_insert_with(Instant::now);
    }

    fn stale(&self) -> bool {
        self.closed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() >= RECHECK)
    }
}
