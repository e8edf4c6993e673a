//! A production-shaped server: shedding, deadlines, priority, health and graceful shutdown.
//!
//! `cargo run --example server_ops`, then `curl -i localhost:8080/` and `curl -i
//! localhost:8080/readyz`; Ctrl-C drains and exits.

use std::time::Duration;

use axum::{routing::get, Router};
use tower::ServiceBuilder;
use tower_lifeline::health::Health;
use tower_lifeline::load_shed::LoadShedLayer;
use tower_lifeline::shutdown::{serve, Drained, Shutdown};
use tower_lifeline::ServiceBuilderExt;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // Kubernetes: a few seconds of drain delay so endpoints update before the listener closes.
    let shutdown = Shutdown::new()
        .drain_delay(Duration::from_secs(2))
        .grace_period(Duration::from_secs(30));
    shutdown.listen_for_signals();

    let shed = LoadShedLayer::new(256);
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        // Outermost first: deadline, priority, then shedding that reads both.
        .layer(
            ServiceBuilder::new()
                .server_deadline(Duration::from_secs(20))
                .server_priority()
                .layer(shed.clone()),
        )
        // Probes stay outside the shedder: an overloaded server must still say it is alive.
        .merge(Health::new().shutdown(&shutdown).router())
        .layer(shutdown.layer());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://127.0.0.1:8080 (Ctrl-C to drain and stop)");
    match serve(listener, app, shutdown).await? {
        Drained::Completed => println!("drained cleanly"),
        Drained::GraceExpired { in_flight } => println!("gave up on {in_flight} requests"),
        Drained::Forced { in_flight } => println!("forced out with {in_flight} requests"),
    }
    println!("load shedding: {:?}", shed.stats());
    Ok(())
}
