//! raftwal: a segmented, CRC-checked write-ahead log with a snapshot store, exposed as an
//! etcd-raft style [`Storage`], plus a bundled Raft core that uses it.
//!
//! The crate is layered; each layer depends only on the ones above it in this list:
//!
//! - [`types`] and [`codec`]: the shared Raft types and their little-endian encoding;
//! - [`storage`]: the [`Storage`] contract and [`MemoryStorage`], the model the durable
//!   storage is tested against;
//! - [`raft`]: the Raft core (RawNode / Ready / Advance), which reads its log through a
//!   [`Storage`] and does no I/O of its own.
//!
//! See `DESIGN.md` for the architecture, the on-disk formats and the invariants.

#![deny(unsafe_code)]

pub mod codec;
mod error;
pub mod raft;
pub mod storage;
pub mod types;

pub use error::{CorruptionKind, Error, Result};
pub use storage::{MemoryStorage, Storage};
pub use types::{ConfState, Entry, EntryType, HardState, RaftState, Snapshot, SnapshotMetadata};

/// The README's example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
