//! `CrashFs`: an in-memory file system that simulates power cuts and injects I/O faults, for
//! raftwal's crash tests, fuzz targets and benches. Its semantics are documented on [`CrashFs`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use super::{DirLock, File, FileSystem};
use crate::rng::Rng;

// The limits below are stated in `CrashFs`'s documentation; keep the two in step.

/// The unit a torn write is cut into: disks write whole sectors atomically.
const SECTOR_BYTES: u64 = 512;
/// The largest file and the largest single write.
const MAX_FILE_BYTES: u64 = 1 << 30;
/// Unsynced writes and size changes one file may hold before writes are refused.
const MAX_UNSYNCED_FILE_OPS: usize = 1 << 20;
/// Unsynced namespace operations one directory may hold before further ones are refused.
const MAX_UNSYNCED_DIR_OPS: usize = 1 << 20;
/// Live inodes (files, open or named anywhere).
const MAX_INODES: usize = 1 << 20;
/// Directories, roots included.
const MAX_DIRS: usize = 1 << 16;
/// Components of a path.
const MAX_PATH_DEPTH: usize = 64;
/// Faults armed and not yet fired.
const MAX_ARMED_FAULTS: usize = 1024;

/// The raw OS error numbers CrashFs returns (Linux values, without depending on libc).
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

const _: () = assert!(MAX_FILE_BYTES.is_multiple_of(SECTOR_BYTES));
const _: () = assert!(MAX_FILE_BYTES <= usize::MAX as u64);

/// A fault armed to fire at an operation number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The fault fires at the first operation numbered `at_op` or later that `kind` applies to.
    /// Arm `CrashFs::op_count()` to hit the very next such operation.
    pub at_op: u64,
    /// What happens.
    pub kind: FaultKind,
}

/// The faults CrashFs can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A `write_at` fails with EIO and writes nothing.
    WriteEio,
    /// A `sync_data` fails with EIO. As on Linux after a failed `fsync`, the file's dirty data is
    /// dropped from writeback: reads still see it, but it is **not** durable, and later
    /// `sync_data` calls succeed without making it durable. This is why a caller must never
    /// retry a failed fsync and believe the data safe.
    SyncEio,
    /// A `write_at` or `allocate` fails with ENOSPC (`ErrorKind::StorageFull`) and changes
    /// nothing. Writes that end inside space reserved by `allocate` cannot run out of space (as
    /// the seam promises) and do not trigger it.
    NoSpace,
    /// A `write_at` of two bytes or more writes only its first half (rounded down) and returns
    /// that count. Writes of fewer than two bytes cannot be short and do not trigger it.
    ShortWrite,
    /// The operation and every later one fail without effect, as if the process died there, until
    /// [`CrashFs::crash`] (or [`CrashFs::crash_lose_all_unsynced`]) clears it.
    Halt,
}

/// The operations a [`Hook`] is told about: one per method of the seam, plus `Close`, a file
/// handle being dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// [`File::read_at`].
    Read,
    /// [`File::write_at`].
    Write,
    /// [`File::sync_data`].
    Sync,
    /// [`File::len`].
    Len,
    /// [`File::set_len`].
    SetLen,
    /// [`File::allocate`].
    Allocate,
    /// [`FileSystem::create_dir_all`].
    CreateDirAll,
    /// [`FileSystem::open`].
    Open,
    /// [`FileSystem::create`].
    Create,
    /// [`FileSystem::rename`].
    Rename,
    /// [`FileSystem::remove_file`].
    RemoveFile,
    /// [`FileSystem::list`].
    List,
    /// [`FileSystem::sync_dir`].
    SyncDir,
    /// [`FileSystem::try_lock`].
    TryLock,
    /// A file handle was dropped (after the fact; the hook cannot fail it).
    Close,
    /// [`File::start_writeback`]: seen by the hook, which may fail it, but no numbered
    /// operation and no crash point, since it changes no image.
    StartWriteback,
}

/// An operation about to run, as a [`Hook`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct OpEvent<'a> {
    /// Which operation.
    pub kind: OpKind,
    /// The path it names, for the [`FileSystem`] methods (the source of a rename).
    pub path: Option<&'a Path>,
    /// The destination of a rename.
    pub to: Option<&'a Path>,
}

/// Called by [`CrashFs`] on the calling thread before every operation (see
/// [`CrashFs::set_hook`]).
pub type Hook = Arc<dyn Fn(&OpEvent<'_>) -> io::Result<()> + Send + Sync>;

/// Identifies an inode for the life of a `CrashFs`; ids are never reused.
type InodeId = u64;

/// One unsynced change to a file's contents, replayed onto the durable image on sync or crash.
#[derive(Clone, Debug)]
enum FileOp {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
    /// Extends to at least this length; never truncates (so replaying it after a write that grew
    /// the file further is harmless).
    Allocate(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Changes since the last `sync_data`, oldest first. Invariant: replaying them all onto
    /// `durable` gives `volatile`, unless `sync_lost` is set.
    unsynced: Vec<FileOp>,
    /// Set when a failed sync dropped unsynced changes: `durable` may then lag `volatile` forever.
    sync_lost: bool,
    /// Open handles of the current epoch; the inode is freed only when none are left.
    handles: u32,
    /// Writes ending at or below this length cannot fail for lack of space (`allocate` reserved
    /// the blocks); shrunk by `set_len`, and after a crash the durable length (blocks that exist).
    reserved_bytes: u64,
}

/// One unsynced change to a directory's namespace.
#[derive(Clone, Debug)]
enum DirOp {
    Link { name: String, inode: InodeId },
    Unlink { name: String },
    Rename { from: String, to: String, inode: InodeId },
    MkDir { name: String },
}

#[derive(Clone, Debug, Default)]
struct Dir {
    volatile: BTreeMap<String, InodeId>,
    durable: BTreeMap<String, InodeId>,
    /// Namespace changes since the last `sync_dir`, oldest first.
    unsynced: Vec<DirOp>,
    /// Whether this directory's own creation is durable in its parent (always true for roots).
    durable_entry: bool,
}

/// The operations of the seam, for counting and for matching faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    /// `reserved`: the write ends inside space `allocate` reserved, so ENOSPC cannot happen.
    Write {
        len: usize,
        reserved: bool,
    },
    Sync,
    Len,
    SetLen,
    Allocate,
    CreateDirAll,
    Open,
    Create,
    Rename,
    RemoveFile,
    List,
    SyncDir,
    TryLock,
}

impl Op {
    fn kind(self) -> OpKind {
        match self {
            Op::Read => OpKind::Read,
            Op::Write { .. } => OpKind::Write,
            Op::Sync => OpKind::Sync,
            Op::Len => OpKind::Len,
            Op::SetLen => OpKind::SetLen,
            Op::Allocate => OpKind::Allocate,
            Op::CreateDirAll => OpKind::CreateDirAll,
            Op::Open => OpKind::Open,
            Op::Create => OpKind::Create,
            Op::Rename => OpKind::Rename,
            Op::RemoveFile => OpKind::RemoveFile,
            Op::List => OpKind::List,
            Op::SyncDir => OpKind::SyncDir,
            Op::TryLock => OpKind::TryLock,
        }
    }
}

impl FaultKind {
    fn applies_to(self, op: Op) -> bool {
        match self {
            FaultKind::WriteEio => matches!(op, Op::Write { .. }),
            FaultKind::SyncEio => op == Op::Sync,
            FaultKind::NoSpace => {
                matches!(op, Op::Write { reserved: false, .. } | Op::Allocate)
            }
            FaultKind::ShortWrite => matches!(op, Op::Write { len, .. } if len >= 2),
            FaultKind::Halt => true,
        }
    }
}

/// The directories by normalized path, in `Path` order (a parent before its children). A
/// file system holds a handful: a sorted vector found by a byte comparison of paths costs less
/// than a tree compared component by component, and the lookup runs for every operation.
#[derive(Clone, Default)]
struct Dirs {
    entries: Vec<(PathBuf, Dir)>,
}

impl Dirs {
    /// Where `path` is. Every key and every path looked up is normalized, so equal paths are
    /// equal bytes.
    fn position(&self, path: &Path) -> Option<usize> {
        let wanted = path.as_os_str().as_encoded_bytes();
        self.entries.iter().position(|(key, _)| key.as_os_str().as_encoded_bytes() == wanted)
    }

    fn get(&self, path: &Path) -> Option<&Dir> {
        self.position(path).map(|k| &self.entries[k].1)
    }

    fn get_mut(&mut self, path: &Path) -> Option<&mut Dir> {
        self.position(path).map(|k| &mut self.entries[k].1)
    }

    fn contains_key(&self, path: &Path) -> bool {
        self.position(path).is_some()
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds or replaces the directory at `path`, keeping the order.
    fn insert(&mut self, path: PathBuf, dir: Dir) {
        match self.entries.binary_search_by(|(key, _)| key.as_path().cmp(&path)) {
            Ok(k) => self.entries[k].1 = dir,
            Err(k) => self.entries.insert(k, (path, dir)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&PathBuf, &Dir)> {
        self.entries.iter().map(|(path, dir)| (path, dir))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&PathBuf, &mut Dir)> {
        self.entries.iter_mut().map(|(path, dir)| (&*path, dir))
    }

    fn values(&self) -> impl Iterator<Item = &Dir> {
        self.entries.iter().map(|(_, dir)| dir)
    }

    fn retain(&mut self, mut keep: impl FnMut(&PathBuf, &mut Dir) -> bool) {
        self.entries.retain_mut(|(path, dir)| keep(path, dir));
    }
}

#[derive(Clone)]
struct State {
    /// The number the next operation takes.
    ops: u64,
    /// Armed faults, sorted by `at_op` (ties in arming order).
    faults: Vec<Fault>,
    /// The operation number at which a `Halt` fired, until the next crash.
    halted_at: Option<u64>,
    /// Bumped by every crash; handles and locks of an older epoch are dead.
    epoch: u64,
    next_inode: InodeId,
    inodes: BTreeMap<InodeId, Inode>,
    /// Keyed by normalized path; sorted so a parent comes before its children.
    dirs: Dirs,
    /// Held locks: normalized path → the id of the guard holding it.
    locks: HashMap<PathBuf, u64>,
    next_lock: u64,
    /// Run before every operation, outside this state's lock.
    hook: Option<Hook>,
}

/// How a crash treats each unsynced change.
enum CrashPolicy {
    Random(Rng),
    LoseAll,
}

impl CrashPolicy {
    /// A number in `0..n` (always 0 when losing everything: lose, not applied, empty prefix).
    fn below(&mut self, n: u64) -> u64 {
        match self {
            CrashPolicy::Random(rng) => rng.below(n),
            CrashPolicy::LoseAll => 0,
        }
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(ENOSPC)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, NotFound(path.to_path_buf()))
}

/// A missing file or directory. Its message is formatted only when shown: most are looked for
/// on purpose (a snapshot that was never taken) and dropped unread.
#[derive(Debug)]
struct NotFound(PathBuf);

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: no such file or directory", self.0.display())
    }
}

impl std::error::Error for NotFound {}

fn too_many(what: &str) -> io::Error {
    io::Error::other(format!("CrashFs limit reached: {what}"))
}

fn to_usize(n: u64) -> usize {
    // Every length and offset is checked against MAX_FILE_BYTES, which fits a usize.
    usize::try_from(n).expect("length checked against MAX_FILE_BYTES")
}

/// Writes `data` at `offset` in `image`, zero-filling any gap past the end.
fn write_image(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = to_usize(offset);
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(data);
}

fn apply_file_op(image: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, data } => write_image(image, *offset, data),
        FileOp::SetLen(len) => image.resize(to_usize(*len), 0),
        FileOp::Allocate(len) => {
            if (image.len() as u64) < *len {
                image.resize(to_usize(*len), 0);
            }
        }
    }
}

