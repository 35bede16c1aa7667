//! JetStream publishing against the real NATS server on 127.0.0.1:4222 (`.ci/run` starts it).
//! Each test uses a stream and subject of its own. A TCP proxy in front of NATS lets a test make
//! it unreachable without stopping the shared server.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use common::tcp_proxy::Proxy;
use common::*;
use obm_gate::config::JetStreamMode;

const NATS: &str = "127.0.0.1:4222";

/// A unique stream name and subject for one test.
fn names(test: &str) -> (String, String) {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    let tag = format!("{test}_{}_{n}", std::process::id());
    (format!("OBM_T_{tag}"), format!("obmtest.{tag}"))
}

async fn context() -> jetstream::Context {
    let client = async_nats::connect(NATS)
        .await
        .expect("NATS with JetStream on 127.0.0.1:4222 (.ci/run starts it)");
    jetstream::new(client)
}

/// Every message in the stream: `Nats-Msg-Id` → (subject, JSON document), failing on an ID
/// seen twice.
async fn stream_contents(stream: &str) -> BTreeMap<String, (String, serde_json::Value)> {
    let js = context().await;
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = BTreeMap::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in first..=last {
        let m = s.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .expect("every message has Nats-Msg-Id")
            .to_string();
        let doc: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let previous = out.insert(id.clone(), (m.subject.to_string(), doc));
        assert!(previous.is_none(), "{id} is in the stream twice");
    }
    out
}

