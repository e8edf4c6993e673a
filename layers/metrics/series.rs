//! The bounded table from a label set to its histogram series.
//!
//! `HistogramVec::with_label_values` hashes the label values and takes a lock on every call, and
//! the cap on label sets needed a second hash and lock of its own. This table does both jobs with
//! one hash and one read lock: it keeps each label set's `Histogram` handle, obtained from the
//! `HistogramVec` once, when the set is first seen, and counts the sets against the cap.
//!
//! Past the cap a table either folds new sets into [`OTHER`] (the client metrics, whose labels
//! the application chooses) or, [`evicting`](SeriesTable::evicting_least_recent), forgets the
//! least recently used sets to make room (the server metrics, whose client label callers choose:
//! a flood of invented names must not push a caller that keeps calling into `other` for ever).
//! Recency is counted in insertions, not time: a set not used while the last many new sets came
//! in is the one to go, and no clock is read.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use prometheus::{Histogram, HistogramVec, IntCounter};

use super::labels::OTHER;

/// The label bytes hashed in one piece: a typical label set is under 100.
const HASH_BUFFER: usize = 192;

/// The histogram series of one metric, at most `cap` label sets of callers' own; past the cap a
/// new set is recorded with its open-ended labels as [`OTHER`] and counted in `overflow`.
pub(crate) struct SeriesTable<const N: usize> {
    histograms: HistogramVec,
    /// The positions of the open-ended labels (client, route, endpoint, path): those that fold
    /// into [`OTHER`]. The others (method, status, ...) have a handful of values each.
    open: &'static [usize],
    overflow: IntCounter,
    cap: usize,
    /// Keyed at random per table: callers choose some label values (`X-Service-Name`), and with a
    /// known hash function they could pick values that all land in one bucket.
    hasher: RandomState,
    /// Past the cap: forget the least recently used sets (true) or fold new ones (false).
    evict: bool,
    /// Counts insertions of new sets: the clock of recency.
    tick: AtomicU64,
    series: RwLock<Series<N>>,
}

/// The share of the cap an eviction frees at once, so that its scan is paid once per that many
/// insertions.
const EVICT_FRACTION: usize = 16;

struct Series<const N: usize> {
    by_hash: HashMap<u64, Entry<N>, BuildHasherDefault<Prehashed>>,
    /// Label sets counted against the cap; the [`OTHER`] sets made by folding are not, as they
    /// are bounded by the few values of the other labels.
    admitted: usize,
}

/// One label set and its series. Entries whose hashes are equal are chained through `next`: a
/// 64-bit hash is not an identity, and two label sets must never share a series.
struct Entry<const N: usize> {
    labels: [Box<str>; N],
    histogram: Histogram,
    /// Made as the target of a fold, not admitted: a request that carries these labels of its
    /// own (a caller named `other`) is past the cap all the same, and counted as overflow.
    folded: bool,
    /// The table's tick when this set was last used (only kept when the table evicts).
    last_used: AtomicU64,
    next: Option<Box<Entry<N>>>,
}

impl<const N: usize> Entry<N> {
    fn find(&self, labels: &[&str; N]) -> Option<&Entry<N>> {
        let mut entry = Some(self);
        while let Some(e) = entry {
            if e.labels
                .iter()
                .zip(labels)
                .all(|(have, want)| **have == **want)
            {
                return Some(e);
            }
            entry = e.next.as_deref();
        }
        None
    }
}

