//! `check_snapshot_recovery`: WalStorage's open over a snapshot directory whose files (and the
//! log's marker) say anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};

use crate::contract::Storage;
use crate::error::Error;
use crate::fuzzing::ops::pattern;
use crate::io::{CrashFs, Fs};
use crate::options::{SyncPolicy, WalOptions};
use crate::snapshot::SnapshotStore;
use crate::snapshot::format::{
    self as snap_format, BROKEN_SUFFIX, Compression, SnapshotHeader, TEMP_SUFFIX,
};
use crate::storage::WalStorage;
use crate::types::{ConfState, Entry, Snapshot, SnapshotMetadata};

/// Setup steps of one input that run; the rest are ignored.
const MAX_SETUP: usize = 10;
/// File edits of one input that run; the rest are ignored.
const MAX_EDITS: usize = 6;
/// Snapshot data is below this many bytes.
const DATA_BYTES: usize = 512;
/// Bytes a written or forged file holds at most.
const FILE_BYTES: usize = 2048;
/// Where the storage lives on the simulated file system.
const ROOT: &str = "/node";
const SNAP: &str = "/node/snap";

/// How the log and its snapshots are built before the files are tampered with.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum SetupOp {
    /// Appends `count % 8 + 1` entries after the last, in the last term or the next.
    Save {
        /// Number of entries (modulo 8, plus one).
        count: u8,
        /// Whether they start a new term.
        new_term: bool,
    },
    /// Creates a snapshot at `last - back % 6`, with a new membership when `voters` is given.
    Create {
        /// Distance below the last index.
        back: u8,
        /// New membership size (modulo 5, plus one), or keep the current one.
        voters: Option<u8>,
        /// Data size seed.
        size: u16,
    },
    /// Applies a leader's snapshot at `last + ahead % 6 - 2`.
    Apply {
        /// Offset from the last index.
        ahead: u8,
        /// Term bump over the last term (modulo 3).
        term_bump: u8,
        /// Data size seed.
        size: u16,
    },
    /// Compacts at `last - back % 6`.
    Compact {
        /// Distance below the last index.
        back: u8,
    },
    /// Writes a marker (resetting the log) with no snapshot file behind it, as a log written by
    /// a damaged or foreign store would hold.
    ForgeMarker {
        /// The marker's index.
        index: u8,
        /// The marker's term.
        term: u8,
    },
}

/// A snapshot-directory file an edit works on.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The `k % n`-th of the `n` files in the directory (nothing if it is empty).
    Existing(u8),
    /// The file the log's marker names.
    Marked,
    /// A file named for `(term, index)`: a finished snapshot, a temp file or a broken one.
    Named {
        /// The term in the name.
        term: u8,
        /// The index in the name.
        index: u8,
        /// 0: `.snap`, 1: `.snap.tmp`, 2: `.snap.broken`, else an unrelated name.
        suffix: u8,
    },
}

/// A change to the snapshot directory while the storage is closed.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// XORs the byte at `at % len` with `xor`.
    Flip {
        /// The file.
        place: Place,
        /// Position (modulo the file's length).
        at: u16,
        /// The bits flipped (0 leaves the byte alone).
        xor: u8,
    },
    /// Cuts the file to `keep % (len + 1)` bytes.
    Truncate {
        /// The file.
        place: Place,
        /// Bytes kept (modulo the length plus one).
        keep: u16,
    },
    /// Replaces (or creates) the file with arbitrary bytes.
    Write {
        /// The file.
        place: Place,
        /// Its new contents (at most [`FILE_BYTES`] are written).
        bytes: Vec<u8>,
    },
    /// Writes a file whose header and body CRCs hold but whose fields say anything: lengths,
    /// compression and metadata free, the body arbitrary.
    Forge {
        /// The file.
        place: Place,
        /// The metadata's index.
        index: u8,
        /// The metadata's term.
        term: u8,
        /// The data length the header claims.
        data_len: u16,
        /// zstd instead of stored as is.
        zstd: bool,
        /// The stored body (at most [`FILE_BYTES`]).
        body: Vec<u8>,
    },
    /// Copies one file's bytes over another (a snapshot under another snapshot's name).
    Copy {
        /// Copied from.
        from: Place,
        /// Copied to.
        to: Place,
    },
    /// Removes the file.
    Remove {
        /// The file.
        place: Place,
    },
}

