//! JetStream publishing against the real NATS server on 127.0.0.1:4222 (`.ci/run` starts it).
//! Each test uses a stream and subject of its own. A TCP proxy in front of NATS lets a test make
//! it unreachable without stopping the shared server. The TLS tests start a `nats-server` of their
//! own (`.ci/run` installs it), one that verifies client certificates and a password.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::tcp_proxy::Proxy;
use common::*;
use obm_gate::config::JetStreamMode;
use obm_gate::reload::{Trigger, reload};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const NATS: &str = "127.0.0.1:4222";

/// A unique stream name and subject for one test.
fn names(test: &str) -> (String, String) {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    let tag = format!("{test}_{}_{n}", std::process::id());
    (format!("OBM_T_{tag}"), format!("obmtest.{tag}"))
}

async fn context() -> jetstream::Context {
    let client = async_nats::connect(NATS)
        .await
        .expect("NATS with JetStream on 127.0.0.1:4222 (.ci/run starts it)");
    jetstream::new(client)
}

/// Every message in the stream: `Nats-Msg-Id` → (subject, JSON document), failing on an ID
/// seen twice.
async fn stream_contents(
    js: &jetstream::Context,
    stream: &str,
) -> BTreeMap<String, (String, serde_json::Value)> {
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = BTreeMap::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in first..=last {
        let m = s.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .expect("every message has Nats-Msg-Id")
            .to_string();
        let doc: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let previous = out.insert(id.clone(), (m.subject.to_string(), doc));
        assert!(previous.is_none(), "{id} is in the stream twice");
    }
    out
}

