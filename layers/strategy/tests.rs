use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::*;
use crate::body::ReplayBody;
use crate::context::Deadline;
use crate::headers::{IDEMPOTENCY_KEY, RETRY_AFTER, X_DO_NOT_RETRY};
use crate::test_util::ReadinessChecked;

/// What the scripted backend does on one call.
#[derive(Clone)]
enum Step {
    /// Answer `status` after `after`, with optional extra headers.
    Answer(u64, u16, &'static [(&'static str, &'static str)]),
    /// Never answer.
    Hang,
}

use Step::*;

/// A backend that plays `steps` in order (the last one repeats), counts calls and the calls
/// dropped before they answered, and records the deadline each call carried.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    deadlines: Arc<Mutex<Vec<Option<Duration>>>>,
}

struct CancelGuard(Option<Arc<AtomicUsize>>);

impl CancelGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0.take() {
            cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type Handled = std::pin::Pin<Box<dyn std::future::Future<Output = Response<String>> + Send>>;

impl Backend {
    fn service(
        &self,
        steps: Vec<Step>,
    ) -> ReadinessChecked<impl FnMut(Request<ReplayBody<String>>) -> Handled + Clone> {
        let backend = self.clone();
        ReadinessChecked::new(move |req: Request<ReplayBody<String>>| {
            let n = backend.calls.fetch_add(1, Ordering::SeqCst);
            backend
                .deadlines
                .lock()
                .unwrap()
                .push(req.extensions().get::<Deadline>().map(|d| d.remaining()));
            let step = steps[n.min(steps.len() - 1)].clone();
            let guard = CancelGuard(Some(backend.cancelled.clone()));
            Box::pin(async move {
                let mut guard = guard;
                match step {
                    Answer(after, status, headers) => {
                        tokio::time::sleep(Duration::from_millis(after)).await;
                        guard.disarm();
                        let mut response = Response::new(format!("call {n}"));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        for (name, value) in headers {
                            response.headers_mut().insert(*name, value.parse().unwrap());
                        }
                        response
                    }
                    Hang => std::future::pending().await,
                }
            }) as Handled
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
}

fn get() -> Request<String> {
    Request::get("http://backend/items")
        .body(String::new())
        .unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sequential(attempts: u32, delay: u64) -> StrategyLayer {
    StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::sequential(attempts, Delays::constant(ms(delay))))
}

fn parallel(attempts: u32, delay: u64) -> StrategyLayer {
    StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::parallel(attempts, Delays::constant(ms(delay))))
}

#[tokio::test(start_paused = true)]
async fn sequential_waits_between_attempts_and_returns_the_last_response() {
    let backend = Backend::default();
    let svc = sequential(3, 100).layer(backend.service(vec![Answer(0, 503, &[])]));
    let started = Instant::now();
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.body(), "call 2");
    assert_eq!(backend.calls(), 3);
    assert_eq!(
        response.extensions().get::<AttemptCount>(),
        Some(&AttemptCount(3))
    );
    assert_eq!(started.elapsed(), ms(200));
}

#[tokio::test(start_paused = true)]
async fn sequential_stops_at_the_first_accepted_response() {
    let backend = Backend::default();
    let svc = sequential(5, 10).layer(backend.service(vec![
        Answer(0, 500, &[]),
        Answer(0, 404, &[]),
        Answer(0, 200, &[]),
    ]));
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "404 is accepted: retrying would not help"
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn sequential_stops_when_the_next_delay_would_pass_the_deadline() {
    let backend = Backend::default();
    let svc = sequential(5, 100).layer(backend.service(vec![Answer(0, 503, &[])]));
    let mut request = get();
    request.extensions_mut().insert(Deadline::after(ms(150)));
    let started = Instant::now();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        backend.calls(),
        2,
        "t=0 and t=100; a third at t=200 would pass t=150"
    );
    assert_eq!(
        started.elapsed(),
        ms(100),
        "returns at once instead of sleeping"
    );
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let flaky = tower::service_fn(move |_req: Request<ReplayBody<String>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
            } else {
                Ok(Response::new(String::from("ok")))
            }
        }
    });
    let svc = sequential(3, 10).layer(flaky);
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.body(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn do_not_retry_is_final() {
    let backend = Backend::default();
    let svc =
        sequential(3, 10).layer(backend.service(vec![Answer(0, 503, &[("x-do-not-retry", "1")])]));
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(X_DO_NOT_RETRY));
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn parallel_a_slow_first_attempt_loses_to_the_second_and_is_cancelled() {
    let backend = Backend::default();
    let layer = parallel(2, 50);
    let svc = layer.layer(backend.service(vec![Answer(1_000, 200, &[]), Answer(10, 200, &[])]));
    let started = Instant::now();
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.body(), "call 1");
    assert_eq!(started.elapsed(), ms(60));
    assert_eq!(backend.calls(), 2);
    assert_eq!(
        backend.cancelled(),
        1,
        "the losing attempt's future was dropped"
    );
    let stats = layer.stats().snapshot();
    assert_eq!((stats.hedges, stats.hedge_wins), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn parallel_a_fast_500_does_not_win() {
    let backend = Backend::default();
    let svc =
        parallel(2, 50).layer(backend.service(vec![Answer(300, 200, &[]), Answer(0, 500, &[])]));
    let started = Instant::now();
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "call 0");
    assert_eq!(started.elapsed(), ms(300));
}

#[tokio::test(start_paused = true)]
async fn parallel_starts_the_next_attempt_at_once_when_everything_in_flight_failed() {
    let backend = Backend::default();
    let svc =
        parallel(3, 1_000).layer(backend.service(vec![Answer(10, 503, &[]), Answer(10, 200, &[])]));
    let started = Instant::now();
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        started.elapsed(),
        ms(20),
        "not at t=1000, its scheduled time"
    );
}

