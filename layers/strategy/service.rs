use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{Delays, LatencyKey, MethodStrategies, PercentileDelays, RetryBudget, Strategy};
use crate::body::{Replay, ReplayBody, DEFAULT_REPLAY_CAP};
use crate::classify::{Classify, DefaultClassifier};
use crate::outcome::Outcome;
// A delay of `Duration::MAX` is a fair way to say "never": instants are capped, not overflowed.
use crate::context::{instant_after, Deadline, DeadlineShare, RequestContext, RouteTemplate};
use crate::deadline::DeadlineExceeded;
use crate::error::BoxError;
use crate::headers;

/// How the deadline is shared between attempts.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AttemptDeadline {
    /// Each attempt may use all the time left (the default).
    #[default]
    PassThrough,
    /// aio-request's `split_deadline_between_attempts`: each attempt gets an equal share of
    /// what is left, so one slow attempt cannot use the time of those after it. The share is
    /// sent in `X-Request-Timeout` and enforced here; an attempt that runs out of its share is a
    /// failure that may be retried.
    Split,
    /// aio-request's `split_deadline_between_attempts(attempts_count_to_split=n)`: the deadline
    /// is split as by `Split` between the first `n` attempts only (at least 2), and the attempt
    /// `n` and later get all that is left.
    SplitFirst(u32),
}

/// aio-request's `connection_attempts`: one attempt may be sent three times in all when it never
/// reaches the server.
pub const DEFAULT_CONNECTION_ATTEMPTS: u32 = 3;

/// How many attempts a request took, in the extensions of a response that took more than one.
/// Absent on responses to the first attempt (so that they pay no allocation): read it as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCount(pub u32);

/// Counters of what the strategy layer did, shared by every service the layer made.
#[derive(Debug, Default)]
pub struct StrategyStats {
    requests: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
    hedge_wins: AtomicU64,
    budget_refusals: AtomicU64,
}

/// A copy of [`StrategyStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrategyStatsSnapshot {
    /// Requests that came through the layer.
    pub requests: u64,
    /// Sequential retries sent (and rounds of `until_deadline` after the first).
    pub retries: u64,
    /// Hedged attempts sent (parallel attempts after the first).
    pub hedges: u64,
    /// Requests won by a hedged attempt rather than the first.
    pub hedge_wins: u64,
    /// Extra attempts the retry budget refused.
    pub budget_refusals: u64,
}

impl StrategyStats {
    /// The counters now.
    pub fn snapshot(&self) -> StrategyStatsSnapshot {
        StrategyStatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            hedges: self.hedges.load(Ordering::Relaxed),
            hedge_wins: self.hedge_wins.load(Ordering::Relaxed),
            budget_refusals: self.budget_refusals.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone)]
struct Config<C> {
    methods: MethodStrategies,
    classifier: C,
    budget: Option<Arc<RetryBudget>>,
    max_retry_after: Duration,
    replay_cap: usize,
    attempt_deadline: AttemptDeadline,
    low_time_threshold: Duration,
    connection_attempts: u32,
    stats: Arc<StrategyStats>,
}

/// Sends each request with a [`Strategy`]: one attempt, sequential retries, or hedged attempts.
///
/// See the [module docs](super) for the behaviour and an example.
#[derive(Clone)]
pub struct StrategyLayer<C = DefaultClassifier> {
    config: Config<C>,
}

impl<C> fmt::Debug for StrategyLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrategyLayer")
            .field("methods", &self.config.methods)
            .field("budget", &self.config.budget)
            .field("max_retry_after", &self.config.max_retry_after)
            .field("replay_cap", &self.config.replay_cap)
            .field("attempt_deadline", &self.config.attempt_deadline)
            .finish_non_exhaustive()
    }
}

impl StrategyLayer {
    /// Defaults: strategies by method ([`MethodStrategies::new`]), aio-request's classification,
    /// a retry budget of 20% plus 10 a second, `Retry-After` honoured up to 30 s, bodies buffered
    /// for replay up to 64 KiB, each attempt given the whole deadline.
    pub fn new() -> Self {
        StrategyLayer {
            config: Config {
                methods: MethodStrategies::new(),
                classifier: DefaultClassifier::new(),
                budget: Some(Arc::new(
                    RetryBudget::new(0.2, 10).expect("the default budget is valid"),
                )),
                max_retry_after: Duration::from_secs(30),
                replay_cap: DEFAULT_REPLAY_CAP,
                attempt_deadline: AttemptDeadline::PassThrough,
                low_time_threshold: crate::deadline::DEFAULT_LOW_TIME_THRESHOLD,
                connection_attempts: DEFAULT_CONNECTION_ATTEMPTS,
                stats: Arc::default(),
            },
        }
    }
}

