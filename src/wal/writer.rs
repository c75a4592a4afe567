//! The write side of the WAL: framing a batch of records into one buffer, writing it with one
//! system call (or in pieces, with their writeback started early, when it is large), rolling
//! over to a prepared segment, and the bookkeeping a sync needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::codec::HARD_STATE_LEN;
use crate::error::{Error, Result};
use crate::io::{File, Fs};
use crate::metrics::Counters;
use crate::options::MAX_SEGMENT_SPAN_BYTES;
use crate::types::{Entry, HardState, SnapshotMetadata};
use crate::wal::footer;
use crate::wal::format::{
    self, CHECKPOINT_COUNT_LEN, Checkpoint, ENTRIES_HEAD_LEN, ENTRIES_RECORD_TARGET_BYTES,
    FLAG_MORE, FRAME_HEADER_LEN, Footer, Record, RecordType, SegmentHeader, TRAILER_LEN, Trailer,
    append_record, framed_len,
};
use crate::wal::index::Loc;

/// The largest sequence a segment may have. The index keeps a segment's sequence in 32 bits and
/// reserves the largest value, and recovery refuses any sequence above this one, so the writer
/// never creates one: a log whose last segment has it refuses to roll over.
pub const MAX_SEGMENT_SEQUENCE: u64 = u32::MAX as u64 - 1;
const _: () = assert!(MAX_SEGMENT_SEQUENCE < Loc::MISSING.segment as u64);

/// Encoded bytes of a large write after which the records framed so far are handed to the
/// kernel, and their writeback started, while the rest are framed: the disk writes the start of
/// the batch while the CPU frames its end. Every write whose sync follows (`SyncPolicy::Always`
/// or `Batch`) also starts the writeback of its last piece before the in-memory index and cache
/// are updated, so that the disk works while they are, and the fdatasync finds less to write.
/// Pieces of one write may reach the disk in any order before its sync, as its sectors may:
/// recovery reads any subset of them as a torn write (DESIGN.md §7, case 2).
const EARLY_WRITE_BYTES: usize = 256 << 10;

/// The error a rollover (or a new log) past [`MAX_SEGMENT_SEQUENCE`] gets.
pub fn sequence_exhausted(sequence: u64) -> Error {
    Error::Io(std::io::Error::other(format!(
        "segment sequence {sequence} is beyond the largest a log may use \
         ({MAX_SEGMENT_SEQUENCE}): this log cannot grow; start a new one from a snapshot"
    )))
}

/// How many released segment files are kept for reuse: enough for the segments a purge
/// releases at once (the threshold's worth) plus two, so that a purge running late does not
/// fall back to fresh files; none with `recycle_segments` off.
pub fn recycle_capacity(options: &crate::WalOptions) -> usize {
    if !options.recycle_segments {
        return 0;
    }
    let span = options.purge_threshold_bytes.div_ceil(options.segment_size_bytes);
    usize::try_from(span.min(64)).unwrap_or(64) + 2
}

/// One logical change to write.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    /// Entries of `group` replacing its log from their first index on (contiguous, non-empty),
    /// then its new hard state if given (one record for both, when it fits).
    Entries {
        /// The group.
        group: u64,
        /// The entries.
        entries: &'a [Entry],
        /// The group's new hard state, applied after the entries.
        hard_state: Option<HardState>,
    },
    /// A group's new hard state.
    HardState {
        /// The group.
        group: u64,
        /// The hard state.
        hard_state: HardState,
    },
    /// A snapshot marker.
    Snapshot {
        /// The group.
        group: u64,
        /// The snapshot that is now the newest.
        metadata: &'a SnapshotMetadata,
        /// Whether the log restarts after it.
        resets_log: bool,
    },
    /// A compaction marker: the new dummy.
    Compact {
        /// The group.
        group: u64,
        /// Index of the new dummy.
        index: u64,
        /// Its term.
        term: u64,
    },
    /// The removal of a group and all its state.
    Remove {
        /// The group.
        group: u64,
    },
    /// The whole state, written at a clean close so every earlier record has a durable witness.
    Checkpoint(&'a [Checkpoint]),
}

/// Where a run of entries was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntriesWritten {
    /// The group.
    pub group: u64,
    /// Segment sequence.
    pub sequence: u64,
    /// Offset of the record.
    pub offset: u64,
    /// Index of the first entry in the record.
    pub first_index: u64,
    /// Entries in the record.
    pub count: usize,
}

/// What a write put in the log.
#[derive(Debug)]
pub struct Written {
    /// Where each run of entries went, in the order of the ops.
    pub runs: Vec<EntriesWritten>,
    /// The write's bytes and where they start (segment sequence, offset), when the writer keeps
    /// them for the write cache ([`Writer::keep_writes`]).
    pub bytes: Option<(u64, u64, bytes::Bytes)>,
}

/// How a write failed.
#[derive(Debug)]
pub enum Failure {
    /// Nothing reached the log; the writer can go on.
    Refused(Error),
    /// The log's state on disk is unknown (a write or sync failed): poison it.
    Poison(Error),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Error {
        match failure {
            Failure::Refused(e) | Failure::Poison(e) => e,
        }
    }
}

/// The segment being appended to.
#[derive(Debug)]
pub struct Active {
    /// Sequence number.
    pub sequence: u64,
    /// Ordinal of its first record, named in its file name and header.
    pub first_record: u64,
    /// File name.
    pub name: String,
    /// The open file.
    pub file: Arc<dyn File>,
    /// End of the written records.
    pub write_offset: u64,
    /// Bytes from the start of the file known durable (an fdatasync covering them returned).
    pub durable_offset: u64,
    /// CRC of the last record written (the next record's chain seed).
    pub prev_crc: u32,
    /// Whether the header and checkpoint still have to be written (a fresh segment).
    pub fresh: bool,
    /// End of the header and checkpoint: records after it are data.
    pub data_start: u64,
    /// Every record written to it so far, for its footer (`None` once the summary grew past
    /// [`format::MAX_FOOTER_BYTES`]: the segment is then sealed without one).
    pub footer: Option<Footer>,
    /// Whether the file held an earlier segment: each write is then followed by a zeroed frame
    /// header, so that a scan finds a clean end after the last record instead of what the
    /// earlier use left there.
    pub recycled: bool,
    /// Offset of the first record that changes state and that no record's `durable` field
    /// covers yet (at most earlier than that: it may name a record that changes nothing). Once
    /// a sync makes it durable, a witness is due (DESIGN.md §7, case 26).
    pub unwitnessed: Option<u64>,
    /// Offset of the witness record, while it is the last record: it is never waited for, so
    /// the segment counts as durable without it.
    pub witness_at: Option<u64>,
    /// Whether its blocks were written before its first record (zero-filled or recycled).
    /// A new log's first segment is not: it is allocated without zeros to keep creating a log
    /// cheap. Nor is one a rollover started without waiting for the background preparation.
    /// Each fdatasync of an append into unwritten blocks also writes the inode (the extents'
    /// conversion), so the writer leaves such a segment once the next file is ready (see
    /// [`Writer::leaves_unwritten_segment`]).
    pub blocks_written: bool,
}

