//! `lianyu`: run the mesh (`up`), mint a local token (`token`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use lianyu_kit::{
    Config,
    auth::{ALL_SCOPES, DevKey, TokenRequest},
    config::Mode,
};

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
}

#[derive(Args)]
struct UpArgs {
    /// Address to listen on [env: LIANYU_LISTEN; default 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where databases and the dev signing key live [env: LIANYU_DATA_DIR; default ./data].
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Up(args) => up(args).await,
        Command::Token(args) => token(args),
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
    let _telemetry = lianyu_kit::telemetry::init("lianyu", config.otlp_endpoint.as_deref())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let shutdown = lianyu_kit::server::shutdown_signal();
    lianyu::up(config, listener, shutdown, |ctx, names| {
        print_banner(&ctx.config, address, names)
    })
    .await?;
    Ok(())
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

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let mut config = Config::from_env()?;
    if config.mode != Mode::Local {
        bail!(
            "token minting uses the dev signing key and works only in local mode (LIANYU_MODE=local)"
        );
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let key = DevKey::load(&config.data_dir)?;
    let partner_id = match (args.operator, args.partner) {
        (true, _) => "operator".to_owned(),
        (false, Some(id)) if !id.trim().is_empty() => id,
        _ => bail!("give --operator or --partner ID"),
    };
    for scope in &args.scopes {
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
    let request = TokenRequest {
        partner_id,
        operator: args.operator,
        store: args.store,
        scopes,
        ttl: args.ttl,
    };
    println!("{}", key.mint(&config.auth, &request)?);
    Ok(())
}
