//! Recovery: scanning a segment's bytes and deciding what a damaged spot means.
//!
//! A scan walks the records of one segment from its header, checking each frame's CRC and its
//! link to the record before, and stops at the first spot that is not a valid record. What that
//! spot means depends on a few facts, looked up in [`DECISION_TABLE`]:
//!
//! - is this the last segment (the only one that can hold unsynced writes), and is it the only
//!   one?
//! - what is at the stop: the end of the written data (zeroes or end of file), or damage?
//! - what follows: nothing valid, only records written before the damaged spot was durable,
//!   or a *durable witness*: a valid record whose `durable` field says the damaged spot had
//!   already been made durable when that record was written. The look-ahead that answers this
//!   checksums at most a small multiple of the segment's size; a file that would make it do
//!   more (nearly every offset a plausible long frame) is *undecided*, and refused.
//!
//! A torn tail (an unsynced write cut short by a crash) is cut off. Damage to bytes that were
//! durable is corruption: recovery refuses to guess, because cutting the log there would
//! silently drop entries a quorum may have counted (see "Protocol-Aware Recovery for
//! Consensus-Based Storage", FAST'18). `RecoveryMode::TruncateCorrupt` overrides that refusal.

use crate::error::CorruptionKind;
use crate::wal::format::{
    FLAG_MORE, FRAME_HEADER_LEN, FrameHeader, HeaderError, LEN_OFFSET, RECORD_ALIGN, Record,
    RecordType, SEGMENT_HEADER_LEN, SegmentHeader, TYPE_OFFSET, frame_crc, framed_len,
};

/// Bytes the look-ahead past a stop may checksum, per byte after the stop. Each valid record is
/// checksummed once (the look-ahead then jumps over it), so an honest segment stays below 1x;
/// only candidate frames that fail their CRC cost more, and a file built so that nearly every
/// offset starts a long candidate would otherwise cost its size times the record limit.
pub const LOOKAHEAD_BUDGET_PER_BYTE: u64 = 2;
/// Bytes the look-ahead may checksum whatever the segment's size (room for one large record).
pub const LOOKAHEAD_BUDGET_MIN_BYTES: u64 = 1 << 20;

/// The unit a disk writes whole (DESIGN.md §7 assumes 512-byte sectors are written atomically):
/// a crash can lose or keep a sector, never leave half of it.
pub const ATOMIC_SECTOR_BYTES: u64 = 512;

const _: () = assert!(SEGMENT_HEADER_LEN as u64 <= ATOMIC_SECTOR_BYTES);

/// A record found by a scan, checked and decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Byte offset of the frame within the segment.
    pub offset: u64,
    /// The frame's CRC (the next record's chain seed).
    pub crc: u32,
    /// Bytes the frame occupies, padding included.
    pub framed_len: u64,
    /// Whether the write goes on in the next record ([`crate::wal::format::FLAG_MORE`]).
    pub more: bool,
    /// The frame's `durable` field (0 for a record listed by a footer, which does not keep it).
    pub durable: u64,
    /// The payload.
    pub record: Record,
}

/// What stopped a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The written data ends here: zeroes or the end of the file.
    End,
    /// The bytes here are not a valid record.
    Damaged(CorruptionKind),
}

/// What lies after the stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// No valid record.
    Nothing,
    /// Valid records, all written before the stop had been made durable.
    NotDurable,
    /// A valid record written after the stop had been made durable.
    DurableWitness {
        /// Offset of the witnessing record.
        offset: u64,
    },
    /// The look-ahead spent its budget before it could tell: too many candidate frames failed
    /// their CRC (see [`LOOKAHEAD_BUDGET_PER_BYTE`]).
    Undecided {
        /// Offset of the candidate it stopped at.
        offset: u64,
    },
}

/// The outcome of scanning one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// The header, or why it was refused.
    pub header: Result<SegmentHeader, HeaderError>,
    /// Valid, chained records from the start, in order.
    pub records: Vec<ScannedRecord>,
    /// Offset where the scan stopped (the end of the last valid record, or of the header).
    pub stop_offset: u64,
    /// What is at `stop_offset`.
    pub stop: Stop,
    /// What follows `stop_offset`.
    pub after: After,
    /// Bytes the look-ahead past the stop checksummed (a work counter, bounded by
    /// [`LOOKAHEAD_BUDGET_PER_BYTE`] times the bytes after the stop plus
    /// [`LOOKAHEAD_BUDGET_MIN_BYTES`]).
    pub lookahead_checked_bytes: u64,
    /// Offset of the first valid record the look-ahead found past the stop, if any.
    pub first_valid_after: Option<u64>,
    /// End of the last valid record the look-ahead found past the stop (before it returned).
    pub last_valid_end: Option<u64>,
}

impl SegmentScan {
    /// CRC of the last valid record, or the header's chain seed when there is none.
    pub fn last_crc(&self) -> Option<u32> {
        match self.records.last() {
            Some(r) => Some(r.crc),
            None => self.header.as_ref().ok().map(|h| h.prev_crc),
        }
    }
}

/// Scans the records after the header. `bytes` is the whole segment file. Frames are judged
/// against the header's sequence (any sequence when the header is bad).
pub fn scan_segment(bytes: &[u8], max_record: u32) -> SegmentScan {
    scan(bytes, None, max_record, None)
}

/// Like [`scan_segment`] for the segment named with `sequence`: when the header is bad, frames
/// of other sequences (left by an earlier use of a recycled file) are still told apart.
pub fn scan_segment_of(bytes: &[u8], max_record: u32, sequence: u64) -> SegmentScan {
    scan(bytes, None, max_record, Some(sequence))
}

/// Like [`scan_segment_of`], with entries' data sliced out of `bytes` instead of copied.
pub fn scan_segment_shared(bytes: &bytes::Bytes, max_record: u32, sequence: u64) -> SegmentScan {
    scan(bytes, Some(bytes), max_record, Some(sequence))
}

