//! Scaling: the server stack against bare axum with the servers on N worker threads (N = 1, 2
//! here; `--workers 1,2,4,...` on a larger machine), in alternating rounds, in one process.
//!
//! ```text
//! cargo bench --bench scaling [-- --rounds R --secs S --connections C --workers 1,2]
//! ```
//!
//! Each N has its own runtime of N worker threads serving two servers on 127.0.0.1: bare axum
//! and the same router in the `Server` preset (adaptive concurrency limit on), both served by
//! `axum::serve`. A load generator on a runtime of its own keeps C HTTP/1.1 keep-alive
//! connections busy for S seconds per round. Besides requests per second, it reads the CPU time
//! of the servers' worker threads (`/proc/self/task/*/stat`, 10 ms ticks) and prints the server
//! CPU per request: a counter that every request writes from every core costs more per request
//! at N = 2 than at N = 1, which a single-threaded bench cannot see.
//! Bounded in time (about `rounds * secs * 2 * workers` seconds), loopback only.

use std::net::SocketAddr;
use std::time::Duration;

use tower_lifeline::server::Server;

mod loopback;

use loopback::{app, flag, keep_alive_round};

struct Options {
    rounds: u32,
    secs: f64,
    connections: usize,
    workers: Vec<usize>,
}

fn options() -> Options {
    Options {
        rounds: flag("--rounds").unwrap_or(5),
        secs: flag("--secs").unwrap_or(2.0),
        connections: flag("--connections").unwrap_or(32),
        workers: flag::<String>("--workers").map_or(vec![1, 2], |list| {
            list.split(',')
                .map(|n| n.parse().expect("--workers 1,2,..."))
                .collect()
        }),
    }
}

/// CPU time (user and system) of this process's threads whose name starts with `prefix`.
fn cpu_of_threads(prefix: &str) -> Duration {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("a task").path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // After the command in parentheses: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
    }
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[derive(Default)]
struct Tally {
    requests: u64,
    elapsed: Duration,
    server_cpu: Duration,
}

/// One round of load, with the CPU the server threads named `threads...` spent on it.
async fn round(addr: SocketAddr, connections: usize, secs: f64, threads: &str, tally: &mut Tally) {
    let cpu_before = cpu_of_threads(threads);
    let round = keep_alive_round(addr, connections, secs).await;
    assert_eq!(round.errors, 0, "every request answered 200 with its body");
    tally.requests += round.latencies_us.len() as u64;
    tally.elapsed += round.elapsed;
    tally.server_cpu += cpu_of_threads(threads).saturating_sub(cpu_before);
}

fn main() {
    let options = options();
    // The load generator's own runtime; its threads are named apart from the servers'.
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "scaling: {} rounds of {} s per variant, {} connections, HTTP/1.1 keep-alive, loopback",
        options.rounds, options.secs, options.connections
    );
    println!(
        "| server worker threads | variant | requests/s | server CPU per request, µs | throughput vs bare | CPU per request vs bare |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for &workers in &options.workers {
        let threads = format!("srv{workers}-");
        let servers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(threads.clone())
            .enable_all()
            .build()
            .expect("a runtime");
        let (bare, ours) = servers.block_on(async {
            let bare = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let ours = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addrs = (
                bare.local_addr().expect("address"),
                ours.local_addr().expect("address"),
            );
            let server = Server::builder()
                .registry(prometheus::Registry::new())
                .build(app())
                .expect("server stack");
            tokio::spawn(async move { axum::serve(bare, app()).await });
            tokio::spawn(async move { axum::serve(ours, server.router()).await });
            addrs
        });
        let mut tallies = [Tally::default(), Tally::default()];
        load.block_on(async {
            for addr in [bare, ours] {
                round(
                    addr,
                    options.connections,
                    0.5,
                    &threads,
                    &mut Tally::default(),
                )
                .await;
            }
            for _ in 0..options.rounds {
                for (addr, tally) in [bare, ours].into_iter().zip(tallies.iter_mut()) {
                    round(addr, options.connections, options.secs, &threads, tally).await;
                }
            }
        });
        let rps = |t: &Tally| t.requests as f64 / t.elapsed.as_secs_f64();
        let cpu = |t: &Tally| t.server_cpu.as_secs_f64() * 1e6 / t.requests as f64;
        for (name, tally) in ["bare axum", "tower-lifeline server stack"]
            .iter()
            .zip(&tallies)
        {
            println!(
                "| {workers} | {name} | {:.0} | {:.2} | {:.3} | {:.3} |",
                rps(tally),
                cpu(tally),
                rps(tally) / rps(&tallies[0]),
                cpu(tally) / cpu(&tallies[0]),
            );
        }
        servers.shutdown_timeout(Duration::from_secs(1));
    }
}
