//! Webhook forwarding: delivery downstream *after* the acknowledgment, from the store.
//!
//! Every notification stored while `[forward] url` is set is queued in the same transaction
//! that stores it. The forwarder POSTs each one as a [`Document`] to the endpoint:
//!
//! - **Signed.** `X-Obm-Gate-Signature: t=<unix seconds>,v1=<hex>` where `v1` is
//!   HMAC-SHA256 with the shared secret over `"<t>." + body`. `X-Obm-Gate-Id: <OrgId>/<notification
//!   ID>` is the idempotency key: a redelivery carries the same one.
//! - **At least once.** A 2xx answer marks it delivered, in the store. Anything else, or no
//!   answer within `timeout`, is retried with exponential backoff and full jitter. After
//!   `max_attempts`, or `max_age` after it was queued, it is dead-lettered; `messages replay`
//!   queues it again. A crash between the answer and recording it means one more delivery.
//! - **In order per org.** Only the oldest pending notification of an org is attempted, and
//!   an org has one attempt in flight at a time; up to `concurrency` orgs go at once.
//! - **Off the ack path.** The forwarder reads the queue on its own connection, and records its
//!   results through the store writer, where they join the next group commit (no extra fsync).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::document::{self, Document};
use crate::metrics::Metrics;
use crate::store::{ForwardOutcome, ForwardUpdate, Outgoing, Store, now_ms};

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
pub const SIGNATURE_HEADER: &str = "x-obm-gate-signature";
/// `<OrgId>/<notification ID>`: the same for every delivery of one notification.
pub const ID_HEADER: &str = "x-obm-gate-id";
/// Which attempt this is, from 1.
pub const ATTEMPT_HEADER: &str = "x-obm-gate-attempt";

/// The queue is read again at least this often (for `messages replay` from another process,
/// and for other receivers' rows on a shared PostgreSQL).
const POLL: Duration = Duration::from_secs(1);
/// Orgs read per poll.
const HEADS: usize = 1024;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("webhook TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The delay before attempt `attempts + 1`: `initial × 2^(attempts−1)`, capped at `max`, then
/// a random point in its upper half (jitter spreads out retries of a webhook that came back).
pub fn backoff(cfg: &config::Forward, attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 32) as u32 - 1;
    let base = cfg
        .initial_backoff
        .saturating_mul(1u32.checked_shl(exp).unwrap_or(u32::MAX))
        .min(cfg.max_backoff);
    let half = base / 2;
    half + half.mul_f64(fastrand::f64())
}

