//! One segment file on the read side: where it is, and reading it back.
//!
//! Segments are read with positional reads into buffers, never through a memory map: a file
//! truncated by another program or a sector that fails to read then gives an error, where a
//! mapped read would kill the process with SIGBUS.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{CorruptionKind, Error, Result};
use crate::io::File;
use crate::options::MAX_SEGMENT_SPAN_BYTES;
use crate::types::Entry;
use crate::wal::format::{
    FRAME_HEADER_LEN, Footer, FrameHeader, LEN_OFFSET, Record, RecordType, SEGMENT_HEADER_LEN,
    SegmentHeader, TRAILER_LEN, Trailer, frame_crc, framed_len,
};
use crate::wal::recovery::{After, ScannedRecord, SegmentScan, Stop};

/// Bytes read at a record's offset in one call: the frame header and the payload of most
/// records, so that a read usually costs one `pread`.
const READ_AHEAD_BYTES: usize = 4096;

const _: () = assert!(READ_AHEAD_BYTES >= FRAME_HEADER_LEN);

/// A segment of the live log.
#[derive(Debug)]
pub struct Segment {
    /// Sequence number.
    pub sequence: u64,
    /// File name within the WAL directory.
    pub name: String,
    /// The open file.
    pub file: Arc<dyn File>,
    /// Bytes the file takes (its length when it was sealed or opened), for purge's accounting
    /// without a system call.
    pub size: u64,
}

impl Segment {
    /// Reads the entries record of `group` at `offset` (see [`read_entries`]).
    pub fn read_entries(&self, group: u64, offset: u64, max_record: u32) -> Result<Vec<Entry>> {
        read_entries(&self.name, self.file.as_ref(), group, offset, max_record)
    }
}

/// Reads a sealed segment through its footer: the header, the trailer at the end of the file and
/// the footer record it points at, checked (magic and CRCs, offsets within the file, counts
/// bounded by the space they describe). Returns the scan the footer stands for (its records,
/// with entries' index and term only, then the footer record), or `None` when anything is
/// missing or does not check out: the caller then reads the segment whole. Errors are I/O
/// errors only.
pub fn read_by_footer(name: &str, file: &dyn File, max_record: u32) -> Result<Option<SegmentScan>> {
    let len = file.len()?;
    if len > MAX_SEGMENT_SPAN_BYTES || len < (SEGMENT_HEADER_LEN + TRAILER_LEN) as u64 {
        return Ok(None);
    }
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    file.read_exact_at(&mut head, 0)?;
    let Ok(header) = SegmentHeader::decode(&head) else { return Ok(None) };
    let mut tail = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut tail, len - TRAILER_LEN as u64)?;
    let Some(trailer) = Trailer::decode(&tail) else { return Ok(None) };
    let (offset, framed) = (u64::from(trailer.footer_offset), trailer.footer_len as usize);
    let fits = offset >= SEGMENT_HEADER_LEN as u64
        && framed >= FRAME_HEADER_LEN
        && framed <= framed_len(max_record as usize)
        && offset + framed as u64 <= len - TRAILER_LEN as u64;
    if !fits {
        return Ok(None);
    }
    let mut buf = vec![0u8; framed];
    file.read_exact_at(&mut buf, offset)?;
    let frame = FrameHeader::read(&buf);
    let payload_end = FRAME_HEADER_LEN + frame.len as usize;
    if frame.record_type != RecordType::Footer as u8
        || u64::from(frame.sequence) != header.sequence
        || frame.durable > offset
        || !frame.reserved_zero
        || frame.flags != 0
        || framed_len(frame.len as usize) != framed
        || frame_crc(
            frame.prev_crc,
            &buf[LEN_OFFSET..FRAME_HEADER_LEN],
            &buf[FRAME_HEADER_LEN..payload_end],
        ) != frame.crc
    {
        return Ok(None);
    }
    let Ok(listed) = Footer::decode(&buf[FRAME_HEADER_LEN..payload_end], offset) else {
        #[cfg(feature = "tracing")]
        tracing::warn!(segment = name, "a footer that passed its CRC does not decode: scanning");
        let _ = name;
        return Ok(None);
    };
    let mut records: Vec<ScannedRecord> = Vec::with_capacity(listed.len() + 1);
    let offsets: Vec<u64> = listed.iter().map(|r| r.offset).collect();
    for (k, r) in listed.into_iter().enumerate() {
        let next = offsets.get(k + 1).copied().unwrap_or(offset);
        records.push(ScannedRecord {
            offset: r.offset,
            // Only the last record's CRC is used (the chain into the next segment): the footer's.
            crc: 0,
            framed_len: next - r.offset,
            more: r.more,
            durable: 0,
            record: r.record,
        });
    }
    records.push(ScannedRecord {
        offset,
        crc: frame.crc,
        framed_len: framed as u64,
        more: false,
        durable: frame.durable,
        record: Record::Footer(Vec::new()),
    });
    Ok(Some(SegmentScan {
        header: Ok(header),
        records,
        stop_offset: offset + framed as u64,
        stop: Stop::End,
        after: After::Nothing,
        lookahead_checked_bytes: 0,
        first_valid_after: None,
        last_valid_end: None,
    }))
}

