//! Reads the whole response body inside the attempt, so that a body that fails is a failed
//! attempt rather than a success whose body errors later.
//!
//! aio-request's transport buffers the payload before the attempt ends; without this layer a
//! client stack judges an attempt by its head alone, and a server that sends
//! `Content-Length: 1000`, 4 bytes, then closes has "succeeded" as far as the strategy, the
//! breaker and the latency samples know. [`ReadBodyLayer`] sits just above the transport: the
//! attempt (and the attempt timeout, the breaker and the per-attempt metrics above it) ends only
//! when the body has arrived whole, up to a byte cap.
//!
//! - A body that fails (cut short, reset) fails the attempt with [`ResponseBodyFailed`], which
//!   the [classifier](crate::classify) calls a [`Failure`](crate::outcome::Outcome::Failure):
//!   retried for idempotent methods, counted by the breaker.
//! - A body over the cap fails with [`ResponseBodyTooLarge`], which is
//!   [`Refused`](crate::outcome::Outcome::Refused): the same answer would come again, and a large
//!   body says nothing against the destination.
//! - The response comes back with a [`FullBody`] (`Full<Bytes>`), already read.
//!
//! Streams that are meant to be long (downloads, server-sent events) should not go through it:
//! compose those stacks without this layer.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_lifeline::read_body::{ReadBodyLayer, ResponseBodyTooLarge};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let server = service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"0123456789"))))
//! });
//! let response = ReadBodyLayer::new(64).layer(server).oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "0123456789");
//!
//! let err = ReadBodyLayer::new(4).layer(server).oneshot(Request::new(())).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<ResponseBodyTooLarge>().unwrap().limit(), 4);
//! # }
//! ```

mod error;
mod future;

use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;

pub use error::{ResponseBodyFailed, ResponseBodyTooLarge};
pub use future::ReadBodyFuture;

/// The body of a response read whole.
pub type FullBody = http_body_util::Full<bytes::Bytes>;

/// Reads each response body whole, up to a cap, before the call ends. See the
/// [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct ReadBodyLayer {
    max: usize,
}

impl ReadBodyLayer {
    /// Reads bodies of up to `max` bytes; a longer one fails with [`ResponseBodyTooLarge`].
    pub fn new(max: usize) -> Self {
        ReadBodyLayer { max }
    }
}

impl<S> Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadBody {
            inner,
            max: self.max,
        }
    }
}

/// The service made by [`ReadBodyLayer`].
#[derive(Debug, Clone)]
pub struct ReadBody<S> {
    inner: S,
    max: usize,
}

impl<S> ReadBody<S> {
    /// `inner` wrapped as [`ReadBodyLayer::new`](ReadBodyLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S, max: usize) -> Self {
        tower_layer::Layer::layer(&ReadBodyLayer::new(max), inner)
    }
}

impl<S> ReadBody<S> {
    inner_service_accessors!(S);
}

impl<S, B, ResBody> Service<Request<B>> for ReadBody<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<FullBody>;
    type Error = BoxError;
    type Future = ReadBodyFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ReadBodyFuture::new(self.inner.call(req), self.max)
    }
}

#[cfg(test)]
mod tests;
