//! One process, several services (`lianyu up`): each span is exported under the
//! `service.name` of the Lianyu service whose call it belongs to, so a trace backend shows
//! `lianyu-identity`, `lianyu-live`, … rather than one `lianyu` for the whole mesh.
//!
//! A call's server span carries `rpc.service` (`lianyu.identity.v1.MemberService`, …); every
//! span under it belongs to the same service. Spans end before their parents, so a span whose
//! owner is not known yet waits for its parent to end; roots that are not calls (background
//! jobs, feed consumers) belong to the process. Each owner has a processor of its own (a batch
//! exporter in production) whose resource names it.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use opentelemetry::{Context, trace::SpanId};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{Span, SpanData, SpanProcessor},
};

/// The mesh's services, named after their gRPC packages (`lianyu.<service>.v1`, and
/// `lianyu.<service>.internal.v1`).
const SERVICES: [&str; 4] = ["identity", "entitlements", "live", "comarketing"];

/// Spans kept waiting for their parent, at most; beyond it they go out under the process's
/// name rather than hold memory (a call streaming for hours with many child spans).
const MAX_WAITING: usize = 10_000;

/// Owners remembered for spans already exported, so a child that ends after its parent (a task
/// the call spawned) still finds its service; cleared when it grows past this.
const MAX_KNOWN: usize = 10_000;

#[derive(Debug)]
pub(super) struct ByService {
    /// The process's own processor, then one per service, in [`SERVICES`] order.
    processors: Vec<Box<dyn SpanProcessor>>,
    names: Vec<String>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Spans whose parent has not ended, by the parent's id.
    waiting: HashMap<SpanId, Vec<SpanData>>,
    waiting_count: usize,
    /// The owner (index into `processors`) of spans that ended.
    known: HashMap<SpanId, usize>,
}

impl ByService {
    /// `make` builds the processor for one `service.name`: `process` (spans outside any call)
    /// and `lianyu-<service>` for each service.
    pub(super) fn new<E>(
        process: &str,
        mut make: impl FnMut(&str) -> Result<Box<dyn SpanProcessor>, E>,
    ) -> Result<Self, E> {
        let names: Vec<String> = std::iter::once(process.to_owned())
            .chain(SERVICES.iter().map(|s| format!("lianyu-{s}")))
            .collect();
        Ok(Self {
            processors: names.iter().map(|n| make(n)).collect::<Result<_, E>>()?,
            names,
            state: Mutex::default(),
        })
    }

    /// The owner a call's span names, from its `rpc.service` attribute.
    fn owner_of_call(span: &SpanData) -> Option<usize> {
        let service = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "rpc.service")?
            .value
            .as_str();
        let package = service.strip_prefix("lianyu.")?;
        let name = package.split('.').next()?;
        Some(
            SERVICES
                .iter()
                .position(|s| *s == name)
                .map_or(0, |i| i + 1),
        )
    }

    /// Exports `span` under `owner`, then every span that waited for it.
    fn resolve(&self, state: &mut State, span: SpanData, owner: usize) {
        let mut ready = vec![(span, owner)];
        while let Some((span, owner)) = ready.pop() {
            let id = span.span_context.span_id();
            if let Some(children) = state.waiting.remove(&id) {
                state.waiting_count -= children.len();
                ready.extend(children.into_iter().map(|c| (c, owner)));
            }
            if state.known.len() >= MAX_KNOWN {
                state.known.clear();
            }
            state.known.insert(id, owner);
            self.processors[owner].on_end(span);
        }
    }
}

impl SpanProcessor for ByService {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        for processor in &self.processors {
            processor.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let parent = span.parent_span_id;
        let owner = Self::owner_of_call(&span)
            .or_else(|| (parent == SpanId::INVALID || span.parent_span_is_remote).then_some(0));
        let owner = owner.or_else(|| state.known.get(&parent).copied());
        match owner {
            Some(owner) => self.resolve(&mut state, span, owner),
            None if state.waiting_count >= MAX_WAITING => self.resolve(&mut state, span, 0),
            None => {
                state.waiting_count += 1;
                state.waiting.entry(parent).or_default().push(span);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.processors
            .iter()
            .map(|p| p.force_flush())
            .find(Result::is_err)
            .unwrap_or(Ok(()))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Spans still waiting for a parent that will never end go out under the process.
        let waiting: Vec<SpanData> = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.waiting_count = 0;
            state.waiting.drain().flat_map(|(_, spans)| spans).collect()
        };
        for span in waiting {
            self.processors[0].on_end(span);
        }
        self.processors
            .iter()
            .map(|p| p.shutdown_with_timeout(timeout))
            .find(Result::is_err)
            .unwrap_or(Ok(()))
    }

    fn set_resource(&mut self, resource: &Resource) {
        for (processor, name) in self.processors.iter_mut().zip(&self.names) {
            let named = Resource::builder_empty()
                .with_attributes(
                    resource
                        .iter()
                        .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
                )
                .with_service_name(name.clone())
                .build();
            processor.set_resource(&named);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};
    use tower::{Layer, Service, ServiceExt};
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    use super::ByService;

    /// A call to `path` whose handler opens a span of its own, the way handlers do.
    async fn call(path: &'static str) {
        let handler = tower::service_fn(|_: http::Request<()>| {
            async { Ok::<_, std::convert::Infallible>(http::Response::new(())) }
                .instrument(tracing::info_span!("handler work"))
        });
        let mut service = crate::telemetry::RpcTelemetryLayer::default().layer(handler);
        service.ready().await.ok();
        let request = http::Request::builder()
            .uri(path)
            .body(())
            .unwrap_or_else(|_| unreachable!());
        service.call(request).await.ok();
    }

    #[tokio::test]
    async fn each_calls_spans_go_out_under_its_services_name() {
        let exporters: HashMap<String, InMemorySpanExporter> = [
            "lianyu",
            "lianyu-identity",
            "lianyu-entitlements",
            "lianyu-live",
            "lianyu-comarketing",
        ]
        .iter()
        .map(|n| ((*n).to_owned(), InMemorySpanExporter::default()))
        .collect();
        let router = ByService::new("lianyu", |name| {
            Ok::<_, std::convert::Infallible>(Box::new(SimpleSpanProcessor::new(
                exporters[name].clone(),
            ))
                as Box<dyn opentelemetry_sdk::trace::SpanProcessor>)
        })
        .unwrap_or_else(|e| match e {});
        let provider = SdkTracerProvider::builder()
            .with_span_processor(router)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(crate::telemetry::otel_layer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);

        call("/lianyu.identity.v1.MemberService/GetMember").await;
        call("/lianyu.live.v1.SessionService/GetSession").await;
        call("/lianyu.identity.internal.v1.DirectoryService/ResolveMeshIds").await;
        tracing::info_span!("sweep").in_scope(|| tracing::info_span!("batch").in_scope(|| {}));
        provider.force_flush().expect("flush");

        let names = |service: &str| -> Vec<String> {
            let mut names: Vec<String> = exporters[service]
                .get_finished_spans()
                .expect("spans")
                .into_iter()
                .map(|s| s.name.into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names("lianyu-identity"),
            [
                "handler work",
                "handler work",
                "lianyu.identity.internal.v1.DirectoryService/ResolveMeshIds",
                "lianyu.identity.v1.MemberService/GetMember",
            ]
        );
        assert_eq!(
            names("lianyu-live"),
            ["handler work", "lianyu.live.v1.SessionService/GetSession"]
        );
        assert_eq!(names("lianyu"), ["batch", "sweep"]);
        assert!(names("lianyu-entitlements").is_empty());
    }
}