/// The input of [`check_snapshot_recovery`].
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecoveryCase {
    /// Snapshot data compressed with zstd (level 1) instead of stored as is.
    pub zstd: bool,
    /// The storage is closed cleanly (instead of dropped) before the files are edited.
    pub close: bool,
    /// How the log and its snapshots are built; the first [`MAX_SETUP`] run.
    pub setup: Vec<SetupOp>,
    /// What is done to the snapshot directory; the first [`MAX_EDITS`] run.
    pub edits: Vec<Edit>,
}

impl SnapshotRecoveryCase {
    /// Decodes a fuzz input as libFuzzer's `fuzz_target!` does (`arbitrary_take_rest`).
    pub fn from_fuzz_input(bytes: &[u8]) -> Option<SnapshotRecoveryCase> {
        SnapshotRecoveryCase::arbitrary_take_rest(Unstructured::new(bytes)).ok()
    }
}

fn options(zstd: bool) -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: 1024,
        sync_policy: SyncPolicy::Always,
        prepare_in_background: false,
        cache_bytes: 512,
        snapshot_retention: 2,
        snapshot_compression_level: i32::from(zstd),
        ..WalOptions::default()
    }
}

fn open(fs: &CrashFs, options: &WalOptions) -> crate::Result<WalStorage> {
    let shared: Fs = Arc::new(fs.clone());
    WalStorage::open_with_fs(shared, Path::new(ROOT), options.clone())
}

fn voters(count: u8) -> ConfState {
    ConfState { voters: (1..=u64::from(count % 5) + 1).collect(), ..ConfState::default() }
}

/// Runs one setup step; refusals (out-of-date snapshots, compacted indices) are part of the
/// game and ignored, anything else is a finding.
fn run_setup(storage: &WalStorage, op: &SetupOp, step: u64) {
    let last = storage.last_index().expect("answers");
    let last_term = storage.term(last).expect("the last index has a term");
    let result = match *op {
        SetupOp::Save { count, new_term } => {
            let term = last_term + u64::from(new_term);
            let entries: Vec<Entry> = (last + 1..=last + 1 + u64::from(count % 8))
                .map(|i| Entry::new(i, term, pattern(i ^ (step << 20), (i as usize * 13) % 40)))
                .collect();
            storage.save(None, &entries)
        }
        SetupOp::Create { back, voters: v, size } => storage
            .create_snapshot(
                last.saturating_sub(u64::from(back % 6)),
                v.map(voters),
                pattern(step, usize::from(size) % DATA_BYTES),
            )
            .map(|_| ()),
        SetupOp::Apply { ahead, term_bump, size } => storage.apply_snapshot(Snapshot {
            metadata: SnapshotMetadata {
                index: (last + u64::from(ahead % 6)).saturating_sub(2),
                term: last_term + u64::from(term_bump % 3),
                conf_state: voters(term_bump),
            },
            data: pattern(step + 1000, usize::from(size) % DATA_BYTES),
        }),
        SetupOp::Compact { back } => storage.compact(last.saturating_sub(u64::from(back % 6))),
        SetupOp::ForgeMarker { index, term } => storage.wal().save_snapshot(
            &SnapshotMetadata {
                index: u64::from(index),
                term: u64::from(term),
                conf_state: voters(index),
            },
            true,
        ),
    };
    match result {
        Ok(())
        | Err(
            Error::Compacted
            | Error::SnapshotOutOfDate
            | Error::Unavailable
            | Error::ContractViolation(_),
        ) => {}
        Err(e) => panic!("setup step {step}: {op:?} failed with {e}"),
    }
}

