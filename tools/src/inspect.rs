//! `raftwal dump`, `verify`, `repair` and `stat`: the inspection commands, on top of
//! `raftwal::wal::inspect`.
//!
//! Exit codes (the same for every command):
//! - 0: clean (or repaired);
//! - 1: corruption: damage to durable data that open refuses, a damaged or missing snapshot file,
//!   or a repair that was refused;
//! - 2: usage or I/O error (clap uses 2 for bad arguments too);
//! - 3: a torn tail only: unsynced writes cut short by a crash, which open cuts; nothing
//!   acknowledged is lost.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use raftwal::io::{FileSystem, Fs, RealFs};
use raftwal::snapshot::SnapshotStore;
use raftwal::snapshot::format::snapshot_name;
use raftwal::wal::Engine;
use raftwal::wal::format::{Checkpoint, Record, SEGMENT_SUFFIX};
use raftwal::wal::inspect::{Event, Inspection, Problem, SegmentReport, Verdict, inspect_group};
use raftwal::wal::recovery::{Decision, ScannedRecord, Stop};
use raftwal::{Entry, EntryType, Error, RecoveryMode, SnapshotMetadata, WalOptions};
use serde::Serialize;

use crate::readonly::ReadOnlyFs;

/// Clean, or repaired.
pub const EXIT_CLEAN: u8 = 0;
/// Corruption found, or a repair refused.
pub const EXIT_CORRUPTION: u8 = 1;
/// Bad arguments, or an I/O error.
pub const EXIT_ERROR: u8 = 2;
/// Only a torn tail, which open cuts.
pub const EXIT_TORN_TAIL: u8 = 3;

/// A failure that ends a command with [`EXIT_ERROR`].
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string())
    }
}

type Outcome = Result<u8, Failure>;

/// Where the WAL and the snapshots of a directory are.
#[derive(Debug)]
pub struct Layout {
    /// The directory named on the command line.
    pub dir: PathBuf,
    /// The WAL directory (`<dir>/wal`, or `<dir>` itself for a bare WAL directory).
    pub wal: PathBuf,
    /// The snapshot directory, if there is one.
    pub snap: Option<PathBuf>,
}

impl Layout {
    /// A storage directory (with `wal/`) or a bare WAL directory (with `*.wal` files).
    pub fn find(dir: &Path) -> Result<Layout, Failure> {
        let wal = dir.join(raftwal::storage::WAL_DIR);
        if wal.is_dir() {
            let snap = dir.join(raftwal::storage::SNAP_DIR);
            let snap = snap.is_dir().then_some(snap);
            return Ok(Layout { dir: dir.to_path_buf(), wal, snap });
        }
        let names = ReadOnlyFs.list(dir).map_err(|e| Failure(format!("{}: {e}", dir.display())))?;
        if names.iter().any(|n| n.ends_with(SEGMENT_SUFFIX)) {
            return Ok(Layout { dir: dir.to_path_buf(), wal: dir.to_path_buf(), snap: None });
        }
        Err(Failure(format!(
            "{} is not a raftwal directory: it has neither a wal/ subdirectory nor *{SEGMENT_SUFFIX} segments",
            dir.display()
        )))
    }
}

fn options(max_record_bytes: u32) -> WalOptions {
    WalOptions { max_record_bytes, ..WalOptions::default() }
}

// ---- JSON views --------------------------------------------------------------------------------

#[derive(Serialize)]
struct DamageView {
    offset: u64,
    kind: String,
}

#[derive(Serialize)]
struct SegmentView {
    name: String,
    sequence: u64,
    first_record: u64,
    size_bytes: u64,
    header_error: Option<String>,
    records: usize,
    first_entry: Option<u64>,
    last_entry: Option<u64>,
    valid_bytes: u64,
    written_bytes: u64,
    case: &'static str,
    decision: &'static str,
    damage: Option<DamageView>,
    link: Option<DamageView>,
    kept: bool,
    /// Entries in this segment's valid records that recovery drops.
    dropped_entries_first: Option<u64>,
    dropped_entries_last: Option<u64>,
    /// Written bytes that do not read as records.
    unreadable_bytes: u64,
}

impl From<&SegmentReport> for SegmentView {
    fn from(s: &SegmentReport) -> SegmentView {
        SegmentView {
            name: s.name.clone(),
            sequence: s.sequence,
            first_record: s.first_record,
            size_bytes: s.size_bytes,
            header_error: s.header.as_ref().err().map(|e| format!("{e:?}")),
            records: s.records,
            first_entry: s.entries.map(|(lo, _)| lo),
            last_entry: s.entries.map(|(_, hi)| hi),
            valid_bytes: s.valid_bytes,
            written_bytes: s.written_bytes,
            case: s.case.label,
            decision: decision_name(s.case.decision),
            damage: match &s.stop {
                Stop::End => None,
                Stop::Damaged(kind) => {
                    Some(DamageView { offset: s.valid_bytes, kind: kind.to_string() })
                }
            },
            link: s
                .link
                .as_ref()
                .map(|(offset, kind)| DamageView { offset: *offset, kind: kind.to_string() }),
            kept: s.kept,
            dropped_entries_first: s.dropped_entries.map(|(lo, _)| lo),
            dropped_entries_last: s.dropped_entries.map(|(_, hi)| hi),
            unreadable_bytes: s.unreadable_bytes,
        }
    }
}

fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Accept => "accept",
        Decision::TruncateTail => "truncate_tail",
        Decision::Corruption => "corruption",
    }
}

#[derive(Serialize)]
struct ProblemView {
    segment: String,
    offset: u64,
    kind: String,
    case: &'static str,
    reason: String,
    /// What open does in `RecoveryMode::Strict`: `cut` or `refuse`.
    open: &'static str,
    fixable: bool,
    truncated_segment: Option<String>,
    truncated_offset: Option<u64>,
    erased_bytes: u64,
    removed_segments: Vec<String>,
    last_kept_index: u64,
    affected_first: Option<u64>,
    /// `null` with `affected_first` set: unreadable bytes may hold entries beyond any known bound.
    affected_last: Option<u64>,
    dropped_entries_first: Option<u64>,
    dropped_entries_last: Option<u64>,
    dropped_other_records: usize,
    drops_unreadable: bool,
}

