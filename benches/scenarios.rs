//! The scenarios of issue 8, each against real servers on 127.0.0.1, printed as tables.
//!
//! ```text
//! cargo bench --bench scenarios [-- --only NAME] [-- --requests N]
//! ```
//!
//! NAME is one of `tail`, `overload`, `priority`, `outage`, `storm`. The whole run takes about
//! a minute and stops by itself.
//!
//! 1. `tail`: Tail at Scale. A backend answers 97% of requests in about 5 ms and 3% in about
//!    200 ms. Single attempt vs hedged with a fixed delay vs hedged with percentile delays (up to
//!    two hedges, and up to one as `tower::hedge` sends) vs `tower::hedge`: p50, p99, p99.9 and
//!    extra backend load.
//! 2. `overload`: a server whose capacity is 20 requests in flight of 25 ms each (800/s) is
//!    offered 1,600/s, open loop, by callers with a 100 ms deadline: goodput (200s that arrive in
//!    time) with the deadline-aware server stack vs the bare server; fixed capacities (the best
//!    hand-tuned one included) beside the adaptive limit, which is given no capacity; then the
//!    adaptive server at half the capacity for 5 s, its limit sampled every 500 ms.
//! 3. `priority`: the same server at twice its capacity, a third of the calls each High, Normal
//!    and Low: success rate per priority.
//! 4. `outage`: the backend starts answering 503 (then hanging): time until the client's breaker
//!    trips, latency of refused calls, time until the first success once the backend is back.
//! 5. `storm`: the backend fails every request; backend calls per offered request with 3
//!    attempts per call, without and with the retry budget.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_lifeline::circuit_breaker::{CircuitBreakerSettings, CircuitOpen};
use tower_lifeline::client::Client;
use tower_lifeline::deadline::ServerDeadlineLayer;
use tower_lifeline::error::find_source;
use tower_lifeline::server::Server;
use tower_lifeline::strategy::{
    Delays, PercentileDelays, PercentileSettings, RetryBudget, Strategy, StrategyLayer,
};

type Bare = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

fn bare_client() -> Bare {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len());
    sorted[index - 1].as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// 1. Tail at Scale

#[derive(Default)]
struct Backend {
    calls: AtomicU64,
    /// 0 healthy, 1 answers 503, 2 hangs for 5 s, 3 always 503 (storm).
    mode: AtomicU8,
}

/// 97% about 5 ms (4-6 ms), 3% about 200 ms (190-210 ms).
async fn heavy_tail(State(backend): State<Arc<Backend>>) -> &'static str {
    backend.calls.fetch_add(1, Ordering::Relaxed);
    let ms = if fastrand::f64() < 0.03 {
        fastrand::u64(190..=210)
    } else {
        fastrand::u64(4..=6)
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "ok"
}

/// The hyper-util client behind `tower::hedge`, as a service of cloneable requests.
#[derive(Clone)]
struct HedgeAll;

impl tower::hedge::Policy<Request<Full<Bytes>>> for HedgeAll {
    fn clone_request(&self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        Some(req.clone())
    }

    fn can_retry(&self, _: &Request<Full<Bytes>>) -> bool {
        true
    }
}

/// Calls `call` `requests` times with `concurrency` in flight; the latencies of successes and
/// the count of failures.
async fn drive<F, Fut>(requests: usize, concurrency: usize, call: F) -> (Vec<Duration>, u64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (call, next) = (call.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            while next.fetch_add(1, Ordering::Relaxed) < requests as u64 {
                let started = Instant::now();
                if call().await {
                    latencies.push(started.elapsed());
                } else {
                    failures += 1;
                }
            }
            (latencies, failures)
        });
    }
    let mut all = Vec::with_capacity(requests);
    let mut failures = 0;
    while let Some(done) = workers.join_next().await {
        let (latencies, failed) = done.expect("worker");
        all.extend(latencies);
        failures += failed;
    }
    all.sort_unstable();
    (all, failures)
}

