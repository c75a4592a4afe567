//! Many groups of one LogEngine, written in batches, crashed and reopened, answer like their
//! models: nothing acknowledged lost, every batch whole or absent across its groups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftwal::fuzzing::{EngineCase, check_engine_recovery};
use raftwal::io::LimitedAlloc;

/// A single allocation above 256 MiB aborts the run: a finding (docs/fuzzing.md).
#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc::new(256 << 20);

fuzz_target!(|case: EngineCase| check_engine_recovery(&case));
