//! The seed corpus: real segment and snapshot files for the byte-level targets, and inputs that
//! decode into varied operation sequences for the structured ones.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::fuzzing::ops::{FaultChoice, RecoveryOp, StorageOp};
use crate::fuzzing::storage::{RecoveryCase, StorageCase};
use crate::io::{CrashFs, Fs};
use crate::options::WalOptions;
use crate::snapshot::SnapshotStore;
use crate::storage::WalStorage;
use crate::types::{ConfState, Entry, HardState, SnapshotMetadata};

/// One file of the seed corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedFile {
    /// The fuzz target (the corpus directory) it seeds.
    pub target: &'static str,
    /// The file name.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

/// The seed corpus of every target, generated from real files and deterministic choices (the
/// same on every run). `examples/fuzz_seeds.rs` writes it to `fuzz/corpus/`.
pub fn seed_corpus() -> Vec<SeedFile> {
    let mut seeds = Vec::new();
    seeds.extend(decode_seeds());
    seeds.extend(snapshot_seeds());
    let mut rng = 0x5EED_u64;
    for i in 0..8 {
        let ops: Vec<StorageOp> = (0..32).map(|_| random_storage_op(&mut rng)).collect();
        let bytes = encode_storage_case(&StorageCase { ops });
        seeds.push(SeedFile { target: "storage_model", name: format!("random-{i:02}"), bytes });
    }
    for i in 0..8 {
        let case = RecoveryCase {
            sync_never: i % 2 == 1,
            ops: (0..32).map(|_| random_recovery_op(&mut rng, i >= 4)).collect(),
        };
        let bytes = encode_recovery_case(&case);
        seeds.push(SeedFile { target: "recovery", name: format!("random-{i:02}"), bytes });
    }
    seeds
}

/// SplitMix64, for reproducible seeds.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A storage operation, mostly saves (so the log grows and rolls over segments).
fn random_storage_op(rng: &mut u64) -> StorageOp {
    let r = next(rng);
    let byte = |shift: u32| (r >> shift) as u8;
    match r % 16 {
        0..=8 => StorageOp::Save {
            back: byte(8) % 3,
            len: 1 + byte(16) % 8,
            new_term: byte(24) % 5 == 0,
            size: (r >> 32) as u16,
            hard_state: (byte(48) % 2 == 0).then_some((byte(50), byte(52), byte(54))),
        },
        9 | 10 => StorageOp::Compact { back: byte(8) },
        11 | 12 => StorageOp::CreateSnapshot {
            back: byte(8),
            voters: (byte(16) % 2 == 0).then_some(byte(24)),
            size: (r >> 32) as u16,
        },
        13 => {
            StorageOp::ApplySnapshot { ahead: byte(8), term_bump: byte(16), size: (r >> 32) as u16 }
        }
        _ => StorageOp::Reopen,
    }
}

/// A recovery operation: storage operations, syncs, crashes and (with `faults`) faults.
fn random_recovery_op(rng: &mut u64, faults: bool) -> RecoveryOp {
    let r = next(rng);
    match r % 20 {
        0 | 1 => RecoveryOp::Sync,
        2 => RecoveryOp::Crash { seed: next(rng) },
        3 | 4 if faults => {
            let kinds = [
                FaultChoice::WriteEio,
                FaultChoice::SyncEio,
                FaultChoice::NoSpace,
                FaultChoice::ShortWrite,
                FaultChoice::Halt,
            ];
            RecoveryOp::Fault {
                after: (r >> 8) as u8,
                kind: kinds[(r >> 16) as usize % kinds.len()],
            }
        }
        _ => RecoveryOp::Storage(random_storage_op(rng)),
    }
}

// ---- Encoding inputs in `arbitrary`'s format ---------------------------------------------------
//
// libFuzzer hands a target bytes, which `arbitrary` decodes: integers little-endian, a bool as
// the low bit of a byte, an `Option` as a bool then the value, an enum variant as a u32 `t`
// choosing variant `(t * variants) >> 32`, and the operation list (the last field, decoded with
// `arbitrary_take_rest`) as elements each preceded by a "go on" bool. The corpus replay test
// checks this encoder against `arbitrary` itself.

fn put_variant(out: &mut Vec<u8>, index: u64, count: u64) {
    let tag = u32::try_from((index << 32).div_ceil(count)).expect("index below count");
    out.extend_from_slice(&tag.to_le_bytes());
}

fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

fn encode_storage_op(out: &mut Vec<u8>, op: &StorageOp) {
    const VARIANTS: u64 = 5;
    match op {
        StorageOp::Save { back, len, new_term, size, hard_state } => {
            put_variant(out, 0, VARIANTS);
            out.extend_from_slice(&[*back, *len]);
            put_bool(out, *new_term);
            out.extend_from_slice(&size.to_le_bytes());
            put_bool(out, hard_state.is_some());
            if let Some((a, b, c)) = hard_state {
                out.extend_from_slice(&[*a, *b, *c]);
            }
        }
        StorageOp::Compact { back } => {
            put_variant(out, 1, VARIANTS);
            out.push(*back);
        }
        StorageOp::CreateSnapshot { back, voters, size } => {
            put_variant(out, 2, VARIANTS);
            out.push(*back);
            put_bool(out, voters.is_some());
            out.extend(voters.iter());
            out.extend_from_slice(&size.to_le_bytes());
        }
        StorageOp::ApplySnapshot { ahead, term_bump, size } => {
            put_variant(out, 3, VARIANTS);
            out.extend_from_slice(&[*ahead, *term_bump]);
            out.extend_from_slice(&size.to_le_bytes());
        }
        StorageOp::Reopen => put_variant(out, 4, VARIANTS),
    }
}

