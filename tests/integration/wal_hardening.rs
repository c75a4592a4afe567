//! The WAL's write side under interleavings and faults that the sequential crash tests cannot
//! reach: acknowledgements that depend on a rollover's rename, a sync overlapping a failed one,
//! the last segment sequence, the background preparation outliving its log, and purges that
//! fail after their record is durable. Threads are ordered by CrashFs hooks (no sleeping), so
//! every run takes the same interleaving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

use bytes::Bytes;
use raftwal::io::{CrashFs, Fault, FaultKind, Fs, OpEvent, OpKind};
use raftwal::wal::Wal;
use raftwal::wal::format::{
    FRAME_HEADER_LEN, MAX_FIRST_RECORD, Record, SegmentHeader, parse_segment_name, segment_name,
};
use raftwal::{
    ConfState, Entry, Error, Snapshot, SnapshotMetadata, SyncPolicy, WalOptions, WalStorage,
};

use crate::wal::{dir, entry, open, small_options};

fn open_on(fs: &Fs, options: &WalOptions) -> raftwal::Result<Wal> {
    Wal::open(fs.clone(), &dir(), options.clone())
}

fn segment_files(fs: &CrashFs) -> Vec<PathBuf> {
    fs.list_all().into_iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).collect()
}

fn eio() -> std::io::Error {
    std::io::Error::from_raw_os_error(5)
}

/// Shared state of a scripted interleaving: a hook and the test's threads wait on it.
struct Script<S> {
    state: Mutex<S>,
    changed: Condvar,
}

