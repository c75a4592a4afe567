//! A file system that only reads: the inspection commands run on it, so they can never change a
//! log (and work on directories the user may read but not write).

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use raftwal::io::{DirLock, File, FileSystem};

/// The real file system, opened read-only; every change is refused with `PermissionDenied`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOnlyFs;

#[derive(Debug)]
struct ReadOnlyFile(fs::File);

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("read-only inspection: {what} refused"))
}

impl File for ReadOnlyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<usize> {
        Err(refused("write"))
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(refused("sync"))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(refused("set_len"))
    }

    fn allocate(&self, _len: u64) -> io::Result<()> {
        Err(refused("allocate"))
    }
}

impl FileSystem for ReadOnlyFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Err(refused("create_dir_all"))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(ReadOnlyFile(fs::File::open(path)?)))
    }

    fn create(&self, _path: &Path) -> io::Result<Arc<dyn File>> {
        Err(refused("create"))
    }

    fn rename(&self, _from: &Path, _to: &Path) -> io::Result<()> {
        Err(refused("rename"))
    }

    fn remove_file(&self, _path: &Path) -> io::Result<()> {
        Err(refused("remove"))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Ok(name) = entry.file_name().into_string()
            {
                names.push(name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Err(refused("sync_dir"))
    }

    fn try_lock(&self, _path: &Path) -> io::Result<Option<DirLock>> {
        Err(refused("lock"))
    }
}
