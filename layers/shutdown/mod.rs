//! Graceful shutdown: stop taking traffic, finish what is in flight, and exit within a grace
//! period.
//!
//! A [`Shutdown`] handle is the one switch. When it is triggered, by SIGTERM or Ctrl-C through
//! [`Shutdown::listen_for_signals`] or by [`Shutdown::trigger`]:
//!
//! 1. it is *draining* at once: readiness ([`health`](crate::health)) answers `503`, so load
//!    balancers take the instance out of rotation;
//! 2. [`DrainLayer`] adds `Connection: close` to every HTTP/1.x response from then on, so
//!    clients holding kept-alive connections reconnect, to another instance;
//! 3. after the drain delay (none by default; a few seconds under Kubernetes, whose endpoints
//!    update after the pod is told to stop), [`Shutdown::signal`] resolves: hand it to
//!    `axum::serve(...).with_graceful_shutdown(...)`, and the server stops accepting connections
//!    and lets in-flight requests finish;
//! 4. the grace period (30 s by default, Kubernetes' own) bounds the whole drain, counted from
//!    the trigger: [`serve`] returns [`Drained::GraceExpired`] when it runs out, and returning
//!    from `main` then ends the process with whatever is left;
//! 5. a second signal (an operator pressing Ctrl-C again) or [`Shutdown::force`] ends the drain at
//!    once: [`serve`] returns [`Drained::Forced`].
//!
//! Handlers that hold a connection open past their response (WebSockets, other upgrades, long
//! polls) outlive hyper's graceful shutdown: they hold a [`Shutdown::guard`], await
//! [`Shutdown::triggered`], close on their own (a WebSocket with 1001, Going Away) and drop the
//! guard; [`serve`] (and the `Server` preset) waits for every guard, within the grace period.
//! `examples/websocket.rs` shows it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_lifeline::shutdown::{serve, Drained, Shutdown};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let shutdown = Shutdown::new().drain_delay(Duration::from_millis(10));
//! // In a real service: `shutdown.listen_for_signals();` for SIGTERM and Ctrl-C.
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(shutdown.layer());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = tokio::spawn(serve(listener, app, shutdown.clone()));
//!
//! shutdown.trigger();
//! assert!(shutdown.is_draining());
//! assert_eq!(server.await.unwrap()?, Drained::Completed);
//! # Ok(())
//! # }
//! ```
//!
//! Without the helper, the same handle drives axum directly; bound the wait yourself with
//! [`Shutdown::grace_expired`]:
//!
//! ```no_run
//! # use axum::Router;
//! # use tower_lifeline::shutdown::Shutdown;
//! # async fn run(app: Router, listener: tokio::net::TcpListener) -> std::io::Result<()> {
//! let shutdown = Shutdown::new();
//! shutdown.listen_for_signals();
//! let server = axum::serve(listener, app.layer(shutdown.layer()))
//!     .with_graceful_shutdown(shutdown.signal());
//! tokio::select! {
//!     result = server => result?,
//!     () = shutdown.grace_expired() => eprintln!("grace period over, exiting anyway"),
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Version};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

use crate::sharded::ShardedCounter;

#[cfg(test)]
mod tests;

/// The default grace period: Kubernetes' `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// The shutdown switch: shared by clones, triggered once. See the [module docs](self).
#[derive(Clone)]
pub struct Shutdown {
    state: Arc<State>,
    drain_delay: Duration,
    grace_period: Duration,
}

struct State {
    draining: watch::Sender<bool>,
    /// `draining`, for the per-request check: a load, where the watch takes a lock.
    draining_now: AtomicBool,
    forced: watch::Sender<bool>,
    /// Split per core: every request writes it twice, from whichever core serves it.
    in_flight: ShardedCounter,
    /// Live [`DrainGuard`]s, as a watch so the drain can wait for zero.
    guards: watch::Sender<usize>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("draining", &self.is_draining())
            .field("in_flight", &self.in_flight())
            .field("drain_delay", &self.drain_delay)
            .field("grace_period", &self.grace_period)
            .finish()
    }
}

