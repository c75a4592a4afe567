//! `WalStorage::metrics` after known workloads: every counter and gauge is checked against what
//! the workload did, on CrashFs (deterministic, no background thread) so the counts are exact.
//! With the `metrics` feature, the same events reach the `metrics` facade under their
//! documented names.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftwal::io::{CrashFs, Fault, FaultKind, Fs};
use raftwal::{ConfState, Entry, Error, HardState, WalMetrics, WalOptions, WalStorage};

const ENTRY_BYTES: usize = 200;

fn options() -> WalOptions {
    WalOptions { segment_size_bytes: 4096, prepare_in_background: false, ..WalOptions::default() }
}

fn open(fs: &CrashFs, options: WalOptions) -> raftwal::Result<WalStorage> {
    WalStorage::open_with_fs(Arc::new(fs.clone()) as Fs, Path::new("/node"), options)
}

fn entries(from: u64, count: u64) -> Vec<Entry> {
    (from..from + count)
        .map(|i| Entry::new(i, 1, Bytes::from(vec![i as u8; ENTRY_BYTES])))
        .collect()
}

/// Ten saves of ten entries, each with a hard state, under `SyncPolicy::Always`.
fn workload(storage: &WalStorage) {
    for batch in 0..10u64 {
        let hs = HardState { term: 1, vote: 1, commit: batch * 10 };
        storage.save(Some(&hs), &entries(1 + batch * 10, 10)).unwrap();
    }
}

#[test]
fn metrics_count_what_a_workload_did() {
    let fs = CrashFs::new();
    let storage = open(&fs, options()).unwrap();
    let fresh = storage.metrics();
    assert_eq!((fresh.appends, fresh.entries_written, fresh.bytes_written), (0, 0, 0));
    assert_eq!((fresh.segments_live, fresh.segments_created), (1, 1), "a new log has one segment");
    assert!(!fresh.poisoned);

    workload(&storage);
    let m = storage.metrics();
    assert_eq!(m.appends, 10, "one write per save");
    assert_eq!(m.entries_written, 100);
    assert!(
        m.bytes_written >= 100 * ENTRY_BYTES as u64,
        "{} bytes written for 100 entries of {ENTRY_BYTES} bytes",
        m.bytes_written
    );
    // 20 KB of entries in 4 KiB segments: several rollovers, each sealing the old segment with
    // an fdatasync of its own, besides one group-commit sync per save.
    let rollovers = m.segments_created - 1;
    assert!(rollovers >= 4, "only {rollovers} rollovers for 20 KB in 4 KiB segments");
    assert_eq!(m.segments_live, m.segments_created, "nothing purged yet");
    // The first save changes the term and vote: sealing its segment makes it durable on the
    // spot, so it needs no group commit.
    assert_eq!(m.group_commit_callers.count, 9, "one group commit per later save, none shared");
    assert_eq!(m.group_commit_callers.max, 1);
    assert!(m.syncs >= 10, "{} syncs for 10 synced saves", m.syncs);
    assert_eq!(m.sync_latency_us.count, m.syncs);
    assert!(m.sync_latency_us.p50 <= m.sync_latency_us.max);
    assert_eq!(m.slow_syncs, 0, "no sync takes a second on CrashFs");
    // Every segment is preallocated but the first: a new log's first segment is only
    // allocated, and the seal that the first save's term change made gave its unused space back.
    assert!(
        m.bytes_on_disk >= (m.segments_live - 1) * 4096,
        "segments after the first are preallocated"
    );
    assert!(m.index_bytes >= 100 * 8, "the index holds 8 bytes per live entry");
    assert!(m.cache_bytes >= 100 * ENTRY_BYTES as u64, "the cache holds the new entries");

    // A snapshot and a compaction: one snapshot file, old segments purged.
    let voters = ConfState { voters: vec![1], ..ConfState::default() };
    storage.create_snapshot(90, Some(voters), Bytes::from_static(b"image")).unwrap();
    storage.compact(90).unwrap();
    let after = storage.metrics();
    assert_eq!(after.snapshot_writes, 1);
    assert!(after.segments_deleted >= 3, "compaction to 90 purged {}", after.segments_deleted);
    assert_eq!(after.segments_live, after.segments_created - after.segments_deleted);
    let live = after.segments_live;
    storage.close().unwrap();

    // Reopen: recovery read the live segments and cut nothing.
    let reopened = open(&fs, options()).unwrap();
    let r = reopened.metrics();
    assert_eq!(r.recovery.segments_scanned, live);
    assert!(r.recovery.bytes_scanned > 0);
    assert!(!r.recovery.tail_cut);
    // The sealed ones replayed from their footers, the newest read whole.
    assert_eq!(
        r.recovery.rows,
        [("F1", live - 1), ("R1", 1)],
        "every segment of a clean log ends cleanly"
    );
    assert_eq!((r.appends, r.entries_written), (0, 0), "counters start at open");
}

