//! Hot reload, without a restart and without dropping connections.
//!
//! The registry directory and the directories of the server certificate and key are watched
//! (inotify, through `notify`); SIGHUP forces a reload too. A reload builds a whole new registry
//! snapshot and swaps it in; connections already established keep running, and the request path
//! checks every request against the new snapshot. A server certificate that fails to load leaves
//! the previous one in place. Certificates close to expiry are logged at start and daily.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::http::AppState;
use crate::registry::{Snapshot, format_time};
use crate::tls::{self, ServerCert};

/// Changes arrive as bursts (a copy is create + writes + close); wait this long for the burst
/// to end before reading.
const DEBOUNCE: Duration = Duration::from_millis(200);
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// Change notifications for the registry directory and the server certificate's files.
/// Created before the registry is first read, so no change after that read is missed.
pub struct Watch {
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
}

impl Watch {
    pub fn start(registry_dir: &Path, tls: &crate::config::Tls) -> Watch {
        let (tx, events) = mpsc::unbounded_channel();
        Watch {
            _watcher: watcher(registry_dir, tls, tx),
            events,
        }
    }
}

/// Runs until `stop` is cancelled.
pub async fn run(
    state: Arc<AppState>,
    server_cert: Arc<ServerCert>,
    watch: Watch,
    stop: CancellationToken,
) {
    let Watch {
        _watcher,
        events: mut rx,
    } = watch;
    let mut hangup = hangup_signal();
    let mut expiry = tokio::time::interval(EXPIRY_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = expiry.tick() => log_expiring(&state),
            Some(()) = rx.recv() => {
                // Let the burst finish, then read once.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                reload(&state, &server_cert, "file change");
            }
            Some(()) = recv_hangup(&mut hangup) => reload(&state, &server_cert, "SIGHUP"),
        }
    }
}

/// Re-reads the registry and the server certificate.
pub fn reload(state: &AppState, server_cert: &ServerCert, why: &str) {
    match state.registry.reload() {
        Ok(s) => tracing::info!(trigger = why, certificates = s.len(), "registry reloaded"),
        Err(e) => {
            tracing::error!(trigger = why, error = %e, "registry reload failed; the previous registry stays in force")
        }
    }
    let tls = &state.config.tls;
    match tls::load_certified_key(&tls.certificate, &tls.private_key) {
        Ok(key) => server_cert.replace(key),
        Err(e) => tracing::error!(
            trigger = why,
            error = %e,
            "server certificate reload failed; the previous certificate stays in place"
        ),
    }
}

fn watcher(
    registry_dir: &Path,
    tls: &crate::config::Tls,
    tx: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        // Our own reads show up as access events; only changes matter.
        if let Ok(e) = event
            && !matches!(e.kind, EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch for changes; reload with SIGHUP");
            return None;
        }
    };
    let mut dirs: Vec<(PathBuf, RecursiveMode)> =
        vec![(registry_dir.to_owned(), RecursiveMode::Recursive)];
    for file in [&tls.certificate, &tls.private_key] {
        let dir = parent_dir(file);
        if !dirs.iter().any(|(d, _)| *d == dir) {
            dirs.push((dir, RecursiveMode::NonRecursive));
        }
    }
    for (dir, mode) in dirs {
        match watcher.watch(&dir, mode) {
            Ok(()) => tracing::debug!(dir = %dir.display(), "watching for changes"),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot watch; reload with SIGHUP")
            }
        }
    }
    Some(watcher)
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Logs a warning for each certificate expiring within `expiry_warning_days` and an error
/// within `expiry_error_days` (or already expired).
pub fn log_expiring(state: &AppState) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    check_expiry(
        &state.registry.snapshot(),
        state.config.registry.expiry_warning_days as i64,
        state.config.registry.expiry_error_days as i64,
        now,
    );
}

fn check_expiry(snapshot: &Snapshot, warn_days: i64, error_days: i64, now: i64) {
    for r in snapshot.iter() {
        let days = r.cert.days_left(now);
        let orgs: Vec<&str> = r.orgs.iter().map(|o| o.as_str()).collect();
        let orgs = orgs.join(",");
        let not_after = format_time(r.cert.not_after);
        if days < error_days {
            tracing::error!(
                org = %orgs,
                certificate = %r.cert.fingerprint,
                subject = %r.cert.subject,
                not_after = %not_after,
                days_left = days,
                "client certificate expires within {error_days} days (or has expired): rotate it now"
            );
        } else if days < warn_days {
            tracing::warn!(
                org = %orgs,
                certificate = %r.cert.fingerprint,
                subject = %r.cert.subject,
                not_after = %not_after,
                days_left = days,
                "client certificate expires within {warn_days} days"
            );
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn recv_hangup(h: &mut Hangup) -> Option<()> {
    match h {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
