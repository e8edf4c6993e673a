//! Load shedding by priority and remaining deadline: when the server is full, drop the least
//! important work first, and never start work that cannot finish in time.
//!
//! [`LoadShedLayer`] limits how many requests run at once and admits each by the
//! [`Priority`] in its [`RequestContext`] (put there by the
//! [priority layer](crate::priority), so this layer sits inside it). The limit is either
//! adaptive ([`LoadShedLayer::adaptive`], the `Server` preset's default: found from the
//! requests' latency, see [`AdaptiveLimit`]) or a fixed capacity ([`LoadShedLayer::new`]):
//!
//! - `Low` is admitted while fewer than the low limit are in flight (half the limit by
//!   default);
//! - `Normal` while fewer than the normal limit are (the limit minus a fifth reserved for
//!   `High`);
//! - `High` up to the full limit.
//!
//! So as load grows, `Low` is shed first, then `Normal`, and a share stays free for `High`: the
//! SRE book's criticality. A shed request gets `503 Service Unavailable` with a short
//! `Retry-After` (1 s by default) so callers back off, without reaching the handler.
//!
//! Deadline-aware admission: the layer keeps a moving average (EWMA) of how long each route takes,
//! keyed by axum's `MatchedPath` (or a key function of your own), in a table bounded to 256 routes
//! by default. A request whose remaining deadline is shorter than its route's typical time is
//! refused with `503` and `X-Do-Not-Retry: 1` at once: it could not finish anyway, and another
//! attempt with the same deadline could not either. One such request in 16 is let through as a
//! probe, so that the estimate can come down when the route gets faster.
//!
//! [`LoadShedLayer::stats`] gives a [`LoadShedStats`] snapshot of what was admitted and what was
//! shed, and why.
//!
//! The layer answers in `call`, as axum's always-ready router needs, and its hot path is atomics
//! only; the route table takes a shared read lock, and a write lock only for a route's first
//! request. Every service the layer makes shares one limit, so `Router::layer` (which wraps each
//! route separately) still limits the whole server.
//!
//! A request counts as in flight until its response body ends or is dropped, so a streaming
//! response holds its slot while it streams, or until its deadline passes, whichever comes first:
//! a handler still running past its caller's deadline (with the deadline layer's
//! `cancel_on_expiry` off) keeps running, but gives its slot back, so callers that stall (a body
//! that never finishes) cannot hold the server's capacity past their deadline.
//!
//! The route's service time is what the server controls: measured to the response head, from
//! the end of the request body when a [`RequestBodyTimeoutLayer`](crate::body_timeout) outside
//! marked it (an upload's pace is the caller's), and only for requests that succeeded: one that
//! was dropped, failed (5xx, 408, an error) or whose body failed is no sample.
//!
//! # Example
//!
//! ```
//! use axum::{body::Body, routing::get, Router};
//! use http::{Request, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_lifeline::load_shed::LoadShedLayer;
//! use tower_lifeline::priority::ServerPriorityLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A capacity of 10: Low may use 5 slots, Normal 8, High all 10.
//! let shed = LoadShedLayer::new(10);
//! let app = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(ServiceBuilder::new().layer(ServerPriorityLayer::new()).layer(shed.clone()));
//!
//! let request = Request::get("/").header("x-request-priority", "low").body(Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(shed.stats().admitted, 1);
//! assert_eq!(shed.stats().shed_total(), 0);
//! # }
//! ```
//!
//! # Differences from `tower::load_shed` and `tower::limit::concurrency`
//!
//! tower's pair signals overload through `poll_ready` and fails with an error; axum's router is
//! always ready, and a dropped connection tells the caller nothing. Here admission is decided per
//! request in `call`, by priority and deadline, and the answer is an HTTP response the caller can
//! act on.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{Priority, RequestContext};
use crate::headers;
use crate::upload::{Upload, UploadProgress};

mod adaptive;
#[cfg(test)]
mod tests;

pub use adaptive::AdaptiveLimit;
use adaptive::Controller;

/// The default number of routes whose service time is tracked.
pub const DEFAULT_MAX_ROUTES: usize = 256;

/// The default `Retry-After` of a shed request.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Weight of the newest sample in a route's moving average: about the last ten requests count.
const EWMA_WEIGHT: f64 = 0.2;

type KeyFn = Arc<dyn Fn(&http::Method, &http::Uri) -> Option<String> + Send + Sync>;