/// Posts until acknowledged, like Salesforce retrying, within a deadline.
async fn post_until_ack(client: &Client, body: &[u8]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut refusals = 0;
    loop {
        match client.post(body).await {
            Ok(r) if r.is_ack() => return refusals,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never acknowledged: {other:?}"
                );
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_notification_is_in_the_stream_exactly_once() {
    let proxy = Proxy::start(NATS).await;
    let (stream, subject) = names("once");
    let id = self_signed(Spec::new(Key::Rsa2048, "js"));
    let configure = |c: &mut obm_gate::Config| {
        c.jetstream.url = Some(format!("nats://{}", proxy.addr));
        c.jetstream.stream = stream.clone();
        c.jetstream.subject = subject.clone();
        c.jetstream.publish_timeout = Duration::from_secs(2);
    };
    // The store outlives the first server, so the restart below reopens it.
    let data = tempfile::tempdir().unwrap();
    let store_path = data.path().join("obm-gate.db");
    let server = TestServer::start_with(|c, _| {
        configure(c);
        c.store.path = store_path.clone();
    })
    .await;
    server.register(ORG_A, "js", &id);
    let client = server.client(Some(&id));

    // Redeliveries: the same message three times, once with the 15-character org.
    let first = message(ORG_A, &[nid(1), nid(2)]);
    for _ in 0..2 {
        assert!(client.post(&first).await.unwrap().is_ack());
    }
    client.ack(ORG_A15, &[nid(2), nid(3)]).await;
    let stored = metric(
        &admin_get(&server.state, "/metrics").await.1,
        "obm_gate_jetstream_published_total{outcome=\"stored\"}",
    );
    assert_eq!(stored, 3.0);

    // A restart of the receiver (same store, same stream), then the same messages again.
    server.stop().await;
    let server = TestServer::start_with(|c, _| {
        configure(c);
        c.store.path = store_path.clone();
    })
    .await;
    assert_eq!(server.stored().len(), 3, "the same store, reopened");
    server.register(ORG_A, "js", &id);
    let client = server.client(Some(&id));
    assert!(client.post(&first).await.unwrap().is_ack());
    client.ack(ORG_A, &[nid(4)]).await;

    // NATS unreachable: stored locally, but not acknowledged.
    proxy.down();
    let fifth = message(ORG_A, &[nid(5)]);
    let reply = client.post(&fifth).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        reply.faultstring().contains("JetStream"),
        "{}",
        reply.faultstring()
    );
    assert!(
        server.stored().iter().any(|n| n.notification_id == nid(5)),
        "after_store: the store committed first"
    );

    // NATS back: Salesforce's retry is published (the store calls it a duplicate) and acked.
    proxy.up();
    post_until_ack(&client, &fifth).await;

    let contents = stream_contents(&context().await, &stream).await;
    let expected: Vec<String> = (1..=5).map(|n| format!("{ORG_A}/{}", nid(n))).collect();
    assert_eq!(contents.keys().cloned().collect::<Vec<_>>(), expected);
    let (subj, doc) = &contents[&expected[0]];
    assert_eq!(subj, &format!("{subject}.{ORG_A}"));
    assert_eq!(doc["org_id"], ORG_A);
    assert_eq!(doc["notification_id"], nid(1));
    assert_eq!(doc["object_type"], "Contact");
    assert_eq!(doc["fields"]["LastName"], "Black");
    assert_eq!(doc["certificate_sha256"], id.fingerprint());
    assert!(doc["record_id"].is_string(), "{doc}");
    server.stop().await;
    context().await.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_only_mode_keeps_no_local_store_and_refuses_without_nats() {
    let proxy = Proxy::start(NATS).await;
    let (stream, subject) = names("only");
    let id = self_signed(Spec::new(Key::EcdsaP256, "stateless"));
    let server = TestServer::start_with(|c, _| {
        c.jetstream.url = Some(format!("nats://{}", proxy.addr));
        c.jetstream.stream = stream.clone();
        c.jetstream.subject = subject.clone();
        c.jetstream.mode = JetStreamMode::Only;
        c.jetstream.publish_timeout = Duration::from_secs(2);
    })
    .await;
    assert!(server.state.store.is_none());
    server.register(ORG_A, "s", &id);
    let client = server.client(Some(&id));
    let body = message(ORG_A, &[nid(1), nid(2)]);
    assert!(client.post(&body).await.unwrap().is_ack());
    assert!(client.post(&body).await.unwrap().is_ack());
    let metrics = admin_get(&server.state, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "obm_gate_jetstream_published_total{outcome=\"duplicate\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "obm_gate_requests_total{status=\"200\",reason=\"duplicate\"}"
        ),
        1.0
    );
    assert!(
        !server.dir.path().join("data").exists(),
        "no SQLite file in JetStream-only mode"
    );
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);

    proxy.down();
    let reply = client.post(&message(ORG_A, &[nid(3)])).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.faultstring().contains("not acknowledged"));
    let readyz = admin_get(&server.state, "/readyz").await;
    assert_eq!(readyz.0, 503, "not ready without NATS: {readyz:?}");
    assert!(readyz.1.contains("NATS"), "{readyz:?}");
    proxy.up();
    post_until_ack(&client, &message(ORG_A, &[nid(3)])).await;
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);
    assert_eq!(stream_contents(&context().await, &stream).await.len(), 3);
    server.stop().await;
    context().await.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn an_existing_stream_is_checked_not_changed() {
    let (stream, subject) = names("check");
    let js = context().await;
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{subject}.*")],
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("orgs")).unwrap();
    let mut config = test_config(dir.path());
    config.jetstream.url = Some(format!("nats://{NATS}"));
    config.jetstream.stream = stream.clone();
    config.jetstream.subject = subject.clone();
    let err = obm_gate::Server::start(config.clone())
        .await
        .err()
        .expect("a one-minute duplicate window is refused")
        .to_string();
    assert!(err.contains("duplicate window is 1m"), "{err}");

    // Another subject than the stream captures: refused with both named.
    config.jetstream.subject = format!("{subject}x");
    config.jetstream.duplicate_window = Duration::from_secs(30);
    let err = obm_gate::Server::start(config)
        .await
        .err()
        .expect("a stream without our subject is refused")
        .to_string();
    assert!(err.contains(&format!("{subject}x.*")), "{err}");
    // Checked, not changed: the stream is as it was created.
    let info = js
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.duplicate_window, Duration::from_secs(60));
    assert_eq!(info.subjects, vec![format!("{subject}.*")]);
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn nats_down_at_start_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("orgs")).unwrap();
    let mut config = test_config(dir.path());
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    config.jetstream.url = Some(format!("nats://{addr}"));
    let err = obm_gate::Server::start(config)
        .await
        .err()
        .expect("no NATS, no start")
        .to_string();
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

const NATS_USER: &str = "obm";
/// Characters a URL must percent-encode, so that the test sees them decoded.
const NATS_PASSWORD: &str = "p@ss/w:rd";
const NATS_PASSWORD_IN_URL: &str = "p%40ss%2Fw%3Ard";

