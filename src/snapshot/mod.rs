//! The snapshot store: snapshot files in their own directory, written atomically (temp file,
//! fdatasync, rename, directory fsync) and streamed in both directions, so a snapshot larger than
//! memory can be built and installed in chunks.

pub mod format;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::{CorruptionKind, Error, Result};
use crate::io::{File, Fs};
use crate::types::{Snapshot, SnapshotMetadata};
use format::{Compression, HeaderError, SNAPSHOT_HEADER_LEN, SnapshotHeader};

/// Bytes buffered before a body write reaches the file.
const WRITE_BUFFER_BYTES: usize = 256 << 10;
/// Largest allocation made up front for a snapshot's data; more grows only as bytes really
/// arrive, so a forged length field cannot make a reader allocate.
const MAX_PREALLOCATION_BYTES: u64 = 64 << 10;

/// Numbers the temp files of snapshot writers. Process-wide, so that writers never share a temp
/// file even through two stores on one directory; another process is kept out of the directory
/// by the WAL's lock.
static NEXT_WRITER: AtomicU64 = AtomicU64::new(0);

/// One group's snapshot files in the snapshot directory (the directory holds every group's,
/// named by group: see [`format::snapshot_name`]).
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    fs: Fs,
    dir: PathBuf,
    group: u64,
}

/// A snapshot file found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// File name.
    pub name: String,
    /// Term in the name.
    pub term: u64,
    /// Index in the name.
    pub index: u64,
}

impl SnapshotStore {
    /// `group`'s store in `dir` (created durably if missing); leftover temp files of every
    /// group's writers are removed.
    pub fn open(fs: Fs, dir: &Path, group: u64) -> Result<SnapshotStore> {
        crate::io::create_dir_all_durable(fs.as_ref(), dir)?;
        for name in fs.list(dir)? {
            if name.ends_with(format::TEMP_SUFFIX) {
                // A snapshot whose writer never finished: never visible, never referenced.
                fs.remove_file(&dir.join(&name))?;
            }
        }
        Ok(SnapshotStore { fs, dir: dir.to_path_buf(), group })
    }

    /// `group`'s store in `dir` as it is: nothing is created, removed or locked. Reading works
    /// while another process has the storage open.
    pub fn open_existing(fs: Fs, dir: &Path, group: u64) -> SnapshotStore {
        SnapshotStore { fs, dir: dir.to_path_buf(), group }
    }

    /// The group whose files this store holds.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name of this group's snapshot `(term, index)`.
    pub fn name(&self, term: u64, index: u64) -> String {
        format::snapshot_name(self.group, term, index)
    }

