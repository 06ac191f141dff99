//! Erasure acts on the erasing partner's own records: they are gone where they live (rows,
//! stored replies, every identifier kind, lookups), the ally's records stay, and the person
//! leaves the mesh only when no partner holds them.

use std::time::Duration;

use futures::StreamExt;
use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};
use tonic::Code;

use crate::harness::{Identity, count, details, enroll, grant, phone, unionid};

/// Every kind of identifier a partner can hold.
fn every_kind(number: &str) -> Vec<pb::Identifier> {
    let id = |kind: pb::IdentifierKind, value: &str, namespace: &str| pb::Identifier {
        kind: kind as i32,
        value: value.into(),
        namespace: namespace.into(),
        verified: true,
        verification_method: 0,
    };
    vec![
        phone(number, true),
        unionid("oBrandUnion0000000009", "wx-open-brand"),
        id(
            pb::IdentifierKind::WechatOpenid,
            "oBrandOpenId000000009",
            "wx-app-brand",
        ),
        id(pb::IdentifierKind::MemberNumber, "VIP-0009", ""),
        id(pb::IdentifierKind::Email, "li.wei@example.com", ""),
    ]
}

async fn next_event(
    feed: &mut tonic::Streaming<pb::WatchConsentEventsResponse>,
) -> pb::WatchConsentEventsResponse {
    tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_partners_erasure_removes_its_records_everywhere_and_leaves_the_allys() {
    let identity = Identity::with_partners("erasure").await;
    let (mut brand, mut mall, mut third) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    let first_enrolment = enroll("e", every_kind("13100131000"), &[("tier", "gold")]);
    let brand_id = brand.enrolled(first_enrolment.clone()).await;
    let mall_id = mall
        .enrolled(enroll(
            "e",
            vec![phone("13100131000", true)],
            &[("vip", "1")],
        ))
        .await;
    brand
        .consents
        .grant_consent(grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();
    mall.consents
        .grant_consent(grant(
            &mall_id,
            "brand-a",
            &[ConsentPurpose::MarketingContact],
        ))
        .await
        .unwrap();
    let mut feed = mall.feed().await;
    assert_eq!(
        next_event(&mut feed).await.kind,
        pb::ConsentEventKind::Granted as i32
    );

    // Only a partner that holds the person can ask; another partner's id is not found.
    let foreign = third
        .members
        .erase_member(pb::EraseMemberRequest {
            request_id: "y".into(),
            member: brand_id.clone(),
            scope: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);

    let erased = brand
        .members
        .erase_member(pb::EraseMemberRequest {
            request_id: "x".into(),
            member: brand_id.clone(),
            scope: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (erased.member.as_str(), erased.scope),
        (brand_id.as_str(), pb::ErasureScope::Partner as i32)
    );

    // The mall hears that the brand's consent to it ended — in its own id — not that the
    // person is gone: for the mall they are not.
    let event = next_event(&mut feed).await;
    assert_eq!(
        (event.kind, event.member.as_str()),
        (pb::ConsentEventKind::Withdrawn as i32, mall_id.as_str())
    );

    // The brand's lookups: its id is a tombstone, every identifier kind resolves to nothing.
    let gone = brand
        .members
        .get_member(pb::GetMemberRequest {
            name: brand_id.clone(),
            purpose: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (gone.code(), details(&gone).0.as_str()),
        (Code::NotFound, "MEMBER_ERASED")
    );
    for id in every_kind("13100131000") {
        let e = brand
            .members
            .resolve_member(pb::ResolveMemberRequest {
                identifier: Some(id.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{id:?}");
    }

    // The mall keeps everything it holds itself, and reads nothing of the brand's any more.
    let kept = mall
        .members
        .get_member(pb::GetMemberRequest {
            name: mall_id.clone(),
            purpose: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.profile.get("vip").map(String::as_str), Some("1"));
    assert_eq!(kept.identifiers.len(), 1);
    assert!(kept.shared_profiles.is_empty());
    let check = mall
        .consents
        .check_consent(pb::CheckConsentRequest {
            member: mall_id.clone(),
            purpose: ConsentPurpose::ShareProfile as i32,
        })
        .await
        .unwrap();
    assert!(!check.into_inner().allowed, "no consent survives erasure");

    // Where the data lives: no identifier, profile or consent of the brand's, its scoped id a
    // tombstone, its stored replies emptied; the mall's rows untouched.
    let db = identity.database().await;
    let sql = |q: &str| q.to_owned();
    for (query, expected) in [
        (
            sql("SELECT COUNT(*) FROM identifiers WHERE partner_id = 'brand-a'"),
            0,
        ),
        (
            sql("SELECT COUNT(*) FROM profiles WHERE partner_id = 'brand-a'"),
            0,
        ),
        (
            sql("SELECT COUNT(*) FROM consents WHERE collector = 'brand-a' OR grantee = 'brand-a'"),
            0,
        ),
        (
            sql(
                "SELECT COUNT(*) FROM scoped_ids WHERE partner_id = 'brand-a' AND erased_at IS NULL",
            ),
            0,
        ),
        (
            sql(
                "SELECT COUNT(*) FROM kit_idempotency_keys WHERE partner_id = 'brand-a' \
                 AND method IN ('EnrollMember', 'GrantConsent') AND erased_at IS NULL",
            ),
            0,
        ),
        (
            sql(
                "SELECT COUNT(*) FROM kit_idempotency_keys WHERE partner_id = 'brand-a' \
                 AND method = 'EnrollMember' AND LENGTH(response) > 0",
            ),
            0,
        ),
        (
            sql("SELECT COUNT(*) FROM identifiers WHERE partner_id = 'mall-b'"),
            1,
        ),
        (
            sql("SELECT COUNT(*) FROM profiles WHERE partner_id = 'mall-b'"),
            1,
        ),
        (
            sql("SELECT COUNT(*) FROM members WHERE status = 'active'"),
            1,
        ),
    ] {
        assert_eq!(count(&db, &query).await, expected, "{query}");
    }

    // A replay of the first enrolment returns nothing of the person, and does not bring
    // the erased data back.
    let replay = brand
        .members
        .enroll_member(first_enrolment)
        .await
        .unwrap_err();
    assert_eq!(
        (replay.code(), details(&replay).0.as_str()),
        (Code::NotFound, "MEMBER_ERASED")
    );
    assert!(!replay.message().contains("13100131000") && !replay.message().contains("gold"));
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM identifiers WHERE partner_id = 'brand-a'"
        )
        .await,
        0
    );

    // Enrolled again by the brand, the person is a new relationship with a new id.
    let again = brand
        .members
        .enroll_member(enroll("e2", vec![phone("13100131000", true)], &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(again.linked_existing, "the mall still holds them");
    assert_ne!(again.member.unwrap().name, brand_id);
}

#[tokio::test]
async fn leaving_the_joint_domain_reaches_every_holder_and_each_erases_its_own() {
    let identity = Identity::with_partners("erasure_joint").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let (brand_id, mall_id) = identity.shared_member("13200132000").await;
    let mut brand_feed = brand.feed().await;
    mall.members
        .erase_member(pb::EraseMemberRequest {
            request_id: "leave".into(),
            member: mall_id.clone(),
            scope: pb::ErasureScope::JointDomain as i32,
        })
        .await
        .unwrap();
    let asked = next_event(&mut brand_feed).await;
    assert_eq!(
        (asked.kind, asked.member.as_str(), asked.grantee.as_str()),
        (
            pb::ConsentEventKind::ErasureRequested as i32,
            brand_id.as_str(),
            ""
        ),
        "told in its own id, not who relayed it"
    );
    // The mall did not erase the brand's records: the brand does, as a handler in its own right.
    brand
        .members
        .get_member(pb::GetMemberRequest {
            name: brand_id.clone(),
            purpose: 0,
        })
        .await
        .unwrap();
    brand
        .members
        .erase_member(pb::EraseMemberRequest {
            request_id: "leave".into(),
            member: brand_id.clone(),
            scope: 0,
        })
        .await
        .unwrap();

    // No partner holds the person: the mesh keeps only a tombstone.
    let db = identity.database().await;
    for (query, expected) in [
        ("SELECT COUNT(*) FROM members WHERE status = 'erased'", 1),
        ("SELECT COUNT(*) FROM members WHERE status = 'active'", 0),
        ("SELECT COUNT(*) FROM identifiers", 0),
        ("SELECT COUNT(*) FROM profiles", 0),
        ("SELECT COUNT(*) FROM consent_receipts", 0),
        ("SELECT COUNT(*) FROM scoped_ids WHERE erased_at IS NULL", 0),
    ] {
        assert_eq!(count(&db, query).await, expected, "{query}");
    }
    let again = brand
        .members
        .enroll_member(enroll("e2", vec![phone("13200132000", true)], &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.linked_existing, "a new person to the mesh");
}
