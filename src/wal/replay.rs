//! Opening a WAL directory: scan every segment, apply the recovery table, replay the accepted
//! writes into an [`EngineState`], then repair what the table said to cut.
//!
//! A write (one call's records, chained with [`format::FLAG_MORE`]) is applied whole or not at
//! all: a write whose last record is missing at the end of the newest segment was torn by a
//! crash before its sync and is cut (row W1); anywhere else it is corruption (row W2).

use std::path::{Path, PathBuf};

use crate::error::{CorruptionKind, Error, Result};
use crate::io::{File, Fs};
use crate::options::{RecoveryMode, WalOptions};
use crate::wal::footer::Item;
use crate::wal::format::{self, HeaderError, Record};
use crate::wal::index::Loc;
use crate::wal::recovery::{
    Decision, FOOTER_CASE, Position, ScannedRecord, Stop, classify, decide, salvage,
    scan_segment_shared,
};
use crate::wal::repair;
use crate::wal::segment::{self, Segment};
use crate::wal::state::EngineState;
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
    /// Sealed segments whose footers were decoded on a second thread while the segment before
    /// them replayed (only footers of at least 64 KiB are).
    pub footers_decoded_ahead: usize,
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
    pub state: EngineState,
    /// Sealed segments, in order (the resumed active segment is not among them).
    pub sealed: Vec<Segment>,
    /// The segment to go on appending to, or `None` to start segment `next_sequence`.
    pub resume: Option<Active>,
    /// Sequence of the next segment to create.
    pub next_sequence: u64,
    /// CRC of the last accepted record (chain seed for the next segment).
    pub last_crc: u32,
    /// Ordinal of the next record the log writes.
    pub next_record: u64,
    /// What happened.
    pub report: RecoveryReport,
    /// Groups whose logs restarted at their snapshots in memory (row P10); open makes that
    /// durable.
    pub restarted: Vec<u64>,
}

struct Found {
    sequence: u64,
    first_record: u64,
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
        } else if let Some((sequence, first_record)) = format::parse_segment_name(&name) {
            found.push(Found { sequence, first_record, name });
        }
    }
    found.sort_by_key(|f| f.sequence);
    Ok(found)
}

/// Zeroes a sealed segment's footer record (if one starts at `end`) and its trailer, so that
/// writing can resume after `end`. Unsynced: the caller syncs the segment it resumes in.
fn erase_seal(file: &dyn File, end: u64) -> Result<()> {
    let len = file.len()?;
    let mut head = [0u8; format::FRAME_HEADER_LEN];
    if end + head.len() as u64 <= len {
        file.read_exact_at(&mut head, end)?;
        let frame = format::FrameHeader::read(&head);
        if frame.record_type == format::RecordType::Footer as u8 {
            let footer_end = (end + format::framed_len(frame.len as usize) as u64).min(len);
            write_zeros(file, end, footer_end)?;
        }
    }
    if len >= (format::TRAILER_LEN as u64).max(end) {
        write_zeros(file, (len - format::TRAILER_LEN as u64).max(end), len)?;
    }
    Ok(())
}

/// Zeroes `[from, to)` of `file` in bounded chunks and syncs it.
fn zero_range(file: &dyn File, from: u64, to: u64) -> Result<()> {
    write_zeros(file, from, to)?;
    file.sync_data()?;
    Ok(())
}

