use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Which latencies a [`PercentileDelays`] keeps together: one destination (scheme and
/// authority) and one route (the [`RouteTemplate`](crate::context::RouteTemplate) the caller
/// gave, else the path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LatencyKey {
    destination: String,
    route: String,
}

impl LatencyKey {
    /// A key for a destination and a route.
    pub fn new(destination: impl Into<String>, route: impl Into<String>) -> Self {
        LatencyKey {
            destination: destination.into(),
            route: route.into(),
        }
    }
}

/// Settings of [`PercentileDelays`].
#[derive(Debug, Clone)]
pub struct PercentileSettings {
    /// The percentile that sets the delay (default 95).
    pub percentile: f64,
    /// How much history counts (default 5 minutes) ...
    pub window: Duration,
    /// ... kept in this many rotating buckets (default 2): the oldest bucket is dropped whole.
    pub buckets: usize,
    /// The shortest delay (default 50 ms), so that a very fast destination is not hedged at once;
    /// also the delay while too little has been observed (aio-request's `min_delay_seconds`).
    pub min: Duration,
    /// The longest delay (default 10 s).
    pub max: Duration,
    /// Observations needed before the percentile is trusted (default 20).
    pub min_samples: u64,
    /// How many destination and route pairs are tracked at most (default 1,000); the least
    /// recently used is forgotten to make room.
    pub max_keys: usize,
}

impl Default for PercentileSettings {
    fn default() -> Self {
        PercentileSettings {
            percentile: 95.0,
            window: Duration::from_secs(300),
            buckets: 2,
            min: Duration::from_millis(50),
            max: Duration::from_secs(10),
            min_samples: 20,
            max_keys: 1_000,
        }
    }
}

/// Attempt delays that follow observed latency, per destination and route (aio-request's
/// `PercentileBasedRequestAttemptDelaysProvider`, Finagle's backup requests).
///
/// The strategy layer records the latency of every successful 2xx attempt (aio-request records
/// 2xx only); attempt `k` then waits `k * clamp(p95, min, max)` of the recent window, and `min`
/// until there is history. Latencies live in HdrHistograms (microseconds, two significant
/// digits), one per rotating bucket. Clones share the table.
///
/// ```
/// use std::time::Duration;
/// use tower_lifeline::strategy::{LatencyKey, PercentileDelays, PercentileSettings};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let delays = PercentileDelays::new(PercentileSettings::default()).unwrap();
/// let key = LatencyKey::new("http://inventory:8080", "/stock/{id}");
/// for ms in 1..=100 {
///     delays.record(&key, Duration::from_millis(ms));
/// }
/// let p95 = delays.delay(1, Some(&key));
/// assert!(p95 >= Duration::from_millis(94) && p95 <= Duration::from_millis(96), "{p95:?}");
/// assert_eq!(delays.delay(2, Some(&key)), p95 * 2);
/// # }
/// ```
#[derive(Clone)]
pub struct PercentileDelays {
    table: Arc<Table>,
}

impl fmt::Debug for PercentileDelays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PercentileDelays")
            .field("settings", &self.table.settings)
            .field("keys", &self.len())
            .finish()
    }
}

/// Settings [`PercentileDelays::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPercentileSettings(&'static str);

impl fmt::Display for InvalidPercentileSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid percentile delay settings: {}", self.0)
    }
}

impl std::error::Error for InvalidPercentileSettings {}

struct Table {
    settings: PercentileSettings,
    bucket_span: Duration,
    trackers: RwLock<HashMap<LatencyKey, Arc<Mutex<Tracker>>>>,
}

struct Tracker {
    buckets: Vec<Histogram<u64>>,
    current: usize,
    rotated_at: Instant,
    last_used: Instant,
    /// The percentile, recomputed at most once a second: merging histograms is not free.
    cached: Option<(Instant, Duration)>,
}

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes.
const HIGHEST_MICROS: u64 = 600_000_000;
const RECOMPUTE_EVERY: Duration = Duration::from_secs(1);

impl Tracker {
    fn new(buckets: usize, now: Instant) -> Self {
        let histogram =
            Histogram::new_with_bounds(1, HIGHEST_MICROS, 2).expect("constant bounds are valid");
        Tracker {
            buckets: vec![histogram; buckets],
            current: 0,
            rotated_at: now,
            last_used: now,
            cached: None,
        }
    }

