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
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::body::ReplayBody;
use crate::circuit_breaker::{BreakerRegistry, CircuitBreakerLayer, CircuitBreakerSettings};
use crate::context::{Deadline, Priority, RouteTemplate};
use crate::deadline::{effective_deadline, ClientDeadlineLayer};
use crate::error::BoxError;
use crate::metrics::ClientMetrics;
use crate::propagation::{PropagateLayer, ServiceName};
use crate::read_body::{FullBody, ReadBodyLayer};
use crate::strategy::{AttemptCount, Strategy, StrategyLayer};
use crate::timeout::AttemptTimeoutLayer;

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

mod error;
mod pool;
mod redirect;
#[cfg(feature = "reqwest")]
mod reqwest_transport;
#[cfg(feature = "tls")]
mod tls;

#[cfg(feature = "reqwest")]
pub use reqwest_transport::{ReqwestFuture, ReqwestTransport};

/// The rustls crate the `Client` preset's TLS settings take, for [`ClientBuilder::tls_config`].
#[cfg(feature = "tls")]
pub use rustls;

pub use error::{ClientBuildError, InvalidRequest, TransportError};
use pool::{ConnectionLimitLayer, ConnectionLimits};
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

type Stack = BoxCloneSyncService<Request<ClientBody>, Response<FullBody>, BoxError>;

/// Configures a [`Client`]. See the [module docs](self).
#[derive(Debug)]
pub struct ClientBuilder {
    base_url: Option<String>,
    default_headers: Vec<(String, String)>,
    service_name: Option<String>,
    default_timeout: Duration,
    pool_max_idle_per_host: usize,
    pool_idle_timeout: Duration,
    max_connections_per_host: usize,
    pool_timeout: Duration,
    connect_timeout: Duration,
    http2_only: bool,
    max_redirects: u32,
    on_attempt: Option<AttemptHook>,
    strategy: StrategyLayer,
    breaker: Option<CircuitBreakerSettings>,
    attempt_timeout: Option<Duration>,
    metrics: Option<ClientMetrics>,
    max_response_body: usize,
    propagate: PropagateLayer,
    #[cfg(feature = "tls")]
    tls: tls::TlsSettings,
    /// The user's reqwest client, when the preset sends through it; always `None` without the
    /// `reqwest` feature.
    reqwest: Option<ReqwestClient>,
}

#[cfg(feature = "reqwest")]
type ReqwestClient = reqwest::Client;
/// No reqwest client can exist without the feature.
#[cfg(not(feature = "reqwest"))]
type ReqwestClient = std::convert::Infallible;

/// The default bound on connections to one destination (httpx's `max_connections`).
pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: usize = 100;

/// The default wait for a free connection before [`PoolTimeout`] (httpx's pool timeout).
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// The default cap on a response body, which the client reads whole inside each attempt.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            base_url: None,
            default_headers: Vec::new(),
            service_name: None,
            default_timeout: crate::deadline::DEFAULT_TIMEOUT,
            pool_max_idle_per_host: 32,
            pool_idle_timeout: Duration::from_secs(90),
            max_connections_per_host: DEFAULT_MAX_CONNECTIONS_PER_HOST,
            pool_timeout: DEFAULT_POOL_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
            http2_only: false,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            on_attempt: None,
            strategy: StrategyLayer::new(),
            breaker: Some(CircuitBreakerSettings::default()),
            attempt_timeout: None,
            metrics: None,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            propagate: PropagateLayer::new(),
            #[cfg(feature = "tls")]
            tls: tls::TlsSettings::default(),
            reqwest: None,
        }
    }
}

impl ClientBuilder {
    /// The URL relative paths are joined to (`http://host:port/api/` + `items` =
    /// `http://host:port/api/items`; `/items` replaces the base's path).
    pub fn base_url(mut self, url: &str) -> Self {
        self.base_url = Some(url.to_owned());
        self
    }

