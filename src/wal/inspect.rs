//! Read-only inspection of a WAL directory: what `raftwal dump`, `verify`, `repair` and `stat`
//! show.
//!
//! [`inspect`] reads every segment and judges it with the functions opening uses: the scan
//! ([`scan_segment_of`]), the decision table ([`classify`], [`decide`]), the links between segments
//! and the replay rules. It predicts what [`crate::wal::Wal::open`] would do, in both recovery
//! modes, without doing it: it takes no lock, removes no temp file, truncates nothing and maps
//! nothing (segments are read with `read_at`, so a segment another process is appending to is
//! read safely; its unsynced tail may then look torn, which is what a crash at that moment would
//! leave).

use std::path::Path;

use crate::error::{CorruptionKind, Error, Result};
use crate::io::FileSystem;
use crate::options::{MAX_SEGMENT_SPAN_BYTES, WalOptions};
use crate::types::{HardState, SnapshotMetadata};
use crate::wal::format::{self, HeaderError, Record, SegmentHeader};
use crate::wal::recovery::{
    After, Case, Decision, Position, ScannedRecord, Stop, classify, decide, scan_segment_of,
};
use crate::wal::replay::replay_write;
use crate::wal::state::EngineState;

/// Whether the last footer record among `records` holds what `footer::build` makes of the
/// records before it; `None` when there is none.
fn footer_agrees(records: &[ScannedRecord]) -> Option<bool> {
    let at = records.iter().rposition(|r| matches!(r.record, Record::Footer(_)))?;
    let Record::Footer(payload) = &records[at].record else { unreachable!("found above") };
    let mut listing = crate::wal::format::Footer::default();
    for r in &records[..at] {
        listing.push_record(r.offset, r.more, &r.record);
    }
    Some(crate::wal::footer::build(&listing, records[at].offset).is_some_and(|b| b == *payload))
}

/// One segment file as found on disk, judged on its own and against the segment before it.
#[derive(Clone, Debug)]
pub struct SegmentReport {
    /// File name within the WAL directory.
    pub name: String,
    /// Sequence number from the name.
    pub sequence: u64,
    /// Ordinal of the segment's first record, from the name.
    pub first_record: u64,
    /// Length of the file (segments are preallocated, so mostly zeroes at the end).
    pub size_bytes: u64,
    /// The header, or why it was refused.
    pub header: Result<SegmentHeader, HeaderError>,
    /// Valid, chained records from the start.
    pub records: usize,
    /// Lowest and highest entry index of the inspected group in those records (`None`: none).
    pub entries: Option<(u64, u64)>,
    /// Entries of every group in those records.
    pub entry_count: u64,
    /// Bytes of header and valid records: where the scan stopped.
    pub valid_bytes: u64,
    /// End of the last non-zero byte: written data, valid or not.
    pub written_bytes: u64,
    /// What stopped the scan.
    pub stop: Stop,
    /// What lies after the stop.
    pub after: After,
    /// The recovery table row that applies (label, decision, rationale).
    pub case: &'static Case,
    /// A broken link to the segment before (offset, kind): a skipped sequence number, a header
    /// that disagrees with the name, or a record chain that does not continue.
    pub link: Option<(u64, CorruptionKind)>,
    /// Whether open keeps this segment (wholly or up to a cut).
    pub kept: bool,
    /// Lowest and highest index of the inspected group's entries in this segment's valid
    /// records that open drops (with `RecoveryMode::TruncateCorrupt` when the problem is corruption).
    pub dropped_entries: Option<(u64, u64)>,
    /// Written bytes that do not read as valid records (after the stop, or the whole segment when
    /// its header is bad): whatever entries they held cannot be named.
    pub unreadable_bytes: u64,
    /// Whether the segment's footer (its last valid footer record) is the one its records before
    /// it make (`footer::build`): `None` without one. A footer that is not would make an open
    /// through footers build a state the records do not hold.
    pub footer_agrees: Option<bool>,
}

/// What opening would do about the first problem in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The segment where it is.
    pub segment: String,
    /// Byte offset within that segment.
    pub offset: u64,
    /// What is wrong.
    pub kind: CorruptionKind,
    /// The recovery table row (`R1`…`R9`, `H1`…`H7`, `U1`…`U3`, `W1`, `W2`), or `link`
    /// (segments do not follow each other), `replay` (a valid record contradicts the log),
    /// `missing` (entries whose segments were deleted are still live).
    pub label: &'static str,
    /// Why the decision is what it is.
    pub reason: String,
    /// `TruncateTail`: open cuts it (a torn tail, never acknowledged). `Corruption`: open refuses
    /// in `RecoveryMode::Strict`.
    pub decision: Decision,
    /// What the cut drops: the torn tail for `TruncateTail`, what `RecoveryMode::TruncateCorrupt`
    /// drops for `Corruption`.
    pub cut: Cut,
    /// Whether the cut leaves a log that opens. `false` for `missing` and `fresh`, which no
    /// recovery mode repairs.
    pub fixable: bool,
}

/// What recovery drops at a problem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// The segment cut short and the offset from which its bytes are erased (`None` when the
    /// problem's segment is removed whole).
    pub truncated: Option<(String, u64)>,
    /// Bytes erased in the cut segment: from the offset to its last non-zero byte.
    pub erased_bytes: u64,
    /// Segments removed whole, in log order.
    pub removed: Vec<String>,
    /// The last entry index the log keeps.
    pub last_kept_index: u64,
    /// Lowest and highest index of the entries in dropped records that are readable.
    pub dropped_entries: Option<(u64, u64)>,
    /// Readable dropped records that are not entries (hard states, markers, checkpoints).
    pub dropped_other_records: usize,
    /// Whether bytes that do not read as records are dropped too: the entries they held, if any,
    /// cannot be named.
    pub drops_unreadable: bool,
    /// Upper bound of the entries the unreadable bytes can hold (`None`: unbounded). Segments
    /// hold many groups' writes, so no later segment bounds one group's entries: `None` whenever
    /// unreadable bytes are dropped.
    pub unreadable_bound: Option<u64>,
}

