//! The real file system: std files, and `fs2` for locks and allocation.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use fs2::FileExt as _;

use super::{DirLock, File, FileSystem};

/// Times a contended directory lock is tried again, [`LOCK_RETRY_PAUSE`] apart, before open
/// reports it held: 100 ms in all, far longer than a spawned child takes to exec.
const LOCK_RETRIES: u32 = 20;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(fs::File);

impl File for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        // fallocate(2) where supported; fs2 falls back to set_len, which is still correct (the
        // file reads as zeros) but does not reserve the blocks.
        self.0.allocate(len)
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)] // One system call the standard library does not wrap.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(()); // Only a hint: a range beyond off_t is left to the sync.
        };
        // SAFETY: sync_file_range takes a descriptor and integers and touches no memory of this
        // process; the descriptor stays open while `self.0` is borrowed.
        let rc = unsafe {
            libc::sync_file_range(self.0.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // Not offered here (a file that is not a regular one, a file system or a sandbox
            // without the call): a hint that cannot be given is no failure.
            Some(libc::ESPIPE | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM) => {
                Ok(())
            }
            _ => Err(error),
        }
    }
}

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        let file =
            fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                // Names raftwal did not write may not be UTF-8; they are not raftwal's files.
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<DirLock>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // A lock can be held for a moment by no one who wants it: a child process being spawned
        // (by any thread) holds a copy of every open file, this one's included, from its fork
        // until its exec, so a log dropped and reopened in that moment finds its own lock held.
        // Contention is retried for up to LOCK_RETRIES pauses before it is reported.
        for attempt in 0..=LOCK_RETRIES {
            match file.try_lock_exclusive() {
                Ok(()) => return Ok(Some(DirLock::new(file))),
                Err(e) if e.kind() == fs2::lock_contended_error().kind() => {
                    if attempt < LOCK_RETRIES {
                        std::thread::sleep(LOCK_RETRY_PAUSE);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_writeback_works_on_a_file_and_is_a_quiet_no_op_where_it_is_not_offered() {
        let dir = tempfile::tempdir().unwrap();
        let file = RealFs.create(&dir.path().join("a")).unwrap();
        file.write_all_at(&[7u8; 8192], 0).unwrap();
        file.start_writeback(0, 8192).unwrap();
        file.sync_data().unwrap();
        // A character device: sync_file_range refuses it (ESPIPE on Linux), and a hint that
        // cannot be given must not fail the write that asked for it.
        let null = RealFs.open(Path::new("/dev/null")).unwrap();
        null.start_writeback(0, 4096).unwrap();
    }

    #[test]
    fn write_read_and_list_on_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealFs;
        let path = dir.path().join("a");
        let file = fs.create(&path).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        file.sync_data().unwrap();
        let mut buf = [0u8; 5];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
        file.allocate(4096).unwrap();
        assert_eq!(file.len().unwrap(), 4096);
        let mut whole = vec![1u8; 4096];
        file.read_exact_at(&mut whole, 0).unwrap();
        assert_eq!(&whole[..5], b"hello");
        assert!(whole[5..].iter().all(|&b| b == 0), "allocated space reads as zeros");
        fs.rename(&path, &dir.path().join("b")).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        assert_eq!(fs.list(dir.path()).unwrap(), ["b"]);
        let err = file.read_exact_at(&mut [0u8; 8], 4092).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let first = RealFs.try_lock(&path).unwrap();
        assert!(first.is_some());
        assert!(RealFs.try_lock(&path).unwrap().is_none(), "a held lock must refuse a second");
        drop(first);
        assert!(RealFs.try_lock(&path).unwrap().is_some(), "a dropped lock must be free again");
    }

    /// A child process being spawned holds a copy of every open file, the lock's included, from
    /// its fork until its exec: a log dropped and reopened in that moment (by another thread)
    /// finds its own lock held. Held here by another open of the file, released shortly after.
    #[test]
    fn a_lock_held_for_a_moment_by_another_open_of_the_file_is_taken_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let copy =
            fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).unwrap();
        copy.try_lock_exclusive().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(2));
            drop(copy);
        });
        let lock = RealFs.try_lock(&path).unwrap();
        release.join().unwrap();
        assert!(lock.is_some(), "the lock was released while the open waited");
    }
}
