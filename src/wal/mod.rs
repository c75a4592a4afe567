//! The write-ahead log: segment files of checksummed, chained records holding the logs of many
//! groups (Raft groups), each with etcd's log semantics (dummy entry, suffix replacement,
//! compaction), with group commit across threads and groups.
//!
//! - [`format`](mod@format): the bytes on disk; [`recovery`]: the scan and the decision table;
//!   `replay`: opening a directory; `writer`: framing and rollover; `segment`, `cache`, `index`:
//!   the read side; `batch`: [`WriteBatch`]; `purge`: releasing and rewriting segments.
//! - [`Engine`] is the log of every group in one directory; [`Wal`] is one group's view of it,
//!   with the single-log API the storage layer builds on.
//!
//! Concurrency: one `RwLock` guards the state and the writer; writes hold it only while
//! framing and handing the bytes to the kernel. fdatasync runs outside it, led by one thread at
//! a time, and covers every write made before it started (group commit). A rollover's
//! fdatasync runs under the lock; a leader counts its own sync only after taking the lock and
//! finding the log not poisoned, so a sync that overlapped a failed one is never acknowledged.

mod batch;
mod cache;
pub mod footer;
pub mod format;
mod index;
pub mod inspect;
mod purge;
pub mod recovery;
pub mod repair;
mod replay;
mod segment;
mod state;
mod writer;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use batch::WriteBatch;
pub use purge::PurgeReport;
pub use replay::RecoveryReport;
pub use writer::UNWAITED_ROLLOVER_MAX_SEGMENTS;

use crate::contract::{check_entries_range, limit_size, trim_append};
use crate::error::{Error, Result};
use crate::io::{DirLock, File, Fs};
use crate::metrics::{Counters, RecoveryMetrics, WalMetrics, micros};
use crate::options::{SyncPolicy, WalOptions};
use crate::types::{Entry, HardState, RepairState, SnapshotMetadata};
use batch::Item;
use cache::WriteCache;
use index::Loc;
use segment::Segment;
use state::EngineState;
use writer::{Active, Failure, MAX_SEGMENT_SEQUENCE, Op, Sealed, SyncTarget, Writer};

/// Name of the lock file in a WAL directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the note a read leaves when it finds damage: open replays sealed segments from their
/// footers without checking their records, so the next open reads every segment whole instead,
/// and recovery sees the damage (DESIGN.md §8.2, row P11). Removed by the open that did so.
pub const READ_WHOLE_FILE: &str = "read-whole";

/// The write-ahead log of one node: the logs of every group it hosts, in one directory.
pub struct Engine {
    fs: Fs,
    dir: PathBuf,
    options: WalOptions,
    inner: RwLock<Inner>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    // Set forever by a failed write or sync: the disk may no longer hold what memory says.
    poisoned: AtomicBool,
    report: RecoveryReport,
    counters: Arc<Counters>,
    recovery: RecoveryMetrics,
    _lock: DirLock,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("dir", &self.dir).finish_non_exhaustive()
    }
}

struct Inner {
    writer: Writer,
    // Sealed segments by sequence; the active one is the writer's.
    sealed: BTreeMap<u64, Segment>,
    state: EngineState,
    // The newest writes, for reads of recent entries.
    cache: WriteCache,
    // Purges that found each hot group pinning old segments (reset once it stops).
    compact_requests: state::GroupMap<u32>,
    // A segment was sealed since the last purge: the next durable point may release some.
    purge_due: bool,
    // What a Repairable open cut, per group, until each group's log holds it again (the
    // `repair` file's contents; empty for a healthy log).
    repairs: repair::RepairFile,
}

#[derive(Debug, Default)]
struct SyncState {
    // Bytes (since open) known durable, and every rename they depend on.
    durable_lsn: u64,
    // Whether a thread is leading a sync now.
    syncing: bool,
    // Callers waiting for a running sync: the group-commit metric, and whether a finished
    // sync has anyone to wake.
    waiting: u64,
}

impl Engine {
    /// Opens (creating if missing) the WAL in `dir` on `fs`, recovering it.
    pub fn open(fs: Fs, dir: &Path, options: WalOptions) -> Result<Engine> {
        options.validate()?;
        crate::io::create_dir_all_durable(fs.as_ref(), dir)?;
        let lock = fs.try_lock(&dir.join(LOCK_FILE))?.ok_or(Error::Locked)?;
        let started = std::time::Instant::now();
        let noted = fs.list(dir)?.iter().any(|name| name == READ_WHOLE_FILE);
        let replay_options =
            WalOptions { read_footers: options.read_footers && !noted, ..options.clone() };
        let mut recovered = replay::recover(&fs, dir, &replay_options).inspect_err(|_error| {
            #[cfg(feature = "tracing")]
            tracing::error!(dir = %dir.display(), error = %_error, "recovery refused to open the log");
        })?;
        let recovery = recovery_metrics(&recovered.report, started.elapsed());
        let counters = Arc::new(Counters::default());
        let mut state = recovered.state;
        let created = recovered.resume.is_none();
        let restarted = std::mem::take(&mut recovered.restarted);
        let active = match recovered.resume {
            Some(active) => active,
            None => {
                // A new log (or one whose only segment never got a durable header).
                let sequence = recovered.next_sequence;
                if sequence > MAX_SEGMENT_SEQUENCE {
                    return Err(writer::sequence_exhausted(sequence));
                }
                let first_record = recovered.next_record;
                let name = format::segment_name(sequence, first_record);
                // Written under a temp name and renamed once its header and checkpoint are
                // durable (below): a log's only segment never shows a header that was not
                // synced, so recovery can treat a bad one as damage (row H6).
                let file = fs.create(&dir.join(format::temp_name(sequence)))?;
                // Allocated but not zero-filled: creating a log stays cheap. Appends into its
                // unwritten extents cost each fdatasync an inode write, so the writer leaves it
                // once the next segment is prepared (zero-filled, in the background).
                file.allocate(options.segment_size_bytes)?;
                Active {
                    sequence,
                    first_record,
                    name,
                    file,
                    write_offset: 0,
                    durable_offset: 0,
                    prev_crc: recovered.last_crc,
                    fresh: true,
                    data_start: 0,
                    footer: Some(format::Footer::default()),
                    recycled: false,
                    unwitnessed: None,
                    witness_at: None,
                    blocks_written: false,
                }
            }
        };
        let records = if active.fresh { active.first_record } else { recovered.next_record };
        let pool = open_pool(&fs, dir, writer::recycle_capacity(&options))?;
        let mut writer = Writer::new(
            fs.clone(),
            dir.to_path_buf(),
            &options,
            active,
            counters.clone(),
            records,
            pool,
        );
        // Recovery synced the segment writing resumes in: if its last records that change
        // state have no witness (the process stopped between a sync and its witness), they get
        // one now, before anything is acknowledged that could depend on them.
        if writer.witness().map_err(Error::from)? && options.sync_witness {
            writer.active.file.sync_data()?;
        }
        if writer.active.fresh {
            // Write the header and checkpoint now, so that an empty log is a valid log.
            let mut sealed = None;
            writer.write(&[], &|| state.checkpoint(), &mut sealed).map_err(Error::from)?;
            writer.active.file.sync_data()?;
            let target = writer.sync_target();
            writer.mark_durable(&target);
            if created {
                let temp = dir.join(format::temp_name(writer.active.sequence));
                fs.rename(&temp, &dir.join(&writer.active.name))?;
                fs.sync_dir(dir)?;
                counters.segment(true);
            }
        }
        // From now on, each write's buffer goes to the write cache.
        writer.keep_writes = options.cache_bytes > 0;
        let sealed = recovered.sealed.into_iter().map(|s| (s.sequence, s)).collect();
        state.shrink();
        let inner = Inner {
            writer,
            sealed,
            state,
            cache: WriteCache::new(options.cache_bytes),
            compact_requests: state::GroupMap::default(),
            purge_due: true,
            repairs: repair::RepairFile::default(),
        };
        let engine = Engine {
            fs,
            dir: dir.to_path_buf(),
            options,
            inner: RwLock::new(inner),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            poisoned: AtomicBool::new(false),
            report: recovered.report,
            counters,
            recovery,
            _lock: lock,
        };
        // In every mode: a log still repairing stays repairing, whatever it is opened with.
        if let Some(repairs) = repair::read(&engine.fs, &engine.dir)? {
            engine.resolve_repairs(repairs, &restarted)?;
        }
        if noted {
            // Every segment was read whole and what was found is settled.
            engine.fs.remove_file(&engine.dir.join(READ_WHOLE_FILE))?;
            engine.fs.sync_dir(&engine.dir)?;
        }
        Ok(engine)
    }

