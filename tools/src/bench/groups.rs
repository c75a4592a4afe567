//! The multi-group workloads: many Raft groups in one log, each write batch carrying one entry
//! and the hard state of 64 of them, as a node hosting many groups writes its `Ready`s.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raftwal::rng::Rng;
use raftwal::{Entry, HardState, LogEngine, Storage, SyncPolicy, WalOptions, WriteBatch};

use super::raw;
use super::report::{Latency, Measure, Row};
use super::workloads::{Ctx, entry_data, histogram, human_bytes, record};
use super::{BenchResult, Progress};

/// Groups of the write and churn workloads.
pub const GROUPS: u64 = 1_000;
/// Groups one batch carries an entry and a hard state of.
pub const GROUPS_PER_BATCH: usize = 64;
/// Payload of each entry.
pub const ENTRY_BYTES: usize = 256;
/// Payload bytes of one batch.
const BATCH_PAYLOAD_BYTES: u64 = (GROUPS_PER_BATCH * ENTRY_BYTES) as u64;

/// Index memory the goal allows per group ...
const INDEX_GOAL_BYTES_PER_GROUP: f64 = 256.0;
/// ... and per live entry.
const INDEX_GOAL_BYTES_PER_ENTRY: f64 = 8.0;

/// The payload of `group`'s entry `index`, distinct for every (group, index).
pub fn group_entry_data(group: u64, index: u64) -> bytes::Bytes {
    entry_data(group << 32 | index, ENTRY_BYTES)
}

/// The hard state written with entry `index`: the entry is committed at once.
pub fn hard_state(index: u64) -> HardState {
    HardState { term: 1, vote: 0, commit: index }
}

/// The hard state written with entry `index` of a group: in term 1, or, with `new_term`, in a
/// term of its own (`index + 1`), as when every write follows an election of its group.
pub fn hard_state_of(index: u64, new_term: bool) -> HardState {
    if new_term { HardState { term: index + 1, ..hard_state(index) } } else { hard_state(index) }
}

/// A log engine hosting many groups, under test.
pub trait Groups: Send + Sync {
    /// Writes one batch: for each `(group, index)`, the entry `index` of `group`
    /// (`group_entry_data`, term 1) and the hard state `hard_state(index)`. Durable on return
    /// when opened synced.
    /// With `new_terms`, every group's hard state is in a new term ([`hard_state_of`]).
    fn write(&self, items: &[(u64, u64)], new_terms: bool) -> BenchResult<()>;
    /// Gives each of `groups` its first term (the hard state `hard_state(0)`: term 1, nothing
    /// committed) in one batch, as the groups' first elections would before they take writes.
    fn elect(&self, groups: &[u64]) -> BenchResult<()>;
    /// Makes every write durable.
    fn sync(&self) -> BenchResult<()>;
    /// The last index of `group` (0 for an empty one).
    fn last_index(&self, group: u64) -> BenchResult<u64>;
    /// Heap bytes of the index and the live entries it covers, where the engine reports them.
    fn index_memory(&self) -> Option<(usize, usize)>;
    /// Bytes handed to the kernel since the log was opened, where the engine reports them.
    fn bytes_written(&self) -> Option<u64>;
    /// Closes the log cleanly.
    fn close(self: Box<Self>) -> BenchResult<()>;
}

/// Opens a multi-group target in a directory; `synced`: every write is durable on return.
pub type GroupsOpener = fn(&Path, bool) -> BenchResult<Box<dyn Groups>>;

/// raftwal's `LogEngine` with the default options (`SyncPolicy::Never` when not synced).
pub struct RaftwalGroups {
    engine: LogEngine,
}

/// Opens raftwal's `LogEngine` in `dir`.
pub fn open_raftwal(dir: &Path, synced: bool) -> BenchResult<Box<dyn Groups>> {
    let sync_policy = if synced { SyncPolicy::Always } else { SyncPolicy::Never };
    let engine = LogEngine::open(dir, WalOptions { sync_policy, ..Default::default() })?;
    Ok(Box::new(RaftwalGroups { engine }))
}

