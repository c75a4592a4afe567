//! What a log has done, as plain counters and gauges: read them with `Wal::metrics` or
//! `WalStorage::metrics` at any time, from any thread, without taking the log's locks.
//!
//! Updates are relaxed atomic adds on the paths that already do I/O (a write, a sync, a segment
//! created or deleted), never per entry read, so counting costs nothing a benchmark can see.
//! With the cargo feature `metrics` every update is also sent to the `metrics` facade crate
//! under the names in DESIGN.md ("Metrics"), so any exporter (Prometheus, StatsD, ...) picks
//! them up; with the feature `tracing`, slow syncs and poisonings are logged as `tracing`
//! events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: values are kept to within 1/8 (12.5 %) of their true size.
const SUB_BUCKET_BITS: u32 = 3;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Values below this are counted exactly, one bucket each.
const LINEAR_LIMIT: u64 = 2 * SUB_BUCKETS;
/// Powers of two above the linear range: up to 2^48 units (about 9 years of microseconds).
const OCTAVES: u64 = 48 - (SUB_BUCKET_BITS as u64 + 1);
const BUCKETS: usize = (LINEAR_LIMIT + OCTAVES * SUB_BUCKETS) as usize;

/// A fixed-size log-linear histogram of `u64` values (latencies in microseconds, batch sizes),
/// safe to update from many threads at once. Memory is constant (`BUCKETS` counters): there is
/// no allocation after creation, whatever values it sees.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.summary().fmt(f)
    }
}

/// The bucket a value falls in.
fn bucket_of(value: u64) -> usize {
    if value < LINEAR_LIMIT {
        return value as usize;
    }
    // The highest set bit picks the octave, the next SUB_BUCKET_BITS bits the sub-bucket.
    let high = 63 - value.leading_zeros() as u64;
    let octave = high - SUB_BUCKET_BITS as u64;
    let sub = (value >> (high - SUB_BUCKET_BITS as u64)) & (SUB_BUCKETS - 1);
    let bucket = LINEAR_LIMIT + (octave - 1) * SUB_BUCKETS + sub;
    (bucket as usize).min(BUCKETS - 1)
}

/// The largest value that falls in `bucket` (a percentile is reported as its bucket's top, so
/// it never understates).
fn bucket_top(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < LINEAR_LIMIT {
        return bucket;
    }
    let octave = (bucket - LINEAR_LIMIT) / SUB_BUCKETS + 1;
    let sub = (bucket - LINEAR_LIMIT) % SUB_BUCKETS;
    let shift = octave as u32;
    ((SUB_BUCKETS + sub + 1) << shift) - 1
}

impl Histogram {
    pub(crate) fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Count, sum, max and the 50th, 99th and 99.9th percentiles of what was recorded.
    pub(crate) fn summary(&self) -> Summary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        // The buckets are read one by one while others may record: use their own total, so the
        // percentiles are those of one consistent set of counts.
        let total: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let at = |quantile: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (bucket, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return bucket_top(bucket).min(max);
                }
            }
            max
        };
        Summary {
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max,
        }
    }
}

/// A distribution's summary. Percentiles are within 12.5 % above the true value (never below
/// it), and never above `max`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Their sum.
    pub sum: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value recorded.
    pub max: u64,
}

/// What recovery did when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryMetrics {
    /// Wall time of the recovery, in microseconds.
    pub duration_us: u64,
    /// Segment files read.
    pub segments_scanned: u64,
    /// Bytes of valid records read.
    pub bytes_scanned: u64,
    /// For each row of the recovery decision table (DESIGN.md §8) that some segment hit: the row's
    /// name (`"R1"` for a clean end, `"R3"` for a torn tail cut, ...) and how many segments hit
    /// it.
    pub rows: Vec<(&'static str, u64)>,
    /// Whether a torn tail was cut.
    pub tail_cut: bool,
}

