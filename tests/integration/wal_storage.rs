//! WalStorage: etcd's table cases (as is, and reopened after every step), random operation
//! sequences against the model with reopens, crashes at every I/O operation of a workload with
//! snapshots and compactions, concurrent readers, and the snapshot store's recovery rules.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use raftwal::io::{CrashFs, Fault, FaultKind, Fs};
use raftwal::{
    ConfState, CorruptionKind, Entry, Error, HardState, Result, Snapshot, SnapshotMetadata,
    Storage, WalOptions, WalStorage,
};

use crate::etcd_cases::Subject;
use crate::model::{Model, Outcome, arb_op, assert_same_answers, run_against_model, same_answers};

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: 2048,
        prepare_in_background: false,
        cache_bytes: 1024,
        snapshot_retention: 2,
        ..WalOptions::default()
    }
}

fn root() -> PathBuf {
    PathBuf::from("/node")
}

fn open(fs: &CrashFs) -> Result<WalStorage> {
    let fs: Fs = Arc::new(fs.clone());
    WalStorage::open_with_fs(fs, &root(), options())
}

/// A WalStorage on CrashFs; with `reopen`, closed and reopened after every step.
struct Durable {
    fs: CrashFs,
    storage: Option<WalStorage>,
    reopen: bool,
}

impl Durable {
    fn new(reopen: bool) -> Durable {
        let fs = CrashFs::new();
        let storage = Some(open(&fs).unwrap());
        Durable { fs, storage, reopen }
    }

    fn get(&self) -> &WalStorage {
        self.storage.as_ref().expect("open")
    }
}

impl Subject for Durable {
    fn reopen(&mut self) {
        drop(self.storage.take());
        self.storage = Some(open(&self.fs).unwrap());
    }
    fn storage(&self) -> &dyn Storage {
        self.get()
    }
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.get().append(entries)
    }
    fn set_hard_state(&mut self, hs: HardState) -> Result<()> {
        self.get().set_hard_state(hs)
    }
    fn compact(&mut self, index: u64) -> Result<()> {
        self.get().compact(index)
    }
    fn create_snapshot(
        &mut self,
        index: u64,
        cs: Option<ConfState>,
        data: Bytes,
    ) -> Result<Snapshot> {
        self.get().create_snapshot(index, cs, data)
    }
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        self.get().apply_snapshot(snapshot)
    }
    fn settle(&mut self) {
        if self.reopen {
            self.reopen();
        }
    }
}

fn fresh_durable() -> Box<dyn Subject> {
    Box::new(Durable::new(false))
}

fn fresh_reopening() -> Box<dyn Subject> {
    Box::new(Durable::new(true))
}

mod etcd {
    use super::fresh_durable;
    crate::etcd_case_tests!(fresh_durable);
}

mod etcd_reopened_after_every_step {
    use super::fresh_reopening;
    crate::etcd_case_tests!(fresh_reopening);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn wal_storage_answers_like_the_model_across_reopens(ops in proptest::collection::vec(arb_op(), 1..40)) {
        run_against_model(&mut Durable::new(false), &ops);
    }
}

fn entry(index: u64, term: u64) -> Entry {
    let mut data = format!("{index}/{term}/").into_bytes();
    data.resize(150 + (index as usize * 29) % 200, index as u8);
    Entry::new(index, term, data)
}

fn run(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last).map(|i| entry(i, term)).collect()
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState { voters: ids.to_vec(), ..ConfState::default() }
}

/// One step of the snapshot workload.
#[derive(Clone, Debug)]
enum Step {
    Save(Option<HardState>, Vec<Entry>),
    Compact(u64),
    Create(u64, Option<ConfState>, Bytes),
    Apply(Snapshot),
}