impl Groups for RaftwalGroups {
    fn write(&self, items: &[(u64, u64)], new_terms: bool) -> BenchResult<()> {
        let mut batch = WriteBatch::new();
        for &(group, index) in items {
            let entry = Entry::new(index, 1, group_entry_data(group, index));
            batch.save(group, Some(&hard_state_of(index, new_terms)), &[entry])?;
        }
        Ok(self.engine.write(&mut batch)?)
    }

    fn elect(&self, groups: &[u64]) -> BenchResult<()> {
        let mut batch = WriteBatch::new();
        for &group in groups {
            batch.save(group, Some(&hard_state(0)), &[])?;
        }
        Ok(self.engine.write(&mut batch)?)
    }

    fn sync(&self) -> BenchResult<()> {
        Ok(self.engine.sync()?)
    }

    fn last_index(&self, group: u64) -> BenchResult<u64> {
        Ok(self.engine.group(group)?.last_index()?)
    }

    fn index_memory(&self) -> Option<(usize, usize)> {
        Some(self.engine.index_memory())
    }

    fn bytes_written(&self) -> Option<u64> {
        Some(self.engine.metrics().bytes_written)
    }

    fn close(self: Box<Self>) -> BenchResult<()> {
        Ok(self.engine.close()?)
    }
}

/// Picks the groups of a writer's batches and the next index of each.
struct Picker {
    rng: Rng,
    // The groups this writer owns: writers never share a group, so each appends its groups'
    // entries in order without a lock.
    groups: Vec<u64>,
    // next[k]: the next index of groups[k].
    next: Vec<u64>,
}

impl Picker {
    /// Writer `writer` of `writers` over groups `1..=groups`.
    fn new(groups: u64, writer: usize, writers: usize, seed: u64) -> Picker {
        let groups: Vec<u64> =
            (1..=groups).filter(|g| (*g % writers as u64) as usize == writer).collect();
        assert!(
            groups.len() >= GROUPS_PER_BATCH,
            "writer {writer} owns {} groups, fewer than a batch's {GROUPS_PER_BATCH}",
            groups.len()
        );
        let next = vec![1; groups.len()];
        Picker { rng: Rng::new(seed ^ writer as u64), groups, next }
    }

    /// The next batch: `GROUPS_PER_BATCH` distinct groups drawn at random, each at its next
    /// index (which then advances).
    fn batch(&mut self, out: &mut Vec<(u64, u64)>) {
        out.clear();
        // A partial Fisher-Yates shuffle of the (group, next) pairs: the first
        // GROUPS_PER_BATCH positions become the drawn groups, distinct by construction.
        let n = self.groups.len();
        for k in 0..GROUPS_PER_BATCH {
            let j = k + self.rng.below((n - k) as u64) as usize;
            self.groups.swap(k, j);
            self.next.swap(k, j);
            out.push((self.groups[k], self.next[k]));
            self.next[k] += 1;
        }
    }

    /// Every group's last index: `(group, last)`.
    fn lasts(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.groups.iter().zip(&self.next).map(|(g, n)| (*g, n - 1))
    }
}

/// Calls `target.write` with `picker`'s batches until `duration` has passed, timing each;
/// returns the batches and their latencies.
fn write_for(
    target: &dyn Groups,
    picker: &mut Picker,
    duration: Duration,
    new_terms: bool,
) -> BenchResult<(u64, Histogram<u64>)> {
    let mut items = Vec::with_capacity(GROUPS_PER_BATCH);
    let mut batches = 0u64;
    let mut hist = histogram();
    let started = Instant::now();
    // Bounded by the duration.
    loop {
        picker.batch(&mut items);
        let t = Instant::now();
        target.write(&items, new_terms)?;
        record(&mut hist, t.elapsed());
        batches += 1;
        if started.elapsed() >= duration {
            return Ok((batches, hist));
        }
    }
}