impl Cut {
    /// The entry indices affected: from the one after the last kept to the highest known
    /// (`None` as the upper end when unreadable bytes may hold higher ones), or `None` when no
    /// entry is affected.
    pub fn affected(&self) -> Option<(u64, Option<u64>)> {
        let first = self.last_kept_index.saturating_add(1);
        let readable = self.dropped_entries;
        if readable.is_none() && !self.drops_unreadable {
            return None;
        }
        let low = readable.map_or(first, |(lo, _)| lo.min(first));
        let known = readable.map(|(_, hi)| hi).into_iter().chain(self.unreadable_bound).max();
        let high =
            if self.drops_unreadable && self.unreadable_bound.is_none() { None } else { known };
        Some((low, high))
    }
}

/// The overall judgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every segment is accepted whole; open changes nothing.
    Clean,
    /// A torn tail (unsynced writes cut short): open cuts it, nothing acknowledged is lost.
    TornTail,
    /// Damage to durable data: open refuses in `RecoveryMode::Strict`.
    Corruption,
}

/// The state open would recover (up to the cut, if there is one): of the inspected group, and a
/// line per group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The inspected group.
    pub group: u64,
    /// Every group with state, sorted.
    pub groups: Vec<GroupSummary>,
    /// First live index (dummy + 1).
    pub first_index: u64,
    /// Last index (the dummy's when no entry is live).
    pub last_index: u64,
    /// The newest hard state.
    pub hard_state: HardState,
    /// The newest snapshot marker (index 0: none).
    pub snapshot: SnapshotMetadata,
}

/// One group's recovered state, in brief.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group.
    pub group: u64,
    /// First live index (dummy + 1).
    pub first_index: u64,
    /// Last index.
    pub last_index: u64,
    /// The newest hard state.
    pub hard_state: HardState,
    /// Index of the newest snapshot marker (0: none).
    pub snapshot_index: u64,
    /// Sequence of the segment holding its first live entry (`None`: no live entry): every
    /// segment from it on is pinned by this group.
    pub pinned_segment: Option<u64>,
}

/// Everything [`inspect`] found.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// Segments in sequence order.
    pub segments: Vec<SegmentReport>,
    /// Segments being prepared when a process stopped (`*.tmp`); open removes them.
    pub temp_files: Vec<String>,
    /// Files that are neither segments nor temp files (the lock file, kept `.broken` copies).
    pub other_files: Vec<String>,
    /// Oldest segments listed but deleted before they could be read: a live log purged them.
    pub vanished: Vec<String>,
    /// The first problem, as open meets it.
    pub problem: Option<Problem>,
    /// The state open would recover.
    pub summary: Summary,
    /// Valid records found in all segments.
    pub records: usize,
    /// Bytes of header and valid records in all segments.
    pub valid_bytes: u64,
}

impl Inspection {
    /// Clean, torn tail or corruption.
    pub fn verdict(&self) -> Verdict {
        match &self.problem {
            None => Verdict::Clean,
            Some(p) if p.decision == Decision::TruncateTail && p.fixable => Verdict::TornTail,
            Some(_) => Verdict::Corruption,
        }
    }
}

/// What [`inspect_with`] reports while it reads.
#[derive(Debug)]
pub enum Event<'a> {
    /// A segment was read and judged; its records follow.
    Segment(&'a SegmentReport),
    /// A valid record of the segment reported last.
    Record {
        /// Its segment.
        segment: &'a SegmentReport,
        /// The record, with its offset.
        record: &'a ScannedRecord,
        /// Whether open keeps it.
        kept: bool,
    },
}

/// Inspects the WAL in `dir` (see the module documentation). Damage is reported in the
/// [`Inspection`]; the errors are I/O errors, and `Corruption` with `BadLength` for a segment file
/// longer than any raftwal writes (4 GiB), which is not read into memory.
pub fn inspect(fs: &dyn FileSystem, dir: &Path, options: &WalOptions) -> Result<Inspection> {
    inspect_with(fs, dir, options, |_| {})
}

struct Found {
    sequence: u64,
    first_record: u64,
    name: String,
}

