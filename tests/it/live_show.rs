//! A co-hosted livestream end to end through identity: the brand and the mall run a show from
//! the mall's store, viewers watch it live, a flash sale sells out exactly at any concurrency
//! (also across two instances on one database), orders are credited to partner, store and
//! guide, buyers are named only to whom they consented, and a viewer that stops reading gets
//! a snapshot instead of a backlog.

use futures::future::join_all;
use lianyu_kit::{
    testing::{BRAND, MALL, OUTSIDER, TestServer, reason},
    time::{now_millis, timestamp},
};
use lianyu_proto::{
    common::v1::{ConsentPurpose, Money},
    identity::v1::{
        self as id, consent_service_client::ConsentServiceClient,
        member_service_client::MemberServiceClient,
    },
    live::v1::{
        self as pb, join_session_response::Update, order_service_client::OrderServiceClient,
        session_service_client::SessionServiceClient,
        showcase_service_client::ShowcaseServiceClient, stats_service_client::StatsServiceClient,
        viewer_service_client::ViewerServiceClient,
    },
};
use tonic::{Code, codegen::InterceptedService, transport::Channel};
use tonic_types::StatusExt;

use crate::{support::rows, wallets::enrol};

type Svc = InterceptedService<Channel, lianyu_kit::client::Bearer>;

async fn mesh(test: &str) -> TestServer {
    crate::support::with_identity!(test, "live", lianyu_live::mount, |config| {
        config.limits.max_concurrent_requests = 512;
        config.limits.admission_wait = std::time::Duration::from_secs(10);
    })
}

fn sessions(s: &TestServer, token: &str) -> SessionServiceClient<Svc> {
    SessionServiceClient::new(s.as_token(token))
}
fn showcase(s: &TestServer, token: &str) -> ShowcaseServiceClient<Svc> {
    ShowcaseServiceClient::new(s.as_token(token))
}
pub(crate) fn orders(s: &TestServer, token: &str) -> OrderServiceClient<Svc> {
    OrderServiceClient::new(s.as_token(token))
}
pub(crate) fn viewers(s: &TestServer, token: &str) -> ViewerServiceClient<Svc> {
    ViewerServiceClient::new(s.as_token(token))
}
fn stats(s: &TestServer, token: &str) -> StatsServiceClient<Svc> {
    StatsServiceClient::new(s.as_token(token))
}

fn cny(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "CNY".into(),
        minor_units,
    })
}

