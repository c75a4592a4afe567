//! `WriteBatch`: changes to many groups, written as one unit (all of it survives a crash, or
//! none of it) with at most one sync.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::types::{Entry, HardState};

/// What a batch asks of one group, in the order added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// Entries (etcd append semantics), `entries` a range of the batch's `entries`, and a
    /// hard state.
    Save { group: u64, hard_state: Option<HardState>, entries: Range<usize> },
    /// Compaction up to an index.
    Compact { group: u64, index: u64 },
}

/// Work for many groups, written by [`crate::LogEngine::write`] as one record set: after a crash
/// either every change of the batch is there or none is. Items apply in the order they were
/// added; each group keeps etcd's semantics (entries below the first index are ignored, a
/// conflicting suffix is replaced, compaction must stay within the log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub(crate) items: Vec<Item>,
    /// The entries of every `Save`, one after the other: one buffer for the batch instead of
    /// one per save, kept (with `items`) across `clear` for the next batch.
    pub(crate) entries: Vec<Entry>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Appends `entries` to `group` (etcd append semantics; they must have consecutive indices)
    /// and records `hard_state`, if given.
    pub fn save(
        &mut self,
        group: u64,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<()> {
        if let Some(pair) =
            entries.windows(2).find(|w| w[0].index.checked_add(1) != Some(w[1].index))
        {
            return Err(Error::contract(format!(
                "entries of group {group} are not consecutive: {} then {}",
                pair[0].index, pair[1].index
            )));
        }
        if entries.last().is_some_and(|e| e.index == u64::MAX) {
            return Err(Error::contract("index u64::MAX is reserved"));
        }
        if hard_state.is_none() && entries.is_empty() {
            return Ok(());
        }
        let start = self.entries.len();
        self.entries.extend_from_slice(entries);
        self.items.push(Item::Save {
            group,
            hard_state: hard_state.copied(),
            entries: start..self.entries.len(),
        });
        Ok(())
    }

    /// The entries of a `Save` item.
    pub(crate) fn entries_of(&self, range: &Range<usize>) -> &[Entry] {
        &self.entries[range.clone()]
    }

    /// Compacts `group` up to `index` (entry `index` becomes the dummy), checked when the batch
    /// is written: `Compacted` if the group's dummy is already at or past it, a contract
    /// violation if it is beyond the group's last index.
    pub fn compact(&mut self, group: u64, index: u64) -> Result<()> {
        if index == u64::MAX {
            return Err(Error::contract("index u64::MAX is reserved"));
        }
        self.items.push(Item::Compact { group, index });
        Ok(())
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Forgets every change (the batch can be reused).
    pub fn clear(&mut self) {
        self.items.clear();
        self.entries.clear();
    }

    /// Number of items added.
    pub fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_the_reserved_index_are_refused_at_once() {
        let mut batch = WriteBatch::new();
        let gap = [Entry::new(1, 1, ""), Entry::new(3, 1, "")];
        assert!(matches!(batch.save(1, None, &gap), Err(Error::ContractViolation(_))));
        let last = [Entry::new(u64::MAX, 1, "")];
        assert!(matches!(batch.save(1, None, &last), Err(Error::ContractViolation(_))));
        assert!(batch.is_empty());
        batch.save(1, None, &[]).unwrap();
        assert!(batch.is_empty(), "a save with nothing in it adds nothing");
        batch.save(2, Some(&HardState { term: 1, vote: 2, commit: 0 }), &[]).unwrap();
        batch.compact(2, 5).unwrap();
        assert_eq!(batch.len(), 2);
        batch.clear();
        assert!(batch.is_empty());
    }
}
