//! The `Storage` contract a Raft node reads its log through, and the argument rules every
//! implementation shares.
//!
//! The contract is etcd-raft's. The log always begins with a *dummy entry* that carries only the
//! index and term of the last compacted (or snapshotted) entry; with `offset` the dummy's index,
//! `first_index() == offset + 1` and `last_index() == offset + len - 1`, where `len` counts the
//! dummy. A fresh storage holds only the dummy `(0, 0)`: first index 1, last index 0.
//!
//! The argument checks below (`check_entries_range`, `trim_append`, ...) are the rules every
//! implementation shares, so that `MemoryStorage` and `WalStorage` refuse exactly the same calls.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::types::{Entry, RaftState, RepairState, Snapshot, SnapshotMetadata};

/// Read access to a Raft log, its persisted state and its newest snapshot.
///
/// Every method takes `&self`; implementations that change underneath (all of raftwal's) lock
/// internally, and what they return is owned by the caller.
pub trait Storage {
    /// The persisted hard state and the membership as of the newest snapshot.
    fn initial_state(&self) -> Result<RaftState>;

    /// The entries in `[lo, hi)`, cut to the longest prefix whose summed
    /// [`Entry::encoded_len`] is at most `max_size` but never fewer than one entry
    /// (`u64::MAX` means no limit).
    ///
    /// Errors: `lo <= offset` gives [`Error::Compacted`]; a log holding only the dummy gives
    /// [`Error::Unavailable`]; `hi > last_index() + 1` or `lo > hi` is a contract violation.
    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>>;

    /// The term of the entry at `index`; `index == offset` answers the dummy's term.
    ///
    /// Errors: `index < offset` gives [`Error::Compacted`], `index > last_index()` gives
    /// [`Error::Unavailable`].
    fn term(&self, index: u64) -> Result<u64>;

    /// The index of the first entry that can be read: the dummy's index plus one.
    fn first_index(&self) -> Result<u64>;

    /// The index of the last entry (the dummy's index when the log holds no entry).
    fn last_index(&self) -> Result<u64>;

    /// The newest snapshot.
    fn snapshot(&self) -> Result<Snapshot>;

    /// Whether the log lost durable entries to damage and is being repaired from a leader:
    /// while this is `Some`, the node must not vote or campaign. It clears (durably, for a
    /// durable storage) once the log again holds an entry at the returned index or beyond, or a
    /// snapshot covering it. Storages that cannot lose durable data answer `None`.
    fn repair_state(&self) -> Result<Option<RepairState>> {
        Ok(None)
    }
}

macro_rules! forward_storage {
    ($($target:ty),*) => {$(
        impl<S: Storage + ?Sized> Storage for $target {
            fn initial_state(&self) -> Result<RaftState> {
                (**self).initial_state()
            }
            fn entries(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>> {
                (**self).entries(lo, hi, max_size)
            }
            fn term(&self, index: u64) -> Result<u64> {
                (**self).term(index)
            }
            fn first_index(&self) -> Result<u64> {
                (**self).first_index()
            }
            fn last_index(&self) -> Result<u64> {
                (**self).last_index()
            }
            fn snapshot(&self) -> Result<Snapshot> {
                (**self).snapshot()
            }
            fn repair_state(&self) -> Result<Option<RepairState>> {
                (**self).repair_state()
            }
        }
    )*};
}

forward_storage!(&S, Arc<S>, Box<S>);

/// Checks the arguments of [`Storage::entries`] against a log whose dummy is at `offset` and
/// whose last entry is `last`.
pub(crate) fn check_entries_range(lo: u64, hi: u64, offset: u64, last: u64) -> Result<()> {
    if lo <= offset {
        return Err(Error::Compacted);
    }
    if hi > last.saturating_add(1) {
        return Err(Error::contract(format!("entries hi({hi}) is out of bound lastindex({last})")));
    }
    if lo > hi {
        return Err(Error::contract(format!("entries lo({lo}) is greater than hi({hi})")));
    }
    if last == offset {
        // Only the dummy is present.
        return Err(Error::Unavailable);
    }
    Ok(())
}

/// How many of `sizes` (encoded lengths, in log order) fit in `max_size`: the longest prefix whose
/// sum is at most `max_size`, but at least one when there is any.
pub(crate) fn limit_size(sizes: impl IntoIterator<Item = u64>, max_size: u64) -> usize {
    let mut total = 0u64;
    let mut count = 0usize;
    for size in sizes {
        total = total.saturating_add(size);
        if count > 0 && total > max_size {
            break;
        }
        count += 1;
    }
    count
}

/// The part of `entries` an append keeps, given a log whose first readable index is `first` and
/// last index `last`: entries below `first` are dropped; the rest must start at or before
/// `last + 1` and be contiguous. An empty result means the append is a no-op. The caller replaces
/// its log from the first kept entry's index onward.
pub(crate) fn trim_append(entries: &[Entry], first: u64, last: u64) -> Result<&[Entry]> {
    let Some(head) = entries.first() else {
        return Ok(entries);
    };
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index.wrapping_add(1) {
            return Err(Error::contract(format!(
                "appended entries are not contiguous: {} follows {}",
                pair[1].index, pair[0].index
            )));
        }
    }
    let tail = entries[entries.len() - 1].index;
    if tail < first {
        return Ok(&[]);
    }
    let kept = &entries[first.saturating_sub(head.index) as usize..];
    let kept_head = kept[0].index;
    if kept_head > last.saturating_add(1) {
        return Err(Error::contract(format!(
            "missing log entry [last: {last}, append at: {kept_head}]"
        )));
    }
    Ok(kept)
}

