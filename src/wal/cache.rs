//! The log's newest writes, kept in memory under one byte budget: Raft reads mostly what it
//! just wrote (to replicate it and to apply it), so the tails of the logs are served without a
//! `pread`.
//!
//! Each write's buffer (its framed records, the bytes handed to the kernel) is kept whole, keyed
//! by where it starts in the log. A read looks up the write holding the record its index
//! location names and decodes that record in place, sharing the buffer. The index alone says
//! which entries are live, so an overwrite, a compaction or a removal changes nothing here, and
//! caching a write costs one queue push however many groups it holds: the write path never
//! touches a group's memory for the cache. Over the budget the oldest writes are dropped first,
//! but never one not yet durable: its bytes may then be only in the page cache, which a failed
//! fdatasync can drop, so the budget may be exceeded by the writes since the last sync.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::wal::index::Loc;

/// Bytes charged to the budget for each cached write besides its own: the queue item, the
/// buffer's shared header and the allocator's overhead, so that many small writes cannot hold
/// much more memory than the budget says.
pub const WRITE_OVERHEAD_BYTES: u64 = 64;

/// One write of the log, as written.
#[derive(Debug)]
struct CachedWrite {
    /// Segment sequence (low 32 bits, as in [`Loc`]).
    segment: u32,
    /// Offset in the segment of the write's first byte.
    offset: u32,
    /// The log sequence number at the write's end: durable once a sync reaches it.
    end_lsn: u64,
    bytes: Bytes,
}

impl CachedWrite {
    fn cost(&self) -> u64 {
        self.bytes.len() as u64 + WRITE_OVERHEAD_BYTES
    }
}

/// The newest writes of the log, at most `limit_bytes` of them (plus [`WRITE_OVERHEAD_BYTES`]
/// each) once they are durable.
#[derive(Debug)]
pub struct WriteCache {
    /// In log order: by segment, then by offset.
    writes: VecDeque<CachedWrite>,
    bytes: u64,
    limit_bytes: u64,
}

impl WriteCache {
    /// An empty cache holding up to `limit_bytes`; 0 caches nothing.
    pub fn new(limit_bytes: u64) -> WriteCache {
        WriteCache { writes: VecDeque::new(), bytes: 0, limit_bytes }
    }

    /// Whether writes are kept at all.
    pub fn is_enabled(&self) -> bool {
        self.limit_bytes > 0
    }

    /// Bytes charged to the budget now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Keeps the write of `bytes` at `offset` of segment `segment`, ending at log sequence
    /// number `end_lsn`; then drops the oldest writes over the budget that `durable_lsn` covers.
    pub fn insert(
        &mut self,
        segment: u64,
        offset: u64,
        bytes: Bytes,
        end_lsn: u64,
        durable_lsn: u64,
    ) {
        if !self.is_enabled() || bytes.is_empty() {
            return;
        }
        let write = CachedWrite {
            segment: u32::try_from(segment).expect("fewer than 2^32 segments"),
            offset: u32::try_from(offset).expect("segments stay below 4 GiB"),
            end_lsn,
            bytes,
        };
        // Reads find a write by binary search: the queue must stay in log order, and writes
        // never overlap.
        if let Some(last) = self.writes.back() {
            assert!(
                (last.segment, u64::from(last.offset) + last.bytes.len() as u64)
                    <= (write.segment, u64::from(write.offset)),
                "writes are cached in log order"
            );
            assert!(last.end_lsn < write.end_lsn, "log sequence numbers grow");
        }
        self.bytes += write.cost();
        self.writes.push_back(write);
        self.evict(durable_lsn);
    }

    /// Drops the oldest writes while over the budget, stopping at one not durable.
    pub fn evict(&mut self, durable_lsn: u64) {
        // Bounded by the number of cached writes.
        while self.bytes > self.limit_bytes {
            match self.writes.front() {
                Some(oldest) if oldest.end_lsn <= durable_lsn => {
                    self.bytes -= oldest.cost();
                    self.writes.pop_front();
                }
                _ => break,
            }
        }
    }

