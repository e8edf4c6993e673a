//! Hostile load against a server on 127.0.0.1 (`examples/server`), for the figures in
//! RELIABILITY.md. Loopback only; every attack stops by itself.
//!
//! ```text
//! cargo run --release --example server -- --addr 127.0.0.1:8080 &
//! cargo run --release --example hostile_load -- --addr 127.0.0.1:8080 --attack slowloris --count 1000 --server-pid $!
//! ```
//!
//! Attacks (`--count` is the number of connections, or requests for `labels`):
//!
//! - `slowloris`: each connection sends a request line, then one header byte every 5 s;
//! - `partial-headers`: each sends `--header-bytes` (400 KB) of one header line, never
//!   finished, and holds on;
//! - `h2c-bodies`: `--count` h2c connections × `--streams` `POST /echo` whose bodies never end,
//!   claiming `--priority`;
//! - `idle`: connections that send nothing;
//! - `labels`: requests with invented `X-Service-Name` values, paths and statuses, while a
//!   caller named `billing` keeps calling; then the size of `/metrics` (`--metrics-addr`);
//! - `scrapers`: `--count` connections asking for `/metrics` (`--metrics-addr`) in a loop, after
//!   4,000 invented labels have filled it;
//! - `sigterm`: a half-sent request line held open, then SIGTERM to `--server-pid` (and a second
//!   one with `--twice`): how long until the server is gone.
//!
//! While an attack runs, `/hello` (or `/healthz` for `idle`) is asked every 100 ms on a fresh
//! connection, and its latency reported; with `--server-pid`, the server's resident memory.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::channel::Channel;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