impl Default for StrategyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> StrategyLayer<C> {
    /// Every request gets `strategy` (still: never twice for a non-idempotent request without
    /// `Idempotency-Key`).
    pub fn strategy(self, strategy: Strategy) -> Self {
        let methods = MethodStrategies::new()
            .safe(strategy.clone())
            .idempotent(strategy.clone())
            .method(Method::PUT, strategy.clone())
            .method(Method::DELETE, strategy.clone())
            .method(Method::POST, strategy.clone())
            .method(Method::PATCH, strategy);
        self.methods(methods)
    }

    /// Strategies chosen by method.
    pub fn methods(mut self, methods: MethodStrategies) -> Self {
        self.config.methods = methods;
        self
    }

    /// Another classifier of responses and errors.
    pub fn classifier<C2>(self, classifier: C2) -> StrategyLayer<C2> {
        let c = self.config;
        StrategyLayer {
            config: Config {
                methods: c.methods,
                classifier,
                budget: c.budget,
                max_retry_after: c.max_retry_after,
                replay_cap: c.replay_cap,
                attempt_deadline: c.attempt_deadline,
                low_time_threshold: c.low_time_threshold,
                connection_attempts: c.connection_attempts,
                stats: c.stats,
            },
        }
    }

    /// The retry budget, shared by every request through this layer; `None` for no budget
    /// (not advised: a failing backend then sees every retry).
    pub fn budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.config.budget = budget.map(Arc::new);
        self
    }

    /// The longest `Retry-After` honoured (default 30 s); a longer one is cut to it.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// How much of a streaming body is buffered for replay (default 64 KiB).
    pub fn replay_cap(mut self, bytes: usize) -> Self {
        self.config.replay_cap = bytes;
        self
    }

    /// How attempts share the deadline (default [`AttemptDeadline::PassThrough`]).
    pub fn attempt_deadline(mut self, mode: AttemptDeadline) -> Self {
        self.config.attempt_deadline = mode;
        self
    }

    /// No extra attempt starts with less than this left before the deadline (default 5 ms).
    pub fn low_time_threshold(mut self, threshold: Duration) -> Self {
        self.config.low_time_threshold = threshold;
        self
    }

    /// How many times one attempt may be sent when it never reaches the server (connect refused,
    /// DNS, an HTTP/2 stream refused, no pooled connection in time): default 3, as aio-request's
    /// `connection_attempts`. These repeats are allowed for *any* method, a `POST` without
    /// `Idempotency-Key` included, since the server never saw the request; they still need time
    /// before the deadline and the retry budget. 1 turns them off; 0 is taken as 1.
    pub fn connection_attempts(mut self, attempts: u32) -> Self {
        self.config.connection_attempts = attempts.max(1);
        self
    }

    /// The layer's counters, shared with every service it makes.
    pub fn stats(&self) -> Arc<StrategyStats> {
        self.config.stats.clone()
    }

    /// The layer's retry budget, if it has one.
    pub fn retry_budget(&self) -> Option<Arc<RetryBudget>> {
        self.config.budget.clone()
    }
}

impl<S, C: Clone> Layer<S> for StrategyLayer<C> {
    type Service = StrategyService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        StrategyService {
            inner,
            config: Arc::new(self.clone().config),
        }
    }
}

/// The service made by [`StrategyLayer`].
pub struct StrategyService<S, C = DefaultClassifier> {
    inner: S,
    config: Arc<Config<C>>,
}

