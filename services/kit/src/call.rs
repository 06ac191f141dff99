//! One call as a handler sees it: who is calling (the principal the auth layer verified) and
//! which RPC (the method path, also put there by the auth layer — never typed by hand), and the
//! one place a handler's domain error becomes a `tonic::Status`.

use tonic::{Request, Response, Status};

use crate::{
    auth::Principal,
    error::{KitError, ServiceError, to_status},
};

/// The RPC a request is for, as `/package.Service/Method`; the auth layer inserts it for every
/// RPC the contracts declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcMethod(pub &'static str);

/// Who calls which RPC.
#[derive(Clone, Debug)]
pub struct Call {
    pub who: Principal,
    /// `/lianyu.identity.v1.MemberService/EnrollMember`.
    pub method: &'static str,
}

impl Call {
    /// The call of a request that passed the auth layer. A request without a verified caller
    /// never reaches a handler, so its absence is UNAUTHENTICATED rather than a panic.
    pub fn of<T>(request: &Request<T>) -> Result<Self, KitError> {
        let who = request.extensions().get::<Principal>().cloned();
        let method = request.extensions().get::<RpcMethod>().copied();
        match (who, method) {
            (Some(who), Some(RpcMethod(method))) => Ok(Self { who, method }),
            _ => Err(KitError::Unauthenticated(
                "TOKEN_MISSING",
                "missing bearer token in the authorization header",
            )),
        }
    }

    /// The calling partner.
    pub fn partner_id(&self) -> &str {
        &self.who.partner_id
    }
}

/// Refuses a store-narrowed token (a POS, a guide's app) for a partner-wide action: a store
/// principal acts only within its store. PERMISSION_DENIED / STORE_TOKEN_NOT_ALLOWED.
pub fn partner_wide(who: &Principal) -> Result<(), KitError> {
    if who.store.is_some() {
        return Err(KitError::Denied(
            "STORE_TOKEN_NOT_ALLOWED",
            "a store token acts only within its store; use a partner-wide token for this",
        ));
    }
    Ok(())
}

/// Runs a unary handler: reads the call from the request, runs `handler` on the call and the
/// message, and maps its error to a status once, with the service's error domain.
pub async fn unary<Req, Resp, E, H>(
    request: Request<Req>,
    handler: H,
) -> Result<Response<Resp>, Status>
where
    E: ServiceError + From<KitError>,
    H: AsyncFnOnce(Call, Req) -> Result<Resp, E>,
{
    let outcome = match Call::of(&request) {
        Ok(call) => handler(call, request.into_inner()).await,
        Err(e) => Err(E::from(e)),
    };
    outcome.map(Response::new).map_err(|e| status(&e))
}

/// The status of a service error, in the service's own error domain.
pub fn status<E: ServiceError>(error: &E) -> Status {
    to_status(error.domain(), error)
}
