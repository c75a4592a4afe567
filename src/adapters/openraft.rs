//! raftwal as the log storage of an openraft (0.9) node: [`OpenRaftLogStore`] implements
//! `RaftLogStorage` and [`OpenRaftLogReader`] implements `RaftLogReader`, over a [`WalStorage`].
//!
//! # How openraft's log maps onto raftwal's
//!
//! | openraft | raftwal |
//! |---|---|
//! | entry at index `i` (the log starts at 0) | entry at index `i + 1`, term = the log id's term, data = the entry serialized with `serde_json` (log id, payload and all) |
//! | "nothing purged" | the initial dummy `(0, 0)` |
//! | `purge(log_id)`, entries up to `log_id` present | `compact(log_id.index + 1)`: the purged entry becomes the dummy |
//! | `purge(log_id)` beyond the last entry (after a snapshot install) | `apply_snapshot` of an empty snapshot at `(log_id.index + 1, term)`: the log restarts after it |
//! | `truncate(log_id)` | the state record's `end = log_id.index`: entries from there on are hidden until the next `append` replaces them (etcd's suffix replacement) |
//! | `append` | `append`, then `end` cleared; the callback runs once both are durable |
//! | `append` to an empty log, starting past its end | the WAL restarted (as for a purge past the end) just before the first entry |
//! | vote, committed log id, last purged log id | the state record |
//!
//! The *state record* is one small file, `<dir>/openraft/STATE`: a `u32` little-endian CRC-32
//! (IEEE) of the body, then the body, `serde_json` of the vote, the
//! committed log id, the last purged log id and `end`. It is replaced atomically (temp file,
//! fdatasync, rename, directory fsync) on every change, so every `save_vote`,
//! `save_committed`, `truncate` and `purge` costs two syncs.
//!
//! Crash order: `purge` writes the record before compacting the WAL, and opening finishes a
//! purge the record names but the WAL did not reach; `truncate` needs only the record; `append`
//! writes the WAL first, so a crash before `end` is cleared leaves a prefix of the new entries
//! visible, never a hole.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftTypeConfig};
use openraft::{StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use crate::WalStorage;
use crate::contract::Storage;
use crate::error::{CorruptionKind, Error, Result};
use crate::io::{Fs, RealFs};
use crate::options::WalOptions;
use crate::types::{Entry, Snapshot, SnapshotMetadata};

/// Subdirectory of the state record.
pub const STATE_DIR: &str = "openraft";
/// File name of the state record.
pub const STATE_FILE: &str = "STATE";
const STATE_TEMP_FILE: &str = "STATE.tmp";
const CRC_LEN: usize = size_of::<u32>();
/// Largest state record read back; a few log ids and a vote stay far below it.
const MAX_STATE_BYTES: u64 = 64 << 10;

/// What openraft keeps beside the log entries.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
struct State<C: RaftTypeConfig> {
    vote: Option<Vote<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
    last_purged: Option<LogId<C::NodeId>>,
    // Openraft index one past the last visible entry, set by `truncate` until the next append.
    // Invariant: when set, it is above `last_purged`'s index.
    end: Option<u64>,
}

impl<C: RaftTypeConfig> Default for State<C> {
    fn default() -> Self {
        State { vote: None, committed: None, last_purged: None, end: None }
    }
}

impl<C: RaftTypeConfig> Clone for State<C> {
    fn clone(&self) -> Self {
        State {
            vote: self.vote.clone(),
            committed: self.committed.clone(),
            last_purged: self.last_purged.clone(),
            end: self.end,
        }
    }
}

struct Shared<C: RaftTypeConfig> {
    wal: WalStorage,
    fs: Fs,
    state_dir: PathBuf,
    // Held across every read and write, so that a reader sees the record and the WAL agree.
    state: Mutex<State<C>>,
}

/// openraft's `RaftLogStorage` over a [`WalStorage`] and a small state record (see the module
/// documentation for the mapping).
pub struct OpenRaftLogStore<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
}

/// openraft's `RaftLogReader` for replication tasks: shares the store it came from.
pub struct OpenRaftLogReader<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
}

impl<C: RaftTypeConfig> Clone for OpenRaftLogReader<C> {
    fn clone(&self) -> Self {
        OpenRaftLogReader { shared: self.shared.clone() }
    }
}

