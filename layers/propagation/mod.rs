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
//! With the `grpc` feature, a gRPC request (content type `application/grpc`) with a deadline
//! also gets `grpc-timeout`, in gRPC's format, replacing one already there: a `grpc-timeout` the
//! caller set is already in the deadline, as the [client deadline
//! layer](crate::deadline::ClientDeadlineLayer) reads it.
//!
//! With the `opentelemetry` feature it also writes the W3C `traceparent` and `tracestate` of the
//! current span (the attempt's, under the `Client` preset), with OpenTelemetry's global
//! propagator; see the `otel` module. They go to the same destinations as the other three.
//!
//! # Third parties
//!
//! A deadline, a priority and a service name say things about the caller's internals. By default
//! every destination receives them (aio-request's behaviour); a client that also calls outside
//! services restricts them with [`PropagateLayer::only_to_hosts`] (an allow-list: exact hosts,
//! or `.suffix` for a domain and its subdomains) or [`PropagateLayer::only_to`] (any predicate on
//! the host). A request to any other destination has all three headers *removed*, including ones
//! a layer above or the caller set, so nothing leaks by another road. The destination is the
//! host of the request's URI, else of its `Host` header; a request with neither is not sent them.
//!
//! ```
//! use http::{Request, Response};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_lifeline::propagation::{PropagateLayer, ServiceName};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let echo = service_fn(|req: Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.headers().clone()))
//! });
//! let client = PropagateLayer::new()
//!     .service_name(ServiceName::from_static("checkout"))
//!     .only_to_hosts(["inventory", ".svc.cluster.local"])
//!     .layer(echo);
//!
//! let internal = Request::get("http://billing.svc.cluster.local/charge").body(()).unwrap();
//! let sent = client.clone().oneshot(internal).await.unwrap().into_body();
//! assert_eq!(sent["x-service-name"], "checkout");
//!
//! let third_party = Request::get("https://api.payments.example/charge")
//!     .header("x-request-timeout", "4.997") // even one set by hand
//!     .body(())
//!     .unwrap();
//! let sent = client.oneshot(third_party).await.unwrap().into_body();
//! assert!(sent.get("x-service-name").is_none());
//! assert!(sent.get("x-request-timeout").is_none());
//! assert!(sent.get("x-request-priority").is_none());
//! # }
//! ```
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lifeline::context::{Deadline, Priority, RequestContext};
//! use tower_lifeline::propagation::{PropagateLayer, ServiceName};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // A transport that answers with the headers it was sent.
//! let transport = service_fn(|req: Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.headers().clone()))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(PropagateLayer::new().service_name(ServiceName::from_static("billing")))
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
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{Deadline, Priority, RequestContext};
use crate::headers;

mod service_name;
pub use service_name::{InvalidServiceName, ServiceName};

/// Writes the propagation headers. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct PropagateLayer {
    service_name: Option<HeaderValue>,
    default_priority: Priority,
    destinations: Destinations,
}

/// Which destinations receive the propagation headers.
#[derive(Clone, Default)]
enum Destinations {
    #[default]
    All,
    /// Lowercase hosts; an entry starting with `.` matches that domain and its subdomains.
    Hosts(Arc<[String]>),
    Matching(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl fmt::Debug for Destinations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destinations::All => f.write_str("All"),
            Destinations::Hosts(hosts) => f.debug_tuple("Hosts").field(hosts).finish(),
            Destinations::Matching(_) => f.write_str("Matching(..)"),
        }
    }
}

