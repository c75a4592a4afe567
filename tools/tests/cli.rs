//! The inspection commands, run as the built `raftwal` binary on real directories written by
//! `WalStorage`, clean and damaged at offsets derived from the format's constants.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use raftwal::io::{FileSystem, RealFs};
use raftwal::wal::format::{DEFAULT_MAX_RECORD_BYTES, FRAME_HEADER_LEN, Record};
use raftwal::wal::recovery::{ScannedRecord, scan_segment};
use raftwal::{
    ConfState, Entry, HardState, LogEngine, Storage, WalOptions, WalStorage, WriteBatch,
};
use serde_json::Value;

fn options() -> WalOptions {
    WalOptions { segment_size_bytes: 4096, prepare_in_background: false, ..WalOptions::default() }
}

/// Entries 1..=60 of 100 bytes (text naming the index), saved three at a time with a hard state,
/// over several 4 KiB segments; with `snapshot`, a snapshot at 30 and compaction to 20. Closed
/// cleanly (every record then has a durable witness) when `close`, else dropped after the last
/// save.
fn build(dir: &Path, snapshot: bool, close: bool) {
    let storage = WalStorage::open(dir, options()).unwrap();
    for batch in 0..20u64 {
        let entries: Vec<Entry> = (batch * 3 + 1..=batch * 3 + 3)
            .map(|i| Entry::new(i, 2, format!("entry {i:03} ").repeat(10).into_bytes()))
            .collect();
        let hs = HardState { term: 2, vote: 1, commit: batch * 3 };
        storage.save(Some(&hs), &entries).unwrap();
    }
    if snapshot {
        let voters = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
        storage.create_snapshot(30, Some(voters), Bytes::from(vec![7u8; 5000])).unwrap();
        storage.compact(20).unwrap();
    }
    if close {
        storage.close().unwrap();
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn raftwal(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_raftwal")).args(args).output().unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn run_on(command: &str, dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec![command, dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    raftwal(&args)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    found.sort();
    found
}

fn records(segment: &Path) -> Vec<ScannedRecord> {
    scan_segment(&fs::read(segment).unwrap(), DEFAULT_MAX_RECORD_BYTES).records
}

/// Offset of the first record of the write that holds `records[at]`: recovery applies a write
/// whole or not at all, so a cut at any of its records goes back to there.
fn write_start(records: &[ScannedRecord], at: usize) -> u64 {
    let first =
        records[..at].iter().rposition(|r| !r.more).map_or(0, |last_of_write| last_of_write + 1);
    records[first].offset
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_str().unwrap().to_string()
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", run.stdout, run.stderr))
}

#[test]
fn stat_shows_segments_first_and_last_index_hard_state_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true, true);

    let run = run_on("stat", dir.path(), &[]);

    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("first index: 21\n"), "{}", run.stdout);
    assert!(run.stdout.contains("last index:  60"), "{}", run.stdout);
    assert!(run.stdout.contains("hard state: term 2 vote 1 commit 57"), "{}", run.stdout);
    assert!(run.stdout.contains("snapshot marker: index 30 term 2 voters [1, 2, 3]"));
    assert!(run.stdout.contains(&snap_file(2, 30)), "{}", run.stdout);
    for segment in segments(dir.path()) {
        assert!(run.stdout.contains(&name(&segment)), "{} not listed", name(&segment));
    }

    let stat = json(&run_on("stat", dir.path(), &["--json"]));
    assert_eq!(stat["verdict"], "clean");
    assert_eq!(stat["log"]["first_index"], 21);
    assert_eq!(stat["log"]["last_index"], 60);
    assert_eq!(stat["log"]["hard_state"]["commit"], 57);
    assert_eq!(stat["log"]["snapshot_marker"]["index"], 30);
    assert_eq!(stat["segment_count"], segments(dir.path()).len());
    assert!(stat["segment_count"].as_u64().unwrap() >= 2, "the log spans several segments");
    assert_eq!(stat["snapshots"][0]["index"], 30);
    assert_eq!(stat["snapshots"][0]["term"], 2);
    assert_eq!(stat["snapshots"][0]["data_bytes"], 5000);
    assert_eq!(stat["snapshots"][0]["marked"], true);
}

