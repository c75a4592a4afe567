//! Arbitrary bytes as a snapshot file: read back only if its CRCs hold, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::check_snapshot_file;

fuzz_target!(|bytes: &[u8]| check_snapshot_file(bytes));