    /// A header sent on every request.
    pub fn default_header(mut self, name: &str, value: &str) -> Self {
        self.default_headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    /// This service's name, sent as `X-Service-Name`.
    pub fn service_name(mut self, name: &str) -> Self {
        self.service_name = Some(name.to_owned());
        self
    }

    /// Sends `X-Request-Timeout`, `X-Request-Priority` and `X-Service-Name` only to these hosts,
    /// so that third parties learn nothing of this service's deadline, priority or name. Entries
    /// are hosts (`inventory`) or domains with a leading dot (`.svc.cluster.local`); see
    /// [`PropagateLayer::only_to_hosts`]. By default every destination gets them.
    pub fn propagate_only_to_hosts<I>(mut self, hosts: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.propagate = self.propagate.only_to_hosts(hosts);
        self
    }

    /// Sends the propagation headers only to hosts for which `predicate` holds (it sees the host
    /// in lowercase, without port); see [`PropagateLayer::only_to`].
    pub fn propagate_only_to<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&str) -> bool + Send + Sync + 'static,
    {
        self.propagate = self.propagate.only_to(predicate);
        self
    }

    /// The deadline of a call with no explicit and no inherited one (default 20 s).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Idle connections kept per host (default 32).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// How long an idle connection is kept (default 90 s).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// At most this many connections to one destination (default 100): a call that finds them
    /// all busy waits up to the [pool timeout](Self::pool_timeout) for one. Over HTTP/2 it
    /// bounds the requests in flight to the destination.
    pub fn max_connections_per_host(mut self, max: usize) -> Self {
        self.max_connections_per_host = max;
        self
    }

    /// How long a call waits for a free connection (default 5 s) before failing with
    /// [`PoolTimeout`], a request that never left: retried for any method, and no failure of
    /// the destination.
    pub fn pool_timeout(mut self, timeout: Duration) -> Self {
        self.pool_timeout = timeout;
        self
    }

    /// Also trust the CA certificates in `pem` (one or more `CERTIFICATE` blocks): a private CA.
    /// Call it once per file. With [`tls_webpki_roots(false)`](Self::tls_webpki_roots) only the
    /// CAs given here (and the platform's, if asked) are trusted.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls.extra_roots_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Also trust the platform's trust store (`/etc/ssl/certs` and the like, through
    /// rustls-native-certs). Default off.
    #[cfg(feature = "tls")]
    pub fn tls_platform_roots(mut self, trust: bool) -> Self {
        self.tls.platform_roots = trust;
        self
    }

    /// Trust the public web's roots (webpki-roots, Mozilla's list). Default on; turn it off for
    /// a client that should reach only services of a private CA.
    #[cfg(feature = "tls")]
    pub fn tls_webpki_roots(mut self, trust: bool) -> Self {
        self.tls.webpki_roots = trust;
        self
    }

    /// Present this certificate chain and private key (PEM) to servers that ask for one:
    /// mutual TLS.
    #[cfg(feature = "tls")]
    pub fn tls_client_identity_pem(
        mut self,
        certificate_chain: impl AsRef<[u8]>,
        private_key: impl AsRef<[u8]>,
    ) -> Self {
        self.tls.identity_pem = Some((
            certificate_chain.as_ref().to_vec(),
            private_key.as_ref().to_vec(),
        ));
        self
    }

