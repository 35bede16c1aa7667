//! The SQLite store on a real file: what the request path does not show.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Key, ORG_A, ORG_B, Spec, TestServer, admin_get, age_store, eventually, filled_store, metric,
    nid, pragma, received_in_2020, self_signed, sqlite_store, wide_message,
};

/// The WAL is checkpointed back into the database file as it grows (SQLite's automatic
/// checkpoint, set to every 4 MB of WAL, inside the writer's commit). Write a burst of 30 MB: the
/// data must reach the database file, and the WAL must stay bounded (without checkpoints it grows
/// to about twice the data, and never shrinks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (store, config) = sqlite_store(&dir.path().join("obm-gate.db")).await;
    let db_len = || std::fs::metadata(&config.path).map(|m| m.len()).unwrap();
    let wal_len = || {
        std::fs::metadata(config.path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let empty = db_len();

    // 150 messages × 100 notifications × ~2 KB.
    for m in 0..150 {
        assert_eq!(
            store
                .commit(wide_message(m * 100, 100, 2_000))
                .await
                .unwrap()
                .stored,
            100
        );
    }

    let stored = 150 * 100 * 2_000;
    // The checkpoint runs inside the commit, so it is done when the commit returns. Up to the
    // last threshold's worth may still wait in the WAL for the next commit; the database file
    // must hold most of the data.
    assert!(
        db_len() >= stored / 2,
        "the database file is still {} bytes (it was {empty} empty; the WAL is {} bytes): \
         nothing was checkpointed",
        db_len(),
        wal_len()
    );
    // The WAL was restarted from its beginning rather than growing with every commit: at most
    // the checkpoint threshold (4 MB) plus one message (~200 KB with its indexes), with room to
    // spare.
    let bound = 2 * 4_096_000;
    assert!(
        wal_len() < bound,
        "the WAL holds {} bytes (bound {bound}) for {stored} bytes of data",
        wal_len()
    );
}

/// `store compact` on a store like one from before 16 KiB pages, with the pages of a dropped
/// table free in it: refused while the store is open, then rewritten at 16 KiB pages with no
/// free page and every row as it was, and the receiver's store goes on with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_rewrites_an_old_store_at_16_kib_pages_and_keeps_every_row() {
    use obm_gate::store::{Filter, StoreError, compact};
    let dir = tempfile::tempdir().unwrap();
    let (store, config) = filled_store(&dir.path().join("obm-gate.db")).await;
    let before = store.list(&Filter::default()).await.unwrap();
    match compact(&config.path) {
        Err(StoreError::InUse { .. }) => {}
        other => panic!("compact of an open store: {other:?}"),
    }
    store.shutdown().await;
    drop(store);
    // A stopped store is one file: closing its connection checkpointed the WAL in.
    assert!(
        !config.path.with_extension("db-wal").exists(),
        "the WAL outlived shutdown"
    );

    age_store(&config.path);
    assert_eq!(pragma::<i64>(&config.path, "page_size"), 4096);
    let free: i64 = pragma(&config.path, "freelist_count");
    assert!(free > 100, "only {free} free pages");

    let done = compact(&config.path).unwrap();
    assert_eq!((done.page_size_before, done.page_size_after), (4096, 16384));
    assert_eq!(done.free_pages_before, free);
    assert_eq!(done.notifications, 1000);
    assert!(
        done.bytes_after < done.bytes_before,
        "{} bytes before, {} after",
        done.bytes_before,
        done.bytes_after
    );
    assert_eq!(pragma::<i64>(&config.path, "page_size"), 16384);
    assert_eq!(pragma::<i64>(&config.path, "freelist_count"), 0);
    assert_eq!(pragma::<String>(&config.path, "journal_mode"), "wal");

    let (store, _) = sqlite_store(&config.path).await;
    assert_eq!(
        store
            .commit(wide_message(2_000, 1, 1_000))
            .await
            .unwrap()
            .stored,
        1
    );
    let after = store.list(&Filter::default()).await.unwrap();
    assert_eq!(after.len(), 1001);
    assert_eq!(after[..1000], before[..]);
    store.shutdown().await;
}

