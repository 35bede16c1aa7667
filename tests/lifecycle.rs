//! Certificate lifecycle: `ca init` / `ca sign` on CSRs made by `openssl req`, `certs add`,
//! `certs check`, rotation, and hot reload of the registry and the server certificate.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

const BIN: &str = env!("CARGO_BIN_EXE_obm-gate");
const WAIT: Duration = Duration::from_secs(5);
/// What Salesforce's "Create CA-Signed Certificate" puts in a CSR's subject.
const SF_SUBJECT: &str = "/CN=obm_client_cert/O=Acme Inc/L=San Francisco/ST=California/C=US";

/// Runs the binary in `dir` with a config that points at `dir`'s certs.
fn obm(dir: &Path, args: &[&str]) -> Output {
    let config = dir.join("obm-gate.toml");
    if !config.exists() {
        std::fs::write(
            &config,
            "[registry]\ndirectory = \"orgs\"\n[ca]\ndirectory = \"ca\"\n[tls]\ncertificate = \"server/server.pem\"\nprivate_key = \"server/server.key\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("orgs")).unwrap();
    }
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(&args[..args.len().min(2)])
        .args(["--config", "obm-gate.toml"]);
    cmd.args(&args[args.len().min(2)..]);
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `openssl req -new`: an RSA-2048 key and a CSR with a Salesforce-like subject.
fn openssl_csr(dir: &Path, name: &str, extra: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", SF_SUBJECT,
        ])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])
        .args(extra)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(out.status.success(), "openssl: {}", text(&out));
}

fn parse_leaf(pem: &str) -> (bool, bool, Vec<String>) {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
    let client_auth = cert
        .extended_key_usage()
        .unwrap()
        .map(|e| e.value.client_auth && !e.value.server_auth);
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|g| g.to_string())
                .collect()
        })
        .unwrap_or_default();
    (cert.is_ca(), client_auth == Some(true), sans)
}

