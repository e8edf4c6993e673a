//! A client under load, for dashboards: the `Client` preset calling `examples/server`, with its
//! own `/metrics` (calls, attempts, retries, hedges, budget, circuit breaker) for Prometheus.
//!
//! ```text
//! cargo run --example server -- --addr 127.0.0.1:8080 &
//! cargo run --example load -- --target http://127.0.0.1:8080 --metrics-addr 127.0.0.1:9464 \
//!     [--seconds 60] [--rate 100] [--outage-after 20 --outage-for 20]
//! ```
//!
//! The mix: `GET /hello` with sequential retries, `GET /slow?ms=N` hedged after 40 ms, and a
//! few `GET /status/404`. During the outage window every call goes to `/status/503` instead:
//! the destination fails, the circuit breaker opens, refuses calls at once, probes, and closes
//! once the window is over. `.ci/prometheus-check` uses it to see the breaker alert fire and
//! clear on a real Prometheus. It stops by itself after `--seconds`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::time::Instant;
use tower_lifeline::circuit_breaker::CircuitBreakerSettings;
use tower_lifeline::client::Client;
use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig};
use tower_lifeline::prometheus::Registry;
use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};
use tower_lifeline::Priority;

const HELP: &str = "\
load: the tower-lifeline Client preset under load, with its own /metrics

USAGE: cargo run --example load -- --target URL [OPTIONS]

OPTIONS:
    --target URL          the server to call, e.g. http://127.0.0.1:8080 (examples/server)
    --metrics-addr ADDR   where to serve /metrics (default 127.0.0.1:9464)
    --seconds N           stop after N seconds (default 60)
    --rate N              calls started per second (default 100)
    --outage-after N      from N seconds after the start, call /status/503 instead ...
    --outage-for N        ... for N seconds (default: no outage)
    -h, --help            print this help";

struct Options {
    target: String,
    metrics_addr: SocketAddr,
    seconds: u64,
    rate: u64,
    outage: Option<(Duration, Duration)>,
}

fn options() -> Result<Option<Options>, String> {
    let mut target = None;
    let mut metrics_addr: SocketAddr = ([127, 0, 0, 1], 9464).into();
    let (mut seconds, mut rate) = (60, 100);
    let (mut outage_after, mut outage_for) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| -> Result<u64, String> {
            v.parse().map_err(|_| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--target" => target = Some(value("--target")?.trim_end_matches('/').to_owned()),
            "--metrics-addr" => {
                metrics_addr = (value("--metrics-addr")?)
                    .parse()
                    .map_err(|_| "--metrics-addr needs an address like 127.0.0.1:9464")?
            }
            "--seconds" => seconds = number("--seconds", value("--seconds")?)?,
            "--rate" => rate = number("--rate", value("--rate")?)?.max(1),
            "--outage-after" => outage_after = Some(number("--outage-after", value(&arg)?)?),
            "--outage-for" => outage_for = Some(number("--outage-for", value(&arg)?)?),
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    let target = target.ok_or("--target is required; try --help")?;
    let outage = match (outage_after, outage_for) {
        (Some(after), Some(length)) => Some((
            Duration::from_secs(after),
            Duration::from_secs(after + length),
        )),
        (None, None) => None,
        _ => return Err("--outage-after and --outage-for go together".to_owned()),
    };
    Ok(Some(Options {
        target,
        metrics_addr,
        seconds,
        rate,
        outage,
    }))
}

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    let Some(options) = options()? else {
        println!("{HELP}");
        return Ok(());
    };
    let registry = Registry::new();
    let client_metrics = ClientMetrics::register(&registry, MetricsConfig::default())?;
    let strategy = StrategyLayer::new();
    // A breaker that reacts within a second or two, so that an outage of a few seconds shows.
    let breaker = CircuitBreakerSettings::builder()
        .failure_threshold(0.5)
        .minimum_throughput(20)
        .sampling_duration(Duration::from_secs(2))
        .break_duration(Duration::from_secs(1))
        .build()?;
    let client = Client::builder()
        .base_url(&options.target)
        .service_name("load")
        .strategy(strategy)
        .circuit_breaker(Some(breaker))
        .metrics(client_metrics)
        .build()?;

    let listener = tokio::net::TcpListener::bind(options.metrics_addr).await?;
    let app: Router = Router::new().route("/metrics", metrics::route(registry));
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "load: calling {} at {}/s for {} s; metrics on http://{}/metrics",
        options.target, options.rate, options.seconds, options.metrics_addr
    );

    let started = Instant::now();
    let end = started + Duration::from_secs(options.seconds);
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / options.rate as u32);
    // Behind schedule (a slow machine), start fewer calls rather than a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_outage = false;
    let mut calls = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    while Instant::now() < end {
        ticks.tick().await;
        let since = started.elapsed();
        let outage = options
            .outage
            .is_some_and(|(from, to)| since >= from && since < to);
        if outage != in_outage {
            in_outage = outage;
            let what = if outage { "begins" } else { "ends" };
            println!("load: outage {what} at {:.1} s", since.as_secs_f64());
        }
        n += 1;
        let client = client.clone();
        calls.spawn(async move {
            let request = if outage {
                client.get("/status/503").route("/status/{code}")
            } else {
                match n % 20 {
                    0 => client.get("/status/404").route("/status/{code}"),
                    1..=6 => client
                        .get(format!("/slow?ms={}", fastrand::u64(5..80)))
                        .route("/slow")
                        .strategy(Strategy::parallel(
                            2,
                            Delays::constant(Duration::from_millis(40)),
                        )),
                    _ => client
                        .get("/hello")
                        .route("/hello")
                        .strategy(Strategy::sequential(
                            3,
                            Delays::constant(Duration::from_millis(5)),
                        )),
                }
            };
            let priority = if n.is_multiple_of(4) {
                Priority::Low
            } else {
                Priority::Normal
            };
            // Errors are what the metrics are for: nothing to do with them here.
            let _ = request
                .priority(priority)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
        });
        // Reap finished calls as we go, so the set stays small.
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    println!("load: done after {n} calls");
    Ok(())
}
