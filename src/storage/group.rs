//! `GroupStorage`: one group's durable `Storage`, a view of the engine's WAL and the group's
//! snapshot files (`<dir>/snap/{group:016x}-{term:016x}-{index:016x}.snap`).
//!
//! Creating or applying a snapshot follows one order, so that a crash at any point leaves
//! either the old state or the new one: the snapshot file is made durable first (temp file,
//! fdatasync, rename, directory fsync), then the WAL's snapshot marker is written and synced (the
//! commit point), then old segments and snapshot files are released. On open, a snapshot file
//! without a marker is an orphan of a crash and is removed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::contract::{Storage, check_apply_snapshot, snapshot_term};
use crate::error::{CorruptionKind, Error, Result};
use crate::metrics::WalMetrics;
use crate::options::RecoveryMode;
use crate::options::WalOptions;
use crate::snapshot::{SnapshotFileWriter, SnapshotStore};
use crate::storage::SNAP_DIR;
use crate::types::{
    ConfState, Entry, HardState, RaftState, RepairState, Snapshot, SnapshotMetadata,
};
use crate::wal::Wal;

pub use crate::snapshot::SnapshotReader;

/// One group of a [`crate::LogEngine`] as a durable [`Storage`], with `MemoryStorage`'s
/// semantics and [`crate::WalStorage`]'s methods: a Raft node restarted on the same directory
/// sees exactly what it saw before. With the default options every mutating call is durable when
/// it returns. Clones share the group.
#[derive(Clone, Debug)]
pub struct GroupStorage {
    wal: Wal,
    snaps: SnapshotStore,
    options: WalOptions,
    shared: Arc<GroupShared>,
}

/// What every handle of one group shares.
#[derive(Debug, Default)]
pub(crate) struct GroupShared {
    // Serializes snapshot commits and retention; appends do not take it.
    snap: Mutex<SnapState>,
    // Snapshot writers not yet finished or dropped.
    writing: AtomicUsize,
}

#[derive(Debug, Default)]
struct SnapState {
    // The newest snapshot with its data, once read (or written) in this process.
    cached: Option<Snapshot>,
}

impl GroupStorage {
    /// A handle on the group `wal` views, its snapshots in `snaps`.
    pub(crate) fn new(
        wal: Wal,
        snaps: SnapshotStore,
        options: WalOptions,
        shared: Arc<GroupShared>,
    ) -> GroupStorage {
        GroupStorage { wal, snaps, options, shared }
    }

    /// The group's id.
    pub fn id(&self) -> u64 {
        self.wal.group()
    }

    /// Matches the snapshot files to the WAL's marker: orphans (newer than the marker) are
    /// removed; a damaged marked snapshot is renamed `*.broken` and replaced by the newest older
    /// valid one if the log still holds every entry after it.
    pub(crate) fn recover_snapshots(&self) -> Result<()> {
        let marker = self.wal.snapshot_metadata();
        let marked = self.snaps.name(marker.term, marker.index);
        if self.wal.repair_state().is_some() && self.adopt_newer_snapshot(&marker)? {
            return self.retain();
        }
        let repairable = self.wal.engine().options().recovery_mode == RecoveryMode::Repairable;
        let no_membership = marker.index == 0 && marker.conf_state == ConfState::default();
        if repairable && no_membership && self.adopt_bootstrap_snapshot()? {
            return self.retain();
        }
        // In every mode, an empty log whose bootstrap file is durable but whose marker is not
        // (a crash inside the bootstrap's `apply_snapshot`, after the file, before the marker)
        // completes the bootstrap: the file has the empty marker's name (term 0, index 0), so it
        // is no orphan. Only that file, and only whole; anything else is judged as before.
        let empty_log = self.wal.first_index() == 1 && self.wal.last_index() == 0;
        if no_membership && empty_log && self.adopt_marked_bootstrap(&marked)? {
            return self.retain();
        }
        let mut older = Vec::new();
        let mut marked_found = false;
        for stored in self.snaps.list()? {
            if stored.name == marked {
                marked_found = true;
            } else if stored.index >= marker.index {
                // Written, but its marker never became durable: the snapshot was never committed.
                self.snaps.remove(&stored.name)?;
            } else {
                older.push(stored);
            }
        }
        let damage = if marked_found {
            match self.snaps.verify(&marked) {
                Ok(metadata) if metadata == marker => return self.retain(),
                Ok(_) => CorruptionKind::Malformed(
                    "snapshot metadata differs from the log's marker".into(),
                ),
                Err(Error::Corruption { kind, .. }) => kind,
                Err(e) => return Err(e),
            }
        } else if marker.index == 0 {
            // No snapshot was ever committed (or only a membership, which needs no file: see
            // `snapshot`).
            return self.retain();
        } else {
            CorruptionKind::Missing
        };
        if marked_found {
            self.snaps.mark_broken(&marked)?;
        }
        let dummy = self.wal.first_index() - 1;
        // Newest first; bounded by the files listed.
        for stored in older.iter().rev() {
            if stored.index < dummy {
                break;
            }
            match self.snaps.verify(&stored.name) {
                Ok(metadata) => {
                    if self.wal.term(metadata.index).ok() == Some(metadata.term) {
                        self.wal.save_snapshot(&metadata, false)?;
                        self.wal.sync()?;
                        return self.retain();
                    }
                }
                Err(Error::Corruption { .. }) => self.snaps.mark_broken(&stored.name)?,
                Err(e) => return Err(e),
            }
        }
        if self.wal.engine().options().recovery_mode == RecoveryMode::Repairable {
            return self.repair_from_leader(&marker);
        }
        Err(Error::Corruption {
            segment: PathBuf::from(SNAP_DIR).join(marked),
            offset: 0,
            kind: damage,
        })
    }

