//! The adaptive concurrency limit: how many requests may run at once, found from their latency
//! instead of configured.
//!
//! It follows Envoy's adaptive concurrency filter (a gradient controller), which Netflix's
//! concurrency-limits (Gradient2, Vegas) also inform:
//!
//! - every update interval (100 ms, or longer until 8 requests have finished, so that a quiet
//!   server's few samples do not swing it) the average service time of the requests that
//!   finished in it (successes and requests cut at their deadline, upload left out) is compared
//!   with the *minimum* service time, the latency of the work with no queue in front of it:
//!   `gradient = min_rtt * (1 + buffer) / sample`, clamped to `[0.5, 2]`, and
//!   `limit = gradient * limit + sqrt(limit)` (the square root is headroom for bursts), a fall
//!   smoothed as Gradient2 smooths (a fifth of the way each update), a rise not;
//! - the limit moves only when it has turned someone away since the last update: a server
//!   that is not limiting has no evidence it could take more, so a quiet hour does not leave it
//!   wide open (Gradient2 leaves an "app-limited" limit alone the same way); nor does it shrink
//!   then, for latency that is not a queue in front of the handlers (a busy CPU under a fast
//!   handler would drive it to the floor; the e2e bench did, before this rule);
//! - the minimum is measured at start (at the initial limit) and again every 30 s at half the
//!   current limit (at least the floor), for 20 samples or 1 s, after which the limit goes back
//!   where it was. Envoy drops to its floor instead; half is gentler on a server whose limit is
//!   in the hundreds, and still below the knee: the limit settles at the workers' count times
//!   the buffer plus the headroom, so half of it leaves no queue. Were half still above the
//!   knee, the minimum would come out high by the queue's share, and the gradient would then
//!   shrink the limit (the sample at the full limit is twice as queued), until the next
//!   measurement is below the knee.
//!
//! Why not Gradient2's long-term average as the reference: under sustained load the long-term
//! average drifts up to the loaded latency, and the limit with it (a failure its users report).
//! Why not the smallest latency seen recently: once a queue forms every request waits behind
//! it, so the smallest recent latency rises with the limit, and the limit climbs without end.
//! A measurement at half the limit costs half the capacity for a fraction of a second
//! every 30 s, and keeps the reference honest.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::sharded::ShardedCounter;

/// Settings of the adaptive limit. The defaults suit most servers: nothing needs configuring.
///
/// ```
/// use tower_lifeline::load_shed::{AdaptiveLimit, LoadShedLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let shed = LoadShedLayer::adaptive();
/// assert_eq!(shed.stats().limit, 20, "where it starts; it moves with the latency it sees");
/// let bigger = LoadShedLayer::adaptive_with(AdaptiveLimit::new().initial_limit(200));
/// assert_eq!(bigger.stats().limit, 200);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveLimit {
    initial: usize,
    min: usize,
    max: usize,
    buffer: f64,
    update_interval: Duration,
    min_rtt_interval: Duration,
    min_rtt_samples: u64,
}

impl Default for AdaptiveLimit {
    fn default() -> Self {
        AdaptiveLimit {
            initial: 20,
            min: 4,
            max: 1_000,
            buffer: 0.1,
            update_interval: Duration::from_millis(100),
            min_rtt_interval: Duration::from_secs(30),
            min_rtt_samples: 20,
        }
    }
}

impl AdaptiveLimit {
    /// The defaults: starts at 20, between 4 and 1,000, a 10% latency buffer, updated every
    /// 100 ms, the minimum latency measured again every 30 s over 20 samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// The limit at start (default 20), clamped into the bounds.
    pub fn initial_limit(mut self, initial: usize) -> Self {
        self.initial = initial;
        self
    }

    /// The bounds of the limit (default 4 and 1,000); `min` is at least 1, `max` at least `min`.
    pub fn bounds(mut self, min: usize, max: usize) -> Self {
        self.min = min.max(1);
        self.max = max.max(self.min);
        self
    }

    /// How much slower than the minimum latency the server may run before the limit shrinks
    /// (default 0.1: 10%; Envoy's is 25%, which queues more and, measured here, left High less
    /// room under overload).
    pub fn buffer(mut self, buffer: f64) -> Self {
        self.buffer = if buffer.is_finite() {
            buffer.max(0.0)
        } else {
            0.1
        };
        self
    }

