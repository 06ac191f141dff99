//! Livestream scenarios.
//!
//! `viewers`: `viewers` anonymous viewers join one live session (JoinSession streams); then
//! `events` announcements are posted one after another and each viewer notes when each one
//! reached it. Reported: the memory the open streams take per viewer (resident memory of this
//! process, so with the in-process mesh it covers server and client together: an upper bound
//! for the server; with `--address` and `--server-pid`, the server's own), and the fan-out
//! latency from posting to each viewer's receipt, p50 and
//! p99 over every (viewer, event) pair. Baseline in the same run: the round trip of one health
//! check through the mesh's full stack.
//!
//! `flash-sale`: `buyers` members press "buy" on a flash sale of `units` units, one each, at
//! the same moment. Reported: orders placed (exactly `units`), how long until every buyer has
//! an answer; baseline in the same run: as many health checks sent at once the same way.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use lianyu_proto::{
    common::v1::Money,
    live::v1::{
        self as live, join_session_response::Update, order_service_client::OrderServiceClient,
        session_service_client::SessionServiceClient,
        showcase_service_client::ShowcaseServiceClient, viewer_service_client::ViewerServiceClient,
    },
};
use serde::Serialize;

use super::{
    setup::{MALL, Target},
    streams::rss_of,
};

/// Viewer streams per HTTP/2 connection (the server allows 256).
const PER_CONNECTION: usize = 200;

/// What the viewers scenario measured.
#[derive(Debug, Serialize)]
pub struct ViewersReport {
    pub scenario: &'static str,
    /// Streams open (each got its snapshot).
    pub viewers: usize,
    /// Joins refused.
    pub refused: usize,
    pub open_seconds: f64,
    pub bytes_per_viewer: f64,
    /// Whose memory `bytes_per_viewer` is: "this process (server and clients)" or "server
    /// process {pid}".
    pub memory_of: String,
    pub events: usize,
    pub fanout_p50_ms: f64,
    pub fanout_p99_ms: f64,
    /// Deliveries expected (viewers × events) that never arrived within the wait.
    pub missed: u64,
    /// The same run's baseline: one health check's round trip through the full stack, p50.
    pub baseline_rtt_ms: f64,
}

/// What the flash-sale scenario measured.
#[derive(Debug, Serialize)]
pub struct FlashSaleReport {
    pub scenario: &'static str,
    pub buyers: usize,
    pub units: i64,
    /// Orders placed.
    pub units_sold: usize,
    /// Distinct members among them (equal to `units_sold` when no one got two).
    pub distinct_buyers: usize,
    /// From the first order sent to the last answer received.
    pub seconds: f64,
    /// As many health checks sent at once the same way, until the last is answered.
    pub baseline_seconds: f64,
    /// Every other answer, by gRPC code and reason.
    pub refusals: BTreeMap<String, usize>,
}

fn cny(minor_units: i64) -> Option<Money> {
    Some(Money {
        currency_code: "CNY".into(),
        minor_units,
    })
}

fn at(millis: i64) -> Option<prost_types::Timestamp> {
    lianyu_kit::time::timestamp(millis)
}

fn now() -> i64 {
    lianyu_kit::time::now_millis()
}

