//! Configuration: one typed struct, parsed by a pure function from TOML text and an environment.
//!
//! Defaults live here, in code. Every key `[section] key` can be overridden by the environment
//! variable `OBM_GATE_<SECTION>_<KEY>` (upper case), e.g. `OBM_GATE_LISTEN_ADDRESS`. Parsing does
//! not stop at the first problem: [`parse`] reports every bad or unknown key at once, before any
//! socket is opened.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the shipped configuration lives.
pub const DEFAULT_CONFIG_PATH: &str = "config/obm-gate.toml";
/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "OBM_GATE_";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Listen,
    pub tls: Tls,
    pub registry: Registry,
    pub store: Store,
    pub limits: Limits,
    pub log: Log,
    pub shutdown: Shutdown,
    pub ca: Ca,
    pub admin: Admin,
    pub jetstream: JetStream,
    pub forward: Forward,
}

/// Where JetStream publishing sits relative to the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JetStreamMode {
    /// Store first, then publish; acknowledge after both (the default).
    AfterStore,
    /// JetStream is the only durable step: no local store (stateless receivers).
    Only,
}

/// NATS JetStream publishing, opt-in with `url`. `Debug` shows the URL without its password.
#[derive(Clone, PartialEq)]
pub struct JetStream {
    /// `nats://host:4222`, or `tls://host:4222` to require TLS; `user:password@` or `token@`
    /// before the host authenticates. Empty turns publishing off.
    pub url: Option<String>,
    /// PEM CA certificates, besides the public roots, that NATS's certificate may chain to.
    /// Setting any TLS key makes TLS required.
    pub ca_certificates: Vec<PathBuf>,
    /// A PEM certificate (chain) and its key, for a NATS server that verifies its clients.
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// A file holding an NKey user seed (`SU…`), for a NATS server that authenticates by NKey
    /// instead of a password or token in the URL.
    pub nkey_seed_file: Option<PathBuf>,
    /// A NATS `.creds` file (a user JWT and its NKey seed), for a server in operator mode.
    pub credentials_file: Option<PathBuf>,
    /// The stream; created if missing, checked if present.
    pub stream: String,
    /// Notifications are published to `<subject>.<OrgId>`; the stream captures `<subject>.*`.
    pub subject: String,
    pub mode: JetStreamMode,
    /// JetStream drops a message whose ID it has seen within this window. Salesforce retries
    /// for up to 24 hours, so the default covers every retry.
    pub duplicate_window: Duration,
    /// A publish without its PubAck within this time fails the request (503).
    pub publish_timeout: Duration,
}

/// A secret that does not print itself.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(unset)")
        } else {
            f.write_str("Secret(…)")
        }
    }
}

/// Webhook forwarding of stored notifications, opt-in with `url`. `Debug` shows the URL
/// without its user information, and never the secret.
#[derive(Clone, PartialEq)]
pub struct Forward {
    /// `https://…`; empty turns forwarding off.
    pub url: Option<String>,
    /// The HMAC-SHA256 key the receiving service verifies `X-Obm-Gate-Signature` with.
    pub secret: Secret,
    /// Orgs delivered at once; within an org, one notification at a time, in order.
    pub concurrency: usize,
    /// Attempts before a notification is dead-lettered.
    pub max_attempts: u64,
    /// A notification still undelivered this long after it was stored is dead-lettered.
    pub max_age: Duration,
    /// The first retry waits about this long; each further one twice as long, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// One delivery attempt, connect to response.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) trusted for the endpoint besides the public roots.
    pub ca_certificates: Vec<PathBuf>,
    /// Allow `http://` to a host other than loopback: notifications cross the network unencrypted.
    pub insecure_allow_http: bool,
}

/// The admin listener: `/healthz`, `/readyz`, `/metrics`, plain HTTP, never on the public port.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub address: SocketAddr,
}