/// The counters and gauges of one log, at the moment they were read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalMetrics {
    /// Writes handed to the kernel (one per save, compaction, marker or checkpoint that wrote).
    pub appends: u64,
    /// Entries written.
    pub entries_written: u64,
    /// Bytes written to segment files (framed records, headers and padding).
    pub bytes_written: u64,
    /// fdatasyncs of segment files that returned success (group commits and rollover seals).
    pub syncs: u64,
    /// Their latency, in microseconds.
    pub sync_latency_us: Summary,
    /// Syncs slower than `WalOptions::slow_sync_threshold`.
    pub slow_syncs: u64,
    /// Callers whose wait a group-commit sync ended (1 = no sharing).
    pub group_commit_callers: Summary,
    /// Segment files now in the log.
    pub segments_live: u64,
    /// Segment files created since open.
    pub segments_created: u64,
    /// Segment files deleted by purges since open.
    pub segments_deleted: u64,
    /// Bytes the log's segment files take (their lengths).
    pub bytes_on_disk: u64,
    /// Heap bytes of the in-memory index.
    pub index_bytes: u64,
    /// Bytes held by the cache of the newest writes (each charged 64 bytes more).
    pub cache_bytes: u64,
    /// Snapshot files made durable (created or installed).
    pub snapshot_writes: u64,
    /// Witness records written after syncs (DESIGN.md §7, case 26); not counted in `appends`,
    /// their bytes are in `bytes_written`.
    pub witnesses: u64,
    /// Whether the log is poisoned (a write or sync failed; every write is refused).
    pub poisoned: bool,
    /// What recovery did at open.
    pub recovery: RecoveryMetrics,
}

impl WalMetrics {
    /// Sends the gauges to the `metrics` facade. Counters and histograms go there as events
    /// happen; gauges (sizes) are sent each time [`WalMetrics`] is read, so an exporter that
    /// reads `metrics()` before rendering (as raftwal-kv's `/metrics` does) shows them current.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_gauges(&self) {
        metrics::gauge!("raftwal_segments_live").set(self.segments_live as f64);
        metrics::gauge!("raftwal_disk_bytes").set(self.bytes_on_disk as f64);
        metrics::gauge!("raftwal_index_bytes").set(self.index_bytes as f64);
        metrics::gauge!("raftwal_cache_bytes").set(self.cache_bytes as f64);
        metrics::gauge!("raftwal_poisoned").set(if self.poisoned { 1.0 } else { 0.0 });
    }
}

/// The live counters of a log; [`Counters::read`] turns them into a [`WalMetrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub entries_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub sync_latency_us: Histogram,
    pub slow_syncs: AtomicU64,
    pub group_commit_callers: Histogram,
    pub segments_created: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub snapshot_writes: AtomicU64,
    pub witnesses: AtomicU64,
    pub poisonings: AtomicU64,
}

