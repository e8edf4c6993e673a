//! A counter that every request writes from every core, split into one cache line per core so
//! that the cores do not take the line from each other on each write; read by summing the lines.
//!
//! For counts that are written on every request and read rarely (a scrape, a stats call, a
//! drain's log line): in-flight gauges, admitted totals, the adaptive limit's sample sums.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Lines per counter: the cores this process may run on, as a power of two, at most 64.
///
/// `TOWER_LIFELINE_COUNTER_SHARDS=1` (read once) puts every counter on one line, as one shared
/// atomic would be: the A side of `benches/scaling.rs`'s comparison, not a setting to use.
fn shard_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::env::var("TOWER_LIFELINE_COUNTER_SHARDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(8);
        cores.clamp(1, 64).next_power_of_two()
    })
}

/// One counter line, alone in its cache line (128 bytes: two lines on x86, whose adjacent-line
/// prefetcher pairs them).
#[repr(align(128))]
#[derive(Default)]
struct Shard(AtomicI64);

/// A signed counter split per core. Each thread writes the line it was given at its first write,
/// so a value added on one thread and taken away on another leaves two lines that cancel in the
/// sum.
pub(crate) struct ShardedCounter {
    shards: Box<[Shard]>,
}

impl ShardedCounter {
    pub(crate) fn new() -> Self {
        ShardedCounter {
            shards: (0..shard_count()).map(|_| Shard::default()).collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, value: i64) {
        let index = thread_index() & (self.shards.len() - 1);
        self.shards[index].0.fetch_add(value, Ordering::Relaxed);
    }

    /// The sum of the lines: exact when no write races it, and never off by more than the
    /// writes in flight meanwhile.
    pub(crate) fn sum(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Takes the sum, leaving zero: what was added before it is in this sum or in the next.
    pub(crate) fn take(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.0.swap(0, Ordering::Relaxed))
            .sum()
    }
}

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.sum()).finish()
    }
}

/// This thread's line: threads are numbered in the order they first write a counter, so the
/// runtime's worker threads, started together, get lines of their own.
#[inline]
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut value = index.get();
        if value == usize::MAX {
            value = NEXT.fetch_add(1, Ordering::Relaxed);
            index.set(value);
        }
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn adds_from_many_threads_sum_exactly() {
        let counter = Arc::new(ShardedCounter::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        counter.add(1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.sum(), 80_000);
    }

    #[test]
    fn an_add_and_a_subtraction_on_different_threads_cancel() {
        let counter = Arc::new(ShardedCounter::new());
        counter.add(1);
        let other = counter.clone();
        std::thread::spawn(move || other.add(-1)).join().unwrap();
        assert_eq!(counter.sum(), 0);
    }

    #[test]
    fn take_leaves_zero() {
        let counter = ShardedCounter::new();
        counter.add(5);
        counter.add(2);
        assert_eq!(counter.take(), 7);
        assert_eq!(counter.sum(), 0);
    }
}
