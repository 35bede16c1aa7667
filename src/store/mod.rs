//! The durable store. The only module that knows SQL.
//!
//! Two backends behind one interface: the embedded SQLite file (default) and a shared
//! PostgreSQL (`[store] url = "postgres://…"`). Both do **group commit**: one writer takes every
//! message that queued up while the previous transaction was committing and writes them all in
//! one transaction, so concurrent messages share one fsync (SQLite `synchronous=FULL`) or one WAL
//! flush (PostgreSQL `synchronous_commit`). A caller's future resolves only after the transaction
//! holding its message has committed or failed; that is what lets the request path acknowledge
//! only what is durable. Deduplication is on (org, notification ID), by a unique key, so it
//! holds across several receivers sharing one PostgreSQL.
//!
//! With forwarding on, each newly stored notification is also queued for the webhook in the same
//! transaction; the forwarder reads that queue on its own connection ([`ForwardReader`]) and
//! records its results through the writer ([`Store::record_forward`]), so they join the next
//! group commit.

pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use serde::ser::SerializeMap;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::ids::{Fingerprint, OrgId};
use crate::metrics::Metrics;

pub use sqlite::{Compacted, compact, list};

/// Messages waiting for the writer. When it is full, requests wait for room (back-pressure).
const QUEUE_CAPACITY: usize = 4096;
/// The most messages one transaction takes, to bound a transaction's size and latency
/// (100 notifications each at most).
pub(crate) const MAX_BATCH_MESSAGES: usize = 512;

/// One notification, ready to store.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: String,
    pub object_type: String,
    /// A JSON object of the fields, in document order.
    pub fields_json: String,
}

impl NewNotification {
    pub fn new<K: AsRef<str>, V: AsRef<str>>(
        id: &str,
        object_type: &str,
        fields: &[(K, V)],
    ) -> Self {
        struct Fields<'f, K, V>(&'f [(K, V)]);
        impl<K: AsRef<str>, V: AsRef<str>> Serialize for Fields<'_, K, V> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    map.serialize_entry(k.as_ref(), v.as_ref())?;
                }
                map.end()
            }
        }
        // Room for the whole object up front (quotes, colon and comma: 6 bytes a field; escapes
        // are rare), instead of serde_json's 128 bytes doubled twice for a usual record.
        let room = 2 + fields
            .iter()
            .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 6)
            .sum::<usize>();
        let mut json = Vec::with_capacity(room);
        // Serializing strings cannot fail, and serde_json writes only UTF-8.
        let fields_json = serde_json::to_writer(&mut json, &Fields(fields))
            .ok()
            .and_then(|()| String::from_utf8(json).ok())
            .unwrap_or_else(|| "{}".into());
        NewNotification {
            id: id.to_owned(),
            object_type: object_type.to_owned(),
            fields_json,
        }
    }
}

/// One message's notifications, with where they came from.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub org: OrgId,
    pub action_id: String,
    pub certificate: Fingerprint,
    /// The sender's address as text, shared by the connection's messages.
    pub peer: Arc<str>,
    pub notifications: Vec<NewNotification>,
}

/// What a commit did with a message's notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    pub stored: usize,
    pub duplicates: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    #[error("the store could not commit the message: {0}")]
    Write(String),
    #[error("the store is shut down")]
    Unavailable,
    #[error("cannot read the store: {0}")]
    Read(String),
    #[error(
        "the store {} is open in another process: stop the receiver (and any obm-gate messages command) first",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("cannot compact the store {}: {detail}", path.display())]
    Compact { path: PathBuf, detail: String },
}

pub(crate) enum Job {
    Commit(NewMessage, oneshot::Sender<Result<Committed, StoreError>>),
    /// Webhook results to record; they join the next group commit.
    Forward(ForwardJob),
    /// Can the writer commit right now? Answered in turn with commits.
    Probe(oneshot::Sender<Result<(), StoreError>>),
    /// One step of deleting what is past the retention, between group commits.
    Prune(PruneStep, oneshot::Sender<Result<Pruned, StoreError>>),
    Shutdown(oneshot::Sender<()>),
}

/// One step of [`Store::prune`]: at most [`PRUNE_STEP_ROWS`] notifications, in one
/// transaction, so that commits queued meanwhile wait for one small delete, not for all of it.
#[derive(Debug, Clone)]
pub(crate) struct PruneStep {
    /// Notifications received before this (RFC 3339, milliseconds, as stored) are deleted.
    pub before: String,
    /// Where this step starts: the `next` of the previous step (the SQLite store walks its
    /// table in seq order; PostgreSQL looks by time and ignores it).
    pub from: i64,
}