/// The operator's signing CA (`obm-gate ca init` / `ca sign`).
#[derive(Debug, Clone, PartialEq)]
pub struct Ca {
    /// Holds `ca.pem` and `ca.key`. When `ca.pem` exists, certificates it issued must chain to
    /// it, like those of `[registry] ca_certificates`.
    pub directory: PathBuf,
    /// Lifetime of a signed client certificate when `--days` is not given.
    pub default_days: u64,
    /// The longest lifetime `ca sign` issues, whatever `--days` asks for.
    pub max_days: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shutdown {
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// The mutual-TLS port Salesforce connects to.
    pub address: SocketAddr,
    /// The only path that accepts Outbound Messages.
    pub path: String,
    /// Expect a PROXY protocol v1 or v2 header on every connection (behind an L4 load
    /// balancer). When on, a connection without a valid header is refused.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// PEM chain, leaf first. Created for `localhost` on first start if it and the key are missing.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Log a warning (at start and daily) when the first certificate of the served chain to
    /// expire does so within this many days. Apart from `[registry]`'s: a server certificate
    /// is renewed by automation on its own schedule, a client certificate by an org's admin.
    pub expiry_warning_days: u64,
    /// Log an error when it expires within this many days (or has expired).
    pub expiry_error_days: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    /// `<directory>/<OrgId>/*.pem`.
    pub directory: PathBuf,
    /// CA certificates whose issued client certificates must chain-verify.
    pub ca_certificates: Vec<PathBuf>,
    /// Log a warning (at start and daily) for registered client certificates expiring within
    /// this many days. (The server's own chain has `[tls]`'s.)
    pub expiry_warning_days: u64,
    /// Log an error for client certificates expiring within this many days.
    pub expiry_error_days: u64,
}

/// `Debug` shows the URL without its password.
#[derive(Clone, PartialEq)]
pub struct Store {
    /// The SQLite file (when `url` is not set).
    pub path: PathBuf,
    /// A shared PostgreSQL instead of the SQLite file: `postgres://user@host/db`.
    pub url: Option<String>,
    /// Notifications received longer ago than this are deleted, except those still pending
    /// for the webhook. Zero (the default) keeps every notification. At least 24 hours when
    /// set: Salesforce retries a message for up to 24 hours, and the store deduplicates only
    /// against what it keeps.
    pub retention: Duration,
    /// CA certificates (PEM) that PostgreSQL's server certificate may chain to, besides the
    /// public web roots; used with `sslmode=require` in `url`.
    pub ca_certificates: Vec<PathBuf>,
}

// The URL-holding sections print their URLs through `redact_url`. Each destructures itself
// whole, so a new field does not compile until it is printed here too.

impl fmt::Debug for JetStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let JetStream {
            url,
            ca_certificates,
            client_certificate,
            client_key,
            nkey_seed_file,
            credentials_file,
            stream,
            subject,
            mode,
            duplicate_window,
            publish_timeout,
        } = self;
        f.debug_struct("JetStream")
            .field("url", &url.as_deref().map(redact_url))
            .field("ca_certificates", ca_certificates)
            .field("client_certificate", client_certificate)
            .field("client_key", client_key)
            .field("nkey_seed_file", nkey_seed_file)
            .field("credentials_file", credentials_file)
            .field("stream", stream)
            .field("subject", subject)
            .field("mode", mode)
            .field("duplicate_window", duplicate_window)
            .field("publish_timeout", publish_timeout)
            .finish()
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Forward {
            url,
            secret,
            concurrency,
            max_attempts,
            max_age,
            initial_backoff,
            max_backoff,
            timeout,
            ca_certificates,
            insecure_allow_http,
        } = self;
        f.debug_struct("Forward")
            .field("url", &url.as_deref().map(redact_url))
            .field("secret", secret)
            .field("concurrency", concurrency)
            .field("max_attempts", max_attempts)
            .field("max_age", max_age)
            .field("initial_backoff", initial_backoff)
            .field("max_backoff", max_backoff)
            .field("timeout", timeout)
            .field("ca_certificates", ca_certificates)
            .field("insecure_allow_http", insecure_allow_http)
            .finish()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Store {
            path,
            url,
            retention,
            ca_certificates,
        } = self;
        f.debug_struct("Store")
            .field("path", path)
            .field("url", &url.as_deref().map(redact_url))
            .field("retention", retention)
            .field("ca_certificates", ca_certificates)
            .finish()
    }
}

/// Limits on everything a peer controls. Each default says why it has that value.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Time for a request's header, from its first byte (or from the handshake for the first
    /// request). Salesforce sends headers in one write; 10 s only stops slowloris.
    pub header_read_timeout: Duration,
    /// Time to read a whole body. Salesforce gives up after 60 s, so 30 s leaves room to store.
    pub body_read_timeout: Duration,
    /// 100 notifications of a wide object stay far below 8 MiB.
    pub max_body_bytes: u64,
    /// Open connections, handshaking or established.
    pub max_connections: usize,
    /// A full mutual-TLS handshake takes milliseconds; 10 s only stops stalled peers.
    pub handshake_timeout: Duration,
    /// How long an idle keep-alive connection is kept between requests.
    pub idle_timeout: Duration,
    /// TLS 1.2 sessions kept for clients that resume by session ID (clients that take tickets,
    /// and every TLS 1.3 client, carry their session in a stateless ticket), 2.3 KiB of memory
    /// each (BENCHMARKS.md, stop 32); the oldest goes first. 0: no resumption at all, no
    /// tickets either.
    pub tls_session_cache: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Listen {
                address: SocketAddr::from(([0, 0, 0, 0], 8443)),
                path: "/obm".into(),
                proxy_protocol: false,
            },
            tls: Tls {
                certificate: "certs/server/server.pem".into(),
                private_key: "certs/server/server.key".into(),
                expiry_warning_days: 30,
                expiry_error_days: 7,
            },
            registry: Registry {
                directory: "certs/orgs".into(),
                ca_certificates: Vec::new(),
                expiry_warning_days: 30,
                expiry_error_days: 7,
            },
            store: Store {
                path: "data/obm-gate.db".into(),
                url: None,
                retention: Duration::ZERO,
                ca_certificates: Vec::new(),
            },
            limits: Limits {
                header_read_timeout: Duration::from_secs(10),
                body_read_timeout: Duration::from_secs(30),
                max_body_bytes: 8 * 1024 * 1024,
                max_connections: 10_000,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                tls_session_cache: 10_000,
            },
            log: Log {
                format: LogFormat::Text,
            },
            shutdown: Shutdown {
                grace_period: Duration::from_secs(20),
            },
            ca: Ca {
                directory: "certs/ca".into(),
                default_days: 365,
                max_days: 825,
            },
            admin: Admin {
                address: SocketAddr::from(([127, 0, 0, 1], 9090)),
            },
            jetstream: JetStream {
                url: None,
                ca_certificates: Vec::new(),
                client_certificate: None,
                client_key: None,
                nkey_seed_file: None,
                credentials_file: None,
                stream: "OBM".into(),
                subject: "obm.notifications".into(),
                mode: JetStreamMode::AfterStore,
                duplicate_window: Duration::from_secs(24 * 3600),
                publish_timeout: Duration::from_secs(10),
            },
            forward: Forward {
                url: None,
                secret: Secret::default(),
                concurrency: 8,
                max_attempts: 12,
                max_age: Duration::from_secs(24 * 3600),
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(300),
                timeout: Duration::from_secs(10),
                ca_certificates: Vec::new(),
                insecure_allow_http: false,
            },
        }
    }
}

