//! The log's state as the records describe it, and the one set of rules that applies a record to
//! it, used both when writing (after the write) and when replaying at open.
//!
//! The WAL holds many groups (Raft groups); each has the state of one etcd-style log. A group
//! with no state at all (no entry, no dummy, no hard state, no snapshot) is not kept: it reads as
//! an empty log, and costs no memory.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::types::{HardState, SnapshotMetadata};
use crate::wal::footer::Item;
use crate::wal::format::{Checkpoint, Record};
use crate::wal::index::{Loc, LogIndex};

/// Everything the WAL's records establish about one group.
#[derive(Debug, Default)]
pub struct LogState {
    /// The dummy entry and the live entries' locations and terms.
    pub index: LogIndex,
    /// The newest hard state.
    pub hard_state: HardState,
    // The newest snapshot's metadata; `None` for the default (index 0, no membership). Boxed:
    // most groups' state must stay small (the per-group memory budget), and a membership is
    // read only by `initial_state` and snapshots.
    snapshot: Option<Box<SnapshotMetadata>>,
}

/// Hashes a group id for the engine's per-group tables: SipHash (the default) costs more than
/// the rest of a small write's per-group work, and group ids are not chosen by an adversary
/// (an application assigns them). A full-avalanche mix (SplitMix64's finalizer) keeps
/// sequential ids spread over the table.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupIdHasher(u64);

impl Hasher for GroupIdHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; other input is folded in byte by byte, for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 ^= id;
    }
}

/// A map keyed by group id.
pub type GroupMap<V> = HashMap<u64, V, BuildHasherDefault<GroupIdHasher>>;

/// A record that contradicts the state it is applied to.
pub type Contradiction = String;

impl LogState {
    /// The newest snapshot's metadata (index 0: none).
    pub fn snapshot(&self) -> SnapshotMetadata {
        self.snapshot.as_deref().cloned().unwrap_or_default()
    }

    /// Index and term of the newest snapshot marker, without cloning the membership.
    pub fn snapshot_point(&self) -> (u64, u64) {
        self.snapshot.as_deref().map_or((0, 0), |s| (s.index, s.term))
    }

    fn set_snapshot(&mut self, metadata: &SnapshotMetadata) {
        self.snapshot =
            (*metadata != SnapshotMetadata::default()).then(|| Box::new(metadata.clone()));
    }

    /// The segment holding the first live entry, unless it is in a deleted segment or there is
    /// none: the oldest segment this group needs.
    fn pinned_segment(&self) -> Option<u32> {
        let segment = self.index.first_segment();
        debug_assert_eq!(
            segment,
            self.index.first_loc().map(|loc| loc.segment).filter(|s| *s != Loc::MISSING.segment)
        );
        segment
    }

    /// Whether the group has no state at all: it reads as a log that never existed.
    pub fn is_empty(&self) -> bool {
        self.index.dummy_index() == 0
            && self.index.dummy_term() == 0
            && self.index.last_index() == 0
            && self.hard_state == HardState::default()
            && self.snapshot.is_none()
    }

    /// Whether `cp` describes this state: `self.checkpoint(cp.group) == *cp`, without the
    /// clone.
    fn matches(&self, cp: &Checkpoint) -> bool {
        let snapshot = match self.snapshot.as_deref() {
            Some(snapshot) => *snapshot == cp.snapshot,
            // The default stands for no marker (a default membership allocates nothing).
            None => cp.snapshot == SnapshotMetadata::default(),
        };
        self.index.dummy_index() == cp.dummy_index
            && self.index.dummy_term() == cp.dummy_term
            && self.index.last_index() == cp.last_index
            && self.hard_state == cp.hard_state
            && snapshot
    }

    /// The checkpoint that describes this state.
    pub fn checkpoint(&self, group: u64) -> Checkpoint {
        Checkpoint {
            group,
            dummy_index: self.index.dummy_index(),
            dummy_term: self.index.dummy_term(),
            last_index: self.index.last_index(),
            hard_state: self.hard_state,
            snapshot: self.snapshot(),
        }
    }

