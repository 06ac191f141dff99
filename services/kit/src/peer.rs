//! Calls from one mesh service to another. A [`Peer`] carries this service's own token (a
//! service principal: role `service`, internal scopes only), the caller's remaining deadline
//! (never a longer one), the trace context, and retries an idempotent call on UNAVAILABLE (and
//! on CANCELLED, met when a connection closes at its maximum age) with jittered exponential
//! backoff, within a retry budget so that retries never multiply an outage's load.
//!
//! The service's token comes from one of two places ([`ServiceToken`]): in `lianyu up`, where
//! identity signs in the same process, it is minted with the process's own key; standalone
//! (Kubernetes), it is exchanged through identity's `IssueToken` for a service credential the
//! operator created (`LIANYU_<SERVICE>_CLIENT_ID` and `LIANYU_<SERVICE>_CLIENT_SECRET` or
//! `…_CLIENT_SECRET_FILE`). Either way it is renewed before it expires.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::{
    auth::{Signer, TokenRequest},
    client::PeerChannel,
    config::{AuthConfig, Secret},
};

tokio::task_local! {
    /// The deadline of the call this task is serving, from its `grpc-timeout`.
    static DEADLINE: Instant;
}

/// The deadline of the call being served, if its caller set one.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Runs `f` as if serving a call with `deadline` (tests, and work a handler hands off).
pub async fn with_deadline<F: std::future::Future>(deadline: Instant, f: F) -> F::Output {
    DEADLINE.scope(deadline, f).await
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Makes each call's deadline (its `grpc-timeout`) known to the handler's outgoing peer calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = DeadlineScope<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineScope { inner }
    }
}

#[derive(Clone, Debug)]
pub struct DeadlineScope<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for DeadlineScope<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        tokio::task::futures::TaskLocalFuture<Instant, S::Future>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| Instant::now() + d);
        let future = self.inner.call(request);
        match deadline {
            Some(deadline) => futures::future::Either::Left(DEADLINE.scope(deadline, future)),
            None => futures::future::Either::Right(future),
        }
    }
}

/// Where a service's token comes from.
enum TokenSource {
    /// `lianyu up`: identity runs in this process; mint with its key.
    Mint {
        signer: Arc<Signer>,
        auth: AuthConfig,
        ttl: Duration,
    },
    /// Standalone: exchange a service credential at identity.
    Exchange {
        identity: PeerChannel,
        client_id: String,
        secret: Secret,
    },
    /// Tests: each fetch takes the next answer sent, waiting for it.
    #[cfg(test)]
    Scripted(tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Fetched>>),
}

/// A fetched token and how long it lives, or why none came.
type Fetched = Result<(String, Duration), tonic::Status>;

/// How long a service goes on with its old (unexpired) token after a renewal failed, before
/// one of its calls tries again.
const RENEWAL_RETRY: Duration = Duration::from_secs(1);

/// The token a service holds.
#[derive(Clone)]
struct Held {
    token: Arc<str>,
    /// When a call first tries to renew it.
    renew_at: Instant,
    /// When it stops being sent.
    expires_at: Instant,
}

/// Why a service has no token to call its peers with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceTokenError {
    #[error(
        "{service} calls other services but has no service credential: set \
         LIANYU_{upper}_CLIENT_ID and LIANYU_{upper}_CLIENT_SECRET (or their _FILE variables) to a \
         credential the operator created with `CreateCredential` for services/{service}"
    )]
    NoCredential { service: String, upper: String },
}

/// A mesh service's own token, renewed when four fifths of its life have passed.
pub struct ServiceToken {
    service: String,
    source: TokenSource,
    current: std::sync::Mutex<Option<Held>>,
    /// One renewal at a time; holds the last failed one's time and answer.
    renewing: tokio::sync::Mutex<Option<(Instant, tonic::Status)>>,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceToken({})", self.service)
    }
}

impl ServiceToken {
    /// Minted with `signer` (the process's own key, which identity in this process trusts).
    pub fn minted(service: &str, signer: Arc<Signer>, auth: AuthConfig, ttl: Duration) -> Self {
        Self::new(service, TokenSource::Mint { signer, auth, ttl })
    }

