//! A log with snapshots, its snapshot directory tampered with while closed, opened again:
//! a verified snapshot or Corruption, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::{SnapshotRecoveryCase, check_snapshot_recovery};
use raftwal::io::LimitedAlloc;

/// A single allocation above 256 MiB aborts the run: a finding (docs/fuzzing.md).
#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc::new(256 << 20);

fuzz_target!(|case: SnapshotRecoveryCase| check_snapshot_recovery(&case));