/// How a request's route is named for its service-time estimate.
#[derive(Clone)]
enum RouteKey {
    /// axum's `MatchedPath` (the route template), when the `axum` feature is on.
    MatchedPath,
    /// A key function of the caller's, given the request's method and URI.
    Custom(KeyFn),
}

/// Sheds load by priority and refuses requests that cannot finish in time.
///
/// Clones share one limit and one set of counters, so that `Router::layer` (which wraps each
/// route separately) still limits the whole server. Configure the layer fully before cloning
/// or using it: a setting applied to a layer already shared starts a new, separate limit.
///
/// See the [module docs](self) for the behaviour and an example.
#[derive(Clone)]
pub struct LoadShedLayer {
    shared: Arc<Shared>,
}

struct Shared {
    /// The adaptive limit, when there is one; the fixed limits below apply otherwise.
    adaptive: Option<Controller>,
    capacity: usize,
    low_limit: usize,
    normal_limit: usize,
    retry_after: HeaderValue,
    max_routes: usize,
    deadline_admission: bool,
    route_key: RouteKey,
    in_flight: AtomicUsize,
    counters: Counters,
    routes: RwLock<HashMap<String, Arc<RouteEstimate>>>,
}

#[derive(Default)]
struct Counters {
    admitted: AtomicU64,
    shed_overload: [AtomicU64; 3],
    refused_deadline: AtomicU64,
    released_at_deadline: AtomicU64,
}

/// One in this many requests refused for their deadline is admitted anyway, so that a route's
/// estimate can come down again when every caller's deadline is shorter than it.
const PROBE_EVERY: u64 = 16;

/// A route's service time, as an exponentially weighted moving average in nanoseconds
/// (0: no sample yet).
#[derive(Default)]
struct RouteEstimate {
    nanos: AtomicU64,
    refusals: AtomicU64,
    samples: AtomicU64,
}

/// Samples a route needs before its estimate may refuse anyone: one cold first request (caches
/// empty after a deploy) must not shut out every caller with less time than it took.
const MIN_SAMPLES: u64 = 5;

impl RouteEstimate {
    /// Counts a refusal; true when this one should be admitted as a probe instead.
    fn probe_instead(&self) -> bool {
        self.refusals.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == PROBE_EVERY - 1
    }

    fn get(&self) -> Option<Duration> {
        if self.samples.load(Ordering::Relaxed) < MIN_SAMPLES {
            return None;
        }
        match self.nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    fn record(&self, sample: Duration) {
        // Nanoseconds in a u64 last 584 years; saturate rather than wrap, and keep 0 for "none".
        let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.samples.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    let next = old as f64 + (sample as f64 - old as f64) * EWMA_WEIGHT;
                    (next as u64).max(1)
                })
            });
    }
}

