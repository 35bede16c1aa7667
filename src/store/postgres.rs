//! The PostgreSQL backend, for several receivers sharing one database.
//!
//! One writer task per receiver does group commit: each transaction takes every message queued
//! meanwhile, and inserts all their notifications with one prepared `INSERT … SELECT FROM
//! UNNEST`: one round trip per commit, however many messages it holds.
//! The unique key (notification ID, org) deduplicates across receivers. When the database is
//! unreachable, commits fail with 503 (nothing is acknowledged) and the writer reconnects on the
//! next message; no restart is needed. Migrations run at start under an advisory lock, so
//! receivers starting together do not race.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, GenericClient, NoTls, Statement};

use super::{
    Batch, Committed, Control, Filter, ForwardInfo, ForwardState, ForwardUpdate, Heads, Job,
    NewMessage, Outgoing, PRUNE_STEP_ROWS, PruneStep, Pruned, Requeue, StoreError,
    StoredNotification, WriterContext, now_ms, now_rfc3339,
};

/// A database that does not answer within these is treated as down (503; Salesforce retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Advisory lock key that serializes migrations between receivers ("obmg").
const MIGRATION_LOCK: i64 = 0x6f62_6d67;
/// Takes the advisory lock held by the one receiver that forwards to the webhook, so that
/// receivers sharing a queue keep each org's order. One lock per queue table, not per database:
/// "obmf" in the key's high 32 bits, the OID of the `obm_forward` that `search_path` finds in
/// the low. Receivers sharing a schema share the lock; a deployment in another schema of the
/// same database forwards its own queue (with one key per database, one of them never did).
/// No migration rebuilds `obm_forward`, so its OID, and the key, stay put.
const FORWARD_LOCK: &str = "
    SELECT pg_try_advisory_lock((x'6f626d66'::bigint << 32) | 'obm_forward'::regclass::oid::bigint)";

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
    r#"
    CREATE TABLE obm_forward (
        seq             BIGINT PRIMARY KEY REFERENCES obm_notifications (seq),
        org_id          TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts        BIGINT NOT NULL DEFAULT 0,
        next_attempt_ms BIGINT NOT NULL,
        queued_ms       BIGINT NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX obm_forward_state_org ON obm_forward (state, org_id, seq);
    "#,
    // The unique key leads with the notification ID, as in the SQLite store (see its
    // migration 5): new IDs arrive near one end of the key per Salesforce pod, not per org, and
    // a lookup by notification ID alone can use it.
    r#"
    ALTER TABLE obm_notifications
        DROP CONSTRAINT obm_notifications_org_id_notification_id_key,
        ADD CONSTRAINT obm_notifications_notification_id_org_id_key
            UNIQUE (notification_id, org_id);
    "#,
    // `messages list --org` reads the org's rows, not the table in seq order. With 512 orgs it
    // adds 11–13% to the bytes a message writes, and up to a fifth to the CPU of 100-notification
    // messages (BENCHMARKS.md, "The org index"). Building it holds off other receivers' inserts.
    r#"
    CREATE INDEX obm_notifications_org_seq ON obm_notifications (org_id, seq);
    "#,
];

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(format!("PostgreSQL: {e}"))
}

/// The database and how to reach it: `[store] url`, and TLS when the URL says
/// `sslmode=require`. Any other `sslmode` (`prefer` is tokio-postgres's default) connects
/// without TLS: a TLS that fell back to plain TCP, or whose certificate went unchecked, would
/// look safer than it is.
#[derive(Clone)]
pub struct Target {
    url: String,
    tls: Option<crate::tls::PostgresTls>,
    /// Every host is this machine (loopback or a Unix socket).
    local: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &crate::config::redact_url(&self.url))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// Checks the URL and, with `sslmode=require`, loads `ca_certificates` (PEM) as trust
    /// anchors besides the public web roots.
    pub fn new(url: &str, ca_certificates: &[PathBuf]) -> Result<Target, StoreError> {
        let open_err = |detail: String| StoreError::Open {
            path: crate::config::redact_url(url).into(),
            detail,
        };
        // libpq's `verify-full` is what `require` does here; tokio-postgres knows only the latter.
        let url = url.replace("sslmode=verify-full", "sslmode=require");
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| open_err(format!("not a PostgreSQL URL: {e}")))?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(
                crate::tls::postgres_tls(ca_certificates)
                    .map_err(|e| open_err(format!("[store] ca_certificates: {e}")))?,
            ),
            _ if !ca_certificates.is_empty() => {
                return Err(open_err(
                    "[store] ca_certificates is set, but the URL does not say sslmode=require, \
                     so the connection would not use TLS and the certificates would check \
                     nothing"
                        .into(),
                ));
            }
            _ => None,
        };
        let local = config.get_hosts().iter().all(|h| match h {
            Host::Tcp(name) => crate::config::is_loopback_host(name),
            Host::Unix(_) => true,
        }) && config.get_hostaddrs().iter().all(|a| a.is_loopback());
        Ok(Target { url, tls, local })
    }
}

