//! The embedded SQLite backend.
//!
//! One SQLite file in WAL mode with `synchronous=FULL`, so a commit returns only after the WAL is
//! fsync'd. One writer thread owns the write connection and does **group commit**: it takes every
//! message that queued up while the previous transaction was being fsync'd and writes them all in
//! one transaction, so concurrent messages share one fsync. A caller's future resolves only after
//! the transaction holding its message has committed (or failed); that is what lets the request
//! path acknowledge only what is durable. Deduplication is on (org, notification ID).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::mpsc;

use super::{
    Committed, Filter, Job, NewMessage, Pending, StoreError, StoredNotification, finish_batch,
    now_rfc3339,
};
use crate::ids::OrgId;
use crate::metrics::Metrics;

use super::MAX_BATCH_MESSAGES;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE notifications (
        seq                INTEGER PRIMARY KEY,
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
    CREATE INDEX notifications_received ON notifications (received_at);
"#,
    r#"
    -- One row, rewritten by the readiness probe: proof that a commit reaches the disk.
    CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), probed_at TEXT NOT NULL);
"#,
];

/// Opens (creating if needed) the SQLite file, migrates the schema and starts the writer thread,
/// which takes jobs from `rx` until a shutdown job or until every sender is gone.
pub(crate) fn start(
    path: &Path,
    metrics: Arc<Metrics>,
    commits: Arc<AtomicU64>,
    rx: mpsc::Receiver<Job>,
) -> Result<(), StoreError> {
    let open_err = |detail: String| StoreError::Open {
        path: path.to_owned(),
        detail,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    }
    let conn = open_writer(path).map_err(|e| open_err(e.to_string()))?;
    let writer = Writer {
        conn,
        metrics,
        commits,
    };
    std::thread::Builder::new()
        .name("obm-store-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| open_err(e.to_string()))?;
    Ok(())
}

fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    // Only the CLI reads alongside; a writer waiting longer than this answers 503 instead.
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

struct Writer {
    conn: Connection,
    metrics: Arc<Metrics>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH_MESSAGES);
        let mut shutdown = None;
        while shutdown.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut next = Some(first);
            // Everything that queued up during the last fsync joins this transaction.
            while let Some(job) = next {
                match job {
                    Job::Commit(m, reply) => batch.push((m, reply)),
                    Job::Probe(reply) => {
                        let _ = reply.send(self.probe());
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
                self.commit_batch(&mut batch);
            }
        }
        if let Some(done) = shutdown {
            tracing::info!("store writer flushed and stopped");
            let _ = done.send(());
        }
    }

    /// Commits one small row: a full disk or a read-only file fails here as a message would.
    fn probe(&mut self) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| StoreError::Write(e.to_string()))?;
        tx.execute(
            "INSERT INTO health (id, probed_at) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
            params![now],
        )
        .map_err(|e| StoreError::Write(e.to_string()))?;
        tx.commit().map_err(|e| StoreError::Write(e.to_string()))
    }

    fn commit_batch(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        let received_at = now_rfc3339();
        let result = write(&mut self.conn, batch.iter().map(|(m, _)| m), &received_at)
            .map_err(|e| e.to_string());
        finish_batch(batch, result, started, &self.metrics, &self.commits);
    }
}

/// Writes the messages in one transaction. On error the transaction is rolled back (dropped).
fn write<'m>(
    conn: &mut Connection,
    messages: impl Iterator<Item = &'m NewMessage>,
    received_at: &str,
) -> rusqlite::Result<Vec<Committed>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO notifications (org_id, notification_id, action_id, object_type, fields,
                                        received_at, certificate_sha256, peer_addr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (org_id, notification_id) DO NOTHING",
        )?;
        for m in messages {
            let mut outcome = Committed::default();
            let fingerprint = m.certificate.to_hex();
            for n in &m.notifications {
                let changed = insert.execute(params![
                    m.org.as_str(),
                    n.id,
                    m.action_id,
                    n.object_type,
                    n.fields_json,
                    received_at,
                    fingerprint,
                    m.peer,
                ])?;
                if changed == 1 {
                    outcome.stored += 1;
                } else {
                    outcome.duplicates += 1;
                }
            }
            outcomes.push(outcome);
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Reads stored notifications, oldest first, from a store file (read-only; works while the
/// receiver runs).
pub fn list(path: &Path, filter: &Filter) -> Result<Vec<StoredNotification>, StoreError> {
    let read_err = |e: rusqlite::Error| StoreError::Read(format!("{}: {e}", path.display()));
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(read_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(read_err)?;
    let has_table: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'notifications'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(read_err)?;
    if has_table.is_none() {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare(
            "SELECT seq, org_id, action_id, notification_id, object_type, fields, received_at,
                    certificate_sha256, peer_addr
             FROM notifications
             WHERE (?1 IS NULL OR org_id = ?1)
               AND (?3 IS NULL OR received_at >= ?3)
               AND (?4 IS NULL OR notification_id = ?4)
             ORDER BY seq
             LIMIT ?2",
        )
        .map_err(read_err)?;
    let limit = filter.limit.map(|l| l as i64).unwrap_or(-1);
    // Stored times are RFC 3339 with milliseconds, so they compare correctly as text.
    let since = filter
        .since
        .map(|t| humantime::format_rfc3339_millis(t).to_string());
    let org = filter.org.as_ref().map(OrgId::as_str);
    let rows = stmt
        .query_map(params![org, limit, since, filter.notification_id], |r| {
            let fields: String = r.get(5)?;
            Ok(StoredNotification {
                seq: r.get(0)?,
                org_id: r.get(1)?,
                action_id: r.get(2)?,
                notification_id: r.get(3)?,
                object_type: r.get(4)?,
                fields: serde_json::from_str(&fields).unwrap_or(serde_json::Value::String(fields)),
                received_at: r.get(6)?,
                certificate_sha256: r.get(7)?,
                peer_addr: r.get(8)?,
            })
        })
        .map_err(read_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(read_err)
}
