//! One scope's breaker: its state machine, its rolling window, and the ticket each admitted
//! request carries until its outcome is counted.
//!
//! Per scope, everything the closed-state path touches is an atomic: the state word, the
//! window's buckets (one `AtomicU64` each) and the consecutive-failure counter. Transitions are
//! compare-and-swaps on the state word, so exactly one caller wins each of them (the one probe
//! among many callers, say) and no request ever waits for another. The table is sharded, each
//! shard behind its own `RwLock`, and a service instance caches the scope it used last, so a
//! client talking to one destination does not touch the table at all after its first call.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::CircuitOpen;
use crate::outcome::Outcome;

use super::encoding::{
    generation_of, kind_of, pack_bucket, pack_state, reopen_ms_of, slot_epoch, state_of,
    unpack_bucket, CLOSED, GENERATION_MASK, HALF_OPEN, OPEN, TAG_MASK,
};
use super::registry::{CircuitState, OnTransition, ScopeSnapshot, Transition};

/// What every scope of one table shares: settings in the units the arithmetic uses, the clock
/// origin and the listeners.
pub(super) struct Core {
    pub(super) origin: Instant,
    pub(super) failure_threshold: f64,
    pub(super) minimum_throughput: u64,
    pub(super) windows: u64,
    pub(super) bucket_nanos: u64,
    pub(super) break_nanos: u64,
    pub(super) stale_after_ms: u64,
    pub(super) consecutive_failures: Option<u32>,
    pub(super) listeners: RwLock<Vec<Arc<dyn OnTransition>>>,
    /// Calls refused by an open or half-open breaker, for metrics; touched only on refusal.
    pub(super) refused: AtomicU64,
}

impl Core {
    pub(super) fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn epoch(&self, now: Instant) -> u64 {
        self.nanos(now) / self.bucket_nanos
    }

    /// The first millisecond at which a breaker opened at `now` lets a probe go: rounded up, so
    /// a probe never goes early.
    pub(super) fn reopen_ms(&self, now: Instant) -> u64 {
        self.nanos(now)
            .saturating_add(self.break_nanos)
            .div_ceil(1_000_000)
    }

