//! Runs one fuzz input through its target's check on stable Rust, printing the decoded input
//! first: `cargo run --example fuzz_replay --features testing -- <target> <file>`.

use raftwal::fuzzing::{
    RecoveryCase, StorageCase, check_decode, check_recovery, check_snapshot_file,
    check_storage_model,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, path] = args.as_slice() else {
        eprintln!("usage: fuzz_replay <recovery|storage_model|decode|snapshot_file> <file>");
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
        "decode" => check_decode(&bytes),
        "snapshot_file" => check_snapshot_file(&bytes),
        other => panic!("unknown target {other}"),
    }
    println!("no finding");
}
