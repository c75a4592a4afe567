//! The WAL through CrashFs: reopen, rollover and compaction, locking, crashes at every I/O
//! operation, every single-bit flip, and injected faults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use raftwal::io::{CrashFs, Fault, FaultKind, Fs};
use raftwal::wal::format::{
    ENTRIES_RECORD_TARGET_BYTES, FRAME_HEADER_LEN, Record, TRAILER_LEN, Trailer, framed_len,
    pool_name,
};
use raftwal::wal::recovery::scan_segment;
use raftwal::wal::{UNWAITED_ROLLOVER_MAX_SEGMENTS, Wal};
use raftwal::{CorruptionKind, Entry, Error, HardState, SyncPolicy, WalOptions};

use crate::model::{Model, Outcome};

pub fn small_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: 2048,
        prepare_in_background: false,
        cache_bytes: 512,
        ..WalOptions::default()
    }
}

pub fn dir() -> PathBuf {
    PathBuf::from("/node/wal")
}

pub fn open(fs: &CrashFs, options: &WalOptions) -> raftwal::Result<Wal> {
    let fs: Fs = Arc::new(fs.clone());
    Wal::open(fs, &dir(), options.clone())
}

/// A payload that names its index and term, so a misplaced byte shows.
pub fn entry(index: u64, term: u64, len: usize) -> Entry {
    let mut data = format!("{index}:{term}:").into_bytes();
    data.resize(len.max(data.len()), (index as u8).wrapping_mul(31) ^ term as u8);
    Entry::new(index, term, Bytes::from(data))
}

/// One step of the fixed workloads.
#[derive(Clone, Debug)]
pub enum Step {
    Save(Option<HardState>, Vec<Entry>),
    Compact(u64),
    /// An explicit sync (the only durability point under `SyncPolicy::Never`).
    Sync,
}

/// Appends, overwrites, hard states and compactions that roll over several 4 KiB segments.
pub fn workload() -> Vec<Step> {
    let mut steps = Vec::new();
    let mut term = 1;
    for round in 0..20u64 {
        let first = round * 6 + 1;
        let es: Vec<Entry> =
            (first..first + 6).map(|i| entry(i, term, 60 + (i as usize * 37) % 300)).collect();
        steps.push(Step::Save(
            Some(HardState { term, vote: 1, commit: first.saturating_sub(2) }),
            es,
        ));
        if round % 4 == 3 {
            // A new leader overwrites the last three entries.
            term += 1;
            let at = first + 3;
            let es: Vec<Entry> = (at..at + 3).map(|i| entry(i, term, 90)).collect();
            steps.push(Step::Save(Some(HardState { term, vote: 2, commit: at - 1 }), es));
        }
        if round % 6 == 5 {
            steps.push(Step::Compact(first - 2));
        }
    }
    steps.push(Step::Save(Some(HardState { term, vote: 2, commit: 70 }), vec![]));
    steps
}

/// The model after each step; `states[k]` is the state after the first k steps, and
/// `partial[k]` the state if step k wrote its entries but not its hard state.
pub struct Expected {
    pub states: Vec<Model>,
    pub partial: Vec<Option<Model>>,
}

pub fn expected(steps: &[Step]) -> Expected {
    let mut model = Model::default();
    let mut states = vec![model.clone()];
    let mut partial = vec![None];
    for step in steps {
        match step {
            Step::Save(hs, es) => {
                assert_eq!(model.append(es), Outcome::Ok(()));
                partial.push(hs.is_some().then(|| model.clone()));
                if let Some(hs) = hs {
                    model.hard_state = *hs;
                }
            }
            Step::Compact(i) => {
                assert_eq!(model.compact(*i), Outcome::Ok(()));
                partial.push(None);
            }
            Step::Sync => partial.push(None),
        }
        states.push(model.clone());
    }
    Expected { states, partial }
}

fn apply(wal: &Wal, step: &Step) -> raftwal::Result<()> {
    match step {
        Step::Save(hs, es) => wal.save(hs.as_ref(), es),
        Step::Compact(i) => wal.compact(*i),
        Step::Sync => wal.sync(),
    }
}

/// Whether the WAL's answers equal the model's (log, terms, entries' bytes, hard state).
/// Like [`same_as`], for a log opened through footers: the state must match, and each entry
/// read must either match or fail as corruption of `segment` (a sealed segment's payloads are
/// checked when read, not at open).
fn same_or_refused_on_read(wal: &Wal, model: &Model, segment: &Path) -> bool {
    let (first, last) = (wal.first_index(), wal.last_index());
    if first != model.dummy.0 + 1 || last != model.last() || wal.hard_state() != model.hard_state {
        return false;
    }
    if wal.term(model.dummy.0).ok() != Some(model.dummy.1) {
        return false;
    }
    // The whole range in one call (reads spanning many records) and entry by entry.
    if last >= first {
        match wal.entries(first, last + 1, u64::MAX) {
            Ok(es) if !es.iter().eq(model.log.values()) => return false,
            Err(Error::Corruption { segment: named, .. }) if dir().join(&named) != segment => {
                return false;
            }
            Err(Error::Corruption { .. }) | Ok(_) => {}
            Err(_) => return false,
        }
    }
    (first..=last).all(|i| match wal.entries(i, i + 1, u64::MAX) {
        Ok(es) => es.len() == 1 && Some(&es[0]) == model.log.get(&i),
        Err(Error::Corruption { segment: named, .. }) => dir().join(named) == segment,
        Err(_) => false,
    })
}

pub fn same_as(wal: &Wal, model: &Model) -> bool {
    let (first, last) = (wal.first_index(), wal.last_index());
    if first != model.dummy.0 + 1 || last != model.last() || wal.hard_state() != model.hard_state {
        return false;
    }
    if wal.term(model.dummy.0).ok() != Some(model.dummy.1) {
        return false;
    }
    if last < first {
        return true;
    }
    match wal.entries(first, last + 1, u64::MAX) {
        Ok(es) => es.iter().eq(model.log.values()),
        Err(_) => false,
    }
}

fn describe(wal: &Wal) -> String {
    format!(
        "first {} last {} hs {:?} terms {:?}",
        wal.first_index(),
        wal.last_index(),
        wal.hard_state(),
        (wal.first_index()..=wal.last_index()).map(|i| wal.term(i).ok()).collect::<Vec<_>>()
    )
}

#[test]
fn reopen_returns_what_was_saved_across_rollovers_and_compactions() {
    let fs = CrashFs::new();
    let steps = workload();
    let want = expected(&steps);
    let wal = open(&fs, &small_options()).unwrap();
    let mut most_segments = 0;
    for (k, step) in steps.iter().enumerate() {
        apply(&wal, step).unwrap();
        assert!(same_as(&wal, &want.states[k + 1]), "after step {k}: {}", describe(&wal));
        most_segments = most_segments.max(wal.segment_count());
    }
    assert!(most_segments > 2, "the workload must roll over several segments, saw {most_segments}");
    drop(wal);
    let wal = open(&fs, &small_options()).unwrap();
    assert!(same_as(&wal, want.states.last().unwrap()), "after reopen: {}", describe(&wal));
    assert_eq!(wal.recovery_report().truncated, None, "a clean log is not cut");
}

#[test]
fn compaction_deletes_only_segments_no_live_entry_needs() {
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    for i in 1..=200u64 {
        wal.save(None, &[entry(i, 1, 100)]).unwrap();
    }
    let before = wal.segment_count();
    assert!(before > 4, "{before} segments");
    wal.compact(150).unwrap();
    let after = wal.segment_count();
    assert!(after < before, "compaction must release segments ({before} -> {after})");
    let es = wal.entries(151, 201, u64::MAX).unwrap();
    assert_eq!(es.len(), 50);
    assert_eq!(es[0], entry(151, 1, 100));
    drop(wal);
    let wal = open(&fs, &small_options()).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (151, 200));
    assert_eq!(wal.entries(151, 201, u64::MAX).unwrap()[49], entry(200, 1, 100));
}

#[test]
fn a_second_open_of_the_same_directory_is_locked() {
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    assert!(matches!(open(&fs, &small_options()), Err(Error::Locked)));
    drop(wal);
    assert!(open(&fs, &small_options()).is_ok(), "the lock is released on drop");
}

