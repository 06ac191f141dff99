//! The whole mesh in one process: `lianyu up` mounts all four services on one address, each
//! on its own database, for development, demos and tests.

mod bearer;
pub mod bench;
pub mod demo;

use std::future::Future;

use lianyu_kit::{Config, Mount, ServerContext, StartError};
use tokio::net::TcpListener;

/// The services `lianyu up` runs, in mount order; each names its database and its settings.
pub const SERVICES: [&str; 4] = [
    lianyu_identity::NAME,
    lianyu_entitlements::NAME,
    lianyu_live::NAME,
    lianyu_comarketing::NAME,
];

/// Mounts identity, entitlements, live and comarketing on one server.
pub async fn mount_all(ctx: &ServerContext) -> Result<Mount, StartError> {
    let mut mount = Mount::new(ctx);
    lianyu_identity::mount(ctx, &mut mount).await?;
    lianyu_entitlements::mount(ctx, &mut mount).await?;
    lianyu_live::mount(ctx, &mut mount).await?;
    lianyu_comarketing::mount(ctx, &mut mount).await?;
    Ok(mount)
}

/// Runs the mesh on `listener` until `shutdown` completes. `ready` is called with the
/// context and the mounted service names once every database is migrated, before serving.
pub async fn up(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&ServerContext, &[&'static str]),
) -> Result<(), StartError> {
    let ctx = ServerContext::new(config)?;
    let mount = mount_all(&ctx).await?;
    ready(&ctx, mount.names());
    lianyu_kit::server::serve(&ctx, mount, listener, shutdown).await
}
