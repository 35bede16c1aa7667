//! The listener: accepting connections within the connection limit, the TLS handshake within
//! its timeout, HTTP/1.1 on top, and the per-connection watchdog for the header-read and idle
//! keep-alive timeouts. Shutdown is an input: when it fires, accepting stops, connections finish
//! their in-flight request within the grace period, and the store is flushed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::http::{self, AppState, RequestHooks};
use crate::{proxy, tls};

/// Largest request head (request line and headers). Salesforce sends a few hundred bytes.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Runs the accept loop until `shutdown` resolves, then drains connections for at most `grace`
/// and flushes the store.
pub async fn run(
    state: Arc<AppState>,
    acceptor: TlsAcceptor,
    listener: TcpListener,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let limits = state.config.limits.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    // Ready before the log line says so: whoever waits for "listening" may probe /readyz.
    state
        .accepting
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(address = %local, path = %state.config.listen.path, "listening");
    loop {
        // Past the connection limit, connections wait in the kernel's accept queue.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            connection(state, acceptor, tcp, peer, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    state
        .accepting
        .store(false, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        open = tracker.len(),
        grace_seconds = grace.as_secs_f64(),
        "shutting down: stopped accepting, draining connections"
    );
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            cut = tracker.len(),
            "grace period over; cutting connections (their requests were not acknowledged)"
        );
    }
    if let Some(store) = &state.store {
        store.shutdown().await;
    }
    Ok(())
}

/// Decrements the open-connection gauge however the connection ends.
struct OpenGuard(Arc<AppState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.open_connections.dec();
    }
}

/// One connection: the handshake, then HTTP/1.1 until the client leaves, a timeout fires, or
/// shutdown has let the in-flight request finish.
///
/// Laid out for an idle connection's memory, which is mostly this task's future and hyper's
/// buffers (BENCHMARKS.md, (e)): the handshake is its own future, whose room hyper's connection
/// reuses once it is done; hyper's connection is built by a plain function and driven in place
/// (it is `Unpin`), neither moved into `pin!` nor passed by value into another `async fn`,
/// each of which would keep a second copy for the connection's whole life.
async fn connection(
    state: Arc<AppState>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    state.metrics.open_connections.inc();
    let _open = OpenGuard(state.clone());
    let Some((stream, identity, peer)) = establish(&state, &acceptor, tcp, peer, &stop).await
    else {
        return;
    };
    let limits = &state.config.limits;
    let activity = Arc::new(Activity::new());
    let mut served = http_connection(&state, stream, identity, peer, &activity);
    let mut watchdog = Watchdog::new(&activity, limits);
    let mut draining = false;
    loop {
        // Biased: hyper's connection is polled first, so that the watchdog sees what this wake
        // of the task read (a request head begun) before it decides how long to sleep.
        tokio::select! {
            biased;
            r = &mut served => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            why = std::future::poll_fn(|cx| watchdog.poll_expired(cx, &activity, limits)) => {
                tracing::debug!(peer = %peer, reason = why, "closing connection");
                return;
            }
            _ = stop.cancelled(), if !draining => {
                draining = true;
                Pin::new(&mut served).graceful_shutdown();
            }
        }
    }
}

