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

use crate::snapshot_hardening::snap_files;
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

/// Opens with sealed segments read whole (not through their footers), so that damage in them
/// is found at open.
fn open_whole(fs: &CrashFs, mode: RecoveryMode) -> raftwal::Result<Wal> {
    let shared: Fs = Arc::new(fs.clone());
    Wal::open(shared, &dir(), WalOptions { read_footers: false, ..options(mode) })
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
    write_short_log(&open(&fs, RecoveryMode::Strict).unwrap());
    fs
}

/// The writes of [`build`].
fn write_short_log(wal: &Wal) {
    wal.save(Some(&VOTE), &[]).unwrap();
    for i in 1..=20 {
        let hs = HardState { commit: i.min(15), ..VOTE };
        wal.save(Some(&hs), &[entry(i, 2, 100)]).unwrap();
    }
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
    assert!(matches!(open_whole(&fs, RecoveryMode::Strict), Err(Error::Corruption { .. })));
    let wal = open_whole(&fs, RecoveryMode::Repairable).unwrap();
    let hs = wal.hard_state();
    assert_eq!((hs.term, hs.vote), (VOTE.term, VOTE.vote), "the vote survives its record");
    // Everything after the damage is cut, and entries 1 and 2, never committed, with it.
    assert_eq!(wal.last_index(), 0);
    // The sealed segment's footer names exactly what was lost.
    assert_eq!(wal.repair_state(), Some(RepairState { index: 6, term: 2 }));
}

/// The newest segment's checkpoint restates every group's term and vote; the segment before it
/// (kept for that reason, however little it holds) has them too. Damage to the checkpoint is cut
/// and repaired, term and vote coming from the segment before.
#[test]
fn damage_to_the_newest_checkpoint_keeps_term_and_vote_from_the_segment_before() {
    let fs = build();
    let names = segments(&fs);
    assert!(names.len() >= 2, "the segment the vote sealed stays: {names:?}");
    let newest = names.last().unwrap();
    let checkpoint = records(&fs, newest).into_iter().next().unwrap();
    assert!(matches!(checkpoint.record, Record::Checkpoint(_)));
    damage(&fs, newest, &checkpoint);
    assert!(matches!(open(&fs, RecoveryMode::Strict), Err(Error::Corruption { .. })));
    let wal = open(&fs, RecoveryMode::Repairable).unwrap();
    let hs = wal.hard_state();
    assert_eq!((hs.term, hs.vote), (VOTE.term, VOTE.vote), "term and vote survive");
    assert_eq!(wal.last_index(), 0, "the entries after the checkpoint went with the cut");
    assert_eq!(wal.repair_state(), Some(RepairState { index: 20, term: 2 }));
}