impl<S: Clone, C> Clone for StrategyService<S, C> {
    fn clone(&self) -> Self {
        StrategyService {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for StrategyService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrategyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, C> StrategyService<S, C> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type Answer<R> = Result<Response<R>, BoxError>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, C, B, ResBody> Service<Request<B>> for StrategyService<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
    C: Classify,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = StrategyFuture<S, C, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = &self.config;
        bump(&config.stats.requests);
        if let Some(budget) = &config.budget {
            budget.deposit();
        }
        let strategy = config.methods.choose(
            req.method(),
            req.headers().contains_key(headers::IDEMPOTENCY_KEY),
            req.extensions().get::<Strategy>(),
        );
        if !strategy.may_repeat() && config.connection_attempts <= 1 {
            // One attempt, and no resending when it never left: no buffer, no box, no clone of
            // the service.
            return StrategyFuture {
                kind: Kind::Single {
                    inner: self.inner.call(req.map(ReplayBody::direct)),
                },
            };
        }
        let strategy = strategy.clone();
        let (parts, body) = req.into_parts();
        let (first_body, replay) = ReplayBody::replayable(body, config.replay_cap);
        let template = Template {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
        };
        let deadline = template
            .extensions
            .get::<Deadline>()
            .copied()
            .or_else(|| RequestContext::current().and_then(|c| c.deadline()));
        let tracker = strategy_tracker(&strategy).cloned();
        // Only percentile delays learn latency: no key to build otherwise.
        let latency_key = tracker.as_ref().map(|_| template.latency_key());
        let mut attempts = Attempts {
            service: self.inner.clone(),
            template,
            replay,
            config: self.config.clone(),
            deadline,
            latency_key,
            tracker,
            launched: 0,
            planned: planned_attempts(&strategy),
            resends_left: config.connection_attempts - 1,
        };
        // The first attempt goes to the instance `poll_ready` readied; later ones to clones,
        // each readied on its own.
        let (request, attempt_deadline) = attempts.request(first_body, attempts.planned);
        let first = attempts.attempt(
            AttemptState::Calling {
                future: self.inner.call(request),
            },
            attempt_deadline,
            Duration::ZERO,
        );
        let kind = if matches!(innermost(&strategy), Strategy::Parallel { .. }) {
            // Hedges race the first attempt: the engine, with every attempt in it, from the start.
            Kind::Many {
                future: attempts.into_engine(strategy, Begin::InSlot, Some(first)),
            }
        } else {
            // The first attempt runs inline; the engine is boxed only if a retry is needed.
            Kind::First {
                attempt: first,
                rest: Some((attempts, strategy)),
            }
        };
        StrategyFuture { kind }
    }
}

/// Whether an outcome is a circuit breaker's refusal rather than the destination's answer.
fn is_breaker_refusal<R>(outcome: &Answer<R>) -> bool {
    match outcome {
        Ok(response) => response.headers().contains_key(headers::X_CIRCUIT_BREAKER),
        #[cfg(feature = "circuit-breaker")]
        Err(error) => {
            crate::error::find_source::<crate::circuit_breaker::CircuitOpen>(error.as_ref())
                .is_some()
        }
        #[cfg(not(feature = "circuit-breaker"))]
        Err(_) => false,
    }
}

fn strategy_tracker(strategy: &Strategy) -> Option<&PercentileDelays> {
    match strategy {
        Strategy::Single => None,
        Strategy::Sequential { delays, .. } | Strategy::Parallel { delays, .. } => delays.tracker(),
        Strategy::UntilDeadline { inner, delays } => {
            strategy_tracker(inner).or_else(|| delays.tracker())
        }
    }
}

/// A nested `until_deadline` adds nothing inside another: its innermost strategy.
fn innermost(mut strategy: &Strategy) -> &Strategy {
    while let Strategy::UntilDeadline { inner, .. } = strategy {
        strategy = inner;
    }
    strategy
}

fn planned_attempts(strategy: &Strategy) -> u32 {
    match strategy {
        Strategy::Single => 1,
        Strategy::Sequential { attempts, .. } | Strategy::Parallel { attempts, .. } => *attempts,
        Strategy::UntilDeadline { inner, .. } => planned_attempts(inner),
    }
}

/// What every attempt's request is made from.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: http::Extensions,
}

impl Template {
    fn latency_key(&self) -> LatencyKey {
        let mut destination = String::new();
        crate::destination::write_destination(&self.uri, &self.headers, &mut destination);
        // Never the raw path: ids in it would make every request a new key, and no key would
        // ever hold enough observations. Without a template the destination is the key.
        let route = match self.extensions.get::<RouteTemplate>() {
            Some(route) => route.as_str().to_owned(),
            None => String::new(),
        };
        LatencyKey::new(destination, route)
    }
}

/// One attempt's result, with what the layer needs to judge it.
struct Attempted<R> {
    number: u32,
    latency: Duration,
    outcome: Answer<R>,
    /// The attempt's span; the verdict is recorded on it once judged.
    span: tracing::Span,
}

