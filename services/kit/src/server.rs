//! The gRPC server every service runs: health (each service by its full name) and reflection
//! (v1 and v1alpha), a middleware stack of telemetry, load shedding and authentication,
//! HTTP/2 limits, and a graceful shutdown that turns health NOT_SERVING first, ends feeds,
//! lets in-flight calls finish within a deadline, then returns.

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use std::pin::Pin;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::RoutesBuilder, transport::Server};
use tonic_health::ServingStatus;
use tower::ServiceBuilder;

use crate::{
    auth::{AuthLayer, Signer, TokenVerifier},
    config::{Config, ConfigError, Mode, TrustedKey},
    peer::{Peer, ServiceToken},
    storage::StorageError,
    telemetry::RpcTelemetryLayer,
};

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    #[error("migrations: {0}")]
    Migration(String),
    #[error("token keys: {0}")]
    Auth(String),
    #[error("signing key: {0}")]
    Signer(#[from] crate::auth::SignerError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("peer: {0}")]
    Peer(String),
}

impl From<crate::storage::OpenError> for StartError {
    fn from(e: crate::storage::OpenError) -> Self {
        match e {
            crate::storage::OpenError::Config(e) => StartError::Config(e),
            crate::storage::OpenError::Storage(e) => StartError::Storage(e),
            crate::storage::OpenError::Migration(m) => StartError::Migration(m),
        }
    }
}

/// What every service needs from the process: its config, the token verifier, and the token
/// that is cancelled when the server starts shutting down (feeds end their streams on it).
#[derive(Clone)]
pub struct ServerContext {
    pub config: Config,
    pub verifier: Arc<TokenVerifier>,
    /// The key this process signs tokens with (identity's `IssueToken`): `LIANYU_SIGNING_KEY`,
    /// else the dev key in local mode; none in production without a signing key.
    pub signer: Option<Arc<Signer>>,
    /// The keys trusted without asking identity: configured ones, the signer's, the dev key.
    pub static_keys: Vec<TrustedKey>,
    pub stopping: CancellationToken,
    /// The services' databases, watched while serving (dbhealth.rs).
    pub databases: Arc<crate::dbhealth::DatabaseHealth>,
    /// Each mounted service's own token for calling its peers, made on first use.
    service_tokens: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<ServiceToken>>>>,
}

impl ServerContext {
    /// Builds the verifier from the configured keys and the process's own signing key; in
    /// local mode the dev key in the data directory is trusted too (and created if missing).
    pub fn new(config: Config) -> Result<Self, StartError> {
        let mut auth = config.auth.clone();
        let dev = match config.mode {
            Mode::Local => Some(Signer::load_or_create(&config.data_dir)?),
            Mode::Production => None,
        };
        let configured = auth
            .signing_key
            .as_ref()
            .map(|seed| Signer::from_seed(seed.expose()))
            .transpose()?;
        let signer = configured.or(dev);
        if let Some(signer) = &signer {
            auth.trusted_keys.push(signer.trusted_key());
        }
        if config.mode == Mode::Local && auth.signing_key.is_some() {
            // `lianyu token` keeps minting with the dev key beside a configured signing key.
            auth.trusted_keys
                .push(Signer::load(&config.data_dir)?.trusted_key());
        }
        let verifier = TokenVerifier::new(&auth).map_err(StartError::Auth)?;
        Ok(Self {
            config,
            verifier: Arc::new(verifier),
            signer: signer.map(Arc::new),
            static_keys: auth.trusted_keys,
            stopping: CancellationToken::new(),
            databases: Arc::default(),
            service_tokens: Arc::default(),
        })
    }
}

