//! Resource attacks. During each, a legitimate sender on its own keep-alive connection keeps
//! being acknowledged within 1 s, and the server never holds more connections than its limit.
//! The attacks run one after another in one test, so they do not compete with each other for
//! the machine's two cores.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a fresh message every 50 ms on one keep-alive connection until stopped; records the
/// slowest acknowledgment and fails on anything but an ack.
struct Legit {
    stop: Arc<AtomicBool>,
    worst_ms: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Legit {
    async fn start(client: &Client, base: usize) -> Legit {
        let mut conn = client.connect().await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let worst_ms = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, w, n) = (stop.clone(), worst_ms.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut i = base;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = conn
                    .post(&message(ORG_A, &[nid(i)]))
                    .await
                    .expect("legit sender cut off");
                assert!(reply.is_ack(), "legit sender refused: {reply:?}");
                w.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                n.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Legit {
            stop,
            worst_ms,
            sent,
            task,
        }
    }

    async fn finish(self, attack: &str) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let worst = self.worst_ms.load(Ordering::Relaxed);
        let sent = self.sent.load(Ordering::Relaxed);
        println!("{attack}: legit sender acknowledged {sent} messages, slowest {worst} ms");
        assert!(sent > 0, "{attack}: the legit sender sent nothing");
        assert!(worst < 1000, "{attack}: an acknowledgment took {worst} ms");
    }
}

/// Samples the open-connection gauge until stopped; returns the highest value seen.
fn watch_gauge(server: &TestServer) -> (Arc<AtomicBool>, tokio::task::JoinHandle<i64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = server.state.metrics.clone();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut max = 0;
        while !s.load(Ordering::Relaxed) {
            max = max.max(metrics.open_connections.get());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        max
    });
    (stop, task)
}

