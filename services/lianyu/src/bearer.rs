//! The interceptor every client in this crate uses to send its bearer token.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

#[derive(Clone)]
pub(crate) struct Bearer(Arc<str>);

impl Bearer {
    pub(crate) fn new(token: &str) -> Self {
        Self(Arc::from(token))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| Status::internal("token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}