pin_project! {
    /// One attempt: readies its own clone of the service (the first attempt's service is already
    /// ready), calls it and times it, inside the attempt's span, and within the attempt's own
    /// deadline when attempts split the deadline. Not polled again once it has finished.
    struct Attempt<S, R, F> {
        #[pin]
        state: AttemptState<S, R, F>,
        // Boxed: only attempts that split the deadline have one, and it is large.
        timer: Option<Pin<Box<Sleep>>>,
        // What the attempt was allowed, for the error when its own deadline passes.
        allowed: Duration,
        number: u32,
        // Only when someone reads the latency: the percentile delays or a debug event.
        started: Option<Instant>,
        span: tracing::Span,
    }
}

pin_project! {
    #[project = AttemptStateProj]
    enum AttemptState<S, R, F> {
        // The request is boxed: only retries and hedges are readied here, and inline it would
        // make every attempt (the first included) twice as large.
        Readying { service: S, request: Option<Box<R>> },
        Calling { #[pin] future: F },
    }
}

/// The attempt type of a strategy service over `S` with request bodies `B`.
type AttemptOf<S, B> =
    Attempt<S, Request<ReplayBody<B>>, <S as Service<Request<ReplayBody<B>>>>::Future>;

impl<S, R, ResBody> Future for Attempt<S, R, S::Future>
where
    S: Service<R, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Attempted<ResBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Attempted<ResBody>> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let polled = loop {
            match this.state.as_mut().project() {
                AttemptStateProj::Readying { service, request } => match service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(request) = request.take() else {
                            break Poll::Ready(
                                Err("the attempt's request was already sent".into()),
                            );
                        };
                        // The clone made ready is the one called; it is not needed afterwards.
                        let future = service.call(*request);
                        this.state.set(AttemptState::Calling { future });
                    }
                    Poll::Ready(Err(error)) => break Poll::Ready(Err(error.into())),
                    Poll::Pending => break Poll::Pending,
                },
                AttemptStateProj::Calling { future } => {
                    break future.poll(cx).map(|outcome| outcome.map_err(Into::into));
                }
            }
        };
        let outcome = match polled {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => match this.timer.as_mut() {
                Some(timer) => {
                    std::task::ready!(timer.as_mut().poll(cx));
                    Err(Box::new(DeadlineExceeded::elapsed(*this.allowed)) as BoxError)
                }
                None => return Poll::Pending,
            },
        };
        Poll::Ready(Attempted {
            number: *this.number,
            latency: this
                .started
                .map_or(Duration::ZERO, |started| started.elapsed()),
            outcome,
            span: this.span.clone(),
        })
    }
}

/// Where the attempt being awaited lives: pinned once in the request's future and handed down by
/// reference, so that the nested steps of a strategy do not each hold a copy of it.
type Slot<'a, S, B> = Pin<&'a mut Option<AttemptOf<S, B>>>;

/// Waits for the attempt in `slot` and empties the slot.
async fn finish<S, B, ResBody>(mut slot: Slot<'_, S, B>) -> Attempted<ResBody>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| {
        let Some(attempt) = slot.as_mut().as_pin_mut() else {
            // Not reached: every step fills the slot before it waits on it.
            return Poll::Ready(Attempted {
                number: 0,
                latency: Duration::ZERO,
                outcome: Err("no attempt to wait for".into()),
                span: tracing::Span::none(),
            });
        };
        let done = std::task::ready!(attempt.poll(cx));
        slot.set(None);
        Poll::Ready(done)
    })
    .await
}

/// The state of one request's attempts.
struct Attempts<S, C, B> {
    service: S,
    template: Template,
    replay: Replay<B>,
    config: Arc<Config<C>>,
    /// The deadline of the whole request, when there is one.
    deadline: Option<Deadline>,
    latency_key: Option<LatencyKey>,
    tracker: Option<PercentileDelays>,
    launched: u32,
    /// The attempts a round of the strategy plans.
    planned: u32,
    /// Sends left for attempts that never reached the server (`connection_attempts` - 1).
    resends_left: u32,
}

/// What a parallel round waits for next.
enum Event<R> {
    Done(Attempted<R>),
    Judged(Answer<R>, Outcome, u32),
    StartNext,
}

/// How a round begins: its first attempt in the slot, or already finished and judged (the first
/// attempt of a request runs outside the engine, which is only made when a retry is needed).
enum Begin<R> {
    InSlot,
    Judged(Answer<R>, Outcome),
}

