//! The `lianyu` binary as a newcomer runs it: `up` prints where it listens, `token` mints a
//! token that the running mesh accepts, SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used, reason = "a test crate")]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use lianyu_kit::testing::{Rpc, call_empty, connect};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use lianyu_kit::testing::TestDatabase;

mod kill_redeem;

const BIN: &str = env!("CARGO_BIN_EXE_lianyu");

/// Kills the mesh if the test fails before stopping it, so no server outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn up_serves_the_mesh_token_mints_for_its_partners_and_sigterm_stops_it() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let db = TestDatabase::new("up_serves").await;
    let up = on_database(&mut Command::new(BIN), &db)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir", dir])
        .env_remove("LIANYU_MODE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = KillOnDrop(up);
    let mut banner = BufReader::new(up.0.stdout.take().unwrap()).lines();
    let first = banner.next().unwrap().unwrap();
    let address = first
        .strip_prefix("lianyu mesh listening on ")
        .unwrap_or_else(|| panic!("banner: {first}"))
        .to_owned();

    // A partner token is minted only for a partner the mesh knows: the demo's, once it has
    // registered them.
    assert!(
        banner.any(|line| line.unwrap().starts_with("demo: done")),
        "the demo finished"
    );
    // The mesh logs to stdout too: keep reading, so that a full pipe never stalls it.
    std::thread::spawn(move || banner.for_each(drop));
    let mint = |args: &[&str]| {
        on_database(&mut Command::new(BIN), &db)
            .args(["token", "--data-dir", dir])
            .args(args)
            .output()
            .unwrap()
    };
    for (args, why) in [
        (
            &["--partner", "aurora-shoe"][..],
            "no partner \"aurora-shoe\" is registered",
        ),
        (
            &[
                "--partner",
                "jade-plaza",
                "--store",
                "partners/jade-plaza/stores/nope",
            ],
            "has no store \"nope\"",
        ),
        (
            &[
                "--partner",
                "aurora-shoes",
                "--store",
                "partners/jade-plaza/stores/cosmetics",
            ],
            "is not a store of partner \"aurora-shoes\"",
        ),
        (
            &[
                "--operator",
                "--store",
                "partners/jade-plaza/stores/cosmetics",
            ],
            "operator",
        ),
    ] {
        let refused = mint(args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{args:?}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(refused.stdout.is_empty(), "{args:?}: no token printed");
    }
    let store = mint(&[
        "--partner",
        "jade-plaza",
        "--store",
        "partners/jade-plaza/stores/cosmetics",
    ]);
    assert!(
        store.status.success(),
        "{}",
        String::from_utf8_lossy(&store.stderr)
    );
    let token = mint(&["--partner", "aurora-shoes"]);
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    let channel = connect(&format!("http://{address}")).await;
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let rpc = Rpc {
        path: "/lianyu.identity.v1.PartnerService/ListPartners".into(),
        server_streaming: false,
    };
    assert_eq!(
        call_empty(channel.clone(), &rpc, None).await.code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        call_empty(channel, &rpc, Some(&token)).await.code(),
        tonic::Code::Ok
    );

    let killed = Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = wait(&mut up.0, Duration::from_secs(10)).await;
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn token_without_a_running_mesh_says_what_to_do() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "token",
            "--operator",
            "--data-dir",
            data.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lianyu up"), "{stderr}");
}

#[test]
fn token_refuses_production_mode() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "token",
            "--operator",
            "--data-dir",
            data.path().to_str().unwrap(),
        ])
        .env("LIANYU_MODE", "production")
        .env(
            "LIANYU_TOKEN_KEYS",
            "k1=11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        )
        .env("DATABASE_URL", "postgres://db/mesh")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("local mode"));
}

#[test]
fn a_bad_environment_value_stops_start_up_naming_it() {
    let out = Command::new(BIN)
        .args(["up"])
        .env("LIANYU_REQUEST_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LIANYU_REQUEST_TIMEOUT"));
}

