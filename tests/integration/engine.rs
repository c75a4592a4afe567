//! LogEngine: many groups in one WAL. Ports of raft-engine's engine tests (empty engine, shared
//! batches, removal, per-group compaction, purge and rewriting of cold groups, hot groups asked
//! to compact, empty and concurrent batches, unknown files, refused removals and writes), the
//! order of items within a batch, etcd's storage semantics on interleaved groups against the
//! models, batch atomicity across groups at every crash point (with and without rewrites, and
//! from concurrent writers), the bound cold groups put on the log's size, index memory, bit
//! flips, and the engine_recovery fuzz check with its corpus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use proptest::prelude::*;
use raftwal::fuzzing::{BatchItem, EngineCase, EngineOp, FaultChoice, check_engine_recovery};
use raftwal::io::{CrashFs, Fault, FaultKind, Fs, Hook, OpEvent, OpKind};
use raftwal::wal::format::{SEGMENT_HEADER_LEN, SEGMENT_SUFFIX, parse_segment_name};
use raftwal::{
    ConfState, Entry, Error, GroupStorage, HardState, LogEngine, MemoryStorage, Result, Snapshot,
    SnapshotMetadata, Storage, SyncPolicy, WalOptions, WriteBatch,
};

use crate::model::{Call, Model, Op, Outcome, arb_op, assert_same_answers, resolve};

const ROOT: &str = "/node";

/// 4 KiB segments, so a few dozen entries span several; segments prepared inline, so the I/O
/// sequence (and every crash point) is deterministic.
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

fn open(fs: &CrashFs, options: &WalOptions) -> Result<LogEngine> {
    let shared: Fs = Arc::new(fs.clone());
    LogEngine::open_with_fs(shared, Path::new(ROOT), options.clone())
}

fn reopen(fs: &CrashFs, engine: LogEngine, options: &WalOptions) -> LogEngine {
    engine.close().unwrap();
    drop(engine);
    open(fs, options).unwrap()
}

/// An entry whose bytes name its group, so an entry read from the wrong group shows.
fn entry(group: u64, index: u64, term: u64, size: usize) -> Entry {
    let mut data = format!("g{group}/i{index}/t{term}/").into_bytes();
    data.resize(size.max(data.len()), (group as u8) ^ (index as u8));
    Entry::new(index, term, data)
}

fn run(group: u64, first: u64, last: u64, term: u64, size: usize) -> Vec<Entry> {
    (first..=last).map(|i| entry(group, i, term, size)).collect()
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState { term, vote: 1, commit }
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState { voters: ids.to_vec(), ..ConfState::default() }
}

/// The group's whole state compared with the model's: indices, hard state, the dummy's term and
/// every live entry (cheap enough to run at every crash point).
fn same_log(model: &Model, group: &GroupStorage) -> std::result::Result<(), String> {
    let got = (
        group.first_index().unwrap(),
        group.last_index().unwrap(),
        group.initial_state().unwrap().hard_state,
        Outcome::from(group.term(model.dummy.0)),
    );
    let want = (model.dummy.0 + 1, model.last(), model.hard_state, Outcome::Ok(model.dummy.1));
    if got != want {
        return Err(format!(
            "group {}: (first, last, hard state, dummy term) {got:?}, want {want:?}",
            group.id()
        ));
    }
    if model.last() > model.dummy.0 {
        let got = Outcome::from(group.entries(model.dummy.0 + 1, model.last() + 1, u64::MAX));
        let want = Outcome::Ok(model.log.values().cloned().collect::<Vec<_>>());
        if got != want {
            return Err(format!("group {}: entries differ", group.id()));
        }
    }
    Ok(())
}

fn assert_same_log(model: &Model, engine: &LogEngine, group: u64, context: &str) {
    if let Err(difference) = same_log(model, &engine.group(group).unwrap()) {
        panic!("{difference} {context}");
    }
}

fn segment_names(fs: &CrashFs) -> Vec<String> {
    let dir = Path::new(ROOT).join("wal");
    fs.list_all()
        .into_iter()
        .filter(|p| p.parent() == Some(dir.as_path()))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| parse_segment_name(n).is_some())
        .collect()
}

fn snapshot_files_of(fs: &CrashFs, group: u64) -> Vec<PathBuf> {
    let prefix = format!("{group:016x}-");
    fs.list_all()
        .into_iter()
        .filter(|p| p.parent() == Some(Path::new(ROOT).join("snap").as_path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Ports of raft-engine's engine tests.

#[test]
fn an_empty_engine_has_empty_groups_and_reopens_empty() {
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options()).unwrap();
    for round in 0..2 {
        let group = engine.group(7).unwrap();
        assert_eq!(group.first_index().unwrap(), 1, "round {round}");
        assert_eq!(group.last_index().unwrap(), 0, "round {round}");
        assert_eq!(group.initial_state().unwrap().hard_state, HardState::default());
        assert_eq!(group.term(0).unwrap(), 0, "the dummy of an empty log has term 0");
        assert!(matches!(group.term(1), Err(Error::Unavailable)), "round {round}");
        assert_eq!(group.snapshot().unwrap().metadata, SnapshotMetadata::default());
        assert!(engine.group_ids().is_empty(), "a handle alone creates no state");
        drop(group);
        engine = reopen(&fs, engine, &options());
    }
    assert!(engine.group_ids().is_empty());
}

#[test]
fn entries_of_many_groups_in_shared_batches_read_back_before_and_after_reopen() {
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options()).unwrap();
    let mut models: BTreeMap<u64, Model> = (1..=12).map(|g| (g, Model::default())).collect();
    for round in 0..15u64 {
        let mut batch = WriteBatch::new();
        for (&g, model) in models.iter_mut() {
            if (round + g) % 3 == 0 {
                continue;
            }
            // Every fifth round overwrites the newest entry with a new term.
            let overwrite = round % 5 == 4 && model.last() > 0;
            let term = 1 + round / 5;
            let first = if overwrite { model.last() } else { model.last() + 1 };
            let es = run(g, first, first + g % 3, term, 40 + (g as usize * 37) % 200);
            let state = hs(term, model.last() / 2);
            batch.save(g, Some(&state), &es).unwrap();
            assert_eq!(model.append(&es), Outcome::Ok(()));
            model.hard_state = state;
        }
        let items = batch.len();
        assert!(items > 0);
        engine.write(&mut batch).unwrap();
        assert!(batch.is_empty(), "a written batch is emptied");
    }
    for (&g, model) in &models {
        assert_same_answers(model, &engine.group(g).unwrap(), &format!("group {g} before reopen"));
    }
    assert!(segment_names(&fs).len() > 3, "the batches span several segments");
    engine = reopen(&fs, engine, &options());
    assert_eq!(engine.group_ids(), models.keys().copied().collect::<Vec<_>>());
    for (&g, model) in &models {
        assert_same_answers(model, &engine.group(g).unwrap(), &format!("group {g} after reopen"));
    }
}

#[test]
fn a_removed_group_is_gone_with_its_snapshots_across_reopen_and_its_id_starts_again() {
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options()).unwrap();
    let (three, four) = (engine.group(3).unwrap(), engine.group(4).unwrap());
    three.save(Some(&hs(1, 8)), &run(3, 1, 10, 1, 100)).unwrap();
    three.create_snapshot(5, Some(voters(&[1, 2, 3])), Bytes::from_static(b"state 5")).unwrap();
    four.save(Some(&hs(2, 3)), &run(4, 1, 6, 2, 100)).unwrap();
    four.create_snapshot(4, Some(voters(&[1])), Bytes::from_static(b"state 4")).unwrap();
    assert_eq!(snapshot_files_of(&fs, 3).len(), 1);
    let four_files = snapshot_files_of(&fs, 4);
    assert_eq!(four_files.len(), 1);
    let mut four_model = Model::default();
    assert_eq!(four_model.append(&run(4, 1, 6, 2, 100)), Outcome::Ok(()));
    four_model.hard_state = hs(2, 3);
    assert!(
        four_model.create_snapshot(4, Some(voters(&[1])), Bytes::from_static(b"state 4")).is_ok()
    );

    engine.remove_group(3).unwrap();
    let empty = Model::default();
    // The handle taken before the removal sees the empty log as well.
    assert_same_answers(&empty, &three, "the handle held across the removal");
    // Handles keep the engine (and its directory lock) alive.
    drop((three, four));
    for round in 0..2 {
        let context = format!("after removal, round {round}");
        assert_same_answers(&empty, &engine.group(3).unwrap(), &context);
        assert!(snapshot_files_of(&fs, 3).is_empty(), "{context}: snapshot files removed");
        assert_eq!(engine.group_ids(), vec![4], "{context}");
        assert_same_answers(&four_model, &engine.group(4).unwrap(), &context);
        assert_eq!(snapshot_files_of(&fs, 4), four_files, "{context}: other groups' files stay");
        if round == 0 {
            engine = reopen(&fs, engine, &options());
        }
    }

    let mut again = Model::default();
    let es = run(3, 1, 3, 7, 50);
    engine.group(3).unwrap().save(Some(&hs(7, 1)), &es).unwrap();
    assert_eq!(again.append(&es), Outcome::Ok(()));
    again.hard_state = hs(7, 1);
    assert_same_answers(&again, &engine.group(3).unwrap(), "the id used again");
    engine = reopen(&fs, engine, &options());
    assert_same_answers(&again, &engine.group(3).unwrap(), "the id used again, reopened");
    assert_eq!(engine.group_ids(), vec![3, 4]);
}

#[test]
fn compaction_of_one_group_leaves_the_others_untouched() {
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options()).unwrap();
    let mut batch = WriteBatch::new();
    for g in 1..=3 {
        batch.save(g, Some(&hs(1, 20)), &run(g, 1, 20, 1, 120)).unwrap();
    }
    engine.write(&mut batch).unwrap();
    batch.compact(1, 10).unwrap();
    engine.write(&mut batch).unwrap();
    engine.group(2).unwrap().compact(5).unwrap();
    for round in 0..2 {
        let (one, two, three) =
            (engine.group(1).unwrap(), engine.group(2).unwrap(), engine.group(3).unwrap());
        let context = format!("round {round}");
        assert!(matches!(one.term(9), Err(Error::Compacted)), "{context}");
        assert_eq!(one.term(10).unwrap(), 1, "{context}: the dummy keeps its term");
        assert!(matches!(one.entries(10, 12, u64::MAX), Err(Error::Compacted)), "{context}");
        assert_eq!(one.entries(11, 21, u64::MAX).unwrap(), run(1, 11, 20, 1, 120), "{context}");
        assert!(matches!(two.term(4), Err(Error::Compacted)), "{context}");
        assert_eq!(two.term(9).unwrap(), 1, "{context}: group 2 keeps what group 1 compacted");
        assert_eq!(two.entries(6, 21, u64::MAX).unwrap(), run(2, 6, 20, 1, 120), "{context}");
        assert_eq!(three.first_index().unwrap(), 1, "{context}: group 3 compacted nothing");
        assert_eq!(three.entries(1, 21, u64::MAX).unwrap(), run(3, 1, 20, 1, 120), "{context}");
        for g in [&one, &two, &three] {
            assert!(matches!(g.term(21), Err(Error::Unavailable)), "{context}");
        }
        // Compacting again at or below the dummy: Compacted; past the end: refused.
        assert!(matches!(one.compact(10), Err(Error::Compacted)), "{context}");
        assert!(matches!(one.compact(21), Err(Error::ContractViolation(_))), "{context}");
        drop((one, two, three));
        if round == 0 {
            engine = reopen(&fs, engine, &options());
        }
    }
    // A refused compaction refuses its whole batch: group 3's entries are not written.
    batch.save(3, Some(&hs(2, 20)), &run(3, 21, 22, 2, 120)).unwrap();
    batch.compact(1, 99).unwrap();
    assert!(matches!(engine.write(&mut batch), Err(Error::ContractViolation(_))));
    let three = engine.group(3).unwrap();
    assert_eq!(three.last_index().unwrap(), 20, "nothing of a refused batch is written");
    assert_eq!(three.initial_state().unwrap().hard_state, hs(1, 20));
    assert_eq!(engine.group(1).unwrap().first_index().unwrap(), 11);
}