impl<S> Script<S> {
    fn new(state: S) -> Arc<Script<S>> {
        Arc::new(Script { state: Mutex::new(state), changed: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the state and wakes every waiter.
    fn update(&self, change: impl FnOnce(&mut S)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `ready` holds. Bounded by the script: each wait is for a step another thread
    /// of the same test takes unconditionally.
    fn wait_for(&self, ready: impl Fn(&S) -> bool) {
        let mut state = self.lock();
        while !ready(&state) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Leads a sync of the first segment and is paused in it.
    Leader,
    /// Writes into a segment a rollover just created.
    Writer,
    /// Rolls over again while the writer waits.
    Roller,
}

#[derive(Default)]
struct RollScript {
    roles: HashMap<ThreadId, Role>,
    leader_paused: bool,
    release_leader: bool,
    writer_in_write: bool,
    roller_renamed: bool,
    crashed: bool,
}

#[test]
fn a_write_acknowledged_in_a_new_segment_survives_a_power_cut_that_loses_the_directory() {
    // 2,000-byte entries: a 4 KiB segment holds one besides its header and checkpoint, so entry 1
    // fills segment 1, entry 2 rolls over to segment 2 and entry 3 rolls over to segment 3.
    let crash = CrashFs::new();
    let options = WalOptions { sync_policy: SyncPolicy::Always, ..small_options() };
    let wal = Arc::new(open(&crash, &options).unwrap());
    let script = Script::new(RollScript::default());
    let hook_script = script.clone();
    crash.set_hook(Some(Arc::new(move |e: &OpEvent<'_>| {
        let me = std::thread::current().id();
        let mut s = hook_script.lock();
        match (s.roles.get(&me).copied(), e.kind) {
            (Some(Role::Leader), OpKind::Sync) if !s.leader_paused => {
                s.leader_paused = true;
                drop(s);
                hook_script.changed.notify_all();
                hook_script.wait_for(|s| s.release_leader);
            }
            (Some(Role::Writer), OpKind::Write) => {
                // Inside the writer's save, which holds the log's lock: a save started from now
                // on is ordered after it.
                s.writer_in_write = true;
                drop(s);
                hook_script.changed.notify_all();
            }
            (Some(Role::Roller), OpKind::Rename) => s.roller_renamed = true,
            (Some(Role::Roller), OpKind::SyncDir) if s.roller_renamed => {
                // The roller's own sync of the directory comes after the writer's answer and
                // the power cut.
                drop(s);
                hook_script.wait_for(|s| s.crashed);
            }
            (Some(Role::Roller), OpKind::Sync | OpKind::SyncDir) if !s.release_leader => {
                // The roller is inside its rollover (holding the log's lock): the leader's sync
                // may finish now, and it is accounted after the rollover.
                s.release_leader = true;
                drop(s);
                hook_script.changed.notify_all();
            }
            _ => {}
        }
        Ok(())
    })));

    let spawn = |role: Role, e: Entry| {
        let (wal, script) = (wal.clone(), script.clone());
        std::thread::spawn(move || {
            script.update(|s| {
                s.roles.insert(std::thread::current().id(), role);
            });
            wal.save(None, &[e])
        })
    };
    let leader = spawn(Role::Leader, entry(1, 1, 2000));
    script.wait_for(|s| s.leader_paused);
    let writer = spawn(Role::Writer, entry(2, 1, 2000));
    script.wait_for(|s| s.writer_in_write);
    let roller = spawn(Role::Roller, entry(3, 1, 2000));
    let acked = writer.join().unwrap();
    assert!(acked.is_ok(), "the writer's save is acknowledged: {acked:?}");
    assert_eq!(wal.segment_count(), 3, "the roller had rolled over when the writer returned");
    // Power cut right after the acknowledgement: nothing unsynced survives, names included.
    crash.crash_lose_all_unsynced();
    script.update(|s| s.crashed = true);
    let _ = leader.join().unwrap();
    let _ = roller.join().unwrap();
    crash.set_hook(None);
    drop(wal);

    let wal = open(&crash, &options).expect("the log opens after the power cut");
    assert!(
        wal.last_index() >= 2,
        "acknowledged entry 2 was lost with its segment's name: last index {}, files {:?}",
        wal.last_index(),
        crash.list_all()
    );
    assert_eq!(wal.entries(2, 3, u64::MAX).unwrap(), [entry(2, 1, 2000)]);
}

#[derive(Default)]
struct OverlapScript {
    leader: Option<ThreadId>,
    leader_paused: bool,
    release_leader: bool,
}

#[test]
fn a_sync_overlapping_a_failed_rollover_sync_is_not_acknowledged() {
    // A leader's fdatasync and a rollover's fdatasync of the same segment overlap; the rollover's
    // fails. Linux reports a writeback error once per open file, so the leader's may return 0
    // although the pages it had to make durable were dropped: it must not be acknowledged.
    let crash = CrashFs::new();
    let wal = Arc::new(open(&crash, &small_options()).unwrap());
    wal.save(None, &[entry(1, 1, 2000)]).unwrap();
    let script = Script::new(OverlapScript::default());
    let hook_script = script.clone();
    // The rollover (on this thread) first prepares segment 2's file, syncing it, then fdatasyncs
    // segment 1: its second sync is the one that fails.
    let roller = std::thread::current().id();
    let roller_syncs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let fail_at = crash.clone();
    crash.set_hook(Some(Arc::new(move |e: &OpEvent<'_>| {
        if std::thread::current().id() == roller
            && e.kind == OpKind::Sync
            && hook_script.lock().leader_paused
            && roller_syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1
        {
            fail_at.inject(Fault { at_op: fail_at.op_count(), kind: FaultKind::SyncEio });
        }
        let mut s = hook_script.lock();
        if s.leader == Some(std::thread::current().id())
            && e.kind == OpKind::Sync
            && !s.leader_paused
        {
            s.leader_paused = true;
            drop(s);
            hook_script.changed.notify_all();
            hook_script.wait_for(|s| s.release_leader);
        }
        Ok(())
    })));
    let leader = {
        let (wal, script) = (wal.clone(), script.clone());
        std::thread::spawn(move || {
            script.update(|s| s.leader = Some(std::thread::current().id()));
            wal.save(None, &[entry(2, 1, 100)])
        })
    };
    script.wait_for(|s| s.leader_paused);
    // The rollover's fdatasync of segment 1 fails (armed by the hook).
    let rolled = wal.save(None, &[entry(3, 1, 2000)]);
    assert!(matches!(rolled, Err(Error::Io(_))), "the failed sync is reported: {rolled:?}");
    script.update(|s| s.release_leader = true);
    let answer = leader.join().unwrap();
    crash.set_hook(None);
    assert!(
        matches!(answer, Err(Error::Poisoned | Error::Io(_))),
        "a sync that ran beside a failed one proves nothing: {answer:?}"
    );
    drop(wal);
    crash.crash_lose_all_unsynced();
    let wal = open(&crash, &small_options()).unwrap();
    assert_eq!(wal.last_index(), 1, "entry 2's bytes were dropped with the failed sync");
}

#[test]
fn the_last_segment_sequence_refuses_a_rollover_before_writing_anything() {
    // Recovery accepts sequences up to 2^32 - 2 (the index keeps 32 bits and reserves the
    // largest value); a log whose last segment has that sequence can never roll over.
    let crash = CrashFs::new();
    open(&crash, &small_options()).unwrap().close().unwrap();
    let files = segment_files(&crash);
    let [first] = &files[..] else { panic!("one segment: {files:?}") };
    let mut bytes = crash.read_file(first).unwrap();
    let last = u64::from(u32::MAX) - 1;
    let header = SegmentHeader { sequence: last, first_record: 1, prev_crc: 0, recycled: false };
    bytes[..header.encode().len()].copy_from_slice(&header.encode());
    crash.write_file_raw(&dir().join(segment_name(last, 1)), &bytes).unwrap();
    let fs: Fs = Arc::new(crash.clone());
    fs.remove_file(first).unwrap();
    fs.sync_dir(&dir()).unwrap();

    let wal = open(&crash, &small_options()).unwrap();
    let mut acked = 0;
    let mut refusals = Vec::new();
    // Bounded: 100 entries of 100 bytes need three 4 KiB segments; the first rollover is refused,
    // and a second attempt is refused the same way.
    for i in 1..=100u64 {
        match wal.save(None, &[entry(acked + 1, 1, 100)]) {
            Ok(()) => acked += 1,
            Err(e) => {
                refusals.push(e);
                if refusals.len() == 2 {
                    break;
                }
            }
        }
        assert!(i < 100, "the segment must fill up");
    }
    assert!(acked > 0, "entries fit in the last segment");
    for e in &refusals {
        assert!(matches!(e, Error::Io(_)), "a clear refusal, not poison or corruption: {e:?}");
    }
    assert!(wal.sync().is_ok(), "the log is not poisoned by a refused rollover");
    assert_eq!(wal.last_index(), acked);
    let names: Vec<u64> = segment_files(&crash)
        .iter()
        .filter_map(|p| parse_segment_name(p.file_name()?.to_str()?).map(|(seq, _)| seq))
        .collect();
    assert_eq!(names, [last], "no segment beyond the last sequence was created");
    drop(wal);
    let wal = open(&crash, &small_options()).expect("the next open accepts the log");
    assert_eq!(wal.last_index(), acked);
    let want: Vec<Entry> = (1..=acked).map(|i| entry(i, 1, 100)).collect();
    assert_eq!(wal.entries(1, acked + 1, u64::MAX).unwrap(), want);
}

#[test]
fn a_record_count_near_its_limit_is_refused_as_corruption_not_a_panic() {
    // A segment header's `first_record` (and the name that repeats it) comes from disk: a log
    // whose count of records written could never be reached must be refused where it is read,
    // not overflow the writer's count when writing resumes.
    let crash = CrashFs::new();
    open(&crash, &small_options()).unwrap().close().unwrap();
    let files = segment_files(&crash);
    let [first] = &files[..] else { panic!("one segment: {files:?}") };
    for first_record in [u64::MAX, u64::MAX - 1, MAX_FIRST_RECORD + 1] {
        let mut bytes = crash.read_file(first).unwrap();
        let header = SegmentHeader { sequence: 1, first_record, prev_crc: 0, recycled: false };
        bytes[..header.encode().len()].copy_from_slice(&header.encode());
        let forged = CrashFs::new();
        forged.write_file_raw(&dir().join(segment_name(1, first_record)), &bytes).unwrap();
        let name = segment_name(1, first_record);
        match open(&forged, &small_options()) {
            Err(Error::Corruption { segment, .. }) => {
                assert!(segment.ends_with(&name), "the place names the segment: {segment:?}")
            }
            other => panic!("first record {first_record}: want Corruption, got {other:?}"),
        }
    }
}

#[derive(Default)]
struct PrepareScript {
    preparer: Option<ThreadId>,
    paused: bool,
    dropping: bool,
    release: bool,
    dropped: bool,
}

#[test]
fn dropping_a_log_stops_its_segment_preparation_before_returning() {
    // The background thread preparing the next segment must not outlive its log: a reopened
    // log would prepare a file of the same name, which the old thread could then truncate and
    // zero-fill under it.
    let crash = CrashFs::new();
    let options = WalOptions { prepare_in_background: true, ..small_options() };
    let script = Script::new(PrepareScript::default());
    let hook_script = script.clone();
    // Open writes a new log's first segment under a temp name too, on this thread: only the
    // background thread's temp file is the preparation.
    let test_thread = std::thread::current().id();
    crash.set_hook(Some(Arc::new(move |e: &OpEvent<'_>| {
        let me = std::thread::current().id();
        let mut s = hook_script.lock();
        let is_temp = e.path.is_some_and(|p| p.extension().is_some_and(|x| x == "tmp"));
        if s.preparer.is_none() && me != test_thread && e.kind == OpKind::Create && is_temp {
            // The preparation started by open: hold it until the log is being dropped.
            s.preparer = Some(me);
            s.paused = true;
            drop(s);
            hook_script.changed.notify_all();
            hook_script.wait_for(|s| s.release);
        } else if e.kind == OpKind::Close && s.dropping && !s.release {
            // The log is closing its files.
            s.release = true;
            drop(s);
            hook_script.changed.notify_all();
        } else if s.preparer == Some(me) && s.release && e.kind != OpKind::Close {
            // Any further step of the old preparation waits until the drop has returned.
            drop(s);
            hook_script.wait_for(|s| s.dropped);
        }
        Ok(())
    })));
    let fs: Fs = Arc::new(crash.clone());
    let wal = open_on(&fs, &options).unwrap();
    wal.save(None, &[entry(1, 1, 100)]).unwrap();
    script.wait_for(|s| s.paused);
    script.update(|s| s.dropping = true);
    drop(wal);
    // Every clone of the file system the log handed out, its threads' included, is gone.
    let holders = Arc::strong_count(&fs);
    script.update(|s| s.dropped = true);
    assert_eq!(holders, 1, "a thread of the dropped log still holds the file system");

    crash.set_hook(None);
    let wal = open_on(&fs, &options).unwrap();
    let es: Vec<Entry> = (2..=40).map(|i| entry(i, 1, 200)).collect();
    for e in &es {
        wal.save(None, std::slice::from_ref(e)).unwrap();
    }
    assert!(wal.segment_count() > 2, "the reopened log rolled over into prepared segments");
    drop(wal);
    crash.crash_lose_all_unsynced();
    let wal = open_on(&fs, &options).unwrap();
    assert_eq!(wal.last_index(), 40);
    assert_eq!(wal.entries(2, 41, u64::MAX).unwrap(), es);
}

/// A log of 200 entries over many 4 KiB segments, and the hook that fails the next operation of
/// `kind` once `armed` is set.
fn long_log(crash: &CrashFs, kind: OpKind) -> (Wal, Arc<Mutex<bool>>) {
    // Released segments are deleted, not kept for reuse: the removal is what fails here.
    let options = WalOptions { recycle_segments: false, ..small_options() };
    let wal = open(crash, &options).unwrap();
    for i in 1..=200u64 {
        wal.save(None, &[entry(i, 1, 100)]).unwrap();
    }
    let armed = Arc::new(Mutex::new(false));
    let trigger = armed.clone();
    crash.set_hook(Some(Arc::new(move |e: &OpEvent<'_>| {
        let mut armed = trigger.lock().unwrap();
        if *armed && e.kind == kind {
            *armed = false;
            return Err(eio());
        }
        Ok(())
    })));
    (wal, armed)
}

#[test]
fn a_failed_remove_after_a_durable_compaction_is_retried_and_not_reported() {
    let crash = CrashFs::new();
    let (wal, armed) = long_log(&crash, OpKind::RemoveFile);
    let before = wal.segment_count();
    *armed.lock().unwrap() = true;
    let compacted = wal.compact(150);
    assert!(compacted.is_ok(), "the compaction is durable, so it succeeded: {compacted:?}");
    assert_eq!(wal.first_index(), 151);
    assert_eq!(
        wal.segment_count(),
        segment_files(&crash).len(),
        "the log still knows every segment file that exists"
    );
    assert_eq!(wal.segment_count(), before, "the first removal failed, so nothing was removed");
    // The next purge (after any sync) removes them.
    wal.save(None, &[entry(201, 1, 100)]).unwrap();
    wal.sync().unwrap();
    assert!(wal.segment_count() < before, "the purge was retried");
    assert_eq!(wal.segment_count(), segment_files(&crash).len());
    drop(wal);
    crash.set_hook(None);
    crash.crash_lose_all_unsynced();
    let wal = open(&crash, &small_options()).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (151, 201));
}

