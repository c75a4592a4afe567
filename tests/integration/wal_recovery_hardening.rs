//! Recovery against damage that looks like a torn tail but is not: garbage left behind an
//! accepted end, damage to the only segment's header, sealed segments changed underneath an
//! open log, unknown header flags and records above a lowered size limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use raftwal::WalStorage;
use raftwal::io::{CrashFs, FileSystem, Fs, RealFs};
use raftwal::wal::Wal;
use raftwal::wal::format::{
    self, FLAGS_OFFSET, FRAME_HEADER_LEN, HEADER_CRC_OFFSET, Record, SEQUENCE_OFFSET,
};
use raftwal::wal::recovery::scan_segment;
use raftwal::{ConfState, Entry, Error, HardState, Snapshot, SnapshotMetadata, Storage};
use raftwal::{SyncPolicy, WalOptions};

use crate::wal::{dir as wal_dir, entry, open, small_options as options};

fn segments(fs: &dyn FileSystem, dir: &Path) -> Vec<String> {
    fs.list(dir).unwrap().into_iter().filter(|n| format::parse_segment_name(n).is_some()).collect()
}

fn assert_entries(wal: &Wal, first: u64, last: u64) {
    assert_eq!(wal.last_index(), last);
    let got = wal.entries(first, last + 1, u64::MAX).unwrap();
    assert_eq!(got.len() as u64, last + 1 - first);
    for e in got {
        assert_eq!(e, entry(e.index, 1, 100), "entry {} came back changed", e.index);
    }
}

/// A torn write whose first sector was lost but whose later sector survived leaves non-zero
/// bytes behind the accepted end. Open must erase them, or later, shorter writes leave them
/// behind the last record and the segment, once sealed, reads as damaged.
#[test]
fn garbage_behind_an_accepted_end_is_erased_before_appending() {
    let fs = CrashFs::new();
    let wal = open(&fs, &options()).unwrap();
    for i in 1..=3 {
        wal.save(None, &[entry(i, 1, 100)]).unwrap();
    }
    drop(wal);
    let name = segments(&fs, &wal_dir()).pop().unwrap();
    let path = wal_dir().join(&name);
    let mut bytes = fs.read_file(&path).unwrap();
    let end = scan_segment(&bytes, 2048).stop_offset as usize;
    // The lost first sector reads as zeros; the surviving later sectors hold bytes that are no
    // frame (0x5A is no record type), up to the end of the segment.
    let garbage_from = (end + FRAME_HEADER_LEN).next_multiple_of(512);
    bytes[garbage_from..].fill(0x5A);
    fs.write_file_raw(&path, &bytes).unwrap();

    let wal = open(&fs, &options()).unwrap();
    assert_eq!(wal.last_index(), 3);
    let erased = wal.recovery_report().erased.clone();
    assert_eq!(erased, Some((name.clone(), end as u64, (bytes.len() - end) as u64)));
    let mut last = 3;
    // Small writes until the segment rolls over twice: the damaged one is sealed then.
    // Bounded: each 4 KiB segment holds a few dozen of these entries.
    while wal.segment_count() < 3 {
        last += 1;
        wal.save(None, &[entry(last, 1, 100)]).unwrap();
        assert!(last < 200, "the log never rolled over");
    }
    drop(wal);

    let wal = open(&fs, &options()).expect("a healthy log must open");
    assert_entries(&wal, 1, last);
}

/// Under `SyncPolicy::Never` every record written since a segment started carries durable = 0
/// until the next write after a sync. A log's only segment (it never rolled over) with a
/// damaged header must not be taken for a new segment torn in its first write: that would
/// remove the only segment and rebuild an empty log (row H6).
fn only_segment_without_witness(fs: &CrashFs) -> String {
    let never = WalOptions { sync_policy: SyncPolicy::Never, ..options() };
    let wal = open(fs, &never).unwrap();
    for i in 1..=8 {
        wal.save(None, &[entry(i, 1, 100)]).unwrap();
    }
    wal.sync().unwrap();
    let names = segments(fs, &wal_dir());
    assert_eq!(names.len(), 1, "the log never rolled over");
    drop(wal);
    names[0].clone()
}

