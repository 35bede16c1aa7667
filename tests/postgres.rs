//! The PostgreSQL backend against the real server on 127.0.0.1:5432 (database `test`, trust
//! auth; `.ci/run` starts it). Each test works in a schema of its own. A TCP proxy in front of
//! the database lets a test make it unreachable without stopping the shared server. The tests of
//! what both backends must do alike (`both_backends`) run the SQLite file beside it.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::process::*;
use common::tcp_proxy::Proxy;
use common::webhook::{Webhook, signature_verifies};
use common::*;
use obm_gate::ids::{Fingerprint, OrgId};
use obm_gate::metrics::Metrics;
use obm_gate::store::{
    Filter, ForwardOutcome, ForwardState, ForwardUpdate, NewMessage, NewNotification, Store,
};

const PG: &str = "127.0.0.1:5432";

/// The test's own plain connection (the database's view, beside the receiver's): `url`, or
/// the database `test` when `None`.
async fn plain_client(url: Option<&str>) -> tokio_postgres::Client {
    let base = format!("postgres://root@{PG}/test");
    let (client, conn) = tokio_postgres::connect(url.unwrap_or(&base), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (.ci/run starts it)");
    tokio::spawn(conn);
    client
}

/// A fresh schema; returns the URL that works in it.
async fn schema(via: &str) -> String {
    let name = format!(
        "obm_t_{}",
        std::process::id() as u64 * 1_000_000 + rand_suffix()
    );
    plain_client(None)
        .await
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .unwrap();
    format!("postgres://root@{via}/test?options=-c%20search_path%3D{name}")
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        % 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acks_dedupes_group_commits_and_survives_an_outage() {
    let proxy = Proxy::start(PG).await;
    let url = schema(&proxy.addr.to_string()).await;
    let server = TestServer::start_with(|c, _| c.store.url = Some(url.clone())).await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "pg"));
    server.register(ORG_A, "pg", &id);
    let client = server.client(Some(&id));
    let filter = obm_gate::store::Filter::default();

    // Ack and dedupe.
    client.ack(ORG_A, &[nid(1), nid(2)]).await;
    client.ack(ORG_A15, &[nid(1)]).await;
    let stored = server.store().list(&filter).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].fields["LastName"], "Black");
    assert_eq!(server.state.metrics.notifications_duplicate.get(), 1);

    // Group commit: 200 senders over 20 connections share transactions.
    let before = server.store().commits();
    client.send_concurrently(ORG_A, 20, 10, 100).await;
    let commits = server.store().commits() - before;
    println!("PostgreSQL: 200 messages in {commits} group commits");
    assert!(commits < 200, "{commits}");
    assert_eq!(server.store().list(&filter).await.unwrap().len(), 202);

    // The database becomes unreachable: 503, no ack, not ready; healthz still answers.
    proxy.down();
    let reply = client.post(&message(ORG_A, &[nid(999)])).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        reply.faultstring().contains("PostgreSQL"),
        "{}",
        reply.faultstring()
    );
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 503);
    assert_eq!(admin_get(&server.state, "/healthz").await.0, 200);

    // It comes back: the retry is acknowledged without a restart.
    proxy.up();
    client.ack(ORG_A, &[nid(999)]).await;
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);
    assert_eq!(server.store().list(&filter).await.unwrap().len(), 203);
    server.stop().await;
}

