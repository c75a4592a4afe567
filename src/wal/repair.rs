//! What a log opened in [`RecoveryMode::Repairable`](crate::RecoveryMode::Repairable) lost, and
//! the file that keeps it until each group has repaired from its leader.
//!
//! When recovery finds damage to durable data, it reads everything past the cut it is about to
//! make (the damaged segment's footer or its surviving records, and every later segment) and
//! learns, per group: how far the log had gone (the highest entry index, a checkpoint's last
//! index, a snapshot's index), the highest term seen, and the newest hard state. That goes to
//! the repair file *before* anything is cut, so a crash mid-repair can never leave a shorter log
//! that looks healthy. Open then applies it: the newest hard state's term and vote win (never
//! lost to the cut) with the surviving log's commit index (the cut may bring back entries that a
//! lost write had replaced, which a newer commit index would count), and each group answers
//! [`crate::Storage::repair_state`] until its log holds the lost index again.
//!
//! A group whose records may have been in unreadable bytes with nothing after them that bounds
//! its log (a later entry of the group or a checkpoint) gets index [`UNKNOWN_INDEX`]: only the
//! Raft core's rule (catching up with a leader's commit index) can end its repair.
//!
//! The file's layout is DESIGN.md §8.2's (`repair-file-table`, `repair-line-table`); a unit
//! test checks the offsets below against it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{CorruptionKind, Error, Result};
use crate::io::Fs;
use crate::types::HardState;
use crate::wal::format::Record;

/// The file's name in the log directory.
pub const REPAIR_FILE: &str = "repair";
const REPAIR_TEMP: &str = "repair.tmp";
const MAGIC: &[u8; 8] = b"RWREPAIR";
const VERSION: u32 = 1;
const VERSION_OFFSET: usize = MAGIC.len();
const FLAGS_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
const COUNT_OFFSET: usize = FLAGS_OFFSET + size_of::<u32>();
const HEADER_LEN: usize = COUNT_OFFSET + size_of::<u32>();
/// One group's line: group, index, term, hard state term, vote, commit.
const LINE_FIELDS: usize = 6;
const GROUP_LEN: usize = LINE_FIELDS * size_of::<u64>();
const CRC_LEN: usize = size_of::<u32>();
/// Flag: every group not listed lost an unknown suffix too.
pub const FLAG_OTHERS_UNKNOWN: u32 = 1;
/// Flag: the listed groups' logs are still to be cut back to their snapshots (see
/// [`RepairFile::reset_pending`]).
pub const FLAG_RESET_PENDING: u32 = 2;
/// The index of a group whose lost suffix has no known bound.
pub const UNKNOWN_INDEX: u64 = u64::MAX;
/// A repair file larger than this is damage (it lists at most one line per group).
const MAX_FILE_BYTES: u64 = 256 << 20;

/// What one group lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairRecord {
    /// The highest index the log had reached, or [`UNKNOWN_INDEX`].
    pub index: u64,
    /// The highest term seen.
    pub term: u64,
    /// The newest hard state seen past the cut (empty when none was).
    pub hard_state: HardState,
}

/// The repair file's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairFile {
    /// Groups by id.
    pub groups: BTreeMap<u64, RepairRecord>,
    /// Every group not listed lost an unknown suffix.
    pub others_unknown: bool,
    /// The cut was just made: entries a group holds past its commit index may be ones that a
    /// lost write had replaced, never committed; open drops them (the log restarts at its
    /// snapshot) before the repair goes on, and clears this.
    pub reset_pending: bool,
}

/// Whether `candidate` is newer than `current` (a later term, or a vote cast in the same term).
pub fn newer_hard_state(candidate: &HardState, current: &HardState) -> bool {
    candidate.term > current.term
        || (candidate.term == current.term && current.vote == 0 && candidate.vote != 0)
}

