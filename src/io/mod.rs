//! The I/O seam: every file and directory operation of the WAL and the snapshot store goes
//! through [`FileSystem`] and [`File`], so that tests, fuzz targets and benches can swap the real
//! file system ([`RealFs`]) for one that simulates power cuts and injects faults
//! (`CrashFs`, behind the `testing` feature: an in-memory file system that keeps each file's and
//! each directory's durable image apart from its volatile one, turns into what a power cut could
//! leave on `crash(seed)`, and fails chosen operations with EIO, ENOSPC, short writes or a halt).
//!
//! The traits promise only what POSIX promises: a write is durable after `sync_data` on its file;
//! a create, rename or remove is durable after `sync_dir` on its directory. Code above this seam
//! must never rely on more.
//!
//! Files are read with positional reads only, never memory-mapped: a mapped file that another
//! program truncates, or a sector that fails to read, would kill the process with SIGBUS
//! instead of returning an error.

#[cfg(any(test, feature = "testing"))]
mod crash;
#[cfg(any(test, feature = "testing"))]
#[allow(unsafe_code)] // A GlobalAlloc must be unsafe to implement; see its SAFETY comments.
mod limit_alloc;
mod real;

use std::any::Any;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

#[cfg(any(test, feature = "testing"))]
pub use crash::{CrashFs, Fault, FaultKind, Hook, OpEvent, OpKind};
#[cfg(any(test, feature = "testing"))]
pub use limit_alloc::LimitedAlloc;
pub use real::RealFs;

/// Upper bound on the calls `write_all_at`/`read_exact_at` make for one buffer: a file system that
/// keeps returning short counts is broken, and a loop must not spin on it forever.
const MAX_PARTIAL_IO_CALLS: usize = 1024;

/// An open file, readable and writable at explicit offsets (no cursor), shareable across threads.
#[allow(clippy::len_without_is_empty)] // A file's length is a size, not a collection's.
pub trait File: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes up to `buf.len()` bytes at `offset`, returning how many were written.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;

    /// Makes every write to this file durable, with the metadata needed to read it back
    /// (`fdatasync`). After an error the state of the unsynced writes is unknown.
    fn sync_data(&self) -> io::Result<()>;

    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reserves disk space so that the file is at least `len` bytes long, zero-filled, and writes
    /// below `len` cannot fail for lack of space.
    fn allocate(&self, len: u64) -> io::Result<()>;

    /// Starts writing `[offset, offset + len)` to the disk without waiting for it: a hint that
    /// makes a later `sync_data` shorter, and promises nothing about durability. Files that
    /// cannot start writeback early do nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Writes all of `buf` at `offset`, continuing after short writes.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        for _ in 0..MAX_PARTIAL_IO_CALLS {
            if buf.is_empty() {
                return Ok(());
            }
            match self.write_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if buf.is_empty() { Ok(()) } else { Err(io::ErrorKind::WriteZero.into()) }
    }

    /// Fills `buf` from `offset` as far as the file goes, continuing after short reads, and
    /// returns the bytes read: fewer than `buf.len()` only at the end of the file.
    fn read_up_to_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        for _ in 0..MAX_PARTIAL_IO_CALLS {
            if filled == buf.len() {
                return Ok(filled);
            }
            match self.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => return Ok(filled),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == buf.len() { Ok(filled) } else { Err(io::ErrorKind::UnexpectedEof.into()) }
    }

    /// Fills all of `buf` from `offset`; reaching the end of the file first is `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.read_up_to_at(buf, offset)? == buf.len() {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }
}

/// Holds a directory's lock until dropped.
pub struct DirLock(#[allow(dead_code)] Box<dyn Any + Send + Sync>);

impl DirLock {
    /// Wraps whatever keeps the lock held (an open locked file, a registration).
    pub fn new(holder: impl Any + Send + Sync) -> DirLock {
        DirLock(Box::new(holder))
    }
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirLock")
    }
}

/// Directory and file operations, by path.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents (not made durable: call `sync_dir` on the parent).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn File>>;

    /// Creates `path` empty (truncating any file already there) for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>>;

    /// Renames `from` to `to`, replacing `to` atomically if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// The names of the regular files in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Makes the creates, renames and removes done in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Takes the exclusive lock on the lock file at `path` (creating it), or `None` when another
    /// holder has it. The lock is held until the returned guard is dropped.
    fn try_lock(&self, path: &Path) -> io::Result<Option<DirLock>>;
}

/// A shared handle on a file system.
pub type Fs = Arc<dyn FileSystem>;

/// Creates `dir` and its missing ancestors, and makes each new directory's entry durable in its
/// parent: a directory whose own entry can vanish in a crash would take the log with it.
pub fn create_dir_all_durable(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    // Bounded by the path's depth.
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty()) {
        if fs.list(path).is_ok() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    fs.create_dir_all(dir)?;
    for path in missing.iter().rev() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)?;
        }
    }
    Ok(())
}