fn scan(
    bytes: &[u8],
    owner: Option<&bytes::Bytes>,
    max_record: u32,
    name_sequence: Option<u64>,
) -> SegmentScan {
    let header = SegmentHeader::decode(bytes);
    // The sequence this segment's frames carry; frames of older ones are stale.
    let expected = match &header {
        Ok(h) => u32::try_from(h.sequence).ok(),
        Err(_) => name_sequence.and_then(|s| u32::try_from(s).ok()),
    };
    let Ok(segment_header) = header else {
        // With no header there is no chain to follow: only the witness question remains.
        let mut work = LookAhead::default();
        let after = look_after(bytes, 0, expected, &mut work);
        return SegmentScan {
            header,
            records: Vec::new(),
            stop_offset: 0,
            stop: Stop::Damaged(match header {
                Err(HeaderError::BadMagic) => CorruptionKind::BadMagic,
                Err(HeaderError::Version(v)) => CorruptionKind::UnsupportedVersion(v),
                Err(HeaderError::Flags(flags)) => CorruptionKind::Malformed(format!(
                    "segment header flags {flags:#x}: written with a feature this build lacks"
                )),
                Err(HeaderError::Checksum) => CorruptionKind::ChecksumMismatch,
                Err(HeaderError::Short | HeaderError::Zeroed) | Ok(_) => CorruptionKind::Torn,
            }),
            after,
            lookahead_checked_bytes: work.checked_bytes,
            first_valid_after: work.first_valid,
            last_valid_end: work.last_valid_end,
        };
    };
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    let mut prev_crc = segment_header.prev_crc;
    // Each iteration consumes at least one aligned frame header, so the loop ends within
    // `bytes.len() / FRAME_HEADER_LEN` iterations.
    let stop = loop {
        let Some(header_bytes) = bytes.get(offset..offset + FRAME_HEADER_LEN) else {
            // Fewer bytes left than a frame header (none at all when the file ends inside the
            // padding of the last record, which its CRC does not cover).
            let rest = bytes.get(offset..).unwrap_or_default();
            break if rest.iter().all(|&b| b == 0) {
                Stop::End
            } else {
                Stop::Damaged(CorruptionKind::Torn)
            };
        };
        if header_bytes.iter().all(|&b| b == 0) {
            break Stop::End;
        }
        let head = FrameHeader::read(header_bytes);
        if expected.is_some_and(|e| head.sequence < e)
            && valid_frame_at(bytes, offset, Some(head.sequence)).is_some()
        {
            // A whole record an earlier use of this (recycled) file left: the data ends here.
            break Stop::End;
        }
        if head.len > max_record {
            if valid_frame_at(bytes, offset, expected).is_some() {
                // A whole, checksummed record larger than the limit: the limit was lowered
                // since it was written. Cutting it as torn would drop it and all after it.
                break Stop::Damaged(CorruptionKind::Malformed(format!(
                    "a valid record of {} bytes is larger than max_record_bytes {max_record}: \
                     open with max_record_bytes of at least {}",
                    head.len, head.len
                )));
            }
            break Stop::Damaged(CorruptionKind::BadLength(u64::from(head.len)));
        }
        let payload_start = offset + FRAME_HEADER_LEN;
        let Some(payload) = bytes.get(payload_start..payload_start + head.len as usize) else {
            break Stop::Damaged(CorruptionKind::Torn);
        };
        let crc = frame_crc(head.prev_crc, &header_bytes[LEN_OFFSET..], payload);
        if crc != head.crc || head.prev_crc != prev_crc || !head.reserved_zero {
            break Stop::Damaged(CorruptionKind::ChecksumMismatch);
        }
        // From here the CRC vouches for every byte: anything wrong is not a torn write.
        if expected.is_some_and(|e| head.sequence != e) {
            break Stop::Damaged(CorruptionKind::Malformed(format!(
                "a record of segment {} in segment {}",
                head.sequence, segment_header.sequence
            )));
        }
        let Some(record_type) = RecordType::from_u8(head.record_type) else {
            break Stop::Damaged(CorruptionKind::Malformed(format!(
                "unknown record type {}",
                head.record_type
            )));
        };
        if head.durable > offset as u64 {
            break Stop::Damaged(CorruptionKind::Malformed(format!(
                "record claims {} durable bytes, more than its offset {offset}",
                head.durable
            )));
        }
        let record = match Record::decode_payload_in(
            record_type,
            payload,
            owner.map(|buf| (buf, payload_start)),
        ) {
            Ok(record) => record,
            Err(e) => break Stop::Damaged(CorruptionKind::Malformed(e.to_string())),
        };
        let framed = framed_len(head.len as usize);
        records.push(ScannedRecord {
            offset: offset as u64,
            crc,
            framed_len: framed as u64,
            more: head.flags & FLAG_MORE != 0,
            durable: head.durable,
            record,
        });
        prev_crc = crc;
        offset += framed;
    };
    let mut work = LookAhead::default();
    let after = look_after(bytes, offset, expected, &mut work);
    SegmentScan {
        header,
        records,
        stop_offset: offset as u64,
        after,
        stop,
        lookahead_checked_bytes: work.checked_bytes,
        first_valid_after: work.first_valid,
        last_valid_end: work.last_valid_end,
    }
}

/// Reads a self-consistent frame at `offset`: known type, zero reserved bytes, a payload within
/// the file, the `sequence` given (any when `None`) and a CRC that matches its own `prev_crc`
/// field. Says nothing about its link to the record before. The length is checked against the
/// file, not against `max_record_bytes`: a valid record written under a larger limit still
/// witnesses, and is still refused.
fn valid_frame_at(bytes: &[u8], offset: usize, sequence: Option<u32>) -> Option<FrameHeader> {
    let (head, payload) = candidate_at(bytes, offset, sequence)?;
    let crc =
        frame_crc(head.prev_crc, &bytes[offset + LEN_OFFSET..offset + FRAME_HEADER_LEN], payload);
    (crc == head.crc).then_some(head)
}

