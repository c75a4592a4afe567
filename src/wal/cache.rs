//! A bounded cache of the newest entries of every group, under one byte budget: Raft reads
//! mostly what it just wrote (to replicate it and to apply it), so the tails of the logs are
//! served from memory.
//!
//! Each group keeps a contiguous run ending at its last index. One queue remembers the order in
//! which entries were cached over all groups; over the budget, the oldest are evicted first, but
//! never an entry whose write is not yet durable (its bytes are then only in the page cache, and
//! the budget may be exceeded by the unsynced writes until their sync).

use std::collections::VecDeque;

use crate::wal::state::GroupMap;

use crate::types::Entry;

/// One group's cached run: entries with the log position (LSN) of the write that made them.
#[derive(Debug, Default)]
struct GroupCache {
    /// Index of the first cached entry (meaningless while `entries` is empty). Kept beside the
    /// run so that finding a place in it reads the group's table slot, not the run's memory:
    /// with many groups, each run's first and last entries are cache misses.
    first: u64,
    entries: VecDeque<(Entry, u64)>,
}

impl GroupCache {
    fn get(&self, index: u64) -> Option<&Entry> {
        let at = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.entries.get(at).map(|(e, _)| e)
    }

    /// Drops the first cached entry, returning it.
    fn pop_front(&mut self) -> Option<Entry> {
        let (entry, _) = self.entries.pop_front()?;
        debug_assert_eq!(entry.index, self.first, "the run starts at `first`");
        self.first += 1;
        Some(entry)
    }
}

/// Entries one append cached (see [`EntryCache::append`]).
#[derive(Clone, Copy, Debug)]
struct Appended {
    group: u64,
    first: u64,
    count: u64,
    lsn: u64,
}

/// The newest entries of every group, at most `limit_bytes` of [`Entry::encoded_len`] once
/// written entries are durable.
#[derive(Debug)]
pub struct EntryCache {
    groups: GroupMap<GroupCache>,
    // One item per append, in the order cached: entries `first..first + count` of `group`,
    // written at `lsn`. Entries gone since (compacted or replaced) are skipped when reached.
    order: VecDeque<Appended>,
    bytes: u64,
    entries: usize,
    limit_bytes: u64,
}

impl EntryCache {
    /// An empty cache holding up to `limit_bytes`.
    pub fn new(limit_bytes: u64) -> EntryCache {
        EntryCache {
            groups: GroupMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            entries: 0,
            limit_bytes,
        }
    }

    /// Bytes of entries held ([`Entry::encoded_len`] summed).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entry `index` of `group`, if cached.
    pub fn get(&self, group: u64, index: u64) -> Option<&Entry> {
        self.groups.get(&group)?.get(index)
    }

    /// Records that `entries` (contiguous) of `group`, written at `lsn`, replaced everything from
    /// their first index on; then evicts down to the budget what `durable_lsn` covers.
    pub fn append(&mut self, group: u64, entries: &[Entry], lsn: u64, durable_lsn: u64) {
        let Some(head) = entries.first() else { return };
        if self.limit_bytes == 0 {
            return;
        }
        let cache = self.groups.entry(group).or_default();
        // Drop the replaced suffix, and everything if the run would not stay contiguous.
        let mut dropped = (0u64, 0usize);
        let (first, len) = (cache.first, cache.entries.len() as u64);
        let keep = if len > 0 && head.index > first && head.index <= first + len {
            (head.index - first) as usize
        } else {
            0
        };
        if keep < cache.entries.len() {
            // Only a replacement drops anything; an append at the end skips the drain's setup.
            for (entry, _) in cache.entries.drain(keep..) {
                dropped.0 += entry.encoded_len();
                dropped.1 += 1;
            }
        }
        if keep == 0 {
            cache.first = head.index;
        }
        debug_assert!(
            cache.entries.back().is_none_or(|(e, _)| e.index + 1 == head.index),
            "the run stays contiguous"
        );
        for entry in entries {
            self.bytes += entry.encoded_len();
            cache.entries.push_back((entry.clone(), lsn));
        }
        let count = entries.len() as u64;
        self.order.push_back(Appended { group, first: head.index, count, lsn });
        self.bytes -= dropped.0;
        self.entries = self.entries + entries.len() - dropped.1;
        self.evict(durable_lsn);
    }

    /// Evicts the oldest cached entries while over the budget, stopping at one not durable.
    pub fn evict(&mut self, durable_lsn: u64) {
        // Bounded: each pass drops or shortens the front item, or stops.
        while self.bytes > self.limit_bytes {
            let Some(item) = self.order.front_mut() else { break };
            if item.lsn > durable_lsn {
                break;
            }
            let Some(cache) = self.groups.get_mut(&item.group) else {
                // The group's entries are all gone (compacted, replaced or cleared).
                self.order.pop_front();
                continue;
            };
            // The append's entries still cached are at the front of its group's run: evict as
            // many as the budget asks, with one lookup for the run.
            let end = item.first + item.count;
            // Bounded by the item's entries.
            while self.bytes > self.limit_bytes {
                match cache.entries.front() {
                    Some((entry, lsn))
                        if *lsn == item.lsn && entry.index >= item.first && entry.index < end =>
                    {
                        self.bytes -= entry.encoded_len();
                        item.first = entry.index + 1;
                        self.entries -= 1;
                        cache.pop_front();
                    }
                    _ => {
                        // Nothing of this append is left at the front: it was compacted or
                        // replaced.
                        item.first = end;
                        break;
                    }
                }
            }
            item.count = end - item.first;
            if cache.entries.is_empty() {
                self.groups.remove(&item.group);
            }
            if item.count == 0 {
                self.order.pop_front();
            }
        }
        // Items of appends whose entries are all gone are dropped once they outnumber the
        // cached entries, so the queue stays within twice those (plus a constant).
        if self.order.len() > 2 * self.entries + 1024 {
            let groups = &self.groups;
            // An append's entries left in the cache are a contiguous run from its first one
            // not yet compacted: that entry alone says whether any is left.
            self.order.retain(|item| {
                groups.get(&item.group).is_some_and(|c| {
                    let at = item.first.max(c.first);
                    at < item.first + item.count
                        && c.entries
                            .get((at - c.first) as usize)
                            .is_some_and(|(_, l)| *l == item.lsn)
                })
            });
        }
    }

