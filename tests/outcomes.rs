//! One judgement of every attempt that the whole client stack agrees on (issue 14): each rule
//! through the `Client` preset on real loopback sockets, or through a hand-composed stack in
//! paused time.
//!
//! - a hanging destination trips the breaker, with and without an attempt timeout;
//! - a half-open probe cut by the caller's deadline keeps the breaker open;
//! - with `Split`, an attempt that runs out of its share is retried, with an attempt timeout too;
//! - a body cut mid-way is a failed attempt: retried for a GET, counted by the breaker;
//! - a request that never left is sent again for any method, a POST without a key included;
//! - the preset bounds its connections per destination, and a call that waits past the pool
//!   timeout fails with a typed error that the breaker does not count.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_lifeline::body::ReplayBody;
use tower_lifeline::circuit_breaker::{
    BreakerRegistry, CircuitBreakerLayer, CircuitBreakerSettings, CircuitState,
};
use tower_lifeline::classify::outcome_of_error;
use tower_lifeline::client::{Client, PoolTimeout};
use tower_lifeline::context::Deadline;
use tower_lifeline::deadline::ClientDeadlineLayer;
use tower_lifeline::error::{find_source, BoxError};
use tower_lifeline::outcome::Outcome;
use tower_lifeline::strategy::{AttemptDeadline, Delays, Strategy, StrategyLayer};
use tower_lifeline::timeout::AttemptTimeoutLayer;

/// A breaker that opens at half failures over at least 10 requests, for a minute.
fn breaker_settings() -> CircuitBreakerSettings {
    CircuitBreakerSettings::builder()
        .minimum_throughput(10)
        .failure_threshold(0.5)
        .sampling_duration(Duration::from_secs(30))
        .break_duration(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A server on 127.0.0.1 that accepts, reads, and never answers; counts the connections.
async fn hanging_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                // Read whatever comes, answer nothing, until the client goes away.
                while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, connections)
}

async fn hanging_destination_trips_the_breaker(attempt_timeout: Option<Duration>) {
    let (addr, connections) = hanging_server().await;
    let mut builder = Client::builder().circuit_breaker(Some(breaker_settings()));
    if let Some(timeout) = attempt_timeout {
        builder = builder.attempt_timeout(timeout);
    }
    let client = builder.build().unwrap();
    let url = format!("http://{addr}/hang");
    let calls = (0..12).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(&url)
                .timeout(Duration::from_millis(100))
                .send()
                .await
        }
    });
    for result in futures_join_all(calls).await {
        let err = result.expect_err("a hanging destination never answers");
        let outcome = outcome_of_error(err.as_ref());
        // With an attempt timeout shorter than the deadline a GET retries, and its retry may
        // meet the breaker the other calls' timeouts just opened.
        let retried = attempt_timeout.is_some_and(|t| t < Duration::from_millis(100));
        assert!(
            outcome == Outcome::Failure || (retried && outcome == Outcome::Refused),
            "{outcome}: {err}"
        );
    }
    if attempt_timeout.is_none_or(|t| t >= Duration::from_millis(100)) {
        // Cut by the deadline, each GET had no time left for its second attempt: one
        // connection per call, none for a retry.
        assert_eq!(connections.load(Ordering::SeqCst), 12);
    }
    let registry = client.breakers().unwrap();
    let scope = format!("http://{addr}");
    assert_eq!(
        registry.state(&scope),
        Some(CircuitState::Open),
        "attempt timeout {attempt_timeout:?}: {:?}",
        registry.snapshot()
    );
    // And the next call is refused at once, without waiting out its deadline.
    let started = tokio::time::Instant::now();
    let err = client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_err();
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::Refused, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// `futures::future::join_all` without the dependency: spawn each, await all.
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_hanging_destination_trips_the_breaker_without_an_attempt_timeout() {
    hanging_destination_trips_the_breaker(None).await;
}

#[tokio::test]
async fn a_hanging_destination_trips_the_breaker_with_an_attempt_timeout_longer_than_the_deadline()
{
    hanging_destination_trips_the_breaker(Some(Duration::from_secs(1))).await;
}

#[tokio::test]
async fn a_hanging_destination_trips_the_breaker_with_an_attempt_timeout_shorter_than_the_deadline()
{
    hanging_destination_trips_the_breaker(Some(Duration::from_millis(50))).await;
}

/// A hand-composed stack (deadline, strategy, breaker, optional attempt timeout) over a backend
/// that answers 503 while `failing` is above zero and hangs while `hanging` is set.
struct Composed {
    calls: Arc<AtomicUsize>,
    hang_from: Arc<AtomicUsize>,
    registry: BreakerRegistry,
    stack: tower::util::BoxCloneService<Request<Full<Bytes>>, Response<String>, BoxError>,
}

