//! Identifiers linked and unlinked after enrolment, and two members merged into one.

use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};
use tonic::Code;

use crate::{
    feed::next,
    harness::{Identity, details, enroll, grant, phone, unionid},
};

fn email(value: &str) -> pb::Identifier {
    pb::Identifier {
        kind: pb::IdentifierKind::Email as i32,
        value: value.into(),
        namespace: String::new(),
        verified: true,
        verification_method: 0,
    }
}

fn link(request_id: &str, member: &str, id: pb::Identifier) -> pb::LinkIdentifierRequest {
    pb::LinkIdentifierRequest {
        request_id: request_id.into(),
        member: member.into(),
        identifier: Some(id),
    }
}

#[tokio::test]
async fn a_linked_verified_phone_joins_the_person_to_other_partners_and_unlinking_removes_it() {
    let identity = Identity::with_partners("link_unlink").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let member = brand
        .enrolled(enroll(
            "e1",
            vec![unionid("oU_link_0000000000000000001", "open-brand-a")],
            &[],
        ))
        .await;
    let linked = brand
        .members
        .link_identifier(link("l1", &member, phone("13711137111", true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(linked.identifiers.len(), 2);
    assert!(
        linked
            .identifiers
            .iter()
            .any(|i| i.value == "+8613711137111")
    );
    let at_mall = mall
        .members
        .enroll_member(enroll("m1", vec![phone("13711137111", true)], &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        at_mall.linked_existing,
        "the linked verified phone joins them"
    );

    // Another partner's scoped id is not found; another member's identifier is refused.
    let e = mall
        .members
        .link_identifier(link("x", &member, email("a@b.example")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let other = brand
        .enrolled(enroll("e2", vec![email("other@b.example")], &[]))
        .await;
    let e = brand
        .members
        .link_identifier(link("l2", &member, email("other@b.example")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "IDENTIFIER_IN_USE")
    );
    assert_ne!(other, member);

    let unlink = |request_id: &str| pb::UnlinkIdentifierRequest {
        request_id: request_id.into(),
        member: member.clone(),
        identifier: Some(phone("13711137111", true)),
    };
    let after = brand
        .members
        .unlink_identifier(unlink("u1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.identifiers.len(), 1);
    let e = brand
        .members
        .unlink_identifier(unlink("u2"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::NotFound, "IDENTIFIER_NOT_FOUND")
    );
    let e = brand
        .members
        .link_identifier(pb::LinkIdentifierRequest {
            identifier: Some(phone("12", true)),
            ..link("bad", &member, phone("", true))
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).1.as_deref()),
        (Code::InvalidArgument, Some("identifier"))
    );
}

#[tokio::test]
async fn merged_members_keep_every_scoped_id_their_data_and_their_consents() {
    let identity = Identity::with_partners("merge").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    // The brand met the person twice: in its mini-program (UnionID) and in store (phone).
    let keep = brand
        .enrolled(enroll(
            "e1",
            vec![unionid("oU_merge_000000000000000001", "open-brand-a")],
            &[("tier", "gold")],
        ))
        .await;
    let dup = brand
        .enrolled(enroll(
            "e2",
            vec![phone("13611136111", true)],
            &[("tier", "silver"), ("shoe_size", "42")],
        ))
        .await;
    let mall_id = mall
        .enrolled(enroll("m1", vec![phone("13611136111", true)], &[]))
        .await;
    brand
        .consents
        .grant_consent(grant(&dup, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();
    let mut feed = mall.feed().await;
    assert_eq!(
        next(&mut feed).await.kind,
        pb::ConsentEventKind::Granted as i32
    );

    // The mall reads the person before the merge: recorded under the duplicate.
    mall.members
        .get_member(pb::GetMemberRequest {
            name: mall_id.clone(),
            purpose: 0,
        })
        .await
        .unwrap();
    let merge = |request_id: &str, evidence: pb::Identifier| pb::MergeMembersRequest {
        request_id: request_id.into(),
        member: keep.clone(),
        duplicate_member: dup.clone(),
        evidence: Some(evidence),
    };
    for (evidence, reason) in [
        (phone("13611136111", false), "MERGE_EVIDENCE_UNVERIFIED"),
        (phone("13511135111", true), "MERGE_EVIDENCE_NOT_HELD"),
    ] {
        let e = brand
            .members
            .merge_members(merge(reason, evidence))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), details(&e).0.as_str()),
            (Code::FailedPrecondition, reason)
        );
    }
    let e = brand
        .members
        .merge_members(pb::MergeMembersRequest {
            duplicate_member: mall_id.clone(),
            ..merge("foreign", phone("13611136111", true))
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "the mall's id names nothing for the brand"
    );

    let merged = brand
        .members
        .merge_members(merge("merge", phone("13611136111", true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.name, keep);
    assert_eq!(merged.identifiers.len(), 2);
    assert_eq!(
        merged.profile["tier"], "gold",
        "the surviving member's field wins"
    );
    assert_eq!(merged.profile["shoe_size"], "42");

    // Both of the brand's ids name the one person now.
    let through_dup = brand
        .members
        .get_member(pb::GetMemberRequest {
            name: dup.clone(),
            purpose: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(through_dup.identifiers.len(), 2);
    let resolved = brand
        .members
        .resolve_member(pb::ResolveMemberRequest {
            identifier: Some(phone("13611136111", true)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.member, keep);

    // The mall keeps its id, hears of the merge in it, and the consent still stands.
    let event = next(&mut feed).await;
    assert_eq!(
        (event.kind, event.member.as_str()),
        (pb::ConsentEventKind::MembersMerged as i32, mall_id.as_str())
    );
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
    let seen = mall
        .members
        .get_member(pb::GetMemberRequest {
            name: mall_id,
            purpose: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.shared_profiles.len(), 1);
    assert_eq!(seen.shared_profiles[0].profile["tier"], "gold");

    // The person's export through the survivor lists both reads, named by the brand's id.
    let export = brand
        .members
        .export_member_data(pb::ExportMemberDataRequest {
            member: keep.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.access_records.len(), 2);
    assert!(export.access_records.iter().all(|r| r.member == keep));
    let e = brand
        .members
        .merge_members(pb::MergeMembersRequest {
            duplicate_member: keep.clone(),
            ..merge("self", phone("13611136111", true))
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).1.as_deref()),
        (Code::InvalidArgument, Some("duplicate_member"))
    );
}
