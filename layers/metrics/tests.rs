use std::time::Duration;

use axum::{body::Body, routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use prometheus::Registry;
use tower::ServiceExt;

use super::*;

fn series_count(text: &str, metric: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}_count{{")))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_streamed_response_is_measured_until_its_body_ends() {
    let registry = Registry::new();
    let server = ServerMetrics::register(&registry, MetricsConfig::default()).unwrap();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async {
                let (mut sender, body) = http_body_util::channel::Channel::<Bytes>::new(1);
                tokio::spawn(async move {
                    sender.send_data(Bytes::from("first")).await.unwrap();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    sender.send_data(Bytes::from("last")).await.unwrap();
                });
                Body::new(body)
            }),
        )
        .layer(server.layer());
    let response = app
        .oneshot(Request::get("/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    // Headers are here, but the request is not finished.
    let text = render(&registry).unwrap();
    assert_eq!(
        series_count(&text, "http_server_request_duration_seconds"),
        0,
        "{text}"
    );
    assert!(text.contains("http_server_active_requests 1"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "firstlast");
    let text = render(&registry).unwrap();
    assert!(text.contains("http_server_active_requests 0"));
    let sum_line = text
        .lines()
        .find(|l| l.starts_with("http_server_request_duration_seconds_sum{"))
        .unwrap();
    let sum: f64 = sum_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(sum >= 2.0, "measured {sum} s, the body took 2 s");
}

#[tokio::test]
async fn the_aio_request_preset_has_its_names_labels_and_buckets() {
    let registry = Registry::new();
    let server = ServerMetrics::register(&registry, MetricsConfig::aio_request()).unwrap();
    let app = Router::new()
        .route("/thing", get(|| async { "ok" }))
        .layer(server.layer());
    let response = app
        .oneshot(Request::get("/thing").body(Body::empty()).unwrap())
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    let text = render(&registry).unwrap();
    let labels = r#"request_client="unknown",request_method="GET",request_path="/thing",response_status="200""#;
    for le in [
        "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.25", "0.3", "0.35",
        "0.4", "0.45", "0.5", "0.75", "1", "5", "10", "15", "20", "+Inf",
    ] {
        let line = format!(r#"aio_request_server_latency_bucket{{{labels},le="{le}"}} 1"#);
        assert!(text.contains(&line), "missing {line}\n{text}");
    }
    assert_eq!(
        text.matches("aio_request_server_latency_bucket{").count(),
        21
    );
}

#[tokio::test]
async fn server_label_sets_are_capped_by_forgetting_the_least_recent() {
    let registry = Registry::new();
    let config = MetricsConfig {
        max_server_label_sets: 5,
        ..MetricsConfig::default()
    };
    let server = ServerMetrics::register(&registry, config).unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(server.layer());
    let call = |name: String| {
        let app = app.clone();
        async move {
            let request = Request::get("/")
                .header("x-service-name", name)
                .body(Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
    };
    for i in 0..50 {
        call(format!("caller-{i}")).await;
        // A caller that keeps calling through the flood.
        call("steady".to_owned()).await;
    }
    let text = render(&registry).unwrap();
    assert_eq!(
        series_count(&text, "http_server_request_duration_seconds"),
        5,
        "{text}"
    );
    assert!(
        text.contains(r#"client="steady",method="GET",route="/",status="200"} 50"#),
        "{text}"
    );
    assert!(
        text.contains(r#"client="caller-49""#),
        "the newest has its own series"
    );
    assert!(!text.contains(r#"client="other""#), "{text}");
    assert!(
        text.contains("http_server_metric_label_overflow_total 46"),
        "{text}"
    );
}

#[tokio::test]
async fn the_status_label_is_the_one_on_the_wire_and_bounded() {
    let registry = Registry::new();
    let server = ServerMetrics::register(&registry, MetricsConfig::default()).unwrap();
    let app = Router::new()
        .route(
            "/status/{code}",
            get(
                |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                    http::StatusCode::from_u16(code).unwrap()
                },
            ),
        )
        .layer(server.layer());
    for code in [100, 102, 200, 299, 404, 418, 499, 599, 600, 999, 101] {
        let request = Request::get(format!("/status/{code}"))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let text = render(&registry).unwrap();
    let count = |status: &str, n: u32| {
        format!(
            r#"http_server_request_duration_seconds_count{{client="unknown",method="GET",route="/status/{{code}}",status="{status}"}} {n}"#
        )
    };
    for (status, n) in [
        ("500", 2),
        ("101", 1),
        ("200", 1),
        ("2xx", 1),
        ("404", 1),
        ("418", 1),
        ("499", 1),
        ("5xx", 1),
        ("other", 2),
    ] {
        assert!(text.contains(&count(status, n)), "{status}\n{text}");
    }
    assert_eq!(
        series_count(&text, "http_server_request_duration_seconds"),
        9
    );
}

#[tokio::test]
async fn hostile_labels_are_bounded() {
    let registry = Registry::new();
    let server = ServerMetrics::register(&registry, MetricsConfig::default()).unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(server.layer());
    for (method, client) in [
        ("PURGE", "has space"),
        ("GET", "quote\"inject"),
        ("BREW", "UPPER"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri("/nowhere/123")
            .header("x-service-name", client)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let text = render(&registry).unwrap();
    assert!(
        text.contains(r#"client="unknown",method="_OTHER",route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"client="unknown",method="GET",route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"client="upper",method="_OTHER",route="unmatched",status="404"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn registering_twice_in_one_registry_is_an_error_not_a_panic() {
    let registry = Registry::new();
    ServerMetrics::register(&registry, MetricsConfig::default()).unwrap();
    assert!(ServerMetrics::register(&registry, MetricsConfig::default()).is_err());
}

#[tokio::test]
async fn an_inner_error_is_recorded_as_500() {
    use tower::Layer;
    let registry = Registry::new();
    let server = ServerMetrics::register(&registry, MetricsConfig::default()).unwrap();
    let failing = tower::service_fn(|_req: Request<Body>| async {
        Err::<http::Response<Body>, _>(std::io::Error::other("handler failed"))
    });
    let mut request = Request::get("/broken").body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(crate::context::RouteTemplate::new("/broken"));
    let result = server.layer().layer(failing).oneshot(request).await;
    assert!(result.is_err());
    let text = render(&registry).unwrap();
    assert!(
        text.contains(r#"client="unknown",method="GET",route="/broken",status="500"} 1"#),
        "{text}"
    );
    assert!(text.contains("http_server_active_requests 0"));
}

#[tokio::test]
async fn a_caller_name_of_the_longest_allowed_length_is_lowercased_whole() {
    let registry = Registry::new();
    let server = ServerMetrics::register(&registry, MetricsConfig::default()).unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(server.layer());
    let name = format!(
        "Svc-{}",
        "A".repeat(crate::headers::MAX_SERVICE_NAME_LEN - 4)
    );
    let request = Request::get("/")
        .header("x-service-name", &name)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    let text = render(&registry).unwrap();
    let line = format!(
        r#"client="{}",method="GET",route="/",status="200"}} 1"#,
        name.to_ascii_lowercase()
    );
    assert!(text.contains(&line), "missing {line}\n{text}");
}
