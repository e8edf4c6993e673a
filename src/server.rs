//! The server preset: one call wraps an axum `Router` in the whole server stack.
//!
//! [`Server::builder`] puts, outermost first (the README's "The order of the stacks" says why each
//! sits where it does):
//!
//! 1. the drain layer of a [`Shutdown`] handle (`Connection: close` while draining), around
//!    everything, probes included;
//! 2. server metrics (latency until the body ends, in flight), on the application's routes;
//! 3. with the `grpc` feature, the stack's refusals of gRPC requests in gRPC's terms
//!    ([`GrpcRefusalsLayer`](crate::grpc::GrpcRefusalsLayer));
//! 4. the deadline layer (read, clamp, refuse what cannot finish);
//! 5. the priority layer;
//! 6. the request body timeout (a body must arrive within 30 s and by the deadline);
//! 7. load shedding by priority and remaining deadline, under an adaptive concurrency limit
//!    unless a fixed [`capacity`](ServerBuilder::capacity) is set;
//! 8. the application's handlers;
//!
//! (with the `opentelemetry` feature, a server span that continues the caller's trace wraps
//! them) and adds `/metrics`, `/healthz` and `/readyz` outside the shedder: an overloaded server must
//! still answer its probes and its scrapes. With [`ServerBuilder::metrics_listener`], `/metrics`
//! moves to a listener of its own (the usual Kubernetes metrics port), with a small connection
//! cap of its own, so that scrapers and callers never compete.
//!
//! [`Server::serve`] serves the connections as the `connections` module's docs say: hyper-util's
//! server with a timer, a header-read timeout, an idle timeout, HTTP/2 keep-alive pings and a
//! stream bound, a maximum header size and a connection cap, each a builder setting.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tower_lifeline::server::Server;
//!
//! # async fn run() -> Result<(), tower_lifeline::BoxError> {
//! let app = Router::new().route("/hello", get(|| async { "hello" }));
//! let server = Server::builder().build(app)?; // no capacity to guess: the limit adapts
//! server.shutdown().listen_for_signals(); // SIGTERM and Ctrl-C drain gracefully
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use axum::Router;
use prometheus::Registry;
use tower::ServiceBuilder;

use crate::body_timeout::{RequestBodyTimeoutLayer, DEFAULT_BODY_TIMEOUT};
use crate::context::Priority;
use crate::deadline::ServerDeadlineLayer;
use crate::health::Health;
use crate::load_shed::{AdaptiveLimit, LoadShedLayer, LoadShedStats};
use crate::metrics::{self, MetricsConfig, ServerMetrics};
use crate::priority::{Network, ServerPriorityLayer};
use crate::shutdown::{Drained, Shutdown};

mod connections;
#[cfg(feature = "tls")]
mod tls;

#[cfg(feature = "tls")]
pub use tls::{InvalidServerTls, PeerCertificates, ServerTls, ServerTlsBuilder};

use connections::ConnectionSettings;
pub use connections::{
    default_max_connections, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL,
    DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_BYTES,
    FALLBACK_MAX_CONNECTIONS,
};

