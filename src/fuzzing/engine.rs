//! `check_engine_recovery`: a few groups of one [`LogEngine`] over CrashFs, changed by batches
//! spanning several groups, snapshots taken and installed, removals and purges, under injected
//! faults, power cuts and reopens. Every call answers as the model does, and after every restart
//! each group must answer like its [`MemoryStorage`] model in one state the history allows:
//! everything durable kept, and every batch whole or absent across all its groups.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;

use crate::contract::Storage;
use crate::error::Error;
use crate::fuzzing::compare::{Outcome, answers_like, holds_like, same_answers};
use crate::fuzzing::ops::FaultChoice;
use crate::fuzzing::storage::recovery_options;
use crate::io::{CrashFs, Fault, Fs};
use crate::options::{SyncPolicy, WalOptions};
use crate::storage::{GroupStorage, LogEngine, MemoryStorage};
use crate::types::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use crate::wal::WriteBatch;

/// Operations of one input that are run; the rest are ignored, to keep each execution short.
pub const MAX_ENGINE_OPS: usize = 48;
/// Groups the operations address (ids `0..GROUPS`).
const GROUPS: u64 = 4;
/// Items of one batch that are used (see [`EngineOp::Write`]).
const MAX_BATCH_ITEMS: usize = 6;
/// Entries of one save, at most.
const MAX_SAVE_ENTRIES: u64 = 6;
/// Faults armed at most per input.
const MAX_FAULTS: usize = 8;
/// Where the engine lives on the simulated file system.
const ROOT: &str = "/node";

/// One change in a batch. Positions are relative to the group's log when the batch is built, so
/// every item is valid (overlapping the tail, never leaving a gap, never compacting past it).
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum BatchItem {
    /// Save `len % 7` entries starting `back % 4` before `last + 1` (not below the first index),
    /// with the last term or one more, and a hard state (term bump, commit below last) with them.
    Save {
        /// Group, modulo the groups used.
        group: u8,
        /// How far before `last + 1` the entries start.
        back: u8,
        /// Number of entries (modulo 7).
        len: u8,
        /// Whether the entries start a new term.
        new_term: bool,
        /// Payload size seed.
        size: u8,
        /// A hard state saved with the entries.
        hard_state: Option<(u8, u8)>,
    },
    /// Compact at `last - back % 4`, if that is past the dummy.
    Compact {
        /// Group, modulo the groups used.
        group: u8,
        /// Distance below the last index.
        back: u8,
    },
}

/// One step of an engine workload.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum EngineOp {
    /// Write one batch of the first six items.
    Write(Vec<BatchItem>),
    /// Remove a group (modulo the groups used).
    Remove(u8),
    /// Sync, release segments and rewrite cold groups.
    Purge,
    /// Make every write durable.
    Sync,
    /// Arm a fault `after % 64` I/O operations from now. After an operation fails the process
    /// is taken as dead (as raftwal's callers treat an I/O error: restart): nothing runs until
    /// the next power cut or reopen. A halt makes every operation from there fail.
    Fault {
        /// Operations before the fault.
        after: u8,
        /// What fails.
        kind: FaultChoice,
    },
    /// Take a snapshot of group `group % 4` at `last - back % 4` (refused as out of date or
    /// compacted when the model refuses it).
    CreateSnapshot {
        /// Group, modulo the groups used.
        group: u8,
        /// Distance below the last index.
        back: u8,
        /// Data size seed.
        size: u8,
    },
    /// Install a leader's snapshot in group `group % 4` at `last + ahead % 4 - 1` (refused as
    /// out of date when it is not newer).
    ApplySnapshot {
        /// Group, modulo the groups used.
        group: u8,
        /// Offset from the last index, plus one.
        ahead: u8,
        /// Term bump over the last term.
        term_bump: u8,
    },
    /// Cut the power (keeping, losing or tearing what is unsynced, by `seed`, or losing all of
    /// it) and reopen.
    PowerCut {
        /// Chooses what unsynced data survives.
        seed: u8,
        /// Lose every unsynced change instead.
        lose_all: bool,
    },
    /// Close cleanly and reopen (a power cut if the engine cannot close).
    Reopen,
}

