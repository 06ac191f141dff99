//! Helpers for tests across the workspace: a fresh database per test (SQLite in a temporary
//! directory, or a new PostgreSQL database when `LIANYU_TEST_BACKEND=postgres`), tokens, and
//! calls to any RPC by its path without generated stubs.

use std::{str::FromStr, time::Duration};

use tonic::{Code, transport::Channel};

use crate::{
    auth::{Signer, TokenRequest},
    config::AuthConfig,
};

/// The environment variable naming a PostgreSQL server tests may create databases on.
pub const POSTGRES_URL_VAR: &str = "LIANYU_TEST_POSTGRES_URL";

/// Which backend generic tests run on: `LIANYU_TEST_BACKEND` is `postgres`, or `sqlite` (the
/// default when unset). Anything else stops the test run loudly: a mistyped backend must never
/// silently run the PostgreSQL pass on SQLite.
pub fn backend_is_postgres() -> bool {
    match std::env::var("LIANYU_TEST_BACKEND").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite" | "") | Err(_) => false,
        Ok(other) => panic!("LIANYU_TEST_BACKEND={other:?}: expected \"postgres\" or \"sqlite\""),
    }
}

/// The admin URL of the test PostgreSQL server. On a laptop without one this returns `None`
/// and the caller skips with a printed reason; under CI (`CI=true`) its absence is a failure.
pub fn postgres_admin_url(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {POSTGRES_URL_VAR} must be set under CI")
        }
        _ => {
            eprintln!(
                "skipping {test}: set {POSTGRES_URL_VAR} to a PostgreSQL admin URL to run it"
            );
            None
        }
    }
}

/// A fresh, empty database for one test, removed (SQLite) when dropped.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A new database on the backend chosen by `LIANYU_TEST_BACKEND`.
    pub async fn new(test: &str) -> Self {
        if backend_is_postgres() {
            let admin = postgres_admin_url(test).unwrap_or_else(|| {
                panic!("{test}: LIANYU_TEST_BACKEND=postgres needs {POSTGRES_URL_VAR}")
            });
            Self::postgres(&admin).await
        } else {
            Self::sqlite()
        }
    }

    /// A new database (as [`Self::new`]) opened for `service` as the service opens it, with
    /// `M`'s migrations applied: for a service's store tests.
    pub async fn migrated<M: sea_orm_migration::MigratorTrait>(
        test: &str,
        service: &str,
    ) -> (Self, sea_orm::DatabaseConnection) {
        let database = Self::new(test).await;
        let db = crate::storage::connect(&database.url, service, None)
            .await
            .unwrap_or_else(|e| panic!("{test}: open the database: {e}"));
        M::up(&db, None)
            .await
            .unwrap_or_else(|e| panic!("{test}: migrate: {e}"));
        (database, db)
    }

    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let url = format!("sqlite://{}/test.db?mode=rwc", dir.path().display());
        Self {
            url,
            _dir: Some(dir),
        }
    }

    /// Creates `lianyu_test_<uuid>` on the server at `admin_url`.
    pub async fn postgres(admin_url: &str) -> Self {
        use sea_orm::ConnectionTrait;
        let name = format!("lianyu_test_{}", uuid::Uuid::new_v4().simple());
        // A busy shared server (every test's pools at once) may refuse a connection for a
        // moment; a few tries keep that from failing a test that never got to start.
        let mut tries = 0;
        loop {
            tries += 1;
            let created = async {
                let admin = sea_orm::Database::connect(admin_url)
                    .await
                    .map_err(|e| format!("connect {admin_url}: {e}"))?;
                let made = admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .map_err(|e| format!("create database: {e}"));
                let _ = admin.close().await;
                made.map(drop)
            }
            .await;
            match created {
                Ok(()) => break,
                Err(e) if tries >= 5 => panic!("{e}"),
                Err(e) => {
                    eprintln!("test database, try {tries}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
                }
            }
        }
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Self {
            url: format!("{base}/{name}"),
            _dir: None,
        }
    }
}

/// A token request with every scope, for a brand or mall partner.
pub fn partner_token(partner_id: &str) -> TokenRequest {
    TokenRequest::partner(partner_id)
}

/// Mints a token the local server in `data_dir` accepts.
pub fn mint(data_dir: &std::path::Path, auth: &AuthConfig, request: &TokenRequest) -> String {
    let key = Signer::load_or_create(data_dir).unwrap_or_else(|e| panic!("dev key: {e}"));
    key.mint(auth, request)
        .unwrap_or_else(|e| panic!("mint: {e}"))
}