#[tokio::test(start_paused = true)]
async fn parallel_returns_a_rejected_response_when_every_attempt_fails() {
    let backend = Backend::default();
    let svc = parallel(3, 10).layer(backend.service(vec![Answer(100, 502, &[])]));
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn post_without_idempotency_key_is_sent_exactly_once_under_every_configured_strategy() {
    let strategies = [
        None,
        Some(Strategy::sequential(3, Delays::constant(ms(1)))),
        Some(Strategy::parallel(3, Delays::constant(ms(1)))),
        Some(Strategy::until_deadline(
            Strategy::single(),
            Delays::constant(ms(1)),
        )),
    ];
    for strategy in strategies {
        for method in [Method::POST, Method::PATCH] {
            let backend = Backend::default();
            let mut layer = StrategyLayer::new().budget(None);
            if let Some(s) = &strategy {
                layer = layer.strategy(s.clone());
            }
            let svc = layer.layer(backend.service(vec![Answer(0, 503, &[])]));
            let mut request = Request::builder()
                .method(method.clone())
                .uri("http://backend/orders")
                .body("{}".to_string())
                .unwrap();
            request.extensions_mut().insert(Deadline::after(ms(500)));
            let response = svc.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(backend.calls(), 1, "{method} with {strategy:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn post_with_idempotency_key_is_retried() {
    let backend = Backend::default();
    let svc = StrategyLayer::new()
        .budget(None)
        .layer(backend.service(vec![Answer(0, 503, &[])]));
    let request = Request::post("http://backend/orders")
        .header(IDEMPOTENCY_KEY, "order-42")
        .body("{}".to_string())
        .unwrap();
    svc.oneshot(request).await.unwrap();
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_after_sets_the_wait() {
    let backend = Backend::default();
    let svc = sequential(2, 10).layer(backend.service(vec![
        Answer(0, 503, &[("retry-after", "2")]),
        Answer(0, 200, &[]),
    ]));
    let started = Instant::now();
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped() {
    let backend = Backend::default();
    let svc = sequential(2, 10)
        .max_retry_after(Duration::from_secs(1))
        .layer(backend.service(vec![
            Answer(0, 429, &[("retry-after", "3600")]),
            Answer(0, 200, &[]),
        ]));
    let started = Instant::now();
    svc.oneshot(get()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn retry_after_past_the_deadline_returns_the_response_at_once() {
    let backend = Backend::default();
    let svc =
        sequential(3, 10).layer(backend.service(vec![Answer(0, 503, &[("retry-after", "5")])]));
    let mut request = get();
    request
        .extensions_mut()
        .insert(Deadline::after(Duration::from_secs(1)));
    let started = Instant::now();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[RETRY_AFTER], "5");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_keeps_load_under_a_quarter_more_at_total_failure() {
    let backend = Backend::default();
    let layer = StrategyLayer::new().strategy(Strategy::sequential(3, Delays::constant(ms(10))));
    let svc = layer.layer(backend.service(vec![Answer(1, 503, &[])]));
    let requests = 1_000;
    let calls = (0..requests).map(|_| svc.clone().oneshot(get()));
    let responses = futures_join_all(calls).await;
    assert!(responses
        .iter()
        .all(|r| r.as_ref().unwrap().status() == StatusCode::SERVICE_UNAVAILABLE));
    let load = backend.calls() as f64 / requests as f64;
    println!("budget at 100% failure: {load:.3} backend calls per request");
    assert!(load <= 1.25, "backend saw {load:.3} calls per request");
    assert!(
        load > 1.0,
        "the budget still allowed some retries ({load:.3})"
    );
    assert!(layer.stats().snapshot().budget_refusals > 0);
}

/// Runs futures concurrently on this task, without a futures crate.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, future) in pinned.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => outputs[i] = Some(output),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn percentile_delays_follow_the_observed_latency() {
    let settings = PercentileSettings {
        min: ms(1),
        ..PercentileSettings::default()
    };
    let delays = PercentileDelays::new(settings).unwrap();
    let layer = StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::parallel(2, Delays::percentile(delays.clone())));
    // Warm up through retries that share the tracker and never hedge: 40 requests answered in
    // 20 ms teach it p95 = 20 ms.
    let warm_up = StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::sequential(2, Delays::percentile(delays.clone())));
    let backend = Backend::default();
    let svc = warm_up.layer(backend.service(vec![Answer(20, 200, &[])]));
    for _ in 0..40 {
        svc.clone().oneshot(get()).await.unwrap();
    }
    assert_eq!(backend.calls(), 40);
    tokio::time::advance(Duration::from_secs(1)).await;
    // Now a first attempt that hangs is hedged after about 20 ms.
    let slow = Backend::default();
    let svc = layer.layer(slow.service(vec![Hang, Answer(20, 200, &[])]));
    let started = Instant::now();
    svc.oneshot(get()).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= ms(39) && elapsed <= ms(42),
        "hedged after p95: {elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn split_deadline_shares_what_is_left_between_attempts() {
    let backend = Backend::default();
    let svc = sequential(3, 0)
        .attempt_deadline(AttemptDeadline::Split)
        .layer(backend.service(vec![Answer(1_000, 503, &[]), Hang, Answer(0, 200, &[])]));
    let mut request = get();
    request
        .extensions_mut()
        .insert(Deadline::after(Duration::from_secs(9)));
    let started = Instant::now();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = backend.deadlines.lock().unwrap().clone();
    // 9 s over 3 gives 3 s; the first answers after 1 s, so 8 s over 2 gives 4 s; the second
    // hangs and is cut at its 4 s, leaving 4 s to the last.
    assert_eq!(
        seen,
        vec![
            Some(Duration::from_secs(3)),
            Some(Duration::from_secs(4)),
            Some(Duration::from_secs(4))
        ]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(backend.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn pass_through_gives_every_attempt_the_whole_deadline() {
    let backend = Backend::default();
    let svc =
        sequential(2, 0).layer(backend.service(vec![Answer(1_000, 503, &[]), Answer(0, 200, &[])]));
    let mut request = get();
    request
        .extensions_mut()
        .insert(Deadline::after(Duration::from_secs(9)));
    svc.oneshot(request).await.unwrap();
    let seen = backend.deadlines.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![Some(Duration::from_secs(9)), Some(Duration::from_secs(8))]
    );
}

#[tokio::test(start_paused = true)]
async fn until_deadline_repeats_rounds_until_out_of_time() {
    let backend = Backend::default();
    let svc = StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::until_deadline(
            Strategy::sequential(2, Delays::constant(ms(10))),
            Delays::constant(ms(100)),
        ))
        .layer(backend.service(vec![Answer(0, 503, &[])]));
    let mut request = get();
    request.extensions_mut().insert(Deadline::after(ms(500)));
    let started = Instant::now();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Rounds start at 0, 110, 220, 330, 440 (each two attempts 10 ms apart): the round at 550
    // would pass the deadline.
    assert_eq!(backend.calls(), 10);
    assert_eq!(started.elapsed(), ms(450));
}

#[tokio::test(start_paused = true)]
async fn until_deadline_without_a_deadline_runs_one_round() {
    let backend = Backend::default();
    let svc = StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::until_deadline(
            Strategy::single(),
            Delays::constant(ms(1)),
        ))
        .layer(backend.service(vec![Answer(0, 503, &[])]));
    svc.oneshot(get()).await.unwrap();
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn follow_up_attempts_ready_their_own_clone() {
    // `ReadinessChecked` panics when `call` reaches an unready instance; clones start unready.
    for layer in [sequential(3, 1), parallel(3, 1)] {
        let backend = Backend::default();
        let mut svc = layer.layer(backend.service(vec![Answer(5, 503, &[])]));
        for _ in 0..3 {
            svc.ready().await.unwrap().call(get()).await.unwrap();
        }
        assert_eq!(backend.calls(), 9);
    }
}

#[tokio::test(start_paused = true)]
async fn a_per_request_strategy_overrides_the_layer() {
    let backend = Backend::default();
    let svc = sequential(3, 1).layer(backend.service(vec![Answer(0, 503, &[])]));
    let mut request = get();
    request.extensions_mut().insert(Strategy::single());
    svc.oneshot(request).await.unwrap();
    assert_eq!(backend.calls(), 1);
}

use tower::Service;

#[tokio::test(start_paused = true)]
async fn absurd_delays_do_not_overflow_the_clock() {
    // `Duration::MAX` as a hedge delay means "never hedge; next attempt only when one fails".
    let backend = Backend::default();
    let svc = StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::parallel(3, Delays::constant(Duration::MAX)))
        .layer(backend.service(vec![Answer(10, 503, &[]), Answer(10, 200, &[])]));
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(backend.calls(), 2);
    for delays in [
        Delays::linear(Duration::MAX, Duration::MAX),
        Delays::exponential(Duration::MAX, Duration::MAX),
        Delays::full_jitter(Duration::MAX, Duration::MAX),
    ] {
        // Capped at about thirty years, jitter on top; the point is that nothing panics.
        assert!(delays.delay(u32::MAX) <= Duration::from_secs(86_400 * 365 * 61));
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_refused_by_the_breaker_does_not_end_the_race() {
    // Attempt 0 is slow but will succeed (say, the breaker's probe); the hedge is refused at once
    // by a breaker (a 502 carrying X-Circuit-Breaker and X-Do-Not-Retry, which classify as final).
    let backend = Backend::default();
    let svc = parallel(2, 50).layer(backend.service(vec![
        Answer(300, 200, &[]),
        Answer(
            0,
            502,
            &[("x-circuit-breaker", "1"), ("x-do-not-retry", "1")],
        ),
    ]));
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the real answer wins");
    assert_eq!(response.body(), "call 0");
    assert_eq!(backend.cancelled(), 0, "the slow attempt was not dropped");
}

#[tokio::test(start_paused = true)]
async fn hedge_wins_count_only_hedges_in_later_rounds() {
    // until_deadline of parallel rounds: round 1 fails fast; round 2's first attempt wins.
    let backend = Backend::default();
    let layer = StrategyLayer::new()
        .budget(None)
        .strategy(Strategy::until_deadline(
            Strategy::parallel(2, Delays::constant(ms(1_000))),
            Delays::constant(ms(10)),
        ));
    let svc = layer.layer(backend.service(vec![
        Answer(0, 503, &[]),
        Answer(0, 503, &[]),
        Answer(0, 200, &[]),
    ]));
    let mut request = get();
    request
        .extensions_mut()
        .insert(Deadline::after(Duration::from_secs(5)));
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        layer.stats().snapshot().hedge_wins,
        0,
        "a round's first attempt is no hedge"
    );
}

#[tokio::test(start_paused = true)]
async fn a_finished_response_future_polled_again_answers_an_error_not_a_panic() {
    use std::future::Future;
    use tower::Service;
    for strategy in [
        Strategy::single(),
        Strategy::sequential(3, Delays::constant(ms(1))),
    ] {
        let backend = Backend::default();
        let mut svc = StrategyLayer::new()
            .strategy(strategy)
            .layer(backend.service(vec![Answer(0, 200, &[])]));
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        let mut future = Box::pin(svc.call(get()));
        assert!((&mut future).await.is_ok());
        let again =
            std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
        assert!(matches!(again, std::task::Poll::Ready(Err(_))));
    }
}