/// With every copy of the vote damaged (the newest segment's checkpoint, and the vote's own
/// record in the segment before it, read whole), no rule can keep the node from voting twice
/// in a term: every mode refuses.
#[test]
fn damage_to_every_copy_of_a_vote_is_refused_in_every_mode() {
    let fs = build();
    let names = segments(&fs);
    let newest = names.last().unwrap();
    let checkpoint = records(&fs, newest).into_iter().next().unwrap();
    damage(&fs, newest, &checkpoint);
    let vote = names[..names.len() - 1]
        .iter()
        .find_map(|name| {
            let record = records(&fs, name).into_iter().find(
                |r| matches!(r.record, Record::HardState { hard_state, .. } if hard_state == VOTE),
            )?;
            Some((name.clone(), record))
        })
        .expect("the vote's record is in the segment before");
    damage(&fs, &vote.0, &vote.1);
    for mode in [RecoveryMode::Strict, RecoveryMode::Repairable] {
        match open_whole(&fs, mode) {
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
    // Cut at entry 20; nothing past the commit index (16) is trusted after a cut, and no
    // truncation of a log exists but its snapshot: the log restarts there (index 0).
    assert_eq!(wal.last_index(), 0);
    assert_eq!(wal.repair_state(), Some(RepairState { index: UNKNOWN_INDEX, term: 2 }));
    let from_leader: Vec<_> = (1..=21).map(|i| entry(i, 2, 100)).collect();
    wal.save(None, &from_leader).unwrap();
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
    crash_every_point_of_a_repairable_open(&base, |wal, at, seed| {
        assert_eq!(
            wal.repair_state(),
            Some(RepairState { index: 20, term: 2 }),
            "crash at op {at} seed {seed}"
        );
        assert_eq!(wal.last_index(), 7);
    });
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
            let hs = HardState { commit: i, ..VOTE };
            batch.save(g, Some(&hs), &[entry(i, 2, 100)]).unwrap();
            engine.write(&mut batch).unwrap();
        }
    }
    drop(engine);
    let wal_dir = dir();
    let mut names = segments(&fs);
    let newest = names.pop().unwrap();
    let victim = scan_segment(&fs.read_file(&wal_dir.join(&newest)).unwrap(), 1 << 20)
        .records
        .into_iter()
        .find(
            |r| matches!(&r.record, Record::Entries { group: 2, entries, .. } if entries[0].index == 9),
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

/// A damaged snapshot with no older one the log covers: Strict refuses; Repairable starts the
/// group over from an empty log that keeps its membership, term and vote, and repairs up to
/// what it had, until a leader's snapshot covers it.
#[test]
fn a_damaged_snapshot_makes_the_group_repair_from_its_leader() {
    use bytes::Bytes;
    use raftwal::{ConfState, Snapshot, SnapshotMetadata, WalStorage};
    let tmp = tempfile::tempdir().unwrap();
    let members = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
    {
        let storage = WalStorage::open(tmp.path(), options(RecoveryMode::Strict)).unwrap();
        storage.save(Some(&VOTE), &[]).unwrap();
        let es: Vec<_> = (1..=8).map(|i| entry(i, 2, 100)).collect();
        storage.append(&es).unwrap();
        storage.create_snapshot(6, Some(members.clone()), Bytes::from(vec![7u8; 4096])).unwrap();
        storage.compact(6).unwrap();
    }
    let snap_dir = tmp.path().join(raftwal::storage::SNAP_DIR);
    let name = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with(".snap"))
        .unwrap();
    let mut bytes = std::fs::read(snap_dir.join(&name)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(snap_dir.join(&name), &bytes).unwrap();
    assert!(matches!(
        WalStorage::open(tmp.path(), options(RecoveryMode::Strict)),
        Err(Error::Corruption { .. })
    ));

    let storage = WalStorage::open(tmp.path(), options(RecoveryMode::Repairable)).unwrap();
    assert_eq!((storage.first_index().unwrap(), storage.last_index().unwrap()), (1, 0));
    let state = storage.initial_state().unwrap();
    assert_eq!((state.hard_state.term, state.hard_state.vote), (VOTE.term, VOTE.vote));
    assert_eq!(state.conf_state, members, "the membership is kept");
    assert_eq!(storage.repair_state().unwrap(), Some(RepairState { index: 8, term: 2 }));
    drop(storage);
    // Durably so: a Strict open of the reset log still repairs.
    let storage = WalStorage::open(tmp.path(), options(RecoveryMode::Strict)).unwrap();
    assert_eq!(storage.repair_state().unwrap(), Some(RepairState { index: 8, term: 2 }));
    let from_leader = Snapshot {
        metadata: SnapshotMetadata { index: 9, term: 2, conf_state: members },
        data: Bytes::from_static(b"state machine at 9"),
    };
    storage.apply_snapshot(from_leader).unwrap();
    assert_eq!(storage.repair_state().unwrap(), None, "the leader's snapshot covers 8");
}

/// Every sampled single-bit flip anywhere in a closed log's segments: a Repairable open either
/// refuses with `Corruption`, or comes back with the exact term and vote, entries that are the
/// ones written (or refused as damaged when read), a commit within the log, and a repair state
/// covering every acknowledged entry it no longer holds.
#[test]
fn any_single_bit_flip_is_refused_or_repaired_without_losing_term_vote_or_entries() {
    let small = |mode| WalOptions { segment_size_bytes: 4096, ..options(mode) };
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let wal = Wal::open(shared.clone(), &dir(), small(RecoveryMode::Strict)).unwrap();
    let mut hs = HardState { term: 1, vote: 1, commit: 0 };
    let mut written = Vec::new();
    for i in 1..=40u64 {
        if i == 12 || i == 27 {
            // Elections: a new term and vote, each sealing its segment.
            hs = HardState { term: hs.term + 1, vote: 1 + i % 3, commit: hs.commit };
        }
        hs.commit = i.saturating_sub(2);
        let e = entry(i, hs.term, 150);
        wal.save(Some(&hs), std::slice::from_ref(&e)).unwrap();
        written.push(e);
    }
    wal.close().unwrap();
    let names = segments(&fs);
    assert!(names.len() >= 3, "{names:?}");
    let (mut refused, mut repaired, mut same) = (0, 0, 0);
    for name in &names {
        let path = dir().join(name);
        let bytes = fs.read_file(&path).unwrap();
        let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
        // About 300 bits per segment, spread over its written bytes.
        let step = (end as u64 * 8).div_ceil(300).max(1);
        for bit in (0..end as u64 * 8).step_by(step as usize) {
            let copy = fs.power_cut_copy();
            copy.flip_bit(&path, bit).unwrap();
            let shared: Fs = Arc::new(copy.clone());
            let wal = match Wal::open(shared, &dir(), small(RecoveryMode::Repairable)) {
                Err(Error::Corruption { .. }) => {
                    refused += 1;
                    continue;
                }
                Err(e) => panic!("{name} bit {bit}: {e}"),
                Ok(wal) => wal,
            };
            let got = wal.hard_state();
            assert_eq!((got.term, got.vote), (hs.term, hs.vote), "{name} bit {bit}: term and vote");
            let last = wal.last_index();
            assert!(got.commit <= last, "{name} bit {bit}: commit {} past {last}", got.commit);
            for i in wal.first_index()..=last {
                match wal.entries(i, i + 1, u64::MAX) {
                    Ok(es) => assert_eq!(es[0], written[i as usize - 1], "{name} bit {bit}"),
                    Err(Error::Corruption { .. }) => {}
                    Err(e) => panic!("{name} bit {bit}: entry {i}: {e}"),
                }
            }
            if last < 40 {
                let state = wal.repair_state();
                assert!(
                    state.is_some_and(|s| s.index >= 40 && s.term >= hs.term),
                    "{name} bit {bit}: the log ends at {last} and repairs {state:?}"
                );
                repaired += 1;
            } else {
                same += 1;
            }
        }
    }
    println!("bit flips: {refused} refused, {repaired} repairing, {same} whole");
    assert!(repaired > 0 && same > 0, "{refused} {repaired} {same}");
}

/// Damage before the newest snapshot markers: the cut loses the markers of snapshots whose
/// files are committed and on disk, and rolls the log back to a marker whose file retention
/// already deleted. A Repairable open must neither delete the committed files nor refuse.
#[test]
fn a_cut_before_newer_snapshot_markers_keeps_their_files_and_opens() {
    use std::os::unix::fs::FileExt;

    let tmp = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_size_bytes: 64 << 10,
        prepare_in_background: false,
        snapshot_retention: 2,
        ..WalOptions::default()
    };
    let voters = raftwal::ConfState { voters: vec![1, 2, 3], ..Default::default() };
    {
        let storage = raftwal::WalStorage::open(tmp.path(), opts.clone()).unwrap();
        // A vote first: it seals its segment, so the entries that follow share the newest one.
        storage.set_hard_state(HardState { term: 1, vote: 1, commit: 0 }).unwrap();
        for i in 1..=30 {
            let hs = HardState { term: 1, vote: 1, commit: i };
            storage.save(Some(&hs), &[entry(i, 1, 100)]).unwrap();
            if i % 5 == 0 {
                let data = bytes::Bytes::from(format!("state at {i}"));
                storage.create_snapshot(i, Some(voters.clone()), data).unwrap();
                storage.compact(i - 2).unwrap();
            }
        }
    }
    let before = snap_files(tmp.path());
    assert_eq!(before.len(), 2, "retention keeps the newest two: {before:?}");

    let wal_dir = tmp.path().join(raftwal::storage::WAL_DIR);
    let mut names: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| format::parse_segment_name(n).is_some())
        .collect();
    names.sort();
    let newest = wal_dir.join(names.last().unwrap());
    let bytes = std::fs::read(&newest).unwrap();
    let record = scan_segment(&bytes, opts.max_record_bytes)
        .records
        .into_iter()
        .find(|r| matches!(&r.record, Record::Entries { entries, .. } if entries[0].index == 12))
        .expect("entry 12's record is in the newest segment");
    let at = record.offset + FRAME_HEADER_LEN as u64 + 3;
    let file = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
    file.write_at(&[!bytes[at as usize]], at).unwrap();
    drop(file);
    assert!(matches!(
        raftwal::WalStorage::open(tmp.path(), opts.clone()),
        Err(Error::Corruption { .. })
    ));

    let repairable = WalOptions { recovery_mode: RecoveryMode::Repairable, ..opts };
    let opened = raftwal::WalStorage::open(tmp.path(), repairable);
    assert_eq!(snap_files(tmp.path()), before, "committed snapshot files are kept");
    let storage = opened.expect("a Repairable open cuts the damage rather than refusing");
    assert!(storage.first_index().unwrap() > 1, "the log restarts after a snapshot");
}

