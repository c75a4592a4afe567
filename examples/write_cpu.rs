//! The CPU a write costs, with the disk taken out (`SyncPolicy::Never`): a loop writing the
//! benchmark's batches for a while, to run under a profiler.
//!
//! ```sh
//! cargo run --release --example write_cpu -- groups 5     # 64 groups × 256 B per batch
//! cargo run --release --example write_cpu -- batch 5      # 1024 × 1 KiB per batch, one group
//! ```
//!
//! `WRITE_CPU_BATCHES=n` stops after n batches. A third argument compacts each group behind, keeping that many entries. The log goes to a
//! temporary directory in /dev/shm (or in `WRITE_CPU_DIR`). Prints batches per second and the
//! bytes the log wrote per batch.

use std::time::{Duration, Instant};

use raftwal::rng::Rng;
use raftwal::{Entry, HardState, LogEngine, SyncPolicy, WalOptions, WriteBatch};

/// Groups of the multi-group loop, and how many one batch carries.
const GROUPS: u64 = 1_000;
const GROUPS_PER_BATCH: usize = 64;

fn data(rng: &mut Rng, len: usize) -> bytes::Bytes {
    let mut out = Vec::with_capacity(len);
    // Bounded: len / 8 passes.
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

fn main() -> raftwal::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "groups".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    // Compacting behind (keeping this many entries) recycles segments, as a steady node does.
    let keep: Option<u64> = args.next().and_then(|s| s.parse().ok());
    // In memory where there is /dev/shm: the disk (segment preparation, rollover syncs) stays
    // out of the figure. `WRITE_CPU_DIR` names another parent directory.
    let parent = std::env::var("WRITE_CPU_DIR").unwrap_or_else(|_| "/dev/shm".into());
    let dir = match tempfile::tempdir_in(&parent) {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir()?,
    };
    let options = WalOptions { sync_policy: SyncPolicy::Never, ..Default::default() };
    let engine = LogEngine::open(dir.path(), options)?;
    let mut rng = Rng::new(7);
    let mut next = vec![1u64; GROUPS as usize + 1];
    let mut batch = WriteBatch::new();
    let duration = Duration::from_secs(seconds);
    let before = engine.metrics().bytes_written;
    let started = Instant::now();
    let mut batches = 0u64;
    // A fixed number of batches instead, for instruction counts (e.g. under callgrind).
    let limit: u64 =
        std::env::var("WRITE_CPU_BATCHES").ok().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
    // Bounded by the duration and the limit.
    while started.elapsed() < duration && batches < limit {
        match mode.as_str() {
            "groups" => {
                let mut picked = Vec::with_capacity(GROUPS_PER_BATCH);
                // Bounded: distinct groups are found quickly among 1,000.
                while picked.len() < GROUPS_PER_BATCH {
                    let g = 1 + rng.below(GROUPS);
                    if !picked.contains(&g) {
                        picked.push(g);
                    }
                }
                for g in picked {
                    let index = next[g as usize];
                    next[g as usize] += 1;
                    let hs = HardState { term: 1, vote: 0, commit: index };
                    batch.save(g, Some(&hs), &[Entry::new(index, 1, data(&mut rng, 256))])?;
                    if let Some(keep) = keep.filter(|k| index > *k) {
                        batch.compact(g, index - keep)?;
                    }
                }
            }
            "batch" => {
                let first = next[1];
                let entries: Vec<Entry> =
                    (first..first + 1024).map(|i| Entry::new(i, 1, data(&mut rng, 1024))).collect();
                next[1] += 1024;
                batch.save(1, None, &entries)?;
                if let Some(keep) = keep.filter(|k| next[1] - 1 > *k) {
                    batch.compact(1, next[1] - 1 - keep)?;
                }
            }
            other => panic!("unknown mode {other}: groups or batch"),
        }
        engine.write(&mut batch)?;
        batches += 1;
    }
    let took = started.elapsed();
    let bytes = engine.metrics().bytes_written - before;
    println!(
        "{mode}: {batches} batches in {:.2} s, {:.0} batches/s, {:.1} µs/batch, {} B written per batch",
        took.as_secs_f64(),
        batches as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / batches as f64,
        bytes / batches.max(1)
    );
    engine.close()?;
    Ok(())
}