/// Polls without blocking the runtime, so this process's client can answer the server's
/// GOAWAY ping while the server drains.
async fn wait(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("did not stop within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn keygen_prints_a_signing_key_and_the_pair_that_trusts_it() {
    let out = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let vars: std::collections::HashMap<&str, &str> = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let seed = vars["LIANYU_SIGNING_KEY"];
    let trusted = lianyu_kit::auth::Signer::from_seed(seed)
        .unwrap()
        .trusted_key();
    assert_eq!(
        vars["LIANYU_TOKEN_KEYS"],
        format!("{}={}", trusted.key_id, trusted.public_key)
    );
    // Both lines are accepted as production configuration.
    let vars: std::collections::HashMap<String, String> = vars
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let config = lianyu_kit::Config::from_vars(move |name| match name {
        "LIANYU_MODE" => Some("production".into()),
        "DATABASE_URL" => Some("postgres://db/mesh".into()),
        other => vars.get(other).cloned(),
    })
    .unwrap();
    assert_eq!(config.auth.trusted_keys[0].key_id, trusted.key_id);
}

#[test]
fn token_mints_a_short_bootstrap_token_with_the_production_signing_key() {
    let key = lianyu_kit::auth::Signer::generate();
    let run = |ttl: &str| {
        Command::new(BIN)
            .args(["token", "--operator", "--ttl", ttl])
            .env("LIANYU_MODE", "production")
            .env("LIANYU_SIGNING_KEY", key.seed())
            .env("DATABASE_URL", "postgres://db/mesh")
            .output()
            .unwrap()
    };
    let out = run("15m");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let trusted = key.trusted_key();
    let config = lianyu_kit::Config::from_vars(move |name| match name {
        "LIANYU_TOKEN_KEYS" => Some(format!("{}={}", trusted.key_id, trusted.public_key)),
        _ => None,
    })
    .unwrap();
    let verifier = lianyu_kit::auth::TokenVerifier::new(&config.auth).unwrap();
    assert!(verifier.verify(token.trim()).unwrap().operator);
    let out = run("12h");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 1h"));
}

/// The database `up` runs on: embedded SQLite in its data directory, or — in the PostgreSQL
/// pass (`LIANYU_TEST_BACKEND=postgres`) — a fresh PostgreSQL database, one schema per service.
fn on_database<'a>(command: &'a mut Command, db: &TestDatabase) -> &'a mut Command {
    if lianyu_kit::testing::backend_is_postgres() {
        command.env("DATABASE_URL", &db.url)
    } else {
        command.env_remove("DATABASE_URL")
    }
}

/// The lines `up` prints until one contains `until` (or ten seconds pass), then stops it.
async fn up_output_until(dir: &str, db: &TestDatabase, until: &str) -> Vec<String> {
    let up = on_database(&mut Command::new(BIN), db)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir", dir])
        .env_remove("LIANYU_MODE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = KillOnDrop(up);
    let stdout = up.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let done = line.contains(until);
        lines.push(line);
        if done {
            break;
        }
    }
    Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status()
        .unwrap();
    let exit = wait(&mut up.0, Duration::from_secs(10)).await;
    assert!(exit.success(), "exit status {exit:?}");
    lines
}

