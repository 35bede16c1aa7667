//! TLS and client identity. The only module that knows rustls.
//!
//! * TLS 1.2 and 1.3 only; a client certificate is always required.
//! * [`RegistryVerifier`] accepts a client certificate only if its SHA-256 fingerprint is in the
//!   registry, the time is inside its validity period, and, when its issuer is a configured CA,
//!   its chain verifies. It then checks the handshake signature against the certificate's public
//!   key itself, so pinned self-signed certificates work whatever their version or
//!   `basicConstraints` (webpki would refuse `CA:TRUE` end entities and X.509 v1).
//! * The verifier is not re-run on a resumed session; the request path therefore checks the
//!   registry again for every request (see `authz`).
//! * The server certificate sits behind an [`ArcSwap`] so it can be replaced without a restart.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ids::Fingerprint;
use crate::registry::{Registry, Revocation, Validity};

/// A server-side TLS stream, after a successful mutual handshake.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Why a handshake was refused. The label is used in logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeRefusal {
    #[error("the client presented no certificate")]
    NoCertificate,
    #[error("client certificate {0} is not registered to any org")]
    Unknown(Fingerprint),
    #[error(
        "client certificate {} was revoked on {}: {}",
        .0.fingerprint, .0.revoked_at, .0.reason
    )]
    Revoked(Revocation),
    #[error("client certificate {0} has expired")]
    Expired(Fingerprint),
    #[error("client certificate {0} is not valid yet")]
    NotYetValid(Fingerprint),
    #[error("client certificate {fingerprint} does not chain to its configured CA: {detail}")]
    UntrustedChain {
        fingerprint: Fingerprint,
        detail: String,
    },
    #[error(
        "the handshake signature does not match the client certificate (no proof of possession)"
    )]
    BadSignature,
    #[error("the client does not support TLS 1.2 or 1.3 or a common cipher suite: {0}")]
    Protocol(String),
    #[error("the handshake did not complete in time")]
    Timeout,
    #[error("the connection failed during the handshake: {0}")]
    Io(String),
}

impl HandshakeRefusal {
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeRefusal::NoCertificate => "no_certificate",
            HandshakeRefusal::Unknown(_) => "unknown",
            HandshakeRefusal::Revoked(_) => "revoked",
            HandshakeRefusal::Expired(_) => "expired",
            HandshakeRefusal::NotYetValid(_) => "not_yet_valid",
            HandshakeRefusal::UntrustedChain { .. } => "bad_chain",
            HandshakeRefusal::BadSignature => "bad_signature",
            HandshakeRefusal::Protocol(_) => "protocol",
            HandshakeRefusal::Timeout => "timeout",
            HandshakeRefusal::Io(_) => "io",
        }
    }
}

/// Our refusal, carried through rustls inside `CertificateError::Other`.
#[derive(Debug)]
struct Refused(HandshakeRefusal);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {}

fn refuse(r: HandshakeRefusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(r)))))
}

/// Turns a failed `accept` into the reason an admin can act on.
fn classify(err: &io::Error) -> HandshakeRefusal {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return HandshakeRefusal::Io(err.to_string());
    };
    match tls {
        rustls::Error::NoCertificatesPresented => HandshakeRefusal::NoCertificate,
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => e
            .downcast_ref::<Refused>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| HandshakeRefusal::Protocol(tls.to_string())),
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            HandshakeRefusal::BadSignature
        }
        other => HandshakeRefusal::Protocol(other.to_string()),
    }
}

/// Who is on the other end of an established connection.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub fingerprint: Fingerprint,
    pub protocol: &'static str,
    pub cipher: String,
    /// The handshake resumed an earlier session (a TLS 1.3 ticket or a TLS 1.2 session ID)
    /// instead of running the certificate exchange again.
    pub resumed: bool,
}

/// The negotiated TLS version and cipher suite, for logs and `send`.
fn negotiated(conn: &rustls::CommonState) -> (&'static str, String) {
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    (protocol, cipher)
}

