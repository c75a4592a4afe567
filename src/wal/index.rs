//! The in-memory index of the live log: where each entry's record lies, and each entry's term.
//!
//! Memory per entry is one 32-bit record offset (4 bytes, at most 8 with the deque's spare room
//! while it grows); the segment of each entry and its term are stored as runs (a group's
//! consecutive entries share a segment, and a leader writes many entries in one term), so they
//! cost next to nothing per entry.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// Where an entry's record is: segment sequence (low 32 bits) and the record's byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Sequence number of the segment, truncated to 32 bits (checked on insertion).
    pub segment: u32,
    /// Offset of the record's frame within the segment.
    pub offset: u32,
}

impl Loc {
    /// An entry known to exist (the checkpoint of the first segment says so) whose record lay in
    /// a segment that was already deleted. Such an entry must be compacted away by the end of
    /// recovery; a live one is corruption.
    pub const MISSING: Loc = Loc { segment: u32::MAX, offset: u32::MAX };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TermRun {
    /// First index of the run.
    first: u64,
    term: u64,
}

/// Entries from `first` on (up to the next run) lie in segment `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SegmentRun {
    first: u64,
    segment: u32,
}

/// The dummy entry, then one [`Loc`] and term per live entry.
///
/// Entries in `(dummy, base]` are *missing*: a checkpoint says they exist, but their records lay
/// in segments already deleted (they must all be compacted by the end of recovery). They take no
/// memory, so a forged checkpoint cannot make recovery allocate.
#[derive(Debug, Default)]
pub struct LogIndex {
    dummy_index: u64,
    dummy_term: u64,
    // Invariant: dummy_index <= base; offsets[k] is the record offset of entry base + 1 + k.
    base: u64,
    offsets: VecDeque<u32>,
    // Invariant: cover (base, last] exactly (empty when no entry has a location); first indices
    // strictly increase; segments never decrease (later entries are written later).
    segments: VecDeque<SegmentRun>,
    // Invariant: runs cover (dummy_index, last] exactly (empty when no entry is live); first
    // indices strictly increase; runs[0].first == dummy_index + 1. Missing entries have term 0.
    runs: VecDeque<TermRun>,
    // Invariant: the segment of `segments`' last run and the term of `runs`' last run, when
    // there is one. An append at the end compares against them instead of reading the back of
    // two more buffers: in a log engine of thousands of groups, each of those reads is a cache
    // miss at almost every record replayed or written.
    tail_segment: u32,
    tail_term: u64,
}

impl LogIndex {
    /// A log of just the dummy `(index, term)`.
    pub fn new(dummy_index: u64, dummy_term: u64) -> LogIndex {
        LogIndex {
            dummy_index,
            dummy_term,
            base: dummy_index,
            offsets: VecDeque::new(),
            segments: VecDeque::new(),
            runs: VecDeque::new(),
            tail_segment: 0,
            tail_term: 0,
        }
    }

    /// A log whose entries `(dummy_index, last_index]` are all missing.
    pub fn with_missing(dummy_index: u64, dummy_term: u64, last_index: u64) -> LogIndex {
        assert!(last_index >= dummy_index, "last index {last_index} below the dummy {dummy_index}");
        let mut index = LogIndex::new(dummy_index, dummy_term);
        if last_index > dummy_index {
            index.base = last_index;
            index.runs.push_back(TermRun { first: dummy_index + 1, term: 0 });
            index.retail();
        }
        index
    }

    /// The dummy entry's index.
    pub fn dummy_index(&self) -> u64 {
        self.dummy_index
    }

    /// The dummy entry's term.
    pub fn dummy_term(&self) -> u64 {
        self.dummy_term
    }

    /// The last index (the dummy's when no entry is live).
    pub fn last_index(&self) -> u64 {
        self.base + self.offsets.len() as u64
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        (self.last_index() - self.dummy_index) as usize
    }

    /// The term at `index`, as `Storage::term` answers it.
    pub fn term(&self, index: u64) -> Result<u64> {
        if index < self.dummy_index {
            return Err(Error::Compacted);
        }
        if index == self.dummy_index {
            return Ok(self.dummy_term);
        }
        if index > self.last_index() {
            return Err(Error::Unavailable);
        }
        Ok(self.term_run(index).0)
    }

    /// The term of live entry `index` and the end (exclusive) of the run of entries from it on
    /// with that term: a reader checks many entries with one search.
    pub fn term_run(&self, index: u64) -> (u64, u64) {
        debug_assert!(index > self.dummy_index && index <= self.last_index(), "{index} is live");
        // The last run whose first index is at or below `index`.
        let at = self.runs.partition_point(|run| run.first <= index);
        debug_assert!(at > 0, "runs cover every live entry");
        let end = self.runs.get(at).map_or(self.last_index() + 1, |run| run.first);
        (self.runs[at - 1].term, end)
    }

