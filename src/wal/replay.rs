//! Opening a WAL directory: scan every segment, apply the recovery table, replay the accepted
//! records into a [`LogState`], then repair what the table said to cut.

use std::path::{Path, PathBuf};

use crate::error::{CorruptionKind, Error, Result};
use crate::io::{File, Fs};
use crate::options::{RecoveryMode, WalOptions};
use crate::wal::format::{self, Record};
use crate::wal::index::Loc;
use crate::wal::recovery::{
    Decision, Position, ScannedRecord, Stop, classify, decide, scan_segment,
};
use crate::wal::segment::{self, Segment};
use crate::wal::state::LogState;
use crate::wal::writer::Active;

/// What recovery found and did, for tools and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments_scanned: usize,
    /// Records replayed.
    pub records_replayed: usize,
    /// Bytes of records checked.
    pub bytes_scanned: u64,
    /// The decision table's row (§8 of DESIGN.md) each segment read matched, in log order.
    pub rows: Vec<&'static str>,
    /// Where a tail was cut: (segment file, offset, recovery table row).
    pub truncated: Option<(String, u64, &'static str)>,
    /// Segment files removed (torn new segments; in `TruncateCorrupt` mode, everything after
    /// the damage).
    pub removed: Vec<String>,
    /// Bytes zeroed after the end of the segment writing resumes in: (segment file, offset,
    /// bytes). Set after a cut, and when garbage (no valid record) followed an accepted end.
    pub erased: Option<(String, u64, u64)>,
}

/// The result of opening: the state, the segments in order, and where writing resumes.
pub struct Recovered {
    /// The replayed state.
    pub state: LogState,
    /// Sealed segments, in order (the resumed active segment is not among them).
    pub sealed: Vec<Segment>,
    /// The segment to go on appending to, or `None` to start segment `next_sequence`.
    pub resume: Option<Active>,
    /// Sequence of the next segment to create.
    pub next_sequence: u64,
    /// CRC of the last accepted record (chain seed for the next segment).
    pub last_crc: u32,
    /// What happened.
    pub report: RecoveryReport,
}

struct Found {
    sequence: u64,
    first_index: u64,
    name: String,
}

/// The largest segment sequence number recovery accepts: `Loc` holds 32 bits, and the next
/// segment created after recovery must fit too.
const MAX_SEGMENT_SEQUENCE: u64 = u32::MAX as u64 - 1;

fn corruption(name: &str, offset: u64, kind: CorruptionKind) -> Error {
    Error::Corruption { segment: PathBuf::from(name), offset, kind }
}

/// Lists the segments, removing leftover temp files.
fn list_segments(fs: &Fs, dir: &Path) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for name in fs.list(dir)? {
        if name.ends_with(format::TEMP_SUFFIX) {
            // A segment being prepared when the process stopped; never part of the log.
            fs.remove_file(&dir.join(&name))?;
        } else if let Some((sequence, first_index)) = format::parse_segment_name(&name) {
            found.push(Found { sequence, first_index, name });
        }
    }
    found.sort_by_key(|f| f.sequence);
    Ok(found)
}

