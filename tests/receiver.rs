//! The receiver over its real path: TCP, mutual TLS with rcgen certificates, HTTP/1.1, SOAP,
//! org binding, the SQLite store.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn registered_certificates_are_acknowledged_and_stored() {
    let server = TestServer::start().await;
    for (i, key) in [Key::Rsa2048, Key::EcdsaP256].into_iter().enumerate() {
        let id = self_signed(Spec::new(key, &format!("client {i}")));
        server.register(ORG_A, &format!("client{i}"), &id);
        let reply = server
            .client(Some(&id))
            .post(&message(ORG_A, &[nid(i)]))
            .await
            .unwrap();
        assert!(reply.is_ack(), "{key:?}: {reply:?}");
        assert_eq!(reply.content_type, "text/xml; charset=utf-8");
    }
    // A self-signed certificate with CA:TRUE (what `openssl req -x509` makes) works too.
    let ca_true = self_signed(Spec::new(Key::Rsa2048, "openssl-style").ca_true());
    server.register(ORG_A15, "ca-true", &ca_true);
    server.client(Some(&ca_true)).ack(ORG_A15, &[nid(2)]).await;

    let stored = server.stored();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].org_id, ORG_A);
    assert_eq!(stored[0].notification_id, nid(0));
    assert_eq!(stored[0].object_type, "Contact");
    assert_eq!(stored[0].action_id, "04kxx00000000blCAA");
    assert_eq!(
        stored[0].fields,
        serde_json::json!({"Id": "003xx000004TmiQAAS", "LastName": "Black"})
    );
    assert_eq!(stored[2].certificate_sha256, ca_true.fingerprint());
    // The 15-character org in the message was stored in its 18-character form.
    assert_eq!(stored[2].org_id, ORG_A);
    server.stop().await;
}

#[tokio::test]
async fn refused_handshakes_name_their_reason_and_store_nothing() {
    let ca = Ca::new("obm-gate test CA");
    let rogue = Ca::new("obm-gate test CA"); // same subject name, different key
    let server = TestServer::start_with(|config, dir| {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &ca.cert_pem).unwrap();
        config.registry.ca_certificates = vec![path];
    })
    .await;

    let expired = self_signed(Spec::new(Key::EcdsaP256, "expired").expired());
    let future = self_signed(Spec::new(Key::EcdsaP256, "future").not_yet_valid());
    let forged = rogue.issue(Spec::new(Key::EcdsaP256, "forged"));
    server.register(ORG_A, "expired", &expired);
    server.register(ORG_A, "future", &future);
    // Registered by fingerprint, but it names our CA as issuer and does not chain to it.
    server.register(ORG_A, "forged", &forged);
    let unknown = self_signed(Spec::new(Key::Rsa2048, "stranger"));
    let unknown_ca = Ca::new("someone else's CA").issue(Spec::new(Key::EcdsaP256, "other"));
    let unregistered_ours = ca.issue(Spec::new(Key::EcdsaP256, "ours but unregistered"));

    let cases: [(Option<&Identity>, &str); 7] = [
        (None, "no_certificate"),
        (Some(&unknown), "unknown"),
        (Some(&expired), "expired"),
        (Some(&future), "not_yet_valid"),
        (Some(&forged), "bad_chain"),
        (Some(&unknown_ca), "unknown"),
        (Some(&unregistered_ours), "unknown"),
    ];
    let metrics = server.state.metrics.clone();
    for (i, (id, reason)) in cases.iter().enumerate() {
        let before = metrics.handshakes_with("refused", reason);
        let result = server.client(*id).post(&message(ORG_A, &[nid(i)])).await;
        assert!(
            result.is_err(),
            "{reason}: expected a refused handshake, got {result:?}"
        );
        eventually(
            &format!("handshake refusal counted as {reason}"),
            WAIT,
            || metrics.handshakes_with("refused", reason) == before + 1,
        )
        .await;
    }
    assert!(server.stored().is_empty());

    // A certificate our CA issued and that is registered chains, and is accepted.
    let good = ca.issue(Spec::new(Key::Rsa2048, "ours"));
    server.register(ORG_B, "ours", &good);
    server.client(Some(&good)).ack(ORG_B, &[nid(9)]).await;
    server.stop().await;
}