impl ServerContext {
    /// `service`'s way to call `peer` (`identity`, …) as itself: a service principal. The
    /// token is exchanged for the service's credential (`LIANYU_<SERVICE>_CLIENT_ID`/`_SECRET`)
    /// when one is configured, else minted with this process's own signing key (`lianyu up`,
    /// where identity runs alongside); with neither, the service cannot start.
    pub fn peer(&self, service: &str, peer: &str) -> Result<Peer, StartError> {
        // Services call each other's internal contracts: the peer's internal port, if it has one.
        let url = self.config.internal_peer(peer)?.ok_or_else(|| {
            StartError::Peer(format!(
                "{service} calls {peer}: set LIANYU_{}_URL",
                peer.to_uppercase()
            ))
        })?;
        let channel = crate::client::peer(&url, Duration::from_secs(5))
            .map_err(|e| StartError::Peer(e.to_string()))?;
        let token = self.service_token(service)?;
        Ok(Peer::new(peer, channel, token, crate::peer::PEER_DEADLINE))
    }

    /// `service`'s view of identity ([`Directory`](crate::directory::Directory)), following
    /// identity's mesh feed from a cursor kept in `db` (so revocations and suspensions reach
    /// this process within the feed's latency). `None`, with a warning, when the service has
    /// no way to call identity: no `LIANYU_IDENTITY_URL`, or no service credential outside
    /// `lianyu up`; revocations then arrive with the next key refresh.
    /// `service`'s view of identity (its peer channel with the service's own token), or `None`
    /// when identity's address is not configured — then every call that needs it fails
    /// closed. Follow its mesh feed with [`ServerContext::follow_identity`].
    pub fn directory(&self, service: &str) -> Option<crate::directory::Directory> {
        match self.peer(service, "identity") {
            Ok(peer) => Some(crate::directory::Directory::new(
                peer,
                self.stopping.clone(),
            )),
            Err(e) => {
                tracing::warn!(service, error = %e, "no identity peer: not following its mesh feed");
                None
            }
        }
    }

    /// Follows identity's mesh feed for `service` (revocations, suspensions, the directory's
    /// caches, and `hook`, the service's own reaction), its cursor stored in `db`.
    pub fn follow_identity(
        &self,
        service: &str,
        directory: &crate::directory::Directory,
        db: &sea_orm::DatabaseConnection,
        hook: Option<crate::directory::MeshHook>,
    ) {
        tokio::spawn(directory.clone().follow(
            db.clone(),
            format!("{service}:identity.mesh"),
            self.verifier.clone(),
            self.stopping.clone(),
            (hook, late_writes(&self.config.limits)),
        ));
    }

    fn service_token(&self, service: &str) -> Result<Arc<ServiceToken>, StartError> {
        let mut tokens = self
            .service_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(token) = tokens.get(service) {
            return Ok(token.clone());
        }
        let token = match ServiceToken::credential_from(&self.config, service)
            .map_err(|e| StartError::Peer(e.to_string()))?
        {
            Some((client_id, secret)) => {
                let identity = self.config.peer("identity")?.ok_or_else(|| {
                    StartError::Peer(format!(
                        "{service} exchanges its credential at identity: set LIANYU_IDENTITY_URL"
                    ))
                })?;
                let channel = crate::client::peer(&identity, Duration::from_secs(5))
                    .map_err(|e| StartError::Peer(e.to_string()))?;
                ServiceToken::exchanged(service, channel, client_id, secret)
            }
            None => match &self.signer {
                Some(signer) => ServiceToken::minted(
                    service,
                    signer.clone(),
                    self.config.auth.clone(),
                    self.config.auth.token_ttl,
                ),
                None => {
                    return Err(StartError::Peer(
                        crate::peer::ServiceTokenError::NoCredential {
                            service: service.to_owned(),
                            upper: service.to_uppercase(),
                        }
                        .to_string(),
                    ));
                }
            },
        };
        let token = Arc::new(token);
        tokens.insert(service.to_owned(), token.clone());
        Ok(token)
    }

    /// Opens (and migrates) `service`'s database, and keeps its idempotency keys for
    /// `LIANYU_IDEMPOTENCY_TTL` and its feed's events for `LIANYU_FEED_RETENTION`, removing
    /// older ones in the background until shutdown.
    pub async fn open_database<M: sea_orm_migration::MigratorTrait>(
        &self,
        service: &str,
    ) -> Result<sea_orm::DatabaseConnection, StartError> {
        let db = crate::storage::open::<M>(&self.config, service).await?;
        self.databases
            .register(service, &self.config.database_url(service));
        tokio::spawn(crate::idempotency::expire_periodically(
            db.clone(),
            self.config.idempotency_ttl,
            self.stopping.clone(),
        ));
        if !self.config.feed_retention.is_zero() {
            tokio::spawn(crate::feed::expire_periodically(
                db.clone(),
                self.config.feed_retention,
                self.stopping.clone(),
            ));
        }
        Ok(db)
    }
}

