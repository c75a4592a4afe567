//! WalStorage and MemoryStorage driven with the same calls answer alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::{StorageCase, check_storage_model};

fuzz_target!(|case: StorageCase| check_storage_model(&case));
