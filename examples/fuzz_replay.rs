//! Runs one fuzz input through its target's check on stable Rust, printing the decoded input
//! first: `cargo run --example fuzz_replay --features testing -- <target> <file>`.

use raftwal::fuzzing::{
    EngineCase, RecoveryCase, SnapshotRecoveryCase, StorageCase, check_decode,
    check_engine_recovery, check_raft_message, check_recovery, check_repair, check_snapshot_file,
    check_snapshot_recovery, check_storage_model,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, path] = args.as_slice() else {
        eprintln!(
            "usage: fuzz_replay \
             <recovery|storage_model|decode|snapshot_file|snapshot_recovery|raft_message|\
             engine_recovery|repair> <file>"
        );
        std::process::exit(2);
    };
    let bytes = std::fs::read(path).expect("the input file reads");
    match target.as_str() {
        "recovery" => {
            let case = RecoveryCase::from_fuzz_input(&bytes).expect("the input decodes");
            println!("sync_never: {}", case.sync_never);
            for (step, op) in case.ops.iter().enumerate() {
                println!("{step}: {op:?}");
            }
            check_recovery(&case);
        }
        "storage_model" => {
            let case = StorageCase::from_fuzz_input(&bytes).expect("the input decodes");
            for (step, op) in case.ops.iter().enumerate() {
                println!("{step}: {op:?}");
            }
            check_storage_model(&case);
        }
        "snapshot_recovery" => {
            let case = SnapshotRecoveryCase::from_fuzz_input(&bytes).expect("the input decodes");
            println!("zstd: {}, close: {}", case.zstd, case.close);
            for (step, op) in case.setup.iter().enumerate() {
                println!("setup {step}: {op:?}");
            }
            for (step, edit) in case.edits.iter().enumerate() {
                println!("edit {step}: {edit:?}");
            }
            check_snapshot_recovery(&case);
        }
        "engine_recovery" => {
            let case = EngineCase::from_fuzz_input(&bytes).expect("the input decodes");
            println!("sync_never: {}", case.sync_never);
            for (step, op) in case.ops.iter().enumerate() {
                println!("{step}: {op:?}");
            }
            check_engine_recovery(&case);
        }
        "repair" => check_repair(&bytes),
        "raft_message" => check_raft_message(&bytes),
        "decode" => check_decode(&bytes),
        "snapshot_file" => check_snapshot_file(&bytes),
        other => panic!("unknown target {other}"),
    }
    println!("no finding");
}
