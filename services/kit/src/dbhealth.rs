//! Whether each service's database answers, checked a few times a second. While a database is
//! down its service's health names read NOT_SERVING — readiness, so Kubernetes stops sending
//! it traffic — while the overall `""` status (liveness) stays SERVING: a database outage must
//! not restart pods that will recover by themselves. Calls to a service whose database is down
//! are refused at once with UNAVAILABLE / DATABASE_UNAVAILABLE (retryable) instead of waiting
//! for a connection; when the database answers again everything resumes, with no restart.
//!
//! The watcher asks over a connection of its own, so a busy pool never makes a healthy
//! database look dead. Only PostgreSQL is watched: embedded SQLite cannot go away apart from
//! the process.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

/// How often each database is asked, and how long it has to answer.
pub(crate) const EVERY: Duration = Duration::from_millis(250);
const ANSWER_WITHIN: Duration = Duration::from_millis(500);
/// Slow asks in a row before a database counts as down (about two seconds): one late answer on
/// a saturated machine is load, not an outage, and refusing every call for it would turn load
/// into an outage. The first answer after an outage counts at once.
const SLOW_BEFORE_DOWN: u32 = 3;
/// Failed asks in a row (a refused or broken connection) before a database counts as down,
/// about half a second: one failed connect on a busy server (a full listen queue, a backend
/// that could not start) is not an outage either.
const FAILED_BEFORE_DOWN: u32 = 2;

struct Watched {
    service: String,
    url: String,
    up: Arc<AtomicBool>,
}

/// The databases of the services in this process.
#[derive(Default)]
pub struct DatabaseHealth {
    watched: Mutex<Vec<Watched>>,
}

impl DatabaseHealth {
    /// Watches `service`'s database at `url` (PostgreSQL only).
    pub fn register(&self, service: &str, url: &str) {
        if !url.starts_with("postgres") {
            return;
        }
        self.lock().push(Watched {
            service: service.to_owned(),
            url: url.to_owned(),
            up: Arc::new(AtomicBool::new(true)),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the database behind `path` (`/lianyu.<service>.v1.Service/Method`) is down.
    pub fn is_down(&self, path: &str) -> bool {
        let Some(service) = path
            .strip_prefix("/lianyu.")
            .and_then(|rest| rest.split('.').next())
        else {
            return false;
        };
        self.lock()
            .iter()
            .any(|w| w.service == service && !w.up.load(Ordering::Relaxed))
    }

    /// Asks every database every `EVERY` until `stopping`, and turns the health names of the
    /// services behind a silent one NOT_SERVING until it answers again.
    pub async fn watch(
        self: Arc<Self>,
        reporter: HealthReporter,
        names: Vec<&'static str>,
        stopping: CancellationToken,
    ) {
        // Unanswered asks in a row, by service.
        let mut missed: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        let mut connections: std::collections::HashMap<String, DatabaseConnection> =
            std::collections::HashMap::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = stopping.cancelled() => return,
            }
            let checks: Vec<(String, String, Arc<AtomicBool>)> = self
                .lock()
                .iter()
                .map(|w| (w.service.clone(), w.url.clone(), w.up.clone()))
                .collect();
            for (service, url, up) in checks {
                let misses = missed.entry(service.clone()).or_insert(0u32);
                let asked = tokio::time::timeout(ANSWER_WITHIN, async {
                    if !connections.contains_key(&service) {
                        let db = crate::storage::probe(&url).await.ok()?;
                        connections.insert(service.clone(), db);
                    }
                    connections.get(&service)?.ping().await.ok()
                })
                .await;
                let answers = matches!(asked, Ok(Some(())));
                if answers {
                    *misses = 0;
                } else {
                    // A fresh connection next time: this one may be half-open.
                    connections.remove(&service);
                    *misses += 1;
                    let tolerated = if asked.is_err() {
                        SLOW_BEFORE_DOWN
                    } else {
                        FAILED_BEFORE_DOWN
                    };
                    if *misses < tolerated {
                        continue;
                    }
                }
                if answers == up.swap(answers, Ordering::Relaxed) {
                    continue;
                }
                if stopping.is_cancelled() {
                    return;
                }
                let status = if answers {
                    tracing::info!(service, "database answers again; serving");
                    ServingStatus::Serving
                } else {
                    tracing::error!(
                        service,
                        "database does not answer; not serving until it does"
                    );
                    ServingStatus::NotServing
                };
                let prefix = format!("lianyu.{service}.");
                for name in names.iter().filter(|n| n.starts_with(&prefix)) {
                    reporter.set_service_status(*name, status).await;
                }
            }
        }
    }
}
