//! The WAL's on-disk format: segment file names, the segment header, the record frame and the
//! record payloads. DESIGN.md §5 has the same layout as diagrams and tables; the test at the end
//! of this file checks the constants against that table.
//!
//! Every offset is derived from the sizes of the fields before it, and every integer is
//! little-endian.

use byteorder::{ByteOrder, LittleEndian};

use crate::codec::{self, DecodeError, Decoder};
use crate::types::{Entry, HardState, SnapshotMetadata};

// ---- Segment file names ------------------------------------------------------------------------

/// Suffix of a sealed or active segment file.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a segment being prepared; never read by recovery, removed on open.
pub const TEMP_SUFFIX: &str = ".tmp";

/// `{sequence:016x}-{first_record:016x}.wal`: a plain sorted listing is log order.
pub fn segment_name(sequence: u64, first_record: u64) -> String {
    codec::hex_name(&[sequence, first_record], SEGMENT_SUFFIX)
}

/// The (sequence, first record) a segment file name carries, or `None` for other files.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(seq, 16).ok()?, u64::from_str_radix(first, 16).ok()?))
}

/// Suffix of a released segment file kept for reuse.
pub const POOL_SUFFIX: &str = ".free";

/// `{sequence:016x}.free`: segment `sequence`'s file, released and kept for reuse.
pub fn pool_name(sequence: u64) -> String {
    codec::hex_name(&[sequence], POOL_SUFFIX)
}

/// `{sequence:016x}.tmp`: the file prepared to become segment `sequence`.
pub fn temp_name(sequence: u64) -> String {
    codec::hex_name(&[sequence], TEMP_SUFFIX)
}

/// Temp name of segment `sequence`'s file when it is created without zero-filling (a
/// rollover that did not wait for the background preparation, whose file has the plain temp
/// name); removed at open like any temp file.
pub fn unwritten_temp_name(sequence: u64) -> String {
    codec::hex_name(&[sequence, 0], TEMP_SUFFIX)
}

// ---- Segment header ----------------------------------------------------------------------------

/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RAFTWAL\x01";
/// The format version this build writes. Version 3 added the Witness (type 8) and EntriesHardState (type 9) records:
/// a build that knows only version 2 refuses such a segment by its header, rather than taking
/// the new record for damage. Version 1 (one group per directory, no group ids in records) is
/// refused with [`HeaderError::Version`].
pub const FORMAT_VERSION: u32 = 3;
/// The oldest version this build reads: version 2 segments hold a subset of version 3's records.
pub const OLDEST_READ_VERSION: u32 = 2;

/// Header field offsets, each derived from the one before.
pub const MAGIC_OFFSET: usize = 0;
/// Format version, u32.
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + SEGMENT_MAGIC.len();
/// Reserved flags, u32, zero.
pub const FLAGS_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
/// Segment sequence number, u64.
pub const SEQUENCE_OFFSET: usize = FLAGS_OFFSET + size_of::<u32>();
/// Ordinal of the segment's first record among all records the log ever wrote, u64.
pub const FIRST_RECORD_OFFSET: usize = SEQUENCE_OFFSET + size_of::<u64>();
/// CRC of the previous segment's last record (0 for the first segment ever), u32.
pub const PREV_CRC_OFFSET: usize = FIRST_RECORD_OFFSET + size_of::<u64>();
/// CRC-32 of bytes `0..HEADER_CRC_OFFSET`, u32.
pub const HEADER_CRC_OFFSET: usize = PREV_CRC_OFFSET + size_of::<u32>();
/// Bytes of the segment header; records start here.
pub const SEGMENT_HEADER_LEN: usize = HEADER_CRC_OFFSET + size_of::<u32>();

/// Records are aligned to this many bytes.
pub const RECORD_ALIGN: usize = 8;

const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(RECORD_ALIGN));

/// The fixed first bytes of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the log; consecutive segments differ by one.
    pub sequence: u64,
    /// Ordinal of the segment's first record among every record the log wrote since it was
    /// created: the previous segment's plus the records in it. Recovery checks the count.
    pub first_record: u64,
    /// CRC of the last record of the previous segment: the record chain crosses files.
    pub prev_crc: u32,
    /// Whether the file held an earlier segment ([`HEADER_FLAG_RECYCLED`]): bytes after the end
    /// of its data are then what that use left, not zeros.
    pub recycled: bool,
}

/// The largest `first_record` a segment may carry: 2^62 records (some 15,000 years at ten
/// million a second) leaves the writer's count, which adds the records of a write to it, far
/// from overflowing. Recovery refuses a header or name beyond it as corruption.
pub const MAX_FIRST_RECORD: u64 = 1 << 62;

/// Header flag: the file is a recycled one (see [`SegmentHeader::recycled`]).
pub const HEADER_FLAG_RECYCLED: u32 = 1;

/// Why a segment header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Short,
    /// Every byte zero: the header was never written.
    Zeroed,
    /// Not a raftwal segment.
    BadMagic,
    /// Written by an unknown format version.
    Version(u32),
    /// Flags this build does not know (every flag is reserved and written 0): the segment was
    /// written with a feature this build lacks, so its records may not mean what they seem.
    Flags(u32),
    /// The header CRC does not match.
    Checksum,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut buf = [0u8; SEGMENT_HEADER_LEN];
        buf[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
        LittleEndian::write_u32(&mut buf[VERSION_OFFSET..], FORMAT_VERSION);
        let flags = if self.recycled { HEADER_FLAG_RECYCLED } else { 0 };
        LittleEndian::write_u32(&mut buf[FLAGS_OFFSET..], flags);
        LittleEndian::write_u64(&mut buf[SEQUENCE_OFFSET..], self.sequence);
        LittleEndian::write_u64(&mut buf[FIRST_RECORD_OFFSET..], self.first_record);
        LittleEndian::write_u32(&mut buf[PREV_CRC_OFFSET..], self.prev_crc);
        let crc = crc32fast::hash(&buf[..HEADER_CRC_OFFSET]);
        LittleEndian::write_u32(&mut buf[HEADER_CRC_OFFSET..], crc);
        buf
    }

    /// Reads and checks a header from the first bytes of a segment.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let Some(buf) = buf.get(..SEGMENT_HEADER_LEN) else {
            return Err(HeaderError::Short);
        };
        if buf.iter().all(|&b| b == 0) {
            return Err(HeaderError::Zeroed);
        }
        if buf[MAGIC_OFFSET..VERSION_OFFSET] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let crc = LittleEndian::read_u32(&buf[HEADER_CRC_OFFSET..]);
        if crc32fast::hash(&buf[..HEADER_CRC_OFFSET]) != crc {
            return Err(HeaderError::Checksum);
        }
        // The version is read only once the CRC vouches for it: a flipped bit in the version
        // field is damage, not a newer format.
        let version = LittleEndian::read_u32(&buf[VERSION_OFFSET..]);
        if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(HeaderError::Version(version));
        }
        let flags = LittleEndian::read_u32(&buf[FLAGS_OFFSET..]);
        if flags & !HEADER_FLAG_RECYCLED != 0 {
            return Err(HeaderError::Flags(flags));
        }
        Ok(SegmentHeader {
            sequence: LittleEndian::read_u64(&buf[SEQUENCE_OFFSET..]),
            first_record: LittleEndian::read_u64(&buf[FIRST_RECORD_OFFSET..]),
            prev_crc: LittleEndian::read_u32(&buf[PREV_CRC_OFFSET..]),
            recycled: flags & HEADER_FLAG_RECYCLED != 0,
        })
    }
}

// ---- Record frame ------------------------------------------------------------------------------

/// Chained CRC-32 over the frame from `LEN_OFFSET` on and the payload, seeded with `prev_crc`, u32.
pub const CRC_OFFSET: usize = 0;
/// Payload length in bytes (without header and padding), u32.
pub const LEN_OFFSET: usize = CRC_OFFSET + size_of::<u32>();
/// Record type, u8.
pub const TYPE_OFFSET: usize = LEN_OFFSET + size_of::<u32>();
/// Record flags, u8: [`FLAG_MORE`]; other bits are zero.
pub const FLAGS_BYTE_OFFSET: usize = TYPE_OFFSET + size_of::<u8>();
/// Reserved, two zero bytes.
pub const RESERVED_OFFSET: usize = FLAGS_BYTE_OFFSET + size_of::<u8>();
/// CRC of the record before this one, u32; lets a record be checked on its own.
pub const FRAME_PREV_CRC_OFFSET: usize = RESERVED_OFFSET + 2;