#[test]
fn a_damaged_header_of_the_only_segment_is_refused_not_reset() {
    let fs = CrashFs::new();
    let name = only_segment_without_witness(&fs);
    let path = wal_dir().join(&name);
    // Its first sector lost: the header and the records in that sector read as zeros.
    let mut bytes = fs.read_file(&path).unwrap();
    bytes[..512].fill(0);
    fs.write_file_raw(&path, &bytes).unwrap();

    let never = WalOptions { sync_policy: SyncPolicy::Never, ..options() };
    for _ in 0..2 {
        match open(&fs, &never) {
            Err(Error::Corruption { segment, .. }) => assert_eq!(segment, PathBuf::from(&name)),
            Ok(wal) => panic!(
                "open must refuse, but came back with hard state {:?} and last index {}",
                wal.hard_state(),
                wal.last_index()
            ),
            Err(other) => panic!("open must refuse with Corruption, got {other:?}"),
        }
    }
    assert!(fs.read_file(&path).is_some(), "the only segment must not be removed");
}

#[test]
fn a_storage_whose_newest_segment_header_is_damaged_keeps_its_snapshots_and_refuses() {
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let root = PathBuf::from("/node");
    let never = WalOptions { sync_policy: SyncPolicy::Never, ..options() };
    let storage = WalStorage::open_with_fs(shared.clone(), &root, never.clone()).unwrap();
    let hs = HardState { term: 4, vote: 2, commit: 0 };
    let mut last = 0;
    // Bounded: a few dozen entries fill a 4 KiB segment.
    while storage.wal().segment_count() < 2 {
        last += 1;
        storage.save(Some(&hs), &[entry(last, 1, 100)]).unwrap();
    }
    let metadata = SnapshotMetadata {
        index: last + 10,
        term: 3,
        conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
    };
    // The marker is synced and the older segments released; every record of the only segment
    // left was written before that sync.
    storage
        .apply_snapshot(Snapshot { metadata: metadata.clone(), data: Bytes::from("image") })
        .unwrap();
    let names = segments(&fs, &wal_dir());
    assert_eq!(names.len(), 2, "the newest segment and the one before it");
    let snap_files = fs.list(&root.join("snap")).unwrap();
    assert_eq!(snap_files.len(), 1);
    drop(storage);
    fs.flip_bit(&wal_dir().join(&names[1]), (SEQUENCE_OFFSET as u64) * 8 + 1).unwrap();

    match WalStorage::open_with_fs(shared.clone(), &root, never) {
        Err(Error::Corruption { .. }) => {}
        Ok(s) => panic!(
            "open must refuse, but came back with {:?}",
            s.initial_state().map(|st| st.hard_state)
        ),
        Err(other) => panic!("open must refuse with Corruption, got {other:?}"),
    }
    assert_eq!(fs.list(&root.join("snap")).unwrap(), snap_files, "snapshot files were deleted");
}

/// A storage whose WAL directory lost every segment while its snapshot files survived did have
/// a log: opening must not build an empty one and delete the snapshots as orphans.
#[test]
fn snapshot_files_without_any_segment_are_refused() {
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let root = PathBuf::from("/node");
    let storage = WalStorage::open_with_fs(shared.clone(), &root, options()).unwrap();
    storage.save(Some(&HardState { term: 2, vote: 1, commit: 1 }), &[entry(1, 2, 50)]).unwrap();
    storage.create_snapshot(1, None, Bytes::from("image")).unwrap();
    drop(storage);
    for name in segments(&fs, &wal_dir()) {
        shared.remove_file(&wal_dir().join(name)).unwrap();
    }
    let snap_files = fs.list(&root.join("snap")).unwrap();

    let reopened = WalStorage::open_with_fs(shared.clone(), &root, options());
    assert!(
        matches!(reopened, Err(Error::Corruption { .. })),
        "open must refuse, got {:?}",
        reopened.map(|s| s.initial_state().map(|st| st.hard_state))
    );
    assert_eq!(fs.list(&root.join("snap")).unwrap(), snap_files, "snapshot files were deleted");
}

