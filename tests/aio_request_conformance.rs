//! Where tower-lifeline matches aio-request 0.2.x, pinned through the `Client` preset on real
//! loopback sockets (the README's conformance table names each row's test here or in
//! `tests/outcomes.rs`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{extract::Request as AxumRequest, routing::get, Router};
use http::StatusCode;
use prometheus::Registry;
use tower_lifeline::circuit_breaker::CircuitBreakerSettings;
use tower_lifeline::client::Client;
use tower_lifeline::context::{Deadline, Priority, RequestContext};
use tower_lifeline::metrics::{self, ClientMetrics, MetricsConfig};
use tower_lifeline::strategy::{Strategy, StrategyLayer};

/// A server that records the `X-Request-Timeout` it was sent and answers 200, or hangs on
/// `/hang`.
async fn recording_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move |req: AxumRequest| {
                let record = record.clone();
                async move {
                    let timeout = req
                        .headers()
                        .get("x-request-timeout")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    record.lock().unwrap().push(timeout);
                    "item"
                }
            }),
        )
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        );
    (common::serve(app).await, seen)
}

fn seconds(header: &str) -> f64 {
    header.parse().unwrap()
}

#[tokio::test]
async fn the_default_timeout_applies_only_without_an_explicit_or_inherited_deadline() {
    let (addr, seen) = recording_server().await;
    let client = Client::builder()
        .base_url(&format!("http://{addr}/"))
        .default_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    // A handler that received 45 s passes 45 s on, not the client's 20 s.
    let inherited = RequestContext::new(
        Some(Deadline::after(Duration::from_secs(45))),
        Priority::Normal,
    );
    inherited.scope(client.get("items/1").send()).await.unwrap();
    // An explicit 30 s outside any request is 30 s, not cut to the default.
    client
        .get("items/2")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    // An explicit deadline stays capped by the inherited one.
    let short = RequestContext::new(
        Some(Deadline::after(Duration::from_secs(3))),
        Priority::Normal,
    );
    short
        .scope(
            client
                .get("items/3")
                .timeout(Duration::from_secs(30))
                .send(),
        )
        .await
        .unwrap();
    // Neither: the default.
    client.get("items/4").send().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let sent: Vec<f64> = seen.iter().map(|h| seconds(h)).collect();
    assert!(sent[0] > 44.0 && sent[0] <= 45.0, "{seen:?}");
    assert!(sent[1] > 29.0 && sent[1] <= 30.0, "{seen:?}");
    assert!(sent[2] > 2.0 && sent[2] <= 3.0, "{seen:?}");
    assert!(sent[3] > 19.0 && sent[3] <= 20.0, "{seen:?}");
}

/// The `aio_request_latency` count line for one label set.
fn aio_line(endpoint: &str, path: &str, status: &str, breaker: &str) -> String {
    format!(
        r#"aio_request_latency_count{{circuit_breaker="{breaker}",request_endpoint="{endpoint}",request_method="GET",request_path="{path}",response_status="{status}"}}"#
    )
}