/// `store compact` rewrites the SQLite file; with PostgreSQL configured it is a usage error that
/// says so (exit 64), and it creates no SQLite file.
#[tokio::test]
async fn store_compact_with_postgres_configured_is_a_usage_error() {
    let url = schema(PG).await;
    let dir = workdir();
    let out = tokio::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["store", "compact", "--config", "obm-gate.toml"])
        .env("OBM_GATE_STORE_URL", &url)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(obm_gate::cli::EXIT_CONFIG)),
        "{err}"
    );
    assert!(err.contains("applies to the SQLite store"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "compact created the SQLite store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receiver_processes_share_one_postgres_and_dedupe_across_them() {
    let url = schema(PG).await;
    let id = self_signed(Spec::new(Key::Rsa2048, "shared"));
    // Both processes read the same registry directory (distributed by config management).
    let (dirs, procs) = two_receivers(&id, &[("OBM_GATE_STORE_URL", url.as_str())]);
    assert_ne!(procs[0].addr.port(), procs[1].addr.port());
    let body = message(ORG_A, &[nid(1), nid(2)]);
    for (p, d) in procs.iter().zip(&dirs) {
        let client = Client::new(p.addr, &server_cert(d.path()), Some(&id), None);
        assert!(client.post(&body).await.unwrap().is_ack());
        client.ack(ORG_A, &[nid(3)]).await;
    }
    let out = tokio::process::Command::new(BIN)
        .current_dir(dirs[0].path())
        .args(["messages", "list", "--json", "--config", "obm-gate.toml"])
        .env("OBM_GATE_STORE_URL", &url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["notification_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        vec![nid(1), nid(2), nid(3)],
        "each notification stored once across both receivers"
    );
    for p in procs {
        p.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_sharing_postgres_forward_each_notification_once_in_order() {
    let url = schema(PG).await;
    let hook = Webhook::start().await;
    hook.fail_first(3);
    let id = self_signed(Spec::new(Key::Rsa2048, "fwd"));
    let secret = "shared-secret-0123456789";
    let env = [
        ("OBM_GATE_STORE_URL", url.as_str()),
        ("OBM_GATE_FORWARD_URL", hook.url.as_str()),
        ("OBM_GATE_FORWARD_SECRET", secret),
        ("OBM_GATE_FORWARD_INITIAL_BACKOFF", "20ms"),
        ("OBM_GATE_FORWARD_MAX_BACKOFF", "100ms"),
    ];
    let (dirs, procs) = two_receivers(&id, &env);
    // Alternate between the receivers, as a load balancer would; every message goes to one.
    let mut sent = Vec::new();
    for m in 0..20 {
        let (p, d) = (&procs[m % 2], &dirs[m % 2]);
        let client = Client::new(p.addr, &server_cert(d.path()), Some(&id), None);
        let ids = vec![nid(2 * m), nid(2 * m + 1)];
        client.ack(ORG_A, &ids).await;
        sent.extend(ids.into_iter().map(|n| format!("{ORG_A}/{n}")));
    }
    let expected: BTreeSet<String> = sent.iter().cloned().collect();
    eventually(
        "every notification forwarded",
        Duration::from_secs(20),
        || hook.delivered_ids().into_iter().collect::<BTreeSet<_>>() == expected,
    )
    .await;
    // One forwarder (the lock holder) delivers, in the order the database stored them.
    assert_eq!(hook.delivered_ids(), sent, "each once, in order");
    assert!(
        hook.received()
            .iter()
            .all(|r| signature_verifies(secret, &r.signature, &r.body))
    );
    let leaders = procs
        .iter()
        .filter(|p| p.logged("holds the forwarding lock"))
        .count();
    assert_eq!(leaders, 1, "exactly one receiver forwards");
    for p in procs {
        p.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_behind_an_l4_balancer_with_proxy_protocol_share_the_work_and_fail_over() {
    use common::tcp_proxy::Balancer;
    let url = schema(PG).await;
    let id = self_signed(Spec::new(Key::Rsa2048, "lb"));
    let env = [
        ("OBM_GATE_STORE_URL", url.as_str()),
        ("OBM_GATE_LISTEN_PROXY_PROTOCOL", "true"),
    ];
    let (dirs, [first, second]) = two_receivers(&id, &env);
    let lb = Balancer::start(vec![first.addr, second.addr]).await;
    let client = Client::new(lb.addr, &server_cert(dirs[0].path()), Some(&id), None);

    // Each post is a new connection: the balancer alternates.
    for n in 0..10 {
        client.ack(ORG_A, &[nid(n)]).await;
    }
    assert_eq!((lb.count(0), lb.count(1)), (5, 5));

    // One receiver dies: new connections go to the other; nothing is refused.
    second.kill();
    for n in 10..20 {
        client.ack(ORG_A, &[nid(n)]).await;
    }
    assert_eq!(lb.count(1), 5);
    let stored = obm_gate::store::list_backend(
        &obm_gate::store::Backend::Postgres(
            obm_gate::store::postgres::Target::new(&url, &[]).unwrap(),
        ),
        &Default::default(),
    )
    .await
    .unwrap();
    let ids: Vec<String> = stored.into_iter().map(|n| n.notification_id).collect();
    assert_eq!(ids, (0..20).map(nid).collect::<Vec<_>>());
    first.kill();
}

/// Two receiver processes, each in its own working directory, as config management would set
/// them up: the same registry (`id` registered to ORG_A) and the same server certificate.
fn two_receivers(id: &Identity, env: &[(&str, &str)]) -> ([tempfile::TempDir; 2], [Proc; 2]) {
    let dirs = [workdir(), workdir()];
    for d in &dirs {
        write_registered(&d.path().join("certs/orgs"), ORG_A, "shared", id);
    }
    let first = Proc::start_with_env(dirs[0].path(), env);
    copy_dir(
        &dirs[0].path().join("certs/server"),
        &dirs[1].path().join("certs/server"),
    );
    let second = Proc::start_with_env(dirs[1].path(), env);
    (dirs, [first, second])
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The store's configuration for each backend: a SQLite file in `dir`, and a fresh PostgreSQL
/// schema. For tests of what both must do alike, through the store's own interface.
async fn both_backends(dir: &tempfile::TempDir) -> [(&'static str, obm_gate::config::Store); 2] {
    let mut sqlite = obm_gate::Config::default().store;
    sqlite.path = dir.path().join("obm-gate.db");
    let mut postgres = obm_gate::Config::default().store;
    postgres.url = Some(schema(PG).await);
    [("SQLite", sqlite), ("PostgreSQL", postgres)]
}

/// A group commit that holds several copies of one notification stores it once, from the copy
/// of the message that came first, and credits that message alone. Both backends, through the
/// store's own interface: 64 messages sent at once, each with its own action ID, all carrying
/// notification A (the first twice) and each its own B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_notification_in_one_group_commit_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, config) in both_backends(&dir).await {
        let store = Arc::new(
            Store::open(&config, false, Arc::new(Metrics::new()))
                .await
                .unwrap(),
        );
        let org = OrgId::parse(ORG_A).unwrap();
        let fields = [("Id", "003xx000004TmiQAAS")];
        let mut tasks = tokio::task::JoinSet::new();
        for m in 0..64u64 {
            let mut ids = vec![nid(1), nid(1000 + m as usize)];
            if m == 0 {
                ids.insert(0, nid(1));
            }
            let message = NewMessage {
                org,
                action_id: format!("04kxx{m:010}AAA"),
                certificate: Fingerprint::of_der(b"copies"),
                peer: "127.0.0.1:1".into(),
                notifications: ids
                    .iter()
                    .map(|id| NewNotification::new(id, "Contact", &fields))
                    .collect(),
            };
            let store = store.clone();
            tasks.spawn(async move { (message.action_id.clone(), store.commit(message).await) });
        }
        let mut credited = Vec::new();
        let (mut stored, mut duplicates) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            let (action, committed) = joined.unwrap();
            let committed = committed.unwrap();
            stored += committed.stored;
            duplicates += committed.duplicates;
            if committed.stored == 2 {
                credited.push(action);
            }
        }
        assert!(
            store.commits() < 64,
            "{backend}: every message had a commit of its own ({}), so no commit held copies",
            store.commits()
        );
        assert_eq!((stored, duplicates), (65, 64), "{backend}");
        let rows = store.list(&Filter::default()).await.unwrap();
        assert_eq!(rows.len(), 65, "{backend}");
        let a: Vec<_> = rows
            .iter()
            .filter(|r| r.notification_id == nid(1))
            .collect();
        assert_eq!(a.len(), 1, "{backend}");
        assert_eq!(
            credited,
            [a[0].action_id.clone()],
            "{backend}: credited {credited:?}"
        );
    }
}

/// Webhook results recorded together for one notification leave the last of them, on both
/// backends (the PostgreSQL writer sends a batch's results as one statement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_of_several_webhook_results_for_a_notification_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, config) in both_backends(&dir).await {
        let store = Store::open(&config, true, Arc::new(Metrics::new()))
            .await
            .unwrap();
        let message = NewMessage {
            org: OrgId::parse(ORG_A).unwrap(),
            action_id: "04kxx00000000blCAA".into(),
            certificate: Fingerprint::of_der(b"results"),
            peer: "127.0.0.1:1".into(),
            notifications: vec![
                NewNotification::new(&nid(1), "Contact", &[("Id", "003xx000004TmiQAAS")]),
                NewNotification::new(&nid(2), "Contact", &[("Id", "003xx000004TmiRAAS")]),
            ],
        };
        assert_eq!(store.commit(message).await.unwrap().stored, 2, "{backend}");
        let rows = store.list(&Filter::default()).await.unwrap();
        let (first, second) = (rows[0].seq, rows[1].seq);
        let retry = |seq, attempts| ForwardUpdate {
            seq,
            attempts,
            outcome: ForwardOutcome::Retry {
                next_attempt_ms: 1,
                error: format!("attempt {attempts}"),
            },
        };
        let dead = |seq, attempts| ForwardUpdate {
            seq,
            attempts,
            outcome: ForwardOutcome::Dead {
                error: format!("gave up after {attempts}"),
            },
        };
        // Interleaved: the first notification ends dead, the second pending again.
        let updates = vec![
            retry(first, 1),
            dead(second, 2),
            dead(first, 3),
            retry(second, 3),
        ];
        store.record_forward(updates).await.unwrap();
        let rows = store.list(&Filter::default()).await.unwrap();
        let state = |i: usize| {
            let f = rows[i].forward.clone().unwrap();
            (f.state, f.attempts, f.last_error.unwrap_or_default())
        };
        let dead_after_3 = (ForwardState::Dead, 3, "gave up after 3".to_owned());
        assert_eq!(state(0), dead_after_3, "{backend}");
        assert_eq!(
            state(1),
            (ForwardState::Pending, 3, "attempt 3".into()),
            "{backend}"
        );
    }
}

/// The forwarding backlog counts every org waiting, also those past the limit of one read of
/// the queue: three orgs, a read of one. The org queued first, then backed off for an hour, is
/// not read (the soonest due comes first), and its head is still the oldest. The forwarder's
/// gauges used to come from the heads it read, so past 1,024 orgs they read low in exactly the
/// outage they are there to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarding_backlog_counts_every_org_waiting_past_the_limit_of_a_read() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, config) in both_backends(&dir).await {
        let store = Store::open(&config, true, Arc::new(Metrics::new()))
            .await
            .unwrap();
        let mut reader = store.forward_reader();
        let org = |n: usize| OrgId::parse(&format!("00Dxx{n:010}")).unwrap();
        let commit = |n: usize| {
            let mut message = wide_message(10 * n, 2, 1);
            message.org = org(n);
            store.commit(message)
        };
        commit(1).await.unwrap();
        let first = reader.heads(10).await.unwrap().heads.remove(0);
        // The other orgs are queued at a later millisecond than the first.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while obm_gate::store::now_ms() <= first.queued_ms {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock stands still"
            );
            std::hint::spin_loop();
        }
        commit(2).await.unwrap();
        commit(3).await.unwrap();
        let backed_off = ForwardUpdate {
            seq: first.seq,
            attempts: 1,
            outcome: ForwardOutcome::Retry {
                next_attempt_ms: obm_gate::store::now_ms() + 3_600_000,
                error: "503".into(),
            },
        };
        store.record_forward(vec![backed_off]).await.unwrap();

        let read = reader.heads(1).await.unwrap();
        assert_eq!(read.heads.len(), 1, "{backend}");
        assert_ne!(
            read.heads[0].org_id,
            org(1).as_str(),
            "{backend}: soonest due first"
        );
        assert_eq!(read.orgs, 3, "{backend}: every org waiting");
        assert_eq!(
            read.oldest_queued_ms,
            Some(first.queued_ms),
            "{backend}: the oldest head is the backed-off org's, which was not read"
        );
        store.shutdown().await;
    }
}

