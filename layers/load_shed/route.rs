//! Route estimates: each route's typical service time, for deadline-aware admission.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Weight of the newest sample in a route's moving average: about the last ten requests count.
const EWMA_WEIGHT: f64 = 0.2;

type KeyFn = Arc<dyn Fn(&http::Method, &http::Uri) -> Option<String> + Send + Sync>;

/// How a request's route is named for its service-time estimate.
#[derive(Clone)]
pub(super) enum RouteKey {
    /// axum's `MatchedPath` (the route template), when the `axum` feature is on.
    MatchedPath,
    /// A key function of the caller's, given the request's method and URI.
    Custom(KeyFn),
}

impl RouteKey {
    /// The request's route name, if it has one.
    pub(super) fn of<'r, B>(&self, req: &'r http::Request<B>) -> Option<std::borrow::Cow<'r, str>> {
        match self {
            #[cfg(feature = "axum")]
            RouteKey::MatchedPath => req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map(|p| std::borrow::Cow::Borrowed(p.as_str())),
            #[cfg(not(feature = "axum"))]
            RouteKey::MatchedPath => None,
            RouteKey::Custom(key) => key(req.method(), req.uri()).map(std::borrow::Cow::Owned),
        }
    }
}

/// One in this many requests refused for their deadline is admitted anyway, so that a route's
/// estimate can come down again when every caller's deadline is shorter than it.
const PROBE_EVERY: u64 = 16;

/// A route's service time, as an exponentially weighted moving average in nanoseconds
/// (0: no sample yet).
#[derive(Default)]
pub(super) struct RouteEstimate {
    nanos: AtomicU64,
    refusals: AtomicU64,
    samples: AtomicU64,
}

/// Samples a route needs before its estimate may refuse anyone: one cold first request (caches
/// empty after a deploy) must not shut out every caller with less time than it took.
pub(super) const MIN_SAMPLES: u64 = 5;

impl RouteEstimate {
    /// Counts a refusal; true when this one should be admitted as a probe instead.
    pub(super) fn probe_instead(&self) -> bool {
        self.refusals.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == PROBE_EVERY - 1
    }

    pub(super) fn get(&self) -> Option<Duration> {
        if self.samples.load(Ordering::Relaxed) < MIN_SAMPLES {
            return None;
        }
        match self.nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    pub(super) fn record(&self, sample: Duration) {
        // Nanoseconds in a u64 last 584 years; saturate rather than wrap, and keep 0 for "none".
        let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.samples.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    let next = old as f64 + (sample as f64 - old as f64) * EWMA_WEIGHT;
                    (next as u64).max(1)
                })
            });
    }
}
