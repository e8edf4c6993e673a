//! The service a [`LoadShedLayer`](super::LoadShedLayer) makes: admission in `call`, and the
//! response future that measures the service time and gives the slot back.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::body::ShedBody;
use super::route::RouteEstimate;
use super::state::{Config, Slot};
use super::stats::{index, LoadShedStats};
use crate::context::RequestContext;
use crate::headers;
use crate::upload::{Upload, UploadProgress};

/// The service made by [`LoadShedLayer`](super::LoadShedLayer). See the [module docs](super).
pub struct LoadShed<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for LoadShed<S> {
    fn clone(&self) -> Self {
        LoadShed {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .field("capacity", &self.config.settings.capacity)
            .finish_non_exhaustive()
    }
}

impl<S> LoadShed<S> {
    /// `inner` wrapped as [`LoadShedLayer::new`](super::LoadShedLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S, capacity: usize) -> Self {
        tower_layer::Layer::layer(&super::LoadShedLayer::new(capacity), inner)
    }
}

impl<S> LoadShed<S> {
    pub(super) fn from_parts(inner: S, config: Arc<Config>) -> Self {
        LoadShed { inner, config }
    }

    /// What has been admitted and shed so far by every service of this layer.
    pub fn stats(&self) -> LoadShedStats {
        self.config.state.stats(&self.config.settings)
    }

    inner_service_accessors!(S);
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
        let (settings, state) = (&self.config.settings, &self.config.state);
        // Read once: the time left to the deadline and the start of the handler's latency.
        let now = Instant::now();
        let ctx = RequestContext::of(&req);
        let priority = ctx.priority();

        let route = state.route(settings, &req);
        if let (true, Some(deadline), Some(route)) =
            (settings.deadline_admission, ctx.deadline(), &route)
        {
            if let Some(typical) = route.get() {
                let left = deadline.remaining_at(now);
                if left < typical && !route.probe_instead() {
                    state
                        .counters
                        .refused_deadline
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?left, ?typical, "refusing request: deadline too short");
                    return LoadShedFuture::refused(Refusal::Deadline);
                }
            }
        }

        let Some(slot) = state.try_acquire(settings, priority) else {
            state.counters.shed_overload[index(priority)].fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%priority, "shedding request: server full for its priority");
            return LoadShedFuture::refused(Refusal::Overload(settings.retry_after.clone()));
        };
        state.counters.admitted.add(1);
        let upload = req.extensions().get::<UploadProgress>().cloned();
        let deadline = ctx.deadline().map(|d| d.instant());
        LoadShedFuture {
            state: State::Admitted {
                inner: self.inner.call(req),
                slot: Some(slot),
                route,
                started: now,
                upload,
                deadline,
                expiry: None,
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
            deadline: Option<Instant>,
            // Set at the first `Pending` while the slot is held (so never again once it fired and
            // gave the slot back): most handlers answer at once, and a timer costs a lookup of
            // the runtime and a place in its wheel.
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
                Poll::Ready(Ok(refusal
                    .response::<B>()
                    .map(|body| ShedBody::new(body, None))))
            }
            StateProj::Admitted {
                inner,
                slot,
                route,
                started,
                upload,
                deadline,
                mut expiry,
            } => {
                let result = match inner.poll(cx) {
                    Poll::Ready(result) => result,
                    Poll::Pending => {
                        let held = slot.as_ref().is_some_and(|slot| slot.held);
                        if let (true, Some(deadline)) = (expiry.is_none() && held, *deadline) {
                            expiry.set(Some(tokio::time::sleep_until(deadline)));
                        }
                        if let Some(sleep) = expiry.as_mut().as_pin_mut() {
                            if sleep.poll(cx).is_ready() {
                                expiry.set(None);
                                if let Some(slot) = slot.as_mut() {
                                    if slot.release() {
                                        let state = &slot.state;
                                        state
                                            .counters
                                            .released_at_deadline
                                            .fetch_add(1, Ordering::Relaxed);
                                        tracing::debug!("deadline passed: giving the slot back");
                                        // Cut at its deadline: its time says the most about a
                                        // server too slow for its load, and a deadline layer
                                        // outside answers it without this future seeing it.
                                        let now = Instant::now();
                                        let served = served_since(*started, upload.as_ref());
                                        if let (Some(controller), Some(from)) =
                                            (&state.adaptive, served)
                                        {
                                            let took = now.saturating_duration_since(from);
                                            controller
                                                .record(took, now, || state.shed_for_overload());
                                        }
                                    }
                                }
                            }
                        }
                        return Poll::Pending;
                    }
                };
                let now = Instant::now();
                let sample = service_time(&result, *started, upload.take(), *deadline, now);
                if let (Some(route), Some(sample)) = (route.take(), sample.route) {
                    route.record(sample);
                }
                // A slot given back at the deadline was counted for the limit then.
                let state = slot.as_ref().filter(|s| s.held).map(|s| &s.state);
                if let (Some(state), Some(sample)) = (state, sample.limit) {
                    if let Some(controller) = &state.adaptive {
                        controller.record(sample, now, || state.shed_for_overload());
                    }
                }
                // The slot moves into the body: a streaming response counts until it ends.
                let slot = slot.take();
                Poll::Ready(result.map(|response| {
                    response.map(|body| {
                        let slot = slot.filter(|s| s.held && !body.is_end_stream());
                        ShedBody::new(body, slot)
                    })
                }))
            }
        }
    }
}

/// What the server itself took for a request, to the response head and from the end of the
/// upload when there was one; `None` when the request says nothing about it.
pub(super) struct ServiceTime {
    /// For the route estimate: successes only (no error, 5xx, or cut at the deadline).
    pub(super) route: Option<Duration>,
    /// For the adaptive limit: successes, and requests cut at their deadline, which say
    /// the most about a server too slow for its load.
    pub(super) limit: Option<Duration>,
}

pub(super) fn service_time<B, E>(
    result: &Result<Response<B>, E>,
    started: Instant,
    upload: Option<UploadProgress>,
    deadline: Option<Instant>,
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
    // Cut at its deadline: 408 as aio-request answers, or a 5xx that came at the deadline (a
    // route timeout inside cancelled the handler; a handler still running then has had its
    // sample taken when its slot was given back).
    let cut = status == StatusCode::REQUEST_TIMEOUT
        || (status.is_server_error() && deadline.is_some_and(|deadline| now >= deadline));
    if status.is_server_error() && !cut {
        return none;
    }
    let Some(from) = served_since(started, upload.as_ref()) else {
        return none;
    };
    let took = now.saturating_duration_since(from);
    ServiceTime {
        route: (!cut).then_some(took),
        limit: Some(took),
    }
}

/// When the server's own part of a request began: at its admission, or at the end of its upload
/// when one was marked; `None` while the upload is still arriving or after it failed (the time
/// is the caller's then).
fn served_since(started: Instant, upload: Option<&UploadProgress>) -> Option<Instant> {
    match upload.map(UploadProgress::state) {
        None => Some(started),
        Some(Upload::Finished(at)) => Some(at.max(started)),
        Some(Upload::Receiving | Upload::Failed) => None,
    }
}
