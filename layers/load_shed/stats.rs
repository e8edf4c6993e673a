//! What a load shedder has admitted and shed: the counters, and their snapshot.

use std::sync::atomic::AtomicU64;

use crate::sharded::ShardedCounter;

use crate::context::Priority;

/// The shedder's counters, shared by every service of a layer and its clones.
pub(super) struct Counters {
    /// Written by every admitted request, from every core: split per core.
    pub(super) admitted: ShardedCounter,
    pub(super) shed_overload: [AtomicU64; 3],
    pub(super) refused_deadline: AtomicU64,
    pub(super) released_at_deadline: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            admitted: ShardedCounter::new(),
            shed_overload: Default::default(),
            refused_deadline: AtomicU64::new(0),
            released_at_deadline: AtomicU64::new(0),
        }
    }
}

/// Which priority index a counter array uses.
pub(super) fn index(priority: Priority) -> usize {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

/// A snapshot of a [`LoadShedLayer`](super::LoadShedLayer)'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadShedStats {
    /// Requests in flight at the moment of the snapshot.
    pub in_flight: usize,
    /// The limit at the moment of the snapshot: the capacity, or the adaptive limit's value.
    pub limit: usize,
    /// Requests admitted to the handler.
    pub admitted: u64,
    /// Requests shed because the server was full for their priority: `Low`, `Normal`, `High`.
    pub shed_overload: [u64; 3],
    /// Requests refused because their remaining deadline was shorter than the route's typical
    /// service time.
    pub refused_deadline: u64,
    /// Admitted requests that gave their slot back at their deadline, still unanswered.
    pub released_at_deadline: u64,
}

impl LoadShedStats {
    /// Requests shed at the given priority because the server was full.
    pub fn shed_for(&self, priority: Priority) -> u64 {
        self.shed_overload[index(priority)]
    }

    /// Every request not admitted, whatever the reason.
    pub fn shed_total(&self) -> u64 {
        self.shed_overload.iter().sum::<u64>() + self.refused_deadline
    }
}
