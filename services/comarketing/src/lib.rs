//! Lianyu comarketing: joint campaigns, consent-filtered audiences, contact caps, the AIPL funnel.
//!
//! `run` serves it alone; `mount` adds it to a shared server (`lianyu up`).

mod api;
pub mod domain;
mod store;

use std::future::Future;

use lianyu_kit::{Config, Mount, ServerContext, StartError};
use tokio::net::TcpListener;

/// The service's name: its database, its schema, its config prefix.
pub const NAME: &str = "comarketing";

/// Opens the service's database (migrating it) and adds its gRPC services to `mount`.
pub async fn mount(ctx: &ServerContext, mount: &mut Mount) -> Result<(), StartError> {
    let db = ctx.open_database::<store::Migrator>(NAME).await?;
    api::register(mount, db);
    Ok(())
}

/// Serves the service alone on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    lianyu_kit::server::run_service(config, listener, shutdown, mount).await
}
