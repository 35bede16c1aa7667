//! HTTP: one request through the pipeline — route, read the body within its limits, parse,
//! bind the org, store, acknowledge.
//!
//! Every answer is SOAP (`text/xml; charset=utf-8`): the acknowledgment, or a fault whose
//! `faultstring` says what is wrong in words the Salesforce admin can act on. Nothing is
//! acknowledged before the store has committed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::authz::{self, AuthzError};
use crate::config::Config;
use crate::document::{self, Document};
use crate::ids::OrgId;
use crate::jetstream::{JetStreamError, Publisher};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::soap::{self, FaultCode, SoapError};
use crate::store::{NewMessage, NewNotification, Store, StoreError};
use crate::tls::ClientIdentity;

pub const CONTENT_TYPE_XML: &str = "text/xml; charset=utf-8";

/// Everything a request needs, shared by all connections.
pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    /// The local store; `None` when JetStream is the only durable step.
    pub store: Option<Arc<Store>>,
    /// Publishing to JetStream before the ack, when configured.
    pub jetstream: Option<Publisher>,
    pub metrics: Arc<Metrics>,
    /// The mutual-TLS listener is accepting (for `/readyz`).
    pub accepting: std::sync::atomic::AtomicBool,
    /// Where the admin listener is bound, once it is.
    pub admin_address: std::sync::OnceLock<SocketAddr>,
}

/// Hooks the connection gives the request path (the idle-timeout bookkeeping).
pub trait RequestHooks: Send + Sync {
    fn request_started(&self);
    fn request_finished(&self);
}

/// One established connection: who the client is.
pub struct Connection {
    pub state: Arc<AppState>,
    pub peer: SocketAddr,
    /// `peer` as the store records it, written once: formatting the address for every message
    /// was about 2,000 instructions of a 1-notification message's request path (callgrind).
    peer_text: Arc<str>,
    pub identity: ClientIdentity,
    pub hooks: Arc<dyn RequestHooks>,
}

impl Connection {
    pub fn new(
        state: Arc<AppState>,
        peer: SocketAddr,
        identity: ClientIdentity,
        hooks: Arc<dyn RequestHooks>,
    ) -> Connection {
        Connection {
            state,
            peer,
            peer_text: peer.to_string().into(),
            identity,
            hooks,
        }
    }
}

/// hyper's service for one connection: every request goes through [`handle`]. Its future is
/// boxed because hyper keeps room for one request's future for the connection's whole life, and
/// the request path's future is kilobytes; an idle connection holds only the pointer.
pub struct Service(pub Arc<Connection>);

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(handle(req, self.0.clone()))
    }
}