    /// The finished snapshot files, oldest first (none when the directory does not exist yet).
    pub fn list(&self) -> Result<Vec<StoredSnapshot>> {
        let names = match self.fs.list(&self.dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut found: Vec<StoredSnapshot> = names
            .into_iter()
            .filter_map(|name| {
                let (group, term, index) = format::parse_snapshot_name(&name)?;
                (group == self.group).then_some(StoredSnapshot { name, term, index })
            })
            .collect();
        found.sort_by_key(|s| (s.index, s.term));
        Ok(found)
    }

    /// Removes every file of this group (snapshots, broken copies, temp files), durably: a
    /// removed group's.
    pub fn remove_all(&self) -> Result<()> {
        let names = match self.fs.list(&self.dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let prefix = format!("{:016x}-", self.group);
        let mut removed = false;
        for name in names.iter().filter(|n| n.starts_with(&prefix)) {
            self.fs.remove_file(&self.dir.join(name))?;
            removed = true;
        }
        if removed {
            self.fs.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Sets every finished snapshot file of the group aside (`*.snap` becomes
    /// `*.snap.removing`), durably: the first step of removing the group. From then on no file
    /// of the group looks committed or like an interrupted bootstrap, whatever a crash keeps of
    /// the removal; an open that finds the removal not durable puts the marked file back. A
    /// failed rename moves back the files already set aside.
    pub fn set_aside_all(&self) -> Result<()> {
        let listed = self.list()?;
        let aside = |name: &str| self.dir.join(format!("{name}{}", format::REMOVING_SUFFIX));
        // Bounded by the files listed.
        for (k, stored) in listed.iter().enumerate() {
            if let Err(e) = self.fs.rename(&self.dir.join(&stored.name), &aside(&stored.name)) {
                for done in &listed[..k] {
                    let _ = self.fs.rename(&aside(&done.name), &self.dir.join(&done.name));
                }
                return Err(e.into());
            }
        }
        if !listed.is_empty() {
            self.fs.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Removes a snapshot file (and makes the removal durable).
    pub fn remove(&self, name: &str) -> Result<()> {
        self.fs.remove_file(&self.dir.join(name))?;
        self.fs.sync_dir(&self.dir)?;
        Ok(())
    }

    /// Renames a damaged snapshot file to `*.broken`, out of the way but kept for inspection.
    pub fn mark_broken(&self, name: &str) -> Result<()> {
        let broken = format!("{name}{}", format::BROKEN_SUFFIX);
        self.fs.rename(&self.dir.join(name), &self.dir.join(broken))?;
        self.fs.sync_dir(&self.dir)?;
        Ok(())
    }

    /// Starts writing the snapshot `metadata` stands for, compressed at zstd `level` (0: stored
    /// as is). Nothing is visible until [`SnapshotFileWriter::finish`].
    pub fn begin(&self, metadata: SnapshotMetadata, level: i32) -> Result<SnapshotFileWriter> {
        let name = format::snapshot_name(self.group, metadata.term, metadata.index);
        // Its own temp file: a second writer of the same snapshot (a retried install, two
        // creates at one index) must not truncate, overwrite or remove this one's.
        let writer = NEXT_WRITER.fetch_add(1, Ordering::Relaxed);
        let temp = format::temp_name(self.group, metadata.term, metadata.index, writer);
        let file = self.fs.create(&self.dir.join(&temp))?;
        let compression = if level == 0 { Compression::None } else { Compression::Zstd };
        // The header is rewritten with the lengths and CRC at the end; its metadata part is final
        // now, so the body starts at a known offset.
        let header =
            SnapshotHeader { compression, data_len: 0, stored_len: 0, body_crc: 0, metadata };
        let header_len = header.encode().len() as u64;
        let sink = BodySink {
            file: file.clone(),
            offset: header_len,
            crc: crc32fast::Hasher::new(),
            buf: Vec::new(),
        };
        let body = match compression {
            Compression::None => Body::Plain(sink),
            Compression::Zstd => Body::Zstd(ZstdSink::new(sink, level)?),
        };
        Ok(SnapshotFileWriter {
            store: self.clone(),
            name,
            temp,
            file,
            header,
            header_len,
            body: Some(body),
            data_len: 0,
        })
    }

    /// Opens a streaming reader over the snapshot file `name`.
    pub fn reader(&self, name: &str) -> Result<SnapshotReader> {
        let corruption = |offset, kind| Error::Corruption {
            segment: PathBuf::from(format!("snap/{name}")),
            offset,
            kind,
        };
        let file = self.fs.open(&self.dir.join(name))?;
        let mut fixed = [0u8; SNAPSHOT_HEADER_LEN];
        if file.len()? < SNAPSHOT_HEADER_LEN as u64 {
            return Err(corruption(0, CorruptionKind::Torn));
        }
        file.read_exact_at(&mut fixed, 0)?;
        let meta_len =
            SnapshotHeader::meta_len(&fixed).map_err(|e| corruption(0, header_kind(e)))?;
        let mut head = vec![0u8; SNAPSHOT_HEADER_LEN + meta_len];
        file.read_exact_at(&mut head, 0).map_err(|_| corruption(0, CorruptionKind::Torn))?;
        let header = SnapshotHeader::decode(&head).map_err(|e| corruption(0, header_kind(e)))?;
        // The name is what the WAL's marker points at: a file holding another snapshot than its
        // name says (copied or renamed by hand, or forged) must not stand in for that one.
        if let Some((_, term, index)) = format::parse_snapshot_name(name) {
            let held = (header.metadata.term, header.metadata.index);
            if held != (term, index) {
                return Err(corruption(
                    0,
                    CorruptionKind::Malformed(format!(
                        "the file is named for snapshot (term {term}, index {index}) but holds \
                         (term {}, index {})",
                        held.0, held.1
                    )),
                ));
            }
        }
        let start = head.len() as u64;
        let end = start
            .checked_add(header.stored_len)
            .ok_or(corruption(0, CorruptionKind::BadLength(header.stored_len)))?;
        if file.len()? != end {
            return Err(corruption(start, CorruptionKind::BadLength(header.stored_len)));
        }
        let source = BodySource { file, offset: start, end, crc: crc32fast::Hasher::new() };
        let body = match header.compression {
            Compression::None => Decoded::Plain(source),
            Compression::Zstd => Decoded::Zstd(Box::new(ZstdBody::new(source)?)),
        };
        Ok(SnapshotReader {
            name: format!("snap/{name}"),
            body_offset: start,
            header,
            body,
            produced: 0,
            checked: false,
        })
    }

    /// Reads the whole snapshot file `name` into memory, checking it.
    pub fn read_all(&self, name: &str) -> Result<Snapshot> {
        let mut data = Vec::new();
        let metadata = self.read_into(name, &mut data)?;
        Ok(Snapshot { metadata, data: Bytes::from(data) })
    }

    /// Reads the data of the snapshot file `name` into `data`, checking it.
    fn read_into(&self, name: &str, data: &mut Vec<u8>) -> Result<SnapshotMetadata> {
        let mut reader = self.reader(name)?;
        data.reserve(reader.header.data_len.min(MAX_PREALLOCATION_BYTES) as usize);
        reader.read_to_end(data).map_err(io_to_error)?;
        Ok(reader.header.metadata.clone())
    }

    /// Reads the snapshot file `name` through to the end without keeping it, checking every byte.
    pub fn verify(&self, name: &str) -> Result<SnapshotMetadata> {
        let mut reader = self.reader(name)?;
        io::copy(&mut reader, &mut io::sink()).map_err(io_to_error)?;
        Ok(reader.header.metadata.clone())
    }
}

fn header_kind(e: HeaderError) -> CorruptionKind {
    match e {
        HeaderError::Short => CorruptionKind::Torn,
        HeaderError::BadMagic => CorruptionKind::BadMagic,
        HeaderError::Version(v) => CorruptionKind::UnsupportedVersion(v),
        HeaderError::Checksum => CorruptionKind::ChecksumMismatch,
        HeaderError::Malformed(what) => CorruptionKind::Malformed(what.to_string()),
    }
}

/// Turns an error from a `SnapshotReader` back into raftwal's error.
fn io_to_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return *e.into_inner().expect("checked").downcast::<Error>().expect("checked");
    }
    Error::Io(e)
}

/// Buffers body bytes, CRCs them and writes them at increasing offsets.
struct BodySink {
    file: Arc<dyn File>,
    offset: u64,
    crc: crc32fast::Hasher,
    buf: Vec<u8>,
}

impl BodySink {
    fn drain(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.offset)?;
        self.crc.update(&self.buf);
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Write for BodySink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.drain()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()
    }
}

enum Body {
    Plain(BodySink),
    Zstd(ZstdSink),
}

std::thread_local! {
    /// A zstd encoder kept per thread between snapshot writes, as [`SPARE_DECODER`] is for
    /// reads: creating one probes the CPU and allocates its tables anew, which for the small
    /// snapshots of many groups costs more than compressing them. At most one per thread, of
    /// at most [`SPARE_CODER_MAX_BYTES`].
    static SPARE_ENCODER: std::cell::RefCell<Option<zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_error(code: zstd_safe::ErrorCode) -> io::Error {
    io::Error::other(zstd_safe::get_error_name(code))
}

/// Compresses a snapshot's body into its file at `level`, with a window of at most
/// `1 << ZSTD_WINDOW_LOG_MAX` bytes (what readers accept).
struct ZstdSink {
    sink: BodySink,
    context: zstd_safe::CCtx<'static>,
    /// Compressed bytes go through here to the sink.
    out: Box<[u8]>,
}

/// Bytes of compressed output handed to the sink at a time.
const ZSTD_OUT_BYTES: usize = 16 << 10;

impl ZstdSink {
    fn new(sink: BodySink, level: i32) -> io::Result<ZstdSink> {
        // `try_with` fails only while the thread is being torn down: then a new encoder.
        let spare = SPARE_ENCODER.try_with(|spare| spare.borrow_mut().take()).ok().flatten();
        let mut context = match spare {
            Some(context) => context,
            None => zstd_safe::CCtx::try_create()
                .ok_or_else(|| io::Error::other("zstd: cannot allocate an encoder"))?,
        };
        context
            .set_parameter(zstd_safe::CParameter::CompressionLevel(level))
            .map_err(zstd_error)?;
        if level > format::ZSTD_MAX_LEVEL_WITHIN_WINDOW {
            context
                .set_parameter(zstd_safe::CParameter::WindowLog(format::ZSTD_WINDOW_LOG_MAX))
                .map_err(zstd_error)?;
        }
        Ok(ZstdSink { sink, context, out: vec![0; ZSTD_OUT_BYTES].into_boxed_slice() })
    }

    /// Runs one compression step over `input` with `directive`, handing what it produced to the
    /// sink. Returns zstd's count of bytes it still holds to flush (0: none).
    fn step(
        &mut self,
        input: &mut zstd_safe::InBuffer<'_>,
        directive: zstd_safe::zstd_sys::ZSTD_EndDirective,
    ) -> io::Result<usize> {
        let mut output = zstd_safe::OutBuffer::around(&mut self.out[..]);
        let held =
            self.context.compress_stream2(&mut output, input, directive).map_err(zstd_error)?;
        let produced = output.pos();
        self.sink.write_all(&self.out[..produced])?;
        Ok(held)
    }

    /// Flushes (or with `ZSTD_e_end`, ends the frame of) what zstd holds into the sink.
    fn drain(&mut self, directive: zstd_safe::zstd_sys::ZSTD_EndDirective) -> io::Result<()> {
        let mut empty = zstd_safe::InBuffer::around(&[]);
        // Bounded: each step hands the sink up to ZSTD_OUT_BYTES of what zstd holds, which
        // the input written so far bounds.
        while self.step(&mut empty, directive)? > 0 {}
        Ok(())
    }

    /// Ends the frame and returns the sink; the encoder becomes the thread's spare, reset, if
    /// it is small enough.
    fn finish(mut self) -> io::Result<BodySink> {
        self.drain(zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end)?;
        let ZstdSink { sink, mut context, .. } = self;
        if context.sizeof() <= SPARE_CODER_MAX_BYTES
            && context.reset(zstd_safe::ResetDirective::SessionAndParameters).is_ok()
        {
            let _ = SPARE_ENCODER.try_with(|spare| *spare.borrow_mut() = Some(context));
        }
        Ok(sink)
    }
}

impl Write for ZstdSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut input = zstd_safe::InBuffer::around(data);
        // Bounded: each step takes input into zstd or hands output to the sink.
        while input.pos() < data.len() {
            self.step(&mut input, zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_continue)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain(zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush)?;
        self.sink.flush()
    }
}

/// Streams a snapshot into a temp file; [`SnapshotFileWriter::finish`] makes it durable and
/// visible under its final name.
pub struct SnapshotFileWriter {
    store: SnapshotStore,
    name: String,
    temp: String,
    file: Arc<dyn File>,
    header: SnapshotHeader,
    header_len: u64,
    body: Option<Body>,
    data_len: u64,
}

impl std::fmt::Debug for SnapshotFileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFileWriter")
            .field("name", &self.name)
            .field("data_len", &self.data_len)
            .finish()
    }
}

impl Write for SnapshotFileWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = match self.body.as_mut().expect("written after finish") {
            Body::Plain(sink) => sink.write(data)?,
            Body::Zstd(encoder) => encoder.write(data)?,
        };
        self.data_len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.body.as_mut().expect("flushed after finish") {
            Body::Plain(sink) => sink.flush(),
            Body::Zstd(encoder) => encoder.flush(),
        }
    }
}

