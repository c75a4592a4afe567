//! Writing a 4 MiB snapshot (file made durable, then the WAL marker synced) and reading it back
//! through the streaming, checksummed reader; uncompressed and with zstd level 3.

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use std::io::Read;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use raftwal::{Entry, WalOptions, WalStorage};

const SNAPSHOT_BYTES: usize = 4 << 20;

/// Data that compresses somewhat, like a state machine image.
fn state_image() -> bytes::Bytes {
    let mut data = Vec::with_capacity(SNAPSHOT_BYTES);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    while data.len() < SNAPSHOT_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(format!("key{:08} value{:016x}\n", x % 100_000, x).as_bytes());
    }
    data.truncate(SNAPSHOT_BYTES);
    data.into()
}

fn snapshot_write_read(c: &mut Criterion) {
    let data = state_image();
    let mut group = c.benchmark_group("snapshot_write_read");
    group.throughput(Throughput::Bytes(SNAPSHOT_BYTES as u64));
    for level in [0, 3] {
        let dir = common::temp_dir();
        let options = WalOptions { snapshot_compression_level: level, ..Default::default() };
        let storage = WalStorage::open(dir.path(), options).expect("open");
        let mut index = 0;
        group.bench_with_input(BenchmarkId::new("write", level), &level, |b, _| {
            b.iter(|| {
                index += 1;
                storage.append(&[Entry::new(index, 1, "x")]).expect("append");
                storage.create_snapshot(index, None, data.clone()).expect("snapshot")
            })
        });
        let mut buf = Vec::with_capacity(SNAPSHOT_BYTES);
        group.bench_with_input(BenchmarkId::new("read", level), &level, |b, _| {
            b.iter(|| {
                buf.clear();
                storage.snapshot_reader().expect("reader").read_to_end(&mut buf).expect("read");
                assert_eq!(buf.len(), SNAPSHOT_BYTES);
            })
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = snapshot_write_read }
criterion_main!(benches);