/// A frame header at `offset` that could start a record (known type, zero reserved bytes, the
/// `sequence` given when one is, a payload within the file), with its payload; the CRC is not
/// checked.
fn candidate_at(
    bytes: &[u8],
    offset: usize,
    sequence: Option<u32>,
) -> Option<(FrameHeader, &[u8])> {
    let header_bytes = bytes.get(offset..offset.checked_add(FRAME_HEADER_LEN)?)?;
    // Most slots a look-ahead visits are zeroes or payload bytes: the type byte alone turns
    // nearly all of them away before the whole header is read.
    RecordType::from_u8(header_bytes[TYPE_OFFSET])?;
    let head = FrameHeader::read(header_bytes);
    if !head.reserved_zero || sequence.is_some_and(|s| s != head.sequence) {
        return None;
    }
    let payload_start = offset + FRAME_HEADER_LEN;
    let payload = bytes.get(payload_start..payload_start.checked_add(head.len as usize)?)?;
    Some((head, payload))
}

/// Walks `bytes` from `from` for every valid record of segment `sequence` (each frame checked
/// on its own, as the look-ahead does), calling `visit` with its offset, the end of the bytes
/// accounted for before it (a valid record not starting there follows unreadable bytes) and the
/// record. Used to learn what a damaged log had held past its cut. The checksumming is bounded
/// like the look-ahead's; returns false when the budget ran out before the end.
pub(crate) fn salvage(
    bytes: &[u8],
    from: usize,
    max_record: u32,
    sequence: u32,
    mut visit: impl FnMut(u64, u64, Record),
) -> bool {
    let rest = bytes.len().saturating_sub(from) as u64;
    let budget = rest.saturating_mul(LOOKAHEAD_BUDGET_PER_BYTE) + LOOKAHEAD_BUDGET_MIN_BYTES;
    let mut checked = 0u64;
    let mut offset = from.next_multiple_of(RECORD_ALIGN);
    let mut accounted = from as u64;
    // Bounded by the file: every step moves at least one aligned slot forward.
    while offset + FRAME_HEADER_LEN <= bytes.len() {
        let Some((head, payload)) = candidate_at(bytes, offset, Some(sequence)) else {
            offset += RECORD_ALIGN;
            continue;
        };
        let cost = (FRAME_HEADER_LEN - LEN_OFFSET + payload.len()) as u64;
        if checked + cost > budget {
            return false;
        }
        checked += cost;
        let header_after_crc = &bytes[offset + LEN_OFFSET..offset + FRAME_HEADER_LEN];
        let decoded = (head.len <= max_record
            && frame_crc(head.prev_crc, header_after_crc, payload) == head.crc)
            .then(|| RecordType::from_u8(head.record_type))
            .flatten()
            .and_then(|t| Record::decode_payload_in(t, payload, None).ok());
        let Some(record) = decoded else {
            offset += RECORD_ALIGN;
            continue;
        };
        visit(offset as u64, accounted, record);
        offset += framed_len(payload.len());
        accounted = offset as u64;
    }
    true
}

/// What a look-ahead did besides its answer.
#[derive(Default)]
struct LookAhead {
    /// Bytes checksummed.
    checked_bytes: u64,
    /// Offset of the first valid record found.
    first_valid: Option<u64>,
    /// End of the last valid record found.
    last_valid_end: Option<u64>,
}

/// Looks past a stop for valid records of the segment's `sequence` (records an earlier use of a
/// recycled file left are not this segment's), and for one that proves the stop was durable.
/// Counts the bytes it checksums and gives up (`Undecided`) past its budget.
fn look_after(bytes: &[u8], stop: usize, sequence: Option<u32>, work: &mut LookAhead) -> After {
    let checked = &mut work.checked_bytes;
    let rest = bytes.len().saturating_sub(stop) as u64;
    let budget = rest.saturating_mul(LOOKAHEAD_BUDGET_PER_BYTE) + LOOKAHEAD_BUDGET_MIN_BYTES;
    let mut after = After::Nothing;
    let mut offset = stop + RECORD_ALIGN;
    // Bounded by the file: every step moves at least one aligned slot forward.
    while offset + FRAME_HEADER_LEN <= bytes.len() {
        let Some((head, payload)) = candidate_at(bytes, offset, sequence) else {
            offset += RECORD_ALIGN;
            continue;
        };
        let cost = (FRAME_HEADER_LEN - LEN_OFFSET + payload.len()) as u64;
        if *checked + cost > budget {
            return After::Undecided { offset: offset as u64 };
        }
        *checked += cost;
        let header_after_crc = &bytes[offset + LEN_OFFSET..offset + FRAME_HEADER_LEN];
        if frame_crc(head.prev_crc, header_after_crc, payload) != head.crc {
            offset += RECORD_ALIGN;
            continue;
        }
        work.first_valid.get_or_insert(offset as u64);
        work.last_valid_end = Some((offset + framed_len(payload.len())) as u64);
        if head.durable > stop as u64 {
            return After::DurableWitness { offset: offset as u64 };
        }
        after = After::NotDurable;
        // Its payload is its own: nothing in it starts a record.
        offset += framed_len(payload.len());
    }
    after
}

/// One past the last non-zero byte of `bytes` (0 if every byte is zero): where a file's
/// written bytes end. Sixteen bytes at a time, since an open scans a whole preallocated segment
/// with it.
pub(crate) fn written_end(bytes: &[u8]) -> usize {
    let (head, chunks) = bytes.as_rchunks::<16>();
    // Bounded by the file: each step moves one chunk towards its start.
    match chunks.iter().rposition(|chunk| u128::from_le_bytes(*chunk) != 0) {
        Some(k) => {
            let chunk = &chunks[k];
            let within = chunk.iter().rposition(|&b| b != 0).expect("a non-zero byte in it");
            head.len() + k * 16 + within + 1
        }
        None => head.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1),
    }
}