/// Why a request was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("no Outbound Message endpoint at {path}; the endpoint URL path is {expected}")]
    NotFound { path: String, expected: String },
    #[error("method {0} is not allowed; Outbound Messages are sent with POST")]
    MethodNotAllowed(Method),
    #[error("{0:?} is not supported; Outbound Messages are sent with HTTP/1.1")]
    HttpVersion(hyper::Version),
    #[error("Content-Encoding {0} is not supported; send the SOAP body uncompressed")]
    UnsupportedEncoding(String),
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the body was not received within {0} seconds")]
    BodyTimeout(u64),
    #[error("the body could not be read: {0}")]
    BodyRead(String),
    #[error("{0}")]
    Soap(#[from] SoapError),
    #[error("{0}")]
    Authz(#[from] AuthzError),
    #[error("{0}; the message was not acknowledged, Salesforce will retry")]
    Store(#[from] StoreError),
    #[error("{0}; the message was not acknowledged, Salesforce will retry")]
    JetStream(#[from] JetStreamError),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound { .. } => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyRead(_) | Rejection::Soap(_) | Rejection::HttpVersion(_) => {
                StatusCode::BAD_REQUEST
            }
            Rejection::Authz(_) => StatusCode::FORBIDDEN,
            Rejection::Store(_) | Rejection::JetStream(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Rejection::NotFound { .. } => "not_found",
            Rejection::MethodNotAllowed(_) => "method_not_allowed",
            Rejection::UnsupportedEncoding(_) => "unsupported_encoding",
            Rejection::HttpVersion(_) => "http_version",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::BodyTimeout(_) => "body_timeout",
            Rejection::BodyRead(_) => "body_read",
            Rejection::Soap(e) => e.label(),
            Rejection::Authz(e) => e.label(),
            Rejection::Store(_) => "store_unavailable",
            Rejection::JetStream(_) => "jetstream_unavailable",
        }
    }

    fn fault_code(&self) -> FaultCode {
        if self.status().is_server_error() {
            FaultCode::Server
        } else {
            FaultCode::Client
        }
    }
}

/// What the log line of a request carries besides the outcome.
#[derive(Default)]
struct Seen {
    org: Option<OrgId>,
    action: Option<String>,
    notifications: usize,
    stored: usize,
    duplicates: usize,
}

/// Handles one request. Never fails: every outcome is a SOAP response.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<Connection>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut request = InFlight::start(&conn);
    let result = process(req, &conn, &mut request.seen).await;
    request.answered = true;
    let (started, seen) = (request.started, &request.seen);
    let state = &conn.state;
    let response = match result {
        Ok(()) => {
            // A message whose notifications were all stored before is still acknowledged.
            let outcome = if seen.stored == 0 && seen.duplicates > 0 {
                "duplicate"
            } else {
                "ack"
            };
            state.metrics.request(200, outcome);
            tracing::info!(
                peer = %conn.peer,
                certificate = %conn.identity.fingerprint,
                org = seen.org.as_ref().map_or("", OrgId::as_str),
                action = seen.action.as_deref().unwrap_or(""),
                notifications = seen.notifications,
                stored = seen.stored,
                duplicates = seen.duplicates,
                outcome,
                status = 200,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
            xml(StatusCode::OK, Bytes::from_static(soap::ACK.as_bytes()))
        }
        Err(rejection) => {
            let status = rejection.status();
            state.metrics.request(status.as_u16(), rejection.label());
            tracing::warn!(
                peer = %conn.peer,
                certificate = %conn.identity.fingerprint,
                org = seen.org.as_ref().map_or("", OrgId::as_str),
                action = seen.action.as_deref().unwrap_or(""),
                notifications = seen.notifications,
                outcome = rejection.label(),
                status = status.as_u16(),
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                reason = %rejection,
                "request refused"
            );
            let mut response = xml(
                status,
                Bytes::from(soap::fault(rejection.fault_code(), &rejection.to_string())),
            );
            if let Rejection::MethodNotAllowed(_) = rejection {
                response
                    .headers_mut()
                    .insert(ALLOW, hyper::header::HeaderValue::from_static("POST"));
            }
            response
        }
    };
    Ok(response)
}

/// A request from its head to its answer: in flight while it lives. hyper drops a request
/// unfinished when its sender closes the connection (say, while the request waits for the
/// store); the drop still ends it, so the in-flight gauge and the connection's idle clock stay
/// right, and it is counted and logged as `client_closed` (status 499, as nginx logs it). A
/// request cut at the end of the shutdown grace period ends the same way as the process exits.
struct InFlight<'a> {
    conn: &'a Connection,
    started: Instant,
    seen: Seen,
    /// A response was produced (sent or not is hyper's business from there).
    answered: bool,
}

