//! Footers: a sealed segment replayed from its seal-time summary must give exactly the state a
//! replay of its records gives, for every group; a footer or trailer that does not check out
//! sends open back to reading the segment whole.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use raftwal::io::{CrashFs, Fs};
use raftwal::rng::Rng;
use raftwal::{Entry, HardState, LogEngine, Storage, WalOptions, WriteBatch};

fn options(read_footers: bool) -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: 2048,
        prepare_in_background: false,
        cache_bytes: 0,
        // Never rewrite: the segments stay as written.
        purge_threshold_bytes: u64::MAX,
        read_footers,
        ..WalOptions::default()
    }
}

fn open(fs: &CrashFs, read_footers: bool) -> LogEngine {
    let shared: Fs = Arc::new(fs.clone());
    LogEngine::open_with_fs(shared, Path::new("/node"), options(read_footers)).unwrap()
}

/// Everything a group answers: bounds, terms, hard state, snapshot marker, entries.
fn observe(engine: &LogEngine, group: u64) -> String {
    let g = engine.group(group).unwrap();
    let (first, last) = (g.first_index().unwrap(), g.last_index().unwrap());
    let entries =
        if last >= first { g.entries(first, last + 1, u64::MAX).unwrap() } else { vec![] };
    let state = g.initial_state().unwrap();
    let marker = g.wal().snapshot_metadata();
    format!("{first} {last} {:?} {:?} {:?} {entries:?}", g.term(first - 1), state, marker)
}

/// What every group of the workload answers.
fn observe_all(engine: &LogEngine) -> Vec<String> {
    (0..6).map(|g| observe(engine, g)).collect()
}

/// The segment files, in order.
fn segment_paths(fs: &CrashFs) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> =
        fs.list_all().into_iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).collect();
    segments.sort();
    segments
}

/// Random work over 6 groups: batches of saves (with overwrites), compactions, snapshots,
/// removals, across many small segments.
fn workload(fs: &CrashFs, seed: u64) {
    let engine = open(fs, true);
    let mut rng = Rng::new(seed);
    let mut term = [1u64; 6];
    for step in 0..300u64 {
        let group = rng.below(6);
        let g = engine.group(group).unwrap();
        let (first, last) = (g.first_index().unwrap(), g.last_index().unwrap());
        match rng.below(10) {
            0..=5 => {
                let mut batch = WriteBatch::default();
                for other in 0..1 + rng.below(3) {
                    let id = (group + other) % 6;
                    let h = engine.group(id).unwrap();
                    let (f, l) = (h.first_index().unwrap(), h.last_index().unwrap());
                    // Sometimes overwrite a suffix with a newer term.
                    let at =
                        if rng.chance(20) && l >= f { l - rng.below(l - f + 1) } else { l + 1 };
                    if at < l + 1 {
                        term[id as usize] += 1;
                    }
                    let n = 1 + rng.below(4);
                    let es: Vec<Entry> = (at..at + n)
                        .map(|i| Entry::new(i, term[id as usize], vec![(i + step) as u8; 60]))
                        .collect();
                    let hs = HardState { term: term[id as usize], vote: id, commit: f - 1 };
                    batch.save(id, Some(&hs), &es).unwrap();
                }
                engine.write(&mut batch).unwrap();
            }
            6 if last >= first => g.compact(first + rng.below(last - first + 1)).unwrap(),
            7 if last >= first => {
                let index = first + rng.below(last - first + 1);
                match g.create_snapshot(index, None, Bytes::from(format!("s{index}"))) {
                    Ok(_) | Err(raftwal::Error::SnapshotOutOfDate) => {}
                    Err(e) => panic!("snapshot at {index}: {e}"),
                }
            }
            8 if rng.chance(20) => engine.remove_group(group).unwrap(),
            _ => g
                .set_hard_state(HardState { term: term[group as usize], vote: 1, commit: 0 })
                .unwrap(),
        }
    }
    engine.close().unwrap();
}

