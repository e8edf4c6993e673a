//! One attempt: a clone of the service readied, called, timed and bounded by its share.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::LatencyKey;
use crate::body::ReplayBody;
use crate::context::RouteTemplate;
use crate::deadline::DeadlineExceeded;
use crate::error::BoxError;
use crate::span::enter_recorded;

use super::service::Answer;

/// What every attempt's request is made from.
pub(super) struct Template {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) extensions: http::Extensions,
}

impl Template {
    pub(super) fn latency_key(&self) -> LatencyKey {
        let mut destination = String::new();
        crate::destination::write_destination(&self.uri, &self.headers, &mut destination);
        // Never the raw path: ids in it would make every request a new key, and no key would
        // ever hold enough observations. Without a template the destination is the key.
        let route = match self.extensions.get::<RouteTemplate>() {
            Some(route) => route.as_str().to_owned(),
            None => String::new(),
        };
        LatencyKey::new(destination, route)
    }
}

/// One attempt's result, with what the layer needs to judge it.
pub(super) struct Attempted<R> {
    pub(super) number: u32,
    pub(super) latency: Duration,
    pub(super) outcome: Answer<R>,
    /// The attempt's span; the verdict is recorded on it once judged.
    pub(super) span: tracing::Span,
}

pin_project! {
    /// One attempt: readies its own clone of the service (the first attempt's service is already
    /// ready), calls it and times it, inside the attempt's span, and within the attempt's own
    /// deadline when attempts split the deadline. Not polled again once it has finished.
    pub(super) struct Attempt<S, R, F> {
        #[pin]
        pub(super) state: AttemptState<S, R, F>,
        // Boxed: only attempts that split the deadline have one, and it is large.
        pub(super) timer: Option<Pin<Box<Sleep>>>,
        // What the attempt was allowed, for the error when its own deadline passes.
        pub(super) allowed: Duration,
        pub(super) number: u32,
        // Only when someone reads the latency: the percentile delays or a debug event.
        pub(super) started: Option<Instant>,
        pub(super) span: tracing::Span,
    }
}

pin_project! {
    #[project = AttemptStateProj]
    pub(super) enum AttemptState<S, R, F> {
        // The request is boxed: only retries and hedges are readied here, and inline it would
        // make every attempt (the first included) twice as large.
        Readying { service: S, request: Option<Box<R>> },
        Calling { #[pin] future: F },
    }
}

/// The attempt type of a strategy service over `S` with request bodies `B`.
pub(super) type AttemptOf<S, B> =
    Attempt<S, Request<ReplayBody<B>>, <S as Service<Request<ReplayBody<B>>>>::Future>;

impl<S, R, ResBody> Future for Attempt<S, R, S::Future>
where
    S: Service<R, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Attempted<ResBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Attempted<ResBody>> {
        let mut this = self.project();
        let _entered = enter_recorded(this.span);
        let polled = loop {
            match this.state.as_mut().project() {
                AttemptStateProj::Readying { service, request } => match service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(request) = request.take() else {
                            break Poll::Ready(
                                Err("the attempt's request was already sent".into()),
                            );
                        };
                        // The clone made ready is the one called; it is not needed afterwards.
                        let future = service.call(*request);
                        this.state.set(AttemptState::Calling { future });
                    }
                    Poll::Ready(Err(error)) => break Poll::Ready(Err(error.into())),
                    Poll::Pending => break Poll::Pending,
                },
                AttemptStateProj::Calling { future } => {
                    break future.poll(cx).map(|outcome| outcome.map_err(Into::into));
                }
            }
        };
        let outcome = match polled {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => match this.timer.as_mut() {
                Some(timer) => {
                    std::task::ready!(timer.as_mut().poll(cx));
                    Err(Box::new(DeadlineExceeded::elapsed(*this.allowed)) as BoxError)
                }
                None => return Poll::Pending,
            },
        };
        Poll::Ready(Attempted {
            number: *this.number,
            latency: this
                .started
                .map_or(Duration::ZERO, |started| started.elapsed()),
            outcome,
            span: this.span.clone(),
        })
    }
}

/// Where the attempt being awaited lives: pinned once in the request's future and handed down by
/// reference, so that the nested steps of a strategy do not each hold a copy of it.
pub(super) type Slot<'a, S, B> = Pin<&'a mut Option<AttemptOf<S, B>>>;

/// Waits for the attempt in `slot` and empties the slot.
pub(super) async fn finish<S, B, ResBody>(mut slot: Slot<'_, S, B>) -> Attempted<ResBody>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| {
        let Some(attempt) = slot.as_mut().as_pin_mut() else {
            // Not reached: every step fills the slot before it waits on it.
            return Poll::Ready(Attempted {
                number: 0,
                latency: Duration::ZERO,
                outcome: Err("no attempt to wait for".into()),
                span: tracing::Span::none(),
            });
        };
        let done = std::task::ready!(attempt.poll(cx));
        slot.set(None);
        Poll::Ready(done)
    })
    .await
}