fn composed(attempt_timeout: Option<Duration>, strategy: StrategyLayer) -> Composed {
    let calls = Arc::new(AtomicUsize::new(0));
    // Calls numbered at or above this hang; below it they answer 503.
    let hang_from = Arc::new(AtomicUsize::new(usize::MAX));
    let backend = {
        let calls = calls.clone();
        let hang_from = hang_from.clone();
        service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let hang = n >= hang_from.load(Ordering::SeqCst);
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                let mut response = Response::new(String::new());
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                // One error type on both sides of the optional attempt timeout.
                Ok::<_, BoxError>(response)
            }
        })
    };
    let breaker = CircuitBreakerLayer::new(breaker_settings()).return_error();
    let registry = breaker.registry();
    let stack = ServiceBuilder::new()
        .layer(ClientDeadlineLayer::new())
        .layer(strategy)
        .layer(breaker)
        .option_layer(attempt_timeout.map(AttemptTimeoutLayer::new))
        .service(backend);
    Composed {
        calls,
        hang_from,
        registry,
        stack: tower::util::BoxCloneService::new(stack),
    }
}

fn get_within(deadline: Duration) -> Request<Full<Bytes>> {
    let mut request = Request::get("http://backend/")
        .body(Full::default())
        .unwrap();
    request.extensions_mut().insert(Deadline::after(deadline));
    request
}

