//! Arbitrary bytes through the Raft wire decoders, and structured messages through encode and
//! decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::check_raft_message;

fuzz_target!(|bytes: &[u8]| check_raft_message(bytes));