/// Frame flag: the write this record belongs to goes on in the next record. A write (a batch of
/// changes to any number of groups) is applied at recovery only once its last record, the one
/// without this flag, is read: a crash keeps a write whole or drops it whole.
pub const FLAG_MORE: u8 = 1;
/// Bytes of this segment that were durable when the record was written, u32 (segments stay
/// below 4 GiB).
pub const DURABLE_OFFSET: usize = FRAME_PREV_CRC_OFFSET + size_of::<u32>();
/// Sequence of the segment the record was written to, u32: a record left in a recycled file by
/// an earlier use names an older sequence, so it is never taken for one of the new segment's.
pub const FRAME_SEQUENCE_OFFSET: usize = DURABLE_OFFSET + size_of::<u32>();
/// Bytes of the frame header; the payload starts here.
pub const FRAME_HEADER_LEN: usize = FRAME_SEQUENCE_OFFSET + size_of::<u32>();

const _: () = assert!(FRAME_HEADER_LEN.is_multiple_of(RECORD_ALIGN));

/// The largest payload a record may have unless configured otherwise.
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 64 << 20;

/// Payload bytes past which the writer starts a new Entries record for the rest of a run (an
/// entry larger than this has a record of its own). A read checks the CRC of every record it
/// takes entries from, so a record's size bounds the bytes a small read copies and checks: a
/// large batch in one record would make each read of a few of its entries cost the whole batch.
/// A record costs its frame header and about 42 bytes of footer, below 0.2% at this size.
pub const ENTRIES_RECORD_TARGET_BYTES: usize = 64 << 10;

/// What a record's payload holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    /// First record(s) of every segment: the state of every group, which a reader needs to
    /// start from this segment.
    Checkpoint = 1,
    /// A run of consecutive entries of one group; replaces every entry from its first index on.
    Entries = 2,
    /// A group's new hard state.
    HardState = 3,
    /// A group's snapshot became the newest; optionally its log restarts after it.
    Snapshot = 4,
    /// A group's entries up to an index were compacted into the dummy.
    Compact = 5,
    /// A group was removed: all its state is gone.
    Remove = 6,
    /// The seal-time summary of a sealed segment, group by group (see
    /// [`crate::wal::footer`]): changes nothing.
    Footer = 7,
    /// Written (unsynced) after a sync made the records before it durable, when no record yet
    /// says so: its frame's `durable` field is what it carries, and it changes nothing. Without
    /// it, damage to the last synced write of an unclosed log would read as a torn tail.
    Witness = 8,
    /// A run of entries of one group and then its new hard state: a `save` that changes both
    /// costs one record, not two.
    EntriesHardState = 9,
}

impl RecordType {
    /// The type a byte stands for; 0 (zeroed space) and unknown bytes are `None`.
    pub fn from_u8(byte: u8) -> Option<RecordType> {
        Some(match byte {
            1 => RecordType::Checkpoint,
            2 => RecordType::Entries,
            3 => RecordType::HardState,
            4 => RecordType::Snapshot,
            5 => RecordType::Compact,
            6 => RecordType::Remove,
            7 => RecordType::Footer,
            8 => RecordType::Witness,
            9 => RecordType::EntriesHardState,
            _ => return None,
        })
    }
}

/// Bytes a frame with `payload_len` bytes of payload occupies, padding included.
pub fn framed_len(payload_len: usize) -> usize {
    (FRAME_HEADER_LEN + payload_len).next_multiple_of(RECORD_ALIGN)
}

/// A frame header, decoded but not yet checked against its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The stored CRC.
    pub crc: u32,
    /// Payload bytes.
    pub len: u32,
    /// The record type byte, as stored.
    pub record_type: u8,
    /// The flags byte, as stored.
    pub flags: u8,
    /// CRC of the previous record, as stored.
    pub prev_crc: u32,
    /// Durable bytes of the segment when the record was written, as stored.
    pub durable: u64,
    /// The segment sequence the record was written to, as stored.
    pub sequence: u32,
    /// Whether the reserved bytes are zero and no unknown flag is set.
    pub reserved_zero: bool,
}

impl FrameHeader {
    /// Reads the header fields; `buf` must hold at least [`FRAME_HEADER_LEN`] bytes.
    pub fn read(buf: &[u8]) -> FrameHeader {
        FrameHeader {
            crc: LittleEndian::read_u32(&buf[CRC_OFFSET..]),
            len: LittleEndian::read_u32(&buf[LEN_OFFSET..]),
            record_type: buf[TYPE_OFFSET],
            flags: buf[FLAGS_BYTE_OFFSET],
            prev_crc: LittleEndian::read_u32(&buf[FRAME_PREV_CRC_OFFSET..]),
            durable: u64::from(LittleEndian::read_u32(&buf[DURABLE_OFFSET..])),
            sequence: LittleEndian::read_u32(&buf[FRAME_SEQUENCE_OFFSET..]),
            reserved_zero: buf[RESERVED_OFFSET..FRAME_PREV_CRC_OFFSET].iter().all(|&b| b == 0)
                && buf[FLAGS_BYTE_OFFSET] & !FLAG_MORE == 0,
        }
    }
}

/// The CRC a frame must carry: CRC-32 seeded with `prev_crc` over the header after the CRC field
/// and the payload.
pub fn frame_crc(prev_crc: u32, header_after_crc: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(prev_crc);
    hasher.update(header_after_crc);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one framed record (header, payload, zero padding) to `out` and returns its CRC.
/// `payload` is produced in place by `write_payload`, so batches are encoded without a copy.
pub fn append_record(
    out: &mut Vec<u8>,
    record_type: RecordType,
    flags: u8,
    sequence: u32,
    prev_crc: u32,
    durable: u64,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> u32 {
    let start = out.len();
    debug_assert_eq!(start % RECORD_ALIGN, 0, "records start aligned within the buffer");
    out.resize(start + FRAME_HEADER_LEN, 0);
    write_payload(out);
    let payload_len = out.len() - start - FRAME_HEADER_LEN;
    let len = u32::try_from(payload_len).expect("record payload checked against the limit");
    let header = &mut out[start..start + FRAME_HEADER_LEN];
    LittleEndian::write_u32(&mut header[LEN_OFFSET..], len);
    header[TYPE_OFFSET] = record_type as u8;
    header[FLAGS_BYTE_OFFSET] = flags;
    LittleEndian::write_u32(&mut header[FRAME_PREV_CRC_OFFSET..], prev_crc);
    let durable = u32::try_from(durable).expect("segments stay below 4 GiB");
    LittleEndian::write_u32(&mut header[DURABLE_OFFSET..], durable);
    LittleEndian::write_u32(&mut header[FRAME_SEQUENCE_OFFSET..], sequence);
    let crc = {
        let (head, payload) = out[start..].split_at(FRAME_HEADER_LEN);
        frame_crc(prev_crc, &head[LEN_OFFSET..], payload)
    };
    LittleEndian::write_u32(&mut out[start + CRC_OFFSET..], crc);
    out.resize(start + framed_len(payload_len), 0);
    crc
}

// ---- Record payloads ---------------------------------------------------------------------------

/// A decoded record payload. Every record but a checkpoint names the group it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// See [`RecordType::Checkpoint`]: one part of the state of every group (a checkpoint too
    /// large for one record goes on in the next, with [`FLAG_MORE`]), sorted by group id.
    Checkpoint(Vec<Checkpoint>),
    /// See [`RecordType::Entries`]; never empty, consecutive indices. With a hard state it is
    /// a [`RecordType::EntriesHardState`] record: the hard state applies after the entries.
    Entries {
        /// The group.
        group: u64,
        /// The entries.
        entries: Vec<Entry>,
        /// The group's new hard state, if the record carries one.
        hard_state: Option<HardState>,
    },
    /// An entries record as the writer's listing of a segment holds it: its entries' indices
    /// and their one term, without the entries. [`Footer::decode_each`] makes it, when asked
    /// for lean records, for every entries record of one term run (the others come as
    /// [`Record::Entries`]); it is never written, and has no payload to encode.
    EntryRun {
        /// The group.
        group: u64,
        /// Index of the first entry.
        first: u64,
        /// Entries, at least one.
        count: u32,
        /// Their term.
        term: u64,
        /// The group's new hard state, if the record carries one.
        hard_state: Option<HardState>,
    },
    /// See [`RecordType::HardState`].
    HardState {
        /// The group.
        group: u64,
        /// Its new hard state.
        hard_state: HardState,
    },
    /// See [`RecordType::Snapshot`].
    Snapshot {
        /// The group.
        group: u64,
        /// The snapshot that is now the newest. Boxed: it is by far the largest variant's
        /// field, and records are moved by the million in a replay.
        metadata: Box<SnapshotMetadata>,
        /// Whether the log was replaced by the snapshot (apply) or kept (create).
        resets_log: bool,
    },
    /// See [`RecordType::Compact`]: the new dummy entry.
    Compact {
        /// The group.
        group: u64,
        /// Index of the new dummy.
        index: u64,
        /// Its term.
        term: u64,
    },
    /// See [`RecordType::Remove`].
    Remove {
        /// The group removed.
        group: u64,
    },
    /// See [`RecordType::Footer`]: the encoded summary, decoded on demand by
    /// [`crate::wal::footer::SealedFooter::decode`].
    Footer(Vec<u8>),
    /// See [`RecordType::Witness`]: an empty payload.
    Witness,
}

/// The state a group starts from in a segment, written in the segment's first records so that
/// older segments can be deleted without losing the hard state, the snapshot marker or the dummy
/// entry of any group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The group.
    pub group: u64,
    /// Index of the dummy entry.
    pub dummy_index: u64,
    /// Term of the dummy entry.
    pub dummy_term: u64,
    /// The last index when the checkpoint was written. Entries in `(dummy_index, last_index]`
    /// lie in earlier segments, which may have been deleted once those entries were compacted.
    pub last_index: u64,
    /// The hard state in force.
    pub hard_state: HardState,
    /// The newest snapshot's metadata (index 0 when there is none).
    pub snapshot: SnapshotMetadata,
}