fn snapshot_workload() -> Vec<Step> {
    let hs = |term, commit| Some(HardState { term, vote: 1, commit });
    let installed = Snapshot {
        metadata: SnapshotMetadata { index: 30, term: 3, conf_state: voters(&[1, 2, 3, 4]) },
        data: Bytes::from(vec![7u8; 700]),
    };
    vec![
        Step::Save(hs(1, 0), run(1, 6, 1)),
        Step::Save(hs(1, 5), run(7, 12, 1)),
        Step::Create(8, Some(voters(&[1, 2, 3])), Bytes::from(vec![8u8; 300])),
        Step::Compact(8),
        Step::Save(hs(2, 10), run(11, 14, 2)),
        Step::Create(13, None, Bytes::from(vec![13u8; 900])),
        Step::Save(hs(2, 13), run(15, 20, 2)),
        Step::Compact(14),
        Step::Apply(installed),
        Step::Save(hs(3, 30), run(31, 36, 3)),
        Step::Create(34, None, Bytes::from(vec![34u8; 200])),
        Step::Compact(33),
        Step::Save(hs(3, 36), run(37, 40, 3)),
    ]
}

struct Expected {
    states: Vec<Model>,
    partial: Vec<Option<Model>>,
}

fn expected(steps: &[Step]) -> Expected {
    let mut model = Model::default();
    let mut states = vec![model.clone()];
    let mut partial = vec![None];
    for step in steps {
        let mut part = None;
        let ok = match step {
            Step::Save(hs, es) => {
                let r = model.append(es);
                part = hs.map(|_| model.clone());
                if let Some(hs) = hs {
                    model.hard_state = *hs;
                }
                r
            }
            Step::Compact(i) => model.compact(*i),
            Step::Create(i, cs, data) => {
                model.create_snapshot(*i, cs.clone(), data.clone()).map(|_| ())
            }
            Step::Apply(s) => model.apply_snapshot(s.clone()),
        };
        assert_eq!(ok, Outcome::Ok(()), "the workload is valid: {step:?}");
        partial.push(part);
        states.push(model.clone());
    }
    Expected { states, partial }
}

fn apply(storage: &WalStorage, step: &Step) -> Result<()> {
    match step {
        Step::Save(hs, es) => storage.save(hs.as_ref(), es),
        Step::Compact(i) => storage.compact(*i),
        Step::Create(i, cs, data) => {
            storage.create_snapshot(*i, cs.clone(), data.clone()).map(|_| ())
        }
        Step::Apply(s) => storage.apply_snapshot(s.clone()),
    }
}

#[test]
fn the_snapshot_workload_survives_a_clean_reopen() {
    let steps = snapshot_workload();
    let want = expected(&steps);
    let fs = CrashFs::new();
    let storage = open(&fs).unwrap();
    for (k, step) in steps.iter().enumerate() {
        apply(&storage, step).unwrap();
        assert_same_answers(&want.states[k + 1], &storage, &format!("after step {k}"));
    }
    drop(storage);
    let storage = open(&fs).unwrap();
    assert_same_answers(want.states.last().unwrap(), &storage, "after reopen");
    let snaps =
        fs.list_all().into_iter().filter(|p| p.extension().is_some_and(|e| e == "snap")).count();
    assert_eq!(snaps, 2, "retention keeps the newest two snapshot files");
}

/// Crashes the snapshot workload at operation `at` with `seed`; the reopened storage must answer
/// exactly like the model after every acknowledged step, or after the step in flight too.
fn crash_once(steps: &[Step], want: &Expected, at: u64, seed: u64) -> bool {
    let fs = CrashFs::new();
    fs.inject(Fault { at_op: at, kind: FaultKind::Halt });
    let mut acked = 0;
    if let Ok(storage) = open(&fs) {
        for step in steps {
            if apply(&storage, step).is_err() {
                break;
            }
            acked += 1;
        }
    }
    let halted = fs.is_halted();
    fs.crash(seed);
    fs.clear_faults();
    let storage =
        open(&fs).unwrap_or_else(|e| panic!("reopen after a crash at op {at} seed {seed}: {e}"));
    let newest = (acked + 1).min(steps.len());
    let candidates: Vec<&Model> = (acked..=newest)
        .flat_map(|k| [Some(&want.states[k]), want.partial[k].as_ref()])
        .flatten()
        .collect();
    let differences: Vec<String> =
        candidates.iter().filter_map(|m| same_answers(m, &storage).err()).collect();
    assert!(
        differences.len() < candidates.len(),
        "crash at op {at} seed {seed}, {acked} steps acknowledged: {differences:?}"
    );
    halted
}

