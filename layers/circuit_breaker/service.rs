use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::future::CircuitBreakerFuture;
use super::registry::BreakerRegistry;
use super::scope::{Admission, Scope};
use super::table::Table;
use super::{CircuitBreakerLayer, OnOpen, ScopeBy};
use crate::classify::Classify;
use crate::context::Deadline;
use crate::error::BoxError;

/// The service made by [`CircuitBreakerLayer`]. See the [module docs](super).
pub struct CircuitBreaker<S, C, K, M> {
    inner: S,
    table: Arc<Table>,
    classifier: Arc<C>,
    scope_by: K,
    on_open: M,
    /// The scope of the previous call: a client of one destination skips the table's lock.
    last: Option<Arc<Scope>>,
}

thread_local! {
    /// The text of a request's scope is written here rather than into a buffer of each service:
    /// stacks are cloned per call (the `Client` preset does, and so do retries), and a fresh
    /// buffer would cost an allocation on every one of them.
    static SCOPE_TEXT: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

impl<S, C, K: Clone, M: Clone> CircuitBreaker<S, C, K, M> {
    pub(super) fn from_layer(inner: S, layer: &CircuitBreakerLayer<C, K, M>) -> Self {
        CircuitBreaker {
            inner,
            table: layer.table.clone(),
            classifier: layer.classifier.clone(),
            scope_by: layer.scope_by.clone(),
            on_open: layer.on_open.clone(),
            last: None,
        }
    }
}

impl<S>
    CircuitBreaker<
        S,
        crate::classify::DefaultClassifier,
        super::ByDestination,
        super::ReturnCircuitOpen,
    >
{
    /// `inner` wrapped as [`CircuitBreakerLayer::new`](super::CircuitBreakerLayer::new) would wrap it (tower-http's
    /// `Service::new(inner, ..)`).
    pub fn new(inner: S, settings: super::CircuitBreakerSettings) -> Self {
        tower_layer::Layer::layer(&super::CircuitBreakerLayer::new(settings), inner)
    }
}

impl<S, C, K, M> CircuitBreaker<S, C, K, M> {
    inner_service_accessors!(S);

    /// The states of the scopes, shared with the layer and its other services.
    pub fn registry(&self) -> BreakerRegistry {
        BreakerRegistry {
            table: self.table.clone(),
        }
    }

    fn scope(&mut self, name: &str, now: Instant) -> Arc<Scope> {
        if let Some(last) = &self.last {
            if *last.name == *name && !last.forgotten.load(Ordering::Acquire) {
                return last.clone();
            }
        }
        let scope = self.table.scope(name, now);
        self.last = Some(scope.clone());
        scope
    }
}

impl<S: Clone, C, K: Clone, M: Clone> Clone for CircuitBreaker<S, C, K, M> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            table: self.table.clone(),
            classifier: self.classifier.clone(),
            scope_by: self.scope_by.clone(),
            on_open: self.on_open.clone(),
            last: self.last.clone(),
        }
    }
}

impl<S, C, K, M, B, ResBody> Service<Request<B>> for CircuitBreaker<S, C, K, M>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    C: Classify,
    K: ScopeBy<B>,
    M: OnOpen<ResBody>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = CircuitBreakerFuture<S::Future, C, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The scope is in the request, which `poll_ready` does not see: an open breaker cannot
        // refuse here, so readiness is the inner service's and refusal happens in `call`.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Taken out of the thread-local and put back: a scope function that somehow re-enters
        // finds an empty string of its own instead of this one.
        let mut text = SCOPE_TEXT.take();
        text.clear();
        self.scope_by.scope(&req, &mut text);
        let now = Instant::now();
        let scope = self.scope(&text, now);
        SCOPE_TEXT.set(text);
        match scope.admit(now) {
            // The inner service is called here, on the instance `poll_ready` readied; it never
            // moves into the future, so no clone needs swapping in.
            Admission::Admit(ticket) => CircuitBreakerFuture::running(
                // Read before the request moves on: a ticket dropped at this instant was cut by
                // a deadline, not cancelled.
                ticket.with_deadline(attempt_deadline(&req)),
                self.inner.call(req),
                self.classifier.clone(),
                self.on_open.clone(),
            ),
            // Refused without calling the inner service: its readiness stays reserved for the
            // next call on this instance, which tower's contract allows.
            Admission::Refuse(open) => CircuitBreakerFuture::refused(open, self.on_open.clone()),
        }
    }
}

/// The deadline of the attempt: the request's own (the call's, or its share when attempts split
/// it), else the task-local context's.
fn attempt_deadline<B>(req: &Request<B>) -> Option<Instant> {
    Deadline::of(req.extensions()).map(Deadline::instant)
}

impl<S: fmt::Debug, C, K, M> fmt::Debug for CircuitBreaker<S, C, K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