/// A `nats-server` of this test's own on 127.0.0.1: JetStream, TLS that verifies client
/// certificates against `ca`, a user with a password and a user with the NKey of `nkey_seed`.
struct TlsNats {
    _process: NatsProcess,
    /// The certificates, the config, the store and the log; removed when dropped.
    _dir: tempfile::TempDir,
    port: u16,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    nkey_seed: PathBuf,
}

impl TlsNats {
    fn start() -> TlsNats {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, text: &str| {
            let path = d.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = Ca::new("nats test CA");
        let server = ca.issue_loopback_server("nats");
        let client = ca.issue(Spec::new(Key::EcdsaP256, "obm-gate"));
        let nkey = nkeys::KeyPair::new_user();
        let ca_path = write("ca.pem", &ca.cert_pem);
        let server_cert = write("server.pem", &server.chain_pem);
        let server_key = write("server.key", &server.key_pem);
        let config = write(
            "nats.conf",
            &format!(
                r#"listen: "127.0.0.1:-1"
ports_file_dir: "{dir}"
jetstream {{ store_dir: "{dir}/js" }}
tls {{ cert_file: "{server_cert}", key_file: "{server_key}", ca_file: "{ca}", verify: true }}
authorization {{ users: [
  {{ user: "{NATS_USER}", password: "{NATS_PASSWORD}" }},
  {{ nkey: "{nkey}" }}
] }}
"#,
                dir = d.display(),
                server_cert = server_cert.display(),
                server_key = server_key.display(),
                ca = ca_path.display(),
                nkey = nkey.public_key(),
            ),
        );
        let process = NatsProcess::start(d, &config);
        TlsNats {
            port: process.port,
            _process: process,
            ca: ca_path,
            client_cert: write("client.pem", &client.chain_pem),
            client_key: write("client.key", &client.key_pem),
            nkey_seed: write("obm.nk", &(nkey.seed().unwrap() + "\n")),
            _dir: dir,
        }
    }

    /// The publisher's settings for this server at `url`: its CA and the client certificate.
    fn config(&self, url: String, stream: &str, subject: &str) -> obm_gate::config::JetStream {
        let mut j = obm_gate::Config::default().jetstream;
        j.url = Some(url);
        j.stream = stream.into();
        j.subject = subject.into();
        j.ca_certificates = vec![self.ca.clone()];
        j.client_certificate = Some(self.client_cert.clone());
        j.client_key = Some(self.client_key.clone());
        j
    }

    fn url(&self, password: &str) -> String {
        format!("tls://{NATS_USER}:{password}@127.0.0.1:{}", self.port)
    }

    /// The test's own client, with the CA, the client certificate and the password.
    async fn context(&self) -> jetstream::Context {
        let pem = |p: &Path| std::fs::read(p).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&pem(&self.ca)) {
            roots.add(ca.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_slice_iter(&pem(&self.client_cert))
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_slice(&pem(&self.client_key)).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let client = async_nats::ConnectOptions::new()
            .user_and_password(NATS_USER.into(), NATS_PASSWORD.into())
            .require_tls(true)
            .tls_client_config(tls)
            .connect(format!("tls://127.0.0.1:{}", self.port))
            .await
            .expect("the test's own TLS client reaches its nats-server");
        jetstream::new(client)
    }
}

/// The publisher's refusal to start with `config`, which must show none of `secrets`.
async fn refusal(config: &obm_gate::config::JetStream, secrets: &[&str]) -> String {
    let error = obm_gate::jetstream::Publisher::connect(config)
        .await
        .err()
        .expect("the publisher is refused")
        .to_string();
    println!("{error}");
    for secret in secrets {
        assert!(!error.contains(secret), "{secret:?} shows: {error}");
    }
    error
}

/// A `nats-server` of the test's own, run with `config` (which has `ports_file_dir: "<dir>"`),
/// its log in `dir`. Killed when dropped.
struct NatsProcess {
    child: std::process::Child,
    port: u16,
}

impl NatsProcess {
    fn start(d: &Path, config: &Path) -> NatsProcess {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let log = std::fs::File::create(d.join("nats.log")).unwrap();
        let mut child = std::process::Command::new(&binary)
            .arg("-c")
            .arg(config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (.ci/run installs nats-server)", binary.display()));
        // nats-server writes its port into the ports file once it listens.
        let ports = d.join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            let found = std::fs::read(&ports).ok().and_then(|b| {
                let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
                let url = v["nats"][0].as_str()?;
                url.rsplit(':').next()?.parse::<u16>().ok()
            });
            if let Some(port) = found {
                break port;
            }
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nats-server did not start ({exited:?}): {}",
                std::fs::read_to_string(d.join("nats.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        NatsProcess { child, port }
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With a `tls://` URL the publisher checks NATS's certificate against `[jetstream]
/// ca_certificates` and its name against the URL's host, presents `client_certificate`, and
/// authenticates with the URL's user and (percent-encoded) password. Each missing piece stops
/// the start with an error that says which key to set, and never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_reaches_nats_over_mutual_tls_with_a_password() {
    let nats = TlsNats::start();
    let (stream, subject) = names("tls");
    let tls_config = |url: String| nats.config(url, &stream, &subject);
    let good = tls_config(nats.url(NATS_PASSWORD_IN_URL));
    let server = TestServer::start_with(|c, _| c.jetstream = good.clone()).await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "nats-tls"));
    server.register(ORG_A, "nats-tls", &id);
    server.client(Some(&id)).ack(ORG_A, &[nid(1), nid(2)]).await;
    server.stop().await;
    let js = nats.context().await;
    let contents = stream_contents(&js, &stream).await;
    assert_eq!(contents.len(), 2, "{contents:?}");
    for (subj, doc) in contents.values() {
        assert_eq!(subj, &format!("{subject}.{ORG_A}"));
        assert_eq!(doc["org_id"], ORG_A);
    }

    let refused = |config: obm_gate::config::JetStream| async move {
        refusal(&config, &[NATS_PASSWORD, NATS_PASSWORD_IN_URL, "p%40ss"]).await
    };
    // Without the CA: the public roots do not vouch for this NATS.
    let mut no_ca = good.clone();
    no_ca.ca_certificates.clear();
    let error = refused(no_ca).await;
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(error.contains("ca_certificates"), "{error}");
    // Without a client certificate: NATS ends the handshake.
    let mut no_identity = good.clone();
    no_identity.client_certificate = None;
    no_identity.client_key = None;
    let error = refused(no_identity).await;
    assert!(
        error.contains("client_certificate and client_key"),
        "{error}"
    );
    // A wrong password.
    let error = refused(tls_config(nats.url("wrong%40pw"))).await;
    assert!(error.contains("refused the credentials"), "{error}");
    assert!(!error.contains("wrong"), "the password shows: {error}");
    // tls:// to a NATS that offers no TLS (the shared one): refused, not sent in the clear.
    let mut plain = good.clone();
    plain.url = Some(format!("tls://{NATS_USER}:{NATS_PASSWORD_IN_URL}@{NATS}"));
    let error = refused(plain).await;
    assert!(error.contains("did not answer in TLS"), "{error}");
    js.delete_stream(&stream).await.unwrap();
}

/// The NATS client reads the system's CA certificates on every TLS connect, even though the
/// publisher gives it roots of its own: a broken bundle stops the start, and the error says
/// where to look rather than blaming NATS.
#[test]
fn a_broken_system_ca_bundle_is_named_at_start() {
    let nats = TlsNats::start();
    let dir = common::process::workdir();
    let broken = dir.path().join("broken-bundle.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::process::BIN)
        .args(["serve", "--config", "obm-gate.toml"])
        .current_dir(dir.path())
        .env("OBM_GATE_JETSTREAM_URL", nats.url(NATS_PASSWORD_IN_URL))
        .env("OBM_GATE_JETSTREAM_CA_CERTIFICATES", &nats.ca)
        .env("OBM_GATE_JETSTREAM_CLIENT_CERTIFICATE", &nats.client_cert)
        .env("OBM_GATE_JETSTREAM_CLIENT_KEY", &nats.client_key)
        .env("SSL_CERT_FILE", &broken)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("could not load platform certs"), "{err}");
    assert!(err.contains("SSL_CERT_FILE"), "{err}");
    assert!(
        !err.contains(NATS_PASSWORD_IN_URL),
        "the password shows: {err}"
    );
}

/// With `[jetstream] nkey_seed_file` the publisher authenticates by NKey. A seed NATS does not
/// know, a seed that is not a user's, or a file that holds no seed stops the start, and the
/// error names the public key or the file, never the seed.
#[tokio::test]
async fn the_publisher_authenticates_with_an_nkey() {
    use obm_gate::jetstream::Publisher;
    let nats = TlsNats::start();
    let (stream, subject) = names("nkey");
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let mut config = nats.config(url, &stream, &subject);
    config.nkey_seed_file = Some(nats.nkey_seed.clone());
    Publisher::connect(&config)
        .await
        .expect("the registered NKey is accepted");

    let dir = tempfile::tempdir().unwrap();
    let refused = |name: &str, seed: String| {
        let mut config = config.clone();
        let path = dir.path().join(name);
        std::fs::write(&path, &seed).unwrap();
        config.nkey_seed_file = Some(path);
        async move { refusal(&config, &[seed.trim()]).await }
    };
    let stranger = nkeys::KeyPair::new_user();
    let error = refused("stranger.nk", stranger.seed().unwrap()).await;
    assert!(error.contains(&stranger.public_key()), "{error}");
    assert!(error.contains("needs a user with nkey"), "{error}");
    let error = refused("account.nk", nkeys::KeyPair::new_account().seed().unwrap()).await;
    assert!(error.contains("of kind Account, not User"), "{error}");
    let error = refused("jwt.nk", "-----BEGIN NATS USER JWT-----".into()).await;
    assert!(error.contains("must hold one NKey user seed"), "{error}");
    nats.context().await.delete_stream(&stream).await.unwrap();
}

/// A NATS JWT (v2): `claims` with `iss`, `sub`, `name`, `iat` and `jti` added, signed by
/// `issuer`.
fn nats_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    mut claims: serde_json::Value,
    expires: Option<u64>,
) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = now_secs();
    claims["iss"] = issuer.public_key().into();
    claims["sub"] = subject.into();
    claims["name"] = subject[..8].into();
    claims["iat"] = (now - 60).into();
    claims["jti"] = format!("T{now}{}", &subject[1..20]).into();
    if let Some(exp) = expires {
        claims["exp"] = exp.into();
    }
    let signed = format!(
        "{}.{}",
        b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A `.creds` file's text, as nsc writes it.
fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// A NATS JWT's `nats` claims: `type` and `version`, and `extra`.
fn nats_claims(kind: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut nats = serde_json::json!({ "type": kind, "version": 2 });
    nats.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::json!({ "nats": nats })
}

/// A `nats-server` of the test's own in operator mode, trusting one account (and the system
/// account JetStream needs there). Killed when dropped.
struct OperatorNats {
    process: NatsProcess,
    account: nkeys::KeyPair,
    dir: tempfile::TempDir,
}

impl OperatorNats {
    fn start() -> OperatorNats {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            nats_claims("operator", serde_json::json!({})),
            None,
        );
        let unlimited = serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
            }
        });
        let account_jwt = nats_jwt(
            &operator,
            &account.public_key(),
            nats_claims("account", unlimited),
            None,
        );
        let system = nkeys::KeyPair::new_account();
        let system_jwt = nats_jwt(
            &operator,
            &system.public_key(),
            nats_claims("account", serde_json::json!({})),
            None,
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = d.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                r#"listen: "127.0.0.1:-1"
ports_file_dir: "{dir}"
debug: true
jetstream {{ store_dir: "{dir}/js" }}
operator: "{operator_jwt}"
system_account: "{system}"
resolver: MEMORY
resolver_preload: {{ {account}: "{account_jwt}", {system}: "{system_jwt}" }}
"#,
                dir = d.display(),
                account = account.public_key(),
                system = system.public_key(),
            ),
        )
        .unwrap();
        let process = NatsProcess::start(d, &config);
        OperatorNats {
            process,
            account,
            dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.process.port)
    }

    /// The publisher's settings for this server and a stream of its own.
    fn config(&self, stream: &str, subject: &str) -> obm_gate::config::JetStream {
        let mut cfg = obm_gate::Config::default().jetstream;
        cfg.url = Some(self.url());
        cfg.stream = stream.into();
        cfg.subject = subject.into();
        cfg
    }

    /// Writes `text` to the file `name` in the server's directory, and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A context of the trusted account, for checking the stream.
    async fn context(&self) -> jetstream::Context {
        let user = nkeys::KeyPair::new_user();
        let creds = user_creds(&self.account, &user, None);
        let client = async_nats::ConnectOptions::new()
            .credentials(&creds)
            .unwrap()
            .connect(self.url())
            .await
            .unwrap();
        jetstream::new(client)
    }
}