#[test]
fn a_crash_at_every_io_operation_of_a_snapshot_workload_keeps_a_consistent_prefix() {
    let steps = snapshot_workload();
    let want = expected(&steps);
    let mut points = 0u64;
    for at in 0.. {
        let mut reached = false;
        for seed in 0..3 {
            reached |= crash_once(&steps, &want, at, at * 3 + seed);
        }
        if !reached {
            break;
        }
        points += 1;
        assert!(points < 100_000, "the workload must end");
    }
    assert!(points > 50, "the workload must perform many I/O operations, saw {points}");
    println!("wal storage crash points checked (with snapshots): {points} x 3 seeds");
}

#[test]
fn a_crash_at_every_io_operation_of_a_bootstrap_keeps_a_consistent_prefix() {
    // A new node's first durable act: the index-0 snapshot that carries only the membership
    // (its file, then its marker), then the first entries. A crash anywhere in it must leave a
    // storage that opens, empty or bootstrapped.
    let bootstrap = Snapshot {
        metadata: SnapshotMetadata { index: 0, term: 0, conf_state: voters(&[1, 2, 3]) },
        data: Bytes::new(),
    };
    let hs = Some(HardState { term: 1, vote: 1, commit: 0 });
    let steps = vec![Step::Apply(bootstrap), Step::Save(hs, run(1, 3, 1))];
    let want = expected(&steps);
    let mut points = 0u64;
    for at in 0.. {
        let mut reached = false;
        for seed in 0..3 {
            reached |= crash_once(&steps, &want, at, at * 3 + seed);
        }
        if !reached {
            break;
        }
        points += 1;
        assert!(points < 10_000, "the workload must end");
    }
    assert!(points > 5, "the bootstrap must perform several I/O operations, saw {points}");
}

