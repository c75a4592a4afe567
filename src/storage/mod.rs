//! The storages: `MemoryStorage` (in memory, the reference model) and `WalStorage` (durable).
//! Both implement [`crate::Storage`] with the same semantics (see `crate::contract`).

mod memory;
mod wal;

pub use memory::MemoryStorage;
pub use wal::{SNAP_DIR, SnapshotReader, SnapshotWriter, WAL_DIR, WalStorage};
