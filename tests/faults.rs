//! The `Client` preset against servers that misbehave, written here on raw loopback sockets:
//! they reset the connection, accept and never answer, answer one byte at a time, answer 503
//! with `Retry-After`, close in the middle of the body, or send malformed HTTP.
//!
//! For every fault: each call (sending and reading the whole body) ends within its deadline plus
//! a margin, with a response or a typed error; calls = answers + typed failures; nothing panics;
//! and once the client is dropped the runtime's live tasks are back to where they started. A
//! `POST` without `Idempotency-Key` reaches the server exactly once under every fault, whatever
//! strategy is asked for.
//!
//! Each fault server runs on a runtime of its own in a thread of its own, so that the task count
//! read here (`RuntimeMetrics::num_alive_tasks`, stable since tokio 1.39) is the client's alone.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_lifeline::client::Client;
use tower_lifeline::deadline::DeadlineExceeded;
use tower_lifeline::error::{find_source, BoxError};
use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};

/// How far past its deadline a call may end: scheduling on a loaded 2-core machine, not slack
/// in the library (the deadline layer wakes at the deadline itself).
const MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Reads the request, then resets the connection (RST, not FIN).
    Reset,
    /// Reads the request and never answers.
    Hang,
    /// A well-formed response, one byte every 20 ms (head ~0.8 s, whole ~2.8 s).
    OneByteAtATime,
    /// `503` with `Retry-After: 1`, on a keep-alive connection.
    RetryAfter503,
    /// Promises 100 bytes of body, sends 10, closes.
    CloseMidBody,
    /// A status line and headers that are not HTTP.
    Malformed,
}

const ALL_FAULTS: [Fault; 6] = [
    Fault::Reset,
    Fault::Hang,
    Fault::OneByteAtATime,
    Fault::RetryAfter503,
    Fault::CloseMidBody,
    Fault::Malformed,
];

/// A misbehaving server on its own runtime; dropping it stops it.
struct FaultServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl FaultServer {
    fn start(fault: Fault) -> FaultServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Bound with std: this runs inside the test's runtime, where `block_on` is not allowed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(misbehave(stream, fault, counter.clone()));
            }
        });
        FaultServer {
            addr,
            requests,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/fault", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request (head and `Content-Length` body); `false` at end of stream.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let body_len = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + body_len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    buffer.drain(..head_end + body_len);
    true
}