/// Zeroes `[from, to)` of `file` in bounded chunks, unsynced.
fn write_zeros(file: &dyn File, from: u64, to: u64) -> Result<()> {
    const CHUNK: usize = 64 << 10;
    let zeros = vec![0u8; CHUNK];
    let mut at = from;
    // Bounded: each pass advances by up to CHUNK bytes towards `to`.
    while at < to {
        let n = CHUNK.min((to - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Where a replay must stop: a write that contradicted the state in `TruncateCorrupt` mode,
/// found after part of it was applied. Recovery starts over and cuts the log there.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Restart {
    segment: usize,
    offset: u64,
}

/// Why a pass of recovery stops before changing anything on disk.
enum Redo {
    /// Cut earlier (see [`Restart`]).
    Cut(Restart),
    /// `RecoveryMode::Repairable` must record what a cut here loses before making it.
    Evidence(Restart),
    /// The segment at this position, read through its footer, is where writing resumes (the
    /// segments after it were dropped as torn): read it whole, since its records become the
    /// newest segment's and are scanned as such from then on. Or its footer contradicts the
    /// state: read whole, its records say which one does, and the table decides.
    ReadWhole(usize),
}

/// How open read a segment: a sealed one through its footer, or the whole file and its scan.
enum Read {
    Footer(Box<segment::SealedScan>),
    Whole(bytes::Bytes, crate::wal::recovery::SegmentScan),
}

/// The last kept segment with a valid header: the segment, end of accepted data, data start,
/// first record, records kept, its footer so far, whether it is a recycled file, and its
/// witness state (see [`witness_state`]).
type Kept = (Segment, u64, u64, u64, u64, Option<format::Footer>, bool, (Option<u64>, Option<u64>));

/// For a segment writing may resume in, kept `records`: the first record that changes state
/// and that no record's `durable` field covers (those at or after the last record's), and the
/// offset of its last record if that is a witness (see [`Active`]).
fn witness_state(records: &[ScannedRecord]) -> (Option<u64>, Option<u64>) {
    let Some(last) = records.last() else { return (None, None) };
    let unwitnessed = records
        .iter()
        .find(|r| {
            r.offset >= last.durable
                && !matches!(r.record, Record::Checkpoint(_) | Record::Footer(_) | Record::Witness)
        })
        .map(|r| r.offset);
    (unwitnessed, matches!(last.record, Record::Witness).then_some(last.offset))
}

/// How many times recovery may start over to cut at an earlier write; each restart cuts strictly
/// earlier, so this only guards against a mistake.
const MAX_RESTARTS: usize = 1024;

/// Opens the WAL in `dir`: scans, decides, replays, repairs. The caller holds the directory lock.
pub fn recover(fs: &Fs, dir: &Path, options: &WalOptions) -> Result<Recovered> {
    let mut cut: Option<Restart> = None;
    // Where the evidence recorded so far starts: a cut at or after it loses nothing unrecorded.
    let mut recorded: Option<Restart> = None;
    // Segments to read whole although they have a footer.
    let mut whole: Vec<usize> = Vec::new();
    for _ in 0..MAX_RESTARTS {
        match recover_once(fs, dir, options, cut.as_ref(), recorded.as_ref(), &whole)? {
            Ok(recovered) => return Ok(recovered),
            Err(Redo::Cut(restart)) => cut = Some(restart),
            Err(Redo::ReadWhole(segment)) => {
                assert!(!whole.contains(&segment), "segment {segment} was read whole already");
                whole.push(segment);
            }
            Err(Redo::Evidence(at)) => {
                record_evidence(fs, dir, options, at)?;
                recorded = Some(at);
            }
        }
    }
    Err(Error::Io(std::io::Error::other("recovery could not settle on a cut point")))
}

/// The records of one write: consecutive records chained with `more`, the last without it.
fn next_write(records: &[ScannedRecord], from: usize) -> Option<std::ops::Range<usize>> {
    let last = records[from..].iter().position(|r| !r.more)?;
    Some(from..from + last + 1)
}

/// Groups left with entries whose records lay in segments that are gone (a hole: a cut took the
/// compaction that had released them, or a segment was lost) restart their logs at their
/// snapshots, as row P10 of DESIGN.md §8.2 says: in any mode while a cut's resets are still
/// pending (the repair file says so, and only a Repairable open cuts), and in Repairable mode
/// always. Each group's loss is first added to the repair file, durably, so that a crash before
/// the restart is durable never forgets it. Otherwise a hole is refused as `Missing` (row P7).
/// Returns the groups restarted, whose restart the open makes durable.
fn restart_logs_with_holes(
    fs: &Fs,
    dir: &Path,
    mode: RecoveryMode,
    state: &mut EngineState,
    first_segment: &str,
) -> Result<Vec<u64>> {
    let holes = state.groups_with_missing();
    if holes.is_empty() {
        return Ok(holes);
    }
    let mut file = repair::read(fs, dir)?.unwrap_or_default();
    if !file.reset_pending {
        if mode != RecoveryMode::Repairable {
            return Err(corruption(first_segment, 0, CorruptionKind::Missing));
        }
        // Segments lost with no cut (deleted, say): a Repairable open treats the entries they
        // held as damage like any other, and the restart as a cut's.
        file.reset_pending = true;
    }
    for &group in &holes {
        let Some(log) = state.group(group) else { continue };
        let last = log.index.last_index();
        // A group the file does not list lost an unknown suffix when it says so for all
        // such groups: the log's own last index does not bound it.
        let unknown = file.others_unknown && !file.groups.contains_key(&group);
        let lost = repair::RepairRecord {
            index: if unknown { repair::UNKNOWN_INDEX } else { last },
            term: log.index.term(last).unwrap_or(0).max(log.hard_state.term),
            hard_state: log.hard_state,
        };
        file.groups.entry(group).or_default().merge(&lost);
    }
    repair::write(fs, dir, &file)?;
    for &group in &holes {
        state
            .change(group, |log| {
                let marker = log.snapshot();
                log.apply_snapshot(&marker, true)
            })
            .map_err(|why| corruption(first_segment, 0, CorruptionKind::Malformed(why)))?;
    }
    debug_assert!(state.groups_with_missing().is_empty(), "every hole was closed");
    Ok(holes)
}

/// Reads everything from `at` on (the damaged segment through its footer when it has one, or
/// the records that survive in it, and every later segment), and records what it says each
/// group had reached in the repair file, merged with any earlier one, durably.
///
/// Refuses (corruption at `at`) when the unreadable bytes may have held a term or vote that no
/// later copy restores: a term or vote change seals its segment, so every one lies in a sealed
/// segment or in a checkpoint, and has a copy in the next segment's checkpoint; unreadable
/// bytes in a sealed segment, or in a segment's checkpoint, must be followed by a readable
/// checkpoint.
fn record_evidence(fs: &Fs, dir: &Path, options: &WalOptions, at: Restart) -> Result<()> {
    let found = list_segments(fs, dir)?;
    let mut evidence = repair::Evidence::default();
    let mut previous: Option<u64> = None;
    for (k, f) in found.iter().enumerate().skip(at.segment) {
        let sealed = k + 1 < found.len();
        if previous.is_some_and(|p| p + 1 != f.sequence) {
            // A whole segment is missing.
            evidence.gap(true);
        }
        previous = Some(f.sequence);
        let file = fs.open(&dir.join(&f.name))?;
        let from = if k == at.segment { at.offset } else { 0 };
        if sealed {
            // A sealed segment's footer holds what every record of it did, the damaged ones
            // too (a group's hard states as the last of them, which is what evidence keeps).
            let footer = segment::read_by_footer(&f.name, file.as_ref(), options.max_record_bytes)?;
            if let Some(sealed) = footer {
                // It decoded once, so it decodes again; if not, the segment is read whole.
                if footer_evidence(&sealed, from, &mut evidence).is_ok() {
                    continue;
                }
            }
        }
        // Entries decoded below share this buffer: read once, never copied.
        let bytes = bytes::Bytes::from(segment::read_whole(&f.name, file.as_ref())?);
        let Ok(sequence) = u32::try_from(f.sequence) else {
            evidence.gap(true);
            break;
        };
        // Whether the segment's checkpoint lies before `from` and reads whole.
        let mut checkpoint_read = false;
        if from > 0 {
            let scan = scan_segment_shared(&bytes, options.max_record_bytes, f.sequence);
            if let Some(first) = next_write(&scan.records, 0) {
                let records = &scan.records[first];
                let end = records.last().map_or(0, |r| r.offset + r.framed_len);
                checkpoint_read = end <= from
                    && records.iter().all(|r| matches!(r.record, Record::Checkpoint(_)));
            }
        }
        // A checkpoint restates the state the records before it built: this segment's holds
        // nothing that is lost with its bytes when the segment before it is kept (it was
        // replayed: every term and vote included), or when no record precedes it (the log's
        // first segment: an empty state).
        let checkpoint_known = checkpoint_read
            || f.first_record == 0
            || (k == at.segment && k > 0 && found[k - 1].sequence + 1 == f.sequence);
        if k == at.segment {
            // The cut itself: whatever was at `at` is lost.
            evidence.gap(sealed || !checkpoint_known);
        } else if format::SegmentHeader::decode(&bytes).is_err() {
            evidence.gap(true);
        }
        let start = (from as usize).max(format::SEGMENT_HEADER_LEN).min(bytes.len());
        let mut seen_checkpoint = checkpoint_known;
        let whole = salvage(
            &bytes,
            start,
            options.max_record_bytes,
            sequence,
            |offset, accounted, record| {
                // Zeroes before a footer are the segment's unused space, not lost records.
                if offset != accounted && !matches!(record, Record::Footer(_)) {
                    evidence.gap(sealed || !seen_checkpoint);
                }
                seen_checkpoint |= matches!(record, Record::Checkpoint(_));
                evidence.record(&record);
            },
        );
        if !whole {
            evidence.gap(true);
        }
    }
    if evidence.hard_state_may_be_lost() {
        let name = found.get(at.segment).map_or("", |f| f.name.as_str());
        let why = "damage where a term or vote may have been, and no later checkpoint survives \
                   to restore it: no rule could keep this node from voting twice in a term";
        return Err(corruption(name, at.offset, CorruptionKind::Malformed(why.into())));
    }
    let mut file = repair::read(fs, dir)?.unwrap_or_default();
    file.merge(&evidence.into_file());
    repair::write(fs, dir, &file)
}

fn recover_once(
    fs: &Fs,
    dir: &Path,
    options: &WalOptions,
    forced: Option<&Restart>,
    recorded: Option<&Restart>,
    whole: &[usize],
) -> Result<std::result::Result<Recovered, Redo>> {
    // In Repairable mode a cut of durable data at `at` first needs its evidence recorded.
    let needs_evidence = |at: Restart| {
        options.recovery_mode == RecoveryMode::Repairable && recorded.is_none_or(|r| at < *r)
    };
    let found = list_segments(fs, dir)?;
    // The index locates entries by a 32-bit segment number, so raftwal never names a segment
    // beyond it; such a name is damage (and the sequence arithmetic below must not overflow).
    if let Some(f) = found.iter().find(|f| f.sequence > MAX_SEGMENT_SEQUENCE) {
        let why = format!("segment sequence {} leaves no room below 2^32", f.sequence);
        return Err(corruption(&f.name, 0, CorruptionKind::Malformed(why)));
    }
    let mut state = EngineState::default();
    let mut report = RecoveryReport::default();
    let mut sealed_segments: Vec<Segment> = Vec::new();
    // The last kept segment with a valid header: (segment, end of accepted data, data start,
    // first record, records kept).
    let mut last_kept: Option<Kept> = None;
    // The position of the last kept segment, and whether it was read through its footer.
    let mut resume_from_footer: Option<(usize, bool)> = None;
    let mut last_crc = 0u32;
    let mut next_sequence = 1;
    let mut replayed_any = false;
    // Ordinal of the record after the last one replayed.
    let mut next_record: Option<u64> = None;
    // Segments from this position on are removed after the logical pass.
    let mut remove_from: Option<usize> = None;

    // A sealed segment is replayed from its footer when it has a valid one (and no earlier
    // pass asked to cut it); otherwise, and always for the newest, it is read whole.
    let by_footer = |i: usize| {
        i + 1 < found.len()
            && options.read_footers
            && forced.is_none_or(|r| r.segment != i)
            && !whole.contains(&i)
    };
    // Footers read ahead of the segment being replayed, so that they decode meanwhile.
    let mut lookahead = segment::FooterLookahead::default();
    let mut read_ahead_to = 0;
    for (i, f) in found.iter().enumerate() {
        let position = match (i + 1 == found.len(), i == 0) {
            (true, true) => Position::Only,
            (true, false) => Position::Last,
            (false, _) => Position::Sealed,
        };
        // Bounded: at most FOOTERS_AHEAD + 1 segments past `i`.
        while read_ahead_to < found.len() && read_ahead_to <= i + segment::FOOTERS_AHEAD {
            let (j, next) = (read_ahead_to, &found[read_ahead_to]);
            if by_footer(j) {
                let file = fs.open(&dir.join(&next.name))?;
                let raw = segment::read_footer(file.as_ref(), options.max_record_bytes)?;
                lookahead.push(j, &next.name, file, raw);
            }
            read_ahead_to += 1;
        }
        let (file, listed) =
            if by_footer(i) { lookahead.take(i) } else { (fs.open(&dir.join(&f.name))?, None) };
        report.segments_scanned += 1;
        let read = match listed {
            Some(sealed) => Read::Footer(Box::new(sealed)),
            None => {
                // Entries decoded by the scan share this buffer; it is freed with the scan.
                let bytes = bytes::Bytes::from(segment::read_whole(&f.name, file.as_ref())?);
                let scan = scan_segment_shared(&bytes, options.max_record_bytes, f.sequence);
                report.bytes_scanned += scan.stop_offset;
                if let Err(HeaderError::Version(version)) = scan.header {
                    // Another format's log is never cut, whatever the mode: a version 1
                    // directory would otherwise lose every segment from this one on.
                    let kind = CorruptionKind::UnsupportedVersion(version);
                    return Err(corruption(&f.name, format::VERSION_OFFSET as u64, kind));
                }
                Read::Whole(bytes, scan)
            }
        };

        // Links between segments: consecutive sequences, names that match headers, and a record
        // chain (and count) that crosses files. A broken link is never a torn write.
        let header = match &read {
            Read::Footer(sealed) => Ok(&sealed.header),
            Read::Whole(_, scan) => scan.header.as_ref(),
        };
        let link_error = match header {
            Ok(header) => check_links(&found, i, header, replayed_any, last_crc, next_record).err(),
            Err(_) if i > 0 && f.sequence != found[i - 1].sequence + 1 => {
                Some((0, CorruptionKind::Gap))
            }
            Err(_) => None,
        };
        if let Some((offset, kind)) = link_error {
            if !options.recovery_mode.cuts_corruption() {
                return Err(corruption(&f.name, offset, kind));
            }
            let at = Restart { segment: i, offset: 0 };
            if needs_evidence(at) {
                return Ok(Err(Redo::Evidence(at)));
            }
            remove_from = Some(i);
            break;
        }

        let (bytes, scan) = match read {
            Read::Whole(bytes, scan) => (bytes, scan),
            Read::Footer(sealed) => {
                report.rows.push(FOOTER_CASE.label);
                let segment = u32::try_from(f.sequence).expect("checked below 2^32 above");
                let parts: Vec<&[format::Checkpoint]> =
                    sealed.footer.checkpoint.iter().map(|(_, part)| part.as_slice()).collect();
                let replayed = state.apply_checkpoint(&parts, !replayed_any).and_then(|()| {
                    sealed.footer.for_each_group(|group, items| {
                        state.apply_footer_group(group, items, segment)
                    })
                });
                if replayed.is_err() {
                    // Part of it may be applied already: start over, reading this one whole.
                    return Ok(Err(Redo::ReadWhole(i)));
                }
                replayed_any = true;
                // The listed records and the footer.
                let kept = u64::from(sealed.footer.records) + 1;
                report.records_replayed += kept as usize;
                last_crc = sealed.crc;
                next_record = Some(sealed.header.first_record + kept);
                if let Some((segment, ..)) = last_kept.take() {
                    sealed_segments.push(segment);
                }
                next_sequence = f.sequence + 1;
                let end = sealed.offset + sealed.framed;
                let size = file.len()?;
                let segment = Segment { sequence: f.sequence, name: f.name.clone(), file, size };
                // Never resumed as it is: a segment read through its footer that ends up the last
                // one kept is read whole first (below).
                let (first_record, recycled) = (sealed.header.first_record, sealed.header.recycled);
                last_kept =
                    Some((segment, end, end, first_record, kept, None, recycled, (None, None)));
                resume_from_footer = Some((i, true));
                lookahead.dispose(*sealed);
                continue;
            }
        };
        let case = decide(position, classify(&scan), scan.after.into());
        report.rows.push(case.label);
        let (mut keep_records, mut stop_here) = match case.decision {
            Decision::Accept => (scan.records.len(), false),
            Decision::TruncateTail => {
                report.truncated = Some((f.name.clone(), scan.stop_offset, case.label));
                (scan.records.len(), true)
            }
            Decision::Corruption => {
                if !options.recovery_mode.cuts_corruption() {
                    let kind = match &scan.stop {
                        Stop::Damaged(kind) => kind.clone(),
                        Stop::End => CorruptionKind::ChecksumMismatch,
                    };
                    return Err(corruption(&f.name, scan.stop_offset, kind));
                }
                let at = Restart { segment: i, offset: scan.stop_offset };
                if needs_evidence(at) {
                    return Ok(Err(Redo::Evidence(at)));
                }
                report.truncated = Some((f.name.clone(), scan.stop_offset, case.label));
                (scan.records.len(), true)
            }
        };
        if let Some(restart) = forced.filter(|r| r.segment == i) {
            if needs_evidence(*restart) {
                return Ok(Err(Redo::Evidence(*restart)));
            }
            // An earlier pass found a write here that contradicts the state: cut before it.
            keep_records = scan.records.iter().take_while(|r| r.offset < restart.offset).count();
            report.truncated = Some((f.name.clone(), restart.offset, "R9"));
            stop_here = true;
        }

        if scan.header.is_err() {
            // Only the table's truncate rows reach here: the segment holds nothing to keep.
            remove_from = Some(i);
            break;
        }
        let records = &scan.records[..keep_records];
        let mut end = records.last().map_or(scan.stop_offset, |r| r.offset + r.framed_len);
        if keep_records == scan.records.len() {
            end = scan.stop_offset;
        }
        let mut data_start = 0;
        let mut kept_count = 0u64;
        let mut at = 0;
        // Bounded: each pass consumes at least one record.
        while at < records.len() {
            let Some(write) = next_write(records, at) else {
                // The write's last record is missing.
                let offset = records[at].offset;
                let label = match report.truncated.as_ref() {
                    // Cut at the table's stop already: the cut moves back to the write's start.
                    Some((name, _, label)) if stop_here && *name == f.name => *label,
                    _ if position == Position::Sealed => {
                        // Every segment but the newest was synced whole, and a write never spans
                        // two segments: its end was lost after it was durable.
                        if !options.recovery_mode.cuts_corruption() {
                            let why = "a write whose last record is missing in a sealed segment";
                            return Err(corruption(
                                &f.name,
                                offset,
                                CorruptionKind::Malformed(why.into()),
                            ));
                        }
                        let at = Restart { segment: i, offset };
                        if needs_evidence(at) {
                            return Ok(Err(Redo::Evidence(at)));
                        }
                        "W2"
                    }
                    // Torn by the crash before its sync: it was never acknowledged.
                    _ => "W1",
                };
                report.truncated = Some((f.name.clone(), offset, label));
                end = offset;
                stop_here = true;
                break;
            };
            let first_write = at == 0;
            let outcome = replay_write(
                &mut state,
                f.sequence,
                &records[write.clone()],
                first_write,
                !replayed_any,
            );
            if let Err((k, why)) = outcome {
                let offset = records[write.start + k].offset;
                if !options.recovery_mode.cuts_corruption() {
                    return Err(corruption(&f.name, offset, CorruptionKind::Malformed(why)));
                }
                // Part of the write may be applied already: start over, cutting at it.
                return Ok(Err(Redo::Cut(Restart {
                    segment: i,
                    offset: records[write.start].offset,
                })));
            }
            replayed_any = true;
            report.records_replayed += write.len();
            kept_count += write.len() as u64;
            last_crc = records[write.end - 1].crc;
            if first_write {
                data_start = records[write.end - 1].offset + records[write.end - 1].framed_len;
            }
            at = write.end;
        }
        let first_record = scan.header.as_ref().map_or(0, |h| h.first_record);
        next_record = Some(first_record + kept_count);
        let truncated_here = end != scan.stop_offset || stop_here;
        if let Some((segment, ..)) = last_kept.take() {
            sealed_segments.push(segment);
        }
        next_sequence = f.sequence + 1;
        let size = bytes.len() as u64;
        let segment = Segment { sequence: f.sequence, name: f.name.clone(), file, size };
        // The summary a resumed segment's footer starts from (only where writing may resume).
        let footer = (truncated_here || position != Position::Sealed).then(|| {
            let mut footer = format::Footer::default();
            for r in records.iter().take(kept_count as usize) {
                footer.push_record(r.offset, r.more, &r.record);
            }
            footer
        });
        let recycled = scan.header.as_ref().is_ok_and(|h| h.recycled);
        let witnesses = witness_state(&records[..kept_count as usize]);
        last_kept =
            Some((segment, end, data_start, first_record, kept_count, footer, recycled, witnesses));
        resume_from_footer = Some((i, false));
        if truncated_here || position != Position::Sealed {
            // Erase whatever follows `end` in the segment writing resumes in: after a cut, and
            // after an accepted end too (a torn write whose first sector was lost but a later
            // one survived). Left in place, bytes after a cut could pass for records, and
            // shorter appends would leave them right behind the last record, where the sealed
            // segment would read as damaged.
            // A cut of durable data (not a torn tail): this segment's own records past it claim
            // to be durable, and any one left would later pass for a witness of zeroed durable
            // data (R5). The look-ahead stops at the first witness, so it does not know where
            // they end: erase to the end of the file's written bytes.
            let torn = matches!(report.truncated.as_ref(), Some((name, _, label))
                if *name == f.name && matches!(*label, "R2" | "R3" | "R4" | "W1"));
            let last_nonzero = if scan.header.as_ref().is_ok_and(|h| h.recycled)
                && (torn || !truncated_here)
            {
                // What an earlier use of the file left after the end carries older sequences
                // and never passes for this segment's records; only this segment's own
                // frames past the end must go: valid ones (a torn write whose later sectors
                // survived, which the look-ahead found too) and torn ones (the cut record
                // itself, and any after it).
                let own = crate::wal::recovery::own_frames_end(&bytes, end as usize, f.sequence);
                // And the frame header at the end, whatever it holds: every write to a
                // recycled file ends with a zeroed one, where a scan stops cleanly. A torn
                // write can keep part of its header without the sequence naming the segment
                // (its last field); left in place, a segment sealed before anything else is
                // written there would read as damaged.
                let at_end = bytes.get(end as usize..).unwrap_or_default();
                let header = &at_end[..at_end.len().min(format::FRAME_HEADER_LEN)];
                own.max(end as usize + crate::wal::recovery::written_end(header)) as u64
            } else {
                crate::wal::recovery::written_end(&bytes) as u64
            };
            if last_nonzero > end {
                let (seg, ..) = last_kept.as_ref().expect("just set");
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

    report.footers_decoded_ahead = lookahead.decoded_ahead();
    // Ends the second thread (footers read ahead past a cut are dropped unused).
    drop(lookahead);

    if let Some((i, true)) = resume_from_footer {
        // Nothing has been changed on disk yet: the later segments go only below.
        return Ok(Err(Redo::ReadWhole(i)));
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

    let first_name = found.first().map_or("", |f| f.name.as_str());
    let holes = restart_logs_with_holes(fs, dir, options.recovery_mode, &mut state, first_name)?;

    let mut records_total = next_record.unwrap_or(0);
    let resume = match last_kept {
        Some((segment, end, data_start, first_record, kept, footer, recycled, witnesses)) => {
            // Whatever was read may still be only in the page cache after a process crash:
            // make it durable before anything is acknowledged on top of it. That includes the
            // segments' names: a rollover's rename that the stopped process never synced would
            // otherwise vanish in a later power cut, taking acknowledged writes with it (a later
            // sync only syncs the directory for renames made since open).
            if footer.is_none() && data_start > 0 {
                // A segment that had been sealed (its footer and trailer written) before the
                // next one was dropped as torn: writing resumes in it, so the old footer and
                // trailer go. Left in place, the trailer would lead a later open to a footer
                // that lists none of the records written from now on.
                erase_seal(segment.file.as_ref(), end)?;
            }
            segment.file.sync_data()?;
            fs.sync_dir(dir)?;
            // A segment whose checkpoint never became durable is rewritten from its header on.
            let fresh = data_start == 0;
            if fresh {
                debug_assert_eq!(kept, 0, "no write is kept after a torn checkpoint");
                records_total = first_record;
            }

            // A file shorter than a segment was not preallocated (a rollover that did not wait
            // for the zero-fill, DESIGN.md §7 case 5): its appends extend it, and the writer
            // leaves it once a prepared file is ready, as before the reopen.
            let preallocated = segment.size >= options.segment_size_bytes;
            Some(Active {
                sequence: segment.sequence,
                first_record,
                name: segment.name,
                file: segment.file,
                write_offset: if fresh { 0 } else { end },
                durable_offset: if fresh { 0 } else { end },
                prev_crc: last_crc,
                fresh,
                data_start,
                footer: if fresh { Some(format::Footer::default()) } else { footer },
                recycled,
                unwitnessed: if fresh { None } else { witnesses.0 },
                witness_at: if fresh { None } else { witnesses.1 },
                // Whether a reopened preallocated segment was zero-filled is not known: it is
                // used until it fills, paying for unwritten blocks if it has them.
                blocks_written: preallocated,
            })
        }
        None => None,
    };
    Ok(Ok(Recovered {
        state,
        sealed: sealed_segments,
        resume,
        next_sequence,
        last_crc,
        next_record: records_total,
        report,
        restarted: holes,
    }))
}

/// Checks the links of segment `found[i]`, whose header is `header`, to the segments before it:
/// consecutive sequences, a name that matches the header, and a record chain (and count) that
/// crosses files. A broken link is never a torn write. Gives the offset and kind of a break.
fn check_links(
    found: &[Found],
    i: usize,
    header: &format::SegmentHeader,
    replayed_any: bool,
    last_crc: u32,
    next_record: Option<u64>,
) -> std::result::Result<(), (u64, CorruptionKind)> {
    let f = &found[i];
    // A skipped sequence is reported where the header says more, if it does (as inspection
    // predicts it): the checks of the header come after it.
    let gap = i > 0 && f.sequence != found[i - 1].sequence + 1;
    if header.first_record > format::MAX_FIRST_RECORD {
        // No log writes this many records; the writer's count would overflow.
        return Err((
            format::FIRST_RECORD_OFFSET as u64,
            CorruptionKind::Malformed(format!(
                "first record {} is beyond the largest a log reaches ({})",
                header.first_record,
                format::MAX_FIRST_RECORD
            )),
        ));
    }
    if header.sequence != f.sequence || header.first_record != f.first_record {
        return Err((
            0,
            CorruptionKind::Malformed(format!(
                "header says sequence {} first record {}, the name says {} and {}",
                header.sequence, header.first_record, f.sequence, f.first_record
            )),
        ));
    }
    if replayed_any && header.prev_crc != last_crc {
        return Err((format::PREV_CRC_OFFSET as u64, CorruptionKind::Gap));
    }
    if next_record.is_some_and(|n| n != header.first_record) {
        return Err((format::FIRST_RECORD_OFFSET as u64, CorruptionKind::Gap));
    }
    if gap {
        return Err((0, CorruptionKind::Gap));
    }
    Ok(())
}

/// Records what the records at or after `from` of a sealed segment read through its footer
/// held, as [`repair::Evidence::record`] would from the records themselves.
fn footer_evidence(
    sealed: &segment::SealedScan,
    from: u64,
    evidence: &mut repair::Evidence,
) -> std::result::Result<(), String> {
    for (offset, part) in &sealed.footer.checkpoint {
        if *offset >= from {
            evidence.record(&Record::Checkpoint(part.clone()));
        }
    }
    sealed.footer.for_each_group(|group, items| {
        for item in items {
            match item {
                Item::Entries { first, count, terms, offsets } => {
                    // Offsets never decrease within a run: skip those before `from`.
                    let skip = Item::offsets(offsets).take_while(|&o| u64::from(o) < from).count();
                    let Some(term) = Item::terms(terms).skip(skip).max() else { continue };
                    let (first, count) = (first + skip as u64, count - skip as u32);
                    let hard_state = None;
                    evidence.record(&Record::EntryRun { group, first, count, term, hard_state });
                }
                Item::Record { offset, record } if *offset >= from => evidence.record(record),
                Item::Record { .. } => {}
            }
        }
        Ok(())
    })
}

/// Applies one accepted write to the state: the checkpoint a segment starts with (`first_write`),
/// or the records of one call. `first` says whether it starts the replay. On a contradiction,
/// says which record (position in `write`) and why.
pub(super) fn replay_write(
    state: &mut EngineState,
    sequence: u64,
    write: &[ScannedRecord],
    first_write: bool,
    first: bool,
) -> std::result::Result<(), (usize, String)> {
    let checkpoints = write.iter().filter(|r| matches!(r.record, Record::Checkpoint(_))).count();
    if first_write && checkpoints != write.len() {
        return Err((0, "a segment must start with a checkpoint".to_string()));
    }
    if checkpoints == write.len() {
        let parts: Vec<&[format::Checkpoint]> = write
            .iter()
            .map(|r| match &r.record {
                Record::Checkpoint(groups) => groups.as_slice(),
                _ => unreachable!("counted as checkpoints"),
            })
            .collect();
        return state.apply_checkpoint(&parts, first).map_err(|why| (0, why));
    }
    if first {
        return Err((0, "the log must start with a checkpoint".to_string()));
    }
    if checkpoints > 0 {
        let k = write.iter().position(|r| matches!(r.record, Record::Checkpoint(_))).unwrap_or(0);
        return Err((k, "a checkpoint inside a write of changes".to_string()));
    }
    // The writer writes a witness alone, after a sync: one inside a write is no write of its.
    if write.len() > 1
        && let Some(k) = write.iter().position(|r| matches!(r.record, Record::Witness))
    {
        return Err((k, "a witness inside a write of changes".to_string()));
    }
    let segment =
        u32::try_from(sequence).map_err(|_| (0, "segment sequence beyond 2^32".to_string()))?;
    for (k, record) in write.iter().enumerate() {
        let offset = u32::try_from(record.offset)
            .map_err(|_| (k, "record offset beyond 4 GiB".to_string()))?;
        state.apply(&record.record, Loc { segment, offset }).map_err(|why| (k, why))?;
    }
    Ok(())
}
