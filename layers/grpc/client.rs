//! The bottom of a client stack over a tonic `Channel`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::end_of_stream::{watch, WatchedBody};
use crate::context::Deadline;
use crate::error::BoxError;

/// Puts a tonic `Channel` (or any service that takes `tonic::body::Body`) under the client
/// stack: it hands the channel the stack's request body (the strategy's replayable one) as a
/// tonic body; it ends each response body at the attempt's deadline (the [`Deadline`] in the
/// request's extensions), since the layers above stop their clocks when the head arrives; and it
/// watches each gRPC response to its end, so that the breaker and the metrics above count the
/// `grpc-status` of its trailers. Put it last, just above the channel.
///
/// Without it the layers above still see a trailers-only answer's status; a status that comes
/// in trailers after messages would pass them by as the HTTP 200 it rides on.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTransportLayer {
    _private: (),
}

impl GrpcTransportLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for GrpcTransportLayer {
    type Service = GrpcTransport<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTransport { inner }
    }
}

/// The service made by [`GrpcTransportLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTransport<S> {
    inner: S,
}

impl<S> GrpcTransport<S> {
    /// `inner` wrapped as [`GrpcTransportLayer::new`](GrpcTransportLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&GrpcTransportLayer::new(), inner)
    }
}

impl<S> GrpcTransport<S> {
    inner_service_accessors!(S);
}

impl<S, B, ResBody> Service<Request<B>> for GrpcTransport<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<WatchedBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcTransportFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The attempt's deadline (the call's, or its share), for the body.
        let deadline = Deadline::of(req.extensions()).map(|d| (d, d.remaining()));
        GrpcTransportFuture {
            inner: self.inner.call(req.map(tonic::body::Body::new)),
            deadline,
        }
    }
}

pin_project! {
    /// The response future of [`GrpcTransport`].
    pub struct GrpcTransportFuture<F> {
        #[pin]
        inner: F,
        deadline: Option<(Deadline, Duration)>,
    }
}

impl<F> fmt::Debug for GrpcTransportFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcTransportFuture")
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for GrpcTransportFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<WatchedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let deadline = *this.deadline;
        this.inner
            .poll(cx)
            .map_ok(|response| watch(response, deadline))
    }
}