impl Active {
    /// Notes a record (or write) written at `start` whose frames say `durable` bytes were
    /// durable; `changes` says whether it changes state (a checkpoint, footer or witness does not).
    fn note_written(&mut self, start: u64, durable: u64, changes: bool) {
        if self.unwitnessed.is_some_and(|u| u < durable) {
            // Witnessed; what lies between the durable point and this write is not.
            self.unwitnessed = (durable < start).then_some(durable);
        }
        if changes && self.unwitnessed.is_none() {
            self.unwitnessed = Some(start);
        }
        self.witness_at = None;
    }
}

/// A segment that was just sealed by a rollover.
#[derive(Debug)]
pub struct Sealed {
    /// Sequence number.
    pub sequence: u64,
    /// File name.
    pub name: String,
    /// The open file.
    pub file: Arc<dyn File>,
    /// Log sequence number up to which everything is durable, names included, now that the
    /// segment is sealed.
    pub durable_lsn: u64,
    /// Bytes the file takes: its preallocated size, more if writes extended it, less if it was
    /// cut at its seal or never preallocated (a segment in unwritten blocks).
    pub size: u64,
}

/// What a sync has to cover, captured under the log's lock and synced outside it.
#[derive(Clone, Debug)]
pub struct SyncTarget {
    /// The active segment's file.
    pub file: Arc<dyn File>,
    /// Its sequence.
    pub sequence: u64,
    /// Bytes written to it.
    pub offset: u64,
    /// Log sequence number (bytes written since open) the sync makes durable.
    pub lsn: u64,
    /// Directory changes made so far; a sync also syncs the directory if any is unsynced.
    pub renames: u64,
    /// Directory changes known durable when the target was taken.
    pub durable_renames: u64,
}

/// Live segments below which a rollover that finds the background preparation running starts
/// its segment in an unwritten file instead of waiting. Each live segment holds an open file,
/// and a log whose groups never compact keeps every segment: term changes, each sealing its
/// segment, would otherwise add a small file per write without bound. Past this, rollovers
/// are paced by the zero-fill as they were before the bound existed (well under the usual
/// limit of 1,024 open files).
pub const UNWAITED_ROLLOVER_MAX_SEGMENTS: usize = 256;

/// A file ready to become a segment: renamed from `temp` when the segment starts.
struct PreparedFile {
    file: Arc<dyn File>,
    temp: PathBuf,
    /// Whether it held an earlier segment (see [`Active::recycled`]).
    recycled: bool,
    /// Whether its blocks are written (zero-filled or recycled; see [`Active::blocks_written`]).
    blocks_written: bool,
}

/// A segment being prepared on a background thread. Dropping it stops the thread and waits for
/// it: the thread must never outlive the log, or it could truncate and zero-fill a file of the
/// same name that a reopened log has prepared, or even started writing to.
struct Preparation {
    sequence: u64,
    cancel: Arc<AtomicBool>,
    // Set by the thread once the file is prepared, before it returns it.
    ready: Arc<AtomicBool>,
    // `None` only once joined.
    handle: Option<JoinHandle<std::io::Result<PreparedFile>>>,
}

impl Preparation {
    /// Whether the file is prepared: taking it will neither wait nor fail.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether the thread has stopped: taking the result will not wait (it may be a failure).
    fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the prepared file.
    fn wait(mut self) -> std::io::Result<PreparedFile> {
        let handle = self.handle.take().expect("joined only here and in drop");
        handle.join().unwrap_or_else(|_| Err(std::io::Error::other("segment preparation panicked")))
    }
}

impl Drop for Preparation {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            // Its result (a file no segment will use, or the cancellation) is not needed; a
            // leftover temp file is removed at the next open.
            let _ = handle.join();
        }
    }
}