/// The term of the snapshot a node creates at `index` (etcd's `CreateSnapshot`), given the index
/// of the newest snapshot, the log's answer to `term(index)` and the last index.
///
/// Errors: `index` at or below the newest snapshot gives [`Error::SnapshotOutOfDate`]; an index
/// the log has compacted past gives [`Error::Compacted`] (the entry's term is gone, as
/// `Storage::term` says); an index beyond the last entry is a contract violation.
pub(crate) fn snapshot_term(
    index: u64,
    snapshot_index: u64,
    term: Result<u64>,
    last: u64,
) -> Result<u64> {
    if index <= snapshot_index {
        return Err(Error::SnapshotOutOfDate);
    }
    match term {
        Err(Error::Unavailable) => {
            Err(Error::contract(format!("snapshot {index} is out of bound lastindex({last})")))
        }
        other => other,
    }
}

/// Checks that a snapshot at `incoming` may replace a log whose newest snapshot is `current`
/// and whose last index is `last` (etcd's `ApplySnapshot`).
///
/// A snapshot at index 0 carries only a membership: it bootstraps a storage that has never held
/// an entry or a snapshot, and is [`Error::SnapshotOutOfDate`] on any other (applied there, it
/// would wipe the log, or replace the bootstrap snapshot under the same file name). Any other
/// snapshot must be newer than the newest one.
pub(crate) fn check_apply_snapshot(
    current: &SnapshotMetadata,
    last: u64,
    incoming: u64,
) -> Result<()> {
    if incoming == 0 {
        let empty = *current == SnapshotMetadata::default() && last == 0;
        return if empty { Ok(()) } else { Err(Error::SnapshotOutOfDate) };
    }
    if current.index >= incoming {
        return Err(Error::SnapshotOutOfDate);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfState;

    #[test]
    fn limit_size_keeps_at_least_one_and_the_longest_fitting_prefix() {
        assert_eq!(limit_size([], 0), 0);
        assert_eq!(limit_size([10, 10, 10], 0), 1);
        assert_eq!(limit_size([10, 10, 10], 19), 1);
        assert_eq!(limit_size([10, 10, 10], 20), 2);
        assert_eq!(limit_size([10, 10, 10], 29), 2);
        assert_eq!(limit_size([10, 10, 10], u64::MAX), 3);
        // u64::MAX means no limit, even when the sum saturates.
        assert_eq!(limit_size([u64::MAX, 1], u64::MAX), 2);
        assert_eq!(limit_size([u64::MAX - 1, 2], u64::MAX - 1), 1);
    }

    #[test]
    fn trim_append_rejects_non_contiguous_input() {
        let es = [Entry::new(5, 1, vec![]), Entry::new(7, 1, vec![])];
        assert!(matches!(trim_append(&es, 1, 10), Err(Error::ContractViolation(_))));
    }

    #[test]
    fn snapshot_term_follows_etcd_create_snapshot() {
        assert!(matches!(snapshot_term(5, 5, Ok(2), 9), Err(Error::SnapshotOutOfDate)));
        assert!(matches!(snapshot_term(6, 5, Ok(2), 9), Ok(2)));
        assert!(matches!(snapshot_term(6, 0, Err(Error::Compacted), 9), Err(Error::Compacted)));
        assert!(matches!(
            snapshot_term(10, 0, Err(Error::Unavailable), 9),
            Err(Error::ContractViolation(_))
        ));
    }

    #[test]
    fn an_index_0_snapshot_only_bootstraps_an_empty_log() {
        let out_of_date = |r: Result<()>| matches!(r, Err(Error::SnapshotOutOfDate));
        let at = |index, term| SnapshotMetadata { index, term, ..SnapshotMetadata::default() };
        let none = SnapshotMetadata::default();
        assert!(check_apply_snapshot(&none, 0, 0).is_ok());
        assert!(out_of_date(check_apply_snapshot(&none, 3, 0)));
        assert!(out_of_date(check_apply_snapshot(&at(4, 1), 4, 0)));
        // A snapshot at 4, then the log cut back by a conflicting append at 1.
        assert!(out_of_date(check_apply_snapshot(&at(4, 1), 0, 0)));
        // A bootstrap snapshot held already, even with no entry after it.
        assert!(out_of_date(check_apply_snapshot(&at(0, 1), 0, 0)));
        let members = SnapshotMetadata {
            conf_state: ConfState { voters: vec![1], ..Default::default() },
            ..none.clone()
        };
        assert!(out_of_date(check_apply_snapshot(&members, 0, 0)));
        assert!(check_apply_snapshot(&none, 3, 2).is_ok());
        assert!(out_of_date(check_apply_snapshot(&at(4, 1), 9, 4)));
        assert!(check_apply_snapshot(&at(4, 1), 9, 5).is_ok());
    }
}
