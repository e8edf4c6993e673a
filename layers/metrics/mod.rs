//! Prometheus metrics for servers and clients.
//!
//! **Server** ([`ServerMetrics`]): a latency histogram labelled by client (`X-Service-Name`,
//! lowercased, `unknown` when absent or malformed), method, route and status, and an in-flight
//! gauge. The route is axum's [`MatchedPath`](axum::extract::MatchedPath) template, never the
//! raw path (or a [`RouteTemplate`](crate::context::RouteTemplate) in the request's extensions);
//! a request that matched no route is `unmatched`. A request is finished when its response body
//! ends or is dropped, not when the headers are ready, so streamed responses are measured whole.
//! A request whose future is dropped before it answers (the caller went away) is recorded as
//! 499, as aio-request does; an error from the inner service as 500.
//!
//! **Client** ([`ClientMetrics`]): a histogram of whole calls, labelled endpoint (scheme and
//! authority), method, path, status and `circuit_breaker` (whether a breaker answered), and one
//! of single attempts. The path is the caller's `RouteTemplate` if given, else a bounded
//! normalisation (`/users/42` → `/users/{id}`), or the raw path if
//! [`MetricsConfig::raw_paths`] opts in. A transport failure has status `error`, or `timeout`
//! when a deadline or timeout ended it, or `circuit_open` (with `circuit_breaker="true"`) when a
//! breaker refused it; a call dropped by its caller, `499`.
//! The same registration exposes the strategy layers' retry, hedge and budget counters
//! ([`ClientMetrics::watch_strategy`]) and the breakers' states and refusals
//! ([`ClientMetrics::watch_breakers`]), for every client that shares it; the `Client` preset
//! watches its own. On the server side, [`register_load_shed`] exposes what load shedding
//! refused and why.
//!
//! **Names.** By default [`MetricNames::opentelemetry`]; [`MetricNames::aio_request`]
//! reproduces aio-request's names, labels and buckets exactly; and
//! [`MetricNames::semantic_conventions`] gives OpenTelemetry's HTTP metric conventions under the
//! names the OTel-to-Prometheus mapping gives them (`http_server_request_duration_seconds` with
//! `http_request_method`, `http_route`, `http_response_status_code`, `error_type`).
//!
//! **Bounds.** Every label of every series is bounded. The client histograms have at most
//! [`MetricsConfig::max_label_sets`] label sets each (default 2,000); past that, new
//! combinations are recorded with their open-ended labels (endpoint, path) as `other`, and
//! `http_client_metric_label_overflow_total` counts how often. The server histogram has at most
//! [`MetricsConfig::max_server_label_sets`] (default 400, under 1 MB of `/metrics` with the
//! default buckets); its client label is chosen by callers, so past the cap it forgets the label
//! sets used least recently instead of folding new ones: a flood of invented `X-Service-Name`
//! values cannot push a caller that keeps calling into `other`, and a newcomer gets a series of
//! its own at once. `http_server_metric_label_overflow_total` counts the sets forgotten (their
//! series leave the scrape). Methods outside the standard nine are `_OTHER`. The server's status
//! is the one sent on the wire (a final `1xx` other than `101`, which hyper cannot send, is
//! `500`), exact for the codes the `http` crate names and folded to its class (`4xx`) for the
//! others.
//!
//! **Exposition.** [`render`] gives the text format; [`route`] serves it from an axum router.
//!
//! # Example
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use http::Request;
//! use prometheus::Registry;
//! use tower::ServiceExt;
//! use tower_lifeline::metrics::{self, MetricsConfig, ServerMetrics};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = Registry::new();
//! let server = ServerMetrics::register(&registry, MetricsConfig::default()).unwrap();
//! let app = Router::new()
//!     .route("/users/{id}", get(|| async { "hello" }))
//!     .layer(server.layer())
//!     .route("/metrics", metrics::route(registry.clone()));
//!
//! let request = Request::get("/users/42").header("x-service-name", "Billing").body(Body::empty()).unwrap();
//! let response = app.clone().oneshot(request).await.unwrap();
//! axum::body::to_bytes(response.into_body(), 1024).await.unwrap(); // the request ends with its body
//!
//! let text = metrics::render(&registry).unwrap();
//! assert!(text.contains(
//!     r#"http_server_request_duration_seconds_count{client="billing",method="GET",route="/users/{id}",status="200"} 1"#
//! ));
//! # }
//! ```

#[cfg(feature = "circuit-breaker")]
mod breaker;
mod client;
mod exposition;
mod gauge;
mod labels;
#[cfg(feature = "load-shed")]
mod load_shed;
mod names;
mod semconv;
mod series;
mod server;
#[cfg(feature = "strategy")]
mod strategy;

#[cfg(test)]
mod tests;

pub use client::{ClientMetrics, ClientMetricsFuture, ClientMetricsLayer, ClientMetricsService};
#[cfg(feature = "axum")]
pub use exposition::route;
#[cfg(feature = "axum")]
pub(crate) use exposition::route_with_default_registry;
pub use exposition::{render, response};
#[cfg(feature = "load-shed")]
pub use load_shed::register_load_shed;
pub use names::MetricNames;
pub use server::{
    MeteredBody, ServerMetrics, ServerMetricsFuture, ServerMetricsLayer, ServerMetricsService,
};

/// How the metrics are named and bounded.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Names, labels and buckets (default [`MetricNames::opentelemetry`]).
    pub names: MetricNames,
    /// The most label sets one client histogram may have before new ones fold into `other`
    /// (default 2,000).
    pub max_label_sets: usize,
    /// The most label sets the server histogram keeps; past it the least recently used are
    /// forgotten (default 400: about 850 KB of `/metrics` at most with the default buckets).
    pub max_server_label_sets: usize,
    /// Label client metrics with raw request paths instead of normalised ones. Only for
    /// clients whose paths carry no ids: every distinct path is a series (up to the cap).
    pub raw_paths: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            names: MetricNames::opentelemetry(),
            max_label_sets: 2_000,
            max_server_label_sets: 400,
            raw_paths: false,
        }
    }
}

impl MetricsConfig {
    /// aio-request's names, labels and buckets, the other settings at their defaults.
    pub fn aio_request() -> Self {
        MetricsConfig {
            names: MetricNames::aio_request(),
            ..Self::default()
        }
    }

    /// OpenTelemetry's HTTP metric conventions as Prometheus names them
    /// ([`MetricNames::semantic_conventions`]), the other settings at their defaults.
    pub fn semantic_conventions() -> Self {
        MetricsConfig {
            names: MetricNames::semantic_conventions(),
            ..Self::default()
        }
    }
}