#[test]
fn a_bare_wal_directory_is_inspected_like_the_storage_directory() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true, true);

    let stat = json(&run_on("stat", &dir.path().join("wal"), &["--json"]));

    assert_eq!(stat["log"]["first_index"], 21);
    assert_eq!(stat["log"]["last_index"], 60);
    assert_eq!(stat["snapshots"].as_array().unwrap().len(), 0, "no snap/ beside a bare WAL");
}

#[test]
fn dump_json_lists_every_entry_and_the_other_records() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true, true);

    let run = run_on("dump", dir.path(), &["--json"]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<Value> = run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let entries: Vec<u64> = rows
        .iter()
        .filter(|r| r["record"] == "entry")
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    let last_60: Vec<u64> = entries.iter().copied().filter(|&i| i >= 21).collect();
    assert_eq!(last_60, (21..=60).collect::<Vec<_>>(), "every live entry once, in order");
    let e42 = rows.iter().find(|r| r["record"] == "entry" && r["index"] == 42).unwrap();
    assert_eq!(e42["term"], 2);
    assert_eq!(e42["entry_type"], "normal");
    assert_eq!(e42["size"], 100);
    assert!(e42["data"].as_str().unwrap().starts_with("\"entry 042 entry 042"), "{e42}");
    assert!(rows.iter().all(|r| r["kept"] == true));
    let kinds = |kind: &str| rows.iter().filter(|r| r["record"] == kind).count();
    // The first save's hard state (a new term and vote) sealed the first segment, which held
    // only entries 1 to 3: compacted, released, and its record with it.
    assert_eq!(kinds("hard_state"), 19);
    assert_eq!(kinds("snapshot"), 1);
    assert_eq!(kinds("compact"), 1);
    assert!(kinds("checkpoint") >= segments(dir.path()).len(), "one per segment at least");
    let marker = rows.iter().find(|r| r["record"] == "snapshot").unwrap();
    assert_eq!((marker["index"].as_u64(), marker["resets_log"].as_bool()), (Some(30), Some(false)));

    let range = run_on("dump", dir.path(), &["--json", "--from", "25", "--to", "30"]);
    let shown: Vec<u64> = range
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["record"] == "entry")
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(shown, (25..=30).collect::<Vec<_>>());

    let table = run_on("dump", dir.path(), &["--from", "42", "--to", "42"]);
    let line = table.stdout.lines().find(|l| l.contains(" entry ")).unwrap();
    assert!(line.contains(" 42 ") && line.contains("normal") && line.contains("\"entry 042"));
}

#[test]
fn verify_is_clean_on_a_closed_log() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true, true);

    let run = run_on("verify", dir.path(), &[]);

    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("WAL: clean"), "{}", run.stdout);
    assert!(run.stdout.contains("ok (marked)"), "the snapshot file is read and checked");
    let report = json(&run_on("verify", dir.path(), &["--json"]));
    assert_eq!(report["verdict"], "clean");
    assert_eq!(report["problem"], Value::Null);
}

