use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntCounter;

use crate::strategy::{StrategyStats, StrategyStatsSnapshot};

/// Exposes the counters of every strategy layer a [`ClientMetrics`](super::ClientMetrics)
/// watches, summed. They are read from the layers' atomics when Prometheus scrapes, so the
/// request path pays nothing for them.
pub(super) struct StrategyCollector {
    retries: IntCounter,
    hedges: IntCounter,
    hedge_wins: IntCounter,
    budget_refusals: IntCounter,
    /// Also keeps two scrapes at once from both adding the same increase.
    sources: Mutex<Sources>,
}

/// The layers watched. A layer that only this list still holds (its clients are gone) is
/// folded into `retired`: the counters never go down, and the list never outgrows the live
/// clients.
#[derive(Default)]
struct Sources {
    live: Vec<Arc<StrategyStats>>,
    retired: StrategyStatsSnapshot,
}

impl Sources {
    fn retire_unused(&mut self) {
        let retired = &mut self.retired;
        self.live.retain(|stats| {
            // Only this list holds it: nothing can count into it any more.
            let unused = Arc::strong_count(stats) == 1;
            if unused {
                // Pairs with the release of the last other handle's drop, so its final
                // increments are in the snapshot.
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                *retired = sum(*retired, stats.snapshot());
            }
            !unused
        });
    }

    fn total(&mut self) -> StrategyStatsSnapshot {
        self.retire_unused();
        self.live
            .iter()
            .fold(self.retired, |total, stats| sum(total, stats.snapshot()))
    }
}

fn sum(a: StrategyStatsSnapshot, b: StrategyStatsSnapshot) -> StrategyStatsSnapshot {
    StrategyStatsSnapshot {
        requests: a.requests + b.requests,
        retries: a.retries + b.retries,
        hedges: a.hedges + b.hedges,
        hedge_wins: a.hedge_wins + b.hedge_wins,
        budget_refusals: a.budget_refusals + b.budget_refusals,
    }
}

impl StrategyCollector {
    /// `http_client_retries_total`, `http_client_hedges_total`, `http_client_hedge_wins_total`,
    /// `http_client_retry_budget_refusals_total`, watching nothing yet.
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        Ok(StrategyCollector {
            retries: IntCounter::new("http_client_retries_total", "Sequential retries sent.")?,
            hedges: IntCounter::new("http_client_hedges_total", "Hedged attempts sent.")?,
            hedge_wins: IntCounter::new(
                "http_client_hedge_wins_total",
                "Requests won by a hedged attempt rather than the first.",
            )?,
            budget_refusals: IntCounter::new(
                "http_client_retry_budget_refusals_total",
                "Retries and hedges the retry budget refused.",
            )?,
            sources: Mutex::new(Sources::default()),
        })
    }

    /// Adds a strategy layer's counters to the sums; a layer already watched is not added twice.
    pub(super) fn watch(&self, stats: Arc<StrategyStats>) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if !sources.live.iter().any(|known| Arc::ptr_eq(known, &stats)) {
            sources.retire_unused();
            sources.live.push(stats);
        }
    }
}

/// The collector as the registry holds it, shared with the [`ClientMetrics`](super::ClientMetrics)
/// that adds layers to it.
pub(super) struct Registered(pub(super) Arc<StrategyCollector>);

impl Collector for Registered {
    fn desc(&self) -> Vec<&Desc> {
        let this = &self.0;
        [
            &this.retries,
            &this.hedges,
            &this.hedge_wins,
            &this.budget_refusals,
        ]
        .into_iter()
        .flat_map(|c| c.desc())
        .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let this = &self.0;
        let mut sources = this.sources.lock().unwrap_or_else(|e| e.into_inner());
        let now = sources.total();
        let pairs = [
            (&this.retries, now.retries),
            (&this.hedges, now.hedges),
            (&this.hedge_wins, now.hedge_wins),
            (&this.budget_refusals, now.budget_refusals),
        ];
        pairs
            .into_iter()
            .flat_map(|(counter, value)| {
                counter.inc_by(value.saturating_sub(counter.get()));
                counter.collect()
            })
            .collect()
    }
}
