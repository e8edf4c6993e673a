use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, Opts, Registry};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::labels::{method_label, write_normalized_path, LabelText};
use super::names::FailureValues;
use super::series::SeriesTable;
use super::MetricsConfig;
use crate::classify::FailureKind;
use crate::context::{Deadline, RouteTemplate};
use crate::error::BoxError;
use crate::headers;

struct Instruments {
    /// The strategy layers' retries, hedges and budget refusals, summed.
    #[cfg(feature = "strategy")]
    strategies: Arc<super::strategy::StrategyCollector>,
    /// The breaker tables' states and refusals.
    #[cfg(feature = "circuit-breaker")]
    breakers: Arc<super::breaker::BreakerCollector>,
    /// By endpoint, method, path, status and circuit_breaker.
    call: SeriesTable<5>,
    /// By endpoint, method, path and status.
    attempt: SeriesTable<4>,
    breaker_values: (&'static str, &'static str),
    failure_values: FailureValues,
    raw_paths: bool,
}

/// The client labels that fold into `other` past the cap: endpoint and path.
const OPEN_LABELS: &[usize] = &[0, 2];

/// Client metrics: a histogram of whole calls (what the caller saw, retries included) and one of
/// single attempts (aio-request's transport latency), by endpoint, method, path and status.
///
/// Register once per registry and share it (it is a cheap clone) among every client stack that
/// reports there. The [`Client`](crate::client::Client) preset wires it whole
/// ([`ClientBuilder::metrics`](crate::client::ClientBuilder::metrics)). By hand: put
/// [`call_layer`](Self::call_layer) outermost in the client stack and
/// [`attempt_layer`](Self::attempt_layer) under the strategy layer, and hand it the strategy
/// layer's and the breaker's counters with [`watch_strategy`](Self::watch_strategy) and
/// [`watch_breakers`](Self::watch_breakers). See the [module docs](super).
#[derive(Clone)]
pub struct ClientMetrics {
    instruments: Arc<Instruments>,
}

impl fmt::Debug for ClientMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientMetrics").finish_non_exhaustive()
    }
}

impl ClientMetrics {
    /// Registers the client metrics in `registry`: the call and attempt histograms, the label
    /// overflow counter and, with their features, the strategy's and the breakers' series (at
    /// zero until a layer is watched). Fails if they are registered there already.
    pub fn register(registry: &Registry, config: MetricsConfig) -> Result<Self, prometheus::Error> {
        let names = &config.names;
        let call = HistogramVec::new(
            HistogramOpts::new(names.client_duration, names.client_help)
                .buckets(names.buckets.clone()),
            &names.client_labels,
        )?;
        let attempt = HistogramVec::new(
            HistogramOpts::new(names.attempt_duration, names.attempt_help)
                .buckets(names.buckets.clone()),
            &names.attempt_labels,
        )?;
        let overflow = IntCounter::with_opts(Opts::new(
            "http_client_metric_label_overflow_total",
            "Client calls and attempts recorded under `other` because the label sets reached their cap.",
        ))?;
        registry.register(names.client_collector(call.clone(), false)?)?;
        registry.register(names.client_collector(attempt.clone(), true)?)?;
        registry.register(Box::new(overflow.clone()))?;
        #[cfg(feature = "strategy")]
        let strategies = Arc::new(super::strategy::StrategyCollector::new()?);
        #[cfg(feature = "strategy")]
        registry.register(Box::new(super::strategy::Registered(strategies.clone())))?;
        #[cfg(feature = "circuit-breaker")]
        let breakers = Arc::new(super::breaker::BreakerCollector::new()?);
        #[cfg(feature = "circuit-breaker")]
        registry.register(Box::new(super::breaker::Registered(breakers.clone())))?;
        Ok(ClientMetrics {
            instruments: Arc::new(Instruments {
                #[cfg(feature = "strategy")]
                strategies,
                #[cfg(feature = "circuit-breaker")]
                breakers,
                call: SeriesTable::new(call, OPEN_LABELS, overflow.clone(), config.max_label_sets),
                attempt: SeriesTable::new(attempt, OPEN_LABELS, overflow, config.max_label_sets),
                breaker_values: names.breaker_values,
                failure_values: names.failure_values,
                raw_paths: config.raw_paths,
            }),
        })
    }

