//! Arbitrary bytes as WAL segment files: open recovers a consistent prefix or refuses with
//! Corruption, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::check_decode;

fuzz_target!(|bytes: &[u8]| check_decode(bytes));