impl SnapshotFileWriter {
    /// The metadata this snapshot is written for.
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.header.metadata
    }

    /// Completes the file: header with lengths and CRC, fdatasync, rename to the final name,
    /// directory fsync. Returns the final file name.
    pub fn finish(mut self) -> Result<String> {
        let mut sink = match self.body.take().expect("finished once") {
            Body::Plain(sink) => sink,
            Body::Zstd(encoder) => encoder.finish()?,
        };
        sink.flush()?;
        self.header.data_len = self.data_len;
        self.header.stored_len = sink.offset - self.header_len;
        self.header.body_crc = sink.crc.clone().finalize();
        let header = self.header.encode();
        assert_eq!(header.len() as u64, self.header_len, "the header's size is fixed at begin");
        self.file.write_all_at(&header, 0)?;
        self.file.sync_data()?;
        let dir = &self.store.dir;
        self.store.fs.rename(&dir.join(&self.temp), &dir.join(&self.name))?;
        self.store.fs.sync_dir(dir)?;
        Ok(std::mem::take(&mut self.name))
    }
}

impl Drop for SnapshotFileWriter {
    fn drop(&mut self) {
        if self.body.is_some() {
            // Abandoned before finish: the temp file is garbage (open would remove it anyway).
            let _ = self.store.fs.remove_file(&self.store.dir.join(&self.temp));
        }
    }
}

