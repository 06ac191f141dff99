//! Consent checks are answered from an index; a change must reach it before it can mislead:
//! at once on the replica that made it, within a feed poll on another.

use std::time::Duration;

use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};

use crate::harness::{As, Identity, grant};

async fn allowed(mall: &mut As, member: &str) -> (bool, bool) {
    let one = mall
        .consents
        .check_consent(pb::CheckConsentRequest {
            member: member.into(),
            purpose: ConsentPurpose::MarketingContact as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .allowed;
    let batch = mall
        .consents
        .batch_check_consent(pb::BatchCheckConsentRequest {
            members: vec![member.into()],
            purpose: ConsentPurpose::MarketingContact as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .allowed;
    (one, batch)
}

fn withdraw(request_id: &str, member: &str) -> pb::WithdrawConsentRequest {
    pb::WithdrawConsentRequest {
        request_id: request_id.into(),
        member: member.into(),
        grantee: "partners/mall-b".into(),
        purposes: vec![ConsentPurpose::MarketingContact as i32],
    }
}

#[tokio::test]
async fn a_withdrawal_is_never_checked_as_granted_once_answered() {
    let identity = Identity::with_partners("check_cache_local").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let (brand_id, mall_id) = identity.shared_member("13844138444").await;
    assert_eq!(allowed(&mut mall, &mall_id).await, (false, false));
    for round in 0..3 {
        brand
            .consents
            .grant_consent(pb::GrantConsentRequest {
                request_id: format!("grant-{round}"),
                ..grant(&brand_id, "mall-b", &[ConsentPurpose::MarketingContact])
            })
            .await
            .unwrap();
        assert_eq!(
            allowed(&mut mall, &mall_id).await,
            (true, true),
            "round {round}"
        );
        assert_eq!(allowed(&mut mall, &mall_id).await, (true, true), "cached");
        brand
            .consents
            .withdraw_consent(withdraw(&format!("withdraw-{round}"), &brand_id))
            .await
            .unwrap();
        assert_eq!(
            allowed(&mut mall, &mall_id).await,
            (false, false),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn another_replicas_withdrawal_reaches_this_replicas_checks_within_a_poll() {
    let identity = Identity::with_partners("check_cache_replica").await;
    let other = identity.replica().await;
    let mut brand_elsewhere = other.as_partner("brand-a");
    let mut mall = identity.as_partner("mall-b");
    let (brand_id, mall_id) = identity.shared_member("13855138555").await;
    brand_elsewhere
        .consents
        .grant_consent(grant(
            &brand_id,
            "mall-b",
            &[ConsentPurpose::MarketingContact],
        ))
        .await
        .unwrap();
    // The grant was made on the other replica: it shows here too (nothing was cached yet,
    // or the feed dropped the empty entry).
    let mut seen = (false, false);
    for _ in 0..40 {
        seen = allowed(&mut mall, &mall_id).await;
        if seen == (true, true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, (true, true));
    brand_elsewhere
        .consents
        .withdraw_consent(withdraw("w", &brand_id))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while allowed(&mut mall, &mall_id).await != (false, false) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the withdrawal never reached this replica's index"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
