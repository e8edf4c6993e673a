//! The service: picks the strategy, sends the first attempt, and hands the rest to the engine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{PercentileDelays, Strategy};
use crate::body::ReplayBody;
use crate::classify::{Classify, DefaultClassifier};
use crate::context::Deadline;
use crate::error::BoxError;
use crate::headers;

use super::attempt::{AttemptState, Template};
use super::engine::{Attempts, Begin};
use super::future::{Kind, StrategyFuture};
use super::layer::Config;
use super::stats::bump;

/// The service made by [`StrategyLayer`](super::StrategyLayer).
pub struct StrategyService<S, C = DefaultClassifier> {
    pub(super) inner: S,
    pub(super) config: Arc<Config<C>>,
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

impl<S> StrategyService<S> {
    /// `inner` wrapped as [`StrategyLayer::new`](super::StrategyLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&super::StrategyLayer::new(), inner)
    }
}

impl<S, C> StrategyService<S, C> {
    inner_service_accessors!(S);
}

pub(super) type Answer<R> = Result<Response<R>, BoxError>;
pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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
        let deadline = Deadline::of(&template.extensions);
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
pub(super) fn is_breaker_refusal<R>(outcome: &Answer<R>) -> bool {
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

pub(super) fn strategy_tracker(strategy: &Strategy) -> Option<&PercentileDelays> {
    match strategy {
        Strategy::Single => None,
        Strategy::Sequential { delays, .. } | Strategy::Parallel { delays, .. } => delays.tracker(),
        Strategy::UntilDeadline { inner, delays } => {
            strategy_tracker(inner).or_else(|| delays.tracker())
        }
    }
}

/// A nested `until_deadline` adds nothing inside another: its innermost strategy.
pub(super) fn innermost(mut strategy: &Strategy) -> &Strategy {
    while let Strategy::UntilDeadline { inner, .. } = strategy {
        strategy = inner;
    }
    strategy
}

pub(super) fn planned_attempts(strategy: &Strategy) -> u32 {
    match strategy {
        Strategy::Single => 1,
        Strategy::Sequential { attempts, .. } | Strategy::Parallel { attempts, .. } => *attempts,
        Strategy::UntilDeadline { inner, .. } => planned_attempts(inner),
    }
}
