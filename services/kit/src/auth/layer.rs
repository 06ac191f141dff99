//! The tower layer that authenticates every `lianyu.*` call before routing. Health, reflection
//! and the RPCs the contract declares ACCESS_PUBLIC (the token exchange) stay open.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

use super::{
    AuthError, TokenVerifier,
    scope::{Requirement, requirement},
};

#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
}

impl<S> Authenticate<S> {
    fn check<B>(&self, request: &mut Request<B>) -> Result<(), AuthError> {
        let path = request.uri().path();
        let method = lianyu_proto::access::path(path);
        let scope = match requirement(path) {
            Requirement::Open => return Ok(()),
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
        let principal = self.verifier.verify(token.trim())?;
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
        Ok(())
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
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.check(&mut request) {
            Ok(()) => futures::future::Either::Left(self.inner.call(request)),
            Err(e) => {
                futures::future::Either::Right(std::future::ready(Ok(e.into_status().into_http())))
            }
        }
    }
}