impl From<&Problem> for ProblemView {
    fn from(p: &Problem) -> ProblemView {
        let affected = p.cut.affected();
        ProblemView {
            segment: p.segment.clone(),
            offset: p.offset,
            kind: p.kind.to_string(),
            case: p.label,
            reason: p.reason.clone(),
            open: if p.decision == Decision::TruncateTail { "cut" } else { "refuse" },
            fixable: p.fixable,
            truncated_segment: p.cut.truncated.as_ref().map(|(s, _)| s.clone()),
            truncated_offset: p.cut.truncated.as_ref().map(|(_, o)| *o),
            erased_bytes: p.cut.erased_bytes,
            removed_segments: p.cut.removed.clone(),
            last_kept_index: p.cut.last_kept_index,
            affected_first: affected.map(|(lo, _)| lo),
            affected_last: affected.and_then(|(_, hi)| hi),
            dropped_entries_first: p.cut.dropped_entries.map(|(lo, _)| lo),
            dropped_entries_last: p.cut.dropped_entries.map(|(_, hi)| hi),
            dropped_other_records: p.cut.dropped_other_records,
            drops_unreadable: p.cut.drops_unreadable,
        }
    }
}

#[derive(Serialize)]
struct HardStateView {
    term: u64,
    vote: u64,
    commit: u64,
}

#[derive(Serialize)]
struct MarkerView {
    index: u64,
    term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

#[derive(Serialize)]
struct LogView {
    group: u64,
    first_index: u64,
    last_index: u64,
    hard_state: HardStateView,
    snapshot_marker: MarkerView,
}

fn log_view(i: &Inspection) -> LogView {
    let s = &i.summary;
    LogView {
        group: s.group,
        first_index: s.first_index,
        last_index: s.last_index,
        hard_state: HardStateView {
            term: s.hard_state.term,
            vote: s.hard_state.vote,
            commit: s.hard_state.commit,
        },
        snapshot_marker: MarkerView {
            index: s.snapshot.index,
            term: s.snapshot.term,
            voters: s.snapshot.conf_state.voters.clone(),
            learners: s.snapshot.conf_state.learners.clone(),
        },
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Clean => "clean",
        Verdict::TornTail => "torn_tail",
        Verdict::Corruption => "corruption",
    }
}

fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

// ---- Human-readable text -----------------------------------------------------------------------

fn entry_range(range: Option<(u64, u64)>) -> String {
    match range {
        Some((lo, hi)) => format!("{lo}..={hi}"),
        None => "-".into(),
    }
}

fn affected_text(p: &Problem) -> String {
    match p.cut.affected() {
        None => "none".into(),
        Some((lo, Some(hi))) => format!("{lo}..={hi}"),
        Some((lo, None)) => format!("possibly from {lo} on (held in bytes that cannot be read)"),
    }
}

/// The problem in a few lines: where, what, what open does, which entries it touches.
fn problem_text(p: &Problem) -> String {
    let mut text = format!(
        "{} in segment {} at offset {}: {} (case {}: {})\n",
        if p.decision == Decision::TruncateTail && p.fixable { "torn tail" } else { "corruption" },
        p.segment,
        p.offset,
        p.kind,
        p.label,
        p.reason
    );
    if !p.fixable {
        text += "  open refuses, and no recovery mode can repair this\n";
    } else if p.decision == Decision::TruncateTail {
        text +=
            "  open cuts it (unsynced writes, never acknowledged); `raftwal repair` does it now\n";
    } else {
        text += "  open refuses (RecoveryMode::Strict); `raftwal repair --force-truncate` would drop \
                 everything from here on\n";
    }
    text += &format!(
        "  entries affected: {}; the log keeps entries up to {}\n",
        affected_text(p),
        p.cut.last_kept_index
    );
    text
}

/// What a cut drops, exactly.
fn drop_plan(p: &Problem) -> String {
    let cut = &p.cut;
    let mut text = String::new();
    if let Some((segment, offset)) = &cut.truncated {
        text += &format!(
            "  cut segment {segment} at offset {offset} ({} written bytes erased)\n",
            cut.erased_bytes
        );
    }
    for segment in &cut.removed {
        text += &format!("  remove segment {segment}\n");
    }
    text += &format!(
        "  entries dropped: {}; the log keeps entries up to {}\n",
        affected_text(p),
        cut.last_kept_index
    );
    if let Some((lo, hi)) = cut.dropped_entries {
        text += &format!("  of which readable: {lo}..={hi}\n");
    }
    if cut.dropped_other_records > 0 {
        text += &format!(
            "  other records dropped (hard states, snapshot markers, compactions, checkpoints): {}\n",
            cut.dropped_other_records
        );
    }
    text
}

// ---- dump --------------------------------------------------------------------------------------

/// One line of a dump.
#[derive(Serialize, Default)]
struct DumpRow<'a> {
    segment: &'a str,
    offset: u64,
    record: &'static str,
    kept: bool,
    /// `None` only for a checkpoint without a line for any shown group.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    term: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vote: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resets_log: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    voters: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dummy_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dummy_term: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_index: Option<u64>,
    /// A witness's `durable` field: the bytes of its segment a sync had made durable.
    #[serde(skip_serializing_if = "Option::is_none")]
    durable: Option<u64>,
}

const PREVIEW_BYTES: usize = 24;

/// The start of `data`: quoted and escaped when it is printable ASCII, else hex; `…` when cut.
pub fn preview(data: &[u8]) -> String {
    let head = &data[..data.len().min(PREVIEW_BYTES)];
    let more = if data.len() > head.len() { "…" } else { "" };
    if head.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\t') {
        let text = std::str::from_utf8(head).expect("printable ASCII is UTF-8");
        format!("{text:?}{more}")
    } else {
        let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}{more}")
    }
}

