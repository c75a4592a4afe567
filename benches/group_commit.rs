//! Concurrent writers appending one 1 KiB entry each, durable on return, sharing fdatasyncs.
//!
//! Each writer appends under a lock that hands out indices (the write only reaches the kernel,
//! `SyncPolicy::Never`), then calls `sync()`, which joins the running group commit or leads the
//! next one. One iteration is one entry made durable, so the throughput is entries/s over all
//! writers.

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use raftwal::SyncPolicy;

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_commit");
    let data = common::payload(1024);
    group.throughput(Throughput::Elements(1));
    for writers in [1u64, 2, 4, 8] {
        let dir = common::temp_dir();
        let log = common::Log::open(dir.path(), SyncPolicy::Never, 64 << 20);
        group.bench_with_input(BenchmarkId::from_parameter(writers), &writers, |b, &writers| {
            b.iter_custom(|iters| {
                let per_writer = iters.div_ceil(writers);
                let started = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..writers {
                        s.spawn(|| {
                            for _ in 0..per_writer {
                                log.append(1, &data);
                                log.storage.sync().expect("sync");
                            }
                        });
                    }
                });
                let elapsed = started.elapsed();
                // Report the time per entry actually written (iters rounded up to the writers).
                Duration::from_secs_f64(
                    elapsed.as_secs_f64() * iters as f64 / (per_writer * writers) as f64,
                )
            })
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = group_commit }
criterion_main!(benches);
