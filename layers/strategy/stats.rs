//! What the layer counts, and the attempt count on responses.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many attempts a request took, in the extensions of a response that took more than one.
/// Absent on responses to the first attempt (so that they pay no allocation): read it as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCount(pub u32);

/// Counters of what the strategy layer did, shared by every service the layer made.
#[derive(Debug, Default)]
pub struct StrategyStats {
    pub(super) requests: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) hedges: AtomicU64,
    pub(super) hedge_wins: AtomicU64,
    pub(super) budget_refusals: AtomicU64,
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

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
