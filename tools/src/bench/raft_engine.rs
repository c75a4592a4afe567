//! raft-engine 0.4 behind the benchmark's [`Target`], for `--compare raft-engine`.
//!
//! raft-engine stores entries as protobuf messages of a type the caller names. The benchmark uses
//! the well-known `BytesValue` message holding index and term (8 bytes each, little-endian) and the
//! payload, so an entry is about as large as raftwal's (21 bytes of header plus the payload).
//! Each writer appends to its own Raft group (region); reads and recovery use group 1.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use protobuf::well_known_types::BytesValue;
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};

use super::BenchResult;
use super::groups::{Groups, group_entry_data, hard_state, hard_state_of};
use super::target::{Mode, Sizing, Target};
use super::workloads::entry_data;

/// Writers (regions) a log serves.
const MAX_WRITERS: usize = 64;
/// Bytes of index and term before the payload.
const ENTRY_HEADER_BYTES: usize = 16;
/// Key of a region's hard state (term, vote, commit; 8 bytes each, little-endian).
const HARD_STATE_KEY: &[u8] = b"hard_state";

/// The entry type raft-engine is given.
struct Entries;

impl MessageExt for Entries {
    type Entry = BytesValue;

    fn index(entry: &BytesValue) -> u64 {
        let mut index = [0u8; 8];
        index.copy_from_slice(&entry.value[..8]);
        u64::from_le_bytes(index)
    }
}

fn entry(index: u64, term: u64, payload: &[u8]) -> BytesValue {
    let mut value = Vec::with_capacity(ENTRY_HEADER_BYTES + payload.len());
    value.extend_from_slice(&index.to_le_bytes());
    value.extend_from_slice(&term.to_le_bytes());
    value.extend_from_slice(payload);
    let mut entry = BytesValue::new();
    entry.value = value;
    entry
}

fn err(e: raft_engine::Error) -> Box<dyn std::error::Error + Send + Sync> {
    format!("raft-engine: {e}").into()
}

/// An open raft-engine.
pub struct RaftEngine {
    engine: Engine,
    // next[w]: the next index of writer w's region.
    next: Vec<AtomicU64>,
    sync: bool,
}

/// Opens raft-engine in `dir` with its default configuration but the file size.
pub fn open(dir: &Path, mode: Mode, sizing: Sizing) -> BenchResult<Box<dyn Target>> {
    let config = Config {
        dir: dir.to_str().ok_or("the directory's name is not UTF-8")?.to_string(),
        target_file_size: ReadableSize(sizing.segment_bytes),
        ..Default::default()
    };
    let engine = Engine::open(config).map_err(err)?;
    let next = (0..MAX_WRITERS)
        .map(|w| AtomicU64::new(engine.last_index(region(w)).unwrap_or(0) + 1))
        .collect();
    Ok(Box::new(RaftEngine { engine, next, sync: mode != Mode::Unsynced }))
}

fn region(writer: usize) -> u64 {
    writer as u64 + 1
}

impl Target for RaftEngine {
    fn append(&self, writer: usize, count: usize, size: usize) -> BenchResult<()> {
        assert!(writer < MAX_WRITERS, "writer {writer} is beyond the {MAX_WRITERS} regions");
        // Each writer owns its region's counter.
        let first = self.next[writer].fetch_add(count as u64, Ordering::Relaxed);
        let entries: Vec<BytesValue> =
            (first..first + count as u64).map(|i| entry(i, 1, &entry_data(i, size))).collect();
        let mut batch = LogBatch::with_capacity(count);
        batch.add_entries::<Entries>(region(writer), &entries).map_err(err)?;
        self.engine.write(&mut batch, self.sync).map_err(err)?;
        Ok(())
    }

