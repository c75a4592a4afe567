//! Decoding arbitrary bytes: as WAL segment files, and as a snapshot file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{Error, Result};
use crate::io::{CrashFs, Fs};
use crate::options::{SyncPolicy, WalOptions};
use crate::snapshot::SnapshotStore;
use crate::snapshot::format::{self as snap_format, SNAPSHOT_HEADER_LEN};
use crate::types::Entry;
use crate::wal::Wal;
use crate::wal::format::{self, SEGMENT_HEADER_LEN, SEGMENT_MAGIC};

/// The record limit the decode checks open logs with: a length field beyond it must be refused
/// as corruption, never followed by an allocation of that size.
pub const DECODE_MAX_RECORD_BYTES: u32 = 1024;
/// Segment files a decoded directory holds at most.
const MAX_SEGMENTS: usize = 3;
/// Snapshot data read through at most (a forged length or a zstd bomb must not run for long).
const MAX_SNAPSHOT_DATA_BYTES: u64 = 16 << 20;

fn decode_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: DECODE_MAX_RECORD_BYTES,
        sync_policy: SyncPolicy::Always,
        prepare_in_background: false,
        cache_bytes: 0,
        ..WalOptions::default()
    }
}

fn wal_dir() -> PathBuf {
    PathBuf::from("/node/wal")
}

/// Splits `bytes` into at most three segment files at the segment magic, so that a
/// concatenation of real segments decodes as the directory it came from; each file is named
/// after the sequence and first index its header claims (checked or not), so that names and
/// headers agree unless the bytes say otherwise.
fn split_segments(bytes: &[u8]) -> Vec<(String, &[u8])> {
    let mut starts = vec![0];
    let mut at = 1;
    // Compared as one integer: a slice comparison per offset is a memcmp call, which the
    // fuzzer's hooks make the most expensive part of a run.
    let magic = u64::from_le_bytes(SEGMENT_MAGIC);
    // Bounded by the input's length.
    while starts.len() < MAX_SEGMENTS && at + SEGMENT_MAGIC.len() <= bytes.len() {
        if LittleEndian::read_u64(&bytes[at..]) == magic {
            starts.push(at);
        }
        at += 1;
    }
    starts.push(bytes.len());
    starts
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let file = &bytes[w[0]..w[1]];
            let claimed = file.get(..SEGMENT_HEADER_LEN).map(|h| {
                (
                    LittleEndian::read_u64(&h[format::SEQUENCE_OFFSET..]),
                    LittleEndian::read_u64(&h[format::FIRST_RECORD_OFFSET..]),
                )
            });
            let (sequence, first) = claimed.unwrap_or((i as u64 + 1, 1));
            (format::segment_name(sequence, first), file)
        })
        .collect()
}

/// Opens `bytes` as a one-segment WAL and, when the bytes hold several segment headers, as the
/// directory of up to three segments they split into; then the same directory with every
/// checksum recomputed, so that mutated headers and payloads get past the CRCs and recovery's
/// checks of what records say (indices, chains, checkpoints) are fuzzed too. See
/// [`check_decode_dir`].
pub fn check_decode(bytes: &[u8]) {
    let files = split_segments(bytes);
    check_decode_dir(&[(files[0].0.clone(), bytes)]);
    if files.len() > 1 {
        check_decode_dir(&files);
    }
    let repaired = with_valid_checksums(&files);
    if repaired.iter().zip(&files).any(|((_, new), (_, old))| new.as_slice() != *old) {
        let repaired: Vec<(String, &[u8])> =
            repaired.iter().map(|(name, bytes)| (name.clone(), bytes.as_slice())).collect();
        check_decode_dir(&repaired);
    }
}

