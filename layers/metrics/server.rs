use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntGauge, Opts, Registry};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::gauge::{in_flight_gauge, InFlight};
use super::labels::method_label;
use super::series::SeriesTable;
use super::{MetricNames, MetricsConfig};
use crate::context::RouteTemplate;
use crate::headers;

/// The server's instruments, registered once and shared by every request.
struct Instruments {
    /// By client, method, route and status.
    duration: SeriesTable<4>,
    in_flight: InFlight,
}

/// The server's open-ended labels, client and route. The server table forgets the least recently
/// used sets past its cap instead of folding these into `other`; it folds them only with a cap
/// of 0, where there is nothing to forget.
const OPEN_LABELS: &[usize] = &[0, 2];

/// Server metrics: a latency histogram by client, method, route and status, and an in-flight
/// gauge. Register once, then wrap the routes with [`layer`](Self::layer).
///
/// See the [module docs](super) for what is measured and an example.
#[derive(Clone)]
pub struct ServerMetrics {
    instruments: Arc<Instruments>,
}

impl fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetrics")
            .field("in_flight", &self.instruments.in_flight.get())
            .finish_non_exhaustive()
    }
}

impl ServerMetrics {
    /// Registers the server metrics in `registry`. Fails if they are registered there already.
    pub fn register(registry: &Registry, config: MetricsConfig) -> Result<Self, prometheus::Error> {
        let names: &MetricNames = &config.names;
        let duration = HistogramVec::new(
            HistogramOpts::new(names.server_duration, names.server_help)
                .buckets(names.buckets.clone()),
            &names.server_labels,
        )?;
        let in_flight = IntGauge::new(
            "http_server_active_requests",
            "HTTP server requests in flight.",
        )?;
        let overflow = IntCounter::with_opts(Opts::new(
            "http_server_metric_label_overflow_total",
            "Server label sets forgotten, least recently used first, to keep under their cap.",
        ))?;
        registry.register(names.server_collector(duration.clone())?)?;
        let (in_flight, in_flight_collector) = in_flight_gauge(in_flight);
        registry.register(Box::new(in_flight_collector))?;
        registry.register(Box::new(overflow.clone()))?;
        Ok(ServerMetrics {
            instruments: Arc::new(Instruments {
                duration: SeriesTable::new(
                    duration,
                    OPEN_LABELS,
                    overflow,
                    config.max_server_label_sets,
                )
                .evicting_least_recent(),
                in_flight,
            }),
        })
    }

    /// The layer that measures requests.
    pub fn layer(&self) -> ServerMetricsLayer {
        ServerMetricsLayer {
            instruments: self.instruments.clone(),
        }
    }
}

/// Measures each request until its response body ends. Made by [`ServerMetrics::layer`].
#[derive(Clone)]
pub struct ServerMetricsLayer {
    instruments: Arc<Instruments>,
}

impl fmt::Debug for ServerMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetricsLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ServerMetricsLayer {
    type Service = ServerMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerMetricsService {
            inner,
            instruments: self.instruments.clone(),
        }
    }
}

/// The service made by [`ServerMetricsLayer`].
#[derive(Clone)]
pub struct ServerMetricsService<S> {
    inner: S,
    instruments: Arc<Instruments>,
}

impl<S: fmt::Debug> fmt::Debug for ServerMetricsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetricsService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Where the route label comes from.
enum Route {
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
    Template(RouteTemplate),
    Unmatched,
}

impl Route {
    fn of<B>(req: &Request<B>) -> Route {
        #[cfg(feature = "axum")]
        if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>() {
            return Route::Matched(matched.clone());
        }
        match req.extensions().get::<RouteTemplate>() {
            Some(template) => Route::Template(template.clone()),
            None => Route::Unmatched,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            #[cfg(feature = "axum")]
            Route::Matched(matched) => matched.as_str(),
            Route::Template(template) => template.as_str(),
            Route::Unmatched => "unmatched",
        }
    }
}

/// One request being measured. Dropping it records the request: with its status once known,
/// with 499 if the caller went away before an answer (as aio-request does).
struct Recording {
    instruments: Arc<Instruments>,
    /// The caller's well-formed `X-Service-Name`: a shared handle on the request's bytes, made
    /// into the label (lowercased if need be) only when the request is recorded.
    client: Option<HeaderValue>,
    method: &'static str,
    route: Route,
    started: Instant,
    status: Option<StatusCode>,
    /// A gRPC request's method and, once known, its code.
    #[cfg(feature = "grpc")]
    grpc: Option<GrpcCall>,
}

/// What a gRPC request's labels need: its method (the request's path, a shared handle on its
/// bytes) and the `grpc-status` it ended with.
#[cfg(feature = "grpc")]
struct GrpcCall {
    path: http::uri::PathAndQuery,
    code: Option<tonic::Code>,
}

#[cfg(feature = "grpc")]
impl GrpcCall {
    fn of<B>(req: &Request<B>) -> Option<GrpcCall> {
        if !crate::grpc::is_grpc(req.headers()) {
            return None;
        }
        Some(GrpcCall {
            path: req.uri().path_and_query()?.clone(),
            code: None,
        })
    }

