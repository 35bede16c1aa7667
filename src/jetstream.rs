//! NATS JetStream publishing: delivery downstream *before* the acknowledgment.
//!
//! Each notification is published as a [`Document`](crate::document::Document) to
//! `<subject>.<OrgId>` with `Nats-Msg-Id: <OrgId>/<notification ID>`. JetStream drops a message
//! whose ID it saw within the stream's duplicate window (24 h by default, as long as Salesforce
//! retries), so a redelivered notification is in the stream once. All publishes of a message
//! are sent back to back, then every PubAck is awaited; the request is acknowledged only when
//! all arrived. The stream is created at start if missing, or checked if present.
//!
//! A renewed NKey seed or `.creds` file is put in use by a second connection: publishing moves
//! to it once NATS has accepted it, and the first closes when its last PubAck is in. So a
//! renewal cuts off no publish, and one that NATS refuses leaves the connection in use alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_nats::ServerAddr;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use percent_encoding::percent_decode_str;

use crate::config;
use crate::ids::OrgId;

/// Connecting at start gives up after this (the receiver does not start without its stream).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("JetStream stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error("JetStream did not confirm the publish: {0}")]
    Publish(String),
}

/// How the publisher authenticates to NATS.
enum Auth {
    /// `user:password@` or `token@` in the URL, or nothing.
    Url,
    /// `[jetstream] nkey_seed_file`, with the seed's public key.
    Nkey(String),
    /// `[jetstream] credentials_file`, with its user's public key.
    Creds(String),
}

/// Why NATS refused the connection, with what to change where the cause is known.
fn connect_problem(e: &async_nats::ConnectError, auth: &Auth) -> String {
    let advice = crate::tls::TlsAdvice {
        dial: "",
        client_certificate: "the server wants a client certificate it trusts: set [jetstream] \
                             client_certificate and client_key to one its CA issued",
    };
    if let Some(message) = crate::tls::tls_failure_message(e, &advice) {
        return message;
    }
    match e.kind() {
        async_nats::ConnectErrorKind::AuthorizationViolation => match auth {
            Auth::Nkey(nkey) => format!(
                "{e}: NATS refused the NKey {nkey} of [jetstream] nkey_seed_file; the server's \
                 authorization needs a user with nkey: {nkey}"
            ),
            Auth::Creds(_) => format!(
                "{e}: NATS refused the user JWT of [jetstream] credentials_file: it must be \
                 issued by an account the server trusts, and be neither expired nor revoked"
            ),
            Auth::Url => format!(
                "{e}: NATS refused the credentials; give them in [jetstream] url as \
                 user:password@ or token@ before the host, or set nkey_seed_file or \
                 credentials_file"
            ),
        },
        // async-nats reads the system's CA certificates on each TLS connect even when given a
        // config of its own, which checks NATS against other roots.
        async_nats::ConnectErrorKind::Tls
            if e.to_string().contains("could not load platform certs") =>
        {
            format!(
                "{e}: the NATS client reads the system's CA certificates (SSL_CERT_FILE, \
                 SSL_CERT_DIR, /etc/ssl/certs) on every TLS connect, though obm-gate checks NATS \
                 against its own roots plus [jetstream] ca_certificates: repair the broken bundle, or \
                 point SSL_CERT_FILE at a good one"
            )
        }
        _ => e.to_string(),
    }
}

/// Which kind of file `[jetstream]` names for NKey authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredentialKind {
    /// `nkey_seed_file`: one user seed.
    Seed,
    /// `credentials_file`: a `.creds` file, a user JWT and its seed.
    Creds,
}

/// `[jetstream] nkey_seed_file` or `credentials_file`. It is read at start, whenever the
/// receiver reloads ([`crate::reload`]: a change to the file, SIGHUP, daily), which puts a
/// renewed file in use at once ([`Publisher::reconnect`]), and again at every reconnect after
/// NATS drops a connection.
#[derive(Debug, Clone)]
pub struct CredentialFile {
    path: PathBuf,
    kind: CredentialKind,
}

/// What one read of a [`CredentialFile`] gave.
#[derive(Clone)]
pub struct Credential {
    pair: nkeys::KeyPair,
    /// The user JWT, of a `.creds` file.
    jwt: Option<String>,
    /// The user's public NKey, as NATS knows it.
    pub nkey: String,
    /// When the user JWT expires (Unix seconds); `None` for a seed, or a JWT that never does.
    pub expires: Option<u64>,
}

impl Credential {
    /// What tells one credential from another: the user JWT, or the seed's public key.
    fn identity(&self) -> &str {
        self.jwt.as_deref().unwrap_or(&self.nkey)
    }