#[test]
fn a_batch_larger_than_a_record_is_split_and_an_oversized_entry_refused() {
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    let es: Vec<Entry> = (1..=40).map(|i| entry(i, 1, 300)).collect();
    wal.save(None, &es).unwrap();
    let too_big = entry(41, 1, 4000);
    assert!(matches!(wal.save(None, &[too_big]), Err(Error::ContractViolation(_))));
    drop(wal);
    let wal = open(&fs, &small_options()).unwrap();
    assert_eq!(wal.entries(1, 41, u64::MAX).unwrap(), es);
}

/// The segment files on `fs`, oldest first.
fn segment_paths(fs: &CrashFs) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> =
        fs.list_all().into_iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).collect();
    paths.sort();
    paths
}

/// The Entries records of the segment at `path`: offset, framed length, and entry indices.
fn entries_records(fs: &CrashFs, path: &Path) -> Vec<(u64, u64, Vec<u64>)> {
    let scan = scan_segment(&fs.read_file(path).unwrap(), 1 << 20);
    scan.records
        .into_iter()
        .filter_map(|r| match r.record {
            Record::Entries { entries, .. } => {
                Some((r.offset, r.framed_len, entries.iter().map(|e| e.index).collect()))
            }
            _ => None,
        })
        .collect()
}

fn large_record_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 1 << 20,
        cache_bytes: 0,
        prepare_in_background: false,
        ..WalOptions::default()
    }
}

#[test]
fn a_large_run_of_entries_is_written_in_records_of_at_most_64_kib() {
    let fs = CrashFs::new();
    let wal = open(&fs, &large_record_options()).unwrap();
    // One save of about 400 KiB: 1 KiB entries around one of 100 KiB.
    let mut es: Vec<Entry> = (1..=150).map(|i| entry(i, 1, 1024)).collect();
    es.push(entry(151, 1, 100 << 10));
    es.extend((152..=300).map(|i| entry(i, 1, 1024)));
    wal.save(None, &es).unwrap();
    let paths = segment_paths(&fs);
    assert_eq!(paths.len(), 1);
    let records = entries_records(&fs, &paths[0]);
    let indices: Vec<u64> = records.iter().flat_map(|(_, _, i)| i.clone()).collect();
    assert_eq!(indices, (1..=300).collect::<Vec<_>>(), "consecutive runs, in order");
    assert!(records.len() >= 6, "{} records", records.len());
    let most = framed_len(ENTRIES_RECORD_TARGET_BYTES) as u64;
    for (offset, framed, indices) in &records {
        if indices.contains(&151) {
            assert_eq!(indices, &[151], "the entry above the target has a record of its own");
        } else {
            assert!(*framed <= most, "record at {offset} takes {framed} bytes");
        }
    }
    drop(wal);
    let wal = open(&fs, &large_record_options()).unwrap();
    assert_eq!(wal.entries(1, 301, u64::MAX).unwrap(), es);
}

#[test]
fn damage_in_a_later_record_of_a_sealed_span_is_reported_at_that_record() {
    let fs = CrashFs::new();
    let wal = open(&fs, &large_record_options()).unwrap();
    let es: Vec<Entry> = (1..=300).map(|i| entry(i, 1, 1024)).collect();
    wal.save(None, &es).unwrap();
    // 800 KiB more do not fit the 1 MiB segment: the first is sealed.
    let more: Vec<Entry> = (301..=1100).map(|i| entry(i, 1, 1024)).collect();
    wal.save(None, &more).unwrap();
    assert_eq!(wal.segment_count(), 2);
    let sealed = segment_paths(&fs)[0].clone();
    let records = entries_records(&fs, &sealed);
    assert!(records.len() >= 3, "{} records", records.len());
    let (victim, _, held) = records[1].clone();
    let (first, last) = (held[0], held[held.len() - 1]);
    fs.flip_bit(&sealed, (victim + FRAME_HEADER_LEN as u64 + 100) * 8 + 3).unwrap();
    let reported = |lo: u64, hi: u64| match wal.entries(lo, hi, u64::MAX) {
        Err(Error::Corruption { segment, offset, kind }) => {
            assert_eq!(segment.file_name(), sealed.file_name(), "[{lo}, {hi})");
            assert_eq!(kind, CorruptionKind::ChecksumMismatch, "[{lo}, {hi})");
            offset
        }
        other => panic!("[{lo}, {hi}): {other:?}"),
    };
    // Ending where the next record starts (one read to there), ending inside the damaged
    // record (a read cut inside it, then the record by its header's length), and inside it.
    assert_eq!(reported(1, last + 1), victim);
    assert_eq!(reported(1, last), victim);
    assert_eq!(reported(first + 1, first + 3), victim);
    // The records around it still read.
    assert_eq!(wal.entries(1, first, u64::MAX).unwrap(), es[..first as usize - 1]);
    assert_eq!(wal.entries(last + 1, 301, u64::MAX).unwrap(), es[last as usize..]);
}

#[test]
fn the_real_file_system_round_trips_a_log() {
    let tmp = tempfile::tempdir().unwrap();
    let options = WalOptions { segment_size_bytes: 64 << 10, ..WalOptions::default() };
    let fs: Fs = Arc::new(raftwal::io::RealFs);
    let wal = Wal::open(fs.clone(), tmp.path(), options.clone()).unwrap();
    let es: Vec<Entry> = (1..=500).map(|i| entry(i, 1 + i / 200, 300)).collect();
    for chunk in es.chunks(7) {
        wal.save(Some(&HardState { term: chunk[0].term, vote: 1, commit: chunk[0].index }), chunk)
            .unwrap();
    }
    assert!(matches!(Wal::open(fs.clone(), tmp.path(), options.clone()), Err(Error::Locked)));
    wal.close().unwrap();
    let wal = Wal::open(fs, tmp.path(), options).unwrap();
    assert_eq!(wal.entries(1, 501, u64::MAX).unwrap(), es);
    assert_eq!(wal.term(500).unwrap(), 3);
    assert!(wal.segment_count() > 1);
}

/// Runs `steps` on a fresh CrashFs with a halt at operation `halt_at`, crashes with `seed`,
/// reopens, and checks the recovered state: it must lie between the last durable point (every
/// acknowledged step under `SyncPolicy::Always`; the last completed `Sync` under `Never`) and
/// the step in flight, possibly with that step's entries but not its hard state. Returns
/// whether the halt was reached.
/// With `held`, the background preparation of segment 2 is held until the steps are done, so
/// that every rollover starts its segment in a file that was not preallocated (the preparation
/// thread takes no operation number while it is held: the numbering stays deterministic).
fn crash_once(
    options: &WalOptions,
    steps: &[Step],
    want: &Expected,
    (halt_at, seed): (u64, u64),
    held: bool,
) -> bool {
    let fs = CrashFs::new();
    fs.inject(Fault { at_op: halt_at, kind: FaultKind::Halt });
    let gate = held.then(|| hold_preparation(&fs, std::time::Duration::from_secs(60)));
    let always = options.sync_policy == SyncPolicy::Always;
    let (mut acked, mut durable) = (0, 0);
    if let Ok(wal) = open(&fs, options) {
        for step in steps {
            if apply(&wal, step).is_err() {
                break;
            }
            acked += 1;
            if always || matches!(step, Step::Sync) {
                durable = acked;
            }
        }
        // Halted: the preparation stopped being held at the halt. Not halted: it runs on
        // once released, and is stopped when the log is dropped.
        if let Some(gate) = &gate {
            release(gate);
        }
    }
    fs.set_hook(None);
    let halted = fs.is_halted();
    fs.crash(seed);
    fs.clear_faults();
    let wal = match open(&fs, options) {
        Ok(wal) => wal,
        Err(e) => panic!("reopen after a crash at op {halt_at} (seed {seed}) failed: {e}"),
    };
    let newest = (acked + 1).min(steps.len());
    let allowed = (durable..=newest)
        .flat_map(|k| [Some(&want.states[k]), want.partial[k].as_ref()])
        .flatten()
        .any(|m| same_as(&wal, m));
    assert!(
        allowed,
        "crash at op {halt_at} seed {seed}: steps {durable}..{acked} acknowledged, recovered {}",
        describe(&wal)
    );
    halted
}

