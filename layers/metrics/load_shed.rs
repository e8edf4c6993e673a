use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::load_shed::LoadShedLayer;

/// Exposes a load shedder's counters, read from its atomics when Prometheus scrapes.
struct LoadShedCollector {
    layer: LoadShedLayer,
    shed: IntCounterVec,
    scraping: Mutex<()>,
}

impl Collector for LoadShedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.shed.desc()
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
        self.shed.collect()
    }
}

/// Registers a load shedder's counters in `registry`:
/// `http_server_shed_requests_total{reason, priority}`, where `reason` is `overload` (the server
/// was full for that priority) or `deadline` (the caller's time was shorter than the route's
/// typical service time).
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
        scraping: Mutex::new(()),
    };
    registry.register(Box::new(collector))
}
