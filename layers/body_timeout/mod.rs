//! A bound on how long a request body may take to arrive: a slow or never-finishing upload fails
//! instead of holding a handler, a load-shedding slot and a connection for ever.
//!
//! [`RequestBodyTimeoutLayer`] gives every request body until the earlier of its arrival plus the
//! body timeout and the request's [`Deadline`](crate::Deadline) (from its
//! [`RequestContext`], so the layer sits inside the [deadline layer](crate::deadline)). A body
//! still arriving then fails with a [`BodyTimedOut`] error, which a handler reading it sees as a
//! body error (axum's extractors answer `400`). A request without a body is passed through
//! untouched and arms no timer.
//!
//! The layer also puts an [`UploadProgress`] into the extensions of each request with a body and
//! marks it when the body ends or fails: [load shedding](crate::load_shed) reads it to leave the
//! upload, which the caller controls, out of its route-time estimate.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::{Body, Bytes}, routing::post, Router};
//! use http::{Request, StatusCode};
//! use http_body_util::channel::Channel;
//! use tower::ServiceExt;
//! use tower_lifeline::body_timeout::RequestBodyTimeoutLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let app = Router::new()
//!     .route("/upload", post(|body: Bytes| async move { body.len().to_string() }))
//!     .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(10)));
//!
//! // A body that never ends: the handler's read fails after 10 s, and the request is answered.
//! let (_sender, never) = Channel::<Bytes, std::io::Error>::new(1);
//! let request = Request::post("/upload").body(Body::new(never)).unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::BAD_REQUEST);
//!
//! let request = Request::post("/upload").body(Body::from("hello")).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! # }
//! ```
//!
//! # Differences from `tower_http::timeout::RequestBodyTimeout`
//!
//! tower-http's timer restarts at every frame: a caller that sends one byte just inside the
//! timeout, again and again, holds the request for ever. Here the limit counts from the request's
//! arrival and is cut by its deadline, so no caller holds the server longer than the body
//! timeout, whatever its pace.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::RequestContext;
use crate::error::BoxError;
use crate::upload::UploadProgress;

/// The default body timeout of the `Server` preset.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body did not finish arriving in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTimedOut {
    after: Duration,
}

impl BodyTimedOut {
    /// How long after the request's arrival the body was cut.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body not received within {:?} of the request",
            self.after
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// Bounds how long request bodies may take. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RequestBodyTimeoutLayer {
    timeout: Duration,
}

impl RequestBodyTimeoutLayer {
    /// Every body must have arrived within `timeout` of its request (and by its deadline).
    pub fn new(timeout: Duration) -> Self {
        RequestBodyTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for RequestBodyTimeoutLayer {
    type Service = RequestBodyTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBodyTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service made by [`RequestBodyTimeoutLayer`]. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RequestBodyTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> RequestBodyTimeout<S> {
    /// `inner` wrapped as [`RequestBodyTimeoutLayer::new`](RequestBodyTimeoutLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S, timeout: Duration) -> Self {
        tower_layer::Layer::layer(&RequestBodyTimeoutLayer::new(timeout), inner)
    }
}

impl<S> RequestBodyTimeout<S> {
    inner_service_accessors!(S);
}

impl<S, B> Service<Request<B>> for RequestBodyTimeout<S>
where
    S: Service<Request<TimeoutBody<B>>>,
    B: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.body().is_end_stream() {
            return self.inner.call(req.map(TimeoutBody::untimed));
        }
        let now = Instant::now();
        let mut limit = now + self.timeout;
        if let Some(deadline) = RequestContext::of(&req).deadline() {
            limit = limit.min(deadline.instant());
        }
        let progress = UploadProgress::starting_at(now);
        req.extensions_mut().insert(progress.clone());
        let after = limit.saturating_duration_since(now);
        self.inner.call(req.map(|inner| TimeoutBody {
            inner,
            timer: Some(Timer {
                after,
                progress: Some(progress),
            }),
            sleep: Some(tokio::time::sleep_until(limit)),
        }))
    }
}

/// What a timed body needs beside its sleep.
struct Timer {
    after: Duration,
    /// Marked once when the body ends or fails, then dropped.
    progress: Option<UploadProgress>,
}

pin_project! {
    /// A request body that fails with [`BodyTimedOut`] if it has not ended by its limit.
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        timer: Option<Timer>,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<B> TimeoutBody<B> {
    fn untimed(inner: B) -> Self {
        TimeoutBody {
            inner,
            timer: None,
            sleep: None,
        }
    }
}

impl<B> fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("timed", &self.timer.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            let ended = match &frame {
                None => Some(true),
                Some(Err(_)) => Some(false),
                Some(Ok(_)) => this.inner.is_end_stream().then_some(true),
            };
            if let Some(ok) = ended {
                if let Some(progress) = this.timer.as_mut().and_then(|t| t.progress.take()) {
                    if ok {
                        progress.finish();
                    } else {
                        progress.fail();
                    }
                }
                this.sleep.set(None);
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                this.sleep.set(None);
                let after = this.timer.as_ref().map_or(Duration::ZERO, |t| t.after);
                if let Some(progress) = this.timer.as_mut().and_then(|t| t.progress.take()) {
                    progress.fail();
                }
                tracing::debug!(?after, "request body too slow: failing it");
                return Poll::Ready(Some(Err(Box::new(BodyTimedOut { after }))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