impl Destinations {
    fn allow<B>(&self, req: &Request<B>) -> bool {
        if matches!(self, Destinations::All) {
            return true;
        }
        let Some(host) = destination_host(req) else {
            // Nowhere to check: withholding is the side that cannot leak.
            return false;
        };
        // Hosts are case-insensitive; a trailing dot names the same host.
        let host = host.strip_suffix('.').unwrap_or(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        match self {
            Destinations::All => true,
            Destinations::Hosts(hosts) => {
                hosts.iter().any(|allowed| match allowed.strip_prefix('.') {
                    Some(domain) => {
                        host == domain
                            || host
                                .strip_suffix(domain)
                                .is_some_and(|sub| sub.ends_with('.'))
                    }
                    None => host == allowed,
                })
            }
            Destinations::Matching(predicate) => predicate(host),
        }
    }
}

/// The host a request goes to: its URI's, else its `Host` header's (without the port).
fn destination_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(host) = req.uri().host() {
        return Some(host);
    }
    let value = req.headers().get(http::header::HOST)?.to_str().ok()?;
    // `[::1]:8080`, `example.com:8080`, `example.com`.
    let host = if let Some(rest) = value.strip_prefix('[') {
        &value[..rest.find(']')? + 2]
    } else {
        value.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

impl PropagateLayer {
    /// No service name, default priority `Normal`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `X-Service-Name: name`, which servers use as the client label of their metrics.
    ///
    /// The name is checked where it is made ([`ServiceName::new`], or
    /// [`ServiceName::from_static`] for a literal), so that this setter, as every setter of the
    /// crate's layers, cannot fail.
    pub fn service_name(mut self, name: ServiceName) -> Self {
        self.service_name = Some(name.into_header_value());
        self
    }

    /// The priority of calls with neither an explicit nor an inherited one (default `Normal`).
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.default_priority = priority;
        self
    }

    /// Sends the headers only to these hosts; every other destination gets none of the three
    /// (see [Third parties](self#third-parties)). An entry `inventory` matches that host only
    /// (any port, any case); `.svc.cluster.local` matches `svc.cluster.local` and every host
    /// under it. An empty list sends the headers nowhere.
    pub fn only_to_hosts<I>(mut self, hosts: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let hosts: Vec<String> = hosts
            .into_iter()
            .map(|h| {
                let h = h.as_ref().trim().to_ascii_lowercase();
                h.strip_suffix('.').map(str::to_owned).unwrap_or(h)
            })
            .filter(|h| !h.is_empty() && h != ".")
            .collect();
        self.destinations = Destinations::Hosts(hosts.into());
        self
    }

    /// Sends the headers only to hosts for which `predicate` holds; every other destination gets
    /// none of the three (see [Third parties](self#third-parties)). The predicate sees the host
    /// in lowercase, without port or trailing dot (`[::1]` for IPv6).
    pub fn only_to<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&str) -> bool + Send + Sync + 'static,
    {
        self.destinations = Destinations::Matching(Arc::new(predicate));
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
    /// `inner` wrapped as [`PropagateLayer::new`](PropagateLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&PropagateLayer::new(), inner)
    }
}

