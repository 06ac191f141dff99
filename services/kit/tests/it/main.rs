//! The kit through real gRPC: a test double of one Lianyu contract, served by the kit's server
//! on an ephemeral port, exercised by a tonic client.

mod auth;
mod feeds;
mod harness;
mod idempotency;
mod server;