impl<C: RaftTypeConfig> Debug for OpenRaftLogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRaftLogStore").field("wal", &self.shared.wal).finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> Debug for OpenRaftLogReader<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRaftLogReader").field("wal", &self.shared.wal).finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> OpenRaftLogStore<C> {
    /// Opens (creating if missing) the store in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Self> {
        Self::open_with_fs(Arc::new(RealFs), dir.as_ref(), options)
    }

    /// Opens the store in `dir` on `fs` (for example a `CrashFs` in tests), finishing a purge a
    /// crash interrupted.
    pub fn open_with_fs(fs: Fs, dir: &Path, options: WalOptions) -> Result<Self> {
        let wal = WalStorage::open_with_fs(fs.clone(), dir, options)?;
        let state_dir = dir.join(STATE_DIR);
        crate::io::create_dir_all_durable(fs.as_ref(), &state_dir)?;
        let state = read_state::<C>(&fs, &state_dir)?;
        let shared = Shared { wal, fs, state_dir, state: Mutex::new(state) };
        {
            let state = shared.lock();
            if let Some(purged) = state.last_purged.clone() {
                shared.purge_wal(&state, &purged)?;
            }
        }
        Ok(OpenRaftLogStore { shared: Arc::new(shared) })
    }

    /// The storage underneath.
    pub fn wal(&self) -> &WalStorage {
        &self.shared.wal
    }

    /// A reader sharing this store.
    pub fn reader(&self) -> OpenRaftLogReader<C> {
        OpenRaftLogReader { shared: self.shared.clone() }
    }
}