#[tokio::test]
async fn up_runs_the_demo_on_a_new_mesh_and_only_there() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let db = TestDatabase::new("up_demo").await;
    let first = up_output_until(dir, &db, "a partner's token:").await;
    let text = first.join("\n");
    for step in [
        "(linked: true)",
        "Jade reads the member: 0 shared profiles",
        "Jade reads again: 1 shared profile (tier \"gold\")",
        "Jade reads again: 0 shared profiles",
        "Jade's access log: 2 reads, 1 allowed",
        "redeems it: ¥50.00 off",
        "partners/aurora-shoes owes partners/jade-plaza ¥50.00",
        "Jade closes the period with Aurora (closed: true, 1 line(s))",
        "Jade accepts Aurora's invitation; they go live from partners/jade-plaza/stores/cosmetics",
        "a viewer joins through Aurora's app",
        "credited to partners/aurora-shoes, partners/jade-plaza/stores/cosmetics",
        "the shopper claims one in Aurora's app: members/",
        "(199 left)",
        "Jade's dashboard: 1 order(s), ¥199.00 gross, 1 by guide line(s)",
        "1 coupon(s) claimed",
        "the campaign's budget burns down as the shopper redeems, from entitlements' ledger: ¥50.00 spent, ¥1450.00 left",
        "its audience export: 1 member(s)",
        "a third message inside the week: CONTACT_DECISION_CAP_REACHED",
        "the campaign report: ¥50.00 spent of ¥1500.00, GMV ¥450.00 (1 order(s)), 1 claim(s), 2 contact(s)",
        "settlement by budget share: partners/jade-plaza owes partners/aurora-shoes ¥16.66",
        "AWARENESS withheld, INTEREST withheld",
        "Jade's export of the same segment now holds 0 member(s)",
        "client_secret lys_",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
    let again = up_output_until(dir, &db, "demo: ").await.join("\n");
    assert!(again.contains("already has partners; skipped"), "{again}");
}