/// Batches, time and latencies of one engine's rounds.
struct Tally {
    batches: u64,
    time: Duration,
    hist: Histogram<u64>,
}

/// Runs every writer of one target for `duration` on its own thread; adds the batches of all
/// writers, the wall time and the latencies to `tally`.
fn round(
    target: &dyn Groups,
    pickers: &mut [Picker],
    duration: Duration,
    new_terms: bool,
    tally: &mut Tally,
) -> BenchResult<()> {
    let started = Instant::now();
    let results: Vec<BenchResult<(u64, Histogram<u64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = pickers
            .iter_mut()
            .map(|picker| s.spawn(move || write_for(target, picker, duration, new_terms)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer thread panicked")).collect()
    });
    tally.time += started.elapsed();
    for r in results {
        let (batches, hist) = r?;
        tally.batches += batches;
        tally.hist.add(&hist).expect("histograms share bounds");
    }
    Ok(())
}

impl Tally {
    fn new() -> Tally {
        Tally { batches: 0, time: Duration::ZERO, hist: histogram() }
    }
}

fn dir_of(ctx: &Ctx<'_>, workload: &str, engine: &str) -> std::path::PathBuf {
    ctx.dir.join(format!("{engine}-{workload}"))
}

fn remove(dir: &Path) {
    // A leftover directory only costs space in a temp dir that is removed at the end.
    let _ = std::fs::remove_dir_all(dir);
}

/// `writers` threads, each writing batches of 64 of its own groups (1,000 groups in all), one
/// sync per batch. With `new_terms`, every group's hard state in every batch is in a new term,
/// as when each write follows an election of its group: the cost of elections.
pub fn writes(ctx: &mut Ctx<'_>, writers: usize, new_terms: bool) -> BenchResult<Row> {
    let name = format!(
        "{GROUPS_PER_BATCH} groups × {ENTRY_BYTES} B / sync{}, {} groups, {writers} writer{}",
        if new_terms { ", each in a new term" } else { "" },
        super::report::num(GROUPS as f64),
        if writers == 1 { "" } else { "s" }
    );
    ctx.progress.start(&name);
    let slug = format!("groups-{writers}{}", if new_terms { "-terms" } else { "" });
    let mut targets = Vec::new();
    for engine in ctx.engines {
        let dir = dir_of(ctx, &slug, engine.name);
        let target = (engine.open_groups)(&dir, true)?;
        // Every group has its term before the rounds, as after its first election: the rows
        // measure steady writes, whose hard states change only the commit index. (A write
        // that changes a group's term or vote also seals raftwal's segment, DESIGN.md §7
        // case 22; without this, the first writes of 1,000 groups would be 1,000 seals.)
        let everyone: Vec<u64> = (1..=GROUPS).collect();
        target.elect(&everyone)?;
        let pickers: Vec<Picker> =
            (0..writers).map(|w| Picker::new(GROUPS, w, writers, 0x5EED_0001)).collect();
        targets.push((dir, target, pickers));
    }
    // Not counted: the first batches of a new log. They also measure the bytes raftwal writes
    // per batch, which the raw loop then writes per sync.
    let mut batch_bytes = None;
    for (_, target, pickers) in &mut targets {
        let before = target.bytes_written();
        let mut ignored = Tally::new();
        round(target.as_ref(), pickers, ctx.budget.warmup, new_terms, &mut ignored)?;
        if let (None, Some(b), Some(a)) = (batch_bytes, before, target.bytes_written()) {
            batch_bytes = Some(((a - b) / ignored.batches.max(1)) as usize);
        }
        ctx.progress.tick();
    }
    let written = batch_bytes.ok_or("raftwal reports no bytes written")?;
    // With new terms, raftwal writes far more per batch than the batch holds (each seals a
    // segment and checkpoints every group); the raw loop then writes what a steady batch holds,
    // so that the ratio shows what elections cost.
    let sync_bytes = if new_terms { BATCH_PAYLOAD_BYTES as usize } else { written };
    ctx.sync_loop.run(sync_bytes, ctx.budget.warmup)?;
    let mut raw_syncs = (0u64, Duration::ZERO);
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::new()).collect();
    for _ in 0..ctx.budget.rounds {
        let (n, t) = ctx.sync_loop.run(sync_bytes, ctx.budget.round)?;
        raw_syncs.0 += n;
        raw_syncs.1 += t;
        ctx.progress.tick();
        for ((_, target, pickers), tally) in targets.iter_mut().zip(&mut tallies) {
            round(target.as_ref(), pickers, ctx.budget.round, new_terms, tally)?;
            ctx.progress.tick();
        }
    }
    for (dir, target, pickers) in targets {
        // Every group holds what was written to it.
        for picker in &pickers {
            check_lasts(target.as_ref(), picker, 97)?;
        }
        target.close()?;
        remove(&dir);
    }
    let raw_rate = raw_syncs.0 as f64 / raw_syncs.1.as_secs_f64();
    let mut measures: Vec<Measure> = tallies
        .iter()
        .map(|t| {
            let rate = t.batches as f64 / t.time.as_secs_f64();
            Measure {
                value: rate,
                ratio_to_raw: Some(rate / raw_rate),
                mb_per_s: Some(rate * BATCH_PAYLOAD_BYTES as f64 / 1e6),
                latency_us: Some(Latency::of(&t.hist)),
            }
        })
        .collect();
    Ok(Row {
        group: "multi-group",
        workload: name,
        unit: "batches/s",
        raftwal: measures.remove(0),
        raw: Some(raw_rate),
        raw_what: if new_terms {
            format!(
                "pwrite + fdatasync of {} (the batch's entry payload) into a zero-filled file, \
                 syncs/s, one thread. raftwal wrote {} per batch: a term change seals its \
                 segment and checkpoints every group (DESIGN.md §7 case 22)",
                human_bytes(sync_bytes as u64),
                human_bytes(written as u64)
            )
        } else {
            format!(
                "pwrite + fdatasync of {} (raftwal's bytes per batch) into a zero-filled file, \
                 syncs/s, one thread; the ratio is also that of MB/s written. raftwal: LogEngine, \
                 WalOptions defaults (SyncPolicy::Always), one WriteBatch per batch",
                human_bytes(sync_bytes as u64)
            )
        },
        seq_mb_per_s: None,
        raft_engine: measures.into_iter().next(),
        histogram: None,
    })
}