fn encode_recovery_op(out: &mut Vec<u8>, op: &RecoveryOp) {
    const VARIANTS: u64 = 4;
    match op {
        RecoveryOp::Storage(op) => {
            put_variant(out, 0, VARIANTS);
            encode_storage_op(out, op);
        }
        RecoveryOp::Sync => put_variant(out, 1, VARIANTS),
        RecoveryOp::Crash { seed } => {
            put_variant(out, 2, VARIANTS);
            out.extend_from_slice(&seed.to_le_bytes());
        }
        RecoveryOp::Fault { after, kind } => {
            put_variant(out, 3, VARIANTS);
            out.push(*after);
            put_variant(out, *kind as u64, 5);
        }
    }
}

/// The fuzz input that decodes into `case`.
pub fn encode_storage_case(case: &StorageCase) -> Vec<u8> {
    let mut out = Vec::new();
    for op in &case.ops {
        put_bool(&mut out, true);
        encode_storage_op(&mut out, op);
    }
    out
}

/// The fuzz input that decodes into `case`.
pub fn encode_recovery_case(case: &RecoveryCase) -> Vec<u8> {
    let mut out = Vec::new();
    put_bool(&mut out, case.sync_never);
    for op in &case.ops {
        put_bool(&mut out, true);
        encode_recovery_op(&mut out, op);
    }
    out
}

fn entries(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last)
        .map(|i| {
            Entry::new(i, term, format!("entry {i} of term {term}").repeat(2 + i as usize % 5))
        })
        .collect()
}

/// The files of `fs` under `dir` with `suffix`, trailing zeros (preallocated space) dropped.
fn files(fs: &CrashFs, dir: &str, suffix: &str) -> Vec<Vec<u8>> {
    fs.list_all()
        .into_iter()
        .filter(|p| p.starts_with(dir) && p.to_string_lossy().ends_with(suffix))
        .filter_map(|p| fs.read_file(&p))
        .map(|mut bytes| {
            let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            bytes.truncate(written.next_multiple_of(8));
            bytes
        })
        .collect()
}

/// Segment files of real logs: one segment, a directory of three concatenated, a log after
/// compaction and a snapshot, and a cleanly closed one.
fn decode_seeds() -> Vec<SeedFile> {
    let options = WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: super::DECODE_MAX_RECORD_BYTES,
        prepare_in_background: false,
        snapshot_compression_level: 1,
        ..WalOptions::default()
    };
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let storage = WalStorage::open_with_fs(shared, Path::new("/node"), options)
        .expect("a fresh storage opens");
    let mut seeds = Vec::new();
    let mut push = |name: &str, bytes: Vec<u8>| {
        seeds.push(SeedFile { target: "decode", name: name.to_string(), bytes });
    };
    storage.save(Some(&HardState { term: 1, vote: 1, commit: 2 }), &entries(1, 4, 1)).unwrap();
    push("one-segment", files(&fs, "/node/wal", ".wal").concat());
    for round in 0..12u64 {
        let first = 5 + round * 8;
        let term = 1 + round / 5;
        storage
            .save(
                Some(&HardState { term, vote: 1, commit: first }),
                &entries(first, first + 7, term),
            )
            .unwrap();
    }
    let all = files(&fs, "/node/wal", ".wal");
    assert!(all.len() >= 3, "the seed log spans several segments");
    push("three-segments", all[..3].concat());
    storage.create_snapshot(60, None, Bytes::from_static(b"state at 60")).unwrap();
    storage.compact(60).unwrap();
    storage.save(None, &entries(101, 103, 3)).unwrap();
    let compacted = files(&fs, "/node/wal", ".wal");
    push("after-compaction", compacted[compacted.len().saturating_sub(3)..].concat());
    storage.close().unwrap();
    let closed = files(&fs, "/node/wal", ".wal");
    push("closed-last-segment", closed.last().cloned().unwrap_or_default());
    seeds
}

/// Snapshot files: stored plain and zstd-compressed, empty and not, with a joint membership.
fn snapshot_seeds() -> Vec<SeedFile> {
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let store = SnapshotStore::open(shared, Path::new("/node/snap")).expect("the store opens");
    let joint = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        voters_outgoing: vec![1, 2, 5],
        learners_next: vec![5],
        auto_leave: true,
    };
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 97) as u8).collect();
    let cases: [(&str, i32, &[u8], ConfState); 4] = [
        ("plain-empty", 0, b"", ConfState::default()),
        ("plain", 0, b"the state machine at index 7", ConfState::default()),
        ("zstd", 3, &data, joint.clone()),
        ("zstd-small", 1, b"tiny", joint),
    ];
    let mut seeds = Vec::new();
    for (index, (name, level, bytes, conf_state)) in cases.into_iter().enumerate() {
        let metadata = SnapshotMetadata { index: 7 + index as u64, term: 2, conf_state };
        let mut writer = store.begin(metadata, level).expect("begin");
        writer.write_all(bytes).expect("write");
        let file = writer.finish().expect("finish");
        let bytes = fs.read_file(&Path::new("/node/snap").join(file)).expect("written");
        seeds.push(SeedFile { target: "snapshot_file", name: name.to_string(), bytes });
    }
    seeds
}
