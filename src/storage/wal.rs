//! `WalStorage`: the durable `Storage` of a node with one Raft group: a [`LogEngine`] holding
//! group 0.
//!
//! ```text
//! <dir>/wal/   segment files and the LOCK file
//! <dir>/snap/  snapshot files
//! ```

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::contract::Storage;
use crate::error::Result;
use crate::io::{Fs, RealFs};
use crate::metrics::WalMetrics;
use crate::options::WalOptions;
use crate::storage::{GroupStorage, LogEngine, SnapshotReader, SnapshotWriter};
use crate::types::{
    ConfState, Entry, HardState, RaftState, RepairState, Snapshot, SnapshotMetadata,
};
use crate::wal::Wal;

/// The group a [`WalStorage`] keeps its log in.
pub const WAL_STORAGE_GROUP: u64 = 0;

/// A durable [`Storage`] with `MemoryStorage`'s semantics: a Raft node restarted on the same
/// directory sees exactly what it saw before. With the default options every mutating call is
/// durable when it returns. It is a [`LogEngine`] with one group (group 0).
#[derive(Debug)]
pub struct WalStorage {
    engine: LogEngine,
    group: GroupStorage,
}

impl WalStorage {
    /// Opens (creating if missing) the storage in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<WalStorage> {
        WalStorage::open_with_fs(Arc::new(RealFs), dir.as_ref(), options)
    }

    /// Opens the storage in `dir` on `fs` (for example a `CrashFs` in tests).
    pub fn open_with_fs(fs: Fs, dir: &Path, options: WalOptions) -> Result<WalStorage> {
        let engine = LogEngine::open_with_fs(fs, dir, options)?;
        let group = engine.group(WAL_STORAGE_GROUP)?;
        Ok(WalStorage { engine, group })
    }

    /// Appends entries with etcd's semantics (entries below `first_index` ignored, a conflicting
    /// suffix replaced); durable on return under the default sync policy.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        self.group.append(entries)
    }

    /// Saves the hard state.
    pub fn set_hard_state(&self, hs: HardState) -> Result<()> {
        self.group.set_hard_state(hs)
    }

    /// Saves entries and a hard state as one write with one sync: what a Raft `Ready` asks for.
    pub fn save(&self, hard_state: Option<&HardState>, entries: &[Entry]) -> Result<()> {
        self.group.save(hard_state, entries)
    }

    /// Makes entry `index` the dummy and releases the segments no live entry needs.
    pub fn compact(&self, index: u64) -> Result<()> {
        self.group.compact(index)
    }

    /// Makes every write so far durable (for `SyncPolicy::Never`).
    pub fn sync(&self) -> Result<()> {
        self.group.sync()
    }

    /// See [`GroupStorage::clear_repair`].
    pub fn clear_repair(&self) -> Result<()> {
        self.group.clear_repair()
    }

    /// Records a snapshot of the state machine at `index` (data given whole) and returns it.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: Option<ConfState>,
        data: Bytes,
    ) -> Result<Snapshot> {
        self.group.create_snapshot(index, conf_state, data)
    }

    /// Replaces the whole log with `snapshot` (a snapshot at index 0, a membership only, only
    /// on a storage that never held an entry or a snapshot).
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.group.apply_snapshot(snapshot)
    }

    /// Starts streaming a snapshot of the state machine at `index`; `finish` commits it as
    /// [`WalStorage::create_snapshot`] would. Until then [`Storage::snapshot`] answers
    /// `SnapshotTemporarilyUnavailable`.
    pub fn snapshot_writer(
        &self,
        index: u64,
        conf_state: Option<ConfState>,
    ) -> Result<SnapshotWriter<'_>> {
        self.group.snapshot_writer(index, conf_state)
    }

    /// Starts streaming a snapshot received from the leader; `finish` installs it as
    /// [`WalStorage::apply_snapshot`] would.
    pub fn snapshot_installer(&self, metadata: SnapshotMetadata) -> Result<SnapshotWriter<'_>> {
        self.group.snapshot_installer(metadata)
    }

    /// A streaming reader over the newest snapshot's data.
    pub fn snapshot_reader(&self) -> Result<SnapshotReader> {
        self.group.snapshot_reader()
    }

    /// Writes a final checkpoint and syncs: a cleanly closed log proves every record durable.
    pub fn close(self) -> Result<()> {
        self.engine.close()
    }

    /// What the storage has done since it was opened, and its size now: the WAL's counters and
    /// gauges, and the snapshot files it made durable. See [`WalMetrics`].
    pub fn metrics(&self) -> WalMetrics {
        self.group.metrics()
    }

    /// The WAL underneath, as group 0 sees it (for statistics and tools).
    pub fn wal(&self) -> &Wal {
        self.group.wal()
    }

    /// The engine underneath.
    pub fn engine(&self) -> &LogEngine {
        &self.engine
    }
}

impl Storage for WalStorage {
    fn initial_state(&self) -> Result<RaftState> {
        self.group.initial_state()
    }

    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>> {
        self.group.entries(lo, hi, max_size)
    }

    fn term(&self, index: u64) -> Result<u64> {
        self.group.term(index)
    }

    fn first_index(&self) -> Result<u64> {
        self.group.first_index()
    }

    fn last_index(&self) -> Result<u64> {
        self.group.last_index()
    }

    fn snapshot(&self) -> Result<Snapshot> {
        self.group.snapshot()
    }

    fn repair_state(&self) -> Result<Option<RepairState>> {
        self.group.repair_state()
    }
}
