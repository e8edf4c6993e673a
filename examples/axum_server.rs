//! An axum application behind the `Server` preset, calling another service with the `Client`.
//!
//! The README's server snippet as a program: it serves on an ephemeral loopback port, calls
//! itself once as a client would (with a deadline and a priority), prints what the handler saw,
//! then shuts down gracefully. In a real service, replace the self-call with
//! `server.shutdown().listen_for_signals()` and let SIGTERM end it.
//!
//! Run: `cargo run --example axum_server`.

use std::time::Duration;

use axum::{routing::get, Json, Router};
use serde_json::{json, Value};
use tower_lifeline::client::Client;
use tower_lifeline::server::Server;
use tower_lifeline::shutdown::Drained;
use tower_lifeline::{Priority, RequestContext};

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    // The application: plain axum. The handler reads the caller's deadline and priority.
    let app = Router::new().route(
        "/orders/{id}",
        get(|ctx: RequestContext| async move {
            Json(json!({
                "deadline_ms": ctx.deadline().map(|d| d.remaining().as_millis() as u64),
                "priority": ctx.priority().as_str(),
            }))
        }),
    );

    // One call adds metrics, deadline, priority, load shedding, /metrics, /healthz, /readyz and
    // graceful shutdown.
    let server = Server::builder().capacity(256).build(app)?;
    let shutdown = server.shutdown().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(server.serve(listener));

    // A caller with a 1.5 s deadline and high priority.
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .service_name("example")
        .build()?;
    let response = client
        .get("/orders/42")
        .route("/orders/{id}")
        .timeout(Duration::from_millis(1500))
        .priority(Priority::High)
        .send()
        .await?;
    let seen: Value = response.json().await?;
    println!("the handler saw: {seen}");
    assert_eq!(seen["priority"], "high");
    assert!(seen["deadline_ms"].as_u64().is_some_and(|ms| ms <= 1500));

    let metrics = client.get("/metrics").send().await?.text().await?;
    let line = metrics
        .lines()
        .find(|l| l.contains(r#"route="/orders/{id}""#) && l.contains("_count"));
    println!("server metrics: {}", line.unwrap_or("(none)"));

    // Graceful shutdown: readiness fails at once, in-flight requests finish, then `serve` returns.
    shutdown.trigger();
    match serving.await?? {
        Drained::Completed => println!("drained and stopped"),
        Drained::GraceExpired { in_flight } => println!("stopped with {in_flight} unfinished"),
        Drained::Forced { in_flight } => println!("forced to stop with {in_flight} unfinished"),
    }
    Ok(())
}
