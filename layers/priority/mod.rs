//! Priority propagation, server side: `X-Request-Priority` into the request context.
//!
//! [`ServerPriorityLayer`] reads the caller's priority (`high`, `normal`, `low`, any case;
//! `Normal` when absent or malformed) into the [`RequestContext`], in the request's extensions
//! and as the task-local current context while the handler runs. Client calls made by the handler
//! then carry it on, normalised (see [`Priority::normalize`]), through the
//! [propagation layer](crate::propagation). Load shedding reads it to drop low priority first.
//!
//! A public edge should not let callers choose their own priority:
//! [`ServerPriorityLayer::fixed`] ignores the header and gives every request the same one, and
//! [`ServerPriorityLayer::trusted_from`] believes it only from peers in the networks it names
//! (the cluster's, say) and gives everyone else the default, `Normal`. The attack it stops: a
//! handful of outside connections claiming `X-Request-Priority: high` take the share that load
//! shedding keeps for High, and shut out the real High traffic with everyone else. The peer is
//! the connection's (axum's `ConnectInfo<SocketAddr>`, which the `Server` preset sets): behind a
//! proxy, name the proxy's network only if the proxy removes the header from outside requests.
//!
//! # Example
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use http::Request;
//! use tower::ServiceExt;
//! use tower_lifeline::context::{Priority, RequestContext};
//! use tower_lifeline::priority::ServerPriorityLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let handler = || async { RequestContext::current().unwrap().priority().to_string() };
//! let trusting = Router::new().route("/", get(handler)).layer(ServerPriorityLayer::new());
//! let edge = Router::new().route("/", get(handler)).layer(ServerPriorityLayer::fixed(Priority::Low));
//!
//! for (app, expected) in [(trusting, "high"), (edge, "low")] {
//!     let request = Request::get("/").header("x-request-priority", "HIGH").body(Body::empty()).unwrap();
//!     let body = app.oneshot(request).await.unwrap().into_body();
//!     assert_eq!(axum::body::to_bytes(body, 16).await.unwrap(), expected);
//! }
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{InContext, Priority, RequestContext};
use crate::headers;

mod network;

pub use network::{InvalidNetwork, Network};

/// Reads `X-Request-Priority` into the request context. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct ServerPriorityLayer {
    fixed: Option<Priority>,
    default: Priority,
    /// When set, the header is read only from peers in these networks.
    trusted: Option<Arc<[Network]>>,
}

impl ServerPriorityLayer {
    /// Trusts the caller's `X-Request-Priority`; `Normal` when it is absent or malformed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ignores the caller's header and gives every request `priority`: for public edges that
    /// must not let callers promote themselves.
    pub fn fixed(priority: Priority) -> Self {
        ServerPriorityLayer {
            fixed: Some(priority),
            default: priority,
            trusted: None,
        }
    }

    /// Reads the caller's header only when the connection's peer is in one of `networks`;
    /// every other request gets the default priority (`Normal`). A request whose peer is unknown
    /// (no `ConnectInfo<SocketAddr>` in its extensions) is not trusted.
    pub fn trusted_from(mut self, networks: impl IntoIterator<Item = Network>) -> Self {
        self.trusted = Some(networks.into_iter().collect());
        self
    }

    fn trusts<B>(&self, req: &Request<B>) -> bool {
        let Some(trusted) = &self.trusted else {
            return true;
        };
        peer(req).is_some_and(|peer| trusted.iter().any(|n| n.contains(peer.ip())))
    }

    /// The priority of requests without a well-formed header (default `Normal`).
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.default = priority;
        self
    }
}

impl<S> Layer<S> for ServerPriorityLayer {
    type Service = ServerPriority<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerPriority {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ServerPriorityLayer`].
#[derive(Debug, Clone)]
pub struct ServerPriority<S> {
    inner: S,
    layer: ServerPriorityLayer,
}

impl<S> ServerPriority<S> {
    /// `inner` wrapped as [`ServerPriorityLayer::new`](ServerPriorityLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&ServerPriorityLayer::new(), inner)
    }
}

impl<S> ServerPriority<S> {
    inner_service_accessors!(S);
}

impl<S, B> Service<Request<B>> for ServerPriority<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InContext<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let layer = &self.layer;
        let priority = layer.fixed.unwrap_or_else(|| {
            Some(&req)
                .filter(|req| layer.trusts(req))
                .and_then(|req| req.headers().get(headers::X_REQUEST_PRIORITY))
                .and_then(headers::parse_priority)
                .unwrap_or(layer.default)
        });
        let ctx = RequestContext::of(&req).with_priority(priority);
        ctx.store_in(&mut req);
        let future = ctx.sync_scope(|| self.inner.call(req));
        ctx.scope(future)
    }
}

/// The connection's peer, as axum's `ConnectInfo` gives it.
fn peer<B>(req: &Request<B>) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    {
        req.extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
    }
    #[cfg(not(feature = "axum"))]
    {
        let _ = req;
        None
    }
}