/// Runs `steps` with a halt at operation `halt_at`, as a process killed there: every byte it
/// wrote reaches the disk. Then damages the newest segment's record of the last durable entry
/// (acknowledged under `SyncPolicy::Always`, made durable by the last `Sync` under `Never`):
/// some record written after the sync that made it durable (the sync's witness, or a later
/// write) proves it was durable, so a Strict open must refuse, never cut it as a torn tail.
/// Returns whether a record was damaged.
fn process_death_then_damage(options: &WalOptions, steps: &[Step], halt_at: u64) -> bool {
    let fs = CrashFs::new();
    fs.inject(Fault { at_op: halt_at, kind: FaultKind::Halt });
    let always = options.sync_policy == SyncPolicy::Always;
    let (mut acked, mut durable) = (0, 0);
    if let Ok(wal) = open(&fs, options) {
        for step in steps {
            if apply(&wal, step).is_err() {
                break;
            }
            acked += 1;
            if always || matches!(step, Step::Sync) {
                durable = acked;
            }
        }
    }
    let last = steps[..durable].iter().rev().find_map(|step| match step {
        Step::Save(_, es) => es.last().cloned(),
        _ => None,
    });
    let copy = copy_fs(&fs);
    let (Some(last), Some(newest)) = (last, segments(&copy).pop()) else { return false };
    let victim = scan_segment(&copy.read_file(&newest).unwrap(), options.max_record_bytes)
        .records
        .into_iter()
        .rev()
        .find(|r| {
            matches!(&r.record, Record::Entries { entries, .. }
                if entries.iter().any(|e| (e.index, e.term) == (last.index, last.term)))
        });
    // In a sealed segment (synced whole) any damage is corruption; the newest is the question.
    let Some(victim) = victim else { return false };
    copy.flip_bit(&newest, (victim.offset + FRAME_HEADER_LEN as u64 + 3) * 8).unwrap();
    let strict = WalOptions { recovery_mode: raftwal::RecoveryMode::Strict, ..options.clone() };
    match open(&copy, &strict) {
        Err(Error::Corruption { .. }) => true,
        Err(e) => panic!("halt at op {halt_at}: damaged entry {}: {e}", last.index),
        Ok(wal) => panic!(
            "halt at op {halt_at}: durable entry {} damaged at {} of {} and cut as a torn tail \
             ({})",
            last.index,
            victim.offset,
            newest.display(),
            describe(&wal)
        ),
    }
}

pub fn crash_at_every_operation(options: &WalOptions, steps: &[Step]) -> u64 {
    crash_at_every_operation_held(options, steps, false)
}

/// [`crash_at_every_operation`]; with `held`, the preparation is held throughout (see
/// [`crash_once`]) and no process death is damaged.
fn crash_at_every_operation_held(options: &WalOptions, steps: &[Step], held: bool) -> u64 {
    let want = expected(steps);
    let mut points = 0;
    let mut damaged = 0;
    for at in 0.. {
        // Three crash outcomes per point: unsynced writes lost, kept or torn as the seed says.
        let mut reached = false;
        for seed in 0..3 {
            reached |= crash_once(options, steps, &want, (at, at * 7 + seed), held);
        }
        if !reached {
            break;
        }
        if !held {
            damaged += u64::from(process_death_then_damage(options, steps, at));
        }
        points += 1;
        assert!(points < 100_000, "the workload must end");
    }
    assert!(points > 100, "the workload must perform many I/O operations, saw {points}");
    if !held {
        assert!(damaged > points / 8, "too few durable records damaged: {damaged} of {points}");
        println!("process deaths with the last durable entry damaged: {damaged}, each refused");
    }
    points
}

#[test]
fn a_crash_at_every_io_operation_loses_nothing_acknowledged() {
    let points = crash_at_every_operation(&small_options(), &workload());
    println!(
        "wal crash points checked (sync always): {points} x 3 seeds, nothing acknowledged lost"
    );
}

#[test]
fn a_crash_at_every_io_operation_keeps_everything_before_the_last_sync() {
    let options = WalOptions { sync_policy: SyncPolicy::Never, ..small_options() };
    let mut steps = Vec::new();
    for (k, step) in workload().into_iter().enumerate() {
        steps.push(step);
        if k % 3 == 2 {
            steps.push(Step::Sync);
        }
    }
    let points = crash_at_every_operation(&options, &steps);
    println!("wal crash points checked (sync never, explicit syncs): {points} x 3 seeds");
}

/// Runs `steps` once and, after each, opens what a power cut right then would leave (nothing
/// unsynced, directory operations included): it must hold every durable step (every
/// acknowledged one under `SyncPolicy::Always`, those up to the last `Sync` under `Never`).
fn every_acknowledgement_survives_a_power_cut_right_after_it(options: &WalOptions, steps: &[Step]) {
    let want = expected(steps);
    let fs = CrashFs::new();
    let wal = open(&fs, options).unwrap();
    let always = options.sync_policy == SyncPolicy::Always;
    let mut durable = 0;
    for (k, step) in steps.iter().enumerate() {
        apply(&wal, step).unwrap();
        if always || matches!(step, Step::Sync) {
            durable = k + 1;
        }
        let cut = fs.power_cut_copy();
        let after = open(&cut, options)
            .unwrap_or_else(|e| panic!("a power cut after step {k} leaves no log: {e}"));
        let allowed = if always {
            same_as(&after, &want.states[k + 1])
        } else {
            (durable..=k + 1)
                .flat_map(|j| [Some(&want.states[j]), want.partial[j].as_ref()])
                .flatten()
                .any(|m| same_as(&after, m))
        };
        assert!(
            allowed,
            "power cut after step {k} (durable up to {durable}): {}",
            describe(&after)
        );
    }
}

#[test]
fn every_acknowledged_step_survives_a_power_cut_right_after_it() {
    every_acknowledgement_survives_a_power_cut_right_after_it(&small_options(), &workload());
    let background = WalOptions { prepare_in_background: true, ..small_options() };
    every_acknowledgement_survives_a_power_cut_right_after_it(&background, &workload());
    let never = WalOptions { sync_policy: SyncPolicy::Never, ..small_options() };
    let mut steps = Vec::new();
    for (k, step) in workload().into_iter().enumerate() {
        steps.push(step);
        if k % 3 == 2 {
            steps.push(Step::Sync);
        }
    }
    every_acknowledgement_survives_a_power_cut_right_after_it(&never, &steps);
}

/// Copies every file of `from` into a fresh CrashFs.
pub fn copy_fs(from: &CrashFs) -> CrashFs {
    let to = CrashFs::new();
    for path in from.list_all() {
        if let Some(bytes) = from.read_file(&path) {
            to.write_file_raw(&path, &bytes).unwrap();
        }
    }
    to
}

#[test]
fn every_single_bit_flip_is_corruption_or_harmless() {
    let steps: Vec<Step> = workload().into_iter().take(6).collect();
    let want = expected(&steps);
    let model = want.states.last().unwrap();
    let pristine = CrashFs::new();
    let wal = open(&pristine, &small_options()).unwrap();
    for step in &steps {
        apply(&wal, step).unwrap();
    }
    wal.close().unwrap();
    let segments: Vec<PathBuf> = pristine
        .list_all()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert!(segments.len() >= 2, "the log must span segments");
    let (mut flips, mut refused) = (0u64, 0u64);
    // Opened reading every segment whole: damage anywhere is found at open.
    let scanning = WalOptions { read_footers: false, ..small_options() };
    for segment in &segments {
        let bytes = pristine.read_file(segment).unwrap();
        // Flip every bit of the written part, and of the zeroes just after it.
        let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let end = (written + 64).min(bytes.len());
        for bit in 0..end as u64 * 8 {
            let fs = copy_fs(&pristine);
            fs.flip_bit(segment, bit).unwrap();
            flips += 1;
            // Through footers (the default), a sealed segment's payloads are checked on read.
            match open(&fs, &small_options()) {
                Ok(wal) => assert!(
                    same_or_refused_on_read(&wal, model, segment),
                    "bit {bit} of {segment:?} opened through footers with different contents: {}",
                    describe(&wal)
                ),
                Err(Error::Corruption { segment: named, .. }) => assert_eq!(
                    Path::new("/node/wal").join(&named),
                    *segment,
                    "bit {bit}: wrong segment named"
                ),
                Err(e) => panic!("bit {bit} of {segment:?}: unexpected error {e}"),
            }
            match open(&fs, &scanning) {
                Ok(wal) => assert!(
                    same_as(&wal, model),
                    "bit {bit} of {segment:?} opened with different contents: {}",
                    describe(&wal)
                ),
                Err(Error::Corruption { segment: named, .. }) => {
                    refused += 1;
                    assert_eq!(
                        Path::new("/node/wal").join(&named),
                        *segment,
                        "bit {bit}: wrong segment named"
                    );
                }
                Err(e) => panic!("bit {bit} of {segment:?}: unexpected error {e}"),
            }
        }
    }
    assert!(refused > flips / 2, "most flips hit checked bytes: {refused} of {flips} refused");
    println!(
        "wal bit flips checked: {flips}, refused as corruption: {refused}, none returned wrong bytes"
    );
}

