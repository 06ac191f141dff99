//! AuthService: credentials, the client-credentials exchange, and the published keys.

use std::time::Duration;

use lianyu_proto::{common::v1::PartnerKind, identity::v1 as pb};
use tonic::Code;

use crate::harness::{Identity, details};

fn exchange(client_id: &str, secret: &str) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        client_id: client_id.into(),
        client_secret: secret.into(),
        ..Default::default()
    }
}

async fn create_credential(
    identity: &Identity,
    partner: &str,
    scopes: &[&str],
) -> (pb::Credential, String) {
    let created = identity
        .as_partner(partner)
        .auth
        .create_credential(pb::CreateCredentialRequest {
            request_id: format!("cred-{partner}-{}", scopes.join("-")),
            parent: format!("partners/{partner}"),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    (created.credential.unwrap(), created.client_secret)
}

#[tokio::test]
async fn a_credential_is_exchanged_for_a_working_token_until_it_is_rotated_out_or_revoked() {
    let identity = Identity::with_partners("cred_lifecycle").await;
    let (credential, secret) =
        create_credential(&identity, "brand-a", &["identity.read", "identity.write"]).await;
    assert!(credential.name.starts_with("partners/brand-a/credentials/"));
    assert!(secret.starts_with("lys_"));

    let mut public = identity.public_auth();
    let issued = public
        .issue_token(exchange(&credential.client_id, &secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.token_type, "Bearer");
    assert_eq!(issued.scopes, ["identity.read", "identity.write"]);
    // The issued token is a real brand-a token.
    let me = identity
        .with_token(&issued.access_token)
        .partners
        .get_partner(pb::GetPartnerRequest {
            name: "partners/brand-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.display_name, "Brand A Shoes");

    // A wrong secret and an unknown client get the same answer.
    for (id, s) in [
        (credential.client_id.as_str(), "lys_wrong"),
        ("lyc_nobody", secret.as_str()),
    ] {
        let e = public.issue_token(exchange(id, s)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(details(&e).0, "INVALID_CLIENT");
    }

    // The secret is shown once: listing shows the credential, never a secret or a hash.
    let mut brand = identity.as_partner("brand-a");
    let listed = brand
        .auth
        .list_credentials(pb::ListCredentialsRequest {
            parent: "partners/brand-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.credentials, vec![credential.clone()]);

    // Rotation: both secrets work during the overlap, then only the new one.
    let rotated = brand
        .auth
        .rotate_credential(pb::RotateCredentialRequest {
            request_id: "rotate-1".into(),
            name: credential.name.clone(),
            overlap_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let new_secret = rotated.client_secret;
    assert_ne!(new_secret, secret);
    assert!(
        rotated
            .credential
            .unwrap()
            .previous_secret_expire_time
            .is_some()
    );
    for s in [&secret, &new_secret] {
        public
            .issue_token(exchange(&credential.client_id, s))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let e = public
        .issue_token(exchange(&credential.client_id, &secret))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "INVALID_CLIENT");
    public
        .issue_token(exchange(&credential.client_id, &new_secret))
        .await
        .unwrap();

    // Revocation takes effect at once: no new token, and the tokens already issued stop.
    let issued_before = public
        .issue_token(exchange(&credential.client_id, &new_secret))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let mut holder = identity.with_token(&issued_before);
    holder
        .partners
        .get_partner(pb::GetPartnerRequest {
            name: "partners/brand-a".into(),
        })
        .await
        .unwrap();
    let revoked = brand
        .auth
        .revoke_credential(pb::RevokeCredentialRequest {
            request_id: "revoke-1".into(),
            name: credential.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let e = holder
        .partners
        .get_partner(pb::GetPartnerRequest {
            name: "partners/brand-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Unauthenticated, "TOKEN_REVOKED")
    );
    let published = public
        .get_signing_keys(pb::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let id = credential.name.rsplit('/').next().unwrap();
    assert_eq!(published.revoked_credentials, [id]);
    let e = public
        .issue_token(exchange(&credential.client_id, &new_secret))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "INVALID_CLIENT");
    let e = brand
        .auth
        .rotate_credential(pb::RotateCredentialRequest {
            request_id: "rotate-2".into(),
            name: credential.name.clone(),
            overlap_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "CREDENTIAL_REVOKED")
    );
}

#[tokio::test]
async fn another_partners_credentials_are_not_found() {
    let identity = Identity::with_partners("cred_tenancy").await;
    let (credential, _) = create_credential(&identity, "brand-a", &["identity.read"]).await;
    let mut mall = identity.as_partner("mall-b");
    let e = mall
        .auth
        .list_credentials(pb::ListCredentialsRequest {
            parent: "partners/brand-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = mall
        .auth
        .rotate_credential(pb::RotateCredentialRequest {
            request_id: "steal".into(),
            name: credential.name.clone(),
            overlap_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = mall
        .auth
        .revoke_credential(pb::RevokeCredentialRequest {
            request_id: "steal".into(),
            name: credential.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = mall
        .auth
        .create_credential(pb::CreateCredentialRequest {
            request_id: "plant".into(),
            parent: "partners/brand-a".into(),
            scopes: vec!["identity.read".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn a_token_carries_no_more_than_its_credential_and_its_creator_allow() {
    let identity = Identity::with_partners("cred_scopes").await;
    let (read_only, secret) = create_credential(&identity, "brand-a", &["identity.read"]).await;
    let mut public = identity.public_auth();

    let e = public
        .issue_token(pb::IssueTokenRequest {
            scopes: vec!["identity.read".into(), "identity.write".into()],
            ..exchange(&read_only.client_id, &secret)
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).1.as_deref()),
        (Code::InvalidArgument, Some("scopes[1]"))
    );
    let token = public
        .issue_token(exchange(&read_only.client_id, &secret))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let e = identity
        .with_token(&token)
        .partners
        .create_alliance(pb::CreateAllianceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::PermissionDenied, "SCOPE_MISSING")
    );

    // A partner cannot mint itself more than its own token holds.
    let e = identity
        .with_scopes("brand-a", &["identity.write"])
        .auth
        .create_credential(pb::CreateCredentialRequest {
            request_id: "escalate".into(),
            parent: "partners/brand-a".into(),
            scopes: vec!["identity.write".into(), "live.write".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::PermissionDenied, "SCOPE_ESCALATION")
    );
    let e = identity
        .as_partner("brand-a")
        .auth
        .create_credential(pb::CreateCredentialRequest {
            request_id: "unknown".into(),
            parent: "partners/brand-a".into(),
            scopes: vec!["identity.admin".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).1.as_deref()),
        (Code::InvalidArgument, Some("scopes[0]"))
    );
}

#[tokio::test]
async fn a_token_narrowed_to_a_store_needs_an_active_store_of_the_partner() {
    let identity = Identity::with_partners("cred_store").await;
    let (credential, secret) = create_credential(&identity, "brand-a", &["identity.read"]).await;
    let mut brand = identity.as_partner("brand-a");
    brand
        .partners
        .create_store(pb::CreateStoreRequest {
            request_id: "store-1".into(),
            parent: "partners/brand-a".into(),
            store_id: "sh-nanjing-road".into(),
            store: Some(pb::Store {
                display_name: "Nanjing Road flagship".into(),
                city: "Shanghai".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut public = identity.public_auth();
    let at = |store: &str| pb::IssueTokenRequest {
        store: store.into(),
        ..exchange(&credential.client_id, &secret)
    };
    public
        .issue_token(at("partners/brand-a/stores/sh-nanjing-road"))
        .await
        .unwrap();
    for store in [
        "partners/mall-b/stores/sh-nanjing-road",
        "partners/brand-a/stores/nowhere",
        "stores/sh-nanjing-road",
    ] {
        let e = public.issue_token(at(store)).await.unwrap_err();
        assert_eq!(
            (e.code(), details(&e).1.as_deref()),
            (Code::InvalidArgument, Some("store")),
            "{store}"
        );
    }
    brand
        .partners
        .update_store(crate::harness::store_active(
            "brand-a",
            "sh-nanjing-road",
            false,
            "close",
        ))
        .await
        .unwrap();
    let e = public
        .issue_token(at("partners/brand-a/stores/sh-nanjing-road"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn operators_get_operator_tokens_and_suspended_partners_get_none() {
    let identity = Identity::with_partners("cred_operator").await;
    let mut operator = identity.operator();
    operator
        .partners
        .create_partner(pb::CreatePartnerRequest {
            request_id: "ops".into(),
            partner_id: "mesh-ops".into(),
            partner: Some(pb::Partner {
                kind: PartnerKind::Operator as i32,
                display_name: "Mesh operations".into(),
                privacy_contact: "privacy@mesh.example".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let created = operator
        .auth
        .create_credential(pb::CreateCredentialRequest {
            request_id: "ops-cred".into(),
            parent: "partners/mesh-ops".into(),
            scopes: vec!["identity.read".into(), "identity.write".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut public = identity.public_auth();
    let token = public
        .issue_token(exchange(
            &created.credential.unwrap().client_id,
            &created.client_secret,
        ))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let mut as_ops = identity.with_token(&token);

    // brand-c's credential works until the operator suspends brand-c.
    let (brand_c, secret) = create_credential(&identity, "brand-c", &["identity.read"]).await;
    public
        .issue_token(exchange(&brand_c.client_id, &secret))
        .await
        .unwrap();
    let suspend = |request_id: &str| {
        crate::harness::partner_status("brand-c", pb::PartnerStatus::Suspended, request_id)
    };
    let e = identity
        .as_partner("brand-c")
        .partners
        .update_partner(suspend("self"))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "OPERATOR_ONLY");
    let suspended = as_ops
        .partners
        .update_partner(suspend("suspend-c"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.status, pb::PartnerStatus::Suspended as i32);
    let e = public
        .issue_token(exchange(&brand_c.client_id, &secret))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::PermissionDenied, "PARTNER_SUSPENDED")
    );
}

#[tokio::test]
async fn issued_tokens_verify_with_the_published_keys() {
    let identity = Identity::with_partners("cred_keys").await;
    let (credential, secret) = create_credential(&identity, "brand-a", &["identity.read"]).await;
    let mut public = identity.public_auth();
    let token = public
        .issue_token(exchange(&credential.client_id, &secret))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let keys = public
        .get_signing_keys(pb::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let key = keys.iter().find(|k| k.key_id == kid).unwrap();
    assert_eq!(key.algorithm, "EdDSA");
    let verifier = lianyu_kit::auth::TokenVerifier::new(&lianyu_kit::config::AuthConfig {
        trusted_keys: vec![lianyu_kit::config::TrustedKey {
            key_id: key.key_id.clone(),
            public_key: key.public_key.clone(),
        }],
        ..identity.config.auth.clone()
    })
    .unwrap();
    let principal = verifier.verify(&token).unwrap();
    assert_eq!(principal.partner_id, "brand-a");
    assert!(!principal.operator);
}

#[tokio::test]
async fn a_client_asking_for_tokens_in_a_loop_is_slowed_down_alone() {
    let identity = Identity::with_partners("cred_rate").await;
    let (looping, secret) = create_credential(&identity, "brand-a", &["identity.read"]).await;
    let (other, other_secret) = create_credential(&identity, "mall-b", &["identity.read"]).await;
    let mut public = identity.public_auth();
    let mut refused = None;
    for _ in 0..50 {
        if let Err(e) = public
            .issue_token(exchange(&looping.client_id, &secret))
            .await
        {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a burst of 50 is refused before its end");
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::ResourceExhausted, "TOO_MANY_TOKEN_REQUESTS")
    );
    public
        .issue_token(exchange(&other.client_id, &other_secret))
        .await
        .unwrap();
}
