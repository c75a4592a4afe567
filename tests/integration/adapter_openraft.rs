//! The openraft adapter: openraft's own storage conformance suite on `OpenRaftLogStore` (with a
//! minimal in-memory state machine), and what the suite does not check: the log, the vote, the
//! committed log id, truncation and purges all survive a power cut and a reopen.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use openraft::storage::{
    LogState, RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder,
    RaftStateMachine, Snapshot,
};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, StorageError,
    StoredMembership, Vote,
};
use raftwal::adapters::openraft::{OpenRaftLogStore, STATE_DIR, STATE_FILE};
use raftwal::io::{CrashFs, Fault, FaultKind, Fs};
use raftwal::{CorruptionKind, Error, WalOptions};

openraft::declare_raft_types!(
    /// Strings in, strings out.
    pub TypeConfig
);

type Entry = openraft::Entry<TypeConfig>;
type Store = OpenRaftLogStore<TypeConfig>;

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 8192,
        max_record_bytes: 4096,
        prepare_in_background: false,
        cache_bytes: 4096,
        ..WalOptions::default()
    }
}

fn open(fs: &CrashFs) -> Result<Store, Error> {
    let fs: Fs = Arc::new(fs.clone());
    OpenRaftLogStore::open_with_fs(fs, Path::new("/node"), options())
}

#[derive(Debug, Default)]
struct Machine {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    applied: Vec<String>,
    current: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// A state machine held in memory: the applied commands in order.
#[derive(Clone, Debug, Default)]
struct MemStateMachine {
    inner: Arc<Mutex<Machine>>,
}

impl MemStateMachine {
    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.inner.lock().unwrap()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let mut m = self.lock();
        m.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: m.last_applied,
            last_membership: m.membership.clone(),
            snapshot_id: format!("snapshot-{}", m.snapshots_built),
        };
        let data = serde_json::to_vec(&m.applied).unwrap();
        m.current = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let m = self.lock();
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<String>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut m = self.lock();
        let mut responses = Vec::new();
        for entry in entries {
            m.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(String::new()),
                EntryPayload::Normal(command) => {
                    m.applied.push(command.clone());
                    responses.push(command);
                }
                EntryPayload::Membership(membership) => {
                    m.membership = StoredMembership::new(Some(entry.log_id), membership);
                    responses.push(String::new());
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let mut m = self.lock();
        m.applied = serde_json::from_slice(&data).unwrap();
        m.last_applied = meta.last_log_id;
        m.membership = meta.last_membership.clone();
        m.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let m = self.lock();
        Ok(m.current
            .clone()
            .map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Each store of the suite on its own fresh `CrashFs`.
struct Builder;

impl StoreBuilder<TypeConfig, Store, MemStateMachine, CrashFs> for Builder {
    async fn build(&self) -> Result<(CrashFs, Store, MemStateMachine), StorageError<u64>> {
        let fs = CrashFs::new();
        let store = open(&fs).unwrap();
        Ok((fs, store, MemStateMachine::default()))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(format!("cmd-{index}")) }
}

/// Upper bound on polls of one future in `block_on`.
const MAX_POLLS: usize = 1000;

/// Runs a future that waits on nothing outside itself (every call of this store completes in
/// the poll that starts it), polling it a bounded number of times.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..MAX_POLLS {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("the future did not complete within {MAX_POLLS} polls");
}

async fn all_entries(store: &mut Store) -> Vec<Entry> {
    store.try_get_log_entries(0..u64::MAX).await.unwrap()
}

async fn log_state(store: &mut Store) -> (Option<LogId<u64>>, Option<LogId<u64>>) {
    let LogState { last_purged_log_id, last_log_id } = store.get_log_state().await.unwrap();
    (last_purged_log_id, last_log_id)
}

/// Closes the store, cuts the power and opens what survived.
fn power_cut(store: Store, fs: &CrashFs, seed: u64) -> Store {
    drop(store);
    fs.crash(seed);
    open(fs).unwrap()
}

#[test]
fn log_vote_committed_truncation_and_purges_survive_a_power_cut() {
    block_on(async {
        let fs = CrashFs::new();
        let mut store = open(&fs).unwrap();
        let vote = Vote::new_committed(2, 1);
        store.save_vote(&vote).await.unwrap();
        let entries: Vec<Entry> = (0..10).map(|i| normal(if i < 5 { 1 } else { 2 }, i)).collect();
        store.blocking_append(entries.clone()).await.unwrap();
        store.save_committed(Some(log_id(2, 7))).await.unwrap();

        let mut store = power_cut(store, &fs, 1);
        assert_eq!(store.read_vote().await.unwrap(), Some(vote), "the vote survived");
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 7)), "committed survived");
        assert_eq!(all_entries(&mut store).await, entries, "every entry survived");
        assert_eq!(log_state(&mut store).await, (None, Some(log_id(2, 9))));

        // Truncate 8.., purge ..=2: entries 3..=7 are left.
        store.truncate(log_id(2, 8)).await.unwrap();
        store.purge(log_id(1, 2)).await.unwrap();
        assert_eq!(all_entries(&mut store).await, entries[3..8], "3..=7 before the power cut");
        let mut store = power_cut(store, &fs, 2);
        assert_eq!(all_entries(&mut store).await, entries[3..8], "3..=7 after the power cut");
        assert_eq!(log_state(&mut store).await, (Some(log_id(1, 2)), Some(log_id(2, 7))));
        let reader_view = store.get_log_reader().await.try_get_log_entries(5..=6).await.unwrap();
        assert_eq!(reader_view, entries[5..7], "a reader sees the same log");

        // A new entry 8 of a later term replaces the truncated one, and 9 never comes back.
        let replacement = normal(3, 8);
        store.blocking_append([replacement.clone()]).await.unwrap();
        let mut store = power_cut(store, &fs, 3);
        let mut expected = entries[3..8].to_vec();
        expected.push(replacement);
        assert_eq!(all_entries(&mut store).await, expected, "the replacement, not the old tail");
        assert_eq!(log_state(&mut store).await, (Some(log_id(1, 2)), Some(log_id(3, 8))));

        // Purging beyond the last entry (as after installing a snapshot) empties the log, which
        // then continues after the purged id.
        store.purge(log_id(4, 20)).await.unwrap();
        let mut store = power_cut(store, &fs, 4);
        assert!(all_entries(&mut store).await.is_empty(), "nothing left after the purge");
        assert_eq!(log_state(&mut store).await, (Some(log_id(4, 20)), Some(log_id(4, 20))));
        store.blocking_append([normal(4, 21)]).await.unwrap();
        let mut store = power_cut(store, &fs, 5);
        assert_eq!(all_entries(&mut store).await, vec![normal(4, 21)]);
        assert_eq!(log_state(&mut store).await, (Some(log_id(4, 20)), Some(log_id(4, 21))));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote), "the vote survived every step");
    });
}

