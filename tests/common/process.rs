#![allow(dead_code)]
//! The built binary as a child process, and a working directory with the shipped config.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub const BIN: &str = env!("CARGO_BIN_EXE_obm-gate");

/// A running `obm-gate serve` and the lines it logged.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn start(dir: &Path) -> Proc {
        Self::start_with_env(dir, &[])
    }

    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", "obm-gate.toml"])
            .envs(env.iter().copied())
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start obm-gate");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let address_in = |line: &str| -> SocketAddr {
            if line.starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                return v["address"].as_str().unwrap().parse().unwrap();
            }
            let a = line.split("address=").nth(1).unwrap();
            a.split_whitespace().next().unwrap().parse().unwrap()
        };
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("obm-gate did not log its listening addresses");
            if line.contains("admin listening") {
                admin = Some(address_in(&line));
            } else if line.contains("obm_gate::listener: listening")
                || (line.contains("\"message\":\"listening\""))
            {
                addr = Some(address_in(&line));
            }
        }
        Proc {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            lines,
        }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit by itself and returns its status code.
    pub fn wait_exit(mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < end, "the process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

/// A test that fails before its `kill` still stops its server (no receiver is left behind
/// holding its store and using CPU while the other tests run).
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A working directory with the shipped config, pointed at port 0.
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/obm-gate.toml"))
            .unwrap();
    let config = shipped
        .replace("address = \"0.0.0.0:8443\"", "address = \"127.0.0.1:0\"")
        .replace("address = \"127.0.0.1:9090\"", "address = \"127.0.0.1:0\"");
    assert_ne!(
        config, shipped,
        "the shipped config should listen on 0.0.0.0:8443"
    );
    std::fs::write(dir.path().join("obm-gate.toml"), config).unwrap();
    std::fs::create_dir_all(dir.path().join("certs/orgs")).unwrap();
    dir
}

pub fn server_cert(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("certs/server/server.pem")).unwrap()
}