async fn connect(target: &Target) -> Result<Client, StoreError> {
    let connecting = async {
        match &target.tls {
            Some(tls) => tokio_postgres::connect(&target.url, tls.clone())
                .await
                .map(|(client, connection)| drive(client, connection)),
            None => tokio_postgres::connect(&target.url, NoTls)
                .await
                .map(|(client, connection)| drive(client, connection)),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| err(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| {
            let advice = crate::tls::TlsAdvice {
                dial: " (hostaddr= can give the address)",
                client_certificate: "the server wants a client certificate, and obm-gate sends \
                                     none to PostgreSQL: let it in without one (a hostssl line \
                                     without clientcert in pg_hba.conf)",
            };
            match crate::tls::tls_failure_message(&e, &advice) {
                Some(message) => err(message),
                None => err(e),
            }
        })
}

/// Runs the connection's I/O on its own task; returns the client that uses it.
fn drive<S, T>(client: Client, connection: tokio_postgres::Connection<S, T>) -> Client
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    client
}

/// Connects, migrates, and starts the writer task.
pub(crate) async fn start(
    target: &Target,
    ctx: WriterContext,
    rx: mpsc::Receiver<Job>,
) -> Result<(), StoreError> {
    let open_err = |e: StoreError| StoreError::Open {
        path: crate::config::redact_url(&target.url).into(),
        detail: match e {
            StoreError::Write(detail) => detail,
            other => other.to_string(),
        },
    };
    if target.tls.is_none() && !target.local {
        tracing::warn!(
            url = %crate::config::redact_url(&target.url),
            "the PostgreSQL connection is plain TCP, not TLS: notifications and the password \
             cross the network readable; add sslmode=require to [store] url"
        );
    }
    let mut client = connect(target).await.map_err(open_err)?;
    migrate(&mut client).await.map_err(open_err)?;
    let session = Session::prepare(client).await.map_err(open_err)?;
    let writer = Writer {
        target: target.clone(),
        session: Some(session),
        ctx,
    };
    tokio::spawn(writer.run(rx));
    Ok(())
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    // Without the NOTICE that the table already exists, logged at every start otherwise.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS obm_schema_version (version INTEGER NOT NULL)",
    )
    .await
    .map_err(err)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM obm_schema_version", &[])
        .await
        .map_err(err)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let latest = MIGRATIONS.len() as i32;
    if version > 0 && version < latest {
        // An upgrade. Building migration 5's index on an existing table holds off the inserts
        // of receivers that already run, so say so before it starts. 3 million notifications
        // (1.1 GB), PostgreSQL restarted and the page cache dropped: 5.0 s; warm: 3.4 s.
        tracing::info!(
            from = version,
            to = latest,
            "upgrading the PostgreSQL schema, once; other receivers' inserts wait while an \
             index on the notifications is built, about 2 s per million notifications"
        );
    }
    for sql in MIGRATIONS.iter().skip(version.max(0) as usize) {
        tx.batch_execute(sql).await.map_err(err)?;
    }
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

/// A connection with the writer's statements prepared on it (parsed once per connection, not
/// once per commit).
struct Session {
    client: Client,
    insert: Statement,
    update: Statement,
}

/// A whole batch's notifications in one statement, so that a group commit is one round trip
/// however many messages it holds. `$1`–`$4` hold one element per message; `$5`–`$8` one per
/// notification, `$5` giving its message's position (from 1); the caller sends a key at most
/// once per batch. Rows go in in batch order, so that seq follows arrival as it does one commit
/// to the next. Each newly inserted row is queued for the webhook in the same statement when
/// `$10`. The statement returns the key of every row it inserted.
const INSERT: &str = "
    WITH message AS (
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
            WITH ORDINALITY AS m(org_id, action_id, certificate_sha256, peer_addr, position)
    ), inserted AS (
        INSERT INTO obm_notifications (org_id, notification_id, action_id, object_type, fields,
                                       received_at, certificate_sha256, peer_addr)
        SELECT m.org_id, n.id, m.action_id, n.object_type, n.fields, $9, m.certificate_sha256,
               m.peer_addr
        FROM UNNEST($5::int8[], $6::text[], $7::text[], $8::text[]) WITH ORDINALITY
                 AS n(message, id, object_type, fields, position)
            JOIN message m ON m.position = n.message
        ORDER BY n.position
        ON CONFLICT (notification_id, org_id) DO NOTHING
        RETURNING seq, org_id, notification_id
    ), queued AS (
        INSERT INTO obm_forward (seq, org_id, state, attempts, next_attempt_ms, queued_ms)
        SELECT seq, org_id, 'pending', 0, $11, $11 FROM inserted WHERE $10
    )
    SELECT org_id, notification_id FROM inserted";

/// A batch's webhook results in one statement; each row is updated at most once (the caller
/// keeps the last result for a notification).
const UPDATE: &str = "
    UPDATE obm_forward f
    SET state = u.state, attempts = u.attempts,
        next_attempt_ms = COALESCE(u.next_attempt_ms, f.next_attempt_ms), last_error = u.error
    FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::text[])
             AS u(seq, state, attempts, next_attempt_ms, error)
    WHERE f.seq = u.seq";