    /// Where entry `index` is ([`Loc::MISSING`] for an entry of a deleted segment). `index` must
    /// be live.
    pub fn loc(&self, index: u64) -> Loc {
        self.record_at(index, index).0
    }

    /// Where entry `index` is (as [`LogIndex::loc`]), and the end (exclusive, at most `hi`) of
    /// the entries from it on located there: those a read takes from the record it decodes,
    /// found with one search for the segment instead of one per entry.
    pub fn record_at(&self, index: u64, hi: u64) -> (Loc, u64) {
        assert!(
            index > self.dummy_index && index <= self.last_index(),
            "loc({index}) is outside the live log ({}, {}]",
            self.dummy_index,
            self.last_index()
        );
        if index <= self.base {
            return (Loc::MISSING, index + 1);
        }
        let at = self.segments.partition_point(|run| run.first <= index);
        debug_assert!(at > 0, "segment runs cover every located entry");
        let loc = Loc {
            segment: self.segments[at - 1].segment,
            offset: self.offsets[(index - self.base - 1) as usize],
        };
        // The entries of one record lie in one segment run: stop at the next run.
        let run_end = self.segments.get(at).map_or(u64::MAX, |run| run.first);
        let stop = hi.min(run_end).min(self.last_index() + 1);
        let mut end = index + 1;
        // Bounded by `stop`.
        while end < stop && self.offsets[(end - self.base - 1) as usize] == loc.offset {
            end += 1;
        }
        (loc, end)
    }

    /// The segment holding the first live entry: `None` when there is no live entry, or when
    /// the first lay in a deleted segment. `first_loc` without the search.
    pub fn first_segment(&self) -> Option<u32> {
        // Segment runs cover (base, last]; the first live entry is dummy + 1, missing if below
        // base + 1.
        if self.dummy_index < self.base {
            return None;
        }
        self.segments.front().map(|run| run.segment)
    }

    /// Location of the first live entry, if any.
    pub fn first_loc(&self) -> Option<Loc> {
        (self.last_index() > self.dummy_index).then(|| self.loc(self.dummy_index + 1))
    }

    /// Replaces every entry from `first` on with entries `first..first + terms.len()`, each in
    /// the record at `loc`. `first` must lie in `(dummy, last + 1]`, and the last new index
    /// below `u64::MAX`.
    pub fn append<T>(&mut self, first: u64, terms: T, loc: Loc)
    where
        T: IntoIterator<Item = u64>,
        T::IntoIter: ExactSizeIterator,
    {
        let terms = terms.into_iter();
        let count = terms.len();
        self.append_each(first, count, loc.segment, terms.map(|term| (term, loc.offset)));
    }

    /// Replaces every entry from `first` on with `count` entries given as (term, record
    /// offset), all in segment `segment`: [`LogIndex::append`] for entries of several records.
    pub fn append_each(
        &mut self,
        first: u64,
        count: usize,
        segment: u32,
        entries: impl Iterator<Item = (u64, u32)>,
    ) {
        assert!(
            first > self.dummy_index && first <= self.last_index() + 1,
            "append at {first} leaves a gap or rewrites the dummy: log is ({}, {}]",
            self.dummy_index,
            self.last_index()
        );
        assert!(
            first.checked_add(count as u64).is_some(),
            "append at {first} overflows the index space"
        );
        // Most appends extend the log: nothing to drop, and the fronts of the runs stay as
        // they are (checked in full below otherwise).
        let extends = first == self.last_index() + 1 && !self.runs.is_empty();
        if !extends {
            self.truncate_from(first);
            self.retail();
        }
        if count > 0 && (self.segments.is_empty() || self.tail_segment != segment) {
            assert!(
                self.segments.is_empty() || self.tail_segment < segment,
                "entries are written to segments in order"
            );
            self.segments.push_back(SegmentRun { first, segment });
            self.tail_segment = segment;
        }
        // Bounded by `count`: the iterator is cut there.
        let mut added = 0;
        for (term, offset) in entries.take(count) {
            let index = first + added as u64;
            if self.runs.is_empty() || self.tail_term != term {
                self.runs.push_back(TermRun { first: index, term });
                self.tail_term = term;
            }
            self.offsets.push_back(offset);
            added += 1;
        }
        assert_eq!(added, count, "append of {count} entries was given {added}");
        if extends {
            assert_eq!(self.segments.is_empty(), self.offsets.is_empty());
            debug_assert!({
                self.check();
                true
            });
        } else {
            self.check();
        }
    }

