//! The propose → ready → persist → send → apply → advance cycle of raftwal's Raft core, for one
//! and three voters in one process, on `MemoryStorage` and on `WalStorage` with and without an
//! fdatasync per Ready (`SyncPolicy::Always` / `SyncPolicy::Never`, in a temp directory).

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use std::sync::Arc;

use common::cycle::Cluster;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use raftwal::{MemoryStorage, SyncPolicy, WalOptions, WalStorage};

/// Bytes of each proposed entry.
const PAYLOAD_BYTES: usize = 128;

fn raft_cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_cycle");
    let data = common::payload(PAYLOAD_BYTES);
    for voters in [1usize, 3] {
        let stores = (0..voters).map(|_| Arc::new(MemoryStorage::new())).collect();
        let mut cluster = Cluster::new(stores);
        group.bench_function(BenchmarkId::new("memory", voters), |b| {
            b.iter(|| cluster.propose_and_commit(&data))
        });
        for (name, sync_policy) in
            [("wal_fsync", SyncPolicy::Always), ("wal_nosync", SyncPolicy::Never)]
        {
            let dir = common::temp_dir();
            let options = WalOptions { sync_policy, ..WalOptions::default() };
            let stores = (0..voters)
                .map(|k| {
                    let path = dir.path().join(format!("node{k}"));
                    Arc::new(WalStorage::open(path, options.clone()).expect("open"))
                })
                .collect();
            let mut cluster = Cluster::new(stores);
            group.bench_function(BenchmarkId::new(name, voters), |b| {
                b.iter(|| cluster.propose_and_commit(&data))
            });
        }
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = raft_cycle }
criterion_main!(benches);
