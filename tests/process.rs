//! The built binary as a child process: start-up on the shipped defaults, config errors, the
//! handshake log, and crash consistency under SIGKILL.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

use common::process::*;

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

#[test]
fn a_start_that_fails_says_why_once_and_exits_1() {
    // No registry directory: the receiver cannot start.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env("OBM_GATE_LISTEN_ADDRESS", "127.0.0.1:0")
        .env("OBM_GATE_ADMIN_ADDRESS", "127.0.0.1:0")
        .env("OBM_GATE_REGISTRY_DIRECTORY", "no-such-dir")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let said = err
        .lines()
        .filter(|l| l.starts_with("obm-gate: "))
        .collect::<Vec<_>>();
    assert_eq!(
        said,
        [
            "obm-gate: registry: cannot read the registry directory no-such-dir: \
          No such file or directory (os error 2)"
        ],
        "{err}"
    );
    // Nothing else is blamed first: the directory is checked before it is watched.
    assert!(!err.contains("cannot watch"), "{err}");
}

#[tokio::test]
async fn fresh_start_creates_a_dev_certificate_and_logs_refusals() {
    let dir = workdir();
    let proc = Proc::start(dir.path());
    assert!(
        proc.logged("DEVELOPMENT SERVER CERTIFICATE"),
        "the dev certificate should be announced loudly"
    );
    assert_eq!(http_get(proc.admin, "/healthz").await.0, 200);
    // Ready once its first store probe commits; on a loaded CI disk that fsync can be slow.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, why) = http_get(proc.admin, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready: {status} {why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// A small deterministic generator for the kill moments; the seed is printed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn every_acknowledged_notification_survives_sigkill() {
    const CYCLES: usize = 20;
    let dir = workdir();
    let id = self_signed(Spec::new(Key::Rsa2048, "sender"));
    write_registered(&dir.path().join("certs/orgs"), ORG_A, "sender", &id);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill-moment seed {seed}");
    let mut rng = XorShift(seed);

    for cycle in 0..CYCLES {
        let proc = Proc::start(dir.path());
        let client = Client::new(proc.addr, &server_cert(dir.path()), Some(&id), None);
        // Eight concurrent senders stream messages of 1-3 notifications until the kill.
        let mut senders = Vec::new();
        for s in 0..8 {
            let client = client.clone();
            let acked = acked.clone();
            let base = cycle * 1_000_000 + s * 100_000;
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
        // Kill at a random moment: after 1 to 300 more acknowledgments.
        let target = acked.lock().unwrap().len() + 1 + rng.below(300) as usize;
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
        "acknowledged {} notifications over {CYCLES} SIGKILLs; {} stored",
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

    proc.signal("-HUP");
    eventually("reload on SIGHUP", Duration::from_secs(5), || {
        proc.logged("registry reloaded trigger=\"SIGHUP\"")
    })
    .await;
    proc.kill();
}

/// The server's own certificate is watched like the clients': the first certificate of its
/// chain to expire is logged at start (an error within `expiry_error_days`) and exported; a
/// reload that finds the same files changes nothing, a key made readable by all is reported
/// without a restart, and a renewed certificate is served, said in the log and the metric
/// moved. (`tests/lifecycle.rs` shows that new handshakes get the renewed certificate.)
#[tokio::test]
async fn the_server_certificate_expiry_is_logged_and_a_renewal_served() {
    use std::os::unix::fs::PermissionsExt;
    let dir = workdir();
    let server_dir = dir.path().join("certs/server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let ca = Ca::new("Server CA");
    let leaf = ca.issue_loopback_server("gate.example");
    // An intermediate that expires before the leaf: the chain stops working then.
    let mut spec = Spec::new(Key::EcdsaP256, "Expiring Intermediate").ca_true();
    spec.not_after =
        time::OffsetDateTime::now_utc() + time::Duration::days(3) + time::Duration::hours(1);
    let intermediate = self_signed(spec);
    let install = |id: &Identity, extra: &str, mode: u32| {
        let key = server_dir.join("new.key");
        std::fs::write(&key, &id.key_pem).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::write(
            server_dir.join("new.pem"),
            format!("{}{extra}", id.cert_pem),
        )
        .unwrap();
        std::fs::rename(key, server_dir.join("server.key")).unwrap();
        std::fs::rename(server_dir.join("new.pem"), server_dir.join("server.pem")).unwrap();
    };
    install(&leaf, &intermediate.cert_pem, 0o600);
    let proc = Proc::start(dir.path());
    eventually(
        "the server certificate's error",
        Duration::from_secs(5),
        || proc.logged("the server certificate (its chain's CN=Expiring Intermediate"),
    )
    .await;
    assert!(
        proc.logged(&format!("certificate={}", leaf.fingerprint())),
        "{:?}",
        proc.lines
    );
    let series = "obm_gate_server_certificate_expiry_timestamp_seconds";
    let (_, metrics) = http_get(proc.admin, "/metrics").await;
    let soon = x509_not_after(&intermediate);
    assert_eq!(metric(&metrics, series), soon as f64, "{metrics}");

    proc.signal("-HUP");
    eventually("reload on SIGHUP", Duration::from_secs(5), || {
        proc.logged("registry reloaded trigger=\"SIGHUP\"")
    })
    .await;
    assert!(
        !proc.logged("server certificate replaced"),
        "{:?}",
        proc.lines
    );
    let loose = "[tls] private_key: every user of this machine can read";
    assert!(!proc.logged(loose), "{:?}", proc.lines);

    // The key made readable by all, and nothing else changed: the watcher's reload says so.
    let key = server_dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    eventually("the loose key reported", Duration::from_secs(10), || {
        proc.logged(loose)
    })
    .await;
    assert!(
        !proc.logged("server certificate replaced"),
        "{:?}",
        proc.lines
    );

    let renewed = ca.issue_loopback_server("gate.example");
    install(&renewed, "", 0o600);
    eventually("the renewal served", Duration::from_secs(10), || {
        proc.logged("server certificate replaced: new handshakes get it")
    })
    .await;
    let (_, metrics) = http_get(proc.admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, series),
        x509_not_after(&renewed) as f64,
        "{metrics}"
    );
    proc.kill();
}

/// The server's chain and the client certificates are warned about by thresholds of their own:
/// `[tls]` for the one, `[registry]` for the others. Both expire in 20 days here, and each
/// warning names the threshold it was judged by: 21 days for the server's, 25 for the client's.
#[tokio::test]
async fn the_server_and_the_clients_have_expiry_thresholds_of_their_own() {
    let dir = workdir();
    let server_dir = dir.path().join("certs/server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let ca = Ca::new("Server CA");
    let in_20_days = |cn: &str| {
        let mut spec = Spec::new(Key::EcdsaP256, cn);
        spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(20);
        ca.issue(spec)
    };
    let server = in_20_days("gate.example");
    std::fs::write(server_dir.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(server_dir.join("server.key"), &server.key_pem).unwrap();
    let client = in_20_days("Expiring Client");
    write_registered(&dir.path().join("certs/orgs"), ORG_A, "sender", &client);
    let proc = Proc::start_with_env(
        dir.path(),
        &[
            ("OBM_GATE_TLS_EXPIRY_WARNING_DAYS", "21"),
            ("OBM_GATE_REGISTRY_EXPIRY_WARNING_DAYS", "25"),
        ],
    );
    // Each warning on a line of its own that names its certificate.
    let warned = |warning: &str, fingerprint: &str| {
        let fingerprint = format!("certificate={fingerprint}");
        let lines = proc.lines.lock().unwrap();
        lines
            .iter()
            .any(|l| l.contains(warning) && l.contains(&fingerprint))
    };
    let (server, client) = (server.fingerprint(), client.fingerprint());
    eventually("both warnings", Duration::from_secs(5), || {
        warned("the server certificate expires within 21 days", &server)
            && warned("client certificate expires within 25 days", &client)
    })
    .await;
    proc.kill();
}

/// A certificate's notAfter, Unix seconds.
fn x509_not_after(id: &Identity) -> i64 {
    obm_gate::registry::CertInfo::from_der(id.der.clone())
        .unwrap()
        .not_after
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = workdir();
    let id = self_signed(Spec::new(Key::EcdsaP256, "slow"));
    write_registered(&dir.path().join("certs/orgs"), ORG_A, "slow", &id);
    let proc = Proc::start(dir.path());
    let client = Client::new(proc.addr, &server_cert(dir.path()), Some(&id), None);
    let mut tls = client.connect_raw().await.unwrap();
    let body = message(ORG_A, &[nid(77)]);
    let head = post_head(body.len());
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..body.len() / 2]).await.unwrap();
    tls.flush().await.unwrap();
    // The request is in flight once the server has its header (and waits for the body).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(
        &http_get(proc.admin, "/metrics").await.1,
        "obm_gate_requests_in_flight",
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    proc.signal("-TERM");
    eventually("shutdown begins", Duration::from_secs(5), || {
        proc.logged("shutting down")
    })
    .await;
    // The rest of the body arrives after the signal; the request still completes.
    tls.write_all(&body[body.len() / 2..]).await.unwrap();
    tls.flush().await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(obm_gate::soap::ACK), "{response}");
    assert_eq!(proc.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(stored_ids(dir.path()).contains(&nid(77)));
}

/// `store compact` refuses the store of a running receiver (exit 1, saying to stop it), and
/// compacts it once the receiver has stopped, keeping what was stored.
#[tokio::test]
async fn store_compact_waits_for_the_receiver_to_stop() {
    let dir = workdir();
    let id = self_signed(Spec::new(Key::EcdsaP256, "compact"));
    write_registered(&dir.path().join("certs/orgs"), ORG_A, "compact", &id);
    let proc = Proc::start(dir.path());
    let client = Client::new(proc.addr, &server_cert(dir.path()), Some(&id), None);
    client.ack(ORG_A, &[nid(1), nid(2)]).await;
    let compact = || {
        Command::new(BIN)
            .current_dir(dir.path())
            .args(["store", "compact", "--config", "obm-gate.toml"])
            .output()
            .unwrap()
    };
    let out = compact();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stop the receiver"), "{err}");

    proc.signal("-TERM");
    assert_eq!(proc.wait_exit(Duration::from_secs(10)), Some(0));
    let out = compact();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("pages 16384 -> 16384 bytes, 2 notifications"),
        "{said}"
    );
    assert_eq!(stored_ids(dir.path()), BTreeSet::from([nid(1), nid(2)]));
}

#[tokio::test]
async fn send_exits_0_on_ack_and_1_on_a_fault() {
    let dir = workdir();
    let id = self_signed(Spec::new(Key::Rsa2048, "sender"));
    write_registered(&dir.path().join("certs/orgs"), ORG_A, "sender", &id);
    std::fs::write(dir.path().join("c.pem"), &id.cert_pem).unwrap();
    std::fs::write(dir.path().join("k.pem"), &id.key_pem).unwrap();
    let p12 = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "pkcs12",
            "-export",
            "-in",
            "c.pem",
            "-inkey",
            "k.pem",
            "-out",
            "c.p12",
            "-passout",
            "pass:s3cret",
        ])
        .output()
        .unwrap();
    assert!(
        p12.status.success(),
        "{}",
        String::from_utf8_lossy(&p12.stderr)
    );
    let proc = Proc::start(dir.path());
    let url = format!("https://localhost:{}/obm", proc.addr.port());
    let send = |args: &[&str]| {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["send", "--url", &url, "--ca", "certs/server/server.pem"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = send(&[
        "--cert", "c.pem", "--key", "k.pem", "--sample", "--org", ORG_A15,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("HTTP 200") && out.contains("Ack: true") && out.contains("TLS TLSv1.3 TLS13_"),
        "{out}"
    );

    let (code, out) = send(&[
        "--cert",
        "c.p12",
        "--password",
        "s3cret",
        "tests-fixture-unused.xml",
    ]);
    assert_eq!(code, Some(64), "a missing file is a usage error: {out}");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/obm/amplabs_account_null_field_omitted.xml"
    );
    let (code, out) = send(&["--cert", "c.p12", "--password", "s3cret", fixture]);
    assert_eq!(code, Some(0), "PKCS#12: {out}");

    let (code, out) = send(&[
        "--cert", "c.pem", "--key", "k.pem", "--sample", "--org", ORG_B,
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("HTTP 403") && out.contains("fault: soapenv:Client: OrganizationId"),
        "{out}"
    );
    proc.kill();
}

#[tokio::test]
async fn json_request_logs_carry_the_fields_and_no_session_id() {
    let dir = workdir();
    let id = self_signed(Spec::new(Key::EcdsaP256, "json"));
    write_registered(&dir.path().join("certs/orgs"), ORG_A, "json", &id);
    let proc = Proc::start_with_env(dir.path(), &[("OBM_GATE_LOG_FORMAT", "json")]);
    let client = Client::new(proc.addr, &server_cert(dir.path()), Some(&id), None);
    let secret = "00Dxx0000001gPF!AQsAQSECRETSESSIONVALUE";
    let body = String::from_utf8(message(ORG_A, &[nid(5)]))
        .unwrap()
        .replace(
            r#"<SessionId xsi:nil="true"/>"#,
            &format!("<SessionId>{secret}</SessionId>"),
        );
    assert!(client.post(body.as_bytes()).await.unwrap().is_ack());
    eventually("request logged", Duration::from_secs(5), || {
        proc.logged(r#""message":"request""#)
    })
    .await;
    let lines = proc.lines.lock().unwrap().clone();
    let line = lines
        .iter()
        .find(|l| l.contains(r#""message":"request""#))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(
        v["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(v["certificate"], id.fingerprint());
    assert_eq!(v["org"], ORG_A);
    assert_eq!(v["action"], "04kxx00000000blCAA");
    assert_eq!(v["notifications"], 1);
    assert_eq!(v["outcome"], "ack");
    assert!(v["duration_ms"].as_f64().is_some(), "{line}");
    assert!(
        lines.iter().all(|l| !l.contains("SECRETSESSION")),
        "a session ID was logged"
    );

    // messages show and list --since / --limit.
    let show = Command::new(BIN)
        .current_dir(dir.path())
        .args(["messages", "show", "--config", "obm-gate.toml", &nid(5)])
        .output()
        .unwrap();
    assert!(show.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["org_id"], ORG_A);
    assert!(!String::from_utf8_lossy(&show.stdout).contains("SECRETSESSION"));
    let list = |since: &str| {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args([
                "messages",
                "list",
                "--config",
                "obm-gate.toml",
                "--since",
                since,
                "--limit",
                "5",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(list("1h"), 1);
    assert_eq!(list("2999-01-01T00:00:00Z"), 0);
    proc.kill();
}
