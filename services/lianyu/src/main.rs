//! `lianyu`: run the mesh (`up`), mint a local token (`token`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use lianyu_kit::{
    Config,
    auth::{ALL_SCOPES, Signer, TokenRequest},
    config::Mode,
};

/// jemalloc rather than the system's allocator: under many small concurrent calls glibc's
/// malloc took a quarter of the CPU; with jemalloc a flash sale is answered ~25 % sooner and
/// health checks twice as fast (BENCHMARKS.md, "The allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "lianyu",
    version,
    about = "Lianyu: a gRPC mesh for brand–mall joint private domains"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all four services in one process on embedded SQLite.
    Up(UpArgs),
    /// Print a bearer token for the local mesh, signed with its dev key.
    Token(TokenArgs),
    /// Measure a scenario (or all of them, beside the baseline).
    Bench(BenchArgs),
    /// Recompute what can be rebuilt from the records: `ledger` sums every ledger transaction's
    /// postings per currency and reports any that does not come to zero (exit status 1).
    Audit(AuditArgs),
    /// Generate an Ed25519 token-signing key: the seed for identity's `LIANYU_SIGNING_KEY`
    /// and the `kid=public-key` pair to keep trusting it (`LIANYU_TOKEN_KEYS`) after a rotation.
    Keygen,
}

#[derive(Args)]
struct BenchArgs {
    /// The scenario: all, bare, baseline, consent-check, batch-consent-check, enroll,
    /// idle-streams, claim-drop, grant, redeem, viewers, flash-sale, segment, overlap or
    /// request-contact (several may be named). `all` runs every one but the last eight:
    /// bare (a plain tonic server), the baseline through the kit's layers (shown as a share of
    /// bare), then each other as a share of the baseline. claim-drop enrols --claimers members
    /// and has them all claim one of --units units at once; grant has the mall grant its own
    /// coupon to its members, redeem grants a unit then redeems it at the counter; viewers
    /// opens --viewers JoinSession streams and fans --events announcements out to them;
    /// flash-sale has --buyers members buy one each of --units units at once; segment writes
    /// --synthetic members into comarketing's database and computes a ten-condition segment
    /// of them (beside a one-condition one), overlap two segments of them; request-contact
    /// has the mall ask to message its --members members, the cap raised for the run.
    #[arg(value_parser = parse_scenarios)]
    scenario: Vec<lianyu::bench::Scenario>,
    /// A running mesh (http://host:port); by default bench starts its own on embedded SQLite.
    #[arg(long)]
    address: Option<String>,
    /// With --address: the data directory of that `lianyu up`, for its dev key.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Calls in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Members per batch-consent-check call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Members prepared for the consent scenarios.
    #[arg(long, default_value_t = 2000)]
    members: usize,
    /// Each worker waits as long as a refusal's RetryInfo asks before its next call, as a
    /// well-behaved client does; without it a refused worker calls again at once (the worst
    /// case for the server).
    #[arg(long)]
    honour_retry_info: bool,
    /// One JSON object per scenario instead of a table.
    #[arg(long)]
    json: bool,
    /// Streams idle-streams opens.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// The in-process mesh's database (postgres://…; one schema per service) instead of
    /// fresh SQLite files.
    #[arg(long, conflicts_with = "address")]
    database_url: Option<String>,
    /// claim-drop: members claiming at once.
    #[arg(long, default_value_t = 10_000)]
    claimers: usize,
    /// claim-drop: units in the drop; flash-sale: units on sale.
    #[arg(long, default_value_t = 1_000)]
    units: i64,
    /// viewers: viewer streams opened on one live session.
    #[arg(long, default_value_t = 10_000)]
    viewers: usize,
    /// viewers, with --address: the server's process id, so the memory per viewer is the
    /// server's own rather than this process's.
    #[arg(long, requires = "address")]
    server_pid: Option<u32>,
    /// viewers: announcements fanned out, one at a time.
    #[arg(long, default_value_t = 20)]
    events: usize,
    /// flash-sale: members buying at once (--units is the stock).
    #[arg(long, default_value_t = 10_000)]
    buyers: usize,
    /// segment and overlap: synthetic members written into comarketing's database.
    #[arg(long, default_value_t = 1_000_000)]
    synthetic: usize,
    /// How long idle-streams holds them while measuring.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    hold: Duration,
}

/// Prints a scenario's report: one JSON object, or the line `line` makes.
fn show(
    json: bool,
    report: &impl serde::Serialize,
    line: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", line());
    }
    Ok(())
}