/// The fewest bytes one group's checkpoint encodes to (group, dummy index and term, last index,
/// and the hard state's three fields at least): bounds the allocation a checkpoint's count may
/// cause.
const MIN_CHECKPOINT_LEN: usize = size_of::<[u64; 7]>();

impl Checkpoint {
    /// Appends this checkpoint's encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // One allocation at most, not one per field as the buffer doubles.
        out.reserve(self.encoded_len());
        // The fixed fields in one copy (field by field, each append checks the capacity).
        let fields = [
            self.group,
            self.dummy_index,
            self.dummy_term,
            self.last_index,
            self.hard_state.term,
            self.hard_state.vote,
            self.hard_state.commit,
            self.snapshot.index,
            self.snapshot.term,
        ];
        let mut fixed = [0u8; size_of::<[u64; 9]>()];
        for (chunk, field) in fixed.chunks_exact_mut(size_of::<u64>()).zip(fields) {
            chunk.copy_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&fixed);
        codec::encode_conf_state(out, &self.snapshot.conf_state);
    }

    fn decode(dec: &mut Decoder<'_>) -> Result<Checkpoint, DecodeError> {
        Ok(Checkpoint {
            group: dec.u64("checkpoint group")?,
            dummy_index: dec.u64("checkpoint dummy index")?,
            dummy_term: dec.u64("checkpoint dummy term")?,
            last_index: dec.u64("checkpoint last index")?,
            hard_state: codec::decode_hard_state(dec)?,
            snapshot: codec::decode_snapshot_metadata(dec)?,
        })
    }

    /// Bytes [`Checkpoint::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        // Group, dummy index and term, last index; the hard state's three fields; the
        // snapshot's index and term, then its membership.
        size_of::<[u64; 9]>() + codec::conf_state_encoded_len(&self.snapshot.conf_state)
    }
}

/// Bytes of the count that starts a checkpoint payload.
pub const CHECKPOINT_COUNT_LEN: usize = size_of::<u32>();

/// Appends a checkpoint payload: a u32 count, then each group's checkpoint.
pub fn encode_checkpoint_payload(out: &mut Vec<u8>, groups: &[Checkpoint]) {
    let count = u32::try_from(groups.len()).expect("fewer than 2^32 groups in one record");
    out.reserve(CHECKPOINT_COUNT_LEN + groups.iter().map(Checkpoint::encoded_len).sum::<usize>());
    codec::put_u32(out, count);
    for cp in groups {
        cp.encode(out);
    }
}

impl Record {
    /// The type byte this record is framed with.
    pub fn record_type(&self) -> RecordType {
        match self {
            Record::Checkpoint(_) => RecordType::Checkpoint,
            Record::Entries { hard_state: None, .. } => RecordType::Entries,
            Record::Entries { hard_state: Some(_), .. } => RecordType::EntriesHardState,
            Record::EntryRun { hard_state: None, .. } => RecordType::Entries,
            Record::EntryRun { hard_state: Some(_), .. } => RecordType::EntriesHardState,
            Record::HardState { .. } => RecordType::HardState,
            Record::Snapshot { .. } => RecordType::Snapshot,
            Record::Compact { .. } => RecordType::Compact,
            Record::Remove { .. } => RecordType::Remove,
            Record::Footer(_) => RecordType::Footer,
            Record::Witness => RecordType::Witness,
        }
    }

    /// The group the record changes (`None` for a checkpoint, which covers them all).
    pub fn group(&self) -> Option<u64> {
        match self {
            Record::Checkpoint(_) | Record::Footer(_) | Record::Witness => None,
            Record::Entries { group, .. }
            | Record::EntryRun { group, .. }
            | Record::HardState { group, .. }
            | Record::Snapshot { group, .. }
            | Record::Compact { group, .. }
            | Record::Remove { group } => Some(*group),
        }
    }

    /// Appends this record's payload encoding.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::Checkpoint(groups) => encode_checkpoint_payload(out, groups),
            Record::Entries { group, entries, hard_state } => {
                encode_entries_payload(out, *group, hard_state.as_ref(), entries)
            }
            Record::EntryRun { .. } => {
                unreachable!("a listed entries record has no entries to encode; only open sees it")
            }
            Record::HardState { group, hard_state } => {
                codec::put_u64(out, *group);
                codec::encode_hard_state(out, hard_state);
            }
            Record::Snapshot { group, metadata, resets_log } => {
                encode_snapshot_payload(out, *group, metadata, *resets_log)
            }
            Record::Compact { group, index, term } => {
                codec::put_u64(out, *group);
                codec::put_u64(out, *index);
                codec::put_u64(out, *term);
            }
            Record::Remove { group } => codec::put_u64(out, *group),
            Record::Footer(summary) => out.extend_from_slice(summary),
            Record::Witness => {}
        }
    }

    /// Decodes a payload of the given type. Every byte must be used.
    pub fn decode_payload(record_type: RecordType, payload: &[u8]) -> Result<Record, DecodeError> {
        Record::decode_payload_in(record_type, payload, None)
    }

    /// Like [`Record::decode_payload`]; with `owner` (a buffer and the offset in it where
    /// `payload` starts), entries' data are slices of that buffer, not copies.
    pub fn decode_payload_in(
        record_type: RecordType,
        payload: &[u8],
        owner: Option<(&bytes::Bytes, usize)>,
    ) -> Result<Record, DecodeError> {
        let mut dec = Decoder::new(payload);
        let record = match record_type {
            RecordType::Checkpoint => {
                let count = dec.u32("checkpoint count")? as usize;
                // Bound the allocation by the bytes present.
                if count > dec.remaining() / MIN_CHECKPOINT_LEN {
                    return Err(DecodeError { what: "checkpoint count" });
                }
                let mut groups: Vec<Checkpoint> = Vec::with_capacity(count);
                for _ in 0..count {
                    let cp = Checkpoint::decode(&mut dec)?;
                    if groups.last().is_some_and(|prev| prev.group >= cp.group) {
                        return Err(DecodeError { what: "checkpoint group order" });
                    }
                    groups.push(cp);
                }
                Record::Checkpoint(groups)
            }
            RecordType::Entries => {
                let group = dec.u64("entries group")?;
                let entries = decode_entries_payload(&mut dec, owner)?;
                Record::Entries { group, entries, hard_state: None }
            }
            RecordType::EntriesHardState => {
                let group = dec.u64("entries group")?;
                let hard_state = Some(codec::decode_hard_state(&mut dec)?);
                let entries = decode_entries_payload(&mut dec, owner)?;
                Record::Entries { group, entries, hard_state }
            }
            RecordType::HardState => Record::HardState {
                group: dec.u64("hard state group")?,
                hard_state: codec::decode_hard_state(&mut dec)?,
            },
            RecordType::Snapshot => {
                let group = dec.u64("snapshot group")?;
                let resets_log = match dec.u8("snapshot reset flag")? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError { what: "snapshot reset flag" });
                    }
                };
                Record::Snapshot {
                    group,
                    metadata: Box::new(codec::decode_snapshot_metadata(&mut dec)?),
                    resets_log,
                }
            }
            RecordType::Compact => Record::Compact {
                group: dec.u64("compact group")?,
                index: dec.u64("compact index")?,
                term: dec.u64("compact term")?,
            },
            RecordType::Remove => Record::Remove { group: dec.u64("removed group")? },
            RecordType::Footer => {
                let summary = dec.bytes(dec.remaining(), "footer")?.to_vec();
                Record::Footer(summary)
            }
            // Its payload is empty: `finish` refuses any byte.
            RecordType::Witness => Record::Witness,
        };
        dec.finish("record payload")?;
        Ok(record)
    }
}