/// Normalizes `path` so equal paths compare equal: drops `.` components and repeated
/// separators; refuses `..` (raftwal never uses it) and overlong paths.
fn normalize(path: &Path) -> io::Result<PathBuf> {
    if is_normal(path.as_os_str().as_encoded_bytes()) {
        // Nearly every path raftwal passes: one copy instead of a push per component.
        return Ok(path.to_path_buf());
    }
    normalize_by_components(path)
}

/// [`normalize`], one component at a time.
fn normalize_by_components(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for (i, component) in path.components().enumerate() {
        if i >= MAX_PATH_DEPTH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: more than {MAX_PATH_DEPTH} components", path.display()),
            ));
        }
        match component {
            Component::RootDir => out.push("/"),
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: `..` and prefixes are not supported", path.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Whether `normalize` would return the path unchanged: an optional leading `/`, then at most
/// `MAX_PATH_DEPTH` components (the root counted) joined by single `/`, none empty, `.` or `..`.
/// Separators are found a word at a time: under the fuzzer every compare is traced, and this
/// runs for every operation.
fn is_normal(bytes: &[u8]) -> bool {
    let (mut components, rest) = match bytes.split_first() {
        Some((b'/', [])) => return true,
        Some((b'/', rest)) => (1, rest),
        Some(_) => (0, bytes),
        None => return true,
    };
    let mut start = 0;
    // Bounded: each pass consumes one component.
    loop {
        let end = next_separator(rest, start);
        let part = &rest[start..end];
        if part.is_empty() || part == b"." || part == b".." {
            return false;
        }
        components += 1;
        if end == rest.len() {
            return components <= MAX_PATH_DEPTH;
        }
        start = end + 1;
    }
}

/// The index of the first `/` in `bytes` at or after `from`, or `bytes.len()`.
fn next_separator(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const SLASHES: u64 = u64::from_le_bytes([b'/'; 8]);
    let mut at = from;
    while let Some(word) = bytes.get(at..at + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes")) ^ SLASHES;
        // The lowest set bit marks the first zero byte of `x` exactly (a borrow only runs
        // upward from a zero byte): the first separator.
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return at + (zero.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    bytes[at.min(bytes.len())..].iter().position(|b| *b == b'/').map_or(bytes.len(), |k| at + k)
}

/// Splits a file path into its normalized directory and its UTF-8 name.
fn split_file_path(path: &Path) -> io::Result<(PathBuf, String)> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if is_normal(bytes) {
        // Nearly every path raftwal passes: a normal path's directory and name are what lies
        // either side of its last `/`, without parsing its components twice more.
        let (dir, name) = match bytes.iter().rposition(|b| *b == b'/') {
            Some(0) => (&bytes[..1], &bytes[1..]),
            Some(k) => (&bytes[..k], &bytes[k + 1..]),
            None => (&bytes[..0], bytes),
        };
        if let (Ok(dir), Ok(name)) = (std::str::from_utf8(dir), std::str::from_utf8(name))
            && !name.is_empty()
        {
            return Ok((PathBuf::from(dir), name.to_owned()));
        }
    }
    split_by_components(path)
}

/// [`split_file_path`], through the normalized path's components.
fn split_by_components(path: &Path) -> io::Result<(PathBuf, String)> {
    let normal = normalize(path)?;
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path with a UTF-8 name", path.display()),
        )
    };
    let name = normal.file_name().and_then(|n| n.to_str()).ok_or_else(invalid)?.to_owned();
    let dir = normal.parent().ok_or_else(invalid)?.to_path_buf();
    Ok((dir, name))
}

fn is_root(dir: &Path) -> bool {
    dir.parent().is_none()
}

impl State {
    fn new() -> State {
        let mut dirs = Dirs::default();
        for root in ["", "/"] {
            let dir = Dir { durable_entry: true, ..Dir::default() };
            dirs.insert(PathBuf::from(root), dir);
        }
        State {
            ops: 0,
            faults: Vec::new(),
            halted_at: None,
            epoch: 0,
            next_inode: 0,
            inodes: BTreeMap::new(),
            dirs,
            locks: HashMap::new(),
            next_lock: 0,
            hook: None,
        }
    }

    /// Counts an operation and decides its fate: `Err` if the file system is halted or the
    /// handle (of `epoch`) is dead, `Ok(Some(kind))` if an armed fault fires on it.
    fn begin(&mut self, op: Op, epoch: Option<u64>) -> io::Result<Option<FaultKind>> {
        let number = self.ops;
        self.ops += 1;
        if let Some(at) = self.halted_at {
            return Err(io::Error::other(format!(
                "CrashFs halted at operation {at} (simulated process death): \
                 operation {number} refused"
            )));
        }
        if let Some(epoch) = epoch
            && epoch != self.epoch
        {
            return Err(io::Error::other("file handle opened before a simulated crash"));
        }
        // Faults are sorted by at_op, so the first applicable one is the earliest armed.
        let position = self
            .faults
            .iter()
            .take_while(|fault| fault.at_op <= number)
            .position(|fault| fault.kind.applies_to(op));
        let Some(position) = position else {
            return Ok(None);
        };
        let fault = self.faults.remove(position);
        if fault.kind == FaultKind::Halt {
            self.halted_at = Some(number);
            return Err(io::Error::other(format!(
                "CrashFs halted at operation {number} (simulated process death)"
            )));
        }
        Ok(Some(fault.kind))
    }

    fn inode(&mut self, id: InodeId) -> &mut Inode {
        // A handle of the current epoch keeps its inode alive (handles > 0).
        self.inodes.get_mut(&id).expect("an open handle's inode is never freed")
    }