    /// Drops every entry of `group` at or below `index`.
    pub fn compact(&mut self, group: u64, index: u64) {
        let Some(cache) = self.groups.get_mut(&group) else { return };
        // Bounded by the group's cached entries.
        while !cache.entries.is_empty() && cache.first <= index {
            let entry = cache.pop_front().expect("checked non-empty");
            self.bytes -= entry.encoded_len();
            self.entries -= 1;
        }
        if cache.entries.is_empty() {
            self.groups.remove(&group);
        }
    }

    /// Drops every entry of `group`.
    pub fn clear(&mut self, group: u64) {
        if let Some(cache) = self.groups.remove(&group) {
            self.bytes -= cache.entries.iter().map(|(e, _)| e.encoded_len()).sum::<u64>();
            self.entries -= cache.entries.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry::new(index, term, vec![0u8; 79]) // 100 bytes encoded
    }

    #[test]
    fn keeps_a_bounded_contiguous_tail_and_follows_overwrites() {
        let mut cache = EntryCache::new(300);
        cache.append(1, &[e(1, 1), e(2, 1), e(3, 1), e(4, 1)], 1, 1);
        assert!(cache.get(1, 1).is_none(), "over the limit, the oldest entry is dropped");
        assert_eq!(cache.get(1, 2).unwrap().index, 2);
        cache.append(1, &[e(3, 2)], 2, 2);
        assert_eq!(cache.get(1, 3).unwrap().term, 2, "an overwrite replaces the suffix");
        assert!(cache.get(1, 4).is_none(), "entries after an overwrite are gone");
        cache.compact(1, 2);
        assert!(cache.get(1, 2).is_none());
        cache.append(1, &[e(10, 3)], 3, 3);
        assert_eq!(cache.get(1, 10).unwrap().index, 10);
        assert!(cache.get(1, 3).is_none(), "a non-contiguous append restarts the cache");
        assert!(cache.bytes() <= 300);
    }

    #[test]
    fn one_budget_over_groups_evicts_the_oldest_first() {
        let mut cache = EntryCache::new(300);
        cache.append(1, &[e(1, 1), e(2, 1)], 1, 1);
        cache.append(2, &[e(1, 1)], 2, 2);
        cache.append(3, &[e(1, 1)], 3, 3);
        assert!(cache.get(1, 1).is_none(), "the oldest entry of all groups went first");
        assert!(cache.get(1, 2).is_some() && cache.get(2, 1).is_some());
        assert!(cache.get(3, 1).is_some());
        assert_eq!(cache.bytes(), 300);
    }

    #[test]
    fn entries_not_yet_durable_are_never_evicted() {
        let mut cache = EntryCache::new(100);
        cache.append(1, &[e(1, 1), e(2, 1), e(3, 1)], 5, 4);
        for i in 1..=3 {
            assert!(cache.get(1, i).is_some(), "entry {i} is not durable yet");
        }
        cache.evict(5);
        assert!(cache.get(1, 1).is_none() && cache.get(1, 2).is_none());
        assert!(cache.get(1, 3).is_some(), "the newest entry stays");
    }

    #[test]
    fn a_replaced_entry_does_not_evict_its_replacement() {
        let mut cache = EntryCache::new(250);
        cache.append(1, &[e(1, 1), e(2, 1)], 1, 1);
        cache.append(1, &[e(1, 2)], 2, 1);
        // Over the budget? 100 bytes: nothing to do; the stale item for (1, 1) stays queued.
        cache.append(2, &[e(1, 1), e(2, 1)], 3, 1);
        assert_eq!(cache.get(1, 1).unwrap().term, 2, "the unsynced replacement is kept");
    }

    #[test]
    fn a_zero_limit_caches_nothing() {
        let mut cache = EntryCache::new(0);
        cache.append(1, &[e(1, 1)], 1, 1);
        assert!(cache.get(1, 1).is_none());
    }

    #[test]
    fn appends_whose_entries_are_gone_do_not_pile_up_in_the_queue() {
        let mut cache = EntryCache::new(1 << 20);
        // Under the budget nothing is evicted; compaction removes the entries behind the queue.
        for i in 1..=20_000u64 {
            cache.append(1, &[e(i, 1)], i, 0);
            cache.compact(1, i - 1);
            cache.evict(0);
            assert!(cache.order.len() <= 2 * cache.entries + 1024 + 1, "{}", cache.order.len());
        }
        assert_eq!(cache.entries, 1);
        assert!(cache.get(1, 20_000).is_some());
    }
}
