//! Test harness: certificates made with rcgen, the real server on 127.0.0.1:0, and a real
//! TLS + HTTP/1.1 client.
#![allow(dead_code)]

pub mod process;
pub mod tcp_proxy;
pub mod webhook;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use obm_gate::Config;
use obm_gate::http::AppState;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SanType,
};
use rustls::ClientConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const ORG_A: &str = "00Dxx0000001gPFEAY";
pub const ORG_A15: &str = "00Dxx0000001gPF";
pub const ORG_B: &str = "00D1I000003qqqEUAQ";

#[derive(Clone, Copy, Debug)]
pub enum Key {
    Rsa2048,
    EcdsaP256,
}

fn key_pair(kind: Key) -> KeyPair {
    match kind {
        Key::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap(),
        Key::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
    }
}

/// A client certificate with its key.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    /// PEM of the chain to send (leaf, then intermediates); the leaf alone for self-signed.
    pub chain_pem: String,
}

impl Identity {
    pub fn fingerprint(&self) -> String {
        obm_gate::ids::Fingerprint::of_der(self.der.as_ref()).to_hex()
    }
}

pub struct Spec {
    pub key: Key,
    pub cn: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// `basicConstraints CA:TRUE`, as `openssl req -x509` makes them.
    pub ca_true: bool,
}

impl Spec {
    pub fn new(key: Key, cn: &str) -> Spec {
        let now = OffsetDateTime::now_utc();
        Spec {
            key,
            cn: cn.into(),
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(365),
            ca_true: false,
        }
    }

    pub fn expired(mut self) -> Spec {
        let now = OffsetDateTime::now_utc();
        self.not_before = now - time::Duration::days(30);
        self.not_after = now - time::Duration::days(1);
        self
    }

    pub fn not_yet_valid(mut self) -> Spec {
        let now = OffsetDateTime::now_utc();
        self.not_before = now + time::Duration::days(1);
        self.not_after = now + time::Duration::days(30);
        self
    }

    pub fn ca_true(mut self) -> Spec {
        self.ca_true = true;
        self
    }

    fn params(&self) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, self.cn.clone());
        p.distinguished_name
            .push(DnType::OrganizationName, "Test Org");
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        if self.ca_true {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        p
    }
}

pub fn self_signed(spec: Spec) -> Identity {
    let key = key_pair(spec.key);
    let cert = spec.params().self_signed(&key).unwrap();
    Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
        chain_pem: cert.pem(),
    }
}

/// A certificate authority for tests.
pub struct Ca {
    pub cert_pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = key_pair(Key::EcdsaP256);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            params,
            key,
        }
    }

    pub fn issue(&self, spec: Spec) -> Identity {
        let key = key_pair(spec.key);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = spec.params().signed_by(&key, &issuer).unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            chain_pem: cert.pem(),
        }
    }

    /// A server certificate (ECDSA P-256, `serverAuth`) for 127.0.0.1 and localhost.
    pub fn issue_loopback_server(&self, cn: &str) -> Identity {
        let key = key_pair(Key::EcdsaP256);
        let mut params = Spec::new(Key::EcdsaP256, cn).params();
        params.subject_alt_names = vec![
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            SanType::DnsName("localhost".try_into().unwrap()),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            chain_pem: cert.pem(),
        }
    }
}

