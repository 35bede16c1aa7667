//! The embedded SQLite backend.
//!
//! One SQLite file in WAL mode with `synchronous=FULL`, so a commit returns only after the WAL is
//! fsync'd. One writer thread owns the write connection and does **group commit**: it takes every
//! message that queued up while the previous transaction was being fsync'd and writes them all in
//! one transaction, so concurrent messages share one fsync. A caller's future resolves only after
//! the transaction holding its message has committed (or failed); that is what lets the request
//! path acknowledge only what is durable. Deduplication is on (org, notification ID).

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params};
use tokio::sync::mpsc;

use crate::ids::OrgId;

use super::{
    Batch, Committed, Control, Filter, ForwardInfo, ForwardState, ForwardUpdate, Heads, Job,
    NewMessage, Outgoing, PRUNE_STEP_ROWS, PruneStep, Pruned, Requeue, StoreError,
    StoredNotification, WriterContext, now_ms, now_rfc3339,
};

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
    r#"
    -- The webhook queue: one row per notification stored while [forward] was on.
    CREATE TABLE forward (
        seq             INTEGER PRIMARY KEY REFERENCES notifications (seq),
        org_id          TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,   -- Unix milliseconds
        queued_ms       INTEGER NOT NULL,   -- Unix milliseconds; the dead-letter age counts from here
        last_error      TEXT
    );
    CREATE INDEX forward_state_org ON forward (state, org_id, seq);
"#,
    r#"
    -- No query ever used this index: `messages list` walks notifications in seq order and its
    -- `?3 IS NULL OR received_at >= ?3` filter cannot use one. Keeping it up to date was a third
    -- B-tree insert per notification: about 15% of a commit of 100-notification messages
    -- (`cargo bench --bench store`, store_wide).
    DROP INDEX IF EXISTS notifications_received;
"#,
    // The unique key leads with the notification ID, not the org. Salesforce numbers the IDs of
    // one pod from one sequence, whatever the org, so new IDs arrive near one end of the key
    // per pod. Led by the org, the key took inserts at one end per org: with hundreds of orgs,
    // each message of a group commit dirtied its own 16 KiB index page, written to the WAL and
    // again to the file (BENCHMARKS.md, "Many orgs"). A lookup by org alone (`messages list
    // --org`) now reads the table in seq order, as `--since` does; a lookup by notification ID
    // seeks the key, with or without the org. SQLite cannot change a table's constraint in
    // place: the table is rebuilt, by its documentation's procedure for schema changes, in seq
    // order so that every row keeps its seq.
    r#"
    CREATE TABLE notifications_rekeyed (
        seq                INTEGER PRIMARY KEY,
        org_id             TEXT NOT NULL,
        notification_id    TEXT NOT NULL,
        action_id          TEXT NOT NULL,
        object_type        TEXT NOT NULL,
        fields             TEXT NOT NULL,   -- JSON object, fields in document order
        received_at        TEXT NOT NULL,   -- RFC 3339, UTC, milliseconds
        certificate_sha256 TEXT NOT NULL,
        peer_addr          TEXT NOT NULL,
        UNIQUE (notification_id, org_id)
    );
    INSERT INTO notifications_rekeyed
        SELECT seq, org_id, notification_id, action_id, object_type, fields, received_at,
               certificate_sha256, peer_addr
        FROM notifications ORDER BY seq;
    DROP TABLE notifications;
    ALTER TABLE notifications_rekeyed RENAME TO notifications;
"#,
    // Where `messages list --since` starts: for each minute in which notifications were
    // stored, the lowest seq stored in it. seq only grows, so the lowest `first_seq` of the
    // minutes at or after a time bounds from below every notification received at or after
    // it, even where the clock stepped back; the walk starts there, not at the table's first
    // row. A row per minute, written by the first commit of the minute: an index on
    // `notifications (received_at)` cost a B-tree insert per notification (migration 4), and
    // a row per commit (with an index on its time) added two 16 KiB pages to the WAL of every
    // commit: +27,600 instructions (+44%) for a commit of one message, against +70 (+0.1%) for
    // this table (callgrind, 2,000 such commits). The writer fills it for rows stored before
    // this migration, and for any stored without it, each time it opens the store
    // (`catch_up_minutes`; 2 ms with 43,000 minutes).
    r#"
    CREATE TABLE received_minutes (
        minute    TEXT PRIMARY KEY,   -- received_at to the minute: 2026-11-24T10:00
        first_seq INTEGER NOT NULL    -- the lowest seq received in it
    ) WITHOUT ROWID;
"#,
    // Where `messages list --org` looks: which blocks of 65,536 seqs (`seq >> 16`) hold
    // notifications of which org. The unique key leads with the notification ID (migration 5),
    // so nothing else finds an org's rows: the walk read the whole table, 2.0–4.9 s on a 2 GB
    // store with the page cache cold, for an org with none. An index led by the org would take
    // each message's entry at its org's own end of the index, a page per org per commit
    // (migration 5's reason). This table takes a row when an org first stores in a block, at
    // the table's end (it leads with the block), about once per 34 MB of notifications per org.
    // The writer fills it for rows stored before this migration, and for any an older build
    // stored, each time it opens the store (`catch_up_org_blocks`).
    r#"
    CREATE TABLE org_blocks (
        block  INTEGER NOT NULL,   -- seq >> ORG_BLOCK_BITS
        org_id TEXT NOT NULL,
        PRIMARY KEY (block, org_id)
    ) WITHOUT ROWID;
"#,
];

/// A block of `org_blocks` is the seqs with the same `seq >> ORG_BLOCK_BITS`: 65,536
/// notifications, about 34 MB of the loadgen's. Smaller blocks narrow `messages list --org`
/// further, and add a row per org for each.
const ORG_BLOCK_BITS: u32 = 16;

/// The page size of a new store. Every committed page is written twice (to the WAL, then by the
/// checkpoint into the file), each with its own syscalls, checksum and B-tree bookkeeping; 16 KiB
/// pages instead of SQLite's 4 KiB carry the same rows in a quarter of the pages. Scenario (d)
/// of `bench/compare.sh` (100-notification messages), seven alternated pairs of runs: 107 → 130
/// MB of SOAP per CPU-second (medians; the 16 KiB build ahead in every pair), p99 12–13 → 9 ms.
/// The cost: a commit of one small message alone rewrites whole 16 KiB pages and is 10–20%
/// slower (`cargo bench --bench store`, `store_acks/1`); batches of 8 and more are not.
const PAGE_SIZE: i64 = 16 * 1024;
/// Checkpoint once the WAL holds this much, as SQLite's default of 1,000 4 KiB pages does, at
/// whatever page size the file has. At 16 KiB pages the default page count made each checkpoint,
/// and the commit that runs it, 4× longer.
const WAL_CHECKPOINT_BYTES: i64 = 4 * 1000 * 1024;
/// The writer's page cache (SQLite's default is 2 MiB, 128 pages at 16 KiB). Chosen when the
/// unique key took inserts at one tail per org, to hold hundreds of orgs' tails. Measured since
/// with 512 orgs and a 3.8 GB store, under that key: 2, 8 and 32 MiB gave the same rate and CPU
/// per message (BENCHMARKS.md, "Many orgs"); what cost was the pages each commit wrote.
const CACHE_BYTES: i64 = 8 * 1024 * 1024;

/// Opens (creating if needed) the SQLite file, migrates the schema and starts the writer thread,
/// which takes jobs from `rx` until a shutdown job or until every sender is gone.
pub(crate) fn start(
    path: &Path,
    ctx: WriterContext,
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
        ctx,
        minute: None,
        prune_bound: None,
        blocks: OrgBlocks::default(),
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
    // Only a new file takes `page_size` (see PAGE_SIZE); an existing store keeps its own.
    conn.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE};"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint={}; PRAGMA cache_size=-{};",
        WAL_CHECKPOINT_BYTES / page_size.max(512),
        CACHE_BYTES / 1024
    ))?;
    migrate(&mut conn)?;
    catch_up_minutes(&conn)?;
    catch_up_org_blocks(&conn)?;
    Ok(conn)
}

/// `received_at` to the minute, the key of `received_minutes`.
fn minute_of(received_at: &str) -> &str {
    received_at.get(..16).unwrap_or(received_at)
}

/// Adds a `received_minutes` row for each minute of the notifications stored from the highest
/// `first_seq` on: all of them after migration 6 on an older store, and those an older build
/// stored, if one ran on this file (its seqs are above every row's). A minute that has its row
/// already keeps it (`OR IGNORE`): that row's seq is the lower, since seq only grows.
fn catch_up_minutes(conn: &Connection) -> rusqlite::Result<()> {
    let added = conn.execute(
        "INSERT OR IGNORE INTO received_minutes (minute, first_seq)
         SELECT substr(received_at, 1, 16), min(seq) FROM notifications
         WHERE seq >= (SELECT coalesce(max(first_seq), 0) FROM received_minutes)
         GROUP BY 1",
        [],
    )?;
    if added > 0 {
        tracing::debug!(
            added,
            "minutes of notifications stored without one caught up"
        );
    }
    Ok(())
}