#[test]
fn footers_replay_to_exactly_the_state_the_records_give() {
    for seed in 0..8 {
        let fs = CrashFs::new();
        workload(&fs, seed);
        let by_footer = open(&fs, true);
        let rows = by_footer.recovery_report().rows.clone();
        assert!(rows.iter().filter(|r| **r == "F1").count() >= 3, "seed {seed}: {rows:?}");
        assert_eq!(rows.last(), Some(&"R1"), "the newest segment is always read whole");
        let seen: Vec<String> = (0..6).map(|g| observe(&by_footer, g)).collect();
        let groups = by_footer.group_ids();
        drop(by_footer);
        let by_records = open(&fs, false);
        assert!(!by_records.recovery_report().rows.contains(&"F1"));
        // Every footer written is the one its segment's records make.
        let inspection =
            raftwal::wal::inspect::inspect(&fs, Path::new("/node/wal"), &options(true)).unwrap();
        let sealed = &inspection.segments[..inspection.segments.len() - 1];
        assert!(sealed.iter().all(|s| s.footer_agrees == Some(true)), "seed {seed}");
        assert_eq!(by_records.group_ids(), groups, "seed {seed}");
        for g in 0..6 {
            assert_eq!(observe(&by_records, g), seen[g as usize], "seed {seed} group {g}");
        }
    }
}

#[test]
fn a_damaged_trailer_or_footer_falls_back_to_reading_the_segment() {
    let fs = CrashFs::new();
    workload(&fs, 99);
    let reference = observe_all(&open(&fs, false));
    let segments = segment_paths(&fs);
    let sealed = &segments[1];
    let len = fs.read_file(sealed).unwrap().len() as u64;
    // The trailer's CRC, then (on a fresh copy) a byte inside the footer record it points at.
    let trailer = fs.read_file(sealed).unwrap();
    let footer_offset =
        u32::from_le_bytes(trailer[len as usize - 12..len as usize - 8].try_into().unwrap()) as u64;
    let copy = |fs: &CrashFs| {
        let copy = CrashFs::new();
        for path in fs.list_all() {
            copy.write_file_raw(&path, &fs.read_file(&path).unwrap()).unwrap();
        }
        copy
    };
    // A damaged trailer: the segment is read whole, and the footer record in it is one more
    // valid record of the chain.
    let damaged = copy(&fs);
    damaged.flip_bit(sealed, (len - 1) * 8).unwrap();
    let engine = open(&damaged, true);
    let rows = &engine.recovery_report().rows;
    assert_eq!(rows[1], "R1", "segment 2 was read whole: {rows:?}");
    assert_eq!(rows[0], "F1", "the undamaged first segment still uses its footer");
    for g in 0..6 {
        assert_eq!(observe(&engine, g), reference[g as usize], "group {g}");
    }
    // A damaged footer record: read whole too, where the footer is a record of a sealed
    // segment that fails its CRC, so damage to durable data, refused with its place.
    let damaged = copy(&fs);
    damaged.flip_bit(sealed, (footer_offset + 30) * 8).unwrap();
    let shared: Fs = Arc::new(damaged.clone());
    match LogEngine::open_with_fs(shared, Path::new("/node"), options(true)) {
        Err(raftwal::Error::Corruption { segment, offset, .. }) => {
            assert_eq!(Path::new("/node/wal").join(segment), *sealed);
            assert_eq!(offset, footer_offset);
        }
        other => panic!("a damaged footer must be refused, got {other:?}"),
    }
}

fn large_footer_options(read_footers: bool) -> WalOptions {
    WalOptions {
        segment_size_bytes: 1 << 20,
        sync_policy: raftwal::SyncPolicy::Never,
        prepare_in_background: false,
        cache_bytes: 0,
        purge_threshold_bytes: u64::MAX,
        read_footers,
        ..WalOptions::default()
    }
}

const LARGE_FOOTER_GROUPS: u64 = 200;