#[test]
fn a_failed_fsync_poisons_the_log_and_nothing_acknowledged_is_lost() {
    let steps = workload();
    let want = expected(&steps);
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    apply(&wal, &steps[0]).unwrap();
    apply(&wal, &steps[1]).unwrap();
    // Arm several: the sync of a segment being prepared may take the first, harmlessly.
    for at in fs.op_count()..fs.op_count() + 8 {
        fs.inject(Fault { at_op: at, kind: FaultKind::SyncEio });
    }
    let failed = apply(&wal, &steps[2]);
    assert!(matches!(failed, Err(Error::Io(_))), "the failed sync is reported: {failed:?}");
    assert!(matches!(apply(&wal, &steps[3]), Err(Error::Poisoned)), "later writes are refused");
    assert!(matches!(wal.sync(), Err(Error::Poisoned)), "the sync is never retried");
    drop(wal);
    fs.crash(11);
    fs.clear_faults();
    let wal = open(&fs, &small_options()).unwrap();
    assert!(same_as(&wal, &want.states[2]) || same_as(&wal, &want.states[3]), "{}", describe(&wal));
}

#[test]
fn injected_write_faults_lose_nothing_acknowledged() {
    let steps = workload();
    let want = expected(&steps);
    let mut injected = 0;
    for kind in [FaultKind::WriteEio, FaultKind::NoSpace, FaultKind::SyncEio, FaultKind::ShortWrite]
    {
        for at in (0..400).step_by(7) {
            let fs = CrashFs::new();
            fs.inject(Fault { at_op: at, kind });
            injected += 1;
            let mut acked = 0;
            if let Ok(wal) = open(&fs, &small_options()) {
                for step in &steps {
                    if apply(&wal, step).is_err() {
                        break;
                    }
                    acked += 1;
                }
            }
            if kind == FaultKind::ShortWrite {
                assert_eq!(acked, steps.len(), "short writes are completed, not failed (op {at})");
            }
            fs.crash(at);
            fs.clear_faults();
            let wal = open(&fs, &small_options())
                .unwrap_or_else(|e| panic!("{kind:?} at {at}: reopen failed: {e}"));
            let ok = same_as(&wal, &want.states[acked])
                || (acked < steps.len() && same_as(&wal, &want.states[acked + 1]))
                || want
                    .partial
                    .get(acked + 1)
                    .and_then(|p| p.as_ref())
                    .is_some_and(|m| same_as(&wal, m));
            assert!(ok, "{kind:?} at op {at}: {acked} acknowledged, recovered {}", describe(&wal));
        }
    }
    println!("wal faults injected: {injected}, nothing acknowledged lost");
}

#[test]
fn a_record_damaged_after_open_is_reported_on_read() {
    // Reads check each record's CRC again, so damage that happens after recovery is caught.
    let fs = CrashFs::new();
    let wal = open(&fs, &WalOptions { cache_bytes: 0, ..small_options() }).unwrap();
    for i in 1..=10u64 {
        wal.save(None, &[entry(i, 1, 100)]).unwrap();
    }
    assert_eq!(wal.segment_count(), 1, "the damage goes into the active segment");
    let path =
        fs.list_all().into_iter().find(|p| p.extension().is_some_and(|e| e == "wal")).unwrap();
    let written = fs.read_file(&path).unwrap().iter().rposition(|&b| b != 0).unwrap();
    fs.flip_bit(&path, (written as u64 / 2) * 8 + 3).unwrap();
    let damaged: Vec<u64> = (1..=10)
        .filter(|&i| match wal.entries(i, i + 1, u64::MAX) {
            Err(Error::Corruption { kind, .. }) => {
                assert_eq!(kind, CorruptionKind::ChecksumMismatch);
                true
            }
            Err(e) => panic!("entry {i}: unexpected error {e}"),
            Ok(es) => {
                assert_eq!(es, [entry(i, 1, 100)], "an undamaged entry reads back intact");
                false
            }
        })
        .collect();
    assert_eq!(damaged.len(), 1, "exactly the damaged record is reported: {damaged:?}");
}

/// A log of `n` single-entry records in 4 KiB segments, closed cleanly.
fn closed_log(n: u64) -> CrashFs {
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    for i in 1..=n {
        wal.save(Some(&HardState { term: 1, vote: 1, commit: i }), &[entry(i, 1, 120)]).unwrap();
    }
    wal.close().unwrap();
    fs
}

fn segments(fs: &CrashFs) -> Vec<PathBuf> {
    fs.list_all().into_iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).collect()
}

#[test]
fn truncate_corrupt_mode_cuts_at_the_damage_and_drops_later_segments() {
    let fs = closed_log(60);
    let files = segments(&fs);
    assert!(files.len() >= 3, "{files:?}");
    // Damage a record in the middle of the second segment.
    let bytes = fs.read_file(&files[1]).unwrap();
    let written = bytes.iter().rposition(|&b| b != 0).unwrap();
    fs.flip_bit(&files[1], (written as u64 / 2) * 8).unwrap();
    // Read whole at open (no footers), so that the damage is found there.
    let scanning = WalOptions { read_footers: false, ..small_options() };
    match open(&fs, &scanning) {
        Err(Error::Corruption { segment, .. }) => assert_eq!(dir().join(segment), files[1]),
        other => panic!("strict mode must refuse: {other:?}"),
    }
    let lossy =
        WalOptions { recovery_mode: raftwal::RecoveryMode::TruncateCorrupt, ..scanning.clone() };
    let wal = open(&fs, &lossy).unwrap();
    let last = wal.last_index();
    assert!(last > 1 && last < 60, "the log is cut inside the damaged segment, at {last}");
    assert_eq!(
        wal.entries(1, last + 1, u64::MAX).unwrap(),
        (1..=last).map(|i| entry(i, 1, 120)).collect::<Vec<_>>()
    );
    assert!(!fs.list_all().contains(&files[2]), "segments after the damage are removed");
    wal.save(None, &[entry(last + 1, 2, 10)]).unwrap();
    drop(wal);
    let wal = open(&fs, &small_options()).unwrap();
    assert_eq!(wal.last_index(), last + 1, "the cut log reopens cleanly in strict mode");
}

#[test]
fn a_torn_tail_is_cut_and_the_rest_of_the_segment_zeroed() {
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    for i in 1..=5 {
        wal.save(None, &[entry(i, 1, 100)]).unwrap();
    }
    drop(wal);
    let file = segments(&fs).pop().unwrap();
    let mut bytes = fs.read_file(&file).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    // Garbage where the next record would be: a write torn by a crash.
    bytes[end + 8..end + 300].fill(0x5A);
    fs.write_file_raw(&file, &bytes).unwrap();
    let wal = open(&fs, &small_options()).unwrap();
    assert_eq!(wal.last_index(), 5);
    let (_, offset, row) = wal.recovery_report().truncated.clone().expect("the tail was cut");
    assert_eq!(row, "R3");
    let after = fs.read_file(&file).unwrap();
    assert!(after[offset as usize..].iter().all(|&b| b == 0), "everything after the cut is zeroed");
    wal.save(None, &[entry(6, 1, 100)]).unwrap();
    drop(wal);
    let wal = open(&fs, &small_options()).unwrap();
    assert_eq!(wal.entries(1, 7, u64::MAX).unwrap().len(), 6);
    assert_eq!(wal.recovery_report().truncated, None, "nothing is left to cut");
}

