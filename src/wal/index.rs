//! The in-memory index of the live log: where each entry's record lies, and each entry's term.
//!
//! Memory per entry is one [`Loc`] (8 bytes); terms are stored as runs (a leader writes many
//! entries in one term), so they cost next to nothing per entry.

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

/// The dummy entry, then one [`Loc`] and term per live entry.
#[derive(Debug, Default)]
pub struct LogIndex {
    dummy_index: u64,
    dummy_term: u64,
    // Entries dummy_index + 1 ..= dummy_index + missing are `Loc::MISSING`: counted, not stored,
    // because a checkpoint's claim of how many there are is not bounded by any file's size.
    missing: u64,
    // Invariant: locs[k] locates entry dummy_index + missing + 1 + k.
    locs: VecDeque<Loc>,
    // Invariant: runs cover (dummy_index, last] exactly when locs is non-empty; first indices
    // strictly increase; runs[0].first == dummy_index + 1.
    runs: VecDeque<TermRun>,
}

impl LogIndex {
    /// A log of just the dummy `(index, term)`.
    pub fn new(dummy_index: u64, dummy_term: u64) -> LogIndex {
        LogIndex {
            dummy_index,
            dummy_term,
            missing: 0,
            locs: VecDeque::new(),
            runs: VecDeque::new(),
        }
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
        self.dummy_index + self.missing + self.locs.len() as u64
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        usize::try_from(self.missing).unwrap_or(usize::MAX).saturating_add(self.locs.len())
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
        // The last run whose first index is at or below `index`.
        let at = self.runs.partition_point(|run| run.first <= index);
        debug_assert!(at > 0, "runs cover every live entry");
        Ok(self.runs[at - 1].term)
    }

    /// Where entry `index` is. `index` must be live.
    pub fn loc(&self, index: u64) -> Loc {
        assert!(
            index > self.dummy_index && index <= self.last_index(),
            "loc({index}) is outside the live log ({}, {}]",
            self.dummy_index,
            self.last_index()
        );
        let k = index - self.dummy_index - 1;
        if k < self.missing {
            return Loc::MISSING;
        }
        self.locs[(k - self.missing) as usize]
    }

    /// Location of the first live entry, if any.
    pub fn first_loc(&self) -> Option<Loc> {
        if self.missing > 0 { Some(Loc::MISSING) } else { self.locs.front().copied() }
    }

    /// Makes the empty log hold `count` entries of term `term` whose records are missing
    /// ([`Loc::MISSING`]), in constant memory.
    pub fn append_missing(&mut self, count: u64, term: u64) {
        assert_eq!(self.len(), 0, "missing entries come first, right after the dummy");
        if count == 0 {
            return;
        }
        assert!(
            self.dummy_index.checked_add(count).is_some(),
            "{count} missing entries after {} overflow the index",
            self.dummy_index
        );
        self.missing = count;
        self.runs.push_back(TermRun { first: self.dummy_index + 1, term });
        self.check();
    }

    /// Replaces every entry from `first` on with entries `first..first + terms.len()`, each in
    /// the record at `loc`. `first` must lie in `(dummy, last + 1]`.
    pub fn append(&mut self, first: u64, terms: impl IntoIterator<Item = u64>, loc: Loc) {
        assert!(
            first > self.dummy_index && first <= self.last_index() + 1,
            "append at {first} leaves a gap or rewrites the dummy: log is ({}, {}]",
            self.dummy_index,
            self.last_index()
        );
        self.truncate_from(first);
        for (index, term) in (first..).zip(terms) {
            if self.runs.back().is_none_or(|run| run.term != term) {
                self.runs.push_back(TermRun { first: index, term });
            }
            self.locs.push_back(loc);
        }
        self.check();
    }

    /// Drops every entry at or after `index`.
    fn truncate_from(&mut self, index: u64) {
        let keep = index - self.dummy_index - 1;
        if keep < self.missing {
            self.missing = keep;
            self.locs.clear();
        } else {
            self.locs.truncate((keep - self.missing) as usize);
        }
        while self.runs.back().is_some_and(|run| run.first >= index) {
            self.runs.pop_back();
        }
    }