/// The PROXY header, if configured, and the TLS handshake: the client's stream and identity,
/// or `None` (refused and logged, or shutdown came first).
async fn establish(
    state: &AppState,
    acceptor: &TlsAcceptor,
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    stop: &CancellationToken,
) -> Option<(tls::ServerStream, tls::ClientIdentity, SocketAddr)> {
    let limits = &state.config.limits;
    if state.config.listen.proxy_protocol {
        let read = tokio::time::timeout(limits.handshake_timeout, proxy::read_header(&mut tcp));
        match read.await {
            Ok(Ok(Some(client))) => peer = client,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                state.metrics.handshake("refused", "proxy_protocol");
                tracing::warn!(peer = %peer, reason = "proxy_protocol", "connection refused: {e}");
                return None;
            }
            Err(_) => {
                state.metrics.handshake("refused", "proxy_protocol");
                tracing::warn!(peer = %peer, reason = "proxy_protocol", "connection refused: no PROXY header in time");
                return None;
            }
        }
    }
    let handshake = tokio::select! {
        r = tls::accept(acceptor, tcp, limits.handshake_timeout) => r,
        _ = stop.cancelled() => return None,
    };
    let (stream, identity) = match handshake {
        Ok(ok) => ok,
        Err(refusal) => {
            state.metrics.handshake("refused", refusal.label());
            tracing::warn!(peer = %peer, reason = refusal.label(), "handshake refused: {refusal}");
            return None;
        }
    };
    // How it was accepted: whether senders resume their sessions shows in the metric.
    let kind = if identity.resumed { "resumed" } else { "full" };
    state.metrics.handshake("accepted", kind);
    tracing::debug!(
        peer = %peer,
        certificate = %identity.fingerprint,
        protocol = identity.protocol,
        cipher = %identity.cipher,
        handshake = kind,
        "handshake accepted"
    );
    Some((stream, identity, peer))
}

/// hyper's HTTP/1.1 connection over the established stream, serving [`http::handle`].
fn http_connection(
    state: &Arc<AppState>,
    stream: tls::ServerStream,
    identity: tls::ClientIdentity,
    peer: SocketAddr,
    activity: &Arc<Activity>,
) -> http1::Connection<TokioIo<ActivityIo>, http::Service> {
    let service = http::Service(Arc::new(http::Connection::new(
        state.clone(),
        peer,
        identity,
        activity.clone(),
    )));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's own header timer also runs while a keep-alive connection is idle; the
        // watchdog in `connection` keeps the two limits apart.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_header_size(MAX_HEADER_BYTES);
    let io = TokioIo::new(ActivityIo {
        inner: stream,
        activity: activity.clone(),
    });
    builder.serve_connection(io, service)
}

/// A connection's header-read and idle timeouts: one sleep until the next moment a limit could
/// run out ([`Activity::due`]). Everything that changes that moment happens in polls of the
/// connection's own task, and the watchdog is polled after hyper's connection in each of them:
/// a deadline that came nearer (a request head begun on an idle connection) is armed at once;
/// one that moved away is found when the sleep ends with nothing expired. An idle connection
/// wakes once per idle timeout. (A tick of a quarter of the shortest limit, at most 1 s, cost
/// 10,000 idle connections about 6% of a core and 3,300 context switches a second.)
struct Watchdog {
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Watchdog {
    fn new(activity: &Activity, limits: &Limits) -> Watchdog {
        Watchdog {
            sleep: Box::pin(tokio::time::sleep_until(
                activity.due_or_later(limits).into(),
            )),
        }
    }

    /// Ready with the limit the connection ran past.
    fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        activity: &Activity,
        limits: &Limits,
    ) -> Poll<&'static str> {
        // Every wake of a busy connection comes here: atomics only, no clock, while in flight.
        if let Some(due) = activity.due(limits).map(tokio::time::Instant::from_std)
            && due < self.sleep.deadline()
        {
            self.sleep.as_mut().reset(due);
        }
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if let Some(why) = activity.expired(limits) {
                return Poll::Ready(why);
            }
            // Never a deadline already past: that would spin here.
            let next = activity
                .due_or_later(limits)
                .max(Instant::now() + Duration::from_millis(1));
            self.sleep.as_mut().reset(next.into());
        }
    }
}

const NO_BYTE: u64 = u64::MAX;

