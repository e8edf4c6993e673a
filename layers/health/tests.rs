use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{header, Request, StatusCode};
use tower::ServiceExt;

use super::*;

async fn probe(router: Router, path: &str) -> (StatusCode, String, Option<HeaderValue>) {
    let response = router
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let cache = response.headers().get(header::CACHE_CONTROL).cloned();
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap(), cache)
}

#[tokio::test(start_paused = true)]
async fn liveness_never_runs_the_checks() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let health = Health::new().check("upstream", Duration::from_secs(1), move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), BoxError>("down".into()) }
    });
    let (status, body, cache) = probe(health.router(), "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
    assert_eq!(cache.unwrap(), "no-store");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn readiness_without_checks_is_ready_until_draining() {
    let shutdown = Shutdown::new();
    let router: Router = Health::new().shutdown(&shutdown).router();
    assert_eq!(
        probe(router.clone(), "/readyz").await.1,
        "ready\n".to_string()
    );
    shutdown.trigger();
    let (status, body, _) = probe(router, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: draining\n");
}

#[tokio::test(start_paused = true)]
async fn a_failing_check_makes_the_instance_unready_with_its_reason() {
    let health = Health::new()
        .check("ok", Duration::from_secs(1), || async { Ok(()) })
        .check("database", Duration::from_secs(1), || async {
            Err::<(), BoxError>("circuit breaker open".into())
        });
    let (status, body, _) = probe(health.router(), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: database: circuit breaker open\n");
}

#[tokio::test(start_paused = true)]
async fn a_check_that_does_not_answer_in_time_fails() {
    let health = Health::new().check("slow", Duration::from_millis(200), || async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    });
    let readiness = health.readiness().await;
    assert!(!readiness.is_ready());
    assert_eq!(readiness.failures.len(), 1);
    assert_eq!(readiness.failures[0].name, "slow");
    assert_eq!(readiness.failures[0].reason, "no answer within 200ms");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_fails_without_taking_the_probe_down() {
    let health = Health::new().check("buggy", Duration::from_secs(1), || async {
        if true {
            panic!("bug in a check");
        }
        Ok(())
    });
    let (status, body, _) = probe(health.router(), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: buggy: panicked\n");
}

#[tokio::test(start_paused = true)]
async fn checks_are_skipped_while_draining() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let shutdown = Shutdown::new();
    let health =
        Health::new()
            .shutdown(&shutdown)
            .check("counted", Duration::from_secs(1), move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            });
    assert!(health.readiness().await.is_ready());
    shutdown.trigger();
    let readiness = health.readiness().await;
    assert!(readiness.draining && !readiness.is_ready());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn cloned_health_keeps_its_checks_apart() {
    let base = Health::new().check("a", Duration::from_secs(1), || async { Ok(()) });
    let more = base
        .clone()
        .check("b", Duration::from_secs(1), || async { Ok(()) });
    assert_eq!(base.checks.len(), 1);
    assert_eq!(more.checks.len(), 2);
    assert!(base.liveness());
}
