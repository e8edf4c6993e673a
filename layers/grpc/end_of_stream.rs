//! The end of a gRPC response stream, told to the layers above that wait for it.
//!
//! A gRPC call's status comes in the trailers, after the messages, long after the response's
//! head has passed up through the breaker and the metrics. Rather than wrap the body once per
//! layer (changing every layer's body type), the transport layer wraps it once, in
//! [`WatchedBody`], and leaves an [`EndOfStream`] in the response's extensions: each layer that
//! wants the status registers a callback there, and the body calls them all when it ends.

// The watchers are the breaker and the metrics: with neither feature on, nobody reads the end.
#![cfg_attr(
    not(any(feature = "circuit-breaker", feature = "metrics")),
    allow(dead_code)
)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tonic::Code;

use super::status::{status_in, GRPC_STATUS};
use crate::context::Deadline;
use crate::error::BoxError;

/// How a gRPC response stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Its trailers carried this `grpc-status`.
    Status(Code),
    /// The body failed, or ended without a `grpc-status`: gRPC's clients call that an error.
    Failed,
    /// The call's deadline passed before the stream's end: [`WatchedBody`] cut it.
    TimedOut,
    /// The reader dropped the body before its end: the caller went away, or a layer above cut
    /// the call at its deadline.
    Abandoned,
}

type Callback = Box<dyn FnOnce(StreamEnd) + Send>;

enum Watch {
    Waiting(Vec<Callback>),
    Ended(StreamEnd),
}

/// A response extension: the place to wait for the end of its gRPC stream.
#[derive(Clone)]
pub(crate) struct EndOfStream(Arc<Mutex<Watch>>);

impl fmt::Debug for EndOfStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndOfStream").finish_non_exhaustive()
    }
}

impl EndOfStream {
    fn new() -> Self {
        EndOfStream(Arc::new(Mutex::new(Watch::Waiting(Vec::new()))))
    }

    /// Calls `callback` when the stream ends, or at once if it has ended already (a layer below
    /// read the whole body first).
    pub(crate) fn on_end(&self, callback: impl FnOnce(StreamEnd) + Send + 'static) {
        let mut watch = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &mut *watch {
            Watch::Waiting(callbacks) => callbacks.push(Box::new(callback)),
            Watch::Ended(end) => {
                let end = *end;
                drop(watch);
                callback(end);
            }
        }
    }

    /// Records the end, once: later ends (the drop after a normal end) are ignored.
    fn end(&self, end: StreamEnd) {
        let callbacks = {
            let mut watch = self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match std::mem::replace(&mut *watch, Watch::Ended(end)) {
                Watch::Waiting(callbacks) => callbacks,
                ended @ Watch::Ended(_) => {
                    *watch = ended;
                    return;
                }
            }
        };
        // Outside the lock: a callback records metrics or settles a breaker ticket.
        for callback in callbacks {
            callback(end);
        }
    }
}

/// The watch on a gRPC response whose status is still to come: `None` for a trailers-only answer
/// (its status is in the head) and for responses the gRPC transport layer did not watch.
pub(crate) fn pending_end<B>(response: &Response<B>) -> Option<&EndOfStream> {
    if status_in(response.headers()).is_some() {
        return None;
    }
    response.extensions().get::<EndOfStream>()
}

/// Wraps a response's body so that it ends at the call's `deadline` (if any), and, for a gRPC
/// response whose status is still to come, so that its end is told to the layers above. A
/// response that is not gRPC, or whose status is in its head, is not watched.
pub(crate) fn watch<B>(
    response: Response<B>,
    deadline: Option<(Deadline, Duration)>,
) -> Response<WatchedBody<B>> {
    let watched =
        super::status::is_grpc(response.headers()) && status_in(response.headers()).is_none();
    let (mut parts, inner) = response.into_parts();
    let end = watched.then(|| {
        let end = EndOfStream::new();
        parts.extensions.insert(end.clone());
        end
    });
    let body = WatchedBody {
        inner,
        end,
        deadline: deadline.map(|(deadline, _)| tokio::time::sleep_until(deadline.instant())),
        allowed: deadline.map_or(Duration::ZERO, |(_, allowed)| allowed),
        expired: false,
    };
    Response::from_parts(parts, body)
}

