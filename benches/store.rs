//! The store's acknowledgments per second against batch size: `b` messages with new IDs
//! committed at once, so the writer's group commit takes them in one transaction with one fsync
//! (SQLite, WAL, synchronous=FULL, on this machine's disk). Two shapes: one small notification
//! per message (`store_acks`, scenario (c)), and 100 Contact notifications per message of about
//! 60 KB of SOAP (`store_wide`, scenario (d); throughput counts notifications).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use obm_gate::ids::{Fingerprint, OrgId};
use obm_gate::metrics::Metrics;
use obm_gate::store::{NewMessage, NewNotification, Store};

const SMALL: &[(&str, &str)] = &[("Id", "003xx000004TmiQAAS"), ("LastName", "Black")];
/// The fields of `bench/loadgen.rs`'s Contact, as the parser hands them over.
const CONTACT: &[(&str, &str)] = &[
    ("Id", "003xx000004TmiQAAS"),
    ("AccountId", "001xx000003DGb2AAG"),
    ("Email", "contact123456@example.com"),
    ("FirstName", "Jane"),
    ("LastName", "Black & White"),
    ("MailingCity", "San Francisco"),
    ("MailingStreet", "415 Mission Street"),
    ("Phone", "+1 415 555 0100"),
    ("Title", "Director of Integrations"),
];

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = obm_gate::Config::default().store;
    config.path = dir.path().join("bench.db");
    let store = Arc::new(
        rt.block_on(Store::open(&config, false, Arc::new(Metrics::new())))
            .unwrap(),
    );
    let org = OrgId::parse("00Dxx0000001gPFEAY").unwrap();
    let mut next = 0u64;
    let mut message = |notifications: usize, fields: &[(&str, &str)]| NewMessage {
        org,
        action_id: "04kxx00000000blCAA".into(),
        certificate: Fingerprint::of_der(b"bench"),
        peer: "127.0.0.1:1".into(),
        notifications: (0..notifications)
            .map(|_| {
                next += 1;
                NewNotification::new(&format!("04l{next:015}"), "Contact", fields)
            })
            .collect(),
    };
    // `batch` messages of `notifications` each, committed concurrently; the time of the commits.
    let mut run = |batch: usize, notifications: usize, fields: &[(&str, &str)]| {
        let messages: Vec<NewMessage> =
            (0..batch).map(|_| message(notifications, fields)).collect();
        let t = Instant::now();
        rt.block_on(async {
            let commits: Vec<_> = messages
                .into_iter()
                .map(|m| {
                    let s = store.clone();
                    tokio::spawn(async move { s.commit(m).await.unwrap() })
                })
                .collect();
            for c in commits {
                assert_eq!(c.await.unwrap().stored, notifications);
            }
        });
        t.elapsed()
    };

    let mut g = c.benchmark_group("store_acks");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    for batch in [1usize, 8, 64, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_custom(|iters| (0..iters).map(|_| run(batch, 1, SMALL)).sum())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("store_wide");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    for batch in [1usize, 16] {
        g.throughput(Throughput::Elements(100 * batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_custom(|iters| (0..iters).map(|_| run(batch, 100, CONTACT)).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