/// The files of the snapshot directory, sorted.
fn listing(fs: &CrashFs) -> Vec<String> {
    let mut names: Vec<String> = fs
        .list_all()
        .into_iter()
        .filter(|p| p.parent() == Some(Path::new(SNAP)))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

fn resolve(fs: &CrashFs, place: Place, marked: &str) -> Option<PathBuf> {
    let name = match place {
        Place::Existing(k) => {
            let names = listing(fs);
            if names.is_empty() {
                return None;
            }
            names[usize::from(k) % names.len()].clone()
        }
        Place::Marked => marked.to_string(),
        Place::Named { term, index, suffix } => {
            let (term, index) = (u64::from(term), u64::from(index));
            match suffix % 4 {
                0 => snap_format::snapshot_name(0, term, index),
                1 => snap_format::temp_name(0, term, index, u64::from(suffix)),
                2 => format!("{}{BROKEN_SUFFIX}", snap_format::snapshot_name(0, term, index)),
                _ => format!("{term}-{index}.other"),
            }
        }
    };
    Some(Path::new(SNAP).join(name))
}

/// A snapshot file whose CRCs hold, with whatever header fields and body the edit gives.
fn forged(index: u8, term: u8, data_len: u16, zstd: bool, body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(FILE_BYTES)];
    let header = SnapshotHeader {
        compression: if zstd { Compression::Zstd } else { Compression::None },
        data_len: u64::from(data_len),
        stored_len: body.len() as u64,
        body_crc: crc32fast::hash(body),
        metadata: SnapshotMetadata {
            index: u64::from(index),
            term: u64::from(term),
            conf_state: voters(term),
        },
    };
    let mut bytes = header.encode();
    bytes.extend_from_slice(body);
    bytes
}

fn apply_edit(fs: &CrashFs, edit: &Edit, marked: &str) {
    let place = |p| resolve(fs, p, marked);
    let write = |path: &Path, bytes: &[u8]| {
        fs.write_file_raw(path, bytes).expect("CrashFs takes any small file");
    };
    match edit {
        Edit::Flip { place: p, at, xor } => {
            if let Some(path) = place(*p)
                && let Some(mut bytes) = fs.read_file(&path)
                && !bytes.is_empty()
            {
                let at = usize::from(*at) % bytes.len();
                bytes[at] ^= xor;
                write(&path, &bytes);
            }
        }
        Edit::Truncate { place: p, keep } => {
            if let Some(path) = place(*p)
                && let Some(mut bytes) = fs.read_file(&path)
            {
                bytes.truncate(usize::from(*keep) % (bytes.len() + 1));
                write(&path, &bytes);
            }
        }
        Edit::Write { place: p, bytes } => {
            if let Some(path) = place(*p) {
                write(&path, &bytes[..bytes.len().min(FILE_BYTES)]);
            }
        }
        Edit::Forge { place: p, index, term, data_len, zstd, body } => {
            if let Some(path) = place(*p) {
                write(&path, &forged(*index, *term, *data_len, *zstd, body));
            }
        }
        Edit::Copy { from, to } => {
            if let (Some(from), Some(to)) = (place(*from), place(*to))
                && let Some(bytes) = fs.read_file(&from)
            {
                write(&to, &bytes);
            }
        }
        Edit::Remove { place: p } => {
            if let Some(path) = place(*p) {
                let shared: Fs = Arc::new(fs.clone());
                // A missing file is fine: the edit then does nothing.
                let _ = shared.remove_file(&path);
                let _ = shared.sync_dir(Path::new(SNAP));
            }
        }
    }
}

