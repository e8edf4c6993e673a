use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{DEFAULT_LOW_TIME_THRESHOLD, DEFAULT_MAX_TIMEOUT, DEFAULT_TIMEOUT};
use crate::context::{instant_after, Deadline, InContext, RequestContext};
use crate::headers;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    default_timeout: Duration,
    max_timeout: Duration,
    low_time_threshold: Duration,
    cancel_on_expiry: bool,
    expiry_status: StatusCode,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_timeout: DEFAULT_TIMEOUT,
            max_timeout: DEFAULT_MAX_TIMEOUT,
            low_time_threshold: DEFAULT_LOW_TIME_THRESHOLD,
            cancel_on_expiry: false,
            expiry_status: StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// Left in the request's extensions by [`ServerDeadline`] for a [`RouteTimeout`] further in,
/// which needs to know whether the deadline was the caller's or only the server default. Only
/// left when the settings are not the defaults: otherwise the route timeout works it out from
/// the request itself, and the request is spared an extension.
#[derive(Clone)]
struct Admission {
    from_caller: bool,
    settings: Settings,
    /// In cancel-on-expiry mode, where the outer layer's timer looks for the deadline, so that a
    /// route timeout longer than the server default moves the timer instead of being cut by it.
    expiry: Option<Arc<Mutex<Deadline>>>,
}

/// Reads the caller's deadline into the request context; refuses requests that cannot finish.
///
/// See the [module docs](super) for details and an example.
#[derive(Debug, Clone, Default)]
pub struct ServerDeadlineLayer {
    settings: Settings,
}

impl ServerDeadlineLayer {
    /// Defaults: 20 s for requests with no deadline, 60 s at most, 5 ms low-time threshold,
    /// handlers not cancelled at expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The deadline of a request that brought none (aio-request's default: 20 s).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.settings.default_timeout = timeout;
        self
    }

    /// The longest deadline a caller may ask for; longer ones are cut to it, so a hostile
    /// caller cannot hold the server's resources for days. It caps the default timeout too.
    pub fn max_timeout(mut self, timeout: Duration) -> Self {
        self.settings.max_timeout = timeout;
        self
    }

    /// Requests with less than this left are refused with a 408 (default 5 ms).
    pub fn low_time_threshold(mut self, threshold: Duration) -> Self {
        self.settings.low_time_threshold = threshold;
        self
    }

    /// Drop the handler's future when the deadline passes and answer with the
    /// [`expiry_status`](Self::expiry_status), `504` by default (aio-request's
    /// `cancel_on_timeout`). Off by default: a handler may have side effects that should finish.
    pub fn cancel_on_expiry(mut self, cancel: bool) -> Self {
        self.settings.cancel_on_expiry = cancel;
        self
    }

    /// The status of the answer to a request whose handler was cancelled at its deadline
    /// (default `504 Gateway Timeout`, with `X-Do-Not-Retry`).
    ///
    /// Not `408`, which says the *client* was slow to send its request and which browsers and
    /// some clients resend on their own, running a slow handler again (tower-http issue 300); the
    /// server ran out of the caller's time, as [`ServerTimeoutLayer`](crate::timeout) says with
    /// `504`. A request refused on arrival, with too little time left, still gets aio-request's
    /// `408`: there the caller's time was too short before the server did anything.
    ///
    /// Use a 4xx or 5xx: the answer has an empty body, which a 2xx would pass off as a result.
    /// A 5xx counts in the server's error ratio (the dashboards' `ServerErrorRatioHigh`): callers
    /// that send deadlines shorter than the handler needs show there.
    pub fn expiry_status(mut self, status: StatusCode) -> Self {
        self.settings.expiry_status = status;
        self
    }
}

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline {
            inner,
            settings: self.settings,
        }
    }
}

/// The service made by [`ServerDeadlineLayer`]. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct ServerDeadline<S> {
    inner: S,
    settings: Settings,
}

impl<S> ServerDeadline<S> {
    /// `inner` wrapped as [`ServerDeadlineLayer::new`](ServerDeadlineLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&ServerDeadlineLayer::new(), inner)
    }
}

impl<S> ServerDeadline<S> {
    inner_service_accessors!(S);
}

impl<S, B, ResBody> Service<Request<B>> for ServerDeadline<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ServerDeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let settings = self.settings;
        let from_caller = headers::incoming_timeout(req.headers());
        let timeout = from_caller
            .unwrap_or(settings.default_timeout)
            .min(settings.max_timeout);
        // One read of the clock for the deadline and the time left to it.
        let now = Instant::now();
        let deadline = Deadline::at(instant_after(now, timeout));
        let left = deadline.remaining_at(now);
        let expiry = settings
            .cancel_on_expiry
            .then(|| Arc::new(Mutex::new(deadline)));
        if settings != Settings::default() {
            req.extensions_mut().insert(Admission {
                from_caller: from_caller.is_some(),
                settings,
                expiry: expiry.clone(),
            });
        }
        admit(&mut self.inner, req, deadline, left, settings, expiry)
    }
}

