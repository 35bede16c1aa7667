//! Store faults: the filesystem under the store fills up. The receiver answers 503 without
//! acknowledging, keeps answering health checks, and resumes acknowledging by itself once
//! there is space again.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A small tmpfs, unmounted when dropped. Needs root (CI runs as root).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs(at.to_owned())
    }

    /// Writes a filler file until the filesystem is full, then gives back `room` bytes of it.
    fn fill(&self, room: u64) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let full = f.metadata().unwrap().len();
        f.set_len(full.saturating_sub(room)).unwrap();
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// 100 notifications with wide fields: far more pages than a nearly empty WAL holds.
fn big_message(base: usize) -> Vec<u8> {
    let ids: Vec<String> = (0..100).map(|i| nid(base + i)).collect();
    String::from_utf8(message(ORG_A, &ids))
        .unwrap()
        .replace(
            "<sf:LastName>Black</sf:LastName>",
            &format!("<sf:Description>{}</sf:Description>", "d".repeat(500)),
        )
        .into_bytes()
}

#[tokio::test]
async fn a_full_disk_is_503_then_recovers_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(&root.path().join("small"), "1m");
    let store_path = fs.0.join("obm-gate.db");
    let server = TestServer::start_with(|c, _| c.store.path = store_path.clone()).await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    client.ack(ORG_A, &[nid(1)]).await;
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);

    let filler = fs.fill(0);
    let reply = client.post(&big_message(1000)).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.contains("<faultcode>soapenv:Server</faultcode>"));
    assert!(
        reply.faultstring().contains("full"),
        "{}",
        reply.faultstring()
    );
    assert_eq!(admin_get(&server.state, "/healthz").await.0, 200);
    let (status, why) = admin_get(&server.state, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("store not writable"), "{why}");

    // Space comes back: Salesforce's retry is acknowledged, no restart needed.
    std::fs::remove_file(filler).unwrap();
    let reply = client.post(&big_message(1000)).await.unwrap();
    assert!(reply.is_ack(), "{reply:?}");
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);
    assert_eq!(server.stored().len(), 101);
    server.stop().await;
}

/// `store compact` when the store's filesystem has room for SQLite's small files but not for the
/// rollback journal the rewrite needs: it refuses before it starts, says how much it needs and
/// where, and leaves the store as it was; with room again it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_on_a_full_disk_refuses_and_leaves_the_store_as_it_was() {
    use obm_gate::store::{Filter, StoreError, compact};

    let root = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(&root.path().join("small"), "16m");
    let (store, config) = filled_store(&fs.0.join("obm-gate.db")).await;
    let rows = store.list(&Filter::default()).await.unwrap();
    store.shutdown().await;
    drop(store);
    age_store(&config.path);
    let state = || -> (i64, i64) {
        (
            pragma(&config.path, "page_size"),
            pragma(&config.path, "freelist_count"),
        )
    };
    let before = state();
    assert_eq!(before.0, 4096);

    // Full, but for 256 KiB: enough for the WAL index and an empty WAL, not for the journal.
    let filler = fs.fill(256 * 1024);
    match compact(&config.path) {
        Err(StoreError::Compact { detail, .. }) => {
            let journal = format!(" MB in {} for its rollback journal", fs.0.display());
            assert!(
                detail.starts_with("not enough free space: compacting needs ")
                    && detail.contains(&journal)
                    && detail.contains(&format!("; {} has 0.", fs.0.display()))
                    && detail.ends_with("; the store is unchanged"),
                "{detail}"
            )
        }
        other => panic!("compact on a full disk: {other:?}"),
    }
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(state(), before, "the failed compact changed the store");
    assert_eq!(
        obm_gate::store::list(&config.path, &Filter::default()).unwrap(),
        rows
    );

    let done = compact(&config.path).unwrap();
    assert_eq!(done.page_size_after, 16384);
    assert_eq!(state(), (16384, 0));
    assert_eq!(
        obm_gate::store::list(&config.path, &Filter::default()).unwrap(),
        rows
    );
}
