use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::CircuitState;

/// A call refused by an open (or half-open) circuit breaker without reaching the inner service.
///
/// Returned inside a [`BoxError`](crate::error::BoxError) by a breaker set to
/// [`return_error`](super::CircuitBreakerLayer::return_error); find it with `downcast_ref` or
/// [`find_source`](crate::error::find_source). It names the scope and when the next probe may go.
#[derive(Debug, Clone)]
pub struct CircuitOpen {
    scope: Arc<str>,
    state: CircuitState,
    next_probe_at: Option<Instant>,
    next_probe_in: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) fn new(
        scope: Arc<str>,
        state: CircuitState,
        next_probe_at: Option<Instant>,
    ) -> Self {
        let next_probe_in = next_probe_at.map(|at| at.saturating_duration_since(Instant::now()));
        CircuitOpen {
            scope,
            state,
            next_probe_at,
            next_probe_in,
        }
    }

    /// The scope whose breaker refused the call (by default `scheme://authority`).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// [`Open`](CircuitState::Open), or [`HalfOpen`](CircuitState::HalfOpen) while a probe is in
    /// flight.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// When the next probe may go; `None` while a probe is in flight, since the next one then
    /// depends on its outcome.
    pub fn next_probe_at(&self) -> Option<Instant> {
        self.next_probe_at
    }

    /// How long until the next probe may go, measured at refusal; `None` while a probe is in
    /// flight.
    pub fn next_probe_in(&self) -> Option<Duration> {
        self.next_probe_in
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.next_probe_in {
            Some(wait) => write!(
                f,
                "circuit breaker open for {}: next probe in {:?}",
                self.scope, wait
            ),
            None => write!(
                f,
                "circuit breaker half-open for {}: a probe is in flight",
                self.scope
            ),
        }
    }
}

impl std::error::Error for CircuitOpen {}