/// A live session the bench brand co-hosts with the bench mall (which accepts), started.
async fn live_session(target: &Target, name: &str) -> anyhow::Result<live::Session> {
    let run = target.run_id;
    let mut sessions = SessionServiceClient::new(target.as_brand(target.channel()));
    let created = sessions
        .create_session(live::CreateSessionRequest {
            request_id: format!("bench-{name}-{run}-{}", uuid::Uuid::new_v4().simple()),
            session: Some(live::Session {
                title: format!("bench {name}"),
                hosts: vec![format!("partners/{MALL}")],
                scheduled_start_time: at(now() + 60_000),
                ..Default::default()
            }),
        })
        .await
        .context("scheduling the session")?
        .into_inner();
    SessionServiceClient::new(target.as_mall(target.channel()))
        .accept_session(live::AcceptSessionRequest {
            request_id: format!("accept-{}", created.name),
            name: created.name.clone(),
            etag: created.etag.clone(),
        })
        .await
        .context("the mall accepting to co-host")?;
    Ok(sessions
        .start_session(live::StartSessionRequest {
            request_id: format!("start-{}", created.name),
            name: created.name.clone(),
            etag: String::new(),
        })
        .await
        .context("starting the session")?
        .into_inner())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Opens `viewers` streams on one session, then posts `events` announcements, one at a time.
/// `server_pid`: the server's process, when it runs apart, to measure its memory instead of
/// this process's.
pub async fn viewers(
    target: &Target,
    viewers: usize,
    events: usize,
    server_pid: Option<u32>,
) -> anyhow::Result<ViewersReport> {
    let session = live_session(target, "viewers").await?;
    let connections: Vec<_> = (0..viewers.div_ceil(PER_CONNECTION).max(1))
        .map(|_| target.channel())
        .collect();
    // The same run's baseline: health checks one after another.
    let mut health = tonic_health::pb::health_client::HealthClient::new(target.channel());
    let mut rtts = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let _ = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await;
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rtts.sort_by(f64::total_cmp);
    let baseline_rtt_ms = percentile(&rtts, 0.5);

    let epoch = Instant::now();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let rss_before = rss_of(server_pid);
    let started = Instant::now();
    let opened: Vec<_> = stream::iter(0..viewers)
        .map(|i| {
            let mut client = ViewerServiceClient::new(
                target.as_brand(connections[i % connections.len()].clone()),
            );
            let request = live::JoinSessionRequest {
                session: session.name.clone(),
                member: String::new(),
            };
            async move {
                let mut stream = client.join_session(request).await?.into_inner();
                // The snapshot comes first.
                stream.message().await?;
                Ok::<_, tonic::Status>(stream)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let refused = opened.iter().filter(|o| o.is_err()).count();
    let streams: Vec<_> = opened.into_iter().filter_map(Result::ok).collect();
    let open = streams.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bytes_per_viewer =
        rss_of(server_pid).saturating_sub(rss_before) as f64 / open.max(1) as f64;

    // Each viewer reads on its own task and notes each announcement's delay.
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let latencies = latencies.clone();
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(events);
                while mine.len() < events {
                    match tokio::time::timeout(Duration::from_secs(30), s.message()).await {
                        Ok(Ok(Some(live::JoinSessionResponse {
                            update: Some(Update::Announcement(a)),
                        }))) => {
                            if let Some(sent) =
                                a.text.split(' ').nth(1).and_then(|m| m.parse::<f64>().ok())
                            {
                                mine.push(epoch.elapsed().as_secs_f64() * 1000.0 - sent);
                            }
                        }
                        Ok(Ok(Some(_))) => {}
                        _ => break,
                    }
                }
                let got = mine.len();
                latencies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(mine);
                got
            })
        })
        .collect();
    let mut showcase = ShowcaseServiceClient::new(target.as_brand(target.channel()));
    for k in 0..events {
        let sent = epoch.elapsed().as_secs_f64() * 1000.0;
        showcase
            .post_announcement(live::PostAnnouncementRequest {
                request_id: format!("bench-a-{k}-{}", uuid::Uuid::new_v4().simple()),
                parent: session.name.clone(),
                text: format!("{k} {sent:.3}"),
            })
            .await
            .context("posting an announcement")?;
        // One event at a time: each is measured on its own, not behind a queue of others.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut delivered = 0_u64;
    for r in readers {
        delivered += r.await.unwrap_or(0) as u64;
    }
    let mut all = latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    all.sort_by(f64::total_cmp);
    Ok(ViewersReport {
        scenario: "viewers",
        viewers: open,
        refused,
        open_seconds,
        bytes_per_viewer,
        memory_of: server_pid.map_or_else(
            || "this process (server and clients)".to_owned(),
            |p| format!("server process {p}"),
        ),
        events,
        fanout_p50_ms: percentile(&all, 0.5),
        fanout_p99_ms: percentile(&all, 0.99),
        missed: (open as u64 * events as u64).saturating_sub(delivered),
        baseline_rtt_ms,
    })
}

/// Enrols `buyers` members at the brand, opens a flash sale of `units`, then sends every
/// order at once over `channels` connections.
pub async fn flash_sale(
    target: &Target,
    buyers: usize,
    units: i64,
    channels: usize,
) -> anyhow::Result<FlashSaleReport> {
    let channel = target.channel();
    let members = super::drop::enrol_members(target, buyers, "sale", "18").await?;
    let session = live_session(target, "flash-sale").await?;
    let mut showcase = ShowcaseServiceClient::new(target.as_brand(channel.clone()));
    let product = showcase
        .add_product(live::AddProductRequest {
            request_id: format!("bench-product-{}", session.name),
            parent: session.name.clone(),
            product: Some(live::Product {
                sku: "BENCH-1".into(),
                title: "bench lipstick".into(),
                price: cny(29_900),
                ..Default::default()
            }),
        })
        .await
        .context("adding the product")?
        .into_inner();
    let sale = showcase
        .create_flash_sale(live::CreateFlashSaleRequest {
            request_id: format!("bench-sale-{}", session.name),
            parent: session.name.clone(),
            flash_sale: Some(live::FlashSale {
                product: product.name.clone(),
                sale_price: cny(9_900),
                total_stock: units,
                per_member_limit: 1,
                end_time: at(now() + 3_600_000),
                ..Default::default()
            }),
        })
        .await
        .context("opening the flash sale")?
        .into_inner();

    let connections: Vec<_> = (0..channels.max(1)).map(|_| target.channel()).collect();
    for c in &connections {
        let _ = tonic_health::pb::health_client::HealthClient::new(c.clone())
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await;
    }
    let baseline_seconds = super::drop::burst_baseline(&connections, buyers).await;

    let started = Instant::now();
    let orders = members.iter().enumerate().map(|(i, member)| {
        let mut client =
            OrderServiceClient::new(target.as_brand(connections[i % connections.len()].clone()));
        let request = live::PlaceOrderRequest {
            // Unique to this sale: a second run against the same mesh is not a replay.
            request_id: format!("buy-{}-{i}", sale.name),
            parent: session.name.clone(),
            order: Some(live::Order {
                member: member.clone(),
                flash_sale: sale.name.clone(),
                quantity: 1,
                payment_reference: format!("bench-pay-{i}"),
                ..Default::default()
            }),
        };
        tokio::spawn(async move { client.place_order(request).await.map(|r| r.into_inner()) })
    });
    let answers = futures::future::join_all(orders).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut owners = Vec::new();
    let mut refusals = BTreeMap::new();
    for answer in answers {
        match answer {
            Ok(Ok(order)) => owners.push(order.member),
            Ok(Err(status)) => *refusals.entry(super::drop::refusal(&status)).or_insert(0) += 1,
            Err(_) => *refusals.entry("task failed".into()).or_insert(0) += 1,
        }
    }
    let units_sold = owners.len();
    owners.sort();
    owners.dedup();
    Ok(FlashSaleReport {
        scenario: "flash-sale",
        buyers,
        units,
        units_sold,
        distinct_buyers: owners.len(),
        seconds,
        baseline_seconds,
        refusals,
    })
}