pub struct Forwarder {
    store: Arc<Store>,
    cfg: Arc<config::Forward>,
    client: HttpsClient,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    pub fn new(
        store: Arc<Store>,
        cfg: &config::Forward,
        metrics: Arc<Metrics>,
    ) -> Result<Forwarder, ForwardError> {
        let connector = crate::tls::https_connector(&cfg.ca_certificates)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Forwarder {
            store,
            cfg: Arc::new(cfg.clone()),
            client,
            metrics,
        })
    }

    /// Forwards until `stop`, then lets the attempts in flight finish (within `timeout`).
    /// One cut off was not recorded, so it is delivered again after the restart.
    pub async fn run(self, stop: CancellationToken) {
        let stored = self.store.stored_signal();
        let mut reader = self.store.forward_reader();
        // Orgs with an attempt in flight, by the task making it.
        let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        tracing::info!(url = %self.cfg.url.as_deref().unwrap_or(""), concurrency = self.cfg.concurrency, "forwarding stored notifications to the webhook");
        loop {
            let now = now_ms();
            let mut wake = now + POLL.as_millis() as i64;
            match reader.heads(HEADS).await {
                Ok(read) => {
                    // The backlog, for alerting. Delivery is in order per org, so an org's head
                    // has waited longest of its notifications (a replayed one counts from its
                    // replay), and the oldest head is how far the webhook is behind. Both come
                    // from every org waiting, not only the `HEADS` read.
                    self.metrics.forward_pending_orgs.set(read.orgs);
                    self.metrics
                        .forward_oldest_pending
                        .set(read.oldest_queued_ms.map_or(0, |q| (now - q).max(0) / 1000));
                    for head in read.heads {
                        if in_flight.values().any(|org| *org == head.org_id) {
                            continue;
                        }
                        if head.next_attempt_ms > now {
                            wake = wake.min(head.next_attempt_ms);
                            continue;
                        }
                        if in_flight.len() >= self.cfg.concurrency {
                            break;
                        }
                        let org = head.org_id.clone();
                        let task = tasks.spawn(self.attempt(head));
                        in_flight.insert(task.id(), org);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the forwarding queue; retrying"),
            }
            let sleep = Duration::from_millis((wake - now).max(1) as u64);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = stored.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                Some(done) = tasks.join_next_with_id() => {
                    // A finished attempt (even one that panicked) frees its org; collect every
                    // other finished one before reading the queue again.
                    let mut next = Some(done);
                    while let Some(done) = next {
                        let id = match done {
                            Ok((id, ())) => id,
                            Err(e) => {
                                tracing::error!(error = %e, "a webhook attempt failed unexpectedly; it will be retried");
                                e.id()
                            }
                        };
                        in_flight.remove(&id);
                        next = tasks.try_join_next_with_id();
                    }
                }
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.cfg.timeout + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            tasks.shutdown().await;
        }
    }

    /// One delivery attempt and its recording.
    fn attempt(&self, head: Outgoing) -> impl Future<Output = ()> + Send + 'static {
        let client = self.client.clone();
        let cfg = self.cfg.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        async move {
            let attempts = head.attempts + 1;
            let result = deliver(&client, &cfg, &head, attempts).await;
            let now = now_ms();
            let outcome = match result {
                Ok(()) => ForwardOutcome::Delivered,
                Err(error) => {
                    let age = Duration::from_millis((now - head.queued_ms).max(0) as u64);
                    if attempts >= cfg.max_attempts as i64 || age >= cfg.max_age {
                        ForwardOutcome::Dead { error }
                    } else {
                        let delay = backoff(&cfg, attempts);
                        ForwardOutcome::Retry {
                            next_attempt_ms: now + delay.as_millis() as i64,
                            error,
                        }
                    }
                }
            };
            let label = match &outcome {
                ForwardOutcome::Delivered => "delivered",
                ForwardOutcome::Retry { .. } => "retry",
                ForwardOutcome::Dead { .. } => "dead",
            };
            metrics.forward_attempt(label);
            match &outcome {
                ForwardOutcome::Delivered => {
                    tracing::debug!(org = %head.org_id, notification = %head.notification_id, attempts, "forwarded")
                }
                ForwardOutcome::Retry {
                    error,
                    next_attempt_ms,
                } => {
                    tracing::warn!(org = %head.org_id, notification = %head.notification_id, attempts, error = %error, retry_in_ms = next_attempt_ms - now, "webhook delivery failed; will retry")
                }
                ForwardOutcome::Dead { error } => {
                    tracing::error!(org = %head.org_id, notification = %head.notification_id, attempts, error = %error, "webhook delivery dead-lettered; `obm-gate messages replay` re-sends it")
                }
            }
            let update = ForwardUpdate {
                seq: head.seq,
                attempts,
                outcome,
            };
            if let Err(e) = store.record_forward(vec![update]).await {
                tracing::warn!(error = %e, org = %head.org_id, notification = %head.notification_id, "cannot record the webhook result; it will be attempted again");
            }
        }
    }
}

/// POSTs one notification; `Err` says why it did not count as delivered.
async fn deliver(
    client: &HttpsClient,
    cfg: &config::Forward,
    head: &Outgoing,
    attempt: i64,
) -> Result<(), String> {
    let body = Document {
        org_id: &head.org_id,
        action_id: &head.action_id,
        notification_id: &head.notification_id,
        object_type: &head.object_type,
        fields_json: &head.fields_json,
        received_at: &head.received_at,
        certificate_sha256: &head.certificate_sha256,
    }
    .to_bytes();
    let timestamp = now_ms() / 1000;
    let signature = sign(cfg.secret.0.as_bytes(), timestamp, &body);
    let request = hyper::Request::post(cfg.url.as_deref().unwrap_or_default())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("obm-gate/", env!("CARGO_PKG_VERSION")))
        .header(
            ID_HEADER,
            document::message_id(&head.org_id, &head.notification_id),
        )
        .header(ATTEMPT_HEADER, attempt)
        .header(SIGNATURE_HEADER, signature)
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("no answer: {}", error_chain(&e)))?;
        let status = response.status();
        // Read (a bounded part of) the answer so the connection can be reused.
        let _ = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    };
    tokio::time::timeout(cfg.timeout, exchange)
        .await
        .map_err(|_| {
            format!(
                "no answer within {}",
                humantime::format_duration(cfg.timeout)
            )
        })?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // A known answer, computed independently with
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac 0123456789abcdef`.
        assert_eq!(
            sign(b"0123456789abcdef", 1_700_000_000, b"{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }

    #[test]
    fn backoff_doubles_within_its_cap_with_jitter() {
        let mut cfg = crate::config::Config::default().forward;
        cfg.initial_backoff = Duration::from_secs(1);
        cfg.max_backoff = Duration::from_secs(60);
        for (attempts, base) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)] {
            let base = Duration::from_secs(base);
            for _ in 0..50 {
                let d = backoff(&cfg, attempts);
                assert!(
                    d >= base / 2 && d <= base,
                    "attempt {attempts}: {d:?} vs {base:?}"
                );
            }
        }
    }
}