    /// Exchanged at identity for a service credential.
    pub fn exchanged(
        service: &str,
        identity: PeerChannel,
        client_id: String,
        secret: Secret,
    ) -> Self {
        Self::new(
            service,
            TokenSource::Exchange {
                identity,
                client_id,
                secret,
            },
        )
    }

    fn new(service: &str, source: TokenSource) -> Self {
        Self {
            service: service.to_owned(),
            source,
            current: std::sync::Mutex::new(None),
            renewing: tokio::sync::Mutex::new(None),
        }
    }

    /// The service's configured credential (`LIANYU_<SERVICE>_CLIENT_ID` and `…_SECRET` or
    /// `…_SECRET_FILE`), if any.
    pub fn credential_from(
        config: &crate::Config,
        service: &str,
    ) -> Result<Option<(String, Secret)>, ServiceTokenError> {
        let upper = service.to_uppercase();
        let Some(client_id) = config.var(&format!("LIANYU_{upper}_CLIENT_ID")) else {
            return Ok(None);
        };
        // `…_CLIENT_SECRET_FILE` (a mounted Secret) reads as the variable itself (config.rs).
        let secret = config
            .secret(&format!("LIANYU_{upper}_CLIENT_SECRET"))
            .ok_or_else(|| ServiceTokenError::NoCredential {
                service: service.to_owned(),
                upper: upper.clone(),
            })?;
        Ok(Some((client_id, secret)))
    }

    /// The service this token speaks for.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// A token valid for a while yet, renewed first when most of its life has passed. One
    /// call renews it; the others go on with the old token meanwhile, as long as it has not
    /// expired. When renewal fails (identity restarting, say) and the old token has not
    /// expired, the old one is used, and renewal is tried again a second later; with no token
    /// to go on with, calls in that second get the failure's answer without asking identity.
    pub async fn bearer(&self) -> Result<Arc<str>, tonic::Status> {
        let held = self.held();
        if let Some(h) = &held
            && Instant::now() < h.renew_at
        {
            return Ok(h.token.clone());
        }
        let mut failed = match self.renewing.try_lock() {
            Ok(renewing) => renewing,
            Err(_) => match &held {
                Some(h) if Instant::now() < h.expires_at => return Ok(h.token.clone()),
                _ => self.renewing.lock().await,
            },
        };
        // Renewed by another call meanwhile?
        if let Some(h) = self.held()
            && Instant::now() < h.renew_at
        {
            return Ok(h.token);
        }
        // Identity failed a moment ago: the same answer, without asking again — an outage of
        // identity is not a flood of renewals and warnings. (A token still usable is never
        // here: a failure put its renewal a full pause away, or at its expiry.)
        if let Some((at, status)) = failed.as_ref()
            && Instant::now() < *at + RENEWAL_RETRY
        {
            return Err(status.clone());
        }
        match self.fetch().await {
            Ok((token, ttl)) => {
                *failed = None;
                let token: Arc<str> = Arc::from(token);
                let now = Instant::now();
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Held {
                    token: token.clone(),
                    renew_at: now + ttl.mul_f64(0.8),
                    expires_at: now + ttl,
                });
                Ok(token)
            }
            Err(status) => {
                tracing::warn!(service = %self.service, code = ?status.code(), "service token renewal failed");
                let now = Instant::now();
                *failed = Some((now, status.clone()));
                // The token held now: one a peer refused meanwhile is gone.
                match self
                    .current
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    Some(held) if now < held.expires_at => {
                        held.renew_at = (now + RENEWAL_RETRY).min(held.expires_at);
                        Ok(held.token.clone())
                    }
                    _ => Err(status),
                }
            }
        }
    }

    fn held(&self) -> Option<Held> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets `token` if it is the one held, so the next call fetches a fresh one: a peer
    /// refused it (its signing key rotated out, say — a token cached until four fifths of its
    /// life would otherwise be refused for up to twelve minutes). Synchronous, so that a
    /// stream ending with a refusal forgets its token before its consumer opens the next one.
    pub fn forget(&self, token: &str) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|h| &*h.token == token) {
            *current = None;
        }
    }

    async fn fetch(&self) -> Fetched {
        match &self.source {
            #[cfg(test)]
            TokenSource::Scripted(answers) => answers
                .lock()
                .await
                .recv()
                .await
                .unwrap_or_else(|| Err(tonic::Status::unavailable("no answer scripted"))),
            TokenSource::Mint { signer, auth, ttl } => signer
                .mint(auth, &TokenRequest::service(&self.service, *ttl))
                .map(|t| (t, *ttl))
                .map_err(|e| tonic::Status::internal(format!("minting a service token: {e}"))),
            TokenSource::Exchange {
                identity,
                client_id,
                secret,
            } => {
                use lianyu_proto::identity::v1::{
                    IssueTokenRequest, auth_service_client::AuthServiceClient,
                };
                let mut request = tonic::Request::new(IssueTokenRequest {
                    client_id: client_id.clone(),
                    client_secret: secret.expose().to_owned(),
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(5));
                let reply = AuthServiceClient::new(identity.clone())
                    .issue_token(request)
                    .await?
                    .into_inner();
                let ttl = reply
                    .expire_time
                    .and_then(|t| {
                        let left = t.seconds - chrono::Utc::now().timestamp();
                        u64::try_from(left).ok()
                    })
                    .map_or(Duration::from_secs(60), Duration::from_secs);
                Ok((reply.access_token, ttl))
            }
        }
    }
}