    /// Adds a strategy layer's counters ([`StrategyLayer::stats`](crate::strategy::StrategyLayer::stats))
    /// to `http_client_retries_total`, `http_client_hedges_total`, `http_client_hedge_wins_total`
    /// and `http_client_retry_budget_refusals_total`, which sum every layer watched. They are
    /// read when Prometheus scrapes; a layer whose clients are gone keeps its counts in the sums.
    ///
    /// ```
    /// use prometheus::Registry;
    /// use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig};
    /// use tower_lifeline::strategy::StrategyLayer;
    ///
    /// let registry = Registry::new();
    /// let client_metrics = ClientMetrics::register(&registry, MetricsConfig::default()).unwrap();
    /// let strategy = StrategyLayer::new();
    /// client_metrics.watch_strategy(strategy.stats());
    /// let text = metrics::render(&registry).unwrap();
    /// assert!(text.contains("http_client_retries_total 0"));
    /// ```
    #[cfg(feature = "strategy")]
    pub fn watch_strategy(&self, stats: Arc<crate::strategy::StrategyStats>) {
        self.instruments.strategies.watch(stats);
    }

    /// Adds a breaker table ([`CircuitBreakerLayer::registry`](crate::circuit_breaker::CircuitBreakerLayer::registry))
    /// to `http_client_circuit_breaker_state{scope}` (0 closed, 1 half-open, 2 open; the worse
    /// if two tables know one scope) and `http_client_circuit_breaker_refusals_total`.
    ///
    /// ```
    /// use prometheus::Registry;
    /// use tower_lifeline::circuit_breaker::CircuitBreakerLayer;
    /// use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig};
    ///
    /// let registry = Registry::new();
    /// let client_metrics = ClientMetrics::register(&registry, MetricsConfig::default()).unwrap();
    /// let breaker = CircuitBreakerLayer::default();
    /// client_metrics.watch_breakers(breaker.registry());
    /// let text = metrics::render(&registry).unwrap();
    /// assert!(text.contains("http_client_circuit_breaker_refusals_total 0"));
    /// ```
    #[cfg(feature = "circuit-breaker")]
    pub fn watch_breakers(&self, breakers: crate::circuit_breaker::BreakerRegistry) {
        self.instruments.breakers.watch(breakers);
    }

    /// Measures whole calls; the outermost client layer.
    pub fn call_layer(&self) -> ClientMetricsLayer {
        ClientMetricsLayer {
            instruments: self.instruments.clone(),
            kind: Kind::Call,
        }
    }

    /// Measures each attempt; under the strategy layer.
    pub fn attempt_layer(&self) -> ClientMetricsLayer {
        ClientMetricsLayer {
            instruments: self.instruments.clone(),
            kind: Kind::Attempt,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Attempt,
}

/// Measures client calls or attempts; made by [`ClientMetrics`].
#[derive(Clone)]
pub struct ClientMetricsLayer {
    instruments: Arc<Instruments>,
    kind: Kind,
}

impl fmt::Debug for ClientMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientMetricsLayer")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ClientMetricsLayer {
    type Service = ClientMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientMetricsService {
            inner,
            instruments: self.instruments.clone(),
            kind: self.kind,
        }
    }
}

/// The service made by [`ClientMetricsLayer`].
#[derive(Clone)]
pub struct ClientMetricsService<S> {
    inner: S,
    instruments: Arc<Instruments>,
    kind: Kind,
}

impl<S: fmt::Debug> fmt::Debug for ClientMetricsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientMetricsService")
            .field("inner", &self.inner)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// One call or attempt being measured; dropping it records it. Dropped unanswered, it is a
/// timeout if its deadline had passed (a layer above cut it there), else 499: the caller went
/// away, as aio-request records a cancelled call.
struct Recording {
    instruments: Arc<Instruments>,
    kind: Kind,
    /// The endpoint label, then the path label: copied out of the request (which is gone by the
    /// time the call is recorded) without a `String` per call. A route template is copied too:
    /// cloning one built at run time (`RouteTemplate::owned`) would allocate.
    text: LabelText,
    /// Where the endpoint ends and the path begins in `text`.
    endpoint_len: usize,
    method: &'static str,
    started: Instant,
    /// `None` until an outcome arrives.
    status: Option<Status>,
    breaker: bool,
    /// The call's or attempt's deadline, to tell a cut from a cancellation.
    deadline: Option<Instant>,
}

