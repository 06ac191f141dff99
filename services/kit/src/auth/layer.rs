//! The tower layer that authenticates every `lianyu.*` call before routing. Health, reflection
//! and the RPCs the contract declares ACCESS_PUBLIC (the token exchange) stay open.
//!
//! A server-streaming call (a feed, a viewer stream, a dashboard) can outlive its token: its
//! stream ends with the refusal a new call with that token would get — UNAUTHENTICATED /
//! TOKEN_EXPIRED once the token expires, TOKEN_REVOKED, PARTNER_SUSPENDED or STORE_CLOSED the
//! moment that happens, TOKEN_INVALID when the key that signed it is rotated out — and the
//! client reconnects with a fresh token from its cursor.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

use super::{
    AuthError, Holder, TokenVerifier,
    scope::{Requirement, requirement},
};

#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    streaming: Arc<HashSet<String>>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>) -> Self {
        Self {
            verifier,
            streaming: Arc::new(lianyu_proto::access::streaming_methods()),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
            streaming: self.streaming.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
    streaming: Arc<HashSet<String>>,
}

/// What a streaming call's body needs to end when its token stops being accepted.
struct Watch {
    holder: Holder,
    expires: i64,
}

impl<S> Authenticate<S> {
    /// Authenticates `request`; for a server-streaming call, what its stream keeps watching.
    fn check<B>(&self, request: &mut Request<B>) -> Result<Option<Watch>, AuthError> {
        let path = request.uri().path();
        let method = lianyu_proto::access::path(path);
        let scope = match requirement(path) {
            Requirement::Open => return Ok(None),
            Requirement::Scope(scope) => Some(scope),
            Requirement::Token => None,
        };
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(AuthError::Missing)?;
        let token = token.trim();
        let (principal, expires) = self.verifier.verify_until(token)?;
        let watch = self.streaming.contains(path).then(|| Watch {
            holder: Holder::of(&principal),
            expires,
        });
        if let Some(scope) = scope
            && (!principal.has_scope(&scope)
                // An internal RPC answers mesh services only, and only the services that call
                // that contract, whatever a token claims.
                || (super::INTERNAL_SCOPES.contains(&scope.as_str())
                    && !principal
                        .service
                        .as_deref()
                        .is_some_and(|s| super::service_scopes(s).contains(&scope.as_str()))))
        {
            return Err(AuthError::MissingScope(scope));
        }
        tracing::Span::current().record("lianyu.partner", principal.partner_id.as_str());
        if let Some(method) = method {
            request
                .extensions_mut()
                .insert(crate::call::RpcMethod(method));
        }
        request.extensions_mut().insert(principal);
        Ok(watch)
    }
}

/// A streaming response's body that ends with the token's refusal, in the trailers, as soon as
/// the token expires or the verifier starts refusing it.
struct Guarded {
    body: Body,
    holder: Holder,
    verifier: Arc<TokenVerifier>,
    expiry: Pin<Box<tokio::time::Sleep>>,
    refusals: tokio_stream::wrappers::WatchStream<u64>,
    ended: bool,
}

impl Guarded {
    fn new(body: Body, watch: Watch, verifier: Arc<TokenVerifier>) -> Self {
        // Accepted until `exp` plus the verifier's leeway, as a new call would be.
        let until = watch
            .expires
            .saturating_add(i64::try_from(verifier.leeway()).unwrap_or(i64::MAX));
        let left = u64::try_from(until - chrono::Utc::now().timestamp()).unwrap_or_default();
        Self {
            body,
            holder: watch.holder,
            expiry: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(left))),
            refusals: tokio_stream::wrappers::WatchStream::from_changes(verifier.watch_refusals()),
            verifier,
            ended: false,
        }
    }

    /// The refusal that ends the stream now, if any.
    fn refusal(&mut self, cx: &mut Context<'_>) -> Option<AuthError> {
        if self.expiry.as_mut().poll(cx).is_ready() {
            return Some(AuthError::Expired);
        }
        let mut changed = false;
        while let Poll::Ready(Some(_)) =
            futures::Stream::poll_next(Pin::new(&mut self.refusals), cx)
        {
            changed = true;
        }
        if changed {
            return self.verifier.still_accepts(&self.holder).err();
        }
        None
    }
}