#[test]
fn a_compaction_in_a_batch_takes_the_term_the_batch_itself_left_at_its_index() {
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options()).unwrap();
    let mut batch = WriteBatch::new();
    // Group 1: 1..=8 in term 1, then 4..=6 in term 2 replaces its suffix from 4; group 2's
    // entries at the same indices in term 3 lie in between and must not answer for group 1.
    batch.save(1, None, &run(1, 1, 8, 1, 50)).unwrap();
    batch.save(2, None, &run(2, 1, 8, 3, 50)).unwrap();
    batch.save(1, Some(&hs(2, 0)), &run(1, 4, 6, 2, 50)).unwrap();
    batch.compact(1, 5).unwrap();
    batch.compact(2, 5).unwrap();
    // Past group 1's new last index (6): the replaced 7 and 8 are gone.
    let mut refused = batch.clone();
    refused.compact(1, 7).unwrap();
    assert!(matches!(engine.write(&mut refused), Err(Error::ContractViolation(_))));
    engine.write(&mut batch).unwrap();
    for round in 0..2 {
        let (one, two) = (engine.group(1).unwrap(), engine.group(2).unwrap());
        let context = format!("round {round}");
        assert_eq!(one.first_index().unwrap(), 6, "{context}");
        assert_eq!(one.last_index().unwrap(), 6, "{context}");
        assert_eq!(one.term(5).unwrap(), 2, "{context}: the dummy has the replacing term");
        assert_eq!(one.entries(6, 7, u64::MAX).unwrap(), run(1, 6, 6, 2, 50), "{context}");
        assert_eq!(two.first_index().unwrap(), 6, "{context}");
        assert_eq!(two.term(5).unwrap(), 3, "{context}: group 2's dummy keeps its own term");
        drop((one, two));
        if round == 0 {
            engine = reopen(&fs, engine, &options());
        }
    }
}

#[test]
fn purge_after_compacting_every_group_releases_the_old_segments() {
    // Never: the purge that follows a write waits for a sync, so the explicit purge does it.
    let options = WalOptions { sync_policy: SyncPolicy::Never, ..options() };
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options).unwrap();
    let mut batch = WriteBatch::new();
    for round in 0..6 {
        for g in 1..=5 {
            batch.save(g, None, &run(g, round * 5 + 1, round * 5 + 5, 1, 200)).unwrap();
        }
        engine.write(&mut batch).unwrap();
    }
    engine.sync().unwrap();
    let before = engine.purge().unwrap();
    assert!(before.deleted_segments.is_empty(), "every segment holds live entries");
    let old = segment_names(&fs);
    assert!(old.len() > 5, "the entries span many segments: {old:?}");
    for g in 1..=5 {
        batch.compact(g, 30).unwrap();
    }
    engine.write(&mut batch).unwrap();
    let report = engine.purge().unwrap();
    assert!(!report.deleted_segments.is_empty(), "compacting every group frees segments");
    assert!(
        report.bytes_on_disk < before.bytes_on_disk,
        "{} bytes after, {} before",
        report.bytes_on_disk,
        before.bytes_on_disk
    );
    assert_eq!(engine.metrics().bytes_on_disk, report.bytes_on_disk);
    let now = segment_names(&fs);
    for sequence in &report.deleted_segments {
        assert!(
            !now.iter().any(|n| parse_segment_name(n).is_some_and(|(seq, _)| seq == *sequence)),
            "segment {sequence} reported deleted is gone"
        );
    }
    assert!(now.len() < old.len());
    engine = reopen(&fs, engine, &options);
    for g in 1..=5 {
        let group = engine.group(g).unwrap();
        assert_eq!((group.first_index().unwrap(), group.last_index().unwrap()), (31, 30));
        assert_eq!(group.term(30).unwrap(), 1);
    }
}

#[test]
fn cold_groups_rewritten_forward_survive_reopen() {
    // Threshold 0: every purge rewrites the groups pinning sealed segments.
    let options = WalOptions { purge_threshold_bytes: 0, ..options() };
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options).unwrap();
    let mut models: BTreeMap<u64, Model> = BTreeMap::new();
    let mut cold_segments = Vec::new();
    for g in 1..=10 {
        let es = run(g, 1, 10, g, 300);
        engine.group(g).unwrap().save(Some(&hs(g, 10)), &es).unwrap();
        let model = models.entry(g).or_default();
        assert_eq!(model.append(&es), Outcome::Ok(()));
        model.hard_state = hs(g, 10);
        // Every segment that held cold entries (purges rewrite them forward as they go).
        for name in segment_names(&fs) {
            if !cold_segments.contains(&name) {
                cold_segments.push(name);
            }
        }
    }
    assert!(cold_segments.len() > 4, "the cold groups span several segments");
    // A hot group moves the log on.
    let hot = engine.group(100).unwrap();
    for round in 0..20 {
        hot.save(None, &run(100, round * 5 + 1, round * 5 + 5, 1, 300)).unwrap();
        hot.compact(round * 5 + 5).unwrap();
    }
    drop(hot);
    let report = engine.purge().unwrap();
    let left = segment_names(&fs);
    for name in &cold_segments {
        assert!(!left.contains(name), "segment {name} held only rewritten entries: {report:?}");
    }
    for (&g, model) in &models {
        assert_same_log(model, &engine, g, "after the rewrite");
    }
    engine = reopen(&fs, engine, &options);
    for (&g, model) in &models {
        assert_same_answers(model, &engine.group(g).unwrap(), &format!("group {g} reopened"));
    }
}

/// Writes a hot group (40 live entries) early and moves the log on with a compacting filler
/// group, with no purge threshold reached; returns the hot group's entries.
fn hot_group_setup(fs: &CrashFs) -> Vec<Entry> {
    let options = WalOptions { purge_threshold_bytes: 1 << 40, ..options() };
    let engine = open(fs, &options).unwrap();
    let es = run(1, 1, 40, 1, 100);
    engine.group(1).unwrap().save(Some(&hs(1, 40)), &es).unwrap();
    let filler = engine.group(2).unwrap();
    for round in 0..30 {
        filler.save(None, &run(2, round * 4 + 1, round * 4 + 4, 1, 300)).unwrap();
        filler.compact(round * 4 + 4).unwrap();
    }
    drop(filler);
    engine.close().unwrap();
    es
}

#[test]
fn a_hot_group_is_asked_to_compact_then_rewritten_after_force_rewrite_after_purges() {
    let fs = CrashFs::new();
    let es = hot_group_setup(&fs);
    let options = WalOptions {
        purge_threshold_bytes: 0,
        rewrite_max_entries: 8,
        force_rewrite_after: 3,
        rewrite_budget_bytes: 1 << 20,
        ..options()
    };
    let mut engine = open(&fs, &options).unwrap();
    let first_segment = segment_names(&fs).into_iter().min().unwrap();
    for purge in 1..=3 {
        let report = engine.purge().unwrap();
        assert!(report.compact_requested.contains(&1), "purge {purge}: {report:?}");
        assert!(!report.rewritten_groups.contains(&1), "purge {purge}: {report:?}");
        assert!(segment_names(&fs).contains(&first_segment), "group 1 still pins it");
    }
    let report = engine.purge().unwrap();
    assert!(report.rewritten_groups.contains(&1), "the fourth purge forces it: {report:?}");
    assert!(!report.compact_requested.contains(&1), "{report:?}");
    assert!(report.rewritten_entries >= 40);
    assert!(!segment_names(&fs).contains(&first_segment), "nothing pins the first segment");
    engine = reopen(&fs, engine, &options);
    let group = engine.group(1).unwrap();
    assert_eq!(group.entries(1, 41, u64::MAX).unwrap(), es);
    assert_eq!(group.initial_state().unwrap().hard_state, hs(1, 40));
}

#[test]
fn a_hot_group_beyond_the_rewrite_budget_is_only_asked_to_compact() {
    let fs = CrashFs::new();
    let es = hot_group_setup(&fs);
    let options = WalOptions {
        purge_threshold_bytes: 0,
        rewrite_max_entries: 8,
        force_rewrite_after: 3,
        rewrite_budget_bytes: 1024,
        ..options()
    };
    let engine = open(&fs, &options).unwrap();
    // Bounded: several times force_rewrite_after.
    for purge in 1..=10 {
        let report = engine.purge().unwrap();
        assert!(report.compact_requested.contains(&1), "purge {purge}: {report:?}");
        assert!(!report.rewritten_groups.contains(&1), "purge {purge}: {report:?}");
        assert_eq!(report.top_pinning.first().map(|p| p.0), Some(1), "{report:?}");
    }
    assert_eq!(engine.group(1).unwrap().entries(1, 41, u64::MAX).unwrap(), es);
}

