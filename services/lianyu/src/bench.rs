//! `lianyu bench`: load scenarios against a mesh — its own in-process mesh on embedded SQLite,
//! or a running one given by address. Each run warms up, then drives a fixed duration at a
//! fixed concurrency over several HTTP/2 channels, and reports requests/s, latency
//! percentiles from an HDR histogram, and errors by status code.

pub mod audience;
pub mod drop;
pub mod live;
mod report;
mod setup;
pub mod streams;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};
use tonic::transport::Channel;

pub use report::Report;
pub use setup::Target;

/// What a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every scenario below, in order, beside the baseline (and bare beside it).
    All,
    /// A plain tonic health server in the same process, with none of the kit's layers (auth,
    /// limits, telemetry): what the kit's layers cost is baseline against bare.
    Bare,
    /// The standard health Check through the mesh's full stack: the empty-RPC ceiling every
    /// other figure is compared with.
    Baseline,
    /// CheckConsent for one member, the hot path of every other service.
    ConsentCheck,
    /// BatchCheckConsent for `batch` members a call.
    BatchConsentCheck,
    /// EnrollMember with a new verified phone each call.
    Enroll,
    /// Many open feed streams that receive nothing: what they cost while idle.
    IdleStreams,
    /// A livestream coupon drop: `--units` units, `--claimers` members claiming at once.
    ClaimDrop,
    /// GrantBenefit: the mall grants one unit of its own coupon to one of its members a call.
    Grant,
    /// A sale at the counter: GrantBenefit then Redeem of that unit (two RPCs a call).
    Redeem,
    /// `--viewers` viewers watch one live session; `--events` announcements fan out to them.
    Viewers,
    /// A flash sale of `--units` units, `--buyers` members buying one each at once.
    FlashSale,
    /// A ten-condition segment over `--synthetic` synthetic members (default 1,000,000).
    Segment,
    /// The overlap of two segments of `--synthetic` synthetic members each.
    Overlap,
    /// RequestContact: the mall asks to message one of its members a call (the mesh-wide cap
    /// raised so most are allowed and held).
    RequestContact,
}

impl Scenario {
    /// What `all` runs, in order.
    pub const EVERY: [Scenario; 6] = [
        Scenario::Bare,
        Scenario::Baseline,
        Scenario::ConsentCheck,
        Scenario::BatchConsentCheck,
        Scenario::Enroll,
        Scenario::IdleStreams,
    ];

    /// Run only when named: each prepares its own data at a scale that `all` would not want.
    pub const BY_NAME: [Scenario; 8] = [
        Scenario::ClaimDrop,
        Scenario::Grant,
        Scenario::Redeem,
        Scenario::Viewers,
        Scenario::FlashSale,
        Scenario::Segment,
        Scenario::Overlap,
        Scenario::RequestContact,
    ];

    /// Every scenario's name, for help and errors.
    pub fn names() -> String {
        Self::EVERY
            .iter()
            .chain(&Self::BY_NAME)
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Bare => "bare",
            Scenario::Baseline => "baseline",
            Scenario::ConsentCheck => "consent-check",
            Scenario::BatchConsentCheck => "batch-consent-check",
            Scenario::Enroll => "enroll",
            Scenario::IdleStreams => "idle-streams",
            Scenario::ClaimDrop => "claim-drop",
            Scenario::Grant => "grant",
            Scenario::Redeem => "redeem",
            Scenario::Viewers => "viewers",
            Scenario::FlashSale => "flash-sale",
            Scenario::Segment => "segment",
            Scenario::Overlap => "overlap",
            Scenario::RequestContact => "request-contact",
        }
    }
}

/// How hard and how long.
#[derive(Clone, Debug)]
pub struct Load {
    pub concurrency: usize,
    pub channels: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Members per BatchCheckConsent call.
    pub batch: usize,
    /// Print a progress line each second (to stderr).
    pub progress: bool,
    /// A refused worker waits what the refusal's `google.rpc.RetryInfo` asks before calling
    /// again (else at once).
    pub honour_retry_info: bool,
}