/// The `.creds` text of `user`, issued by `issuer`, expiring at `expires` (Unix seconds).
fn user_creds(issuer: &nkeys::KeyPair, user: &nkeys::KeyPair, expires: Option<u64>) -> String {
    let jwt = nats_jwt(
        issuer,
        &user.public_key(),
        nats_claims(
            "user",
            serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1 }),
        ),
        expires,
    );
    creds(&jwt, &user.seed().unwrap())
}

/// With `[jetstream] credentials_file` the publisher authenticates to a NATS server in operator
/// mode by the user JWT and seed of a `.creds` file; the receiver logs the user, warns of a JWT
/// that expires soon and exports its expiry. An expired JWT, a JWT of an account the
/// server does not know, or a file that is not a `.creds` file stops the start with an error
/// that names the key.
#[tokio::test]
async fn the_publisher_authenticates_with_a_creds_file() {
    let nats = OperatorNats::start();
    let account = &nats.account;
    let user_creds = |issuer: &nkeys::KeyPair, expires: Option<u64>| {
        let user = nkeys::KeyPair::new_user();
        (user_creds(issuer, &user, expires), user.public_key())
    };
    let (stream, subject) = names("creds");
    let cfg = nats.config(&stream, &subject);
    let with_creds = |name: &str, text: &str| {
        let mut cfg = cfg.clone();
        cfg.credentials_file = Some(nats.write(name, text));
        cfg
    };
    use obm_gate::jetstream::Publisher;
    Publisher::connect(&with_creds("good.creds", &user_creds(account, None).0))
        .await
        .expect("a user of the trusted account is accepted");

    // The receiver itself: its log names the user, and warns of a JWT that expires soon.
    let expires = now_secs() + 2 * 86_400 + 600;
    let (soon, user) = user_creds(account, Some(expires));
    let soon_path = with_creds("soon.creds", &soon).credentials_file.unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&soon_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let work = common::process::workdir();
    let url = nats.url();
    let receiver = common::process::Proc::start_with_env(
        work.path(),
        &[
            ("OBM_GATE_JETSTREAM_URL", &url),
            ("OBM_GATE_JETSTREAM_STREAM", &stream),
            ("OBM_GATE_JETSTREAM_SUBJECT", &cfg.subject),
            (
                "OBM_GATE_JETSTREAM_CREDENTIALS_FILE",
                soon_path.to_str().unwrap(),
            ),
        ],
    );
    let connected = format!("nkey=\"{user}\"");
    assert!(receiver.logged(&connected), "{:?}", receiver.lines);
    // The .creds file is 0644; the server key obm-gate made for itself is 0600.
    assert!(
        receiver.logged("[jetstream] credentials_file: every user of this machine can read"),
        "{:?}",
        receiver.lines
    );
    assert!(
        !receiver.logged("[tls] private_key: every user"),
        "{:?}",
        receiver.lines
    );
    let warning = format!("credentials_file {} expires in 2 days", soon_path.display());
    eventually("the expiry warning", Duration::from_secs(10), || {
        receiver.logged(&warning)
    })
    .await;
    // And /metrics has the expiry, for an alert.
    let (status, metrics) = http_get(receiver.admin, "/metrics").await;
    assert_eq!(status, 200);
    let series =
        format!("obm_gate_jetstream_credentials_expiry_timestamp_seconds{{nkey=\"{user}\"}}");
    assert_eq!(metric(&metrics, &series), expires as f64, "{metrics}");
    // A broken renewal is logged at once, not at the next connect; the metric stays.
    std::fs::write(&soon_path, &soon[..soon.len() / 2]).unwrap();
    eventually("the broken file's error", Duration::from_secs(10), || {
        receiver.logged("the next connect to NATS cannot authenticate")
    })
    .await;
    let (_, metrics) = http_get(receiver.admin, "/metrics").await;
    assert_eq!(metric(&metrics, &series), expires as f64, "{metrics}");
    let broken = "obm_gate_jetstream_credentials_file_broken";
    assert_eq!(metric(&metrics, broken), 1.0, "{metrics}");
    // Mended, the file is usable again.
    std::fs::write(&soon_path, &soon).unwrap();
    eventually_async("the mended file", Duration::from_secs(10), async || {
        let (_, metrics) = http_get(receiver.admin, "/metrics").await;
        metric(&metrics, broken) == 0.0
    })
    .await;
    // A renewal is put in use at once, said in the log, and its mode is checked again (this
    // one is 0644 too: a second warning).
    let loose = "[jetstream] credentials_file: every user of this machine can read";
    let count = |needle: &str| {
        let lines = receiver.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    };
    assert_eq!(count(loose), 1);
    let (renewed, renewed_user) = user_creds(account, Some(expires + 86_400));
    let renewed_path = nats.write("soon.creds.new", &renewed);
    std::fs::set_permissions(&renewed_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&renewed_path, &soon_path).unwrap();
    let moved = format!(
        "publishing moved to a new connection to NATS, opened with the renewed [jetstream] credentials_file {}",
        soon_path.display()
    );
    eventually("the renewal's log line", Duration::from_secs(10), || {
        receiver.logged(&moved)
    })
    .await;
    assert!(
        receiver.logged(&format!("nkey=\"{renewed_user}\"")),
        "{:?}",
        receiver.lines
    );
    assert_eq!(count(loose), 2, "{:?}", receiver.lines);
    receiver.kill();

    let refused = |cfg: obm_gate::config::JetStream| async move { refusal(&cfg, &[]).await };
    let (expired, _) = user_creds(account, Some(1_000_000_000));
    let error = refused(with_creds("expired.creds", &expired)).await;
    assert!(error.contains("credentials_file"), "{error}");
    assert!(error.contains("neither expired nor revoked"), "{error}");
    let (stranger, _) = user_creds(&nkeys::KeyPair::new_account(), None);
    let error = refused(with_creds("stranger.creds", &stranger)).await;
    assert!(error.contains("an account the server trusts"), "{error}");
    let error = refused(with_creds(
        "seed-only.creds",
        &expired[expired.len() - 100..],
    ))
    .await;
    assert!(error.contains("it must be a NATS .creds file"), "{error}");
    assert!(error.contains("no user JWT"), "{error}");
    // A JWT and a seed of two different users.
    let (other, other_user) = user_creds(account, None);
    let seed_start = other.find("-----BEGIN USER NKEY SEED").unwrap();
    let mixed = format!(
        "{}{}",
        &expired[..expired.find("\n\n").unwrap()],
        &other[seed_start - 2..]
    );
    let error = refused(with_creds("mixed.creds", &mixed)).await;
    assert!(
        error.contains(&format!("but its seed is of {other_user}")),
        "{error}"
    );
    let mut missing = cfg.clone();
    missing.credentials_file = Some(nats.dir.path().join("missing.creds"));
    let error = refused(missing).await;
    assert!(error.contains("missing.creds"), "{error}");
}