/// Reads the stored body in order, CRCing every byte.
struct BodySource {
    file: Arc<dyn File>,
    offset: u64,
    end: u64,
    crc: crc32fast::Hasher,
}

impl Read for BodySource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.offset) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        self.crc.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// Why a zstd body could not be decoded.
enum ZstdFailure {
    /// Reading the stored bytes failed.
    Io(io::Error),
    /// The stored bytes are not a zstd stream raftwal writes.
    Damaged,
}

std::thread_local! {
    /// A zstd decoder kept per thread between snapshot reads. Creating one costs more than
    /// decoding a small snapshot (it probes the CPU, which traps in a virtual machine, and
    /// allocates its buffers anew): reading every group's snapshot after an open spent a fifth
    /// of its time there. At most one per thread, of at most [`SPARE_CODER_MAX_BYTES`], kept for the
    /// thread's life.
    static SPARE_DECODER: std::cell::RefCell<Option<zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A zstd decoder with no session and the window limit set: the thread's spare, or a new one.
fn take_decoder() -> io::Result<zstd_safe::DCtx<'static>> {
    // `try_with` fails only while the thread is being torn down: then a new decoder.
    let spare = SPARE_DECODER.try_with(|spare| spare.borrow_mut().take()).ok().flatten();
    let mut context = match spare {
        Some(context) => context,
        None => zstd_safe::DCtx::try_create()
            .ok_or_else(|| io::Error::other("zstd: cannot allocate a decoder"))?,
    };
    context
        .set_parameter(zstd_safe::DParameter::WindowLogMax(format::ZSTD_WINDOW_LOG_MAX))
        .map_err(|code| io::Error::other(zstd_safe::get_error_name(code)))?;
    Ok(context)
}