    /// Makes entry `index` (with `term`) the dummy, dropping every entry up to it. `index` must
    /// lie in `(dummy, last]`; `term` must be its term unless its location is missing.
    pub fn compact(&mut self, index: u64, term: u64) {
        assert!(
            index > self.dummy_index && index <= self.last_index(),
            "compact({index}) is outside the live log ({}, {}]",
            self.dummy_index,
            self.last_index()
        );
        let drop = index - self.dummy_index;
        if drop <= self.missing {
            self.missing -= drop;
        } else {
            self.locs.drain(..(drop - self.missing) as usize);
            self.missing = 0;
        }
        // Keep the run that covers index + 1, moved to start there.
        while self.runs.len() > 1 && self.runs[1].first <= index + 1 {
            self.runs.pop_front();
        }
        if self.len() == 0 {
            self.runs.clear();
        } else if let Some(run) = self.runs.front_mut() {
            run.first = index + 1;
        }
        self.dummy_index = index;
        self.dummy_term = term;
        self.check();
    }

    /// Replaces the whole log by the dummy `(index, term)`.
    pub fn reset(&mut self, index: u64, term: u64) {
        *self = LogIndex::new(index, term);
    }

    /// Whether any live entry's record lies in a deleted segment.
    pub fn has_missing(&self) -> bool {
        self.missing > 0 || self.locs.iter().any(|loc| *loc == Loc::MISSING)
    }

    /// Releases spare capacity (after recovery built the index).
    pub fn shrink(&mut self) {
        self.locs.shrink_to_fit();
        self.runs.shrink_to_fit();
    }

    /// Bytes of heap this index holds (for the benchmark's memory-per-entry figure).
    pub fn heap_bytes(&self) -> usize {
        self.locs.capacity() * size_of::<Loc>() + self.runs.capacity() * size_of::<TermRun>()
    }

    fn check(&self) {
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
        debug_assert!(self.runs.back().is_none_or(|run| run.first <= self.last_index()));
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
    fn missing_entries_are_counted_not_stored() {
        let mut index = LogIndex::new(10, 2);
        index.append_missing(1 << 40, 0);
        assert_eq!(index.last_index(), 10 + (1 << 40));
        assert!(index.heap_bytes() < 1024, "no memory per missing entry");
        assert_eq!((index.loc(11), index.first_loc()), (Loc::MISSING, Some(Loc::MISSING)));
        assert!(index.has_missing());
        index.truncate_from(16);
        assert_eq!(index.last_index(), 15);
        index.compact(13, 0);
        assert_eq!((index.dummy_index(), index.last_index(), index.len()), (13, 15, 2));
        assert!(index.has_missing(), "14 and 15 are still missing");
        index.append(15, [3, 3], L);
        assert_eq!((index.loc(14), index.loc(15), index.loc(16)), (Loc::MISSING, L, L));
        index.compact(14, 0);
        assert!(!index.has_missing());
        assert_eq!((index.first_loc(), index.len(), index.term(16).unwrap()), (Some(L), 2, 3));
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
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut dummy = (0u64, 0u64);
            let mut term = 1;
            for (kind, back, len, bump) in ops {
                let last = dummy.0 + model.len() as u64;
                if kind < 2 {
                    let first = (last + 1).saturating_sub(back).max(dummy.0 + 1);
                    term += bump;
                    model.retain(|&i, _| i < first);
                    for i in first..first + len {
                        model.insert(i, term);
                    }
                    index.append(first, std::iter::repeat_n(term, len as usize), L);
                } else if last > dummy.0 {
                    let at = last.saturating_sub(back).max(dummy.0 + 1);
                    dummy = (at, model[&at]);
                    model.retain(|&i, _| i > at);
                    index.compact(at, dummy.1);
                }
                prop_assert_eq!(index.last_index(), dummy.0 + model.len() as u64);
                prop_assert_eq!(index.term(dummy.0).unwrap(), dummy.1);
                for (i, t) in &model {
                    prop_assert_eq!(index.term(*i).unwrap(), *t);
                }
            }
        }
    }
}
