//! End to end on loopback: servers and clients driven by the same Rust load generator, in
//! alternating A/B rounds, in one process.
//!
//! ```text
//! cargo bench --bench e2e [-- --rounds N --secs S --connections C --only NAME]
//! ```
//!
//! Servers on 127.0.0.1, each serving `GET /hello`:
//! - `bare axum`: the router alone;
//! - `tower-lifeline`: the same router in the `Server` preset (drain, metrics, deadline,
//!   priority, body timeout, load shedding; plus `/metrics` and the probes beside it), served by
//!   `axum::serve`;
//! - `tower-lifeline, Server::serve`: the same, served by the preset's own connections
//!   (hyper-util with a timer, the connection cap and its supervisor task per connection);
//! - `axum-prometheus`: the same router with axum-prometheus's metric layer.
//!
//! The load generator keeps C HTTP/1.1 keep-alive connections busy (one request at a time on
//! each) for S seconds per round; rounds alternate between the variants. Then the clients: C
//! tasks sharing one bare hyper-util client, one `tower_lifeline::client::Client` with its
//! defaults, one `Client` with a single attempt and no breaker, bare reqwest, and the `Client`
//! preset over that reqwest client (`ClientBuilder::reqwest`), against the bare server. It
//! prints requests per second and p50/p99 per variant, and the ratios to its bare peer.
//! `--only NAME` runs only the variants whose name contains NAME (and the bare ones), for
//! profiling one of them. Bounded in time (about `rounds * secs * 9` seconds), loopback only,
//! stops by itself.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower_lifeline::client::Client;
use tower_lifeline::server::Server;
use tower_lifeline::strategy::{Strategy, StrategyLayer};

mod loopback;

use loopback::{app, flag, keep_alive_round, AnyClient};

struct Options {
    rounds: u32,
    secs: f64,
    connections: usize,
    /// Only the variants whose name contains this (and the bare one), for profiling.
    only: Option<String>,
}

fn options() -> Options {
    Options {
        rounds: flag("--rounds").unwrap_or(3),
        secs: flag("--secs").unwrap_or(3.0),
        connections: flag("--connections").unwrap_or(32),
        only: flag("--only"),
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

impl Options {
    /// Whether to run variant `index` named `name`: the bare one (index 0) always.
    fn wanted(&self, index: usize, name: &str) -> bool {
        index == 0 || self.only.as_deref().is_none_or(|only| name.contains(only))
    }
}

/// What one variant saw over all its rounds.
#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() as f64 * p / 100.0).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        f64::from(self.latencies_us[index - 1]) / 1000.0
    }
}

/// One round against a server, added to its tally.
async fn server_round(addr: SocketAddr, connections: usize, secs: f64, tally: &mut Tally) {
    let round = keep_alive_round(addr, connections, secs).await;
    tally.requests += round.latencies_us.len() as u64;
    tally.errors += round.errors;
    tally.latencies_us.extend(round.latencies_us);
    tally.elapsed += round.elapsed;
}