/// The real receiver, in this process, on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub dir: tempfile::TempDir,
    pub server_cert: CertificateDer<'static>,
    pub server: Arc<obm_gate::tls::ServerCert>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.listen.address = "127.0.0.1:0".parse().unwrap();
    config.tls.certificate = dir.join("server/server.pem");
    config.tls.private_key = dir.join("server/server.key");
    config.registry.directory = dir.join("orgs");
    config.store.path = dir.join("data/obm-gate.db");
    config.admin.address = "127.0.0.1:0".parse().unwrap();
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_, _| {}).await
    }

    /// Starts a server; `setup` may change the config and write files (certs, CAs) first.
    pub async fn start_with(setup: impl FnOnce(&mut Config, &Path)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("orgs")).unwrap();
        let mut config = test_config(dir.path());
        setup(&mut config, dir.path());
        let listener = tokio::net::TcpListener::bind(config.listen.address)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = obm_gate::Server::start(config.clone()).await.unwrap();
        let state = server.state();
        let server_cert_handle = server.server_cert();
        let server_cert =
            CertificateDer::from_pem_file(&config.tls.certificate).expect("server certificate");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        // Serving has begun once the admin listener is bound.
        let admin = state.clone();
        eventually("server running", Duration::from_secs(5), || {
            admin.admin_address.get().is_some()
        })
        .await;
        TestServer {
            addr,
            state,
            dir,
            server_cert,
            server: server_cert_handle,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn orgs_dir(&self) -> PathBuf {
        self.dir.path().join("orgs")
    }

    /// Writes the certificate into `orgs/<org>/<name>.pem` and reloads the registry.
    pub fn register(&self, org: &str, name: &str, id: &Identity) -> PathBuf {
        let path = write_registered(&self.orgs_dir(), org, name, id);
        self.state.registry.reload().unwrap();
        path
    }

    pub fn client(&self, id: Option<&Identity>) -> Client {
        Client::new(self.addr, &self.server_cert, id, None)
    }

    /// The local store (every configuration but JetStream-only has one).
    pub fn store(&self) -> &obm_gate::store::Store {
        self.state
            .store
            .as_deref()
            .expect("this server has a local store")
    }

    /// Accepted handshakes so far, as the server counted them: (full, resumed).
    pub fn handshakes(&self) -> (u64, u64) {
        let count = |kind| self.state.metrics.handshakes_with("accepted", kind);
        (count("full"), count("resumed"))
    }

    pub fn stored(&self) -> Vec<obm_gate::store::StoredNotification> {
        obm_gate::store::list(self.store().path(), &Default::default()).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

pub fn write_registered(orgs: &Path, org: &str, name: &str, id: &Identity) -> PathBuf {
    let dir = orgs.join(org);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, &id.cert_pem).unwrap();
    path
}

/// A TLS client like Salesforce's sender.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    /// Bytes written before the TLS handshake (a PROXY protocol header).
    prefix: Vec<u8>,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

impl Client {
    pub fn new(
        addr: SocketAddr,
        server_cert: &CertificateDer<'static>,
        id: Option<&Identity>,
        version: Option<&'static rustls::SupportedProtocolVersion>,
    ) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_cert.clone()).unwrap();
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .unwrap()
            .with_root_certificates(roots);
        let config = match id {
            Some(id) => {
                let chain: Vec<_> = CertificateDer::pem_slice_iter(id.chain_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect();
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        Client {
            addr,
            config: Arc::new(config),
            prefix: Vec::new(),
        }
    }

    /// The same client, sending `prefix` on each connection before TLS.
    pub fn with_prefix(&self, prefix: &[u8]) -> Client {
        Client {
            prefix: prefix.to_vec(),
            ..self.clone()
        }
    }

    /// A TLS connection without HTTP on top, for tests that write raw bytes.
    pub async fn connect_raw(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
        let mut tcp = TcpStream::connect(self.addr).await?;
        if !self.prefix.is_empty() {
            use tokio::io::AsyncWriteExt;
            tcp.write_all(&self.prefix).await?;
        }
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        Ok(connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?)
    }

    pub async fn connect(&self) -> Result<Conn, BoxError> {
        let tls = self.connect_raw().await?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, resumed })
    }

    /// One POST to /obm on a new connection.
    pub async fn post(&self, body: &[u8]) -> Result<Reply, BoxError> {
        self.connect().await?.post(body).await
    }

    /// Posts `org`'s message with these notification IDs on a new connection; fails the test
    /// unless it is acknowledged.
    pub async fn ack(&self, org: &str, ids: &[String]) {
        self.connect().await.unwrap().ack(org, ids).await
    }

    /// `connections` keep-alive connections at once, each sending `per_connection` messages of
    /// one notification (IDs from `first` on); every one must be acknowledged.
    pub async fn send_concurrently(
        &self,
        org: &'static str,
        connections: usize,
        per_connection: usize,
        first: usize,
    ) {
        let mut tasks = Vec::new();
        for c in 0..connections {
            let client = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = client.connect().await.unwrap();
                for m in 0..per_connection {
                    let n = first + c * per_connection + m;
                    let reply = conn.post(&message(org, &[nid(n)])).await.unwrap();
                    assert!(reply.is_ack(), "{reply:?}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Reply {
    pub fn is_ack(&self) -> bool {
        self.status == 200 && self.body == obm_gate::soap::ACK
    }

    /// The fault's text, unescaped.
    pub fn faultstring(&self) -> String {
        let start = self.body.find("<faultstring>").map(|i| i + 13).unwrap_or(0);
        let end = self.body.find("</faultstring>").unwrap_or(self.body.len());
        quick_xml::escape::unescape(&self.body[start..end])
            .map(|s| s.into_owned())
            .unwrap_or_default()
    }
}

pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub resumed: bool,
}

impl Conn {
    /// Whether the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn post(&mut self, body: &[u8]) -> Result<Reply, BoxError> {
        self.request("POST", "/obm", body).await
    }

    /// Posts `org`'s message with these notification IDs on this connection; fails the test
    /// unless it is acknowledged.
    pub async fn ack(&mut self, org: &str, ids: &[String]) {
        let reply = self.post(&message(org, ids)).await.unwrap();
        assert!(reply.is_ack(), "{reply:?}");
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Reply, BoxError> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "text/xml; charset=utf-8")
            .header("soapaction", "\"\"")
            .body(Full::new(Bytes::copy_from_slice(body)))?;
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = res.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// An Outbound Message for `org` with one Contact notification per ID.
pub fn message(org: &str, ids: &[String]) -> Vec<u8> {
    let notifications: String = ids
        .iter()
        .map(|id| {
            format!(
                r#"<Notification><Id>{id}</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>003xx000004TmiQAAS</sf:Id><sf:LastName>Black</sf:LastName></sObject></Notification>"#
            )
        })
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{org}</OrganizationId><ActionId>04kxx00000000blCAA</ActionId><SessionId xsi:nil="true"/><EnterpriseUrl>https://x.my.salesforce.com/services/Soap/c/60.0</EnterpriseUrl><PartnerUrl>https://x.my.salesforce.com/services/Soap/u/60.0</PartnerUrl>{notifications}</notifications></soapenv:Body></soapenv:Envelope>"#
    )
    .into_bytes()
}

/// A message for the store's own API, from ORG_A: `count` notifications numbered from `first`,
/// each with an `Id` and a `Description` of `description_len` bytes.
pub fn wide_message(
    first: usize,
    count: usize,
    description_len: usize,
) -> obm_gate::store::NewMessage {
    use obm_gate::store::NewNotification;
    let description = "x".repeat(description_len);
    let fields = [
        ("Id", "003xx000004TmiQAAS"),
        ("Description", description.as_str()),
    ];
    obm_gate::store::NewMessage {
        org: obm_gate::ids::OrgId::parse(ORG_A).unwrap(),
        action_id: "04kxx00000000blCAA".into(),
        certificate: obm_gate::ids::Fingerprint::of_der(b"store test"),
        peer: "127.0.0.1:1".into(),
        notifications: (first..first + count)
            .map(|i| NewNotification::new(&nid(i), "Contact", &fields))
            .collect(),
    }
}

/// The SQLite store at `path` with the default settings, open (created if needed), with its
/// config, to reopen it.
pub async fn sqlite_store(path: &Path) -> (obm_gate::store::Store, obm_gate::config::Store) {
    let mut config = Config::default().store;
    config.path = path.to_owned();
    let store =
        obm_gate::store::Store::open(&config, false, Arc::new(obm_gate::metrics::Metrics::new()))
            .await
            .unwrap();
    (store, config)
}

/// The SQLite store at `path`, open, with 20 messages of 50 notifications (1 KB descriptions)
/// committed: enough pages for the compact tests. Returns its config too, to reopen it.
pub async fn filled_store(path: &Path) -> (obm_gate::store::Store, obm_gate::config::Store) {
    let (store, config) = sqlite_store(path).await;
    for m in 0..20 {
        let stored = store
            .commit(wide_message(m * 100, 50, 1_000))
            .await
            .unwrap();
        assert_eq!(stored.stored, 50);
    }
    (store, config)
}

/// Makes a stopped SQLite store look like one from before 16 KiB pages that a rebuilt table
/// grew: 4 KiB pages, and the pages of a dropped copy of the notifications table free.
pub fn age_store(path: &Path) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode=DELETE; PRAGMA page_size=4096; VACUUM; PRAGMA journal_mode=WAL;
             CREATE TABLE ballast AS SELECT * FROM notifications; DROP TABLE ballast;",
        )
        .unwrap();
}

