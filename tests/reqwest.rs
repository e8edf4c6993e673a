//! The `Client` preset over a user's own `reqwest::Client` (issue 16, the reqwest half): retries,
//! hedging, the breaker, the deadline and propagation behave as they do over hyper-util, on
//! real loopback sockets.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::Request, http::StatusCode, routing::get, Router};
use tower_lifeline::circuit_breaker::{CircuitBreakerSettings, CircuitState};
use tower_lifeline::classify::outcome_of_error;
use tower_lifeline::client::Client;
use tower_lifeline::outcome::Outcome;
use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};

/// `/flaky` answers 503 once, then the `X-Request-Timeout` and `X-Service-Name` it was sent;
/// `/slow` hangs on its first call; `/down` always answers 503.
async fn backend() -> std::net::SocketAddr {
    let flaky = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/flaky",
            get(move |req: Request| {
                let n = flaky.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        return Err(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    let h = |name: &str| req.headers()[name].to_str().unwrap().to_owned();
                    Ok(format!(
                        "{} {}",
                        h("x-request-timeout"),
                        h("x-service-name")
                    ))
                }
            }),
        )
        .route(
            "/slow",
            get(move || {
                let n = slow.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    "fast"
                }
            }),
        )
        .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    common::serve(app).await
}

fn over_reqwest() -> tower_lifeline::client::ClientBuilder {
    // The user's own client, built with settings of their own.
    let user_client = reqwest::Client::builder()
        .user_agent("their-agent/1.0")
        .build()
        .unwrap();
    Client::builder()
        .reqwest(user_client)
        .service_name("checkout")
}

#[tokio::test]
async fn retries_and_propagation_work_over_reqwest() {
    let addr = backend().await;
    let client = over_reqwest().build().unwrap();
    let response = client
        .get(format!("http://{addr}/flaky"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.attempts(), 2);
    let body = response.text().await.unwrap();
    let (timeout, service) = body.split_once(' ').unwrap();
    let timeout: f64 = timeout.parse().unwrap();
    assert!(timeout > 2.0 && timeout <= 3.0, "{body}");
    assert_eq!(service, "checkout");
}

#[tokio::test]
async fn a_hedge_over_reqwest_wins_past_a_hanging_first_attempt() {
    let addr = backend().await;
    let client = over_reqwest().build().unwrap();
    let started = tokio::time::Instant::now();
    let response = client
        .get(format!("http://{addr}/slow"))
        .strategy(Strategy::parallel(
            2,
            Delays::constant(Duration::from_millis(50)),
        ))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "fast");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn the_deadline_and_the_breaker_work_over_reqwest() {
    let addr = backend().await;
    let client = over_reqwest()
        .strategy(StrategyLayer::new().strategy(Strategy::single()))
        .circuit_breaker(Some(
            CircuitBreakerSettings::builder()
                .consecutive_failures(3)
                .break_duration(Duration::from_secs(60))
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    // A hanging attempt ends at the deadline as a failure of the destination.
    let started = tokio::time::Instant::now();
    let err = client
        .get(format!("http://{addr}/slow"))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::Failure, "{err:?}");
    // Two 503s more make three failures in a row: the breaker opens and refuses at once.
    for _ in 0..2 {
        let response = client
            .get(format!("http://{addr}/down"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        client.breakers().unwrap().state(&format!("http://{addr}")),
        Some(CircuitState::Open)
    );
    let refused = client
        .get(format!("http://{addr}/down"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(outcome_of_error(refused.as_ref()), Outcome::Refused);
}

#[tokio::test]
async fn a_refused_connection_over_reqwest_never_left_and_a_post_is_resent() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let strategy = StrategyLayer::new();
    let stats = strategy.stats();
    let client = over_reqwest().strategy(strategy).build().unwrap();
    let err = client
        .post(format!("http://127.0.0.1:{port}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(outcome_of_error(err.as_ref()), Outcome::NotSent, "{err:?}");
    assert_eq!(stats.snapshot().retries, 2);
}
