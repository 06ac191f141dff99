//! An OK means committed, even around a full disk: SQLite on a real small filesystem (a tmpfs
//! this test mounts), filled until writes fail, freed, filled again — and every enrolment that
//! was answered OK is there afterwards, while the service runs and after a restart.

use std::{path::PathBuf, process::Command};

use lianyu_kit::Config;
use lianyu_proto::identity::v1::{self as pb, member_service_client::MemberServiceClient};
use tonic::{Code, codegen::InterceptedService, transport::Channel};

use crate::harness::{Bearer, enroll, phone};

/// A tmpfs mounted for the test, unmounted (lazily, the server may still hold files) on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// A tmpfs of `bytes`, or `None` (with the reason printed) where this process may not mount
    /// one. Under CI (`CI=true`) not being able to mount is a failure, never a skip.
    fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            other => {
                let why = format!("cannot mount a tmpfs here: {other:?}");
                assert!(
                    std::env::var("CI").map_or(true, |v| v != "true"),
                    "{why} (CI needs root)"
                );
                eprintln!("skipped: {why}");
                None
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Fills the free space but `keep` bytes with a ballast file.
    fn fill(&self, keep: u64) {
        let free = fs_free(&self.path());
        let size = free.saturating_sub(keep);
        let ballast = self
            .path()
            .join(format!("ballast-{}", uuid::Uuid::new_v4()));
        let status = Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(&ballast)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Deletes every ballast file.
    fn free(&self) {
        for entry in std::fs::read_dir(self.path()).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ballast-")
            {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn fs_free(path: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

type Members = MemberServiceClient<InterceptedService<Channel, Bearer>>;

/// The service on `config`, a client of it, and a stop that returns once it has stopped.
async fn start(config: &Config) -> (Members, impl AsyncFnOnce()) {
    crate::harness::show_server_logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let running = tokio::spawn(lianyu_identity::run(config.clone(), listener, async move {
        stopped.cancelled().await;
    }));
    let channel = lianyu_kit::testing::connect(&address).await;
    let token = lianyu_kit::testing::mint(
        &config.data_dir,
        &config.auth,
        &lianyu_kit::testing::partner_token("brand-a"),
    );
    let client = MemberServiceClient::new(InterceptedService::new(channel, Bearer::new(&token)));
    (client, async move || {
        stop.cancel();
        running.await.unwrap().unwrap();
    })
}

/// Enrols numbered people until one enrolment fails; returns the numbers answered OK and the
/// failing code.
async fn enrol_until_refused(
    members: &mut Members,
    next: &mut u32,
    limit: u32,
) -> (Vec<u32>, Option<Code>) {
    let mut ok = Vec::new();
    for _ in 0..limit {
        let n = *next;
        *next += 1;
        let note = "x".repeat(900);
        let request = enroll(
            &format!("r{n}"),
            vec![phone(&format!("1390000{n:04}"), true)],
            &[("note", &note)],
        );
        match members.enroll_member(request).await {
            Ok(_) => ok.push(n),
            Err(e) => return (ok, Some(e.code())),
        }
    }
    (ok, None)
}

#[tokio::test]
async fn nothing_answered_ok_is_lost_when_the_disk_fills_and_frees_again() {
    if lianyu_kit::testing::backend_is_postgres() {
        eprintln!("skipped: the full-disk test is about the embedded SQLite");
        return;
    }
    // Room, once freed, for SQLite's write-ahead log (it starts over near 4 MB, a little past
    // that on a loaded machine) beside the database: what is tested is the full disk, not a
    // disk too small to work on.
    let Some(disk) = SmallDisk::mount(32 * 1024 * 1024) else {
        return;
    };
    let mut config = Config::local(disk.path());
    config.set_database_url(
        "identity",
        format!("sqlite://{}/identity.db?mode=rwc", disk.path().display()),
    );
    let (mut members, stop) = start(&config).await;
    let mut next = 0;
    let (mut acknowledged, _) = enrol_until_refused(&mut members, &mut next, 50).await;
    assert_eq!(acknowledged.len(), 50, "a first batch with room to spare");

    // Three rounds: fill the disk until an enrolment is refused, free it, enrol more.
    for round in 0..3 {
        disk.fill(64 * 1024);
        let (ok, refused) = enrol_until_refused(&mut members, &mut next, 2_000).await;
        assert_eq!(
            refused,
            Some(Code::ResourceExhausted),
            "round {round}: a full disk is STORAGE_FULL"
        );
        acknowledged.extend(ok);
        disk.free();
        let (ok, refused) = enrol_until_refused(&mut members, &mut next, 40).await;
        assert_eq!(
            refused, None,
            "round {round}: writes resume once space is free"
        );
        acknowledged.extend(ok);
    }

    let missing = |members: &mut Members, numbers: Vec<u32>| {
        let mut members = members.clone();
        async move {
            let mut missing = Vec::new();
            for n in numbers {
                let found = members
                    .resolve_member(pb::ResolveMemberRequest {
                        identifier: Some(phone(&format!("1390000{n:04}"), true)),
                    })
                    .await;
                if found.is_err() {
                    missing.push(n);
                }
            }
            missing
        }
    };
    let lost = missing(&mut members, acknowledged.clone()).await;
    assert!(
        lost.is_empty(),
        "acknowledged but missing while running: {lost:?}"
    );

    // After a clean restart too: what was answered OK was committed.
    stop().await;
    let (mut members, _stop) = start(&config).await;
    let lost = missing(&mut members, acknowledged.clone()).await;
    assert!(
        lost.is_empty(),
        "acknowledged but missing after a restart: {lost:?}"
    );
}
