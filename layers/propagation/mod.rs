//! Context propagation, client side: writes `X-Request-Timeout`, `X-Request-Priority` and
//! `X-Service-Name` on every outbound request.
//!
//! [`PropagateLayer`] sits closest to the transport, under the strategy layer, so that each
//! attempt carries the time remaining at the moment it is sent. It reads:
//!
//! - the deadline: an explicit [`Deadline`] in the request's extensions (the
//!   [client deadline layer](crate::deadline::ClientDeadlineLayer) leaves the effective one there),
//!   else the inherited context deadline; no deadline, no `X-Request-Timeout`;
//! - the priority: an explicit [`Priority`] in the request's extensions, normalised against the
//!   inherited one as aio-request does, else the inherited priority, else the layer's default;
//! - the service name: from the layer's configuration.
//!
//! The layer owns these three headers: values already on the request are replaced.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lifeline::context::{Deadline, Priority, RequestContext};
//! use tower_lifeline::propagation::PropagateLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A transport that answers with the headers it was sent.
//! let transport = service_fn(|req: Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.headers().clone()))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(PropagateLayer::new().service_name("billing").unwrap())
//!     .service(transport);
//!
//! // As if inside a handler serving a High request with 2 s left.
//! let inbound = RequestContext::new(Some(Deadline::after(Duration::from_secs(2))), Priority::High);
//! let mut request = Request::new(());
//! request.extensions_mut().insert(Priority::Low);
//! let sent: HeaderMap = inbound.scope(client.oneshot(request)).await.unwrap().into_body();
//!
//! assert_eq!(sent["x-request-timeout"], "2.000");
//! assert_eq!(sent["x-request-priority"], "normal"); // Low under High meets in the middle
//! assert_eq!(sent["x-service-name"], "billing");
//! # }
//! ```

use std::fmt;
use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{Deadline, Priority, RequestContext};
use crate::headers;

/// Writes the propagation headers. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct PropagateLayer {
    service_name: Option<HeaderValue>,
    default_priority: Priority,
}

/// A service name that cannot be sent: empty, longer than 64 bytes, or with characters other
/// than letters, digits, `-`, `_`, `.` (the receiving server would ignore it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidServiceName(String);

impl fmt::Display for InvalidServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid service name {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
            self.0
        )
    }
}

impl std::error::Error for InvalidServiceName {}

impl PropagateLayer {
    /// No service name, default priority `Normal`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `X-Service-Name: name`, which servers use as the client label of their metrics.
    pub fn service_name(mut self, name: &str) -> Result<Self, InvalidServiceName> {
        let value = HeaderValue::from_str(name)
            .ok()
            .filter(|v| headers::parse_service_name(v).is_some())
            .ok_or_else(|| InvalidServiceName(name.to_owned()))?;
        self.service_name = Some(value);
        Ok(self)
    }

    /// The priority of calls with neither an explicit nor an inherited one (default `Normal`).
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.default_priority = priority;
        self
    }
}

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Propagate {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`PropagateLayer`].
#[derive(Debug, Clone)]
pub struct Propagate<S> {
    inner: S,
    layer: PropagateLayer,
}

impl<S> Propagate<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Propagate<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let inherited = RequestContext::current();
        let deadline = req
            .extensions()
            .get::<Deadline>()
            .copied()
            .or_else(|| inherited.and_then(|c| c.deadline()));
        let priority = match (req.extensions().get::<Priority>().copied(), inherited) {
            (Some(own), Some(ctx)) => own.normalize(ctx.priority()),
            (Some(own), None) => own,
            (None, Some(ctx)) => ctx.priority(),
            (None, None) => self.layer.default_priority,
        };
        let headers = req.headers_mut();
        if let Some(deadline) = deadline {
            headers.insert(
                headers::X_REQUEST_TIMEOUT,
                headers::format_deadline(deadline),
            );
        }
        headers.insert(
            headers::X_REQUEST_PRIORITY,
            headers::priority_value(priority),
        );
        if let Some(name) = &self.layer.service_name {
            headers.insert(headers::X_SERVICE_NAME, name.clone());
        }
        self.inner.call(req)
    }
}