/// How a call or attempt ended, kept as-is until it is recorded: no text is made per request.
enum Status {
    Code(http::StatusCode),
    /// A fixed label: a failure's (`timeout`, `error`, ...) or a gRPC code's name.
    Failed(&'static str),
}

impl Status {
    fn as_str(&self) -> &str {
        match self {
            Status::Code(code) => code.as_str(),
            Status::Failed(label) => label,
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let i = &self.instruments;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        let status = match &self.status {
            Some(status) => status.as_str(),
            None if self.deadline.is_some_and(|deadline| now >= deadline) => {
                i.failure_values.timeout
            }
            None => "499",
        };
        // Never out of bounds (`endpoint_len` is where the endpoint ended); checked, as a panic in
        // `drop` would be worse than an empty label.
        let (endpoint, path) = (self.text.as_str())
            .split_at_checked(self.endpoint_len)
            .unwrap_or_default();
        match self.kind {
            Kind::Call => {
                let breaker = if self.breaker {
                    i.breaker_values.0
                } else {
                    i.breaker_values.1
                };
                let labels = [endpoint, self.method, path, status, breaker];
                i.call.observe(labels, elapsed);
            }
            Kind::Attempt => {
                let labels = [endpoint, self.method, path, status];
                i.attempt.observe(labels, elapsed);
            }
        }
    }
}

/// Writes the endpoint label: the same destination a breaker scope names, or `unknown`.
fn write_endpoint<B>(req: &Request<B>, out: &mut LabelText) {
    if !crate::destination::write_destination(req.uri(), req.headers(), out) {
        out.push_str("unknown");
    }
}

/// The status label of a call that ended in an error, and whether a breaker refused it: the
/// names' `circuit_open` when a breaker refused it, `timeout` when a deadline, an attempt timeout
/// or a pool timeout ended it, `error` for any other transport failure.
fn error_status(
    error: &(dyn std::error::Error + 'static),
    values: FailureValues,
) -> (&'static str, bool) {
    match crate::classify::failure_kind(error) {
        FailureKind::CircuitOpen => (values.circuit_open, true),
        FailureKind::Timeout => (values.timeout, false),
        FailureKind::Error => (values.error, false),
    }
}

impl<S, B, ResBody> Service<Request<B>> for ClientMetricsService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ClientMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut text = LabelText::new();
        write_endpoint(&req, &mut text);
        let endpoint_len = text.len();
        match req.extensions().get::<RouteTemplate>() {
            Some(template) => text.push_str(template.as_str()),
            None if self.instruments.raw_paths => text.push_str(req.uri().path()),
            None => write_normalized_path(req.uri().path(), &mut text),
        }
        let recording = Recording {
            instruments: self.instruments.clone(),
            kind: self.kind,
            text,
            endpoint_len,
            method: method_label(req.method()),
            started: Instant::now(),
            status: None,
            breaker: false,
            deadline: Deadline::of(req.extensions()).map(Deadline::instant),
        };
        ClientMetricsFuture {
            inner: self.inner.call(req),
            recording: Some(recording),
        }
    }
}

pin_project! {
    /// The response future of [`ClientMetricsService`].
    pub struct ClientMetricsFuture<F> {
        #[pin]
        inner: F,
        recording: Option<Recording>,
    }
}

impl<F> fmt::Debug for ClientMetricsFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientMetricsFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ClientMetricsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx)).map_err(Into::into);
        if let Some(mut recording) = this.recording.take() {
            match &result {
                #[cfg(feature = "grpc")]
                Ok(response) if crate::grpc::is_grpc(response.headers()) => {
                    record_grpc(response, recording);
                }
                Ok(response) => {
                    recording.status = Some(Status::Code(response.status()));
                    recording.breaker = response.headers().contains_key(headers::X_CIRCUIT_BREAKER);
                }
                Err(error) => {
                    let (status, breaker) =
                        error_status(error.as_ref(), recording.instruments.failure_values);
                    recording.breaker = breaker;
                    recording.status = Some(Status::Failed(status));
                }
            }
        }
        Poll::Ready(result)
    }
}

