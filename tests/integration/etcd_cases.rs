//! The cases of etcd's storage test tables, expressed against raftwal's API and run against any
//! storage through [`Subject`], so the in-memory and durable storages answer the same table.

use bytes::Bytes;
use raftwal::{ConfState, Entry, Error, HardState, Result, Snapshot, SnapshotMetadata, Storage};

/// A storage under test. `settle` runs after every mutating step; durable subjects may close and
/// reopen there, so every answer afterwards must come from disk.
pub trait Subject {
    fn storage(&self) -> &dyn Storage;
    fn append(&mut self, entries: &[Entry]) -> Result<()>;
    fn set_hard_state(&mut self, hs: HardState) -> Result<()>;
    fn compact(&mut self, index: u64) -> Result<()>;
    fn create_snapshot(
        &mut self,
        index: u64,
        cs: Option<ConfState>,
        data: Bytes,
    ) -> Result<Snapshot>;
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()>;
    fn settle(&mut self) {}
    /// Closes and reopens a durable subject; nothing for an in-memory one.
    fn reopen(&mut self) {}
}

/// Makes a fresh, empty subject.
pub type Fresh<'a> = &'a mut dyn FnMut() -> Box<dyn Subject>;

fn e(index: u64, term: u64) -> Entry {
    Entry::new(index, term, Bytes::new())
}

fn snap(index: u64, term: u64, cs: ConfState) -> Snapshot {
    Snapshot {
        metadata: SnapshotMetadata { index, term, conf_state: cs },
        data: Bytes::from("data"),
    }
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState { voters: ids.to_vec(), ..ConfState::default() }
}

/// A subject whose log is the dummy `(dummy, dummy)` followed by entries `(i, i)` up to `last`,
/// built through public calls only.
fn with_log(fresh: Fresh<'_>, dummy: u64, last: u64) -> Box<dyn Subject> {
    let mut s = fresh();
    s.apply_snapshot(snap(dummy, dummy, ConfState::default())).unwrap();
    s.settle();
    let es: Vec<Entry> = (dummy + 1..=last).map(|i| e(i, i)).collect();
    s.append(&es).unwrap();
    s.settle();
    s
}

/// The whole log as (index, term) pairs, dummy first, read through the `Storage` trait only.
pub fn log_of(storage: &dyn Storage) -> Vec<(u64, u64)> {
    let first = storage.first_index().unwrap();
    let last = storage.last_index().unwrap();
    let mut log = vec![(first - 1, storage.term(first - 1).unwrap())];
    if last >= first {
        let es = storage.entries(first, last + 1, u64::MAX).unwrap();
        assert_eq!(es.len() as u64, last + 1 - first, "entries() must return the whole range");
        for (entry, index) in es.iter().zip(first..) {
            assert_eq!(entry.index, index, "entries() must return consecutive indices");
            assert_eq!(
                storage.term(index).unwrap(),
                entry.term,
                "term() must agree with entries()"
            );
        }
        log.extend(es.iter().map(|e| (e.index, e.term)));
    }
    log
}

fn pairs(es: &[Entry]) -> Vec<(u64, u64)> {
    es.iter().map(|e| (e.index, e.term)).collect()
}

pub fn term(fresh: Fresh<'_>) {
    let s = with_log(fresh, 3, 5);
    let st = s.storage();
    assert!(matches!(st.term(2), Err(Error::Compacted)));
    assert_eq!(st.term(3).unwrap(), 3);
    assert_eq!(st.term(4).unwrap(), 4);
    assert_eq!(st.term(5).unwrap(), 5);
    assert!(matches!(st.term(6), Err(Error::Unavailable)));
}

