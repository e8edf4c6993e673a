use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::load_shed::LoadShedLayer;

/// Exposes a load shedder's counters, read from its atomics when Prometheus scrapes.
struct LoadShedCollector {
    layer: LoadShedLayer,
    shed: IntCounterVec,
    limit: IntGauge,
    scraping: Mutex<()>,
}

impl Collector for LoadShedCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut desc = self.shed.desc();
        desc.extend(self.limit.desc());
        desc
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _scraping = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        let stats = self.layer.stats();
        let [low, normal, high] = stats.shed_overload;
        for (reason, priority, value) in [
            ("overload", "low", low),
            ("overload", "normal", normal),
            ("overload", "high", high),
            ("deadline", "any", stats.refused_deadline),
        ] {
            let counter = self.shed.with_label_values(&[reason, priority]);
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        self.limit
            .set(i64::try_from(stats.limit).unwrap_or(i64::MAX));
        let mut families = self.shed.collect();
        families.extend(self.limit.collect());
        families
    }
}

/// Registers a load shedder's counters in `registry`:
/// `http_server_shed_requests_total{reason, priority}`, where `reason` is `overload` (the server
/// was full for that priority) or `deadline` (the caller's time was shorter than the route's
/// typical service time); and `http_server_concurrency_limit`, the limit in force (the adaptive
/// limit's current value, or the fixed capacity).
///
/// ```
/// use prometheus::Registry;
/// use tower_lifeline::load_shed::LoadShedLayer;
///
/// let registry = Registry::new();
/// let shed = LoadShedLayer::new(64);
/// tower_lifeline::metrics::register_load_shed(&registry, shed.clone()).unwrap();
/// let text = tower_lifeline::metrics::render(&registry).unwrap();
/// assert!(text.contains(r#"http_server_shed_requests_total{priority="low",reason="overload"} 0"#));
/// assert!(text.contains("http_server_concurrency_limit 64"));
/// ```
pub fn register_load_shed(
    registry: &Registry,
    layer: LoadShedLayer,
) -> Result<(), prometheus::Error> {
    let collector = LoadShedCollector {
        layer,
        shed: IntCounterVec::new(
            Opts::new(
                "http_server_shed_requests_total",
                "Requests load shedding refused, by reason and priority.",
            ),
            &["reason", "priority"],
        )?,
        limit: IntGauge::new(
            "http_server_concurrency_limit",
            "Requests load shedding lets run at once now (adaptive, or the fixed capacity).",
        )?,
        scraping: Mutex::new(()),
    };
    registry.register(Box::new(collector))
}