impl<'a> InFlight<'a> {
    fn start(conn: &'a Connection) -> InFlight<'a> {
        conn.hooks.request_started();
        conn.state.metrics.requests_in_flight.inc();
        InFlight {
            conn,
            started: Instant::now(),
            seen: Seen::default(),
            answered: false,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let conn = self.conn;
        if !self.answered {
            conn.state.metrics.request(499, "client_closed");
            tracing::warn!(
                peer = %conn.peer,
                certificate = %conn.identity.fingerprint,
                org = self.seen.org.as_ref().map_or("", OrgId::as_str),
                action = self.seen.action.as_deref().unwrap_or(""),
                notifications = self.seen.notifications,
                outcome = "client_closed",
                status = 499,
                duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "request ended without an answer: its sender closed the connection (or shutdown \
                 cut it after the grace period); nothing was acknowledged, so Salesforce resends \
                 it, and what the store committed anyway is counted then as duplicates"
            );
        }
        conn.hooks.request_finished();
        conn.state.metrics.requests_in_flight.dec();
    }
}

async fn process(
    req: Request<Incoming>,
    conn: &Connection,
    seen: &mut Seen,
) -> Result<(), Rejection> {
    let state = &conn.state;
    let limits = &state.config.limits;
    if req.uri().path() != state.config.listen.path {
        return Err(Rejection::NotFound {
            path: req.uri().path().chars().take(200).collect(),
            expected: state.config.listen.path.clone(),
        });
    }
    if req.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed(req.method().clone()));
    }
    if req.version() != hyper::Version::HTTP_11 {
        return Err(Rejection::HttpVersion(req.version()));
    }
    if let Some(enc) = req.headers().get(CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("(not text)").trim();
        if !enc.eq_ignore_ascii_case("identity") {
            return Err(Rejection::UnsupportedEncoding(
                enc.chars().take(40).collect(),
            ));
        }
    }
    // An early 413 from the declared length, before reading anything.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(Rejection::TooLarge {
            limit: limits.max_body_bytes,
        });
    }
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let collect = Limited::new(req.into_body(), limit).collect();
    let body = match tokio::time::timeout(limits.body_read_timeout, collect).await {
        Err(_) => return Err(Rejection::BodyTimeout(limits.body_read_timeout.as_secs())),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Rejection::TooLarge {
                limit: limits.max_body_bytes,
            });
        }
        Ok(Err(e)) => return Err(Rejection::BodyRead(e.to_string())),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let body_done = Instant::now();

    let message = soap::parse(&body)?;
    seen.org = Some(message.organization_id);
    seen.action = Some(message.action_id.to_string());
    seen.notifications = message.notifications.len();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = authz::Claims {
        org: &message.organization_id,
        action_id: &message.action_id,
        enterprise_url: message.enterprise_url.as_deref(),
        source: conn.peer.ip(),
    };
    authz::bind(
        &state.registry.snapshot(),
        &conn.identity.fingerprint,
        &claims,
        now,
    )?;

    let org = message.organization_id;
    let record = NewMessage {
        org: message.organization_id,
        action_id: message.action_id.into_owned(),
        certificate: conn.identity.fingerprint,
        peer: conn.peer_text.clone(),
        notifications: message
            .notifications
            .iter()
            .map(|n| NewNotification::new(&n.id, &n.object_type, &n.fields))
            .collect(),
    };
    // The JetStream documents are built before the store takes the message.
    let documents = state.jetstream.as_ref().map(|_| documents(&record));
    if let Some(store) = &state.store {
        let committed = store.commit(record).await?;
        seen.stored = committed.stored;
        seen.duplicates = committed.duplicates;
    }
    if let (Some(jetstream), Some(documents)) = (&state.jetstream, documents) {
        // After the store: a redelivery the store calls a duplicate is published again, in case
        // the first attempt stored but did not publish; JetStream drops it if it had it.
        let published = jetstream.publish(&org, documents).await?;
        state
            .metrics
            .published(published.stored, published.duplicates);
        if state.store.is_none() {
            seen.stored = published.stored;
            seen.duplicates = published.duplicates;
        }
    }
    state
        .metrics
        .ack_latency
        .observe(body_done.elapsed().as_secs_f64());
    Ok(())
}

/// One `(message ID, JSON document)` per notification, for JetStream.
fn documents(record: &NewMessage) -> Vec<(String, Bytes)> {
    let received_at = document::now_rfc3339();
    let fingerprint = record.certificate.to_hex();
    record
        .notifications
        .iter()
        .map(|n| {
            let id = document::message_id(record.org.as_str(), &n.id);
            let doc = Document {
                org_id: record.org.as_str(),
                action_id: &record.action_id,
                notification_id: &n.id,
                object_type: &n.object_type,
                fields_json: &n.fields_json,
                received_at: &received_at,
                certificate_sha256: &fingerprint,
            };
            (id, doc.to_bytes())
        })
        .collect()
}

fn xml(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE_XML),
    );
    response
}
