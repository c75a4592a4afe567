//! raftwal's integration tests, in one binary so the workspace links it once.

#[cfg(feature = "openraft")]
mod adapter_openraft;
#[cfg(feature = "raft-rs")]
mod adapter_raft_rs;
mod etcd_cases;
mod memory_storage;
mod model;
mod wal;
mod wal_storage;
