//! OpenTelemetry trace context: one trace across every hop, with a span for each call, each
//! attempt and each server request.
//!
//! The spans are [`tracing`] spans, made OpenTelemetry spans by
//! [tracing-opentelemetry](https://docs.rs/tracing-opentelemetry)'s layer; the W3C headers are
//! read and written by OpenTelemetry's global propagator, which the application sets once:
//! `opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())`.
//!
//! - **Server**: [`ServerTraceLayer`] reads `traceparent` and `tracestate`, opens a server span
//!   (`GET /users/{id}`) whose parent is the caller's attempt, and runs the request inside it, so
//!   client calls made by the handler are its children. The span ends with the response body, so
//!   a streamed response is traced whole. The `Server` preset puts it outermost.
//! - **Client**: [`ClientTraceLayer`] (outermost) opens a span for the whole call;
//!   [`AttemptTraceLayer`] (right under the strategy) opens a client span for each attempt,
//!   numbered, so retries and hedges are siblings under their call, and an attempt an open
//!   breaker refused shows as one with `error.type = circuit_open`. The
//!   [propagation layer](crate::propagation) then writes the current span's context (the
//!   attempt's) as `traceparent`/`tracestate`, to the destinations it sends its other headers
//!   to. The `Client` preset has all three.
//!
//! Attributes follow OpenTelemetry's HTTP conventions: `http.request.method`, `http.route` (server),
//! `url.template` (client, when the call gave one), `server.address`, `server.port`,
//! `http.response.status_code`, `error.type`, `http.request.resend_count` (attempts after the
//! first); and `tower_lifeline.attempt` (1, 2, ...), `tower_lifeline.attempt_kind` (`first`,
//! `retry`, or `hedge` when sent while another attempt of the call was in flight),
//! `tower_lifeline.sent_after_ms` (how long
//! after the call began the attempt was sent: a hedge's delay, or the earlier attempts plus a
//! retry's backoff), `tower_lifeline.attempts` on the call. `url.full` leaves the query out: queries carry tokens too often.
//!
//! Without a tracing-opentelemetry layer in the subscriber the spans are plain tracing spans and
//! no header is written.
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, Request, Response};
//! use opentelemetry::trace::{SpanKind, TracerProvider as _};
//! use opentelemetry_sdk::propagation::TraceContextPropagator;
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lifeline::otel::{AttemptTraceLayer, ClientTraceLayer};
//! use tower_lifeline::propagation::PropagateLayer;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("example")));
//! let _guard = tracing::subscriber::set_default(subscriber);
//!
//! // A transport that answers with the headers it was sent.
//! let transport = service_fn(|req: Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.headers().clone()))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(ClientTraceLayer::new())
//!     .layer(AttemptTraceLayer::new())
//!     .layer(PropagateLayer::new())
//!     .service(transport);
//! let request = Request::get("http://inventory:8080/stock").body(()).unwrap();
//! let sent: HeaderMap = client.oneshot(request).await.unwrap().into_body();
//!
//! let spans = exporter.get_finished_spans().unwrap();
//! let attempt = spans.iter().find(|s| s.span_kind == SpanKind::Client).unwrap();
//! let traceparent = sent["traceparent"].to_str().unwrap();
//! // 00-<trace id>-<the attempt's span id>-01: the server's span will be the attempt's child.
//! assert_eq!(
//!     traceparent,
//!     format!("00-{}-{}-01", attempt.span_context.trace_id(), attempt.span_context.span_id())
//! );
//! assert_eq!(spans.len(), 2, "the call and its attempt");
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::classify::FailureKind;
use crate::context::RouteTemplate;
use crate::error::BoxError;
use crate::span::enter_recorded;

/// The W3C trace context headers, which the propagation layer owns with its own.
pub(crate) const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Writes a propagator's headers into a request's.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A propagator only writes valid names and values; anything else is dropped, not sent.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Lets a propagator read a request's headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes the context of the current span (else OpenTelemetry's current context) into `headers`
/// with the global propagator. Nothing when there is no valid span context.
pub(crate) fn inject_current(headers: &mut HeaderMap) {
    let mut context = Span::current().context();
    if !context.span().span_context().is_valid() {
        context = opentelemetry::Context::current();
    }
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}

/// The caller's context from `headers`, read with the global propagator.
fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// A low-cardinality name for why a call or attempt got no response (`error.type`).
fn error_type(error: &(dyn std::error::Error + 'static)) -> &'static str {
    match crate::classify::failure_kind(error) {
        FailureKind::CircuitOpen => "circuit_open",
        FailureKind::Timeout => "timeout",
        FailureKind::Error => "_OTHER",
    }
}

// Integers are recorded as `i64`: tracing-opentelemetry turns unsigned ones into strings.

/// Records a response's status on `span`; a status at or over `error_from` marks it an error.
fn record_status(span: &Span, status: StatusCode, error_from: u16) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.as_u16() >= error_from {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
    }
}

/// Records an error on `span`.
fn record_error(span: &Span, error: &(dyn std::error::Error + 'static)) {
    if span.is_disabled() {
        return;
    }
    span.record("error.type", error_type(error));
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", tracing::field::display(error));
}

/// A span's name as the conventions give it: `GET /users/{id}` with a route template, else the
/// method alone (a raw path would make one name per user id).
fn span_name<'a>(method: &'a str, template: Option<&'a str>) -> SpanName<'a> {
    SpanName { method, template }
}

/// A span's name, `GET /users/{id}`, written only when a subscriber or `log` formats it: spans
/// are made for every request, and most of them are never shown.
struct SpanName<'a> {
    method: &'a str,
    template: Option<&'a str>,
}

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.template {
            Some(template) => write!(f, "{} {template}", self.method),
            None => f.write_str(self.method),
        }
    }
}

