//! The footer a sealed segment ends with, group by group.
//!
//! While a segment is written, the writer lists its records in file order ([`Footer`], the
//! *listing*). Sealing turns the listing into the *footer*: the segment's checkpoint, then for
//! each group it touched, in group order, what its records did to that group, in their order,
//! with the group's consecutive entries merged into one run that keeps each entry's record
//! offset. Open applies a group's part with one table lookup and appends its entries in one go,
//! instead of visiting the group once per record: in a log of thousands of groups, each visit
//! was a cache miss (DESIGN.md §5.6).
//!
//! Reordering is exact because a record changes only its own group, and within a group the
//! order is kept. Two merges change the order of nothing that matters: entries that attach at
//! the end of the run before them join it (an append at the end is the same whether split or
//! not), and a group's hard states apply at the end of the entries around them (no rule for
//! entries, compaction or snapshots reads the hard state); a hard state still goes before the
//! group's next record of another kind, so a removal clears it as before.

use byteorder::{ByteOrder, LittleEndian};

use crate::codec::{self, DecodeError, Decoder};
use crate::types::HardState;
use crate::wal::format::{
    Checkpoint, FRAME_HEADER_LEN, Footer, FooterRecord, Record, RecordType, SEGMENT_HEADER_LEN,
    read_term_runs,
};
use crate::wal::state::GroupMap;

/// Item type of a run of entries (the entries record type: runs come from entries records).
pub const ITEM_ENTRIES: u8 = RecordType::Entries as u8;

pub use crate::wal::format::TERM_RUN_LEN;
/// Bytes of one entry's record offset in a run.
pub const ENTRY_OFFSET_LEN: usize = size_of::<u32>();
/// Bytes of a group's head: group (u64), items (u32).
pub const GROUP_HEAD_LEN: usize = size_of::<u64>() + size_of::<u32>();
/// Bytes of a run's head after its type byte: first index (u64), count (u32), term runs (u32).
pub const RUN_HEAD_LEN: usize = size_of::<u64>() + 2 * size_of::<u32>();
/// Bytes of a listed record's head after its type byte: offset (u32), payload length (u32).
pub const RECORD_HEAD_LEN: usize = 2 * size_of::<u32>();
/// Bytes of a checkpoint part's head: offset (u32), payload length (u32).
pub const PART_HEAD_LEN: usize = 2 * size_of::<u32>();
/// The smallest item: a type byte and a listed record's head (a removal's payload is 8 bytes,
/// but the bound only has to keep counts from outrunning the bytes).
const MIN_ITEM_LEN: usize = 1 + RECORD_HEAD_LEN;

/// Builds the footer of a segment from its listing (`listing` lists `records` records, all
/// before `footer_offset`). `None` when the listing is not what a sealed segment can hold: a
/// first write that is not a checkpoint, a checkpoint after it, or a last write left open. The
/// writer then seals without a footer, and open reads the segment whole.
pub fn build(listing: &Footer, footer_offset: u64) -> Option<Vec<u8>> {
    // The first write (the checkpoint's parts), then each group's part built as its records are
    // decoded: one table lookup per record, and only the group's few bytes of footer touched.
    // (Decoding every record first, then visiting them in group order, touched each decoded
    // record at random, a cache miss per record: most of a seal's time.)
    let mut first_write: Vec<FooterRecord> = Vec::new();
    let mut first_write_done = false;
    let mut refused = false;
    let mut last_more = true;
    let mut groups: GroupMap<GroupBuilder> = GroupMap::default();
    Footer::decode_each(listing.payload(), footer_offset, true, |r, _| {
        last_more = r.more;
        if !first_write_done {
            // The first write is the checkpoint, and nothing else.
            refused |= !matches!(r.record, Record::Checkpoint(_));
            first_write_done = !r.more;
            first_write.push(r);
            return;
        }
        match r.record.group() {
            Some(group) => groups
                .entry(group)
                .or_insert_with(|| GroupBuilder::new(group))
                .push(r.offset as u32, &r.record),
            None => refused |= matches!(r.record, Record::Checkpoint(_)),
            // A witness or an earlier seal's footer: counted in the listing, changes nothing.
        }
    })
    .ok()?;
    if refused || !first_write_done || last_more {
        return None;
    }
    let mut groups: Vec<(u64, GroupBuilder)> = groups.into_iter().collect();
    groups.sort_unstable_by_key(|(id, _)| *id);

    let mut out = Vec::with_capacity(listing.len() / 4 + 64);
    codec::put_u32(&mut out, listing.records());
    codec::put_u32(&mut out, first_write.len() as u32);
    for r in &first_write {
        codec::put_u32(&mut out, r.offset as u32);
        let len_at = out.len();
        codec::put_u32(&mut out, 0);
        r.record.encode_payload(&mut out);
        let len = out.len() - len_at - size_of::<u32>();
        LittleEndian::write_u32(&mut out[len_at..], len as u32);
    }
    codec::put_u32(&mut out, groups.len() as u32);
    // Bounded by the groups.
    for (_, group) in groups {
        out.extend_from_slice(&group.finish());
    }
    Some(out)
}

