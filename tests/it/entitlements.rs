//! Entitlements' first worked RPCs on the kit: a mall defines a coupon a brand funds; issuer,
//! funder and honouring partners read it, nobody else learns it exists; refusals store nothing.

use lianyu_kit::{
    testing::{BRAND, MALL, OUTSIDER, TestServer, reason, violations},
    time::{now_millis, timestamp},
};
use lianyu_proto::{
    common::v1::Money,
    entitlements::v1::{self as pb, benefit_service_client::BenefitServiceClient},
};
use tonic::{Code, codegen::InterceptedService, transport::Channel};

use crate::support::rows;

type Benefits = BenefitServiceClient<InterceptedService<Channel, lianyu_kit::client::Bearer>>;

async fn mesh(test: &str) -> TestServer {
    crate::support::with_identity!(test, "entitlements", lianyu_entitlements::mount)
}

fn benefits(server: &TestServer, token: &str) -> Benefits {
    BenefitServiceClient::new(server.as_token(token))
}

fn cny(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "CNY".into(),
        minor_units,
    })
}

/// 50 off a 300 spend, issued by the mall, funded by the brand, honoured at the mall.
fn coupon() -> pb::CreateBenefitRequest {
    pb::CreateBenefitRequest {
        request_id: "b1".into(),
        benefit: Some(pb::Benefit {
            display_name: "50 off 300".into(),
            kind: pb::BenefitKind::ThresholdCoupon as i32,
            funder: format!("partners/{BRAND}"),
            honoured_by: vec![format!("partners/{MALL}")],
            value: cny(5_000),
            threshold: cny(30_000),
            budget_units: 1_000,
            per_member_limit: 1,
            valid_until: timestamp(now_millis() + 7 * 24 * 3_600_000),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_benefit_is_seen_by_its_issuer_funder_and_honouring_partners_only() {
    let server = mesh("ent_parties").await;
    let request = coupon();
    let created = benefits(&server, &server.token(MALL))
        .create_benefit(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.state, pb::BenefitState::Draft as i32);
    assert_eq!(created.value, cny(5_000), "money stays integer minor units");
    let replay = benefits(&server, &server.token(MALL))
        .create_benefit(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, created, "a retry is the same benefit");
    let get = || pb::GetBenefitRequest {
        name: created.name.clone(),
    };
    for party in [MALL, BRAND] {
        let read = benefits(&server, &server.token(party))
            .get_benefit(get())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read, created, "{party}");
    }
    // A counter of the honouring mall reads what it honours.
    let at_counter = benefits(&server, &server.store_token(MALL, "sh01"))
        .get_benefit(get())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at_counter, created);
    let e = benefits(&server, &server.token(OUTSIDER))
        .get_benefit(get())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "BENEFIT_NOT_FOUND")
    );
    assert_eq!(rows(&server, "entitlements", "benefits").await, 1);
}

#[tokio::test]
async fn refused_definitions_name_every_bad_field_and_store_nothing() {
    let server = mesh("ent_refusals").await;
    let mut bad = coupon();
    let b = bad.benefit.as_mut().unwrap();
    b.display_name.clear();
    b.funder = "brand-a".into();
    b.threshold = cny(1_000);
    b.budget_units = 0;
    b.valid_until = timestamp(now_millis() - 1);
    let e = benefits(&server, &server.token(MALL))
        .create_benefit(bad)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&e),
        [
            "benefit.display_name",
            "benefit.funder",
            "benefit.threshold",
            "benefit.budget_units",
            "benefit.valid_until"
        ]
    );
    let mut float_like = coupon();
    float_like.benefit.as_mut().unwrap().value = Some(Money {
        currency_code: "cny".into(),
        minor_units: -50,
    });
    let e = benefits(&server, &server.token(MALL))
        .create_benefit(float_like)
        .await
        .unwrap_err();
    assert_eq!(violations(&e), ["benefit.value"]);
    for (token, expected) in [
        (server.store_token(MALL, "sh01"), "STORE_TOKEN_NOT_ALLOWED"),
        (server.operator_token(), "OPERATOR_ISSUES_NOTHING"),
    ] {
        let e = benefits(&server, &token)
            .create_benefit(coupon())
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::PermissionDenied, expected)
        );
    }
    assert_eq!(rows(&server, "entitlements", "benefits").await, 0);
    assert_eq!(rows(&server, "entitlements", "benefit_parties").await, 0);
}

/// Concurrent retries of one definition (a client that timed out and retried at once, many
/// times over) make one benefit; concurrent distinct definitions each make their own.
#[tokio::test]
async fn racing_retries_define_one_benefit() {
    let server = mesh("ent_race").await;
    let request = coupon();
    let replies = futures::future::join_all((0..8).map(|_| {
        let mut client = benefits(&server, &server.token(MALL));
        let request = request.clone();
        async move { client.create_benefit(request).await.map(|r| r.into_inner()) }
    }))
    .await;
    let first = replies[0].clone().unwrap();
    for reply in &replies {
        assert_eq!(reply.as_ref().unwrap(), &first);
    }
    assert_eq!(rows(&server, "entitlements", "benefits").await, 1);
    let distinct = futures::future::join_all((0..4).map(|i| {
        let mut client = benefits(&server, &server.token(MALL));
        let mut request = coupon();
        request.request_id = format!("distinct-{i}");
        async move { client.create_benefit(request).await }
    }))
    .await;
    assert!(distinct.iter().all(Result::is_ok));
    assert_eq!(rows(&server, "entitlements", "benefits").await, 5);
}
