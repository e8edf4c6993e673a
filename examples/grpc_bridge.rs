//! One deadline and one priority across HTTP and gRPC hops, nothing passed by hand.
//!
//! ```text
//! cargo run --example grpc_bridge
//! ```
//!
//! Starts three servers on 127.0.0.1, each inside the server stack: `A` (axum) calls `B`
//! (tonic) through the client layers over a tonic `Channel`, and `B` calls `C` (axum) through the
//! `Client` preset. The caller gives `A` 3 s at Low priority; each hop prints what it saw, and
//! the example checks that the deadline only shrank and the priority was carried, exiting
//! non-zero if not (CI runs it).

#[path = "support/bridge.rs"]
mod bridge;
#[path = "support/context_grpc.rs"]
mod context_grpc;

use std::time::Duration;

use tower_lifeline::Priority;

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    let a = bridge::start().await;
    let timeout = Duration::from_secs(3);
    println!("caller -> A: X-Request-Timeout 3.000, X-Request-Priority low");
    let hops = bridge::call(a, timeout, Priority::Low).await;
    let mut previous = timeout.as_millis() as u64;
    for hop in &hops {
        let left = hop
            .deadline_ms
            .ok_or(format!("{} saw no deadline", hop.hop))?;
        println!(
            "{:<10} saw {left:>5} ms left, priority {}",
            hop.hop, hop.priority
        );
        if left > previous {
            return Err(format!("{}: the deadline grew, {previous} -> {left} ms", hop.hop).into());
        }
        if hop.priority != "low" {
            return Err(format!("{}: priority {} instead of low", hop.hop, hop.priority).into());
        }
        previous = left;
    }
    if hops.len() != 3 {
        return Err(format!("{} hops answered, not 3", hops.len()).into());
    }
    println!(
        "ok: the deadline shrank at every hop, HTTP -> gRPC -> HTTP, and the priority was carried"
    );
    Ok(())
}