/// Where configuration values come from besides the file: the process environment in
/// production, a map in tests.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses a configuration from TOML text (`""` for none) and an environment. Pure: it reads no
/// file and opens nothing.
pub fn parse(toml_text: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let mut r = Reader::new(toml_text, env);
    let d = Config::default();
    let config = Config {
        listen: Listen {
            address: r.get("listen", "address", d.listen.address),
            path: r.get("listen", "path", d.listen.path),
            proxy_protocol: r.get("listen", "proxy_protocol", d.listen.proxy_protocol),
        },
        tls: Tls {
            certificate: r.get("tls", "certificate", d.tls.certificate),
            private_key: r.get("tls", "private_key", d.tls.private_key),
            expiry_warning_days: r.get("tls", "expiry_warning_days", d.tls.expiry_warning_days),
            expiry_error_days: r.get("tls", "expiry_error_days", d.tls.expiry_error_days),
        },
        registry: Registry {
            directory: r.get("registry", "directory", d.registry.directory),
            ca_certificates: r.get("registry", "ca_certificates", d.registry.ca_certificates),
            expiry_warning_days: r.get(
                "registry",
                "expiry_warning_days",
                d.registry.expiry_warning_days,
            ),
            expiry_error_days: r.get(
                "registry",
                "expiry_error_days",
                d.registry.expiry_error_days,
            ),
        },
        store: Store {
            path: r.get("store", "path", d.store.path),
            url: r.get("store", "url", d.store.url),
            retention: r.get("store", "retention", d.store.retention),
            ca_certificates: r.get("store", "ca_certificates", d.store.ca_certificates),
        },
        limits: Limits {
            header_read_timeout: r.get(
                "limits",
                "header_read_timeout",
                d.limits.header_read_timeout,
            ),
            body_read_timeout: r.get("limits", "body_read_timeout", d.limits.body_read_timeout),
            max_body_bytes: r.get("limits", "max_body_bytes", d.limits.max_body_bytes),
            max_connections: r.get("limits", "max_connections", d.limits.max_connections),
            handshake_timeout: r.get("limits", "handshake_timeout", d.limits.handshake_timeout),
            idle_timeout: r.get("limits", "idle_timeout", d.limits.idle_timeout),
            tls_session_cache: r.get("limits", "tls_session_cache", d.limits.tls_session_cache),
        },
        log: Log {
            format: r.get("log", "format", d.log.format),
        },
        shutdown: Shutdown {
            grace_period: r.get("shutdown", "grace_period", d.shutdown.grace_period),
        },
        ca: Ca {
            directory: r.get("ca", "directory", d.ca.directory),
            default_days: r.get("ca", "default_days", d.ca.default_days),
            max_days: r.get("ca", "max_days", d.ca.max_days),
        },
        admin: Admin {
            address: r.get("admin", "address", d.admin.address),
        },
        jetstream: JetStream {
            url: r.get("jetstream", "url", d.jetstream.url),
            ca_certificates: r.get("jetstream", "ca_certificates", d.jetstream.ca_certificates),
            client_certificate: r.get(
                "jetstream",
                "client_certificate",
                d.jetstream.client_certificate,
            ),
            client_key: r.get("jetstream", "client_key", d.jetstream.client_key),
            nkey_seed_file: r.get("jetstream", "nkey_seed_file", d.jetstream.nkey_seed_file),
            credentials_file: r.get(
                "jetstream",
                "credentials_file",
                d.jetstream.credentials_file,
            ),
            stream: r.get("jetstream", "stream", d.jetstream.stream),
            subject: r.get("jetstream", "subject", d.jetstream.subject),
            mode: r.get("jetstream", "mode", d.jetstream.mode),
            duplicate_window: r.get(
                "jetstream",
                "duplicate_window",
                d.jetstream.duplicate_window,
            ),
            publish_timeout: r.get("jetstream", "publish_timeout", d.jetstream.publish_timeout),
        },
        forward: Forward {
            url: r.get("forward", "url", d.forward.url),
            secret: r.get("forward", "secret", d.forward.secret),
            concurrency: r.get("forward", "concurrency", d.forward.concurrency),
            max_attempts: r.get("forward", "max_attempts", d.forward.max_attempts),
            max_age: r.get("forward", "max_age", d.forward.max_age),
            initial_backoff: r.get("forward", "initial_backoff", d.forward.initial_backoff),
            max_backoff: r.get("forward", "max_backoff", d.forward.max_backoff),
            timeout: r.get("forward", "timeout", d.forward.timeout),
            ca_certificates: r.get("forward", "ca_certificates", d.forward.ca_certificates),
            insecure_allow_http: r.get(
                "forward",
                "insecure_allow_http",
                d.forward.insecure_allow_http,
            ),
        },
    };
    r.finish(&config)
}

