//! Recycled segments: released files are kept and reused; what an earlier use left in a file
//! never comes back as records, survives no crash as data, and costs the open nothing.

use std::path::{Path, PathBuf};

use raftwal::io::CrashFs;
use raftwal::wal::Wal;
use raftwal::wal::format::{FLAGS_OFFSET, HEADER_FLAG_RECYCLED, POOL_SUFFIX, TRAILER_LEN};
use raftwal::{Entry, HardState, SyncPolicy, WalOptions};

use crate::wal::{Step, crash_at_every_operation, dir, entry, open, small_options};

fn files(fs: &CrashFs, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs
        .list_all()
        .into_iter()
        .filter(|p| p.starts_with(dir()) && p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

/// Whether the segment at `path` is a reused file (its header's flag).
fn is_recycled(fs: &CrashFs, path: &Path) -> bool {
    let bytes = fs.read_file(path).unwrap();
    let flags = u32::from_le_bytes(bytes[FLAGS_OFFSET..FLAGS_OFFSET + 4].try_into().unwrap());
    flags & HEADER_FLAG_RECYCLED != 0
}

fn recycled_segments(fs: &CrashFs) -> usize {
    files(fs, ".wal").iter().filter(|p| is_recycled(fs, p)).count()
}

/// Rounds of large entries, each compacted away, so segments are released and reused.
fn churn() -> Vec<Step> {
    let mut steps = Vec::new();
    for round in 0..12u64 {
        let first = round * 8 + 1;
        let es = (first..first + 8).map(|i| entry(i, 1, 400)).collect();
        steps.push(Step::Save(Some(HardState { term: 1, vote: 1, commit: first }), es));
        steps.push(Step::Compact(first + 6));
    }
    steps
}

#[test]
fn released_segments_are_reused_and_the_files_stay_few() {
    let fs = CrashFs::new();
    let options = WalOptions { purge_threshold_bytes: 4 * 4096, ..small_options() };
    let wal = open(&fs, &options).unwrap();
    let mut most_files = 0;
    for round in 0..60u64 {
        let first = round * 8 + 1;
        let es: Vec<_> = (first..first + 8).map(|i| entry(i, 1, 400)).collect();
        wal.save(None, &es).unwrap();
        wal.compact(first + 6).unwrap();
        let count = files(&fs, ".wal").len() + files(&fs, POOL_SUFFIX).len();
        most_files = most_files.max(count);
    }
    // 4 x 4096 bytes of threshold: 4 + 2 files pooled at most, plus the live ones.
    assert!(most_files <= 6 + 3, "at most the pool and the live segments: {most_files}");
    assert!(recycled_segments(&fs) > 0, "new segments came from the pool");
    assert!(!files(&fs, POOL_SUFFIX).is_empty(), "released files wait in the pool");
    let (first, last) = (wal.first_index(), wal.last_index());
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (first, last));
    assert_eq!(wal.entries(first, last + 1, u64::MAX).unwrap(), vec![entry(last, 1, 400)]);
}

#[test]
fn what_an_earlier_use_left_never_comes_back_and_costs_the_open_nothing() {
    let fs = CrashFs::new();
    let options = small_options();
    let wal = open(&fs, &options).unwrap();
    // Fill segments with large entries, then release them all.
    let es: Vec<_> = (1..=40).map(|i| entry(i, 1, 500)).collect();
    for chunk in es.chunks(2) {
        wal.save(None, chunk).unwrap();
    }
    wal.compact(40).unwrap();
    // Small entries in new, recycled segments: the old large records lie beyond their ends.
    for i in 41..=120 {
        wal.save(Some(&HardState { term: 2, vote: 1, commit: i - 1 }), &[entry(i, 2, 10)]).unwrap();
    }
    assert!(recycled_segments(&fs) > 0, "the log wrote into recycled files");
    let want = wal.entries(41, 121, u64::MAX).unwrap();
    drop(wal);
    for read_footers in [true, false] {
        let wal = open(&fs, &WalOptions { read_footers, ..options.clone() }).unwrap();
        let report = wal.recovery_report();
        assert_eq!(report.truncated, None, "a clean end, not a torn tail: {report:?}");
        assert_eq!(report.erased, None, "nothing after the end needs erasing: {report:?}");
        assert_eq!((wal.first_index(), wal.last_index()), (41, 120));
        assert_eq!(wal.entries(41, 121, u64::MAX).unwrap(), want);
        assert_eq!(wal.hard_state().commit, 119);
    }
}

#[test]
fn a_crash_at_every_io_operation_of_a_recycling_log_loses_nothing_acknowledged() {
    let options = WalOptions { purge_threshold_bytes: 3 * 4096, ..small_options() };
    // The workload does recycle (checked on a run without crashes).
    let fs = CrashFs::new();
    let wal = open(&fs, &options).unwrap();
    for step in churn() {
        match step {
            Step::Save(hs, es) => wal.save(hs.as_ref(), &es).unwrap(),
            Step::Compact(i) => wal.compact(i).unwrap(),
            Step::Sync => wal.sync().unwrap(),
        }
    }
    assert!(recycled_segments(&fs) > 0, "the workload writes into recycled files");
    let points = crash_at_every_operation(&options, &churn());
    println!("recycling wal crash points checked: {points} x 3 seeds");
}

#[test]
fn a_pool_file_that_held_the_sequence_it_would_take_is_not_reused() {
    // A crash can undo the renames that made a pool file segment N while N's records stayed in
    // it; reused for N again, those records would not read as stale.
    let fs = CrashFs::new();
    let options = small_options();
    let wal = open(&fs, &options).unwrap();
    for i in 1..=24 {
        wal.save(None, &[entry(i, 1, 400)]).unwrap();
    }
    wal.compact(24).unwrap();
    drop(wal);
    let pool = files(&fs, POOL_SUFFIX);
    assert!(!pool.is_empty(), "a released segment waits in the pool");
    let segments = files(&fs, ".wal");
    let newest = segments.last().unwrap();
    let newest_seq =
        u64::from_str_radix(&newest.file_name().unwrap().to_string_lossy()[..16], 16).unwrap();
    // Make every pool file look like it held the next segments.
    for (k, path) in pool.iter().enumerate() {
        let mut bytes = fs.read_file(path).unwrap();
        let header = raftwal::wal::format::SegmentHeader {
            sequence: newest_seq + 1 + k as u64,
            first_record: 0,
            prev_crc: 0,
            recycled: true,
        };
        bytes[..raftwal::wal::format::SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        fs.write_file_raw(path, &bytes).unwrap();
    }
    let wal = open(&fs, &options).unwrap();
    for i in 25..=60 {
        wal.save(None, &[entry(i, 1, 400)]).unwrap();
    }
    // The next segments would have taken the doctored files, the only ones in the pool then.
    let later: Vec<_> =
        files(&fs, ".wal").into_iter().filter(|p| p > newest).take(pool.len()).collect();
    assert_eq!(later.len(), pool.len(), "the log rolled over");
    for path in &later {
        let bytes = fs.read_file(path).unwrap();
        let flags = u32::from_le_bytes(bytes[FLAGS_OFFSET..FLAGS_OFFSET + 4].try_into().unwrap());
        assert_eq!(
            flags & HEADER_FLAG_RECYCLED,
            0,
            "{path:?} reused a file that held its sequence"
        );
    }
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    let want: Vec<_> = (25..=60).map(|i| entry(i, 1, 400)).collect();
    assert_eq!(wal.entries(25, 61, u64::MAX).unwrap(), want);
}

/// The newest segment's path.
fn newest_segment(fs: &CrashFs) -> PathBuf {
    files(fs, ".wal").pop().expect("a log has a segment")
}

fn trailer_of(bytes: &[u8]) -> &[u8] {
    &bytes[bytes.len() - TRAILER_LEN..]
}

/// A log whose newest segment is a reused file with room left: a hard state `hs`, entries
/// 1..=24 released by a compaction, then entries until a write rolls over into a recycled file.
/// Returns the log, that segment and the last index.
fn writing_into_a_recycled_file(
    fs: &CrashFs,
    options: &WalOptions,
    hs: &HardState,
) -> (Wal, PathBuf, u64) {
    let wal = open(fs, options).unwrap();
    wal.save(Some(hs), &[]).unwrap();
    for i in 1..=24 {
        wal.save(None, &[entry(i, 1, 400)]).unwrap();
    }
    wal.compact(24).unwrap();
    wal.sync().unwrap();
    assert!(!files(fs, POOL_SUFFIX).is_empty(), "released segments wait in the pool");
    let mut last = 24;
    let full = newest_segment(fs);
    while newest_segment(fs) == full || !is_recycled(fs, &newest_segment(fs)) {
        last += 1;
        wal.save(None, &[entry(last, 1, 400)]).unwrap();
        assert!(last < 60, "the log never wrote into a recycled file");
    }
    (wal, newest_segment(fs), last)
}

/// Writes `entries` without a sync, then cuts the power so that, of the bytes of `segment`
/// that differ from `before`, only the first `kept` survive. Returns where they start.
fn tear_a_write(
    fs: &CrashFs,
    wal: Wal,
    segment: &Path,
    before: &[u8],
    entries: &[Entry],
    kept: usize,
) -> usize {
    wal.save(None, entries).unwrap();
    let written = fs.read_file(segment).unwrap();
    let start = (0..written.len()).find(|&i| written[i] != before[i]).expect("the write landed");
    drop(wal);
    fs.crash_lose_all_unsynced();
    let mut torn = fs.read_file(segment).unwrap();
    torn[start..start + kept].copy_from_slice(&written[start..start + kept]);
    fs.write_file_raw(segment, &torn).unwrap();
    start
}

#[test]
fn a_resumed_recycled_segment_sealed_without_a_footer_leaves_no_old_trailer_after_a_power_cut() {
    // A recycled segment is sealed with a footer, its successor's name is lost in a power cut,
    // writing resumes after the footer (the trailer stays: it is past the records), and the
    // segment is sealed again, now without a footer (its summary grew past max_record_bytes).
    // That seal zeroes the old trailer; a power cut after the next segment is durable must not
    // bring it back, or open replays the segment from a footer that lists only part of it.
    let options =
        WalOptions { sync_policy: SyncPolicy::Never, max_record_bytes: 1024, ..small_options() };
    let hs = |commit| HardState { term: 1, vote: 1, commit };
    let fs = CrashFs::new();
    let (wal, resumed, last) = writing_into_a_recycled_file(&fs, &options, &hs(0));
    wal.sync().unwrap();
    // A write too large for what is left rolls over: the segment is sealed with a footer, and
    // the next one's name is not durable (nothing synced it).
    let big = |first: u64| -> Vec<_> { (first..first + 4).map(|i| entry(i, 1, 900)).collect() };
    wal.save(None, &big(last + 1)).unwrap();
    assert_ne!(newest_segment(&fs), resumed, "the write rolled over");
    assert_eq!(
        &trailer_of(&fs.durable_file(&resumed).unwrap())[..4],
        &raftwal::wal::format::TRAILER_MAGIC,
        "sealed with a footer"
    );
    drop(wal);
    fs.crash_lose_all_unsynced();

    // Writing resumes after the footer; the trailer stays.
    let wal = open(&fs, &options).unwrap();
    assert_eq!(newest_segment(&fs), resumed, "the next segment's name was lost");
    assert_eq!(wal.last_index(), last);
    assert_eq!(
        &trailer_of(&fs.read_file(&resumed).unwrap())[..4],
        &raftwal::wal::format::TRAILER_MAGIC
    );
    // Enough small records that the segment's footer no longer fits a record (each rewrites
    // the last entry, so none joins the run before it in the footer), then a clean close:
    // everything written is durable, and nothing (no witness) follows the checkpoint.
    for commit in 1..=32 {
        wal.save(Some(&hs(commit)), &[entry(last, 1, 0)]).unwrap();
    }
    wal.close().unwrap();
    let wal = open(&fs, &options).unwrap();
    assert_eq!(newest_segment(&fs), resumed);
    wal.save(None, &big(last + 1)).unwrap();
    assert_ne!(newest_segment(&fs), resumed, "the write rolled over");
    assert_eq!(trailer_of(&fs.read_file(&resumed).unwrap()), [0; TRAILER_LEN], "no footer");
    // The new segment's name and records are durable, the write acknowledged.
    wal.sync().unwrap();
    drop(wal);
    fs.crash_lose_all_unsynced();

    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.last_index(), last + 4);
    assert_eq!(wal.entries(last + 1, last + 5, u64::MAX).unwrap(), big(last + 1));
    assert_eq!(wal.hard_state(), hs(32));
}

/// A write torn by a power cut in a recycled segment leaves a frame naming this segment at the
/// recovered end. Open must erase it, as it erases everything after the end of a fresh file:
/// shorter records written over its start would leave its tail right behind the last record,
/// and once the segment is sealed the next open would read it as damage in a synced segment
/// and refuse a healthy log. (Found by the `engine_recovery` fuzz target: "checksum mismatch"
/// in a sealed segment after a power cut, a clean write and a clean reopen.) What an earlier
/// use of the file left, with older sequences, may stay.
#[test]
fn a_torn_write_in_a_recycled_segment_is_erased_at_open() {
    let options = WalOptions { sync_policy: SyncPolicy::Never, ..small_options() };
    let fs = CrashFs::new();
    let hs = HardState { term: 1, vote: 1, commit: 0 };
    let (wal, segment, last) = writing_into_a_recycled_file(&fs, &options, &hs);
    wal.sync().unwrap();
    let synced = fs.read_file(&segment).unwrap();
    // One more record, not synced; a power cut then keeps its first 600 bytes only.
    let start = tear_a_write(&fs, wal, &segment, &synced, &[entry(last + 1, 1, 900)], 600);

    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.last_index(), last, "the torn record is cut");
    let after = fs.durable_file(&segment).unwrap();
    assert!(after[start..start + 600].iter().all(|&b| b == 0), "the torn frame is erased, durably");
    drop(wal);
    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.last_index(), last);
}

