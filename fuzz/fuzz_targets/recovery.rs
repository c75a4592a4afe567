//! Operations with power cuts and injected faults on WalStorage over CrashFs: after every
//! restart the storage answers like MemoryStorage in an allowed state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::{RecoveryCase, check_recovery};

fuzz_target!(|case: RecoveryCase| check_recovery(&case));