    /// Applies the repair file at open: the newest term and vote it saw past the cut win (and
    /// are written back to the log) with the surviving log's commit index, and groups whose log
    /// already reaches what they lost stop repairing. `restarted` groups had their logs
    /// restarted at their snapshots by recovery (a hole below the cut); that is written here.
    fn resolve_repairs(&self, mut repairs: repair::RepairFile, restarted: &[u64]) -> Result<()> {
        let mut inner = self.lock_write()?;
        if repairs.others_unknown {
            for group in inner.state.group_ids() {
                repairs.groups.entry(group).or_insert(repair::RepairRecord {
                    index: repair::UNKNOWN_INDEX,
                    ..Default::default()
                });
            }
            repairs.others_unknown = false;
        }
        let mut fixes: Vec<(u64, HardState)> = Vec::new();
        // Groups whose log restarts at its snapshot: entries past the commit index may be ones
        // that a lost write had replaced (a new leader's suffix), which were never committed
        // and are not what this node acknowledged; entries at or below it cannot have been
        // replaced. Dropping them all is safe: the repair covers them, and the leader resends.
        let mut resets: Vec<(u64, SnapshotMetadata)> = Vec::new();
        for (&group, record) in repairs.groups.iter_mut() {
            let (first, last) = bounds(&inner.state, group);
            let current = hard_state_of(&inner.state, group);
            let mut hs = if repair::newer_hard_state(&record.hard_state, &current) {
                record.hard_state
            } else {
                current
            };
            // The commit index is the surviving log's own. A newer one may count entries the
            // cut took, or entries a lost write had replaced.
            hs.commit = current.commit.min(last).max(first - 1);
            let last_term = term_of(&inner.state, group, last).unwrap_or(0);
            record.term = record.term.max(hs.term).max(last_term);
            // A group recovery restarted in memory (a hole, its loss already recorded) has
            // `last` at its snapshot: the lines below only make the restart durable.
            if restarted.binary_search(&group).is_ok()
                || (repairs.reset_pending && last > hs.commit)
            {
                let marker = inner.state.group(group).map(|s| s.snapshot()).unwrap_or_default();
                // Entries up to `last` may have been acknowledged: the repair covers them.
                record.index = record.index.max(last);
                hs.commit = hs.commit.min(marker.index);
                resets.push((group, marker));
            }
            record.hard_state = hs;
            if hs != current {
                fixes.push((group, hs));
            }
        }
        if !fixes.is_empty() || !resets.is_empty() {
            let mut ops: Vec<Op<'_>> = resets
                .iter()
                .map(|(group, metadata)| Op::Snapshot { group: *group, metadata, resets_log: true })
                .collect();
            ops.extend(fixes.iter().map(|(group, hard_state)| Op::HardState {
                group: *group,
                hard_state: *hard_state,
            }));
            let lsn = self.write_ops(&mut inner, &ops)?;
            drop(inner);
            self.sync_to(lsn, None)?;
            inner = self.lock_write()?;
        }
        repairs.reset_pending = false;
        let state = &inner.state;
        repairs.groups.retain(|&group, r| {
            r.index == repair::UNKNOWN_INDEX || bounds(state, group).1 < r.index
        });
        repair::write(&self.fs, &self.dir, &repairs)?;
        inner.repairs = repairs;
        Ok(())
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.options
    }

    /// Starts (or widens) `group`'s repair, durably: used when something the log relies on
    /// outside the WAL (a snapshot file) turns out damaged in `RecoveryMode::Repairable`.
    pub fn begin_repair(&self, group: u64, state: RepairState) -> Result<()> {
        let mut inner = self.lock_write()?;
        let record = inner.repairs.groups.entry(group).or_default();
        record.index = record.index.max(state.index);
        record.term = record.term.max(state.term);
        repair::write(&self.fs, &self.dir, &inner.repairs)
    }

    /// Whether `group` is repairing what a Repairable open cut (see [`RepairState`]).
    pub fn repair_state(&self, group: u64) -> Option<RepairState> {
        let inner = self.read();
        let record = inner.repairs.groups.get(&group)?;
        Some(RepairState { index: record.index, term: record.term })
    }

    /// Ends `group`'s repair durably: its Raft node caught up with a leader (see
    /// [`crate::raft`]'s repair rule). Nothing to do for a group not repairing.
    pub fn clear_repair(&self, group: u64) -> Result<()> {
        let mut inner = self.lock_write()?;
        if inner.repairs.groups.remove(&group).is_some() {
            repair::write(&self.fs, &self.dir, &inner.repairs)?;
        }
        Ok(())
    }

