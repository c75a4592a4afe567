//! The seed corpus: real segment and snapshot files for the byte-level targets, and inputs that
//! decode into varied operation sequences for the structured ones.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::fuzzing::ops::{FaultChoice, RecoveryOp, StorageOp};
use crate::fuzzing::snapshot::{Edit, Place, SetupOp, SnapshotRecoveryCase};
use crate::fuzzing::storage::{RecoveryCase, StorageCase};
use crate::io::{CrashFs, Fs};
use crate::options::WalOptions;
use crate::raft::message::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Message,
    MessageType,
};
use crate::rng::Rng;
use crate::snapshot::SnapshotStore;
use crate::storage::WalStorage;
use crate::types::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};

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
    let mut rng = Rng::new(0x5EED);
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
    for (name, case) in snapshot_recovery_cases() {
        let bytes = encode_snapshot_recovery_case(&case);
        seeds.push(SeedFile { target: "snapshot_recovery", name: name.to_string(), bytes });
    }
    seeds.extend(raft_message_seeds());
    for i in 0..6u64 {
        // A workload seed, then one flip (file, bit), two for the last seed.
        let mut bytes = rng.next_u64().to_le_bytes().to_vec();
        for _ in 0..1 + i / 5 {
            bytes.push(rng.below(4) as u8);
            bytes.extend_from_slice(&(rng.next_u64() as u32).to_le_bytes());
        }
        seeds.push(SeedFile { target: "repair", name: format!("random-{i:02}"), bytes });
    }
    seeds
}

/// Logs with snapshots and the damage each seed does to their snapshot directory.
fn snapshot_recovery_cases() -> Vec<(&'static str, SnapshotRecoveryCase)> {
    let save = |count| SetupOp::Save { count, new_term: false };
    let create = |back, size| SetupOp::Create { back, voters: Some(3), size };
    // Three snapshots over a growing log: the marked one and two older ones on disk.
    let three = vec![
        save(7),
        create(2, 100),
        save(5),
        SetupOp::Save { count: 3, new_term: true },
        create(1, 300),
        SetupOp::Compact { back: 3 },
        save(6),
        create(0, 200),
    ];
    let case = |zstd, close, setup: &Vec<SetupOp>, edits| SnapshotRecoveryCase {
        zstd,
        close,
        setup: setup.clone(),
        edits,
    };
    vec![
        ("intact", case(false, true, &three, vec![])),
        (
            "marked-flipped",
            case(true, false, &three, vec![Edit::Flip { place: Place::Marked, at: 60, xor: 4 }]),
        ),
        (
            "marked-cut-and-orphan",
            case(
                false,
                false,
                &three,
                vec![
                    Edit::Truncate { place: Place::Marked, keep: 40 },
                    Edit::Forge {
                        place: Place::Named { term: 2, index: 200, suffix: 0 },
                        index: 200,
                        term: 2,
                        data_len: 8,
                        zstd: false,
                        body: b"orphan!!".to_vec(),
                    },
                ],
            ),
        ),
        (
            "forged-marker-and-temp",
            case(
                true,
                true,
                &vec![
                    save(7),
                    create(3, 50),
                    SetupOp::Apply { ahead: 5, term_bump: 1, size: 400 },
                    SetupOp::ForgeMarker { index: 40, term: 3 },
                ],
                vec![
                    Edit::Write {
                        place: Place::Named { term: 3, index: 41, suffix: 1 },
                        bytes: b"RWALSNP\x01 unfinished".to_vec(),
                    },
                    Edit::Copy { from: Place::Existing(0), to: Place::Marked },
                ],
            ),
        ),
        (
            "lying-header",
            case(
                true,
                false,
                &three,
                vec![
                    Edit::Remove { place: Place::Existing(0) },
                    Edit::Forge {
                        place: Place::Marked,
                        index: 21,
                        term: 2,
                        data_len: 60000,
                        zstd: true,
                        body: vec![0x28, 0xB5, 0x2F, 0xFD, 0, 0x58, 0, 0, 0, 0],
                    },
                ],
            ),
        ),
    ]
}

/// Encoded Raft messages and membership changes, as they travel.
fn raft_message_seeds() -> Vec<SeedFile> {
    let entry = |index, kind, data: &'static [u8]| Entry {
        index,
        term: 2,
        entry_type: kind,
        data: Bytes::from_static(data),
    };
    let mut append = Message::new(MessageType::MsgApp, 1, 2);
    (append.term, append.log_term, append.index, append.commit) = (2, 2, 6, 5);
    append.entries = vec![
        entry(7, EntryType::Normal, b"put k v"),
        entry(8, EntryType::ConfChangeV2, b""),
        entry(9, EntryType::ConfChange, b"add"),
    ];
    let mut reject = Message::new(MessageType::MsgAppResp, 2, 1);
    (reject.term, reject.index, reject.reject, reject.reject_hint, reject.log_term) =
        (2, 6, true, 4, 1);
    let mut heartbeat = Message::new(MessageType::MsgHeartbeat, 1, 3);
    (heartbeat.term, heartbeat.commit) = (5, 40);
    heartbeat.context = Bytes::from_static(b"read-17");
    let mut snap = Message::new(MessageType::MsgSnap, 1, 3);
    snap.term = 4;
    snap.snapshot = Some(Snapshot {
        metadata: SnapshotMetadata {
            index: 100,
            term: 4,
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                learners: vec![4],
                voters_outgoing: vec![1, 2, 5],
                learners_next: vec![5],
                auto_leave: true,
            },
        },
        data: Bytes::from_static(b"state machine"),
    });
    let v1 = ConfChange {
        change_type: ConfChangeType::AddLearnerNode,
        node_id: 4,
        context: Bytes::from_static(b"10.0.0.4:7000"),
    };
    let v2 = ConfChangeV2 {
        transition: ConfChangeTransition::Explicit,
        changes: vec![
            ConfChangeSingle { change_type: ConfChangeType::AddNode, node_id: 4 },
            ConfChangeSingle { change_type: ConfChangeType::RemoveNode, node_id: 1 },
        ],
        context: Bytes::new(),
    };
    [
        ("msg-app", append.encode()),
        ("msg-app-resp-reject", reject.encode()),
        ("msg-heartbeat", heartbeat.encode()),
        ("msg-snap", snap.encode()),
        ("conf-change", v1.encode()),
        ("conf-change-v2", v2.encode()),
    ]
    .into_iter()
    .map(|(name, bytes)| SeedFile { target: "raft_message", name: name.to_string(), bytes })
    .collect()
}