    /// Sets the cached tails from the runs (after a change other than an append at the end).
    fn retail(&mut self) {
        if let Some(run) = self.segments.back() {
            self.tail_segment = run.segment;
        }
        if let Some(run) = self.runs.back() {
            self.tail_term = run.term;
        }
    }

    /// Drops every entry at or after `index` (which is above the dummy).
    fn truncate_from(&mut self, index: u64) {
        if index <= self.base {
            self.base = index - 1;
            self.offsets.clear();
        } else {
            self.offsets.truncate((index - self.base - 1) as usize);
        }
        while self.segments.back().is_some_and(|run| run.first >= index) {
            self.segments.pop_back();
        }
        while self.runs.back().is_some_and(|run| run.first >= index) {
            self.runs.pop_back();
        }
    }

    /// Makes entry `index` (with `term`) the dummy, dropping every entry up to it. `index` must
    /// lie in `(dummy, last]`.
    pub fn compact(&mut self, index: u64, term: u64) {
        assert!(
            index > self.dummy_index && index <= self.last_index(),
            "compact({index}) is outside the live log ({}, {}]",
            self.dummy_index,
            self.last_index()
        );
        if index > self.base {
            self.offsets.drain(..(index - self.base) as usize);
            self.base = index;
            // Keep the segment run that covers index + 1, moved to start there.
            while self.segments.len() > 1 && self.segments[1].first <= index + 1 {
                self.segments.pop_front();
            }
            if self.offsets.is_empty() {
                self.segments.clear();
            } else if let Some(run) = self.segments.front_mut() {
                run.first = index + 1;
            }
        }
        // Keep the run that covers index + 1, moved to start there.
        while self.runs.len() > 1 && self.runs[1].first <= index + 1 {
            self.runs.pop_front();
        }
        self.dummy_index = index;
        self.dummy_term = term;
        // Give back the room compaction left: a deque's capacity never shrinks by itself, so a
        // log compacted down to a few entries would keep the memory of its longest length.
        // Amortized: the capacity is at least four times the length before it is halved.
        if self.offsets.capacity() > 4 * self.offsets.len().max(16) {
            self.offsets.shrink_to(2 * self.offsets.len());
        }
        if self.runs.capacity() > 4 * self.runs.len().max(4) {
            self.runs.shrink_to(2 * self.runs.len());
        }
        if self.segments.capacity() > 4 * self.segments.len().max(4) {
            self.segments.shrink_to(2 * self.segments.len());
        }
        if self.last_index() == index {
            self.runs.clear();
        } else if let Some(run) = self.runs.front_mut() {
            run.first = index + 1;
        }
        self.retail();
        self.check();
    }

    /// Replaces the whole log by the dummy `(index, term)`.
    pub fn reset(&mut self, index: u64, term: u64) {
        *self = LogIndex::new(index, term);
    }

    /// Whether any live entry's record lies in a deleted segment.
    pub fn has_missing(&self) -> bool {
        self.base > self.dummy_index
    }

    /// Releases spare capacity (after recovery built the index).
    pub fn shrink(&mut self) {
        self.offsets.shrink_to_fit();
        self.segments.shrink_to_fit();
        self.runs.shrink_to_fit();
    }

    /// Bytes of heap this index holds (for the benchmark's memory-per-entry figure).
    pub fn heap_bytes(&self) -> usize {
        self.offsets.capacity() * size_of::<u32>()
            + self.segments.capacity() * size_of::<SegmentRun>()
            + self.runs.capacity() * size_of::<TermRun>()
    }