    /// Entries `first..first + terms.len()` written in the record at `loc`.
    pub fn apply_entries(
        &mut self,
        first: u64,
        terms: impl ExactSizeIterator<Item = u64>,
        loc: Loc,
    ) -> Result<(), Contradiction> {
        let (dummy, last) = (self.index.dummy_index(), self.index.last_index());
        if first <= dummy || first > last.saturating_add(1) {
            return Err(format!("entries at {first} do not attach to the log ({dummy}, {last}]"));
        }
        if first.checked_add(terms.len() as u64).is_none() {
            return Err(format!("{} entries at {first} overflow the index space", terms.len()));
        }
        self.index.append(first, terms, loc);
        Ok(())
    }

    /// A hard state record.
    pub fn apply_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// A snapshot marker.
    pub fn apply_snapshot(
        &mut self,
        metadata: &SnapshotMetadata,
        resets_log: bool,
    ) -> Result<(), Contradiction> {
        if resets_log && metadata.index == u64::MAX {
            return Err("a snapshot at the last possible index".to_string());
        }
        if resets_log {
            self.index.reset(metadata.index, metadata.term);
        }
        self.set_snapshot(metadata);
        Ok(())
    }

    /// A compaction marker.
    pub fn apply_compact(&mut self, index: u64, term: u64) -> Result<(), Contradiction> {
        let (dummy, last) = (self.index.dummy_index(), self.index.last_index());
        if index <= dummy || index > last {
            return Err(format!("compaction at {index} is outside the log ({dummy}, {last}]"));
        }
        // Snapshot markers that reset the log may name any index; compaction never passes the
        // last entry, so `index + 1` below stays in range.
        if self.index.loc(index) != Loc::MISSING {
            let known = self.index.term(index).expect("index is live");
            if known != term {
                return Err(format!(
                    "compaction at {index} names term {term}, the log has {known}"
                ));
            }
        }
        self.index.compact(index, term);
        Ok(())
    }
}

/// The state of every group in the WAL.
#[derive(Debug, Default)]
pub struct EngineState {
    // Only groups with state (`!LogState::is_empty()`).
    groups: GroupMap<LogState>,
    // For each segment, how many groups have their first live entry in it (entries of deleted
    // segments pin nothing). Kept as the groups change, so that a purge after every write
    // finds the oldest segment still needed without walking every group.
    pins: BTreeMap<u32, u32>,
}

impl EngineState {
    /// The state of `group`, if it has any.
    pub fn group(&self, group: u64) -> Option<&LogState> {
        self.groups.get(&group)
    }

