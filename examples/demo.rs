//! The demo: what tower-lifeline does for a service whose backend is flaky.
//!
//! In one process, on 127.0.0.1:
//!
//! - a **backend** with heavy-tailed latency (97% of answers in about 5 ms, 3% in about 200 ms)
//!   and bursts of 503;
//! - a **frontend** with the server stack (deadline, priority) whose handler calls the backend
//!   through the `Client` preset, one client per strategy;
//! - a **load driver** that calls the frontend with a 2 s deadline, then prints one row per
//!   strategy: latency percentiles, success rate, and the extra load put on the backend;
//! - an **outage**: the backend fails every request for 2 s; the circuit breaker opens, refuses
//!   calls at once instead of sending them, probes, and closes again when the backend is back;
//! - a **deadline** round: callers whose time is (nearly) gone are refused before any work.
//!
//! It prints a line as each phase starts, then the report, and draws the latency curves and the
//! breaker's timeline in an SVG (`target/demo.svg` unless `--svg` says otherwise).
//!
//! Run: `cargo run --example demo` (`-- --help` for options). It finishes in well under a minute.

#[path = "support/demo_svg.rs"]
mod demo_svg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_lifeline::circuit_breaker::{
    CircuitBreakerSettings, CircuitOpen, CircuitState, Transition,
};
use tower_lifeline::client::Client;
use tower_lifeline::deadline::DeadlineExceeded;
use tower_lifeline::error::find_source;
use tower_lifeline::strategy::{
    Delays, PercentileDelays, PercentileSettings, Strategy, StrategyLayer,
};
use tower_lifeline::ServiceBuilderExt;

use demo_svg::{CallOutcome, Curve, Timeline};

const HELP: &str = "\
demo: request strategies and deadlines against a flaky backend, on loopback

USAGE: cargo run --example demo [-- OPTIONS]

OPTIONS:
    --requests N      requests per strategy (default 2000)
    --concurrency N   requests in flight at once (default 16)
    --svg PATH        where to draw the picture (default target/demo.svg)
    -h, --help        print this help

The backend answers 97% of requests in about 5 ms and 3% in about 200 ms, and answers 503 to
10 requests in a row out of every 500. Each strategy gets its own client (and retry budget).";

const STRATEGIES: [&str; 4] = [
    "single",
    "sequential",
    "parallel_fixed",
    "parallel_percentile",
];

/// The flaky backend's counters.
#[derive(Default)]
struct Backend {
    calls: AtomicU64,
    /// While set, every request fails at once.
    outage: AtomicBool,
}

async fn backend_item(State(backend): State<Arc<Backend>>) -> StatusCode {
    let n = backend.calls.fetch_add(1, Ordering::Relaxed);
    if backend.outage.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // Bursts: 10 consecutive 503s out of every 500 requests.
    if n % 500 < 10 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // Heavy tail: 3% of answers take about 200 ms, the rest about 5 ms.
    let millis = if fastrand::u32(0..100) < 3 {
        fastrand::u64(150..250)
    } else {
        fastrand::u64(4..7)
    };
    tokio::time::sleep(Duration::from_millis(millis)).await;
    StatusCode::OK
}

