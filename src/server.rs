//! The server preset: one call wraps an axum `Router` in the whole server stack.
//!
//! [`Server::builder`] puts, outermost first:
//!
//! 1. the drain layer of a [`Shutdown`] handle (`Connection: close` while draining), around
//!    everything, probes included;
//! 2. server metrics (latency until the body ends, in flight), on the application's routes;
//! 3. the deadline layer (read, clamp, refuse what cannot finish);
//! 4. the priority layer;
//! 5. load shedding by priority and remaining deadline;
//! 6. the application's handlers;
//!
//! (with the `opentelemetry` feature, a server span that continues the caller's trace wraps 2
//! to 6) and adds `/metrics`, `/healthz` and `/readyz` outside the shedder: an overloaded server
//! must still answer its probes and its scrapes.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tower_lifeline::server::Server;
//!
//! # async fn run() -> Result<(), tower_lifeline::BoxError> {
//! let app = Router::new().route("/hello", get(|| async { "hello" }));
//! let server = Server::builder().capacity(512).build(app)?;
//! server.shutdown().listen_for_signals(); // SIGTERM and Ctrl-C drain gracefully
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;

use axum::Router;
use prometheus::Registry;
use tower::ServiceBuilder;

use crate::context::Priority;
use crate::deadline::ServerDeadlineLayer;
use crate::health::Health;
use crate::load_shed::{LoadShedLayer, LoadShedStats};
use crate::metrics::{self, MetricsConfig, ServerMetrics};
use crate::priority::ServerPriorityLayer;
use crate::shutdown::{Drained, Shutdown};

/// Configures a [`Server`]. See the [module docs](self).
pub struct ServerBuilder {
    deadline: ServerDeadlineLayer,
    priority: ServerPriorityLayer,
    capacity: usize,
    registry: Option<Registry>,
    metrics: MetricsConfig,
    shutdown: Shutdown,
    health: Health,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("deadline", &self.deadline)
            .field("priority", &self.priority)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            deadline: ServerDeadlineLayer::new(),
            priority: ServerPriorityLayer::new(),
            capacity: 1_024,
            registry: None,
            metrics: MetricsConfig::default(),
            shutdown: Shutdown::new(),
            health: Health::new(),
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

    /// Requests handled at once before shedding starts (default 1,024).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Where the metrics are registered and what `/metrics` serves (default: the process-wide
    /// default registry).
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

    /// Wraps `app` in the server stack and adds the probe and metrics routes. Fails if the
    /// metrics are already registered in the registry.
    ///
    /// `app` must leave `/metrics`, `/healthz` and `/readyz` free: axum panics on overlapping
    /// routes, at this call, at start-up.
    pub fn build(self, app: Router) -> Result<Server, prometheus::Error> {
        let registry = self
            .registry
            .unwrap_or_else(|| prometheus::default_registry().clone());
        let server_metrics = ServerMetrics::register(&registry, self.metrics)?;
        let shed = LoadShedLayer::new(self.capacity);
        metrics::register_load_shed(&registry, shed.clone())?;
        let stack = ServiceBuilder::new()
            .layer(server_metrics.layer())
            .layer(self.deadline)
            .layer(self.priority)
            .layer(shed.clone());
        let app = app.layer(stack);
        // Outermost on the application's routes: refusals by the stack are spans too.
        #[cfg(feature = "opentelemetry")]
        let app = app.layer(crate::otel::ServerTraceLayer::new());
        let router = app
            .route("/metrics", metrics::route(registry.clone()))
            .merge(self.health.shutdown(&self.shutdown).router())
            .layer(self.shutdown.layer());
        Ok(Server {
            router,
            shutdown: self.shutdown,
            shed,
            registry,
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
}

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

    /// The wrapped router, to serve in any way axum allows.
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

    /// The registry `/metrics` serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves on `listener` until the shutdown handle fires, then drains within the grace period.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<Drained> {
        crate::shutdown::serve(listener, self.router, self.shutdown).await
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