/// The host and port a request goes to, for `server.address` and `server.port`.
fn destination<B>(req: &Request<B>) -> (Option<&str>, Option<u16>) {
    let uri = req.uri();
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    (uri.host(), port)
}

/// Records `server.address` and `server.port` on a span that is recorded. Not given in the span
/// macro: with tracing's `log` feature on (axum's default `tower-log` turns it on) and no
/// subscriber set, the macro evaluates every field of a span nobody records, and parsing the
/// authority twice per span was a tenth of the client preset's own instructions per request.
fn record_destination<B>(span: &Span, req: &Request<B>) {
    if span.is_disabled() {
        return;
    }
    let (host, port) = destination(req);
    if let Some(host) = host {
        span.record("server.address", host);
    }
    if let Some(port) = port {
        span.record("server.port", i64::from(port));
    }
}

/// What the call's span shares with its attempts: travels in the request's extensions, which
/// the strategy copies into every attempt.
#[derive(Clone)]
struct CallTrace(Arc<CallState>);

struct CallState {
    attempts: AtomicU32,
    /// Attempts sent and not finished: one sent while another is in flight is a hedge.
    in_flight: AtomicU32,
    started: Instant,
    /// The call's span: every attempt's parent, named rather than taken from the current span,
    /// so that attempts stay siblings whatever spans the strategy opens around them.
    span: Span,
}

/// Opens a span for each whole call (retries and hedges included). See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct ClientTraceLayer {
    _private: (),
}

impl ClientTraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

/// The service made by [`ClientTraceLayer`].
#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for ClientTrace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let method = req.method().as_str();
        let template = req.extensions().get::<RouteTemplate>();
        // No name is formatted for a span that is not recorded (a `Display` value); the
        // destination is parsed and recorded only for one that is (see `record_destination`).
        let span = tracing::info_span!(
            "HTTP client call",
            otel.name = %span_name(method, template.map(RouteTemplate::as_str)),
            otel.kind = "internal",
            otel.status_code = Empty,
            otel.status_description = Empty,
            http.request.method = method,
            server.address = Empty,
            server.port = Empty,
            url.template = template.map(RouteTemplate::as_str),
            http.response.status_code = Empty,
            error.type = Empty,
            tower_lifeline.attempts = Empty,
        );
        record_destination(&span, &req);
        if span.is_disabled() {
            // No subscriber wants it: no shared state for the attempts either.
            return TraceFuture {
                inner: self.inner.call(req),
                span,
                kind: Kind::Attempt(None),
            };
        }
        let state = Arc::new(CallState {
            attempts: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            started: Instant::now(),
            span: span.clone(),
        });
        req.extensions_mut().insert(CallTrace(state.clone()));
        let inner = {
            let _entered = enter_recorded(&span);
            self.inner.call(req)
        };
        TraceFuture {
            inner,
            span,
            kind: Kind::Call(state),
        }
    }
}

/// Opens a client span for each attempt, under the call's span. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct AttemptTraceLayer {
    _private: (),
}

impl AttemptTraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for AttemptTraceLayer {
    type Service = AttemptTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTrace { inner }
    }
}

/// The service made by [`AttemptTraceLayer`].
#[derive(Debug, Clone)]
pub struct AttemptTrace<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for AttemptTrace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Numbered in the order attempts are sent; without a call layer above, each is a first.
        let call = req.extensions().get::<CallTrace>().map(|c| c.0.clone());
        let (number, sent_after, parent, kind) = match &call {
            Some(call) => {
                let number = call.attempts.fetch_add(1, Ordering::Relaxed) + 1;
                let others_in_flight = call.in_flight.fetch_add(1, Ordering::Relaxed);
                let kind = match (number, others_in_flight) {
                    (1, _) => "first",
                    (_, 0) => "retry",
                    _ => "hedge",
                };
                (number, call.started.elapsed(), call.span.clone(), kind)
            }
            None => (1, std::time::Duration::ZERO, Span::current(), "first"),
        };
        let method = req.method().as_str();
        let uri = req.uri();
        let template = req.extensions().get::<RouteTemplate>();
        let span = tracing::info_span!(
            parent: &parent,
            "HTTP client attempt",
            otel.name = %span_name(method, template.map(RouteTemplate::as_str)),
            otel.kind = "client",
            otel.status_code = Empty,
            otel.status_description = Empty,
            http.request.method = method,
            server.address = Empty,
            server.port = Empty,
            url.full = %format_args!(
                "{}://{}{}",
                uri.scheme_str().unwrap_or("http"),
                uri.authority().map_or("", |a| a.as_str()),
                uri.path()
            ),
            url.template = template.map(RouteTemplate::as_str),
            http.request.resend_count = Empty,
            http.response.status_code = Empty,
            error.type = Empty,
            tower_lifeline.attempt = i64::from(number),
            tower_lifeline.attempt_kind = kind,
            tower_lifeline.sent_after_ms = i64::try_from(sent_after.as_millis()).unwrap_or(i64::MAX),
        );
        record_destination(&span, &req);
        if number > 1 {
            span.record("http.request.resend_count", i64::from(number - 1));
        }
        // Inside the span: the propagation layer below writes this attempt's context.
        let inner = {
            let _entered = enter_recorded(&span);
            self.inner.call(req)
        };
        TraceFuture {
            inner,
            span,
            kind: Kind::Attempt(call.map(InFlight)),
        }
    }
}