/// What a recovered storage answers about its snapshot, checked to be consistent: the marked
/// file (if a snapshot was ever committed) verifies with the marker's metadata, and the
/// storage's snapshot is exactly that file's contents.
fn recovered_snapshot(fs: &CrashFs, storage: &WalStorage) -> Snapshot {
    let marker = storage.wal().snapshot_metadata();
    let snapshot = storage
        .snapshot()
        .unwrap_or_else(|e| panic!("a recovered storage's snapshot ({marker:?}) reads: {e}"));
    assert_eq!(snapshot.metadata, marker, "the snapshot is the one the marker names");
    let name = snap_format::snapshot_name(0, marker.term, marker.index);
    let store = SnapshotStore::open_existing(Arc::new(fs.clone()), Path::new(SNAP), 0);
    match store.read_all(&name) {
        Ok(file) => assert_eq!(file, snapshot, "the snapshot is the marked file's contents"),
        Err(e) => {
            assert!(
                marker.index == 0 && snapshot.data.is_empty(),
                "the marked file {name} does not read ({e}) though the storage has a snapshot"
            );
        }
    }
    snapshot
}

/// Builds a log with snapshots through WalStorage (`case.setup`), closes it, tampers with the
/// snapshot directory (`case.edits`: bit flips, cuts, arbitrary bytes, files with valid CRCs but
/// lying headers, copies under other names, removals, temp and broken files) and opens again.
/// Opening must not panic and must either refuse with `Corruption` or recover a storage whose
/// snapshot is the marked file, verified, with the marker's metadata; the marker never moves
/// forward; a marked file left intact is recovered as it was; and a second open finds the same.
pub fn check_snapshot_recovery(case: &SnapshotRecoveryCase) {
    let options = options(case.zstd);
    let fs = CrashFs::new();
    let storage = open(&fs, &options).expect("a fresh storage opens");
    for (step, op) in case.setup.iter().take(MAX_SETUP).enumerate() {
        run_setup(&storage, op, step as u64);
    }
    let marker = storage.wal().snapshot_metadata();
    let state = (storage.first_index().ok(), storage.last_index().ok());
    if case.close {
        storage.close().expect("a healthy storage closes");
    } else {
        drop(storage);
    }
    let marked = snap_format::snapshot_name(0, marker.term, marker.index);
    let marked_path = Path::new(SNAP).join(&marked);
    let marked_before = fs.read_file(&marked_path);
    // Whether the marked file holds the marker's snapshot (a forged marker may name a file
    // written for other metadata, or none).
    let store = SnapshotStore::open_existing(Arc::new(fs.clone()), Path::new(SNAP), 0);
    let sound = match &marked_before {
        Some(_) => store.verify(&marked).ok() == Some(marker.clone()),
        None => marker == SnapshotMetadata::default(),
    };
    for edit in case.edits.iter().take(MAX_EDITS) {
        apply_edit(&fs, edit, &marked);
    }
    // The marked snapshot is as raftwal wrote it (or, with no snapshot ever committed, as
    // absent as it was): recovery has no reason to refuse or to fall back.
    let intact = sound && fs.read_file(&marked_path) == marked_before;

    let storage = match open(&fs, &options) {
        Ok(storage) => storage,
        Err(Error::Corruption { .. }) if !intact => return,
        Err(e) => panic!("open failed with {e} (marked snapshot intact: {intact})"),
    };
    let recovered = storage.wal().snapshot_metadata();
    assert!(
        recovered.index <= marker.index,
        "recovery moved the marker forward, from {marker:?} to {recovered:?}"
    );
    let snapshot = recovered_snapshot(&fs, &storage);
    if intact {
        assert_eq!(recovered, marker, "an intact marked snapshot is the one recovered");
        assert_eq!(
            (storage.first_index().ok(), storage.last_index().ok()),
            state,
            "the log is as it was"
        );
    }
    let again = (storage.first_index().ok(), storage.last_index().ok(), snapshot);
    drop(storage);
    let storage = open(&fs, &options).unwrap_or_else(|e| panic!("a recovered store reopens: {e}"));
    let snapshot = recovered_snapshot(&fs, &storage);
    assert_eq!(
        (storage.first_index().ok(), storage.last_index().ok(), snapshot),
        again,
        "a second open finds what the first recovered"
    );
    // Leftover temp files are gone after open.
    assert!(
        listing(&fs).iter().all(|name| !name.ends_with(TEMP_SUFFIX)),
        "open removes temp files: {:?}",
        listing(&fs)
    );
}