/// The frontend: calls the backend through the client of the strategy named in the path.
#[derive(Clone)]
struct Frontend {
    backend: SocketAddr,
    clients: Arc<Vec<(&'static str, Client)>>,
    refused_to_send: Arc<AtomicU64>,
}

async fn frontend_work(State(front): State<Frontend>, Path(strategy): Path<String>) -> StatusCode {
    let Some((_, client)) = front.clients.iter().find(|(name, _)| *name == strategy) else {
        return StatusCode::NOT_FOUND;
    };
    match client
        .get(format!("http://{}/item", front.backend))
        .route("/item")
        .send()
        .await
    {
        Ok(response) => response.status(),
        Err(err) => {
            if find_source::<DeadlineExceeded>(err.as_ref()).is_some_and(|e| !e.was_sent()) {
                front.refused_to_send.fetch_add(1, Ordering::Relaxed);
            }
            StatusCode::GATEWAY_TIMEOUT
        }
    }
}

/// Frontend work that takes 25 ms before calling the backend: a caller with less time than that
/// is still admitted at the door, but the backend call is refused for want of time.
async fn frontend_slow(state: State<Frontend>) -> StatusCode {
    tokio::time::sleep(Duration::from_millis(25)).await;
    frontend_work(state, Path("single".to_owned())).await
}

async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn client_for(strategy: &str) -> Result<Client, tower_lifeline::BoxError> {
    let strategy = match strategy {
        "single" => Strategy::single(),
        "sequential" => Strategy::sequential(
            3,
            Delays::linear(Duration::from_millis(10), Duration::from_millis(10)),
        ),
        "parallel_fixed" => Strategy::parallel(3, Delays::constant(Duration::from_millis(15))),
        _ => {
            let settings = PercentileSettings {
                min: Duration::from_millis(2),
                ..PercentileSettings::default()
            };
            Strategy::parallel(3, Delays::percentile(PercentileDelays::new(settings)?))
        }
    };
    Ok(Client::builder()
        .service_name("frontend")
        .strategy(StrategyLayer::new().strategy(strategy))
        .build()?)
}

/// The load driver: a plain hyper client, so that it writes `X-Request-Timeout` itself as any
/// outside caller would.
type Caller = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// One caller request to the frontend: its status (0 for a transport failure) and latency.
async fn call(caller: &Caller, url: &str, timeout: &str) -> (u16, Duration) {
    let started = Instant::now();
    let request = http::Request::get(url)
        .header("x-request-timeout", timeout)
        .body(Default::default());
    let status = match request {
        Ok(request) => match caller.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body so the connection goes back to the pool.
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                status
            }
            Err(_) => 0,
        },
        Err(_) => 0,
    };
    (status, started.elapsed())
}

