//! Timeouts: a per-attempt limit for clients, and a server limit that answers with a response.
//!
//! - [`AttemptTimeoutLayer`] (client) limits each attempt to the shorter of its configured
//!   timeout and the time left before the call's [`Deadline`] (the one the
//!   [client deadline layer](crate::deadline::ClientDeadlineLayer) leaves in the request's
//!   extensions, else the task-local [`RequestContext`](crate::RequestContext)'s). It sits under the strategy layer, so
//!   each attempt gets its own limit (Polly's attempt timeout) while the deadline layer above is
//!   the total timeout. It replaces the request's `Deadline` extension with the attempt's, so the
//!   [propagation layer](crate::propagation) below sends the server the attempt's budget. On
//!   expiry it fails with an [`AttemptTimedOut`] behind a [`BoxError`], which says which limit ran
//!   out ([`TimeLimit`]): its own, its share of a split deadline, or the call's deadline. All three
//!   are failures of the destination; a retry follows only while time is left.
//! - [`ServerTimeoutLayer`] (server) drops the handler's future after a fixed time and answers
//!   `504 Gateway Timeout` (configurable).
//!
//! # Why 504 and not 408
//!
//! `408 Request Timeout` says the *client* was too slow sending its request, and browsers resend
//! a request that got a 408 on a kept-alive connection on their own, so a slow handler would run
//! twice (tower-http issue 300). `503 Service Unavailable` is what [load
//! shedding](crate::load_shed) answers when the server is full; keeping timeouts on a different
//! status lets callers and dashboards tell "too busy" from "too slow". `504` says a server did
//! not get its answer in time, which is what happened, and callers treat it as a transient 5xx.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_lifeline::timeout::ServerTimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let app = Router::new()
//!     .route("/slow", get(|| async {
//!         tokio::time::sleep(Duration::from_secs(60)).await;
//!         "too late"
//!     }))
//!     .layer(ServerTimeoutLayer::new(Duration::from_secs(5)));
//!
//! let response = app.oneshot(Request::get("/slow").body(Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
//! # }
//! ```
//!
//! And the client side: each attempt gets at most 1 s, less when the deadline is nearer.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_lifeline::context::Deadline;
//! use tower_lifeline::timeout::{AttemptTimedOut, AttemptTimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let hangs = service_fn(|_req: Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(3600)).await;
//!     Ok::<_, std::convert::Infallible>(Response::new(()))
//! });
//! let client = AttemptTimeoutLayer::new(Duration::from_secs(1)).layer(hangs);
//!
//! let mut request = Request::new(());
//! request.extensions_mut().insert(Deadline::after(Duration::from_millis(300)));
//! let error = client.oneshot(request).await.unwrap_err();
//! let timed_out = error.downcast_ref::<AttemptTimedOut>().unwrap();
//! assert_eq!(timed_out.after(), Duration::from_millis(300));
//! assert!(timed_out.by_deadline(), "the deadline, not the attempt limit, ran out");
//! # }
//! ```
//!
//! # Differences from `tower::timeout` and `tower_http::timeout`
//!
//! `tower::timeout` has one fixed limit and knows no deadline; here the attempt's limit shrinks
//! with the call's deadline and the error says which one ran out. tower-http's server timeout
//! answered 408 (issue 300, above); this one answers 504.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::Deadline;
use crate::error::BoxError;

#[cfg(test)]
mod tests;

/// An attempt got no response within its limit.
///
/// Returned inside a [`BoxError`] by [`AttemptTimeout`]; find it with `downcast_ref` or
/// [`find_source`](crate::error::find_source). Whichever limit ran out, the attempt was sent and
/// the destination did not answer in time: the [classifier](crate::classify) calls it a failure
/// of the destination, and the strategy retries it only while time is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptTimedOut {
    after: Duration,
    limit: TimeLimit,
}

/// Which limit an attempt ran into.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeLimit {
    /// The attempt timeout itself.
    Attempt,
    /// The attempt's share of the deadline, when attempts split it
    /// ([`AttemptDeadline::Split`](crate::strategy::AttemptDeadline::Split)): later attempts
    /// have the rest.
    DeadlineShare,
    /// The call's deadline: no time is left for another attempt.
    Deadline,
}

impl AttemptTimedOut {
    /// The time the attempt was given.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Which limit ran out.
    pub fn limit(&self) -> TimeLimit {
        self.limit
    }

