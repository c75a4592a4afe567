//! One segment file on the read side: where it is, and reading it back.
//!
//! Segments are read with positional reads into buffers, never through a memory map: a file
//! truncated by another program or a sector that fails to read then gives an error, where a
//! mapped read would kill the process with SIGBUS.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::error::{CorruptionKind, Error, Result};
use crate::io::File;
use crate::options::MAX_SEGMENT_SPAN_BYTES;
use crate::types::Entry;
use crate::wal::footer::SealedFooter;
use crate::wal::format::{
    self, FRAME_HEADER_LEN, FrameHeader, LEN_OFFSET, RecordType, SEGMENT_HEADER_LEN, SegmentHeader,
    TRAILER_LEN, Trailer, frame_crc, framed_len,
};

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
    pub fn read_entries(
        &self,
        group: u64,
        offset: u64,
        max_record: u32,
        wanted: Range<u64>,
    ) -> Result<Vec<Entry>> {
        read_entries(&self.name, self.file.as_ref(), group, offset, max_record, wanted)
    }
}

/// Reads a sealed segment through its footer: the header, the trailer at the end of the file and
/// the footer record it points at, checked (magic and CRCs, offsets within the file, counts
/// bounded by the space they describe). `None` when anything is missing or does not check
/// out: the caller then reads the segment whole. Errors are I/O errors only.
pub fn read_by_footer(name: &str, file: &dyn File, max_record: u32) -> Result<Option<SealedScan>> {
    Ok(read_footer(file, max_record)?.and_then(|raw| decode_footer(name, raw)))
}

/// A sealed segment as its footer describes it.
#[derive(Debug)]
pub struct SealedScan {
    /// The segment's header.
    pub header: SegmentHeader,
    /// The decoded footer.
    pub footer: SealedFooter,
    /// Offset of the footer record's frame.
    pub offset: u64,
    /// Bytes of the footer's frame, padding included.
    pub framed: u64,
    /// The footer record's CRC: the last of the segment's chain.
    pub crc: u32,
}

/// A sealed segment's footer frame as [`read_footer`] found it: read, not yet checked.
#[derive(Debug)]
pub struct RawFooter {
    header: SegmentHeader,
    /// Offset of the footer's frame.
    offset: u64,
    /// The framed footer, padding included.
    frame: Vec<u8>,
}

impl RawFooter {
    /// Bytes of the framed footer: the work [`decode_footer`] has to do.
    pub fn len(&self) -> usize {
        self.frame.len()
    }
}

/// The I/O half of [`read_by_footer`]: reads the header, the trailer and the footer's frame,
/// checking what says where the footer is. `None` when the header or trailer is refused or
/// points outside the file.
pub fn read_footer(file: &dyn File, max_record: u32) -> Result<Option<RawFooter>> {
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
    let mut frame = vec![0u8; framed];
    file.read_exact_at(&mut frame, offset)?;
    Ok(Some(RawFooter { header, offset, frame }))
}

/// The CPU half of [`read_by_footer`]: checks the footer's frame (type, sequence, CRC) and
/// decodes its payload ([`SealedFooter::decode`]). It does no I/O, so open may run it on another
/// thread.
pub fn decode_footer(name: &str, raw: RawFooter) -> Option<SealedScan> {
    let RawFooter { header, offset, frame: mut buf } = raw;
    let framed = buf.len();
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
        return None;
    }
    // The payload keeps the frame's buffer: no copy.
    buf.truncate(payload_end);
    buf.drain(..FRAME_HEADER_LEN);
    match SealedFooter::decode(buf, offset) {
        Ok(footer) => {
            Some(SealedScan { header, footer, offset, framed: framed as u64, crc: frame.crc })
        }
        Err(_e) => {
            #[cfg(feature = "tracing")]
            tracing::warn!(
                segment = name,
                what = _e.what,
                "a footer that passed its CRC does not decode: scanning"
            );
            let _ = name;
            None
        }
    }
}

/// Footers of at least this many bytes are decoded on the lookahead's thread; smaller ones cost
/// less to decode than a thread costs to start, and are decoded where they are needed.
pub const PARALLEL_FOOTER_BYTES: usize = 64 << 10;

/// How many sealed segments' footers open reads ahead of the one it replays: one keeps the
/// second thread busy while the first replays; more would only hold more memory.
pub const FOOTERS_AHEAD: usize = 2;

/// Decodes the footers of the next sealed segments on a second thread while open replays the
/// segment before them: decoding a footer and replaying it take about the same time, so a
/// large log opens in about half the time on two cores.
///
/// Every I/O stays on the caller's thread, in segment order ([`FooterLookahead::push`] after
/// [`read_footer`]), so the sequence of file system calls is the same on every run: crash
/// tests number them. Only [`decode_footer`], which does no I/O, moves. Footers below
/// [`PARALLEL_FOOTER_BYTES`] never start the thread.
#[derive(Default)]
pub struct FooterLookahead {
    /// Pushed and not yet taken, in push order: (segment position, file, footer or its
    /// decoding on the worker).
    pending: VecDeque<(usize, Arc<dyn File>, Pending)>,
    worker: Option<Worker>,
    /// Footers sent to the worker so far.
    sent: usize,
}

enum Pending {
    /// No footer, or one refused before decoding.
    Missing,
    /// To decode on the caller's thread when taken.
    Raw(String, RawFooter),
    /// Sent to the worker; its result arrives in push order.
    Decoding,
}

