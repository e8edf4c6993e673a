//! [`ClientBuilder`]: the `Client` preset's settings, and the stack it assembles from them.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::body::ReplayBody;
use crate::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerSettings};
use crate::deadline::ClientDeadlineLayer;
use crate::metrics::ClientMetrics;
use crate::propagation::{PropagateLayer, ServiceName};
use crate::read_body::ReadBodyLayer;
use crate::strategy::StrategyLayer;
use crate::timeout::AttemptTimeoutLayer;

use super::pool::{ConnectionLimitLayer, ConnectionLimits};
#[cfg(feature = "tls")]
use super::tls;
use super::transport::connect;
#[cfg(feature = "reqwest")]
use super::ReqwestTransport;
use super::{
    redirect, AttemptHook, AttemptTrace, CallTrace, Client, ClientBody, ClientBuildError, Stack,
    DEFAULT_MAX_REDIRECTS,
};

/// Configures a [`Client`]. See the [module docs](super).
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

/// The default wait for a free connection before [`PoolTimeout`](super::PoolTimeout) (httpx's pool timeout).
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
    /// [`PoolTimeout`](super::PoolTimeout), a request that never left: retried for any method, and no failure of
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
    /// fails with [`TooManyRedirects`](super::TooManyRedirects). [`RequestBuilder::follow_redirects`](super::RequestBuilder::follow_redirects) turns it off per call.
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
            Some(client) => Stack::new(
                layers
                    .service(read_body.layer(ReqwestTransport::new(client)))
                    .map_err(Into::into),
            ),
            _ => Stack::new(layers.service(read_body.layer(pooled)).map_err(Into::into)),
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