/// The `repair` fuzz target's check over 400 generated inputs: one or two flips into logs of
/// varied workloads, closed or not (see `raftwal::fuzzing::check_repair` for the property).
#[test]
fn the_repair_check_holds_over_generated_damage() {
    let mut rng = raftwal::rng::Rng::new(0xDA3A6E);
    // Bounded: 400 inputs of a few milliseconds each.
    for k in 0..400u64 {
        let mut input = rng.next_u64().to_le_bytes().to_vec();
        for _ in 0..1 + u64::from(k % 7 == 0) {
            input.push(rng.below(8) as u8);
            input.extend_from_slice(&(rng.next_u64() as u32).to_le_bytes());
        }
        let result = std::panic::catch_unwind(|| raftwal::fuzzing::check_repair(&input));
        assert!(result.is_ok(), "input {k} fails: {input:?}");
    }
}

/// A write that replaced a suffix of the log (a new leader's entries) is lost to a cut: the
/// replaced entries come back, and they were never committed. The commit index after the open
/// must not count them, whatever the newer hard states past the cut said.
#[test]
fn a_cut_that_brings_back_replaced_entries_does_not_count_them_committed() {
    let fs = CrashFs::new();
    let wal = open_whole(&fs, RecoveryMode::Strict).unwrap();
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

    let wal = open_whole(&fs, RecoveryMode::Repairable).unwrap();
    assert!(wal.repair_state().is_some());
    // The cut brought back the replaced entries 4 and 5 of term 1: the log restarts at its
    // snapshot rather than keep them.
    assert_eq!(wal.last_index(), 0, "no replaced entry survives");
    assert_eq!(wal.hard_state().term, 2, "the term is kept");
    assert!(
        wal.hard_state().commit <= 3,
        "commit {} counts entries of term 1 that term 2 replaced",
        wal.hard_state().commit
    );
}

