//! A log with snapshots, its snapshot directory tampered with while closed, opened again:
//! a verified snapshot or Corruption, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::{SnapshotRecoveryCase, check_snapshot_recovery};

fuzz_target!(|case: SnapshotRecoveryCase| check_snapshot_recovery(&case));