/// Runs one scenario against a prepared target.
pub async fn run(target: &Target, scenario: Scenario, load: &Load) -> Report {
    let channels: Vec<Channel> = (0..load.channels.max(1))
        .map(|_| target.channel())
        .collect();
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let warm_until = started + load.warmup;
    let stop_at = warm_until + load.duration;
    let progress = load.progress.then(|| {
        let counter = counter.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = counter.load(Ordering::Relaxed);
                eprint!(
                    "\r  {:>5.1}s  {:>8} req/s   ",
                    started.elapsed().as_secs_f64(),
                    now - last
                );
                last = now;
            }
        })
    });
    let mut tasks = Vec::with_capacity(load.concurrency);
    for worker in 0..load.concurrency {
        let channel = channels[worker % channels.len()].clone();
        let (target, counter, batch) = (target.clone(), counter.clone(), load.batch);
        let honour_retry_info = load.honour_retry_info;
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds"));
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut caller = Caller::new(&target, channel, worker, batch);
            loop {
                let began = Instant::now();
                if began >= stop_at {
                    break;
                }
                let result = caller.call(scenario).await;
                let wait = match &result {
                    Err(status) if honour_retry_info => {
                        use tonic_types::StatusExt;
                        status.get_details_retry_info().and_then(|r| r.retry_delay)
                    }
                    _ => None,
                };
                if began >= warm_until {
                    let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = histogram.record(micros.max(1));
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Err(status) = result {
                        *errors.entry(format!("{:?}", status.code())).or_default() += 1;
                    }
                }
                if let Some(wait) = wait {
                    tokio::time::sleep(wait.min(stop_at.saturating_duration_since(Instant::now())))
                        .await;
                }
            }
            (histogram, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| unreachable!("valid bounds"));
    let mut errors = BTreeMap::new();
    for task in tasks {
        if let Ok((h, e)) = task.await {
            let _ = histogram.add(h);
            for (code, n) in e {
                *errors.entry(code).or_default() += n;
            }
        }
    }
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let items_per_call = if scenario == Scenario::BatchConsentCheck {
        load.batch
    } else {
        1
    };
    Report::new(scenario, load, &histogram, errors, items_per_call)
}

/// The next enrolment's number, shared by every worker of the process.
static NEXT_PHONE: AtomicU64 = AtomicU64::new(0);

/// A mainland mobile number no other call of this process has enrolled: "13", the run's last
/// digit (130–139 are all mobile prefixes), then eight digits from [`NEXT_PHONE`].
fn fresh_phone(run: u32) -> String {
    let n = NEXT_PHONE.fetch_add(1, Ordering::Relaxed);
    format!("13{}{:08}", run % 10, n % 100_000_000)
}

/// One worker's client state.
struct Caller {
    wallet:
        lianyu_proto::entitlements::v1::wallet_service_client::WalletServiceClient<setup::Authed>,
    till: lianyu_proto::entitlements::v1::redemption_service_client::RedemptionServiceClient<
        setup::Authed,
    >,
    benefit: Option<String>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    consents: pb::consent_service_client::ConsentServiceClient<setup::Authed>,
    members: pb::member_service_client::MemberServiceClient<setup::Authed>,
    contacts:
        lianyu_proto::comarketing::v1::contact_service_client::ContactServiceClient<setup::Authed>,
    ids: Arc<Vec<String>>,
    worker: usize,
    seq: u64,
    batch: usize,
    run: u32,
}

impl Caller {
    fn new(target: &Target, channel: Channel, worker: usize, batch: usize) -> Self {
        use lianyu_proto::entitlements::v1::{
            redemption_service_client::RedemptionServiceClient,
            wallet_service_client::WalletServiceClient,
        };
        Self {
            wallet: WalletServiceClient::new(target.as_mall(channel.clone())),
            till: RedemptionServiceClient::new(target.as_mall(channel.clone())),
            benefit: target.benefit.clone(),
            health: tonic_health::pb::health_client::HealthClient::new(channel.clone()),
            consents: pb::consent_service_client::ConsentServiceClient::new(
                target.as_mall(channel.clone()),
            ),
            members: pb::member_service_client::MemberServiceClient::new(
                target.as_brand(channel.clone()),
            ),
            contacts:
                lianyu_proto::comarketing::v1::contact_service_client::ContactServiceClient::new(
                    target.as_mall(channel),
                ),
            ids: target.mall_members.clone(),
            worker,
            seq: 0,
            batch,
            run: target.run_id,
        }
    }

