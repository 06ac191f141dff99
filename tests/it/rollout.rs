//! A rollout's replicas start together: three instances of the whole mesh at once on fresh
//! databases all migrate them and come up (on PostgreSQL they take turns under an advisory lock
//! per service; unlocked, two of three crashed on concurrent CREATE TABLEs).

use std::time::Duration;

use lianyu_kit::{config::Config, testing::TestDatabase};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

#[tokio::test]
async fn three_replicas_started_at_once_on_a_fresh_database_all_come_up() {
    // One fresh database per service, shared by the three replicas.
    let mut databases = Vec::new();
    for service in lianyu::SERVICES {
        databases.push((
            service,
            TestDatabase::new(&format!("rollout_{service}")).await,
        ));
    }
    let mut starts = Vec::new();
    let mut addresses = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::local(dir.path());
        for (service, db) in &databases {
            config.set_database_url(service, db.url.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.push(format!("http://{}", listener.local_addr().unwrap()));
        starts.push(tokio::spawn(lianyu::up(
            config,
            listener,
            std::future::pending(),
            |_, _| {},
        )));
        dirs.push(dir);
    }
    // Generous: twelve services migrating in turn on a machine busy with other tests (once,
    // under two test processes at full load, a replica was not up after 30 s).
    for (i, address) in addresses.iter().enumerate() {
        let channel =
            match lianyu_kit::client::connect_when_up(address, Duration::from_secs(90)).await {
                Ok(channel) => channel,
                Err(e) if starts[i].is_finished() => {
                    panic!("replica {i}: {e}; it stopped: {:?}", (&mut starts[i]).await)
                }
                Err(e) => panic!("replica {i}: {e}; it still runs"),
            };
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let until = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(answer) = health.check(HealthCheckRequest::default()).await
                && answer.into_inner().status == ServingStatus::Serving as i32
            {
                break;
            }
            assert!(
                !starts[i].is_finished(),
                "replica {i} stopped while starting: {:?}",
                starts.remove(i).await
            );
            assert!(
                tokio::time::Instant::now() < until,
                "replica {i} never served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        starts.iter().all(|s| !s.is_finished()),
        "every replica still runs"
    );
    for s in &starts {
        s.abort();
    }
}