/// End of the last frame at or after `from` whose header names segment `sequence`, checked or
/// not (`from` if none). In a recycled file that is what must be erased after the recovered
/// end: a torn record of this segment left there would, once shorter records are written over
/// its start and the segment is sealed, read as damage in a synced segment. Frames an earlier
/// use of the file left carry older sequences and can stay.
pub(crate) fn own_frames_end(bytes: &[u8], from: usize, sequence: u64) -> usize {
    let mut end = from;
    let mut offset = from;
    // Bounded by the file: every step moves one aligned slot forward.
    while offset + FRAME_HEADER_LEN <= bytes.len() {
        let header = &bytes[offset..offset + FRAME_HEADER_LEN];
        if RecordType::from_u8(header[TYPE_OFFSET]).is_some() {
            let head = FrameHeader::read(header);
            if head.reserved_zero && u64::from(head.sequence) == sequence {
                // A length no record can have still names this segment: erase to the end.
                let framed = framed_len(head.len as usize);
                end = end.max(offset.saturating_add(framed).min(bytes.len()));
            }
        }
        offset += RECORD_ALIGN;
    }
    end
}

/// Where in the log a segment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// The newest segment, with older ones before it: the only one that can hold unsynced
    /// writes.
    Last,
    /// The newest segment and the only one. It can hold unsynced writes too, but its header was
    /// durable before anything in it could be acknowledged: a new log's first segment takes its
    /// name only once its header and checkpoint are synced, and older segments are deleted only
    /// once everything in the newest is durable.
    Only,
    /// Any older segment: synced whole before the next one was started.
    Sealed,
}

/// Every position.
pub const ANY: &[Position] = &[Position::Last, Position::Only, Position::Sealed];
/// The newest segment, whether or not older ones precede it.
pub const NEWEST: &[Position] = &[Position::Last, Position::Only];

/// What the stop looks like, reduced to what the decision needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopClass {
    /// Zeroes or end of file after valid records.
    End,
    /// A record that is not valid (torn, bad CRC, bad length, broken chain).
    BadRecord,
    /// A record that passed its CRC but does not decode or contradicts itself: not a torn
    /// write, so never cut as one.
    Malformed,
    /// The segment header is missing, torn or fails its CRC.
    BadHeader,
    /// The segment header is bad although a valid record starts in its sector: sectors are
    /// written whole, so the header was written and has been damaged since; no torn write
    /// leaves this.
    DamagedHeader,
    /// The header is intact but written by another format version, or with flags this build
    /// does not know.
    Version,
}

/// What recovery does about a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep every record found.
    Accept,
    /// Keep the records before the stop, erase the rest of the segment (a segment with a bad
    /// header is removed whole).
    TruncateTail,
    /// Refuse to open: durable data is damaged.
    Corruption,
}

/// One row of the recovery table.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Row label, used in tests and DESIGN.md.
    pub label: &'static str,
    /// Segments it applies to.
    pub positions: &'static [Position],
    /// The stop it applies to.
    pub stop: StopClass,
    /// What follows, reduced to: nothing valid / valid but not durable / durable witness
    /// (`None`: any).
    pub after: Option<AfterClass>,
    /// The decision.
    pub decision: Decision,
    /// Why.
    pub rationale: &'static str,
}

/// What follows the stop, without offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterClass {
    /// No valid record.
    Nothing,
    /// Valid records, none durable.
    NotDurable,
    /// A durable witness.
    Witness,
    /// The look-ahead's budget ran out before it could tell.
    Undecided,
}

impl From<After> for AfterClass {
    fn from(after: After) -> Self {
        match after {
            After::Nothing => AfterClass::Nothing,
            After::NotDurable => AfterClass::NotDurable,
            After::DurableWitness { .. } => AfterClass::Witness,
            After::Undecided { .. } => AfterClass::Undecided,
        }
    }
}

/// The row a sealed segment read through its footer matches: its records are replayed from the
/// seal-time summary, its payloads are not read (their CRCs are checked when entries are read,
/// and by `raftwal verify`, which always scans).
pub const FOOTER_CASE: Case = Case {
    label: "F1",
    positions: &[Position::Sealed],
    stop: StopClass::End,
    after: Some(AfterClass::Nothing),
    decision: Decision::Accept,
    rationale: "a sealed segment with a valid footer and trailer: replayed from the footer",
};

