//! Typed configuration with a pure constructor (`Config::from_vars`) that tests feed directly;
//! `Config::from_env` is the thin shell that reads the process environment.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

/// Whether the process may use the development signing key kept in the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A laptop, a demo, a test: SQLite by default, a dev signing key in the data directory.
    Local,
    /// Kubernetes: token keys and database URLs must be given; no dev key is ever read or made.
    Production,
}

/// Server limits, each with a default that suits a 2-core pod.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Deadline for a call that sets none (a caller's shorter `grpc-timeout` wins).
    pub request_timeout: Duration,
    /// Unary calls served at once across all connections, sized to what the database behind
    /// them can do; beyond this (after `admission_wait`) calls are refused, not queued.
    pub max_concurrent_requests: usize,
    /// The share of `max_concurrent_requests` one partner may hold, in percent.
    pub partner_share_percent: usize,
    /// How long a call may wait for a free slot before it is refused.
    pub admission_wait: Duration,
    /// Server-streaming calls (feeds, viewer streams) open at once.
    pub max_streams: usize,
    /// How often a feed's reader polls for other replicas' appends when nothing woke it
    /// (PostgreSQL wakes it at once through LISTEN/NOTIFY; SQLite has one process).
    pub feed_poll: Duration,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// HTTP/2 streams per connection (tonic sets none by default).
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Connections are closed gracefully after this age so load spreads over new pods.
    pub max_connection_age: Duration,
    /// Between health turning NOT_SERVING and the listener closing (lets load balancers notice).
    pub shutdown_delay: Duration,
    /// How long in-flight calls get to finish after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 128,
            partner_share_percent: 75,
            admission_wait: Duration::from_millis(250),
            max_streams: 16_384,
            feed_poll: Duration::from_millis(500),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(300),
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// A public key tokens may be signed with: key id and the raw Ed25519 key, base64url.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub key_id: String,
    pub public_key: String,
}

/// How tokens are verified.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    /// Keys given in configuration (`LIANYU_TOKEN_KEYS`): during a signing-key rotation, the
    /// previous key until the last token it signed expires. The process's own signing key,
    /// the dev key in local mode, and the keys fetched from identity are trusted as well.
    pub trusted_keys: Vec<TrustedKey>,
    /// `LIANYU_SIGNING_KEY`: the identity service's Ed25519 seed, base64url. Only identity
    /// reads it; in local mode the dev key signs when it is absent.
    pub signing_key: Option<Secret>,
    /// `LIANYU_TOKEN_TTL`: how long an issued token lives (at most a day).
    pub token_ttl: Duration,
    /// `LIANYU_KEY_REFRESH_INTERVAL`: how often a service re-reads identity's signing keys.
    pub key_refresh: Duration,
}

/// A secret from configuration; it never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `LIANYU_SQLITE_WAL_MIB`'s default: the write-ahead log length the kit's storage measured best
/// under steady writes.
pub const DEFAULT_SQLITE_WAL_MIB: u32 = 64;

/// Everything a service process needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub listen: SocketAddr,
    /// Where the mesh's internal contracts (`lianyu.<service>.internal.v1`) are served, apart
    /// from the public ones (`LIANYU_INTERNAL_LISTEN`), so a network policy can admit only the
    /// mesh's services to them; unset, everything is served on `listen`.
    pub internal_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Database URLs set in code by service name (tests, `lianyu up`); `"*"` for all.
    database_urls: BTreeMap<String, String>,
    /// Peer URLs set in code (`lianyu up` points every service at its own address).
    peer_urls: BTreeMap<String, String>,
    /// The variables the config was read from, for settings named after a service
    /// (`LIANYU_<SERVICE>_DATABASE_URL`, `LIANYU_<SERVICE>_URL`) and a service's own settings
    /// ([`Config::var`]): the kit names no service.
    source: Source,
    pub db_max_connections: Option<u32>,
    /// `LIANYU_SQLITE_WAL_MIB`: how long a SQLite database's write-ahead log may grow before
    /// the commit that passes it copies it back and lets it start over (MiB, 1 to 4,096). The
    /// default suits steady writes ([`crate::storage`]); a small volume can take less.
    pub sqlite_wal_mib: u32,
    pub migrate: bool,
    pub auth: AuthConfig,
    pub otlp_endpoint: Option<String>,
    pub limits: Limits,
    /// `LIANYU_IDEMPOTENCY_TTL`: how long a `request_id` is remembered (and its reply kept).
    pub idempotency_ttl: Duration,
    /// `LIANYU_FEED_RETENTION`: how long a feed's events are kept (30 days; 0 keeps them
    /// forever). A stream resuming from an older cursor is told CURSOR_EXPIRED.
    pub feed_retention: Duration,
}