/// Checks the last index of every `stride`-th group of `picker` against what was written.
fn check_lasts(target: &dyn Groups, picker: &Picker, stride: usize) -> BenchResult<()> {
    for (group, last) in picker.lasts().step_by(stride.max(1)) {
        let got = target.last_index(group)?;
        if got != last {
            return Err(format!("group {group}: last index {got}, {last} written").into());
        }
    }
    Ok(())
}

/// Fills a log with batches over `groups` groups, unsynced, until `bytes` of payload are
/// written, then syncs it; returns the picker (each group's last index).
fn fill(target: &dyn Groups, groups: u64, bytes: u64, progress: &Progress) -> BenchResult<Picker> {
    // Every group's term first, as in the write rows: a log of steady writes, not one whose
    // first writes of each group sealed a segment each (DESIGN.md §7 case 22).
    let everyone: Vec<u64> = (1..=groups).collect();
    target.elect(&everyone)?;
    let mut picker = Picker::new(groups, 0, 1, 0x5EED_0002);
    let mut items = Vec::with_capacity(GROUPS_PER_BATCH);
    let batches = bytes.div_ceil(BATCH_PAYLOAD_BYTES);
    // Bounded: `batches` writes.
    for i in 0..batches {
        picker.batch(&mut items);
        target.write(&items, false)?;
        if i % 256 == 0 {
            progress.tick();
        }
    }
    target.sync()?;
    Ok(picker)
}

