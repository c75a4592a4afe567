//! `RecoveryMode::Repairable`: damage to durable data is cut, what the cut lost is recorded
//! durably first (the `repair` file), term and vote survive, and each group reports
//! `repair_state` until its log holds what it lost again.

use std::path::PathBuf;
use std::sync::Arc;

use raftwal::io::{CrashFs, Fault, FaultKind, FileSystem, Fs};
use raftwal::wal::Wal;
use raftwal::wal::format::{self, FRAME_HEADER_LEN, Record};
use raftwal::wal::recovery::{ScannedRecord, scan_segment};
use raftwal::wal::repair::UNKNOWN_INDEX;
use raftwal::{
    Error, HardState, LogEngine, RecoveryMode, RepairState, Storage, SyncPolicy, WalOptions,
    WriteBatch,
};

use crate::wal::{dir, entry};

fn options(mode: RecoveryMode) -> WalOptions {
    WalOptions {
        segment_size_bytes: 64 << 10,
        max_record_bytes: 4096,
        prepare_in_background: false,
        sync_policy: SyncPolicy::Always,
        recovery_mode: mode,
        ..WalOptions::default()
    }
}

fn open(fs: &CrashFs, mode: RecoveryMode) -> raftwal::Result<Wal> {
    let shared: Fs = Arc::new(fs.clone());
    Wal::open(shared, &dir(), options(mode))
}

fn segments(fs: &CrashFs) -> Vec<String> {
    let mut names: Vec<String> = fs
        .list(&dir())
        .unwrap()
        .into_iter()
        .filter(|n| format::parse_segment_name(n).is_some())
        .collect();
    names.sort();
    names
}

fn records(fs: &CrashFs, name: &str) -> Vec<ScannedRecord> {
    scan_segment(&fs.read_file(&dir().join(name)).unwrap(), 1 << 20).records
}

/// Flips a bit inside the payload of `record` of segment `name`.
fn damage(fs: &CrashFs, name: &str, record: &ScannedRecord) {
    let bit = (record.offset + FRAME_HEADER_LEN as u64 + 3) * 8;
    fs.flip_bit(&dir().join(name), bit).unwrap();
}

/// The entries record of segment `name` that starts at `index`.
fn entries_record(fs: &CrashFs, name: &str, index: u64) -> ScannedRecord {
    records(fs, name)
        .into_iter()
        .find(|r| matches!(&r.record, Record::Entries { entries, .. } if entries[0].index == index))
        .unwrap_or_else(|| panic!("no entries record starts at {index} in {name}"))
}

const VOTE: HardState = HardState { term: 2, vote: 3, commit: 0 };

/// A vote (which seals the first segment), then entries 1..=20 one write each, commit 15.
fn build() -> CrashFs {
    let fs = CrashFs::new();
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    wal.save(Some(&VOTE), &[]).unwrap();
    for i in 1..=20 {
        let hs = HardState { commit: i.min(15), ..VOTE };
        wal.save(Some(&hs), &[entry(i, 2, 100)]).unwrap();
    }
    fs
}

#[test]
fn damage_in_the_newest_segment_is_cut_and_the_loss_recorded() {
    let fs = build();
    let newest = segments(&fs).pop().unwrap();
    damage(&fs, &newest, &entries_record(&fs, &newest, 8));
    assert!(
        matches!(open(&fs, RecoveryMode::Strict), Err(Error::Corruption { .. })),
        "a later record witnesses the damaged one: Strict refuses"
    );

    let wal = open(&fs, RecoveryMode::Repairable).unwrap();
    assert_eq!(wal.last_index(), 7, "cut at the damaged write");
    let hs = wal.hard_state();
    assert_eq!((hs.term, hs.vote), (VOTE.term, VOTE.vote), "term and vote are kept");
    assert_eq!(hs.commit, 7, "the commit index is brought within the log");
    assert_eq!(wal.repair_state(), Some(RepairState { index: 20, term: 2 }));
    drop(wal);

    // Still repairing in any mode, until the log holds index 20 again.
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    assert_eq!(wal.repair_state(), Some(RepairState { index: 20, term: 2 }));
    for i in 8..20 {
        wal.save(None, &[entry(i, 2, 100)]).unwrap();
        assert!(wal.repair_state().is_some(), "still short of 20 at {i}");
    }
    wal.save(None, &[entry(20, 2, 100)]).unwrap();
    assert_eq!(wal.repair_state(), None, "the durable log reaches what it lost");
    drop(wal);
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    assert_eq!(wal.repair_state(), None, "and that is durable");
    assert_eq!(wal.last_index(), 20);
    assert!(!fs.list(&dir()).unwrap().contains(&"repair".to_string()));
}