    fn dir(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found(dir))
    }

    fn push_dir_op(&mut self, dir: &Path, op: DirOp) -> io::Result<()> {
        let entry = self.dir(dir)?;
        if entry.unsynced.len() >= MAX_UNSYNCED_DIR_OPS {
            return Err(too_many("unsynced operations in one directory"));
        }
        entry.unsynced.push(op);
        Ok(())
    }

    fn new_inode(&mut self) -> io::Result<InodeId> {
        if self.inodes.len() >= MAX_INODES {
            return Err(too_many("files"));
        }
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, Inode::default());
        Ok(id)
    }

    /// Opens a handle on `id` in the current epoch.
    fn open_handle(&mut self, id: InodeId) -> (InodeId, u64) {
        let inode = self.inode(id);
        inode.handles = inode.handles.checked_add(1).expect("handle count overflow");
        (id, self.epoch)
    }

    /// Whether any namespace, durable, volatile or pending, still names `id`.
    fn is_named(&self, id: InodeId) -> bool {
        self.dirs.values().any(|dir| {
            dir.volatile.values().any(|&i| i == id)
                || dir.durable.values().any(|&i| i == id)
                || dir.unsynced.iter().any(|op| match op {
                    DirOp::Link { inode, .. } | DirOp::Rename { inode, .. } => *inode == id,
                    DirOp::Unlink { .. } | DirOp::MkDir { .. } => false,
                })
        })
    }

    fn free_if_unreferenced(&mut self, id: InodeId) {
        let open = self.inodes.get(&id).is_some_and(|inode| inode.handles > 0);
        if !open && !self.is_named(id) {
            self.inodes.remove(&id);
        }
    }

    /// Frees every inode no handle holds and no namespace names: O(names + inodes).
    fn collect_garbage(&mut self) {
        let mut named = BTreeSet::new();
        for dir in self.dirs.values() {
            named.extend(dir.volatile.values().copied());
            named.extend(dir.durable.values().copied());
            for op in &dir.unsynced {
                if let DirOp::Link { inode, .. } | DirOp::Rename { inode, .. } = op {
                    named.insert(*inode);
                }
            }
        }
        self.inodes.retain(|id, inode| inode.handles > 0 || named.contains(id));
    }

    fn write(&mut self, id: InodeId, buf: &[u8], offset: u64) -> io::Result<usize> {
        let len = buf.len() as u64;
        if len > MAX_FILE_BYTES || offset > MAX_FILE_BYTES - len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CrashFs: write of {len} bytes at {offset} passes the 1 GiB file limit"),
            ));
        }
        let inode = self.inode(id);
        if inode.unsynced.len() >= MAX_UNSYNCED_FILE_OPS {
            return Err(too_many("unsynced writes to one file"));
        }
        write_image(&mut inode.volatile, offset, buf);
        inode.unsynced.push(FileOp::Write { offset, data: buf.to_vec() });
        Ok(buf.len())
    }

    fn resize(&mut self, id: InodeId, op: FileOp) -> io::Result<()> {
        let (FileOp::SetLen(len) | FileOp::Allocate(len)) = op else {
            unreachable!("resize takes only SetLen or Allocate");
        };
        if len > MAX_FILE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CrashFs: length {len} passes the 1 GiB file limit"),
            ));
        }
        let inode = self.inode(id);
        if inode.unsynced.len() >= MAX_UNSYNCED_FILE_OPS {
            return Err(too_many("unsynced writes to one file"));
        }
        match op {
            FileOp::SetLen(_) => inode.reserved_bytes = inode.reserved_bytes.min(len),
            FileOp::Allocate(_) => inode.reserved_bytes = inode.reserved_bytes.max(len),
            FileOp::Write { .. } => unreachable!("checked above"),
        }
        apply_file_op(&mut inode.volatile, &op);
        inode.unsynced.push(op);
        Ok(())
    }

    fn sync_data(&mut self, id: InodeId, fault: Option<FaultKind>) -> io::Result<()> {
        let inode = self.inode(id);
        let unsynced = std::mem::take(&mut inode.unsynced);
        if fault == Some(FaultKind::SyncEio) {
            // Linux marks the pages clean after a failed writeback: the changes are gone from the
            // durable path for good, though reads still see them.
            inode.sync_lost |= !unsynced.is_empty();
            return Err(eio());
        }
        for op in &unsynced {
            apply_file_op(&mut inode.durable, op);
        }
        if !inode.sync_lost {
            assert_eq!(
                inode.durable.len(),
                inode.volatile.len(),
                "replaying every unsynced change must give the volatile length"
            );
        }
        Ok(())
    }

    /// Links a new empty inode at `dir/name`, or truncates the file already there.
    fn create_file(&mut self, dir: &Path, name: &str) -> io::Result<InodeId> {
        if self.dirs.contains_key(&dir.join(name)) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", dir.join(name).display()),
            ));
        }
        let existing = self.dir(dir)?.volatile.get(name).copied();
        if let Some(id) = existing {
            // O_TRUNC on an existing file is a size change of that inode, not a namespace change.
            self.resize(id, FileOp::SetLen(0))?;
            return Ok(id);
        }
        if self.dir(dir)?.unsynced.len() >= MAX_UNSYNCED_DIR_OPS {
            return Err(too_many("unsynced operations in one directory"));
        }
        let id = self.new_inode()?;
        let entry = self.dir(dir)?;
        entry.volatile.insert(name.to_owned(), id);
        entry.unsynced.push(DirOp::Link { name: name.to_owned(), inode: id });
        Ok(id)
    }

    /// The crash itself: see the module documentation.
    fn crash(&mut self, mut policy: CrashPolicy) {
        // Directories first, in path order, each choosing a surviving prefix of its journal.
        let mut durable_mkdirs = Vec::new();
        for (path, dir) in self.dirs.iter_mut() {
            let total = dir.unsynced.len() as u64;
            let kept = to_usize(policy.below(total + 1));
            for op in dir.unsynced.drain(..).take(kept) {
                match op {
                    DirOp::Link { name, inode } => {
                        dir.durable.insert(name, inode);
                    }
                    DirOp::Unlink { name } => {
                        dir.durable.remove(&name);
                    }
                    DirOp::Rename { from, to, inode } => {
                        dir.durable.remove(&from);
                        dir.durable.insert(to, inode);
                    }
                    DirOp::MkDir { name } => durable_mkdirs.push(path.join(name)),
                }
            }
            dir.volatile = dir.durable.clone();
        }
        for path in durable_mkdirs {
            if let Some(dir) = self.dirs.get_mut(&path) {
                dir.durable_entry = true;
            }
        }
        // A directory survives if its entry was durable in a parent that survived; parents sort
        // before their children, so one pass in order decides all.
        let mut surviving = BTreeSet::new();
        for (path, dir) in self.dirs.iter() {
            let parent_survives = path.parent().is_none_or(|p| surviving.contains(p));
            if is_root(path) || (dir.durable_entry && parent_survives) {
                surviving.insert(path.clone());
            }
        }
        self.dirs.retain(|path, _| surviving.contains(path));

        for inode in self.inodes.values_mut() {
            inode.handles = 0;
        }
        self.collect_garbage();

        // Then file contents, in inode order.
        for inode in self.inodes.values_mut() {
            for op in std::mem::take(&mut inode.unsynced) {
                match op {
                    FileOp::Write { offset, data } => match policy.below(3) {
                        0 => {}
                        1 => write_image(&mut inode.durable, offset, &data),
                        _ => tear(&mut inode.durable, offset, &data, &mut policy),
                    },
                    FileOp::SetLen(_) | FileOp::Allocate(_) => {
                        if policy.below(2) == 1 {
                            apply_file_op(&mut inode.durable, &op);
                        }
                    }
                }
            }
            // Reuses the volatile image's allocation: crash tests reboot thousands of times.
            inode.volatile.clear();
            inode.volatile.extend_from_slice(&inode.durable);
            inode.sync_lost = false;
            inode.reserved_bytes = inode.durable.len() as u64;
        }

        self.locks.clear();
        self.halted_at = None;
        self.epoch += 1;
    }
}

/// Applies a torn write: each piece of `data` between 512-byte sector boundaries of the file is
/// kept or lost on its own.
fn tear(image: &mut Vec<u8>, offset: u64, data: &[u8], policy: &mut CrashPolicy) {
    let end = offset + data.len() as u64;
    let mut start = offset;
    // One iteration per sector the write covers: at most MAX_FILE_BYTES / SECTOR_BYTES + 1.
    while start < end {
        let piece_end = ((start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
        assert!(piece_end > start, "every piece makes progress");
        if policy.below(2) == 1 {
            let from = to_usize(start - offset);
            let to = to_usize(piece_end - offset);
            write_image(image, start, &data[from..to]);
        }
        start = piece_end;
    }
}

/// The crash-simulating in-memory file system. Cloning gives another handle on the same files,
/// so a test can keep one while the store under test owns another.
///
/// # Model
///
/// Every file is an inode with two images: the **volatile** image (what reads see now) and the
/// **durable** image (what survives a power cut), plus the list of writes and size changes made
/// since its last successful `sync_data`, in order. A write costs O(its length): it changes the
/// volatile image and appends `(offset, bytes)` to that list; `sync_data` replays the list onto
/// the durable image. Nothing ever copies a whole file per write.
///
/// Every directory has a volatile namespace (name → inode) and a durable one, plus the list of
/// its creates, renames, removes and subdirectory creations since its last `sync_dir`, in order.
/// `sync_dir` makes the durable namespace equal the volatile one. `sync_data` on a file makes its
/// contents durable but **not** its directory entry: a file fsynced but never `sync_dir`ed can
/// vanish in a crash, as on a real file system.
///
/// Directories created by `create_dir_all` are entries of their parent directory: a new
/// directory survives a crash only if its creation reached its parent's durable namespace
/// (`sync_dir` on the parent, or a crash that keeps that operation) and the parent survives too.
/// The roots (`/` and the empty relative root) always exist. Directories are never removed
/// otherwise (the seam has no `remove_dir`).
///
/// Renames are supported only within one directory (raftwal renames `x.tmp` to `x` beside it);
/// a rename across directories is refused with `ErrorKind::Unsupported`, because it would need
/// a transaction spanning two directory journals.
///
/// # Crashes
///
/// [`crash`](CrashFs::crash) turns the file system into one of the states a power cut could
/// leave, chosen deterministically from a seed:
///
/// - every byte made durable by `sync_data` is kept;
/// - each unsynced write is independently lost, kept, or torn; a torn write is split at 512-byte
///   sector boundaries and each piece is kept or lost on its own, so a sector is never half
///   written;
/// - each unsynced `set_len` or `allocate` is applied or not;
/// - for each directory, a prefix (possibly empty, possibly all) of its unsynced namespace
///   operations survives, in order: the ordered metadata journaling of ext4 or XFS.
///
/// After a crash every `File` handle and `DirLock` taken before it is dead: operations on old
/// handles fail and the locks are released. The operation counter keeps counting.
///
/// # Faults
///
/// Every call through the seam ([`FileSystem`] and [`File`] methods alike) takes the next number
/// of a global operation counter ([`CrashFs::op_count`] is the number the next call will take).
/// A [`Fault`] armed with [`CrashFs::inject`] fires at the first call numbered `at_op` or later
/// that its kind applies to (see [`FaultKind`]), once; [`FaultKind::Halt`] then persists until
/// the next crash. A failed `sync_data` ([`FaultKind::SyncEio`]) loses its file's unsynced
/// changes from the durable image for good, as Linux does: a retried fsync that succeeds proves
/// nothing.
///
/// # Hooks
///
/// A [`Hook`] set with [`CrashFs::set_hook`] runs on the calling thread before every operation,
/// outside CrashFs's lock, and is told which operation (and path) it is. Tests of concurrent code
/// use it to pause a thread at a chosen operation until another thread has done something (no
/// sleeping, so the interleaving is the same on every run), or to fail one particular operation
/// (a directory fsync, a remove) that no [`FaultKind`] covers.
///
/// # Limits
///
/// Files and single writes are limited to 1 GiB; each file keeps at most 2^20 unsynced writes and
/// size changes and each directory 2^20 unsynced operations (more is refused with an error: a
/// workload that never syncs is a bug worth seeing); at most 2^20 files, 2^16 directories, 64 path
/// components and 1024 armed faults. Paths are normalized (`.` and repeated `/` dropped); `..` is
/// refused. Test helpers (`read_file`, `write_file_raw`, ...) do not count as operations and ignore
/// faults.
#[derive(Clone)]
pub struct CrashFs {
    state: Arc<Mutex<State>>,
}

impl Default for CrashFs {
    fn default() -> CrashFs {
        CrashFs::new()
    }
}

impl fmt::Debug for CrashFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("CrashFs")
            .field("op_count", &state.ops)
            .field("files", &state.inodes.len())
            .field("dirs", &state.dirs.len())
            .field("halted_at", &state.halted_at)
            .finish_non_exhaustive()
    }
}

