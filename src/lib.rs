//! raftwal: a segmented, CRC-checked write-ahead log with a snapshot store, exposed as an
//! etcd-raft style [`Storage`], plus a bundled Raft core that uses it.
//!
//! The crate is layered; each layer depends only on the ones above it in this list:
//!
//! - [`types`], [`codec`], [`contract`]: the shared Raft types, their little-endian encoding,
//!   and the [`Storage`] trait with the argument rules every storage shares;
//! - [`io`]: the seam every file and directory operation goes through (the real file system,
//!   and `CrashFs` behind the `testing` feature);
//! - [`wal`]: the segmented, CRC-checked write-ahead log;
//! - [`snapshot`]: the snapshot store;
//! - [`storage`]: [`MemoryStorage`] (the reference model) and [`WalStorage`] (WAL + snapshot
//!   store behind [`Storage`]);
//! - [`raft`]: the Raft core (RawNode / Ready / Advance), which reads its log through any
//!   [`Storage`] and does no I/O of its own;
//! - `adapters` (behind the `raft-rs` and `openraft` features): [`WalStorage`] as the storage of
//!   raft-rs and openraft nodes;
//! - `fuzzing` (behind the `testing` feature): the checks the fuzz targets run, also replayed
//!   over the committed corpus by `cargo test`.
//!
//! See `DESIGN.md` for the architecture, the on-disk formats and the invariants.

#![deny(unsafe_code)]

#[cfg(any(feature = "raft-rs", feature = "openraft"))]
pub mod adapters;
pub mod codec;
pub mod contract;
#[cfg(test)]
mod design_doc;
mod error;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod io;
mod options;
pub mod raft;
pub mod snapshot;
pub mod storage;
pub mod types;
pub mod wal;

pub use contract::Storage;
pub use error::{CorruptionKind, Error, Result};
pub use options::{RecoveryMode, SyncPolicy, WalOptions};
pub use storage::{MemoryStorage, SnapshotReader, SnapshotWriter, WalStorage};
pub use types::{ConfState, Entry, EntryType, HardState, RaftState, Snapshot, SnapshotMetadata};

/// The README's example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