/// Adds an `org_blocks` row for each org and block of the notifications stored from the highest
/// block on: all of them after migration 7 on an older store (one read of the table), and those
/// an older build stored, if one ran on this file (their seqs are above every block's but the
/// highest). A pair that has its row keeps it (`OR IGNORE`).
fn catch_up_org_blocks(conn: &Connection) -> rusqlite::Result<()> {
    let started = Instant::now();
    let added = conn.execute(
        &format!(
            "INSERT OR IGNORE INTO org_blocks (block, org_id)
             SELECT DISTINCT seq >> {ORG_BLOCK_BITS}, org_id FROM notifications
             WHERE seq >= (SELECT coalesce(max(block), 0) << {ORG_BLOCK_BITS} FROM org_blocks)"
        ),
        [],
    )?;
    if added > 0 {
        tracing::info!(
            added,
            ms = started.elapsed().as_millis() as u64,
            "the orgs' blocks of notifications stored without them caught up (for messages list --org)"
        );
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let pending = MIGRATIONS.iter().enumerate().skip(version.max(0) as usize);
    if pending.len() == 0 {
        return Ok(());
    }
    // Rebuilding `notifications` drops the table the queue's foreign key names; SQLite's
    // procedure turns the checks off for it (only outside a transaction) and checks after.
    let foreign_keys: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    if version > 0 {
        // An upgrade: say so before it runs, since one that rebuilds `notifications` (migration
        // 5) takes its time. 2 million notifications (1 GB): 8.4 s, and the file grew to 2 GB;
        // the old table's pages stay in the file for new rows. Giving their minutes their rows
        // (migration 6, then `catch_up_minutes`): 0.67 s. The orgs' blocks (migration 7, then
        // `catch_up_org_blocks`) on 3.7 million (1.9 GB), the page cache cold: 4.2 s, counting
        // the rows for this line.
        let rows: i64 = conn.query_row("SELECT count(*) FROM notifications", [], |r| r.get(0))?;
        let how = if version < 5 {
            "upgrading the store's schema, once; rebuilding a table takes about 4 s per million \
             notifications and free disk space of twice the store's size"
        } else {
            "upgrading the store's schema, once; about 1 s per million notifications"
        };
        tracing::info!(from = version, to = MIGRATIONS.len(), rows, "{how}");
    }
    let applied = apply(conn, pending);
    // Back as it was, whether the migrations ran or failed.
    let restored = conn.pragma_update(None, "foreign_keys", foreign_keys);
    applied.and(restored)
}

/// Runs each pending migration in a transaction of its own, checking foreign keys before it
/// commits.
fn apply<'m>(
    conn: &mut Connection,
    pending: impl Iterator<Item = (usize, &'m &'static str)>,
) -> rusqlite::Result<()> {
    for (i, sql) in pending {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        let broken: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "migration {} left rows in {table} that reference no notification",
                i + 1
            )));
        }
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

struct Writer {
    conn: Connection,
    ctx: WriterContext,
    /// The minute of the last commit that stored a notification, once `received_minutes` has
    /// its row: later commits in it have nothing to add there.
    minute: Option<String>,
    /// The cutoff of the last prune step and its bound (see `prune`).
    prune_bound: Option<(String, i64)>,
    blocks: OrgBlocks,
}

/// The orgs whose `org_blocks` row for the highest block the writer stored in is committed, or
/// written in the transaction under way: a message of one of them in that block adds no row.
/// Seqs only grow, so a lower block takes no new rows. Forgotten when a transaction fails.
#[derive(Default)]
struct OrgBlocks {
    block: i64,
    orgs: HashSet<OrgId>,
}

impl OrgBlocks {
    /// Whether `org`'s row for `block` is to be written (`OR IGNORE`: it may be there); from
    /// here on it is taken as written.
    fn note(&mut self, block: i64, org: OrgId) -> bool {
        if block > self.block {
            self.block = block;
            self.orgs.clear();
        }
        block < self.block || self.orgs.insert(org)
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Batch::default();
        let (mut shutdown, mut pruning) = (None, None);
        while shutdown.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut next = Some(first);
            // Everything that queued up during the last fsync joins this transaction.
            while let Some(job) = next {
                match batch.add(job) {
                    None => {}
                    Some(Control::Probe(reply)) => {
                        let _ = reply.send(self.probe());
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
                self.commit_batch(&mut batch);
            }
            // After the commit of what came before it: the next step comes back through the
            // queue, behind the messages that arrived meanwhile.
            if let Some((step, reply)) = pruning.take() {
                let pruned = prune(&mut self.conn, &step, &mut self.prune_bound)
                    .map_err(|e| StoreError::Write(e.to_string()));
                let _ = reply.send(pruned);
            }
        }
        // Closed before the reply: as its last connection closes, SQLite checkpoints the WAL
        // into the file and removes it, so a stopped receiver leaves its store in one file, and
        // `store compact` can start as soon as `shutdown` returns.
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "the store did not close cleanly; its WAL is kept for the next start");
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

    fn commit_batch(&mut self, batch: &mut Batch) {
        let started = Instant::now();
        let received_at = now_rfc3339();
        let new_minute = self.minute.as_deref() != Some(minute_of(&received_at));
        let result = write(
            &mut self.conn,
            batch.messages.iter().map(|(m, _)| m),
            batch.updates(),
            &received_at,
            new_minute,
            self.ctx.forward,
            &mut self.blocks,
        )
        .map_err(|e| e.to_string());
        if result.is_err() {
            // Rolled back: the rows it noted as written are not.
            self.blocks = OrgBlocks::default();
        }
        // Only a committed row counts: after a rollback the minute's row is still to write.
        if new_minute
            && result
                .as_ref()
                .is_ok_and(|o| o.iter().any(|c| c.stored > 0))
        {
            self.minute = Some(minute_of(&received_at).to_owned());
        }
        batch.finish(result, started, &self.ctx);
    }
}

/// Writes the messages and the webhook results in one transaction. On error the transaction
/// is rolled back (dropped). With `new_minute`, the minute of `received_at` may have no row in
/// `received_minutes` yet: the first notification stored gives it one, if it has none. A
/// message that stores in a block its org has no `org_blocks` row for (by `blocks`) adds it.
fn write<'m>(
    conn: &mut Connection,
    messages: impl Iterator<Item = &'m NewMessage>,
    updates: impl Iterator<Item = &'m ForwardUpdate>,
    received_at: &str,
    new_minute: bool,
    forward: bool,
    blocks: &mut OrgBlocks,
) -> rusqlite::Result<Vec<Committed>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::new();
    let queued_ms = now_ms();
    // The seq of the commit's first stored notification, for its minute's row.
    let mut first_seq = None;
    {
        let mut queue = tx.prepare_cached(
            "INSERT INTO forward (seq, org_id, state, attempts, next_attempt_ms, queued_ms)
             VALUES (?1, ?2, 'pending', 0, ?3, ?3)",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO notifications (org_id, notification_id, action_id, object_type, fields,
                                        received_at, certificate_sha256, peer_addr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (notification_id, org_id) DO NOTHING",
        )?;
        // A message's own columns are bound once for all its notifications (SQLite keeps a
        // binding until it is replaced; each one is a copy), a notification's three per row.
        insert.raw_bind_parameter(6, received_at)?;
        for m in messages {
            let mut outcome = Committed::default();
            insert.raw_bind_parameter(1, m.org.as_str())?;
            insert.raw_bind_parameter(3, m.action_id.as_str())?;
            insert.raw_bind_parameter(7, m.certificate.hex().as_str())?;
            insert.raw_bind_parameter(8, &*m.peer)?;
            // The seqs of the message's first and last stored notifications.
            let mut stored: Option<(i64, i64)> = None;
            for n in &m.notifications {
                insert.raw_bind_parameter(2, n.id.as_str())?;
                insert.raw_bind_parameter(4, n.object_type.as_str())?;
                insert.raw_bind_parameter(5, n.fields_json.as_str())?;
                let changed = insert.raw_execute()?;
                if changed == 1 {
                    outcome.stored += 1;
                    let seq = tx.last_insert_rowid();
                    first_seq.get_or_insert(seq);
                    stored = Some((stored.map_or(seq, |(first, _)| first), seq));
                    if forward {
                        queue.execute(params![seq, m.org.as_str(), queued_ms])?;
                    }
                } else {
                    outcome.duplicates += 1;
                }
            }
            if let Some((first, last)) = stored {
                for block in first >> ORG_BLOCK_BITS..=last >> ORG_BLOCK_BITS {
                    if blocks.note(block, m.org) {
                        tx.prepare_cached(
                            "INSERT OR IGNORE INTO org_blocks (block, org_id) VALUES (?1, ?2)",
                        )?
                        .execute(params![block, m.org.as_str()])?;
                    }
                }
            }
            outcomes.push(outcome);
        }
        let mut update = tx.prepare_cached(
            "UPDATE forward SET state = ?2, attempts = ?3,
                    next_attempt_ms = COALESCE(?4, next_attempt_ms), last_error = ?5
             WHERE seq = ?1",
        )?;
        for u in updates {
            let (state, next, error) = u.columns();
            update.execute(params![u.seq, state, u.attempts, next, error])?;
        }
        if let Some(first_seq) = first_seq.filter(|_| new_minute) {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO received_minutes (minute, first_seq) VALUES (?1, ?2)",
            )?
            .execute(params![minute_of(received_at), first_seq])?;
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// One step of [`super::Store::prune`]: deletes, from `step.from` on in seq order, the
/// notifications received before the minute of `step.before`, and the webhook rows of those
/// delivered or dead; one still pending keeps its row and its queue entry.
///
/// It walks no further than a bound below which everything was received before that minute:
/// the lowest `first_seq` of the minutes at or after it (seq only grows, see
/// `received_minutes`). Nor past the newest notification, which it keeps: SQLite gives a new row
/// the highest seq plus one, so deleting the newest would let its seq come back, and every
/// bound here relies on seq only growing.
///
/// `bound` keeps the bound of the cutoff last asked for: the search of the minutes at or after
/// the cutoff reads as many rows as the retention has minutes (1.3 ms for 20 days), so the
/// steps of one pass share it. A bound stays right for its cutoff: new notifications only add
/// minutes with higher seqs, and the newest only grows.
fn prune(
    conn: &mut Connection,
    step: &PruneStep,
    bound: &mut Option<(String, i64)>,
) -> rusqlite::Result<Pruned> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let bound = match bound {
        Some((before, seq)) if *before == step.before => *seq,
        _ => {
            let seq: i64 = tx.query_row(
                "SELECT min(coalesce((SELECT min(first_seq) FROM received_minutes
                                      WHERE minute >= ?1), 9223372036854775807),
                            coalesce((SELECT max(seq) FROM notifications), 0))",
                [minute_of(&step.before)],
                |r| r.get(0),
            )?;
            *bound = Some((step.before.clone(), seq));
            seq
        }
    };
    let lo: Option<i64> = tx.query_row(
        "SELECT min(seq) FROM notifications WHERE seq >= ?1",
        [step.from],
        |r| r.get(0),
    )?;
    let Some(lo) = lo.filter(|lo| *lo < bound) else {
        return Ok(Pruned::default());
    };
    let mut hi = bound.min(lo.saturating_add(PRUNE_STEP_ROWS));
    let mut done = hi == bound;
    // A notification received at or after the cutoff below the bound is in no minute the bound
    // came from: one stored by an older build that kept no minutes. The walk ends before it.
    let late: Option<i64> = tx.query_row(
        "SELECT min(seq) FROM notifications WHERE seq >= ?1 AND seq < ?2 AND received_at >= ?3",
        params![lo, hi, step.before],
        |r| r.get(0),
    )?;
    if let Some(late) = late {
        (hi, done) = (late, true);
    }
    tx.execute(
        "DELETE FROM forward WHERE seq >= ?1 AND seq < ?2 AND state <> 'pending'",
        params![lo, hi],
    )?;
    let deleted = tx.execute(
        "DELETE FROM notifications WHERE seq >= ?1 AND seq < ?2
             AND NOT EXISTS (SELECT 1 FROM forward f WHERE f.seq = notifications.seq)",
        params![lo, hi],
    )?;
    // Every notification kept has a seq of at least the lowest left, so of the minutes whose
    // `first_seq` is below it, the latest alone gives every `--since` the same lower bound:
    // the others go, and the table stays as small as the retention. Once, by the last step:
    // it reads the whole table (a row per minute), and until then the rows are still bounds.
    if done {
        tx.execute(
            "DELETE FROM received_minutes
             WHERE first_seq < (SELECT min(seq) FROM notifications)
               AND minute < (SELECT max(minute) FROM received_minutes
                             WHERE first_seq < (SELECT min(seq) FROM notifications))",
            [],
        )?;
        // The blocks wholly below every notification kept hold none.
        tx.execute(
            &format!(
                "DELETE FROM org_blocks
                 WHERE block < (SELECT min(seq) FROM notifications) >> {ORG_BLOCK_BITS}"
            ),
            [],
        )?;
    }
    tx.commit()?;
    Ok(Pruned {
        deleted: deleted as u64,
        next: (!done).then_some(hi),
    })
}