/// Reads the whole of segment `name` into memory. A file longer than any raftwal writes is
/// refused before anything is allocated; a file that shrinks while it is read is an I/O error.
pub fn read_whole(name: &str, file: &dyn File) -> Result<Vec<u8>> {
    let len = file.len()?;
    if len > MAX_SEGMENT_SPAN_BYTES {
        return Err(Error::Corruption {
            segment: PathBuf::from(name),
            offset: 0,
            kind: CorruptionKind::BadLength(len),
        });
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Reads the entries record of `group` at `offset` of segment `name`, checking its CRC again:
/// bytes can rot on disk after recovery checked them, and a read must never return bytes that
/// differ from those written (nor another group's). One `pread` for a record of up to
/// [`READ_AHEAD_BYTES`], two beyond.
pub fn read_entries(
    name: &str,
    file: &dyn File,
    group: u64,
    offset: u64,
    max_record: u32,
) -> Result<Vec<Entry>> {
    let corruption = |kind| Error::Corruption { segment: PathBuf::from(name), offset, kind };
    let mut buf = vec![0u8; READ_AHEAD_BYTES];
    let read = file.read_up_to_at(&mut buf, offset)?;
    if read < FRAME_HEADER_LEN {
        return Err(corruption(CorruptionKind::Torn));
    }
    let head = FrameHeader::read(&buf);
    if head.len > max_record {
        return Err(corruption(CorruptionKind::BadLength(head.len.into())));
    }
    let total = FRAME_HEADER_LEN + head.len as usize;
    if total > read {
        if read < READ_AHEAD_BYTES {
            // The file ended inside the record.
            return Err(corruption(CorruptionKind::Torn));
        }
        buf.resize(total, 0);
        let rest = file.read_up_to_at(&mut buf[read..], offset + read as u64)?;
        if read + rest < total {
            return Err(corruption(CorruptionKind::Torn));
        }
    }
    buf.truncate(total);
    let span = Span { name, offset, bytes: bytes::Bytes::from(buf) };
    span.entries_at(offset, group, max_record)?.ok_or_else(|| corruption(CorruptionKind::Torn))
}

/// Bytes of a segment read in one `pread`, from which the entries records lying wholly inside
/// are decoded without another read: consecutive records of a group are read together.
pub struct Span<'a> {
    /// The segment's file name (for errors).
    pub name: &'a str,
    /// Offset in the segment of the first byte.
    pub offset: u64,
    /// The bytes; entries decoded from them share this buffer.
    pub bytes: bytes::Bytes,
}

impl Span<'_> {
    /// Reads `[offset, offset + len)` of `file` (less at the end of the file).
    pub fn read<'a>(name: &'a str, file: &dyn File, offset: u64, len: usize) -> Result<Span<'a>> {
        let mut buf = vec![0u8; len];
        let read = file.read_up_to_at(&mut buf, offset)?;
        buf.truncate(read);
        Ok(Span { name, offset, bytes: bytes::Bytes::from(buf) })
    }

    /// Bytes of the record at segment offset `at` (frame header and payload), from its header,
    /// when the header lies in the span and its length is within `max_record`. Unchecked: the
    /// read that follows checks the record whole.
    pub fn record_len_at(&self, at: u64, max_record: u32) -> Option<usize> {
        let start = at.checked_sub(self.offset)? as usize;
        let header = self.bytes.get(start..start.checked_add(FRAME_HEADER_LEN)?)?;
        let head = FrameHeader::read(header);
        (head.len <= max_record).then(|| FRAME_HEADER_LEN + head.len as usize)
    }

    /// Decodes the entries record of `group` at segment offset `at`, its CRC checked, or `None`
    /// when the record does not lie wholly in the span.
    pub fn entries_at(&self, at: u64, group: u64, max_record: u32) -> Result<Option<Vec<Entry>>> {
        let corruption =
            |kind| Error::Corruption { segment: PathBuf::from(self.name), offset: at, kind };
        let Some(start) = at.checked_sub(self.offset).map(|s| s as usize) else { return Ok(None) };
        let Some(header) = self.bytes.get(start..start + FRAME_HEADER_LEN) else { return Ok(None) };
        let head = FrameHeader::read(header);
        if head.len > max_record {
            return Err(corruption(CorruptionKind::BadLength(head.len.into())));
        }
        let end = start + FRAME_HEADER_LEN + head.len as usize;
        let Some(payload) = self.bytes.get(start + FRAME_HEADER_LEN..end) else { return Ok(None) };
        if frame_crc(head.prev_crc, &header[LEN_OFFSET..], payload) != head.crc {
            return Err(corruption(CorruptionKind::ChecksumMismatch));
        }
        let record_type = match RecordType::from_u8(head.record_type) {
            Some(t @ (RecordType::Entries | RecordType::EntriesHardState)) => t,
            _ => {
                return Err(corruption(CorruptionKind::Malformed(format!(
                    "index points at a record of type {}, not entries",
                    head.record_type
                ))));
            }
        };
        let owner = Some((&self.bytes, start + FRAME_HEADER_LEN));
        match Record::decode_payload_in(record_type, payload, owner) {
            Ok(Record::Entries { group: found, entries, .. }) if found == group => {
                Ok(Some(entries))
            }
            Ok(Record::Entries { group: found, .. }) => Err(corruption(CorruptionKind::Malformed(
                format!("the index points at entries of group {found}, not of group {group}"),
            ))),
            Ok(_) => unreachable!("an entries payload decodes to entries"),
            Err(e) => Err(corruption(CorruptionKind::Malformed(e.to_string()))),
        }
    }
}
