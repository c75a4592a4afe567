//! Real processes killed with SIGKILL: the test binary re-runs one of these tests in a child
//! mode that appends to a WalStorage on the real file system with `SyncPolicy::Always` and
//! reports each acknowledged index on a pipe; the parent kills it at a random moment, reopens
//! the directory and checks that everything acknowledged is there, contiguous and intact.
//!
//! 50 rounds per test by default; `RAFTWAL_KILL_ROUNDS=n` runs more (or fewer).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftwal::rng::Rng;
use raftwal::{Entry, HardState, Storage, SyncPolicy, WalOptions, WalStorage};

/// Set in a child: the storage directory it appends to.
const CHILD_DIR_ENV: &str = "RAFTWAL_KILL_CHILD";
/// Rounds per test, when set.
const ROUNDS_ENV: &str = "RAFTWAL_KILL_ROUNDS";
const DEFAULT_ROUNDS: u64 = 50;
/// A child stops by itself after this many saves (it is normally killed long before).
const CHILD_MAX_SAVES: u64 = 1_000_000;
/// Acknowledgements waited for before the kill, at most.
const MAX_ACKS_BEFORE_KILL: u64 = 200;
/// How long a round waits for acknowledgements before it kills the child anyway.
const ROUND_DEADLINE: Duration = Duration::from_secs(20);
/// Snapshot variant: a snapshot and a compaction every this many entries.
const SNAPSHOT_EVERY: u64 = 25;

fn options() -> WalOptions {
    WalOptions {
        // Small segments: the kills land in rollovers and segment releases too.
        segment_size_bytes: 16 << 10,
        sync_policy: SyncPolicy::Always,
        snapshot_compression_level: 1,
        ..WalOptions::default()
    }
}

/// The term every entry `index` is written with (terms only grow along the log).
fn term_of(index: u64) -> u64 {
    1 + index / 400
}

/// The payload of entry `index`, the same in every process, so a torn or misplaced byte shows.
fn payload(index: u64) -> Bytes {
    Bytes::from(format!("entry {index};").repeat(1 + (index % 13) as usize))
}

fn snapshot_data(index: u64) -> Bytes {
    Bytes::from(format!("state machine at {index}|").repeat(1 + (index % 5) as usize))
}

/// The child: appends entries one by one after whatever the directory holds, printing
/// `ack <index>` once each save returns; with `snapshots`, also creates a snapshot and compacts
/// up to it regularly (printing `snap <index>` and `compact <index>`).
fn child(dir: &Path, snapshots: bool) {
    // The parent's own check of the previous round held the lock; a process it forked at that
    // moment (for the other kill test) shares the descriptor until it execs, so wait a bounded
    // time for the lock to come free.
    let storage = (0..500)
        .find_map(|_| match WalStorage::open(dir, options()) {
            Err(raftwal::Error::Locked) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            }
            other => Some(other.expect("the child opens the storage")),
        })
        .expect("the lock comes free once the parent's check is closed");
    let mut out = std::io::stdout().lock();
    let first = storage.last_index().unwrap() + 1;
    for next in first..first + CHILD_MAX_SAVES {
        let entry = Entry::new(next, term_of(next), payload(next));
        let hs = HardState { term: term_of(next), vote: 1, commit: next.saturating_sub(3) };
        storage.save(Some(&hs), &[entry]).expect("save");
        writeln!(out, "ack {next}").and_then(|()| out.flush()).expect("the pipe is open");
        if snapshots && next.is_multiple_of(SNAPSHOT_EVERY) {
            let at = next - 5;
            if storage.snapshot().unwrap().metadata.index < at {
                storage.create_snapshot(at, None, snapshot_data(at)).expect("snapshot");
                writeln!(out, "snap {at}").and_then(|()| out.flush()).expect("pipe");
            }
            let compact_to = at - SNAPSHOT_EVERY / 2;
            if compact_to >= storage.first_index().unwrap() {
                storage.compact(compact_to).expect("compact");
                writeln!(out, "compact {compact_to}").and_then(|()| out.flush()).expect("pipe");
            }
        }
    }
}

/// Kills (SIGKILL) and reaps the child when dropped, whatever happened in between.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a child acknowledged before it was killed.
#[derive(Default)]
struct Acked {
    entry: u64,
    snapshot: u64,
    compact: u64,
    lines: u64,
}

impl Acked {
    fn record(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(index)) = (words.next(), words.next()) else {
            return;
        };
        let Ok(index) = index.parse::<u64>() else {
            return;
        };
        match kind {
            "ack" => self.entry = self.entry.max(index),
            "snap" => self.snapshot = self.snapshot.max(index),
            "compact" => self.compact = self.compact.max(index),
            _ => return,
        }
        self.lines += 1;
    }
}

