//! Arbitrary bytes through the Raft wire decoders, and structured messages through encode and
//! decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::check_raft_message;
use raftwal::io::LimitedAlloc;

/// A single allocation above 256 MiB aborts the run: a finding (docs/fuzzing.md).
#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc::new(256 << 20);

fuzz_target!(|bytes: &[u8]| check_raft_message(bytes));
