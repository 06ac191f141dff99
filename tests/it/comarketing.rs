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
        share_bps: 0,
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
    assert_eq!(created.state, pb::CampaignState::Draft as i32);
    assert_eq!(
        created.partners,
        [format!("partners/{MALL}"), format!("partners/{BRAND}")]
    );
    assert_eq!(created.accepted_by, [format!("partners/{MALL}")]);
    assert_eq!(
        created
            .budget
            .iter()
            .map(|b| b.share_bps)
            .collect::<Vec<_>>(),
        [6_000, 4_000]
    );
    assert_eq!(
        created
            .budget
            .iter()
            .map(|b| pb::BudgetShare {
                share_bps: 0,
                ..b.clone()
            })
            .collect::<Vec<_>>(),
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

fn accept(name: &str, id: &str) -> pb::AcceptCampaignRequest {
    pb::AcceptCampaignRequest {
        request_id: id.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn launch(name: &str, id: &str) -> pb::LaunchCampaignRequest {
    pb::LaunchCampaignRequest {
        request_id: id.into(),
        name: name.into(),
    }
}

/// A campaign runs only once every participant accepted its current terms: a change withdraws
/// the others' acceptance, an outsider can neither accept nor launch, and a refused step
/// changes nothing (read back).
#[tokio::test]
async fn every_participant_accepts_the_current_terms_before_it_runs() {
    let server = mesh("cm_lifecycle").await;
    let mall = campaigns(&server, &server.token(MALL));
    let brand = campaigns(&server, &server.token(BRAND));
    let outsider = campaigns(&server, &server.token(OUTSIDER));
    let created = mall
        .clone()
        .create_campaign(proposal())
        .await
        .unwrap()
        .into_inner();
    let name = created.name.clone();
    let e = mall
        .clone()
        .launch_campaign(launch(&name, "l1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "CAMPAIGN_NOT_ACCEPTED")
    );
    assert!(
        e.message().contains(&format!("partners/{BRAND}")),
        "{}",
        e.message()
    );
    for e in [
        outsider
            .clone()
            .accept_campaign(accept(&name, "x1"))
            .await
            .unwrap_err(),
        outsider
            .clone()
            .launch_campaign(launch(&name, "x2"))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::NotFound, "CAMPAIGN_NOT_FOUND")
        );
    }
    // The brand accepts; the mall then changes the budget: the brand must accept again.
    let accepted = brand
        .clone()
        .accept_campaign(accept(&name, "a1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state, pb::CampaignState::Scheduled as i32);
    let mut changed = created.clone();
    changed.budget = vec![share(MALL, "CNY", 500_000), share(BRAND, "CNY", 500_000)];
    let e = mall
        .clone()
        .update_campaign(pb::UpdateCampaignRequest {
            request_id: "u0".into(),
            campaign: Some(changed.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["budget".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "CAMPAIGN_STATE")
    );
    let read = brand
        .clone()
        .get_campaign(pb::GetCampaignRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        read.budget, accepted.budget,
        "a refused change changes nothing"
    );
    // A second draft, changed before the brand accepts.
    let mut second = proposal();
    second.request_id = "c2".into();
    let draft = mall
        .clone()
        .create_campaign(second)
        .await
        .unwrap()
        .into_inner();
    changed.name = draft.name.clone();
    let updated = mall
        .clone()
        .update_campaign(pb::UpdateCampaignRequest {
            request_id: "u1".into(),
            campaign: Some(changed.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["budget".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.budget[0].share_bps, 5_000);
    assert_eq!(
        updated.display_name, draft.display_name,
        "fields outside the mask stay"
    );
    assert_eq!(updated.accepted_by, [format!("partners/{MALL}")]);
    // Running: launched by the brand, once.
    let running = brand
        .clone()
        .launch_campaign(launch(&name, "l2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(running.state, pb::CampaignState::Running as i32);
    assert_eq!(
        running.remaining,
        running
            .budget
            .iter()
            .map(|b| b.amount.clone().unwrap())
            .reduce(|a, b| Money {
                minor_units: a.minor_units + b.minor_units,
                ..a
            })
    );
    let e = mall
        .clone()
        .launch_campaign(launch(&name, "l3"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CAMPAIGN_STATE");
    let listed = brand
        .clone()
        .list_campaigns(pb::ListCampaignsRequest {
            state: pb::CampaignState::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .campaigns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        [name.as_str()]
    );
    let all = brand
        .clone()
        .list_campaigns(pb::ListCampaignsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.campaigns.len(), 1);
    assert!(!all.next_page_token.is_empty());
    let none = outsider
        .clone()
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.campaigns.is_empty());
    let ended = mall
        .clone()
        .end_campaign(pb::EndCampaignRequest {
            request_id: "e1".into(),
            name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.state, pb::CampaignState::Ended as i32);
}

/// A participant accepts the terms it read: with the etag of a read made before another
/// participant changed the budget, nothing is accepted (ABORTED / ETAG_MISMATCH, read back
/// unchanged); with the etag of the new terms it is. Nobody else gets anywhere with the etag.
#[tokio::test]
async fn a_participant_accepts_exactly_the_terms_it_read() {
    let server = mesh("cm_etag").await;
    let mall = campaigns(&server, &server.token(MALL));
    let brand = campaigns(&server, &server.token(BRAND));
    let created = mall
        .clone()
        .create_campaign(proposal())
        .await
        .unwrap()
        .into_inner();
    let name = created.name.clone();
    let read = |mut client: Campaigns| {
        let name = name.clone();
        async move {
            client
                .get_campaign(pb::GetCampaignRequest { name })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let seen = read(brand.clone()).await;
    assert_eq!(seen.etag, created.etag);
    assert!(!seen.etag.is_empty());
    // The mall moves 1,000.00 of its share onto the brand's.
    let mut changed = created.clone();
    changed.budget = vec![share(MALL, "CNY", 500_000), share(BRAND, "CNY", 500_000)];
    let updated = mall
        .clone()
        .update_campaign(pb::UpdateCampaignRequest {
            request_id: "u1".into(),
            campaign: Some(changed),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["budget".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(updated.etag, seen.etag);
    let with_etag = |rid: &str, etag: &str| pb::AcceptCampaignRequest {
        request_id: rid.into(),
        name: name.clone(),
        etag: etag.into(),
    };
    let e = brand
        .clone()
        .accept_campaign(with_etag("stale", &seen.etag))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Aborted, "ETAG_MISMATCH")
    );
    assert_eq!(read(mall.clone()).await, updated, "nothing accepted");
    // Not the outsider, not the brand's store: the etag opens nothing.
    for token in [server.token(OUTSIDER), server.store_token(BRAND, "sh01")] {
        let e = campaigns(&server, &token)
            .accept_campaign(with_etag("other", &updated.etag))
            .await
            .unwrap_err();
        assert!(
            matches!(
                reason(&e).as_str(),
                "CAMPAIGN_NOT_FOUND" | "STORE_TOKEN_NOT_ALLOWED"
            ),
            "{e:?}"
        );
    }
    assert_eq!(
        read(mall.clone()).await,
        updated,
        "refusals changed nothing"
    );
    // The brand reads the new terms and accepts them.
    let now = read(brand.clone()).await;
    let accepted = brand
        .clone()
        .accept_campaign(with_etag("fresh", &now.etag))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state, pb::CampaignState::Scheduled as i32);
    assert_eq!(
        (accepted.budget, accepted.etag),
        (updated.budget, updated.etag),
        "accepting changes the state, not the terms or their etag"
    );
}

/// The same race, sent at once: a participant accepting what it read while the proposer
/// changes the terms. Either the acceptance commits first (the campaign is SCHEDULED on the
/// terms read and the change is refused), or the change does (the acceptance is refused and
/// the campaign stays a DRAFT on the new terms) — never both answered OK, never terms
/// accepted that the accepting participant did not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acceptance_racing_a_change_of_terms_accepts_only_what_was_read() {
    let server = mesh("cm_accept_race").await;
    let mall = campaigns(&server, &server.token(MALL));
    let brand = campaigns(&server, &server.token(BRAND));
    for trial in 0..12 {
        let mut request = proposal();
        request.request_id = format!("c{trial}");
        let created = mall
            .clone()
            .create_campaign(request)
            .await
            .unwrap()
            .into_inner();
        let mut changed = created.clone();
        changed.budget = vec![share(MALL, "CNY", 500_000), share(BRAND, "CNY", 500_000)];
        let (accepted, updated) = tokio::join!(
            tokio::spawn({
                let mut brand = brand.clone();
                let request = pb::AcceptCampaignRequest {
                    request_id: format!("a{trial}"),
                    name: created.name.clone(),
                    etag: created.etag.clone(),
                };
                async move { brand.accept_campaign(request).await }
            }),
            tokio::spawn({
                let mut mall = mall.clone();
                let request = pb::UpdateCampaignRequest {
                    request_id: format!("u{trial}"),
                    campaign: Some(changed),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["budget".into()],
                    }),
                };
                async move { mall.update_campaign(request).await }
            }),
        );
        let (accepted, updated) = (accepted.unwrap(), updated.unwrap());
        let now = brand
            .clone()
            .get_campaign(pb::GetCampaignRequest {
                name: created.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        match (accepted, updated) {
            (Ok(_), Err(e)) => {
                assert_eq!(reason(&e), "CAMPAIGN_STATE");
                assert_eq!(now.state, pb::CampaignState::Scheduled as i32);
                assert_eq!(
                    (now.budget, now.etag),
                    (created.budget.clone(), created.etag)
                );
            }
            (Err(e), Ok(u)) => {
                assert_eq!(reason(&e), "ETAG_MISMATCH");
                assert_eq!(now.state, pb::CampaignState::Draft as i32);
                assert_eq!(now.accepted_by, [format!("partners/{MALL}")]);
                let u = u.into_inner();
                assert_eq!((now.budget, now.etag), (u.budget, u.etag));
            }
            other => panic!("trial {trial}: exactly one of the two stands: {other:?}"),
        }
    }
}
