use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Tokens are counted in thousandths, so a 20% ratio deposits 200 per request and a retry costs
/// 1,000: integer atomics, no float, no lock.
const RETRY_COST: i64 = 1_000;

/// A retry budget shared by every request through one client: extra attempts (retries and
/// hedges) may add at most `ratio` of the traffic, plus a small floor per second so that a quiet
/// client can still retry (Finagle's and Envoy's budgets, the SRE book's 10% per client).
///
/// Every original request deposits `ratio` of a token; every extra attempt withdraws a whole one;
/// the floor adds `min_per_second` tokens each second. The balance is capped (by default at ten
/// seconds' worth of the floor plus 100 tokens), so a long healthy spell cannot bank retries for a
/// storm. Everything is a few atomic operations: no lock on the request path.
///
/// ```
/// use std::time::Duration;
/// use tower_lifeline::strategy::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let budget = RetryBudget::new(0.2, 0).unwrap();
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// // Ten requests at 20% buy two retries.
/// assert!(budget.try_withdraw());
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw());
/// # }
/// ```
pub struct RetryBudget {
    ratio_milli: i64,
    floor_milli_per_ms: i64,
    cap_milli: i64,
    balance: AtomicI64,
    epoch: Instant,
    /// Milliseconds since `epoch` up to which the floor has been paid in.
    floor_paid_until: AtomicU64,
    refused: AtomicU64,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &(self.ratio_milli as f64 / 1000.0))
            .field(
                "balance",
                &(self.balance.load(Ordering::Relaxed) as f64 / 1000.0),
            )
            .field("refused", &self.refused())
            .finish()
    }
}

/// Settings [`RetryBudget::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBudget(&'static str);

impl fmt::Display for InvalidBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid retry budget: {}", self.0)
    }
}

impl std::error::Error for InvalidBudget {}

impl RetryBudget {
    /// A budget allowing extra attempts worth `ratio` of the requests (0.2 = 20%) plus
    /// `min_per_second`. Refuses a ratio outside `0.0..=10.0` or a floor over a million a second.
    pub fn new(ratio: f64, min_per_second: u32) -> Result<Self, InvalidBudget> {
        if !(0.0..=10.0).contains(&ratio) {
            return Err(InvalidBudget("ratio must be between 0.0 and 10.0"));
        }
        if min_per_second > 1_000_000 {
            return Err(InvalidBudget("min_per_second must be at most 1,000,000"));
        }
        let floor = i64::from(min_per_second);
        let cap_milli = (floor * 10 + 100) * RETRY_COST;
        Ok(RetryBudget {
            ratio_milli: (ratio * RETRY_COST as f64).round() as i64,
            // min_per_second tokens a second is min_per_second thousandths a millisecond.
            floor_milli_per_ms: floor,
            cap_milli,
            // A new client may retry at once, up to one second of the floor.
            balance: AtomicI64::new(floor * RETRY_COST),
            epoch: Instant::now(),
            floor_paid_until: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The most tokens that can be banked (default: ten seconds of the floor plus 100).
    pub fn with_cap(mut self, tokens: u32) -> Self {
        self.cap_milli = i64::from(tokens) * RETRY_COST;
        self
    }

    /// Records an original request.
    pub fn deposit(&self) {
        self.add(self.ratio_milli);
    }

    /// Takes a token for an extra attempt; `false` (and counted as a refusal) when none is left.
    pub fn try_withdraw(&self) -> bool {
        self.pay_floor();
        let taken = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |balance| {
                (balance >= RETRY_COST).then_some(balance - RETRY_COST)
            })
            .is_ok();
        if !taken {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// How many extra attempts were refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whole tokens available now.
    pub fn balance(&self) -> u64 {
        self.pay_floor();
        (self.balance.load(Ordering::Acquire).max(0) / RETRY_COST) as u64
    }

    fn add(&self, milli: i64) {
        if milli == 0 {
            return;
        }
        // Add then cap: two atomics, and the cap is never exceeded for long.
        let before = self.balance.fetch_add(milli, Ordering::AcqRel);
        if before + milli > self.cap_milli {
            self.balance.fetch_min(self.cap_milli, Ordering::AcqRel);
        }
    }

    fn pay_floor(&self) {
        if self.floor_milli_per_ms == 0 {
            return;
        }
        let now = Instant::now().saturating_duration_since(self.epoch);
        let now_ms = now.as_millis().min(u128::from(u64::MAX)) as u64;
        let paid = self.floor_paid_until.load(Ordering::Acquire);
        // Only the caller that moves the mark pays, so no millisecond is paid twice.
        if now_ms > paid
            && self
                .floor_paid_until
                .compare_exchange(paid, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let elapsed = (now_ms - paid).min(Duration::from_secs(3600).as_millis() as u64);
            self.add(elapsed as i64 * self.floor_milli_per_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn ratio_limits_extra_attempts() {
        let budget = RetryBudget::new(0.2, 0).unwrap();
        let mut granted = 0;
        for _ in 0..1_000 {
            budget.deposit();
            if budget.try_withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 200);
        assert_eq!(budget.refused(), 800);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_with_time() {
        let budget = RetryBudget::new(0.0, 10).unwrap();
        let drained = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(drained, 10, "one second of floor to start with");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..100).filter(|_| budget.try_withdraw()).count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_balance_is_capped() {
        let budget = RetryBudget::new(1.0, 0).unwrap().with_cap(5);
        for _ in 0..1_000 {
            budget.deposit();
        }
        assert_eq!(budget.balance(), 5);
    }

    #[test]
    fn refuses_bad_settings() {
        assert!(RetryBudget::new(-0.1, 0).is_err());
        assert!(RetryBudget::new(f64::NAN, 0).is_err());
        assert!(RetryBudget::new(11.0, 0).is_err());
        assert!(RetryBudget::new(0.2, 2_000_000).is_err());
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let budget = Arc::new(RetryBudget::new(0.0, 0).unwrap().with_cap(1_000));
        budget.add(500 * RETRY_COST);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                let handle = rt.handle().clone();
                std::thread::spawn(move || {
                    let _guard = handle.enter();
                    (0..1_000).filter(|_| budget.try_withdraw()).count()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 500);
    }
}