impl Session {
    async fn open(target: &Target) -> Result<Session, StoreError> {
        Session::prepare(connect(target).await?).await
    }

    async fn prepare(client: Client) -> Result<Session, StoreError> {
        let insert = client.prepare(INSERT).await.map_err(err)?;
        let update = client.prepare(UPDATE).await.map_err(err)?;
        Ok(Session {
            client,
            insert,
            update,
        })
    }
}

struct Writer {
    target: Target,
    session: Option<Session>,
    ctx: WriterContext,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Batch::default();
        let (mut shutdown, mut pruning) = (None, None);
        while shutdown.is_none() {
            let Some(first) = rx.recv().await else { break };
            let mut next = Some(first);
            while let Some(job) = next {
                match batch.add(job) {
                    None => {}
                    Some(Control::Probe(reply)) => {
                        let _ = reply.send(self.probe().await);
                    }
                    Some(Control::Prune(step, reply)) => {
                        pruning = Some((step, reply));
                        break;
                    }
                    Some(Control::Shutdown(done)) => {
                        shutdown = Some(done);
                        break;
                    }
                }
                next = if batch.has_room() {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch).await;
            }
            // As in the SQLite writer: after the commit of what came before it.
            if let Some((step, reply)) = pruning.take() {
                let _ = reply.send(self.prune(&step).await);
            }
        }
        if let Some(done) = shutdown {
            tracing::info!("store writer flushed and stopped");
            let _ = done.send(());
        }
    }

    /// The connection, reconnecting if it was lost.
    async fn session(&mut self) -> Result<&mut Session, StoreError> {
        if self.session.as_ref().is_none_or(|s| s.client.is_closed()) {
            self.session = Some(Session::open(&self.target).await?);
        }
        self.session.as_mut().ok_or(StoreError::Unavailable)
    }

    async fn probe(&mut self) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let session = self.session().await?;
        let r = tokio::time::timeout(
            COMMIT_TIMEOUT,
            session.client.execute(
                "INSERT INTO obm_health (id, probed_at) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
                &[&now],
            ),
        )
        .await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.session = None;
                Err(err(e))
            }
            Err(_) => {
                self.session = None;
                Err(err("the probe timed out"))
            }
        }
    }

    /// One step of [`super::Store::prune`]: the oldest notifications received before
    /// `step.before` that are not pending for the webhook, by the `received_at` index. A row
    /// another receiver is deleting meanwhile is skipped, not waited for.
    async fn prune(&mut self, step: &PruneStep) -> Result<Pruned, StoreError> {
        let session = self.session().await?;
        let r = tokio::time::timeout(COMMIT_TIMEOUT, prune(&mut session.client, step)).await;
        match r {
            Ok(Ok(pruned)) => Ok(pruned),
            Ok(Err(e)) => {
                self.session = None;
                Err(e)
            }
            Err(_) => {
                self.session = None;
                Err(err(format!(
                    "a prune step did not finish within {COMMIT_TIMEOUT:?}"
                )))
            }
        }
    }

    async fn commit_batch(&mut self, batch: &mut Batch) {
        let started = Instant::now();
        let received_at = now_rfc3339();
        let forward = self.ctx.forward;
        let result = match self.session().await {
            Ok(session) => {
                let messages: Vec<&NewMessage> = batch.messages.iter().map(|(m, _)| m).collect();
                let updates: Vec<&ForwardUpdate> = batch.updates().collect();
                let write = write(session, &messages, &updates, &received_at, forward);
                match tokio::time::timeout(COMMIT_TIMEOUT, write).await {
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
            self.session = None;
        }
        let result = result.map_err(|e| e.to_string());
        batch.finish(result, started, &self.ctx);
    }
}

async fn prune(client: &mut Client, step: &PruneStep) -> Result<Pruned, StoreError> {
    let tx = client.transaction().await.map_err(err)?;
    let seqs: Vec<i64> = tx
        .query(
            "SELECT n.seq FROM obm_notifications n
             WHERE n.received_at < $1
               AND NOT EXISTS (SELECT 1 FROM obm_forward f
                               WHERE f.seq = n.seq AND f.state = 'pending')
             ORDER BY n.received_at
             LIMIT $2
             FOR UPDATE OF n SKIP LOCKED",
            &[&step.before, &PRUNE_STEP_ROWS],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.execute("DELETE FROM obm_forward WHERE seq = ANY($1)", &[&seqs])
        .await
        .map_err(err)?;
    let deleted = tx
        .execute(
            "DELETE FROM obm_notifications WHERE seq = ANY($1)",
            &[&seqs],
        )
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    let more = seqs.len() as i64 == PRUNE_STEP_ROWS;
    Ok(Pruned {
        deleted,
        next: more.then_some(0),
    })
}

/// Writes the messages and the webhook results: each kind in one statement, both in one
/// transaction when the batch has both (a single statement is a transaction of its own).
async fn write(
    session: &mut Session,
    messages: &[&NewMessage],
    updates: &[&ForwardUpdate],
    received_at: &str,
    forward: bool,
) -> Result<Vec<Committed>, StoreError> {
    let Session {
        client,
        insert,
        update,
    } = session;
    if updates.is_empty() {
        return insert_messages(&*client, insert, messages, received_at, forward).await;
    }
    if messages.is_empty() {
        update_forwards(&*client, update, updates).await?;
        return Ok(Vec::new());
    }
    let tx = client.transaction().await.map_err(err)?;
    let outcomes = insert_messages(&tx, insert, messages, received_at, forward).await?;
    update_forwards(&tx, update, updates).await?;
    tx.commit().await.map_err(err)?;
    Ok(outcomes)
}

/// Inserts a batch's notifications; what each message stored and found already there.
async fn insert_messages(
    client: &impl GenericClient,
    insert: &Statement,
    messages: &[&NewMessage],
    received_at: &str,
    forward: bool,
) -> Result<Vec<Committed>, StoreError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let count: usize = messages.iter().map(|m| m.notifications.len()).sum();
    let orgs: Vec<&str> = messages.iter().map(|m| m.org.as_str()).collect();
    let actions: Vec<&str> = messages.iter().map(|m| m.action_id.as_str()).collect();
    let fingerprints: Vec<String> = messages.iter().map(|m| m.certificate.to_hex()).collect();
    let peers: Vec<&str> = messages.iter().map(|m| &*m.peer).collect();
    let (mut owner, mut ids, mut types, mut fields) = (
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
    );
    // A key that several messages of the batch carry is sent once, from the first of them, and
    // credited to it: as if the messages had come one after the other. The later copies are
    // duplicates whatever order the database inserts rows in.
    let mut first: HashMap<(&str, &str), usize> = HashMap::with_capacity(count);
    for (i, m) in messages.iter().enumerate() {
        for n in &m.notifications {
            let Entry::Vacant(slot) = first.entry((m.org.as_str(), n.id.as_str())) else {
                continue;
            };
            slot.insert(i);
            owner.push(i as i64 + 1);
            ids.push(n.id.as_str());
            types.push(n.object_type.as_str());
            fields.push(n.fields_json.as_str());
        }
    }
    let rows = client
        .query(
            insert,
            &[
                &orgs,
                &actions,
                &fingerprints,
                &peers,
                &owner,
                &ids,
                &types,
                &fields,
                &received_at,
                &forward,
                &now_ms(),
            ],
        )
        .await
        .map_err(err)?;
    let mut stored = vec![0usize; messages.len()];
    for row in &rows {
        let key: (&str, &str) = (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?);
        match first.get(&key) {
            Some(&i) => stored[i] += 1,
            None => return Err(err("the insert returned a row the batch did not hold")),
        }
    }
    Ok(messages
        .iter()
        .zip(stored)
        .map(|(m, stored)| Committed {
            stored,
            duplicates: m.notifications.len().saturating_sub(stored),
        })
        .collect())
}

/// Records a batch's webhook results; a later result for a notification replaces an earlier
/// one, as the updates would have one after the other.
async fn update_forwards(
    client: &impl GenericClient,
    update: &Statement,
    updates: &[&ForwardUpdate],
) -> Result<(), StoreError> {
    let mut last: HashMap<i64, usize> = HashMap::with_capacity(updates.len());
    for (i, u) in updates.iter().enumerate() {
        last.insert(u.seq, i);
    }
    let (mut seqs, mut states, mut attempts, mut nexts, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, u) in updates.iter().enumerate() {
        if last.get(&u.seq) != Some(&i) {
            continue;
        }
        let (state, next, error) = u.columns();
        seqs.push(u.seq);
        states.push(state);
        attempts.push(u.attempts);
        nexts.push(next);
        errors.push(error);
    }
    client
        .execute(update, &[&seqs, &states, &attempts, &nexts, &errors])
        .await
        .map_err(err)?;
    Ok(())
}

/// The forwarding queue's heads and backlog: see the SQLite store's `HEADS`.
const HEADS: &str = "
    SELECT n.seq, n.org_id, n.action_id, n.notification_id, n.object_type, n.fields,
           n.received_at, n.certificate_sha256, h.attempts, h.next_attempt_ms, h.queued_ms,
           h.orgs, h.oldest
    FROM (SELECT f.seq, f.attempts, f.next_attempt_ms, f.queued_ms,
                 COUNT(*) OVER () AS orgs, MIN(f.queued_ms) OVER () AS oldest
          FROM (SELECT MIN(seq) AS seq FROM obm_forward WHERE state = 'pending'
                GROUP BY org_id) m
          JOIN obm_forward f ON f.seq = m.seq
          ORDER BY f.next_attempt_ms, f.seq
          LIMIT $1) h
    JOIN obm_notifications n ON n.seq = h.seq
    ORDER BY h.next_attempt_ms, h.seq";

/// The forwarder's connection. Only the receiver holding the forwarding advisory lock reads
/// the queue; the others stand by and take over when its session ends.
pub struct ForwardReader {
    target: Target,
    client: Option<Client>,
    /// This session holds the forwarding lock.
    leader: bool,
}

impl ForwardReader {
    pub(crate) fn new(target: &Target) -> ForwardReader {
        ForwardReader {
            target: target.clone(),
            client: None,
            leader: false,
        }
    }

    pub async fn heads(&mut self, limit: usize) -> Result<Heads, StoreError> {
        let r = self.try_heads(limit).await;
        if r.is_err() {
            // Reconnect next time; a lost session also released the lock.
            self.client = None;
            self.leader = false;
        }
        r
    }

    async fn try_heads(&mut self, limit: usize) -> Result<Heads, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.target).await?);
            self.leader = false;
        }
        let client = self.client.as_ref().ok_or(StoreError::Unavailable)?;
        if !self.leader {
            self.leader = client
                .query_one(FORWARD_LOCK, &[])
                .await
                .map_err(err)?
                .get(0);
            if !self.leader {
                // Another receiver forwards; stand by and ask again at the next poll.
                return Ok(Heads::default());
            }
            tracing::info!("this receiver forwards to the webhook (holds the forwarding lock)");
        }
        let rows = tokio::time::timeout(COMMIT_TIMEOUT, client.query(HEADS, &[&(limit as i64)]))
            .await
            .map_err(|_| err("reading the forwarding queue timed out"))?
            .map_err(err)?;
        let mut read = Heads::default();
        for r in rows {
            read.orgs = r.get(11);
            read.oldest_queued_ms = r.get(12);
            read.heads.push(Outgoing {
                seq: r.get(0),
                org_id: r.get(1),
                action_id: r.get(2),
                notification_id: r.get(3),
                object_type: r.get(4),
                fields_json: r.get(5),
                received_at: r.get(6),
                certificate_sha256: r.get(7),
                attempts: r.get(8),
                next_attempt_ms: r.get(9),
                queued_ms: r.get(10),
            });
        }
        Ok(read)
    }
}

