//! Another partner's ids get NOT_FOUND, never another partner's data.

use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};
use tonic::Code;

use crate::harness::{Identity, enroll, grant, phone, unionid};

#[tokio::test]
async fn another_partners_ids_are_not_found_everywhere() {
    let identity = Identity::with_partners("tenancy").await;
    let (mut brand, mut mall, mut third) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    let brand_id = brand
        .enrolled(enroll(
            "e1",
            vec![
                phone("13700137000", true),
                unionid("oBrandUnion0000000002", "wx-open-brand"),
            ],
            &[("tier", "gold")],
        ))
        .await;
    mall.members
        .enroll_member(enroll("e1", vec![phone("13700137000", true)], &[]))
        .await
        .unwrap();
    brand
        .consents
        .grant_consent(grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();

    // The brand's scoped id is meaningless to everyone else.
    for client in [&mut mall, &mut third] {
        let get = client
            .members
            .get_member(pb::GetMemberRequest {
                name: brand_id.clone(),
                purpose: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(get.code(), Code::NotFound);
        let audit = client
            .audit
            .list_access_records(pb::ListAccessRecordsRequest {
                member: brand_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(audit.code(), Code::NotFound);
        let check = client
            .consents
            .check_consent(pb::CheckConsentRequest {
                member: brand_id.clone(),
                purpose: ConsentPurpose::ShareProfile as i32,
            })
            .await;
        assert!(!check.unwrap().into_inner().allowed);
    }
    let foreign_grant = third
        .consents
        .grant_consent(grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap_err();
    assert_eq!(foreign_grant.code(), Code::NotFound);
    let foreign_withdraw = mall
        .consents
        .withdraw_consent(pb::WithdrawConsentRequest {
            request_id: "w".into(),
            member: brand_id.clone(),
            grantee: "partners/brand-c".into(),
            purposes: vec![ConsentPurpose::ShareProfile as i32],
        })
        .await
        .unwrap_err();
    assert_eq!(foreign_withdraw.code(), Code::NotFound);

    // A partner resolves only identifiers it submitted itself.
    let probe = pb::ResolveMemberRequest {
        identifier: Some(unionid("oBrandUnion0000000002", "wx-open-brand")),
    };
    assert_eq!(
        mall.members
            .resolve_member(probe.clone())
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let own = brand
        .members
        .resolve_member(probe)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.member, brand_id);

    // Alliances and partners outside one's alliances are invisible.
    let alliances = brand
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alliances;
    let name = alliances[0].name.clone();
    assert_eq!(
        third
            .partners
            .get_alliance(pb::GetAllianceRequest { name: name.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let accept = third
        .partners
        .accept_alliance(pb::AcceptAllianceRequest {
            request_id: "x".into(),
            name,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(accept.code(), Code::NotFound);
    assert!(
        third
            .partners
            .list_alliances(pb::ListAlliancesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .alliances
            .is_empty()
    );
    assert_eq!(
        third
            .partners
            .get_partner(pb::GetPartnerRequest {
                name: "partners/brand-a".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let seen: Vec<String> = third
        .partners
        .list_partners(pb::ListPartnersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .partners
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(seen, ["partners/brand-c"]);
    assert!(
        mall.partners
            .get_partner(pb::GetPartnerRequest {
                name: "partners/brand-a".into()
            })
            .await
            .is_ok(),
        "allies see each other"
    );
}

#[tokio::test]
async fn enrolment_is_idempotent_under_its_request_id() {
    let identity = Identity::with_partners("enrol_idempotent").await;
    let mut brand = identity.as_partner("brand-a");
    let request = enroll(
        "same",
        vec![phone("13600136000", true)],
        &[("tier", "silver")],
    );
    let first = brand
        .members
        .enroll_member(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = brand
        .members
        .enroll_member(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let different = brand
        .members
        .enroll_member(enroll("same", vec![phone("13600136001", true)], &[]))
        .await
        .unwrap_err();
    assert_eq!(different.code(), Code::AlreadyExists);
    // Enrolling the same identifier again under a new request finds the same member.
    let re = brand
        .members
        .enroll_member(enroll("other", vec![phone("136 0013 6000", true)], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(re.member.unwrap().name, first.member.unwrap().name);
    assert!(re.linked_existing);
}

#[tokio::test]
async fn another_partners_stores_members_and_alliances_are_not_found_to_change() {
    let identity = Identity::with_partners("tenancy_writes").await;
    let (mut brand, mut mall, mut third) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    let store = brand
        .partners
        .create_store(pb::CreateStoreRequest {
            request_id: "s".into(),
            parent: "partners/brand-a".into(),
            store_id: "bj-sanlitun".into(),
            store: Some(pb::Store {
                display_name: "Sanlitun".into(),
                city: "Beijing".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let member = brand
        .enrolled(enroll("e", vec![phone("13733137333", true)], &[]))
        .await;
    let alliance = brand
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alliances
        .remove(0)
        .name;

    let codes = vec![
        mall.partners
            .get_store(pb::GetStoreRequest {
                name: store.name.clone(),
            })
            .await
            .map(drop),
        mall.partners
            .list_stores(pb::ListStoresRequest {
                parent: "partners/brand-a".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        mall.partners
            .update_store(pb::UpdateStoreRequest {
                request_id: "x".into(),
                store: Some(pb::Store {
                    active: false,
                    ..store.clone()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["active".into()],
                }),
            })
            .await
            .map(drop),
        mall.partners
            .create_store(pb::CreateStoreRequest {
                request_id: "x".into(),
                parent: "partners/brand-a".into(),
                store_id: "fake".into(),
                store: Some(store.clone()),
            })
            .await
            .map(drop),
        mall.partners
            .update_partner(pb::UpdatePartnerRequest {
                request_id: "x".into(),
                partner: Some(pb::Partner {
                    name: "partners/brand-a".into(),
                    display_name: "Renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            })
            .await
            .map(drop),
        third
            .partners
            .end_alliance(pb::EndAllianceRequest {
                request_id: "x".into(),
                name: alliance.clone(),
            })
            .await
            .map(drop),
        mall.members
            .unlink_identifier(pb::UnlinkIdentifierRequest {
                request_id: "x".into(),
                member: member.clone(),
                identifier: Some(phone("13733137333", true)),
            })
            .await
            .map(drop),
        mall.members
            .merge_members(pb::MergeMembersRequest {
                request_id: "x".into(),
                member: member.clone(),
                duplicate_member: format!("{member}0"),
                evidence: Some(phone("13733137333", true)),
            })
            .await
            .map(drop),
        mall.members
            .erase_member(pb::EraseMemberRequest {
                request_id: "x".into(),
                member: member.clone(),
                scope: 0,
            })
            .await
            .map(drop),
    ];
    for (i, result) in codes.into_iter().enumerate() {
        assert_eq!(
            result.map_err(|e| e.code()),
            Err(Code::NotFound),
            "call {i}"
        );
    }
    // Nothing changed.
    let still = brand
        .partners
        .get_store(pb::GetStoreRequest {
            name: store.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(still.active);
    let ours = brand
        .partners
        .list_stores(pb::ListStoresRequest {
            parent: "partners/brand-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ours.stores, vec![still]);
}