/// Reads the file at `path` (if `required` is false, a missing file means "no file") and
/// parses it with the process environment.
pub fn load(path: &std::path::Path, required: bool) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &ProcessEnv),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => parse("", &ProcessEnv),
        Err(e) => Err(ConfigErrors(vec![format!(
            "cannot read config file {}: {e}",
            path.display()
        )])),
    }
}

/// Walks the TOML table and the environment, collecting problems instead of stopping.
struct Reader<'e> {
    table: BTreeMap<String, toml::Value>,
    env: &'e dyn Env,
    errors: Vec<String>,
    known: Vec<(&'static str, &'static str)>,
}

impl<'e> Reader<'e> {
    fn new(text: &str, env: &'e dyn Env) -> Self {
        let mut errors = Vec::new();
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t.into_iter().collect(),
            Err(e) => {
                errors.push(format!("the config file is not valid TOML: {e}"));
                BTreeMap::new()
            }
        };
        Reader {
            table,
            env,
            errors,
            known: Vec::new(),
        }
    }

    fn get<T: Value>(&mut self, section: &'static str, key: &'static str, default: T) -> T {
        self.known.push((section, key));
        let var = format!(
            "{ENV_PREFIX}{}_{}",
            section.to_uppercase(),
            key.to_uppercase()
        );
        if let Some(raw) = self.env.get(&var) {
            return match T::from_env(&raw) {
                Ok(v) => v,
                Err(why) => {
                    self.errors
                        .push(format!("[{section}] {key} (from {var}={raw:?}): {why}"));
                    default
                }
            };
        }
        let value = self
            .table
            .get(section)
            .and_then(|s| s.as_table())
            .and_then(|t| t.get(key));
        match value {
            None => default,
            Some(v) => match T::from_toml(v) {
                Ok(v) => v,
                Err(why) => {
                    self.errors.push(format!("[{section}] {key}: {why}"));
                    default
                }
            },
        }
    }

    fn finish(mut self, config: &Config) -> Result<Config, ConfigErrors> {
        for (section, value) in &self.table {
            let known_section = self.known.iter().any(|(s, _)| s == section);
            match value.as_table() {
                Some(t) if known_section => {
                    for key in t.keys() {
                        if !self.known.iter().any(|(s, k)| s == section && k == key) {
                            self.errors.push(format!("[{section}] {key}: unknown key"));
                        }
                    }
                }
                _ => self.errors.push(format!("[{section}]: unknown section")),
            }
        }
        self.errors.extend(validate(config));
        if self.errors.is_empty() {
            Ok(config.clone())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// The shortest `[store] retention`: Salesforce's retry window.
const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Checks that go beyond a value's type.
fn validate(c: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    if c.admin.address == c.listen.address && c.listen.address.port() != 0 {
        errors.push("[admin] address: must differ from [listen] address".into());
    }
    if !c.listen.path.starts_with('/') {
        errors.push(format!(
            "[listen] path: {:?} must start with '/'",
            c.listen.path
        ));
    }
    let durations = [
        ("header_read_timeout", c.limits.header_read_timeout),
        ("body_read_timeout", c.limits.body_read_timeout),
        ("handshake_timeout", c.limits.handshake_timeout),
        ("idle_timeout", c.limits.idle_timeout),
    ];
    for (key, d) in durations {
        if d.is_zero() {
            errors.push(format!("[limits] {key}: must be longer than zero"));
        }
    }
    if c.limits.max_body_bytes == 0 {
        errors.push("[limits] max_body_bytes: must be at least 1".into());
    }
    if c.limits.max_connections == 0 {
        errors.push("[limits] max_connections: must be at least 1".into());
    }
    if let Some(url) = &c.store.url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        errors.push(
            "[store] url: must be a postgres:// URL (leave it empty for the SQLite file)".into(),
        );
    }
    if c.store.url.is_none() && !c.store.ca_certificates.is_empty() {
        errors.push(
            "[store] ca_certificates: check PostgreSQL's certificate, so they need [store] url \
             (with sslmode=require); the SQLite file has no connection to check"
                .into(),
        );
    }
    if !c.store.retention.is_zero() && c.store.retention < MIN_RETENTION {
        errors.push(format!(
            "[store] retention: {} is shorter than 24h: Salesforce retries a message for up to \
             24 hours, and a notification deleted before its last retry would be stored again \
             (\"0\" keeps every notification)",
            humantime::format_duration(c.store.retention)
        ));
    }
    if !c.store.retention.is_zero()
        && c.jetstream.url.is_some()
        && c.jetstream.mode == JetStreamMode::Only
    {
        errors.push(
            "[store] retention: there is no local store to delete from with [jetstream] mode = \
             \"only\"; the stream's own limits (max_age) bound what it keeps"
                .into(),
        );
    }
    if c.ca.default_days == 0 || c.ca.default_days > c.ca.max_days {
        errors.push(format!(
            "[ca] default_days: {} must be between 1 and max_days ({})",
            c.ca.default_days, c.ca.max_days
        ));
    }
    if c.registry.expiry_error_days > c.registry.expiry_warning_days {
        errors.push("[registry] expiry_error_days must not exceed expiry_warning_days".into());
    }
    if c.tls.expiry_error_days > c.tls.expiry_warning_days {
        errors.push("[tls] expiry_error_days must not exceed expiry_warning_days".into());
    }
    if c.tls.certificate.as_os_str().is_empty() || c.tls.private_key.as_os_str().is_empty() {
        errors.push("[tls] certificate and private_key must both be set".into());
    }
    errors.extend(validate_jetstream(&c.jetstream));
    errors.extend(validate_forward(c));
    errors
}

fn validate_jetstream(j: &JetStream) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(url) = &j.url else {
        if j.mode == JetStreamMode::Only {
            errors.push(
                "[jetstream] mode: \"only\" needs [jetstream] url (it makes JetStream the only \
                 durable step)"
                    .into(),
            );
        }
        if !j.ca_certificates.is_empty()
            || j.client_certificate.is_some()
            || j.client_key.is_some()
            || j.nkey_seed_file.is_some()
            || j.credentials_file.is_some()
        {
            errors.push(
                "[jetstream] ca_certificates, client_certificate, client_key, nkey_seed_file, \
                 credentials_file: they are for the NATS connection, which needs [jetstream] url"
                    .into(),
            );
        }
        return errors;
    };
    let ways: Vec<&str> = [
        (redact_url(url) != *url).then_some("url (user:password@ or token@)"),
        j.nkey_seed_file.as_ref().map(|_| "nkey_seed_file"),
        j.credentials_file.as_ref().map(|_| "credentials_file"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if ways.len() > 1 {
        errors.push(format!(
            "[jetstream] {}: each authenticates to NATS, which takes one way; keep one",
            ways.join(", ")
        ));
    }
    if let Some((scheme, _)) = url.split_once("://")
        && scheme != "nats"
        && scheme != "tls"
    {
        errors.push(format!(
            "[jetstream] url: {scheme}:// is not a NATS URL; use nats://host:4222, or \
             tls://host:4222 to require TLS"
        ));
    }
    if j.client_certificate.is_some() != j.client_key.is_some() {
        errors.push(
            "[jetstream] client_certificate and client_key: set both (the certificate NATS \
             verifies and its private key) or neither"
                .into(),
        );
    }
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !token_ok(&j.stream) {
        errors.push(format!(
            "[jetstream] stream: {:?} must be letters, digits, '-' or '_'",
            j.stream
        ));
    }
    if !j.subject.split('.').all(token_ok) {
        errors.push(format!(
            "[jetstream] subject: {:?} must be dot-separated tokens without wildcards; \
             notifications go to <subject>.<OrgId>",
            j.subject
        ));
    }
    if j.duplicate_window.is_zero() {
        errors.push("[jetstream] duplicate_window: must be longer than zero".into());
    }
    if j.publish_timeout.is_zero() {
        errors.push("[jetstream] publish_timeout: must be longer than zero".into());
    }
    errors
}

fn validate_forward(c: &Config) -> Vec<String> {
    let f = &c.forward;
    let mut errors = Vec::new();
    let Some(url) = &f.url else {
        return errors;
    };
    match url.parse::<hyper::Uri>() {
        Err(e) => errors.push(format!("[forward] url: {url:?} is not a URL: {e}")),
        Ok(uri) => match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                if !is_loopback_host(uri.host().unwrap_or("")) && !f.insecure_allow_http {
                    errors.push(format!(
                        "[forward] url: {url:?} is plain HTTP to another host; use https:// \
                         or set [forward] insecure_allow_http = true"
                    ));
                }
            }
            _ => errors.push(format!(
                "[forward] url: {url:?} must start with https:// (or http:// on loopback)"
            )),
        },
    }
    if f.secret.0.len() < 16 {
        errors.push(
            "[forward] secret: set a secret of at least 16 characters (OBM_GATE_FORWARD_SECRET); \
             the receiving service verifies X-Obm-Gate-Signature with it"
                .into(),
        );
    }
    if f.concurrency == 0 {
        errors.push("[forward] concurrency: must be at least 1".into());
    }
    if f.max_attempts == 0 {
        errors.push("[forward] max_attempts: must be at least 1".into());
    }
    for (key, d) in [
        ("max_age", f.max_age),
        ("initial_backoff", f.initial_backoff),
        ("max_backoff", f.max_backoff),
        ("timeout", f.timeout),
    ] {
        if d.is_zero() {
            errors.push(format!("[forward] {key}: must be longer than zero"));
        }
    }
    if f.initial_backoff > f.max_backoff {
        errors.push("[forward] initial_backoff must not exceed max_backoff".into());
    }
    if c.jetstream.url.is_some() && c.jetstream.mode == JetStreamMode::Only {
        errors.push(
            "[forward] url: forwarding reads the local store, which [jetstream] mode = \"only\" \
             turns off; use mode = \"after_store\" or consume the stream instead"
                .into(),
        );
    }
    errors
}