/// The input of [`check_engine_recovery`].
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct EngineCase {
    /// `SyncPolicy::Never` (durability only from `Sync`, `Purge`, removals and closes) instead of
    /// `Always`.
    pub sync_never: bool,
    /// The operations, of which the first [`MAX_ENGINE_OPS`] run.
    pub ops: Vec<EngineOp>,
}

impl EngineCase {
    /// Decodes a fuzz input as libFuzzer's `fuzz_target!` does (`arbitrary_take_rest`).
    pub fn from_fuzz_input(bytes: &[u8]) -> Option<EngineCase> {
        EngineCase::arbitrary_take_rest(Unstructured::new(bytes)).ok()
    }
}

/// The options the check opens the engine with: the recovery target's small segments and
/// records, and a low purge threshold with a small rewrite budget, so that purges release and
/// rewrite groups (and hot groups are forced) within a few operations.
pub fn engine_options(sync_policy: SyncPolicy) -> WalOptions {
    WalOptions {
        purge_threshold_bytes: 16 << 10,
        rewrite_max_entries: 8,
        rewrite_max_bytes: 4 << 10,
        force_rewrite_after: 2,
        rewrite_budget_bytes: 8 << 10,
        ..recovery_options(sync_policy)
    }
}

fn open(fs: &CrashFs, options: &WalOptions) -> crate::Result<LogEngine> {
    let shared: Fs = Arc::new(fs.clone());
    LogEngine::open_with_fs(shared, Path::new(ROOT), options.clone())
}

/// Every group's model.
type Models = Vec<MemoryStorage>;

/// The states a restart may recover: `states[0]` is durable; each later one is a write (whole)
/// acknowledged or in flight since, any of which may have reached the disk.
struct History {
    states: Vec<Models>,
}

impl History {
    fn current(&self) -> &Models {
        self.states.last().expect("the durable state is always there")
    }

    /// Everything so far is durable.
    fn settle(&mut self) {
        let current = self.states.pop().expect("the durable state is always there");
        self.states = vec![current];
    }

    /// One more write, which may or may not survive a crash; durable at once with `durable`.
    fn push(&mut self, models: Models, durable: bool) {
        self.states.push(models);
        // Bounded by the operations run (each pushes at most one state).
        assert!(self.states.len() <= MAX_ENGINE_OPS + 1);
        if durable {
            self.settle();
        }
    }
}

fn last_term(model: &MemoryStorage) -> u64 {
    let last = model.last_index().expect("the model always answers");
    model.term(last).expect("the model knows its last term")
}

fn entry(group: u64, index: u64, term: u64, size: u8) -> Entry {
    let mut data = format!("{group}/{index}/{term}/").into_bytes();
    data.resize(data.len() + usize::from(size), (group as u8) ^ (index as u8));
    Entry::new(index, term, data)
}

/// Builds the batch for `items` and applies it to a copy of `models`; the copy is the state the
/// batch leads to.
fn build(items: &[BatchItem], models: &Models) -> (WriteBatch, Models) {
    let next: Models = models.clone();
    let mut batch = WriteBatch::new();
    // Bounded by MAX_BATCH_ITEMS.
    for item in items.iter().take(MAX_BATCH_ITEMS) {
        match *item {
            BatchItem::Save { group, back, len, new_term, size, hard_state } => {
                let group = u64::from(group) % GROUPS;
                let model = &next[group as usize];
                let first = model.first_index().expect("the model always answers");
                let last = model.last_index().expect("the model always answers");
                let start = (last + 1).saturating_sub(u64::from(back % 4)).max(first);
                let term = last_term(model).max(1) + u64::from(new_term);
                let count = u64::from(len) % (MAX_SAVE_ENTRIES + 1);
                let entries: Vec<Entry> =
                    (start..start + count).map(|i| entry(group, i, term, size)).collect();
                // A term of at least 1: a default hard state would be no state at all.
                let hs = hard_state.map(|(bump, commit)| HardState {
                    term: term + u64::from(bump % 3),
                    vote: group + 1,
                    commit: last.min(u64::from(commit)),
                });
                batch.save(group, hs.as_ref(), &entries).expect("a valid save");
                model.append(&entries).expect("the model takes a valid save");
                if let Some(hs) = hs {
                    model.set_hard_state(hs).expect("the model takes a hard state");
                }
            }
            BatchItem::Compact { group, back } => {
                let group = u64::from(group) % GROUPS;
                let model = &next[group as usize];
                let first = model.first_index().expect("the model always answers");
                let last = model.last_index().expect("the model always answers");
                let index = last.saturating_sub(u64::from(back % 4));
                if index >= first {
                    batch.compact(group, index).expect("a valid compaction");
                    model.compact(index).expect("the model takes a valid compaction");
                }
            }
        }
    }
    (batch, next)
}