#[test]
fn an_empty_batch_does_no_io_and_concurrent_empty_and_full_batches_all_recover() {
    let fs = CrashFs::new();
    let engine = open(&fs, &options()).unwrap();
    let ops = fs.op_count();
    let mut batch = WriteBatch::new();
    engine.write(&mut batch).unwrap();
    batch.save(5, None, &[]).unwrap();
    engine.write(&mut batch).unwrap();
    assert_eq!(fs.op_count(), ops, "an empty batch touches no file");
    assert!(engine.group_ids().is_empty());

    const THREADS: u64 = 4;
    const ROUNDS: u64 = 40;
    let writers: Vec<_> = (1..=THREADS)
        .map(|g| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let mut batch = WriteBatch::new();
                    if round % 2 == 1 {
                        let index = round / 2 + 1;
                        batch.save(g, Some(&hs(1, index)), &run(g, index, index, 1, 90)).unwrap();
                    }
                    engine.write(&mut batch).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    drop(engine);
    // Every batch was acknowledged under SyncPolicy::Always: nothing may depend on unsynced data.
    fs.crash_lose_all_unsynced();
    let engine = open(&fs, &options()).unwrap();
    assert_eq!(engine.group_ids(), (1..=THREADS).collect::<Vec<_>>());
    for g in 1..=THREADS {
        let group = engine.group(g).unwrap();
        assert_eq!(
            group.entries(1, ROUNDS / 2 + 1, u64::MAX).unwrap(),
            run(g, 1, ROUNDS / 2, 1, 90)
        );
        assert_eq!(group.last_index().unwrap(), ROUNDS / 2);
        assert_eq!(group.initial_state().unwrap().hard_state, hs(1, ROUNDS / 2));
    }
}

#[test]
fn the_newest_writes_are_read_from_memory_and_older_ones_from_their_segments() {
    // Room for about three of the batches below (each some 1.2 KiB of records).
    let options = WalOptions { segment_size_bytes: 64 << 10, cache_bytes: 4096, ..options() };
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    for round in 0..40 {
        let mut batch = WriteBatch::new();
        for g in 1..=3 {
            batch.save(g, None, &run(g, 3 * round + 1, 3 * round + 3, 1, 100)).unwrap();
        }
        engine.write(&mut batch).unwrap();
    }
    let reads = Arc::new(AtomicU64::new(0));
    let counted = reads.clone();
    let hook: Hook = Arc::new(move |event: &OpEvent<'_>| {
        if event.kind == OpKind::Read {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    });
    fs.set_hook(Some(hook));
    for g in 1..=3 {
        let got = engine.group(g).unwrap().entries(115, 121, u64::MAX).unwrap();
        assert_eq!(got, run(g, 115, 120, 1, 100));
    }
    assert_eq!(reads.load(Ordering::SeqCst), 0, "the last two batches come from memory");
    let got = engine.group(2).unwrap().entries(1, 4, u64::MAX).unwrap();
    assert_eq!(got, run(2, 1, 3, 1, 100));
    assert!(reads.load(Ordering::SeqCst) > 0, "the first batch was dropped from memory");
    assert!(engine.metrics().cache_bytes <= 4096, "every write is durable: within the budget");

    // An overwrite: the index sends the read to the new record, also in memory.
    reads.store(0, Ordering::SeqCst);
    let mut batch = WriteBatch::new();
    batch.save(1, None, &run(1, 119, 119, 2, 100)).unwrap();
    engine.write(&mut batch).unwrap();
    let group = engine.group(1).unwrap();
    assert_eq!(group.last_index().unwrap(), 119);
    let got = group.entries(118, 120, u64::MAX).unwrap();
    assert_eq!(got, [run(1, 118, 118, 1, 100), run(1, 119, 119, 2, 100)].concat());
    assert_eq!(reads.load(Ordering::SeqCst), 0, "both records are in memory");
    drop(group);

    // Without a cache, the same reads go to the files.
    fs.set_hook(None);
    let engine = reopen(&fs, engine, &WalOptions { cache_bytes: 0, ..options.clone() });
    let counted = reads.clone();
    fs.set_hook(Some(Arc::new(move |event: &OpEvent<'_>| {
        if event.kind == OpKind::Read {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    })));
    let got = engine.group(3).unwrap().entries(118, 121, u64::MAX).unwrap();
    assert_eq!(got, run(3, 118, 120, 1, 100));
    assert!(reads.load(Ordering::SeqCst) > 0);
    fs.set_hook(None);
}

#[test]
fn writes_not_yet_durable_stay_in_memory_past_the_budget() {
    // A failed fdatasync may drop their pages: until a sync returns, the writes' own buffers
    // are the only copy the log can trust.
    let options = WalOptions {
        segment_size_bytes: 64 << 10,
        cache_bytes: 1024,
        sync_policy: SyncPolicy::Never,
        ..options()
    };
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    for round in 0..10 {
        let mut batch = WriteBatch::new();
        batch.save(1, None, &run(1, 2 * round + 1, 2 * round + 2, 1, 200)).unwrap();
        engine.write(&mut batch).unwrap();
    }
    assert!(engine.metrics().cache_bytes > 4 * 1024, "ten writes of 400 B kept over the budget");
    let reads = Arc::new(AtomicU64::new(0));
    let counted = reads.clone();
    fs.set_hook(Some(Arc::new(move |event: &OpEvent<'_>| {
        if event.kind == OpKind::Read {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    })));
    let group = engine.group(1).unwrap();
    assert_eq!(group.entries(1, 21, u64::MAX).unwrap(), run(1, 1, 20, 1, 200));
    assert_eq!(reads.load(Ordering::SeqCst), 0, "every write is still in memory");
    // Once synced, the next write brings the cache back within its budget.
    engine.sync().unwrap();
    let mut batch = WriteBatch::new();
    batch.save(1, None, &run(1, 21, 21, 1, 200)).unwrap();
    engine.write(&mut batch).unwrap();
    assert!(engine.metrics().cache_bytes <= 1024);
    assert_eq!(group.entries(1, 22, u64::MAX).unwrap(), run(1, 1, 21, 1, 200));
    assert!(reads.load(Ordering::SeqCst) > 0, "the synced writes were dropped and read back");
    fs.set_hook(None);
}

#[test]
fn readers_of_every_group_never_see_another_groups_or_a_torn_answer() {
    // A cache large enough to serve most reads: it holds every group's entries together.
    let options = WalOptions { cache_bytes: 256 << 10, ..options() };
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    const GROUPS: u64 = 4;
    const ROUNDS: u64 = 120;
    let written = Arc::new(AtomicBool::new(false));
    let writer = {
        let engine = engine.clone();
        let written = written.clone();
        std::thread::spawn(move || {
            for round in 1..=ROUNDS {
                let mut batch = WriteBatch::new();
                for g in 1..=GROUPS {
                    // Each round overwrites the newest entry of the group with a newer term.
                    let term = 1 + round / 10;
                    let first = if round == 1 { 1 } else { 2 * round - 2 };
                    batch
                        .save(
                            g,
                            Some(&hs(term, first)),
                            &run(g, first, 2 * round, term, 100 + 20 * g as usize),
                        )
                        .unwrap();
                    if round % 16 == 0 {
                        batch.compact(g, 2 * round - 12).unwrap();
                    }
                }
                engine.write(&mut batch).unwrap();
            }
            written.store(true, Ordering::Release);
        })
    };
    let readers: Vec<_> = (1..=GROUPS)
        .map(|g| {
            let engine = engine.clone();
            let written = written.clone();
            std::thread::spawn(move || {
                let group = engine.group(g).unwrap();
                let mut checked = 0u64;
                // At least 300 reads, and on until one after the last write (a reader scheduled
                // before the writer would otherwise see only empty logs). Bounded: the writer
                // ends, and the reads after it succeed.
                for read in 0u64.. {
                    let done = written.load(Ordering::Acquire);
                    if read >= 300 && done && checked > 0 {
                        break;
                    }
                    assert!(read < 100_000_000, "group {g}: the writer never finished");
                    let (first, last) = (group.first_index().unwrap(), group.last_index().unwrap());
                    let es = match group.entries(first, last + 1, u64::MAX) {
                        Ok(es) => es,
                        // The log moved between the calls: a clean refusal.
                        Err(
                            Error::Compacted | Error::ContractViolation(_) | Error::Unavailable,
                        ) => continue,
                        Err(e) => panic!("group {g}: {e}"),
                    };
                    for (k, e) in es.iter().enumerate() {
                        assert_eq!(e.index, first + k as u64, "group {g}: consecutive entries");
                        assert_eq!(
                            *e,
                            entry(g, e.index, e.term, 100 + 20 * g as usize),
                            "group {g}"
                        );
                    }
                    checked += es.len() as u64;
                }
                checked
            })
        })
        .collect();
    writer.join().unwrap();
    let checked: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(checked > 0, "the readers saw entries");
    for g in 1..=GROUPS {
        let group = engine.group(g).unwrap();
        assert_eq!(group.last_index().unwrap(), 2 * ROUNDS);
        let first = group.first_index().unwrap();
        let es = group.entries(first, 2 * ROUNDS + 1, u64::MAX).unwrap();
        assert!(es.iter().all(|e| *e == entry(g, e.index, e.term, 100 + 20 * g as usize)));
    }
}

#[test]
fn on_the_real_file_system_groups_and_snapshots_survive_reopen_and_a_second_open_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let options = WalOptions { prepare_in_background: true, ..options() };
    let mut models: BTreeMap<u64, Model> = BTreeMap::new();
    let engine = LogEngine::open(tmp.path(), options.clone()).unwrap();
    assert!(matches!(LogEngine::open(tmp.path(), options.clone()), Err(Error::Locked)));
    let mut batch = WriteBatch::new();
    for round in 0..10u64 {
        for g in 1..=5u64 {
            let model = models.entry(g).or_default();
            let es = run(g, model.last() + 1, model.last() + 3, 1, 400);
            batch.save(g, Some(&hs(1, model.last())), &es).unwrap();
            model.hard_state = hs(1, model.last());
            assert_eq!(model.append(&es), Outcome::Ok(()));
        }
        engine.write(&mut batch).unwrap();
        if round == 6 {
            for g in [2, 4] {
                let data = snapshot_data(g, 10);
                engine
                    .group(g)
                    .unwrap()
                    .create_snapshot(10, Some(voters(&[1])), data.clone())
                    .unwrap();
                let model = models.get_mut(&g).unwrap();
                assert!(model.create_snapshot(10, Some(voters(&[1])), data).is_ok());
                engine.group(g).unwrap().compact(10).unwrap();
                assert_eq!(model.compact(10), Outcome::Ok(()));
            }
        }
    }
    engine.remove_group(5).unwrap();
    models.insert(5, Model::default());
    engine.close().unwrap();
    drop(engine);
    let engine = LogEngine::open(tmp.path(), options).unwrap();
    assert_eq!(engine.group_ids(), vec![1, 2, 3, 4]);
    for (&g, model) in &models {
        assert_same_answers(model, &engine.group(g).unwrap(), &format!("group {g} reopened"));
    }
}

#[test]
fn every_handle_on_a_group_sees_its_snapshot_in_progress_among_many_other_handles() {
    let fs = CrashFs::new();
    let engine = open(&fs, &options()).unwrap();
    let first = engine.group(1).unwrap();
    first.save(Some(&hs(1, 5)), &run(1, 1, 10, 1, 50)).unwrap();
    // Many handles on other groups come and go (the engine prunes its handle table as it grows);
    // some are kept, so the table holds more than a few entries.
    let kept: Vec<GroupStorage> = (2..300).map(|g| engine.group(g).unwrap()).collect();
    for g in 300..1_000 {
        drop(engine.group(g).unwrap());
    }
    let second = engine.group(1).unwrap();
    let mut writer = first.snapshot_writer(8, Some(voters(&[1]))).unwrap();
    std::io::Write::write_all(&mut writer, b"state at 8").unwrap();
    assert!(
        matches!(second.snapshot(), Err(Error::SnapshotTemporarilyUnavailable)),
        "a second handle sees the snapshot being written"
    );
    let snapshot = writer.finish().unwrap();
    assert_eq!(second.snapshot().unwrap(), snapshot);
    assert_eq!(snapshot.data, Bytes::from_static(b"state at 8"));
    assert_eq!(kept.len(), 298);
}

#[test]
fn unknown_files_in_wal_and_snap_do_not_disturb_open() {
    let fs = CrashFs::new();
    let engine = open(&fs, &options()).unwrap();
    engine.group(1).unwrap().save(Some(&hs(1, 3)), &run(1, 1, 5, 1, 100)).unwrap();
    engine.group(2).unwrap().save(None, &run(2, 1, 3, 1, 100)).unwrap();
    engine.group(2).unwrap().create_snapshot(2, Some(voters(&[1])), Bytes::from("s")).unwrap();
    engine.close().unwrap();
    drop(engine);
    let strangers =
        ["/node/wal/notes.txt", "/node/wal/README", "/node/snap/notes.txt", "/node/snap/x"];
    for path in strangers {
        fs.write_file_raw(Path::new(path), b"not raftwal's").unwrap();
    }
    let engine = open(&fs, &options()).unwrap();
    assert_eq!(engine.group_ids(), vec![1, 2]);
    assert_eq!(engine.group(1).unwrap().entries(1, 6, u64::MAX).unwrap(), run(1, 1, 5, 1, 100));
    assert_eq!(engine.group(2).unwrap().entries(3, 4, u64::MAX).unwrap(), run(2, 3, 3, 1, 100));
    assert_eq!(engine.group(2).unwrap().snapshot().unwrap().data, Bytes::from("s"));
    engine.group(1).unwrap().append(&run(1, 6, 6, 1, 100)).unwrap();
    assert_eq!(engine.group(1).unwrap().last_index().unwrap(), 6);
}

