//! raftwal's integration tests, in one binary so the workspace links it once.

mod etcd_cases;
mod fuzz_corpus;
mod kill;
mod memory_storage;
mod model;
mod wal;
mod wal_storage;
