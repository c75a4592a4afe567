//! raftwal as the storage of a raft-rs node: [`RaftRsStorage`] implements `raft::Storage` (the
//! `raft` crate 0.7) over a [`WalStorage`], and persists a raft-rs `Ready`.
//!
//! # How raft-rs's log maps onto raftwal's
//!
//! Both logs number entries from 1 and share index, term and entry type, so an index in raft-rs
//! is the same index in raftwal. They differ in where the compacted prefix ends:
//!
//! | | raft-rs (`MemStorage`) | raftwal (etcd) | this adapter |
//! |---|---|---|---|
//! | compacted prefix | no dummy entry | dummy entry at `offset` | raftwal's dummy |
//! | `compact(i)` | drops entries `< i`; `first_index() == i` | makes `i` the dummy; `first_index() == i + 1` | raftwal `compact(i - 1)` |
//! | `compact(i)`, `i <= first_index()` | no-op | `Compacted` | no-op |
//! | `compact(i)`, `i > last_index() + 1` | panics | contract violation | `Other` error |
//! | `term(first_index() - 1)` | only at the snapshot's index | the dummy's term | the dummy's term |
//! | `first_index()` | first entry, or snapshot index + 1 | dummy index + 1 | raftwal's |
//! | `snapshot(request_index, _)` | bumps the index to `request_index` | newest snapshot | newest snapshot, or `SnapshotTemporarilyUnavailable` while it is older than `request_index` |
//! | `entries(.., max_size, ..)` | protobuf sizes | [`Entry::encoded_len`] | raftwal's sizes, still at least one entry |
//!
//! An entry's `data` and `context` are both kept: raftwal's entry data holds a one-byte layout
//! tag followed by the payload ([`encode_entry_data`]). The deprecated `sync_log` flag is not
//! stored. The membership (`ConfState`) is the one of the newest snapshot, as in etcd: after a
//! restart raft-rs replays the committed configuration changes that follow it.
//!
//! Errors map one to one where raft-rs has the same kind (`Compacted`, `Unavailable`,
//! `SnapshotOutOfDate`, `SnapshotTemporarilyUnavailable`); every other raftwal error becomes
//! `StorageError::Other` with the raftwal error inside.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use raft::eraftpb;
use raft::{GetEntriesContext, LightReady, Ready, StorageError};

use crate::WalStorage;
use crate::contract::Storage;
use crate::error::{CorruptionKind, Error};
use crate::types::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};

/// The logging crate raft-rs takes its `Logger` from (`RawNode::new` needs one), at the version
/// raft-rs uses.
pub use slog;

/// Index and term of the snapshot that [`RaftRsStorage::initialize_with_conf_state`] installs:
/// every node of a new cluster starts from the same (empty) snapshot, as raft-rs's examples do.
pub const INITIAL_INDEX: u64 = 1;
/// See [`INITIAL_INDEX`].
pub const INITIAL_TERM: u64 = 1;

/// Layout tag of an entry's data: the raft-rs `data` follows, `context` is empty.
const DATA_ONLY: u8 = 0;
/// Layout tag of an entry's data: a `u32` little-endian context length, the context, then the
/// raft-rs `data`.
const WITH_CONTEXT: u8 = 1;
const TAG_LEN: usize = 1;
const CONTEXT_LEN_LEN: usize = size_of::<u32>();

/// A `raft::Storage` over a [`WalStorage`]. Cheap to clone: clones share the storage, so the
/// application keeps one to persist `Ready`s while the `RawNode` owns another.
#[derive(Clone, Debug)]
pub struct RaftRsStorage {
    wal: Arc<WalStorage>,
}

impl RaftRsStorage {
    /// Wraps `wal`.
    pub fn new(wal: WalStorage) -> RaftRsStorage {
        RaftRsStorage { wal: Arc::new(wal) }
    }

    /// Wraps a shared `wal`.
    pub fn from_arc(wal: Arc<WalStorage>) -> RaftRsStorage {
        RaftRsStorage { wal }
    }

    /// The storage underneath.
    pub fn wal(&self) -> &WalStorage {
        &self.wal
    }

    /// Whether the storage holds nothing yet: no entry, no snapshot and a zero hard state.
    pub fn is_empty(&self) -> bool {
        self.wal.wal().last_index() == 0
            && self.wal.wal().snapshot_metadata() == SnapshotMetadata::default()
            && self.wal.wal().hard_state().is_empty()
    }

