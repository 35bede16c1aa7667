//! Prometheus metrics. Every label value is a fixed string from the code (a refusal reason, an
//! outcome) or, for orgs, comes from the registry, never from a request, so cardinality stays
//! bounded whatever peers send.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub outcome: &'static str,
    pub reason: &'static str,
}

/// Org and fingerprint, both from the registry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub org: String,
    pub fingerprint: String,
}

/// The NATS user (its public NKey) of `[jetstream] credentials_file`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NatsUserLabels {
    pub nkey: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub status: u16,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Webhook delivery attempts by outcome: delivered, retry, dead.
    pub forward_attempts: Family<OutcomeLabels, Counter>,
    /// Orgs with a notification waiting for the webhook, as the forwarder last read the queue.
    pub forward_pending_orgs: Gauge,
    /// Seconds since the next notification of the longest-waiting org was queued (or queued
    /// again by `messages replay`) for the webhook; 0 when none waits.
    pub forward_oldest_pending: Gauge,
    /// JetStream publishes by outcome: stored, duplicate.
    pub jetstream_published: Family<OutcomeLabels, Counter>,
    /// When the user JWT of `[jetstream] credentials_file` expires (Unix seconds); no series
    /// without one, or for a JWT that never expires.
    pub jetstream_credentials_expiry: Family<NatsUserLabels, Gauge<i64>>,
    /// 1 while `[jetstream] nkey_seed_file` or `credentials_file`, as last checked, is a file the
    /// next connect to NATS could not use, or a renewal NATS refused; 0 otherwise (and without
    /// one).
    pub jetstream_credentials_file_broken: Gauge,
    /// When the first certificate of the served chain (`[tls] certificate`) expires, Unix time.
    pub server_certificate_expiry: Gauge<i64>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub notifications_stored: Counter,
    pub notifications_duplicate: Counter,
    /// Deleted by `[store] retention`.
    pub notifications_pruned: Counter,
    pub open_connections: Gauge,
    /// Requests whose header arrived and whose answer is not yet produced.
    pub requests_in_flight: Gauge,
    /// From the end of the request body to the acknowledgment being handed to hyper.
    pub ack_latency: Histogram,
    /// Messages per group commit.
    pub batch_size: Histogram,
    /// Seconds per group commit (the fsync dominates).
    pub commit_latency: Histogram,
    /// Seconds until each registered certificate expires (negative once expired).
    pub certificate_expiry: Family<CertLabels, Gauge<i64>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("obm_gate");
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let notifications_stored = Counter::default();
        let notifications_duplicate = Counter::default();
        let notifications_pruned = Counter::default();
        let open_connections = Gauge::default();
        let requests_in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being read, parsed or stored (header received, not yet answered)",
            requests_in_flight.clone(),
        );
        let ack_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let commit_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let certificate_expiry = Family::<CertLabels, Gauge<i64>>::default();
        let forward_attempts = Family::<OutcomeLabels, Counter>::default();
        let forward_pending_orgs = Gauge::default();
        let forward_oldest_pending = Gauge::default();
        let jetstream_published = Family::<OutcomeLabels, Counter>::default();
        let jetstream_credentials_expiry = Family::<NatsUserLabels, Gauge<i64>>::default();
        let jetstream_credentials_file_broken = Gauge::default();
        let server_certificate_expiry = Gauge::<i64>::default();
        registry.register(
            "forward_attempts",
            "Webhook delivery attempts by outcome (delivered, retry, dead)",
            forward_attempts.clone(),
        );
        registry.register(
            "forward_pending_orgs",
            "Orgs with notifications waiting for the webhook (the forwarder reads up to 1024)",
            forward_pending_orgs.clone(),
        );
        registry.register(
            "forward_oldest_pending_seconds",
            "Seconds the longest-waiting org's next notification has been queued for the webhook",
            forward_oldest_pending.clone(),
        );
        registry.register(
            "jetstream_published",
            "Notifications published to JetStream by outcome (stored, duplicate)",
            jetstream_published.clone(),
        );
        registry.register(
            "jetstream_credentials_expiry_timestamp_seconds",
            "When the NATS user JWT of [jetstream] credentials_file expires (Unix time)",
            jetstream_credentials_expiry.clone(),
        );
        registry.register(
            "jetstream_credentials_file_broken",
            "1 while the NATS credential file cannot be used by the next connect, or NATS refused it (see the log)",
            jetstream_credentials_file_broken.clone(),
        );
        registry.register(
            "server_certificate_expiry_timestamp_seconds",
            "When the first certificate of the server's chain ([tls] certificate) to expire does (Unix time)",
            server_certificate_expiry.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until each registered client certificate expires",
            certificate_expiry.clone(),
        );
        registry.register(
            "handshakes",
            "TLS handshakes by outcome and refusal reason",
            handshakes.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests by status and fault reason",
            requests.clone(),
        );
        registry.register(
            "notifications_stored",
            "Notifications newly stored",
            notifications_stored.clone(),
        );
        registry.register(
            "notifications_duplicate",
            "Notifications acknowledged as already stored",
            notifications_duplicate.clone(),
        );
        registry.register(
            "notifications_pruned",
            "Notifications deleted because [store] retention had passed",
            notifications_pruned.clone(),
        );
        registry.register(
            "open_connections",
            "Open client connections",
            open_connections.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "Time from a complete request body to its acknowledgment",
            ack_latency.clone(),
        );
        registry.register(
            "store_batch_messages",
            "Messages per group commit",
            batch_size.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Duration of one group commit, fsync included",
            commit_latency.clone(),
        );
        Metrics {
            registry,
            forward_attempts,
            forward_pending_orgs,
            forward_oldest_pending,
            jetstream_published,
            jetstream_credentials_expiry,
            jetstream_credentials_file_broken,
            server_certificate_expiry,
            handshakes,
            requests,
            notifications_stored,
            notifications_duplicate,
            notifications_pruned,
            open_connections,
            requests_in_flight,
            ack_latency,
            batch_size,
            commit_latency,
            certificate_expiry,
        }
    }

    /// Replaces the certificate expiry series with the registry's current certificates.
    pub fn set_certificates(&self, registry: &crate::registry::Snapshot, now: i64) {
        self.certificate_expiry.clear();
        for r in registry.iter() {
            for org in &r.orgs {
                self.certificate_expiry
                    .get_or_create(&CertLabels {
                        org: org.to_string(),
                        fingerprint: r.cert.fingerprint.to_hex(),
                    })
                    .set(r.cert.not_after - now);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn handshake(&self, outcome: &'static str, reason: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels { outcome, reason })
            .inc();
    }

    pub fn forward_attempt(&self, outcome: &'static str) -> u64 {
        self.forward_attempts
            .get_or_create(&OutcomeLabels { outcome })
            .inc()
    }

    /// Records what JetStream did with a message's notifications.
    pub fn published(&self, stored: usize, duplicates: usize) {
        for (outcome, n) in [("stored", stored), ("duplicate", duplicates)] {
            self.jetstream_published
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(n as u64);
        }
    }

    pub fn request(&self, status: u16, reason: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { status, reason })
            .inc();
    }

    pub fn handshakes_with(&self, outcome: &'static str, reason: &'static str) -> u64 {
        self.handshakes
            .get_or_create(&HandshakeLabels { outcome, reason })
            .get()
    }

    pub fn requests_with(&self, status: u16, reason: &'static str) -> u64 {
        self.requests
            .get_or_create(&RequestLabels { status, reason })
            .get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