impl http_body::Body for Guarded {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(refused) = self.refusal(cx) {
            self.ended = true;
            // The status as trailers: what a trailers-only refusal carries in its headers.
            let mut trailers = refused
                .into_status()
                .into_http::<Body>()
                .into_parts()
                .0
                .headers;
            trailers.remove(http::header::CONTENT_TYPE);
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // The stream's own end (its status in the trailers) is final: no refusal after it.
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_trailers()
        {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // A refusal answered trailers-only (no messages) stays a trailers-only response.
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.ended {
            http_body::SizeHint::with_exact(0)
        } else {
            self.body.size_hint()
        }
    }
}

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Either<S::Future, std::future::Ready<Result<Response<Body>, S::Error>>>,
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, S::Error>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        use futures::future::Either;
        match self.check(&mut request) {
            Ok(None) => Either::Left(Either::Left(self.inner.call(request))),
            Ok(Some(watch)) => {
                let verifier = self.verifier.clone();
                let response = self.inner.call(request);
                Either::Right(Box::pin(async move {
                    let response = response.await?;
                    Ok(response.map(|body| Body::new(Guarded::new(body, watch, verifier))))
                }))
            }
            Err(e) => Either::Left(Either::Right(std::future::ready(Ok(e
                .into_status()
                .into_http())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{Signer, TokenRequest};

    /// A stream that never sends anything: an idle feed.
    struct Idle;

    impl http_body::Body for Idle {
        type Data = tonic::codegen::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Pending
        }
    }

    /// A stream that ends by itself: its status (OK) in the trailers, then nothing.
    struct Ends(bool);

    impl http_body::Body for Ends {
        type Data = tonic::codegen::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Ready(None);
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
        }
    }

    #[tokio::test]
    async fn a_stream_that_ended_by_itself_gets_no_refusal_after_its_status() {
        let (verifier, token) = verifier_and_token(Duration::from_secs(600), None);
        let (principal, expires) = verifier.verify_until(&token).unwrap();
        let mut stream = Guarded::new(
            Body::new(Ends(false)),
            Watch {
                holder: Holder::of(&principal),
                expires,
            },
            verifier.clone(),
        );
        let status = next_frame(&mut stream).await;
        assert_eq!(status.trailers_ref().unwrap()["grpc-status"], "0");
        verifier.set_partner_suspended("brand-a", true);
        assert!(
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut stream), cx))
                .await
                .is_none(),
            "one status per stream"
        );
    }

    fn verifier_and_token(ttl: Duration, store: Option<&str>) -> (Arc<TokenVerifier>, String) {
        let key = Signer::generate();
        let auth = crate::auth::tests::trusting(&key);
        let token = key
            .mint(
                &auth,
                &TokenRequest {
                    ttl,
                    store: store.map(str::to_owned),
                    ..TokenRequest::partner("brand-a")
                },
            )
            .unwrap();
        (Arc::new(TokenVerifier::new(&auth).unwrap()), token)
    }

    fn idle_stream(verifier: &Arc<TokenVerifier>, token: &str) -> Guarded {
        let (_, expires) = verifier.verify_until(token).unwrap();
        Guarded::new(
            Body::new(Idle),
            Watch {
                holder: Holder::of(&verifier.verify(token).unwrap()),
                expires,
            },
            verifier.clone(),
        )
    }

    async fn next_frame(body: &mut Guarded) -> http_body::Frame<tonic::codegen::Bytes> {
        std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut *body), cx))
            .await
            .unwrap()
            .unwrap()
    }

    /// The code and reason in a frame of trailers.
    fn refusal(frame: &http_body::Frame<tonic::codegen::Bytes>) -> (String, String) {
        let trailers = frame.trailers_ref().expect("trailers");
        let status = tonic::Status::from_header_map(trailers).expect("a status");
        (
            format!("{:?}", status.code()),
            crate::testing::reason(&status),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_ends_with_token_expired_when_its_token_does() {
        let (verifier, token) = verifier_and_token(Duration::from_secs(60), None);
        let mut stream = idle_stream(&verifier, &token);
        let opened = tokio::time::Instant::now();
        let frame = next_frame(&mut stream).await;
        assert_eq!(
            refusal(&frame),
            ("Unauthenticated".to_owned(), "TOKEN_EXPIRED".to_owned())
        );
        // `exp` is whole seconds from the moment of minting: when the wall clock's second turns
        // between minting and opening, the token has 59 s and a fraction left, not 60.
        let lasted = opened.elapsed();
        assert!(
            lasted >= Duration::from_secs(59 + verifier.leeway())
                && lasted <= Duration::from_secs(61 + verifier.leeway()),
            "ended after {lasted:?}: the token's 60 s and the verifier's leeway"
        );
        assert!(
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut stream), cx))
                .await
                .is_none(),
            "nothing after the refusal"
        );
    }

    #[tokio::test]
    async fn an_open_stream_ends_the_moment_its_partner_is_suspended_or_its_store_closed() {
        for (store, refuse, reason) in [
            (
                None,
                (|v: &TokenVerifier| v.set_partner_suspended("brand-a", true))
                    as fn(&TokenVerifier),
                "PARTNER_SUSPENDED",
            ),
            (
                Some("partners/brand-a/stores/sh01"),
                |v: &TokenVerifier| v.set_store_closed("partners/brand-a/stores/sh01", true),
                "STORE_CLOSED",
            ),
        ] {
            let (verifier, token) = verifier_and_token(Duration::from_secs(600), store);
            let mut stream = idle_stream(&verifier, &token);
            let polled = futures::poll!(std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(Pin::new(&mut stream), cx)
            }));
            assert!(polled.is_pending(), "an idle stream waits");
            // Another store's closing, or a reinstated partner elsewhere, leaves it open.
            verifier.set_store_closed("partners/brand-a/stores/other", true);
            verifier.set_partner_suspended("mall-b", true);
            let polled = futures::poll!(std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(Pin::new(&mut stream), cx)
            }));
            assert!(polled.is_pending(), "others' changes leave it open");
            refuse(&verifier);
            let frame = next_frame(&mut stream).await;
            assert_eq!(
                refusal(&frame),
                ("PermissionDenied".to_owned(), reason.to_owned())
            );
        }
    }

    #[tokio::test]
    async fn an_open_stream_ends_when_the_key_that_signed_its_token_is_rotated_out() {
        let key = Signer::generate();
        let auth = crate::auth::tests::trusting(&key);
        let verifier = Arc::new(TokenVerifier::new(&auth).unwrap());
        let token = key.mint(&auth, &TokenRequest::partner("brand-a")).unwrap();
        let mut stream = idle_stream(&verifier, &token);
        // A key added beside it (a rotation's first step) leaves the stream open.
        let next = Signer::generate();
        verifier
            .replace_keys(&[key.trusted_key(), next.trusted_key()])
            .unwrap();
        let polled = futures::poll!(std::future::poll_fn(|cx| {
            http_body::Body::poll_frame(Pin::new(&mut stream), cx)
        }));
        assert!(polled.is_pending(), "a key added leaves it open");
        // A stream on a token the new key signed, open through the change below.
        let kept = next.mint(&auth, &TokenRequest::partner("brand-a")).unwrap();
        let mut kept_stream = idle_stream(&verifier, &kept);
        // The old key removed: its stream ends, as a new call with its token is refused.
        verifier.replace_keys(&[next.trusted_key()]).unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), next_frame(&mut stream))
            .await
            .expect("the stream ends when its key is rotated out");
        assert_eq!(
            refusal(&frame),
            ("Unauthenticated".to_owned(), "TOKEN_INVALID".to_owned())
        );
        assert!(matches!(
            verifier.verify(&token),
            Err(crate::auth::AuthError::Invalid)
        ));
        let polled = futures::poll!(std::future::poll_fn(|cx| {
            http_body::Body::poll_frame(Pin::new(&mut kept_stream), cx)
        }));
        assert!(polled.is_pending(), "its own key still trusted");
    }
}
