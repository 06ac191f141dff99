//! Telemetry: `tracing` to structured logs (JSON when stdout is not a terminal), OpenTelemetry
//! spans and metrics over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C
//! `traceparent` extracted on every server call and injected on every client channel, and RED
//! metrics per RPC.

mod by_service;
mod propagation;
mod rpc_layer;

use std::io::IsTerminal;

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt, util::SubscriberInitExt};

pub use propagation::{TracePropagation, inject_context};
pub use rpc_layer::RpcTelemetryLayer;

/// Quiet by default: sqlx logs every statement at INFO, h2/hyper chatter at DEBUG.
const DEFAULT_FILTER: &str =
    "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,h2=warn,hyper=warn,tower=warn";

/// Flushes and stops the exporters when dropped.
pub struct TelemetryGuard {
    tracer: SdkTracerProvider,
    meter: Option<SdkMeterProvider>,
}

/// The longest the final flush may hold up an exit. A hung collector would otherwise take the
/// exporters' own timeout (10 s each), most of a pod's grace period.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let tracer = self.tracer.clone();
        let meter = self.meter.take();
        let (done, flushed) = std::sync::mpsc::channel();
        // On a thread of its own, so a collector that never answers costs at most FINAL_FLUSH;
        // what it has not taken by then is lost with the process, as it would be on SIGKILL.
        let spawned = std::thread::Builder::new()
            .name("telemetry-flush".into())
            .spawn(move || {
                let _ = tracer.shutdown_with_timeout(FINAL_FLUSH);
                if let Some(meter) = meter {
                    let _ = meter.shutdown();
                }
                let _ = done.send(());
            });
        if spawned.is_ok() && flushed.recv_timeout(FINAL_FLUSH).is_err() {
            tracing::warn!(
                after_ms = FINAL_FLUSH.as_millis() as u64,
                "telemetry: the collector did not take the last spans and metrics; exiting without them"
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

/// Installs logging, tracing and metrics for the process. Call once, from `main`.
pub fn init(
    service_name: &str,
    otlp_endpoint: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    install(service_name, otlp_endpoint, false)
}

/// [`init`] for a process serving several services (`lianyu up`): each call's spans are
/// exported under its own service's name (`lianyu-identity`, …), everything else under
/// `process_name`.
pub fn init_mesh(
    process_name: &str,
    otlp_endpoint: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    install(process_name, otlp_endpoint, true)
}

fn install(
    service_name: &str,
    otlp_endpoint: Option<&str>,
    by_service: bool,
) -> Result<TelemetryGuard, TelemetryError> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    // OTEL_SERVICE_NAME, when set, wins over the built-in name.
    let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(service_name.to_owned())
            .build()
    };
    let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut meter = None;
    if let Some(endpoint) = otlp_endpoint {
        let spans = || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| TelemetryError(e.to_string()))
        };
        tracer = if by_service {
            tracer.with_span_processor(by_service::ByService::new(service_name, |_| {
                Ok::<_, TelemetryError>(Box::new(
                    opentelemetry_sdk::trace::BatchSpanProcessor::builder(spans()?).build(),
                )
                    as Box<dyn opentelemetry_sdk::trace::SpanProcessor>)
            })?)
        } else {
            tracer.with_batch_exporter(spans()?)
        };
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(metrics)
            .build();
        global::set_meter_provider(provider.clone());
        meter = Some(provider);
    }
    // Without an exporter the provider still gives spans trace ids, so a traceparent that
    // arrives is carried on to the calls this process makes.
    let tracer = tracer.build();
    global::set_tracer_provider(tracer.clone());
    let otel = otel_layer(tracer.tracer("lianyu"));

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let fmt = if std::io::stdout().is_terminal() {
        tracing_subscriber::fmt::layer().compact().boxed()
    } else {
        json_logs(std::io::stdout).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError(e.to_string()))?;
    Ok(TelemetryGuard { tracer, meter })
}

/// The OpenTelemetry layer, as every process (and the tests) use it. Without per-poll
/// bookkeeping: `busy_ns`/`idle_ns` timings and attaching the span's context on every enter
/// cost a lookup and a lock each time any call's future is polled, for attributes no one reads
/// (a call's duration is the span's own) and a current context nothing here asks for — the
/// outgoing `traceparent` comes from the tracing span itself (`inject_context`).
pub(crate) fn otel_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
}

/// JSON log lines, one object per event, carrying the `trace_id` and `span_id` of the call it
/// happened in (the RPC's server span, whose ids the telemetry layer records as its fields), so
/// a log line joins its trace.
fn json_logs<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .event_format(WithTraceIds(
            tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false),
        ))
        .fmt_fields(CallIdFields)
        .with_writer(writer)
}

