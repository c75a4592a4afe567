//! Options of the durable storage (`WalOptions`) and the policies they choose between.

use std::time::Duration;

use crate::error::{Error, Result};

/// When a write becomes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every mutating call returns after an fdatasync that covers it. Concurrent callers share
    /// fdatasyncs (group commit): one sync covers every batch written before it started.
    #[default]
    Always,
    /// Like `Always`, but the thread that leads a group commit first waits up to `max_wait` for
    /// more writers to join, trading latency for fewer syncs under concurrency.
    Batch {
        /// How long the leader of a group commit waits before syncing.
        max_wait: Duration,
    },
    /// Calls return once the write is handed to the operating system; durability comes only
    /// from an explicit `sync()`. A crash may lose everything since the last `sync()`.
    Never,
}

/// What opening a log does with damage to data that had been durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open with `Error::Corruption` naming the segment and offset. A torn tail
    /// (unsynced writes cut short by a crash) is still cut off: it was never acknowledged.
    #[default]
    Strict,
    /// Cut the log at the first damaged record and delete every later segment. This LOSES
    /// every entry, hard state and marker from the damage on, including entries that were
    /// acknowledged as durable and that a Raft quorum may have counted as committed: use it only
    /// on a node whose log will be re-fetched from the leader, never on a majority of nodes.
    TruncateCorrupt,
    /// Like `TruncateCorrupt`, cut the log at the first damage to durable data, but first record
    /// durably (in the `repair` file) what the cut loses: per group, the highest index the log
    /// had reached, the highest term, and the newest hard state, read from every checkpoint,
    /// footer and record past the damage. Term and vote are never lost to the cut, and each
    /// group answers [`crate::Storage::repair_state`] until its log again holds what it lost,
    /// so the Raft core keeps the node from voting or campaigning until it has caught up with a
    /// leader. Safe on any minority of nodes at a time (DESIGN.md §8.2).
    Repairable,
}

impl RecoveryMode {
    /// Whether damage to durable data is cut rather than refused.
    pub fn cuts_corruption(self) -> bool {
        matches!(self, RecoveryMode::TruncateCorrupt | RecoveryMode::Repairable)
    }
}

