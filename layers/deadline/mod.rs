//! Deadline propagation: the caller's remaining time travels in `X-Request-Timeout`, every hop
//! inherits it, and work that cannot finish in time is refused before it starts.
//!
//! Three layers:
//!
//! - [`ServerDeadlineLayer`] reads the caller's deadline (`X-Request-Timeout`, else
//!   `grpc-timeout`, else the server's default of 20 s), clamps it to the server's maximum
//!   (60 s by default) and stores it in the [`RequestContext`](crate::context::RequestContext),
//!   in the request's extensions and as the task-local current context while the handler runs.
//!   A request with less than the low-time threshold left (5 ms by default) is answered
//!   `408 Request Timeout` at once and never reaches the handler. With
//!   [`cancel_on_expiry`](ServerDeadlineLayer::cancel_on_expiry), the handler's future is also
//!   dropped when the deadline passes, and the caller gets a `504` (aio-request's
//!   `cancel_on_timeout`; [`expiry_status`](ServerDeadlineLayer::expiry_status) says why not
//!   `408`, and sets another).
//! - [`RouteTimeoutLayer`] gives one route its own timeout in place of the server default, for a
//!   request that brought no deadline of its own (aio-request's `@aiohttp_timeout`). Put it on an
//!   axum route with `.route_layer(...)` or on a `MethodRouter` with `.layer(...)`.
//! - [`ClientDeadlineLayer`] fixes the effective deadline of an outbound call: the earliest of an
//!   explicit [`Deadline`](crate::context::Deadline) in the request's extensions (capped by the
//!   inherited one), else the inherited context deadline, else the layer's default (20 s): the
//!   default never shortens an inherited deadline, as in aio-request. With less than the threshold left it fails
//!   without sending; otherwise it writes `X-Request-Timeout` with the time remaining at the moment
//!   of sending, and stops waiting at the deadline.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_lifeline::context::RequestContext;
//! use tower_lifeline::deadline::ServerDeadlineLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let app = Router::new()
//!     .route("/", get(|ctx: RequestContext| async move {
//!         // The handler sees what is left of the caller's 2 seconds.
//!         let left = ctx.deadline().unwrap().remaining();
//!         format!("{}", left.as_millis())
//!     }))
//!     .layer(ServiceBuilder::new().layer(ServerDeadlineLayer::new()));
//!
//! let request = Request::get("/").header("x-request-timeout", "2").body(Body::empty()).unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(response.into_body(), 64).await.unwrap();
//! assert_eq!(&body[..], b"2000");
//!
//! // A caller with 1 ms left is refused before the handler runs.
//! let request = Request::get("/").header("x-request-timeout", "0.001").body(Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
//! # }
//! ```
//!
//! # Differences from `tower::timeout` and `tower_http::timeout`
//!
//! Those enforce a fixed duration per hop. Here the limit is the caller's: it is read from the
//! request, shrinks as it crosses hops, and the server refuses work the caller will not wait for.
//! The server layer answers with a response rather than an error, as tower-http does, because axum
//! needs infallible services and a dropped connection tells the caller nothing.

mod client;
mod error;
mod server;

#[cfg(test)]
mod tests;

#[cfg(feature = "client")]
pub(crate) use client::effective_deadline;
pub use client::{
    ClientDeadline, ClientDeadlineFuture, ClientDeadlineLayer, OnExpiry, Respond408,
    ReturnDeadlineExceeded,
};
pub use error::DeadlineExceeded;
pub use server::{
    RouteTimeout, RouteTimeoutLayer, ServerDeadline, ServerDeadlineFuture, ServerDeadlineLayer,
};

use std::time::Duration;

/// The default timeout of a request that brought no deadline, as in aio-request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Below this much time left, a request is not worth starting.
pub const DEFAULT_LOW_TIME_THRESHOLD: Duration = Duration::from_millis(5);

/// The default cap on a caller's deadline at a server.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(60);
