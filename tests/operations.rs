//! Running it: metrics, readiness, policy, the PROXY protocol, and the send tool.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    // 2 acknowledged, 1 duplicate, 1 org mismatch, 1 refused handshake.
    client.ack(ORG_A, &[nid(1)]).await;
    client.ack(ORG_A, &[nid(2)]).await;
    client.ack(ORG_A, &[nid(1)]).await;
    assert_eq!(
        client
            .post(&message(ORG_B, &[nid(3)]))
            .await
            .unwrap()
            .status,
        403
    );
    let stranger = self_signed(Spec::new(Key::EcdsaP256, "stranger"));
    assert!(
        server
            .client(Some(&stranger))
            .post(&message(ORG_A, &[nid(4)]))
            .await
            .is_err()
    );
    let metrics = server.state.metrics.clone();
    eventually("refusal counted", WAIT, || {
        metrics.handshakes_with("refused", "unknown") == 1
    })
    .await;

    let (status, text) = admin_get(&server.state, "/metrics").await;
    assert_eq!(status, 200);
    let expect = [
        (r#"obm_gate_requests_total{status="200",reason="ack"}"#, 2.0),
        (
            r#"obm_gate_requests_total{status="200",reason="duplicate"}"#,
            1.0,
        ),
        (
            r#"obm_gate_requests_total{status="403",reason="org_mismatch"}"#,
            1.0,
        ),
        (
            r#"obm_gate_handshakes_total{outcome="refused",reason="unknown"}"#,
            1.0,
        ),
        // One client: its first connection's session is resumed by the next three.
        (
            r#"obm_gate_handshakes_total{outcome="accepted",reason="full"}"#,
            1.0,
        ),
        (
            r#"obm_gate_handshakes_total{outcome="accepted",reason="resumed"}"#,
            3.0,
        ),
        ("obm_gate_notifications_stored_total", 2.0),
        ("obm_gate_notifications_duplicate_total", 1.0),
        ("obm_gate_ack_latency_seconds_count", 3.0),
    ];
    for (series, value) in expect {
        assert_eq!(metric(&text, series), value, "{series} in\n{text}");
    }
    assert!(metric(&text, "obm_gate_store_batch_messages_count") >= 1.0);
    assert!(metric(&text, "obm_gate_store_commit_seconds_count") >= 1.0);
    let expiry = format!(
        r#"obm_gate_certificate_expiry_seconds{{org="{ORG_A}",fingerprint="{}"}}"#,
        id.fingerprint()
    );
    let left = metric(&text, &expiry);
    assert!(
        left > 363.0 * 86400.0 && left <= 365.0 * 86400.0,
        "{expiry} = {left}"
    );
    assert!(text.contains("obm_gate_open_connections"));
    // No label ever comes from a request: the org that the mismatching message claimed is absent.
    assert!(!text.contains(ORG_B), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn health_and_readiness_follow_the_store() {
    let server = TestServer::start().await;
    assert_eq!(
        admin_get(&server.state, "/healthz").await,
        (200, "ok\n".into())
    );
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);

    // Another process holds the write lock: the store cannot take writes.
    let blocker = rusqlite::Connection::open(server.store().path()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (status, body) = admin_get(&server.state, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store not writable"), "{body}");
    assert_eq!(admin_get(&server.state, "/healthz").await.0, 200);
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(admin_get(&server.state, "/readyz").await.0, 200);
    server.stop().await;
}

fn policy_server_setup(
    policy: &'static str,
) -> impl FnOnce(&mut obm_gate::Config, &std::path::Path) {
    move |_, dir| {
        let org_dir = dir.join("orgs").join(ORG_A);
        std::fs::create_dir_all(&org_dir).unwrap();
        std::fs::write(org_dir.join("policy.toml"), policy).unwrap();
    }
}

/// A message with a chosen action and enterprise URL.
fn message_with(action: &str, enterprise_host: &str, id: usize) -> Vec<u8> {
    String::from_utf8(message(ORG_A, &[nid(id)]))
        .unwrap()
        .replace("04kxx00000000blCAA", action)
        .replace("x.my.salesforce.com", enterprise_host)
        .into_bytes()
}

#[tokio::test]
async fn each_policy_rule_accepts_and_refuses() {
    let server = TestServer::start_with(policy_server_setup(
        r#"
        allowed_action_ids = ["04kxx00000000blCAA", "04kxx00000000blDAA"]
        allowed_enterprise_url_suffixes = [".my.salesforce.com"]
        allowed_source_cidrs = ["127.0.0.0/8"]
        "#,
    ))
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    assert!(
        client
            .post(&message_with(
                "04kxx00000000blDAA",
                "acme.my.salesforce.com",
                1
            ))
            .await
            .unwrap()
            .is_ack()
    );

    let reply = client
        .post(&message_with(
            "04kxx00000000blZAA",
            "acme.my.salesforce.com",
            2,
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .faultstring()
            .contains("ActionId 04kxx00000000blZAA is not in allowed_action_ids"),
        "{}",
        reply.faultstring()
    );

    let reply = client
        .post(&message_with("04kxx00000000blCAA", "evil.example.com", 3))
        .await
        .unwrap();
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .faultstring()
            .contains("evil.example.com matches no allowed_enterprise_url_suffixes"),
        "{}",
        reply.faultstring()
    );

    // Source ranges: change the policy while serving; the reload applies it.
    let org_dir = server.orgs_dir().join(ORG_A);
    std::fs::write(
        org_dir.join("policy.toml"),
        "allowed_source_cidrs = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    server.state.registry.reload().unwrap();
    let reply = client.post(&message(ORG_A, &[nid(4)])).await.unwrap();
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .faultstring()
            .contains("source address 127.0.0.1 is not in allowed_source_cidrs"),
        "{}",
        reply.faultstring()
    );

    // A broken policy file refuses the org's messages instead of lifting the policy.
    std::fs::write(
        org_dir.join("policy.toml"),
        "allowed_source_cidrs = [\"not a cidr\"]\n",
    )
    .unwrap();
    server.state.registry.reload().unwrap();
    let reply = client.post(&message(ORG_A, &[nid(5)])).await.unwrap();
    assert_eq!(reply.status, 403);
    assert!(
        reply.faultstring().contains("policy file is invalid"),
        "{}",
        reply.faultstring()
    );

    assert_eq!(server.stored().len(), 1);
    assert_eq!(server.state.metrics.requests_with(403, "policy"), 4);
    server.stop().await;
}

fn proxy_v2(source: [u8; 4]) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (
            std::net::SocketAddr::from((source, 40000)),
            std::net::SocketAddr::from(([10, 0, 0, 1], 443)),
        ),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn the_proxy_header_sets_the_client_address() {
    let server = TestServer::start_with(|config, dir| {
        config.listen.proxy_protocol = true;
        policy_server_setup("allowed_source_cidrs = [\"203.0.113.0/24\"]\n")(config, dir);
    })
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));

    let allowed = client.with_prefix(&proxy_v2([203, 0, 113, 7]));
    allowed.ack(ORG_A, &[nid(1)]).await;
    let v1 = client.with_prefix(b"PROXY TCP4 203.0.113.9 10.0.0.1 40001 443\r\n");
    v1.ack(ORG_A, &[nid(2)]).await;

    let elsewhere = client.with_prefix(&proxy_v2([198, 51, 100, 1]));
    let reply = elsewhere.post(&message(ORG_A, &[nid(3)])).await.unwrap();
    assert_eq!(reply.status, 403);
    assert!(
        reply.faultstring().contains("198.51.100.1"),
        "{}",
        reply.faultstring()
    );

    // No header: refused before TLS.
    assert!(client.post(&message(ORG_A, &[nid(4)])).await.is_err());
    let metrics = server.state.metrics.clone();
    eventually("missing header refused", WAIT, || {
        metrics.handshakes_with("refused", "proxy_protocol") == 1
    })
    .await;
    let stored = server.stored();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].peer_addr, "203.0.113.7:40000");
    server.stop().await;
}