/// Reads until the server closes the connection (EOF or error), within `within`.
async fn closed_by_server<S: AsyncReadExt + Unpin>(s: &mut S, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end.into(), s.read(&mut buf)).await {
            Err(_) => panic!("the server did not close the connection within {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn server_with(limits: impl FnOnce(&mut obm_gate::config::Limits)) -> (TestServer, Identity) {
    let server = TestServer::start_with(|c, _| {
        c.limits.header_read_timeout = Duration::from_secs(2);
        c.limits.body_read_timeout = Duration::from_secs(2);
        c.limits.handshake_timeout = Duration::from_secs(2);
        limits(&mut c.limits);
    })
    .await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "client"));
    server.register(ORG_A, "client", &id);
    (server, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_survives_resource_attacks() {
    slowloris().await;
    slow_bodies().await;
    connection_flood().await;
    idle_keep_alive_connections().await;
    stalled_handshakes().await;
}

/// 500 registered clients that send a request head one line at a time, slower than allowed.
async fn slowloris() {
    let (server, id) = server_with(|l| l.max_connections = 1000).await;
    let client = server.client(Some(&id));
    let legit = Legit::start(&client, 0).await;
    let (stop_gauge, gauge) = watch_gauge(&server);
    let mut attackers = Vec::new();
    for _ in 0..500 {
        let client = client.clone();
        attackers.push(tokio::spawn(async move {
            let mut tls = client.connect_raw().await.unwrap();
            tls.write_all(b"POST /obm HTTP/1.1\r\n").await.unwrap();
            let started = Instant::now();
            let (mut rd, mut wr) = tokio::io::split(tls);
            let dribble = tokio::spawn(async move {
                for i in 0.. {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if wr
                        .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            closed_by_server(&mut rd, Duration::from_secs(10)).await;
            dribble.abort();
            started.elapsed()
        }));
    }
    for a in attackers {
        let lived = a.await.unwrap();
        assert!(
            lived < Duration::from_secs(5),
            "a slow header lived {lived:?} (limit 2 s)"
        );
    }
    legit.finish("500 slow-header connections").await;
    stop_gauge.store(true, Ordering::Relaxed);
    let max = gauge.await.unwrap();
    assert!(max <= 1000, "open connections peaked at {max}");
    server.stop().await;
}

/// 200 registered clients that send a complete head, then the body far too slowly.
async fn slow_bodies() {
    let (server, id) = server_with(|_| {}).await;
    let client = server.client(Some(&id));
    let legit = Legit::start(&client, 10_000).await;
    let mut attackers = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        attackers.push(tokio::spawn(async move {
            let tls = client.connect_raw().await.unwrap();
            let (mut rd, mut wr) = tokio::io::split(tls);
            wr.write_all(b"POST /obm HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                .await
                .unwrap();
            let dribble = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if wr.write_all(b"<a>").await.is_err() {
                        return;
                    }
                }
            });
            let answer = closed_by_server(&mut rd, Duration::from_secs(10)).await;
            dribble.abort();
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    for a in attackers {
        let answer = a.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408")
                && answer.contains("was not received within 2 seconds"),
            "{answer}"
        );
    }
    legit.finish("200 slow-body connections").await;
    assert!(
        server
            .stored()
            .iter()
            .all(|s| s.notification_id >= nid(10_000))
    );
    server.stop().await;
}

/// 500 TCP connections against a limit of 64: the excess waits in the kernel's queue, the
/// server never holds more than 64, and the established legit sender is unaffected.
async fn connection_flood() {
    let (server, id) = server_with(|l| l.max_connections = 64).await;
    let client = server.client(Some(&id));
    let legit = Legit::start(&client, 20_000).await;
    let (stop_gauge, gauge) = watch_gauge(&server);
    let mut flood = Vec::new();
    for _ in 0..500 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // the attack lasts past one handshake timeout
    legit
        .finish("connection flood (500 against a limit of 64)")
        .await;
    stop_gauge.store(true, Ordering::Relaxed);
    let max = gauge.await.unwrap();
    println!("connection flood: open connections peaked at {max} (limit 64)");
    assert!(max <= 64, "open connections peaked at {max}, limit 64");
    drop(flood);
    // Once the flood is gone, new senders get in again.
    let fresh = server.client(Some(&id));
    eventually_ok(&fresh, 30_000).await;
    server.stop().await;
}

async fn eventually_ok(client: &Client, id: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client.post(&message(ORG_A, &[nid(id)])).await
            && r.is_ack()
        {
            return;
        }
        assert!(
            Instant::now() < end,
            "a new sender could not get in after the attack"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 2,000 keep-alive connections that made one request each and then stay idle.
async fn idle_keep_alive_connections() {
    let (server, id) = server_with(|l| {
        l.header_read_timeout = Duration::from_secs(60);
        l.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let client = server.client(Some(&id));
    let legit = Legit::start(&client, 40_000).await;
    let mut idle = Vec::new();
    for batch in 0..20 {
        let opened = (0..100).map(|i| {
            let client = client.clone();
            async move {
                let mut conn = client.connect().await.unwrap();
                let reply = conn
                    .post(&message(ORG_A, &[nid(50_000 + batch * 100 + i)]))
                    .await
                    .unwrap();
                assert!(reply.is_ack());
                conn
            }
        });
        idle.extend(futures_join_all(opened).await);
    }
    assert_eq!(idle.len(), 2000);
    let open = server.state.metrics.open_connections.get();
    println!("2,000 idle keep-alive connections: the server holds {open} open");
    assert!((2000..=10_000).contains(&open), "{open}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    legit.finish("2,000 idle keep-alive connections").await;
    drop(idle);
    server.stop().await;
}

/// 300 connections that send half a ClientHello and stall.
async fn stalled_handshakes() {
    let (server, id) = server_with(|_| {}).await;
    let client = server.client(Some(&id));
    let legit = Legit::start(&client, 60_000).await;
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        // A TLS record header announcing 512 bytes of handshake, then only a few of them.
        tcp.write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .unwrap();
        stalled.push(tcp);
    }
    let started = Instant::now();
    for mut tcp in stalled {
        closed_by_server(&mut tcp, Duration::from_secs(10)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stalled handshakes lived {:?}",
        started.elapsed()
    );
    let metrics = server.state.metrics.clone();
    eventually("stalled handshakes counted", Duration::from_secs(5), || {
        metrics.handshakes_with("refused", "timeout") == 300
    })
    .await;
    legit.finish("300 stalled handshakes").await;
    server.stop().await;
}

/// Awaits all futures concurrently (a small stand-in for futures::join_all).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