async fn a_probe_cut_by_the_deadline_keeps_the_breaker_open(attempt_timeout: Option<Duration>) {
    let c = composed(
        attempt_timeout,
        StrategyLayer::new().strategy(Strategy::single()),
    );
    // Ten 503s open it.
    for _ in 0..10 {
        let response = c
            .stack
            .clone()
            .oneshot(get_within(Duration::from_secs(1)))
            .await;
        assert_eq!(response.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(c.registry.state("http://backend"), Some(CircuitState::Open));
    // After the break the destination hangs: the probe is cut by the caller's deadline.
    tokio::time::advance(Duration::from_secs(61)).await;
    c.hang_from
        .store(c.calls.load(Ordering::SeqCst), Ordering::SeqCst);
    let err = c
        .stack
        .clone()
        .oneshot(get_within(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::Failure, "{err}");
    assert_eq!(
        c.registry.state("http://backend"),
        Some(CircuitState::Open),
        "attempt timeout {attempt_timeout:?}: the hanging destination was declared healthy"
    );
    // And it stays open for a whole break: the next call is refused without reaching it.
    let before = c.calls.load(Ordering::SeqCst);
    let err = c
        .stack
        .clone()
        .oneshot(get_within(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::Refused, "{err}");
    assert_eq!(c.calls.load(Ordering::SeqCst), before);
}

#[tokio::test(start_paused = true)]
async fn a_half_open_probe_cut_by_the_deadline_keeps_the_breaker_open() {
    a_probe_cut_by_the_deadline_keeps_the_breaker_open(None).await;
}

#[tokio::test(start_paused = true)]
async fn a_half_open_probe_cut_by_the_deadline_keeps_the_breaker_open_with_an_attempt_timeout() {
    a_probe_cut_by_the_deadline_keeps_the_breaker_open(Some(Duration::from_secs(1))).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_keeps_the_breaker_open_and_lets_the_next_call_probe() {
    let c = composed(None, StrategyLayer::new().strategy(Strategy::single()));
    for _ in 0..10 {
        let _ = c
            .stack
            .clone()
            .oneshot(get_within(Duration::from_secs(1)))
            .await;
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    c.hang_from
        .store(c.calls.load(Ordering::SeqCst), Ordering::SeqCst);
    // The caller goes away long before its deadline.
    let probe = c.stack.clone().oneshot(get_within(Duration::from_secs(10)));
    assert!(tokio::time::timeout(Duration::from_millis(50), probe)
        .await
        .is_err());
    assert_eq!(c.registry.state("http://backend"), Some(CircuitState::Open));
    // Nothing was learned about the destination, so the next caller probes at once.
    let before = c.calls.load(Ordering::SeqCst);
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        c.stack.clone().oneshot(get_within(Duration::from_secs(10))),
    )
    .await;
    assert_eq!(c.calls.load(Ordering::SeqCst), before + 1);
}

async fn split_retries_after_a_share_runs_out(attempt_timeout: Option<Duration>) {
    let strategy = StrategyLayer::new()
        .strategy(Strategy::sequential(
            3,
            Delays::constant(Duration::from_millis(10)),
        ))
        .attempt_deadline(AttemptDeadline::Split);
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = {
        let calls = calls.clone();
        service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(Response::new(String::from("ok")))
            }
        })
    };
    let stack = ServiceBuilder::new()
        .layer(ClientDeadlineLayer::new())
        .layer(strategy)
        .option_layer(attempt_timeout.map(AttemptTimeoutLayer::new))
        .service(backend);
    let started = tokio::time::Instant::now();
    let response = stack
        .oneshot(get_within(Duration::from_secs(3)))
        .await
        .unwrap_or_else(|err| panic!("attempt timeout {attempt_timeout:?}: {err}"));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The first attempt had a third of 3 s; the second went after its 10 ms backoff.
    assert_eq!(started.elapsed(), Duration::from_millis(1_010));
}

#[tokio::test(start_paused = true)]
async fn with_split_an_attempt_out_of_its_share_is_retried() {
    split_retries_after_a_share_runs_out(None).await;
}

#[tokio::test(start_paused = true)]
async fn with_split_an_attempt_out_of_its_share_is_retried_with_an_attempt_timeout_layer() {
    split_retries_after_a_share_runs_out(Some(Duration::from_secs(10))).await;
}

/// A server whose first connection promises 1,000 bytes, sends 4 and closes; later ones answer.
async fn cut_body_once_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut read = 0;
                loop {
                    match stream.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                    if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfour")
                        .await;
                    let _ = stream.shutdown().await;
                } else {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nwhole")
                        .await;
                }
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn a_body_cut_mid_way_is_a_failed_attempt_retried_and_counted_by_the_breaker() {
    let (addr, requests) = cut_body_once_server().await;
    let client = Client::builder()
        .circuit_breaker(Some(breaker_settings()))
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{addr}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.attempts(), 2);
    assert_eq!(response.text().await.unwrap(), "whole");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    let snapshot = client.breakers().unwrap().snapshot();
    assert_eq!(snapshot.len(), 1);
    assert_eq!((snapshot[0].requests, snapshot[0].failures), (2, 1));
}

#[tokio::test]
async fn a_post_that_never_left_is_sent_again_up_to_the_connection_attempts() {
    // A port with nothing listening: every connect is refused, nothing reaches a server.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let strategy = StrategyLayer::new();
    let stats = strategy.stats();
    let client = Client::builder().strategy(strategy).build().unwrap();
    let err = client
        .post(format!("http://127.0.0.1:{port}/orders"))
        .body("{\"order\": 7}")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_err();
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::NotSent, "{err}");
    // aio-request's three connection attempts: two more sends.
    assert_eq!(stats.snapshot().retries, 2, "{:?}", stats.snapshot());

    // Turned off, the POST is sent once.
    let strategy = StrategyLayer::new().connection_attempts(1);
    let stats = strategy.stats();
    let client = Client::builder().strategy(strategy).build().unwrap();
    let _ = client
        .post(format!("http://127.0.0.1:{port}/orders"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(stats.snapshot().retries, 0);
}

/// An HTTP/2 server that refuses the first stream (RST_STREAM REFUSED_STREAM, the stream never
/// processed) and answers the later ones; counts the requests it processed.
async fn refusing_h2_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let processed = Arc::new(AtomicUsize::new(0));
    let counter = processed.clone();
    tokio::spawn(async move {
        let refused = Arc::new(AtomicUsize::new(0));
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    if refused.fetch_add(1, Ordering::SeqCst) == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = respond.send_response(Response::new(()), true);
                }
            });
        }
    });
    (addr, processed)
}

#[tokio::test]
async fn a_post_on_a_refused_http2_stream_is_sent_again_and_processed_once() {
    let (addr, processed) = refusing_h2_server().await;
    let (result, resends) = post_over_http2(addr).await;
    assert_eq!(result.unwrap().status(), StatusCode::OK);
    assert_eq!(processed.load(Ordering::SeqCst), 1);
    assert_eq!(resends, 1);
}

#[tokio::test]
async fn the_preset_bounds_connections_per_destination_and_a_pool_timeout_is_no_failure_of_it() {
    let (addr, connections) = hanging_server().await;
    let client = Client::builder()
        .max_connections_per_host(2)
        .pool_timeout(Duration::from_millis(100))
        .circuit_breaker(Some(breaker_settings()))
        .strategy(StrategyLayer::new().connection_attempts(1))
        .build()
        .unwrap();
    let url = format!("http://{addr}/hang");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                client
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();
    let timeout = find_source::<PoolTimeout>(err.as_ref()).unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(timeout.destination(), format!("http://{addr}"));
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::NotSentLocally);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    // The breaker counted nothing for the call that never left (the two held ones are in flight).
    let snapshot = client.breakers().unwrap().snapshot();
    assert_eq!(snapshot[0].requests, 0, "{snapshot:?}");
    for call in held {
        let _ = call.await.unwrap();
    }
}

