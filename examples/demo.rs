//! The demo: a deadline and a priority crossing hops on loopback.
//!
//! Starts two servers on 127.0.0.1 with the server layers: `edge` calls `inventory` through the
//! client layers, without passing anything by hand. A caller sends `edge` requests with a
//! deadline and a priority; the report shows what each hop saw, and what happens when the time
//! runs out on the way.
//!
//! Run: `cargo run --example demo` (`-- --help` for options).

use std::net::SocketAddr;
use std::time::Duration;

use axum::{routing::get, Json, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_lifeline::context::RequestContext;
use tower_lifeline::deadline::ClientDeadlineLayer;
use tower_lifeline::propagation::PropagateLayer;
use tower_lifeline::ServiceBuilderExt;

const HELP: &str = "\
demo: deadline and priority propagation across two hops on loopback

USAGE: cargo run --example demo [-- --work-ms N]

OPTIONS:
    --work-ms N   time the edge spends before calling inventory (default 30)
    -h, --help    print this help";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn what_i_saw(ctx: RequestContext) -> Value {
    json!({
        "deadline_ms": ctx.deadline().map(|d| d.remaining().as_millis() as u64),
        "priority": ctx.priority().as_str(),
    })
}

async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut work = Duration::from_millis(30);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{HELP}");
                return Ok(());
            }
            "--work-ms" => {
                let ms = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--work-ms needs a number")?;
                work = Duration::from_millis(ms);
            }
            other => return Err(format!("unknown argument {other:?}; try --help").into()),
        }
    }

    // The server layers: read X-Request-Timeout and X-Request-Priority into the context.
    let server_layers = ServiceBuilder::new()
        .server_deadline(Duration::from_secs(20))
        .server_priority();

    // Hop 2: inventory reports what it saw.
    let inventory = Router::new()
        .route(
            "/stock",
            get(|ctx: RequestContext| async move { Json(what_i_saw(ctx)) }),
        )
        .layer(server_layers.clone());
    let inventory_addr = serve(inventory).await?;

    // Hop 1: edge works a little, then calls inventory through the client layers.
    let plain: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new()
        .layer(ClientDeadlineLayer::new().write_header(false))
        .layer(PropagateLayer::new().service_name("edge")?)
        .service(plain.clone());
    let edge = Router::new()
        .route(
            "/order",
            get(move |ctx: RequestContext| async move {
                let mine = what_i_saw(ctx);
                tokio::time::sleep(work).await;
                let request = Request::get(format!("http://{inventory_addr}/stock"))
                    .body(Full::default())
                    .expect("valid request");
                let downstream = match client.clone().oneshot(request).await {
                    Ok(response) => match response.into_body().collect().await {
                        Ok(body) => serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null),
                        Err(err) => json!({ "error": err.to_string() }),
                    },
                    Err(err) => json!({ "error": err.to_string() }),
                };
                Json(json!({ "edge": mine, "inventory": downstream }))
            }),
        )
        .layer(server_layers);
    let edge_addr = serve(edge).await?;

    println!("edge on {edge_addr}, inventory on {inventory_addr}; edge works {work:?} before calling inventory\n");
    println!(
        "{:<28} {:>8} {:>22} {:>30}",
        "caller sent", "status", "edge saw", "inventory saw"
    );
    for (timeout, priority) in [
        ("2", "high"),
        ("0.5", "low"),
        ("0.02", "normal"),
        ("0.001", "high"),
    ] {
        let request = Request::get(format!("http://{edge_addr}/order"))
            .header("x-request-timeout", timeout)
            .header("x-request-priority", priority)
            .body(Full::default())?;
        let response = plain.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let describe = |v: &Value| match (&v["deadline_ms"], &v["priority"], &v["error"]) {
            (_, _, Value::String(e)) if e.contains("too close") => "not sent: time ran out".into(),
            (_, _, Value::String(e)) => format!("error: {e}"),
            (Value::Number(ms), Value::String(p), _) => format!("{ms} ms left, {p}"),
            _ => "not reached".to_string(),
        };
        let edge_saw = if status == StatusCode::OK {
            describe(&body["edge"])
        } else {
            "refused (408)".into()
        };
        println!(
            "{:<28} {:>8} {:>22} {:>30}",
            format!("timeout {timeout} s, {priority}"),
            status.as_u16(),
            edge_saw,
            describe(&body["inventory"]),
        );
    }
    println!("\nThe deadline shrinks by the time each hop spends; the priority travels with it.");
    println!("A hop with too little time left does not call the next one.");
    Ok(())
}