async fn tail_at_scale(requests: usize) {
    let backend = Arc::new(Backend::default());
    let addr = serve(
        Router::new()
            .route("/item", get(heavy_tail))
            .with_state(backend.clone()),
    )
    .await;
    let url = format!("http://{addr}/item");
    let concurrency = 16;

    let lifeline = |strategy: Strategy| {
        Client::builder()
            .strategy(StrategyLayer::new().strategy(strategy))
            .build()
            .expect("client")
    };
    // A tracker of its own for each variant: one variant's history must not set another's delays.
    let percentile = |percentile: f64| {
        PercentileDelays::new(PercentileSettings {
            percentile,
            min: Duration::from_millis(1),
            ..PercentileSettings::default()
        })
        .expect("settings")
    };
    let variants: Vec<(&str, Client)> = vec![
        ("single attempt", lifeline(Strategy::single())),
        (
            "ours: parallel x3, fixed 10 ms",
            lifeline(Strategy::parallel(
                3,
                Delays::constant(Duration::from_millis(10)),
            )),
        ),
        (
            "ours: parallel x3, k * p95 (min 1 ms)",
            lifeline(Strategy::parallel(3, Delays::percentile(percentile(95.0)))),
        ),
        (
            "ours: parallel x3, k * p97 (min 1 ms)",
            lifeline(Strategy::parallel(3, Delays::percentile(percentile(97.0)))),
        ),
        // One hedge at most, as tower::hedge sends: the like-for-like comparison.
        (
            "ours: parallel x2, p95 (min 1 ms)",
            lifeline(Strategy::parallel(2, Delays::percentile(percentile(95.0)))),
        ),
        (
            "ours: parallel x2, p97 (min 1 ms)",
            lifeline(Strategy::parallel(2, Delays::percentile(percentile(97.0)))),
        ),
    ];

    println!("\n1. Tail at Scale: backend 97% ~5 ms, 3% ~200 ms; {requests} requests, {concurrency} in flight");
    println!("| strategy | p50 ms | p99 ms | p99.9 ms | extra backend load | failures |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut single_p99 = f64::NAN;
    for (name, client) in variants {
        let call = {
            let (client, url) = (client.clone(), url.clone());
            move || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    match client.get(&url).route("/item").send().await {
                        Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
                        Err(_) => false,
                    }
                }
            }
        };
        // Warm-up: connections, and history for the percentile delays.
        drive(300, concurrency, call.clone()).await;
        let before = backend.calls.load(Ordering::Relaxed);
        let (latencies, failures) = drive(requests, concurrency, call).await;
        let calls = backend.calls.load(Ordering::Relaxed) - before;
        let p99 = percentile_ms(&latencies, 99.0);
        if single_p99.is_nan() {
            single_p99 = p99;
        }
        println!(
            "| {name} | {:.1} | {p99:.1} | {:.1} | {:+.1}% | {failures} |",
            percentile_ms(&latencies, 50.0),
            percentile_ms(&latencies, 99.9),
            (calls as f64 / requests as f64 - 1.0) * 100.0,
        );
    }

    // tower::hedge over a bare hyper-util client: one hedge at the p95 of the last period.
    // `Hedge` is not `Clone`: callers share it through a `Buffer`, as tower intends.
    let hedge = tower::hedge::Hedge::new::<Request<Full<Bytes>>>(
        bare_client(),
        HedgeAll,
        20,
        0.95,
        Duration::from_secs(2),
    );
    let hedge = tower::buffer::Buffer::new(hedge, 1024);
    let call = {
        let (hedge, url) = (hedge.clone(), url.clone());
        move || {
            let (hedge, url) = (hedge.clone(), url.clone());
            async move {
                let request = Request::get(url)
                    .body(Full::default())
                    .expect("a valid request");
                match hedge.oneshot(request).await {
                    Ok(response) => {
                        response.status() == 200 && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                }
            }
        }
    };
    // tower::hedge needs a full period of history before it hedges at all.
    drive(300, concurrency, call.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drive(300, concurrency, call.clone()).await;
    let before = backend.calls.load(Ordering::Relaxed);
    let (latencies, failures) = drive(requests, concurrency, call).await;
    let calls = backend.calls.load(Ordering::Relaxed) - before;
    println!(
        "| tower::hedge (1 hedge at p95, 2 s period) | {:.1} | {:.1} | {:.1} | {:+.1}% | {failures} |",
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
        percentile_ms(&latencies, 99.9),
        (calls as f64 / requests as f64 - 1.0) * 100.0,
    );
    println!("(p99 of single attempt: {single_p99:.1} ms; target: hedged p99 at least 10x lower with at most 6% extra)");
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. Overload and priority

/// Capacity: `WORKERS` requests of `WORK` each at a time (800/s).
const WORKERS: usize = 20;
const WORK: Duration = Duration::from_millis(25);

async fn limited_work(State(workers): State<Arc<Semaphore>>) -> &'static str {
    let _permit = workers.acquire().await.expect("open semaphore");
    tokio::time::sleep(WORK).await;
    "ok"
}

fn limited_app() -> Router {
    Router::new()
        .route("/work", get(limited_work))
        .with_state(Arc::new(Semaphore::new(WORKERS)))
}

/// One offered request's fate.
struct Fate {
    priority: usize,
    good: bool,
    status: u16,
}

/// Offers `rate` requests per second for `secs`, open loop, each with `deadline` and a priority
/// taken in turn from `priorities`; a caller stops waiting at its deadline.
async fn offer(
    addr: SocketAddr,
    rate: f64,
    secs: f64,
    deadline: Duration,
    priorities: &'static [&'static str],
) -> Vec<Fate> {
    let client = bare_client();
    let url = format!("http://{addr}/work");
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let timeout = format!("{:.3}", deadline.as_secs_f64());
    while Instant::now() < end {
        ticks.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let priority = sent as usize % priorities.len();
            let request = Request::get(&url)
                .header("x-request-timeout", &timeout)
                .header("x-request-priority", priorities[priority])
                .body(Full::default())
                .expect("a valid request");
            let client = client.clone();
            tasks.spawn(async move {
                let call = async {
                    let response = client.request(request).await.ok()?;
                    let status = response.status().as_u16();
                    response.into_body().collect().await.ok()?;
                    Some(status)
                };
                let status = tokio::time::timeout(deadline, call)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                Fate {
                    priority,
                    good: status == 200,
                    status,
                }
            });
            sent += 1;
        }
    }
    let mut fates = Vec::new();
    while let Some(fate) = tasks.join_next().await {
        fates.push(fate.expect("request task"));
    }
    fates
}

