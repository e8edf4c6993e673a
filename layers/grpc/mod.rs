//! gRPC over tonic: the same deadline, priority, strategies, breaker and metrics on gRPC hops.
//!
//! gRPC is HTTP/2 with its own conventions, and the stacks speak them when a request's content
//! type is `application/grpc`:
//!
//! | where | what | how |
//! |---|---|---|
//! | client, [propagation](crate::propagation) | the deadline | `grpc-timeout` (gRPC's format, at most 8 digits and a unit), beside `X-Request-Timeout` |
//! | client, propagation | the priority | `x-request-priority`, as on HTTP |
//! | client, [deadline](crate::deadline::ClientDeadlineLayer) | a `grpc-timeout` the caller set (tonic's `Request::set_timeout`) | an explicit deadline, capped by the inherited one |
//! | client, [classifier](crate::classify::DefaultClassifier) | retry or not | the `grpc-status` of a trailers-only answer: retryable codes configurable, by default `UNAVAILABLE` (14), as gRPC's retry policy; an answer with messages is never retried |
//! | client, breaker and metrics | the call's status | the `grpc-status` at the end of the stream ([`GrpcTransportLayer`] watches it); the breaker counts [`destination_outcome`]'s failures, the metrics' `status` label is the code's name (`UNAVAILABLE`) |
//! | server, [`GrpcRefusalsLayer`] | a refusal of the stack | a trailers-only answer: a deadline that cannot be met `DEADLINE_EXCEEDED` (4), shedding and draining `UNAVAILABLE` (14), never an HTTP status a gRPC client reads as `UNKNOWN`; the table is [`code_for_http`] |
//! | server, deadline and priority | the caller's context | read from `grpc-timeout` and `x-request-priority`; inside a tonic handler, [`RequestContext::current`](crate::RequestContext::current) or the request's extensions |
//! | server, metrics | by method and status | the `route` label is the gRPC method (`/package.Service/Method`) for methods the server has, the `status` label the code's name |
//!
//! Shedding answers `UNAVAILABLE` rather than `RESOURCE_EXHAUSTED`: gRPC's clients retry
//! `UNAVAILABLE` (with the `grpc-retry-pushback-ms` sent beside `Retry-After`), and gRPC keeps
//! `RESOURCE_EXHAUSTED` for quotas and message sizes, which a retry does not cure.
//!
//! # A client stack over a tonic `Channel`
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_lifeline::circuit_breaker::CircuitBreakerLayer;
//! use tower_lifeline::deadline::ClientDeadlineLayer;
//! use tower_lifeline::grpc::GrpcTransportLayer;
//! use tower_lifeline::propagation::PropagateLayer;
//! use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};
//!
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let stack = ServiceBuilder::new()
//!     .layer(ClientDeadlineLayer::new())
//!     .layer(StrategyLayer::new())
//!     .layer(CircuitBreakerLayer::default().respond_502())
//!     .layer(PropagateLayer::new())
//!     .layer(GrpcTransportLayer::new())
//!     .service(channel);
//! // Give `stack` to a tonic client made with `with_origin(stack, uri)`, so that the breaker
//! // and the metrics know the destination: tonic leaves the authority for the channel to add.
//! # drop(stack);
//!
//! // Every gRPC call is a POST, so the strategy sends it once unless the caller asks for more
//! // (gRPC's own retry policy is likewise configured per method by the service's owner): put
//! // the strategy in the call's extensions.
//! let mut request = tonic::Request::new(());
//! request
//!     .extensions_mut()
//!     .insert(Strategy::sequential(3, Delays::constant(Duration::from_millis(50))));
//! ```
//!
//! # Refusals in gRPC's terms
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_lifeline::grpc::GrpcRefusalsLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A stack that refuses everything as the deadline layer does.
//! let refusing = service_fn(|_req: Request<String>| async {
//!     let mut response = Response::new(String::new());
//!     *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
//!     Ok::<_, std::convert::Infallible>(response)
//! });
//! let server = GrpcRefusalsLayer::new().layer(refusing);
//!
//! let grpc = Request::post("/lifeline.example.Context/Get")
//!     .header("content-type", "application/grpc")
//!     .body(String::new())
//!     .unwrap();
//! let response = server.clone().oneshot(grpc).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED
//!
//! // Plain HTTP keeps its 408.
//! let http = Request::get("/").body(String::new()).unwrap();
//! assert_eq!(server.oneshot(http).await.unwrap().status(), StatusCode::REQUEST_TIMEOUT);
//! # }
//! ```

mod client;
pub(crate) mod end_of_stream;
mod server;
mod status;

pub use client::{GrpcTransport, GrpcTransportFuture, GrpcTransportLayer};
pub use end_of_stream::WatchedBody;
pub use server::{GrpcRefusals, GrpcRefusalsFuture, GrpcRefusalsLayer};
pub use status::{
    code_for_http, code_name, destination_outcome, format_grpc_timeout, is_grpc, status_in,
    GRPC_MESSAGE, GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS,
};
/// tonic's status codes, as this module reads and writes them.
pub use tonic::Code;