/// The recovery decision table. Exactly one row matches every combination of inputs; a test
/// enumerates them all.
pub const DECISION_TABLE: &[Case] = &[
    Case {
        label: "R1",
        positions: ANY,
        stop: StopClass::End,
        after: Some(AfterClass::Nothing),
        decision: Decision::Accept,
        rationale: "a clean end: the preallocated space after the last record was never written",
    },
    Case {
        label: "R2",
        positions: NEWEST,
        stop: StopClass::End,
        after: Some(AfterClass::NotDurable),
        decision: Decision::TruncateTail,
        rationale: "zeroed sectors of an unsynced write, with a later unsynced write surviving",
    },
    Case {
        label: "R3",
        positions: NEWEST,
        stop: StopClass::BadRecord,
        after: Some(AfterClass::Nothing),
        decision: Decision::TruncateTail,
        rationale: "a torn tail: the last write was cut short by the crash",
    },
    Case {
        label: "R4",
        positions: NEWEST,
        stop: StopClass::BadRecord,
        after: Some(AfterClass::NotDurable),
        decision: Decision::TruncateTail,
        rationale: "a torn unsynced write, with a later unsynced write surviving",
    },
    Case {
        label: "R5",
        positions: ANY,
        stop: StopClass::End,
        after: Some(AfterClass::Witness),
        decision: Decision::Corruption,
        rationale: "durable records were zeroed: a later record proves they had been synced",
    },
    Case {
        label: "R6",
        positions: NEWEST,
        stop: StopClass::BadRecord,
        after: Some(AfterClass::Witness),
        decision: Decision::Corruption,
        rationale: "a durable record is damaged: a later record proves it had been synced",
    },
    Case {
        label: "R7",
        positions: &[Position::Sealed],
        stop: StopClass::End,
        after: Some(AfterClass::NotDurable),
        decision: Decision::Corruption,
        rationale: "a sealed segment was synced whole, so a hole before valid records is damage",
    },
    Case {
        label: "R8",
        positions: &[Position::Sealed],
        stop: StopClass::BadRecord,
        after: None,
        decision: Decision::Corruption,
        rationale: "a sealed segment was synced whole, so a bad record in it is damage",
    },
    Case {
        label: "R9",
        positions: ANY,
        stop: StopClass::Malformed,
        after: None,
        decision: Decision::Corruption,
        rationale: "the CRC vouches for the bytes, so they are not torn: a bug or a forged record",
    },
    Case {
        label: "H1",
        positions: &[Position::Last],
        stop: StopClass::BadHeader,
        after: Some(AfterClass::Nothing),
        decision: Decision::TruncateTail,
        rationale: "a new segment whose first write never became durable: it holds nothing acknowledged",
    },
    Case {
        label: "H2",
        positions: &[Position::Last],
        stop: StopClass::BadHeader,
        after: Some(AfterClass::NotDurable),
        decision: Decision::TruncateTail,
        rationale: "a new segment torn in its first, unsynced write",
    },
    Case {
        label: "H3",
        positions: &[Position::Last],
        stop: StopClass::BadHeader,
        after: Some(AfterClass::Witness),
        decision: Decision::Corruption,
        rationale: "a record proves the header had been synced: the header is damaged",
    },
    Case {
        label: "H4",
        positions: &[Position::Sealed],
        stop: StopClass::BadHeader,
        after: None,
        decision: Decision::Corruption,
        rationale: "a sealed segment's header was synced: it is damaged",
    },
    Case {
        label: "H5",
        positions: ANY,
        stop: StopClass::Version,
        after: None,
        decision: Decision::Corruption,
        rationale: "written by another format version or with unknown flags: refuse rather than misread",
    },
    Case {
        label: "H6",
        positions: &[Position::Only],
        stop: StopClass::BadHeader,
        after: None,
        decision: Decision::Corruption,
        rationale: "the only segment's header was durable before anything in it was acknowledged: \
                    it is damaged, and removing the segment would forget the hard state",
    },
    Case {
        label: "H7",
        positions: ANY,
        stop: StopClass::DamagedHeader,
        after: None,
        decision: Decision::Corruption,
        rationale: "a valid record in the header's sector proves the sector was written whole: \
                    the header is damaged, not torn",
    },
    Case {
        label: "U1",
        positions: ANY,
        stop: StopClass::End,
        after: Some(AfterClass::Undecided),
        decision: Decision::Corruption,
        rationale: "too many candidate records after the stop to check: refuse rather than guess",
    },
    Case {
        label: "U2",
        positions: NEWEST,
        stop: StopClass::BadRecord,
        after: Some(AfterClass::Undecided),
        decision: Decision::Corruption,
        rationale: "too many candidate records after the stop to check: refuse rather than guess",
    },
    Case {
        label: "U3",
        positions: &[Position::Last],
        stop: StopClass::BadHeader,
        after: Some(AfterClass::Undecided),
        decision: Decision::Corruption,
        rationale: "too many candidate records after the stop to check: refuse rather than guess",
    },
];

/// The row that applies. Panics if none does, which the exhaustive test rules out.
pub fn decide(position: Position, stop: StopClass, after: AfterClass) -> &'static Case {
    let mut matching = DECISION_TABLE.iter().filter(|case| {
        case.positions.contains(&position)
            && case.stop == stop
            && case.after.is_none_or(|a| a == after)
    });
    let case = matching.next().unwrap_or_else(|| {
        panic!("no recovery case for {position:?} {stop:?} {after:?}: the table is incomplete")
    });
    debug_assert!(
        matching.next().is_none(),
        "two recovery cases match {position:?} {stop:?} {after:?}"
    );
    case
}