#[test]
fn a_damaged_vote_in_a_sealed_segment_comes_back_from_its_copies() {
    let fs = CrashFs::new();
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    wal.save(None, &[entry(1, 1, 100), entry(2, 1, 100)]).unwrap();
    // The vote seals the segment that holds entries 1 and 2 (so it is kept).
    wal.save(Some(&VOTE), &[]).unwrap();
    for i in 3..=6 {
        wal.save(None, &[entry(i, 2, 100)]).unwrap();
    }
    drop(wal);
    let first = segments(&fs)[0].clone();
    let vote = records(&fs, &first)
        .into_iter()
        .find(|r| matches!(r.record, Record::HardState { hard_state, .. } if hard_state == VOTE))
        .expect("the vote's record is in the first segment");
    damage(&fs, &first, &vote);
    // Read through its footer, the sealed segment gives the vote from the footer's copy.
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    assert_eq!(wal.hard_state(), VOTE);
    assert_eq!(wal.last_index(), 6);
    drop(wal);

    // Read whole, the damage shows: Strict refuses, Repairable cuts and keeps the vote.
    let whole = |mode| {
        let shared: Fs = Arc::new(fs.clone());
        Wal::open(shared, &dir(), WalOptions { read_footers: false, ..options(mode) })
    };
    assert!(matches!(whole(RecoveryMode::Strict), Err(Error::Corruption { .. })));
    let wal = whole(RecoveryMode::Repairable).unwrap();
    let hs = wal.hard_state();
    assert_eq!((hs.term, hs.vote), (VOTE.term, VOTE.vote), "the vote survives its record");
    assert_eq!(wal.last_index(), 2, "everything after the damage is cut");
    // The sealed segment's footer names exactly what was lost.
    assert_eq!(wal.repair_state(), Some(RepairState { index: 6, term: 2 }));
}

#[test]
fn damage_to_the_only_copy_of_a_vote_is_refused_in_every_mode() {
    let fs = build();
    // The segment the vote sealed held no entry and was released: the newest segment's
    // checkpoint is the vote's only copy besides later hard state records.
    let newest = segments(&fs).pop().unwrap();
    let checkpoint = records(&fs, &newest).into_iter().next().unwrap();
    assert!(matches!(checkpoint.record, Record::Checkpoint(_)));
    damage(&fs, &newest, &checkpoint);
    for mode in [RecoveryMode::Strict, RecoveryMode::Repairable] {
        match open(&fs, mode) {
            Err(Error::Corruption { .. }) => {}
            other => panic!(
                "{mode:?}: a lost vote must be refused, got {:?}",
                other.map(|w| w.hard_state())
            ),
        }
    }
}

#[test]
fn a_group_whose_lost_records_nothing_bounds_repairs_until_cleared() {
    let fs = build();
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    // A last write holding only a hard state: after the damaged entries, nothing bounds them.
    wal.save(Some(&HardState { commit: 16, ..VOTE }), &[]).unwrap();
    drop(wal);
    let newest = segments(&fs).pop().unwrap();
    damage(&fs, &newest, &entries_record(&fs, &newest, 20));

    let wal = open(&fs, RecoveryMode::Repairable).unwrap();
    assert_eq!(wal.last_index(), 19);
    assert_eq!(wal.repair_state(), Some(RepairState { index: UNKNOWN_INDEX, term: 2 }));
    wal.save(None, &[entry(20, 2, 100), entry(21, 2, 100)]).unwrap();
    assert!(wal.repair_state().is_some(), "no index ends an unbounded repair");
    wal.clear_repair().unwrap();
    assert_eq!(wal.repair_state(), None);
    drop(wal);
    assert_eq!(open(&fs, RecoveryMode::Strict).unwrap().repair_state(), None);
}