    /// A whole rustls configuration for everything the settings above do not cover (a custom
    /// verifier, SPIFFE, session resumption, key logging); it replaces them. Its ALPN protocols
    /// are set by the client (`h2` and `http/1.1`, or `h2` alone with
    /// [`http2_only`](Self::http2_only)).
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls.config = Some(std::sync::Arc::new(config));
        self
    }

    /// Send through the user's own `reqwest::Client` instead of the preset's hyper-util pool
    /// (feature `reqwest`): its TLS roots, proxies, cookies, compression and pool settings carry
    /// over, and the preset's own transport settings (`connect_timeout`, `pool_*`,
    /// `http2_only`, `tls_*`) do not apply. Every layer of the stack, the per-destination
    /// connection bound and the body read inside the attempt included, works as over hyper-util.
    #[cfg(feature = "reqwest")]
    pub fn reqwest(mut self, client: reqwest::Client) -> Self {
        self.reqwest = Some(client);
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Speak HTTP/2 only (prior knowledge for `http`, ALPN for `https`). By default HTTP/1.1,
    /// with HTTP/2 when `https` negotiates it.
    pub fn http2_only(mut self, only: bool) -> Self {
        self.http2_only = only;
        self
    }

    /// Follow at most this many redirects per call (default 10, as aio-request's
    /// `max_redirects`; 0 follows none). Each hop goes through the whole stack within the call's
    /// deadline; `303` (and `301`/`302` after a `POST`) becomes a `GET`, `307`/`308` repeat the
    /// method and body; credentials are dropped when a hop leaves the origin. One hop too many
    /// fails with [`TooManyRedirects`]. [`RequestBuilder::follow_redirects`] turns it off per call.
    pub fn max_redirects(mut self, max: u32) -> Self {
        self.max_redirects = max;
        self
    }

    /// Calls `hook` on every attempt's request just before it is sent, after the propagation
    /// headers are written (aio-request's `request_enricher`): a token refreshed per attempt, a
    /// signature over the final headers. It runs for retries and hedges alike, and for redirect
    /// hops while they stay on the first request's origin: never for one that left it, so that
    /// a token does not follow a redirect to someone else.
    pub fn on_attempt<F>(mut self, hook: F) -> Self
    where
        F: Fn(&mut http::request::Parts) + Send + Sync + 'static,
    {
        self.on_attempt = Some(AttemptHook(std::sync::Arc::new(hook)));
        self
    }

    /// The strategy layer (default: [`StrategyLayer::new`], strategies by method, with budget).
    pub fn strategy(mut self, strategy: StrategyLayer) -> Self {
        self.strategy = strategy;
        self
    }

    /// The circuit breaker's settings (default: Polly v8's, as [`CircuitBreakerSettings::default`]);
    /// `None` for no breaker.
    pub fn circuit_breaker(mut self, settings: Option<CircuitBreakerSettings>) -> Self {
        self.breaker = settings;
        self
    }

    /// Limit each attempt to min(`timeout`, time left before the deadline) (default: no limit
    /// beyond the deadline).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The longest response body the client reads (default 16 MiB), so that a misbehaving
    /// server cannot exhaust memory; a longer one fails the call with
    /// [`ResponseBodyTooLarge`](crate::read_body::ResponseBodyTooLarge). The body is read whole
    /// inside each attempt, as aio-request's transport does: a body that fails is a failed
    /// attempt, retried for idempotent methods and counted by the breaker.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_response_body = bytes;
        self
    }

    /// Measure the client with these metrics: its calls and attempts, its strategy's retries,
    /// hedges and budget refusals, and its breakers' states and refusals, all in the registry
    /// the metrics were registered in. Several clients share one registration (a clone each):
    ///
    /// ```
    /// use tower_lifeline::client::Client;
    /// use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig};
    /// use tower_lifeline::prometheus::Registry;
    ///
    /// let registry = Registry::new(); // or `server.registry()` of the `Server` preset
    /// let client_metrics = ClientMetrics::register(&registry, MetricsConfig::default()).unwrap();
    /// let inventory = Client::builder().metrics(client_metrics.clone()).build().unwrap();
    /// let billing = Client::builder().metrics(client_metrics).build().unwrap();
    /// # drop((inventory, billing));
    /// let text = metrics::render(&registry).unwrap();
    /// assert!(text.contains("http_client_retries_total 0"));
    /// assert!(text.contains("http_client_circuit_breaker_refusals_total 0"));
    /// ```
    pub fn metrics(mut self, metrics: ClientMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the client, or says which setting is wrong.
    pub fn build(self) -> Result<Client, ClientBuildError> {
        let base = match &self.base_url {
            None => None,
            Some(url) => {
                let uri: Uri = url
                    .parse()
                    .map_err(|_| ClientBuildError::InvalidBaseUrl(url.clone()))?;
                match (uri.scheme_str(), uri.authority()) {
                    (Some("http" | "https"), Some(_)) => Some(uri),
                    _ => return Err(ClientBuildError::InvalidBaseUrl(url.clone())),
                }
            }
        };
        if !cfg!(feature = "tls") && base.as_ref().and_then(|b| b.scheme_str()) == Some("https") {
            return Err(ClientBuildError::TlsUnavailable);
        }
        let mut default_headers = HeaderMap::new();
        for (name, value) in &self.default_headers {
            let parsed = HeaderName::try_from(name.as_str())
                .ok()
                .zip(HeaderValue::try_from(value.as_str()).ok());
            let (name, value) = parsed
                .ok_or_else(|| ClientBuildError::InvalidHeader(format!("{name}: {value:?}")))?;
            default_headers.append(name, value);
        }
        let mut propagate = self.propagate.clone();
        if let Some(name) = &self.service_name {
            let name = ServiceName::new(name)
                .map_err(|e| ClientBuildError::InvalidServiceName(e.to_string()))?;
            propagate = propagate.service_name(name);
        }

        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        // With TLS the https connector wraps this one; without it, refuse https outright rather
        // than speak cleartext to port 443.
        http.enforce_http(!cfg!(feature = "tls"));
        let mut pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        pool.pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .http2_only(self.http2_only);
        #[cfg(feature = "tls")]
        let pooled = connect(pool, http, self.http2_only, self.tls.client_config()?);
        #[cfg(not(feature = "tls"))]
        let pooled = connect(pool, http, self.http2_only);
        let limits = ConnectionLimits::new(self.max_connections_per_host, self.pool_timeout);

        let breaker = self
            .breaker
            .map(|settings| CircuitBreakerLayer::new(settings).return_error());
        let breakers = breaker.as_ref().map(CircuitBreakerLayer::registry);
        if let Some(metrics) = &self.metrics {
            metrics.watch_strategy(self.strategy.stats());
            if let Some(breakers) = &breakers {
                metrics.watch_breakers(breakers.clone());
            }
        }
        let layers = ServiceBuilder::new()
            .layer(CallTrace::default())
            .option_layer(self.metrics.as_ref().map(ClientMetrics::call_layer))
            .layer(
                ClientDeadlineLayer::new()
                    .default_timeout(self.default_timeout)
                    // Propagation, closer to the wire, writes it for every attempt.
                    .write_header(false),
            )
            .layer(self.strategy.clone())
            .layer(AttemptTrace::default())
            // Above the breaker and the attempt's timer: a wait for a connection is no failure of
            // the destination, and the attempt's headers are written once it has one.
            .layer(ConnectionLimitLayer::new(limits))
            .option_layer(breaker)
            .option_layer(self.attempt_timeout.map(AttemptTimeoutLayer::new))
            .option_layer(self.metrics.as_ref().map(ClientMetrics::attempt_layer))
            .layer(propagate)
            .option_layer(self.on_attempt.clone().map(|hook| {
                tower::util::MapRequestLayer::new(
                    move |request: Request<ReplayBody<ClientBody>>| {
                        let (mut parts, body) = request.into_parts();
                        // Never on a redirect hop that left the first request's origin.
                        if parts.extensions.get::<redirect::LeftOrigin>().is_none() {
                            (hook.0)(&mut parts);
                        }
                        Request::from_parts(parts, body)
                    },
                )
            }));
        let read_body = ReadBodyLayer::new(self.max_response_body);
        let stack = match self.reqwest {
            // The user's own reqwest client: their TLS, proxies and pool settings apply.
            #[cfg(feature = "reqwest")]
            Some(client) => BoxCloneSyncService::new(
                layers
                    .service(read_body.layer(ReqwestTransport::new(client)))
                    .map_err(Into::into),
            ),
            _ => BoxCloneSyncService::new(
                layers.service(read_body.layer(pooled)).map_err(Into::into),
            ),
        };
        Ok(Client {
            stack,
            base,
            default_headers,
            breakers,
            default_timeout: self.default_timeout,
            max_redirects: self.max_redirects,
        })
    }
}