/// One round: start a child on `dir`, kill it after a random number of acknowledgements (and a
/// random short pause), and return what it acknowledged.
fn kill_round(test_name: &str, dir: &Path, rng: &mut Rng) -> Acked {
    let exe = std::env::current_exe().expect("the test binary's path");
    let child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the child starts");
    let mut child = Reaped(child);
    let stdout = child.0.stdout.take().expect("piped");
    let (lines_tx, lines) = mpsc::channel();
    // Reads until the pipe closes, which the kill guarantees; joined below.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wanted = 1 + rng.below(MAX_ACKS_BEFORE_KILL);
    let mut acked = Acked::default();
    let deadline = Instant::now() + ROUND_DEADLINE;
    // Bounded by `wanted` lines and by the deadline.
    while acked.lines < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => acked.record(&line),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_micros(rng.below(3000)));
    let exited = child.0.try_wait().expect("the child's status");
    assert!(
        exited.is_none(),
        "the child stopped by itself ({exited:?}) after {} lines",
        acked.lines
    );
    child.0.kill().expect("SIGKILL is delivered");
    child.0.wait().expect("the child is reaped");
    reader.join().expect("the reader ends with the pipe");
    // Lines written before the kill are acknowledgements too, even if still in the pipe.
    for line in lines.try_iter() {
        acked.record(&line);
    }
    acked
}

/// Reopens `dir` and checks it against what was acknowledged: every acknowledged entry, snapshot
/// and compaction present; the log contiguous from the first index to the last; every entry's
/// term and bytes exactly as written. Returns the number of entries checked.
fn check_recovered(dir: &Path, acked: &Acked, round: u64) -> u64 {
    let storage = WalStorage::open(dir, options())
        .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
    let (first, last) = (storage.first_index().unwrap(), storage.last_index().unwrap());
    assert!(
        last >= acked.entry,
        "round {round}: entry {} acknowledged, log ends at {last}",
        acked.entry
    );
    assert!(
        first > acked.compact,
        "round {round}: compaction to {} acknowledged, first index {first}",
        acked.compact
    );
    let snapshot = storage.snapshot().unwrap();
    assert!(
        snapshot.metadata.index >= acked.snapshot,
        "round {round}: snapshot {} acknowledged, the storage has {}",
        acked.snapshot,
        snapshot.metadata.index
    );
    if snapshot.metadata.index > 0 {
        assert_eq!(
            snapshot.data,
            snapshot_data(snapshot.metadata.index),
            "round {round}: snapshot data"
        );
        assert_eq!(snapshot.metadata.term, term_of(snapshot.metadata.index));
    }
    assert_eq!(storage.term(first - 1).unwrap(), if first == 1 { 0 } else { term_of(first - 1) });
    let entries = if last >= first {
        storage.entries(first, last + 1, u64::MAX).unwrap()
    } else {
        Vec::new()
    };
    assert_eq!(entries.len() as u64, last + 1 - first, "round {round}: the log is contiguous");
    for (k, entry) in entries.iter().enumerate() {
        let index = first + k as u64;
        assert_eq!(entry.index, index, "round {round}: entries in order");
        assert_eq!(entry.term, term_of(index), "round {round}: term of {index}");
        assert_eq!(entry.data, payload(index), "round {round}: bytes of entry {index}");
    }
    let hs = storage.initial_state().unwrap().hard_state;
    assert!(hs.term <= term_of(last), "round {round}: hard state {hs:?} beyond the log");
    entries.len() as u64
}

fn rounds() -> u64 {
    std::env::var(ROUNDS_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_ROUNDS)
}

/// The parent's side of a test, or the child's when this process was started as one.
fn run(test_name: &str, snapshots: bool, seed: u64) {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        child(Path::new(&dir), snapshots);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let (mut acked_total, mut checked_total) = (0u64, 0u64);
    let rounds = rounds();
    for round in 0..rounds {
        let acked = kill_round(test_name, tmp.path(), &mut rng);
        acked_total += acked.lines;
        checked_total += check_recovered(tmp.path(), &acked, round);
    }
    assert!(acked_total > 0, "the children acknowledged writes before they were killed");
    println!(
        "kill rounds ({}): {rounds} SIGKILLs, {acked_total} acknowledgements, {checked_total} \
         recovered entries checked, nothing acknowledged lost (seed {seed:#x})",
        if snapshots { "appends, snapshots, compactions" } else { "appends" }
    );
}

#[test]
fn sigkill_during_appends_loses_nothing_acknowledged() {
    run("kill::sigkill_during_appends_loses_nothing_acknowledged", false, 0x5151_0001);
}

#[test]
fn sigkill_during_snapshots_and_segment_release_loses_nothing_acknowledged() {
    run(
        "kill::sigkill_during_snapshots_and_segment_release_loses_nothing_acknowledged",
        true,
        0x5151_0002,
    );
}
