//! The `Client` preset against a real server built with the `Server` preset, on loopback:
//! retries, hedging, the circuit breaker, deadlines and metrics, seen end to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use tower_lifeline::circuit_breaker::{CircuitBreakerSettings, CircuitOpen};
use tower_lifeline::client::Client;
use tower_lifeline::deadline::DeadlineExceeded;
use tower_lifeline::error::find_source;
use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig};
use tower_lifeline::server::Server;
use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, usize>>>);

impl Calls {
    fn bump(&self, route: &str) -> usize {
        let mut calls = self.0.lock().unwrap();
        let n = calls.entry(route.to_owned()).or_default();
        *n += 1;
        *n
    }

    fn get(&self, route: &str) -> usize {
        self.0.lock().unwrap().get(route).copied().unwrap_or(0)
    }
}

async fn start_server(registry: Registry) -> (std::net::SocketAddr, Calls, Server) {
    let calls = Calls::default();
    let app = Router::new()
        // 503, 503, then 200, for each key.
        .route(
            "/flaky/{key}",
            get(
                |State(calls): State<Calls>, Path(key): Path<String>| async move {
                    if calls.bump(&format!("flaky/{key}")) <= 2 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                },
            ),
        )
        // The first call takes 3 s, later ones answer at once.
        .route(
            "/slow-first",
            get(|State(calls): State<Calls>| async move {
                if calls.bump("slow-first") == 1 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                "done"
            }),
        )
        .route(
            "/down",
            get(|State(calls): State<Calls>| async move {
                calls.bump("down");
                StatusCode::SERVICE_UNAVAILABLE
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .with_state(calls.clone());
    let server = Server::builder().registry(registry).build(app).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, calls, server)
}

#[tokio::test]
async fn retries_hedging_breaker_deadline_and_metrics_end_to_end() {
    let server_registry = Registry::new();
    let (addr, calls, _server) = start_server(server_registry.clone()).await;

    let client_registry = Registry::new();
    let client_metrics =
        ClientMetrics::register(&client_registry, MetricsConfig::default()).unwrap();
    let strategy = StrategyLayer::new().budget(None);
    let breaker = CircuitBreakerSettings::builder()
        .failure_threshold(0.5)
        .minimum_throughput(6)
        .sampling_duration(Duration::from_secs(10))
        .break_duration(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .service_name("e2e")
        .strategy(strategy)
        .circuit_breaker(Some(breaker))
        .metrics(client_metrics)
        .build()
        .unwrap();

    // Retries: GET is retried through two 503s.
    let response = client
        .get("/flaky/a")
        .route("/flaky/{key}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.attempts(), 3);

    // Hedging: the slow first attempt loses to a hedge 50 ms later.
    let started = tokio::time::Instant::now();
    let response = client
        .get("/slow-first")
        .strategy(Strategy::parallel(
            2,
            Delays::constant(Duration::from_millis(50)),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "done");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "hedged, not waiting 3 s"
    );

    // Deadline: the client gives up at 150 ms with a typed error.
    let err = client
        .get("/slow")
        .timeout(Duration::from_millis(150))
        .send()
        .await
        .unwrap_err();
    assert!(
        find_source::<DeadlineExceeded>(err.as_ref()).is_some(),
        "{err}"
    );

    // Breaker: /down fails every time; once the window holds 6 requests at >= 50% failures, the
    // breaker opens and calls fail at once without reaching the server.
    let mut refused = 0;
    for _ in 0..10 {
        match client
            .get("/down")
            .strategy(Strategy::single())
            .send()
            .await
        {
            Ok(response) => assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE),
            Err(err) => {
                let open = find_source::<CircuitOpen>(err.as_ref()).expect("a CircuitOpen");
                assert!(
                    open.scope().ends_with(&addr.to_string()),
                    "{}",
                    open.scope()
                );
                refused += 1;
            }
        }
    }
    let reached = calls.get("down");
    assert!(refused > 0, "the breaker opened");
    assert_eq!(
        reached + refused,
        10,
        "every call either reached the server or was refused"
    );
    // The refusal is final: the default strategy does not retry it.
    let err = client.get("/down").send().await.unwrap_err();
    assert!(find_source::<CircuitOpen>(err.as_ref()).is_some());
    assert_eq!(calls.get("down"), reached);
    // After the break one probe goes through; it fails, so the breaker opens again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let _ = client
        .get("/down")
        .strategy(Strategy::single())
        .send()
        .await;
    assert_eq!(calls.get("down"), reached + 1, "exactly one probe");
    assert!(client.get("/down").send().await.is_err());
    assert_eq!(calls.get("down"), reached + 1);

    // Metrics on both sides.
    let client_text = metrics::render(&client_registry).unwrap();
    for needle in [
        r#"path="/flaky/{key}",status="200"} 1"#.to_string(),
        r#"http_client_attempt_duration_seconds_count{endpoint="#.to_string(),
        r#"status="circuit_open"} "#.to_string(),
        r#"status="timeout"} 1"#.to_string(),
        "http_client_retries_total 2".to_string(),
        "http_client_hedges_total 1".to_string(),
        format!(r#"http_client_circuit_breaker_state{{scope="http://{addr}"}} 2"#),
    ] {
        assert!(
            client_text.contains(&needle),
            "missing {needle}\n{client_text}"
        );
    }
    assert!(!client_text.contains("http_client_circuit_breaker_refusals_total 0"));
    let server_text = metrics::render(&server_registry).unwrap();
    for needle in [
        r#"{client="e2e",method="GET",route="/flaky/{key}",status="503"} 2"#,
        r#"{client="e2e",method="GET",route="/flaky/{key}",status="200"} 1"#,
    ] {
        assert!(
            server_text.contains(needle),
            "missing {needle}\n{server_text}"
        );
    }
}