/// The map's keys are already keyed SipHash values: hashing them again would only cost time.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys come here (through `write_u64`); this keeps the hasher total anyway.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl<const N: usize> SeriesTable<N> {
    /// A table over `histograms`, whose labels at the positions `open` fold into [`OTHER`] once
    /// `cap` label sets are in use.
    pub(crate) fn new(
        histograms: HistogramVec,
        open: &'static [usize],
        overflow: IntCounter,
        cap: usize,
    ) -> Self {
        SeriesTable {
            histograms,
            open,
            overflow,
            cap,
            hasher: RandomState::new(),
            evict: false,
            tick: AtomicU64::new(0),
            series: RwLock::new(Series {
                by_hash: HashMap::default(),
                admitted: 0,
            }),
        }
    }

    /// Past the cap, forgets the least recently used label sets (and removes their series from
    /// the `HistogramVec`) instead of folding new ones into [`OTHER`]; `overflow` then counts the
    /// sets forgotten.
    pub(crate) fn evicting_least_recent(mut self) -> Self {
        self.evict = true;
        self
    }

    /// Marks `entry` as used now, writing only when the tick moved since its last use.
    fn touch(&self, entry: &Entry<N>) {
        if self.evict {
            let now = self.tick.load(Ordering::Relaxed);
            if entry.last_used.load(Ordering::Relaxed) != now {
                entry.last_used.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Records `value` in the series of `labels`, or of their fold into [`OTHER`] past the cap.
    pub(crate) fn observe(&self, labels: [&str; N], value: f64) {
        let hash = self.hash(&labels);
        self.observe_hashed(hash, labels, value);
    }

    /// The keyed hash of a label set. SipHash pays for every `write` call, and hashing the labels
    /// one by one (`hash_one(&labels[..])`) makes two per label: a typical set costs half as
    /// much copied into one buffer and hashed in one call. Each label ends with `0xff`, a byte
    /// UTF-8 never uses, so the sets `["ab", "c"]` and `["a", "bc"]` hash apart. Sets too long
    /// for the buffer are hashed label by label: a set always takes the same way, so its hash
    /// is the same every time.
    fn hash(&self, labels: &[&str; N]) -> u64 {
        let mut buffer = [0u8; HASH_BUFFER];
        let mut len = 0;
        for label in labels {
            let end = len + label.len() + 1;
            let Some(room) = buffer.get_mut(len..end) else {
                return self.hasher.hash_one(&labels[..]);
            };
            let (text, separator) = room.split_at_mut(label.len());
            text.copy_from_slice(label.as_bytes());
            separator[0] = 0xff;
            len = end;
        }
        let mut hasher = self.hasher.build_hasher();
        hasher.write(&buffer[..len]);
        hasher.finish()
    }

    /// [`observe`](Self::observe) with the hash given: tests force collisions through it.
    fn observe_hashed(&self, hash: u64, labels: [&str; N], value: f64) {
        {
            // The common case: a label set seen before, found under the read lock without
            // allocating; the handle is used in place, so no reference count is touched.
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = series.by_hash.get(&hash).and_then(|e| e.find(&labels)) {
                if entry.folded {
                    self.overflow.inc();
                }
                self.touch(entry);
                entry.histogram.observe(value);
                return;
            }
        }
        self.insert_and_observe(hash, labels, value);
    }

    /// A label set not seen yet: under the write lock, admit it while there is room, else fold it.
    #[cold]
    fn insert_and_observe(&self, hash: u64, mut labels: [&str; N], value: f64) {
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        let series = &mut *series;
        // Another thread may have added it between the two locks.
        if let Some(entry) = series.by_hash.get(&hash).and_then(|e| e.find(&labels)) {
            if entry.folded {
                self.overflow.inc();
            }
            entry.histogram.observe(value);
            return;
        }
        if self.evict && series.admitted >= self.cap {
            self.evict_least_recent(series);
        }
        let (hash, folded) = if series.admitted < self.cap {
            series.admitted += 1;
            (hash, false)
        } else {
            self.overflow.inc();
            for &i in self.open {
                labels[i] = OTHER;
            }
            let hash = self.hash(&labels);
            // The folded set may be there already: folded before, or a caller's own.
            if let Some(entry) = series.by_hash.get(&hash).and_then(|e| e.find(&labels)) {
                entry.histogram.observe(value);
                return;
            }
            (hash, true)
        };
        // The vec's own lookup, once per label set. (It keys its series by an unkeyed FNV hash
        // of the values run together, so it would hand two colliding sets one series: nothing
        // this table can change, but no longer a lookup that every request makes.)
        let histogram = self.histograms.with_label_values(&labels);
        histogram.observe(value);
        // A collision (practically never) goes to the head of the chain under its hash.
        let next = series.by_hash.remove(&hash).map(Box::new);
        let entry = Entry {
            labels: labels.map(Box::from),
            histogram,
            folded,
            last_used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed) + 1),
            next,
        };
        series.by_hash.insert(hash, entry);
    }
}

impl<const N: usize> SeriesTable<N> {
    /// Forgets the least recently used sixteenth of the admitted sets (at least one).
    #[cold]
    fn evict_least_recent(&self, series: &mut Series<N>) {
        let mut ticks = Vec::with_capacity(series.admitted);
        for head in series.by_hash.values() {
            let mut entry = Some(head);
            while let Some(e) = entry {
                if !e.folded {
                    ticks.push(e.last_used.load(Ordering::Relaxed));
                }
                entry = e.next.as_deref();
            }
        }
        if ticks.is_empty() {
            return;
        }
        let count = (self.cap / EVICT_FRACTION).clamp(1, ticks.len());
        let (_, &mut newest_to_go, _) = ticks.select_nth_unstable(count - 1);
        // Ties at the threshold may take a few more than `count`: recency is all they share.
        let mut forgotten = 0;
        let by_hash = std::mem::take(&mut series.by_hash);
        for (hash, head) in by_hash {
            let kept = retain_chain(head, &mut |entry: &Entry<N>| {
                let go = !entry.folded && entry.last_used.load(Ordering::Relaxed) <= newest_to_go;
                if go {
                    let labels: [&str; N] = std::array::from_fn(|i| &*entry.labels[i]);
                    // Gone from the scrape too; a set seen again starts a fresh series.
                    let _ = self.histograms.remove_label_values(&labels);
                    forgotten += 1;
                }
                !go
            });
            if let Some(kept) = kept {
                series.by_hash.insert(hash, kept);
            }
        }
        series.admitted -= forgotten;
        self.overflow.inc_by(forgotten as u64);
    }
}

