//! Webhook forwarding from the store: a local endpoint that fails, holds or answers, the real
//! receiver in front of it, and the real CLI for dead letters and replay.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::process::*;
use common::webhook::{Answer, Webhook, WebhookTls, signature_verifies};
use common::*;
use obm_gate::store::{Filter, ForwardState};

const SECRET: &str = "test-secret-0123456789";

fn forward_to(c: &mut obm_gate::Config, hook: &Webhook) {
    c.forward.url = Some(hook.url.clone());
    c.forward.secret = obm_gate::config::Secret(SECRET.into());
    c.forward.initial_backoff = Duration::from_millis(20);
    c.forward.max_backoff = Duration::from_millis(100);
    c.forward.timeout = Duration::from_secs(2);
}

/// Stored notifications of `org`, in the order they were stored.
fn stored_order(server: &TestServer, org: &str) -> Vec<String> {
    server
        .stored()
        .into_iter()
        .filter(|n| n.org_id == org)
        .map(|n| format!("{org}/{}", n.notification_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notification_reaches_a_failing_webhook_signed_and_in_order_per_org() {
    let hook = Webhook::start().await;
    hook.fail_first(7);
    let server = TestServer::start_with(|c, _| {
        forward_to(c, &hook);
        c.forward.concurrency = 2;
    })
    .await;
    let (a, b) = (
        self_signed(Spec::new(Key::Rsa2048, "a")),
        self_signed(Spec::new(Key::EcdsaP256, "b")),
    );
    server.register(ORG_A, "a", &a);
    server.register(ORG_B, "b", &b);

    // Two orgs send at once, each message with one to three notifications.
    let mut tasks = Vec::new();
    for (org, id, base) in [(ORG_A, &a, 0), (ORG_B, &b, 1000)] {
        let client = server.client(Some(id));
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            let mut n = base;
            for m in 0..15 {
                let ids: Vec<String> = (0..=(m % 3)).map(|k| nid(n + k)).collect();
                n += ids.len();
                conn.ack(org, &ids).await;
            }
            n - base
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }

    eventually(
        "every notification delivered",
        Duration::from_secs(20),
        || hook.delivered_ids().iter().collect::<BTreeSet<_>>().len() == sent,
    )
    .await;
    // The endpoint counts a delivery when it answers; the forwarder records it after the answer.
    until_listed(&server, ForwardState::Delivered, sent).await;
    let received = hook.received();
    assert!(
        received.iter().filter(|r| !r.ok).count() >= 7,
        "the failures were retried"
    );
    for r in &received {
        assert!(
            signature_verifies(SECRET, &r.signature, &r.body),
            "signature of {}: {}",
            r.id,
            r.signature
        );
        let doc = r.json();
        assert_eq!(
            r.id,
            format!(
                "{}/{}",
                doc["org_id"].as_str().unwrap(),
                doc["notification_id"].as_str().unwrap()
            )
        );
        assert_eq!(doc["object_type"], "Contact");
        assert_eq!(doc["record_id"], "003xx000004TmiQAAS");
        assert!(doc["received_at"].is_string() && doc["certificate_sha256"].is_string());
    }
    assert!(!signature_verifies(
        "another-secret-0123",
        &received[0].signature,
        &received[0].body
    ));

    // Per org, the accepted deliveries come in the order the notifications were stored.
    let delivered = hook.delivered_ids();
    for org in [ORG_A, ORG_B] {
        let got: Vec<String> = delivered
            .iter()
            .filter(|id| id.starts_with(org))
            .cloned()
            .collect();
        assert_eq!(got, stored_order(&server, org), "order of {org}");
    }
    // The store says delivered for every one.
    let filter = Filter {
        state: Some(ForwardState::Delivered),
        ..Filter::default()
    };
    let listed = server.store().list(&filter).await.unwrap();
    assert_eq!(listed.len(), sent);
    let metrics = admin_get(&server.state, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "obm_gate_forward_attempts_total{outcome=\"delivered\"}"
        ),
        sent as f64
    );
    server.stop().await;
}

/// Waits (up to 10 s) until the store lists `n` notifications in `state`.
async fn until_listed(server: &TestServer, state: ForwardState, n: usize) {
    let filter = Filter {
        state: Some(state),
        ..Filter::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.store().list(&filter).await.unwrap().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} not {} in time",
            state.as_str()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `obm-gate messages …` against the test server's store.
async fn cli(server: &TestServer, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(BIN)
        .args(["messages"])
        .args(args)
        .env("OBM_GATE_STORE_PATH", server.store().path())
        .env("OBM_GATE_FORWARD_URL", "http://127.0.0.1:9/unused")
        .env("OBM_GATE_FORWARD_SECRET", SECRET)
        .current_dir(server.dir.path())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed() {
    let hook = Webhook::start().await;
    hook.answer(Answer::Fail(503));
    let server = TestServer::start_with(|c, _| {
        forward_to(c, &hook);
        c.forward.max_attempts = 3;
    })
    .await;
    let id = self_signed(Spec::new(Key::Rsa2048, "dl"));
    server.register(ORG_A, "dl", &id);
    server.register(ORG_B, "dl", &id);
    let client = server.client(Some(&id));
    client.ack(ORG_A, &[nid(1), nid(2)]).await;

    // Three attempts each, then dead; a dead head does not block the org's next one.
    until_listed(&server, ForwardState::Dead, 2).await;
    assert_eq!(hook.received().len(), 6, "3 attempts × 2 notifications");
    let (ok, listed) = cli(&server, &["list", "--state", "dead", "--json"]).await;
    assert!(ok, "{listed}");
    let rows: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(rows[0]["forward"]["state"], "dead");
    assert_eq!(rows[0]["forward"]["attempts"], 3);
    assert!(
        rows[0]["forward"]["last_error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{listed}"
    );

    // The endpoint recovers; replay one by ID, then the rest of the org.
    hook.answer(Answer::Ok);
    let (ok, out) = cli(&server, &["replay", &nid(2)]).await;
    assert!(ok, "{out}");
    assert!(out.contains("queued 1"), "{out}");
    eventually("the replayed one delivered", Duration::from_secs(5), || {
        hook.delivered_ids() == vec![format!("{ORG_A}/{}", nid(2))]
    })
    .await;
    let (ok, out) = cli(&server, &["replay", "--org", ORG_A, "--state", "dead"]).await;
    assert!(ok, "{out}");
    eventually(
        "the org's dead letters delivered",
        Duration::from_secs(5),
        || hook.delivered_ids().len() == 2,
    )
    .await;
    let (ok, out) = cli(&server, &["replay", "--org", ORG_A]).await;
    assert!(!ok, "nothing left to replay: {out}");
    assert!(out.contains("nothing to replay"), "{out}");
    let (ok, out) = cli(&server, &["replay", "--org", ORG_A, "--state", "gone"]).await;
    assert!(!ok && out.contains("--state"), "{out}");
    server.stop().await;
}

/// While the endpoint fails, `/metrics` shows the backlog: the orgs waiting, and how long the
/// longest-waiting org's next notification has been queued (the oldest head, not the newest);
/// once the endpoint recovers, both are 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_backlog_is_in_the_metrics_until_the_endpoint_recovers() {
    let hook = Webhook::start().await;
    hook.answer(Answer::Fail(503));
    let server = TestServer::start_with(|c, _| {
        forward_to(c, &hook);
        c.forward.max_attempts = 1000;
    })
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "backlog"));
    server.register(ORG_A, "backlog", &id);
    server.register(ORG_B, "backlog", &id);
    let client = server.client(Some(&id));
    // (orgs waiting, seconds the oldest head has waited), once one of them satisfies `done`.
    let backlog_until = |what: &'static str, done: fn(f64, f64) -> bool| {
        let state = server.state.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let (_, text) = admin_get(&state, "/metrics").await;
                let seen = (
                    metric(&text, "obm_gate_forward_pending_orgs"),
                    metric(&text, "obm_gate_forward_oldest_pending_seconds"),
                );
                if done(seen.0, seen.1) {
                    return seen;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out waiting for {what}; last seen {seen:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    client.ack(ORG_A, &[nid(1), nid(2)]).await;
    backlog_until("org A's head a second old", |orgs, age| {
        orgs == 1.0 && age >= 1.0
    })
    .await;
    // A second org's head, queued now, does not make the backlog look younger.
    client.ack(ORG_B, &[nid(3)]).await;
    let (_, age) = backlog_until("two orgs waiting", |orgs, _| orgs == 2.0).await;
    assert!(
        age >= 1.0,
        "the oldest head's age, not the newest's: {age} s"
    );

    hook.answer(Answer::Ok);
    backlog_until("an empty backlog", |orgs, age| orgs == 0.0 && age == 0.0).await;
    assert_eq!(hook.delivered_ids().len(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_older_than_max_age_is_dead_lettered_after_one_failure() {
    let hook = Webhook::start().await;
    hook.answer(Answer::Fail(500));
    let server = TestServer::start_with(|c, _| {
        forward_to(c, &hook);
        c.forward.max_attempts = 1000;
        c.forward.max_age = Duration::from_millis(1);
    })
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "age"));
    server.register(ORG_B, "age", &id);
    let client = server.client(Some(&id));
    client.ack(ORG_B, &[nid(7)]).await;
    until_listed(&server, ForwardState::Dead, 1).await;
    assert_eq!(hook.received().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_forward_loses_nothing_and_repeats_only_the_same_ids() {
    let hook = Webhook::start().await;
    let dir = workdir();
    let id = self_signed(Spec::new(Key::Rsa2048, "k9"));
    write_registered(&dir.path().join("certs/orgs"), ORG_A, "k9", &id);
    let env = [
        ("OBM_GATE_FORWARD_URL", hook.url.as_str()),
        ("OBM_GATE_FORWARD_SECRET", SECRET),
        ("OBM_GATE_FORWARD_INITIAL_BACKOFF", "20ms"),
        ("OBM_GATE_FORWARD_MAX_BACKOFF", "100ms"),
    ];
    // The endpoint takes requests but does not answer: the receiver dies with one in flight.
    hook.answer(Answer::Hold);
    let proc = Proc::start_with_env(dir.path(), &env);
    let client = Client::new(proc.addr, &server_cert(dir.path()), Some(&id), None);
    let sent: Vec<String> = (1..=20).map(nid).collect();
    for chunk in sent.chunks(4) {
        client.ack(ORG_A, chunk).await;
    }
    eventually("a delivery in flight", Duration::from_secs(10), || {
        hook.in_flight() == 1
    })
    .await;
    proc.kill();
    hook.answer(Answer::Ok);
    let held = hook.received();
    assert_eq!(held.len(), 1, "one org: one attempt in flight");

    let proc = Proc::start_with_env(dir.path(), &env);
    let expected: BTreeSet<String> = sent.iter().map(|n| format!("{ORG_A}/{n}")).collect();
    eventually(
        "everything delivered after the restart",
        Duration::from_secs(20),
        || hook.delivered_ids().into_iter().collect::<BTreeSet<_>>() == expected,
    )
    .await;
    let mut bodies: BTreeMap<String, Vec<bytes::Bytes>> = BTreeMap::new();
    for r in hook.received() {
        assert!(expected.contains(&r.id), "unexpected {}", r.id);
        bodies.entry(r.id).or_default().push(r.body);
    }
    let repeated: Vec<&String> = bodies
        .iter()
        .filter(|(_, b)| b.len() > 1)
        .map(|(k, _)| k)
        .collect();
    println!(
        "kill -9 mid-forward: {} deliveries of {} notifications, repeated: {repeated:?}",
        hook.received().len(),
        expected.len()
    );
    assert_eq!(
        repeated,
        vec![&held[0].id],
        "only the one in flight at the kill repeats, with its ID"
    );
    for (id, b) in &bodies {
        assert!(
            b.windows(2).all(|w| w[0] == w[1]),
            "a repeat of {id} is the same document"
        );
    }
    // In order: the delivered sequence is the stored order.
    let delivered = hook.delivered_ids();
    let mut firsts = Vec::new();
    for id in delivered {
        if !firsts.contains(&id) {
            firsts.push(id);
        }
    }
    assert_eq!(
        firsts,
        sent.iter()
            .map(|n| format!("{ORG_A}/{n}"))
            .collect::<Vec<_>>()
    );
    proc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_verified_against_the_configured_ca() {
    let tls = WebhookTls::new();
    let hook = Webhook::start_tls(&tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("webhook-ca.pem");
    std::fs::write(&ca, &tls.cert_pem).unwrap();

    // Without the CA the endpoint's certificate is not trusted: nothing is delivered, and the
    // stored error says why.
    let untrusted = TestServer::start_with(|c, _| {
        forward_to(c, &hook);
        c.forward.max_attempts = 1;
    })
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "tls"));
    untrusted.register(ORG_A, "tls", &id);
    untrusted.client(Some(&id)).ack(ORG_A, &[nid(1)]).await;
    until_listed(&untrusted, ForwardState::Dead, 1).await;
    let dead = untrusted
        .store()
        .list(&Filter {
            state: Some(ForwardState::Dead),
            ..Filter::default()
        })
        .await
        .unwrap();
    let error = dead[0]
        .forward
        .as_ref()
        .unwrap()
        .last_error
        .clone()
        .unwrap();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(hook.received().is_empty());
    untrusted.stop().await;

    // With [forward] ca_certificates it is.
    let trusted = TestServer::start_with(|c, _| {
        forward_to(c, &hook);
        c.forward.ca_certificates = vec![ca.clone()];
    })
    .await;
    trusted.register(ORG_A, "tls", &id);
    trusted.client(Some(&id)).ack(ORG_A, &[nid(2)]).await;
    eventually("delivered over HTTPS", Duration::from_secs(10), || {
        hook.delivered_ids() == vec![format!("{ORG_A}/{}", nid(2))]
    })
    .await;
    trusted.stop().await;
}
