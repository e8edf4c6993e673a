//! The bounded, sharded table of scopes.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::time::Instant;

use super::CircuitBreakerSettings;

use super::encoding::STALE_AFTER_BUCKETS;
use super::scope::{Core, Scope};

/// The bounded, sharded table of scopes, shared by a layer and every service it made.
pub(super) struct Table {
    pub(super) core: Arc<Core>,
    pub(super) hasher: RandomState,
    pub(super) shards: Box<[Shard]>,
    pub(super) idle_ms: u64,
}

pub(super) struct Shard {
    pub(super) capacity: usize,
    pub(super) scopes: RwLock<HashMap<Box<str>, Arc<Scope>>>,
}

/// Shards take the table's lookups; 16 keeps write contention low on any core count that
/// matters here and costs 16 small maps.
pub(super) const MAX_SHARDS: usize = 16;

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

    pub(super) fn shard(&self, scope: &str) -> &Shard {
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

    pub(super) fn forget_idle_in(
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
    pub(super) fn announce_forgotten(&self, forgotten: &[Arc<Scope>]) {
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