#[test]
fn group_ids_lists_exactly_the_groups_with_state() {
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options()).unwrap();
    engine.group(5).unwrap().set_hard_state(hs(1, 0)).unwrap();
    engine.group(9).unwrap().append(&run(9, 1, 3, 1, 10)).unwrap();
    let installed = Snapshot {
        metadata: SnapshotMetadata { index: 10, term: 2, conf_state: voters(&[1, 2]) },
        data: Bytes::from("installed"),
    };
    engine.group(11).unwrap().apply_snapshot(installed).unwrap();
    let handle_only = engine.group(20).unwrap();
    assert_eq!(engine.group_ids(), vec![5, 9, 11]);
    // A group compacted to its last entry still has a dummy: it keeps state.
    engine.group(9).unwrap().compact(3).unwrap();
    assert_eq!(engine.group_ids(), vec![5, 9, 11]);
    engine.remove_group(5).unwrap();
    assert_eq!(engine.group_ids(), vec![9, 11]);
    drop(handle_only);
    engine = reopen(&fs, engine, &options());
    assert_eq!(engine.group_ids(), vec![9, 11]);
    engine.remove_group(9).unwrap();
    engine.remove_group(11).unwrap();
    engine = reopen(&fs, engine, &options());
    assert!(engine.group_ids().is_empty());
}

#[test]
fn items_of_one_group_in_one_batch_apply_in_order() {
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options()).unwrap();
    let mut model = Model::default();
    let items = vec![
        Item::Save(1, Some(hs(1, 0)), run(1, 1, 5, 1, 200)),
        // Overwrites the batch's own entries from 3 on.
        Item::Save(1, Some(hs(2, 2)), run(1, 3, 6, 2, 300)),
        // Compacts within what the batch wrote.
        Item::Compact(1, 4),
        Item::Save(1, None, run(1, 7, 8, 2, 100)),
        Item::Save(2, Some(hs(5, 0)), vec![]),
        // The newest hard state wins.
        Item::Save(1, Some(hs(3, 6)), run(1, 6, 6, 3, 50)),
    ];
    for item in &items {
        match item {
            Item::Save(1, state, es) => {
                assert_eq!(model.append(es), Outcome::Ok(()));
                if let Some(state) = state {
                    model.hard_state = *state;
                }
            }
            Item::Compact(1, index) => assert_eq!(model.compact(*index), Outcome::Ok(())),
            _ => {}
        }
    }
    write_batch(&engine, &items).unwrap();
    for round in 0..2 {
        assert_same_answers(&model, &engine.group(1).unwrap(), &format!("round {round}"));
        let two = engine.group(2).unwrap();
        assert_eq!(two.initial_state().unwrap().hard_state, hs(5, 0), "round {round}");
        assert_eq!(two.last_index().unwrap(), 0, "round {round}");
        drop(two);
        engine = reopen(&fs, engine, &options());
    }
    // A compaction at or below the dummy refuses its batch: group 2's hard state is not written.
    let refused = vec![Item::Save(2, Some(hs(6, 0)), vec![]), Item::Compact(1, 3)];
    assert!(matches!(write_batch(&engine, &refused), Err(Error::Compacted)));
    assert_eq!(engine.group(2).unwrap().initial_state().unwrap().hard_state, hs(5, 0));
    // So does a gap within the batch's own entries.
    let gap = vec![
        Item::Save(2, Some(hs(6, 0)), run(2, 1, 2, 6, 10)),
        Item::Save(2, None, run(2, 4, 4, 6, 10)),
    ];
    assert!(matches!(write_batch(&engine, &gap), Err(Error::ContractViolation(_))));
    let two = engine.group(2).unwrap();
    assert_eq!((two.last_index().unwrap(), two.initial_state().unwrap().hard_state), (0, hs(5, 0)));
}

#[test]
fn a_removed_group_stays_removed_whichever_step_a_purge_rewrote_it_at() {
    // Threshold 0: every purge rewrites whatever pins a sealed segment.
    let options = WalOptions { purge_threshold_bytes: 0, ..options() };
    // Some(term): the group (empty) gets entries 1..=5 of that term; None: it is removed.
    let cases: [&[Option<u64>]; 5] = [
        &[Some(1), None, Some(2), None, Some(3), None],
        &[Some(1), None, Some(2), None, Some(3)],
        &[Some(1), None, Some(2), None],
        &[Some(1), None, Some(2)],
        &[Some(1), None],
    ];
    for steps in cases {
        for purge_after in 1..=steps.len() {
            let context = format!("{steps:?}, purge after step {purge_after}");
            let fs = CrashFs::new();
            let mut engine = open(&fs, &options).unwrap();
            for (k, step) in steps.iter().enumerate() {
                match step {
                    Some(term) => {
                        engine.group(1).unwrap().save(None, &run(1, 1, 5, *term, 1024)).unwrap()
                    }
                    None => engine.remove_group(1).unwrap(),
                }
                if k + 1 == purge_after {
                    engine.purge().unwrap();
                }
            }
            for round in 0..2 {
                engine = reopen(&fs, engine, &options);
                let group = engine.group(1).unwrap();
                match steps.last().unwrap() {
                    Some(term) => {
                        assert_eq!(engine.group_ids(), vec![1], "{context}, round {round}");
                        let es = group.entries(1, 6, u64::MAX).unwrap();
                        assert_eq!(es, run(1, 1, 5, *term, 1024), "{context}, round {round}");
                    }
                    None => {
                        assert!(engine.group_ids().is_empty(), "{context}, round {round}");
                        assert_eq!(group.last_index().unwrap(), 0, "{context}, round {round}");
                    }
                }
                drop(group);
                engine.purge().unwrap();
            }
        }
    }
}

#[test]
fn groups_of_entries_larger_than_a_segment_are_rewritten_and_survive_reopen() {
    let options = WalOptions { purge_threshold_bytes: 0, max_record_bytes: 64 << 10, ..options() };
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options).unwrap();
    let first_segment = segment_names(&fs).into_iter().min().unwrap();
    for g in 1..=3 {
        engine.group(g).unwrap().save(Some(&hs(1, 10)), &run(g, 1, 10, 1, 6 << 10)).unwrap();
    }
    let report = engine.purge().unwrap();
    assert!(!segment_names(&fs).contains(&first_segment), "rewritten away: {report:?}");
    for round in 0..2 {
        assert_eq!(engine.group_ids(), vec![1, 2, 3], "round {round}");
        for g in 1..=3 {
            let group = engine.group(g).unwrap();
            assert_eq!(group.entries(1, 11, u64::MAX).unwrap(), run(g, 1, 10, 1, 6 << 10));
        }
        engine = reopen(&fs, engine, &options);
    }
}

/// One write per entry: a write never spans segments, so these fill several.
fn append_one_by_one(group: &GroupStorage, first: u64, last: u64) {
    for i in first..=last {
        group.append(&run(group.id(), i, i, 1, 1024)).unwrap();
    }
}

#[test]
fn a_segment_whose_removal_fails_is_kept_and_released_by_a_later_purge() {
    // Released segments are deleted, not kept for reuse: the removal is what fails here.
    let options =
        WalOptions { purge_threshold_bytes: 1 << 40, recycle_segments: false, ..options() };
    let fs = CrashFs::new();
    let failing = Arc::new(AtomicBool::new(true));
    let hook_failing = failing.clone();
    let hook: Hook = Arc::new(move |event: &OpEvent<'_>| {
        let segment = event.path.is_some_and(|p| p.extension().is_some_and(|e| e == "wal"));
        if event.kind == OpKind::RemoveFile && segment && hook_failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("removal refused"));
        }
        Ok(())
    });
    fs.set_hook(Some(hook));
    let mut engine = open(&fs, &options).unwrap();
    let group = engine.group(1).unwrap();
    append_one_by_one(&group, 1, 20);
    let before = segment_names(&fs);
    assert!(before.len() > 3, "the entries span several segments: {before:?}");
    group.compact(18).unwrap();
    assert!(matches!(engine.purge(), Err(Error::Io(_))), "the refused removal is reported");
    assert_eq!(segment_names(&fs), before, "every segment stays while removals fail");
    assert_eq!((group.first_index().unwrap(), group.last_index().unwrap()), (19, 20));
    drop(group);
    // A reopen while the old segments are still there.
    engine = reopen(&fs, engine, &options);
    let group = engine.group(1).unwrap();
    assert_eq!(group.entries(19, 21, u64::MAX).unwrap(), run(1, 19, 20, 1, 1024));
    failing.store(false, Ordering::SeqCst);
    let report = engine.purge().unwrap();
    assert!(!report.deleted_segments.is_empty(), "the next purge releases them");
    append_one_by_one(&group, 21, 40);
    group.compact(38).unwrap();
    append_one_by_one(&group, 41, 60);
    drop(group);
    engine = reopen(&fs, engine, &options);
    let group = engine.group(1).unwrap();
    assert_eq!((group.first_index().unwrap(), group.last_index().unwrap()), (39, 60));
    assert_eq!(group.entries(39, 61, u64::MAX).unwrap(), run(1, 39, 60, 1, 1024));
}

