//! The operations the structured targets decode, and how each becomes one concrete call given to
//! the model and to WalStorage alike.

use arbitrary::Arbitrary;
use bytes::Bytes;

use crate::contract::Storage;
use crate::error::Result;
use crate::fuzzing::compare::Outcome;
use crate::io::FaultKind;
use crate::storage::{MemoryStorage, WalStorage};
use crate::types::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

/// Most entries one append carries.
const MAX_BATCH_ENTRIES: u64 = 8;
/// Entry payloads are below this many bytes (a batch then spans several 1 KiB records).
const ENTRY_DATA_BYTES: usize = 300;
/// Snapshot data is below this many bytes.
const SNAPSHOT_DATA_BYTES: usize = 2048;

/// One step of a workload on a `Storage`. Positions are relative to the log as it is when the
/// step runs, so that most steps land near the log's end and exercise overwrites, compactions
/// and snapshots rather than being refused.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// Save `len % 9` entries starting `back % 8` before `last + 1` (overlapping the log's tail),
    /// with the last term or one more, and `hard_state` with them in the same write.
    Save {
        /// How far before `last + 1` the entries start.
        back: u8,
        /// Number of entries (modulo 9).
        len: u8,
        /// Whether the entries start a new term.
        new_term: bool,
        /// Payload size seed.
        size: u16,
        /// A hard state saved with the entries: (term bump, vote, commit below last).
        hard_state: Option<(u8, u8, u8)>,
    },
    /// Compact at `last - back % 6`.
    Compact {
        /// Distance below the last index.
        back: u8,
    },
    /// Create a snapshot at `last - back % 6`, with a new membership of `voters % 5 + 1` nodes.
    CreateSnapshot {
        /// Distance below the last index.
        back: u8,
        /// New membership size, or keep the current one.
        voters: Option<u8>,
        /// Data size seed.
        size: u16,
    },
    /// Apply a leader's snapshot at `last + ahead % 6 - 2` (may be refused as out of date).
    ApplySnapshot {
        /// Offset from the last index.
        ahead: u8,
        /// Term bump over the last term.
        term_bump: u8,
        /// Data size seed.
        size: u16,
    },
    /// Close and reopen the storage.
    Reopen,
}

/// The faults a recovery input can arm.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultChoice {
    /// [`FaultKind::WriteEio`].
    WriteEio,
    /// [`FaultKind::SyncEio`].
    SyncEio,
    /// [`FaultKind::NoSpace`].
    NoSpace,
    /// [`FaultKind::ShortWrite`].
    ShortWrite,
    /// [`FaultKind::Halt`].
    Halt,
}

impl FaultChoice {
    /// The CrashFs fault this stands for.
    pub fn kind(self) -> FaultKind {
        match self {
            FaultChoice::WriteEio => FaultKind::WriteEio,
            FaultChoice::SyncEio => FaultKind::SyncEio,
            FaultChoice::NoSpace => FaultKind::NoSpace,
            FaultChoice::ShortWrite => FaultKind::ShortWrite,
            FaultChoice::Halt => FaultKind::Halt,
        }
    }
}

/// One step of a crash-recovery workload.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum RecoveryOp {
    /// A storage operation (its `Reopen` is a clean close and reopen, without a crash).
    Storage(StorageOp),
    /// An explicit sync (the only durability point under `SyncPolicy::Never`).
    Sync,
    /// A power cut: unsynced writes survive, vanish or tear as `seed` decides; then reopen.
    Crash {
        /// Chooses the fate of every unsynced change.
        seed: u64,
    },
    /// Arms a fault at the I/O operation `after % 64` operations from now.
    Fault {
        /// Distance in I/O operations.
        after: u8,
        /// What fails.
        kind: FaultChoice,
    },
}

/// A concrete call, resolved against the model's state.
#[derive(Clone, Debug)]
pub(crate) enum Call {
    Save(Option<HardState>, Vec<Entry>),
    Compact(u64),
    CreateSnapshot(u64, Option<ConfState>, Bytes),
    ApplySnapshot(Snapshot),
}

/// Data whose every byte depends on where it is, so a misplaced or stale byte shows.
pub(crate) fn pattern(seed: u64, len: usize) -> Bytes {
    (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8).collect()
}

fn voters(count: u8) -> ConfState {
    ConfState { voters: (1..=u64::from(count % 5) + 1).collect(), ..ConfState::default() }
}

