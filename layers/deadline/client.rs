use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{DeadlineExceeded, DEFAULT_LOW_TIME_THRESHOLD, DEFAULT_TIMEOUT};
use crate::context::{instant_after, Deadline, RequestContext};
use crate::error::BoxError;
use crate::headers;

/// The deadline of an outbound call, with the time left to it: an explicit [`Deadline`] in its
/// extensions (capped by the inherited one), else the inherited context deadline, else
/// `default_timeout` from now. The default applies only when there is neither, as aio-request's
/// `deadline or context.deadline or Deadline.from_timeout(timeout)`: a handler given 45 s passes
/// 45 s on, not the client's 20 s. One read of the clock serves both values.
pub(crate) fn effective_deadline(
    extensions: &http::Extensions,
    default_timeout: Duration,
) -> (Deadline, Duration) {
    let now = Instant::now();
    let explicit = extensions.get::<Deadline>().copied();
    let inherited = RequestContext::current().and_then(|c| c.deadline());
    let deadline = match (explicit, inherited) {
        (Some(explicit), Some(inherited)) => explicit.earliest(inherited),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => Deadline::at(instant_after(now, default_timeout)),
    };
    (deadline, deadline.remaining_at(now))
}

/// What [`ClientDeadline`] gives its caller when time runs out, before or after sending.
pub trait OnExpiry<B>: Clone {
    /// Turns the exceeded deadline into the call's outcome.
    fn on_expiry(&self, exceeded: DeadlineExceeded) -> Result<Response<B>, BoxError>;
}

/// Fail with a [`DeadlineExceeded`] error (the default; every refusal in this crate is a typed
/// error by default, see [`ReturnCircuitOpen`](crate::circuit_breaker::ReturnCircuitOpen)).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReturnDeadlineExceeded;

impl<B> OnExpiry<B> for ReturnDeadlineExceeded {
    fn on_expiry(&self, exceeded: DeadlineExceeded) -> Result<Response<B>, BoxError> {
        Err(Box::new(exceeded))
    }
}

/// Answer a synthetic `408 Request Timeout` carrying `X-Do-Not-Retry: 1`, as aio-request does,
/// so that code written for responses only handles one kind of outcome. Needs a body type with a
/// `Default` (axum's `Body`, `Full<Bytes>`, `Empty<Bytes>`...).
#[derive(Debug, Clone, Copy, Default)]
pub struct Respond408;

impl<B: Default> OnExpiry<B> for Respond408 {
    fn on_expiry(&self, exceeded: DeadlineExceeded) -> Result<Response<B>, BoxError> {
        tracing::debug!(%exceeded, "answering 408 for an exceeded deadline");
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
        response
            .headers_mut()
            .insert(headers::X_DO_NOT_RETRY, headers::FLAG_SET);
        Ok(response)
    }
}

/// Fixes the effective deadline of an outbound call, refuses to send when too little time is
/// left, writes `X-Request-Timeout`, and stops waiting at the deadline.
///
/// See the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_lifeline::context::Deadline;
/// use tower_lifeline::deadline::{ClientDeadlineLayer, DeadlineExceeded};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // A transport that echoes the timeout header it was given, after 1 s.
/// let transport = service_fn(|req: Request<()>| async move {
///     tokio::time::sleep(Duration::from_secs(1)).await;
///     let sent = req.headers()["x-request-timeout"].clone();
///     Ok::<_, std::convert::Infallible>(Response::new(sent))
/// });
/// let client = ServiceBuilder::new()
///     .layer(ClientDeadlineLayer::new().default_timeout(Duration::from_secs(3)))
///     .service(transport);
///
/// let response = client.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!(response.body(), "3.000");
///
/// // An explicit deadline shorter than the call: the caller gets a typed error at 500 ms.
/// let mut request = Request::new(());
/// request.extensions_mut().insert(Deadline::after(Duration::from_millis(500)));
/// let err = client.oneshot(request).await.unwrap_err();
/// let exceeded = err.downcast_ref::<DeadlineExceeded>().unwrap();
/// assert_eq!(exceeded.allowed(), Duration::from_millis(500));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientDeadlineLayer<M = ReturnDeadlineExceeded> {
    default_timeout: Duration,
    low_time_threshold: Duration,
    write_header: bool,
    on_expiry: M,
}

impl ClientDeadlineLayer {
    /// Defaults: 20 s when neither the request nor the context has a deadline, 5 ms low-time
    /// threshold, `X-Request-Timeout` written, a [`DeadlineExceeded`] error on expiry.
    pub fn new() -> Self {
        ClientDeadlineLayer {
            default_timeout: DEFAULT_TIMEOUT,
            low_time_threshold: DEFAULT_LOW_TIME_THRESHOLD,
            write_header: true,
            on_expiry: ReturnDeadlineExceeded,
        }
    }
}

