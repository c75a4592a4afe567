//! The disk's own limits, measured with plain files next to the log: a loop of pwrite +
//! fdatasync into a preallocated, zero-filled file, sequential write bandwidth, and reads of
//! files in the page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size of the zero-filled file the fdatasync loop writes into (it wraps around at the end).
const SYNC_FILE_BYTES: u64 = 64 << 20;
/// Chunk of every sequential write and read.
const CHUNK_BYTES: usize = 1 << 20;

/// A file written with zeros and synced, so that later overwrites change data blocks only.
pub struct SyncLoop {
    file: File,
    path: PathBuf,
    offset: u64,
}

impl SyncLoop {
    /// Creates the zero-filled file in `dir`.
    pub fn new(dir: &Path) -> io::Result<SyncLoop> {
        let path = dir.join("raw-fdatasync.dat");
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        let zeros = vec![0u8; CHUNK_BYTES];
        let mut at = 0;
        // Bounded: SYNC_FILE_BYTES / CHUNK_BYTES passes.
        while at < SYNC_FILE_BYTES {
            file.write_all_at(&zeros, at)?;
            at += CHUNK_BYTES as u64;
        }
        file.sync_all()?;
        Ok(SyncLoop { file, path, offset: 0 })
    }

    /// Writes `bytes` bytes then fdatasyncs, again and again for `duration` (at least once).
    /// Returns the syncs done and the time they took.
    pub fn run(&mut self, bytes: usize, duration: Duration) -> io::Result<(u64, Duration)> {
        assert!(bytes as u64 <= SYNC_FILE_BYTES, "a sync of {bytes} bytes does not fit the file");
        let data = vec![0xA5u8; bytes];
        let started = Instant::now();
        let mut syncs = 0u64;
        // Bounded by the duration.
        loop {
            if self.offset + bytes as u64 > SYNC_FILE_BYTES {
                self.offset = 0;
            }
            self.file.write_all_at(&data, self.offset)?;
            self.file.sync_data()?;
            self.offset += bytes as u64;
            syncs += 1;
            if started.elapsed() >= duration {
                return Ok((syncs, started.elapsed()));
            }
        }
    }
}

impl Drop for SyncLoop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `total_bytes` in 1 MiB chunks to a new file and fdatasyncs it; returns bytes/s.
pub fn sequential_write(dir: &Path, total_bytes: u64) -> io::Result<f64> {
    let path = dir.join("raw-sequential.dat");
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    let data = vec![0x5Au8; CHUNK_BYTES];
    let started = Instant::now();
    let mut at = 0;
    // Bounded: total_bytes / CHUNK_BYTES passes.
    while at < total_bytes {
        file.write_all_at(&data, at)?;
        at += CHUNK_BYTES as u64;
    }
    file.sync_data()?;
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(at as f64 / elapsed.as_secs_f64())
}

/// Reads every regular file under `dir` (and its subdirectories) with pread in 1 MiB chunks;
/// returns (bytes, time).
pub fn read_files(dir: &Path) -> io::Result<(u64, Duration)> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    let started = Instant::now();
    let mut pending = vec![dir.to_path_buf()];
    // Bounded by the files under `dir`.
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let file = File::open(entry.path())?;
            let len = file.metadata()?.len();
            let mut at = 0;
            // Bounded by the file's length.
            while at < len {
                let n = file.read_at(&mut buf, at)?;
                if n == 0 {
                    break;
                }
                std::hint::black_box(&buf[..n]);
                total += n as u64;
                at += n as u64;
            }
        }
    }
    Ok((total, started.elapsed()))
}

/// Bytes of the regular files directly in `dir`.
pub fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    // Bounded by the files in `dir`.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_loop_writes_into_its_zero_filled_file_and_wraps_around() {
        let dir = tempfile::tempdir().unwrap();
        let mut sync_loop = SyncLoop::new(dir.path()).unwrap();
        let path = dir.path().join("raw-fdatasync.dat");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SYNC_FILE_BYTES);
        // Start near the end: the next write must wrap to offset 0, never grow the file.
        sync_loop.offset = SYNC_FILE_BYTES - 100;
        let (syncs, _) = sync_loop.run(4096, Duration::ZERO).unwrap();
        assert_eq!(syncs, 1);
        assert_eq!(sync_loop.offset, 4096);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SYNC_FILE_BYTES);
        drop(sync_loop);
        assert!(!path.exists(), "the loop's file is removed when it is dropped");
    }

    #[test]
    fn read_files_reads_every_file_below_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 3000]).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![2u8; (1 << 20) + 5]).unwrap();
        let (bytes, _) = read_files(dir.path()).unwrap();
        assert_eq!(bytes, 3000 + (1 << 20) + 5);
    }
}