#[test]
fn a_flipped_bit_mid_log_is_corruption_repair_refuses_and_force_truncate_drops_what_it_says() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), false, true);
    let all = segments(dir.path());
    assert!(all.len() >= 3, "the workload spans several segments: {all:?}");
    // The third record with a payload (a witness has none) of the second (sealed) segment,
    // one byte into its payload.
    let victim = &all[1];
    let in_victim = records(victim);
    let at = (0..in_victim.len()).filter(|&k| in_victim[k].record != Record::Witness).nth(2);
    let at = at.expect("the sealed segment holds three records with payloads");
    let record = in_victim[at].clone();
    let cut_at = write_start(&in_victim, at);
    let mut bytes = fs::read(victim).unwrap();
    bytes[record.offset as usize + FRAME_HEADER_LEN + 1] ^= 0x04;
    fs::write(victim, &bytes).unwrap();
    let damaged = bytes;

    let verify = run_on("verify", dir.path(), &[]);
    assert_eq!(verify.code, 1, "{}{}", verify.stdout, verify.stderr);
    let at = format!("corruption in segment {} at offset {}", name(victim), record.offset);
    assert!(verify.stdout.contains(&at), "{}", verify.stdout);
    assert!(verify.stdout.contains("checksum mismatch"), "{}", verify.stdout);
    let report = json(&run_on("verify", dir.path(), &["--json"]));
    assert_eq!(report["exit_code"], 1);
    assert_eq!(report["problem"]["segment"], name(victim));
    assert_eq!(report["problem"]["offset"], record.offset);
    assert_eq!(report["problem"]["case"], "R8");
    assert_eq!(report["problem"]["open"], "refuse");
    let last_kept = report["problem"]["last_kept_index"].as_u64().unwrap();
    assert_eq!(report["problem"]["affected_first"], last_kept + 1);
    // The damaged bytes may hold entries of any group: no upper bound can be named.
    assert_eq!(report["problem"]["affected_last"], Value::Null);
    assert_eq!(report["segments"][1]["damage"]["offset"], record.offset);
    let newest = report["segments"].as_array().unwrap().len() - 1;
    assert_eq!(report["segments"][2]["kept"], false);
    assert_eq!(report["segments"][newest]["dropped_entries_last"], 60);
    let affected = format!("entries affected: possibly from {} on", last_kept + 1);
    assert!(verify.stdout.contains(&affected), "{}", verify.stdout);

    let refused = run_on("repair", dir.path(), &[]);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(refused.stdout.contains("refused"), "{}", refused.stdout);
    assert!(refused.stdout.contains("--force-truncate"), "{}", refused.stdout);
    let refused_json = run_on("repair", dir.path(), &["--json"]);
    assert_eq!(refused_json.code, 1);
    let refusal = json(&refused_json);
    assert_eq!(
        (refusal["action"].as_str(), refusal["exit_code"].as_u64()),
        (Some("refused"), Some(1))
    );
    assert_eq!(refusal["problem"]["removed_segments"].as_array().unwrap().len(), all.len() - 2);
    assert_eq!(fs::read(victim).unwrap(), damaged, "a refused repair changes nothing");
    assert_eq!(segments(dir.path()), all);

    let forced = run_on("repair", dir.path(), &["--force-truncate"]);
    assert_eq!(forced.code, 0, "{}{}", forced.stdout, forced.stderr);
    let cut = format!("cut segment {} at offset {cut_at}", name(victim));
    assert!(forced.stdout.contains(&cut), "{}", forced.stdout);
    for later in &all[2..] {
        let removed = format!("remove segment {}", name(later));
        assert!(forced.stdout.contains(&removed), "{}", forced.stdout);
        assert!(!later.exists(), "{} is removed", name(later));
    }
    let dropped = format!("entries dropped: possibly from {} on", last_kept + 1);
    assert!(forced.stdout.contains(&dropped), "{}", forced.stdout);
    assert!(forced.stdout.contains("of which readable: "), "{}", forced.stdout);
    assert!(forced.stdout.contains(&format!("the log now ends at index {last_kept}")));
    let copy = victim.with_file_name(format!("{}.broken", name(victim)));
    assert_eq!(fs::read(&copy).unwrap(), damaged, "the damaged segment is kept as it was");

    let after = run_on("verify", dir.path(), &[]);
    assert_eq!(after.code, 0, "{}{}", after.stdout, after.stderr);
    let storage = WalStorage::open(dir.path(), options()).unwrap();
    assert_eq!(storage.last_index().unwrap(), last_kept);
}