/// Opening a log of many groups from page cache, and the index memory after it.
pub fn open(ctx: &mut Ctx<'_>) -> BenchResult<Vec<Row>> {
    let groups = ctx.budget.open_groups;
    let bytes = ctx.budget.open_bytes;
    let label = format!(
        "{} groups, {} of {ENTRY_BYTES} B entries",
        super::report::num(groups as f64),
        human_bytes(bytes)
    );
    ctx.progress.start(&format!("open of {label}"));
    let mut opens = Vec::new();
    let mut sizes = Vec::new();
    let mut memory = None;
    for engine in ctx.engines {
        let dir = dir_of(ctx, "groups-open", engine.name);
        let target = (engine.open_groups)(&dir, false)?;
        let picker = fill(target.as_ref(), groups, bytes, ctx.progress)?;
        target.close()?;
        // Reading the files once puts them in the page cache.
        let (on_disk, _) = raw::read_files(&dir)?;
        sizes.push(format!("{} {}", engine.name, human_bytes(on_disk)));
        ctx.progress.tick();
        let started = Instant::now();
        let target = (engine.open_groups)(&dir, true)?;
        let took = started.elapsed();
        check_lasts(target.as_ref(), &picker, 1)?;
        if memory.is_none() {
            memory = target.index_memory();
        }
        target.close()?;
        remove(&dir);
        ctx.progress.tick();
        opens.push(took);
    }
    let time = |took: &Duration| Measure {
        value: took.as_secs_f64(),
        ratio_to_raw: None,
        mb_per_s: None,
        latency_us: None,
    };
    let mut rows = vec![Row {
        group: "multi-group",
        workload: format!("open a log of {label} (page cache)"),
        unit: "s",
        raftwal: time(&opens[0]),
        raw: None,
        raw_what: format!(
            "written unsynced in batches of {GROUPS_PER_BATCH} groups (entry + hard state \
             each), closed, read once, opened; raftwal: WalOptions defaults. Bytes of the \
             files, preallocated segments included: {}",
            sizes.join(", ")
        ),
        seq_mb_per_s: None,
        raft_engine: opens.get(1).map(time),
        histogram: None,
    }];
    if let Some((heap, entries)) = memory {
        let allowance = INDEX_GOAL_BYTES_PER_GROUP
            + INDEX_GOAL_BYTES_PER_ENTRY * entries as f64 / groups as f64;
        let per_group = heap as f64 / groups as f64;
        rows.push(Row {
            group: "multi-group",
            workload: format!(
                "index memory after open ({} groups, {} entries)",
                super::report::num(groups as f64),
                super::report::num(entries as f64)
            ),
            unit: "B/group",
            raftwal: Measure {
                value: per_group,
                ratio_to_raw: Some(per_group / allowance),
                mb_per_s: None,
                latency_us: None,
            },
            raw: Some(allowance),
            raw_what: format!(
                "the goal's allowance, {INDEX_GOAL_BYTES_PER_GROUP} B/group + \
                 {INDEX_GOAL_BYTES_PER_ENTRY} B/entry, per group (the raw column). \
                 LogEngine::index_memory(): {heap} B for {groups} groups and {entries} live \
                 entries ({:.2} B/entry overall)",
                heap as f64 / entries.max(1) as f64
            ),
            seq_mb_per_s: None,
            raft_engine: None,
            histogram: None,
        });
    }
    Ok(rows)
}