/// The groups the models hold state in.
fn groups_with_state(models: &Models) -> Vec<u64> {
    (0..GROUPS)
        .filter(|g| {
            let model = &models[*g as usize];
            model.hard_state() != HardState::default()
                || model.snapshot().expect("the model always answers").metadata
                    != SnapshotMetadata::default()
                || model.first_index().expect("the model always answers") != 1
                || model.last_index().expect("the model always answers") != 0
        })
        .collect()
}

/// Whether the engine lists exactly the groups with state in `models` and every group holds
/// what its model holds ([`holds_like`]); with `every_answer`, whether every group answers
/// like its model ([`answers_like`]: every range and limit too).
fn engine_like(engine: &LogEngine, models: &Models, every_answer: bool) -> bool {
    engine_like_through(engine, &handles(engine), models, every_answer)
}

/// A handle on every group of `engine`.
fn handles(engine: &LogEngine) -> Vec<GroupStorage> {
    (0..GROUPS).map(|g| engine.group(g).expect("a group handle")).collect()
}

/// [`engine_like`] through `groups`, handles on every group of `engine` held across the
/// candidates of one restart (as a caller holds them): a group's snapshot is then read from
/// the disk once per restart, not once per candidate.
fn engine_like_through(
    engine: &LogEngine,
    groups: &[GroupStorage],
    models: &Models,
    every_answer: bool,
) -> bool {
    engine.group_ids() == groups_with_state(models)
        && groups.iter().zip(models).all(|(group, model)| {
            if every_answer { answers_like(model, group) } else { holds_like(model, group) }
        })
}

/// The first difference between `engine` and `models`, described.
fn describe(engine: &LogEngine, models: &Models) -> String {
    let (got, want) = (engine.group_ids(), groups_with_state(models));
    if got != want {
        return format!("group ids {got:?}, want {want:?}");
    }
    (0..GROUPS)
        .find_map(|g| {
            let group = engine.group(g).expect("a group handle");
            let group: &dyn Storage = &group;
            same_answers(&models[g as usize], group).err().map(|d| format!("group {g}: {d}"))
        })
        .unwrap_or_else(|| "no difference".into())
}

/// Reopens after a power cut and checks that the engine holds one state `history` allows (with
/// `every_answer`, that it answers like it too); that state is durable from then on.
fn restart(
    fs: &CrashFs,
    options: &WalOptions,
    history: &mut History,
    step: usize,
    every_answer: bool,
) -> LogEngine {
    let reopened =
        open(fs, options).unwrap_or_else(|e| panic!("step {step}: reopen after a power cut: {e}"));
    let groups = handles(&reopened);
    // Newest first; bounded by the states pushed.
    let recovered = (0..history.states.len())
        .rev()
        .find(|k| engine_like_through(&reopened, &groups, &history.states[*k], false));
    let Some(k) = recovered else {
        let differences: Vec<String> = (0..history.states.len())
            .map(|k| format!("against candidate {k}: {}", describe(&reopened, &history.states[k])))
            .collect();
        panic!(
            "step {step}: after a power cut the engine matches no allowed state \
             ({} candidates, the first durable):\n{}",
            history.states.len(),
            differences.join("\n")
        );
    };
    if every_answer {
        assert!(
            engine_like_through(&reopened, &groups, &history.states[k], true),
            "step {step}: the engine holds an allowed state but answers differently: {}",
            describe(&reopened, &history.states[k])
        );
    }
    drop(groups);
    history.states.truncate(k + 1);
    history.settle();
    reopened
}

