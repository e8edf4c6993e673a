//! Deadline and priority cross two hops on real loopback sockets with nothing passed by hand.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::State, routing::get, Json, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_lifeline::context::RequestContext;
use tower_lifeline::deadline::{ClientDeadlineLayer, DeadlineExceeded};
use tower_lifeline::propagation::{PropagateLayer, ServiceName};
use tower_lifeline::ServiceBuilderExt;

/// What a handler saw of its context, as JSON.
fn seen(ctx: RequestContext) -> Value {
    json!({
        "deadline_ms": ctx.deadline().map(|d| d.remaining().as_secs_f64() * 1000.0),
        "priority": ctx.priority().as_str(),
    })
}

fn server_layers() -> ServiceBuilder<
    tower::layer::util::Stack<
        tower_lifeline::priority::ServerPriorityLayer,
        tower::layer::util::Stack<
            tower_lifeline::deadline::ServerDeadlineLayer,
            tower::layer::util::Identity,
        >,
    >,
> {
    ServiceBuilder::new()
        .server_deadline(Duration::from_secs(20))
        .server_priority()
}

struct Backend {
    calls: Arc<AtomicUsize>,
    addr: std::net::SocketAddr,
}

async fn start_backend() -> Backend {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/context",
            get(
                |State(calls): State<Arc<AtomicUsize>>, ctx: RequestContext| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Json(seen(ctx))
                },
            ),
        )
        .with_state(calls.clone())
        .layer(server_layers());
    Backend {
        calls,
        addr: common::serve(app).await,
    }
}

/// Server A: notes its own context, spends `work` time, then calls B through the client layers.
async fn start_frontend(
    backend: std::net::SocketAddr,
    work: Duration,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new()
        .layer(ClientDeadlineLayer::new().write_header(false))
        .layer(PropagateLayer::new().service_name(ServiceName::from_static("frontend")))
        .service(common::http_client());
    let handler = move |State(calls): State<Arc<AtomicUsize>>, ctx: RequestContext| {
        let client = client.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let mine = seen(ctx);
            tokio::time::sleep(work).await;
            let request = Request::get(format!("http://{backend}/context"))
                .body(Full::<Bytes>::default())
                .unwrap();
            match client.oneshot(request).await {
                Ok(response) => {
                    let theirs: Value =
                        serde_json::from_str(&common::text(response.into_body()).await).unwrap();
                    (StatusCode::OK, Json(json!({"a": mine, "b": theirs})))
                }
                Err(err) => {
                    let refused = err
                        .downcast_ref::<DeadlineExceeded>()
                        .is_some_and(|e| !e.was_sent());
                    (
                        StatusCode::GATEWAY_TIMEOUT,
                        Json(json!({"a": mine, "error": err.to_string(), "refused": refused})),
                    )
                }
            }
        }
    };
    let app = Router::new()
        .route("/", get(handler))
        .with_state(calls.clone())
        .layer(server_layers());
    (common::serve(app).await, calls)
}

async fn call(addr: std::net::SocketAddr, timeout: &str, priority: &str) -> (StatusCode, Value) {
    let request = Request::get(format!("http://{addr}/"))
        .header("x-request-timeout", timeout)
        .header("x-request-priority", priority)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = common::http_client().request(request).await.unwrap();
    let status = response.status();
    let body = common::text(response.into_body()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn deadline_shrinks_and_priority_travels_across_two_hops() {
    let backend = start_backend().await;
    let work = Duration::from_millis(100);
    let (frontend, _) = start_frontend(backend.addr, work).await;

    let (status, body) = call(frontend, "2", "HIGH").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let a_ms = body["a"]["deadline_ms"].as_f64().unwrap();
    let b_ms = body["b"]["deadline_ms"].as_f64().unwrap();
    assert!(
        a_ms <= 2000.0 && a_ms > 1500.0,
        "A saw {a_ms} ms of the caller's 2 s"
    );
    assert!(
        b_ms <= a_ms - work.as_millis() as f64,
        "B saw {b_ms} ms, A saw {a_ms} ms and spent {work:?}"
    );
    assert!(b_ms > 0.0);
    assert_eq!(body["a"]["priority"], "high");
    assert_eq!(body["b"]["priority"], "high");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_expired_request_never_reaches_a_handler() {
    let backend = start_backend().await;
    let (frontend, frontend_calls) = start_frontend(backend.addr, Duration::ZERO).await;
    for timeout in ["0", "0.001", "0.004"] {
        let (status, _) = call(frontend, timeout, "normal").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "timeout {timeout}");
    }
    assert_eq!(frontend_calls.load(Ordering::SeqCst), 0);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_hop_that_used_up_the_time_does_not_call_the_next() {
    let backend = start_backend().await;
    // A spends 200 ms of the caller's 150: its client refuses to send to B.
    let (frontend, frontend_calls) = start_frontend(backend.addr, Duration::from_millis(200)).await;
    let (status, body) = call(frontend, "0.15", "low").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["refused"], true, "{body}");
    assert_eq!(frontend_calls.load(Ordering::SeqCst), 1);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_headers_get_defaults_not_errors() {
    let backend = start_backend().await;
    for (timeout, priority) in [
        ("NaN", "urgent"),
        ("-5", ""),
        ("1e309", "HIGHEST"),
        ("ten", "hi gh"),
    ] {
        let request = Request::get(format!("http://{}/context", backend.addr))
            .header("x-request-timeout", timeout)
            .header("x-request-priority", priority)
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = common::http_client().request(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{timeout:?} {priority:?}"
        );
        let body: Value = serde_json::from_str(&common::text(response.into_body()).await).unwrap();
        let ms = body["deadline_ms"].as_f64().unwrap();
        assert!(
            ms > 19_000.0 && ms <= 20_000.0,
            "default deadline, got {ms}"
        );
        assert_eq!(body["priority"], "normal");
    }
}
