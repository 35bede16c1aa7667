//! The PostgreSQL backend, for several receivers sharing one database.
//!
//! One writer task per receiver does group commit: each transaction takes every message queued
//! meanwhile, inserting each message's notifications with one `INSERT … SELECT FROM UNNEST`.
//! The unique key (org, notification ID) deduplicates across receivers. When the database is
//! unreachable, commits fail with 503 (nothing is acknowledged) and the writer reconnects on the
//! next message; no restart is needed. Migrations run at start under an advisory lock, so
//! receivers starting together do not race.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use super::{
    Committed, Filter, Job, MAX_BATCH_MESSAGES, NewMessage, Pending, StoreError,
    StoredNotification, finish_batch, now_rfc3339,
};
use crate::metrics::Metrics;

/// A database that does not answer within these is treated as down (503; Salesforce retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Advisory lock key that serializes migrations between receivers ("obmg").
const MIGRATION_LOCK: i64 = 0x6f62_6d67;

/// Schema versions, applied in order; `obm_schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE obm_notifications (
        seq                BIGSERIAL PRIMARY KEY,
        org_id             TEXT NOT NULL,
        notification_id    TEXT NOT NULL,
        action_id          TEXT NOT NULL,
        object_type        TEXT NOT NULL,
        fields             TEXT NOT NULL,   -- JSON object, fields in document order
        received_at        TEXT NOT NULL,   -- RFC 3339, UTC, milliseconds
        certificate_sha256 TEXT NOT NULL,
        peer_addr          TEXT NOT NULL,
        UNIQUE (org_id, notification_id)
    );
    CREATE INDEX obm_notifications_received ON obm_notifications (received_at);
    "#,
    r#"
    CREATE TABLE obm_health (id INTEGER PRIMARY KEY CHECK (id = 1), probed_at TEXT NOT NULL);
    "#,
];

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(format!("PostgreSQL: {e}"))
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| err(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(err)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Connects, migrates, and starts the writer task.
pub(crate) async fn start(
    url: &str,
    metrics: Arc<Metrics>,
    commits: Arc<AtomicU64>,
    rx: mpsc::Receiver<Job>,
) -> Result<(), StoreError> {
    let open_err = |e: StoreError| StoreError::Open {
        path: redact(url).into(),
        detail: e.to_string(),
    };
    let mut client = connect(url).await.map_err(open_err)?;
    migrate(&mut client).await.map_err(open_err)?;
    let writer = Writer {
        url: url.to_owned(),
        client: Some(client),
        metrics,
        commits,
    };
    tokio::spawn(writer.run(rx));
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS obm_schema_version (version INTEGER NOT NULL)")
        .await
        .map_err(err)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM obm_schema_version", &[])
        .await
        .map_err(err)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    for sql in MIGRATIONS.iter().skip(version.max(0) as usize) {
        tx.batch_execute(sql).await.map_err(err)?;
    }
    let latest = MIGRATIONS.len() as i32;
    if version < latest {
        tx.execute("DELETE FROM obm_schema_version", &[])
            .await
            .map_err(err)?;
        tx.execute(
            "INSERT INTO obm_schema_version (version) VALUES ($1)",
            &[&latest],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

struct Writer {
    url: String,
    client: Option<Client>,
    metrics: Arc<Metrics>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH_MESSAGES);
        let mut shutdown = None;
        while shutdown.is_none() {
            let Some(first) = rx.recv().await else { break };
            let mut next = Some(first);
            while let Some(job) = next {
                match job {
                    Job::Commit(m, reply) => batch.push((m, reply)),
                    Job::Probe(reply) => {
                        let _ = reply.send(self.probe().await);
                    }
                    Job::Shutdown(done) => {
                        shutdown = Some(done);
                        break;
                    }
                }
                next = if batch.len() < MAX_BATCH_MESSAGES {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch).await;
            }
        }
        if let Some(done) = shutdown {
            tracing::info!("store writer flushed and stopped");
            let _ = done.send(());
        }
    }

    /// The connection, reconnecting if it was lost.
    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.url).await?);
        }
        self.client.as_mut().ok_or(StoreError::Unavailable)
    }

    async fn probe(&mut self) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let client = self.client().await?;
        let r = tokio::time::timeout(
            COMMIT_TIMEOUT,
            client.execute(
                "INSERT INTO obm_health (id, probed_at) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
                &[&now],
            ),
        )
        .await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.client = None;
                Err(err(e))
            }
            Err(_) => {
                self.client = None;
                Err(err("the probe timed out"))
            }
        }
    }

    async fn commit_batch(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        let received_at = now_rfc3339();
        let result = match self.client().await {
            Ok(client) => {
                let messages: Vec<&NewMessage> = batch.iter().map(|(m, _)| m).collect();
                match tokio::time::timeout(COMMIT_TIMEOUT, write(client, &messages, &received_at))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(err(format!(
                        "the commit did not finish within {COMMIT_TIMEOUT:?}"
                    ))),
                }
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Reconnect for the next batch: the connection may be what failed.
            self.client = None;
        }
        let result = result.map_err(|e| e.to_string());
        finish_batch(batch, result, started, &self.metrics, &self.commits);
    }
}

