//! Adapters that make [`WalStorage`](crate::WalStorage) the durable storage of other Rust Raft
//! engines. Each sits behind its own cargo feature, off by default:
//!
//! - `raft-rs`: `raft_rs::RaftRsStorage`, a `raft::Storage` (the `raft` crate 0.7, tikv's
//!   raft-rs) with the calls that persist a `Ready`;
//! - `openraft`: `openraft::OpenRaftLogStore`, openraft 0.9's `RaftLogStorage` and
//!   `RaftLogReader`.
//!
//! Each module's documentation (and `DESIGN.md`, "Adapters") tables how its engine's log
//! semantics map onto raftwal's, which are etcd's.

#[cfg(feature = "openraft")]
pub mod openraft;
#[cfg(feature = "raft-rs")]
pub mod raft_rs;