/// The pool at the bottom of the stack, named rather than boxed: the stack is cloned for every
/// call and every retry, and a boxed transport would cost an allocation on each clone. Its
/// errors are boxed, as the layers' optional halves (`Either`) need one error type.
type Pooled<C> = tower::util::MapErr<
    hyper_util::client::legacy::Client<C, ReplayBody<ClientBody>>,
    fn(hyper_util::client::legacy::Error) -> BoxError,
>;

fn box_error(error: hyper_util::client::legacy::Error) -> BoxError {
    Box::new(TransportError(error))
}

#[cfg(feature = "tls")]
fn connect(
    pool: hyper_util::client::legacy::Builder,
    http: HttpConnector,
    http2_only: bool,
    tls: rustls::ClientConfig,
) -> Pooled<hyper_rustls::HttpsConnector<HttpConnector>> {
    // The connector sets the ALPN protocols from the versions enabled below.
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    };
    pool.build(https).map_err(box_error as fn(_) -> _)
}

#[cfg(not(feature = "tls"))]
fn connect(
    pool: hyper_util::client::legacy::Builder,
    http: HttpConnector,
    _http2_only: bool,
) -> Pooled<HttpConnector> {
    pool.build(http).map_err(box_error as fn(_) -> _)
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
        request.extensions_mut().insert(deadline);
        let max = if request.extensions().get::<NoRedirects>().is_some() {
            0
        } else {
            self.max_redirects
        };
        // Kept only when redirects may be followed: a header map and extensions to copy.
        let mut resend = (max > 0).then(|| Resend::of(&request));
        let mut response = self.stack.clone().oneshot(request).await?;
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
            response = self.stack.clone().oneshot(next).await?;
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

/// One request being put together; [`send`](Self::send) it.
#[derive(Debug)]
pub struct RequestBuilder<'a> {
    client: &'a Client,
    request: Request<ClientBody>,
    error: Option<InvalidRequest>,
}

