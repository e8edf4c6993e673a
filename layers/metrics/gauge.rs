//! An in-flight gauge that every request moves twice, from whichever core serves it: counted in
//! per-core lines ([`ShardedCounter`]) and summed when Prometheus scrapes it.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGauge;

use crate::sharded::ShardedCounter;

/// The gauge as requests move it: cheap to clone, one per-core line written per move.
#[derive(Clone)]
pub(crate) struct InFlight(Arc<ShardedCounter>);

impl InFlight {
    pub(crate) fn inc(&self) {
        self.0.add(1);
    }

    pub(crate) fn dec(&self) {
        self.0.add(-1);
    }

    /// The requests in flight now (never below zero; see [`ShardedCounter::sum`]).
    pub(crate) fn get(&self) -> i64 {
        self.0.sum().max(0)
    }
}

/// The collector registered for an [`InFlight`]: reports it as the prometheus gauge `gauge`.
pub(crate) struct InFlightCollector {
    gauge: IntGauge,
    in_flight: InFlight,
}

/// A gauge registered under `gauge`'s name and help, and the handle requests move it with.
pub(crate) fn in_flight_gauge(gauge: IntGauge) -> (InFlight, InFlightCollector) {
    let in_flight = InFlight(Arc::new(ShardedCounter::new()));
    let collector = InFlightCollector {
        gauge,
        in_flight: in_flight.clone(),
    };
    (in_flight, collector)
}

impl Collector for InFlightCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.set(self.in_flight.get());
        self.gauge.collect()
    }
}