/// Whether an idempotent call that failed with `status` is sent again: UNAVAILABLE (the peer
/// is down or restarting), and what a call meets when the connection it was put on closes
/// under it, as every mesh server closes its connections at their maximum age
/// (`LIANYU_MAX_CONNECTION_AGE`, GOAWAY): CANCELLED, or — when the stream is reset without a
/// gRPC status — INTERNAL with tonic's "h2 protocol error" (HTTP/2's own failure, never a
/// peer's answer: a handler's INTERNAL comes as a gRPC status and is not retried). Sent
/// again, a fresh connection serves it. Only idempotent calls are: whether the peer had
/// served the first try is not known.
fn retryable(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => true,
        tonic::Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    }
}

/// Whether `status` is the peer's auth layer refusing the token itself (expired, signed by a
/// key it no longer trusts, revoked) rather than anything the call asked.
fn token_refused(status: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    status.code() == tonic::Code::Unauthenticated
        && status.get_details_error_info().is_some_and(|info| {
            info.domain == crate::auth::AUTH_DOMAIN
                && matches!(
                    info.reason.as_str(),
                    "TOKEN_INVALID" | "TOKEN_EXPIRED" | "TOKEN_REVOKED"
                )
        })
}

/// Whether a call may be repeated without repeating its effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads, and writes keyed by a request id: retried on UNAVAILABLE, CANCELLED and a
    /// reset HTTP/2 stream ([`retryable`]).
    Idempotent,
    /// Anything else: sent once.
    Once,
}

/// The longest a call to a peer may take when the served call set no shorter deadline.
pub const PEER_DEADLINE: Duration = Duration::from_secs(2);

/// Attempts per idempotent call, the first included.
const MAX_ATTEMPTS: u32 = 3;
/// The first retry waits about this long (jittered ±50 %), doubling each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);

/// Another mesh service, called as this service's principal.
#[derive(Clone)]
pub struct Peer {
    /// The peer's name (`identity`), for logs and metrics.
    name: String,
    channel: PeerChannel,
    token: Arc<ServiceToken>,
    /// Retries may add at most 20 % to the calls made (and 10 a second on a quiet day).
    budget: Arc<TpsBudget>,
    /// The deadline of a call made outside any served call.
    default_deadline: Duration,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer({} as {})", self.name, self.token.service())
    }
}

impl Peer {
    pub fn new(
        name: &str,
        channel: PeerChannel,
        token: Arc<ServiceToken>,
        default_deadline: Duration,
    ) -> Self {
        Self {
            name: name.to_owned(),
            channel,
            token,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            default_deadline,
        }
    }

    /// The channel, for building the peer's generated client.
    pub fn channel(&self) -> PeerChannel {
        self.channel.clone()
    }

