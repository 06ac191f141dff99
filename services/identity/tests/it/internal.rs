//! Identity's internal contract as a mesh service uses it: translation between scoped and mesh
//! ids, consent decisions by mesh id with their access records, and the mesh feed.

use std::time::Duration;

use futures::StreamExt;
use lianyu_proto::{
    common::v1::ConsentPurpose,
    identity::{
        internal::v1::{self as internal, MeshEventKind},
        v1 as pb,
    },
};
use tonic::Code;

use crate::harness::{Identity, details, grant, partner_status};

async fn resolve(identity: &Identity, partner: &str, members: &[&str]) -> Vec<String> {
    identity
        .directory(&identity.service_token("entitlements"))
        .resolve_mesh_ids(internal::ResolveMeshIdsRequest {
            partner: format!("partners/{partner}"),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .map(|m| m.mesh_member)
        .collect()
}

fn question(
    mesh: &str,
    grantor: &str,
    grantee: &str,
    purpose: ConsentPurpose,
) -> internal::ConsentQuestion {
    internal::ConsentQuestion {
        mesh_member: mesh.into(),
        grantor: format!("partners/{grantor}"),
        grantee: format!("partners/{grantee}"),
        purpose: purpose as i32,
    }
}

#[tokio::test]
async fn ids_translate_only_within_what_each_partner_holds() {
    let identity = Identity::with_partners("internal_translate").await;
    let (brand, mall) = identity.shared_member("13800000101").await;
    let mesh = resolve(&identity, "brand-a", &[&brand]).await.remove(0);
    assert!(mesh.starts_with("meshMembers/"), "{mesh}");
    assert_eq!(
        resolve(&identity, "mall-b", &[&mall]).await,
        vec![mesh.clone()]
    );
    // Another partner's scoped id, or one nobody holds, comes back absent, in order.
    assert_eq!(
        resolve(&identity, "brand-a", &[&brand, "members/nobody1", &mall]).await,
        [mesh.clone(), String::new(), String::new()]
    );
    let e = identity
        .directory(&identity.service_token("live"))
        .resolve_mesh_ids(internal::ResolveMeshIdsRequest {
            partner: "partners/brand-a".into(),
            members: vec![brand.clone(), "bad name".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).1),
        (Code::InvalidArgument, Some("members[1]".into()))
    );

    let scoped = |partner: &str| {
        let mut dir = identity.directory(&identity.service_token("live"));
        let request = internal::ScopeMemberIdsRequest {
            partner: format!("partners/{partner}"),
            mesh_members: vec![mesh.clone(), "meshMembers/nobody1".into()],
        };
        async move {
            dir.scope_member_ids(request)
                .await
                .unwrap()
                .into_inner()
                .members
                .into_iter()
                .map(|m| m.member)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(scoped("brand-a").await, [brand.clone(), String::new()]);
    assert_eq!(scoped("mall-b").await, [mall.clone(), String::new()]);
    // brand-c never met the person: it gets no name for them.
    assert_eq!(scoped("brand-c").await, [String::new(), String::new()]);
}

#[tokio::test]
async fn a_consent_check_by_mesh_id_decides_as_the_public_one_and_is_recorded_with_the_service() {
    let identity = Identity::with_partners("internal_check").await;
    let (brand, mall) = identity.shared_member("13800000102").await;
    let mesh = resolve(&identity, "brand-a", &[&brand]).await.remove(0);
    let receipt = identity
        .as_partner("brand-a")
        .consents
        .grant_consent(grant(&brand, "mall-b", &[ConsentPurpose::MarketingContact]))
        .await
        .unwrap()
        .into_inner()
        .name;
    let decisions = identity
        .directory(&identity.service_token("comarketing"))
        .check_consents(internal::CheckConsentsRequest {
            acting_partner: "partners/mall-b".into(),
            checks: vec![
                question(&mesh, "brand-a", "mall-b", ConsentPurpose::MarketingContact),
                question(&mesh, "brand-a", "mall-b", ConsentPurpose::ShareProfile),
                question(&mesh, "brand-c", "mall-b", ConsentPurpose::MarketingContact),
                question(
                    &mesh,
                    "brand-a",
                    "brand-a",
                    ConsentPurpose::MarketingContact,
                ),
                question(
                    "meshMembers/nobody1",
                    "brand-a",
                    "mall-b",
                    ConsentPurpose::MarketingContact,
                ),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .decisions;
    let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
    assert_eq!(allowed, [true, false, false, true, false]);
    assert_eq!(decisions[0].consent_receipt, receipt);
    // The public check, by the mall's own scoped id, agrees.
    let public = identity
        .as_partner("mall-b")
        .consents
        .check_consent(pb::CheckConsentRequest {
            member: mall.clone(),
            purpose: ConsentPurpose::MarketingContact as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(public.consent_receipt, receipt);

    // Both parties see the two decisions between them (allowed and refused), naming the
    // service and the partner it acted for; brand-c, a stranger to the person, sees nothing.
    for party in ["brand-a", "mall-b"] {
        let records = identity
            .as_partner(party)
            .audit
            .list_access_records(pb::ListAccessRecordsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .records;
        let via: Vec<(bool, &str, &str)> = records
            .iter()
            .map(|r| (r.allowed, r.via_service.as_str(), r.acting_partner.as_str()))
            .collect();
        assert_eq!(
            via,
            [
                (true, "comarketing", "partners/mall-b"),
                (false, "comarketing", "partners/mall-b")
            ],
            "{party}"
        );
    }
    let records = identity
        .as_partner("brand-c")
        .audit
        .list_access_records(pb::ListAccessRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(records.is_empty());
    // The chain stays intact with the new fields in it.
    let intact = identity
        .operator()
        .audit
        .check_access_log(pb::CheckAccessLogRequest {})
        .await
        .unwrap()
        .into_inner()
        .intact;
    assert!(intact);

    let e = identity
        .directory(&identity.service_token("comarketing"))
        .check_consents(internal::CheckConsentsRequest {
            acting_partner: "nobody".into(),
            checks: vec![internal::ConsentQuestion {
                purpose: 0,
                ..question(&mesh, "brand-a", "mall-b", ConsentPurpose::MarketingContact)
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        lianyu_kit::testing::violations(&e),
        ["acting_partner", "checks[0].purpose"]
    );
}

#[tokio::test]
async fn the_mesh_feed_carries_withdrawals_erasures_and_suspensions_by_mesh_id_only() {
    let identity = Identity::with_partners("internal_feed").await;
    let (brand, _mall) = identity.shared_member("13800000103").await;
    let mesh = resolve(&identity, "brand-a", &[&brand]).await.remove(0);
    let mut as_brand = identity.as_partner("brand-a");
    as_brand
        .consents
        .grant_consent(grant(&brand, "mall-b", &[ConsentPurpose::MarketingContact]))
        .await
        .unwrap();
    as_brand
        .consents
        .withdraw_consent(pb::WithdrawConsentRequest {
            request_id: "w".into(),
            member: brand.clone(),
            grantee: "partners/mall-b".into(),
            purposes: vec![ConsentPurpose::MarketingContact as i32],
        })
        .await
        .unwrap();
    as_brand
        .members
        .erase_member(pb::EraseMemberRequest {
            request_id: "erase".into(),
            member: brand.clone(),
            scope: 0,
        })
        .await
        .unwrap();
    identity
        .operator()
        .partners
        .update_partner(partner_status("brand-c", pb::PartnerStatus::Suspended, "s"))
        .await
        .unwrap();

    let mut stream = identity
        .directory(&identity.service_token("live"))
        .watch_mesh_events(internal::WatchMeshEventsRequest { after: None })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the mesh feed delivers")
            .unwrap()
            .unwrap();
        seen.push(event);
    }
    // Both enrolments of the shared member come first: who is enrolled where, by mesh id.
    let enrolled: Vec<_> = seen.drain(..2).collect();
    assert_eq!(
        enrolled
            .iter()
            .map(|e| (e.kind(), e.mesh_member.as_str(), e.partner.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                MeshEventKind::MemberEnrolled,
                mesh.as_str(),
                "partners/brand-a"
            ),
            (
                MeshEventKind::MemberEnrolled,
                mesh.as_str(),
                "partners/mall-b"
            ),
        ]
    );
    let kinds: Vec<MeshEventKind> = seen.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            MeshEventKind::ConsentGranted,
            MeshEventKind::ConsentWithdrawn,
            MeshEventKind::MemberErased,
            MeshEventKind::PartnerSuspended,
        ]
    );
    assert!(
        seen[..3]
            .iter()
            .all(|e| e.mesh_member == mesh && e.partner == "partners/brand-a")
    );
    assert_eq!(seen[1].grantee, "partners/mall-b");
    assert_eq!(seen[3].partner, "partners/brand-c");
    let cursors: Vec<i64> = seen.iter().map(|e| e.cursor.unwrap().sequence).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    // Erased at the brand: the brand's id no longer translates.
    assert_eq!(
        resolve(&identity, "brand-a", &[&brand]).await,
        [String::new()]
    );

    // A partner's own feed never carries a mesh event: everything in it names its own ids.
    let mut feed = identity.as_partner("mall-b").feed().await;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), feed.next()).await
    {
        let event = event.unwrap();
        assert!(event.member.starts_with("members/"), "{event:?}");
    }
}

/// With `LIANYU_INTERNAL_LISTEN`, the internal contract is served on its own port only — the
/// one a network policy admits the mesh's services to — and the public port does not serve it,
/// to anyone; the public contract is not on the internal port.
#[tokio::test]
async fn the_internal_contract_has_a_port_of_its_own_and_is_not_on_the_public_one() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let identity = Identity::with_partners_and("internal_port", |config| {
        config.internal_listen = Some(([127, 0, 0, 1], port).into());
    })
    .await;
    let (brand, _) = identity.shared_member("13800000191").await;
    let token = identity.service_token("entitlements");
    let request = || internal::ResolveMeshIdsRequest {
        partner: "partners/brand-a".into(),
        members: vec![brand.clone()],
    };
    // The public port: not served, even with a service's token.
    let refused = identity
        .directory(&token)
        .resolve_mesh_ids(request())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");

    let channel = lianyu_kit::testing::connect(&format!("http://127.0.0.1:{port}")).await;
    let bearer = |token: &str| {
        tonic::codegen::InterceptedService::new(
            channel.clone(),
            lianyu_kit::client::Bearer::new(token),
        )
    };
    let resolved = internal::directory_service_client::DirectoryServiceClient::new(bearer(&token))
        .resolve_mesh_ids(request())
        .await
        .unwrap()
        .into_inner();
    assert!(resolved.members[0].mesh_member.starts_with("meshMembers/"));
    // The internal port still checks who calls: a partner's token is refused there too.
    let partner = internal::directory_service_client::DirectoryServiceClient::new(bearer(
        &identity.partner_token("brand-a"),
    ))
    .resolve_mesh_ids(request())
    .await
    .unwrap_err();
    assert_eq!(partner.code(), Code::PermissionDenied);
    // And a call with no token at all is unauthenticated.
    let anonymous =
        internal::directory_service_client::DirectoryServiceClient::new(channel.clone())
            .resolve_mesh_ids(request())
            .await
            .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    // The public contract is not on the internal port.
    let public = pb::partner_service_client::PartnerServiceClient::new(bearer(
        &identity.partner_token("brand-a"),
    ))
    .list_partners(pb::ListPartnersRequest::default())
    .await
    .unwrap_err();
    assert_eq!(public.code(), Code::Unimplemented);
    // Health answers on both, so the kubelet can probe either.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// A mesh service asks whether stores may be named in what it records: a registered store is
/// OPEN, one its partner closed CLOSED, a typo or another partner's name UNKNOWN — in request
/// order, never an error; a malformed name is INVALID_ARGUMENT naming it, and a partner (its
/// own store included) or no token at all cannot ask.
#[tokio::test]
async fn check_stores_tells_a_service_which_stores_are_open() {
    let identity = Identity::with_partners("internal_stores").await;
    let mut brand = identity.as_partner("brand-a");
    let open = |id: &'static str| {
        let mut partners = brand.partners.clone();
        async move {
            partners
                .create_store(pb::CreateStoreRequest {
                    request_id: format!("s-{id}"),
                    parent: "partners/brand-a".into(),
                    store_id: id.into(),
                    store: Some(pb::Store {
                        display_name: id.into(),
                        city: "Beijing".into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let sanlitun = open("sanlitun").await;
    let closed = open("guomao").await;
    brand
        .partners
        .update_store(pb::UpdateStoreRequest {
            request_id: "close".into(),
            store: Some(pb::Store {
                active: false,
                ..closed.clone()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["active".into()],
            }),
        })
        .await
        .unwrap();
    let asked = [
        sanlitun.name.as_str(),
        closed.name.as_str(),
        "partners/brand-a/stores/sanlitum",
        "partners/mall-b/stores/sanlitun",
        "partners/nobody/stores/sanlitun",
    ];
    let request = || internal::CheckStoresRequest {
        stores: asked.iter().map(|s| (*s).to_owned()).collect(),
    };
    let states: Vec<_> = identity
        .directory(&identity.service_token("entitlements"))
        .check_stores(request())
        .await
        .unwrap()
        .into_inner()
        .stores
        .into_iter()
        .map(|s| (s.store.clone(), s.state()))
        .collect();
    use internal::StoreState::{Closed, Open, Unknown};
    assert_eq!(
        states,
        asked
            .iter()
            .map(|s| (*s).to_owned())
            .zip([Open, Closed, Unknown, Unknown, Unknown])
            .collect::<Vec<_>>()
    );
    for (stores, field) in [
        (
            vec![sanlitun.name.clone(), "stores/sanlitun".into()],
            "stores[1]",
        ),
        (Vec::new(), "stores"),
        (vec![sanlitun.name.clone(); 1001], "stores"),
    ] {
        let e = identity
            .directory(&identity.service_token("live"))
            .check_stores(internal::CheckStoresRequest { stores })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), details(&e).1),
            (Code::InvalidArgument, Some(field.into()))
        );
    }
    // No partner — the store's own, its store's till, another, the operator — may ask.
    let store_token = lianyu_kit::testing::mint(
        &identity.config.data_dir,
        &identity.config.auth,
        &lianyu_kit::auth::TokenRequest {
            store: Some(sanlitun.name.clone()),
            ..lianyu_kit::testing::partner_token("brand-a")
        },
    );
    for token in [
        identity.partner_token("brand-a"),
        store_token,
        identity.partner_token("mall-b"),
        identity.partner_token("operator"),
    ] {
        let e = identity
            .directory(&token)
            .check_stores(request())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    }
    let anonymous =
        internal::directory_service_client::DirectoryServiceClient::new(identity.channel.clone())
            .check_stores(request())
            .await
            .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}
