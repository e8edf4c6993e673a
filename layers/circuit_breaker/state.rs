//! The breaker state of every scope, and the bounded table that holds them.
//!
//! Per scope, everything the closed-state path touches is an atomic: the state word, the
//! window's buckets (one `AtomicU64` each) and the consecutive-failure counter. Transitions are
//! compare-and-swaps on the state word, so exactly one caller wins each of them (the one probe
//! among many callers, say) and no request ever waits for another. The table is sharded, each
//! shard behind its own `RwLock`, and a service instance caches the scope it used last, so a
//! client talking to one destination does not touch the table at all after its first call.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{CircuitBreakerSettings, CircuitOpen};
use crate::outcome::Outcome;

/// The state of one scope's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// Requests are refused until the break is over.
    Open,
    /// One probe is in flight; every other request is refused until it ends.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`: the form used in tracing events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change of one scope's breaker, as given to [`OnTransition`] listeners.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Transition<'a> {
    /// The scope, by default `scheme://authority`.
    pub scope: &'a str,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Failures over requests in the rolling window at the moment of the change (0 when empty).
    pub failure_ratio: f64,
    /// Requests in the rolling window at the moment of the change.
    pub requests: u64,
}

/// A listener for breaker events: the hook a metrics layer uses for a state gauge.
///
/// Called synchronously, on the request path, by the caller that made the change: it must be
/// quick and must not block. Any `Fn(&Transition<'_>)` closure is a listener.
pub trait OnTransition: Send + Sync + 'static {
    /// A scope changed state.
    fn on_transition(&self, transition: &Transition<'_>);

    /// A scope was forgotten (idle, or evicted to make room): drop its gauge. By default nothing.
    fn on_forget(&self, scope: &str) {
        let _ = scope;
    }
}

impl<F> OnTransition for F
where
    F: Fn(&Transition<'_>) + Send + Sync + 'static,
{
    fn on_transition(&self, transition: &Transition<'_>) {
        self(transition)
    }
}

/// What a scope looked like at the moment of a [`snapshot`](BreakerRegistry::snapshot).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScopeSnapshot {
    /// The scope.
    pub scope: String,
    /// Its state. An open breaker whose break is over stays `Open` until a caller probes.
    pub state: CircuitState,
    /// Requests in the rolling window.
    pub requests: u64,
    /// Failures in the rolling window.
    pub failures: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// When an open breaker lets the next probe go.
    pub next_probe_at: Option<Instant>,
}

// The state word: 2 bits of kind, 16 bits of generation, 46 bits of "probe allowed from" in
// milliseconds since the table's origin (open only). The generation makes every transition a
// new value, so an outcome admitted under an earlier state is recognised and ignored (modulo
// 2^16: a call would have to outlive 65,536 transitions of its scope to be mistaken).
const KIND_MASK: u64 = 0b11;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const GENERATION_SHIFT: u32 = 2;
const GENERATION_MASK: u64 = 0xffff;
const REOPEN_SHIFT: u32 = 18;
const REOPEN_MAX_MS: u64 = (1 << (64 - REOPEN_SHIFT)) - 1;

fn pack_state(kind: u64, generation: u64, reopen_ms: u64) -> u64 {
    kind | (generation & GENERATION_MASK) << GENERATION_SHIFT
        | reopen_ms.min(REOPEN_MAX_MS) << REOPEN_SHIFT
}

fn kind_of(word: u64) -> u64 {
    word & KIND_MASK
}

fn generation_of(word: u64) -> u64 {
    (word >> GENERATION_SHIFT) & GENERATION_MASK
}

fn reopen_ms_of(word: u64) -> u64 {
    word >> REOPEN_SHIFT
}

fn state_of(word: u64) -> CircuitState {
    match kind_of(word) {
        CLOSED => CircuitState::Closed,
        OPEN => CircuitState::Open,
        _ => CircuitState::HalfOpen,
    }
}

// A bucket word: 24 bits of epoch tag (the bucket's epoch modulo 2^24), 20 bits of failures,
// 20 bits of requests. One word per bucket lets a single compare-and-swap both start a new
// epoch and count into it, so no count is ever lost to a reset. Counts saturate at about a
// million per bucket.
const TAG_MASK: u64 = (1 << 24) - 1;
/// A scope unused for this many buckets has its window cleared, so no tag can come round again.
const STALE_AFTER_BUCKETS: u64 = 1 << 23;
const COUNT_MASK: u64 = (1 << 20) - 1;

fn pack_bucket(tag: u64, failures: u64, requests: u64) -> u64 {
    tag << 40 | failures.min(COUNT_MASK) << 20 | requests.min(COUNT_MASK)
}

fn unpack_bucket(word: u64) -> (u64, u64, u64) {
    (word >> 40, (word >> 20) & COUNT_MASK, word & COUNT_MASK)
}