/// A renewed `.creds` file is put in use at once: a new connection is opened with it, and
/// publishing moves there without a publish cut off, so the connection that used the first JWT
/// is closed by the receiver before NATS would drop it at that JWT's expiry. A renewal that
/// NATS refuses is reported (the gauge) and leaves the connection in use alone; it is tried
/// again on SIGHUP, not on a reload for another file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_creds_file_is_put_in_use_at_once() {
    let nats = OperatorNats::start();
    let (stream, subject) = names("renew");
    let user = nkeys::KeyPair::new_user();
    // Long enough to start, publish, and try a refused renewal; NATS would drop a connection
    // that still used this JWT when it expires.
    let first_expiry = now_secs() + 10;
    let creds_path = nats.write(
        "user.creds",
        &user_creds(&nats.account, &user, Some(first_expiry)),
    );
    let mut cfg = nats.config(&stream, &subject);
    cfg.credentials_file = Some(creds_path.clone());
    let server = TestServer::start_with(|c, _| c.jetstream = cfg.clone()).await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "renew"));
    server.register(ORG_A, "renew", &id);
    let client = server.client(Some(&id));
    client.ack(ORG_A, &[nid(1)]).await;
    let state = server.state.clone();
    // Waits until /metrics shows `series` at `value`.
    let metric_becomes = async |series: String, value: f64| {
        let what = format!("{series} at {value}");
        eventually_async(&what, Duration::from_secs(10), async || {
            let (_, metrics) = admin_get(&state, "/metrics").await;
            metrics.contains(&series) && metric(&metrics, &series) == value
        })
        .await
    };
    // The renewal, as a secrets manager writes it: a new file moved into place.
    let put_in_place = |text: &str| {
        let renewed = nats.write("user.creds.new", text);
        std::fs::rename(&renewed, &creds_path).unwrap();
    };
    let broken = "obm_gate_jetstream_credentials_file_broken";
    let expiry = format!(
        "obm_gate_jetstream_credentials_expiry_timestamp_seconds{{nkey=\"{}\"}}",
        user.public_key()
    );

    let log = nats.dir.path().join("nats.log");
    let nats_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let refusals = || nats_log().matches("authentication error").count();

    // A file of an account NATS does not trust: refused, and the connection in use stays.
    let stranger = nkeys::KeyPair::new_user();
    put_in_place(&user_creds(&nkeys::KeyPair::new_account(), &stranger, None));
    metric_becomes(broken.into(), 1.0).await;
    client.ack(ORG_A, &[nid(2)]).await;
    // A reload for a change elsewhere (the registry's, say) does not try the refused file
    // again: each try waits for NATS. SIGHUP does.
    let refused = refusals();
    assert!(refused >= 1, "{}", nats_log());
    reload(&state, &server.server, Trigger::FileChange).await;
    assert_eq!(refusals(), refused, "{}", nats_log());
    metric_becomes(broken.into(), 1.0).await;
    reload(&state, &server.server, Trigger::Hangup).await;
    eventually(
        "SIGHUP tries the refused file again",
        Duration::from_secs(10),
        || refusals() > refused,
    )
    .await;

    let renewed_expiry = now_secs() + 3_600;
    put_in_place(&user_creds(&nats.account, &user, Some(renewed_expiry)));
    metric_becomes(broken.into(), 0.0).await;
    metric_becomes(expiry, renewed_expiry as f64).await;
    // Every message until past the first JWT's expiry is acknowledged at the first try, and
    // NATS expired no connection of the receiver: the one that used the first JWT was closed
    // by the receiver. (With the renewal left to the next reconnect, NATS logs "Authentication
    // Expired" here.)
    let mut n = 3usize;
    while now_secs() <= first_expiry + 1 {
        client.ack(ORG_A, &[nid(n)]).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !nats_log().contains("Authentication Expired"),
        "{}",
        nats_log()
    );
    server.stop().await;
    let contents = stream_contents(&nats.context().await, &stream).await;
    assert_eq!(contents.len(), n - 1, "{contents:?}");
}