    /// The log bound of every repairing group, taken before a sync: once the sync is done,
    /// those entries are durable.
    fn repairing_bounds(inner: &Inner) -> Vec<(u64, u64)> {
        // Bounded by the number of repairing groups, usually none.
        inner.repairs.groups.keys().map(|&g| (g, bounds(&inner.state, g).1)).collect()
    }

    /// Ends the repair of every group whose durable log (`bounds`, taken before the sync that
    /// made it durable) reaches what it lost.
    /// Never fails its caller: the write it follows has happened, and a repair file not yet
    /// rewritten only keeps the group repairing a while longer (safe, and retried).
    fn settle_repairs(&self, bounds: Vec<(u64, u64)>) {
        if bounds.is_empty() {
            return;
        }
        let Ok(mut inner) = self.lock_write() else { return };
        let before = inner.repairs.groups.len();
        for (group, last) in bounds {
            if inner.repairs.groups.get(&group).is_some_and(|r| r.index <= last) {
                inner.repairs.groups.remove(&group);
            }
        }
        if inner.repairs.groups.len() != before {
            let _ = repair::write(&self.fs, &self.dir, &inner.repairs);
        }
    }

    /// Whether a save under the policy leaves its writes durable when it returns.
    fn durable_on_return(&self, needed: bool) -> bool {
        needed && self.options.sync_policy != SyncPolicy::Never
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Every mutation either completes or poisons the log, so a panic elsewhere leaves
        // nothing half-changed that a reader could trip on.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_write(&self) -> Result<RwLockWriteGuard<'_, Inner>> {
        let guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        self.check_poisoned()?;
        Ok(guard)
    }