/// One group's part of a footer being built: the run being extended and the hard state not yet
/// listed.
struct GroupBuilder {
    out: Vec<u8>,
    items_at: usize,
    items: u32,
    run: Option<RunBuilder>,
    hard_state: Option<(u32, HardState)>,
}

struct RunBuilder {
    first: u64,
    terms: Vec<(u32, u64)>,
    offsets: Vec<u32>,
}

impl GroupBuilder {
    fn new(group: u64) -> GroupBuilder {
        let mut out = Vec::new();
        codec::put_u64(&mut out, group);
        let items_at = out.len();
        codec::put_u32(&mut out, 0);
        GroupBuilder { out, items_at, items: 0, run: None, hard_state: None }
    }

    fn push(&mut self, offset: u32, record: &Record) {
        match record {
            Record::Entries { entries, hard_state, .. } => {
                let terms = entries.chunk_by(|a, b| a.term == b.term);
                let terms = terms.map(|run| (run.len() as u32, run[0].term));
                self.entries(offset, entries[0].index, entries.len() as u32, terms);
                if let Some(hs) = hard_state {
                    self.hard_state = Some((offset, *hs));
                }
            }
            Record::EntryRun { first, count, term, hard_state, .. } => {
                self.entries(offset, *first, *count, std::iter::once((*count, *term)));
                if let Some(hs) = hard_state {
                    self.hard_state = Some((offset, *hs));
                }
            }
            Record::HardState { hard_state, .. } => self.hard_state = Some((offset, *hard_state)),
            other => {
                self.flush_hard_state();
                self.flush_run();
                self.record(offset, other);
            }
        }
    }

    /// Entries `first..first + count` in the record at `offset`, with term runs `terms`.
    fn entries(
        &mut self,
        offset: u32,
        first: u64,
        count: u32,
        terms: impl Iterator<Item = (u32, u64)>,
    ) {
        let attaches =
            self.run.as_ref().is_some_and(|run| run.first + run.offsets.len() as u64 == first);
        if !attaches {
            self.flush_run();
            self.run = Some(RunBuilder { first, terms: Vec::new(), offsets: Vec::new() });
        }
        let run = self.run.as_mut().expect("set above");
        for (len, term) in terms {
            match run.terms.last_mut() {
                Some(last) if last.1 == term => last.0 += len,
                _ => run.terms.push((len, term)),
            }
        }
        run.offsets.extend(std::iter::repeat_n(offset, count as usize));
    }

    fn flush_run(&mut self) {
        let Some(run) = self.run.take() else { return };
        self.out.push(ITEM_ENTRIES);
        codec::put_u64(&mut self.out, run.first);
        codec::put_u32(&mut self.out, run.offsets.len() as u32);
        codec::put_u32(&mut self.out, run.terms.len() as u32);
        for (len, term) in run.terms {
            codec::put_u32(&mut self.out, len);
            codec::put_u64(&mut self.out, term);
        }
        for offset in run.offsets {
            codec::put_u32(&mut self.out, offset);
        }
        self.items += 1;
    }