struct Options {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    attack: String,
    count: usize,
    streams: usize,
    priority: String,
    server_pid: Option<u32>,
    twice: bool,
    duration: Duration,
    header_bytes: usize,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        addr: "127.0.0.1:8080".parse().expect("an address"),
        metrics_addr: None,
        attack: String::new(),
        count: 100,
        streams: 200,
        priority: "normal".to_owned(),
        server_pid: None,
        twice: false,
        duration: Duration::from_secs(40),
        header_bytes: 400 * 1024,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => options.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--metrics-addr" => {
                options.metrics_addr = Some(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--attack" => options.attack = value()?,
            "--count" => options.count = value()?.parse().map_err(|e| format!("{e}"))?,
            "--streams" => options.streams = value()?.parse().map_err(|e| format!("{e}"))?,
            "--priority" => options.priority = value()?,
            "--server-pid" => {
                options.server_pid = Some(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--twice" => options.twice = true,
            "--header-bytes" => {
                options.header_bytes = value()?.parse().map_err(|e| format!("{e}"))?
            }
            "--duration" => {
                options.duration =
                    Duration::from_secs(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let loopback = |a: &SocketAddr| a.ip().is_loopback();
    if !loopback(&options.addr) || !options.metrics_addr.as_ref().is_none_or(loopback) {
        return Err("loopback addresses only".to_owned());
    }
    Ok(options)
}

/// The server's resident memory in kB, from /proc.
fn rss_kb(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One GET on a fresh connection: its status and how long it took (None: no answer in 5 s).
async fn probe(addr: SocketAddr, path: &str, headers: &str) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let status = timeout(Duration::from_secs(5), async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        String::from_utf8_lossy(&answer)
            .strip_prefix("HTTP/1.1 ")?
            .get(..3)?
            .parse()
            .ok()
    })
    .await
    .ok()
    .flatten();
    (status, started.elapsed())
}

/// Probes `path` every 100 ms until `stop` resolves; prints latency percentiles and the first
/// and last refusal.
async fn probing(addr: SocketAddr, path: &'static str, headers: String, until: Instant) {
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while Instant::now() < until {
        let (status, took) = probe(addr, path, &headers).await;
        latencies.push(took);
        if status != Some(200) {
            failures.push((started.elapsed(), status));
        }
        sleep(Duration::from_millis(100).saturating_sub(took)).await;
    }
    latencies.sort();
    let at = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(i - 1).copied().unwrap_or_default()
    };
    println!(
        "{path}: {} probes, p50 {:?}, p99 {:?}, max {:?}; {} not 200{}",
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or_default(),
        failures.len(),
        match (failures.first(), failures.last()) {
            (Some(first), Some(last)) => format!(
                " (from {:.1} s to {:.1} s after the start: {:?})",
                first.0.as_secs_f64(),
                last.0.as_secs_f64(),
                last.1
            ),
            _ => String::new(),
        }
    );
}

/// Waits until the server closes `stream`, up to `until`; how long it stayed open.
async fn held_open(mut stream: TcpStream, opened: Instant, until: Instant) -> Option<Duration> {
    let mut buffer = [0u8; 4096];
    loop {
        match timeout(
            until.saturating_duration_since(Instant::now()),
            stream.read(&mut buffer),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn report_closed(name: &str, lives: Vec<Option<Duration>>) {
    let mut closed: Vec<Duration> = lives.iter().flatten().copied().collect();
    closed.sort();
    println!(
        "{name}: {} connections, {} closed by the server (after {:?} to {:?}), {} still open at the end",
        lives.len(),
        closed.len(),
        closed.first().copied().unwrap_or_default(),
        closed.last().copied().unwrap_or_default(),
        lives.len() - closed.len()
    );
}

/// Samples the server's resident memory every 50 ms until `until`; the highest sample.
fn rss_sampler(pid: Option<u32>, until: Instant) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while Instant::now() < until {
            peak = peak.max(rss_kb(pid).unwrap_or(0));
            sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

async fn slowloris(o: &Options, partial: bool) {
    let until = Instant::now() + o.duration;
    let sampler = rss_sampler(o.server_pid, until);
    let header_bytes = o.header_bytes;
    let mut tasks = Vec::new();
    for _ in 0..o.count {
        let addr = o.addr;
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        tasks.push(tokio::spawn(async move {
            let opened = Instant::now();
            let _ = stream
                .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            if partial {
                let chunk = vec![b'a'; header_bytes];
                let _ = timeout(Duration::from_secs(10), stream.write_all(&chunk)).await;
                return held_open(stream, opened, until).await;
            }
            let (mut reader, mut writer) = stream.into_split();
            let trickle = async {
                loop {
                    sleep(Duration::from_secs(5)).await;
                    if writer.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            };
            let mut buffer = [0u8; 1024];
            let closed = async {
                loop {
                    match reader.read(&mut buffer).await {
                        Ok(0) | Err(_) => return opened.elapsed(),
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                lived = closed => Some(lived),
                () = trickle => Some(opened.elapsed()),
                () = tokio::time::sleep_until(until) => None,
            }
        }));
    }
    println!(
        "{} connections open; server RSS {:?} kB",
        tasks.len(),
        rss_kb(o.server_pid)
    );
    let probes = tokio::spawn(probing(o.addr, "/hello", String::new(), until));
    let mut lives = Vec::new();
    for task in tasks {
        lives.push(task.await.unwrap_or(None));
    }
    report_closed(
        if partial {
            "partial headers"
        } else {
            "slow-loris"
        },
        lives,
    );
    probes.await.ok();
    let peak = sampler.await.unwrap_or(0);
    sleep(Duration::from_secs(2)).await;
    println!(
        "server RSS: highest sample (every 50 ms) {peak} kB, 2 s after the end {:?} kB",
        rss_kb(o.server_pid)
    );
}

async fn idle(o: &Options) {
    let mut held = Vec::new();
    for _ in 0..o.count {
        match TcpStream::connect(o.addr).await {
            Ok(stream) => held.push(stream),
            Err(error) => {
                println!("connect failed after {}: {error}", held.len());
                break;
            }
        }
    }
    println!(
        "{} idle connections opened; server RSS {:?} kB",
        held.len(),
        rss_kb(o.server_pid)
    );
    probing(
        o.addr,
        "/healthz",
        String::new(),
        Instant::now() + Duration::from_secs(5),
    )
    .await;
    let mut open = 0;
    for stream in &mut held {
        let mut byte = [0u8; 1];
        let still_open = timeout(Duration::from_millis(1), stream.read(&mut byte))
            .await
            .is_err();
        open += usize::from(still_open);
    }
    println!("{open} of them still open after the probes");
}

async fn h2c_bodies(o: &Options) {
    let until = Instant::now() + o.duration;
    let mut keep = Vec::new();
    for _ in 0..o.count {
        let stream = TcpStream::connect(o.addr).await.expect("connect");
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2c handshake");
        tokio::spawn(connection);
        for _ in 0..o.streams {
            let (mut body, channel) = Channel::<Bytes>::new(1);
            let request = Request::post(format!("http://{}/echo", o.addr))
                .header("x-request-priority", &o.priority)
                .body(channel)
                .expect("request");
            let mut sender = sender.clone();
            let _ = body.try_send(http_body::Frame::data(Bytes::from_static(b"x")));
            keep.push(body);
            tokio::spawn(async move {
                let _ = sender.send_request(request).await;
            });
        }
    }
    println!(
        "{} h2c connections x {} never-finishing POST /echo, priority {}",
        o.count, o.streams, o.priority
    );
    let headers = format!("X-Request-Priority: {}\r\n", o.priority);
    probing(o.addr, "/hello", headers, until).await;
    drop(keep);
}

async fn labels(o: &Options) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    let mut billing_failed = Vec::new();
    for i in 0..o.count {
        let (name, path) = if i % 10 == 0 {
            ("billing".to_owned(), "/hello".to_owned())
        } else {
            let path = match next() % 3 {
                0 => format!("/status/{}", 100 + next() % 900),
                1 => format!("/x{}/y{}", next() % 100_000, next() % 100_000),
                _ => format!("/status/{}", 200 + next() % 400),
            };
            (format!("svc-{}", next() % 1_000_000), path)
        };
        let request = Request::get(format!("http://{}{path}", o.addr))
            .header("x-service-name", name)
            .body(http_body_util::Empty::new())
            .expect("request");
        let answered = client.request(request).await.map(|r| r.status().as_u16());
        if i % 10 == 0 && !matches!(answered, Ok(200)) {
            billing_failed.push(format!("{answered:?}"));
        }
    }
    println!("billing calls not answered 200: {billing_failed:?}");
    let metrics = o.metrics_addr.unwrap_or(o.addr);
    let mut stream = TcpStream::connect(metrics)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    let series = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .count();
    let billing = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{client=\"billing\""))
        .collect::<Vec<_>>();
    println!(
        "{} requests in {:.1} s; /metrics: {} bytes, {series} duration series; billing: {billing:?}",
        o.count,
        started.elapsed().as_secs_f64(),
        text.len()
    );
}

async fn scrapers(o: &Options) {
    let fill = Options {
        count: 4_000,
        metrics_addr: o.metrics_addr,
        attack: String::new(),
        priority: String::new(),
        ..*o
    };
    labels(&fill).await;
    let until = Instant::now() + o.duration;
    let metrics = o.metrics_addr.unwrap_or(o.addr);
    let scraped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..o.count {
        let scraped = scraped.clone();
        tokio::spawn(async move {
            while Instant::now() < until {
                let (status, _) = probe(metrics, "/metrics", "").await;
                if status == Some(200) {
                    scraped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    probing(o.addr, "/hello", String::new(), until).await;
    println!(
        "{} scrapers: {} scrapes answered in {:?}",
        o.count,
        scraped.load(std::sync::atomic::Ordering::Relaxed),
        o.duration
    );
}

async fn sigterm(o: &Options) {
    let Some(pid) = o.server_pid else {
        println!("--server-pid is needed");
        return;
    };
    let mut half = TcpStream::connect(o.addr).await.expect("connect");
    half.write_all(b"GET /hel").await.expect("send");
    let started = Instant::now();
    let kill = |signal: &str| {
        std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(kill("-TERM"), "kill -TERM {pid}");
    if o.twice {
        sleep(Duration::from_millis(100)).await;
        kill("-TERM");
    }
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && started.elapsed() < Duration::from_secs(40)
    {
        // A zombie (exited, not yet reaped by its parent) counts as gone.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    println!(
        "server gone {:.3} s after SIGTERM{} with a half-sent request line open",
        started.elapsed().as_secs_f64(),
        if o.twice { " (twice)" } else { "" }
    );
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let o = options()?;
    println!(
        "{} against {}; server RSS {:?} kB",
        o.attack,
        o.addr,
        rss_kb(o.server_pid)
    );
    match o.attack.as_str() {
        "slowloris" => slowloris(&o, false).await,
        "partial-headers" => slowloris(&o, true).await,
        "idle" => idle(&o).await,
        "h2c-bodies" => h2c_bodies(&o).await,
        "labels" => labels(&o).await,
        "sigterm" => sigterm(&o).await,
        "scrapers" => scrapers(&o).await,
        other => return Err(format!("unknown attack {other:?}; see the source's docs")),
    }
    Ok(())
}