/// Recomputes the CRC of every frame of the segment files `files` (in order) from byte `from`
/// of the first on, and the headers of the later ones, so that the record chain holds again
/// after a change at `from`: each frame's CRC is seeded with the one before, and each segment
/// header names the CRC the segment before ended with. Frames are followed by their length
/// fields up to a zeroed frame header or the end of the file. For tests that forge a record
/// and need it to pass its CRC.
pub fn rechain(files: &mut [Vec<u8>], from: usize) {
    let mut last: Option<u32> = None;
    for (k, bytes) in files.iter_mut().enumerate() {
        let (at, seed) = match last {
            // The first file's first frame keeps the CRC it names as the one before it.
            None if k == 0 => {
                (from, LittleEndian::read_u32(&bytes[from + format::FRAME_PREV_CRC_OFFSET..]))
            }
            _ => (SEGMENT_HEADER_LEN, rechain_header(bytes, last)),
        };
        last = Some(rechain_frames(bytes, at, seed, usize::MAX, false));
    }
}

/// Sets a segment header's `prev_crc` to `prev` (when given) and recomputes the header's CRC;
/// returns the header's `prev_crc`.
fn rechain_header(bytes: &mut [u8], prev: Option<u32>) -> u32 {
    if let Some(prev) = prev {
        LittleEndian::write_u32(&mut bytes[format::PREV_CRC_OFFSET..], prev);
    }
    let crc = crc32fast::hash(&bytes[..format::HEADER_CRC_OFFSET]);
    LittleEndian::write_u32(&mut bytes[format::HEADER_CRC_OFFSET..], crc);
    LittleEndian::read_u32(&bytes[format::PREV_CRC_OFFSET..])
}

/// Recomputes the CRCs of the frames of one segment file from offset `at`, the first seeded
/// with `seed`, up to a zeroed frame header, a length beyond `max_len` or the end of the file;
/// with `tidy`, also zeroes each frame's reserved bytes and unknown flags. Returns the last CRC
/// (`seed` when there is no frame).
fn rechain_frames(bytes: &mut [u8], mut at: usize, seed: u32, max_len: usize, tidy: bool) -> u32 {
    let mut prev = seed;
    // Bounded: each pass moves past one frame.
    while at + format::FRAME_HEADER_LEN <= bytes.len() {
        let frame = at..at + format::FRAME_HEADER_LEN;
        let len = LittleEndian::read_u32(&bytes[at + format::LEN_OFFSET..]) as usize;
        let end = frame.end + len;
        if bytes[frame.clone()].iter().all(|&b| b == 0) || len > max_len || end > bytes.len() {
            break;
        }
        if tidy {
            bytes[at + format::RESERVED_OFFSET..at + format::FRAME_PREV_CRC_OFFSET].fill(0);
            bytes[at + format::FLAGS_BYTE_OFFSET] &= format::FLAG_MORE;
        }
        LittleEndian::write_u32(&mut bytes[at + format::FRAME_PREV_CRC_OFFSET..], prev);
        let crc = format::frame_crc(
            prev,
            &bytes[at + format::LEN_OFFSET..frame.end],
            &bytes[frame.end..end],
        );
        LittleEndian::write_u32(&mut bytes[at + format::CRC_OFFSET..], crc);
        prev = crc;
        at += format::framed_len(len);
    }
    prev
}