/// Makes the notifications `ids` look received in 2020, in either backend.
async fn backdate(config: &obm_gate::config::Store, ids: &[String]) {
    let Some(url) = &config.url else {
        return received_in_2020(&config.path, ids);
    };
    let client = plain_client(Some(url)).await;
    let sql = "UPDATE obm_notifications SET received_at = $1 WHERE notification_id = ANY($2)";
    let aged = client.execute(sql, &[&IN_2020, &ids]).await.unwrap();
    assert_eq!(aged, ids.len() as u64);
}

/// Retention on both backends, through the store's own interface: what was received before
/// the cutoff goes, with its webhook row, delivered or dead; one still pending for the webhook
/// stays, and so does what was received after the cutoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_what_was_received_before_the_cutoff_but_not_what_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    for (backend, config) in both_backends(&dir).await {
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(&config, true, metrics.clone()).await.unwrap();
        for i in 1..=4 {
            store.commit(wide_message(i, 1, 10)).await.unwrap();
        }
        let rows = store.list(&Filter::default()).await.unwrap();
        let update = |i: usize, outcome| ForwardUpdate {
            seq: rows[i].seq,
            attempts: 1,
            outcome,
        };
        let gone = ForwardOutcome::Dead {
            error: "410 Gone".into(),
        };
        let updates = vec![
            update(0, ForwardOutcome::Delivered),
            update(1, gone),
            update(3, ForwardOutcome::Delivered),
        ];
        store.record_forward(updates).await.unwrap();
        store.shutdown().await;
        drop(store);
        backdate(&config, &[nid(1), nid(2), nid(3), nid(4)]).await;

        let store = Store::open(&config, true, metrics.clone()).await.unwrap();
        store.commit(wide_message(5, 1, 10)).await.unwrap();
        let day_ago = std::time::SystemTime::now() - Duration::from_secs(24 * 3600);
        assert_eq!(store.prune(day_ago).await.unwrap(), 3, "{backend}");
        let rows = store.list(&Filter::default()).await.unwrap();
        let kept: Vec<_> = rows.iter().map(|r| r.notification_id.clone()).collect();
        assert_eq!(kept, [nid(3), nid(5)], "{backend}");
        let pending = rows[0].forward.as_ref().map(|f| f.state);
        assert_eq!(pending, Some(ForwardState::Pending), "{backend}");
        assert_eq!(metrics.notifications_pruned.get(), 3, "{backend}");
        assert_eq!(store.prune(day_ago).await.unwrap(), 0, "{backend}");
        // A cutoff before 1970 (a retention longer than the clock's past) deletes nothing.
        let before_1970 = std::time::UNIX_EPOCH - Duration::from_secs(24 * 3600);
        assert_eq!(store.prune(before_1970).await.unwrap(), 0, "{backend}");
        store.shutdown().await;
    }
}

