//! What a call needs before it is routed. The contract decides: every RPC declares
//! `option (lianyu.common.v1.access)` (READ, WRITE or PUBLIC) and the build refuses an RPC
//! without it, so a new `Get…` that writes can never be let through with a read scope by a
//! guess from its name. READ needs `<service>.read`, WRITE `<service>.write`, INTERNAL
//! `<service>.internal` — which only a mesh service's token can carry.

use lianyu_proto::access::{self, Access};

/// Every scope a partner's or the operator's token can carry: `<service>.read` and
/// `<service>.write` of every contract.
pub const ALL_SCOPES: &[&str] = access::SCOPES;

/// The scopes only mesh services' tokens carry: `<service>.internal` of every service with an
/// internal contract.
pub const INTERNAL_SCOPES: &[&str] = access::INTERNAL_SCOPES;

/// The mesh services (each one a possible service principal): every service with a contract.
pub const MESH_SERVICES: &[&str] = access::SERVICES;

/// The internal scopes a mesh service's token carries: those of the internal contracts it
/// calls, and no others — a leaked comarketing token cannot claim live's coupon drops on
/// identity's behalf, and identity, which calls nobody's internal contract, holds none.
/// Entitlements resolves ids, checks consent and follows identity's mesh feed; live also
/// claims coupon drops (`entitlements.internal`); comarketing also follows entitlements'
/// ledger and campaign budgets and live's activity feed.
pub fn service_scopes(service: &str) -> &'static [&'static str] {
    match service {
        "entitlements" => &["identity.internal"],
        "live" => &["entitlements.internal", "identity.internal"],
        "comarketing" => &[
            "entitlements.internal",
            "identity.internal",
            "live.internal",
        ],
        _ => &[],
    }
}

/// What the auth layer requires of a call to `path`.
#[derive(Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Not a Lianyu contract (health, reflection) or a PUBLIC RPC: no token.
    Open,
    /// A valid token carrying this scope.
    Scope(String),
    /// A `/lianyu.` path no contract declares: a valid token (the router then answers
    /// UNIMPLEMENTED), so probing unknown methods reveals nothing without credentials.
    Token,
}

/// The requirement for the RPC at `path` (`/lianyu.identity.v1.MemberService/GetMember`).
pub fn requirement(path: &str) -> Requirement {
    if !path.starts_with("/lianyu.") {
        return Requirement::Open;
    }
    match access::of(path) {
        Some(Access::Public) => Requirement::Open,
        Some(_) => access::required_scope(path).map_or(Requirement::Token, Requirement::Scope),
        None => Requirement::Token,
    }
}

/// The scope a `lianyu.*` RPC needs; `None` for public RPCs and paths outside the contracts.
pub fn required_scope(path: &str) -> Option<String> {
    match requirement(path) {
        Requirement::Scope(scope) => Some(scope),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_decides_each_scope() {
        assert_eq!(
            requirement("/lianyu.identity.v1.MemberService/GetMember"),
            Requirement::Scope("identity.read".into())
        );
        assert_eq!(
            requirement("/lianyu.identity.v1.ConsentService/BatchCheckConsent"),
            Requirement::Scope("identity.read".into())
        );
        assert_eq!(
            requirement("/lianyu.live.v1.OrderService/PlaceOrder"),
            Requirement::Scope("live.write".into())
        );
        // Starts like a read, declared a write: it starts a long-running computation.
        assert_eq!(
            requirement("/lianyu.comarketing.v1.AudienceService/ComputeSegment"),
            Requirement::Scope("comarketing.write".into())
        );
    }

    #[test]
    fn only_declared_public_rpcs_and_non_lianyu_paths_are_open() {
        assert_eq!(
            requirement("/lianyu.identity.v1.AuthService/IssueToken"),
            Requirement::Open
        );
        assert_eq!(
            requirement("/lianyu.identity.v1.AuthService/GetSigningKeys"),
            Requirement::Open
        );
        assert_eq!(
            requirement("/grpc.health.v1.Health/Check"),
            Requirement::Open
        );
        assert_eq!(
            requirement("/lianyu.identity.v1.MemberService/GetMemberSecretly"),
            Requirement::Token
        );
    }

    #[test]
    fn every_scope_is_a_service_read_or_write() {
        assert!(ALL_SCOPES.contains(&"identity.read"));
        assert!(ALL_SCOPES.contains(&"comarketing.write"));
        for scope in ALL_SCOPES {
            let (_, access) = scope.split_once('.').expect("service.access");
            assert!(matches!(access, "read" | "write"), "{scope}");
        }
    }

    #[test]
    fn the_internal_contract_needs_an_internal_scope_no_partner_scope_grants() {
        assert_eq!(
            requirement("/lianyu.identity.internal.v1.DirectoryService/ResolveMeshIds"),
            Requirement::Scope("identity.internal".into())
        );
        assert_eq!(
            requirement("/lianyu.entitlements.internal.v1.DropService/ClaimForViewer"),
            Requirement::Scope("entitlements.internal".into())
        );
        assert_eq!(
            requirement("/lianyu.live.internal.v1.LiveFeedService/WatchLiveActivity"),
            Requirement::Scope("live.internal".into())
        );
        assert_eq!(
            INTERNAL_SCOPES,
            [
                "entitlements.internal",
                "identity.internal",
                "live.internal"
            ]
        );
        assert!(INTERNAL_SCOPES.iter().all(|s| !ALL_SCOPES.contains(s)));
    }

    #[test]
    fn a_service_holds_only_the_internal_scopes_of_the_contracts_it_calls() {
        for service in MESH_SERVICES {
            for scope in service_scopes(service) {
                assert!(INTERNAL_SCOPES.contains(scope), "{service}: {scope}");
                // Nobody needs its own internal contract: it has its own database.
                assert_ne!(scope.split_once('.').map(|(s, _)| s), Some(*service));
            }
        }
        assert!(service_scopes("identity").is_empty());
        assert!(!service_scopes("entitlements").contains(&"entitlements.internal"));
        assert!(!service_scopes("entitlements").contains(&"live.internal"));
        assert!(service_scopes("live").contains(&"entitlements.internal"));
        assert!(!service_scopes("live").contains(&"live.internal"));
        assert!(service_scopes("nobody").is_empty());
    }
}