    fn check(&self) {
        assert!(
            self.base >= self.dummy_index,
            "base {} below the dummy {}",
            self.base,
            self.dummy_index
        );
        assert_eq!(
            self.runs.is_empty(),
            self.len() == 0,
            "term runs cover exactly the live entries"
        );
        if let Some(run) = self.runs.front() {
            assert_eq!(
                run.first,
                self.dummy_index + 1,
                "the first term run starts after the dummy"
            );
        }
        debug_assert!(
            self.runs.iter().zip(self.runs.iter().skip(1)).all(|(a, b)| a.first < b.first)
        );
        assert_eq!(
            self.segments.is_empty(),
            self.offsets.is_empty(),
            "segment runs cover exactly the located entries"
        );
        if let Some(run) = self.segments.front() {
            assert_eq!(run.first, self.base + 1, "the first segment run starts after the base");
        }
        debug_assert!(
            self.segments
                .iter()
                .zip(self.segments.iter().skip(1))
                .all(|(a, b)| { a.first < b.first && a.segment < b.segment })
        );
        debug_assert!(self.runs.back().is_none_or(|run| run.first <= self.last_index()));
        assert!(
            self.segments.back().is_none_or(|run| run.segment == self.tail_segment)
                && self.runs.back().is_none_or(|run| run.term == self.tail_term),
            "the cached tails are the runs' last"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const L: Loc = Loc { segment: 1, offset: 40 };

    #[test]
    fn terms_and_bounds_follow_the_storage_contract() {
        let mut index = LogIndex::new(3, 3);
        index.append(4, [4, 4, 5], L);
        assert!(matches!(index.term(2), Err(Error::Compacted)));
        assert_eq!(index.term(3).unwrap(), 3);
        assert_eq!(index.term(5).unwrap(), 4);
        assert_eq!(index.term(6).unwrap(), 5);
        assert!(matches!(index.term(7), Err(Error::Unavailable)));
        index.compact(5, 4);
        assert_eq!((index.dummy_index(), index.dummy_term(), index.last_index()), (5, 4, 6));
        assert_eq!(index.term(6).unwrap(), 5);
        index.compact(6, 5);
        assert_eq!(index.len(), 0);
        assert!(matches!(index.term(7), Err(Error::Unavailable)));
    }

    #[test]
    fn missing_entries_take_no_memory_and_compact_away() {
        let mut index = LogIndex::with_missing(10, 2, u64::MAX - 5);
        assert!(index.has_missing());
        assert_eq!(
            index.heap_bytes(),
            index.runs.capacity() * size_of::<TermRun>(),
            "no memory per missing entry"
        );
        assert_eq!(index.loc(11), Loc::MISSING);
        index.compact(1000, 3);
        assert!(index.has_missing());
        index.append(1001, [4, 4], L);
        assert!(!index.has_missing(), "an overwrite replaces the missing entries after it");
        assert_eq!(index.loc(1002), L);
        assert_eq!(index.term(1001).unwrap(), 4);
        index.compact(1002, 4);
        assert_eq!((index.len(), index.last_index()), (0, 1002));
        let mut covered = LogIndex::with_missing(0, 0, 50);
        covered.append(51, [1], L);
        covered.compact(50, 7);
        assert!(!covered.has_missing(), "compacting past every missing entry clears them");
        assert_eq!(covered.first_loc(), Some(L));
    }

    #[test]
    #[should_panic(expected = "leaves a gap")]
    fn an_append_past_the_end_is_a_broken_invariant() {
        LogIndex::new(0, 0).append(2, [1], L);
    }

    #[test]
    fn memory_per_entry_is_eight_bytes_plus_runs() {
        let mut index = LogIndex::new(0, 0);
        for i in 1..=100_000u64 {
            index.append(i, [1 + i / 50_000], L);
        }
        let per_entry = index.heap_bytes() as f64 / 100_000.0;
        assert!(per_entry <= 16.0, "{per_entry} bytes per entry");
        assert_eq!(index.runs.len(), 3);
    }

    proptest! {
        /// Random appends (with overwrites) and compactions against a plain map of terms.
        #[test]
        fn index_agrees_with_a_map(ops in proptest::collection::vec((0u8..3, 0u64..8, 1u64..6, 0u64..3), 1..60)) {
            let mut index = LogIndex::new(0, 0);
            // Index -> (term, location).
            let mut model: BTreeMap<u64, (u64, Loc)> = BTreeMap::new();
            let mut dummy = (0u64, 0u64);
            let mut term = 1;
            // Each append is a new record; every other one starts a new segment.
            let mut at = Loc { segment: 1, offset: 40 };
            for (k, (kind, back, len, bump)) in ops.into_iter().enumerate() {
                let last = dummy.0 + model.len() as u64;
                if kind < 2 {
                    let first = (last + 1).saturating_sub(back).max(dummy.0 + 1);
                    term += bump;
                    at = if k % 2 == 0 {
                        Loc { segment: at.segment + 1, offset: 40 }
                    } else {
                        Loc { segment: at.segment, offset: at.offset + 64 }
                    };
                    model.retain(|&i, _| i < first);
                    for i in first..first + len {
                        model.insert(i, (term, at));
                    }
                    index.append(first, std::iter::repeat_n(term, len as usize), at);
                } else if last > dummy.0 {
                    let cut = last.saturating_sub(back).max(dummy.0 + 1);
                    dummy = (cut, model[&cut].0);
                    model.retain(|&i, _| i > cut);
                    index.compact(cut, dummy.1);
                }
                prop_assert_eq!(index.last_index(), dummy.0 + model.len() as u64);
                prop_assert_eq!(index.term(dummy.0).unwrap(), dummy.1);
                for (i, (t, loc)) in &model {
                    prop_assert_eq!(index.term(*i).unwrap(), *t);
                    prop_assert_eq!(index.loc(*i), *loc);
                }
            }
        }
    }
}