pin_project! {
    /// A response body that ends at the call's deadline (the head's arrival does not stop the
    /// clock: a server that stalls mid-stream is cut with a
    /// [`DeadlineExceeded`](crate::deadline::DeadlineExceeded) error), and, for gRPC, reports
    /// how it ended: the `grpc-status` of its trailers, a failure, the deadline, or a drop
    /// before the end.
    pub struct WatchedBody<B> {
        #[pin]
        inner: B,
        end: Option<EndOfStream>,
        #[pin]
        deadline: Option<Sleep>,
        // What the call was allowed, for the error.
        allowed: Duration,
        expired: bool,
    }

    impl<B> PinnedDrop for WatchedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(end) = this.project().end.take() {
                end.end(StreamEnd::Abandoned);
            }
        }
    }
}

/// An empty, unwatched body: what a layer above makes when it answers in the transport's stead
/// (an open breaker's synthetic answer).
impl<B: Default> Default for WatchedBody<B> {
    fn default() -> Self {
        WatchedBody {
            inner: B::default(),
            end: None,
            deadline: None,
            allowed: Duration::ZERO,
            expired: false,
        }
    }
}

impl<B> fmt::Debug for WatchedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedBody").finish_non_exhaustive()
    }
}

impl<B> Body for WatchedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => frame.map(|frame| frame.map_err(Into::into)),
            Poll::Pending => {
                let expired = (this.deadline.as_mut().as_pin_mut())
                    .is_some_and(|deadline| deadline.poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                *this.expired = true;
                if let Some(end) = this.end.take() {
                    end.end(StreamEnd::TimedOut);
                }
                let exceeded = crate::deadline::DeadlineExceeded::elapsed(*this.allowed);
                return Poll::Ready(Some(Err(Box::new(exceeded))));
            }
        };
        if this.end.is_some() {
            let ended = match &frame {
                Some(Ok(frame)) => {
                    frame
                        .trailers_ref()
                        .map(|trailers| match trailers.get(GRPC_STATUS) {
                            Some(value) => StreamEnd::Status(Code::from_bytes(value.as_bytes())),
                            None => StreamEnd::Failed,
                        })
                }
                Some(Err(_)) | None => Some(StreamEnd::Failed),
            };
            if let Some(ended) = ended {
                if let Some(end) = this.end.take() {
                    end.end(ended);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};

    fn grpc_response<B>(body: B) -> Response<B> {
        Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(body)
            .unwrap()
    }

    fn recorder(end: &EndOfStream) -> Arc<Mutex<Vec<StreamEnd>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        end.on_end(move |e| sink.lock().unwrap().push(e));
        seen
    }

    fn watch_now<B>(response: Response<B>) -> Response<WatchedBody<B>> {
        watch(response, None)
    }

    type Frame1 = Result<Frame<Bytes>, std::io::Error>;
    type Frames = Vec<Frame1>;

    fn body(frames: Frames) -> StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Frame1>>> {
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn the_trailers_status_reaches_every_watcher_once() {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, "13".parse().unwrap());
        let response = watch_now(grpc_response(body(vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ])));
        let end = pending_end(&response).expect("watched").clone();
        let (first, second) = (recorder(&end), recorder(&end));
        let collected = response.into_body().collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(*first.lock().unwrap(), [StreamEnd::Status(Code::Internal)]);
        assert_eq!(*second.lock().unwrap(), [StreamEnd::Status(Code::Internal)]);
        // A watcher that comes after the end hears it at once.
        assert_eq!(
            *recorder(&end).lock().unwrap(),
            [StreamEnd::Status(Code::Internal)]
        );
    }

    #[tokio::test]
    async fn no_trailers_is_a_failure_and_a_drop_is_abandoned() {
        let response = watch_now(grpc_response(body(vec![Ok(Frame::data(Bytes::new()))])));
        let seen = recorder(pending_end(&response).unwrap());
        response.into_body().collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [StreamEnd::Failed]);

        let response = watch_now(grpc_response(body(vec![Ok(Frame::data(Bytes::new()))])));
        let seen = recorder(pending_end(&response).unwrap());
        drop(response);
        assert_eq!(*seen.lock().unwrap(), [StreamEnd::Abandoned]);
    }

    #[test]
    fn trailers_only_and_plain_http_answers_are_not_watched() {
        let mut trailers_only = grpc_response(());
        trailers_only
            .headers_mut()
            .insert(GRPC_STATUS, "14".parse().unwrap());
        assert!(pending_end(&watch_now(trailers_only)).is_none());
        assert!(pending_end(&watch_now(Response::new(()))).is_none());
    }
}
