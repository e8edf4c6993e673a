//! The circuit breaker and the retry budget under contention on a multi-threaded runtime: never
//! more than one half-open probe, and no count lost between racing threads.
//!
//! loom is not used: the breaker's state word and the budget's balance are plain atomics whose
//! every update is a single compare-and-swap or fetch-add, and loom would need the whole
//! breaker built against its own atomic types. These tests race real threads instead, over many
//! rounds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};
use tower_lifeline::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerSettings, CircuitState};
use tower_lifeline::strategy::RetryBudget;

const SCOPE: &str = "http://backend:8080";

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits, a bounded number of times, until `done` holds; `false` if it never did.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// One call's status, as a future that owns its clone of the client.
fn call<S, B>(client: &S) -> impl std::future::Future<Output = StatusCode> + Send + 'static
where
    S: tower::Service<Request<()>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let client = client.clone();
    async move {
        client
            .oneshot(Request::get(format!("{SCOPE}/")).body(()).unwrap())
            .await
            .unwrap()
            .status()
    }
}

#[test]
fn over_many_rounds_of_trip_break_and_burst_exactly_one_probe_goes_each_time() {
    const ROUNDS: usize = 60;
    const CALLERS: usize = 32;
    let rt = multi_thread();
    rt.block_on(async {
        let failing = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let probing = Arc::new(AtomicBool::new(false));
        let release = Arc::new(Notify::new());
        let inner = tower::service_fn({
            let (failing, hits, probing, release) = (
                failing.clone(),
                hits.clone(),
                probing.clone(),
                release.clone(),
            );
            move |_req: Request<()>| {
                let (failing, hits, probing, release) = (
                    failing.clone(),
                    hits.clone(),
                    probing.clone(),
                    release.clone(),
                );
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    if probing.load(Ordering::SeqCst) {
                        // A probe holds its slot until every other caller of the burst is answered.
                        release.notified().await;
                    }
                    let mut response = Response::new(String::new());
                    if failing.load(Ordering::SeqCst) {
                        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            }
        });
        let layer = CircuitBreakerLayer::new(
            CircuitBreakerSettings::builder()
                .failure_threshold(0.5)
                .minimum_throughput(1_000_000)
                .consecutive_failures(2)
                .sampling_duration(Duration::from_secs(60))
                .break_duration(Duration::from_millis(5))
                .build()
                .unwrap(),
        )
        .respond_502();
        let registry = layer.registry();
        let client = layer.layer(inner);

        for round in 0..ROUNDS {
            // Trip: two failures in a row (a round whose probe failed left it open already).
            failing.store(true, Ordering::SeqCst);
            probing.store(false, Ordering::SeqCst);
            while registry.state(SCOPE) != Some(CircuitState::Open) {
                call(&client).await;
            }
            tokio::time::sleep(Duration::from_millis(8)).await;

            // Burst after the break; even rounds' probe succeeds, odd rounds' fails.
            failing.store(round % 2 == 1, Ordering::SeqCst);
            probing.store(true, Ordering::SeqCst);
            let before = hits.load(Ordering::SeqCst);
            let refused = Arc::new(AtomicUsize::new(0));
            let mut callers = tokio::task::JoinSet::new();
            for _ in 0..CALLERS {
                let (future, refused) = (call(&client), refused.clone());
                callers.spawn(async move {
                    let status = future.await;
                    if status == StatusCode::BAD_GATEWAY {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    status
                });
            }
            let all_others_refused =
                eventually(|| refused.load(Ordering::SeqCst) == CALLERS - 1).await;
            let probes = hits.load(Ordering::SeqCst) - before;
            release.notify_waiters();
            probing.store(false, Ordering::SeqCst);
            // Wake any second probe too, so that a failure here reports instead of hanging.
            while callers.join_next().await.is_some() {
                release.notify_waiters();
            }
            assert!(
                all_others_refused && probes == 1,
                "round {round}: {probes} probe(s), {} refused of {CALLERS}",
                refused.load(Ordering::SeqCst)
            );
            let expected = if round % 2 == 0 {
                CircuitState::Closed
            } else {
                CircuitState::Open
            };
            assert_eq!(registry.state(SCOPE), Some(expected), "round {round}");
        }
    });
}

#[test]
fn racing_callers_lose_no_outcome_in_the_window() {
    const TASKS: usize = 8;
    const CALLS: usize = 500;
    let rt = multi_thread();
    rt.block_on(async {
        let inner = tower::service_fn(|req: Request<()>| async move {
            let mut response = Response::new(String::new());
            if req.uri().path() == "/fail" {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            tokio::task::yield_now().await;
            Ok::<_, std::convert::Infallible>(response)
        });
        let layer = CircuitBreakerLayer::new(
            CircuitBreakerSettings::builder()
                .failure_threshold(0.99)
                .minimum_throughput(1_000_000)
                .sampling_duration(Duration::from_secs(600))
                .build()
                .unwrap(),
        )
        .respond_502();
        let registry = layer.registry();
        let client = layer.layer(inner);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let client = client.clone();
            tasks.spawn(async move {
                for i in 0..CALLS {
                    let path = if i % 3 == 0 { "/fail" } else { "/ok" };
                    let request = Request::get(format!("{SCOPE}{path}")).body(()).unwrap();
                    client.clone().oneshot(request).await.unwrap();
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let snapshot = registry
            .snapshot()
            .into_iter()
            .find(|s| s.scope == SCOPE)
            .unwrap();
        let failures = TASKS * CALLS.div_ceil(3);
        assert_eq!(snapshot.state, CircuitState::Closed);
        assert_eq!(snapshot.requests, (TASKS * CALLS) as u64);
        assert_eq!(snapshot.failures, failures as u64);
    });
}

#[test]
fn racing_threads_lose_no_token_and_no_refusal_in_the_budget() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 20_000;
    let budget = Arc::new(RetryBudget::new(0.5, 0).unwrap().with_cap(u32::MAX));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let budget = budget.clone();
            std::thread::spawn(move || {
                let mut granted = 0u64;
                for _ in 0..ROUNDS {
                    budget.deposit();
                    if budget.try_withdraw() {
                        granted += 1;
                    }
                }
                granted
            })
        })
        .collect();
    let granted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let attempts = (THREADS * ROUNDS) as u64;
    // Each deposit is half a token: every whole token deposited was taken or is still there.
    assert_eq!(granted + budget.refused(), attempts);
    assert_eq!(granted + budget.balance(), attempts / 2);
    assert!(granted > 0 && budget.refused() > 0);
}