/// Where configuration variables come from: the environment, or a map in tests.
#[derive(Clone)]
struct Source(std::sync::Arc<Lookup>);

impl Source {
    /// `name`'s value; when unset, the content of the file `name_FILE` names (a mounted
    /// Secret), without its final line break. Blank counts as unset.
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .or_else(|| {
                let path = (self.0)(&format!("{name}{FILE_SUFFIX}"))?;
                let text = std::fs::read_to_string(path.trim()).ok()?;
                Some(text.trim_end_matches(['\n', '\r']).to_owned())
            })
            .filter(|v| !v.trim().is_empty())
    }
}

/// A variable lookup: the name in, the value (if set) out.
type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Service settings may be secrets: none is printed.
        f.write_str("Source(..)")
    }
}

/// A configuration value that stops start-up, naming the variable at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

impl Config {
    /// Builds a config from a variable lookup; pure, so tests pass a closure over a map.
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        Self::build(get, Vec::new())
    }

    /// [`Self::from_vars`], also checking the `…_FILE` variables in `file_vars`.
    fn build(
        get: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
        file_vars: Vec<String>,
    ) -> Result<Self, ConfigError> {
        // `X_FILE` names a file holding `X` (a mounted Secret), read when `X` itself is unset.
        check_files(&get, file_vars)?;
        let source = Source(std::sync::Arc::new(move |name: &str| {
            get(name).filter(|v| !v.trim().is_empty())
        }));
        let var = |name: &str| source.get(name);
        let mode = match var("LIANYU_MODE").as_deref() {
            None | Some("local") => Mode::Local,
            Some("production") => Mode::Production,
            Some(other) => {
                return Err(err(
                    "LIANYU_MODE",
                    format!("expected local or production, got {other:?}"),
                ));
            }
        };
        let listen = match var("LIANYU_LISTEN") {
            None => SocketAddr::from(([127, 0, 0, 1], 50051)),
            Some(v) => v
                .parse()
                .map_err(|_| err("LIANYU_LISTEN", format!("not a socket address: {v:?}")))?,
        };
        let internal_listen = var("LIANYU_INTERNAL_LISTEN")
            .map(|v| {
                v.parse().map_err(|_| {
                    err(
                        "LIANYU_INTERNAL_LISTEN",
                        format!("not a socket address: {v:?}"),
                    )
                })
            })
            .transpose()?;
        if let Some(url) = var("DATABASE_URL") {
            check_db_url("DATABASE_URL", url)?;
        }
        let trusted_keys = match var("LIANYU_TOKEN_KEYS") {
            None => Vec::new(),
            Some(v) => parse_keys(&v).map_err(|m| err("LIANYU_TOKEN_KEYS", m))?,
        };
        let signing_key = var("LIANYU_SIGNING_KEY").map(Secret::new);
        if let Some(seed) = &signing_key {
            crate::keycodec::decode_seed(seed.expose())
                .map_err(|e| err("LIANYU_SIGNING_KEY", format!("signing key: {e}")))?;
        }
        if mode == Mode::Production {
            // Identity is the trust anchor: its URL is where every other service fetches keys.
            if trusted_keys.is_empty()
                && signing_key.is_none()
                && var("LIANYU_IDENTITY_URL").is_none()
            {
                return Err(err(
                    "LIANYU_TOKEN_KEYS",
                    "production mode needs keys to verify tokens: LIANYU_IDENTITY_URL (fetched \
                     from identity), LIANYU_SIGNING_KEY (identity itself) or kid=base64url-key,..."
                        .into(),
                ));
            }
        }
        let otlp_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(ep) = &otlp_endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            return Err(err(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "give a scheme: http://collector:4317".into(),
            ));
        }
        let d = Limits::default();
        let limits = Limits {
            request_timeout: duration(&var, "LIANYU_REQUEST_TIMEOUT", d.request_timeout)?,
            max_concurrent_requests: number(
                &var,
                "LIANYU_MAX_CONCURRENT_REQUESTS",
                d.max_concurrent_requests,
            )?,
            partner_share_percent: number(&var, "LIANYU_PARTNER_SHARE", d.partner_share_percent)
                .and_then(|p| {
                    if (1..=100).contains(&p) {
                        Ok(p)
                    } else {
                        Err(err("LIANYU_PARTNER_SHARE", "a percentage, 1 to 100".into()))
                    }
                })?,
            admission_wait: duration(&var, "LIANYU_ADMISSION_WAIT", d.admission_wait)?,
            max_streams: number(&var, "LIANYU_MAX_STREAMS", d.max_streams)?,
            feed_poll: duration(&var, "LIANYU_FEED_POLL", d.feed_poll)?,
            max_message_bytes: number(&var, "LIANYU_MAX_MESSAGE_BYTES", d.max_message_bytes)?,
            max_concurrent_streams: number(
                &var,
                "LIANYU_MAX_CONCURRENT_STREAMS",
                d.max_concurrent_streams,
            )?,
            keepalive_interval: duration(&var, "LIANYU_KEEPALIVE_INTERVAL", d.keepalive_interval)?,
            keepalive_timeout: duration(&var, "LIANYU_KEEPALIVE_TIMEOUT", d.keepalive_timeout)?,
            max_connection_age: duration(&var, "LIANYU_MAX_CONNECTION_AGE", d.max_connection_age)?,
            shutdown_delay: duration(&var, "LIANYU_SHUTDOWN_DELAY", d.shutdown_delay)?,
            drain_timeout: duration(&var, "LIANYU_DRAIN_TIMEOUT", d.drain_timeout)?,
        };
        Ok(Self {
            mode,
            listen,
            internal_listen,
            data_dir: PathBuf::from(var("LIANYU_DATA_DIR").unwrap_or_else(|| "./data".into())),
            database_urls: BTreeMap::new(),
            peer_urls: BTreeMap::new(),
            db_max_connections: var("LIANYU_DB_MAX_CONNECTIONS")
                .map(|v| positive("LIANYU_DB_MAX_CONNECTIONS", &v))
                .transpose()?,
            sqlite_wal_mib: number(&var, "LIANYU_SQLITE_WAL_MIB", DEFAULT_SQLITE_WAL_MIB)
                .and_then(|mib| {
                    if mib > 4096 {
                        Err(err(
                            "LIANYU_SQLITE_WAL_MIB",
                            format!("at most 4096 (4 GiB), got {mib}"),
                        ))
                    } else {
                        Ok(mib)
                    }
                })?,
            migrate: boolean(&var, "LIANYU_MIGRATE", true)?,
            auth: AuthConfig {
                issuer: var("LIANYU_TOKEN_ISSUER").unwrap_or_else(|| "lianyu".into()),
                audience: var("LIANYU_TOKEN_AUDIENCE").unwrap_or_else(|| "lianyu-mesh".into()),
                trusted_keys,
                signing_key,
                token_ttl: duration(&var, "LIANYU_TOKEN_TTL", Duration::from_secs(15 * 60))
                    .and_then(|ttl| {
                        if ttl > Duration::from_secs(24 * 3600) {
                            Err(err("LIANYU_TOKEN_TTL", "at most 24h".into()))
                        } else {
                            Ok(ttl)
                        }
                    })?,
                key_refresh: duration(
                    &var,
                    "LIANYU_KEY_REFRESH_INTERVAL",
                    Duration::from_secs(60),
                )?,
            },
            otlp_endpoint,
            limits,
            idempotency_ttl: duration(
                &var,
                "LIANYU_IDEMPOTENCY_TTL",
                Duration::from_secs(24 * 3600),
            )?,
            feed_retention: duration(
                &var,
                "LIANYU_FEED_RETENTION",
                Duration::from_secs(30 * 24 * 3600),
            )?,
            source,
        })
    }

    /// Reads the process environment. Every `LIANYU_…_FILE` and `DATABASE_URL_FILE` variable
    /// must name a readable file, and never beside the variable it stands for.
    pub fn from_env() -> Result<Self, ConfigError> {
        let files: Vec<String> = std::env::vars()
            .map(|(name, _)| name)
            .filter(|name| {
                (name.starts_with("LIANYU_") || name.starts_with("DATABASE_URL"))
                    && name.ends_with(FILE_SUFFIX)
            })
            .collect();
        Self::build(|name| std::env::var(name).ok(), files)
    }

    /// A local config for tests and `lianyu up`: everything default, data under `data_dir`.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        let mut config =
            Self::from_vars(|_| None).unwrap_or_else(|_| unreachable!("defaults are valid"));
        config.data_dir = data_dir.into();
        config
    }

    /// A service's own setting (`LIANYU_IDENTITY_KEY`), read from the same source as the rest
    /// of the configuration; blank counts as unset.
    pub fn var(&self, name: &str) -> Option<String> {
        self.source.get(name)
    }

    /// Sets one variable on top of the source (tests, `lianyu up`): [`Self::var`] reads it.
    pub fn set_var(&mut self, name: &str, value: impl Into<String>) {
        let previous = self.source.0.clone();
        let (name, value) = (name.to_owned(), value.into());
        self.source = Source(std::sync::Arc::new(move |n: &str| {
            if n == name {
                Some(value.clone())
            } else {
                previous(n)
            }
        }));
    }

    /// [`Self::var`] for a secret, which never prints.
    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.var(name).map(Secret::new)
    }

    /// The database a service uses: a URL set in code, else `LIANYU_<SERVICE>_DATABASE_URL`,
    /// else `DATABASE_URL`, else a SQLite file in the data dir.
    pub fn database_url(&self, service: &str) -> String {
        self.database(service).ok().flatten().unwrap_or_else(|| {
            format!("sqlite://{}/{service}.db?mode=rwc", self.data_dir.display())
        })
    }

    /// The database URL configured for `service`, checked: a malformed URL names its
    /// variable, and production mode refuses to fall back to a local SQLite file.
    pub fn checked_database_url(&self, service: &str) -> Result<String, ConfigError> {
        match self.database(service)? {
            Some(url) => Ok(url),
            None if self.mode == Mode::Production => Err(err(
                "DATABASE_URL",
                format!(
                    "required in production mode (or {})",
                    service_var(service, "DATABASE_URL")
                ),
            )),
            None => Ok(self.database_url(service)),
        }
    }

    fn database(&self, service: &str) -> Result<Option<String>, ConfigError> {
        if let Some(url) = self.database_urls.get(service) {
            return Ok(Some(url.clone()));
        }
        let own = service_var(service, "DATABASE_URL");
        if let Some(url) = self.var(&own) {
            return check_db_url(&own, url).map(Some);
        }
        if let Some(url) = self.database_urls.get("*") {
            return Ok(Some(url.clone()));
        }
        self.var("DATABASE_URL")
            .map(|url| check_db_url("DATABASE_URL", url))
            .transpose()
    }

    /// Where another service of the mesh answers (`LIANYU_<SERVICE>_URL`), for calls to it.
    pub fn peer(&self, service: &str) -> Result<Option<String>, ConfigError> {
        match self.peer_urls.get(service) {
            Some(url) => Ok(Some(url.clone())),
            None => self.url_var(&service_var(service, "URL")),
        }
    }

    /// Where another service's internal contract answers: `LIANYU_<SERVICE>_INTERNAL_URL`
    /// (its `LIANYU_INTERNAL_LISTEN` port), else where it answers at all ([`Self::peer`]).
    pub fn internal_peer(&self, service: &str) -> Result<Option<String>, ConfigError> {
        if self.peer_urls.contains_key(service) {
            return self.peer(service);
        }
        match self.url_var(&service_var(service, "INTERNAL_URL"))? {
            Some(url) => Ok(Some(url)),
            None => self.peer(service),
        }
    }

    /// A URL variable, which must name its scheme.
    fn url_var(&self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.var(name) {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                Err(err(name, "must start with http:// or https://".into()))
            }
            url => Ok(url),
        }
    }

    /// Where `service` answers, set in code (it wins over `LIANYU_<SERVICE>_URL`).
    pub fn set_peer_url(&mut self, service: &str, url: impl Into<String>) {
        self.peer_urls.insert(service.to_owned(), url.into());
    }

    /// Points one service (or `"*"`, all of them) at a database.
    pub fn set_database_url(&mut self, service: &str, url: impl Into<String>) {
        self.database_urls.insert(service.to_owned(), url.into());
    }
}

