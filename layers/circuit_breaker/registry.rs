//! The public face of a breaker's scopes: states, transitions, listeners, snapshots, and the
//! registry that reads them.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use tokio::time::Instant;

use super::table::Table;

/// The state of one scope's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// Requests are refused until the break is over.
    Open,
    /// One probe is in flight; every other request is refused until it ends.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`: the form used in tracing events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change of one scope's breaker, as given to [`OnTransition`] listeners.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Transition<'a> {
    /// The scope, by default `scheme://authority`.
    pub scope: &'a str,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Failures over requests in the rolling window at the moment of the change (0 when empty).
    pub failure_ratio: f64,
    /// Requests in the rolling window at the moment of the change.
    pub requests: u64,
}

/// A listener for breaker events: the hook a metrics layer uses for a state gauge.
///
/// Called synchronously, on the request path, by the caller that made the change: it must be
/// quick and must not block. Any `Fn(&Transition<'_>)` closure is a listener.
pub trait OnTransition: Send + Sync + 'static {
    /// A scope changed state.
    fn on_transition(&self, transition: &Transition<'_>);

    /// A scope was forgotten (idle, or evicted to make room): drop its gauge. By default nothing.
    fn on_forget(&self, scope: &str) {
        let _ = scope;
    }
}

impl<F> OnTransition for F
where
    F: Fn(&Transition<'_>) + Send + Sync + 'static,
{
    fn on_transition(&self, transition: &Transition<'_>) {
        self(transition)
    }
}

/// What a scope looked like at the moment of a [`snapshot`](BreakerRegistry::snapshot).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScopeSnapshot {
    /// The scope.
    pub scope: String,
    /// Its state. An open breaker whose break is over stays `Open` until a caller probes.
    pub state: CircuitState,
    /// Requests in the rolling window.
    pub requests: u64,
    /// Failures in the rolling window.
    pub failures: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// When an open breaker lets the next probe go.
    pub next_probe_at: Option<Instant>,
}

// The state word: 2 bits of kind, 16 bits of generation, 46 bits of "probe allowed from" in
// milliseconds since the table's origin (open only). The generation makes every transition a
// new value, so an outcome admitted under an earlier state is recognised and ignored (modulo

/// A handle on a breaker's scopes: states, snapshots and listeners.
///
/// Every service made by one [`CircuitBreakerLayer`](super::CircuitBreakerLayer) shares one
/// registry; get it with [`CircuitBreakerLayer::registry`](super::CircuitBreakerLayer::registry).
/// Cloning it is cheap.
#[derive(Clone)]
pub struct BreakerRegistry {
    pub(super) table: Arc<Table>,
}

impl BreakerRegistry {
    /// The state of `scope`'s breaker; `None` if the scope is unknown (never used, or forgotten),
    /// which behaves as closed.
    pub fn state(&self, scope: &str) -> Option<CircuitState> {
        self.table
            .shard(scope)
            .scopes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope)
            .map(|s| s.state())
    }

    /// Whether `self` and `other` are handles on the same table (for the metrics' collector).
    #[cfg(feature = "metrics")]
    pub(crate) fn same_table(&self, other: &BreakerRegistry) -> bool {
        Arc::ptr_eq(&self.table, &other.table)
    }

    /// Whether this handle is the table's last: no layer or service can count into it any more.
    #[cfg(feature = "metrics")]
    pub(crate) fn is_last_handle(&self) -> bool {
        Arc::strong_count(&self.table) == 1
    }

    /// Calls refused so far by this table's open and half-open breakers.
    pub fn refused(&self) -> u64 {
        self.table.core.refused.load(Ordering::Relaxed)
    }

    /// Every known scope, sorted by name.
    pub fn snapshot(&self) -> Vec<ScopeSnapshot> {
        let now = Instant::now();
        let mut all: Vec<ScopeSnapshot> = self
            .table
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .scopes
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .map(|s| s.snapshot(now))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.scope.cmp(&b.scope));
        all
    }

    /// How many scopes are remembered.
    pub fn len(&self) -> usize {
        self.table
            .shards
            .iter()
            .map(|s| {
                s.scopes
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// Whether no scope is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every scope idle for the idle timeout now, rather than when its shard next needs
    /// room. Call it from a periodic task if scopes come and go.
    pub fn forget_idle(&self) {
        let now_ms = self.table.core.nanos(Instant::now()) / 1_000_000;
        for shard in self.table.shards.iter() {
            let mut forgotten = Vec::new();
            self.table.forget_idle_in(
                &mut shard.scopes.write().unwrap_or_else(PoisonError::into_inner),
                now_ms,
                &mut forgotten,
            );
            self.table.announce_forgotten(&forgotten);
        }
    }

    /// Adds a listener called on every state change and every forgotten scope, from now on.
    pub fn on_transition(&self, listener: impl OnTransition) {
        self.table
            .core
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(listener));
    }
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("scopes", &self.len())
            .finish_non_exhaustive()
    }
}