/// Gives a route its own timeout for requests that brought no deadline.
///
/// Inside a [`ServerDeadline`], it replaces the server default for the routes it wraps; a
/// caller's own deadline still wins, and the server's maximum still caps it. On its own, it acts
/// as a [`ServerDeadline`] whose default timeout is the route's.
///
/// ```
/// use std::time::Duration;
/// use axum::{body::Body, routing::get, Router};
/// use http::Request;
/// use tower::ServiceExt;
/// use tower_lifeline::context::RequestContext;
/// use tower_lifeline::deadline::{RouteTimeoutLayer, ServerDeadlineLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let left = |ctx: RequestContext| async move {
///     ctx.deadline().unwrap().remaining().as_secs().to_string()
/// };
/// let app = Router::new()
///     .route("/report", get(left).route_layer(RouteTimeoutLayer::new(Duration::from_secs(45))))
///     .route("/quick", get(left))
///     .layer(ServerDeadlineLayer::new());
///
/// for (path, expected) in [("/report", "45"), ("/quick", "20")] {
///     let request = Request::get(path).body(Body::empty()).unwrap();
///     let body = app.clone().oneshot(request).await.unwrap().into_body();
///     assert_eq!(axum::body::to_bytes(body, 64).await.unwrap(), expected);
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RouteTimeoutLayer {
    timeout: Duration,
}

impl RouteTimeoutLayer {
    /// A route timeout of `timeout`.
    pub fn new(timeout: Duration) -> Self {
        RouteTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for RouteTimeoutLayer {
    type Service = RouteTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service made by [`RouteTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct RouteTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B, ResBody> Service<Request<B>> for RouteTimeout<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ServerDeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Without an admission record, the server deadline layer outside (if any) has the
        // default settings, and whether the deadline is the caller's is read from the request.
        let outer = match req.extensions().get::<Admission>() {
            Some(admission) => admission.clone(),
            None => Admission {
                from_caller: headers::incoming_timeout(req.headers()).is_some(),
                settings: Settings::default(),
                expiry: None,
            },
        };
        let max = outer.settings.max_timeout;
        let deadline = match RequestContext::of(&req).deadline() {
            // The caller's deadline, as the server deadline layer outside fixed it.
            Some(deadline) if outer.from_caller => deadline,
            // Standalone: a server deadline layer whose default is this route's timeout.
            None if outer.from_caller => match headers::incoming_timeout(req.headers()) {
                Some(timeout) => Deadline::after(timeout.min(max)),
                None => Deadline::after(self.timeout.min(max)),
            },
            _ => Deadline::after(self.timeout.min(max)),
        };
        // In cancel-on-expiry mode the outer layer's timer is set for the server default. A later
        // route deadline moves it (the outer timer reads the new one when it fires); an earlier
        // one needs a timer of its own here.
        let mut cancel_here = false;
        if let Some(expiry) = &outer.expiry {
            let mut shared = expiry.lock().unwrap_or_else(|e| e.into_inner());
            cancel_here = deadline < *shared;
            *shared = deadline;
        }
        let settings = Settings {
            cancel_on_expiry: cancel_here,
            ..outer.settings
        };
        admit(
            &mut self.inner,
            req,
            deadline,
            deadline.remaining(),
            settings,
            None,
        )
    }
}

/// Refuses the request if too little time is `left` before `deadline`; otherwise runs the inner
/// service inside the request context, with a timer when the handler is to be cancelled at
/// expiry.
fn admit<S, B, ResBody>(
    inner: &mut S,
    mut req: Request<B>,
    deadline: Deadline,
    left: Duration,
    settings: Settings,
    shared_expiry: Option<Arc<Mutex<Deadline>>>,
) -> ServerDeadlineFuture<S::Future>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    if left < settings.low_time_threshold {
        tracing::debug!(
            left = ?left,
            threshold = ?settings.low_time_threshold,
            "refusing request: too little time left to handle it"
        );
        return ServerDeadlineFuture {
            state: State::Refused,
        };
    }
    let ctx = RequestContext::of(&req).with_deadline(Some(deadline));
    ctx.store_in(&mut req);
    let future = ctx.sync_scope(|| inner.call(req));
    let timer = (settings.cancel_on_expiry || shared_expiry.is_some())
        .then(|| tokio::time::sleep_until(deadline.instant()));
    ServerDeadlineFuture {
        state: State::Running {
            inner: ctx.scope(future),
            timer,
            shared_expiry,
            expiry_status: settings.expiry_status,
        },
    }
}

fn out_of_time<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    // The caller's time is gone: another attempt could not finish either.
    response
        .headers_mut()
        .insert(headers::X_DO_NOT_RETRY, headers::FLAG_SET);
    response
}

pin_project! {
    /// The response future of [`ServerDeadline`] and [`RouteTimeout`].
    pub struct ServerDeadlineFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Refused,
        Running {
            #[pin]
            inner: InContext<F>,
            #[pin]
            timer: Option<Sleep>,
            shared_expiry: Option<Arc<Mutex<Deadline>>>,
            expiry_status: StatusCode,
        },
    }
}

impl<F> fmt::Debug for ServerDeadlineFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerDeadlineFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ServerDeadlineFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused => Poll::Ready(Ok(out_of_time(StatusCode::REQUEST_TIMEOUT))),
            StateProj::Running {
                inner,
                mut timer,
                shared_expiry,
                expiry_status,
            } => {
                if let Poll::Ready(result) = inner.poll(cx) {
                    return Poll::Ready(result);
                }
                while let Some(mut sleep) = timer.as_mut().as_pin_mut() {
                    ready!(sleep.as_mut().poll(cx));
                    // A route timeout may have moved the deadline since the timer was set.
                    let moved = shared_expiry
                        .as_ref()
                        .map(|e| *e.lock().unwrap_or_else(|e| e.into_inner()))
                        .filter(|d| d.instant() > sleep.deadline());
                    match moved {
                        Some(later) => sleep.reset(later.instant()),
                        None => {
                            tracing::debug!("deadline passed: handler cancelled");
                            timer.set(None);
                            return Poll::Ready(Ok(out_of_time(*expiry_status)));
                        }
                    }
                }
                Poll::Pending
            }
        }
    }
}