/// `X_FILE`: the path of a file whose content is `X` (Kubernetes Secrets mounted as files, so
/// they never sit in the environment, where `/proc/<pid>/environ` and crash reports show them).
const FILE_SUFFIX: &str = "_FILE";

/// Secrets that, when named as files, must be there: a missing mount stops start-up naming
/// the variable. Any other `…_FILE` whose file does not exist reads as unset, the way an
/// optional Secret's missing key does (token keys, a service credential, the overlap key).
const REQUIRED_FILES: &[&str] = &[
    "DATABASE_URL_FILE",
    "LIANYU_SIGNING_KEY_FILE",
    "LIANYU_IDENTITY_KEY_FILE",
];

/// A `…_FILE` variable set beside the variable it stands for, naming a file that exists but
/// cannot be read, or naming a missing file for a [required](REQUIRED_FILES) secret, stops
/// start-up naming it.
fn check_files(
    get: &(dyn Fn(&str) -> Option<String> + Send + Sync),
    mut names: Vec<String>,
) -> Result<(), ConfigError> {
    names.extend(REQUIRED_FILES.iter().map(|n| (*n).to_owned()));
    for name in names {
        let Some(path) = get(&name).filter(|p| !p.trim().is_empty()) else {
            continue;
        };
        let base = &name[..name.len() - FILE_SUFFIX.len()];
        if get(base).is_some_and(|v| !v.trim().is_empty()) {
            return Err(err(&name, format!("set either {base} or {name}, not both")));
        }
        match std::fs::read_to_string(path.trim()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && !REQUIRED_FILES.contains(&name.as_str()) => {}
            Err(e) => return Err(err(&name, format!("cannot read {}: {e}", path.trim()))),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// `LIANYU_<SERVICE>_<SUFFIX>`.
fn service_var(service: &str, suffix: &str) -> String {
    format!("LIANYU_{}_{suffix}", service.to_uppercase())
}

fn err(var: &str, message: String) -> ConfigError {
    ConfigError {
        var: var.to_owned(),
        message,
    }
}

fn check_db_url(var: &str, url: String) -> Result<String, ConfigError> {
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(url)
    } else {
        Err(err(var, "expected a sqlite: or postgres:// URL".into()))
    }
}

fn parse_keys(v: &str) -> Result<Vec<TrustedKey>, String> {
    v.split(',')
        .map(|pair| {
            let (kid, key) = pair
                .trim()
                .split_once('=')
                .ok_or("expected kid=base64url-key pairs")?;
            crate::keycodec::decode_public_key(key).map_err(|e| format!("key {kid}: {e}"))?;
            Ok(TrustedKey {
                key_id: kid.to_owned(),
                public_key: key.to_owned(),
            })
        })
        .collect()
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    var: &str,
    v: &str,
) -> Result<T, ConfigError> {
    match v.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(err(
            var,
            format!("expected a positive whole number, got {v:?}"),
        )),
    }
}

fn number<T: std::str::FromStr + PartialOrd + Default>(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
) -> Result<T, ConfigError> {
    var(name).map_or(Ok(default), |v| positive(name, &v))
}

fn duration(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    var(name).map_or(Ok(default), |v| {
        humantime::parse_duration(v.trim()).map_err(|_| {
            err(
                name,
                format!("expected a duration like 30s or 500ms, got {v:?}"),
            )
        })
    })
}

fn boolean(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    match var(name).as_deref().map(str::trim) {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(v) => Err(err(name, format!("expected true or false, got {v:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + use<> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_run_on_a_laptop() {
        let c = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(c.mode, Mode::Local);
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(
            c.database_url("identity"),
            "sqlite://./data/identity.db?mode=rwc"
        );
        assert!(c.migrate);
        assert_eq!(c.sqlite_wal_mib, 64);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = Config::from_vars(vars(&[("LIANYU_LISTEN", "nowhere")])).unwrap_err();
        assert_eq!(e.var, "LIANYU_LISTEN");
        let e = Config::from_vars(vars(&[("LIANYU_REQUEST_TIMEOUT", "soon")])).unwrap_err();
        assert_eq!(e.var, "LIANYU_REQUEST_TIMEOUT");
        let e = Config::from_vars(vars(&[("LIANYU_MAX_CONCURRENT_REQUESTS", "0")])).unwrap_err();
        assert_eq!(e.var, "LIANYU_MAX_CONCURRENT_REQUESTS");
        let e = Config::from_vars(vars(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        let e = Config::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]))
            .unwrap_err();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_ENDPOINT");
        for bad in ["0", "-1", "64MiB", "4097"] {
            let e = Config::from_vars(vars(&[("LIANYU_SQLITE_WAL_MIB", bad)])).unwrap_err();
            assert_eq!(e.var, "LIANYU_SQLITE_WAL_MIB", "{bad}");
        }
        let c = Config::from_vars(vars(&[("LIANYU_SQLITE_WAL_MIB", "8")])).unwrap();
        assert_eq!(c.sqlite_wal_mib, 8);
    }

    #[test]
    fn production_requires_keys_and_a_database() {
        let e = Config::from_vars(vars(&[("LIANYU_MODE", "production")])).unwrap_err();
        assert_eq!(e.var, "LIANYU_TOKEN_KEYS");
        let key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let c = Config::from_vars(vars(&[
            ("LIANYU_MODE", "production"),
            ("LIANYU_TOKEN_KEYS", &format!("k1={key}")),
        ]))
        .unwrap();
        let e = c.checked_database_url("live").unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(e.message.contains("LIANYU_LIVE_DATABASE_URL"), "{e}");
        let c = Config::from_vars(vars(&[
            ("LIANYU_MODE", "production"),
            ("LIANYU_TOKEN_KEYS", &format!("k1={key}")),
            ("DATABASE_URL", "postgres://db/mesh"),
            ("LIANYU_IDENTITY_DATABASE_URL", "postgres://db/identity"),
        ]))
        .unwrap();
        assert_eq!(c.database_url("identity"), "postgres://db/identity");
        assert_eq!(c.database_url("live"), "postgres://db/mesh");
        assert_eq!(c.auth.trusted_keys[0].key_id, "k1");
    }

    #[test]
    fn settings_named_after_a_service_are_read_by_name() {
        let c = Config::from_vars(vars(&[
            ("LIANYU_LIVE_DATABASE_URL", "sqlite://live.db"),
            ("LIANYU_IDENTITY_URL", "http://identity:50051"),
            ("LIANYU_LIVE_URL", "live:50051"),
        ]))
        .unwrap();
        assert_eq!(c.checked_database_url("live").unwrap(), "sqlite://live.db");
        assert_eq!(
            c.peer("identity").unwrap().as_deref(),
            Some("http://identity:50051")
        );
        assert_eq!(c.peer("live").unwrap_err().var, "LIANYU_LIVE_URL");
        // Internal calls go to a peer's internal port when it has one, else to its one port.
        assert_eq!(
            c.internal_peer("identity").unwrap().as_deref(),
            Some("http://identity:50051")
        );
        let c = Config::from_vars(vars(&[
            ("LIANYU_IDENTITY_URL", "http://identity:50051"),
            ("LIANYU_IDENTITY_INTERNAL_URL", "http://identity:50052"),
            ("LIANYU_INTERNAL_LISTEN", "0.0.0.0:50052"),
        ]))
        .unwrap();
        assert_eq!(
            c.internal_peer("identity").unwrap().as_deref(),
            Some("http://identity:50052")
        );
        assert_eq!(
            c.peer("identity").unwrap().as_deref(),
            Some("http://identity:50051")
        );
        assert_eq!(c.internal_listen, Some(([0, 0, 0, 0], 50052).into()));
        let e = Config::from_vars(vars(&[("LIANYU_INTERNAL_LISTEN", "internal")])).unwrap_err();
        assert_eq!(e.var, "LIANYU_INTERNAL_LISTEN");
        assert_eq!(c.peer("comarketing").unwrap(), None);
        let c = Config::from_vars(vars(&[("LIANYU_LIVE_DATABASE_URL", "mysql://x")])).unwrap();
        assert_eq!(
            c.checked_database_url("live").unwrap_err().var,
            "LIANYU_LIVE_DATABASE_URL"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::from_vars(vars(&[("LIANYU_IDENTITY_KEY", "very-secret-value")])).unwrap();
        assert!(!format!("{c:?}").contains("very-secret-value"));
        let secret = c.secret("LIANYU_IDENTITY_KEY").unwrap();
        assert!(!format!("{secret:?}").contains("very-secret-value"));
        assert_eq!(secret.expose(), "very-secret-value");
    }

    #[test]
    fn a_secret_mounted_as_a_file_reads_as_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "postgres://db/identity\n").unwrap();
        let path = url.to_str().unwrap().to_owned();
        let c = Config::from_vars(vars(&[("DATABASE_URL_FILE", &path)])).unwrap();
        assert_eq!(c.database_url("identity"), "postgres://db/identity");
        let c = Config::from_vars(vars(&[("LIANYU_COMARKETING_OVERLAP_KEY_FILE", &path)])).unwrap();
        assert_eq!(
            c.secret("LIANYU_COMARKETING_OVERLAP_KEY").unwrap().expose(),
            "postgres://db/identity"
        );
        // A missing mount stops start-up naming the variable instead of reading as unset.
        let e = Config::from_vars(vars(&[("DATABASE_URL_FILE", "/nonexistent/url")])).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL_FILE");
        // An optional secret's missing file reads as unset.
        let c =
            Config::from_vars(vars(&[("LIANYU_TOKEN_KEYS_FILE", "/nonexistent/keys")])).unwrap();
        assert!(c.auth.trusted_keys.is_empty());
        let e = Config::from_vars(vars(&[
            ("DATABASE_URL_FILE", &path),
            ("DATABASE_URL", "postgres://db/other"),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "DATABASE_URL_FILE");
        // A variable set in code as a file (a test, `lianyu up`) reads the same way.
        let mut c = Config::local("unused");
        c.set_var("LIANYU_LIVE_CLIENT_SECRET_FILE", path.clone());
        assert_eq!(
            c.secret("LIANYU_LIVE_CLIENT_SECRET").unwrap().expose(),
            "postgres://db/identity"
        );
        // The file's content is checked like the variable's.
        std::fs::write(&url, "mysql://db").unwrap();
        let e = Config::from_vars(vars(&[("DATABASE_URL_FILE", &path)])).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
    }

    #[test]
    fn a_malformed_key_is_refused() {
        let e = Config::from_vars(vars(&[("LIANYU_TOKEN_KEYS", "k1=short")])).unwrap_err();
        assert_eq!(e.var, "LIANYU_TOKEN_KEYS");
    }
}