    pub(super) fn instant_at_ms(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    pub(super) fn emit(&self, scope: &Scope, from: CircuitState, to: CircuitState, now: Instant) {
        let (requests, failures) = scope.window(self.epoch(now));
        let failure_ratio = if requests == 0 {
            0.0
        } else {
            failures as f64 / requests as f64
        };
        tracing::info!(
            scope = %scope.name,
            from = from.as_str(),
            to = to.as_str(),
            failure_ratio,
            requests_in_window = requests,
            "circuit breaker changed state"
        );
        let transition = Transition {
            scope: &scope.name,
            from,
            to,
            failure_ratio,
            requests,
        };
        for listener in self.listeners() {
            listener.on_transition(&transition);
        }
    }

    /// A copy of the listeners, so that none is called under the lock (one may add another).
    /// Transitions are rare: the copy costs nothing that matters.
    pub(super) fn listeners(&self) -> Vec<Arc<dyn OnTransition>> {
        self.listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One scope's breaker.
pub(super) struct Scope {
    pub(super) core: Arc<Core>,
    pub(super) name: Arc<str>,
    pub(super) state: AtomicU64,
    pub(super) consecutive: AtomicU32,
    pub(super) buckets: Box<[AtomicU64]>,
    /// Milliseconds since the origin of the last admission, for idleness and LRU eviction.
    pub(super) last_used_ms: AtomicU64,
    /// Set once the table has dropped this scope: services caching it look it up again.
    pub(super) forgotten: AtomicBool,
}

/// The outcome of asking a scope to let a request through.
pub(super) enum Admission {
    Admit(Ticket),
    Refuse(CircuitOpen),
}

impl Scope {
    pub(super) fn new(core: Arc<Core>, name: &str, now_ms: u64) -> Self {
        let buckets = (0..core.windows).map(|_| AtomicU64::new(0)).collect();
        Scope {
            core,
            name: name.into(),
            state: AtomicU64::new(pack_state(CLOSED, 0, 0)),
            consecutive: AtomicU32::new(0),
            buckets,
            last_used_ms: AtomicU64::new(now_ms),
            forgotten: AtomicBool::new(false),
        }
    }

    /// The state right now.
    pub(super) fn state(&self) -> CircuitState {
        state_of(self.state.load(Ordering::Acquire))
    }

    /// Lets a request through (closed, or as the one probe after the break) or refuses it.
    pub(super) fn admit(self: &Arc<Self>, now: Instant) -> Admission {
        let now_nanos = self.core.nanos(now);
        let now_ms = now_nanos / 1_000_000;
        // Only write when the millisecond changed: a store per request would bounce the line.
        let last_used_ms = self.last_used_ms.load(Ordering::Relaxed);
        if last_used_ms != now_ms {
            self.last_used_ms.store(now_ms, Ordering::Relaxed);
            if now_ms.saturating_sub(last_used_ms) >= self.core.stale_after_ms {
                self.clear_buckets();
            }
        }
        let mut word = self.state.load(Ordering::Acquire);
        loop {
            match kind_of(word) {
                CLOSED => {
                    return Admission::Admit(Ticket {
                        scope: self.clone(),
                        generation: generation_of(word),
                        probe: false,
                        done: false,
                        deadline: None,
                    })
                }
                OPEN => {
                    let reopen_ms = reopen_ms_of(word);
                    if now_nanos < reopen_ms.saturating_mul(1_000_000) {
                        self.core.refused.fetch_add(1, Ordering::Relaxed);
                        return Admission::Refuse(CircuitOpen::new(
                            self.name.clone(),
                            CircuitState::Open,
                            Some(self.core.instant_at_ms(reopen_ms)),
                        ));
                    }
                    // The break is over: whoever swaps Open for HalfOpen is the one probe.
                    let generation = generation_of(word) + 1;
                    let half_open = pack_state(HALF_OPEN, generation, 0);
                    match self.state.compare_exchange(
                        word,
                        half_open,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            self.core
                                .emit(self, CircuitState::Open, CircuitState::HalfOpen, now);
                            return Admission::Admit(Ticket {
                                scope: self.clone(),
                                generation: generation & GENERATION_MASK,
                                probe: true,
                                done: false,
                                deadline: None,
                            });
                        }
                        Err(current) => word = current,
                    }
                }
                _ => {
                    self.core.refused.fetch_add(1, Ordering::Relaxed);
                    return Admission::Refuse(CircuitOpen::new(
                        self.name.clone(),
                        CircuitState::HalfOpen,
                        None,
                    ));
                }
            }
        }
    }

    /// Requests and failures in the window that ends with `epoch`.
    pub(super) fn window(&self, epoch: u64) -> (u64, u64) {
        let windows = self.core.windows;
        let (mut requests, mut failures) = (0, 0);
        for (slot, bucket) in (0u64..).zip(self.buckets.iter()) {
            let Some(expected) = slot_epoch(epoch, slot, windows) else {
                continue;
            };
            let (tag, f, r) = unpack_bucket(bucket.load(Ordering::Acquire));
            if tag == expected & TAG_MASK {
                requests += r;
                failures += f;
            }
        }
        (requests, failures)
    }

    /// Counts one outcome in the bucket of `epoch`.
    pub(super) fn count(&self, epoch: u64, failed: bool) {
        let windows = self.core.windows;
        let slot = (epoch % windows) as usize;
        let tag = epoch & TAG_MASK;
        let bucket = &self.buckets[slot];
        let failure = u64::from(failed);
        let mut word = bucket.load(Ordering::Relaxed);
        loop {
            let (old_tag, failures, requests) = unpack_bucket(word);
            let (new, fresh) = if old_tag == tag {
                (pack_bucket(tag, failures + failure, requests + 1), false)
            } else {
                (pack_bucket(tag, failure, 1), true)
            };
            match bucket.compare_exchange_weak(word, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) if fresh => break self.sweep(epoch),
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
    }

    /// Zeroes the buckets that fell out of the window, once per new bucket, so that a bucket
    /// is never left alone long enough for its 24-bit tag to come round again while the scope
    /// is in use. Compare-and-swap only zeroes what it read, so a concurrent count survives.
    pub(super) fn sweep(&self, epoch: u64) {
        let windows = self.core.windows;
        for (slot, bucket) in (0u64..).zip(self.buckets.iter()) {
            let word = bucket.load(Ordering::Relaxed);
            let (tag, _, requests) = unpack_bucket(word);
            if requests == 0 {
                continue;
            }
            let current = slot_epoch(epoch, slot, windows);
            // Keep this window's bucket and the slot's next epoch, which a caller whose clock
            // read came a moment later may already be filling.
            let keep = current.is_some_and(|e| tag == e & TAG_MASK)
                || tag == slot_epoch(epoch + windows, slot, windows).unwrap_or(0) & TAG_MASK;
            if !keep {
                let _ = bucket.compare_exchange(
                    word,
                    pack_bucket(tag, 0, 0),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    pub(super) fn clear_buckets(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Release);
        }
    }

    pub(super) fn reset_window(&self) {
        self.clear_buckets();
        self.consecutive.store(0, Ordering::Release);
    }

    /// Records the outcome of a request let through while closed under `generation`.
    pub(super) fn record_closed(&self, generation: u64, failed: bool, now: Instant) {
        let word = self.state.load(Ordering::Acquire);
        // The state changed since admission: this outcome belongs to a window that is gone.
        if kind_of(word) != CLOSED || generation_of(word) != generation {
            return;
        }
        let epoch = self.core.epoch(now);
        self.count(epoch, failed);
        if !failed {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return;
        }
        let in_a_row = self
            .consecutive
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let by_count = self
            .core
            .consecutive_failures
            .is_some_and(|n| in_a_row >= n);
        let by_ratio = || {
            let (requests, failures) = self.window(epoch);
            requests >= self.core.minimum_throughput
                && failures as f64 >= self.core.failure_threshold * requests as f64
        };
        if by_count || by_ratio() {
            let open = pack_state(OPEN, generation + 1, self.core.reopen_ms(now));
            if self
                .state
                .compare_exchange(word, open, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.core
                    .emit(self, CircuitState::Closed, CircuitState::Open, now);
            }
        }
    }

    /// Ends the half-open state of `generation`: closed with a fresh window after a success,
    /// open for another break after a failure, open with the break over (the next caller
    /// probes) when the probe ended without an outcome.
    pub(super) fn end_probe(&self, generation: u64, outcome: ProbeOutcome, now: Instant) {
        let half_open = pack_state(HALF_OPEN, generation, 0);
        let (next, to) = match outcome {
            ProbeOutcome::Accepted => {
                // Only the probe leaves half-open, so nothing else writes the window meanwhile.
                self.reset_window();
                (pack_state(CLOSED, generation + 1, 0), CircuitState::Closed)
            }
            ProbeOutcome::Rejected => (
                pack_state(OPEN, generation + 1, self.core.reopen_ms(now)),
                CircuitState::Open,
            ),
            ProbeOutcome::Abandoned => (
                pack_state(OPEN, generation + 1, self.core.nanos(now) / 1_000_000),
                CircuitState::Open,
            ),
        };
        if self
            .state
            .compare_exchange(half_open, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.core.emit(self, CircuitState::HalfOpen, to, now);
        }
    }

    pub(super) fn snapshot(&self, now: Instant) -> ScopeSnapshot {
        let word = self.state.load(Ordering::Acquire);
        let (requests, failures) = self.window(self.core.epoch(now));
        ScopeSnapshot {
            scope: self.name.to_string(),
            state: state_of(word),
            requests,
            failures,
            consecutive_failures: self.consecutive.load(Ordering::Acquire),
            next_probe_at: (kind_of(word) == OPEN)
                .then(|| self.core.instant_at_ms(reopen_ms_of(word))),
        }
    }
}

/// How a probe ended.
pub(super) enum ProbeOutcome {
    Accepted,
    Rejected,
    /// Dropped before it had an outcome.
    Abandoned,
}

/// A request's claim on its scope: says how its outcome is counted.
pub(super) struct Ticket {
    pub(super) scope: Arc<Scope>,
    pub(super) generation: u64,
    pub(super) probe: bool,
    pub(super) done: bool,
    /// When the attempt's time runs out: a ticket dropped unrecorded at or after it was cut by
    /// a deadline (whichever layer dropped it), which is a failure of the destination.
    pub(super) deadline: Option<Instant>,
}

impl Ticket {
    /// Counts the attempt's outcome; an outcome that says nothing about the destination counts
    /// nothing, except that a probe which did not succeed keeps the breaker open.
    pub(super) fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.record(outcome.destination_failed(), Instant::now());
    }

    /// Adds the attempt's deadline (see the field).
    pub(super) fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    pub(super) fn record(&self, failed: Option<bool>, now: Instant) {
        match (self.probe, failed) {
            (true, Some(false)) => {
                self.scope
                    .end_probe(self.generation, ProbeOutcome::Accepted, now)
            }
            (true, Some(true)) => {
                self.scope
                    .end_probe(self.generation, ProbeOutcome::Rejected, now)
            }
            (true, None) => self
                .scope
                .end_probe(self.generation, ProbeOutcome::Abandoned, now),
            (false, Some(failed)) => self.scope.record_closed(self.generation, failed, now),
            (false, None) => {}
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped before its outcome. At the deadline, a layer above (the deadline layer, a
        // strategy's split share) cut an attempt the destination never answered: a failure.
        // Before it, we cancelled it (a hedge won, the caller went away): nothing is counted,
        // though a probe gives its slot back with the breaker still open.
        let now = Instant::now();
        let timed_out = self.deadline.is_some_and(|deadline| now >= deadline);
        self.record(timed_out.then_some(true), now);
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("scope", &self.scope.name)
            .field("probe", &self.probe)
            .finish()
    }
}