/// Under `SyncPolicy::Never` with explicit syncs, a record of an earlier synced batch has a
/// witness in every later batch, and the last synced batch in the witness its sync wrote:
/// damage to any of them is refused, not cut.
#[test]
fn damage_witnessed_by_a_later_synced_batch_is_refused() {
    let never = WalOptions { sync_policy: SyncPolicy::Never, ..options() };
    for victim_batch in 0..3 {
        let fs = CrashFs::new();
        let wal = open(&fs, &never).unwrap();
        let mut offsets = Vec::new();
        for batch in 0..3u64 {
            let es: Vec<Entry> =
                (batch * 2 + 1..=batch * 2 + 2).map(|i| entry(i, 1, 100)).collect();
            wal.save(Some(&HardState { term: 1, vote: 1, commit: batch }), &es).unwrap();
            wal.sync().unwrap();
            let name = segments(&fs, &wal_dir()).pop().unwrap();
            let bytes = fs.read_file(&wal_dir().join(&name)).unwrap();
            let records = scan_segment(&bytes, 2048).records;
            // The batch's last record (the sync's witness follows it).
            let last = records.iter().rev().find(|r| r.record != Record::Witness).unwrap();
            offsets.push((name, last.offset));
        }
        drop(wal);
        let (name, offset) = &offsets[victim_batch];
        fs.flip_bit(&wal_dir().join(name), (offset + FRAME_HEADER_LEN as u64 + 2) * 8).unwrap();
        match open(&fs, &never) {
            Err(Error::Corruption { segment, offset: at, .. }) => {
                assert_eq!((segment, at), (PathBuf::from(name), *offset));
            }
            Ok(wal) => panic!(
                "damage in synced batch {victim_batch} was cut: last index {}",
                wal.last_index()
            ),
            Err(other) => panic!("open must refuse with Corruption, got {other:?}"),
        }
    }
}

/// A sealed segment truncated by another program while the log is open: reading its entries
/// must give an error, never kill the process.
#[test]
fn reading_a_sealed_segment_truncated_underneath_gives_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let fs: Fs = Arc::new(RealFs);
    let opts = WalOptions { cache_bytes: 0, ..options() };
    let wal = Wal::open(fs.clone(), dir.path(), opts).unwrap();
    let mut last = 0;
    // Bounded: a few dozen entries fill a 4 KiB segment.
    while wal.segment_count() < 3 {
        last += 1;
        wal.save(None, &[entry(last, 1, 100)]).unwrap();
    }
    let first_sealed = segments(fs.as_ref(), dir.path()).remove(0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(&first_sealed))
        .unwrap()
        .set_len(0)
        .unwrap();

    let read = wal.entries(1, 3, u64::MAX);
    assert!(
        matches!(read, Err(Error::Corruption { .. } | Error::Io(_))),
        "a truncated sealed segment must read as an error, got {read:?}"
    );
}

/// Rewrites a segment's header with `flags` and a matching header CRC.
fn set_flags(fs: &CrashFs, path: &Path, flags: u32) {
    let mut bytes = fs.read_file(path).unwrap();
    bytes[FLAGS_OFFSET..FLAGS_OFFSET + 4].copy_from_slice(&flags.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    fs.write_file_raw(path, &bytes).unwrap();
}

#[test]
fn a_segment_header_with_unknown_flags_is_refused_naming_the_segment() {
    let fs = CrashFs::new();
    let wal = open(&fs, &options()).unwrap();
    wal.save(Some(&HardState { term: 1, vote: 1, commit: 0 }), &[entry(1, 1, 100)]).unwrap();
    wal.close().unwrap();
    let name = segments(&fs, &wal_dir()).pop().unwrap();
    // Bit 0 says the file was recycled; bit 1 is no flag this build knows.
    set_flags(&fs, &wal_dir().join(&name), 2);

    match open(&fs, &options()) {
        Err(Error::Corruption { segment, offset, .. }) => {
            assert_eq!((segment, offset), (PathBuf::from(&name), 0));
        }
        other => panic!("open must refuse a segment with unknown flags, got {other:?}"),
    }
}

#[test]
fn lowering_max_record_bytes_below_a_stored_record_is_refused_naming_the_option() {
    let fs = CrashFs::new();
    let big = WalOptions { segment_size_bytes: 16384, max_record_bytes: 8192, ..options() };
    let wal = open(&fs, &big).unwrap();
    wal.save(None, &[entry(1, 1, 100)]).unwrap();
    wal.save(None, &[entry(2, 1, 4000)]).unwrap();
    // Not closed: the large record is the last one, with no witness after it.
    drop(wal);

    let small = WalOptions { max_record_bytes: 2048, ..big.clone() };
    match open(&fs, &small) {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("max_record_bytes"), "the error must name the option: {text}");
        }
        Ok(wal) => panic!("open must refuse, but cut the log to last index {}", wal.last_index()),
    }
    // Nothing was cut: the old limit still opens the whole log.
    let wal = open(&fs, &big).unwrap();
    assert_eq!(wal.last_index(), 2);
}

