//! `MemoryStorage`: the in-memory `Storage`, and the model every durable storage is tested against.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::contract::{
    Storage, check_apply_snapshot, check_entries_range, limit_size, snapshot_term, trim_append,
};
use crate::error::{Error, Result};
use crate::types::{
    ConfState, Entry, HardState, RaftState, RepairState, Snapshot, SnapshotMetadata,
};

/// A `Storage` held in memory, with etcd's `MemoryStorage` semantics.
///
/// Where etcd panics on a caller's mistake, this returns [`Error::ContractViolation`] and
/// changes nothing.
#[derive(Debug)]
pub struct MemoryStorage {
    inner: RwLock<Inner>,
}

#[derive(Debug)]
struct Inner {
    hard_state: HardState,
    snapshot: Snapshot,
    // Invariant: never empty. `entries[0]` is the dummy (index and term of the last compacted or
    // snapshotted entry, no data); `entries[k].index == entries[0].index + k`.
    entries: Vec<Entry>,
    // Invariant: when `Some(r)`, `r.index > last_index()`: an append or a snapshot that
    // reaches `r.index` clears it.
    repair: Option<RepairState>,
}

impl Clone for MemoryStorage {
    /// An independent copy of the storage as it is now (entries share their data buffers).
    fn clone(&self) -> Self {
        let inner = self.read();
        MemoryStorage {
            inner: RwLock::new(Inner {
                hard_state: inner.hard_state,
                snapshot: inner.snapshot.clone(),
                entries: inner.entries.clone(),
                repair: inner.repair,
            }),
        }
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new()
    }
}

impl MemoryStorage {
    /// An empty storage: just the dummy entry `(0, 0)`.
    pub fn new() -> MemoryStorage {
        MemoryStorage {
            inner: RwLock::new(Inner {
                hard_state: HardState::default(),
                snapshot: Snapshot::default(),
                entries: vec![Entry::default()],
                repair: None,
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while the lock was held cannot leave `Inner` half-changed: every mutation
        // checks first and changes last, so the poison flag carries no information.
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the persisted hard state.
    pub fn set_hard_state(&self, hs: HardState) -> Result<()> {
        self.write().hard_state = hs;
        Ok(())
    }

    /// Marks the log as repairing (see [`Storage::repair_state`]): it lost durable entries up
    /// to `repair.index`, so the node must neither vote nor campaign until the log again
    /// reaches that index. `None` clears it. A state the log already covers (`index` at or
    /// below `last_index()`) is a [`Error::ContractViolation`], and nothing changes.
    pub fn set_repair_state(&self, repair: Option<RepairState>) -> Result<()> {
        let mut inner = self.write();
        if let Some(r) = repair {
            let last = inner.last_index();
            if r.index <= last {
                return Err(Error::contract(format!(
                    "repair index {} is already held: last index {last}",
                    r.index
                )));
            }
        }
        inner.repair = repair;
        Ok(())
    }

    /// Appends `entries`, replacing every existing entry from the first incoming index onward.
    ///
    /// Entries below `first_index()` are ignored. The incoming entries must be contiguous and must
    /// not start beyond `last_index() + 1`.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        let mut inner = self.write();
        let kept = trim_append(entries, inner.first_index(), inner.last_index())?;
        let Some(head) = kept.first() else {
            return Ok(());
        };
        let keep = (head.index - inner.offset()) as usize;
        inner.entries.truncate(keep);
        inner.entries.extend_from_slice(kept);
        inner.end_repair_if_covered();
        inner.check_invariants();
        Ok(())
    }

    /// Discards every entry up to and including `index`, which becomes the new dummy entry.
    /// The stored snapshot is unchanged.
    pub fn compact(&self, index: u64) -> Result<()> {
        let mut inner = self.write();
        let offset = inner.offset();
        if index <= offset {
            return Err(Error::Compacted);
        }
        let last = inner.last_index();
        if index > last {
            return Err(Error::contract(format!(
                "compact {index} is out of bound lastindex({last})"
            )));
        }
        let start = (index - offset) as usize;
        inner.entries.drain(..start);
        inner.entries[0].data = Bytes::new();
        inner.entries[0].entry_type = Default::default();
        inner.check_invariants();
        Ok(())
    }

    /// Records a snapshot of the state machine as of `index` and returns it. `conf_state`, when
    /// given, replaces the stored membership. The log is not compacted.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: Option<ConfState>,
        data: Bytes,
    ) -> Result<Snapshot> {
        let mut inner = self.write();
        let term = snapshot_term(
            index,
            inner.snapshot.metadata.index,
            inner.term(index),
            inner.last_index(),
        )?;
        let conf_state = conf_state.unwrap_or_else(|| inner.snapshot.metadata.conf_state.clone());
        inner.snapshot = Snapshot { metadata: SnapshotMetadata { index, term, conf_state }, data };
        Ok(inner.snapshot.clone())
    }

    /// Replaces the whole log with `snapshot`: afterwards the log holds only the dummy
    /// `(snapshot index, snapshot term)`. A snapshot at index 0 (a membership only) is accepted
    /// only by a storage that never held an entry or a snapshot.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let mut inner = self.write();
        check_apply_snapshot(
            &inner.snapshot.metadata,
            inner.last_index(),
            snapshot.metadata.index,
        )?;
        inner.entries = vec![Entry {
            index: snapshot.metadata.index,
            term: snapshot.metadata.term,
            ..Entry::default()
        }];
        inner.snapshot = snapshot;
        inner.end_repair_if_covered();
        inner.check_invariants();
        Ok(())
    }

    /// The hard state last set.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state
    }
}

