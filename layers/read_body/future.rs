use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use http::response::Parts;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::{FullBody, ResponseBodyFailed, ResponseBodyTooLarge};
use crate::error::BoxError;

/// The most a body's announced length reserves up front (the buffer grows as bytes arrive).
const INITIAL_CAPACITY_CAP: u64 = 64 * 1024;

pin_project! {
    /// The response future of [`ReadBody`](super::ReadBody): the inner call, then its body.
    pub struct ReadBodyFuture<F, B> {
        #[pin]
        state: State<F, B>,
        max: usize,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Calling { #[pin] future: F },
        Reading {
            parts: Option<Parts>,
            #[pin]
            body: B,
            buffer: BytesMut,
        },
    }
}

impl<F, B> ReadBodyFuture<F, B> {
    pub(super) fn new(future: F, max: usize) -> Self {
        ReadBodyFuture {
            state: State::Calling { future },
            max,
        }
    }
}

impl<F, B> fmt::Debug for ReadBodyFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBodyFuture")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ReadBodyFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<FullBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let (parts, body) = response.into_parts();
                    if body.size_hint().lower() > *this.max as u64 {
                        return Poll::Ready(Err(Box::new(ResponseBodyTooLarge::new(*this.max))));
                    }
                    // Sized from the hint, so a small body with a Content-Length is one
                    // allocation; capped, so that a length the server merely announces cannot
                    // reserve memory before a byte has arrived.
                    let expected = body.size_hint().exact().unwrap_or(0);
                    let initial = expected.min(*this.max as u64).min(INITIAL_CAPACITY_CAP);
                    let buffer = BytesMut::with_capacity(initial as usize);
                    this.state.set(State::Reading {
                        parts: Some(parts),
                        body,
                        buffer,
                    });
                }
                StateProj::Reading {
                    parts,
                    mut body,
                    buffer,
                } => {
                    while let Some(frame) = ready!(body.as_mut().poll_frame(cx)) {
                        let frame = frame.map_err(|error| {
                            Box::new(ResponseBodyFailed::new(buffer.len(), error.into()))
                                as BoxError
                        })?;
                        // Trailers are dropped: a buffered HTTP response has no use for them.
                        if let Ok(mut data) = frame.into_data() {
                            if buffer.len() + data.remaining() > *this.max {
                                return Poll::Ready(Err(Box::new(ResponseBodyTooLarge::new(
                                    *this.max,
                                ))));
                            }
                            buffer.put(&mut data);
                        }
                    }
                    let Some(parts) = parts.take() else {
                        return Poll::Ready(Err("read body future polled after completion".into()));
                    };
                    let body = FullBody::new(std::mem::take(buffer).freeze());
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
            }
        }
    }
}