/// Entries 1..=45 of 100 bytes, three a record, over 4 KiB segments; a snapshot at each index
/// of `snapshots`, taken once the log holds five entries past it; closed cleanly.
fn build_with_snapshots(dir: &Path, snapshots: &[u64]) {
    let storage = WalStorage::open(dir, options()).unwrap();
    let mut pending = snapshots.to_vec();
    for batch in 0..15u64 {
        let entries: Vec<Entry> = (batch * 3 + 1..=batch * 3 + 3)
            .map(|i| Entry::new(i, 2, format!("entry {i:03} ").repeat(10).into_bytes()))
            .collect();
        storage.save(None, &entries).unwrap();
        if let Some(due) = pending.iter().position(|&at| batch * 3 + 3 >= at + 5) {
            let at = pending.remove(due);
            let voters = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
            storage.create_snapshot(at, Some(voters), Bytes::from(vec![at as u8; 100])).unwrap();
        }
    }
    assert!(pending.is_empty(), "every snapshot was taken");
    storage.close().unwrap();
}

/// Flips a payload bit of the record holding entry `index`; returns its segment and offset.
fn damage_entry(dir: &Path, index: u64) -> (PathBuf, u64) {
    damage_group_entry(dir, 0, index)
}

/// Flips a payload bit of the record holding entry `index` of `group`.
fn damage_group_entry(dir: &Path, group: u64, index: u64) -> (PathBuf, u64) {
    for segment in segments(dir) {
        for record in records(&segment) {
            let holds = match &record.record {
                Record::Entries { group: g, entries, .. } => {
                    *g == group && entries.iter().any(|e| e.index == index)
                }
                _ => false,
            };
            if holds {
                let mut bytes = fs::read(&segment).unwrap();
                bytes[record.offset as usize + FRAME_HEADER_LEN + 1] ^= 0x04;
                fs::write(&segment, &bytes).unwrap();
                return (segment, record.offset);
            }
        }
    }
    panic!("no record holds entry {index} of group {group}");
}

fn snap_file(term: u64, index: u64) -> String {
    raftwal::snapshot::format::snapshot_name(0, term, index)
}

#[test]
fn force_truncate_warns_when_the_cut_drops_a_snapshot_marker() {
    let dir = tempfile::tempdir().unwrap();
    build_with_snapshots(dir.path(), &[10, 20]);
    // Entry 25 was saved after the snapshot at 10 and before the one at 20.
    damage_entry(dir.path(), 25);
    let dropped = "warning: the cut drops the snapshot marker at index 20 term 2: the log falls \
                   back to the snapshot at index 10 term 2";

    let refused = run_on("repair", dir.path(), &[]);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(refused.stdout.contains(dropped), "the plan warns too: {}", refused.stdout);

    let forced = run_on("repair", dir.path(), &["--force-truncate"]);
    assert_eq!(forced.code, 0, "{}{}", forced.stdout, forced.stderr);
    assert!(forced.stdout.contains(dropped), "{}", forced.stdout);
    assert!(forced.stdout.contains(&snap_file(2, 10)), "{}", forced.stdout);
    let orphan = format!("{} is then uncommitted: the next open", snap_file(2, 20));
    assert!(forced.stdout.contains(&orphan), "{}", forced.stdout);

    let storage = WalStorage::open(dir.path(), options()).unwrap();
    assert_eq!(storage.snapshot().unwrap().metadata.index, 10);
    assert!(!dir.path().join("snap").join(snap_file(2, 20)).exists());
}

#[test]
fn force_truncate_warns_when_no_snapshot_remains() {
    let dir = tempfile::tempdir().unwrap();
    build_with_snapshots(dir.path(), &[20]);
    damage_entry(dir.path(), 25);

    let forced = run_on("repair", dir.path(), &["--force-truncate", "--json"]);

    assert_eq!(forced.code, 0, "{}{}", forced.stdout, forced.stderr);
    let report = json(&forced);
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains(
            "warning: the cut drops the snapshot marker at index 20 term 2: no snapshot remains"
        ),
        "{message}"
    );
    assert_eq!(report["dropped_snapshot"]["index"], 20);
    assert_eq!(report["fallback_snapshot"], Value::Null);
    let storage = WalStorage::open(dir.path(), options()).unwrap();
    assert_eq!(storage.snapshot().unwrap().metadata.index, 0);
}