    async fn call(&mut self, scenario: Scenario) -> Result<(), tonic::Status> {
        self.seq += 1;
        let pick = |n: u64| (n as usize).wrapping_mul(2_654_435_761) % self.ids.len().max(1);
        match scenario {
            // Bare is the same call to a server without the kit's layers.
            Scenario::Baseline | Scenario::Bare => self
                .health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop),
            Scenario::ConsentCheck => {
                let member = self.ids[pick(self.seq + self.worker as u64 * 7919)].clone();
                let request = pb::CheckConsentRequest {
                    member,
                    purpose: ConsentPurpose::MarketingContact as i32,
                };
                self.consents.check_consent(request).await.map(drop)
            }
            Scenario::BatchConsentCheck => {
                let start = pick(self.seq + self.worker as u64 * 7919);
                let members = (0..self.batch)
                    .map(|i| self.ids[(start + i) % self.ids.len()].clone())
                    .collect();
                let request = pb::BatchCheckConsentRequest {
                    members,
                    purpose: ConsentPurpose::MarketingContact as i32,
                };
                self.consents.batch_check_consent(request).await.map(drop)
            }
            // Measured by `streams::idle_streams`, not by a call loop; `all` is expanded first.
            Scenario::IdleStreams
            | Scenario::ClaimDrop
            | Scenario::Viewers
            | Scenario::FlashSale
            | Scenario::Segment
            | Scenario::Overlap
            | Scenario::All => Ok(()),
            Scenario::RequestContact => {
                use lianyu_proto::comarketing::v1 as cm;
                let member = self.ids[pick(self.seq + self.worker as u64 * 7919)].clone();
                self.contacts
                    .request_contact(cm::RequestContactRequest {
                        request_id: format!("rc-{}-{}-{}", self.run, self.worker, self.seq),
                        member,
                        campaign: String::new(),
                        channel: cm::ContactChannel::Push as i32,
                    })
                    .await
                    .map(drop)
            }
            Scenario::Grant | Scenario::Redeem => {
                use lianyu_proto::entitlements::v1 as ent;
                let member = self.ids[pick(self.seq + self.worker as u64 * 7919)].clone();
                let rid = format!("bench-{}-{}-{}", self.run, self.worker, self.seq);
                let granted = self
                    .wallet
                    .grant_benefit(ent::GrantBenefitRequest {
                        request_id: format!("g-{rid}"),
                        member,
                        benefit: self.benefit.clone().unwrap_or_default(),
                    })
                    .await;
                match (scenario, granted) {
                    (Scenario::Redeem, Ok(item)) => self
                        .till
                        .redeem(ent::RedeemRequest {
                            request_id: format!("r-{rid}"),
                            wallet_item: item.into_inner().name,
                            store: format!("partners/{}/stores/{}", setup::MALL, setup::STORE),
                            order_amount: Some(lianyu_proto::common::v1::Money {
                                currency_code: "CNY".into(),
                                minor_units: 10_000,
                            }),
                            category: String::new(),
                            order_reference: format!("o-{rid}"),
                        })
                        .await
                        .map(drop),
                    (_, granted) => granted.map(drop),
                }
            }
            Scenario::Enroll => {
                // Never the worker's index: past 1,000 workers two of them enrolled the same
                // people at once, measuring links and conflicts instead of new members.
                let phone = fresh_phone(self.run);
                let request = pb::EnrollMemberRequest {
                    request_id: format!("bench-{}-{}-{}", self.run, self.worker, self.seq),
                    identifiers: vec![pb::Identifier {
                        kind: pb::IdentifierKind::Phone as i32,
                        value: phone,
                        namespace: String::new(),
                        verified: true,
                        verification_method: pb::VerificationMethod::SmsCode as i32,
                    }],
                    profile: Default::default(),
                };
                self.members.enroll_member(request).await.map(drop)
            }
        }
    }
}

/// A plain tonic server with the standard health service and nothing else — no auth, no
/// admission limits, no telemetry — on `listener`, for the `bare` scenario.
pub async fn serve_bare(listener: tokio::net::TcpListener) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(incoming)
        .await
}

#[cfg(test)]
mod tests {
    /// Workers calling at once never enrol one person twice (numbers made from the
    /// worker's index did, past 1,000 workers).
    #[test]
    fn concurrent_workers_enrol_distinct_numbers() {
        let numbers: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| (0..250).map(|_| super::fresh_phone(7)).collect::<Vec<_>>())
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let distinct: std::collections::HashSet<_> = numbers.iter().collect();
        assert_eq!(distinct.len(), 2_000);
        assert!(numbers.iter().all(|n| n.len() == 11
            && n.starts_with("137")
            && n.bytes().all(|b| b.is_ascii_digit())));
    }
}