fn parse_scenarios(s: &str) -> Result<lianyu::bench::Scenario, String> {
    use clap::ValueEnum;
    lianyu::bench::Scenario::from_str(s, true).map_err(|_| {
        format!(
            "no scenario {s:?}; the scenarios are all, {}",
            lianyu::bench::Scenario::names()
        )
    })
}

#[derive(Args)]
struct UpArgs {
    /// Address to listen on [env: LIANYU_LISTEN; default 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where databases and the dev signing key live [env: LIANYU_DATA_DIR; default ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Skip the demo a new local mesh runs (two partners sharing a member under consent).
    #[arg(long)]
    no_demo: bool,
}

#[derive(Args)]
struct AuditArgs {
    /// What to audit: ledger.
    #[arg(value_parser = ["ledger"])]
    what: String,
    /// The entitlements database [env: LIANYU_ENTITLEMENTS_DATABASE_URL or
    /// LIANYU_DATABASE_URL; default the local mesh's in --data-dir].
    #[arg(long)]
    database_url: Option<String>,
    /// The data directory of a local mesh [env: LIANYU_DATA_DIR; default ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// A token for the mesh operator.
    #[arg(long, conflicts_with = "partner", required_unless_present = "partner")]
    operator: bool,
    /// A token for this partner id.
    #[arg(long)]
    partner: Option<String>,
    /// Narrow the token to one store ("partners/{partner}/stores/{store}").
    #[arg(long)]
    store: Option<String>,
    /// Scopes, comma-separated; every scope by default.
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Lifetime, like 15m or 12h.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The data directory of the `lianyu up` to mint for [env: LIANYU_DATA_DIR; default ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn keygen() {
    let key = Signer::generate();
    let trusted = key.trusted_key();
    println!("LIANYU_SIGNING_KEY={}", key.seed());
    println!(
        "LIANYU_TOKEN_KEYS={}={}",
        trusted.key_id, trusted.public_key
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Up(args) => up(args).await,
        Command::Token(args) => token(args).await,
        Command::Bench(args) => bench(args).await,
        Command::Audit(args) => audit(args).await,
        Command::Keygen => {
            keygen();
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // A user-facing message, not a backtrace.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut config = Config::from_env()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let _telemetry = lianyu_kit::telemetry::init_mesh("lianyu", config.otlp_endpoint.as_deref())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let shutdown = lianyu_kit::server::shutdown_signal();
    let demo = !args.no_demo && config.mode == Mode::Local;
    lianyu::up(config, listener, shutdown, |ctx, names| {
        print_banner(&ctx.config, address, names);
        if demo {
            tokio::spawn(run_demo(
                format!("http://{address}"),
                ctx.config.data_dir.clone(),
                ctx.config.auth.clone(),
            ));
        }
    })
    .await?;
    Ok(())
}

/// The demo on a new mesh; a mesh that already has partners is left alone.
async fn run_demo(address: String, data_dir: PathBuf, auth: lianyu_kit::config::AuthConfig) {
    let say = |line: &str| println!("demo: {line}");
    match lianyu::demo::run(&address, &data_dir, &auth, say).await {
        Ok(Some(credentials)) => {
            let host = address.trim_start_matches("http://");
            println!(
                "demo: done. The partners' credentials (local demo data; secrets are shown once):"
            );
            for c in &credentials {
                println!(
                    "  {:<13} client_id {}  client_secret {}",
                    c.partner, c.client_id, c.client_secret
                );
            }
            if let Some(c) = credentials.first() {
                println!(
                    "  a partner's token: grpcurl -plaintext -d '{{\"client_id\":\"{}\",\"client_secret\":\"{}\"}}' {host} lianyu.identity.v1.AuthService/IssueToken",
                    c.client_id, c.client_secret
                );
            }
        }
        Ok(None) => println!(
            "demo: this mesh already has partners; skipped (a new --data-dir runs it again)"
        ),
        Err(e) => eprintln!("demo failed: {e:#}"),
    }
}

fn print_banner(config: &Config, address: SocketAddr, names: &[&str]) {
    let data = config.data_dir.display();
    let dir_flag = if config.data_dir == std::path::Path::new("./data") {
        String::new()
    } else {
        format!(" --data-dir {data}")
    };
    println!("lianyu mesh listening on {address}");
    println!("  services: {}", names.join(", "));
    // Never the URL itself: it may carry a password.
    if config.database_url("identity").starts_with("sqlite") {
        println!("  storage:  SQLite, one database per service in {data}");
    } else {
        println!("  storage:  PostgreSQL, one schema per service");
    }
    println!(
        "  a token:  export TOKEN=$(cargo run -q --release -p lianyu -- token --operator{dir_flag})"
    );
    println!("  list:     grpcurl -plaintext {address} list");
    println!("  health:   grpcurl -plaintext {address} grpc.health.v1.Health/Check");
    println!(
        "  call:     grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {address} lianyu.identity.v1.PartnerService/ListPartners"
    );
    println!("Ctrl-C stops it (health goes NOT_SERVING, in-flight calls finish).");
}

/// A service's existing database, to read: PostgreSQL in the service's own schema, as the
/// service connects; SQLite read-only, and only a file that is there (`hint` says where else
/// to look).
async fn open_to_read(
    url: &str,
    service: &str,
    hint: &str,
) -> anyhow::Result<sea_orm::DatabaseConnection> {
    if let Some(path) = url.strip_prefix("sqlite://")
        && !std::path::Path::new(path.split('?').next().unwrap_or(path)).exists()
    {
        bail!("no {service} database at {path}: {hint}");
    }
    if url.starts_with("postgres") {
        lianyu_kit::storage::connect(url, service, Some(1))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    } else {
        sea_orm::Database::connect(url.replace("mode=rwc", "mode=ro"))
            .await
            .map_err(anyhow::Error::from)
    }
    .with_context(|| format!("cannot open the {service} database"))
}

async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut config = Config::from_env()?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let url = args
        .database_url
        .unwrap_or_else(|| config.database_url(lianyu_entitlements::NAME));
    let db = open_to_read(
        &url,
        lianyu_entitlements::NAME,
        "pass --data-dir or --database-url",
    )
    .await?;
    let found = lianyu_entitlements::audit_ledger(&db).await?;
    for (transaction, currency, sum) in &found.unbalanced {
        println!("UNBALANCED ledgerEntries/{transaction}: {currency} postings sum to {sum}");
    }
    for (benefit, posted, held) in &found.balances {
        println!(
            "BALANCE MISMATCH in benefits/{benefit}: a member's postings say {posted}, the account holds {held}"
        );
    }
    if !found.unbalanced.is_empty() || !found.balances.is_empty() {
        bail!(
            "{} of {} ledger transactions do not balance; {} member balances differ from their postings",
            found.unbalanced.len(),
            found.transactions,
            found.balances.len()
        );
    }
    println!(
        "ledger balanced: {} transactions, every one sums to zero per currency, and every member's points and stored value equal their postings",
        found.transactions
    );
    Ok(())
}

async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let mut config = Config::from_env()?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    // Production has no dev key. With identity's own signing key in the environment an
    // operator can still mint a short-lived token once, to create the first credentials.
    let key = match (&config.auth.signing_key, config.mode) {
        (Some(seed), _) => {
            if config.mode == Mode::Production && args.ttl > Duration::from_secs(3600) {
                bail!("with the production signing key a token lives at most 1h (--ttl 1h)");
            }
            Signer::from_seed(seed.expose())?
        }
        (None, Mode::Local) => Signer::load(&config.data_dir)?,
        (None, Mode::Production) => bail!(
            "token minting uses the dev signing key and works only in local mode \
             (LIANYU_MODE=local), or with identity's LIANYU_SIGNING_KEY for a bootstrap token"
        ),
    };
    let partner_id = match (args.operator, args.partner) {
        (true, _) => "operator".to_owned(),
        (false, Some(id)) if !id.trim().is_empty() => id,
        _ => bail!("give --operator or --partner ID"),
    };
    for scope in &args.scopes {
        if lianyu_kit::auth::INTERNAL_SCOPES.contains(&scope.as_str()) {
            bail!(
                "{scope} is an internal scope: only a mesh service's token carries it, never a \
                 partner's or the operator's (a service gets one from a service credential)"
            );
        }
        if !ALL_SCOPES.contains(&scope.as_str()) {
            bail!(
                "unknown scope {scope:?}; scopes are {}",
                ALL_SCOPES.join(", ")
            );
        }
    }
    let scopes = if args.scopes.is_empty() {
        ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.scopes
    };
    if args.store.is_some() && args.operator {
        bail!("--store narrows a partner's token; the operator's has no store");
    }
    if !args.operator {
        // Only for a partner identity knows, as IssueToken would issue it: a typo would
        // otherwise write members and consents under a partner no one can see or audit.
        let url = config.database_url(lianyu_identity::NAME);
        let sqlite = url
            .strip_prefix("sqlite://")
            .map(|p| p.split('?').next().unwrap_or(p));
        if let Some(path) = sqlite.filter(|p| !std::path::Path::new(p).exists()) {
            // The signing key is here but identity's database is not: a mesh on PostgreSQL
            // whose URL this shell lacks. Mint, and say what was not checked.
            eprintln!(
                "note: no identity database at {path} (for a mesh on PostgreSQL, set \
                 DATABASE_URL as for `lianyu up`): partner {partner_id:?} was not checked"
            );
        } else {
            let db =
                open_to_read(&url, lianyu_identity::NAME, "pass the mesh's --data-dir").await?;
            if let Some(why) =
                lianyu_identity::token_refusal(&db, &partner_id, args.store.as_deref()).await?
            {
                bail!("{why}; no token minted");
            }
        }
    }
    let request = TokenRequest {
        partner_id,
        operator: args.operator,
        store: args.store,
        scopes,
        ttl: args.ttl,
        credential: None,
        service: false,
    };
    println!("{}", key.mint(&config.auth, &request)?);
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use lianyu::bench::{Load, Scenario, Target};
    let names = Scenario::names;
    let scenarios: Vec<Scenario> = if args.scenario.is_empty() {
        bail!("name a scenario: all, {} (or several)", names());
    } else if args.scenario.contains(&Scenario::All) {
        Scenario::EVERY.to_vec()
    } else {
        args.scenario.clone()
    };
    let mut config = Config::from_env()?;
    let own_mesh = args.address.is_none();
    let data = tempfile_dir()?;
    let address = match &args.address {
        Some(address) => {
            if let Some(dir) = &args.data_dir {
                config.data_dir = dir.clone();
            }
            address.clone()
        }
        None => {
            // The mesh runs in this process, on fresh SQLite files, sharing the cores with the load;
            // its limits come from the environment (LIANYU_MAX_CONCURRENT_REQUESTS, …).
            let limits = config.limits.clone();
            config = Config::local(data.path());
            config.limits = limits;
            if let Some(url) = &args.database_url {
                // One PostgreSQL database; each service keeps to its own schema.
                config.set_database_url("*", url.clone());
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let address = format!("http://{}", listener.local_addr()?);
            let up_config = config.clone();
            tokio::spawn(async move {
                lianyu::up(up_config, listener, std::future::pending(), |_, _| {}).await
            });
            // The listener accepts connections before the mesh has started (made its dev key,
            // migrated its databases): wait until it answers a health check.
            let channel =
                lianyu_kit::client::connect_when_up(&address, Duration::from_secs(30)).await?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let serving = async {
                while health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(60), serving)
                .await
                .is_err()
            {
                bail!("the in-process mesh did not start within 60 s");
            }
            address
        }
    };
    let needs_coupon = scenarios
        .iter()
        .any(|s| matches!(s, Scenario::Grant | Scenario::Redeem));
    let needs_members = needs_coupon
        || scenarios.iter().any(|s| {
            matches!(
                s,
                Scenario::ConsentCheck | Scenario::BatchConsentCheck | Scenario::RequestContact
            )
        });
    let members = if needs_members {
        args.members.max(args.batch)
    } else {
        0
    };
    eprintln!(
        "preparing {} ({members} members)…",
        if own_mesh {
            "an in-process mesh"
        } else {
            address.as_str()
        }
    );
    let mut target = Target::prepare(&address, &config.data_dir, &config.auth, members).await?;
    if needs_coupon {
        target = target.with_coupon().await?;
    }
    let load = Load {
        concurrency: args.concurrency.max(1),
        channels: args.channels.max(1),
        warmup: args.warmup,
        duration: args.duration,
        batch: args.batch.clamp(1, 1000),
        progress: !args.json,
        honour_retry_info: args.honour_retry_info,
    };
    let mut baseline = None;
    let mut bare_rps = None;
    let mut synthetic = None;
    if scenarios.contains(&Scenario::RequestContact) {
        target.raise_contact_cap().await?;
    }
    for scenario in scenarios {
        if matches!(scenario, Scenario::Segment | Scenario::Overlap) {
            if synthetic.is_none() {
                synthetic = Some(
                    lianyu::bench::audience::prepare(
                        &target,
                        &config.database_url(lianyu_comarketing::NAME),
                        args.synthetic.max(1),
                    )
                    .await?,
                );
            }
            let prepared = synthetic
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("synthetic members were not prepared"))?;
            if scenario == Scenario::Segment {
                let report = lianyu::bench::audience::segment(&target, prepared).await?;
                show(args.json, &report, || {
                    format!(
                        "segment  {} members ({} facts, written in {:.1}s), {} conditions: {} matched in {:.3}s ({:.1}x the {:.3}s of a one-condition segment)",
                        report.members,
                        report.facts,
                        report.seed_seconds,
                        report.conditions,
                        report.matched,
                        report.seconds,
                        report.seconds / report.baseline_seconds.max(1e-9),
                        report.baseline_seconds
                    )
                })?;
            } else {
                let report = lianyu::bench::audience::overlap(&target, prepared).await?;
                show(args.json, &report, || {
                    format!(
                        "overlap  two segments of {} members (computed in {:.3}s and {:.3}s): overlap {} answered in {:.3}s ({:.1}x the {:.3}s of GetSegmentSize)",
                        report.members,
                        report.compute_seconds[0],
                        report.compute_seconds[1],
                        report.overlap,
                        report.seconds,
                        report.seconds / report.baseline_seconds.max(1e-9),
                        report.baseline_seconds
                    )
                })?;
            }
            continue;
        }
        if scenario == Scenario::ClaimDrop {
            let report = lianyu::bench::drop::claim_drop(
                &target,
                args.claimers.max(1),
                args.units.max(1),
                args.channels.max(1),
            )
            .await?;
            show(args.json, &report, || {
                format!(
                    "claim-drop  {} claimers, {} units: {} granted to {} members, every claim answered in {:.3}s ({:.1}x the {:.3}s of as many health checks); refused {:?}",
                    report.claimers,
                    report.budget_units,
                    report.units_granted,
                    report.distinct_members,
                    report.seconds,
                    report.seconds / report.baseline_seconds.max(1e-9),
                    report.baseline_seconds,
                    report.refusals
                )
            })?;
            continue;
        }
        if scenario == Scenario::Viewers {
            let report = lianyu::bench::live::viewers(
                &target,
                args.viewers.max(1),
                args.events.max(1),
                args.server_pid,
            )
            .await?;
            show(args.json, &report, || {
                format!(
                    "viewers  {} viewers open in {:.1}s ({} refused), {:.0} bytes a viewer ({}); {} events: fan-out p50 {:.1} ms, p99 {:.1} ms ({:.1}x the {:.2} ms health round trip), {} deliveries missed",
                    report.viewers,
                    report.open_seconds,
                    report.refused,
                    report.bytes_per_viewer,
                    report.memory_of,
                    report.events,
                    report.fanout_p50_ms,
                    report.fanout_p99_ms,
                    report.fanout_p99_ms / report.baseline_rtt_ms.max(1e-9),
                    report.baseline_rtt_ms,
                    report.missed
                )
            })?;
            continue;
        }
        if scenario == Scenario::FlashSale {
            let report = lianyu::bench::live::flash_sale(
                &target,
                args.buyers.max(1),
                args.units.max(1),
                args.channels.max(1),
            )
            .await?;
            show(args.json, &report, || {
                format!(
                    "flash-sale  {} buyers, {} units: {} sold to {} members, every buyer answered in {:.3}s ({:.1}x the {:.3}s of as many health checks); refused {:?}",
                    report.buyers,
                    report.units,
                    report.units_sold,
                    report.distinct_buyers,
                    report.seconds,
                    report.seconds / report.baseline_seconds.max(1e-9),
                    report.baseline_seconds,
                    report.refusals
                )
            })?;
            continue;
        }
        if scenario == Scenario::IdleStreams {
            let report =
                lianyu::bench::streams::idle_streams(&target, args.streams, args.hold).await;
            show(args.json, &report, || {
                format!(
                    "idle-streams  {} streams open in {:.1}s ({} refused); holding {:.0}s: {:.1}% of a core, {:.0} bytes a stream",
                    report.streams,
                    report.open_seconds,
                    report.refused,
                    report.hold_seconds,
                    report.cpu_percent,
                    report.rss_bytes_per_stream
                )
            })?;
            continue;
        }
        let report = if scenario == Scenario::Bare {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let bare = format!("http://{}", listener.local_addr()?);
            let server = tokio::spawn(lianyu::bench::serve_bare(listener));
            lianyu_kit::client::connect_when_up(&bare, Duration::from_secs(10)).await?;
            let report = lianyu::bench::run(&target.at(&bare)?, scenario, &load).await;
            server.abort();
            bare_rps = Some(report.requests_per_second);
            report
        } else {
            lianyu::bench::run(&target, scenario, &load).await
        };
        if scenario == Scenario::Baseline {
            baseline = Some(report.requests_per_second);
        }
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            // Each scenario as a share of the baseline; the baseline as a share of bare (what
            // the kit's layers leave of a plain tonic server).
            let reference = match scenario {
                Scenario::Bare => None,
                Scenario::Baseline => bare_rps,
                _ => baseline,
            };
            println!("{}", report.line(reference));
        }
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::tempdir()?)
}