/// Entries a hot group keeps after each compaction (the ones its followers may still need).
const CHURN_KEEP_ENTRIES: u64 = 4;
/// Entries each cold group writes, once.
const COLD_ENTRIES: u64 = 3;
/// Segment size of the churn workload.
const CHURN_SEGMENT_BYTES: u64 = 1 << 20;
/// Purge threshold of the churn workload.
pub const CHURN_THRESHOLD_BYTES: u64 = 8 << 20;

/// 1,000 groups, 10 % of them cold: the cold ones write a few entries once and never compact,
/// the hot ones keep appending and compacting. Reports the log's bytes on disk at the end.
pub fn churn(ctx: &mut Ctx<'_>) -> BenchResult<Row> {
    let written = ctx.budget.churn_bytes;
    let cold = GROUPS / 10;
    let name = format!(
        "WAL bytes after churn, {} groups, {cold} cold, {} written",
        super::report::num(GROUPS as f64),
        human_bytes(written)
    );
    ctx.progress.start(&name);
    let dir = dir_of(ctx, "groups-churn", "raftwal");
    let options = WalOptions {
        sync_policy: SyncPolicy::Never,
        segment_size_bytes: CHURN_SEGMENT_BYTES,
        purge_threshold_bytes: CHURN_THRESHOLD_BYTES,
        ..Default::default()
    };
    let engine = LogEngine::open(&dir, options.clone())?;
    // The cold groups (1..=cold) write their entries once, first, so that they sit in the
    // oldest segment.
    let mut batch = WriteBatch::new();
    for group in 1..=cold {
        let entries: Vec<Entry> =
            (1..=COLD_ENTRIES).map(|i| Entry::new(i, 1, group_entry_data(group, i))).collect();
        batch.save(group, Some(&hard_state(COLD_ENTRIES)), &entries)?;
    }
    engine.write(&mut batch)?;
    // The hot groups (cold+1..=GROUPS): batches of 64 of them, each group compacted to its
    // last index minus CHURN_KEEP_ENTRIES in the same batch.
    let mut picker = Picker::new(GROUPS - cold, 0, 1, 0x5EED_0003);
    let mut items = Vec::with_capacity(GROUPS_PER_BATCH);
    let batches = written.div_ceil(BATCH_PAYLOAD_BYTES);
    let purge_every = (CHURN_SEGMENT_BYTES / BATCH_PAYLOAD_BYTES).max(1);
    let mut peak = 0u64;
    let mut purges = 0u64;
    let mut rewritten_groups = 0usize;
    let mut rewritten_cold = 0usize;
    let mut rewritten_bytes = 0u64;
    let mut compact_requested = 0usize;
    let started = Instant::now();
    // Bounded: `batches` writes.
    for i in 0..batches {
        picker.batch(&mut items);
        batch.clear();
        for &(hot, index) in &items {
            let group = hot + cold;
            let entry = Entry::new(index, 1, group_entry_data(group, index));
            batch.save(group, Some(&hard_state(index)), &[entry])?;
            if index > CHURN_KEEP_ENTRIES {
                batch.compact(group, index - CHURN_KEEP_ENTRIES)?;
            }
        }
        engine.write(&mut batch)?;
        // An application calls purge() now and then (about once per segment written); it
        // also runs by itself after rollovers and compactions.
        if (i + 1) % purge_every == 0 {
            let report = engine.purge()?;
            purges += 1;
            rewritten_groups += report.rewritten_groups.len();
            rewritten_cold += report.rewritten_groups.iter().filter(|g| **g <= cold).count();
            rewritten_bytes += report.rewritten_bytes;
            compact_requested += report.compact_requested.len();
            peak = peak.max(report.bytes_on_disk);
            ctx.progress.tick();
        }
    }
    engine.sync()?;
    let took = started.elapsed();
    let bytes_on_disk = engine.metrics().bytes_on_disk;
    let last = engine.purge()?;
    let wal_dir_bytes = raw::dir_bytes(&dir.join(raftwal::storage::WAL_DIR))?;
    engine.close()?;
    // The lock is held until the engine is dropped.
    drop(engine);
    // Every group holds what it wrote, after a reopen: the cold groups' entries survived
    // whatever rewrote them.
    let engine = LogEngine::open(&dir, options)?;
    for group in 1..=cold {
        let entries = engine.group(group)?.entries(1, COLD_ENTRIES + 1, u64::MAX)?;
        let expected: Vec<Entry> =
            (1..=COLD_ENTRIES).map(|i| Entry::new(i, 1, group_entry_data(group, i))).collect();
        if entries != expected {
            return Err(format!("cold group {group} lost its entries after the churn").into());
        }
    }
    for (hot, last_index) in picker.lasts() {
        let got = engine.group(hot + cold)?.last_index()?;
        if got != last_index {
            return Err(
                format!("group {}: last index {got}, {last_index} written", hot + cold).into()
            );
        }
    }
    engine.close()?;
    remove(&dir);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(Row {
        group: "multi-group",
        workload: name,
        unit: "MiB",
        raftwal: Measure {
            value: mib(bytes_on_disk),
            ratio_to_raw: Some(bytes_on_disk as f64 / CHURN_THRESHOLD_BYTES as f64),
            mb_per_s: Some(written as f64 / took.as_secs_f64() / 1e6),
            latency_us: None,
        },
        raw: Some(mib(CHURN_THRESHOLD_BYTES)),
        raw_what: format!(
            "purge_threshold_bytes (the raw column; the ratio is bytes on disk over it). \
             LogEngine, WalOptions defaults but segment_size_bytes {}, purge_threshold_bytes \
             {}, SyncPolicy::Never; hot groups keep {CHURN_KEEP_ENTRIES} entries, cold ones \
             {COLD_ENTRIES}. {purges} purge() calls (one per segment written) rewrote \
             {rewritten_groups} groups ({rewritten_cold} of them cold; {} of entries) and asked {compact_requested} times for \
             a compaction; peak seen by them {}. The last purge(): {} rewritten groups, {} \
             rewritten, {} segments deleted, {} on disk after it; wal/ holds {} in all \
             (recycled segments included)",
            human_bytes(CHURN_SEGMENT_BYTES),
            human_bytes(CHURN_THRESHOLD_BYTES),
            human_bytes(rewritten_bytes),
            human_bytes(peak),
            last.rewritten_groups.len(),
            human_bytes(last.rewritten_bytes),
            last.deleted_segments.len(),
            human_bytes(last.bytes_on_disk),
            human_bytes(wal_dir_bytes),
        ),
        seq_mb_per_s: None,
        raft_engine: None,
        histogram: None,
    })
}

/// Bytes one churn row may hold on disk to meet its goal: the threshold plus two segments.
pub const CHURN_GOAL_BYTES: u64 = CHURN_THRESHOLD_BYTES + 2 * CHURN_SEGMENT_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picker_draws_distinct_groups_of_its_own_at_their_next_index() {
        let mut picker = Picker::new(1_000, 1, 4, 7);
        let mut seen = std::collections::HashMap::new();
        let mut items = Vec::new();
        for _ in 0..100 {
            picker.batch(&mut items);
            assert_eq!(items.len(), GROUPS_PER_BATCH);
            let mut groups: Vec<u64> = items.iter().map(|(g, _)| *g).collect();
            groups.sort_unstable();
            groups.dedup();
            assert_eq!(groups.len(), GROUPS_PER_BATCH, "a batch names each group once");
            for &(group, index) in &items {
                assert_eq!(group % 4, 1, "writer 1 of 4 owns the groups ≡ 1 mod 4");
                let next = seen.entry(group).or_insert(1u64);
                assert_eq!(index, *next, "group {group} is written at its next index");
                *next += 1;
            }
        }
        for (group, last) in picker.lasts() {
            assert_eq!(seen.get(&group).map_or(0, |n| n - 1), last);
        }
    }
}
