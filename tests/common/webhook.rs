//! A local HTTP endpoint standing in for the operator's service behind `[forward] url`.
//! It records every request it gets and answers as the test tells it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// This status, every time.
    Fail(u16),
    /// No answer until the behaviour changes.
    Hold,
}

#[derive(Debug, Clone)]
pub struct Received {
    /// `X-Obm-Gate-Id`.
    pub id: String,
    pub signature: String,
    pub attempt: String,
    pub body: Bytes,
    /// Whether it was answered with a 2xx (false while held or if never answered).
    pub ok: bool,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub struct Webhook {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
    answer: watch::Sender<Answer>,
    /// Requests received but not answered yet.
    waiting: Arc<AtomicUsize>,
    /// The most requests ever waiting at once.
    peak: Arc<AtomicUsize>,
}

/// The certificate an HTTPS webhook serves (self-signed for `localhost`), as PEM.
pub struct WebhookTls {
    pub cert_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl WebhookTls {
    pub fn new() -> WebhookTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der_key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der_key)
            .unwrap();
        WebhookTls {
            cert_pem: cert.pem(),
            config: Arc::new(config),
        }
    }
}

impl Webhook {
    pub async fn start() -> Webhook {
        Self::start_with(None).await
    }

    /// An HTTPS endpoint at `https://localhost:<port>/hook`.
    pub async fn start_tls(tls: &WebhookTls) -> Webhook {
        Self::start_with(Some(tls.config.clone())).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}/hook"),
            None => format!("http://127.0.0.1:{port}/hook"),
        };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let fail_first = Arc::new(AtomicUsize::new(0));
        let (answer, answers) = watch::channel(Answer::Ok);
        let waiting = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, f, w, pk) = (
            received.clone(),
            fail_first.clone(),
            waiting.clone(),
            peak.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (r, f, w, pk, answers) =
                    (r.clone(), f.clone(), w.clone(), pk.clone(), answers.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (r, f, w, pk, mut answers) =
                        (r.clone(), f.clone(), w.clone(), pk.clone(), answers.clone());
                    async move {
                        let now = w.fetch_add(1, Ordering::SeqCst) + 1;
                        pk.fetch_max(now, Ordering::SeqCst);
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let (id, signature, attempt) = (
                            header("x-obm-gate-id"),
                            header("x-obm-gate-signature"),
                            header("x-obm-gate-attempt"),
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        // Recorded on arrival, so a request whose sender dies before the
                        // answer still counts as received (and not as delivered).
                        let index = {
                            let mut r = r.lock().unwrap();
                            r.push(Received {
                                id,
                                signature,
                                attempt,
                                body,
                                ok: false,
                            });
                            r.len() - 1
                        };
                        let failing = f
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let mut answer = *answers.borrow_and_update();
                        while answer == Answer::Hold {
                            if answers.changed().await.is_err() {
                                break;
                            }
                            answer = *answers.borrow_and_update();
                        }
                        w.fetch_sub(1, Ordering::SeqCst);
                        let status = match answer {
                            _ if failing => 500,
                            Answer::Fail(s) => s,
                            _ => 200,
                        };
                        r.lock().unwrap()[index].ok = (200..300).contains(&status);
                        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Webhook {
            url,
            received,
            fail_first,
            answer,
            waiting,
            peak,
        }
    }

    /// The next `n` requests get a 500, whatever the answer is.
    pub fn fail_first(&self, n: usize) {
        self.fail_first.store(n, Ordering::SeqCst);
    }

    pub fn answer(&self, answer: Answer) {
        self.answer.send_replace(answer);
    }

    /// Requests received and not answered yet (held).
    pub fn in_flight(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The most requests that were ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The IDs answered with a 2xx, in the order they were answered.
    pub fn delivered_ids(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.ok)
            .map(|r| r.id)
            .collect()
    }
}

/// Checks `X-Obm-Gate-Signature` the way the README tells the receiving service to, with the
/// hmac crate directly (not obm-gate's own code).
pub fn signature_verifies(secret: &str, header: &str, body: &[u8]) -> bool {
    use hmac::{KeyInit, Mac};
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let fresh = t
        .parse::<u64>()
        .map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            now.abs_diff(t) < 300
        })
        .unwrap_or(false);
    fresh && mac.verify_slice(&expected).is_ok()
}