#[test]
fn a_failed_directory_sync_while_purging_keeps_the_compaction_and_poisons_the_log() {
    let crash = CrashFs::new();
    let (wal, armed) = long_log(&crash, OpKind::SyncDir);
    *armed.lock().unwrap() = true;
    let compacted = wal.compact(150);
    assert!(compacted.is_ok(), "the compaction is durable, so it succeeded: {compacted:?}");
    assert_eq!(wal.first_index(), 151);
    assert_eq!(wal.segment_count(), segment_files(&crash).len());
    // Whether the removal is durable is unknown: no later write may depend on the directory.
    assert!(matches!(wal.save(None, &[entry(201, 1, 100)]), Err(Error::Poisoned)));
    drop(wal);
    crash.set_hook(None);
    crash.crash_lose_all_unsynced();
    let wal = open(&crash, &small_options()).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (151, 200));
}

#[test]
fn apply_snapshot_succeeds_when_releasing_old_files_fails_after_its_marker() {
    let crash = CrashFs::new();
    let fs: Fs = Arc::new(crash.clone());
    let options = WalOptions { snapshot_retention: 1, ..small_options() };
    let storage = WalStorage::open_with_fs(fs, Path::new("/node"), options.clone()).unwrap();
    let es: Vec<Entry> = (1..=100).map(|i| entry(i, 1, 100)).collect();
    storage.append(&es).unwrap();
    let conf_state = ConfState { voters: vec![1], ..ConfState::default() };
    let first = SnapshotMetadata { index: 100, term: 1, conf_state: conf_state.clone() };
    storage.apply_snapshot(Snapshot { metadata: first, data: Bytes::from("one") }).unwrap();
    storage.append(&(101..=200).map(|i| entry(i, 1, 100)).collect::<Vec<_>>()).unwrap();
    // Every remove fails from here on: old segments and the older snapshot file both stay.
    crash.set_hook(Some(Arc::new(
        |e: &OpEvent<'_>| {
            if e.kind == OpKind::RemoveFile { Err(eio()) } else { Ok(()) }
        },
    )));
    let second = SnapshotMetadata { index: 300, term: 2, conf_state };
    let applied = storage.apply_snapshot(Snapshot { metadata: second, data: Bytes::from("two") });
    assert!(applied.is_ok(), "the marker is durable, so the snapshot is applied: {applied:?}");
    assert_eq!(storage.wal().first_index(), 301);
    assert_eq!(storage.wal().segment_count(), segment_files(&crash).len());
    crash.set_hook(None);
    drop(storage);
    crash.crash_lose_all_unsynced();
    let fs: Fs = Arc::new(crash.clone());
    let storage = WalStorage::open_with_fs(fs, Path::new("/node"), options).unwrap();
    assert_eq!(storage.wal().snapshot_metadata().index, 300);
    assert_eq!(storage.wal().first_index(), 301);
}

