//! Admission control: overload is refused early and cheaply instead of queueing into timeouts.
//!
//! - Unary calls: at most `max_in_flight` at once per process — sized to what the database
//!   behind them can do, not to what the network can carry — with a short wait for a slot
//!   (`admission_wait`), then RESOURCE_EXHAUSTED / OVERLOADED within milliseconds. Past its
//!   share (`partner_share_percent` of the slots) a partner gets a slot only while a reserve of
//!   a quarter of them stays free for the others, so its flood never takes another partner's
//!   capacity (RESOURCE_EXHAUSTED / PARTNER_CONCURRENCY) — and a partner alone on the instance
//!   still uses most of it.
//! - Server-streaming calls (feeds, viewer streams) hold a stream slot for as long as the stream
//!   is open, counted separately (`max_streams`; beyond it RESOURCE_EXHAUSTED / TOO_MANY_STREAMS):
//!   an idle stream costs memory, not a unary slot.
//! - Health and reflection are never limited: a busy pod must not fail its probes.
//! - A call to a service whose database is known to be down is refused at once with
//!   UNAVAILABLE / DATABASE_UNAVAILABLE (dbhealth.rs), instead of waiting for a connection.
//!
//! Refusals are counted (`rpc.server.shed`) and logged at most once a second, with the count.

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use opentelemetry::{KeyValue, metrics::Counter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, body::Body};
use tower::{Layer, Service};

use crate::{Principal, error::status_with_info};

/// What admission allows; see the module docs.
#[derive(Clone)]
pub struct AdmissionLayer {
    state: Arc<State>,
}

struct State {
    unary: Arc<Semaphore>,
    partner_cap: usize,
    /// Slots kept free for partners under their share.
    reserve: usize,
    wait: Duration,
    /// Unary calls in flight per partner ("" for calls without a token).
    per_partner: Mutex<HashMap<String, usize>>,
    streams: Arc<Semaphore>,
    streaming: HashSet<String>,
    shed: Counter<u64>,
    shed_since_log: AtomicU64,
    last_log_millis: AtomicU64,
    started: Instant,
    databases: Arc<crate::dbhealth::DatabaseHealth>,
}

impl AdmissionLayer {
    pub fn new(
        limits: &crate::config::Limits,
        databases: Arc<crate::dbhealth::DatabaseHealth>,
    ) -> Self {
        let max = limits.max_concurrent_requests.max(1);
        let partner_cap = (max * limits.partner_share_percent.clamp(1, 100) / 100).max(1);
        Self {
            state: Arc::new(State {
                unary: Arc::new(Semaphore::new(max)),
                partner_cap,
                reserve: if partner_cap >= max {
                    0
                } else {
                    (max / 4).max(1)
                },
                wait: limits.admission_wait,
                per_partner: Mutex::default(),
                streams: Arc::new(Semaphore::new(limits.max_streams.max(1))),
                streaming: streaming_methods(),
                shed: opentelemetry::global::meter("lianyu")
                    .u64_counter("rpc.server.shed")
                    .with_description("Calls refused by admission control")
                    .build(),
                shed_since_log: AtomicU64::new(0),
                last_log_millis: AtomicU64::new(0),
                started: Instant::now(),
                databases,
            }),
        }
    }
}

/// The paths of every server-streaming RPC in the contracts.
fn streaming_methods() -> HashSet<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(lianyu_proto::FILE_DESCRIPTOR_SET) else {
        return HashSet::new();
    };
    let mut paths = HashSet::new();
    for file in set.file {
        let package = file.package.clone().unwrap_or_default();
        for service in &file.service {
            for method in &service.method {
                if method.server_streaming() {
                    paths.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    paths
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    state: Arc<State>,
}

/// Why a call was refused.
#[derive(Clone, Copy)]
enum Refusal {
    Overloaded,
    Partner,
    Streams,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Overloaded => "OVERLOADED",
            Refusal::Partner => "PARTNER_CONCURRENCY",
            Refusal::Streams => "TOO_MANY_STREAMS",
        }
    }

    fn response(self) -> Response<Body> {
        let message = match self {
            Refusal::Overloaded => "the service is at capacity; retry with backoff",
            Refusal::Partner => "your calls in flight use your whole share; retry with backoff",
            Refusal::Streams => "too many open streams on this instance; retry another",
        };
        status_with_info(
            Code::ResourceExhausted,
            message,
            self.reason(),
            "lianyu.admission",
            HashMap::new(),
        )
        .into_http()
    }
}

impl State {
    fn refused(&self, refusal: Refusal) -> Response<Body> {
        self.shed
            .add(1, &[KeyValue::new("reason", refusal.reason())]);
        self.shed_since_log.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_log_millis.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000
            && self
                .last_log_millis
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let shed = self.shed_since_log.swap(0, Ordering::Relaxed);
            tracing::warn!(
                shed,
                reason = refusal.reason(),
                "calls refused under load (at most one line a second)"
            );
        }
        refusal.response()
    }

    /// Takes a partner's share; `None` when the partner already holds its whole share.
    fn take_share(self: &Arc<Self>, partner: &str) -> Option<Share> {
        let mut map = self.per_partner.lock().unwrap_or_else(|p| p.into_inner());
        let held = map.entry(partner.to_owned()).or_insert(0);
        if *held >= self.partner_cap && self.unary.available_permits() <= self.reserve {
            return None;
        }
        *held += 1;
        Some(Share {
            state: self.clone(),
            partner: partner.to_owned(),
        })
    }
}

/// One partner's slot; given back when dropped.
struct Share {
    state: Arc<State>,
    partner: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut map = self
            .state
            .per_partner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = map.get_mut(&self.partner) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&self.partner);
            }
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        // Health, reflection: never limited.
        if !path.starts_with("/lianyu.") {
            return Box::pin(self.inner.call(request));
        }
        let state = self.state.clone();
        if state.databases.is_down(path) {
            let refused = status_with_info(
                Code::Unavailable,
                "the service's database does not answer; retry with backoff",
                "DATABASE_UNAVAILABLE",
                "lianyu.admission",
                HashMap::new(),
            );
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        }
        if state.streaming.contains(path) {
            let Ok(permit) = state.streams.clone().try_acquire_owned() else {
                return Box::pin(std::future::ready(Ok(state.refused(Refusal::Streams))));
            };
            let future = self.inner.call(request);
            return Box::pin(async move {
                let response = future.await?;
                // The slot is held for as long as the stream's body lives.
                Ok(response.map(|body| {
                    Body::new(Held {
                        body,
                        _permit: permit,
                    })
                }))
            });
        }
        let partner = request
            .extensions()
            .get::<Principal>()
            .map(|p| p.partner_id.clone())
            .unwrap_or_default();
        let Some(share) = state.take_share(&partner) else {
            return Box::pin(std::future::ready(Ok(state.refused(Refusal::Partner))));
        };
        // The ready service was cloned into this call; the original stays ready for the next.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        Box::pin(async move {
            let permit = match state.unary.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    match tokio::time::timeout(state.wait, state.unary.clone().acquire_owned())
                        .await
                    {
                        Ok(Ok(permit)) => permit,
                        _ => return Ok(state.refused(Refusal::Overloaded)),
                    }
                }
            };
            let response = inner.call(request).await;
            drop((permit, share));
            response
        })
    }
}

/// A response body that holds a stream slot until it is dropped.
struct Held {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
