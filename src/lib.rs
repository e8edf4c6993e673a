//! tower-lifeline: the resilience layer for HTTP services built on tower.
//!
//! Composable [`tower`] layers that give HTTP clients and servers what the Python library
//! aio-request gives aiohttp services, speaking the same wire format:
//!
//! - **deadline propagation** ([`deadline`]): a caller's remaining time travels in
//!   `X-Request-Timeout`, every hop inherits it, and work that cannot finish in time is refused
//!   before it starts;
//! - **priority propagation** ([`priority`], [`propagation`]) in `X-Request-Priority`;
//! - **request strategies** ([`strategy`]): single attempt, sequential retries with backoff and
//!   `Retry-After`, parallel (hedged) attempts with fixed or percentile-based delays, under a
//!   retry budget, never sending a non-idempotent request that reached a server twice unless its
//!   caller asked; each attempt judged into one [`Outcome`] that every client layer reads;
//! - **load shedding** ([`load_shed`]) by priority and remaining deadline, under a concurrency
//!   limit found from latency (or a fixed capacity);
//! - **graceful shutdown** ([`shutdown`]) and **health checks** ([`health`]);
//! - **timeouts** ([`timeout`]): a client attempt timeout and a server timeout; and a bound on
//!   how long a request body may take to arrive ([`body_timeout`]);
//! - **circuit breakers per destination** ([`circuit_breaker`]): after too many failures a
//!   destination is refused at once, until one probe shows it has recovered;
//! - **Prometheus metrics** ([`metrics`]) for servers and clients, with aio-request's names as a
//!   preset;
//! - **OpenTelemetry trace context** ([`otel`]): W3C `traceparent` across every hop, a span per
//!   call, attempt and server request.
//!
//! The presets assemble them in the right order: [`server::Server`] wraps an axum `Router` in the
//! whole server stack and serves it with connection limits (header-read, idle and body timeouts, a
//! connection cap, HTTP/2 bounds) that hold under slow and hostile callers; [`client::Client`] is
//! a hyper-util pooled client inside the whole client stack. The README explains the order of
//! both stacks.
//!
//! Every layer wraps any `tower::Service<http::Request<B>>`, so the same pieces stack onto an
//! axum `Router`, a hyper server or a hyper-util client through `tower::ServiceBuilder`.
//!
//! The request context ([`context`]) is what the layers share: a server layer stores the caller's
//! deadline and priority, and a client call made anywhere inside the handler inherits them.
//!
//! # Example: a server whose handler calls another service
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower::ServiceBuilder;
//! use tower_lifeline::ServiceBuilderExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(
//!     ServiceBuilder::new()
//!         .server_deadline(Duration::from_secs(20))
//!         .server_priority(),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Each layer sits behind a cargo feature of its own name; `full` (the default) turns them all on.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// `get_ref`, `get_mut` and `into_inner` of a service whose wrapped service of type `$inner` is
/// its `inner` field: the same three, documented the same way, on every service of the crate
/// (tower-http does the same with a macro of its own).
#[allow(unused_macros)] // Unused when only features without a service are on.
macro_rules! inner_service_accessors {
    ($inner:ident) => {
        /// The wrapped service.
        pub fn get_ref(&self) -> &$inner {
            &self.inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut $inner {
            &mut self.inner
        }

        /// Unwraps the service.
        pub fn into_inner(self) -> $inner {
            self.inner
        }
    };
}

pub mod body;
pub mod classify;
pub mod context;
pub mod error;
pub mod headers;
pub mod outcome;
pub mod upload;

mod builder;
#[cfg(any(feature = "metrics", feature = "strategy", feature = "circuit-breaker"))]
mod destination;
#[cfg(any(feature = "shutdown", feature = "metrics", feature = "load-shed"))]
mod sharded;
#[cfg(any(feature = "strategy", feature = "opentelemetry"))]
mod span;
#[cfg(test)]
mod test_util;
pub use builder::ServiceBuilderExt;

#[cfg(feature = "deadline")]
#[path = "../layers/deadline/mod.rs"]
pub mod deadline;

#[cfg(feature = "priority")]
#[path = "../layers/priority/mod.rs"]
pub mod priority;

#[cfg(feature = "propagation")]
#[path = "../layers/propagation/mod.rs"]
pub mod propagation;

#[cfg(feature = "strategy")]
#[path = "../layers/strategy/mod.rs"]
pub mod strategy;

#[cfg(feature = "metrics")]
#[path = "../layers/metrics/mod.rs"]
pub mod metrics;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "load-shed")]
#[path = "../layers/load_shed/mod.rs"]
pub mod load_shed;

#[cfg(feature = "shutdown")]
#[path = "../layers/shutdown/mod.rs"]
pub mod shutdown;

#[cfg(feature = "health")]
#[path = "../layers/health/mod.rs"]
pub mod health;

#[cfg(feature = "body-timeout")]
#[path = "../layers/body_timeout/mod.rs"]
pub mod body_timeout;

#[cfg(feature = "timeout")]
#[path = "../layers/timeout/mod.rs"]
pub mod timeout;

#[cfg(feature = "circuit-breaker")]
#[path = "../layers/circuit_breaker/mod.rs"]
pub mod circuit_breaker;

#[cfg(feature = "read-body")]
#[path = "../layers/read_body/mod.rs"]
pub mod read_body;

#[cfg(feature = "opentelemetry")]
#[path = "../layers/otel/mod.rs"]
pub mod otel;

#[cfg(feature = "grpc")]
#[path = "../layers/grpc/mod.rs"]
pub mod grpc;

pub use context::{Deadline, Priority, RequestContext};
pub use error::BoxError;
pub use outcome::Outcome;

/// The `prometheus` crate this one registers its metrics with, so that an application names
/// the same version without pinning it (a second version is a second, incompatible `Registry`).
#[cfg(feature = "metrics")]
pub use prometheus;