impl RepairRecord {
    /// Folds `other` in: the larger index and term, the newer hard state.
    pub fn merge(&mut self, other: &RepairRecord) {
        self.index = self.index.max(other.index);
        self.term = self.term.max(other.term);
        if newer_hard_state(&other.hard_state, &self.hard_state)
            || (other.hard_state.term == self.hard_state.term
                && other.hard_state.vote == self.hard_state.vote)
        {
            let commit = self.hard_state.commit.max(other.hard_state.commit);
            self.hard_state = other.hard_state;
            self.hard_state.commit = commit;
        }
    }
}

impl RepairFile {
    /// Folds `other` in: the larger index and term, the newer hard state.
    pub fn merge(&mut self, other: &RepairFile) {
        for (group, record) in &other.groups {
            self.groups.entry(*group).or_default().merge(record);
        }
        self.others_unknown |= other.others_unknown;
        self.reset_pending |= other.reset_pending;
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + GROUP_LEN * self.groups.len() + CRC_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let flags = if self.others_unknown { FLAG_OTHERS_UNKNOWN } else { 0 }
            | if self.reset_pending { FLAG_RESET_PENDING } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        let count = u32::try_from(self.groups.len()).expect("fewer than 2^32 groups");
        out.extend_from_slice(&count.to_le_bytes());
        for (group, r) in &self.groups {
            for v in
                [*group, r.index, r.term, r.hard_state.term, r.hard_state.vote, r.hard_state.commit]
            {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> std::result::Result<RepairFile, CorruptionKind> {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        if bytes.len() < HEADER_LEN + CRC_LEN {
            return Err(CorruptionKind::Torn);
        }
        if &bytes[..VERSION_OFFSET] != MAGIC {
            return Err(CorruptionKind::BadMagic);
        }
        let body = bytes.len() - CRC_LEN;
        if crc32fast::hash(&bytes[..body]) != u32_at(body) {
            return Err(CorruptionKind::ChecksumMismatch);
        }
        if u32_at(VERSION_OFFSET) != VERSION {
            return Err(CorruptionKind::UnsupportedVersion(u32_at(VERSION_OFFSET)));
        }
        let flags = u32_at(FLAGS_OFFSET);
        if flags & !(FLAG_OTHERS_UNKNOWN | FLAG_RESET_PENDING) != 0 {
            return Err(CorruptionKind::Malformed(format!("repair file flags {flags:#x}")));
        }
        let count = u32_at(COUNT_OFFSET) as usize;
        if (body - HEADER_LEN) != count.saturating_mul(GROUP_LEN) {
            return Err(CorruptionKind::BadLength(count as u64));
        }
        let mut file = RepairFile {
            others_unknown: flags & FLAG_OTHERS_UNKNOWN != 0,
            reset_pending: flags & FLAG_RESET_PENDING != 0,
            ..RepairFile::default()
        };
        // Bounded by `count`, which the length check tied to the file's size.
        for k in 0..count {
            let at = HEADER_LEN + k * GROUP_LEN;
            let v: Vec<u64> = (0..LINE_FIELDS).map(|j| u64_at(at + 8 * j)).collect();
            let record = RepairRecord {
                index: v[1],
                term: v[2],
                hard_state: HardState { term: v[3], vote: v[4], commit: v[5] },
            };
            file.groups.insert(v[0], record);
        }
        Ok(file)
    }
}

/// Reads the repair file; `None` when there is none.
pub fn read(fs: &Fs, dir: &Path) -> Result<Option<RepairFile>> {
    if !fs.list(dir)?.iter().any(|name| name == REPAIR_FILE) {
        return Ok(None);
    }
    let path = dir.join(REPAIR_FILE);
    let file = fs.open(&path)?;
    let len = file.len()?;
    let damaged = |offset, kind| Error::Corruption { segment: path.clone(), offset, kind };
    if len > MAX_FILE_BYTES {
        return Err(damaged(0, CorruptionKind::BadLength(len)));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    // A damaged repair file is refused: it is the only record that the log was cut.
    RepairFile::decode(&bytes).map(Some).map_err(|kind| damaged(0, kind))
}

/// Replaces the repair file durably (written aside, synced, renamed, directory synced); an
/// empty one is removed.
pub fn write(fs: &Fs, dir: &Path, file: &RepairFile) -> Result<()> {
    let path = dir.join(REPAIR_FILE);
    if file.groups.is_empty() && !file.others_unknown {
        if fs.list(dir)?.iter().any(|name| name == REPAIR_FILE) {
            fs.remove_file(&path)?;
            fs.sync_dir(dir)?;
        }
        return Ok(());
    }
    let temp = dir.join(REPAIR_TEMP);
    let out = fs.create(&temp)?;
    out.set_len(0)?;
    out.write_all_at(&file.encode(), 0)?;
    out.sync_data()?;
    fs.rename(&temp, &path)?;
    fs.sync_dir(dir)?;
    Ok(())
}

/// What the records past a cut say about each group, folded in log order.
#[derive(Debug, Default)]
pub struct Evidence {
    groups: BTreeMap<u64, (RepairRecord, bool)>,
    // Unreadable bytes came after the last checkpoint: groups not seen since may have lost
    // records there.
    others_unknown: bool,
    // Unreadable bytes that may have held a term or vote came after the last checkpoint.
    vote_gap: bool,
}

impl Evidence {
    /// Bytes that could not be read: any group's records may have been there, and with
    /// `may_hold_vote`, a term or vote change that only a later checkpoint can restore.
    pub fn gap(&mut self, may_hold_vote: bool) {
        for (_, known) in self.groups.values_mut() {
            *known = false;
        }
        self.others_unknown = true;
        self.vote_gap |= may_hold_vote;
    }

    /// Whether a term or vote may have been lost with no later copy read.
    pub fn hard_state_may_be_lost(&self) -> bool {
        self.vote_gap
    }

    /// A record read past the cut.
    pub fn record(&mut self, record: &Record) {
        match record {
            Record::Entries { group, entries, hard_state } => {
                let last = entries.last().map_or(0, |e| e.index);
                let term = entries.iter().map(|e| e.term).max().unwrap_or(0);
                self.entries(*group, last, term, hard_state.as_ref());
            }
            Record::EntryRun { group, first, count, term, hard_state } => {
                let last = first + u64::from(*count) - 1;
                self.entries(*group, last, *term, hard_state.as_ref());
            }
            Record::HardState { group, hard_state } => {
                let (r, _) = self.groups.entry(*group).or_insert_with(unknown);
                r.term = r.term.max(hard_state.term);
                r.hard_state = *hard_state;
            }
            Record::Checkpoint(parts) => {
                for cp in parts {
                    let (r, known) = self.groups.entry(cp.group).or_insert_with(unknown);
                    r.index = r.index.max(cp.last_index).max(cp.snapshot.index);
                    r.term = r.term.max(cp.hard_state.term).max(cp.dummy_term);
                    r.term = r.term.max(cp.snapshot.term);
                    r.hard_state = cp.hard_state;
                    *known = true;
                }
                // A checkpoint lists every group: one not in it had no state then.
                self.others_unknown = false;
                self.vote_gap = false;
            }
            Record::Snapshot { group, metadata, .. } => {
                let (r, _) = self.groups.entry(*group).or_insert_with(unknown);
                r.index = r.index.max(metadata.index);
                r.term = r.term.max(metadata.term);
            }
            Record::Compact { .. }
            | Record::Remove { .. }
            | Record::Footer(_)
            | Record::Witness => {}
        }
    }

    /// An entries record of `group` up to `last`, whose largest term is `term`.
    fn entries(&mut self, group: u64, last: u64, term: u64, hard_state: Option<&HardState>) {
        let (r, known) = self.groups.entry(group).or_insert_with(unknown);
        r.index = r.index.max(last);
        r.term = r.term.max(term);
        *known = true;
        // The hard state applies after the entries, as a HardState record would.
        if let Some(hs) = hard_state {
            r.term = r.term.max(hs.term);
            r.hard_state = *hs;
        }
    }

    /// The repair file this evidence asks for.
    pub fn into_file(self) -> RepairFile {
        let groups = self
            .groups
            .into_iter()
            .map(|(group, (mut r, known))| {
                if !known {
                    r.index = UNKNOWN_INDEX;
                }
                (group, r)
            })
            .collect();
        RepairFile { groups, others_unknown: self.others_unknown, reset_pending: true }
    }
}

fn unknown() -> (RepairRecord, bool) {
    (RepairRecord::default(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Entry;

    #[test]
    fn the_layout_matches_design_md() {
        let header = [
            (0, VERSION_OFFSET, "magic"),
            (VERSION_OFFSET, FLAGS_OFFSET - VERSION_OFFSET, "version"),
            (FLAGS_OFFSET, COUNT_OFFSET - FLAGS_OFFSET, "flags"),
            (COUNT_OFFSET, HEADER_LEN - COUNT_OFFSET, "count"),
        ];
        let code: Vec<(usize, usize, String)> =
            header.iter().map(|(o, s, n)| (*o, *s, n.to_string())).collect();
        assert_eq!(code, crate::design_doc::table("repair-file-table"));
        let names = ["group", "index", "term", "hs_term", "hs_vote", "hs_commit"];
        let code: Vec<(usize, usize, String)> =
            names.iter().enumerate().map(|(k, n)| (8 * k, 8, n.to_string())).collect();
        assert_eq!(code, crate::design_doc::table("repair-line-table"));
        assert_eq!(GROUP_LEN, 48);
    }

    #[test]
    fn the_file_round_trips_and_a_flipped_bit_is_refused() {
        let mut file = RepairFile { others_unknown: true, ..RepairFile::default() };
        let hs = HardState { term: 7, vote: 2, commit: 40 };
        file.groups.insert(3, RepairRecord { index: 44, term: 7, hard_state: hs });
        file.groups.insert(9, RepairRecord { index: UNKNOWN_INDEX, term: 2, ..Default::default() });
        let bytes = file.encode();
        assert_eq!(bytes.len(), HEADER_LEN + 2 * GROUP_LEN + CRC_LEN);
        assert_eq!(RepairFile::decode(&bytes), Ok(file));
        for bit in [0, 8 * 13, 8 * (HEADER_LEN + 9), 8 * (bytes.len() - 1)] {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(RepairFile::decode(&bad).is_err(), "bit {bit} flipped was accepted");
        }
        assert!(RepairFile::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_gap_makes_every_group_unknown_until_bounded_again() {
        let entries = |group, from: u64, to: u64, term| Record::Entries {
            group,
            entries: (from..=to).map(|i| Entry { index: i, term, ..Default::default() }).collect(),
            hard_state: None,
        };
        let mut ev = Evidence::default();
        ev.gap(false);
        ev.record(&entries(1, 5, 9, 3));
        ev.record(&entries(2, 1, 2, 1));
        ev.gap(false);
        ev.record(&entries(1, 10, 12, 4));
        let hs = HardState { term: 5, vote: 1, commit: 9 };
        ev.record(&Record::HardState { group: 2, hard_state: hs });
        let file = ev.into_file();
        assert!(file.others_unknown);
        assert_eq!(file.groups[&1].index, 12);
        assert_eq!(file.groups[&1].term, 4);
        // Group 2's entries after the second gap are unknown: only its hard state is.
        assert_eq!(file.groups[&2].index, UNKNOWN_INDEX);
        assert_eq!(file.groups[&2].hard_state, hs);
        assert_eq!(file.groups[&2].term, 5);
    }

    #[test]
    fn merging_keeps_the_larger_bound_and_the_newer_vote() {
        let mut a = RepairFile::default();
        let old = HardState { term: 4, vote: 0, commit: 3 };
        a.groups.insert(1, RepairRecord { index: 10, term: 4, hard_state: old });
        let mut b = RepairFile::default();
        let voted = HardState { term: 4, vote: 2, commit: 1 };
        b.groups.insert(1, RepairRecord { index: 8, term: 4, hard_state: voted });
        a.merge(&b);
        let r = a.groups[&1];
        assert_eq!((r.index, r.term), (10, 4));
        assert_eq!(r.hard_state, HardState { term: 4, vote: 2, commit: 3 });
    }
}
