//! Malformed and hostile bodies over the real wire: each gets a 4xx SOAP fault with a precise
//! reason, nothing is stored, nothing panics, memory stays bounded, and a legitimate sender on
//! its own connection keeps being acknowledged in between.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Writes `head` and then `body` (in a task, ignoring write errors: the server may stop reading
/// early), and reads the response: status and body.
async fn raw(client: &Client, head: String, body: Vec<u8>) -> (u16, String) {
    let tls = client.connect_raw().await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        for chunk in body.chunks(64 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.flush().await;
        wr // keep the write half open until the response is read
    });
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let n = tokio::time::timeout_at(deadline.into(), rd.read(&mut tmp))
            .await
            .expect("response in time")
            .unwrap_or(0);
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                break (head[9..12].parse().unwrap(), body[..len].to_owned());
            }
        }
        assert!(n > 0, "connection closed before a full response: {text:?}");
    };
    writer.abort();
    (status, body)
}

fn head(method: &str, version: &str, extra: &str, len: Option<usize>) -> String {
    let framing = match len {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    format!(
        "{method} /obm {version}\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nSOAPAction: \"\"\r\n{extra}{framing}\r\n"
    )
}

/// A request head and body.
type Wire = (String, Vec<u8>);
/// A name, what is sent, the expected status, and what the faultstring must say.
type Case = (&'static str, Wire, u16, &'static str);

fn post(body: &[u8]) -> Wire {
    (
        head("POST", "HTTP/1.1", "", Some(body.len())),
        body.to_vec(),
    )
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(chunk) {
        out.extend(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend(c);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n\r\n");
    out
}

fn faultstring(body: &str) -> String {
    Reply {
        status: 0,
        content_type: String::new(),
        body: body.to_owned(),
    }
    .faultstring()
}

#[tokio::test]
async fn hostile_bodies_get_precise_faults_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let id = self_signed(Spec::new(Key::EcdsaP256, "a"));
    server.register(ORG_A, "a", &id);
    let client = server.client(Some(&id));
    let mut legit = client.connect().await.unwrap();
    let mut legit_sent = 0;

    let valid = String::from_utf8(message(ORG_A, &[nid(900)])).unwrap();
    let huge = vec![b'x'; 50 * 1024 * 1024];
    let many: Vec<String> = (0..101).map(|i| nid(1000 + i)).collect();
    let mut invalid_utf8 = valid.clone().into_bytes();
    invalid_utf8[300] = 0xff;

    let cases: Vec<Case> = vec![
        (
            "XXE external entity",
            post(br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#),
            400,
            "DTD",
        ),
        (
            "billion laughs",
            post(br#"<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><l>&c;</l>"#),
            400,
            "DTD",
        ),
        (
            "10,000 levels of nesting",
            // In the SOAP Header, which the parser skips: the skip itself is depth-bounded.
            post(
                format!(
                    r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>{}{}</s:Header></s:Envelope>"#,
                    "<a>".repeat(10_000),
                    "</a>".repeat(10_000)
                )
                .as_bytes(),
            ),
            400,
            "nested deeper than 32",
        ),
        ("101 notifications", post(&message(ORG_A, &many)), 400, "more than 100 notifications"),
        (
            "50 MB with Content-Length",
            (head("POST", "HTTP/1.1", "", Some(huge.len())), huge.clone()),
            413,
            "larger than the limit of 8388608 bytes",
        ),
        (
            "50 MB chunked, no Content-Length",
            (head("POST", "HTTP/1.1", "", None), chunked(&huge, 1 << 20)),
            413,
            "larger than the limit of 8388608 bytes",
        ),
        (
            "Content-Encoding: gzip",
            (head("POST", "HTTP/1.1", "Content-Encoding: gzip\r\n", Some(20)), vec![0x1f; 20]),
            415,
            "Content-Encoding gzip is not supported",
        ),
        ("invalid UTF-8", post(&invalid_utf8), 400, "not valid UTF-8 (first bad byte at offset 300)"),
        ("truncated body", post(&valid.as_bytes()[..valid.len() / 2]), 400, "truncated"),
        (
            "wrong namespace",
            post(valid.replace("http://soap.sforce.com/2005/09/outbound", "urn:wrong").as_bytes()),
            400,
            "found <notifications> in another namespace",
        ),
        (
            "missing OrganizationId",
            post(valid.replace(&format!("<OrganizationId>{ORG_A}</OrganizationId>"), "").as_bytes()),
            400,
            "<notifications> has no <OrganizationId>",
        ),
        (
            "SOAP 1.2 envelope",
            post(valid.replace("http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope").as_bytes()),
            400,
            "SOAP 1.2 envelope is not supported",
        ),
        (
            "wrong method",
            (head("PUT", "HTTP/1.1", "", Some(valid.len())), valid.clone().into_bytes()),
            405,
            "method PUT is not allowed",
        ),
        (
            "wrong path",
            (
                head("POST", "HTTP/1.1", "", Some(valid.len())).replace("/obm", "/admin"),
                valid.clone().into_bytes(),
            ),
            404,
            "no Outbound Message endpoint at /admin",
        ),
        (
            "HTTP/1.0",
            (head("POST", "HTTP/1.0", "", Some(valid.len())), valid.clone().into_bytes()),
            400,
            "HTTP/1.0 is not supported",
        ),
    ];

    let rss_before = rss_kib();
    for (name, (head, body), status, reason) in cases {
        let (got, reply) = raw(&client, head, body).await;
        assert_eq!(got, status, "{name}: {reply}");
        assert!(
            reply.starts_with("<?xml") && reply.contains("<soapenv:Fault>"),
            "{name}: not a SOAP fault: {reply}"
        );
        let f = faultstring(&reply);
        assert!(
            f.contains(reason),
            "{name}: faultstring {f:?} lacks {reason:?}"
        );
        // The legitimate sender is still acknowledged, on its own keep-alive connection.
        legit_sent += 1;
        let started = Instant::now();
        assert!(
            legit
                .post(&message(ORG_A, &[nid(legit_sent)]))
                .await
                .unwrap()
                .is_ack(),
            "after {name}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "after {name}: ack took {:?}",
            started.elapsed()
        );
    }
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "memory grew by {grown_mib} MiB over the hostile bodies"
    );
    // Only the legitimate notifications were stored.
    assert_eq!(server.stored().len(), legit_sent);

    // Chunked transfer encoding is accepted and parsed like any other body.
    let body = message(ORG_A, &[nid(5000), nid(5001)]);
    let (status, reply) = raw(
        &client,
        head("POST", "HTTP/1.1", "", None),
        chunked(&body, 7),
    )
    .await;
    assert_eq!((status, reply.as_str()), (200, obm_gate::soap::ACK));
    let stored = server.stored();
    assert_eq!(stored.len(), legit_sent + 2);
    assert_eq!(stored[legit_sent].notification_id, nid(5000));
    assert_eq!(stored[legit_sent].fields["LastName"], "Black");
    server.stop().await;
}
