//! The snapshot store: snapshot files in their own directory, written atomically (temp file,
//! fdatasync, rename, directory fsync) and streamed in both directions, so a snapshot larger than
//! memory can be built and installed in chunks.

pub mod format;

use std::io::{self, BufReader, Read, Write};
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
/// Largest allocation made up front for a snapshot's data; more grows as bytes really arrive, so a
/// forged length field cannot make a reader allocate.
const MAX_PREALLOCATION_BYTES: u64 = 64 << 20;

/// Numbers the temp files of snapshot writers. Process-wide, so that writers never share a temp
/// file even through two stores on one directory; another process is kept out of the directory
/// by the WAL's lock.
static NEXT_WRITER: AtomicU64 = AtomicU64::new(0);

/// The snapshot directory.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    fs: Fs,
    dir: PathBuf,
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
    /// The store in `dir` (created durably if missing); leftover temp files (of every writer)
    /// are removed.
    pub fn open(fs: Fs, dir: &Path) -> Result<SnapshotStore> {
        crate::io::create_dir_all_durable(fs.as_ref(), dir)?;
        for name in fs.list(dir)? {
            if name.ends_with(format::TEMP_SUFFIX) {
                // A snapshot whose writer never finished: never visible, never referenced.
                fs.remove_file(&dir.join(&name))?;
            }
        }
        Ok(SnapshotStore { fs, dir: dir.to_path_buf() })
    }

    /// The store in `dir` as it is, for inspection: nothing is created, removed or locked.
    /// Reading works while another process has the storage open.
    pub fn open_existing(fs: Fs, dir: &Path) -> SnapshotStore {
        SnapshotStore { fs, dir: dir.to_path_buf() }
    }

    /// The finished snapshot files, oldest first.
    pub fn list(&self) -> Result<Vec<StoredSnapshot>> {
        let mut found: Vec<StoredSnapshot> = self
            .fs
            .list(&self.dir)?
            .into_iter()
            .filter_map(|name| {
                let (term, index) = format::parse_snapshot_name(&name)?;
                Some(StoredSnapshot { name, term, index })
            })
            .collect();
        found.sort_by_key(|s| (s.index, s.term));
        Ok(found)
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
        let name = format::snapshot_name(metadata.term, metadata.index);
        // Its own temp file: a second writer of the same snapshot (a retried install, two
        // creates at one index) must not truncate, overwrite or remove this one's.
        let writer = NEXT_WRITER.fetch_add(1, Ordering::Relaxed);
        let temp = format::temp_name(metadata.term, metadata.index, writer);
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
            Compression::Zstd => Body::Zstd(zstd::stream::write::Encoder::new(sink, level)?),
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
            Compression::Zstd => Decoded::Zstd(Box::new(zstd::stream::read::Decoder::new(source)?)),
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
        let mut reader = self.reader(name)?;
        let mut data =
            Vec::with_capacity(reader.header.data_len.min(MAX_PREALLOCATION_BYTES) as usize);
        reader.read_to_end(&mut data).map_err(io_to_error)?;
        Ok(Snapshot { metadata: reader.header.metadata.clone(), data: Bytes::from(data) })
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
    Zstd(zstd::stream::write::Encoder<'static, BodySink>),
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

enum Decoded {
    Plain(BodySource),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<BodySource>>>),
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
            Decoded::Zstd(decoder) => decoder.get_mut().get_mut(),
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
                // A stream that does not decode is damage, whatever the decoder calls it.
                Err(_) => return Err(self.damaged(CorruptionKind::ChecksumMismatch)),
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
        SnapshotStore::open(Arc::new(RealFs), dir).unwrap()
    }

    fn metadata() -> SnapshotMetadata {
        SnapshotMetadata {
            index: 9,
            term: 2,
            conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
        }
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
}