pub fn entries(fresh: Fresh<'_>) {
    let s = with_log(fresh, 3, 6);
    let st = s.storage();
    let size = |i: u64| e(i, i).encoded_len();
    assert!(matches!(st.entries(2, 6, u64::MAX), Err(Error::Compacted)));
    assert!(matches!(st.entries(3, 4, u64::MAX), Err(Error::Compacted)));
    assert_eq!(pairs(&st.entries(4, 5, u64::MAX).unwrap()), [(4, 4)]);
    assert_eq!(pairs(&st.entries(4, 6, u64::MAX).unwrap()), [(4, 4), (5, 5)]);
    assert_eq!(pairs(&st.entries(4, 7, u64::MAX).unwrap()), [(4, 4), (5, 5), (6, 6)]);
    // Even if max_size is zero, the first entry is returned.
    assert_eq!(pairs(&st.entries(4, 7, 0).unwrap()), [(4, 4)]);
    // The limit is exactly the first two entries.
    assert_eq!(pairs(&st.entries(4, 7, size(4) + size(5)).unwrap()), [(4, 4), (5, 5)]);
    // The limit reaches half into the third entry.
    let half = size(4) + size(5) + size(6) / 2;
    assert_eq!(pairs(&st.entries(4, 7, half).unwrap()), [(4, 4), (5, 5)]);
    let short = size(4) + size(5) + size(6) - 1;
    assert_eq!(pairs(&st.entries(4, 7, short).unwrap()), [(4, 4), (5, 5)]);
    // The limit is exactly all three entries.
    let all = size(4) + size(5) + size(6);
    assert_eq!(pairs(&st.entries(4, 7, all).unwrap()), [(4, 4), (5, 5), (6, 6)]);
    // Empty range, and the contract violations etcd panics on.
    assert!(st.entries(5, 5, u64::MAX).unwrap().is_empty());
    assert!(matches!(st.entries(4, 8, u64::MAX), Err(Error::ContractViolation(_))));
    assert!(matches!(st.entries(6, 5, u64::MAX), Err(Error::ContractViolation(_))));
}

pub fn entries_of_a_dummy_only_log_are_unavailable(fresh: Fresh<'_>) {
    let s = fresh();
    assert!(matches!(s.storage().entries(1, 1, u64::MAX), Err(Error::Unavailable)));
    let s = with_log(fresh, 5, 5);
    assert!(matches!(s.storage().entries(6, 6, u64::MAX), Err(Error::Unavailable)));
    assert!(matches!(s.storage().entries(5, 6, u64::MAX), Err(Error::Compacted)));
}

pub fn fresh_storage_is_the_zero_dummy(fresh: Fresh<'_>) {
    let s = fresh();
    let st = s.storage();
    assert_eq!(st.first_index().unwrap(), 1);
    assert_eq!(st.last_index().unwrap(), 0);
    assert_eq!(st.term(0).unwrap(), 0);
    assert!(matches!(st.term(1), Err(Error::Unavailable)));
    assert_eq!(st.snapshot().unwrap(), Snapshot::default());
    assert_eq!(st.initial_state().unwrap(), Default::default());
}

pub fn last_index(fresh: Fresh<'_>) {
    let mut s = with_log(fresh, 3, 5);
    assert_eq!(s.storage().last_index().unwrap(), 5);
    s.append(&[e(6, 5)]).unwrap();
    s.settle();
    assert_eq!(s.storage().last_index().unwrap(), 6);
}

pub fn first_index(fresh: Fresh<'_>) {
    let mut s = with_log(fresh, 3, 5);
    assert_eq!(s.storage().first_index().unwrap(), 4);
    s.compact(4).unwrap();
    s.settle();
    assert_eq!(s.storage().first_index().unwrap(), 5);
}