    /// The cached write holding the byte at `loc`, and the segment offset it starts at.
    pub fn get(&self, loc: Loc) -> Option<(u64, &Bytes)> {
        let after =
            self.writes.partition_point(|w| (w.segment, w.offset) <= (loc.segment, loc.offset));
        let write = self.writes.get(after.checked_sub(1)?)?;
        // In the same segment, the write starts at or before `loc` (the search says so).
        let holds = write.segment == loc.segment
            && u64::from(loc.offset - write.offset) < write.bytes.len() as u64;
        holds.then_some((u64::from(write.offset), &write.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u32, offset: u32) -> Loc {
        Loc { segment, offset }
    }

    fn bytes(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn finds_the_write_holding_a_location_in_any_segment() {
        let mut cache = WriteCache::new(1 << 20);
        cache.insert(1, 40, bytes(100), 100, 0);
        cache.insert(1, 140, bytes(50), 150, 0);
        cache.insert(2, 0, bytes(10), 160, 0);
        assert_eq!(cache.get(at(1, 40)).map(|(o, b)| (o, b.len())), Some((40, 100)));
        assert_eq!(cache.get(at(1, 139)).map(|(o, _)| o), Some(40));
        assert_eq!(cache.get(at(1, 140)).map(|(o, b)| (o, b.len())), Some((140, 50)));
        assert_eq!(cache.get(at(2, 9)).map(|(o, _)| o), Some(0));
        assert!(cache.get(at(1, 39)).is_none(), "before the first cached write");
        assert!(cache.get(at(1, 190)).is_none(), "past the end of segment 1's last write");
        assert!(cache.get(at(2, 10)).is_none(), "past the newest write");
        assert!(cache.get(at(3, 0)).is_none(), "a segment with no cached write");
        assert!(cache.get(at(0, 50)).is_none(), "an older segment");
    }

    #[test]
    fn over_the_budget_the_oldest_durable_writes_go_first() {
        let cost = 100 + WRITE_OVERHEAD_BYTES;
        let mut cache = WriteCache::new(2 * cost);
        cache.insert(1, 0, bytes(100), 100, 100);
        cache.insert(1, 100, bytes(100), 200, 200);
        assert_eq!(cache.bytes(), 2 * cost);
        cache.insert(1, 200, bytes(100), 300, 300);
        assert!(cache.get(at(1, 0)).is_none(), "the oldest write was dropped");
        assert!(cache.get(at(1, 100)).is_some() && cache.get(at(1, 200)).is_some());
        assert_eq!(cache.bytes(), 2 * cost);
    }

    #[test]
    fn writes_not_yet_durable_are_never_dropped() {
        let cost = 100 + WRITE_OVERHEAD_BYTES;
        let mut cache = WriteCache::new(cost);
        cache.insert(1, 0, bytes(100), 100, 0);
        cache.insert(1, 100, bytes(100), 200, 0);
        cache.insert(1, 200, bytes(100), 300, 0);
        assert_eq!(cache.bytes(), 3 * cost, "nothing is durable: all kept over the budget");
        cache.evict(200);
        assert!(cache.get(at(1, 0)).is_none() && cache.get(at(1, 100)).is_none());
        assert!(cache.get(at(1, 200)).is_some(), "the write past the durable point stays");
        assert_eq!(cache.bytes(), cost);
    }

    #[test]
    fn a_zero_limit_caches_nothing() {
        let mut cache = WriteCache::new(0);
        cache.insert(1, 0, bytes(100), 100, 100);
        assert!(cache.get(at(1, 0)).is_none());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    #[should_panic(expected = "log order")]
    fn a_write_out_of_log_order_is_refused() {
        let mut cache = WriteCache::new(1 << 20);
        cache.insert(2, 0, bytes(10), 10, 0);
        cache.insert(1, 500, bytes(10), 20, 0);
    }
}