/// The oldest pending notification of each org, soonest due first, at most `?1` of them; each
/// row also carries the backlog over every org (the window is taken before the limit). The
/// notifications' columns are read for the rows returned only.
const HEADS: &str = "
    SELECT n.seq, n.org_id, n.action_id, n.notification_id, n.object_type, n.fields,
           n.received_at, n.certificate_sha256, h.attempts, h.next_attempt_ms, h.queued_ms,
           h.orgs, h.oldest
    FROM (SELECT f.seq, f.attempts, f.next_attempt_ms, f.queued_ms,
                 COUNT(*) OVER () AS orgs, MIN(f.queued_ms) OVER () AS oldest
          FROM (SELECT MIN(seq) AS seq FROM forward WHERE state = 'pending' GROUP BY org_id) m
          JOIN forward f ON f.seq = m.seq
          ORDER BY f.next_attempt_ms, f.seq
          LIMIT ?1) h
    JOIN notifications n ON n.seq = h.seq
    ORDER BY h.next_attempt_ms, h.seq";

/// The forwarder's read connection to the queue.
pub struct ForwardReader {
    path: PathBuf,
    conn: Option<Connection>,
}

impl ForwardReader {
    pub(crate) fn new(path: &Path) -> ForwardReader {
        ForwardReader {
            path: path.to_owned(),
            conn: None,
        }
    }

    pub async fn heads(&mut self, limit: usize) -> Result<Heads, StoreError> {
        let path = self.path.clone();
        let conn = self.conn.take();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => {
                    match Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY) {
                        Ok(c) => c,
                        Err(e) => return (None, Err(e)),
                    }
                }
            };
            let result = heads(&conn, limit);
            (Some(conn), result)
        })
        .await
        .map_err(|e| StoreError::Read(e.to_string()))?;
        self.conn = conn;
        result.map_err(|e| StoreError::Read(e.to_string()))
    }
}

fn heads(conn: &Connection, limit: usize) -> rusqlite::Result<Heads> {
    let mut stmt = conn.prepare_cached(HEADS)?;
    let mut read = Heads::default();
    let mut rows = stmt.query(params![limit as i64])?;
    while let Some(r) = rows.next()? {
        read.orgs = r.get(11)?;
        read.oldest_queued_ms = r.get(12)?;
        read.heads.push(Outgoing {
            seq: r.get(0)?,
            org_id: r.get(1)?,
            action_id: r.get(2)?,
            notification_id: r.get(3)?,
            object_type: r.get(4)?,
            fields_json: r.get(5)?,
            received_at: r.get(6)?,
            certificate_sha256: r.get(7)?,
            attempts: r.get(8)?,
            next_attempt_ms: r.get(9)?,
            queued_ms: r.get(10)?,
        });
    }
    Ok(read)
}

/// Queues notifications for the webhook again (`messages replay`), from the CLI while the
/// receiver runs.
pub fn requeue(path: &Path, which: &Requeue) -> Result<usize, StoreError> {
    let fail = |e: rusqlite::Error| StoreError::Write(format!("{}: {e}", path.display()));
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(fail)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(fail)?;
    let (sql, values) = requeue_query(which);
    conn.execute(&sql, named(&values).as_slice()).map_err(fail)
}

/// The values a built statement names, as rusqlite binds them.
fn named<'v>(values: &'v [(&'static str, Value)]) -> Vec<(&'static str, &'v dyn ToSql)> {
    values.iter().map(|(n, v)| (*n, v as &dyn ToSql)).collect()
}

/// The UPDATE behind `requeue`, with a condition for each filter that is set, and the value of
/// every parameter it names (each condition is added with its value, so they cannot disagree).
///
/// With a notification ID, the rows to update come from the unique (notification_id, org_id)
/// key, as in [`list_query`], and the queue is reached by its primary key. The unary `+` keeps
/// SQLite from walking the `(state, org_id)` index instead, which holds every dead-lettered row.
fn requeue_query(which: &Requeue) -> (String, Vec<(&'static str, Value)>) {
    let mut values = vec![
        (":now", Value::Integer(now_ms())),
        (":state", Value::Text(which.state.as_str().to_owned())),
    ];
    if let Some(org) = &which.org {
        values.push((":org", Value::Text(org.as_str().to_owned())));
    }
    if let Some(id) = &which.notification_id {
        values.push((":id", Value::Text(id.clone())));
    }
    let condition = match (&which.org, &which.notification_id) {
        (None, None) => "state = :state".to_owned(),
        (Some(_), None) => "state = :state AND org_id = :org".to_owned(),
        (org, Some(_)) => format!(
            "+state = :state AND seq IN (SELECT seq FROM notifications
                                   WHERE notification_id = :id{})",
            if org.is_some() {
                " AND org_id = :org"
            } else {
                ""
            }
        ),
    };
    let sql = format!(
        "UPDATE forward SET state = 'pending', attempts = 0, next_attempt_ms = :now,
                queued_ms = :now, last_error = NULL
         WHERE {condition}"
    );
    (sql, values)
}

/// What `compact` did to a store file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// The file with its WAL, before; the file alone after (the WAL is empty then).
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub page_size_before: i64,
    pub page_size_after: i64,
    /// Pages that held nothing (deleted rows, a rebuilt table's old pages), before.
    pub free_pages_before: i64,
    pub notifications: i64,
}