impl Config {
    /// The secret files this configuration names, each with its key: the server's private key,
    /// and NATS's client key, NKey seed and `.creds` file where set.
    pub fn secret_files(&self) -> Vec<(&'static str, &Path)> {
        let js = &self.jetstream;
        [
            ("[tls] private_key", Some(&self.tls.private_key)),
            ("[jetstream] client_key", js.client_key.as_ref()),
            ("[jetstream] nkey_seed_file", js.nkey_seed_file.as_ref()),
            ("[jetstream] credentials_file", js.credentials_file.as_ref()),
        ]
        .into_iter()
        .filter_map(|(key, path)| Some((key, path?.as_path())))
        .collect()
    }
}

/// The mode of `path` (after symlinks), when every user may read or change it, or its group may
/// change it: what a secret file should not allow. Group read is allowed, as for keys kept
/// `root:ssl-cert 0640`. `None` when it is private enough, or cannot be read.
pub fn loose_permissions(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o027 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// `localhost` or a loopback address (IPv6 with or without brackets): traffic to it stays on
/// the machine.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A URL without its user information (a password, a token), for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// A config value type: how it reads from TOML and from an environment string.
trait Value: Sized {
    fn from_toml(v: &toml::Value) -> Result<Self, String>;
    fn from_env(s: &str) -> Result<Self, String>;
}

fn expect_str(v: &toml::Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, found {}", v.type_str()))
}

impl Value for String {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        expect_str(v).map(str::to_owned)
    }
    fn from_env(s: &str) -> Result<Self, String> {
        Ok(s.to_owned())
    }
}

