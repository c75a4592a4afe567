//! What the workloads run against: a log engine behind one small interface, so that raftwal and
//! (with the `raft-engine` feature) raft-engine run the same code.

use std::path::Path;
use std::sync::Mutex;

use raftwal::{Entry, Storage, SyncPolicy, WalOptions, WalStorage};

use super::BenchResult;
use super::workloads::entry_data;

/// How a workload uses the log it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One writer; every append is durable on return.
    Synced,
    /// Several writers share the log; every append is durable on return, and concurrent appends
    /// share syncs (group commit).
    Concurrent,
    /// Bulk load: appends are not synced one by one; `sync` makes them durable.
    Unsynced,
}

/// A log engine under test. Index numbers start at 1 in every log.
pub trait Target: Send + Sync {
    /// Appends `count` entries of `size` bytes (`entry_data`) after the last one, as one write;
    /// durable on return unless the target was opened `Unsynced`. `writer` names the calling
    /// thread.
    fn append(&self, writer: usize, count: usize, size: usize) -> BenchResult<()>;
    /// Reads entries `[lo, hi)` written by writer 0; returns the payload bytes read.
    fn read(&self, lo: u64, hi: u64) -> BenchResult<u64>;
    /// The last index writer 0 appended.
    fn last_index(&self) -> u64;
    /// Compacts writer 0's log to its last `keep` entries once it holds more than twice as
    /// many, as a node in steady state compacts behind its applied index; the engine then
    /// releases (and recycles) what no entry needs.
    fn compact_behind(&self, keep: u64) -> BenchResult<()>;
    /// Makes every append durable.
    fn sync(&self) -> BenchResult<()>;
    /// Heap bytes of the index and the entries it covers, where the engine reports them.
    fn index_memory(&self) -> Option<(usize, usize)>;
    /// Closes the log cleanly.
    fn close(self: Box<Self>) -> BenchResult<()>;
}

/// Opens a target in a directory.
pub type Opener = fn(&Path, Mode, Sizing) -> BenchResult<Box<dyn Target>>;

/// Sizes a workload asks of the log.
#[derive(Clone, Copy, Debug)]
pub struct Sizing {
    /// Size of a segment (or log file).
    pub segment_bytes: u64,
}

impl Default for Sizing {
    fn default() -> Self {
        Sizing { segment_bytes: WalOptions::default().segment_size_bytes }
    }
}

/// raftwal's `WalStorage` with the default options but the segment size.
pub struct Raftwal {
    storage: WalStorage,
    // The next index; held while an append is written (not while it is synced), so that
    // concurrent writers extend one log without gaps.
    next: Mutex<u64>,
    separate_sync: bool,
}

/// Opens raftwal in `dir`.
pub fn open_raftwal(dir: &Path, mode: Mode, sizing: Sizing) -> BenchResult<Box<dyn Target>> {
    let sync_policy = match mode {
        Mode::Synced => SyncPolicy::Always,
        // Appends under the index lock are handed to the kernel only; each writer then calls
        // `sync`, which joins or leads a group commit.
        Mode::Concurrent | Mode::Unsynced => SyncPolicy::Never,
    };
    let options =
        WalOptions { sync_policy, segment_size_bytes: sizing.segment_bytes, ..Default::default() };
    let storage = WalStorage::open(dir, options)?;
    let next = storage.last_index()? + 1;
    Ok(Box::new(Raftwal {
        storage,
        next: Mutex::new(next),
        separate_sync: mode == Mode::Concurrent,
    }))
}

impl Target for Raftwal {
    fn append(&self, _writer: usize, count: usize, size: usize) -> BenchResult<()> {
        {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let first = *next;
            let entries: Vec<Entry> = (first..first + count as u64)
                .map(|i| Entry::new(i, 1, entry_data(i, size)))
                .collect();
            self.storage.append(&entries)?;
            *next += count as u64;
        }
        if self.separate_sync {
            self.storage.sync()?;
        }
        Ok(())
    }

    fn read(&self, lo: u64, hi: u64) -> BenchResult<u64> {
        let entries = self.storage.entries(lo, hi, u64::MAX)?;
        if entries.len() as u64 != hi - lo {
            return Err(format!("read {} entries of [{lo}, {hi})", entries.len()).into());
        }
        Ok(entries.iter().map(|e| e.data.len() as u64).sum())
    }

    fn last_index(&self) -> u64 {
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) - 1
    }

    fn sync(&self) -> BenchResult<()> {
        Ok(self.storage.sync()?)
    }

    fn compact_behind(&self, keep: u64) -> BenchResult<()> {
        let (first, last) = (self.storage.first_index()?, self.storage.last_index()?);
        if last + 1 - first > 2 * keep {
            // Releases the segments before the new first entry (purge runs after compaction).
            self.storage.compact(last - keep)?;
        }
        Ok(())
    }

    fn index_memory(&self) -> Option<(usize, usize)> {
        Some(self.storage.wal().index_memory())
    }

    fn close(self: Box<Self>) -> BenchResult<()> {
        Ok(self.storage.close()?)
    }
}