/// The longest after identity's change that a call which checked the member or the consent
/// before it may still commit: the server's deadline for any call, and a margin for the group
/// commit its write may be waiting in.
fn late_writes(limits: &crate::config::Limits) -> std::time::Duration {
    limits.request_timeout + std::time::Duration::from_secs(2)
}

/// The gRPC services to serve, collected from one or more Lianyu services.
pub struct Mount {
    routes: RoutesBuilder,
    /// The internal contracts, when they have a listener of their own.
    internal: Option<RoutesBuilder>,
    names: Vec<&'static str>,
    max_message_bytes: usize,
}

/// Whether a gRPC service belongs to the mesh's internal contracts (`lianyu.<x>.internal.v1`).
pub fn is_internal(name: &str) -> bool {
    name.split('.').any(|part| part == "internal")
}

impl Mount {
    pub fn new(ctx: &ServerContext) -> Self {
        Self {
            routes: RoutesBuilder::default(),
            internal: ctx.config.internal_listen.map(|_| RoutesBuilder::default()),
            names: Vec::new(),
            max_message_bytes: ctx.config.limits.max_message_bytes,
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Used by [`mount!`](crate::mount); call that instead. The routes `name` is served on:
    /// the internal listener's for an internal contract when there is one, else the public.
    pub fn routes_for(&mut self, name: &'static str) -> &mut RoutesBuilder {
        self.names.push(name);
        match &mut self.internal {
            Some(internal) if is_internal(name) => internal,
            _ => &mut self.routes,
        }
    }

    /// Full names of the gRPC services mounted so far.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

/// The full gRPC name of a service, for health reporting.
pub fn name_of<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Adds a generated tonic server to a [`Mount`], with the configured message size limits.
#[macro_export]
macro_rules! mount {
    ($mount:expr, $server:expr) => {{
        let max = $mount.max_message_bytes();
        let server = $server
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        $mount
            .routes_for($crate::server::name_of(&server))
            .add_service(server);
    }};
}

/// What ends a server: it drains once this completes.
pub type Shutdown<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
/// A server running, or a service mounting: boxed, so that its body is compiled once, here or
/// in the service's crate. An `async fn` body is compiled by every crate that awaits it from
/// generic code — each service binary compiled the whole server stack and its service's
/// start-up again (about 50 s of CPU per binary in a release build) until they were boxed.
pub type Running<'a> = Pin<Box<dyn Future<Output = Result<(), StartError>> + Send + 'a>>;
/// A service's `mount`, boxed (see [`Running`]).
pub type MountFn = for<'a> fn(&'a ServerContext, &'a mut Mount) -> Running<'a>;

/// Serves `mount` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    ctx: &ServerContext,
    mount: Mount,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    serve_until(ctx, mount, listener, Box::pin(shutdown)).await
}

/// [`serve`] with its shutdown boxed, compiled once in the kit (see [`Running`]).
fn serve_until<'a>(
    ctx: &'a ServerContext,
    mount: Mount,
    listener: TcpListener,
    shutdown: Shutdown<'a>,
) -> Running<'a> {
    Box::pin(serve_body(ctx, mount, listener, shutdown))
}