/// Which span a [`TraceFuture`] finishes: a call's records how many attempts it took; an
/// attempt's counts as in flight until it finishes or is dropped (a cancelled hedge).
enum Kind {
    Call(Arc<CallState>),
    Attempt(Option<InFlight>),
}

/// One attempt in flight for its call; dropping it says the attempt is over.
struct InFlight(Arc<CallState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// The response future of [`ClientTrace`] and [`AttemptTrace`]: polls the inner future
    /// inside the span and records the outcome on it.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        kind: Kind,
    }
}

impl<F> fmt::Debug for TraceFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Entered while polling too: attempts a strategy starts later (retries, hedges) are
        // started from here, and must find the call's span current.
        let _entered = enter_recorded(this.span);
        let result = std::task::ready!(this.inner.poll(cx)).map_err(Into::into);
        match &result {
            // A client span is an error from 400 on (the conventions' rule for clients).
            Ok(response) => record_status(this.span, response.status(), 400),
            Err(error) => record_error(this.span, error.as_ref()),
        }
        match this.kind {
            Kind::Call(state) => {
                this.span.record(
                    "tower_lifeline.attempts",
                    i64::from(state.attempts.load(Ordering::Relaxed)),
                );
            }
            // Over: a retry sent from now on is not a hedge of this one.
            Kind::Attempt(in_flight) => drop(in_flight.take()),
        }
        Poll::Ready(result)
    }
}

/// Opens a server span for each request, continuing the caller's trace from `traceparent`.
/// See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct ServerTraceLayer {
    _private: (),
}

impl ServerTraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// The service made by [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

/// The route template of a server request: axum's matched path, else a `RouteTemplate`.
fn server_route<B>(req: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(matched.as_str());
    }
    req.extensions()
        .get::<RouteTemplate>()
        .map(RouteTemplate::as_str)
}

impl<S, B, ResBody> Service<Request<B>> for ServerTrace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = ServerTraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.method().as_str();
        let route = server_route(&req);
        let span = tracing::info_span!(
            "HTTP server request",
            otel.name = %span_name(method, route),
            otel.kind = "server",
            otel.status_code = Empty,
            otel.status_description = Empty,
            http.request.method = method,
            http.route = route,
            url.path = req.uri().path(),
            http.response.status_code = Empty,
            error.type = Empty,
        );
        if !span.is_disabled() {
            let parent = extract(req.headers());
            if parent.span().span_context().is_valid() {
                // Fails only without an OpenTelemetry layer, where there is no trace to continue.
                let _ = span.set_parent(parent);
            }
        }
        let inner = {
            let _entered = enter_recorded(&span);
            self.inner.call(req)
        };
        ServerTraceFuture { inner, span }
    }
}

pin_project! {
    /// The response future of [`ServerTrace`].
    pub struct ServerTraceFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

impl<F> fmt::Debug for ServerTraceFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTraceFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ServerTraceFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The handler runs inside the span: its client calls continue this trace.
        let _entered = enter_recorded(this.span);
        let result = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(match result {
            // A server span is an error only for 5xx: a 4xx is the caller's mistake.
            Ok(response) => {
                record_status(this.span, response.status(), 500);
                // The span moves into the body: the request ends when the body does.
                let span = this.span.clone();
                Ok(response.map(|inner| TracedBody { inner, span }))
            }
            Err(error) => {
                this.span.record("error.type", "_OTHER");
                this.span.record("otel.status_code", "ERROR");
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that keeps its request's server span open until it ends or is dropped,
    /// so a streamed response is traced whole.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Span,
    }
}

impl<B> fmt::Debug for TracedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedBody").finish_non_exhaustive()
    }
}

impl<B: http_body::Body> http_body::Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = {
            let _entered = enter_recorded(this.span);
            std::task::ready!(this.inner.as_mut().poll_frame(cx))
        };
        if frame.is_none() {
            // The end of the body: close the span now rather than when hyper drops the body.
            *this.span = Span::none();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