/// What one prune step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pruned {
    pub deleted: u64,
    /// Where the next step starts; `None` when nothing more is past the retention.
    pub next: Option<i64>,
}

/// Notifications one prune step deletes at most: a few milliseconds of the writer's time.
pub(crate) const PRUNE_STEP_ROWS: i64 = 500;
/// How often the receiver deletes what its `[store] retention` has passed.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// A stored notification, as `messages list --json` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredNotification {
    #[serde(skip)]
    pub seq: i64,
    pub org_id: String,
    pub action_id: String,
    pub notification_id: String,
    pub object_type: String,
    pub fields: serde_json::Value,
    pub received_at: String,
    pub certificate_sha256: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub peer_addr: String,
    /// Where the notification is on its way to the webhook, when forwarding was on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardInfo>,
}

/// Where a stored notification is on its way to the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardState {
    Pending,
    Delivered,
    Dead,
}

impl ForwardState {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardState::Pending => "pending",
            ForwardState::Delivered => "delivered",
            ForwardState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<ForwardState> {
        match s {
            "pending" => Some(ForwardState::Pending),
            "delivered" => Some(ForwardState::Delivered),
            "dead" => Some(ForwardState::Dead),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ForwardInfo {
    pub state: ForwardState,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A notification waiting for the webhook: the oldest pending one of its org.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: i64,
    pub org_id: String,
    pub action_id: String,
    pub notification_id: String,
    pub object_type: String,
    pub fields_json: String,
    pub received_at: String,
    pub certificate_sha256: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// Not before this (Unix milliseconds).
    pub next_attempt_ms: i64,
    /// When it was queued (Unix milliseconds); the dead-letter age counts from here.
    pub queued_ms: i64,
}

/// One read of the forwarding queue.
#[derive(Debug, Clone, Default)]
pub struct Heads {
    /// The oldest pending notification of each org, soonest due first, at most as many as
    /// asked for.
    pub heads: Vec<Outgoing>,
    /// Orgs with a notification pending: every one, also those past the limit of `heads`.
    pub orgs: i64,
    /// When the longest-waiting org's head was queued (Unix milliseconds), over every org:
    /// an org backed off past the limit of `heads` still counts.
    pub oldest_queued_ms: Option<i64>,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum ForwardOutcome {
    Delivered,
    Retry { next_attempt_ms: i64, error: String },
    Dead { error: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForwardUpdate {
    pub seq: i64,
    /// Attempts made, this one included.
    pub attempts: i64,
    pub outcome: ForwardOutcome,
}

impl ForwardUpdate {
    /// The row's new (state, next attempt, last error).
    pub(crate) fn columns(&self) -> (&'static str, Option<i64>, Option<&str>) {
        match &self.outcome {
            ForwardOutcome::Delivered => (ForwardState::Delivered.as_str(), None, None),
            ForwardOutcome::Retry {
                next_attempt_ms,
                error,
            } => (
                ForwardState::Pending.as_str(),
                Some(*next_attempt_ms),
                Some(error),
            ),
            ForwardOutcome::Dead { error } => (ForwardState::Dead.as_str(), None, Some(error)),
        }
    }
}

pub(crate) type ForwardJob = (Vec<ForwardUpdate>, oneshot::Sender<Result<(), StoreError>>);

/// Which dead-lettered (or other) notifications `messages replay` queues again.
#[derive(Debug, Clone)]
pub struct Requeue {
    pub notification_id: Option<String>,
    pub org: Option<OrgId>,
    /// Only notifications in this state.
    pub state: ForwardState,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub org: Option<OrgId>,
    pub limit: Option<usize>,
    /// Only notifications received at or after this time.
    pub since: Option<SystemTime>,
    /// Only this notification ID.
    pub notification_id: Option<String>,
    /// Only notifications in this forwarding state.
    pub state: Option<ForwardState>,
}

/// Which database holds the notifications.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite(PathBuf),
    Postgres(postgres::Target),
}

/// Handle to the store; cheap to share behind an `Arc`.
pub struct Store {
    backend: Backend,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    commits: Arc<AtomicU64>,
    /// Woken after a commit stored something, for the forwarder.
    stored: Arc<Notify>,
}

/// What the writers need besides their connection.
pub(crate) struct WriterContext {
    pub metrics: Arc<Metrics>,
    pub commits: Arc<AtomicU64>,
    /// Queue every newly stored notification for the webhook.
    pub forward: bool,
}

impl Store {
    /// Opens the configured backend, creates or migrates its schema, and starts its writer.
    /// With `forward`, every newly stored notification is queued for the webhook in the same
    /// transaction.
    pub async fn open(
        config: &config::Store,
        forward: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        let commits = Arc::new(AtomicU64::new(0));
        let ctx = WriterContext {
            metrics: metrics.clone(),
            commits: commits.clone(),
            forward,
        };
        let backend = match config.url.as_deref() {
            Some(url) => {
                let target = postgres::Target::new(url, &config.ca_certificates)?;
                postgres::start(&target, ctx, rx).await?;
                Backend::Postgres(target)
            }
            None => {
                sqlite::start(&config.path, ctx, rx)?;
                Backend::Sqlite(config.path.clone())
            }
        };
        Ok(Store {
            backend,
            jobs,
            metrics,
            commits,
            stored: Arc::new(Notify::new()),
        })
    }

    /// Notified after a commit stored at least one new notification.
    pub fn stored_signal(&self) -> Arc<Notify> {
        self.stored.clone()
    }

    /// Records webhook results; resolves after they are committed.
    pub async fn record_forward(&self, updates: Vec<ForwardUpdate>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Forward((updates, tx)))
            .await
            .map_err(|_| StoreError::Unavailable)?;
        rx.await.map_err(|_| StoreError::Unavailable)?
    }

    /// A reader of the forwarding queue, owned by the forwarder.
    pub fn forward_reader(&self) -> ForwardReader {
        match &self.backend {
            Backend::Sqlite(path) => ForwardReader::Sqlite(sqlite::ForwardReader::new(path)),
            Backend::Postgres(target) => {
                ForwardReader::Postgres(postgres::ForwardReader::new(target))
            }
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The SQLite file, when that is the backend.
    pub fn path(&self) -> &Path {
        match &self.backend {
            Backend::Sqlite(p) => p,
            Backend::Postgres(_) => Path::new(""),
        }
    }

    /// Stores a message's notifications durably. Resolves after the commit.
    pub async fn commit(&self, message: NewMessage) -> Result<Committed, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Commit(message, tx))
            .await
            .map_err(|_| StoreError::Unavailable)?;
        let committed = rx.await.map_err(|_| StoreError::Unavailable)??;
        if committed.stored > 0 {
            self.stored.notify_one();
        }
        Ok(committed)
    }

    /// How many transactions (group commits) the writer has committed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Writes everything queued before this call, then stops the writer. Later commits fail
    /// with [`StoreError::Unavailable`].
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Checks, through the writer itself, that a commit goes through right now.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Probe(tx))
            .await
            .map_err(|_| StoreError::Unavailable)?;
        rx.await.map_err(|_| StoreError::Unavailable)?
    }

    /// Deletes the notifications received before `before`, except those still pending for the
    /// webhook; returns how many. It goes in steps of at most [`PRUNE_STEP_ROWS`], each its own
    /// transaction taken in turn with the group commits. The SQLite store deletes by whole
    /// minutes (what was received before the minute of `before`) and always keeps its newest
    /// notification, whose seq the next one follows.
    pub async fn prune(&self, before: SystemTime) -> Result<u64, StoreError> {
        if before < std::time::UNIX_EPOCH {
            return Ok(0); // nothing is stamped before 1970
        }
        let before = humantime::format_rfc3339_millis(before).to_string();
        let (mut deleted, mut from) = (0, 0);
        loop {
            let (tx, rx) = oneshot::channel();
            let step = PruneStep {
                before: before.clone(),
                from,
            };
            self.jobs
                .send(Job::Prune(step, tx))
                .await
                .map_err(|_| StoreError::Unavailable)?;
            let pruned = rx.await.map_err(|_| StoreError::Unavailable)??;
            deleted += pruned.deleted;
            self.metrics.notifications_pruned.inc_by(pruned.deleted);
            match pruned.next {
                Some(next) => from = next,
                None => return Ok(deleted),
            }
        }
    }

    /// Deletes, now and every ten minutes until `stop`, what was received longer than
    /// `retention` ago ([`Store::prune`]).
    pub async fn keep_for(&self, retention: std::time::Duration, stop: CancellationToken) {
        let shown = humantime::format_duration(retention);
        loop {
            // A retention longer than the clock's past leaves nothing to delete.
            let before = SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(std::time::UNIX_EPOCH);
            let pruned = tokio::select! {
                r = self.prune(before) => r,
                () = stop.cancelled() => return,
            };
            match pruned {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(
                    deleted,
                    before = %humantime::format_rfc3339_millis(before),
                    "deleted notifications older than [store] retention ({shown})"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not delete notifications older than [store] retention ({shown}); \
                     trying again in 10 minutes"
                ),
            }
            tokio::select! {
                () = tokio::time::sleep(PRUNE_EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Stored notifications, oldest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<StoredNotification>, StoreError> {
        list_backend(&self.backend, filter).await
    }
}

/// Lists from a backend without starting a writer (for the CLI).
pub async fn list_backend(
    backend: &Backend,
    filter: &Filter,
) -> Result<Vec<StoredNotification>, StoreError> {
    match backend {
        Backend::Sqlite(path) => sqlite::list(path, filter),
        Backend::Postgres(target) => postgres::list(target, filter).await,
    }
}

/// Requeues notifications for the webhook (`messages replay`); returns how many. The running
/// receiver's forwarder picks them up within a second.
pub async fn requeue(backend: &Backend, which: &Requeue) -> Result<usize, StoreError> {
    match backend {
        Backend::Sqlite(path) => sqlite::requeue(path, which),
        Backend::Postgres(target) => postgres::requeue(target, which).await,
    }
}

/// Reads the forwarding queue for the forwarder.
pub enum ForwardReader {
    Sqlite(sqlite::ForwardReader),
    Postgres(postgres::ForwardReader),
}

impl ForwardReader {
    /// The oldest pending notification of each org (at most `limit` orgs), soonest due first,
    /// and the backlog over every org. Empty on a PostgreSQL receiver that is not the
    /// forwarding leader.
    pub async fn heads(&mut self, limit: usize) -> Result<Heads, StoreError> {
        match self {
            ForwardReader::Sqlite(r) => r.heads(limit).await,
            ForwardReader::Postgres(r) => r.heads(limit).await,
        }
    }
}

/// A message waiting in a batch, with the caller to answer.
pub(crate) type Pending = (NewMessage, oneshot::Sender<Result<Committed, StoreError>>);

/// What one transaction holds: messages to store, webhook results to record.
#[derive(Default)]
pub(crate) struct Batch {
    pub messages: Vec<Pending>,
    pub forwards: Vec<ForwardJob>,
}

/// A job the writer answers itself rather than batching.
pub(crate) enum Control {
    Probe(oneshot::Sender<Result<(), StoreError>>),
    Prune(PruneStep, oneshot::Sender<Result<Pruned, StoreError>>),
    Shutdown(oneshot::Sender<()>),
}

impl Batch {
    /// Takes a commit or webhook job into this transaction; hands back the others.
    pub fn add(&mut self, job: Job) -> Option<Control> {
        match job {
            Job::Commit(m, reply) => self.messages.push((m, reply)),
            Job::Forward(f) => self.forwards.push(f),
            Job::Probe(reply) => return Some(Control::Probe(reply)),
            Job::Prune(step, reply) => return Some(Control::Prune(step, reply)),
            Job::Shutdown(done) => return Some(Control::Shutdown(done)),
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.forwards.is_empty()
    }

    /// Room for more jobs in this transaction?
    pub fn has_room(&self) -> bool {
        self.messages.len() < MAX_BATCH_MESSAGES && self.forwards.len() < MAX_BATCH_MESSAGES
    }

    pub fn updates(&self) -> impl Iterator<Item = &ForwardUpdate> {
        self.forwards.iter().flat_map(|(u, _)| u)
    }

    /// Answers every caller once the transaction committed or failed, and records it in the
    /// metrics. Shared by both writers.
    pub fn finish(
        &mut self,
        result: Result<Vec<Committed>, String>,
        started: std::time::Instant,
        ctx: &WriterContext,
    ) {
        let metrics = &ctx.metrics;
        if !self.messages.is_empty() {
            metrics
                .commit_latency
                .observe(started.elapsed().as_secs_f64());
            metrics.batch_size.observe(self.messages.len() as f64);
        }
        match result {
            Ok(outcomes) => {
                ctx.commits.fetch_add(1, Ordering::Relaxed);
                for ((_, reply), outcome) in self.messages.drain(..).zip(outcomes) {
                    metrics.notifications_stored.inc_by(outcome.stored as u64);
                    metrics
                        .notifications_duplicate
                        .inc_by(outcome.duplicates as u64);
                    let _ = reply.send(Ok(outcome));
                }
                for (_, reply) in self.forwards.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = self.messages.len(), "store commit failed; nothing acknowledged");
                for (_, reply) in self.messages.drain(..) {
                    let _ = reply.send(Err(StoreError::Write(e.clone())));
                }
                for (_, reply) in self.forwards.drain(..) {
                    let _ = reply.send(Err(StoreError::Write(e.clone())));
                }
            }
        }
    }
}

/// The received time stamp of a group commit: RFC 3339, UTC, milliseconds.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