async fn serve_body(
    ctx: &ServerContext,
    mount: Mount,
    listener: TcpListener,
    shutdown: Shutdown<'_>,
) -> Result<(), StartError> {
    let limits = &ctx.config.limits;
    let (reporter, health) = tonic_health::server::health_reporter();
    // The reporter starts the overall "" service SERVING; nothing is until we say so.
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(lianyu_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc's Status and error details, so `buf curl` and grpcurl decode the
            // `grpc-status-details-bin` of every error instead of printing base64.
            .register_file_descriptor_set(google_rpc_files())
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| StartError::Auth(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| StartError::Auth(format!("reflection: {e}")))?;

    let Mount {
        mut routes,
        internal,
        names,
        ..
    } = mount;
    routes
        .add_service(health.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let middleware = ServiceBuilder::new()
        // Outermost, so every call is traced and counted, refused ones included.
        .layer(RpcTelemetryLayer::default())
        // The call's deadline becomes known to the peer calls its handler makes (peer.rs).
        .layer(crate::peer::DeadlineLayer)
        // tonic's codec answers a request over the size limit with OUT_OF_RANGE; gRPC's
        // convention (and what clients' retry policies expect) is RESOURCE_EXHAUSTED.
        .layer(tower::util::MapResponseLayer::new(oversize_as_exhausted))
        // Verifies the bearer token and the RPC's scope before routing; health and reflection stay open.
        .layer(AuthLayer::new(ctx.verifier.clone()))
        // Refuses overload within milliseconds instead of queueing calls into the database's
        // timeouts: one process-wide limit for unary calls with a per-partner share, a separate
        // one for open streams; health and reflection are never limited (admission.rs).
        .layer(crate::admission::AdmissionLayer::new(
            limits,
            ctx.databases.clone(),
        ))
        .into_inner();
    let builder = || {
        Server::builder()
            .timeout(limits.request_timeout)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_connection_age(limits.max_connection_age)
            .layer(middleware.clone())
    };
    let server = builder().add_routes(routes.routes());
    // The internal contracts on a listener of their own (LIANYU_INTERNAL_LISTEN), with health;
    // it stops with the public one.
    let internal = match (internal, ctx.config.internal_listen) {
        (Some(mut internal), Some(address)) => {
            internal.add_service(health);
            let listener = TcpListener::bind(address).await?;
            tracing::info!(address = %listener.local_addr()?, "serving the internal contracts");
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            Some(
                builder()
                    .add_routes(internal.routes())
                    .serve_with_incoming_shutdown(incoming, ctx.stopping.clone().cancelled_owned()),
            )
        }
        _ => None,
    };

    for name in &names {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    tracing::info!(address = %listener.local_addr()?, services = names.len(), "serving");
    tokio::spawn(ctx.databases.clone().watch(
        reporter.clone(),
        names.clone(),
        ctx.stopping.clone(),
    ));
    // Identity is the trust anchor: every other service verifies tokens with its keys.
    if let Some(identity) = ctx.config.peer("identity")? {
        tokio::spawn(crate::auth::refresh_keys(
            ctx.verifier.clone(),
            ctx.static_keys.clone(),
            identity,
            ctx.config.auth.key_refresh,
            ctx.stopping.clone(),
        ));
    }

    let stopping = ctx.stopping.clone();
    let delay = limits.shutdown_delay;
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in &names {
            reporter
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        tokio::time::sleep(delay).await;
        stopping.cancel();
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let public = server.serve_with_incoming_shutdown(incoming, signal);
    let serving = async move {
        match internal {
            Some(internal) => tokio::try_join!(public, internal).map(drop),
            None => public.await,
        }
    };
    tokio::pin!(serving);
    let drain_deadline = async {
        ctx.stopping.cancelled().await;
        tokio::time::sleep(limits.drain_timeout).await;
    };
    tokio::select! {
        result = &mut serving => result?,
        () = drain_deadline => tracing::warn!("drain deadline passed; closing the remaining connections"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// google.rpc's `status.proto` and `error_details.proto` (with their google.protobuf imports)
/// under their canonical paths: tonic-types names them without the `google/rpc/` directory, so
/// a client asking for `google/rpc/error_details.proto` by name would not find it.
fn google_rpc_files() -> prost_types::FileDescriptorSet {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    let canonical = |name: &str| match name {
        "status.proto" | "error_details.proto" => format!("google/rpc/{name}"),
        other => other.to_owned(),
    };
    for file in &mut set.file {
        file.name = file.name.as_deref().map(canonical);
        for dependency in &mut file.dependency {
            *dependency = canonical(dependency);
        }
    }
    set
}

/// Rewrites tonic's "message length too large" OUT_OF_RANGE into RESOURCE_EXHAUSTED. The codec
/// fails before any handler runs, so the status is in the response headers (trailers-only).
fn oversize_as_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let oversize = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            let m = String::from_utf8_lossy(m.as_bytes());
            m.contains("length too large") || m.contains("length%20too%20large")
        });
    if oversize {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from_static(OVERSIZE_STATUS),
        );
    }
    response
}

/// RESOURCE_EXHAUSTED's number on the wire.
const OVERSIZE_STATUS: &str = "8";

/// A service crate's two entry points from its name, its migrator and its handler
/// registration: `mount` (open and migrate the database, add the gRPC services; `lianyu up`
/// calls it) and `run` (serve alone on a listener until a shutdown future completes; `main`
/// and tests call it).
#[macro_export]
macro_rules! service_entry_points {
    ($name:expr, $migrator:ty, $register:path) => {
        /// Opens the service's database (migrating it) and adds its gRPC services to `mount`.
        /// Boxed, so that its body is compiled here once ([`$crate::server::Running`]).
        pub fn mount<'a>(
            ctx: &'a $crate::server::ServerContext,
            mount: &'a mut $crate::server::Mount,
        ) -> $crate::server::Running<'a> {
            ::std::boxed::Box::pin(mount_body(ctx, mount))
        }

        async fn mount_body(
            ctx: &$crate::server::ServerContext,
            mount: &mut $crate::server::Mount,
        ) -> Result<(), $crate::server::StartError> {
            let db = ctx.open_database::<$migrator>($name).await?;
            // The directory answers the service's id translations and consent questions
            // (`None` when identity is not configured: those calls then fail closed).
            let directory = ctx.directory($name);
            // Reads outside transactions use their own pool (on SQLite the writer is one
            // connection, which group commit holds while a batch forms).
            let read = $crate::storage::open_reader(&ctx.config, $name, &db).await?;
            let hook = $register(ctx, mount, db.clone(), read, directory.clone());
            // Revoked credentials and suspended partners arrive from identity's mesh feed at
            // once, whatever the key refresh interval; so do the events `hook` acts on.
            if let Some(directory) = &directory {
                ctx.follow_identity($name, directory, &db, hook);
            }
            Ok(())
        }

        /// `--migrate-only`: brings the service's schema up to date; how many migrations ran.
        pub async fn migrate(
            config: $crate::config::Config,
        ) -> Result<usize, $crate::server::StartError> {
            Ok($crate::storage::migrate_only::<$migrator>(&config, $name).await?)
        }

        /// Serves the service alone on `listener` until `shutdown` completes.
        pub async fn run(
            config: $crate::config::Config,
            listener: ::tokio::net::TcpListener,
            shutdown: impl ::std::future::Future<Output = ()> + Send + 'static,
        ) -> Result<(), $crate::server::StartError> {
            $crate::server::run_mounted(config, listener, ::std::boxed::Box::pin(shutdown), mount)
                .await
        }
    };
}

/// Serves one service alone: the process context from `config`, the service's `mount`, then
/// [`serve`] on `listener` until `shutdown` — every service's `run` is this one call.
pub async fn run_service<M>(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    mount: M,
) -> Result<(), StartError>
where
    M: AsyncFnOnce(&ServerContext, &mut Mount) -> Result<(), StartError>,
{
    let ctx = ServerContext::new(config)?;
    let mut services = Mount::new(&ctx);
    let mut shutdown: Shutdown<'_> = Box::pin(shutdown);
    if ctx.config.migrate {
        // Migrating itself, the process is ready as soon as it listens.
        mount(&ctx, &mut services).await?;
        return serve_until(&ctx, services, listener, shutdown).await;
    }
    let starting = StartingHealth::answer(listener)?;
    let mounted = tokio::select! {
        mounted = mount(&ctx, &mut services) => Some(mounted),
        () = &mut shutdown => None,
    };
    let listener = starting.end().await;
    match mounted {
        Some(mounted) => mounted?,
        None => {
            tracing::info!("stopped before the service was ready");
            return Ok(());
        }
    }
    serve_until(&ctx, services, listener, shutdown).await
}

/// [`run_service`] with a boxed shutdown and mount: what a service's `run` calls
/// ([`service_entry_points`]), compiled once in the kit (see [`Running`]).
pub fn run_mounted(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown<'static>,
    mount: MountFn,
) -> Running<'static> {
    Box::pin(run_service(
        config,
        listener,
        shutdown,
        async move |ctx: &ServerContext, services: &mut Mount| mount(ctx, services).await,
    ))
}