#[test]
fn force_truncate_after_the_last_marker_does_not_warn() {
    let dir = tempfile::tempdir().unwrap();
    build_with_snapshots(dir.path(), &[10]);
    damage_entry(dir.path(), 40);

    let forced = run_on("repair", dir.path(), &["--force-truncate"]);

    assert_eq!(forced.code, 0, "{}{}", forced.stdout, forced.stderr);
    assert!(!forced.stdout.contains("snapshot marker at"), "{}", forced.stdout);
}

#[test]
fn a_torn_tail_is_reported_and_repair_cuts_it_keeping_a_broken_copy() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), false, false);
    let last = segments(dir.path()).pop().unwrap();
    // Cut the file three bytes into the payload of its last record: a write cut short (the
    // witness its sync wrote after it goes too).
    let mut in_last = records(&last);
    assert_eq!(in_last.pop().map(|r| r.record), Some(Record::Witness));
    let torn = in_last.last().unwrap().clone();
    let write_at = write_start(&in_last, in_last.len() - 1);
    let cut_len = torn.offset + FRAME_HEADER_LEN as u64 + 3;
    fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(cut_len).unwrap();

    let verify = run_on("verify", dir.path(), &[]);
    assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
    let at = format!("torn tail in segment {} at offset {}", name(&last), torn.offset);
    assert!(verify.stdout.contains(&at), "{}", verify.stdout);
    assert!(verify.stdout.contains("open cuts it"), "{}", verify.stdout);
    let report = json(&run_on("verify", dir.path(), &["--json"]));
    assert_eq!(
        (report["verdict"].as_str(), report["problem"]["case"].as_str()),
        (Some("torn_tail"), Some("R3"))
    );
    assert_eq!(report["problem"]["open"], "cut");

    let repair = run_on("repair", dir.path(), &[]);
    assert_eq!(repair.code, 0, "{}{}", repair.stdout, repair.stderr);
    // The torn record is the last save, its entries and its hard state in one record (type
    // 9): the cut takes the whole write.
    let whole_save = matches!(torn.record, Record::Entries { hard_state: Some(_), .. });
    assert!(whole_save, "the last save wrote its entries and hard state in one record");
    let cut = format!("recovery cut {} at offset {write_at} (case R3)", name(&last));
    assert!(repair.stdout.contains(&cut), "{}", repair.stdout);
    let copy = last.with_file_name(format!("{}.broken", name(&last)));
    assert_eq!(fs::metadata(&copy).unwrap().len(), cut_len, "the copy is the torn segment");

    let after = run_on("verify", dir.path(), &[]);
    assert_eq!(after.code, 0, "{}{}", after.stdout, after.stderr);
    let stat = json(&run_on("stat", dir.path(), &["--json"]));
    assert_eq!(stat["log"]["last_index"], 57, "the torn save (entries 58..=60) was cut whole");
    assert!(stat["other_files"].as_array().unwrap().iter().any(|f| *f == name(&copy)));
}

#[test]
fn a_log_another_process_holds_is_inspected_but_not_repaired() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), false, false);
    let last = segments(dir.path()).pop().unwrap();
    let torn = records(&last).into_iter().rfind(|r| r.record != Record::Witness).unwrap();
    let cut_len = torn.offset + FRAME_HEADER_LEN as u64 + 3;
    fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(cut_len).unwrap();
    let lock_path = dir.path().join("wal").join(raftwal::wal::LOCK_FILE);
    // Other tests spawn processes concurrently; a child forked between our open and its exec
    // briefly shares the lock file's descriptor, so the lock may take a moment to come free.
    let _lock = (0..200)
        .find_map(|_| {
            let lock = RealFs.try_lock(&lock_path).unwrap();
            if lock.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            lock
        })
        .expect("the log's own handle was dropped, so the lock comes free");

    let verify = run_on("verify", dir.path(), &[]);
    let repair = run_on("repair", dir.path(), &[]);

    assert_eq!(verify.code, 3, "inspection takes no lock: {}{}", verify.stdout, verify.stderr);
    assert_eq!(repair.code, 2, "{}{}", repair.stdout, repair.stderr);
    assert!(repair.stderr.contains("open in another process"), "{}", repair.stderr);
    assert_eq!(fs::metadata(&last).unwrap().len(), cut_len, "the segment is untouched");
    let copy = last.with_file_name(format!("{}.broken", name(&last)));
    assert!(!copy.exists(), "no copy is made when the repair cannot go on");
}

