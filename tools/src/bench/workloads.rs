//! The workloads. Each one runs its rounds interleaved with the raw measurement it is compared
//! to, so that both see the disk in the same mood.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raftwal::rng::Rng;
use raftwal::wal::format::{ENTRIES_HEAD_LEN, framed_len};

use super::groups::GroupsOpener;
use super::raw::{self, SyncLoop};
use super::report::{Latency, Measure, Row};
use super::target::{Mode, Opener, Sizing, Target};
use super::{BenchResult, Budget, Progress};

/// Payload of the single-entry, batch and concurrent workloads, and of the fills.
const KIB: usize = 1024;
/// Entries per read in the read workloads (one Raft `entries()` call).
const READ_SPAN: u64 = 64;

/// One engine under test: its name and how to open it.
#[derive(Clone, Copy)]
pub struct Engine {
    /// Printed name.
    pub name: &'static str,
    /// Opens it in a directory.
    pub open: Opener,
    /// Opens it in a directory for the multi-group workloads.
    pub open_groups: GroupsOpener,
}

/// What the workloads share: where to run, how long, and what to run against.
pub struct Ctx<'a> {
    /// The directory everything is written under.
    pub dir: &'a Path,
    /// Durations and sizes.
    pub budget: &'a Budget,
    /// raftwal first, then the engines it is compared with.
    pub engines: &'a [Engine],
    /// The raw fdatasync loop.
    pub sync_loop: SyncLoop,
    /// The progress display.
    pub progress: &'a Progress,
}

/// An empty latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Records one call's latency.
pub fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
    hist.saturating_record(us);
}

/// Bytes raftwal writes for one record of `count` entries of `size` bytes.
pub fn record_bytes(count: usize, size: usize) -> usize {
    framed_len(ENTRIES_HEAD_LEN + count * (raftwal::Entry::HEADER_LEN as usize + size))
}

fn engine_dir(ctx: &Ctx<'_>, workload: &str, engine: &Engine) -> PathBuf {
    let slug: String =
        workload.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    ctx.dir.join(format!("{}-{slug}", engine.name))
}

fn remove(dir: &Path) {
    // A leftover directory only costs space in a temp dir that is removed at the end.
    let _ = std::fs::remove_dir_all(dir);
}

/// Accumulates an engine's operations over the rounds.
#[derive(Default)]
struct Tally {
    ops: u64,
    entries: u64,
    bytes: u64,
    time: Duration,
    hist: Option<Histogram<u64>>,
}

impl Tally {
    fn measure(&self, unit_per_op: bool) -> Measure {
        let secs = self.time.as_secs_f64().max(1e-9);
        let value = if unit_per_op { self.ops as f64 / secs } else { self.entries as f64 / secs };
        Measure {
            value,
            ratio_to_raw: None,
            mb_per_s: Some(self.bytes as f64 / secs / 1e6),
            latency_us: self.hist.as_ref().map(Latency::of),
        }
    }
}

/// Entries the steady-state row keeps behind its appends (16 MiB of 1 KiB entries): it
/// compacts to them whenever the log holds twice as many.
pub const STEADY_KEEP_ENTRIES: u64 = 16 * 1024;