    /// The groups with state, sorted.
    pub fn group_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.groups.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Every group with state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &LogState)> {
        self.groups.iter().map(|(id, state)| (*id, state))
    }

    /// The checkpoint of every group with state, sorted by group.
    pub fn checkpoint(&self) -> Vec<Checkpoint> {
        let mut cps: Vec<Checkpoint> =
            self.groups.iter().map(|(id, state)| state.checkpoint(*id)).collect();
        cps.sort_unstable_by_key(|cp| cp.group);
        cps
    }

    /// Applies `change` to `group`'s state (created empty if it has none), dropping the group
    /// again if it ends with no state.
    pub fn change<T>(
        &mut self,
        group: u64,
        change: impl FnOnce(&mut LogState) -> Result<T, Contradiction>,
    ) -> Result<T, Contradiction> {
        let state = self.groups.entry(group).or_default();
        let before = state.pinned_segment();
        let result = change(state);
        let after = state.pinned_segment();
        if state.is_empty() {
            self.groups.remove(&group);
        }
        if before != after {
            self.unpin(before);
            self.pin(after);
        }
        result
    }

    /// The oldest segment holding some group's first live entry: no older segment is needed
    /// for entries (`None`: no group has a live entry in a segment).
    pub fn first_pinned_segment(&self) -> Option<u32> {
        debug_assert_eq!(self.pins, self.count_pins(), "the pin counts follow the groups");
        self.pins.first_key_value().map(|(segment, _)| *segment)
    }

    /// The pin counts, counted again from every group (O(groups)).
    fn count_pins(&self) -> BTreeMap<u32, u32> {
        let mut pins = BTreeMap::new();
        for state in self.groups.values() {
            if let Some(segment) = state.pinned_segment() {
                *pins.entry(segment).or_insert(0) += 1;
            }
        }
        pins
    }

    fn pin(&mut self, segment: Option<u32>) {
        if let Some(segment) = segment {
            *self.pins.entry(segment).or_insert(0) += 1;
        }
    }

    fn unpin(&mut self, segment: Option<u32>) {
        let Some(segment) = segment else { return };
        let count = self.pins.get_mut(&segment).expect("a pinned segment is counted");
        *count -= 1;
        if *count == 0 {
            self.pins.remove(&segment);
        }
    }

    /// Drops every piece of `group`'s state.
    pub fn remove(&mut self, group: u64) {
        let pinned = self.groups.remove(&group).and_then(|state| state.pinned_segment());
        self.unpin(pinned);
        // The table's capacity never shrinks by itself: give back most of it once it is mostly
        // empty (amortized: only after three quarters of it were removed).
        if self.groups.capacity() > 4 * self.groups.len().max(16) {
            self.groups.shrink_to(2 * self.groups.len());
        }
    }

    /// A checkpoint (all its parts, in order): establishes the state when it starts the replay
    /// (`first`), otherwise must equal the state replayed so far.
    pub fn apply_checkpoint(
        &mut self,
        parts: &[&[Checkpoint]],
        first: bool,
    ) -> Result<(), Contradiction> {
        let mut previous: Option<u64> = None;
        for cp in parts.iter().flat_map(|part| part.iter()) {
            if previous.is_some_and(|p| p >= cp.group) {
                return Err(format!("checkpoint groups out of order at group {}", cp.group));
            }
            previous = Some(cp.group);
            if cp.last_index < cp.dummy_index || cp.last_index == u64::MAX {
                return Err(format!(
                    "checkpoint of group {} has last index {} with dummy {}",
                    cp.group, cp.last_index, cp.dummy_index
                ));
            }
        }
        let count: usize = parts.iter().map(|part| part.len()).sum();
        if first {
            self.groups.clear();
            // Every checkpointed group's entries lay in deleted segments: none pins any.
            self.pins.clear();
            for cp in parts.iter().flat_map(|part| part.iter()) {
                // Entries up to the checkpoint's last index lay in segments deleted after they
                // were compacted: later records must compact them away.
                let mut state = LogState {
                    index: LogIndex::with_missing(cp.dummy_index, cp.dummy_term, cp.last_index),
                    hard_state: cp.hard_state,
                    snapshot: None,
                };
                state.set_snapshot(&cp.snapshot);
                if state.is_empty() {
                    return Err(format!("checkpoint lists group {} with no state", cp.group));
                }
                self.groups.insert(cp.group, state);
            }
            return Ok(());
        }
        if count != self.groups.len() {
            return Err(format!(
                "checkpoint lists {count} groups, the replayed state has {}",
                self.groups.len()
            ));
        }
        for cp in parts.iter().flat_map(|part| part.iter()) {
            let Some(state) = self.groups.get(&cp.group) else {
                return Err(format!("checkpoint lists group {}, which has no state", cp.group));
            };
            // Compared field by field: building the state's checkpoint clones its membership,
            // and every segment's checkpoint is compared at every open.
            if !state.matches(cp) {
                let here = state.checkpoint(cp.group);
                return Err(format!(
                    "checkpoint {cp:?} disagrees with the replayed state {here:?}"
                ));
            }
        }
        Ok(())
    }

    /// Applies one group record (not a checkpoint) written at `loc`.
    pub fn apply(&mut self, record: &Record, loc: Loc) -> Result<(), Contradiction> {
        match record {
            Record::Checkpoint(_) => Err("a checkpoint inside a write".to_string()),
            // A sealed segment's summary: it restates the records before it.
            Record::Footer(_) => Ok(()),
            // It says only that the records before it were durable.
            Record::Witness => Ok(()),
            Record::Entries { group, entries, hard_state } => {
                let terms = entries.iter().map(|e| e.term);
                self.apply_entries(*group, entries[0].index, terms, *hard_state, loc)
            }
            Record::EntryRun { group, first, count, term, hard_state } => {
                let terms = std::iter::repeat_n(*term, *count as usize);
                self.apply_entries(*group, *first, terms, *hard_state, loc)
            }
            Record::HardState { group, hard_state } => self.change(*group, |state| {
                state.apply_hard_state(*hard_state);
                Ok(())
            }),
            Record::Snapshot { group, metadata, resets_log } => {
                self.change(*group, |state| state.apply_snapshot(metadata, *resets_log))
            }
            Record::Compact { group, index, term } => {
                self.change(*group, |state| state.apply_compact(*index, *term))
            }
            Record::Remove { group } => {
                self.remove(*group);
                Ok(())
            }
        }
    }

    /// One group's part of a sealed segment's footer (see [`crate::wal::footer`]), its records
    /// in segment `segment`: the same changes as its records applied one by one, with one
    /// lookup of the group.
    pub fn apply_footer_group(
        &mut self,
        group: u64,
        items: &[Item<'_>],
        segment: u32,
    ) -> Result<(), Contradiction> {
        self.change(group, |state| {
            for item in items {
                match item {
                    Item::Entries { first, count, terms, offsets } => {
                        let (dummy, last) = (state.index.dummy_index(), state.index.last_index());
                        if *first <= dummy || *first > last.saturating_add(1) {
                            return Err(format!(
                                "entries at {first} do not attach to the log ({dummy}, {last}]"
                            ));
                        }
                        let entries = Item::terms(terms).zip(Item::offsets(offsets));
                        state.index.append_each(*first, *count as usize, segment, entries);
                    }
                    Item::Record { record: Record::HardState { hard_state, .. }, .. } => {
                        state.apply_hard_state(*hard_state)
                    }
                    Item::Record {
                        record: Record::Snapshot { metadata, resets_log, .. }, ..
                    } => state.apply_snapshot(metadata, *resets_log)?,
                    Item::Record { record: Record::Compact { index, term, .. }, .. } => {
                        state.apply_compact(*index, *term)?
                    }
                    // Everything goes, as `remove` does; the group is dropped below if it
                    // ends with no state.
                    Item::Record { record: Record::Remove { .. }, .. } => {
                        *state = LogState::default()
                    }
                    Item::Record { record, .. } => {
                        return Err(format!("a footer lists {record:?} under a group"));
                    }
                }
            }
            Ok(())
        })
    }

    /// An entries record of `group`: entries from `first` with `terms`, then its hard state.
    fn apply_entries(
        &mut self,
        group: u64,
        first: u64,
        terms: impl ExactSizeIterator<Item = u64>,
        hard_state: Option<HardState>,
        loc: Loc,
    ) -> Result<(), Contradiction> {
        self.change(group, |state| {
            state.apply_entries(first, terms, loc)?;
            if let Some(hs) = hard_state {
                state.apply_hard_state(hs);
            }
            Ok(())
        })
    }

    /// The groups with live entries whose records lay in deleted segments, sorted.
    pub fn groups_with_missing(&self) -> Vec<u64> {
        let mut ids: Vec<u64> =
            self.groups.iter().filter(|(_, s)| s.index.has_missing()).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// Releases spare capacity (after recovery built the indexes).
    pub fn shrink(&mut self) {
        for state in self.groups.values_mut() {
            state.index.shrink();
        }
        self.groups.shrink_to_fit();
    }

    /// Heap bytes of the indexes and the group table.
    pub fn heap_bytes(&self) -> usize {
        let table = self.groups.capacity() * (size_of::<u64>() + size_of::<LogState>() + 1);
        let snapshots: usize = self
            .groups
            .values()
            .filter_map(|s| s.snapshot.as_deref())
            .map(|m| size_of::<SnapshotMetadata>() + conf_state_heap_bytes(&m.conf_state))
            .sum();
        table + snapshots + self.groups.values().map(|s| s.index.heap_bytes()).sum::<usize>()
    }

    /// Live entries over every group.
    pub fn live_entries(&self) -> usize {
        self.groups.values().map(|s| s.index.len()).sum()
    }
}

fn conf_state_heap_bytes(cs: &crate::types::ConfState) -> usize {
    let ids = cs.voters.capacity()
        + cs.learners.capacity()
        + cs.voters_outgoing.capacity()
        + cs.learners_next.capacity();
    ids * size_of::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfState;

    /// The oldest pinned segment is the oldest segment holding a group's first live entry
    /// (counted again from every group), through appends, replacements, compactions, resets,
    /// removals and a first checkpoint.
    #[test]
    fn the_first_pinned_segment_follows_every_change_of_a_group() {
        let mut state = EngineState::default();
        let at = |segment| Loc { segment, offset: 64 };
        let entries = |state: &mut EngineState, group, first: u64, n: u64, segment| {
            state
                .change(group, |s| {
                    s.apply_entries(first, vec![1; n as usize].into_iter(), at(segment))
                })
                .unwrap()
        };
        let scan = |state: &EngineState| {
            let firsts = state.iter().filter_map(|(_, s)| s.index.first_loc());
            firsts.map(|loc| loc.segment).filter(|s| *s != Loc::MISSING.segment).min()
        };
        let mut seen = Vec::new();
        let mut check = |state: &EngineState| {
            assert_eq!(state.first_pinned_segment(), scan(state));
            assert_eq!(state.pins, state.count_pins());
            seen.push(state.first_pinned_segment());
        };
        check(&state);
        entries(&mut state, 1, 1, 10, 3);
        entries(&mut state, 2, 1, 5, 4);
        entries(&mut state, 1, 11, 10, 5);
        check(&state); // group 1 pins 3
        state.change(1, |s| s.apply_compact(10, 1)).unwrap();
        check(&state); // group 1 moved to 5: group 2's 4 is the oldest
        let hs = HardState { term: 2, vote: 1, commit: 1 };
        let hard_state = |s: &mut LogState| {
            s.apply_hard_state(hs);
            Ok(())
        };
        state.change(2, hard_state).unwrap();
        check(&state); // a hard state moves nothing
        entries(&mut state, 2, 1, 2, 6);
        check(&state); // group 2's whole log replaced in segment 6: group 1's 5
        let meta = SnapshotMetadata { index: 30, term: 2, conf_state: ConfState::default() };
        state.change(1, |s| s.apply_snapshot(&meta, true)).unwrap();
        check(&state); // group 1 has no entry left: group 2's 6
        state.remove(2);
        check(&state);
        entries(&mut state, 7, 1, 1, 9);
        check(&state);
        state.apply_checkpoint(&[&[state.group(7).unwrap().checkpoint(7)]], true).unwrap();
        check(&state); // after a first checkpoint, every entry lay in deleted segments
        let want = [None, Some(3), Some(4), Some(4), Some(5), Some(6), None, Some(9), None];
        assert_eq!(seen, want);
        // A failed change leaves the counts right too.
        entries(&mut state, 8, 1, 3, 11);
        assert!(state.change(8, |s| s.apply_compact(9, 1)).is_err());
        assert_eq!(state.first_pinned_segment(), Some(11));
    }

    /// A checkpoint matches a replayed state exactly when it equals the checkpoint the state
    /// would write, whatever part differs (indices, hard state, snapshot, membership, or a
    /// marker against none).
    #[test]
    fn a_checkpoint_matches_exactly_the_state_it_describes() {
        let memberships = [
            ConfState::default(),
            ConfState { voters: vec![1], ..ConfState::default() },
            ConfState { learners_next: vec![2], ..ConfState::default() },
            ConfState { auto_leave: true, ..ConfState::default() },
        ];
        let mut states = Vec::new();
        for conf_state in &memberships {
            for (index, term) in [(0, 0), (0, 1), (4, 2)] {
                for (dummy, last, vote) in [(4, 7, 1), (4, 8, 1), (4, 7, 2)] {
                    let mut state = LogState {
                        index: LogIndex::with_missing(dummy, 2, last),
                        hard_state: HardState { term: 3, vote, commit: 5 },
                        snapshot: None,
                    };
                    let conf_state = conf_state.clone();
                    state.set_snapshot(&SnapshotMetadata { index, term, conf_state });
                    states.push(state);
                }
            }
        }
        let mut matched = 0;
        for a in &states {
            for b in &states {
                let cp = b.checkpoint(9);
                assert_eq!(a.matches(&cp), a.checkpoint(9) == cp, "{cp:?}");
                matched += usize::from(a.matches(&cp));
            }
        }
        // Only the default membership at (0, 0) stands for no marker: each state matches itself.
        assert_eq!(matched, states.len());
    }
}
