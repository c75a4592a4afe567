//! The checks raftwal's fuzz targets run (behind the `testing` feature).
//!
//! Each check takes an input a fuzzer can produce (raw bytes, or operations decoded with
//! [`arbitrary`]) and panics on a finding. The same functions serve two callers: the libFuzzer
//! targets in `fuzz/` (nightly, `cargo fuzz run <target>`) and the corpus replay test, which runs
//! every committed corpus file through them on stable Rust (`engine_recovery`'s corpus is replayed
//! by the engine tests).
//!
//! | target          | check                                   | property                          |
//! |-----------------|-----------------------------------------|-----------------------------------|
//! | `recovery`      | [`check_recovery`]                      | crashes and faults lose nothing acknowledged; recovered answers equal the model's for an allowed prefix |
//! | `decode`        | [`check_decode`], [`check_decode_dir`]  | any segment bytes open to a consistent prefix or `Corruption`, never a panic |
//! | `snapshot_file` | [`check_snapshot_file`]                 | any snapshot file reads back only if its CRCs hold, never a panic |
//! | `storage_model` | [`check_storage_model`]                 | WalStorage answers exactly like [`crate::MemoryStorage`] |
//! | `snapshot_recovery` | [`check_snapshot_recovery`]         | a tampered snapshot directory opens to a verified snapshot or `Corruption`, never a panic; an intact marked snapshot is recovered as it was |
//! | `engine_recovery` | [`check_engine_recovery`]             | groups of one LogEngine changed by batches, snapshots and removals under faults, power cuts and reopens answer like their models in an allowed state: nothing acknowledged lost, each batch whole or absent across groups |
//! | `raft_message`  | [`check_raft_message`]                  | the Raft wire decoders never panic, accept only canonical bytes, and round-trip structured messages |
//! | `repair`        | [`check_repair`]                        | bit flips in a log open `Repairable` to `Ok` or `Corruption`, never a panic; after one flip into a closed log, term and vote are exact, entries are as written, and the repair state covers every entry lost |
//!
//! Inputs are bounded (operations, entry and snapshot sizes) so that one execution stays in the
//! low milliseconds. The model of the `Storage` contract is [`crate::MemoryStorage`]: WalStorage is
//! driven with the same calls and every answer compared.
//!
//! Allocation bounds are not measured here: the fuzz targets run under
//! [`crate::io::LimitedAlloc`] as their global allocator, which turns any single allocation above
//! 256 MiB into a finding (an abort), without the sanitizer libFuzzer's `-malloc_limit_mb` needs.

mod compare;
mod decode;
mod engine;
mod message;
mod ops;
mod repair;
mod seeds;
mod snapshot;
mod storage;

pub use compare::{Outcome, answers_like, holds_like, same_answers, same_holdings, same_state};
pub use decode::{
    DECODE_MAX_RECORD_BYTES, check_decode, check_decode_dir, check_snapshot_file, rechain,
};
pub use engine::{
    BatchItem, EngineCase, EngineOp, MAX_ENGINE_OPS, check_engine_recovery, engine_options,
};
pub use message::check_raft_message;
pub use ops::{FaultChoice, RecoveryOp, StorageOp};
pub use repair::{MAX_FLIPS, check_repair};
pub use seeds::{
    SeedFile, encode_recovery_case, encode_snapshot_recovery_case, encode_storage_case, seed_corpus,
};
pub use snapshot::{Edit, Place, SetupOp, SnapshotRecoveryCase, check_snapshot_recovery};
pub use storage::{
    MAX_MODEL_OPS, MAX_OPS, RecoveryCase, StorageCase, check_recovery, check_storage_model,
    recovery_options,
};

/// How much a check prints while it runs, from `RAFTWAL_FUZZ_TRACE`: unset, nothing; `ops`,
/// every step and every file system operation; anything else, every step. For reading a
/// finding with the `fuzz_replay` example; the fuzz targets run with it unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trace {
    Off,
    Steps,
    Ops,
}

fn trace_level() -> Trace {
    match std::env::var_os("RAFTWAL_FUZZ_TRACE") {
        None => Trace::Off,
        Some(value) if value == "ops" => Trace::Ops,
        Some(_) => Trace::Steps,
    }
}

/// Prints every operation `fs` runs (and every handle dropped) to stderr, with its number.
fn trace_operations(fs: &crate::io::CrashFs) {
    let counter = fs.clone();
    fs.set_hook(Some(std::sync::Arc::new(move |event: &crate::io::OpEvent<'_>| {
        // The number the operation is about to take (a close takes none).
        let at = counter.op_count();
        let path = event.path.map(std::path::Path::display);
        let to = event.to.map(std::path::Path::display);
        match (path, to) {
            (Some(path), Some(to)) => eprintln!("  op {at}: {:?} {path} -> {to}", event.kind),
            (Some(path), None) => eprintln!("  op {at}: {:?} {path}", event.kind),
            _ => eprintln!("  op {at}: {:?}", event.kind),
        }
        Ok(())
    })));
}