    fn rotate(&mut self, now: Instant, span: Duration) {
        let mut elapsed = now.saturating_duration_since(self.rotated_at);
        let mut cleared = 0;
        while elapsed >= span && cleared < self.buckets.len() {
            self.current = (self.current + 1) % self.buckets.len();
            self.buckets[self.current].reset();
            self.rotated_at += span;
            elapsed -= span;
            cleared += 1;
            self.cached = None;
        }
        if elapsed >= span {
            // Idle for longer than the whole window: everything is gone, start afresh.
            self.rotated_at = now;
        }
    }

    fn percentile(&mut self, settings: &PercentileSettings, now: Instant) -> Option<Duration> {
        if let Some((at, value)) = self.cached {
            if now.saturating_duration_since(at) < RECOMPUTE_EVERY {
                return Some(value);
            }
        }
        // Counting is cheap; only merge when there is enough to trust, and only cache a real
        // value, so that the first observations take effect at once.
        let samples: u64 = self.buckets.iter().map(Histogram::len).sum();
        if samples < settings.min_samples {
            return None;
        }
        let mut merged = self.buckets[0].clone();
        for bucket in &self.buckets[1..] {
            // Same bounds everywhere, so adding cannot fail.
            let _ = merged.add(bucket);
        }
        let value = Duration::from_micros(merged.value_at_quantile(settings.percentile / 100.0));
        self.cached = Some((now, value));
        Some(value)
    }
}