/// What every scope of one table shares: settings in the units the arithmetic uses, the clock
/// origin and the listeners.
pub(super) struct Core {
    origin: Instant,
    failure_threshold: f64,
    minimum_throughput: u64,
    windows: u64,
    bucket_nanos: u64,
    break_nanos: u64,
    stale_after_ms: u64,
    consecutive_failures: Option<u32>,
    listeners: RwLock<Vec<Arc<dyn OnTransition>>>,
    /// Calls refused by an open or half-open breaker, for metrics; touched only on refusal.
    refused: AtomicU64,
}

impl Core {
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    fn epoch(&self, now: Instant) -> u64 {
        self.nanos(now) / self.bucket_nanos
    }

    /// The first millisecond at which a breaker opened at `now` lets a probe go: rounded up, so
    /// a probe never goes early.
    fn reopen_ms(&self, now: Instant) -> u64 {
        self.nanos(now)
            .saturating_add(self.break_nanos)
            .div_ceil(1_000_000)
    }

    fn instant_at_ms(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    fn emit(&self, scope: &Scope, from: CircuitState, to: CircuitState, now: Instant) {
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
    fn listeners(&self) -> Vec<Arc<dyn OnTransition>> {
        self.listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One scope's breaker.
pub(super) struct Scope {
    core: Arc<Core>,
    pub(super) name: Arc<str>,
    state: AtomicU64,
    consecutive: AtomicU32,
    buckets: Box<[AtomicU64]>,
    /// Milliseconds since the origin of the last admission, for idleness and LRU eviction.
    last_used_ms: AtomicU64,
    /// Set once the table has dropped this scope: services caching it look it up again.
    pub(super) forgotten: AtomicBool,
}

/// The outcome of asking a scope to let a request through.
pub(super) enum Admission {
    Admit(Ticket),
    Refuse(CircuitOpen),
}

impl Scope {
    fn new(core: Arc<Core>, name: &str, now_ms: u64) -> Self {
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
    fn window(&self, epoch: u64) -> (u64, u64) {
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
    fn count(&self, epoch: u64, failed: bool) {
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
    fn sweep(&self, epoch: u64) {
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

    fn clear_buckets(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Release);
        }
    }

    fn reset_window(&self) {
        self.clear_buckets();
        self.consecutive.store(0, Ordering::Release);
    }

    /// Records the outcome of a request let through while closed under `generation`.
    fn record_closed(&self, generation: u64, failed: bool, now: Instant) {
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
    fn end_probe(&self, generation: u64, outcome: ProbeOutcome, now: Instant) {
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

    fn snapshot(&self, now: Instant) -> ScopeSnapshot {
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
enum ProbeOutcome {
    Accepted,
    Rejected,
    /// Dropped before it had an outcome.
    Abandoned,
}

/// The epoch in the window ending at `epoch` that lands in `slot`, if the window reaches it.
fn slot_epoch(epoch: u64, slot: u64, windows: u64) -> Option<u64> {
    let back = (epoch % windows + windows - slot) % windows;
    epoch.checked_sub(back)
}

/// A request's claim on its scope: says how its outcome is counted.
pub(super) struct Ticket {
    scope: Arc<Scope>,
    generation: u64,
    probe: bool,
    done: bool,
    /// When the attempt's time runs out: a ticket dropped unrecorded at or after it was cut by
    /// a deadline (whichever layer dropped it), which is a failure of the destination.
    deadline: Option<Instant>,
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

    fn record(&self, failed: Option<bool>, now: Instant) {
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

/// The bounded, sharded table of scopes, shared by a layer and every service it made.
pub(super) struct Table {
    core: Arc<Core>,
    hasher: RandomState,
    shards: Box<[Shard]>,
    idle_ms: u64,
}

struct Shard {
    capacity: usize,
    scopes: RwLock<HashMap<Box<str>, Arc<Scope>>>,
}

/// Shards take the table's lookups; 16 keeps write contention low on any core count that
/// matters here and costs 16 small maps.
const MAX_SHARDS: usize = 16;

impl Table {
    pub(super) fn new(settings: &CircuitBreakerSettings) -> Self {
        let windows = u64::from(settings.windows_count);
        let bucket_nanos =
            u64::try_from(settings.sampling_duration.as_nanos() / u128::from(windows))
                .unwrap_or(u64::MAX)
                .max(1);
        let core = Arc::new(Core {
            origin: Instant::now(),
            failure_threshold: settings.failure_threshold,
            minimum_throughput: u64::from(settings.minimum_throughput),
            windows,
            bucket_nanos,
            break_nanos: u64::try_from(settings.break_duration.as_nanos()).unwrap_or(u64::MAX),
            stale_after_ms: bucket_nanos.saturating_mul(STALE_AFTER_BUCKETS) / 1_000_000,
            consecutive_failures: settings.consecutive_failures,
            listeners: RwLock::new(Vec::new()),
            refused: AtomicU64::new(0),
        });
        // Split the bound exactly: the shards' capacities add up to max_scopes.
        let count = settings.max_scopes.clamp(1, MAX_SHARDS);
        let shards = (0..count)
            .map(|i| Shard {
                capacity: settings.max_scopes / count
                    + usize::from(i < settings.max_scopes % count),
                scopes: RwLock::new(HashMap::new()),
            })
            .collect();
        Table {
            core,
            hasher: RandomState::new(),
            shards,
            idle_ms: u64::try_from(settings.idle_timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        }
    }

    fn shard(&self, scope: &str) -> &Shard {
        let index = self.hasher.hash_one(scope) % self.shards.len() as u64;
        &self.shards[index as usize]
    }

    /// The scope called `name`, created if need be; makes room when its shard is full.
    pub(super) fn scope(&self, name: &str, now: Instant) -> Arc<Scope> {
        let shard = self.shard(name);
        if let Some(scope) = shard
            .scopes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return scope.clone();
        }
        let now_ms = self.core.nanos(now) / 1_000_000;
        let mut forgotten = Vec::new();
        let scope = {
            let mut scopes = shard.scopes.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(scope) = scopes.get(name) {
                return scope.clone();
            }
            // New scopes are where an attacker-chosen host costs memory: forget the idle ones
            // first, then the least recently used, so the shard never grows past its share.
            self.forget_idle_in(&mut scopes, now_ms, &mut forgotten);
            while scopes.len() >= shard.capacity {
                let Some(oldest) = scopes
                    .iter()
                    .min_by_key(|(_, s)| s.last_used_ms.load(Ordering::Relaxed))
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(scope) = scopes.remove(&oldest) {
                    scope.forgotten.store(true, Ordering::Release);
                    forgotten.push(scope);
                }
            }
            let scope = Arc::new(Scope::new(self.core.clone(), name, now_ms));
            scopes.insert(name.into(), scope.clone());
            scope
        };
        self.announce_forgotten(&forgotten);
        scope
    }

    fn forget_idle_in(
        &self,
        scopes: &mut HashMap<Box<str>, Arc<Scope>>,
        now_ms: u64,
        forgotten: &mut Vec<Arc<Scope>>,
    ) {
        scopes.retain(|_, scope| {
            let idle =
                now_ms.saturating_sub(scope.last_used_ms.load(Ordering::Relaxed)) >= self.idle_ms;
            if idle {
                scope.forgotten.store(true, Ordering::Release);
                forgotten.push(scope.clone());
            }
            !idle
        });
    }

    /// Tells listeners, outside the shard lock, which scopes were dropped.
    fn announce_forgotten(&self, forgotten: &[Arc<Scope>]) {
        if forgotten.is_empty() {
            return;
        }
        let listeners = self.core.listeners();
        for scope in forgotten {
            tracing::debug!(scope = %scope.name, "circuit breaker forgot a scope");
            for listener in listeners.iter() {
                listener.on_forget(&scope.name);
            }
        }
    }
}

/// A handle on a breaker's scopes: states, snapshots and listeners.
///
/// Every service made by one [`CircuitBreakerLayer`](super::CircuitBreakerLayer) shares one
/// registry; get it with [`CircuitBreakerLayer::registry`](super::CircuitBreakerLayer::registry).
/// Cloning it is cheap.
#[derive(Clone)]
pub struct BreakerRegistry {
    pub(super) table: Arc<Table>,
}

impl BreakerRegistry {
    /// The state of `scope`'s breaker; `None` if the scope is unknown (never used, or forgotten),
    /// which behaves as closed.
    pub fn state(&self, scope: &str) -> Option<CircuitState> {
        self.table
            .shard(scope)
            .scopes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope)
            .map(|s| s.state())
    }

    /// Calls refused so far by this table's open and half-open breakers.
    pub fn refused(&self) -> u64 {
        self.table.core.refused.load(Ordering::Relaxed)
    }

    /// Every known scope, sorted by name.
    pub fn snapshot(&self) -> Vec<ScopeSnapshot> {
        let now = Instant::now();
        let mut all: Vec<ScopeSnapshot> = self
            .table
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .scopes
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .map(|s| s.snapshot(now))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.scope.cmp(&b.scope));
        all
    }

    /// How many scopes are remembered.
    pub fn len(&self) -> usize {
        self.table
            .shards
            .iter()
            .map(|s| {
                s.scopes
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// Whether no scope is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every scope idle for the idle timeout now, rather than when its shard next needs
    /// room. Call it from a periodic task if scopes come and go.
    pub fn forget_idle(&self) {
        let now_ms = self.table.core.nanos(Instant::now()) / 1_000_000;
        for shard in self.table.shards.iter() {
            let mut forgotten = Vec::new();
            self.table.forget_idle_in(
                &mut shard.scopes.write().unwrap_or_else(PoisonError::into_inner),
                now_ms,
                &mut forgotten,
            );
            self.table.announce_forgotten(&forgotten);
        }
    }

    /// Adds a listener called on every state change and every forgotten scope, from now on.
    pub fn on_transition(&self, listener: impl OnTransition) {
        self.table
            .core
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(listener));
    }
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("scopes", &self.len())
            .finish_non_exhaustive()
    }
}
