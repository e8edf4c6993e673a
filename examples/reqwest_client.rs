//! The `Client` preset over your own `reqwest::Client`: your reqwest settings stay, and the
//! whole client stack (deadline, retries, breaker, propagation, metrics) goes on top.
//! A flaky server answers 503 twice, then 200; the call is retried and succeeds. Checks itself.
//!
//! ```sh
//! cargo run --example reqwest_client
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::Request, http::StatusCode, routing::get, Router};
use tower_lifeline::client::Client;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // A server that fails twice, then tells what it was sent.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/stock",
        get(move |req: Request| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    return Err(StatusCode::SERVICE_UNAVAILABLE);
                }
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned()
                };
                Ok(format!(
                    "user-agent {}, x-request-timeout {}, x-service-name {}",
                    header("user-agent"),
                    header("x-request-timeout"),
                    header("x-service-name")
                ))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Your reqwest client, as you already build it.
    let reqwest_client = reqwest::Client::builder()
        .user_agent("inventory-checker/1.0")
        .build()?;
    // The preset over it: GETs get three attempts, the deadline and priority travel along.
    let client = Client::builder()
        .reqwest(reqwest_client)
        .base_url(&format!("http://{addr}/"))
        .service_name("checkout")
        .build()?;

    let response = client
        .get("stock")
        .timeout(Duration::from_secs(2))
        .send()
        .await?;
    let status = response.status();
    let attempts = response.attempts();
    let body = response.text().await?;
    println!("{status} after {attempts} attempts: {body}");

    assert_eq!(status, StatusCode::OK);
    assert_eq!(attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(body.contains("user-agent inventory-checker/1.0"), "{body}");
    assert!(body.contains("x-service-name checkout"), "{body}");
    Ok(())
}