    /// Whether the call's deadline, shorter than the attempt timeout, was the limit. When it was,
    /// no time is left for another attempt.
    pub fn by_deadline(&self) -> bool {
        self.limit == TimeLimit::Deadline
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let after = self.after;
        match self.limit {
            TimeLimit::Attempt => write!(f, "attempt timed out after {after:?}"),
            TimeLimit::DeadlineShare => write!(
                f,
                "attempt timed out after {after:?}: its share of the deadline ran out"
            ),
            TimeLimit::Deadline => {
                write!(f, "attempt timed out after {after:?}: deadline reached")
            }
        }
    }
}

impl std::error::Error for AttemptTimedOut {}

/// Limits each attempt to min(timeout, time left before the deadline). See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct AttemptTimeoutLayer {
    timeout: Duration,
}

impl AttemptTimeoutLayer {
    /// Each attempt gets at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        AttemptTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service made by [`AttemptTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> AttemptTimeout<S> {
    /// `inner` wrapped as [`AttemptTimeoutLayer::new`](AttemptTimeoutLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S, timeout: Duration) -> Self {
        tower_layer::Layer::layer(&AttemptTimeoutLayer::new(timeout), inner)
    }
}

impl<S> AttemptTimeout<S> {
    inner_service_accessors!(S);
}

impl<S, B> Service<Request<B>> for AttemptTimeout<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AttemptTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let deadline = Deadline::of(req.extensions());
        let left = deadline.map(Deadline::remaining);
        let (limit, kind) = match left {
            Some(left) if left < self.timeout => (left, deadline_kind(&req)),
            _ => (self.timeout, TimeLimit::Attempt),
        };
        let attempt = Deadline::after(limit);
        // Layers below (propagation) send the attempt's budget, not the whole call's.
        req.extensions_mut().insert(attempt);
        AttemptTimeoutFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep_until(attempt.instant()),
            timed_out: AttemptTimedOut {
                after: limit,
                limit: kind,
            },
        }
    }
}

/// Whether the request's deadline is the call's or, when attempts split it, this attempt's share.
fn deadline_kind<B>(req: &Request<B>) -> TimeLimit {
    #[cfg(feature = "strategy")]
    if req
        .extensions()
        .get::<crate::context::DeadlineShare>()
        .is_some()
    {
        return TimeLimit::DeadlineShare;
    }
    let _ = req;
    TimeLimit::Deadline
}

pin_project! {
    /// The response future of [`AttemptTimeout`].
    pub struct AttemptTimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        timed_out: AttemptTimedOut,
    }
}

impl<F> fmt::Debug for AttemptTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTimeoutFuture")
            .field("limit", &self.timed_out.after)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for AttemptTimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if this.sleep.poll(cx).is_ready() {
            // Returning drops the inner future with this one: the transport cancels the attempt.
            tracing::debug!(timed_out = %this.timed_out, "giving up on the attempt");
            return Poll::Ready(Err(Box::new(this.timed_out.clone())));
        }
        Poll::Pending
    }
}

/// Answers `504 Gateway Timeout` when the handler takes longer than a fixed time. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct ServerTimeoutLayer {
    timeout: Duration,
    status: StatusCode,
}

impl ServerTimeoutLayer {
    /// Handlers get at most `timeout`; after it their future is dropped and the caller gets a 504.
    pub fn new(timeout: Duration) -> Self {
        ServerTimeoutLayer {
            timeout,
            status: StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The status of the answer on timeout (default 504; see the module docs before choosing
    /// 408).
    pub fn status_code(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl<S> Layer<S> for ServerTimeoutLayer {
    type Service = ServerTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTimeout {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ServerTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct ServerTimeout<S> {
    inner: S,
    layer: ServerTimeoutLayer,
}

impl<S> ServerTimeout<S> {
    /// `inner` wrapped as [`ServerTimeoutLayer::new`](ServerTimeoutLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S, timeout: Duration) -> Self {
        tower_layer::Layer::layer(&ServerTimeoutLayer::new(timeout), inner)
    }
}

impl<S> ServerTimeout<S> {
    inner_service_accessors!(S);
}

impl<S, B, ResBody> Service<Request<B>> for ServerTimeout<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ServerTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ServerTimeoutFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.layer.timeout),
            status: self.layer.status,
            timeout: self.layer.timeout,
        }
    }
}

pin_project! {
    /// The response future of [`ServerTimeout`].
    pub struct ServerTimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        status: StatusCode,
        timeout: Duration,
    }
}

impl<F> fmt::Debug for ServerTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTimeoutFuture")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ServerTimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        if this.sleep.poll(cx).is_ready() {
            tracing::debug!(timeout = ?this.timeout, "handler timed out");
            let mut response = Response::new(B::default());
            *response.status_mut() = *this.status;
            return Poll::Ready(Ok(response));
        }
        Poll::Pending
    }
}
