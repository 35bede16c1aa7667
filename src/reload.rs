//! Hot reload, without a restart and without dropping connections.
//!
//! The registry directory and the directories of the server certificate and key, and of the
//! NATS credential file, are watched (inotify, through `notify`); SIGHUP forces a reload too. A
//! reload builds a whole new registry snapshot and swaps it in; connections already established
//! keep running, and the request path checks every request against the new snapshot. A server
//! certificate that fails to load leaves the previous one in place. A renewed NATS credential
//! file is put in use at once, over a new connection, once NATS accepts it; a file that cannot
//! be used, or that NATS refuses, is logged at once and leaves the connection in use alone.
//! Client certificates, the server's chain and the NATS JWT close to expiry are logged at start
//! and daily.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::http::AppState;
use crate::registry::{CertInfo, Snapshot, format_time};
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
    pub fn start(config: &crate::Config) -> Watch {
        let (tx, events) = mpsc::unbounded_channel();
        let tls = &config.tls;
        let js = &config.jetstream;
        let files: Vec<&Path> = [&tls.certificate, &tls.private_key]
            .into_iter()
            .chain(js.nkey_seed_file.as_ref())
            .chain(js.credentials_file.as_ref())
            .map(PathBuf::as_path)
            .collect();
        Watch {
            _watcher: watcher(&config.registry.directory, &files, tx),
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
            _ = expiry.tick() => {
                log_expiring(&state);
                check_server_certificate(&state, &server_cert);
                check_nats_credentials(&state, Check::Daily).await;
            }
            Some(()) = rx.recv() => {
                // Let the burst finish, then read once.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                reload(&state, &server_cert, Trigger::FileChange).await;
            }
            Some(()) = recv_hangup(&mut hangup) => reload(&state, &server_cert, Trigger::Hangup).await,
        }
    }
}

/// Re-reads the registry, the server certificate and the NATS credential file (a renewed one
/// is put in use, which waits for NATS to accept it: at most the connect timeout).
pub async fn reload(state: &AppState, server_cert: &ServerCert, why: Trigger) {
    check_nats_credentials(state, Check::Reload(why)).await;
    match state.registry.reload() {
        Ok(s) => tracing::info!(
            trigger = why.as_str(),
            certificates = s.len(),
            "registry reloaded"
        ),
        Err(e) => {
            tracing::error!(trigger = why.as_str(), error = %e, "registry reload failed; the previous registry stays in force")
        }
    }
    let tls = &state.config.tls;
    match tls::load_certified_key(&tls.certificate, &tls.private_key) {
        Ok(key) => {
            if server_cert.replace(key) {
                tracing::info!(
                    trigger = why.as_str(),
                    certificate = %tls.certificate.display(),
                    "server certificate replaced: new handshakes get it"
                );
                check_server_certificate(state, server_cert);
            }
            // On every reload, not only with a new certificate: a `chmod` of the key alone
            // changes no certificate, and is itself a change the watcher reports.
            warn_loose_permissions("[tls] private_key", &tls.private_key);
        }
        Err(e) => tracing::error!(
            trigger = why.as_str(),
            error = %e,
            "server certificate reload failed; the previous certificate stays in place"
        ),
    }
}

fn watcher(
    registry_dir: &Path,
    files: &[&Path],
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
    for file in files {
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

/// A NATS user JWT expiring sooner than this is logged as a warning.
const NATS_JWT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// When [`check_nats_credentials`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// At start and daily: the JWT's expiry is logged whatever it is.
    Daily,
    /// A reload: the expiry is logged when the file was renewed.
    Reload(Trigger),
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file or the registry directory changed. A renewed NATS credential file that
    /// NATS already refused is not tried again: the change was somewhere else.
    FileChange,
    /// SIGHUP: the operator asks for everything to be read and tried again.
    Hangup,
}

impl Trigger {
    /// As the reload's log lines name it (`trigger="SIGHUP"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file change",
            Trigger::Hangup => "SIGHUP",
        }
    }
}