#[test]
fn readers_on_other_threads_never_see_a_torn_answer() {
    let fs = CrashFs::new();
    let storage = Arc::new(open(&fs).unwrap());
    storage.save(None, &run(1, 10, 1)).unwrap();
    let writer = {
        let storage = storage.clone();
        std::thread::spawn(move || {
            for round in 0..150u64 {
                let term = 1 + round / 10;
                let first = 11 + round * 3;
                // Overwrite the newest entry and append more, sometimes compacting.
                let es = run(first - 1, first + 2, term);
                storage.save(Some(&HardState { term, vote: 1, commit: first - 2 }), &es).unwrap();
                if round % 20 == 19 {
                    storage.compact(first - 20).unwrap();
                }
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let storage = storage.clone();
            std::thread::spawn(move || {
                let mut checked = 0u64;
                for _ in 0..400 {
                    let (first, last) =
                        (storage.first_index().unwrap(), storage.last_index().unwrap());
                    let es = match storage.entries(first, last + 1, u64::MAX) {
                        Ok(es) => es,
                        // The log moved between the two calls: a clean refusal, never a torn answer.
                        Err(Error::Compacted | Error::ContractViolation(_)) => continue,
                        Err(e) => panic!("unexpected error {e}"),
                    };
                    for (k, e) in es.iter().enumerate() {
                        assert_eq!(e.index, first + k as u64, "entries are consecutive");
                        assert_eq!(
                            *e,
                            entry(e.index, e.term),
                            "an entry's bytes are exactly as written"
                        );
                    }
                    assert!(
                        es.windows(2).all(|w| w[0].term <= w[1].term),
                        "terms never go down in one answer"
                    );
                    checked += es.len() as u64;
                }
                checked
            })
        })
        .collect();
    writer.join().unwrap();
    let checked: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(checked > 1000, "readers must have read while the writer wrote ({checked} entries)");
}

#[test]
fn streamed_snapshots_are_unavailable_while_written_and_read_back_whole() {
    let fs = CrashFs::new();
    let storage = open(&fs).unwrap();
    storage.save(None, &run(1, 20, 1)).unwrap();
    let mut writer = storage.snapshot_writer(15, Some(voters(&[1, 2, 3]))).unwrap();
    let chunk: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    for _ in 0..30 {
        writer.write_all(&chunk).unwrap();
    }
    assert!(matches!(storage.snapshot(), Err(Error::SnapshotTemporarilyUnavailable)));
    let made = writer.finish().unwrap();
    assert_eq!(
        made.metadata,
        SnapshotMetadata { index: 15, term: 1, conf_state: voters(&[1, 2, 3]) }
    );
    assert_eq!(made.data.len(), 300_000);
    let mut reader = storage.snapshot_reader().unwrap();
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    assert_eq!(back, made.data, "the streamed data reads back byte for byte");
    assert_eq!(storage.snapshot().unwrap(), made);
    // Compressed on disk: a repetitive 300 KB body takes far less.
    let path = root().join("snap").join(raftwal::snapshot::format::snapshot_name(0, 1, 15));
    assert!(fs.read_file(&path).unwrap().len() < 50_000, "zstd compresses the body");
    drop(storage);
    assert_eq!(open(&fs).unwrap().snapshot().unwrap(), made, "and it survives a reopen");
}

#[test]
fn an_abandoned_snapshot_writer_leaves_nothing_behind() {
    let fs = CrashFs::new();
    let storage = open(&fs).unwrap();
    storage.save(None, &run(1, 5, 1)).unwrap();
    let mut writer = storage.snapshot_writer(3, None).unwrap();
    writer.write_all(b"partial").unwrap();
    drop(writer);
    assert_eq!(storage.snapshot().unwrap(), Snapshot::default(), "nothing was committed");
    assert!(
        !fs.list_all().iter().any(|p| p.to_string_lossy().contains(".snap")),
        "no file is left"
    );
}

fn snap_path(term: u64, index: u64) -> PathBuf {
    Path::new("/node/snap").join(raftwal::snapshot::format::snapshot_name(0, term, index))
}

#[test]
fn an_orphan_snapshot_file_without_a_marker_is_removed_on_open() {
    let fs = CrashFs::new();
    let storage = open(&fs).unwrap();
    storage.save(None, &run(1, 10, 1)).unwrap();
    let made = storage.create_snapshot(5, None, Bytes::from("five")).unwrap();
    drop(storage);
    // A file of a newer snapshot whose marker never reached the log.
    let orphan = snap_path(1, 9);
    fs.write_file_raw(&orphan, &fs.read_file(&snap_path(1, 5)).unwrap()).unwrap();
    let storage = open(&fs).unwrap();
    assert!(fs.read_file(&orphan).is_none(), "the orphan is removed");
    assert_eq!(storage.snapshot().unwrap(), made);
}

#[test]
fn a_damaged_snapshot_falls_back_to_an_older_one_only_if_the_log_covers_it() {
    let fs = CrashFs::new();
    let storage = open(&fs).unwrap();
    storage.save(None, &run(1, 10, 1)).unwrap();
    let older = storage.create_snapshot(4, Some(voters(&[1])), Bytes::from("four")).unwrap();
    storage.create_snapshot(7, None, Bytes::from(vec![7u8; 500])).unwrap();
    drop(storage);
    let newest = snap_path(1, 7);
    let len = fs.read_file(&newest).unwrap().len() as u64;
    fs.flip_bit(&newest, (len - 3) * 8).unwrap();
    let storage = open(&fs).unwrap();
    assert_eq!(storage.snapshot().unwrap(), older, "the newest valid older snapshot is used");
    assert!(
        fs.read_file(
            &Path::new("/node/snap")
                .join(format!("{}.broken", snap_path(1, 7).file_name().unwrap().to_string_lossy()))
        )
        .is_some()
    );
    assert_eq!(storage.entries(5, 11, u64::MAX).unwrap(), run(5, 10, 1), "the log still covers it");

    // Compact past the older snapshot: now nothing can stand in for a damaged newest one.
    storage.create_snapshot(9, None, Bytes::from("nine")).unwrap();
    storage.compact(8).unwrap();
    drop(storage);
    let len = fs.read_file(&snap_path(1, 9)).unwrap().len() as u64;
    fs.flip_bit(&snap_path(1, 9), (len - 1) * 8).unwrap();
    match open(&fs) {
        Err(Error::Corruption { segment, kind, .. }) => {
            assert_eq!(
                segment,
                Path::new("snap").join(raftwal::snapshot::format::snapshot_name(0, 1, 9))
            );
            assert_eq!(kind, CorruptionKind::ChecksumMismatch);
        }
        other => panic!("expected corruption naming the snapshot file, got {other:?}"),
    }
}

#[test]
fn default_options_make_every_call_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = WalStorage::open(tmp.path(), WalOptions::default()).unwrap();
    storage.save(Some(&HardState { term: 1, vote: 1, commit: 3 }), &run(1, 5, 1)).unwrap();
    storage.create_snapshot(3, Some(voters(&[1, 2, 3])), Bytes::from("three")).unwrap();
    storage.compact(3).unwrap();
    assert!(matches!(WalStorage::open(tmp.path(), WalOptions::default()), Err(Error::Locked)));
    drop(storage);
    let storage = WalStorage::open(tmp.path(), WalOptions::default()).unwrap();
    assert_eq!(storage.first_index().unwrap(), 4);
    assert_eq!(storage.entries(4, 6, u64::MAX).unwrap(), run(4, 5, 1));
    assert_eq!(
        storage.initial_state().unwrap().hard_state,
        HardState { term: 1, vote: 1, commit: 3 }
    );
    assert_eq!(storage.snapshot().unwrap().data, Bytes::from("three"));
}

#[test]
fn a_snapshot_whose_marker_sync_fails_keeps_its_file() {
    // The marker reaches the log but its fsync fails: the log may name the snapshot from now
    // on (the marker may be durable), so its file must not be removed.
    let mut hit = false;
    for after in 0..40 {
        let fs = CrashFs::new();
        let storage = open(&fs).unwrap();
        storage.save(None, &run(1, 10, 1)).unwrap();
        fs.inject(Fault { at_op: fs.op_count() + after, kind: FaultKind::SyncEio });
        let data = Bytes::from_static(b"state at eight");
        if storage.create_snapshot(8, None, data.clone()).is_ok() {
            continue;
        }
        if storage.wal().snapshot_metadata().index != 8 {
            continue; // Failed before the marker was written.
        }
        hit = true;
        let snapshot = storage.snapshot().expect("the snapshot the log names is readable");
        assert_eq!((snapshot.metadata.index, snapshot.data), (8, data));
    }
    assert!(hit, "some fault position fails the marker's sync");
}

#[test]
fn raft_restarts_after_a_crash_loses_the_commit_saved_with_an_installed_snapshot() {
    // Found by the cluster simulator: a follower installs a leader's snapshot (its marker is
    // synced), then saves the hard state whose only change is the commit index, which the
    // MustSync rule leaves unsynced. After a power cut the stored commit index is below the
    // snapshot, which Raft refused.
    let fs = CrashFs::new();
    let options = WalOptions { must_sync_rule: true, ..options() };
    let open_rule = |fs: &CrashFs| {
        let fs: Fs = Arc::new(fs.clone());
        WalStorage::open_with_fs(fs, &root(), options.clone()).unwrap()
    };
    let storage = open_rule(&fs);
    storage.save(Some(&HardState { term: 2, vote: 1, commit: 3 }), &run(1, 5, 1)).unwrap();
    let metadata = SnapshotMetadata { index: 20, term: 2, conf_state: voters(&[1, 2, 3]) };
    storage.apply_snapshot(Snapshot { metadata, data: Bytes::from("twenty") }).unwrap();
    storage.save(Some(&HardState { term: 2, vote: 1, commit: 20 }), &[]).unwrap();
    drop(storage);
    fs.crash_lose_all_unsynced();
    let storage = Arc::new(open_rule(&fs));
    assert_eq!(storage.wal().hard_state().commit, 3, "the commit-only hard state was lost");
    assert_eq!(storage.snapshot().unwrap().metadata.index, 20, "the snapshot was not");
    // Raft starts with the snapshot's index committed: a snapshot holds only committed entries.
    let config = raftwal::raft::Config { applied: 20, ..raftwal::raft::Config::new(1) };
    let node = raftwal::raft::RawNode::new(&config, storage).unwrap();
    assert_eq!(node.status().hard_state.commit, 20);
    assert_eq!(node.status().applied, 20);
}
