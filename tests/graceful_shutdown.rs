//! A graceful shutdown under load, on real loopback sockets.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::State, routing::get, Router};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower_lifeline::health::Health;
use tower_lifeline::shutdown::{serve, Drained, Shutdown};

/// Requests held in the handler while the shutdown starts.
const IN_FLIGHT: usize = 8;

#[derive(Clone)]
struct Gate {
    entered: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

async fn held(State(gate): State<Gate>) -> &'static str {
    gate.entered.fetch_add(1, Ordering::SeqCst);
    let _permit = gate.release.acquire().await.unwrap();
    "finished"
}

fn request(addr: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

/// Waits, a bounded number of times, until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

#[tokio::test]
async fn shutdown_under_load_finishes_every_request_and_stops_within_the_grace_period() {
    let grace = Duration::from_secs(10);
    // The drain delay keeps the listener open after the trigger, so readiness can be seen failing.
    let shutdown = Shutdown::new()
        .drain_delay(Duration::from_millis(300))
        .grace_period(grace);
    let gate = Gate {
        entered: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(Semaphore::new(0)),
    };
    let app = Router::new()
        .route("/held", get(held))
        .with_state(gate.clone())
        .merge(Health::new().shutdown(&shutdown).router())
        .layer(shutdown.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, app, shutdown.clone()));
    let client = common::http_client();

    let ready = client.request(request(addr, "/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(!ready.headers().contains_key(header::CONNECTION));

    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.request(request(addr, "/held")).await })
        })
        .collect();
    eventually(|| gate.entered.load(Ordering::SeqCst) == IN_FLIGHT).await;
    assert_eq!(shutdown.in_flight(), IN_FLIGHT);

    shutdown.trigger();
    let started = tokio::time::Instant::now();

    // Readiness flips before the drain: the listener still accepts, and says "not ready".
    let ready = client.request(request(addr, "/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.headers()[header::CONNECTION], "close");
    assert_eq!(
        common::text(ready.into_body()).await,
        "not ready: draining\n"
    );

    // Let the drain delay pass and the server stop accepting, with the requests still held.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !server.is_finished(),
        "in-flight requests hold the server open"
    );

    gate.release.add_permits(IN_FLIGHT);
    for pending in in_flight {
        let response = pending.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        assert_eq!(common::text(response.into_body()).await, "finished");
    }

    let outcome = tokio::time::timeout(grace, server)
        .await
        .expect("the server stops within the grace period")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Drained::Completed);
    assert!(started.elapsed() < grace);
    assert_eq!(shutdown.in_flight(), 0);

    // Nothing listens any more.
    let fresh = common::http_client();
    assert!(fresh.request(request(addr, "/healthz")).await.is_err());
}

#[tokio::test]
async fn the_grace_period_bounds_a_drain_that_would_never_end() {
    let shutdown = Shutdown::new().grace_period(Duration::from_millis(300));
    let gate = Gate {
        entered: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(Semaphore::new(0)),
    };
    let app = Router::new()
        .route("/held", get(held))
        .with_state(gate.clone())
        .layer(shutdown.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, app, shutdown.clone()));

    let client = common::http_client();
    let stuck = tokio::spawn(async move { client.request(request(addr, "/held")).await });
    eventually(|| gate.entered.load(Ordering::SeqCst) == 1).await;

    shutdown.trigger();
    let outcome = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns once the grace period is over")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Drained::GraceExpired { in_flight: 1 });
    stuck.abort();
}

/// The `Server` preset under a running load generator: the shutdown is triggered while 16
/// workers send requests; a poller playing the load balancer takes the server out of rotation
/// when `/readyz` fails, and the drain delay covers the time it takes to notice. Every request
/// sent gets its 200: no failure, no error, no retry hiding one (each call has one attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_preset_drains_under_load_without_failing_a_request() {
    use tower_lifeline::client::Client;
    use tower_lifeline::server::Server;
    use tower_lifeline::strategy::Strategy;

    const WORKERS: usize = 16;
    let shutdown = Shutdown::new()
        .drain_delay(Duration::from_millis(400))
        .grace_period(Duration::from_secs(10));
    let app = Router::new().route(
        "/work",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            "done"
        }),
    );
    let server = Server::builder()
        .registry(prometheus::Registry::new())
        .shutdown(shutdown.clone())
        .build(app)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(server.serve(listener));
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .build()
        .unwrap();

    let in_rotation = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answered = Arc::new(AtomicUsize::new(0));
    let answered_after_trigger = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let balancer = tokio::spawn({
        let (client, in_rotation) = (client.clone(), in_rotation.clone());
        async move {
            loop {
                let ready = client
                    .get("/readyz")
                    .strategy(Strategy::single())
                    .send()
                    .await;
                if !matches!(&ready, Ok(r) if r.status() == StatusCode::OK) {
                    in_rotation.store(false, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (client, in_rotation, answered, after, failed, shutdown) = (
                client.clone(),
                in_rotation.clone(),
                answered.clone(),
                answered_after_trigger.clone(),
                failed.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                while in_rotation.load(Ordering::SeqCst) {
                    let outcome = async {
                        let response = client
                            .get("/work")
                            .strategy(Strategy::single())
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await?;
                        let status = response.status();
                        let body = response.text().await?;
                        Ok::<_, tower_lifeline::BoxError>((status, body))
                    }
                    .await;
                    match outcome {
                        Ok((StatusCode::OK, body)) if body == "done" => {
                            answered.fetch_add(1, Ordering::SeqCst);
                            if shutdown.is_draining() {
                                after.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        other => failed.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();

    eventually(|| answered.load(Ordering::SeqCst) >= 500).await;
    shutdown.trigger();
    for worker in workers {
        worker.await.unwrap();
    }
    balancer.await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stops within the grace period")
        .unwrap()
        .unwrap();

    let failed = failed.lock().unwrap().clone();
    let answered = answered.load(Ordering::SeqCst);
    let after = answered_after_trigger.load(Ordering::SeqCst);
    eprintln!(
        "shutdown under load: {answered} requests answered ({after} after the trigger), {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        after > 0,
        "the load was still running when the shutdown started"
    );
    assert_eq!(outcome, Drained::Completed);
}
