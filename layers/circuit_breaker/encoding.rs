//! How a scope's state and its window's buckets are packed into single atomic words.

use super::registry::CircuitState;

pub(super) const KIND_MASK: u64 = 0b11;
pub(super) const CLOSED: u64 = 0;
pub(super) const OPEN: u64 = 1;
pub(super) const HALF_OPEN: u64 = 2;
pub(super) const GENERATION_SHIFT: u32 = 2;
pub(super) const GENERATION_MASK: u64 = 0xffff;
pub(super) const REOPEN_SHIFT: u32 = 18;
pub(super) const REOPEN_MAX_MS: u64 = (1 << (64 - REOPEN_SHIFT)) - 1;

pub(super) fn pack_state(kind: u64, generation: u64, reopen_ms: u64) -> u64 {
    kind | (generation & GENERATION_MASK) << GENERATION_SHIFT
        | reopen_ms.min(REOPEN_MAX_MS) << REOPEN_SHIFT
}

pub(super) fn kind_of(word: u64) -> u64 {
    word & KIND_MASK
}

pub(super) fn generation_of(word: u64) -> u64 {
    (word >> GENERATION_SHIFT) & GENERATION_MASK
}

pub(super) fn reopen_ms_of(word: u64) -> u64 {
    word >> REOPEN_SHIFT
}

pub(super) fn state_of(word: u64) -> CircuitState {
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
pub(super) const TAG_MASK: u64 = (1 << 24) - 1;
/// A scope unused for this many buckets has its window cleared, so no tag can come round again.
pub(super) const STALE_AFTER_BUCKETS: u64 = 1 << 23;
pub(super) const COUNT_MASK: u64 = (1 << 20) - 1;

pub(super) fn pack_bucket(tag: u64, failures: u64, requests: u64) -> u64 {
    tag << 40 | failures.min(COUNT_MASK) << 20 | requests.min(COUNT_MASK)
}

pub(super) fn unpack_bucket(word: u64) -> (u64, u64, u64) {
    (word >> 40, (word >> 20) & COUNT_MASK, word & COUNT_MASK)
}

/// The epoch in the window ending at `epoch` that lands in `slot`, if the window reaches it.
pub(super) fn slot_epoch(epoch: u64, slot: u64, windows: u64) -> Option<u64> {
    let back = (epoch % windows + windows - slot) % windows;
    epoch.checked_sub(back)
}
