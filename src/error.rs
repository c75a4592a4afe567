//! raftwal's one error type.

use std::fmt;
use std::path::PathBuf;

/// What is wrong with bytes read from disk. Recovery and callers `match` on it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorruptionKind {
    /// A checksum (a record's chained CRC, a header's CRC, a snapshot body's CRC) does not match.
    ChecksumMismatch,
    /// A file does not start with the magic bytes of its kind.
    BadMagic,
    /// A file was written by a format version this build does not read.
    UnsupportedVersion(u32),
    /// A record or header ends before its declared length: a write cut short.
    Torn,
    /// A length field is zero where it must not be, beyond the limit, or beyond the file's end.
    BadLength(u64),
    /// Segments or records do not follow each other: a sequence number, index or chain skips.
    Gap,
    /// A record passed its checksum but its contents do not decode or contradict the log.
    Malformed(String),
    /// A file the log refers to is not there.
    Missing,
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptionKind::ChecksumMismatch => write!(f, "checksum mismatch"),
            CorruptionKind::BadMagic => write!(f, "bad magic"),
            CorruptionKind::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            CorruptionKind::Torn => write!(f, "torn write"),
            CorruptionKind::BadLength(len) => write!(f, "bad length {len}"),
            CorruptionKind::Gap => write!(f, "gap in sequence"),
            CorruptionKind::Malformed(why) => write!(f, "malformed record: {why}"),
            CorruptionKind::Missing => write!(f, "missing file"),
        }
    }
}

/// Every error raftwal returns.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested index lies at or below the log's dummy entry: it was compacted away.
    #[error("requested index is unavailable due to compaction")]
    Compacted,
    /// The requested index lies beyond the last entry.
    #[error("requested entry is not available yet")]
    Unavailable,
    /// The snapshot is not newer than the one already stored.
    #[error("requested snapshot is older than the existing snapshot")]
    SnapshotOutOfDate,
    /// The newest snapshot is still being written; ask again later.
    #[error("snapshot is temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The caller broke the storage contract (where etcd would panic). Nothing was changed.
    #[error("storage contract violated: {0}")]
    ContractViolation(String),
    /// The operating system reported an error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Bytes on disk are damaged; `segment` names the file (a WAL segment or a snapshot file)
    /// and `offset` the byte within it where the damage was found.
    #[error("corruption in {segment:?} at offset {offset}: {kind}")]
    Corruption {
        /// The damaged file, relative to the storage directory.
        segment: PathBuf,
        /// Byte offset of the damaged header or record within the file.
        offset: u64,
        /// What is wrong.
        kind: CorruptionKind,
    },
    /// An earlier fsync failed; the log refuses every write from then on, because the kernel
    /// may have dropped the dirty pages and a retry could report success falsely.
    #[error("the log is poisoned by an earlier failed sync; reopen it to recover")]
    Poisoned,
    /// Another handle (in this or another process) holds the directory's lock.
    #[error("the directory is locked by another raftwal instance")]
    Locked,
    /// Bytes received from a peer (a Raft message or a membership change) do not decode.
    #[error("cannot decode: {0}")]
    Decode(#[from] crate::codec::DecodeError),
    /// The Raft core refused a proposal: no leader is known, forwarding is disabled, a
    /// leadership transfer is under way, a membership change is pending, or the uncommitted
    /// log is over its size limit. The proposal may be retried.
    #[error("raft proposal dropped")]
    ProposalDropped,
    /// A Raft configuration is invalid; the text says why.
    #[error("invalid raft configuration: {0}")]
    InvalidConfig(String),
    /// A local-only Raft message was passed to `RawNode::step`.
    #[error("raft: cannot step a local message")]
    StepLocalMsg,
    /// A response came from a peer this node does not track.
    #[error("raft: cannot step a response from an unknown peer")]
    StepPeerNotFound,
}

/// `Result` with raftwal's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::ContractViolation`] with the given explanation.
    pub(crate) fn contract(why: impl Into<String>) -> Error {
        Error::ContractViolation(why.into())
    }
}
