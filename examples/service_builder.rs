//! Every layer composed by hand with `tower::ServiceBuilder`, on both sides.
//!
//! For users who bring their own router and transport: the server layers on an axum `Router`
//! and the client layers on a hyper-util client, in the order the README explains, with the
//! `ServiceBuilderExt` methods. Starts the server on loopback, calls it, checks the result.
//!
//! Run: `cargo run --example service_builder`.

use std::time::Duration;

use axum::{http::StatusCode, routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifeline::body::ReplayBody;
use tower_lifeline::circuit_breaker::CircuitBreakerLayer;
use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig, ServerMetrics};
use tower_lifeline::prometheus::Registry;
use tower_lifeline::propagation::{PropagateLayer, ServiceName};
use tower_lifeline::shutdown::Shutdown;
use tower_lifeline::strategy::StrategyLayer;
use tower_lifeline::{RequestContext, ServiceBuilderExt};

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    // Server, outermost first: drain, metrics, deadline, priority, shedding, handler.
    let registry = Registry::new();
    let server_metrics = ServerMetrics::register(&registry, MetricsConfig::default())?;
    let shutdown = Shutdown::new();
    let app = Router::new()
        .route(
            "/hello",
            get(|ctx: RequestContext| async move { format!("hello, {} priority", ctx.priority()) }),
        )
        .layer(
            ServiceBuilder::new()
                .drain_on(&shutdown)
                .layer(server_metrics.layer())
                .server_deadline(Duration::from_secs(20))
                .server_priority()
                .shed_load(512),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Client, outermost first: call metrics, deadline, strategy, breaker, attempt timeout,
    // attempt metrics, propagation, transport.
    let client_metrics = ClientMetrics::register(&registry, MetricsConfig::default())?;
    let transport = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let client = ServiceBuilder::new()
        .layer(client_metrics.call_layer())
        .client_deadline(Duration::from_secs(5))
        .strategy(StrategyLayer::new())
        .circuit_breaker(CircuitBreakerLayer::default().return_error())
        .attempt_timeout(Duration::from_secs(1))
        .layer(client_metrics.attempt_layer())
        .propagate(
            PropagateLayer::new().service_name(ServiceName::from_static("service-builder-example")),
        )
        .service(transport);

    let mut request = Request::get(format!("http://{addr}/hello")).body(Full::default())?;
    request
        .extensions_mut()
        .insert(tower_lifeline::Priority::Low);
    let response = client.oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{status}: {}", String::from_utf8_lossy(&body));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello, low priority");

    let text = metrics::render(&registry)?;
    assert!(text.contains(
        r#"client="service-builder-example",method="GET",route="/hello",status="200"} 1"#
    ));
    println!("server and client metrics recorded in one registry");
    Ok(())
}
