//! Opening (recovering) a 64 MiB log whose files are in the page cache: the scan, the checks and
//! the index rebuild.

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use raftwal::{Storage, SyncPolicy, WalOptions, WalStorage};

fn recovery(c: &mut Criterion) {
    let dir = common::temp_dir();
    let log = common::Log::open(dir.path(), SyncPolicy::Never, 64 << 20);
    log.fill(64 << 20);
    let last = log.last_index();
    log.storage.close().expect("close");
    let options = WalOptions::default();
    let scanned = {
        let storage = WalStorage::open(dir.path(), options.clone()).expect("open");
        storage.wal().recovery_report().bytes_scanned
    };

    let mut group = c.benchmark_group("recovery");
    group.throughput(Throughput::Bytes(scanned));
    group.bench_function("open_64MiB", |b| {
        b.iter(|| {
            let storage = WalStorage::open(dir.path(), options.clone()).expect("open");
            assert_eq!(storage.last_index().expect("last index"), last);
            storage
        })
    });
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = recovery }
criterion_main!(benches);