#[test]
fn a_sync_at_or_above_the_threshold_is_counted_slow() {
    let fs = CrashFs::new();
    let options = WalOptions { slow_sync_threshold: Duration::ZERO, ..options() };
    let storage = open(&fs, options).unwrap();
    workload(&storage);
    let m = storage.metrics();
    assert!(m.syncs > 0);
    assert_eq!(m.slow_syncs, m.syncs, "with a zero threshold every sync is slow");
}

#[test]
fn a_failed_sync_shows_as_poisoned() {
    let fs = CrashFs::new();
    let storage = open(&fs, options()).unwrap();
    storage.save(None, &entries(1, 1)).unwrap();
    let syncs = storage.metrics().syncs;
    fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::SyncEio });
    assert!(storage.save(None, &entries(2, 1)).is_err());
    let m = storage.metrics();
    assert!(m.poisoned);
    assert_eq!(m.syncs, syncs, "a failed sync is not counted as one");
    assert!(matches!(storage.save(None, &entries(3, 1)), Err(Error::Poisoned)));
}

#[test]
fn a_torn_tail_cut_at_open_is_reported() {
    let options = WalOptions {
        segment_size_bytes: 64 << 10,
        sync_policy: raftwal::SyncPolicy::Never,
        ..options()
    };
    // An unsynced write of 16 sectors, then a power cut: a seed keeps, loses or tears each of
    // its sectors, so try seeds until one leaves a torn tail (bounded: most seeds do).
    let mut cut: Option<WalMetrics> = None;
    for seed in 0..64 {
        let fs = CrashFs::new();
        let storage = open(&fs, options.clone()).unwrap();
        storage.save(None, &entries(1, 2)).unwrap();
        storage.sync().unwrap();
        storage.save(None, &entries(3, 40)).unwrap();
        drop(storage);
        fs.crash(seed);
        let m = open(&fs, options.clone()).unwrap().metrics();
        if m.recovery.tail_cut {
            cut = Some(m);
            break;
        }
        assert_eq!(m.recovery.rows, [("R1", 1)], "no cut, one clean segment");
    }
    let m = cut.expect("no seed in 64 tore the unsynced write");
    // One segment, cut by a truncating row of the table (R2, R3 or R4).
    assert_eq!(m.recovery.rows.len(), 1, "one segment: {:?}", m.recovery.rows);
    let (row, count) = m.recovery.rows[0];
    assert!(["R2", "R3", "R4"].contains(&row), "row {row}");
    assert_eq!(count, 1);
}

#[cfg(feature = "metrics")]
mod facade {
    //! The same events through the `metrics` facade, caught by a recorder local to the test's
    //! thread (other tests running in parallel cannot add to its counts).

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };

    use super::*;

    #[derive(Default)]
    struct Cell {
        total: AtomicU64,
        samples: AtomicU64,
    }

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.total.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.total.store(value, Ordering::Relaxed);
        }
    }

    impl GaugeFn for Cell {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, _: f64) {
            self.samples.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl HistogramFn for Cell {
        fn record(&self, _: f64) {
            self.samples.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[derive(Default)]
    struct Catch(Mutex<BTreeMap<String, Arc<Cell>>>);

    impl Catch {
        fn cell(&self, key: &Key) -> Arc<Cell> {
            let mut cells = self.0.lock().unwrap();
            cells.entry(key.name().to_string()).or_default().clone()
        }
        fn total(&self, name: &str) -> u64 {
            self.0.lock().unwrap().get(name).map_or(0, |c| c.total.load(Ordering::Relaxed))
        }
        fn samples(&self, name: &str) -> u64 {
            self.0.lock().unwrap().get(name).map_or(0, |c| c.samples.load(Ordering::Relaxed))
        }
    }

    impl Recorder for Catch {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.cell(key))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.cell(key))
        }
    }

    #[test]
    fn the_facade_sees_the_same_counts_under_the_documented_names() {
        let catch = Catch::default();
        let fs = CrashFs::new();
        let m = metrics::with_local_recorder(&catch, || {
            let storage = open(&fs, options()).unwrap();
            workload(&storage);
            storage.metrics()
        });
        assert_eq!(catch.total("raftwal_appends_total"), m.appends);
        assert_eq!(catch.total("raftwal_entries_written_total"), 100);
        assert_eq!(catch.total("raftwal_written_bytes_total"), m.bytes_written);
        assert_eq!(catch.samples("raftwal_sync_duration_seconds"), m.syncs);
        assert_eq!(catch.samples("raftwal_group_commit_callers"), m.group_commit_callers.count);
        assert_eq!(catch.total("raftwal_segments_created_total"), m.segments_created);
        assert_eq!(catch.samples("raftwal_recovery_duration_seconds"), 1);
    }
}