/// The write side of the WAL. Owned by the log's lock.
pub struct Writer {
    fs: Fs,
    dir: PathBuf,
    segment_size_bytes: u64,
    max_record_bytes: u32,
    background: bool,
    /// Whether writes start their writeback before the sync that follows them.
    early_writeback: bool,
    /// Whether another caller's sync is running; the engine sets it before each write. Such a
    /// write does not start the writeback of its last piece: the running fdatasync may be
    /// waiting on this file's pages, and new writeback would delay it (the group commit whose
    /// sync covers this write is the next one, which writes these pages anyway).
    pub sync_running: bool,
    /// Segments of the live log, the active one included; the engine sets it before each
    /// write. Past [`UNWAITED_ROLLOVER_MAX_SEGMENTS`] a rollover waits for the preparation.
    pub live_segments: usize,
    /// The segment being appended to.
    pub active: Active,
    /// The next segment's file being prepared on a background thread (never inline: see
    /// `start_preparing`). Declared after `active`: a writer being dropped tells a preparation
    /// to stop (in `Drop for Writer`), closes its files, then waits for the thread here.
    prepared: Option<Preparation>,
    buf: Vec<u8>,
    /// Whether each write hands its buffer back (for the write cache) instead of reusing it.
    pub keep_writes: bool,
    /// Released segment files to reuse (`*.free` names, oldest first), and how many to keep.
    pub pool: Vec<String>,
    /// Files the pool keeps at most; more are deleted.
    pub pool_capacity: usize,
    /// Bytes of writes since open (a log sequence number for group commit). Witnesses are not
    /// counted: nothing waits for them, so a sync never has to cover one.
    pub lsn: u64,
    /// Records written since the log was created (the next record's ordinal).
    pub records: u64,
    /// Renames made in the directory since open.
    pub renames: u64,
    /// Renames known durable (a directory fsync after them returned). Invariant:
    /// `durable_renames <= renames`.
    pub durable_renames: u64,
    /// The log's counters (rollover syncs and new segments are counted here).
    counters: Arc<Counters>,
    slow_sync: std::time::Duration,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(preparation) = &self.prepared {
            // Stop it now rather than after the files close; `prepared`'s drop joins it.
            preparation.cancel.store(true, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("active", &self.active).field("lsn", &self.lsn).finish()
    }
}

/// Fails once `cancel` is set: the log that wanted the segment is closing.
fn check_cancel(cancel: &AtomicBool) -> std::io::Result<()> {
    if cancel.load(Ordering::Acquire) {
        return Err(std::io::Error::other("segment preparation stopped: the log is closing"));
    }
    Ok(())
}

/// Creates, preallocates, zero-fills and syncs the file that will become segment `sequence`,
/// stopping between steps once `cancel` is set.
fn prepare(
    fs: &Fs,
    dir: &Path,
    sequence: u64,
    size: u64,
    cancel: &AtomicBool,
) -> std::io::Result<PreparedFile> {
    check_cancel(cancel)?;
    let temp = dir.join(format::temp_name(sequence));
    let file = fs.create(&temp)?;
    check_cancel(cancel)?;
    file.allocate(size)?;
    // Synced as it goes, off the write path, so the first fdatasync of the segment does not
    // also have to persist its size and extents.
    zero_fill(file.as_ref(), size, cancel)?;
    Ok(PreparedFile { file, temp, recycled: false, blocks_written: true })
}

/// Creates the file of segment `sequence` empty, for a rollover that finds the background
/// preparation still running: the writer starts the segment at once instead of waiting for a
/// segment's worth of zeros, and leaves it for the prepared file once that is ready (see
/// [`Writer::leaves_unwritten_segment`]), often after a few writes. Its appends extend it, so
/// an early seal leaves a file of kilobytes, and nothing has to be given back (freeing blocks
/// costs a journal commit, and a discard where the file system is mounted with one). Its temp
/// name differs from the preparation's, which goes on for a later segment.
fn prepare_unwritten(fs: &Fs, dir: &Path, sequence: u64) -> std::io::Result<PreparedFile> {
    let temp = dir.join(format::unwritten_temp_name(sequence));
    let file = fs.create(&temp)?;
    Ok(PreparedFile { file, temp, recycled: false, blocks_written: false })
}

/// Bytes zeroed at the start of a recycled file: the header's sector and more, so that a new
/// segment whose first write never became durable reads as one with no header (row H1), never
/// as the earlier segment's header.
const RECYCLED_HEAD_ZEROED: u64 = 4096;

/// Takes the released segment file `pool_name` to become segment `sequence`: renames it to the
/// temp name, zeroes its first bytes and the trailer at its end, and syncs. What else the file
/// holds stays: the frames of its earlier uses carry older sequences, and recovery stops at
/// them. A file shorter than `size` is removed and a fresh one prepared instead.
fn prepare_recycled(
    fs: &Fs,
    dir: &Path,
    pool_name: &str,
    sequence: u64,
    size: u64,
    cancel: &AtomicBool,
) -> std::io::Result<PreparedFile> {
    check_cancel(cancel)?;
    let temp = dir.join(format::temp_name(sequence));
    fs.rename(&dir.join(pool_name), &temp)?;
    let file = fs.open(&temp)?;
    let len = file.len()?;
    // A file whose header names this sequence or a later one held a segment whose renames a
    // crash undid: its records would not read as stale. Such a file is not reused.
    let mut head = [0u8; format::SEGMENT_HEADER_LEN];
    let held = file.read_up_to_at(&mut head, 0)? == head.len()
        && SegmentHeader::decode(&head).is_ok_and(|h| h.sequence >= sequence);
    if held || len < size || len < (format::SEGMENT_HEADER_LEN + TRAILER_LEN) as u64 {
        drop(file);
        fs.remove_file(&temp)?;
        return prepare(fs, dir, sequence, size, cancel);
    }
    let head = RECYCLED_HEAD_ZEROED.min(len - TRAILER_LEN as u64);
    file.write_all_at(&vec![0u8; head as usize], 0)?;
    file.write_all_at(&[0u8; TRAILER_LEN], len - TRAILER_LEN as u64)?;
    check_cancel(cancel)?;
    file.sync_data()?;
    Ok(PreparedFile { file, temp, recycled: true, blocks_written: true })
}

/// Writes zeros over `[0, size)` of a freshly allocated file. On extent-based file systems
/// (ext4, XFS) `allocate` leaves the blocks *unwritten*: a later append into them makes its
/// fdatasync also persist the extent's conversion to written (a journal commit, or the extent
/// and inode blocks on ext4 without a journal), which costs the log a large part of the disk's
/// sync rate. Overwriting written zeros needs no metadata change. The contents do
/// not change (an allocated file already reads as zeros), so recovery is unaffected.
///
/// Each chunk is synced before the next is written, so that at most one chunk of zeros is
/// ever dirty in the page cache. A journal commit (which the log's directory fsyncs, and its
/// fdatasyncs of appends to new blocks, force) first writes out dirty data of other files
/// too on ext4 in `data=ordered` mode: with the whole fill left dirty, such a commit waited
/// for up to a segment of zeros (DESIGN.md §13 has the figures).
fn zero_fill(file: &dyn File, size: u64, cancel: &AtomicBool) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(size) as usize];
    let mut at = 0;
    // Bounded: size / CHUNK passes.
    while at < size {
        check_cancel(cancel)?;
        let n = CHUNK.min(size - at);
        file.write_all_at(&zeros[..n as usize], at)?;
        file.sync_data()?;
        at += n;
    }
    Ok(())
}