/// `count` entries of `size` bytes per append+sync, one writer; with `keep`, the log is
/// compacted behind the appends (see [`super::target::Target::compact_behind`]), so that
/// released segments are reused as a node in steady state reuses them.
pub fn append(
    ctx: &mut Ctx<'_>,
    group: &'static str,
    count: usize,
    size: usize,
    keep: Option<u64>,
) -> BenchResult<Row> {
    let mut name = if count == 1 {
        format!("1 × {} / sync", human_bytes(size as u64))
    } else {
        format!("{count} × {} / sync", human_bytes(size as u64))
    };
    if let Some(keep) = keep {
        name.push_str(&format!(
            ", compacting behind (keeps {} entries)",
            super::report::num(keep as f64)
        ));
    }
    ctx.progress.start(&name);
    let sync_bytes = record_bytes(count, size);
    let mut targets = Vec::new();
    for engine in ctx.engines {
        let dir = engine_dir(ctx, &name, engine);
        targets.push((dir.clone(), (engine.open)(&dir, Mode::Synced, Sizing::default())?));
    }
    // Not counted: the first appends of a new log (and its next segment being prepared in the
    // background) and the raw loop's first writes.
    ctx.sync_loop.run(sync_bytes, ctx.budget.warmup)?;
    let op = |target: &dyn Target| -> BenchResult<()> {
        target.append(0, count, size)?;
        if let Some(keep) = keep {
            target.compact_behind(keep)?;
        }
        Ok(())
    };
    for (_, target) in &targets {
        let mut ignored = Tally::default();
        run_for(ctx.budget.warmup, &mut ignored, || op(target.as_ref()), count, size)?;
    }
    let mut raw_syncs = (0u64, Duration::ZERO);
    let mut tallies: Vec<Tally> =
        targets.iter().map(|_| Tally { hist: Some(histogram()), ..Default::default() }).collect();
    for _ in 0..ctx.budget.rounds {
        let (n, t) = ctx.sync_loop.run(sync_bytes, ctx.budget.round)?;
        raw_syncs.0 += n;
        raw_syncs.1 += t;
        ctx.progress.tick();
        for ((_, target), tally) in targets.iter().zip(&mut tallies) {
            run_for(ctx.budget.round, tally, || op(target.as_ref()), count, size)?;
            ctx.progress.tick();
        }
    }
    let seq = raw::sequential_write(ctx.dir, ctx.budget.seq_bytes)?;
    for (dir, target) in targets {
        target.close()?;
        remove(&dir);
    }
    let raw_rate = raw_syncs.0 as f64 / raw_syncs.1.as_secs_f64();
    Ok(row(group, name, "syncs/s", tallies, true, raw_rate, sync_bytes, Some(seq)))
}

/// Calls `op` until `duration` has passed, timing each call.
fn run_for(
    duration: Duration,
    tally: &mut Tally,
    mut op: impl FnMut() -> BenchResult<()>,
    count: usize,
    size: usize,
) -> BenchResult<()> {
    let started = Instant::now();
    // Bounded by the duration.
    loop {
        let t = Instant::now();
        op()?;
        if let Some(hist) = &mut tally.hist {
            record(hist, t.elapsed());
        }
        tally.ops += 1;
        tally.entries += count as u64;
        tally.bytes += (count * size) as u64;
        if started.elapsed() >= duration {
            tally.time += started.elapsed();
            return Ok(());
        }
    }
}

#[allow(clippy::too_many_arguments)] // One row's worth of figures.
fn row(
    group: &'static str,
    workload: String,
    unit: &'static str,
    tallies: Vec<Tally>,
    per_op: bool,
    raw_rate: f64,
    raw_bytes: usize,
    seq: Option<f64>,
) -> Row {
    let mut measures: Vec<Measure> = tallies
        .iter()
        .map(|t| {
            let mut m = t.measure(per_op);
            m.ratio_to_raw = Some(m.value / raw_rate);
            m
        })
        .collect();
    let raftwal = measures.remove(0);
    Row {
        group,
        workload,
        unit,
        raftwal,
        raw: Some(raw_rate),
        raw_what: format!(
            "pwrite + fdatasync of {} into a zero-filled file, syncs/s",
            human_bytes(raw_bytes as u64)
        ),
        seq_mb_per_s: seq.map(|b| b / 1e6),
        raft_engine: measures.into_iter().next(),
        histogram: tallies.into_iter().next().and_then(|t| t.hist),
    }
}

