use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::scope::Ticket;
use super::{CircuitOpen, OnOpen};
use crate::classify::Classify;
use crate::error::BoxError;

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct CircuitBreakerFuture<F, C, M> {
        #[pin]
        state: State<F, C>,
        on_open: M,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Refused { open: Option<CircuitOpen> },
        Running {
            #[pin]
            inner: F,
            // Taken when the outcome is recorded; dropping it unrecorded frees a probe slot.
            ticket: Option<Ticket>,
            classifier: Arc<C>,
        },
    }
}

impl<F, C, M> CircuitBreakerFuture<F, C, M> {
    pub(super) fn running(ticket: Ticket, inner: F, classifier: Arc<C>, on_open: M) -> Self {
        CircuitBreakerFuture {
            state: State::Running {
                inner,
                ticket: Some(ticket),
                classifier,
            },
            on_open,
        }
    }

    pub(super) fn refused(open: CircuitOpen, on_open: M) -> Self {
        CircuitBreakerFuture {
            state: State::Refused { open: Some(open) },
            on_open,
        }
    }
}

impl<F, C, M> fmt::Debug for CircuitBreakerFuture<F, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerFuture")
            .finish_non_exhaustive()
    }
}

impl<F, C, M, B, E> Future for CircuitBreakerFuture<F, C, M>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    C: Classify,
    M: OnOpen<B>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Refused { open } => match open.take() {
                Some(open) => Poll::Ready(this.on_open.on_open(open)),
                None => panic!("CircuitBreakerFuture polled after completion"),
            },
            StateProj::Running {
                inner,
                ticket,
                classifier,
            } => {
                let result = std::task::ready!(inner.poll(cx)).map_err(Into::into);
                let outcome = match &result {
                    #[cfg(feature = "grpc")]
                    Ok(response) if crate::grpc::is_grpc(response.headers()) => {
                        match grpc_outcome(response, classifier, ticket) {
                            Some(outcome) => outcome,
                            // Settled when the stream ends.
                            None => return Poll::Ready(result),
                        }
                    }
                    Ok(response) => {
                        classifier.classify_response(response.status(), response.headers())
                    }
                    Err(error) => classifier.classify_error(error.as_ref()),
                };
                if let Some(ticket) = ticket.take() {
                    ticket.finish(outcome);
                }
                Poll::Ready(result)
            }
        }
    }
}

/// The outcome of a gRPC answer for the breaker: the code of a trailers-only answer at once;
/// for a stream whose status is still to come, `None`, the ticket moved to the stream's end
/// (settled by its `grpc-status`, a failure if it breaks, and dropped, under the ticket's
/// deadline rule, if the reader abandons it). A gRPC answer nobody watches counts by its HTTP
/// status.
#[cfg(feature = "grpc")]
fn grpc_outcome<B, C: Classify>(
    response: &Response<B>,
    classifier: &Arc<C>,
    ticket: &mut Option<Ticket>,
) -> Option<crate::outcome::Outcome> {
    use crate::grpc::end_of_stream::{pending_end, StreamEnd};
    use crate::outcome::Outcome;

    if let Some(code) = crate::grpc::status_in(response.headers()) {
        return Some(classifier.classify_grpc_end(code));
    }
    let Some(end) = pending_end(response) else {
        return Some(classifier.classify_response(response.status(), response.headers()));
    };
    if let Some(ticket) = ticket.take() {
        let classifier = classifier.clone();
        end.on_end(move |end| match end {
            StreamEnd::Status(code) => ticket.finish(classifier.classify_grpc_end(code)),
            // Sent and cut at its deadline, or broken: the destination failed, either way.
            StreamEnd::Failed | StreamEnd::TimedOut => ticket.finish(Outcome::Failure),
            StreamEnd::Abandoned => drop(ticket),
        });
    }
    None
}