impl Default for ClientDeadlineLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> ClientDeadlineLayer<M> {
    /// The deadline of a call with no explicit and no inherited deadline (default 20 s).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// With less than this left, the call fails without sending (default 5 ms).
    pub fn low_time_threshold(mut self, threshold: Duration) -> Self {
        self.low_time_threshold = threshold;
        self
    }

    /// Whether to write `X-Request-Timeout` (default yes). The client preset turns it off
    /// because its propagation layer, closer to the wire, writes it for every attempt.
    pub fn write_header(mut self, write: bool) -> Self {
        self.write_header = write;
        self
    }

    /// Answer a synthetic 408 with `X-Do-Not-Retry: 1` instead of failing with an error.
    pub fn respond_408(self) -> ClientDeadlineLayer<Respond408> {
        ClientDeadlineLayer {
            default_timeout: self.default_timeout,
            low_time_threshold: self.low_time_threshold,
            write_header: self.write_header,
            on_expiry: Respond408,
        }
    }
}

impl<S, M: Clone> Layer<S> for ClientDeadlineLayer<M> {
    type Service = ClientDeadline<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientDeadline {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ClientDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct ClientDeadline<S, M = ReturnDeadlineExceeded> {
    inner: S,
    layer: ClientDeadlineLayer<M>,
}

impl<S> ClientDeadline<S> {
    /// `inner` wrapped as [`ClientDeadlineLayer::new`](ClientDeadlineLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&ClientDeadlineLayer::new(), inner)
    }
}

impl<S, M> ClientDeadline<S, M> {
    inner_service_accessors!(S);
}

impl<S, M, B, ResBody> Service<Request<B>> for ClientDeadline<S, M>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    M: OnExpiry<ResBody>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ClientDeadlineFuture<S::Future, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // A gRPC caller sets its deadline as `grpc-timeout` (tonic's `Request::set_timeout`):
        // an explicit deadline, unless one is in the extensions already.
        if req.extensions().get::<Deadline>().is_none() {
            if let Some(timeout) = req
                .headers()
                .get(headers::GRPC_TIMEOUT)
                .and_then(headers::parse_grpc_timeout)
            {
                req.extensions_mut().insert(Deadline::after(timeout));
            }
        }
        let (deadline, left) = effective_deadline(req.extensions(), self.layer.default_timeout);
        let on_expiry = self.layer.on_expiry.clone();
        if left < self.layer.low_time_threshold {
            let exceeded = DeadlineExceeded::not_sent(left, self.layer.low_time_threshold);
            tracing::debug!(%exceeded, "not sending request");
            return ClientDeadlineFuture {
                state: State::Refused {
                    exceeded: Some(exceeded),
                },
                on_expiry,
            };
        }
        // Layers below (strategy, attempt timeout, propagation) read the effective deadline here.
        // An explicit deadline that is already the earliest stays as it is: no second box.
        if req.extensions().get::<Deadline>() != Some(&deadline) {
            req.extensions_mut().insert(deadline);
        }
        if self.layer.write_header {
            req.headers_mut()
                .insert(headers::X_REQUEST_TIMEOUT, headers::format_timeout(left));
        }
        ClientDeadlineFuture {
            state: State::Running {
                inner: self.inner.call(req),
                sleep: tokio::time::sleep_until(deadline.instant()),
                allowed: left,
            },
            on_expiry,
        }
    }
}

pin_project! {
    /// The response future of [`ClientDeadline`].
    pub struct ClientDeadlineFuture<F, M> {
        #[pin]
        state: State<F>,
        on_expiry: M,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Refused { exceeded: Option<DeadlineExceeded> },
        Running {
            #[pin]
            inner: F,
            #[pin]
            sleep: Sleep,
            allowed: Duration,
        },
    }
}

impl<F, M> fmt::Debug for ClientDeadlineFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientDeadlineFuture")
            .finish_non_exhaustive()
    }
}

impl<F, M, B, E> Future for ClientDeadlineFuture<F, M>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    M: OnExpiry<B>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Refused { exceeded } => {
                let exceeded = exceeded.take().expect("polled after completion");
                Poll::Ready(this.on_expiry.on_expiry(exceeded))
            }
            StateProj::Running {
                inner,
                sleep,
                allowed,
            } => {
                if let Poll::Ready(result) = inner.poll(cx) {
                    return Poll::Ready(result.map_err(Into::into));
                }
                if sleep.poll(cx).is_ready() {
                    // Returning drops the inner future with this one: hyper cancels the request.
                    let exceeded = DeadlineExceeded::elapsed(*allowed);
                    tracing::debug!(%exceeded, "giving up on the response");
                    return Poll::Ready(this.on_expiry.on_expiry(exceeded));
                }
                Poll::Pending
            }
        }
    }
}
