//! The kit through real gRPC: a test double of one Lianyu contract, served by the kit's server
//! on an ephemeral port, exercised by a tonic client.

#![allow(clippy::unwrap_used, reason = "a test crate")]

mod auth;
mod feeds;
mod harness;
mod idempotency;
mod peer;
mod races;
mod server;