/// The largest zstd decoder or encoder kept as a thread's spare. After use, a decoder holds
/// its window and block buffers (about 1 MiB for what level 1 writes, 2.5 MiB for level 3:
/// frames streamed without a content size get the level's full window) and an encoder its
/// tables (1.4 MiB at level 1, 3.7 MiB at level 3, the default; 15 MiB at level 9). Larger
/// ones are freed: their creation is small beside the work of such a level or window, and a
/// thread should not hold them for a snapshot it handled once.
const SPARE_CODER_MAX_BYTES: usize = 4 << 20;

/// Gives a decoder back as the thread's spare, its session and parameters reset (a damaged
/// stream it stopped in leaves nothing behind); one that cannot be reset, or that holds more
/// than [`SPARE_CODER_MAX_BYTES`], is freed.
fn return_decoder(mut context: zstd_safe::DCtx<'static>) {
    if context.sizeof() <= SPARE_CODER_MAX_BYTES
        && context.reset(zstd_safe::ResetDirective::SessionAndParameters).is_ok()
    {
        let _ = SPARE_DECODER.try_with(|spare| *spare.borrow_mut() = Some(context));
    }
}

/// Decodes a zstd body, with a window of at most `1 << ZSTD_WINDOW_LOG_MAX` bytes: the
/// decoder's memory is bounded whatever the frames declare.
struct ZstdBody {
    source: BodySource,
    /// `None` only in `drop`, which gives it back to the thread.
    context: Option<zstd_safe::DCtx<'static>>,
    /// Stored bytes read but not yet decoded: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The source has delivered its last byte.
    source_done: bool,
    /// The last decoding step ended a frame.
    frame_done: bool,
}