/// A write that replaced the end of the log (a new leader's entries) is lost to a cut, and no
/// lost entry goes past the surviving log's last index: the log is back at the same length with
/// the replaced entries of the older term. Those are not the ones the node acknowledged, and a
/// leader whose match index counts the acknowledged ones would commit the old ones through a
/// heartbeat: so the log restarts at its snapshot (nothing past the commit index is trusted
/// after a cut) and repairs up to what it had.
#[test]
fn a_cut_that_brings_back_replaced_entries_of_the_same_length_still_repairs() {
    let fs = CrashFs::new();
    let wal = open_whole(&fs, RecoveryMode::Strict).unwrap();
    let hs = |term, commit| HardState { term, vote: 0, commit };
    wal.save(Some(&hs(1, 2)), &(1..=5).map(|i| entry(i, 1, 100)).collect::<Vec<_>>()).unwrap();
    // A leader of term 2 replaces 3..=5 (never committed); this node acknowledges them.
    wal.save(Some(&hs(2, 2)), &(3..=5).map(|i| entry(i, 2, 100)).collect::<Vec<_>>()).unwrap();
    wal.save(Some(&hs(3, 2)), &[]).unwrap();
    drop(wal);
    let replaced = segments(&fs)
        .into_iter()
        .find(|name| {
            records(&fs, name).iter().any(
                |r| matches!(&r.record, Record::Entries { entries, .. } if entries[0].index == 3),
            )
        })
        .expect("a segment holds the replacing write");
    damage(&fs, &replaced, &entries_record(&fs, &replaced, 3));

    let wal = open_whole(&fs, RecoveryMode::Repairable).unwrap();
    assert_eq!(wal.last_index(), 0, "no entry past the commit index survives the cut");
    assert!(
        wal.repair_state().is_some_and(|s| s.index >= 5),
        "entries 3..=5 of term 2 were acknowledged and are gone: the node must repair"
    );
    drop(wal);
    // The reset is done once: a reopen keeps what the leader sent since.
    let wal = open_whole(&fs, RecoveryMode::Repairable).unwrap();
    wal.save(None, &(1..=3).map(|i| entry(i, 1, 100)).collect::<Vec<_>>()).unwrap();
    drop(wal);
    let wal = open_whole(&fs, RecoveryMode::Repairable).unwrap();
    assert_eq!(wal.last_index(), 3, "entries written after the repair began are kept");
}

/// Whether a Strict open refuses, and what a Repairable open then repairs, after the entries
/// record starting at `index` in the newest segment is damaged.
fn damage_newest_and_open(fs: &CrashFs, index: u64) -> (bool, Option<RepairState>, u64) {
    let newest = segments(fs).pop().unwrap();
    damage(fs, &newest, &entries_record(fs, &newest, index));
    let refused = matches!(open(fs, RecoveryMode::Strict), Err(Error::Corruption { .. }));
    let wal = open(fs, RecoveryMode::Repairable).unwrap();
    (refused, wal.repair_state(), wal.last_index())
}

/// The last acknowledged write of a log that stopped without `close()` (every written byte on
/// disk, as after a killed process) is damaged: a later record (the sync's witness) proves it
/// had been durable, so it is corruption, never a torn tail cut in silence.
#[test]
fn damage_to_the_last_acknowledged_write_is_corruption_not_a_torn_tail() {
    let fs = build();
    let (refused, repair, last) = damage_newest_and_open(&fs, 20);
    assert!(
        refused && repair.is_some_and(|s| s.index >= 20 && s.term == 2),
        "Strict must refuse (refused: {refused}) and Repairable repair up to entry 20 \
         (repairs {repair:?}, log ends at {last})"
    );
}

/// Under `SyncPolicy::Never`, every write since the previous `sync()` carries the same durable
/// point: the whole batch that the last `sync()` made durable needs the witness.
#[test]
fn damage_to_the_first_write_of_the_last_synced_batch_is_corruption() {
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let never = WalOptions { sync_policy: SyncPolicy::Never, ..options(RecoveryMode::Strict) };
    let wal = Wal::open(shared, &dir(), never).unwrap();
    wal.save(Some(&VOTE), &[]).unwrap();
    for i in 1..=20 {
        let hs = HardState { commit: i.min(15), ..VOTE };
        wal.save(Some(&hs), &[entry(i, 2, 100)]).unwrap();
        if i == 10 || i == 20 {
            wal.sync().unwrap();
        }
    }
    drop(wal);
    let (refused, repair, last) = damage_newest_and_open(&fs, 11);
    assert!(
        refused && repair.is_some_and(|s| s.index >= 20 && s.term == 2),
        "Strict must refuse (refused: {refused}) and Repairable repair up to entry 20 \
         (repairs {repair:?}, log ends at {last})"
    );
}

/// The same through `LogEngine`: the last write of one group among several.
#[test]
fn damage_to_the_last_acknowledged_write_of_a_group_is_corruption() {
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
            batch.save(g, Some(&HardState { commit: i, ..VOTE }), &[entry(i, 2, 100)]).unwrap();
            engine.write(&mut batch).unwrap();
        }
    }
    drop(engine);
    let wal_dir = dir();
    let mut names = segments(&fs);
    let newest = wal_dir.join(names.pop().unwrap());
    let victim = scan_segment(&fs.read_file(&newest).unwrap(), 1 << 20)
        .records
        .into_iter()
        .find(
            |r| matches!(&r.record, Record::Entries { group: 3, entries, .. } if entries[0].index == 10),
        )
        .unwrap();
    fs.flip_bit(&newest, (victim.offset + FRAME_HEADER_LEN as u64 + 3) * 8).unwrap();
    let strict = LogEngine::open_with_fs(shared.clone(), &root, options(RecoveryMode::Strict));
    assert!(
        matches!(strict, Err(Error::Corruption { .. })),
        "Strict must refuse damage to group 3's acknowledged entry 10"
    );
    drop(strict);
    let engine =
        LogEngine::open_with_fs(shared.clone(), &root, options(RecoveryMode::Repairable)).unwrap();
    let state = engine.group(3).unwrap().repair_state().unwrap();
    assert!(state.is_some_and(|s| s.index >= 10), "group 3 must repair up to 10: {state:?}");
}

/// The witness is written after the sync and not synced itself: a power cut that loses it
/// leaves the log as it was before witnesses, and the acknowledged write, intact, is kept.
#[test]
fn a_power_cut_that_loses_the_witness_keeps_the_acknowledged_write() {
    let fs = build();
    let cut = fs.power_cut_copy();
    let wal = open(&cut, RecoveryMode::Strict).unwrap();
    assert_eq!(wal.last_index(), 20);
    assert_eq!(wal.hard_state().commit, 15);
    assert_eq!(wal.repair_state(), None);
}

