//! The interceptor every client in this crate uses to send its bearer token: the kit's.

pub(crate) use lianyu_kit::client::Bearer;