impl Value for PathBuf {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        expect_str(v).map(PathBuf::from)
    }
    fn from_env(s: &str) -> Result<Self, String> {
        Ok(PathBuf::from(s))
    }
}

impl Value for SocketAddr {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        Self::from_env(expect_str(v)?)
    }
    fn from_env(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("{s:?} is not an address such as 0.0.0.0:8443"))
    }
}

/// Durations are written as `"10s"`, `"500ms"`, `"2m"`, or a whole number of seconds.
impl Value for Duration {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(i) if *i >= 0 => Ok(Duration::from_secs(*i as u64)),
            toml::Value::String(s) => Self::from_env(s),
            other => Err(format!(
                "expected a duration such as \"10s\", found {}",
                other.type_str()
            )),
        }
    }
    fn from_env(s: &str) -> Result<Self, String> {
        if let Ok(secs) = s.trim().parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration such as \"10s\": {e}"))
    }
}

impl Value for u64 {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
            other => Err(format!("expected a non-negative integer, found {other}")),
        }
    }
    fn from_env(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a non-negative integer"))
    }
}

impl Value for usize {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        u64::from_toml(v).and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
    }
    fn from_env(s: &str) -> Result<Self, String> {
        u64::from_env(s).and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
    }
}

/// An optional string: `""` means unset.
impl Value for Option<String> {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        Self::from_env(expect_str(v)?)
    }
    fn from_env(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Ok((!s.is_empty()).then(|| s.to_owned()))
    }
}

/// An optional path: `""` means unset.
impl Value for Option<PathBuf> {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        Self::from_env(expect_str(v)?)
    }
    fn from_env(s: &str) -> Result<Self, String> {
        Option::<String>::from_env(s).map(|p| p.map(PathBuf::from))
    }
}

impl Value for bool {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        v.as_bool()
            .ok_or_else(|| format!("expected true or false, found {}", v.type_str()))
    }
    fn from_env(s: &str) -> Result<Self, String> {
        match s.trim() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            other => Err(format!("{other:?} is not true or false")),
        }
    }
}

/// A list of paths; in the environment, separated by commas.
impl Value for Vec<PathBuf> {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        let arr = v
            .as_array()
            .ok_or_else(|| format!("expected a list of paths, found {}", v.type_str()))?;
        arr.iter().map(PathBuf::from_toml).collect()
    }
    fn from_env(s: &str) -> Result<Self, String> {
        Ok(s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect())
    }
}