/// A storage operation, mostly saves (so the log grows and rolls over segments).
fn random_storage_op(rng: &mut Rng) -> StorageOp {
    let r = rng.next_u64();
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
fn random_recovery_op(rng: &mut Rng, faults: bool) -> RecoveryOp {
    let r = rng.next_u64();
    match r % 20 {
        0 | 1 => RecoveryOp::Sync,
        2 => RecoveryOp::Crash { seed: rng.next_u64() },
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

fn put_place(out: &mut Vec<u8>, place: &Place) {
    match place {
        Place::Existing(k) => {
            put_variant(out, 0, 3);
            out.push(*k);
        }
        Place::Marked => put_variant(out, 1, 3),
        Place::Named { term, index, suffix } => {
            put_variant(out, 2, 3);
            out.extend_from_slice(&[*term, *index, *suffix]);
        }
    }
}

/// A `Vec<u8>` that is not the last field: each byte preceded by a "go on" bool, then a stop.
fn put_byte_list(out: &mut Vec<u8>, bytes: &[u8]) {
    for byte in bytes {
        put_bool(out, true);
        out.push(*byte);
    }
    put_bool(out, false);
}

fn encode_setup_op(out: &mut Vec<u8>, op: &SetupOp) {
    const VARIANTS: u64 = 5;
    match op {
        SetupOp::Save { count, new_term } => {
            put_variant(out, 0, VARIANTS);
            out.push(*count);
            put_bool(out, *new_term);
        }
        SetupOp::Create { back, voters, size } => {
            put_variant(out, 1, VARIANTS);
            out.push(*back);
            put_bool(out, voters.is_some());
            out.extend(voters.iter());
            out.extend_from_slice(&size.to_le_bytes());
        }
        SetupOp::Apply { ahead, term_bump, size } => {
            put_variant(out, 2, VARIANTS);
            out.extend_from_slice(&[*ahead, *term_bump]);
            out.extend_from_slice(&size.to_le_bytes());
        }
        SetupOp::Compact { back } => {
            put_variant(out, 3, VARIANTS);
            out.push(*back);
        }
        SetupOp::ForgeMarker { index, term } => {
            put_variant(out, 4, VARIANTS);
            out.extend_from_slice(&[*index, *term]);
        }
    }
}

fn encode_edit(out: &mut Vec<u8>, edit: &Edit) {
    const VARIANTS: u64 = 6;
    match edit {
        Edit::Flip { place, at, xor } => {
            put_variant(out, 0, VARIANTS);
            put_place(out, place);
            out.extend_from_slice(&at.to_le_bytes());
            out.push(*xor);
        }
        Edit::Truncate { place, keep } => {
            put_variant(out, 1, VARIANTS);
            put_place(out, place);
            out.extend_from_slice(&keep.to_le_bytes());
        }
        Edit::Write { place, bytes } => {
            put_variant(out, 2, VARIANTS);
            put_place(out, place);
            put_byte_list(out, bytes);
        }
        Edit::Forge { place, index, term, data_len, zstd, body } => {
            put_variant(out, 3, VARIANTS);
            put_place(out, place);
            out.extend_from_slice(&[*index, *term]);
            out.extend_from_slice(&data_len.to_le_bytes());
            put_bool(out, *zstd);
            put_byte_list(out, body);
        }
        Edit::Copy { from, to } => {
            put_variant(out, 4, VARIANTS);
            put_place(out, from);
            put_place(out, to);
        }
        Edit::Remove { place } => {
            put_variant(out, 5, VARIANTS);
            put_place(out, place);
        }
    }
}

/// The fuzz input that decodes into `case`.
pub fn encode_snapshot_recovery_case(case: &SnapshotRecoveryCase) -> Vec<u8> {
    let mut out = Vec::new();
    put_bool(&mut out, case.zstd);
    put_bool(&mut out, case.close);
    for op in &case.setup {
        put_bool(&mut out, true);
        encode_setup_op(&mut out, op);
    }
    put_bool(&mut out, false);
    for edit in &case.edits {
        put_bool(&mut out, true);
        encode_edit(&mut out, edit);
    }
    out
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
    let store = SnapshotStore::open(shared, Path::new("/node/snap"), 0).expect("the store opens");
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
