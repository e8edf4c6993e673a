//! A circuit breaker in front of a real axum server on loopback trips on its failures, refuses
//! without reaching it, and closes again after one successful probe.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::State, http::StatusCode, routing::get, Router};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_lifeline::circuit_breaker::{
    CircuitBreakerLayer, CircuitBreakerSettings, CircuitOpen, CircuitState,
};
use tower_lifeline::error::find_source;
use tower_lifeline::ServiceBuilderExt;

#[derive(Clone, Default)]
struct Backend {
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn start_backend() -> (Backend, std::net::SocketAddr) {
    let backend = Backend::default();
    let app = Router::new()
        .route(
            "/",
            get(|State(b): State<Backend>| async move {
                b.hits.fetch_add(1, Ordering::SeqCst);
                if b.healthy.load(Ordering::SeqCst) {
                    (StatusCode::OK, "fine")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "down")
                }
            }),
        )
        .with_state(backend.clone());
    let addr = common::serve(app).await;
    (backend, addr)
}

fn settings() -> CircuitBreakerSettings {
    CircuitBreakerSettings::builder()
        .failure_threshold(0.5)
        .minimum_throughput(3)
        .sampling_duration(Duration::from_secs(30))
        .break_duration(Duration::from_millis(200))
        .build()
        .unwrap()
}

fn get_request(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn trips_on_a_failing_server_and_recovers_after_one_probe() {
    let (backend, addr) = start_backend().await;
    let breaker = CircuitBreakerLayer::new(settings()).respond_502();
    let registry = breaker.registry();
    // hyper's `Incoming` body has no `Default`, which the synthetic 502 needs: map it to axum's.
    let client = ServiceBuilder::new()
        .circuit_breaker(breaker)
        .map_response(|response: Response<hyper::body::Incoming>| {
            response.map(axum::body::Body::new)
        })
        .service(common::http_client());
    let scope = format!("http://{addr}");

    for _ in 0..3 {
        let response = client.clone().oneshot(get_request(addr)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(registry.state(&scope), Some(CircuitState::Open));

    // Open: answered by the breaker, the server never sees it.
    let response = client.clone().oneshot(get_request(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["x-circuit-breaker"], "1");
    assert_eq!(response.headers()["x-do-not-retry"], "1");
    assert_eq!(backend.hits.load(Ordering::SeqCst), 3);

    // The server recovers; after the break one probe goes through and closes the breaker.
    backend.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let response = client.clone().oneshot(get_request(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(common::text(response.into_body()).await, "fine");
    assert_eq!(registry.state(&scope), Some(CircuitState::Closed));

    let response = client.oneshot(get_request(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(backend.hits.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_refused_connection_opens_the_breaker_with_a_typed_error() {
    // Bind then drop a listener: the port refuses connections.
    let addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let breaker = CircuitBreakerLayer::new(settings()).return_error();
    let client = ServiceBuilder::new()
        .layer(breaker)
        .service(common::http_client());

    for _ in 0..3 {
        let err = client.clone().oneshot(get_request(addr)).await.unwrap_err();
        assert!(find_source::<CircuitOpen>(err.as_ref()).is_none(), "{err}");
    }
    let err = client.oneshot(get_request(addr)).await.unwrap_err();
    let open = find_source::<CircuitOpen>(err.as_ref()).expect("refused by the breaker");
    assert_eq!(open.scope(), format!("http://{addr}"));
    assert!(open.next_probe_in().is_some());
}
