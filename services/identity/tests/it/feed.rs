//! How the other services learn of consent changes: a feed in the grantee's own ids.

use std::time::Duration;

use futures::StreamExt;
use lianyu_proto::{
    common::v1::{ConsentPurpose, FeedCursor},
    identity::v1 as pb,
};
use tonic::Code;

use crate::harness::{Identity, grant};

pub(crate) async fn next(
    stream: &mut tonic::Streaming<pb::WatchConsentEventsResponse>,
) -> pb::WatchConsentEventsResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn the_grantee_watches_grants_and_withdrawals_and_resumes_from_a_cursor() {
    let identity = Identity::with_partners("consent_feed").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let (brand_id, mall_id) = identity.shared_member("13300133000").await;

    let mut events = mall.feed().await;
    brand
        .consents
        .grant_consent(grant(
            &brand_id,
            "mall-b",
            &[ConsentPurpose::MarketingContact],
        ))
        .await
        .unwrap();
    let granted = next(&mut events).await;
    assert_eq!(
        (granted.kind, granted.member.as_str()),
        (pb::ConsentEventKind::Granted as i32, mall_id.as_str())
    );
    assert_eq!(granted.purposes, [ConsentPurpose::MarketingContact as i32]);
    brand
        .consents
        .withdraw_consent(pb::WithdrawConsentRequest {
            request_id: "w".into(),
            member: brand_id.clone(),
            grantee: "partners/mall-b".into(),
            purposes: vec![ConsentPurpose::MarketingContact as i32],
        })
        .await
        .unwrap();
    let withdrawn = next(&mut events).await;
    assert_eq!(withdrawn.kind, pb::ConsentEventKind::Withdrawn as i32);
    assert!(withdrawn.cursor.unwrap().sequence > granted.cursor.unwrap().sequence);

    // A consumer that stored the first cursor resumes with the withdrawal only.
    let mut resumed = mall
        .consents
        .watch_consent_events(pb::WatchConsentEventsRequest {
            after: granted.cursor,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next(&mut resumed).await.kind,
        pb::ConsentEventKind::Withdrawn as i32
    );

    // The collector's feed holds nothing addressed to others.
    let mut brand_feed = brand.feed().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), brand_feed.next())
            .await
            .is_err(),
        "no events for the brand"
    );

    let bad = mall
        .consents
        .watch_consent_events(pb::WatchConsentEventsRequest {
            after: Some(FeedCursor { sequence: -1 }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn list_consents_shows_the_members_receipts_and_what_was_granted_to_the_caller() {
    let identity = Identity::with_partners("list_consents").await;
    let (mut brand, mut mall, mut third) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    let (brand_id, mall_id) = identity.shared_member("13200132000").await;
    brand
        .consents
        .grant_consent(grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();

    let own = brand
        .consents
        .list_consents(pb::ListConsentsRequest {
            member: brand_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.consents.len(), 1);
    assert_eq!(own.consents[0].member, brand_id);
    // The person's view through the mall shows the same consent, in the mall's ids.
    let via_mall = mall
        .consents
        .list_consents(pb::ListConsentsRequest {
            member: mall_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via_mall.consents.len(), 1);
    assert_eq!(via_mall.consents[0].member, mall_id);
    assert_eq!(via_mall.consents[0].name, own.consents[0].name);
    let granted_to_mall = mall
        .consents
        .list_consents(pb::ListConsentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(granted_to_mall.consents.len(), 1);
    let foreign = third
        .consents
        .list_consents(pb::ListConsentsRequest {
            member: brand_id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    assert!(
        third
            .consents
            .list_consents(pb::ListConsentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .consents
            .is_empty()
    );
}

/// On PostgreSQL, another replica's change reaches this replica's streams through
/// LISTEN/NOTIFY, not the poll: with the poll set to a minute, the event still arrives.
#[tokio::test]
async fn another_replicas_change_wakes_this_replicas_stream_without_polling() {
    if !lianyu_kit::testing::backend_is_postgres() {
        eprintln!("skipped: LISTEN/NOTIFY is PostgreSQL's (SQLite has one process)");
        return;
    }
    let identity = crate::harness::Identity::with_partners_and("feed_notify", |c| {
        c.limits.feed_poll = Duration::from_secs(60);
    })
    .await;
    let (brand_id, mall_id) = identity.shared_member("13100131999").await;
    let mut feed = identity.as_partner("mall-b").feed().await;
    let elsewhere = identity.replica().await;
    elsewhere
        .as_partner("brand-a")
        .consents
        .grant_consent(crate::harness::grant(
            &brand_id,
            "mall-b",
            &[lianyu_proto::common::v1::ConsentPurpose::ShareProfile],
        ))
        .await
        .unwrap();
    let event = next(&mut feed).await;
    assert_eq!(event.member, mall_id);
}