/// `files` with every header CRC and record CRC recomputed and the record chain linked across
/// files, as far as the frames' length fields allow.
fn with_valid_checksums(files: &[(String, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let mut chain = None;
    files
        .iter()
        .map(|(name, bytes)| {
            let mut out = bytes.to_vec();
            if out.len() >= SEGMENT_HEADER_LEN && out.starts_with(&SEGMENT_MAGIC) {
                let seed = rechain_header(&mut out, chain);
                let max = DECODE_MAX_RECORD_BYTES as usize;
                chain = Some(rechain_frames(&mut out, SEGMENT_HEADER_LEN, seed, max, true));
            }
            (name.clone(), out)
        })
        .collect()
}

/// Writes `files` (name, bytes) as a WAL directory and opens it. Opening must not panic; it
/// either refuses with `Corruption` or recovers a log that is consistent (every entry from the
/// first to the last index reads back, with the terms the index has, none beyond the record
/// limit), whose segments are a prefix of the files given, each kept byte for byte up to where
/// recovery cut it, and that a second open recovers identically and that takes a new append.
pub fn check_decode_dir(files: &[(String, &[u8])]) {
    let fs = CrashFs::new();
    let dir = wal_dir();
    // A later file of the same name replaces an earlier one, as on a file system.
    let files: BTreeMap<&str, &[u8]> =
        files.iter().take(MAX_SEGMENTS).map(|(name, bytes)| (name.as_str(), *bytes)).collect();
    for (name, bytes) in &files {
        fs.write_file_raw(&dir.join(name), bytes).expect("CrashFs takes any small file");
    }
    let shared: Fs = Arc::new(fs.clone());
    let wal = match Wal::open(shared.clone(), &dir, decode_options()) {
        Ok(wal) => wal,
        Err(Error::Corruption { segment, .. }) => {
            let named = segment.to_string_lossy().into_owned();
            assert!(
                files.contains_key(named.as_str()),
                "corruption must name one of the files given, named {named:?}"
            );
            return;
        }
        Err(e) => panic!("opening decoded segments failed with {e}, not Corruption"),
    };
    let log = match read_whole_log(&wal) {
        Ok(log) => log,
        // Opened through footers, a sealed segment's records are not read at open: a damaged
        // one is refused when its entries are read (DESIGN.md §5.6), naming that segment.
        Err(Error::Corruption { segment, .. })
            if files.contains_key(segment.to_string_lossy().as_ref()) =>
        {
            return;
        }
        Err(e) => panic!("a recovered log must read: {e}"),
    };
    let report = wal.recovery_report().clone();
    // Recovery may cut the tail of the segment it stops in and remove the segments after it;
    // everything before the cut stays byte for byte. The last surviving segment is the one
    // writing resumes in: only a cut is checked there, and not its header, which is written
    // again when no record of it was kept (a segment whose checkpoint never became durable).
    let surviving: Vec<&str> = files
        .keys()
        .copied()
        .filter(|name| !report.removed.iter().any(|r| r == name))
        .filter(|name| format::parse_segment_name(name).is_some())
        .collect();
    for name in &surviving {
        let before = files[name];
        let now = fs.read_file(&dir.join(name)).unwrap_or_else(|| panic!("{name} vanished"));
        let last = Some(name) == surviving.last();
        let kept = match &report.truncated {
            Some((cut, offset, _)) if cut == name => *offset as usize,
            _ if last => 0,
            _ => before.len(),
        };
        let kept = kept.min(before.len());
        let from = if last { SEGMENT_HEADER_LEN.min(kept) } else { 0 };
        assert!(
            now.len() >= kept && now[from..kept] == before[from..kept],
            "recovery changed {name} between {from} and the point it kept it to ({kept} bytes)"
        );
    }
    let state = (wal.first_index(), wal.last_index(), wal.hard_state(), wal.snapshot_metadata());
    drop(wal);
    let wal = Wal::open(shared.clone(), &dir, decode_options())
        .unwrap_or_else(|e| panic!("a recovered log must open again: {e}"));
    let again = (wal.first_index(), wal.last_index(), wal.hard_state(), wal.snapshot_metadata());
    assert_eq!(again, state, "a second recovery must find what the first left");
    assert_eq!(read_whole_log(&wal).ok(), Some(log), "the entries must read the same again");
    // The recovered log must take writes where it ends.
    let Some(index) = state.1.checked_add(1) else {
        return;
    };
    let next = Entry::new(index, wal.term(state.1).expect("the last index has a term"), "n");
    wal.save(None, std::slice::from_ref(&next)).expect("a recovered log takes an append");
    drop(wal);
    let wal = Wal::open(shared, &dir, decode_options())
        .unwrap_or_else(|e| panic!("the log must open after an append: {e}"));
    assert_eq!(wal.entries(index, index + 1, u64::MAX).ok(), Some(vec![next]));
}

/// Every entry of the log, checked against the index (consecutive, terms as `term` says, each
/// within the record limit).
fn read_whole_log(wal: &Wal) -> Result<Vec<Entry>> {
    let (first, last) = (wal.first_index(), wal.last_index());
    assert!(first <= last + 1, "first index {first} is beyond last index {last} + 1");
    if last < first {
        return Ok(Vec::new());
    }
    let entries = wal.entries(first, last + 1, u64::MAX)?;
    assert_eq!(entries.len() as u64, last + 1 - first, "every index from first to last reads");
    for (k, entry) in entries.iter().enumerate() {
        assert_eq!(entry.index, first + k as u64, "entries are consecutive");
        assert_eq!(Some(entry.term), wal.term(entry.index).ok(), "term({}) agrees", entry.index);
        assert!(
            entry.encoded_len() <= u64::from(DECODE_MAX_RECORD_BYTES),
            "entry {} is larger than any record may be",
            entry.index
        );
    }
    Ok(entries)
}

/// Reads `bytes` as a snapshot file. Reading must not panic; the data is delivered whole only
/// if the header's CRC (over the header and metadata) and the body's CRC both match, checked
/// here independently of the reader; any refusal is `Corruption`.
pub fn check_snapshot_file(bytes: &[u8]) {
    let fs = CrashFs::new();
    let dir = Path::new("/node/snap");
    let name = snap_format::snapshot_name(0, 1, 1);
    fs.write_file_raw(&dir.join(&name), bytes).expect("CrashFs takes any small file");
    let shared: Fs = Arc::new(fs);
    let store = SnapshotStore::open(shared, dir, 0).expect("the store opens");
    let mut reader = match store.reader(&name) {
        Ok(reader) => reader,
        Err(Error::Corruption { .. }) => return,
        Err(e) => panic!("opening a snapshot file failed with {e}, not Corruption"),
    };
    let mut delivered = 0u64;
    let mut chunk = [0u8; 8192];
    // Bounded by MAX_SNAPSHOT_DATA_BYTES.
    let end = loop {
        match reader.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                delivered += n as u64;
                if delivered > MAX_SNAPSHOT_DATA_BYTES {
                    return;
                }
            }
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = end {
        let inner = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>());
        assert!(
            matches!(inner, Some(Error::Corruption { .. })),
            "a damaged snapshot must fail with Corruption, failed with {e}"
        );
        return;
    }
    // Delivered whole: the CRCs must hold.
    let meta_len = LittleEndian::read_u32(&bytes[snap_format::META_LEN_OFFSET..]) as usize;
    let body_start = SNAPSHOT_HEADER_LEN + meta_len;
    let mut header_crc = crc32fast::Hasher::new();
    header_crc.update(&bytes[..snap_format::HEADER_CRC_OFFSET]);
    header_crc.update(&bytes[SNAPSHOT_HEADER_LEN..body_start]);
    assert_eq!(
        header_crc.finalize(),
        LittleEndian::read_u32(&bytes[snap_format::HEADER_CRC_OFFSET..]),
        "a snapshot whose header CRC fails was read"
    );
    assert_eq!(
        crc32fast::hash(&bytes[body_start..]),
        LittleEndian::read_u32(&bytes[snap_format::BODY_CRC_OFFSET..]),
        "a snapshot whose body CRC fails was read"
    );
    assert_eq!(
        delivered,
        LittleEndian::read_u64(&bytes[snap_format::DATA_LEN_OFFSET..]),
        "the data delivered has the length the header gives"
    );
    assert_eq!(reader.data_len(), delivered);
    assert!(store.verify(&name).is_ok(), "verify agrees with the reader");
}