/// The first membership of a new node: the index-0 snapshot every founding member applies.
fn founders() -> raftwal::ConfState {
    raftwal::ConfState { voters: vec![1, 2, 3], ..Default::default() }
}

/// Opens the storages of every group in `/node` (the parent of [`dir`]), sealed segments read
/// whole.
fn open_engine(fs: &CrashFs, mode: RecoveryMode) -> raftwal::Result<LogEngine> {
    let shared: Fs = Arc::new(fs.clone());
    let opts = WalOptions { read_footers: false, ..options(mode) };
    LogEngine::open_with_fs(shared, dir().parent().unwrap(), opts)
}

/// Groups `groups` bootstrapped one after the other with [`founders`] (index-0 snapshots), then
/// each given entries 1..=6 of term 2 (commit 4). The first of these writes carries the vote
/// and entries 1 to 3: a vote seals its segment, and the entries keep that segment, with the
/// bootstrap markers, from being released.
fn bootstrapped(groups: &[u64]) -> CrashFs {
    use raftwal::{Snapshot, SnapshotMetadata};
    let fs = CrashFs::new();
    let engine = open_engine(&fs, RecoveryMode::Strict).unwrap();
    for &g in groups {
        let metadata = SnapshotMetadata { conf_state: founders(), ..Default::default() };
        let first = Snapshot { metadata, data: bytes::Bytes::new() };
        engine.group(g).unwrap().apply_snapshot(first).unwrap();
    }
    for &g in groups {
        let storage = engine.group(g).unwrap();
        let hs = HardState { term: 2, vote: 1, commit: 0 };
        storage.save(Some(&hs), &(1..=3).map(|i| entry(i, 2, 100)).collect::<Vec<_>>()).unwrap();
        for i in 4..=6 {
            let hs = HardState { term: 2, vote: 1, commit: i - 2 };
            storage.save(Some(&hs), &[entry(i, 2, 100)]).unwrap();
        }
    }
    fs
}

/// Flips a bit in the marker of `group`'s index-0 snapshot.
fn damage_bootstrap_marker(fs: &CrashFs, group: u64) {
    for name in segments(fs) {
        let marker = records(fs, &name).into_iter().find(|r| {
            matches!(&r.record, Record::Snapshot { group: g, metadata, .. }
                if *g == group && metadata.index == 0)
        });
        if let Some(marker) = marker {
            damage(fs, &name, &marker);
            return;
        }
    }
    panic!("no index-0 snapshot marker of group {group}");
}

/// The snapshot files of group `group` in `/node/snap`.
fn group_snap_files(fs: &CrashFs, group: u64) -> Vec<PathBuf> {
    let snap = dir().parent().unwrap().join(raftwal::storage::SNAP_DIR);
    let prefix = format!("{group:016x}-");
    let mut names: Vec<PathBuf> = fs
        .list(&snap)
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".snap"))
        .map(|n| snap.join(n))
        .collect();
    names.sort();
    names
}

/// A cut that drops the marker of the index-0 bootstrap snapshot (the group's first
/// membership): its file is adopted again, and the group repairs up to the index its log had
/// reached. Strict refuses.
#[test]
fn a_cut_of_the_bootstrap_marker_adopts_its_file_and_repairs() {
    let fs = bootstrapped(&[0]);
    damage_bootstrap_marker(&fs, 0);
    let open = |mode| {
        let shared: Fs = Arc::new(fs.clone());
        let opts = WalOptions { read_footers: false, ..options(mode) };
        raftwal::WalStorage::open_with_fs(shared, dir().parent().unwrap(), opts)
    };
    assert!(matches!(open(RecoveryMode::Strict), Err(Error::Corruption { .. })));

    let storage = open(RecoveryMode::Repairable).unwrap();
    let state = storage.initial_state().unwrap();
    assert_eq!(state.conf_state, founders(), "the first membership is kept");
    assert_eq!((state.hard_state.term, state.hard_state.vote), (2, 1), "term and vote are kept");
    assert_eq!(storage.snapshot().unwrap().metadata.conf_state, founders());
    assert_eq!(storage.repair_state().unwrap(), Some(RepairState { index: 6, term: 2 }));
    drop(storage);
    // Durably so, in any mode.
    let storage = open(RecoveryMode::Strict).unwrap();
    assert_eq!(storage.initial_state().unwrap().conf_state, founders());
    assert_eq!(storage.repair_state().unwrap(), Some(RepairState { index: 6, term: 2 }));
    storage.append(&(1..=6).map(|i| entry(i, 2, 100)).collect::<Vec<_>>()).unwrap();
    assert_eq!(storage.repair_state().unwrap(), None, "repaired from the leader");
}

/// The same with the bootstrap snapshot's file damaged too: no file holds the membership, and
/// no rule could keep the node safe, so every mode refuses, a Repairable open naming the file.
#[test]
fn a_cut_of_the_bootstrap_marker_with_a_damaged_file_is_refused() {
    let fs = bootstrapped(&[0]);
    damage_bootstrap_marker(&fs, 0);
    let files = group_snap_files(&fs, 0);
    assert_eq!(files.len(), 1, "{files:?}");
    let len = fs.read_file(&files[0]).unwrap().len() as u64;
    fs.flip_bit(&files[0], len * 4).unwrap();
    for mode in [RecoveryMode::Strict, RecoveryMode::Repairable] {
        match open_engine(&fs, mode) {
            Err(Error::Corruption { segment, .. }) => assert!(
                mode == RecoveryMode::Strict || segment.ends_with(files[0].file_name().unwrap()),
                "{segment:?}"
            ),
            Err(e) => panic!("{mode:?}: {e}"),
            Ok(_) => panic!("{mode:?}: opened without the membership"),
        }
    }
    assert_eq!(group_snap_files(&fs, 0), files, "the refusal leaves the file in place");
}