    /// The route label: the method for a call the server answered with a code other than
    /// `UNIMPLEMENTED`, so that a caller inventing method names mints no series; else `None`
    /// (the route's template).
    fn method(&self) -> Option<&str> {
        self.code
            .filter(|code| *code != tonic::Code::Unimplemented)
            .map(|_| self.path.path())
    }
}

/// aio-request's status for a request whose caller went away first (nginx's convention).
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for Recording {
    fn drop(&mut self) {
        let instruments = &self.instruments;
        instruments.in_flight.dec();
        let status = self
            .status
            .unwrap_or_else(|| StatusCode::from_u16(CLIENT_CLOSED_REQUEST).expect("valid code"));
        let elapsed = self.started.elapsed().as_secs_f64();
        // A well-formed name is at most MAX_SERVICE_NAME_LEN bytes of ASCII: lowercased on the
        // stack, not in a `String` per request.
        let mut lowercased = [0u8; headers::MAX_SERVICE_NAME_LEN];
        let heap;
        let client = match self.client.as_ref().and_then(|v| v.to_str().ok()) {
            Some(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                match lowercased.get_mut(..name.len()) {
                    Some(buffer) => {
                        buffer.copy_from_slice(name.as_bytes());
                        buffer.make_ascii_lowercase();
                        // ASCII in, ASCII out: this never fails.
                        std::str::from_utf8(buffer).unwrap_or("unknown")
                    }
                    // Longer than `client_name` lets through: never, but stay correct.
                    None => {
                        heap = name.to_ascii_lowercase();
                        heap.as_str()
                    }
                }
            }
            Some(name) => name,
            None => "unknown",
        };
        #[cfg(feature = "grpc")]
        if let Some(grpc) = &self.grpc {
            let route = grpc.method().unwrap_or_else(|| self.route.as_str());
            let status = match grpc.code {
                Some(code) => crate::grpc::code_name(code),
                None => status_label(&status),
            };
            instruments
                .duration
                .observe([client, self.method, route, status], elapsed);
            return;
        }
        let labels = [
            client,
            self.method,
            self.route.as_str(),
            status_label(&status),
        ];
        instruments.duration.observe(labels, elapsed);
    }
}

/// The status label: the status hyper sends on the wire, exact when the `http` crate names it
/// (and 499, aio-request's "caller went away"), else its class, so that a handler echoing a
/// caller's number cannot mint hundreds of series.
fn status_label(status: &StatusCode) -> &str {
    // hyper cannot send a final 1xx other than 101 and answers 500 instead.
    if status.is_informational() && *status != StatusCode::SWITCHING_PROTOCOLS {
        return "500";
    }
    if status.canonical_reason().is_some() || status.as_u16() == CLIENT_CLOSED_REQUEST {
        return status.as_str();
    }
    match status.as_u16() / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

/// The caller's `X-Service-Name`, if well formed (label-safe text, at most 64 bytes).
fn client_name<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers()
        .get(headers::X_SERVICE_NAME)
        .filter(|value| headers::parse_service_name(value).is_some())
        .cloned()
}

impl<S, B, ResBody> Service<Request<B>> for ServerMetricsService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ServerMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.instruments.in_flight.inc();
        let recording = Recording {
            instruments: self.instruments.clone(),
            client: client_name(&req),
            method: method_label(req.method()),
            route: Route::of(&req),
            started: Instant::now(),
            status: None,
            #[cfg(feature = "grpc")]
            grpc: GrpcCall::of(&req),
        };
        ServerMetricsFuture {
            inner: self.inner.call(req),
            recording: Some(recording),
        }
    }
}

pin_project! {
    /// The response future of [`ServerMetricsService`].
    pub struct ServerMetricsFuture<F> {
        #[pin]
        inner: F,
        recording: Option<Recording>,
    }
}

impl<F> fmt::Debug for ServerMetricsFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetricsFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ServerMetricsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let mut recording = this.recording.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(recording) = recording.as_mut() {
                    recording.status = Some(response.status());
                    // A trailers-only answer (or a refusal in gRPC's terms) has its code here.
                    #[cfg(feature = "grpc")]
                    if let Some(grpc) = recording.grpc.as_mut() {
                        grpc.code = crate::grpc::status_in(response.headers());
                    }
                }
                // The recording moves into the body: the request ends when the body does.
                Ok(response.map(|inner| MeteredBody { inner, recording }))
            }
            Err(err) => {
                if let Some(recording) = recording.as_mut() {
                    recording.status = Some(StatusCode::INTERNAL_SERVER_ERROR);
                }
                Err(err)
            }
        })
    }
}

pin_project! {
    /// A response body that finishes its request's measurement when it ends or is dropped.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        recording: Option<Recording>,
    }
}

impl<B> fmt::Debug for MeteredBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        // A gRPC call's code comes in its trailers.
        #[cfg(feature = "grpc")]
        if let Some(Ok(frame)) = &frame {
            let grpc = this.recording.as_mut().and_then(|r| r.grpc.as_mut());
            if let (Some(trailers), Some(grpc)) = (frame.trailers_ref(), grpc) {
                grpc.code = crate::grpc::status_in(trailers);
            }
        }
        if frame.is_none() {
            // The end of the body: record now rather than when hyper drops it.
            drop(this.recording.take());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