/// Appends a snapshot marker payload: the group (u64), the reset flag (u8), then the metadata.
pub fn encode_snapshot_payload(
    out: &mut Vec<u8>,
    group: u64,
    metadata: &SnapshotMetadata,
    resets_log: bool,
) {
    codec::put_u64(out, group);
    out.push(u8::from(resets_log));
    codec::encode_snapshot_metadata(out, metadata);
}

/// Bytes before the first entry of an entries payload: the group (u64) and the count (u32).
pub const ENTRIES_HEAD_LEN: usize = size_of::<u64>() + size_of::<u32>();
/// The same for an entries-and-hard-state payload: the group, the hard state, the count.
pub const ENTRIES_HARD_STATE_HEAD_LEN: usize = ENTRIES_HEAD_LEN + codec::HARD_STATE_LEN;

/// Appends an entries payload: the group, a u32 count, then each entry's codec encoding; with a
/// hard state (an [`RecordType::EntriesHardState`] payload), the hard state follows the group.
pub fn encode_entries_payload(
    out: &mut Vec<u8>,
    group: u64,
    hard_state: Option<&HardState>,
    entries: &[Entry],
) {
    let count = u32::try_from(entries.len()).expect("a record holds fewer than 2^32 entries");
    codec::put_u64(out, group);
    if let Some(hs) = hard_state {
        codec::encode_hard_state(out, hs);
    }
    codec::put_u32(out, count);
    for entry in entries {
        codec::encode_entry(out, entry);
    }
}

/// Bytes an entries payload for `entries` takes (with a hard state or not).
pub fn entries_payload_len(entries: &[Entry], with_hard_state: bool) -> u64 {
    let head = if with_hard_state { ENTRIES_HARD_STATE_HEAD_LEN } else { ENTRIES_HEAD_LEN };
    head as u64 + entries.iter().map(Entry::encoded_len).sum::<u64>()
}

/// Decodes the entries of an entries record's payload (of `record_type`, `Entries` or
/// `EntriesHardState`) whose indices lie in `wanted`: the group and those entries. The others
/// are skipped from their headers, their data neither copied nor shared; entries past `wanted`
/// are not read at all.
pub fn decode_entries_in(
    record_type: RecordType,
    payload: &[u8],
    owner: Option<(&bytes::Bytes, usize)>,
    wanted: impl std::ops::RangeBounds<u64>,
) -> Result<(u64, Vec<Entry>), DecodeError> {
    let mut dec = Decoder::new(payload);
    let group = dec.u64("entries group")?;
    match record_type {
        RecordType::Entries => {}
        RecordType::EntriesHardState => {
            codec::decode_hard_state(&mut dec)?;
        }
        _ => return Err(DecodeError { what: "entries record type" }),
    }
    Ok((group, decode_entries_range(&mut dec, owner, wanted)?))
}

fn decode_entries_payload(
    dec: &mut Decoder<'_>,
    owner: Option<(&bytes::Bytes, usize)>,
) -> Result<Vec<Entry>, DecodeError> {
    decode_entries_range(dec, owner, ..)
}

/// The count and entries of an entries payload, keeping those whose indices lie in `wanted`.
/// The others are skipped from their headers, their data neither copied nor shared: a read
/// decodes only what it asked for. Entries past `wanted` are not read at all.
fn decode_entries_range(
    dec: &mut Decoder<'_>,
    owner: Option<(&bytes::Bytes, usize)>,
    wanted: impl std::ops::RangeBounds<u64>,
) -> Result<Vec<Entry>, DecodeError> {
    use std::ops::Bound::{Excluded, Included};
    let count = dec.u32("entries count")? as usize;
    // Each entry takes at least its header: bound the allocation by the bytes present.
    if count == 0 || count > dec.remaining() / Entry::HEADER_LEN as usize {
        return Err(DecodeError { what: "entries count" });
    }
    let room = match (wanted.start_bound(), wanted.end_bound()) {
        (Included(&start), Excluded(&end)) => end.saturating_sub(start) as usize,
        _ => count,
    };
    let past = |index: u64| match wanted.end_bound() {
        Included(&end) => index > end,
        Excluded(&end) => index >= end,
        std::ops::Bound::Unbounded => false,
    };
    let mut entries = Vec::with_capacity(count.min(room));
    let mut prev: Option<u64> = None;
    // Bounded by `count`, itself bounded by the payload's length.
    for _ in 0..count {
        let index = dec.u64("entry index")?;
        if prev.is_some_and(|p| p.checked_add(1) != Some(index)) {
            return Err(DecodeError { what: "entries indices" });
        }
        prev = Some(index);
        if past(index) {
            break;
        }
        if !wanted.contains(&index) {
            dec.u64("entry term")?;
            dec.u8("entry type")?;
            let len = dec.u32("entry data length")? as usize;
            dec.bytes(len, "entry data")?;
            continue;
        }
        entries.push(codec::decode_entry_after_index(dec, index, owner)?);
    }
    Ok(entries)
}

// ---- Footer and trailer -----------------------------------------------------------------------

/// Bytes of the trailer at the very end of a sealed segment's file.
pub const TRAILER_LEN: usize = 16;
/// First bytes of a trailer.
pub const TRAILER_MAGIC: [u8; 4] = *b"RWFG";
/// Offset of the footer record's frame, u32.
pub const TRAILER_FOOTER_OFFSET: usize = TRAILER_MAGIC.len();
/// Bytes the footer record's frame occupies (padding included), u32.
pub const TRAILER_FOOTER_LEN: usize = TRAILER_FOOTER_OFFSET + size_of::<u32>();
/// CRC-32 of bytes `0..TRAILER_CRC_OFFSET`, u32.
pub const TRAILER_CRC_OFFSET: usize = TRAILER_FOOTER_LEN + size_of::<u32>();
const _: () = assert!(TRAILER_CRC_OFFSET + size_of::<u32>() == TRAILER_LEN);

/// Where a sealed segment's footer record is, read from the last [`TRAILER_LEN`] bytes of its
/// file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the footer record's frame.
    pub footer_offset: u32,
    /// Bytes of the footer's frame, padding included.
    pub footer_len: u32,
}

impl Trailer {
    /// The trailer's bytes.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut buf = [0u8; TRAILER_LEN];
        buf[..TRAILER_FOOTER_OFFSET].copy_from_slice(&TRAILER_MAGIC);
        LittleEndian::write_u32(&mut buf[TRAILER_FOOTER_OFFSET..], self.footer_offset);
        LittleEndian::write_u32(&mut buf[TRAILER_FOOTER_LEN..], self.footer_len);
        let crc = crc32fast::hash(&buf[..TRAILER_CRC_OFFSET]);
        LittleEndian::write_u32(&mut buf[TRAILER_CRC_OFFSET..], crc);
        buf
    }

    /// Reads a trailer; `None` unless magic and CRC hold.
    pub fn decode(buf: &[u8]) -> Option<Trailer> {
        let buf = buf.get(..TRAILER_LEN)?;
        if buf[..TRAILER_FOOTER_OFFSET] != TRAILER_MAGIC {
            return None;
        }
        let crc = LittleEndian::read_u32(&buf[TRAILER_CRC_OFFSET..]);
        if crc32fast::hash(&buf[..TRAILER_CRC_OFFSET]) != crc {
            return None;
        }
        Some(Trailer {
            footer_offset: LittleEndian::read_u32(&buf[TRAILER_FOOTER_OFFSET..]),
            footer_len: LittleEndian::read_u32(&buf[TRAILER_FOOTER_LEN..]),
        })
    }
}

