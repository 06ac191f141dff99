//! The whole mesh in one process: `lianyu up` mounts all four services on one address, each
//! on its own database, for development, demos and tests.

mod bearer;
pub mod bench;
pub mod demo;
mod demo_campaign;

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
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(&ServerContext, &[&'static str]),
) -> Result<(), StartError> {
    let config = with_peers_at(config, &listener)?;
    let ctx = ServerContext::new(config)?;
    let mount = mount_all(&ctx).await?;
    ready(&ctx, mount.names());
    lianyu_kit::server::serve(&ctx, mount, listener, shutdown).await
}

/// Points every service's calls to its peers at this process's own listener, unless a peer's
/// URL is configured: in `lianyu up` the whole mesh answers on one address.
pub fn with_peers_at(mut config: Config, listener: &TcpListener) -> Result<Config, StartError> {
    let address = listener.local_addr()?;
    let host = if address.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        address.ip()
    };
    let url = format!("http://{}", std::net::SocketAddr::new(host, address.port()));
    for service in SERVICES {
        if config.peer(service)?.is_none() {
            config.set_peer_url(service, url.clone());
        }
    }
    Ok(config)
}