#[test]
fn a_damaged_snapshot_file_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), true, true);
    let snap = dir.path().join("snap").join(snap_file(2, 30));
    let mut bytes = fs::read(&snap).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&snap, &bytes).unwrap();

    let run = run_on("verify", dir.path(), &[]);

    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("WAL: clean"), "{}", run.stdout);
    assert!(run.stdout.contains("damaged (marked)"), "{}", run.stdout);
    let report = json(&run_on("verify", dir.path(), &["--json"]));
    assert_eq!(report["snapshots"][0]["status"], "damaged");
    assert_eq!(report["verdict"], "corruption");
}

/// A footer whose CRC holds but that is not the one its segment's records make (a writer's bug,
/// or a forgery) fails `verify`: an open through footers would believe it.
#[test]
fn a_footer_unlike_its_records_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), false, true);
    let mut paths: Vec<_> = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    let mut files: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
    // The first segment is sealed: its trailer says where its footer is.
    let first = &mut files[0];
    let len = first.len();
    let at = u32::from_le_bytes(first[len - 12..len - 8].try_into().unwrap()) as usize;
    assert_eq!(&first[len - 16..len - 12], &raftwal::wal::format::TRAILER_MAGIC, "sealed");
    // The footer's record count (its payload's first bytes), one more than the truth.
    let count = at + raftwal::wal::format::FRAME_HEADER_LEN;
    first[count] += 1;
    raftwal::fuzzing::rechain(&mut files, at);
    for (path, bytes) in paths.iter().zip(&files) {
        fs::write(path, bytes).unwrap();
    }

    let run = run_on("verify", dir.path(), &[]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let name = paths[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(run.stdout.contains(&format!("{name}: its footer is not the one")), "{}", run.stdout);
    let report = json(&run_on("verify", dir.path(), &["--json"]));
    assert_eq!(report["verdict"], "corruption");
    assert_eq!(report["footers_disagreeing"][0], name.as_str());
}

#[test]
fn usage_and_io_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = run_on("verify", &dir.path().join("absent"), &[]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    let empty = run_on("stat", dir.path(), &[]);
    assert_eq!(empty.code, 2);
    assert!(empty.stderr.contains("not a raftwal directory"), "{}", empty.stderr);
    let bad_flag = run_on("dump", dir.path(), &["--no-such-flag"]);
    assert_eq!(bad_flag.code, 2, "{}", bad_flag.stderr);
}

#[test]
fn smoke_still_runs() {
    let run = raftwal(&["smoke", "--entries", "1000", "--entry-size", "16"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("read back intact"), "{}", run.stdout);
}

// ---- many groups -------------------------------------------------------------------------------

fn group_entries(group: u64, indices: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indices
        .map(|i| Entry::new(i, 2, format!("g{group} e{i:03} ").repeat(10).into_bytes()))
        .collect()
}

/// One engine over 4 KiB segments that are never rewritten. Group 1 saves entries 1..=3 first and
/// nothing after, so its old entries pin the oldest segment. Then 30 writes of three entries and a
/// hard state to group 2 (1..=90), the last 20 also to group 3 (1..=60), over several segments;
/// then group 2 snapshots at 85 and compacts to it. Closed cleanly.
fn build_groups(dir: &Path) {
    let options = WalOptions { purge_threshold_bytes: u64::MAX, ..options() };
    let engine = LogEngine::open(dir, options).unwrap();
    let one = engine.group(1).unwrap();
    one.save(Some(&HardState { term: 2, vote: 1, commit: 0 }), &group_entries(1, 1..=3)).unwrap();
    for batch in 0..30u64 {
        let mut write = WriteBatch::new();
        let hs = HardState { term: 2, vote: 1, commit: batch * 3 };
        write.save(2, Some(&hs), &group_entries(2, batch * 3 + 1..=batch * 3 + 3)).unwrap();
        if let Some(b) = batch.checked_sub(10) {
            write.save(3, Some(&hs), &group_entries(3, b * 3 + 1..=b * 3 + 3)).unwrap();
        }
        engine.write(&mut write).unwrap();
    }
    let two = engine.group(2).unwrap();
    let voters = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
    two.create_snapshot(85, Some(voters), Bytes::from(vec![2u8; 300])).unwrap();
    two.compact(85).unwrap();
    engine.close().unwrap();
}

fn dump_rows(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let run = run_on("dump", dir, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn dump_with_a_group_shows_only_that_groups_records() {
    let dir = tempfile::tempdir().unwrap();
    build_groups(dir.path());

    let rows = dump_rows(dir.path(), &["--group", "3"]);

    let entries: Vec<u64> = rows
        .iter()
        .filter(|r| r["record"] == "entry")
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(entries, (1..=60).collect::<Vec<_>>(), "group 3's entries, once each");
    for row in &rows {
        let bare_checkpoint = row["record"] == "checkpoint" && row["group"].is_null();
        assert!(row["group"] == 3 || bare_checkpoint, "another group's record: {row}");
    }
    let e7 = rows.iter().find(|r| r["record"] == "entry" && r["index"] == 7).unwrap();
    assert!(e7["data"].as_str().unwrap().starts_with("\"g3 e007"), "{e7}");
    let kinds = |rows: &[Value], kind: &str| rows.iter().filter(|r| r["record"] == kind).count();
    assert_eq!(kinds(&rows, "hard_state"), 20);
    assert_eq!(kinds(&rows, "snapshot"), 0, "group 2's snapshot is not group 3's");
    assert!(rows.iter().any(|r| r["record"] == "checkpoint" && r["group"] == 3));

    let two = dump_rows(dir.path(), &["--group", "2"]);
    assert!(two.iter().all(|r| r["group"] == 2 || r["group"].is_null()));
    assert_eq!((kinds(&two, "snapshot"), kinds(&two, "compact")), (1, 1));
    assert_eq!(kinds(&two, "entry"), 90, "compacted entries are still in the segments");

    let all = dump_rows(dir.path(), &[]);
    let mut groups: Vec<u64> = all
        .iter()
        .filter(|r| r["record"] == "entry")
        .map(|r| r["group"].as_u64().unwrap())
        .collect();
    groups.sort();
    groups.dedup();
    assert_eq!(groups, vec![1, 2, 3], "without --group, every group's entries");
    assert_eq!(kinds(&all, "entry"), 3 + 90 + 60);
    let table = run_on("dump", dir.path(), &[]);
    assert!(table.stdout.contains("   group  "), "a group column: {}", table.stdout);
}

#[test]
fn stat_lists_the_groups_and_the_one_pinning_the_oldest_segment_first() {
    let dir = tempfile::tempdir().unwrap();
    build_groups(dir.path());
    let all = segments(dir.path());
    assert!(all.len() >= 3, "the workload spans several segments: {all:?}");

    let stat = json(&run_on("stat", dir.path(), &["--json"]));

    assert_eq!(stat["group_count"], 3);
    let top = stat["top_pinning"].as_array().unwrap();
    let order: Vec<u64> = top.iter().map(|p| p["group"].as_u64().unwrap()).collect();
    assert_eq!(order[0], 1, "group 1's entries 1..=3 lie in the oldest segment: {top:?}");
    assert_eq!(order.len(), 3);
    assert_eq!(top[0]["pinned_segment"], stat["segments"][0]["sequence"]);
    assert_eq!(top[0]["pinned_bytes"], stat["segment_bytes"], "it pins every segment");
    let bytes: Vec<u64> = top.iter().map(|p| p["pinned_bytes"].as_u64().unwrap()).collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "most bytes first: {bytes:?}");
    let two = top.iter().find(|p| p["group"] == 2).unwrap();
    assert_eq!((two["first_index"].as_u64(), two["last_index"].as_u64()), (Some(86), Some(90)));
    assert!(two["pinned_bytes"].as_u64() < top[0]["pinned_bytes"].as_u64(), "{top:?}");

    let text = run_on("stat", dir.path(), &[]);
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    assert!(text.stdout.contains("groups: 3\n"), "{}", text.stdout);
    assert!(text.stdout.contains("groups pinning the most bytes:"), "{}", text.stdout);

    let group = json(&run_on("stat", dir.path(), &["--json", "--group", "2"]));
    assert_eq!(group["log"]["group"], 2);
    assert_eq!(group["log"]["first_index"], 86);
    assert_eq!(group["log"]["last_index"], 90);
    assert_eq!(group["log"]["hard_state"]["commit"], 87);
    assert_eq!(group["log"]["snapshot_marker"]["index"], 85);
    assert_eq!(group["snapshots"][0]["name"], raftwal::snapshot::format::snapshot_name(2, 2, 85));
    assert_eq!(group["snapshots"][0]["marked"], true);
    let three = json(&run_on("stat", dir.path(), &["--json", "--group", "3"]));
    assert_eq!(
        (three["log"]["first_index"].as_u64(), three["log"]["last_index"].as_u64()),
        (Some(1), Some(60))
    );
    assert_eq!(three["snapshots"].as_array().unwrap().len(), 0, "group 2's file is not listed");
}

#[test]
fn verify_with_a_group_checks_that_groups_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    build_groups(dir.path());
    let snap = dir.path().join("snap").join(raftwal::snapshot::format::snapshot_name(2, 2, 85));
    let mut bytes = fs::read(&snap).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&snap, &bytes).unwrap();

    let two = run_on("verify", dir.path(), &["--group", "2"]);
    let three = run_on("verify", dir.path(), &["--group", "3"]);

    assert_eq!(two.code, 1, "{}{}", two.stdout, two.stderr);
    assert!(two.stdout.contains("WAL: clean"), "{}", two.stdout);
    assert!(two.stdout.contains("damaged (marked)"), "{}", two.stdout);
    let report = json(&run_on("verify", dir.path(), &["--group", "2", "--json"]));
    assert_eq!(report["verdict"], "corruption");
    assert_eq!(report["snapshots"][0]["status"], "damaged");
    assert_eq!(three.code, 0, "group 3 has no snapshot: {}{}", three.stdout, three.stderr);
}

#[test]
fn repair_with_a_group_warns_about_that_groups_dropped_snapshot_marker() {
    let dir = tempfile::tempdir().unwrap();
    build_groups(dir.path());
    // Entries 40..=42 of group 2 lie segments before its snapshot marker at 85, which the cut
    // removes with them.
    let (damaged, _) = damage_group_entry(dir.path(), 2, 40);
    assert_ne!(damaged, *segments(dir.path()).last().unwrap());
    let dropped =
        "warning: the cut drops the snapshot marker at index 85 term 2: no snapshot remains";
    let file = raftwal::snapshot::format::snapshot_name(2, 2, 85);

    let default = run_on("repair", dir.path(), &[]);
    let refused = run_on("repair", dir.path(), &["--group", "2"]);

    assert_eq!(default.code, 1, "{}{}", default.stdout, default.stderr);
    assert!(!default.stdout.contains("snapshot marker at"), "group 0 has none: {}", default.stdout);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(refused.stdout.contains(dropped), "{}", refused.stdout);

    let forced = run_on("repair", dir.path(), &["--group", "2", "--force-truncate", "--json"]);
    assert_eq!(forced.code, 0, "{}{}", forced.stdout, forced.stderr);
    let report = json(&forced);
    let message = report["message"].as_str().unwrap();
    assert!(message.contains(dropped), "{message}");
    assert!(message.contains(&format!("{file} is then uncommitted")), "{message}");
    assert_eq!(report["dropped_snapshot"]["index"], 85);
    assert_eq!(report["last_index"], 39, "group 2 keeps its entries up to the damaged write");
    let engine =
        LogEngine::open(dir.path(), WalOptions { purge_threshold_bytes: u64::MAX, ..options() })
            .unwrap();
    assert_eq!(engine.group(2).unwrap().snapshot().unwrap().metadata.index, 0);
    assert!(!dir.path().join("snap").join(&file).exists(), "open removes the orphan");
}
