//! The `Server` preset's connections: hyper-util's server with a timer, so that no caller holds a
//! connection, a file descriptor or header memory past a limit.
//!
//! `axum::serve` builds hyper without a timer, so hyper's header-read timeout never applies, and
//! it has no connection cap: slow-loris connections stay open for ever and enough silent ones use
//! up the process's file descriptors. Here every connection is served by
//! `hyper_util::server::conn::auto` (HTTP/1.1 and h2c on one port, upgrades included) with
//! [`TokioTimer`], inside a small supervisor task that:
//!
//! - closes a connection that has not sent a whole first request head within the header-read
//!   timeout (hyper applies that timeout to HTTP/1 heads itself, but not while it is still telling
//!   HTTP/1 from an h2c preface, nor to an HTTP/2 connection that never opens a stream);
//! - closes a connection with nothing in flight for the idle timeout;
//! - is closed first, while idle, when a new connection arrives at the cap;
//! - on the drain, asks hyper to close gracefully (idle HTTP/1 connections close at once,
//!   HTTP/2 ones get a GOAWAY) and closes at once a connection that never sent a whole request:
//!   a half-sent request line must not hold the shutdown for its grace period.
//!
//! Over TLS (feature `tls`, [`ServerBuilder::tls`](super::ServerBuilder::tls)) the handshake comes
//! first, within the header-read timeout, and ends when the drain starts or the connection is
//! chosen to make room at the cap; then the connection is served and supervised as above.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, Instant};
use tower::util::Oneshot;

use crate::shutdown::{Drained, Shutdown};

/// The default header-read timeout: the whole request head must arrive within it.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default idle timeout: a connection with no request in flight this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default interval of HTTP/2 keep-alive pings (their acknowledgement must come within it).
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// The default bound on concurrent HTTP/2 streams per connection.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// The default maximum size of a request head (HTTP/1) or header list (HTTP/2), in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// The connection cap when the file-descriptor limit cannot be read.
pub const FALLBACK_MAX_CONNECTIONS: usize = 10_000;

/// hyper refuses an HTTP/1 read buffer smaller than this.
const HYPER_MIN_BUF_SIZE: usize = 8 * 1024;
/// How long a connection asked to close gracefully may take to flush its last response.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Busy connections looked at, at most, for an idle one to close when the cap is reached.
const EVICTION_PROBES: usize = 16;
/// After an accept error (file descriptors used up), wait this long before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// The connection settings of the `Server` preset; each has a builder method on
/// [`ServerBuilder`](super::ServerBuilder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionSettings {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) http2_keep_alive_interval: Option<Duration>,
    pub(crate) http2_max_concurrent_streams: u32,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_connections: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            http2_keep_alive_interval: Some(DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL),
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: default_max_connections(),
        }
    }
}

/// The default connection cap: seven eighths of the process's soft file-descriptor limit (the
/// rest for listeners, files and outgoing connections), or [`FALLBACK_MAX_CONNECTIONS`] where
/// the limit cannot be read (only Linux's `/proc/self/limits` is read).
pub fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| soft_open_files(&limits))
        .map(|soft| (soft - soft / 8).max(16))
        .unwrap_or(FALLBACK_MAX_CONNECTIONS)
}

