//! A tonic gRPC service inside the server stack, on a real port.
//!
//! ```text
//! cargo run --example grpc_server -- --addr 127.0.0.1:50051 [--bare]
//! ```
//!
//! It serves `lifeline.example.Context`, whose unary method `Get` takes an empty message and
//! answers `ContextReply { string json = 1; }`: the request context as JSON, with the keys of the
//! HTTP example's `/context`, `deadline_ms` (what is left of the caller's `grpc-timeout`) and
//! `priority` (from `x-request-priority`). A deadline too short to meet is refused with
//! `DEADLINE_EXCEEDED`, shedding with `UNAVAILABLE`, both in gRPC's own terms, and `/metrics`
//! counts calls by gRPC method and status. `--bare` serves the same service with tonic's own
//! server and no tower-lifeline layer: the context is then empty (`deadline_ms` null).
//!
//! The service is written by hand in `support/context_grpc.rs` (no `protoc`); any gRPC client
//! can call it, Python's `grpcio` included (the tests do).

#[path = "support/context_grpc.rs"]
mod context_grpc;

use context_grpc::{ContextReply, ContextServer};
use serde_json::json;
use tower_lifeline::server::Server;
use tower_lifeline::shutdown::Drained;
use tower_lifeline::{Priority, RequestContext};

const HELP: &str = "\
usage: grpc_server [--addr HOST:PORT] [--bare]

    --addr HOST:PORT  where to listen (default 127.0.0.1:50051)
    --bare            tonic's own server, no tower-lifeline layer

SERVICE: lifeline.example.Context/Get -> ContextReply { json: {\"deadline_ms\", \"priority\"} }";

/// The service: `Get` answers with the context the stack put around the handler.
fn context_service() -> ContextServer {
    ContextServer::new(|_request| async {
        let ctx = RequestContext::current().unwrap_or(RequestContext::new(None, Priority::Normal));
        let json = json!({
            "deadline_ms": ctx.deadline().map(|d| d.remaining().as_millis() as u64),
            "priority": ctx.priority().as_str(),
        });
        Ok(tonic::Response::new(ContextReply {
            json: json.to_string(),
        }))
    })
}

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    let mut addr = "127.0.0.1:50051".to_owned();
    let mut bare = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "--bare" => bare = true,
            "-h" | "--help" => {
                println!("{HELP}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n\n{HELP}").into()),
        }
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;

    if bare {
        println!("bare tonic on http://{addr} (no tower-lifeline layers)");
        tonic::transport::Server::builder()
            .add_service(context_service())
            .serve_with_incoming_shutdown(tokio_stream_of(listener), async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        return Ok(());
    }

    let routes = tonic::service::Routes::new(context_service()).into_axum_router();
    let server = Server::builder().build(routes)?;
    server.shutdown().listen_for_signals();
    println!(
        "tower-lifeline server stack serving gRPC on http://{addr} (SIGTERM or Ctrl-C drains)"
    );
    match server.serve(listener).await? {
        Drained::Completed => println!("drained: every call finished"),
        Drained::GraceExpired { in_flight } => {
            println!("grace period over with {in_flight} calls unfinished")
        }
        Drained::Forced { in_flight } => {
            println!("second signal: exiting with {in_flight} calls unfinished")
        }
    }
    Ok(())
}

/// The listener's connections as the stream tonic's server takes.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