/// Work for the lookahead's thread.
enum Job {
    /// Decode this footer and send the result back.
    Decode(String, RawFooter),
    /// Free a replayed result: its records were allocated on the worker, and freeing them
    /// there keeps the allocator's per-thread caches warm (freeing them on the replaying
    /// thread made open slower on two threads than on one).
    Drop(SealedScan),
}

struct Worker {
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Option<SealedScan>>,
    thread: Option<JoinHandle<()>>,
}

impl FooterLookahead {
    /// Footers decoded on the second thread so far.
    pub fn decoded_ahead(&self) -> usize {
        self.sent
    }

    /// Queues the footer [`read_footer`] read for the segment at `position` (positions
    /// increase). A large one starts decoding on the worker at once.
    pub fn push(
        &mut self,
        position: usize,
        name: &str,
        file: Arc<dyn File>,
        raw: Option<RawFooter>,
    ) {
        assert!(
            self.pending.back().is_none_or(|(p, ..)| *p < position),
            "footers are pushed in segment order"
        );
        // Bounded: the caller pushes at most FOOTERS_AHEAD + 1 before taking one.
        assert!(self.pending.len() <= FOOTERS_AHEAD, "at most {FOOTERS_AHEAD} footers ahead");
        let pending = match raw {
            None => Pending::Missing,
            Some(raw) if raw.len() >= PARALLEL_FOOTER_BYTES => match self.worker() {
                Some(jobs) => match jobs.send(Job::Decode(name.to_string(), raw)) {
                    Ok(()) => {
                        self.sent += 1;
                        Pending::Decoding
                    }
                    // The worker is gone (it panicked): decode here.
                    Err(std::sync::mpsc::SendError(Job::Decode(name, raw))) => {
                        Pending::Raw(name, raw)
                    }
                    Err(_) => unreachable!("the job sent was a decode"),
                },
                None => Pending::Raw(name.to_string(), raw),
            },
            Some(raw) => Pending::Raw(name.to_string(), raw),
        };
        self.pending.push_back((position, file, pending));
    }

    /// The file and decoded footer of the segment at `position`, the oldest pushed.
    pub fn take(&mut self, position: usize) -> (Arc<dyn File>, Option<SealedScan>) {
        let (at, file, pending) = self.pending.pop_front().expect("a footer was pushed");
        assert_eq!(at, position, "footers are taken in the order they were pushed");
        let scan = match pending {
            Pending::Missing => None,
            Pending::Raw(name, raw) => decode_footer(&name, raw),
            Pending::Decoding => {
                let worker = self.worker.as_ref().expect("sent to the worker");
                // A worker that panicked sends nothing: the segment is read whole instead.
                worker.results.recv().ok().flatten()
            }
        };
        (file, scan)
    }

    /// Hands a replayed result back, to be freed where it was allocated.
    pub fn dispose(&mut self, scan: SealedScan) {
        if let Some(jobs) = self.worker.as_ref().and_then(|w| w.jobs.as_ref()) {
            // If the worker is gone, the scan comes back in the error and is dropped here.
            let _ = jobs.send(Job::Drop(scan));
        }
    }

    /// The worker's job queue, started on first use; `None` if no thread can be started.
    fn worker(&mut self) -> Option<&SyncSender<Job>> {
        if self.worker.is_none() {
            // The result queue holds every footer the caller can have outstanding, so the worker
            // never blocks on it; the caller may wait on the job queue while the worker frees.
            let (jobs, job_rx) = sync_channel::<Job>(2 * (FOOTERS_AHEAD + 1));
            let (result_tx, results) = sync_channel(FOOTERS_AHEAD + 1);
            let thread = std::thread::Builder::new()
                .name("raftwal-open".into())
                .spawn(move || {
                    // Bounded: ends when the caller drops the job queue.
                    for job in job_rx {
                        match job {
                            Job::Decode(name, raw) => {
                                if result_tx.send(decode_footer(&name, raw)).is_err() {
                                    break;
                                }
                            }
                            Job::Drop(scan) => drop(scan),
                        }
                    }
                })
                .ok()?;
            self.worker = Some(Worker { jobs: Some(jobs), results, thread: Some(thread) });
        }
        self.worker.as_ref().and_then(|w| w.jobs.as_ref())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the job queue ends the worker after the footer it decodes, if any.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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

/// Reads the entries record of `group` at `offset` of segment `name` and decodes those of its
/// entries in `wanted`, checking its CRC again: bytes can rot on disk after recovery checked
/// them, and a read must never return bytes that differ from those written (nor another
/// group's). One `pread` for a record of up to [`READ_AHEAD_BYTES`], two beyond.
pub fn read_entries(
    name: &str,
    file: &dyn File,
    group: u64,
    offset: u64,
    max_record: u32,
    wanted: Range<u64>,
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
    span.entries_at(offset, group, max_record, wanted)?
        .ok_or_else(|| corruption(CorruptionKind::Torn))
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

    /// Decodes the entries in `wanted` of the entries record of `group` at segment offset `at`,
    /// its CRC checked, or `None` when the record does not lie wholly in the span.
    pub fn entries_at(
        &self,
        at: u64,
        group: u64,
        max_record: u32,
        wanted: Range<u64>,
    ) -> Result<Option<Vec<Entry>>> {
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
        match format::decode_entries_in(record_type, payload, owner, wanted) {
            Ok((found, entries)) if found == group => Ok(Some(entries)),
            Ok((found, _)) => Err(corruption(CorruptionKind::Malformed(format!(
                "the index points at entries of group {found}, not of group {group}"
            )))),
            Err(e) => Err(corruption(CorruptionKind::Malformed(e.to_string()))),
        }
    }
}