#[tokio::test]
async fn aio_request_metrics_have_its_label_values_for_answers_and_failures() {
    let (addr, _) = recording_server().await;
    let registry = Registry::new();
    let metrics = ClientMetrics::register(&registry, MetricsConfig::aio_request()).unwrap();
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .metrics(metrics)
        // One send per call: resends of a refused connect pass the breaker again, and with
        // `consecutive_failures(1)` the second would be its 502 rather than the 489 shown here.
        .strategy(
            StrategyLayer::new()
                .strategy(Strategy::single())
                .connection_attempts(1),
        )
        .circuit_breaker(Some(
            CircuitBreakerSettings::builder()
                .consecutive_failures(1)
                .break_duration(Duration::from_secs(60))
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    let endpoint = format!("http://{addr}");

    // An answer: the status, and the request's path template as aio-request's `request.url.path`.
    let response = client
        .get("/items/7")
        .route("/items/{id}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A timeout: 408, as aio-request's transport answers its TimeoutError.
    client
        .get("/hang")
        .route("/hang")
        .timeout(Duration::from_millis(50))
        .send()
        .await
        .unwrap_err();

    // The breaker opened on that failure: its refusal is 502 with circuit_breaker="True".
    client.get("/hang").route("/hang").send().await.unwrap_err();

    // A network error: 489, aio-request's `network_errors_code`.
    let refused_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let refused = format!("http://127.0.0.1:{refused_port}");
    client
        .get(format!("{refused}/down"))
        .route("/down")
        .send()
        .await
        .unwrap_err();

    let text = metrics::render(&registry).unwrap();
    for line in [
        aio_line(&endpoint, "/items/{id}", "200", "False"),
        aio_line(&endpoint, "/hang", "408", "False"),
        aio_line(&endpoint, "/hang", "502", "True"),
        aio_line(&refused, "/down", "489", "False"),
    ] {
        assert!(
            text.contains(&format!("{line} 1")),
            "missing {line}\n{text}"
        );
    }
    // The transport latency (per attempt) records the timed-out attempt as 408 too.
    assert!(
        text.contains(&format!(
            r#"aio_request_transport_latency_count{{request_endpoint="{endpoint}",request_method="GET",request_path="/hang",response_status="408"}} 1"#
        )),
        "{text}"
    );
}

#[tokio::test]
async fn an_attempt_cut_by_the_attempt_timeout_is_recorded_as_a_timeout_not_499() {
    let (addr, _) = recording_server().await;
    let registry = Registry::new();
    let metrics = ClientMetrics::register(&registry, MetricsConfig::default()).unwrap();
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .metrics(metrics)
        .attempt_timeout(Duration::from_millis(50))
        .strategy(StrategyLayer::new().strategy(Strategy::single()))
        .build()
        .unwrap();
    client
        .get("/hang")
        .route("/hang")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();
    let text = metrics::render(&registry).unwrap();
    assert!(
        text.contains(r#"http_client_attempt_duration_seconds_count{endpoint"#)
            && text.contains(r#"path="/hang",status="timeout"} 1"#),
        "{text}"
    );
    assert!(!text.contains(r#"status="499""#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_default_linear_backoff_is_aio_requests_zero_plus_fifty_ms_per_attempt() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_lifeline::body::ReplayBody;
    // Three attempts against a backend that always fails; the waits are 50 ms and 100 ms, ±20%.
    let calls = Arc::new(AtomicUsize::new(0));
    let at = Arc::new(Mutex::new(Vec::new()));
    let backend = {
        let calls = calls.clone();
        let at = at.clone();
        let started = tokio::time::Instant::now();
        service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            at.lock().unwrap().push(started.elapsed());
            async {
                let mut response = Response::new(());
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let client = StrategyLayer::new().budget(None).layer(backend);
    let response = client
        .oneshot(
            Request::get("http://backend/")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let at = at.lock().unwrap().clone();
    let first_wait = at[1] - at[0];
    let second_wait = at[2] - at[1];
    let ms = Duration::from_millis;
    assert!(first_wait >= ms(40) && first_wait <= ms(60), "{at:?}");
    assert!(second_wait >= ms(80) && second_wait <= ms(120), "{at:?}");
}

#[tokio::test]
async fn the_request_hook_runs_on_every_attempt_after_the_propagation_headers() {
    use axum::response::IntoResponse;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/flaky",
        get(move |req: AxumRequest| {
            let record = record.clone();
            async move {
                let mut seen = record.lock().unwrap();
                seen.push(req.headers()["authorization"].to_str().unwrap().to_owned());
                if seen.len() == 1 {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                } else {
                    "ok".into_response()
                }
            }
        }),
    );
    let addr = common::serve(app).await;
    let tokens = Arc::new(AtomicUsize::new(0));
    let issued = tokens.clone();
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .on_attempt(move |parts| {
            // Sees the propagation headers already written, as aio-request's enricher does.
            assert!(parts.headers.contains_key("x-request-timeout"));
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            parts.headers.insert(
                "authorization",
                format!("Bearer token-{n}").parse().unwrap(),
            );
        })
        .build()
        .unwrap();
    let response = client.get("/flaky").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.attempts(), 2);
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["Bearer token-1".to_owned(), "Bearer token-2".to_owned()]
    );
}

#[tokio::test]
async fn redirects_are_followed_with_the_body_replayed_and_bounded() {
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::post;
    use tower_lifeline::client::TooManyRedirects;
    let loops = Arc::new(AtomicUsize::new(0));
    let counter = loops.clone();
    let app = Router::new()
        .route("/old", post(|| async { Redirect::temporary("/new") }))
        .route("/new", post(|body: String| async move { body }))
        .route("/see-other", post(|| async { Redirect::to("/result") }))
        .route("/result", get(|| async { "result" }))
        .route(
            "/loop",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Redirect::temporary("/loop").into_response() }
            }),
        );
    let addr = common::serve(app).await;
    let client = Client::builder()
        .base_url(&format!("http://{addr}"))
        .build()
        .unwrap();

    // 307 repeats the method and the body.
    let response = client.post("/old").body("payload").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "payload");

    // 303 turns the POST into a GET.
    let response = client.post("/see-other").body("x").send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "result");

    // At most ten redirects, then a typed error (the eleventh hop is not sent).
    let err = client.get("/loop").send().await.unwrap_err();
    let too_many = err.downcast_ref::<TooManyRedirects>().expect("typed");
    assert_eq!(too_many.max(), 10);
    assert_eq!(loops.load(Ordering::SeqCst), 11);

    // Turned off for one call: the redirect itself comes back.
    let response = client
        .post("/old")
        .body("payload")
        .follow_redirects(false)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
}

#[tokio::test]
async fn the_request_hook_does_not_run_on_a_redirect_that_left_the_origin() {
    use axum::response::Redirect;
    // B records the Authorization it was sent, if any.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let b = common::serve(Router::new().route(
        "/x",
        get(move |req: AxumRequest| {
            let record = record.clone();
            async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                record.lock().unwrap().push(auth);
                "b"
            }
        }),
    ))
    .await;
    // A sends every caller on to B, another origin.
    let target = format!("http://{b}/x");
    let a = common::serve(Router::new().route(
        "/go",
        get(move || {
            let target = target.clone();
            async move { Redirect::temporary(&target) }
        }),
    ))
    .await;
    let client = Client::builder()
        .on_attempt(|parts| {
            parts
                .headers
                .insert("authorization", "Bearer secret".parse().unwrap());
        })
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{a}/go"))
        .header("authorization", "Bearer also-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "b");
    assert_eq!(*seen.lock().unwrap(), vec![None]);
}
