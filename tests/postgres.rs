//! The PostgreSQL backend against the real server on 127.0.0.1:5432 (database `test`, trust
//! auth; `.ci/run` starts it). Each test works in a schema of its own. A TCP proxy in front of
//! the database lets a test make it unreachable without stopping the shared server.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::process::*;
use common::tcp_proxy::Proxy;
use common::webhook::{Webhook, signature_verifies};
use common::*;

const PG: &str = "127.0.0.1:5432";

/// A fresh schema; returns the URL that works in it.
async fn schema(via: &str) -> String {
    let name = format!(
        "obm_t_{}",
        std::process::id() as u64 * 1_000_000 + rand_suffix()
    );
    let base = format!("postgres://root@{PG}/test");
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (.ci/run starts it)");
    tokio::spawn(conn);
    client
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
        &obm_gate::store::Backend::Postgres(url.clone()),
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
