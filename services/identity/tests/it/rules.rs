//! Bad input gets INVALID_ARGUMENT with the fields at fault; broken preconditions say why.

use lianyu_proto::{
    common::v1::{ConsentPurpose, PartnerKind},
    identity::v1 as pb,
};
use tonic::Code;

use crate::harness::{Identity, details, enroll, grant, phone};

#[tokio::test]
async fn malformed_input_names_its_fields() {
    let identity = Identity::with_partners("invalid").await;
    let mut brand = identity.as_partner("brand-a");
    let bad_phone = brand
        .members
        .enroll_member(enroll("x1", vec![phone("12345", true)], &[]))
        .await
        .unwrap_err();
    assert_eq!(bad_phone.code(), Code::InvalidArgument);
    assert_eq!(details(&bad_phone).1.as_deref(), Some("identifiers[0]"));
    let empty = brand
        .members
        .enroll_member(enroll("x2", vec![], &[]))
        .await
        .unwrap_err();
    assert_eq!(details(&empty).1.as_deref(), Some("identifiers"));
    let unknown_kind = pb::Identifier {
        kind: 42,
        value: "x".into(),
        namespace: String::new(),
        verified: true,
        verification_method: 0,
    };
    let kind = brand
        .members
        .enroll_member(enroll("x3", vec![unknown_kind], &[]))
        .await
        .unwrap_err();
    assert_eq!(details(&kind).1.as_deref(), Some("identifiers[0]"));
    let big = "x".repeat(2000);
    let oversized = brand
        .members
        .enroll_member(enroll(
            "x4",
            vec![phone("13800138000", true)],
            &[("note", &big)],
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&oversized).1.as_deref(), Some("profile[note]"));

    let member = brand
        .enrolled(enroll("ok", vec![phone("13500135000", true)], &[]))
        .await;
    let mut request = grant(&member, "mall-b", &[]);
    request.purposes = vec![99];
    let purpose = brand.consents.grant_consent(request).await.unwrap_err();
    assert_eq!(purpose.code(), Code::InvalidArgument);
    assert_eq!(details(&purpose).1.as_deref(), Some("purposes[0]"));
    let check = brand
        .consents
        .check_consent(pb::CheckConsentRequest {
            member: "nonsense".into(),
            purpose: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(details(&check).1.as_deref(), Some("member"));
    let batch = brand
        .consents
        .batch_check_consent(pb::BatchCheckConsentRequest {
            members: vec![member.clone(); 1001],
            purpose: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(details(&batch).1.as_deref(), Some("members"));
}

#[tokio::test]
async fn consent_needs_an_active_alliance_that_allows_the_purpose() {
    let identity = Identity::with_partners("preconditions").await;
    let (mut brand, mut third) = (
        identity.as_partner("brand-a"),
        identity.as_partner("brand-c"),
    );
    let member = brand
        .enrolled(enroll("m", vec![phone("13400134000", true)], &[]))
        .await;
    let not_declared = brand
        .consents
        .grant_consent(grant(&member, "mall-b", &[ConsentPurpose::JointAnalytics]))
        .await
        .unwrap_err();
    assert_eq!(
        (not_declared.code(), details(&not_declared).0.as_str()),
        (Code::FailedPrecondition, "PURPOSE_NOT_ALLOWED")
    );
    let third_member = third
        .enrolled(enroll("m", vec![phone("13400134001", true)], &[]))
        .await;
    let no_alliance = third
        .consents
        .grant_consent(grant(
            &third_member,
            "mall-b",
            &[ConsentPurpose::ShareProfile],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (no_alliance.code(), details(&no_alliance).0.as_str()),
        (Code::FailedPrecondition, "NO_ACTIVE_ALLIANCE")
    );

    // A proposed alliance is not active until every partner accepts it.
    let proposed = third
        .partners
        .create_alliance(pb::CreateAllianceRequest {
            request_id: "a".into(),
            alliance: Some(crate::harness::alliance(&["brand-c", "mall-b"])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proposed.status, pb::AllianceStatus::Proposed as i32);
    let still = third
        .consents
        .grant_consent(grant(
            &third_member,
            "mall-b",
            &[ConsentPurpose::ShareProfile],
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&still).0, "NO_ACTIVE_ALLIANCE");
    let accepted = identity
        .as_partner("mall-b")
        .partners
        .accept_alliance(pb::AcceptAllianceRequest {
            request_id: "b".into(),
            name: proposed.name,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        accepted.into_inner().status,
        pb::AllianceStatus::Active as i32
    );
    third
        .consents
        .grant_consent(grant(
            &third_member,
            "mall-b",
            &[ConsentPurpose::ShareProfile],
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn only_the_operator_creates_partners() {
    let identity = Identity::with_partners("operator_only").await;
    let request = pb::CreatePartnerRequest {
        request_id: "p".into(),
        partner_id: "brand-z".into(),
        partner: Some(pb::Partner {
            kind: PartnerKind::Brand as i32,
            display_name: "Z".into(),
            privacy_contact: "z@z.example".into(),
            ..Default::default()
        }),
    };
    let denied = identity
        .as_partner("brand-a")
        .partners
        .create_partner(request.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (denied.code(), details(&denied).0.as_str()),
        (Code::PermissionDenied, "OPERATOR_ONLY")
    );
    let mut again = request.clone();
    again.request_id = "p2".into();
    again.partner_id = "brand-a".into();
    let exists = identity
        .operator()
        .partners
        .create_partner(again)
        .await
        .unwrap_err();
    assert_eq!(
        (exists.code(), details(&exists).0.as_str()),
        (Code::AlreadyExists, "PARTNER_EXISTS")
    );
    let mut bad = request;
    bad.partner_id = "Not Valid".into();
    bad.partner = Some(pb::Partner::default());
    let invalid = identity
        .operator()
        .partners
        .create_partner(bad)
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        lianyu_kit::testing::violations(&invalid),
        [
            "partner_id",
            "partner.kind",
            "partner.display_name",
            "partner.privacy_contact"
        ]
    );
}

#[tokio::test]
async fn the_same_identifier_twice_in_one_enrolment_counts_once() {
    let identity = Identity::with_partners("enrol_duplicates").await;
    let enrolled = identity
        .as_partner("brand-a")
        .members
        .enroll_member(enroll(
            "dup",
            vec![
                phone("13966139666", false),
                phone("+86 139 6613 9666", true),
            ],
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    let ids = enrolled.member.unwrap().identifiers;
    assert_eq!(ids.len(), 1);
    assert!(ids[0].verified, "verified if either copy says so");
}
