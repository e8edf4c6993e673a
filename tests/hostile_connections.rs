//! Slow and hostile peers against the whole `Server` preset on real loopback sockets: slow-loris
//! heads, oversized heads, silent connections, a stalled h2c preface, more connections than the
//! cap, never-finishing bodies over h2c and HTTP/1, slow uploads, and a half-sent request line at
//! shutdown. Counts are in the hundreds; the thousands are in RELIABILITY.md.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tower_lifeline::server::{Server, ServerBuilder};
use tower_lifeline::shutdown::{Drained, Shutdown};

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
            }),
        )
        .route(
            "/forever",
            get(|| async {
                std::future::pending::<()>().await;
                "never"
            }),
        )
}

/// A builder with a registry of its own, so that tests can run side by side.
fn builder() -> ServerBuilder {
    Server::builder().registry(Registry::new())
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    serving: JoinHandle<std::io::Result<Drained>>,
}

async fn start(builder: ServerBuilder) -> Running {
    let shutdown = Shutdown::new().grace_period(Duration::from_secs(30));
    let server = builder.shutdown(shutdown.clone()).build(app()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(server.serve(listener));
    Running {
        addr,
        shutdown,
        serving,
    }
}

/// Sends a raw HTTP/1.1 GET on a fresh connection and returns the status, or `None` if the
/// connection failed or gave no status line.
async fn get_status(addr: SocketAddr, path: &str, headers: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Waits for the peer to close `stream` (reading and dropping anything it sends), up to `limit`;
/// returns how long it took, or `None` if it stayed open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buffer),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_heads_are_closed_by_the_header_read_timeout_while_others_are_served() {
    const LORIS: usize = 200;
    let running = start(builder().header_read_timeout(Duration::from_secs(1))).await;
    let addr = running.addr;
    let lorises: Vec<_> = (0..LORIS)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let opened = Instant::now();
                stream.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
                // One header byte every 200 ms, for ever: only the server can end this.
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if stream.write_all(b"X").await.is_err() {
                        break;
                    }
                    if opened.elapsed() > Duration::from_secs(20) {
                        return None;
                    }
                }
                closed_within(&mut stream, Duration::from_secs(5))
                    .await
                    .map(|_| opened.elapsed())
            })
        })
        .collect();

    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get_status(addr, "/hello", "").await, Some(200));
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for loris in lorises {
        let lived = loris.await.unwrap().expect("closed by the server");
        assert!(lived < Duration::from_secs(4), "open for {lived:?}");
    }
    assert!(
        slowest < Duration::from_secs(1),
        "/hello took {slowest:?} at worst"
    );
}

#[tokio::test]
async fn a_head_larger_than_the_maximum_is_refused_with_431_and_closed() {
    let running = start(builder().max_header_bytes(16 * 1024)).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(running.addr).await.unwrap();
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ")
            .await
            .unwrap();
        // 100 KB of header, never finished; the server stops reading long before.
        let _ = stream.write_all(&[b'a'; 100 * 1024]).await;
        let mut answer = Vec::new();
        let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "closed promptly");
        answers.push(String::from_utf8_lossy(&answer).into_owned());
    }
    for answer in answers {
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    }
    assert_eq!(get_status(running.addr, "/hello", "").await, Some(200));
}