fn entry_type_name(t: EntryType) -> &'static str {
    match t {
        EntryType::Normal => "normal",
        EntryType::ConfChange => "conf_change",
        EntryType::ConfChangeV2 => "conf_change_v2",
    }
}

fn entry_row<'a>(segment: &'a str, offset: u64, kept: bool, group: u64, e: &Entry) -> DumpRow<'a> {
    DumpRow {
        segment,
        offset,
        record: "entry",
        kept,
        group: Some(group),
        index: Some(e.index),
        term: Some(e.term),
        entry_type: Some(entry_type_name(e.entry_type)),
        size: Some(e.data.len()),
        data: Some(preview(&e.data)),
        ..DumpRow::default()
    }
}

/// The group a record belongs to (`None`: a checkpoint, a footer or a witness, which cover
/// every group).
fn record_group(record: &Record) -> Option<u64> {
    record.group()
}

fn other_row<'a>(segment: &'a str, kept: bool, scanned: &ScannedRecord) -> DumpRow<'a> {
    let (offset, record) = (scanned.offset, &scanned.record);
    let row = DumpRow { segment, offset, kept, group: record_group(record), ..DumpRow::default() };
    match record {
        Record::Entries { .. } => unreachable!("entries are dumped one by one"),
        Record::EntryRun { .. } => unreachable!("dump reads segments whole, never footers"),
        Record::Checkpoint(_) => unreachable!("checkpoints are dumped line by line"),
        Record::HardState { hard_state: hs, .. } => DumpRow {
            record: "hard_state",
            term: Some(hs.term),
            vote: Some(hs.vote),
            commit: Some(hs.commit),
            ..row
        },
        Record::Snapshot { metadata, resets_log, .. } => DumpRow {
            record: "snapshot",
            index: Some(metadata.index),
            term: Some(metadata.term),
            resets_log: Some(*resets_log),
            voters: Some(metadata.conf_state.voters.clone()),
            ..row
        },
        Record::Compact { index, term, .. } => {
            DumpRow { record: "compact", index: Some(*index), term: Some(*term), ..row }
        }
        Record::Remove { .. } => DumpRow { record: "remove", ..row },
        Record::Footer(_) => DumpRow { record: "footer", ..row },
        Record::Witness => DumpRow { record: "witness", durable: Some(scanned.durable), ..row },
    }
}

/// One group's line of a checkpoint; `None`: a checkpoint with no line for a shown group.
fn checkpoint_row<'a>(
    segment: &'a str,
    offset: u64,
    kept: bool,
    cp: Option<&Checkpoint>,
) -> DumpRow<'a> {
    let row = DumpRow { segment, offset, kept, record: "checkpoint", ..DumpRow::default() };
    match cp {
        Some(cp) => DumpRow {
            group: Some(cp.group),
            dummy_index: Some(cp.dummy_index),
            dummy_term: Some(cp.dummy_term),
            term: Some(cp.hard_state.term),
            last_index: Some(cp.last_index),
            commit: Some(cp.hard_state.commit),
            vote: Some(cp.hard_state.vote),
            ..row
        },
        None => row,
    }
}

fn dump_line(row: &DumpRow<'_>, group_column: bool) -> String {
    let mark = if row.kept { ' ' } else { 'x' };
    let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    let detail = match row.record {
        "entry" => format!(
            "{:<14} {:>6}  {}",
            row.entry_type.unwrap_or(""),
            row.size.unwrap_or(0),
            row.data.as_deref().unwrap_or("")
        ),
        "hard_state" => format!("vote {} commit {}", opt(row.vote), opt(row.commit)),
        "snapshot" => format!(
            "{} voters {:?}",
            if row.resets_log == Some(true) { "applied (log reset)" } else { "created" },
            row.voters.as_deref().unwrap_or(&[])
        ),
        "compact" => "new dummy entry".into(),
        "remove" => "group removed".into(),
        "witness" => format!("bytes before {} were durable", opt(row.durable)),
        "checkpoint" if row.group.is_none() => "no line for the group".into(),
        "checkpoint" => format!(
            "dummy ({}, {}) last {} hard state term {} vote {} commit {}",
            opt(row.dummy_index),
            opt(row.dummy_term),
            opt(row.last_index),
            opt(row.term),
            opt(row.vote),
            opt(row.commit)
        ),
        _ => String::new(),
    };
    let (index, term) = match row.record {
        "checkpoint" => (String::new(), String::new()),
        "hard_state" => (String::new(), opt(row.term)),
        _ => (opt(row.index), opt(row.term)),
    };
    let group = if group_column { format!("{:>8}  ", opt(row.group)) } else { String::new() };
    format!(
        "{mark} {:>10}  {:<10}  {group}{:>10}  {:>6}  {detail}",
        row.offset, row.record, index, term
    )
}