async fn misbehave(mut stream: TcpStream, fault: Fault, requests: Arc<AtomicUsize>) {
    let mut buffer = Vec::new();
    while read_request(&mut stream, &mut buffer).await {
        requests.fetch_add(1, Ordering::SeqCst);
        match fault {
            Fault::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Fault::Hang => std::future::pending::<()>().await,
            Fault::OneByteAtATime => {
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
                for byte in head.iter().chain(&[b'x'; 100]) {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Fault::RetryAfter503 => {
                let response = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 4\r\n\r\nbusy";
                if stream.write_all(response).await.is_err() {
                    return;
                }
            }
            Fault::CloseMidBody => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst ten.")
                    .await;
                let _ = stream.shutdown().await;
                return;
            }
            Fault::Malformed => {
                let _ = stream
                    .write_all(b"HTTP/1.1 2OO NOT OK\r\n\x01\x02: \xff\r\nnonsense\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// What a call ended with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    calls: usize,
    answers: usize,
    deadline: usize,
    transport: usize,
}

impl Tally {
    fn failures(&self) -> usize {
        self.deadline + self.transport
    }

    fn add(&mut self, other: Tally) {
        self.calls += other.calls;
        self.answers += other.answers;
        self.deadline += other.deadline;
        self.transport += other.transport;
    }
}

/// Sorts an error into a known type, or fails the test: an error nobody can match on is a bug.
fn classify(err: &BoxError) -> Tally {
    let err: &(dyn std::error::Error + 'static) = err.as_ref();
    let mut tally = Tally {
        calls: 1,
        ..Tally::default()
    };
    if find_source::<DeadlineExceeded>(err).is_some() {
        tally.deadline = 1;
    } else if find_source::<hyper::Error>(err).is_some()
        || find_source::<hyper_util::client::legacy::Error>(err).is_some()
        || find_source::<std::io::Error>(err).is_some()
    {
        tally.transport = 1;
    } else {
        panic!("untyped error: {err:?}");
    }
    tally
}

/// One GET, body included, under `deadline`; checks it ends in time.
async fn call(client: Client, url: String, deadline: Duration) -> Tally {
    let started = Instant::now();
    let outcome: Result<(StatusCode, bytes::Bytes), BoxError> = async {
        let response = client.get(&url).timeout(deadline).send().await?;
        let status = response.status();
        Ok((status, response.bytes().await?))
    }
    .await;
    let took = started.elapsed();
    assert!(
        took <= deadline + MARGIN,
        "{url}: a call with a {deadline:?} deadline took {took:?} ({outcome:?})"
    );
    match outcome {
        Ok(_) => Tally {
            calls: 1,
            answers: 1,
            ..Tally::default()
        },
        Err(err) => classify(&err),
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) for the live tasks to come back to `baseline`; returns the last count.
async fn settle_tasks(baseline: usize) -> usize {
    for _ in 0..300 {
        if alive_tasks() <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    alive_tasks()
}

/// Eight concurrent GETs against one fault, with each of two deadlines.
async fn drive(fault: Fault) -> Tally {
    drive_with(fault, Client::builder()).await
}

async fn drive_with(fault: Fault, builder: tower_lifeline::client::ClientBuilder) -> Tally {
    let server = FaultServer::start(fault);
    let baseline = alive_tasks();
    let client = builder.build().unwrap();
    let mut calls = JoinSet::new();
    for i in 0..8 {
        let deadline = if i % 2 == 0 {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(1_200)
        };
        calls.spawn(call(client.clone(), server.url(), deadline));
    }
    // The count sees tasks at all: the eight calls just spawned are alive.
    assert!(alive_tasks() >= baseline + 8, "{fault:?}");
    let mut tally = Tally::default();
    while let Some(result) = calls.join_next().await {
        tally.add(result.expect("no call panics"));
    }
    drop(client);
    let left = settle_tasks(baseline).await;
    assert_eq!(
        left, baseline,
        "{fault:?}: the client left tasks behind ({left} alive, {baseline} before)"
    );
    eprintln!(
        "{fault:?}: {tally:?}, server saw {} request(s)",
        server.requests()
    );
    tally
}

#[tokio::test]
async fn every_call_ends_in_time_with_an_answer_or_a_typed_error_and_no_task_leaks() {
    for fault in ALL_FAULTS {
        let tally = drive(fault).await;
        assert_eq!(tally.calls, 8, "{fault:?}");
        assert_eq!(
            tally.calls,
            tally.answers + tally.failures(),
            "{fault:?}: {tally:?}"
        );
        match fault {
            // Nothing usable ever comes back.
            Fault::Reset | Fault::Malformed | Fault::CloseMidBody => {
                assert_eq!(tally.answers, 0, "{fault:?}: {tally:?}")
            }
            Fault::Hang => assert_eq!(tally.deadline, 8, "{fault:?}: {tally:?}"),
            // The head takes 0.8 s and the whole 2.8 s: neither deadline lets the body finish.
            Fault::OneByteAtATime => assert_eq!(tally.deadline, 8, "{fault:?}: {tally:?}"),
            // A 503 is an answer: handed back once no retry fits the deadline. (A 1.2 s call
            // retries after 1 s and has 0.2 s left for it: on a starved machine that second
            // attempt may run out of time instead, which is a typed deadline error too.)
            Fault::RetryAfter503 => {
                assert!(tally.answers >= 4, "{fault:?}: {tally:?}");
                assert_eq!(tally.transport, 0, "{fault:?}: {tally:?}");
            }
        }
    }
}

#[tokio::test]
async fn an_http2_client_against_the_same_faults_ends_in_time_and_leaks_no_task() {
    // The fault servers speak HTTP/1 (or nothing): to an HTTP/2 client every one of them is a
    // broken peer, and its connection tasks must still end.
    for fault in ALL_FAULTS {
        let tally = drive_with(fault, Client::builder().http2_only(true)).await;
        assert_eq!(tally.calls, 8, "{fault:?}");
        assert_eq!(
            tally.calls,
            tally.answers + tally.failures(),
            "{fault:?}: {tally:?}"
        );
        assert_eq!(tally.answers, 0, "{fault:?}: no HTTP/2 answer exists here");
    }
}

#[tokio::test]
async fn a_retry_after_503_is_honoured_only_while_it_fits_the_deadline() {
    let server = FaultServer::start(Fault::RetryAfter503);
    let client = Client::builder().build().unwrap();
    // 300 ms: the 1 s wait does not fit, the 503 comes back at once after one attempt.
    let response = client
        .get(server.url())
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.attempts(), 1);
    // 1.5 s: one wait of 1 s fits, a second does not.
    let response = client
        .get(server.url())
        .timeout(Duration::from_millis(1_500))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.attempts(), 2);
    assert_eq!(server.requests(), 3);
}

/// The strategies a caller might ask for; none may send a bare POST twice.
fn strategy_choices() -> Vec<(&'static str, StrategyLayer, Option<Strategy>)> {
    let hedge = Strategy::parallel(3, Delays::constant(Duration::from_millis(10)));
    let retries = Strategy::sequential(3, Delays::constant(Duration::from_millis(10)));
    let until = Strategy::until_deadline(
        Strategy::single(),
        Delays::constant(Duration::from_millis(10)),
    );
    vec![
        ("client default", StrategyLayer::new(), None),
        (
            "per-request parallel",
            StrategyLayer::new(),
            Some(hedge.clone()),
        ),
        (
            "per-request sequential",
            StrategyLayer::new(),
            Some(retries),
        ),
        (
            "per-request until deadline",
            StrategyLayer::new(),
            Some(until),
        ),
        (
            "client-wide parallel",
            StrategyLayer::new().strategy(hedge),
            None,
        ),
    ]
}

#[tokio::test]
async fn a_post_without_idempotency_key_reaches_the_server_once_under_every_fault() {
    // Strategies the client chose, not ones its caller asked for on the request: a caller's
    // explicit strategy is honoured for any method. The resends of requests that never left are
    // on (the default): none of these faults is one, since each server read the request.
    let mut checked = 0;
    let configured = || {
        strategy_choices()
            .into_iter()
            .filter(|(_, _, per_request)| per_request.is_none())
    };
    for fault in ALL_FAULTS {
        let server = FaultServer::start(fault);
        for (name, layer, per_request) in configured() {
            let client = Client::builder().strategy(layer).build().unwrap();
            let before = server.requests();
            let mut request = client
                .post(server.url())
                .body("{\"order\": 7}")
                .timeout(Duration::from_millis(600));
            if let Some(strategy) = per_request {
                request = request.strategy(strategy);
            }
            let started = Instant::now();
            let outcome = request.send().await;
            assert!(started.elapsed() <= Duration::from_millis(600) + MARGIN);
            if let Err(err) = &outcome {
                classify(err);
            }
            // Room for a duplicate to arrive, were one sent.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                server.requests() - before,
                1,
                "{fault:?}, {name}: the POST reached the server {} times ({outcome:?})",
                server.requests() - before
            );
            checked += 1;
        }
    }
    assert_eq!(checked, ALL_FAULTS.len() * configured().count());
}

#[tokio::test]
async fn a_get_is_retried_under_faults_but_never_past_its_attempts() {
    // The other side of the POST test: a GET does get its three attempts where it may.
    let server = FaultServer::start(Fault::Reset);
    let client = Client::builder().build().unwrap();
    let err = client
        .get(server.url())
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();
    assert_eq!(classify(&err).transport, 1, "{err}");
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn under_a_resetting_server_the_breaker_opens_and_later_calls_fail_fast_with_a_typed_error() {
    use tower::{ServiceBuilder, ServiceExt};
    use tower_lifeline::body::ReplayBody;
    use tower_lifeline::circuit_breaker::{
        CircuitBreakerLayer, CircuitBreakerSettings, CircuitOpen,
    };
    use tower_lifeline::deadline::ClientDeadlineLayer;

    let server = FaultServer::start(Fault::Reset);
    let transport =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<ReplayBody<http_body_util::Full<bytes::Bytes>>>();
    let breaker = CircuitBreakerLayer::new(
        CircuitBreakerSettings::builder()
            .consecutive_failures(3)
            .break_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
    .return_error();
    let strategy = StrategyLayer::new();
    let stats = strategy.stats();
    let stack = ServiceBuilder::new()
        .layer(ClientDeadlineLayer::new())
        .layer(strategy)
        .layer(breaker)
        .service(transport);

    let mut open = 0;
    for _ in 0..10 {
        let mut request = http::Request::get(server.url())
            .body(http_body_util::Full::default())
            .unwrap();
        request
            .extensions_mut()
            .insert(tower_lifeline::context::Deadline::after(
                Duration::from_secs(2),
            ));
        let started = Instant::now();
        let err = stack.clone().oneshot(request).await.unwrap_err();
        assert!(started.elapsed() <= Duration::from_secs(2) + MARGIN);
        if find_source::<CircuitOpen>(err.as_ref()).is_some() {
            open += 1;
        } else {
            assert_eq!(classify(&err).transport, 1, "{err}");
        }
    }
    // The first call's three attempts trip it; every later call is refused without connecting,
    // and a refusal is final: no retry of it spends the budget or waits out a backoff.
    assert_eq!(server.requests(), 3);
    assert_eq!(open, 9);
    assert_eq!(stats.snapshot().retries, 2, "{:?}", stats.snapshot());
}