/// `writers` threads appending one 1 KiB entry each per durable append, sharing syncs.
pub fn concurrent(ctx: &mut Ctx<'_>, writers: usize) -> BenchResult<Row> {
    let name = format!("{writers} writer{} × 1 KiB", if writers == 1 { "" } else { "s" });
    ctx.progress.start(&name);
    let sync_bytes = record_bytes(1, KIB);
    let mut targets = Vec::new();
    for engine in ctx.engines {
        let dir = engine_dir(ctx, &name, engine);
        targets.push((dir.clone(), (engine.open)(&dir, Mode::Concurrent, Sizing::default())?));
    }
    // Not counted, as in `append`.
    ctx.sync_loop.run(sync_bytes, ctx.budget.warmup)?;
    for (_, target) in &targets {
        let mut ignored = Tally::default();
        run_for(ctx.budget.warmup, &mut ignored, || target.append(0, 1, KIB), 1, KIB)?;
    }
    let mut raw_syncs = (0u64, Duration::ZERO);
    let mut tallies: Vec<Tally> =
        targets.iter().map(|_| Tally { hist: Some(histogram()), ..Default::default() }).collect();
    for _ in 0..ctx.budget.rounds {
        let (n, t) = ctx.sync_loop.run(sync_bytes, ctx.budget.round)?;
        raw_syncs.0 += n;
        raw_syncs.1 += t;
        ctx.progress.tick();
        for ((_, target), tally) in targets.iter().zip(&mut tallies) {
            let target: &dyn Target = target.as_ref();
            let round = ctx.budget.round;
            let started = Instant::now();
            let per_thread: Vec<BenchResult<Tally>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..writers)
                    .map(|w| {
                        s.spawn(move || {
                            let mut mine = Tally { hist: Some(histogram()), ..Default::default() };
                            run_for(round, &mut mine, || target.append(w, 1, KIB), 1, KIB)
                                .map(|()| mine)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("writer thread panicked")).collect()
            });
            let elapsed = started.elapsed();
            for mine in per_thread {
                let mine = mine?;
                tally.ops += mine.ops;
                tally.entries += mine.entries;
                tally.bytes += mine.bytes;
                if let (Some(all), Some(h)) = (&mut tally.hist, &mine.hist) {
                    all.add(h).expect("histograms share bounds");
                }
            }
            tally.time += elapsed;
            ctx.progress.tick();
        }
    }
    for (dir, target) in targets {
        target.close()?;
        remove(&dir);
    }
    let raw_rate = raw_syncs.0 as f64 / raw_syncs.1.as_secs_f64();
    Ok(row("group commit", name, "entries/s", tallies, false, raw_rate, sync_bytes, None))
}

/// Fills a log with 1 KiB entries in batches of 1024, unsynced, then syncs it.
fn fill(target: &dyn Target, bytes: u64, progress: &Progress) -> BenchResult<u64> {
    let batch = 1024usize;
    let batches = bytes.div_ceil((batch * record_bytes(1, KIB)) as u64).max(1);
    // Bounded: `batches` appends.
    for i in 0..batches {
        target.append(0, batch, KIB)?;
        if i % 64 == 0 {
            progress.tick();
        }
    }
    target.sync()?;
    Ok(batches * batch as u64)
}