/// Configures a [`Server`]. See the [module docs](self).
pub struct ServerBuilder {
    deadline: ServerDeadlineLayer,
    priority: ServerPriorityLayer,
    capacity: Option<usize>,
    adaptive: AdaptiveLimit,
    registry: Option<Registry>,
    metrics: MetricsConfig,
    shutdown: Shutdown,
    health: Health,
    connections: ConnectionSettings,
    body_timeout: Duration,
    metrics_listener: Option<tokio::net::TcpListener>,
    #[cfg(feature = "tls")]
    tls: Option<ServerTls>,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("deadline", &self.deadline)
            .field("priority", &self.priority)
            .field("capacity", &self.capacity)
            .field("connections", &self.connections)
            .field("body_timeout", &self.body_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            deadline: ServerDeadlineLayer::new(),
            priority: ServerPriorityLayer::new(),
            capacity: None,
            adaptive: AdaptiveLimit::new(),
            registry: None,
            metrics: MetricsConfig::default(),
            shutdown: Shutdown::new(),
            health: Health::new(),
            connections: ConnectionSettings::default(),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            metrics_listener: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ServerBuilder {
    /// The deadline layer's settings (default timeout 20 s, maximum 60 s, 5 ms threshold).
    pub fn deadline(mut self, layer: ServerDeadlineLayer) -> Self {
        self.deadline = layer;
        self
    }

    /// Ignore callers' `X-Request-Priority` and give every request `priority` (public edges).
    pub fn fixed_priority(mut self, priority: Priority) -> Self {
        self.priority = ServerPriorityLayer::fixed(priority);
        self
    }

    /// Believe `X-Request-Priority` only from peers in `networks` (the cluster's, say), and give
    /// everyone else `Normal`: outside callers cannot claim High and take the share kept for it.
    /// See [`ServerPriorityLayer::trusted_from`].
    pub fn trust_priority_from(mut self, networks: impl IntoIterator<Item = Network>) -> Self {
        self.priority = ServerPriorityLayer::new().trusted_from(networks);
        self
    }

    /// A fixed number of requests handled at once before shedding starts, in place of the
    /// adaptive limit (the default, which finds the number from the requests' latency).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// The adaptive limit's settings (see [`AdaptiveLimit`]; the defaults need no tuning).
    /// Ignored when a fixed [`capacity`](Self::capacity) is set.
    pub fn adaptive_limit(mut self, settings: AdaptiveLimit) -> Self {
        self.adaptive = settings;
        self
    }

    /// Where the server's metrics are registered (default: a registry of this server's own, so
    /// that two servers in one process, in tests say, never collide). `/metrics` serves it and,
    /// after it, the process-wide default registry, where `prometheus`'s `register_*!` macros
    /// put an application's own metrics. Register client metrics here to serve them too
    /// (`ClientMetrics::register(server.registry(), ..)`).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Metric names and bounds (default OpenTelemetry names; [`MetricsConfig::aio_request`]
    /// for aio-request's).
    pub fn metrics(mut self, config: MetricsConfig) -> Self {
        self.metrics = config;
        self
    }

    /// The shutdown handle (default: a 30 s grace period, no drain delay).
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Readiness checks for `/readyz` (draining is always one).
    pub fn health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Serve over TLS (feature `tls`): HTTP/2 and HTTP/1.1 by ALPN, optionally mutual TLS, with
    /// the same timeouts, cap and drain as cleartext; the handshake counts against the
    /// header-read timeout. A separate [`metrics_listener`](Self::metrics_listener) stays
    /// cleartext, as metrics ports usually are.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serve `/metrics` on this listener (the usual Kubernetes metrics port) instead of beside
    /// the application's routes, with at most [`METRICS_MAX_CONNECTIONS`] connections of its own.
    /// It stops when the drain starts.
    pub fn metrics_listener(mut self, listener: tokio::net::TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// How long a request body may take to arrive, counted from the request's arrival and cut
    /// by its deadline (default 30 s). See [`body_timeout`](crate::body_timeout).
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// How long a caller may take to send a whole request head (default 10 s). HTTP/1
    /// connections waiting for their next request are closed after it too (hyper starts it when
    /// it starts waiting for a head), and so is a connection that has sent no whole request by
    /// then, whatever its protocol.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.connections.header_read_timeout = timeout;
        self
    }

    /// A connection with no request in flight for this long is closed (default 60 s; checked
    /// at that interval, so closed within twice it). Mostly for HTTP/2, whose idle connections
    /// the header-read timeout does not close.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.connections.idle_timeout = timeout;
        self
    }

    /// The interval of HTTP/2 keep-alive pings; a ping not acknowledged within the same interval
    /// closes the connection (default 20 s; `None`: no pings).
    pub fn http2_keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.connections.http2_keep_alive_interval = interval;
        self
    }

    /// Concurrent HTTP/2 streams one connection may open (default 100).
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> Self {
        self.connections.http2_max_concurrent_streams = max;
        self
    }

    /// The largest request head (HTTP/1; at least 8 KiB, hyper's minimum) or header list
    /// (HTTP/2) in bytes (default 32 KiB). A larger one gets `431` and the connection closes.
    pub fn max_header_bytes(mut self, max: usize) -> Self {
        self.connections.max_header_bytes = max;
        self
    }

    /// Connections open at once (default: seven eighths of the process's file-descriptor limit,
    /// see [`default_max_connections`]). At the cap a new connection closes the oldest idle
    /// one, or is closed at once if every connection looked at is busy.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.connections.max_connections = max.max(1);
        self
    }

    /// Wraps `app` in the server stack and adds the probe and metrics routes. Fails if the
    /// metrics are already registered in the registry.
    ///
    /// `app` must leave `/metrics`, `/healthz` and `/readyz` free: axum panics on overlapping
    /// routes, at this call, at start-up.
    pub fn build(self, app: Router) -> Result<Server, prometheus::Error> {
        let registry = self.registry.unwrap_or_default();
        let server_metrics = ServerMetrics::register(&registry, self.metrics)?;
        let shed = match self.capacity {
            Some(capacity) => LoadShedLayer::new(capacity),
            None => LoadShedLayer::adaptive_with(self.adaptive),
        };
        metrics::register_load_shed(&registry, shed.clone())?;
        // The whole stack is one layer on each of the application's routes: axum boxes a route
        // once per `Router::layer`, and each box costs a clone and a boxed future per request.
        let stack = ServiceBuilder::new().layer(self.shutdown.layer());
        // Outermost on the application's routes but for the drain: refusals by the stack are
        // spans too.
        #[cfg(feature = "opentelemetry")]
        let stack = stack.layer(crate::otel::ServerTraceLayer::new());
        let stack = stack.layer(server_metrics.layer());
        // Inside the metrics, which then record the code a gRPC caller saw.
        #[cfg(feature = "grpc")]
        let stack = stack.layer(crate::grpc::GrpcRefusalsLayer::new());
        let stack = stack
            .layer(self.deadline)
            .layer(self.priority)
            .layer(RequestBodyTimeoutLayer::new(self.body_timeout))
            .layer(shed.clone());
        let app = app.layer(stack);
        let metrics_routes = Router::new().route(
            "/metrics",
            metrics::route_with_default_registry(registry.clone()),
        );
        let mut probes = self.health.shutdown(&self.shutdown).router();
        let metrics_server = match self.metrics_listener {
            Some(listener) => Some((listener, metrics_routes)),
            None => {
                probes = probes.merge(metrics_routes);
                None
            }
        };
        // The probes and `/metrics` are drained too, but neither metered nor shed. `with_state`
        // turns every route into its final service now rather than on each request (what
        // `axum::serve` does; `Server::serve` calls the router directly).
        let router = app
            .merge(probes.layer(self.shutdown.layer()))
            .with_state(());
        Ok(Server {
            router,
            shutdown: self.shutdown,
            shed,
            registry,
            connections: self.connections,
            metrics_server,
            #[cfg(feature = "tls")]
            tls: self
                .tls
                .map(|tls| tokio_rustls::TlsAcceptor::from(tls.config)),
            #[cfg(not(feature = "tls"))]
            tls: None,
        })
    }
}

