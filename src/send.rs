//! `obm-gate send`: a Salesforce-like sender, to test a deployment end to end. One HTTP/1.1
//! POST over mutual TLS with `Content-Type: text/xml; charset=utf-8` and `SOAPAction: ""`.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

use crate::soap::{self, Reply};
use crate::tls;

pub struct Options {
    pub url: String,
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
    pub password: String,
    pub ca: Option<PathBuf>,
    pub body: Vec<u8>,
    pub timeout: std::time::Duration,
}

#[derive(Debug)]
pub struct Report {
    pub status: u16,
    pub protocol: &'static str,
    pub cipher: String,
    pub reply: Reply,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("--url: {0}")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Handshake(String, std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {0:?} (Salesforce gives up after 60 s)")]
    Timeout(std::time::Duration),
}

pub async fn send(opts: Options) -> Result<Report, SendError> {
    let timeout = opts.timeout;
    tokio::time::timeout(timeout, send_inner(opts))
        .await
        .map_err(|_| SendError::Timeout(timeout))?
}

async fn send_inner(opts: Options) -> Result<Report, SendError> {
    let uri: hyper::Uri = opts
        .url
        .parse()
        .map_err(|e| SendError::Url(format!("{e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(SendError::Url(
            "only https:// URLs (Outbound Messages with client certificates need TLS)".into(),
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| SendError::Url("no host".into()))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let creds = tls::load_client_credentials(&opts.cert, opts.key.as_deref(), &opts.password)?;
    let config = tls::client_config(creds, opts.ca.as_deref())?;
    let target = format!("{host}:{port}");
    let tcp = TcpStream::connect(&target)
        .await
        .map_err(|e| SendError::Connect(target.clone(), e))?;
    let (stream, protocol, cipher) = tls::connect(config, &host, tcp)
        .await
        .map_err(|e| SendError::Handshake(target.clone(), e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = hyper::Request::post(path)
        .header("host", &host)
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", "\"\"")
        .header(
            "user-agent",
            concat!("obm-gate-send/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(opts.body)))
        .map_err(|e| SendError::Http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| {
        SendError::Http(format!(
            "{e} (the server may have refused the client certificate)"
        ))
    })?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| SendError::Http(e.to_string()))?
        .to_bytes();
    Ok(Report {
        status,
        protocol,
        cipher,
        reply: soap::parse_reply(&body),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
