//! Identity run the way its Kubernetes Deployment runs it: the release binary's `main`, the
//! ConfigMap's environment read from `k8s/base/config.yaml`, secrets mounted as files, a
//! read-only root filesystem, and the migration Job's `--migrate-only`. The pod is alive but
//! not ready until the Job has brought the schema up to date, ready after, and on SIGTERM it
//! turns NOT_SERVING while a call already in flight completes, then exits inside the
//! Deployment's grace period — with its telemetry collector hung.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use lianyu_kit::{
    Config,
    auth::{Signer, TokenRequest},
    testing::TestDatabase,
};
use lianyu_proto::identity::v1 as pb;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_lianyu-identity");
/// The readiness probe's service name in `k8s/base/identity.yaml`.
const READY: &str = "lianyu.identity.v1.ConsentService";

fn k8s(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../k8s/base")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The ConfigMap's `data`, as the Deployment's `envFrom` gives it to the container.
fn configmap() -> BTreeMap<String, String> {
    let text = k8s("config.yaml");
    let mut data = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("data:") {
            inside = true;
            continue;
        }
        if !inside || line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some(entry) = line.strip_prefix("  ") else {
            break;
        };
        let (key, value) = entry.split_once(':').unwrap();
        data.insert(key.to_owned(), value.trim().trim_matches('"').to_owned());
    }
    assert!(
        data.contains_key("LIANYU_MODE"),
        "no data read from config.yaml"
    );
    data
}

/// The Deployment's `terminationGracePeriodSeconds`.
fn grace_period(manifest: &str) -> Duration {
    let seconds = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Duration::from_secs(seconds)
}

/// Whether this process may give a child a read-only root (a private mount namespace); under
/// CI (`CI=true`, root) it must.
fn read_only_root_available() -> bool {
    let ok = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -o bind,remount,ro / && ! touch /lianyu-probe 2>/dev/null")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI needs a private mount namespace (root) for the read-only root"
        );
        eprintln!("read-only root not enforced here: unshare --mount is not permitted");
    }
    ok
}

