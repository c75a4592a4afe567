//! `LogEngine`: many groups (Raft groups) in one directory, one WAL and one snapshot store.
//!
//! ```text
//! <dir>/wal/   segment files of every group, and the LOCK file
//! <dir>/snap/  snapshot files, {group:016x}-{term:016x}-{index:016x}.snap
//! ```
//!
//! Each group is a [`GroupStorage`]; changes to many groups go in one [`WriteBatch`], written as
//! one unit with at most one sync.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{CorruptionKind, Error, Result};
use crate::io::{Fs, RealFs};
use crate::metrics::WalMetrics;
use crate::options::WalOptions;
use crate::snapshot::SnapshotStore;
use crate::snapshot::format::{REMOVING_SUFFIX, parse_snapshot_name, parse_temp_group};
use crate::storage::group::{GroupShared, GroupStorage};
use crate::storage::{SNAP_DIR, WAL_DIR};
use crate::types::SnapshotMetadata;
use crate::wal::{Engine, PurgeReport, RecoveryReport, Wal, WriteBatch};

/// The durable storage of a node hosting many Raft groups: one WAL (one fsync stream, group
/// commit across groups and threads) and one snapshot directory. Cheap to clone; every clone is
/// the same engine.
///
/// ```
/// use raftwal::{Entry, HardState, LogEngine, Storage, WalOptions, WriteBatch};
///
/// # fn main() -> raftwal::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let engine = LogEngine::open(dir.path(), WalOptions::default())?;
/// // The Readies of two groups, persisted as one write with one fsync.
/// let mut batch = WriteBatch::default();
/// let hs = HardState { term: 1, vote: 1, commit: 0 };
/// batch.save(7, Some(&hs), &[Entry::new(1, 1, "a"), Entry::new(2, 1, "b")])?;
/// batch.save(9, Some(&hs), &[Entry::new(1, 1, "x")])?;
/// engine.write(&mut batch)?;
/// drop(engine);
///
/// // Each group is a `Storage` of its own, with etcd's semantics.
/// let engine = LogEngine::open(dir.path(), WalOptions::default())?;
/// assert_eq!(engine.group_ids(), vec![7, 9]);
/// let group = engine.group(7)?;
/// assert_eq!((group.first_index()?, group.last_index()?), (1, 2));
/// assert_eq!(engine.group(9)?.entries(1, 2, u64::MAX)?[0].data, "x");
/// assert_eq!(engine.group(8)?.last_index()?, 0, "a group with no state is an empty log");
/// group.compact(1)?;
/// engine.remove_group(9)?;
/// assert_eq!(engine.group_ids(), vec![7]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LogEngine {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    engine: Arc<Engine>,
    fs: Fs,
    snap_dir: PathBuf,
    options: WalOptions,
    // Each group's shared handle state while some handle lives (weak: a group nobody holds
    // costs nothing here).
    handles: Mutex<HashMap<u64, Weak<GroupShared>>>,
}