/// Locks the state. A panic while holding it (a failed assertion in a test) must not turn every
/// later drop of a handle into a second panic, so poisoning is ignored.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the hook, if one is set, for `event`, without holding the state's lock: the hook may
/// block its thread or call back into the file system.
fn run_hook(state: &Mutex<State>, event: OpEvent<'_>) -> io::Result<()> {
    let hook = lock(state).hook.clone();
    match hook {
        Some(hook) => hook(&event),
        None => Ok(()),
    }
}

fn event(kind: OpKind, path: Option<&Path>) -> OpEvent<'_> {
    OpEvent { kind, path, to: None }
}

impl CrashFs {
    /// An empty file system: only the roots `/` and `` (for relative paths) exist.
    pub fn new() -> CrashFs {
        CrashFs { state: Arc::new(Mutex::new(State::new())) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The number the next operation through the seam will take (the count of operations so
    /// far, crashes not resetting it).
    pub fn op_count(&self) -> u64 {
        self.lock().ops
    }

    /// Arms `fault`; see [`FaultKind`] for what each kind does. Panics beyond 1024 armed faults.
    pub fn inject(&self, fault: Fault) {
        let mut state = self.lock();
        assert!(
            state.faults.len() < MAX_ARMED_FAULTS,
            "more than {MAX_ARMED_FAULTS} faults armed at once"
        );
        let position = state.faults.partition_point(|f| f.at_op <= fault.at_op);
        state.faults.insert(position, fault);
    }

    /// How many faults are armed and have not fired yet.
    pub fn armed_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Disarms every fault that has not fired yet (a fired `Halt` stays until the next crash).
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Sets (or with `None` removes) the hook run before every operation, on the calling thread
    /// and outside CrashFs's lock, before the operation takes its number. A hook orders threads in
    /// a test: it may block (pausing the thread at that operation until the test lets it go), call
    /// back into the file system, or return an error, which the operation then returns without
    /// effect and without taking a number. It also sees every file handle dropped
    /// ([`OpKind::Close`]), after the fact; its result is then ignored.
    pub fn set_hook(&self, hook: Option<Hook>) {
        self.lock().hook = hook;
    }

    /// Whether a `Halt` fault has fired and no crash has happened since.
    pub fn is_halted(&self) -> bool {
        self.lock().halted_at.is_some()
    }

    /// Simulates a power cut and a reboot: every unsynced change is kept, lost or torn as chosen
    /// from `seed` (see the module documentation); the same history and seed always give the same
    /// result. Old handles die, locks are released, a fired `Halt` is cleared. Faults armed but
    /// not yet fired stay armed, so recovery can be run under faults too; call
    /// [`CrashFs::clear_faults`] for a clean reboot.
    pub fn crash(&self, seed: u64) {
        self.lock().crash(CrashPolicy::Random(Rng::new(seed)));
    }

    /// Simulates the harshest power cut: only what was synced survives (every unsynced write,
    /// size change and namespace operation is lost). Otherwise like [`CrashFs::crash`].
    pub fn crash_lose_all_unsynced(&self) {
        self.lock().crash(CrashPolicy::LoseAll);
    }

    /// A separate file system holding what the harshest power cut now would leave (as
    /// [`CrashFs::crash_lose_all_unsynced`] would), without faults or a hook; this one is left
    /// as it is. A test can check after each acknowledgement that it depends on nothing unsynced,
    /// names included, while the code under test runs on.
    pub fn power_cut_copy(&self) -> CrashFs {
        let mut state = self.lock().clone();
        state.faults.clear();
        state.hook = None;
        state.crash(CrashPolicy::LoseAll);
        CrashFs { state: Arc::new(Mutex::new(state)) }
    }

    /// A separate file system holding exactly what this one holds now (volatile and durable
    /// images, unsynced changes, the operation count), with no handle open, no lock held, no
    /// fault armed, no hook and no halt; this one is left as it is. A test can build a state once
    /// and try many things on copies of it.
    pub fn fork(&self) -> CrashFs {
        let mut state = self.lock().clone();
        state.faults.clear();
        state.hook = None;
        state.halted_at = None;
        state.locks.clear();
        for inode in state.inodes.values_mut() {
            inode.handles = 0;
        }
        state.collect_garbage();
        // Handles of this file system can never reach the copy; a new epoch says so anyway.
        state.epoch += 1;
        CrashFs { state: Arc::new(Mutex::new(state)) }
    }

    /// The volatile contents (what reads see now) of the file at `path`, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let (dir, name) = split_file_path(path).ok()?;
        let state = self.lock();
        let id = state.dirs.get(&dir)?.volatile.get(&name)?;
        Some(state.inodes[id].volatile.clone())
    }

    /// The contents that would survive if nothing unsynced did: the file named at `path` in its
    /// directory's durable namespace, with its durable image. `None` if that name is not durable
    /// (the directory's own durability is not checked).
    pub fn durable_file(&self, path: &Path) -> Option<Vec<u8>> {
        let (dir, name) = split_file_path(path).ok()?;
        let state = self.lock();
        let id = state.dirs.get(&dir)?.durable.get(&name)?;
        Some(state.inodes[id].durable.clone())
    }

    /// Sets the file at `path` to `bytes` in both images, durably named, creating it and its
    /// directories (durably) if needed and dropping its unsynced changes. For building or
    /// corrupting on-disk state in tests; best used while no handle is open on the file.
    pub fn write_file_raw(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let (dir, name) = split_file_path(path)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "file passes the 1 GiB limit"));
        }
        let mut state = self.lock();
        make_dirs(&mut state, &dir, true)?;
        let existing = state.dir(&dir)?.volatile.get(&name).copied();
        let id = match existing {
            Some(id) => id,
            None => state.new_inode()?,
        };
        let entry = state.dir(&dir)?;
        entry.volatile.insert(name.clone(), id);
        entry.durable.insert(name, id);
        let inode = state.inode(id);
        inode.volatile = bytes.to_vec();
        inode.durable = bytes.to_vec();
        inode.unsynced.clear();
        inode.sync_lost = false;
        inode.reserved_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Flips bit `bit` (bit 0 is the low bit of byte 0) of the file at `path` in its volatile
    /// image, and in its durable image too if that is long enough (it is shorter only while
    /// appends are unsynced).
    pub fn flip_bit(&self, path: &Path, bit: u64) -> io::Result<()> {
        let (dir, name) = split_file_path(path)?;
        let mut state = self.lock();
        let id = *state
            .dirs
            .get(&dir)
            .and_then(|d| d.volatile.get(&name))
            .ok_or_else(|| not_found(path))?;
        let inode = state.inode(id);
        let byte = bit / 8;
        let mask = 1u8 << (bit % 8);
        let len = inode.volatile.len() as u64;
        if byte >= len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bit {bit} is past the end of a {len}-byte file"),
            ));
        }
        inode.volatile[to_usize(byte)] ^= mask;
        if let Some(durable) = inode.durable.get_mut(to_usize(byte)) {
            *durable ^= mask;
        }
        Ok(())
    }

    /// Every file path in the volatile namespaces, sorted.
    pub fn list_all(&self) -> Vec<PathBuf> {
        let state = self.lock();
        let mut paths: Vec<PathBuf> = state
            .dirs
            .iter()
            .flat_map(|(dir, d)| d.volatile.keys().map(move |name| dir.join(name)))
            .collect();
        paths.sort();
        paths
    }

    fn handle(&self, (inode, epoch): (InodeId, u64)) -> Arc<dyn File> {
        Arc::new(CrashFile { state: Arc::clone(&self.state), inode, epoch })
    }
}

/// Creates `dir` and its missing ancestors, each journaled in its parent (or made durable at
/// once when `durable`).
fn make_dirs(state: &mut State, dir: &Path, durable: bool) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !state.dirs.contains_key(a)).collect();
    if state.dirs.len() + missing.len() > MAX_DIRS {
        return Err(too_many("directories"));
    }
    // Ancestors come child first; create parent first.
    for path in missing.into_iter().rev() {
        let parent = path.parent().expect("the roots always exist");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a UTF-8 directory name", path.display()),
                )
            })?
            .to_owned();
        if state.dir(parent)?.volatile.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: a file is in the way", path.display()),
            ));
        }
        if !durable {
            state.push_dir_op(parent, DirOp::MkDir { name })?;
        }
        let created = Dir { durable_entry: durable, ..Dir::default() };
        state.dirs.insert(path.to_path_buf(), created);
    }
    Ok(())
}

/// Keeps a lock registered until dropped; holds only a weak reference, never the state's mutex.
struct LockHolder {
    state: Weak<Mutex<State>>,
    path: PathBuf,
    id: u64,
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let mut state = lock(&state);
        // After a crash the lock was released and may be held by a newer guard: leave that one.
        if state.locks.get(&self.path) == Some(&self.id) {
            state.locks.remove(&self.path);
        }
    }
}

/// An open file of a [`CrashFs`]; dead (every operation fails) after a crash.
struct CrashFile {
    state: Arc<Mutex<State>>,
    inode: InodeId,
    /// The crash epoch the handle was opened in.
    epoch: u64,
}

impl fmt::Debug for CrashFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashFile").field("inode", &self.inode).field("epoch", &self.epoch).finish()
    }
}

impl Drop for CrashFile {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if state.epoch != self.epoch {
            return; // The crash already forgot every handle of this epoch.
        }
        let inode = state.inode(self.inode);
        assert!(inode.handles > 0, "a live handle is counted");
        inode.handles -= 1;
        if inode.handles == 0 {
            state.free_if_unreferenced(self.inode);
        }
        let hook = state.hook.clone();
        drop(state);
        if let Some(hook) = hook {
            // A close cannot fail; the hook only learns of it.
            let _ = hook(&event(OpKind::Close, None));
        }
    }
}