#[test]
fn a_batch_the_disk_refuses_is_whole_or_absent_in_every_group_and_poisons_the_log() {
    let first: Vec<Item> =
        (1..=3).map(|g| Item::Save(g, Some(hs(1, 2)), run(g, 1, 3, 1, 700))).collect();
    let second = vec![
        Item::Save(1, Some(hs(2, 3)), run(1, 3, 6, 2, 700)),
        Item::Save(2, None, run(2, 4, 6, 1, 700)),
        Item::Compact(3, 2),
        Item::Save(4, Some(hs(2, 0)), run(4, 1, 2, 2, 700)),
    ];
    let states = crash_states(&[first.clone(), second.clone()]);
    for kind in [FaultKind::WriteEio, FaultKind::ShortWrite, FaultKind::SyncEio] {
        let mut refused = 0;
        // The fault lands on each operation of the second batch in turn (it has fewer than 16).
        for offset in 0..16 {
            for seed in [None, Some(offset)] {
                let context = format!("{kind:?} at op +{offset}, power cut {seed:?}");
                let fs = CrashFs::new();
                let engine = open(&fs, &options()).unwrap();
                write_batch(&engine, &first).unwrap();
                fs.inject(Fault { at_op: fs.op_count() + offset, kind });
                let acked = write_batch(&engine, &second).is_ok();
                if !acked {
                    refused += 1;
                    assert!(
                        matches!(write_batch(&engine, &first), Err(Error::Poisoned)),
                        "{context}: the log refuses writes once a write or sync failed"
                    );
                }
                drop(engine);
                match seed {
                    Some(seed) => fs.crash(seed),
                    None => fs.crash_lose_all_unsynced(),
                }
                fs.clear_faults();
                let engine = open(&fs, &options()).unwrap();
                let found: Vec<usize> =
                    (0..3).filter(|k| matches_state(&engine, &states[*k]).is_ok()).collect();
                if acked {
                    assert_eq!(found, vec![2], "{context}: an acknowledged batch is durable");
                } else {
                    // All of the batch in every group, or none of it in any.
                    assert!(found == [1] || found == [2], "{context}: {found:?}");
                }
            }
        }
        // A short write is finished by the writer's loop; the others must fail the batch.
        if kind != FaultKind::ShortWrite {
            assert!(refused > 0, "{kind:?} made some write fail");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// etcd's storage semantics on interleaved groups.

/// Groups driven side by side in one engine.
const GROUPS: [u64; 3] = [1, 2, 3];

/// Marks the entries and snapshot data of a call with the group's id, so that an answer taken
/// from another group differs.
fn tag(call: Call, group: u64) -> Call {
    let mark = |data: &[u8]| -> Bytes { [&[group as u8][..], data].concat().into() };
    match call {
        Call::Append(es) => {
            Call::Append(es.into_iter().map(|e| Entry { data: mark(&e.data), ..e }).collect())
        }
        Call::CreateSnapshot(i, cs, data) => Call::CreateSnapshot(i, cs, mark(&data)),
        Call::ApplySnapshot(s) => Call::ApplySnapshot(Snapshot { data: mark(&s.data), ..s }),
        other => other,
    }
}

/// The same call on the crate's MemoryStorage, the reference each group must answer like.
fn apply_memory(memory: &MemoryStorage, call: &Call) -> Outcome<()> {
    match call.clone() {
        Call::Append(es) => memory.append(&es).into(),
        Call::SetHardState(state) => memory.set_hard_state(state).into(),
        Call::Compact(i) => memory.compact(i).into(),
        Call::CreateSnapshot(i, cs, data) => memory.create_snapshot(i, cs, data).map(|_| ()).into(),
        Call::ApplySnapshot(s) => memory.apply_snapshot(s).into(),
        Call::Reopen => Outcome::Ok(()),
    }
}

/// Runs `ops` on three groups of one engine, on the naive model and on a MemoryStorage per
/// group; an append with `batched` goes through a WriteBatch. Every call must answer as the
/// models do, and after each step the group touched (after a reopen, every group) must answer
/// exactly like both.
fn run_groups_against_models(options: &WalOptions, ops: &[(usize, Op, bool)]) {
    let fs = CrashFs::new();
    let mut engine = open(&fs, options).unwrap();
    let mut models = vec![Model::default(); GROUPS.len()];
    let memories: Vec<MemoryStorage> = GROUPS.iter().map(|_| MemoryStorage::new()).collect();
    let check = |engine: &LogEngine, which: usize, models: &[Model], context: &str| {
        let group = engine.group(GROUPS[which]).unwrap();
        assert_same_answers(&models[which], &group, context);
        if let Err(difference) = raftwal::fuzzing::same_answers(&memories[which], &group) {
            panic!("{difference} (against MemoryStorage) {context}");
        }
    };
    for (step, (which, op, batched)) in ops.iter().enumerate() {
        let (id, model) = (GROUPS[*which], &mut models[*which]);
        let call = tag(resolve(op, model, step), id);
        let memory = apply_memory(&memories[*which], &call);
        let group = engine.group(id).unwrap();
        let (got, want): (Outcome<()>, Outcome<()>) = match call.clone() {
            Call::Append(es) if *batched => {
                let mut batch = WriteBatch::new();
                let got = match batch.save(id, None, &es) {
                    Ok(()) => engine.write(&mut batch),
                    Err(e) => Err(e),
                };
                (got.into(), model.append(&es))
            }
            Call::Append(es) => (group.append(&es).into(), model.append(&es)),
            Call::SetHardState(state) => {
                model.hard_state = state;
                (group.set_hard_state(state).into(), Outcome::Ok(()))
            }
            Call::Compact(i) => (group.compact(i).into(), model.compact(i)),
            Call::CreateSnapshot(i, cs, data) => {
                let got = Outcome::from(group.create_snapshot(i, cs.clone(), data.clone()));
                let want = model.create_snapshot(i, cs, data);
                assert_eq!(got, want, "step {step} group {id} {call:?}");
                (got.map(|_| ()), want.map(|_| ()))
            }
            Call::ApplySnapshot(s) => {
                (group.apply_snapshot(s.clone()).into(), model.apply_snapshot(s))
            }
            Call::Reopen => {
                drop(group);
                engine = reopen(&fs, engine, options);
                for which in 0..GROUPS.len() {
                    check(&engine, which, &models, &format!("after the reopen at step {step}"));
                }
                continue;
            }
        };
        assert_eq!(got, want, "step {step} group {id} {call:?}");
        assert_eq!(got, memory, "step {step} group {id} {call:?}: MemoryStorage answered");
        drop(group);
        check(&engine, *which, &models, &format!("group {id} after step {step} {call:?}"));
    }
    engine = reopen(&fs, engine, options);
    for which in 0..GROUPS.len() {
        check(&engine, which, &models, "at the end");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_groups_answer_like_their_models_across_reopens(
        ops in proptest::collection::vec((0..GROUPS.len(), arb_op(), any::<bool>()), 1..48)
    ) {
        run_groups_against_models(&options(), &ops);
    }

    #[test]
    fn interleaved_groups_answer_like_their_models_from_a_shared_cache(
        ops in proptest::collection::vec((0..GROUPS.len(), arb_op(), any::<bool>()), 1..48)
    ) {
        // A cache holding every group's newest entries: answers come from it, not the segments.
        let options = WalOptions { cache_bytes: 64 << 10, ..options() };
        run_groups_against_models(&options, &ops);
    }
}

// ---------------------------------------------------------------------------------------------
// Batch atomicity under crashes.

#[derive(Clone, Debug)]
enum Item {
    Save(u64, Option<HardState>, Vec<Entry>),
    Compact(u64, u64),
}

/// Batches over five groups: entries, overwrites, hard states and compactions mixed, most
/// batches touching three or more groups.
fn crash_workload() -> Vec<Vec<Item>> {
    let mut batches = Vec::new();
    let mut last = [0u64; 6];
    let mut term = [1u64; 6];
    for round in 0..14u64 {
        let mut items = Vec::new();
        for g in 1..=5u64 {
            if (round + g) % 4 == 0 {
                continue;
            }
            let k = g as usize;
            let overwrite = round % 6 == 5 && last[k] > 2;
            if overwrite {
                term[k] += 1;
            }
            let first = if overwrite { last[k] - 1 } else { last[k] + 1 };
            let count = 1 + (round + g) % 3;
            let es = run(
                g,
                first,
                first + count - 1,
                term[k],
                60 + ((round * 7 + g * 13) % 5) as usize * 50,
            );
            last[k] = first + count - 1;
            let state = (round % 2 == 0).then(|| hs(term[k], last[k] - 1));
            items.push(Item::Save(g, state, es));
            if round % 4 == 3 && last[k] > 4 {
                items.push(Item::Compact(g, last[k] - 3));
            }
        }
        batches.push(items);
    }
    batches
}

/// The models of every group after each prefix of the batches.
fn crash_states(batches: &[Vec<Item>]) -> Vec<BTreeMap<u64, Model>> {
    let mut models: BTreeMap<u64, Model> = (1..=5).map(|g| (g, Model::default())).collect();
    let mut states = vec![models.clone()];
    for items in batches {
        for item in items {
            let model = match item {
                Item::Save(g, ..) | Item::Compact(g, _) => models.get_mut(g).unwrap(),
            };
            let outcome = match item {
                Item::Save(_, state, es) => {
                    let r = model.append(es);
                    if let Some(state) = state {
                        model.hard_state = *state;
                    }
                    r
                }
                Item::Compact(_, index) => model.compact(*index),
            };
            assert_eq!(outcome, Outcome::Ok(()), "the workload is valid: {item:?}");
        }
        states.push(models.clone());
    }
    states
}

fn write_batch(engine: &LogEngine, items: &[Item]) -> Result<()> {
    let mut batch = WriteBatch::new();
    for item in items {
        match item {
            Item::Save(g, state, es) => batch.save(*g, state.as_ref(), es)?,
            Item::Compact(g, index) => batch.compact(*g, *index)?,
        }
    }
    engine.write(&mut batch)
}

/// Whether every group of `engine` equals its model in `state`.
fn matches_state(
    engine: &LogEngine,
    state: &BTreeMap<u64, Model>,
) -> std::result::Result<(), String> {
    state.iter().try_for_each(|(&g, model)| same_log(model, &engine.group(g).unwrap()))
}

/// Crashes the workload at operation `at`; returns whether the halt was reached.
fn crash_batches_once(
    options: &WalOptions,
    batches: &[Vec<Item>],
    states: &[BTreeMap<u64, Model>],
    at: u64,
    seed: Option<u64>,
) -> bool {
    let fs = CrashFs::new();
    fs.inject(Fault { at_op: at, kind: FaultKind::Halt });
    let mut acked = 0;
    if let Ok(engine) = open(&fs, options) {
        for items in batches {
            if write_batch(&engine, items).is_err() {
                break;
            }
            acked += 1;
        }
    }
    let halted = fs.is_halted();
    match seed {
        Some(seed) => fs.crash(seed),
        None => fs.crash_lose_all_unsynced(),
    }
    fs.clear_faults();
    let engine = open(&fs, options)
        .unwrap_or_else(|e| panic!("reopen after a crash at op {at} ({seed:?}): {e}"));
    // Every acknowledged batch, and the one in flight whole or not at all, across all groups.
    let newest = (acked + 1).min(batches.len());
    let differences: Vec<String> =
        (acked..=newest).filter_map(|k| matches_state(&engine, &states[k]).err()).collect();
    assert!(
        differences.len() < newest - acked + 1,
        "crash at op {at} ({seed:?}), {acked} batches acknowledged: {differences:?}"
    );
    halted
}

/// Crashes the batch workload at every I/O operation, three power cuts each; returns the
/// crash points.
fn crash_at_every_operation(options: &WalOptions) -> u64 {
    let batches = crash_workload();
    let states = crash_states(&batches);
    let mut points = 0u64;
    // Bounded: the workload's I/O operations are finite; checked below.
    for at in 0.. {
        let mut reached = crash_batches_once(options, &batches, &states, at, None);
        for seed in 0..2 {
            reached |= crash_batches_once(options, &batches, &states, at, Some(at * 2 + seed));
        }
        if !reached {
            break;
        }
        points += 1;
        assert!(points < 100_000, "the workload must end");
    }
    points
}

#[test]
fn a_crash_at_every_io_operation_keeps_every_acknowledged_batch_and_each_batch_whole() {
    let points = crash_at_every_operation(&options());
    assert!(points > 50, "the workload performs many I/O operations, saw {points}");
    println!("engine crash points checked: {points} x 3 power cuts");
}

#[test]
fn a_crash_at_every_io_operation_while_purges_rewrite_groups_keeps_every_batch_whole() {
    // Threshold 0: every rollover releases what it can and rewrites the groups pinning the rest.
    let options = WalOptions { purge_threshold_bytes: 0, rewrite_max_entries: 16, ..options() };
    let points = crash_at_every_operation(&options);
    assert!(points > 50, "the workload performs many I/O operations, saw {points}");
    println!("engine crash points checked with rewrites: {points} x 3 power cuts");
}

/// Writes `rounds` batches from each of `threads` threads; thread `t`'s batch `k` saves entry
/// `k + 1` to both groups `2t + 1` and `2t + 2`. Returns how many batches each thread had
/// acknowledged when the first write failed.
fn concurrent_pairs(engine: &LogEngine, threads: u64, rounds: u64) -> Vec<u64> {
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut acked = 0;
                for k in 1..=rounds {
                    let mut batch = WriteBatch::new();
                    for g in [2 * t + 1, 2 * t + 2] {
                        batch.save(g, Some(&hs(1, k)), &run(g, k, k, 1, 300)).unwrap();
                    }
                    if engine.write(&mut batch).is_err() {
                        break;
                    }
                    acked = k;
                }
                acked
            })
        })
        .collect();
    writers.into_iter().map(|w| w.join().unwrap()).collect()
}

