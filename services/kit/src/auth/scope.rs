//! Which scope an RPC needs, derived from its full method path by one documented rule so that
//! every RPC of every service is covered without a table to forget to update:
//! `/lianyu.<service>.v1.<Service>/<Method>` needs `<service>.read` when the method reads
//! (its name starts with Get, List, Check, BatchCheck, Resolve, Watch, Export or Join) and
//! `<service>.write` otherwise.

const READ_VERBS: &[&str] = &[
    "Get",
    "List",
    "Check",
    "BatchCheck",
    "Resolve",
    "Watch",
    "Export",
    "Join",
];

/// Every scope a token can carry.
pub const ALL_SCOPES: &[&str] = &[
    "identity.read",
    "identity.write",
    "entitlements.read",
    "entitlements.write",
    "live.read",
    "live.write",
    "comarketing.read",
    "comarketing.write",
];

/// The scope a `lianyu.*` method path needs; `None` for paths outside the Lianyu contracts.
pub fn required_scope(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/lianyu.")?;
    let (service, rest) = rest.split_once('.')?;
    let (_, method) = rest.rsplit_once('/')?;
    let access = if READ_VERBS.iter().any(|verb| method.starts_with(verb)) {
        "read"
    } else {
        "write"
    };
    Some(format!("{service}.{access}"))
}

#[cfg(test)]
mod tests {
    use super::required_scope;

    #[test]
    fn reads_and_writes_need_their_service_scope() {
        assert_eq!(
            required_scope("/lianyu.identity.v1.MemberService/GetMember").as_deref(),
            Some("identity.read")
        );
        assert_eq!(
            required_scope("/lianyu.identity.v1.ConsentService/BatchCheckConsent").as_deref(),
            Some("identity.read")
        );
        assert_eq!(
            required_scope("/lianyu.live.v1.OrderService/PlaceOrder").as_deref(),
            Some("live.write")
        );
        assert_eq!(
            required_scope("/lianyu.live.v1.ViewerService/JoinSession").as_deref(),
            Some("live.read")
        );
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
    }
}