    /// The answer to NATS's challenge `nonce`: the nonce signed, with the JWT or the NKey.
    fn answer(self, nonce: &[u8]) -> Result<async_nats::Auth, async_nats::AuthError> {
        let signature = self.pair.sign(nonce).map_err(async_nats::AuthError::new)?;
        let mut auth = async_nats::Auth::new();
        match self.jwt {
            Some(jwt) => auth.jwt = Some(jwt),
            None => auth.nkey = Some(self.nkey),
        }
        auth.signature = Some(signature);
        Ok(auth)
    }
}

impl CredentialFile {
    fn from_config(cfg: &config::JetStream) -> Option<CredentialFile> {
        let (path, kind) = match (&cfg.nkey_seed_file, &cfg.credentials_file) {
            (Some(path), _) => (path, CredentialKind::Seed),
            (None, Some(path)) => (path, CredentialKind::Creds),
            (None, None) => return None,
        };
        Some(CredentialFile {
            path: path.clone(),
            kind,
        })
    }

    /// The config key and file, for messages: `[jetstream] credentials_file /run/nats.creds`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.setting(), self.path.display())
    }

    /// The config key: `[jetstream] credentials_file`.
    pub fn setting(&self) -> &'static str {
        match self.kind {
            CredentialKind::Seed => "[jetstream] nkey_seed_file",
            CredentialKind::Creds => "[jetstream] credentials_file",
        }
    }

    /// Reads and checks the file. The error names the key and the file, never the secret.
    pub fn read(&self) -> Result<Credential, String> {
        let hint = match self.kind {
            CredentialKind::Seed => {
                "it must hold one NKey user seed (SU…), as `nk -gen user` or nsc writes it"
            }
            CredentialKind::Creds => {
                "it must be a NATS .creds file (a user JWT and its NKey seed), as nsc or Synadia \
                 Cloud makes it"
            }
        };
        let problem =
            |detail: &dyn std::fmt::Display| format!("{}: {detail}; {hint}", self.describe());
        let text = std::fs::read_to_string(&self.path).map_err(|e| problem(&e))?;
        let (seed, jwt) = match self.kind {
            CredentialKind::Seed => (text.trim(), None),
            CredentialKind::Creds => {
                let jwt = decorated(&text, "BEGIN NATS USER JWT")
                    .ok_or_else(|| problem(&"no user JWT (BEGIN NATS USER JWT) in it"))?;
                let seed = decorated(&text, "BEGIN USER NKEY SEED")
                    .ok_or_else(|| problem(&"no NKey seed (BEGIN USER NKEY SEED) in it"))?;
                (seed, Some(jwt))
            }
        };
        let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| problem(&e))?;
        if pair.key_pair_type() != nkeys::KeyPairType::User {
            return Err(problem(&format_args!(
                "its seed is of kind {:?}, not User",
                pair.key_pair_type()
            )));
        }
        let nkey = pair.public_key();
        let expires = match jwt {
            Some(jwt) => {
                let claims =
                    jwt_claims(jwt).ok_or_else(|| problem(&"its user JWT cannot be read"))?;
                if claims.sub != nkey {
                    return Err(problem(&format_args!(
                        "its user JWT is for {}, but its seed is of {nkey}",
                        claims.sub
                    )));
                }
                claims.exp
            }
            None => None,
        };
        Ok(Credential {
            pair,
            jwt: jwt.map(str::to_owned),
            nkey,
            expires,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The answer to NATS's challenge, from a fresh read of the file.
    fn authenticate(&self, nonce: &[u8]) -> Result<async_nats::Auth, async_nats::AuthError> {
        let credential = self.read().map_err(async_nats::AuthError::new)?;
        credential.answer(nonce)
    }
}

/// The line after `begin`'s line in a `.creds` file, as nsc decorates a JWT or a seed.
fn decorated<'a>(text: &'a str, begin: &str) -> Option<&'a str> {
    let mut lines = text.lines();
    lines.find(|l| l.contains(begin))?;
    lines.map(str::trim).find(|l| !l.is_empty())
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: Option<u64>,
}