/// A log whose sealed segments have footers of 64 KiB and more (so open decodes them on its
/// second thread): 200 groups, term changes inside records, hard states, compactions, and a
/// close and reopen part-way (a checkpoint mid-segment).
fn large_footer_log() -> CrashFs {
    let fs = CrashFs::new();
    let shared: Fs = Arc::new(fs.clone());
    let groups = LARGE_FOOTER_GROUPS;
    let mut next = vec![1u64; groups as usize];
    let mut rng = Rng::new(7);
    for session in 0..2 {
        let engine =
            LogEngine::open_with_fs(shared.clone(), Path::new("/node"), large_footer_options(true))
                .unwrap();
        for step in 0..600u64 {
            let mut batch = WriteBatch::default();
            for k in 0..64 {
                let id = (step * 64 + k + session) % groups;
                let at = next[id as usize];
                // Every 97th save starts a new term inside its record.
                let term = |i: u64| 1 + i / 50 + u64::from(step % 97 == 0 && i > at);
                let es: Vec<Entry> =
                    (at..at + 2).map(|i| Entry::new(i, term(i), vec![i as u8; 8])).collect();
                let hs = HardState { term: term(at + 1), vote: 1, commit: at };
                batch.save(id, (k % 3 != 0).then_some(&hs), &es).unwrap();
                next[id as usize] = at + 2;
                if rng.chance(2) && at > 10 {
                    batch.compact(id, at - 10).unwrap();
                }
            }
            engine.write(&mut batch).unwrap();
        }
        engine.close().unwrap();
    }
    fs
}

/// Footers decoded on open's second thread give the state a replay of the records gives, for
/// every group.
#[test]
fn large_footers_decoded_ahead_replay_to_the_state_the_records_give() {
    let fs = large_footer_log();
    let shared: Fs = Arc::new(fs);
    let open = |read_footers| {
        let options = large_footer_options(read_footers);
        LogEngine::open_with_fs(shared.clone(), Path::new("/node"), options).unwrap()
    };
    let by_footer = open(true);
    let report = by_footer.recovery_report().clone();
    assert!(report.footers_decoded_ahead >= 2, "{report:?}");
    assert!(report.rows.iter().filter(|r| **r == "F1").count() >= 3, "{:?}", report.rows);
    let seen: Vec<String> = (0..LARGE_FOOTER_GROUPS).map(|g| observe(&by_footer, g)).collect();
    drop(by_footer);
    let by_records = open(false);
    assert_eq!(by_records.recovery_report().footers_decoded_ahead, 0);
    for g in 0..LARGE_FOOTER_GROUPS {
        assert_eq!(observe(&by_records, g), seen[g as usize], "group {g}");
    }
}

/// The second thread of open only decodes: every file system call is made by the opening
/// thread, and two opens of the same files make the same calls in the same order (crash tests
/// number them).
#[test]
fn open_makes_every_file_system_call_itself_in_the_same_order() {
    let fs = large_footer_log();
    let calls = |fs: CrashFs| {
        let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let opener = std::thread::current().id();
        let log = seen.clone();
        fs.set_hook(Some(Arc::new(move |event: &raftwal::io::OpEvent<'_>| {
            let here = std::thread::current().id();
            log.lock().unwrap().push(format!(
                "{:?} {:?} {}",
                event.kind,
                event.path,
                here == opener
            ));
            Ok(())
        })));
        let shared: Fs = Arc::new(fs.clone());
        let engine =
            LogEngine::open_with_fs(shared, Path::new("/node"), large_footer_options(true))
                .unwrap();
        assert!(engine.recovery_report().footers_decoded_ahead >= 2);
        fs.set_hook(None);
        drop(engine);
        seen.lock().unwrap().clone()
    };
    let first = calls(fs.fork());
    let second = calls(fs.fork());
    assert!(first.len() > 10, "{first:?}");
    assert!(first.iter().all(|call| call.ends_with("true")), "a call off the opening thread");
    assert_eq!(first, second);
}

