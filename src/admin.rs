//! The admin listener: `/healthz`, `/readyz` and `/metrics`, plain HTTP on its own address
//! (loopback by default), never on the public mutual-TLS port.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::AppState;

/// A probe that takes longer than this is itself a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(state: Arc<AppState>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()));
    }
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness(&state).await {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            state
                .metrics
                .set_certificates(&state.registry.snapshot(), now);
            let mut r = text(StatusCode::OK, state.metrics.encode());
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /healthz, /readyz or /metrics\n".into(),
        ),
    })
}

/// Ready: the mutual-TLS listener accepts, the registry directory is readable, and the store
/// takes writes.
async fn readiness(state: &AppState) -> Result<(), String> {
    if !state.accepting.load(Ordering::Relaxed) {
        return Err("the listener is not accepting".into());
    }
    let dir = state.registry.directory();
    if let Err(e) = std::fs::read_dir(dir) {
        return Err(format!(
            "registry directory {} unreadable: {e}",
            dir.display()
        ));
    }
    if let Some(jetstream) = &state.jetstream
        && !jetstream.is_connected()
    {
        return Err("not connected to NATS (JetStream publishing would fail)".into());
    }
    let Some(store) = &state.store else {
        // Stateless (JetStream only): the NATS connection checked above is the durable path.
        return Ok(());
    };
    match tokio::time::timeout(PROBE_TIMEOUT, store.probe_writable()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("store not writable: {e}")),
        Err(_) => Err("store not writable: the probe timed out".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
