//! Telemetry: `tracing` to structured logs (JSON when stdout is not a terminal), OpenTelemetry
//! spans and metrics over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C
//! `traceparent` extracted on every server call and injected on every client channel, and RED
//! metrics per RPC.

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

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.tracer.shutdown();
        if let Some(meter) = &self.meter {
            let _ = meter.shutdown();
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
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        tracer = tracer.with_batch_exporter(spans);
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
    let otel = tracing_opentelemetry::layer().with_tracer(tracer.tracer("lianyu"));

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let fmt = if std::io::stdout().is_terminal() {
        tracing_subscriber::fmt::layer().compact().boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError(e.to_string()))?;
    Ok(TelemetryGuard { tracer, meter })
}