pub fn compact(fresh: Fresh<'_>) {
    // (compact at, refused as compacted?, dummy index, dummy term, entries left with the dummy)
    let rows = [(2, true, 3, 3, 3), (3, true, 3, 3, 3), (4, false, 4, 4, 2), (5, false, 5, 5, 1)];
    for (at, compacted, dummy, dummy_term, len) in rows {
        let mut s = with_log(fresh, 3, 5);
        let got = s.compact(at);
        if compacted {
            assert!(matches!(got, Err(Error::Compacted)), "compact({at}) gave {got:?}");
        } else {
            got.unwrap();
        }
        s.settle();
        let log = log_of(s.storage());
        assert_eq!(log[0], (dummy, dummy_term), "dummy after compact({at})");
        assert_eq!(log.len(), len, "entries left after compact({at})");
    }
    let mut s = with_log(fresh, 3, 5);
    assert!(matches!(s.compact(6), Err(Error::ContractViolation(_))));
    assert_eq!(log_of(s.storage()), [(3, 3), (4, 4), (5, 5)], "a refused compact changes nothing");
}

pub fn create_snapshot(fresh: Fresh<'_>) {
    let cs = voters(&[1, 2, 3]);
    for (at, term) in [(4, 4), (5, 5)] {
        let mut s = with_log(fresh, 3, 5);
        let made = s.create_snapshot(at, Some(cs.clone()), Bytes::from("data")).unwrap();
        let want = snap(at, term, cs.clone());
        assert_eq!(made, want);
        s.settle();
        assert_eq!(s.storage().snapshot().unwrap(), want);
        assert_eq!(s.storage().initial_state().unwrap().conf_state, cs);
        assert_eq!(
            log_of(s.storage()),
            [(3, 3), (4, 4), (5, 5)],
            "create_snapshot does not compact"
        );
    }
    let mut s = with_log(fresh, 3, 5);
    assert!(matches!(s.create_snapshot(3, None, Bytes::new()), Err(Error::SnapshotOutOfDate)));
    assert!(matches!(s.create_snapshot(6, None, Bytes::new()), Err(Error::ContractViolation(_))));
    s.create_snapshot(4, Some(cs.clone()), Bytes::new()).unwrap();
    s.settle();
    assert!(matches!(s.create_snapshot(4, None, Bytes::new()), Err(Error::SnapshotOutOfDate)));
    // Without a conf state the previous one carries over.
    let next = s.create_snapshot(5, None, Bytes::from("d2")).unwrap();
    assert_eq!(next.metadata.conf_state, cs);
}

pub fn append(fresh: Fresh<'_>) {
    type Row = (Vec<Entry>, Vec<(u64, u64)>);
    let rows: [Row; 7] = [
        // Every incoming entry lies below first_index: nothing changes.
        (vec![e(1, 1), e(2, 2)], vec![(3, 3), (4, 4), (5, 5)]),
        (vec![e(3, 3), e(4, 4), e(5, 5)], vec![(3, 3), (4, 4), (5, 5)]),
        // Conflicting terms replace the suffix.
        (vec![e(3, 3), e(4, 6), e(5, 6)], vec![(3, 3), (4, 6), (5, 6)]),
        (vec![e(3, 3), e(4, 4), e(5, 5), e(6, 5)], vec![(3, 3), (4, 4), (5, 5), (6, 5)]),
        // Incoming entries below first_index are trimmed, existing ones from 4 truncated.
        (vec![e(2, 3), e(3, 3), e(4, 5)], vec![(3, 3), (4, 5)]),
        // Truncate the existing entries and append.
        (vec![e(4, 5)], vec![(3, 3), (4, 5)]),
        // Direct append.
        (vec![e(6, 5)], vec![(3, 3), (4, 4), (5, 5), (6, 5)]),
    ];
    for (incoming, want) in rows {
        let mut s = with_log(fresh, 3, 5);
        s.append(&incoming).unwrap();
        s.settle();
        assert_eq!(log_of(s.storage()), want, "after appending {:?}", pairs(&incoming));
    }
    // A gap is refused and changes nothing.
    let mut s = with_log(fresh, 3, 5);
    assert!(matches!(s.append(&[e(7, 5)]), Err(Error::ContractViolation(_))));
    assert!(matches!(s.append(&[e(6, 5), e(8, 5)]), Err(Error::ContractViolation(_))));
    s.settle();
    assert_eq!(log_of(s.storage()), [(3, 3), (4, 4), (5, 5)]);
    // An empty append is a no-op.
    s.append(&[]).unwrap();
    assert_eq!(log_of(s.storage()), [(3, 3), (4, 4), (5, 5)]);
}

