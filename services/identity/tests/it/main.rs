//! The identity service through real gRPC on an ephemeral port.

#![allow(clippy::unwrap_used, reason = "a test crate")]

mod alliances;
mod at_rest;
mod audit;
mod check_cache;
mod credentials;
mod deployment;
mod directory;
mod disk_full;
mod erasure;
mod feed;
mod harness;
mod internal;
mod links;
mod matrix;
mod outage;
mod overload;
mod races;
mod rules;
mod scenario;
mod service_principals;
mod tenancy;
mod trust;