/// The soft "Max open files" of a `/proc/self/limits` text; `None` when unlimited or unreadable.
fn soft_open_files(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What a connection's supervisor and its requests share.
struct Connection {
    /// Requests dispatched to the router and not finished (response body not ended).
    in_flight: AtomicUsize,
    /// Request heads dispatched so far.
    requests: AtomicU64,
    /// Closes the connection at once (chosen to make room at the cap).
    evict: Notify,
}

/// Every open connection, for the cap and the drain.
struct Connections {
    settings: ConnectionSettings,
    open: AtomicUsize,
    /// Wakes the drain when the last connection closes.
    all_closed: Notify,
    /// Set when the listener stops: every connection starts closing.
    stopping: watch::Sender<bool>,
    /// Connections in the order they were accepted: the oldest idle one is closed first.
    by_age: Mutex<VecDeque<Weak<Connection>>>,
}

impl Connections {
    /// Makes room for one more connection: true if there is room, possibly after closing an
    /// idle connection; false if every connection looked at is busy.
    fn make_room(&self) -> bool {
        if self.open.load(Ordering::Acquire) < self.settings.max_connections {
            return true;
        }
        self.evict_idle()
    }

    /// Closes the oldest idle connection among the first few; false if none is idle.
    fn evict_idle(&self) -> bool {
        let mut by_age = self.by_age.lock().unwrap_or_else(|e| e.into_inner());
        let mut probes = 0;
        while probes < EVICTION_PROBES {
            let Some(weak) = by_age.pop_front() else {
                return false;
            };
            let Some(connection) = weak.upgrade() else {
                continue; // closed by itself since
            };
            if connection.in_flight.load(Ordering::Acquire) == 0 {
                connection.evict.notify_one();
                return true;
            }
            probes += 1;
            by_age.push_back(weak);
        }
        false
    }

    fn remember(&self, connection: &Arc<Connection>) {
        let mut by_age = self.by_age.lock().unwrap_or_else(|e| e.into_inner());
        // Connections that closed by themselves leave their entries behind: sweep them out
        // whenever they could outnumber the live ones, so the queue stays bounded.
        if by_age.len() > 2 * self.open.load(Ordering::Relaxed) + 64 {
            by_age.retain(|weak| weak.strong_count() > 0);
        }
        by_age.push_back(Arc::downgrade(connection));
    }

    async fn wait_all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one open connection until dropped.
struct OpenConnection(Arc<Connections>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// Serves `router` on `listener` with `settings` until `shutdown` signals, then drains within its
/// grace period (or until it is forced).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ConnectionSettings,
    shutdown: Shutdown,
    tls: Option<Acceptor>,
) -> std::io::Result<Drained> {
    let builder = Arc::new(hyper_builder(&settings));
    let connections = Arc::new(Connections {
        settings,
        open: AtomicUsize::new(0),
        all_closed: Notify::new(),
        stopping: watch::Sender::new(false),
        by_age: Mutex::new(VecDeque::new()),
    });
    {
        let stop = pin!(shutdown.signal());
        let forced = pin!(shutdown.forced());
        let mut stop = stop;
        let mut forced = forced;
        loop {
            tokio::select! {
                biased;
                () = &mut forced => return Ok(Drained::Forced { in_flight: shutdown.in_flight() }),
                () = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if !connections.make_room() {
                            tracing::debug!(%peer, "connection cap reached, every connection busy: refusing");
                            drop(stream);
                            continue;
                        }
                        spawn_connection(stream, peer, &router, &builder, &connections, tls.clone());
                    }
                    Err(error) => {
                        // Usually EMFILE: free a descriptor if an idle connection holds one.
                        tracing::warn!(%error, "accept failed");
                        connections.evict_idle();
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
            }
        }
    }
    drop(listener);
    connections.stopping.send_replace(true);
    let drained = async {
        connections.wait_all_closed().await;
        // Upgraded connections (WebSockets) left hyper's count; their handlers' guards did not.
        shutdown.guards_released().await;
    };
    tokio::select! {
        () = drained => Ok(Drained::Completed),
        () = shutdown.grace_expired() => {
            let in_flight = shutdown.in_flight();
            tracing::warn!(in_flight, "grace period over: giving up on the drain");
            Ok(Drained::GraceExpired { in_flight })
        }
        () = shutdown.forced() => Ok(Drained::Forced { in_flight: shutdown.in_flight() }),
    }
}

fn hyper_builder(settings: &ConnectionSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(HYPER_MIN_BUF_SIZE));
    let header_list = u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX);
    let mut http2 = builder.http2();
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_header_list_size(header_list)
        .keep_alive_interval(settings.http2_keep_alive_interval);
    if let Some(interval) = settings.http2_keep_alive_interval {
        http2.keep_alive_timeout(interval);
    }
    builder
}

/// What turns an accepted stream into a TLS one: rustls's acceptor with the `tls` feature, and
/// a type with no value without it.
#[cfg(feature = "tls")]
pub(crate) type Acceptor = tokio_rustls::TlsAcceptor;
/// What turns an accepted stream into a TLS one: none without the `tls` feature.
#[cfg(not(feature = "tls"))]
pub(crate) type Acceptor = Infallible;

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: &Router,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    connections: &Arc<Connections>,
    tls: Option<Acceptor>,
) {
    // Small requests and responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let connection = Arc::new(Connection {
        in_flight: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        evict: Notify::new(),
    });
    connections.open.fetch_add(1, Ordering::AcqRel);
    let open = OpenConnection(connections.clone());
    connections.remember(&connection);
    let service = ConnectionService {
        router: router.clone(),
        connection: connection.clone(),
        peer,
        #[cfg(feature = "tls")]
        peer_certificates: None,
    };
    let builder = builder.clone();
    // Mutable for the TLS handshake, which waits on it too.
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut stopping = connections.stopping.subscribe();
    let settings = connections.settings;
    tokio::spawn(async move {
        let _open = open;
        #[cfg(feature = "tls")]
        if let Some(acceptor) = tls {
            let Some(stream) =
                handshake(acceptor, stream, &connection, &mut stopping, settings).await
            else {
                return;
            };
            let service = ConnectionService {
                peer_certificates: stream.get_ref().1.peer_certificates().map(|chain| {
                    super::tls::PeerCertificates(
                        chain.iter().map(|c| c.clone().into_owned()).collect(),
                    )
                }),
                ..service
            };
            let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            supervise(served, &connection, stopping, settings).await;
            return;
        }
        #[cfg(not(feature = "tls"))]
        if let Some(never) = tls {
            match never {}
        }
        let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        supervise(served, &connection, stopping, settings).await;
    });
}

