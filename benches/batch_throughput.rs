//! Batches of 1 KiB entries, one fdatasync per batch.

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use raftwal::SyncPolicy;

fn batch_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_throughput");
    let data = common::payload(1024);
    for count in [16usize, 256, 1024] {
        let dir = common::temp_dir();
        let log = common::Log::open(dir.path(), SyncPolicy::Always, 64 << 20);
        group.throughput(Throughput::Bytes((count * data.len()) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, &count| {
            b.iter(|| log.append(count, &data))
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = batch_throughput }
criterion_main!(benches);