/// The loss is recorded before anything is cut: a crash at any I/O operation of a Repairable
/// open leaves either the damage (and the next open repairs again) or the record of it.
#[test]
fn a_crash_during_a_repairable_open_never_forgets_the_loss() {
    let base = build();
    let newest = segments(&base).pop().unwrap();
    damage(&base, &newest, &entries_record(&base, &newest, 8));
    // Bounded: an open makes far fewer than 200 I/O operations.
    let mut reached_end = false;
    for at in 0..200u64 {
        for seed in 0..3 {
            let fs = base.power_cut_copy();
            fs.inject(Fault { at_op: at, kind: FaultKind::Halt });
            let done = open(&fs, RecoveryMode::Repairable).is_ok() && !fs.is_halted();
            reached_end |= done;
            fs.crash(seed);
            fs.clear_faults();
            let wal = open(&fs, RecoveryMode::Repairable)
                .unwrap_or_else(|e| panic!("crash at op {at} seed {seed}: reopen failed: {e}"));
            assert_eq!(
                wal.repair_state(),
                Some(RepairState { index: 20, term: 2 }),
                "crash at op {at} seed {seed}"
            );
            assert_eq!(wal.last_index(), 7);
            let hs = wal.hard_state();
            assert_eq!((hs.term, hs.vote), (VOTE.term, VOTE.vote));
        }
        if reached_end {
            break;
        }
    }
    assert!(reached_end, "some open ran to the end without reaching its halt");
}

#[test]
fn groups_repair_on_their_own_and_a_removed_group_stops_repairing() {
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let root = PathBuf::from("/node");
    let engine =
        LogEngine::open_with_fs(shared.clone(), &root, options(RecoveryMode::Strict)).unwrap();
    let mut batch = WriteBatch::new();
    for g in 1..=3u64 {
        batch.save(g, Some(&VOTE), &[]).unwrap();
    }
    engine.write(&mut batch).unwrap();
    for i in 1..=10u64 {
        for g in 1..=3u64 {
            batch.save(g, None, &[entry(i, 2, 100)]).unwrap();
            engine.write(&mut batch).unwrap();
        }
    }
    drop(engine);
    let wal_dir = root.join("wal");
    let mut names: Vec<String> = shared
        .list(&wal_dir)
        .unwrap()
        .into_iter()
        .filter(|n| format::parse_segment_name(n).is_some())
        .collect();
    names.sort();
    let newest = names.pop().unwrap();
    let victim = scan_segment(&fs.read_file(&wal_dir.join(&newest)).unwrap(), 1 << 20)
        .records
        .into_iter()
        .find(
            |r| matches!(&r.record, Record::Entries { group: 2, entries } if entries[0].index == 9),
        )
        .unwrap();
    fs.flip_bit(&wal_dir.join(&newest), (victim.offset + FRAME_HEADER_LEN as u64 + 3) * 8).unwrap();

    let engine =
        LogEngine::open_with_fs(shared.clone(), &root, options(RecoveryMode::Repairable)).unwrap();
    // The cut is at group 2's entry 9: group 1 lost entry 10, group 2 entries 9 and 10,
    // group 3 entries 9 and 10; every loss is bounded by a later record of the group.
    let state = |g| engine.group(g).unwrap().repair_state().unwrap();
    assert_eq!(engine.group(1).unwrap().last_index().unwrap(), 9);
    assert_eq!(engine.group(2).unwrap().last_index().unwrap(), 8);
    assert_eq!(engine.group(3).unwrap().last_index().unwrap(), 8);
    for g in 1..=3 {
        assert_eq!(state(g), Some(RepairState { index: 10, term: 2 }), "group {g}");
    }
    let group1 = engine.group(1).unwrap();
    group1.append(&[entry(10, 2, 100)]).unwrap();
    assert_eq!(group1.repair_state().unwrap(), None, "group 1 holds 10 again");
    assert!(state(2).is_some() && state(3).is_some(), "the others still repair");
    engine.remove_group(3).unwrap();
    assert_eq!(state(3), None, "a removed group has nothing to repair");
    drop((engine, group1));
    let engine =
        LogEngine::open_with_fs(shared.clone(), &root, options(RecoveryMode::Strict)).unwrap();
    let state = |g| engine.group(g).unwrap().repair_state().unwrap();
    assert_eq!((state(1), state(3)), (None, None));
    assert_eq!(state(2), Some(RepairState { index: 10, term: 2 }));
}

