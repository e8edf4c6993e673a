//! The response future: a single attempt, the first attempt inline, or the boxed engine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Strategy;
use crate::body::ReplayBody;
use crate::classify::Classify;
use crate::error::BoxError;

use super::attempt::AttemptOf;
use super::engine::{Attempts, Begin};
use super::service::{Answer, BoxFuture};

pin_project! {
    /// The response future of [`StrategyService`]. A single attempt is the inner future itself.
    /// A request that may take more attempts runs its first attempt inline and boxes the rest of
    /// its engine only if a retry is needed; a hedged request boxes its engine from the start,
    /// since hedges race the first attempt.
    pub struct StrategyFuture<S, C, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        pub(super) kind: Kind<S, C, B>,
    }
}

pin_project! {
    #[project = KindProj]
    pub(super) enum Kind<S, C, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        Single { #[pin] inner: S::Future },
        First {
            #[pin]
            attempt: AttemptOf<S, B>,
            // Taken when the first attempt finishes.
            rest: Option<(Attempts<S, C, B>, Strategy)>,
        },
        Many { future: BoxFuture<Result<S::Response, BoxError>> },
    }
}

impl<S, C, B> fmt::Debug for StrategyFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrategyFuture").finish_non_exhaustive()
    }
}

impl<S, C, B, ResBody> Future for StrategyFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
    C: Classify,
{
    type Output = Answer<ResBody>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut kind = self.as_mut().project().kind;
            let (attempts, strategy, outcome, verdict) = match kind.as_mut().project() {
                KindProj::Single { inner } => return inner.poll(cx).map_err(Into::into),
                KindProj::Many { future } => return future.as_mut().poll(cx),
                KindProj::First { attempt, rest } => {
                    // `rest` is taken when the attempt finishes: its absence means the future
                    // already returned, and the attempt must not be polled again.
                    if rest.is_none() {
                        return Poll::Ready(Err("polled after completion".into()));
                    }
                    let done = std::task::ready!(attempt.poll(cx));
                    let Some((attempts, strategy)) = rest.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let (outcome, verdict, _) = attempts.judge(done);
                    // Another attempt only for a retryable outcome, and for a strategy of one
                    // attempt only when the request never reached the server.
                    let again =
                        verdict.is_retryable() && (strategy.may_repeat() || verdict.never_left());
                    if !again {
                        return Poll::Ready(outcome);
                    }
                    (attempts, strategy, outcome, verdict)
                }
            };
            // Rejected: the rest of the strategy decides, in a box of its own.
            let future = attempts.into_engine(strategy, Begin::Judged(outcome, verdict), None);
            kind.set(Kind::Many { future });
        }
    }
}
