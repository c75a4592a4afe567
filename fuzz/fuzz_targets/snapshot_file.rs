//! Arbitrary bytes as a snapshot file: read back only if its CRCs hold, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::check_snapshot_file;
use raftwal::io::LimitedAlloc;

/// A single allocation above 256 MiB aborts the run: a finding (docs/fuzzing.md).
#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc::new(256 << 20);

fuzz_target!(|bytes: &[u8]| check_snapshot_file(bytes));
