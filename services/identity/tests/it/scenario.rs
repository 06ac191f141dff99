//! A brand and a mall share one person, who decides what the mall may see.

use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};

use crate::harness::{Identity, enroll, grant, phone, unionid};

#[tokio::test]
async fn a_brand_and_a_mall_share_a_member_only_under_consent_and_every_read_is_audited() {
    let identity = Identity::with_partners("scenario").await;
    let (mut brand, mut mall, mut third) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );

    // The brand knows the person by a verified phone and its own UnionID.
    let at_brand = brand
        .members
        .enroll_member(enroll(
            "e1",
            vec![
                phone("138 0013 8000", true),
                unionid("oBrandUnion0000000001", "wx-open-brand"),
            ],
            &[("tier", "gold"), ("shoe_size", "42")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!at_brand.linked_existing);
    let brand_id = at_brand.member.unwrap().name;

    // The mall knows them by its own UnionID (another Open Platform account) and the verified phone.
    let at_mall = mall
        .members
        .enroll_member(enroll(
            "e1",
            vec![
                unionid("oMallUnion00000000001", "wx-open-mall"),
                phone("+86 13800138000", true),
            ],
            &[("vip_level", "3")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        at_mall.linked_existing,
        "a verified phone on both sides links the records"
    );
    let mall_id = at_mall.member.clone().unwrap().name;
    assert_ne!(brand_id, mall_id, "each partner has its own scoped id");

    // The same phone at a partner outside the alliance links nothing, and nothing in the
    // answer tells it that anyone else holds the number — verified or not.
    let at_third = third
        .members
        .enroll_member(enroll("e1", vec![phone("13800138000", true)], &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(!at_third.linked_existing);
    assert_eq!(at_third.unverified_candidate_count, 0);

    // Without consent the mall sees only what it contributed.
    let view = mall
        .members
        .get_member(pb::GetMemberRequest {
            name: mall_id.clone(),
            purpose: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.profile.get("vip_level").map(String::as_str), Some("3"));
    assert!(view.shared_profiles.is_empty());
    assert_eq!(view.identifiers.len(), 2);
    assert!(view.identifiers.iter().any(|i| i.value == "+8613800138000"));

    // The person consents, through the brand, to share their profile with the mall.
    let receipt = brand
        .consents
        .grant_consent(grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.status, pb::ConsentStatus::Granted as i32);
    assert_eq!(receipt.member, brand_id);
    assert_eq!(receipt.grantee_display_name, "Mall B");
    assert_eq!(receipt.grantee_contact, "privacy@mall-b.example");
    assert_eq!(receipt.collector_display_name, "Brand A Shoes");
    assert_eq!(
        receipt.data_categories,
        ["profile.basic", "membership.tier"]
    );
    assert!(!receipt.processing_method.is_empty() && receipt.policy_version == "2026-10");

    let check = mall
        .consents
        .check_consent(pb::CheckConsentRequest {
            member: mall_id.clone(),
            purpose: ConsentPurpose::ShareProfile as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.allowed);
    assert_eq!(check.consent_receipt, receipt.name);
    let other_purpose = mall
        .consents
        .check_consent(pb::CheckConsentRequest {
            member: mall_id.clone(),
            purpose: ConsentPurpose::MarketingContact as i32,
        })
        .await
        .unwrap();
    assert!(
        !other_purpose.into_inner().allowed,
        "consent is per purpose"
    );

    let view = mall
        .members
        .get_member(pb::GetMemberRequest {
            name: mall_id.clone(),
            purpose: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.shared_profiles.len(), 1);
    let shared = &view.shared_profiles[0];
    assert_eq!(shared.source_partner_display_name, "Brand A Shoes");
    assert_eq!(shared.profile.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(shared.consent_receipt, receipt.name);
    assert!(
        !format!("{view:?}").contains(brand_id.trim_start_matches("members/")),
        "the mall never sees the brand's id"
    );

    // Withdrawal takes one call and takes effect at once.
    let withdrawn = brand
        .consents
        .withdraw_consent(pb::WithdrawConsentRequest {
            request_id: "w1".into(),
            member: brand_id.clone(),
            grantee: "partners/mall-b".into(),
            purposes: vec![ConsentPurpose::ShareProfile as i32],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(withdrawn.status, pb::ConsentStatus::Withdrawn as i32);
    let check = mall
        .consents
        .check_consent(pb::CheckConsentRequest {
            member: mall_id.clone(),
            purpose: ConsentPurpose::ShareProfile as i32,
        })
        .await
        .unwrap();
    assert!(!check.into_inner().allowed);
    let view = mall
        .members
        .get_member(pb::GetMemberRequest {
            name: mall_id.clone(),
            purpose: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(view.shared_profiles.is_empty());

    // The audit log holds exactly the two reads made once a consent relationship existed:
    // allowed, then denied (the read before any consent touched nobody's records).
    let mall_log = mall
        .audit
        .list_access_records(pb::ListAccessRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    let outcomes: Vec<bool> = mall_log.iter().map(|r| r.allowed).collect();
    assert_eq!(outcomes, [true, false]);
    assert!(
        mall_log
            .iter()
            .all(|r| r.accessor == "partners/mall-b" && r.member == mall_id)
    );
    assert_eq!(mall_log[0].consent_receipt, receipt.name);
    let brand_log = brand
        .audit
        .list_access_records(pb::ListAccessRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(
        brand_log.len(),
        2,
        "the brand sees reads of the data it provided"
    );
    assert!(
        brand_log.iter().all(|r| r.member == brand_id),
        "named by the brand's own id"
    );
    assert_eq!(
        brand_log
            .iter()
            .map(|r| r.chain_hash.clone())
            .collect::<Vec<_>>(),
        mall_log
            .iter()
            .map(|r| r.chain_hash.clone())
            .collect::<Vec<_>>()
    );
    let third_log = third
        .audit
        .list_access_records(pb::ListAccessRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(third_log.is_empty());

    // The person's access request through the brand: its data, their receipts, the reads.
    let export = brand
        .members
        .export_member_data(pb::ExportMemberDataRequest {
            member: brand_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let member = export.member.unwrap();
    assert_eq!(member.name, brand_id);
    assert_eq!(member.profile.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(member.identifiers.len(), 2);
    // The grant's receipt tells the truth now: the withdrawal ended it.
    let statuses: Vec<i32> = export.consents.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            pb::ConsentStatus::Withdrawn as i32,
            pb::ConsentStatus::Withdrawn as i32
        ]
    );
    assert_eq!(export.access_records.len(), 2);
    let stranger = third
        .members
        .export_member_data(pb::ExportMemberDataRequest {
            member: brand_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn batch_check_answers_in_order_and_reveals_nothing_about_foreign_ids() {
    let identity = Identity::with_partners("batch").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let mut mall_ids = Vec::new();
    for i in 0..5 {
        let number = format!("1390000000{i}");
        let b = brand
            .members
            .enroll_member(enroll(&format!("b{i}"), vec![phone(&number, true)], &[]))
            .await
            .unwrap()
            .into_inner();
        let m = mall
            .members
            .enroll_member(enroll(&format!("m{i}"), vec![phone(&number, true)], &[]))
            .await
            .unwrap()
            .into_inner();
        if i % 2 == 0 {
            brand
                .consents
                .grant_consent(grant(
                    &b.member.unwrap().name,
                    "mall-b",
                    &[ConsentPurpose::MarketingContact],
                ))
                .await
                .unwrap();
        }
        mall_ids.push(m.member.unwrap().name);
    }
    let brand_own = brand
        .members
        .enroll_member(enroll("solo", vec![phone("13911111111", true)], &[]))
        .await
        .unwrap()
        .into_inner();
    mall_ids.push(brand_own.member.unwrap().name);
    let results = mall
        .consents
        .batch_check_consent(pb::BatchCheckConsentRequest {
            members: mall_ids,
            purpose: ConsentPurpose::MarketingContact as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        results.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        [true, false, true, false, true, false]
    );
}