    fn flush_hard_state(&mut self) {
        let Some((offset, hs)) = self.hard_state.take() else { return };
        let group = LittleEndian::read_u64(&self.out[self.items_at - size_of::<u64>()..]);
        self.record(offset, &Record::HardState { group, hard_state: hs });
    }

    fn record(&mut self, offset: u32, record: &Record) {
        self.out.push(record.record_type() as u8);
        codec::put_u32(&mut self.out, offset);
        let len_at = self.out.len();
        codec::put_u32(&mut self.out, 0);
        record.encode_payload(&mut self.out);
        let len = self.out.len() - len_at - size_of::<u32>();
        LittleEndian::write_u32(&mut self.out[len_at..], len as u32);
        self.items += 1;
    }

    /// The group's part of the footer.
    fn finish(mut self) -> Vec<u8> {
        self.flush_run();
        self.flush_hard_state();
        LittleEndian::write_u32(&mut self.out[self.items_at..], self.items);
        self.out
    }
}

/// A decoded footer: the segment's record count and checkpoint, and its groups' parts, checked
/// in full ([`SealedFooter::decode`]) and applied by [`SealedFooter::for_each_group`].
#[derive(Debug)]
pub struct SealedFooter {
    /// Records in the segment before the footer.
    pub records: u32,
    /// The segment's first write: its checkpoint's parts, with their offsets.
    pub checkpoint: Vec<(u64, Vec<Checkpoint>)>,
    payload: Vec<u8>,
    /// Where the groups' count is in `payload`.
    groups_at: usize,
    footer_offset: u64,
}

/// One item of a group's part of a footer.
#[derive(Debug)]
pub enum Item<'a> {
    /// Entries `first..first + count`, from one or more records written one after another.
    Entries {
        /// Index of the first entry.
        first: u64,
        /// Entries, at least one.
        count: u32,
        /// Term runs, [`TERM_RUN_LEN`] bytes each, summing to `count`.
        terms: &'a [u8],
        /// Each entry's record offset, [`ENTRY_OFFSET_LEN`] bytes each.
        offsets: &'a [u8],
    },
    /// A hard state, snapshot, compaction or removal record of the group, at `offset`.
    Record {
        /// The record's frame offset.
        offset: u64,
        /// The record.
        record: Record,
    },
}

impl Item<'_> {
    /// The terms of an entries item, one per entry.
    pub fn terms(terms: &[u8]) -> impl Iterator<Item = u64> + '_ {
        terms.chunks_exact(TERM_RUN_LEN).flat_map(|run| {
            let len = LittleEndian::read_u32(run) as usize;
            std::iter::repeat_n(LittleEndian::read_u64(&run[size_of::<u32>()..]), len)
        })
    }

    /// The record offsets of an entries item, one per entry.
    pub fn offsets(offsets: &[u8]) -> impl ExactSizeIterator<Item = u32> + '_ {
        offsets.chunks_exact(ENTRY_OFFSET_LEN).map(LittleEndian::read_u32)
    }
}