/// Runs the server side of the handshake and names the client.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    timeout: std::time::Duration,
) -> Result<(ServerStream, ClientIdentity), HandshakeRefusal> {
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => return Err(HandshakeRefusal::Timeout),
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(s)) => s,
    };
    let (_, conn) = stream.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(HandshakeRefusal::NoCertificate)?;
    let (protocol, cipher) = negotiated(conn);
    let identity = ClientIdentity {
        fingerprint: Fingerprint::of_der(leaf.as_ref()),
        protocol,
        cipher,
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    };
    Ok((stream, identity))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key: {detail}", path.display())]
    NoKey { path: PathBuf, detail: String },
    #[error("the private key does not fit the certificate or is unsupported: {0}")]
    Key(rustls::Error),
    #[error("CA certificate {}: {detail}", path.display())]
    Ca { path: PathBuf, detail: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// How a certificate stands against the configured CAs, as the handshake would judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Self-signed: pinned by fingerprint, no chain to verify.
    SelfSigned,
    /// Its issuer is not a configured CA: pinned by fingerprint only.
    IssuerNotConfigured,
    /// It chains to a configured CA.
    Verified,
    /// Its issuer is a configured CA, but the chain does not verify.
    Failed(String),
}

/// Checks `cert` (with the intermediates a client would send) against the CA files, the way
/// [`RegistryVerifier`] does in the handshake.
pub fn check_chain(
    cert: &crate::registry::CertInfo,
    intermediates: &[CertificateDer<'static>],
    ca_files: &[PathBuf],
) -> Result<ChainCheck, TlsError> {
    if cert.self_signed {
        return Ok(ChainCheck::SelfSigned);
    }
    let Some(cas) = RegistryVerifier::load_cas(ca_files)? else {
        return Ok(ChainCheck::IssuerNotConfigured);
    };
    if !cas.subjects.contains(&cert.issuer_der) {
        return Ok(ChainCheck::IssuerNotConfigured);
    }
    Ok(
        match cas
            .chain
            .verify_client_cert(&cert.der, intermediates, UnixTime::now())
        {
            Ok(_) => ChainCheck::Verified,
            Err(e) => ChainCheck::Failed(e.to_string()),
        },
    )
}

/// A client's certificate chain and key.
pub struct ClientCredentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Loads client credentials: a PKCS#12 file (`.p12`/`.pfx`, with `password`), or a PEM
/// certificate chain and a PEM key.
pub fn load_client_credentials(
    cert: &Path,
    key: Option<&Path>,
    password: &str,
) -> Result<ClientCredentials, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::Read {
            path: p.to_owned(),
            source: e,
        })
    };
    let is_p12 = cert
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"));
    if is_p12 {
        let store = p12_keystore::KeyStore::from_pkcs12(&read(cert)?, password, Default::default())
            .map_err(|e| {
                TlsError::Setup(format!("{}: cannot open PKCS#12: {e}", cert.display()))
            })?;
        let (_, entry) = store.private_key_chain().ok_or_else(|| TlsError::NoKey {
            path: cert.to_owned(),
            detail: "the PKCS#12 file holds no private key with a certificate".into(),
        })?;
        return Ok(ClientCredentials {
            chain: entry
                .certs()
                .iter()
                .map(|c| CertificateDer::from(c.as_der().to_vec()))
                .collect(),
            key: PrivateKeyDer::Pkcs8(entry.key().as_der().to_vec().into()),
        });
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_path = key.ok_or_else(|| TlsError::NoKey {
        path: cert.to_owned(),
        detail: "a PEM certificate needs --key".into(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?).map_err(|e| TlsError::NoKey {
        path: key_path.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(ClientCredentials { chain, key })
}

/// A TLS client configuration like Salesforce's sender: TLS 1.2/1.3, the client certificate,
/// and either the given CA file or the public web roots to check the server.
pub fn client_config(
    creds: ClientCredentials,
    ca: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => add_roots(&mut roots, path)?,
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(creds.chain, creds.key)
        .map_err(TlsError::Key)?;
    Ok(Arc::new(config))
}

/// Adds every certificate of a PEM file as a trust anchor.
fn add_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        source: e,
    })?;
    for der in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
        roots.add(der).map_err(|e| TlsError::Ca {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// The webhook client's connector: `https://` checked against the public roots plus
/// `extra_cas`, TLS 1.2/1.3; `http://` as plain TCP (the config allows it only on loopback
/// unless `insecure_allow_http`).
pub fn https_connector(
    extra_cas: &[PathBuf],
) -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    TlsError,
> {
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(server_checking_config(extra_cas)?)
        .https_or_http()
        .enable_http1()
        .build())
}

/// The PostgreSQL store's TLS, for a URL with `sslmode=require`.
pub type PostgresTls = tokio_postgres_rustls::MakeRustlsConnect;

/// The PostgreSQL store's connector: TLS 1.2/1.3, the server's certificate checked against the
/// public roots plus `extra_cas`, and its name against the URL's host (what libpq calls
/// `sslmode=verify-full`).
pub fn postgres_tls(extra_cas: &[PathBuf]) -> Result<PostgresTls, TlsError> {
    Ok(PostgresTls::new(server_checking_config(extra_cas)?))
}

/// The JetStream publisher's TLS: NATS's certificate checked against the public roots plus
/// `extra_cas`, and its name against the URL's host (TLS 1.2/1.3). With `client` (a PEM
/// certificate chain and its key), that certificate for a NATS server that verifies its clients.
pub fn nats_tls(
    extra_cas: &[PathBuf],
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = server_checking_builder(extra_cas)?;
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (chain, key) = read_chain_and_key(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::Key)
        }
    }
}

/// The parts of the advice in [`tls_failure_message`] that depend on the client's config.
pub struct TlsAdvice<'a> {
    /// Ends the advice for a server certificate that does not name the host.
    pub dial: &'a str,
    /// The advice when the server refuses this side for want of a client certificate.
    pub client_certificate: &'a str,
}