#[test]
fn concurrent_batches_crashed_anywhere_keep_every_acknowledged_batch_whole() {
    const THREADS: u64 = 3;
    const ROUNDS: u64 = 12;
    // The workload's length in operations, from one clean run.
    let total = {
        let fs = CrashFs::new();
        let engine = open(&fs, &options()).unwrap();
        let start = fs.op_count();
        assert_eq!(concurrent_pairs(&engine, THREADS, ROUNDS), vec![ROUNDS; THREADS as usize]);
        fs.op_count() - start
    };
    assert!(total > 30, "the workload performs many operations: {total}");
    // Bounded: at most 60 crash points, each with two power cuts.
    for at in (0..total).step_by((total as usize).div_ceil(60)) {
        for seed in [None, Some(at)] {
            let fs = CrashFs::new();
            let engine = open(&fs, &options()).unwrap();
            fs.inject(Fault { at_op: fs.op_count() + at, kind: FaultKind::Halt });
            let acked = concurrent_pairs(&engine, THREADS, ROUNDS);
            drop(engine);
            match seed {
                Some(seed) => fs.crash(seed),
                None => fs.crash_lose_all_unsynced(),
            }
            fs.clear_faults();
            let engine = open(&fs, &options()).unwrap();
            for t in 0..THREADS {
                let context = format!("crash at op +{at} ({seed:?}), thread {t}");
                let (a, b) = (engine.group(2 * t + 1).unwrap(), engine.group(2 * t + 2).unwrap());
                let last = a.last_index().unwrap();
                assert_eq!(b.last_index().unwrap(), last, "{context}: a batch is whole");
                let k = acked[t as usize];
                assert!(last == k || last == k + 1, "{context}: {last} kept, {k} acknowledged");
                for (g, group) in [(2 * t + 1, &a), (2 * t + 2, &b)] {
                    if last > 0 {
                        let es = group.entries(1, last + 1, u64::MAX).unwrap();
                        assert_eq!(es, run(g, 1, last, 1, 300), "{context}");
                    }
                    let state = group.initial_state().unwrap().hard_state;
                    let want = if last > 0 { hs(1, last) } else { HardState::default() };
                    assert_eq!(state, want, "{context}: group {g}'s hard state");
                }
            }
        }
    }
}

/// One step of the snapshot-and-removal workload, on group `.0`.
#[derive(Clone, Debug)]
enum GroupStep {
    /// A membership-only snapshot (index 0) installed in an empty group.
    Bootstrap(u64),
    Save(u64, HardState, Vec<Entry>),
    Snapshot(u64, u64),
    Remove(u64),
    Compact(u64, u64),
}

fn snapshot_removal_workload() -> Vec<GroupStep> {
    vec![
        GroupStep::Bootstrap(3),
        GroupStep::Save(3, hs(3, 0), Vec::new()),
        GroupStep::Save(1, hs(1, 3), run(1, 1, 6, 1, 200)),
        GroupStep::Save(2, hs(1, 4), run(2, 1, 6, 1, 200)),
        GroupStep::Snapshot(1, 4),
        GroupStep::Snapshot(2, 5),
        GroupStep::Remove(1),
        GroupStep::Save(1, hs(7, 1), run(1, 1, 3, 7, 200)),
        GroupStep::Snapshot(1, 2),
        GroupStep::Compact(2, 5),
        GroupStep::Remove(2),
        GroupStep::Remove(3),
    ]
}

fn bootstrap_snapshot() -> Snapshot {
    Snapshot {
        metadata: SnapshotMetadata { index: 0, term: 0, conf_state: voters(&[1, 2, 3]) },
        data: Bytes::from_static(b"bootstrap"),
    }
}

fn snapshot_data(group: u64, index: u64) -> Bytes {
    Bytes::from(vec![(group * 16 + index) as u8; 500])
}

fn apply_group_step(engine: &LogEngine, step: &GroupStep) -> Result<()> {
    match step {
        GroupStep::Bootstrap(g) => engine.group(*g)?.apply_snapshot(bootstrap_snapshot()),
        GroupStep::Save(g, state, es) => engine.group(*g)?.save(Some(state), es),
        GroupStep::Snapshot(g, i) => engine
            .group(*g)?
            .create_snapshot(*i, Some(voters(&[1, 2])), snapshot_data(*g, *i))
            .map(|_| ()),
        GroupStep::Remove(g) => engine.remove_group(*g),
        GroupStep::Compact(g, i) => engine.group(*g)?.compact(*i),
    }
}

/// Both groups' models after each prefix of the steps.
fn group_step_states(steps: &[GroupStep]) -> Vec<BTreeMap<u64, Model>> {
    let mut models: BTreeMap<u64, Model> =
        [(1, Model::default()), (2, Model::default()), (3, Model::default())].into();
    let mut states = vec![models.clone()];
    for step in steps {
        let ok = match step {
            GroupStep::Bootstrap(g) => {
                models.get_mut(g).unwrap().apply_snapshot(bootstrap_snapshot())
            }
            GroupStep::Save(g, state, es) => {
                let model = models.get_mut(g).unwrap();
                model.hard_state = *state;
                model.append(es)
            }
            GroupStep::Snapshot(g, i) => models
                .get_mut(g)
                .unwrap()
                .create_snapshot(*i, Some(voters(&[1, 2])), snapshot_data(*g, *i))
                .map(|_| ()),
            GroupStep::Remove(g) => {
                models.insert(*g, Model::default());
                Outcome::Ok(())
            }
            GroupStep::Compact(g, i) => models.get_mut(g).unwrap().compact(*i),
        };
        assert_eq!(ok, Outcome::Ok(()), "the workload is valid: {step:?}");
        states.push(models.clone());
    }
    states
}

/// Whether both groups match `state`, snapshots and snapshot files included.
fn matches_with_snapshots(
    fs: &CrashFs,
    engine: &LogEngine,
    state: &BTreeMap<u64, Model>,
) -> std::result::Result<(), String> {
    matches_state(engine, state)?;
    for (&g, model) in state {
        let got = engine.group(g).unwrap().snapshot().map_err(|e| format!("group {g}: {e}"))?;
        if got != model.snapshot {
            return Err(format!("group {g}: snapshot {:?}", got.metadata));
        }
        let files = snapshot_files_of(fs, g);
        if model.snapshot.metadata == SnapshotMetadata::default() && !files.is_empty() {
            return Err(format!("group {g} has no snapshot but files {files:?}"));
        }
    }
    Ok(())
}

#[test]
fn a_crash_at_every_io_operation_of_snapshots_and_removals_leaves_no_orphan() {
    let steps = snapshot_removal_workload();
    let states = group_step_states(&steps);
    let mut points = 0u64;
    // Bounded: the workload's I/O operations are finite; checked below.
    for at in 0.. {
        let mut reached = false;
        for seed in [None, Some(at)] {
            let fs = CrashFs::new();
            fs.inject(Fault { at_op: at, kind: FaultKind::Halt });
            let mut acked = 0;
            if let Ok(engine) = open(&fs, &options()) {
                for step in &steps {
                    if apply_group_step(&engine, step).is_err() {
                        break;
                    }
                    acked += 1;
                }
            }
            reached |= fs.is_halted();
            match seed {
                Some(seed) => fs.crash(seed),
                None => fs.crash_lose_all_unsynced(),
            }
            fs.clear_faults();
            let engine = open(&fs, &options())
                .unwrap_or_else(|e| panic!("reopen after a crash at op {at} ({seed:?}): {e}"));
            let newest = (acked + 1).min(steps.len());
            let differences: Vec<String> = (acked..=newest)
                .filter_map(|k| matches_with_snapshots(&fs, &engine, &states[k]).err())
                .collect();
            assert!(
                differences.len() < newest - acked + 1,
                "crash at op {at} ({seed:?}), {acked} steps acknowledged: {differences:?}"
            );
        }
        if !reached {
            break;
        }
        points += 1;
        assert!(points < 100_000, "the workload must end");
    }
    assert!(points > 30, "the workload performs many I/O operations, saw {points}");
    println!("snapshot and removal crash points checked: {points} x 2 power cuts");
}

// ---------------------------------------------------------------------------------------------
// Cold groups and the log's size.

#[test]
fn a_hundred_cold_groups_among_a_thousand_keep_the_log_within_its_threshold() {
    const SEGMENT: u64 = 64 << 10;
    let options = WalOptions {
        segment_size_bytes: SEGMENT,
        max_record_bytes: 64 << 10,
        purge_threshold_bytes: 8 * SEGMENT,
        prepare_in_background: false,
        cache_bytes: 64 << 10,
        ..WalOptions::default()
    };
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options).unwrap();
    // Groups 0..100 are cold: a few entries each, written once, early.
    let mut batch = WriteBatch::new();
    let cold: Vec<(u64, Vec<Entry>)> = (0..100).map(|g| (g, run(g, 1, 3, 1, 60))).collect();
    for (g, es) in &cold {
        batch.save(*g, Some(&hs(1, 3)), es).unwrap();
    }
    engine.write(&mut batch).unwrap();
    // Groups 100..1000 keep appending and compacting.
    const ROUNDS: u64 = 30;
    let mut peak = 0;
    for round in 1..=ROUNDS {
        for g in 100..1000 {
            batch.save(g, None, &run(g, round, round, 1, 100)).unwrap();
            if round > 1 {
                batch.compact(g, round - 1).unwrap();
            }
        }
        engine.write(&mut batch).unwrap();
        peak = peak.max(engine.metrics().bytes_on_disk);
    }
    let written = engine.metrics().bytes_written;
    assert!(written > 4 * options.purge_threshold_bytes, "the churn wrote {written} bytes");
    let report = engine.purge().unwrap();
    let bound = options.purge_threshold_bytes + 2 * SEGMENT;
    assert!(
        report.bytes_on_disk <= bound,
        "{} bytes on disk after the churn, bound {bound} (peak {peak}, top pinning {:?})",
        report.bytes_on_disk,
        report.top_pinning
    );
    assert_eq!(engine.metrics().bytes_on_disk, report.bytes_on_disk);
    println!(
        "cold groups: {written} bytes written, peak {peak} on disk, {} after the purge",
        report.bytes_on_disk
    );
    engine = reopen(&fs, engine, &options);
    for (g, es) in &cold {
        let group = engine.group(*g).unwrap();
        assert_eq!(group.entries(1, 4, u64::MAX).unwrap(), *es, "cold group {g}");
        assert_eq!(group.initial_state().unwrap().hard_state, hs(1, 3), "cold group {g}");
    }
    for g in [100, 555, 999] {
        let group = engine.group(g).unwrap();
        assert_eq!(
            group.entries(ROUNDS, ROUNDS + 1, u64::MAX).unwrap(),
            run(g, ROUNDS, ROUNDS, 1, 100)
        );
        assert_eq!(group.first_index().unwrap(), ROUNDS);
    }
}

#[test]
fn a_checkpoint_of_many_groups_split_over_many_records_recovers_every_group() {
    // 2,000 groups: a segment's opening checkpoint spans dozens of 1 KiB records and several
    // times the segment size.
    const GROUPS: u64 = 2_000;
    let options = WalOptions { max_record_bytes: 1024, ..options() };
    let fs = CrashFs::new();
    let mut engine = open(&fs, &options).unwrap();
    let mut batch = WriteBatch::new();
    for chunk in 0..GROUPS / 250 {
        for g in chunk * 250..(chunk + 1) * 250 {
            batch.save(g, Some(&hs(g + 1, 0)), &[]).unwrap();
        }
        engine.write(&mut batch).unwrap();
    }
    // Roll over a few segments, each opening with the whole checkpoint.
    for round in 1..=6u64 {
        engine.group(7).unwrap().append(&run(7, round, round, 8, 900)).unwrap();
    }
    assert!(segment_names(&fs).len() > 2, "the log rolled over");
    let check = |engine: &LogEngine, context: &str| {
        assert_eq!(engine.group_ids().len() as u64, GROUPS, "{context}");
        for g in 0..GROUPS {
            let state = engine.group(g).unwrap().initial_state().unwrap().hard_state;
            assert_eq!(state, hs(g + 1, 0), "{context}: group {g}");
        }
        let es = engine.group(7).unwrap().entries(1, 7, u64::MAX).unwrap();
        assert_eq!(es, run(7, 1, 6, 8, 900), "{context}");
    };
    check(&engine, "before reopen");
    engine = reopen(&fs, engine, &options);
    check(&engine, "after a clean reopen");
    drop(engine);
    fs.crash_lose_all_unsynced();
    let engine = open(&fs, &options).unwrap();
    check(&engine, "after a power cut");
}

