//! `check_storage_model` (WalStorage against MemoryStorage, call for call) and `check_recovery`
//! (WalStorage over CrashFs with crashes and injected faults).

use std::path::Path;
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};

use crate::error::Error;
use crate::fuzzing::compare::{
    Outcome, answers_like, holds_like, same_answers, same_holdings, same_state,
};
use crate::fuzzing::ops::{Call, RecoveryOp, StorageOp, resolve};
use crate::io::{CrashFs, Fault, Fs};
use crate::options::{SyncPolicy, WalOptions};
use crate::storage::{MemoryStorage, WalStorage};

/// Operations of one recovery input that are run; the rest are ignored, to keep each execution
/// short.
pub const MAX_OPS: usize = 48;
/// Operations of one storage-model input that are run (enough for several segment rollovers,
/// compactions and snapshots; each is cheaper to check without crashes, so fewer are needed).
pub const MAX_MODEL_OPS: usize = 32;
/// Faults armed at most per input.
const MAX_FAULTS: usize = 8;
/// Where the storage lives on the simulated file system.
const ROOT: &str = "/node";

/// The input of [`check_storage_model`].
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct StorageCase {
    /// The operations, of which the first [`MAX_MODEL_OPS`] run.
    pub ops: Vec<StorageOp>,
}

/// The input of [`check_recovery`].
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct RecoveryCase {
    /// `SyncPolicy::Never` (durability only from `Sync` and snapshots) instead of `Always`.
    pub sync_never: bool,
    /// The operations, of which the first [`MAX_OPS`] run.
    pub ops: Vec<RecoveryOp>,
}

impl StorageCase {
    /// Decodes a fuzz input as libFuzzer's `fuzz_target!` does (`arbitrary_take_rest`).
    pub fn from_fuzz_input(bytes: &[u8]) -> Option<StorageCase> {
        StorageCase::arbitrary_take_rest(Unstructured::new(bytes)).ok()
    }
}

impl RecoveryCase {
    /// Decodes a fuzz input as libFuzzer's `fuzz_target!` does (`arbitrary_take_rest`).
    pub fn from_fuzz_input(bytes: &[u8]) -> Option<RecoveryCase> {
        RecoveryCase::arbitrary_take_rest(Unstructured::new(bytes)).ok()
    }
}

/// The options both checks open WalStorage with: 4 KiB segments and 1 KiB records, so that a
/// few operations roll over segments and split batches; segments prepared inline, so the I/O
/// sequence (and so every crash and fault position) is deterministic.
pub fn recovery_options(sync_policy: SyncPolicy) -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_record_bytes: 1024,
        sync_policy,
        prepare_in_background: false,
        cache_bytes: 512,
        snapshot_retention: 2,
        snapshot_compression_level: 1,
        ..WalOptions::default()
    }
}

fn open(fs: &CrashFs, options: &WalOptions) -> crate::Result<WalStorage> {
    let shared: Fs = Arc::new(fs.clone());
    WalStorage::open_with_fs(shared, Path::new(ROOT), options.clone())
}

/// Runs `case` on MemoryStorage and on WalStorage (over CrashFs, reopened where the input says)
/// side by side. Panics at the first call whose outcome differs, or the first state whose
/// answers differ.
///
/// After every call the answers that need no entry reads (indices, hard state, membership,
/// snapshot, every term) are compared; after each reopen, the whole log too; after the last
/// call, every answer, `entries` over the whole spread of ranges and limits included. That
/// loses nothing over a campaign: the state after any call or reopen is the final state of the
/// input cut there, which the fuzzer runs too (it cuts and grows inputs all the time), while
/// checking every range after every call made each execution cost as much as some fifty.
pub fn check_storage_model(case: &StorageCase) {
    let options = recovery_options(SyncPolicy::Always);
    let fs = CrashFs::new();
    let mut storage = Some(open(&fs, &options).expect("a fresh storage opens"));
    let model = MemoryStorage::new();
    let steps = case.ops.len().min(MAX_MODEL_OPS);
    for (step, op) in case.ops.iter().take(MAX_MODEL_OPS).enumerate() {
        let call = resolve(op, &model, step);
        match &call {
            Some(call) => {
                let subject = storage.as_ref().expect("open");
                let got = Outcome::from(call.apply_wal(subject));
                let want = call.apply_model(&model);
                assert_eq!(got, want, "step {step}: {call:?} answered differently");
            }
            None => {
                drop(storage.take());
                let reopened = open(&fs, &options);
                storage = Some(reopened.unwrap_or_else(|e| panic!("reopen at step {step}: {e}")));
            }
        }
        let subject = storage.as_ref().expect("open");
        let answers = if step + 1 == steps {
            same_answers(&model, subject)
        } else if call.is_none() {
            same_holdings(&model, subject)
        } else {
            same_state(&model, subject)
        };
        if let Err(difference) = answers {
            let what = call.map_or("a reopen".to_string(), |call| format!("{call:?}"));
            panic!("step {step}: after {what}: {difference}");
        }
    }
}