impl CrashFile {
    fn begin(&self, op: Op) -> io::Result<(MutexGuard<'_, State>, Option<FaultKind>)> {
        run_hook(&self.state, event(op.kind(), None))?;
        let mut state = lock(&self.state);
        let fault = state.begin(op, Some(self.epoch))?;
        Ok((state, fault))
    }
}

impl File for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let (mut state, _) = self.begin(Op::Read)?;
        let image = &state.inode(self.inode).volatile;
        let len = image.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = to_usize(offset);
        let n = buf.len().min(image.len() - start);
        buf[..n].copy_from_slice(&image[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        run_hook(&self.state, event(OpKind::Write, None))?;
        let mut state = lock(&self.state);
        // Decided under the same lock as the fault, so no allocate can slip in between. A dead
        // handle's inode may be gone; its write fails in `begin` anyway.
        let end = offset.saturating_add(buf.len() as u64);
        let reserved = state.epoch == self.epoch
            && state.inodes.get(&self.inode).is_some_and(|inode| end <= inode.reserved_bytes);
        let fault = state.begin(Op::Write { len: buf.len(), reserved }, Some(self.epoch))?;
        match fault {
            None => state.write(self.inode, buf, offset),
            Some(FaultKind::WriteEio) => Err(eio()),
            Some(FaultKind::NoSpace) => Err(enospc()),
            Some(FaultKind::ShortWrite) => {
                assert!(buf.len() >= 2, "a short write needs two bytes to shorten");
                let n = state.write(self.inode, &buf[..buf.len() / 2], offset)?;
                assert!(n < buf.len());
                Ok(n)
            }
            Some(kind) => unreachable!("{kind:?} does not apply to writes"),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let (mut state, fault) = self.begin(Op::Sync)?;
        state.sync_data(self.inode, fault)
    }

    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        // A hint to the kernel: what a crash leaves does not depend on it.
        run_hook(&self.state, event(OpKind::StartWriteback, None))
    }

    fn len(&self) -> io::Result<u64> {
        let (mut state, _) = self.begin(Op::Len)?;
        Ok(state.inode(self.inode).volatile.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let (mut state, _) = self.begin(Op::SetLen)?;
        state.resize(self.inode, FileOp::SetLen(len))
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let (mut state, fault) = self.begin(Op::Allocate)?;
        if fault == Some(FaultKind::NoSpace) {
            return Err(enospc());
        }
        assert_eq!(fault, None, "only NoSpace applies to allocate");
        if state.inode(self.inode).volatile.len() as u64 >= len {
            return Ok(()); // Nothing to extend: nothing to journal.
        }
        state.resize(self.inode, FileOp::Allocate(len))
    }
}

impl FileSystem for CrashFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        run_hook(&self.state, event(OpKind::CreateDirAll, Some(dir)))?;
        let mut state = self.lock();
        state.begin(Op::CreateDirAll, None)?;
        let dir = normalize(dir)?;
        make_dirs(&mut state, &dir, false)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        run_hook(&self.state, event(OpKind::Open, Some(path)))?;
        let mut state = self.lock();
        state.begin(Op::Open, None)?;
        let (dir, name) = split_file_path(path)?;
        let id = *state
            .dirs
            .get(&dir)
            .and_then(|d| d.volatile.get(&name))
            .ok_or_else(|| not_found(path))?;
        let handle = state.open_handle(id);
        Ok(self.handle(handle))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn File>> {
        run_hook(&self.state, event(OpKind::Create, Some(path)))?;
        let mut state = self.lock();
        state.begin(Op::Create, None)?;
        let (dir, name) = split_file_path(path)?;
        let id = state.create_file(&dir, &name)?;
        let handle = state.open_handle(id);
        Ok(self.handle(handle))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        run_hook(&self.state, OpEvent { kind: OpKind::Rename, path: Some(from), to: Some(to) })?;
        let mut state = self.lock();
        state.begin(Op::Rename, None)?;
        let (from_dir, from_name) = split_file_path(from)?;
        let (to_dir, to_name) = split_file_path(to)?;
        let id = *state
            .dirs
            .get(&from_dir)
            .and_then(|d| d.volatile.get(&from_name))
            .ok_or_else(|| not_found(from))?;
        if from_dir != to_dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "CrashFs renames only within a directory: {} -> {}",
                    from.display(),
                    to.display()
                ),
            ));
        }
        if state.dirs.contains_key(&to_dir.join(&to_name)) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", to.display()),
            ));
        }
        if from_name == to_name {
            return Ok(()); // POSIX: renaming a file onto itself does nothing.
        }
        state.push_dir_op(
            &from_dir,
            DirOp::Rename { from: from_name.clone(), to: to_name.clone(), inode: id },
        )?;
        let entry = state.dir(&from_dir)?;
        entry.volatile.remove(&from_name);
        let replaced = entry.volatile.insert(to_name, id);
        if let Some(replaced) = replaced {
            state.free_if_unreferenced(replaced);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        run_hook(&self.state, event(OpKind::RemoveFile, Some(path)))?;
        let mut state = self.lock();
        state.begin(Op::RemoveFile, None)?;
        let (dir, name) = split_file_path(path)?;
        if !state.dirs.get(&dir).is_some_and(|d| d.volatile.contains_key(&name)) {
            return Err(not_found(path));
        }
        state.push_dir_op(&dir, DirOp::Unlink { name: name.clone() })?;
        let removed = state.dir(&dir)?.volatile.remove(&name);
        let removed = removed.expect("checked just above");
        state.free_if_unreferenced(removed);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        run_hook(&self.state, event(OpKind::List, Some(dir)))?;
        let mut state = self.lock();
        state.begin(Op::List, None)?;
        let dir = normalize(dir)?;
        // BTreeMap keys are already sorted.
        Ok(state.dir(&dir)?.volatile.keys().cloned().collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        run_hook(&self.state, event(OpKind::SyncDir, Some(dir)))?;
        let mut state = self.lock();
        state.begin(Op::SyncDir, None)?;
        let dir = normalize(dir)?;
        let entry = state.dir(&dir)?;
        let mut mkdirs = Vec::new();
        let unsynced = std::mem::take(&mut entry.unsynced);
        if unsynced.is_empty() {
            // Every namespace change is journaled: with none since the last sync, the durable
            // namespace is the volatile one already, and no inode stopped being named.
            debug_assert_eq!(entry.durable, entry.volatile, "an unjournaled namespace change");
            return Ok(());
        }
        // Only the inodes the journal mentions, or that the old durable namespace held under a
        // name it mentions, can stop being named here; every other keeps its durable name.
        let mut dropped = Vec::new();
        for op in unsynced {
            match op {
                DirOp::MkDir { name } => mkdirs.push(dir.join(name)),
                DirOp::Link { name, inode } => {
                    dropped.push(inode);
                    dropped.extend(entry.durable.get(&name).copied());
                }
                DirOp::Unlink { name } => dropped.extend(entry.durable.get(&name).copied()),
                DirOp::Rename { from, to, inode } => {
                    dropped.push(inode);
                    dropped.extend(entry.durable.get(&from).copied());
                    dropped.extend(entry.durable.get(&to).copied());
                }
            }
        }
        entry.durable = entry.volatile.clone();
        dropped.sort_unstable();
        dropped.dedup();
        for path in mkdirs {
            if let Some(child) = state.dirs.get_mut(&path) {
                child.durable_entry = true;
            }
        }
        for id in dropped {
            state.free_if_unreferenced(id);
        }
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<DirLock>> {
        run_hook(&self.state, event(OpKind::TryLock, Some(path)))?;
        let mut state = self.lock();
        state.begin(Op::TryLock, None)?;
        let (dir, name) = split_file_path(path)?;
        let key = dir.join(&name);
        if state.locks.contains_key(&key) {
            return Ok(None);
        }
        let exists = state.dir(&dir)?.volatile.contains_key(&name);
        if !exists {
            // Like open(O_CREAT) without O_TRUNC: create only if missing.
            state.create_file(&dir, &name)?;
        }
        let id = state.next_lock;
        state.next_lock += 1;
        state.locks.insert(key.clone(), id);
        Ok(Some(DirLock::new(LockHolder { state: Arc::downgrade(&self.state), path: key, id })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast check agrees with the component-by-component normalization on paths of every
    /// shape (separators inside and across words, `.` and `..`, repeated and trailing `/`).
    #[test]
    fn a_path_is_normal_exactly_when_normalizing_leaves_it_unchanged() {
        let deep = format!("/{}", vec!["d"; MAX_PATH_DEPTH].join("/"));
        let deeper = format!("/{}", vec!["d"; MAX_PATH_DEPTH - 1].join("/"));
        let paths = [
            "",
            "/",
            "//",
            "a",
            "/a",
            "a/",
            "/a/",
            "./a",
            "a/.",
            "a/./b",
            "a/../b",
            "..",
            ".",
            "/node/wal/00000000000000000001.seg",
            "/node//wal",
            "/node/wal/",
            "/.hidden/x",
            "/a.b/..c/d..",
            "/abcdefgh/ijklmnop",
            "/abcdefg/hijklmno/",
            "/abcdefghijklmno//p",
            "relative/dir/name.tmp",
            &deep,
            &deeper,
        ];
        for path in paths {
            let fast = is_normal(path.as_bytes());
            let slow = normalize_by_components(Path::new(path));
            let unchanged = slow.as_ref().is_ok_and(|p| p.as_os_str() == path);
            assert_eq!(fast, unchanged, "{path:?}: {slow:?}");
            if fast {
                assert_eq!(normalize(Path::new(path)).unwrap(), slow.unwrap(), "{path:?}");
            }
            let (split, by_components) =
                (split_file_path(Path::new(path)), split_by_components(Path::new(path)));
            assert_eq!(split.ok(), by_components.ok(), "{path:?} split");
        }
        for (bytes, from) in [(&b"abcdefghijk/"[..], 0), (b"/a/b", 1), (b"abc", 0), (b"a/b", 3)] {
            let want =
                bytes[from..].iter().position(|b| *b == b'/').map_or(bytes.len(), |k| k + from);
            assert_eq!(next_separator(bytes, from), want, "{bytes:?} from {from}");
        }
    }

    /// Enough seeds that every outcome of a three-way or sector-by-sector choice shows up.
    const SEEDS: u64 = 200;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// A file system with a synced directory `/db`.
    fn fs_with_db() -> CrashFs {
        let fs = CrashFs::new();
        fs.create_dir_all(&p("/db")).unwrap();
        fs.sync_dir(&p("/")).unwrap();
        fs
    }

    /// Creates `/db/<name>` and makes its directory entry durable.
    fn durable_empty_file(fs: &CrashFs, name: &str) -> Arc<dyn File> {
        let file = fs.create(&p("/db").join(name)).unwrap();
        fs.sync_dir(&p("/db")).unwrap();
        file
    }

    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    #[test]
    fn synced_data_survives_every_crash_seed() {
        for seed in 0..SEEDS {
            let fs = fs_with_db();
            let file = durable_empty_file(&fs, "a");
            let synced = pattern(3000, 1);
            file.write_all_at(&synced, 0).unwrap();
            file.sync_data().unwrap();
            // Unsynced writes after the synced ones, only past the synced range.
            file.write_all_at(&pattern(1500, 2), 3000).unwrap();
            fs.crash(seed);
            let after = fs.read_file(&p("/db/a")).expect("a synced, dir-synced file survives");
            assert!(after.len() >= synced.len(), "seed {seed}: synced length kept");
            assert_eq!(&after[..synced.len()], &synced[..], "seed {seed}: synced bytes kept");
        }
    }

    #[test]
    fn unsynced_writes_are_lost_kept_or_torn_at_sector_granularity() {
        let base = pattern(4096, 7);
        let update = pattern(2048, 9);
        // Covers the unaligned sector pieces [100, 512), [512, 1024), ..., [2048, 2148).
        let offset = 100;
        let (mut lost, mut kept, mut torn) = (0, 0, 0);
        for seed in 0..SEEDS {
            let fs = fs_with_db();
            let file = durable_empty_file(&fs, "a");
            file.write_all_at(&base, 0).unwrap();
            file.sync_data().unwrap();
            file.write_all_at(&update, offset as u64).unwrap();
            fs.crash(seed);
            let after = fs.read_file(&p("/db/a")).unwrap();
            assert_eq!(after.len(), base.len(), "the write stayed inside the file");
            let mut new_pieces = 0;
            let mut old_pieces = 0;
            let mut start = offset;
            while start < offset + update.len() {
                let end = ((start / 512 + 1) * 512).min(offset + update.len());
                let piece = &after[start..end];
                if piece == &update[start - offset..end - offset] {
                    new_pieces += 1;
                } else {
                    assert_eq!(
                        piece,
                        &base[start..end],
                        "seed {seed}: sector piece at {start} is whole, old or new"
                    );
                    old_pieces += 1;
                }
                start = end;
            }
            assert_eq!(&after[..offset], &base[..offset], "bytes outside the write untouched");
            assert_eq!(&after[offset + update.len()..], &base[offset + update.len()..]);
            match (new_pieces, old_pieces) {
                (0, _) => lost += 1,
                (_, 0) => kept += 1,
                _ => torn += 1,
            }
        }
        assert!(lost > 0, "some crash loses the write");
        assert!(kept > 0, "some crash keeps the write");
        assert!(torn > 0, "some crash tears the write");
    }

    #[test]
    fn unsynced_set_len_is_applied_or_not() {
        let (mut applied, mut not_applied) = (0, 0);
        for seed in 0..SEEDS {
            let fs = fs_with_db();
            let file = durable_empty_file(&fs, "a");
            file.write_all_at(&pattern(1000, 3), 0).unwrap();
            file.sync_data().unwrap();
            file.set_len(10).unwrap();
            fs.crash(seed);
            match fs.read_file(&p("/db/a")).unwrap().len() {
                10 => applied += 1,
                1000 => not_applied += 1,
                other => panic!("seed {seed}: length {other} is neither before nor after"),
            }
        }
        assert!(applied > 0 && not_applied > 0, "{applied} applied, {not_applied} not");
    }

    #[test]
    fn a_create_or_rename_without_sync_dir_can_vanish_and_survives_after_sync_dir() {
        let mut create_vanished = 0;
        let mut rename_undone = 0;
        for seed in 0..SEEDS {
            let fs = fs_with_db();
            fs.create(&p("/db/new")).unwrap();
            let old = durable_empty_file(&fs, "old");
            drop(old);
            fs.rename(&p("/db/old"), &p("/db/renamed")).unwrap();
            // Journal order: `new` (synced), then the rename: the rename can be lost alone.
            fs.create(&p("/db/late")).unwrap();
            fs.crash(seed);
            let names = fs.list(&p("/db")).unwrap();
            assert!(names.contains(&"new".to_owned()), "seed {seed}: synced create kept");
            if names.contains(&"old".to_owned()) {
                assert!(!names.contains(&"renamed".to_owned()), "a rename is atomic");
                assert!(!names.contains(&"late".to_owned()), "a later op needs the earlier one");
                rename_undone += 1;
            } else {
                assert!(names.contains(&"renamed".to_owned()), "seed {seed}: file under one name");
            }
            if !names.contains(&"late".to_owned()) {
                create_vanished += 1;
            }
        }
        assert!(create_vanished > 0, "an unsynced create can vanish");
        assert!(rename_undone > 0, "an unsynced rename can be undone");

        for seed in 0..SEEDS {
            let fs = fs_with_db();
            fs.create(&p("/db/x.tmp")).unwrap();
            fs.rename(&p("/db/x.tmp"), &p("/db/x")).unwrap();
            fs.sync_dir(&p("/db")).unwrap();
            fs.crash(seed);
            assert_eq!(fs.list(&p("/db")).unwrap(), ["x"], "seed {seed}");
        }
    }

    #[test]
    fn a_remove_without_sync_dir_can_be_undone() {
        let mut undone = 0;
        for seed in 0..SEEDS {
            let fs = fs_with_db();
            let file = durable_empty_file(&fs, "a");
            file.write_all_at(b"data", 0).unwrap();
            file.sync_data().unwrap();
            drop(file);
            fs.remove_file(&p("/db/a")).unwrap();
            assert_eq!(fs.read_file(&p("/db/a")), None);
            fs.crash(seed);
            if let Some(contents) = fs.read_file(&p("/db/a")) {
                assert_eq!(contents, b"data", "an undone remove brings back the synced data");
                undone += 1;
            }
        }
        assert!(undone > 0 && undone < SEEDS, "{undone} of {SEEDS} removes undone");
    }

    #[test]
    fn a_fsynced_file_whose_directory_entry_was_never_synced_can_vanish() {
        let mut vanished = 0;
        for seed in 0..SEEDS {
            let fs = fs_with_db();
            let file = fs.create(&p("/db/a")).unwrap();
            file.write_all_at(b"synced", 0).unwrap();
            file.sync_data().unwrap();
            fs.crash(seed);
            match fs.read_file(&p("/db/a")) {
                None => vanished += 1,
                Some(contents) => assert_eq!(contents, b"synced"),
            }
        }
        assert!(vanished > 0, "the entry can be lost though the data was synced");

        let fs = fs_with_db();
        let file = fs.create(&p("/db/a")).unwrap();
        file.write_all_at(b"synced", 0).unwrap();
        file.sync_data().unwrap();
        fs.crash_lose_all_unsynced();
        assert_eq!(fs.read_file(&p("/db/a")), None);
        assert_eq!(fs.list(&p("/db")).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_directory_survives_only_once_its_parent_is_synced() {
        let fs = CrashFs::new();
        fs.create_dir_all(&p("/a/b")).unwrap();
        fs.crash_lose_all_unsynced();
        assert_eq!(fs.list(&p("/a")).unwrap_err().kind(), io::ErrorKind::NotFound);

        let fs = CrashFs::new();
        fs.create_dir_all(&p("/a/b")).unwrap();
        fs.sync_dir(&p("/a")).unwrap(); // `b` is durable in `a`, but `a` is not in `/`.
        fs.crash_lose_all_unsynced();
        assert!(fs.list(&p("/a/b")).is_err(), "a child dies with its parent");

        let fs = CrashFs::new();
        fs.create_dir_all(&p("/a/b")).unwrap();
        fs.sync_dir(&p("/")).unwrap();
        fs.sync_dir(&p("/a")).unwrap();
        let file = fs.create(&p("/a/b/f")).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(&p("/a/b")).unwrap();
        fs.crash_lose_all_unsynced();
        assert_eq!(fs.list(&p("/a/b")).unwrap(), ["f"]);

        // Relative paths have their own root.
        let fs = CrashFs::new();
        fs.create_dir_all(&p("rel/dir")).unwrap();
        fs.sync_dir(&p("")).unwrap();
        fs.sync_dir(&p("rel")).unwrap();
        fs.crash(1);
        assert!(fs.list(&p("rel/dir")).is_ok());
    }

    #[test]
    fn write_eio_fails_and_writes_nothing() {
        let fs = fs_with_db();
        let file = durable_empty_file(&fs, "a");
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::WriteEio });
        let err = file.write_at(b"hello", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"");
        file.write_all_at(b"hello", 0).unwrap();
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"hello", "a fault fires once");
    }

    #[test]
    fn sync_eio_leaves_the_data_non_durable_even_after_a_later_successful_sync() {
        for seed in 0..SEEDS {
            let fs = fs_with_db();
            let file = durable_empty_file(&fs, "a");
            file.write_all_at(b"first", 0).unwrap();
            file.sync_data().unwrap();
            file.write_all_at(b"SECOND", 5).unwrap();
            fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::SyncEio });
            let err = file.sync_data().unwrap_err();
            assert_eq!(err.raw_os_error(), Some(EIO));
            assert_eq!(
                fs.read_file(&p("/db/a")).unwrap(),
                b"firstSECOND",
                "reads still see the dirty data"
            );
            file.sync_data().unwrap(); // The retry "succeeds"...
            assert_eq!(fs.durable_file(&p("/db/a")).unwrap(), b"first");
            fs.crash(seed);
            // ...but the data it was meant to protect is gone.
            assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"first", "seed {seed}");
        }
    }

    #[test]
    fn no_space_fails_writes_and_allocations_with_enospc() {
        let fs = fs_with_db();
        let file = durable_empty_file(&fs, "a");
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::NoSpace });
        let err = file.write_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(file.len().unwrap(), 0);

        // A fault armed for an op it does not apply to waits for the next one it applies to.
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::NoSpace });
        assert_eq!(file.len().unwrap(), 0);
        let err = file.allocate(4096).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert_eq!(file.len().unwrap(), 0, "a failed allocate changes nothing");
        file.allocate(4096).unwrap();
        assert_eq!(file.len().unwrap(), 4096);

        // Writes inside allocated space cannot run out of space; the first one past it does.
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::NoSpace });
        file.write_all_at(&[1; 96], 4000).unwrap();
        let err = file.write_at(&[1; 2], 4095).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        // set_len gives back the reservation above the new length.
        file.set_len(100).unwrap();
        file.set_len(4096).unwrap();
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::NoSpace });
        let err = file.write_at(&[1], 200).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC), "a hole from set_len is not reserved");
    }

    #[test]
    fn short_write_writes_half_and_returns_the_count() {
        let fs = fs_with_db();
        let file = durable_empty_file(&fs, "a");
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::ShortWrite });
        assert_eq!(file.write_at(b"0123456789", 0).unwrap(), 5);
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"01234");

        // A one-byte write cannot be short; write_all_at finishes after a short write.
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::ShortWrite });
        assert_eq!(file.write_at(b"z", 0).unwrap(), 1);
        let before = fs.op_count();
        file.write_all_at(b"abc", 10).unwrap();
        assert_eq!(fs.op_count() - before, 2, "one short write, then the rest");
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"z1234\0\0\0\0\0abc");
    }

    #[test]
    fn halt_stops_every_operation_until_crash() {
        let fs = fs_with_db();
        let file = durable_empty_file(&fs, "a");
        file.write_all_at(b"kept", 0).unwrap();
        file.sync_data().unwrap();
        let halt_at = fs.op_count() + 1;
        fs.inject(Fault { at_op: halt_at, kind: FaultKind::Halt });
        file.write_all_at(b"one", 4).unwrap(); // op halt_at - 1 still runs
        assert!(file.write_at(b"two", 7).is_err(), "the halting op fails");
        assert!(fs.is_halted());
        assert!(file.read_at(&mut [0; 4], 0).is_err());
        assert!(file.sync_data().is_err());
        assert!(file.len().is_err());
        assert!(fs.open(&p("/db/a")).is_err());
        assert!(fs.create(&p("/db/b")).is_err());
        assert!(fs.list(&p("/db")).is_err());
        assert!(fs.sync_dir(&p("/db")).is_err());
        assert!(fs.try_lock(&p("/db/LOCK")).is_err());
        assert!(fs.create_dir_all(&p("/x")).is_err());
        assert_eq!(fs.op_count(), halt_at + 10, "refused ops still count");
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"keptone", "no effect after the halt");

        fs.crash_lose_all_unsynced();
        assert!(!fs.is_halted());
        let file = fs.open(&p("/db/a")).unwrap();
        let mut buf = vec![0; 4];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, b"kept");
        assert_eq!(file.len().unwrap(), 4);
    }

    #[test]
    fn a_second_lock_is_refused_and_locks_are_released_on_drop_and_on_crash() {
        let fs = fs_with_db();
        let lock_path = p("/db/LOCK");
        let first = fs.try_lock(&lock_path).unwrap();
        assert!(first.is_some());
        assert!(fs.try_lock(&lock_path).unwrap().is_none(), "held: refused");
        assert_eq!(fs.list(&p("/db")).unwrap(), ["LOCK"], "a lock file is a file");
        drop(first);
        let second = fs.try_lock(&lock_path).unwrap();
        assert!(second.is_some(), "released on drop");

        fs.crash(3);
        let third = fs.try_lock(&lock_path).unwrap();
        assert!(third.is_some(), "released by the crash");
        drop(second); // The old guard must not release the new holder's lock.
        assert!(fs.try_lock(&lock_path).unwrap().is_none(), "third still held");
        drop(third);
        assert!(fs.try_lock(&lock_path).unwrap().is_some());
    }

    #[test]
    fn old_handles_fail_after_a_crash() {
        let fs = fs_with_db();
        let file = durable_empty_file(&fs, "a");
        file.write_all_at(b"abc", 0).unwrap();
        file.sync_data().unwrap();
        fs.crash(0);
        assert!(file.read_at(&mut [0; 3], 0).is_err());
        assert!(file.write_at(b"x", 0).is_err());
        assert!(file.sync_data().is_err());
        assert!(file.len().is_err());
        assert!(file.set_len(0).is_err());
        assert!(file.allocate(10).is_err());
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"abc", "no effect through a dead handle");
        let fresh = fs.open(&p("/db/a")).unwrap();
        let mut buf = [0u8; 3];
        fresh.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abc");
        drop(file);
        fresh.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abc", "dropping a dead handle is harmless");
    }

    /// Runs a fixed workload with plenty of unsynced state, crashes with `seed`, and returns
    /// everything left.
    fn crash_result(seed: u64) -> Vec<(PathBuf, Vec<u8>)> {
        let fs = fs_with_db();
        for i in 0..8u8 {
            let file = fs.create(&p(&format!("/db/f{i}"))).unwrap();
            file.write_all_at(&pattern(1500 + usize::from(i) * 100, i), 0).unwrap();
            if i % 2 == 0 {
                file.sync_data().unwrap();
            }
            file.write_all_at(&pattern(700, i + 100), 300).unwrap();
            if i == 3 {
                fs.sync_dir(&p("/db")).unwrap();
            }
        }
        fs.rename(&p("/db/f1"), &p("/db/f9")).unwrap();
        fs.remove_file(&p("/db/f2")).unwrap();
        fs.crash(seed);
        fs.list_all()
            .into_iter()
            .map(|path| {
                let contents = fs.read_file(&path).unwrap();
                (path, contents)
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_result() {
        let mut distinct = BTreeSet::new();
        for seed in 0..50 {
            let first = crash_result(seed);
            assert_eq!(first, crash_result(seed), "seed {seed} must replay exactly");
            distinct.insert(first);
        }
        assert!(distinct.len() > 10, "different seeds explore different outcomes");
    }

    #[test]
    fn missing_files_and_directories_are_not_found() {
        let fs = fs_with_db();
        let kind = |r: io::Result<Arc<dyn File>>| r.unwrap_err().kind();
        assert_eq!(kind(fs.open(&p("/db/missing"))), io::ErrorKind::NotFound);
        assert_eq!(kind(fs.create(&p("/nodir/a"))), io::ErrorKind::NotFound);
        assert_eq!(
            fs.rename(&p("/db/missing"), &p("/db/b")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(fs.remove_file(&p("/db/missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(fs.list(&p("/nodir")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(fs.sync_dir(&p("/nodir")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(fs.try_lock(&p("/nodir/LOCK")).unwrap_err().kind(), io::ErrorKind::NotFound);
        let shown = fs.open(&p("/db/missing")).err().map(|e| e.to_string());
        assert_eq!(shown.as_deref(), Some("/db/missing: no such file or directory"));
    }

    #[test]
    fn files_read_write_and_resize_like_a_file_system() {
        let fs = fs_with_db();
        let file = durable_empty_file(&fs, "a");
        file.write_all_at(b"hello", 2).unwrap();
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"\0\0hello", "gaps read as zeros");
        let mut buf = [0u8; 10];
        assert_eq!(file.read_at(&mut buf, 4).unwrap(), 3, "short only at the end");
        assert_eq!(&buf[..3], b"llo");
        assert_eq!(file.read_at(&mut buf, 100).unwrap(), 0);
        file.allocate(3).unwrap();
        assert_eq!(file.len().unwrap(), 7, "allocate never truncates");
        file.set_len(4).unwrap();
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"\0\0he");
        // Create truncates an existing file, through the same inode.
        let again = fs.create(&p("/db/a")).unwrap();
        assert_eq!(file.len().unwrap(), 0);
        again.write_all_at(b"x", 0).unwrap();
        assert_eq!(file.len().unwrap(), 1);
        // A rename replaces its target; a removed file stays readable through an open handle.
        let b = fs.create(&p("/db/b")).unwrap();
        b.write_all_at(b"bee", 0).unwrap();
        fs.rename(&p("/db/b"), &p("/db/a")).unwrap();
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"bee");
        assert_eq!(file.len().unwrap(), 1, "the replaced inode lives on while open");
        fs.remove_file(&p("/db/a")).unwrap();
        assert_eq!(b.len().unwrap(), 3);
        assert_eq!(fs.list(&p("/db")).unwrap(), Vec::<String>::new());
        assert_eq!(
            fs.rename(&p("/db/x"), &p("/other/x")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn cross_directory_renames_and_oversized_writes_are_refused() {
        let fs = fs_with_db();
        fs.create_dir_all(&p("/other")).unwrap();
        fs.create(&p("/db/a")).unwrap();
        assert_eq!(
            fs.rename(&p("/db/a"), &p("/other/a")).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        let file = fs.open(&p("/db/a")).unwrap();
        assert!(file.write_at(b"x", MAX_FILE_BYTES).is_err());
        assert!(file.set_len(MAX_FILE_BYTES + 1).is_err());
        assert!(file.write_at(b"x", u64::MAX).is_err(), "no overflow on huge offsets");
    }

    #[test]
    fn raw_writes_and_bit_flips_change_both_images() {
        let fs = CrashFs::new();
        fs.write_file_raw(&p("/x/y/seg"), &[0u8, 0, 0]).unwrap();
        fs.flip_bit(&p("/x/y/seg"), 9).unwrap();
        assert_eq!(fs.read_file(&p("/x/y/seg")).unwrap(), [0, 2, 0]);
        // An unsynced append: the flip past the durable end changes the volatile image only.
        let file = fs.open(&p("/x/y/seg")).unwrap();
        file.write_all_at(&[0], 3).unwrap();
        fs.flip_bit(&p("/x/y/seg"), 24).unwrap();
        assert_eq!(fs.read_file(&p("/x/y/seg")).unwrap(), [0, 2, 0, 1]);
        assert_eq!(fs.durable_file(&p("/x/y/seg")).unwrap(), [0, 2, 0]);
        file.set_len(3).unwrap();
        file.sync_data().unwrap();
        drop(file);
        assert!(fs.flip_bit(&p("/x/y/seg"), 24).is_err(), "past the end");
        assert!(fs.flip_bit(&p("/x/y/none"), 0).is_err(), "missing file");
        fs.crash(5);
        assert_eq!(fs.durable_file(&p("/x/y/seg")).unwrap(), [0, 2, 0]);
        assert_eq!(fs.list_all(), [p("/x/y/seg")]);
    }

    #[test]
    fn removed_and_replaced_files_are_freed() {
        let fs = fs_with_db();
        for i in 0..100 {
            let file = fs.create(&p("/db/tmp")).unwrap();
            file.write_all_at(&[i; 100], 0).unwrap();
            fs.rename(&p("/db/tmp"), &p("/db/cur")).unwrap();
            fs.sync_dir(&p("/db")).unwrap();
        }
        let victim = fs.create(&p("/db/victim")).unwrap();
        fs.remove_file(&p("/db/victim")).unwrap();
        drop(victim);
        assert_eq!(
            fs.lock().inodes.len(),
            2,
            "a crash could keep the create and lose the remove: `victim` must stay"
        );
        fs.sync_dir(&p("/db")).unwrap();
        assert_eq!(fs.lock().inodes.len(), 1, "only `cur` is left");
    }

    /// Replaces `/db/cur` with `contents` through `/db/cur.tmp`, halting at operation `halt_at`
    /// (counted from the start), optionally skipping the fsync of the temporary file.
    fn replace_with_halt(fs: &CrashFs, contents: &[u8], halt_at: u64, fsync_tmp: bool) {
        fs.inject(Fault { at_op: halt_at, kind: FaultKind::Halt });
        let steps = || -> io::Result<()> {
            let tmp = fs.create(&p("/db/cur.tmp"))?;
            tmp.write_all_at(contents, 0)?;
            if fsync_tmp {
                tmp.sync_data()?;
            }
            fs.rename(&p("/db/cur.tmp"), &p("/db/cur"))?;
            fs.sync_dir(&p("/db"))
        };
        let _ = steps(); // Fails from the halt on; what matters is what the crash leaves.
        fs.clear_faults();
    }

    #[test]
    fn write_fsync_rename_sync_dir_replaces_a_file_atomically_at_every_crash_point() {
        let old = pattern(1500, 11);
        let new = pattern(2500, 12);
        let mut saw_new = false;
        // Operations 0..8 cover the whole replacement; each crash point gets several seeds.
        for halt_at in 0..8 {
            for seed in 0..20 {
                let fs = CrashFs::new();
                fs.write_file_raw(&p("/db/cur"), &old).unwrap();
                let start = fs.op_count();
                replace_with_halt(&fs, &new, start + halt_at, true);
                fs.crash(seed);
                let after = fs.read_file(&p("/db/cur")).unwrap();
                assert!(
                    after == old || after == new,
                    "halt at {halt_at}, seed {seed}: {} bytes, neither old nor new",
                    after.len()
                );
                saw_new |= after == new;
            }
        }
        assert!(saw_new, "a replacement that completes is kept");
    }

    #[test]
    fn renaming_an_unsynced_file_over_another_can_expose_a_partial_file() {
        let old = pattern(1500, 11);
        let new = pattern(2500, 12);
        let mut partial = 0;
        for seed in 0..SEEDS {
            let fs = CrashFs::new();
            fs.write_file_raw(&p("/db/cur"), &old).unwrap();
            // No halt: every step runs, but the new contents were never fsynced.
            replace_with_halt(&fs, &new, u64::MAX, false);
            fs.crash(seed);
            let after = fs.read_file(&p("/db/cur")).unwrap();
            if after != old && after != new {
                partial += 1;
            }
        }
        assert!(partial > 0, "the classic bug must be caught by CrashFs");
    }

    #[test]
    fn a_power_cut_copy_keeps_only_what_is_synced_and_leaves_the_original_alone() {
        let fs = fs_with_db();
        let file = durable_empty_file(&fs, "a");
        file.write_all_at(b"synced", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"+later", 6).unwrap();
        let unnamed = fs.create(&p("/db/b")).unwrap();
        unnamed.write_all_at(b"b", 0).unwrap();
        unnamed.sync_data().unwrap();
        let copy = fs.power_cut_copy();
        assert_eq!(copy.read_file(&p("/db/a")).unwrap(), b"synced");
        assert_eq!(copy.read_file(&p("/db/b")), None, "a name never synced is lost");
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"synced+later", "the original runs on");
        file.sync_data().unwrap();
        fs.sync_dir(&p("/db")).unwrap();
        assert_eq!(fs.power_cut_copy().read_file(&p("/db/b")).unwrap(), b"b");
    }

    #[test]
    fn a_fork_holds_everything_unsynced_included_and_lives_apart() {
        let fs = fs_with_db();
        let file = durable_empty_file(&fs, "a");
        file.write_all_at(b"synced", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"+later", 6).unwrap();
        let fork = fs.fork();
        assert_eq!(fork.read_file(&p("/db/a")).unwrap(), b"synced+later");
        assert_eq!(fork.op_count(), fs.op_count());
        // What is unsynced in the original is unsynced in the fork: a power cut may lose it.
        let cut = fork.power_cut_copy();
        assert_eq!(cut.read_file(&p("/db/a")).unwrap(), b"synced");
        // Each goes its own way; the original's handle still works and reaches only it.
        file.write_all_at(b"!", 0).unwrap();
        let again = fork.open(&p("/db/a")).unwrap();
        again.write_all_at(b"?", 0).unwrap();
        assert_eq!(fs.read_file(&p("/db/a")).unwrap(), b"!ynced+later");
        assert_eq!(fork.read_file(&p("/db/a")).unwrap(), b"?ynced+later");
        // A fault armed in the original is not armed in a fork.
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::WriteEio });
        let fork = fs.fork();
        fork.open(&p("/db/a")).unwrap().write_all_at(b"x", 0).unwrap();
        assert!(file.write_all_at(b"x", 0).is_err(), "the original's fault fires");
    }

    #[test]
    fn a_hook_sees_every_operation_and_can_fail_or_pause_one() {
        use std::sync::mpsc;
        let fs = fs_with_db();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        fs.set_hook(Some(Arc::new(move |e: &OpEvent<'_>| {
            log.lock().unwrap().push((e.kind, e.path.map(Path::to_path_buf)));
            if e.kind == OpKind::RemoveFile {
                return Err(eio());
            }
            Ok(())
        })));
        let file = fs.create(&p("/db/a")).unwrap();
        file.write_all_at(b"x", 0).unwrap();
        let before = fs.op_count();
        assert_eq!(fs.remove_file(&p("/db/a")).unwrap_err().raw_os_error(), Some(EIO));
        assert_eq!(fs.op_count(), before, "a failed hook keeps the operation from running");
        assert_eq!(fs.list(&p("/db")).unwrap(), ["a"], "the remove had no effect");
        drop(file);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (OpKind::Create, Some(p("/db/a"))),
                (OpKind::Write, None),
                (OpKind::RemoveFile, Some(p("/db/a"))),
                (OpKind::List, Some(p("/db"))),
                (OpKind::Close, None),
            ]
        );

        // Pausing: the sync waits inside the hook until the test lets it go.
        let (paused_tx, paused_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        fs.set_hook(Some(Arc::new(move |e: &OpEvent<'_>| {
            if e.kind == OpKind::Sync {
                paused_tx.send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
            }
            Ok(())
        })));
        let file = fs.open(&p("/db/a")).unwrap();
        fs.sync_dir(&p("/db")).unwrap();
        let syncer = std::thread::spawn(move || file.sync_data());
        paused_rx.recv().unwrap();
        assert_eq!(fs.durable_file(&p("/db/a")), Some(Vec::new()), "not synced while paused");
        go_tx.send(()).unwrap();
        syncer.join().unwrap().unwrap();
        assert_eq!(fs.durable_file(&p("/db/a")), Some(b"x".to_vec()));
        fs.set_hook(None);
    }

    #[test]
    fn crash_fs_serves_as_a_shared_file_system_across_threads() {
        let crash_fs = fs_with_db();
        let fs: crate::io::Fs = Arc::new(crash_fs.clone());
        let file = fs.create(&p("/db/a")).unwrap();
        let writers: Vec<_> = (0..4u8)
            .map(|i| {
                let file = Arc::clone(&file);
                std::thread::spawn(move || {
                    file.write_all_at(&[i; 512], u64::from(i) * 512).unwrap();
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        file.sync_data().unwrap();
        fs.sync_dir(&p("/db")).unwrap();
        crash_fs.crash(9);
        let after = crash_fs.read_file(&p("/db/a")).unwrap();
        assert_eq!(after.len(), 2048);
        for i in 0..4u8 {
            let sector = &after[usize::from(i) * 512..usize::from(i + 1) * 512];
            assert!(sector.iter().all(|&b| b == i), "sector {i} written by thread {i}");
        }
    }
}