/// Several groups in one log: damage to one group's bootstrap marker cuts the records of every
/// group after it; each group whose marker the cut took gets its file back and repairs, and
/// the others keep their membership.
#[test]
fn a_cut_of_bootstrap_markers_of_several_groups_adopts_each_file() {
    let fs = bootstrapped(&[1, 2, 3]);
    damage_bootstrap_marker(&fs, 2);
    assert!(matches!(open_engine(&fs, RecoveryMode::Strict), Err(Error::Corruption { .. })));
    let engine = open_engine(&fs, RecoveryMode::Repairable).unwrap();
    for g in [1, 2, 3] {
        let storage = engine.group(g).unwrap();
        let state = storage.initial_state().unwrap();
        assert_eq!(state.conf_state, founders(), "group {g} keeps its first membership");
        assert_eq!((state.hard_state.term, state.hard_state.vote), (2, 1), "group {g}");
        assert_eq!(
            storage.repair_state().unwrap(),
            Some(RepairState { index: 6, term: 2 }),
            "group {g}"
        );
    }
    drop(engine);
    let engine = open_engine(&fs, RecoveryMode::Strict).unwrap();
    for g in [1, 2, 3] {
        let storage = engine.group(g).unwrap();
        assert_eq!(storage.initial_state().unwrap().conf_state, founders(), "group {g}");
        assert!(storage.repair_state().unwrap().is_some(), "group {g}");
    }
}

/// The vote, then entries 1..=150 of 1000 bytes (a few segments), commit 145.
fn write_long_log(wal: &Wal) {
    wal.save(Some(&VOTE), &[]).unwrap();
    for i in 1..=150 {
        let hs = HardState { commit: i.min(145), ..VOTE };
        wal.save(Some(&hs), &[entry(i, 2, 1000)]).unwrap();
    }
}

/// Entries 1..=150 of 1000 bytes (with the vote and commit 145), a compaction at 140 that
/// releases every segment before the one it is written in, then entries 151..=160. Returns the
/// segment holding the compaction and the entries record written just before it there.
fn compacted_past_released_segments() -> (CrashFs, String, ScannedRecord) {
    let fs = CrashFs::new();
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    write_long_log(&wal);
    wal.compact(140).unwrap();
    for i in 151..=160 {
        wal.save(None, &[entry(i, 2, 1000)]).unwrap();
    }
    drop(wal);
    let names = segments(&fs);
    let (name, position) = names
        .iter()
        .find_map(|name| {
            let records = records(&fs, name);
            let at = records.iter().position(|r| matches!(r.record, Record::Compact { .. }))?;
            Some((name.clone(), at))
        })
        .expect("the compaction's record is on disk");
    // Every older segment but the one before the compaction's (kept: see purge.rs) went.
    assert!(names.len() <= 3, "the compaction released older segments: {names:?}");
    let before = records(&fs, &name)[..position]
        .iter()
        .rev()
        .find(|r| matches!(r.record, Record::Entries { .. }))
        .cloned()
        .expect("entries precede the compaction in its segment");
    match &records(&fs, &names[0])[0].record {
        Record::Checkpoint(cps) => {
            assert!(
                cps[0].last_index > cps[0].dummy_index,
                "the checkpoint names entries held only in released segments"
            )
        }
        other => panic!("a segment starts with its checkpoint, not {other:?}"),
    }
    (fs, name, before)
}

/// A cut that drops a compaction whose released segments are gone leaves the log with a hole
/// below the cut (row P10): Strict refuses; Repairable restarts the group's log at its snapshot,
/// keeps term and vote, and repairs up to the index the log had reached, durably.
#[test]
fn a_cut_that_drops_a_compaction_of_released_segments_restarts_the_log_and_repairs() {
    let (fs, name, before) = compacted_past_released_segments();
    damage(&fs, &name, &before);
    assert!(matches!(open(&fs, RecoveryMode::Strict), Err(Error::Corruption { .. })));

    let check = |wal: &Wal| {
        let hs = wal.hard_state();
        assert_eq!(
            (hs.term, hs.vote, hs.commit),
            (VOTE.term, VOTE.vote, 0),
            "term and vote are kept"
        );
        assert_eq!(
            (wal.first_index(), wal.last_index()),
            (1, 0),
            "the log restarts at its snapshot"
        );
        assert_eq!(wal.repair_state(), Some(RepairState { index: 160, term: 2 }));
    };
    let wal = open(&fs, RecoveryMode::Repairable).unwrap();
    check(&wal);
    drop(wal);
    for mode in [RecoveryMode::Strict, RecoveryMode::Repairable] {
        let wal = open(&fs, mode).unwrap();
        check(&wal);
    }
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    for i in 1..=160 {
        wal.save(None, &[entry(i, 2, 1000)]).unwrap();
    }
    assert_eq!(wal.repair_state(), None, "repaired from the leader");
}

