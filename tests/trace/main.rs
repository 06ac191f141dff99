//! One request is one trace across the mesh: a call that one service serves by calling another
//! (here a service forwarding identity's internal `ResolveMeshIds` through the kit's `Peer`)
//! reaches an in-process OTLP receiver as spans of a single trace, the callee's server span a
//! child of the caller's. Its own test binary: it installs the process's tracer.

#![allow(clippy::unwrap_used, reason = "a test crate")]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lianyu_kit::{
    Config, Mount, ServerContext,
    auth::TokenRequest,
    peer::{Idempotency, Peer},
};
use lianyu_proto::identity::internal::v1::{
    self as pb,
    directory_service_client::DirectoryServiceClient,
    directory_service_server::{DirectoryService, DirectoryServiceServer},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status};

/// A span as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// The in-process OTLP/gRPC receiver.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A service that answers by asking identity, as entitlements, live and comarketing do.
struct Forwarder(Peer);

#[tonic::async_trait]
impl DirectoryService for Forwarder {
    async fn resolve_mesh_ids(
        &self,
        request: Request<pb::ResolveMeshIdsRequest>,
    ) -> Result<Response<pb::ResolveMeshIdsResponse>, Status> {
        let reply = self
            .0
            .call(
                Idempotency::Idempotent,
                request.into_inner(),
                |ch, r| async move { DirectoryServiceClient::new(ch).resolve_mesh_ids(r).await },
            )
            .await?;
        Ok(Response::new(reply))
    }
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    (listener, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_one_service_to_another_is_one_trace() {
    let receiver = Receiver::default();
    let (listener, collector) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = lianyu_kit::telemetry::init("lianyu-trace-test", Some(&collector)).unwrap();

    // Identity, alone.
    let data = tempfile::tempdir().unwrap();
    let db = lianyu_kit::testing::TestDatabase::new("trace_identity").await;
    let mut config = Config::local(data.path());
    config.set_database_url("identity", db.url.clone());
    // The dev key both servers trust, made before either starts.
    lianyu_kit::auth::Signer::load_or_create(data.path()).unwrap();
    let (listener, identity) = listen().await;
    tokio::spawn(lianyu_identity::run(
        config.clone(),
        listener,
        std::future::pending(),
    ));
    lianyu_kit::testing::connect(&identity).await;

    // The calling service: another process's worth of kit, its peer pointed at identity.
    let mut caller_config = config.clone();
    caller_config.set_peer_url("identity", identity.clone());
    let ctx = ServerContext::new(caller_config).unwrap();
    let peer = ctx.peer("live", "identity").unwrap();
    let mut mount = Mount::new(&ctx);
    lianyu_kit::mount!(mount, DirectoryServiceServer::new(Forwarder(peer)));
    let (listener, caller) = listen().await;
    tokio::spawn(async move {
        lianyu_kit::server::serve(&ctx, mount, listener, std::future::pending()).await
    });
    let channel = lianyu_kit::testing::connect(&caller).await;

    let token = lianyu_kit::testing::mint(
        &config.data_dir,
        &config.auth,
        &TokenRequest::service("comarketing", Duration::from_secs(600)),
    );
    let mut request = Request::new(pb::ResolveMeshIdsRequest {
        partner: "partners/brand-a".into(),
        members: vec!["members/nobody1".into()],
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    DirectoryServiceClient::new(channel)
        .resolve_mesh_ids(request)
        .await
        .unwrap();

    // Dropping the guard flushes the batch exporter into the receiver.
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();
    let spans = receiver.0.lock().unwrap().clone();
    // Named by the conventions: `package.Service/Method`, no leading slash.
    let path = "lianyu.identity.internal.v1.DirectoryService/ResolveMeshIds";
    let served: Vec<&Received> = spans.iter().filter(|s| s.name == path).collect();
    assert_eq!(
        served.len(),
        2,
        "the caller's and identity's server spans: {spans:#?}"
    );
    assert_eq!(
        served[0].trace_id, served[1].trace_id,
        "one trace: {spans:#?}"
    );
    assert!(served[0].trace_id.iter().any(|b| *b != 0));
    // Identity's span descends from the caller's: its parent is a span of the same trace.
    let in_trace: Vec<&Received> = spans
        .iter()
        .filter(|s| s.trace_id == served[0].trace_id)
        .collect();
    let child = served
        .iter()
        .find(|s| {
            !s.parent_span_id.is_empty() && in_trace.iter().any(|p| p.span_id == s.parent_span_id)
        })
        .unwrap_or_else(|| panic!("no server span is the other's child: {spans:#?}"));
    assert!(served.iter().any(|s| s.span_id != child.span_id));
}