/// The call `op` stands for when the model is `model` at step `step`; `None` for `Reopen`.
pub(crate) fn resolve(op: &StorageOp, model: &MemoryStorage, step: usize) -> Option<Call> {
    let last = model.last_index().expect("the model always answers");
    let last_term = model.term(last).expect("the last index always has a term");
    let step = step as u64;
    Some(match *op {
        StorageOp::Save { back, len, new_term, size, hard_state } => {
            let start = (last + 1).saturating_sub(u64::from(back % 8));
            let term = last_term + u64::from(new_term);
            let count = u64::from(len) % (MAX_BATCH_ENTRIES + 1);
            let entries = (start..start + count)
                .map(|i| {
                    let len = (usize::from(size) + i as usize * 13) % ENTRY_DATA_BYTES;
                    Entry::new(i, term, pattern(i ^ (step << 20), len))
                })
                .collect();
            let hs = hard_state.map(|(bump, vote, commit)| {
                let current = model.hard_state();
                HardState {
                    term: current.term.max(term) + u64::from(bump % 2),
                    vote: u64::from(vote % 4),
                    commit: last.saturating_sub(u64::from(commit % 4)),
                }
            });
            Call::Save(hs, entries)
        }
        StorageOp::Compact { back } => Call::Compact(last.saturating_sub(u64::from(back % 6))),
        StorageOp::CreateSnapshot { back, voters: v, size } => Call::CreateSnapshot(
            last.saturating_sub(u64::from(back % 6)),
            v.map(voters),
            pattern(step, usize::from(size) % SNAPSHOT_DATA_BYTES),
        ),
        StorageOp::ApplySnapshot { ahead, term_bump, size } => {
            let index = (last + u64::from(ahead % 6)).saturating_sub(2);
            Call::ApplySnapshot(Snapshot {
                metadata: SnapshotMetadata {
                    index,
                    term: last_term + u64::from(term_bump % 3),
                    conf_state: voters(term_bump),
                },
                data: pattern(step + 1000, usize::from(size) % SNAPSHOT_DATA_BYTES),
            })
        }
        StorageOp::Reopen => return None,
    })
}

impl Call {
    /// Applies the call to the model; what it answered.
    pub(crate) fn apply_model(&self, model: &MemoryStorage) -> Outcome<Option<Snapshot>> {
        Outcome::from(match self {
            Call::Save(hs, entries) => model.append(entries).and_then(|()| match hs {
                Some(hs) => model.set_hard_state(*hs),
                None => Ok(()),
            }),
            Call::Compact(index) => model.compact(*index),
            Call::CreateSnapshot(index, cs, data) => {
                return Outcome::from(
                    model.create_snapshot(*index, cs.clone(), data.clone()).map(Some),
                );
            }
            Call::ApplySnapshot(snapshot) => model.apply_snapshot(snapshot.clone()),
        })
        .map_none()
    }

    /// Applies the call to WalStorage.
    pub(crate) fn apply_wal(&self, storage: &WalStorage) -> Result<Option<Snapshot>> {
        match self {
            Call::Save(hs, entries) => storage.save(hs.as_ref(), entries).map(|()| None),
            Call::Compact(index) => storage.compact(*index).map(|()| None),
            Call::CreateSnapshot(index, cs, data) => {
                storage.create_snapshot(*index, cs.clone(), data.clone()).map(Some)
            }
            Call::ApplySnapshot(snapshot) => {
                storage.apply_snapshot(snapshot.clone()).map(|()| None)
            }
        }
    }

    /// How many partial forms a crash may leave of this call when it was written but not made
    /// durable whole, beyond "not at all" and "all of it": a save's batch spans several
    /// records, so any prefix of its entries (without its hard state, written after them) may
    /// survive. See [`Call::partial_model`].
    pub(crate) fn partial_len(&self) -> usize {
        match self {
            Call::Save(_, entries) => entries.len(),
            _ => 0,
        }
    }

    /// The partial form keeping the first `n` entries of a save's batch (`1..=partial_len()`);
    /// `None` if the model refuses it.
    pub(crate) fn partial_model(&self, before: &MemoryStorage, n: usize) -> Option<MemoryStorage> {
        let Call::Save(_, entries) = self else {
            return None;
        };
        let model = before.clone();
        model.append(&entries[..n]).ok().map(|()| model)
    }

    /// Whether the call's success made everything before it durable whatever the sync policy
    /// (a snapshot's marker is always synced, and a sync covers every earlier write).
    pub(crate) fn syncs_everything(&self) -> bool {
        matches!(self, Call::CreateSnapshot(..) | Call::ApplySnapshot(_))
    }
}

impl Outcome<()> {
    fn map_none(self) -> Outcome<Option<Snapshot>> {
        match self {
            Outcome::Ok(()) => Outcome::Ok(None),
            Outcome::Compacted => Outcome::Compacted,
            Outcome::Unavailable => Outcome::Unavailable,
            Outcome::SnapshotOutOfDate => Outcome::SnapshotOutOfDate,
            Outcome::SnapshotTemporarilyUnavailable => Outcome::SnapshotTemporarilyUnavailable,
            Outcome::ContractViolation => Outcome::ContractViolation,
            Outcome::Other(e) => Outcome::Other(e),
        }
    }
}