/// Queues notifications for the webhook again (`messages replay`).
pub async fn requeue(target: &Target, which: &Requeue) -> Result<usize, StoreError> {
    let client = connect(target).await?;
    let now = now_ms();
    let org = which.org.as_ref().map(|o| o.as_str().to_owned());
    let n = client
        .execute(
            "UPDATE obm_forward SET state = 'pending', attempts = 0, next_attempt_ms = $1,
                    queued_ms = $1, last_error = NULL
             WHERE state = $2
               AND ($3::text IS NULL OR org_id = $3)
               AND ($4::text IS NULL OR seq IN (SELECT seq FROM obm_notifications
                                                WHERE notification_id = $4))",
            &[&now, &which.state.as_str(), &org, &which.notification_id],
        )
        .await
        .map_err(err)?;
    Ok(n as usize)
}

/// `messages list`: org, since, notification ID, limit, webhook state; `NULL` for "any". Each
/// call prepares it afresh, so PostgreSQL plans its one execution with the values (a custom
/// plan): a filter that is `NULL` drops out, and `--org` reads `obm_notifications_org_seq`
/// (migration 5).
const LIST: &str = "
    SELECT n.seq, n.org_id, n.action_id, n.notification_id, n.object_type, n.fields,
           n.received_at, n.certificate_sha256, n.peer_addr,
           f.state, f.attempts, f.last_error
    FROM obm_notifications n LEFT JOIN obm_forward f ON f.seq = n.seq
    WHERE ($1::text IS NULL OR n.org_id = $1)
      AND ($2::text IS NULL OR n.received_at >= $2)
      AND ($3::text IS NULL OR n.notification_id = $3)
      AND ($5::text IS NULL OR f.state = $5)
    ORDER BY n.seq
    LIMIT $4";