impl<S, C, B, ResBody> Attempts<S, C, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
    C: Classify,
{
    /// The next attempt's request, and its own deadline when attempts split the deadline.
    fn request(
        &mut self,
        body: ReplayBody<B>,
        attempts_left: u32,
    ) -> (Request<ReplayBody<B>>, Option<Deadline>) {
        let t = &self.template;
        let mut request = Request::new(body);
        *request.method_mut() = t.method.clone();
        *request.uri_mut() = t.uri.clone();
        *request.version_mut() = t.version;
        *request.headers_mut() = t.headers.clone();
        *request.extensions_mut() = t.extensions.clone();
        // aio-request: `min(attempts_count_to_split, attempts_count) - attempt` shares.
        let split_among = match self.config.attempt_deadline {
            AttemptDeadline::PassThrough => None,
            AttemptDeadline::Split => Some(attempts_left),
            AttemptDeadline::SplitFirst(n) => {
                let uncounted = self.planned.saturating_sub(n.max(2).min(self.planned));
                Some(attempts_left.saturating_sub(uncounted))
            }
        };
        let own = match (split_among, self.deadline) {
            (Some(shares), Some(deadline)) => {
                let share = deadline.split(shares);
                // The propagation layer below sends this attempt's share.
                request.extensions_mut().insert(share);
                if share != deadline {
                    // An attempt timeout below that runs out at the share has not run out of
                    // the call's time: its failure is retryable.
                    request.extensions_mut().insert(DeadlineShare);
                }
                Some(share)
            }
            _ => None,
        };
        (request, own)
    }

    /// Makes an attempt of `state`: numbers it, gives it a span, times it when the latency is
    /// wanted, and bounds it by its own deadline when attempts split the deadline.
    fn attempt(
        &mut self,
        state: AttemptState<S, Request<ReplayBody<B>>, S::Future>,
        own_deadline: Option<Deadline>,
        delay: Duration,
    ) -> AttemptOf<S, B> {
        let number = self.launched;
        self.launched += 1;
        let span = tracing::debug_span!(
            "attempt",
            number,
            delay_ms = delay.as_millis() as u64,
            outcome = tracing::field::Empty,
        );
        let timed = self.tracker.is_some() || tracing::enabled!(tracing::Level::DEBUG);
        Attempt {
            state,
            timer: own_deadline
                .map(|deadline| Box::pin(tokio::time::sleep_until(deadline.instant()))),
            allowed: own_deadline.map_or(Duration::ZERO, |deadline| deadline.remaining()),
            number,
            started: timed.then(Instant::now),
            span,
        }
    }

    /// Starts another attempt on a fresh clone of the service, or `None` when the body can no
    /// longer be replayed.
    fn start(&mut self, attempts_left: u32, delay: Duration) -> Option<AttemptOf<S, B>> {
        let body = self.replay_body()?;
        Some(self.send(body, attempts_left, delay))
    }

    /// A fresh copy of the request body, or `None` once it has outgrown the replay buffer.
    fn replay_body(&self) -> Option<ReplayBody<B>> {
        let body = self.replay.replay();
        if body.is_none() {
            tracing::debug!("request body outgrew the replay buffer: no further attempts");
        }
        body
    }

    /// Sends another attempt with `body` on a fresh clone of the service.
    fn send(
        &mut self,
        body: ReplayBody<B>,
        attempts_left: u32,
        delay: Duration,
    ) -> AttemptOf<S, B> {
        let (request, own_deadline) = self.request(body, attempts_left);
        let state = AttemptState::Readying {
            service: self.service.clone(),
            request: Some(Box::new(request)),
        };
        self.attempt(state, own_deadline, delay)
    }

    /// Whether an extra attempt may start after waiting `wait`: time, body and budget allowing.
    fn may_start_extra(&self, wait: Duration, kind: &'static str) -> bool {
        if let Some(deadline) = self.deadline {
            let left = deadline.remaining();
            if left < wait.saturating_add(self.config.low_time_threshold) {
                tracing::debug!(
                    kind,
                    ?wait,
                    ?left,
                    "no further attempt: it would pass the deadline"
                );
                return false;
            }
        }
        if !self.replay.is_replayable() {
            tracing::debug!(
                kind,
                "no further attempt: the request body cannot be replayed"
            );
            return false;
        }
        if let Some(budget) = &self.config.budget {
            if !budget.try_withdraw() {
                bump(&self.config.stats.budget_refusals);
                tracing::info!(kind, "no further attempt: the retry budget is spent");
                return false;
            }
        }
        true
    }

    /// Judges a finished attempt, and learns its latency if it is a complete success: only
    /// those are samples (aio-request records 2xx only), so that fast failures do not pull the
    /// hedge delay down and timeouts do not push it up.
    fn judge(&self, attempted: Attempted<ResBody>) -> (Answer<ResBody>, Outcome, u32) {
        let classifier = &self.config.classifier;
        let outcome = match &attempted.outcome {
            Ok(response) => classifier.classify_response(response.status(), response.headers()),
            Err(error) => classifier.classify_error(error.as_ref()),
        };
        attempted.span.record("outcome", outcome.as_str());
        attempted.span.in_scope(|| {
            tracing::debug!(
                latency = ?attempted.latency,
                status = attempted.outcome.as_ref().ok().map(|r| r.status().as_u16()),
                "attempt finished"
            )
        });
        let sample = outcome.is_success()
            && attempted
                .outcome
                .as_ref()
                .is_ok_and(|response| response.status().is_success());
        if sample {
            if let (Some(tracker), Some(key)) = (&self.tracker, &self.latency_key) {
                tracker.record(key, attempted.latency);
            }
        }
        (attempted.outcome, outcome, attempted.number)
    }

    /// Sends the attempt again while it never reached the server and `connection_attempts`,
    /// time, the body and the budget allow. Safe for any method: the server never saw it.
    async fn resend_unsent(
        &mut self,
        judged: (Answer<ResBody>, Outcome),
        attempts_left: u32,
        mut slot: Slot<'_, S, B>,
    ) -> (Answer<ResBody>, Outcome) {
        let (mut answer, mut outcome) = judged;
        while outcome.never_left() && self.resends_left > 0 {
            if !self.may_start_extra(Duration::ZERO, "resend") {
                break;
            }
            let Some(body) = self.replay_body() else {
                break;
            };
            self.resends_left -= 1;
            drop(answer);
            tracing::debug!("the attempt never reached the server: sending it again");
            slot.set(Some(self.send(body, attempts_left, Duration::ZERO)));
            bump(&self.config.stats.retries);
            let done = finish(slot.as_mut()).await;
            (answer, outcome, _) = self.judge(done);
        }
        (answer, outcome)
    }

    /// The wait a rejected 429 or 503 asks for, capped.
    fn retry_after(&self, outcome: &Answer<ResBody>) -> Option<Duration> {
        let response = outcome.as_ref().ok()?;
        if !matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            return None;
        }
        let wait = headers::parse_retry_after(response.headers().get(headers::RETRY_AFTER)?)?;
        Some(wait.min(self.config.max_retry_after))
    }

    fn delay(&self, delays: &Delays, k: u32) -> Duration {
        delays.delay_for(k, self.latency_key.as_ref())
    }

    /// Runs the strategy: one round of attempts; with `until_deadline`, rounds until one is
    /// accepted or time runs out. One function rather than one per level, so that the request's
    /// future stays small.
    async fn run(
        &mut self,
        strategy: &Strategy,
        begin: Begin<ResBody>,
        mut slot: Slot<'_, S, B>,
    ) -> Answer<ResBody> {
        let (round, between_rounds) = match strategy {
            Strategy::UntilDeadline { inner, delays } => (innermost(inner), Some(delays)),
            other => (other, None),
        };
        let mut rounds = 1;
        let mut begin = begin;
        loop {
            let (outcome, verdict) = match round {
                Strategy::Sequential { attempts, delays } => {
                    self.sequential(*attempts, delays, begin, slot.as_mut())
                        .await
                }
                Strategy::Parallel { attempts, delays } => {
                    self.parallel(*attempts, delays, begin, slot.as_mut()).await
                }
                _ => self.first_of_round(begin, 1, slot.as_mut()).await,
            };
            let Some(delays) = between_rounds else {
                return outcome;
            };
            if !verdict.is_retryable() || self.deadline.is_none() {
                return outcome;
            }
            let wait = self
                .retry_after(&outcome)
                .unwrap_or_else(|| self.delay(delays, rounds));
            if !self.may_start_extra(wait, "round") {
                return outcome;
            }
            let Some(body) = self.replay_body() else {
                return outcome;
            };
            // As between sequential attempts: the rejected response goes before the wait.
            drop(outcome);
            // Boxed: only a repeated round waits, and a timer would double this future's size.
            Box::pin(tokio::time::sleep(wait)).await;
            slot.set(Some(self.send(body, planned_attempts(round), wait)));
            begin = Begin::InSlot;
            bump(&self.config.stats.retries);
            rounds += 1;
        }
    }

    /// The judged first attempt of a round, as it began or once it finishes, sent again while
    /// it never reached the server.
    async fn first_of_round(
        &mut self,
        begin: Begin<ResBody>,
        attempts_left: u32,
        mut slot: Slot<'_, S, B>,
    ) -> (Answer<ResBody>, Outcome) {
        let judged = match begin {
            Begin::Judged(answer, outcome) => (answer, outcome),
            Begin::InSlot => {
                // Await first, then judge: `&self` held across an await would need `S: Sync`.
                let done = finish(slot.as_mut()).await;
                let (answer, outcome, _) = self.judge(done);
                (answer, outcome)
            }
        };
        self.resend_unsent(judged, attempts_left, slot).await
    }

    /// The rest of the request as one boxed future: every attempt still to come lives in it.
    fn into_engine(
        mut self,
        strategy: Strategy,
        begin: Begin<ResBody>,
        first: Option<AttemptOf<S, B>>,
    ) -> BoxFuture<Answer<ResBody>>
    where
        C: Send + Sync + 'static,
    {
        Box::pin(async move {
            let slot = pin!(first);
            let outcome = self.run(&strategy, begin, slot).await;
            let launched = self.launched;
            outcome.map(|mut response| {
                // Absent means one: a request answered at its first attempt (most of them)
                // pays no extension map.
                if launched > 1 {
                    response.extensions_mut().insert(AttemptCount(launched));
                }
                response
            })
        })
    }

    async fn sequential(
        &mut self,
        attempts: u32,
        delays: &Delays,
        begin: Begin<ResBody>,
        mut slot: Slot<'_, S, B>,
    ) -> (Answer<ResBody>, Outcome) {
        let (mut outcome, mut verdict) = self.first_of_round(begin, attempts, slot.as_mut()).await;
        for k in 1..attempts {
            if !verdict.is_retryable() {
                break;
            }
            let wait = self
                .retry_after(&outcome)
                .unwrap_or_else(|| self.delay(delays, k));
            if !self.may_start_extra(wait, "retry") {
                break;
            }
            let Some(body) = self.replay_body() else {
                break;
            };
            // Committed to another attempt: let the rejected response go before the wait, so
            // that its connection returns to the pool instead of idling through the backoff.
            drop(outcome);
            // Boxed: only a retry waits, and a timer would double this future's size.
            Box::pin(tokio::time::sleep(wait)).await;
            slot.set(Some(self.send(body, attempts - k, wait)));
            bump(&self.config.stats.retries);
            let done = finish(slot.as_mut()).await;
            let (answer, judged, _) = self.judge(done);
            (outcome, verdict) = self
                .resend_unsent((answer, judged), attempts - k, slot.as_mut())
                .await;
        }
        (outcome, verdict)
    }

    async fn parallel(
        &mut self,
        attempts: u32,
        delays: &Delays,
        begin: Begin<ResBody>,
        slot: Slot<'_, S, B>,
    ) -> (Answer<ResBody>, Outcome) {
        let started = Instant::now();
        // Attempt numbers run on across rounds of `until_deadline`: this round's first is here.
        let first_number = self.launched.saturating_sub(1);
        // The first attempt (in the slot) and the hedge timer live in the request's future; only
        // hedges, which most requests never start, get boxes of their own.
        let mut first = slot;
        let mut hedges: Vec<Pin<Box<AttemptOf<S, B>>>> = Vec::new();
        let mut launched = 1;
        let mut next = pin!(tokio::time::sleep_until(instant_after(
            started,
            if attempts > 1 {
                self.delay(delays, 1)
            } else {
                Duration::MAX
            },
        )));
        let mut armed = attempts > 1;
        let mut last_rejected = None;
        // A round that begins judged (its first attempt finished before the engine was made)
        // takes that verdict as its first event.
        let mut judged_first = match begin {
            Begin::Judged(outcome, verdict) => Some(Event::Judged(outcome, verdict, first_number)),
            Begin::InSlot => None,
        };
        loop {
            let event = match judged_first.take() {
                Some(event) => event,
                None => {
                    poll_fn(|cx| {
                        if let Some(attempt) = first.as_mut().as_pin_mut() {
                            if let Poll::Ready(done) = attempt.poll(cx) {
                                first.set(None);
                                return Poll::Ready(Event::Done(done));
                            }
                        }
                        for i in 0..hedges.len() {
                            if let Poll::Ready(done) = hedges[i].as_mut().poll(cx) {
                                drop(hedges.swap_remove(i));
                                return Poll::Ready(Event::Done(done));
                            }
                        }
                        if armed && next.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::StartNext);
                        }
                        Poll::Pending
                    })
                    .await
                }
            };
            let idle = first.is_none() && hedges.is_empty();
            let (outcome, verdict, number) = match event {
                Event::Done(done) => self.judge(done),
                Event::Judged(outcome, verdict, number) => (outcome, verdict, number),
                Event::StartNext => {
                    armed = false;
                    if self.may_start_extra(Duration::ZERO, "hedge") {
                        let since_first = started.elapsed();
                        if let Some(attempt) = self.start(attempts - launched, since_first) {
                            bump(&self.config.stats.hedges);
                            tracing::debug!(number = launched, "hedged attempt started");
                            hedges.push(Box::pin(attempt));
                            launched += 1;
                            if launched < attempts {
                                let at = instant_after(started, self.delay(delays, launched))
                                    .max(Instant::now());
                                next.as_mut().reset(at);
                                armed = true;
                            }
                            continue;
                        }
                    }
                    // No more attempts will start: wait for those in flight, if any.
                    launched = attempts;
                    if idle {
                        break;
                    }
                    continue;
                }
            };
            if !verdict.is_retryable() && !idle && is_breaker_refusal(&outcome) {
                // A hedge refused by the breaker must not end the race: an attempt in
                // flight may be the breaker's probe, and only its answer can close it.
                // Keep the refusal as the fallback and start nothing more.
                last_rejected = Some((outcome, verdict));
                launched = attempts;
                armed = false;
                continue;
            }
            if !verdict.is_retryable() {
                if number > first_number {
                    bump(&self.config.stats.hedge_wins);
                    tracing::debug!(number, "hedged attempt won");
                }
                // Returning drops the attempts still in flight: hyper cancels them.
                return (outcome, verdict);
            }
            let pushback = self.retry_after(&outcome);
            last_rejected = Some((outcome, verdict));
            if launched >= attempts {
                if idle {
                    break;
                }
                continue;
            }
            let now = Instant::now();
            let scheduled = armed.then(|| next.deadline());
            let at = match (pushback, idle) {
                // The server asked for a pause: no attempt before it is over.
                (Some(wait), _) => {
                    let after = instant_after(now, wait);
                    scheduled.map_or(after, |s| s.max(after))
                }
                // Everything in flight failed: the next attempt need not wait its turn.
                (None, true) => now,
                (None, false) => continue,
            };
            next.as_mut().reset(at);
            armed = true;
        }
        last_rejected.unwrap_or_else(|| (Err("no attempt finished".into()), Outcome::Failure))
    }
}

