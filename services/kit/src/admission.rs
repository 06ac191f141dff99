//! Admission control: overload is refused early and cheaply instead of queueing into timeouts.
//!
//! - Unary calls: at most `max_concurrent_requests` at once per process — sized to what the
//!   database behind them can do, not to what the network can carry. A call waits for a slot at
//!   most `admission_wait` (well under any call's deadline), then gets RESOURCE_EXHAUSTED /
//!   OVERLOADED: the queue in front of the database is bounded in length and in time, so calls
//!   never queue into timeouts, and waiting callers do not spin in refuse-and-retry loops.
//! - One partner holds at most `partner_share_percent` of the slots (75 % by default), so its
//!   flood never takes the rest from other partners (RESOURCE_EXHAUSTED / PARTNER_CONCURRENCY
//!   after the same wait), while a partner alone on the instance still uses most of it.
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

use crate::auth::Principal;

/// What admission allows; see the module docs.
#[derive(Clone)]
pub struct AdmissionLayer {
    state: Arc<State>,
}

struct State {
    unary: Arc<Semaphore>,
    partner_cap: usize,
    wait: Duration,
    /// Each partner's share of the slots ("" for calls without a token, such as IssueToken).
    per_partner: Mutex<HashMap<String, Arc<Semaphore>>>,
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
                wait: limits.admission_wait,
                per_partner: Mutex::default(),
                streams: Arc::new(Semaphore::new(limits.max_streams.max(1))),
                streaming: lianyu_proto::access::streaming_methods(),
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

    fn response(self, wait: Duration) -> Response<Body> {
        let message = match self {
            Refusal::Overloaded => "the service is at capacity; retry with backoff",
            Refusal::Partner => "your calls in flight use your whole share; retry with backoff",
            Refusal::Streams => "too many open streams on this instance; retry another",
        };
        // A slot frees up about as often as a call ends: a unary call waited `wait` for one in
        // vain; a stream slot frees only when a stream ends.
        let after = match self {
            Refusal::Streams => STREAM_RETRY,
            Refusal::Overloaded | Refusal::Partner => wait,
        };
        refusal_with_retry(Code::ResourceExhausted, message, self.reason(), after).into_http()
    }
}

/// How long a refused stream is told to wait before it tries again.
const STREAM_RETRY: Duration = Duration::from_secs(1);

/// How long a call refused because its database is down is told to wait: the health check's
/// period, after which a recovered database is serving again.
const DATABASE_RETRY: Duration = crate::dbhealth::EVERY;

/// A refusal of the admission layer (`lianyu.admission`) that tells the caller when to try
/// again, the two ways gRPC clients read it: a `google.rpc.RetryInfo` detail (AIP-194) and the
/// `grpc-retry-pushback-ms` metadata ([`crate::error::push_back`]), after a delay
/// [`crate::error::jittered`] around `after`.
fn refusal_with_retry(code: Code, message: &str, reason: &str, after: Duration) -> tonic::Status {
    let mut details =
        tonic_types::ErrorDetails::with_error_info(reason, "lianyu.admission", HashMap::new());
    let delay = crate::error::jittered(after);
    details.set_retry_info(Some(delay));
    let mut status =
        <tonic::Status as tonic_types::StatusExt>::with_error_details(code, message, details);
    crate::error::push_back(&mut status, delay);
    status
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
        refusal.response(self.wait)
    }

    /// The semaphore of `partner`'s share, made on its first call.
    fn share_of(&self, partner: &str) -> Arc<Semaphore> {
        self.per_partner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(partner.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.partner_cap)))
            .clone()
    }
}

/// A slot of `semaphore`, waiting until `deadline` at most.
async fn slot(semaphore: &Arc<Semaphore>, deadline: Instant) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = semaphore.clone().try_acquire_owned() {
        return Some(permit);
    }
    tokio::time::timeout_at(deadline.into(), semaphore.clone().acquire_owned())
        .await
        .ok()?
        .ok()
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
            let refused = refusal_with_retry(
                Code::Unavailable,
                "the service's database does not answer; retry with backoff",
                "DATABASE_UNAVAILABLE",
                DATABASE_RETRY,
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
        let share = state.share_of(
            request
                .extensions()
                .get::<Principal>()
                .map_or("", |p| p.partner_id.as_str()),
        );
        // The ready service was cloned into this call; the original stays ready for the next.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        Box::pin(async move {
            let deadline = Instant::now() + state.wait;
            let Some(own) = slot(&share, deadline).await else {
                return Ok(state.refused(Refusal::Partner));
            };
            let Some(permit) = slot(&state.unary, deadline).await else {
                return Ok(state.refused(Refusal::Overloaded));
            };
            let response = inner.call(request).await;
            drop((permit, own));
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
