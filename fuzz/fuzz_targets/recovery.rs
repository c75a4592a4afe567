//! Operations with power cuts and injected faults on WalStorage over CrashFs: after every
//! restart the storage answers like MemoryStorage in an allowed state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::{RecoveryCase, check_recovery};
use raftwal::io::LimitedAlloc;

/// A single allocation above 256 MiB aborts the run: a finding (docs/fuzzing.md).
#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc::new(256 << 20);

fuzz_target!(|case: RecoveryCase| check_recovery(&case));