#[test]
fn a_crash_at_every_io_operation_while_checkpoints_span_many_records_keeps_every_batch() {
    // 300 groups: each segment opens with a checkpoint of a dozen or more 1 KiB records.
    let options = WalOptions { max_record_bytes: 1024, ..options() };
    let mut batches: Vec<Vec<Item>> = Vec::new();
    for chunk in 0..3u64 {
        batches.push(
            (chunk * 100..(chunk + 1) * 100)
                .map(|g| Item::Save(g, Some(hs(g + 1, 0)), vec![]))
                .collect(),
        );
    }
    for round in 1..=8u64 {
        let (g, index) = (round % 3, round.div_ceil(3));
        batches.push(vec![
            Item::Save(g, Some(hs(g + 1, round)), run(g, index, index, 9, 700)),
            Item::Save(200 + g, None, run(200 + g, index, index, 9, 200)),
        ]);
    }
    let states: Vec<BTreeMap<u64, Model>> = {
        let mut models: BTreeMap<u64, Model> = BTreeMap::new();
        let mut states = vec![models.clone()];
        for items in &batches {
            for item in items {
                let Item::Save(g, state, es) = item else { unreachable!("saves only") };
                let model = models.entry(*g).or_default();
                assert_eq!(model.append(es), Outcome::Ok(()));
                if let Some(state) = state {
                    model.hard_state = *state;
                }
            }
            states.push(models.clone());
        }
        states
    };
    let mut points = 0u64;
    // Bounded: the workload's I/O operations are finite; checked below.
    for at in 0.. {
        let mut reached = false;
        for seed in [None, Some(at)] {
            let fs = CrashFs::new();
            fs.inject(Fault { at_op: at, kind: FaultKind::Halt });
            let mut acked = 0;
            if let Ok(engine) = open(&fs, &options) {
                for items in &batches {
                    if write_batch(&engine, items).is_err() {
                        break;
                    }
                    acked += 1;
                }
            }
            reached |= fs.is_halted();
            match seed {
                Some(seed) => fs.crash(seed),
                None => fs.crash_lose_all_unsynced(),
            }
            fs.clear_faults();
            let engine = open(&fs, &options)
                .unwrap_or_else(|e| panic!("reopen after a crash at op {at} ({seed:?}): {e}"));
            let newest = (acked + 1).min(batches.len());
            let found = (acked..=newest).any(|k| {
                matches_state(&engine, &states[k]).is_ok()
                    && engine.group_ids().len() == states[k].len()
            });
            assert!(found, "crash at op {at} ({seed:?}), {acked} batches acknowledged");
        }
        if !reached {
            break;
        }
        points += 1;
        assert!(points < 100_000, "the workload must end");
    }
    assert!(points > 20, "the workload performs many I/O operations, saw {points}");
    println!("checkpoint crash points checked: {points} x 2 power cuts");
}

// ---------------------------------------------------------------------------------------------
// Index memory.

#[test]
fn ten_thousand_groups_with_only_a_hard_state_cost_at_most_256_bytes_each() {
    const GROUPS: u64 = 10_000;
    let options =
        WalOptions { segment_size_bytes: 4 << 20, max_record_bytes: 4 << 20, ..options() };
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    let mut batch = WriteBatch::new();
    for chunk in 0..GROUPS / 1000 {
        for g in chunk * 1000..(chunk + 1) * 1000 {
            batch.save(g, Some(&hs(g + 1, 0)), &[]).unwrap();
        }
        engine.write(&mut batch).unwrap();
    }
    assert_eq!(engine.group_ids().len() as u64, GROUPS);
    let (bytes, live) = engine.index_memory();
    assert_eq!(live, 0, "no group holds an entry");
    let per_group = bytes / GROUPS as usize;
    assert!(per_group <= 256, "{per_group} bytes of index per group ({bytes} in all)");
    let engine = reopen(&fs, engine, &options);
    assert_eq!(engine.group_ids().len() as u64, GROUPS);
    let (bytes, _) = engine.index_memory();
    let per_group = bytes / GROUPS as usize;
    assert!(per_group <= 256, "{per_group} bytes per recovered group ({bytes} in all)");
}

#[test]
fn a_hundred_thousand_recovered_entries_of_one_group_cost_at_most_8_bytes_each() {
    const ENTRIES: u64 = 100_000;
    // Room for the group's own structures, independent of the entry count.
    const CONSTANT_BYTES: usize = 16 << 10;
    let options =
        WalOptions { segment_size_bytes: 4 << 20, max_record_bytes: 4 << 20, ..options() };
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    let mut batch = WriteBatch::new();
    for chunk in 0..ENTRIES / 1000 {
        batch.save(1, None, &run(1, chunk * 1000 + 1, (chunk + 1) * 1000, 1, 8)).unwrap();
        engine.write(&mut batch).unwrap();
    }
    let bound = 8 * ENTRIES as usize + CONSTANT_BYTES;
    let (bytes, live) = engine.index_memory();
    assert_eq!(live as u64, ENTRIES);
    println!("index of {ENTRIES} entries as written: {bytes} bytes");
    let engine = reopen(&fs, engine, &options);
    let (bytes, live) = engine.index_memory();
    assert_eq!(live as u64, ENTRIES);
    assert!(
        bytes <= bound,
        "{bytes} bytes of index for {ENTRIES} recovered entries, bound {bound}"
    );
}

#[test]
fn a_hundred_thousand_entries_of_one_group_cost_at_most_8_bytes_each_as_written() {
    const ENTRIES: u64 = 100_000;
    // Room for the group's own structures, independent of the entry count.
    const CONSTANT_BYTES: usize = 16 << 10;
    let options =
        WalOptions { segment_size_bytes: 4 << 20, max_record_bytes: 4 << 20, ..options() };
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    let mut batch = WriteBatch::new();
    for chunk in 0..ENTRIES / 1000 {
        batch.save(1, None, &run(1, chunk * 1000 + 1, (chunk + 1) * 1000, 1, 8)).unwrap();
        engine.write(&mut batch).unwrap();
    }
    let (bytes, live) = engine.index_memory();
    assert_eq!(live as u64, ENTRIES);
    let bound = 8 * ENTRIES as usize + CONSTANT_BYTES;
    assert!(
        bytes <= bound,
        "{bytes} bytes of index for {ENTRIES} entries as written, bound {bound}"
    );
}

#[test]
fn an_index_compacted_to_ten_entries_costs_at_most_8_bytes_each_plus_a_constant() {
    const ENTRIES: u64 = 100_000;
    const CONSTANT_BYTES: usize = 16 << 10;
    let options =
        WalOptions { segment_size_bytes: 4 << 20, max_record_bytes: 4 << 20, ..options() };
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    let mut batch = WriteBatch::new();
    for chunk in 0..ENTRIES / 1000 {
        batch.save(1, None, &run(1, chunk * 1000 + 1, (chunk + 1) * 1000, 1, 8)).unwrap();
        engine.write(&mut batch).unwrap();
    }
    engine.group(1).unwrap().compact(ENTRIES - 10).unwrap();
    engine.purge().unwrap();
    let (bytes, live) = engine.index_memory();
    assert_eq!(live, 10);
    let bound = 8 * live + CONSTANT_BYTES;
    assert!(bytes <= bound, "{bytes} bytes of index for {live} live entries, bound {bound}");
}

// ---------------------------------------------------------------------------------------------
// Bit flips.

/// Flips a sample of at most 2,000 bits spread over the records of the oldest segment of a
/// multi-group log closed cleanly (`rounds` rounds of batches over three groups); every reopen
/// must give `Corruption` naming that segment or every group exactly as it was. Returns the
/// reopens refused, those that opened, and the log's segments.
/// Flips bits of the newest segment, or of the first; with `held`, of the one before the newest
/// instead of the first, with the background preparation held throughout, so that every segment
/// after the first is in a file that was not preallocated (DESIGN.md §7, case 5).
fn flip_bits_of_a_segment(rounds: u64, newest: bool, held: bool) -> (u64, u64, usize) {
    let fs = CrashFs::new();
    let options = WalOptions { prepare_in_background: held, ..options() };
    let gate = held.then(|| crate::wal::hold_preparation(&fs, std::time::Duration::from_secs(60)));
    let engine = open(&fs, &options).unwrap();
    let mut models: BTreeMap<u64, Model> = BTreeMap::new();
    let mut batch = WriteBatch::new();
    // The terms first: a term change seals its segment, which holds no entry (it stays, as the
    // one before the active segment), and the entries all lie in the next.
    for g in 1..=3u64 {
        batch.save(g, Some(&hs(1, 0)), &[]).unwrap();
        models.entry(g).or_default().hard_state = hs(1, 0);
    }
    engine.write(&mut batch).unwrap();
    for round in 0..rounds {
        for g in 1..=3u64 {
            let model = models.entry(g).or_default();
            let es = run(g, model.last() + 1, model.last() + 2, 1, 80);
            batch.save(g, Some(&hs(1, model.last())), &es).unwrap();
            model.hard_state = hs(1, model.last());
            assert_eq!(model.append(&es), Outcome::Ok(()));
        }
        if round == 2 {
            batch.compact(2, 2).unwrap();
            assert_eq!(models.get_mut(&2).unwrap().compact(2), Outcome::Ok(()));
        }
        engine.write(&mut batch).unwrap();
    }
    if let Some(gate) = &gate {
        // Every rollover so far did not wait: the preparation never created its file.
        assert!(segment_names(&fs).len() > 2, "rollovers while the preparation was held");
        crate::wal::release(gate);
    }
    engine.close().unwrap();
    drop(engine);
    fs.set_hook(None);
    let mut names = segment_names(&fs);
    names.sort();
    let name = match (newest, held) {
        (true, _) => names.last().unwrap(),
        (false, false) => &names[0],
        (false, true) => &names[names.len() - 2],
    };
    let path = Path::new(ROOT).join("wal").join(name);
    assert!(name.ends_with(SEGMENT_SUFFIX));
    let bytes = fs.read_file(&path).unwrap();
    // The records end at the last nonzero byte (the rest of the preallocated segment is zero).
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    let bits = ((end - SEGMENT_HEADER_LEN) * 8) as u64;
    // A sample of at most 2,000 bits, evenly spread over the records.
    let step = bits.div_ceil(2000).max(1);
    let (mut refused, mut same) = (0, 0);
    for offset in (0..bits).step_by(step as usize) {
        let bit = SEGMENT_HEADER_LEN as u64 * 8 + offset;
        let copy = fs.power_cut_copy();
        copy.flip_bit(&path, bit).unwrap();
        match open(&copy, &options) {
            Err(Error::Corruption { segment, .. }) => {
                assert!(
                    segment.to_string_lossy().contains(name.as_str()),
                    "bit {bit}: the corruption names the segment, not {segment:?}"
                );
                refused += 1;
            }
            Err(e) => panic!("bit {bit}: {e}"),
            Ok(engine) => {
                // A sealed segment opened through its footer has its payloads checked when
                // read: a read may refuse, naming the segment, but never answer wrongly.
                let refused_on_read = models.keys().any(|&g| {
                    let group = engine.group(g).unwrap();
                    let (first, last) = (group.first_index().unwrap(), group.last_index().unwrap());
                    last >= first
                        && matches!(
                            group.entries(first, last + 1, u64::MAX),
                            Err(Error::Corruption { segment, .. })
                                if segment.to_string_lossy().contains(name.as_str())
                        )
                });
                if refused_on_read {
                    refused += 1;
                    continue;
                }
                if let Err(difference) = matches_state(&engine, &models) {
                    panic!("bit {bit}: opened with a wrong answer: {difference}");
                }
                same += 1;
            }
        }
    }
    (refused, same, names.len())
}