    fn read(&self, lo: u64, hi: u64) -> BenchResult<u64> {
        let mut out = Vec::with_capacity((hi - lo) as usize);
        self.engine.fetch_entries_to::<Entries>(region(0), lo, hi, None, &mut out).map_err(err)?;
        if out.len() as u64 != hi - lo {
            return Err(format!("raft-engine read {} entries of [{lo}, {hi})", out.len()).into());
        }
        Ok(out.iter().map(|e| (e.value.len() - ENTRY_HEADER_BYTES) as u64).sum())
    }

    fn last_index(&self) -> u64 {
        self.engine.last_index(region(0)).unwrap_or(0)
    }

    fn sync(&self) -> BenchResult<()> {
        self.engine.sync().map_err(err)
    }

    fn compact_behind(&self, keep: u64) -> BenchResult<()> {
        let first = self.engine.first_index(region(0)).unwrap_or(1);
        let last = self.engine.last_index(region(0)).unwrap_or(0);
        if last + 1 - first > 2 * keep {
            // compact_to(i) keeps i and after; the expired files are then purged, and recycled
            // (`enable_log_recycle`, on by default with format version 2).
            self.engine.compact_to(region(0), last - keep + 1);
            self.engine.purge_expired_files().map_err(err)?;
        }
        Ok(())
    }

    fn index_memory(&self) -> Option<(usize, usize)> {
        None
    }

    fn close(self: Box<Self>) -> BenchResult<()> {
        drop(self);
        Ok(())
    }
}

/// raft-engine hosting many groups, one region per group.
pub struct RaftEngineGroups {
    engine: Engine,
    sync: bool,
}

/// Opens raft-engine in `dir` with its default configuration but the file size (raftwal's
/// default segment size), for the multi-group workloads.
pub fn open_groups(dir: &Path, synced: bool) -> BenchResult<Box<dyn Groups>> {
    let config = Config {
        dir: dir.to_str().ok_or("the directory's name is not UTF-8")?.to_string(),
        target_file_size: ReadableSize(Sizing::default().segment_bytes),
        ..Default::default()
    };
    let engine = Engine::open(config).map_err(err)?;
    Ok(Box::new(RaftEngineGroups { engine, sync: synced }))
}

/// Adds `group`'s hard state to `batch`, as the raftwal side writes it (term, vote, commit).
fn put_hard_state(batch: &mut LogBatch, group: u64, hs: &raftwal::HardState) -> BenchResult<()> {
    let mut value = Vec::with_capacity(24);
    for field in [hs.term, hs.vote, hs.commit] {
        value.extend_from_slice(&field.to_le_bytes());
    }
    let mut message = BytesValue::new();
    message.value = value;
    batch.put_message(group, HARD_STATE_KEY.to_vec(), &message).map_err(err)
}

impl Groups for RaftEngineGroups {
    fn write(&self, items: &[(u64, u64)], new_terms: bool) -> BenchResult<()> {
        let mut batch = LogBatch::with_capacity(items.len());
        for &(group, index) in items {
            let entries = [entry(index, 1, &group_entry_data(group, index))];
            batch.add_entries::<Entries>(group, &entries).map_err(err)?;
            put_hard_state(&mut batch, group, &hard_state_of(index, new_terms))?;
        }
        self.engine.write(&mut batch, self.sync).map_err(err)?;
        Ok(())
    }

    fn elect(&self, groups: &[u64]) -> BenchResult<()> {
        let mut batch = LogBatch::with_capacity(groups.len());
        for &group in groups {
            put_hard_state(&mut batch, group, &hard_state(0))?;
        }
        self.engine.write(&mut batch, self.sync).map_err(err)?;
        Ok(())
    }

    fn sync(&self) -> BenchResult<()> {
        self.engine.sync().map_err(err)
    }

    fn last_index(&self, group: u64) -> BenchResult<u64> {
        Ok(self.engine.last_index(group).unwrap_or(0))
    }

    fn index_memory(&self) -> Option<(usize, usize)> {
        None
    }

    fn bytes_written(&self) -> Option<u64> {
        None
    }

    fn close(self: Box<Self>) -> BenchResult<()> {
        drop(self);
        Ok(())
    }
}