#[derive(Default)]
struct FollowScript {
    leader: Option<ThreadId>,
    follower: Option<ThreadId>,
    leader_paused: bool,
    release_leader: bool,
    follower_writing: bool,
    follower_paused: bool,
    release_follower: bool,
}

/// A write made while a sync runs is framed with the durable point from before that sync, so it
/// witnesses nothing the sync made durable. The leader must still write a witness (after that
/// write) before it acknowledges: a process that dies before the follower's own sync leaves
/// the acknowledged write witnessed, and damage to it is corruption, not a torn tail.
#[test]
fn a_write_made_during_a_sync_does_not_stand_in_for_its_witness() {
    let crash = CrashFs::new();
    let options = WalOptions { segment_size_bytes: 64 << 10, ..small_options() };
    let wal = Arc::new(open(&crash, &options).unwrap());
    wal.save(None, &[entry(1, 1, 100)]).unwrap();
    let script = Script::new(FollowScript::default());
    let hook_script = script.clone();
    crash.set_hook(Some(Arc::new(move |e: &OpEvent<'_>| {
        let me = Some(std::thread::current().id());
        let mut s = hook_script.lock();
        if me == s.leader && e.kind == OpKind::Sync && !s.leader_paused {
            s.leader_paused = true;
            drop(s);
            hook_script.changed.notify_all();
            hook_script.wait_for(|s| s.release_leader);
        } else if me == s.follower && e.kind == OpKind::Write {
            // Under the log's lock: the leader's accounting after its sync waits for it.
            s.follower_writing = true;
            drop(s);
            hook_script.changed.notify_all();
        } else if me == s.follower && e.kind == OpKind::Sync && !s.follower_paused {
            s.follower_paused = true;
            drop(s);
            hook_script.changed.notify_all();
            hook_script.wait_for(|s| s.release_follower);
        }
        Ok(())
    })));
    let spawn = |leads: bool, e: Entry| {
        let (wal, script) = (wal.clone(), script.clone());
        std::thread::spawn(move || {
            let me = Some(std::thread::current().id());
            script.update(|s| if leads { s.leader = me } else { s.follower = me });
            wal.save(None, &[e])
        })
    };
    let leader = spawn(true, entry(2, 1, 100));
    script.wait_for(|s| s.leader_paused);
    let follower = spawn(false, entry(3, 1, 100));
    script.wait_for(|s| s.follower_writing);
    script.update(|s| s.release_leader = true);
    leader.join().unwrap().expect("entry 2 is acknowledged");
    // The follower leads the next sync and is paused in it: the process dies now.
    script.wait_for(|s| s.follower_paused);
    let dead = crate::wal::copy_fs(&crash);
    script.update(|s| s.release_follower = true);
    follower.join().unwrap().unwrap();
    crash.set_hook(None);

    let newest = segment_files(&dead).pop().unwrap();
    let scan = raftwal::wal::recovery::scan_segment(&dead.read_file(&newest).unwrap(), 1 << 20);
    let at = |index: u64| {
        scan.records.iter().position(
            |r| matches!(&r.record, Record::Entries { entries, .. } if entries[0].index == index),
        )
    };
    let (two, three) = (at(2).unwrap(), at(3).unwrap());
    assert_eq!(three, two + 1, "entry 3's write follows entry 2's at once");
    let victim = &scan.records[two];
    dead.flip_bit(&newest, (victim.offset + FRAME_HEADER_LEN as u64 + 3) * 8).unwrap();
    match open(&dead, &options) {
        Err(Error::Corruption { offset, .. }) => assert_eq!(offset, victim.offset),
        Err(e) => panic!("{e}"),
        Ok(wal) => panic!("acknowledged entry 2 was cut as a torn tail: last {}", wal.last_index()),
    }
}
