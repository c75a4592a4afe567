//! One segment file on the read side: where it is, and reading a record back from it.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{CorruptionKind, Error, Result};
use crate::io::File;
use crate::types::Entry;
use crate::wal::format::{
    FRAME_HEADER_LEN, FrameHeader, LEN_OFFSET, Record, RecordType, frame_crc,
};

/// A segment of the live log.
#[derive(Debug)]
pub struct Segment {
    /// Sequence number.
    pub sequence: u64,
    /// File name within the WAL directory.
    pub name: String,
    /// The open file.
    pub file: Arc<dyn File>,
    /// The whole file, mapped, once the segment is sealed (never written again).
    pub map: Option<Bytes>,
}

impl Segment {
    /// Reads the entries record at `offset` (see [`read_entries`]).
    pub fn read_entries(&self, offset: u64, max_record: u32) -> Result<Vec<Entry>> {
        read_entries(&self.name, self.file.as_ref(), self.map.as_ref(), offset, max_record)
    }
}

/// Reads the entries record at `offset` of segment `name` (from `map` when the segment is sealed
/// and mapped, else from `file`), checking its CRC again: bytes can rot on disk after recovery
/// checked them, and a read must never return bytes that differ from those written.
pub fn read_entries(
    name: &str,
    file: &dyn File,
    map: Option<&Bytes>,
    offset: u64,
    max_record: u32,
) -> Result<Vec<Entry>> {
    let corruption = |kind| Error::Corruption { segment: PathBuf::from(name), offset, kind };
    let mut header = [0u8; FRAME_HEADER_LEN];
    let owned;
    let (header, payload): (&[u8], &[u8]) = match map {
        Some(map) => {
            let start = offset as usize;
            let header = map
                .get(start..start + FRAME_HEADER_LEN)
                .ok_or_else(|| corruption(CorruptionKind::Torn))?;
            let len = FrameHeader::read(header).len;
            if len > max_record {
                return Err(corruption(CorruptionKind::BadLength(len.into())));
            }
            let payload_start = start + FRAME_HEADER_LEN;
            let payload = map
                .get(payload_start..payload_start + len as usize)
                .ok_or_else(|| corruption(CorruptionKind::Torn))?;
            (header, payload)
        }
        None => {
            file.read_exact_at(&mut header, offset)?;
            let len = FrameHeader::read(&header).len;
            if len > max_record {
                return Err(corruption(CorruptionKind::BadLength(len.into())));
            }
            let mut payload = vec![0u8; len as usize];
            file.read_exact_at(&mut payload, offset + FRAME_HEADER_LEN as u64)?;
            owned = payload;
            (&header[..], &owned[..])
        }
    };
    let head = FrameHeader::read(header);
    if frame_crc(head.prev_crc, &header[LEN_OFFSET..], payload) != head.crc {
        return Err(corruption(CorruptionKind::ChecksumMismatch));
    }
    if head.record_type != RecordType::Entries as u8 {
        return Err(corruption(CorruptionKind::Malformed(format!(
            "index points at a record of type {}, not entries",
            head.record_type
        ))));
    }
    match Record::decode_payload(RecordType::Entries, payload) {
        Ok(Record::Entries(entries)) => Ok(entries),
        Ok(_) => unreachable!("an entries payload decodes to entries"),
        Err(e) => Err(corruption(CorruptionKind::Malformed(e.to_string()))),
    }
}
