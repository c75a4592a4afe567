//! The log's newest writes, kept in memory under one byte budget: Raft reads mostly what it
//! just wrote (to replicate it and to apply it), so the tails of the logs are served without a
//! `pread`.
//!
//! Each write's buffer (its framed records, the bytes handed to the kernel) is kept whole, keyed
//! by where it starts in the log, with where its entries records lie. Caching a write costs one
//! queue push however many groups it holds: the write path never touches a group's memory for
//! the cache. The first read that needs a cached write decodes its entries records once, the
//! entries sharing the buffer; later reads clone them from that table. The index alone says which
//! entries are live, so an overwrite, a compaction or a removal changes nothing here. Over the
//! budget the oldest writes are dropped first, but never one not yet durable: its bytes may then
//! be only in the page cache, which a failed fdatasync can drop, so the budget may be exceeded by
//! the writes since the last sync.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::types::Entry;
use crate::wal::format::{FRAME_HEADER_LEN, FrameHeader, RecordType, decode_entries_in};
use crate::wal::index::Loc;
use crate::wal::writer::EntriesWritten;

/// Bytes charged to the budget for each cached write besides its own: the queue item, the
/// buffer's shared header and the allocator's overhead, so that many small writes cannot hold
/// much more memory than the budget says.
pub const WRITE_OVERHEAD_BYTES: u64 = 64;

/// Bytes charged per entry and per record for the table a read decodes (charged when the write
/// is cached, whether it is ever read or not).
const ENTRY_TABLE_BYTES: u64 = size_of::<Entry>() as u64;
const RECORD_TABLE_BYTES: u64 = (size_of::<EntriesWritten>() + size_of::<usize>()) as u64;

/// A cached write's entries, decoded: every record's, in record order, and where each record's
/// first entry is among them.
#[derive(Debug, Default)]
struct Table {
    entries: Vec<Entry>,
    starts: Vec<usize>,
}

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
    /// Its entries records, in offset order (as the writer reported them for the index).
    records: Vec<EntriesWritten>,
    /// The records' entries, decoded by the first read that needs them; empty if decoding
    /// failed (a bug, which debug builds stop at: reads then go to the file, which checks CRCs).
    table: OnceLock<Table>,
    /// Entries of all records.
    count: u64,
}

impl CachedWrite {
    fn cost(&self) -> u64 {
        self.bytes.len() as u64
            + WRITE_OVERHEAD_BYTES
            + self.records.len() as u64 * RECORD_TABLE_BYTES
            + self.count * ENTRY_TABLE_BYTES
    }

    /// Every record's entries, decoded from the buffer, or `None` if the buffer does not hold
    /// the records it was cached with.
    fn decode(&self) -> Option<Table> {
        let mut all = Vec::with_capacity(self.count as usize);
        let mut starts = Vec::with_capacity(self.records.len());
        // Bounded by the records, each decoded once.
        for record in &self.records {
            let start = (record.offset - u64::from(self.offset)) as usize;
            let head = FrameHeader::read(self.bytes.get(start..start + FRAME_HEADER_LEN)?);
            let payload_at = start + FRAME_HEADER_LEN;
            let payload = self.bytes.get(payload_at..payload_at + head.len as usize)?;
            let record_type = RecordType::from_u8(head.record_type)?;
            let owner = Some((&self.bytes, payload_at));
            let (group, entries) = decode_entries_in(record_type, payload, owner, ..).ok()?;
            let expected = group == record.group
                && entries.len() == record.count
                && entries.first().map(|e| e.index) == Some(record.first_index);
            if !expected {
                return None;
            }
            starts.push(all.len());
            all.extend(entries);
        }
        Some(Table { entries: all, starts })
    }

    /// The table of entries, decoded at the first call.
    fn table(&self) -> &Table {
        self.table.get_or_init(|| {
            self.decode().unwrap_or_else(|| {
                // The writer's own bytes: only a bug gets here. Release builds read the file.
                if cfg!(debug_assertions) {
                    panic!("a cached write at {} does not decode as cached", self.offset);
                }
                Table::default()
            })
        })
    }
}