/// Writes the messages in one transaction.
async fn write(
    client: &mut Client,
    messages: &[&NewMessage],
    received_at: &str,
) -> Result<Vec<Committed>, StoreError> {
    let tx = client.transaction().await.map_err(err)?;
    let insert = tx
        .prepare(
            "INSERT INTO obm_notifications (org_id, notification_id, action_id, object_type, fields,
                                            received_at, certificate_sha256, peer_addr)
             SELECT $1, n.id, $2, n.object_type, n.fields, $3, $4, $5
             FROM UNNEST($6::text[], $7::text[], $8::text[]) AS n(id, object_type, fields)
             ON CONFLICT (org_id, notification_id) DO NOTHING",
        )
        .await
        .map_err(err)?;
    let mut outcomes = Vec::with_capacity(messages.len());
    for m in messages {
        let ids: Vec<&str> = m.notifications.iter().map(|n| n.id.as_str()).collect();
        let types: Vec<&str> = m
            .notifications
            .iter()
            .map(|n| n.object_type.as_str())
            .collect();
        let fields: Vec<&str> = m
            .notifications
            .iter()
            .map(|n| n.fields_json.as_str())
            .collect();
        let fingerprint = m.certificate.to_hex();
        let stored = tx
            .execute(
                &insert,
                &[
                    &m.org.as_str(),
                    &m.action_id,
                    &received_at,
                    &fingerprint,
                    &m.peer,
                    &ids,
                    &types,
                    &fields,
                ],
            )
            .await
            .map_err(err)? as usize;
        outcomes.push(Committed {
            stored,
            duplicates: m.notifications.len().saturating_sub(stored),
        });
    }
    tx.commit().await.map_err(err)?;
    Ok(outcomes)
}

/// Reads stored notifications, oldest first.
pub async fn list(url: &str, filter: &Filter) -> Result<Vec<StoredNotification>, StoreError> {
    let read = |e: StoreError| StoreError::Read(e.to_string());
    let client = connect(url).await.map_err(read)?;
    let since = filter
        .since
        .map(|t| humantime::format_rfc3339_millis(t).to_string());
    let org = filter.org.as_ref().map(|o| o.as_str().to_owned());
    let limit = filter.limit.map(|l| l as i64);
    let rows = client
        .query(
            "SELECT seq, org_id, action_id, notification_id, object_type, fields, received_at,
                    certificate_sha256, peer_addr
             FROM obm_notifications
             WHERE ($1::text IS NULL OR org_id = $1)
               AND ($2::text IS NULL OR received_at >= $2)
               AND ($3::text IS NULL OR notification_id = $3)
             ORDER BY seq
             LIMIT $4",
            &[&org, &since, &filter.notification_id, &limit],
        )
        .await
        .map_err(|e| StoreError::Read(e.to_string()))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let fields: String = r.get(5);
            StoredNotification {
                seq: r.get(0),
                org_id: r.get(1),
                action_id: r.get(2),
                notification_id: r.get(3),
                object_type: r.get(4),
                fields: serde_json::from_str(&fields).unwrap_or(serde_json::Value::String(fields)),
                received_at: r.get(6),
                certificate_sha256: r.get(7),
                peer_addr: r.get(8),
            }
        })
        .collect())
}