/// While the service mounts — with LIANYU_MIGRATE=false it waits for the migration Job — the
/// listener already answers health (and only health): alive (""), not ready (every service
/// name), so readiness holds the pod out of its Service while liveness leaves it running.
/// Not generic, like [`serve_until`], so its server is compiled once.
struct StartingHealth {
    listener: TcpListener,
    started: CancellationToken,
    health: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl StartingHealth {
    fn answer(listener: TcpListener) -> Result<Self, StartError> {
        let listener = listener.into_std()?;
        let starting = TcpListener::from_std(listener.try_clone()?)?;
        let listener = TcpListener::from_std(listener)?;
        let started = CancellationToken::new();
        let health = tonic::transport::Server::builder()
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                Starting(started.clone()),
            ))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(starting),
                started.clone().cancelled_owned(),
            );
        Ok(Self {
            listener,
            started,
            health: tokio::spawn(health),
        })
    }

    /// Start-up is over: the health-only server stops; the listener is the service's.
    async fn end(self) -> TcpListener {
        self.started.cancel();
        let _ = self.health.await;
        self.listener
    }
}

/// Health while a service starts: the process is alive (`""` SERVING) and no service is ready
/// (any other name NOT_SERVING); a watch sends that once and ends when start-up does.
struct Starting(CancellationToken);

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Starting {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(starting_status(
            &request.get_ref().service,
        )))
    }

    type WatchStream = std::pin::Pin<
        Box<
            dyn futures::Stream<Item = Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>
                + Send,
        >,
    >;

    async fn watch(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let first = starting_status(&request.get_ref().service);
        let started = self.0.clone();
        let stream = futures::stream::once(async move { Ok(first) }).chain(futures::stream::once(
            async move {
                started.cancelled_owned().await;
                Err(tonic::Status::unavailable("start-up finished; watch again"))
            },
        ));
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

fn starting_status(service: &str) -> tonic_health::pb::HealthCheckResponse {
    let status = if service.is_empty() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    tonic_health::pb::HealthCheckResponse {
        status: tonic_health::pb::health_check_response::ServingStatus::from(status) as i32,
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The whole `main` of a standalone service binary: config from the environment, telemetry,
/// the listener, and `run` until SIGINT/SIGTERM; with `--migrate-only`, `migrate` (bring the
/// schema up to date under the migration lock) and exit — the Kubernetes migration Job.
pub async fn run_standalone<F, Fut, G, Gut>(
    service: &str,
    run: F,
    migrate: G,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: FnOnce(Config, TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), StartError>>,
    G: FnOnce(Config) -> Gut,
    Gut: Future<Output = Result<usize, StartError>>,
{
    let migrate_only = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--migrate-only") => true,
        Some("--help" | "-h") => {
            println!(
                "lianyu-{service}: serves the {service} service (configured by environment \
                 variables, docs/deploy.md)\n\n  --migrate-only  bring the database schema up \
                 to date, then exit"
            );
            return Ok(());
        }
        Some(other) => return Err(format!("unknown argument {other:?} (try --help)").into()),
    };
    let config = Config::from_env()?;
    if migrate_only {
        let _telemetry = crate::telemetry::init(&format!("lianyu-{service}"), None)?;
        let applied = migrate(config).await?;
        tracing::info!(service, applied, "schema is current");
        return Ok(());
    }
    let _telemetry = crate::telemetry::init(
        &format!("lianyu-{service}"),
        config.otlp_endpoint.as_deref(),
    )?;
    let listener = TcpListener::bind(config.listen).await?;
    run(config, listener, Box::pin(shutdown_signal())).await?;
    Ok(())
}