/// When the back-dated notifications say they were received.
pub const IN_2020: &str = "2020-01-01T00:00:00.000Z";

/// Makes the notifications `ids` of a stopped SQLite store look received in 2020 (a store's own
/// clock cannot be set back), and empties its minutes, which the writer rebuilds when it opens.
pub fn received_in_2020(path: &Path, ids: &[String]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    for id in ids {
        let sql = "UPDATE notifications SET received_at = ?1 WHERE notification_id = ?2";
        assert_eq!(conn.execute(sql, [IN_2020, id]).unwrap(), 1, "{id}");
    }
    conn.execute("DELETE FROM received_minutes", []).unwrap();
}

/// One PRAGMA's value, read from a store file on a connection of its own.
pub fn pragma<T: rusqlite::types::FromSql>(path: &Path, name: &str) -> T {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

/// The head of a POST of `len` bytes to /obm, as Salesforce sends it, for tests that write raw
/// bytes.
pub fn post_head(len: usize) -> String {
    format!(
        "POST /obm HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\n\
         SOAPAction: \"\"\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// A notification ID unique to `n` (18 alphanumerics).
pub fn nid(n: usize) -> String {
    format!("04l{n:015}")
}

/// Waits until `cond` holds, checking every few milliseconds, up to `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for a check that awaits (a request, say): retried every 50 ms.
pub async fn eventually_async(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let end = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET on the admin listener; returns the status and body.
pub async fn admin_get(state: &AppState, path: &str) -> (u16, String) {
    http_get(
        *state.admin_address.get().expect("admin listener bound"),
        path,
    )
    .await
}

/// A plain HTTP/1.1 GET; returns the status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line in a Prometheus text exposition (0 if absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}