#[tokio::test]
async fn silent_connections_and_a_stalled_h2c_preface_are_closed_by_the_header_read_timeout() {
    let running = start(builder().header_read_timeout(Duration::from_millis(500))).await;
    let mut silent = TcpStream::connect(running.addr).await.unwrap();
    let mut preface = TcpStream::connect(running.addr).await.unwrap();
    // Still undecided between HTTP/1 and h2c: hyper's own header timeout does not run yet.
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut h2_no_stream = TcpStream::connect(running.addr).await.unwrap();
    // A whole h2c preface and an empty SETTINGS frame, and then no stream at all.
    h2_no_stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    for (name, stream) in [
        ("silent", &mut silent),
        ("half a preface", &mut preface),
        ("h2c without a stream", &mut h2_no_stream),
    ] {
        let closed = closed_within(stream, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "{name}: still open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_idle_connections_make_room_for_new_ones() {
    const CAP: usize = 50;
    let running = start(
        builder()
            .max_connections(CAP)
            .header_read_timeout(Duration::from_secs(60)),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 * CAP {
        idle.push(TcpStream::connect(running.addr).await.unwrap());
    }
    let started = Instant::now();
    assert_eq!(get_status(running.addr, "/healthz", "").await, Some(200));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Give the closes a moment to land, then count what is still open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut open = 0;
    for stream in &mut idle {
        if closed_within(stream, Duration::from_millis(20))
            .await
            .is_none()
        {
            open += 1;
        }
    }
    assert!(open <= CAP, "{open} idle connections still open");
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_closed_at_once() {
    const CAP: usize = 5;
    let running = start(builder().max_connections(CAP)).await;
    let mut busy = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(running.addr).await.unwrap();
        stream
            .write_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(running.addr).await.unwrap();
    let closed = closed_within(&mut refused, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "a connection past the cap is closed");
    for stream in &mut busy {
        let still_open = closed_within(stream, Duration::from_millis(20)).await;
        assert!(
            still_open.is_none(),
            "busy connections are never the ones closed"
        );
    }
}

#[tokio::test]
async fn a_half_sent_request_line_does_not_hold_the_drain() {
    let running = start(builder()).await;
    let mut half = TcpStream::connect(running.addr).await.unwrap();
    half.write_all(b"GET /hel").await.unwrap();
    assert_eq!(get_status(running.addr, "/hello", "").await, Some(200));
    let started = Instant::now();
    running.shutdown.trigger();
    let drained = timeout(Duration::from_secs(5), running.serving)
        .await
        .expect("the drain does not wait for the half-sent line")
        .unwrap()
        .unwrap();
    assert_eq!(drained, Drained::Completed);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(closed_within(&mut half, Duration::from_secs(1))
        .await
        .is_some());
}

#[tokio::test]
async fn forcing_the_drain_returns_at_once_with_requests_still_in_flight() {
    let running = start(builder()).await;
    let addr = running.addr;
    let stuck = tokio::spawn(async move { get_status(addr, "/forever", "").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !running.serving.is_finished(),
        "draining, waiting for /forever"
    );
    running.shutdown.force();
    let drained = timeout(Duration::from_secs(2), running.serving)
        .await
        .expect("forced")
        .unwrap()
        .unwrap();
    assert_eq!(drained, Drained::Forced { in_flight: 1 });
    stuck.abort();
}

type H2Sender = hyper::client::conn::http2::SendRequest<Channel<Bytes>>;

async fn h2c(addr: SocketAddr) -> H2Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// Opens `streams` POST /echo streams on `sender` whose bodies never finish; returns the
/// senders of the bodies (kept alive) and the pending responses.
fn never_finishing_posts(
    sender: &H2Sender,
    addr: SocketAddr,
    streams: usize,
    priority: &str,
) -> Vec<(
    http_body_util::channel::Sender<Bytes>,
    JoinHandle<Option<StatusCode>>,
)> {
    (0..streams)
        .map(|_| {
            let (mut body_sender, body) = Channel::<Bytes>::new(1);
            let request = Request::post(format!("http://{addr}/echo"))
                .header("x-request-priority", priority)
                .body(body)
                .unwrap();
            let mut sender = sender.clone();
            let response = tokio::spawn(async move {
                let response = sender.send_request(request).await.ok()?;
                Some(response.status())
            });
            let _ = body_sender.try_send(http_body::Frame::data(Bytes::from_static(b"x")));
            (body_sender, response)
        })
        .collect()
}

/// Asks `/hello` every 50 ms with `priority` until it answers 200; returns how long that took.
async fn until_hello_answers(addr: SocketAddr, priority: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let header = format!("X-Request-Priority: {priority}\r\n");
    while started.elapsed() < limit {
        if get_status(addr, "/hello", &header).await == Some(200) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/hello refused for {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_finishing_h2c_bodies_give_their_slots_back_within_the_body_timeout() {
    const BODY_TIMEOUT: Duration = Duration::from_secs(1);
    for priority in ["normal", "high"] {
        let running = start(builder().capacity(40).body_timeout(BODY_TIMEOUT)).await;
        let addr = running.addr;
        let mut held = Vec::new();
        for _ in 0..2 {
            let sender = h2c(addr).await;
            held.extend(never_finishing_posts(&sender, addr, 25, priority));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            get_status(
                addr,
                "/hello",
                &format!("X-Request-Priority: {priority}\r\n")
            )
            .await,
            Some(503),
            "{priority}: the slots are taken"
        );
        let waited = until_hello_answers(addr, priority, BODY_TIMEOUT * 4).await;
        assert!(
            waited < BODY_TIMEOUT + Duration::from_secs(1),
            "{priority}: refused for {waited:?}"
        );
        for (_body, response) in held {
            let status = timeout(Duration::from_secs(5), response).await;
            let status = status.expect("answered").unwrap();
            assert!(
                matches!(status, Some(s) if s.is_client_error() || s.is_server_error()),
                "{priority}: {status:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_finishing_http1_bodies_give_their_slots_back_within_the_body_timeout() {
    const BODY_TIMEOUT: Duration = Duration::from_secs(1);
    let running = start(builder().capacity(40).body_timeout(BODY_TIMEOUT)).await;
    let addr = running.addr;
    let mut uploads = Vec::new();
    // Capacity 40: Normal may use 32 slots, and these 32 uploads take them all.
    for _ in 0..32 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
            .await
            .unwrap();
        uploads.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_status(addr, "/hello", "").await, Some(503));
    let waited = until_hello_answers(addr, "normal", BODY_TIMEOUT * 4).await;
    assert!(
        waited < BODY_TIMEOUT + Duration::from_secs(1),
        "refused for {waited:?}"
    );
    for stream in &mut uploads {
        let mut answer = vec![0u8; 12];
        timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(
            &answer,
            b"HTTP/1.1 400",
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_do_not_teach_deadline_admission_that_the_route_is_slow() {
    let running = start(builder()).await;
    let addr = running.addr;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Channel<Bytes>>();
    // Eight uploads that take 600 ms each to arrive; the handler itself takes microseconds.
    let uploads: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let (mut sender, body) = Channel::<Bytes>::new(1);
                let request = Request::post(format!("http://{addr}/echo"))
                    .body(body)
                    .unwrap();
                let response = tokio::spawn(client.request(request));
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    sender.send_data(Bytes::from_static(b"x")).await.unwrap();
                }
                drop(sender);
                response.await.unwrap().unwrap().status()
            })
        })
        .collect();
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), StatusCode::OK);
    }
    // A caller with 200 ms left is well within what the route itself takes.
    let plain = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    for _ in 0..20 {
        let request = Request::post(format!("http://{addr}/echo"))
            .header("x-request-timeout", "0.2")
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap();
        let response = plain.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hi");
    }
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_after_the_idle_timeout() {
    let running = start(builder().idle_timeout(Duration::from_millis(300))).await;
    let addr = running.addr;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get(format!("http://{addr}/hello"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    // Idle from here: closed between one and two idle timeouts, plus the close's linger.
    let ended = timeout(Duration::from_secs(4), connection).await;
    assert!(ended.is_ok(), "the idle connection is still open");
}

/// Reads `/metrics` from `addr` over a raw HTTP/1.1 connection.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn metrics_on_a_listener_of_their_own_and_the_status_recorded_is_the_one_sent() {
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let running = start(builder().metrics_listener(metrics)).await;
    // A handler answering 100 as its final status: hyper sends 500 instead.
    assert_eq!(get_status(running.addr, "/status/100", "").await, Some(500));
    assert_eq!(get_status(running.addr, "/metrics", "").await, Some(404));
    let text = scrape(metrics_addr).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(r#"route="/status/{code}",status="500"} 1"#),
        "{text}"
    );
    assert!(!text.contains(r#"status="100""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_h2c_connection_runs_at_most_the_configured_streams_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let entered = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/held",
            get(
                |axum::extract::State(entered): axum::extract::State<Arc<AtomicUsize>>| async move {
                    entered.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    "never"
                },
            ),
        )
        .with_state(entered.clone());
    let server = builder()
        .http2_max_concurrent_streams(10)
        .build(app)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(server.serve(listener));

    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let requests: Vec<_> = (0..30)
        .map(|_| {
            let mut sender = sender.clone();
            let request = Request::get(format!("http://{addr}/held"))
                .body(Full::default())
                .unwrap();
            tokio::spawn(async move { sender.send_request(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        entered.load(Ordering::SeqCst),
        10,
        "the other 20 wait for a stream"
    );
    for request in requests {
        request.abort();
    }
    serving.abort();
}
