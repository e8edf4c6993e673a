//! The layer and its settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tower_layer::Layer;

use super::{MethodStrategies, RetryBudget, Strategy};
use crate::body::DEFAULT_REPLAY_CAP;
use crate::classify::DefaultClassifier;

use super::service::StrategyService;
use super::stats::StrategyStats;

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

#[derive(Clone)]
pub(super) struct Config<C> {
    pub(super) methods: MethodStrategies,
    pub(super) classifier: C,
    pub(super) budget: Option<Arc<RetryBudget>>,
    pub(super) max_retry_after: Duration,
    pub(super) replay_cap: usize,
    pub(super) attempt_deadline: AttemptDeadline,
    pub(super) low_time_threshold: Duration,
    pub(super) connection_attempts: u32,
    pub(super) stats: Arc<StrategyStats>,
}

/// Sends each request with a [`Strategy`]: one attempt, sequential retries, or hedged attempts.
///
/// See the [module docs](super) for the behaviour and an example.
#[derive(Clone)]
pub struct StrategyLayer<C = DefaultClassifier> {
    pub(super) config: Config<C>,
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
    /// DNS, an HTTP/2 stream refused or left unprocessed by a graceful GOAWAY, no pooled
    /// connection in time): default 3, as aio-request's `connection_attempts`. These repeats are allowed for *any* method, a `POST` without
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