/// The rows of a query of two columns, read straight from the store's file.
fn pairs<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
    conn: &rusqlite::Connection,
    sql: &str,
) -> Vec<(A, B)> {
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `messages list --since` starts its walk at the first seq stored in the minute of the time:
/// the writer gives every minute in which it stores notifications a row naming the lowest seq
/// stored in it, and the list is what a scan of the whole table finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_minute_of_stored_notifications_names_its_first_seq_for_since() {
    use obm_gate::store::Filter;
    let dir = tempfile::tempdir().unwrap();
    let (store, config) = filled_store(&dir.path().join("obm-gate.db")).await;
    // And some committed together, sharing group commits.
    let store = Arc::new(store);
    let together: Vec<_> = (0..16)
        .map(|m| {
            let store = store.clone();
            tokio::spawn(async move { store.commit(wide_message(10_000 + m * 10, 10, 100)).await })
        })
        .collect();
    for stored in together {
        assert_eq!(stored.await.unwrap().unwrap().stored, 10);
    }

    let conn = rusqlite::Connection::open(&config.path).unwrap();
    let query = |sql: &str| -> Vec<(String, i64)> { pairs(&conn, sql) };
    let minutes = query("SELECT minute, first_seq FROM received_minutes ORDER BY minute");
    let want = query(
        "SELECT substr(received_at, 1, 16), min(seq) FROM notifications GROUP BY 1 ORDER BY 1",
    );
    assert!(!want.is_empty());
    assert_eq!(minutes, want);

    // Since the time of the 11th commit.
    let (at, seq): (String, i64) = conn
        .query_row(
            "SELECT received_at, seq FROM notifications ORDER BY seq LIMIT 1 OFFSET 500",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let filter = Filter {
        since: Some(humantime::parse_rfc3339(&at).unwrap()),
        ..Filter::default()
    };
    let listed: Vec<i64> = store
        .list(&filter)
        .await
        .unwrap()
        .iter()
        .map(|n| n.seq)
        .collect();
    let scanned: Vec<i64> = query(&format!(
        "SELECT received_at, seq FROM notifications WHERE received_at >= '{at}' ORDER BY seq"
    ))
    .into_iter()
    .map(|(_, seq)| seq)
    .collect();
    assert_eq!(listed, scanned);
    // From that commit on (a commit in the same millisecond before it shares its time).
    assert!(
        listed.contains(&seq) && listed.ends_with(&[1_160]),
        "{listed:?}"
    );
}

/// `messages list --org` reads only the blocks of 65,536 seqs in which the org stored: the
/// writer gives an org a row in `org_blocks` for each block it stores in, in the transaction
/// that stores, whatever the group commits; and what `--org` lists is what a scan of the whole
/// table finds. The store's next seq starts just below the end of block 1 (one row written
/// straight in), so the messages committed together cross into block 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_an_org_stores_in_names_the_org_for_list_by_org() {
    use obm_gate::ids::OrgId;
    use obm_gate::store::Filter;
    const ORG_C: &str = "00Dxx0000003gPFEAY";
    const NO_ORG: &str = "00Dxx0000009gPFEAY";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("obm-gate.db");
    let (store, config) = sqlite_store(&path).await;
    store.commit(wide_message(0, 2, 10)).await.unwrap();
    store.shutdown().await;
    drop(store);
    let conn = rusqlite::Connection::open(&config.path).unwrap();
    conn.execute(
        "INSERT INTO notifications (seq, org_id, notification_id, action_id, object_type,
             fields, received_at, certificate_sha256, peer_addr)
         VALUES (2 * 65536 - 45, ?1, 'jump', 'a', 'Contact', '{}', '2026-11-24T10:00:00.000Z',
                 'ab', 'p')",
        [ORG_C],
    )
    .unwrap();

    // Four messages of ten notifications from each of three orgs, committed together.
    let (store, _) = sqlite_store(&config.path).await;
    let store = Arc::new(store);
    let together: Vec<_> = [ORG_A, ORG_B, ORG_C]
        .into_iter()
        .enumerate()
        .flat_map(|(o, org)| (0..4).map(move |m| (org, 100 + o * 1_000 + m * 10)))
        .map(|(org, first)| {
            let store = store.clone();
            let mut message = wide_message(first, 10, 10);
            message.org = OrgId::parse(org).unwrap();
            tokio::spawn(async move { store.commit(message).await })
        })
        .collect();
    for stored in together {
        assert_eq!(stored.await.unwrap().unwrap().stored, 10);
    }

    let query = |sql: &str| -> Vec<(i64, String)> { pairs(&conn, sql) };
    let blocks = query("SELECT block, org_id FROM org_blocks ORDER BY block, org_id");
    let want =
        query("SELECT DISTINCT seq >> 16, org_id FROM notifications ORDER BY seq >> 16, org_id");
    assert_eq!(blocks, want);
    assert!(
        want.iter().filter(|(block, _)| *block == 2).count() >= 2,
        "the messages did not cross into block 2: {want:?}"
    );
    for org in [ORG_A, ORG_B, ORG_C, NO_ORG] {
        let filter = Filter {
            org: Some(OrgId::parse(org).unwrap()),
            ..Filter::default()
        };
        let listed: Vec<(i64, String)> = store
            .list(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.seq, n.notification_id))
            .collect();
        let scanned = query(&format!(
            "SELECT seq, notification_id FROM notifications WHERE org_id = '{org}' ORDER BY seq"
        ));
        assert_eq!(listed, scanned, "--org {org}");
    }
}

/// A receiver with `[store] retention` deletes, as it starts, what was received longer ago, and
/// counts it; a late redelivery of a deleted notification is then stored again, since the store
/// deduplicates only against what it keeps. The store: four notifications, three of them made
/// to look received in 2020 (and its minutes table emptied, as the receiver rebuilds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_retention_deletes_what_it_passed_and_counts_it() {
    let old = tempfile::tempdir().unwrap();
    let (store, config) = sqlite_store(&old.path().join("obm-gate.db")).await;
    store.commit(wide_message(0, 3, 100)).await.unwrap();
    store.commit(wide_message(3, 1, 100)).await.unwrap();
    store.shutdown().await;
    drop(store);
    received_in_2020(&config.path, &[nid(0), nid(1), nid(2)]);

    let server = TestServer::start_with(|c, dir| {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::copy(&config.path, &c.store.path).unwrap();
        c.store.retention = Duration::from_secs(24 * 3600);
    })
    .await;
    let ids = || -> Vec<String> {
        let stored = server.stored().into_iter();
        stored.map(|n| n.notification_id).collect()
    };
    eventually(
        "the 2020 notifications deleted",
        Duration::from_secs(10),
        || ids().len() == 1,
    )
    .await;
    assert_eq!(ids(), [nid(3)]);
    let (_, text) = admin_get(&server.state, "/metrics").await;
    assert_eq!(metric(&text, "obm_gate_notifications_pruned_total"), 3.0);

    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    server.client(Some(&id)).ack(ORG_A, &[nid(0)]).await;
    assert_eq!(ids(), [nid(3), nid(0)]);
    server.stop().await;
}