impl ZstdBody {
    fn new(source: BodySource) -> io::Result<ZstdBody> {
        let stored = source.end - source.offset;
        Ok(ZstdBody {
            source,
            context: Some(take_decoder()?),
            // No larger than the stored body: a small snapshot need not zero zstd's 128 KiB.
            input: vec![0; stored.clamp(1, zstd_safe::DCtx::in_size() as u64) as usize]
                .into_boxed_slice(),
            start: 0,
            end: 0,
            source_done: false,
            // An empty body holds no frame to finish.
            frame_done: true,
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> std::result::Result<usize, ZstdFailure> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Bounded: each pass returns, or reads stored bytes, or decodes some of them; the stored
        // length bounds both.
        loop {
            if self.start == self.end && !self.source_done {
                let n = self.source.read(&mut self.input).map_err(ZstdFailure::Io)?;
                self.source_done = n == 0;
                (self.start, self.end) = (0, n);
            }
            let mut output = zstd_safe::OutBuffer::around(&mut *buf);
            let mut input = zstd_safe::InBuffer::around(&self.input[self.start..self.end]);
            let context = self.context.as_mut().expect("taken only in drop");
            let hint = context
                .decompress_stream(&mut output, &mut input)
                .map_err(|_| ZstdFailure::Damaged)?;
            let (consumed, produced) = (input.pos(), output.pos());
            self.start += consumed;
            if hint == 0 {
                self.frame_done = true;
            } else if consumed > 0 || produced > 0 {
                self.frame_done = false;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if self.start == self.end && self.source_done {
                // The stored bytes end: complete only if the last frame did.
                return if self.frame_done { Ok(0) } else { Err(ZstdFailure::Damaged) };
            }
            if consumed == 0 && self.start < self.end {
                // Input and room for output, and no progress: not a stream zstd can decode.
                return Err(ZstdFailure::Damaged);
            }
        }
    }

    /// Bytes the decoder holds (its window and buffers).
    #[cfg(test)]
    fn memory_bytes(&self) -> usize {
        self.context.as_ref().map_or(0, |context| context.sizeof()) + self.input.len()
    }
}

impl Drop for ZstdBody {
    fn drop(&mut self) {
        if let Some(context) = self.context.take() {
            return_decoder(context);
        }
    }
}

enum Decoded {
    Plain(BodySource),
    Zstd(Box<ZstdBody>),
}

/// Streams a snapshot's data out of its file. The body's CRC and lengths are checked when the
/// end is reached: a reader that returns `Ok(0)` has delivered exactly the bytes written, and one
/// whose file is damaged returns an error (`InvalidData`) instead of its last bytes.
pub struct SnapshotReader {
    name: String,
    body_offset: u64,
    header: SnapshotHeader,
    body: Decoded,
    produced: u64,
    checked: bool,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("name", &self.name)
            .field("metadata", &self.header.metadata)
            .finish()
    }
}

impl SnapshotReader {
    /// What the snapshot stands for.
    pub fn metadata(&self) -> &SnapshotMetadata {
        &self.header.metadata
    }

    /// Uncompressed bytes of data the reader will deliver.
    pub fn data_len(&self) -> u64 {
        self.header.data_len
    }

    fn damaged(&self, kind: CorruptionKind) -> io::Error {
        let error = Error::Corruption {
            segment: PathBuf::from(&self.name),
            offset: self.body_offset,
            kind,
        };
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    fn source(&mut self) -> &mut BodySource {
        match &mut self.body {
            Decoded::Plain(source) => source,
            Decoded::Zstd(decoder) => &mut decoder.source,
        }
    }

    /// At the end of the data: every stored byte read, lengths and CRC as the header says.
    fn check_end(&mut self) -> io::Result<()> {
        let mut rest = [0u8; 4096];
        // Bounded by the stored length: each read advances towards its end.
        while self.source().read(&mut rest)? > 0 {}
        let stored_crc = self.source().crc.clone().finalize();
        if self.produced != self.header.data_len {
            return Err(self.damaged(CorruptionKind::BadLength(self.produced)));
        }
        if stored_crc != self.header.body_crc {
            return Err(self.damaged(CorruptionKind::ChecksumMismatch));
        }
        self.checked = true;
        Ok(())
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.checked || buf.is_empty() {
            return Ok(0);
        }
        let n = match &mut self.body {
            Decoded::Plain(source) => source.read(buf)?,
            Decoded::Zstd(decoder) => match decoder.read(buf) {
                Ok(n) => n,
                Err(ZstdFailure::Io(e)) => return Err(e),
                // A stream that does not decode (or declares a window beyond the limit) is
                // damage, whatever the decoder calls it.
                Err(ZstdFailure::Damaged) => {
                    return Err(self.damaged(CorruptionKind::ChecksumMismatch));
                }
            },
        };
        self.produced += n as u64;
        if self.produced > self.header.data_len {
            return Err(self.damaged(CorruptionKind::BadLength(self.produced)));
        }
        if n == 0 {
            self.check_end()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{FileSystem, RealFs};
    use crate::types::ConfState;

    fn store(dir: &Path) -> SnapshotStore {
        SnapshotStore::open(Arc::new(RealFs), dir, 0).unwrap()
    }

    fn metadata() -> SnapshotMetadata {
        SnapshotMetadata {
            index: 9,
            term: 2,
            conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
        }
    }

    /// Writes a snapshot file whose header says `data_len` and whose body is `body` as stored,
    /// with a correct CRC: what a forger (or a buggy writer) can produce.
    fn forge(dir: &Path, compression: Compression, data_len: u64, body: &[u8]) -> String {
        let header = SnapshotHeader {
            compression,
            data_len,
            stored_len: body.len() as u64,
            body_crc: crc32fast::hash(body),
            metadata: metadata(),
        };
        let mut bytes = header.encode();
        bytes.extend_from_slice(body);
        let name = format::snapshot_name(0, 2, 9);
        std::fs::write(dir.join(&name), bytes).unwrap();
        name
    }

    fn is_corruption(result: &Result<SnapshotMetadata>) -> bool {
        matches!(result, Err(Error::Corruption { .. }))
    }

    #[test]
    fn open_removes_the_temp_files_of_every_unfinished_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let (mut a, mut b) =
            (store.begin(metadata(), 3).unwrap(), store.begin(metadata(), 0).unwrap());
        a.write_all(b"one").unwrap();
        b.write_all(b"two").unwrap();
        // A crash: neither finishes nor cleans up.
        std::mem::forget(a);
        std::mem::forget(b);
        let temps = |dir: &Path| {
            let names = RealFs.list(dir).unwrap();
            names.into_iter().filter(|n| n.ends_with(format::TEMP_SUFFIX)).count()
        };
        assert_eq!(temps(tmp.path()), 2, "one temp file per writer");
        let store = self::store(tmp.path());
        assert_eq!(temps(tmp.path()), 0);
        assert_eq!(store.list().unwrap(), Vec::new());
    }

    #[test]
    fn a_forged_data_len_allocates_only_what_the_body_delivers() {
        let tmp = tempfile::tempdir().unwrap();
        let body = zstd::bulk::compress(b"tiny", 3).unwrap();
        let name = forge(tmp.path(), Compression::Zstd, 1 << 40, &body);
        let mut data = Vec::new();
        let result = store(tmp.path()).read_into(&name, &mut data);
        assert!(is_corruption(&result), "{result:?}");
        assert!(data.capacity() <= 64 << 10, "allocated {} bytes for 4", data.capacity());
    }

    #[test]
    fn a_zstd_body_longer_than_data_len_is_corruption_before_it_is_all_read() {
        let tmp = tempfile::tempdir().unwrap();
        let body = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
        let name = forge(tmp.path(), Compression::Zstd, 10, &body);
        let mut reader = store(tmp.path()).reader(&name).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let error = reader.read(&mut buf).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(reader.produced <= buf.len() as u64, "stopped at the first read past data_len");
    }

    /// A zstd frame of one raw block holding `payload`, whose header declares a window of
    /// `1 << window_log` bytes (RFC 8878, 3.1.1).
    fn frame_with_window(window_log: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD];
        // Frame header descriptor: no content size, not single-segment, no checksum, no
        // dictionary; then the window descriptor (exponent above 2^10, mantissa 0).
        frame.push(0);
        frame.push(((window_log - 10) << 3) as u8);
        // Block header: last block, raw, `payload.len()` bytes.
        let block = 1 | (payload.len() as u32) << 3;
        frame.extend_from_slice(&block.to_le_bytes()[..3]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn a_zstd_frame_declaring_a_huge_window_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        // The frame is well formed: a window within the limit decodes.
        let name = forge(tmp.path(), Compression::Zstd, 5, &frame_with_window(20, b"hello"));
        assert_eq!(store.read_all(&name).unwrap().data, Bytes::from_static(b"hello"));
        // 2^27 bytes: zstd's own default limit, far above what raftwal's writers use.
        let name = forge(tmp.path(), Compression::Zstd, 5, &frame_with_window(27, b"hello"));
        let mut data = Vec::new();
        let result = store.read_into(&name, &mut data);
        assert!(is_corruption(&result), "{result:?}");
        // Refused before its window is allocated (measured on a new decoder: the thread's
        // spare holds the buffers of the read above).
        SPARE_DECODER.with(|spare| spare.borrow_mut().take());
        let mut reader = store.reader(&name).unwrap();
        let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let Decoded::Zstd(decoder) = &reader.body else { panic!("a zstd body") };
        assert!(decoder.memory_bytes() < 1 << 20, "decoder holds {} bytes", decoder.memory_bytes());
        // At the limit, the window is allocated and bounded by it.
        let limit = format::ZSTD_WINDOW_LOG_MAX;
        let name = forge(tmp.path(), Compression::Zstd, 5, &frame_with_window(limit, b"hello"));
        let mut reader = store.reader(&name).unwrap();
        assert_eq!(reader.read_to_end(&mut Vec::new()).unwrap(), 5);
        let Decoded::Zstd(decoder) = &reader.body else { panic!("a zstd body") };
        let held = decoder.memory_bytes();
        assert!(held < (1 << limit) + (2 << 20), "decoder holds {held} bytes");
    }

    #[test]
    fn every_compression_level_writes_a_window_readers_accept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let data: Vec<u8> =
            (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for level in [1, 3, format::ZSTD_MAX_LEVEL_WITHIN_WINDOW, 20, 22] {
            let mut writer = store.begin(metadata(), level).unwrap();
            writer.write_all(&data).unwrap();
            let name = writer.finish().unwrap();
            let snapshot = store.read_all(&name).unwrap();
            assert!(snapshot.data == data, "level {level} reads back");
        }
    }

    /// The thread's spare decoder, by its address (to tell reuse from a new one), and its size.
    fn spare_decoder() -> Option<(usize, usize)> {
        SPARE_DECODER.with(|spare| {
            spare.borrow().as_ref().map(|context| {
                (context as *const zstd_safe::DCtx<'static> as usize, context.sizeof())
            })
        })
    }

    #[test]
    fn a_decoder_is_reused_after_a_damaged_stream_and_decodes_the_next_snapshot_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let good = forge(tmp.path(), Compression::Zstd, data.len() as u64, &frame);
        assert!(store.read_all(&good).unwrap().data == data);
        let Some((kept, _)) = spare_decoder() else { panic!("the decoder is kept") };
        // A stream cut inside its frame leaves the decoder mid-frame; reset, it is reused.
        let mut cut = frame.clone();
        cut.truncate(frame.len() / 2);
        let cut_name = format::snapshot_name(0, 2, 10);
        let header = SnapshotHeader {
            compression: Compression::Zstd,
            data_len: data.len() as u64,
            stored_len: cut.len() as u64,
            body_crc: crc32fast::hash(&cut),
            metadata: SnapshotMetadata { index: 10, ..metadata() },
        };
        let mut bytes = header.encode();
        bytes.extend_from_slice(&cut);
        std::fs::write(tmp.path().join(&cut_name), bytes).unwrap();
        assert!(is_corruption(&store.verify(&cut_name)));
        assert!(spare_decoder().is_some(), "kept after a damaged stream");
        assert!(store.read_all(&good).unwrap().data == data, "the next read is whole");
        assert_eq!(spare_decoder().map(|(at, _)| at), Some(kept), "the same decoder");
    }

    #[test]
    fn an_encoder_is_reused_and_every_snapshot_it_writes_reads_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let spare = || {
            SPARE_ENCODER.with(|spare| {
                spare.borrow().as_ref().map(|c| c as *const zstd_safe::CCtx<'static> as usize)
            })
        };
        let mut kept = None;
        for index in 1..=3u64 {
            let data: Vec<u8> = (0..50_000u64).map(|i| (i * index % 253) as u8).collect();
            let md = SnapshotMetadata { index, ..metadata() };
            let mut writer = store.begin(md.clone(), 3).unwrap();
            writer.write_all(&data[..20_000]).unwrap();
            // A flush mid-stream ends a block, not the frame.
            writer.flush().unwrap();
            writer.write_all(&data[20_000..]).unwrap();
            let name = writer.finish().unwrap();
            let snapshot = store.read_all(&name).unwrap();
            assert!(snapshot.data == data && snapshot.metadata == md, "snapshot {index}");
            let now = spare();
            assert!(now.is_some(), "the encoder is kept after snapshot {index}");
            assert!(kept.is_none() || kept == now, "the same encoder");
            kept = now;
        }
        // A writer dropped mid-stream takes its encoder with it; the next one starts clean.
        let mut abandoned = store.begin(SnapshotMetadata { index: 7, ..metadata() }, 3).unwrap();
        abandoned.write_all(&[1u8; 10_000]).unwrap();
        drop(abandoned);
        let mut writer = store.begin(SnapshotMetadata { index: 8, ..metadata() }, 3).unwrap();
        writer.write_all(b"after an abandoned one").unwrap();
        let name = writer.finish().unwrap();
        assert_eq!(
            store.read_all(&name).unwrap().data,
            Bytes::from_static(b"after an abandoned one")
        );
    }

    #[test]
    fn a_decoder_that_grew_a_large_window_is_not_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let limit = format::ZSTD_WINDOW_LOG_MAX;
        let data = vec![7u8; 2 << limit];
        let name = forge(
            tmp.path(),
            Compression::Zstd,
            data.len() as u64,
            &frame_with_window(limit, &data[..100_000]),
        );
        // The body is shorter than data_len says: corruption, after the window was allocated.
        assert!(is_corruption(&store.verify(&name)));
        if let Some((_, size)) = spare_decoder() {
            assert!(size < 1 << limit, "a spare of {size} bytes was kept");
        }
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let name = forge(tmp.path(), Compression::Zstd, data.len() as u64, &frame);
        assert!(store.read_all(&name).unwrap().data == data);
        if let Some((_, size)) = spare_decoder() {
            assert!(size < 1 << limit, "a spare of {size} bytes was kept");
        }
    }

    #[test]
    fn a_zstd_body_cut_at_a_frame_boundary_or_inside_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let frame = zstd::bulk::compress(&[5u8; 1000], 3).unwrap();
        // Inside the frame: decoding never ends it.
        let name = forge(tmp.path(), Compression::Zstd, 1000, &frame[..frame.len() - 2]);
        assert!(is_corruption(&store(tmp.path()).verify(&name)));
        // Bytes after the frame that are not another frame.
        let mut trailing = frame.clone();
        trailing.extend_from_slice(b"junk");
        let name = forge(tmp.path(), Compression::Zstd, 1000, &trailing);
        assert!(is_corruption(&store(tmp.path()).verify(&name)));
        // Whole: it reads.
        let name = forge(tmp.path(), Compression::Zstd, 1000, &frame);
        assert_eq!(store(tmp.path()).read_all(&name).unwrap().data.len(), 1000);
    }
}