/// Which priority index a counter array uses.
fn index(priority: Priority) -> usize {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

impl LoadShedLayer {
    /// At most `capacity` requests in flight (at least 1). `Low` may use half of it, `Normal` all
    /// but a fifth (reserved for `High`), `High` all of it. Deadline admission is on, keyed by
    /// axum's `MatchedPath`.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let reserve = (capacity / 5).max(usize::from(capacity > 1));
        let normal_limit = capacity - reserve;
        let low_limit = (capacity / 2).clamp(1, normal_limit.max(1));
        LoadShedLayer {
            shared: Arc::new(Shared {
                adaptive: None,
                capacity,
                low_limit,
                normal_limit,
                retry_after: retry_after_value(DEFAULT_RETRY_AFTER),
                max_routes: DEFAULT_MAX_ROUTES,
                deadline_admission: true,
                route_key: RouteKey::MatchedPath,
                in_flight: AtomicUsize::new(0),
                counters: Counters::default(),
                routes: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// No capacity to configure: the limit is found from the requests' latency (see
    /// [`AdaptiveLimit`]) and `Low` may use half of the current limit, `Normal` all but a fifth,
    /// `High` all of it. Deadline admission is on, keyed by axum's `MatchedPath`.
    pub fn adaptive() -> Self {
        Self::adaptive_with(AdaptiveLimit::new())
    }

    /// [`adaptive`](Self::adaptive), with settings of your own.
    pub fn adaptive_with(settings: AdaptiveLimit) -> Self {
        let mut layer = Self::new(usize::MAX);
        if let Some(shared) = Arc::get_mut(&mut layer.shared) {
            shared.adaptive = Some(Controller::new(settings));
        }
        layer
    }

    /// Sets how many requests `Low` and `Normal` may have in flight; `High` may always use the
    /// whole capacity. Out-of-range values are clamped so that
    /// `1 <= low <= normal <= capacity`. An adaptive limit keeps its shares instead.
    pub fn priority_limits(self, low: usize, normal: usize) -> Self {
        self.configure(|s| {
            s.normal_limit = normal.clamp(1, s.capacity);
            s.low_limit = low.clamp(1, s.normal_limit);
        })
    }

    /// The `Retry-After` sent with a shed request, in whole seconds (default 1 s; rounded up).
    pub fn retry_after(self, after: Duration) -> Self {
        self.configure(|s| s.retry_after = retry_after_value(after))
    }

    /// Turns deadline-aware admission on or off (on by default).
    pub fn deadline_admission(self, on: bool) -> Self {
        self.configure(|s| s.deadline_admission = on)
    }

    /// The most routes whose service time is tracked (default 256); a route seen after the
    /// table is full is admitted without an estimate.
    pub fn max_routes(self, max: usize) -> Self {
        self.configure(|s| s.max_routes = max)
    }

    /// Names a request's route for its service-time estimate, in place of axum's `MatchedPath`.
    /// The function sees the request's method and URI; `None` means "no estimate". Return a
    /// bounded set of names: templates, never raw paths.
    pub fn route_key<F>(self, key: F) -> Self
    where
        F: Fn(&http::Method, &http::Uri) -> Option<String> + Send + Sync + 'static,
    {
        self.configure(|s| s.route_key = RouteKey::Custom(Arc::new(key)))
    }

    /// What has been admitted and shed so far, and how many requests are in flight now.
    pub fn stats(&self) -> LoadShedStats {
        self.shared.stats()
    }

    /// Applies a configuration change. The layer is configured before use; a layer already
    /// shared with services gets a fresh state with the new setting.
    fn configure(self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|shared| Shared {
            adaptive: shared
                .adaptive
                .as_ref()
                .map(|c| Controller::new(*c.settings())),
            capacity: shared.capacity,
            low_limit: shared.low_limit,
            normal_limit: shared.normal_limit,
            retry_after: shared.retry_after.clone(),
            max_routes: shared.max_routes,
            deadline_admission: shared.deadline_admission,
            route_key: shared.route_key.clone(),
            in_flight: AtomicUsize::new(0),
            counters: Counters::default(),
            routes: RwLock::new(HashMap::new()),
        });
        change(&mut shared);
        LoadShedLayer {
            shared: Arc::new(shared),
        }
    }
}

fn retry_after_value(after: Duration) -> HeaderValue {
    let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from(seconds)
}

impl fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field(
                "adaptive",
                &self.shared.adaptive.as_ref().map(|c| c.settings()),
            )
            .field("capacity", &self.shared.capacity)
            .field("low_limit", &self.shared.low_limit)
            .field("normal_limit", &self.shared.normal_limit)
            .field("deadline_admission", &self.shared.deadline_admission)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A snapshot of a [`LoadShedLayer`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadShedStats {
    /// Requests in flight at the moment of the snapshot.
    pub in_flight: usize,
    /// The limit at the moment of the snapshot: the capacity, or the adaptive limit's value.
    pub limit: usize,
    /// Requests admitted to the handler.
    pub admitted: u64,
    /// Requests shed because the server was full for their priority: `Low`, `Normal`, `High`.
    pub shed_overload: [u64; 3],
    /// Requests refused because their remaining deadline was shorter than the route's typical
    /// service time.
    pub refused_deadline: u64,
    /// Admitted requests that gave their slot back at their deadline, still unanswered.
    pub released_at_deadline: u64,
}

impl LoadShedStats {
    /// Requests shed at the given priority because the server was full.
    pub fn shed_for(&self, priority: Priority) -> u64 {
        self.shed_overload[index(priority)]
    }

    /// Every request not admitted, whatever the reason.
    pub fn shed_total(&self) -> u64 {
        self.shed_overload.iter().sum::<u64>() + self.refused_deadline
    }
}

impl Shared {
    fn stats(&self) -> LoadShedStats {
        let c = &self.counters;
        LoadShedStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            limit: self.limit(Priority::High),
            admitted: c.admitted.load(Ordering::Relaxed),
            shed_overload: [0, 1, 2].map(|i| c.shed_overload[i].load(Ordering::Relaxed)),
            refused_deadline: c.refused_deadline.load(Ordering::Relaxed),
            released_at_deadline: c.released_at_deadline.load(Ordering::Relaxed),
        }
    }

    fn limit(&self, priority: Priority) -> usize {
        if let Some(adaptive) = &self.adaptive {
            let limit = adaptive.limit();
            return match priority {
                Priority::Low => (limit / 2).max(1),
                Priority::Normal => limit - (limit / 5).max(usize::from(limit > 1)),
                Priority::High => limit,
            };
        }
        match priority {
            Priority::Low => self.low_limit,
            Priority::Normal => self.normal_limit,
            Priority::High => self.capacity,
        }
    }

    fn shed_for_overload(&self) -> u64 {
        let shed = &self.counters.shed_overload;
        shed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Takes a slot if fewer than the priority's limit are in flight.
    fn try_acquire(self: &Arc<Self>, priority: Priority) -> Option<Slot> {
        let limit = self.limit(priority);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                shared: self.clone(),
                held: true,
            })
    }

    /// The estimate of the request's route, creating it if the table has room.
    fn route<B>(&self, req: &Request<B>) -> Option<Arc<RouteEstimate>> {
        let key = self.key_of(req)?;
        let key = key.as_ref();
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = routes.get(key) {
            return Some(found.clone());
        }
        let full = routes.len() >= self.max_routes;
        drop(routes);
        if full {
            return None;
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.len() >= self.max_routes && !routes.contains_key(key) {
            return None;
        }
        Some(routes.entry(key.to_owned()).or_default().clone())
    }

    fn key_of<'r, B>(&self, req: &'r Request<B>) -> Option<std::borrow::Cow<'r, str>> {
        match &self.route_key {
            #[cfg(feature = "axum")]
            RouteKey::MatchedPath => req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map(|p| std::borrow::Cow::Borrowed(p.as_str())),
            #[cfg(not(feature = "axum"))]
            RouteKey::MatchedPath => None,
            RouteKey::Custom(key) => key(req.method(), req.uri()).map(std::borrow::Cow::Owned),
        }
    }
}

/// One admitted request's place in the limit, given back on drop or at its deadline.
struct Slot {
    shared: Arc<Shared>,
    held: bool,
}

impl Slot {
    /// Gives the place back now; true if it was still held.
    fn release(&mut self) -> bool {
        let held = std::mem::replace(&mut self.held, false);
        if held {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        held
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// The service made by [`LoadShedLayer`]. See the [module docs](self).
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for LoadShed<S> {
    fn clone(&self) -> Self {
        LoadShed {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl<S> LoadShed<S> {
    /// What has been admitted and shed so far by every service of this layer.
    pub fn stats(&self) -> LoadShedStats {
        self.shared.stats()
    }

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

impl<S, B, ResBody> Service<Request<B>> for LoadShed<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body + Default,
{
    type Response = Response<ShedBody<ResBody>>;
    type Error = S::Error;
    type Future = LoadShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        // Read once: the time left to the deadline and the start of the handler's latency.
        let now = Instant::now();
        let ctx = RequestContext::of(&req);
        let priority = ctx.priority();

        let route = shared.route(&req);
        if let (true, Some(deadline), Some(route)) =
            (shared.deadline_admission, ctx.deadline(), &route)
        {
            if let Some(typical) = route.get() {
                let left = deadline.remaining_at(now);
                if left < typical && !route.probe_instead() {
                    shared
                        .counters
                        .refused_deadline
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?left, ?typical, "refusing request: deadline too short");
                    return LoadShedFuture::refused(Refusal::Deadline);
                }
            }
        }

        let Some(slot) = shared.try_acquire(priority) else {
            shared.counters.shed_overload[index(priority)].fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%priority, "shedding request: server full for its priority");
            return LoadShedFuture::refused(Refusal::Overload(shared.retry_after.clone()));
        };
        shared.counters.admitted.fetch_add(1, Ordering::Relaxed);
        let upload = req.extensions().get::<UploadProgress>().cloned();
        let expiry = ctx
            .deadline()
            .map(|d| tokio::time::sleep_until(d.instant()));
        LoadShedFuture {
            state: State::Admitted {
                inner: self.inner.call(req),
                slot: Some(slot),
                route,
                started: now,
                upload,
                expiry,
            },
        }
    }
}

enum Refusal {
    Overload(HeaderValue),
    Deadline,
}

impl Refusal {
    fn response<B: Default>(self) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        match self {
            Refusal::Overload(retry_after) => {
                headers.insert(http::header::RETRY_AFTER, retry_after);
            }
            Refusal::Deadline => {
                // The caller's time is too short for this route: another attempt would fail too.
                headers.insert(headers::X_DO_NOT_RETRY, headers::FLAG_SET);
            }
        }
        response
    }
}

pin_project! {
    /// The response future of [`LoadShed`].
    pub struct LoadShedFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Refused { refusal: Option<Refusal> },
        Admitted {
            #[pin]
            inner: F,
            slot: Option<Slot>,
            route: Option<Arc<RouteEstimate>>,
            started: Instant,
            upload: Option<UploadProgress>,
            #[pin]
            expiry: Option<Sleep>,
        },
    }
}

impl<F> LoadShedFuture<F> {
    fn refused(refusal: Refusal) -> Self {
        LoadShedFuture {
            state: State::Refused {
                refusal: Some(refusal),
            },
        }
    }
}

impl<F> fmt::Debug for LoadShedFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for LoadShedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body + Default,
{
    type Output = Result<Response<ShedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { refusal } => {
                let refusal = refusal.take().expect("polled after completion");
                Poll::Ready(Ok(refusal.response::<B>().map(|body| ShedBody {
                    inner: body,
                    slot: None,
                })))
            }
            StateProj::Admitted {
                inner,
                slot,
                route,
                started,
                upload,
                mut expiry,
            } => {
                let result = match inner.poll(cx) {
                    Poll::Ready(result) => result,
                    Poll::Pending => {
                        if let Some(sleep) = expiry.as_mut().as_pin_mut() {
                            if sleep.poll(cx).is_ready() {
                                expiry.set(None);
                                if let Some(slot) = slot.as_mut() {
                                    if slot.release() {
                                        slot.shared
                                            .counters
                                            .released_at_deadline
                                            .fetch_add(1, Ordering::Relaxed);
                                        tracing::debug!("deadline passed: giving the slot back");
                                    }
                                }
                            }
                        }
                        return Poll::Pending;
                    }
                };
                let now = Instant::now();
                let sample = service_time(&result, *started, upload.take(), now);
                if let (Some(route), Some(sample)) = (route.take(), sample.route) {
                    route.record(sample);
                }
                let adaptive = slot
                    .as_ref()
                    .map(|s| &s.shared)
                    .filter(|s| s.adaptive.is_some());
                if let (Some(shared), Some(sample)) = (adaptive, sample.limit) {
                    if let Some(controller) = &shared.adaptive {
                        controller.record(sample, now, || shared.shed_for_overload());
                    }
                }
                // The slot moves into the body: a streaming response counts until it ends.
                let slot = slot.take();
                Poll::Ready(result.map(|response| {
                    response.map(|body| {
                        let slot = slot.filter(|s| s.held && !body.is_end_stream());
                        ShedBody { inner: body, slot }
                    })
                }))
            }
        }
    }
}

/// What the server itself took for a request, to the response head and from the end of the
/// upload when there was one; `None` when the request says nothing about it.
struct ServiceTime {
    /// For the route estimate: successes only (no error, 5xx or 408).
    route: Option<Duration>,
    /// For the adaptive limit: successes, and requests cut at their deadline (408), which say
    /// the most about a server too slow for its load.
    limit: Option<Duration>,
}

fn service_time<B, E>(
    result: &Result<Response<B>, E>,
    started: Instant,
    upload: Option<UploadProgress>,
    now: Instant,
) -> ServiceTime {
    let none = ServiceTime {
        route: None,
        limit: None,
    };
    let Ok(response) = result else {
        return none;
    };
    let status = response.status();
    if status.is_server_error() {
        return none;
    }
    let from = match upload.map(|u| u.state()) {
        None => started,
        Some(Upload::Finished(at)) => at.max(started),
        Some(Upload::Receiving | Upload::Failed) => return none,
    };
    let took = now.saturating_duration_since(from);
    ServiceTime {
        route: (status != StatusCode::REQUEST_TIMEOUT).then_some(took),
        limit: Some(took),
    }
}

pin_project! {
    /// The response body of [`LoadShed`]: the handler's body, holding the request's place in the
    /// limit until it ends or is dropped.
    pub struct ShedBody<B> {
        #[pin]
        inner: B,
        slot: Option<Slot>,
    }
}

impl<B> ShedBody<B> {
    /// The handler's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwraps the handler's body, giving the request's slot back at once.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for ShedBody<B> {
    fn default() -> Self {
        ShedBody {
            inner: B::default(),
            slot: None,
        }
    }
}

impl<B> fmt::Debug for ShedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedBody")
            .field("holds_slot", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for ShedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream() {
            // The body ended or failed: the request is over.
            this.slot.take();
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
