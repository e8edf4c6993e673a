//! The client preset: a hyper-util pooled client wrapped in the whole client stack.
//!
//! [`Client`] is what most services need from tower-lifeline on the calling side: a base URL,
//! default headers, a connection pool, HTTP/1.1 and HTTP/2, TLS for `https` (rustls, feature
//! `tls`), and the layers in this order, outermost first (the README's "The order of the stacks"
//! says why each sits where it does):
//!
//! 1. metrics of the whole call (if [`ClientBuilder::metrics`] is set);
//! 2. deadline: explicit, inherited or default; refuses to send with under 5 ms left;
//! 3. strategy: by method by default; retries, hedging, budget, `Retry-After`, and resends of
//!    attempts that never reached the server;
//! 4. a bound on connections per destination ([`ClientBuilder::max_connections_per_host`]), with
//!    a pool timeout that fails with [`PoolTimeout`]: above the breaker and the attempt timeout,
//!    so that waiting for a connection is no failure of the destination and the headers below
//!    are written once the attempt has one;
//! 5. circuit breaker per destination (it counts each attempt's [`Outcome`](crate::Outcome); an
//!    open breaker fails the call at once with a typed
//!    [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) that the strategy does not retry);
//! 6. attempt timeout (if [`ClientBuilder::attempt_timeout`] is set): min(it, time left);
//! 7. metrics of each attempt;
//! 8. propagation of `X-Request-Timeout`, `X-Request-Priority`, `X-Service-Name` (to every
//!    destination, or only to those [`ClientBuilder::propagate_only_to_hosts`] names), then the
//!    [`on_attempt`](ClientBuilder::on_attempt) hook;
//! 9. transport: the response body read whole inside the attempt
//!    ([`crate::read_body::ReadBodyLayer`], so a body that fails is a failed attempt), and
//!    hyper-util's pooled client.
//!
//! With the `opentelemetry` feature, a span for the whole call opens outermost and a client span
//! for each attempt right under the strategy (see `otel`); propagation sends the attempt's
//! `traceparent`.
//!
//! The same stack is available as layers for users who bring their own service: see the
//! README's "Composing by hand", a complete stack over hyper-util.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_lifeline::client::Client;
//! use tower_lifeline::Priority;
//!
//! # async fn run() -> Result<(), tower_lifeline::BoxError> {
//! let client = Client::builder()
//!     .base_url("http://inventory:8080/api/")
//!     .service_name("checkout")
//!     .build()?;
//! let response = client
//!     .get("stock/42")
//!     .route("/api/stock/{id}")
//!     .timeout(Duration::from_secs(2))
//!     .priority(Priority::High)
//!     .send()
//!     .await?;
//! println!("{} after {} attempt(s): {}", response.status(), response.attempts(), response.text().await?);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::Full;
use tower::{Service, ServiceExt};

use crate::circuit_breaker::BreakerRegistry;
use crate::deadline::effective_deadline;
use crate::error::BoxError;
use crate::read_body::FullBody;

/// A span per call and per attempt with the `opentelemetry` feature; nothing without it.
#[cfg(feature = "opentelemetry")]
type CallTrace = crate::otel::ClientTraceLayer;
#[cfg(not(feature = "opentelemetry"))]
type CallTrace = tower::layer::util::Identity;
#[cfg(feature = "opentelemetry")]
type AttemptTrace = crate::otel::AttemptTraceLayer;
#[cfg(not(feature = "opentelemetry"))]
type AttemptTrace = tower::layer::util::Identity;

/// The request body the preset sends.
pub type ClientBody = Full<Bytes>;

mod builder;
mod error;
mod pool;
mod redirect;
mod request;
#[cfg(feature = "reqwest")]
mod reqwest_transport;
#[cfg(feature = "tls")]
mod tls;
mod transport;

#[cfg(feature = "reqwest")]
pub use reqwest_transport::{ReqwestFuture, ReqwestTransport};

/// The rustls crate the `Client` preset's TLS settings take, for [`ClientBuilder::tls_config`].
#[cfg(feature = "tls")]
pub use rustls;

pub use builder::{
    ClientBuilder, DEFAULT_MAX_CONNECTIONS_PER_HOST, DEFAULT_MAX_RESPONSE_BODY,
    DEFAULT_POOL_TIMEOUT,
};
pub use error::{ClientBuildError, InvalidRequest, TransportError};
pub use request::{ClientResponse, RequestBuilder};

pub use pool::{PoolTimeout, MAX_DESTINATIONS};
use redirect::Resend;
pub use redirect::{TooManyRedirects, DEFAULT_MAX_REDIRECTS};

