//! `check_repair`: a log built from a seed, damaged by bit flips the input places, opened in
//! `RecoveryMode::Repairable`.
//!
//! Input: 8 bytes of seed (the workload: entries, term and vote changes, compactions, a clean
//! close or not), then up to [`MAX_FLIPS`] flips of 5 bytes each (which segment file, which bit
//! of its written bytes). Whatever the flips, open never panics and answers `Ok` or
//! `Corruption`. With one flip, into a closed log or one whose process stopped without closing
//! it (every byte written reaches the disk; a sync's witness proves its last write durable), an
//! `Ok` open keeps the exact term and vote, holds only entries that were written (or refuses
//! to read a damaged one), keeps its commit index within the log, and reports a repair state
//! that covers every entry it no longer holds.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use crate::error::Error;
use crate::io::{CrashFs, Fs};
use crate::options::{RecoveryMode, SyncPolicy, WalOptions};
use crate::rng::Rng;
use crate::types::{Entry, HardState};
use crate::wal::Wal;
use crate::wal::format;

/// Flips read from one input; the rest is ignored.
pub const MAX_FLIPS: usize = 4;
const FLIP_LEN: usize = 5;
const ROOT: &str = "/fuzz/wal";
/// Logs kept built, by seed (each a few segments of 4 KiB).
const BUILT_LOGS_KEPT: usize = 16;

thread_local! {
    /// The logs built lately, newest last, each with what its workload wrote. Building one is
    /// most of a run, and the fuzzer tries many flips on one seed in a row; a log is a function
    /// of its seed, so a copy of the one kept is the log building it again would give.
    static BUILT_LOGS: RefCell<VecDeque<(u64, CrashFs, Rc<Built>)>> =
        const { RefCell::new(VecDeque::new()) };
}

fn options(mode: RecoveryMode) -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: 1024,
        sync_policy: SyncPolicy::Always,
        prepare_in_background: false,
        cache_bytes: 512,
        recovery_mode: mode,
        ..WalOptions::default()
    }
}

fn open(fs: &CrashFs, mode: RecoveryMode) -> crate::Result<Wal> {
    let shared: Fs = Arc::new(fs.clone());
    Wal::open(shared, Path::new(ROOT), options(mode))
}

/// What the workload left: the entries as written (index 1 first) and the hard state.
struct Built {
    entries: Vec<Entry>,
    hard_state: HardState,
}

/// Builds a log from `seed`: 10 to 49 saves of one or two entries, a term and vote change now
/// and then (each seals its segment), compactions now and then.
fn build(fs: &CrashFs, seed: u64) -> Built {
    let mut rng = Rng::new(seed);
    let wal = open(fs, RecoveryMode::Strict).expect("a fresh log opens");
    let mut hs = HardState { term: 1, vote: 1, commit: 0 };
    let mut entries: Vec<Entry> = Vec::new();
    let mut first = 1;
    let saves = 10 + rng.below(40);
    // Bounded: at most 49 saves.
    for _ in 0..saves {
        if rng.below(8) == 0 {
            hs = HardState { term: hs.term + 1, vote: 1 + rng.below(3), commit: hs.commit };
        }
        let count = 1 + rng.below(2);
        let batch: Vec<Entry> = (0..count)
            .map(|k| {
                let index = entries.len() as u64 + 1 + k;
                let len = 20 + rng.below(300) as usize;
                Entry::new(index, hs.term, vec![(index as u8).wrapping_mul(31); len])
            })
            .collect();
        hs.commit = (entries.len() as u64).saturating_sub(1);
        wal.save(Some(&hs), &batch).expect("a save on a healthy log");
        entries.extend(batch);
        if rng.below(10) == 0 && hs.commit > first {
            first = hs.commit;
            wal.compact(first).expect("a compaction within the log");
            first += 1;
        }
    }
    // Closed cleanly, or dropped as a stopped process leaves it.
    if rng.below(2) == 0 {
        wal.close().expect("a clean close");
    }
    Built { entries, hard_state: hs }
}

/// The log `seed` builds, on a file system of its own, from the logs kept or built now.
fn built_log(seed: u64) -> (CrashFs, Rc<Built>) {
    BUILT_LOGS.with(|kept| {
        let mut kept = kept.borrow_mut();
        if let Some((_, fs, built)) = kept.iter().find(|(s, _, _)| *s == seed) {
            return (fs.fork(), Rc::clone(built));
        }
        let fs = CrashFs::new();
        let built = Rc::new(build(&fs, seed));
        if kept.len() == BUILT_LOGS_KEPT {
            kept.pop_front();
        }
        kept.push_back((seed, fs.fork(), Rc::clone(&built)));
        (fs, built)
    })
}

/// Runs the check on a fuzz input (see the module documentation).
pub fn check_repair(input: &[u8]) {
    let Some((seed, flips)) = input.split_first_chunk::<8>() else {
        return;
    };
    let (fs, built) = built_log(u64::from_le_bytes(*seed));
    let shared: Fs = Arc::new(fs.clone());
    let dir = Path::new(ROOT);
    let mut names: Vec<String> = shared
        .list(dir)
        .expect("the log directory lists")
        .into_iter()
        .filter(|n| format::parse_segment_name(n).is_some())
        .collect();
    names.sort();
    let flips: Vec<&[u8]> = flips.chunks_exact(FLIP_LEN).take(MAX_FLIPS).collect();
    for flip in &flips {
        let name = &names[flip[0] as usize % names.len()];
        let path = dir.join(name);
        let bytes = fs.read_file(&path).expect("a listed segment reads");
        // Within the written bytes (up to 63 past the last non-zero one; the first 64 of a file
        // of zeros), where damage can matter.
        let written = match crate::wal::recovery::written_end(&bytes) {
            0 => 64,
            end => end + 63,
        }
        .min(bytes.len());
        let at = u32::from_le_bytes(flip[1..5].try_into().expect("4 bytes"));
        fs.flip_bit(&path, u64::from(at) % (written as u64 * 8)).expect("a bit flips");
    }
    let wal = match open(&fs, RecoveryMode::Repairable) {
        Ok(wal) => wal,
        Err(Error::Corruption { .. }) => return,
        Err(e) => panic!("a Repairable open failed with {e}, not Corruption"),
    };
    if flips.len() != 1 {
        // Several flips can take every copy of something: only the absence of a panic is
        // promised there. Reads must not panic.
        let (first, last) = (wal.first_index(), wal.last_index());
        let _ = wal.entries(first, last + 1, u64::MAX);
        return;
    }
    let hs = wal.hard_state();
    let want = built.hard_state;
    assert_eq!((hs.term, hs.vote), (want.term, want.vote), "term and vote survive one flip");
    let (first, last) = (wal.first_index(), wal.last_index());
    assert!(hs.commit <= last, "commit {} beyond the log's last index {last}", hs.commit);
    // Bounded by the entries written.
    for index in first..=last {
        match wal.entries(index, index + 1, u64::MAX) {
            Ok(got) => {
                let written = &built.entries[index as usize - 1];
                assert_eq!(&got[0], written, "entry {index} comes back as written");
            }
            Err(Error::Corruption { .. }) => {}
            Err(e) => panic!("reading entry {index}: {e}"),
        }
    }
    let written_last = built.entries.len() as u64;
    if last < written_last {
        let state = wal.repair_state();
        assert!(
            state.is_some_and(|s| s.index >= written_last && s.term >= want.term),
            "the log ends at {last} of {written_last} and repairs {state:?}"
        );
    }
}