    /// Starts a new cluster's member: installs an empty snapshot at
    /// ([`INITIAL_INDEX`], [`INITIAL_TERM`]) carrying `conf_state`. Give every founding member the
    /// same `conf_state`; members added later start empty and receive a snapshot from the leader.
    /// Refused on a storage that already holds anything.
    pub fn initialize_with_conf_state(&self, conf_state: &eraftpb::ConfState) -> raft::Result<()> {
        if !self.is_empty() {
            return Err(to_raft_error(Error::ContractViolation(
                "initialize_with_conf_state on a storage that is not empty".into(),
            )));
        }
        let snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index: INITIAL_INDEX,
                term: INITIAL_TERM,
                conf_state: conf_state_from_raft(conf_state),
            },
            data: Bytes::new(),
        };
        self.wal.apply_snapshot(snapshot).map_err(to_raft_error)
    }

    /// Persists what a `Ready` asks to persist, in the order raft-rs requires: the snapshot
    /// first (it replaces the log), then the entries and the hard state as one write with one
    /// sync. Call it before sending `ready.persisted_messages()` and before `advance`.
    pub fn persist_ready(&self, ready: &Ready) -> raft::Result<()> {
        if !ready.snapshot().is_empty() {
            self.apply_snapshot(ready.snapshot())?;
        }
        let hard_state = ready.hs().map(hard_state_from_raft);
        let entries: Vec<Entry> = ready.entries().iter().map(entry_to_raftwal).collect();
        self.wal.save(hard_state.as_ref(), &entries).map_err(to_raft_error)
    }

    /// Persists the commit index a `LightReady` (returned by `advance`) carries, if any.
    pub fn persist_light_ready(&self, light: &LightReady) -> raft::Result<()> {
        match light.commit_index() {
            Some(commit) => self.set_commit(commit),
            None => Ok(()),
        }
    }

    /// Records `commit` in the hard state, keeping its term and vote.
    pub fn set_commit(&self, commit: u64) -> raft::Result<()> {
        let hard_state = HardState { commit, ..self.wal.wal().hard_state() };
        self.wal.set_hard_state(hard_state).map_err(to_raft_error)
    }

    /// Appends entries with raft-rs's (and etcd's) semantics: a conflicting suffix is replaced.
    pub fn append(&self, entries: &[eraftpb::Entry]) -> raft::Result<()> {
        let entries: Vec<Entry> = entries.iter().map(entry_to_raftwal).collect();
        self.wal.append(&entries).map_err(to_raft_error)
    }

    /// Saves the hard state.
    pub fn set_hard_state(&self, hard_state: &eraftpb::HardState) -> raft::Result<()> {
        self.wal.set_hard_state(hard_state_from_raft(hard_state)).map_err(to_raft_error)
    }

    /// Discards the entries before `compact_index`, with raft-rs's `MemStorage` semantics:
    /// afterwards `first_index() == compact_index` and `term(compact_index - 1)` still answers.
    /// An index at or below `first_index()` is a no-op; one beyond `last_index() + 1` is refused.
    ///
    /// Compact only up to the newest snapshot's index (plus one): a follower that lags behind
    /// the compacted prefix can only catch up through a snapshot that covers it.
    pub fn compact(&self, compact_index: u64) -> raft::Result<()> {
        let first = self.wal.wal().first_index();
        if compact_index <= first {
            return Ok(());
        }
        // raftwal keeps the entry before the first readable one as its dummy.
        self.wal.compact(compact_index - 1).map_err(to_raft_error)
    }

    /// Records a snapshot of the state machine at `index` (`data` is the application's image of
    /// it). `conf_state`, when given, replaces the stored membership.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: Option<&eraftpb::ConfState>,
        data: Bytes,
    ) -> raft::Result<eraftpb::Snapshot> {
        let conf_state = conf_state.map(conf_state_from_raft);
        let snapshot = self.wal.create_snapshot(index, conf_state, data).map_err(to_raft_error)?;
        Ok(snapshot_to_raft(snapshot))
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn apply_snapshot(&self, snapshot: &eraftpb::Snapshot) -> raft::Result<()> {
        self.wal.apply_snapshot(snapshot_from_raft(snapshot)).map_err(to_raft_error)
    }
}