/// A hook called on every attempt's request just before it is sent: see
/// [`ClientBuilder::on_attempt`].
#[derive(Clone)]
struct AttemptHook(std::sync::Arc<dyn Fn(&mut http::request::Parts) + Send + Sync>);

impl fmt::Debug for AttemptHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttemptHook")
    }
}

/// In a request's extensions: do not follow redirects for this request.
#[derive(Debug, Clone, Copy)]
struct NoRedirects;

/// The whole stack, its type erased.
///
/// Not a `BoxCloneSyncService`: that boxes a clone of the stack and then its future on every
/// call, where one box holding both does (the clone is readied and called inside the future, as
/// `ServiceExt::oneshot` does).
#[derive(Clone)]
struct Stack(Arc<dyn CallStack>);

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<FullBody>, BoxError>> + Send>>;

trait CallStack: Send + Sync {
    fn call(&self, request: Request<ClientBody>) -> ResponseFuture;
}

impl<S> CallStack for S
where
    S: Service<Request<ClientBody>, Response = Response<FullBody>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, request: Request<ClientBody>) -> ResponseFuture {
        Box::pin(self.clone().oneshot(request))
    }
}

impl Stack {
    fn new<S: CallStack + 'static>(stack: S) -> Self {
        Stack(Arc::new(stack))
    }

    fn call(&self, request: Request<ClientBody>) -> ResponseFuture {
        self.0.call(request)
    }
}

/// An HTTP client with the whole tower-lifeline client stack. Cheap to clone: clones share the
/// pool, the retry budget and the metrics. See the [module docs](self).
#[derive(Clone)]
pub struct Client {
    stack: Stack,
    base: Option<Uri>,
    default_headers: HeaderMap,
    breakers: Option<BreakerRegistry>,
    default_timeout: Duration,
    max_redirects: u32,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder with the defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The circuit breakers' states, if the client has a breaker.
    pub fn breakers(&self) -> Option<&BreakerRegistry> {
        self.breakers.as_ref()
    }

