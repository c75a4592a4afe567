//! A bounded cache of the newest entries: Raft reads mostly what it just wrote (to replicate it
//! and to apply it), so the tail of the log is served from memory.

use std::collections::VecDeque;

use crate::types::Entry;

/// A contiguous run of the newest entries, ending at the log's last index when non-empty,
/// holding at most `limit_bytes` of [`Entry::encoded_len`] (and at least the newest entry).
#[derive(Debug)]
pub struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: u64,
    limit_bytes: u64,
}

impl EntryCache {
    /// An empty cache holding up to `limit_bytes`.
    pub fn new(limit_bytes: u64) -> EntryCache {
        EntryCache { entries: VecDeque::new(), bytes: 0, limit_bytes }
    }

    /// Bytes of entries held ([`Entry::encoded_len`] summed).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The entry at `index`, if cached.
    pub fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.entries.front()?.index;
        self.entries.get(usize::try_from(index.checked_sub(first)?).ok()?)
    }

    /// Records that `entries` (contiguous) replaced everything from their first index on.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(head) = entries.first() else { return };
        if self.limit_bytes == 0 {
            return;
        }
        match self.entries.front().map(|e| e.index) {
            Some(first) if head.index > first => self.truncate_from(head.index),
            _ => self.clear(),
        }
        if let Some(back) = self.entries.back() {
            // The cache must stay contiguous; an append past its end means it missed entries.
            if back.index + 1 != head.index {
                self.clear();
            }
        }
        for entry in entries {
            self.bytes += entry.encoded_len();
            self.entries.push_back(entry.clone());
        }
        // Bounded: each pop removes one of the entries just counted.
        while self.bytes > self.limit_bytes && self.entries.len() > 1 {
            let dropped = self.entries.pop_front().expect("len > 1");
            self.bytes -= dropped.encoded_len();
        }
    }

    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            let dropped = self.entries.pop_back().expect("checked non-empty");
            self.bytes -= dropped.encoded_len();
        }
    }

    /// Drops every entry at or below `index`.
    pub fn compact(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            let dropped = self.entries.pop_front().expect("checked non-empty");
            self.bytes -= dropped.encoded_len();
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
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
        cache.append(&[e(1, 1), e(2, 1), e(3, 1), e(4, 1)]);
        assert!(cache.get(1).is_none(), "over the limit, the oldest entry is dropped");
        assert_eq!(cache.get(2).unwrap().index, 2);
        cache.append(&[e(3, 2)]);
        assert_eq!(cache.get(3).unwrap().term, 2, "an overwrite replaces the suffix");
        assert!(cache.get(4).is_none(), "entries after an overwrite are gone");
        cache.compact(2);
        assert!(cache.get(2).is_none());
        cache.append(&[e(10, 3)]);
        assert_eq!(cache.get(10).unwrap().index, 10);
        assert!(cache.get(3).is_none(), "a non-contiguous append restarts the cache");
    }

    #[test]
    fn a_zero_limit_caches_nothing() {
        let mut cache = EntryCache::new(0);
        cache.append(&[e(1, 1)]);
        assert!(cache.get(1).is_none());
    }
}
