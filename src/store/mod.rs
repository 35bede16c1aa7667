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

pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use serde::ser::SerializeMap;
use tokio::sync::{mpsc, oneshot};

use crate::config;
use crate::ids::{Fingerprint, OrgId};
use crate::metrics::Metrics;

pub use sqlite::list;

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
        NewNotification {
            id: id.to_owned(),
            object_type: object_type.to_owned(),
            // Serializing strings into a String cannot fail.
            fields_json: serde_json::to_string(&Fields(fields)).unwrap_or_else(|_| "{}".into()),
        }
    }
}

/// One message's notifications, with where they came from.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub org: OrgId,
    pub action_id: String,
    pub certificate: Fingerprint,
    pub peer: String,
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
}

pub(crate) enum Job {
    Commit(NewMessage, oneshot::Sender<Result<Committed, StoreError>>),
    /// Can the writer commit right now? Answered in turn with commits.
    Probe(oneshot::Sender<Result<(), StoreError>>),
    Shutdown(oneshot::Sender<()>),
}

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
}

/// Which database holds the notifications.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Handle to the store; cheap to share behind an `Arc`.
pub struct Store {
    backend: Backend,
    jobs: mpsc::Sender<Job>,
    commits: Arc<AtomicU64>,
}

impl Store {
    /// Opens the configured backend, creates or migrates its schema, and starts its writer.
    pub async fn open(config: &config::Store, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        let commits = Arc::new(AtomicU64::new(0));
        let backend = match config.url.as_deref() {
            Some(url) => {
                postgres::start(url, metrics, commits.clone(), rx).await?;
                Backend::Postgres(url.to_owned())
            }
            None => {
                sqlite::start(&config.path, metrics, commits.clone(), rx)?;
                Backend::Sqlite(config.path.clone())
            }
        };
        Ok(Store {
            backend,
            jobs,
            commits,
        })
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
        rx.await.map_err(|_| StoreError::Unavailable)?
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
        Backend::Postgres(url) => postgres::list(url, filter).await,
    }
}

/// A message waiting in a batch, with the caller to answer.
pub(crate) type Pending = (NewMessage, oneshot::Sender<Result<Committed, StoreError>>);

/// Answers every caller of a batch once its transaction committed or failed, and records the
/// batch in the metrics. Shared by both writers.
pub(crate) fn finish_batch(
    batch: &mut Vec<Pending>,
    result: Result<Vec<Committed>, String>,
    started: std::time::Instant,
    metrics: &Metrics,
    commits: &AtomicU64,
) {
    metrics
        .commit_latency
        .observe(started.elapsed().as_secs_f64());
    metrics.batch_size.observe(batch.len() as f64);
    match result {
        Ok(outcomes) => {
            commits.fetch_add(1, Ordering::Relaxed);
            for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                metrics.notifications_stored.inc_by(outcome.stored as u64);
                metrics
                    .notifications_duplicate
                    .inc_by(outcome.duplicates as u64);
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, messages = batch.len(), "store commit failed; nothing acknowledged");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(StoreError::Write(e.clone())));
            }
        }
    }
}

/// The received time stamp of a group commit: RFC 3339, UTC, milliseconds.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