impl raft::Storage for RaftRsStorage {
    /// The hard state and the newest snapshot's membership. The commit index is raised to the
    /// snapshot's index when a crash came between installing a snapshot and saving the hard
    /// state that follows it: everything a snapshot holds is committed, and raft-rs refuses a
    /// commit index below its log's start.
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        let state = self.wal.initial_state().map_err(to_raft_error)?;
        let snapshot_index = self.wal.wal().snapshot_metadata().index;
        let mut hard_state = hard_state_to_raft(state.hard_state);
        hard_state.commit = hard_state.commit.max(snapshot_index);
        Ok(raft::RaftState::new(hard_state, conf_state_to_raft(&state.conf_state)))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<eraftpb::Entry>> {
        let max_size = max_size.into().unwrap_or(raft::NO_LIMIT);
        let entries = self.wal.entries(low, high, max_size).map_err(to_raft_error)?;
        entries.into_iter().map(|e| entry_from_raftwal(e).map_err(to_raft_error)).collect()
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.wal.term(idx).map_err(to_raft_error)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.wal.first_index().map_err(to_raft_error)
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.wal.last_index().map_err(to_raft_error)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<eraftpb::Snapshot> {
        let snapshot = self.wal.snapshot().map_err(to_raft_error)?;
        if snapshot.metadata.index < request_index {
            // The application has not yet created a snapshot that new; raft-rs asks again.
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(snapshot_to_raft(snapshot))
    }
}

/// The raft-rs error for a raftwal error.
pub fn to_raft_error(error: Error) -> raft::Error {
    let storage_error = match error {
        Error::Compacted => StorageError::Compacted,
        Error::Unavailable => StorageError::Unavailable,
        Error::SnapshotOutOfDate => StorageError::SnapshotOutOfDate,
        Error::SnapshotTemporarilyUnavailable => StorageError::SnapshotTemporarilyUnavailable,
        other => StorageError::Other(Box::new(other)),
    };
    raft::Error::Store(storage_error)
}

/// The raftwal entry data that stores a raft-rs entry's `data` and `context`: a layout tag, then
/// either the data alone or the context's length, the context and the data.
pub fn encode_entry_data(data: &[u8], context: &[u8]) -> Bytes {
    if context.is_empty() {
        let mut out = BytesMut::with_capacity(TAG_LEN + data.len());
        out.put_u8(DATA_ONLY);
        out.put_slice(data);
        return out.freeze();
    }
    let context_len = u32::try_from(context.len()).expect("an entry context below 4 GiB");
    let mut out = BytesMut::with_capacity(TAG_LEN + CONTEXT_LEN_LEN + context.len() + data.len());
    out.put_u8(WITH_CONTEXT);
    out.put_u32_le(context_len);
    out.put_slice(context);
    out.put_slice(data);
    out.freeze()
}

/// Splits raftwal entry data written by [`encode_entry_data`] into `(data, context)`, without
/// copying. Data that does not follow the layout is [`Error::Corruption`].
pub fn decode_entry_data(stored: &Bytes) -> Result<(Bytes, Bytes), Error> {
    let malformed = |why: &str| Error::Corruption {
        segment: "raft-rs entry".into(),
        offset: 0,
        kind: CorruptionKind::Malformed(why.into()),
    };
    match stored.first() {
        // The dummy entry, and an entry written by something other than this adapter with no
        // data, carry no tag.
        None => Ok((Bytes::new(), Bytes::new())),
        Some(&DATA_ONLY) => Ok((stored.slice(TAG_LEN..), Bytes::new())),
        Some(&WITH_CONTEXT) => {
            let len_end = TAG_LEN + CONTEXT_LEN_LEN;
            let len_bytes: [u8; CONTEXT_LEN_LEN] = stored
                .get(TAG_LEN..len_end)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| malformed("entry data too short for its context length"))?;
            let context_end = len_end
                .checked_add(u32::from_le_bytes(len_bytes) as usize)
                .filter(|end| *end <= stored.len())
                .ok_or_else(|| malformed("entry context runs past the entry's data"))?;
            Ok((stored.slice(context_end..), stored.slice(len_end..context_end)))
        }
        Some(tag) => Err(malformed(&format!("unknown entry data layout tag {tag}"))),
    }
}

/// A raft-rs entry as raftwal stores it.
pub fn entry_to_raftwal(entry: &eraftpb::Entry) -> Entry {
    let entry_type = match entry.get_entry_type() {
        eraftpb::EntryType::EntryNormal => EntryType::Normal,
        eraftpb::EntryType::EntryConfChange => EntryType::ConfChange,
        eraftpb::EntryType::EntryConfChangeV2 => EntryType::ConfChangeV2,
    };
    Entry {
        index: entry.index,
        term: entry.term,
        entry_type,
        data: encode_entry_data(&entry.data, &entry.context),
    }
}

/// The raft-rs entry a raftwal entry stores.
pub fn entry_from_raftwal(entry: Entry) -> Result<eraftpb::Entry, Error> {
    let (data, context) = decode_entry_data(&entry.data)?;
    let entry_type = match entry.entry_type {
        EntryType::Normal => eraftpb::EntryType::EntryNormal,
        EntryType::ConfChange => eraftpb::EntryType::EntryConfChange,
        EntryType::ConfChangeV2 => eraftpb::EntryType::EntryConfChangeV2,
    };
    Ok(eraftpb::Entry {
        entry_type,
        index: entry.index,
        term: entry.term,
        data,
        context,
        ..Default::default()
    })
}

/// A raft-rs hard state as raftwal stores it.
pub fn hard_state_from_raft(hs: &eraftpb::HardState) -> HardState {
    HardState { term: hs.term, vote: hs.vote, commit: hs.commit }
}

/// The raft-rs hard state of a raftwal one.
pub fn hard_state_to_raft(hs: HardState) -> eraftpb::HardState {
    eraftpb::HardState { term: hs.term, vote: hs.vote, commit: hs.commit, ..Default::default() }
}

/// A raft-rs membership as raftwal stores it.
pub fn conf_state_from_raft(cs: &eraftpb::ConfState) -> ConfState {
    ConfState {
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        voters_outgoing: cs.voters_outgoing.clone(),
        learners_next: cs.learners_next.clone(),
        auto_leave: cs.auto_leave,
    }
}

/// The raft-rs membership of a raftwal one.
pub fn conf_state_to_raft(cs: &ConfState) -> eraftpb::ConfState {
    eraftpb::ConfState {
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        voters_outgoing: cs.voters_outgoing.clone(),
        learners_next: cs.learners_next.clone(),
        auto_leave: cs.auto_leave,
        ..Default::default()
    }
}

/// A raft-rs snapshot as raftwal stores it.
pub fn snapshot_from_raft(snapshot: &eraftpb::Snapshot) -> Snapshot {
    let meta = snapshot.get_metadata();
    Snapshot {
        metadata: SnapshotMetadata {
            index: meta.index,
            term: meta.term,
            conf_state: conf_state_from_raft(meta.get_conf_state()),
        },
        data: snapshot.data.clone(),
    }
}

/// The raft-rs snapshot of a raftwal one.
pub fn snapshot_to_raft(snapshot: Snapshot) -> eraftpb::Snapshot {
    let mut meta = eraftpb::SnapshotMetadata {
        index: snapshot.metadata.index,
        term: snapshot.metadata.term,
        ..Default::default()
    };
    meta.set_conf_state(conf_state_to_raft(&snapshot.metadata.conf_state));
    let mut out = eraftpb::Snapshot { data: snapshot.data, ..Default::default() };
    out.set_metadata(meta);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raft_entry(index: u64, data: &'static [u8], context: &'static [u8]) -> eraftpb::Entry {
        eraftpb::Entry {
            entry_type: eraftpb::EntryType::EntryConfChangeV2,
            index,
            term: 7,
            data: Bytes::from_static(data),
            context: Bytes::from_static(context),
            ..Default::default()
        }
    }

    #[test]
    fn entries_round_trip_with_and_without_context() {
        for (data, context) in
            [(&b""[..], &b""[..]), (b"payload", b""), (b"", b"ctx"), (b"d", b"c")]
        {
            let e = raft_entry(3, data, context);
            let stored = entry_to_raftwal(&e);
            assert_eq!(stored.index, 3);
            assert_eq!(stored.term, 7);
            assert_eq!(stored.entry_type, EntryType::ConfChangeV2);
            assert_eq!(entry_from_raftwal(stored).unwrap(), e);
        }
    }

    #[test]
    fn malformed_entry_data_is_corruption_not_a_panic() {
        for stored in [&[2u8][..], &[WITH_CONTEXT, 1, 0], &[WITH_CONTEXT, 9, 0, 0, 0, b'x']] {
            let e = Entry::new(1, 1, Bytes::copy_from_slice(stored));
            let err = entry_from_raftwal(e).unwrap_err();
            assert!(matches!(err, Error::Corruption { .. }), "{stored:?}: {err}");
        }
    }

    #[test]
    fn errors_map_to_raft_rs_kinds() {
        let cases = [
            (Error::Compacted, StorageError::Compacted),
            (Error::Unavailable, StorageError::Unavailable),
            (Error::SnapshotOutOfDate, StorageError::SnapshotOutOfDate),
            (Error::SnapshotTemporarilyUnavailable, StorageError::SnapshotTemporarilyUnavailable),
        ];
        for (ours, theirs) in cases {
            assert_eq!(to_raft_error(ours), raft::Error::Store(theirs));
        }
        let other = to_raft_error(Error::Poisoned);
        assert!(matches!(other, raft::Error::Store(StorageError::Other(_))), "{other}");
    }

    #[test]
    fn snapshots_and_states_round_trip() {
        let cs = ConfState {
            voters: vec![1, 2],
            learners: vec![3],
            voters_outgoing: vec![1],
            learners_next: vec![4],
            auto_leave: true,
        };
        let snapshot = Snapshot {
            metadata: SnapshotMetadata { index: 9, term: 4, conf_state: cs },
            data: Bytes::from_static(b"image"),
        };
        assert_eq!(snapshot_from_raft(&snapshot_to_raft(snapshot.clone())), snapshot);
        let hs = HardState { term: 5, vote: 2, commit: 8 };
        assert_eq!(hard_state_from_raft(&hard_state_to_raft(hs)), hs);
    }
}
