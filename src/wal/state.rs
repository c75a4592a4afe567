//! The log's state as the records describe it, and the one set of rules that applies a record to
//! it, used both when writing (after the write) and when replaying at open.

use crate::types::{HardState, SnapshotMetadata};
use crate::wal::format::Checkpoint;
use crate::wal::index::{Loc, LogIndex};

/// Everything the WAL's records establish.
#[derive(Debug, Default)]
pub struct LogState {
    /// The dummy entry and the live entries' locations and terms.
    pub index: LogIndex,
    /// The newest hard state.
    pub hard_state: HardState,
    /// The newest snapshot's metadata (index 0: none).
    pub snapshot: SnapshotMetadata,
}

/// A record that contradicts the state it is applied to.
pub type Contradiction = String;

impl LogState {
    /// The checkpoint that describes this state.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            dummy_index: self.index.dummy_index(),
            dummy_term: self.index.dummy_term(),
            last_index: self.index.last_index(),
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
        }
    }

    /// A checkpoint: establishes the state when it starts the replay (`first`), otherwise must
    /// equal the state replayed so far.
    pub fn apply_checkpoint(&mut self, cp: &Checkpoint, first: bool) -> Result<(), Contradiction> {
        if cp.last_index < cp.dummy_index {
            return Err(format!(
                "checkpoint last index {} below dummy {}",
                cp.last_index, cp.dummy_index
            ));
        }
        if first {
            self.index = LogIndex::new(cp.dummy_index, cp.dummy_term);
            if cp.last_index > cp.dummy_index {
                // Entries that lay in segments deleted after they were compacted: placeholders
                // that later records must compact away.
                self.index.append_missing(cp.last_index - cp.dummy_index, 0);
            }
            self.hard_state = cp.hard_state;
            self.snapshot = cp.snapshot.clone();
            return Ok(());
        }
        let here = self.checkpoint();
        if here != *cp {
            return Err(format!("checkpoint {cp:?} disagrees with the replayed state {here:?}"));
        }
        Ok(())
    }

    /// Entries `first..first + terms.len()` written in the record at `loc`.
    pub fn apply_entries(
        &mut self,
        first: u64,
        terms: impl ExactSizeIterator<Item = u64>,
        loc: Loc,
    ) -> Result<(), Contradiction> {
        let (dummy, last) = (self.index.dummy_index(), self.index.last_index());
        if first <= dummy || first > last + 1 {
            return Err(format!("entries at {first} do not attach to the log ({dummy}, {last}]"));
        }
        self.index.append(first, terms, loc);
        Ok(())
    }

    /// A hard state record.
    pub fn apply_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// A snapshot marker.
    pub fn apply_snapshot(&mut self, metadata: &SnapshotMetadata, resets_log: bool) {
        if resets_log {
            self.index.reset(metadata.index, metadata.term);
        }
        self.snapshot = metadata.clone();
    }

    /// A compaction marker.
    pub fn apply_compact(&mut self, index: u64, term: u64) -> Result<(), Contradiction> {
        let (dummy, last) = (self.index.dummy_index(), self.index.last_index());
        if index <= dummy || index > last {
            return Err(format!("compaction at {index} is outside the log ({dummy}, {last}]"));
        }
        if self.index.loc(index) != Loc::MISSING {
            let known = self.index.term(index).expect("index is live");
            if known != term {
                return Err(format!(
                    "compaction at {index} names term {term}, the log has {known}"
                ));
            }
        }
        self.index.compact(index, term);
        Ok(())
    }
}