    /// How often the limit is recomputed (default 100 ms).
    pub fn update_interval(mut self, interval: Duration) -> Self {
        self.update_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often the minimum latency is measured again (default 30 s).
    pub fn min_rtt_interval(mut self, interval: Duration) -> Self {
        self.min_rtt_interval = interval;
        self
    }

    fn clamp(&self, limit: f64) -> usize {
        // `as` saturates, and NaN becomes 0, which the clamp lifts to the minimum.
        (limit.round() as usize).clamp(self.min, self.max)
    }
}

/// How long a minimum-latency measurement may last before it ends with what it has.
const MAX_MEASUREMENT: Duration = Duration::from_secs(1);

/// The share of the way down to its new value the limit moves at each update (Gradient2's
/// smoothing, applied to decreases only).
const SMOOTHING: f64 = 0.2;

/// Samples a window needs before it moves the limit; a window with fewer is extended.
const MIN_WINDOW_SAMPLES: u64 = 8;

/// The limit and what it learns from, shared by every request of a load shedder.
pub(crate) struct Controller {
    settings: AdaptiveLimit,
    epoch: Instant,
    limit: AtomicUsize,
    /// The current window's samples: their sum in nanoseconds and their count.
    /// Written by every sample, from every core: split per core, summed at the window's end.
    window_nanos: ShardedCounter,
    window_samples: ShardedCounter,
    /// Nanoseconds from `epoch` to the end of the current window.
    window_end: AtomicU64,
    estimator: Mutex<Estimator>,
}

struct Estimator {
    min_rtt: Option<Duration>,
    phase: Phase,
    /// Refusals for overload counted at the last update.
    shed_seen: u64,
}

enum Phase {
    /// Measuring the minimum latency at a low limit; then back to `restore`.
    Measuring {
        restore: usize,
        since: Instant,
        nanos: u128,
        samples: u64,
    },
    /// Following the gradient until `next_measurement`.
    Following { next_measurement: Instant },
}

impl Controller {
    pub(crate) fn new(settings: AdaptiveLimit) -> Self {
        let epoch = Instant::now();
        let initial = settings.clamp(settings.initial as f64);
        Controller {
            settings,
            epoch,
            limit: AtomicUsize::new(initial),
            window_nanos: ShardedCounter::new(),
            window_samples: ShardedCounter::new(),
            window_end: AtomicU64::new(nanos(settings.update_interval)),
            estimator: Mutex::new(Estimator {
                min_rtt: None,
                // The first measurement runs at the initial limit: nothing is known yet, and
                // a new instance should not shed most of its first requests.
                phase: Phase::Measuring {
                    restore: initial,
                    since: epoch,
                    nanos: 0,
                    samples: 0,
                },
                shed_seen: 0,
            }),
        }
    }

    pub(crate) fn settings(&self) -> &AdaptiveLimit {
        &self.settings
    }