/// Reads `[jetstream] nkey_seed_file` or `credentials_file` as the next connect to NATS will,
/// logs a file that connect could not use, and exports whether the file is usable.
///
/// A renewed file (one whose JWT or seed is not the connection's) is put in use at once: a new
/// connection is opened with it, publishing moves there once NATS has accepted it, and the old
/// connection closes when its publishes are confirmed. If NATS refuses the renewed file, that
/// is logged as an error and the connection in use stays, until NATS drops it. A refused file
/// is tried again when it changes, on SIGHUP, and daily, not on reloads for other files.
///
/// Then the JWT's expiry is exported, and logged (a warning within 30 days, an error once it
/// has expired). A file that cannot be used leaves the exported expiry as it was: it still
/// describes the connection in use.
pub async fn check_nats_credentials(state: &AppState, when: Check) {
    let Some(publisher) = state.jetstream.as_ref() else {
        return;
    };
    let Some(file) = publisher.credential_file() else {
        return;
    };
    let broken = &state.metrics.jetstream_credentials_file_broken;
    let credential = match file.read() {
        Ok(c) => c,
        Err(e) => {
            broken.set(1);
            tracing::error!(error = %e, "the next connect to NATS cannot authenticate: fix the file; the connection in use goes on until NATS drops it");
            return;
        }
    };
    let renewed = publisher.is_renewed(&credential);
    if renewed {
        if when == Check::Reload(Trigger::FileChange) && publisher.was_refused(&credential) {
            // Refused and logged already; each try waits for NATS (up to the connect timeout).
            broken.set(1);
            return;
        }
        warn_loose_permissions(file.setting(), file.path());
        if let Err(e) = publisher.reconnect(&credential).await {
            broken.set(1);
            tracing::error!(
                nkey = %credential.nkey,
                error = %e,
                "NATS refused the renewed {}: publishing goes on over the connection in use, \
                 with the credentials it was opened with, until NATS drops it; fix the file",
                file.describe()
            );
            return;
        }
        tracing::info!(
            nkey = %credential.nkey,
            "publishing moved to a new connection to NATS, opened with the renewed {}; the \
             previous connection closes once its publishes are confirmed",
            file.describe()
        );
    }
    broken.set(0);
    let gauge = &state.metrics.jetstream_credentials_expiry;
    gauge.clear();
    let Some(expires) = credential.expires else {
        return;
    };
    let labels = crate::metrics::NatsUserLabels {
        nkey: credential.nkey.clone(),
    };
    gauge
        .get_or_create(&labels)
        .set(i64::try_from(expires).unwrap_or(i64::MAX));
    if when != Check::Daily && !renewed {
        return;
    }
    let at = UNIX_EPOCH + Duration::from_secs(expires);
    let stamp = humantime::format_rfc3339_seconds(at);
    match at.duration_since(SystemTime::now()) {
        Err(_) => tracing::error!(
            nkey = %credential.nkey,
            expires = %stamp,
            "the NATS user JWT of {} has expired: NATS refuses it; renew the file (obm-gate \
             puts a renewed file in use at once)",
            file.describe()
        ),
        Ok(left) if left < NATS_JWT_EXPIRY_WARNING => tracing::warn!(
            nkey = %credential.nkey,
            expires = %stamp,
            "the NATS user JWT of {} expires in {} days: renew the file before, or publishing \
             stops (obm-gate puts a renewed file in use at once)",
            file.describe(),
            left.as_secs() / 86_400
        ),
        Ok(_) => tracing::info!(
            nkey = %credential.nkey,
            expires = %stamp,
            "the NATS user JWT of {}",
            file.describe()
        ),
    }
}

/// Logs a warning when the secret file `path` (of the config key `setting`) may be read by
/// every user of the machine, or changed by its group.
pub fn warn_loose_permissions(setting: &str, path: &Path) {
    if let Some(mode) = crate::config::loose_permissions(path) {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{mode:04o}"),
            "{setting}: every user of this machine can read or change this secret file; make it \
             readable by obm-gate's user alone (chmod 600, or 640 for a group of readers; a \
             Kubernetes secret volume: defaultMode 0400)"
        );
    }
}

/// Exports when the first certificate of the served chain expires, and logs it within `[tls]
/// expiry_warning_days` and `expiry_error_days`: when the certificate Salesforce checks
/// expires, every delivery fails.
pub fn check_server_certificate(state: &AppState, server_cert: &ServerCert) {
    let chain: Vec<CertInfo> = server_cert
        .chain()
        .into_iter()
        .filter_map(|der| CertInfo::from_der(der).ok())
        .collect();
    let (Some(leaf), Some(first)) = (chain.first(), chain.iter().min_by_key(|c| c.not_after))
    else {
        return;
    };
    state.metrics.server_certificate_expiry.set(first.not_after);
    let now = unix_now();
    let days = first.days_left(now);
    let tls = &state.config.tls;
    let which = if std::ptr::eq(first, leaf) {
        String::new()
    } else {
        format!(" (its chain's {})", first.subject)
    };
    let file = state.config.tls.certificate.display();
    let not_after = format_time(first.not_after);
    if days < tls.expiry_error_days as i64 {
        tracing::error!(
            certificate = %leaf.fingerprint,
            subject = %leaf.subject,
            not_after = %not_after,
            days_left = days,
            "the server certificate{which} expires within {} days (or has expired, and then \
             Salesforce delivers nothing): renew [tls] certificate {file} and its key (a \
             renewed file is served at once)",
            tls.expiry_error_days
        );
    } else if days < tls.expiry_warning_days as i64 {
        tracing::warn!(
            certificate = %leaf.fingerprint,
            subject = %leaf.subject,
            not_after = %not_after,
            days_left = days,
            "the server certificate{which} expires within {} days: renew [tls] certificate \
             {file} and its key (a renewed file is served at once)",
            tls.expiry_warning_days
        );
    }
}

/// Seconds since the Unix epoch, as certificate validity is kept.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Logs a warning for each certificate expiring within `expiry_warning_days` and an error
/// within `expiry_error_days` (or already expired).
pub fn log_expiring(state: &AppState) {
    let now = unix_now();
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