/// A vote seals its segment at once: the change has a copy in the sealed segment's footer and
/// in the next segment's checkpoint.
#[test]
fn a_term_or_vote_change_seals_its_segment() {
    let fs = CrashFs::new();
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    wal.save(None, &[entry(1, 1, 100)]).unwrap();
    assert_eq!(segments(&fs).len(), 1);
    wal.save(Some(&HardState { term: 1, vote: 0, commit: 1 }), &[]).unwrap();
    assert_eq!(segments(&fs).len(), 2, "a term change seals");
    wal.save(Some(&HardState { term: 1, vote: 0, commit: 1 }), &[entry(2, 1, 100)]).unwrap();
    wal.save(Some(&HardState { term: 1, vote: 0, commit: 2 }), &[]).unwrap();
    assert_eq!(segments(&fs).len(), 2, "a commit change does not");
    wal.save(Some(&HardState { term: 1, vote: 2, commit: 2 }), &[]).unwrap();
    assert_eq!(segments(&fs).len(), 3, "a vote seals");
    let newest = segments(&fs).pop().unwrap();
    let checkpoint = records(&fs, &newest)
        .into_iter()
        .find_map(|r| match r.record {
            Record::Checkpoint(parts) => Some(parts),
            _ => None,
        })
        .unwrap();
    assert_eq!(checkpoint[0].hard_state, HardState { term: 1, vote: 2, commit: 2 });
    // And both copies are durable: a power cut losing every unsynced write keeps the vote.
    let copy = fs.power_cut_copy();
    let wal = open(&copy, RecoveryMode::Strict).unwrap();
    assert_eq!(wal.hard_state().vote, 2);
}

/// A segment sealed (footer and trailer written) whose successor was then dropped as torn is
/// where writing resumes: its old trailer must not lead a later open to the old footer.
#[test]
fn writing_resumes_in_a_sealed_segment_whose_successor_was_torn() {
    let fs = CrashFs::new();
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    wal.save(Some(&VOTE), &[entry(1, 2, 100)]).unwrap();
    drop(wal);
    let names = segments(&fs);
    assert_eq!(names.len(), 2, "the vote sealed the first segment");
    // The successor's header never became durable: open drops it (row H1).
    let successor = dir().join(&names[1]);
    fs.write_file_raw(&successor, &vec![0u8; 64 << 10]).unwrap();
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    assert_eq!(segments(&fs).len(), 1);
    for i in 2..=5 {
        wal.save(None, &[entry(i, 2, 100)]).unwrap();
    }
    // Seal it again (a vote), then reopen: every entry is read back.
    wal.save(Some(&HardState { term: 3, vote: 1, commit: 0 }), &[entry(6, 3, 100)]).unwrap();
    wal.save(None, &[entry(7, 3, 100)]).unwrap();
    drop(wal);
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    assert_eq!(wal.last_index(), 7);
    let got = wal.entries(1, 8, u64::MAX).unwrap();
    assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
}

/// A write that replaced a suffix of the log (a new leader's entries) is lost to a cut: the
/// replaced entries come back, and they were never committed. The commit index after the open
/// must not count them, whatever the newer hard states past the cut said.
#[test]
fn a_cut_that_brings_back_replaced_entries_does_not_count_them_committed() {
    let fs = CrashFs::new();
    // Sealed segments read whole, so that damage in them is found at open.
    let open_whole = |mode| {
        let shared: Fs = Arc::new(fs.clone());
        Wal::open(shared, &dir(), WalOptions { read_footers: false, ..options(mode) })
    };
    let wal = open_whole(RecoveryMode::Strict).unwrap();
    let hs = |term, commit| HardState { term, vote: 0, commit };
    // Each term change seals its segment: one write per segment.
    wal.save(Some(&hs(1, 3)), &(1..=5).map(|i| entry(i, 1, 100)).collect::<Vec<_>>()).unwrap();
    // A leader of term 2 replaces 4 and 5 (never committed), then commits its entries.
    wal.save(Some(&hs(2, 3)), &(4..=6).map(|i| entry(i, 2, 100)).collect::<Vec<_>>()).unwrap();
    wal.save(Some(&hs(2, 6)), &[entry(7, 2, 100)]).unwrap();
    drop(wal);
    let replaced = segments(&fs)
        .into_iter()
        .find(|name| {
            records(&fs, name).iter().any(
                |r| matches!(&r.record, Record::Entries { entries, .. } if entries[0].index == 4),
            )
        })
        .expect("a segment holds the replacing write");
    damage(&fs, &replaced, &entries_record(&fs, &replaced, 4));

    let wal = open_whole(RecoveryMode::Repairable).unwrap();
    assert!(wal.repair_state().is_some());
    assert_eq!(wal.term(5).unwrap(), 1, "the cut brought back the replaced entry 5");
    assert_eq!(wal.hard_state().term, 2, "the term is kept");
    assert!(
        wal.hard_state().commit <= 3,
        "commit {} counts entries of term 1 that term 2 replaced",
        wal.hard_state().commit
    );
}
