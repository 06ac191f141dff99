//! Helpers for tests across the workspace: a fresh database per test (SQLite in a temporary
//! directory, or a new PostgreSQL database when `LIANYU_TEST_BACKEND=postgres`) and tokens.

use std::time::Duration;

use crate::{
    auth::{ALL_SCOPES, DevKey, TokenRequest},
    config::AuthConfig,
};

/// The environment variable naming a PostgreSQL server tests may create databases on.
pub const POSTGRES_URL_VAR: &str = "LIANYU_TEST_POSTGRES_URL";

/// Which backend generic tests run on.
pub fn backend_is_postgres() -> bool {
    std::env::var("LIANYU_TEST_BACKEND").is_ok_and(|v| v == "postgres")
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
        let admin = sea_orm::Database::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect {admin_url}: {e}"));
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database: {e}"));
        let _ = admin.close().await;
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
    TokenRequest {
        partner_id: partner_id.to_owned(),
        operator: false,
        store: None,
        scopes: ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        ttl: Duration::from_secs(3600),
    }
}

/// Mints a token the local server in `data_dir` accepts.
pub fn mint(data_dir: &std::path::Path, auth: &AuthConfig, request: &TokenRequest) -> String {
    let key = DevKey::load_or_create(data_dir).unwrap_or_else(|e| panic!("dev key: {e}"));
    key.mint(auth, request)
        .unwrap_or_else(|e| panic!("mint: {e}"))
}
