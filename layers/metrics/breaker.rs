use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};

use crate::circuit_breaker::{BreakerRegistry, CircuitState};

/// Exposes a breaker table's states and refusals, read when Prometheus scrapes: the request path
/// pays nothing, and the gauge has one series per remembered scope, so it is bounded by the
/// table's `max_scopes`.
struct BreakerCollector {
    breakers: BreakerRegistry,
    state: IntGaugeVec,
    refusals: IntCounter,
    scraping: Mutex<()>,
}

fn gauge_value(state: CircuitState) -> i64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::HalfOpen => 1,
        CircuitState::Open => 2,
    }
}

impl Collector for BreakerCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.state.desc();
        descs.extend(self.refusals.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _scraping = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        // Rebuilt at every scrape, so forgotten scopes disappear from the gauge too.
        self.state.reset();
        for scope in self.breakers.snapshot() {
            self.state
                .with_label_values(&[scope.scope.as_str()])
                .set(gauge_value(scope.state));
        }
        let refused = self.breakers.refused();
        self.refusals
            .inc_by(refused.saturating_sub(self.refusals.get()));
        let mut families = self.state.collect();
        families.extend(self.refusals.collect());
        families
    }
}

/// Registers a circuit breaker table's metrics in `registry`:
/// `http_client_circuit_breaker_state{scope}` (0 closed, 1 half-open, 2 open) and
/// `http_client_circuit_breaker_refusals_total`.
///
/// ```
/// use prometheus::Registry;
/// use tower_lifeline::circuit_breaker::CircuitBreakerLayer;
///
/// let registry = Registry::new();
/// let breaker = CircuitBreakerLayer::default();
/// tower_lifeline::metrics::register_circuit_breaker(&registry, breaker.registry()).unwrap();
/// let text = tower_lifeline::metrics::render(&registry).unwrap();
/// assert!(text.contains("http_client_circuit_breaker_refusals_total 0"));
/// ```
pub fn register_circuit_breaker(
    registry: &Registry,
    breakers: BreakerRegistry,
) -> Result<(), prometheus::Error> {
    let collector = BreakerCollector {
        breakers,
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
        scraping: Mutex::new(()),
    };
    registry.register(Box::new(collector))
}