    /// A log cut for damage may have lost the markers of snapshots whose files are durable: a
    /// snapshot file only ever holds committed state, so the newest one past the marker that
    /// reads whole becomes the group's snapshot, as if its leader had sent it (the log restarts
    /// after it unless it still holds the snapshot's entry). Returns whether one was adopted.
    fn adopt_newer_snapshot(&self, marker: &SnapshotMetadata) -> Result<bool> {
        let mut newer: Vec<_> =
            self.snaps.list()?.into_iter().filter(|s| s.index > marker.index).collect();
        newer.sort_by_key(|s| (s.index, s.term));
        // Newest first; bounded by the files listed.
        for stored in newer.iter().rev() {
            match self.snaps.verify(&stored.name) {
                Ok(metadata) => {
                    let keeps = self.wal.term(metadata.index).ok() == Some(metadata.term);
                    self.wal.save_snapshot(&metadata, !keeps)?;
                    self.wal.sync()?;
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        group = self.wal.group(),
                        index = metadata.index,
                        "the cut took a snapshot's marker: its file is the group's snapshot again"
                    );
                    return Ok(true);
                }
                Err(Error::Corruption { .. }) => self.snaps.mark_broken(&stored.name)?,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// A log whose marker holds no membership at index 0 while an index-0 snapshot file of the
    /// group holds one: a cut took the marker of the group's bootstrap snapshot, its first
    /// membership, which no leader resends (it sends entries from index 1). The file that reads
    /// whole becomes the group's snapshot again, as [`Self::adopt_newer_snapshot`] does for newer
    /// ones; the repair the cut recorded stays. When every such file is damaged the open is
    /// refused, naming it: a node without its membership could never take part again. A crash
    /// between a bootstrap's file and its marker leaves the same picture on an empty log, in any
    /// recovery mode: the bootstrap is completed. Returns whether one was adopted.
    fn adopt_bootstrap_snapshot(&self) -> Result<bool> {
        let firsts: Vec<_> = self.snaps.list()?.into_iter().filter(|s| s.index == 0).collect();
        let mut damaged = None;
        // Bounded by the files listed.
        for stored in firsts.iter().rev() {
            match self.snaps.verify(&stored.name) {
                Ok(metadata)
                    if metadata.index == 0 && metadata.conf_state != ConfState::default() =>
                {
                    let keeps = self.wal.term(0).ok() == Some(metadata.term);
                    let last = self.wal.last_index();
                    if !keeps && last > 0 {
                        // The reset drops entries that may have been acknowledged.
                        let term = self.wal.hard_state().term.max(self.wal.term(last).unwrap_or(0));
                        self.wal
                            .engine()
                            .begin_repair(self.wal.group(), RepairState { index: last, term })?;
                    }
                    self.wal.save_snapshot(&metadata, !keeps)?;
                    self.wal.sync()?;
                    debug_assert_eq!(self.wal.snapshot_metadata(), metadata);
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        group = self.wal.group(),
                        "the cut took the bootstrap snapshot's marker: its file holds the membership again"
                    );
                    return Ok(true);
                }
                Ok(_) => {}
                Err(Error::Corruption { kind, .. }) => {
                    damaged.get_or_insert((stored.name.clone(), kind));
                }
                Err(e) => return Err(e),
            }
        }
        match damaged {
            Some((name, kind)) => Err(Error::Corruption {
                segment: PathBuf::from(SNAP_DIR).join(name),
                offset: 0,
                kind,
            }),
            None => Ok(false),
        }
    }

    /// The file named like the empty marker (term 0, index 0) reads whole and holds a
    /// membership: a bootstrap whose marker a crash kept from the disk. It becomes the group's
    /// snapshot. Returns whether it was adopted; a damaged or absent file is left to the caller.
    fn adopt_marked_bootstrap(&self, marked: &str) -> Result<bool> {
        if !self.snaps.list()?.iter().any(|s| s.name == marked) {
            return Ok(false);
        }
        match self.snaps.verify(marked) {
            Ok(metadata)
                if metadata.index == 0
                    && metadata.term == 0
                    && metadata.conf_state != ConfState::default() =>
            {
                self.wal.save_snapshot(&metadata, false)?;
                self.wal.sync()?;
                Ok(true)
            }
            Ok(_) | Err(Error::Corruption { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The marked snapshot is damaged and no older one is usable, in `RecoveryMode::Repairable`:
    /// the group starts over from an empty log that keeps its membership, term and vote, and
    /// repairs up to what it had (its leader sends a snapshot or the entries). The repair is
    /// recorded first: a crash after the reset must never leave a healthy-looking empty log.
    fn repair_from_leader(&self, marker: &SnapshotMetadata) -> Result<()> {
        let hs = self.wal.hard_state();
        let last = self.wal.last_index();
        let last_term = self.wal.term(last).unwrap_or(0);
        let state = RepairState {
            index: marker.index.max(last),
            term: hs.term.max(marker.term).max(last_term),
        };
        self.wal.engine().begin_repair(self.wal.group(), state)?;
        let empty = SnapshotMetadata { index: 0, term: 0, conf_state: marker.conf_state.clone() };
        self.wal.save_snapshot(&empty, true)?;
        self.wal.save(Some(&HardState { commit: 0, ..hs }), &[])?;
        self.wal.sync()?;
        #[cfg(feature = "tracing")]
        tracing::warn!(
            group = self.wal.group(),
            index = state.index,
            "the snapshot is damaged: the group repairs from its leader"
        );
        self.retain()
    }

    /// Deletes snapshot files beyond the newest `snapshot_retention`, never the marked one.
    fn retain(&self) -> Result<()> {
        let marker = self.wal.snapshot_metadata();
        let marked = self.snaps.name(marker.term, marker.index);
        let stored = self.snaps.list()?;
        let keep_from = stored.len().saturating_sub(self.options.snapshot_retention);
        for old in &stored[..keep_from] {
            if old.name != marked {
                self.snaps.remove(&old.name)?;
            }
        }
        Ok(())
    }

    fn lock_snap(&self) -> MutexGuard<'_, SnapState> {
        self.shared.snap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends entries with etcd's semantics (entries below `first_index` ignored, a conflicting
    /// suffix replaced); durable on return under the default sync policy.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        self.wal.save(None, entries)
    }

    /// Saves the hard state.
    pub fn set_hard_state(&self, hs: HardState) -> Result<()> {
        self.wal.save(Some(&hs), &[])
    }

    /// Saves entries and a hard state as one write with one sync: what a Raft `Ready` asks for.
    pub fn save(&self, hard_state: Option<&HardState>, entries: &[Entry]) -> Result<()> {
        self.wal.save(hard_state, entries)
    }

    /// Makes entry `index` the dummy and releases the segments no live entry needs.
    pub fn compact(&self, index: u64) -> Result<()> {
        self.wal.compact(index)
    }

    /// Makes every write so far durable (for `SyncPolicy::Never`).
    pub fn sync(&self) -> Result<()> {
        self.wal.sync()
    }

    /// Ends this group's repair durably (see [`Storage::repair_state`]): call it once the Raft
    /// node reports it caught up with a leader's commit index. Repair also ends by itself once
    /// the log durably reaches the index it lost, or a snapshot covers it.
    pub fn clear_repair(&self) -> Result<()> {
        self.wal.clear_repair()
    }

    /// Records a snapshot of the state machine at `index` (data given whole) and returns it.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: Option<ConfState>,
        data: Bytes,
    ) -> Result<Snapshot> {
        let mut writer = self.snapshot_writer(index, conf_state)?;
        writer.write_all(&data)?;
        writer.finish_with_data(data)
    }

    /// Replaces the whole log with `snapshot` (a snapshot at index 0, a membership only, only
    /// on a storage that never held an entry or a snapshot).
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let mut writer = self.snapshot_installer(snapshot.metadata)?;
        writer.write_all(&snapshot.data)?;
        writer.finish_with_data(snapshot.data).map(|_| ())
    }

    /// Starts streaming a snapshot of the state machine at `index`; `finish` commits it as
    /// [`GroupStorage::create_snapshot`] would. Until then [`Storage::snapshot`] answers
    /// `SnapshotTemporarilyUnavailable`.
    pub fn snapshot_writer(
        &self,
        index: u64,
        conf_state: Option<ConfState>,
    ) -> Result<SnapshotWriter<'_>> {
        let current = self.wal.snapshot_metadata();
        let term =
            snapshot_term(index, current.index, self.wal.term(index), self.wal.last_index())?;
        let conf_state = conf_state.unwrap_or(current.conf_state);
        self.begin(SnapshotMetadata { index, term, conf_state }, false)
    }

    /// Starts streaming a snapshot received from the leader; `finish` installs it as
    /// [`GroupStorage::apply_snapshot`] would.
    pub fn snapshot_installer(&self, metadata: SnapshotMetadata) -> Result<SnapshotWriter<'_>> {
        let current = self.wal.snapshot_metadata();
        check_apply_snapshot(&current, self.wal.last_index(), metadata.index)?;
        self.begin(metadata, true)
    }