/// `raftwal dump`.
pub fn dump(
    layout: &Layout,
    max_record_bytes: u32,
    only: Option<u64>,
    from: Option<u64>,
    to: Option<u64>,
    json: bool,
) -> Outcome {
    let filtered = from.is_some() || to.is_some();
    let (lo, hi) = (from.unwrap_or(0), to.unwrap_or(u64::MAX));
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut write_error: Option<io::Error> = None;
    // Per group, index of its last entry written before the record at hand: its other records are
    // shown when it lies within the range. One slot per group the log names.
    let mut position: HashMap<u64, u64> = HashMap::new();
    let shown = |group: u64| only.is_none_or(|g| g == group);
    let group_column = only.is_none();
    // Whether a record of the checkpoint at hand (split over several records) had a shown line.
    let mut checkpoint_has_line = false;
    let (mut shown_records, mut shown_entries) = (0u64, 0u64);
    let mut pending_header: Option<String> = None;
    let mut emit = |out: &mut io::BufWriter<io::StdoutLock<'_>>, text: &str| {
        if write_error.is_none()
            && let Err(e) = writeln!(out, "{text}")
        {
            write_error = Some(e);
        }
    };
    let group = only.unwrap_or(0);
    let wal_options = options(max_record_bytes);
    let inspection = inspect_group(&ReadOnlyFs, &layout.wal, &wal_options, group, |event| {
        match event {
            Event::Segment(s) => {
                if !json {
                    // Printed before the segment's first shown row; at once when nothing is
                    // filtered, so that a segment without records still shows its damage.
                    let group =
                        if group_column { format!("{:>8}  ", "group") } else { String::new() };
                    pending_header = Some(format!(
                        "segment {} ({} bytes, case {} {}{})\n  {:>10}  {:<10}  {group}{:>10}  {:>6}  detail",
                        s.name,
                        s.size_bytes,
                        s.case.label,
                        decision_name(s.case.decision),
                        if s.kept { "" } else { ", dropped by recovery" },
                        "offset",
                        "record",
                        "index",
                        "term"
                    ));
                    if !filtered {
                        emit(&mut out, &pending_header.take().expect("just set"));
                    }
                }
            }
            Event::Record { segment, record, kept } => {
                let in_range = |position: &HashMap<u64, u64>, group: u64| {
                    !filtered || (lo..=hi).contains(position.get(&group).unwrap_or(&0))
                };
                let (name, offset) = (segment.name.as_str(), record.offset);
                let rows: Vec<DumpRow<'_>> = match &record.record {
                    Record::Entries { group, entries, hard_state } if shown(*group) => {
                        let mut rows: Vec<DumpRow<'_>> = entries
                            .iter()
                            .filter(|e| !filtered || (lo..=hi).contains(&e.index))
                            .map(|e| entry_row(name, offset, kept, *group, e))
                            .collect();
                        if let Some(last) = entries.last() {
                            position.insert(*group, last.index);
                        }
                        // The record's hard state, after its entries.
                        if let Some(hs) = hard_state
                            && in_range(&position, *group)
                        {
                            let hs = Record::HardState { group: *group, hard_state: *hs };
                            let scanned = ScannedRecord { record: hs, ..record.clone() };
                            rows.push(other_row(name, kept, &scanned));
                        }
                        rows
                    }
                    Record::Checkpoint(cps) => {
                        let mut rows: Vec<DumpRow<'_>> = cps
                            .iter()
                            .filter(|cp| shown(cp.group) && in_range(&position, cp.group))
                            .map(|cp| checkpoint_row(name, offset, kept, Some(cp)))
                            .collect();
                        // One bare row per checkpoint (on its last record) that shows no line,
                        // so that every segment start stays visible.
                        checkpoint_has_line |= cps.iter().any(|cp| shown(cp.group));
                        if !record.more {
                            if !checkpoint_has_line && !filtered {
                                rows.push(checkpoint_row(name, offset, kept, None));
                            }
                            checkpoint_has_line = false;
                        }
                        rows
                    }
                    other => match record_group(other) {
                        Some(group) if shown(group) && in_range(&position, group) => {
                            vec![other_row(name, kept, record)]
                        }
                        // A sealed segment's footer covers every group: shown with them all.
                        None if !filtered && only.is_none() => {
                            vec![other_row(name, kept, record)]
                        }
                        _ => Vec::new(),
                    },
                };
                if !rows.is_empty() {
                    shown_records += 1;
                    if let Some(header) = pending_header.take() {
                        emit(&mut out, &header);
                    }
                }
                for row in rows {
                    if row.record == "entry" {
                        shown_entries += 1;
                    }
                    let line = if json {
                        serde_json::to_string(&row).expect("a dump row serializes")
                    } else {
                        dump_line(&row, group_column)
                    };
                    emit(&mut out, &line);
                }
            }
        }
    })?;
    if !json {
        let verdict = match &inspection.problem {
            None => "clean".to_string(),
            Some(p) => problem_text(p).trim_end().to_string(),
        };
        emit(
            &mut out,
            &format!(
                "{shown_records} records shown, {shown_entries} entries; groups in the log: {}; \
                 group {group}'s log {}..={}; {verdict}",
                inspection.summary.groups.len(),
                inspection.summary.first_index,
                inspection.summary.last_index
            ),
        );
    }
    if write_error.is_none()
        && let Err(e) = out.flush()
    {
        write_error = Some(e);
    }
    match write_error {
        // The reader stopped early (`| head`): not a failure of the dump.
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(exit_for(inspection.verdict()))
}

fn exit_for(v: Verdict) -> u8 {
    match v {
        Verdict::Clean => EXIT_CLEAN,
        Verdict::TornTail => EXIT_TORN_TAIL,
        Verdict::Corruption => EXIT_CORRUPTION,
    }
}

// ---- snapshots ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct SnapshotView {
    name: String,
    index: u64,
    term: u64,
    size_bytes: u64,
    /// Uncompressed data bytes, from the header (`null` when the header is damaged).
    data_bytes: Option<u64>,
    /// Whether it is the snapshot the WAL's marker names.
    marked: bool,
    /// `ok`, `damaged`, `orphan` (newer than the marker: open removes it) or `unchecked`.
    status: &'static str,
    error: Option<String>,
}

