//! The Raft log as the core sees it: entries already in [`Storage`] followed by *unstable*
//! entries (and possibly a snapshot) the application has not persisted yet, with the
//! committed and applied indices.
//!
//! The core never writes to storage. New entries go to the unstable part; `Ready` hands them to
//! the application, and `advance` marks them stable once persisted, after which they are read
//! back through `Storage`.

use crate::contract::{Storage, limit_size};
use crate::error::{Error, Result};
use crate::types::{Entry, Snapshot};

/// Entries and a snapshot not yet persisted by the application.
#[derive(Clone, Debug, Default)]
pub struct Unstable {
    /// An incoming snapshot to persist, if any.
    pub snapshot: Option<Snapshot>,
    /// Entries to persist. Invariant: `entries[k].index == offset + k`.
    pub entries: Vec<Entry>,
    /// Index of `entries[0]` (or of the next entry to come when empty).
    pub offset: u64,
}

impl Unstable {
    fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.metadata.index + 1)
    }

    fn maybe_last_index(&self) -> Option<u64> {
        match self.entries.len() {
            0 => self.snapshot.as_ref().map(|s| s.metadata.index),
            n => Some(self.offset + n as u64 - 1),
        }
    }

    fn maybe_term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            let s = self.snapshot.as_ref()?;
            return (s.metadata.index == index).then_some(s.metadata.term);
        }
        let last = self.maybe_last_index()?;
        if index > last {
            return None;
        }
        Some(self.entries[(index - self.offset) as usize].term)
    }

    /// Drops entries up to `index` once persisted, unless the entry at `index` was replaced
    /// (its term is no longer `term`) since the `Ready` that handed it out.
    fn stable_to(&mut self, index: u64, term: u64) {
        if index < self.offset || self.maybe_term(index) != Some(term) {
            return;
        }
        self.entries.drain(..=(index - self.offset) as usize);
        self.offset = index + 1;
    }

    fn stable_snap_to(&mut self, index: u64) {
        if self.snapshot.as_ref().is_some_and(|s| s.metadata.index == index) {
            self.snapshot = None;
        }
    }

    fn restore(&mut self, snapshot: Snapshot) {
        self.offset = snapshot.metadata.index + 1;
        self.entries.clear();
        self.snapshot = Some(snapshot);
    }

    fn truncate_and_append(&mut self, ents: &[Entry]) {
        let after = ents[0].index;
        let end = self.offset + self.entries.len() as u64;
        if after == end {
            // Appends right after the last unstable entry.
        } else if after <= self.offset {
            // Replaces every unstable entry; the stable log beyond `after` is replaced too,
            // which storage does when these entries are appended to it.
            self.offset = after;
            self.entries.clear();
        } else {
            self.entries.truncate((after - self.offset) as usize);
        }
        self.entries.extend_from_slice(ents);
        debug_assert!(
            self.entries.iter().enumerate().all(|(k, e)| e.index == self.offset + k as u64),
            "unstable entries must be contiguous from offset {}",
            self.offset
        );
    }
}

/// The log: storage plus unstable part, with committed and applied indices.
pub struct RaftLog<S: Storage> {
    /// The persisted log.
    pub store: S,
    /// What the application has not persisted yet.
    pub unstable: Unstable,
    /// Highest index known to be committed.
    // Invariant: applied <= committed <= last_index().
    pub committed: u64,
    /// Highest index the application has applied.
    pub applied: u64,
    /// Limit on the bytes of committed entries handed out in one `Ready`.
    pub max_next_committed_size: u64,
}

impl<S: Storage> RaftLog<S> {
    /// A log over `store`, with committed and applied set to just before its first entry.
    pub fn new(store: S, max_next_committed_size: u64) -> Result<RaftLog<S>> {
        let first = store.first_index()?;
        let last = store.last_index()?;
        Ok(RaftLog {
            store,
            unstable: Unstable { snapshot: None, entries: Vec::new(), offset: last + 1 },
            committed: first - 1,
            applied: first - 1,
            max_next_committed_size,
        })
    }