impl Inner {
    fn offset(&self) -> u64 {
        self.entries[0].index
    }

    fn first_index(&self) -> u64 {
        self.offset() + 1
    }

    fn last_index(&self) -> u64 {
        self.offset() + self.entries.len() as u64 - 1
    }

    fn term(&self, index: u64) -> Result<u64> {
        let offset = self.offset();
        if index < offset {
            return Err(Error::Compacted);
        }
        self.entries.get((index - offset) as usize).map(|e| e.term).ok_or(Error::Unavailable)
    }

    /// Clears the repair state once the log reaches its index again (by appended entries, or a
    /// snapshot, whose index becomes the dummy's).
    fn end_repair_if_covered(&mut self) {
        if self.repair.is_some_and(|r| self.last_index() >= r.index) {
            self.repair = None;
        }
    }

    fn check_invariants(&self) {
        assert!(!self.entries.is_empty(), "the dummy entry must always be present");
        assert!(
            self.repair.is_none_or(|r| r.index > self.last_index()),
            "repair state {:?} is covered by last index {}",
            self.repair,
            self.last_index()
        );
        debug_assert!(
            self.entries.windows(2).all(|w| w[1].index == w[0].index + 1),
            "entries must be contiguous after the dummy at {}",
            self.offset()
        );
    }
}

impl Storage for MemoryStorage {
    fn initial_state(&self) -> Result<RaftState> {
        let inner = self.read();
        Ok(RaftState {
            hard_state: inner.hard_state,
            conf_state: inner.snapshot.metadata.conf_state.clone(),
        })
    }

    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>> {
        let inner = self.read();
        let offset = inner.offset();
        check_entries_range(lo, hi, offset, inner.last_index())?;
        let range = &inner.entries[(lo - offset) as usize..(hi - offset) as usize];
        let count = limit_size(range.iter().map(Entry::encoded_len), max_size);
        Ok(range[..count].to_vec())
    }

    fn term(&self, index: u64) -> Result<u64> {
        self.read().term(index)
    }

    fn first_index(&self) -> Result<u64> {
        Ok(self.read().first_index())
    }

    fn last_index(&self) -> Result<u64> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.read().snapshot.clone())
    }

    fn repair_state(&self) -> Result<Option<RepairState>> {
        Ok(self.read().repair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
        (lo..hi).map(|i| Entry::new(i, term, Bytes::new())).collect()
    }

    fn repairing(last: u64, index: u64) -> MemoryStorage {
        let s = MemoryStorage::new();
        s.append(&entries(1, last + 1, 1)).unwrap();
        s.set_repair_state(Some(RepairState { index, term: 3 })).unwrap();
        s
    }

    #[test]
    fn a_repair_state_is_answered_until_cleared() {
        let s = MemoryStorage::new();
        assert_eq!(s.repair_state().unwrap(), None, "a new storage lost nothing");
        let r = RepairState { index: 5, term: 2 };
        s.set_repair_state(Some(r)).unwrap();
        assert_eq!(s.repair_state().unwrap(), Some(r));
        assert_eq!(s.clone().repair_state().unwrap(), Some(r), "a copy keeps it");
        s.set_repair_state(None).unwrap();
        assert_eq!(s.repair_state().unwrap(), None);
    }

    #[test]
    fn a_repair_state_the_log_already_covers_is_refused() {
        let s = repairing(3, 5);
        for index in [0, 1, 3] {
            let err = s.set_repair_state(Some(RepairState { index, term: 1 })).unwrap_err();
            assert!(matches!(err, Error::ContractViolation(_)), "{index}: {err:?}");
        }
        assert_eq!(s.repair_state().unwrap(), Some(RepairState { index: 5, term: 3 }));
    }

    #[test]
    fn appends_clear_the_repair_state_only_once_they_reach_its_index() {
        let s = repairing(3, 6);
        s.append(&entries(4, 6, 2)).unwrap();
        assert_eq!(s.last_index().unwrap(), 5);
        assert!(s.repair_state().unwrap().is_some(), "index 6 is not held yet");
        // Replacing a suffix without going further changes nothing.
        s.append(&entries(2, 6, 3)).unwrap();
        assert!(s.repair_state().unwrap().is_some());
        s.append(&entries(6, 7, 3)).unwrap();
        assert_eq!(s.repair_state().unwrap(), None, "the log holds index 6 again");
        // Going past the index at once clears it too.
        let s = repairing(3, 6);
        s.append(&entries(4, 10, 2)).unwrap();
        assert_eq!(s.repair_state().unwrap(), None);
    }

    #[test]
    fn a_snapshot_clears_the_repair_state_only_if_it_covers_its_index() {
        let snap = |index| Snapshot {
            metadata: SnapshotMetadata { index, term: 3, conf_state: ConfState::default() },
            data: Bytes::new(),
        };
        let s = repairing(3, 8);
        s.apply_snapshot(snap(7)).unwrap();
        assert!(s.repair_state().unwrap().is_some(), "7 is below the repair index 8");
        s.apply_snapshot(snap(8)).unwrap();
        assert_eq!(s.repair_state().unwrap(), None);
        let s = repairing(3, 8);
        s.apply_snapshot(snap(20)).unwrap();
        assert_eq!(s.repair_state().unwrap(), None);
    }

    #[test]
    fn compaction_and_hard_state_leave_the_repair_state_alone() {
        let s = repairing(4, 6);
        s.compact(2).unwrap();
        s.set_hard_state(HardState { term: 3, vote: 1, commit: 2 }).unwrap();
        assert_eq!(s.repair_state().unwrap(), Some(RepairState { index: 6, term: 3 }));
    }
}
