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
async fn a_failing_check_makes_the_instance_unready_naming_it_but_not_its_error() {
    let health = Health::new()
        .check("ok", Duration::from_secs(1), || async { Ok(()) })
        .check("database", Duration::from_secs(1), || async {
            Err::<(), BoxError>("cannot reach postgres://admin:secret@10.0.0.5".into())
        });
    // The reason is for the operator (the log, `readiness()`), not for the public endpoint.
    let readiness = health.readiness().await;
    assert_eq!(
        readiness.failures[0].reason,
        "cannot reach postgres://admin:secret@10.0.0.5"
    );
    let (status, body, _) = probe(health.router(), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: database\n");
}

#[tokio::test(start_paused = true)]
async fn probes_within_a_second_share_one_run_of_the_checks() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let router: Router = Health::new()
        .check("counted", Duration::from_secs(1), move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            }
        })
        .router();
    // Ten probes at once, then ten more within the second: one run of the checks.
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(probe(router.clone(), "/readyz")))
        .collect();
    for probe in burst {
        assert_eq!(probe.await.unwrap().0, StatusCode::OK);
    }
    for _ in 0..10 {
        assert_eq!(probe(router.clone(), "/readyz").await.0, StatusCode::OK);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::advance(super::PROBE_CACHE).await;
    probe(router, "/readyz").await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the checks run again after a second"
    );
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
    assert_eq!(body, "not ready: buggy\n");
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