/// What the JSON log layer keeps of a span's fields: only the call's `trace_id` and
/// `span_id`, as `trace_id=… span_id=…`. Log lines print no span fields (the event's own are
/// flattened into its object), so formatting every field of every span as JSON — and, on each
/// `record`, parsing that JSON back to add one — was work for nothing: about 6 % of a busy
/// instance's CPU in a flash sale's burst (`BENCHMARKS.md`).
struct CallIdFields;

/// Collects the two fields [`CallIdFields`] keeps.
#[derive(Default)]
struct CallIdVisitor {
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl CallIdVisitor {
    fn keep(&mut self, field: &tracing::field::Field, value: String) {
        match field.name() {
            "trace_id" => self.trace_id = Some(value),
            "span_id" => self.span_id = Some(value),
            _ => {}
        }
    }

    fn write_to(&self, writer: &mut impl std::fmt::Write) -> std::fmt::Result {
        for (name, value) in [("trace_id", &self.trace_id), ("span_id", &self.span_id)] {
            if let Some(value) = value {
                write!(writer, " {name}={value}")?;
            }
        }
        Ok(())
    }
}

impl tracing::field::Visit for CallIdVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if matches!(field.name(), "trace_id" | "span_id") {
            self.keep(field, value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace_id" | "span_id") {
            self.keep(field, format!("{value:?}"));
        }
    }
}

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for CallIdFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut kept = CallIdVisitor::default();
        fields.record(&mut kept);
        kept.write_to(&mut writer)
    }

    fn add_fields(
        &self,
        current: &'w mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut kept = CallIdVisitor::default();
        fields.record(&mut kept);
        kept.write_to(&mut current.fields)
    }
}

/// Adds `trace_id` and `span_id` to each JSON object the inner format writes.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let body = line.trim_end();
        if let Some((trace, span)) = ctx.lookup_current().and_then(|current| {
            current
                .scope()
                .find_map(|span| call_ids::<N>(&span.extensions()))
        }) && let Some(open) = body.strip_suffix('}')
        {
            let tail = &line[body.len()..];
            return write!(
                writer,
                "{open},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}{tail}"
            );
        }
        writer.write_str(&line)
    }
}

/// The `trace_id` and `span_id` fields a span recorded, from what [`CallIdFields`] kept of
/// them (the last value of each, should one be recorded twice).
fn call_ids<N: 'static>(
    extensions: &tracing_subscriber::registry::Extensions<'_>,
) -> Option<(String, String)> {
    let fields = extensions.get::<tracing_subscriber::fmt::FormattedFields<N>>()?;
    let (mut trace, mut span) = (None, None);
    for (name, value) in fields
        .fields
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
    {
        match name {
            "trace_id" => trace = Some(value),
            "span_id" => span = Some(value),
            _ => {}
        }
    }
    Some((trace?.to_owned(), span?.to_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    /// Log output collected in memory.
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_log_line_carries_the_ids_its_call_recorded() {
        let buffer = Buffer::default();
        let subscriber: tracing::Dispatch = tracing_subscriber::registry()
            .with(super::json_logs(buffer.clone()))
            .into();
        tracing::dispatcher::with_default(&subscriber, || {
            tracing::info!(answer = 42, "outside any call");
            // As the RPC layer makes it: the ids recorded after the span is made, other
            // fields before and after them.
            let call = tracing::info_span!(
                "rpc",
                rpc.method = "Enroll",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            call.record(
                "trace_id",
                tracing::field::display("4bf92f3577b34da6a3ce929d0e0e4736"),
            );
            call.record("span_id", tracing::field::display("00f067aa0ba902b7"));
            call.record("rpc.grpc.status_code", 0);
            call.in_scope(|| {
                tracing::info_span!("inner", answer = 7)
                    .in_scope(|| tracing::info!(answer = 42, "inside"));
            });
            // A span that names its ids when it is made.
            tracing::info_span!(
                "rpc",
                trace_id = "0af7651916cd43dd8448eb211c80319c",
                span_id = "b7ad6b7169203331"
            )
            .in_scope(|| tracing::info!("again"));
        });
        let text = buffer.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["message"], "outside any call");
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["answer"], 42);
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[1]["span_id"], "00f067aa0ba902b7");
        assert!(lines[1].get("rpc.method").is_none(), "{text}");
        assert_eq!(lines[2]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(lines[2]["span_id"], "b7ad6b7169203331");
    }
}