/// When `err` is a TLS failure to a server (PostgreSQL, NATS): this side refused the server's
/// certificate, the server refused this side's, or the server did not answer in TLS. Then the
/// whole message for an admin: `err`, rustls's reason where `err` does not already show it, and
/// what to change. The reason is looked for along `err`'s sources.
pub fn tls_failure_message(
    err: &(dyn std::error::Error + 'static),
    advice: &TlsAdvice,
) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        let hint = match e.downcast_ref::<rustls::Error>() {
            Some(rustls::Error::InvalidCertificate(c)) => Some(match c {
                CertificateError::UnknownIssuer => {
                    "the server's certificate chains neither to a public root nor to a CA of \
                     ca_certificates"
                        .to_owned()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "the server's certificate does not name the URL's host: connect by a name it \
                     holds{}",
                    advice.dial
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server's certificate has expired".to_owned()
                }
                _ => String::new(),
            }),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA,
            )) => Some(advice.client_certificate.to_owned()),
            Some(rustls::Error::InvalidMessage(_)) => Some(
                "the server did not answer in TLS: is TLS on there, and is this its TLS port?"
                    .to_owned(),
            ),
            _ => None,
        };
        if let Some(hint) = hint {
            let mut message = err.to_string();
            let reason = e.to_string();
            if !message.contains(&reason) {
                message = format!("{message}: {reason}");
            }
            if !hint.is_empty() {
                message = format!("{message}: {hint}");
            }
            return Some(message);
        }
        // An `io::Error` hides what it wraps from `source()`; `get_ref()` gives it.
        next = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// A client configuration without a client certificate that checks the server's certificate
/// against the public web roots plus `extra_cas`; TLS 1.2/1.3.
fn server_checking_config(extra_cas: &[PathBuf]) -> Result<rustls::ClientConfig, TlsError> {
    Ok(server_checking_builder(extra_cas)?.with_no_client_auth())
}

fn server_checking_builder(
    extra_cas: &[PathBuf],
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_cas {
        add_roots(&mut roots, path)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots))
}

