//! Service principals: a mesh service's token carries role `service` and internal scopes only;
//! no partner credential, no operator, and no path a token is made by ever yields one to a
//! partner or the operator, and identity's internal contract answers only service tokens.

use lianyu_proto::identity::{internal::v1 as internal, v1 as pb};
use tonic::Code;

use crate::harness::{Identity, details};

fn exchange(client_id: &str, secret: &str, scopes: &[&str]) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        client_id: client_id.into(),
        client_secret: secret.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn create(parent: &str, scopes: &[&str], id: &str) -> pb::CreateCredentialRequest {
    pb::CreateCredentialRequest {
        request_id: id.into(),
        parent: parent.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Every credential of `parent`, as the operator lists them.
async fn credentials(identity: &Identity, parent: &str) -> Vec<pb::Credential> {
    identity
        .operator()
        .auth
        .list_credentials(pb::ListCredentialsRequest {
            parent: parent.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .credentials
}

/// One call of each internal RPC with `token`; their codes.
async fn internal_codes(identity: &Identity, token: &str) -> Vec<Code> {
    let mut dir = identity.directory(token);
    let code =
        |r: Result<tonic::Response<_>, tonic::Status>| r.map_or_else(|e| e.code(), |_| Code::Ok);
    vec![
        code(
            dir.resolve_mesh_ids(internal::ResolveMeshIdsRequest {
                partner: "partners/brand-a".into(),
                members: vec!["members/x1".into()],
            })
            .await
            .map(|r| r.map(drop)),
        ),
        code(
            dir.scope_member_ids(internal::ScopeMemberIdsRequest {
                partner: "partners/brand-a".into(),
                mesh_members: vec!["meshMembers/x1".into()],
            })
            .await
            .map(|r| r.map(drop)),
        ),
        code(
            dir.check_consents(internal::CheckConsentsRequest {
                acting_partner: "partners/brand-a".into(),
                checks: vec![internal::ConsentQuestion {
                    mesh_member: "meshMembers/x1".into(),
                    grantor: "partners/brand-a".into(),
                    grantee: "partners/mall-b".into(),
                    purpose: 3,
                }],
            })
            .await
            .map(|r| r.map(drop)),
        ),
        code(
            dir.watch_mesh_events(internal::WatchMeshEventsRequest { after: None })
                .await
                .map(|r| r.map(drop)),
        ),
    ]
}

#[tokio::test]
async fn the_internal_contract_answers_service_tokens_and_refuses_partners_and_the_operator() {
    let identity = Identity::with_partners("svc_internal_callers").await;
    let service = identity.service_token("entitlements");
    assert_eq!(internal_codes(&identity, &service).await, vec![Code::Ok; 4]);
    for caller in ["brand-a", "mall-b", "operator"] {
        let token = identity.partner_token(caller);
        let codes = internal_codes(&identity, &token).await;
        assert_eq!(codes, vec![Code::PermissionDenied; 4], "{caller}");
    }
    // A service token opens nothing a partner's does.
    let e = identity
        .with_token(&service)
        .partners
        .list_partners(pb::ListPartnersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0),
        (Code::PermissionDenied, "SCOPE_MISSING".into())
    );
}

#[tokio::test]
async fn no_partner_or_operator_credential_ever_obtains_an_internal_scope() {
    let identity = Identity::with_partners("svc_no_escalation").await;
    // CreateCredential, by the partner and by the operator for the partner.
    for (caller, id) in [("brand-a", "a"), ("operator", "b")] {
        let client = if caller == "operator" {
            identity.operator()
        } else {
            identity.as_partner(caller)
        };
        let e = client
            .auth
            .clone()
            .create_credential(create(
                "partners/brand-a",
                &["identity.read", "identity.internal"],
                id,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), details(&e).0),
            (Code::PermissionDenied, "INTERNAL_SCOPE".into()),
            "{caller}"
        );
    }
    assert!(credentials(&identity, "partners/brand-a").await.is_empty());
    // A partner cannot make a service credential.
    let e = identity
        .as_partner("brand-a")
        .auth
        .create_credential(create("services/entitlements", &[], "c"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0),
        (Code::PermissionDenied, "OPERATOR_ONLY".into())
    );
    assert!(
        credentials(&identity, "services/entitlements")
            .await
            .is_empty()
    );
    // IssueToken: a partner's and an operator partner's credentials asking for an internal
    // scope, however they ask.
    let mut operator = identity.operator();
    operator
        .partners
        .create_partner(pb::CreatePartnerRequest {
            request_id: "ops".into(),
            partner_id: "mesh-ops".into(),
            partner: Some(pb::Partner {
                kind: lianyu_proto::common::v1::PartnerKind::Operator as i32,
                display_name: "Mesh operations".into(),
                privacy_contact: "privacy@mesh.example".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    for parent in ["partners/brand-a", "partners/mesh-ops"] {
        let created = operator
            .auth
            .create_credential(create(parent, &["identity.read"], parent))
            .await
            .unwrap()
            .into_inner();
        let client_id = created.credential.unwrap().client_id;
        for asked in [
            &["identity.internal"][..],
            &["identity.read", "identity.internal"],
        ] {
            let e = identity
                .public_auth()
                .issue_token(exchange(&client_id, &created.client_secret, asked))
                .await
                .unwrap_err();
            assert_eq!(
                (e.code(), details(&e).0),
                (Code::PermissionDenied, "INTERNAL_SCOPE".into()),
                "{parent} {asked:?}"
            );
        }
        // Asking for nothing gets what the credential allows, never an internal scope.
        let issued = identity
            .public_auth()
            .issue_token(exchange(&client_id, &created.client_secret, &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(issued.scopes, ["identity.read"]);
        assert_eq!(
            internal_codes(&identity, &issued.access_token).await,
            vec![Code::PermissionDenied; 4]
        );
    }
}

#[tokio::test]
async fn a_service_credential_is_exchanged_for_a_service_token_until_revoked() {
    let identity = Identity::with_partners("svc_credential").await;
    let mut operator = identity.operator();
    // A service credential carries only the internal scopes of the contracts that service
    // calls: live calls identity's and entitlements', not its own; identity calls nobody's
    // and gets no credential; an unknown service gets none either.
    let refused = [
        ("services/live", &["identity.read"][..], "bad", "scopes[0]"),
        ("services/payments", &[][..], "unknown", "parent"),
        ("services/live", &["live.internal"][..], "own", "scopes[0]"),
        ("services/identity", &[][..], "identity", "parent"),
    ];
    for (parent, scopes, id, field) in refused {
        let e = operator
            .auth
            .create_credential(create(parent, scopes, id))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), details(&e).1),
            (Code::InvalidArgument, Some(field.into())),
            "{parent} {scopes:?}"
        );
    }
    // Refused means nothing was created.
    for parent in ["services/live", "services/identity"] {
        assert!(credentials(&identity, parent).await.is_empty(), "{parent}");
    }
    let entitlements = operator
        .auth
        .create_credential(create("services/entitlements", &[], "ent-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        entitlements.credential.unwrap().scopes,
        ["identity.internal"]
    );
    let created = operator
        .auth
        .create_credential(create("services/live", &[], "live-1"))
        .await
        .unwrap()
        .into_inner();
    let credential = created.credential.unwrap();
    assert!(credential.name.starts_with("services/live/credentials/"));
    // By default the internal scopes of what live calls: identity's and entitlements'.
    assert_eq!(
        credential.scopes,
        ["entitlements.internal", "identity.internal"]
    );
    let listed = credentials(&identity, "services/live").await;
    assert_eq!(listed.len(), 1);
    // A partner never sees it, nor can it be named under a partner.
    let e = identity
        .as_partner("brand-a")
        .auth
        .list_credentials(pb::ListCredentialsRequest {
            parent: "services/live".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let mut public = identity.public_auth();
    let e = public
        .issue_token(pb::IssueTokenRequest {
            store: "partners/brand-a/stores/s1".into(),
            ..exchange(&credential.client_id, &created.client_secret, &[])
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let issued = public
        .issue_token(exchange(&credential.client_id, &created.client_secret, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        issued.scopes,
        ["entitlements.internal", "identity.internal"]
    );
    // A token with a scope live does not call is refused, naming the field.
    let e = public
        .issue_token(exchange(
            &credential.client_id,
            &created.client_secret,
            &["live.internal"],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).1),
        (Code::InvalidArgument, Some("scopes[0]".into()))
    );
    assert_eq!(
        internal_codes(&identity, &issued.access_token).await,
        vec![Code::Ok; 4]
    );

    operator
        .auth
        .revoke_credential(pb::RevokeCredentialRequest {
            request_id: "revoke-live".into(),
            name: credential.name.clone(),
        })
        .await
        .unwrap();
    let e = identity
        .directory(&issued.access_token)
        .resolve_mesh_ids(internal::ResolveMeshIdsRequest {
            partner: "partners/brand-a".into(),
            members: vec!["members/x1".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0),
        (Code::Unauthenticated, "TOKEN_REVOKED".into())
    );
    let e = public
        .issue_token(exchange(&credential.client_id, &created.client_secret, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
