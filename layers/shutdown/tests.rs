use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode, Version};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

use super::*;
use crate::test_util::ReadinessChecked;

type Handled = Pin<Box<dyn Future<Output = Response<String>> + Send>>;

fn gated(gate: Arc<Semaphore>) -> impl FnMut(Request<()>) -> Handled + Clone {
    move |_req| {
        let gate = gate.clone();
        Box::pin(async move {
            let _permit = gate.acquire().await.unwrap();
            Response::new("done".to_string())
        })
    }
}

fn request(version: Version) -> Request<()> {
    Request::get("/").version(version).body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn draining_starts_at_the_trigger_and_the_signal_waits_for_the_drain_delay() {
    let shutdown = Shutdown::new().drain_delay(Duration::from_secs(5));
    assert!(!shutdown.is_draining());
    let signal = tokio::spawn(shutdown.signal());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!signal.is_finished(), "not triggered yet");

    shutdown.trigger();
    assert!(
        shutdown.is_draining(),
        "readiness turns false before the drain"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!signal.is_finished(), "still within the drain delay");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(signal.is_finished());
}

#[tokio::test(start_paused = true)]
async fn the_grace_period_counts_from_the_trigger() {
    let shutdown = Shutdown::new().grace_period(Duration::from_secs(30));
    let expired = tokio::spawn(shutdown.grace_expired());
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(!expired.is_finished());
    shutdown.trigger();
    // A second trigger changes nothing.
    shutdown.trigger();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(!expired.is_finished());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(expired.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_signal_outlives_the_handles_it_came_from() {
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    let signal = tokio::spawn(shutdown.signal());
    drop(shutdown);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!signal.is_finished(), "dropping a handle is not a shutdown");
    trigger.trigger();
    signal.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn responses_carry_connection_close_only_while_draining() {
    let shutdown = Shutdown::new();
    let svc = shutdown
        .layer()
        .layer(ReadinessChecked::new(gated(Arc::new(Semaphore::new(100)))));
    let res = svc
        .clone()
        .oneshot(request(Version::HTTP_11))
        .await
        .unwrap();
    assert!(!res.headers().contains_key(header::CONNECTION));

    shutdown.trigger();
    let res = svc
        .clone()
        .oneshot(request(Version::HTTP_11))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONNECTION], "close");
    // HTTP/2 forbids the header: it is left off there.
    let res = svc.oneshot(request(Version::HTTP_2)).await.unwrap();
    assert!(!res.headers().contains_key(header::CONNECTION));
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_at_the_trigger_finishes_and_is_told_to_close() {
    let shutdown = Shutdown::new();
    let gate = Arc::new(Semaphore::new(0));
    let svc = shutdown
        .layer()
        .layer(ReadinessChecked::new(gated(gate.clone())));
    let in_flight = tokio::spawn(svc.oneshot(request(Version::HTTP_11)));
    tokio::task::yield_now().await;
    assert_eq!(shutdown.in_flight(), 1);

    shutdown.trigger();
    gate.add_permits(1);
    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "done");
    assert_eq!(res.headers()[header::CONNECTION], "close");
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn guards_are_counted_until_dropped_and_forcing_triggers() {
    let shutdown = Shutdown::new();
    let first = shutdown.guard();
    let second = shutdown.guard();
    let released = tokio::spawn(shutdown.guards_released());
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!released.is_finished(), "one guard is still held");
    drop(second);
    released.await.unwrap();

    assert!(!shutdown.is_forced());
    shutdown.force();
    assert!(shutdown.is_draining(), "forcing starts the drain too");
    assert!(shutdown.is_forced());
    shutdown.forced().await;
}

#[tokio::test]
async fn serve_waits_for_guards_and_a_forced_drain_returns_at_once() {
    let shutdown = Shutdown::new().grace_period(Duration::from_secs(30));
    let app = axum::Router::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guard = shutdown.guard();
    let serving = tokio::spawn(serve(listener, app, shutdown.clone()));
    shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!serving.is_finished(), "the drain waits for the guard");
    shutdown.force();
    let drained = tokio::time::timeout(Duration::from_secs(2), serving)
        .await
        .expect("forced")
        .unwrap()
        .unwrap();
    assert_eq!(drained, Drained::Forced { in_flight: 0 });
    drop(guard);
}
