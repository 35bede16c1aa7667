//! The request path from bytes to response: arbitrary bytes arrive on an established
//! connection of a registered client (TLS already done) and go through hyper's HTTP/1.1 parser,
//! routing, limits, the SOAP parser, org binding and the SQLite store. Every response must be
//! SOAP, and nothing may panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use hyper::service::service_fn;
use libfuzzer_sys::fuzz_target;
use obm_gate::http::{AppState, Connection, RequestHooks};
use obm_gate::ids::{Fingerprint, OrgId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct NoHooks;
impl RequestHooks for NoHooks {
    fn request_started(&self) {}
    fn request_finished(&self) {}
}

struct World {
    runtime: tokio::runtime::Runtime,
    conn: Arc<Connection>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut config = obm_gate::Config::default();
        config.limits.max_body_bytes = 64 * 1024;
        // In memory-backed storage when there is some: every accepted input is fsync'd.
        let shm = std::path::Path::new("/dev/shm");
        let db_dir = if shm.is_dir() { tempfile::tempdir_in(shm).unwrap() } else { tempfile::tempdir().unwrap() };
        config.store.path = db_dir.keep().join("fuzz.db");
        let metrics = Arc::new(obm_gate::metrics::Metrics::new());
        let store = Arc::new(runtime.block_on(obm_gate::store::Store::open(&config.store, false, metrics.clone())).unwrap());
        // A registry holding one certificate for the org the seeds use.
        let orgs = dir.path().join("orgs/00Dxx0000001gPFEAY");
        std::fs::create_dir_all(&orgs).unwrap();
        let key = rcgen_free_cert();
        std::fs::write(orgs.join("c.pem"), &key.0).unwrap();
        let registry = Arc::new(obm_gate::registry::Registry::open(&dir.path().join("orgs")).unwrap());
        let _ = OrgId::parse("00Dxx0000001gPF");
        let state = Arc::new(AppState {
            config,
            registry,
            store: Some(store),
            jetstream: None,
            metrics,
            accepting: Default::default(),
            admin_address: Default::default(),
        });
        let conn = Arc::new(Connection::new(
            state,
            "127.0.0.1:40000".parse().unwrap(),
            obm_gate::tls::ClientIdentity {
                fingerprint: key.1,
                protocol: "TLSv1.3",
                cipher: "fuzz".into(),
                resumed: false,
            },
            Arc::new(NoHooks),
        ));
        World { runtime, conn, _dir: dir }
    })
}

/// A fixed self-signed certificate (PEM) and its fingerprint, made once by the development
/// certificate routine.
fn rcgen_free_cert() -> (String, Fingerprint) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    obm_gate::ca::ensure_dev_server_certificate(&cert, &key).unwrap();
    let pem = std::fs::read_to_string(&cert).unwrap();
    let info = obm_gate::registry::read_pem_certificate(pem.as_bytes()).unwrap();
    (pem, info.fingerprint)
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let conn = w.conn.clone();
        let service = service_fn(move |req| obm_gate::http::handle(req, conn.clone()));
        let served = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service),
        );
        let (mut rd, mut wr) = tokio::io::split(client);
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rd.read_to_end(&mut out)).await;
        served.abort();
        let text = String::from_utf8_lossy(&out);
        // Every response carries a SOAP envelope; hyper's own 4xx for unparsable heads has no body.
        for response in text.split("HTTP/1.1 ").skip(1) {
            let status: u16 = response.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
            if response.contains("content-length: 0") || status == 0 {
                continue;
            }
            assert!(response.contains("<soapenv:Envelope"), "non-SOAP response: {response}");
        }
    });
});
