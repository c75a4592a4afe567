//! Releasing segments no group needs, and rewriting cold groups forward so that a few old
//! entries never pin old segments (the problem of idle groups in a shared log).
//!
//! A segment can go once it is sealed, everything written is durable, no group's first live
//! entry lies in it or before it, and it is not the one just before the active segment (kept as
//! the second copy of what the active segment's checkpoint restates): every segment starts with
//! a checkpoint of every group's hard state, dummy and snapshot marker, so metadata never pins a
//! segment; only entries do. When the
//! log's bytes exceed `purge_threshold_bytes`, the groups whose entries pin the oldest segments
//! are handled: a cold one (at most `rewrite_max_entries` entries and `rewrite_max_bytes`) has
//! its live entries written again, unchanged, at the head of the log; a hot one is reported in
//! [`PurgeReport::compact_requested`] (its application should snapshot and compact), and after
//! `force_rewrite_after` such purges it is rewritten anyway if it fits what remains of
//! `rewrite_budget_bytes`.

use std::collections::HashSet;

use crate::error::Result;
use crate::types::Entry;
use crate::wal::writer::Op;
use crate::wal::{Engine, format};

/// Bytes of rewritten entries gathered into one write.
const REWRITE_WRITE_BYTES: u64 = 1 << 20;
/// Groups named in [`PurgeReport::top_pinning`].
const TOP_PINNING: usize = 10;

/// What a purge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Sequences of the segment files deleted, oldest first.
    pub deleted_segments: Vec<u64>,
    /// Groups whose live entries were rewritten at the head of the log.
    pub rewritten_groups: Vec<u64>,
    /// Entries rewritten.
    pub rewritten_entries: u64,
    /// Bytes of entries rewritten ([`Entry::encoded_len`] summed).
    pub rewritten_bytes: u64,
    /// Groups with too many live entries to rewrite that pin segments the log is over its
    /// threshold by: their applications should take a snapshot and compact.
    pub compact_requested: Vec<u64>,
    /// The groups pinning the most bytes after the purge: `(group, bytes of segments from the
    /// one holding its first live entry to the end of the log)`, largest first.
    pub top_pinning: Vec<(u64, u64)>,
    /// Bytes of live segment files after the purge.
    pub bytes_on_disk: u64,
    /// Released segment files kept for reuse (not counted in `bytes_on_disk`; at most
    /// `purge_threshold_bytes / segment_size_bytes + 2`, see `WalOptions::recycle_segments`).
    pub pooled_files: usize,
}

impl Engine {
    /// Makes every write durable, deletes the segments no group needs, rewrites cold groups
    /// pinning old segments when the log is above `purge_threshold_bytes`, and reports. Also runs
    /// by itself (without the report) after compactions, snapshots, removals and rollovers.
    pub fn purge(&self) -> Result<PurgeReport> {
        self.check_poisoned()?;
        let lsn = self.read().writer.lsn;
        self.sync_to(lsn, None)?;
        let mut report = PurgeReport::default();
        self.release(&mut report)?;
        self.rewrite(&mut report)?;
        let inner = self.read();
        // The files' lengths as they are (a recycled file keeps the length of its longest use).
        let sizes: Vec<(u64, u64)> = inner
            .sealed
            .iter()
            .map(|(seq, s)| (*seq, s.file.len().unwrap_or(s.size)))
            .chain([(
                inner.writer.active.sequence,
                inner.writer.active.file.len().unwrap_or(inner.writer.active_size()),
            )])
            .collect();
        report.bytes_on_disk = sizes.iter().map(|(_, len)| len).sum();
        report.pooled_files = inner.writer.pool.len();
        let mut pinning: Vec<(u64, u64)> = inner
            .state
            .iter()
            .filter_map(|(group, state)| {
                let pin = u64::from(state.index.first_loc()?.segment);
                let bytes = sizes.iter().filter(|(seq, _)| *seq >= pin).map(|(_, len)| len).sum();
                Some((group, bytes))
            })
            .collect();
        pinning.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        pinning.truncate(TOP_PINNING);
        report.top_pinning = pinning;
        Ok(report)
    }

