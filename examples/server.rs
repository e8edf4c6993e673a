//! The full server stack on a real port.
//!
//! ```text
//! cargo run --example server -- --addr 127.0.0.1:8080 [--bare] [--capacity N] [--drain-delay MS]
//!     [--metrics-addr ADDR] [--max-connections N] [--header-read-timeout MS] [--idle-timeout MS]
//!     [--body-timeout MS] [--max-header-bytes N] [--http2-max-streams N]
//!     [--trust-priority-from CIDR,...]
//! ```
//!
//! Routes: `GET /hello`, `GET /slow?ms=N`, `GET /status/{code}`, `GET /context` (the request
//! context as JSON), `POST /echo`, and `/metrics`, `/healthz`, `/readyz`. SIGTERM or Ctrl-C
//! drains gracefully, and a second one exits at once. `--bare` serves the same routes with no tower-lifeline layer at all: the
//! baseline for measuring overhead.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_lifeline::priority::Network;
use tower_lifeline::server::Server;
use tower_lifeline::shutdown::{Drained, Shutdown};
use tower_lifeline::RequestContext;

const HELP: &str = "\
server: the full tower-lifeline server stack on a real port

USAGE: cargo run --example server -- [--addr ADDR] [--bare] [--capacity N] [--drain-delay MS]
           [--metrics-addr ADDR] [--max-connections N] [--header-read-timeout MS]
           [--idle-timeout MS] [--body-timeout MS] [--max-header-bytes N] [--http2-max-streams N]
           [--trust-priority-from CIDR,...]

OPTIONS:
    --addr ADDR      where to listen (default 127.0.0.1:8080)
    --bare           no tower-lifeline layer at all (the overhead baseline)
    --capacity N     a fixed number of requests handled at once before shedding
                     (default: none, an adaptive limit found from latency)
    --drain-delay MS after SIGTERM, keep accepting (with /readyz failing) this long, so that
                     load balancers move traffic away before the listener closes (default 0)
    --metrics-addr ADDR  serve /metrics on this address instead of beside the routes
    --max-connections N  connections open at once (default: 7/8 of `ulimit -n`)
    --header-read-timeout MS  a whole request head must arrive within this (default 10000)
    --idle-timeout MS    close connections idle this long (default 60000)
    --body-timeout MS    a request body must arrive within this (default 30000)
    --max-header-bytes N largest request head (default 32768)
    --http2-max-streams N  concurrent HTTP/2 streams per connection (default 100)
    --trust-priority-from CIDR,...  believe X-Request-Priority only from these networks;
                     Normal for every other peer (default: believe everyone)
    -h, --help       print this help

ROUTES: GET /hello, GET /slow?ms=N, GET /status/{code}, GET /context, POST /echo,
        GET /metrics, GET /healthz, GET /readyz";

#[derive(Deserialize)]
struct Slow {
    ms: Option<u64>,
}

/// The application: the same routes with or without the stack.
fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .route(
            "/slow",
            get(|Query(slow): Query<Slow>| async move {
                // At most a minute: a caller cannot park a handler forever.
                let ms = slow.ms.unwrap_or(100).min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("slept {ms} ms\n")
            }),
        )
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
            }),
        )
        .route(
            "/context",
            get(|ctx: RequestContext| async move {
                Json(json!({
                    "deadline_ms": ctx.deadline().map(|d| d.remaining().as_millis() as u64),
                    "priority": ctx.priority().as_str(),
                }))
            }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
}

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut bare = false;
    let mut capacity = None;
    let mut drain_delay = Duration::ZERO;
    let mut metrics_addr = None;
    let mut trusted: Option<Vec<Network>> = None;
    let mut settings: Vec<(String, u64)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{HELP}");
                return Ok(());
            }
            "--addr" => addr = args.next().ok_or("--addr needs an address")?,
            "--bare" => bare = true,
            "--capacity" => {
                capacity = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--capacity needs a number")?,
                );
            }
            "--drain-delay" => {
                drain_delay = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_millis)
                    .ok_or("--drain-delay needs milliseconds")?;
            }
            "--trust-priority-from" => {
                let list = args.next().ok_or("--trust-priority-from needs networks")?;
                let networks: Result<Vec<Network>, _> =
                    list.split(',').map(|n| n.trim().parse()).collect();
                trusted = Some(networks?);
            }
            "--metrics-addr" => {
                metrics_addr = Some(args.next().ok_or("--metrics-addr needs an address")?);
            }
            "--max-connections"
            | "--header-read-timeout"
            | "--idle-timeout"
            | "--body-timeout"
            | "--max-header-bytes"
            | "--http2-max-streams" => {
                let value = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("{arg} needs a number"))?;
                settings.push((arg, value));
            }
            other => return Err(format!("unknown argument {other:?}; try --help").into()),
        }
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;

    if bare {
        let app = app()
            .route("/metrics", get(|| async { "" }))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(|| async { "ready\n" }));
        println!("bare axum on http://{addr} (no tower-lifeline layers)");
        axum::serve(listener, app)
            .with_graceful_shutdown(ctrl_c_or_term())
            .await?;
        return Ok(());
    }

    let mut builder = Server::builder().shutdown(Shutdown::new().drain_delay(drain_delay));
    for (flag, value) in settings {
        let ms = Duration::from_millis(value);
        builder = match flag.as_str() {
            "--max-connections" => builder.max_connections(value as usize),
            "--header-read-timeout" => builder.header_read_timeout(ms),
            "--idle-timeout" => builder.idle_timeout(ms),
            "--body-timeout" => builder.body_timeout(ms),
            "--max-header-bytes" => builder.max_header_bytes(value as usize),
            _ => builder.http2_max_concurrent_streams(u32::try_from(value).unwrap_or(u32::MAX)),
        };
    }
    if let Some(networks) = trusted {
        builder = builder.trust_priority_from(networks);
    }
    if let Some(capacity) = capacity {
        builder = builder.capacity(capacity);
    }
    if let Some(metrics_addr) = &metrics_addr {
        let listener = tokio::net::TcpListener::bind(metrics_addr).await?;
        println!("metrics on http://{metrics_addr}/metrics");
        builder = builder.metrics_listener(listener);
    }
    let server = builder.build(app())?;
    server.shutdown().listen_for_signals();
    println!("tower-lifeline server stack on http://{addr} (SIGTERM or Ctrl-C drains)");
    match server.serve(listener).await? {
        Drained::Completed => println!("drained: every request finished"),
        Drained::GraceExpired { in_flight } => {
            println!("grace period over with {in_flight} requests unfinished")
        }
        Drained::Forced { in_flight } => {
            println!("second signal: exiting with {in_flight} requests unfinished")
        }
    }
    Ok(())
}

async fn ctrl_c_or_term() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
