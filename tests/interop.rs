//! Interop with real clients that are not ours: curl, openssl s_client, Python's ssl and
//! http.client, and Java 17's HttpsURLConnection with a PKCS#12 key store (Salesforce's sender
//! runs on the JVM). Each is acknowledged with a registered RSA-2048 certificate and refused in
//! the handshake with none or an unregistered one; Java's second connection resumes the first's
//! session with the receiver's ticket, as the server counts it.

mod common;

use std::time::Duration;

use common::*;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(5);

/// Runs a command; returns whether it succeeded and everything it printed.
async fn run(cmd: &mut Command) -> (bool, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("client finished in time")
        .expect("client installed (.ci/run installs curl, openssl, python3 and a JDK)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

struct Setup {
    server: TestServer,
    dir: tempfile::TempDir,
    url: String,
}

/// A server, a registered RSA-2048 rcgen certificate (`rsa`), a registered `openssl req -x509`
/// certificate with CA:TRUE (`x509`), an unregistered one (`stranger`), and a message file.
async fn setup() -> Setup {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(
        server.dir.path().join("server/server.pem"),
        d.join("server.pem"),
    )
    .unwrap();
    for (name, registered) in [("rsa", true), ("stranger", false)] {
        let id = self_signed(Spec::new(Key::Rsa2048, name));
        std::fs::write(d.join(format!("{name}.pem")), &id.cert_pem).unwrap();
        std::fs::write(d.join(format!("{name}.key")), &id.key_pem).unwrap();
        if registered {
            write_registered(&server.orgs_dir(), ORG_A, name, &id);
        }
    }
    let (ok, out) = run(Command::new("openssl").current_dir(d).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "x509.key",
        "-out",
        "x509.pem",
        "-days",
        "30",
        "-subj",
        "/CN=admin-made/O=Acme",
    ]))
    .await;
    assert!(ok, "{out}");
    std::fs::copy(
        d.join("x509.pem"),
        server.orgs_dir().join(ORG_A).join("x509.pem"),
    )
    .unwrap();
    server.state.registry.reload().unwrap();
    std::fs::write(d.join("msg.xml"), message(ORG_A, &[nid(1)])).unwrap();
    let url = format!("https://127.0.0.1:{}/obm", server.addr.port());
    Setup { server, dir, url }
}

async fn refused(server: &TestServer, reason: &'static str, before: u64) {
    let metrics = server.state.metrics.clone();
    eventually(&format!("handshake refused as {reason}"), WAIT, || {
        metrics.handshakes_with("refused", reason) > before
    })
    .await;
}