impl SealedFooter {
    /// Decodes and checks a footer payload written for a footer record at `footer_offset`:
    /// every count against the bytes left (a forged count cannot make this allocate beyond the
    /// footer's size), every offset between the segment header and the footer, groups in
    /// increasing order, every record of the type its item says and of the group it is listed
    /// under, every byte used.
    pub fn decode(payload: Vec<u8>, footer_offset: u64) -> Result<SealedFooter, DecodeError> {
        let mut dec = Decoder::new(&payload);
        let records = dec.u32("footer record count")?;
        // Every record takes at least a frame header in the segment.
        let room = footer_offset.saturating_sub(SEGMENT_HEADER_LEN as u64);
        if u64::from(records) > room / FRAME_HEADER_LEN as u64 {
            return Err(DecodeError { what: "footer record count" });
        }
        let parts = dec.u32("footer checkpoint parts")? as usize;
        if parts == 0 || parts > dec.remaining() / PART_HEAD_LEN || parts > records as usize {
            return Err(DecodeError { what: "footer checkpoint parts" });
        }
        let mut checkpoint = Vec::with_capacity(parts);
        for _ in 0..parts {
            let offset = check_offset(dec.u32("footer checkpoint offset")?, footer_offset)?;
            if checkpoint.last().is_some_and(|(at, _)| *at >= offset) {
                return Err(DecodeError { what: "footer checkpoint offset" });
            }
            let len = dec.u32("footer checkpoint length")? as usize;
            let bytes = dec.bytes(len, "footer checkpoint")?;
            match Record::decode_payload(RecordType::Checkpoint, bytes)? {
                Record::Checkpoint(part) => checkpoint.push((offset, part)),
                _ => unreachable!("a checkpoint payload decodes as a checkpoint"),
            }
        }
        let groups_at = dec.position();
        let footer = SealedFooter { records, checkpoint, payload, groups_at, footer_offset };
        footer.walk(|_, _| Ok::<(), std::convert::Infallible>(())).map_err(|e| match e {
            Walk::Decode(e) => e,
            Walk::Apply(never) => match never {},
        })?;
        Ok(footer)
    }