#[test]
fn concurrent_writers_share_syncs_and_return_only_when_durable() {
    for policy in
        [SyncPolicy::Always, SyncPolicy::Batch { max_wait: std::time::Duration::from_micros(200) }]
    {
        let fs = CrashFs::new();
        let options =
            WalOptions { sync_policy: policy, segment_size_bytes: 64 << 10, ..small_options() };
        let wal = Arc::new(open(&fs, &options).unwrap());
        // Four writers append to one log; each records the indices it saw acknowledged.
        let acked: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let wal = wal.clone();
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for _ in 0..50 {
                            let next = wal.last_index() + 1;
                            // Another writer may take `next` first; this save then rewrites it
                            // with identical bytes, which is still an acknowledged save.
                            if wal.save(None, &[entry(next, 1, 64)]).is_ok() {
                                mine.push(next);
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let saves: usize = acked.iter().map(Vec::len).sum();
        assert!(saves >= 50, "{policy:?}: writers made progress ({saves} saves)");
        let last = wal.last_index();
        drop(wal);
        fs.crash_lose_all_unsynced();
        let wal = open(&fs, &options).unwrap();
        assert_eq!(
            wal.last_index(),
            last,
            "{policy:?}: every acknowledged save survives losing all unsynced writes"
        );
        // A writer with a stale `next` may have truncated entries another writer had saved; what
        // must survive is the log every save left behind, byte for byte.
        let want: Vec<Entry> = (1..=last).map(|i| entry(i, 1, 64)).collect();
        assert_eq!(wal.entries(1, last + 1, u64::MAX).unwrap(), want, "{policy:?}");
    }
}

#[test]
fn the_must_sync_rule_skips_the_sync_only_for_commit_only_changes() {
    let fs = CrashFs::new();
    let options = WalOptions { must_sync_rule: true, ..small_options() };
    let wal = open(&fs, &options).unwrap();
    let hs = |term, vote, commit| HardState { term, vote, commit };
    wal.save(Some(&hs(1, 1, 0)), &[entry(1, 1, 50), entry(2, 1, 50)]).unwrap();
    // Only the commit index moves: written, not synced.
    wal.save(Some(&hs(1, 1, 2)), &[]).unwrap();
    assert_eq!(wal.hard_state(), hs(1, 1, 2), "the new commit index is visible at once");
    drop(wal);
    fs.crash_lose_all_unsynced();
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.hard_state(), hs(1, 1, 0), "a commit-only change was not synced");
    assert_eq!(wal.last_index(), 2, "entries are always synced");
    // A vote change must be synced before the vote is sent.
    wal.save(Some(&hs(2, 3, 2)), &[]).unwrap();
    drop(wal);
    fs.crash_lose_all_unsynced();
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.hard_state(), hs(2, 3, 2), "a term or vote change is synced");

    // Without the rule, every save is synced.
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    wal.save(Some(&hs(1, 1, 0)), &[entry(1, 1, 50)]).unwrap();
    wal.save(Some(&hs(1, 1, 1)), &[]).unwrap();
    drop(wal);
    fs.crash_lose_all_unsynced();
    assert_eq!(open(&fs, &small_options()).unwrap().hard_state(), hs(1, 1, 1));
}

#[test]
fn a_failed_write_poisons_the_log() {
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    wal.save(None, &[entry(1, 1, 50)]).unwrap();
    fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::WriteEio });
    assert!(
        matches!(wal.save(None, &[entry(2, 1, 50)]), Err(Error::Io(_))),
        "the failed write is reported"
    );
    assert!(
        matches!(wal.save(None, &[entry(2, 1, 50)]), Err(Error::Poisoned)),
        "and the log refuses writes after it"
    );
    assert!(matches!(wal.compact(1), Err(Error::Poisoned)));
    assert_eq!(wal.entries(1, 2, u64::MAX).unwrap(), [entry(1, 1, 50)], "reads still work");
    drop(wal);
    let wal = open(&fs, &small_options()).unwrap();
    assert_eq!(wal.last_index(), 1, "reopening recovers what was acknowledged");
    wal.save(None, &[entry(2, 1, 50)]).unwrap();
}

#[test]
fn a_sync_after_reopen_makes_a_segment_created_before_it_durable() {
    // A process stops (no power cut) after rolling over to a segment whose directory entry was
    // never synced; the next process syncs: everything it reads back must now survive a power
    // cut, the new segment's name included.
    let options = WalOptions { sync_policy: SyncPolicy::Never, ..small_options() };
    let fs = CrashFs::new();
    let wal = open(&fs, &options).unwrap();
    let es: Vec<Entry> = (1..=30).map(|i| entry(i, 1, 200)).collect();
    for chunk in es.chunks(3) {
        wal.save(None, chunk).unwrap();
    }
    assert!(wal.segment_count() > 1, "the log rolled over");
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.last_index(), 30, "a clean reopen reads every write back");
    wal.sync().unwrap();
    drop(wal);
    fs.crash_lose_all_unsynced();
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.last_index(), 30, "the sync made every entry durable: {}", describe(&wal));
    assert_eq!(wal.entries(1, 31, u64::MAX).unwrap(), es);
}

#[test]
fn a_segment_named_beyond_the_largest_sequence_is_corruption_not_a_panic() {
    // No raftwal log reaches sequence 2^32; a file named so (here with a damaged header, which
    // recovery would otherwise cut and remove) is refused by name.
    let fs = CrashFs::new();
    let name = raftwal::wal::format::segment_name(u64::MAX, 5);
    fs.write_file_raw(&dir().join(&name), &[0xAB; 40]).unwrap();
    match open(&fs, &small_options()) {
        Err(Error::Corruption { segment, offset, kind: CorruptionKind::Malformed(_) }) => {
            assert_eq!(segment, Path::new(&name));
            assert_eq!(offset, 0);
        }
        other => panic!("expected corruption naming {name}, got {other:?}"),
    }
}

#[test]
fn a_segment_ending_inside_the_padding_of_its_last_record_opens() {
    // The padding after a record's payload is not covered by its CRC; a file cut inside it
    // (shorter than the aligned frame) still holds the whole record.
    let fs = CrashFs::new();
    let wal = open(&fs, &small_options()).unwrap();
    // A 5-byte payload after the 21-byte entry header and the 4-byte count: 30 bytes, padded.
    let es = [Entry::new(1, 1, Bytes::from_static(b"abcde"))];
    wal.save(None, &es).unwrap();
    drop(wal);
    let path =
        fs.list_all().into_iter().find(|p| p.extension().is_some_and(|e| e == "wal")).unwrap();
    let bytes = fs.read_file(&path).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert_ne!(end % 8, 0, "the file is cut inside the last record's padding");
    fs.write_file_raw(&path, &bytes[..end]).unwrap();
    let wal = open(&fs, &small_options()).expect("the log opens");
    assert_eq!(wal.entries(1, 2, u64::MAX).unwrap(), es, "the record is whole");
}

#[test]
fn a_checkpoint_claiming_a_huge_deleted_prefix_costs_no_memory_and_is_corruption() {
    // A first checkpoint says entries (0, 2^40) lay in segments already deleted. Those entries
    // must be compacted away later in the log; here they are not, so the log is corrupt. The
    // claim is not bounded by any file's size, so it must not be materialized entry by entry.
    use raftwal::wal::format::{Checkpoint, Record, RecordType, SegmentHeader, append_record};
    let last = 1u64 << 40;
    let header =
        SegmentHeader { sequence: 1, first_record: last + 1, prev_crc: 0, recycled: false };
    let mut bytes = header.encode().to_vec();
    let checkpoint =
        Record::Checkpoint(vec![Checkpoint { last_index: last, ..Checkpoint::default() }]);
    append_record(&mut bytes, RecordType::Checkpoint, 0, 1, 0, 0, |out| {
        checkpoint.encode_payload(out)
    });
    let fs = CrashFs::new();
    let name = raftwal::wal::format::segment_name(1, last + 1);
    fs.write_file_raw(&dir().join(&name), &bytes).unwrap();
    match open(&fs, &small_options()) {
        Err(Error::Corruption { kind: CorruptionKind::Missing, .. }) => {}
        other => panic!("expected corruption (missing entries), got {other:?}"),
    }
}