    /// Samples in the current window, for tests.
    #[cfg(test)]
    pub(crate) fn window_samples(&self) -> u64 {
        u64::try_from(self.window_samples.sum()).unwrap_or(0)
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Records one service time, finished at `now`; at the end of a window, updates the limit.
    /// `shed` gives the number of overload refusals so far.
    pub(crate) fn record(&self, sample: Duration, now: Instant, shed: impl FnOnce() -> u64) {
        self.window_nanos
            .add(i64::try_from(nanos(sample)).unwrap_or(i64::MAX));
        self.window_samples.add(1);
        let since_epoch = nanos(now.saturating_duration_since(self.epoch));
        if since_epoch < self.window_end.load(Ordering::Relaxed) {
            return;
        }
        // One updater at a time; the others go on (their samples count in the next window).
        let Ok(mut estimator) = self.estimator.try_lock() else {
            return;
        };
        if since_epoch < self.window_end.load(Ordering::Relaxed) {
            return;
        }
        if self.window_samples.sum() < i64::try_from(MIN_WINDOW_SAMPLES).unwrap_or(i64::MAX) {
            // Too few to say anything: the window goes on, its samples kept.
            self.window_end.store(
                since_epoch + nanos(self.settings.update_interval),
                Ordering::Relaxed,
            );
            return;
        }
        self.window_end.store(
            since_epoch + nanos(self.settings.update_interval),
            Ordering::Relaxed,
        );
        let total = u64::try_from(self.window_nanos.take()).unwrap_or(0);
        let count = u64::try_from(self.window_samples.take()).unwrap_or(0);
        self.update(&mut estimator, total, count, now, shed());
    }

    fn update(&self, estimator: &mut Estimator, total: u64, count: u64, now: Instant, shed: u64) {
        let limited = shed != estimator.shed_seen;
        estimator.shed_seen = shed;
        let settings = &self.settings;
        match &mut estimator.phase {
            Phase::Measuring {
                restore,
                since,
                nanos: sum,
                samples,
            } => {
                *sum += u128::from(total);
                *samples += count;
                let long_enough = now.saturating_duration_since(*since) >= MAX_MEASUREMENT;
                if *samples < settings.min_rtt_samples && !long_enough {
                    return;
                }
                if *samples > 0 {
                    let average = *sum / u128::from(*samples);
                    let average = u64::try_from(average).unwrap_or(u64::MAX);
                    estimator.min_rtt = Some(Duration::from_nanos(average.max(1)));
                }
                let restore = *restore;
                tracing::debug!(min_rtt = ?estimator.min_rtt, limit = restore, "minimum latency measured");
                self.limit.store(restore, Ordering::Relaxed);
                estimator.phase = Phase::Following {
                    next_measurement: now + settings.min_rtt_interval,
                };
            }
            Phase::Following { next_measurement } => {
                if now >= *next_measurement {
                    let restore = self.limit();
                    self.limit
                        .store((restore / 2).max(settings.min), Ordering::Relaxed);
                    estimator.phase = Phase::Measuring {
                        restore,
                        since: now,
                        nanos: 0,
                        samples: 0,
                    };
                    return;
                }
                if !limited {
                    // Turning nobody away: the limit is not what holds the server back. Growing
                    // it has no evidence behind it, and shrinking it would answer latency that
                    // is not queueing in front of the handlers (a busy CPU, a slow dependency):
                    // a fast handler on a loaded machine would be driven to the floor. If
                    // latency grows, requests in flight grow with it (Little's law) until the
                    // limit binds, and then it moves.
                    return;
                }
                let (Some(min_rtt), Some(average)) = (estimator.min_rtt, total.checked_div(count))
                else {
                    return;
                };
                let limit = self.limit() as f64;
                let target = min_rtt.as_secs_f64() * (1.0 + settings.buffer);
                let sample = Duration::from_nanos(average.max(1)).as_secs_f64();
                let gradient = (target / sample).clamp(0.5, 2.0);
                let mut next = gradient * limit + limit.sqrt();
                if next < limit {
                    // Gradient2's smoothing, on the way down: one noisy window (a CPU stall on a
                    // shared machine) takes the limit a fifth of the way, not all of it. On the
                    // way up there is no noise to fear: it grows only while turning callers away
                    // with the latency under its target.
                    next = limit + (next - limit) * SMOOTHING;
                    // The limit is whole: a fall smaller than one request must still count.
                    next = next.floor();
                }
                self.limit.store(settings.clamp(next), Ordering::Relaxed);
            }
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `windows` update intervals of samples of `latency`, `per_window` each, to
    /// `controller`, with overload refusals in each window when `limited`.
    async fn feed(
        controller: &Controller,
        windows: u32,
        per_window: u32,
        limited: bool,
        latency: impl Fn(usize) -> Duration,
        shed: &mut u64,
    ) {
        let step = controller.settings().update_interval / per_window;
        for _ in 0..windows {
            for _ in 0..per_window {
                tokio::time::advance(step).await;
                if limited {
                    *shed += 1;
                }
                let current = *shed;
                controller.record(latency(controller.limit()), Instant::now(), || current);
            }
        }
    }

    /// A server of 20 workers of 25 ms: with `limit` requests in flight, the queue in front of
    /// the workers makes each take 25 ms x limit / 20 once the limit is past 20.
    fn twenty_workers(limit: usize) -> Duration {
        Duration::from_millis(25) * (limit.max(20) as u32) / 20
    }

    #[tokio::test(start_paused = true)]
    async fn under_overload_the_limit_settles_just_above_the_workers() {
        let controller = Controller::new(AdaptiveLimit::new());
        let mut shed = 0;
        feed(&controller, 100, 30, true, twenty_workers, &mut shed).await;
        let limit = controller.limit();
        // Every worker busy (goodput) with a queue short enough for a 100 ms deadline.
        assert!((20..=45).contains(&limit), "{limit}");
        assert!(twenty_workers(limit) < Duration::from_millis(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_pushed_down_recovers_when_the_server_is_fast_again() {
        let controller = Controller::new(AdaptiveLimit::new());
        let mut shed = 0;
        feed(&controller, 10, 30, true, twenty_workers, &mut shed).await;
        // A slow spell: every request takes a second, and in 5 s the limit falls to where
        // halving it and adding the headroom meet (5, near the floor of 4).
        feed(
            &controller,
            50,
            30,
            true,
            |_| Duration::from_secs(1),
            &mut shed,
        )
        .await;
        assert!(controller.limit() <= 5, "{}", controller.limit());
        // Fast again, still turning callers away: back above the workers within 2 s.
        feed(&controller, 20, 30, true, twenty_workers, &mut shed).await;
        assert!(controller.limit() >= 20, "{}", controller.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_slow_samples_of_a_quiet_server_do_not_move_the_limit_alone() {
        let controller = Controller::new(AdaptiveLimit::new());
        let mut shed = 0;
        feed(
            &controller,
            10,
            30,
            true,
            |_| Duration::from_millis(25),
            &mut shed,
        )
        .await;
        // One more window, to start the quiet spell on an empty one.
        feed(
            &controller,
            1,
            30,
            false,
            |_| Duration::from_millis(25),
            &mut shed,
        )
        .await;
        tokio::time::advance(Duration::from_millis(100)).await;
        controller.record(Duration::from_millis(25), Instant::now(), || shed);
        let before = controller.limit();
        // A quiet spell: one request every 100 ms window, one of them slow.
        let mut slow_once = Some(Duration::from_millis(500));
        for _ in 0..7 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let sample = slow_once.take().unwrap_or(Duration::from_millis(25));
            controller.record(sample, Instant::now(), || shed);
        }
        assert_eq!(controller.limit(), before, "seven samples are not a window");
        let stored = controller.window_samples();
        assert_eq!(stored, 7, "kept for the window that has enough");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_that_turns_nobody_away_does_not_shrink_for_a_slow_machine_either() {
        let controller = Controller::new(AdaptiveLimit::new());
        let mut shed = 0;
        // Measured quiet: 50 microseconds a request.
        feed(
            &controller,
            2,
            30,
            false,
            |_| Duration::from_micros(50),
            &mut shed,
        )
        .await;
        // Then the CPU is busy and every request takes a millisecond, with nobody turned away.
        feed(
            &controller,
            50,
            30,
            false,
            |_| Duration::from_millis(1),
            &mut shed,
        )
        .await;
        assert_eq!(controller.limit(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_that_turns_nobody_away_does_not_grow() {
        let controller = Controller::new(AdaptiveLimit::new());
        let mut shed = 0;
        feed(
            &controller,
            50,
            30,
            false,
            |_| Duration::from_millis(5),
            &mut shed,
        )
        .await;
        assert_eq!(controller.limit(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn the_minimum_latency_is_measured_again_at_half_the_limit_and_the_limit_restored() {
        let controller = Controller::new(AdaptiveLimit::new());
        let mut shed = 0;
        feed(&controller, 10, 30, true, twenty_workers, &mut shed).await;
        let before = controller.limit();
        tokio::time::advance(Duration::from_secs(30)).await;
        feed(&controller, 1, 30, true, twenty_workers, &mut shed).await;
        assert_eq!(
            controller.limit(),
            before / 2,
            "measuring at half the limit"
        );
        feed(&controller, 1, 30, true, twenty_workers, &mut shed).await;
        let after = controller.limit();
        assert!(after + 10 >= before, "restored: {before} then {after}");
    }
}