/// The binary as the container runs it: `args`, exactly `env`, the root read-only except
/// `writable` (the SQLite directory when the test runs on SQLite; nothing on PostgreSQL).
fn container(args: &[&str], env: &BTreeMap<String, String>, writable: Option<&Path>) -> Command {
    let mut command = if read_only_root_available() {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"set -e; if [ -n "$WRITABLE" ]; then mount --bind "$WRITABLE" "$WRITABLE"; fi
                mount -o bind,remount,ro /; exec "$@""#,
            )
            .arg("container")
            .arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    command
        .args(args)
        .env_clear()
        .envs(env)
        .env(
            "WRITABLE",
            writable.map(Path::as_os_str).unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// Kills the server if the test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn status(health: &mut HealthClient<Channel>, service: &str) -> Option<i32> {
    health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// Polls until `service` reports `want` (a probe's view), failing after `within`.
async fn until(health: &mut HealthClient<Channel>, service: &str, want: ServingStatus) {
    let started = Instant::now();
    while status(health, service).await != Some(want as i32) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{service:?} never reported {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn identity_runs_as_its_deployment_runs_it() {
    let manifest = k8s("identity.yaml");
    assert!(
        manifest.contains("args: [\"--migrate-only\"]"),
        "the migration Job runs --migrate-only"
    );
    let grace = grace_period(&manifest);
    let db = TestDatabase::new("deployment").await;
    let writable: Option<PathBuf> = db.url.strip_prefix("sqlite://").map(|p| {
        Path::new(p.split('?').next().unwrap())
            .parent()
            .unwrap()
            .to_owned()
    });

    // Secrets, mounted as files the way the Deployment's projected volume does.
    let secrets = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let master =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    for (file, value) in [
        ("database-url", db.url.as_str()),
        ("identity-key", master.as_str()),
        ("signing-key", signer.seed().as_str()),
    ] {
        std::fs::write(secrets.path().join(file), format!("{value}\n")).unwrap();
    }
    let file = |name: &str| secrets.path().join(name).to_str().unwrap().to_owned();

    // A collector that accepts connections and never answers.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_address = collector.local_addr().unwrap();
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = collector.accept().await {
            held.push(socket);
        }
    });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let internal = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = configmap();
    assert_eq!(
        env["LIANYU_MIGRATE"], "false",
        "replicas leave migrations to the Job"
    );
    env.extend([
        // The pod's own address instead of 0.0.0.0:50051, so tests run side by side.
        ("LIANYU_LISTEN".into(), format!("127.0.0.1:{port}")),
        (
            "LIANYU_INTERNAL_LISTEN".into(),
            format!("127.0.0.1:{internal}"),
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{collector_address}"),
        ),
        ("OTEL_SERVICE_NAME".into(), "lianyu-identity".into()),
        ("DATABASE_URL_FILE".into(), file("database-url")),
        ("LIANYU_IDENTITY_KEY_FILE".into(), file("identity-key")),
        ("LIANYU_SIGNING_KEY_FILE".into(), file("signing-key")),
        // One call slot, so the test can see that its call is in flight on the server.
        ("LIANYU_MAX_CONCURRENT_REQUESTS".into(), "1".into()),
    ]);

    let server = Running(container(&[], &env, writable.as_deref()).spawn().unwrap());
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(channel.clone());
    // Alive (liveness and startup probes pass), not ready: the schema is not there.
    until(&mut health, "", ServingStatus::Serving).await;
    for _ in 0..10 {
        assert_eq!(
            status(&mut health, READY).await,
            Some(ServingStatus::NotServing as i32),
            "ready before the migration Job ran"
        );
    }

    // The migration Job: the same image, environment and root, `--migrate-only`.
    let job = container(&["--migrate-only"], &env, writable.as_deref())
        .status()
        .unwrap();
    assert!(job.success(), "migration job: {job:?}");
    until(&mut health, READY, ServingStatus::Serving).await;
    // Running the Job again (the next rollout's) finds nothing to do.
    let again = container(&["--migrate-only"], &env, writable.as_deref())
        .status()
        .unwrap();
    assert!(again.success());

    // A call in flight: its request message is held back until after SIGTERM.
    let auth = Config::local("unused").auth;
    let token = signer
        .mint(
            &auth,
            &TokenRequest {
                operator: true,
                ..TokenRequest::partner("operator")
            },
        )
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let mut slow = tonic::client::Grpc::new(channel.clone());
    let slow_bearer = bearer.clone();
    let in_flight = tokio::spawn(async move {
        slow.ready().await.unwrap();
        let body = futures::stream::once(async move {
            let _ = held.await;
            pb::ListPartnersRequest::default()
        });
        let mut request = tonic::Request::new(body);
        request.metadata_mut().insert("authorization", slow_bearer);
        slow.client_streaming::<_, pb::ListPartnersRequest, pb::ListPartnersResponse, _>(
            request,
            http::uri::PathAndQuery::from_static("/lianyu.identity.v1.PartnerService/ListPartners"),
            tonic_prost::ProstCodec::default(),
        )
        .await
    });
    // The server holds it once another call finds the one slot taken.
    let mut partners = pb::partner_service_client::PartnerServiceClient::new(channel.clone());
    loop {
        let mut request = tonic::Request::new(pb::ListPartnersRequest::default());
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        match partners.list_partners(request).await {
            Ok(_) => tokio::task::yield_now().await,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => break,
            Err(e) => panic!("{e:?}"),
        }
    }

    let terminated = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Readiness drops at once, while the listener is still open (LIANYU_SHUTDOWN_DELAY).
    until(&mut health, READY, ServingStatus::NotServing).await;
    release.send(()).unwrap();
    let reply = in_flight.await.unwrap();
    assert!(reply.is_ok(), "the in-flight call completes: {reply:?}");

    let mut server = server;
    let exit = loop {
        if let Some(exit) = server.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            terminated.elapsed() < grace,
            "still running after the grace period ({grace:?}): the kubelet would SIGKILL it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    eprintln!(
        "deployment: exited {:?} after SIGTERM (grace {grace:?}, collector hung)",
        terminated.elapsed()
    );
    hung.abort();
}
