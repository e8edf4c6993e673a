//! The `Server` and `Client` presets as a newcomer uses them: several in one process, with no
//! thought given to registries, and the client's metrics wired in one line.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tower_lifeline::client::Client;
use tower_lifeline::metrics::{ClientMetrics, MetricsConfig};
use tower_lifeline::prometheus;
use tower_lifeline::server::Server;

async fn scrape(addr: std::net::SocketAddr) -> String {
    let request = http::Request::get(format!("http://{addr}/metrics"))
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .unwrap();
    let response = common::http_client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    common::text(response.into_body()).await
}

/// A route that answers 503 to the calls `fails` picks (counted from 0), 200 to the others.
fn flaky(fails: fn(usize) -> bool) -> axum::routing::MethodRouter {
    let calls = Arc::new(AtomicUsize::new(0));
    get(move || {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if fails(call) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
    })
}

/// The value of the one sample line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn two_servers_in_one_process_each_serve_their_own_metrics_and_the_default_registry() {
    // Before each server had a registry of its own, the second `build` failed with `AlreadyReg`.
    let first = Server::builder()
        .build(Router::new().route("/a", get(|| async { "a" })))
        .unwrap();
    let second = Server::builder()
        .build(Router::new().route("/b", get(|| async { "b" })))
        .unwrap();
    // An application's own metric, registered where `prometheus`'s macros put it.
    let jobs = prometheus::register_int_counter!(
        "presets_test_jobs_total",
        "Jobs done by the application."
    )
    .unwrap();
    jobs.inc_by(7);

    let first_addr = common::serve(first.router()).await;
    let second_addr = common::serve(second.router()).await;
    let client = common::http_client();
    for path in ["/a", "/a", "/a"] {
        let request = http::Request::get(format!("http://{first_addr}{path}"))
            .body(Default::default())
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 200);
    }
    let request = http::Request::get(format!("http://{second_addr}/b"))
        .body(Default::default())
        .unwrap();
    assert_eq!(client.request(request).await.unwrap().status(), 200);

    let first_text = scrape(first_addr).await;
    let second_text = scrape(second_addr).await;
    let count = |route: &str| {
        format!(
            "http_server_request_duration_seconds_count{{client=\"unknown\",method=\"GET\",route=\"{route}\",status=\"200\"}}"
        )
    };
    assert_eq!(sample(&first_text, &count("/a")), Some(3.0), "{first_text}");
    assert_eq!(sample(&first_text, &count("/b")), None, "{first_text}");
    assert_eq!(
        sample(&second_text, &count("/b")),
        Some(1.0),
        "{second_text}"
    );
    assert_eq!(sample(&second_text, &count("/a")), None, "{second_text}");
    for text in [&first_text, &second_text] {
        assert_eq!(sample(text, "presets_test_jobs_total"), Some(7.0), "{text}");
        // Each family once, though the default registry is served beside the server's own.
        assert_eq!(
            text.matches("# TYPE http_server_request_duration_seconds ")
                .count(),
            1
        );
    }
}

#[tokio::test]
async fn client_metrics_registered_in_the_servers_registry_show_calls_retries_and_breakers() {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        // 503 twice, then 200.
        .route("/flaky", flaky(|call| call < 2));
    let server = Server::builder().build(app).unwrap();
    // The one line: the client's series go where the server's are, and `/metrics` serves both.
    let client_metrics =
        ClientMetrics::register(server.registry(), MetricsConfig::default()).unwrap();
    let addr = common::serve(server.router()).await;
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .service_name("self")
        .metrics(client_metrics)
        .build()
        .unwrap();

    let response = client.get("/hello").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client.get("/flaky").route("/flaky").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.attempts(), 3);

    let text = scrape(addr).await;
    assert_eq!(
        sample(&text, "http_client_retries_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "http_client_retry_budget_refusals_total"),
        Some(0.0),
        "{text}"
    );
    // The default client has a breaker; closed is 0.
    assert!(
        text.lines().any(
            |line| line.starts_with("http_client_circuit_breaker_state{") && line.ends_with(" 0")
        ),
        "{text}"
    );
    assert!(
        text.contains("http_client_request_duration_seconds_count{"),
        "{text}"
    );
    assert!(
        text.contains("http_client_attempt_duration_seconds_count{"),
        "{text}"
    );
}

#[tokio::test]
async fn a_dropped_clients_retries_stay_in_the_counter() {
    // 503 on every odd call: each call is answered on its second attempt.
    let app = Router::new().route("/flaky", flaky(|call| call.is_multiple_of(2)));
    let server = Server::builder().build(app).unwrap();
    let client_metrics =
        ClientMetrics::register(server.registry(), MetricsConfig::default()).unwrap();
    let addr = common::serve(server.router()).await;
    let client = |metrics: ClientMetrics| {
        Client::builder()
            .base_url(&format!("http://{addr}"))
            .metrics(metrics)
            .build()
            .unwrap()
    };

    let first = client(client_metrics.clone());
    assert_eq!(first.get("/flaky").send().await.unwrap().attempts(), 2);
    drop(first);
    let text = scrape(addr).await;
    // The first client is gone: its retry is folded into the total, not lost.
    assert_eq!(
        sample(&text, "http_client_retries_total"),
        Some(1.0),
        "{text}"
    );

    let second = client(client_metrics);
    assert_eq!(second.get("/flaky").send().await.unwrap().attempts(), 2);
    let text = scrape(addr).await;
    assert_eq!(
        sample(&text, "http_client_retries_total"),
        Some(2.0),
        "{text}"
    );
}