#[test]
fn a_flipped_bit_in_the_active_segment_gives_corruption_or_the_same_answers() {
    let (refused, same, segments) = flip_bits_of_a_segment(3, true, false);
    assert_eq!(segments, 2, "the entries fit the active segment, after the term's segment");
    assert!(refused > 0, "flips in records are detected");
    println!("bit flips, active segment: {refused} refused as corruption, {same} opened the same");
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_gives_corruption_or_the_same_answers() {
    let (refused, same, segments) = flip_bits_of_a_segment(20, false, false);
    assert!(segments > 1, "the first segment is sealed");
    assert!(refused > 0, "flips in records are detected");
    println!("bit flips, sealed segment: {refused} refused as corruption, {same} opened the same");
}

#[test]
fn a_flipped_bit_in_a_segment_that_was_not_preallocated_gives_corruption_or_the_same_answers() {
    let (refused, same, segments) = flip_bits_of_a_segment(40, false, true);
    assert!(segments > 2, "a sealed segment before the active one");
    assert!(refused > 0, "flips in records are detected");
    println!("bit flips, segment not preallocated: {refused} refused, {same} opened the same");
}

// ---------------------------------------------------------------------------------------------
// The engine_recovery fuzz check, on stable.

fn save(group: u8, back: u8, len: u8, hard_state: Option<(u8, u8)>) -> BatchItem {
    BatchItem::Save { group, back, len, new_term: back % 2 == 1, size: 120, hard_state }
}

/// Batches over all four groups, snapshots taken and installed, a fault inside the workload,
/// power cuts of both kinds, clean reopens, removals and purges.
fn engine_case(sync_never: bool, fault: FaultChoice, after: u8) -> EngineCase {
    let mut ops = Vec::new();
    for round in 0..6u8 {
        ops.push(EngineOp::Write(
            (0..4).map(|g| save(g, round % 3, 3 + g, Some((g, round)))).collect(),
        ));
        ops.push(EngineOp::Write(vec![
            BatchItem::Compact { group: round, back: 2 },
            save(round + 1, 0, 2, None),
        ]));
        match round {
            1 => ops.push(EngineOp::CreateSnapshot { group: 2, back: 1, size: 40 }),
            2 => {
                ops.push(EngineOp::Sync);
                ops.push(EngineOp::Fault { after, kind: fault });
                ops.push(EngineOp::ApplySnapshot { group: 3, ahead: 3, term_bump: 1 });
            }
            3 => {
                ops.push(EngineOp::PowerCut { seed: after, lose_all: false });
                ops.push(EngineOp::Remove(1));
                ops.push(EngineOp::Purge);
                ops.push(EngineOp::CreateSnapshot { group: 0, back: 0, size: 9 });
            }
            4 => ops.push(EngineOp::Reopen),
            _ => {}
        }
    }
    EngineCase { sync_never, ops }
}

#[test]
fn the_engine_recovery_check_accepts_batches_crashed_at_every_fault_point() {
    let faults = [
        FaultChoice::Halt,
        FaultChoice::WriteEio,
        FaultChoice::SyncEio,
        FaultChoice::NoSpace,
        FaultChoice::ShortWrite,
    ];
    // Bounded: 64 fault positions (the op's range) for each kind, under both sync policies.
    for sync_never in [false, true] {
        for fault in faults {
            for after in 0..64 {
                check_engine_recovery(&engine_case(sync_never, fault, after));
            }
        }
    }
}

/// Group 0's few entries, then `writes` batches of group 1, each with a new term (so each seals
/// its segment and the housekeeping after it runs). Once the log is over its purge threshold,
/// that housekeeping rewrites cold group 0 and syncs the rewrite. Returns each call's result.
fn cold_rewrite_workload(engine: &LogEngine, writes: u64) -> Vec<Result<()>> {
    let mut results = Vec::new();
    let mut batch = WriteBatch::new();
    batch.save(0, Some(&hs(1, 0)), &run(0, 1, 3, 1, 100)).unwrap();
    results.push(engine.write(&mut batch));
    // Bounded by `writes`.
    for i in 0..writes {
        let mut batch = WriteBatch::new();
        batch.save(1, Some(&hs(i + 1, 0)), &run(1, 3 * i + 1, 3 * i + 3, i + 1, 300)).unwrap();
        results.push(engine.write(&mut batch));
    }
    results
}

/// A write's durable effect happened when its segment was sealed; the rewrite of a cold group
/// that follows it is housekeeping that never fails the write. When that rewrite's sync
/// succeeds but the witness written after it fails, the log is poisoned silently: the write
/// answers Ok (it is durable), the next call that writes or syncs (a close among them) answers
/// Poisoned, and after a power cut every acknowledged write is there.
#[test]
fn a_failed_witness_after_a_background_rewrite_poisons_the_next_call_and_loses_nothing() {
    let options = raftwal::fuzzing::engine_options(SyncPolicy::Never);
    const WRITES: u64 = 40;
    // A dry run finds the rewrite's witness: in the first write whose housekeeping reads (the
    // rewrite reads the cold group's entries), the first pwrite after the sync that follows.
    let dry = CrashFs::new();
    let ops: Arc<std::sync::Mutex<Vec<(u64, OpKind)>>> = Arc::default();
    let (seen, counter) = (ops.clone(), dry.clone());
    let hook: Hook = Arc::new(move |event: &OpEvent<'_>| {
        seen.lock().unwrap().push((counter.op_count(), event.kind));
        Ok(())
    });
    let engine = open(&dry, &options).unwrap();
    dry.set_hook(Some(hook));
    let mut witness = None;
    let mut batch = WriteBatch::new();
    batch.save(0, Some(&hs(1, 0)), &run(0, 1, 3, 1, 100)).unwrap();
    engine.write(&mut batch).unwrap();
    for i in 0..WRITES {
        ops.lock().unwrap().clear();
        let mut batch = WriteBatch::new();
        batch.save(1, Some(&hs(i + 1, 0)), &run(1, 3 * i + 1, 3 * i + 3, i + 1, 300)).unwrap();
        engine.write(&mut batch).unwrap();
        let ops = ops.lock().unwrap();
        let after = |from: usize, kind: OpKind| {
            ops.iter().skip(from).position(|(_, k)| *k == kind).map(|p| p + from)
        };
        let found = after(0, OpKind::Read)
            .and_then(|r| after(r, OpKind::Sync))
            .and_then(|s| after(s, OpKind::Write))
            .map(|w| ops[w].0);
        if found.is_some() {
            witness = found;
            break;
        }
    }
    dry.set_hook(None);
    drop(engine);
    let witness = witness.expect("some write's housekeeping rewrites group 0 and syncs it");

    // The same run, with that pwrite failing.
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    fs.inject(Fault { at_op: witness, kind: FaultKind::WriteEio });
    let results = cold_rewrite_workload(&engine, WRITES);
    let acknowledged = results.iter().take_while(|r| r.is_ok()).count();
    assert!(fs.op_count() > witness, "the fault's operation ran");
    // Every write answers Ok up to the one whose housekeeping failed: its change happened.
    let failed = &results[acknowledged..];
    assert!(
        !failed.is_empty() && failed.iter().all(|r| matches!(r, Err(Error::Poisoned))),
        "the calls after the silent poison are refused: {failed:?}"
    );
    assert!(matches!(engine.sync(), Err(Error::Poisoned)), "the sync is never retried");
    assert!(matches!(engine.close(), Err(Error::Poisoned)), "a poisoned log cannot close");
    drop(engine);

    fs.crash_lose_all_unsynced();
    fs.clear_faults();
    let engine = open(&fs, &options).unwrap();
    // Each acknowledged write with a new term sealed its segment: all of them are durable.
    let writes = acknowledged as u64 - 1;
    let g0 = engine.group(0).unwrap();
    assert_eq!((g0.first_index().unwrap(), g0.last_index().unwrap()), (1, 3));
    assert_eq!(g0.entries(1, 4, u64::MAX).unwrap(), run(0, 1, 3, 1, 100));
    let g1 = engine.group(1).unwrap();
    assert_eq!(g1.last_index().unwrap(), 3 * writes);
    assert_eq!(g1.initial_state().unwrap().hard_state, hs(writes, 0));
    let want: Vec<Entry> =
        (0..writes).flat_map(|i| run(1, 3 * i + 1, 3 * i + 3, i + 1, 300)).collect();
    assert_eq!(g1.entries(1, 3 * writes + 1, u64::MAX).unwrap(), want);
}

#[test]
fn every_engine_recovery_corpus_file_passes_the_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/engine_recovery");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the corpus holds seeds: {files:?}");
    let mut ran = 0;
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        if let Some(case) = EngineCase::from_fuzz_input(&bytes) {
            check_engine_recovery(&case);
            ran += 1;
        }
    }
    assert!(ran > 0, "no corpus file decodes into an input");
}

/// A bootstrap (an index-0 snapshot holding the membership) whose marker's sync fails leaves a
/// durable file that open takes for a bootstrap to complete (DESIGN §8 case 7). That file must
/// not become durable before the writes that came before it: after a power cut, a group that
/// the bootstrap reached implies every earlier write of every group, as a marker would. (Found
/// by the `engine_recovery` fuzz target: another group's unsynced entries were lost with the
/// failed sync while the bootstrap came back.)
#[test]
fn a_bootstrap_whose_marker_sync_fails_never_comes_back_without_the_writes_before_it() {
    let options = WalOptions { sync_policy: SyncPolicy::Never, ..options() };
    let fs = CrashFs::new();
    let engine = open(&fs, &options).unwrap();
    let mut batch = WriteBatch::default();
    batch.save(1, Some(&hs(1, 0)), &run(1, 1, 3, 1, 40)).unwrap();
    engine.write(&mut batch).unwrap();
    engine.sync().unwrap();
    let mut batch = WriteBatch::default();
    batch.save(1, None, &run(1, 4, 5, 1, 40)).unwrap();
    engine.write(&mut batch).unwrap();
    // The first sync after the snapshot directory's fsync is the marker's, and fails.
    let snap_synced = Arc::new(AtomicBool::new(false));
    let (seen, probe) = (snap_synced.clone(), fs.clone());
    let armed = Arc::new(AtomicBool::new(false));
    let hook: Hook = Arc::new(move |event: &OpEvent<'_>| {
        let in_snap = event.path.is_some_and(|p| p.ends_with(raftwal::storage::SNAP_DIR));
        if event.kind == OpKind::SyncDir && in_snap {
            seen.store(true, Ordering::SeqCst);
        } else if event.kind == OpKind::Sync
            && seen.load(Ordering::SeqCst)
            && !armed.swap(true, Ordering::SeqCst)
        {
            probe.inject(Fault { at_op: probe.op_count(), kind: FaultKind::SyncEio });
        }
        Ok(())
    });
    fs.set_hook(Some(hook));
    let metadata = SnapshotMetadata { index: 0, term: 0, conf_state: voters(&[1, 2, 3]) };
    let bootstrap = Snapshot { metadata, data: Bytes::from_static(b"membership") };
    let answer = engine.group(0).unwrap().apply_snapshot(bootstrap);
    assert!(matches!(answer, Err(Error::Io(_))), "{answer:?}");
    assert!(snap_synced.load(Ordering::SeqCst), "the file was made durable");
    fs.set_hook(None);
    drop(engine);
    fs.crash_lose_all_unsynced();
    let engine = open(&fs, &options).unwrap();
    let bootstrapped = engine.group(0).unwrap().initial_state().unwrap().conf_state.voters;
    let last = engine.group(1).unwrap().last_index().unwrap();
    if bootstrapped == [1, 2, 3] {
        assert_eq!(last, 5, "the bootstrap came back, so the write before it must have");
    } else {
        assert!(bootstrapped.is_empty(), "{bootstrapped:?}");
        assert!(last == 3 || last == 5, "last {last}");
    }
}