/// The snapshot files; with `verify`, each read through and its CRC checked.
fn snapshots(
    layout: &Layout,
    inspection: &Inspection,
    verify: bool,
    mut progress: impl FnMut(u64),
) -> Result<(Vec<SnapshotView>, Option<String>), Failure> {
    let marker = &inspection.summary.snapshot;
    let group = inspection.summary.group;
    let marked = snapshot_name(group, marker.term, marker.index);
    let Some(dir) = &layout.snap else {
        let missing = (marker.index != 0).then(|| {
            format!("the marked snapshot {marked} is missing: there is no snap/ directory")
        });
        return Ok((Vec::new(), missing));
    };
    let fs: Fs = Arc::new(ReadOnlyFs);
    let store = SnapshotStore::open_existing(fs.clone(), dir, group);
    let mut views = Vec::new();
    for stored in store.list()? {
        let size_bytes = fs.open(&dir.join(&stored.name))?.len()?;
        let is_marked = stored.name == marked;
        let header = store.reader(&stored.name);
        let data_bytes = header.as_ref().ok().map(|r| r.data_len());
        let (status, error) = if verify {
            let checked = store.verify(&stored.name);
            progress(size_bytes);
            match checked {
                Ok(metadata) if is_marked && metadata != *marker => {
                    ("damaged", Some("its metadata differs from the WAL's marker".to_string()))
                }
                Ok(_) if !is_marked && stored.index >= marker.index => ("orphan", None),
                Ok(_) => ("ok", None),
                Err(e @ Error::Corruption { .. }) => ("damaged", Some(e.to_string())),
                Err(e) => return Err(e.into()),
            }
        } else {
            match header {
                Err(e @ Error::Corruption { .. }) => ("damaged", Some(e.to_string())),
                Err(e) => return Err(e.into()),
                Ok(_) if !is_marked && stored.index >= marker.index => ("orphan", None),
                Ok(_) => ("unchecked", None),
            }
        };
        views.push(SnapshotView {
            name: stored.name,
            index: stored.index,
            term: stored.term,
            size_bytes,
            data_bytes,
            marked: is_marked,
            status,
            error,
        });
    }
    let missing = (marker.index != 0 && !views.iter().any(|v| v.marked))
        .then(|| format!("the marked snapshot {marked} is missing"));
    Ok((views, missing))
}

fn snapshot_lines(views: &[SnapshotView], missing: &Option<String>) -> String {
    let mut text = String::new();
    if views.is_empty() {
        text += "snapshots: none\n";
    } else {
        text += &format!(
            "snapshots:\n  {:<57} {:>10} {:>6} {:>12} {:>12}  status\n",
            "name", "index", "term", "size", "data"
        );
    }
    for v in views {
        text += &format!(
            "  {:<57} {:>10} {:>6} {:>12} {:>12}  {}{}{}\n",
            v.name,
            v.index,
            v.term,
            v.size_bytes,
            v.data_bytes.map_or("?".into(), |d| d.to_string()),
            v.status,
            if v.marked { " (marked)" } else { "" },
            v.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
        );
    }
    if let Some(m) = missing {
        text += &format!("  {m}\n");
    }
    text
}

fn segment_lines(inspection: &Inspection) -> String {
    let mut text = format!(
        "segments:\n  {:<38} {:>10} {:>8} {:>17} {:>10}  case\n",
        "name", "size", "records", "entries", "valid"
    );
    for s in &inspection.segments {
        let damage = match (&s.stop, &s.link) {
            (_, Some((offset, kind))) => format!(", link broken at {offset}: {kind}"),
            (Stop::Damaged(kind), _) => format!(", {kind} at {}", s.valid_bytes),
            (Stop::End, _) => String::new(),
        };
        text += &format!(
            "  {:<38} {:>10} {:>8} {:>17} {:>10}  {} {}{damage}{}\n",
            s.name,
            s.size_bytes,
            s.records,
            entry_range(s.entries),
            s.valid_bytes,
            s.case.label,
            decision_name(s.case.decision),
            if s.kept { "" } else { " (dropped by recovery)" }
        );
    }
    text
}

// ---- verify ------------------------------------------------------------------------------------

#[derive(Serialize)]
struct VerifyView {
    dir: PathBuf,
    verdict: &'static str,
    exit_code: u8,
    problem: Option<ProblemView>,
    log: LogView,
    segments: Vec<SegmentView>,
    snapshots: Vec<SnapshotView>,
    snapshot_problem: Option<String>,
    /// Segments whose footer is not the one their records make: an open through footers would
    /// build a state the records do not hold.
    footers_disagreeing: Vec<String>,
    temp_files: Vec<String>,
}

/// A bar on stderr that shows itself only once the work has taken a second.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    shown: bool,
}

impl Progress {
    fn new(total_bytes: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("verifying {bar:40} {bytes}/{total_bytes} ({eta})")
                .expect("a valid template"),
        );
        Progress { bar, started: Instant::now(), shown: false }
    }

    fn advance(&mut self, bytes: u64) {
        if !self.shown && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.inc(bytes);
    }
}

