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

/// Bucket boundaries of `rpc.server.duration`, in seconds: half a millisecond to ten seconds,
/// about three per decade, where a gRPC call's latency lands (the SDK's default boundaries are
/// sized for milliseconds, so every call fell into its first bucket).
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

impl Default for RpcTelemetryLayer {
    fn default() -> Self {
        Self::with_meter(&global::meter("lianyu"))
    }
}

impl RpcTelemetryLayer {
    /// The layer recording into `meter` (tests pass a provider of their own).
    pub fn with_meter(meter: &opentelemetry::metrics::Meter) -> Self {
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
                    .with_boundaries(DURATION_BUCKETS.to_vec())
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
        // The conventions' span name: `package.Service/Method`, no leading slash.
        let span = tracing::info_span!(
            "rpc",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            lianyu.partner = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Some(parent) = parent {
            let _ = span.set_parent(parent);
        }
        // The call's ids, as fields every log line inside it carries (telemetry.rs); read here,
        // outside any subscriber callback, where asking for them is safe.
        {
            use opentelemetry::trace::TraceContextExt;
            let context = span.context();
            let otel = context.span();
            let ids = otel.span_context();
            if ids.is_valid() {
                span.record("trace_id", tracing::field::display(ids.trace_id()));
                span.record("span_id", tracing::field::display(ids.span_id()));
            }
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
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                if is_span_error(code) {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", format!("{code:?}"));
                }
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

/// The codes that set a gRPC server span's status to Error, per OpenTelemetry's semantic
/// conventions for RPC spans (a caller's mistake, such as NOT_FOUND, leaves it unset).
fn is_span_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::{
        metrics::MeterProvider as _,
        trace::{Status, TracerProvider as _},
    };
    use opentelemetry_sdk::{
        metrics::{
            InMemoryMetricExporter, PeriodicReader, SdkMeterProvider, data::AggregatedMetrics,
            data::MetricData,
        },
        trace::{InMemorySpanExporter, SdkTracerProvider},
    };
    use tower::{Layer, Service, ServiceExt};
    use tracing_subscriber::layer::SubscriberExt;

    use super::RpcTelemetryLayer;

    const PATH: &str = "/lianyu.identity.v1.PartnerService/GetPartner";

    /// A handler that takes `x-sleep-ms` to answer with `x-status` as its grpc-status.
    fn handler() -> impl Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|request: http::Request<()>| async move {
            // A log line inside the call asks for the span's ids (activating it) before its
            // status is known.
            tracing::info!("handling");
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            if let Some(ms) = header("x-sleep-ms") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            }
            let mut response = http::Response::new(());
            if let Some(status) = header("x-status") {
                response.headers_mut().insert(
                    "grpc-status",
                    status.parse().unwrap_or_else(|_| unreachable!()),
                );
            }
            Ok(response)
        })
    }

    fn call(header: &'static str, value: &'static str) -> http::Request<()> {
        http::Request::builder()
            .uri(PATH)
            .header(header, value)
            .body(())
            .unwrap_or_else(|_| unreachable!())
    }

    #[tokio::test]
    async fn a_3_ms_and_a_300_ms_call_land_in_different_duration_buckets() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let mut service = RpcTelemetryLayer::with_meter(&provider.meter("test")).layer(handler());
        for ms in ["3", "300"] {
            service.ready().await.ok();
            service.call(call("x-sleep-ms", ms)).await.ok();
        }
        provider.force_flush().expect("flush");
        let metrics = exporter.get_finished_metrics().expect("metrics");
        let histogram = metrics
            .iter()
            .flat_map(|rm| rm.scope_metrics())
            .flat_map(|sm| sm.metrics())
            .find(|m| m.name() == "rpc.server.duration")
            .expect("rpc.server.duration recorded");
        assert_eq!(histogram.unit(), "s");
        let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = histogram.data() else {
            panic!("not an f64 histogram");
        };
        let point = histogram.data_points().next().expect("one series");
        let filled: Vec<f64> = point
            .bucket_counts()
            .zip(point.bounds().chain([f64::INFINITY]))
            .filter(|(count, _)| *count > 0)
            .map(|(_, upper)| upper)
            .collect();
        assert_eq!(
            filled.len(),
            2,
            "each call in a bucket of its own: {filled:?}"
        );
        assert!(filled[0] > 0.003 && filled[0] <= 0.01, "{filled:?}");
        assert!(filled[1] > 0.3 && filled[1] <= 1.0, "{filled:?}");
    }

    #[tokio::test]
    async fn spans_are_named_by_the_conventions_and_carry_the_error_status() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let logs = crate::telemetry::tests::Buffer::default();
        let subscriber: tracing::Dispatch = tracing_subscriber::registry()
            .with(crate::telemetry::otel_layer(provider.tracer("test")))
            .with(crate::telemetry::json_logs(logs.clone()))
            .into();
        let _default = tracing::dispatcher::set_default(&subscriber);
        let mut service = RpcTelemetryLayer::default().layer(handler());
        for status in ["13", "5", "0"] {
            service.ready().await.ok();
            service.call(call("x-status", status)).await.ok();
        }
        provider.force_flush().expect("flush");
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 3);
        for span in &spans {
            assert_eq!(span.name, "lianyu.identity.v1.PartnerService/GetPartner");
            assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Server);
        }
        // INTERNAL is the server's fault: Error. NOT_FOUND is the caller's and OK is OK: unset.
        assert!(
            matches!(spans[0].status, Status::Error { .. }),
            "{:?}",
            spans[0].status
        );
        assert_eq!(spans[1].status, Status::Unset);
        assert_eq!(spans[2].status, Status::Unset);
        // The log lines inside each call carry its ids.
        let logged = logs.text();
        for span in &spans {
            let trace = span.span_context.trace_id().to_string();
            assert!(
                logged
                    .lines()
                    .any(|l| l.contains("handling") && l.contains(&trace)),
                "no log line with trace {trace}: {logged}"
            );
        }
    }

    #[tokio::test]
    async fn a_callers_trace_goes_on_to_the_calls_its_handler_makes() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber: tracing::Dispatch = tracing_subscriber::registry()
            .with(crate::telemetry::otel_layer(provider.tracer("test")))
            .into();
        let _default = tracing::dispatcher::set_default(&subscriber);
        // The handler calls another service, as a resolver or consent check does.
        let handler = tower::service_fn(|_: http::Request<()>| async {
            tokio::task::yield_now().await;
            let mut outgoing = tonic::metadata::MetadataMap::new();
            crate::telemetry::inject_context(&mut outgoing);
            let mut response = http::Response::new(());
            if let Some(sent) = outgoing.get("traceparent") {
                response.headers_mut().insert(
                    "x-sent-traceparent",
                    sent.to_str()
                        .unwrap_or_default()
                        .parse()
                        .unwrap_or_else(|_| unreachable!()),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = RpcTelemetryLayer::default().layer(handler);
        service.ready().await.ok();
        let response = service
            .call(call(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ))
            .await
            .unwrap_or_else(|e| match e {});
        let sent = response
            .headers()
            .get("x-sent-traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        provider.force_flush().expect("flush");
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 1);
        let server = &spans[0];
        assert_eq!(
            server.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "the server span joins the caller's trace"
        );
        assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
        // The outgoing call names the server span as its parent, in the caller's trace.
        assert_eq!(
            sent,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                server.span_context.span_id()
            )
        );
    }
}
