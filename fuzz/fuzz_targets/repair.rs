//! A log built from a seed, damaged by the input's bit flips, opened Repairable: `Ok` or
//! `Corruption`, never a panic; after one flip into a closed log, nothing of term, vote or the
//! entries is lost without a repair state that covers it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::check_repair;
use raftwal::io::LimitedAlloc;

/// A single allocation above 256 MiB aborts the run: a finding (docs/fuzzing.md).
#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc::new(256 << 20);

fuzz_target!(|data: &[u8]| check_repair(data));