fn dir_bytes(dir: Option<&Path>) -> u64 {
    let Some(dir) = dir else { return 0 };
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// `raftwal verify`.
pub fn verify(layout: &Layout, max_record_bytes: u32, group: u64, json: bool) -> Outcome {
    let mut progress =
        Progress::new(dir_bytes(Some(&layout.wal)) + dir_bytes(layout.snap.as_deref()));
    let wal_options = options(max_record_bytes);
    let inspection = inspect_group(&ReadOnlyFs, &layout.wal, &wal_options, group, |event| {
        if let Event::Segment(s) = event {
            progress.advance(s.size_bytes);
        }
    })?;
    let (snaps, missing) = snapshots(layout, &inspection, true, |n| progress.advance(n))?;
    progress.bar.finish_and_clear();
    let snapshot_damaged = missing.is_some() || snaps.iter().any(|s| s.status == "damaged");
    let footers_disagreeing: Vec<String> = inspection
        .segments
        .iter()
        .filter(|s| s.footer_agrees == Some(false))
        .map(|s| s.name.clone())
        .collect();
    let damaged = snapshot_damaged || !footers_disagreeing.is_empty();
    let code = match exit_for(inspection.verdict()) {
        EXIT_CLEAN if damaged => EXIT_CORRUPTION,
        code => code,
    };
    if json {
        print_json(&VerifyView {
            dir: layout.dir.clone(),
            verdict: if damaged { "corruption" } else { verdict_name(inspection.verdict()) },
            exit_code: code,
            problem: inspection.problem.as_ref().map(ProblemView::from),
            log: log_view(&inspection),
            segments: inspection.segments.iter().map(SegmentView::from).collect(),
            snapshots: snaps,
            snapshot_problem: missing,
            footers_disagreeing,
            temp_files: inspection.temp_files.clone(),
        })?;
        return Ok(code);
    }
    let mut text = segment_lines(&inspection);
    for name in &footers_disagreeing {
        text += &format!(
            "{name}: its footer is not the one its records make (open reads it through the footer; \
             `WalOptions::read_footers` off reads the records)\n"
        );
    }
    text += &snapshot_lines(&snaps, &missing);
    text += &format!(
        "checked: segments {} ({} records, {} bytes of records), snapshot files {}\n",
        inspection.segments.len(),
        inspection.records,
        inspection.valid_bytes,
        snaps.len()
    );
    match &inspection.problem {
        None => text += "WAL: clean\n",
        Some(p) => text += &format!("WAL: {}", problem_text(p)),
    }
    if snapshot_damaged {
        text += "snapshots: damaged (see above)\n";
    }
    print!("{text}");
    Ok(code)
}

// ---- stat --------------------------------------------------------------------------------------

#[derive(Serialize)]
struct StatView {
    dir: PathBuf,
    wal_dir: PathBuf,
    verdict: &'static str,
    log: LogView,
    /// Groups with state in the log.
    group_count: usize,
    /// The groups pinning the most segment bytes, most first (at most [`TOP_PINNING`]).
    top_pinning: Vec<PinView>,
    segment_count: usize,
    segment_bytes: u64,
    record_bytes: u64,
    segments: Vec<SegmentView>,
    snapshots: Vec<SnapshotView>,
    temp_files: Vec<String>,
    other_files: Vec<String>,
    /// Oldest segments deleted by a live log between the listing and the read.
    vanished: Vec<String>,
}

/// Rows of the table of groups pinning the most bytes.
const TOP_PINNING: usize = 10;

/// A group and the segment bytes it keeps from being released.
#[derive(Serialize)]
struct PinView {
    group: u64,
    first_index: u64,
    last_index: u64,
    snapshot_index: u64,
    /// Sequence of the segment holding its first live entry: it and every later one are pinned.
    pinned_segment: u64,
    /// Bytes of the segments from `pinned_segment` on.
    pinned_bytes: u64,
}

/// The groups pinning the most segment bytes, most first (ties: lower group first); groups
/// without a live entry pin nothing and are left out.
fn top_pinning(inspection: &Inspection) -> Vec<PinView> {
    let segments = &inspection.segments;
    debug_assert!(segments.windows(2).all(|w| w[0].sequence < w[1].sequence));
    // from_here[i]: bytes of segments[i..], so each group costs a binary search.
    let mut from_here = vec![0u64; segments.len() + 1];
    for i in (0..segments.len()).rev() {
        from_here[i] = from_here[i + 1].saturating_add(segments[i].size_bytes);
    }
    let mut pins: Vec<PinView> = inspection
        .summary
        .groups
        .iter()
        .filter_map(|g| {
            let pinned_segment = g.pinned_segment?;
            let pinned_bytes = from_here[segments.partition_point(|s| s.sequence < pinned_segment)];
            Some(PinView {
                group: g.group,
                first_index: g.first_index,
                last_index: g.last_index,
                snapshot_index: g.snapshot_index,
                pinned_segment,
                pinned_bytes,
            })
        })
        .collect();
    pins.sort_by_key(|p| (std::cmp::Reverse(p.pinned_bytes), p.group));
    pins.truncate(TOP_PINNING);
    pins
}

fn pinning_lines(pins: &[PinView]) -> String {
    if pins.is_empty() {
        return "groups pinning segments: none\n".into();
    }
    let mut text = format!(
        "groups pinning the most bytes:\n  {:>20} {:>12} {:>12} {:>12} {:>16} {:>14}\n",
        "group", "first index", "last index", "snapshot", "oldest segment", "pinned bytes"
    );
    for p in pins {
        text += &format!(
            "  {:>20} {:>12} {:>12} {:>12} {:>16} {:>14}\n",
            p.group,
            p.first_index,
            p.last_index,
            p.snapshot_index,
            format!("{:016x}", p.pinned_segment),
            p.pinned_bytes
        );
    }
    text
}

/// `raftwal stat`.
pub fn stat(layout: &Layout, max_record_bytes: u32, group: u64, json: bool) -> Outcome {
    let wal_options = options(max_record_bytes);
    let inspection = inspect_group(&ReadOnlyFs, &layout.wal, &wal_options, group, |_| {})?;
    let (snaps, missing) = snapshots(layout, &inspection, false, |_| {})?;
    let code = exit_for(inspection.verdict());
    let segment_bytes = inspection.segments.iter().map(|s| s.size_bytes).sum();
    let pins = top_pinning(&inspection);
    if json {
        print_json(&StatView {
            dir: layout.dir.clone(),
            wal_dir: layout.wal.clone(),
            verdict: verdict_name(inspection.verdict()),
            log: log_view(&inspection),
            group_count: inspection.summary.groups.len(),
            top_pinning: pins,
            segment_count: inspection.segments.len(),
            segment_bytes,
            record_bytes: inspection.valid_bytes,
            segments: inspection.segments.iter().map(SegmentView::from).collect(),
            snapshots: snaps,
            temp_files: inspection.temp_files.clone(),
            other_files: inspection.other_files.clone(),
            vanished: inspection.vanished.clone(),
        })?;
        return Ok(code);
    }
    let s = &inspection.summary;
    let live = (s.last_index.saturating_add(1)).saturating_sub(s.first_index);
    let mut text = format!("directory:  {}\n", layout.dir.display());
    text += &format!("groups: {}\n", s.groups.len());
    text += &pinning_lines(&pins);
    let absent =
        if s.groups.iter().any(|g| g.group == group) { "" } else { " (no state in the log)" };
    text += &format!("group {group}:{absent}\n");
    text += &format!(
        "first index: {}\nlast index:  {}  ({live} live entries)\n",
        s.first_index, s.last_index
    );
    text += &format!(
        "hard state: term {} vote {} commit {}\n",
        s.hard_state.term, s.hard_state.vote, s.hard_state.commit
    );
    text += &if s.snapshot.index == 0 {
        "snapshot marker: none\n".to_string()
    } else {
        format!(
            "snapshot marker: index {} term {} voters {:?}\n",
            s.snapshot.index, s.snapshot.term, s.snapshot.conf_state.voters
        )
    };
    text += &format!(
        "WAL: segments {}, {segment_bytes} bytes on disk, {} bytes of records, {} records; {}\n",
        inspection.segments.len(),
        inspection.valid_bytes,
        inspection.records,
        verdict_name(inspection.verdict())
    );
    text += &segment_lines(&inspection);
    text += &snapshot_lines(&snaps, &missing);
    if !inspection.temp_files.is_empty() {
        text += &format!("temp files (open removes them): {}\n", inspection.temp_files.join(", "));
    }
    if !inspection.vanished.is_empty() {
        text += &format!(
            "deleted while being read (purged by the live log): {}\n",
            inspection.vanished.join(", ")
        );
    }
    let kept: Vec<&String> =
        inspection.other_files.iter().filter(|n| n.contains(".broken")).collect();
    if !kept.is_empty() {
        text += &format!(
            "kept copies of damaged segments: {}\n",
            kept.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(p) = &inspection.problem {
        text += &problem_text(p);
    }
    print!("{text}");
    Ok(code)
}

// ---- repair ------------------------------------------------------------------------------------

#[derive(Serialize)]
struct RepairView {
    dir: PathBuf,
    /// `none` (clean), `cut_torn_tail`, `refused`, `truncated_corruption`.
    action: &'static str,
    exit_code: u8,
    problem: Option<ProblemView>,
    broken_copies: Vec<String>,
    recovery_truncated: Option<(String, u64, &'static str)>,
    recovery_removed: Vec<String>,
    last_index: Option<u64>,
    /// The newest snapshot marker the cut drops, if it drops one the log had committed.
    dropped_snapshot: Option<SnapshotRef>,
    /// The snapshot the log falls back to (`None`: no snapshot remains), when one is dropped.
    fallback_snapshot: Option<SnapshotRef>,
    message: String,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
struct SnapshotRef {
    index: u64,
    term: u64,
}

impl From<&SnapshotMetadata> for SnapshotRef {
    fn from(m: &SnapshotMetadata) -> SnapshotRef {
        SnapshotRef { index: m.index, term: m.term }
    }
}

/// The newest snapshot marker a cut drops: the last one named by a dropped record (a marker, or
/// a checkpoint carrying it) when it is not the one the log keeps.
fn dropped_marker(
    dropped: Option<SnapshotMetadata>,
    kept: &SnapshotMetadata,
) -> Option<SnapshotMetadata> {
    dropped.filter(|m| m != kept && m.index > kept.index)
}

/// The warning for a cut that drops a committed snapshot marker: which one, what the log falls
/// back to, and what happens to the snapshot files on the next open.
fn snapshot_warning(
    layout: &Layout,
    group: u64,
    dropped: &SnapshotMetadata,
    kept: &SnapshotMetadata,
) -> String {
    let file_exists = |m: &SnapshotMetadata| {
        layout
            .snap
            .as_ref()
            .is_some_and(|dir| dir.join(snapshot_name(group, m.term, m.index)).exists())
    };
    let mut text = format!(
        "warning: the cut drops the snapshot marker at index {} term {}: ",
        dropped.index, dropped.term
    );
    if kept.index == 0 {
        text += "no snapshot remains; the log falls back to none
";
    } else {
        text += &format!(
            "the log falls back to the snapshot at index {} term {} ({})
",
            kept.index,
            kept.term,
            snapshot_name(group, kept.term, kept.index)
        );
        if layout.snap.is_some() && !file_exists(kept) {
            text += "  that snapshot's file is not in the snapshot directory: open will refuse                      until the node is restored from a peer
";
        }
    }
    if file_exists(dropped) {
        text += &format!(
            "  {} is then uncommitted: the next open of the storage removes it
",
            snapshot_name(group, dropped.term, dropped.index)
        );
    }
    text
}

/// Copies `name` to a new `<name>.broken` (or `.broken.2`, …) and makes the copy durable.
fn keep_copy(dir: &Path, name: &str) -> Result<String, Failure> {
    for n in 1..=100 {
        let copy = if n == 1 { format!("{name}.broken") } else { format!("{name}.broken.{n}") };
        let path = dir.join(&copy);
        if path.exists() {
            continue;
        }
        std::fs::copy(dir.join(name), &path)?;
        std::fs::File::open(&path)?.sync_all()?;
        std::fs::File::open(dir)?.sync_all()?;
        return Ok(copy);
    }
    Err(Failure(format!("{name}: 100 .broken copies exist already")))
}

/// What a repair says: printed at once for people (so the plan is on the screen before anything
/// changes), gathered into the JSON report for scripts.
struct Transcript {
    json: bool,
    text: String,
}

impl Transcript {
    fn say(&mut self, line: &str) {
        if !self.json {
            let mut out = io::stdout().lock();
            // Best effort: a closed stdout must not stop a repair half-way.
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        }
        self.text += line;
    }
}

/// `raftwal repair`.
pub fn repair(
    layout: &Layout,
    max_record_bytes: u32,
    group: u64,
    force_truncate: bool,
    json: bool,
) -> Outcome {
    // The snapshot of `group` named last by a record the cut drops, in log order.
    let mut dropped: Option<SnapshotMetadata> = None;
    let wal_options = options(max_record_bytes);
    let inspection = inspect_group(&ReadOnlyFs, &layout.wal, &wal_options, group, |event| {
        if let Event::Record { record, kept: false, .. } = event {
            match &record.record {
                Record::Snapshot { group: g, metadata, .. } if *g == group => {
                    dropped = Some(SnapshotMetadata::clone(metadata));
                }
                Record::Checkpoint(cps) => {
                    if let Some(cp) = cps.iter().find(|cp| cp.group == group) {
                        dropped = Some(cp.snapshot.clone());
                    }
                }
                _ => {}
            }
        }
    })?;
    let dropped = dropped_marker(dropped, &inspection.summary.snapshot);
    let mut view = RepairView {
        dir: layout.dir.clone(),
        action: "none",
        exit_code: EXIT_CLEAN,
        problem: inspection.problem.as_ref().map(ProblemView::from),
        broken_copies: Vec::new(),
        recovery_truncated: None,
        recovery_removed: Vec::new(),
        last_index: None,
        dropped_snapshot: None,
        fallback_snapshot: None,
        message: String::new(),
    };
    let mut t = Transcript { json, text: String::new() };
    let finish = |mut view: RepairView, t: Transcript, code: u8| -> Outcome {
        view.exit_code = code;
        if json {
            view.message = t.text;
            print_json(&view)?;
        }
        Ok(code)
    };
    let Some(problem) = &inspection.problem else {
        t.say("nothing to repair: the WAL is clean\n");
        return finish(view, t, EXIT_CLEAN);
    };
    t.say(&problem_text(problem));
    if !problem.fixable {
        view.action = "refused";
        t.say("refused: no recovery mode can open this log; restore the node from a peer\n");
        return finish(view, t, EXIT_CORRUPTION);
    }
    let torn = inspection.verdict() == Verdict::TornTail;
    // A torn tail's marker was never synced, so never acknowledged: only a forced cut warns.
    let dropped = dropped.filter(|_| !torn);
    if let Some(marker) = &dropped {
        view.dropped_snapshot = Some(SnapshotRef::from(marker));
        view.fallback_snapshot =
            Some(&inspection.summary.snapshot).filter(|kept| kept.index > 0).map(SnapshotRef::from);
    }
    if !torn && !force_truncate {
        view.action = "refused";
        t.say(
            "refused: this is damage to data that had been made durable, not a torn write. \
             Cutting the log here drops entries that were acknowledged and that a Raft quorum \
             may have counted as committed.\n\
             With --force-truncate, repair would:\n",
        );
        t.say(&drop_plan(problem));
        if let Some(marker) = &dropped {
            t.say(&snapshot_warning(layout, group, marker, &inspection.summary.snapshot));
        }
        t.say(
            "Use it only on a node whose log will be re-fetched from the leader, never on a \
             majority of the nodes.\n",
        );
        return finish(view, t, EXIT_CORRUPTION);
    }
    // Checked before the copies are made; open takes the lock itself.
    match RealFs.try_lock(&layout.wal.join(raftwal::wal::LOCK_FILE)) {
        Ok(Some(lock)) => drop(lock),
        Ok(None) => {
            return Err(Failure("the log is open in another process; stop it first".into()));
        }
        Err(e) => return Err(e.into()),
    }
    t.say(if torn { "cutting the torn tail:\n" } else { "--force-truncate: dropping:\n" });
    t.say(&drop_plan(problem));
    if let Some(marker) = &dropped {
        t.say(&snapshot_warning(layout, group, marker, &inspection.summary.snapshot));
    }
    let damaged = problem.cut.truncated.iter().map(|(s, _)| s).chain(&problem.cut.removed);
    for name in damaged {
        let copy = keep_copy(&layout.wal, name)?;
        t.say(&format!("  kept a copy: {copy}\n"));
        view.broken_copies.push(copy);
    }
    let mode = if torn { RecoveryMode::Strict } else { RecoveryMode::TruncateCorrupt };
    // New segments get the size of the existing ones.
    let segment_size_bytes = inspection
        .segments
        .iter()
        .map(|s| s.size_bytes)
        .max()
        .unwrap_or(WalOptions::default().segment_size_bytes)
        .clamp(4096, 2 << 30);
    let wal_options = WalOptions {
        recovery_mode: mode,
        max_record_bytes,
        segment_size_bytes,
        prepare_in_background: false,
        // Read every segment whole, as the inspection did: a footer would stand in for the
        // damaged records and the cut would not happen.
        read_footers: false,
        ..WalOptions::default()
    };
    let fs: Fs = Arc::new(RealFs);
    let engine = match Engine::open(fs, &layout.wal, wal_options) {
        Ok(engine) => engine,
        Err(Error::Locked) => {
            return Err(Failure("the log is open in another process; stop it first".into()));
        }
        Err(e) => return Err(e.into()),
    };
    let report = engine.recovery_report().clone();
    view.recovery_truncated = report.truncated.clone();
    view.recovery_removed = report.removed.clone();
    let last_index = engine.last_index(group);
    view.last_index = Some(last_index);
    engine.close()?;
    if let Some((segment, offset, case)) = &report.truncated {
        t.say(&format!("recovery cut {segment} at offset {offset} (case {case})\n"));
    }
    for removed in &report.removed {
        t.say(&format!("recovery removed {removed}\n"));
    }
    t.say(&format!("repaired: the log now ends at index {last_index} in group {group}\n"));
    view.action = if torn { "cut_torn_tail" } else { "truncated_corruption" };
    let after = inspect_group(&ReadOnlyFs, &layout.wal, &options(max_record_bytes), group, |_| {})?;
    if let Some(p) = &after.problem {
        t.say(&format!("but the WAL is still not clean:\n{}", problem_text(p)));
        return finish(view, t, exit_for(after.verdict()));
    }
    finish(view, t, EXIT_CLEAN)
}