/// Like [`inspect`], calling `visit` for each segment and each valid record in log order, one
/// segment in memory at a time (for dumps and progress). Entry ranges are group 0's.
pub fn inspect_with(
    fs: &dyn FileSystem,
    dir: &Path,
    options: &WalOptions,
    visit: impl FnMut(Event<'_>),
) -> Result<Inspection> {
    inspect_group(fs, dir, options, 0, visit)
}

/// Like [`inspect_with`], with entry ranges and the summary of `group`.
pub fn inspect_group(
    fs: &dyn FileSystem,
    dir: &Path,
    options: &WalOptions,
    group: u64,
    mut visit: impl FnMut(Event<'_>),
) -> Result<Inspection> {
    let mut found = Vec::new();
    let mut temp_files = Vec::new();
    let mut other_files = Vec::new();
    for name in fs.list(dir)? {
        if name.ends_with(format::TEMP_SUFFIX) {
            temp_files.push(name);
        } else if let Some((sequence, first_record)) = format::parse_segment_name(&name) {
            found.push(Found { sequence, first_record, name });
        } else {
            other_files.push(name);
        }
    }
    found.sort_by_key(|f| f.sequence);

    let mut state = EngineState::default();
    let mut replayed_any = false;
    // CRC the next segment's header must name; `None` until a record was seen (as in replay).
    let mut chain: Option<u32> = None;
    // Ordinal the next segment's first record must have; `None` until a segment was replayed.
    let mut next_record: Option<u64> = None;
    let mut problem: Option<Problem> = None;
    let mut segments = Vec::with_capacity(found.len());
    let mut vanished = Vec::new();
    // Sequence of the segment read before.
    let mut previous: Option<u64> = None;
    let (mut total_records, mut total_valid) = (0, 0);

    for (i, f) in found.iter().enumerate() {
        // As open sees it: the newest segment is the only one when none was read before it.
        let position = match (i + 1 == found.len(), segments.is_empty()) {
            (true, true) => Position::Only,
            (true, false) => Position::Last,
            (false, _) => Position::Sealed,
        };
        let path = dir.join(&f.name);
        let file = match fs.open(&path) {
            Ok(file) => file,
            // Deleted since the listing: a live log purges its oldest segments first, so what
            // is left is still a suffix of the log.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && segments.is_empty() => {
                vanished.push(f.name.clone());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let size_bytes = file.len()?;
        if size_bytes > MAX_SEGMENT_SPAN_BYTES {
            // raftwal never writes a segment this long, and offsets beyond it do not fit the
            // index: refuse to read it into memory.
            return Err(Error::Corruption {
                segment: path,
                offset: 0,
                kind: CorruptionKind::BadLength(size_bytes),
            });
        }
        let mut bytes = vec![0u8; size_bytes as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let scan = scan_segment_of(&bytes, options.max_record_bytes, f.sequence);
        let case = decide(position, classify(&scan), scan.after.into());
        let written_bytes = crate::wal::recovery::written_end(&bytes) as u64;
        drop(bytes);

        // Links, as replay checks them.
        let mut link = None;
        if previous.is_some_and(|sequence| sequence.checked_add(1) != Some(f.sequence)) {
            link = Some((0, CorruptionKind::Gap));
        }
        previous = Some(f.sequence);
        if let Ok(header) = &scan.header {
            if header.sequence != f.sequence || header.first_record != f.first_record {
                link = Some((
                    0,
                    CorruptionKind::Malformed(format!(
                        "header says sequence {} first record {}, the name says {} and {}",
                        header.sequence, header.first_record, f.sequence, f.first_record
                    )),
                ));
            } else if chain.is_some_and(|crc| crc != header.prev_crc) {
                link = Some((format::PREV_CRC_OFFSET as u64, CorruptionKind::Gap));
            } else if next_record.is_some_and(|n| n != header.first_record) {
                link = Some((format::FIRST_RECORD_OFFSET as u64, CorruptionKind::Gap));
            }
        }
        // The next segment's link can be checked only against a segment accepted whole.
        chain = match case.decision {
            Decision::Accept => scan.records.last().map(|r| r.crc).or(chain),
            Decision::TruncateTail | Decision::Corruption => None,
        };
        next_record = match (&scan.header, case.decision) {
            (Ok(header), Decision::Accept) => Some(header.first_record + scan.records.len() as u64),
            _ => None,
        };

        // Records from `kept_until` on (and the whole segment when `None`) are dropped.
        let first_problem_here = problem.is_none();
        let mut kept_until: Option<u64> = None;
        if first_problem_here {
            let stop_kind = match &scan.stop {
                Stop::Damaged(kind) => kind.clone(),
                // Zeroes before valid records: torn when cut, lost durable bytes when refused.
                Stop::End if case.decision == Decision::TruncateTail => CorruptionKind::Torn,
                Stop::End => CorruptionKind::ChecksumMismatch,
            };
            let cut_offset = scan.header.is_ok().then_some(scan.stop_offset);
            if let Some((offset, kind)) = &link {
                problem = Some(new_problem(
                    &f.name,
                    *offset,
                    kind.clone(),
                    "link",
                    "segments must follow each other: consecutive sequences, names that match \
                     headers, one record chain across files; a broken link is never a torn write"
                        .into(),
                    Decision::Corruption,
                    None,
                ));
            } else if case.decision != Decision::Accept {
                problem = Some(new_problem(
                    &f.name,
                    scan.stop_offset,
                    stop_kind,
                    case.label,
                    case.rationale.into(),
                    case.decision,
                    cut_offset,
                ));
                kept_until = cut_offset;
            } else {
                kept_until = Some(u64::MAX);
            }
            if link.is_none() && scan.header.is_ok() {
                // Replay what open keeps, write by write, stopping where open stops.
                let keep = scan
                    .records
                    .iter()
                    .take_while(|r| kept_until.is_none_or(|until| r.offset < until))
                    .count();
                let records = &scan.records[..keep];
                let mut at = 0;
                // Bounded: each pass consumes at least one record.
                while at < records.len() {
                    let Some(last) = records[at..].iter().position(|r| !r.more) else {
                        // The write's last record is missing.
                        let offset = records[at].offset;
                        kept_until = Some(offset);
                        let (label, reason, decision) = if position == Position::Sealed {
                            (
                                "W2",
                                "a write whose last record is missing in a sealed segment: \
                                 sealed segments were synced whole",
                                Decision::Corruption,
                            )
                        } else {
                            (
                                "W1",
                                "a write whose last record is missing at the end of the log: \
                                 torn by a crash before its sync, never acknowledged",
                                Decision::TruncateTail,
                            )
                        };
                        match &mut problem {
                            Some(p) => p.cut.truncated = Some((f.name.clone(), offset)),
                            None => {
                                problem = Some(new_problem(
                                    &f.name,
                                    offset,
                                    CorruptionKind::Torn,
                                    label,
                                    reason.into(),
                                    decision,
                                    Some(offset),
                                ));
                            }
                        }
                        break;
                    };
                    let write = &records[at..at + last + 1];
                    let outcome =
                        replay_write(&mut state, f.sequence, write, at == 0, !replayed_any);
                    if let Err((k, why)) = outcome {
                        let offset = write[0].offset;
                        kept_until = Some(offset);
                        match &mut problem {
                            // Strict refuses at the table's spot; TruncateCorrupt cuts here.
                            Some(p) if p.decision == Decision::Corruption => {
                                p.cut.truncated = Some((f.name.clone(), offset));
                            }
                            _ => {
                                problem = Some(new_problem(
                                    &f.name,
                                    write[k].offset,
                                    CorruptionKind::Malformed(why),
                                    "replay",
                                    "the record passed its CRC but contradicts the log replayed \
                                     before it"
                                        .into(),
                                    Decision::Corruption,
                                    Some(offset),
                                ));
                            }
                        }
                        break;
                    }
                    replayed_any = true;
                    at += last + 1;
                }
            }
        }

        let kept_until = kept_until.unwrap_or(0);
        let report = SegmentReport {
            name: f.name.clone(),
            sequence: f.sequence,
            first_record: f.first_record,
            size_bytes,
            header: scan.header,
            records: scan.records.len(),
            entries: entry_range(group, scan.records.iter()),
            entry_count: scan
                .records
                .iter()
                .map(|r| match &r.record {
                    Record::Entries { entries, .. } => entries.len() as u64,
                    _ => 0,
                })
                .sum(),
            valid_bytes: scan.stop_offset,
            written_bytes,
            stop: scan.stop.clone(),
            after: scan.after,
            case,
            link,
            kept: kept_until > 0,
            dropped_entries: entry_range(
                group,
                scan.records.iter().filter(|r| r.offset >= kept_until),
            ),
            unreadable_bytes: written_bytes.saturating_sub(if scan.header.is_ok() {
                scan.stop_offset
            } else {
                0
            }),
            footer_agrees: footer_agrees(&scan.records),
        };
        total_records += report.records;
        total_valid += report.valid_bytes;

        if let Some(p) = problem.as_mut().filter(|_| kept_until != u64::MAX) {
            let cut = &mut p.cut;
            let cut_here = first_problem_here && kept_until > 0;
            if cut_here {
                cut.erased_bytes = written_bytes.saturating_sub(kept_until);
            } else {
                cut.removed.push(f.name.clone());
            }
            if report.unreadable_bytes > 0 {
                // Segments of many groups bound no group's entries.
                cut.drops_unreadable = true;
                cut.unreadable_bound = None;
            }
            cut.dropped_entries = merge(cut.dropped_entries, report.dropped_entries);
            cut.dropped_other_records += scan
                .records
                .iter()
                .filter(|r| r.offset >= kept_until && !matches!(r.record, Record::Entries { .. }))
                .count();
        }

        visit(Event::Segment(&report));
        for record in &scan.records {
            visit(Event::Record { segment: &report, record, kept: record.offset < kept_until });
        }
        segments.push(report);
    }

    let focus = state.group(group);
    let last_index = focus.map_or(0, |g| g.index.last_index());
    let mut unrecoverable = None;
    if !state.groups_with_missing().is_empty() {
        unrecoverable = Some((
            found.first().map_or(String::new(), |f| f.name.clone()),
            CorruptionKind::Missing,
            "missing",
            "the first segment's checkpoint names entries that lay in deleted segments, and no \
             later record compacts them away",
        ));
    }
    if let Some((segment, kind, label, reason)) = unrecoverable {
        match &mut problem {
            Some(p) => p.fixable = false,
            None => {
                let mut p = new_problem(
                    &segment,
                    0,
                    kind,
                    label,
                    reason.into(),
                    Decision::Corruption,
                    None,
                );
                p.fixable = false;
                problem = Some(p);
            }
        }
    }
    if let Some(p) = &mut problem {
        p.cut.last_kept_index = last_index;
    }
    Ok(Inspection {
        segments,
        temp_files,
        other_files,
        vanished,
        problem,
        summary: Summary {
            group,
            groups: state
                .group_ids()
                .into_iter()
                .filter_map(|id| {
                    let g = state.group(id)?;
                    Some(GroupSummary {
                        group: id,
                        first_index: g.index.dummy_index().saturating_add(1),
                        last_index: g.index.last_index(),
                        hard_state: g.hard_state,
                        snapshot_index: g.snapshot_point().0,
                        pinned_segment: g.index.first_loc().map(|loc| u64::from(loc.segment)),
                    })
                })
                .collect(),
            first_index: focus.map_or(1, |g| g.index.dummy_index().saturating_add(1)),
            last_index,
            hard_state: focus.map(|g| g.hard_state).unwrap_or_default(),
            snapshot: focus.map(|g| g.snapshot()).unwrap_or_default(),
        },
        records: total_records,
        valid_bytes: total_valid,
    })
}

fn new_problem(
    segment: &str,
    offset: u64,
    kind: CorruptionKind,
    label: &'static str,
    reason: String,
    decision: Decision,
    cut_offset: Option<u64>,
) -> Problem {
    Problem {
        segment: segment.to_string(),
        offset,
        kind,
        label,
        reason,
        decision,
        cut: Cut {
            truncated: cut_offset.map(|offset| (segment.to_string(), offset)),
            ..Cut::default()
        },
        fixable: true,
    }
}

/// Lowest and highest entry index of `group` in `records`.
fn entry_range<'a>(
    group: u64,
    records: impl Iterator<Item = &'a ScannedRecord>,
) -> Option<(u64, u64)> {
    records
        .filter_map(|r| match &r.record {
            Record::Entries { group: g, entries, .. } if *g == group => {
                Some((entries.first()?.index, entries.last()?.index))
            }
            _ => None,
        })
        .reduce(|(lo, hi), (a, b)| (lo.min(a), hi.max(b)))
}

fn merge(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some((lo, hi)), Some((a, b))) => Some((lo.min(a), hi.max(b))),
        (x, None) | (None, x) => x,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::io::{CrashFs, Fs};
    use crate::options::RecoveryMode;
    use crate::types::Entry;
    use crate::wal::Wal;
    use crate::wal::format::FRAME_HEADER_LEN;
    use crate::wal::recovery::scan_segment;

    fn options() -> WalOptions {
        WalOptions {
            segment_size_bytes: 4096,
            max_record_bytes: 2048,
            prepare_in_background: false,
            ..WalOptions::default()
        }
    }

    fn dir() -> PathBuf {
        PathBuf::from("/node/wal")
    }

    fn open(fs: &CrashFs, mode: RecoveryMode) -> Result<Wal> {
        let shared: Fs = Arc::new(fs.clone());
        Wal::open(shared, &dir(), WalOptions { recovery_mode: mode, ..options() })
    }

    /// Opens reading every segment whole, as inspection does (no footers).
    fn open_scanning(fs: &CrashFs, mode: RecoveryMode) -> Result<Wal> {
        let shared: Fs = Arc::new(fs.clone());
        let options = WalOptions { recovery_mode: mode, read_footers: false, ..options() };
        Wal::open(shared, &dir(), options)
    }

    /// A vote (which seals the first segment), then 60 entries of 100 bytes in batches of 3,
    /// each with a hard state, over several 4 KiB segments; compacted to 10. Closed cleanly
    /// when `close`, else dropped after the last save.
    fn build(close: bool) -> CrashFs {
        let fs = CrashFs::new();
        let wal = open(&fs, RecoveryMode::Strict).unwrap();
        wal.save(Some(&HardState { term: 2, vote: 1, commit: 0 }), &[]).unwrap();
        for batch in 0..20u64 {
            let es: Vec<Entry> = (batch * 3 + 1..=batch * 3 + 3)
                .map(|i| Entry::new(i, 2, vec![i as u8; 100]))
                .collect();
            let hs = HardState { term: 2, vote: 1, commit: batch * 3 };
            wal.save(Some(&hs), &es).unwrap();
        }
        wal.compact(10).unwrap();
        if close {
            wal.close().unwrap();
        }
        fs
    }

    fn all_records(fs: &CrashFs) -> (Inspection, Vec<(String, ScannedRecord, bool)>) {
        let mut seen = Vec::new();
        let inspection = inspect_with(fs, &dir(), &options(), |event| {
            if let Event::Record { segment, record, kept } = event {
                seen.push((segment.name.clone(), record.clone(), kept));
            }
        })
        .unwrap();
        (inspection, seen)
    }

    fn segment_path(inspection: &Inspection, k: usize) -> PathBuf {
        dir().join(&inspection.segments[k].name)
    }

    #[test]
    fn a_clean_log_is_reported_whole() {
        let fs = build(true);
        fs.write_file_raw(&dir().join("0000000000000099.tmp"), b"prepared").unwrap();

        let (inspection, records) = all_records(&fs);

        assert_eq!(inspection.verdict(), Verdict::Clean, "{:?}", inspection.problem);
        assert_eq!(inspection.problem, None);
        assert!(inspection.segments.len() > 2, "the workload rolls over several segments");
        assert!(inspection.segments.iter().all(|s| s.kept && s.case.label == "R1"));
        assert!(inspection.temp_files.contains(&"0000000000000099.tmp".to_string()));
        // Besides the lock, only released segments kept for reuse.
        assert!(
            inspection
                .other_files
                .iter()
                .all(|f| f == crate::wal::LOCK_FILE || f.ends_with(format::POOL_SUFFIX)),
            "{:?}",
            inspection.other_files
        );
        let wal = open(&fs, RecoveryMode::Strict).unwrap();
        let summary = &inspection.summary;
        assert_eq!(
            (summary.first_index, summary.last_index),
            (wal.first_index(), wal.last_index())
        );
        assert_eq!(summary.hard_state, wal.hard_state());
        assert_eq!((summary.first_index, summary.last_index), (11, 60));

        assert_eq!(records.len(), inspection.records);
        assert!(records.iter().all(|(_, _, kept)| *kept));
        // Every entry still in a segment, in order, once per write.
        let indices: Vec<u64> = records
            .iter()
            .filter_map(|(_, r, _)| match &r.record {
                Record::Entries { entries: es, .. } => Some(es.iter().map(|e| e.index)),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(indices.windows(2).all(|w| w[1] == w[0] + 1), "entries in order: {indices:?}");
        assert_eq!(indices.last(), Some(&60));
    }

    #[test]
    fn inspection_changes_no_byte_and_no_name() {
        let fs = build(false);
        fs.write_file_raw(&dir().join("0000000000000099.tmp"), b"prepared").unwrap();
        // Tear the last record so that open would cut: inspection must not.
        let (inspection, _) = all_records(&fs);
        let last = segment_path(&inspection, inspection.segments.len() - 1);
        let mut bytes = fs.read_file(&last).unwrap();
        bytes.truncate(inspection.segments.last().unwrap().valid_bytes as usize - 3);
        fs.write_file_raw(&last, &bytes).unwrap();
        let before: Vec<_> = fs.list_all().into_iter().map(|p| (fs.read_file(&p), p)).collect();

        let inspection = inspect(&fs, &dir(), &options()).unwrap();

        assert_eq!(inspection.verdict(), Verdict::TornTail);
        let after: Vec<_> = fs.list_all().into_iter().map(|p| (fs.read_file(&p), p)).collect();
        assert_eq!(before, after, "inspection wrote, removed or renamed something");
    }

    #[test]
    fn a_log_held_open_by_a_writer_can_be_inspected() {
        let fs = build(true);
        let wal = open(&fs, RecoveryMode::Strict).unwrap();
        let inspection = inspect(&fs, &dir(), &options()).unwrap();
        assert_eq!(inspection.verdict(), Verdict::Clean);
        assert_eq!(inspection.summary.last_index, wal.last_index());
    }

    #[test]
    fn a_flipped_bit_in_a_sealed_segment_is_corruption_as_open_finds_it() {
        let fs = build(true);
        let (clean, records) = all_records(&fs);
        // The third record of the second segment that has a payload (a witness has none), a
        // byte into it.
        let victim_segment = clean.segments[1].name.clone();
        let in_segment: Vec<&ScannedRecord> =
            records.iter().filter(|(s, _, _)| *s == victim_segment).map(|(_, r, _)| r).collect();
        let victim_at = (0..in_segment.len())
            .filter(|&k| !matches!(in_segment[k].record, Record::Witness))
            .nth(2)
            .unwrap();
        let victim = in_segment[victim_at].clone();
        let clean_state = {
            let wal = open(&fs, RecoveryMode::Strict).unwrap();
            let (first, last) = (wal.first_index(), wal.last_index());
            (first, last, wal.hard_state(), wal.entries(first, last + 1, u64::MAX).unwrap())
        };
        let offset = victim.offset + FRAME_HEADER_LEN as u64 + 1;
        fs.flip_bit(&dir().join(&victim_segment), offset * 8).unwrap();
        // A write is kept whole or not at all: the cut is at the start of the victim's write.
        let mut write_start = victim_at;
        while write_start > 0 && in_segment[write_start - 1].more {
            write_start -= 1;
        }
        let cut_at = in_segment[write_start].offset;

        let (inspection, records) = all_records(&fs);

        assert_eq!(inspection.verdict(), Verdict::Corruption);
        let problem = inspection.problem.clone().unwrap();
        assert_eq!(problem.segment, victim_segment);
        assert_eq!(problem.offset, victim.offset);
        assert_eq!(problem.kind, CorruptionKind::ChecksumMismatch);
        assert_eq!(problem.label, "R8");
        assert!(problem.fixable);
        let later: Vec<String> = clean.segments[2..].iter().map(|s| s.name.clone()).collect();
        assert_eq!(problem.cut.truncated, Some((victim_segment.clone(), cut_at)));
        assert_eq!(problem.cut.removed, later);
        assert!(problem.cut.drops_unreadable);
        let damaged = &inspection.segments[1];
        assert!(damaged.kept, "kept up to the damaged record's write");
        assert_eq!(damaged.records, write_start, "the records before the damaged write");
        assert!(damaged.unreadable_bytes > 0, "the damaged record and those after it");
        assert_eq!(inspection.segments[2].dropped_entries, inspection.segments[2].entries);
        assert_eq!(inspection.segments[0].dropped_entries, None);
        // A segment read only up to damage cannot vouch for the next one's chain, nor fault it.
        assert_eq!(inspection.segments[2].link, None);
        // Records after the damage are dropped, those before it kept.
        for (segment, record, kept) in &records {
            let before =
                *segment < victim_segment || (*segment == victim_segment && record.offset < cut_at);
            assert_eq!(*kept, before, "{segment} at {}", record.offset);
        }

        // An open that reads every segment agrees: Strict refuses at that spot.
        match open_scanning(&fs, RecoveryMode::Strict) {
            Err(Error::Corruption { segment, offset, kind }) => {
                assert_eq!(segment, PathBuf::from(&victim_segment));
                assert_eq!((offset, kind), (victim.offset, CorruptionKind::ChecksumMismatch));
            }
            other => panic!("open must refuse, got {other:?}"),
        }
        // An open through footers does not read the payload. The footer holds its own copy of
        // every record but the entries' data, so the damaged record changes nothing unless it
        // holds entries, whose read then refuses, naming the same spot.
        {
            let wal = open(&fs, RecoveryMode::Strict).unwrap();
            let rows = &wal.recovery_report().rows;
            assert_eq!(rows[1], "F1", "the damaged sealed segment was replayed from its footer");
            assert_eq!(
                (wal.first_index(), wal.last_index(), wal.hard_state()),
                (clean_state.0, clean_state.1, clean_state.2),
                "the state comes from the footer"
            );
            let read = wal.entries(clean_state.0, clean_state.1 + 1, u64::MAX);
            if matches!(victim.record, Record::Entries { .. }) {
                match read {
                    Err(Error::Corruption { segment, offset, kind }) => {
                        assert_eq!(segment, PathBuf::from(&victim_segment));
                        assert_eq!(
                            (offset, kind),
                            (victim.offset, CorruptionKind::ChecksumMismatch)
                        );
                    }
                    other => panic!("reading the damaged entries must fail, got {other:?}"),
                }
            } else {
                assert_eq!(read.unwrap(), clean_state.3, "no entry lies in the damaged record");
            }
        }
        // And TruncateCorrupt drops exactly what the cut says.
        let (last_kept, affected) = (problem.cut.last_kept_index, problem.cut.affected().unwrap());
        assert_eq!(affected.0, last_kept + 1);
        // Segments hold many groups' writes: no segment bounds the entries unreadable bytes held.
        assert_eq!(affected.1, None, "unreadable bytes may hold any entry");
        let wal = open_scanning(&fs, RecoveryMode::TruncateCorrupt).unwrap();
        assert_eq!(wal.last_index(), last_kept);
        let report = wal.recovery_report();
        assert_eq!(report.truncated, Some((victim_segment, cut_at, "R8")));
        let mut removed = report.removed.clone();
        removed.reverse();
        assert_eq!(removed, later);
    }

    #[test]
    fn a_torn_last_record_is_a_tail_open_cuts() {
        let fs = build(false);
        let (clean, _) = all_records(&fs);
        let last = clean.segments.last().unwrap();
        let path = dir().join(&last.name);
        // Cut the file in the middle of its last record's payload.
        let mut bytes = fs.read_file(&path).unwrap();
        let scan = scan_segment(&bytes, options().max_record_bytes);
        // The last write (the sync's witness after it goes too).
        let torn = scan.records.iter().rev().find(|r| r.record != Record::Witness).unwrap().clone();
        bytes.truncate(torn.offset as usize + FRAME_HEADER_LEN + 2);
        fs.write_file_raw(&path, &bytes).unwrap();

        let inspection = inspect(&fs, &dir(), &options()).unwrap();

        assert_eq!(inspection.verdict(), Verdict::TornTail);
        let problem = inspection.problem.clone().unwrap();
        assert_eq!((problem.segment.as_str(), problem.offset), (last.name.as_str(), torn.offset));
        assert_eq!((problem.label, problem.kind.clone()), ("R3", CorruptionKind::Torn));
        assert_eq!(problem.decision, Decision::TruncateTail);
        assert!(problem.cut.removed.is_empty());
        assert_eq!(
            problem.cut.affected().map(|(from, _)| from),
            Some(inspection.summary.last_index + 1)
        );

        let wal = open(&fs, RecoveryMode::Strict).unwrap();
        assert_eq!(wal.recovery_report().truncated, Some((last.name.clone(), torn.offset, "R3")));
        assert_eq!(wal.last_index(), inspection.summary.last_index);
        assert_eq!(wal.hard_state(), inspection.summary.hard_state);
    }

    #[test]
    fn a_missing_segment_is_a_gap_open_refuses() {
        let fs = build(true);
        let (clean, _) = all_records(&fs);
        let gone = segment_path(&clean, 1);
        let shared: Fs = Arc::new(fs.clone());
        shared.remove_file(&gone).unwrap();

        let inspection = inspect(&fs, &dir(), &options()).unwrap();

        assert_eq!(inspection.verdict(), Verdict::Corruption);
        let problem = inspection.problem.clone().unwrap();
        assert_eq!((problem.label, problem.kind.clone()), ("link", CorruptionKind::Gap));
        assert_eq!(problem.segment, clean.segments[2].name);
        assert_eq!(problem.cut.truncated, None, "the segment after the gap is removed whole");
        // The sequence skips, and so does the record chain (checked last, as open does).
        let at = format::PREV_CRC_OFFSET as u64;
        assert_eq!(inspection.segments[1].link, Some((at, CorruptionKind::Gap)));
        assert_eq!(problem.offset, at);
        match open(&fs, RecoveryMode::Strict) {
            Err(Error::Corruption { segment, offset, kind }) => {
                assert_eq!(segment, PathBuf::from(&clean.segments[2].name));
                assert_eq!((offset, kind), (at, CorruptionKind::Gap));
            }
            other => panic!("open must refuse, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_or_missing_directory() {
        let fs = CrashFs::new();
        let shared: Fs = Arc::new(fs.clone());
        shared.create_dir_all(&dir()).unwrap();
        let inspection = inspect(&fs, &dir(), &options()).unwrap();
        assert_eq!(inspection.verdict(), Verdict::Clean);
        assert!(inspection.segments.is_empty());
        assert_eq!((inspection.summary.first_index, inspection.summary.last_index), (1, 0));
        let missing = inspect(&fs, Path::new("/nowhere"), &options());
        assert!(missing.is_err(), "a missing directory is an I/O error, got {missing:?}");
    }

    /// A one-segment log written record by record, each durable before the next.
    fn write_segment(fs: &CrashFs, records: &[Record]) -> String {
        let name = format::segment_name(1, 1);
        let mut bytes =
            SegmentHeader { sequence: 1, first_record: 1, prev_crc: 0, recycled: false }
                .encode()
                .to_vec();
        let mut prev = 0;
        for record in records {
            let durable = bytes.len() as u64;
            prev = format::append_record(
                &mut bytes,
                record.record_type(),
                0,
                1,
                prev,
                durable,
                |out| record.encode_payload(out),
            );
        }
        bytes.resize(4096, 0);
        fs.write_file_raw(&dir().join(&name), &bytes).unwrap();
        name
    }

    #[test]
    fn a_valid_record_that_contradicts_the_log_is_corruption_open_cuts_only_when_forced() {
        let fs = CrashFs::new();
        let stray = Record::Entries {
            group: 0,
            entries: vec![Entry::new(5, 1, "does not attach")],
            hard_state: None,
        };
        let name = write_segment(&fs, &[Record::Checkpoint(vec![]), stray]);
        let offset =
            scan_segment(&fs.read_file(&dir().join(&name)).unwrap(), 2048).records[1].offset;

        let inspection = inspect(&fs, &dir(), &options()).unwrap();

        assert_eq!(inspection.verdict(), Verdict::Corruption);
        let problem = inspection.problem.clone().unwrap();
        assert_eq!((problem.label, problem.offset), ("replay", offset));
        assert!(
            matches!(problem.kind, CorruptionKind::Malformed(_)),
            "a contradiction is malformed, got {:?}",
            problem.kind
        );
        assert_eq!(problem.cut.truncated, Some((name.clone(), offset)));
        assert_eq!(problem.cut.dropped_entries, Some((5, 5)));
        assert!(inspection.segments[0].kept, "the checkpoint before the record is kept");
        match open(&fs, RecoveryMode::Strict) {
            Err(Error::Corruption { offset: at, kind: CorruptionKind::Malformed(_), .. }) => {
                assert_eq!(at, offset);
            }
            other => panic!("open must refuse, got {other:?}"),
        }
        let wal = open(&fs, RecoveryMode::TruncateCorrupt).unwrap();
        assert_eq!(wal.recovery_report().truncated, Some((name, offset, "R9")));
        assert_eq!(wal.last_index(), problem.cut.last_kept_index);
    }

    #[test]
    fn entries_of_deleted_segments_still_live_are_missing_and_not_fixable() {
        let fs = CrashFs::new();
        let checkpoint = format::Checkpoint { last_index: 10, ..Default::default() };
        write_segment(&fs, &[Record::Checkpoint(vec![checkpoint])]);

        let inspection = inspect(&fs, &dir(), &options()).unwrap();

        assert_eq!(inspection.verdict(), Verdict::Corruption);
        let problem = inspection.problem.clone().unwrap();
        assert_eq!((problem.label, problem.kind.clone()), ("missing", CorruptionKind::Missing));
        assert!(!problem.fixable, "no recovery mode brings deleted entries back");
        for mode in [RecoveryMode::Strict, RecoveryMode::TruncateCorrupt] {
            match open(&fs, mode) {
                Err(Error::Corruption { kind, .. }) => assert_eq!(kind, CorruptionKind::Missing),
                other => panic!("open in {mode:?} must refuse, got {other:?}"),
            }
        }
    }

    /// Lists one more, older segment than there is: what a reader sees when a live log deletes
    /// its oldest segment between the listing and the read.
    #[derive(Debug)]
    struct PurgedWhileListing(CrashFs);

    impl FileSystem for PurgedWhileListing {
        fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            self.0.create_dir_all(dir)
        }
        fn open(&self, path: &Path) -> std::io::Result<Arc<dyn crate::io::File>> {
            self.0.open(path)
        }
        fn create(&self, path: &Path) -> std::io::Result<Arc<dyn crate::io::File>> {
            self.0.create(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.0.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            self.0.remove_file(path)
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            let mut names = self.0.list(dir)?;
            names.insert(0, format::segment_name(0, 1));
            Ok(names)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.0.sync_dir(dir)
        }
        fn try_lock(&self, path: &Path) -> std::io::Result<Option<crate::io::DirLock>> {
            self.0.try_lock(path)
        }
    }

    #[test]
    fn a_segment_purged_while_listing_is_skipped_not_a_gap() {
        let fs = build(true);
        let (clean, _) = all_records(&fs);

        let inspection = inspect(&PurgedWhileListing(fs), &dir(), &options()).unwrap();

        assert_eq!(inspection.vanished, vec![format::segment_name(0, 1)]);
        assert_eq!(inspection.verdict(), Verdict::Clean);
        assert_eq!(inspection.segments.len(), clean.segments.len());
        assert_eq!(inspection.summary, clean.summary);
    }

    #[test]
    fn names_at_the_end_of_the_sequence_space_are_a_gap_not_an_overflow() {
        let fs = CrashFs::new();
        for first_index in [1, 2] {
            let name = format::segment_name(u64::MAX, first_index);
            fs.write_file_raw(&dir().join(name), &[0u8; 4096]).unwrap();
        }

        let inspection = inspect(&fs, &dir(), &options()).unwrap();

        assert_eq!(inspection.segments.len(), 2);
        assert_eq!(inspection.segments[1].link, Some((0, CorruptionKind::Gap)));
        assert_eq!(inspection.verdict(), Verdict::Corruption);
    }

    #[test]
    fn a_damaged_header_of_the_only_segment_is_corruption_as_open_finds_it() {
        let fs = CrashFs::new();
        let wal = open(&fs, RecoveryMode::Strict).unwrap();
        // No hard state: a term or vote change would seal the segment.
        wal.save(None, &[Entry::new(1, 3, "x")]).unwrap();
        drop(wal);
        let (clean, _) = all_records(&fs);
        assert_eq!(clean.segments.len(), 1);
        let name = clean.segments[0].name.clone();
        // Its first sector zeroed: the header and the records in it.
        let mut bytes = fs.read_file(&dir().join(&name)).unwrap();
        bytes[..512].fill(0);
        fs.write_file_raw(&dir().join(&name), &bytes).unwrap();

        let inspection = inspect(&fs, &dir(), &options()).unwrap();

        assert_eq!(inspection.verdict(), Verdict::Corruption);
        let problem = inspection.problem.clone().unwrap();
        assert_eq!((problem.label, problem.segment.as_str()), ("H6", name.as_str()));
        match open(&fs, RecoveryMode::Strict) {
            Err(Error::Corruption { segment, offset, .. }) => {
                assert_eq!((segment, offset), (PathBuf::from(&name), 0));
            }
            other => panic!("open must refuse, got {other:?}"),
        }
    }

    #[test]
    fn a_hostile_segment_is_refused_by_inspection_and_open_alike() {
        let fs = CrashFs::new();
        let wal = open(&fs, RecoveryMode::Strict).unwrap();
        wal.save(None, &[Entry::new(1, 1, "x")]).unwrap();
        drop(wal);
        let (clean, _) = all_records(&fs);
        let path = segment_path(&clean, 0);
        let mut bytes = fs.read_file(&path).unwrap();
        let from = (clean.segments[0].valid_bytes as usize + 8).next_multiple_of(8);
        bytes.truncate(from);
        // Every 32 bytes a candidate frame of type 2 whose 3000-byte payload fails its CRC.
        let rest = (64 << 10) - bytes.len();
        bytes.extend(crate::wal::recovery::tests::hostile_tail(rest, 3000, 1));
        fs.write_file_raw(&path, &bytes).unwrap();
        let wide = WalOptions { max_record_bytes: 4096, ..options() };

        let inspection = inspect(&fs, &dir(), &wide).unwrap();

        assert_eq!(inspection.verdict(), Verdict::Corruption);
        let problem = inspection.problem.clone().unwrap();
        assert_eq!(problem.label, "U2");
        let shared: Fs = Arc::new(fs.clone());
        match Wal::open(shared, &dir(), wide) {
            Err(Error::Corruption { segment, offset, .. }) => {
                assert_eq!(
                    (segment, offset),
                    (PathBuf::from(&clean.segments[0].name), problem.offset)
                );
            }
            other => panic!("open must refuse, got {other:?}"),
        }
    }

    #[test]
    fn affected_ranges_name_what_is_known() {
        let none = Cut { last_kept_index: 7, ..Cut::default() };
        assert_eq!(none.affected(), None);
        let torn = Cut { last_kept_index: 7, drops_unreadable: true, ..Cut::default() };
        assert_eq!(torn.affected(), Some((8, None)));
        let bounded = Cut { unreadable_bound: Some(12), ..torn.clone() };
        assert_eq!(bounded.affected(), Some((8, Some(12))));
        let readable = Cut { dropped_entries: Some((10, 30)), ..bounded };
        assert_eq!(readable.affected(), Some((8, Some(30))));
        let replaced =
            Cut { last_kept_index: 20, dropped_entries: Some((15, 18)), ..Cut::default() };
        assert_eq!(replaced.affected(), Some((15, Some(18))));
    }
}
