//! Channels to peer services. Every channel the kit builds carries the caller's W3C trace
//! context, has a connect timeout and a default deadline, and spreads calls over several
//! HTTP/2 connections (one connection caps throughput on a busy peer).

use std::time::Duration;

use tonic::{
    codegen::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::telemetry::TracePropagation;

/// A channel to a peer with trace propagation.
pub type PeerChannel = InterceptedService<Channel, TracePropagation>;

/// HTTP/2 connections opened to each peer.
pub const CONNECTIONS_PER_PEER: usize = 4;

#[derive(Debug, thiserror::Error)]
#[error("peer address {url:?}: {message}")]
pub struct PeerError {
    pub url: String,
    pub message: String,
}

/// Connects to a server that may still be starting (a process just spawned), retrying every
/// 50 ms for up to `wait`.
pub async fn connect_when_up(address: &str, wait: Duration) -> Result<Channel, PeerError> {
    let endpoint = Channel::from_shared(address.to_owned()).map_err(|e| PeerError {
        url: address.to_owned(),
        message: e.to_string(),
    })?;
    let until = tokio::time::Instant::now() + wait;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if tokio::time::Instant::now() >= until => {
                return Err(PeerError {
                    url: address.to_owned(),
                    message: format!("did not come up: {e}"),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A lazily connecting channel to `url` (`http://host:port`); calls fail with UNAVAILABLE
/// while the peer is down rather than blocking start-up.
pub fn peer(url: &str, deadline: Duration) -> Result<PeerChannel, PeerError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| PeerError {
            url: url.to_owned(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(deadline)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let channel = Channel::balance_list(std::iter::repeat_n(endpoint, CONNECTIONS_PER_PEER));
    Ok(InterceptedService::new(channel, TracePropagation))
}

/// Sends `authorization: Bearer <token>` on every call (none for [`Bearer::none`]): the one
/// interceptor the mesh's own clients, its load generator and its tests use.
#[derive(Clone, Debug)]
pub struct Bearer(Option<std::sync::Arc<str>>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Self(Some(std::sync::Arc::from(token)))
    }

    /// Sends no token, for the open calls (and for testing their refusal).
    pub fn none() -> Self {
        Self(None)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("the token is not a header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}
