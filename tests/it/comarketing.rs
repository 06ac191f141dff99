//! Comarketing's first worked RPCs on the kit: a mall proposes a joint campaign with a brand;
//! both participants read it, nobody else learns it exists; refusals store nothing.

use lianyu_kit::{
    testing::{BRAND, MALL, OUTSIDER, TestServer, reason, violations},
    time::{now_millis, timestamp},
};
use lianyu_proto::{
    comarketing::v1::{self as pb, campaign_service_client::CampaignServiceClient},
    common::v1::Money,
};
use tonic::{Code, codegen::InterceptedService, transport::Channel};

use crate::support::rows;

type Campaigns = CampaignServiceClient<InterceptedService<Channel, lianyu_kit::client::Bearer>>;

async fn mesh(test: &str) -> TestServer {
    crate::support::with_identity!(test, "comarketing", lianyu_comarketing::mount)
}

fn campaigns(server: &TestServer, token: &str) -> Campaigns {
    CampaignServiceClient::new(server.as_token(token))
}

fn share(partner: &str, currency: &str, minor_units: i64) -> pb::BudgetShare {
    pb::BudgetShare {
        partner: format!("partners/{partner}"),
        amount: Some(Money {
            currency_code: currency.into(),
            minor_units,
        }),
    }
}

/// Double 12: the mall puts in 6,000.00 and the brand 4,000.00, listed brand first.
fn proposal() -> pb::CreateCampaignRequest {
    let day = 24 * 3_600_000;
    pb::CreateCampaignRequest {
        request_id: "c1".into(),
        campaign: Some(pb::Campaign {
            display_name: "Double 12".into(),
            partners: vec![format!("partners/{BRAND}")],
            budget: vec![share(BRAND, "CNY", 400_000), share(MALL, "CNY", 600_000)],
            start_time: timestamp(now_millis() + day),
            end_time: timestamp(now_millis() + 3 * day),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_proposed_campaign_is_seen_by_its_participants_only() {
    let server = mesh("cm_participants").await;
    let request = proposal();
    let created = campaigns(&server, &server.token(MALL))
        .create_campaign(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.state, pb::CampaignState::Proposed as i32);
    assert_eq!(
        created.partners,
        [format!("partners/{MALL}"), format!("partners/{BRAND}")]
    );
    assert_eq!(created.accepted_by, [format!("partners/{MALL}")]);
    assert_eq!(
        created.budget,
        [share(MALL, "CNY", 600_000), share(BRAND, "CNY", 400_000)],
        "shares read in the participants' order, in integer minor units"
    );
    let replay = campaigns(&server, &server.token(MALL))
        .create_campaign(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, created);
    let get = || pb::GetCampaignRequest {
        name: created.name.clone(),
    };
    let read = campaigns(&server, &server.token(BRAND))
        .get_campaign(get())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);
    // A store of a participant reads the campaign it takes part in (it cannot propose one).
    let at_store = campaigns(&server, &server.store_token(BRAND, "sh01"))
        .get_campaign(get())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at_store, created);
    let e = campaigns(&server, &server.token(OUTSIDER))
        .get_campaign(get())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "CAMPAIGN_NOT_FOUND")
    );
    assert_eq!(rows(&server, "comarketing", "campaigns").await, 1);
}

#[tokio::test]
async fn refused_proposals_name_every_bad_field_and_store_nothing() {
    let server = mesh("cm_refusals").await;
    let mut bad = proposal();
    let c = bad.campaign.as_mut().unwrap();
    c.display_name.clear();
    c.budget = vec![
        share(OUTSIDER, "CNY", 100),
        share(BRAND, "USD", 100),
        share(MALL, "CNY", 0),
    ];
    c.end_time = c.start_time;
    let e = campaigns(&server, &server.token(MALL))
        .create_campaign(bad)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&e),
        [
            "campaign.display_name",
            "campaign.budget[0].partner",
            "campaign.budget[2].amount",
            "campaign.end_time"
        ]
    );
    let mut alone = proposal();
    alone.campaign.as_mut().unwrap().partners = vec![format!("partners/{MALL}")];
    alone.campaign.as_mut().unwrap().budget.clear();
    let e = campaigns(&server, &server.token(MALL))
        .create_campaign(alone)
        .await
        .unwrap_err();
    assert_eq!(violations(&e), ["campaign.partners"]);
    for (token, expected) in [
        (server.store_token(MALL, "sh01"), "STORE_TOKEN_NOT_ALLOWED"),
        (server.operator_token(), "OPERATOR_JOINS_NO_CAMPAIGN"),
    ] {
        let e = campaigns(&server, &token)
            .create_campaign(proposal())
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::PermissionDenied, expected)
        );
    }
    assert_eq!(rows(&server, "comarketing", "campaigns").await, 0);
    assert_eq!(rows(&server, "comarketing", "campaign_partners").await, 0);
}
