//! One span and the RED metrics (requests, errors, duration) for every call, with the caller's
//! trace context as parent. Client errors (NOT_FOUND, INVALID_ARGUMENT…) are not logged as
//! failures; server-side ones are.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram},
};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::HeaderExtractor;

#[derive(Clone)]
pub struct RpcTelemetryLayer {
    metrics: Metrics,
}

#[derive(Clone)]
struct Metrics {
    requests: Counter<u64>,
    errors: Counter<u64>,
    duration: Histogram<f64>,
}

impl Default for RpcTelemetryLayer {
    fn default() -> Self {
        let meter = global::meter("lianyu");
        Self {
            metrics: Metrics {
                requests: meter
                    .u64_counter("rpc.server.requests")
                    .with_description("RPCs received")
                    .build(),
                errors: meter
                    .u64_counter("rpc.server.errors")
                    .with_description("RPCs ended with a server-side error")
                    .build(),
                duration: meter
                    .f64_histogram("rpc.server.duration")
                    .with_unit("s")
                    .with_description("Time to the response headers")
                    .build(),
            },
        }
    }
}

impl<S> Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcTelemetry<S> {
    inner: S,
    metrics: Metrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for RpcTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Every known RPC's name is a static string (no allocation per call); anything else
        // is one label, so a prober cannot grow the metrics' label sets.
        let path = static_path(request.uri().path());
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        // Most calls carry no trace context: do not ask the propagator to find none.
        let parent = request.headers().contains_key("traceparent").then(|| {
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())))
        });
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            lianyu.partner = tracing::field::Empty,
        );
        if let Some(parent) = parent {
            let _ = span.set_parent(parent);
        }
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    // A trailers-only response (every error) carries grpc-status in the headers;
                    // a streaming or successful one sends it later, in the trailers.
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                    // Shedding surfaces as an error that tonic turns into RESOURCE_EXHAUSTED.
                    Err(_) => tonic::Code::ResourceExhausted,
                };
                let elapsed = started.elapsed().as_secs_f64();
                let attrs = [
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.grpc.status_code", code as i64),
                ];
                metrics.requests.add(1, &attrs);
                metrics.duration.record(elapsed, &attrs);
                tracing::Span::current().record("rpc.grpc.status_code", code as i32);
                if is_server_fault(code) {
                    metrics.errors.add(1, &attrs);
                    // Refusals under load are logged by admission, at most once a second: a
                    // line per shed call would flood the logs exactly when they matter.
                    if code != tonic::Code::ResourceExhausted {
                        tracing::warn!(code = ?code, elapsed_ms = elapsed * 1e3, "rpc failed");
                    }
                } else {
                    tracing::debug!(code = ?code, elapsed_ms = elapsed * 1e3, "rpc");
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Codes that mean the server, not the caller, is at fault.
fn is_server_fault(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | ResourceExhausted | Internal | Unavailable | DataLoss
    )
}

/// The static copy of a path the mesh serves: a Lianyu RPC, health or reflection; every other
/// path is reported as `/unknown/unknown`.
fn static_path(path: &str) -> &'static str {
    const OTHERS: [&str; 4] = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    lianyu_proto::access::path(path)
        .or_else(|| OTHERS.iter().find(|p| **p == path).copied())
        .unwrap_or("/unknown/unknown")
}