/// The batch that starts a new segment is written with its header and checkpoint in one write,
/// all with durable = 0, and acknowledged after its sync. A bit flip in that header later must
/// not pass for a new segment torn in its first write: the header shares its sector with the
/// checkpoint after it, and a sector is written whole, so the header was written and is damaged.
#[test]
fn a_damaged_header_sharing_its_sector_with_a_valid_record_is_refused() {
    let fs = CrashFs::new();
    let wal = open(&fs, &options()).unwrap();
    let mut last = 0;
    // Bounded: a few dozen entries fill a 4 KiB segment.
    while wal.segment_count() < 2 {
        last += 1;
        wal.save(Some(&HardState { term: 1, vote: 1, commit: last }), &[entry(last, 1, 100)])
            .unwrap();
    }
    // Acknowledged: the save returned after its sync. Not closed, so nothing witnesses it.
    drop(wal);
    let name = segments(&fs, &wal_dir()).pop().unwrap();
    fs.flip_bit(&wal_dir().join(&name), (SEQUENCE_OFFSET as u64) * 8 + 2).unwrap();

    match open(&fs, &options()) {
        Err(Error::Corruption { segment, offset, .. }) => {
            assert_eq!((segment, offset), (PathBuf::from(&name), 0));
        }
        Ok(wal) => panic!(
            "open must refuse, but dropped the acknowledged entry {last}: last index {}",
            wal.last_index()
        ),
        Err(other) => panic!("open must refuse with Corruption, got {other:?}"),
    }
}

/// Records larger than one read-ahead are read with a second `pread`; a sealed segment cut
/// short inside such a record reads as torn.
#[test]
fn large_records_of_sealed_segments_read_back_and_a_cut_inside_one_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    let fs: Fs = Arc::new(RealFs);
    let opts = WalOptions {
        segment_size_bytes: 64 << 10,
        max_record_bytes: 64 << 10,
        cache_bytes: 0,
        ..options()
    };
    let wal = Wal::open(fs.clone(), dir.path(), opts).unwrap();
    let big = |i: u64| entry(i, 1, 10_000 + i as usize * 7);
    let mut last = 0;
    // Bounded: six or so 10 KiB entries fill a 64 KiB segment.
    while wal.segment_count() < 3 {
        last += 1;
        wal.save(None, &[big(last)]).unwrap();
    }
    let got = wal.entries(1, last + 1, u64::MAX).unwrap();
    assert_eq!(got, (1..=last).map(big).collect::<Vec<_>>());

    let first_sealed = segments(fs.as_ref(), dir.path()).remove(0);
    let path = dir.path().join(&first_sealed);
    let bytes = std::fs::read(&path).unwrap();
    let second = scan_segment(&bytes, 64 << 10)
        .records
        .into_iter()
        .find(|r| matches!(&r.record, Record::Entries { entries, .. } if entries[0].index == 2))
        .unwrap();
    // Cut 6000 bytes into the second entry's record: past the first read, before its end.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(second.offset + 6000)
        .unwrap();
    match wal.entries(2, 3, u64::MAX) {
        Err(Error::Corruption { segment, offset, kind }) => {
            assert_eq!((segment, offset), (PathBuf::from(&first_sealed), second.offset));
            assert_eq!(kind, raftwal::CorruptionKind::Torn);
        }
        other => panic!("a record cut short must read as torn, got {other:?}"),
    }
}

