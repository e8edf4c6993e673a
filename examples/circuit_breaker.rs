//! A circuit breaker in front of a flaky server on loopback: it trips, refuses without calling
//! the server, and closes again after one successful probe.
//!
//! Run: `cargo run --example circuit_breaker`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::State, http::StatusCode, routing::get, Router};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifeline::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerSettings, Transition};
use tower_lifeline::ServiceBuilderExt;

/// A server that answers 503 while `down` is set.
async fn flaky_server(down: Arc<AtomicBool>) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/",
            get(|State(down): State<Arc<AtomicBool>>| async move {
                if down.load(Ordering::SeqCst) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }),
        )
        .with_state(down);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let down = Arc::new(AtomicBool::new(true));
    let addr = flaky_server(down.clone()).await?;

    // Open at half the requests failing, once 5 have been seen; refuse for 300 ms.
    let breaker = CircuitBreakerLayer::new(
        CircuitBreakerSettings::builder()
            .failure_threshold(0.5)
            .minimum_throughput(5)
            .break_duration(Duration::from_millis(300))
            .build()?,
    )
    .respond_502()
    .on_transition(|t: &Transition<'_>| {
        println!(
            "  breaker {}: {} -> {} (failure ratio {:.2} over {} requests)",
            t.scope, t.from, t.to, t.failure_ratio, t.requests
        )
    });
    let registry = breaker.registry();

    let transport = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .circuit_breaker(breaker)
        // The synthetic 502 needs a body type with a `Default`; hyper's `Incoming` has none.
        .map_response(|response: Response<hyper::body::Incoming>| {
            response.map(axum::body::Body::new)
        })
        .service(transport);

    let call = |label: &'static str| {
        let client = client.clone();
        async move {
            let request = Request::get(format!("http://{addr}/")).body(Full::default())?;
            let response = client.oneshot(request).await?;
            let by_breaker = response.headers().contains_key("x-circuit-breaker");
            println!(
                "{label:<28} {} {}",
                response.status().as_u16(),
                if by_breaker {
                    "(answered by the breaker)"
                } else {
                    ""
                }
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }
    };

    for _ in 0..5 {
        call("server down").await?;
    }
    call("server down, breaker open").await?;
    down.store(false, Ordering::SeqCst);
    call("server up, breaker open").await?;
    tokio::time::sleep(Duration::from_millis(350)).await;
    call("after the break: the probe").await?;
    call("closed again").await?;

    for scope in registry.snapshot() {
        println!("{}: {}", scope.scope, scope.state);
    }
    Ok(())
}
