//! The PROXY protocol (v1 text and v2 binary), read before the TLS handshake when the receiver
//! sits behind an L4 load balancer. Exactly the header's bytes are consumed, so the TLS
//! ClientHello that follows is untouched.

use std::net::SocketAddr;

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// We accept v2 headers up to this size (address block plus TLVs); load balancers send far less.
const V2_MAX: usize = 16 + 512;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header (it is required on this listener)")]
    Missing,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("connection failed while reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one PROXY header from `tcp` and returns the client address it names, or `None` when
/// the header carries no address (v2 LOCAL, v1 UNKNOWN: the balancer's own health checks).
pub async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut buf = [0u8; V2_MAX];
    tcp.read_exact(&mut buf[..12]).await?;
    if &buf[..12] == V2_SIGNATURE {
        tcp.read_exact(&mut buf[12..16]).await?;
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if 16 + len > V2_MAX {
            return Err(ProxyError::Invalid(format!(
                "v2 header of {len} bytes is too long"
            )));
        }
        tcp.read_exact(&mut buf[16..16 + len]).await?;
        let header = v2::Header::try_from(&buf[..16 + len])
            .map_err(|e| ProxyError::Invalid(e.to_string()))?;
        return Ok(match header.addresses {
            v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            _ => None,
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    // v1: read up to the CRLF, one byte at a time so nothing after it is consumed.
    let mut n = 12;
    while !buf[..n].ends_with(b"\r\n") {
        if n == V1_MAX {
            return Err(ProxyError::Invalid(
                "v1 header longer than 107 bytes".into(),
            ));
        }
        tcp.read_exact(&mut buf[n..n + 1]).await?;
        n += 1;
    }
    let header = v1::Header::try_from(&buf[..n]).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    })
}
