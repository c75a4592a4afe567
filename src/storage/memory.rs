//! `MemoryStorage`: the in-memory `Storage`, and the model every durable storage is tested against.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::contract::{
    Storage, check_apply_snapshot, check_entries_range, limit_size, snapshot_term, trim_append,
};
use crate::error::{Error, Result};
use crate::types::{ConfState, Entry, HardState, RaftState, Snapshot, SnapshotMetadata};

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
            inner.snapshot.metadata.index,
            inner.last_index(),
            snapshot.metadata.index,
        )?;
        inner.entries = vec![Entry {
            index: snapshot.metadata.index,
            term: snapshot.metadata.term,
            ..Entry::default()
        }];
        inner.snapshot = snapshot;
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

    fn check_invariants(&self) {
        assert!(!self.entries.is_empty(), "the dummy entry must always be present");
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
}