async fn client_round(
    client: &AnyClient,
    addr: SocketAddr,
    tasks: usize,
    secs: f64,
    tally: &mut Tally,
) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(65_536);
            let mut errors = 0u64;
            while Instant::now() < end {
                let start = Instant::now();
                if client.get(&format!("http://{addr}/hello")).await {
                    latencies.push(start.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    for handle in handles {
        let (latencies, errors) = handle.await.expect("client task");
        tally.requests += latencies.len() as u64;
        tally.errors += errors;
        tally.latencies_us.extend(latencies);
    }
    tally.elapsed += started.elapsed();
}

/// Prints the table; each variant's ratios are to the variant at its index in `peers` (its own
/// bare peer: hyper-util for the preset over hyper-util, reqwest for the preset over reqwest).
fn report(title: &str, names: &[&str], peers: &[usize], tallies: &mut [Tally]) {
    println!("\n{title}");
    println!(
        "| variant | requests/s | p50 ms | p99 ms | errors | throughput vs its bare peer | p99 vs its bare peer |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let bare: Vec<(f64, f64)> = tallies
        .iter_mut()
        .map(|t| (t.rps(), t.percentile(99.0)))
        .collect();
    for ((name, tally), &peer) in names.iter().zip(tallies.iter_mut()).zip(peers) {
        if tally.requests == 0 && tally.errors == 0 {
            continue; // not run (--only)
        }
        let (bare_rps, bare_p99) = bare[peer];
        let (rps, p50, p99) = (tally.rps(), tally.percentile(50.0), tally.percentile(99.0));
        println!(
            "| {name} | {rps:.0} | {p50:.3} | {p99:.3} | {} | {:.3} | {:.3} |",
            tally.errors,
            rps / bare_rps,
            p99 / bare_p99
        );
    }
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let bare = serve(app()).await;
        let server = Server::builder()
            .registry(prometheus::Registry::new())
            .build(app())
            .expect("server stack");
        let ours = serve(server.router()).await;
        let preset = Server::builder()
            .registry(prometheus::Registry::new())
            .build(app())
            .expect("server stack");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let preset_addr = listener.local_addr().expect("local address");
        tokio::spawn(preset.serve(listener));
        let (prometheus_layer, _handle) = axum_prometheus::PrometheusMetricLayer::pair();
        let axum_prometheus = serve(app().layer(prometheus_layer)).await;

        println!(
            "e2e: {} rounds of {} s per variant, {} connections, HTTP/1.1 keep-alive, loopback",
            options.rounds, options.secs, options.connections
        );
        let servers = [bare, ours, preset_addr, axum_prometheus];
        let names = [
            "bare axum",
            "tower-lifeline server stack",
            "tower-lifeline, Server::serve",
            "axum-prometheus",
        ];
        let mut tallies: Vec<Tally> = servers.iter().map(|_| Tally::default()).collect();
        // Warm up every server (connections, lazily built label sets), then alternate rounds.
        let wanted = |i: usize, names: &[&str]| options.wanted(i, names[i]);
        for (_, addr) in servers
            .iter()
            .enumerate()
            .filter(|(i, _)| wanted(*i, &names))
        {
            server_round(*addr, options.connections, 0.5, &mut Tally::default()).await;
        }
        for _ in 0..options.rounds {
            for (i, (addr, tally)) in servers.iter().zip(tallies.iter_mut()).enumerate() {
                if wanted(i, &names) {
                    server_round(*addr, options.connections, options.secs, tally).await;
                }
            }
        }
        report("servers (GET /hello)", &names, &[0; 4], &mut tallies);

        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let bare_client = AnyClient::Bare(
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(options.connections)
                .build(connector),
        );
        let lifeline = AnyClient::Lifeline(
            Client::builder()
                .pool_max_idle_per_host(options.connections)
                .build()
                .expect("client"),
        );
        // The preset with its per-attempt machinery off, to tell what the layers cost from what
        // the preset's plumbing (deadline timer, URL handling, body reading) costs.
        let minimal = AnyClient::Lifeline(
            Client::builder()
                .pool_max_idle_per_host(options.connections)
                .strategy(StrategyLayer::new().strategy(Strategy::single()))
                .circuit_breaker(None)
                .build()
                .expect("client"),
        );
        let bare_reqwest = reqwest::Client::builder()
            .pool_max_idle_per_host(options.connections)
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client");
        // The preset over reqwest (`ClientBuilder::reqwest`), against reqwest alone.
        let over_reqwest = AnyClient::Lifeline(
            Client::builder()
                .reqwest(bare_reqwest.clone())
                .build()
                .expect("client"),
        );
        let clients = [
            bare_client,
            lifeline,
            minimal,
            AnyClient::Reqwest(bare_reqwest),
            over_reqwest,
        ];
        let names = [
            "bare hyper-util client",
            "tower-lifeline Client",
            "tower-lifeline Client, single attempt, no breaker",
            "bare reqwest client",
            "tower-lifeline Client over reqwest",
        ];
        let mut tallies: Vec<Tally> = clients.iter().map(|_| Tally::default()).collect();
        for (_, client) in clients
            .iter()
            .enumerate()
            .filter(|(i, _)| wanted(*i, &names))
        {
            client_round(
                client,
                bare,
                options.connections,
                0.5,
                &mut Tally::default(),
            )
            .await;
        }
        for _ in 0..options.rounds {
            for (i, (client, tally)) in clients.iter().zip(tallies.iter_mut()).enumerate() {
                if wanted(i, &names) {
                    client_round(client, bare, options.connections, options.secs, tally).await;
                }
            }
        }
        report(
            "clients (GET /hello on the bare server)",
            &names,
            &[0, 0, 0, 3, 3],
            &mut tallies,
        );
        println!(
            "\nload shedding on the tower-lifeline server: {:?}",
            server.load_shed_stats()
        );
    });
}