#[tokio::test]
async fn tls_below_1_2_is_not_offered() {
    // rustls clients cannot even offer TLS 1.0/1.1; the server's version list is 1.3 and 1.2,
    // and both work.
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "v"));
    server.register(ORG_A, "v", &id);
    for (i, v) in [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .enumerate()
    {
        let client = Client::new(server.addr, &server.server_cert, Some(&id), Some(v));
        let reply = client.post(&message(ORG_A, &[nid(i)])).await.unwrap();
        assert!(reply.is_ack(), "{v:?}: {reply:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn org_mismatch_is_403_naming_both_orgs_and_stores_nothing() {
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    for claimed in ["00D1I000003qqqE", ORG_B] {
        let reply = client.post(&message(claimed, &[nid(1)])).await.unwrap();
        assert_eq!(reply.status, 403, "{reply:?}");
        let f = reply.faultstring();
        assert!(
            f.contains(ORG_B) && f.contains(ORG_A) && f.contains(&id.fingerprint()),
            "{f}"
        );
        assert!(reply.body.contains("<faultcode>soapenv:Client</faultcode>"));
    }
    assert!(server.stored().is_empty());
    assert_eq!(server.state.metrics.requests_with(403, "org_mismatch"), 2);
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_are_400_faults() {
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let mut conn = server.client(Some(&id)).connect().await.unwrap();
    let many: Vec<String> = (0..101).map(nid).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"<not-closed".to_vec(), "tag not closed"),
        (
            br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body></s:Envelope>"#.to_vec(),
            "malformed XML",
        ),
        (b"<a></a>".to_vec(), "expected a SOAP 1.1 <Envelope>"),
        (
            br#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#.to_vec(),
            "DTD",
        ),
        (message(ORG_A, &many), "more than 100 notifications"),
        (b"plain text".to_vec(), "text is not allowed"),
    ];
    for (body, needle) in cases {
        // The same keep-alive connection survives every fault.
        let reply = conn.post(&body).await.unwrap();
        assert_eq!(reply.status, 400, "{needle}: {reply:?}");
        assert!(
            reply.faultstring().contains(needle),
            "{needle}: {}",
            reply.faultstring()
        );
        assert_eq!(reply.content_type, "text/xml; charset=utf-8");
    }
    assert!(server.stored().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn wrong_path_method_and_size_are_soap_faults() {
    let server = TestServer::start_with(|c, _| c.limits.max_body_bytes = 4096).await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let mut conn = server.client(Some(&id)).connect().await.unwrap();
    let body = message(ORG_A, &[nid(1)]);

    let reply = conn.request("POST", "/elsewhere", &body).await.unwrap();
    assert_eq!(reply.status, 404);
    assert!(reply.faultstring().contains("/obm"), "{reply:?}");
    let reply = conn.request("GET", "/obm", b"").await.unwrap();
    assert_eq!(reply.status, 405);
    assert!(reply.faultstring().contains("POST"), "{reply:?}");
    assert!(reply.body.starts_with("<?xml"));

    let big = vec![b' '; 5000];
    let reply = conn.post(&big).await.unwrap();
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(reply.faultstring().contains("4096"));
    assert!(server.stored().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_duplicate_is_acknowledged_and_stored_once() {
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    let body = message(ORG_A, &[nid(1), nid(2)]);
    for _ in 0..3 {
        assert!(client.post(&body).await.unwrap().is_ack());
    }
    // The 15-character form of the same org is the same org for deduplication.
    client.ack(ORG_A15, &[nid(1)]).await;
    assert_eq!(server.stored().len(), 2);
    assert_eq!(server.state.metrics.notifications_duplicate.get(), 5);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_senders_share_fsyncs() {
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    let commits_before = server.store().commits();
    // 200 senders over 20 keep-alive connections: 10 messages per connection.
    client.send_concurrently(ORG_A, 20, 10, 0).await;
    let stored = server.stored();
    assert_eq!(stored.len(), 200);
    let commits = server.store().commits() - commits_before;
    println!("200 messages committed in {commits} group commits");
    assert!(
        commits < 200,
        "expected fewer fsync batches than messages, got {commits}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_removed_certificate_stops_working_on_open_and_resumed_connections() {
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let server = TestServer::start().await;
        let id = self_signed(Spec::new(Key::EcdsaP256, "soon removed"));
        let path = server.register(ORG_A, "a", &id);
        let client = Client::new(server.addr, &server.server_cert, Some(&id), Some(version));
        let mut open = client.connect().await.unwrap();
        assert!(
            open.post(&message(ORG_A, &[nid(1)]))
                .await
                .unwrap()
                .is_ack()
        );
        // A second connection from the same client config resumes the session.
        let mut resumed = client.connect().await.unwrap();
        assert!(resumed.resumed, "{version:?}: expected a resumed session");

        std::fs::remove_file(&path).unwrap();
        server.state.registry.reload().unwrap();

        for (what, conn) in [("keep-alive", &mut open), ("resumed", &mut resumed)] {
            let reply = conn.post(&message(ORG_A, &[nid(2)])).await.unwrap();
            assert_eq!(reply.status, 403, "{version:?} {what}: {reply:?}");
            assert!(
                reply.faultstring().contains("no longer registered"),
                "{}",
                reply.faultstring()
            );
        }
        // And a fresh resumption after the removal is refused the same way.
        if let Ok(mut again) = client.connect().await {
            let reply = again.post(&message(ORG_A, &[nid(3)])).await;
            assert!(reply.map(|r| r.status == 403).unwrap_or(true));
        }
        assert_eq!(server.stored().len(), 1);
        server.stop().await;
    }
}

/// Sessions of many clients are resumed: one client's session still is after 300 other
/// clients' full handshakes (rustls's default cache keeps 256 sessions, and a TLS 1.3 handshake
/// left two; the receiver's tickets are stateless). `tls_session_cache = 0` turns resumption
/// off.
#[tokio::test]
async fn sessions_of_many_clients_are_resumed() {
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let server = TestServer::start().await;
        let id = self_signed(Spec::new(Key::EcdsaP256, "one of many"));
        server.register(ORG_A, "a", &id);
        let client = || Client::new(server.addr, &server.server_cert, Some(&id), Some(version));
        let first = client();
        first.ack(ORG_A, &[nid(1)]).await;
        for _ in 0..300 {
            // A request makes sure the server has finished the handshake (and stored its
            // sessions); it is refused, so nothing is stored.
            let reply = client().post(b"not a SOAP message").await.unwrap();
            assert_eq!(reply.status, 400, "{reply:?}");
        }
        let mut again = first.connect().await.unwrap();
        assert!(
            again.resumed,
            "{version:?}: the first client's session was dropped"
        );
        // Counted as the server saw them (the reply shows it has finished the handshake): 301
        // full handshakes, then the one resumption.
        again.post(b"not a SOAP message").await.unwrap();
        assert_eq!(server.handshakes(), (301, 1), "{version:?}");
        server.stop().await;

        let server = TestServer::start_with(|c, _| c.limits.tls_session_cache = 0).await;
        server.register(ORG_A, "a", &id);
        let client = Client::new(server.addr, &server.server_cert, Some(&id), Some(version));
        client.ack(ORG_A, &[nid(2)]).await;
        let mut again = client.connect().await.unwrap();
        assert!(!again.resumed, "{version:?}: resumed with the cache off");
        // The server's count agrees: two full handshakes, none resumed.
        again.post(b"not a SOAP message").await.unwrap();
        assert_eq!(server.handshakes(), (2, 0), "{version:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn store_failure_is_503_and_the_server_keeps_running() {
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    client.ack(ORG_A, &[nid(1)]).await;

    // Another writer holds the database's write lock longer than the store's busy timeout.
    let db = server.store().path().to_owned();
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let reply = client.post(&message(ORG_A, &[nid(2)])).await.unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.contains("<faultcode>soapenv:Server</faultcode>"));
    assert!(
        reply.faultstring().contains("not acknowledged"),
        "{}",
        reply.faultstring()
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    // Salesforce's retry then succeeds without a restart.
    client.ack(ORG_A, &[nid(2)]).await;
    assert_eq!(server.stored().len(), 2);
    server.stop().await;
}

/// A sender that hangs up while its message waits for the store: hyper drops the request
/// unfinished. It must still leave the in-flight gauge, and be counted and logged as closed by
/// the client, not vanish.
#[tokio::test]
async fn a_request_whose_sender_hangs_up_is_counted_and_leaves_the_in_flight_gauge() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    client.ack(ORG_A, &[nid(1)]).await;

    // The store cannot commit while another writer holds the lock, so the request waits there.
    let blocker = rusqlite::Connection::open(server.store().path()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let metrics = &server.state.metrics;
    let body = message(ORG_A, &[nid(2)]);
    let mut conn = client.connect_raw().await.unwrap();
    conn.write_all(post_head(body.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(&body).await.unwrap();
    conn.flush().await.unwrap();
    eventually("the request in flight", WAIT, || {
        metrics.requests_in_flight.get() == 1
    })
    .await;
    conn.shutdown().await.unwrap();
    drop(conn);
    eventually("the closed request out of flight", WAIT, || {
        metrics.requests_in_flight.get() == 0
    })
    .await;
    assert_eq!(metrics.requests_with(499, "client_closed"), 1);
    assert_eq!(metrics.requests_with(503, "store_unavailable"), 0);
    let (_, text) = admin_get(&server.state, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            r#"obm_gate_requests_total{status="499",reason="client_closed"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "obm_gate_requests_in_flight"), 0.0);
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    // The next message is stored and acknowledged as usual.
    client.ack(ORG_A, &[nid(3)]).await;
    server.stop().await;
}

/// A request head begun on a keep-alive connection that has been idle for a while is cut by
/// the header-read timeout, from its first byte, not by the idle timeout. The connection's
/// watchdog sleeps until the idle timeout's end while nothing comes, so it must notice the
/// head's first byte and wake sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_begun_on_an_idle_connection_is_cut_by_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let header_read_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(|c, _| {
        c.limits.idle_timeout = Duration::from_secs(60);
        c.limits.header_read_timeout = header_read_timeout;
    })
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    let mut conn = client.connect_raw().await.unwrap();
    let body = message(ORG_A, &[nid(1)]);
    conn.write_all(post_head(body.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(&body).await.unwrap();
    // The whole answer, however many reads it takes: a rest left unread would come back in
    // place of the close awaited below.
    let mut answer = [0u8; 4096];
    let mut got = Vec::new();
    let whole = tokio::time::timeout(Duration::from_secs(10), async {
        while !got.ends_with(obm_gate::soap::ACK.as_bytes()) {
            let n = conn.read(&mut answer).await.unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&answer[..n]);
        }
    });
    whole.await.expect("the acknowledgment within 10 s");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // Idle for longer than the header-read timeout: the watchdog now sleeps toward the idle
    // timeout's end, a minute away. (This wait is the scenario, not a stand-in for a signal.)
    tokio::time::sleep(header_read_timeout * 2).await;
    conn.write_all(b"POST /obm HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let head_begun = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
        .await
        .expect("the server should close the connection at the header-read timeout");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "expected close, got {closed:?}"
    );
    let waited = head_begun.elapsed();
    assert!(
        waited >= header_read_timeout - Duration::from_millis(50),
        "closed before the header-read timeout: {waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c, _| {
        c.limits.idle_timeout = Duration::from_millis(300);
        c.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    // A connection that sends half a request head and stalls is closed by the server.
    let mut conn = client.connect_raw().await.unwrap();
    conn.write_all(b"POST /obm HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
        .await
        .expect("server should close");
    assert!(matches!(n, Ok(0) | Err(_)), "expected close, got {n:?}");

    // An idle keep-alive connection is closed after the idle timeout.
    let mut idle = client.connect().await.unwrap();
    assert!(
        idle.post(&message(ORG_A, &[nid(1)]))
            .await
            .unwrap()
            .is_ack()
    );
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if idle.is_closed() {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection was not closed");
    server.stop().await;
}