/// Reads stored notifications, oldest first.
pub async fn list(target: &Target, filter: &Filter) -> Result<Vec<StoredNotification>, StoreError> {
    let read = |e: StoreError| StoreError::Read(e.to_string());
    let client = connect(target).await.map_err(read)?;
    let since = filter
        .since
        .map(|t| humantime::format_rfc3339_millis(t).to_string());
    let org = filter.org.as_ref().map(|o| o.as_str().to_owned());
    let limit = filter.limit.map(|l| l as i64);
    let rows = client
        .query(
            LIST,
            &[
                &org,
                &since,
                &filter.notification_id,
                &limit,
                &filter.state.map(ForwardState::as_str),
            ],
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
                forward: r
                    .get::<_, Option<String>>(9)
                    .as_deref()
                    .and_then(ForwardState::parse)
                    .map(|state| ForwardInfo {
                        state,
                        attempts: r.get(10),
                        last_error: r.get(11),
                    }),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TLS only with `sslmode=require`; the start-up warning only for a plain connection that
    /// leaves the machine; no password in `Debug`.
    #[test]
    fn a_target_knows_whether_it_is_encrypted_and_whether_it_leaves_the_machine() {
        for (url, tls, local) in [
            ("postgres://obm:pw@127.0.0.1:5432/obm", false, true),
            ("postgres://obm@localhost/obm?sslmode=prefer", false, true),
            ("postgres://obm@[::1]/obm", false, true),
            (
                "postgresql://obm@%2Fvar%2Frun%2Fpostgresql/obm",
                false,
                true,
            ),
            ("postgres://obm@db.internal/obm", false, false),
            ("postgres://obm@10.0.0.5/obm?sslmode=disable", false, false),
            (
                "postgres://obm@localhost/obm?hostaddr=10.0.0.5",
                false,
                false,
            ),
            (
                "postgres://obm@db.internal/obm?sslmode=require",
                true,
                false,
            ),
            (
                "postgres://obm@db.internal/obm?sslmode=verify-full",
                true,
                false,
            ),
        ] {
            let target = Target::new(url, &[]).unwrap();
            assert_eq!((target.tls.is_some(), target.local), (tls, local), "{url}");
            assert!(!format!("{target:?}").contains("pw"), "{target:?}");
        }
        // verify-ca checks the chain but not the name; this side always checks both.
        let bad = Target::new("postgres://obm@db/obm?sslmode=verify-ca", &[]).unwrap_err();
        assert!(bad.to_string().contains("sslmode"), "{bad}");
    }

    /// A schema of its own on the test server (`.ci/run` starts PostgreSQL on 127.0.0.1:5432):
    /// a connection in it, and the target that reaches it.
    async fn schema(name: &str) -> (Client, Target) {
        let plain = |url: &str| Target::new(url, &[]).unwrap();
        let admin = connect(&plain("postgres://root@127.0.0.1:5432/test"))
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (.ci/run starts it)");
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))
            .await
            .unwrap();
        let target = plain(&format!(
            "postgres://root@127.0.0.1:5432/test?options=-c%20search_path%3D{name}"
        ));
        (connect(&target).await.unwrap(), target)
    }

    /// The unique key's columns, in order.
    async fn key_columns(client: &Client) -> Vec<String> {
        client
            .query(
                "SELECT a.attname FROM pg_constraint c
                 CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                 WHERE c.conrelid = 'obm_notifications'::regclass AND c.contype = 'u'
                 ORDER BY k.n",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// `--org` reads the org's own rows. 20,000 notifications, three of them from a quiet org
    /// (the first, the middle and the last): listing an org with none, or the quiet org's
    /// three, touches a few pages, where reading the table in seq order touched every one.
    #[tokio::test]
    async fn list_by_org_reads_the_orgs_rows_not_the_whole_table() {
        let name = format!("obm_o_{}", std::process::id());
        let (mut client, target) = schema(&name).await;
        migrate(&mut client).await.unwrap();
        let (busy, quiet, none) = (
            "00Dxx0000001gPFEAY",
            "00Dxx0000002gPFEAY",
            "00Dxx0000003gPFEAY",
        );
        client
            .execute(
                "INSERT INTO obm_notifications (org_id, notification_id, action_id, object_type,
                     fields, received_at, certificate_sha256, peer_addr)
                 SELECT CASE WHEN i IN (1, 10000, 20000) THEN $2 ELSE $1 END,
                        lpad(i::text, 18, '0'), 'a', 'Contact', '{}', '2026-12-08T00:00:00.000Z',
                        'ab', 'p'
                 FROM generate_series(1, 20000) AS i",
                &[&busy, &quiet],
            )
            .await
            .unwrap();
        client.batch_execute("ANALYZE").await.unwrap();

        // The pages the query touched: its top node's "Buffers: shared hit=… read=…".
        let pages = async |org: &str, limit: Option<i64>| -> u64 {
            let no: Option<String> = None;
            let plan = client
                .query(
                    &format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {LIST}"),
                    &[&Some(org), &no, &no, &limit, &no],
                )
                .await
                .unwrap();
            let lines: Vec<String> = plan.iter().map(|r| r.get(0)).collect();
            let buffers = lines
                .iter()
                .find_map(|l| l.trim().strip_prefix("Buffers: shared "));
            let buffers = buffers.unwrap_or_else(|| panic!("no buffers in {lines:#?}"));
            buffers
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| matches!(*k, "hit" | "read"))
                .map(|(_, v)| v.parse::<u64>().unwrap())
                .sum()
        };
        let whole = pages(busy, None).await;
        assert!(
            whole > 100,
            "reading the busy org's 19,997 touched only {whole} pages"
        );
        for (org, limit) in [
            (none, Some(50)),
            (none, None),
            (quiet, None),
            (quiet, Some(2)),
        ] {
            let read = pages(org, limit).await;
            assert!(
                read <= 20,
                "{org} {limit:?}: {read} pages read (the busy org's 19,997 rows: {whole})"
            );
        }

        let listed = async |org: &str, limit: Option<usize>| -> Vec<String> {
            let filter = Filter {
                org: Some(crate::ids::OrgId::parse(org).unwrap()),
                limit,
                ..Filter::default()
            };
            let rows = list(&target, &filter).await.unwrap();
            rows.into_iter().map(|r| r.notification_id).collect()
        };
        let id = |i: u32| format!("{i:018}");
        assert_eq!(listed(quiet, None).await, [id(1), id(10000), id(20000)]);
        assert_eq!(listed(quiet, Some(2)).await, [id(1), id(10000)]);
        assert_eq!(listed(none, None).await, Vec::<String>::new());
        assert_eq!(listed(busy, Some(2)).await, [id(2), id(3)]);
        client
            .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_schema_from_before_the_rekey_migrates_and_keeps_its_rows_and_queue() {
        let name = format!("obm_u_{}", std::process::id());
        let (mut client, _) = schema(&name).await;
        // What a receiver before migration 4 left: three migrations, two orgs' rows, one queued.
        for sql in &MIGRATIONS[..3] {
            client.batch_execute(sql).await.unwrap();
        }
        client
            .batch_execute(
                "CREATE TABLE obm_schema_version (version INTEGER NOT NULL);
                 INSERT INTO obm_schema_version VALUES (3);
                 INSERT INTO obm_notifications (org_id, notification_id, action_id, object_type,
                     fields, received_at, certificate_sha256, peer_addr)
                 VALUES ('00Dxx0000001gPFEAY', '04l000000000000001', 'a', 'Contact', '{}', 't', 'ab', 'p'),
                        ('00Dxx0000002gPFEAY', '04l000000000000001', 'a', 'Contact', '{}', 't', 'ab', 'p');
                 INSERT INTO obm_forward (seq, org_id, state, next_attempt_ms, queued_ms)
                 SELECT seq, org_id, 'dead', 0, 0 FROM obm_notifications WHERE seq = 2;",
            )
            .await
            .unwrap();
        assert_eq!(key_columns(&client).await, ["org_id", "notification_id"]);

        migrate(&mut client).await.unwrap();

        assert_eq!(key_columns(&client).await, ["notification_id", "org_id"]);
        let version: i32 = client
            .query_one("SELECT version FROM obm_schema_version", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, MIGRATIONS.len() as i32);
        // Migration 5 indexed the rows already there for `--org`.
        let org_index: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema()
                 AND indexname = 'obm_notifications_org_seq'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(org_index, 1);
        let queued: String = client
            .query_one(
                "SELECT n.org_id FROM obm_forward f JOIN obm_notifications n ON n.seq = f.seq",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(queued, "00Dxx0000002gPFEAY");
        // Deduplication holds under the new key: the same pair again inserts nothing.
        let inserted = client
            .execute(
                "INSERT INTO obm_notifications (org_id, notification_id, action_id, object_type,
                     fields, received_at, certificate_sha256, peer_addr)
                 VALUES ('00Dxx0000001gPFEAY', '04l000000000000001', 'a', 'Contact', '{}', 't', 'ab', 'p')
                 ON CONFLICT (notification_id, org_id) DO NOTHING",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(inserted, 0);
        // Running again changes nothing.
        migrate(&mut client).await.unwrap();
        assert_eq!(key_columns(&client).await, ["notification_id", "org_id"]);
        client
            .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
            .await
            .unwrap();
    }
}