#[tokio::test]
async fn a_salesforce_csr_is_signed_registered_and_acknowledged() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let out = obm(dir, &["ca", "init"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(dir.join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let again = obm(dir, &["ca", "init"]);
    assert!(
        !again.status.success() && text(&again).contains("refusing to overwrite"),
        "{}",
        text(&again)
    );

    openssl_csr(dir, "sf", &[]);
    let out = obm(
        dir,
        &[
            "ca",
            "sign",
            "--org",
            ORG_A15,
            "sf.csr",
            "--out",
            "signed.pem",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("fingerprint")
            && printed.contains("expires")
            && printed.contains("O=Acme Inc"),
        "{printed}"
    );

    // The PEM for Salesforce holds the leaf, then the CA.
    let signed = std::fs::read_to_string(dir.join("signed.pem")).unwrap();
    assert_eq!(signed.matches("BEGIN CERTIFICATE").count(), 2);
    let (is_ca, client_auth_only, sans) = parse_leaf(&signed);
    assert!(
        !is_ca && client_auth_only,
        "must be a clientAuth end entity"
    );
    assert_eq!(sans, vec![format!("URI(urn:obm-gate:org:{ORG_A})")]);

    // A real TLS client presenting the signed certificate (with its openssl key) is acknowledged.
    let server = TestServer::start_with(|c, _| {
        c.registry.directory = dir.join("orgs");
        c.ca.directory = dir.join("ca");
    })
    .await;
    let id = Identity {
        cert_pem: signed.clone(),
        key_pem: std::fs::read_to_string(dir.join("sf.key")).unwrap(),
        der: CertificateDer::pem_slice_iter(signed.as_bytes())
            .next()
            .unwrap()
            .unwrap(),
        chain_pem: signed.clone(),
    };
    server.client(Some(&id)).ack(ORG_A, &[nid(1)]).await;
    // `certs check` agrees.
    std::fs::write(dir.join("leaf.pem"), &signed).unwrap();
    let out = obm(dir, &["certs", "check", "--org", ORG_A, "leaf.pem"]);
    assert!(
        out.status.success() && text(&out).contains("verifies to a configured CA"),
        "{}",
        text(&out)
    );
    server.stop().await;
}

#[test]
fn csrs_cannot_choose_what_they_get() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    assert!(obm(dir, &["ca", "init"]).status.success());

    // A CSR that asks for CA:TRUE still yields an end-entity certificate.
    openssl_csr(
        dir,
        "wants-ca",
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    let out = obm(
        dir,
        &[
            "ca",
            "sign",
            "--org",
            ORG_B,
            "wants-ca.csr",
            "--out",
            "ca-req.pem",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (is_ca, client_auth_only, _) =
        parse_leaf(&std::fs::read_to_string(dir.join("ca-req.pem")).unwrap());
    assert!(!is_ca && client_auth_only);

    // A CSR whose signature is broken is refused.
    openssl_csr(dir, "broken", &[]);
    let pem = std::fs::read(dir.join("broken.csr")).unwrap();
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(&pem)
        .unwrap()
        .as_ref()
        .to_vec();
    let last = der.len() - 10;
    der[last] ^= 0xff; // inside the signature
    std::fs::write(
        dir.join("broken.csr"),
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der)),
    )
    .unwrap();
    let out = obm(dir, &["ca", "sign", "--org", ORG_B, "broken.csr"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("signature does not verify"),
        "{}",
        text(&out)
    );

    // --days beyond the configured maximum is refused.
    let out = obm(
        dir,
        &[
            "ca",
            "sign",
            "--org",
            ORG_B,
            "wants-ca.csr",
            "--days",
            "5000",
        ],
    );
    assert!(
        !out.status.success() && text(&out).contains("max_days"),
        "{}",
        text(&out)
    );
}

#[test]
fn certs_add_check_list_remove() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let write = |name: &str, id: &Identity| std::fs::write(dir.join(name), &id.cert_pem).unwrap();
    let good = self_signed(Spec::new(Key::Rsa2048, "byo").ca_true());
    let stranger = self_signed(Spec::new(Key::EcdsaP256, "stranger"));
    let expired = self_signed(Spec::new(Key::EcdsaP256, "old").expired());
    write("good.pem", &good);
    write("stranger.pem", &stranger);
    write("expired.pem", &expired);
    std::fs::write(dir.join("key.pem"), &good.key_pem).unwrap();

    let out = obm(dir, &["certs", "add", "--org", ORG_A15, "good.pem"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = obm(dir, &["certs", "add", "--org", ORG_A, "expired.pem"]);
    assert!(
        !out.status.success() && text(&out).contains("expired"),
        "{}",
        text(&out)
    );
    let out = obm(dir, &["certs", "add", "--org", ORG_A, "key.pem"]);
    assert!(
        !out.status.success() && text(&out).contains("private key"),
        "{}",
        text(&out)
    );
    let out = obm(dir, &["certs", "add", "--org", ORG_A, "good.pem"]);
    assert!(
        !out.status.success() && text(&out).contains("already registered"),
        "{}",
        text(&out)
    );
    // An expired certificate that is already in the registry (it was valid when added).
    write_registered(&dir.join("orgs"), ORG_A, "old", &expired);

    let verdicts = [
        (
            vec!["certs", "check", "--org", ORG_A, "good.pem"],
            true,
            "ACCEPT",
        ),
        (
            vec!["certs", "check", "stranger.pem"],
            false,
            "registered: no",
        ),
        (vec!["certs", "check", "expired.pem"], false, "expired on"),
        (
            vec!["certs", "check", "--org", ORG_B, "good.pem"],
            false,
            "not registered for 00D1I000003qqqEUAQ",
        ),
    ];
    for (args, ok, needle) in verdicts {
        let out = obm(dir, &args);
        assert_eq!(out.status.success(), ok, "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }

    let out = obm(dir, &["certs", "list", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out));
    assert!(lines.iter().all(|l| l["org_id"] == ORG_A));
    assert!(
        lines
            .iter()
            .any(|l| l["fingerprint"] == good.fingerprint() && l["kind"] == "self-signed")
    );
    let out = obm(dir, &["certs", "list", "--expiring-within", "0"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains(&expired.fingerprint()) && !listed.contains(&good.fingerprint()),
        "{listed}"
    );

    let out = obm(
        dir,
        &["certs", "remove", "--fingerprint", &good.fingerprint()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = obm(dir, &["certs", "check", "good.pem"]);
    assert!(!out.status.success());
}

/// `certs revoke` records the revocation and removes the certificate's files; a revoked
/// certificate cannot be added again, `certs check` names the revocation, and a second revoke
/// says when the first was. `certs unrevoke` lifts one revocation and leaves the others.
#[test]
fn certs_revoke() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let cert = self_signed(Spec::new(Key::Rsa2048, "lost laptop"));
    std::fs::write(dir.join("cert.pem"), &cert.cert_pem).unwrap();
    let out = obm(dir, &["certs", "add", "--org", ORG_A, "cert.pem"]);
    assert!(out.status.success(), "{}", text(&out));
    let fp = cert.fingerprint();

    let revoke = |reason: &str| {
        obm(
            dir,
            &["certs", "revoke", "--fingerprint", &fp, "--reason", reason],
        )
    };
    let out = revoke("laptop lost");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("revoked {fp} (CN=lost laptop")),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("removed "), "{}", text(&out));
    let list = std::fs::read_to_string(dir.join("orgs/revoked.toml")).unwrap();
    assert!(list.contains(&fp) && list.contains("laptop lost"), "{list}");
    assert!(
        std::fs::read_dir(dir.join("orgs").join(ORG_A))
            .unwrap()
            .next()
            .is_none()
    );

    let refusals = [
        (
            vec!["certs", "add", "--org", ORG_A, "cert.pem"],
            "was revoked on",
        ),
        (vec!["certs", "check", "cert.pem"], "[FAIL] revoked: on"),
    ];
    for (args, needle) in refusals {
        let out = obm(dir, &args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("laptop lost"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = revoke("again");
    assert!(
        !out.status.success() && text(&out).contains("is already revoked, since"),
        "{}",
        text(&out)
    );
    let out = revoke(" ");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    // A fingerprint never registered can be revoked ahead (say, from a leaked copy).
    let other = self_signed(Spec::new(Key::EcdsaP256, "leaked"));
    let out = obm(
        dir,
        &[
            "certs",
            "revoke",
            "--fingerprint",
            &other.fingerprint(),
            "--reason",
            "leaked",
        ],
    );
    assert!(
        out.status.success() && text(&out).contains("it was not registered to any org"),
        "{}",
        text(&out)
    );
    let list = std::fs::read_to_string(dir.join("orgs/revoked.toml")).unwrap();
    assert!(
        list.contains(&fp) && list.contains(&other.fingerprint()),
        "{list}"
    );
    let out = obm(dir, &["certs", "list", "--revoked", "--json"]);
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{}", text(&out));
    let revoked: Vec<(&str, &str)> = listed
        .iter()
        .map(|l| {
            (
                l["fingerprint"].as_str().unwrap(),
                l["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        revoked.contains(&(fp.as_str(), "laptop lost")),
        "{revoked:?}"
    );
    assert!(
        revoked.contains(&(other.fingerprint().as_str(), "leaked")),
        "{revoked:?}"
    );
    // The registered list no longer has it.
    let out = obm(dir, &["certs", "list"]);
    assert!(!text(&out).contains(&fp), "{}", text(&out));

    // A revocation made by mistake is lifted; the other stays, and the certificate can be added.
    let unrevoke = || obm(dir, &["certs", "unrevoke", "--fingerprint", &fp]);
    let out = unrevoke();
    assert!(
        out.status.success()
            && text(&out).contains(&format!("lifted the revocation of {fp} (CN=lost laptop"))
            && text(&out).contains("(laptop lost)"),
        "{}",
        text(&out)
    );
    let list = std::fs::read_to_string(dir.join("orgs/revoked.toml")).unwrap();
    assert!(
        !list.contains(&fp) && list.contains(&other.fingerprint()),
        "{list}"
    );
    let out = unrevoke();
    assert!(
        !out.status.success() && text(&out).contains("is not revoked"),
        "{}",
        text(&out)
    );
    let out = obm(dir, &["certs", "add", "--org", ORG_A, "cert.pem"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = obm(dir, &["certs", "list"]);
    assert!(text(&out).contains(&fp), "{}", text(&out));
}

#[tokio::test]
async fn the_registry_reloads_while_serving() {
    let server = TestServer::start().await;
    let a = self_signed(Spec::new(Key::EcdsaP256, "a"));
    let a2 = self_signed(Spec::new(Key::Rsa2048, "a rotated"));
    let b = self_signed(Spec::new(Key::EcdsaP256, "b"));
    let orgs = server.orgs_dir();

    // Copied into the directory, without telling the server: accepted within 5 s.
    let a_path = write_registered(&orgs, ORG_A, "a", &a);
    write_registered(&orgs, ORG_B, "b", &b);
    let client_a = server.client(Some(&a));
    let client_b = server.client(Some(&b));
    accepted_within(&client_a, ORG_A, 1).await;
    accepted_within(&client_b, ORG_B, 2).await;

    // Rotation: a second certificate for the same org works alongside the first.
    write_registered(&orgs, ORG_A, "a2", &a2);
    accepted_within(&server.client(Some(&a2)), ORG_A, 3).await;

    // A malformed file leaves everyone else working.
    std::fs::write(
        orgs.join(ORG_B).join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    std::fs::write(orgs.join(ORG_B).join("key.pem"), &b.key_pem).unwrap();
    let mut open_a = client_a.connect().await.unwrap();
    open_a.ack(ORG_A, &[nid(4)]).await;
    client_b.ack(ORG_B, &[nid(5)]).await;

    // Removed: refused within 5 s on a new connection and on the one already open.
    std::fs::remove_file(&a_path).unwrap();
    let mut n = 100;
    eventually_async(
        "removed certificate refused on the open connection",
        WAIT,
        async || {
            n += 1;
            open_a
                .post(&message(ORG_A, &[nid(n)]))
                .await
                .map(|r| r.status == 403)
                .unwrap_or(false)
        },
    )
    .await;
    let fresh = server.client(Some(&a)); // no cached session: a full handshake
    assert!(
        fresh.post(&message(ORG_A, &[nid(200)])).await.is_err(),
        "new handshakes must fail"
    );
    // A client that resumes its earlier session gets past TLS, but not past the request check.
    let resumed = client_a.post(&message(ORG_A, &[nid(199)])).await.unwrap();
    assert_eq!(resumed.status, 403, "{resumed:?}");
    assert!(
        server
            .client(Some(&a2))
            .post(&message(ORG_A, &[nid(201)]))
            .await
            .unwrap()
            .is_ack()
    );
    // What was refused was not stored (what was acknowledged before the reload landed was).
    let stored: Vec<String> = server
        .stored()
        .into_iter()
        .map(|s| s.notification_id)
        .collect();
    for refused in [nid(n), nid(199), nid(200)] {
        assert!(
            !stored.contains(&refused),
            "{refused} was refused but stored: {stored:?}"
        );
    }
    server.stop().await;
}

/// A revoked certificate is refused by name: on the connection already open (403, the fault
/// says revoked, when and why), on a resumed session, at a new handshake (counted as
/// `revoked`), and still when a copy of it is put back in an org directory. A revocation list
/// that cannot be read un-revokes nothing: the reload fails and the registry in force stays.
#[tokio::test]
async fn a_revoked_certificate_is_refused_by_name() {
    let server = TestServer::start().await;
    let a = self_signed(Spec::new(Key::EcdsaP256, "a"));
    let orgs = server.orgs_dir();
    write_registered(&orgs, ORG_A, "a", &a);
    server.state.registry.reload().unwrap();
    let client = server.client(Some(&a));
    let mut open = client.connect().await.unwrap();
    open.ack(ORG_A, &[nid(1)]).await;

    let fp = obm_gate::ids::Fingerprint::parse(&a.fingerprint()).unwrap();
    let done = obm_gate::registry::revoke(&orgs, &fp, "key compromised", 1_796_000_000).unwrap();
    assert_eq!(done.orgs.len(), 1);
    assert_eq!(done.removed.len(), 1);
    // (The watcher reloads too; this makes the next request see the revocation.)
    server.state.registry.reload().unwrap();
    let refusal = open.post(&message(ORG_A, &[nid(2)])).await.unwrap();
    assert_eq!(refusal.status, 403, "{refusal:?}");
    let fault = refusal.faultstring();
    assert!(
        fault.contains("was revoked on 2026-11-30") && fault.contains("key compromised"),
        "{fault}"
    );
    let metrics = &server.state.metrics;
    assert_eq!(metrics.requests_with(403, "certificate_revoked"), 1);
    // A new connection that resumes the earlier session skips the certificate check of the
    // handshake: the request check refuses it by name.
    let resumed = client.post(&message(ORG_A, &[nid(3)])).await.unwrap();
    assert_eq!(resumed.status, 403, "{resumed:?}");
    let fault = resumed.faultstring();
    assert!(fault.contains("was revoked on 2026-11-30"), "{fault}");
    assert_eq!(metrics.requests_with(403, "certificate_revoked"), 2);

    // A full handshake is refused, and counted as revoked, not as unknown.
    let fresh = || server.client(Some(&a));
    assert!(fresh().post(&message(ORG_A, &[nid(100)])).await.is_err());
    eventually("the handshake counted", WAIT, || {
        metrics.handshakes_with("refused", "revoked") == 1
    })
    .await;
    // A copy put back is not loaded.
    write_registered(&orgs, ORG_A, "a-again", &a);
    let snapshot = server.state.registry.reload().unwrap();
    assert!(snapshot.get(&fp).is_none());
    assert!(
        snapshot
            .problems
            .iter()
            .any(|p| p.reason.contains("was revoked on")),
        "{:?}",
        snapshot.problems
    );
    assert!(fresh().post(&message(ORG_A, &[nid(101)])).await.is_err());
    eventually("the second handshake counted", WAIT, || {
        metrics.handshakes_with("refused", "revoked") == 2
    })
    .await;
    // A broken list fails the reload; the revocation stays in force.
    std::fs::write(
        orgs.join("revoked.toml"),
        "[[certificate]]\nfingerprint = 1\n",
    )
    .unwrap();
    let err = server.state.registry.reload().unwrap_err().to_string();
    assert!(err.contains("revoked.toml cannot be read"), "{err}");
    assert!(fresh().post(&message(ORG_A, &[nid(102)])).await.is_err());
    eventually("the third handshake counted", WAIT, || {
        metrics.handshakes_with("refused", "revoked") == 3
    })
    .await;
    assert_eq!(metrics.handshakes_with("refused", "unknown"), 0);
    let stored: Vec<String> = server
        .stored()
        .into_iter()
        .map(|s| s.notification_id)
        .collect();
    assert_eq!(stored, [nid(1)]);
    server.stop().await;
}

async fn accepted_within(client: &Client, org: &str, id: usize) {
    eventually_async(
        "certificate accepted after being copied in",
        WAIT,
        async || {
            client
                .post(&message(org, &[nid(id)]))
                .await
                .map(|r| r.is_ack())
                .unwrap_or(false)
        },
    )
    .await;
}

#[tokio::test]
async fn a_server_certificate_swapped_on_disk_is_served_to_new_connections() {
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let mut old_conn = server.client(Some(&id)).connect().await.unwrap();

    // A new certificate and key for localhost, written next to the old ones and renamed in.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rotated server");
    let cert = params.self_signed(&key).unwrap();
    let server_dir = server.dir.path().join("server");
    std::fs::write(server_dir.join("new.key"), key.serialize_pem()).unwrap();
    std::fs::write(server_dir.join("new.pem"), cert.pem()).unwrap();
    std::fs::rename(server_dir.join("new.key"), server_dir.join("server.key")).unwrap();
    std::fs::rename(server_dir.join("new.pem"), server_dir.join("server.pem")).unwrap();

    // A client that trusts only the new certificate gets through once it is picked up.
    let trusting_new = Client::new(server.addr, cert.der(), Some(&id), None);
    eventually_async("the new server certificate is served", WAIT, async || {
        trusting_new
            .post(&message(ORG_A, &[nid(1)]))
            .await
            .map(|r| r.is_ack())
            .unwrap_or(false)
    })
    .await;
    // The connection made before the swap keeps working.
    old_conn.ack(ORG_A, &[nid(2)]).await;
    // A broken replacement leaves the current certificate in place.
    std::fs::write(server_dir.join("server.pem"), "garbage").unwrap();
    server.state.registry.reload().unwrap();
    obm_gate::reload::reload(
        &server.state,
        &server.server,
        obm_gate::reload::Trigger::Hangup,
    )
    .await;
    trusting_new.ack(ORG_A, &[nid(3)]).await;
    server.stop().await;
}

use std::os::unix::fs::PermissionsExt;
