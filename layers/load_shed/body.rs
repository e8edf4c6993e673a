//! The response body of a load-shed service: it holds the request's slot until it ends.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::state::Slot;

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
    /// `inner`, holding `slot` (if any) until it ends.
    pub(super) fn new(inner: B, slot: Option<Slot>) -> Self {
        ShedBody { inner, slot }
    }

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