#[test]
fn a_damaged_state_record_refuses_to_open() {
    block_on(async {
        let fs = CrashFs::new();
        let mut store = open(&fs).unwrap();
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        drop(store);
        let record = Path::new("/node").join(STATE_DIR).join(STATE_FILE);
        // A bit of the body, past the 4-byte CRC.
        fs.flip_bit(&record, 8 * 6).unwrap();
        let err = open(&fs).unwrap_err();
        assert!(
            matches!(err, Error::Corruption { kind: CorruptionKind::ChecksumMismatch, .. }),
            "{err}"
        );
    });
}

/// Everything the store answers about itself.
#[derive(Debug, PartialEq)]
struct Observed {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    log_state: (Option<LogId<u64>>, Option<LogId<u64>>),
    entries: Vec<Entry>,
}

async fn observe(store: &mut Store) -> Observed {
    Observed {
        vote: store.read_vote().await.unwrap(),
        committed: store.read_committed().await.unwrap(),
        log_state: log_state(store).await,
        entries: all_entries(store).await,
    }
}

/// Operations that exercise every kind of write: vote, appends, committed, truncation, a purge
/// inside the log and one beyond it.
const WORKLOAD_STEPS: usize = 9;

async fn workload_step(store: &mut Store, step: usize) -> Result<(), StorageError<u64>> {
    match step {
        0 => store.save_vote(&Vote::new(1, 1)).await,
        1 => store.blocking_append((0..6).map(|i| normal(1, i))).await,
        2 => store.save_committed(Some(log_id(1, 3))).await,
        3 => store.truncate(log_id(1, 4)).await,
        4 => store.blocking_append([normal(2, 4), normal(2, 5)]).await,
        5 => store.purge(log_id(1, 2)).await,
        6 => store.save_vote(&Vote::new_committed(2, 1)).await,
        7 => store.purge(log_id(2, 10)).await,
        8 => store.blocking_append([normal(3, 11)]).await,
        _ => unreachable!("{WORKLOAD_STEPS} steps"),
    }
}

/// A power cut at every I/O operation of the workload: the store reopens, and answers exactly
/// as it did after the last acknowledged step or after the step that was running.
#[test]
fn a_power_cut_at_every_operation_leaves_the_last_acknowledged_state_or_the_next() {
    // The states after 0..=WORKLOAD_STEPS steps, and the operations the whole workload takes.
    let fs = CrashFs::new();
    let mut store = open(&fs).unwrap();
    let start = fs.op_count();
    let mut states = vec![block_on(observe(&mut store))];
    for step in 0..WORKLOAD_STEPS {
        block_on(workload_step(&mut store, step)).unwrap();
        states.push(block_on(observe(&mut store)));
    }
    let total_ops = fs.op_count() - start;
    drop(store);
    assert!(total_ops < 2000, "the workload stays small: {total_ops} operations");

    // How many crashes recovered to the acknowledged state, and to the one after it.
    let mut outcomes = [0usize; 2];
    for at in 0..total_ops {
        let fs = CrashFs::new();
        let mut store = open(&fs).unwrap();
        fs.inject(Fault { at_op: fs.op_count() + at, kind: FaultKind::Halt });
        let mut acknowledged = 0;
        for step in 0..WORKLOAD_STEPS {
            if block_on(workload_step(&mut store, step)).is_err() {
                break;
            }
            acknowledged += 1;
        }
        assert!(acknowledged < WORKLOAD_STEPS, "operation {at} halted some step");
        drop(store);
        fs.crash(at);
        fs.clear_faults();
        let mut store = open(&fs).unwrap_or_else(|e| panic!("crash at operation {at}: {e}"));
        let seen = block_on(observe(&mut store));
        let outcome = states[acknowledged..=acknowledged + 1].iter().position(|s| *s == seen);
        let outcome = outcome.unwrap_or_else(|| {
            panic!("crash at operation {at} after {acknowledged} steps: {seen:?}")
        });
        outcomes[outcome] += 1;
    }
    assert!(outcomes[0] > 0, "some crashes lost the step that was running");
    assert!(outcomes[1] > 0, "some crashes kept the step that was running: {outcomes:?}");
}