/// Classifies a scan's stop for [`decide`].
pub fn classify(scan: &SegmentScan) -> StopClass {
    match (&scan.header, &scan.stop) {
        (Err(HeaderError::Version(_) | HeaderError::Flags(_)), _) => StopClass::Version,
        (Err(_), _) if scan.first_valid_after.is_some_and(|at| at < ATOMIC_SECTOR_BYTES) => {
            StopClass::DamagedHeader
        }
        (Err(_), _) => StopClass::BadHeader,
        (Ok(_), Stop::End) => StopClass::End,
        (Ok(_), Stop::Damaged(CorruptionKind::Malformed(_))) => StopClass::Malformed,
        (Ok(_), Stop::Damaged(_)) => StopClass::BadRecord,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::{Entry, HardState};
    use crate::wal::format::{DURABLE_OFFSET, append_record};
    use byteorder::{ByteOrder, LittleEndian};

    const MAX: u32 = 1 << 20;

    #[test]
    fn the_written_end_is_one_past_the_last_non_zero_byte_wherever_it_falls() {
        // Every length around the chunk size, every position of the last non-zero byte, with
        // and without an earlier non-zero byte, against the byte-at-a-time answer.
        for len in 0..80 {
            assert_eq!(written_end(&vec![0u8; len]), 0, "{len} zero bytes");
            for last in 0..len {
                for earlier in [None, Some(0), Some(last / 2)] {
                    let mut bytes = vec![0u8; len];
                    bytes[last] = 0x80;
                    if let Some(e) = earlier {
                        bytes[e] = 1;
                    }
                    let want = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                    assert_eq!(want, last + 1);
                    assert_eq!(written_end(&bytes), want, "length {len}, last at {last}");
                }
            }
        }
    }

    #[test]
    fn every_input_matches_exactly_one_case() {
        let positions = [Position::Last, Position::Only, Position::Sealed];
        let stops = [
            StopClass::End,
            StopClass::BadRecord,
            StopClass::Malformed,
            StopClass::BadHeader,
            StopClass::DamagedHeader,
            StopClass::Version,
        ];
        let afters = [
            AfterClass::Nothing,
            AfterClass::NotDurable,
            AfterClass::Witness,
            AfterClass::Undecided,
        ];
        let mut used = std::collections::HashSet::new();
        for position in positions {
            for stop in stops {
                for after in afters {
                    let matching: Vec<_> = DECISION_TABLE
                        .iter()
                        .filter(|c| {
                            c.positions.contains(&position)
                                && c.stop == stop
                                && c.after.is_none_or(|a| a == after)
                        })
                        .map(|c| c.label)
                        .collect();
                    assert_eq!(
                        matching.len(),
                        1,
                        "{position:?} {stop:?} {after:?} matched {matching:?}"
                    );
                    used.insert(matching[0]);
                }
            }
        }
        assert_eq!(used.len(), DECISION_TABLE.len(), "every row is reachable");
    }

    #[test]
    fn sealed_segments_are_never_truncated() {
        for case in DECISION_TABLE {
            if case.positions.contains(&Position::Sealed) {
                assert_ne!(case.decision, Decision::TruncateTail, "row {}", case.label);
            }
        }
    }

    /// A segment of `size` bytes: header, then one record per write, `durable` as the writer
    /// would have set it if every write before `synced_writes` had been synced.
    struct Built {
        bytes: Vec<u8>,
        offsets: Vec<usize>,
    }

    fn build(records: &[Record], synced_writes: usize, size: usize) -> Built {
        let header = SegmentHeader { sequence: 1, first_record: 1, prev_crc: 0, recycled: false };
        let mut bytes = header.encode().to_vec();
        let mut prev = 0;
        let mut offsets = Vec::new();
        let mut durable = 0u64;
        for (i, record) in records.iter().enumerate() {
            offsets.push(bytes.len());
            prev = append_record(&mut bytes, record.record_type(), 0, 1, prev, durable, |out| {
                record.encode_payload(out)
            });
            if i < synced_writes {
                durable = bytes.len() as u64;
            }
        }
        bytes.resize(size.max(bytes.len()), 0);
        Built { bytes, offsets }
    }

    fn entries(n: u64) -> Vec<Record> {
        (1..=n)
            .map(|i| Record::Entries {
                group: 0,
                entries: vec![Entry::new(i, 1, vec![i as u8; 40])],
                hard_state: None,
            })
            .chain([Record::HardState {
                group: 0,
                hard_state: HardState { term: 1, vote: 1, commit: n },
            }])
            .collect()
    }

    fn decision(built: &[u8], position: Position) -> (&'static str, Decision) {
        let scan = scan_segment(built, MAX);
        let case = decide(position, classify(&scan), scan.after.into());
        (case.label, case.decision)
    }

    #[test]
    fn r1_clean_segment_is_accepted_with_all_records() {
        let built = build(&entries(4), 5, 4096);
        let scan = scan_segment(&built.bytes, MAX);
        assert_eq!(scan.records.len(), 5);
        assert_eq!(scan.stop, Stop::End);
        assert_eq!(decision(&built.bytes, Position::Last), ("R1", Decision::Accept));
        assert_eq!(decision(&built.bytes, Position::Sealed), ("R1", Decision::Accept));
    }

    #[test]
    fn r2_zeroed_unsynced_record_before_a_surviving_unsynced_one_is_cut() {
        let mut built = build(&entries(4), 2, 4096);
        let (a, b) = (built.offsets[2], built.offsets[3]);
        built.bytes[a..b].fill(0);
        let scan = scan_segment(&built.bytes, MAX);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.after, After::NotDurable);
        assert_eq!(decision(&built.bytes, Position::Last), ("R2", Decision::TruncateTail));
    }

    #[test]
    fn r3_torn_last_record_is_cut() {
        let mut built = build(&entries(4), 4, 4096);
        let last = built.offsets[4];
        built.bytes[last + FRAME_HEADER_LEN + 2] ^= 0xFF;
        assert_eq!(decision(&built.bytes, Position::Last), ("R3", Decision::TruncateTail));
        let scan = scan_segment(&built.bytes, MAX);
        assert_eq!(scan.stop_offset, last as u64);
    }

    #[test]
    fn r3_record_running_past_the_end_of_the_file_is_torn() {
        let built = build(&entries(4), 4, 0);
        let cut = built.offsets[4] + FRAME_HEADER_LEN + 1;
        let scan = scan_segment(&built.bytes[..cut], MAX);
        assert_eq!(scan.stop, Stop::Damaged(CorruptionKind::Torn));
        assert_eq!(decision(&built.bytes[..cut], Position::Last).0, "R3");
    }

    #[test]
    fn r4_damaged_unsynced_record_before_a_surviving_unsynced_one_is_cut() {
        let mut built = build(&entries(4), 2, 4096);
        built.bytes[built.offsets[2] + FRAME_HEADER_LEN] ^= 1;
        assert_eq!(decision(&built.bytes, Position::Last), ("R4", Decision::TruncateTail));
    }

    #[test]
    fn r5_zeroed_durable_record_is_corruption() {
        let mut built = build(&entries(4), 4, 4096);
        let (a, b) = (built.offsets[1], built.offsets[2]);
        built.bytes[a..b].fill(0);
        let scan = scan_segment(&built.bytes, MAX);
        assert!(matches!(scan.after, After::DurableWitness { .. }));
        assert_eq!(decision(&built.bytes, Position::Last), ("R5", Decision::Corruption));
    }

    #[test]
    fn r6_flipped_bit_in_a_durable_record_is_corruption() {
        let mut built = build(&entries(4), 4, 4096);
        built.bytes[built.offsets[1] + FRAME_HEADER_LEN + 3] ^= 0x10;
        assert_eq!(decision(&built.bytes, Position::Last), ("R6", Decision::Corruption));
        assert_eq!(decision(&built.bytes, Position::Sealed), ("R8", Decision::Corruption));
    }

    #[test]
    fn r7_r8_damage_in_a_sealed_segment_is_corruption() {
        let mut zeroed = build(&entries(4), 0, 4096);
        let (a, b) = (zeroed.offsets[1], zeroed.offsets[2]);
        zeroed.bytes[a..b].fill(0);
        assert_eq!(decision(&zeroed.bytes, Position::Sealed), ("R7", Decision::Corruption));
        let mut torn = build(&entries(4), 0, 4096);
        torn.bytes[torn.offsets[4] + FRAME_HEADER_LEN] ^= 1;
        assert_eq!(decision(&torn.bytes, Position::Sealed), ("R8", Decision::Corruption));
    }

    #[test]
    fn r9_record_with_valid_crc_but_bad_contents_is_corruption() {
        let mut bytes =
            SegmentHeader { sequence: 1, first_record: 1, prev_crc: 0, recycled: false }
                .encode()
                .to_vec();
        // A HardState record with one byte too many: the CRC is right, the payload is not.
        append_record(&mut bytes, RecordType::HardState, 0, 1, 0, 0, |out| out.extend([0u8; 25]));
        bytes.resize(1024, 0);
        let scan = scan_segment(&bytes, MAX);
        assert!(matches!(scan.stop, Stop::Damaged(CorruptionKind::Malformed(_))));
        assert_eq!(decision(&bytes, Position::Last), ("R9", Decision::Corruption));
    }

    #[test]
    fn r9_record_claiming_more_durable_bytes_than_its_offset_is_corruption() {
        let mut built = build(&entries(1), 2, 1024);
        let at = built.offsets[1];
        LittleEndian::write_u32(&mut built.bytes[at + DURABLE_OFFSET..], 1 << 30);
        // Re-seal the CRC so only the durable field is wrong.
        let head = FrameHeader::read(&built.bytes[at..]);
        let payload =
            built.bytes[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + head.len as usize].to_vec();
        let crc = frame_crc(
            head.prev_crc,
            &built.bytes[at + LEN_OFFSET..at + FRAME_HEADER_LEN],
            &payload,
        );
        LittleEndian::write_u32(&mut built.bytes[at..], crc);
        assert_eq!(decision(&built.bytes, Position::Last).0, "R9");
    }

    #[test]
    fn h1_h2_unwritten_or_torn_header_of_the_last_segment_is_dropped() {
        assert_eq!(decision(&[0u8; 4096], Position::Last), ("H1", Decision::TruncateTail));
        assert_eq!(decision(&[], Position::Last), ("H1", Decision::TruncateTail));
        // The first sector of the first write was lost, a later one survived.
        let built = lost_first_sector(0);
        assert_eq!(decision(&built.bytes, Position::Last), ("H2", Decision::TruncateTail));
    }

    /// Eight records written in one segment, the first `synced_writes` of them synced, then the
    /// first sector (header and first records) zeroed: a torn write that kept a later sector.
    fn lost_first_sector(synced_writes: usize) -> Built {
        let mut built = build(&entries(8), synced_writes, 4096);
        assert!(*built.offsets.last().unwrap() as u64 > ATOMIC_SECTOR_BYTES, "records beyond it");
        built.bytes[..ATOMIC_SECTOR_BYTES as usize].fill(0);
        built
    }

    #[test]
    fn h7_bad_header_sharing_its_sector_with_a_valid_record_is_corruption() {
        let mut built = build(&entries(2), 0, 4096);
        built.bytes[3] ^= 1;
        let scan = scan_segment(&built.bytes, MAX);
        assert_eq!(scan.first_valid_after, Some(SEGMENT_HEADER_LEN as u64));
        for position in [Position::Last, Position::Only, Position::Sealed] {
            assert_eq!(decision(&built.bytes, position), ("H7", Decision::Corruption));
        }
    }

    #[test]
    fn h3_h4_damaged_durable_header_is_corruption() {
        let built = lost_first_sector(3);
        assert_eq!(decision(&built.bytes, Position::Last), ("H3", Decision::Corruption));
        assert_eq!(decision(&built.bytes, Position::Sealed), ("H4", Decision::Corruption));
    }

    #[test]
    fn h5_other_format_version_is_refused() {
        let mut built = build(&entries(1), 2, 1024);
        LittleEndian::write_u32(&mut built.bytes[crate::wal::format::VERSION_OFFSET..], 9);
        let crc = crc32fast::hash(&built.bytes[..crate::wal::format::HEADER_CRC_OFFSET]);
        LittleEndian::write_u32(&mut built.bytes[crate::wal::format::HEADER_CRC_OFFSET..], crc);
        let scan = scan_segment(&built.bytes, MAX);
        assert_eq!(scan.stop, Stop::Damaged(CorruptionKind::UnsupportedVersion(9)));
        assert_eq!(decision(&built.bytes, Position::Last), ("H5", Decision::Corruption));
    }

    #[test]
    fn oversized_length_is_refused_before_any_allocation() {
        let mut built = build(&entries(1), 2, 1024);
        let at = built.offsets[1];
        LittleEndian::write_u32(&mut built.bytes[at + LEN_OFFSET..], u32::MAX);
        let scan = scan_segment(&built.bytes, MAX);
        assert_eq!(scan.stop, Stop::Damaged(CorruptionKind::BadLength(u64::from(u32::MAX))));
    }

    #[test]
    fn a_record_from_another_chain_stops_the_scan() {
        // Two valid records whose chain does not link: the second names a different predecessor.
        let built = build(&entries(2), 0, 0);
        let mut bytes = built.bytes.clone();
        let mut other = Vec::new();
        append_record(&mut other, RecordType::HardState, 0, 1, 0xABCD, 0, |out| {
            out.extend([0u8; 24]);
        });
        bytes.truncate(built.offsets[2]);
        bytes.extend(other);
        bytes.resize(2048, 0);
        let scan = scan_segment(&bytes, MAX);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.stop, Stop::Damaged(CorruptionKind::ChecksumMismatch));
    }

    #[test]
    fn h6_damaged_header_of_the_only_segment_is_corruption_whatever_follows() {
        let built = lost_first_sector(0);
        assert_eq!(decision(&built.bytes, Position::Only), ("H6", Decision::Corruption));
        assert_eq!(decision(&[0u8; 4096], Position::Only), ("H6", Decision::Corruption));
        // The newest of several segments with the same bytes is a torn new segment.
        assert_eq!(decision(&built.bytes, Position::Last), ("H2", Decision::TruncateTail));
    }

    #[test]
    fn h5_unknown_header_flags_are_refused() {
        let mut built = build(&entries(1), 2, 1024);
        LittleEndian::write_u32(&mut built.bytes[crate::wal::format::FLAGS_OFFSET..], 4);
        let crc = crc32fast::hash(&built.bytes[..crate::wal::format::HEADER_CRC_OFFSET]);
        LittleEndian::write_u32(&mut built.bytes[crate::wal::format::HEADER_CRC_OFFSET..], crc);
        let scan = scan_segment(&built.bytes, MAX);
        assert_eq!(scan.header, Err(HeaderError::Flags(4)));
        assert!(
            matches!(scan.stop, Stop::Damaged(CorruptionKind::Malformed(_))),
            "{:?}",
            scan.stop
        );
        for position in [Position::Last, Position::Only, Position::Sealed] {
            assert_eq!(decision(&built.bytes, position), ("H5", Decision::Corruption));
        }
    }

    #[test]
    fn a_valid_record_above_a_lowered_limit_is_refused_not_cut() {
        let records = vec![
            Record::Entries {
                group: 0,
                entries: vec![Entry::new(1, 1, vec![1u8; 40])],
                hard_state: None,
            },
            Record::Entries {
                group: 0,
                entries: vec![Entry::new(2, 1, vec![2u8; 3000])],
                hard_state: None,
            },
        ];
        let built = build(&records, 0, 8192);
        let scan = scan_segment(&built.bytes, 2048);
        assert_eq!(scan.records.len(), 1);
        match &scan.stop {
            Stop::Damaged(CorruptionKind::Malformed(why)) => {
                assert!(why.contains("max_record_bytes"), "{why}");
            }
            other => panic!("a valid oversized record must be malformed, got {other:?}"),
        }
        assert_eq!(decision_with(&built.bytes, Position::Last, 2048), ("R9", Decision::Corruption));
        // A length beyond the limit that is not a valid record is still a torn write.
        let mut torn = built.bytes.clone();
        torn[built.offsets[1] + FRAME_HEADER_LEN + 100] ^= 1;
        assert_eq!(decision_with(&torn, Position::Last, 2048), ("R3", Decision::TruncateTail));
    }

    fn decision_with(bytes: &[u8], position: Position, max: u32) -> (&'static str, Decision) {
        let scan = scan_segment(bytes, max);
        let case = decide(position, classify(&scan), scan.after.into());
        (case.label, case.decision)
    }

    /// A segment whose bytes after a clean start repeat a 32-byte pattern with, every 32
    /// bytes, a frame header of a known type, zero reserved bytes, the segment's sequence and a
    /// long payload that fails its CRC (the slots between are no candidates).
    fn hostile(size: usize, len: u32) -> Vec<u8> {
        let built = build(&entries(1), 2, 0);
        let mut bytes = built.bytes;
        let start = bytes.len() + RECORD_ALIGN;
        bytes.resize(start, 0);
        bytes.extend(hostile_tail(size.saturating_sub(start), len, 1));
        bytes
    }

    /// `size` bytes of the hostile pattern (see [`hostile`]) for segment `sequence`.
    pub(crate) fn hostile_tail(size: usize, len: u32, sequence: u32) -> Vec<u8> {
        let mut pattern = [0xFFu8; 32];
        pattern[4..8].copy_from_slice(&len.to_le_bytes());
        pattern[8..16].fill(0);
        pattern[8] = 2;
        pattern[20..24].copy_from_slice(&sequence.to_le_bytes());
        pattern.iter().copied().cycle().take(size).collect()
    }

    #[test]
    fn a_hostile_segment_costs_the_look_ahead_a_bounded_amount_of_work() {
        const SIZE: usize = 4 << 20;
        let bytes = hostile(SIZE, 1 << 20);
        let scan = scan_segment(&bytes, MAX);
        let rest = (bytes.len() as u64) - scan.stop_offset;
        let bound = rest * LOOKAHEAD_BUDGET_PER_BYTE + LOOKAHEAD_BUDGET_MIN_BYTES;
        assert!(
            scan.lookahead_checked_bytes <= bound,
            "the look-ahead checksummed {} bytes of a {SIZE}-byte segment",
            scan.lookahead_checked_bytes
        );
        assert!(matches!(scan.after, After::Undecided { .. }), "{:?}", scan.after);
        assert_eq!(decision(&bytes, Position::Last), ("U2", Decision::Corruption));
        assert_eq!(decision(&bytes, Position::Sealed), ("R8", Decision::Corruption));
    }

    #[test]
    fn an_honest_tail_checksums_each_record_once() {
        // A torn record, then a dozen unsynced records that survived: each is checked once.
        let mut built = build(&entries(12), 1, 8192);
        built.bytes[built.offsets[1] + FRAME_HEADER_LEN] ^= 1;
        let scan = scan_segment(&built.bytes, MAX);
        assert_eq!(scan.after, After::NotDurable);
        let after_stop = built.offsets[built.offsets.len() - 1] as u64 + 100 - scan.stop_offset;
        assert!(
            scan.lookahead_checked_bytes <= after_stop,
            "{} bytes checksummed for {after_stop} bytes of records",
            scan.lookahead_checked_bytes
        );
    }
}
