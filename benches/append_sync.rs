//! One entry per append, durable on return (`SyncPolicy::Always`): the fdatasync-bound path.

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use raftwal::SyncPolicy;

fn append_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_sync");
    for size in [64usize, 1024, 16 << 10] {
        let dir = common::temp_dir();
        let log = common::Log::open(dir.path(), SyncPolicy::Always, 64 << 20);
        let data = common::payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| log.append(1, &data))
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = append_sync }
criterion_main!(benches);