/// The model's side of a recovery run: every state the storage has been acknowledged in.
struct History {
    /// `states[k]`: the model after the first `k` calls; the last is the current state.
    states: Vec<MemoryStorage>,
    /// `calls[k]` took `states[k]` to `states[k + 1]`.
    calls: Vec<Call>,
    /// Every state from `states[durable]` on may be what a crash leaves; earlier ones may not.
    durable: usize,
    /// A call that failed and that the live storage shows as not done, but whose bytes may
    /// have reached the disk: it may appear after a restart, on top of the current state.
    pending: Option<Call>,
}

impl History {
    fn current(&self) -> &MemoryStorage {
        self.states.last().expect("the initial state is always there")
    }

    fn push(&mut self, call: Call, state: MemoryStorage) {
        self.calls.push(call);
        self.states.push(state);
        self.pending = None;
    }

    /// The states a restart may recover, newest first: after a clean reopen only the current
    /// one (or the pending call on top); after a crash any from the durable one on, with the
    /// partial forms of each call in between. Described, not built: most restarts match the
    /// first, and building every form would copy the log once per form.
    fn candidates(&self, crashed: bool) -> Vec<Candidate> {
        let newest = self.states.len() - 1;
        let mut out = Vec::new();
        if let Some(pending) = &self.pending {
            let call = || Some(pending.clone());
            out.push(Candidate { base: newest, call: call(), form: Form::Whole });
            for n in (1..=pending.partial_len()).rev() {
                out.push(Candidate { base: newest, call: call(), form: Form::Prefix(n) });
            }
        }
        let oldest = if crashed { self.durable } else { newest };
        for k in (oldest..=newest).rev() {
            out.push(Candidate { base: k, call: None, form: Form::State });
            if k > oldest {
                let call = &self.calls[k - 1];
                for n in (1..=call.partial_len()).rev() {
                    out.push(Candidate {
                        base: k - 1,
                        call: Some(call.clone()),
                        form: Form::Prefix(n),
                    });
                }
            }
        }
        out
    }

    /// The model `candidate` describes; `None` if its call cannot apply there (the model
    /// refuses it), so that no restart can recover it.
    fn model(&self, candidate: &Candidate) -> Option<std::borrow::Cow<'_, MemoryStorage>> {
        use std::borrow::Cow;
        let base = &self.states[candidate.base];
        match (&candidate.form, &candidate.call) {
            (Form::State, _) => Some(Cow::Borrowed(base)),
            (Form::Whole, Some(call)) => {
                let model = base.clone();
                call.apply_model(&model).is_ok().then_some(Cow::Owned(model))
            }
            (Form::Prefix(n), Some(call)) => call.partial_model(base, *n).map(Cow::Owned),
            (_, None) => unreachable!("only a whole state comes without a call"),
        }
    }

    /// Makes the recovered candidate (with its model) the current state.
    fn adopt(&mut self, recovered: Candidate, model: MemoryStorage) {
        self.states.truncate(recovered.base + 1);
        self.calls.truncate(recovered.base);
        self.pending = None;
        if let Some(call) = recovered.call {
            // Part (or all) of a call that was not acknowledged: one more step, not durable.
            self.push(call, model);
        }
    }
}

/// Which form of a call a candidate takes.
enum Form {
    /// The history state itself.
    State,
    /// The call wholly applied.
    Whole,
    /// The first `n` entries of the call's batch.
    Prefix(usize),
}

/// A state a restart may recover.
struct Candidate {
    /// The history state it is, or builds on.
    base: usize,
    /// The call, partly or wholly done, that leads from `states[base]` to it.
    call: Option<Call>,
    form: Form,
}

impl Candidate {
    fn describe(&self) -> String {
        match &self.call {
            None => format!("after {} calls", self.base),
            Some(call) => format!("after {} calls and (part of) {call:?}", self.base),
        }
    }
}

/// Whether an error is what an injected fault may cause (rather than a finding).
fn fault_error(e: &Error) -> bool {
    matches!(e, Error::Io(_) | Error::Poisoned)
}

