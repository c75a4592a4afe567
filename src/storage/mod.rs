//! The storages: `MemoryStorage` (in memory, the reference model), and the durable ones:
//! `LogEngine` (many groups in one directory), `GroupStorage` (one of its groups) and
//! `WalStorage` (an engine with one group). All implement [`crate::Storage`] with the same
//! semantics (see `crate::contract`).

mod engine;
mod group;
mod memory;
mod wal;

pub use engine::LogEngine;
pub use group::{GroupStorage, SnapshotReader, SnapshotWriter};
pub use memory::MemoryStorage;
pub use wal::{WAL_STORAGE_GROUP, WalStorage};

/// Subdirectory of the WAL segments.
pub const WAL_DIR: &str = "wal";
/// Subdirectory of the snapshot files.
pub const SNAP_DIR: &str = "snap";