/// Options of [`crate::WalStorage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Size each segment file is preallocated to (at most 2 GiB). A batch that does not fit
    /// starts a new segment; a batch larger than a whole segment extends the segment it starts.
    pub segment_size_bytes: u64,
    /// Largest record payload written or read (at least 1 KiB); a length field beyond it is
    /// corruption. A batch of entries larger than this is split over several records of one
    /// write; a single entry larger than this is refused.
    pub max_record_bytes: u32,
    /// When writes become durable.
    pub sync_policy: SyncPolicy,
    /// etcd's MustSync rule: a save that writes no entries and changes neither term nor vote
    /// (only the commit index, which a node can relearn from its leader) is not synced.
    pub must_sync_rule: bool,
    /// What opening does with damaged durable data.
    pub recovery_mode: RecoveryMode,
    /// Bytes of the newest writes kept in memory for reads of recent entries (DESIGN.md §9);
    /// 0 keeps none.
    pub cache_bytes: u64,
    /// Prepare the next segment file on a background thread (on: rollover never waits for a file
    /// to be created and allocated; off: the rollover prepares it inline when it needs it, which
    /// keeps the order of I/O operations deterministic for crash tests).
    pub prepare_in_background: bool,
    /// Snapshots kept on disk; older ones are deleted.
    pub snapshot_retention: usize,
    /// zstd level for snapshot data; 0 stores it uncompressed.
    pub snapshot_compression_level: i32,
    /// An fdatasync that takes at least this long is counted in `WalMetrics::slow_syncs` and,
    /// with the `tracing` feature, logged as a warning (etcd warns at one second too: a disk
    /// that slow makes followers miss heartbeats and leaders lose their lease).
    pub slow_sync_threshold: Duration,
    /// Bytes of segment files above which a purge rewrites cold groups (and asks hot ones to
    /// compact) so that old segments can go. Segments no group needs are released whatever
    /// this is.
    pub purge_threshold_bytes: u64,
    /// A group with at most this many live entries pinning old segments is cold: a purge
    /// rewrites them at the head of the log.
    pub rewrite_max_entries: u64,
    /// ... and with at most this many bytes of them.
    pub rewrite_max_bytes: u64,
    /// A hot group reported this many purges in a row is rewritten anyway, if it fits what is
    /// left of `rewrite_budget_bytes`.
    pub force_rewrite_after: u32,
    /// Bytes of entries one purge rewrites at most.
    pub rewrite_budget_bytes: u64,
    /// Open replays each sealed segment from its footer (the summary written when it was
    /// sealed) instead of reading its records: payload CRCs are then checked when entries are
    /// read and by `raftwal verify`, not at open. Off: every segment is read whole at open.
    pub read_footers: bool,
    /// Segment files a purge releases are kept (up to the threshold's worth plus two) and
    /// reused as new segments, instead of allocating and zero-filling new files: writes then
    /// overwrite blocks that exist already, and the disk writes each segment once, not twice.
    pub recycle_segments: bool,
    /// Each sync's witness record (DESIGN.md §7, case 26) is synced too, with a second
    /// fdatasync, before the sync returns. Off (the default), it reaches the disk with the next
    /// sync or the kernel's writeback, and a power cut before then together with damage to
    /// exactly the writes that sync covered reads as a torn tail: the writes are cut without a
    /// repair state. On, every acknowledged write has a durable witness, at the cost of a
    /// second fdatasync per sync (group commit shares it like the first).
    pub sync_witness: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: 64 << 20,
            max_record_bytes: crate::wal::format::DEFAULT_MAX_RECORD_BYTES,
            sync_policy: SyncPolicy::Always,
            must_sync_rule: false,
            recovery_mode: RecoveryMode::Strict,
            cache_bytes: 16 << 20,
            prepare_in_background: true,
            snapshot_retention: 2,
            snapshot_compression_level: 3,
            slow_sync_threshold: Duration::from_secs(1),
            purge_threshold_bytes: 256 << 20,
            rewrite_max_entries: 32,
            rewrite_max_bytes: 256 << 10,
            force_rewrite_after: 10,
            rewrite_budget_bytes: 16 << 20,
            read_footers: true,
            recycle_segments: true,
            sync_witness: false,
        }
    }
}

/// Segment offsets are kept in 32 bits, so no segment may grow to 4 GiB.
pub(crate) const MAX_SEGMENT_SPAN_BYTES: u64 = u32::MAX as u64;
/// Largest preallocated segment size; the rest of the 32-bit span is room for one large batch.
const MAX_SEGMENT_SIZE_BYTES: u64 = 2 << 30;

impl WalOptions {
    /// Checks that the options can work together.
    pub fn validate(&self) -> Result<()> {
        let min_segment = 4096;
        if self.segment_size_bytes < min_segment {
            return Err(Error::contract(format!(
                "segment_size_bytes {} is below the minimum {min_segment}",
                self.segment_size_bytes
            )));
        }
        if self.max_record_bytes < 1024 {
            return Err(Error::contract(format!(
                "max_record_bytes {} is below the minimum 1024",
                self.max_record_bytes
            )));
        }
        if self.segment_size_bytes > MAX_SEGMENT_SIZE_BYTES {
            return Err(Error::contract(format!(
                "segment_size_bytes {} is above the maximum {MAX_SEGMENT_SIZE_BYTES}",
                self.segment_size_bytes
            )));
        }
        if self.snapshot_retention == 0 {
            return Err(Error::contract("snapshot_retention must keep at least one snapshot"));
        }
        if !(0..=22).contains(&self.snapshot_compression_level) {
            return Err(Error::contract("snapshot_compression_level must be in 0..=22"));
        }
        Ok(())
    }
}