pin_project! {
    /// The response future of [`StrategyService`]. A single attempt is the inner future itself.
    /// A request that may take more attempts runs its first attempt inline and boxes the rest of
    /// its engine only if a retry is needed; a hedged request boxes its engine from the start,
    /// since hedges race the first attempt.
    pub struct StrategyFuture<S, C, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        kind: Kind<S, C, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, C, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        Single { #[pin] inner: S::Future },
        First {
            #[pin]
            attempt: AttemptOf<S, B>,
            // Taken when the first attempt finishes.
            rest: Option<(Attempts<S, C, B>, Strategy)>,
        },
        Many { future: BoxFuture<Result<S::Response, BoxError>> },
    }
}

impl<S, C, B> fmt::Debug for StrategyFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrategyFuture").finish_non_exhaustive()
    }
}

impl<S, C, B, ResBody> Future for StrategyFuture<S, C, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
    C: Classify,
{
    type Output = Answer<ResBody>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut kind = self.as_mut().project().kind;
            let (attempts, strategy, outcome, verdict) = match kind.as_mut().project() {
                KindProj::Single { inner } => return inner.poll(cx).map_err(Into::into),
                KindProj::Many { future } => return future.as_mut().poll(cx),
                KindProj::First { attempt, rest } => {
                    let done = std::task::ready!(attempt.poll(cx));
                    let Some((attempts, strategy)) = rest.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let (outcome, verdict, _) = attempts.judge(done);
                    // Another attempt only for a retryable outcome, and for a strategy of one
                    // attempt only when the request never reached the server.
                    let again =
                        verdict.is_retryable() && (strategy.may_repeat() || verdict.never_left());
                    if !again {
                        return Poll::Ready(outcome);
                    }
                    (attempts, strategy, outcome, verdict)
                }
            };
            // Rejected: the rest of the strategy decides, in a box of its own.
            let future = attempts.into_engine(strategy, Begin::Judged(outcome, verdict), None);
            kind.set(Kind::Many { future });
        }
    }
}
