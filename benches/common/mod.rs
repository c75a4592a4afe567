//! Helpers the criterion benches share: a log in a temp directory and appends that keep its
//! indices contiguous.

#![allow(dead_code)] // Each bench uses a part.

pub mod cycle;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use raftwal::{Entry, Storage, SyncPolicy, WalOptions, WalStorage};

/// Short measurements: fdatasync-bound benches are slow per iteration, and `cargo bench` on all
/// of them should finish in a few minutes.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

/// A temp directory in the current directory, so the bench measures the file system it is run on.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix(".raftwal-bench-").tempdir_in(".").expect("create a temp dir")
}

/// A payload of `size` bytes.
pub fn payload(size: usize) -> Bytes {
    Bytes::from(vec![0xA5u8; size])
}

/// A log and the next index to append.
pub struct Log {
    /// The storage.
    pub storage: WalStorage,
    next: Mutex<u64>,
}

impl Log {
    /// Opens the storage in `dir` with `sync_policy` and segments of `segment_size_bytes`.
    pub fn open(dir: &Path, sync_policy: SyncPolicy, segment_size_bytes: u64) -> Log {
        let options = WalOptions { sync_policy, segment_size_bytes, ..Default::default() };
        let storage = WalStorage::open(dir, options).expect("open the log");
        let next = storage.last_index().expect("last index") + 1;
        Log { storage, next: Mutex::new(next) }
    }

    /// Appends `count` entries of `payload` after the last one (durable per the sync policy).
    pub fn append(&self, count: usize, payload: &Bytes) {
        let mut next = self.next.lock().unwrap();
        let first = *next;
        let entries: Vec<Entry> =
            (first..first + count as u64).map(|i| Entry::new(i, 1, payload.clone())).collect();
        self.storage.append(&entries).expect("append");
        *next += count as u64;
    }

    /// The last index appended.
    pub fn last_index(&self) -> u64 {
        *self.next.lock().unwrap() - 1
    }

    /// Appends about `bytes` of 1 KiB entries in batches of 1024, then syncs.
    pub fn fill(&self, bytes: u64) {
        let data = payload(1024);
        let batches = bytes.div_ceil(1024 * 1024).max(1);
        for _ in 0..batches {
            self.append(1024, &data);
        }
        self.storage.sync().expect("sync");
    }
}
