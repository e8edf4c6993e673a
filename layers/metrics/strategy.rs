use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Registry};

use crate::strategy::StrategyStats;

/// Exposes a strategy layer's counters. They are read from the layer's atomics when Prometheus
/// scrapes, so the request path pays nothing for them.
struct StrategyCollector {
    stats: Arc<StrategyStats>,
    retries: IntCounter,
    hedges: IntCounter,
    hedge_wins: IntCounter,
    budget_refusals: IntCounter,
    /// Two scrapes at once must not both add the same increase.
    scraping: Mutex<()>,
}

impl Collector for StrategyCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            &self.retries,
            &self.hedges,
            &self.hedge_wins,
            &self.budget_refusals,
        ]
        .into_iter()
        .flat_map(|c| c.desc())
        .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _scraping = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.stats.snapshot();
        let pairs = [
            (&self.retries, now.retries),
            (&self.hedges, now.hedges),
            (&self.hedge_wins, now.hedge_wins),
            (&self.budget_refusals, now.budget_refusals),
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

/// Registers a strategy layer's counters in `registry`:
/// `http_client_retries_total`, `http_client_hedges_total`, `http_client_hedge_wins_total`,
/// `http_client_retry_budget_refusals_total`.
///
/// ```
/// use prometheus::Registry;
/// use tower_lifeline::strategy::StrategyLayer;
///
/// let registry = Registry::new();
/// let strategy = StrategyLayer::new();
/// tower_lifeline::metrics::register_strategy(&registry, strategy.stats()).unwrap();
/// let text = tower_lifeline::metrics::render(&registry).unwrap();
/// assert!(text.contains("http_client_retries_total 0"));
/// ```
pub fn register_strategy(
    registry: &Registry,
    stats: Arc<StrategyStats>,
) -> Result<(), prometheus::Error> {
    let collector = StrategyCollector {
        stats,
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
        scraping: Mutex::new(()),
    };
    registry.register(Box::new(collector))
}