struct Recovery {
    fs: CrashFs,
    options: WalOptions,
    always: bool,
    storage: Option<WalStorage>,
    history: History,
    /// Faults armed since the last clean restart (a fault may also fire in recovery itself).
    armed: usize,
    /// An operation failed since the last restart: the page cache can no longer be trusted to
    /// match the disk (after a failed fsync Linux keeps pages it never wrote), so the next
    /// restart is a power cut, as an operator's would be.
    failed: bool,
    /// Print every step to stderr (`RAFTWAL_FUZZ_TRACE=1`, or `ops` for every file system
    /// operation too), to read a finding.
    trace: bool,
}

impl Recovery {
    fn mutate(&mut self, call: Call, step: usize) {
        let Some(storage) = self.storage.as_ref() else {
            return;
        };
        let next = self.history.current().clone();
        let want = call.apply_model(&next);
        let halted_before = self.fs.is_halted();
        let result = call.apply_wal(storage);
        if self.trace {
            let shown = result.as_ref().map(|s| s.as_ref().map(|s| &s.metadata));
            eprintln!("step {step}: {call:?} -> {shown:?} (model {want:?})");
        }
        if halted_before {
            // The simulated process is dead: nothing it does reaches the disk, and what it
            // answers from memory (which may show the write that failed, or refuse a call
            // because of it) reaches no one. The next restart checks what is left.
            self.failed = true;
            return;
        }
        match result {
            Ok(snapshot) => {
                assert_eq!(
                    Outcome::Ok(snapshot),
                    want,
                    "step {step}: {call:?} answered differently"
                );
                let syncs = call.syncs_everything();
                self.history.push(call, next);
                if self.always || syncs {
                    self.history.durable = self.history.states.len() - 1;
                }
            }
            Err(e) if fault_error(&e) => {
                assert!(self.armed > 0, "step {step}: {call:?} failed with no fault armed: {e}");
                self.failed = true;
                if matches!(e, Error::Poisoned) {
                    // Refused before any I/O: an earlier failure stopped the log.
                    return;
                }
                if !want.is_ok() || self.fs.is_halted() {
                    // Refused by the rules anyway, or the process is "dead": nothing to learn
                    // from the live state. A halted write may still have reached the disk.
                    if want.is_ok() {
                        self.history.pending = Some(call);
                    }
                    return;
                }
                // The live storage says whether the call took effect in memory (unless a halt
                // fires while it is asked: then either may be true).
                if answers_like(&next, storage) {
                    self.history.push(call, next);
                    return;
                }
                let before = same_answers(self.history.current(), storage);
                if let Err(difference) = before
                    && !self.fs.is_halted()
                {
                    panic!(
                        "step {step}: after {call:?} failed with {e}, the storage is neither \
                         before nor after it: {difference}"
                    );
                }
                self.history.pending = Some(call);
            }
            Err(e) => {
                assert_eq!(
                    Outcome::from(Err::<Option<crate::Snapshot>, _>(e)),
                    want,
                    "step {step}: {call:?}"
                );
            }
        }
    }

    fn sync(&mut self, step: usize) {
        let Some(storage) = self.storage.as_ref() else {
            return;
        };
        let result = storage.sync();
        if self.trace {
            eprintln!("step {step}: sync -> {result:?}");
        }
        match result {
            Ok(()) => self.history.durable = self.history.states.len() - 1,
            Err(e) => {
                assert!(
                    fault_error(&e) && self.armed > 0,
                    "step {step}: sync failed with no fault armed: {e}"
                );
                self.failed = true;
            }
        }
    }

    /// Closes the storage and opens it again, through a power cut when `seed` is given or a
    /// failure makes the page cache untrustworthy; then checks what was recovered (every answer
    /// with `every_answer`, else what it holds: see [`Recovery::check_recovered`]).
    fn restart(&mut self, seed: Option<u64>, step: usize, every_answer: bool) {
        drop(self.storage.take());
        if self.trace {
            eprintln!(
                "step {step}: restart (seed {seed:?}, failed {}, halted {})",
                self.failed,
                self.fs.is_halted()
            );
        }
        let mut crashed = seed.is_some() || self.failed || self.fs.is_halted();
        let seed = seed.unwrap_or(step as u64);
        // Bounded: a halt fires once, and the second attempt runs with every fault disarmed.
        for attempt in 0..2u64 {
            if crashed {
                self.fs.crash(seed.wrapping_add(attempt));
            }
            if attempt > 0 {
                self.fs.clear_faults();
                self.armed = 0;
            }
            let storage = match open(&self.fs, &self.options) {
                Ok(storage) => storage,
                Err(e) => {
                    // A fault armed earlier may fire during recovery: that open fails, the
                    // machine goes down again, and the next open (no fault left) must succeed.
                    assert!(
                        self.armed > 0 && fault_error(&e),
                        "step {step}: reopen failed with no fault armed: {e}"
                    );
                    crashed = true;
                    continue;
                }
            };
            self.failed = false;
            match self.check_recovered(&storage, crashed, every_answer) {
                Ok(()) => {
                    self.storage = Some(storage);
                    return;
                }
                // A halt fired while the recovered state was read: the process "died" again.
                Err(_) if self.fs.is_halted() => crashed = true,
                Err(differences) => panic!("step {step}: {differences}"),
            }
        }
        panic!("step {step}: the storage does not open, or reads fail, with every fault disarmed");
    }

