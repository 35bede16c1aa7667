//! NATS JetStream publishing: delivery downstream *before* the acknowledgment.
//!
//! Each notification is published as a [`Document`](crate::document::Document) to
//! `<subject>.<OrgId>` with `Nats-Msg-Id: <OrgId>/<notification ID>`. JetStream drops a message
//! whose ID it saw within the stream's duplicate window (24 h by default, as long as Salesforce
//! retries), so a redelivered notification is in the stream once. All publishes of a message
//! are sent back to back, then every PubAck is awaited; the request is acknowledged only when
//! all arrived. The stream is created at start if missing, or checked if present.

use std::path::Path;
use std::time::Duration;

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
    /// `[jetstream] credentials_file`, with its user where the JWT could be read.
    Creds(Option<CredsUser>),
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

/// The NKey user seed in `path`, and its public key.
fn read_nkey_seed(path: &Path) -> Result<(String, String), String> {
    let problem = |detail: String| {
        format!(
            "[jetstream] nkey_seed_file {}: {detail}; it must hold one NKey user seed (SU…), as \
             `nk -gen user` or nsc writes it",
            path.display()
        )
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let seed = text.trim();
    let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| problem(e.to_string()))?;
    if pair.key_pair_type() != nkeys::KeyPairType::User {
        return Err(problem(format!(
            "this seed is of kind {:?}, not User",
            pair.key_pair_type()
        )));
    }
    Ok((seed.to_owned(), pair.public_key()))
}

/// A `.creds` user JWT expiring sooner than this is logged as a warning at start.
const CREDS_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The user of a `.creds` file, as its JWT says: the public NKey and the expiry (Unix seconds).
struct CredsUser {
    nkey: String,
    expires: Option<u64>,
}

/// The text of the `.creds` file at `path`, and its user where the JWT can be read (async-nats
/// checks the file; this is for the log).
fn read_creds(path: &Path) -> Result<(String, Option<CredsUser>), String> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: Option<u64>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let user = text
        .lines()
        .skip_while(|l| !l.contains("BEGIN NATS USER JWT"))
        .nth(1)
        .and_then(|jwt| jwt.trim().split('.').nth(1))
        .and_then(|claims| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims.trim_end_matches('='))
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Claims>(&json).ok())
        .map(|c| CredsUser {
            nkey: c.sub,
            expires: c.exp,
        });
    Ok((text, user))
}

/// What JetStream did with a message's notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub stored: usize,
    pub duplicates: usize,
}

/// A connection to NATS with the stream checked.
pub struct Publisher {
    client: async_nats::Client,
    context: jetstream::Context,
    subject: String,
    timeout: Duration,
    /// The `.creds` user's public NKey and when its JWT expires (Unix seconds).
    credentials_expiry: Option<(String, u64)>,
}