/// A record as the writer's listing holds it: its offset, whether its write goes on, and its
/// contents, with entries reduced to index and term (their data stay in the record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FooterRecord {
    /// Offset of the record's frame in the segment.
    pub offset: u64,
    /// Whether the record carries [`FLAG_MORE`].
    pub more: bool,
    /// The record; an `Entries` record's entries have empty data.
    pub record: Record,
}

/// The *listing* of the active segment: every record written to it so far, as
/// [`FooterRecord`]s, kept by the writer in file order (one append per record, no per-group
/// work) and turned into the segment's footer, group by group, when it is sealed
/// ([`crate::wal::footer::build`]). Recovery rebuilds it for the segment writing resumes in.
/// It lives in memory only.
///
/// Encoding: `records: u32`, then per record `offset: u32, type: u8, flags: u8`, then for
/// entries `group: u64, first_index: u64, count: u32, runs: u32` and `runs` pairs
/// `(entries: u32, term: u64)`; for every other type `len: u32` and the record's payload.
#[derive(Clone, Debug, Default)]
pub struct Footer {
    buf: Vec<u8>,
    records: u32,
}

/// Longest listing kept while a segment is written: beyond it the segment gets no footer (and
/// is scanned at open), so a segment of many tiny records cannot make the writer hold much.
pub const MAX_FOOTER_BYTES: usize = 16 << 20;

impl Footer {
    /// Adds an entries record at `offset` (an entries-and-hard-state one with `hard_state`).
    pub fn push_entries(
        &mut self,
        offset: u64,
        more: bool,
        group: u64,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) {
        let Some(first) = entries.first() else { return };
        let runs =
            entries.chunk_by(|a, b| a.term == b.term).map(|run| (run.len() as u32, run[0].term));
        let head = (group, first.index, entries.len() as u32);
        self.push_runs(offset, more, head, runs, hard_state);
    }

    /// Adds an entries record: `(group, first index, count)`, then its term runs as
    /// `(entries, term)`, then its hard state if it carries one.
    fn push_runs(
        &mut self,
        offset: u64,
        more: bool,
        (group, first, count): (u64, u64, u32),
        runs: impl Iterator<Item = (u32, u64)>,
        hard_state: Option<&HardState>,
    ) {
        let record_type =
            if hard_state.is_some() { RecordType::EntriesHardState } else { RecordType::Entries };
        self.push_head(offset, record_type, more);
        codec::put_u64(&mut self.buf, group);
        codec::put_u64(&mut self.buf, first);
        codec::put_u32(&mut self.buf, count);
        let runs_at = self.buf.len();
        codec::put_u32(&mut self.buf, 0);
        let mut listed = 0u32;
        // Bounded by the record's entries: each run holds at least one.
        for (len, term) in runs {
            codec::put_u32(&mut self.buf, len);
            codec::put_u64(&mut self.buf, term);
            listed += 1;
        }
        LittleEndian::write_u32(&mut self.buf[runs_at..], listed);
        if let Some(hs) = hard_state {
            codec::encode_hard_state(&mut self.buf, hs);
        }
    }

    /// Adds a record of any other type at `offset`, with its payload.
    pub fn push_payload(
        &mut self,
        offset: u64,
        more: bool,
        record_type: RecordType,
        payload: &[u8],
    ) {
        self.push_head(offset, record_type, more);
        codec::put_u32(&mut self.buf, payload.len() as u32);
        self.buf.extend_from_slice(payload);
    }

    /// Adds a decoded record.
    pub fn push_record(&mut self, offset: u64, more: bool, record: &Record) {
        match record {
            Record::Entries { group, entries, hard_state } => {
                self.push_entries(offset, more, *group, entries, hard_state.as_ref())
            }
            Record::EntryRun { group, first, count, term, hard_state } => {
                let run = std::iter::once((*count, *term));
                self.push_runs(offset, more, (*group, *first, *count), run, hard_state.as_ref())
            }
            // An earlier footer is listed (it is part of the chain) without its summary.
            Record::Footer(_) => self.push_payload(offset, more, RecordType::Footer, &[]),
            // Encoded in place, after a length patched once the payload is there.
            other => {
                self.push_head(offset, other.record_type(), more);
                let len_at = self.buf.len();
                codec::put_u32(&mut self.buf, 0);
                other.encode_payload(&mut self.buf);
                let len = self.buf.len() - len_at - size_of::<u32>();
                LittleEndian::write_u32(&mut self.buf[len_at..], len as u32);
            }
        }
    }

    fn push_head(&mut self, offset: u64, record_type: RecordType, more: bool) {
        if self.buf.is_empty() {
            codec::put_u32(&mut self.buf, 0);
        }
        codec::put_u32(&mut self.buf, u32::try_from(offset).expect("segments stay below 4 GiB"));
        self.buf.push(record_type as u8);
        self.buf.push(if more { FLAG_MORE } else { 0 });
        self.records += 1;
        LittleEndian::write_u32(&mut self.buf[..4], self.records);
    }

    /// Records listed.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Bytes of the encoded listing.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no record is listed.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The encoded listing.
    pub fn payload(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets every record (a new segment starts).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.records = 0;
    }

    /// Decodes a footer payload written for a footer record at `footer_offset`. Offsets must
    /// increase and stay below the footer, and each entries record must have room for its
    /// entries' headers before the next record: a forged count cannot make this allocate more
    /// than the segment's size allows. Entries come back with their index and term only (empty
    /// data, type normal): what replay needs.
    pub fn decode(payload: &[u8], footer_offset: u64) -> Result<Vec<FooterRecord>, DecodeError> {
        let mut out = Vec::new();
        Footer::decode_each(payload, footer_offset, false, |record, _| out.push(record))?;
        Ok(out)
    }

    /// [`Footer::decode`] without the list: gives each record, in order, to `each` together
    /// with the offset of the record after it (the footer's for the last), and returns how
    /// many there were. On an error, records before it may have been given. With `lean`, an
    /// entries record of one term run comes as a [`Record::EntryRun`], without entries.
    pub fn decode_each(
        payload: &[u8],
        footer_offset: u64,
        lean: bool,
        mut each: impl FnMut(FooterRecord, u64),
    ) -> Result<usize, DecodeError> {
        let mut dec = Decoder::new(payload);
        let count = dec.u32("footer record count")? as usize;
        // Every listed record takes at least six bytes here.
        if count > dec.remaining() / 6 {
            return Err(DecodeError { what: "footer record count" });
        }
        // A record waits here until the next one's offset bounds it: an entries record's count
        // is checked against that room before its entries are made.
        let mut held: Option<(FooterRecord, Option<Runs<'_>>)> = None;
        for _ in 0..count {
            let offset = u64::from(dec.u32("footer record offset")?);
            let record_type = dec.u8("footer record type")?;
            let flags = dec.u8("footer record flags")?;
            if held.as_ref().is_some_and(|(r, _)| r.offset >= offset)
                || offset < SEGMENT_HEADER_LEN as u64
                || offset >= footer_offset
                || flags & !FLAG_MORE != 0
            {
                return Err(DecodeError { what: "footer record offset" });
            }
            if let Some((record, runs)) = held.take() {
                each(expand(record, runs, offset, lean)?, offset);
            }
            let more = flags & FLAG_MORE != 0;
            let record_type = RecordType::from_u8(record_type)
                .ok_or(DecodeError { what: "footer record type" })?;
            let (record, runs) = match record_type {
                RecordType::Entries | RecordType::EntriesHardState => {
                    let group = dec.u64("footer entries group")?;
                    let first = dec.u64("footer entries first index")?;
                    let n = dec.u32("footer entries count")? as usize;
                    let runs = dec.u32("footer entries runs")? as usize;
                    if n == 0 || runs == 0 || runs > n || runs > dec.remaining() / TERM_RUN_LEN {
                        return Err(DecodeError { what: "footer entries count" });
                    }
                    if first.checked_add(n as u64).is_none() {
                        return Err(DecodeError { what: "footer entries runs" });
                    }
                    let bytes = read_term_runs(&mut dec, runs, n as u64)?;
                    let hard_state = if record_type == RecordType::EntriesHardState {
                        Some(codec::decode_hard_state(&mut dec)?)
                    } else {
                        None
                    };
                    let record = Record::Entries { group, entries: Vec::new(), hard_state };
                    (record, Some(Runs { first, count: n, bytes }))
                }
                RecordType::Footer => {
                    // An earlier seal's footer, in a segment that was resumed after it: it
                    // changes nothing, and its summary is not needed.
                    let len = dec.u32("footer payload length")? as usize;
                    dec.bytes(len, "footer payload")?;
                    (Record::Footer(Vec::new()), None)
                }
                other => {
                    let len = dec.u32("footer payload length")? as usize;
                    let bytes = dec.bytes(len, "footer payload")?;
                    (Record::decode_payload(other, bytes)?, None)
                }
            };
            held = Some((FooterRecord { offset, more, record }, runs));
        }
        dec.finish("footer")?;
        if let Some((record, runs)) = held {
            each(expand(record, runs, footer_offset, lean)?, footer_offset);
        }
        Ok(count)
    }
}

/// Bytes of one term run in a listing or a footer: entries (u32), term (u64).
pub const TERM_RUN_LEN: usize = size_of::<u32>() + size_of::<u64>();

/// Reads `runs` term runs (each [`TERM_RUN_LEN`] bytes) and checks that none is empty and that
/// they cover `count` entries; gives their bytes.
pub fn read_term_runs<'a>(
    dec: &mut Decoder<'a>,
    runs: usize,
    count: u64,
) -> Result<&'a [u8], DecodeError> {
    let bytes = dec.bytes(runs * TERM_RUN_LEN, "footer runs")?;
    let mut total = 0u64;
    for run in bytes.chunks_exact(TERM_RUN_LEN) {
        let len = LittleEndian::read_u32(run);
        if len == 0 {
            return Err(DecodeError { what: "footer run length" });
        }
        total += u64::from(len);
    }
    if total != count {
        return Err(DecodeError { what: "footer entries runs" });
    }
    Ok(bytes)
}