/// Options under which a save of a few hundred KiB is one write of several pieces: the writer
/// hands such a write to the kernel 256 KiB at a time and starts each piece's writeback.
fn large_write_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 1 << 20,
        max_record_bytes: 64 << 10,
        prepare_in_background: false,
        cache_bytes: 4096,
        ..WalOptions::default()
    }
}

/// [`large_write_options`] with segments of `segment_size_bytes`, each but a new log's first
/// prepared on a background thread.
fn background_options(segment_size_bytes: u64) -> WalOptions {
    WalOptions { segment_size_bytes, prepare_in_background: true, ..large_write_options() }
}

/// `count` entries from `first` in `term`, of 1,000 bytes each.
fn large_run(first: u64, count: u64, term: u64) -> Vec<Entry> {
    (first..first + count).map(|i| entry(i, term, 1000)).collect()
}

/// The kinds of the operations `fs` sees while `f` runs.
fn operations_of(fs: &CrashFs, f: impl FnOnce()) -> Vec<raftwal::io::OpKind> {
    let seen: Arc<std::sync::Mutex<Vec<raftwal::io::OpKind>>> = Arc::default();
    let log = seen.clone();
    fs.set_hook(Some(Arc::new(move |event: &raftwal::io::OpEvent<'_>| {
        log.lock().unwrap().push(event.kind);
        Ok(())
    })));
    f();
    fs.set_hook(None);
    seen.lock().unwrap().clone()
}

#[test]
fn a_large_synced_write_goes_in_pieces_whose_writeback_starts_before_its_sync() {
    use raftwal::io::OpKind::{StartWriteback, Sync, Write};
    for policy in [SyncPolicy::Always, SyncPolicy::Never] {
        let fs = CrashFs::new();
        let options = WalOptions { sync_policy: policy, ..large_write_options() };
        let wal = open(&fs, &options).unwrap();
        // The segment's first write (its header, synced at once) is out of the way.
        wal.save(Some(&HardState { term: 1, vote: 1, commit: 0 }), &large_run(1, 2, 1)).unwrap();
        let big = large_run(3, 1024, 1); // about 1 MiB
        let ops = operations_of(&fs, || wal.save(None, &big).unwrap());
        let written: Vec<_> = ops.iter().take_while(|k| **k != Sync).collect();
        if policy == SyncPolicy::Always {
            // Write, StartWriteback, Write, StartWriteback, ..., then the sync.
            let pieces = written.len() / 2;
            assert!(pieces >= 4, "1 MiB in pieces of 256 KiB: {ops:?}");
            assert!(
                written.chunks(2).all(|pair| pair == [&Write, &StartWriteback]),
                "each piece's writeback starts after it is written: {ops:?}"
            );
            assert!(ops.contains(&Sync), "{ops:?}");
        } else {
            assert_eq!(written, [&Write], "without a sync to follow, one write: {ops:?}");
        }
        wal.sync().unwrap();
        drop(wal);
        let wal = open(&fs.power_cut_copy(), &options).unwrap();
        assert_eq!(wal.last_index(), 1026);
        assert_eq!(wal.entries(3, 1027, u64::MAX).unwrap(), big);
    }
}

#[test]
fn a_writeback_that_cannot_start_poisons_the_log() {
    let fs = CrashFs::new();
    let wal = open(&fs, &large_write_options()).unwrap();
    let first = large_run(1, 2, 1);
    wal.save(Some(&HardState { term: 1, vote: 1, commit: 0 }), &first).unwrap();
    fs.set_hook(Some(Arc::new(|event: &raftwal::io::OpEvent<'_>| {
        if event.kind == raftwal::io::OpKind::StartWriteback {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    })));
    assert!(matches!(wal.save(None, &large_run(3, 600, 1)), Err(Error::Io(_))));
    fs.set_hook(None);
    // Never retried: the log refuses every write after it.
    assert!(wal.save(None, &large_run(3, 1, 1)).is_err(), "the log is poisoned");
    drop(wal);
    // What was acknowledged is there; the failed write is whole or absent (it was never synced).
    let wal = open(&fs.power_cut_copy(), &large_write_options()).unwrap();
    assert_eq!(wal.entries(1, 3, u64::MAX).unwrap(), first);
    assert!([2, 602].contains(&wal.last_index()), "last index {}", wal.last_index());
}

/// Polls `done` every millisecond until it holds, for 10 s at most.
fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_write_made_while_another_sync_runs_leaves_its_writeback_to_the_next_sync() {
    // Writer A's fdatasync is held in the hook; writer B writes meanwhile. B's write starts no
    // writeback (it would compete with the running sync for the same file); a write made with
    // no sync running does start one.
    use raftwal::io::OpKind;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let fs = CrashFs::new();
    let wal = open(&fs, &large_write_options()).unwrap();
    wal.save(Some(&HardState { term: 1, vote: 1, commit: 0 }), &[entry(1, 1, 100)]).unwrap();
    let seen: Arc<Mutex<Vec<OpKind>>> = Arc::default();
    let (log, armed, release) =
        (seen.clone(), Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(false)));
    let (hold, free) = (armed.clone(), release.clone());
    fs.set_hook(Some(Arc::new(move |event: &raftwal::io::OpEvent<'_>| {
        log.lock().unwrap().push(event.kind);
        // The first sync waits until released.
        if event.kind == OpKind::Sync && hold.swap(false, Ordering::SeqCst) {
            wait_for(|| free.load(Ordering::SeqCst));
        }
        Ok(())
    })));
    let count = |kind: OpKind| seen.lock().unwrap().iter().filter(|k| **k == kind).count();
    std::thread::scope(|scope| {
        let a = scope.spawn(|| wal.save(None, &[entry(2, 1, 100)]));
        wait_for(|| count(OpKind::Sync) == 1); // A reaches its sync at once
        assert_eq!(count(OpKind::Sync), 1, "A's sync is running");
        assert_eq!(count(OpKind::StartWriteback), 1, "A's own write started its writeback");
        let b = scope.spawn(|| wal.save(None, &[entry(3, 1, 100)]));
        wait_for(|| count(OpKind::Write) == 2); // B writes at once, then waits for A's sync
        release.store(true, Ordering::SeqCst);
        a.join().unwrap().unwrap();
        b.join().unwrap().unwrap();
    });
    let kinds = seen.lock().unwrap().clone();
    // B's write is the second one; up to the sync that covers it, no writeback was started.
    let b_write = kinds.iter().enumerate().filter(|(_, k)| **k == OpKind::Write).nth(1).unwrap().0;
    let next_sync = b_write + kinds[b_write..].iter().position(|k| *k == OpKind::Sync).unwrap();
    assert!(
        !kinds[b_write..next_sync].contains(&OpKind::StartWriteback),
        "B started a writeback while A's sync ran: {kinds:?}"
    );
    // With no sync running, a write starts its writeback again.
    let before = count(OpKind::StartWriteback);
    wal.save(None, &[entry(4, 1, 100)]).unwrap();
    assert_eq!(count(OpKind::StartWriteback), before + 1);
    fs.set_hook(None);
    drop(wal);
    let wal = open(&fs.power_cut_copy(), &large_write_options()).unwrap();
    assert_eq!(wal.last_index(), 4);
}

/// Three saves of 270 KiB (two pieces each), one of them an overwrite by a new leader, among
/// small saves, over 1 MiB segments.
fn large_write_workload() -> Vec<Step> {
    let mut steps = Vec::new();
    let (mut next, mut term) = (1u64, 1u64);
    for round in 0..24u64 {
        let count = if round % 10 == 4 { 270 } else { 2 };
        steps.push(Step::Save(
            Some(HardState { term, vote: 1, commit: next.saturating_sub(1) }),
            large_run(next, count, term),
        ));
        next += count;
        if round == 12 {
            // A new leader replaces the last entry with a large run.
            term += 1;
            next -= 1;
            steps.push(Step::Save(
                Some(HardState { term, vote: 2, commit: next - 1 }),
                large_run(next, 270, term),
            ));
            next += 270;
        }
    }
    steps
}

