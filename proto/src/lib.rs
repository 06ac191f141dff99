//! Lianyu's gRPC contracts, generated from `proto/` at build time.
//!
//! Generated types stay here; services convert them to domain types at their edge.

#![allow(unreachable_pub, clippy::all, missing_docs)]

/// The encoded `FileDescriptorSet` of every Lianyu contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lianyu_descriptor.bin"));

pub mod common {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.common.v1.rs"));
    }
}
pub mod identity {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.identity.v1.rs"));
    }
}
pub mod entitlements {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.entitlements.v1.rs"));
    }
}
pub mod live {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.live.v1.rs"));
    }
}
pub mod comarketing {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.comarketing.v1.rs"));
    }
}