    /// Gives each group, in increasing order, with its items in order, to `each`; stops at the
    /// first error `each` returns, and returns it. (The bytes were checked by
    /// [`SealedFooter::decode`], so they decode again; if they did not, that is an error too.)
    pub fn for_each_group(
        &self,
        mut each: impl FnMut(u64, &[Item<'_>]) -> Result<(), String>,
    ) -> Result<(), String> {
        self.walk(|group, items| each(group, items)).map_err(|e| match e {
            Walk::Apply(e) => e,
            Walk::Decode(e) => e.to_string(),
        })
    }

    fn walk<E>(
        &self,
        mut each: impl FnMut(u64, &[Item<'_>]) -> Result<(), E>,
    ) -> Result<(), Walk<E>> {
        let mut dec = Decoder::new(&self.payload[self.groups_at..]);
        let groups = dec.u32("footer group count")? as usize;
        if groups > dec.remaining() / GROUP_HEAD_LEN {
            return Err(Walk::Decode(DecodeError { what: "footer group count" }));
        }
        // Reused for every group: no allocation per group.
        let mut items: Vec<Item<'_>> = Vec::new();
        let mut previous: Option<u64> = None;
        for _ in 0..groups {
            let group = dec.u64("footer group")?;
            if previous.is_some_and(|p| p >= group) {
                return Err(Walk::Decode(DecodeError { what: "footer group order" }));
            }
            previous = Some(group);
            let count = dec.u32("footer group items")? as usize;
            if count == 0 || count > dec.remaining() / MIN_ITEM_LEN {
                return Err(Walk::Decode(DecodeError { what: "footer group items" }));
            }
            items.clear();
            for _ in 0..count {
                items.push(self.item(&mut dec, group)?);
            }
            each(group, &items).map_err(Walk::Apply)?;
        }
        dec.finish("footer")?;
        Ok(())
    }

    fn item<'a>(&self, dec: &mut Decoder<'a>, group: u64) -> Result<Item<'a>, DecodeError> {
        let item_type = dec.u8("footer item type")?;
        if item_type == ITEM_ENTRIES {
            let first = dec.u64("footer entries first index")?;
            let count = dec.u32("footer entries count")?;
            let runs = dec.u32("footer entries runs")? as usize;
            if count == 0
                || runs == 0
                || runs > count as usize
                || runs > dec.remaining() / TERM_RUN_LEN
                || count as usize > dec.remaining() / ENTRY_OFFSET_LEN
                || first == 0
                || first.checked_add(u64::from(count)).is_none()
            {
                return Err(DecodeError { what: "footer entries count" });
            }
            let terms = read_term_runs(dec, runs, u64::from(count))?;
            let offsets = dec.bytes(count as usize * ENTRY_OFFSET_LEN, "footer entry offsets")?;
            let mut last = 0;
            for offset in Item::offsets(offsets) {
                // Entries of one record share its offset; later records lie further on.
                if check_offset(offset, self.footer_offset)? < last {
                    return Err(DecodeError { what: "footer entry offset" });
                }
                last = u64::from(offset);
            }
            return Ok(Item::Entries { first, count, terms, offsets });
        }
        let record_type = RecordType::from_u8(item_type)
            .filter(|t| {
                matches!(
                    t,
                    RecordType::HardState
                        | RecordType::Snapshot
                        | RecordType::Compact
                        | RecordType::Remove
                )
            })
            .ok_or(DecodeError { what: "footer item type" })?;
        let offset = check_offset(dec.u32("footer record offset")?, self.footer_offset)?;
        let len = dec.u32("footer record length")? as usize;
        let record = Record::decode_payload(record_type, dec.bytes(len, "footer record")?)?;
        if record.group() != Some(group) {
            return Err(DecodeError { what: "footer record group" });
        }
        Ok(Item::Record { offset, record })
    }
}

/// Why a walk over a footer's groups stopped.
enum Walk<E> {
    Decode(DecodeError),
    Apply(E),
}

impl<E> From<DecodeError> for Walk<E> {
    fn from(e: DecodeError) -> Walk<E> {
        Walk::Decode(e)
    }
}

/// An offset a footer lists: between the segment header and the footer.
fn check_offset(offset: u32, footer_offset: u64) -> Result<u64, DecodeError> {
    let offset = u64::from(offset);
    if offset < SEGMENT_HEADER_LEN as u64 || offset >= footer_offset {
        return Err(DecodeError { what: "footer record offset" });
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::types::{Entry, SnapshotMetadata};
    use crate::wal::format::framed_len;
    use crate::wal::index::Loc;
    use crate::wal::state::EngineState;

    /// The segment's checkpoint in these tests: group 1 has entries 4..=5 in deleted segments
    /// (missing) after its dummy at 3; group 2 has only a hard state.
    fn checkpoint() -> Record {
        let hs = HardState { term: 1, vote: 1, commit: 3 };
        Record::Checkpoint(vec![
            Checkpoint {
                group: 1,
                dummy_index: 3,
                dummy_term: 1,
                last_index: 5,
                hard_state: hs,
                ..Checkpoint::default()
            },
            Checkpoint { group: 2, hard_state: hs, ..Checkpoint::default() },
        ])
    }

    /// A segment of `records` after the checkpoint: the listing the writer keeps, and the end
    /// of the records (where the footer goes). Writes are `writes` records long.
    fn listing(records: &[Record], writes: usize) -> (Footer, u64) {
        let mut listing = Footer::default();
        let mut offset = SEGMENT_HEADER_LEN as u64;
        let all = std::iter::once(checkpoint()).chain(records.iter().cloned());
        for (k, record) in all.enumerate() {
            // The checkpoint is a write of its own; the rest come `writes` at a time.
            let more = k > 0 && k < records.len() && k % writes != 0;
            listing.push_record(offset, more, &record);
            let mut payload = Vec::new();
            record.encode_payload(&mut payload);
            offset += framed_len(payload.len()) as u64;
        }
        (listing, offset)
    }

    /// Every group's state, as text, in group order.
    fn states(state: &EngineState) -> Vec<String> {
        state.group_ids().into_iter().map(|g| format!("{g}: {:?}", state.group(g))).collect()
    }

    /// Replays the segment record by record, as a scan does.
    fn replay_records(records: &[Record]) -> EngineState {
        let mut state = EngineState::default();
        let Record::Checkpoint(parts) = checkpoint() else { unreachable!() };
        state.apply_checkpoint(&[parts.as_slice()], true).unwrap();
        let (listing, end) = listing(records, 1);
        let listed = Footer::decode(listing.payload(), end).unwrap();
        for (r, want) in listed.iter().skip(1).zip(records) {
            let loc = Loc { segment: 9, offset: r.offset as u32 };
            state.apply(want, loc).unwrap();
        }
        state
    }

    /// Replays the segment from the footer `build` makes of its listing.
    fn replay_footer(records: &[Record], writes: usize) -> (EngineState, SealedFooter) {
        let (listing, end) = listing(records, writes);
        let built = build(&listing, end).expect("a sealed segment's listing");
        let footer = SealedFooter::decode(built, end).unwrap();
        assert_eq!(footer.records as usize, records.len() + 1);
        let mut state = EngineState::default();
        let parts: Vec<&[Checkpoint]> =
            footer.checkpoint.iter().map(|(_, p)| p.as_slice()).collect();
        state.apply_checkpoint(&parts, true).unwrap();
        footer.for_each_group(|g, items| state.apply_footer_group(g, items, 9)).unwrap();
        (state, footer)
    }

    fn entries(group: u64, first: u64, terms: &[u64], hs: Option<HardState>) -> Record {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, &t)| Entry::new(first + k as u64, t, vec![k as u8; 3]))
            .collect();
        Record::Entries { group, entries, hard_state: hs }
    }

    #[test]
    fn a_groups_consecutive_entries_become_one_run_and_its_hard_states_the_last() {
        let hs = |commit| Some(HardState { term: 2, vote: 1, commit });
        let records = vec![
            entries(7, 1, &[2], hs(0)),
            entries(1, 6, &[1, 2], None),
            entries(7, 2, &[2, 2], hs(1)),
            entries(7, 4, &[2], hs(3)),
        ];
        let (state, footer) = replay_footer(&records, 2);
        assert_eq!(states(&state), states(&replay_records(&records)));
        let mut seen = Vec::new();
        footer
            .for_each_group(|g, items| {
                let kinds: Vec<String> = items
                    .iter()
                    .map(|item| match item {
                        Item::Entries { first, count, offsets, .. } => {
                            let offsets: Vec<u32> = Item::offsets(offsets).collect();
                            format!("entries {first}+{count} at {offsets:?}")
                        }
                        Item::Record { record, .. } => format!("{record:?}"),
                    })
                    .collect();
                seen.push((g, kinds));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.len(), 2, "groups 1 and 7, in order: {seen:?}");
        assert_eq!(seen[0].0, 1);
        assert_eq!(seen[1].0, 7);
        // Group 7: one run of four entries from three records (the second record's two share an
        // offset), then only the last hard state.
        assert_eq!(seen[1].1.len(), 2, "{seen:?}");
        assert!(seen[1].1[0].starts_with("entries 1+4 at ["), "{seen:?}");
        let group7 = state.group(7).unwrap();
        assert_eq!(group7.hard_state, HardState { term: 2, vote: 1, commit: 3 });
        assert_eq!(group7.index.loc(2), group7.index.loc(3), "one record's entries share it");
        assert_ne!(group7.index.loc(1), group7.index.loc(2));
    }

    /// One step of a group's history; `apply` below turns it into a record that holds for the
    /// state so far (or skips it).
    #[derive(Clone, Debug)]
    enum Step {
        /// Entries from `last + 1 - back` (a suffix replacement when `back > 0`), `n` of them.
        Entries {
            back: u64,
            n: u64,
            term: u64,
            hs: bool,
        },
        HardState,
        /// Compact `back` entries below the last.
        Compact {
            back: u64,
        },
        Snapshot {
            resets: bool,
            ahead: u64,
        },
        Remove,
    }

    fn step() -> impl Strategy<Value = (u64, Step)> {
        let step = prop_oneof![
            6 => (0u64..3, 1u64..4, 0u64..2, any::<bool>())
                .prop_map(|(back, n, bump, hs)| Step::Entries { back, n, term: bump, hs }),
            2 => Just(Step::HardState),
            1 => (0u64..3).prop_map(|back| Step::Compact { back }),
            1 => (any::<bool>(), 0u64..4).prop_map(|(resets, ahead)| Step::Snapshot { resets, ahead }),
            1 => Just(Step::Remove),
        ];
        (1u64..5, step)
    }

    /// Turns steps into records that each hold for the state the ones before it built.
    fn records_of(steps: &[(u64, Step)]) -> Vec<Record> {
        let mut state = EngineState::default();
        let Record::Checkpoint(parts) = checkpoint() else { unreachable!() };
        state.apply_checkpoint(&[parts.as_slice()], true).unwrap();
        let mut out = Vec::new();
        for (k, (group, step)) in steps.iter().enumerate() {
            let group = *group;
            let (dummy, last, term) = state.group(group).map_or((0, 0, 1), |s| {
                let last = s.index.last_index();
                (
                    s.index.dummy_index(),
                    last,
                    s.index.term(last).unwrap_or(1).max(s.hard_state.term),
                )
            });
            let hs = HardState { term: term.max(1), vote: group, commit: k as u64 + 1 };
            let record = match step {
                Step::Entries { back, n, term: bump, hs: with } => {
                    let first = (last + 1).saturating_sub(*back).max(dummy + 1);
                    let t = term.max(1) + bump;
                    entries(group, first, &vec![t; *n as usize], with.then_some(hs))
                }
                Step::HardState => Record::HardState { group, hard_state: hs },
                Step::Compact { back } => {
                    let index = last.saturating_sub(*back);
                    let Some(s) = state.group(group) else { continue };
                    if index <= dummy || s.index.loc(index) == Loc::MISSING {
                        continue;
                    }
                    Record::Compact { group, index, term: s.index.term(index).unwrap() }
                }
                Step::Snapshot { resets, ahead } => {
                    let index =
                        if *resets { last + ahead } else { last.min(dummy + ahead).max(dummy) };
                    let metadata = Box::new(SnapshotMetadata { index, term, ..Default::default() });
                    Record::Snapshot { group, metadata, resets_log: *resets }
                }
                Step::Remove => Record::Remove { group },
            };
            let loc = Loc { segment: 9, offset: 64 + k as u32 };
            if state.apply(&record, loc).is_ok() {
                out.push(record);
            } else {
                // Undo nothing: a refused record changes nothing the tests rely on, and it is
                // left out. Start over from the records kept so far.
                state = EngineState::default();
                state.apply_checkpoint(&[parts.as_slice()], true).unwrap();
                for (j, r) in out.iter().enumerate() {
                    state.apply(r, Loc { segment: 9, offset: 64 + j as u32 }).unwrap();
                }
            }
        }
        out
    }

    proptest! {
        /// The property that keeps the two paths one: replaying a segment's records one by one
        /// and applying the footer built from its listing give every group the same state,
        /// entry locations included.
        #[test]
        fn a_footer_applies_as_its_records_do(
            steps in proptest::collection::vec(step(), 0..40),
            writes in 1usize..4,
        ) {
            let records = records_of(&steps);
            let (state, _) = replay_footer(&records, writes);
            prop_assert_eq!(states(&state), states(&replay_records(&records)));
        }

        /// Bytes of a damaged footer (cut short, or a flipped bit past its CRC's protection)
        /// decode to an error or to a footer that applies without a panic.
        #[test]
        fn a_damaged_footer_never_panics(
            steps in proptest::collection::vec(step(), 1..20),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            cut in any::<prop::sample::Index>(),
        ) {
            let records = records_of(&steps);
            let (listing, end) = listing(&records, 1);
            let built = build(&listing, end).unwrap();
            let mut flipped = built.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 1 << bit;
            let short = built[..cut.index(built.len())].to_vec();
            for bytes in [flipped, short] {
                if let Ok(footer) = SealedFooter::decode(bytes, end) {
                    let mut state = EngineState::default();
                    let parts: Vec<&[Checkpoint]> =
                        footer.checkpoint.iter().map(|(_, p)| p.as_slice()).collect();
                    if state.apply_checkpoint(&parts, true).is_ok() {
                        let _ = footer.for_each_group(|g, items| state.apply_footer_group(g, items, 9));
                    }
                }
            }
        }
    }

    /// DESIGN.md §5.6 documents the footer's layout; its tables must match the code's sizes and
    /// the bytes `build` writes.
    #[test]
    fn the_footer_layout_matches_design_md() {
        let doc = crate::design_doc::table;
        for (name, len) in [
            ("footer-table", 2 * size_of::<u32>()),
            ("footer-part-table", PART_HEAD_LEN),
            ("footer-group-table", GROUP_HEAD_LEN),
            ("footer-run-table", 1 + RUN_HEAD_LEN),
            ("footer-record-item-table", 1 + RECORD_HEAD_LEN),
        ] {
            let rows = doc(name);
            let mut at = 0;
            for (offset, size, field) in &rows {
                assert_eq!(*offset, at, "{name}: {field} follows the field before it");
                at += size;
            }
            assert_eq!(at, len, "{name} covers the head the code reads");
        }
        let field = |table: &str, name: &str| {
            let rows = doc(table);
            let row =
                rows.iter().find(|r| r.2 == name).unwrap_or_else(|| panic!("{table}: {name}"));
            (row.0, row.1)
        };
        let read = |bytes: &[u8], base: usize, (offset, size): (usize, usize)| -> u64 {
            let mut buf = [0u8; 8];
            buf[..size].copy_from_slice(&bytes[base + offset..base + offset + size]);
            u64::from_le_bytes(buf)
        };

        let records =
            vec![entries(5, 1, &[2, 2], None), Record::Compact { group: 5, index: 1, term: 2 }];
        let (list, end) = listing(&records, 1);
        let listed = Footer::decode(list.payload(), end).unwrap();
        let built = build(&list, end).unwrap();
        assert_eq!(read(&built, 0, field("footer-table", "records")), 3);
        assert_eq!(read(&built, 0, field("footer-table", "parts")), 1);
        let part = field("footer-table", "parts").0 + 4;
        assert_eq!(
            read(&built, part, field("footer-part-table", "offset")),
            SEGMENT_HEADER_LEN as u64
        );
        let len = read(&built, part, field("footer-part-table", "len")) as usize;
        let groups = part + PART_HEAD_LEN + len;
        assert_eq!(read(&built, groups, (0, 4)), 1, "one group touched");
        let group = groups + 4;
        assert_eq!(read(&built, group, field("footer-group-table", "group")), 5);
        assert_eq!(read(&built, group, field("footer-group-table", "items")), 2);
        let run = group + GROUP_HEAD_LEN;
        assert_eq!(read(&built, run, field("footer-run-table", "type")), u64::from(ITEM_ENTRIES));
        assert_eq!(read(&built, run, field("footer-run-table", "first_index")), 1);
        assert_eq!(read(&built, run, field("footer-run-table", "count")), 2);
        assert_eq!(read(&built, run, field("footer-run-table", "runs")), 1);
        let offsets = run + 1 + RUN_HEAD_LEN + TERM_RUN_LEN;
        for k in 0..2 {
            assert_eq!(read(&built, offsets + 4 * k, (0, 4)), listed[1].offset);
        }
        let item = offsets + 2 * ENTRY_OFFSET_LEN;
        assert_eq!(
            read(&built, item, field("footer-record-item-table", "type")),
            RecordType::Compact as u64
        );
        assert_eq!(
            read(&built, item, field("footer-record-item-table", "offset")),
            listed[2].offset
        );
        let len = read(&built, item, field("footer-record-item-table", "len")) as usize;
        assert_eq!(item + 1 + RECORD_HEAD_LEN + len, built.len(), "every byte accounted for");
    }

    #[test]
    fn a_listing_a_sealed_segment_cannot_hold_gets_no_footer() {
        // A last write left open.
        let (mut open, end) = listing(&[entries(1, 6, &[1], None)], 1);
        assert!(build(&open, end).is_some());
        open.push_record(end, true, &entries(2, 1, &[1], None));
        assert!(build(&open, end + 200).is_none());
        // A first write that is not a checkpoint.
        let mut listing = Footer::default();
        listing.push_record(64, false, &entries(1, 6, &[1], None));
        assert!(build(&listing, 200).is_none());
    }
}