/// The brand and the mall co-host a show from the mall's store sh01, with the mall's guide
/// Lin on air and revenue shared 60/40; it is started. Returns the session.
pub(crate) async fn on_air(s: &TestServer) -> pb::Session {
    let created = sessions(s, &s.token(BRAND))
        .create_session(pb::CreateSessionRequest {
            request_id: "schedule".into(),
            session: Some(pb::Session {
                title: "Double 12 at the flagship".into(),
                hosts: vec![format!("partners/{MALL}")],
                store: format!("partners/{MALL}/stores/sh01"),
                stream_url: "https://cdn.example/live/1.m3u8".into(),
                scheduled_start_time: timestamp(now_millis() + 60_000),
                presenters: vec!["Ana".into()],
                guides: vec![pb::Guide {
                    guide_id: "lin".into(),
                    display_name: "Lin".into(),
                    partner: format!("partners/{MALL}"),
                    ..Default::default()
                }],
                revenue_shares: vec![
                    pb::RevenueShare {
                        partner: format!("partners/{BRAND}"),
                        share_bps: 6_000,
                    },
                    pb::RevenueShare {
                        partner: format!("partners/{MALL}"),
                        share_bps: 4_000,
                    },
                ],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    sessions(s, &s.token(MALL))
        .start_session(pb::StartSessionRequest {
            request_id: "start".into(),
            name: created.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn add_product(
    s: &TestServer,
    session: &str,
    sku: &str,
    price: i64,
) -> pb::Product {
    showcase(s, &s.token(BRAND))
        .add_product(pb::AddProductRequest {
            request_id: format!("add-{sku}"),
            parent: session.into(),
            product: Some(pb::Product {
                sku: sku.into(),
                title: "Lipstick 520".into(),
                price: cny(price),
                category: "cosmetics".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn flash_sale(
    s: &TestServer,
    session: &str,
    product: &str,
    stock: i64,
    limit: i32,
) -> pb::FlashSale {
    showcase(s, &s.token(BRAND))
        .create_flash_sale(pb::CreateFlashSaleRequest {
            request_id: format!("sale-{product}-{stock}"),
            parent: session.into(),
            flash_sale: Some(pb::FlashSale {
                product: product.into(),
                sale_price: cny(9_900),
                total_stock: stock,
                per_member_limit: limit,
                end_time: timestamp(now_millis() + 600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) fn buy(
    session: &str,
    sale: &str,
    member: &str,
    rid: &str,
    code: &str,
) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        request_id: rid.into(),
        parent: session.into(),
        order: Some(pb::Order {
            member: member.into(),
            flash_sale: sale.into(),
            quantity: 1,
            share_code: code.into(),
            payment_reference: format!("pay-{rid}"),
            ..Default::default()
        }),
    }
}

/// The next update of a viewer's stream, viewer counts skipped (stock ticks are not).
async fn next_change(stream: &mut tonic::Streaming<pb::JoinSessionResponse>) -> Update {
    loop {
        let update = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("an update within 10 s")
            .unwrap()
            .expect("the stream is open")
            .update
            .unwrap();
        if !matches!(update, Update::Viewers(_)) {
            return update;
        }
    }
}

/// An anonymous viewer of `session` through `token`'s app, its snapshot read.
async fn watch_anonymously(
    s: &TestServer,
    token: &str,
    session: &str,
) -> tonic::Streaming<pb::JoinSessionResponse> {
    join_anonymously(viewers(s, token), session).await
}

/// [`watch_anonymously`] through `client` (another replica's, say).
async fn join_anonymously(
    mut client: ViewerServiceClient<Svc>,
    session: &str,
) -> tonic::Streaming<pb::JoinSessionResponse> {
    let mut stream = client
        .join_session(pb::JoinSessionRequest {
            session: session.to_owned(),
            member: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next_change(&mut stream).await,
        Update::Snapshot(_)
    ));
    stream
}

async fn enrol_many(s: &TestServer, partner: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
        out.extend(
            join_all(
                chunk
                    .iter()
                    .map(|i| async move { enrol(s, partner, &format!("{prefix}{i:04}")).await }),
            )
            .await,
        );
    }
    out
}

#[tokio::test]
async fn a_co_hosted_show_runs_end_to_end() {
    let s = mesh("live_show").await;
    let session = on_air(&s).await;
    assert_eq!(session.state, pb::SessionState::Live as i32);
    assert!(session.start_time.is_some());
    let code = session.guides[0].share_code.clone();
    assert_eq!(
        session.guides[0].store,
        format!("partners/{MALL}/stores/sh01")
    );

    // A viewer watches anonymously through a third partner's app: first a snapshot.
    let mut watching = viewers(&s, &s.token(OUTSIDER))
        .join_session(pb::JoinSessionRequest {
            session: session.name.clone(),
            member: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let Update::Snapshot(first) = next_change(&mut watching).await else {
        panic!("the first message is a snapshot");
    };
    let shown = first.session.unwrap();
    assert_eq!(shown.state, pb::SessionState::Live as i32);
    assert!(
        shown.public_view && shown.guides.is_empty(),
        "no share codes for viewers"
    );
    assert!(first.viewers >= 1);

    // The brand pins its lipstick: the viewer sees it, and a marker keeps the moment.
    let lipstick = add_product(&s, &session.name, "LIP-520", 29_900).await;
    showcase(&s, &s.token(MALL))
        .pin_product(pb::PinProductRequest {
            request_id: "pin".into(),
            name: lipstick.name.clone(),
            pinned: true,
        })
        .await
        .unwrap();
    let Update::PinnedProduct(pinned) = next_change(&mut watching).await else {
        panic!("the pin reaches the viewer");
    };
    assert_eq!(
        (pinned.name.as_str(), pinned.pinned),
        (lipstick.name.as_str(), true)
    );
    let markers = showcase(&s, &s.token(OUTSIDER))
        .list_pin_markers(pb::ListPinMarkersRequest {
            parent: session.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .markers;
    assert_eq!(markers.len(), 1);
    assert!(markers[0].stream_offset_millis >= 0);

    // A flash sale of 3, one each: 8 members buy at once, 3 get it, 5 are told SOLD_OUT.
    let sale = flash_sale(&s, &session.name, &lipstick.name, 3, 1).await;
    // The room's stock tick may read the new sale's level before its opening arrives.
    let opened = loop {
        match next_change(&mut watching).await {
            Update::FlashSale(opened) => break opened,
            Update::StockLevel(_) => {}
            other => panic!("the sale's opening reaches the viewer, not {other:?}"),
        }
    };
    assert_eq!(opened.remaining_stock, 3);
    let members = enrol_many(&s, BRAND, "1390000", 8).await;
    let brand = s.token(BRAND);
    let results = join_all(members.iter().enumerate().map(|(i, m)| {
        let mut client = orders(&s, &brand);
        let request = buy(&session.name, &sale.name, m, &format!("o{i}"), &code);
        async move { client.place_order(request).await }
    }))
    .await;
    let placed: Vec<pb::Order> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|o| o.get_ref().clone()))
        .collect();
    assert_eq!(placed.len(), 3);
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            (refused.code(), reason(refused).as_str()),
            (Code::FailedPrecondition, "SOLD_OUT")
        );
    }
    // Sold out, a retry of a placed order still gets that order back (not SOLD_OUT).
    let (first_ok, placed_first) = results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().ok().map(|o| (i, o.get_ref().clone())))
        .unwrap();
    let replayed = orders(&s, &brand)
        .place_order(buy(
            &session.name,
            &sale.name,
            &members[first_ok],
            &format!("o{first_ok}"),
            &code,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed, placed_first);
    // Sold out reaches the viewer (stock ticks may come first).
    loop {
        if let Update::StockLevel(level) = next_change(&mut watching).await
            && level.remaining_stock == 0
        {
            break;
        }
    }
    // Each order is credited to the brand (seller), the guide's store and the guide.
    for o in &placed {
        assert_eq!(o.partner, format!("partners/{BRAND}"));
        assert_eq!(o.store, format!("partners/{MALL}/stores/sh01"));
        assert_eq!(o.guide, format!("{}/guides/{MALL}:lin", session.name));
        assert_eq!(o.amount, cny(9_900));
        assert_eq!(o.placed_by, format!("partners/{BRAND}"));
    }
    // A member who got one may not buy a second, even with units back on sale.
    orders(&s, &brand)
        .cancel_order(pb::CancelOrderRequest {
            request_id: "cancel".into(),
            name: placed[0].name.clone(),
        })
        .await
        .unwrap();
    let again = showcase(&s, &brand)
        .get_flash_sale(pb::GetFlashSaleRequest {
            name: sale.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.remaining_stock, 1, "a cancelled order restocks");
    let buyer_of = |o: &pb::Order| o.member.clone();
    let keeper = placed
        .iter()
        .find(|o| o.name != placed[0].name)
        .map(buyer_of)
        .unwrap();
    let e = orders(&s, &brand)
        .place_order(buy(&session.name, &sale.name, &keeper, "again", ""))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "MEMBER_LIMIT_REACHED");

    // The figures: two placed orders of 99.00, all the brand's, the mall's store, Lin's.
    let figures = stats(&s, &s.token(MALL))
        .get_session_stats(pb::GetSessionStatsRequest {
            session: session.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(figures.orders, 2);
    assert_eq!(figures.gross_sales, cny(19_800));
    let line = |lines: &[pb::SalesLine]| {
        lines
            .iter()
            .map(|l| {
                (
                    l.key.clone(),
                    l.orders,
                    l.gross_sales.clone().unwrap().minor_units,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line(&figures.by_partner),
        [(format!("partners/{BRAND}"), 2, 19_800)]
    );
    assert_eq!(
        line(&figures.by_store),
        [(format!("partners/{MALL}/stores/sh01"), 2, 19_800)]
    );
    assert_eq!(
        line(&figures.by_guide),
        [(format!("{}/guides/{MALL}:lin", session.name), 2, 19_800)]
    );
    let shares: Vec<i64> = figures
        .by_host_share
        .iter()
        .map(|l| l.gross_sales.clone().unwrap().minor_units)
        .collect();
    assert_eq!(shares, [11_880, 7_920]);
    // Figures are the co-hosts' business.
    let e = stats(&s, &s.token(OUTSIDER))
        .get_session_stats(pb::GetSessionStatsRequest {
            session: session.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The show ends: the viewer's last message is the ended session.
    sessions(&s, &brand)
        .end_session(pb::EndSessionRequest {
            request_id: "end".into(),
            name: session.name.clone(),
        })
        .await
        .unwrap();
    loop {
        match next_change(&mut watching).await {
            Update::Session(ended) => {
                assert_eq!(ended.state, pb::SessionState::Ended as i32);
                break;
            }
            Update::StockLevel(_) | Update::Viewers(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(10), watching.message())
            .await
            .unwrap()
            .unwrap()
            .is_none(),
        "the stream ends with the session"
    );
    // Nothing is sold after the end.
    let e = orders(&s, &brand)
        .place_order(buy(&session.name, &sale.name, &members[7], "late", ""))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "SESSION_STATE");
}

#[tokio::test]
async fn refused_changes_name_the_state_and_change_nothing() {
    let s = mesh("live_refusals_state").await;
    let session = on_air(&s).await;
    let brand = s.token(BRAND);
    // Cancelling a live session: FAILED_PRECONDITION with the current state.
    let e = sessions(&s, &brand)
        .cancel_session(pb::CancelSessionRequest {
            request_id: "cancel".into(),
            name: session.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "SESSION_STATE")
    );
    assert_eq!(
        e.get_error_details().error_info().unwrap().metadata["state"],
        "LIVE"
    );
    // A partner that is not a co-host, and the mall's token for another store, change nothing.
    let update = |rid: &str| pb::UpdateSessionRequest {
        request_id: rid.into(),
        session: Some(pb::Session {
            name: session.name.clone(),
            title: "Hijacked".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["title".into()],
        }),
    };
    for (token, why) in [
        (s.token(OUTSIDER), "HOST_ONLY"),
        (s.store_token(MALL, "sh02"), "STORE_TOKEN_NOT_ALLOWED"),
    ] {
        let e = sessions(&s, &token)
            .update_session(update("u"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::PermissionDenied, why)
        );
        let e = sessions(&s, &token)
            .end_session(pb::EndSessionRequest {
                request_id: "end".into(),
                name: session.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = showcase(&s, &token)
            .pin_product(pb::PinProductRequest {
                request_id: "pin".into(),
                name: format!("{}/products/x", session.name),
                pinned: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    }
    let read = sessions(&s, &brand)
        .get_session(pb::GetSessionRequest {
            name: session.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, session, "nothing changed");
    // Bad revenue shares are named field by field.
    let e = sessions(&s, &brand)
        .update_session(pb::UpdateSessionRequest {
            request_id: "shares".into(),
            session: Some(pb::Session {
                name: session.name.clone(),
                revenue_shares: vec![pb::RevenueShare {
                    partner: format!("partners/{OUTSIDER}"),
                    share_bps: 10_000,
                }],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["revenue_shares".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        lianyu_kit::testing::violations(&e),
        ["session.revenue_shares[0].partner"]
    );
    // An order without a payment reference, for nobody, of nothing: every field at once.
    let e = orders(&s, &brand)
        .place_order(pb::PlaceOrderRequest {
            request_id: "bad".into(),
            parent: session.name.clone(),
            order: Some(pb::Order {
                member: "nobody".into(),
                quantity: 0,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        lianyu_kit::testing::violations(&e),
        ["order.member", "order.quantity", "order.payment_reference"]
    );
    assert_eq!(rows(&s, "live", "orders").await, 0);
}

/// Two instances on one database sell one flash sale: 60 members each try twice at once,
/// through both instances, for 40 units with a limit of one — exactly 40 orders, nobody holds
/// two, and the stock reads zero where it lives.
#[tokio::test]
async fn two_instances_sell_one_flash_sale_exactly() {
    let s = mesh("live_two_instances").await;
    let replica = crate::support::second_instance!(s, lianyu_live::mount);
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "BAG-1", 120_000).await;
    let sale = flash_sale(&s, &session.name, &product.name, 40, 1).await;
    let members = enrol_many(&s, BRAND, "1370000", 60).await;
    let token = s.token(BRAND);
    let tries = members.iter().enumerate().flat_map(|(i, m)| {
        [0, 1].map(|t| {
            let channel = if t == 0 {
                s.channel.clone()
            } else {
                replica.clone()
            };
            let mut client = OrderServiceClient::new(InterceptedService::new(
                channel,
                lianyu_kit::client::Bearer::new(&token),
            ));
            let request = buy(&session.name, &sale.name, m, &format!("m{i}-t{t}"), "");
            async move {
                // ABORTED (a concurrent update the service could not retry away, as two writers
                // on one SQLite file meet) is retried with the same request id, as gRPC
                // clients retry it.
                loop {
                    match client.place_order(request.clone()).await {
                        Err(e) if e.code() == Code::Aborted => tokio::task::yield_now().await,
                        answer => break answer,
                    }
                }
            }
        })
    });
    let results = join_all(tries).await;
    let ok: Vec<&pb::Order> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(tonic::Response::get_ref))
        .collect();
    assert_eq!(ok.len(), 40);
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            ["SOLD_OUT", "MEMBER_LIMIT_REACHED"].contains(&reason(e).as_str()),
            "{e:?}"
        );
    }
    let mut buyers: Vec<&str> = ok.iter().map(|o| o.member.as_str()).collect();
    buyers.sort_unstable();
    buyers.dedup();
    assert_eq!(buyers.len(), 40, "nobody holds two");
    let db = s.database("live").await;
    use sea_orm::{ConnectionTrait, Statement};
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT remaining FROM flash_sales".to_owned(),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "remaining").unwrap(), 0);
    assert_eq!(rows(&s, "live", "orders").await, 40);
}

async fn grant_live(s: &TestServer, member: &str, purpose: ConsentPurpose, grant: bool) {
    let mut consent = ConsentServiceClient::new(s.as_token(&s.token(BRAND)));
    if grant {
        consent
            .grant_consent(id::GrantConsentRequest {
                request_id: format!("grant-{member}"),
                member: member.into(),
                grantee: format!("partners/{MALL}"),
                purposes: vec![purpose as i32],
                channel: id::ConsentChannel::MiniProgram as i32,
                policy_version: "2026-10".into(),
                valid_until: None,
            })
            .await
            .unwrap();
    } else {
        consent
            .withdraw_consent(id::WithdrawConsentRequest {
                request_id: format!("withdraw-{member}"),
                member: member.into(),
                grantee: format!("partners/{MALL}"),
                purposes: vec![purpose as i32],
            })
            .await
            .unwrap();
    }
}

async fn listed(s: &TestServer, token: &str, session: &str) -> Vec<String> {
    orders(s, token)
        .list_orders(pb::ListOrdersRequest {
            parent: session.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .orders
        .into_iter()
        .map(|o| o.member)
        .collect()
}

/// The co-host that placed an order names its buyer; the other co-host sees a pseudonym until
/// the member consents to LIVE_PERSONALIZATION with it, and again after a withdrawal; an
/// erasure at the placing partner leaves the order a pseudonym of its own; a third partner
/// sees nothing.
#[tokio::test]
async fn buyers_are_named_only_to_whom_they_consented() {
    let s = mesh("live_buyers").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "PERFUME", 59_900).await;
    let at_brand = enrol(&s, BRAND, "13612345678").await;
    let at_mall = enrol(&s, MALL, "13612345678").await;
    orders(&s, &s.token(BRAND))
        .place_order(pb::PlaceOrderRequest {
            request_id: "o1".into(),
            parent: session.name.clone(),
            order: Some(pb::Order {
                member: at_brand.clone(),
                product: product.name.clone(),
                quantity: 2,
                payment_reference: "pay-1".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let (brand, mall) = (s.token(BRAND), s.token(MALL));
    assert_eq!(
        listed(&s, &brand, &session.name).await,
        vec![at_brand.clone()]
    );
    let hidden = listed(&s, &mall, &session.name).await;
    assert!(hidden[0].starts_with("buyers/"), "{hidden:?}");
    grant_live(&s, &at_brand, ConsentPurpose::LivePersonalization, true).await;
    assert_eq!(
        listed(&s, &mall, &session.name).await,
        vec![at_mall.clone()]
    );
    grant_live(&s, &at_brand, ConsentPurpose::LivePersonalization, false).await;
    assert_eq!(
        listed(&s, &mall, &session.name).await,
        hidden,
        "withdrawn: hidden again"
    );
    assert!(
        listed(&s, &s.token(OUTSIDER), &session.name)
            .await
            .is_empty()
    );
    // Erased at the brand: the brand's view of the order keeps only the pseudonym.
    lianyu_proto::identity::v1::member_service_client::MemberServiceClient::new(s.as_token(&brand))
        .erase_member(id::EraseMemberRequest {
            request_id: "erase".into(),
            member: at_brand.clone(),
            scope: id::ErasureScope::Partner as i32,
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let erased = loop {
        let seen = listed(&s, &brand, &session.name).await;
        if seen != [at_brand.clone()] {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still named: {seen:?}"
        );
        tokio::task::yield_now().await;
    };
    // A pseudonym of the order's own, linked to nothing: not the buyer's pseudonym in the
    // session, which their orders through the mall keep.
    assert!(erased[0].starts_with("buyers/"), "{erased:?}");
    assert_ne!(erased, hidden);
    // The mall sees the buyer's pseudonym until live hears of the erasure, then the order's
    // own — never anything else.
    loop {
        let seen = listed(&s, &mall, &session.name).await;
        if seen == erased {
            break;
        }
        assert_eq!(seen, hidden);
        assert!(std::time::Instant::now() < deadline, "still {seen:?}");
        tokio::task::yield_now().await;
    }
}

/// `member` joins `session` through the app of `token`'s partner; its snapshot is read.
async fn join_identified(
    s: &TestServer,
    token: &str,
    session: &str,
    member: &str,
) -> tonic::Streaming<pb::JoinSessionResponse> {
    let mut watching = viewers(s, token)
        .join_session(pb::JoinSessionRequest {
            session: session.to_owned(),
            member: member.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next_change(&mut watching).await,
        Update::Snapshot(_)
    ));
    watching
}

/// An erasure at a partner reaches live's feed where it is stored: what the member did through
/// that partner — a join, an order — names no one from then on in any copy of the event (the
/// co-hosts' and the whole feed the mesh's services read), at the same sequence, so every
/// cursor stays valid, and links to nothing else the co-hosts see; what the member did through
/// the other co-host is that partner's record and still names them there.
#[tokio::test]
async fn an_erasure_leaves_the_member_in_no_live_feed_event_it_covers() {
    let s = mesh("live_feed_erasure").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "SCARF", 39_900).await;
    let at_brand = enrol(&s, BRAND, "13812345678").await;
    let at_mall = enrol(&s, MALL, "13812345678").await;
    let brand = s.token(BRAND);
    drop(join_identified(&s, &brand, &session.name, &at_brand).await);
    orders(&s, &brand)
        .place_order(buy_product(&session.name, &product.name, &at_brand, "b1"))
        .await
        .unwrap();
    orders(&s, &s.token(MALL))
        .place_order(buy_product(&session.name, &product.name, &at_mall, "m1"))
        .await
        .unwrap();
    let mesh_id = {
        use sea_orm::{ConnectionTrait, Statement};
        let db = s.database("live").await;
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT member_id FROM orders WHERE placed_by = '{BRAND}'"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<String>("", "member_id").unwrap()
    };
    // The join and two orders, each once per co-host and once whole.
    let before = crate::support::stored_events_holding(&s, "live", &mesh_id).await;
    assert_eq!(before.len(), 9, "{before:?}");

    MemberServiceClient::new(s.as_token(&brand))
        .erase_member(id::EraseMemberRequest {
            request_id: "erase".into(),
            member: at_brand.clone(),
            scope: id::ErasureScope::Partner as i32,
        })
        .await
        .unwrap();
    // Live acts on identity's feed as it comes; wait for it. At no moment — before live has
    // heard of the erasure, identity already answering that the brand no longer knows the
    // person — does the brand see its own order by the pseudonym the mall's order is shown by.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let left = loop {
        let shown = listed(&s, &brand, &session.name).await;
        assert_ne!(
            shown[0], shown[1],
            "the brand's erased order is linked: {shown:?}"
        );
        let left = crate::support::stored_events_holding(&s, "live", &mesh_id).await;
        if left.len() < before.len() {
            break left;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still named: {left:?}"
        );
        tokio::task::yield_now().await;
    };
    // Only the mall's order is left naming the member: its three copies, where they were.
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|seq| before.contains(seq)));
    // The brand's feed, read from the start, still shows the join and its order happen at the
    // sequences they always had, naming no one: the join nobody, its order by the pseudonym of
    // its own its order list now shows — not the one the mall's order of the same person is
    // shown by, which would tell the brand what the person it erased bought there.
    let mut feed = stats(&s, &brand)
        .watch_live_events(pb::WatchLiveEventsRequest { after: None })
        .await
        .unwrap()
        .into_inner();
    let mut members = Vec::new();
    let mut sequences = Vec::new();
    while members.len() < 3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), feed.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        use pb::watch_live_events_response::Event;
        let member = match event.event {
            Some(Event::ViewerJoined(j)) => j.member,
            Some(Event::Order(o)) => o.member,
            _ => continue,
        };
        sequences.push(event.cursor.unwrap().sequence);
        members.push(member);
    }
    let listed_now = listed(&s, &brand, &session.name).await;
    assert_eq!(members[0], "", "the join names no one");
    assert!(members[1].starts_with("buyers/"), "{members:?}");
    assert_ne!(members[1], members[2], "the erased order links to nothing");
    assert!(members[2].starts_with("buyers/"), "{members:?}");
    let mut expected = vec![members[1].clone(), members[2].clone()];
    let mut shown = listed_now.clone();
    expected.sort();
    shown.sort();
    assert_eq!(shown, expected, "the feed and the order list agree");
    // The brand's stored reply of its order named the person: purged where it is kept; a
    // replay is refused (the member is gone) and places nothing. The mall's is the mall's,
    // and stays.
    assert_eq!(
        crate::support::stored_reply(&s, "live", BRAND, "b1").await,
        (true, true),
        "purged"
    );
    assert_eq!(
        crate::support::stored_reply(&s, "live", MALL, "m1").await,
        (false, false),
        "kept"
    );
    let e = orders(&s, &brand)
        .place_order(buy_product(&session.name, &product.name, &at_brand, "b1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "MEMBER_ERASED"),
        "{e:?}"
    );
    let again = orders(&s, &s.token(MALL))
        .place_order(buy_product(&session.name, &product.name, &at_mall, "m1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.member, at_mall);
    assert_eq!(rows(&s, "live", "orders").await, 2, "no order placed again");
    assert!(sequences.iter().all(|seq| before.contains(seq)));
}

/// 600 announcements go out while one viewer reads nothing: the viewer reading along gets
/// every one in order; the one that stopped gets, when it reads again, a fresh snapshot in
/// place of what it missed — the server never queued the backlog for it.
#[tokio::test]
async fn a_viewer_that_stops_reading_gets_a_snapshot_while_others_keep_up() {
    let s = mesh("live_slow_viewer").await;
    let session = on_air(&s).await;
    let join = || {
        let mut client = viewers(&s, &s.token(OUTSIDER));
        let request = pb::JoinSessionRequest {
            session: session.name.clone(),
            member: String::new(),
        };
        async move { client.join_session(request).await.unwrap().into_inner() }
    };
    // The slow viewer's connection grants the server little send window (8 KiB), as a phone
    // that stopped reading would: the server must stop writing to it long before 600
    // announcements are out.
    let narrow = tonic::transport::Endpoint::from_shared(s.address.clone())
        .unwrap()
        .initial_stream_window_size(8 * 1024)
        .initial_connection_window_size(8 * 1024)
        .connect()
        .await
        .unwrap();
    let mut slow = ViewerServiceClient::new(InterceptedService::new(
        narrow,
        lianyu_kit::client::Bearer::new(&s.token(OUTSIDER)),
    ))
    .join_session(pb::JoinSessionRequest {
        session: session.name.clone(),
        member: String::new(),
    })
    .await
    .unwrap()
    .into_inner();
    let mut fast = join().await;
    assert!(matches!(next_change(&mut slow).await, Update::Snapshot(_)));
    assert!(matches!(next_change(&mut fast).await, Update::Snapshot(_)));
    const N: usize = 600;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < N {
            if let Update::Announcement(a) = next_change(&mut fast).await {
                seen.push(a.text);
            }
        }
        seen
    });
    let text = "x".repeat(250);
    for wave in (0..N).collect::<Vec<_>>().chunks(20) {
        join_all(wave.iter().map(|i| {
            let mut client = showcase(&s, &s.token(MALL));
            let request = pb::PostAnnouncementRequest {
                request_id: format!("a{i}"),
                parent: session.name.clone(),
                text: format!("{i:04} {text}"),
            };
            async move { client.post_announcement(request).await.unwrap() }
        }))
        .await;
    }
    let seen = reader.await.unwrap();
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        N,
        "the reading viewer got every announcement once"
    );
    let mut announcements = 0;
    loop {
        match next_change(&mut slow).await {
            Update::Announcement(_) => announcements += 1,
            Update::Snapshot(_) => break,
            _ => {}
        }
    }
    assert!(announcements < N, "the backlog was replaced by a snapshot");
}

/// Identity, entitlements and live in one server, as `lianyu up` runs them.
async fn with_entitlements(test: &str) -> TestServer {
    TestServer::start(
        test,
        &["identity", "entitlements", "live"],
        |config| {
            config.limits.max_concurrent_requests = 512;
            config.limits.admission_wait = std::time::Duration::from_secs(10);
        },
        |config, listener| {
            lianyu_kit::server::run_service(
                config,
                listener,
                std::future::pending(),
                async |ctx, mount| {
                    lianyu_identity::mount(ctx, mount).await?;
                    lianyu_entitlements::mount(ctx, mount).await?;
                    lianyu_live::mount(ctx, mount).await
                },
            )
        },
    )
    .await
    .with_partners()
    .await
}

/// The brand opens a coupon drop of `quantity` units of `benefit` in `session`, open now.
async fn open_drop(
    s: &TestServer,
    session: &str,
    benefit: &str,
    quantity: i64,
    rid: &str,
) -> pb::CouponDrop {
    showcase(s, &s.token(BRAND))
        .create_coupon_drop(pb::CreateCouponDropRequest {
            request_id: rid.into(),
            parent: session.into(),
            coupon_drop: Some(pb::CouponDrop {
                benefit: benefit.into(),
                quantity,
                close_time: timestamp(now_millis() + 600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

fn claim(drop: &str, member: &str, rid: &str) -> pb::ClaimCouponDropRequest {
    pb::ClaimCouponDropRequest {
        request_id: rid.into(),
        name: drop.into(),
        member: member.into(),
    }
}

/// A co-host hands out only what it pays for: a drop of another partner's benefit — one it
/// merely honours, one of a partner outside the show, one that does not exist — is refused
/// and no drop is stored, while the issuer and the funder of a benefit may each drop it.
#[tokio::test]
async fn a_coupon_drop_spends_only_a_benefit_the_calling_cohost_issues_or_funds() {
    let s = with_entitlements("live_drop_whose").await;
    let session = on_air(&s).await;
    let honoured = crate::wallets::active(&s, MALL, MALL, BRAND, |b| {
        b.display_name = "mall coupon honoured by the brand".into();
    })
    .await;
    let outside = crate::wallets::active(&s, OUTSIDER, OUTSIDER, OUTSIDER, |b| {
        b.display_name = "outsider coupon".into();
    })
    .await;
    let joint = crate::wallets::active(&s, MALL, BRAND, MALL, |b| {
        b.display_name = "mall issues brand funds".into();
    })
    .await;
    let close_time = timestamp(now_millis() + 600_000);
    let drop = |partner: &'static str, benefit: &str, rid: &str| {
        let mut client = showcase(&s, &s.token(partner));
        let request = pb::CreateCouponDropRequest {
            request_id: rid.into(),
            parent: session.name.clone(),
            coupon_drop: Some(pb::CouponDrop {
                benefit: benefit.into(),
                quantity: 10,
                close_time,
                ..Default::default()
            }),
        };
        async move { client.create_coupon_drop(request).await }
    };
    for (benefit, code, why) in [
        (
            honoured.name.as_str(),
            Code::PermissionDenied,
            "NOT_ISSUER_OR_FUNDER",
        ),
        (outside.name.as_str(), Code::NotFound, "BENEFIT_NOT_FOUND"),
        ("benefits/nope", Code::NotFound, "BENEFIT_NOT_FOUND"),
    ] {
        let e = drop(BRAND, benefit, &format!("d-{benefit}"))
            .await
            .unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{benefit}");
    }
    assert_eq!(rows(&s, "live", "coupon_drops").await, 0, "nothing stored");
    // Without entitlements to ask, nothing is opened: UNAVAILABLE, and no drop stored.
    let alone = mesh("live_drop_whose_alone").await;
    let show = on_air(&alone).await;
    let e = showcase(&alone, &alone.token(BRAND))
        .create_coupon_drop(pb::CreateCouponDropRequest {
            request_id: "d".into(),
            parent: show.name.clone(),
            coupon_drop: Some(pb::CouponDrop {
                benefit: joint.name.clone(),
                quantity: 10,
                close_time: timestamp(now_millis() + 600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unavailable, "ENTITLEMENTS_UNAVAILABLE")
    );
    // It says when to try again, as gRPC's retry policies and AIP-194 clients read it.
    let wait = e
        .get_error_details()
        .retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    let pushback = e.metadata().get("grpc-retry-pushback-ms").unwrap();
    assert_eq!(pushback.to_str().unwrap(), wait.as_millis().to_string());
    assert_eq!(rows(&alone, "live", "coupon_drops").await, 0);
    // The mall issues both; the brand funds the joint one.
    drop(MALL, &honoured.name, "m-1").await.unwrap();
    drop(MALL, &joint.name, "m-2").await.unwrap();
    let opened = drop(BRAND, &joint.name, "b-1").await.unwrap().into_inner();
    assert_eq!(rows(&s, "live", "coupon_drops").await, 3);
    // The session ends: a retry of the brand's drop gets the drop it opened; a new one is
    // refused, and nothing is stored.
    sessions(&s, &s.token(BRAND))
        .end_session(pb::EndSessionRequest {
            request_id: "end".into(),
            name: session.name.clone(),
        })
        .await
        .unwrap();
    let again = drop(BRAND, &joint.name, "b-1").await.unwrap().into_inner();
    assert_eq!(again, opened);
    let e = drop(BRAND, &joint.name, "b-2").await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "SESSION_STATE")
    );
    assert_eq!(rows(&s, "live", "coupon_drops").await, 3);
}

/// A drop opens only what viewers could claim: a DRAFT benefit (its state in the details) and
/// one whose validity ends before the drop opens are refused, nothing stored. Once the issuer
/// pauses a benefit a new drop of it is refused, while a retry of the drop opened before the
/// pause gets that drop — not a second one, not the refusal.
#[tokio::test]
async fn a_coupon_drop_opens_only_a_claimable_benefit_and_its_retry_gets_the_drop_it_opened() {
    use lianyu_proto::entitlements::v1 as ent;
    let s = with_entitlements("live_drop_claimable").await;
    let session = on_air(&s).await;
    let draft = crate::wallets::benefits(&s, BRAND)
        .create_benefit(ent::CreateBenefitRequest {
            request_id: "define-draft".into(),
            benefit: Some(ent::Benefit {
                display_name: "not yet active".into(),
                kind: ent::BenefitKind::ThresholdCoupon as i32,
                value: cny(5_000),
                threshold: cny(30_000),
                budget_units: 100,
                per_member_limit: 1,
                valid_until: timestamp(now_millis() + 7 * 24 * 3_600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let short = crate::wallets::active(&s, BRAND, BRAND, BRAND, |b| {
        b.display_name = "valid one hour".into();
        b.valid_until = timestamp(now_millis() + 3_600_000);
    })
    .await;
    let coupon = crate::wallets::active(&s, BRAND, BRAND, BRAND, |b| {
        b.display_name = "brand coupon".into();
    })
    .await;
    // One clock for every request, so that a retry is the same request.
    let at = now_millis();
    let drop = |benefit: &str, rid: &str, opens_in: i64| {
        let mut client = showcase(&s, &s.token(BRAND));
        let request = pb::CreateCouponDropRequest {
            request_id: rid.into(),
            parent: session.name.clone(),
            coupon_drop: Some(pb::CouponDrop {
                benefit: benefit.into(),
                quantity: 10,
                open_time: timestamp(at + opens_in),
                close_time: timestamp(at + opens_in + 600_000),
                ..Default::default()
            }),
        };
        async move { client.create_coupon_drop(request).await }
    };
    let e = drop(&draft.name, "d-draft", 0).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "BENEFIT_STATE")
    );
    assert_eq!(
        e.get_error_details().error_info().unwrap().metadata["state"],
        "DRAFT"
    );
    let e = drop(&short.name, "d-late", 2 * 3_600_000)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "BENEFIT_NOT_VALID_NOW")
    );
    assert_eq!(rows(&s, "live", "coupon_drops").await, 0, "nothing stored");
    // Inside its validity the short one opens.
    drop(&short.name, "d-soon", 60_000).await.unwrap();
    let opened = drop(&coupon.name, "d-1", 0).await.unwrap().into_inner();
    crate::wallets::benefits(&s, BRAND)
        .pause_benefit(ent::PauseBenefitRequest {
            request_id: "pause".into(),
            name: coupon.name.clone(),
        })
        .await
        .unwrap();
    let again = drop(&coupon.name, "d-1", 0).await.unwrap().into_inner();
    assert_eq!(again, opened, "the retry gets the drop it opened");
    let e = drop(&coupon.name, "d-2", 0).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "BENEFIT_STATE")
    );
    assert_eq!(
        e.get_error_details().error_info().unwrap().metadata["state"],
        "PAUSED"
    );
    assert_eq!(rows(&s, "live", "coupon_drops").await, 2);
}

/// A drop of 5 units of the brand's coupon: 12 viewers claim at once through the brand's app
/// and exactly 5 get a wallet item from entitlements; a retried claim is the same unit; a
/// refusal by entitlements (per-member limit, a partner not party to the benefit) puts the
/// unit back; viewers see the drop open and run out; the figures count the claims.
#[tokio::test]
async fn a_coupon_drop_hands_out_exactly_its_units_through_entitlements() {
    let s = with_entitlements("live_drop").await;
    let session = on_air(&s).await;
    let coupon = crate::wallets::active(&s, BRAND, BRAND, BRAND, |b| {
        b.display_name = "live drop".into();
    })
    .await;
    let mut watching = watch_anonymously(&s, &s.token(BRAND), &session.name).await;
    let brand = s.token(BRAND);
    let drop = open_drop(&s, &session.name, &coupon.name, 5, "drop-1").await;
    let Update::CouponDrop(opened) = next_change(&mut watching).await else {
        panic!("the drop's opening reaches the viewer");
    };
    assert_eq!(
        (opened.name.as_str(), opened.remaining),
        (drop.name.as_str(), 5)
    );

    let members = enrol_many(&s, BRAND, "1350000", 12).await;
    let results = join_all(members.iter().enumerate().map(|(i, m)| {
        let mut client = showcase(&s, &brand);
        let request = claim(&drop.name, m, &format!("c{i}"));
        async move { client.claim_coupon_drop(request).await }
    }))
    .await;
    let granted: Vec<(usize, String)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.as_ref()
                .ok()
                .map(|g| (i, g.get_ref().wallet_item.clone()))
        })
        .collect();
    assert_eq!(granted.len(), 5);
    for (i, item) in &granted {
        assert!(
            item.starts_with(&format!("{}/walletItems/", members[*i])),
            "{item}"
        );
    }
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            (e.code(), reason(e).as_str()),
            (Code::FailedPrecondition, "DROP_EXHAUSTED")
        );
    }
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 5);
    loop {
        if let Update::CouponDrop(d) = next_change(&mut watching).await
            && d.remaining == 0
        {
            break;
        }
    }
    // A retried claim is the same unit.
    let (i, item) = granted[0].clone();
    let again = showcase(&s, &brand)
        .claim_coupon_drop(claim(&drop.name, &members[i], &format!("c{i}")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.wallet_item, item);
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 5);

    // A second drop: a member who already holds the coupon is refused by entitlements' limit,
    // and a partner that is not party to the benefit by entitlements too; both units go back.
    let second = open_drop(&s, &session.name, &coupon.name, 3, "drop-2").await;
    let e = showcase(&s, &brand)
        .claim_coupon_drop(claim(&second.name, &members[i], "again-1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "PER_MEMBER_LIMIT")
    );
    let outsider_member = enrol(&s, OUTSIDER, "13512340000").await;
    let e = showcase(&s, &s.token(OUTSIDER))
        .claim_coupon_drop(claim(&second.name, &outsider_member, "x-1"))
        .await
        .unwrap_err();
    // Entitlements does not show a benefit to a partner that is not party to it.
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "BENEFIT_NOT_FOUND")
    );
    assert_eq!(
        e.get_error_details().error_info().unwrap().domain,
        "lianyu.entitlements"
    );
    let left = showcase(&s, &brand)
        .get_coupon_drop(pb::GetCouponDropRequest {
            name: second.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.remaining, 3, "refused claims put their units back");
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 5);
    let figures = stats(&s, &s.token(MALL))
        .get_session_stats(pb::GetSessionStatsRequest {
            session: session.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(figures.coupons_claimed, 5);
}

/// Claims refused as DROP_EXHAUSTED are answered without a write once the drop is seen claimed
/// out; a unit that a refused claim puts back opens the drop again at once. Twelve viewers who
/// already hold the coupon race for a one-unit drop (whoever takes the unit is refused by
/// entitlements' per-member limit and puts it back, the others meet an exhausted drop); then a
/// viewer without the coupon claims it and gets it.
#[tokio::test]
async fn a_drop_seen_claimed_out_opens_again_when_a_refused_claim_puts_its_unit_back() {
    let s = with_entitlements("live_drop_reopens").await;
    let session = on_air(&s).await;
    let coupon = crate::wallets::active(&s, BRAND, BRAND, BRAND, |b| {
        b.display_name = "reopening drop".into();
    })
    .await;
    let brand = s.token(BRAND);
    let holders = enrol_many(&s, BRAND, "1340000", 12).await;
    let first = open_drop(&s, &session.name, &coupon.name, 12, "all-of-them").await;
    for (i, m) in holders.iter().enumerate() {
        showcase(&s, &brand)
            .claim_coupon_drop(claim(&first.name, m, &format!("first-{i}")))
            .await
            .unwrap();
    }
    let scarce = open_drop(&s, &session.name, &coupon.name, 1, "one-unit").await;
    let mut exhausted_seen = 0;
    for round in 0..20 {
        let answers = join_all(holders.iter().enumerate().map(|(i, m)| {
            let mut client = showcase(&s, &brand);
            let request = claim(&scarce.name, m, &format!("race-{round}-{i}"));
            async move { client.claim_coupon_drop(request).await }
        }))
        .await;
        for answer in answers {
            let e = answer.expect_err("every holder is refused");
            let why = reason(&e);
            assert!(
                ["PER_MEMBER_LIMIT", "DROP_EXHAUSTED"].contains(&why.as_str()),
                "{e:?}"
            );
            exhausted_seen += usize::from(why == "DROP_EXHAUSTED");
        }
        if exhausted_seen > 0 {
            break;
        }
    }
    assert!(exhausted_seen > 0, "some claim met the drop claimed out");
    let newcomer = enrol(&s, BRAND, "13400009999").await;
    let granted = showcase(&s, &brand)
        .claim_coupon_drop(claim(&scarce.name, &newcomer, "newcomer"))
        .await
        .expect("the unit put back is claimed at once")
        .into_inner();
    assert!(granted.wallet_item.starts_with(&newcomer));
    assert_eq!(granted.remaining, 0);
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 13);
}

/// A viewer watching through another replica gets what a co-host does through this one: the
/// replicas share the session's log through the database, not memory.
#[tokio::test]
async fn a_viewer_on_another_replica_gets_every_change() {
    let s = mesh("live_replica_viewer").await;
    let replica = crate::support::second_instance!(s, lianyu_live::mount);
    let session = on_air(&s).await;
    let mut elsewhere = join_anonymously(
        ViewerServiceClient::new(InterceptedService::new(
            replica,
            lianyu_kit::client::Bearer::new(&s.token(OUTSIDER)),
        )),
        &session.name,
    )
    .await;
    let product = add_product(&s, &session.name, "SCARF", 39_900).await;
    showcase(&s, &s.token(MALL))
        .pin_product(pb::PinProductRequest {
            request_id: "pin".into(),
            name: product.name.clone(),
            pinned: true,
        })
        .await
        .unwrap();
    for i in 0..5 {
        showcase(&s, &s.token(MALL))
            .post_announcement(pb::PostAnnouncementRequest {
                request_id: format!("say-{i}"),
                parent: session.name.clone(),
                text: format!("note {i}"),
            })
            .await
            .unwrap();
    }
    let got = next_change(&mut elsewhere).await;
    let Update::PinnedProduct(pinned) = got else {
        panic!("the pin reaches the other replica's viewer first, not {got:?}");
    };
    assert_eq!(pinned.name, product.name);
    for i in 0..5 {
        let Update::Announcement(said) = next_change(&mut elsewhere).await else {
            panic!("announcement {i} in order");
        };
        assert_eq!(said.text, format!("note {i}"));
    }
}

/// The live feed and the figures go to co-hosts only: the brand follows its session from a
/// cursor (state, an identified join, an order naming its own member) and resumes after it;
/// the outsider's feed holds nothing of it; a store token is refused the partner-wide feed.
#[tokio::test]
async fn the_live_feed_and_figures_stream_to_co_hosts_only() {
    let s = mesh("live_feed").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "RING", 99_900).await;
    let member = enrol(&s, BRAND, "13712345678").await;
    let brand = s.token(BRAND);
    let watching = join_identified(&s, &brand, &session.name, &member).await;
    // An unknown member of the calling partner is refused.
    let e = viewers(&s, &brand)
        .join_session(pb::JoinSessionRequest {
            session: session.name.clone(),
            member: "members/nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "MEMBER_NOT_FOUND");
    orders(&s, &brand)
        .place_order(buy_product(&session.name, &product.name, &member, "ring"))
        .await
        .unwrap();
    let mut feed = stats(&s, &brand)
        .watch_live_events(pb::WatchLiveEventsRequest { after: None })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut last = 0;
    while seen.len() < 3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), feed.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        last = event.cursor.unwrap().sequence;
        seen.push(event.event.unwrap());
    }
    use pb::watch_live_events_response::Event;
    assert!(matches!(&seen[0], Event::Session(s) if s.state == pb::SessionState::Live as i32));
    assert!(matches!(&seen[1], Event::ViewerJoined(j) if j.member == member));
    assert!(matches!(&seen[2], Event::Order(o) if o.member == member && o.product == product.name));
    // The member still watching is counted now (each replica reports its viewers every few
    // seconds), and in the peak.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now = stats(&s, &s.token(MALL))
            .get_session_stats(pb::GetSessionStatsRequest {
                session: session.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if now.viewers_now == 1 && now.viewers_peak >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not counted: {now:?}");
        tokio::task::yield_now().await;
    }
    // Resuming after the last cursor gives what came after, not the same again.
    sessions(&s, &brand)
        .end_session(pb::EndSessionRequest {
            request_id: "end".into(),
            name: session.name.clone(),
        })
        .await
        .unwrap();
    let mut resumed = stats(&s, &brand)
        .watch_live_events(pb::WatchLiveEventsRequest {
            after: Some(lianyu_proto::common::v1::FeedCursor { sequence: last }),
        })
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), resumed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(next.event, Some(Event::Session(s)) if s.state == pb::SessionState::Ended as i32)
    );
    // The outsider's feed holds only its own sessions: the first event it reads is its own
    // show going live, nothing of the brand's.
    let outsider = s.token(OUTSIDER);
    let own = sessions(&s, &outsider)
        .create_session(pb::CreateSessionRequest {
            request_id: "own".into(),
            session: Some(pb::Session {
                title: "Brand C solo".into(),
                scheduled_start_time: timestamp(now_millis() + 60_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    sessions(&s, &outsider)
        .start_session(pb::StartSessionRequest {
            request_id: "own-start".into(),
            name: own.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut theirs = stats(&s, &outsider)
        .watch_live_events(pb::WatchLiveEventsRequest { after: None })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), theirs.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first.event, Some(Event::Session(s)) if s.name == own.name));
    let e = stats(&s, &s.store_token(MALL, "sh01"))
        .watch_live_events(pb::WatchLiveEventsRequest { after: None })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STORE_TOKEN_NOT_ALLOWED");
    // The figures stream: the first reading at once, with the order in it.
    let mut figures = stats(&s, &s.token(MALL))
        .watch_session_stats(pb::WatchSessionStatsRequest {
            session: session.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = figures.message().await.unwrap().unwrap().stats.unwrap();
    assert_eq!((first.orders, first.viewers_total), (1, 1));
    drop(watching);
}

/// A co-host's dashboard counts a viewer the moment they join, anonymous ones too — not only
/// after the replica's next presence report (every two seconds): the retailer who asks right
/// after a viewer's snapshot arrived sees them watching and in the distinct viewers.
#[tokio::test]
async fn the_figures_count_a_viewer_as_soon_as_they_join() {
    let s = mesh("live_viewers_counted_at_once").await;
    let session = on_air(&s).await;
    let figures = || async {
        stats(&s, &s.token(MALL))
            .get_session_stats(pb::GetSessionStatsRequest {
                session: session.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let before = figures().await;
    assert_eq!((before.viewers_now, before.viewers_total), (0, 0));
    let brand = s.token(BRAND);
    let join = || watch_anonymously(&s, &brand, &session.name);
    let first = join().await;
    let seen = figures().await;
    assert_eq!((seen.viewers_now, seen.viewers_total), (1, 1), "{seen:?}");
    let second = join().await;
    let seen = figures().await;
    assert_eq!((seen.viewers_now, seen.viewers_total), (2, 2), "{seen:?}");
    assert!(seen.viewers_peak >= 2, "{seen:?}");
    drop((first, second));
}

/// What an assisting partner and an outsider can and cannot do to a show, each refusal read
/// back: the assistant pins and announces but neither changes the session nor adds products;
/// the outsider cancels no one's order, opens no sale, and lists only orders it placed.
#[tokio::test]
async fn assistants_pin_and_announce_and_outsiders_change_nothing() {
    let s = mesh("live_assistants").await;
    let session = on_air(&s).await;
    let brand = s.token(BRAND);
    let outsider = s.token(OUTSIDER);
    let product = add_product(&s, &session.name, "WATCH", 199_900).await;
    let member = enrol(&s, BRAND, "13812345670").await;
    let order = orders(&s, &brand)
        .place_order(buy_product(&session.name, &product.name, &member, "watch"))
        .await
        .unwrap()
        .into_inner();

    // Before it assists, the outsider may not pin.
    let pin = |rid: &str| pb::PinProductRequest {
        request_id: rid.into(),
        name: product.name.clone(),
        pinned: true,
    };
    let e = showcase(&s, &outsider)
        .pin_product(pin("p0"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "HOST_OR_ASSISTANT_ONLY");
    assert_eq!(rows(&s, "live", "pin_markers").await, 0);
    sessions(&s, &brand)
        .update_session(pb::UpdateSessionRequest {
            request_id: "assist".into(),
            session: Some(pb::Session {
                name: session.name.clone(),
                assistants: vec![format!("partners/{OUTSIDER}")],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["assistants".into()],
            }),
        })
        .await
        .unwrap();
    // Now it pins and announces…
    let pinned = showcase(&s, &outsider)
        .pin_product(pin("p1"))
        .await
        .unwrap()
        .into_inner();
    assert!(pinned.pinned);
    showcase(&s, &outsider)
        .post_announcement(pb::PostAnnouncementRequest {
            request_id: "say".into(),
            parent: session.name.clone(),
            text: "Two minutes left on the watch!".into(),
        })
        .await
        .unwrap();
    // …but changes nothing else.
    let e = sessions(&s, &outsider)
        .update_session(pb::UpdateSessionRequest {
            request_id: "title".into(),
            session: Some(pb::Session {
                name: session.name.clone(),
                title: "mine now".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["title".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "HOST_ONLY");
    let e = showcase(&s, &outsider)
        .add_product(pb::AddProductRequest {
            request_id: "fake".into(),
            parent: session.name.clone(),
            product: Some(pb::Product {
                sku: "FAKE".into(),
                title: "fake".into(),
                price: cny(1),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "HOST_ONLY");
    let e = showcase(&s, &outsider)
        .create_flash_sale(pb::CreateFlashSaleRequest {
            request_id: "sale".into(),
            parent: session.name.clone(),
            flash_sale: Some(pb::FlashSale {
                product: product.name.clone(),
                sale_price: cny(1),
                total_stock: 1_000,
                per_member_limit: 1,
                end_time: timestamp(now_millis() + 60_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "HOST_ONLY");
    assert_eq!(rows(&s, "live", "products").await, 1);
    assert_eq!(rows(&s, "live", "flash_sales").await, 0);
    let seen = sessions(&s, &outsider)
        .get_session(pb::GetSessionRequest {
            name: session.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.title, session.title);
    assert!(
        seen.public_view,
        "an assistant still sees the public view only"
    );

    // The outsider cannot cancel the brand's order (it looks absent), nor list it.
    let e = orders(&s, &outsider)
        .cancel_order(pb::CancelOrderRequest {
            request_id: "cancel".into(),
            name: order.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "ORDER_NOT_FOUND")
    );
    assert!(listed(&s, &outsider, &session.name).await.is_empty());
    let still = orders(&s, &brand)
        .list_orders(pb::ListOrdersRequest {
            parent: session.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(still.len(), 1);
    assert_eq!(still[0].state, pb::OrderState::Placed as i32);
    // The operator reads and changes no session.
    let e = orders(&s, &s.operator_token())
        .cancel_order(pb::CancelOrderRequest {
            request_id: "op".into(),
            name: order.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

pub(crate) fn buy_product(
    session: &str,
    product: &str,
    member: &str,
    rid: &str,
) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        request_id: rid.into(),
        parent: session.into(),
        order: Some(pb::Order {
            member: member.into(),
            product: product.into(),
            quantity: 1,
            payment_reference: format!("pay-{rid}"),
            ..Default::default()
        }),
    }
}

/// A store token acts only within its store: the hosting store lists the session, its
/// orders and figures; another store of the same mall sees none of them and places no order
/// there (nothing written); a brand store token sees only its partner's orders credited to it.
#[tokio::test]
async fn store_tokens_act_only_within_their_store() {
    let s = mesh("live_store_tokens").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "BELT", 59_900).await;
    let member = enrol(&s, BRAND, "13912345601").await;
    orders(&s, &s.token(BRAND))
        .place_order(buy_product(&session.name, &product.name, &member, "belt"))
        .await
        .unwrap();
    let (here, there) = (s.store_token(MALL, "sh01"), s.store_token(MALL, "sh02"));
    let listed_sessions = |token: String| {
        let mut client = sessions(&s, &token);
        async move {
            client
                .list_sessions(pb::ListSessionsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .sessions
                .into_iter()
                .map(|x| x.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed_sessions(here.clone()).await,
        vec![session.name.clone()]
    );
    assert!(listed_sessions(there.clone()).await.is_empty());
    assert_eq!(listed(&s, &here, &session.name).await.len(), 1);
    assert!(listed(&s, &there, &session.name).await.is_empty());
    assert!(
        listed(&s, &s.store_token(BRAND, "c1"), &session.name)
            .await
            .is_empty(),
        "the brand's order is credited to the mall's store, not the brand's counter"
    );
    stats(&s, &here)
        .get_session_stats(pb::GetSessionStatsRequest {
            session: session.name.clone(),
        })
        .await
        .unwrap();
    let e = stats(&s, &there)
        .get_session_stats(pb::GetSessionStatsRequest {
            session: session.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mall_member = enrol(&s, MALL, "13912345602").await;
    let e = orders(&s, &there)
        .place_order(buy_product(
            &session.name,
            &product.name,
            &mall_member,
            "sh02",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::PermissionDenied, "STORE_TOKEN_NOT_ALLOWED")
    );
    assert_eq!(rows(&s, "live", "orders").await, 1);
}

/// A flash-sale order as each kind of caller would place it. A partner that is not a co-host
/// (its own app's viewer) buys for its own member and sees only its own order; naming a member
/// it does not know, ordering through another store's token, as the operator, without a token,
/// or naming a sale under another session takes nothing — the stock is read back after each.
#[tokio::test]
async fn a_flash_sale_order_as_every_kind_of_caller() {
    let s = mesh("live_sale_callers").await;
    let session = on_air(&s).await;
    let lipstick = add_product(&s, &session.name, "LIP-777", 29_900).await;
    let sale = flash_sale(&s, &session.name, &lipstick.name, 5, 1).await;
    let stock = || {
        let mut client = showcase(&s, &s.token(BRAND));
        let name = sale.name.clone();
        async move {
            client
                .get_flash_sale(pb::GetFlashSaleRequest { name })
                .await
                .unwrap()
                .into_inner()
                .remaining_stock
        }
    };
    let brand_member = enrol(&s, BRAND, "13712345670").await;
    let outsider_member = enrol(&s, OUTSIDER, "13712345671").await;
    let mall_member = enrol(&s, MALL, "13712345672").await;

    // Refusals first, each leaving the stock as it was.
    let refusals = [
        (
            s.token(OUTSIDER),
            buy(&session.name, &sale.name, &brand_member, "x-theirs", ""),
        ),
        (
            s.store_token(MALL, "sh02"),
            buy(&session.name, &sale.name, &mall_member, "x-store", ""),
        ),
        (
            s.operator_token(),
            buy(&session.name, &sale.name, &brand_member, "x-op", ""),
        ),
        (
            s.token(BRAND),
            buy(
                &session.name,
                &sale.name.replace(&session.name, "sessions/another"),
                &brand_member,
                "x-other-session",
                "",
            ),
        ),
    ];
    let mut codes = Vec::new();
    for (token, request) in refusals {
        let e = orders(&s, &token).place_order(request).await.unwrap_err();
        codes.push((e.code(), reason(&e)));
        assert_eq!(stock().await, 5, "a refused order took nothing: {e:?}");
    }
    assert_eq!(
        codes[1],
        (Code::PermissionDenied, "STORE_TOKEN_NOT_ALLOWED".into())
    );
    assert_eq!(codes[2].0, Code::NotFound, "the operator sees no session");
    assert_eq!(codes[3].0, Code::InvalidArgument);
    assert_eq!(
        codes[0],
        (Code::NotFound, "MEMBER_NOT_FOUND".into()),
        "another partner's member id is not the outsider's to name"
    );
    let mut anonymous = OrderServiceClient::new(s.channel.clone());
    let e = anonymous
        .place_order(buy(&session.name, &sale.name, &brand_member, "x-none", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(stock().await, 5);
    assert_eq!(rows(&s, "live", "orders").await, 0);

    // The outsider buys for its own member: it is sold, and the outsider sees that order only.
    let bought = orders(&s, &s.token(OUTSIDER))
        .place_order(buy(&session.name, &sale.name, &outsider_member, "o-1", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bought.member, outsider_member);
    assert_eq!(stock().await, 4);
    orders(&s, &s.token(BRAND))
        .place_order(buy(&session.name, &sale.name, &brand_member, "b-1", ""))
        .await
        .unwrap();
    assert_eq!(
        listed(&s, &s.token(OUTSIDER), &session.name).await,
        vec![outsider_member.clone()],
        "the outsider lists its own order, not the brand's"
    );
}

/// Orders read their session in shared reads during a burst; none may be answered from a read
/// begun before what its caller has seen committed. While buyers keep placing orders, the
/// brand adds a guide; every order placed with the new guide's share code after that update
/// returned is accepted and credited to that guide — none is refused as an unknown code.
#[tokio::test]
async fn an_order_placed_after_a_guide_is_added_sees_the_guide_during_a_burst() {
    let s = mesh("live_guide_during_burst").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "TEE-1", 19_900).await;
    let members = enrol_many(&s, BRAND, "1390000", 40).await;
    let token = s.token(BRAND);
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Background buyers: each keeps an order in flight until the checks are done.
    let background: Vec<_> = members[..20]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut client = orders(&s, &token);
            let (session, product, member) =
                (session.name.clone(), product.name.clone(), m.clone());
            let busy = busy.clone();
            tokio::spawn(async move {
                let mut placed = 0;
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    let rid = format!("bg-{i}-{placed}");
                    client
                        .place_order(buy_product(&session, &product, &member, &rid))
                        .await
                        .expect("a background order is placed");
                    placed += 1;
                }
                placed
            })
        })
        .collect();
    let updated = sessions(&s, &token)
        .update_session(pb::UpdateSessionRequest {
            request_id: "add-wu".into(),
            session: Some(pb::Session {
                name: session.name.clone(),
                guides: vec![
                    session.guides[0].clone(),
                    pb::Guide {
                        guide_id: "wu".into(),
                        display_name: "Wu".into(),
                        partner: format!("partners/{MALL}"),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["guides".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let wu = updated
        .guides
        .iter()
        .find(|g| g.guide_id == "wu")
        .expect("the new guide is on the session");
    let checks = members[20..].iter().enumerate().map(|(i, m)| {
        let mut client = orders(&s, &token);
        let mut request = buy_product(&session.name, &product.name, m, &format!("wu-{i}"));
        if let Some(order) = request.order.as_mut() {
            order.share_code = wu.share_code.clone();
        }
        async move { client.place_order(request).await }
    });
    let checked = join_all(checks).await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut background_orders = 0;
    for b in background {
        background_orders += b.await.unwrap();
    }
    assert!(background_orders > 0, "the burst ran");
    for answer in checked {
        let order = answer.expect("an order with the new guide's code is accepted");
        assert_eq!(
            order.into_inner().guide,
            format!("{}/guides/{MALL}:wu", session.name)
        );
    }
}

/// A show goes out from, and its guides sell through, stores identity knows and their partner
/// keeps open: a typo'd hosting store is NOT_FOUND / STORE_NOT_FOUND, a guide at a closed
/// store FAILED_PRECONDITION / STORE_CLOSED, and no session is stored; a co-host's update that
/// moves a guide to an unknown store is refused and the guide stays where it was.
#[tokio::test]
async fn a_show_names_only_stores_that_are_registered_and_open() {
    let s = mesh("live_stores_open").await;
    crate::wallets::close_store(&s, MALL, "sh02").await;
    let guide = |store: &str| pb::Guide {
        guide_id: "lin".into(),
        display_name: "Lin".into(),
        partner: format!("partners/{MALL}"),
        store: store.into(),
        ..Default::default()
    };
    let draft = |store: &str, guide_store: &str| pb::CreateSessionRequest {
        request_id: format!("schedule-{store}-{guide_store}"),
        session: Some(pb::Session {
            title: "Double 12 at the flagship".into(),
            hosts: vec![format!("partners/{MALL}")],
            store: store.into(),
            stream_url: "https://cdn.example/live/1.m3u8".into(),
            scheduled_start_time: timestamp(now_millis() + 60_000),
            guides: vec![guide(guide_store)],
            ..Default::default()
        }),
    };
    let sh01 = format!("partners/{MALL}/stores/sh01");
    for (request, code, why) in [
        (
            draft(&format!("partners/{MALL}/stores/sh0l"), ""),
            Code::NotFound,
            "STORE_NOT_FOUND",
        ),
        (
            draft(&sh01, &format!("partners/{MALL}/stores/sh02")),
            Code::FailedPrecondition,
            "STORE_CLOSED",
        ),
    ] {
        let e = sessions(&s, &s.token(BRAND))
            .create_session(request)
            .await
            .unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why));
    }
    assert_eq!(rows(&s, "live", "sessions").await, 0, "nothing stored");
    let session = on_air(&s).await;
    let e = sessions(&s, &s.token(MALL))
        .update_session(pb::UpdateSessionRequest {
            request_id: "move-lin".into(),
            session: Some(pb::Session {
                name: session.name.clone(),
                guides: vec![guide(&format!("partners/{MALL}/stores/nowhere"))],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["guides".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "STORE_NOT_FOUND")
    );
    let read = sessions(&s, &s.token(MALL))
        .get_session(pb::GetSessionRequest {
            name: session.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.guides, session.guides, "the guide stays where it was");
}

/// Every item of a list, read a page at a time: `page(token)` reads the page at `token`.
async fn every_page<T, F, P>(mut page: F) -> Result<Vec<T>, tonic::Status>
where
    F: FnMut(String) -> P,
    P: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let (mut items, mut token) = (Vec::new(), String::new());
    loop {
        let (more, next) = page(token).await?;
        items.extend(more);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

/// A session's flash sales and coupon drops — every one, scheduled, open or sold out, in the
/// order they were opened, page by page, with their stock — are listed to whoever may see the
/// session (its co-hosts, its store's token, any partner once the session is public) and to
/// no one else; a bad request names its field.
#[tokio::test]
async fn a_session_lists_its_flash_sales_and_drops_to_whoever_may_see_it() {
    let s = with_entitlements("live_list_sales_drops").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "LIP", 29_900).await;
    let sold_out = flash_sale(&s, &session.name, &product.name, 1, 1).await;
    let open = flash_sale(&s, &session.name, &product.name, 5, 2).await;
    let later = showcase(&s, &s.token(BRAND))
        .create_flash_sale(pb::CreateFlashSaleRequest {
            request_id: "sale-later".into(),
            parent: session.name.clone(),
            flash_sale: Some(pb::FlashSale {
                product: product.name.clone(),
                sale_price: cny(19_900),
                total_stock: 3,
                per_member_limit: 1,
                start_time: timestamp(now_millis() + 300_000),
                end_time: timestamp(now_millis() + 600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let member = enrol(&s, BRAND, "13912345671").await;
    orders(&s, &s.token(BRAND))
        .place_order(buy(&session.name, &sold_out.name, &member, "buy-last", ""))
        .await
        .unwrap();
    let coupon = crate::wallets::active(&s, BRAND, BRAND, BRAND, |b| {
        b.display_name = "drop coupon".into();
    })
    .await;
    let drops = [
        open_drop(&s, &session.name, &coupon.name, 10, "drop-1").await,
        open_drop(&s, &session.name, &coupon.name, 20, "drop-2").await,
    ];

    // Another session, scheduled, whose invited host has not accepted yet, with a sale of
    // its own: never in the first session's list.
    let pending = sessions(&s, &s.token(BRAND))
        .create_session(pb::CreateSessionRequest {
            request_id: "pending".into(),
            session: Some(pb::Session {
                title: "Not yet agreed".into(),
                hosts: vec![format!("partners/{MALL}")],
                store: format!("partners/{MALL}/stores/sh01"),
                scheduled_start_time: timestamp(now_millis() + 86_400_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let other_product = add_product(&s, &pending.name, "GLOSS", 19_900).await;
    let elsewhere = flash_sale(&s, &pending.name, &other_product.name, 2, 1).await;

    let sales_as = |token: String, parent: String, page_size: i32| {
        let client = showcase(&s, &token);
        every_page(move |page_token| {
            let (mut client, parent) = (client.clone(), parent.clone());
            async move {
                let page = client
                    .list_flash_sales(pb::ListFlashSalesRequest {
                        parent,
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((page.flash_sales, page.next_page_token))
            }
        })
    };
    let drops_as = |token: String, parent: String, page_size: i32| {
        let client = showcase(&s, &token);
        every_page(move |page_token| {
            let (mut client, parent) = (client.clone(), parent.clone());
            async move {
                let page = client
                    .list_coupon_drops(pb::ListCouponDropsRequest {
                        parent,
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((page.coupon_drops, page.next_page_token))
            }
        })
    };
    let stock = |sales: Vec<pb::FlashSale>| {
        sales
            .into_iter()
            .map(|x| (x.name, x.remaining_stock))
            .collect::<Vec<_>>()
    };
    let expected_sales = vec![
        (sold_out.name.clone(), 0),
        (open.name.clone(), 5),
        (later.name.clone(), 3),
    ];
    let expected_drops: Vec<_> = drops.iter().map(|d| (d.name.clone(), d.quantity)).collect();
    let units = |drops: Vec<pb::CouponDrop>| {
        drops
            .into_iter()
            .map(|d| (d.name, d.remaining))
            .collect::<Vec<_>>()
    };
    // Whoever may see the session, a page at a time or all at once: the same list.
    for (who, token) in [
        ("the brand", s.token(BRAND)),
        ("the mall", s.token(MALL)),
        ("the show's store", s.store_token(MALL, "sh01")),
        ("a partner outside the show", s.token(OUTSIDER)),
    ] {
        for page_size in [1, 0] {
            let sales = sales_as(token.clone(), session.name.clone(), page_size)
                .await
                .unwrap_or_else(|e| panic!("{who}: {e:?}"));
            assert_eq!(stock(sales), expected_sales, "{who}, pages of {page_size}");
            let listed = drops_as(token.clone(), session.name.clone(), page_size)
                .await
                .unwrap_or_else(|e| panic!("{who}: {e:?}"));
            assert_eq!(units(listed), expected_drops, "{who}, pages of {page_size}");
        }
    }

    // A session whose invited host has not accepted is not public yet: only its hosts list
    // what it shows; the operator reads no session.
    assert_eq!(
        stock(
            sales_as(s.token(BRAND), pending.name.clone(), 0)
                .await
                .unwrap()
        ),
        vec![(elsewhere.name.clone(), 2)]
    );
    for (who, token) in [
        ("a partner outside the show", s.token(OUTSIDER)),
        ("the operator", s.operator_token()),
    ] {
        let e = sales_as(token.clone(), pending.name.clone(), 0)
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::NotFound, "SESSION_NOT_FOUND"),
            "{who}"
        );
        let e = drops_as(token, pending.name.clone(), 0).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{who}");
    }

    // Bad requests name their field.
    let brand = s.token(BRAND);
    for (parent, page_size, token, field) in [
        ("sessions/", 0, "", "parent"),
        ("partners/brand-a", 0, "", "parent"),
        (session.name.as_str(), -1, "", "page_size"),
        (session.name.as_str(), 0, "not-a-token", "page_token"),
    ] {
        let e = showcase(&s, &brand)
            .list_flash_sales(pb::ListFlashSalesRequest {
                parent: parent.into(),
                page_size,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "{parent} {page_size} {token}"
        );
        assert_eq!(lianyu_kit::testing::violations(&e), vec![field.to_owned()]);
        let e = showcase(&s, &brand)
            .list_coupon_drops(pb::ListCouponDropsRequest {
                parent: parent.into(),
                page_size,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(lianyu_kit::testing::violations(&e), vec![field.to_owned()]);
    }
    // A page token of one session's list does not page another's.
    let first_page = showcase(&s, &brand)
        .list_flash_sales(pb::ListFlashSalesRequest {
            parent: session.name.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let e = showcase(&s, &brand)
        .list_flash_sales(pb::ListFlashSalesRequest {
            parent: pending.name.clone(),
            page_size: 1,
            page_token: first_page.next_page_token,
        })
        .await
        .unwrap_err();
    assert_eq!(lianyu_kit::testing::violations(&e), vec!["page_token"]);
}

/// An order is read back, with its state now, by whoever lists it — and exactly as the list
/// shows it, buyer's name or pseudonym included; to anyone else (another store, a partner
/// that did not place it, the operator, a name under another session) it does not exist.
#[tokio::test]
async fn an_order_is_read_back_as_its_list_shows_it_and_by_no_one_else() {
    let s = mesh("live_get_order").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "SCARF", 39_900).await;
    let brand_member = enrol(&s, BRAND, "13712345680").await;
    let outsider_member = enrol(&s, OUTSIDER, "13712345681").await;
    let by_brand = orders(&s, &s.token(BRAND))
        .place_order(buy_product(
            &session.name,
            &product.name,
            &brand_member,
            "g-1",
        ))
        .await
        .unwrap()
        .into_inner();
    let by_outsider = orders(&s, &s.token(OUTSIDER))
        .place_order(buy_product(
            &session.name,
            &product.name,
            &outsider_member,
            "g-2",
        ))
        .await
        .unwrap()
        .into_inner();
    let get = |token: String, name: String| {
        let mut client = orders(&s, &token);
        async move {
            client
                .get_order(pb::GetOrderRequest { name })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let list = |token: String| {
        let mut client = orders(&s, &token);
        let parent = session.name.clone();
        async move {
            client
                .list_orders(pb::ListOrdersRequest {
                    parent,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .orders
        }
    };
    let callers = [
        ("the brand", s.token(BRAND)),
        ("the mall", s.token(MALL)),
        ("the show's store", s.store_token(MALL, "sh01")),
        ("another store of the mall", s.store_token(MALL, "sh02")),
        ("a partner outside the show", s.token(OUTSIDER)),
    ];
    let mut seen = Vec::new();
    for (who, token) in &callers {
        let listed = list(token.clone()).await;
        for order in [&by_brand, &by_outsider] {
            match get(token.clone(), order.name.clone()).await {
                Ok(read) => {
                    let in_list = listed.iter().find(|o| o.name == order.name);
                    assert_eq!(Some(&read), in_list, "{who} reads {} as listed", order.name);
                    seen.push((*who, order.name.clone(), read.member));
                }
                Err(e) => {
                    assert_eq!(
                        (e.code(), reason(&e).as_str()),
                        (Code::NotFound, "ORDER_NOT_FOUND"),
                        "{who}"
                    );
                    assert!(
                        listed.iter().all(|o| o.name != order.name),
                        "{who} lists what it cannot read"
                    );
                }
            }
        }
    }
    let hidden = |member: &str| member.starts_with("buyers/");
    let seen: Vec<_> = seen
        .iter()
        .map(|(who, name, member)| (*who, name == &by_brand.name, hidden(member)))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("the brand", true, false),
            ("the brand", false, true),
            ("the mall", true, true),
            ("the mall", false, true),
            ("the show's store", true, true),
            ("the show's store", false, true),
            ("a partner outside the show", false, false),
        ],
        "(reader, the brand's order?, buyer hidden?)"
    );
    assert_eq!(
        get(s.token(OUTSIDER), by_outsider.name.clone())
            .await
            .unwrap()
            .member,
        outsider_member,
        "the partner that placed it names its own member"
    );

    // Its state now: cancelled by the brand, read so by the outsider that placed it.
    orders(&s, &s.token(BRAND))
        .cancel_order(pb::CancelOrderRequest {
            request_id: "g-cancel".into(),
            name: by_outsider.name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        get(s.token(OUTSIDER), by_outsider.name.clone())
            .await
            .unwrap()
            .state,
        pb::OrderState::Cancelled as i32
    );

    // The operator reads no session's orders; a name under another session, none; no token,
    // nothing; a bad name names its field.
    let e = get(s.operator_token(), by_brand.name.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ORDER_NOT_FOUND");
    let elsewhere = by_brand
        .name
        .replace(&session.name, "sessions/0123456789abcdef");
    let e = get(s.token(BRAND), elsewhere).await.unwrap_err();
    assert_eq!(reason(&e), "ORDER_NOT_FOUND");
    let e = OrderServiceClient::new(s.channel.clone())
        .get_order(pb::GetOrderRequest {
            name: by_brand.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    for name in ["", "sessions/x", "orders/x", "sessions/x/orders/"] {
        let e = get(s.token(BRAND), name.into()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name:?}");
        assert_eq!(
            lianyu_kit::testing::violations(&e),
            vec!["name"],
            "{name:?}"
        );
    }
}

/// A co-host stops a flash sale and a coupon drop before their time (a wrong price, say): from
/// then on no order takes stock and no claim takes a unit, what was sold stands, viewers are
/// told and their snapshots no longer show them; a sale not yet open never opens; ending
/// twice is refused naming the state, a retry gets the first answer, and no one but a co-host
/// can do it — each refusal changing nothing.
#[tokio::test]
async fn a_co_host_ends_a_sale_and_a_drop_early_and_nothing_is_taken_after() {
    let s = with_entitlements("live_end_early").await;
    let at = |t: &Option<prost_types::Timestamp>| lianyu_kit::time::millis(t.as_ref().unwrap());
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "LIP-END", 29_900).await;
    let sale = flash_sale(&s, &session.name, &product.name, 5, 1).await;
    let members = enrol_many(&s, BRAND, "1370000", 3).await;
    let brand = s.token(BRAND);
    let placed = orders(&s, &brand)
        .place_order(buy(&session.name, &sale.name, &members[0], "before", ""))
        .await
        .unwrap()
        .into_inner();
    let mut watching = watch_anonymously(&s, &brand, &session.name).await;
    let read_sale = |name: String| {
        let mut client = showcase(&s, &s.token(BRAND));
        async move {
            client
                .get_flash_sale(pb::GetFlashSaleRequest { name })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let end = |token: String, name: String, rid: &str| {
        let mut client = showcase(&s, &token);
        let request = pb::EndFlashSaleRequest {
            request_id: rid.into(),
            name,
        };
        async move { client.end_flash_sale(request).await }
    };

    // Refused, and the sale is as it was.
    let before = read_sale(sale.name.clone()).await;
    for (who, token, expected) in [
        (
            "a partner outside the show",
            s.token(OUTSIDER),
            (Code::PermissionDenied, "HOST_ONLY"),
        ),
        (
            "another store of the mall",
            s.store_token(MALL, "sh02"),
            (Code::PermissionDenied, "STORE_TOKEN_NOT_ALLOWED"),
        ),
        (
            "the operator",
            s.operator_token(),
            (Code::NotFound, "SESSION_NOT_FOUND"),
        ),
    ] {
        let e = end(token, sale.name.clone(), "x").await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), expected, "{who}");
        assert_eq!(read_sale(sale.name.clone()).await, before, "{who}");
    }
    let e = end(brand.clone(), format!("{}/flashSales/", session.name), "x")
        .await
        .unwrap_err();
    assert_eq!(lianyu_kit::testing::violations(&e), vec!["name"]);
    let e = end(
        brand.clone(),
        format!("{}/flashSales/nothing", session.name),
        "x",
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&e), "FLASH_SALE_NOT_FOUND");

    // The mall (a co-host, not the one that opened it) ends it.
    let ended = end(s.token(MALL), sale.name.clone(), "end")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.remaining_stock, 4);
    assert!(at(&ended.end_time) <= now_millis(), "ended now: {ended:?}");
    assert_eq!(read_sale(sale.name.clone()).await, ended);
    loop {
        if let Update::FlashSale(told) = next_change(&mut watching).await
            && told.name == sale.name
        {
            assert_eq!(told, ended, "viewers get the sale as it ended");
            break;
        }
    }
    let again = end(s.token(MALL), sale.name.clone(), "end").await.unwrap();
    assert_eq!(again.into_inner(), ended, "a retry gets the first answer");
    let e = end(brand.clone(), sale.name.clone(), "end-twice")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "SALE_NOT_OPEN")
    );
    assert_eq!(
        e.get_error_details().error_info().unwrap().metadata["state"],
        "CLOSED"
    );

    // Nothing is sold after; what was sold stands, and a cancel puts its unit back into the
    // ended sale, still not for sale.
    let e = orders(&s, &brand)
        .place_order(buy(&session.name, &sale.name, &members[1], "after", ""))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "SALE_NOT_OPEN")
    );
    assert_eq!(rows(&s, "live", "orders").await, 1);
    orders(&s, &brand)
        .cancel_order(pb::CancelOrderRequest {
            request_id: "cancel-before".into(),
            name: placed.name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(read_sale(sale.name.clone()).await.remaining_stock, 5);
    let e = orders(&s, &brand)
        .place_order(buy(
            &session.name,
            &sale.name,
            &members[1],
            "after-cancel",
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "SALE_NOT_OPEN");

    // A sale scheduled for later, ended before it opens: it never opens.
    let later = showcase(&s, &brand)
        .create_flash_sale(pb::CreateFlashSaleRequest {
            request_id: "later".into(),
            parent: session.name.clone(),
            flash_sale: Some(pb::FlashSale {
                product: product.name.clone(),
                sale_price: cny(9_900),
                total_stock: 3,
                per_member_limit: 1,
                start_time: timestamp(now_millis() + 300_000),
                end_time: timestamp(now_millis() + 600_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let never = end(brand.clone(), later.name.clone(), "end-later")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(never.start_time, never.end_time);
    assert!(at(&never.end_time) < at(&later.start_time));

    // The drop: one unit claimed, then closed by the brand; no claim after, the unit claimed
    // stays in its wallet.
    let coupon = crate::wallets::active(&s, BRAND, BRAND, BRAND, |b| {
        b.display_name = "closed early".into();
    })
    .await;
    let drop = open_drop(&s, &session.name, &coupon.name, 10, "drop-early").await;
    showcase(&s, &brand)
        .claim_coupon_drop(claim(&drop.name, &members[0], "claim-before"))
        .await
        .unwrap();
    let close = |token: String, rid: &str| {
        let mut client = showcase(&s, &token);
        let request = pb::CloseCouponDropRequest {
            request_id: rid.into(),
            name: drop.name.clone(),
        };
        async move { client.close_coupon_drop(request).await }
    };
    let e = close(s.token(OUTSIDER), "x").await.unwrap_err();
    assert_eq!(reason(&e), "HOST_ONLY");
    let closed = close(brand.clone(), "close").await.unwrap().into_inner();
    assert_eq!(closed.remaining, 9);
    assert!(at(&closed.close_time) <= now_millis());
    assert!(at(&closed.close_time) < at(&drop.close_time));
    loop {
        if let Update::CouponDrop(told) = next_change(&mut watching).await
            && told.name == drop.name
            && told.close_time == closed.close_time
        {
            break;
        }
    }
    let e = showcase(&s, &brand)
        .claim_coupon_drop(claim(&drop.name, &members[1], "claim-after"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "DROP_NOT_OPEN")
    );
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, 1);
    let e = close(brand.clone(), "close-twice").await.unwrap_err();
    assert_eq!(reason(&e), "DROP_NOT_OPEN");

    // A viewer joining now sees neither.
    let mut fresh = viewers(&s, &brand)
        .join_session(pb::JoinSessionRequest {
            session: session.name.clone(),
            member: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let Update::Snapshot(snapshot) = next_change(&mut fresh).await else {
        panic!("a snapshot first");
    };
    assert!(
        snapshot.flash_sales.is_empty(),
        "{:?}",
        snapshot.flash_sales
    );
    assert!(
        snapshot.coupon_drops.is_empty(),
        "{:?}",
        snapshot.coupon_drops
    );
}

/// Orders racing a sale's early end, in parallel: each is either placed (its unit taken) or
/// refused SALE_NOT_OPEN, never both and never lost — the stock left and the orders placed add
/// up to the stock — and once the end has answered, no order begun after it is placed.
#[tokio::test]
async fn orders_racing_a_sales_early_end_are_placed_or_refused_and_stock_adds_up() {
    let s = mesh("live_end_race").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "RACE", 19_900).await;
    let sale = flash_sale(&s, &session.name, &product.name, 100, 1).await;
    let members = enrol_many(&s, BRAND, "1380000", 40).await;
    let brand = s.token(BRAND);
    let buyers = join_all(members.iter().enumerate().map(|(i, m)| {
        let mut client = orders(&s, &brand);
        let request = buy(&session.name, &sale.name, m, &format!("race-{i}"), "");
        async move { client.place_order(request).await }
    }));
    let mut ender = showcase(&s, &s.token(MALL));
    let end = ender.end_flash_sale(pb::EndFlashSaleRequest {
        request_id: "end-race".into(),
        name: sale.name.clone(),
    });
    let (answers, ended) = tokio::join!(buyers, end);
    let ended = ended.unwrap().into_inner();
    let placed = i64::try_from(answers.iter().filter(|a| a.is_ok()).count()).unwrap();
    for e in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(
            (e.code(), reason(e).as_str()),
            (Code::FailedPrecondition, "SALE_NOT_OPEN"),
            "{e:?}"
        );
    }
    assert_eq!(rows(&s, "live", "orders").await, placed);
    let now = showcase(&s, &brand)
        .get_flash_sale(pb::GetFlashSaleRequest {
            name: sale.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.remaining_stock + placed, 100, "placed {placed}");
    // The end's answer counts every order placed before it; an order already under way (its
    // clock read before the end's) may still be placed after.
    assert!(
        ended.remaining_stock >= now.remaining_stock,
        "{ended:?} {now:?}"
    );
    assert_eq!(now.end_time, ended.end_time);
    // After the end has answered, nothing more is sold.
    let late = join_all(members.iter().enumerate().map(|(i, m)| {
        let mut client = orders(&s, &brand);
        let request = buy(&session.name, &sale.name, m, &format!("late-{i}"), "");
        async move { client.place_order(request).await }
    }))
    .await;
    assert!(
        late.iter()
            .all(|a| a.as_ref().is_err_and(|e| reason(e) == "SALE_NOT_OPEN"))
    );
    assert_eq!(rows(&s, "live", "orders").await, placed);
}

/// Claims racing a drop's early close, in parallel: each is either granted (a unit in the
/// member's wallet) or refused DROP_NOT_OPEN, never told the drop is exhausted while units are
/// left; the units left and the units granted add up to the drop, and once the close has
/// answered no claim begun after it is granted.
#[tokio::test]
async fn claims_racing_a_drops_early_close_are_granted_or_refused_and_units_add_up() {
    let s = with_entitlements("live_close_race").await;
    let session = on_air(&s).await;
    let coupon = crate::wallets::active(&s, BRAND, BRAND, BRAND, |b| {
        b.display_name = "raced".into();
    })
    .await;
    let drop = open_drop(&s, &session.name, &coupon.name, 100, "drop-race").await;
    let members = enrol_many(&s, BRAND, "1390000", 30).await;
    let brand = s.token(BRAND);
    let claims = join_all(members.iter().enumerate().map(|(i, m)| {
        let mut client = showcase(&s, &brand);
        let request = claim(&drop.name, m, &format!("race-{i}"));
        async move { client.claim_coupon_drop(request).await }
    }));
    let mut closer = showcase(&s, &s.token(MALL));
    let close = closer.close_coupon_drop(pb::CloseCouponDropRequest {
        request_id: "close-race".into(),
        name: drop.name.clone(),
    });
    let (answers, closed) = tokio::join!(claims, close);
    let closed = closed.unwrap().into_inner();
    let granted = i64::try_from(answers.iter().filter(|a| a.is_ok()).count()).unwrap();
    for e in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(
            (e.code(), reason(e).as_str()),
            (Code::FailedPrecondition, "DROP_NOT_OPEN"),
            "{e:?}"
        );
    }
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, granted);
    let now = showcase(&s, &brand)
        .get_coupon_drop(pb::GetCouponDropRequest {
            name: drop.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.remaining + granted, 100, "granted {granted}");
    // The close's answer counts every claim granted before it; a claim already under way (its
    // clock read before the close's) may still be granted after.
    assert!(closed.remaining >= now.remaining, "{closed:?} {now:?}");
    assert_eq!(now.close_time, closed.close_time);
    let late = join_all(members.iter().enumerate().map(|(i, m)| {
        let mut client = showcase(&s, &brand);
        let request = claim(&drop.name, m, &format!("late-{i}"));
        async move { client.claim_coupon_drop(request).await }
    }))
    .await;
    assert!(
        late.iter()
            .all(|a| a.as_ref().is_err_and(|e| reason(e) == "DROP_NOT_OPEN"))
    );
    assert_eq!(rows(&s, "entitlements", "wallet_items").await, granted);
}

/// The figures stream as a dashboard uses it: the first reading at once, a new one when an
/// order lands, a last one when the show ends — and then the stream ends. Only a co-host (or
/// the hosting store's token) watches; anyone else learns nothing, not even that it exists.
#[tokio::test]
async fn the_figures_stream_follows_a_show_to_its_end_for_its_co_hosts_only() {
    let s = mesh("live_stats_stream").await;
    let session = on_air(&s).await;
    let product = add_product(&s, &session.name, "LIP-520", 19_900).await;
    let watch = |token: String, name: String| {
        let mut client = stats(&s, &token);
        async move {
            client
                .watch_session_stats(pb::WatchSessionStatsRequest { session: name })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    for (token, code, want) in [
        (s.token(OUTSIDER), Code::NotFound, "SESSION_NOT_FOUND"),
        (
            s.store_token(MALL, "sh02"),
            Code::NotFound,
            "SESSION_NOT_FOUND",
        ),
    ] {
        let e = watch(token, session.name.clone()).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, want));
    }
    let e = watch(s.token(MALL), "sessions/".into()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let next = async |stream: &mut tonic::Streaming<pb::WatchSessionStatsResponse>| {
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("a reading in time")
            .unwrap()
    };
    let mut host = watch(s.token(MALL), session.name.clone()).await.unwrap();
    let mut store = watch(s.store_token(MALL, "sh01"), session.name.clone())
        .await
        .unwrap();
    for stream in [&mut host, &mut store] {
        let first = next(stream).await.unwrap().stats.unwrap();
        assert_eq!(
            (first.session.as_str(), first.orders),
            (session.name.as_str(), 0)
        );
    }
    let member = enrol(&s, BRAND, "13812345671").await;
    orders(&s, &s.token(BRAND))
        .place_order(buy_product(
            &session.name,
            &product.name,
            &member,
            "figures",
        ))
        .await
        .unwrap();
    let after = next(&mut host).await.unwrap().stats.unwrap();
    assert_eq!(after.orders, 1);
    assert_eq!(after.gross_sales, cny(19_900));
    sessions(&s, &s.token(BRAND))
        .end_session(pb::EndSessionRequest {
            request_id: "end".into(),
            name: session.name.clone(),
        })
        .await
        .unwrap();
    // The last reading comes with the end, then nothing more: the stream is over.
    let mut last = None;
    while let Some(reading) = next(&mut host).await {
        last = reading.stats;
    }
    assert_eq!(last.map(|l| l.orders), Some(1));
}