/// What a connection is doing, for its timeouts. Updated from the connection's own task (reads)
/// and its requests; atomics only because the service must be `Send`.
struct Activity {
    origin: Instant,
    in_flight: AtomicU32,
    /// When the last response was produced (ms since `origin`).
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived, or `NO_BYTE`. A new connection starts
    /// its first request's header clock at the end of the handshake.
    first_byte: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.first_byte.load(Ordering::Relaxed) == NO_BYTE
        {
            self.first_byte.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The earliest moment one of the limits could run out, in the state the connection is in
    /// now: the end of the header-read timeout once a request head has begun, of the idle
    /// timeout while nothing has. `None` while a request is in flight: the body timeout and the
    /// store bound it, and no clock runs until it is answered.
    fn due(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        // `expired` counts whole milliseconds and wants more than the limit.
        let after = |since_ms: u64, limit: Duration| {
            self.origin + Duration::from_millis(since_ms) + limit + Duration::from_millis(1)
        };
        Some(match self.first_byte.load(Ordering::Relaxed) {
            NO_BYTE => after(self.idle_since.load(Ordering::Relaxed), limits.idle_timeout),
            first => after(first, limits.header_read_timeout),
        })
    }

    /// [`Activity::due`], or for a request in flight the earliest a clock could end once it
    /// is answered: the shorter limit from now.
    fn due_or_later(&self, limits: &Limits) -> Instant {
        self.due(limits)
            .unwrap_or_else(|| Instant::now() + limits.header_read_timeout.min(limits.idle_timeout))
    }

    /// Which limit, if any, the connection has run past.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // The body read timeout and the store bound an in-flight request.
            return None;
        }
        let now = self.now_ms();
        let first = self.first_byte.load(Ordering::Relaxed);
        if first != NO_BYTE {
            let waited = now.saturating_sub(first);
            return (waited > limits.header_read_timeout.as_millis() as u64)
                .then_some("header_read_timeout");
        }
        let idle = now.saturating_sub(self.idle_since.load(Ordering::Relaxed));
        (idle > limits.idle_timeout.as_millis() as u64).then_some("idle_timeout")
    }
}

impl RequestHooks for Activity {
    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.first_byte.store(NO_BYTE, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.idle_since.store(self.now_ms(), Ordering::Relaxed);
        self.first_byte.store(NO_BYTE, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The TLS stream, noting when bytes arrive.
struct ActivityIo {
    inner: tls::ServerStream,
    activity: Arc<Activity>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Arc<AppState>, TlsAcceptor, TcpStream, SocketAddr, CancellationToken) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The watchdog sleeps until the clock of the connection's state ends: the header clock of
    /// a new connection's first request, then (after an answer) the idle clock, then the header
    /// clock again once a head begins, which ends sooner than the idle one.
    #[test]
    fn the_watchdog_is_due_when_the_clock_of_the_connections_state_ends() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..crate::Config::default().limits
        };
        let at = |a: &Activity, ms: u64| Some(a.origin + Duration::from_millis(ms));
        let activity = Activity::new();
        assert_eq!(activity.due(&limits), at(&activity, 10_001));

        activity.request_started();
        assert_eq!(activity.due(&limits), None, "in flight");
        let before = Instant::now();
        let later = activity.due_or_later(&limits);
        let ten = Duration::from_secs(10);
        assert!(
            before + ten <= later && later <= Instant::now() + ten,
            "{later:?}"
        );

        activity.request_finished();
        let answered = activity.idle_since.load(Ordering::Relaxed);
        assert_eq!(activity.due(&limits), at(&activity, answered + 60_001));

        activity.on_read();
        let head = activity.first_byte.load(Ordering::Relaxed);
        assert_ne!(head, NO_BYTE);
        assert_eq!(activity.due(&limits), at(&activity, head + 10_001));
    }

    /// Every open connection holds this future for its whole life; with 10,000 idle ones it is
    /// much of what the process holds besides hyper's buffers. It was 3,744 bytes while
    /// hyper's connection was moved into `tokio::pin!`, which kept two copies of it; 2,168
    /// since, and 2,144 with the deadline watchdog (rustc 1.95). Handing the stream to an `async fn` that builds and drives hyper's
    /// connection made it 6,784: a parameter keeps its room for the function's whole life.
    #[test]
    fn a_connection_task_holds_one_copy_of_its_state() {
        let size = future_size(connection);
        assert!(
            size <= 3 * 1024,
            "the connection future is {size} bytes; something large is kept twice (an \
             `async fn` parameter, a moved local, a `pin!`), and every idle connection pays it"
        );
    }
}