/// A write torn by a power cut in a recycled segment can keep less than its frame header: the
/// header's last field, the sequence naming the segment, is lost with the rest. Open must erase
/// what is left anyway. When the next write does not fit and rolls over, nothing is written at
/// the recovered end before the segment is sealed; with no footer (its summary grew past
/// `max_record_bytes`) the torn bytes stay right behind the last record, and the next open
/// reads them as damage in a synced segment and refuses a healthy log. (Found by the
/// `engine_recovery` fuzz target: "checksum mismatch" in a sealed segment after a power cut, a
/// write that rolled over and a clean reopen.)
#[test]
fn a_torn_frame_header_in_a_recycled_segment_is_erased_at_open() {
    let options =
        WalOptions { sync_policy: SyncPolicy::Never, max_record_bytes: 1024, ..small_options() };
    let hs = |commit| HardState { term: 1, vote: 1, commit };
    let fs = CrashFs::new();
    let (wal, segment, last) = writing_into_a_recycled_file(&fs, &options, &hs(0));
    // Enough small records that the segment's summary no longer fits a record.
    for commit in 1..=30 {
        wal.save(Some(&hs(commit)), &[]).unwrap();
    }
    assert_eq!(newest_segment(&fs), segment, "the small records fit the segment");
    // A clean close and open: the next record lands right after the last durable one (after a
    // sync, a witness would come first, and a power cut would take it).
    wal.close().unwrap();
    let wal = open(&fs, &options).unwrap();
    let synced = fs.durable_file(&segment).unwrap();
    assert_eq!(synced, fs.read_file(&segment).unwrap(), "everything is durable");
    // One more record, not synced; a power cut then keeps its first 16 bytes only: the frame
    // header's checksum, length, type and chain, not its durable point or sequence.
    let start = tear_a_write(&fs, wal, &segment, &synced, &[entry(last + 1, 1, 100)], 16);

    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.last_index(), last, "the torn record is cut");
    let after = fs.durable_file(&segment).unwrap();
    assert!(after[start..start + 16].iter().all(|&b| b == 0), "the torn header is erased, durably");
    // A write larger than what is left rolls over before anything lands at the recovered end.
    let big: Vec<_> = (last + 1..last + 5).map(|i| entry(i, 1, 900)).collect();
    wal.save(None, &big).unwrap();
    assert_ne!(newest_segment(&fs), segment, "the write rolled over");
    assert_eq!(trailer_of(&fs.read_file(&segment).unwrap()), [0; TRAILER_LEN], "no footer");
    wal.close().unwrap();

    let wal = open(&fs, &options).unwrap();
    assert_eq!(wal.last_index(), last + 4);
    assert_eq!(wal.entries(last + 1, last + 5, u64::MAX).unwrap(), big);
    assert_eq!(wal.hard_state(), hs(30));
}