    /// Index of the first entry that can be read.
    pub fn first_index(&self) -> u64 {
        match self.unstable.maybe_first_index() {
            Some(i) => i,
            None => self.store.first_index().expect("storage first_index failed"),
        }
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> u64 {
        match self.unstable.maybe_last_index() {
            Some(i) => i,
            None => self.store.last_index().expect("storage last_index failed"),
        }
    }

    /// Term of the entry at `index`: `Compacted` below the dummy, `Unavailable` past the end.
    pub fn term(&self, index: u64) -> Result<u64> {
        let dummy = self.first_index() - 1;
        if index < dummy {
            return Err(Error::Compacted);
        }
        if index > self.last_index() {
            return Err(Error::Unavailable);
        }
        if let Some(t) = self.unstable.maybe_term(index) {
            return Ok(t);
        }
        self.store.term(index)
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> u64 {
        let last = self.last_index();
        self.term(last).unwrap_or_else(|e| {
            panic!("term of the last entry {last} must be readable: {e}. Was the log truncated?")
        })
    }

    /// Whether the entry at `index` has term `term`.
    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// Whether a log ending at (`last_index`, `term`) is at least as up to date as this one.
    pub fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        let our_term = self.last_term();
        term > our_term || (term == our_term && last_index >= self.last_index())
    }

    /// The first entry of `ents` whose index is missing here or whose term differs; 0 if
    /// every one matches.
    pub fn find_conflict(&self, ents: &[Entry]) -> u64 {
        ents.iter().find(|e| !self.match_term(e.index, e.term)).map_or(0, |e| e.index)
    }

    /// The largest index at or below `index` whose term is at most `term`, with that term:
    /// every entry above it cannot match an entry of term `term` or less, so a leader that
    /// probes there skips a whole term per round trip. An unreadable term (compacted) answers
    /// `(index, 0)`: a possible match of unknown term.
    pub fn find_conflict_by_term(&self, mut index: u64, term: u64) -> (u64, u64) {
        // Bounded by `index`; each step moves one entry down.
        while index > 0 {
            match self.term(index) {
                Err(_) => return (index, 0),
                Ok(t) if t <= term => return (index, t),
                Ok(_) => index -= 1,
            }
        }
        (0, 0)
    }

    /// Appends entries that follow (`index`, `log_term`) if the log matches there, truncating a
    /// conflicting suffix, and advances commit to `min(committed, last new index)`. Returns the
    /// last new index, or `None` when the log does not match at `index`.
    pub fn maybe_append(
        &mut self,
        index: u64,
        log_term: u64,
        committed: u64,
        ents: &[Entry],
    ) -> Option<u64> {
        if !self.match_term(index, log_term) {
            return None;
        }
        let last_new = index + ents.len() as u64;
        let conflict = self.find_conflict(ents);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with committed entry (committed {})",
                self.committed
            );
            let start = (conflict - (index + 1)) as usize;
            self.append(&ents[start..]);
        }
        self.commit_to(committed.min(last_new));
        Some(last_new)
    }

    /// Appends entries to the unstable part, replacing any suffix from their first index on.
    /// Returns the new last index.
    pub fn append(&mut self, ents: &[Entry]) -> u64 {
        let Some(first) = ents.first() else {
            return self.last_index();
        };
        let after = first.index - 1;
        assert!(
            after >= self.committed,
            "appending after {after} would truncate committed entries (committed {})",
            self.committed
        );
        assert!(
            first.index <= self.last_index() + 1,
            "appending at {} leaves a gap after last index {}",
            first.index,
            self.last_index()
        );
        self.unstable.truncate_and_append(ents);
        self.last_index()
    }

    /// Raises the commit index to `to` (never lowers it).
    pub fn commit_to(&mut self, to: u64) {
        if self.committed >= to {
            return;
        }
        let last = self.last_index();
        assert!(
            to <= last,
            "commit {to} is out of range [last index {last}]. Was the raft log corrupted, truncated, or lost?"
        );
        self.committed = to;
    }

    /// Commits up to `max_index` if the entry there has term `term`: a leader commits by
    /// counting only entries of its own term.
    pub fn maybe_commit(&mut self, max_index: u64, term: u64) -> bool {
        if max_index > self.committed && self.term(max_index).is_ok_and(|t| t == term) {
            self.commit_to(max_index);
            return true;
        }
        false
    }

    /// Records that the application applied everything up to `index`.
    pub fn applied_to(&mut self, index: u64) {
        if index == 0 {
            return;
        }
        assert!(
            index <= self.committed && index >= self.applied,
            "applied {index} is out of range [prev applied {}, committed {}]",
            self.applied,
            self.committed
        );
        self.applied = index;
    }

    /// Marks unstable entries up to (`index`, `term`) as persisted.
    pub fn stable_to(&mut self, index: u64, term: u64) {
        self.unstable.stable_to(index, term);
    }

    /// Marks the unstable snapshot at `index` as persisted.
    pub fn stable_snap_to(&mut self, index: u64) {
        self.unstable.stable_snap_to(index);
    }

    /// Replaces the log with a snapshot: the snapshot becomes the unstable head and
    /// everything it covers is committed.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.committed = snapshot.metadata.index;
        self.unstable.restore(snapshot);
    }

    /// Entries not yet persisted.
    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    /// The snapshot: the unstable one if any, else the storage's.
    pub fn snapshot(&self) -> Result<Snapshot> {
        match &self.unstable.snapshot {
            Some(s) => Ok(s.clone()),
            None => self.store.snapshot(),
        }
    }

    /// Whether committed entries wait to be applied.
    pub fn has_next_committed_entries(&self) -> bool {
        // The same test as `next_committed_entries`, the cheap half first: the first index may
        // cost a lookup in the storage.
        self.committed > self.applied && self.committed + 1 > self.first_index()
    }

    /// Committed entries not yet applied, at most `max_next_committed_size` bytes (but at
    /// least one entry).
    pub fn next_committed_entries(&self) -> Vec<Entry> {
        // As in `has_next_committed_entries`: no storage lookup for an applied log.
        if self.committed <= self.applied {
            return Vec::new();
        }
        let lo = (self.applied + 1).max(self.first_index());
        let hi = self.committed + 1;
        if lo >= hi {
            return Vec::new();
        }
        self.slice(lo, hi, self.max_next_committed_size).unwrap_or_else(|e| {
            panic!("unexpected error reading committed entries [{lo}, {hi}): {e}")
        })
    }

    /// Entries from `index` to the end, at most `max_size` bytes (at least one entry).
    pub fn entries(&self, index: u64, max_size: u64) -> Result<Vec<Entry>> {
        let last = self.last_index();
        if index > last {
            return Ok(Vec::new());
        }
        self.slice(index, last + 1, max_size)
    }

    /// Every entry from the first readable one, for tests and inspection.
    pub fn all_entries(&self) -> Vec<Entry> {
        let first = self.first_index();
        match self.entries(first, u64::MAX) {
            Ok(es) => es,
            // The storage may have been compacted concurrently; read again from its new start.
            Err(Error::Compacted) => self.all_entries(),
            Err(e) => panic!("reading all entries failed: {e}"),
        }
    }

    /// Entries in `[lo, hi)` from storage then the unstable part, cut to `max_size` bytes but
    /// at least one entry.
    pub fn slice(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>> {
        let first = self.first_index();
        if lo < first {
            return Err(Error::Compacted);
        }
        let last = self.last_index();
        assert!(lo <= hi && hi <= last + 1, "slice [{lo}, {hi}) out of bound [{first}, {last}]");
        if lo == hi {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let offset = self.unstable.offset;
        if lo < offset {
            let stored_hi = hi.min(offset);
            let stored = match self.store.entries(lo, stored_hi, max_size) {
                Ok(es) => es,
                Err(Error::Compacted) => return Err(Error::Compacted),
                Err(e) => panic!("entries [{lo}, {stored_hi}) unavailable from storage: {e}"),
            };
            // Storage cut the read short for size: the unstable part cannot be included.
            if (stored.len() as u64) < stored_hi - lo {
                return Ok(stored);
            }
            out = stored;
        }
        if hi > offset {
            let from = lo.max(offset);
            let unstable = &self.unstable.entries[(from - offset) as usize..(hi - offset) as usize];
            out.extend_from_slice(unstable);
        }
        let keep = limit_size(out.iter().map(Entry::encoded_len), max_size);
        out.truncate(keep);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use crate::types::SnapshotMetadata;

    fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| Entry::new(i, term, vec![])).collect()
    }

    fn log_with(stored: &[Entry]) -> RaftLog<MemoryStorage> {
        let s = MemoryStorage::new();
        s.append(stored).unwrap();
        RaftLog::new(s, u64::MAX).unwrap()
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        Snapshot {
            metadata: SnapshotMetadata { index, term, ..Default::default() },
            data: Default::default(),
        }
    }

    #[test]
    fn reads_span_storage_and_unstable_entries() {
        let mut log = log_with(&ents(1..=3, 1));
        assert_eq!(log.unstable.offset, 4);
        log.append(&ents(4..=6, 2));
        assert_eq!(log.last_index(), 6);
        assert_eq!(log.term(3).unwrap(), 1);
        assert_eq!(log.term(5).unwrap(), 2);
        let got: Vec<u64> = log.slice(2, 6, u64::MAX).unwrap().iter().map(|e| e.index).collect();
        assert_eq!(got, vec![2, 3, 4, 5]);
        assert!(matches!(log.term(7), Err(Error::Unavailable)));
        assert_eq!(log.term(0).unwrap(), 0, "the dummy's term");
    }

    #[test]
    fn slicing_respects_max_size_but_returns_one_entry() {
        let mut log = log_with(&ents(1..=2, 1));
        log.append(&ents(3..=4, 1));
        let each = Entry::new(1, 1, vec![]).encoded_len();
        assert_eq!(log.slice(1, 5, 0).unwrap().len(), 1);
        assert_eq!(log.slice(1, 5, 2 * each).unwrap().len(), 2);
        assert_eq!(log.slice(1, 5, 3 * each).unwrap().len(), 3, "spans both parts");
        assert_eq!(log.slice(1, 5, u64::MAX).unwrap().len(), 4);
    }

    #[test]
    fn append_truncates_a_conflicting_suffix() {
        let mut log = log_with(&ents(1..=3, 1));
        log.append(&ents(4..=6, 1));
        // Replace from 5 on with term 2: unstable is cut.
        log.append(&ents(5..=5, 2));
        assert_eq!(log.last_index(), 5);
        assert_eq!(log.term(5).unwrap(), 2);
        // Replace from 2 on: reaches into the stable part.
        log.append(&ents(2..=2, 3));
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.unstable.offset, 2);
        assert_eq!(log.term(1).unwrap(), 1);
        assert_eq!(log.term(2).unwrap(), 3);
    }

    #[test]
    fn maybe_append_checks_the_previous_entry_and_commits() {
        let mut log = log_with(&[ents(1..=2, 1), ents(3..=3, 2)].concat());
        assert_eq!(log.maybe_append(3, 1, 3, &ents(4..=4, 2)), None, "term mismatch at 3");
        assert_eq!(log.maybe_append(3, 2, 10, &ents(4..=5, 2)), Some(5));
        assert_eq!(log.committed, 5, "commit is capped at the last new entry");
        // Entries already present change nothing.
        assert_eq!(log.maybe_append(1, 1, 5, &ents(2..=2, 1)), Some(2));
        assert_eq!(log.last_index(), 5, "a matching prefix does not truncate");
    }

    #[test]
    #[should_panic(expected = "conflicts with committed entry")]
    fn truncating_committed_entries_panics() {
        let mut log = log_with(&ents(1..=3, 1));
        log.commit_to(3);
        log.maybe_append(1, 1, 3, &ents(2..=2, 9));
    }

    #[test]
    fn find_conflict_by_term_skips_whole_terms() {
        // Terms: 1 1 1 4 4 5 5 6 6 6
        let terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
        let es: Vec<Entry> =
            terms.iter().enumerate().map(|(k, t)| Entry::new(k as u64 + 1, *t, vec![])).collect();
        let log = log_with(&es);
        assert_eq!(log.find_conflict_by_term(10, 3), (3, 1));
        assert_eq!(log.find_conflict_by_term(10, 5), (7, 5));
        assert_eq!(log.find_conflict_by_term(10, 6), (10, 6));
        assert_eq!(log.find_conflict_by_term(5, 0), (0, 0));
        assert_eq!(log.find_conflict(&ents(9..=11, 6)), 11);
        assert_eq!(log.find_conflict(&ents(8..=9, 7)), 8);
        assert_eq!(log.find_conflict(&ents(9..=10, 6)), 0);
    }

    #[test]
    fn find_conflict_by_term_stops_at_compacted_entries() {
        let s = MemoryStorage::new();
        s.apply_snapshot(snapshot(5, 3)).unwrap();
        s.append(&ents(6..=8, 4)).unwrap();
        let log = RaftLog::new(s, u64::MAX).unwrap();
        assert_eq!(log.find_conflict_by_term(8, 3), (5, 3), "the dummy has a known term");
        assert_eq!(log.find_conflict_by_term(4, 1), (4, 0), "compacted: unknown term");
    }

    #[test]
    fn restore_from_snapshot_resets_the_log() {
        let mut log = log_with(&ents(1..=3, 1));
        log.append(&ents(4..=5, 1));
        log.restore(snapshot(10, 4));
        assert_eq!(log.committed, 10);
        assert_eq!(log.first_index(), 11);
        assert_eq!(log.last_index(), 10);
        assert_eq!(log.term(10).unwrap(), 4);
        assert!(matches!(log.term(9), Err(Error::Compacted)));
        assert!(log.unstable_entries().is_empty());
        // Persisting the snapshot moves it to storage.
        log.store.apply_snapshot(snapshot(10, 4)).unwrap();
        log.stable_snap_to(10);
        assert!(log.unstable.snapshot.is_none());
        assert_eq!(log.last_term(), 4);
        assert_eq!(log.first_index(), 11);
    }

    #[test]
    fn stable_to_ignores_entries_replaced_since_the_ready() {
        let mut log = log_with(&[]);
        log.append(&ents(1..=3, 1));
        // The entries at 2.. were replaced by a new leader before the ready was persisted.
        log.append(&ents(2..=2, 2));
        log.stable_to(3, 1);
        assert_eq!(log.unstable_entries().len(), 2, "stale stable_to is ignored");
        log.store.append(log.unstable_entries()).unwrap();
        log.stable_to(2, 2);
        assert!(log.unstable_entries().is_empty());
        assert_eq!(log.unstable.offset, 3);
    }

    #[test]
    fn committed_entries_after_compaction_start_at_first_index() {
        let s = MemoryStorage::new();
        s.append(&ents(1..=10, 1)).unwrap();
        s.compact(4).unwrap();
        let mut log = RaftLog::new(s, 2 * Entry::new(1, 1, vec![]).encoded_len()).unwrap();
        assert_eq!((log.committed, log.applied), (4, 4));
        log.commit_to(9);
        assert!(log.has_next_committed_entries());
        let next = log.next_committed_entries();
        assert_eq!(next.iter().map(|e| e.index).collect::<Vec<_>>(), vec![5, 6], "size-limited");
        log.applied_to(6);
        assert_eq!(log.next_committed_entries()[0].index, 7);
        log.applied_to(9);
        assert!(!log.has_next_committed_entries());
        assert!(matches!(log.slice(3, 5, u64::MAX), Err(Error::Compacted)));
    }
}
