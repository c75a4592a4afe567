//! raftwal: a segmented, CRC-checked write-ahead log with a snapshot store, exposed as an
//! etcd-raft style [`Storage`], plus a bundled Raft core that uses it.
//!
//! The crate is layered; each layer depends only on the ones above it in this list:
//!
//! - [`types`], [`codec`], [`contract`]: the shared Raft types, their little-endian encoding,
//!   and the [`Storage`] trait with the argument rules every storage shares; [`rng`], the one
//!   seeded generator behind every reproducible random choice; [`metrics`], the counters a log
//!   keeps of what it did;
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
//!
//! # A Raft node on a durable log
//!
//! The bundled core hands back a [`raft::Ready`]; persist it with one [`WalStorage::save`] (one
//! write, one fsync), only then send its messages, apply what it committed, and advance:
//!
//! ```
//! use std::sync::Arc;
//! use raftwal::raft::{Config, RawNode, StateRole};
//! use raftwal::{Entry, EntryType, WalOptions, WalStorage};
//!
//! /// Handles every Ready: the loop an application runs after each tick, step or propose.
//! fn drive(
//!     node: &mut RawNode<Arc<WalStorage>>,
//!     storage: &WalStorage,
//!     applied: &mut Vec<Entry>,
//! ) -> raftwal::Result<()> {
//!     while node.has_ready() {
//!         let rd = node.ready();
//!         // 1. Persist: a snapshot first, then entries and hard state in one durable save.
//!         if let Some(snapshot) = &rd.snapshot {
//!             storage.apply_snapshot(snapshot.clone())?;
//!         }
//!         storage.save(rd.hard_state.as_ref(), &rd.entries)?;
//!         // 2. Only now send rd.messages to their peers (none in a one-node cluster).
//!         assert!(rd.messages.is_empty());
//!         // 3. Apply what is committed (membership entries go to `apply_conf_change`; a new
//!         //    leader's entry is empty).
//!         let normal = |e: &&Entry| e.entry_type == EntryType::Normal && !e.data.is_empty();
//!         applied.extend(rd.committed_entries.iter().filter(normal).cloned());
//!         // 4. Tell the core it was all done.
//!         node.advance(rd);
//!     }
//!     Ok(())
//! }
//!
//! # fn main() -> raftwal::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let storage = Arc::new(WalStorage::open(dir.path(), WalOptions::default())?);
//! let mut node = RawNode::new(&Config::new(1), storage.clone())?;
//! let mut applied = Vec::new();
//! node.bootstrap([1u64])?; // a new one-node cluster
//! drive(&mut node, &storage, &mut applied)?;
//! node.campaign()?;
//! drive(&mut node, &storage, &mut applied)?;
//! assert_eq!(node.status().soft_state.raft_state, StateRole::Leader);
//! node.propose(&b"hello"[..])?;
//! drive(&mut node, &storage, &mut applied)?;
//! assert_eq!(applied[0].data, &b"hello"[..]);
//! # Ok(())
//! # }
//! ```

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
pub mod metrics;
mod options;
pub mod raft;
pub mod rng;
pub mod snapshot;
pub mod storage;
pub mod types;
pub mod wal;

pub use contract::Storage;
pub use error::{CorruptionKind, Error, Result};
pub use metrics::{RecoveryMetrics, Summary, WalMetrics};
pub use options::{RecoveryMode, SyncPolicy, WalOptions};
pub use storage::{
    GroupStorage, LogEngine, MemoryStorage, SnapshotReader, SnapshotWriter, WalStorage,
};
pub use types::{
    ConfState, Entry, EntryType, HardState, RaftState, RepairState, Snapshot, SnapshotMetadata,
};
pub use wal::{PurgeReport, WriteBatch};

/// The README's example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