/// An HTTP/2 server written frame by frame, to send what the `h2` crate's server cannot be made
/// to: a GOAWAY naming a last stream id below the request it just read.
///
/// On each connection it reads the preface, settles SETTINGS and reads one request's HEADERS;
/// the first connection then gets `GOAWAY(last_stream_id, code)` and is closed, later ones get
/// `:status 200`. Counts the requests read on the first connection and answered on the others.
async fn goaway_server(last_stream_id: u32, code: u32) -> (SocketAddr, Arc<AtomicUsize>) {
    async fn read_frame(stream: &mut tokio::net::TcpStream) -> Option<(u8, u32)> {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.ok()?;
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await.ok()?;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some((head[3], id))
    }
    fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut out = vec![length[1], length[2], length[3], kind, flags];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut preface = [0u8; 24];
            if stream.read_exact(&mut preface).await.is_err() {
                continue;
            }
            // Our SETTINGS (none), then read until the client's first HEADERS (type 1).
            let _ = stream.write_all(&frame(4, 0, 0, &[])).await;
            let mut request = None;
            while let Some((kind, id)) = read_frame(&mut stream).await {
                if kind == 4 {
                    let _ = stream.write_all(&frame(4, 1, 0, &[])).await; // SETTINGS ACK
                }
                if kind == 1 {
                    request = Some(id);
                    break;
                }
            }
            let Some(id) = request else { continue };
            if std::mem::take(&mut first) {
                let mut payload = last_stream_id.to_be_bytes().to_vec();
                payload.extend_from_slice(&code.to_be_bytes());
                let _ = stream.write_all(&frame(7, 0, 0, &payload)).await; // GOAWAY
                                                                           // Held open, so that the client's h2 acts on the GOAWAY itself rather than on a
                                                                           // closed socket; bounded, so that the test ends whatever the client does.
                let mut rest = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest))
                    .await;
                continue;
            }
            counter.fetch_add(1, Ordering::SeqCst);
            // HEADERS, END_STREAM | END_HEADERS, HPACK static index 8: `:status: 200`.
            let _ = stream.write_all(&frame(1, 0x5, id, &[0x88])).await;
            // Keep the connection until the client goes.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        }
    });
    (addr, answered)
}

/// A POST without Idempotency-Key over HTTP/2 to `addr`: its result and the resends it took.
async fn post_over_http2(
    addr: SocketAddr,
) -> (
    Result<tower_lifeline::client::ClientResponse, BoxError>,
    u64,
) {
    let strategy = StrategyLayer::new();
    let stats = strategy.stats();
    let client = Client::builder()
        .http2_only(true)
        .strategy(strategy)
        .build()
        .unwrap();
    let result = client
        .post(format!("http://{addr}/orders"))
        .body("{\"order\": 7}")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    (result, stats.snapshot().retries)
}

#[tokio::test]
async fn a_post_left_unprocessed_by_a_graceful_goaway_is_sent_again() {
    // GOAWAY(last_stream_id = 0, NO_ERROR): stream 1 was never processed.
    let (addr, answered) = goaway_server(0, 0).await;
    let (result, resends) = post_over_http2(addr).await;
    let response = result.unwrap_or_else(|err| panic!("{err:?}"));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    assert_eq!(resends, 1);
}

#[tokio::test]
async fn a_post_the_server_may_have_processed_before_an_error_goaway_is_not_sent_again() {
    // GOAWAY(last_stream_id = 1, INTERNAL_ERROR): stream 1 may have been processed. (h2 0.4
    // reports this stream's end as a broken pipe; were it reported as the GOAWAY itself, the
    // classifier's NO_ERROR condition is what keeps it from being resent.)
    let (addr, answered) = goaway_server(1, 2).await;
    let (result, resends) = post_over_http2(addr).await;
    let err = result.unwrap_err();
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::Failure, "{err:?}");
    assert_eq!(resends, 0);
    assert_eq!(answered.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_post_whose_stream_is_refused_after_its_head_arrived_is_not_sent_again() {
    // The head proves the server saw the request: a REFUSED_STREAM reset after it (a server or
    // proxy breaking RFC 9113 8.7) must not make the client think the POST never left.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut body) = respond.send_response(Response::new(()), false) {
                        let _ = body.send_data(Bytes::from_static(b"partial"), false);
                        // After the head has reached the client (before it, a REFUSED_STREAM
                        // is the RFC's "not processed", which the client has to believe).
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            body.send_reset(h2::Reason::REFUSED_STREAM);
                        });
                    }
                }
            });
        }
    });
    let (result, resends) = post_over_http2(addr).await;
    let err = result.unwrap_err();
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::Failure, "{err:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(resends, 0);
}