/// A JWT's claims, decoded, not verified: NATS verifies them.
fn jwt_claims(jwt: &str) -> Option<Claims> {
    use base64::Engine;
    let claims = jwt.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Connects to NATS as `[jetstream]` says: TLS when asked for, and with the credential file's
/// `read` (or, without one, what the file holds now). The connect presents that very read,
/// so the identity the link records is the one NATS accepted (or refused); each reconnect of
/// the connection's life after NATS drops it reads the file again, and uses it as it is then.
async fn open(
    cfg: &config::JetStream,
    credentials: Option<&CredentialFile>,
    read: Option<Credential>,
) -> Result<Link, JetStreamError> {
    let url = cfg.url.clone().unwrap_or_default();
    let shown = config::redact_url(&url);
    let fail = |detail: String| JetStreamError::Connect {
        url: shown.clone(),
        detail,
    };
    let addr = url.parse::<ServerAddr>().map_err(|e| fail(e.to_string()))?;
    // TLS material means TLS: without this, a server that does not ask for TLS would get
    // plain TCP and the configured certificates would check nothing.
    let require_tls =
        addr.tls_required() || !cfg.ca_certificates.is_empty() || cfg.client_certificate.is_some();
    let client_identity = cfg
        .client_certificate
        .as_deref()
        .zip(cfg.client_key.as_deref());
    // Also used when a nats:// server asks for TLS itself.
    let tls = crate::tls::nats_tls(&cfg.ca_certificates, client_identity)
        .map_err(|e| fail(format!("[jetstream] TLS: {e}")))?;
    let (options, auth, credential) = match credentials {
        Some(file) => {
            let credential = match read {
                Some(credential) => credential,
                None => file.read().map_err(fail)?,
            };
            let used = credential.identity().to_owned();
            let auth = match file.kind {
                CredentialKind::Seed => Auth::Nkey(credential.nkey.clone()),
                CredentialKind::Creds => Auth::Creds(credential.nkey.clone()),
            };
            let file = file.clone();
            // The first connect answers with `credential`; reading the file again there could
            // present another identity than the one recorded as used.
            let first = std::sync::Mutex::new(Some(credential));
            let options = async_nats::ConnectOptions::with_auth_callback(move |nonce| {
                let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                let file = file.clone();
                async move {
                    match first {
                        Some(credential) => credential.answer(&nonce),
                        None => file.authenticate(&nonce),
                    }
                }
            });
            (options, auth, Some(used))
        }
        None => (async_nats::ConnectOptions::new(), Auth::Url, None),
    };
    let mut options = options
        .name("obm-gate")
        .connection_timeout(CONNECT_TIMEOUT)
        // Back within 2 s of NATS returning (the default backoff grows to several seconds).
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5)))
                .min(MAX_RECONNECT_DELAY)
        })
        .require_tls(require_tls)
        .tls_client_config(tls);
    // async-nats reads no credentials from the URL itself. (Config validation allows no
    // credentials in the URL beside a credential file, whose callback would override them.)
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(decode(user), decode(password));
        }
        (Some(token), None) => options = options.token(decode(token)),
        _ => {}
    }
    let client = options
        .connect(addr.clone())
        .await
        .map_err(|e| fail(connect_problem(&e, &auth)))?;
    let tls_used = require_tls || client.server_info().tls_required;
    if !tls_used && !config::is_loopback_host(addr.host()) {
        tracing::warn!(url = %shown, "NATS is reached over plain TCP: notifications, and a password or token in the URL, cross the network unencrypted; use a tls:// URL");
    }
    let nkey = match &auth {
        Auth::Nkey(public) | Auth::Creds(public) => Some(public),
        Auth::Url => None,
    };
    tracing::info!(url = %shown, tls = tls_used, nkey, "connected to NATS");
    let context = jetstream::ContextBuilder::new()
        .timeout(cfg.publish_timeout)
        .max_ack_inflight(16_384)
        .backpressure_on_inflight(true)
        .build(client.clone());
    Ok(Link {
        client,
        context,
        credential,
    })
}

/// What JetStream did with a message's notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub stored: usize,
    pub duplicates: usize,
}

/// One connection to NATS, and the credential it was opened with.
struct Link {
    client: async_nats::Client,
    context: jetstream::Context,
    /// What the credential file held when the connection was opened (the user JWT, or the
    /// seed's public key), to see a renewal by; `None` without a credential file.
    credential: Option<String>,
}

/// Publishing to JetStream, with the stream checked. A renewed credential file moves publishing
/// to a new connection ([`Publisher::reconnect`]); publishes never wait on the swap.
pub struct Publisher {
    cfg: config::JetStream,
    link: ArcSwap<Link>,
    /// `[jetstream] nkey_seed_file` or `credentials_file`, if set.
    credentials: Option<CredentialFile>,
    /// The credential (its identity) that NATS refused at the last [`Publisher::reconnect`],
    /// until a reconnect succeeds.
    refused: std::sync::Mutex<Option<String>>,
}

impl Publisher {
    /// Connects, then creates the stream or checks the existing one.
    pub async fn connect(cfg: &config::JetStream) -> Result<Publisher, JetStreamError> {
        let credentials = CredentialFile::from_config(cfg);
        let link = open(cfg, credentials.as_ref(), None).await?;
        let publisher = Publisher {
            cfg: cfg.clone(),
            link: ArcSwap::from_pointee(link),
            credentials,
            refused: std::sync::Mutex::new(None),
        };
        publisher.ensure_stream(cfg).await?;
        Ok(publisher)
    }

    /// The NKey seed or `.creds` file the next connect will read, if one is configured.
    pub fn credential_file(&self) -> Option<&CredentialFile> {
        self.credentials.as_ref()
    }

