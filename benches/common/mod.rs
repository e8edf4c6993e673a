//! The services measured by the `overhead` and `allocations` benches: each layer of ours over a
//! no-op inner service, the full client and server stacks, and the peers, all on the same
//! request and the same no-op service so the figures compare.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_lifeline::circuit_breaker::{CircuitBreakerLayer, CircuitBreakerSettings};
use tower_lifeline::deadline::{ClientDeadlineLayer, ServerDeadlineLayer};
use tower_lifeline::load_shed::LoadShedLayer;
use tower_lifeline::metrics::{ClientMetrics, MetricsConfig, ServerMetrics};
use tower_lifeline::priority::ServerPriorityLayer;
use tower_lifeline::propagation::PropagateLayer;
use tower_lifeline::shutdown::Shutdown;
use tower_lifeline::strategy::{Delays, Strategy, StrategyLayer};
use tower_lifeline::timeout::{AttemptTimeoutLayer, ServerTimeoutLayer};

/// The request every case gets: a GET with a caller's deadline and priority, as a server sees
/// it and as a client sends it.
pub type Req = Request<Full<Bytes>>;

pub fn request() -> Req {
    Request::builder()
        .uri("http://127.0.0.1:3000/hello")
        .header("x-request-timeout", "5")
        .header("x-request-priority", "high")
        .body(Full::default())
        .expect("a valid request")
}

/// The no-op inner service: answers `200` with an empty body at once, for any request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Full::default())))
    }
}

/// An inner service that fails every call: trips the breakers for the refused-call cases.
#[derive(Debug, Clone, Copy, Default)]
pub struct Failing;

impl<B> Service<Request<B>> for Failing {
    type Response = Response<Full<Bytes>>;
    type Error = std::io::Error;
    type Future = Ready<Result<Self::Response, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Err(std::io::Error::other("backend down")))
    }
}

/// Receives each case, generic so that no case is boxed for the measurement.
pub trait Visitor {
    fn visit<S, B>(&mut self, group: &str, name: &str, service: S)
    where
        S: Service<Req, Response = Response<B>> + 'static,
        S::Error: std::fmt::Debug;
}

/// One call's outcome: the status, or the error's text.
pub async fn call_once<S, B>(service: &mut S) -> Result<u16, String>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let ready = service.ready().await.map_err(|e| format!("{e:?}"))?;
    let response = ready.call(request()).await.map_err(|e| format!("{e:?}"))?;
    Ok(response.status().as_u16())
}

/// Checks once that a case behaves as its group says: `200`, or refused in the group
/// `refused`. A bench never times a refusal by mistake, nor a success.
pub async fn check_once<S, B>(group: &str, name: &str, service: &mut S)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let outcome = call_once(service).await;
    if group == "refused" {
        assert!(outcome != Ok(200), "{name} must refuse, got {outcome:?}");
    } else {
        assert_eq!(outcome, Ok(200), "{name} must answer 200 on its happy path");
    }
}

/// Calls `service` until it is open (refuses without calling the failing inner service).
fn tripped<S>(mut service: S) -> S
where
    S: Service<Req>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        for _ in 0..20 {
            if let Ok(ready) = service.ready().await {
                let _ = ready.call(request()).await;
            }
        }
    });
    service
}

/// `tower::retry` with a policy that retries errors up to 3 attempts (the happy path never does).
#[derive(Debug, Clone)]
pub struct RetryErrors(pub u32);