    /// A `GET` of `url`: absolute, or relative to the base URL; a `&str` or a `String`
    /// (`format!`). A URL that does not parse fails the call at `send`.
    pub fn get(&self, url: impl AsRef<str>) -> RequestBuilder<'_> {
        self.request(Method::GET, url)
    }

    /// A `POST`.
    pub fn post(&self, url: impl AsRef<str>) -> RequestBuilder<'_> {
        self.request(Method::POST, url)
    }

    /// A `PUT`.
    pub fn put(&self, url: impl AsRef<str>) -> RequestBuilder<'_> {
        self.request(Method::PUT, url)
    }

    /// A `PATCH`.
    pub fn patch(&self, url: impl AsRef<str>) -> RequestBuilder<'_> {
        self.request(Method::PATCH, url)
    }

    /// A `DELETE`.
    pub fn delete(&self, url: impl AsRef<str>) -> RequestBuilder<'_> {
        self.request(Method::DELETE, url)
    }

    /// A request with any method.
    pub fn request(&self, method: Method, url: impl AsRef<str>) -> RequestBuilder<'_> {
        let url = url.as_ref();
        let mut builder = RequestBuilder {
            client: self,
            request: Request::new(Full::default()),
            error: None,
        };
        *builder.request.method_mut() = method;
        *builder.request.headers_mut() = self.default_headers.clone();
        match self.resolve(url) {
            Ok(uri) => *builder.request.uri_mut() = uri,
            Err(err) => builder.error = Some(err),
        }
        builder
    }

    /// Sends a request built elsewhere through the whole stack.
    ///
    /// The response's body is read inside the attempt, within the call's deadline: a server that
    /// sends its head in time and then trickles the body cannot hold the caller past it.
    ///
    /// # Errors
    ///
    /// Any answer, whatever its status, is `Ok`. An `Err` is one of these typed errors, boxed
    /// (they may be wrapped: look for them with [`find_source`](crate::error::find_source)):
    ///
    /// | error | when |
    /// |---|---|
    /// | [`DeadlineExceeded`](crate::deadline::DeadlineExceeded) | the call's deadline passed, or too little of it was left to send the request |
    /// | [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) | the destination's breaker is open |
    /// | [`AttemptTimedOut`](crate::timeout::AttemptTimedOut) | the last attempt ran out of its attempt timeout |
    /// | [`TransportError`] | the connection could not be made or broke (hyper-util); `reqwest::Error` over reqwest |
    /// | [`PoolTimeout`] | no connection to the destination came free in time |
    /// | [`ResponseBodyFailed`](crate::read_body::ResponseBodyFailed), [`ResponseBodyTooLarge`](crate::read_body::ResponseBodyTooLarge) | the body was cut short, or was longer than `max_response_body` |
    /// | [`TooManyRedirects`] | more redirects than `max_redirects` |
    /// | [`InvalidRequest`] | a URL or header that does not parse |
    ///
    /// Their `Display` says what happened in one line, causes included.
    pub async fn send(&self, mut request: Request<ClientBody>) -> Result<ClientResponse, BoxError> {
        // Fixed here, once, and handed to the deadline layer as the explicit one, so that the call
        // and the reading of its body work to the same instant.
        let (deadline, _) = effective_deadline(request.extensions(), self.default_timeout);
        let max = if request.extensions().get::<NoRedirects>().is_some() {
            0
        } else {
            self.max_redirects
        };
        // Kept only when redirects may be followed: a header map and extensions to copy.
        let mut resend = (max > 0).then(|| Resend::of(&request, deadline));
        request.extensions_mut().insert(deadline);
        let mut response = self.stack.call(request).await?;
        let mut hops = 0;
        while let Some(resend) = resend.as_mut() {
            let next = resend.follow(
                response.status(),
                response.headers().get(http::header::LOCATION),
                hops,
                max,
            )?;
            let Some(next) = next else { break };
            hops += 1;
            tracing::debug!(uri = %next.uri(), hops, "following a redirect");
            response = self.stack.call(next).await?;
        }
        Ok(ClientResponse { response, deadline })
    }

    fn resolve(&self, url: &str) -> Result<Uri, InvalidRequest> {
        let invalid = || InvalidRequest(format!("bad URL {url:?}"));
        if redirect::has_scheme(url) {
            let uri: Uri = url.parse().map_err(|_| invalid())?;
            return match (uri.scheme_str(), uri.authority()) {
                (Some("http"), Some(_)) => Ok(uri),
                (Some("https"), Some(_)) if cfg!(feature = "tls") => Ok(uri),
                (Some("https"), Some(_)) => Err(InvalidRequest(format!(
                    "{url:?} is https, which needs tower-lifeline's `tls` feature"
                ))),
                _ => Err(invalid()),
            };
        }
        let base = self
            .base
            .as_ref()
            .ok_or_else(|| InvalidRequest(format!("relative URL {url:?} and no base URL")))?;
        // Relative to the base as a browser resolves a link (RFC 3986 5.2).
        redirect::resolve(base, url).ok_or_else(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_errors_not_panics() {
        for url in ["not a url", "/relative", "ftp://host/", "http://"] {
            let err = Client::builder().base_url(url).build().unwrap_err();
            assert!(
                matches!(err, ClientBuildError::InvalidBaseUrl(_)),
                "{url}: {err}"
            );
        }
        let err = Client::builder()
            .default_header("bad name", "x")
            .build()
            .unwrap_err();
        assert!(matches!(err, ClientBuildError::InvalidHeader(_)));
        let err = Client::builder()
            .default_header("x-ok", "bad\nvalue")
            .build()
            .unwrap_err();
        assert!(matches!(err, ClientBuildError::InvalidHeader(_)));
        let err = Client::builder()
            .service_name("has space")
            .build()
            .unwrap_err();
        assert!(matches!(err, ClientBuildError::InvalidServiceName(_)));
    }

    #[tokio::test]
    async fn relative_urls_join_the_base() {
        let client = Client::builder()
            .base_url("http://inventory:8080/api/v1/")
            .build()
            .unwrap();
        for (url, expected) in [
            ("items", "http://inventory:8080/api/v1/items"),
            (
                "items/7?full=1",
                "http://inventory:8080/api/v1/items/7?full=1",
            ),
            ("/health", "http://inventory:8080/health"),
            ("http://other/x", "http://other/x"),
        ] {
            assert_eq!(client.resolve(url).unwrap().to_string(), expected, "{url}");
        }
        let bare = Client::builder().build().unwrap();
        assert!(bare.resolve("items").is_err());
        assert!(client.resolve("bad url with spaces").is_err());
    }

    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn https_without_tls_is_refused_not_sent_in_cleartext() {
        let client = Client::builder().build().unwrap();
        let err = client.get("https://example.com/").send().await.unwrap_err();
        assert!(err.to_string().contains("tls"), "{err}");
        let err = Client::builder()
            .base_url("https://example.com/")
            .build()
            .unwrap_err();
        assert!(matches!(err, ClientBuildError::TlsUnavailable));
    }

    #[tokio::test]
    async fn an_invalid_request_fails_at_send_with_a_typed_error() {
        let client = Client::builder().build().unwrap();
        let err = client.get("relative").send().await.unwrap_err();
        assert!(err.downcast_ref::<InvalidRequest>().is_some(), "{err}");
        let err = client
            .get("http://x/")
            .header("bad name", "v")
            .send()
            .await
            .unwrap_err();
        assert!(err.downcast_ref::<InvalidRequest>().is_some(), "{err}");
    }
}
