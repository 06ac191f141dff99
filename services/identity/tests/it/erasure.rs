//! Erasure on the person's request: gone everywhere, and every holder is told in its own ids.

use std::time::Duration;

use futures::StreamExt;
use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};
use tonic::Code;

use crate::harness::{Identity, details, enroll, grant, phone, unionid};

#[tokio::test]
async fn erasure_removes_the_member_everywhere_and_tells_every_holder() {
    let identity = Identity::with_partners("erasure").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let enrolment = vec![
        phone("13100131000", true),
        unionid("oBrandUnion0000000009", "wx-open-brand"),
    ];
    let brand_id = brand
        .enrolled(enroll("e", enrolment, &[("tier", "gold")]))
        .await;
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
    let mut feed = mall.feed().await;
    let granted = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(granted.kind, pb::ConsentEventKind::Granted as i32);

    // Only a partner that holds the person can ask; another partner's id is not found.
    let mut third = identity.as_partner("brand-c");
    let foreign = third
        .members
        .erase_member(pb::EraseMemberRequest {
            request_id: "y".into(),
            member: brand_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);

    // The person asks the brand; the erasure is mesh-wide.
    let erased = brand
        .members
        .erase_member(pb::EraseMemberRequest {
            request_id: "x".into(),
            member: brand_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.member, brand_id);

    let event = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.kind, event.member.as_str()),
        (pb::ConsentEventKind::MemberErased as i32, mall_id.as_str())
    );

    for (client, id) in [(&mut brand, &brand_id), (&mut mall, &mall_id)] {
        let gone = client
            .members
            .get_member(pb::GetMemberRequest {
                name: id.clone(),
                purpose: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (gone.code(), details(&gone).0.as_str()),
            (Code::NotFound, "MEMBER_ERASED")
        );
    }
    let check = mall
        .consents
        .check_consent(pb::CheckConsentRequest {
            member: mall_id.clone(),
            purpose: ConsentPurpose::ShareProfile as i32,
        })
        .await
        .unwrap();
    assert!(!check.into_inner().allowed, "no consent survives erasure");
    let probe = pb::ResolveMemberRequest {
        identifier: Some(phone("13100131000", true)),
    };
    assert_eq!(
        brand
            .members
            .resolve_member(probe)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "identifiers are deleted"
    );

    // The same phone enrolled again is a new person to the mesh, with a new id.
    let again = brand
        .members
        .enroll_member(enroll("e2", vec![phone("13100131000", true)], &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.linked_existing);
    assert_ne!(again.member.unwrap().name, brand_id);
}