/// The deadline-aware server stack over the limited app. `capacity` is the shedder's: a fifth of
/// it is kept for High, so Normal traffic alone uses at most four fifths. `None`: the adaptive
/// limit, no capacity configured.
fn lifeline_limited(capacity: impl Into<Option<usize>>) -> Server {
    let mut builder = Server::builder();
    if let Some(capacity) = capacity.into() {
        builder = builder.capacity(capacity);
    }
    builder
        .registry(prometheus::Registry::new())
        .deadline(ServerDeadlineLayer::new().cancel_on_expiry(true))
        .build(limited_app())
        .expect("server")
}

async fn overload(secs: f64) {
    let capacity = WORKERS as f64 / WORK.as_secs_f64();
    let rate = 2.0 * capacity;
    let deadline = Duration::from_millis(100);
    println!(
        "\n2. Overload: capacity {capacity:.0}/s ({WORKERS} x {} ms), offered {rate:.0}/s for {secs} s, caller deadline {} ms",
        WORK.as_millis(),
        deadline.as_millis()
    );
    println!("| server | offered | good (200 in time) | goodput/s | goodput / capacity | 503 | timed out |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let bare = serve(limited_app()).await;
    let at_workers = lifeline_limited(WORKERS);
    let above_workers = lifeline_limited(WORKERS * 5 / 4);
    let adaptive = lifeline_limited(None);
    let variants = [
        ("bare axum".to_owned(), bare),
        (
            format!(
                "tower-lifeline, capacity {WORKERS} (Normal may use {})",
                WORKERS * 4 / 5
            ),
            serve(at_workers.router()).await,
        ),
        (
            format!(
                "tower-lifeline, capacity {} (Normal may use {WORKERS})",
                WORKERS * 5 / 4
            ),
            serve(above_workers.router()).await,
        ),
        (
            "tower-lifeline, adaptive limit (no capacity)".to_owned(),
            serve(adaptive.router()).await,
        ),
    ];
    let adaptive_addr = variants[3].1;
    for (name, addr) in variants {
        let fates = offer(addr, rate, secs, deadline, &["normal"]).await;
        let good = fates.iter().filter(|f| f.good).count();
        let goodput = good as f64 / secs;
        println!(
            "| {name} | {} | {good} | {goodput:.0} | {:.2} | {} | {} |",
            fates.len(),
            goodput / capacity,
            fates.iter().filter(|f| f.status == 503).count(),
            fates.iter().filter(|f| f.status == 0).count(),
        );
        if addr == adaptive_addr {
            println!(
                "|   (limit at the end of the overload: {}) | | | | | | |",
                adaptive.load_shed_stats().limit
            );
        }
        // Let the bare server's queue drain before the next variant.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The load drops to half the capacity: how the adaptive limit and goodput follow.
    let low = tokio::spawn(offer(adaptive_addr, rate / 4.0, 5.0, deadline, &["normal"]));
    let mut limits = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        limits.push(adaptive.load_shed_stats().limit.to_string());
    }
    let fates = low.await.expect("offer task");
    let good = fates.iter().filter(|f| f.good).count();
    println!(
        "\nadaptive limit at 0.5x for 5 s: limit every 500 ms {}; {good} of {} answered 200 in time",
        limits.join(", "),
        fates.len()
    );
}

async fn priority(secs: f64) {
    let capacity = WORKERS as f64 / WORK.as_secs_f64();
    let rate = 2.0 * capacity;
    let deadline = Duration::from_secs(1);
    println!(
        "\n3. Priority: capacity {capacity:.0}/s, offered {rate:.0}/s for {secs} s, a third each high/normal/low, deadline {} ms",
        deadline.as_millis()
    );
    println!("| server | high ok | normal ok | low ok | goodput / capacity |");
    println!("|---|---:|---:|---:|---:|");
    const PRIORITIES: &[&str] = &["high", "normal", "low"];
    let bare = serve(limited_app()).await;
    let server = lifeline_limited(WORKERS);
    let ours = serve(server.router()).await;
    let adaptive = lifeline_limited(None);
    let adaptive = serve(adaptive.router()).await;
    for (name, addr) in [
        ("bare axum", bare),
        ("tower-lifeline, capacity 20", ours),
        ("tower-lifeline, adaptive limit (no capacity)", adaptive),
    ] {
        let fates = offer(addr, rate, secs, deadline, PRIORITIES).await;
        let rate_of = |p: usize| {
            let all = fates.iter().filter(|f| f.priority == p).count();
            let good = fates.iter().filter(|f| f.priority == p && f.good).count();
            good as f64 / all.max(1) as f64 * 100.0
        };
        let good = fates.iter().filter(|f| f.good).count() as f64;
        println!(
            "| {name} | {:.1}% | {:.1}% | {:.1}% | {:.2} |",
            rate_of(0),
            rate_of(1),
            rate_of(2),
            good / secs / capacity
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Outage

async fn switchable(State(backend): State<Arc<Backend>>) -> StatusCode {
    backend.calls.fetch_add(1, Ordering::Relaxed);
    match backend.mode.load(Ordering::Relaxed) {
        0 => StatusCode::OK,
        2 => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Outcome of one call through the client: ok, refused by the breaker, or failed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Refused,
    Failed,
}

async fn call(client: &Client, url: &str) -> Outcome {
    match client.get(url).send().await {
        Ok(response) if response.status() == 200 => {
            let _ = response.bytes().await;
            Outcome::Ok
        }
        Ok(response) => {
            let _ = response.bytes().await;
            Outcome::Failed
        }
        Err(err) if find_source::<CircuitOpen>(err.as_ref()).is_some() => Outcome::Refused,
        Err(_) => Outcome::Failed,
    }
}

async fn outage() {
    let backend = Arc::new(Backend::default());
    let addr = serve(
        Router::new()
            .route("/item", get(switchable))
            .with_state(backend.clone()),
    )
    .await;
    let url = format!("http://{addr}/item");
    let break_duration = Duration::from_secs(1);
    println!(
        "\n4. Outage: the client's breaker at its defaults (10% failures over >= 100 calls), break {} s; 8 callers",
        break_duration.as_secs()
    );
    println!("| backend | time to trip ms | backend calls before trip | refused call p50 us | p99 us | time to first success after recovery ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, mode) in [("answers 503", 1u8), ("hangs (100 ms attempt timeout)", 2)] {
        let client = Client::builder()
            .strategy(StrategyLayer::new().strategy(Strategy::single()))
            .attempt_timeout(Duration::from_millis(100))
            .circuit_breaker(Some(
                CircuitBreakerSettings::builder()
                    .break_duration(break_duration)
                    .build()
                    .expect("settings"),
            ))
            .build()
            .expect("client");
        // Healthy traffic first.
        backend.mode.store(0, Ordering::Relaxed);
        drive(200, 8, {
            let (client, url) = (client.clone(), url.clone());
            move || {
                let (client, url) = (client.clone(), url.clone());
                async move { call(&client, &url).await == Outcome::Ok }
            }
        })
        .await;

        // The outage: callers until the first refusal.
        let calls_before = backend.calls.load(Ordering::Relaxed);
        backend.mode.store(mode, Ordering::Relaxed);
        let outage_started = Instant::now();
        let tripped = Arc::new(tokio::sync::Notify::new());
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (client, url, tripped) = (client.clone(), url.clone(), tripped.clone());
            callers.spawn(async move {
                loop {
                    if call(&client, &url).await == Outcome::Refused {
                        tripped.notify_one();
                        return;
                    }
                    if outage_started.elapsed() > Duration::from_secs(10) {
                        return;
                    }
                }
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), tripped.notified()).await;
        let trip = outage_started.elapsed();
        let calls_to_trip = backend.calls.load(Ordering::Relaxed) - calls_before;
        callers.abort_all();
        while callers.join_next().await.is_some() {}

        // Refused calls, one at a time: the whole client call, URL parsing included.
        let mut refused = Vec::new();
        for _ in 0..2_000 {
            let started = Instant::now();
            if call(&client, &url).await == Outcome::Refused {
                refused.push(started.elapsed());
            }
        }
        refused.sort_unstable();

        // Recovery: the backend is back; how long until a call succeeds.
        backend.mode.store(0, Ordering::Relaxed);
        let recovery_started = Instant::now();
        while call(&client, &url).await != Outcome::Ok {
            if recovery_started.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let recovery = recovery_started.elapsed();
        println!(
            "| {name} | {:.0} | {calls_to_trip} | {:.1} | {:.1} | {:.0} |",
            trip.as_secs_f64() * 1000.0,
            percentile_ms(&refused, 50.0) * 1000.0,
            percentile_ms(&refused, 99.0) * 1000.0,
            recovery.as_secs_f64() * 1000.0,
        );
    }
    println!("(a refused call inside the breaker alone: see `cargo bench --bench overhead`, group refused)");
}

// ---------------------------------------------------------------------------------------------
// 5. Retry storm

async fn storm(requests: usize) {
    let backend = Arc::new(Backend::default());
    backend.mode.store(3, Ordering::Relaxed);
    let addr = serve(
        Router::new()
            .route("/item", get(switchable))
            .with_state(backend.clone()),
    )
    .await;
    let url = format!("http://{addr}/item");
    println!("\n5. Retry storm: the backend answers 503 to everything; {requests} calls, 16 in flight, 3 attempts each (1 ms apart)");
    println!("| client | backend calls per offered request | duration s |");
    println!("|---|---:|---:|");
    let retries = Strategy::sequential(3, Delays::constant(Duration::from_millis(1)));
    let variants = [
        ("no budget, no breaker", None, None),
        (
            "budget (20% + 10/s), no breaker",
            Some(RetryBudget::new(0.2, 10).expect("budget")),
            None,
        ),
        (
            "budget and breaker (defaults)",
            Some(RetryBudget::new(0.2, 10).expect("budget")),
            Some(CircuitBreakerSettings::default()),
        ),
    ];
    for (name, budget, breaker) in variants {
        let client = Client::builder()
            .strategy(
                StrategyLayer::new()
                    .strategy(retries.clone())
                    .budget(budget),
            )
            .circuit_breaker(breaker)
            .build()
            .expect("client");
        let before = backend.calls.load(Ordering::Relaxed);
        let started = Instant::now();
        drive(requests, 16, {
            let (client, url) = (client.clone(), url.clone());
            move || {
                let (client, url) = (client.clone(), url.clone());
                async move { call(&client, &url).await == Outcome::Ok }
            }
        })
        .await;
        let calls = backend.calls.load(Ordering::Relaxed) - before;
        println!(
            "| {name} | {:.3} | {:.1} |",
            calls as f64 / requests as f64,
            started.elapsed().as_secs_f64()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only = value("--only");
    let requests: usize = value("--requests").map_or(10_000, |v| v.parse().expect("--requests N"));
    let runs = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        println!("scenarios: loopback, 2 worker threads; servers and callers share the machine");
        if runs("tail") {
            tail_at_scale(requests).await;
        }
        if runs("overload") {
            overload(5.0).await;
        }
        if runs("priority") {
            priority(5.0).await;
        }
        if runs("outage") {
            outage().await;
        }
        if runs("storm") {
            storm(requests / 4).await;
        }
    });
}
