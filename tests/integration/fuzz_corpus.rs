//! Replays every committed fuzz corpus file through the check its target runs, on stable Rust,
//! so that a regression a fuzzer once found (or a seed's property) is caught by `cargo test`.

use std::path::{Path, PathBuf};

use raftwal::fuzzing::{
    RecoveryCase, SnapshotRecoveryCase, StorageCase, check_decode, check_raft_message,
    check_recovery, check_repair, check_snapshot_file, check_snapshot_recovery,
    check_storage_model, encode_recovery_case, encode_snapshot_recovery_case, encode_storage_case,
    seed_corpus,
};
use raftwal::raft::message::{ConfChange, ConfChangeV2, Message};

/// Every fuzz target and its corpus directory name.
const TARGETS: [&str; 7] = [
    "decode",
    "recovery",
    "snapshot_file",
    "storage_model",
    "snapshot_recovery",
    "raft_message",
    "repair",
];

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .filter(|path| !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

/// Runs one input through `target`'s check; false when a structured input does not decode
/// (libFuzzer skips those too).
fn run(target: &str, bytes: &[u8]) -> bool {
    match target {
        "decode" => check_decode(bytes),
        "snapshot_file" => check_snapshot_file(bytes),
        "recovery" => match RecoveryCase::from_fuzz_input(bytes) {
            Some(case) => check_recovery(&case),
            None => return false,
        },
        "storage_model" => match StorageCase::from_fuzz_input(bytes) {
            Some(case) => check_storage_model(&case),
            None => return false,
        },
        "snapshot_recovery" => match SnapshotRecoveryCase::from_fuzz_input(bytes) {
            Some(case) => check_snapshot_recovery(&case),
            None => return false,
        },
        "raft_message" => check_raft_message(bytes),
        "repair" => check_repair(bytes),
        other => panic!("unknown fuzz target {other}"),
    }
    true
}

#[test]
fn every_corpus_file_passes_its_targets_check() {
    let mut total = 0;
    for target in TARGETS {
        let files = corpus_files(target);
        assert!(!files.is_empty(), "the corpus of {target} is empty");
        let mut ran = 0;
        for path in &files {
            let bytes = std::fs::read(path).unwrap();
            let result = std::panic::catch_unwind(|| run(target, &bytes));
            match result {
                Ok(decoded) => ran += usize::from(decoded),
                Err(_) => panic!("{target}: corpus file {} fails its check", path.display()),
            }
        }
        assert!(ran > 0, "no corpus file of {target} decodes into an input");
        println!("fuzz corpus replayed: {target}: {ran} of {} files ran, no finding", files.len());
        total += ran;
    }
    println!("fuzz corpus replayed: {total} inputs over {} targets", TARGETS.len());
}

#[test]
fn the_generated_seeds_are_committed_and_exercise_their_targets() {
    let seeds = seed_corpus();
    for target in TARGETS {
        let committed = corpus_files(target);
        let generated: Vec<_> = seeds.iter().filter(|s| s.target == target).collect();
        assert!(generated.len() >= 4, "{target} has at least four seeds");
        for seed in generated {
            let path = committed.iter().find(|p| p.file_name().is_some_and(|n| *n == *seed.name));
            assert!(path.is_some(), "seed {target}/{} is committed", seed.name);
            assert!(run(target, &seed.bytes), "seed {target}/{} decodes", seed.name);
        }
    }
    // The byte-level seeds are real files: each opens and holds data.
    for seed in seeds.iter().filter(|s| s.target == "decode") {
        assert!(seed.bytes.starts_with(b"RAFTWAL\x01"), "{} is a segment", seed.name);
    }
    for seed in seeds.iter().filter(|s| s.target == "raft_message") {
        let bytes = &seed.bytes;
        let decodes = Message::decode(bytes).is_ok()
            || ConfChange::decode(bytes).is_ok()
            || ConfChangeV2::decode(bytes).is_ok();
        assert!(decodes, "{} is an encoded message or membership change", seed.name);
    }
    for seed in seeds.iter().filter(|s| s.target == "snapshot_file") {
        assert!(seed.bytes.starts_with(b"RWALSNP\x01"), "{} is a snapshot file", seed.name);
    }
    let total: usize = seeds.iter().map(|s| s.bytes.len()).sum();
    assert!(total < 256 << 10, "the seed corpus stays small ({total} bytes)");
}

#[test]
fn structured_seeds_decode_with_arbitrary_into_the_operations_they_encode() {
    let mut checked = 0;
    for seed in seed_corpus() {
        match seed.target {
            "recovery" => {
                let case = RecoveryCase::from_fuzz_input(&seed.bytes).expect("decodes");
                assert_eq!(case.ops.len(), 32, "{}: every operation decodes", seed.name);
                assert_eq!(encode_recovery_case(&case), seed.bytes, "{} round-trips", seed.name);
            }
            "storage_model" => {
                let case = StorageCase::from_fuzz_input(&seed.bytes).expect("decodes");
                assert_eq!(case.ops.len(), 32, "{}: every operation decodes", seed.name);
                assert_eq!(encode_storage_case(&case), seed.bytes, "{} round-trips", seed.name);
            }
            "snapshot_recovery" => {
                let case = SnapshotRecoveryCase::from_fuzz_input(&seed.bytes).expect("decodes");
                assert!(!case.setup.is_empty(), "{}: the setup decodes", seed.name);
                let again = encode_snapshot_recovery_case(&case);
                assert_eq!(again, seed.bytes, "{} round-trips", seed.name);
            }
            _ => continue,
        }
        checked += 1;
    }
    assert_eq!(
        checked, 21,
        "eight seeds for recovery and storage_model, five for snapshot_recovery"
    );
}
