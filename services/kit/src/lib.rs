//! `lianyu-kit`: the runtime every Lianyu service shares — configuration, the gRPC server and
//! its middleware, partner authentication, the error-to-status mapping, telemetry, storage,
//! request idempotency, event feeds and page tokens.

pub mod admission;
pub mod auth;
pub mod batched;
pub mod call;
pub mod client;
pub mod config;
pub mod dbhealth;
pub mod directory;
pub mod error;
pub mod feed;
pub mod group;
pub mod idempotency;
pub mod ids;
pub mod jobs;
pub mod keycodec;
pub mod mask;
pub mod money;
pub mod mutation;
pub mod names;
pub mod page;
pub mod peer;
pub mod server;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod validate;
pub mod writes;

pub use auth::Principal;
pub use call::Call;
pub use config::{Config, ConfigError};
pub use error::{FieldViolation, KitError, ServiceError};
pub use server::{Mount, ServerContext, StartError};
