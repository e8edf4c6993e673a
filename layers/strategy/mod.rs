//! Request strategies: one attempt, sequential retries, or hedged parallel attempts, under a
//! retry budget, never sending a non-idempotent request that reached a server twice unless its
//! caller asked for it.
//!
//! [`StrategyLayer`] is aio-request's `single_attempt_strategy`, `sequential_strategy`,
//! `parallel_strategy`, `retry_until_deadline_expired` and `MethodBasedStrategy` as one tower
//! layer, done the way gRPC's retry and hedging policies, Finagle's backup requests and Polly v8's
//! hedging do them:
//!
//! - **What to use.** [`MethodStrategies`] picks by method: `GET`, `HEAD`, `OPTIONS` get three
//!   sequential attempts with linear backoff; `POST`, `PUT`, `PATCH`, `DELETE` get one, unless the
//!   request carries `Idempotency-Key`. A [`Strategy`] in the request's extensions is the
//!   caller's word for that request and is honoured for every method. Otherwise `POST` and
//!   `PATCH` without `Idempotency-Key` never get two attempts.
//! - **What failed.** A [`Classify`](crate::classify::Classify)er judges each attempt into an
//!   [`Outcome`](crate::outcome::Outcome): by default 5xx, 408, 429, transport errors, bodies cut
//!   short and attempts that ran out of time are failures, retried while time is left; a
//!   response carrying `X-Do-Not-Retry` is final.
//! - **Never sent.** An attempt that never reached the server (connect refused, DNS, an HTTP/2
//!   stream refused, no pooled connection in time) is sent again for *any* method, up to
//!   [`connection_attempts`](StrategyLayer::connection_attempts) (3) sends, within the deadline
//!   and the budget, as aio-request's transport does: the server never saw it.
//! - **When.** [`Delays`]: constant, linear or exponential backoff with jitter, full jitter, or
//!   [`PercentileDelays`] that follow each destination's observed latency. A 429 or 503 with
//!   `Retry-After` sets the wait instead (capped); if that wait would pass the deadline, the
//!   response is returned at once. No delay sleeps past the deadline.
//! - **How much.** A [`RetryBudget`] shared by all requests caps extra attempts at 20% of the
//!   traffic plus 10 a second; with the budget spent, no retry or hedge starts.
//! - **The body.** Every attempt needs the request body: it is buffered as it is sent (up to
//!   64 KiB, see [`crate::body`]); a larger body gets no further attempts. A request with one
//!   attempt is not buffered at all.
//! - **The deadline.** Each attempt gets all the time left, or with
//!   [`AttemptDeadline::Split`] an equal share of it, as aio-request's
//!   `split_deadline_between_attempts`.
//!
//! Hedging differs from `tower::hedge` in two ways: a rejected response (a fast 500) does not win
//! the race while other attempts are in flight, and the delay can follow each destination's own
//! latency rather than one histogram for the whole service.
//!
//! The strategy layer sits under the client deadline layer (which fixes the deadline it works
//! within) and over the circuit breaker and the propagation layer (which see every attempt).
//! Its inner service gets requests with a [`ReplayBody`](crate::body::ReplayBody) and must be
//! `Clone`: each extra attempt readies a clone of its own.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_lifeline::body::ReplayBody;
//! use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A backend that fails twice, then answers.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let backend = {
//!     let calls = calls.clone();
//!     service_fn(move |_req: Request<ReplayBody<String>>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!             let mut response = Response::new(());
//!             *response.status_mut() = status;
//!             Ok::<_, std::convert::Infallible>(response)
//!         }
//!     })
//! };
//! let layer = StrategyLayer::new()
//!     .strategy(Strategy::sequential(3, Delays::constant(Duration::from_millis(100))));
//! let client = layer.layer(backend);
//!
//! let response = client.oneshot(Request::get("http://backend/").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! assert_eq!(layer.stats().snapshot().retries, 2);
//! # }
//! ```

mod attempt;
mod budget;
mod delays;
mod engine;
mod future;
mod layer;
mod percentile;
mod policy;
mod service;
mod stats;

#[cfg(test)]
mod tests;

pub use budget::{InvalidBudget, RetryBudget};
pub use delays::Delays;
pub use future::StrategyFuture;
pub use layer::{AttemptDeadline, StrategyLayer, DEFAULT_CONNECTION_ATTEMPTS};
pub use percentile::{InvalidPercentileSettings, LatencyKey, PercentileDelays, PercentileSettings};
pub use policy::{MethodStrategies, Strategy};
pub use service::StrategyService;
pub use stats::{AttemptCount, StrategyStats, StrategyStatsSnapshot};
