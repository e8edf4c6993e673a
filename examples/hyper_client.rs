//! The client layers around a bare hyper-util client, composed with `ServiceBuilder`.
//!
//! For users who bring their own transport: the same order as the `Client` preset (deadline,
//! strategy, propagation), around `hyper_util::client::legacy::Client`. Starts a small server on
//! loopback that fails twice and then answers, calls it, and checks what came back.
//!
//! Run: `cargo run --example hyper_client`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{http::StatusCode, routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifeline::body::ReplayBody;
use tower_lifeline::propagation::{PropagateLayer, ServiceName};
use tower_lifeline::strategy::{AttemptCount, StrategyLayer};
use tower_lifeline::ServiceBuilderExt;

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    // A server on loopback that answers 503 twice, then 200 with the timeout it was sent.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = Router::new().route(
        "/",
        get(move |headers: http::HeaderMap| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                let timeout = headers
                    .get("x-request-timeout")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                if n < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, String::new())
                } else {
                    (
                        StatusCode::OK,
                        format!(
                            "answered on attempt {} with x-request-timeout {timeout}",
                            n + 1
                        ),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The transport: a plain pooled hyper-util client. The strategy layer hands it bodies that
    // every attempt can replay.
    let transport = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let client = ServiceBuilder::new()
        .client_deadline(Duration::from_secs(2)) // fixes the deadline every attempt shares
        .strategy(StrategyLayer::new()) // GET: 3 attempts with linear backoff
        .propagate(
            PropagateLayer::new().service_name(ServiceName::from_static("hyper-client-example")),
        ) // per attempt
        .read_body(1024 * 1024) // the body read inside the attempt: a cut body is retried
        .service(transport);

    let request = Request::get(format!("http://{addr}/")).body(Full::default())?;
    let response = client.oneshot(request).await?;
    let attempts = response
        .extensions()
        .get::<AttemptCount>()
        .map_or(1, |c| c.0);
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "{status} after {attempts} attempts: {}",
        String::from_utf8_lossy(&body)
    );

    assert_eq!(status, StatusCode::OK);
    assert_eq!(attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    Ok(())
}
