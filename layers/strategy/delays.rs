use std::fmt;
use std::time::Duration;

use super::percentile::{LatencyKey, PercentileDelays};

/// The longest delay computed: jitter multiplies it, and must not overflow.
const LONGEST: Duration = crate::context::FAR_FUTURE;

/// How long to wait before an attempt.
///
/// For a sequential strategy it is the pause before retry `k` (k = 1 for the first retry); for a
/// parallel strategy it is how long after the first attempt attempt `k` starts.
///
/// ```
/// use std::time::Duration;
/// use tower_lifeline::strategy::Delays;
///
/// let constant = Delays::constant(Duration::from_millis(100));
/// assert_eq!(constant.delay(3), Duration::from_millis(100));
///
/// // aio-request's linear backoff: min + k * multiplier, here without jitter.
/// let linear = Delays::linear(Duration::from_millis(50), Duration::from_millis(50)).jitter(0.0);
/// assert_eq!(linear.delay(1), Duration::from_millis(100));
/// assert_eq!(linear.delay(2), Duration::from_millis(150));
///
/// // Exponential: random(0.8, 1.0) * base * 2^(k-1), capped.
/// let exponential = Delays::exponential(Duration::from_millis(100), Duration::from_secs(1));
/// let d = exponential.delay(3);
/// assert!(d >= Duration::from_millis(320) && d <= Duration::from_millis(400));
/// assert_eq!(exponential.delay(20), Duration::from_secs(1));
/// ```
#[derive(Clone)]
pub struct Delays {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Constant(Duration),
    Linear {
        min: Duration,
        multiplier: Duration,
        jitter: f64,
    },
    Exponential {
        base: Duration,
        max: Duration,
    },
    FullJitter {
        base: Duration,
        max: Duration,
    },
    Percentile(PercentileDelays),
}

impl fmt::Debug for Delays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Constant(d) => f.debug_tuple("Constant").field(d).finish(),
            Kind::Linear {
                min,
                multiplier,
                jitter,
            } => f
                .debug_struct("Linear")
                .field("min", min)
                .field("multiplier", multiplier)
                .field("jitter", jitter)
                .finish(),
            Kind::Exponential { base, max } => f
                .debug_struct("Exponential")
                .field("base", base)
                .field("max", max)
                .finish(),
            Kind::FullJitter { base, max } => f
                .debug_struct("FullJitter")
                .field("base", base)
                .field("max", max)
                .finish(),
            Kind::Percentile(p) => f.debug_tuple("Percentile").field(p).finish(),
        }
    }
}

impl Delays {
    /// The same delay every time.
    pub fn constant(delay: Duration) -> Self {
        Delays {
            kind: Kind::Constant(delay),
        }
    }

    /// aio-request's linear backoff: `min + k * multiplier`, spread by ±20% jitter so that
    /// clients that failed together do not retry together. Change the spread with
    /// [`jitter`](Self::jitter).
    pub fn linear(min: Duration, multiplier: Duration) -> Self {
        Delays {
            kind: Kind::Linear {
                min,
                multiplier,
                jitter: 0.2,
            },
        }
    }

    /// Exponential backoff with jitter, as the httpx production guide has it:
    /// `random(0.8, 1.0) * base * 2^(k-1)`, at most `max`.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Delays {
            kind: Kind::Exponential { base, max },
        }
    }

    /// "Full jitter" (AWS architecture blog): `random(0, min(max, base * 2^(k-1)))`. Spreads
    /// retries the most; the expected wait is half the exponential one.
    pub fn full_jitter(base: Duration, max: Duration) -> Self {
        Delays {
            kind: Kind::FullJitter { base, max },
        }
    }

    /// Delays that follow the observed latency of the destination: attempt `k` waits
    /// `k * p95`, clamped. See [`PercentileDelays`].
    pub fn percentile(tracker: PercentileDelays) -> Self {
        Delays {
            kind: Kind::Percentile(tracker),
        }
    }

    /// For linear delays, the relative spread of the jitter, clamped to `0.0..=1.0`
    /// (0.2 means ±20%). Other kinds are returned unchanged.
    pub fn jitter(mut self, spread: f64) -> Self {
        if let Kind::Linear { jitter, .. } = &mut self.kind {
            *jitter = if spread.is_finite() {
                spread.clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        self
    }

    /// The delay before attempt `k` (1-based count of extra attempts), for delays that do not
    /// depend on the destination. Percentile delays answer their upper bound here: without a
    /// destination there is nothing observed to go by.
    pub fn delay(&self, k: u32) -> Duration {
        self.delay_for(k, None)
    }

    pub(crate) fn tracker(&self) -> Option<&PercentileDelays> {
        match &self.kind {
            Kind::Percentile(tracker) => Some(tracker),
            _ => None,
        }
    }

    pub(crate) fn delay_for(&self, k: u32, key: Option<&LatencyKey>) -> Duration {
        let doubling = |base: Duration| {
            base.saturating_mul(2u32.saturating_pow(k.saturating_sub(1)))
                .min(LONGEST)
        };
        match &self.kind {
            Kind::Constant(d) => *d,
            Kind::Linear {
                min,
                multiplier,
                jitter,
            } => {
                // Capped before scaling: `mul_f64` panics past `Duration::MAX`.
                let d = min
                    .saturating_add(multiplier.saturating_mul(k))
                    .min(LONGEST);
                d.mul_f64(1.0 + jitter * (2.0 * fastrand::f64() - 1.0))
            }
            // Jitter first, then the cap: a capped delay is exactly the cap, as the guide has it.
            Kind::Exponential { base, max } => doubling(*base)
                .mul_f64(0.8 + 0.2 * fastrand::f64())
                .min(*max),
            Kind::FullJitter { base, max } => doubling(*base).min(*max).mul_f64(fastrand::f64()),
            Kind::Percentile(tracker) => tracker.delay(k, key),
        }
    }
}