/// [`raftwal::fuzzing::rechain`] on the files at `paths`.
fn rechain(fs: &CrashFs, paths: &[std::path::PathBuf], from: usize) {
    let mut files: Vec<Vec<u8>> = paths.iter().map(|p| fs.read_file(p).unwrap()).collect();
    raftwal::fuzzing::rechain(&mut files, from);
    for (path, bytes) in paths.iter().zip(&files) {
        fs.write_file_raw(path, bytes).unwrap();
    }
}

/// A footer whose CRC holds but whose items contradict the state (here: a run of entries that
/// does not attach to its group's log) is not believed: open starts over and reads that segment
/// whole, and its records give the state.
#[test]
fn a_footer_that_contradicts_the_state_sends_open_to_the_records() {
    use raftwal::wal::footer::{ITEM_ENTRIES, SealedFooter};
    use raftwal::wal::format::FRAME_HEADER_LEN;
    let fs = CrashFs::new();
    workload(&fs, 5);
    let reference = observe_all(&open(&fs, false));
    let segments = segment_paths(&fs);
    // The first sealed segment whose footer holds a run of entries.
    let (k, footer_at, run_at) = segments[..segments.len() - 1]
        .iter()
        .enumerate()
        .find_map(|(k, path)| {
            let bytes = fs.read_file(path).unwrap();
            let len = bytes.len();
            let offset = u32::from_le_bytes(bytes[len - 12..len - 8].try_into().unwrap()) as usize;
            let payload_len =
                u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
            let payload =
                &bytes[offset + FRAME_HEADER_LEN..offset + FRAME_HEADER_LEN + payload_len];
            SealedFooter::decode(payload.to_vec(), offset as u64).ok()?;
            // The layout of DESIGN.md §5.6: records, parts, the parts (offset, length,
            // payload), the group count, then the first group's head (id, items) and its first
            // item.
            let u32_at = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().unwrap());
            let mut at = 8;
            for _ in 0..u32_at(4) {
                at += 8 + u32_at(at + 4) as usize;
            }
            let item = at + 4 + 12;
            (payload[item] == ITEM_ENTRIES).then_some((k, offset, offset + FRAME_HEADER_LEN + item))
        })
        .expect("a sealed segment with a run of entries in its footer");
    let path = &segments[k];
    let mut bytes = fs.read_file(path).unwrap();
    // The run's first index, one byte after its type: far past any group's last index.
    let first = &mut bytes[run_at + 1..run_at + 9];
    let forged = u64::from_le_bytes(first.try_into().unwrap()) + 1_000_000;
    first.copy_from_slice(&forged.to_le_bytes());
    fs.write_file_raw(path, &bytes).unwrap();
    rechain(&fs, &segments[k..], footer_at);
    // The forged footer still decodes: what stops it is the state.
    let bytes = fs.read_file(path).unwrap();
    let payload_len =
        u32::from_le_bytes(bytes[footer_at + 4..footer_at + 8].try_into().unwrap()) as usize;
    let payload = &bytes[footer_at + FRAME_HEADER_LEN..footer_at + FRAME_HEADER_LEN + payload_len];
    assert!(SealedFooter::decode(payload.to_vec(), footer_at as u64).is_ok());

    // Inspection (what `raftwal verify` runs) tells the forged footer from its records.
    let inspection =
        raftwal::wal::inspect::inspect(&fs, Path::new("/node/wal"), &options(true)).unwrap();
    let agrees: Vec<Option<bool>> = inspection.segments.iter().map(|s| s.footer_agrees).collect();
    assert_eq!(agrees[k], Some(false), "{agrees:?}");
    assert!(agrees.iter().enumerate().all(|(j, a)| j == k || *a != Some(false)), "{agrees:?}");

    let engine = open(&fs, true);
    let rows = engine.recovery_report().rows.clone();
    assert_ne!(rows[k], "F1", "segment {k} was read whole: {rows:?}");
    assert!(rows.contains(&"F1"), "the other sealed segments keep their footers: {rows:?}");
    for g in 0..6 {
        assert_eq!(observe(&engine, g), reference[g as usize], "group {g}");
    }
}