fn count(server: &TestServer, reason: &'static str) -> u64 {
    server.state.metrics.handshakes_with("refused", reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl() {
    let s = setup().await;
    let d = s.dir.path();
    let curl = |version: &str, cert: Option<&str>| {
        let mut c = Command::new("curl");
        c.current_dir(d)
            .args(["-sS", "--cacert", "server.pem", version, "--tls-max"]);
        c.arg(if version == "--tlsv1.2" { "1.2" } else { "1.3" });
        c.args([
            "-H",
            "Content-Type: text/xml; charset=utf-8",
            "-H",
            "SOAPAction: \"\"",
        ]);
        c.args(["--data-binary", "@msg.xml", "-w", "\n%{http_code}", &s.url]);
        if let Some(name) = cert {
            c.args([
                "--cert",
                &format!("{name}.pem"),
                "--key",
                &format!("{name}.key"),
            ]);
        }
        c
    };
    for version in ["--tlsv1.2", "--tlsv1.3"] {
        for name in ["rsa", "x509"] {
            let (ok, out) = run(&mut curl(version, Some(name))).await;
            assert!(
                ok && out.contains(obm_gate::soap::ACK) && out.ends_with("\n200"),
                "curl {version} {name}: {out}"
            );
        }
        let before = count(&s.server, "no_certificate");
        let (ok, out) = run(&mut curl(version, None)).await;
        assert!(!ok, "curl {version} without a certificate: {out}");
        refused(&s.server, "no_certificate", before).await;
        let before = count(&s.server, "unknown");
        let (ok, out) = run(&mut curl(version, Some("stranger"))).await;
        assert!(
            !ok,
            "curl {version} with an unregistered certificate: {out}"
        );
        refused(&s.server, "unknown", before).await;
    }
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client() {
    let s = setup().await;
    let d = s.dir.path();
    let body = std::fs::read_to_string(d.join("msg.xml")).unwrap();
    let request = format!(
        "POST /obm HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nSOAPAction: \"\"\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::fs::write(d.join("request.http"), request).unwrap();
    let port = s.server.addr.port().to_string();
    let s_client = |flags: &[&str]| {
        let mut c = Command::new("openssl");
        c.current_dir(d)
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .args(["-CAfile", "server.pem", "-ign_eof", "-quiet"])
            .args(flags)
            .stdin(std::fs::File::open(d.join("request.http")).unwrap());
        c
    };
    for version in ["-tls1_2", "-tls1_3"] {
        let (_, out) = run(&mut s_client(&[
            version, "-cert", "rsa.pem", "-key", "rsa.key",
        ]))
        .await;
        assert!(
            out.contains("HTTP/1.1 200") && out.contains(obm_gate::soap::ACK),
            "s_client {version}: {out}"
        );
        let before = count(&s.server, "no_certificate");
        let (_, out) = run(&mut s_client(&[version])).await;
        assert!(
            !out.contains("HTTP/1.1 200"),
            "s_client {version} without a certificate: {out}"
        );
        refused(&s.server, "no_certificate", before).await;
        let before = count(&s.server, "unknown");
        let (_, out) = run(&mut s_client(&[
            version,
            "-cert",
            "stranger.pem",
            "-key",
            "stranger.key",
        ]))
        .await;
        assert!(!out.contains("HTTP/1.1 200"), "{out}");
        refused(&s.server, "unknown", before).await;
    }
    // TLS 1.0 and 1.1 (allowed on the client side with SECLEVEL=0) are refused by the server.
    for version in ["-tls1", "-tls1_1"] {
        let before = count(&s.server, "protocol");
        let (ok, out) = run(&mut s_client(&[
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-cert",
            "rsa.pem",
            "-key",
            "rsa.key",
        ]))
        .await;
        // rustls answers an old-version ClientHello with a handshake_failure alert.
        let alert =
            out.contains("alert protocol version") || out.contains("alert handshake failure");
        assert!(
            !ok && alert && !out.contains("HTTP/1.1"),
            "s_client {version}: {out}"
        );
        refused(&s.server, "protocol", before).await;
    }
    s.server.stop().await;
}

const PYTHON_CLIENT: &str = r#"
import http.client, ssl, sys
url_port, cert, key, version = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile="server.pem")
v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
ctx.minimum_version = v
ctx.maximum_version = v
if cert != "-":
    ctx.load_cert_chain(cert, key)
conn = http.client.HTTPSConnection("127.0.0.1", url_port, context=ctx, timeout=10)
body = open("msg.xml", "rb").read()
conn.request("POST", "/obm", body, {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})
r = conn.getresponse()
print(r.status)
print(r.read().decode())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ssl_http_client() {
    let s = setup().await;
    let d = s.dir.path();
    std::fs::write(d.join("client.py"), PYTHON_CLIENT).unwrap();
    let port = s.server.addr.port().to_string();
    let python = |cert: &str, key: &str, v: &str| {
        let mut c = Command::new("python3");
        c.current_dir(d).args(["client.py", &port, cert, key, v]);
        c
    };
    for v in ["1.2", "1.3"] {
        for name in ["rsa", "x509"] {
            let (ok, out) = run(&mut python(
                &format!("{name}.pem"),
                &format!("{name}.key"),
                v,
            ))
            .await;
            assert!(
                ok && out.starts_with("200\n") && out.contains(obm_gate::soap::ACK),
                "python {v} {name}: {out}"
            );
        }
        let before = count(&s.server, "no_certificate");
        let (ok, out) = run(&mut python("-", "-", v)).await;
        assert!(!ok, "python {v} without a certificate: {out}");
        refused(&s.server, "no_certificate", before).await;
        let before = count(&s.server, "unknown");
        let (ok, out) = run(&mut python("stranger.pem", "stranger.key", v)).await;
        assert!(!ok, "{out}");
        refused(&s.server, "unknown", before).await;
    }
    s.server.stop().await;
}

const JAVA_CLIENT: &str = r#"
import java.io.*;
import java.net.URL;
import java.nio.file.*;
import java.security.KeyStore;
import javax.net.ssl.*;

public class Client {
    public static void main(String[] args) throws Exception {
        String url = args[0], keyStore = args[1], trustStore = args[2];
        int times = args.length > 3 ? Integer.parseInt(args[3]) : 1;
        char[] pass = "changeit".toCharArray();
        KeyManager[] kms = null;
        if (!keyStore.equals("-")) {
            KeyStore ks = KeyStore.getInstance("PKCS12");
            try (InputStream in = new FileInputStream(keyStore)) { ks.load(in, pass); }
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(ks, pass);
            kms = kmf.getKeyManagers();
        }
        KeyStore ts = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(trustStore)) { ts.load(in, pass); }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ts);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kms, tmf.getTrustManagers(), null);
        // One context: a later connection may resume the session of an earlier one.
        for (int i = 0; i < times; i++) {
            HttpsURLConnection c = (HttpsURLConnection) new URL(url).openConnection();
            c.setSSLSocketFactory(ctx.getSocketFactory());
            c.setRequestMethod("POST");
            c.setDoOutput(true);
            c.setRequestProperty("Content-Type", "text/xml; charset=utf-8");
            c.setRequestProperty("SOAPAction", "\"\"");
            // Each message on a connection of its own.
            c.setRequestProperty("Connection", "close");
            try (OutputStream out = c.getOutputStream()) { out.write(Files.readAllBytes(Paths.get("msg.xml"))); }
            int code = c.getResponseCode();
            InputStream body = code < 400 ? c.getInputStream() : c.getErrorStream();
            System.out.println(code);
            System.out.println(new String(body.readAllBytes(), "UTF-8"));
        }
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_https_url_connection_with_pkcs12() {
    let s = setup().await;
    let d = s.dir.path();
    std::fs::write(d.join("Client.java"), JAVA_CLIENT).unwrap();
    let pkcs12 = |name: &str| {
        let mut c = Command::new("openssl");
        c.current_dir(d).args([
            "pkcs12",
            "-export",
            "-in",
            &format!("{name}.pem"),
            "-inkey",
            &format!("{name}.key"),
        ]);
        c.args(["-out", &format!("{name}.p12"), "-passout", "pass:changeit"]);
        c
    };
    for name in ["rsa", "x509", "stranger"] {
        let (ok, out) = run(&mut pkcs12(name)).await;
        assert!(ok, "{out}");
    }
    let (ok, out) = run(Command::new("keytool").current_dir(d).args([
        "-importcert",
        "-noprompt",
        "-alias",
        "server",
        "-file",
        "server.pem",
        "-keystore",
        "trust.p12",
        "-storetype",
        "PKCS12",
        "-storepass",
        "changeit",
    ]))
    .await;
    assert!(ok, "{out}");
    let java = |keystore: &str| {
        let mut c = Command::new("java");
        c.current_dir(d)
            .args(["Client.java", &s.url, keystore, "trust.p12"]);
        c
    };
    for name in ["rsa", "x509"] {
        let (full, resumed) = s.server.handshakes();
        // Two connections in one JVM: the second resumes the first's session with its ticket.
        let (ok, out) = run(java(&format!("{name}.p12")).arg("2")).await;
        assert!(
            ok && out.matches("200\n").count() == 2
                && out.matches(obm_gate::soap::ACK).count() == 2,
            "java {name}: {out}"
        );
        let (full_after, resumed_after) = s.server.handshakes();
        assert_eq!(
            (full_after - full, resumed_after - resumed),
            (1, 1),
            "java {name}: one full handshake, then one resumed"
        );
    }
    let before = count(&s.server, "no_certificate");
    let (ok, out) = run(&mut java("-")).await;
    assert!(!ok, "java without a certificate: {out}");
    refused(&s.server, "no_certificate", before).await;
    let before = count(&s.server, "unknown");
    let (ok, out) = run(&mut java("stranger.p12")).await;
    assert!(!ok, "{out}");
    refused(&s.server, "unknown", before).await;
    assert_eq!(
        s.server.stored().len(),
        1,
        "every client sent the same notification: stored once"
    );
    s.server.stop().await;
}