impl Value for Secret {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        Self::from_env(expect_str(v)?)
    }
    fn from_env(s: &str) -> Result<Self, String> {
        Ok(Secret(s.to_owned()))
    }
}

impl Value for JetStreamMode {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        Self::from_env(expect_str(v)?)
    }
    fn from_env(s: &str) -> Result<Self, String> {
        match s.trim() {
            "after_store" => Ok(JetStreamMode::AfterStore),
            "only" => Ok(JetStreamMode::Only),
            other => Err(format!(
                "{other:?} is not a mode: use \"after_store\" or \"only\""
            )),
        }
    }
}

impl Value for LogFormat {
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        Self::from_env(expect_str(v)?)
    }
    fn from_env(s: &str) -> Result<Self, String> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "{other:?} is not a log format: use \"text\" or \"json\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_input_gives_the_defaults() {
        assert_eq!(parse("", &env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn the_shipped_config_parses() {
        let text = include_str!("../config/obm-gate.toml");
        parse(text, &env(&[])).unwrap();
    }

    #[test]
    fn file_values_and_env_overrides() {
        let text = r#"
            [listen]
            address = "127.0.0.1:9443"
            [limits]
            max_body_bytes = 1024
            idle_timeout = "90s"
            tls_session_cache = 0
            [registry]
            ca_certificates = ["a.pem"]
        "#;
        let c = parse(
            text,
            &env(&[
                ("OBM_GATE_LISTEN_ADDRESS", "127.0.0.1:1234"),
                ("OBM_GATE_LIMITS_HEADER_READ_TIMEOUT", "250ms"),
                ("OBM_GATE_REGISTRY_CA_CERTIFICATES", "x.pem, y.pem"),
                ("OBM_GATE_STORE_RETENTION", "30d"),
                ("OBM_GATE_TLS_EXPIRY_WARNING_DAYS", "12"),
            ]),
        )
        .unwrap();
        assert_eq!(c.tls.expiry_warning_days, 12);
        // The server's thresholds and the client certificates' are set apart.
        assert_eq!(c.registry.expiry_warning_days, 30);
        assert_eq!(c.store.retention, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(c.listen.address, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(c.limits.max_body_bytes, 1024);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.limits.tls_session_cache, 0);
        assert_eq!(c.limits.header_read_timeout, Duration::from_millis(250));
        assert_eq!(
            c.registry.ca_certificates,
            vec![PathBuf::from("x.pem"), PathBuf::from("y.pem")]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [listen]
            address = "nowhere"
            path = "obm"
            colour = "blue"
            [limits]
            max_connections = 0
            body_read_timeout = true
            [store]
            retention = "5h"
            ca_certificates = ["db-ca.pem"]
            [tls]
            expiry_warning_days = 5
            [bogus]
            x = 1
        "#;
        let errors = parse(text, &env(&[("OBM_GATE_LIMITS_MAX_BODY_BYTES", "lots")]))
            .unwrap_err()
            .0;
        let joined = errors.join("\n");
        for needle in [
            "[listen] address",
            "[listen] path",
            "[listen] colour: unknown key",
            "[limits] max_connections",
            "[limits] body_read_timeout",
            "[limits] max_body_bytes (from OBM_GATE_LIMITS_MAX_BODY_BYTES",
            "[bogus]: unknown section",
            "[store] retention: 5h is shorter than 24h",
            "[store] ca_certificates: check PostgreSQL's certificate",
            "[tls] expiry_error_days must not exceed expiry_warning_days",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert_eq!(errors.len(), 10, "{joined}");
    }

    #[test]
    fn downstream_settings_are_checked_together() {
        let text = r#"
            [jetstream]
            mode = "only"
            subject = "obm.*"
            [store]
            retention = "30d"
            [forward]
            url = "http://hooks.example.com/obm"
            secret = "short"
            initial_backoff = "10m"
        "#;
        let joined = parse(
            text,
            &env(&[("OBM_GATE_JETSTREAM_URL", "nats://127.0.0.1:4222")]),
        )
        .unwrap_err()
        .0
        .join("\n");
        for needle in [
            "[jetstream] subject",
            "[forward] url: \"http://hooks.example.com/obm\" is plain HTTP",
            "[forward] secret",
            "initial_backoff must not exceed max_backoff",
            "mode = \"only\" turns off",
            "[store] retention: there is no local store",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        // Loopback HTTP is fine; a secret from the environment; Debug never shows it.
        let ok = parse(
            "[forward]\nurl = \"http://127.0.0.1:8080/hook\"",
            &env(&[("OBM_GATE_FORWARD_SECRET", "0123456789abcdef-secret")]),
        )
        .unwrap();
        assert!(!format!("{ok:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn debug_shows_no_password_of_a_url() {
        let c = parse(
            "[store]\nurl = \"postgres://obm:pg-pw@db/obm\"\n\
             [jetstream]\nurl = \"tls://obm:nats-pw@nats.example.com:4222\"\n\
             [forward]\nurl = \"https://hook:hook-pw@hooks.example.com/obm\"",
            &env(&[("OBM_GATE_FORWARD_SECRET", "0123456789abcdef-secret")]),
        );
        // A valid config: forwarding reads the PostgreSQL store as it reads SQLite.
        let config = c.unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{config:?}");
        for secret in ["pg-pw", "nats-pw", "hook-pw", "0123456789abcdef"] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
        for redacted in [
            "postgres://…@db/obm",
            "tls://…@nats.example.com:4222",
            "https://…@hooks.example.com/obm",
        ] {
            assert!(
                shown.contains(redacted),
                "{redacted} is missing from {shown}"
            );
        }
    }

    #[test]
    fn nats_tls_keys_come_from_the_file_or_the_environment_and_are_checked() {
        let c = parse(
            "[jetstream]\nurl = \"tls://obm:pw@nats.example.com:4222\"\n\
             ca_certificates = [\"nats-ca.pem\"]",
            &env(&[
                ("OBM_GATE_JETSTREAM_CLIENT_CERTIFICATE", "obm.pem"),
                ("OBM_GATE_JETSTREAM_CLIENT_KEY", "obm.key"),
                ("OBM_GATE_JETSTREAM_CA_CERTIFICATES", "a.pem,b.pem"),
            ]),
        )
        .unwrap();
        let j = &c.jetstream;
        assert_eq!(j.ca_certificates, [PathBuf::from("a.pem"), "b.pem".into()]);
        assert_eq!(j.client_certificate, Some(PathBuf::from("obm.pem")));
        assert_eq!(j.client_key, Some(PathBuf::from("obm.key")));

        let joined =
            |text: &str, pairs: &[(&str, &str)]| parse(text, &env(pairs)).unwrap_err().0.join("\n");
        let errors = joined(
            "[jetstream]\nca_certificates = [\"nats-ca.pem\"]\nclient_key = \"obm.key\"",
            &[],
        );
        assert!(errors.contains("which needs [jetstream] url"), "{errors}");
        let errors = joined(
            "[jetstream]\nurl = \"https://nats.example.com\"\nclient_key = \"obm.key\"",
            &[],
        );
        assert!(errors.contains("https:// is not a NATS URL"), "{errors}");
        assert!(errors.contains("set both"), "{errors}");
        let errors = joined(
            "[jetstream]\nurl = \"tls://obm:pw@nats.example.com:4222\"",
            &[("OBM_GATE_JETSTREAM_NKEY_SEED_FILE", "obm.nk")],
        );
        assert!(
            errors.contains("nkey_seed_file: each authenticates"),
            "{errors}"
        );
        let errors = joined(
            "[jetstream]\nurl = \"tls://nats.example.com:4222\"\ncredentials_file = \"obm.creds\"",
            &[("OBM_GATE_JETSTREAM_NKEY_SEED_FILE", "obm.nk")],
        );
        assert!(errors.contains("which takes one way"), "{errors}");
        // An empty environment value unsets a key from the file.
        let c = parse(
            "[jetstream]\nurl = \"nats://127.0.0.1:4222\"\nclient_certificate = \"obm.pem\"\n\
             client_key = \"obm.key\"",
            &env(&[
                ("OBM_GATE_JETSTREAM_CLIENT_CERTIFICATE", ""),
                ("OBM_GATE_JETSTREAM_CLIENT_KEY", ""),
            ]),
        )
        .unwrap();
        assert_eq!(c.jetstream.client_certificate, None);
    }

    /// Which hosts the plain-transport rules and warnings spare.
    #[test]
    fn loopback_hosts() {
        for (host, loopback) in [
            ("localhost", true),
            ("127.0.0.1", true),
            ("127.8.9.10", true),
            ("[::1]", true),
            ("::1", true),
            ("10.0.0.1", false),
            ("nats.internal", false),
            ("localhost.example.com", false),
        ] {
            assert_eq!(is_loopback_host(host), loopback, "{host}");
        }
    }

    #[test]
    fn urls_are_shown_without_their_credentials() {
        for (url, shown) in [
            ("tls://obm:p%40ss@nats:4222", "tls://…@nats:4222"),
            ("nats://token@10.0.0.1:4222", "nats://…@10.0.0.1:4222"),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            (
                "postgres://u:a@b@db/obm?sslmode=require",
                "postgres://…@db/obm?sslmode=require",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_readable_by_every_user_are_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.pem");
        std::fs::write(&file, "secret").unwrap();
        for (mode, loose) in [
            (0o600, false),
            (0o400, false),
            (0o640, false),
            (0o644, true),
            (0o604, true),
            (0o660, true),
            (0o666, true),
        ] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let found = loose_permissions(&file);
            assert_eq!(found, loose.then_some(mode), "{mode:o}");
        }
        assert_eq!(loose_permissions(&dir.path().join("missing")), None);
    }

    #[test]
    fn invalid_toml_is_reported() {
        let errors = parse("[listen\n", &env(&[])).unwrap_err().0;
        assert!(errors[0].contains("not valid TOML"), "{errors:?}");
    }
}