/// Connects and completes the handshake; returns the stream, the TLS version and the cipher.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> io::Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    &'static str,
    String,
)> {
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let conn = stream.get_ref().1;
    let (protocol, cipher) = negotiated(conn);
    Ok((stream, protocol, cipher))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Loads a server certificate chain (leaf first) and its private key.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let (chain, key_der) = read_chain_and_key(cert, key)?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(TlsError::Key)
}

/// A PEM certificate chain (leaf first) and a PEM private key, as read from their files.
fn read_chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::Read {
            path: p.to_owned(),
            source: e,
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::NoKey {
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
    Ok((chain, key_der))
}

/// The server certificate, replaceable while the server runs.
#[derive(Debug)]
pub struct ServerCert {
    current: ArcSwap<CertifiedKey>,
}

impl ServerCert {
    pub fn new(key: CertifiedKey) -> Arc<ServerCert> {
        Arc::new(ServerCert {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Swaps in a new certificate; connections already established keep theirs. Whether its
    /// chain differs from the one served until now.
    pub fn replace(&self, key: CertifiedKey) -> bool {
        let changed = self.current.load().cert != key.cert;
        self.current.store(Arc::new(key));
        changed
    }

    /// The chain served, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Builds the rustls server configuration: TLS 1.2/1.3, client certificate required and checked
/// against the registry, HTTP/1.1 only.
pub fn server_config(
    registry: Arc<Registry>,
    server_cert: Arc<ServerCert>,
    ca_files: &[PathBuf],
    session_cache: usize,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = RegistryVerifier::new(registry, ca_files)?;
    let mut config = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(server_cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Our order, not the client's: see `server_provider`.
    config.ignore_client_order = true;
    // Resumption skips the verifier; the request path checks the registry again (see `authz`).
    // Tickets (TLS 1.3, and TLS 1.2 clients that ask for them) are stateless: the session,
    // encrypted under keys that rotate every 6 hours, travels with the client, so any number of
    // clients can resume and the server keeps nothing per client. rustls's default, a cache of
    // 256 sessions with two tickets per TLS 1.3 handshake, resumed none of 400 clients
    // reconnecting in turn; and a ticket taken from a larger cache costs a scan of the whole
    // cache (BENCHMARKS.md, stop 30). The cache is left to TLS 1.2 session IDs, which are looked
    // up, not taken.
    if session_cache == 0 {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    } else {
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(session_cache);
        config.ticketer = aws_lc_rs::Ticketer::new().map_err(|e| TlsError::Setup(e.to_string()))?;
        config.send_tls13_tickets = TLS13_TICKETS;
    }
    Ok(Arc::new(config))
}

/// TLS 1.3 tickets sent after a handshake (rustls sends two). Each is a whole encrypted
/// session, client certificate included (about 1 KiB), and a resumption brings the client a new
/// one: one is enough for a client that reconnects one connection at a time. A client that
/// opens several at once resumes one and makes full handshakes for the others, each of which
/// leaves it a ticket for next time.
const TLS13_TICKETS: usize = 1;

/// The server's cipher suites, AES-128-GCM with SHA-256 first. Clients (Salesforce's Java,
/// rustls, curl) usually ask for AES-256-GCM-SHA384 first, but SHA-384 runs without hardware
/// help here while SHA-256 has it: in a full handshake the transcript hash and HKDF took 9% of
/// the server's CPU with SHA-384 (perf, BENCHMARKS.md). Both suites are in every current
/// recommendation; the rest keep aws-lc's order.
fn server_provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut provider = aws_lc_rs::default_provider();
    let first = [
        TLS13_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    provider.cipher_suites.sort_by_key(|s| {
        first
            .iter()
            .position(|f| *f == s.suite())
            .unwrap_or(first.len())
    });
    Arc::new(provider)
}

/// The client-certificate verifier backed by the registry.
#[derive(Debug)]
pub struct RegistryVerifier {
    registry: Arc<Registry>,
    /// Set when CAs are configured.
    cas: Option<Cas>,
    algorithms: WebPkiSupportedAlgorithms,
}

#[derive(Debug)]
struct Cas {
    /// Raw DER subjects of the configured CAs: a certificate naming one of them as its issuer
    /// must chain-verify.
    subjects: Vec<Vec<u8>>,
    /// webpki path building to those CAs.
    chain: Arc<dyn ClientCertVerifier>,
}

impl RegistryVerifier {
    pub fn new(registry: Arc<Registry>, ca_files: &[PathBuf]) -> Result<Self, TlsError> {
        Ok(RegistryVerifier {
            registry,
            cas: Self::load_cas(ca_files)?,
            algorithms: provider().signature_verification_algorithms,
        })
    }

    fn load_cas(ca_files: &[PathBuf]) -> Result<Option<Cas>, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut ca_subjects = Vec::new();
        for path in ca_files {
            let ca_err = |detail: String| TlsError::Ca {
                path: path.clone(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate found".into()));
            }
            for der in certs {
                let (_, parsed) =
                    X509Certificate::from_der(der.as_ref()).map_err(|e| ca_err(e.to_string()))?;
                ca_subjects.push(parsed.tbs_certificate.subject.as_raw().to_vec());
                roots.add(der).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Ok(None);
        }
        let chain = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .clear_root_hint_subjects()
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        Ok(Some(Cas {
            subjects: ca_subjects,
            chain,
        }))
    }

    /// The public key of a certificate, read without webpki's end-entity rules: from the
    /// registry, which found it when it loaded the certificate. Parsing the certificate in every
    /// handshake was 1.9% of the server's samples in scenario (a), about 4 µs of a full
    /// handshake's 223; the look-up by fingerprint is 0.3%. A certificate that a reload removed
    /// since `verify_client_cert` accepted it is parsed here.
    fn spki(&self, cert: &CertificateDer<'_>) -> Result<Vec<u8>, rustls::Error> {
        let fp = Fingerprint::of_der(cert.as_ref());
        if let Some(entry) = self.registry.snapshot().get(&fp) {
            return Ok(entry.cert.spki().to_vec());
        }
        let (_, parsed) = X509Certificate::from_der(cert.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        Ok(parsed.tbs_certificate.subject_pki.raw.to_vec())
    }
}

impl ClientCertVerifier for RegistryVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// An empty list: clients should send their certificate whoever issued it.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = Fingerprint::of_der(end_entity.as_ref());
        let snapshot = self.registry.snapshot();
        let Some(entry) = snapshot.get(&fp) else {
            return Err(refuse(match snapshot.revoked(&fp) {
                Some(r) => HandshakeRefusal::Revoked(r.clone()),
                None => HandshakeRefusal::Unknown(fp),
            }));
        };
        let now_secs = now.as_secs() as i64;
        match entry.cert.validity_at(now_secs) {
            Validity::Valid => {}
            Validity::Expired => return Err(refuse(HandshakeRefusal::Expired(fp))),
            Validity::NotYetValid => return Err(refuse(HandshakeRefusal::NotYetValid(fp))),
        }
        if let Some(cas) = &self.cas
            && !entry.cert.self_signed
            && cas.subjects.contains(&entry.cert.issuer_der)
        {
            cas.chain
                .verify_client_cert(end_entity, intermediates, now)
                .map_err(|e| {
                    refuse(HandshakeRefusal::UntrustedChain {
                        fingerprint: fp,
                        detail: e.to_string(),
                    })
                })?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = self.spki(cert)?;
        let spki = SubjectPublicKeyInfoDer::from(spki.as_slice());
        let key = webpki::RawPublicKeyEntity::try_from(&spki)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        // TLS 1.2 schemes do not name a curve: try each algorithm the scheme maps to.
        let candidates = self
            .algorithms
            .mapping
            .iter()
            .filter(|(scheme, _)| *scheme == dss.scheme)
            .flat_map(|(_, algs)| algs.iter());
        for alg in candidates {
            if key.verify_signature(*alg, message, dss.signature()).is_ok() {
                return Ok(HandshakeSignatureValid::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = self.spki(cert)?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki.as_slice()),
            dss,
            &self.algorithms,
        )
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