/// Converts a duration to whole microseconds, saturating.
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl Counters {
    /// A witness record of `bytes` bytes reached the kernel.
    pub(crate) fn witnessed(&self, bytes: u64) {
        self.witnesses.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("raftwal_witnesses_total").increment(1);
            metrics::counter!("raftwal_written_bytes_total").increment(bytes);
        }
    }

    /// A write of `entries` entries in `bytes` bytes reached the kernel.
    pub(crate) fn wrote(&self, entries: u64, bytes: u64) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.entries_written.fetch_add(entries, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("raftwal_appends_total").increment(1);
            metrics::counter!("raftwal_entries_written_total").increment(entries);
            metrics::counter!("raftwal_written_bytes_total").increment(bytes);
        }
    }

    /// An fdatasync returned success after `took`; `slow` is the warning threshold.
    pub(crate) fn synced(&self, took: Duration, slow: Duration) {
        self.sync_latency_us.record(micros(took));
        #[cfg(feature = "metrics")]
        metrics::histogram!("raftwal_sync_duration_seconds").record(took.as_secs_f64());
        if took >= slow {
            self.slow_syncs.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            metrics::counter!("raftwal_slow_syncs_total").increment(1);
            #[cfg(feature = "tracing")]
            tracing::warn!(
                took_ms = took.as_secs_f64() * 1e3,
                threshold_ms = slow.as_secs_f64() * 1e3,
                "slow fdatasync: the disk is slow to make writes durable"
            );
        }
    }

    /// Runs `sync` (an fdatasync) and, if it succeeds, records how long it took.
    pub(crate) fn time_sync<T>(
        &self,
        slow: Duration,
        sync: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let started = std::time::Instant::now();
        let result = sync()?;
        self.synced(started.elapsed(), slow);
        Ok(result)
    }

    /// A group commit's sync ended the wait of `callers` callers.
    pub(crate) fn group_commit(&self, callers: u64) {
        self.group_commit_callers.record(callers);
        #[cfg(feature = "metrics")]
        metrics::histogram!("raftwal_group_commit_callers").record(callers as f64);
    }

    /// A segment file was created (`true`) or deleted (`false`).
    pub(crate) fn segment(&self, created: bool) {
        let counter = if created { &self.segments_created } else { &self.segments_deleted };
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if created {
            metrics::counter!("raftwal_segments_created_total").increment(1);
        } else {
            metrics::counter!("raftwal_segments_deleted_total").increment(1);
        }
    }

    /// A snapshot file was made durable.
    pub(crate) fn snapshot_written(&self) {
        self.snapshot_writes.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("raftwal_snapshot_writes_total").increment(1);
    }

    /// The log was poisoned by `error`.
    pub(crate) fn poisoned(&self, error: &dyn std::fmt::Display) {
        self.poisonings.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("raftwal_poisonings_total").increment(1);
        #[cfg(feature = "tracing")]
        tracing::error!(%error, "log poisoned: every later write is refused until it is reopened");
        #[cfg(not(feature = "tracing"))]
        let _ = error;
    }

    /// The counters as plain values; the gauges (segments, bytes, index, cache, recovery) are
    /// the caller's to fill in.
    pub(crate) fn read(&self) -> WalMetrics {
        let sync_latency_us = self.sync_latency_us.summary();
        WalMetrics {
            appends: self.appends.load(Ordering::Relaxed),
            entries_written: self.entries_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            syncs: sync_latency_us.count,
            sync_latency_us,
            slow_syncs: self.slow_syncs.load(Ordering::Relaxed),
            group_commit_callers: self.group_commit_callers.summary(),
            segments_created: self.segments_created.load(Ordering::Relaxed),
            segments_deleted: self.segments_deleted.load(Ordering::Relaxed),
            snapshot_writes: self.snapshot_writes.load(Ordering::Relaxed),
            witnesses: self.witnesses.load(Ordering::Relaxed),
            poisoned: self.poisonings.load(Ordering::Relaxed) > 0,
            ..WalMetrics::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_keep_values_within_an_eighth() {
        let mut last = 0;
        for value in (0..100_000u64).chain([1 << 20, (1 << 20) + 12345, 1 << 40, u64::MAX]) {
            let bucket = bucket_of(value);
            assert!(bucket >= last, "bucket order broke at {value}");
            last = bucket;
            let top = bucket_top(bucket);
            if value < 1 << 47 {
                assert!(top >= value, "the bucket of {value} tops at {top}, below it");
                assert!(top - value <= value / 8 + 1, "the bucket of {value} tops at {top}");
            }
        }
        for bucket in 1..BUCKETS {
            assert!(bucket_top(bucket) > bucket_top(bucket - 1), "bucket {bucket} not above");
            assert_eq!(bucket_of(bucket_top(bucket)), bucket, "bucket {bucket}'s top is its own");
        }
    }

    #[test]
    fn summary_percentiles_of_a_known_distribution() {
        let h = Histogram::default();
        assert_eq!(h.summary(), Summary::default());
        for v in 1..=1000u64 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!((s.count, s.sum, s.max), (1000, 500_500, 1000));
        assert!((500..=500 + 500 / 8).contains(&s.p50), "p50 {}", s.p50);
        assert!((990..=1000).contains(&s.p99), "p99 {}", s.p99);
        assert!((999..=1000).contains(&s.p999), "p999 {}", s.p999);
    }

    #[test]
    fn counters_read_back_what_was_counted() {
        let c = Counters::default();
        c.wrote(3, 300);
        c.wrote(0, 64);
        c.synced(Duration::from_micros(1500), Duration::from_secs(1));
        c.synced(Duration::from_secs(2), Duration::from_secs(1));
        c.group_commit(4);
        c.segment(true);
        c.segment(true);
        c.segment(false);
        c.snapshot_written();
        let m = c.read();
        assert_eq!((m.appends, m.entries_written, m.bytes_written), (2, 3, 364));
        assert_eq!((m.syncs, m.slow_syncs), (2, 1));
        assert_eq!(m.sync_latency_us.max, 2_000_000);
        assert_eq!(m.group_commit_callers.max, 4);
        assert_eq!((m.segments_created, m.segments_deleted, m.snapshot_writes), (2, 1, 1));
        assert!(!m.poisoned);
        c.poisoned(&"EIO");
        assert!(c.read().poisoned);
    }
}
