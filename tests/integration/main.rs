//! raftwal's integration tests, in one binary so the workspace links it once.

#[cfg(feature = "openraft")]
mod adapter_openraft;
#[cfg(feature = "raft-rs")]
mod adapter_raft_rs;
mod engine;
mod etcd_cases;
mod footer;
mod fuzz_corpus;
mod kill;
mod memory_storage;
mod metrics;
mod model;
mod multi_raft;
mod raft_election;
mod raft_features;
mod raft_hardening;
mod raft_membership;
mod raft_net;
mod raft_properties;
mod raft_repair;
mod raft_replication;
mod raft_sim;
mod raft_sim_multi;
mod recycle;
mod repair;
mod sim_common;
mod snapshot_hardening;
mod wal;
mod wal_hardening;
mod wal_recovery_hardening;
mod wal_storage;