impl Shutdown {
    /// A handle not yet triggered, with no drain delay and a 30 s grace period. It does not
    /// listen for signals until [`listen_for_signals`](Self::listen_for_signals) is called.
    pub fn new() -> Self {
        Shutdown {
            state: Arc::new(State {
                draining: watch::Sender::new(false),
                draining_now: AtomicBool::new(false),
                forced: watch::Sender::new(false),
                in_flight: ShardedCounter::new(),
                guards: watch::Sender::new(0),
            }),
            drain_delay: Duration::ZERO,
            grace_period: DEFAULT_GRACE_PERIOD,
        }
    }

    /// How long to keep accepting connections after the trigger, while readiness already fails,
    /// so that load balancers stop sending before the listener closes (default: none).
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// The bound on the whole drain, counted from the trigger (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Starts the drain; later calls do nothing.
    pub fn trigger(&self) {
        self.state.draining_now.store(true, Ordering::Release);
        let first = !self.state.draining.send_replace(true);
        if first {
            tracing::info!(
                drain_delay = ?self.drain_delay,
                grace_period = ?self.grace_period,
                in_flight = self.in_flight(),
                "shutdown triggered: draining"
            );
        }
    }

    /// Ends the drain at once: triggers the shutdown if it was not, and makes [`serve`] (and the
    /// `Server` preset) return [`Drained::Forced`] without waiting for anything in flight.
    pub fn force(&self) {
        self.trigger();
        if !self.state.forced.send_replace(true) {
            tracing::warn!(
                in_flight = self.in_flight(),
                "shutdown forced: not waiting for the drain"
            );
        }
    }

    /// Whether the drain was ended at once by [`force`](Self::force) (or a second signal).
    pub fn is_forced(&self) -> bool {
        *self.state.forced.borrow()
    }

    /// Resolves when the drain is forced.
    pub fn forced(&self) -> impl Future<Output = ()> + Send + 'static {
        let state = self.state.clone();
        async move {
            let mut forced = state.forced.subscribe();
            // Err only if the sender is gone, and `state` holds it.
            let _ = forced.wait_for(|forced| *forced).await;
        }
    }

    /// Whether shutdown has been triggered.
    pub fn is_draining(&self) -> bool {
        *self.state.draining.borrow()
    }

    /// A guard the drain waits for, for work that outlives its request (an upgraded connection,
    /// a WebSocket): hold it while the work runs, and drop it once the work has closed (on
    /// [`triggered`](Self::triggered)). The grace period still bounds the wait.
    pub fn guard(&self) -> DrainGuard {
        self.state.guards.send_modify(|n| *n += 1);
        DrainGuard {
            state: self.state.clone(),
        }
    }

    /// Resolves when no [`DrainGuard`] of this handle is alive.
    pub fn guards_released(&self) -> impl Future<Output = ()> + Send + 'static {
        let state = self.state.clone();
        async move {
            let mut guards = state.guards.subscribe();
            // Err only if the sender is gone, and `state` holds it.
            let _ = guards.wait_for(|n| *n == 0).await;
        }
    }

    /// Requests inside a [`DrainLayer`] of this handle that have not been answered yet.
    pub fn in_flight(&self) -> usize {
        // A count taken away on another core than it was added on may be read before the
        // addition: never below zero.
        usize::try_from(self.state.in_flight.sum()).unwrap_or(0)
    }

    /// Resolves when shutdown is triggered.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        // The future keeps the state, so the sender outlives every handle the caller drops.
        let state = self.state.clone();
        async move {
            let mut draining = state.draining.subscribe();
            // Err only if the sender is gone, and `state` holds it.
            let _ = draining.wait_for(|draining| *draining).await;
        }
    }

    /// Resolves once shutdown is triggered and the drain delay has passed: the moment to stop
    /// accepting connections. Give it to `axum::serve(...).with_graceful_shutdown`.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let triggered = self.triggered();
        let delay = self.drain_delay;
        async move {
            triggered.await;
            tokio::time::sleep(delay).await;
            tracing::info!("drain delay over: no longer accepting connections");
        }
    }

    /// Resolves when the grace period, counted from the trigger, is over.
    pub fn grace_expired(&self) -> impl Future<Output = ()> + Send + 'static {
        let triggered = self.triggered();
        let grace = self.grace_period;
        async move {
            triggered.await;
            tokio::time::sleep(grace).await;
        }
    }

    /// Triggers this handle on SIGTERM (Unix) or Ctrl-C, from a spawned task, and forces it on
    /// the second such signal. Call it inside a tokio runtime. A signal whose handler cannot be
    /// installed is logged and never fires.
    pub fn listen_for_signals(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            this.trigger();
            wait_for_signal().await;
            this.force();
        })
    }

    /// The layer that counts in-flight requests and closes kept-alive connections once draining.
    pub fn layer(&self) -> DrainLayer {
        DrainLayer {
            shutdown: self.clone(),
        }
    }
}