/// One record of a write: which op (or which part of it), and its payload's length.
#[derive(Clone, Copy)]
enum Part<'a> {
    Op(Op<'a>),
    Checkpoint(&'a [Checkpoint]),
}

/// The records a batch of ops becomes, planned before anything is written.
struct Plan<'a> {
    records: Vec<(Part<'a>, usize)>,
    bytes: u64,
}

/// Splits a checkpoint into parts whose payloads fit `max` bytes (each group's checkpoint is
/// small: it fits any allowed limit).
fn plan_checkpoint<'a>(groups: &'a [Checkpoint], max: usize, out: &mut Vec<(Part<'a>, usize)>) {
    let mut start = 0;
    let mut len = CHECKPOINT_COUNT_LEN;
    for (i, cp) in groups.iter().enumerate() {
        let size = cp.encoded_len();
        if len + size > max && i > start {
            out.push((Part::Checkpoint(&groups[start..i]), len));
            start = i;
            len = CHECKPOINT_COUNT_LEN;
        }
        len += size;
    }
    out.push((Part::Checkpoint(&groups[start..]), len));
}

impl Writer {
    /// A writer appending to `active`.
    pub fn new(
        fs: Fs,
        dir: PathBuf,
        options: &crate::WalOptions,
        active: Active,
        counters: Arc<Counters>,
        records: u64,
        pool: Vec<String>,
    ) -> Writer {
        assert!(
            active.sequence <= MAX_SEGMENT_SEQUENCE,
            "segment sequence {} is beyond {MAX_SEGMENT_SEQUENCE}",
            active.sequence
        );
        let mut writer = Writer {
            fs,
            dir,
            segment_size_bytes: options.segment_size_bytes,
            max_record_bytes: options.max_record_bytes,
            background: options.prepare_in_background,
            early_writeback: options.sync_policy != crate::SyncPolicy::Never,
            sync_running: false,
            live_segments: 1,
            active,
            prepared: None,
            buf: Vec::new(),
            keep_writes: false,
            pool,
            pool_capacity: recycle_capacity(options),
            lsn: 0,
            records,
            renames: 0,
            durable_renames: 0,
            counters,
            slow_sync: options.slow_sync_threshold,
        };
        writer.start_preparing();
        writer
    }

    /// Starts preparing the next segment's file on a background thread. Inline
    /// (`prepare_in_background` off), nothing happens here: the rollover prepares the file when
    /// it needs it, so that an open that never rolls over creates no file (most opens of a
    /// crash test do not, and preparing at each open was a large part of their cost).
    fn start_preparing(&mut self) {
        if self.prepared.is_some() {
            // Still running after a rollover that did not wait for it: it serves the next one.
            return;
        }
        let sequence = self.active.sequence + 1;
        if !self.background || sequence > MAX_SEGMENT_SEQUENCE {
            // Beyond the last sequence no segment can follow this one; the rollover says so.
            return;
        }
        let run = self.preparation(sequence);
        let cancel = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, done) = (cancel.clone(), ready.clone());
        let handle = std::thread::spawn(move || {
            let prepared = run(&stop);
            done.store(prepared.is_ok(), Ordering::Release);
            prepared
        });
        self.prepared = Some(Preparation { sequence, cancel, ready, handle: Some(handle) });
    }

    /// What prepares the file of segment `sequence`: the oldest released file, if any
    /// (reusing it saves allocating and zero-filling one), else a new one.
    fn preparation(
        &mut self,
        sequence: u64,
    ) -> impl FnOnce(&AtomicBool) -> std::io::Result<PreparedFile> + Send + 'static {
        let (fs, dir, size) = (self.fs.clone(), self.dir.clone(), self.segment_size_bytes);
        let pool_name = (!self.pool.is_empty()).then(|| self.pool.remove(0));
        move |cancel: &AtomicBool| match &pool_name {
            Some(name) => prepare_recycled(&fs, &dir, name, sequence, size, cancel),
            None => prepare(&fs, &dir, sequence, size, cancel),
        }
    }

    /// The file for segment `sequence`. A background preparation is for this sequence or an
    /// earlier one (it went on while unwritten segments were started in its place): its file
    /// is taken whatever its temp name, since the rollover renames it from that name. One still
    /// running is not waited for: the segment starts in an unwritten file, and the
    /// preparation goes on for a later segment.
    fn take_prepared(&mut self, sequence: u64) -> std::io::Result<PreparedFile> {
        match self.prepared.take() {
            // Ready is set just before the thread returns: taking it then waits no longer than
            // that return (a write that saw it ready and sealed for it must get its file).
            Some(preparation) if preparation.is_ready() || preparation.is_finished() => {
                debug_assert!(preparation.sequence <= sequence, "prepared ahead of the log");
                preparation.wait()
            }
            Some(preparation) if self.live_segments < UNWAITED_ROLLOVER_MAX_SEGMENTS => {
                self.prepared = Some(preparation);
                prepare_unwritten(&self.fs, &self.dir, sequence)
            }
            Some(preparation) => preparation.wait(),
            // Inline: prepared here.
            None => self.preparation(sequence)(&AtomicBool::new(false)),
        }
    }

    /// Splits `ops` into records, each payload within the record limit.
    fn plan<'a>(&self, ops: &[Op<'a>]) -> Result<Plan<'a>> {
        let max = self.max_record_bytes as usize;
        let target = max.min(ENTRIES_RECORD_TARGET_BYTES);
        let mut records = Vec::new();
        for op in ops {
            match op {
                Op::Entries { group, entries, hard_state } => {
                    assert!(!entries.is_empty(), "an entries op is never empty");
                    let mut start = 0;
                    let mut len = ENTRIES_HEAD_LEN;
                    for (i, entry) in entries.iter().enumerate() {
                        let size = entry.encoded_len() as usize;
                        if ENTRIES_HEAD_LEN + size > max {
                            return Err(Error::contract(format!(
                                "entry {} encodes to {size} bytes, above max_record_bytes {max}",
                                entry.index
                            )));
                        }
                        // A record holds at least one entry; an entry above the target (and
                        // within `max`) goes alone.
                        if i > start && len + size > target {
                            let part = Op::Entries {
                                group: *group,
                                entries: &entries[start..i],
                                hard_state: None,
                            };
                            records.push((Part::Op(part), len));
                            start = i;
                            len = ENTRIES_HEAD_LEN;
                        }
                        len += size;
                    }
                    // The hard state goes in the last record, or in one of its own if that
                    // record would pass the limit with it.
                    let entries = &entries[start..];
                    match hard_state {
                        Some(hs) if len + HARD_STATE_LEN <= max => {
                            let part =
                                Op::Entries { group: *group, entries, hard_state: Some(*hs) };
                            records.push((Part::Op(part), len + HARD_STATE_LEN));
                        }
                        _ => {
                            let part = Op::Entries { group: *group, entries, hard_state: None };
                            records.push((Part::Op(part), len));
                            if let Some(hs) = hard_state {
                                let part = Op::HardState { group: *group, hard_state: *hs };
                                records.push((Part::Op(part), payload_len(Part::Op(part))));
                            }
                        }
                    }
                }
                Op::Checkpoint(groups) => plan_checkpoint(groups, max, &mut records),
                other => {
                    let len = payload_len(Part::Op(*other));
                    if len > max {
                        return Err(Error::contract(format!(
                            "a record of {len} bytes is above max_record_bytes {max}"
                        )));
                    }
                    records.push((Part::Op(*other), len));
                }
            }
        }
        let bytes = records.iter().map(|(_, len)| framed_len(*len) as u64).sum();
        Ok(Plan { records, bytes })
    }

    /// Writes `ops` as one buffer with one write call (in pieces for a large one, see
    /// [`EARLY_WRITE_BYTES`]), rolling over first if they do not fit.
    /// `checkpoint` builds the state before `ops`, written first in a new segment. Every record
    /// but the last carries [`FLAG_MORE`], so recovery applies the write whole or not at all.
    /// Returns where each run of entries went and, with `keep_writes`, the bytes written.
    pub fn write(
        &mut self,
        ops: &[Op<'_>],
        checkpoint: &dyn Fn() -> Vec<Checkpoint>,
        sealed: &mut Option<Sealed>,
    ) -> Result<Written, Failure> {
        let plan = self.plan(ops).map_err(Failure::Refused)?;
        // The state is built (it clones memberships) only for a rollover or a fresh segment.
        let mut rolled: Option<Vec<Checkpoint>> = None;
        let has_data = !self.active.fresh && self.active.write_offset > self.active.data_start;
        if has_data && self.active.write_offset + plan.bytes > self.segment_size_bytes {
            let state = checkpoint();
            *sealed = Some(self.roll()?);
            rolled = Some(state);
        }
        let start = if self.active.fresh { 0 } else { self.active.write_offset };
        let header_plan = if self.active.fresh {
            let groups = rolled.take().unwrap_or_else(checkpoint);
            let mut parts = Vec::new();
            plan_checkpoint(&groups, self.max_record_bytes as usize, &mut parts);
            let encoded: Vec<Vec<u8>> = parts
                .iter()
                .map(|(part, _)| {
                    let mut out = Vec::new();
                    encode_payload(*part, &mut out);
                    out
                })
                .collect();
            Some(encoded)
        } else {
            None
        };
        let header_bytes: u64 = header_plan.as_ref().map_or(0, |parts| {
            format::SEGMENT_HEADER_LEN as u64
                + parts.iter().map(|p| framed_len(p.len()) as u64).sum::<u64>()
        });
        // The margin keeps every offset within 32 bits.
        if start + header_bytes + plan.bytes + (1 << 20) >= MAX_SEGMENT_SPAN_BYTES {
            return Err(Failure::Refused(Error::contract(format!(
                "a batch of {} bytes does not fit in a segment",
                plan.bytes
            ))));
        }

        self.buf.clear();
        if self.keep_writes {
            // The buffer leaves with the write: size it exactly (the recycled end mark
            // included), so that the cache holds no spare capacity.
            let len = header_bytes + plan.bytes + FRAME_HEADER_LEN as u64;
            self.buf.reserve_exact(usize::try_from(len).expect("checked below 4 GiB"));
        }
        let sequence = u32::try_from(self.active.sequence).expect("sequences stay below 2^32");
        let mut prev_crc = self.active.prev_crc;
        let mut records = self.records;
        let durable = self.active.durable_offset;
        if let Some(parts) = &header_plan {
            let header = SegmentHeader {
                sequence: self.active.sequence,
                first_record: self.active.first_record,
                prev_crc,
                recycled: self.active.recycled,
            };
            self.buf.extend_from_slice(&header.encode());
            for (k, payload) in parts.iter().enumerate() {
                let flags = if k + 1 < parts.len() { FLAG_MORE } else { 0 };
                let offset = start + self.buf.len() as u64;
                if let Some(footer) = self.active.footer.as_mut() {
                    footer.push_payload(offset, flags != 0, RecordType::Checkpoint, payload);
                }
                prev_crc = append_record(
                    &mut self.buf,
                    RecordType::Checkpoint,
                    flags,
                    sequence,
                    prev_crc,
                    durable,
                    |out| out.extend_from_slice(payload),
                );
                records += 1;
            }
            self.active.data_start = self.buf.len() as u64;
        }
        let data_at = start + self.buf.len() as u64;
        let changes = plan.records.iter().any(|(part, _)| matches!(part, Part::Op(_)));
        let mut written = Vec::new();
        // The bytes of `buf` already handed to the kernel.
        let mut handed = 0;
        for (k, (part, payload_len)) in plan.records.iter().enumerate() {
            let offset = start + self.buf.len() as u64;
            let flags = if k + 1 < plan.records.len() { FLAG_MORE } else { 0 };
            let before = self.buf.len();
            prev_crc = append_record(
                &mut self.buf,
                part_type(part),
                flags,
                sequence,
                prev_crc,
                durable,
                |out| encode_payload(*part, out),
            );
            records += 1;
            debug_assert_eq!(
                self.buf.len() - before,
                framed_len(*payload_len),
                "plan matches encoding"
            );
            if let Some(footer) = self.active.footer.as_mut() {
                match part {
                    Part::Op(Op::Entries { group, entries, hard_state }) => footer.push_entries(
                        offset,
                        flags != 0,
                        *group,
                        entries,
                        hard_state.as_ref(),
                    ),
                    other => {
                        let payload = &self.buf
                            [before + FRAME_HEADER_LEN..before + FRAME_HEADER_LEN + *payload_len];
                        footer.push_payload(offset, flags != 0, part_type(other), payload);
                    }
                }
                if footer.len() > format::MAX_FOOTER_BYTES {
                    self.active.footer = None;
                }
            }
            if let Part::Op(Op::Entries { group, entries, .. }) = part {
                written.push(EntriesWritten {
                    group: *group,
                    sequence: self.active.sequence,
                    offset,
                    first_index: entries[0].index,
                    count: entries.len(),
                });
            }
            if self.early_writeback && self.buf.len() - handed >= EARLY_WRITE_BYTES {
                self.hand_over(start, handed, true).map_err(|e| Failure::Poison(e.into()))?;
                handed = self.buf.len();
            }
        }
        let written_len = self.buf.len();
        if self.active.recycled {
            // Overwritten by the next write; ends this one cleanly for a scan.
            self.buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        }
        // A new segment's first write is synced below at once: no writeback to start early.
        let writeback = self.early_writeback && header_plan.is_none() && !self.sync_running;
        if let Err(e) = self.hand_over(start, handed, writeback) {
            return Err(Failure::Poison(e.into()));
        }
        if header_plan.is_some() {
            // A new segment's first write (its header) is synced at once: later writes may share
            // its sector, and a power cut must never keep one of them beside a lost header,
            // which reads as a damaged header (row H7) though nothing durable was lost.
            let file = &self.active.file;
            self.counters
                .time_sync(self.slow_sync, || file.sync_data())
                .map_err(|e| Failure::Poison(e.into()))?;
            self.active.durable_offset = start + written_len as u64;
        }
        self.active.fresh = false;
        self.active.note_written(data_at, durable, changes);
        self.active.write_offset = start + written_len as u64;
        self.active.prev_crc = prev_crc;
        self.records = records;
        self.lsn += written_len as u64;
        let bytes = if self.keep_writes {
            let mut buf = std::mem::take(&mut self.buf);
            buf.truncate(written_len);
            Some((self.active.sequence, start, bytes::Bytes::from(buf)))
        } else {
            // Keep a large buffer from pinning memory after a rare huge batch.
            if self.buf.capacity() > 4 << 20 {
                self.buf = Vec::new();
            }
            None
        };
        Ok(Written { runs: written, bytes })
    }

    /// Writes `buf[handed..]` at `start + handed` and, with `writeback`, starts its writeback
    /// (see [`EARLY_WRITE_BYTES`]).
    fn hand_over(&self, start: u64, handed: usize, writeback: bool) -> std::io::Result<()> {
        let (piece, at) = (&self.buf[handed..], start + handed as u64);
        self.active.file.write_all_at(piece, at)?;
        if writeback { self.active.file.start_writeback(at, piece.len() as u64) } else { Ok(()) }
    }

    /// Whether the active segment is in unwritten blocks (a new log's first one, or a
    /// rollover's that did not wait: see [`Active::blocks_written`]), holding records, with the
    /// next segment's file prepared in the background and ready: the engine then seals it with
    /// [`Writer::seal_now`], so that appends go to written blocks from then on. A preparation
    /// that failed is never ready: the rollover that needs the file meets the failure.
    pub fn leaves_unwritten_segment(&self) -> bool {
        !self.active.blocks_written
            && !self.active.fresh
            && self.prepared.as_ref().is_some_and(Preparation::is_ready)
    }

    /// Seals the active segment now and starts the next one with its header and checkpoint
    /// (synced as every new segment's first write is), and syncs the directory for its name.
    /// Used after a write that changed a term or a vote: the change then has copies in the
    /// sealed segment's footer and in the new segment's checkpoint, in other sectors and
    /// another file, so no single damaged record or sector can take it (DESIGN.md §7, case 22).
    /// The returned `durable_lsn` covers everything written.
    pub fn seal_now(
        &mut self,
        checkpoint: &dyn Fn() -> Vec<Checkpoint>,
        sealed: &mut Option<Sealed>,
    ) -> Result<(), Failure> {
        let state = checkpoint();
        // Handed back even if what follows fails: the sealed segment holds the log's records.
        *sealed = Some(self.roll()?);
        let mut none = None;
        // A new segment's first write is synced as it is written.
        self.write(&[], &|| state.clone(), &mut none)?;
        debug_assert!(none.is_none(), "a fresh segment holds a checkpoint without rolling");
        debug_assert_eq!(self.active.durable_offset, self.active.write_offset);
        self.fs.sync_dir(&self.dir).map_err(|e| Failure::Poison(e.into()))?;
        self.durable_renames = self.renames;
        if let Some(sealed) = sealed.as_mut() {
            sealed.durable_lsn = self.lsn;
        }
        Ok(())
    }

    /// Seals the active segment (making it durable whole) and starts the next one.
    fn roll(&mut self) -> Result<Sealed, Failure> {
        let sequence = self.active.sequence + 1;
        // A segment that recovery would refuse is never created.
        if sequence > MAX_SEGMENT_SEQUENCE {
            return Err(Failure::Refused(sequence_exhausted(sequence)));
        }
        // Get the next file first: if that fails, nothing has changed.
        let prepared = self.take_prepared(sequence).map_err(|e| Failure::Refused(e.into()))?;
        let (sealed_size, zeroed_trailer) = self.write_footer()?;
        // A later segment must never be durable while an earlier one is not: recovery treats
        // every segment but the last as synced whole. That covers a zeroed old trailer too,
        // though every record may be durable already: if a power cut brought the trailer back,
        // open would replay the segment from a footer that lists only part of it (case 16).
        if zeroed_trailer || self.active.durable_offset < self.active.write_offset {
            let file = &self.active.file;
            self.counters
                .time_sync(self.slow_sync, || file.sync_data())
                .map_err(|e| Failure::Poison(e.into()))?;
            self.active.durable_offset = self.active.write_offset;
        }
        // The same for names: the rename that created the old segment (and any before it) must
        // be durable before the new one's, or a power cut could keep the new segment and lose
        // the old one (a gap). It also lets the caller count everything written so far as
        // durable: an acknowledgement must never depend on a rename no directory fsync covered.
        if self.renames > self.durable_renames {
            self.fs.sync_dir(&self.dir).map_err(|e| Failure::Poison(e.into()))?;
            self.durable_renames = self.renames;
        }
        let first_record = self.records;
        let name = format::segment_name(sequence, first_record);
        self.fs
            .rename(&prepared.temp, &self.dir.join(&name))
            .map_err(|e| Failure::Refused(e.into()))?;
        self.renames += 1;
        self.counters.segment(true);
        let next = Active {
            sequence,
            first_record,
            name,
            file: prepared.file,
            write_offset: 0,
            durable_offset: 0,
            prev_crc: self.active.prev_crc,
            fresh: true,
            data_start: 0,
            footer: Some(Footer::default()),
            recycled: prepared.recycled,
            unwitnessed: None,
            witness_at: None,
            blocks_written: prepared.blocks_written,
        };
        let old = std::mem::replace(&mut self.active, next);
        self.start_preparing();
        let size = sealed_size;
        Ok(Sealed {
            sequence: old.sequence,
            name: old.name,
            file: old.file,
            durable_lsn: self.lsn,
            size,
        })
    }

    /// Writes the active segment's footer record after its last record and the trailer that
    /// points at it at the end of the file, both synced with the segment when it is sealed.
    /// Returns the bytes the file takes, and whether it zeroed a trailer without moving the
    /// write offset (the seal must sync that too). A segment whose footer does not fit a record
    /// (or grew too large to keep) is sealed without one: open then reads it whole.
    fn write_footer(&mut self) -> Result<(u64, bool), Failure> {
        let file_len = self.active_size();
        // The file's length is what recovery finds the trailer by: it may exceed the
        // preallocated size (a large write extended it, or the option changed since).
        let Ok(file_len) = self.active.file.len().map(|len| len.max(file_len)) else {
            // Unknown: seal without a footer rather than guess where the trailer goes.
            return Ok((file_len, false));
        };
        let offset = self.active.write_offset;
        // The listing becomes the footer, grouped (`footer::build`).
        let footer = self.active.footer.take().and_then(|listing| footer::build(&listing, offset));
        let footer = footer.filter(|f| f.len() <= self.max_record_bytes as usize);
        let Some(footer) = footer else {
            // No footer: a trailer an earlier seal left (the segment was resumed after it) must
            // not point open at a footer that lists only part of the segment.
            // Only past the records: where a trailer can be (records written over one since
            // have replaced it).
            let at = file_len.saturating_sub(TRAILER_LEN as u64);
            if at >= self.active.write_offset {
                self.active
                    .file
                    .write_all_at(&[0u8; TRAILER_LEN], at)
                    .map_err(|e| Failure::Poison(e.into()))?;
                return Ok((file_len, true));
            }
            // The file ends inside the records (appends extended it): zeros after them, so that
            // its last bytes are never an entry's payload that happens to read as a trailer.
            let end = self.active.write_offset + (FRAME_HEADER_LEN + TRAILER_LEN) as u64;
            let zeros = [0u8; FRAME_HEADER_LEN + TRAILER_LEN];
            self.active
                .file
                .write_all_at(&zeros, self.active.write_offset)
                .map_err(|e| Failure::Poison(e.into()))?;
            return Ok((end, true));
        };
        let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + footer.len() + 8);
        let crc = append_record(
            &mut buf,
            RecordType::Footer,
            0,
            self.active.sequence as u32,
            self.active.prev_crc,
            self.active.durable_offset,
            |out| out.extend_from_slice(&footer),
        );
        let footer_len = buf.len();
        // A zeroed frame header after it (a recycled file holds older bytes there).
        buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        let end = offset + footer_len as u64;
        // At least a zeroed frame header between the footer and the trailer: a scan of the
        // segment then reads the end of its records as a clean end, not as a torn frame.
        let room = (FRAME_HEADER_LEN + TRAILER_LEN) as u64;
        // A new log's first segment, preallocated in unwritten blocks, is left as soon as a
        // prepared file is ready (or a vote seals it), often nearly empty: it gives back the
        // space after its trailer. Whichever of the cut, the footer and the trailer a crash
        // keeps, open finds the trailer at the file's end or reads the segment whole, where
        // the zeroed frame header after the footer is a clean end and a trailer left inside an
        // uncut file is no record (row R1); before the seal's fdatasync the segment is still
        // the newest, where a torn footer is a torn tail. (A rollover's unwritten segment is not
        // preallocated: its trailer extends it.)
        let shrink = !self.active.blocks_written && file_len > end + room;
        let len = if shrink { end + room } else { file_len.max(end + room) };
        if len >= MAX_SEGMENT_SPAN_BYTES {
            return Ok((file_len, false));
        }
        if shrink {
            self.active.file.set_len(len).map_err(|e| Failure::Poison(e.into()))?;
        }
        let trailer_at = len - TRAILER_LEN as u64;
        let trailer = Trailer {
            footer_offset: u32::try_from(offset).expect("checked below 4 GiB"),
            footer_len: u32::try_from(footer_len).expect("a record is below 4 GiB"),
        };
        let write = |bytes: &[u8], at: u64| {
            self.active.file.write_all_at(bytes, at).map_err(|e| Failure::Poison(e.into()))
        };
        write(&buf, offset)?;
        write(&trailer.encode(), trailer_at)?;
        let durable = self.active.durable_offset;
        self.active.note_written(offset, durable, false);
        self.active.write_offset = end;
        self.active.prev_crc = crc;
        self.records += 1;
        self.lsn += footer_len as u64;
        Ok((trailer_at + TRAILER_LEN as u64, false))
    }

    /// What a sync issued now would cover.
    pub fn sync_target(&self) -> SyncTarget {
        SyncTarget {
            file: self.active.file.clone(),
            sequence: self.active.sequence,
            offset: self.active.write_offset,
            lsn: self.lsn,
            renames: self.renames,
            durable_renames: self.durable_renames,
        }
    }

    /// Records that a sync of `target` returned successfully.
    pub fn mark_durable(&mut self, target: &SyncTarget) {
        // The sync covered the directory too whenever a rename was unsynced.
        assert!(target.renames <= self.renames, "cannot sync renames not made yet");
        self.durable_renames = self.durable_renames.max(target.renames);
        if self.active.sequence == target.sequence && target.offset > self.active.durable_offset {
            assert!(target.offset <= self.active.write_offset, "cannot sync past the written end");
            self.active.durable_offset = target.offset;
        }
    }

    /// Bytes the active segment's file takes at least: its preallocated size (a segment in
    /// unwritten blocks may have none), or more where writes extended it.
    pub fn active_size(&self) -> u64 {
        if self.active.blocks_written {
            self.active.write_offset.max(self.segment_size_bytes)
        } else {
            self.active.write_offset
        }
    }

    /// Whether every written byte of the active segment is durable, but for a witness that
    /// is its last record (nothing waits for one).
    pub fn is_durable(&self) -> bool {
        self.active.durable_offset >= self.active.witness_at.unwrap_or(self.active.write_offset)
    }

    /// Appends a witness record if a record that changes state lies in the durable part of the
    /// active segment and no record says it is durable (DESIGN.md §7, case 26): its frame's
    /// `durable` field is the durable end, so damage found there later is corruption, not a
    /// torn tail. Not synced (writeback or the next sync makes it durable), and not counted in
    /// `lsn`: nothing waits for it. Returns whether one was written.
    pub fn witness(&mut self) -> Result<bool, Failure> {
        let durable = self.active.durable_offset;
        if self.active.fresh || self.active.unwitnessed.is_none_or(|u| u >= durable) {
            return Ok(false);
        }
        let start = self.active.write_offset;
        assert!(durable <= start, "durable bytes {durable} past the written end {start}");
        let sequence = u32::try_from(self.active.sequence).expect("sequences stay below 2^32");
        self.buf.clear();
        let crc = append_record(
            &mut self.buf,
            RecordType::Witness,
            0,
            sequence,
            self.active.prev_crc,
            durable,
            |_| {},
        );
        let len = self.buf.len() as u64;
        if self.active.recycled {
            // As after every write: a clean end for a scan.
            self.buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        }
        if let Err(e) = self.active.file.write_all_at(&self.buf, start) {
            return Err(Failure::Poison(e.into()));
        }
        if let Some(footer) = self.active.footer.as_mut() {
            footer.push_payload(start, false, RecordType::Witness, &[]);
            if footer.len() > format::MAX_FOOTER_BYTES {
                self.active.footer = None;
            }
        }
        self.active.note_written(start, durable, false);
        self.active.witness_at = Some(start);
        self.active.write_offset = start + len;
        self.active.prev_crc = crc;
        self.records += 1;
        self.counters.witnessed(len);
        Ok(true)
    }
}

