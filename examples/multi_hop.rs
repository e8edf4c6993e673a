//! Three services on loopback: a deadline shrinking hop by hop, the priority carried along.
//!
//! `edge` calls `orders`, which calls `inventory`. Each hop runs the server layers and calls the
//! next through the `Client` preset, passing nothing by hand: the deadline and priority travel
//! in the task-local request context. A caller sends `edge` requests with a deadline and a
//! priority; the report shows what each hop saw, and what happens when time runs out on the way.
//!
//! Run: `cargo run --example multi_hop` (`-- --help` for options).

use std::net::SocketAddr;
use std::time::Duration;

use axum::{routing::get, Json, Router};
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_lifeline::client::Client;
use tower_lifeline::{RequestContext, ServiceBuilderExt};

const HELP: &str = "\
multi_hop: deadline and priority propagation across three services on loopback

USAGE: cargo run --example multi_hop [-- --work-ms N]

OPTIONS:
    --work-ms N   time each hop spends before calling the next (default 30)
    -h, --help    print this help";

/// What a hop saw of its request context.
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

/// A hop that works for `work`, then calls `next` (if any) and reports both.
fn hop(
    name: &'static str,
    work: Duration,
    next: Option<SocketAddr>,
) -> Result<Router, tower_lifeline::BoxError> {
    let client = Client::builder().service_name(name).build()?;
    let handler = move |ctx: RequestContext| {
        let client = client.clone();
        async move {
            let mut report = json!({ name: what_i_saw(ctx) });
            tokio::time::sleep(work).await;
            if let Some(next) = next {
                let downstream = match client.get(format!("http://{next}/")).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.json::<Value>().await.unwrap_or(Value::Null)
                    }
                    Ok(response) => json!({ "status": response.status().as_u16() }),
                    Err(err) => json!({ "error": err.to_string() }),
                };
                report["next"] = downstream;
            }
            Json(report)
        }
    };
    let server_layers = ServiceBuilder::new()
        .server_deadline(Duration::from_secs(20))
        .server_priority();
    Ok(Router::new().route("/", get(handler)).layer(server_layers))
}

/// Flattens the nested report into one column per hop.
fn columns(mut report: Value) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["edge", "orders", "inventory"] {
        let seen = &report[name];
        out.push(match (&seen["deadline_ms"], &seen["priority"]) {
            (Value::Number(ms), Value::String(p)) => format!("{ms} ms, {p}"),
            _ => match (&report["error"], &report["status"]) {
                (Value::String(e), _) if e.contains("too close") => {
                    "not called: no time left".into()
                }
                (Value::String(e), _) if e.contains("deadline exceeded") => {
                    "no answer in time".into()
                }
                (Value::String(e), _) => format!("error: {e}"),
                (_, Value::Number(status)) => format!("answered {status}"),
                _ => "not reached".into(),
            },
        });
        report = report["next"].take();
    }
    out
}

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
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

    let inventory = serve(hop("inventory", work, None)?).await?;
    let orders = serve(hop("orders", work, Some(inventory))?).await?;
    let edge = serve(hop("edge", work, Some(orders))?).await?;
    println!("edge {edge} -> orders {orders} -> inventory {inventory}; each hop works {work:?}\n");
    println!(
        "{:<24} {:>7}  {:<22} {:<22} {:<22}",
        "caller sent", "status", "edge saw", "orders saw", "inventory saw"
    );

    // The outside caller is a plain hyper client writing the headers itself, as any service
    // speaking aio-request's wire format would.
    let caller = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for (timeout, priority) in [
        ("2", "high"),
        ("0.5", "low"),
        ("0.05", "normal"),
        ("0.001", "high"),
    ] {
        let request = http::Request::get(format!("http://{edge}/"))
            .header("x-request-timeout", timeout)
            .header("x-request-priority", priority)
            .body(Default::default())?;
        let response = caller.request(request).await?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        let report: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let cols = if status.is_success() {
            columns(report)
        } else {
            vec![
                "refused at the door".into(),
                "not reached".into(),
                "not reached".into(),
            ]
        };
        println!(
            "{:<24} {:>7}  {:<22} {:<22} {:<22}",
            format!("{timeout} s, {priority}"),
            status.as_u16(),
            cols[0],
            cols[1],
            cols[2]
        );
    }
    println!(
        "\nEach hop sees what is left after the hops before it; the priority travels unchanged."
    );
    println!(
        "A hop with too little time left does not call the next; an expired request gets 408."
    );
    Ok(())
}