/// Posts until acknowledged, like Salesforce retrying, within a deadline.
async fn post_until_ack(client: &Client, body: &[u8]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut refusals = 0;
    loop {
        match client.post(body).await {
            Ok(r) if r.is_ack() => return refusals,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never acknowledged: {other:?}"
                );
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_notification_is_in_the_stream_exactly_once() {
    let proxy = Proxy::start(NATS).await;
    let (stream, subject) = names("once");
    let id = self_signed(Spec::new(Key::Rsa2048, "js"));
    let configure = |c: &mut obm_gate::Config| {
        c.jetstream.url = Some(format!("nats://{}", proxy.addr));
        c.jetstream.stream = stream.clone();
        c.jetstream.subject = subject.clone();
        c.jetstream.publish_timeout = Duration::from_secs(2);
    };
    // The store outlives the first server, so the restart below reopens it.
    let data = tempfile::tempdir().unwrap();
    let store_path = data.path().join("obm-gate.db");
    let server = TestServer::start_with(|c, _| {
        configure(c);
        c.store.path = store_path.clone();
    })
    .await;
    server.register(ORG_A, "js", &id);
    let client = server.client(Some(&id));

    // Redeliveries: the same message three times, once with the 15-character org.
    let first = message(ORG_A, &[nid(1), nid(2)]);
    for _ in 0..2 {
        assert!(client.post(&first).await.unwrap().is_ack());
    }
    client.ack(ORG_A15, &[nid(2), nid(3)]).await;
    let stored = metric(
        &admin_get(&server.state, "/metrics").await.1,
        "obm_gate_jetstream_published_total{outcome=\"stored\"}",
    );
    assert_eq!(stored, 3.0);

    // A restart of the receiver (same store, same stream), then the same messages again.
    server.stop().await;
    let server = TestServer::start_with(|c, _| {
        configure(c);
        c.store.path = store_path.clone();
    })
    .await;
    assert_eq!(server.stored().len(), 3, "the same store, reopened");
    server.register(ORG_A, "js", &id);
    let client = server.client(Some(&id));
    assert!(client.post(&first).await.unwrap().is_ack());
    client.ack(ORG_A, &[nid(4)]).await;

    // NATS unreachable: stored locally, but not acknowledged.
    proxy.down();
    let fifth = message(ORG_A, &[nid(5)]);
    let reply = client.post(&fifth).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        reply.faultstring().contains("JetStream"),
        "{}",
        reply.faultstring()
    );
    assert!(
        server.stored().iter().any(|n| n.notification_id == nid(5)),
        "after_store: the store committed first"
    );

    // NATS back: Salesforce's retry is published (the store calls it a duplicate) and acked.
    proxy.up();
    post_until_ack(&client, &fifth).await;

    let contents = stream_contents(&stream).await;
    let expected: Vec<String> = (1..=5).map(|n| format!("{ORG_A}/{}", nid(n))).collect();
    assert_eq!(contents.keys().cloned().collect::<Vec<_>>(), expected);
    let (subj, doc) = &contents[&expected[0]];
    assert_eq!(subj, &format!("{subject}.{ORG_A}"));
    assert_eq!(doc["org_id"], ORG_A);
    assert_eq!(doc["notification_id"], nid(1));
    assert_eq!(doc["object_type"], "Contact");
    assert_eq!(doc["fields"]["LastName"], "Black");
    assert_eq!(doc["certificate_sha256"], id.fingerprint());
    assert!(doc["record_id"].is_string(), "{doc}");
    server.stop().await;
    context().await.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_only_mode_keeps_no_local_store_and_refuses_without_nats() {
    let proxy = Proxy::start(NATS).await;
    let (stream, subject) = names("only");
    let id = self_signed(Spec::new(Key::EcdsaP256, "stateless"));
    let server = TestServer::start_with(|c, _| {
        c.jetstream.url = Some(format!("nats://{}", proxy.addr));
        c.jetstream.stream = stream.clone();
        c.jetstream.subject = subject.clone();
        c.jetstream.mode = JetStreamMode::Only;
        c.jetstream.publish_timeout = Duration::from_secs(2);
    })
    .await;
    assert!(server.state.store.is_none());
    server.register(ORG_A, "s", &id);
    let client = server.client(Some(&id));
    let body = message(ORG_A, &[nid(1), nid(2)]);
    assert!(client.post(&body).await.unwrap().is_ack());
    assert!(client.post(&body).await.unwrap().is_ack());
    let metrics = admin_get(&server.state, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "obm_gate_jetstream_published_total{outcome=\"duplicate\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "obm_gate_requests_total{status=\"200\",reason=\"duplicate\"}"
        ),
        1.0
    );
    assert!(
        !server.dir.path().join("data").exists(),
        "no SQLite file in JetStream-only mode"
    );
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);

    proxy.down();
    let reply = client.post(&message(ORG_A, &[nid(3)])).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.faultstring().contains("not acknowledged"));
    let readyz = admin_get(&server.state, "/readyz").await;
    assert_eq!(readyz.0, 503, "not ready without NATS: {readyz:?}");
    assert!(readyz.1.contains("NATS"), "{readyz:?}");
    proxy.up();
    post_until_ack(&client, &message(ORG_A, &[nid(3)])).await;
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);
    assert_eq!(stream_contents(&stream).await.len(), 3);
    server.stop().await;
    context().await.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn an_existing_stream_is_checked_not_changed() {
    let (stream, subject) = names("check");
    let js = context().await;
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{subject}.*")],
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("orgs")).unwrap();
    let mut config = test_config(dir.path());
    config.jetstream.url = Some(format!("nats://{NATS}"));
    config.jetstream.stream = stream.clone();
    config.jetstream.subject = subject.clone();
    let err = obm_gate::Server::start(config.clone())
        .await
        .err()
        .expect("a one-minute duplicate window is refused")
        .to_string();
    assert!(err.contains("duplicate window is 1m"), "{err}");

    // Another subject than the stream captures: refused with both named.
    config.jetstream.subject = format!("{subject}x");
    config.jetstream.duplicate_window = Duration::from_secs(30);
    let err = obm_gate::Server::start(config)
        .await
        .err()
        .expect("a stream without our subject is refused")
        .to_string();
    assert!(err.contains(&format!("{subject}x.*")), "{err}");
    // Checked, not changed: the stream is as it was created.
    let info = js
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.duplicate_window, Duration::from_secs(60));
    assert_eq!(info.subjects, vec![format!("{subject}.*")]);
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn nats_down_at_start_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("orgs")).unwrap();
    let mut config = test_config(dir.path());
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    config.jetstream.url = Some(format!("nats://{addr}"));
    let err = obm_gate::Server::start(config)
        .await
        .err()
        .expect("no NATS, no start")
        .to_string();
    assert!(err.contains("cannot connect to NATS"), "{err}");
}