/// Resolves on the next SIGTERM (Unix) or Ctrl-C. A signal whose handler cannot be installed is
/// logged and never fires.
async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Work the drain waits for; made by [`Shutdown::guard`], released on drop.
pub struct DrainGuard {
    state: Arc<State>,
}

impl fmt::Debug for DrainGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainGuard").finish_non_exhaustive()
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.state.guards.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection closed within the grace period.
    Completed,
    /// The grace period ran out first, with this many requests still unanswered (counted by a
    /// [`DrainLayer`] of the handle; 0 without one). The server's connections are left to die
    /// with the process.
    GraceExpired {
        /// Requests unanswered when the grace period ended.
        in_flight: usize,
    },
    /// The drain was forced ([`Shutdown::force`], or a second signal) with this many requests
    /// still unanswered; the connections are left to die with the process.
    Forced {
        /// Requests unanswered when the drain was forced.
        in_flight: usize,
    },
}

/// Runs `app` on `listener` until `shutdown` is triggered, then drains it gracefully, bounded by
/// the grace period. Install [`Shutdown::layer`] on `app` for `Connection: close` while draining.
///
/// An error is the listener's (axum retries accept errors itself, so in practice none).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: Shutdown,
) -> std::io::Result<Drained> {
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.signal())
        .into_future();
    let guards = shutdown.guards_released();
    let drained = async move {
        server.await?;
        guards.await;
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        result = drained => result.map(|()| Drained::Completed),
        () = shutdown.grace_expired() => {
            let in_flight = shutdown.in_flight();
            tracing::warn!(in_flight, "grace period over: giving up on the drain");
            Ok(Drained::GraceExpired { in_flight })
        }
        () = shutdown.forced() => Ok(Drained::Forced { in_flight: shutdown.in_flight() }),
    }
}

/// Counts in-flight requests and adds `Connection: close` to HTTP/1.x responses while draining.
///
/// Made by [`Shutdown::layer`]; see the [module docs](self). Put it outermost, so that it sees
/// every response, shed and refused ones included.
#[derive(Debug, Clone)]
pub struct DrainLayer {
    shutdown: Shutdown,
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Drain {
            inner,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// The service made by [`DrainLayer`].
#[derive(Debug, Clone)]
pub struct Drain<S> {
    inner: S,
    shutdown: Shutdown,
}

impl<S> Drain<S> {
    inner_service_accessors!(S);
}

impl<S, B, ResBody> Service<Request<B>> for Drain<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // HTTP/2 forbids connection headers; hyper's graceful shutdown sends GOAWAY there instead.
        let http1 = req.version() <= Version::HTTP_11;
        self.shutdown.state.in_flight.add(1);
        DrainFuture {
            inner: self.inner.call(req),
            guard: InFlight {
                state: self.shutdown.state.clone(),
            },
            http1,
        }
    }
}

/// One request counted in flight until dropped.
struct InFlight {
    state: Arc<State>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.add(-1);
    }
}

pin_project! {
    /// The response future of [`Drain`].
    pub struct DrainFuture<F> {
        #[pin]
        inner: F,
        guard: InFlight,
        http1: bool,
    }
}

impl<F> fmt::Debug for DrainFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let Ok(response) = &mut result {
            if *this.http1 && this.guard.state.draining_now.load(Ordering::Acquire) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(result)
    }
}
