//! Strategies over real loopback sockets: streaming-body replay, hedge losers cancelled at the
//! server, and a POST that reaches the server exactly once.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    body::Bytes,
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Router,
};
use http::Request;
use http_body_util::{channel::Channel, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use tower_lifeline::body::ReplayBody;
use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};

#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

/// Counts a handler whose future was dropped before it finished.
struct OnCancel(Option<Arc<AtomicUsize>>);

impl Drop for OnCancel {
    fn drop(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn backend(seen: Seen) -> Router {
    Router::new()
        // Fails the first upload after reading it whole, then echoes.
        .route(
            "/upload",
            post(|State(seen): State<Seen>, body: Bytes| async move {
                let n = seen.calls.fetch_add(1, Ordering::SeqCst);
                seen.bodies.lock().unwrap().push(body.clone());
                if n == 0 {
                    (StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
                } else {
                    (StatusCode::OK, body)
                }
            }),
        )
        // The first call hangs for 5 s; later ones answer at once.
        .route(
            "/slow-first",
            get(|State(seen): State<Seen>| async move {
                let n = seen.calls.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    let mut guard = OnCancel(Some(seen.cancelled.clone()));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    guard.0 = None;
                }
                format!("call {n}")
            }),
        )
        .route(
            "/orders",
            post(|State(seen): State<Seen>| async move {
                seen.calls.fetch_add(1, Ordering::SeqCst);
                StatusCode::SERVICE_UNAVAILABLE
            }),
        )
        .with_state(seen)
}

#[tokio::test]
async fn a_streaming_body_is_replayed_on_retry() {
    let seen = Seen::default();
    let addr = common::serve(backend(seen.clone())).await;
    let transport =
        Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Channel<Bytes>>>();
    let client = StrategyLayer::new()
        .strategy(Strategy::sequential(
            2,
            Delays::constant(Duration::from_millis(10)),
        ))
        .layer(transport);

    let (mut sender, body) = Channel::<Bytes>::new(1);
    let producer = tokio::spawn(async move {
        for i in 0..20 {
            sender
                .send_data(Bytes::from(format!("chunk-{i:02};")))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let request = Request::post(format!("http://{addr}/upload"))
        .header("idempotency-key", "upload-1")
        .body(body)
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    producer.await.unwrap();

    let expected: String = (0..20).map(|i| format!("chunk-{i:02};")).collect();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(common::text(response.into_body()).await, expected);
    let bodies = seen.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies.iter().all(|b| b == expected.as_bytes()),
        "both attempts sent the whole body"
    );
}

#[tokio::test]
async fn a_hedge_loser_is_cancelled_at_the_server() {
    let seen = Seen::default();
    let addr = common::serve(backend(seen.clone())).await;
    let transport = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let client = StrategyLayer::new()
        .strategy(Strategy::parallel(
            2,
            Delays::constant(Duration::from_millis(50)),
        ))
        .layer(transport);

    let started = tokio::time::Instant::now();
    let request = Request::get(format!("http://{addr}/slow-first"))
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(common::text(response.into_body()).await, "call 1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the hedge won long before the 5 s loser"
    );

    // Dropping the losing attempt closed its connection: the server drops the handler.
    let waited = tokio::time::Instant::now();
    while seen.cancelled.load(Ordering::SeqCst) == 0 && waited.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen.cancelled.load(Ordering::SeqCst),
        1,
        "the server saw the loser go away"
    );
}

#[tokio::test]
async fn a_post_without_idempotency_key_reaches_the_server_once() {
    let seen = Seen::default();
    let addr = common::serve(backend(seen.clone())).await;
    let transport = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let hedge = Strategy::parallel(3, Delays::constant(Duration::from_millis(1)));
    for layer in [
        StrategyLayer::new(),
        StrategyLayer::new().strategy(hedge.clone()),
    ] {
        let before = seen.calls.load(Ordering::SeqCst);
        let client = layer.layer(transport.clone());
        let request = Request::post(format!("http://{addr}/orders"))
            .body(Full::new(Bytes::from("{}")))
            .unwrap();
        let response = client.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(seen.calls.load(Ordering::SeqCst) - before, 1);
    }
}

#[tokio::test]
async fn a_post_with_an_explicit_request_strategy_is_retried_as_its_caller_asked() {
    let seen = Seen::default();
    let addr = common::serve(backend(seen.clone())).await;
    let transport = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let client = StrategyLayer::new().budget(None).layer(transport);
    let mut request = Request::post(format!("http://{addr}/orders"))
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    request.extensions_mut().insert(Strategy::sequential(
        3,
        Delays::constant(Duration::from_millis(1)),
    ));
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_over_the_replay_cap_is_sent_once_and_not_retried() {
    let seen = Seen::default();
    let addr = common::serve(backend(seen.clone())).await;
    let transport =
        Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Channel<Bytes>>>();
    let client = StrategyLayer::new()
        .replay_cap(64)
        .strategy(Strategy::sequential(
            3,
            Delays::constant(Duration::from_millis(10)),
        ))
        .layer(transport);

    let (mut sender, body) = Channel::<Bytes>::new(1);
    let producer = tokio::spawn(async move {
        for _ in 0..10 {
            sender
                .send_data(Bytes::from_static(&[b'x'; 32]))
                .await
                .unwrap();
        }
    });
    let request = Request::post(format!("http://{addr}/upload"))
        .header("idempotency-key", "big-upload")
        .body(body)
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    producer.await.unwrap();
    // The first attempt streamed all 320 bytes; past the 64-byte cap there is no second one.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    assert_eq!(seen.bodies.lock().unwrap()[0].len(), 320);
}

#[tokio::test]
async fn every_hedge_loser_is_cancelled_at_the_server_promptly() {
    // The first two attempts hang; the third answers at once. Each handler records when it was
    // dropped, so the test sees how long after the win each loser went away.
    let calls = Arc::new(AtomicUsize::new(0));
    let dropped_at: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    struct RecordDrop(Arc<Mutex<Vec<tokio::time::Instant>>>, bool);
    impl Drop for RecordDrop {
        fn drop(&mut self) {
            if self.1 {
                self.0.lock().unwrap().push(tokio::time::Instant::now());
            }
        }
    }
    let app = Router::new().route(
        "/hedged",
        get({
            let (calls, dropped_at) = (calls.clone(), dropped_at.clone());
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let dropped_at = dropped_at.clone();
                async move {
                    let mut guard = RecordDrop(dropped_at, true);
                    if n < 2 {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    guard.1 = false;
                    format!("call {n}")
                }
            }
        }),
    );
    let addr = common::serve(app).await;
    let transport = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let client = StrategyLayer::new()
        .strategy(Strategy::parallel(
            3,
            Delays::constant(Duration::from_millis(30)),
        ))
        .layer(transport);

    let request = Request::get(format!("http://{addr}/hedged"))
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    let won_at = tokio::time::Instant::now();
    assert_eq!(common::text(response.into_body()).await, "call 2");

    let waited = tokio::time::Instant::now();
    while dropped_at.lock().unwrap().len() < 2 && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let dropped = dropped_at.lock().unwrap().clone();
    assert_eq!(dropped.len(), 2, "both losers were cancelled at the server");
    let delays: Vec<Duration> = dropped
        .iter()
        .map(|at| at.saturating_duration_since(won_at))
        .collect();
    eprintln!("hedge losers cancelled at the server {delays:?} after the winner's response");
    // Correctness with a generous bound, not a speed claim: a loser that lingered until its own
    // 10 s sleep ended would show here.
    assert!(
        delays.iter().all(|d| *d < Duration::from_secs(1)),
        "{delays:?}"
    );
}