/// A crash at every I/O operation of the Repairable open that restarts the log never leaves a
/// log that opens without the repair, or one that no open accepts.
#[test]
fn a_crash_during_the_restart_of_a_log_with_a_hole_keeps_the_repair() {
    let (base, name, before) = compacted_past_released_segments();
    damage(&base, &name, &before);
    crash_every_point_of_a_repairable_open(&base, |wal, at, seed| {
        assert_eq!(
            wal.repair_state(),
            Some(RepairState { index: 160, term: 2 }),
            "crash at op {at} seed {seed}: the repair is kept"
        );
        assert_eq!(wal.last_index(), 0, "crash at op {at} seed {seed}");
    });
}

/// Stops a Repairable open of `base`'s damaged log at every I/O operation in turn (a power cut
/// with three outcomes after each), until one runs to the end; the next open must succeed and
/// keep term and vote, and `check` sees it.
fn crash_every_point_of_a_repairable_open(base: &CrashFs, check: impl Fn(&Wal, u64, u64)) {
    let mut reached_end = false;
    // Bounded: an open makes far fewer than 300 I/O operations.
    for at in 0..300u64 {
        for seed in 0..3 {
            let fs = base.power_cut_copy();
            fs.inject(Fault { at_op: fs.op_count() + at, kind: FaultKind::Halt });
            reached_end |= open(&fs, RecoveryMode::Repairable).is_ok() && !fs.is_halted();
            fs.crash(seed);
            fs.clear_faults();
            let wal = open(&fs, RecoveryMode::Repairable)
                .unwrap_or_else(|e| panic!("crash at op {at} seed {seed}: reopen failed: {e}"));
            let hs = wal.hard_state();
            assert_eq!((hs.term, hs.vote), (VOTE.term, VOTE.vote), "crash at op {at} seed {seed}");
            check(&wal, at, seed);
        }
        if reached_end {
            break;
        }
    }
    assert!(reached_end, "some open ran to the end without reaching its halt");
}

/// A lost oldest segment (deleted, not damaged) leaves entries below the first one that remains
/// with no record: Strict refuses (row P7); Repairable restarts the log at its snapshot and
/// repairs up to the last index, which the intact rest of the log gives exactly (row P10).
#[test]
fn a_lost_oldest_segment_restarts_the_log_and_repairs() {
    let fs = CrashFs::new();
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    write_long_log(&wal);
    drop(wal);
    let names = segments(&fs);
    assert!(names.len() >= 3, "the entries span several segments: {names:?}");
    fs.remove_file(&dir().join(&names[0])).unwrap();
    match open(&fs, RecoveryMode::Strict) {
        Err(Error::Corruption { kind: raftwal::CorruptionKind::Missing, .. }) => {}
        other => {
            panic!("Strict must refuse missing entries, got {:?}", other.map(|w| w.last_index()))
        }
    }
    let wal = open(&fs, RecoveryMode::Repairable).unwrap();
    let hs = wal.hard_state();
    assert_eq!((hs.term, hs.vote, hs.commit), (VOTE.term, VOTE.vote, 0));
    assert_eq!(wal.last_index(), 0, "the log restarts at its snapshot");
    assert_eq!(wal.repair_state(), Some(RepairState { index: 150, term: 2 }));
    drop(wal);
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    assert_eq!(wal.repair_state(), Some(RepairState { index: 150, term: 2 }), "durably");
    assert_eq!(wal.last_index(), 0);
}

/// Damage in a sealed segment that open replays from its footer is found only when an entry
/// is read. That read fails with `Corruption` and leaves a durable note, so that the next open
/// reads the sealed segments whole and finds it: Strict refuses at open, Repairable cuts and
/// repairs, instead of every restart failing again at the same read.
#[test]
fn damage_found_by_a_read_is_repaired_at_the_next_open() {
    let fs = CrashFs::new();
    // Footers of up to 64 KiB, so that every sealed segment is replayed from its footer.
    let open = |fs: &CrashFs, mode| {
        let shared: Fs = Arc::new(fs.clone());
        Wal::open(shared, &dir(), WalOptions { max_record_bytes: 64 << 10, ..options(mode) })
    };
    let wal = open(&fs, RecoveryMode::Repairable).unwrap();
    write_long_log(&wal);
    drop(wal);
    let names = segments(&fs);
    let (name, record) = names[..names.len() - 1]
        .iter()
        .find_map(|name| {
            let r = records(&fs, name).into_iter().find(
                |r| matches!(&r.record, Record::Entries { entries, .. } if entries[0].index == 10),
            )?;
            Some((name.clone(), r))
        })
        .expect("entry 10 lies in a sealed segment");
    damage(&fs, &name, &record);

    let wal = open(&fs, RecoveryMode::Repairable).unwrap();
    assert_eq!((wal.last_index(), wal.repair_state()), (150, None), "the footer hides the damage");
    assert!(matches!(wal.entries(10, 11, u64::MAX), Err(Error::Corruption { .. })));
    drop(wal);

    assert!(
        matches!(open(&fs, RecoveryMode::Strict), Err(Error::Corruption { .. })),
        "Strict now finds the damage at open"
    );
    let wal = open(&fs, RecoveryMode::Repairable).unwrap();
    assert_eq!(wal.last_index(), 9, "cut at the damage");
    assert_eq!(wal.repair_state(), Some(RepairState { index: 150, term: 2 }));
    assert!(wal.entries(wal.first_index(), 10, u64::MAX).is_ok(), "what remains reads");
    drop(wal);
    // The repair is durable and the note done with: the next open is an ordinary one.
    let wal = open(&fs, RecoveryMode::Strict).unwrap();
    assert_eq!(wal.repair_state(), Some(RepairState { index: 150, term: 2 }));
}