    /// Adopts the allowed state the recovered storage holds, or describes why none fits. With
    /// `every_answer`, the storage must then also answer every range and limit of
    /// [`same_answers`] as that state does. The last restart of every input asks that; the
    /// others ask only what the storage holds (indices, hard state, snapshot, every term and the
    /// whole log), which is what tells the candidates apart: the state after any restart is the
    /// state the final restart checks fully when the fuzzer runs the input cut there, as it
    /// does all the time, while asking every range at every restart made most of a run's cost.
    fn check_recovered(
        &mut self,
        storage: &WalStorage,
        crashed: bool,
        every_answer: bool,
    ) -> Result<(), String> {
        let candidates = self.history.candidates(crashed);
        for (k, candidate) in candidates.iter().enumerate() {
            let Some(model) = self.history.model(candidate) else {
                continue;
            };
            if holds_like(&model, storage) {
                if every_answer && let Err(difference) = same_answers(&model, storage) {
                    return Err(format!(
                        "the recovered storage holds the state {} but answers differently: \
                         {difference}",
                        candidate.describe()
                    ));
                }
                let model = model.into_owned();
                if self.trace {
                    eprintln!("recovered {} (crashed {crashed})", candidate.describe());
                }
                let candidate = candidates.into_iter().nth(k).expect("the k-th candidate");
                self.history.adopt(candidate, model);
                return Ok(());
            }
        }
        // None fits: ask again, describing each difference.
        let differences: Vec<String> = candidates
            .iter()
            .filter_map(|candidate| {
                let model = self.history.model(candidate)?;
                let difference = same_answers(&model, storage).err()?;
                Some(format!("{}: {difference}", candidate.describe()))
            })
            .collect();
        Err(format!(
            "the recovered storage matches no allowed state ({} calls, durable from {}, crashed \
             {crashed}):\n{}",
            self.history.calls.len(),
            self.history.durable,
            differences.join("\n")
        ))
    }
}

/// Drives WalStorage over CrashFs with `case` (saves, compactions, snapshots, syncs, clean
/// reopens, power cuts and injected faults), a MemoryStorage model beside it. After every
/// restart the recovered storage must answer exactly like the model in one of the allowed states:
/// every acknowledged-durable call present, nothing that was never written, at most one call
/// in flight or unsynced calls beyond the durable point. Panics on anything else.
pub fn check_recovery(case: &RecoveryCase) {
    let policy = if case.sync_never { SyncPolicy::Never } else { SyncPolicy::Always };
    let options = recovery_options(policy);
    let fs = CrashFs::new();
    let trace = super::trace_level();
    if trace == super::Trace::Ops {
        super::trace_operations(&fs);
    }
    let storage = open(&fs, &options).expect("a fresh storage opens");
    let mut run = Recovery {
        fs,
        options,
        always: !case.sync_never,
        storage: Some(storage),
        history: History {
            states: vec![MemoryStorage::new()],
            calls: Vec::new(),
            durable: 0,
            pending: None,
        },
        armed: 0,
        failed: false,
        trace: trace != super::Trace::Off,
    };
    let mut faults = 0;
    for (step, op) in case.ops.iter().take(MAX_OPS).enumerate() {
        match op {
            RecoveryOp::Storage(op) => match resolve(op, run.history.current(), step) {
                Some(call) => run.mutate(call, step),
                None => run.restart(None, step, false),
            },
            RecoveryOp::Sync => run.sync(step),
            RecoveryOp::Crash { seed } => run.restart(Some(*seed), step, false),
            RecoveryOp::Fault { after, kind } => {
                if faults < MAX_FAULTS {
                    faults += 1;
                    run.armed += 1;
                    let at_op = run.fs.op_count() + u64::from(after % 64);
                    run.fs.inject(Fault { at_op, kind: kind.kind() });
                }
            }
        }
    }
    // A final power cut, with every fault disarmed: the last word is recovery's.
    run.fs.clear_faults();
    run.restart(Some(u64::MAX), MAX_OPS, true);
}