impl RequestBuilder<'_> {
    /// Adds a header. An invalid name or value fails the request at `send`.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                self.request.headers_mut().append(name, value);
            }
            _ => self.error = Some(InvalidRequest(format!("bad header {name}: {value:?}"))),
        }
        self
    }

    /// The body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        *self.request.body_mut() = Full::new(body.into());
        self
    }

    /// A JSON body, with `Content-Type: application/json`.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.request
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                *self.request.body_mut() = Full::new(Bytes::from(body));
            }
            Err(err) => self.error = Some(InvalidRequest(format!("cannot encode JSON: {err}"))),
        }
        self
    }

    /// This call's time limit, counted from now (the inherited deadline still applies if sooner).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.deadline(Deadline::after(timeout))
    }

    /// This call's deadline.
    pub fn deadline(mut self, deadline: Deadline) -> Self {
        self.request.extensions_mut().insert(deadline);
        self
    }

    /// This call's priority (normalised against an inherited one).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.request.extensions_mut().insert(priority);
        self
    }

    /// This call's strategy, in place of the client's choice by method.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.request.extensions_mut().insert(strategy);
        self
    }

    /// The route template, for metrics and percentile delays (`/users/{id}`).
    pub fn route(mut self, template: &'static str) -> Self {
        self.request
            .extensions_mut()
            .insert(RouteTemplate::new(template));
        self
    }

    /// Whether to follow redirects for this call (default: as the client's
    /// [`max_redirects`](ClientBuilder::max_redirects)), aio-request's `allow_redirects`.
    pub fn follow_redirects(mut self, follow: bool) -> Self {
        if follow {
            self.request.extensions_mut().remove::<NoRedirects>();
        } else {
            self.request.extensions_mut().insert(NoRedirects);
        }
        self
    }

    /// Marks an unsafe-method request as safe to retry.
    pub fn idempotency_key(self, key: &str) -> Self {
        self.header(crate::headers::IDEMPOTENCY_KEY.as_str(), key)
    }

    /// Sends the request through the client's stack. See [`Client::send`] for the errors.
    pub async fn send(self) -> Result<ClientResponse, BoxError> {
        if let Some(err) = self.error {
            return Err(Box::new(err));
        }
        self.client.send(self.request).await
    }
}

/// A response, its body already read whole inside the attempt.
#[derive(Debug)]
pub struct ClientResponse {
    response: Response<FullBody>,
    deadline: Deadline,
}

impl ClientResponse {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// How many attempts the call took.
    pub fn attempts(&self) -> u32 {
        self.response
            .extensions()
            .get::<AttemptCount>()
            .map_or(1, |count| count.0)
    }

    /// The underlying response.
    pub fn into_inner(self) -> Response<FullBody> {
        self.response
    }

    /// The call's deadline.
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// The whole body. It was read inside the attempt, up to the client's `max_response_body`,
    /// so this cannot fail or wait; it stays `async` and fallible for the transports to come.
    pub async fn bytes(self) -> Result<Bytes, BoxError> {
        Ok(self.response.into_body().collect().await?.to_bytes())
    }

    /// The whole body as UTF-8 text (invalid sequences replaced).
    pub async fn text(self) -> Result<String, BoxError> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }

    /// The whole body parsed as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(&self.bytes().await?)?)
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