    /// `credential`, a fresh read of the credential file, is not what the connection in use
    /// was opened with: the file was renewed (or replaced) since.
    pub fn is_renewed(&self, credential: &Credential) -> bool {
        self.link.load().credential.as_deref() != Some(credential.identity())
    }

    /// Opens a new connection with `renewed` (the credential file as just read: the connect
    /// presents that read, whatever the file holds by then) and, once NATS has accepted it,
    /// publishes over it from then on. Publishes begun on the previous connection finish there
    /// (it closes when the last of them is done), so none is cut off, as it would be by
    /// reconnecting the one connection. When NATS refuses the new connection, the one in use
    /// stays, and `renewed` is remembered as refused ([`Publisher::was_refused`]).
    pub async fn reconnect(&self, renewed: &Credential) -> Result<(), JetStreamError> {
        let opened = open(&self.cfg, self.credentials.as_ref(), Some(renewed.clone())).await;
        let refused = opened.is_err().then(|| renewed.identity().to_owned());
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = refused;
        self.link.store(Arc::new(opened?));
        Ok(())
    }

    /// NATS refused `credential` at the last [`Publisher::reconnect`].
    pub fn was_refused(&self, credential: &Credential) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            == Some(credential.identity())
    }

    /// Connected to NATS right now (for `/readyz`: a receiver that cannot publish should not
    /// get traffic).
    pub fn is_connected(&self) -> bool {
        self.link.load().client.connection_state() == async_nats::connection::State::Connected
    }

    /// The subjects the stream must capture.
    fn stream_subject(&self) -> String {
        format!("{}.*", self.cfg.subject)
    }

    async fn ensure_stream(&self, cfg: &config::JetStream) -> Result<(), JetStreamError> {
        let fail = |detail: String| JetStreamError::Stream {
            stream: cfg.stream.clone(),
            detail,
        };
        let wanted = stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![self.stream_subject()],
            storage: stream::StorageType::File,
            duplicate_window: cfg.duplicate_window,
            ..Default::default()
        };
        let stream = self
            .link
            .load()
            .context
            .get_or_create_stream(wanted)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let existing = &stream.cached_info().config;
        let covers = existing
            .subjects
            .iter()
            .any(|s| *s == self.stream_subject() || *s == format!("{}.>", cfg.subject) || s == ">");
        if !covers {
            return Err(fail(format!(
                "it captures {:?}, not {:?} where obm-gate publishes; add that subject to the \
                 stream or change [jetstream] subject",
                existing.subjects,
                self.stream_subject()
            )));
        }
        if existing.duplicate_window < cfg.duplicate_window {
            return Err(fail(format!(
                "its duplicate window is {}, shorter than [jetstream] duplicate_window ({}); \
                 Salesforce redeliveries after it would be stored twice. Raise the stream's \
                 duplicate_window (nats stream edit) or lower the setting knowingly",
                humantime::format_duration(existing.duplicate_window),
                humantime::format_duration(cfg.duplicate_window)
            )));
        }
        if existing.storage == stream::StorageType::Memory {
            tracing::warn!(stream = %cfg.stream, "the JetStream stream uses memory storage: a NATS restart loses acknowledged notifications");
        }
        tracing::info!(stream = %cfg.stream, subjects = ?existing.subjects, duplicate_window = %humantime::format_duration(existing.duplicate_window), "JetStream stream ready");
        Ok(())
    }

    /// Publishes one message's notifications (`(message ID, JSON document)`) and waits for every
    /// PubAck. Fails if any publish is not confirmed within `publish_timeout`.
    pub async fn publish(
        &self,
        org: &OrgId,
        documents: Vec<(String, Bytes)>,
    ) -> Result<Published, JetStreamError> {
        let subject = format!("{}.{}", self.cfg.subject, org);
        let fail = |e: &dyn std::fmt::Display| JetStreamError::Publish(e.to_string());
        // Held until every PubAck is in: a connection replaced meanwhile closes only after.
        let link = self.link.load_full();
        let all = async {
            let mut acks = Vec::with_capacity(documents.len());
            for (id, payload) in documents {
                let message = PublishMessage::build().message_id(id).payload(payload);
                let ack = link
                    .context
                    .send_publish(subject.clone(), message)
                    .await
                    .map_err(|e| fail(&e))?;
                acks.push(ack);
            }
            let mut published = Published::default();
            for ack in acks {
                let ack = ack.await.map_err(|e| fail(&e))?;
                if ack.duplicate {
                    published.duplicates += 1;
                } else {
                    published.stored += 1;
                }
            }
            Ok(published)
        };
        let timeout = self.cfg.publish_timeout;
        tokio::time::timeout(timeout, all).await.map_err(|_| {
            JetStreamError::Publish(format!(
                "no PubAck within {}",
                humantime::format_duration(timeout)
            ))
        })?
    }
}