/// Rewrites a store file with no free pages and at the page size new stores get (PAGE_SIZE):
/// for a store made before 16 KiB pages, or grown by the rebuild of migration 5, whose old
/// pages stay in the file. Only with the receiver stopped: SQLite leaves WAL mode for the
/// rewrite, which it allows only with no other connection open, so a running receiver makes it
/// fail with `InUse` and changes nothing. SQLite's VACUUM writes a copy of the store in the
/// temporary directory (`SQLITE_TMPDIR`, `TMPDIR`, else `/var/tmp`), then writes it over the
/// file through a rollback journal beside it: it needs free space for both, up to the store's
/// size each. Out of space, it fails and the journal rolls the file back (tests/faults.rs).
pub fn compact(path: &Path) -> Result<Compacted, StoreError> {
    let fail = |detail: String| StoreError::Compact {
        path: path.to_owned(),
        detail,
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let bytes_before = size(path) + size(&wal);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| fail(e.to_string()))?;
    if !has_table(&conn, "notifications").map_err(|e| fail(e.to_string()))? {
        return Err(fail(
            "it has no notifications table: not an obm-gate store".into(),
        ));
    }
    let pragma = |name: &str| -> Result<i64, StoreError> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .map_err(|e| fail(e.to_string()))
    };
    let page_size_before = pragma("page_size")?;
    let free_pages_before = pragma("freelist_count")?;
    let used = (pragma("page_count")? - free_pages_before).max(0) as u64 * page_size_before as u64;
    room_to_rewrite(path, used, bytes_before).map_err(fail)?;
    // Out of WAL mode (checkpointing the WAL into the file): SQLite refuses, busy, while another
    // connection has the file open.
    let left_wal = match conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get::<_, String>(0))
    {
        Ok(mode) => mode.eq_ignore_ascii_case("delete"),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => false,
        Err(e) => return Err(fail(e.to_string())),
    };
    if !left_wal {
        return Err(StoreError::InUse {
            path: path.to_owned(),
        });
    }
    let rewritten = conn.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE}; VACUUM;"));
    // Back to WAL whatever the VACUUM did; the receiver also sets it when it opens the file.
    let wal_again = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0));
    rewritten.map_err(|e| fail(format!("{e} (the store is unchanged)")))?;
    wal_again.map_err(|e| fail(format!("compacted, but back to WAL mode failed: {e}")))?;
    let notifications = conn
        .query_row("SELECT count(*) FROM notifications", [], |r| r.get(0))
        .map_err(|e| fail(e.to_string()))?;
    let page_size_after = pragma("page_size")?;
    drop(conn);
    Ok(Compacted {
        bytes_before,
        bytes_after: size(path) + size(&wal),
        page_size_before,
        page_size_after,
        free_pages_before,
        notifications,
    })
}

/// Free space on one filesystem: its device and the bytes this process may still use.
#[derive(Debug, Clone, Copy)]
struct Room {
    device: u64,
    free: u64,
}

impl Room {
    fn of(dir: &Path) -> Result<Room, String> {
        use std::os::unix::fs::MetadataExt;
        let why = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
        let device = std::fs::metadata(dir).map_err(|e| why(&e))?.dev();
        let fs = rustix::fs::statvfs(dir).map_err(|e| why(&e))?;
        Ok(Room {
            device,
            free: fs.f_bavail.saturating_mul(fs.f_frsize),
        })
    }
}

/// Checks, before `VACUUM` starts, that there is room for what it writes: a copy of the
/// store's used pages in SQLite's temporary directory, and a rollback journal of up to the
/// whole file beside the store. Out of space, SQLite would fail and leave the store as it was,
/// but only after running for as long as the copy takes, and after filling the disk.
fn room_to_rewrite(path: &Path, used: u64, file: u64) -> Result<(), String> {
    let store_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp_dir = sqlite_temp_dir().ok_or(
        "SQLite finds no temporary directory it may write (SQLITE_TMPDIR, TMPDIR, /var/tmp, \
         /usr/tmp, /tmp, .)",
    )?;
    let temp = Room::of(&temp_dir)?;
    let store = Room::of(store_dir)?;
    match shortfall(&temp_dir, temp, store_dir, store, used, file) {
        Some(short) => Err(format!(
            "not enough free space: {short}; the store is unchanged"
        )),
        None => Ok(()),
    }
}

/// What is short, in words, or None when both fit (on one filesystem, together).
fn shortfall(
    temp_dir: &Path,
    temp: Room,
    store_dir: &Path,
    store: Room,
    used: u64,
    file: u64,
) -> Option<String> {
    let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1e6);
    let need = format!(
        "compacting needs {} for a copy of the store in {} (SQLite's temporary directory: \
         SQLITE_TMPDIR, else TMPDIR, else /var/tmp) and up to {} in {} for its rollback journal",
        mb(used),
        temp_dir.display(),
        mb(file),
        store_dir.display()
    );
    let has = |dir: &Path, free| format!("{need}; {} has {} free", dir.display(), mb(free));
    if temp.device == store.device {
        (used + file > store.free).then(|| {
            format!(
                "{need}, {} on the one filesystem that holds both, which has {} free",
                mb(used + file),
                mb(store.free)
            )
        })
    } else if used > temp.free {
        Some(has(temp_dir, temp.free))
    } else if file > store.free {
        Some(has(store_dir, store.free))
    } else {
        None
    }
}

/// The directory SQLite's unix VFS makes its temporary files in (`unixTempFileDir` in
/// sqlite3.c): the first of these that is a directory this process may write and search.
fn sqlite_temp_dir() -> Option<PathBuf> {
    use rustix::fs::Access;
    let from_env = ["SQLITE_TMPDIR", "TMPDIR"]
        .into_iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from);
    let fixed = ["/var/tmp", "/usr/tmp", "/tmp", "."].map(PathBuf::from);
    from_env.chain(fixed).find(|dir| {
        dir.is_dir() && rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK).is_ok()
    })
}

/// Whether the store file has this table (a file the receiver never wrote has none).
fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
}

/// Reads stored notifications, oldest first, from a store file (read-only; works while the
/// receiver runs).
pub fn list(path: &Path, filter: &Filter) -> Result<Vec<StoredNotification>, StoreError> {
    let read_err = |e: rusqlite::Error| StoreError::Read(format!("{}: {e}", path.display()));
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(read_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(read_err)?;
    if !has_table(&conn, "notifications").map_err(read_err)? {
        return Ok(Vec::new());
    }
    // A store from before forwarding existed has no queue: list it as if it were empty.
    let forward_table = if has_table(&conn, "forward").map_err(read_err)? {
        "forward"
    } else {
        "(SELECT 0 AS seq, '' AS state, 0 AS attempts, NULL AS last_error WHERE 0)"
    };
    // A store no receiver of this version has opened yet has no minutes: --since scans.
    let minutes = has_table(&conn, "received_minutes").map_err(read_err)?;
    let Some(parts) = org_parts(&conn, filter, minutes).map_err(read_err)? else {
        let (sql, values) = list_query(filter, forward_table, minutes, None);
        return read_rows(&conn, &sql, &values).map_err(read_err);
    };
    let mut listed = Vec::new();
    for seqs in parts {
        let limit = filter.limit.map(|l| l.saturating_sub(listed.len()));
        if limit == Some(0) {
            break;
        }
        let part = Part { seqs, limit };
        let (sql, values) = list_query(filter, forward_table, minutes, Some(&part));
        listed.extend(read_rows(&conn, &sql, &values).map_err(read_err)?);
    }
    Ok(listed)
}

/// A part of the table that `list` reads on its own: the notifications with a seq in `seqs`,
/// at most `limit` of them.
struct Part {
    seqs: Range<i64>,
    limit: Option<usize>,
}

/// The parts of the table in which `messages list --org` can find the org's notifications, in
/// seq order: each block below the highest one in `org_blocks` that has a row for the org, then
/// everything from the highest block on (an older build, run on this file since the writer last
/// opened it, stored rows there without blocks). With `--since`, no block below where its walk
/// starts (see `list_query`). `None`: read the table as one, because there is no org to look
/// for, or a notification ID or a forwarding state to seek by, or no blocks yet (a store no
/// receiver of this version has opened).
fn org_parts(
    conn: &Connection,
    filter: &Filter,
    minutes: bool,
) -> rusqlite::Result<Option<Vec<Range<i64>>>> {
    let Some(org) = &filter.org else {
        return Ok(None);
    };
    if filter.notification_id.is_some() || filter.state.is_some() || !has_table(conn, "org_blocks")?
    {
        return Ok(None);
    }
    let highest: Option<i64> =
        conn.query_row("SELECT max(block) FROM org_blocks", [], |r| r.get(0))?;
    let Some(highest) = highest else {
        return Ok(None);
    };
    let lowest = match filter.since {
        Some(since) if minutes => {
            let since = humantime::format_rfc3339_millis(since).to_string();
            let bound: i64 = conn.query_row(
                SINCE_FIRST_SEQ,
                rusqlite::named_params! {":since_minute": minute_of(&since)},
                |r| r.get(0),
            )?;
            bound >> ORG_BLOCK_BITS
        }
        _ => 0,
    };
    let mut stmt = conn.prepare(
        "SELECT block FROM org_blocks
         WHERE block >= ?1 AND block < ?2 AND org_id = ?3 ORDER BY block",
    )?;
    let blocks = stmt.query_map(params![lowest, highest, org.as_str()], |r| {
        r.get::<_, i64>(0)
    })?;
    let mut parts = Vec::new();
    for block in blocks {
        let block = block?;
        parts.push(block << ORG_BLOCK_BITS..(block + 1) << ORG_BLOCK_BITS);
    }
    parts.push(highest.max(lowest) << ORG_BLOCK_BITS..i64::MAX);
    Ok(Some(parts))
}

/// The lowest seq a notification received in the minute `:since_minute` or later can have (see
/// `received_minutes`). Nothing stored in that minute or later: no seq is that high, so a walk
/// from it reads nothing.
const SINCE_FIRST_SEQ: &str = "SELECT coalesce(min(first_seq), 9223372036854775807)
                               FROM received_minutes WHERE minute >= :since_minute";

/// The rows of a `list_query`.
fn read_rows(
    conn: &Connection,
    sql: &str,
    values: &[(&'static str, Value)],
) -> rusqlite::Result<Vec<StoredNotification>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(named(values).as_slice(), |r| {
        let fields: String = r.get(5)?;
        let state: Option<String> = r.get(9)?;
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
            forward: match state.as_deref().and_then(ForwardState::parse) {
                Some(state) => Some(ForwardInfo {
                    state,
                    attempts: r.get(10)?,
                    last_error: r.get(11)?,
                }),
                None => None,
            },
        })
    })?;
    rows.collect()
}