    fn begin(&self, metadata: SnapshotMetadata, resets_log: bool) -> Result<SnapshotWriter<'_>> {
        // A stopped log could never take the marker: refused before the file is created.
        self.wal.engine().check_poisoned()?;
        let file = self.snaps.begin(metadata, self.options.snapshot_compression_level)?;
        self.shared.writing.fetch_add(1, Ordering::AcqRel);
        Ok(SnapshotWriter { storage: self, file: Some(file), resets_log })
    }

    /// Commits a finished snapshot file: the WAL marker, then retention. Runs under the
    /// snapshot lock so concurrent commits are checked against each other.
    fn commit(
        &self,
        file: SnapshotFileWriter,
        resets_log: bool,
        data: Option<Bytes>,
    ) -> Result<Snapshot> {
        let mut snap = self.lock_snap();
        let metadata = file.metadata().clone();
        // Checked again: another snapshot may have been committed while this one streamed.
        let current = self.wal.snapshot_metadata();
        if resets_log {
            check_apply_snapshot(&current, self.wal.last_index(), metadata.index)?;
        } else {
            self.check_still_matches(&metadata, current.index)?;
        }
        // 1. The file, durable under its final name; not once the log has stopped (a writer
        // begun before), whose marker would be refused after the file is in place.
        self.wal.engine().check_poisoned()?;
        // A bootstrap's file (named like the empty marker) completes the bootstrap at open even
        // without its marker (§8 case 7): it must not be durable before the writes that came
        // before it, which the marker's sync would have made durable too.
        if (metadata.term, metadata.index) == (0, 0) {
            self.wal.sync()?;
        }
        let name = file.finish()?;
        // 2. The marker: the commit point.
        if let Err(e) = self.wal.save_snapshot(&metadata, resets_log) {
            // Refused with the log still running: nothing reached the log, so the file is an
            // orphan (open would remove it too). Any other failure stopped the log, and the
            // marker's bytes may be in the segment (a write can fail after part of it landed,
            // and the file may already hold the rest) or durable (only its sync failed): a
            // power cut can then bring the marker back, so the file stays for open to settle.
            let refused = self.wal.engine().check_poisoned().is_ok()
                && self.wal.snapshot_metadata() != metadata;
            if refused {
                let _ = self.snaps.remove(&name);
            }
            // Refused because a compaction passed the index since the check above: answered as
            // if it had come first. (A failed write or sync is reported as it is.)
            let compacted = matches!(self.wal.term(metadata.index), Err(Error::Compacted));
            if !resets_log && matches!(e, Error::ContractViolation(_)) && compacted {
                return Err(Error::Compacted);
            }
            return Err(e);
        }
        snap.cached = data.map(|data| Snapshot { metadata: metadata.clone(), data });
        drop(snap);
        self.wal.counters().snapshot_written();
        #[cfg(feature = "tracing")]
        tracing::info!(
            index = metadata.index,
            term = metadata.term,
            installed = resets_log,
            "snapshot committed"
        );
        // 3. Release what the new snapshot makes unnecessary. The snapshot is committed already,
        //    so a file that cannot be removed now is not this call's failure: the next commit,
        //    or the next open, removes it.
        let _ = self.retain();
        match self.lock_snap().cached.clone() {
            Some(snapshot) => Ok(snapshot),
            None => self.snaps.read_all(&name),
        }
    }

    /// Checks a created snapshot against the log as it is now (it may have changed while the
    /// snapshot streamed): etcd's `CreateSnapshot` rules, and entry `index` still of its term.
    fn check_still_matches(&self, metadata: &SnapshotMetadata, current: u64) -> Result<()> {
        let index = metadata.index;
        let term = snapshot_term(index, current, self.wal.term(index), self.wal.last_index())?;
        if term != metadata.term {
            return Err(Error::contract(format!(
                "snapshot ({index}, {}) no longer matches the log: entry {index} has term {term}",
                metadata.term
            )));
        }
        Ok(())
    }

    /// A streaming reader over the newest snapshot's data.
    pub fn snapshot_reader(&self) -> Result<SnapshotReader> {
        if self.shared.writing.load(Ordering::Acquire) > 0 {
            return Err(Error::SnapshotTemporarilyUnavailable);
        }
        let marker = self.wal.snapshot_metadata();
        let reader = self.snaps.reader(&self.snaps.name(marker.term, marker.index))?;
        if marker.index == 0 && reader.metadata() != &marker {
            // A bootstrap's file the marker does not stand for (see `snapshot`): as if absent.
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no snapshot has been committed",
            )));
        }
        Ok(reader)
    }

    /// Writes a final checkpoint of the whole engine and syncs: a cleanly closed log proves
    /// every record durable. Other handles on the engine stay usable.
    pub fn close(self) -> Result<()> {
        self.wal.close()
    }

    /// What the storage has done since it was opened, and its size now: the WAL's counters and
    /// gauges, and the snapshot files it made durable. See [`WalMetrics`].
    pub fn metrics(&self) -> WalMetrics {
        self.wal.metrics()
    }

    /// The group's view of the WAL underneath (for statistics and tools).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }
}

