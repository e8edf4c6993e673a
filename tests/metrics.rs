//! Metrics seen end to end: real requests over loopback, then a scrape of `/metrics`.

mod common;

use std::time::Duration;

use axum::{extract::Path, http::StatusCode, routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use prometheus::Registry;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifeline::body::ReplayBody;
use tower_lifeline::deadline::ClientDeadlineLayer;
use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig, ServerMetrics};
use tower_lifeline::propagation::{PropagateLayer, ServiceName};
use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};

async fn start_server(registry: &Registry) -> std::net::SocketAddr {
    let server = ServerMetrics::register(registry, MetricsConfig::default()).unwrap();
    let app = Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u32>| async move { format!("user {id}") }),
        )
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .layer(server.layer())
        .route("/metrics", metrics::route(registry.clone()));
    common::serve(app).await
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let request = Request::get(format!("http://{addr}/metrics"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = common::http_client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    common::text(response.into_body()).await
}

#[tokio::test]
async fn server_and_client_series_after_real_requests() {
    let server_registry = Registry::new();
    let addr = start_server(&server_registry).await;

    let client_registry = Registry::new();
    let client_metrics =
        ClientMetrics::register(&client_registry, MetricsConfig::default()).unwrap();
    let strategy = StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::sequential(
            3,
            Delays::constant(Duration::from_millis(5)),
        ));
    client_metrics.watch_strategy(strategy.stats());
    let client = ServiceBuilder::new()
        .layer(client_metrics.call_layer())
        .layer(ClientDeadlineLayer::new().write_header(false))
        .layer(strategy)
        .layer(client_metrics.attempt_layer())
        .layer(PropagateLayer::new().service_name(ServiceName::from_static("Checkout")))
        .service(common::http_client_for::<ReplayBody<Full<Bytes>>>());

    for path in ["/users/7", "/users/8", "/status/503"] {
        let request = Request::get(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        common::text(response.into_body()).await;
    }

    let server = scrape(addr).await;
    for line in [
        r#"http_server_request_duration_seconds_count{client="checkout",method="GET",route="/users/{id}",status="200"} 2"#,
        r#"http_server_request_duration_seconds_count{client="checkout",method="GET",route="/status/{code}",status="503"} 3"#,
    ] {
        assert!(server.contains(line), "missing {line}\n{server}");
    }

    let client = metrics::render(&client_registry).unwrap();
    let endpoint = format!("http://{addr}");
    for line in [
        format!(
            r#"http_client_request_duration_seconds_count{{circuit_breaker="false",endpoint="{endpoint}",method="GET",path="/users/{{id}}",status="200"}} 2"#
        ),
        format!(
            r#"http_client_request_duration_seconds_count{{circuit_breaker="false",endpoint="{endpoint}",method="GET",path="/status/{{id}}",status="503"}} 1"#
        ),
        format!(
            r#"http_client_attempt_duration_seconds_count{{endpoint="{endpoint}",method="GET",path="/status/{{id}}",status="503"}} 3"#
        ),
        "http_client_retries_total 2".to_string(),
    ] {
        assert!(client.contains(&line), "missing {line}\n{client}");
    }
}

#[tokio::test]
async fn a_caller_that_goes_away_is_recorded_as_499_and_its_call_as_timeout() {
    let server_registry = Registry::new();
    let addr = start_server(&server_registry).await;
    let client_registry = Registry::new();
    let client_metrics =
        ClientMetrics::register(&client_registry, MetricsConfig::default()).unwrap();
    let client = ServiceBuilder::new()
        .layer(client_metrics.call_layer())
        .layer(ClientDeadlineLayer::new().default_timeout(Duration::from_millis(100)))
        .service(common::http_client());

    let request = Request::get(format!("http://{addr}/slow"))
        .body(Full::default())
        .unwrap();
    assert!(client.oneshot(request).await.is_err());

    let client_text = metrics::render(&client_registry).unwrap();
    assert!(
        client_text.contains(r#"method="GET",path="/slow",status="timeout"} 1"#),
        "{client_text}"
    );

    // The server notices the closed connection, drops the handler and records 499.
    let line = r#"http_server_request_duration_seconds_count{client="unknown",method="GET",route="/slow",status="499"} 1"#;
    let started = tokio::time::Instant::now();
    let mut server_text = String::new();
    while started.elapsed() < Duration::from_secs(3) {
        server_text = scrape(addr).await;
        if server_text.contains(line) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server_text.contains(line), "missing {line}\n{server_text}");
}

#[tokio::test]
async fn an_attempt_cut_by_the_attempt_timeout_is_recorded_as_timeout_not_499() {
    let server_registry = Registry::new();
    let addr = start_server(&server_registry).await;
    let client_registry = Registry::new();
    let client_metrics =
        ClientMetrics::register(&client_registry, MetricsConfig::default()).unwrap();
    let client = tower_lifeline::client::Client::builder()
        .base_url(&format!("http://{addr}"))
        .attempt_timeout(Duration::from_millis(150))
        .metrics(client_metrics)
        .build()
        .unwrap();

    let err = client
        .get("/slow")
        .route("/slow")
        .strategy(Strategy::single())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_err();
    assert!(
        tower_lifeline::error::find_source::<tower_lifeline::timeout::AttemptTimedOut>(
            err.as_ref()
        )
        .is_some(),
        "{err:?}"
    );

    let text = metrics::render(&client_registry).unwrap();
    let attempt = "http_client_attempt_duration_seconds_count{";
    let attempts: Vec<&str> = text.lines().filter(|l| l.starts_with(attempt)).collect();
    assert_eq!(attempts.len(), 1, "{text}");
    assert!(attempts[0].contains(r#"status="timeout"} 1"#), "{text}");
    let call = "http_client_request_duration_seconds_count{";
    let calls: Vec<&str> = text.lines().filter(|l| l.starts_with(call)).collect();
    assert_eq!(calls.len(), 1, "{text}");
    assert!(calls[0].contains(r#"status="timeout"} 1"#), "{text}");
}