/// An entries record's term runs in a footer, checked to sum to `count`.
struct Runs<'a> {
    first: u64,
    count: usize,
    bytes: &'a [u8],
}

/// Makes the entries of a footer's entries record that ends before `end`, after checking that
/// the space up to `end` can hold them; with `lean`, a record of one term run becomes a
/// [`Record::EntryRun`] instead.
fn expand(
    mut r: FooterRecord,
    runs: Option<Runs<'_>>,
    end: u64,
    lean: bool,
) -> Result<FooterRecord, DecodeError> {
    let (Some(runs), Record::Entries { group, entries, hard_state }) = (runs, &mut r.record) else {
        return Ok(r);
    };
    let room = (end - r.offset) as usize;
    let head = if hard_state.is_some() { ENTRIES_HARD_STATE_HEAD_LEN } else { ENTRIES_HEAD_LEN };
    let fits = room.saturating_sub(FRAME_HEADER_LEN + head) / Entry::HEADER_LEN as usize;
    if runs.count > fits {
        return Err(DecodeError { what: "footer entries count" });
    }
    if lean && runs.bytes.len() == TERM_RUN_LEN {
        // Checked by the caller: the run's length is the count, which fits in 32 bits.
        let (count, term) = (runs.count as u32, LittleEndian::read_u64(&runs.bytes[4..]));
        let (group, hard_state) = (*group, *hard_state);
        r.record = Record::EntryRun { group, first: runs.first, count, term, hard_state };
        return Ok(r);
    }
    entries.reserve_exact(runs.count);
    let mut index = runs.first;
    for run in runs.bytes.chunks_exact(TERM_RUN_LEN) {
        let (len, term) = (LittleEndian::read_u32(run), LittleEndian::read_u64(&run[4..]));
        for _ in 0..len {
            entries.push(Entry {
                index,
                term,
                entry_type: crate::types::EntryType::Normal,
                data: bytes::Bytes::new(),
            });
            index += 1;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfState;

    /// A checkpoint's length is counted, not encoded: the count must match every membership
    /// shape, and a footer must list a record with the payload it was framed with.
    #[test]
    fn checkpoint_lengths_are_counted_as_encoded() {
        let memberships = [
            ConfState::default(),
            ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
            ConfState {
                voters: vec![1],
                learners: vec![2, 3],
                voters_outgoing: vec![4, 5, 6],
                learners_next: vec![7],
                auto_leave: true,
            },
        ];
        let mut groups = Vec::new();
        for (i, conf_state) in memberships.into_iter().enumerate() {
            let cp = Checkpoint {
                group: i as u64,
                dummy_index: 5,
                dummy_term: 2,
                last_index: 9,
                hard_state: HardState { term: 3, vote: 1, commit: 7 },
                snapshot: SnapshotMetadata { index: 5, term: 2, conf_state },
            };
            let mut out = vec![0xAA];
            cp.encode(&mut out);
            assert_eq!(out.len() - 1, cp.encoded_len());
            groups.push(cp);
        }
        let record = Record::Checkpoint(groups);
        let mut payload = Vec::new();
        record.encode_payload(&mut payload);
        let decoded = Record::decode_payload_in(RecordType::Checkpoint, &payload, None);
        assert_eq!(decoded.ok().as_ref(), Some(&record), "a checkpoint round-trips");
        let mut listed = Footer::default();
        listed.push_record(64, true, &record);
        let mut framed = Footer::default();
        framed.push_payload(64, true, RecordType::Checkpoint, &payload);
        assert_eq!(listed.payload(), framed.payload());
        assert_eq!(listed.records(), 1);
    }

    /// The offset tables of DESIGN.md §5, read from the file, against the constants.
    #[test]
    fn offsets_match_the_design_table() {
        let header = [
            (MAGIC_OFFSET, SEGMENT_MAGIC.len(), "magic"),
            (VERSION_OFFSET, FLAGS_OFFSET - VERSION_OFFSET, "version"),
            (FLAGS_OFFSET, SEQUENCE_OFFSET - FLAGS_OFFSET, "flags"),
            (SEQUENCE_OFFSET, FIRST_RECORD_OFFSET - SEQUENCE_OFFSET, "sequence"),
            (FIRST_RECORD_OFFSET, PREV_CRC_OFFSET - FIRST_RECORD_OFFSET, "first_record"),
            (PREV_CRC_OFFSET, HEADER_CRC_OFFSET - PREV_CRC_OFFSET, "prev_crc"),
            (HEADER_CRC_OFFSET, SEGMENT_HEADER_LEN - HEADER_CRC_OFFSET, "header_crc"),
        ];
        let documented = crate::design_doc::table("segment-header-table");
        let code: Vec<(usize, usize, String)> =
            header.iter().map(|(o, s, n)| (*o, *s, n.to_string())).collect();
        assert_eq!(code, documented, "segment header: code vs DESIGN.md");
        assert_eq!(SEGMENT_HEADER_LEN, 40);

        let frame = [
            (CRC_OFFSET, LEN_OFFSET - CRC_OFFSET, "crc"),
            (LEN_OFFSET, TYPE_OFFSET - LEN_OFFSET, "len"),
            (TYPE_OFFSET, FLAGS_BYTE_OFFSET - TYPE_OFFSET, "type"),
            (FLAGS_BYTE_OFFSET, RESERVED_OFFSET - FLAGS_BYTE_OFFSET, "flags"),
            (RESERVED_OFFSET, FRAME_PREV_CRC_OFFSET - RESERVED_OFFSET, "reserved"),
            (FRAME_PREV_CRC_OFFSET, DURABLE_OFFSET - FRAME_PREV_CRC_OFFSET, "prev_crc"),
            (DURABLE_OFFSET, FRAME_SEQUENCE_OFFSET - DURABLE_OFFSET, "durable"),
            (FRAME_SEQUENCE_OFFSET, FRAME_HEADER_LEN - FRAME_SEQUENCE_OFFSET, "sequence"),
        ];
        let documented = crate::design_doc::table("frame-header-table");
        let code: Vec<(usize, usize, String)> =
            frame.iter().map(|(o, s, n)| (*o, *s, n.to_string())).collect();
        assert_eq!(code, documented, "record frame: code vs DESIGN.md");
        assert_eq!(FRAME_HEADER_LEN, 24);

        // A witness is a bare frame: the same fields, no payload, no padding.
        let documented = crate::design_doc::table("witness-record-table");
        assert_eq!(code, documented, "witness record: code vs DESIGN.md");
        let mut witness = Vec::new();
        let crc = append_record(&mut witness, RecordType::Witness, 0, 9, 0xABCD, 4096, |_| {});
        assert_eq!(witness.len(), FRAME_HEADER_LEN);
        let head = FrameHeader::read(&witness);
        assert_eq!((head.crc, head.len, head.record_type, head.flags), (crc, 0, 8, 0));
        assert_eq!((head.prev_crc, head.durable, head.sequence), (0xABCD, 4096, 9));
        assert!(head.reserved_zero);
        assert_eq!(crc, frame_crc(0xABCD, &witness[LEN_OFFSET..], &[]));

        let trailer = [
            (0, TRAILER_FOOTER_OFFSET, "magic"),
            (TRAILER_FOOTER_OFFSET, TRAILER_FOOTER_LEN - TRAILER_FOOTER_OFFSET, "footer_offset"),
            (TRAILER_FOOTER_LEN, TRAILER_CRC_OFFSET - TRAILER_FOOTER_LEN, "footer_len"),
            (TRAILER_CRC_OFFSET, TRAILER_LEN - TRAILER_CRC_OFFSET, "crc"),
        ];
        let documented = crate::design_doc::table("trailer-table");
        let code: Vec<(usize, usize, String)> =
            trailer.iter().map(|(o, s, n)| (*o, *s, n.to_string())).collect();
        assert_eq!(code, documented, "trailer: code vs DESIGN.md");
    }

    #[test]
    fn segment_names_sort_in_log_order_and_parse_back() {
        let names = [segment_name(1, 1), segment_name(2, 900), segment_name(10, 65_536)];
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        assert_eq!(parse_segment_name(&names[2]), Some((10, 65_536)));
        assert_eq!(parse_segment_name("0000000000000001.tmp"), None);
        assert_eq!(parse_segment_name("zz-1.wal"), None);
        assert_eq!(parse_segment_name(&format!("{}-{}.wal", "0".repeat(16), "g".repeat(16))), None);
    }

    #[test]
    fn header_round_trips_and_every_damage_is_refused() {
        let header = SegmentHeader {
            sequence: 7,
            first_record: 1234,
            prev_crc: 0xDEAD_BEEF,
            recycled: true,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        assert_eq!(
            SegmentHeader::decode(&bytes[..SEGMENT_HEADER_LEN - 1]),
            Err(HeaderError::Short)
        );
        assert_eq!(SegmentHeader::decode(&[0u8; SEGMENT_HEADER_LEN]), Err(HeaderError::Zeroed));
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            let got = SegmentHeader::decode(&damaged);
            assert!(got.is_err(), "bit {bit} flipped must be refused, got {got:?}");
        }
        let mut wrong_magic = bytes;
        wrong_magic[MAGIC_OFFSET] = b'X';
        assert_eq!(SegmentHeader::decode(&wrong_magic), Err(HeaderError::BadMagic));
        let with_version = |version: u32| {
            let mut out = bytes;
            LittleEndian::write_u32(&mut out[VERSION_OFFSET..], version);
            let crc = crc32fast::hash(&out[..HEADER_CRC_OFFSET]);
            LittleEndian::write_u32(&mut out[HEADER_CRC_OFFSET..], crc);
            out
        };
        assert_eq!(SegmentHeader::decode(&with_version(4)), Err(HeaderError::Version(4)));
        assert_eq!(
            SegmentHeader::decode(&with_version(2)),
            Ok(header),
            "a version 2 segment (no EntriesHardState records) is read"
        );
        let mut older = bytes;
        LittleEndian::write_u32(&mut older[VERSION_OFFSET..], 1);
        let crc = crc32fast::hash(&older[..HEADER_CRC_OFFSET]);
        LittleEndian::write_u32(&mut older[HEADER_CRC_OFFSET..], crc);
        assert_eq!(
            SegmentHeader::decode(&older),
            Err(HeaderError::Version(1)),
            "a version 1 segment (one group, no group ids) is refused, not misread"
        );
    }

    fn sample_records() -> Vec<Record> {
        vec![
            Record::Checkpoint(vec![Checkpoint {
                group: 3,
                dummy_index: 5,
                dummy_term: 2,
                last_index: 9,
                hard_state: HardState { term: 3, vote: 1, commit: 5 },
                snapshot: SnapshotMetadata {
                    index: 5,
                    term: 2,
                    conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
                },
            }]),
            Record::Entries {
                group: 3,
                entries: vec![Entry::new(6, 3, "a"), Entry::new(7, 3, vec![9u8; 33])],
                hard_state: None,
            },
            Record::Entries {
                group: 4,
                entries: vec![Entry::new(2, 1, "b"), Entry::new(3, 2, "c")],
                hard_state: Some(HardState { term: 2, vote: 4, commit: 2 }),
            },
            Record::HardState { group: 9, hard_state: HardState { term: 4, vote: 0, commit: 7 } },
            Record::Snapshot { group: 3, metadata: Box::default(), resets_log: true },
            Record::Compact { group: u64::MAX, index: 6, term: 3 },
            Record::Remove { group: 7 },
            Record::Witness,
        ]
    }

    #[test]
    fn records_frame_and_decode_back_with_a_chained_crc() {
        let mut buf = Vec::new();
        let mut prev = 0x1234_5678;
        let mut crcs = vec![prev];
        for record in sample_records() {
            prev = append_record(&mut buf, record.record_type(), FLAG_MORE, 1, prev, 40, |out| {
                record.encode_payload(out)
            });
            crcs.push(prev);
            assert_eq!(buf.len() % RECORD_ALIGN, 0);
        }
        let mut offset = 0;
        for (i, want) in sample_records().into_iter().enumerate() {
            let head = FrameHeader::read(&buf[offset..]);
            assert_eq!(head.prev_crc, crcs[i], "record {i} names its predecessor's crc");
            assert_eq!(head.durable, 40);
            assert!(head.reserved_zero);
            assert_eq!(head.flags, FLAG_MORE);
            let payload =
                &buf[offset + FRAME_HEADER_LEN..offset + FRAME_HEADER_LEN + head.len as usize];
            let crc = frame_crc(
                head.prev_crc,
                &buf[offset + LEN_OFFSET..offset + FRAME_HEADER_LEN],
                payload,
            );
            assert_eq!(crc, head.crc);
            assert_eq!(crc, crcs[i + 1]);
            let record_type = RecordType::from_u8(head.record_type).unwrap();
            assert_eq!(Record::decode_payload(record_type, payload).unwrap(), want);
            offset += framed_len(head.len as usize);
        }
        assert_eq!(offset, buf.len());
    }

    #[test]
    fn entries_payload_length_is_predicted_and_bad_payloads_are_refused() {
        let entries = vec![Entry::new(6, 3, "abc"), Entry::new(7, 3, "")];
        let mut payload = Vec::new();
        encode_entries_payload(&mut payload, 4, None, &entries);
        assert_eq!(payload.len() as u64, entries_payload_len(&entries, false));
        let hs = HardState { term: 3, vote: 1, commit: 6 };
        let mut with_hs = Vec::new();
        encode_entries_payload(&mut with_hs, 4, Some(&hs), &entries);
        assert_eq!(with_hs.len() as u64, entries_payload_len(&entries, true));
        assert_eq!(
            Record::decode_payload(RecordType::EntriesHardState, &with_hs).unwrap(),
            Record::Entries { group: 4, entries: entries.clone(), hard_state: Some(hs) }
        );
        // A plain entries payload is too short for the other type, and the reverse.
        assert!(Record::decode_payload(RecordType::EntriesHardState, &payload).is_err());
        assert!(Record::decode_payload(RecordType::Entries, &with_hs).is_err());

        let gap = vec![Entry::new(6, 3, "abc"), Entry::new(8, 3, "")];
        let mut bad = Vec::new();
        encode_entries_payload(&mut bad, 4, None, &gap);
        assert!(Record::decode_payload(RecordType::Entries, &bad).is_err());

        let mut empty = Vec::new();
        encode_entries_payload(&mut empty, 4, None, &[]);
        assert!(Record::decode_payload(RecordType::Entries, &empty).is_err());

        let mut trailing = payload.clone();
        trailing.push(0);
        assert!(Record::decode_payload(RecordType::Entries, &trailing).is_err());
        assert_eq!(RecordType::from_u8(0), None);
        assert_eq!(RecordType::from_u8(8), Some(RecordType::Witness));
        assert_eq!(RecordType::from_u8(9), Some(RecordType::EntriesHardState));
        assert_eq!(RecordType::from_u8(10), None);
        // A witness's payload is empty: a byte there is refused.
        assert_eq!(Record::decode_payload(RecordType::Witness, &[]), Ok(Record::Witness));
        assert!(Record::decode_payload(RecordType::Witness, &[0]).is_err());
    }

    #[test]
    fn a_footer_lists_every_record_and_decodes_back() {
        let records = sample_records();
        let mut footer = Footer::default();
        let mut offset = SEGMENT_HEADER_LEN as u64;
        let mut offsets = Vec::new();
        for (k, record) in records.iter().enumerate() {
            offsets.push(offset);
            footer.push_record(offset, k % 2 == 0, record);
            let mut payload = Vec::new();
            record.encode_payload(&mut payload);
            offset += framed_len(payload.len()) as u64;
        }
        assert_eq!(footer.records() as usize, records.len());
        let listed = Footer::decode(footer.payload(), offset).unwrap();
        assert_eq!(listed.len(), records.len());
        for (k, (got, want)) in listed.iter().zip(&records).enumerate() {
            assert_eq!((got.offset, got.more), (offsets[k], k % 2 == 0));
            match (&got.record, want) {
                (
                    Record::Entries { group: g1, entries: e1, hard_state: h1 },
                    Record::Entries { group: g2, entries: e2, hard_state: h2 },
                ) => {
                    assert_eq!((g1, h1), (g2, h2));
                    let key = |e: &Entry| (e.index, e.term);
                    assert_eq!(
                        e1.iter().map(key).collect::<Vec<_>>(),
                        e2.iter().map(key).collect::<Vec<_>>()
                    );
                    assert!(e1.iter().all(|e| e.data.is_empty()), "a footer holds no entry data");
                }
                (got, want) => assert_eq!(got, want),
            }
        }
    }

    /// A lean decode gives an entries record of one term as a run, any other as entries, with
    /// the same group, indices, terms and hard state; its forged counts are refused as the
    /// full decode refuses them; and a footer rebuilt from lean records is the same footer.
    #[test]
    fn a_lean_footer_decode_says_what_the_full_one_says() {
        let hs = HardState { term: 3, vote: 2, commit: 7 };
        let one_term: Vec<Entry> = (5..9).map(|i| Entry::new(i, 2, "x")).collect();
        let two_terms = vec![Entry::new(9, 2, "y"), Entry::new(10, 3, "z")];
        let records = [
            Record::Entries { group: 1, entries: one_term.clone(), hard_state: None },
            Record::Entries { group: 4, entries: one_term, hard_state: Some(hs) },
            Record::HardState { group: 1, hard_state: hs },
            Record::Entries { group: 1, entries: two_terms, hard_state: Some(hs) },
        ];
        let mut footer = Footer::default();
        let mut offset = SEGMENT_HEADER_LEN as u64;
        for record in &records {
            footer.push_record(offset, false, record);
            let mut payload = Vec::new();
            record.encode_payload(&mut payload);
            offset += framed_len(payload.len()) as u64;
        }
        let full = Footer::decode(footer.payload(), offset).unwrap();
        let mut lean = Vec::new();
        let n = Footer::decode_each(footer.payload(), offset, true, |r, _| lean.push(r)).unwrap();
        assert_eq!((n, lean.len()), (records.len(), records.len()));
        for (k, (lean, full)) in lean.iter().zip(&full).enumerate() {
            assert_eq!((lean.offset, lean.more), (full.offset, full.more), "record {k}");
            match (&lean.record, &full.record) {
                (
                    Record::EntryRun { group, first, count, term, hard_state },
                    Record::Entries { group: g, entries, hard_state: h },
                ) => {
                    assert_eq!((group, hard_state), (g, h), "record {k}");
                    let run: Vec<(u64, u64)> =
                        (0..u64::from(*count)).map(|i| (first + i, *term)).collect();
                    let listed: Vec<(u64, u64)> =
                        entries.iter().map(|e| (e.index, e.term)).collect();
                    assert_eq!(run, listed, "record {k}");
                }
                (lean, full) => assert_eq!(lean, full, "record {k}"),
            }
        }
        assert!(matches!(lean[0].record, Record::EntryRun { count: 4, .. }));
        assert!(matches!(lean[1].record, Record::EntryRun { hard_state: Some(_), .. }));
        assert!(matches!(lean[3].record, Record::Entries { .. }), "two terms stay entries");
        // A footer rebuilt from the lean records (as for a segment writing resumes in).
        let mut rebuilt = Footer::default();
        for r in &lean {
            rebuilt.push_record(r.offset, r.more, &r.record);
        }
        assert_eq!(rebuilt.payload(), footer.payload());
        // No room before the footer for the entries the last record claims: refused, lean or
        // not.
        let needs = FRAME_HEADER_LEN + ENTRIES_HARD_STATE_HEAD_LEN + 2 * Entry::HEADER_LEN as usize;
        let short = lean[3].offset + needs as u64 - 1;
        assert!(Footer::decode(footer.payload(), short + 1).is_ok());
        assert!(Footer::decode(footer.payload(), short).is_err());
        assert!(Footer::decode_each(footer.payload(), short, true, |_, _| {}).is_err());
        // The same for a record that would come as a run.
        let mut single = Footer::default();
        single.push_entries(64, false, 1, &[Entry::new(5, 2, "x")], None);
        let room = 64 + (FRAME_HEADER_LEN + ENTRIES_HEAD_LEN) as u64 + Entry::HEADER_LEN;
        assert!(Footer::decode_each(single.payload(), room, true, |_, _| {}).is_ok());
        assert!(Footer::decode_each(single.payload(), room - 1, true, |_, _| {}).is_err());
    }

    #[test]
    fn a_forged_footer_is_refused_without_allocating_for_its_claims() {
        let mut footer = Footer::default();
        footer.push_entries(64, false, 1, &[Entry::new(5, 2, "x")], None);
        let good = footer.payload().to_vec();
        // The entry count claims far more entries than the room before the footer holds.
        let mut forged = good.clone();
        let count_at = 4 + 4 + 2 + 8 + 8;
        forged[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        forged[count_at + 4 + 4..count_at + 8 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Footer::decode(&forged, 200).is_err());
        // A record at or past the footer itself.
        assert!(Footer::decode(&good, 64).is_err());
        // The room is just enough for one entry's header and no more.
        assert!(
            Footer::decode(&good, 64 + (FRAME_HEADER_LEN + ENTRIES_HEAD_LEN) as u64 + 21).is_ok()
        );
        assert!(
            Footer::decode(&good, 64 + (FRAME_HEADER_LEN + ENTRIES_HEAD_LEN) as u64 + 20).is_err()
        );
        // An entries-and-hard-state record needs room for its longer head too.
        let mut with_hs = Footer::default();
        let hs = HardState { term: 2, vote: 1, commit: 5 };
        with_hs.push_entries(64, false, 1, &[Entry::new(5, 2, "x")], Some(&hs));
        let room = 64 + (FRAME_HEADER_LEN + ENTRIES_HARD_STATE_HEAD_LEN) as u64 + 21;
        assert!(Footer::decode(with_hs.payload(), room).is_ok());
        assert!(Footer::decode(with_hs.payload(), room - 1).is_err());
        // Truncated anywhere: refused.
        for cut in 0..good.len() {
            assert!(Footer::decode(&good[..cut], 4096).is_err(), "cut at {cut}");
        }
        // A record count beyond the bytes present.
        let mut many = good.clone();
        many[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Footer::decode(&many, 4096).is_err());
    }

    #[test]
    fn a_trailer_round_trips_and_every_damage_is_refused() {
        let trailer = Trailer { footer_offset: 4040, footer_len: 512 };
        let bytes = trailer.encode();
        assert_eq!(Trailer::decode(&bytes), Some(trailer));
        assert_eq!(Trailer::decode(&bytes[..TRAILER_LEN - 1]), None);
        assert_eq!(Trailer::decode(&[0u8; TRAILER_LEN]), None);
        for bit in 0..TRAILER_LEN * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Trailer::decode(&damaged), None, "bit {bit}");
        }
    }
}