/// Records a gRPC answer by its code's name: a trailers-only answer's at once, else the
/// code at the end of its stream (`error` if it breaks, `timeout` if its deadline cut it; if
/// the reader abandons it, as any call dropped unanswered: `timeout` past its deadline, else
/// 499).
#[cfg(feature = "grpc")]
fn record_grpc<B>(response: &Response<B>, mut recording: Recording) {
    use crate::grpc::end_of_stream::{pending_end, StreamEnd};
    use crate::grpc::{code_name, status_in};

    if let Some(code) = status_in(response.headers()) {
        recording.status = Some(Status::Failed(code_name(code)));
        return;
    }
    match pending_end(response) {
        Some(end) => end.on_end(move |end| {
            match end {
                StreamEnd::Status(code) => recording.status = Some(Status::Failed(code_name(code))),
                StreamEnd::Failed => {
                    let error = recording.instruments.failure_values.error;
                    recording.status = Some(Status::Failed(error));
                }
                StreamEnd::TimedOut => {
                    let timeout = recording.instruments.failure_values.timeout;
                    recording.status = Some(Status::Failed(timeout));
                }
                StreamEnd::Abandoned => {}
            }
            drop(recording);
        }),
        None => recording.status = Some(Status::Code(response.status())),
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::metrics::render;

    /// Sends each request through the call layer (over a service that answers 200) and returns
    /// the exposition.
    async fn record(config: MetricsConfig, requests: Vec<Request<()>>) -> String {
        let registry = Registry::new();
        let metrics = ClientMetrics::register(&registry, config).unwrap();
        let ok = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::io::Error>(Response::new(()))
        });
        let service = metrics.call_layer().layer(ok);
        for request in requests {
            service.clone().oneshot(request).await.unwrap();
        }
        render(&registry).unwrap()
    }

    fn count_line(endpoint: &str, path: &str, count: u64) -> String {
        format!(
            r#"http_client_request_duration_seconds_count{{circuit_breaker="false",endpoint="{endpoint}",method="GET",path="{path}",status="200"}} {count}"#
        )
    }

    #[tokio::test]
    async fn the_path_label_is_the_template_or_the_normalised_or_raw_path() {
        let mut templated = Request::get("http://api:8080/users/42").body(()).unwrap();
        templated
            .extensions_mut()
            .insert(RouteTemplate::owned("/users/{user}".to_owned()));
        let requests = vec![
            templated,
            Request::get("http://api:8080/users/42").body(()).unwrap(),
            Request::get("http://api:8080/users/43").body(()).unwrap(),
        ];
        let text = record(MetricsConfig::default(), requests).await;
        for line in [
            count_line("http://api:8080", "/users/{user}", 1),
            count_line("http://api:8080", "/users/{id}", 2),
        ] {
            assert!(text.contains(&line), "missing {line}\n{text}");
        }

        let config = MetricsConfig {
            raw_paths: true,
            ..MetricsConfig::default()
        };
        let requests = vec![Request::get("http://api:8080/users/42?x=1")
            .body(())
            .unwrap()];
        let text = record(config, requests).await;
        let line = count_line("http://api:8080", "/users/42", 1);
        assert!(text.contains(&line), "missing {line}\n{text}");
    }

    #[tokio::test]
    async fn labels_longer_than_the_inline_room_are_whole() {
        let host = format!("{}.example", "h".repeat(150));
        let segment = "s".repeat(40);
        let path = format!("/{segment}/{segment}/{segment}");
        let uri = format!("https://{host}{path}");
        let requests = vec![
            Request::get(&uri).body(()).unwrap(),
            Request::get(&uri).body(()).unwrap(),
        ];
        let text = record(MetricsConfig::default(), requests).await;
        let line = count_line(&format!("https://{host}"), &path, 2);
        assert!(text.contains(&line), "missing {line}\n{text}");
    }

    #[tokio::test]
    async fn client_label_sets_past_the_cap_fold_endpoint_and_path() {
        let config = MetricsConfig {
            max_label_sets: 2,
            ..MetricsConfig::default()
        };
        let requests = (0..5)
            .map(|i| Request::get(format!("http://host-{i}/a")).body(()).unwrap())
            .collect();
        let text = record(config, requests).await;
        for line in [
            count_line("http://host-0", "/a", 1),
            count_line("http://host-1", "/a", 1),
            count_line("other", "other", 3),
            "http_client_metric_label_overflow_total 3".to_owned(),
        ] {
            assert!(text.contains(&line), "missing {line}\n{text}");
        }
    }
}