/// Entries() reads: from the entry cache, from sealed segments, and after a reopen.
pub fn reads(ctx: &mut Ctx<'_>) -> BenchResult<Vec<Row>> {
    ctx.progress.start("entries() reads");
    let fill_bytes = ctx.budget.read_fill_bytes;
    // Small segments so that most of the log lies in sealed ones.
    let sizing = Sizing { segment_bytes: 8 << 20 };
    let mut per_engine = Vec::new();
    let mut raw_read = (0u64, Duration::ZERO);
    for engine in ctx.engines {
        let dir = engine_dir(ctx, "reads", engine);
        let target = (engine.open)(&dir, Mode::Unsynced, sizing)?;
        let entries = fill(target.as_ref(), fill_bytes, ctx.progress)?;
        // The newest 4 MiB are in the entry cache (16 MiB by default); the oldest 8 MiB are in
        // sealed segments only.
        let cached_from = entries - (4 << 20) / KIB as u64;
        let sealed_to = (8 << 20) / KIB as u64;
        assert!(sealed_to < cached_from, "the read log is too small: {entries} entries");
        let hit = read_loop(target.as_ref(), cached_from, entries, ctx.budget.read)?;
        ctx.progress.tick();
        let sealed = read_loop(target.as_ref(), 1, sealed_to, ctx.budget.read)?;
        ctx.progress.tick();
        target.close()?;
        if per_engine.is_empty() {
            let (b, t) = raw::read_files(&dir)?;
            raw_read = (b, t);
        }
        // The same newest entries after a reopen: the entry cache is empty, the files are in
        // the page cache.
        let target = (engine.open)(&dir, Mode::Unsynced, sizing)?;
        let cold = read_loop(target.as_ref(), cached_from, entries, ctx.budget.read)?;
        target.close()?;
        remove(&dir);
        ctx.progress.tick();
        per_engine.push([hit, sealed, cold]);
    }
    let raw_mb = raw_read.0 as f64 / raw_read.1.as_secs_f64() / 1e6;
    let names = [
        "entries() cache hit, 64 × 1 KiB",
        "entries() sealed segment, 64 × 1 KiB",
        "entries() after reopen (same entries), 64 × 1 KiB",
    ];
    let mut rows = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let mut measures: Vec<Measure> = per_engine
            .iter()
            .map(|tallies| {
                let mut m = tallies[k].measure(false);
                m.ratio_to_raw = m.mb_per_s.map(|mb| mb / raw_mb);
                m
            })
            .collect();
        rows.push(Row {
            group: "read",
            workload: (*name).to_string(),
            unit: "entries/s",
            raftwal: measures.remove(0),
            raw: Some(raw_mb),
            raw_what: "pread of the log's files from page cache, MB/s (ratio of MB/s)".into(),
            seq_mb_per_s: None,
            raft_engine: measures.into_iter().next(),
            histogram: None,
        });
    }
    Ok(rows)
}

fn read_loop(target: &dyn Target, from: u64, to: u64, duration: Duration) -> BenchResult<Tally> {
    let span = to - from;
    assert!(span > READ_SPAN, "a read range of {span} entries is too small");
    let mut tally = Tally::default();
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    // Bounded by the duration.
    loop {
        let lo = rng.in_range(from..to - READ_SPAN);
        tally.bytes += target.read(lo, lo + READ_SPAN)?;
        tally.entries += READ_SPAN;
        tally.ops += 1;
        if started.elapsed() >= duration {
            tally.time = started.elapsed();
            return Ok(tally);
        }
    }
}