impl Publisher {
    /// Connects, then creates the stream or checks the existing one.
    pub async fn connect(cfg: &config::JetStream) -> Result<Publisher, JetStreamError> {
        let url = cfg.url.clone().unwrap_or_default();
        let shown = config::redact_url(&url);
        let fail = |detail: String| JetStreamError::Connect {
            url: shown.clone(),
            detail,
        };
        let addr = url.parse::<ServerAddr>().map_err(|e| fail(e.to_string()))?;
        // TLS material means TLS: without this, a server that does not ask for TLS would get
        // plain TCP and the configured certificates would check nothing.
        let require_tls = addr.tls_required()
            || !cfg.ca_certificates.is_empty()
            || cfg.client_certificate.is_some();
        let client_identity = cfg
            .client_certificate
            .as_deref()
            .zip(cfg.client_key.as_deref());
        // Also used when a nats:// server asks for TLS itself.
        let tls = crate::tls::nats_tls(&cfg.ca_certificates, client_identity)
            .map_err(|e| fail(format!("[jetstream] TLS: {e}")))?;
        let mut options = async_nats::ConnectOptions::new()
            .name("obm-gate")
            .connection_timeout(CONNECT_TIMEOUT)
            // Back within 2 s of NATS returning (the default backoff grows to several seconds).
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5)))
                    .min(MAX_RECONNECT_DELAY)
            })
            .require_tls(require_tls)
            .tls_client_config(tls);
        // async-nats reads no credentials from the URL itself.
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => {
                options = options.user_and_password(decode(user), decode(password));
            }
            (Some(token), None) => options = options.token(decode(token)),
            _ => {}
        }
        let mut auth = Auth::Url;
        if let Some(path) = &cfg.nkey_seed_file {
            let (seed, public) = read_nkey_seed(path).map_err(fail)?;
            options = options.nkey(seed);
            auth = Auth::Nkey(public);
        }
        if let Some(path) = &cfg.credentials_file {
            let problem = |e: String| {
                fail(format!(
                    "[jetstream] credentials_file {}: {e}; it must be a NATS .creds file (a user \
                     JWT and its NKey seed), as nsc or Synadia Cloud makes it",
                    path.display()
                ))
            };
            let (text, user) = read_creds(path).map_err(problem)?;
            options = options
                .credentials(&text)
                .map_err(|e| problem(e.to_string()))?;
            auth = Auth::Creds(user);
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
            Auth::Nkey(public) | Auth::Creds(Some(CredsUser { nkey: public, .. })) => Some(public),
            _ => None,
        };
        tracing::info!(url = %shown, tls = tls_used, nkey, "connected to NATS");
        let credentials_expiry = match auth {
            Auth::Creds(Some(CredsUser {
                nkey,
                expires: Some(at),
            })) => Some((nkey, at)),
            _ => None,
        };
        if let Some((_, expires)) = credentials_expiry {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(expires);
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            let at = humantime::format_rfc3339_seconds(at);
            if left < CREDS_EXPIRY_WARNING {
                tracing::warn!(expires = %at, "the NATS user JWT of [jetstream] credentials_file expires in {} days: renew the .creds file before, or publishing stops", left.as_secs() / 86_400);
            } else {
                tracing::info!(expires = %at, "the NATS user JWT of [jetstream] credentials_file");
            }
        }
        let context = jetstream::ContextBuilder::new()
            .timeout(cfg.publish_timeout)
            .max_ack_inflight(16_384)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let publisher = Publisher {
            client,
            context,
            subject: cfg.subject.clone(),
            timeout: cfg.publish_timeout,
            credentials_expiry,
        };
        publisher.ensure_stream(cfg).await?;
        Ok(publisher)
    }

    /// Connected to NATS right now (for `/readyz`: a receiver that cannot publish should not
    /// get traffic).
    /// The `.creds` user's public NKey and when its JWT expires (Unix seconds), if it does.
    pub fn credentials_expiry(&self) -> Option<(&str, u64)> {
        self.credentials_expiry
            .as_ref()
            .map(|(nkey, at)| (nkey.as_str(), *at))
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The subjects the stream must capture.
    fn stream_subject(&self) -> String {
        format!("{}.*", self.subject)
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
            .context
            .get_or_create_stream(wanted)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let existing = &stream.cached_info().config;
        let covers = existing.subjects.iter().any(|s| {
            *s == self.stream_subject() || *s == format!("{}.>", self.subject) || s == ">"
        });
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
        let subject = format!("{}.{}", self.subject, org);
        let fail = |e: &dyn std::fmt::Display| JetStreamError::Publish(e.to_string());
        let all = async {
            let mut acks = Vec::with_capacity(documents.len());
            for (id, payload) in documents {
                let message = PublishMessage::build().message_id(id).payload(payload);
                let ack = self
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
        tokio::time::timeout(self.timeout, all).await.map_err(|_| {
            JetStreamError::Publish(format!(
                "no PubAck within {}",
                humantime::format_duration(self.timeout)
            ))
        })?
    }
}