/// The chain starting at `entry` without the entries `keep` turns down.
fn retain_chain<const N: usize>(
    mut entry: Entry<N>,
    keep: &mut impl FnMut(&Entry<N>) -> bool,
) -> Option<Entry<N>> {
    let next = entry.next.take().and_then(|next| retain_chain(*next, keep));
    if keep(&entry) {
        entry.next = next.map(Box::new);
        Some(entry)
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use prometheus::HistogramOpts;

    use super::*;

    fn table(cap: usize) -> (SeriesTable<3>, HistogramVec, IntCounter) {
        let histograms = HistogramVec::new(
            HistogramOpts::new("test_duration_seconds", "test"),
            &["client", "method", "route"],
        )
        .unwrap();
        let overflow = IntCounter::new("test_overflow_total", "test").unwrap();
        let table = SeriesTable::new(histograms.clone(), &[0, 2], overflow.clone(), cap);
        (table, histograms, overflow)
    }

    /// The sample count of each series there is, by label values in the table's order: read
    /// from a collection, as `with_label_values` would make the series it asks for.
    fn counts(histograms: &HistogramVec) -> HashMap<[String; 3], u64> {
        use prometheus::core::Collector;
        let families = histograms.collect();
        families[0]
            .get_metric()
            .iter()
            .map(|metric| {
                let value = |name: &str| {
                    let pair = metric.get_label().iter().find(|p| p.name() == name);
                    pair.unwrap().value().to_owned()
                };
                let labels = [value("client"), value("method"), value("route")];
                (labels, metric.get_histogram().get_sample_count())
            })
            .collect()
    }

    fn count(histograms: &HistogramVec, labels: [&str; 3]) -> u64 {
        counts(histograms)
            .get(&labels.map(String::from))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn label_sets_past_the_cap_fold_into_other() {
        let (table, histograms, overflow) = table(2);
        table.observe(["a", "GET", "/x"], 1.0);
        table.observe(["b", "GET", "/y"], 1.0);
        assert_eq!(overflow.get(), 0);
        table.observe(["c", "GET", "/z"], 1.0);
        table.observe(["d", "POST", "/z"], 1.0);
        table.observe(["e", "GET", "/w"], 1.0);
        assert_eq!(overflow.get(), 3);
        assert_eq!(count(&histograms, ["other", "GET", "other"]), 2);
        assert_eq!(count(&histograms, ["other", "POST", "other"]), 1);
        assert_eq!(counts(&histograms).len(), 4, "a, b and two folds");
    }

    #[test]
    fn a_set_seen_before_passes_at_the_cap() {
        let (table, histograms, overflow) = table(2);
        table.observe(["a", "GET", "/x"], 1.0);
        table.observe(["b", "GET", "/y"], 1.0);
        table.observe(["c", "GET", "/z"], 1.0);
        table.observe(["a", "GET", "/x"], 1.0);
        table.observe(["b", "GET", "/y"], 1.0);
        assert_eq!(count(&histograms, ["a", "GET", "/x"]), 2);
        assert_eq!(count(&histograms, ["b", "GET", "/y"]), 2);
        assert_eq!(overflow.get(), 1, "only c overflowed");
    }

    #[test]
    fn a_caller_named_other_past_the_cap_is_counted_as_overflow() {
        let (table, histograms, overflow) = table(1);
        table.observe(["a", "GET", "/x"], 1.0);
        table.observe(["c", "GET", "/z"], 1.0);
        table.observe(["other", "GET", "other"], 1.0);
        assert_eq!(overflow.get(), 2);
        assert_eq!(count(&histograms, ["other", "GET", "other"]), 2);
    }

    #[test]
    fn colliding_label_sets_keep_series_of_their_own() {
        let (table, histograms, overflow) = table(10);
        // Every set under one hash: only the comparison of the labels tells them apart.
        table.observe_hashed(7, ["a", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["b", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["b", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["c", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["c", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["c", "GET", "/x"], 1.0);
        assert_eq!(count(&histograms, ["a", "GET", "/x"]), 1);
        assert_eq!(count(&histograms, ["b", "GET", "/x"]), 2);
        assert_eq!(count(&histograms, ["c", "GET", "/x"]), 3);
        assert_eq!(overflow.get(), 0);
        let series = table.series.read().unwrap();
        assert_eq!(series.by_hash.len(), 1, "one hash");
        assert_eq!(series.admitted, 3, "three sets");
    }

    #[test]
    fn long_and_short_label_sets_are_found_again() {
        let (table, histograms, overflow) = table(10);
        let long = "x".repeat(HASH_BUFFER);
        for _ in 0..3 {
            table.observe([&long, "GET", "/x"], 1.0);
            table.observe(["a", "GET", &long], 1.0);
            table.observe(["a", "GET", "/x"], 1.0);
        }
        assert_eq!(count(&histograms, [&long, "GET", "/x"]), 3);
        assert_eq!(count(&histograms, ["a", "GET", &long]), 3);
        assert_eq!(count(&histograms, ["a", "GET", "/x"]), 3);
        assert_eq!(overflow.get(), 0);
        assert_eq!(table.series.read().unwrap().admitted, 3);
    }

    #[test]
    fn label_boundaries_are_part_of_the_hash() {
        let (table, _, _) = table(10);
        assert_ne!(table.hash(&["ab", "c", "d"]), table.hash(&["a", "bc", "d"]));
        assert_eq!(table.hash(&["ab", "c", "d"]), table.hash(&["ab", "c", "d"]));
    }

    fn evicting_table(cap: usize) -> (SeriesTable<3>, HistogramVec, IntCounter) {
        let (table, histograms, overflow) = table(cap);
        (table.evicting_least_recent(), histograms, overflow)
    }

    #[test]
    fn a_flood_of_new_sets_cannot_push_a_set_in_steady_use_out() {
        let (table, histograms, overflow) = evicting_table(16);
        for i in 0..2_000 {
            table.observe([&format!("flood-{i}"), "GET", "/x"], 1.0);
            if i % 4 == 0 {
                table.observe(["steady", "GET", "/x"], 1.0);
            }
        }
        assert_eq!(count(&histograms, ["steady", "GET", "/x"]), 500);
        assert_eq!(
            count(&histograms, ["other", "GET", "other"]),
            0,
            "nothing folds"
        );
        let series = counts(&histograms).len();
        assert!(series <= 16, "{series} series");
        assert!(overflow.get() >= 2_000 - 16, "{}", overflow.get());
    }

    #[test]
    fn a_set_used_every_tenth_request_survives_forty_thousand_new_ones() {
        let (table, histograms, _) = evicting_table(400);
        for i in 0..40_000 {
            if i % 10 == 0 {
                table.observe(["steady", "GET", "/x"], 1.0);
            } else {
                table.observe([&format!("flood-{i}"), "GET", "/x"], 1.0);
            }
        }
        assert_eq!(count(&histograms, ["steady", "GET", "/x"]), 4_000);
    }

    #[test]
    fn a_newcomer_after_a_flood_gets_a_series_of_its_own_at_once() {
        let (table, histograms, _) = evicting_table(16);
        for i in 0..100 {
            table.observe([&format!("flood-{i}"), "GET", "/x"], 1.0);
        }
        table.observe(["late", "GET", "/x"], 1.0);
        table.observe(["late", "GET", "/x"], 1.0);
        assert_eq!(count(&histograms, ["late", "GET", "/x"]), 2);
        assert_eq!(count(&histograms, ["flood-0", "GET", "/x"]), 0, "forgotten");
        assert!(counts(&histograms).len() <= 16);
    }

    #[test]
    fn colliding_label_sets_are_evicted_one_by_one() {
        let (table, histograms, _) = evicting_table(2);
        table.observe_hashed(7, ["a", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["b", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["b", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["c", "GET", "/x"], 1.0);
        assert_eq!(
            count(&histograms, ["a", "GET", "/x"]),
            0,
            "the least recent went"
        );
        assert_eq!(count(&histograms, ["b", "GET", "/x"]), 2);
        assert_eq!(count(&histograms, ["c", "GET", "/x"]), 1);
        assert_eq!(table.series.read().unwrap().admitted, 2);
    }

    #[test]
    fn colliding_label_sets_count_against_the_cap() {
        let (table, histograms, overflow) = table(2);
        table.observe_hashed(7, ["a", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["b", "GET", "/x"], 1.0);
        table.observe_hashed(7, ["c", "GET", "/x"], 1.0);
        assert_eq!(overflow.get(), 1);
        assert_eq!(count(&histograms, ["other", "GET", "other"]), 1);
        assert_eq!(counts(&histograms).len(), 3, "a, b and the fold, no c");
    }
}
