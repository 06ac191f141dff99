//! A database outage, the way it happens to a pod: PostgreSQL goes away (here a TCP proxy in
//! front of it drops every connection and refuses new ones), then comes back. Calls get
//! UNAVAILABLE with a reason (retryable), the service's readiness turns NOT_SERVING while its
//! liveness stays SERVING, and it serves again without a restart, with nothing lost.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lianyu_proto::identity::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::{Identity, details, enroll, phone};

/// A TCP proxy that can cut every connection and refuse new ones, then allow them again.
#[derive(Clone)]
struct Proxy {
    address: SocketAddr,
    down: Arc<AtomicBool>,
    connections: Arc<Mutex<CancellationToken>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = Proxy {
            address: listener.local_addr().unwrap(),
            down: Arc::default(),
            connections: Arc::new(Mutex::new(CancellationToken::new())),
        };
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let this = proxy.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if this.down.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let cut = this.connections.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        proxy
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        let mut connections = self.connections.lock().unwrap();
        connections.cancel();
        *connections = CancellationToken::new();
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// The health status of `service` ("" for the process).
async fn health(identity: &Identity, service: &str) -> i32 {
    HealthClient::new(identity.channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map_or(-1, |r| r.into_inner().status)
}

/// Polls `check` until it holds or `limit` passes; how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::task::yield_now().await;
    }
    started.elapsed()
}

const READINESS: &str = "lianyu.identity.v1.MemberService";
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test]
async fn a_database_outage_is_unavailable_not_an_outage_and_recovers_without_a_restart() {
    if !lianyu_kit::testing::backend_is_postgres() {
        eprintln!("skipped: a database outage is a PostgreSQL matter (SQLite is embedded)");
        return;
    }
    let proxy = Arc::new(Mutex::new(None::<Proxy>));
    let made = proxy.clone();
    let identity = Identity::with_partners_and("outage", move |config| {
        // Route identity's connections through the proxy: postgres://user@HOST:PORT/db.
        let url = config.database_url("identity");
        let (head, rest) = url.split_once('@').unwrap();
        let (host, tail) = rest.split_once('/').unwrap();
        let p = Proxy::start(host.parse().unwrap());
        config.set_database_url("identity", format!("{head}@{}/{tail}", p.address));
        *made.lock().unwrap() = Some(p);
    })
    .await;
    let proxy = proxy.lock().unwrap().clone().unwrap();
    let mut brand = identity.as_partner("brand-a");
    brand
        .members
        .enroll_member(enroll("before", vec![phone("13300133000", true)], &[]))
        .await
        .unwrap();
    assert_eq!(health(&identity, READINESS).await, SERVING);

    proxy.cut();
    let noticed = within(Duration::from_secs(10), async || {
        health(&identity, READINESS).await == NOT_SERVING
    })
    .await;
    eprintln!("outage noticed by readiness in {noticed:?}");
    assert_eq!(
        health(&identity, "").await,
        SERVING,
        "liveness stays SERVING"
    );
    let started = Instant::now();
    let refused = brand
        .members
        .enroll_member(enroll("during", vec![phone("13300133001", true)], &[]))
        .await
        .unwrap_err();
    eprintln!(
        "a call during the outage answered in {:?}",
        started.elapsed()
    );
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        ["DATABASE_UNAVAILABLE", "STORAGE_UNAVAILABLE"].contains(&details(&refused).0.as_str()),
        "{refused:?}"
    );

    proxy.restore();
    let recovered = within(Duration::from_secs(10), async || {
        health(&identity, READINESS).await == SERVING
    })
    .await;
    eprintln!("serving again {recovered:?} after the database came back");
    // The same process serves again, and what was acknowledged before is there.
    let found = within(Duration::from_secs(10), async || {
        brand
            .members
            .resolve_member(pb::ResolveMemberRequest {
                identifier: Some(phone("13300133000", true)),
            })
            .await
            .is_ok()
    })
    .await;
    eprintln!("first read after recovery in {found:?}");
    brand
        .members
        .enroll_member(enroll("after", vec![phone("13300133002", true)], &[]))
        .await
        .unwrap();
}
