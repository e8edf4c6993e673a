use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::error::BoxError;
use crate::headers::{X_CIRCUIT_BREAKER, X_DO_NOT_RETRY};
use crate::test_util::ReadinessChecked;

const HOST: &str = "http://backend:8080";

type Handled = std::pin::Pin<Box<dyn Future<Output = Response<String>> + Send>>;
type Handler = fn(Request<()>) -> Handled;
type Breaker<M = Respond502> =
    CircuitBreaker<ReadinessChecked<Handler>, crate::classify::DefaultClassifier, ByDestination, M>;

/// Answers 500 to a request carrying `x-fail`, 200 otherwise, after `x-wait` milliseconds.
fn backend(req: Request<()>) -> Handled {
    let wait = req
        .headers()
        .get("x-wait")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fail = req.headers().contains_key("x-fail");
    Box::pin(async move {
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let mut response = Response::new(String::new());
        if fail {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    })
}

fn request_to(host: &str, fail: bool) -> Request<()> {
    let mut builder = Request::get(format!("{host}/path"));
    if fail {
        builder = builder.header("x-fail", "1");
    }
    builder.body(()).unwrap()
}

fn request(fail: bool) -> Request<()> {
    request_to(HOST, fail)
}

/// Threshold 0.5, minimum throughput 4, 10 s in 10 buckets, 5 s break.
fn settings() -> CircuitBreakerSettingsBuilder {
    CircuitBreakerSettings::builder()
        .failure_threshold(0.5)
        .minimum_throughput(4)
        .sampling_duration(Duration::from_secs(10))
        .windows_count(10)
        .break_duration(Duration::from_secs(5))
}

fn breaker(
    settings: CircuitBreakerSettingsBuilder,
) -> (Breaker, Arc<AtomicUsize>, BreakerRegistry) {
    let layer = CircuitBreakerLayer::new(settings.build().unwrap()).respond_502();
    let inner = ReadinessChecked::new(backend as Handler);
    let calls = inner.calls.clone();
    let registry = layer.registry();
    (layer.layer(inner), calls, registry)
}

async fn call<S>(svc: &mut S, fail: bool) -> Result<Response<String>, BoxError>
where
    S: Service<Request<()>, Response = Response<String>, Error = BoxError>,
{
    svc.ready().await?.call(request(fail)).await
}

async fn status<S>(svc: &mut S, fail: bool) -> StatusCode
where
    S: Service<Request<()>, Response = Response<String>, Error = BoxError>,
{
    call(svc, fail).await.unwrap().status()
}

/// Fails calls until the breaker of `HOST` opens (4 failures with the test settings).
async fn trip(svc: &mut Breaker, registry: &BreakerRegistry) {
    for _ in 0..4 {
        assert_eq!(status(svc, true).await, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
}

/// Polls a future once, reporting whether it finished without waiting.
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut fut = std::pin::pin!(fut);
    fut.as_mut().poll(&mut Context::from_waker(&waker))
}

#[test]
fn settings_out_of_range_are_refused() {
    let base = CircuitBreakerSettings::builder;
    let table = [
        (base().failure_threshold(0.0), "failure_threshold"),
        (base().failure_threshold(1.0), "failure_threshold"),
        (base().failure_threshold(-0.5), "failure_threshold"),
        (base().failure_threshold(f64::NAN), "failure_threshold"),
        (base().minimum_throughput(0), "minimum_throughput"),
        (base().windows_count(0), "windows_count"),
        (base().windows_count(1001), "windows_count"),
        (
            base().sampling_duration(Duration::ZERO),
            "sampling_duration",
        ),
        (
            base().sampling_duration(Duration::from_millis(5)),
            "sampling_duration",
        ),
        (
            base().sampling_duration(Duration::from_secs(86_401)),
            "sampling_duration",
        ),
        (base().break_duration(Duration::ZERO), "break_duration"),
        (
            base().break_duration(Duration::from_secs(86_401)),
            "break_duration",
        ),
        (base().consecutive_failures(0), "consecutive_failures"),
        (base().max_scopes(0), "max_scopes"),
        (base().idle_timeout(Duration::ZERO), "idle_timeout"),
    ];
    for (builder, setting) in table {
        let err = builder.build().unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
        assert!(err.to_string().contains(setting));
    }
    assert_eq!(base().build().unwrap(), CircuitBreakerSettings::default());
}

#[tokio::test(start_paused = true)]
async fn trips_at_the_threshold() {
    let (mut svc, _, registry) = breaker(settings());
    // 2 failures in 4 requests: exactly the 0.5 threshold, at the minimum throughput.
    for fail in [false, true, false] {
        status(&mut svc, fail).await;
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    status(&mut svc, true).await;
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_threshold() {
    let (mut svc, _, registry) = breaker(settings());
    // 3 failures in 7 requests is under half.
    for fail in [false, false, false, false, true, true, true] {
        status(&mut svc, fail).await;
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_minimum_throughput() {
    let (mut svc, _, registry) = breaker(settings().minimum_throughput(10));
    for _ in 0..9 {
        status(&mut svc, true).await;
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    status(&mut svc, true).await;
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
}

#[tokio::test(start_paused = true)]
async fn old_failures_roll_out_of_the_window() {
    let (mut svc, _, registry) = breaker(settings());
    for _ in 0..3 {
        status(&mut svc, true).await;
    }
    // Still in the window 9 s later (its last bucket)...
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(registry.snapshot()[0].failures, 3);
    // ...gone once the whole sampling duration has passed.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(registry.snapshot()[0].requests, 0);
    for _ in 0..3 {
        status(&mut svc, true).await;
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    let snapshot = &registry.snapshot()[0];
    assert_eq!((snapshot.requests, snapshot.failures), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn open_answers_502_at_once_without_calling_the_inner_service() {
    let (mut svc, calls, registry) = breaker(settings());
    trip(&mut svc, &registry).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    for _ in 0..10 {
        let ready = svc.ready().await.unwrap();
        let Poll::Ready(Ok(response)) = poll_once(ready.call(request(false))) else {
            panic!("an open breaker must answer on the first poll");
        };
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[X_CIRCUIT_BREAKER], "1");
        assert_eq!(response.headers()[X_DO_NOT_RETRY], "1");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "inner service never called"
    );
}

#[tokio::test(start_paused = true)]
async fn open_returns_a_typed_error_naming_the_scope_and_the_next_probe() {
    let layer = CircuitBreakerLayer::new(settings().build().unwrap()).return_error();
    let registry = layer.registry();
    let inner = ReadinessChecked::new(backend as Handler);
    let calls = inner.calls.clone();
    let mut svc = layer.layer(inner);
    for _ in 0..4 {
        status(&mut svc, true).await;
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    let err = call(&mut svc, false).await.unwrap_err();
    let open = crate::error::find_source::<CircuitOpen>(err.as_ref()).unwrap();
    assert_eq!(open.scope(), HOST);
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.next_probe_in(), Some(Duration::from_secs(3)));
    assert_eq!(
        registry.snapshot()[0].next_probe_at,
        open.next_probe_at(),
        "the snapshot and the error agree"
    );
    assert!(open.to_string().contains(HOST));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn of_100_concurrent_callers_after_the_break_exactly_one_probes() {
    let (mut svc, calls, registry) = breaker(settings());
    trip(&mut svc, &registry).await;
    tokio::time::advance(Duration::from_secs(5)).await;

    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let svc = svc.clone();
        // Every call takes 100 ms, so the probe is still in flight while the others arrive.
        let request = Request::get(format!("{HOST}/"))
            .header("x-wait", "100")
            .body(())
            .unwrap();
        callers.spawn(svc.oneshot(request));
    }
    let mut statuses = BTreeMap::new();
    while let Some(status) = callers.join_next().await {
        let status = status.unwrap().unwrap().status();
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 1), (502, 99)]));
    assert_eq!(calls.load(Ordering::SeqCst), 4 + 1);
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn probe_success_closes_with_a_fresh_window() {
    let (mut svc, calls, registry) = breaker(settings());
    trip(&mut svc, &registry).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(status(&mut svc, false).await, StatusCode::OK);
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    let snapshot = &registry.snapshot()[0];
    assert_eq!((snapshot.requests, snapshot.failures), (0, 0));
    // The four failures before the break are gone: three more do not reach the throughput.
    for _ in 0..3 {
        assert_eq!(
            status(&mut svc, true).await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    assert_eq!(calls.load(Ordering::SeqCst), 4 + 1 + 3);
}

#[tokio::test(start_paused = true)]
async fn probe_failure_opens_for_another_break() {
    let (mut svc, calls, registry) = breaker(settings());
    trip(&mut svc, &registry).await;
    // Just before the break ends: still refused.
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(status(&mut svc, false).await, StatusCode::BAD_GATEWAY);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        status(&mut svc, true).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(status(&mut svc, false).await, StatusCode::BAD_GATEWAY);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(status(&mut svc, false).await, StatusCode::OK);
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    assert_eq!(calls.load(Ordering::SeqCst), 4 + 2);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_the_slot_for_the_next_caller() {
    let (mut svc, calls, registry) = breaker(settings());
    trip(&mut svc, &registry).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let probe = svc.ready().await.unwrap().call(request(false));
    assert_eq!(registry.state(HOST), Some(CircuitState::HalfOpen));
    assert_eq!(status(&mut svc, false).await, StatusCode::BAD_GATEWAY);
    drop(probe);
    assert_eq!(status(&mut svc, false).await, StatusCode::OK);
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    assert_eq!(calls.load(Ordering::SeqCst), 4 + 2);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_below_the_minimum_throughput() {
    let (mut svc, _, registry) =
        breaker(settings().minimum_throughput(1000).consecutive_failures(5));
    for _ in 0..4 {
        status(&mut svc, true).await;
    }
    // A success breaks the run.
    status(&mut svc, false).await;
    for _ in 0..4 {
        status(&mut svc, true).await;
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    assert_eq!(registry.snapshot()[0].consecutive_failures, 4);
    status(&mut svc, true).await;
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
}

#[tokio::test(start_paused = true)]
async fn transport_errors_count_as_failures() {
    let layer = CircuitBreakerLayer::new(settings().build().unwrap()).respond_502();
    let registry = layer.registry();
    let inner = tower::service_fn(|_req: Request<()>| async {
        Err::<Response<String>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    });
    let mut svc = layer.layer(inner);
    for _ in 0..4 {
        assert!(call(&mut svc, false).await.is_err());
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
    assert_eq!(status(&mut svc, false).await, StatusCode::BAD_GATEWAY);
}

#[tokio::test(start_paused = true)]
async fn do_not_retry_responses_are_not_failures() {
    let layer = CircuitBreakerLayer::new(settings().build().unwrap()).respond_502();
    let registry = layer.registry();
    let inner = tower::service_fn(|_req: Request<()>| async {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(X_DO_NOT_RETRY, crate::headers::FLAG_SET);
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut svc = layer.layer(inner);
    for _ in 0..10 {
        assert_eq!(
            status(&mut svc, false).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    assert_eq!(registry.snapshot()[0].failures, 0);
}

#[tokio::test(start_paused = true)]
async fn destinations_have_separate_breakers() {
    let (svc, calls, registry) = breaker(settings());
    for _ in 0..4 {
        svc.clone()
            .oneshot(request_to("http://sick:1", true))
            .await
            .unwrap();
    }
    assert_eq!(registry.state("http://sick:1"), Some(CircuitState::Open));
    let healthy = svc
        .clone()
        .oneshot(request_to("http://healthy:1", false))
        .await
        .unwrap();
    assert_eq!(healthy.status(), StatusCode::OK);
    let sick = svc
        .oneshot(request_to("http://sick:1", false))
        .await
        .unwrap();
    assert_eq!(sick.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(
        registry.state("http://healthy:1"),
        Some(CircuitState::Closed)
    );
    assert_eq!(registry.state("http://never:1"), None);
}

#[test]
fn the_default_scope_is_scheme_and_authority() {
    let scope = |req: Request<()>| {
        let mut scope = String::new();
        ByDestination.scope(&req, &mut scope);
        scope
    };
    let table = [
        (
            Request::get("https://api.example.com/a?b=c"),
            "https://api.example.com",
        ),
        (
            Request::get("http://10.0.0.1:8080/"),
            "http://10.0.0.1:8080",
        ),
        (
            Request::get("/relative").header("host", "svc:81"),
            "http://svc:81",
        ),
        (Request::get("/relative"), ""),
    ];
    for (builder, expected) in table {
        assert_eq!(scope(builder.body(()).unwrap()), expected);
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_function_chooses_the_scope() {
    let layer = CircuitBreakerLayer::new(settings().build().unwrap())
        .respond_502()
        .scope_by(|req: &Request<()>, scope: &mut String| scope.push_str(req.uri().path()));
    let registry = layer.registry();
    let mut svc = layer.layer(ReadinessChecked::new(backend as Handler));
    for _ in 0..4 {
        status(&mut svc, true).await;
    }
    assert_eq!(registry.state("/path"), Some(CircuitState::Open));
    assert_eq!(registry.state(HOST), None);
}

#[tokio::test(start_paused = true)]
async fn the_scope_table_is_bounded() {
    let (svc, calls, registry) = breaker(settings().max_scopes(64));
    for i in 0..1000 {
        let response = svc
            .clone()
            .oneshot(request_to(&format!("http://host-{i}:80"), false))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(registry.len() <= 64);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1000);
    // Every shard filled up and evicted: the table is at its bound exactly.
    assert_eq!(registry.len(), 64);
}

#[tokio::test(start_paused = true)]
async fn a_full_table_evicts_the_least_recently_used_and_tells_listeners() {
    let forgotten = Arc::new(Mutex::new(Vec::new()));
    struct Forgets(Arc<Mutex<Vec<String>>>);
    impl OnTransition for Forgets {
        fn on_transition(&self, _: &Transition<'_>) {}
        fn on_forget(&self, scope: &str) {
            self.0.lock().unwrap().push(scope.to_owned());
        }
    }
    let layer = CircuitBreakerLayer::new(settings().max_scopes(1).build().unwrap())
        .respond_502()
        .on_transition(Forgets(forgotten.clone()));
    let registry = layer.registry();
    let mut svc = layer.layer(ReadinessChecked::new(backend as Handler));
    for _ in 0..4 {
        status(&mut svc, true).await;
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
    svc.ready()
        .await
        .unwrap()
        .call(request_to("http://other:1", false))
        .await
        .unwrap();
    assert_eq!(registry.state(HOST), None);
    assert_eq!(registry.len(), 1);
    assert_eq!(*forgotten.lock().unwrap(), [HOST]);
    // The service's cached scope was forgotten with it: HOST starts over, closed.
    assert_eq!(status(&mut svc, false).await, StatusCode::OK);
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn idle_scopes_are_forgotten() {
    let (svc, _, registry) = breaker(settings().idle_timeout(Duration::from_secs(60)));
    for i in 0..10 {
        svc.clone()
            .oneshot(request_to(&format!("http://idle-{i}:80"), false))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(59)).await;
    svc.clone()
        .oneshot(request_to("http://busy:80", false))
        .await
        .unwrap();
    registry.forget_idle();
    assert_eq!(registry.len(), 11, "not idle for a whole minute yet");
    tokio::time::advance(Duration::from_secs(1)).await;
    registry.forget_idle();
    let left: Vec<String> = registry.snapshot().into_iter().map(|s| s.scope).collect();
    assert_eq!(left, ["http://busy:80"]);
}

#[tokio::test(start_paused = true)]
async fn every_transition_reaches_the_listeners() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = CircuitBreakerLayer::new(settings().build().unwrap())
        .respond_502()
        .on_transition({
            let seen = seen.clone();
            move |t: &Transition<'_>| {
                seen.lock().unwrap().push((
                    t.scope.to_owned(),
                    t.from,
                    t.to,
                    t.failure_ratio,
                    t.requests,
                ))
            }
        });
    let registry = layer.registry();
    let mut svc = layer.layer(ReadinessChecked::new(backend as Handler));
    trip(&mut svc, &registry).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    status(&mut svc, true).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    status(&mut svc, false).await;

    use CircuitState::*;
    let seen = seen.lock().unwrap();
    let steps: Vec<_> = seen
        .iter()
        .map(|(_, from, to, _, _)| (*from, *to))
        .collect();
    assert_eq!(
        steps,
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed)
        ]
    );
    assert!(seen.iter().all(|(scope, ..)| scope == HOST));
    assert_eq!(
        (seen[0].3, seen[0].4),
        (1.0, 4),
        "4 failures of 4 requests tripped it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_call_leaves_the_inner_service_ready_for_the_next() {
    let (mut svc, calls, registry) = breaker(settings());
    trip(&mut svc, &registry).await;
    // Readied once, refused, then the breaker closes: the next call reuses that readiness,
    // and ReadinessChecked would panic if the contract were broken.
    let ready = svc.ready().await.unwrap();
    assert_eq!(
        ready.call(request(false)).await.unwrap().status(),
        StatusCode::BAD_GATEWAY
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        svc.call(request(false)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

// The reference model: the behaviour of one scope, written as plainly as possible, with time in
// whole milliseconds and the window as a map from bucket epoch to (requests, failures).

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed,
    Open { probe_from_ms: u64 },
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
struct ModelTicket {
    generation: u64,
    probe: bool,
}

struct Model {
    threshold: f64,
    minimum: u64,
    bucket_ms: u64,
    windows: u64,
    break_ms: u64,
    consecutive_limit: Option<u32>,
    state: ModelState,
    generation: u64,
    buckets: BTreeMap<u64, (u64, u64)>,
    consecutive: u32,
}

impl Model {
    fn window(&self, now_ms: u64) -> (u64, u64) {
        let epoch = now_ms / self.bucket_ms;
        self.buckets
            .iter()
            .filter(|(e, _)| **e + self.windows > epoch && **e <= epoch)
            .fold((0, 0), |(r, f), (_, (br, bf))| (r + br, f + bf))
    }

    fn admit(&mut self, now_ms: u64) -> Option<ModelTicket> {
        match self.state {
            ModelState::Closed => Some(ModelTicket {
                generation: self.generation,
                probe: false,
            }),
            ModelState::Open { probe_from_ms } if now_ms >= probe_from_ms => {
                self.state = ModelState::HalfOpen;
                self.generation += 1;
                Some(ModelTicket {
                    generation: self.generation,
                    probe: true,
                })
            }
            _ => None,
        }
    }

    fn finish(&mut self, ticket: ModelTicket, failed: bool, now_ms: u64) {
        if ticket.generation != self.generation {
            return;
        }
        if ticket.probe {
            self.generation += 1;
            if failed {
                self.state = ModelState::Open {
                    probe_from_ms: now_ms + self.break_ms,
                };
            } else {
                self.state = ModelState::Closed;
                self.buckets.clear();
                self.consecutive = 0;
            }
            return;
        }
        let bucket = self.buckets.entry(now_ms / self.bucket_ms).or_default();
        bucket.0 += 1;
        bucket.1 += u64::from(failed);
        if !failed {
            self.consecutive = 0;
            return;
        }
        self.consecutive += 1;
        let (requests, failures) = self.window(now_ms);
        let by_ratio =
            requests >= self.minimum && failures as f64 >= self.threshold * requests as f64;
        let by_count = self
            .consecutive_limit
            .is_some_and(|n| self.consecutive >= n);
        if by_ratio || by_count {
            self.generation += 1;
            self.state = ModelState::Open {
                probe_from_ms: now_ms + self.break_ms,
            };
        }
    }

    fn circuit_state(&self) -> CircuitState {
        match self.state {
            ModelState::Closed => CircuitState::Closed,
            ModelState::Open { .. } => CircuitState::Open,
            ModelState::HalfOpen => CircuitState::HalfOpen,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Call {
        fail: bool,
    },
    Concurrent {
        callers: usize,
        fail: bool,
    },
    /// Lets a call in (or not) and leaves it running across the next operations.
    Start {
        fail: bool,
    },
    /// Ends the oldest running call.
    Finish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..3_000).prop_map(Op::Advance),
        5 => any::<bool>().prop_map(|fail| Op::Call { fail }),
        2 => (2usize..6, any::<bool>()).prop_map(|(callers, fail)| Op::Concurrent { callers, fail }),
        1 => any::<bool>().prop_map(|fail| Op::Start { fail }),
        1 => Just(Op::Finish),
    ]
}

async fn run_model(ops: Vec<Op>, consecutive_limit: Option<u32>, threshold: f64) {
    let mut builder = CircuitBreakerSettings::builder()
        .failure_threshold(threshold)
        .minimum_throughput(4)
        .sampling_duration(Duration::from_secs(1))
        .windows_count(4)
        .break_duration(Duration::from_secs(2));
    if let Some(limit) = consecutive_limit {
        builder = builder.consecutive_failures(limit);
    }
    let layer = CircuitBreakerLayer::new(builder.build().unwrap()).respond_502();
    let registry = layer.registry();
    let inner = ReadinessChecked::new(backend as Handler);
    let calls = inner.calls.clone();
    let mut svc = layer.layer(inner);
    let start = tokio::time::Instant::now();
    let mut model = Model {
        threshold,
        minimum: 4,
        bucket_ms: 250,
        windows: 4,
        break_ms: 2_000,
        consecutive_limit,
        state: ModelState::Closed,
        generation: 0,
        buckets: BTreeMap::new(),
        consecutive: 0,
    };
    let mut admitted = 0;
    let mut running = std::collections::VecDeque::new();
    for (step, op) in ops.into_iter().enumerate() {
        let now_ms = || u64::try_from(start.elapsed().as_millis()).unwrap();
        let (callers, fail) = match op {
            Op::Advance(ms) => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                (0, false)
            }
            Op::Call { fail } | Op::Start { fail } => (1, fail),
            Op::Concurrent { callers, fail } => (callers, fail),
            Op::Finish => (0, false),
        };
        // All callers are let in or refused before any of them ends.
        let mut pending = Vec::new();
        for _ in 0..callers {
            let ticket = model.admit(now_ms());
            admitted += usize::from(ticket.is_some());
            let future = svc.ready().await.unwrap().call(request(fail));
            pending.push((ticket, future, fail));
        }
        match op {
            Op::Start { .. } => running.extend(pending.drain(..)),
            Op::Finish => pending.extend(running.pop_front()),
            _ => {}
        }
        for (ticket, future, fail) in pending {
            let status = future.await.unwrap().status();
            match ticket {
                Some(ticket) => {
                    let expected = if fail { 500 } else { 200 };
                    assert_eq!(status.as_u16(), expected, "step {step}: let through");
                    model.finish(ticket, fail, now_ms());
                }
                None => assert_eq!(status, StatusCode::BAD_GATEWAY, "step {step}: refused"),
            }
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            admitted,
            "step {step}: {op:?}"
        );
        let state = registry.state(HOST).unwrap_or(CircuitState::Closed);
        assert_eq!(state, model.circuit_state(), "step {step}: {op:?}");
        if let Some(snapshot) = registry.snapshot().first() {
            let (requests, failures) = model.window(now_ms());
            assert_eq!(
                (snapshot.requests, snapshot.failures),
                (requests, failures),
                "step {step}: {op:?}"
            );
        }
    }
}

proptest! {
    // The regressions beside the others in proptest-regressions/: proptest's default puts them
    // beside the source file when it is not under src/, as the layers are not.
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/circuit_breaker/tests.txt",
            ),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn agrees_with_the_reference_model(
        ops in proptest::collection::vec(op(), 1..60),
        consecutive_limit in proptest::option::of(2u32..5),
        threshold in prop_oneof![Just(0.25), Just(0.5), Just(0.75)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run_model(ops, consecutive_limit, threshold));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_many_threads_exactly_one_probe_goes_after_the_break() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let inner = tower::service_fn({
        let (failing, hits, release) = (failing.clone(), hits.clone(), release.clone());
        move |_req: Request<()>| {
            let (failing, hits, release) = (failing.clone(), hits.clone(), release.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let mut response = Response::new(String::new());
                if failing.load(Ordering::SeqCst) {
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                } else {
                    // The probe holds its slot until every other caller has been answered.
                    release.notified().await;
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        }
    });
    let layer = CircuitBreakerLayer::new(
        settings()
            .break_duration(Duration::from_millis(5))
            .build()
            .unwrap(),
    )
    .respond_502();
    let registry = layer.registry();
    let svc = layer.layer(inner);
    for _ in 0..4 {
        svc.clone().oneshot(request(true)).await.unwrap();
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(10)).await;

    let start = Arc::new(tokio::sync::Barrier::new(100));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (svc, start) = (svc.clone(), start.clone());
        callers.spawn(async move {
            start.wait().await;
            svc.oneshot(request(false)).await
        });
    }
    let mut refused = 0;
    // A guard against a hang if a second caller got through, not a measure of speed.
    let collect = async {
        while let Some(result) = callers.join_next().await {
            let status = result.unwrap().unwrap().status();
            if status == StatusCode::BAD_GATEWAY {
                refused += 1;
                if refused == 99 {
                    release.notify_one();
                }
            } else {
                assert_eq!(status, StatusCode::OK);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .expect("the 99 refusals and the probe all finished");
    assert_eq!(refused, 99);
    assert_eq!(hits.load(Ordering::SeqCst), 4 + 1);
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_bucket_tag_coming_round_again_does_not_bring_old_failures_back() {
    // 1 ms buckets: the 24-bit bucket tags repeat every 2^24 ms (4.7 hours).
    let (mut svc, _, registry) = breaker(
        settings()
            .sampling_duration(Duration::from_millis(2))
            .windows_count(2)
            .idle_timeout(Duration::from_secs(24 * 3600)),
    );
    for _ in 0..3 {
        status(&mut svc, true).await;
    }
    tokio::time::advance(Duration::from_millis(1 << 24)).await;
    status(&mut svc, true).await;
    assert_eq!(registry.state(HOST), Some(CircuitState::Closed));
    let snapshot = &registry.snapshot()[0];
    assert_eq!((snapshot.requests, snapshot.failures), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_with_a_typed_error_by_default() {
    let layer = CircuitBreakerLayer::new(settings().build().unwrap());
    let registry = layer.registry();
    let mut svc = layer.layer(ReadinessChecked::new(backend as Handler));
    for _ in 0..4 {
        let response = call(&mut svc, true).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(registry.state(HOST), Some(CircuitState::Open));
    let err = call(&mut svc, false).await.unwrap_err();
    let open = err
        .downcast_ref::<CircuitOpen>()
        .expect("a CircuitOpen error");
    assert_eq!(open.scope(), HOST);
}