impl PercentileDelays {
    /// A new, empty tracker. Refuses a percentile outside `(0, 100]`, no buckets, a window
    /// shorter than its buckets, `min > max`, or room for no keys.
    pub fn new(settings: PercentileSettings) -> Result<Self, InvalidPercentileSettings> {
        if !(settings.percentile > 0.0 && settings.percentile <= 100.0) {
            return Err(InvalidPercentileSettings("percentile must be in (0, 100]"));
        }
        if settings.buckets == 0 || settings.buckets > 60 {
            return Err(InvalidPercentileSettings("buckets must be 1 to 60"));
        }
        let bucket_span = settings.window / settings.buckets as u32;
        if bucket_span.is_zero() {
            return Err(InvalidPercentileSettings(
                "window too short for its buckets",
            ));
        }
        if settings.min > settings.max {
            return Err(InvalidPercentileSettings("min must not exceed max"));
        }
        if settings.max_keys == 0 {
            return Err(InvalidPercentileSettings("max_keys must be at least 1"));
        }
        Ok(PercentileDelays {
            table: Arc::new(Table {
                settings,
                bucket_span,
                trackers: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// Records the latency of an accepted attempt.
    pub fn record(&self, key: &LatencyKey, latency: Duration) {
        let now = Instant::now();
        let tracker = self.tracker(key, now);
        let mut tracker = tracker.lock().unwrap_or_else(|e| e.into_inner());
        tracker.rotate(now, self.table.bucket_span);
        tracker.last_used = now;
        let micros = (latency.as_micros() as u64).clamp(1, HIGHEST_MICROS);
        let current = tracker.current;
        // Clamped into bounds above, so recording cannot fail.
        let _ = tracker.buckets[current].record(micros);
    }

    /// The delay of attempt `k`: `k * clamp(percentile, min, max)`; `min` while the key has too
    /// few observations.
    pub fn delay(&self, k: u32, key: Option<&LatencyKey>) -> Duration {
        let settings = &self.table.settings;
        let observed = key.and_then(|key| {
            let now = Instant::now();
            let tracker = self.existing(key)?;
            let mut tracker = tracker.lock().unwrap_or_else(|e| e.into_inner());
            tracker.rotate(now, self.table.bucket_span);
            tracker.last_used = now;
            tracker.percentile(settings, now)
        });
        // aio-request: `k * clamp(p, min, max)`, and `min` with no history, so that hedging
        // works from the first request and after a key is forgotten.
        match observed {
            Some(p) => p.clamp(settings.min, settings.max).saturating_mul(k.max(1)),
            None => settings.min,
        }
    }

    /// How many destination and route pairs are tracked now (at most `max_keys`).
    pub fn len(&self) -> usize {
        self.table
            .trackers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn existing(&self, key: &LatencyKey) -> Option<Arc<Mutex<Tracker>>> {
        let trackers = self
            .table
            .trackers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        trackers.get(key).cloned()
    }

    fn tracker(&self, key: &LatencyKey, now: Instant) -> Arc<Mutex<Tracker>> {
        if let Some(tracker) = self.existing(key) {
            return tracker;
        }
        let mut trackers = self
            .table
            .trackers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if !trackers.contains_key(key) && trackers.len() >= self.table.settings.max_keys {
            // Full: forget the least recently used. A scan, but only when a new key arrives
            // at a full table, and the table is small by construction.
            let oldest = trackers
                .iter()
                .min_by_key(|(_, t)| t.lock().map(|t| t.last_used).unwrap_or(now))
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                trackers.remove(&oldest);
            }
        }
        trackers
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Tracker::new(self.table.settings.buckets, now))))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> LatencyKey {
        LatencyKey::new(format!("http://host-{n}"), "/")
    }

    #[tokio::test(start_paused = true)]
    async fn uses_min_until_enough_is_observed_then_k_times_the_clamped_percentile() {
        let delays = PercentileDelays::new(PercentileSettings::default()).unwrap();
        // No history at all (a new or a forgotten key): aio-request's minimum, so hedging works
        // from the first request.
        assert_eq!(delays.delay(1, Some(&key(0))), Duration::from_millis(50));
        assert_eq!(delays.delay(2, None), Duration::from_millis(50));
        for _ in 0..19 {
            delays.record(&key(0), Duration::from_millis(200));
        }
        assert_eq!(delays.delay(1, Some(&key(0))), Duration::from_millis(50));
        delays.record(&key(0), Duration::from_millis(200));
        // The twentieth observation counts at once, not a second later.
        let p = delays.delay(1, Some(&key(0)));
        assert!(
            p >= Duration::from_millis(199) && p <= Duration::from_millis(201),
            "{p:?}"
        );
        // Attempt k waits k times the clamped percentile.
        assert_eq!(delays.delay(2, Some(&key(0))), p * 2);
        for _ in 0..100 {
            delays.record(&key(1), Duration::from_millis(5));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            delays.delay(3, Some(&key(1))),
            Duration::from_millis(150),
            "3 x the minimum, not the minimum"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn follows_latency_as_old_buckets_rotate_out() {
        let delays = PercentileDelays::new(PercentileSettings::default()).unwrap();
        for _ in 0..100 {
            delays.record(&key(0), Duration::from_millis(400));
        }
        assert!(delays.delay(1, Some(&key(0))) >= Duration::from_millis(396));
        // Two and a half minutes later the slow bucket is still in the window...
        tokio::time::advance(Duration::from_secs(150)).await;
        for _ in 0..100 {
            delays.record(&key(0), Duration::from_millis(100));
        }
        assert!(delays.delay(1, Some(&key(0))) >= Duration::from_millis(396));
        // ...and after another, it has rotated out.
        tokio::time::advance(Duration::from_secs(150)).await;
        for _ in 0..100 {
            delays.record(&key(0), Duration::from_millis(100));
        }
        let d = delays.delay(1, Some(&key(0)));
        assert!(
            d >= Duration::from_millis(99) && d <= Duration::from_millis(101),
            "{d:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded_and_forgets_the_least_recently_used() {
        let settings = PercentileSettings {
            max_keys: 3,
            ..PercentileSettings::default()
        };
        let delays = PercentileDelays::new(settings).unwrap();
        for n in 0..3 {
            delays.record(&key(n), Duration::from_millis(1));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        delays.record(&key(0), Duration::from_millis(1)); // key 0 is fresh again
        for n in 3..1_000 {
            delays.record(&key(n), Duration::from_millis(1));
            assert!(delays.len() <= 3);
        }
        assert_eq!(delays.len(), 3);
    }

    #[test]
    fn refuses_bad_settings() {
        let bad = [
            PercentileSettings {
                percentile: 0.0,
                ..Default::default()
            },
            PercentileSettings {
                percentile: f64::NAN,
                ..Default::default()
            },
            PercentileSettings {
                buckets: 0,
                ..Default::default()
            },
            PercentileSettings {
                window: Duration::ZERO,
                ..Default::default()
            },
            PercentileSettings {
                min: Duration::from_secs(2),
                max: Duration::from_secs(1),
                ..Default::default()
            },
            PercentileSettings {
                max_keys: 0,
                ..Default::default()
            },
        ];
        for settings in bad {
            assert!(
                PercentileDelays::new(settings.clone()).is_err(),
                "{settings:?}"
            );
        }
    }
}