    /// Opens a server stream from the peer (a `Watch…` feed) as this service: no deadline
    /// (a feed stays open) and no retry (the consumer reconnects from its cursor). A token the
    /// peer refuses, when the stream opens or later (its key rotated out, its credential
    /// revoked), is forgotten, so the consumer reconnects with a fresh one.
    pub async fn open_stream<T, U, S, F, Fut>(
        &self,
        message: T,
        open: F,
    ) -> Result<
        impl futures::Stream<Item = Result<U, tonic::Status>> + Unpin + use<T, U, S, F, Fut>,
        tonic::Status,
    >
    where
        S: futures::Stream<Item = Result<U, tonic::Status>> + Unpin,
        F: FnOnce(PeerChannel, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<S>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(message);
        let sent = self.authorize(&mut request).await?;
        let opened = open(self.channel.clone(), request).await;
        if let Err(status) = &opened
            && token_refused(status)
        {
            // The consumer opens again from its cursor, with a fresh token.
            self.token.forget(&sent);
        }
        let token = self.token.clone();
        opened.map(|response| {
            futures::StreamExt::inspect(response.into_inner(), move |item| {
                if let Err(status) = item
                    && token_refused(status)
                {
                    token.forget(&sent);
                }
            })
        })
    }

    /// Puts the service's token on `request`; the token sent.
    async fn authorize<T>(
        &self,
        request: &mut tonic::Request<T>,
    ) -> Result<Arc<str>, tonic::Status> {
        let token = self.token.bearer().await?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("service token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(token)
    }

    /// Calls the peer: `send` gets the channel and a request carrying the service token and
    /// the deadline left (the served call's remaining deadline, or the default outside one).
    /// An idempotent call is retried on UNAVAILABLE, CANCELLED or a reset stream ([`retryable`]) while
    /// deadline and retry budget last.
    pub async fn call<T, R, F, Fut>(
        &self,
        idempotency: Idempotency,
        message: T,
        mut send: F,
    ) -> Result<R, tonic::Status>
    where
        T: Clone,
        F: FnMut(PeerChannel, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let deadline = current_deadline().map_or(Instant::now() + self.default_deadline, |d| {
            d.min(Instant::now() + self.default_deadline)
        });
        self.budget.deposit();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        let mut renewed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                return Err(tonic::Status::deadline_exceeded(format!(
                    "no time left for the call to {}",
                    self.name
                )));
            }
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(left);
            let sent = self.authorize(&mut request).await?;
            let result = tokio::time::timeout(left, send(self.channel.clone(), request))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded(format!(
                        "{} did not answer in time",
                        self.name
                    )))
                });
            match result {
                Ok(response) => return Ok(response.into_inner()),
                // Refused by the peer's auth layer, before any handler ran: nothing was done,
                // so even a call sent once goes again — once — with a fresh token.
                Err(status) if token_refused(&status) && !renewed => {
                    tracing::debug!(peer = %self.name, "service token refused, renewing it");
                    self.token.forget(&sent);
                    renewed = true;
                }
                Err(status)
                    if idempotency == Idempotency::Idempotent
                        && retryable(&status)
                        && attempt < MAX_ATTEMPTS =>
                {
                    let wait = backoff.mul_f64(rand::random::<f64>() + 0.5);
                    if Instant::now() + wait >= deadline || !self.budget.withdraw() {
                        return Err(status);
                    }
                    tracing::debug!(peer = %self.name, attempt, code = ?status.code(), "retrying");
                    tokio::time::sleep(wait).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(status) => return Err(status),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer at `address` (a health server), called as the `live` service with a token its
    /// own key mints.
    fn health_peer(address: std::net::SocketAddr) -> Peer {
        let signer = Arc::new(Signer::generate());
        let auth = AuthConfig {
            issuer: "lianyu".into(),
            audience: "mesh".into(),
            trusted_keys: vec![signer.trusted_key()],
            signing_key: None,
            token_ttl: Duration::from_secs(600),
            key_refresh: Duration::from_secs(300),
        };
        let token = Arc::new(ServiceToken::minted(
            "live",
            signer,
            auth,
            Duration::from_secs(600),
        ));
        let channel =
            crate::client::peer(&format!("http://{address}"), Duration::from_secs(2)).unwrap();
        Peer::new("health", channel, token, Duration::from_secs(2))
    }

    /// A peer refuses the token a service holds (its signing key rotated out): the call goes
    /// again, once, with a fresh token, which is then kept; a fresh token refused too is the
    /// caller's answer, with no loop.
    #[tokio::test]
    async fn a_refused_service_token_is_renewed_and_the_call_sent_again_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        // Which calls (counted from 1) the peer refuses: the first, then every one from 100.
        let refuse_from = Arc::new(AtomicUsize::new(usize::MAX));
        let (log, from) = (seen.clone(), refuse_from.clone());
        let refusing = tonic::service::interceptor::InterceptedService::new(
            health,
            move |request: tonic::Request<()>| {
                let bearer = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let mut log = log.lock().unwrap();
                log.push(bearer);
                if log.len() == 1 || log.len() >= from.load(Ordering::SeqCst) {
                    return Err(crate::auth::AuthError::Invalid.into_status());
                }
                Ok(request)
            },
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(refusing)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let peer = health_peer(address);
        let check = || {
            peer.call(
                Idempotency::Once,
                HealthCheckRequest::default(),
                |ch, r| async move { HealthClient::new(ch).check(r).await },
            )
        };
        check().await.expect("served with a fresh token");
        check().await.expect("served again");
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 3, "{seen:?}");
            assert_ne!(seen[0], seen[1], "the refused token is not sent again");
            assert_eq!(seen[1], seen[2], "the fresh token is kept");
        }
        refuse_from.store(4, Ordering::SeqCst);
        let refused = check().await.expect_err("a fresh token refused too");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5, "sent again once, not in a loop: {seen:?}");
        assert_ne!(seen[3], seen[4]);
    }

    /// Identity slow or away when the service token is due for renewal: the calls go on with
    /// the old token while it lasts — none waits for another's renewal, a failed renewal is
    /// tried again a second later, not on every call — but never with a token a peer refused
    /// or one that has expired.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_fails_leaves_the_old_token_in_use_until_it_expires() {
        use futures::FutureExt;
        let (answer, answers) = tokio::sync::mpsc::unbounded_channel::<Fetched>();
        let token = Arc::new(ServiceToken::new(
            "live",
            TokenSource::Scripted(tokio::sync::Mutex::new(answers)),
        ));
        let ttl = Duration::from_secs(10);
        let away = || Err(tonic::Status::unavailable("identity is restarting"));
        answer.send(Ok(("t1".into(), ttl))).unwrap();
        assert_eq!(&*token.bearer().await.unwrap(), "t1");

        // Due for renewal (four fifths of its life), and identity slow to answer.
        tokio::time::advance(Duration::from_secs(9)).await;
        let renewal = renewing(&token).await;
        let meanwhile = token.bearer().now_or_never();
        assert_eq!(
            meanwhile
                .expect("no call waits for another's renewal")
                .unwrap()
                .as_ref(),
            "t1"
        );
        answer.send(away()).unwrap();
        assert_eq!(
            &*renewal.await.unwrap().unwrap(),
            "t1",
            "renewal failed, t1 lasts"
        );
        let next = token.bearer().now_or_never();
        assert_eq!(
            next.expect("not tried again at once").unwrap().as_ref(),
            "t1"
        );

        // A second later the next call renews it.
        tokio::time::advance(RENEWAL_RETRY).await;
        answer.send(Ok(("t2".into(), ttl))).unwrap();
        assert_eq!(&*token.bearer().await.unwrap(), "t2");

        // A token a peer refused is not used again, even when renewal then fails — also when
        // the refusal comes while a renewal is under way.
        token.forget("t2");
        answer.send(away()).unwrap();
        assert_eq!(
            token.bearer().await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
        // With no token left, calls in the next second get that answer without asking.
        let asked_again = token.bearer().now_or_never();
        assert_eq!(
            asked_again
                .expect("identity is not asked again at once")
                .unwrap_err()
                .code(),
            tonic::Code::Unavailable
        );
        tokio::time::advance(RENEWAL_RETRY).await;
        answer.send(Ok(("t3".into(), ttl))).unwrap();
        assert_eq!(&*token.bearer().await.unwrap(), "t3");
        tokio::time::advance(Duration::from_secs(9)).await;
        let renewal = renewing(&token).await;
        token.forget("t3");
        answer.send(away()).unwrap();
        assert_eq!(
            renewal.await.unwrap().unwrap_err().code(),
            tonic::Code::Unavailable
        );

        // Nor one that has expired.
        tokio::time::advance(RENEWAL_RETRY).await;
        answer.send(Ok(("t4".into(), ttl))).unwrap();
        assert_eq!(&*token.bearer().await.unwrap(), "t4");
        tokio::time::advance(ttl + Duration::from_secs(1)).await;
        answer.send(away()).unwrap();
        assert_eq!(
            token.bearer().await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
    }

    /// A call renewing `token`, started and waiting for identity's answer.
    async fn renewing(
        token: &Arc<ServiceToken>,
    ) -> tokio::task::JoinHandle<Result<Arc<str>, tonic::Status>> {
        let renewal = tokio::spawn({
            let token = token.clone();
            async move { token.bearer().await }
        });
        while token.renewing.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        renewal
    }

    /// A feed's stream that ends with the peer refusing its token (the key that signed it
    /// rotated out while it was open) leaves the service with a fresh token for the consumer's
    /// next open; a stream that ends for any other reason keeps the token.
    #[tokio::test]
    async fn a_stream_ended_by_its_tokens_refusal_reopens_with_a_fresh_token() {
        let peer = health_peer("127.0.0.1:9".parse().unwrap());
        let open = |end: tonic::Status| {
            let peer = &peer;
            async move {
                let sent = Arc::new(std::sync::Mutex::new(String::new()));
                let seen = sent.clone();
                let mut stream = peer
                    .open_stream((), move |_, request: tonic::Request<()>| async move {
                        *seen.lock().unwrap() = request
                            .metadata()
                            .get("authorization")
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .to_owned();
                        Ok(tonic::Response::new(futures::stream::iter([
                            Ok(1),
                            Err(end),
                        ])))
                    })
                    .await
                    .unwrap();
                assert_eq!(
                    futures::StreamExt::next(&mut stream)
                        .await
                        .unwrap()
                        .unwrap(),
                    1
                );
                let ended = futures::StreamExt::next(&mut stream).await.unwrap();
                assert!(ended.is_err());
                sent.lock().unwrap().clone()
            }
        };
        let lost = tonic::Status::unavailable("connection reset");
        let first = open(lost.clone()).await;
        let second = open(crate::auth::AuthError::Invalid.into_status()).await;
        assert_eq!(
            first, second,
            "a stream ended by a lost connection keeps its token"
        );
        let third = open(lost).await;
        assert_ne!(
            second, third,
            "the token refused mid-stream is not sent again"
        );
        assert_eq!(third, open(tonic::Status::unavailable("again")).await);
        // A refusal that is not about the token (a missing scope) keeps it too.
        let scope = crate::auth::AuthError::MissingScope("x.read".into()).into_status();
        let fourth = open(scope).await;
        assert_eq!(third, fourth);
        assert_eq!(fourth, open(tonic::Status::unavailable("again")).await);
    }

    /// A server closes its connections at their maximum age (GOAWAY), as every mesh server
    /// does every few minutes; an idempotent call that meets one closing fails CANCELLED and
    /// is sent again on a fresh connection: the caller never sees it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_calls_ride_over_connections_closed_at_their_age() {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .max_connection_age(Duration::from_millis(20))
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let peer = health_peer(address);
        let mut failed = Vec::new();
        // Many connection lifetimes, four callers at a time.
        for _ in 0..100 {
            let calls = (0..4).map(|_| {
                peer.call(
                    Idempotency::Idempotent,
                    HealthCheckRequest::default(),
                    |ch, r| async move { HealthClient::new(ch).check(r).await },
                )
            });
            for result in futures::future::join_all(calls).await {
                if let Err(status) = result {
                    failed.push(format!("{:?}: {}", status.code(), status.message()));
                }
            }
        }
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    }

    #[tokio::test]
    async fn a_served_calls_grpc_timeout_is_its_handlers_deadline() {
        use tower::{Layer, Service, ServiceExt};
        let mut service =
            DeadlineLayer.layer(tower::service_fn(|_: http::Request<()>| async move {
                Ok::<_, std::convert::Infallible>(current_deadline())
            }));
        let with = http::Request::builder()
            .header("grpc-timeout", "100m")
            .body(())
            .unwrap();
        let before = Instant::now();
        let seen = service
            .ready()
            .await
            .unwrap()
            .call(with)
            .await
            .unwrap()
            .unwrap();
        assert!(seen > before && seen <= Instant::now() + Duration::from_millis(100));
        let without = http::Request::builder().body(()).unwrap();
        assert_eq!(
            service.ready().await.unwrap().call(without).await.unwrap(),
            None
        );
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_nonsense_does_not() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "5x", "123456789S", "-5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