impl<C: RaftTypeConfig> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // Every change writes the record before it updates memory, so a panic leaves nothing
        // half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `next` the durable state record, then the one in memory.
    fn save_state(&self, state: &mut State<C>, next: State<C>) -> Result<()> {
        write_state(&self.fs, &self.state_dir, &next)?;
        *state = next;
        Ok(())
    }

    /// The raftwal index of the last visible entry: the WAL's last, cut by `end`.
    fn visible_last(&self, state: &State<C>) -> u64 {
        let last = self.wal.wal().last_index();
        match state.end {
            // Openraft index `end` is raftwal index `end + 1`: the last visible one is `end`.
            Some(end) => last.min(end).max(self.wal.wal().first_index() - 1),
            None => last,
        }
    }

    /// Brings the WAL's dummy up to `purged` (a no-op when it is there already).
    fn purge_wal(&self, state: &State<C>, purged: &LogId<C::NodeId>) -> Result<()> {
        let target = purged.index + 1;
        let dummy = self.wal.wal().first_index() - 1;
        if target <= dummy {
            return Ok(());
        }
        if target <= self.visible_last(state) {
            return self.wal.compact(target);
        }
        // Nothing after the purged entry survives: the log restarts after it.
        self.restart_wal(target, purged.leader_id.term)
    }

    /// Empties the WAL and makes `(index, term)` its dummy, through an empty snapshot (the one
    /// operation that moves raftwal's dummy past its last entry).
    fn restart_wal(&self, index: u64, term: u64) -> Result<()> {
        let metadata = SnapshotMetadata {
            index,
            term,
            conf_state: self.wal.wal().snapshot_metadata().conf_state,
        };
        self.wal.apply_snapshot(Snapshot { metadata, data: Bytes::new() })
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<C::Entry>> {
        let state = self.lock();
        // Openraft indexes.
        let first = self.wal.wal().first_index() - 1;
        let end_visible = self.visible_last(&state);
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(first);
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        }
        .min(end_visible);
        if start >= end {
            return Ok(Vec::new());
        }
        let stored = self.wal.entries(start + 1, end + 1, u64::MAX)?;
        drop(state);
        stored.iter().map(decode_entry::<C>).collect()
    }

    fn log_state(&self) -> Result<LogState<C>> {
        let state = self.lock();
        let last = self.visible_last(&state);
        let last_purged_log_id = state.last_purged.clone();
        let last_log_id = if last >= self.wal.wal().first_index() {
            let stored = self.wal.entries(last, last + 1, u64::MAX)?;
            let entry = decode_entry::<C>(&stored[0])?;
            Some(entry.get_log_id().clone())
        } else {
            last_purged_log_id.clone()
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    fn append(&self, entries: Vec<Entry>) -> Result<()> {
        let mut state = self.lock();
        if let Some(head) = entries.first() {
            let dummy = self.wal.wal().first_index() - 1;
            let visible_last = self.visible_last(&state);
            if visible_last == dummy && head.index > dummy + 1 {
                // An empty log may start anywhere (openraft's suite appends to fresh stores at
                // index 1 and beyond): restart the WAL just before the first entry, dropping
                // whatever `end` hid.
                self.restart_wal(head.index - 1, 0)?;
            } else if head.index > visible_last + 1 {
                return Err(Error::ContractViolation(format!(
                    "append at {} leaves a hole after the log's last entry {}",
                    head.index - 1,
                    visible_last.saturating_sub(1)
                )));
            }
        }
        self.wal.append(&entries)?;
        // Durable before the callback runs, whatever the sync policy.
        self.wal.sync()?;
        if state.end.is_some() && !entries.is_empty() {
            // The append replaced the WAL's suffix from its first entry on: what was hidden is
            // gone, and the WAL's end is the log's end again.
            let next = State { end: None, ..state.clone() };
            self.save_state(&mut state, next)?;
        }
        Ok(())
    }

    fn truncate(&self, log_id: &LogId<C::NodeId>) -> Result<()> {
        let mut state = self.lock();
        let end = match state.end {
            Some(end) => end.min(log_id.index),
            None => log_id.index,
        };
        let next = State { end: Some(end), ..state.clone() };
        self.save_state(&mut state, next)
    }

    fn purge(&self, log_id: &LogId<C::NodeId>) -> Result<()> {
        let mut state = self.lock();
        if state.last_purged.as_ref().is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        // Entries hidden by `end` beyond the purged one stay hidden.
        let next = State { last_purged: Some(log_id.clone()), ..state.clone() };
        // The record first: opening finishes a purge the WAL did not reach.
        self.save_state(&mut state, next)?;
        self.purge_wal(&state, log_id)?;
        if state.end.is_some() && self.wal.wal().first_index() > self.wal.wal().last_index() {
            let next = State { end: None, ..state.clone() };
            self.save_state(&mut state, next)?;
        }
        Ok(())
    }
}

fn encode_entry<C: RaftTypeConfig>(entry: &C::Entry) -> Result<Entry> {
    let log_id = entry.get_log_id();
    let data = serde_json::to_vec(entry).map_err(|e| Error::ContractViolation(e.to_string()))?;
    Ok(Entry::new(log_id.index + 1, log_id.leader_id.term, data))
}

fn decode_entry<C: RaftTypeConfig>(stored: &Entry) -> Result<C::Entry> {
    serde_json::from_slice(&stored.data).map_err(|e| Error::Corruption {
        segment: PathBuf::from(crate::storage::WAL_DIR),
        offset: 0,
        kind: CorruptionKind::Malformed(format!("entry {}: {e}", stored.index)),
    })
}

fn read_state<C: RaftTypeConfig>(fs: &Fs, dir: &Path) -> Result<State<C>> {
    let path = dir.join(STATE_FILE);
    let file = match fs.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |kind| Error::Corruption {
        segment: PathBuf::from(STATE_DIR).join(STATE_FILE),
        offset: 0,
        kind,
    };
    let len = file.len()?;
    if len > MAX_STATE_BYTES || len < CRC_LEN as u64 {
        return Err(corrupt(CorruptionKind::BadLength(len)));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    let (crc, body) = bytes.split_at(CRC_LEN);
    let crc = u32::from_le_bytes(crc.try_into().expect("CRC_LEN bytes"));
    if crc != crc32fast::hash(body) {
        return Err(corrupt(CorruptionKind::ChecksumMismatch));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(CorruptionKind::Malformed(e.to_string())))
}

fn write_state<C: RaftTypeConfig>(fs: &Fs, dir: &Path, state: &State<C>) -> Result<()> {
    let body = serde_json::to_vec(state).map_err(|e| Error::ContractViolation(e.to_string()))?;
    let mut bytes = Vec::with_capacity(CRC_LEN + body.len());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    let temp = dir.join(STATE_TEMP_FILE);
    let file = fs.create(&temp)?;
    file.write_all_at(&bytes, 0)?;
    file.sync_data()?;
    drop(file);
    fs.rename(&temp, &dir.join(STATE_FILE))?;
    fs.sync_dir(dir)?;
    Ok(())
}

fn io_error<C: RaftTypeConfig>(
    subject: ErrorSubject<C::NodeId>,
    verb: ErrorVerb,
    error: Error,
) -> StorageError<C::NodeId> {
    StorageError::IO { source: StorageIOError::new(subject, verb, AnyError::new(&error)) }
}

fn read_logs<C: RaftTypeConfig>(error: Error) -> StorageError<C::NodeId> {
    io_error::<C>(ErrorSubject::Logs, ErrorVerb::Read, error)
}

fn write_logs<C: RaftTypeConfig>(error: Error) -> StorageError<C::NodeId> {
    io_error::<C>(ErrorSubject::Logs, ErrorVerb::Write, error)
}

impl<C: RaftTypeConfig> RaftLogReader<C> for OpenRaftLogReader<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.shared.entries(range).map_err(read_logs::<C>)
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for OpenRaftLogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.shared.entries(range).map_err(read_logs::<C>)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for OpenRaftLogStore<C> {
    type LogReader = OpenRaftLogReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        self.shared.log_state().map_err(read_logs::<C>)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut state = self.shared.lock();
        let next = State { vote: Some(vote.clone()), ..state.clone() };
        self.shared
            .save_state(&mut state, next)
            .map_err(|e| io_error::<C>(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.shared.lock().vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let mut state = self.shared.lock();
        let next = State { committed, ..state.clone() };
        self.shared.save_state(&mut state, next).map_err(write_logs::<C>)
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.shared.lock().committed.clone())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = entries
            .into_iter()
            .map(|e| encode_entry::<C>(&e))
            .collect::<Result<Vec<Entry>>>()
            .and_then(|entries| self.shared.append(entries));
        match result {
            Ok(()) => {
                // Durable: the WAL syncs before `append` returns under the default policy.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(write_logs::<C>(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.shared.truncate(&log_id).map_err(write_logs::<C>)
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.shared.purge(&log_id).map_err(write_logs::<C>)
    }
}