pub fn apply_snapshot(fresh: Fresh<'_>) {
    let cs = voters(&[1, 2, 3]);
    let mut s = fresh();
    s.apply_snapshot(snap(4, 4, cs.clone())).unwrap();
    s.settle();
    assert_eq!(s.storage().snapshot().unwrap(), snap(4, 4, cs.clone()));
    assert_eq!(log_of(s.storage()), [(4, 4)]);
    assert!(matches!(s.apply_snapshot(snap(3, 3, cs.clone())), Err(Error::SnapshotOutOfDate)));
    assert!(matches!(s.apply_snapshot(snap(4, 4, cs.clone())), Err(Error::SnapshotOutOfDate)));
    s.settle();
    assert_eq!(
        s.storage().snapshot().unwrap().metadata.index,
        4,
        "a refused snapshot changes nothing"
    );

    // Applying a snapshot discards every entry, even ones beyond it.
    let mut s = with_log(fresh, 3, 8);
    s.apply_snapshot(snap(5, 7, cs.clone())).unwrap();
    s.settle();
    assert_eq!(log_of(s.storage()), [(5, 7)]);
    assert_eq!(s.storage().initial_state().unwrap().conf_state, cs);
}

pub fn index_zero_snapshot_bootstraps_a_fresh_storage(fresh: Fresh<'_>) {
    let cs = voters(&[1, 2, 3]);
    let mut s = fresh();
    s.apply_snapshot(snap(0, 0, cs.clone())).unwrap();
    s.settle();
    assert_eq!(s.storage().initial_state().unwrap().conf_state, cs);
    assert_eq!(log_of(s.storage()), [(0, 0)]);
    s.append(&[e(1, 1)]).unwrap();
    s.settle();
    assert_eq!(log_of(s.storage()), [(0, 0), (1, 1)]);
}

pub fn hard_state_and_initial_state(fresh: Fresh<'_>) {
    let mut s = with_log(fresh, 3, 5);
    let hs = HardState { term: 5, vote: 2, commit: 4 };
    s.set_hard_state(hs).unwrap();
    s.settle();
    assert_eq!(s.storage().initial_state().unwrap().hard_state, hs);
}

pub fn returned_entries_are_owned(fresh: Fresh<'_>) {
    let mut s = fresh();
    s.append(&[Entry::new(1, 1, "one"), Entry::new(2, 1, "two")]).unwrap();
    let held = s.storage().entries(1, 3, u64::MAX).unwrap();
    s.append(&[Entry::new(2, 2, "changed")]).unwrap();
    s.compact(2).unwrap();
    assert_eq!(held[1].data, Bytes::from("two"));
    assert_eq!(held[1].term, 1);
}

/// One `#[test]` per case above, each on subjects made by `$fresh` (an `fn() -> Box<dyn Subject>`).
#[macro_export]
macro_rules! etcd_case_tests {
    ($fresh:expr) => {
        $crate::etcd_case_tests!(@cases $fresh;
            fresh_storage_is_the_zero_dummy, term, entries, entries_of_a_dummy_only_log_are_unavailable,
            last_index, first_index, compact, create_snapshot, append, apply_snapshot,
            index_zero_snapshot_bootstraps_a_fresh_storage, hard_state_and_initial_state,
            returned_entries_are_owned);
    };
    (@cases $fresh:expr; $($case:ident),*) => {$(
        #[test]
        fn $case() {
            let mut fresh = || -> Box<dyn $crate::etcd_cases::Subject> { $fresh() };
            $crate::etcd_cases::$case(&mut fresh);
        }
    )*};
}