/// An axum `Router` wrapped in the server stack, with its shutdown handle. See the
/// [module docs](self).
pub struct Server {
    router: Router,
    shutdown: Shutdown,
    shed: LoadShedLayer,
    registry: Registry,
    connections: ConnectionSettings,
    metrics_server: Option<(tokio::net::TcpListener, Router)>,
    tls: Option<connections::Acceptor>,
}

/// Connections the separate metrics listener takes at once: scrapers are few.
pub const METRICS_MAX_CONNECTIONS: usize = 8;

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The wrapped router, to serve in any way axum allows. Served that way it keeps every
    /// layer (the body timeout included) but none of [`serve`](Self::serve)'s connection limits:
    /// header-read and idle timeouts, the connection cap, HTTP/2 bounds, closing idle connections
    /// at the drain. It has no `/metrics` when they have a
    /// [listener of their own](ServerBuilder::metrics_listener).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The shutdown handle: trigger it, or wire it to signals with `listen_for_signals`.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// What load shedding has done so far.
    pub fn load_shed_stats(&self) -> LoadShedStats {
        self.shed.stats()
    }

    /// The server's registry, which `/metrics` serves (with the process-wide default one).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves on `listener` until the shutdown handle fires, then drains within the grace period
    /// (or until the drain is forced), with the connection limits of the builder.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<Drained> {
        if let Some((metrics_listener, metrics_router)) = self.metrics_server {
            let settings = ConnectionSettings {
                max_connections: METRICS_MAX_CONNECTIONS,
                ..self.connections
            };
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                let served =
                    connections::serve(metrics_listener, metrics_router, settings, shutdown, None)
                        .await;
                if let Err(error) = served {
                    tracing::warn!(%error, "the metrics listener failed");
                }
            });
        }
        connections::serve(
            listener,
            self.router,
            self.connections,
            self.shutdown,
            self.tls,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn status(app: &Router, request: Request<Body>) -> StatusCode {
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn wraps_the_app_and_adds_probes_and_metrics() {
        let app = Router::new().route("/hello", get(|| async { "hello" }));
        let server = Server::builder()
            .registry(Registry::new())
            .build(app)
            .unwrap();
        let router = server.router();
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        assert_eq!(status(&router, get("/hello")).await, StatusCode::OK);
        assert_eq!(status(&router, get("/healthz")).await, StatusCode::OK);
        assert_eq!(status(&router, get("/readyz")).await, StatusCode::OK);
        let expired = Request::get("/hello")
            .header("x-request-timeout", "0")
            .body(Body::empty())
            .unwrap();
        assert_eq!(status(&router, expired).await, StatusCode::REQUEST_TIMEOUT);
        let text = metrics::render(server.registry()).unwrap();
        assert!(text.contains(r#"route="/hello",status="200"} 1"#), "{text}");
        assert!(text.contains(r#"route="/hello",status="408"} 1"#), "{text}");
        assert!(
            !text.contains(r#"route="/healthz""#),
            "probes stay out of the metrics"
        );
        assert!(
            text.contains(r#"http_server_shed_requests_total{priority="low",reason="overload"} 0"#)
        );
        server.shutdown().trigger();
        assert_eq!(
            status(&router, get("/readyz")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn registering_twice_in_one_registry_is_an_error() {
        let registry = Registry::new();
        Server::builder()
            .registry(registry.clone())
            .build(Router::new())
            .unwrap();
        assert!(Server::builder()
            .registry(registry)
            .build(Router::new())
            .is_err());
    }
}