/// Two deployments kept apart by schema in one database (`search_path`, as BENCHMARKS.md's
/// PostgreSQL runs do) each forward their own queue. The forwarding lock is one per queue table:
/// with one per database, the first deployment's forwarder held it and the second's stood by
/// for good, its notifications pending with nothing in the log but "stand by".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_in_two_schemas_of_one_database_each_forward_their_own_queue() {
    let mut held = Vec::new();
    for i in 1..=2 {
        let mut config = obm_gate::Config::default().store;
        config.url = Some(schema(PG).await);
        let store = Store::open(&config, true, Arc::new(Metrics::new()))
            .await
            .unwrap();
        store.commit(wide_message(i, 1, 1)).await.unwrap();
        let mut reader = store.forward_reader();
        let heads = reader.heads(10).await.unwrap();
        let ids: Vec<_> = heads
            .heads
            .iter()
            .map(|h| h.notification_id.clone())
            .collect();
        assert_eq!(ids, [nid(i)], "deployment {i} reads its own queue");
        // The reader's session keeps its lock while the next deployment asks for its own.
        held.push((store, reader));
    }
    for (store, _) in held {
        store.shutdown().await;
    }
}

/// The PostgreSQL server's own certificate (`ssl_cert_file`, which `.ci/run` makes sure is
/// on) and a DNS name it holds.
async fn postgres_server_certificate() -> (std::path::PathBuf, String) {
    let client = plain_client(None).await;
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one(&format!("SHOW {name}"), &[]).await;
            row.unwrap().get::<_, String>(0)
        }
    };
    assert_eq!(
        setting("ssl").await,
        "on",
        "PostgreSQL has TLS on (.ci/run turns it on)"
    );
    let path = std::path::PathBuf::from(setting("ssl_cert_file").await);
    let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let name = cert
        .subject_alternative_name()
        .unwrap()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        })
        .expect("PostgreSQL's certificate names a DNS host");
    (path, name)
}