    /// The purge that follows writes: never fails its caller (the write has happened), and runs
    /// only once everything written is durable (a deleted segment may hold the only durable copy
    /// of what a newer, unsynced record builds on).
    pub(super) fn purge_quietly(&self) {
        let lsn = self.read().writer.lsn;
        if self.lock_sync().durable_lsn < lsn {
            // Not durable yet (SyncPolicy::Never): the purge after the next sync does it.
            return;
        }
        let mut report = PurgeReport::default();
        if self.release(&mut report).is_ok() {
            let _ = self.rewrite(&mut report);
        }
    }

    /// Deletes sealed segments below every group's first live entry, oldest first, once
    /// everything written is durable.
    ///
    /// A segment whose removal fails stays, known to the log, and the next purge tries again;
    /// nothing newer is removed before it, so a crash still leaves a suffix of the log. A failed
    /// directory fsync poisons the log: whether the removal is durable is unknown, and every
    /// later rename relies on that directory's fsync.
    fn release(&self, report: &mut PurgeReport) -> Result<()> {
        let lsn = self.read().writer.lsn;
        if self.lock_sync().durable_lsn < lsn {
            return Ok(());
        }
        let mut inner = self.lock_write()?;
        if !inner.writer.is_durable() {
            // A write slipped in since the check; the purge after its sync will do this.
            return Ok(());
        }
        let active = inner.writer.active.sequence;
        let first_needed = inner
            .state
            .first_pinned_segment()
            .map_or(active, u64::from)
            // The segment before the active one stays whatever it holds: its records (and its
            // footer) are the second copy of every group's term and vote, which the active
            // segment's checkpoint restates, so damage to that checkpoint loses no vote
            // (DESIGN.md §8.2).
            .min(active.saturating_sub(1));
        let doomed: Vec<u64> = inner.sealed.range(..first_needed).map(|(seq, _)| *seq).collect();
        // Bounded by the sealed segments listed.
        for sequence in doomed {
            let path = self.dir.join(&inner.sealed[&sequence].name);
            // Kept for reuse while the pool has room (renamed: a released file is never read
            // as a segment), deleted otherwise, and when it is shorter than a segment (sealed
            // early in unwritten blocks, and cut or never preallocated): reuse would only
            // remove it.
            let keep = inner.writer.pool.len() < inner.writer.pool_capacity
                && inner.sealed[&sequence].size >= self.options.segment_size_bytes;
            let pooled = format::pool_name(sequence);
            let released = if keep {
                self.fs.rename(&path, &self.dir.join(&pooled))
            } else {
                self.fs.remove_file(&path)
            };
            match released {
                Ok(()) => {}
                // Gone already (by hand): nothing left to remove.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Still there: keep it, and everything newer, for the next purge.
                Err(e) => return Err(e.into()),
            }
            inner.sealed.remove(&sequence);
            if keep {
                inner.writer.pool.push(pooled);
            }
            self.counters.segment(false);
            report.deleted_segments.push(sequence);
            #[cfg(feature = "tracing")]
            tracing::debug!(segment = %path.display(), "purged a segment no group needs");
            // One at a time and durably: a crash must leave a suffix of the log, not a hole.
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                return Err(self.poison(e.into()));
            }
        }
        inner.purge_due = false;
        Ok(())
    }

    /// When the log is above its threshold, rewrites the cold groups that pin the segments it
    /// is over by (and hot ones asked often enough, within the budget), syncs, and releases.
    fn rewrite(&self, report: &mut PurgeReport) -> Result<()> {
        let options = &self.options;
        let mut inner = self.lock_write()?;
        let sizes = segment_sizes(&inner);
        let total: u64 = sizes.iter().map(|(_, len)| len).sum();
        if total <= options.purge_threshold_bytes {
            inner.compact_requests.clear();
            return Ok(());
        }
        // The oldest sealed segments whose release would bring the log under the threshold.
        let active = inner.writer.active.sequence;
        let mut excess = total - options.purge_threshold_bytes;
        let mut target = None;
        for (sequence, len) in sizes.iter().filter(|(seq, _)| *seq < active) {
            target = Some(*sequence);
            if *len >= excess {
                break;
            }
            excess -= len;
        }
        let Some(target) = target else { return Ok(()) };
        let mut pinning: Vec<(u64, u64, u64)> = inner
            .state
            .iter()
            .filter_map(|(group, state)| {
                let pin = u64::from(state.index.first_loc()?.segment);
                let span: u64 = sizes.iter().filter(|(seq, _)| *seq >= pin).map(|(_, l)| l).sum();
                (pin <= target).then_some((group, state.index.len() as u64, span))
            })
            .collect();
        pinning.sort_unstable();
        let still: HashSet<u64> = pinning.iter().map(|(group, ..)| *group).collect();
        inner.compact_requests.retain(|group, _| still.contains(group));

        let mut budget = options.rewrite_budget_bytes;
        let mut pending: Vec<(u64, Vec<Entry>)> = Vec::new();
        let mut pending_bytes = 0u64;
        let mut lsn = None;
        // Bounded by the groups listed.
        for (group, live, span) in pinning {
            let cold = live <= options.rewrite_max_entries;
            let asked = inner.compact_requests.get(&group).copied().unwrap_or(0);
            let forced = asked >= options.force_rewrite_after;
            // A hot group is read only if its whole log could fit the budget: the bytes from its
            // first entry's segment on bound its live entries.
            let limit = if cold { options.rewrite_max_bytes.min(budget) } else { budget };
            if !cold && (!forced || span > limit.saturating_mul(4)) {
                *inner.compact_requests.entry(group).or_insert(0) += 1;
                report.compact_requested.push(group);
                continue;
            }
            let (first, last) = super::bounds(&inner.state, group);
            let entries =
                inner.entries(group, first, last + 1, limit.max(1), options.max_record_bytes)?;
            let bytes: u64 = entries.iter().map(Entry::encoded_len).sum();
            if entries.len() as u64 != live || bytes > limit {
                *inner.compact_requests.entry(group).or_insert(0) += 1;
                report.compact_requested.push(group);
                continue;
            }
            budget -= bytes;
            inner.compact_requests.remove(&group);
            report.rewritten_groups.push(group);
            report.rewritten_entries += live;
            report.rewritten_bytes += bytes;
            pending_bytes += bytes;
            pending.push((group, entries));
            if pending_bytes >= REWRITE_WRITE_BYTES {
                lsn = Some(self.write_rewrites(&mut inner, &pending)?);
                pending.clear();
                pending_bytes = 0;
            }
        }
        if !pending.is_empty() {
            lsn = Some(self.write_rewrites(&mut inner, &pending)?);
        }
        drop(inner);
        if let Some(lsn) = lsn {
            self.sync_to(lsn, None)?;
            self.release(report)?;
        }
        Ok(())
    }

    /// Writes each group's live entries again, unchanged: the same suffix replacement as any
    /// append, so the index simply points at the new copies.
    fn write_rewrites(
        &self,
        inner: &mut super::Inner,
        groups: &[(u64, Vec<Entry>)],
    ) -> Result<u64> {
        let ops: Vec<Op<'_>> = groups
            .iter()
            .map(|(group, entries)| Op::Entries { group: *group, entries, hard_state: None })
            .collect();
        #[cfg(feature = "tracing")]
        tracing::debug!(groups = groups.len(), "rewrote cold groups pinning old segments");
        self.write_ops(inner, &ops)
    }
}

/// `(sequence, bytes)` of every live segment, oldest first, from memory (no system call: the
/// purge that follows every rollover must not add I/O that could fail).
fn segment_sizes(inner: &super::Inner) -> Vec<(u64, u64)> {
    inner
        .sealed
        .iter()
        .map(|(seq, s)| (*seq, s.size))
        .chain([(inner.writer.active.sequence, inner.writer.active_size())])
        .collect()
}