impl LogEngine {
    /// Opens (creating if missing) the engine in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<LogEngine> {
        LogEngine::open_with_fs(Arc::new(RealFs), dir.as_ref(), options)
    }

    /// Opens the engine in `dir` on `fs` (for example a `CrashFs` in tests): recovers the WAL,
    /// then matches every group's snapshot files to its marker (orphans of uncommitted snapshots
    /// and of removed groups are deleted; a damaged marked snapshot is replaced by an older one
    /// the log still covers, or refused).
    pub fn open_with_fs(fs: Fs, dir: &Path, options: WalOptions) -> Result<LogEngine> {
        refuse_lost_log(&fs, dir)?;
        let engine = Arc::new(Engine::open(fs.clone(), &dir.join(WAL_DIR), options.clone())?);
        let snap_dir = dir.join(SNAP_DIR);
        // Creates the directory and removes every writer's leftover temp file.
        SnapshotStore::open(fs.clone(), &snap_dir, 0)?;
        settle_set_aside(&fs, &snap_dir, &engine)?;
        let mut groups: BTreeSet<u64> = fs
            .list(&snap_dir)?
            .iter()
            .filter_map(|name| {
                parse_snapshot_name(name).map(|(group, ..)| group).or(parse_temp_group(name))
            })
            .collect();
        // Groups whose marker names a snapshot must find it (or an older one).
        groups.extend(
            engine
                .group_ids()
                .into_iter()
                .filter(|g| engine.snapshot_metadata(*g) != SnapshotMetadata::default()),
        );
        let log = LogEngine {
            shared: Arc::new(Shared {
                engine,
                fs,
                snap_dir,
                options,
                handles: Mutex::new(HashMap::new()),
            }),
        };
        // Bounded by the groups found.
        for group in groups {
            log.group(group)?.recover_snapshots()?;
        }
        Ok(log)
    }

    /// The storage of group `id`. A group with no state is an empty log (first index 1, last
    /// index 0); nothing is written until it is changed.
    pub fn group(&self, id: u64) -> Result<GroupStorage> {
        let shared = {
            let mut handles = self.shared.handles.lock().unwrap_or_else(|p| p.into_inner());
            match handles.get(&id).and_then(Weak::upgrade) {
                Some(shared) => shared,
                None => {
                    let shared = Arc::new(GroupShared::default());
                    // Drop the entries of groups no handle holds, now and then: the map stays
                    // within twice the groups held (plus a constant).
                    if handles.len() >= 64 && handles.len().is_power_of_two() {
                        handles.retain(|_, weak| weak.strong_count() > 0);
                    }
                    handles.insert(id, Arc::downgrade(&shared));
                    shared
                }
            }
        };
        let snaps = SnapshotStore::open_existing(self.shared.fs.clone(), &self.shared.snap_dir, id);
        let wal = Wal::of(self.shared.engine.clone(), id);
        Ok(GroupStorage::new(wal, snaps, self.shared.options.clone(), shared))
    }

    /// The groups holding any state (entries, a dummy, a hard state or a snapshot), sorted.
    pub fn group_ids(&self) -> Vec<u64> {
        self.shared.engine.group_ids()
    }

    /// Writes every change of `batch` as one unit (after a crash: all of it or none of it), with
    /// at most one sync shared with concurrent writers; the batch is emptied. A refused item
    /// refuses the whole batch and nothing is written.
    pub fn write(&self, batch: &mut WriteBatch) -> Result<()> {
        self.shared.engine.write(batch)
    }

    /// Removes group `id` and all its state (entries, hard state, snapshots), durably. Handles on
    /// it then see an empty log; the id can be used again from empty.
    pub fn remove_group(&self, id: u64) -> Result<()> {
        let snaps = SnapshotStore::open_existing(self.shared.fs.clone(), &self.shared.snap_dir, id);
        // 1. The snapshot files set aside, durably: a crash from here on leaves no file that an
        //    open could take for the group's snapshot (an index-0 file would otherwise look like
        //    a bootstrap to complete) without first seeing that the removal did not happen.
        snaps.set_aside_all()?;
        // 2. The Remove record, synced: the commit point.
        self.shared.engine.remove_group(id)?;
        self.shared.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        // 3. The files (the next open deletes them too).
        snaps.remove_all()
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<()> {
        self.shared.engine.sync()
    }

    /// Deletes the segments no group needs, rewrites cold groups that pin old ones when the log
    /// is above `WalOptions::purge_threshold_bytes`, and reports (see [`PurgeReport`]). Runs by
    /// itself too, after rollovers, compactions, snapshots and removals.
    pub fn purge(&self) -> Result<PurgeReport> {
        self.shared.engine.purge()
    }

    /// Writes a final checkpoint and syncs: a cleanly closed log proves every record durable.
    pub fn close(&self) -> Result<()> {
        self.shared.engine.close()
    }

    /// What the engine has done since it was opened, and its size now.
    pub fn metrics(&self) -> WalMetrics {
        self.shared.engine.metrics()
    }

    /// What recovery found when the engine was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.shared.engine.recovery_report()
    }

    /// Heap bytes of the in-memory index of every group, and the live entries it indexes.
    pub fn index_memory(&self) -> (usize, usize) {
        self.shared.engine.index_memory()
    }

    /// The WAL underneath (for statistics and tools).
    pub fn wal(&self) -> &Arc<Engine> {
        &self.shared.engine
    }
}

/// Settles the files a group's removal set aside (`*.snap.removing`, case 12 of DESIGN §8): when
/// the WAL holds no state of the group, its Remove record is durable and they are deleted;
/// otherwise the removal did not happen, and the file the group's marker names is put back
/// under its name (unless a file of that name exists), the others deleted.
fn settle_set_aside(fs: &Fs, snap_dir: &Path, engine: &Engine) -> Result<()> {
    let names = fs.list(snap_dir)?;
    let live: BTreeSet<u64> = engine.group_ids().into_iter().collect();
    let mut changed = false;
    // Bounded by the files listed.
    for name in &names {
        let Some(original) = name.strip_suffix(REMOVING_SUFFIX) else { continue };
        let Some((group, term, index)) = parse_snapshot_name(original) else { continue };
        let marker = engine.snapshot_metadata(group);
        let marked = live.contains(&group) && (marker.term, marker.index) == (term, index);
        if marked && !names.iter().any(|n| n == original) {
            fs.rename(&snap_dir.join(name), &snap_dir.join(original))?;
        } else {
            fs.remove_file(&snap_dir.join(name))?;
        }
        changed = true;
    }
    if changed {
        fs.sync_dir(snap_dir)?;
    }
    Ok(())
}

/// Refuses a directory whose snapshot files survived while its WAL has no segment. A new
/// storage creates its log (durably) before any snapshot file can be written, so such a WAL
/// lost its segments: opening would build an empty log, forget the hard states and remove the
/// snapshot files as orphans of uncommitted snapshots.
fn refuse_lost_log(fs: &Fs, dir: &Path) -> Result<()> {
    let wal_dir = dir.join(WAL_DIR);
    let has_segment = match fs.list(&wal_dir) {
        Ok(names) => names.iter().any(|n| crate::wal::format::parse_segment_name(n).is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    if has_segment {
        return Ok(());
    }
    let snapshots = match fs.list(&dir.join(SNAP_DIR)) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    match snapshots.iter().rfind(|name| parse_snapshot_name(name).is_some()) {
        None => Ok(()),
        Some(newest) => Err(Error::Corruption {
            segment: PathBuf::from(WAL_DIR),
            offset: 0,
            kind: CorruptionKind::Malformed(format!(
                "the log has no segment, but snapshot {newest} exists: the log's segments were lost"
            )),
        }),
    }
}