/// With `sync_witness`, a sync's witness is synced too before anyone is told: a power cut right
/// after an acknowledgement cannot take it, so damage to the acknowledged write is still told
/// from a torn tail. Without it, the same power cut and damage cut the write as torn (the
/// window DESIGN.md §7, case 26 names).
#[test]
fn a_synced_witness_survives_the_power_cut_that_would_hide_damage_to_the_last_write() {
    for sync_witness in [false, true] {
        let options = |mode| WalOptions { sync_witness, ..options(mode) };
        let open = |fs: &CrashFs, mode| {
            let shared: Fs = Arc::new(fs.clone());
            Wal::open(shared, &dir(), options(mode))
        };
        let fs = CrashFs::new();
        let wal = open(&fs, RecoveryMode::Strict).unwrap();
        write_short_log(&wal);
        // The power cut: only what was synced survives.
        let cut = fs.power_cut_copy();
        drop(wal);
        let newest = segments(&cut).pop().unwrap();
        damage(&cut, &newest, &entries_record(&cut, &newest, 20));
        let strict = open(&cut, RecoveryMode::Strict);
        if sync_witness {
            assert!(
                matches!(strict, Err(Error::Corruption { .. })),
                "the synced witness proves entry 20 durable: Strict refuses"
            );
            let wal = open(&cut, RecoveryMode::Repairable).unwrap();
            // Entries 16 to 19 lie past the surviving commit index, so the log restarts at its
            // snapshot (row P1's reset). Nothing after the damaged record bounds what it held
            // (the witness names no index): the repair's extent is unknown, which covers 20.
            assert!(wal.last_index() < 20);
            let state = wal.repair_state().expect("repairing");
            assert!(state.index >= 20 && state.term == 2, "{state:?}");
            assert_eq!((wal.hard_state().term, wal.hard_state().vote), (VOTE.term, VOTE.vote));
        } else {
            let wal = strict.expect("without a durable witness the damage reads as a torn tail");
            assert_eq!((wal.last_index(), wal.repair_state()), (19, None));
        }
    }
}

/// A damaged record in a sealed segment that was the last record of its group: no later record
/// of the group names what it held, yet the repair knows. Two sources say it: the sealed
/// segment's footer (which lists the damaged record too) and the checkpoint of every later
/// segment (each group's last index). With the footer's evidence switched off, this test still
/// passes on the checkpoints alone; it checks the outcome, not which source gave it.
#[test]
fn a_damaged_last_record_of_a_group_in_a_sealed_segment_is_repaired_up_to_its_entry() {
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let root = PathBuf::from("/node");
    // Footers of up to 64 KiB, so that every sealed segment has one.
    let opts = |mode, read_footers| WalOptions {
        max_record_bytes: 64 << 10,
        read_footers,
        ..options(mode)
    };
    let engine =
        LogEngine::open_with_fs(shared.clone(), &root, opts(RecoveryMode::Strict, true)).unwrap();
    let mut batch = WriteBatch::new();
    batch.save(1, Some(&VOTE), &[]).unwrap();
    batch.save(2, Some(&VOTE), &[]).unwrap();
    engine.write(&mut batch).unwrap();
    // Each entry committed as it is written, so that what the cut leaves is committed and kept
    // (entries past the surviving commit index would be dropped, §8.2).
    for i in 1..=5u64 {
        let hs = HardState { commit: i, ..VOTE };
        batch.save(1, Some(&hs), &[entry(i, 2, 100)]).unwrap();
        engine.write(&mut batch).unwrap();
    }
    // Group 2 alone from here on, over several segments.
    for i in 1..=1200u64 {
        batch.save(2, None, &[entry(i, 2, 100)]).unwrap();
        engine.write(&mut batch).unwrap();
    }
    drop(engine);
    let wal_dir = dir();
    let names = segments(&fs);
    let is_victim = |r: &ScannedRecord| matches!(&r.record, Record::Entries { group: 1, entries, .. } if entries[0].index == 5);
    let (name, victim) = names
        .iter()
        .find_map(|name| {
            let scanned = scan_segment(&fs.read_file(&wal_dir.join(name)).unwrap(), 1 << 20);
            Some((name.clone(), scanned.records.into_iter().find(is_victim)?))
        })
        .expect("group 1's entry 5 was written");
    assert_ne!(Some(&name), names.last(), "the damaged record lies in a sealed segment");
    fs.flip_bit(&wal_dir.join(&name), (victim.offset + FRAME_HEADER_LEN as u64 + 3) * 8).unwrap();

    // Read whole, the segment shows the damage; the cut takes group 1's entry 5 and group 2's
    // entries from the damage on.
    let engine =
        LogEngine::open_with_fs(shared.clone(), &root, opts(RecoveryMode::Repairable, false))
            .unwrap();
    let group1 = engine.group(1).unwrap();
    assert_eq!(group1.last_index().unwrap(), 4, "cut at the damaged record");
    assert_eq!(
        group1.repair_state().unwrap(),
        Some(RepairState { index: 5, term: 2 }),
        "group 1 repairs up to the entry the cut took"
    );
    let group2 = engine.group(2).unwrap();
    assert!(group2.last_index().unwrap() < 1200);
    assert_eq!(group2.repair_state().unwrap(), Some(RepairState { index: 1200, term: 2 }));
}
