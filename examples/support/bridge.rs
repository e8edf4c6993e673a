//! Three hops over loopback, HTTP → gRPC → HTTP, each inside the server stack, each calling the
//! next through a client stack, nothing passed by hand: what each hop saw of the deadline and
//! the priority. Shared by `examples/grpc_bridge.rs` and `tests/grpc.rs` (`#[path]`-included).
//!
//! - `A` (axum, `GET /bridge`) calls `B` through the client layers over a tonic `Channel`;
//! - `B` (tonic, `lifeline.example.Context/Get`) calls `C` through the `Client` preset;
//! - `C` (axum, `GET /context`) reports its context.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use http::Uri;
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower_lifeline::client::Client;
use tower_lifeline::deadline::ClientDeadlineLayer;
use tower_lifeline::grpc::GrpcTransportLayer;
use tower_lifeline::prometheus::Registry;
use tower_lifeline::propagation::PropagateLayer;
use tower_lifeline::server::Server;
use tower_lifeline::{Priority, RequestContext};

use super::context_grpc::{ContextClient, ContextReply, ContextServer, GetRequest};

/// What one hop saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hop {
    pub hop: String,
    /// What was left of the deadline when the hop's handler ran.
    pub deadline_ms: Option<u64>,
    pub priority: String,
}

impl Hop {
    fn here(name: &str) -> Hop {
        let ctx = RequestContext::current().unwrap_or(RequestContext::new(None, Priority::Normal));
        Hop {
            hop: name.to_owned(),
            deadline_ms: ctx.deadline().map(|d| d.remaining().as_millis() as u64),
            priority: ctx.priority().as_str().to_owned(),
        }
    }
}

async fn serve(server: Server) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

fn preset(app: Router) -> Server {
    // A registry per server: three servers in one process.
    Server::builder()
        .registry(Registry::new())
        .build(app)
        .expect("a fresh registry")
}

/// Starts the three hops and returns `A`'s address.
pub async fn start() -> SocketAddr {
    let c = serve(preset(
        Router::new().route("/context", get(|| async { Json(Hop::here("C (HTTP)")) })),
    ))
    .await;

    let to_c = Client::builder().build().expect("default client");
    let b_service = ContextServer::new(move |_request| {
        let to_c = to_c.clone();
        async move {
            let mut hops = vec![Hop::here("B (gRPC)")];
            let answer = to_c
                .get(format!("http://{c}/context"))
                .send()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let next: Hop = answer
                .json()
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            hops.push(next);
            Ok(tonic::Response::new(ContextReply {
                json: serde_json::to_string(&hops).expect("serializable"),
            }))
        }
    });
    let b = serve(preset(
        tonic::service::Routes::new(b_service).into_axum_router(),
    ))
    .await;

    let origin: Uri = format!("http://{b}").parse().expect("an address is a URI");
    let channel = tonic::transport::Endpoint::from(origin.clone()).connect_lazy();
    let to_b = ServiceBuilder::new()
        .layer(ClientDeadlineLayer::new())
        .layer(PropagateLayer::new())
        .layer(GrpcTransportLayer::new())
        .service(channel);
    let to_b = ContextClient::with_origin(to_b, origin);
    let a_app = Router::new().route(
        "/bridge",
        get(move || {
            let mut to_b = to_b.clone();
            async move {
                let mut hops = vec![Hop::here("A (HTTP)")];
                let reply =
                    to_b.get(tonic::Request::new(GetRequest {}))
                        .await
                        .map_err(|status| {
                            (
                                http::StatusCode::BAD_GATEWAY,
                                format!("B answered {status}"),
                            )
                        })?;
                let rest: Vec<Hop> = serde_json::from_str(&reply.into_inner().json)
                    .map_err(|e| (http::StatusCode::BAD_GATEWAY, e.to_string()))?;
                hops.extend(rest);
                Ok::<_, (http::StatusCode, String)>(Json(hops))
            }
        }),
    );
    serve(preset(a_app)).await
}

/// Calls `A` with a deadline `timeout` away and `priority` (sent as `X-Request-Timeout` and
/// `X-Request-Priority`), and returns what each hop saw, `A` first.
pub async fn call(a: SocketAddr, timeout: Duration, priority: Priority) -> Vec<Hop> {
    let client = Client::builder().build().expect("default client");
    let answer = client
        .get(format!("http://{a}/bridge"))
        .timeout(timeout)
        .priority(priority)
        .send()
        .await
        .expect("A answers");
    assert_eq!(answer.status(), http::StatusCode::OK, "A's status");
    answer.json().await.expect("A's JSON")
}