/// With `sslmode=require` in `[store] url` the store reaches PostgreSQL over TLS, having checked
/// its certificate against `[store] ca_certificates` and its name against the URL's host. A
/// certificate it cannot check, or one for another name, stops the store from opening, and the
/// error says what to change; so does a CA list with a URL that would not use TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reaches_postgres_over_tls_and_checks_its_certificate() {
    let (ca, name) = postgres_server_certificate().await;
    let plain = schema(PG).await;
    let app = format!("obm_tls_{}_{}", std::process::id(), rand_suffix());
    // The certificate's name as host (what TLS checks), 127.0.0.1 as the address to dial.
    let url = plain.replacen(PG, &format!("{name}:5432"), 1)
        + &format!("&hostaddr=127.0.0.1&sslmode=require&application_name={app}");

    let server = TestServer::start_with(|c, _| {
        c.store.url = Some(url.clone());
        c.store.ca_certificates = vec![ca.clone()];
    })
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "pg-tls"));
    server.register(ORG_A, "pg-tls", &id);
    server.client(Some(&id)).ack(ORG_A, &[nid(1)]).await;
    let stored = server.store().list(&Filter::default()).await.unwrap();
    assert_eq!(stored.len(), 1);
    // PostgreSQL's own view of the receiver's sessions: every one is TLS.
    let row = plain_client(None)
        .await
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false), min(s.version)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    let (sessions, all_tls): (i64, bool) = (row.get(0), row.get(1));
    assert!(sessions >= 1, "the receiver's sessions: {sessions}");
    assert!(all_tls, "every session of the receiver is TLS");
    println!(
        "{sessions} TLS sessions, {:?}",
        row.get::<_, Option<String>>(2)
    );
    server.stop().await;

    let open = |url: String, cas: Vec<std::path::PathBuf>| async move {
        let mut config = obm_gate::Config::default().store;
        config.url = Some(url);
        config.ca_certificates = cas;
        let error = Store::open(&config, false, Arc::new(Metrics::new()))
            .await
            .err()
            .map(|e| e.to_string());
        println!("{error:?}");
        error
    };
    // Without the CA: the public roots do not vouch for this server.
    let error = open(url.clone(), vec![])
        .await
        .expect("an unchecked server");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(error.contains("ca_certificates"), "{error}");
    // Dialled by address: the certificate does not hold 127.0.0.1.
    let by_address = url.replacen(&format!("{name}:5432"), PG, 1);
    let error = open(by_address, vec![ca.clone()])
        .await
        .expect("a certificate for another name");
    assert!(error.contains("does not name the URL's host"), "{error}");
    // CAs with a URL that would not use TLS: refused, not ignored.
    let error = open(plain, vec![ca]).await.expect("CAs that check nothing");
    assert!(error.contains("sslmode=require"), "{error}");
}
