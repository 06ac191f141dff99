//! Lookups that share trips to the database without ever answering from the past.
//!
//! In a burst thousands of calls read the same few rows (a flash sale's session, stored
//! replies of refused calls), and on SQLite every read is a hand-off to a worker thread and
//! back. [`Batched`] lets lookups made while one is running queue up; the next goes as one
//! lookup for every key queued, each distinct key once. A lookup at an idle batcher goes at
//! once, alone — batching adds no waiting.
//!
//! Unlike a single-flight cache, a caller never joins a lookup that was already running when
//! it asked: that lookup may have read before a write the caller has seen committed (its own
//! `StartSession`, say). Every answer comes from a lookup that began after its caller asked,
//! so reads stay read-your-writes.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::oneshot;

/// Callers waiting for a lookup of their key. Cheap to clone; clones share the queue.
pub struct Batched<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Batched<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K, V> {
    queue: Mutex<Vec<(K, oneshot::Sender<V>)>>,
    /// Held by the lookup running; the next waiting caller takes the queue with it.
    turn: tokio::sync::Mutex<()>,
    /// Callers one lookup answers at most.
    most: usize,
    /// Lookups run, for tests and measurements.
    runs: AtomicUsize,
}

impl<K: Clone + Eq + Hash, V: Clone> Batched<K, V> {
    /// A batcher whose lookups answer at most `most` callers each (at least one).
    pub fn new(most: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue: Mutex::default(),
                turn: tokio::sync::Mutex::new(()),
                most: most.max(1),
                runs: AtomicUsize::new(0),
            }),
        }
    }

    /// Lookups run so far.
    pub fn runs(&self) -> usize {
        self.inner.runs.load(Ordering::Relaxed)
    }

    fn queue(&self) -> MutexGuard<'_, Vec<(K, oneshot::Sender<V>)>> {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key`, from a lookup that began after this call. `look_up` gets distinct
    /// keys and answers each, in order (a missing answer is a bug in `look_up`: its callers are
    /// asked again). Whoever's turn it is runs the lookup with its own `look_up`, so every
    /// caller must pass an equivalent one. Cancel-safe: a caller that goes away leaves the
    /// others answered.
    pub async fn get<F>(&self, key: K, look_up: impl Fn(Vec<K>) -> F) -> V
    where
        F: Future<Output = Vec<V>>,
    {
        use oneshot::error::TryRecvError;
        'ask: loop {
            let (answer, mut answered) = oneshot::channel();
            self.queue().push((key.clone(), answer));
            loop {
                // Answered by the lookup running, or our turn to run the next one.
                let turn = tokio::select! {
                    biased;
                    found = &mut answered => match found {
                        Ok(found) => return found,
                        // Taken by a lookup whose caller went away: ask again.
                        Err(_) => continue 'ask,
                    },
                    turn = self.inner.turn.lock() => turn,
                };
                match answered.try_recv() {
                    Ok(found) => return found,
                    Err(TryRecvError::Closed) => continue 'ask,
                    Err(TryRecvError::Empty) => {}
                }
                let batch: Vec<(K, oneshot::Sender<V>)> = {
                    let mut queue = self.queue();
                    let n = queue.len().min(self.inner.most);
                    queue.drain(..n).collect()
                };
                self.run(batch, &look_up).await;
                drop(turn);
                match answered.try_recv() {
                    Ok(found) => return found,
                    Err(TryRecvError::Closed) => continue 'ask,
                    // Ours did not fit in that lookup: it waits for the next.
                    Err(TryRecvError::Empty) => {}
                }
            }
        }
    }

    /// Looks up each distinct key of `batch` once and answers every caller in it.
    async fn run<F>(&self, batch: Vec<(K, oneshot::Sender<V>)>, look_up: &impl Fn(Vec<K>) -> F)
    where
        F: Future<Output = Vec<V>>,
    {
        let mut distinct: Vec<K> = Vec::new();
        let mut index: HashMap<K, usize> = HashMap::new();
        for (key, _) in &batch {
            if !index.contains_key(key) {
                index.insert(key.clone(), distinct.len());
                distinct.push(key.clone());
            }
        }
        self.inner.runs.fetch_add(1, Ordering::Relaxed);
        let values = look_up(distinct).await;
        for (key, answer) in batch {
            // A caller left without an answer (its sender dropped) asks again.
            if let Some(value) = index.get(&key).and_then(|&i| values.get(i)) {
                let _ = answer.send(value.clone());
            }
        }
    }
}

