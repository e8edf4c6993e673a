//! Instructions per request on loopback, counted by valgrind's cachegrind: a measure that does
//! not move with the machine's load, for telling two builds apart where the timed benches'
//! spread (±5% here) hides a change.
//!
//! `cargo bench --bench instructions` runs itself under `valgrind --tool=cachegrind` once per
//! variant with `--requests N` and once with none, and prints the difference divided by N:
//! instructions, first-level instruction and data cache misses (cachegrind's simulated
//! caches) per request, for the whole process (client, server and runtime; the kernel is not
//! counted). Each variant sends `GET /hello` one request at a time on a current-thread runtime
//! to an axum server in the same process. Needs valgrind (Debian's `valgrind` package); without
//! it, says so and stops. `-- --requests N` (default 300); `-- --only NAME` for one variant.

mod loopback;

use std::process::Command;

use hyper_util::rt::TokioExecutor;
use loopback::{flag, AnyClient};
use tower_lifeline::client::Client;
use tower_lifeline::server::Server;
use tower_lifeline::strategy::{Strategy, StrategyLayer};

/// Each variant: its name, the client, the server, and the index of its bare peer.
const VARIANTS: [(&str, &str, &str, usize); 6] = [
    ("bare hyper-util client, bare axum", "hyper-util", "axum", 0),
    ("`Client` (defaults), bare axum", "client", "axum", 0),
    (
        "`Client`, single attempt, no breaker, bare axum",
        "client-single",
        "axum",
        0,
    ),
    (
        "bare hyper-util client, `Server` preset",
        "hyper-util",
        "preset",
        0,
    ),
    ("bare reqwest client, bare axum", "reqwest", "axum", 4),
    (
        "`Client` over reqwest, bare axum",
        "client-reqwest",
        "axum",
        4,
    ),
];

fn main() {
    match (flag::<String>("--client"), flag::<String>("--server")) {
        (Some(client), Some(server)) => {
            let requests = flag("--requests").unwrap_or(0);
            send(&client, &server, requests);
        }
        _ => measure(),
    }
}

/// What cachegrind counted in one run.
#[derive(Clone, Copy)]
struct Counts {
    instructions: f64,
    i1_misses: f64,
    d1_misses: f64,
}

fn measure() {
    let requests: u32 = flag("--requests").unwrap_or(300);
    let only: Option<String> = flag("--only");
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("instructions: valgrind is not installed (Debian: apt-get install valgrind)");
        return;
    }
    let me = std::env::current_exe().expect("the bench's own path");
    let run = |client: &str, server: &str, requests: u32| -> Counts {
        let output = Command::new("valgrind")
            .args([
                "--tool=cachegrind",
                "--cache-sim=yes",
                "--cachegrind-out-file=/dev/null",
            ])
            .arg(&me)
            .args(["--client", client, "--server", server])
            .args(["--requests", &requests.to_string()])
            .output()
            .expect("valgrind runs");
        let report = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "the measured run failed:\n{report}"
        );
        let count = |label: &str| -> f64 {
            report
                .lines()
                .find_map(|line| {
                    let (_, rest) = line.split_once(label)?;
                    rest.split_whitespace()
                        .next()?
                        .replace(',', "")
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {label:?} in valgrind's report:\n{report}"))
        };
        Counts {
            instructions: count("I   refs:"),
            i1_misses: count("I1  misses:"),
            d1_misses: count("D1  misses:"),
        }
    };
    println!(
        "instructions per request (cachegrind, {requests} requests one at a time, whole process)"
    );
    println!("| variant | instructions | over its bare peer | I1 misses | D1 misses |");
    println!("|---|---:|---:|---:|---:|");
    let mut measured: Vec<Option<f64>> = vec![None; VARIANTS.len()];
    for (index, (name, client, server, peer)) in VARIANTS.iter().enumerate() {
        // The bare peers always run: the others are read against them.
        let bare = index == *peer;
        if !bare && only.as_deref().is_some_and(|only| !name.contains(only)) {
            continue;
        }
        let (with, without) = (run(client, server, requests), run(client, server, 0));
        let per = |f: fn(&Counts) -> f64| (f(&with) - f(&without)) / f64::from(requests);
        let instructions = per(|c| c.instructions);
        measured[index] = Some(instructions);
        let over = measured[*peer].map_or(f64::NAN, |peer| instructions - peer);
        println!(
            "| {name} | {instructions:.0} | {over:+.0} | {:.0} | {:.0} |",
            per(|c| c.i1_misses),
            per(|c| c.d1_misses),
        );
    }
}

/// The measured process: 20 requests to warm up (connections, lazily built tables), then
/// `requests` more.
fn send(client: &str, server: &str, requests: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let app = match server {
            "preset" => Server::builder()
                .registry(prometheus::Registry::new())
                .build(loopback::app())
                .expect("server stack")
                .router(),
            _ => loopback::app(),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}/hello");
        let reqwest = reqwest::Client::new();
        let client = match client {
            "client" => AnyClient::Lifeline(Client::builder().build().expect("client")),
            "client-single" => AnyClient::Lifeline(
                Client::builder()
                    .strategy(StrategyLayer::new().strategy(Strategy::single()))
                    .circuit_breaker(None)
                    .build()
                    .expect("client"),
            ),
            "client-reqwest" => {
                AnyClient::Lifeline(Client::builder().reqwest(reqwest).build().expect("client"))
            }
            "reqwest" => AnyClient::Reqwest(reqwest),
            _ => AnyClient::Bare(
                hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
            ),
        };
        for _ in 0..requests + 20 {
            assert!(client.get(&url).await, "a request failed");
        }
    });
}
