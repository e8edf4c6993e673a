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

/// A load generator: 16 workers sending single-attempt requests (no retry can hide a failure),
/// and a poller playing the load balancer, which takes the server out of rotation when
/// `/readyz` stops answering 200. Workers stop sending once it is out of rotation.
struct Load {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    answered: Arc<AtomicUsize>,
    answered_after_trigger: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    triggered: Arc<std::sync::atomic::AtomicBool>,
}

impl Load {
    const WORKERS: usize = 16;

    fn start(base: &str, path: &'static str) -> Load {
        use tower_lifeline::client::Client;
        use tower_lifeline::strategy::Strategy;

        let client = Client::builder().base_url(base).build().unwrap();
        let in_rotation = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let load = Load {
            tasks: Vec::new(),
            answered: Arc::default(),
            answered_after_trigger: Arc::default(),
            failed: Arc::default(),
            triggered: Arc::default(),
        };
        let mut tasks = vec![tokio::spawn({
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
        })];
        for _ in 0..Self::WORKERS {
            let (client, in_rotation, answered, after, failed, triggered) = (
                client.clone(),
                in_rotation.clone(),
                load.answered.clone(),
                load.answered_after_trigger.clone(),
                load.failed.clone(),
                load.triggered.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while in_rotation.load(Ordering::SeqCst) {
                    let outcome = async {
                        let response = client
                            .get(path)
                            .strategy(Strategy::single())
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await?;
                        let status = response.status();
                        response.bytes().await?;
                        Ok::<_, tower_lifeline::BoxError>(status)
                    }
                    .await;
                    match outcome {
                        Ok(StatusCode::OK) => {
                            answered.fetch_add(1, Ordering::SeqCst);
                            if triggered.load(Ordering::SeqCst) {
                                after.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        other => failed.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            }));
        }
        Load { tasks, ..load }
    }

    async fn answered_at_least(&self, n: usize) {
        eventually(|| self.answered.load(Ordering::SeqCst) >= n).await;
    }

    /// Waits for the generator to stop; returns (answered, answered after the trigger, failures).
    async fn finish(self) -> (usize, usize, Vec<String>) {
        for task in self.tasks {
            task.await.unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (
            self.answered.load(Ordering::SeqCst),
            self.answered_after_trigger.load(Ordering::SeqCst),
            failed,
        )
    }
}

/// The `Server` preset under a running load generator: the shutdown is triggered
/// programmatically while the load runs; the drain delay covers the time the poller takes to
/// notice. Every request sent gets its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_preset_drains_under_load_without_failing_a_request() {
    use tower_lifeline::server::Server;

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

    let load = Load::start(&format!("http://{addr}"), "/work");
    load.answered_at_least(500).await;
    load.triggered.store(true, Ordering::SeqCst);
    shutdown.trigger();
    let (answered, after, failed) = load.finish().await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stops within the grace period")
        .unwrap()
        .unwrap();

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

/// The same with a real SIGTERM to `examples/server` running as a child process. Not in CI (it
/// builds and starts the example); run it with
/// `cargo test --test graceful_shutdown -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds and runs examples/server as a child process; run by hand"]
async fn sigterm_to_the_example_server_under_load_fails_no_request() {
    // The example binary sits beside this test's profile directory.
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    let mut build = std::process::Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "--example", "server"]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(build.status().unwrap().success(), "the example builds");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(profile_dir.join("examples").join("server"))
        .args(["--addr", &addr, "--drain-delay", "500"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let probe = common::http_client();
    let mut up = false;
    for _ in 0..500 {
        if let Ok(r) = probe
            .request(request(addr.parse().unwrap(), "/healthz"))
            .await
        {
            up = r.status() == StatusCode::OK;
            if up {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "the example server came up");

    let load = Load::start(&format!("http://{addr}"), "/slow?ms=20");
    load.answered_at_least(300).await;
    load.triggered.store(true, Ordering::SeqCst);
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let (answered, after, failed) = load.finish().await;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the server exits within its grace period")
        .unwrap();
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();

    eprintln!(
        "SIGTERM under load: {answered} requests answered ({after} after the signal), {} failed; server said {stdout:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(after > 0, "the load was still running when the signal came");
    assert!(exit.success(), "{exit:?}");
    assert!(
        stdout.contains("drained: every request finished"),
        "{stdout}"
    );
}

/// A WebSocket route that echoes until the drain, then closes with 1001 (Going Away), holding a
/// drain guard until its closing handshake is done (as `examples/websocket.rs`).
async fn websocket(
    State(shutdown): State<Shutdown>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    use axum::extract::ws::{close_code, CloseFrame, Message};
    let guard = shutdown.guard();
    upgrade.on_upgrade(move |mut socket| async move {
        let _guard = guard;
        let mut draining = std::pin::pin!(shutdown.triggered());
        loop {
            tokio::select! {
                () = &mut draining => break,
                message = socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if socket.send(Message::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
        let goodbye = CloseFrame {
            code: close_code::AWAY,
            reason: "draining".into(),
        };
        if socket.send(Message::Close(Some(goodbye))).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    })
}

/// Over a real WebSocket through the `Server` preset: the drain reaches the upgraded connection
/// (close code 1001), and `serve` waits for its closing handshake instead of returning at once.
#[tokio::test]
async fn a_websocket_closes_with_going_away_and_the_drain_waits_for_it() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tower_lifeline::server::Server;

    let shutdown = Shutdown::new().grace_period(Duration::from_secs(10));
    let app = Router::new()
        .route("/ws", get(websocket))
        .with_state(shutdown.clone());
    let server = Server::builder()
        .registry(prometheus::Registry::new())
        .shutdown(shutdown.clone())
        .build(app)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(server.serve(listener));

    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    client.send(Message::text("ping")).await.unwrap();
    let echo = client.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "ping");

    shutdown.trigger();
    let closing = client.next().await.unwrap().unwrap();
    let Message::Close(Some(frame)) = closing else {
        panic!("expected a close frame, got {closing:?}");
    };
    assert_eq!(u16::from(frame.code), 1001);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !serving.is_finished(),
        "the drain waits for the WebSocket's closing handshake"
    );
    // Reading on sends tungstenite's reply to the close frame and sees the connection end.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), client.next()).await {}
    let drained = tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("the drain ends once the WebSocket has closed")
        .unwrap()
        .unwrap();
    assert_eq!(drained, Drained::Completed);
}
