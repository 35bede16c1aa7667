//! The benchmark's load generator for fresh notifications: every message carries new
//! notification IDs, so obm-gate really parses and stores each one. `bench/compare.sh` runs it
//! identically against nginx and obm-gate.
//!
//!     cargo run --release --example loadgen -- --addr 127.0.0.1:8443 --cert c.pem --key c.key \
//!         --ca server.pem --mode keepalive --concurrency 16 --duration 10 --notifications 1
//!
//! Modes: `keepalive` (one connection per worker), `new` (a full handshake per message),
//! `resume` (a new connection per message, resuming the TLS session), `idle` (open
//! `--concurrency` connections, send one message on each, hold them `--duration` seconds).
//!
//! Many orgs: give `--cert` and `--org` once per org, in pairs (all certificates share `--key`).
//! Worker (or idle connection) k sends as pair k modulo the number of pairs. Salesforce numbers
//! the IDs of one pod (instance) from one sequence, whatever the org: `--pods P` puts org k on
//! pod k mod P, and a notification ID is `04l`, the pod (three digits), then the sequence (twelve
//! base-62 digits).
//! Prints one JSON object: requests, errors, seconds, rate, p50/p99 latency in ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long, default_value = "/obm")]
    path: String,
    /// A client certificate (PEM); repeat it, with `--org`, for more orgs.
    #[arg(long, required = true)]
    cert: Vec<String>,
    #[arg(long)]
    key: String,
    #[arg(long)]
    ca: String,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, default_value = "keepalive")]
    mode: String,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1)]
    notifications: usize,
    /// The org the k-th `--cert` is registered to.
    #[arg(long, default_value = "00Dxx0000001gPFEAY")]
    org: Vec<String>,
    /// How many pods the orgs are spread over (see the module comment).
    #[arg(long, default_value_t = 1)]
    pods: usize,
}

/// An Outbound Message with `n` Contact notifications of about 600 bytes each.
fn body(org: &str, pod: usize, first_id: u64, n: usize) -> Bytes {
    let mut s = String::with_capacity(800 + n * 640);
    s.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>"#);
    s.push_str(org);
    s.push_str(r#"</OrganizationId><ActionId>04kxx00000000blCAA</ActionId><SessionId xsi:nil="true"/><EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/00Dxx0000001gPF</EnterpriseUrl><PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/00Dxx0000001gPF</PartnerUrl>"#);
    for k in 0..n as u64 {
        let id = first_id + k;
        s.push_str(&format!(
            r#"<Notification><Id>04l{pod:03}{}</Id><sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>003xx{id:013}</sf:Id><sf:AccountId>001xx000003DGb2AAG</sf:AccountId><sf:Email>contact{id}@example.com</sf:Email><sf:FirstName>Jane</sf:FirstName><sf:LastName>Black &amp; White</sf:LastName><sf:MailingCity>San Francisco</sf:MailingCity><sf:MailingStreet>415 Mission Street</sf:MailingStreet><sf:Phone>+1 415 555 0100</sf:Phone><sf:Title>Director of Integrations</sf:Title></sObject></Notification>"#,
            base62(id)
        ));
    }
    s.push_str("</notifications></soapenv:Body></soapenv:Envelope>");
    Bytes::from(s)
}

/// `n` in twelve base-62 digits, as Salesforce writes an ID's sequence: `0-9A-Za-z`, so that a
/// larger number sorts after a smaller one byte by byte.
fn base62(mut n: u64) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 12];
    for d in out.iter_mut().rev() {
        *d = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("ASCII digits")
}

fn tls_config(args: &Args, cert: &str, resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&args.ca).expect("--ca") {
        roots.add(c.expect("--ca")).expect("--ca");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("--cert")
        .map(|c| c.expect("--cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&args.key).expect("--key");
    // X25519 and P-256 only, as a TLS 1.2 sender like Salesforce's offers. rustls would put
    // the post-quantum hybrid X25519MLKEM768 first, which obm-gate (rustls) accepts and nginx
    // (Debian's OpenSSL 3.0) cannot: the two servers would run different key exchanges in (a)
    // and (b), and obm-gate's would cost more.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
    ];
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate and key");
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(args: &Args, tls: &Arc<rustls::ClientConfig>) -> Result<Sender, String> {
    let tcp = TcpStream::connect(&args.addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let name = ServerName::try_from(args.server_name.clone()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn post(args: &Args, sender: &mut Sender, body: Bytes) -> Result<(), String> {
    let req = hyper::Request::post(&args.path)
        .header("host", &args.server_name)
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", "\"\"")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() && bytes.windows(4).any(|w| w == b"true") {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert_eq!(
        args.cert.len(),
        args.org.len(),
        "give --cert and --org in pairs, once per org"
    );
    // One client (configuration and session cache) per org, as each org's Salesforce is one.
    assert!((1..=1000).contains(&args.pods), "--pods is 1 to 1000");
    let clients: Vec<(String, usize, Arc<rustls::ClientConfig>)> =
        (args.cert.iter().zip(&args.org).enumerate())
            .map(|(k, (cert, org))| {
                let tls = tls_config(&args, cert, args.mode != "new");
                (org.clone(), k % args.pods, tls)
            })
            .collect();
    // IDs unique across runs: the clock, in units of a million IDs per run-microsecond window.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
        % 10_000_000
        * 100_000_000;
    let next_id = Arc::new(AtomicU64::new(base));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    if args.mode == "idle" {
        let mut held = Vec::with_capacity(args.concurrency);
        for k in 0..args.concurrency {
            let (org, pod, tls) = &clients[k % clients.len()];
            match connect(&args, tls).await {
                Ok(mut s) => match post(&args, &mut s, body(org, *pod, base, 1)).await {
                    Ok(()) => held.push(s),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        println!(
            "{{\"mode\":\"idle\",\"held\":{},\"errors\":{}}}",
            held.len(),
            errors.load(Ordering::Relaxed)
        );
        eprintln!("holding {} connections", held.len());
        tokio::time::sleep_until(deadline.into()).await;
        return;
    }
    let mut workers = Vec::new();
    for k in 0..args.concurrency {
        let (org, pod, tls) = clients[k % clients.len()].clone();
        let (args, next_id, errors) = (args.clone(), next_id.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut sender: Option<Sender> = None;
            while Instant::now() < deadline {
                let first = next_id.fetch_add(args.notifications as u64, Ordering::Relaxed);
                let b = body(&org, pod, first, args.notifications);
                let t = Instant::now();
                if sender.is_none() || args.mode != "keepalive" {
                    match connect(&args, &tls).await {
                        Ok(s) => sender = Some(s),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first error: {e}");
                            }
                            continue;
                        }
                    }
                }
                let Some(s) = sender.as_mut() else { continue };
                match post(&args, s, b).await {
                    Ok(()) => latencies.push(t.elapsed().as_micros() as u32),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first error: {e}");
                        }
                        sender = None;
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            0.0
        } else {
            all[((all.len() - 1) as f64 * p) as usize] as f64 / 1000.0
        }
    };
    println!(
        "{{\"mode\":\"{}\",\"concurrency\":{},\"notifications\":{},\"requests\":{},\"errors\":{},\"seconds\":{:.3},\"rate\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"body_bytes\":{}}}",
        args.mode,
        args.concurrency,
        args.notifications,
        all.len(),
        errors.load(Ordering::Relaxed),
        secs,
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        body(&clients[0].0, 0, base, args.notifications).len()
    );
}