/// Runs `case` on a LogEngine over CrashFs and on one MemoryStorage per group. Panics if an
/// operation fails with no fault armed, if a call answers differently from the model, if the
/// engine cannot reopen after a power cut, or if a reopened engine matches no state the history
/// allows (a lost acknowledged batch, or a batch present in some groups and absent from others).
/// A clean close may find the log poisoned only if a fault armed since the last restart fired:
/// a call that never fails its caller (housekeeping after a write) poisons silently. The process
/// then stops as at a power cut that loses everything unsynced, and recovery is checked.
///
/// The final power cut checks every answer of every group; the restarts before it check what
/// each group holds (indices, hard state, snapshot, every term, the whole log), which is what
/// tells the allowed states apart. The state after any restart is the one the final power cut
/// checks fully when the fuzzer runs the input cut there, and asking every range and limit at
/// every restart, for every candidate, was most of a run's cost.
pub fn check_engine_recovery(case: &EngineCase) {
    let sync_policy = if case.sync_never { SyncPolicy::Never } else { SyncPolicy::Always };
    let options = engine_options(sync_policy);
    let always = sync_policy == SyncPolicy::Always;
    let fs = CrashFs::new();
    // Print every step to stderr (`RAFTWAL_FUZZ_TRACE=1`, or `ops` for every file system
    // operation too), to read a finding.
    let trace_level = super::trace_level();
    if trace_level == super::Trace::Ops {
        super::trace_operations(&fs);
    }
    let trace = trace_level != super::Trace::Off;
    let mut engine = Some(open(&fs, &options).expect("a fresh engine opens"));
    let mut history = History { states: vec![vec![MemoryStorage::new(); GROUPS as usize]] };
    let mut faults = 0;
    // Whether a fault is armed (or fired) since the last restart.
    let mut faulted = false;
    // Faults armed since the last restart (all of them cleared at each restart).
    let mut armed = 0;
    // An operation failed: the process is taken as dead until the next restart.
    let mut dead = false;
    let final_step = case.ops.len().min(MAX_ENGINE_OPS);
    let ops = case.ops.iter().take(MAX_ENGINE_OPS).chain([&EngineOp::PowerCut {
        // A final harshest power cut: what was acknowledged as durable must be there.
        seed: 0,
        lose_all: true,
    }]);
    for (step, op) in ops.enumerate() {
        let live = engine.as_ref().filter(|_| !dead);
        // Each arm yields what the operation leads to if it succeeds and whether it is then
        // durable with everything before it; `None` for no change.
        let change: Option<(Result<(), String>, Models, bool)> = match op {
            EngineOp::Write(items) => {
                let Some(live) = live else { continue };
                let (mut batch, next) = build(items, history.current());
                if batch.is_empty() {
                    continue;
                }
                Some((live.write(&mut batch).map_err(|e| e.to_string()), next, always))
            }
            EngineOp::Remove(group) => {
                let Some(live) = live else { continue };
                let group = u64::from(*group) % GROUPS;
                let result = live.remove_group(group).map_err(|e| e.to_string());
                // Removing a group with no state writes nothing (and syncs nothing); a removal
                // is durable, and with it every write before it.
                let had_state = groups_with_state(history.current()).contains(&group);
                if !had_state && result.is_ok() {
                    continue;
                }
                let mut next = history.current().clone();
                next[group as usize] = MemoryStorage::new();
                Some((result, next, true))
            }
            EngineOp::CreateSnapshot { group, back, size } => {
                let Some(live) = live else { continue };
                let group = u64::from(*group) % GROUPS;
                let next = history.current().clone();
                let model = &next[group as usize];
                let last = model.last_index().expect("the model always answers");
                let index = last.saturating_sub(u64::from(back % 4));
                let data = Bytes::from(vec![group as u8 ^ *size; usize::from(*size) * 4]);
                let want = Outcome::from(model.create_snapshot(index, None, data.clone()));
                let got = Outcome::from(
                    live.group(group).and_then(|g| g.create_snapshot(index, None, data)),
                );
                // The snapshot's marker is synced, and with it every write before it.
                match (got, want) {
                    (Outcome::Ok(_), Outcome::Ok(_)) => Some((Ok(()), next, true)),
                    (Outcome::Other(e), _) if faulted => Some((Err(e), next, true)),
                    (got, want) => {
                        assert_eq!(got, want, "step {step}: snapshot of group {group} at {index}");
                        continue;
                    }
                }
            }
            EngineOp::ApplySnapshot { group, ahead, term_bump } => {
                let Some(live) = live else { continue };
                let group = u64::from(*group) % GROUPS;
                let next = history.current().clone();
                let model = &next[group as usize];
                let last = model.last_index().expect("the model always answers");
                let snapshot = Snapshot {
                    metadata: SnapshotMetadata {
                        index: (last + u64::from(ahead % 4)).saturating_sub(1),
                        term: last_term(model) + u64::from(term_bump % 3),
                        conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
                    },
                    data: Bytes::from(vec![group as u8; usize::from(*ahead)]),
                };
                let want = Outcome::from(model.apply_snapshot(snapshot.clone()));
                let got = Outcome::from(live.group(group).and_then(|g| g.apply_snapshot(snapshot)));
                match (got, want) {
                    (Outcome::Ok(()), Outcome::Ok(())) => Some((Ok(()), next, true)),
                    (Outcome::Other(e), _) if faulted => Some((Err(e), next, true)),
                    (got, want) => {
                        assert_eq!(
                            got, want,
                            "step {step}: installing a snapshot in group {group}"
                        );
                        continue;
                    }
                }
            }
            EngineOp::Purge | EngineOp::Sync => {
                let Some(live) = live else { continue };
                let result = match op {
                    EngineOp::Purge => live.purge().map(|_| ()),
                    _ => live.sync(),
                };
                Some((result.map_err(|e| e.to_string()), history.current().clone(), true))
            }
            EngineOp::Fault { after, kind } => {
                if faults < MAX_FAULTS && !dead {
                    faults += 1;
                    armed += 1;
                    faulted = true;
                    let at_op = fs.op_count() + u64::from(after % 64);
                    fs.inject(Fault { at_op, kind: kind.kind() });
                }
                None
            }
            EngineOp::Reopen if !dead && !fs.is_halted() && engine.is_some() => {
                // A fault that fired in a call that never fails its caller (the housekeeping
                // after a write, whose change has happened) may have poisoned the log silently.
                let fired = armed > fs.armed_faults();
                // Faults not yet fired are disarmed: this close and open run clean.
                fs.clear_faults();
                (faulted, armed) = (false, 0);
                let live = engine.take().expect("checked");
                match live.close() {
                    Ok(()) => {}
                    Err(Error::Poisoned) if fired => {
                        // The process cannot close: it stops, as after a power cut.
                        drop(live);
                        fs.crash_lose_all_unsynced();
                        let last = step == final_step;
                        engine = Some(restart(&fs, &options, &mut history, step, last));
                        continue;
                    }
                    Err(e) => panic!("step {step}: a clean close failed: {e}"),
                }
                history.settle();
                drop(live);
                let reopened =
                    open(&fs, &options).unwrap_or_else(|e| panic!("step {step}: reopen: {e}"));
                let current = history.current();
                assert!(
                    engine_like(&reopened, current, false),
                    "step {step}: after a clean reopen: {}",
                    describe(&reopened, current)
                );
                engine = Some(reopened);
                None
            }
            EngineOp::Reopen | EngineOp::PowerCut { .. } => {
                drop(engine.take());
                match op {
                    EngineOp::PowerCut { seed, lose_all: false } => fs.crash(u64::from(*seed)),
                    _ => fs.crash_lose_all_unsynced(),
                }
                fs.clear_faults();
                (faulted, dead, armed) = (false, false, 0);
                engine = Some(restart(&fs, &options, &mut history, step, step == final_step));
                None
            }
        };
        if trace {
            let fired = fs.is_halted();
            let answer = change.as_ref().map(|(result, _, durable)| (result, durable));
            eprintln!("step {step}: {op:?} -> {answer:?} (dead {dead}, halted {fired})");
        }
        let Some((result, next, durable)) = change else { continue };
        match result {
            Ok(()) if durable => history.push(next, true),
            Ok(()) => history.push(next, always),
            Err(e) => {
                assert!(faulted, "step {step}: {op:?} failed with no fault armed: {e}");
                // Its bytes may have reached the disk, whole; then the process stops.
                history.push(next, false);
                dead = true;
            }
        }
    }
    let ids: BTreeSet<u64> = engine.expect("reopened at the end").group_ids().into_iter().collect();
    assert!(ids.iter().all(|g| *g < GROUPS), "only the groups used have state: {ids:?}");
}