impl<Res, E> tower::retry::Policy<Req, Res, E> for RetryErrors {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if result.is_err() && self.0 > 1 {
            self.0 -= 1;
            Some(ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// `tower::hedge`'s policy: every request may be hedged.
#[derive(Debug, Clone)]
pub struct HedgeAll;

impl tower::hedge::Policy<Req> for HedgeAll {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn can_retry(&self, _: &Req) -> bool {
        true
    }
}

fn server_metrics() -> ServerMetrics {
    ServerMetrics::register(&prometheus::Registry::new(), MetricsConfig::default())
        .expect("fresh registry")
}

fn client_metrics() -> ClientMetrics {
    ClientMetrics::register(&prometheus::Registry::new(), MetricsConfig::default())
        .expect("fresh registry")
}

fn propagate() -> PropagateLayer {
    PropagateLayer::new().service_name(tower_lifeline::propagation::ServiceName::from_static(
        "bench",
    ))
}

/// The client stack as the `Client` preset builds it (src/client/builder.rs), over the no-op transport.
pub fn client_stack(
    strategy: StrategyLayer,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = tower_lifeline::BoxError> + Clone {
    let metrics = client_metrics();
    ServiceBuilder::new()
        .layer(metrics.call_layer())
        .layer(ClientDeadlineLayer::new().write_header(false))
        .layer(strategy)
        .layer(CircuitBreakerLayer::new(CircuitBreakerSettings::default()).return_error())
        .layer(metrics.attempt_layer())
        .layer(propagate())
        .service(Noop)
}

pub type ServerStack<S> = tower_lifeline::shutdown::Drain<
    tower_lifeline::metrics::ServerMetricsService<
        tower_lifeline::deadline::ServerDeadline<
            tower_lifeline::priority::ServerPriority<tower_lifeline::load_shed::LoadShed<S>>,
        >,
    >,
>;

/// The server stack in the `Server` preset's order (src/server.rs): drain, metrics, deadline,
/// priority, load shedding.
pub fn server_stack<S>(inner: S, shutdown: &Shutdown) -> ServerStack<S> {
    ServiceBuilder::new()
        .layer(shutdown.layer())
        .layer(server_metrics().layer())
        .layer(ServerDeadlineLayer::new())
        .layer(ServerPriorityLayer::new())
        .layer(LoadShedLayer::new(256))
        .service(inner)
}

/// Every case, in the order the tables list them.
pub fn each_case<V: Visitor>(v: &mut V) {
    v.visit("baseline", "bare no-op service", Noop);

    // Server layers.
    v.visit(
        "server",
        "ours: server deadline",
        ServerDeadlineLayer::new().layer(Noop),
    );
    v.visit(
        "server",
        "ours: server priority",
        ServerPriorityLayer::new().layer(Noop),
    );
    v.visit(
        "server",
        "ours: load shedding",
        LoadShedLayer::new(256).layer(Noop),
    );
    let shutdown = Shutdown::new();
    v.visit("server", "ours: drain", shutdown.layer().layer(Noop));
    v.visit(
        "server",
        "ours: server timeout",
        ServerTimeoutLayer::new(Duration::from_secs(30)).layer(Noop),
    );
    v.visit(
        "server",
        "ours: server metrics",
        server_metrics().layer().layer(Noop),
    );

    // Client layers.
    v.visit(
        "client",
        "ours: client deadline",
        ClientDeadlineLayer::new().layer(Noop),
    );
    v.visit("client", "ours: propagation", propagate().layer(Noop));
    v.visit(
        "client",
        "ours: client metrics (call)",
        client_metrics().call_layer().layer(Noop),
    );

    // Timeouts.
    v.visit(
        "timeout",
        "ours: attempt timeout",
        AttemptTimeoutLayer::new(Duration::from_secs(30)).layer(Noop),
    );
    v.visit(
        "timeout",
        "tower::timeout",
        tower::timeout::TimeoutLayer::new(Duration::from_secs(30)).layer(Noop),
    );

    // Retries: three attempts, the first succeeds.
    v.visit(
        "retry",
        "ours: strategy single",
        StrategyLayer::new()
            .strategy(Strategy::single())
            .layer(Noop),
    );
    v.visit(
        "retry",
        "ours: strategy sequential x3 + budget",
        StrategyLayer::new().layer(Noop),
    );
    v.visit(
        "retry",
        "ours: strategy sequential x3, no budget",
        StrategyLayer::new().budget(None).layer(Noop),
    );
    v.visit(
        "retry",
        "tower::retry x3",
        tower::retry::RetryLayer::new(RetryErrors(3)).layer(Noop),
    );
    v.visit(
        "retry",
        "tower-resilience retry x3",
        tower_resilience::retry::RetryLayer::<Req, Response<Full<Bytes>>, Infallible>::builder()
            .max_attempts(3)
            .exponential_backoff(Duration::from_millis(50))
            .build()
            .layer(Noop),
    );

    // Hedging: a second attempt after 10 ms; the first answers at once.
    v.visit(
        "hedge",
        "ours: strategy parallel x2",
        StrategyLayer::new()
            .strategy(Strategy::parallel(
                2,
                Delays::constant(Duration::from_millis(10)),
            ))
            .layer(Noop),
    );
    v.visit(
        "hedge",
        "tower::hedge",
        tower::hedge::Hedge::new::<Req>(Noop, HedgeAll, 10, 0.9, Duration::from_secs(10)),
    );

    // Circuit breakers: closed, every call succeeds.
    v.visit(
        "breaker",
        "ours: circuit breaker (per destination)",
        CircuitBreakerLayer::new(CircuitBreakerSettings::default())
            .return_error()
            .layer(Noop),
    );
    v.visit(
        "breaker",
        "tower-resilience circuit breaker",
        tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
            .failure_rate_threshold(0.5)
            .sliding_window_size(100)
            .build()
            .expect("valid breaker")
            .layer(Noop),
    );

    // Open breakers: the backend failed, the breaker refuses without calling it.
    let settings = CircuitBreakerSettings::builder()
        .consecutive_failures(5)
        .break_duration(Duration::from_secs(3600))
        .build()
        .expect("valid settings");
    v.visit(
        "refused",
        "ours: open circuit breaker",
        tripped(
            CircuitBreakerLayer::new(settings)
                .return_error()
                .layer(Failing),
        ),
    );
    v.visit(
        "refused",
        "tower-resilience open circuit breaker",
        tripped(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window_size(10)
                .minimum_number_of_calls(5)
                .wait_duration_in_open(Duration::from_secs(3600))
                .build()
                .expect("valid breaker")
                .layer(Failing),
        ),
    );

    // Whole stacks.
    v.visit(
        "stack",
        "ours: full client stack",
        client_stack(StrategyLayer::new()),
    );
    v.visit(
        "stack",
        "ours: full server stack",
        server_stack(Noop, &shutdown),
    );

    // Routers, as `axum::serve` runs them: the bare app, and the same app in the `Server`
    // preset (its layers on each route, the probes and `/metrics` beside it, routing included).
    v.visit(
        "router",
        "bare axum router",
        hello_app().with_state::<()>(()),
    );
    v.visit(
        "router",
        "ours: Server preset router",
        tower_lifeline::server::Server::builder()
            .registry(tower_lifeline::prometheus::Registry::new())
            .build(hello_app())
            .expect("server preset")
            .router()
            .with_state::<()>(()),
    );
}

/// The app of the router cases: `GET /hello` answers "hello".
pub fn hello_app() -> axum::Router {
    axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }))
}
