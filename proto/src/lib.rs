//! Lianyu's gRPC contracts, generated from `proto/` at build time.
//!
//! Generated types stay here; services convert them to domain types at their edge.

#![allow(unreachable_pub, clippy::all, missing_docs)]

/// The encoded `FileDescriptorSet` of every Lianyu contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lianyu_descriptor.bin"));

/// What each RPC does with the caller's data, as its `(lianyu.common.v1.access)` option
/// declares; the kit's auth layer derives the scope a call needs from it.
pub mod access {
    pub use crate::common::v1::Access;

    include!(concat!(env!("OUT_DIR"), "/lianyu_access.rs"));

    /// The declared access of the RPC at `path` (`/lianyu.identity.v1.MemberService/GetMember`);
    /// `None` for a path that is no Lianyu RPC.
    pub fn of(path: &str) -> Option<Access> {
        METHODS
            .binary_search_by(|(p, _)| (*p).cmp(path))
            .ok()
            .map(|i| METHODS[i].1)
    }

    /// The contract's own (static) copy of `path`, when it is a Lianyu RPC.
    pub fn path(path: &str) -> Option<&'static str> {
        METHODS
            .binary_search_by(|(p, _)| (*p).cmp(path))
            .ok()
            .map(|i| METHODS[i].0)
    }

    /// The paths of every server-streaming RPC in the contracts.
    pub fn streaming_methods() -> std::collections::HashSet<String> {
        use prost::Message;
        let Ok(set) = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET) else {
            return std::collections::HashSet::new();
        };
        let mut paths = std::collections::HashSet::new();
        for file in set.file {
            let package = file.package.clone().unwrap_or_default();
            for service in &file.service {
                for method in &service.method {
                    if method.server_streaming() {
                        paths.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        paths
    }

    /// The scope a token needs to call the RPC at `path`: `<service>.read`,
    /// `<service>.write` or `<service>.internal`; `None` when the RPC is public or unknown.
    pub fn required_scope(path: &str) -> Option<String> {
        let suffix = match of(path)? {
            Access::Read => "read",
            Access::Write => "write",
            Access::Internal => "internal",
            Access::Public | Access::Unspecified => return None,
        };
        let service = path.strip_prefix("/lianyu.")?.split('.').next()?;
        Some(format!("{service}.{suffix}"))
    }
}

pub mod common {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.common.v1.rs"));
    }
}
pub mod identity {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.identity.v1.rs"));
    }
    /// Identity's internal contract: mesh services only (see `internal.proto`).
    pub mod internal {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/lianyu.identity.internal.v1.rs"));
        }
    }
}
pub mod entitlements {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.entitlements.v1.rs"));
    }
    /// Entitlements' internal contract: mesh services only (see `internal.proto`).
    pub mod internal {
        pub mod v1 {
            include!(concat!(
                env!("OUT_DIR"),
                "/lianyu.entitlements.internal.v1.rs"
            ));
        }
    }
}
pub mod live {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.live.v1.rs"));
    }
    /// Live's internal contract: mesh services only (see `internal.proto`).
    pub mod internal {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/lianyu.live.internal.v1.rs"));
        }
    }
}
pub mod comarketing {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/lianyu.comarketing.v1.rs"));
    }
}
