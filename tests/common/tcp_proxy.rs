//! A TCP proxy in front of a shared service (PostgreSQL, NATS), so a test can make the service
//! unreachable without stopping it for the other tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// Forwards to `target` while up; while down, cuts every connection and refuses new ones.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy { addr, up, conns }
    }

    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// An L4 load balancer for tests: round-robin over `backends`, skipping one that refuses the
/// connection (as a health-checking balancer would), and sending each backend a PROXY v2 header
/// with the client's address first.
pub struct Balancer {
    pub addr: SocketAddr,
    /// Connections handed to each backend, in `backends` order.
    pub counts: Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Vec<std::sync::atomic::AtomicUsize>> =
            Arc::new(backends.iter().map(|_| Default::default()).collect());
        let c = counts.clone();
        tokio::spawn(async move {
            let mut next = 0;
            while let Ok((mut client, peer)) = listener.accept().await {
                let mut chosen = None;
                for _ in 0..backends.len() {
                    let i = next % backends.len();
                    next += 1;
                    if let Ok(server) = TcpStream::connect(backends[i]).await {
                        chosen = Some((i, server));
                        break;
                    }
                }
                let Some((i, mut server)) = chosen else {
                    continue; // no backend: the client sees the connection close
                };
                c[i].fetch_add(1, Ordering::SeqCst);
                let header = ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    ppp::v2::Protocol::Stream,
                    (peer, backends[i]),
                )
                .build()
                .unwrap();
                tokio::spawn(async move {
                    if server.write_all(&header).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Balancer { addr, counts }
    }

    pub fn count(&self, backend: usize) -> usize {
        self.counts[backend].load(Ordering::SeqCst)
    }
}
