//! The `Client` preset against a real axum server on loopback.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_lifeline::client::Client;
use tower_lifeline::deadline::DeadlineExceeded;
use tower_lifeline::error::find_source;
use tower_lifeline::{Priority, RequestContext, ServiceBuilderExt};

async fn server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let posts = Arc::new(AtomicUsize::new(0));
    let flaky = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/api/context",
            get(
                |ctx: RequestContext, headers: axum::http::HeaderMap| async move {
                    Json(json!({
                        "deadline_ms": ctx.deadline().map(|d| d.remaining().as_millis() as u64),
                        "priority": ctx.priority().as_str(),
                        "service": headers.get("x-service-name").and_then(|v| v.to_str().ok()),
                        "tenant": headers.get("x-tenant").and_then(|v| v.to_str().ok()),
                    }))
                },
            ),
        )
        .route(
            "/api/flaky",
            get(move || {
                let n = flaky.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n % 3 < 2 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
        .route(
            "/api/orders",
            post(
                |State(posts): State<Arc<AtomicUsize>>, Json(order): Json<Value>| async move {
                    posts.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::SERVICE_UNAVAILABLE, Json(order))
                },
            ),
        )
        .route(
            "/api/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .with_state(posts.clone())
        .layer(
            ServiceBuilder::new()
                .server_deadline(Duration::from_secs(20))
                .server_priority(),
        );
    (common::serve(app).await, posts)
}

#[tokio::test]
async fn relative_paths_default_headers_deadline_and_priority_reach_the_server() {
    let (addr, _) = server().await;
    let client = Client::builder()
        .base_url(&format!("http://{addr}/api/"))
        .service_name("checkout")
        .default_header("x-tenant", "acme")
        .build()
        .unwrap();
    let response = client
        .get("context")
        .timeout(Duration::from_secs(3))
        .priority(Priority::High)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let ms = body["deadline_ms"].as_u64().unwrap();
    assert!(ms > 2_500 && ms <= 3_000, "{body}");
    assert_eq!(body["priority"], "high");
    assert_eq!(body["service"], "checkout");
    assert_eq!(body["tenant"], "acme");
}

#[tokio::test]
async fn get_is_retried_and_the_attempts_are_counted() {
    let (addr, _) = server().await;
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .build()
        .unwrap();
    let response = client.get("/api/flaky").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.attempts(), 3);
}

#[tokio::test]
async fn post_is_sent_once_unless_it_carries_an_idempotency_key() {
    let (addr, posts) = server().await;
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .build()
        .unwrap();
    let response = client
        .post("/api/orders")
        .json(&json!({"sku": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.attempts(), 1);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"sku": 7}));
    assert_eq!(posts.load(Ordering::SeqCst), 1);

    let response = client
        .post("/api/orders")
        .idempotency_key("order-7")
        .json(&json!({"sku": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.attempts(), 3);
    assert_eq!(posts.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_slow_server_gives_a_typed_deadline_error() {
    let (addr, _) = server().await;
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = client
        .get("/api/slow")
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    let exceeded = find_source::<DeadlineExceeded>(err.as_ref()).expect("a DeadlineExceeded");
    assert!(exceeded.was_sent());
}

#[tokio::test]
async fn a_refused_connection_is_an_error_not_a_panic() {
    // Bind then drop a listener: its port now refuses connections.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = Client::builder().build().unwrap();
    let err = client
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
}

#[tokio::test]
async fn a_body_over_the_cap_is_an_error_not_an_allocation() {
    let app = axum::Router::new().route("/big", get(|| async { vec![b'x'; 64 * 1024] }));
    let addr = common::serve(app).await;
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .max_response_body(1024)
        .build()
        .unwrap();
    // The body is read inside the attempt: the call itself fails, with a typed error.
    let err = client.get("/big").send().await.unwrap_err();
    let too_large = tower_lifeline::error::find_source::<
        tower_lifeline::read_body::ResponseBodyTooLarge,
    >(err.as_ref())
    .unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(too_large.limit(), 1024);
    let small = Client::builder()
        .base_url(&format!("http://{addr}"))
        .build()
        .unwrap();
    assert_eq!(
        small
            .get("/big")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len(),
        64 * 1024
    );
}

#[tokio::test]
async fn propagation_headers_reach_only_the_allowed_hosts() {
    // Echoes which propagation headers arrived.
    let app = Router::new().route(
        "/echo",
        get(|headers: axum::http::HeaderMap| async move {
            let names = ["x-request-timeout", "x-request-priority", "x-service-name"];
            Json(json!(names
                .iter()
                .filter(|n| headers.contains_key(**n))
                .collect::<Vec<_>>()))
        }),
    );
    let addr = common::serve(app).await;
    let client = Client::builder()
        .service_name("checkout")
        .propagate_only_to_hosts(["localhost"])
        .build()
        .unwrap();
    // The same server under two names: an allowed one and one that stands for a third party.
    let allowed = format!("http://localhost:{}/echo", addr.port());
    let third_party = format!("http://{addr}/echo");
    let seen: Value = client
        .get(&allowed)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen,
        json!(["x-request-timeout", "x-request-priority", "x-service-name"])
    );
    let seen: Value = client
        .get(&third_party)
        .header("x-service-name", "set-by-hand")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen, json!([]), "nothing reaches a host off the list");
}

#[tokio::test]
async fn a_refused_connection_displays_its_cause_and_keeps_hyper_utils_error_in_reach() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::builder().build().unwrap();
    // A `String` URL, as `format!` gives it.
    let err = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("client error (Connect)") && shown.contains("Connection refused"),
        "{shown}"
    );
    let transport = find_source::<tower_lifeline::client::TransportError>(err.as_ref()).unwrap();
    assert!(transport.is_connect());
    assert!(find_source::<hyper_util::client::legacy::Error>(err.as_ref()).is_some());
    assert!(find_source::<std::io::Error>(err.as_ref()).is_some());
}

#[tokio::test]
async fn a_deadline_in_a_handler_displays_as_the_time_left() {
    let app = Router::new().route(
        "/deadline",
        get(|ctx: RequestContext| async move { ctx.deadline().unwrap().to_string() }),
    );
    let addr =
        common::serve(app.layer(ServiceBuilder::new().server_deadline(Duration::from_secs(20))))
            .await;
    let client = Client::builder().build().unwrap();
    let response = client
        .get(format!("http://{addr}/deadline"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap();
    let shown = response.text().await.unwrap();
    // `2.9xxs left`: the caller's 3 s, less the trip.
    assert!(
        shown.starts_with("2.") && shown.ends_with("s left"),
        "{shown}"
    );
}