#[test]
fn a_crash_inside_a_write_handed_over_in_pieces_keeps_all_of_it_or_none() {
    let points = crash_at_every_operation(&large_write_options(), &large_write_workload());
    println!("large-write crash points checked: {points} x 3 seeds");
}

#[test]
fn a_new_logs_first_segment_is_left_once_the_next_one_is_prepared() {
    // The first segment of a new log is allocated without zeros; later ones are prepared
    // zero-filled in the background. Once the second is ready, the next write seals the first.
    let options = background_options(256 << 10);
    let fs = CrashFs::new();
    let wal = open(&fs, &options).unwrap();
    let mut next = 1;
    // Bounded: the preparation of a 256 KiB file on CrashFs takes far less than 10 s. No hard
    // state: a vote would seal the segment anyway (DESIGN.md §7, case 22).
    for _ in 0..10_000 {
        wal.save(None, &[entry(next, 1, 100)]).unwrap();
        next += 1;
        if segments(&fs).len() > 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let written = wal.metrics().bytes_written;
    assert_eq!(segments(&fs).len(), 2, "the first segment was left");
    assert!(written < options.segment_size_bytes / 4, "left long before it filled: {written} B");
    // Only the first one: the second is used until it fills, as every later one is.
    let before = segments(&fs).len();
    for _ in 0..200 {
        wal.save(None, &[entry(next, 1, 100)]).unwrap();
        next += 1;
    }
    assert_eq!(segments(&fs).len(), before, "later segments are not left early");
    drop(wal);
    let wal = open(&fs.power_cut_copy(), &options).unwrap();
    assert_eq!(wal.last_index(), next - 1);
    let all = wal.entries(1, next, u64::MAX).unwrap();
    assert!(all.iter().zip(1..).all(|(e, i)| *e == entry(i, 1, 100)));
}

#[test]
fn a_failed_preparation_keeps_the_first_segment_in_use_and_the_log_healthy() {
    // The file of segment 2 cannot be created: the first segment is not left early, no write
    // fails for it, and the rollover that needs the file prepares it then.
    let options = background_options(64 << 10);
    let fs = CrashFs::new();
    let temp_files = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = temp_files.clone();
    fs.set_hook(Some(Arc::new(move |event: &raftwal::io::OpEvent<'_>| {
        let temp = event.path.is_some_and(|p| p.extension().is_some_and(|e| e == "tmp"));
        // The first temp file is the new log's first segment; the next ones are preparations.
        if event.kind == raftwal::io::OpKind::Create
            && temp
            && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0
        {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        Ok(())
    })));
    let wal = open(&fs, &options).unwrap();
    let mut next = 1;
    for _ in 0..50 {
        wal.save(None, &[entry(next, 1, 100)]).unwrap();
        next += 1;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(temp_files.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the preparation ran");
    assert_eq!(segments(&fs).len(), 1, "the first segment stays in use");
    fs.set_hook(None);
    // Past the end of the first segment: the rollover that needs the file reports the failed
    // preparation once (refused, nothing written, the log not poisoned), then prepares it.
    let mut refused = 0;
    for _ in 0..800 {
        match wal.save(None, &[entry(next, 1, 100)]) {
            Ok(()) => next += 1,
            Err(Error::Io(e)) if e.raw_os_error() == Some(28) => refused += 1,
            Err(e) => panic!("save of {next}: {e}"),
        }
    }
    assert!(refused <= 1, "refused {refused} times");
    assert!(segments(&fs).len() > 1);
    drop(wal);
    let wal = open(&fs.power_cut_copy(), &options).unwrap();
    assert_eq!(wal.last_index(), next - 1);
}

/// The bytes of a sealed segment's file that its records, footer and trailer take: the trailer
/// (at the file's end) points at the footer, which a zeroed frame header follows.
fn sealed_bytes(file: &[u8]) -> Option<usize> {
    let trailer = Trailer::decode(&file[file.len().checked_sub(TRAILER_LEN)?..])?;
    Some(
        trailer.footer_offset as usize
            + trailer.footer_len as usize
            + FRAME_HEADER_LEN
            + TRAILER_LEN,
    )
}

#[test]
fn a_new_logs_first_segment_sealed_early_keeps_only_its_records_and_reopens_from_its_footer() {
    // The first save votes: the seal it makes (DESIGN.md §7, case 22) ends the first segment,
    // which a new log allocates without zero-filling, after one record. Its unused space goes.
    let options = WalOptions { segment_size_bytes: 64 << 10, ..small_options() };
    let fs = CrashFs::new();
    let wal = open(&fs, &options).unwrap();
    let vote = HardState { term: 1, vote: 1, commit: 0 };
    wal.save(Some(&vote), &[entry(1, 1, 100), entry(2, 1, 100)]).unwrap();
    wal.save(None, &[entry(3, 1, 100)]).unwrap();
    let files = segments(&fs);
    assert_eq!(files.len(), 2, "the vote sealed the first segment: {files:?}");
    let first = fs.read_file(&files[0]).unwrap();
    assert_eq!(
        sealed_bytes(&first),
        Some(first.len()),
        "a trailer ends the file, after its footer"
    );
    assert!(first.len() < 4096, "{} bytes kept of a 64 KiB segment", first.len());
    let second = fs.read_file(&files[1]).unwrap();
    assert_eq!(second.len(), 64 << 10, "a prepared segment keeps its size");
    drop(wal);
    let fs = fs.power_cut_copy();
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.recovery_report().rows[0], "F1", "the cut segment is replayed from its footer");
    assert_eq!(wal.hard_state(), vote);
    let read = wal.entries(1, 4, u64::MAX).unwrap();
    assert_eq!(read, vec![entry(1, 1, 100), entry(2, 1, 100), entry(3, 1, 100)]);
    // Released, the cut file is deleted; a full-size one is kept for reuse.
    for index in 4..200 {
        wal.save(None, &[entry(index, 1, 1000)]).unwrap();
    }
    assert!(segments(&fs).len() >= 4);
    wal.compact(199).unwrap();
    let names: Vec<String> = fs
        .list_all()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(!names.contains(&pool_name(1)), "the cut file is not kept: {names:?}");
    assert!(names.contains(&pool_name(2)), "a full-size file is kept: {names:?}");
}

/// Held until [`release`]d: the background preparation of segment 2.
pub type Gate = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

/// Holds the background preparation of segment 2 before it creates its file, until
/// [`release`] or for `at_most` (it then fails with "held preparation timed out").
pub fn hold_preparation(fs: &CrashFs, at_most: std::time::Duration) -> Gate {
    let held: Gate = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
    let gate = held.clone();
    let halted = fs.clone();
    fs.set_hook(Some(Arc::new(move |event: &raftwal::io::OpEvent<'_>| {
        let prepared = raftwal::wal::format::temp_name(2);
        if event.kind == raftwal::io::OpKind::Create
            && event.path.and_then(Path::file_name).is_some_and(|name| *name == *prepared)
        {
            let (lock, released) = &*gate;
            let started = std::time::Instant::now();
            let mut guard = lock.lock().unwrap();
            // Bounded by `at_most`. A halted file system (a crash test) lets it go at once: the
            // log dropped after the halt joins this thread.
            while *guard {
                if halted.is_halted() {
                    return Err(std::io::Error::other("held preparation: halted"));
                }
                if started.elapsed() >= at_most {
                    return Err(std::io::Error::other("held preparation timed out"));
                }
                let slice = std::time::Duration::from_millis(10);
                guard = released.wait_timeout(guard, slice).unwrap().0;
            }
        }
        Ok(())
    })));
    held
}

pub fn release(gate: &Gate) {
    let (lock, released) = &**gate;
    *lock.lock().unwrap() = false;
    released.notify_all();
}

/// Saves small entries from `next` on, a millisecond apart, until the log holds more than
/// `segments` segments: the writer left the one in use for a file prepared meanwhile.
fn save_until_a_segment_is_left(fs: &CrashFs, wal: &Wal, next: &mut u64, segments: usize) {
    let started = std::time::Instant::now();
    // Bounded by the deadline.
    while self::segments(fs).len() == segments {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "never left");
        wal.save(None, &[entry(*next, 1, 10)]).unwrap();
        *next += 1;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_rollover_does_not_wait_for_a_preparation_still_running_and_leaves_its_segment_once_ready() {
    // The background preparation of segment 2 is held before it creates its file. Rollovers
    // meanwhile start their segments in files of their own, written as they go; once the held
    // file is prepared, the next write leaves the segment in use for it.
    let options = background_options(64 << 10);
    let fs = CrashFs::new();
    // A rollover that waited for this file would hold the test for a minute, then see the
    // preparation fail.
    let held = hold_preparation(&fs, std::time::Duration::from_secs(60));
    let wal = open(&fs, &options).unwrap();
    let mut next = 1;
    // About 200 KB: three rollovers or more while the preparation is held.
    for _ in 0..200 {
        wal.save(None, &[entry(next, 1, 1000)]).unwrap();
        next += 1;
    }
    let unwritten = segments(&fs);
    assert!(unwritten.len() >= 4, "rollovers went on: {unwritten:?}");
    for path in &unwritten[1..unwritten.len() - 1] {
        let file = fs.read_file(path).unwrap();
        assert_eq!(
            sealed_bytes(&file),
            Some(file.len()),
            "{} holds only what it was given",
            path.display()
        );
    }
    // Released: once the file is prepared, a write leaves the segment in use for it.
    release(&held);
    save_until_a_segment_is_left(&fs, &wal, &mut next, unwritten.len());
    let now = segments(&fs);
    let newest = fs.read_file(now.last().unwrap()).unwrap();
    assert_eq!(newest.len(), 64 << 10, "the prepared file, preallocated, is in use");
    let left = fs.read_file(&now[now.len() - 2]).unwrap();
    assert_eq!(
        sealed_bytes(&left),
        Some(left.len()),
        "the segment left holds only what it was given"
    );
    fs.set_hook(None);
    drop(wal);
    let wal = open(&fs.power_cut_copy(), &options).unwrap();
    assert_eq!(wal.last_index(), next - 1);
    let read = wal.entries(1, next, u64::MAX).unwrap();
    assert_eq!(read.len() as u64, next - 1);
    assert!(
        read.iter()
            .all(|e| e.data == entry(e.index, 1, if e.index < 201 { 1000 } else { 10 }).data)
    );
}

#[test]
fn a_crash_at_every_io_operation_of_rollovers_that_did_not_wait_loses_nothing_acknowledged() {
    // The preparation held throughout: the first segment (preallocated, not zero-filled) is
    // sealed by the first save's vote and cut, and every later segment starts in a file of its
    // own that its appends extend.
    let options = WalOptions { prepare_in_background: true, ..small_options() };
    let steps = workload();
    // Uncrashed, every step succeeds and every segment after the first came from a rollover
    // that did not wait: the preparation never created its file.
    let fs = CrashFs::new();
    let gate = hold_preparation(&fs, std::time::Duration::from_secs(60));
    let wal = open(&fs, &options).unwrap();
    for step in &steps {
        apply(&wal, step).unwrap();
    }
    assert!(segments(&fs).len() >= 3, "{:?}", segments(&fs));
    let prepared =
        fs.list_all().into_iter().any(|p| p.ends_with(raftwal::wal::format::temp_name(2)));
    assert!(!prepared, "the held preparation created no file");
    release(&gate);
    drop(wal);
    let points = crash_at_every_operation_held(&options, &steps, true);
    println!("crash points of rollovers into files not preallocated: {points} x 3 seeds");
}

#[test]
fn a_reopened_segment_that_was_not_preallocated_is_left_once_the_next_file_is_ready() {
    // A rollover that did not wait leaves the newest segment in a short file; after a reopen,
    // the writer still leaves it for the prepared file instead of filling it.
    let options = background_options(64 << 10);
    let fs = CrashFs::new();
    let held = hold_preparation(&fs, std::time::Duration::from_secs(60));
    let wal = open(&fs, &options).unwrap();
    let mut next = 1;
    // Bounded: past the first segment, into one that did not wait.
    while segments(&fs).len() < 2 {
        wal.save(None, &[entry(next, 1, 1000)]).unwrap();
        next += 1;
    }
    wal.save(None, &[entry(next, 1, 1000)]).unwrap();
    next += 1;
    release(&held);
    drop(wal);
    fs.set_hook(None);
    let fs = fs.power_cut_copy();
    let wal = open(&fs, &options).unwrap();
    let resumed = segments(&fs);
    let short = fs.read_file(resumed.last().unwrap()).unwrap().len();
    assert!(short < 16 << 10, "the newest segment is a short file: {short} bytes");
    save_until_a_segment_is_left(&fs, &wal, &mut next, resumed.len());
    let left = fs.read_file(&resumed[resumed.len() - 1]).unwrap();
    assert!(left.len() < 16 << 10, "left, not filled: {} bytes", left.len());
    assert_eq!(sealed_bytes(&left), Some(left.len()), "sealed where its records end");
    drop(wal);
    let wal = open(&fs.power_cut_copy(), &options).unwrap();
    assert_eq!(wal.last_index(), next - 1);
}

#[test]
fn a_segment_that_was_not_preallocated_sealed_without_a_footer_ends_in_zeros() {
    // Footers above max_record_bytes are not written. A file that appends extended would end
    // in the last record's bytes, which an entry's payload could make read as a trailer.
    let options = WalOptions { max_record_bytes: 2048, ..background_options(16 << 10) };
    let fs = CrashFs::new();
    let held = hold_preparation(&fs, std::time::Duration::from_secs(60));
    let wal = open(&fs, &options).unwrap();
    let mut next = 1;
    // Bounded: three segments of 16 KiB of small records, each entry in a term of its own, so
    // that the footer lists a run per entry and outgrows a record.
    while segments(&fs).len() < 4 {
        wal.save(None, &[entry(next, next, 40)]).unwrap();
        next += 1;
    }
    let files = segments(&fs);
    let sealed = fs.read_file(&files[2]).unwrap();
    assert!(sealed.len() < (16 << 10) + 4096, "not preallocated: {} bytes", sealed.len());
    assert_eq!(sealed_bytes(&sealed), None, "sealed without a footer");
    assert!(sealed[sealed.len() - TRAILER_LEN..].iter().all(|&b| b == 0), "ends in zeros");
    release(&held);
    drop(wal);
    fs.set_hook(None);
    let wal = open(&fs.power_cut_copy(), &options).unwrap();
    assert_eq!(wal.recovery_report().rows[2], "R1", "read whole, clean end");
    assert_eq!(wal.last_index(), next - 1);
}

#[test]
fn past_the_bound_on_live_segments_a_rollover_waits_for_the_preparation() {
    // Unwritten segments are started only while the log holds fewer than the bound: each
    // live segment holds an open file. The preparation is held for ten seconds (the saves
    // before the bound take a fraction of one), then fails: the rollover that meets the bound
    // waits for it and reports its failure.
    let options = background_options(8 << 10);
    let fs = CrashFs::new();
    hold_preparation(&fs, std::time::Duration::from_secs(10));
    let wal = open(&fs, &options).unwrap();
    let mut next = 1;
    // Bounded: a few entries fill each segment.
    let refused = loop {
        match wal.save(None, &[entry(next, 1, 1000)]) {
            Ok(()) => next += 1,
            Err(e) => break e,
        }
        assert!(next < 20_000, "no rollover waited");
    };
    assert!(refused.to_string().contains("held preparation timed out"), "{refused}");
    assert_eq!(segments(&fs).len(), UNWAITED_ROLLOVER_MAX_SEGMENTS);
    // Refused, not poisoned: the next rollover prepares its file itself.
    wal.save(None, &[entry(next, 1, 1000)]).unwrap();
    fs.set_hook(None);
    drop(wal);
    let wal = open(&fs.power_cut_copy(), &options).unwrap();
    assert_eq!(wal.last_index(), next);
}