fn part_type(part: &Part<'_>) -> RecordType {
    match part {
        Part::Op(Op::Entries { hard_state: None, .. }) => RecordType::Entries,
        Part::Op(Op::Entries { hard_state: Some(_), .. }) => RecordType::EntriesHardState,
        Part::Op(Op::HardState { .. }) => RecordType::HardState,
        Part::Op(Op::Snapshot { .. }) => RecordType::Snapshot,
        Part::Op(Op::Compact { .. }) => RecordType::Compact,
        Part::Op(Op::Remove { .. }) => RecordType::Remove,
        Part::Op(Op::Checkpoint(_)) | Part::Checkpoint(_) => RecordType::Checkpoint,
    }
}

/// Bytes of `part`'s payload; fixed-size records are not encoded to find out (a batch has one
/// hard state per group).
fn payload_len(part: Part<'_>) -> usize {
    const U64: usize = size_of::<u64>();
    match part {
        Part::Op(Op::HardState { .. }) => U64 + HARD_STATE_LEN,
        Part::Op(Op::Compact { .. }) => 3 * U64,
        Part::Op(Op::Remove { .. }) => U64,
        Part::Op(Op::Entries { entries, hard_state, .. }) => {
            let len = format::entries_payload_len(entries, hard_state.is_some());
            usize::try_from(len).expect("checked by plan")
        }
        other => {
            let mut scratch = Vec::new();
            encode_payload(other, &mut scratch);
            scratch.len()
        }
    }
}