/// Zeroes `[from, to)` of `file` in bounded chunks and syncs it.
fn zero_range(file: &dyn File, from: u64, to: u64) -> Result<()> {
    const CHUNK: usize = 64 << 10;
    let zeros = vec![0u8; CHUNK];
    let mut at = from;
    // Bounded: each pass advances by up to CHUNK bytes towards `to`.
    while at < to {
        let n = CHUNK.min((to - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()?;
    Ok(())
}

/// Opens the WAL in `dir`: scans, decides, replays, repairs. The caller holds the directory lock.
pub fn recover(fs: &Fs, dir: &Path, options: &WalOptions) -> Result<Recovered> {
    let found = list_segments(fs, dir)?;
    // The index locates entries by a 32-bit segment number, so raftwal never names a segment
    // beyond it; such a name is damage (and the sequence arithmetic below must not overflow).
    if let Some(f) = found.iter().find(|f| f.sequence > MAX_SEGMENT_SEQUENCE) {
        let why = format!("segment sequence {} leaves no room below 2^32", f.sequence);
        return Err(corruption(&f.name, 0, CorruptionKind::Malformed(why)));
    }
    let mut state = LogState::default();
    let mut report = RecoveryReport::default();
    let mut sealed: Vec<Segment> = Vec::new();
    // The last kept segment with a valid header: (segment, end of accepted data, data start).
    let mut last_kept: Option<(Segment, u64, u64)> = None;
    let mut last_crc = 0u32;
    let mut next_sequence = 1;
    let mut replayed_any = false;
    // Segments from this position on are removed after the logical pass.
    let mut remove_from: Option<usize> = None;

    for (i, f) in found.iter().enumerate() {
        let position = match (i + 1 == found.len(), i == 0) {
            (true, true) => Position::Only,
            (true, false) => Position::Last,
            (false, _) => Position::Sealed,
        };
        let file = fs.open(&dir.join(&f.name))?;
        let bytes = segment::read_whole(&f.name, file.as_ref())?;
        let scan = scan_segment(&bytes, options.max_record_bytes);
        report.segments_scanned += 1;
        report.bytes_scanned += scan.stop_offset;

        // Links between segments: consecutive sequences, names that match headers, and a record
        // chain that crosses files. A broken link is never a torn write.
        let mut link_error = None;
        if i > 0 && f.sequence != found[i - 1].sequence + 1 {
            link_error = Some((0, CorruptionKind::Gap));
        }
        if let Ok(header) = &scan.header {
            if header.sequence != f.sequence || header.first_index != f.first_index {
                link_error = Some((
                    0,
                    CorruptionKind::Malformed(format!(
                        "header says sequence {} first index {}, the name says {} and {}",
                        header.sequence, header.first_index, f.sequence, f.first_index
                    )),
                ));
            } else if replayed_any && header.prev_crc != last_crc {
                link_error = Some((format::PREV_CRC_OFFSET as u64, CorruptionKind::Gap));
            }
        }
        if let Some((offset, kind)) = link_error {
            match options.recovery_mode {
                RecoveryMode::Strict => return Err(corruption(&f.name, offset, kind)),
                RecoveryMode::TruncateCorrupt => {
                    remove_from = Some(i);
                    break;
                }
            }
        }

        let case = decide(position, classify(&scan), scan.after.into());
        report.rows.push(case.label);
        let (keep_records, stop_here) = match case.decision {
            Decision::Accept => (scan.records.len(), false),
            Decision::TruncateTail => {
                report.truncated = Some((f.name.clone(), scan.stop_offset, case.label));
                (scan.records.len(), true)
            }
            Decision::Corruption => match options.recovery_mode {
                RecoveryMode::Strict => {
                    let kind = match &scan.stop {
                        Stop::Damaged(kind) => kind.clone(),
                        Stop::End => CorruptionKind::ChecksumMismatch,
                    };
                    return Err(corruption(&f.name, scan.stop_offset, kind));
                }
                RecoveryMode::TruncateCorrupt => {
                    report.truncated = Some((f.name.clone(), scan.stop_offset, case.label));
                    (scan.records.len(), true)
                }
            },
        };

        if scan.header.is_err() {
            // Only the table's truncate rows reach here: the segment holds nothing to keep.
            remove_from = Some(i);
            break;
        }
        let mut end = scan.stop_offset;
        let mut contradiction = None;
        for (k, record) in scan.records[..keep_records].iter().enumerate() {
            if k == 0 && !matches!(record.record, Record::Checkpoint(_)) {
                contradiction =
                    Some((record.offset, "a segment must start with a checkpoint".to_string()));
            } else if let Err(why) = replay_record(&mut state, f.sequence, record, !replayed_any) {
                contradiction = Some((record.offset, why));
            }
            if let Some((offset, why)) = contradiction.take() {
                match options.recovery_mode {
                    RecoveryMode::Strict => {
                        return Err(corruption(&f.name, offset, CorruptionKind::Malformed(why)));
                    }
                    RecoveryMode::TruncateCorrupt => {
                        report.truncated = Some((f.name.clone(), offset, "R9"));
                        end = offset;
                        break;
                    }
                }
            }
            replayed_any = true;
            report.records_replayed += 1;
            last_crc = record.crc;
        }
        let truncated_here = end != scan.stop_offset || stop_here;
        let data_start = scan.records.first().map_or(0, |r| r.offset + r.framed_len);
        if let Some((segment, _, _)) = last_kept.take() {
            sealed.push(segment);
        }
        next_sequence = f.sequence + 1;
        let segment = Segment { sequence: f.sequence, name: f.name.clone(), file };
        last_kept = Some((segment, end, data_start));
        if truncated_here || position != Position::Sealed {
            // Erase whatever follows `end` in the segment writing resumes in: after a cut, and
            // after an accepted end too (a torn write whose first sector was lost but a later
            // one survived). Left in place, bytes after a cut could pass for records, and
            // shorter appends would leave them right behind the last record, where the sealed
            // segment would read as damaged.
            let last_nonzero = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p as u64 + 1);
            if last_nonzero > end {
                let (seg, _, _) = last_kept.as_ref().expect("just set");
                zero_range(seg.file.as_ref(), end, last_nonzero)?;
                report.erased = Some((f.name.clone(), end, last_nonzero - end));
            }
        }
        if truncated_here {
            if i + 1 < found.len() {
                remove_from = Some(i + 1);
            }
            break;
        }
    }

    if let Some(from) = remove_from {
        for f in found[from..].iter().rev() {
            // Newest first: a crash part-way leaves a shorter log, never one with a hole.
            fs.remove_file(&dir.join(&f.name))?;
            fs.sync_dir(dir)?;
            report.removed.push(f.name.clone());
            next_sequence = next_sequence.max(f.sequence + 1);
        }
    }

    if state.index.has_missing() {
        let first = found.first().map_or("", |f| f.name.as_str());
        return Err(corruption(first, 0, CorruptionKind::Missing));
    }

    let resume = match last_kept {
        Some((segment, end, data_start)) => {
            // Whatever was read may still be only in the page cache after a process crash:
            // make it durable before anything is acknowledged on top of it. That includes the
            // segments' names: a rollover's rename that the stopped process never synced would
            // otherwise vanish in a later power cut, taking acknowledged writes with it (a later
            // sync only syncs the directory for renames made since open).
            segment.file.sync_data()?;
            fs.sync_dir(dir)?;
            // A segment whose checkpoint never became durable is rewritten from its header on.
            let fresh = data_start == 0;
            let first_index =
                format::parse_segment_name(&segment.name).map_or(0, |(_, first)| first);
            if fresh && first_index != state.index.last_index() + 1 {
                return Err(corruption(&segment.name, 0, CorruptionKind::Gap));
            }
            Some(Active {
                sequence: segment.sequence,
                first_index,
                name: segment.name,
                file: segment.file,
                write_offset: if fresh { 0 } else { end },
                durable_offset: if fresh { 0 } else { end },
                prev_crc: last_crc,
                fresh,
                data_start,
            })
        }
        None => None,
    };
    Ok(Recovered { state, sealed, resume, next_sequence, last_crc, report })
}

/// Applies one accepted record to the state.
pub(super) fn replay_record(
    state: &mut LogState,
    sequence: u64,
    record: &ScannedRecord,
    first: bool,
) -> Result<(), String> {
    match &record.record {
        Record::Checkpoint(cp) => state.apply_checkpoint(cp, first),
        _ if first => Err("the log must start with a checkpoint".to_string()),
        Record::Entries(entries) => {
            let loc = Loc {
                segment: u32::try_from(sequence)
                    .map_err(|_| "segment sequence beyond 2^32".to_string())?,
                offset: u32::try_from(record.offset)
                    .map_err(|_| "record offset beyond 4 GiB".to_string())?,
            };
            state.apply_entries(entries[0].index, entries.iter().map(|e| e.term), loc)
        }
        Record::HardState(hs) => {
            state.apply_hard_state(*hs);
            Ok(())
        }
        Record::Snapshot { metadata, resets_log } => state.apply_snapshot(metadata, *resets_log),
        Record::Compact { index, term } => state.apply_compact(*index, *term),
    }
}
