//! Circuit breaker per destination: after too many failures, calls to a destination are
//! refused at once, until a single probe shows it has recovered.
//!
//! [`CircuitBreakerLayer`] follows the model of Polly v8 and aio-request's
//! `DefaultCircuitBreaker`. Each *scope* (by default the destination, `scheme://authority`; any
//! [`ScopeBy`] function can choose another, such as per route or per method) has its own breaker:
//!
//! - **Closed**: calls go through and their outcomes are counted in a rolling window of
//!   `sampling_duration`, split into `windows_count` buckets (default 10) that leave the window
//!   one at a time. When the window holds at least `minimum_throughput` requests and
//!   failures / requests ≥ `failure_threshold`, the breaker opens. Optionally it also opens after
//!   `consecutive_failures` failures in a row (Finagle and Envoy use 5).
//! - **Open**: calls are refused without reaching the inner service, until `break_duration` has
//!   passed.
//! - **Half-open**: the first call after the break is the one probe; every other call is still
//!   refused while it is in flight. A successful probe closes the breaker with a fresh window; a
//!   failed one (a timeout included) opens it for another break. A probe cancelled before it
//!   ends (its caller gave up before its deadline) leaves the breaker open, and the next call
//!   probes.
//!
//! What counts is the attempt's [`Outcome`](crate::outcome::Outcome), from the
//! [classifier](crate::classify) the strategies share, so the two layers agree on what failed:
//!
//! - a success counts as a success; a failure (5xx, 408, 429, an error after the request left)
//!   or a request that could not reach the destination (connect refused, DNS) as a failure;
//! - an attempt that ran until its deadline counts as a failure *whichever layer cut it*: the
//!   attempt timeout below, or the deadline layer or a strategy's split share above dropping it.
//!   A ticket dropped unrecorded at or after its attempt's deadline is a timeout, so a
//!   destination that accepts and never answers trips the breaker with or without an attempt
//!   timeout;
//! - what says nothing about the destination counts nothing: a hedge we cancelled, a caller
//!   that went away, a call refused for want of time, no connection free in time;
//! - a half-open probe that ends in anything but a success keeps the breaker open: a failed
//!   probe starts another break; a cancelled one leaves it open for the next call to probe.
//!
//! A refused call fails, by default ([`ReturnCircuitOpen`]), with a [`CircuitOpen`] error naming
//! the scope and when the next probe may go; the strategy above does not retry it. With
//! [`respond_502`](CircuitBreakerLayer::respond_502) it gets aio-request's answer instead: a
//! synthetic `502 Bad Gateway` carrying `X-Circuit-Breaker: 1` and `X-Do-Not-Retry: 1`, which
//! needs a response body type with a `Default` (hyper's `Incoming` has none: map it to axum's
//! `Body`, or `BoxBody`).
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lifeline::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerSettings, CircuitState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let settings = CircuitBreakerSettings::builder()
//!     .failure_threshold(0.5)
//!     .minimum_throughput(4)
//!     .sampling_duration(Duration::from_secs(10))
//!     .break_duration(Duration::from_secs(5))
//!     .build()?;
//! let breaker = CircuitBreakerLayer::new(settings).respond_502();
//! let registry = breaker.registry();
//!
//! // A destination that answers 503 while `down` is set.
//! let down = Arc::new(AtomicBool::new(true));
//! let transport = service_fn({
//!     let down = down.clone();
//!     move |_req: Request<()>| {
//!         let mut response = Response::new(String::new());
//!         if down.load(Ordering::SeqCst) {
//!             *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//!         }
//!         async move { Ok::<_, std::convert::Infallible>(response) }
//!     }
//! });
//! let client = ServiceBuilder::new().layer(breaker).service(transport);
//! let call = || client.clone().oneshot(Request::get("http://inventory:8080/stock").body(()).unwrap());
//!
//! for _ in 0..4 {
//!     assert_eq!(call().await?.status(), StatusCode::SERVICE_UNAVAILABLE);
//! }
//! assert_eq!(registry.state("http://inventory:8080"), Some(CircuitState::Open));
//!
//! // Open: answered at once without calling the destination (aio-request's 502, as asked for
//! // above; the default is a typed `CircuitOpen` error), marked so that no retry follows.
//! let refused = call().await?;
//! assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
//! assert_eq!(refused.headers()["x-circuit-breaker"], "1");
//! assert_eq!(refused.headers()["x-do-not-retry"], "1");
//!
//! // The destination recovers; after the break, one probe goes through and closes the breaker.
//! down.store(false, Ordering::SeqCst);
//! tokio::time::advance(Duration::from_secs(5)).await;
//! assert_eq!(call().await?.status(), StatusCode::OK);
//! assert_eq!(registry.state("http://inventory:8080"), Some(CircuitState::Closed));
//! # Ok(())
//! # }
//! ```
//!
//! # Readiness
//!
//! The scope comes from the request, and `poll_ready` has no request, so an open breaker cannot
//! say "not ready": that would also stall calls to every healthy destination behind one sick
//! one. `poll_ready` is the inner service's own, and a refusal happens in `call`, where the
//! request is known; the inner service, readied but not called, keeps its readiness for the next
//! call on the same instance, as tower's contract allows. The inner service is called in `call`
//! on the very instance `poll_ready` readied; it never moves into the response future.
//!
//! # Production qualities
//!
//! - **No shared lock on the closed path.** Each scope's state, window buckets and consecutive
//!   count are atomics; counting an outcome is one compare-and-swap on a bucket, and every
//!   transition is a compare-and-swap on the scope's state word, so exactly one caller wins it
//!   (the single probe, say) and nobody waits. Scopes live in a table of up to 16 shards, each
//!   behind its own `RwLock` taken for reading on lookup and for writing only to add a scope; a
//!   service instance remembers the scope of its previous call and skips the table when the next
//!   call has the same one, which is every call of a client talking to one destination.
//! - **Bounded memory.** The table holds at most `max_scopes` scopes (default 1024), split among
//!   the shards. Adding a scope to a full shard first forgets the scopes idle for `idle_timeout`
//!   (default 5 minutes), then the least recently used: a client fed attacker-chosen hosts cannot
//!   grow it. Shard lookups hash with std's randomly keyed SipHash, so hosts cannot be chosen to
//!   collide. [`BreakerRegistry::forget_idle`] forgets idle scopes on demand.
//! - **Observable.** [`BreakerRegistry::state`] and [`BreakerRegistry::snapshot`]; an `INFO`
//!   tracing event on every transition with the scope, the two states, the failure ratio and the
//!   requests in the window; and [`OnTransition`] listeners, the hook for a state gauge.
//!
//! Outcomes are counted only for calls let through by the state that is current when they end:
//! a slow call started before the breaker opened does not count against the next window. Each
//! bucket is known by its epoch modulo 2^24: buckets that leave the window are zeroed as new ones
//! start, and a scope unused for 2^23 bucket lengths (2.3 hours at the shortest bucket, 1 ms) has
//! its window cleared on its next call, so a stale bucket is never mistaken for a current one.
//!
//! # Differences from the obvious peers
//!
//! tower's `load_shed` and `limit` signal through `poll_ready`; a breaker per destination cannot
//! (see above). Breakers that trip on consecutive failures alone (failsafe's default) open on a
//! short burst at high traffic; the ratio over a window with a minimum throughput does not, and
//! the consecutive trip is there for low traffic, where the window never fills.

mod encoding;
mod error;
mod future;
mod layer;
mod registry;
mod scope;
mod service;
mod settings;
mod table;

#[cfg(test)]
mod tests;

pub use error::CircuitOpen;
pub use future::CircuitBreakerFuture;
pub use layer::{
    ByDestination, CircuitBreakerLayer, OnOpen, Respond502, ReturnCircuitOpen, ScopeBy,
};
pub use registry::{BreakerRegistry, CircuitState, OnTransition, ScopeSnapshot, Transition};
pub use service::CircuitBreaker;
pub use settings::{CircuitBreakerSettings, CircuitBreakerSettingsBuilder, InvalidSettings};