impl<S> Propagate<S> {
    inner_service_accessors!(S);
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
        if !self.layer.destinations.allow(&req) {
            let headers = req.headers_mut();
            headers.remove(headers::X_REQUEST_TIMEOUT);
            headers.remove(headers::X_REQUEST_PRIORITY);
            headers.remove(headers::X_SERVICE_NAME);
            // A trace context names the caller's trace: withheld like the rest.
            #[cfg(feature = "opentelemetry")]
            for name in crate::otel::TRACE_HEADERS {
                headers.remove(name);
            }
            return self.inner.call(req);
        }
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
            let remaining = deadline.remaining();
            headers.insert(
                headers::X_REQUEST_TIMEOUT,
                headers::format_timeout(remaining),
            );
            // gRPC servers read only their own header.
            #[cfg(feature = "grpc")]
            if crate::grpc::is_grpc(headers) {
                headers.insert(
                    headers::GRPC_TIMEOUT,
                    crate::grpc::format_grpc_timeout(remaining),
                );
            }
        }
        headers.insert(
            headers::X_REQUEST_PRIORITY,
            headers::priority_value(priority),
        );
        if let Some(name) = &self.layer.service_name {
            headers.insert(headers::X_SERVICE_NAME, name.clone());
        }
        // The current span's (the attempt's, under the Client preset) W3C trace context.
        #[cfg(feature = "opentelemetry")]
        crate::otel::inject_current(headers);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use http::{HeaderMap, Response};
    use tower::{service_fn, ServiceExt};

    async fn sent(layer: &PropagateLayer, request: Request<()>) -> HeaderMap {
        let echo = service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(req.headers().clone()))
        });
        let mut request = request;
        request
            .extensions_mut()
            .insert(Deadline::after(Duration::from_secs(3)));
        layer
            .layer(echo)
            .oneshot(request)
            .await
            .unwrap()
            .into_body()
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    fn carries_all_three(headers: &HeaderMap) -> bool {
        headers.contains_key(headers::X_REQUEST_TIMEOUT)
            && headers.contains_key(headers::X_REQUEST_PRIORITY)
            && headers.contains_key(headers::X_SERVICE_NAME)
    }

    fn carries_none(headers: &HeaderMap) -> bool {
        !headers.contains_key(headers::X_REQUEST_TIMEOUT)
            && !headers.contains_key(headers::X_REQUEST_PRIORITY)
            && !headers.contains_key(headers::X_SERVICE_NAME)
    }

    #[tokio::test]
    async fn by_default_every_destination_gets_the_headers() {
        let layer = PropagateLayer::new().service_name(ServiceName::from_static("checkout"));
        assert!(carries_all_three(
            &sent(&layer, get("https://third.party.example/")).await
        ));
        assert!(carries_all_three(&sent(&layer, get("/relative")).await));
    }

    #[tokio::test]
    async fn an_allow_list_matches_hosts_and_domains_only() {
        let layer = PropagateLayer::new()
            .service_name(ServiceName::from_static("checkout"))
            .only_to_hosts(["Inventory", ".svc.cluster.local", "10.0.0.7", "[::1]"]);
        for allowed in [
            "http://inventory/x",
            "http://INVENTORY:8080/x",
            "http://inventory./x",
            "http://svc.cluster.local/",
            "http://billing.svc.cluster.local:9000/charge",
            "http://a.b.svc.cluster.local/",
            "http://10.0.0.7:80/",
            "http://[::1]:8080/",
        ] {
            assert!(
                carries_all_three(&sent(&layer, get(allowed)).await),
                "{allowed}"
            );
        }
        for refused in [
            "https://api.payments.example/charge",
            "http://inventory.evil.example/",
            "http://evilinventory/",
            "http://evilsvc.cluster.local/",
            "http://svc.cluster.local.evil.example/",
            "http://10.0.0.70/",
            "http://user@evil.example/",
        ] {
            assert!(carries_none(&sent(&layer, get(refused)).await), "{refused}");
        }
    }

    #[tokio::test]
    async fn a_refused_destination_loses_headers_set_above_or_by_hand() {
        let layer = PropagateLayer::new().only_to_hosts(["inventory"]);
        let request = Request::get("https://third.party.example/")
            .header(headers::X_REQUEST_TIMEOUT, "4.997")
            .header(headers::X_REQUEST_PRIORITY, "high")
            .header(headers::X_SERVICE_NAME, "checkout")
            .header("x-other", "kept")
            .body(())
            .unwrap();
        let headers = sent(&layer, request).await;
        assert!(carries_none(&headers), "{headers:?}");
        assert_eq!(headers["x-other"], "kept");
    }

    #[tokio::test]
    async fn the_host_header_names_the_destination_of_a_relative_uri() {
        let layer = PropagateLayer::new()
            .service_name(ServiceName::from_static("checkout"))
            .only_to_hosts(["inventory"]);
        let with_host = |host: &str| {
            Request::get("/stock")
                .header(http::header::HOST, host)
                .body(())
                .unwrap()
        };
        assert!(carries_all_three(
            &sent(&layer, with_host("inventory:8080")).await
        ));
        assert!(carries_none(&sent(&layer, with_host("other:8080")).await));
        assert!(carries_none(&sent(&layer, with_host("")).await));
        // No URI host and no Host header: nothing to check, nothing sent.
        assert!(carries_none(&sent(&layer, get("/stock")).await));
    }

    #[tokio::test]
    async fn a_predicate_sees_the_lowercase_host() {
        let layer = PropagateLayer::new()
            .service_name(ServiceName::from_static("checkout"))
            .only_to(|host| host.ends_with(".internal") || host == "127.0.0.1");
        assert!(carries_all_three(
            &sent(&layer, get("http://Billing.INTERNAL/")).await
        ));
        assert!(carries_all_three(
            &sent(&layer, get("http://127.0.0.1:9/")).await
        ));
        assert!(carries_none(
            &sent(&layer, get("http://billing.example/")).await
        ));
    }

    #[tokio::test]
    async fn an_empty_allow_list_sends_nothing_anywhere() {
        let layer = PropagateLayer::new().only_to_hosts(Vec::<String>::new());
        assert!(carries_none(&sent(&layer, get("http://inventory/")).await));
    }
}