/// A directory of another format version is refused in every recovery mode, naming the
/// segment and the version, and nothing in it is changed: cutting it would drop a whole log.
#[test]
fn a_log_of_another_format_version_is_refused_and_left_untouched() {
    let fs = CrashFs::new();
    let wal = open(&fs, &options()).unwrap();
    for i in 1..=40 {
        wal.save(Some(&HardState { term: 1, vote: 1, commit: i }), &[entry(i, 1, 100)]).unwrap();
    }
    wal.close().unwrap();
    let names = segments(&fs, &wal_dir());
    assert!(names.len() > 1, "the log spans segments");
    // Every segment as version 1 wrote it (the CRC vouches for the version).
    for name in &names {
        let path = wal_dir().join(name);
        let mut bytes = fs.read_file(&path).unwrap();
        bytes[format::VERSION_OFFSET..format::VERSION_OFFSET + 4]
            .copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
        bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        fs.write_file_raw(&path, &bytes).unwrap();
    }
    // The segments as they are (a leftover temp file is no part of the log).
    let log = |fs: &CrashFs| -> Vec<(String, u32)> {
        segments(fs, &wal_dir())
            .into_iter()
            .map(|n| (n.clone(), crc32fast::hash(&fs.read_file(&wal_dir().join(&n)).unwrap())))
            .collect()
    };
    let before = log(&fs);
    for mode in [raftwal::RecoveryMode::Strict, raftwal::RecoveryMode::TruncateCorrupt] {
        match open(&fs, &WalOptions { recovery_mode: mode, ..options() }) {
            Err(Error::Corruption { segment, kind, .. }) => {
                assert_eq!(segment, PathBuf::from(&names[0]), "{mode:?}");
                assert_eq!(kind, raftwal::CorruptionKind::UnsupportedVersion(1), "{mode:?}");
                assert!(kind.to_string().contains("version 1"));
            }
            other => panic!("{mode:?}: a version 1 log must be refused, got {other:?}"),
        }
    }
    assert_eq!(log(&fs), before, "a refused log is left as it was");
}

/// The records of the newest segment, decoded.
fn scanned(fs: &CrashFs, name: &str) -> Vec<raftwal::wal::recovery::ScannedRecord> {
    scan_segment(&fs.read_file(&wal_dir().join(name)).unwrap(), 2048).records
}

/// Two entries too large to share a record under `small_options`' 2 KiB limit: a save of them
/// is a write of two records (entries, then entries with the hard state).
fn two_records(first: u64) -> [Entry; 2] {
    [entry(first, 1, 1200), entry(first + 1, 1, 1200)]
}

/// Row W1: a write of two records whose last record never reached the disk, at the end of the
/// newest segment: torn before its sync, so cut whole.
#[test]
fn w1_a_write_missing_its_last_record_at_the_end_of_the_log_is_cut_whole() {
    let fs = CrashFs::new();
    let wal = open(&fs, &options()).unwrap();
    wal.save(Some(&HardState { term: 1, vote: 1, commit: 1 }), &[entry(1, 1, 100)]).unwrap();
    // Same term and vote: the write stays in the newest segment (a vote seals it).
    wal.save(Some(&HardState { term: 1, vote: 1, commit: 3 }), &two_records(2)).unwrap();
    drop(wal);
    let name = segments(&fs, &wal_dir()).pop().unwrap();
    let mut records = scanned(&fs, &name);
    // A write torn before its sync has no witness: the one its sync wrote goes too.
    let witness = records.pop().unwrap();
    assert_eq!(witness.record, Record::Witness, "the last save's sync wrote a witness");
    let last = records.last().unwrap();
    let first_of_write = &records[records.len() - 2];
    assert!(first_of_write.more && !last.more, "the last save is one write of two records");
    let path = wal_dir().join(&name);
    let mut bytes = fs.read_file(&path).unwrap();
    let end = (witness.offset + witness.framed_len) as usize;
    bytes[last.offset as usize..end].fill(0);
    fs.write_file_raw(&path, &bytes).unwrap();

    let wal = open(&fs, &options()).unwrap();
    let report = wal.recovery_report();
    assert_eq!(report.truncated, Some((name, first_of_write.offset, "W1")), "{report:?}");
    assert_eq!(wal.last_index(), 1, "the entries of the torn write are gone with its hard state");
    assert_eq!(wal.hard_state(), HardState { term: 1, vote: 1, commit: 1 });
}

