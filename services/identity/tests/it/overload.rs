//! Load never turns into an outage: under a flood of real parallel calls health is always
//! answered, overload is refused fast with RESOURCE_EXHAUSTED (and the refused calls wrote
//! nothing), one partner's flood leaves another partner's calls alone, and open streams have a
//! limit of their own.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream::FuturesUnordered};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::{As, Identity, details, enroll, phone};

/// Enrols `n` numbered people at once from one partner: (number, outcome) per call.
async fn flood(client: &As, from: u32, n: u32) -> Vec<(u32, Result<(), tonic::Status>)> {
    let calls: FuturesUnordered<_> = (from..from + n)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let outcome = client
                    .members
                    .enroll_member(enroll(
                        &format!("r{i}"),
                        vec![phone(&format!("1380000{i:04}"), true)],
                        &[],
                    ))
                    .await
                    .map(drop);
                (i, outcome)
            }
        })
        .collect();
    calls.collect().await
}

/// The delay a refusal asks the caller to wait, read both ways a gRPC client may read it (a
/// `google.rpc.RetryInfo` detail and the `grpc-retry-pushback-ms` metadata gRPC's retry
/// policies honour), which agree.
fn retry_after(refused: &tonic::Status) -> Duration {
    use tonic_types::StatusExt;
    let delay = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo: {refused:?}"));
    let pushback: u128 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no grpc-retry-pushback-ms: {refused:?}"));
    assert_eq!(pushback, delay.as_millis(), "{refused:?}");
    delay
}

#[tokio::test]
async fn under_a_flood_health_is_answered_and_refusals_are_fast_and_write_nothing() {
    let identity = Identity::with_partners_and("overload_flood", |c| {
        c.limits.max_concurrent_requests = 4;
        c.limits.admission_wait = Duration::from_millis(20);
    })
    .await;
    let brand = identity.as_partner("brand-a");
    let health = HealthClient::new(identity.channel.clone());
    let probes = (0..30).map(|_| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status)
        }
    });
    let started = Instant::now();
    let (outcomes, probes) = tokio::join!(flood(&brand, 0, 600), futures::future::join_all(probes));
    for probe in probes {
        assert_eq!(probe.unwrap(), 1, "SERVING while busy");
    }
    let refused: Vec<u32> = outcomes
        .iter()
        .filter_map(|(i, o)| match o {
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    ["OVERLOADED", "PARTNER_CONCURRENCY"].contains(&details(e).0.as_str()),
                    "{e:?}"
                );
                // The shared layer's domain, as lianyu/common/v1/common.proto documents.
                assert_eq!(lianyu_kit::testing::domain(e), "lianyu.admission", "{e:?}");
                // When to try again, about as long as the call waited in vain (20 ms), drawn
                // from half to one and a half times it.
                let delay = retry_after(e);
                assert!(
                    (Duration::from_millis(10)..=Duration::from_millis(30)).contains(&delay),
                    "{delay:?}"
                );
                Some(*i)
            }
            Ok(()) => None,
        })
        .collect();
    assert!(
        !refused.is_empty(),
        "600 calls at once over 4 slots: some refused"
    );
    assert!(refused.len() < 600, "and some served");
    eprintln!(
        "{} of 600 refused, all answered in {:?}",
        refused.len(),
        started.elapsed()
    );
    // A refused enrolment wrote nothing; every served one is there.
    let mut reader = identity.as_partner("brand-a");
    for (i, outcome) in &outcomes {
        let found = reader
            .members
            .resolve_member(lianyu_proto::identity::v1::ResolveMemberRequest {
                identifier: Some(phone(&format!("1380000{i:04}"), true)),
            })
            .await;
        assert_eq!(found.is_ok(), outcome.is_ok(), "person {i}");
    }
}

#[tokio::test]
async fn one_partners_flood_does_not_take_another_partners_capacity() {
    let identity = Identity::with_partners_and("overload_fair", |c| {
        c.limits.max_concurrent_requests = 8;
        c.limits.partner_share_percent = 50;
        c.limits.admission_wait = Duration::from_millis(20);
    })
    .await;
    let (brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let flooding = flood(&brand, 0, 800);
    let steady = async {
        let mut outcomes = Vec::new();
        for i in 0..40 {
            outcomes.push(
                mall.members
                    .enroll_member(enroll(
                        &format!("m{i}"),
                        vec![phone(&format!("1370000{i:04}"), true)],
                        &[],
                    ))
                    .await
                    .map(drop),
            );
        }
        outcomes
    };
    let (flooded, steady) = tokio::join!(flooding, steady);
    let brand_refused = flooded
        .iter()
        .filter(|(_, o)| {
            o.as_ref()
                .is_err_and(|e| details(e).0 == "PARTNER_CONCURRENCY")
        })
        .count();
    assert!(
        brand_refused > 0,
        "the flooding partner is held to its share"
    );
    for (i, outcome) in steady.iter().enumerate() {
        assert!(outcome.is_ok(), "the mall's call {i}: {outcome:?}");
    }
}

#[tokio::test]
async fn open_streams_have_a_limit_of_their_own() {
    let identity = Identity::with_partners_and("overload_streams", |c| {
        c.limits.max_streams = 3;
        c.limits.max_concurrent_requests = 2;
    })
    .await;
    let mut brand = identity.as_partner("brand-a");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(brand.feed().await);
    }
    let refused = brand
        .consents
        .watch_consent_events(lianyu_proto::identity::v1::WatchConsentEventsRequest { after: None })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), details(&refused).0.as_str()),
        (Code::ResourceExhausted, "TOO_MANY_STREAMS")
    );
    let delay = retry_after(&refused);
    assert!(
        (Duration::from_millis(500)..=Duration::from_millis(1500)).contains(&delay),
        "{delay:?}"
    );
    // Open streams hold no unary slot: unary calls still go through.
    for i in 0..5 {
        brand
            .members
            .enroll_member(enroll(
                &format!("u{i}"),
                vec![phone(&format!("1360000{i:04}"), true)],
                &[],
            ))
            .await
            .unwrap();
    }
    // A closed stream gives its slot back.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match brand
            .consents
            .watch_consent_events(lianyu_proto::identity::v1::WatchConsentEventsRequest {
                after: None,
            })
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline && e.code() == Code::ResourceExhausted => {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("the slot never came back: {e:?}"),
        }
    }
}