/// One RPC of the contracts, from the descriptor set.
#[derive(Clone, Debug)]
pub struct Rpc {
    pub path: String,
    pub server_streaming: bool,
}

/// Every RPC of every `lianyu.*` service.
pub fn all_rpcs() -> Vec<Rpc> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(lianyu_proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_else(|e| panic!("descriptor set: {e}"));
    let mut rpcs = Vec::new();
    for file in set
        .file
        .iter()
        .filter(|f| f.package().starts_with("lianyu."))
    {
        for service in &file.service {
            for method in &service.method {
                rpcs.push(Rpc {
                    path: format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    rpcs
}

/// Calls `rpc` with an empty request (valid for every proto3 message) and returns its status
/// (code OK on success).
pub async fn call_empty(channel: Channel, rpc: &Rpc, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .unwrap_or_else(|e| panic!("header: {e}")),
        );
    }
    let path = http::uri::PathAndQuery::from_str(&rpc.path).unwrap_or_else(|e| panic!("path: {e}"));
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let ok = || tonic::Status::new(Code::Ok, "");
    if rpc.server_streaming {
        match grpc.server_streaming(request, path, codec).await {
            // The stream opened (headers came), so the call was admitted; a feed may stay quiet
            // and open forever, so only an error that comes at once is waited for.
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                    Ok(Err(status)) => status,
                    _ => ok(),
                }
            }
            Err(status) => status,
        }
    } else {
        grpc.unary(request, path, codec)
            .await
            .map_or_else(|status| status, |_| ok())
    }
}

/// Connects to a server that may still be starting, retrying for up to five seconds.
pub async fn connect(address: &str) -> Channel {
    crate::client::connect_when_up(address, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The `google.rpc.ErrorInfo` reason of a status (empty when it has none): what clients and
/// tests switch on.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The `google.rpc.ErrorInfo` domain of a status (empty when it has none): `lianyu.<service>`,
/// or `lianyu.auth` / `lianyu.admission` for the shared layers' refusals.
pub fn domain(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.domain.clone())
        .unwrap_or_default()
}

/// Every field a status's `google.rpc.BadRequest` names, in order.
pub fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The field of a status's first `google.rpc.BadRequest` violation, if any.
pub fn first_violation(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
}

/// A server for one test: any service (or several) on fresh databases — SQLite, or PostgreSQL
/// with `LIANYU_TEST_BACKEND=postgres` — signing with the local dev key, so tokens for any
/// partner, store or the operator are minted without a credential.
pub struct TestServer {
    pub config: crate::config::Config,
    pub address: String,
    pub channel: Channel,
    databases: std::collections::BTreeMap<String, TestDatabase>,
    _data: tempfile::TempDir,
}

/// The partners [`TestServer::with_partners`] creates: two allied ones and an outsider.
pub const BRAND: &str = "brand-a";
pub const MALL: &str = "mall-b";
/// The stores every partner of [`TestServer::with_partners`] registers, open.
pub const HARNESS_STORES: [&str; 4] = ["sh01", "sh02", "b01", "bj01"];
pub const OUTSIDER: &str = "brand-c";

impl TestServer {
    /// Starts `run` (a service's `run`, or a closure mounting several) with a fresh database
    /// for each of `services` and `configure` applied to the config.
    pub async fn start<F, Fut>(
        test: &str,
        services: &[&str],
        configure: impl FnOnce(&mut crate::config::Config),
        run: F,
    ) -> Self
    where
        F: FnOnce(crate::config::Config, tokio::net::TcpListener) -> Fut,
        Fut: std::future::Future<Output = Result<(), crate::server::StartError>> + Send + 'static,
    {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut config = crate::config::Config::local(data.path());
        let mut databases = std::collections::BTreeMap::new();
        for service in services {
            let db = TestDatabase::new(&format!("{test}_{service}")).await;
            config.set_database_url(service, db.url.clone());
            databases.insert((*service).to_owned(), db);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let address = format!(
            "http://{}",
            listener
                .local_addr()
                .unwrap_or_else(|e| panic!("address: {e}"))
        );
        // Every service's peers answer on this one address, as in `lianyu up`.
        for service in crate::auth::MESH_SERVICES {
            config.set_peer_url(service, address.clone());
        }
        configure(&mut config);
        let server = run(config.clone(), listener);
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("test server stopped: {e}");
            }
        });
        let channel = connect(&address).await;
        Self {
            config,
            address,
            channel,
            databases,
            _data: data,
        }
    }

    /// A token for `partner` with every scope.
    pub fn token(&self, partner: &str) -> String {
        self.mint(&TokenRequest::partner(partner))
    }

    /// A token for `partner` narrowed to one of its stores.
    pub fn store_token(&self, partner: &str, store: &str) -> String {
        self.mint(&TokenRequest {
            store: Some(format!("partners/{partner}/stores/{store}")),
            ..TokenRequest::partner(partner)
        })
    }

    /// A token for `partner` carrying only `scopes`.
    pub fn scoped_token(&self, partner: &str, scopes: &[&str]) -> String {
        self.mint(&TokenRequest {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..TokenRequest::partner(partner)
        })
    }

    /// The mesh operator's token.
    pub fn operator_token(&self) -> String {
        self.mint(&TokenRequest {
            operator: true,
            ..TokenRequest::partner("operator")
        })
    }

    /// Mints any token the server accepts.
    pub fn mint(&self, request: &TokenRequest) -> String {
        mint(&self.config.data_dir, &self.config.auth, request)
    }

    /// The channel, sending `token` with every call.
    pub fn as_token(
        &self,
        token: &str,
    ) -> tonic::codegen::InterceptedService<Channel, crate::client::Bearer> {
        tonic::codegen::InterceptedService::new(
            self.channel.clone(),
            crate::client::Bearer::new(token),
        )
    }

    /// A direct connection to `service`'s database, to check data where it lives.
    pub async fn database(&self, service: &str) -> sea_orm::DatabaseConnection {
        let url = self
            .databases
            .get(service)
            .map_or_else(|| self.config.database_url(service), |db| db.url.clone());
        crate::storage::connect(&url, service, None)
            .await
            .unwrap_or_else(|e| panic!("{service} database: {e}"))
    }

    /// With identity mounted: creates [`BRAND`] and [`MALL`], allied in an ACTIVE alliance
    /// allowing every purpose, and [`OUTSIDER`], allied with nobody; each with the open
    /// stores [`HARNESS_STORES`].
    pub async fn with_partners(self) -> Self {
        use lianyu_proto::{
            common::v1::PartnerKind,
            identity::v1::{self as pb, partner_service_client::PartnerServiceClient},
        };
        let client = |token: &str| PartnerServiceClient::new(self.as_token(token));
        let mut operator = client(&self.operator_token());
        for (id, kind) in [
            (BRAND, PartnerKind::Brand),
            (MALL, PartnerKind::Mall),
            (OUTSIDER, PartnerKind::Brand),
        ] {
            operator
                .create_partner(pb::CreatePartnerRequest {
                    request_id: format!("harness-{id}"),
                    partner_id: id.to_owned(),
                    partner: Some(pb::Partner {
                        kind: kind as i32,
                        display_name: format!("Partner {id}"),
                        privacy_contact: format!("privacy@{id}.example"),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap_or_else(|e| panic!("create {id}: {e}"));
            for store in HARNESS_STORES {
                client(&self.token(id))
                    .create_store(pb::CreateStoreRequest {
                        request_id: format!("harness-{id}-{store}"),
                        parent: format!("partners/{id}"),
                        store_id: store.to_owned(),
                        store: Some(pb::Store {
                            display_name: format!("{id} {store}"),
                            city: "Shanghai".into(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("create {id}'s store {store}: {e}"));
            }
        }
        let until = crate::time::timestamp(crate::time::now_millis() + 365 * 24 * 3600 * 1000);
        let alliance = client(&self.token(BRAND))
            .create_alliance(pb::CreateAllianceRequest {
                request_id: "harness-alliance".into(),
                alliance: Some(pb::Alliance {
                    display_name: "Harness alliance".into(),
                    partners: vec![format!("partners/{BRAND}"), format!("partners/{MALL}")],
                    allowed_purposes: (1..=5).collect(),
                    data_categories: vec!["profile.basic".into()],
                    processing_method: "joint marketing".into(),
                    valid_until: until,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_or_else(|e| panic!("create alliance: {e}"))
            .into_inner();
        client(&self.token(MALL))
            .accept_alliance(pb::AcceptAllianceRequest {
                request_id: "harness-accept".into(),
                name: alliance.name,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("accept alliance: {e}"));
        self
    }
}