/// The newest writes of the log, at most `limit_bytes` of them (with their tables and
/// [`WRITE_OVERHEAD_BYTES`] each) once they are durable.
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

    /// Keeps the write of `bytes` at `offset` of segment `segment`, holding the entries
    /// `records` (in offset order); `lsns` are the log sequence number at the write's end and
    /// the durable one. Then drops the oldest writes over the budget that are durable.
    pub fn insert(
        &mut self,
        segment: u64,
        offset: u64,
        bytes: Bytes,
        records: Vec<EntriesWritten>,
        lsns: (u64, u64),
    ) {
        let (end_lsn, durable_lsn) = lsns;
        if !self.is_enabled() || bytes.is_empty() {
            return;
        }
        let count = records.iter().map(|r| r.count as u64).sum();
        let write = CachedWrite {
            segment: u32::try_from(segment).expect("fewer than 2^32 segments"),
            offset: u32::try_from(offset).expect("segments stay below 4 GiB"),
            end_lsn,
            bytes,
            records,
            table: OnceLock::new(),
            count,
        };
        let end = u64::from(write.offset) + write.bytes.len() as u64;
        debug_assert!(
            write.records.windows(2).all(|pair| pair[0].offset < pair[1].offset),
            "a write's records are in offset order"
        );
        debug_assert!(
            write.records.iter().all(|r| {
                r.sequence == segment && r.offset >= u64::from(write.offset) && r.offset < end
            }),
            "a write's records lie in it"
        );
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

    /// The entries in `wanted` of `group`'s entries record at `loc`, when a cached write holds
    /// it. `None` sends the read to the file: not cached, or not what the index expects there
    /// (the file read then reports it).
    pub fn entries(&self, loc: Loc, group: u64, wanted: Range<u64>) -> Option<&[Entry]> {
        let after =
            self.writes.partition_point(|w| (w.segment, w.offset) <= (loc.segment, loc.offset));
        let write = self.writes.get(after.checked_sub(1)?)?;
        if write.segment != loc.segment {
            return None;
        }
        let at = write.records.binary_search_by_key(&u64::from(loc.offset), |r| r.offset).ok()?;
        let record = write.records[at];
        if record.group != group {
            return None;
        }
        let record_end = record.first_index + record.count as u64;
        if !(record.first_index..record_end).contains(&wanted.start) {
            return None;
        }
        // The table is empty if decoding failed.
        let table = write.table();
        let start = *table.starts.get(at)?;
        let own = table.entries.get(start..start + record.count)?;
        let first = (wanted.start - record.first_index) as usize;
        let to = wanted.end.min(record_end).max(wanted.start);
        Some(&own[first..first + (to - wanted.start) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::{append_record, encode_entries_payload};

    /// A write at `offset` of `segment` holding one entries record per `(group, first, count)`,
    /// each entry 100 bytes of data naming its group and index.
    fn write(segment: u32, offset: u32, runs: &[(u64, u64, u32)]) -> (Bytes, Vec<EntriesWritten>) {
        let mut buf = Vec::new();
        let mut records = Vec::new();
        for &(group, first, count) in runs {
            let at = offset + buf.len() as u32;
            let entries: Vec<Entry> =
                (first..first + u64::from(count)).map(|i| entry(group, i)).collect();
            append_record(&mut buf, RecordType::Entries, 0, segment, 0, 0, |out| {
                encode_entries_payload(out, group, None, &entries)
            });
            let (sequence, offset, count) = (u64::from(segment), u64::from(at), count as usize);
            records.push(EntriesWritten { group, sequence, offset, first_index: first, count });
        }
        (Bytes::from(buf), records)
    }

    fn entry(group: u64, index: u64) -> Entry {
        let mut data = format!("g{group}/i{index}/").into_bytes();
        data.resize(100, 0);
        Entry::new(index, 1, data)
    }

    fn at(segment: u32, offset: u32) -> Loc {
        Loc { segment, offset }
    }

    fn insert(
        cache: &mut WriteCache,
        segment: u32,
        offset: u32,
        runs: &[(u64, u64, u32)],
        lsns: (u64, u64),
    ) -> u32 {
        let (bytes, records) = write(segment, offset, runs);
        let len = bytes.len() as u32;
        cache.insert(u64::from(segment), u64::from(offset), bytes, records, lsns);
        len
    }

    #[test]
    fn reads_the_entries_of_the_record_at_a_location_in_any_cached_write() {
        let mut cache = WriteCache::new(1 << 20);
        let first = insert(&mut cache, 1, 40, &[(7, 1, 3), (8, 1, 2)], (100, 0));
        let (_, records) = write(1, 40, &[(7, 1, 3), (8, 1, 2)]);
        insert(&mut cache, 1, 40 + first, &[(7, 4, 2)], (200, 0));
        insert(&mut cache, 2, 0, &[(8, 3, 1)], (300, 0));
        let group_8 = at(1, records[1].offset as u32);
        assert_eq!(
            cache.entries(at(1, 40), 7, 1..4),
            Some(&[entry(7, 1), entry(7, 2), entry(7, 3)][..])
        );
        assert_eq!(cache.entries(at(1, 40), 7, 2..3), Some(&[entry(7, 2)][..]), "only those asked");
        assert_eq!(cache.entries(group_8, 8, 1..9), Some(&[entry(8, 1), entry(8, 2)][..]));
        assert_eq!(
            cache.entries(at(1, 40 + first), 7, 4..6),
            Some(&[entry(7, 4), entry(7, 5)][..])
        );
        assert_eq!(cache.entries(at(2, 0), 8, 3..4), Some(&[entry(8, 3)][..]));
        assert_eq!(cache.entries(at(1, 40), 8, 1..4), None, "another group's record");
        assert_eq!(cache.entries(at(1, 40), 7, 4..5), None, "an entry the record does not hold");
        assert_eq!(cache.entries(at(1, 41), 7, 1..4), None, "not where a record starts");
        assert_eq!(cache.entries(at(1, 39), 7, 1..4), None, "before the first cached write");
        assert_eq!(cache.entries(at(3, 0), 7, 1..4), None, "a segment with no cached write");
        assert_eq!(cache.entries(at(0, 40), 7, 1..4), None, "an older segment");
    }

    #[test]
    fn over_the_budget_the_oldest_durable_writes_go_first() {
        let mut cache = WriteCache::new(0);
        cache.limit_bytes = u64::MAX;
        insert(&mut cache, 1, 0, &[(1, 1, 1)], (100, 100));
        let cost = cache.bytes();
        cache.limit_bytes = 2 * cost;
        let len = insert(&mut cache, 1, 1000, &[(1, 2, 1)], (200, 200));
        assert_eq!(cache.bytes(), 2 * cost, "two writes of the same shape cost the same");
        insert(&mut cache, 1, 1000 + len, &[(1, 3, 1)], (300, 300));
        assert!(cache.entries(at(1, 0), 1, 1..2).is_none(), "the oldest write was dropped");
        assert!(cache.entries(at(1, 1000), 1, 2..3).is_some());
        assert!(cache.entries(at(1, 1000 + len), 1, 3..4).is_some());
        assert_eq!(cache.bytes(), 2 * cost);
    }

    #[test]
    fn writes_not_yet_durable_are_never_dropped() {
        let mut cache = WriteCache::new(1);
        let a = insert(&mut cache, 1, 0, &[(1, 1, 1)], (100, 0));
        let b = insert(&mut cache, 1, a, &[(1, 2, 1)], (200, 0));
        insert(&mut cache, 1, a + b, &[(1, 3, 1)], (300, 0));
        for (offset, index) in [(0, 1), (a, 2), (a + b, 3)] {
            assert!(cache.entries(at(1, offset), 1, index..index + 1).is_some(), "not durable yet");
        }
        cache.evict(200);
        assert!(cache.entries(at(1, 0), 1, 1..2).is_none());
        assert!(cache.entries(at(1, a), 1, 2..3).is_none());
        assert!(cache.entries(at(1, a + b), 1, 3..4).is_some(), "past the durable point: kept");
    }

    #[test]
    fn a_zero_limit_caches_nothing() {
        let mut cache = WriteCache::new(0);
        insert(&mut cache, 1, 0, &[(1, 1, 1)], (100, 100));
        assert!(cache.entries(at(1, 0), 1, 1..2).is_none());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_budget_counts_the_entry_table_a_read_builds() {
        let mut cache = WriteCache::new(u64::MAX);
        let len = insert(&mut cache, 1, 0, &[(1, 1, 10), (2, 1, 10)], (100, 0));
        let tables = 2 * RECORD_TABLE_BYTES + 20 * ENTRY_TABLE_BYTES;
        assert_eq!(cache.bytes(), u64::from(len) + WRITE_OVERHEAD_BYTES + tables);
    }

    #[test]
    #[should_panic(expected = "log order")]
    fn a_write_out_of_log_order_is_refused() {
        let mut cache = WriteCache::new(1 << 20);
        insert(&mut cache, 2, 0, &[(1, 1, 1)], (10, 0));
        insert(&mut cache, 1, 500, &[(1, 2, 1)], (20, 0));
    }
}
