//! The `Server` preset with no capacity configured, on real loopback sockets: under twice the
//! load its handler can take, the adaptive limit keeps the handler busy and the callers' answers
//! in time, High gets through, and when the load drops the limit lets everyone in again.
//!
//! Sized for CI on a shared machine (100 requests per second of capacity); the figures at 800/s
//! are in `benches/scenarios.rs` (`--only overload`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::Registry;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_lifeline::metrics;
use tower_lifeline::server::Server;

/// The handler can do `WORKERS` requests of `WORK` at a time: 100 per second.
const WORKERS: usize = 5;
const WORK: Duration = Duration::from_millis(50);
const CAPACITY: f64 = WORKERS as f64 / 0.05;

fn app() -> Router {
    Router::new()
        .route(
            "/work",
            get(|State(workers): State<Arc<Semaphore>>| async move {
                let _permit = workers.acquire().await.unwrap();
                tokio::time::sleep(WORK).await;
                "ok"
            }),
        )
        .with_state(Arc::new(Semaphore::new(WORKERS)))
}

/// (priority, status (0 when the caller gave up at its deadline), order of sending)
type Fate = (usize, u16, u64);

/// Offers `rate` requests a second for `secs`, open loop, each with a 500 ms deadline and a
/// priority taken in turn from `priorities`.
async fn offer(addr: SocketAddr, rate: f64, secs: f64, priorities: &'static [&str]) -> Vec<Fate> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let deadline = Duration::from_millis(500);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    while started.elapsed().as_secs_f64() < secs {
        ticks.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let priority = sent as usize % priorities.len();
            let request = Request::get(format!("http://{addr}/work"))
                .header("x-request-timeout", "0.5")
                .header("x-request-priority", priorities[priority])
                .body(Full::default())
                .unwrap();
            let client = client.clone();
            let index = sent;
            tasks.spawn(async move {
                let call = async {
                    let response = client.request(request).await.ok()?;
                    let status = response.status().as_u16();
                    response.into_body().collect().await.ok()?;
                    Some(status)
                };
                let status = tokio::time::timeout(deadline, call).await.ok().flatten();
                (priority, status.unwrap_or(0), index)
            });
            sent += 1;
        }
    }
    let mut fates = Vec::new();
    while let Some(fate) = tasks.join_next().await {
        fates.push(fate.unwrap());
    }
    fates
}

fn good(fates: &[Fate], priority: Option<usize>) -> (usize, usize) {
    let of = |f: &&Fate| priority.is_none_or(|p| f.0 == p);
    let all = fates.iter().filter(of).count();
    let good = fates.iter().filter(of).filter(|f| f.1 == 200).count();
    (good, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_capacity_configured_overload_keeps_goodput_and_high_and_the_limit_recovers() {
    let server = Server::builder()
        .registry(Registry::new())
        .build(app())
        .unwrap();
    let registry = server.registry().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = server.shutdown().clone();
    let limit_of = {
        let registry = registry.clone();
        move || -> usize {
            let text = metrics::render(&registry).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("http_server_concurrency_limit "))
                .unwrap_or_else(|| panic!("no limit gauge:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        }
    };
    let serving = tokio::spawn(server.serve(listener));

    // Twice the capacity for 4 s, a third each High, Normal and Low.
    const SECS: f64 = 4.0;
    let fates = offer(addr, 2.0 * CAPACITY, SECS, &["high", "normal", "low"]).await;
    let (all_good, offered) = good(&fates, None);
    let (high_good, high) = good(&fates, Some(0));
    let goodput = all_good as f64 / SECS / CAPACITY;
    let limit_under_overload = limit_of();
    eprintln!(
        "overload: {offered} offered, goodput {goodput:.2} of capacity, High {high_good}/{high}, limit {limit_under_overload}"
    );
    // Generous for a shared CI machine; the bench holds the real target (0.90).
    assert!(goodput >= 0.7, "goodput {goodput:.2} of capacity");
    assert!(
        high_good as f64 >= 0.95 * high as f64,
        "High {high_good}/{high}"
    );

    // Half the capacity: within 5 s the limit lets every caller in again.
    let mut low = offer(addr, 0.5 * CAPACITY, 5.0, &["normal"]).await;
    low.sort_by_key(|f| f.2);
    // The calls of the last 2 s.
    let late: Vec<_> = low.iter().rev().take(100).collect();
    let late_good = late.iter().filter(|f| f.1 == 200).count();
    eprintln!(
        "at half the capacity: limit {}, the last {} calls: {late_good} answered 200",
        limit_of(),
        late.len()
    );
    assert!(
        late_good as f64 >= 0.95 * late.len() as f64,
        "{late_good}/{}",
        late.len()
    );
    shutdown.trigger();
    serving.await.unwrap().unwrap();
}
