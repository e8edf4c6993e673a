use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGaugeVec, Opts};

use crate::circuit_breaker::{BreakerRegistry, CircuitState};

/// Exposes the states and refusals of every breaker table a
/// [`ClientMetrics`](super::ClientMetrics) watches, read when Prometheus scrapes: the request
/// path pays nothing, and the gauge has one series per remembered scope, so it is bounded by the
/// tables' `max_scopes`.
pub(super) struct BreakerCollector {
    state: IntGaugeVec,
    refusals: IntCounter,
    /// Also keeps two scrapes at once from both adding the same increase.
    sources: Mutex<Sources>,
}

/// The tables watched. A table that only this list still holds (its clients are gone) is
/// folded into `retired_refusals` and leaves the gauge.
#[derive(Default)]
struct Sources {
    live: Vec<BreakerRegistry>,
    retired_refusals: u64,
}

impl Sources {
    fn retire_unused(&mut self) {
        let retired = &mut self.retired_refusals;
        self.live.retain(|table| {
            let unused = table.is_last_handle();
            if unused {
                // Pairs with the release of the last other handle's drop, so its final
                // refusals are in the count.
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                *retired += table.refused();
            }
            !unused
        });
    }
}

fn gauge_value(state: CircuitState) -> i64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::HalfOpen => 1,
        CircuitState::Open => 2,
    }
}

impl BreakerCollector {
    /// `http_client_circuit_breaker_state{scope}` (0 closed, 1 half-open, 2 open) and
    /// `http_client_circuit_breaker_refusals_total`, watching nothing yet.
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        Ok(BreakerCollector {
            state: IntGaugeVec::new(
                Opts::new(
                    "http_client_circuit_breaker_state",
                    "Circuit breaker state per scope: 0 closed, 1 half-open, 2 open.",
                ),
                &["scope"],
            )?,
            refusals: IntCounter::new(
                "http_client_circuit_breaker_refusals_total",
                "Calls refused by an open or half-open circuit breaker.",
            )?,
            sources: Mutex::new(Sources::default()),
        })
    }

    /// Adds a breaker table; a table already watched is not added twice.
    pub(super) fn watch(&self, breakers: BreakerRegistry) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if !sources.live.iter().any(|known| known.same_table(&breakers)) {
            sources.retire_unused();
            sources.live.push(breakers);
        }
    }
}

/// The collector as the registry holds it, shared with the [`ClientMetrics`](super::ClientMetrics)
/// that adds tables to it.
pub(super) struct Registered(pub(super) Arc<BreakerCollector>);

impl Collector for Registered {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.0.state.desc();
        descs.extend(self.0.refusals.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let this = &self.0;
        let mut sources = this.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retire_unused();
        // Two clients may each have a breaker for one destination: the gauge shows the worse.
        let mut states = BTreeMap::new();
        for scope in sources.live.iter().flat_map(BreakerRegistry::snapshot) {
            let value = gauge_value(scope.state);
            let worst = states.entry(scope.scope).or_insert(value);
            *worst = (*worst).max(value);
        }
        // Rebuilt at every scrape, so forgotten scopes disappear from the gauge too.
        this.state.reset();
        for (scope, value) in states {
            this.state.with_label_values(&[scope.as_str()]).set(value);
        }
        let refused = sources.retired_refusals
            + sources
                .live
                .iter()
                .map(BreakerRegistry::refused)
                .sum::<u64>();
        this.refusals
            .inc_by(refused.saturating_sub(this.refusals.get()));
        let mut families = this.state.collect();
        families.extend(this.refusals.collect());
        families
    }
}