/// A lookup for [`Batched`] whose keys are a group and an id in it (a partner's request ids, a
/// drop's claims): one query per group, groups side by side, `query(group, ids)` returning the rows found by id.
/// Answers every key in order: its row, none, or its group's failure.
pub async fn by_group<G, V, E, F>(
    keys: &[(G, String)],
    query: impl Fn(G, Vec<String>) -> F,
) -> Vec<Result<Option<V>, E>>
where
    G: Ord + Clone,
    V: Clone,
    E: Clone,
    F: Future<Output = Result<HashMap<String, V>, E>>,
{
    let mut groups: std::collections::BTreeMap<&G, Vec<String>> = Default::default();
    for (group, id) in keys {
        groups.entry(group).or_default().push(id.clone());
    }
    // Groups apart are queried side by side, as the pool allows.
    let found: std::collections::BTreeMap<&G, Result<HashMap<String, V>, E>> =
        futures::future::join_all(groups.into_iter().map(|(group, ids)| {
            let asked = query(group.clone(), ids);
            async move { (group, asked.await) }
        }))
        .await
        .into_iter()
        .collect();
    keys.iter()
        .map(|(group, id)| match found.get(group) {
            Some(Ok(rows)) => Ok(rows.get(id).cloned()),
            Some(Err(e)) => Err(e.clone()),
            // Every key's group was queried above.
            None => Ok(None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicU64, time::Duration};

    use super::*;

    /// A store whose reads take a while, so that calls pile up behind one another.
    struct Slow {
        value: AtomicU64,
        reads: AtomicUsize,
    }

    impl Slow {
        async fn read(&self, keys: Vec<u32>) -> Vec<(u32, u64)> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let value = self.value.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            keys.into_iter().map(|k| (k, value)).collect()
        }
    }

    /// Hundreds of parallel reads of a few keys take a handful of lookups; each caller gets its
    /// own key's value, and a value written before a caller asked is always in its answer —
    /// even while a lookup that began before the write is still running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_reads_share_lookups_and_never_answer_from_before_they_asked() {
        let store = Arc::new(Slow {
            value: AtomicU64::new(0),
            reads: AtomicUsize::new(0),
        });
        let batched: Batched<u32, (u32, u64)> = Batched::new(256);
        let callers: Vec<_> = (0..400u32)
            .map(|i| {
                let store = store.clone();
                let batched = batched.clone();
                tokio::spawn(async move {
                    // Every fourth caller writes first, then reads: it must see its write.
                    let seen = if i % 4 == 0 {
                        store.value.fetch_add(1, Ordering::SeqCst) + 1
                    } else {
                        store.value.load(Ordering::SeqCst)
                    };
                    let key = i % 3;
                    let (got_key, got) = batched.get(key, |keys| store.read(keys)).await;
                    (key, got_key, seen, got)
                })
            })
            .collect();
        for caller in callers {
            let (key, got_key, seen, got) = caller.await.unwrap();
            assert_eq!(got_key, key, "a caller got another key's value");
            assert!(got >= seen, "read {got} after having seen {seen} written");
        }
        let reads = store.reads.load(Ordering::Relaxed);
        assert_eq!(reads, batched.runs());
        assert!(reads < 100, "{reads} lookups for 400 parallel reads");
    }

    /// A caller that goes away while its lookup runs costs the others nothing: they are
    /// answered, and the batcher keeps working.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_goes_away_leaves_the_others_answered() {
        let store = Arc::new(Slow {
            value: AtomicU64::new(7),
            reads: AtomicUsize::new(0),
        });
        let batched: Batched<u32, (u32, u64)> = Batched::new(2);
        let mut callers = Vec::new();
        for i in 0..40u32 {
            let store = store.clone();
            let batched = batched.clone();
            callers.push(tokio::spawn(async move {
                batched.get(i, |keys| store.read(keys)).await
            }));
        }
        // Cancel every fifth caller, wherever it stands (queued, holding the turn, answered).
        for (i, caller) in callers.iter().enumerate() {
            if i % 5 == 0 {
                caller.abort();
            }
        }
        for (i, caller) in callers.into_iter().enumerate() {
            match caller.await {
                Ok(answer) => assert_eq!(answer, (i as u32, 7)),
                Err(e) => assert!(i % 5 == 0 && e.is_cancelled(), "caller {i}: {e}"),
            }
        }
        let after = batched.get(99, |keys| store.read(keys)).await;
        assert_eq!(after, (99, 7));
    }
}