/// Recovery of a large log from page cache, and the index's memory per entry.
pub fn recovery(ctx: &mut Ctx<'_>) -> BenchResult<Vec<Row>> {
    let bytes = ctx.budget.recovery_bytes;
    let label = human_bytes(bytes);
    ctx.progress.start(&format!("recovery of a {label} log"));
    let mut opens = Vec::new();
    let mut raw_read = (0u64, Duration::ZERO);
    let mut index_after_append = None;
    let mut index_after_open = None;
    for engine in ctx.engines {
        let dir = engine_dir(ctx, "recovery", engine);
        let target = (engine.open)(&dir, Mode::Unsynced, Sizing::default())?;
        let entries = fill(target.as_ref(), bytes, ctx.progress)?;
        if index_after_append.is_none() {
            index_after_append = target.index_memory();
        }
        target.close()?;
        // Reading the files once puts them in the page cache and gives the raw figure.
        let (b, t) = raw::read_files(&dir)?;
        if opens.is_empty() {
            raw_read = (b, t);
        }
        ctx.progress.tick();
        let started = Instant::now();
        let target = (engine.open)(&dir, Mode::Synced, Sizing::default())?;
        let took = started.elapsed();
        if target.last_index() != entries {
            return Err(format!(
                "{} recovered {} entries of {entries}",
                engine.name,
                target.last_index()
            )
            .into());
        }
        // The log's bytes recovered per second of open: sealed segments read through their
        // footers count whole, as what the open stands for (an engine's own count of bytes
        // it read would reward reading more).
        let scanned = b;
        if index_after_open.is_none() {
            index_after_open = target.index_memory();
        }
        target.close()?;
        remove(&dir);
        ctx.progress.tick();
        opens.push((took, scanned));
    }
    let raw_gb = raw_read.0 as f64 / raw_read.1.as_secs_f64() / 1e9;
    let measure = |(took, scanned): &(Duration, u64)| Measure {
        value: *scanned as f64 / took.as_secs_f64() / 1e9,
        ratio_to_raw: Some(*scanned as f64 / took.as_secs_f64() / 1e9 / raw_gb),
        mb_per_s: None,
        latency_us: None,
    };
    let time = |(took, _): &(Duration, u64)| Measure {
        value: took.as_secs_f64(),
        ratio_to_raw: None,
        mb_per_s: None,
        latency_us: None,
    };
    let mut rows = vec![
        Row {
            group: "recovery",
            workload: format!("open a {label} log (page cache)"),
            unit: "s",
            raftwal: time(&opens[0]),
            raw: None,
            raw_what: String::new(),
            seq_mb_per_s: None,
            raft_engine: opens.get(1).map(time),
            histogram: None,
        },
        Row {
            group: "recovery",
            workload: format!("recovery rate of a {label} log"),
            unit: "GB/s",
            raftwal: measure(&opens[0]),
            raw: Some(raw_gb),
            raw_what: "pread of the same files from page cache, GB/s (raftwal and raft-engine: the log's bytes per second of open)".into(),
            seq_mb_per_s: None,
            raft_engine: opens.get(1).map(measure),
            histogram: None,
        },
    ];
    for (name, memory) in [
        ("index memory after recovery", index_after_open),
        ("index memory while appending", index_after_append),
    ] {
        if let Some((heap, entries)) = memory {
            rows.push(Row {
                group: "index",
                workload: format!("{name} ({entries} entries)"),
                unit: "B/entry",
                raftwal: Measure {
                    value: heap as f64 / entries.max(1) as f64,
                    ratio_to_raw: None,
                    mb_per_s: None,
                    latency_us: None,
                },
                raw: None,
                raw_what: String::new(),
                seq_mb_per_s: None,
                raft_engine: None,
                histogram: None,
            });
        }
    }
    Ok(rows)
}

/// Bytes of pseudo-random data entries take their payloads from.
const POOL_BYTES: usize = 8 << 20;

/// The payload of entry `index`: `size` bytes of a pseudo-random pool, at an offset that depends
/// on the index. Entries differ from each other and do not compress, so an engine that
/// compresses batches (raft-engine does above 8 KiB) writes as many bytes as one that does not.
pub fn entry_data(index: u64, size: usize) -> Bytes {
    static POOL: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let mut data = vec![0u8; POOL_BYTES];
        Rng::new(0x2545_F491_4F6C_DD1D).fill(&mut data);
        data.into()
    });
    assert!(size <= POOL_BYTES / 2, "an entry of {size} bytes is larger than the pool allows");
    // A fixed, well-spread start per index: the same entry always has the same bytes.
    let at = Rng::new(index).below((POOL_BYTES - size) as u64) as usize;
    pool.slice(at..at + size)
}

/// `1536` → "1.5 KiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_data_is_reproducible_and_differs_between_entries() {
        assert_eq!(entry_data(7, 1024), entry_data(7, 1024));
        assert_ne!(entry_data(7, 1024), entry_data(8, 1024));
        assert_eq!(entry_data(1, 16 << 10).len(), 16 << 10);
    }

    #[test]
    fn record_bytes_counts_the_frame_the_count_and_each_entry() {
        let one = record_bytes(1, 1024);
        assert_eq!(one, framed_len(ENTRIES_HEAD_LEN + 21 + 1024));
        assert!(
            record_bytes(2, 1024) >= 2 * (21 + 1024),
            "two entries take at least their encoding"
        );
        assert_eq!(one % 8, 0, "frames are 8-byte aligned");
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(64), "64 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(128 << 20), "128 MiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
    }
}