/// The SELECT behind `list`, with a condition for each filter that is set and none for the rest,
/// and the value of every parameter it names (each condition is added with its value).
///
/// A catch-all `(?1 IS NULL OR notification_id = ?1)` would keep one statement, but SQLite plans
/// it before the values are known, so it could never use the (notification_id, org_id) key and
/// scanned the whole table: 0.2–1.4 s for `messages show` on 2 million notifications. Without a
/// notification ID nothing narrows the key (it leads with the ID; see migration 5), so a lookup
/// by org reads the table in seq order: `list` reads each of the org's parts of it (see
/// `org_parts`, migration 7) with a query of its own, given as `part` (its seqs, and what is
/// left of the limit). With `--since` and `received_minutes`, the walk starts at the first seq
/// stored in the minute of the time or later (see migration 6), not at the first row.
fn list_query(
    filter: &Filter,
    forward_table: &str,
    minutes: bool,
    part: Option<&Part>,
) -> (String, Vec<(&'static str, Value)>) {
    let mut conditions = Vec::new();
    let limit = part.map_or(filter.limit, |p| p.limit);
    let mut values = vec![(":limit", Value::Integer(limit.map_or(-1, |l| l as i64)))];
    if let Some(part) = part {
        conditions.push("n.seq >= :lo AND n.seq < :hi".to_owned());
        values.push((":lo", Value::Integer(part.seqs.start)));
        values.push((":hi", Value::Integer(part.seqs.end)));
    }
    if let Some(org) = &filter.org {
        values.push((":org", Value::Text(org.as_str().to_owned())));
    }
    if filter.org.is_some() {
        conditions.push("n.org_id = :org".to_owned());
    }
    if let Some(id) = &filter.notification_id {
        conditions.push("n.notification_id = :id".to_owned());
        values.push((":id", Value::Text(id.clone())));
    }
    if let Some(since) = filter.since {
        // Stored times are RFC 3339 with milliseconds, so they compare correctly as text.
        conditions.push("n.received_at >= :since".to_owned());
        let since = humantime::format_rfc3339_millis(since).to_string();
        if minutes {
            conditions.push(format!("n.seq >= ({SINCE_FIRST_SEQ})"));
            let minute = minute_of(&since).to_owned();
            values.push((":since_minute", Value::Text(minute)));
        }
        values.push((":since", Value::Text(since)));
    }
    if let Some(state) = filter.state {
        conditions.push("f.state = :state".to_owned());
        values.push((":state", Value::Text(state.as_str().to_owned())));
    }
    let mut sql = format!(
        "SELECT n.seq, n.org_id, n.action_id, n.notification_id, n.object_type, n.fields,
                n.received_at, n.certificate_sha256, n.peer_addr,
                f.state, f.attempts, f.last_error
         FROM notifications n LEFT JOIN {forward_table} f ON f.seq = n.seq"
    );
    if !conditions.is_empty() {
        sql.push_str("\n         WHERE ");
        sql.push_str(&conditions.join("\n           AND "));
    }
    sql.push_str("\n         ORDER BY n.seq\n         LIMIT :limit");
    (sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OrgId;
    use crate::store::ForwardOutcome;

    fn names(conn: &Connection, kind: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = ?1 ORDER BY name")
            .unwrap();
        stmt.query_map([kind], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A store file in `dir` as the build that ran only the first `version` migrations left it.
    fn store_at_version(dir: &Path, version: usize) -> Connection {
        let conn = Connection::open(dir.join("old.db")).unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        conn
    }

    #[test]
    fn a_migration_that_fails_leaves_the_version_and_the_foreign_key_checks_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = store_at_version(dir.path(), 4);
        // Migration 5 creates this table: here it is in the way, so the migration fails.
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; CREATE TABLE notifications_rekeyed (x INTEGER)",
        )
        .unwrap();

        let err = migrate(&mut conn).unwrap_err().to_string();

        assert!(err.contains("notifications_rekeyed"), "{err}");
        let pragma = |name: &str| -> i64 {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(pragma("user_version"), 4);
        assert_eq!(
            pragma("foreign_keys"),
            1,
            "the checks stayed off after the failure"
        );
    }

    #[test]
    fn a_store_from_an_older_schema_migrates_and_keeps_its_rows_and_its_unique_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = store_at_version(dir.path(), 3);
        let insert = "INSERT INTO notifications (org_id, notification_id, action_id, object_type,
                          fields, received_at, certificate_sha256, peer_addr)
                      VALUES ('00Dxx0000001gPFEAY', '04l000000000000001', 'a', 'Contact', '{}',
                              '2026-11-23T10:00:00.000Z', 'ab', '127.0.0.1:1')";
        conn.execute(insert, []).unwrap();
        // A second row, queued for the webhook: the queue's row must still find it after the
        // table is rebuilt.
        conn.execute(&insert.replace("000001'", "000002'"), [])
            .unwrap();
        conn.execute_batch(
            "INSERT INTO forward (seq, org_id, state, attempts, next_attempt_ms, queued_ms)
             VALUES (2, '00Dxx0000001gPFEAY', 'dead', 5, 0, 0)",
        )
        .unwrap();
        assert!(names(&conn, "index").contains(&"notifications_received".to_owned()));
        let key_columns = |conn: &Connection| -> Vec<String> {
            let mut stmt = conn
                .prepare(
                    "SELECT i.name FROM sqlite_master m, pragma_index_info(m.name) i
                     WHERE m.tbl_name = 'notifications' AND m.name LIKE 'sqlite_autoindex%'
                     ORDER BY i.seqno",
                )
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(key_columns(&conn), ["org_id", "notification_id"]);

        migrate(&mut conn).unwrap();

        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let indexes = names(&conn, "index");
        assert!(
            !indexes.contains(&"notifications_received".to_owned()),
            "{indexes:?}"
        );
        assert_eq!(count(&conn, "notifications"), 2);
        // The key now leads with the notification ID, and deduplication still holds.
        assert_eq!(key_columns(&conn), ["notification_id", "org_id"]);
        assert!(conn.execute(insert, []).is_err());
        // Every row kept its seq, and the queue's row its notification.
        let queued: (i64, String) = conn
            .query_row(
                "SELECT n.seq, n.notification_id FROM forward f JOIN notifications n
                 ON n.seq = f.seq",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(queued, (2, "04l000000000000002".to_owned()));
        // The foreign key checks are back on for the writer, and the queue's key still names
        // the table.
        let on: bool = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(on);
        assert!(
            conn.execute_batch(
                "INSERT INTO forward (seq, org_id, state, attempts, next_attempt_ms, queued_ms)
                 VALUES (99, '00Dxx0000001gPFEAY', 'dead', 5, 0, 0)"
            )
            .is_err()
        );
        // A fresh store ends up with the same schema.
        let mut fresh = Connection::open(dir.path().join("new.db")).unwrap();
        migrate(&mut fresh).unwrap();
        assert_eq!(names(&fresh, "index"), indexes);
        assert_eq!(names(&fresh, "table"), names(&conn, "table"));
        assert_eq!(key_columns(&fresh), ["notification_id", "org_id"]);
    }

    #[test]
    fn a_new_store_gets_16_kib_pages_and_an_older_store_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let pragma = |conn: &Connection, name: &str| -> i64 {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .unwrap()
        };
        let fresh = open_writer(&dir.path().join("new.db")).unwrap();
        assert_eq!(pragma(&fresh, "page_size"), 16384);
        assert_eq!(pragma(&fresh, "wal_autocheckpoint"), 250);
        assert_eq!(pragma(&fresh, "cache_size"), -8192);
        drop(fresh);
        // Reopened, the file says 16 KiB itself.
        let again = open_writer(&dir.path().join("new.db")).unwrap();
        assert_eq!(pragma(&again, "page_size"), 16384);

        // A store created by an earlier release, with SQLite's 4 KiB pages and a row in it.
        let old_path = dir.path().join("old.db");
        let mut old = Connection::open(&old_path).unwrap();
        old.execute_batch("PRAGMA page_size=4096; PRAGMA journal_mode=WAL;")
            .unwrap();
        migrate(&mut old).unwrap();
        old.execute(
            "INSERT INTO notifications (org_id, notification_id, action_id, object_type,
                 fields, received_at, certificate_sha256, peer_addr)
             VALUES ('00Dxx0000001gPFEAY', '04l000000000000001', 'a', 'Contact', '{}',
                     '2026-11-24T10:00:00.000Z', 'ab', 'p')",
            [],
        )
        .unwrap();
        drop(old);
        let reopened = open_writer(&old_path).unwrap();
        assert_eq!(pragma(&reopened, "page_size"), 4096);
        // The same 4 MB of WAL between checkpoints, counted in its own pages.
        assert_eq!(pragma(&reopened, "wal_autocheckpoint"), 1000);
        assert_eq!(count(&reopened, "notifications"), 1);
    }

    /// What SQLite's planner says it will do with `sql`, one step per line.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count());
        let steps: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        steps.join("\n")
    }

    /// A migrated store holding these (org, notification ID) pairs, in this order; the other
    /// columns are filler no test here reads.
    fn store_with(rows: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obm.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        for (org, id) in rows {
            insert_row(&conn, org, id, "2026-11-24T10:00:00.000Z");
        }
        (dir, path, conn)
    }

    /// One notification row written straight into the table, as no writer of this build would
    /// (no minute, no queue row); the columns no test reads are filler.
    fn insert_row(conn: &Connection, org: &str, id: &str, received_at: &str) {
        conn.execute(
            "INSERT INTO notifications (org_id, notification_id, action_id, object_type,
                 fields, received_at, certificate_sha256, peer_addr)
             VALUES (?1, ?2, 'a', 'Contact', '{}', ?3, 'ab', 'p')",
            [org, id, received_at],
        )
        .unwrap();
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_lookup_by_notification_id_seeks_the_unique_key_and_one_by_org_alone_reads_in_order() {
        // The same notification ID under two orgs (IDs are unique per org only), and a third org.
        let (_dir, path, conn) = store_with(&[
            ("00Dxx0000001gPFEAY", "04l000000000000001"),
            ("00Dxx0000001gPFEAY", "04l000000000000002"),
            ("00Dxx0000002gPFEAY", "04l000000000000001"),
            ("00Dxx0000003gPFEAY", "04l000000000000003"),
        ]);
        let org = |s: &str| Some(OrgId::parse(s).unwrap());
        let id = |s: &str| Some(s.to_owned());
        let cases = [
            (
                Filter {
                    org: org("00Dxx0000002gPFEAY"),
                    notification_id: id("04l000000000000001"),
                    ..Filter::default()
                },
                true,
                vec![("00Dxx0000002gPFEAY", "04l000000000000001")],
            ),
            (
                Filter {
                    notification_id: id("04l000000000000001"),
                    ..Filter::default()
                },
                true,
                vec![
                    ("00Dxx0000001gPFEAY", "04l000000000000001"),
                    ("00Dxx0000002gPFEAY", "04l000000000000001"),
                ],
            ),
            (
                Filter {
                    org: org("00Dxx0000001gPFEAY"),
                    ..Filter::default()
                },
                false,
                vec![
                    ("00Dxx0000001gPFEAY", "04l000000000000001"),
                    ("00Dxx0000001gPFEAY", "04l000000000000002"),
                ],
            ),
            (
                Filter {
                    notification_id: id("04l000000000000009"),
                    ..Filter::default()
                },
                true,
                vec![],
            ),
        ];
        for (filter, seeks, want) in cases {
            let steps = plan(&conn, &list_query(&filter, "forward", true, None).0);
            if seeks {
                assert!(
                    steps.contains(
                        "SEARCH n USING INDEX sqlite_autoindex_notifications_1 (notification_id=?"
                    ),
                    "{filter:?} does not seek the (notification ID, org) key:\n{steps}"
                );
                assert!(!steps.contains("SCAN n"), "{filter:?} scans:\n{steps}");
            } else {
                // By org alone: the table in seq order, no sort (the answer is oldest first).
                assert!(steps.contains("SCAN n"), "{filter:?}:\n{steps}");
                assert!(!steps.contains("TEMP B-TREE"), "{filter:?} sorts:\n{steps}");
            }
            let got: Vec<(String, String)> = list(&path, &filter)
                .unwrap()
                .into_iter()
                .map(|n| (n.org_id, n.notification_id))
                .collect();
            let want: Vec<(String, String)> = want
                .into_iter()
                .map(|(o, i)| (o.to_owned(), i.to_owned()))
                .collect();
            assert_eq!(got, want, "{filter:?}");
        }
        // Nothing to seek by: every row, in the order they were stored.
        assert_eq!(list(&path, &Filter::default()).unwrap().len(), 4);
    }

    #[test]
    fn a_replay_by_notification_id_seeks_the_unique_key_and_requeues_only_that_id() {
        // The same notification ID under two orgs, and another ID: all three dead-lettered.
        let (_dir, path, conn) = store_with(&[
            ("00Dxx0000001gPFEAY", "04l000000000000001"),
            ("00Dxx0000002gPFEAY", "04l000000000000001"),
            ("00Dxx0000001gPFEAY", "04l000000000000002"),
        ]);
        conn.execute_batch(
            "INSERT INTO forward (seq, org_id, state, attempts, next_attempt_ms, queued_ms)
             SELECT seq, org_id, 'dead', 5, 0, 0 FROM notifications",
        )
        .unwrap();
        let pending = |conn: &Connection| -> Vec<(String, String)> {
            let mut stmt = conn
                .prepare(
                    "SELECT n.org_id, n.notification_id FROM forward f JOIN notifications n
                     ON n.seq = f.seq WHERE f.state = 'pending' ORDER BY f.seq",
                )
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let by_id = |org: Option<&str>| Requeue {
            notification_id: Some("04l000000000000001".to_owned()),
            org: org.map(|o| OrgId::parse(o).unwrap()),
            state: ForwardState::Dead,
        };
        for which in [by_id(None), by_id(Some("00Dxx0000002gPFEAY"))] {
            let steps = plan(&conn, &requeue_query(&which).0);
            assert!(
                steps.contains(
                    "USING COVERING INDEX sqlite_autoindex_notifications_1 (notification_id=?"
                ),
                "{which:?} does not seek the (notification ID, org) key:\n{steps}"
            );
            assert!(
                steps.contains("SEARCH forward USING INTEGER PRIMARY KEY"),
                "{which:?} walks the queue:\n{steps}"
            );
            assert!(
                !steps.contains("SCAN notifications"),
                "{which:?} scans:\n{steps}"
            );
        }

        assert_eq!(
            requeue(&path, &by_id(Some("00Dxx0000002gPFEAY"))).unwrap(),
            1
        );
        assert_eq!(
            pending(&conn),
            [(
                "00Dxx0000002gPFEAY".to_owned(),
                "04l000000000000001".to_owned()
            )]
        );
        // Without --org: the ID under every org (the one left dead in the first org).
        assert_eq!(requeue(&path, &by_id(None)).unwrap(), 1);
        assert_eq!(pending(&conn).len(), 2);
        // Nothing more is dead under that ID; the other ID stays dead.
        assert_eq!(requeue(&path, &by_id(None)).unwrap(), 0);
        let everything = Requeue {
            notification_id: None,
            org: None,
            state: ForwardState::Dead,
        };
        assert_eq!(requeue(&path, &everything).unwrap(), 1);
        assert_eq!(pending(&conn).len(), 3);
    }

    /// A message of org 1 with these notification IDs.
    fn message(ids: &[&str]) -> NewMessage {
        NewMessage {
            org: OrgId::parse("00Dxx0000001gPFEAY").unwrap(),
            action_id: "04kxx00000000blCAA".into(),
            certificate: crate::ids::Fingerprint::of_der(b"minutes test"),
            peer: "127.0.0.1:1".into(),
            notifications: ids
                .iter()
                .map(|id| super::super::NewNotification::new(id, "Contact", &[("Id", *id)]))
                .collect(),
        }
    }

    fn since(time: &str) -> Filter {
        Filter {
            since: Some(humantime::parse_rfc3339(time).unwrap()),
            ..Filter::default()
        }
    }

    fn ids(path: &Path, filter: &Filter) -> Vec<String> {
        let listed = list(path, filter).unwrap();
        listed.into_iter().map(|n| n.notification_id).collect()
    }

    /// Commits a message of `ids` at `at`, with forwarding on, as the writer does.
    fn commit_at(conn: &mut Connection, ids: &[&str], at: &str) {
        let m = message(ids);
        let none = std::iter::empty();
        write(
            conn,
            [&m].into_iter(),
            none,
            at,
            true,
            true,
            &mut OrgBlocks::default(),
        )
        .unwrap();
    }

    /// Records webhook results, as the writer does.
    fn record(conn: &mut Connection, updates: &[ForwardUpdate]) {
        let (none, at) = (std::iter::empty(), "2026-11-24T10:00:01.000Z");
        write(
            conn,
            none,
            updates.iter(),
            at,
            false,
            true,
            &mut OrgBlocks::default(),
        )
        .unwrap();
    }

    /// Every `--since` that matters for the rows in `conn`: each stored time, and a moment
    /// before and after each. Answered from the commits table and by a plain scan, the lists
    /// must be the same.
    fn assert_since_matches_a_scan(path: &Path, conn: &Connection) {
        let mut stmt = conn
            .prepare("SELECT DISTINCT received_at FROM notifications")
            .unwrap();
        let times: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!times.is_empty());
        for time in &times {
            let at = humantime::parse_rfc3339(time).unwrap();
            let ms = std::time::Duration::from_millis(1);
            for t in [at - ms, at, at + ms] {
                let filter = Filter {
                    since: Some(t),
                    ..Filter::default()
                };
                assert_lists_what_a_scan_does(path, conn, &filter);
            }
        }
    }

    /// `list` gives for `filter` what its query gives without the minutes and the parts: a plain
    /// walk of the whole table.
    fn assert_lists_what_a_scan_does(path: &Path, conn: &Connection, filter: &Filter) {
        let (sql, values) = list_query(filter, "forward", false, None);
        let mut scan = conn.prepare(&sql).unwrap();
        let want: Vec<String> = scan
            .query_map(named(&values).as_slice(), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids(path, filter), want, "{filter:?}");
    }

    #[test]
    fn since_starts_at_the_first_seq_of_its_minute_even_where_the_clock_stepped_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obm.db");
        let mut conn = open_writer(&path).unwrap();
        let none = std::iter::empty();
        let commits = [
            ("2026-11-24T10:00:00.000Z", vec!["n1", "n2"]),
            ("2026-11-24T11:00:00.000Z", vec!["n3"]),
            // The clock stepped back half an hour.
            ("2026-11-24T10:30:00.000Z", vec!["n4"]),
            // A duplicate first: the first notification stored is the second.
            ("2026-11-24T12:00:00.000Z", vec!["n3", "n5"]),
            // Only duplicates: nothing stored, so no minute either.
            ("2026-11-24T13:00:00.000Z", vec!["n1"]),
            // Back again, into a minute that has its row: the row keeps its lower seq.
            ("2026-11-24T10:00:30.000Z", vec!["n6"]),
        ];
        for (at, notifications) in &commits {
            commit_at(&mut conn, notifications, at);
        }
        let rows: Vec<(String, i64)> = conn
            .prepare("SELECT minute, first_seq FROM received_minutes ORDER BY first_seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let minute = |i: usize| minute_of(commits[i].0).to_owned();
        assert_eq!(
            rows,
            [
                (minute(0), 1),
                (minute(1), 3),
                (minute(2), 4),
                (minute(3), 5)
            ]
        );

        assert_eq!(
            ids(&path, &since("2026-11-24T10:00:15Z")),
            ["n3", "n4", "n5", "n6"]
        );
        assert_eq!(
            ids(&path, &since("2026-11-24T10:30:00Z")),
            ["n3", "n4", "n5"]
        );
        assert_eq!(ids(&path, &since("2026-11-24T10:45:00Z")), ["n3", "n5"]);
        assert_eq!(
            ids(&path, &since("2026-11-24T12:30:00Z")),
            Vec::<String>::new()
        );
        assert_eq!(ids(&path, &since("2026-11-24T09:00:00Z")).len(), 6);
        assert_since_matches_a_scan(&path, &conn);

        // The walk starts at that seq: a search of the table's key, not a scan of the table.
        let filter = since("2026-11-24T11:00:00Z");
        let steps = plan(&conn, &list_query(&filter, "forward", true, None).0);
        assert!(
            steps.contains("SEARCH n USING INTEGER PRIMARY KEY (rowid>?)"),
            "{steps}"
        );
        assert!(
            steps.contains("SEARCH received_minutes USING PRIMARY KEY (minute>?)"),
            "{steps}"
        );
        assert!(!steps.contains("SCAN"), "{steps}");

        // A commit not told its minute is new adds no row.
        let m = message(&["n7"]);
        let at = "2026-11-24T14:00:00.000Z";
        write(
            &mut conn,
            [&m].into_iter(),
            none,
            at,
            false,
            false,
            &mut OrgBlocks::default(),
        )
        .unwrap();
        assert_eq!(count(&conn, "received_minutes"), 4);
    }

    #[test]
    fn opening_the_store_gives_the_minutes_of_rows_stored_without_one_theirs() {
        let dir = tempfile::tempdir().unwrap();
        // A store from before migration 6, its times out of order as a stepped clock leaves them.
        let old = store_at_version(dir.path(), 5);
        let insert =
            |conn: &Connection, id: &str, at: &str| insert_row(conn, "00Dxx0000001gPFEAY", id, at);
        insert(&old, "n1", "2026-11-24T10:00:00.000Z");
        insert(&old, "n2", "2026-11-24T10:00:00.000Z");
        insert(&old, "n3", "2026-11-24T11:00:00.000Z");
        insert(&old, "n4", "2026-11-24T10:30:00.000Z");
        drop(old);
        let path = dir.path().join("old.db");
        // Until a receiver of this version opens it, --since scans, and is still right.
        assert_eq!(ids(&path, &since("2026-11-24T10:30:00Z")), ["n3", "n4"]);

        let mut conn = open_writer(&path).unwrap();
        assert_eq!(count(&conn, "received_minutes"), 3);
        assert_eq!(ids(&path, &since("2026-11-24T10:30:00Z")), ["n3", "n4"]);
        assert_since_matches_a_scan(&path, &conn);

        // This build stores a commit; then an older build, run on the same file, stores two
        // notifications without minutes.
        commit_at(&mut conn, &["n5"], "2026-11-24T12:00:00.000Z");
        insert(&conn, "n6", "2026-11-24T12:00:00.000Z");
        insert(&conn, "n7", "2026-11-24T09:00:00.000Z");
        drop(conn);
        let conn = open_writer(&path).unwrap();
        assert_eq!(count(&conn, "received_minutes"), 5);
        assert_since_matches_a_scan(&path, &conn);
        // Opening again finds nothing new to add.
        drop(conn);
        let conn = open_writer(&path).unwrap();
        assert_eq!(count(&conn, "received_minutes"), 5);
    }

    /// Each org's blocks in `org_blocks`, lowest first.
    fn blocks_of(conn: &Connection) -> Vec<(i64, String)> {
        let mut stmt = conn
            .prepare("SELECT block, org_id FROM org_blocks ORDER BY block, org_id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn list_by_org_reads_only_the_orgs_blocks_and_lists_what_a_scan_does() {
        const A: &str = "00Dxx0000001gPFEAY";
        const B: &str = "00Dxx0000002gPFEAY";
        const C: &str = "00Dxx0000003gPFEAY";
        const NONE: &str = "00Dxx0000009gPFEAY";
        let block = |b: i64| b << ORG_BLOCK_BITS;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obm.db");
        // The writer's connection and what it knows of the blocks, as a new writer has them.
        let open = || (open_writer(&path).unwrap(), OrgBlocks::default());
        // Stores a message of `org` as the writer does (no webhook), at `at`.
        fn commit(w: &mut (Connection, OrgBlocks), org: &str, ids: &[&str], at: &str) {
            let mut m = message(ids);
            m.org = OrgId::parse(org).unwrap();
            let none = std::iter::empty();
            write(&mut w.0, [&m].into_iter(), none, at, true, false, &mut w.1).unwrap();
        }
        // Where the next seq goes: a row of C written straight in, as an older build would.
        let jump_to = |conn: &Connection, seq: i64, id: &str| {
            conn.execute(
                "INSERT INTO notifications (seq, org_id, notification_id, action_id,
                     object_type, fields, received_at, certificate_sha256, peer_addr)
                 VALUES (?1, ?2, ?3, 'a', 'Contact', '{}', '2026-11-24T10:00:00.000Z', 'ab', 'p')",
                params![seq, C, id],
            )
            .unwrap();
        };
        let mut w = open();
        commit(&mut w, A, &["a1", "a2"], "2026-11-24T10:00:00.000Z");
        commit(&mut w, B, &["b1"], "2026-11-24T10:00:00.000Z");
        // An older build, run on the file, stores a notification of C in block 3 without its
        // block; this build's writer opens the file again and catches it up.
        jump_to(&w.0, block(3), "c1");
        drop(w);
        let mut w = open();
        commit(&mut w, B, &["b2", "b1"], "2026-11-24T11:00:00.000Z");
        // Once more, in block 5.
        jump_to(&w.0, block(6) - 3, "c2");
        drop(w);
        let mut w = open();
        // A message across blocks 5 and 6 has a row in each.
        commit(&mut w, A, &["a3", "a4", "a5"], "2026-11-24T12:00:00.000Z");
        commit(&mut w, A, &["a6"], "2026-11-24T12:00:00.000Z");
        let (mut conn, _) = w;
        let row = |b: i64, org: &str| (b, org.to_owned());
        assert_eq!(
            blocks_of(&conn),
            [
                row(0, A),
                row(0, B),
                row(3, B),
                row(3, C),
                row(5, A),
                row(5, C),
                row(6, A)
            ]
        );
        // The walk by org reads the org's blocks and the highest, not the rest.
        let parts = |org: &str, since: Option<&str>| {
            let filter = Filter {
                org: Some(OrgId::parse(org).unwrap()),
                since: since.map(|t| humantime::parse_rfc3339(t).unwrap()),
                ..Filter::default()
            };
            org_parts(&conn, &filter, true).unwrap().unwrap()
        };
        assert_eq!(
            parts(A, None),
            [0..block(1), block(5)..block(6), block(6)..i64::MAX]
        );
        assert_eq!(
            parts(C, None),
            [block(3)..block(4), block(5)..block(6), block(6)..i64::MAX]
        );
        // An org with none reads only the highest block on.
        assert_eq!(parts(NONE, None), vec![block(6)..i64::MAX]);
        assert_eq!(
            parts(A, Some("2026-11-24T12:00:00Z")),
            [block(5)..block(6), block(6)..i64::MAX]
        );
        // What it lists is what a scan of the whole table lists, whatever the limit and time.
        for org in [A, B, C, NONE] {
            for limit in [None, Some(1), Some(2), Some(4)] {
                for since in [
                    None,
                    Some("2026-11-24T11:00:00Z"),
                    Some("2026-11-24T12:00:00Z"),
                ] {
                    let filter = Filter {
                        org: Some(OrgId::parse(org).unwrap()),
                        limit,
                        since: since.map(|t| humantime::parse_rfc3339(t).unwrap()),
                        ..Filter::default()
                    };
                    assert_lists_what_a_scan_does(&path, &conn, &filter);
                }
            }
        }
        assert_eq!(
            ids(
                &path,
                &Filter {
                    org: Some(OrgId::parse(A).unwrap()),
                    ..Filter::default()
                }
            ),
            ["a1", "a2", "a3", "a4", "a5", "a6"]
        );
        // A retention that passed blocks 0 to 3 takes their rows with them.
        assert_eq!(prune_all(&mut conn, "2026-11-24T11:30:00.000Z"), 6);
        assert_eq!(blocks_of(&conn), [row(5, A), row(5, C), row(6, A)]);
    }

    /// Runs prune steps until none is left, as `Store::prune` does; returns how many went.
    fn prune_all(conn: &mut Connection, before: &str) -> u64 {
        let (mut deleted, mut from, mut bound) = (0, 0, None);
        loop {
            let step = PruneStep {
                before: before.to_owned(),
                from,
            };
            let pruned = prune(conn, &step, &mut bound).unwrap();
            deleted += pruned.deleted;
            match pruned.next {
                Some(next) => from = next,
                None => return deleted,
            }
        }
    }

    fn seq_of(conn: &Connection, id: &str) -> i64 {
        conn.query_row(
            "SELECT seq FROM notifications WHERE notification_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn prune_deletes_what_the_retention_passed_but_not_a_pending_one_nor_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obm.db");
        let mut conn = open_writer(&path).unwrap();
        let commits = [
            ("2026-10-01T10:00:00.000Z", vec!["n1", "n2"]),
            ("2026-10-01T10:00:30.000Z", vec!["n3"]),
            ("2026-10-02T09:00:00.000Z", vec!["n4"]),
            // The clock stepped back a day.
            ("2026-10-01T11:00:00.000Z", vec!["n5"]),
            ("2026-11-20T10:00:00.000Z", vec!["n6"]),
            // Back again: old, but stored after a recent one.
            ("2026-10-01T12:00:00.000Z", vec!["n7"]),
            ("2026-11-24T10:00:00.000Z", vec!["n8"]),
        ];
        for (at, notifications) in &commits {
            commit_at(&mut conn, notifications, at);
        }
        let outcome = |conn: &Connection, id: &str, outcome| ForwardUpdate {
            seq: seq_of(conn, id),
            attempts: 1,
            outcome,
        };
        let dead = || ForwardOutcome::Dead {
            error: "410".into(),
        };
        let mut updates = vec![outcome(&conn, "n2", dead())];
        for id in ["n1", "n4", "n5", "n7"] {
            updates.push(outcome(&conn, id, ForwardOutcome::Delivered));
        }
        record(&mut conn, &updates);

        // Received before November: n1 to n5 and n7. n3 is still pending; n7 was stored after
        // n6, which is recent, so it is past the bound and stays too.
        assert_eq!(prune_all(&mut conn, "2026-11-01T00:00:00.000Z"), 4);
        assert_eq!(ids(&path, &Filter::default()), ["n3", "n6", "n7", "n8"]);
        assert_eq!(
            count(&conn, "forward"),
            4,
            "the queue rows of the deleted went too"
        );
        let broken: Option<String> = conn
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()
            .unwrap();
        assert_eq!(broken, None);
        assert_since_matches_a_scan(&path, &conn);
        // Nothing more to do at the same cutoff.
        assert_eq!(prune_all(&mut conn, "2026-11-01T00:00:00.000Z"), 0);

        // n3 and n6 delivered, and a cutoff after everything: all but the newest go (it is
        // still pending too), and of the minutes below it only the latest is kept.
        let done = [
            outcome(&conn, "n3", ForwardOutcome::Delivered),
            outcome(&conn, "n6", ForwardOutcome::Delivered),
        ];
        record(&mut conn, &done);
        assert_eq!(prune_all(&mut conn, "2026-11-25T00:00:00.000Z"), 3);
        assert_eq!(ids(&path, &Filter::default()), ["n8"]);
        assert_eq!(count(&conn, "received_minutes"), 2);
        assert_since_matches_a_scan(&path, &conn);
        // The next notification's seq follows the newest: none comes back.
        commit_at(&mut conn, &["n9"], "2026-11-25T01:00:00.000Z");
        assert_eq!(seq_of(&conn, "n9"), seq_of(&conn, "n8") + 1);

        // An older build stored two notifications on the 26th without their minutes: the bound
        // from the minutes does not know them, the walk stops at the first.
        let done = [
            outcome(&conn, "n8", ForwardOutcome::Delivered),
            outcome(&conn, "n9", ForwardOutcome::Delivered),
        ];
        record(&mut conn, &done);
        insert_row(
            &conn,
            "00Dxx0000001gPFEAY",
            "n10",
            "2026-11-26T10:00:00.000Z",
        );
        insert_row(
            &conn,
            "00Dxx0000001gPFEAY",
            "n11",
            "2026-11-26T10:00:00.000Z",
        );
        assert_eq!(prune_all(&mut conn, "2026-11-25T12:00:00.000Z"), 2);
        assert_eq!(ids(&path, &Filter::default()), ["n10", "n11"]);

        // Everything received before the cutoff and nothing pending: the newest stays, and the
        // next seq still follows it.
        assert_eq!(prune_all(&mut conn, "2027-01-01T00:00:00.000Z"), 1);
        assert_eq!(ids(&path, &Filter::default()), ["n11"]);
        insert_row(
            &conn,
            "00Dxx0000001gPFEAY",
            "n12",
            "2026-11-27T10:00:00.000Z",
        );
        assert_eq!(seq_of(&conn, "n12"), seq_of(&conn, "n11") + 1);
    }

    #[test]
    fn compact_checks_the_room_for_the_copy_and_the_journal_first() {
        let mb = 1_000_000;
        let room = |device, free_mb: u64| Room {
            device,
            free: free_mb * mb,
        };
        let (temp, store) = (Path::new("/var/tmp"), Path::new("/srv/obm/data"));
        // (temp dir's room, store dir's room, used MB, file MB, what is short)
        let cases = [
            // One filesystem: the copy and the journal together.
            (room(1, 250), room(1, 250), 100, 150, None),
            (
                room(1, 249),
                room(1, 249),
                100,
                150,
                Some("250.0 MB on the one filesystem that holds both, which has 249.0 MB free"),
            ),
            // Two: each on its own.
            (room(1, 100), room(2, 150), 100, 150, None),
            (
                room(1, 99),
                room(2, 1000),
                100,
                150,
                Some("; /var/tmp has 99.0 MB free"),
            ),
            (
                room(1, 1000),
                room(2, 149),
                100,
                150,
                Some("; /srv/obm/data has 149.0 MB free"),
            ),
        ];
        for (temp_room, store_room, used, file, want) in cases {
            let got = shortfall(temp, temp_room, store, store_room, used * mb, file * mb);
            match (want, &got) {
                (None, None) => {}
                (Some(want), Some(got)) => {
                    assert!(got.contains(want), "{got}");
                    assert!(
                        got.contains(&format!(
                            "needs {used}.0 MB for a copy of the store in /var/tmp"
                        )) && got.contains(&format!("up to {file}.0 MB in /srv/obm/data")),
                        "{got}"
                    );
                }
                _ => panic!("{temp_room:?} {store_room:?} {used} {file}: {got:?}"),
            }
        }
    }
}
