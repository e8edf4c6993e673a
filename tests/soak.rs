//! Soak: a million requests with random paths, hosts and service names through the whole client
//! stack (metrics, deadline, hedging strategy with percentile delays, circuit breaker per
//! destination, propagation restricted to half the hosts) and the `Server` preset, on 64
//! loopback addresses. Resident memory must stay flat; breaker scopes, percentile trackers and
//! metric label sets must stay within their bounds.
//!
//! Not run by CI (it takes minutes). Run it with:
//!
//! ```text
//! cargo test --release --test soak -- --ignored --nocapture
//! SOAK_REQUESTS=200000 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! It stops by itself after `SOAK_REQUESTS` (default 1,000,000) or 15 minutes, whichever comes
//! first, and sends traffic to 127.0.0.1 to 127.0.0.64 only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::Registry;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifeline::body::ReplayBody;
use tower_lifeline::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerSettings};
use tower_lifeline::deadline::ClientDeadlineLayer;
use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig};
use tower_lifeline::propagation::PropagateLayer;
use tower_lifeline::server::Server;
use tower_lifeline::strategy::{
    Delays, MethodStrategies, PercentileDelays, PercentileSettings, Strategy, StrategyLayer,
};

const HOSTS: u8 = 64;
const MAX_SCOPES: usize = 16;
const MAX_TRACKED: usize = 50;
const MAX_LABEL_SETS: usize = 200;
const WORKERS: usize = 64;
const TIME_LIMIT: Duration = Duration::from_secs(15 * 60);

/// A small xorshift: the test needs varied input, not a good generator.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Series of the histograms in a rendered registry (one `_count` line per label set).
fn series(registry: &Registry) -> usize {
    metrics::render(registry)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("_count{"))
        .count()
}

#[test]
#[ignore = "soak: minutes long; run by hand (see the module docs)"]
fn a_million_requests_keep_memory_flat_and_every_table_bounded() {
    let total: u64 = std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(soak(total));
}

async fn soak(total: u64) {
    // The server: the preset on 64 loopback addresses.
    let server_registry = Registry::new();
    let config = MetricsConfig {
        max_label_sets: MAX_LABEL_SETS,
        max_server_label_sets: MAX_LABEL_SETS,
        ..MetricsConfig::default()
    };
    let app = Router::new().route("/items/{id}", get(|| async { "item" }));
    let server = Server::builder()
        .registry(server_registry.clone())
        .metrics(config.clone())
        .build(app)
        .unwrap();
    let mut addrs = Vec::new();
    for host in 1..=HOSTS {
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.".to_owned() + &host.to_string(), 0))
                .await
                .unwrap();
        addrs.push(listener.local_addr().unwrap());
        let router = server.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
    }

    // The client: the whole stack, outermost first.
    let client_registry = Registry::new();
    let client_metrics = ClientMetrics::register(&client_registry, config).unwrap();
    let tracker = PercentileDelays::new(PercentileSettings {
        max_keys: MAX_TRACKED,
        ..PercentileSettings::default()
    })
    .unwrap();
    let breaker = CircuitBreakerLayer::new(
        CircuitBreakerSettings::builder()
            .max_scopes(MAX_SCOPES)
            .build()
            .unwrap(),
    )
    .return_error();
    let breakers = breaker.registry();
    let allowed: Vec<String> = (1..=HOSTS / 2).map(|h| format!("127.0.0.{h}")).collect();
    let transport = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4)
        .build_http::<ReplayBody<Full<Bytes>>>();
    let stack = ServiceBuilder::new()
        .layer(client_metrics.call_layer())
        .layer(ClientDeadlineLayer::new().write_header(false))
        .layer(
            StrategyLayer::new().methods(
                MethodStrategies::new()
                    .safe(Strategy::parallel(2, Delays::percentile(tracker.clone()))),
            ),
        )
        .layer(breaker)
        .layer(client_metrics.attempt_layer())
        .layer(PropagateLayer::new().only_to_hosts(allowed))
        .service(transport);

    let next = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (stack, next, answered, failed, first_errors, addrs) = (
            stack.clone(),
            next.clone(),
            answered.clone(),
            failed.clone(),
            first_errors.clone(),
            addrs.clone(),
        );
        workers.spawn(async move {
            let mut random = Random(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            while next.fetch_add(1, Ordering::Relaxed) < total && started.elapsed() < TIME_LIMIT {
                let addr = addrs[random.next() as usize % addrs.len()];
                let path = match random.next() % 4 {
                    0 => format!("/items/{}", random.next()),
                    1 => format!("/x{}/y{}", random.next() % 100_000, random.next()),
                    2 => format!("/items/{:x}?q={}", random.next(), random.next()),
                    _ => format!("/{}", random.next() % 1_000),
                };
                let request = Request::get(format!("http://{addr}{path}"))
                    .header("x-service-name", format!("svc-{}", random.next() % 100_000))
                    .body(Full::default())
                    .unwrap();
                let outcome = async {
                    let response = stack.clone().oneshot(request).await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    Ok::<_, tower_lifeline::BoxError>(status)
                }
                .await;
                match outcome {
                    Ok(StatusCode::OK | StatusCode::NOT_FOUND) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut errors = first_errors.lock().unwrap();
                        if errors.len() < 5 {
                            errors.push(format!("{other:?}"));
                        }
                    }
                }
            }
        });
    }

    // Sample memory and the tables every 100,000 requests.
    let mut rss = Vec::new();
    let mut mark = 0;
    while !workers.is_empty() {
        tokio::select! {
            _ = workers.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let done = answered.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if done >= mark + 100_000 || (workers.is_empty() && done > mark) {
            mark = done - done % 100_000;
            let kib = resident_kib();
            rss.push((done, kib));
            println!(
                "{done:>8} requests, {:>5.1} s: VmRSS {kib} kB, breaker scopes {}, tracked {}, server series {}, client series {}",
                started.elapsed().as_secs_f64(),
                breakers.len(),
                tracker.len(),
                series(&server_registry),
                series(&client_registry),
            );
            assert!(breakers.len() <= MAX_SCOPES);
            assert!(tracker.len() <= MAX_TRACKED);
        }
    }

    let answered = answered.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "{answered} answered, {failed} failed in {:.1} s; first errors: {:?}",
        started.elapsed().as_secs_f64(),
        first_errors.lock().unwrap()
    );
    assert_eq!(failed, 0);
    assert!(answered >= total.min(100_000), "the soak ran: {answered}");
    assert!(breakers.len() <= MAX_SCOPES);
    assert!(tracker.len() <= MAX_TRACKED);
    // The cap, plus the `other` series per method and status (GET 200, GET 404).
    assert!(series(&server_registry) <= MAX_LABEL_SETS + 2);
    // Two histograms (call, attempt), each capped, plus their `other` series.
    assert!(series(&client_registry) <= 2 * (MAX_LABEL_SETS + 4));
    // Flat memory: after the warm-up (the first fifth), resident memory grows by under 32 MiB.
    if rss.len() >= 5 {
        let warm = rss[rss.len() / 5].1;
        let last = rss.last().unwrap().1;
        println!("VmRSS after warm-up {warm} kB, at the end {last} kB");
        assert!(
            last < warm + 32 * 1024,
            "resident memory grew from {warm} kB to {last} kB: {rss:?}"
        );
    }
}