/// The TLS handshake of a new connection, within the header-read timeout (a stalled handshake
/// holds a connection as a stalled request head does), given up when the drain starts or the
/// connection is evicted at the cap.
#[cfg(feature = "tls")]
async fn handshake(
    acceptor: Acceptor,
    stream: TcpStream,
    connection: &Connection,
    stopping: &mut watch::Receiver<bool>,
    settings: ConnectionSettings,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio::select! {
        biased;
        () = connection.evict.notified() => None,
        _ = stopping.wait_for(|stopping| *stopping) => None,
        handshake = tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)) => {
            match handshake {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("no TLS handshake within the header-read timeout: closing");
                    None
                }
            }
        }
    }
}

/// Drives one connection to its end, closing it early as the module docs say.
async fn supervise<I>(
    served: auto::UpgradeableConnection<'_, TokioIo<I>, ConnectionService, TokioExecutor>,
    connection: &Connection,
    mut stopping: watch::Receiver<bool>,
    settings: ConnectionSettings,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut served = pin!(served);
    let accepted = Instant::now();
    let mut closing = false;
    let mut seen_requests = 0;
    let mut idle_since = accepted;
    let mut next_check = accepted + settings.header_read_timeout.min(settings.idle_timeout);
    loop {
        tokio::select! {
            biased;
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = connection.evict.notified() => {
                tracing::debug!("closing an idle connection to make room at the cap");
                return;
            }
            _ = stopping.wait_for(|stopping| *stopping), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
                if connection.requests.load(Ordering::Acquire) == 0 {
                    // Idle from the start or a half-sent first request: it holds nothing.
                    return;
                }
                next_check = Instant::now() + CLOSE_LINGER;
            }
            () = sleep_until(next_check) => {
                let now = Instant::now();
                let in_flight = connection.in_flight.load(Ordering::Acquire);
                let requests = connection.requests.load(Ordering::Acquire);
                if closing {
                    if in_flight == 0 {
                        return;
                    }
                    next_check = now + CLOSE_LINGER;
                    continue;
                }
                if requests == 0 && now >= accepted + settings.header_read_timeout {
                    tracing::debug!("no whole request head within the header-read timeout: closing");
                    return;
                }
                if in_flight > 0 || requests != seen_requests {
                    seen_requests = requests;
                    idle_since = now;
                }
                if now >= idle_since + settings.idle_timeout {
                    tracing::debug!("idle timeout: closing the connection");
                    served.as_mut().graceful_shutdown();
                    closing = true;
                    next_check = now + CLOSE_LINGER;
                    continue;
                }
                next_check = idle_since + settings.idle_timeout;
                if requests == 0 {
                    next_check = next_check.min(accepted + settings.header_read_timeout);
                }
            }
        }
    }
}

/// The router, as hyper calls it for one connection: counts the connection's requests and gives
/// each its peer's address as axum's `ConnectInfo`.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    connection: Arc<Connection>,
    peer: SocketAddr,
    /// The caller's verified certificate chain (mutual TLS), given to each request.
    #[cfg(feature = "tls")]
    peer_certificates: Option<super::tls::PeerCertificates>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<InFlightBody>;
    type Error = Infallible;
    type Future = ConnectionFuture;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.connection.requests.fetch_add(1, Ordering::AcqRel);
        self.connection.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.connection.clone());
        req.extensions_mut().insert(ConnectInfo(self.peer));
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.peer_certificates {
            req.extensions_mut().insert(certificates.clone());
        }
        ConnectionFuture {
            inner: Oneshot::new(self.router.clone(), req.map(Body::new)),
            guard: Some(guard),
        }
    }
}

/// One request of a connection, counted until its response body ends or is dropped.
struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// The response future of [`ConnectionService`].
    struct ConnectionFuture {
        #[pin]
        inner: Oneshot<Router, Request<Body>>,
        guard: Option<InFlight>,
    }
}

impl Future for ConnectionFuture {
    type Output = Result<Response<InFlightBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match ready!(this.inner.poll(cx)) {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|body| InFlightBody { body, guard })))
    }
}

pin_project! {
    /// A response body that keeps its request counted on the connection until it ends.
    struct InFlightBody {
        #[pin]
        body: Body,
        guard: Option<InFlight>,
    }
}

impl http_body::Body for InFlightBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if frame.is_none() {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_files_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63432                63432                processes\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(soft_open_files(limits), Some(20_000));
        assert_eq!(
            soft_open_files("Max open files  unlimited unlimited files"),
            None
        );
        assert_eq!(soft_open_files("nothing here"), None);
    }
}
