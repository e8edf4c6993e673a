//! The gRPC service `lifeline.example.Context`, written by hand (no `protoc`): what tonic's
//! code generator would write for
//!
//! ```proto
//! syntax = "proto3";
//! package lifeline.example;
//! message GetRequest {}
//! message ContextReply { string json = 1; }
//! service Context { rpc Get(GetRequest) returns (ContextReply); }
//! ```
//!
//! Shared by the gRPC examples and tests (`#[path]`-included); not every user uses every item.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::uri::PathAndQuery;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The full name of the service.
pub const SERVICE: &str = "lifeline.example.Context";
/// The path of its one method.
pub const GET_PATH: &str = "/lifeline.example.Context/Get";

/// `message GetRequest {}`
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRequest {}

/// `message ContextReply { string json = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContextReply {
    #[prost(string, tag = "1")]
    pub json: String,
}

type ReplyFuture = Pin<Box<dyn Future<Output = Result<Response<ContextReply>, Status>> + Send>>;
type Handler = Arc<dyn Fn(Request<GetRequest>) -> ReplyFuture + Send + Sync>;

/// The server side: `Get` answered by a closure.
#[derive(Clone)]
pub struct ContextServer {
    handler: Handler,
}

impl ContextServer {
    pub fn new<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<GetRequest>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<ContextReply>, Status>> + Send + 'static,
    {
        ContextServer {
            handler: Arc::new(move |request| Box::pin(handler(request))),
        }
    }
}

impl tonic::server::NamedService for ContextServer {
    const NAME: &'static str = SERVICE;
}

struct Get(Handler);

impl tonic::server::UnaryService<GetRequest> for Get {
    type Response = ContextReply;
    type Future = ReplyFuture;

    fn call(&mut self, request: Request<GetRequest>) -> Self::Future {
        (self.0)(request)
    }
}

impl<B> tower::Service<http::Request<B>> for ContextServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != GET_PATH {
            // As tonic's generated servers answer a method they do not have.
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let method = Get(self.handler.clone());
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<ContextReply, GetRequest>::default());
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// The client side, over any tonic-compatible service (a `Channel`, or the client stack).
#[derive(Clone)]
pub struct ContextClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> ContextClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    /// A client whose requests carry `origin`'s scheme and authority, so that the layers of a
    /// client stack (the breaker, the metrics) know their destination.
    pub fn with_origin(inner: T, origin: http::Uri) -> Self {
        ContextClient {
            inner: tonic::client::Grpc::with_origin(inner, origin),
        }
    }

    pub async fn get(
        &mut self,
        request: Request<GetRequest>,
    ) -> Result<Response<ContextReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {}", e.into())))?;
        self.inner
            .unary(
                request,
                PathAndQuery::from_static(GET_PATH),
                ProstCodec::<GetRequest, ContextReply>::default(),
            )
            .await
    }
}
