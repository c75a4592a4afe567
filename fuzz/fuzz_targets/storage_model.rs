//! WalStorage and MemoryStorage driven with the same calls answer alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::{StorageCase, check_storage_model};
use raftwal::io::LimitedAlloc;

/// A single allocation above 256 MiB aborts the run: a finding (docs/fuzzing.md).
#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc::new(256 << 20);

fuzz_target!(|case: StorageCase| check_storage_model(&case));