/// Row W2: the same in a sealed segment (read whole: its footer and trailer lost too) is damage
/// to data that was synced whole: refused, and cut only when forced.
#[test]
fn w2_a_write_missing_its_last_record_in_a_sealed_segment_is_corruption() {
    let fs = CrashFs::new();
    let wal = open(&fs, &options()).unwrap();
    let mut i = 1;
    // Saves until the log has rolled over once.
    while segments(&fs, &wal_dir()).len() < 2 {
        wal.save(Some(&HardState { term: 1, vote: 1, commit: i + 1 }), &two_records(i)).unwrap();
        i += 2;
    }
    drop(wal);
    let sealed = segments(&fs, &wal_dir())[0].clone();
    let records = scanned(&fs, &sealed);
    // The footer is last; the write before it is a save of two records.
    let footer = records.last().unwrap();
    let last = &records[records.len() - 2];
    let first_of_write = &records[records.len() - 3];
    assert!(matches!(footer.record, raftwal::wal::format::Record::Footer(_)));
    assert!(first_of_write.more && !last.more);
    let path = wal_dir().join(&sealed);
    let mut bytes = fs.read_file(&path).unwrap();
    // The write's last record, the footer and everything after them (the trailer) zeroed.
    bytes[last.offset as usize..].fill(0);
    fs.write_file_raw(&path, &bytes).unwrap();

    match open(&fs, &options()) {
        Err(Error::Corruption { segment, offset, kind }) => {
            assert_eq!((segment, offset), (PathBuf::from(&sealed), first_of_write.offset));
            assert!(matches!(kind, raftwal::CorruptionKind::Malformed(_)), "{kind:?}");
        }
        other => panic!("a sealed segment missing part of a write must be refused: {other:?}"),
    }
    let forced = WalOptions { recovery_mode: raftwal::RecoveryMode::TruncateCorrupt, ..options() };
    let wal = open(&fs, &forced).unwrap();
    let report = wal.recovery_report();
    assert_eq!(report.truncated, Some((sealed, first_of_write.offset, "W2")), "{report:?}");
}

/// A new segment's first write (its header) and a later unsynced write can share a sector. A
/// power cut that keeps the later write and loses the first would show a valid record beside a
/// torn header (row H7, corruption) in a log that lost nothing acknowledged: so a new segment's
/// first write is synced at once.
#[test]
fn a_lost_first_write_of_a_new_segment_beside_a_later_one_is_never_damage() {
    let never = WalOptions { sync_policy: SyncPolicy::Never, ..options() };
    for seed in 0..64 {
        let fs = CrashFs::new();
        let wal = open(&fs, &never).unwrap();
        let mut i = 1;
        // Bounded: 4 KiB segments roll within a few dozen 100-byte entries.
        while segments(&fs, &wal_dir()).len() < 2 {
            wal.save(None, &[entry(i, 1, 100)]).unwrap();
            i += 1;
            assert!(i < 200, "the segment never rolled");
        }
        // The rollover synced the sealed segment; the new one's first write (the last save) and
        // the writes right behind it are unsynced.
        let durable = i - 2;
        for k in 0..3 {
            wal.save(None, &[entry(i + k, 1, 100)]).unwrap();
        }
        drop(wal);
        fs.crash(seed);
        let wal = open(&fs, &never)
            .unwrap_or_else(|e| panic!("seed {seed}: a power cut left an unreadable log: {e}"));
        assert!(wal.last_index() >= durable, "seed {seed}: synced entries lost");
    }
}
