//! The built binary as a child process: start-up on the shipped defaults, config errors, the
//! handshake log, and crash consistency under SIGKILL.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const BIN: &str = env!("CARGO_BIN_EXE_obm-gate");

/// A running `obm-gate serve` and the lines it logged.
struct Proc {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(dir: &Path) -> Proc {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", "obm-gate.toml"])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start obm-gate");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let address_in = |line: &str| -> SocketAddr {
            let a = line.split("address=").nth(1).unwrap();
            a.split_whitespace().next().unwrap().parse().unwrap()
        };
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("obm-gate did not log its listening addresses");
            if line.contains("admin listening") {
                admin = Some(address_in(&line));
            } else if line.contains("obm_gate::listener: listening") {
                addr = Some(address_in(&line));
            }
        }
        Proc {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            lines,
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

/// A working directory with the shipped config, pointed at port 0.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/obm-gate.toml"))
            .unwrap();
    let config = shipped
        .replace("address = \"0.0.0.0:8443\"", "address = \"127.0.0.1:0\"")
        .replace("address = \"127.0.0.1:9090\"", "address = \"127.0.0.1:0\"");
    assert_ne!(
        config, shipped,
        "the shipped config should listen on 0.0.0.0:8443"
    );
    std::fs::write(dir.path().join("obm-gate.toml"), config).unwrap();
    std::fs::create_dir_all(dir.path().join("certs/orgs")).unwrap();
    dir
}

fn server_cert(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("certs/server/server.pem")).unwrap()
}

fn stored_ids(dir: &Path) -> BTreeSet<String> {
    let out = Command::new(BIN)
        .args(["messages", "list", "--json", "--config", "obm-gate.toml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            for key in [
                "org_id",
                "action_id",
                "notification_id",
                "object_type",
                "fields",
                "received_at",
                "certificate_sha256",
            ] {
                assert!(v.get(key).is_some(), "{key} missing in {l}");
            }
            v["notification_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn an_invalid_config_exits_64_naming_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[listen]\naddress = \"nowhere\"\n[limits]\nmax_connections = 0\ncolour = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", "bad.toml"])
        .current_dir(dir.path())
        .env("OBM_GATE_LIMITS_MAX_BODY_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "[listen] address",
        "[limits] max_connections",
        "[limits] colour",
        "OBM_GATE_LIMITS_MAX_BODY_BYTES",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
    // Nothing was created: the config is checked before anything else happens.
    assert!(!dir.path().join("certs").exists() && !dir.path().join("data").exists());
}

#[tokio::test]
async fn fresh_start_creates_a_dev_certificate_and_logs_refusals() {
    let dir = workdir();
    let proc = Proc::start(dir.path());
    assert!(
        proc.logged("DEVELOPMENT SERVER CERTIFICATE"),
        "the dev certificate should be announced loudly"
    );
    let stranger = self_signed(Spec::new(Key::EcdsaP256, "stranger"));
    let client = Client::new(proc.addr, &server_cert(dir.path()), Some(&stranger), None);
    assert!(client.post(&message(ORG_A, &[nid(1)])).await.is_err());
    eventually(
        "refusal logged with its reason",
        Duration::from_secs(5),
        || {
            proc.logged("handshake refused")
                && proc.logged("reason=\"unknown\"")
                && proc.logged(&stranger.fingerprint())
        },
    )
    .await;
    proc.kill();
}

#[tokio::test]
async fn every_acknowledged_notification_survives_sigkill() {
    let dir = workdir();
    let id = self_signed(Spec::new(Key::Rsa2048, "sender"));
    write_registered(&dir.path().join("certs/orgs"), ORG_A, "sender", &id);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut next_id = 0usize;

    for cycle in 0..3 {
        let proc = Proc::start(dir.path());
        let client = Client::new(proc.addr, &server_cert(dir.path()), Some(&id), None);
        // Eight concurrent senders stream messages of 1-3 notifications until the kill.
        let mut senders = Vec::new();
        for s in 0..8 {
            let client = client.clone();
            let acked = acked.clone();
            let base = next_id + s * 100_000;
            senders.push(tokio::spawn(async move {
                let Ok(mut conn) = client.connect().await else {
                    return;
                };
                for m in 0.. {
                    let ids: Vec<String> = (0..1 + m % 3).map(|k| nid(base + m * 3 + k)).collect();
                    match conn.post(&message(ORG_A, &ids)).await {
                        Ok(r) if r.is_ack() => acked.lock().unwrap().extend(ids),
                        Ok(r) => panic!("unexpected answer {r:?}"),
                        Err(_) => return, // the process is gone
                    }
                }
            }));
        }
        next_id += 1_000_000;
        let target = (cycle + 1) * 150;
        eventually(
            "acknowledgments before the kill",
            Duration::from_secs(30),
            || acked.lock().unwrap().len() >= target,
        )
        .await;
        proc.kill();
        for s in senders {
            s.await.unwrap();
        }
    }

    let proc = Proc::start(dir.path());
    let stored = stored_ids(dir.path());
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    println!(
        "acknowledged {} notifications over 3 SIGKILLs; {} stored",
        acked.len(),
        stored.len()
    );
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    proc.kill();
}

#[tokio::test]
async fn expiring_certificates_are_logged_and_sighup_reloads() {
    let dir = workdir();
    let orgs = dir.path().join("certs/orgs");
    let soon = |days: i64| {
        let mut spec = Spec::new(Key::EcdsaP256, &format!("{days} days"));
        spec.not_after =
            time::OffsetDateTime::now_utc() + time::Duration::days(days) + time::Duration::hours(1);
        self_signed(spec)
    };
    let warn = soon(20);
    let error = soon(3);
    let fine = soon(200);
    write_registered(&orgs, ORG_A, "warn", &warn);
    write_registered(&orgs, ORG_A, "error", &error);
    write_registered(&orgs, ORG_B, "fine", &fine);
    let proc = Proc::start(dir.path());
    eventually("expiry warnings at start", Duration::from_secs(5), || {
        let lines = proc.lines.lock().unwrap();
        let has = |level: &str, fp: &str| {
            lines
                .iter()
                .any(|l| l.contains(level) && l.contains(fp) && l.contains("expires within"))
        };
        has("WARN", &warn.fingerprint()) && has("ERROR", &error.fingerprint())
    })
    .await;
    assert!(!proc.logged(&format!("certificate={}", fine.fingerprint())));

    let status = Command::new("kill")
        .args(["-HUP", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("reload on SIGHUP", Duration::from_secs(5), || {
        proc.logged("registry reloaded trigger=\"SIGHUP\"")
    })
    .await;
    proc.kill();
}
