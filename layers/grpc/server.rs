//! Server side: the stack's refusals of a gRPC request, answered in gRPC's own terms.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::status::{
    code_for_http, code_name, encode_message, is_grpc, GRPC_MESSAGE, GRPC_RETRY_PUSHBACK_MS,
    GRPC_STATUS,
};
use crate::headers;

/// Answers a gRPC request that a layer of the server stack refused (the deadline layer's 408,
/// load shedding's 503, a timeout's 504, ...) the way gRPC clients read: HTTP 200, content type
/// `application/grpc`, and the status in `grpc-status` and `grpc-message` of a trailers-only
/// answer, by [`code_for_http`](super::code_for_http): a deadline that cannot be met is
/// `DEADLINE_EXCEEDED` (4), shedding `UNAVAILABLE` (14). A `Retry-After` is also sent as gRPC's
/// `grpc-retry-pushback-ms`.
///
/// Answers of the gRPC service itself (content type `application/grpc`) and answers to requests
/// that are not gRPC pass through untouched. Put it inside the metrics layer, so that metrics
/// record the gRPC status a caller saw, and outside the layers that refuse. The `Server` preset
/// does, when the `grpc` feature is on.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRefusalsLayer {
    _private: (),
}

impl GrpcRefusalsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for GrpcRefusalsLayer {
    type Service = GrpcRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcRefusals { inner }
    }
}

/// The service made by [`GrpcRefusalsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcRefusals<S> {
    inner: S,
}

impl<S> GrpcRefusals<S> {
    /// `inner` wrapped as [`GrpcRefusalsLayer::new`](GrpcRefusalsLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&GrpcRefusalsLayer::new(), inner)
    }
}

impl<S> GrpcRefusals<S> {
    inner_service_accessors!(S);
}

impl<S, B, ResBody> Service<Request<B>> for GrpcRefusals<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GrpcRefusalsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        GrpcRefusalsFuture {
            grpc: is_grpc(req.headers()),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`GrpcRefusals`].
    pub struct GrpcRefusalsFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F> fmt::Debug for GrpcRefusalsFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcRefusalsFuture")
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for GrpcRefusalsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let refused = *this.grpc && !response.status().is_success() && !is_grpc(response.headers());
        Poll::Ready(Ok(if refused {
            in_grpc_terms(response)
        } else {
            response
        }))
    }
}

/// A trailers-only gRPC answer for an HTTP refusal: its headers kept (`Retry-After`,
/// `X-Do-Not-Retry`), its body dropped.
fn in_grpc_terms<B: Default>(response: Response<B>) -> Response<B> {
    let (mut parts, _body) = response.into_parts();
    let status = parts.status;
    let code = code_for_http(status);
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.remove(http::header::CONTENT_LENGTH);
    headers.insert(GRPC_STATUS, HeaderValue::from(code as i32));
    let message = format!(
        "{} (HTTP {} from the server stack)",
        code_name(code),
        status.as_u16()
    );
    headers.insert(GRPC_MESSAGE, encode_message(&message));
    if let Some(wait) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(headers::parse_retry_after)
    {
        headers.insert(
            GRPC_RETRY_PUSHBACK_MS,
            HeaderValue::from(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    Response::from_parts(parts, B::default())
}
