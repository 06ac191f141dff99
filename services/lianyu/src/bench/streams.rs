//! `lianyu bench idle-streams`: opens many feed streams (WatchConsentEvents) that receive
//! nothing, holds them, and reports what they cost this process — CPU as a share of one core
//! over the hold, and resident memory per stream. With the in-process mesh the figure covers
//! server and client together, so it is an upper bound for the server.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lianyu_proto::identity::v1::{
    WatchConsentEventsRequest, consent_service_client::ConsentServiceClient,
};

use super::Target;

/// Streams per HTTP/2 connection (the server allows 256).
const PER_CONNECTION: usize = 200;

#[derive(Debug, serde::Serialize)]
pub struct StreamsReport {
    pub scenario: &'static str,
    pub streams: usize,
    pub open_seconds: f64,
    pub hold_seconds: f64,
    /// CPU used while holding, in percent of one core (the machine has two: 200 % is all).
    pub cpu_percent: f64,
    pub rss_bytes_per_stream: f64,
    pub refused: usize,
}

/// Opens `streams` idle streams, holds them for `hold`, and measures.
pub async fn idle_streams(target: &Target, streams: usize, hold: Duration) -> StreamsReport {
    let channels: Vec<_> = (0..streams.div_ceil(PER_CONNECTION).max(1))
        .map(|_| target.channel())
        .collect();
    let rss_before = rss_bytes();
    let started = Instant::now();
    let opened: Vec<_> = futures::stream::iter(0..streams)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let mut client = ConsentServiceClient::new(target.as_brand(channel));
            async move {
                client
                    .watch_consent_events(WatchConsentEventsRequest { after: None })
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let refused = opened.iter().filter(|o| o.is_err()).count();
    let held: Vec<_> = opened.into_iter().filter_map(Result::ok).collect();
    // Let the opening settle, then measure a quiet hold.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_before, at) = (cpu_ticks(), Instant::now());
    tokio::time::sleep(hold).await;
    let ticks = cpu_ticks().saturating_sub(cpu_before);
    let hold_seconds = at.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let count = held.len().max(1);
    drop(held);
    StreamsReport {
        scenario: "idle-streams",
        streams,
        open_seconds,
        hold_seconds,
        // Linux counts CPU time in ticks of 1/100 s.
        cpu_percent: ticks as f64 / hold_seconds,
        rss_bytes_per_stream: rss_after.saturating_sub(rss_before) as f64 / count as f64,
        refused,
    }
}

/// This process's user and system CPU time, in ticks (/proc/self/stat fields 14 and 15).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 is the first after the name; utime is field 14, stime 15.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// This process's resident memory, in bytes.
pub(super) fn rss_bytes() -> u64 {
    rss_of(None)
}

/// The resident memory of process `pid` (this one when `None`), in bytes; 0 when unknown.
pub(super) fn rss_of(pid: Option<u32>) -> u64 {
    let path = pid.map_or_else(
        || "/proc/self/status".to_owned(),
        |p| format!("/proc/{p}/status"),
    );
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