    fn lock_sync(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(Poisoned)` once a failed write or sync has stopped the log. Callers that write
    /// elsewhere before the log (a snapshot's file before its marker) ask first, so that a
    /// refusal means nothing was written.
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) { Err(Error::Poisoned) } else { Ok(()) }
    }

    /// Poisons the log for good. Set under the sync lock, so no sync can start between the
    /// failure and the poison, and no waiter can miss the wake-up.
    fn poison(&self, error: Error) -> Error {
        let sync = self.lock_sync();
        self.mark_poisoned(&error);
        drop(sync);
        self.synced.notify_all();
        error
    }

    /// Sets the poison (counted once); the caller holds the sync lock and wakes the waiters.
    fn mark_poisoned(&self, error: &Error) {
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            self.counters.poisoned(error);
        }
    }

    /// Writes `ops` as one write and applies them to the state. Returns the LSN a sync must
    /// reach.
    /// Records a segment a rollover sealed.
    fn note_sealed(&self, inner: &mut Inner, sealed: Sealed) {
        // The rollover synced the old segment whole, and the directory if a rename was
        // unsynced: everything before the new segment is durable, names included.
        let durable_lsn = sealed.durable_lsn;
        inner.sealed.insert(
            sealed.sequence,
            Segment {
                sequence: sealed.sequence,
                name: sealed.name,
                file: sealed.file,
                size: sealed.size,
            },
        );
        inner.purge_due = true;
        let mut sync = self.lock_sync();
        sync.durable_lsn = sync.durable_lsn.max(durable_lsn);
    }

    fn write_ops(&self, inner: &mut Inner, ops: &[Op<'_>]) -> Result<u64> {
        let mut sealed: Option<Sealed> = None;
        let state = &inner.state;
        // A term or vote change is what a node must never forget (a second vote in a term):
        // the segment is sealed right after it, so that it has copies elsewhere.
        let votes = ops.iter().any(|op| match op {
            Op::HardState { group, hard_state }
            | Op::Entries { group, hard_state: Some(hard_state), .. } => {
                let current = hard_state_of(state, *group);
                hard_state.term != current.term || hard_state.vote != current.vote
            }
            _ => false,
        });
        let lsn_before = inner.writer.lsn;
        inner.writer.sync_running = self.lock_sync().syncing;
        inner.writer.live_segments = inner.sealed.len() + 1;
        let result = inner.writer.write(ops, &|| state.checkpoint(), &mut sealed);
        if let Some(sealed) = sealed {
            self.note_sealed(inner, sealed);
        }
        let written = match result {
            Ok(written) => written,
            Err(Failure::Refused(e)) => return Err(e),
            Err(Failure::Poison(e)) => return Err(self.poison(e)),
        };
        let lsn = inner.writer.lsn;
        let entries: usize = ops
            .iter()
            .map(|op| if let Op::Entries { entries, .. } = op { entries.len() } else { 0 })
            .sum();
        self.counters.wrote(entries as u64, lsn - lsn_before);
        let mut runs = written.runs.iter();
        for op in ops {
            match *op {
                Op::Entries { group, entries, hard_state } => {
                    // One op may have been split over several records.
                    let mut rest = entries;
                    while let Some((head, _)) = rest.split_first() {
                        let run = runs.next().expect("every entry was written in some record");
                        assert_eq!(
                            (run.group, run.first_index),
                            (group, head.index),
                            "records follow the entries in order"
                        );
                        let loc = Loc {
                            segment: u32::try_from(run.sequence).expect("fewer than 2^32 segments"),
                            offset: u32::try_from(run.offset).expect("segments stay below 4 GiB"),
                        };
                        let (part, tail) = rest.split_at(run.count);
                        // The hard state applies after the last run, in the same lookup.
                        let hs = hard_state.filter(|_| tail.is_empty());
                        inner
                            .state
                            .change(group, |s| {
                                s.apply_entries(head.index, part.iter().map(|e| e.term), loc)?;
                                if let Some(hs) = hs {
                                    s.apply_hard_state(hs);
                                }
                                Ok(())
                            })
                            .unwrap_or_else(|why| panic!("a checked append was refused: {why}"));
                        rest = tail;
                    }
                }
                Op::HardState { group, hard_state } => {
                    let _ = inner.state.change(group, |s| {
                        s.apply_hard_state(hard_state);
                        Ok(())
                    });
                }
                Op::Snapshot { group, metadata, resets_log } => {
                    inner
                        .state
                        .change(group, |s| s.apply_snapshot(metadata, resets_log))
                        .unwrap_or_else(|why| panic!("a checked snapshot was refused: {why}"));
                    if resets_log {
                        // Segments may be releasable once this is durable.
                        inner.purge_due = true;
                    }
                }
                Op::Compact { group, index, term } => {
                    inner
                        .state
                        .change(group, |s| s.apply_compact(index, term))
                        .unwrap_or_else(|why| panic!("a checked compaction was refused: {why}"));
                    inner.purge_due = true;
                }
                Op::Remove { group } => {
                    inner.purge_due = true;
                    inner.state.remove(group);
                    inner.compact_requests.remove(&group);
                }
                Op::Checkpoint(_) => {}
            }
        }
        if let Some((segment, offset, bytes)) = written.bytes {
            let durable_lsn = self.lock_sync().durable_lsn;
            inner.cache.insert(segment, offset, bytes, written.runs, (lsn, durable_lsn));
        }
        // A segment in unwritten blocks is left as soon as the next file is ready (see
        // `Writer::leaves_unwritten_segment`), by the same seal.
        if votes || inner.writer.leaves_unwritten_segment() {
            let state = &inner.state;
            let mut sealed = None;
            inner.writer.live_segments = inner.sealed.len() + 1;
            let result = inner.writer.seal_now(&|| state.checkpoint(), &mut sealed);
            if let Some(sealed) = sealed {
                // Known to the log even if starting the next segment failed: it holds records.
                self.note_sealed(inner, sealed);
            }
            if let Err(Failure::Refused(e) | Failure::Poison(e)) = result {
                // The write is in the log but unacknowledged; memory already holds it, so the
                // log cannot go on as if it were not.
                return Err(self.poison(e));
            }
            return Ok(inner.writer.lsn);
        }
        Ok(lsn)
    }

    /// Makes every write up to `lsn` durable, sharing the fdatasync with concurrent callers.
    fn sync_to(&self, lsn: u64, wait: Option<std::time::Duration>) -> Result<()> {
        let mut sync = self.lock_sync();
        // Bounded: every pass either returns or waits for a sync that was running, and each sync
        // ends (successfully, moving durable_lsn on, or by poisoning the log).
        loop {
            self.check_poisoned()?;
            if sync.durable_lsn >= lsn {
                return Ok(());
            }
            if !sync.syncing {
                break;
            }
            sync.waiting += 1;
            sync = self.synced.wait(sync).unwrap_or_else(|p| p.into_inner());
            sync.waiting -= 1;
        }
        sync.syncing = true;
        drop(sync);
        if let Some(wait) = wait {
            // Let more writers join this group commit.
            std::thread::sleep(wait);
        }
        let result = self.lead_sync();
        let mut sync = self.lock_sync();
        sync.syncing = false;
        match result {
            Ok(durable_lsn) => {
                sync.durable_lsn = sync.durable_lsn.max(durable_lsn);
                self.counters.group_commit(1 + sync.waiting);
                // Every thread inside `wait` counted itself under this lock, and one that comes
                // later sees `syncing` false: with none counted, the wake (a futex call) is
                // skipped, which a lone writer saves on every sync.
                let waiters = sync.waiting;
                drop(sync);
                if waiters > 0 {
                    self.synced.notify_all();
                }
                Ok(())
            }
            Err(e) => {
                // Never retried: after a failed fsync the kernel may have dropped the dirty
                // pages and marked them clean, so a second fsync could succeed falsely. Poisoned
                // before the lock is released, so that no thread can lead that second fsync.
                self.mark_poisoned(&e);
                drop(sync);
                self.synced.notify_all();
                Err(e)
            }
        }
    }

    /// A leader's sync: makes everything written when it starts durable, the directory too if a
    /// rename is unsynced, and returns the log sequence number reached.
    fn lead_sync(&self) -> Result<u64> {
        let target: SyncTarget = {
            let inner = self.read();
            // A failure under the lock (a rollover's) must stop this sync from starting.
            self.check_poisoned()?;
            inner.writer.sync_target()
        };
        self.counters.time_sync(self.options.slow_sync_threshold, || target.file.sync_data())?;
        if target.renames > target.durable_renames {
            self.fs.sync_dir(&self.dir)?;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // A rollover may have synced the same file while this sync ran and failed. Linux reports
        // a writeback error once per open file, so this sync's success would then prove nothing.
        // Such a rollover poisons the log before it releases the lock just taken.
        self.check_poisoned()?;
        inner.writer.mark_durable(&target);
        // Before anyone is told the sync returned, so that a process that stops after an
        // acknowledgement always leaves the witness to the kernel. A failed write poisons the
        // log (by the caller), though what the sync covered is durable.
        if inner.writer.witness().map_err(Error::from)? && self.options.sync_witness {
            // Made durable before anyone is told, outside the lock: writers go on meanwhile,
            // and the sync lock (held by this leader) keeps other syncs out.
            let file = inner.writer.active.file.clone();
            drop(inner);
            self.counters.time_sync(self.options.slow_sync_threshold, || file.sync_data())?;
        }
        Ok(target.lsn)
    }

    fn sync_per_policy(&self, lsn: u64, needed: bool) -> Result<()> {
        match self.options.sync_policy {
            _ if !needed => Ok(()),
            SyncPolicy::Always => self.sync_to(lsn, None),
            SyncPolicy::Batch { max_wait } => self.sync_to(lsn, Some(max_wait)),
            SyncPolicy::Never => Ok(()),
        }
    }

    /// Releases what a rollover made releasable, once the writes are durable. Never fails its
    /// caller: the write it follows has happened.
    fn after_write(&self) {
        if self.read().purge_due {
            self.purge_quietly();
        }
    }

    /// Appends `entries` to `group` (etcd append semantics) and records `hard_state`, as one
    /// write with at most one sync.
    pub fn save(
        &self,
        group: u64,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<()> {
        let (lsn, needed, repairing) = {
            let mut inner = self.lock_write()?;
            let (first, last) = bounds(&inner.state, group);
            let kept = trim_append(entries, first, last)?;
            if kept.last().is_some_and(|e| e.index == u64::MAX) {
                return Err(Error::contract("index u64::MAX is reserved"));
            }
            let old = hard_state_of(&inner.state, group);
            let hs = hard_state.filter(|hs| **hs != old);
            let mut ops = Vec::with_capacity(1);
            if !kept.is_empty() {
                // The hard state rides in the entries' record.
                ops.push(Op::Entries { group, entries: kept, hard_state: hs.copied() });
            } else if let Some(hs) = hs {
                ops.push(Op::HardState { group, hard_state: *hs });
            }
            if ops.is_empty() {
                return Ok(());
            }
            let lsn = self.write_ops(&mut inner, &ops)?;
            let term_or_vote = hs.is_some_and(|hs| hs.term != old.term || hs.vote != old.vote);
            let needed = !self.options.must_sync_rule || !kept.is_empty() || term_or_vote;
            (lsn, needed, Self::repairing_bounds(&inner))
        };
        self.sync_per_policy(lsn, needed)?;
        if self.durable_on_return(needed) {
            self.settle_repairs(repairing);
        }
        self.after_write();
        Ok(())
    }

    /// Writes every change of `batch` as one write (all or nothing after a crash) with at most
    /// one sync, then empties the batch. Items are checked in order against the groups' state
    /// (and the batch's earlier items); a refused item refuses the whole batch, and nothing is
    /// written.
    pub fn write(&self, batch: &mut WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (lsn, needed, repairing) = {
            let mut inner = self.lock_write()?;
            let mut views: state::GroupMap<View> =
                state::GroupMap::with_capacity_and_hasher(batch.items.len(), Default::default());
            let mut ops: Vec<Op<'_>> = Vec::with_capacity(batch.items.len() * 2);
            // Every group's entries the batch writes, in order (see `View::term`).
            let mut written: Vec<(u64, &[Entry])> = Vec::with_capacity(batch.items.len());
            let mut needed = !self.options.must_sync_rule;
            for item in &batch.items {
                match item {
                    Item::Save { group, hard_state, entries } => {
                        let view =
                            views.entry(*group).or_insert_with(|| View::of(&inner.state, *group));
                        let kept =
                            trim_append(batch.entries_of(entries), view.dummy + 1, view.last)?;
                        let hs = hard_state.filter(|hs| *hs != view.hard_state);
                        if let Some(hs) = hs {
                            needed |=
                                hs.term != view.hard_state.term || hs.vote != view.hard_state.vote;
                            view.hard_state = hs;
                        }
                        if let Some(last) = kept.last() {
                            view.last = last.index;
                            written.push((*group, kept));
                            // The hard state rides in the entries' record.
                            ops.push(Op::Entries { group: *group, entries: kept, hard_state: hs });
                            needed = true;
                        } else if let Some(hs) = hs {
                            ops.push(Op::HardState { group: *group, hard_state: hs });
                        }
                    }
                    Item::Compact { group, index } => {
                        let view =
                            views.entry(*group).or_insert_with(|| View::of(&inner.state, *group));
                        if *index <= view.dummy {
                            return Err(Error::Compacted);
                        }
                        if *index > view.last {
                            return Err(Error::contract(format!(
                                "compact {index} of group {group} is out of bound lastindex({})",
                                view.last
                            )));
                        }
                        let term = view.term(&inner.state, &written, *group, *index)?;
                        view.dummy = *index;
                        ops.push(Op::Compact { group: *group, index: *index, term });
                        needed = true;
                    }
                }
            }
            if ops.is_empty() {
                batch.clear();
                return Ok(());
            }
            let lsn = self.write_ops(&mut inner, &ops)?;
            (lsn, needed, Self::repairing_bounds(&inner))
        };
        batch.clear();
        self.sync_per_policy(lsn, needed)?;
        if self.durable_on_return(needed) {
            self.settle_repairs(repairing);
        }
        self.after_write();
        Ok(())
    }

    /// Makes entry `index` of `group` the dummy, then releases the segments nothing needs.
    pub fn compact(&self, group: u64, index: u64) -> Result<()> {
        let lsn = {
            let mut inner = self.lock_write()?;
            let (first, last) = bounds(&inner.state, group);
            if index < first {
                return Err(Error::Compacted);
            }
            if index > last {
                return Err(Error::contract(format!(
                    "compact {index} is out of bound lastindex({last})"
                )));
            }
            let term = inner.state.group(group).expect("a group with entries").index.term(index)?;
            self.write_ops(&mut inner, &[Op::Compact { group, index, term }])?
        };
        self.sync_per_policy(lsn, true)?;
        // The compaction has happened; releasing segments is housekeeping that cannot fail it.
        self.purge_quietly();
        Ok(())
    }

    /// Records that `metadata` is `group`'s newest snapshot; with `resets_log`, its log is
    /// replaced by the dummy `(metadata.index, metadata.term)`. Without it, entry
    /// `metadata.index` must still have `metadata.term` (the log may have changed while the
    /// snapshot was written). Always synced, whatever the policy: the marker is the commit point
    /// of a snapshot, and older snapshot files and segments are released only once it is durable.
    pub fn save_snapshot(
        &self,
        group: u64,
        metadata: &SnapshotMetadata,
        resets_log: bool,
    ) -> Result<()> {
        if metadata.index == u64::MAX {
            return Err(Error::contract("index u64::MAX is reserved"));
        }
        let lsn = {
            let mut inner = self.lock_write()?;
            if !resets_log
                && term_of(&inner.state, group, metadata.index).ok() != Some(metadata.term)
            {
                return Err(Error::contract(format!(
                    "snapshot ({}, {}) no longer matches the log",
                    metadata.index, metadata.term
                )));
            }
            let lsn =
                self.write_ops(&mut inner, &[Op::Snapshot { group, metadata, resets_log }])?;
            (lsn, Self::repairing_bounds(&inner))
        };
        let (lsn, repairing) = lsn;
        self.sync_to(lsn, None)?;
        self.settle_repairs(repairing);
        if resets_log {
            // The marker is durable: the snapshot is recorded whatever happens to old segments.
            self.purge_quietly();
        }
        Ok(())
    }

    /// Removes every piece of `group`'s state, durably (a group with no state: nothing to do).
    pub fn remove_group(&self, group: u64) -> Result<()> {
        let lsn = {
            let mut inner = self.lock_write()?;
            if inner.state.group(group).is_none() {
                return Ok(());
            }
            self.write_ops(&mut inner, &[Op::Remove { group }])?
        };
        self.sync_to(lsn, None)?;
        // A removed group has nothing left to repair.
        self.clear_repair(group)?;
        self.purge_quietly();
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<()> {
        self.check_poisoned()?;
        let (lsn, repairing) = {
            let inner = self.read();
            (inner.writer.lsn, Self::repairing_bounds(&inner))
        };
        self.sync_to(lsn, None)?;
        self.settle_repairs(repairing);
        // Under `SyncPolicy::Never`, compactions wait for a sync to release their segments; a
        // purge that failed earlier is retried here too. Nothing to do unless a seal, a
        // compaction, a reset or a removal made some segment releasable since the last one
        // (a purge walks every group: a sync per ready cycle must not).
        if self.read().purge_due {
            self.purge_quietly();
        }
        Ok(())
    }

    /// Writes a final checkpoint and syncs, so every record has a durable witness (a bit flip
    /// anywhere is then reported as corruption rather than cut as a torn tail).
    pub fn close(&self) -> Result<()> {
        // Everything written first, so that its witness precedes the checkpoint, which the last
        // sync makes durable with it (the checkpoint's own `durable` field covers only what was
        // durable before it).
        self.sync()?;
        let lsn = {
            let mut inner = self.lock_write()?;
            let checkpoint = inner.state.checkpoint();
            self.write_ops(&mut inner, &[Op::Checkpoint(&checkpoint)])?
        };
        self.sync_to(lsn, None)
    }

    /// The groups holding any state, sorted.
    pub fn group_ids(&self) -> Vec<u64> {
        self.read().state.group_ids()
    }

    /// `group`'s hard state last saved.
    pub fn hard_state(&self, group: u64) -> HardState {
        hard_state_of(&self.read().state, group)
    }

    /// `group`'s newest snapshot marker's metadata.
    pub fn snapshot_metadata(&self, group: u64) -> SnapshotMetadata {
        self.read().state.group(group).map(|s| s.snapshot()).unwrap_or_default()
    }

    /// Index of `group`'s dummy entry plus one.
    pub fn first_index(&self, group: u64) -> u64 {
        bounds(&self.read().state, group).0
    }

    /// Index of `group`'s last entry (the dummy's when none is live).
    pub fn last_index(&self, group: u64) -> u64 {
        bounds(&self.read().state, group).1
    }

    /// The term of `group`'s entry `index`, with `Storage::term`'s errors.
    pub fn term(&self, group: u64, index: u64) -> Result<u64> {
        term_of(&self.read().state, group, index)
    }

    /// `group`'s entries in `[lo, hi)` within `max_size`, with `Storage::entries`'s semantics.
    pub fn entries(&self, group: u64, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>> {
        let inner = self.read();
        let result = inner.entries(group, lo, hi, max_size, self.options.max_record_bytes);
        drop(inner);
        if matches!(result, Err(Error::Corruption { .. })) && self.options.read_footers {
            self.note_damage_found();
        }
        result
    }

    /// Leaves the note that makes the next open read every segment whole (see
    /// [`READ_WHOLE_FILE`]): damage a read found in a segment replayed from its footer would
    /// otherwise stay unseen by every open, and fail the same read after every restart. Best
    /// effort (the caller reports the damage anyway), but a failed directory fsync poisons the
    /// log, as everywhere: whether the directory's state is durable is unknown.
    fn note_damage_found(&self) {
        #[cfg(feature = "tracing")]
        tracing::error!(dir = %self.dir.display(), "a read found damage: the next open reads every segment whole");
        if self.fs.create(&self.dir.join(READ_WHOLE_FILE)).is_ok()
            && let Err(e) = self.fs.sync_dir(&self.dir)
        {
            self.poison(e.into());
        }
    }

    /// Segment files the log holds now.
    pub fn segment_count(&self) -> usize {
        self.read().sealed.len() + 1
    }

    /// What the log has done since it was opened, and its size now. Cheap enough to call
    /// every second: counters are atomics, and the gauges take the read lock once.
    pub fn metrics(&self) -> WalMetrics {
        let mut metrics = self.counters.read();
        let inner = self.read();
        let files = inner.sealed.values().map(|s| &s.file).chain([&inner.writer.active.file]);
        // A length that cannot be read counts as 0: metrics never fail.
        metrics.bytes_on_disk = files.map(|f| f.len().unwrap_or(0)).sum();
        metrics.segments_live = inner.sealed.len() as u64 + 1;
        metrics.index_bytes = inner.state.heap_bytes() as u64;
        metrics.cache_bytes = inner.cache.bytes();
        metrics.poisoned = self.poisoned.load(Ordering::Acquire);
        metrics.recovery = self.recovery.clone();
        #[cfg(feature = "metrics")]
        metrics.publish_gauges();
        metrics
    }

    /// The live counters, for the storage layer's own events (snapshot files).
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Heap bytes the in-memory index uses (every group's, and the group table), and the live
    /// entries it indexes.
    pub fn index_memory(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.state.heap_bytes(), inner.state.live_entries())
    }
}

/// The released segment files kept for reuse, oldest first; files beyond `capacity` (the
/// options changed) are deleted.
fn open_pool(fs: &Fs, dir: &Path, capacity: usize) -> Result<Vec<String>> {
    let mut pool: Vec<String> =
        fs.list(dir)?.into_iter().filter(|n| n.ends_with(format::POOL_SUFFIX)).collect();
    pool.sort();
    if pool.len() > capacity {
        // Bounded by the files listed.
        for name in pool.drain(..pool.len() - capacity) {
            fs.remove_file(&dir.join(name))?;
        }
        fs.sync_dir(dir)?;
    }
    Ok(pool)
}

/// `group`'s `(first_index, last_index)`; a group with no state is an empty log `(1, 0)`.
fn bounds(state: &EngineState, group: u64) -> (u64, u64) {
    state.group(group).map_or((1, 0), |s| (s.index.dummy_index() + 1, s.index.last_index()))
}

fn hard_state_of(state: &EngineState, group: u64) -> HardState {
    state.group(group).map(|s| s.hard_state).unwrap_or_default()
}

fn term_of(state: &EngineState, group: u64, index: u64) -> Result<u64> {
    match state.group(group) {
        Some(s) => s.index.term(index),
        None if index == 0 => Ok(0),
        None => Err(Error::Unavailable),
    }
}

/// A group as a batch being checked sees it: its state plus the batch's earlier items.
struct View {
    dummy: u64,
    last: u64,
    hard_state: HardState,
}

impl View {
    fn of(state: &EngineState, group: u64) -> View {
        let (first, last) = bounds(state, group);
        View { dummy: first - 1, last, hard_state: hard_state_of(state, group) }
    }

    /// The term of `index` (at most `self.last`) in `group`'s log as the batch leaves it so far:
    /// from the newest of the batch's entry slices (`written`, every group's, in order) that
    /// holds it, else from the state. A later slice replaces the log from its first index on,
    /// so a slice that an even later one replaced cannot be the newest holding `index`: each
    /// slice attaches at most one past the log's last index, and `index` is still in the log.
    fn term(
        &self,
        state: &EngineState,
        written: &[(u64, &[Entry])],
        group: u64,
        index: u64,
    ) -> Result<u64> {
        debug_assert!(index <= self.last);
        // Bounded by the batch's items.
        for (g, slice) in written.iter().rev() {
            let first = slice[0].index;
            if *g == group && index >= first && index < first + slice.len() as u64 {
                return Ok(slice[(index - first) as usize].term);
            }
        }
        term_of(state, group, index)
    }
}

/// One group's view of an [`Engine`]: the single-log API (`save`, `compact`, `entries`, ...)
/// the storage layer builds on. `Wal::open` opens an engine and views group 0.
#[derive(Clone, Debug)]
pub struct Wal {
    engine: Arc<Engine>,
    group: u64,
}

impl Wal {
    /// Opens (creating if missing) the WAL in `dir` on `fs`, and views group 0.
    pub fn open(fs: Fs, dir: &Path, options: WalOptions) -> Result<Wal> {
        Ok(Wal { engine: Arc::new(Engine::open(fs, dir, options)?), group: 0 })
    }

    /// `group`'s view of `engine`.
    pub fn of(engine: Arc<Engine>, group: u64) -> Wal {
        Wal { engine, group }
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The group this view shows.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// What recovery found when the engine was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.engine.recovery_report()
    }

    /// See [`Engine::save`].
    pub fn save(&self, hard_state: Option<&HardState>, entries: &[Entry]) -> Result<()> {
        self.engine.save(self.group, hard_state, entries)
    }

    /// See [`Engine::compact`].
    pub fn compact(&self, index: u64) -> Result<()> {
        self.engine.compact(self.group, index)
    }

    /// See [`Engine::save_snapshot`].
    pub fn save_snapshot(&self, metadata: &SnapshotMetadata, resets_log: bool) -> Result<()> {
        self.engine.save_snapshot(self.group, metadata, resets_log)
    }

    /// See [`Engine::sync`].
    pub fn sync(&self) -> Result<()> {
        self.engine.sync()
    }

    /// See [`Engine::repair_state`].
    pub fn repair_state(&self) -> Option<RepairState> {
        self.engine.repair_state(self.group)
    }

    /// See [`Engine::clear_repair`].
    pub fn clear_repair(&self) -> Result<()> {
        self.engine.clear_repair(self.group)
    }

    /// See [`Engine::close`].
    pub fn close(self) -> Result<()> {
        self.engine.close()
    }

    /// The hard state last saved.
    pub fn hard_state(&self) -> HardState {
        self.engine.hard_state(self.group)
    }

    /// The newest snapshot marker's metadata.
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.engine.snapshot_metadata(self.group)
    }

    /// Index of the dummy entry plus one.
    pub fn first_index(&self) -> u64 {
        self.engine.first_index(self.group)
    }

    /// Index of the last entry (the dummy's when none is live).
    pub fn last_index(&self) -> u64 {
        self.engine.last_index(self.group)
    }

    /// The term of entry `index`, with `Storage::term`'s errors.
    pub fn term(&self, index: u64) -> Result<u64> {
        self.engine.term(self.group, index)
    }

    /// The entries in `[lo, hi)` within `max_size`, with `Storage::entries`'s semantics.
    pub fn entries(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>> {
        self.engine.entries(self.group, lo, hi, max_size)
    }

    /// Segment files the engine holds now.
    pub fn segment_count(&self) -> usize {
        self.engine.segment_count()
    }

    /// The engine's metrics (see [`Engine::metrics`]).
    pub fn metrics(&self) -> WalMetrics {
        self.engine.metrics()
    }

    /// The live counters, for the storage layer's own events (snapshot files).
    pub(crate) fn counters(&self) -> &Counters {
        self.engine.counters()
    }

    /// Heap bytes the engine's in-memory index uses, and the live entries it indexes.
    pub fn index_memory(&self) -> (usize, usize) {
        self.engine.index_memory()
    }
}

/// What recovery did, as metrics (and, with the `tracing` feature, as warnings for what an
/// operator must know: a cut tail and removed segments).
fn recovery_metrics(report: &RecoveryReport, took: std::time::Duration) -> RecoveryMetrics {
    // Each row hit, with the number of segments that hit it, in the table's order of first hit.
    let mut rows: Vec<(&'static str, u64)> = Vec::new();
    for row in &report.rows {
        match rows.iter_mut().find(|(r, _)| r == row) {
            Some((_, count)) => *count += 1,
            None => rows.push((row, 1)),
        }
    }
    if let Some((_segment, _offset, _row)) = &report.truncated {
        // The torn-tail rows cut what was never acknowledged; any other cut (TruncateCorrupt,
        // Repairable) cut damage to durable data.
        #[cfg(feature = "tracing")]
        if matches!(*_row, "R2" | "R3" | "R4" | "H1" | "H2" | "W1") {
            tracing::warn!(segment = %_segment, offset = _offset, row = _row, "recovery cut a torn tail");
        } else {
            tracing::error!(
                segment = %_segment,
                offset = _offset,
                row = _row,
                "recovery cut damaged durable records: what they held is lost to this log"
            );
        }
    }
    #[cfg(feature = "tracing")]
    for segment in &report.removed {
        tracing::warn!(%segment, "recovery removed a segment");
    }
    #[cfg(feature = "metrics")]
    metrics::gauge!("raftwal_recovery_duration_seconds").set(took.as_secs_f64());
    RecoveryMetrics {
        duration_us: micros(took),
        segments_scanned: report.segments_scanned as u64,
        bytes_scanned: report.bytes_scanned,
        rows,
        tail_cut: report.truncated.is_some(),
    }
}

/// Smallest and largest span a read of several records takes in one `pread`.
const SPAN_MIN_BYTES: usize = 64 << 10;
const SPAN_MAX_BYTES: usize = 1 << 20;
/// Bytes read past the last record's start: room for a typical record whole.
const SPAN_TAIL_BYTES: usize = 4096;

/// One read of [`Inner::read_span`]: entry `next` of `group`, at `loc`, of a read of `[next, hi)`
/// within `max_size`; `known` is the length of the record at `loc` when a header read before
/// gave it.
#[derive(Clone, Copy)]
struct Request {
    group: u64,
    loc: Loc,
    next: u64,
    hi: u64,
    max_size: u64,
    max_record: u32,
    known: Option<usize>,
}

/// Adds `size` to `total` if the entry fits the limit (the first always does).
fn fits(total: &mut u64, out: &[Entry], size: u64, max_size: u64) -> bool {
    *total = total.saturating_add(size);
    out.is_empty() || *total <= max_size
}

impl Inner {
    /// `group`'s entries in `[lo, hi)` within `max_size` (see [`Engine::entries`]).
    fn entries(
        &self,
        group: u64,
        lo: u64,
        hi: u64,
        max_size: u64,
        max_record: u32,
    ) -> Result<Vec<Entry>> {
        let Some(state) = self.state.group(group) else {
            check_entries_range(lo, hi, 0, 0)?;
            return Ok(Vec::new());
        };
        let index = &state.index;
        check_entries_range(lo, hi, index.dummy_index(), index.last_index())?;
        // Sized for the range, within a bound: `max_size` may end the read much earlier.
        let mut out: Vec<Entry> = Vec::with_capacity((hi - lo).min(64) as usize);
        let mut total = 0u64;
        let mut next = lo;
        // The term of entries up to `term_end` (exclusive), from one search of the index.
        let (mut term, mut term_end) = (0, lo);
        // Bytes read ahead from one segment, and which segment.
        let mut span: Option<segment::Span<'_>> = None;
        let mut span_segment = u32::MAX;
        // Bounded: each pass adds at least one entry or returns.
        while next < hi {
            // Entries `next..end` are the ones this pass takes from the record at `loc`.
            let (loc, end) = index.record_at(next, hi);
            let from_span = match &span {
                Some(span) if span_segment == loc.segment => {
                    span.entries_at(u64::from(loc.offset), group, max_record, next..end)?
                }
                _ => None,
            };
            // Else a recent write, from memory, its entries cloned straight into the answer.
            let decoded = match from_span {
                Some(record) => Some(Cow::Owned(record)),
                None => self.cache.entries(loc, group, next..end).map(Cow::Borrowed),
            };
            let record = match decoded {
                Some(record) => record,
                _ => Cow::Owned({
                    // A record the span holds the start of but not the end: its header gives
                    // its length, so one read takes it whole.
                    let known = span
                        .as_ref()
                        .filter(|_| span_segment == loc.segment)
                        .and_then(|s| s.record_len_at(u64::from(loc.offset), max_record));
                    let request = Request { group, loc, next, hi, max_size, max_record, known };
                    match self.read_span(index, request)? {
                        (Some(new_span), record) => {
                            span = Some(new_span);
                            span_segment = loc.segment;
                            record
                        }
                        (None, record) => record,
                    }
                }),
            };
            let skip = record.iter().position(|e| e.index == next).ok_or_else(|| {
                self.segment_corruption(
                    loc,
                    format!("the record at the index's location lacks entry {next}"),
                )
            })?;
            for entry in &record[skip..] {
                if next >= end {
                    break;
                }
                if next >= term_end {
                    (term, term_end) = index.term_run(next);
                }
                if entry.index != next || entry.term != term {
                    return Err(self.segment_corruption(
                        loc,
                        format!("entry {next} disagrees with the index"),
                    ));
                }
                if !fits(&mut total, &out, entry.encoded_len(), max_size) {
                    return Ok(out);
                }
                out.push(entry.clone());
                next += 1;
            }
        }
        debug_assert_eq!(out.len(), limit_size(out.iter().map(Entry::encoded_len), max_size));
        Ok(out)
    }

    /// Reads the record at `loc` (entry `next`'s) and, when later entries up to `hi` lie in later
    /// records of the same segment close behind it, the span of the segment holding them, in
    /// one `pread`: consecutive records of a group are then decoded from memory.
    fn read_span(
        &self,
        index: &index::LogIndex,
        request: Request,
    ) -> Result<(Option<segment::Span<'_>>, Vec<Entry>)> {
        let Request { group, loc, next, hi, max_size, max_record, known } = request;
        // Read at most what the caller may take back, twice over (other groups' records may lie
        // between), within bounds.
        let limit = usize::try_from(max_size.saturating_mul(2))
            .unwrap_or(usize::MAX)
            .clamp(SPAN_MIN_BYTES, SPAN_MAX_BYTES);
        let mut last = loc.offset;
        let mut whole = true;
        // Bounded by `hi` and by the span's size.
        for k in next + 1..hi {
            let l = index.loc(k);
            if l.segment != loc.segment || l.offset < loc.offset {
                whole = false;
                break;
            }
            if (l.offset - loc.offset) as usize + SPAN_TAIL_BYTES > limit {
                whole = false;
                break;
            }
            last = l.offset;
        }
        // Entry `hi`'s record, when it starts later in the same segment, starts where the span
        // may end: records do not overlap, so the record at `last` ends there or before.
        let end = (whole && hi <= index.last_index())
            .then(|| index.loc(hi))
            .filter(|l| l.segment == loc.segment && l.offset > last)
            .map(|l| (l.offset - loc.offset) as usize)
            .filter(|&len| len <= limit);
        let len = match (end, known) {
            (Some(len), _) => len,
            (None, Some(len)) if last == loc.offset => len,
            (None, None) if last == loc.offset => {
                return Ok((None, self.read_record(group, loc, max_record, next..hi)?));
            }
            _ => (last - loc.offset) as usize + SPAN_TAIL_BYTES,
        };
        let (name, file) = self.segment_file(loc)?;
        let span = segment::Span::read(name, file, u64::from(loc.offset), len)?;
        match span.entries_at(u64::from(loc.offset), group, max_record, next..hi)? {
            Some(record) => Ok((Some(span), record)),
            // A record longer than the span: read it alone.
            None => Ok((None, self.read_record(group, loc, max_record, next..hi)?)),
        }
    }

    /// The name and file of the segment `loc` points into.
    fn segment_file(&self, loc: Loc) -> Result<(&str, &dyn File)> {
        let sequence = u64::from(loc.segment);
        if sequence == self.writer.active.sequence {
            return Ok((&self.writer.active.name, self.writer.active.file.as_ref()));
        }
        let segment = self.sealed.get(&sequence).ok_or_else(|| Error::Corruption {
            segment: PathBuf::from(format!("segment {sequence}")),
            offset: u64::from(loc.offset),
            kind: crate::error::CorruptionKind::Missing,
        })?;
        Ok((&segment.name, segment.file.as_ref()))
    }

    fn read_record(
        &self,
        group: u64,
        loc: Loc,
        max_record: u32,
        wanted: std::ops::Range<u64>,
    ) -> Result<Vec<Entry>> {
        let sequence = u64::from(loc.segment);
        if sequence == self.writer.active.sequence {
            let active = &self.writer.active;
            return segment::read_entries(
                &active.name,
                active.file.as_ref(),
                group,
                u64::from(loc.offset),
                max_record,
                wanted,
            );
        }
        let segment = self.sealed.get(&sequence).ok_or_else(|| Error::Corruption {
            segment: PathBuf::from(format!("segment {sequence}")),
            offset: u64::from(loc.offset),
            kind: crate::error::CorruptionKind::Missing,
        })?;
        segment.read_entries(group, u64::from(loc.offset), max_record, wanted)
    }

    fn segment_corruption(&self, loc: Loc, why: String) -> Error {
        let sequence = u64::from(loc.segment);
        let name = self
            .sealed
            .get(&sequence)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| self.writer.active.name.clone());
        Error::Corruption {
            segment: PathBuf::from(name),
            offset: u64::from(loc.offset),
            kind: crate::error::CorruptionKind::Malformed(why),
        }
    }
}