fn encode_payload(part: Part<'_>, out: &mut Vec<u8>) {
    match part {
        Part::Op(Op::Entries { group, entries, hard_state }) => {
            format::encode_entries_payload(out, group, hard_state.as_ref(), entries)
        }
        Part::Op(Op::HardState { group, hard_state }) => {
            Record::HardState { group, hard_state }.encode_payload(out)
        }
        Part::Op(Op::Snapshot { group, metadata, resets_log }) => {
            format::encode_snapshot_payload(out, group, metadata, resets_log)
        }
        Part::Op(Op::Compact { group, index, term }) => {
            Record::Compact { group, index, term }.encode_payload(out)
        }
        Part::Op(Op::Remove { group }) => Record::Remove { group }.encode_payload(out),
        Part::Op(Op::Checkpoint(groups)) | Part::Checkpoint(groups) => {
            format::encode_checkpoint_payload(out, groups)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::io::{CrashFs, OpEvent, OpKind};

    #[test]
    fn a_zero_fill_syncs_each_chunk_before_it_writes_the_next() {
        let fs = CrashFs::new();
        let shared: Fs = Arc::new(fs.clone());
        shared.create_dir_all(Path::new("/wal")).unwrap();
        let file = shared.create(Path::new("/wal/next.tmp")).unwrap();
        // Three whole chunks and a short one.
        let size = (3 << 20) + 5;
        file.allocate(size).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        fs.set_hook(Some(Arc::new(move |event: &OpEvent<'_>| {
            log.lock().unwrap().push(event.kind);
            Ok(())
        })));
        zero_fill(file.as_ref(), size, &AtomicBool::new(false)).unwrap();
        fs.set_hook(None);
        assert_eq!(*seen.lock().unwrap(), [OpKind::Write, OpKind::Sync].repeat(4));
        let bytes = fs.read_file(Path::new("/wal/next.tmp")).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
