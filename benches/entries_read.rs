//! `entries()` reads of 64 × 1 KiB: from the entry cache, from sealed segments,
//! and of the same newest entries after a reopen (empty cache; files in the page cache).

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use raftwal::{Storage, SyncPolicy};

const SPAN: u64 = 64;

/// Start positions spread over `[from, to - SPAN)`, reproducibly.
fn starts(from: u64, to: u64) -> impl FnMut() -> u64 {
    let mut rng = raftwal::rng::Rng::new(0x9E37_79B9_7F4A_7C15);
    move || rng.in_range(from..to - SPAN)
}

fn entries_read(c: &mut Criterion) {
    let dir = common::temp_dir();
    // Small segments: most of a 32 MiB log lies in sealed ones.
    let log = common::Log::open(dir.path(), SyncPolicy::Never, 8 << 20);
    log.fill(32 << 20);
    let last = log.last_index();
    // The newest 4 MiB are in the 16 MiB entry cache; the oldest 8 MiB only in sealed segments.
    let cached_from = last - 4096;
    let sealed_to = 8192;

    let mut group = c.benchmark_group("entries_read");
    group.throughput(Throughput::Bytes(SPAN * 1024));
    let mut next = starts(cached_from, last + 1);
    group.bench_function("cache_hit", |b| {
        b.iter(|| {
            let lo = next();
            log.storage.entries(lo, lo + SPAN, u64::MAX).expect("read")
        })
    });
    let mut next = starts(1, sealed_to);
    group.bench_function("sealed_segment", |b| {
        b.iter(|| {
            let lo = next();
            log.storage.entries(lo, lo + SPAN, u64::MAX).expect("read")
        })
    });
    log.storage.close().expect("close");
    let log = common::Log::open(dir.path(), SyncPolicy::Never, 8 << 20);
    let mut next = starts(cached_from, last + 1);
    group.bench_function("cold_after_reopen", |b| {
        b.iter(|| {
            let lo = next();
            log.storage.entries(lo, lo + SPAN, u64::MAX).expect("read")
        })
    });
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = entries_read }
criterion_main!(benches);