/// Streams a snapshot into the store (implements [`std::io::Write`]); [`SnapshotWriter::finish`]
/// makes it durable and visible. Dropping it unfinished discards it.
#[derive(Debug)]
pub struct SnapshotWriter<'a> {
    storage: &'a GroupStorage,
    file: Option<SnapshotFileWriter>,
    resets_log: bool,
}

impl SnapshotWriter<'_> {
    /// Makes the snapshot durable and the storage's newest; returns it (its data read back).
    pub fn finish(mut self) -> Result<Snapshot> {
        let file = self.file.take().expect("finished once");
        self.storage.commit(file, self.resets_log, None)
    }

    fn finish_with_data(mut self, data: Bytes) -> Result<Snapshot> {
        let file = self.file.take().expect("finished once");
        self.storage.commit(file, self.resets_log, Some(data))
    }
}

impl Write for SnapshotWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("written before finish").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("flushed before finish").flush()
    }
}

impl Drop for SnapshotWriter<'_> {
    fn drop(&mut self) {
        self.storage.shared.writing.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Storage for GroupStorage {
    fn initial_state(&self) -> Result<RaftState> {
        Ok(RaftState {
            hard_state: self.wal.hard_state(),
            conf_state: self.wal.snapshot_metadata().conf_state,
        })
    }

    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>> {
        self.wal.entries(lo, hi, max_size)
    }

    fn term(&self, index: u64) -> Result<u64> {
        self.wal.term(index)
    }

    fn first_index(&self) -> Result<u64> {
        Ok(self.wal.first_index())
    }

    fn last_index(&self) -> Result<u64> {
        Ok(self.wal.last_index())
    }

    fn repair_state(&self) -> Result<Option<RepairState>> {
        Ok(self.wal.repair_state())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        if self.shared.writing.load(Ordering::Acquire) > 0 {
            return Err(Error::SnapshotTemporarilyUnavailable);
        }
        let mut snap = self.lock_snap();
        let marker = self.wal.snapshot_metadata();
        if let Some(cached) = snap.cached.as_ref().filter(|c| c.metadata == marker) {
            return Ok(cached.clone());
        }
        let name = self.snaps.name(marker.term, marker.index);
        let empty = || Snapshot { metadata: marker.clone(), data: Bytes::new() };
        let snapshot = match self.snaps.read_all(&name) {
            // The empty marker's name is also a bootstrap's: a file there that the marker does
            // not stand for (a bootstrap whose marker failed; the next open settles it) is not
            // this storage's snapshot.
            Ok(snapshot) if marker.index == 0 && snapshot.metadata != marker => empty(),
            Ok(snapshot) => snapshot,
            // Never committed a snapshot: the empty one (with the marker's membership).
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && marker.index == 0 => {
                empty()
            }
            Err(e) => return Err(e),
        };
        snap.cached = Some(snapshot.clone());
        Ok(snapshot)
    }
}