/// Sends `requests` calls to `url` with `concurrency` in flight.
async fn drive(
    caller: &Caller,
    url: &str,
    timeout: &str,
    requests: usize,
    concurrency: usize,
) -> Vec<(u16, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (caller, url, timeout, next) = (
            caller.clone(),
            url.to_owned(),
            timeout.to_owned(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut results = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests as u64 {
                results.push(call(&caller, &url, &timeout).await);
            }
            results
        });
    }
    let mut all = Vec::with_capacity(requests);
    while let Some(results) = workers.join_next().await {
        all.extend(results.unwrap_or_default());
    }
    all
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// Runs load through a client with a circuit breaker while the backend goes down for 2 s and
/// comes back, reports what the breaker did, and returns the timeline for the picture.
async fn outage(
    backend: &Arc<Backend>,
    addr: SocketAddr,
    concurrency: usize,
) -> Result<Timeline, tower_lifeline::BoxError> {
    let phase_start = Instant::now();
    let since_start = move || phase_start.elapsed().as_secs_f64();
    let calls: Arc<Mutex<Vec<(f64, CallOutcome)>>> = Arc::default();
    let states: Arc<Mutex<Vec<(f64, CircuitState)>>> = Arc::default();
    let settings = CircuitBreakerSettings::builder()
        .failure_threshold(0.5)
        .minimum_throughput(20)
        .sampling_duration(Duration::from_secs(1))
        .break_duration(Duration::from_millis(250))
        .build()?;
    let client = Client::builder()
        .service_name("frontend")
        .strategy(StrategyLayer::new().strategy(Strategy::single()))
        .circuit_breaker(Some(settings))
        .build()?;
    let (trips, failed_probes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    if let Some(breakers) = client.breakers() {
        let (trips, failed_probes) = (trips.clone(), failed_probes.clone());
        breakers.on_transition(move |t: &Transition<'_>| match (t.from, t.to) {
            (CircuitState::Closed, CircuitState::Open) => {
                trips.fetch_add(1, Ordering::Relaxed);
            }
            (CircuitState::HalfOpen, CircuitState::Open) => {
                failed_probes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
        let states = states.clone();
        breakers.on_transition(move |t: &Transition<'_>| {
            lock(&states).push((since_start(), t.to));
        });
    }

    let (offered, refused, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let recovered_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let outage_over = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(8) {
        let (client, offered, refused, failed) = (
            client.clone(),
            offered.clone(),
            refused.clone(),
            failed.clone(),
        );
        let (recovered_at, outage_over, stop, backend, calls) = (
            recovered_at.clone(),
            outage_over.clone(),
            stop.clone(),
            backend.clone(),
            calls.clone(),
        );
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let during = backend.outage.load(Ordering::Relaxed);
                let result = client
                    .get(format!("http://{addr}/item"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                let outcome = match &result {
                    Ok(response) if response.status() == StatusCode::OK => CallOutcome::Succeeded,
                    Err(err) if find_source::<CircuitOpen>(err.as_ref()).is_some() => {
                        CallOutcome::Refused
                    }
                    _ => CallOutcome::Failed,
                };
                lock(&calls).push((since_start(), outcome));
                match result {
                    Ok(response) if response.status() == StatusCode::OK => {
                        let over = *outage_over.lock().unwrap_or_else(|e| e.into_inner());
                        if over.is_some() {
                            recovered_at
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert_with(Instant::now);
                        }
                    }
                    Ok(_) if during => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) if during && find_source::<CircuitOpen>(err.as_ref()).is_some() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if during {
                    offered.fetch_add(1, Ordering::Relaxed);
                }
                // About 1,000 calls a second in all: enough to trip, not a flood.
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let backend_before = backend.calls.load(Ordering::Relaxed);
    backend.outage.store(true, Ordering::Relaxed);
    let down_at = since_start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    backend.outage.store(false, Ordering::Relaxed);
    let up_at = since_start();
    let backend_during = backend.calls.load(Ordering::Relaxed) - backend_before;
    let came_back = Instant::now();
    *outage_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(came_back);
    let waited = Instant::now();
    while recovered_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_none()
        && waited.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A little of the recovered backend in the picture too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}

    let offered = offered.load(Ordering::Relaxed);
    println!(
        "breaker: backend down for 2.0 s: {} calls offered, {} refused at once by the open breaker, \
         {} failed at the backend (the backend saw {} calls); {} trip(s), {} failed probe(s)",
        offered,
        refused.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        backend_during,
        trips.load(Ordering::Relaxed),
        failed_probes.load(Ordering::Relaxed),
    );
    match *recovered_at.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(at) => println!(
            "breaker: first success {:.0} ms after the backend came back (break 250 ms, then one probe)",
            at.saturating_duration_since(came_back).as_secs_f64() * 1000.0
        ),
        None => println!("breaker: no success within 5 s of the backend coming back"),
    }
    let end = since_start();
    let calls = std::mem::take(&mut *lock(&calls));
    let states = std::mem::take(&mut *lock(&states));
    Ok(Timeline {
        outage: (down_at, up_at),
        end,
        calls,
        states,
    })
}

/// The lock, whether or not a worker panicked while holding it (the data is only counts).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Options {
    requests: usize,
    concurrency: usize,
    svg: PathBuf,
}

fn options() -> Result<Option<Options>, String> {
    let mut options = Options {
        requests: 2000,
        concurrency: 16,
        svg: PathBuf::from("target/demo.svg"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--requests" => options.requests = number("--requests")?,
            "--concurrency" => options.concurrency = number("--concurrency")?,
            "--svg" => {
                options.svg = args.next().ok_or("--svg needs a path")?.into();
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(Some(options))
}

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    let Some(options) = options()? else {
        println!("{HELP}");
        return Ok(());
    };
    let started = Instant::now();

    let backend = Arc::new(Backend::default());
    let backend_addr = serve(
        Router::new()
            .route("/item", get(backend_item))
            .with_state(backend.clone()),
    )
    .await?;

    let mut clients = Vec::new();
    for name in STRATEGIES {
        clients.push((name, client_for(name)?));
    }
    let frontend = Frontend {
        backend: backend_addr,
        clients: Arc::new(clients),
        refused_to_send: Arc::default(),
    };
    let app = Router::new()
        .route("/work/{strategy}", get(frontend_work))
        .route("/slow", get(frontend_slow))
        .with_state(frontend.clone())
        .layer(
            ServiceBuilder::new()
                .server_deadline(Duration::from_secs(20))
                .server_priority(),
        );
    let frontend_addr = serve(app).await?;

    let caller: Caller =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(options.concurrency)
            .build_http();

    println!(
        "backend {backend_addr}: 97% ~5 ms, 3% ~200 ms, 503 bursts; frontend {frontend_addr}; \
         {} requests per strategy, {} in flight, 2 s deadline\n",
        options.requests, options.concurrency
    );
    let phases = STRATEGIES.len() + 2;
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for (i, name) in STRATEGIES.into_iter().enumerate() {
        println!(
            "[{}/{phases}] strategy {name}: 100 warm-up requests, then {}",
            i + 1,
            options.requests
        );
        let url = format!("http://{frontend_addr}/work/{name}");
        // Warm up: connections, and the percentile tracker's first observations.
        drive(&caller, &url, "2", 100, options.concurrency).await;
        let before = backend.calls.load(Ordering::Relaxed);
        let results = drive(&caller, &url, "2", options.requests, options.concurrency).await;
        let backend_calls = backend.calls.load(Ordering::Relaxed) - before;
        let mut latencies: Vec<Duration> = results.iter().map(|(_, l)| *l).collect();
        latencies.sort();
        let ok = results.iter().filter(|(s, _)| *s == 200).count();
        rows.push(format!(
            "{:<22} {:>8.1} {:>8.1} {:>8.1} {:>12.1} {:>15.1}",
            name,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            percentile(&latencies, 99.9),
            100.0 * ok as f64 / results.len() as f64,
            100.0 * (backend_calls as f64 / results.len() as f64 - 1.0),
        ));
        curves.push(Curve {
            name,
            sorted_ms: latencies.iter().map(|l| l.as_secs_f64() * 1000.0).collect(),
        });
    }
    println!(
        "\n{:<22} {:>8} {:>8} {:>8} {:>12} {:>15}",
        "strategy", "p50_ms", "p99_ms", "p999_ms", "success_pct", "extra_load_pct"
    );
    for row in rows {
        println!("{row}");
    }

    println!(
        "\n[{}/{phases}] outage: the backend fails every request for 2 s, under load through a circuit breaker",
        phases - 1
    );
    let timeline = outage(&backend, backend_addr, options.concurrency).await?;

    println!("\n[{phases}/{phases}] deadlines: callers with 3 ms and with 20 ms left");

    // Deadlines: callers with 3 ms left are refused at the door (408); callers with 20 ms left
    // get in, but after the frontend's 25 ms of work the backend call is not sent.
    let backend_before = backend.calls.load(Ordering::Relaxed);
    let at_door = drive(
        &caller,
        &format!("http://{frontend_addr}/work/single"),
        "0.003",
        200,
        8,
    )
    .await;
    let refused_at_door = at_door.iter().filter(|(s, _)| *s == 408).count();
    let late = drive(
        &caller,
        &format!("http://{frontend_addr}/slow"),
        "0.02",
        200,
        8,
    )
    .await;
    let backend_reached = backend.calls.load(Ordering::Relaxed) - backend_before;
    println!(
        "deadline: {refused_at_door} of {} requests with 3 ms left refused at the door with 408",
        at_door.len()
    );
    println!(
        "deadline: {} of {} requests with 20 ms left admitted, but the backend call not sent ({} reached the backend)",
        frontend.refused_to_send.load(Ordering::Relaxed),
        late.len(),
        backend_reached,
    );
    let title = format!(
        "tower-lifeline demo: {} requests per strategy, {} in flight",
        options.requests, options.concurrency
    );
    let picture = demo_svg::render(&curves, &timeline, &title);
    if let Some(dir) = options.svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.svg, picture)?;
    println!("\npicture: {}", options.svg.display());
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
