//! Alliance updates and endings, and consents that lapse without the member's word: stale
//! under new terms, expired when the alliance ends or the window closes. Each lapse reaches
//! the grantee's feed.

use std::time::Duration;

use futures::StreamExt;

use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};
use tonic::Code;

use crate::{
    feed::next,
    harness::{As, Identity, details, grant},
};

/// brand-a and mall-b hold one person; the brand collected SHARE_PROFILE for the mall.
/// Returns the alliance's name, the brand's and the mall's ids, and the mall's feed.
async fn shared(
    identity: &Identity,
    phone_number: &str,
) -> (
    String,
    String,
    String,
    tonic::Streaming<pb::WatchConsentEventsResponse>,
) {
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let (brand_id, mall_id) = identity.shared_member(phone_number).await;
    let mut feed = mall.feed().await;
    brand
        .consents
        .grant_consent(grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut feed).await.kind,
        pb::ConsentEventKind::Granted as i32
    );
    let alliance = brand
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alliances
        .remove(0)
        .name;
    (alliance, brand_id, mall_id, feed)
}

async fn allowed(mall: &mut As, member: &str) -> bool {
    mall.consents
        .check_consent(pb::CheckConsentRequest {
            member: member.into(),
            purpose: ConsentPurpose::ShareProfile as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .allowed
}

fn update(request_id: &str, alliance: pb::Alliance, paths: &[&str]) -> pb::UpdateAllianceRequest {
    pb::UpdateAllianceRequest {
        request_id: request_id.into(),
        alliance: Some(alliance),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    }
}

#[tokio::test]
async fn new_terms_make_old_consents_stale_until_the_member_consents_again() {
    let identity = Identity::with_partners("alliance_terms").await;
    let (alliance, brand_id, mall_id, mut feed) = shared(&identity, "13100131000").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    assert!(allowed(&mut mall, &mall_id).await);

    // A new name is not new terms.
    let renamed = brand
        .partners
        .update_alliance(update(
            "rename",
            pb::Alliance {
                name: alliance.clone(),
                display_name: "Summer joint festival".into(),
                ..Default::default()
            },
            &["display_name"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (renamed.terms_version, renamed.status),
        (1, pb::AllianceStatus::Active as i32)
    );
    assert!(allowed(&mut mall, &mall_id).await);

    // A new processing method is: version 2, the mall must accept again, the consent is stale.
    let amended = brand
        .partners
        .update_alliance(update(
            "method",
            pb::Alliance {
                name: alliance.clone(),
                processing_method: "shown to guides and used for lookalike audiences".into(),
                ..Default::default()
            },
            &["processing_method"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (amended.terms_version, amended.status),
        (2, pb::AllianceStatus::Proposed as i32)
    );
    let stale = next(&mut feed).await;
    assert_eq!(
        (stale.kind, stale.member.as_str()),
        (pb::ConsentEventKind::Stale as i32, mall_id.as_str())
    );
    assert_eq!(stale.purposes, [ConsentPurpose::ShareProfile as i32]);
    assert!(!allowed(&mut mall, &mall_id).await);

    let accepted = mall
        .partners
        .accept_alliance(pb::AcceptAllianceRequest {
            request_id: "accept-v2".into(),
            name: alliance.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.status, pb::AllianceStatus::Active as i32);
    assert!(
        !allowed(&mut mall, &mall_id).await,
        "the member agreed to the old terms only"
    );
    let receipt = brand
        .consents
        .grant_consent(pb::GrantConsentRequest {
            request_id: "regrant".into(),
            ..grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        receipt.processing_method, "shown to guides and used for lookalike audiences",
        "the receipt tells the new terms"
    );
    assert!(allowed(&mut mall, &mall_id).await);
}

/// A partner accepts the alliance terms it read: after another member partner widened them
/// (more data categories, a new processing method), an acceptance of the version read accepts
/// nothing — read back unchanged — and the version now in force is accepted as usual. The
/// version opens nothing for anybody else.
#[tokio::test]
async fn a_partner_accepts_exactly_the_alliance_terms_it_read() {
    let identity = Identity::with_partners("alliance_terms_read").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let proposed = brand
        .partners
        .create_alliance(pb::CreateAllianceRequest {
            request_id: "second".into(),
            alliance: Some(crate::harness::alliance(&["brand-a", "mall-b"])),
        })
        .await
        .unwrap()
        .into_inner();
    let read = |who: &mut As| {
        let mut partners = who.partners.clone();
        let name = proposed.name.clone();
        async move {
            partners
                .get_alliance(pb::GetAllianceRequest { name })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let seen = read(&mut mall).await;
    assert_eq!(seen.terms_version, 1);
    let widened = brand
        .partners
        .update_alliance(update(
            "widen",
            pb::Alliance {
                name: proposed.name.clone(),
                data_categories: vec![
                    "profile.basic".into(),
                    "membership.tier".into(),
                    "purchase.history".into(),
                ],
                ..Default::default()
            },
            &["data_categories"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(widened.terms_version, 2);
    let accept = |rid: &str, terms_version: i64| pb::AcceptAllianceRequest {
        request_id: rid.into(),
        name: proposed.name.clone(),
        terms_version,
    };
    let e = mall
        .partners
        .accept_alliance(accept("stale", seen.terms_version))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Aborted, "TERMS_VERSION_MISMATCH")
    );
    let after = read(&mut brand).await;
    assert_eq!(after, widened, "nothing accepted");
    assert_eq!(after.status, pb::AllianceStatus::Proposed as i32);
    // A version that cannot be one, and callers the version does not let in.
    let e = mall
        .partners
        .accept_alliance(accept("negative", -1))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).1.as_deref()),
        (Code::InvalidArgument, Some("terms_version"))
    );
    for (mut who, want) in [
        (identity.as_partner("brand-c"), "ALLIANCE_NOT_FOUND"),
        (
            identity.as_store("mall-b", "sh01"),
            "STORE_TOKEN_NOT_ALLOWED",
        ),
        (identity.operator(), "OPERATOR_JOINS_NO_ALLIANCE"),
    ] {
        let e = who
            .partners
            .accept_alliance(accept("other", widened.terms_version))
            .await
            .unwrap_err();
        assert_eq!(details(&e).0, want);
    }
    assert_eq!(read(&mut brand).await, widened, "refusals changed nothing");
    // The mall reads the new terms and accepts them.
    let now = read(&mut mall).await;
    let accepted = mall
        .partners
        .accept_alliance(accept("fresh", now.terms_version))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (accepted.status, accepted.terms_version),
        (pb::AllianceStatus::Active as i32, 2)
    );
}

#[tokio::test]
async fn alliance_updates_are_checked_and_scoped_to_member_partners() {
    let identity = Identity::with_partners("alliance_update_rules").await;
    let alliance = identity
        .as_partner("brand-a")
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alliances
        .remove(0);
    let e = identity
        .as_partner("brand-c")
        .partners
        .update_alliance(update(
            "x",
            pb::Alliance {
                name: alliance.name.clone(),
                display_name: "Hijacked".into(),
                ..Default::default()
            },
            &["display_name"],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut brand = identity.as_partner("brand-a");
    for (paths, field) in [
        (vec!["partners"], "update_mask.paths[0]"),
        (vec![], "update_mask"),
        (vec!["allowed_purposes"], "alliance.allowed_purposes"),
        (vec!["valid_until"], "alliance.valid_until"),
    ] {
        let e = brand
            .partners
            .update_alliance(update(
                "bad",
                pb::Alliance {
                    name: alliance.name.clone(),
                    ..Default::default()
                },
                &paths,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), details(&e).1.as_deref()),
            (Code::InvalidArgument, Some(field)),
            "{paths:?}"
        );
    }
}

#[tokio::test]
async fn ending_an_alliance_expires_its_consents_at_once() {
    let identity = Identity::with_partners("alliance_end").await;
    let (alliance, brand_id, mall_id, mut feed) = shared(&identity, "13000130000").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let ended = mall
        .partners
        .end_alliance(pb::EndAllianceRequest {
            request_id: "end".into(),
            name: alliance.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.status, pb::AllianceStatus::Ended as i32);
    let expired = next(&mut feed).await;
    assert_eq!(
        (expired.kind, expired.member.as_str()),
        (pb::ConsentEventKind::Expired as i32, mall_id.as_str())
    );
    assert!(!allowed(&mut mall, &mall_id).await);
    let e = brand
        .consents
        .grant_consent(pb::GrantConsentRequest {
            request_id: "after-end".into(),
            ..grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile])
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "NO_ACTIVE_ALLIANCE")
    );
    let e = brand
        .partners
        .update_alliance(update(
            "late",
            pb::Alliance {
                name: alliance,
                display_name: "Again".into(),
                ..Default::default()
            },
            &["display_name"],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "ALLIANCE_ENDED")
    );
}

#[tokio::test]
async fn a_consent_whose_window_closes_is_announced_as_expired() {
    let identity = Identity::with_partners("consent_expiry").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let (brand_id, mall_id) = identity.shared_member("13900139111").await;
    let mut feed = mall.feed().await;
    let until = std::time::SystemTime::now() + Duration::from_millis(1500);
    let until = until.duration_since(std::time::UNIX_EPOCH).unwrap();
    brand
        .consents
        .grant_consent(pb::GrantConsentRequest {
            valid_until: Some(prost_types::Timestamp {
                seconds: until.as_secs() as i64,
                nanos: until.subsec_nanos() as i32,
            }),
            ..grant(&brand_id, "mall-b", &[ConsentPurpose::MarketingContact])
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut feed).await.kind,
        pb::ConsentEventKind::Granted as i32
    );
    // The sweep runs every two seconds; the event comes within one sweep of the window's end.
    let expired = tokio::time::timeout(Duration::from_secs(8), async {
        use futures::StreamExt;
        feed.next().await.unwrap().unwrap()
    })
    .await
    .expect("the expiry is announced");
    assert_eq!(
        (expired.kind, expired.member.as_str()),
        (pb::ConsentEventKind::Expired as i32, mall_id.as_str())
    );
    assert_eq!(expired.purposes, [ConsentPurpose::MarketingContact as i32]);
    // The person's list shows the receipt as expired.
    let listed = brand
        .consents
        .list_consents(pb::ListConsentsRequest {
            member: brand_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, pb::ConsentStatus::Expired as i32);
    // The lapsed consent is still read like any other: the mall reads its member (the
    // lapsed grant shares nothing), and the member grants again.
    let read = mall
        .members
        .get_member(pb::GetMemberRequest {
            name: mall_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(read.shared_profiles.is_empty(), "{read:?}");
    brand
        .consents
        .grant_consent(pb::GrantConsentRequest {
            request_id: "again".into(),
            ..grant(&brand_id, "mall-b", &[ConsentPurpose::MarketingContact])
        })
        .await
        .unwrap();
    let again = next(&mut feed).await;
    assert_eq!(
        (again.kind, again.member.as_str()),
        (pb::ConsentEventKind::Granted as i32, mall_id.as_str())
    );
    mall.members
        .get_member(pb::GetMemberRequest {
            name: mall_id,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Ending a large alliance announces every consent under it, across several bounded batches
/// (the sweep takes 500 a transaction), each exactly once.
#[tokio::test]
async fn ending_a_large_alliance_announces_every_consent_once_in_batches() {
    const MEMBERS: usize = 620;
    let identity = Identity::with_partners("alliance_end_large").await;
    let (brand, mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let enrolled = futures::stream::iter(0..MEMBERS)
        .map(|i| {
            let (mut brand, mut mall) = (brand.clone(), mall.clone());
            async move {
                let number = format!("1770000{i:04}");
                let id = || {
                    crate::harness::enroll(&number, vec![crate::harness::phone(&number, true)], &[])
                };
                let brand_id = brand.enrolled(id()).await;
                mall.enrolled(id()).await;
                brand
                    .consents
                    .grant_consent(pb::GrantConsentRequest {
                        request_id: format!("grant-{i}"),
                        ..grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile])
                    })
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    assert_eq!(enrolled.len(), MEMBERS);
    let alliance = brand
        .clone()
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alliances
        .remove(0)
        .name;
    let mut feed = mall.clone().feed().await;
    for _ in 0..MEMBERS {
        assert_eq!(
            next(&mut feed).await.kind,
            pb::ConsentEventKind::Granted as i32
        );
    }
    mall.clone()
        .partners
        .end_alliance(pb::EndAllianceRequest {
            request_id: "end".into(),
            name: alliance,
        })
        .await
        .unwrap();
    let mut expired = std::collections::BTreeSet::new();
    for _ in 0..MEMBERS {
        let event = next(&mut feed).await;
        assert_eq!(event.kind, pb::ConsentEventKind::Expired as i32);
        assert!(expired.insert(event.member), "announced twice");
    }
    let quiet =
        tokio::time::timeout(Duration::from_secs(3), futures::StreamExt::next(&mut feed)).await;
    assert!(quiet.is_err(), "nothing more: {quiet:?}");
    let db = identity.database().await;
    assert_eq!(
        crate::harness::count(&db, "SELECT COUNT(*) FROM consents WHERE state = 'granted'").await,
        0
    );
}