/// A renewal is connected with the very read of the file that found it, even when the file
/// changes again before NATS asks: what the publisher records as in use, or as refused, is
/// what NATS was shown. (Before, the connect read the file a second time.)
#[tokio::test]
async fn a_reconnect_presents_the_read_that_found_the_renewal() {
    use obm_gate::jetstream::Publisher;
    let nats = OperatorNats::start();
    let (stream, subject) = names("reread");
    let trusted = |user: &nkeys::KeyPair| user_creds(&nats.account, user, None);
    let stranger = || {
        user_creds(
            &nkeys::KeyPair::new_account(),
            &nkeys::KeyPair::new_user(),
            None,
        )
    };
    let creds_path = nats.write("user.creds", &trusted(&nkeys::KeyPair::new_user()));
    let mut cfg = nats.config(&stream, &subject);
    cfg.credentials_file = Some(creds_path.clone());
    let publisher = Publisher::connect(&cfg).await.unwrap();
    let file = publisher.credential_file().unwrap();
    let put = |text: String| std::fs::write(&creds_path, text).unwrap();

    // A trusted renewal is read, then the file turns to a stranger's before the connect.
    put(trusted(&nkeys::KeyPair::new_user()));
    let renewed = file.read().unwrap();
    assert!(publisher.is_renewed(&renewed));
    put(stranger());
    publisher.reconnect(&renewed).await.unwrap();
    assert!(!publisher.is_renewed(&renewed));
    assert!(!publisher.was_refused(&renewed));

    // A stranger's file is read, then a trusted one takes its place before the connect.
    let refused = file.read().unwrap();
    put(trusted(&nkeys::KeyPair::new_user()));
    let error = publisher.reconnect(&refused).await.unwrap_err().to_string();
    assert!(error.contains("NATS refused the user JWT"), "{error}");
    assert!(publisher.was_refused(&refused));
    assert!(
        !publisher.is_renewed(&renewed),
        "the connection in use stays"
    );
}
