//! What the loopback benches (`e2e`, `scaling`, `allocations`, `instructions`) share: their
//! flags, the app they serve, the keep-alive load they put on a server and the clients they
//! compare.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// The value after `name` on the command line (`--rounds 6`), if given. Other arguments, such
/// as the `--bench` that `cargo bench` adds, are ignored.
pub fn flag<T: FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|arg| arg == name)?;
    let value = args.get(at + 1)?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot read {value:?}")),
    )
}

/// The app every server variant serves: `GET /hello` answers "hello".
pub fn app() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

/// The same headers a tower-lifeline caller sends, to every server.
pub fn hello(addr: SocketAddr) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri("/hello")
        .header("host", addr.to_string())
        .header("x-request-timeout", "5")
        .header("x-request-priority", "normal")
        .body(Empty::new())
        .expect("a valid request")
}

/// What one round of load saw.
pub struct Round {
    /// Latency of each whole `200`, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Requests that failed or did not answer `200` with a whole body.
    pub errors: u64,
    pub elapsed: Duration,
}

/// One round against a server: `connections` HTTP/1.1 keep-alive connections, one request at a
/// time on each, for `secs` seconds.
pub async fn keep_alive_round(addr: SocketAddr, connections: usize, secs: f64) -> Round {
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            let mut latencies = Vec::with_capacity(65_536);
            let mut errors = 0u64;
            while Instant::now() < end {
                let start = Instant::now();
                let ok = match sender.send_request(hello(addr)).await {
                    Ok(response) => {
                        let ok = response.status() == 200;
                        ok & response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(start.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut round = Round {
        latencies_us: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, errors) = task.await.expect("load task");
        round.latencies_us.extend(latencies);
        round.errors += errors;
    }
    round.elapsed = started.elapsed();
    round
}

/// The clients compared, behind one call.
#[derive(Clone)]
pub enum AnyClient {
    Bare(
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            Full<Bytes>,
        >,
    ),
    Lifeline(tower_lifeline::client::Client),
    Reqwest(reqwest::Client),
}

impl AnyClient {
    /// `GET url`: whether it answered `200` with its whole body.
    pub async fn get(&self, url: &str) -> bool {
        match self {
            AnyClient::Bare(client) => {
                let request = Request::builder()
                    .uri(url)
                    .body(Full::default())
                    .expect("a valid request");
                match client.request(request).await {
                    Ok(response) => {
                        response.status() == 200 && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                }
            }
            AnyClient::Reqwest(client) => match client.get(url).send().await {
                Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
                Err(_) => false,
            },
            AnyClient::Lifeline(client) => match client.get(url).send().await {
                Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
                Err(_) => false,
            },
        }
    }
}