/// `up` on `dir`, and the address it listens on.
fn start_up(dir: &str, db: &TestDatabase) -> (KillOnDrop, String) {
    let up = on_database(&mut Command::new(BIN), db)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir", dir])
        .env_remove("LIANYU_MODE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = KillOnDrop(up);
    let mut banner = BufReader::new(up.0.stdout.take().unwrap()).lines();
    let first = banner.next().unwrap().unwrap();
    let address = first
        .strip_prefix("lianyu mesh listening on ")
        .unwrap_or_else(|| panic!("banner: {first}"))
        .to_owned();
    // The demo's partners are there once it is done (or skipped, on a mesh that has them).
    assert!(
        banner.any(|line| {
            let line = line.unwrap();
            line.starts_with("demo: done") || line.starts_with("demo: this mesh already has")
        }),
        "the demo finished"
    );
    // Keep reading what it prints, so it never writes into a closed pipe.
    std::thread::spawn(move || for _ in banner {});
    (up, format!("http://{address}"))
}

/// A token from `lianyu token`, run as beside `up`: same data directory and database.
fn mint(dir: &str, db: &TestDatabase, args: &[&str]) -> String {
    let out = on_database(&mut Command::new(BIN), db)
        .args(["token", "--data-dir", dir])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn enrolment(i: usize) -> lianyu_proto::identity::v1::EnrollMemberRequest {
    use lianyu_proto::identity::v1 as pb;
    pb::EnrollMemberRequest {
        request_id: format!("kill-{i}"),
        identifiers: vec![pb::Identifier {
            kind: pb::IdentifierKind::Phone as i32,
            value: format!("+86137{i:08}"),
            verified: true,
            ..Default::default()
        }],
        profile: Default::default(),
    }
}

/// Enrolments go through group commit: many share one commit. Killing the process (SIGKILL,
/// no chance to flush anything) while 32 clients enrol as fast as they can loses none that
/// was acknowledged: after a restart each one's reply is replayed unchanged, and its member is
/// there.
#[tokio::test]
async fn no_acknowledged_enrolment_is_lost_when_the_process_is_killed() {
    use lianyu_proto::{
        common::v1::PartnerKind,
        identity::v1::{
            self as pb, member_service_client::MemberServiceClient,
            partner_service_client::PartnerServiceClient,
        },
    };
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let db = TestDatabase::new("kill_enrol").await;
    let (mut up, address) = start_up(dir, &db);
    let channel = connect(&address).await;
    let operator = mint(dir, &db, &["--operator"]);
    PartnerServiceClient::new(channel.clone())
        .create_partner(bearer(
            pb::CreatePartnerRequest {
                request_id: "p".into(),
                partner_id: "kill-brand".into(),
                partner: Some(pb::Partner {
                    kind: PartnerKind::Brand as i32,
                    display_name: "Kill Brand".into(),
                    privacy_contact: "privacy@kill.example".into(),
                    ..Default::default()
                }),
            },
            &operator,
        ))
        .await
        .unwrap();
    let token = mint(dir, &db, &["--partner", "kill-brand"]);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(usize, String)>::new()));
    let mut clients = Vec::new();
    for worker in 0..32 {
        let (channel, token, acked) = (channel.clone(), token.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            let mut members = MemberServiceClient::new(channel);
            for n in 0.. {
                let i = worker * 1_000_000 + n;
                match members.enroll_member(bearer(enrolment(i), &token)).await {
                    Ok(reply) => {
                        let name = reply.into_inner().member.unwrap().name;
                        acked.lock().unwrap().push((i, name));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a few hundred are acknowledged, mid-stream.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = up.0.kill();
    let _ = up.0.wait();
    for client in clients {
        let _ = client.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    let (_up, address) = start_up(dir, &db);
    let mut members = MemberServiceClient::new(connect(&address).await);
    for (i, name) in &acked {
        // The member is there ...
        members
            .get_member(bearer(
                pb::GetMemberRequest {
                    name: name.clone(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap_or_else(|e| panic!("acknowledged enrolment {i} lost: {e:?}"));
        // ... and a retry of the call is answered with the same member, not a second one.
        let again = members
            .enroll_member(bearer(enrolment(*i), &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&again.member.unwrap().name, name, "enrolment {i}");
    }
    eprintln!("{} acknowledged enrolments survived SIGKILL", acked.len());
}

#[test]
fn bench_all_runs_every_scenario_and_a_wrong_name_lists_them() {
    let out = Command::new(BIN).args(["bench", "nope"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for name in [
        "all",
        "bare",
        "baseline",
        "consent-check",
        "batch-consent-check",
        "enroll",
        "idle-streams",
    ] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
    let out = Command::new(BIN)
        .args([
            "bench",
            "all",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--members",
            "20",
            "--batch",
            "10",
            "--streams",
            "20",
            "--hold",
            "200ms",
            "--concurrency",
            "4",
        ])
        .env_remove("LIANYU_MODE")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "bare",
        "baseline",
        "consent-check",
        "batch-consent-check",
        "enroll",
        "idle-streams",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "no {name} line in:\n{text}"
        );
    }
}

#[test]
fn token_never_mints_an_internal_scope_for_a_partner_or_the_operator() {
    let data = tempfile::tempdir().unwrap();
    lianyu_kit::auth::Signer::load_or_create(data.path()).unwrap();
    let dir = data.path().to_str().unwrap();
    for who in [&["--partner", "brand-a"][..], &["--operator"]] {
        for scopes in ["identity.internal", "identity.read,identity.internal"] {
            let out = Command::new(BIN)
                .args(["token", "--data-dir", dir, "--scopes", scopes])
                .args(who)
                .env_remove("LIANYU_MODE")
                .output()
                .unwrap();
            assert!(!out.status.success(), "{who:?} {scopes}");
            assert!(out.stdout.is_empty(), "no token printed");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("internal scope"), "{err}");
        }
    }
}

/// Where the signing key is but identity's database is not (a mesh on PostgreSQL, and a shell
/// without its `DATABASE_URL`), a partner's token is still minted, with a note on stderr
/// saying the partner was not checked and how to have it checked.
#[test]
fn token_says_when_it_could_not_check_the_partner() {
    let data = tempfile::tempdir().unwrap();
    lianyu_kit::auth::Signer::load_or_create(data.path()).unwrap();
    let out = Command::new(BIN)
        .args(["token", "--partner", "aurora-shoes", "--data-dir"])
        .arg(data.path())
        .env_remove("LIANYU_MODE")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "a token printed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was not checked") && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
}
