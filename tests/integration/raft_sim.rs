//! A deterministic, seeded simulation of Raft clusters serving a tiny key-value store.
//!
//! Three- and five-node clusters run under a network that drops, duplicates, delays and
//! reorders messages and partitions nodes, while nodes crash and restart from their storage,
//! snapshot and compact their logs, leadership moves, membership
//! changes (add, remove, demote, promote, joint consensus with automatic and explicit leave),
//! and clients issue put, get and compare-and-swap through the log and reads through
//! `read_index`. After every step the invariants are checked:
//!
//! - election safety: at most one leader per term, ever;
//! - state machine safety: an index, once applied anywhere, holds the same entry everywhere
//!   it is ever applied (committed entries never change), and each node applies indices in
//!   order without gaps (except a snapshot jump), so applied sequences are identical;
//! - log matching on the committed prefix: every node's stored entries at or below its commit
//!   index equal the applied ones;
//! - leader completeness: a leader of a term above the cluster's highest term at the time an
//!   entry was first applied holds that entry;
//! - results: every node computes the same result for the same operation;
//! - linearizability: at the end of each run, the history of client operations (puts,
//!   compare-and-swaps and reads through the log, reads through `read_index`) is checked
//!   key by key with a Wing-Gong-Lowe search against a register model.
//!
//! Each seed also picks the options (check-quorum, pre-vote, step-down on removal) and the
//! limits (entries per append, inflight count and bytes, committed bytes per Ready,
//! uncommitted bytes), and the storage ([`Backend`]): most seeds run every node on its own
//! `WalStorage` over a `CrashFs` with small segments, so that rollovers, compaction and segment
//! release happen, and with one of three sync modes (`SyncPolicy::Always`; `Always` with
//! etcd's MustSync rule; `SyncPolicy::Never` with an explicit `sync()` when the Ready's
//! `must_sync` asks for it, before its messages go out). A crash there is a power cut: the
//! process's handles are dropped, `CrashFs::crash` keeps, loses or tears each unsynced write,
//! and the node reopens `WalStorage` from what survived; a crash may also strike in the
//! middle of a Ready, after its writes and before their sync and its messages. The state
//! machine restarts as etcd's does: from the storage's newest snapshot, re-applying the
//! committed entries after it. One seed in four runs on `MemoryStorage`, where a crash loses
//! only the process's memory.
//!
//! A power cut may also damage the node's disk (`Sim::damage`): a bit flips inside a record
//! of its log, or a sealed segment is deleted. Nodes open with `RecoveryMode::Repairable`,
//! which cuts the log at the damage and reports a repair state; the node then neither votes
//! nor campaigns until a leader has given back what it lost, and the application ends the
//! storage's repair once the core's is over. Damage is done only while the healthy voters
//! stay a majority of every configuration, and the checks add: a repairing node is a
//! follower and grants no vote or pre-vote, and at the end every damaged node has repaired.
//!
//! At the end the network heals, every node restarts, and the cluster must elect a leader,
//! bring every node back as a voter and commit a final operation on every node (liveness under
//! good conditions), and every damaged node must have repaired.
//!
//! `RAFTWAL_SIM_SEEDS=n` runs n seeds (default 200), from `RAFTWAL_SIM_FIRST_SEED` (default
//! 0); `RAFTWAL_SIM_SEED=s` replays one seed;
//! `RAFTWAL_SIM_DEBUG=1` prints role changes, membership changes, applied operations and
//! confirmed reads as they happen.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;

use bytes::Bytes;
use raftwal::io::{CrashFs, FileSystem};
use raftwal::raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Config,
    Message, MessageType, RawNode, SnapshotStatus, StateRole,
};
use raftwal::rng::Rng;
use raftwal::storage::WAL_DIR;
use raftwal::wal::format::{self, FRAME_HEADER_LEN, FrameHeader};
use raftwal::wal::recovery::scan_segment;
use raftwal::{
    ConfState, CorruptionKind, Entry, EntryType, Error, HardState, MemoryStorage, RaftState,
    RecoveryMode, RepairState, Snapshot, SnapshotMetadata, Storage, SyncPolicy, WalOptions,
    WalStorage,
};

use super::sim_common::{HistOp, Kv, MAX_OPS_PER_KEY, Op, linearizable};

/// Steps of random faults per seed.
const FAULT_STEPS: usize = 300;
/// Limit on steps of calm to reach the final state. Most seeds need a few dozen; without
/// pre-vote, candidates with stale logs and split votes can take a few hundred.
const CALM_STEPS: usize = 1000;
/// Committed entries per node re-read from storage at every step.
const RECENT_CHECKED: u64 = 8;
/// Limit on ready/deliver rounds within one step.
const MAX_ROUNDS_PER_STEP: usize = 64;
/// Limit on messages held by the network; beyond it new messages are dropped.
const MAX_IN_FLIGHT: usize = 4096;

/// Where a seed's nodes keep their state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// `MemoryStorage`: a crash loses the process, never what was persisted.
    Memory,
    /// `WalStorage` over a `CrashFs` per node: a crash loses or tears unsynced writes.
    Wal(SyncMode),
}

/// How a durable node makes a Ready durable before sending its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncMode {
    /// `SyncPolicy::Always`: every save is synced.
    Always,
    /// `SyncPolicy::Always` with `must_sync_rule`: a save that changes only the commit index
    /// is not synced.
    AlwaysMustSyncRule,
    /// `SyncPolicy::Never`, and an explicit `sync()` when the Ready's `must_sync` is set.
    NeverExplicitSync,
}

/// Segment size of the simulated logs: small, so that a run rolls over and releases segments.
const SIM_SEGMENT_BYTES: u64 = 4096;

/// The backend of a seed: three seeds in four on `WalStorage` (one of the three sync modes),
/// one on `MemoryStorage`.
fn backend(seed: u64) -> Backend {
    let b = Rng::new(seed ^ 0x0005_70DE).next_u64();
    match b % 4 {
        0 => Backend::Memory,
        1 => Backend::Wal(SyncMode::Always),
        2 => Backend::Wal(SyncMode::AlwaysMustSyncRule),
        _ => Backend::Wal(SyncMode::NeverExplicitSync),
    }
}

/// Largest record payload of the simulated logs.
const SIM_MAX_RECORD_BYTES: u32 = 2048;

/// Whether a durable seed's nodes read sealed segments through their footers at open (half the
/// seeds; the others read every segment whole, so that damage anywhere is found at open).
fn reads_footers(seed: u64) -> bool {
    Rng::new(seed ^ 0xF007_E125).next_u64() & 1 == 1
}

fn wal_options(mode: SyncMode, read_footers: bool) -> WalOptions {
    WalOptions {
        segment_size_bytes: SIM_SEGMENT_BYTES,
        max_record_bytes: SIM_MAX_RECORD_BYTES,
        sync_policy: match mode {
            SyncMode::Always | SyncMode::AlwaysMustSyncRule => SyncPolicy::Always,
            SyncMode::NeverExplicitSync => SyncPolicy::Never,
        },
        must_sync_rule: mode == SyncMode::AlwaysMustSyncRule,
        cache_bytes: 2048,
        prepare_in_background: false,
        snapshot_retention: 2,
        // Damage to a node's log is cut and repaired from its peers (see `Sim::damage`).
        recovery_mode: RecoveryMode::Repairable,
        read_footers,
        ..WalOptions::default()
    }
}

/// A node's storage, one of the backends.
#[derive(Debug)]
enum SimStore {
    Memory(Box<MemoryStorage>),
    Wal(Box<WalStorage>),
}

impl SimStore {
    fn hard_state(&self) -> HardState {
        match self {
            SimStore::Memory(s) => s.hard_state(),
            SimStore::Wal(s) => s.wal().hard_state(),
        }
    }

    fn apply_snapshot(&self, snapshot: Snapshot) {
        match self {
            SimStore::Memory(s) => s.apply_snapshot(snapshot),
            SimStore::Wal(s) => s.apply_snapshot(snapshot),
        }
        .unwrap()
    }

    /// Writes a Ready's entries and hard state, as one save on `WalStorage`.
    fn save(&self, hard_state: Option<HardState>, entries: &[Entry]) {
        match self {
            SimStore::Memory(s) => {
                s.append(entries).unwrap();
                if let Some(hs) = hard_state {
                    s.set_hard_state(hs).unwrap();
                }
            }
            SimStore::Wal(s) => s.save(hard_state.as_ref(), entries).unwrap(),
        }
    }

    fn sync(&self) {
        if let SimStore::Wal(s) = self {
            s.sync().unwrap();
        }
    }

    fn create_snapshot(&self, index: u64, cs: ConfState, data: Bytes) {
        match self {
            SimStore::Memory(s) => s.create_snapshot(index, Some(cs), data).map(|_| ()),
            SimStore::Wal(s) => s.create_snapshot(index, Some(cs), data).map(|_| ()),
        }
        .unwrap()
    }

    fn compact(&self, index: u64) {
        match self {
            SimStore::Memory(s) => s.compact(index),
            SimStore::Wal(s) => s.compact(index),
        }
        .unwrap()
    }

    fn repairing(&self) -> Option<RepairState> {
        self.repair_state().unwrap()
    }

    /// Ends the storage's repair once the core holds it done, as an application does.
    fn clear_repair(&self) {
        match self {
            SimStore::Memory(_) => unreachable!("MemoryStorage never repairs"),
            SimStore::Wal(s) => s.clear_repair().unwrap(),
        }
    }
}

impl Storage for SimStore {
    fn initial_state(&self) -> raftwal::Result<RaftState> {
        match self {
            SimStore::Memory(s) => s.initial_state(),
            SimStore::Wal(s) => s.initial_state(),
        }
    }
    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> raftwal::Result<Vec<Entry>> {
        match self {
            SimStore::Memory(s) => s.entries(lo, hi, max_size),
            SimStore::Wal(s) => s.entries(lo, hi, max_size),
        }
    }
    fn term(&self, index: u64) -> raftwal::Result<u64> {
        match self {
            SimStore::Memory(s) => s.term(index),
            SimStore::Wal(s) => s.term(index),
        }
    }
    fn first_index(&self) -> raftwal::Result<u64> {
        match self {
            SimStore::Memory(s) => s.first_index(),
            SimStore::Wal(s) => s.first_index(),
        }
    }
    fn last_index(&self) -> raftwal::Result<u64> {
        match self {
            SimStore::Memory(s) => s.last_index(),
            SimStore::Wal(s) => s.last_index(),
        }
    }
    fn snapshot(&self) -> raftwal::Result<Snapshot> {
        match self {
            SimStore::Memory(s) => s.snapshot(),
            SimStore::Wal(s) => s.snapshot(),
        }
    }
    fn repair_state(&self) -> raftwal::Result<Option<RepairState>> {
        match self {
            SimStore::Memory(s) => s.repair_state(),
            SimStore::Wal(s) => s.repair_state(),
        }
    }
}

/// The directory of every node's log on its own `CrashFs`.
fn node_dir() -> std::path::PathBuf {
    std::path::PathBuf::from("/node")
}

/// A node's storage, new (`Memory`) or opened from what its file system holds.
fn open_store(backend: Backend, fs: &CrashFs, read_footers: bool) -> SimStore {
    try_open_store(backend, fs, read_footers)
        .unwrap_or_else(|e| panic!("reopening the node's WalStorage failed: {e}"))
}

fn try_open_store(backend: Backend, fs: &CrashFs, read_footers: bool) -> raftwal::Result<SimStore> {
    Ok(match backend {
        Backend::Memory => SimStore::Memory(Box::default()),
        Backend::Wal(mode) => SimStore::Wal(Box::new(WalStorage::open_with_fs(
            Arc::new(fs.clone()),
            &node_dir(),
            wal_options(mode, read_footers),
        )?)),
    })
}

/// Percent of a durable node's power cuts that also damage its log (when the cluster can
/// afford it, see `Sim::may_damage`).
const DAMAGE_PERCENT: u64 = 25;
/// Percent of damage events that delete a whole sealed segment rather than flip a bit.
const DELETE_PERCENT: u64 = 25;
/// Limit on targets tried for one damage event (a target whose damage the open refuses is
/// replaced by another).
const DAMAGE_ATTEMPTS: usize = 4;

/// Damage to a node's durable log, done at a power cut before the node restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Damage {
    /// Bit `bit` of the file flips, inside the payload of a valid record.
    Flip { segment: String, bit: u64 },
    /// A sealed segment (not the newest) is gone.
    Delete { segment: String },
}

/// Picks damage to the log in `fs`, or None when there is nothing to damage.
fn pick_damage(fs: &CrashFs, rng: &mut Rng, read_footers: bool) -> Option<Damage> {
    let dir = node_dir().join(WAL_DIR);
    let mut segments: Vec<String> = fs
        .list(&dir)
        .unwrap()
        .into_iter()
        .filter(|name| format::parse_segment_name(name).is_some())
        .collect();
    segments.sort();
    let (newest, sealed) = segments.split_last()?;
    if !sealed.is_empty() && rng.chance(DELETE_PERCENT) {
        let segment = sealed[rng.below(sealed.len() as u64) as usize].clone();
        return Some(Damage::Delete { segment });
    }
    // Read through its footer, a sealed segment's records are not checked at open (their
    // CRCs are when an entry is read, an error the Raft core treats as fatal): with footers
    // on, only the newest segment, always read whole, takes flips.
    let targets = if read_footers { std::slice::from_ref(newest) } else { &segments[..] };
    let segment = targets[rng.below(targets.len() as u64) as usize].clone();
    let bytes = fs.read_file(&dir.join(&segment)).unwrap();
    let records = scan_segment(&bytes, SIM_MAX_RECORD_BYTES).records;
    // A segment's checkpoint is a target like any other record: the segment before it, kept
    // for that reason, holds the second copy of every term and vote it restates.
    // In the newest segment, only a record that a later record proves durable (its `durable`
    // field reaches past it) can be told from a torn write: damage to the others is cut as a
    // torn tail (rows R3, R4) with no repair state, and the node forgets entries it may have
    // acknowledged (a limit of the library: nothing on disk tells a synced last write from an
    // unsynced one). The simulator spares them.
    let durable_after = |k: usize| {
        records[k + 1..]
            .iter()
            .map(|r| FrameHeader::read(&bytes[r.offset as usize..]).durable)
            .max()
            .unwrap_or(0)
    };
    let newest_chosen = &segment == newest;
    let payloads: Vec<(u64, u64)> = (0..records.len())
        .filter(|k| {
            !newest_chosen || durable_after(*k) >= records[*k].offset + records[*k].framed_len
        })
        .map(|k| &records[k])
        .map(|r| {
            let len = FrameHeader::read(&bytes[r.offset as usize..]).len;
            (r.offset + FRAME_HEADER_LEN as u64, u64::from(len))
        })
        .filter(|(_, len)| *len > 0)
        .collect();
    if payloads.is_empty() {
        return None;
    }
    let (start, len) = payloads[rng.below(payloads.len() as u64) as usize];
    let bit = (start + rng.below(len)) * 8 + rng.below(8);
    Some(Damage::Flip { segment, bit })
}

/// Whether `store` holds a membership change after `applied`.
fn pending_conf_change(store: &SimStore, applied: u64) -> bool {
    let (first, last) = (store.first_index().unwrap(), store.last_index().unwrap());
    let lo = (applied + 1).max(first);
    lo <= last
        && store
            .entries(lo, last + 1, u64::MAX)
            .unwrap()
            .iter()
            .any(|e| matches!(e.entry_type, EntryType::ConfChange | EntryType::ConfChangeV2))
}

fn apply_damage(fs: &CrashFs, damage: &Damage) {
    let dir = node_dir().join(WAL_DIR);
    match damage {
        Damage::Flip { segment, bit } => fs.flip_bit(&dir.join(segment), *bit).unwrap(),
        Damage::Delete { segment } => {
            fs.remove_file(&dir.join(segment)).unwrap();
            fs.sync_dir(&dir).unwrap();
        }
    }
}

struct SimNode {
    raw: Option<RawNode<Arc<SimStore>>>,
    store: Arc<SimStore>,
    /// The node's disk (unused on `MemoryStorage`).
    fs: CrashFs,
    kv: Kv,
    conf_state: ConfState,
    /// Highest index applied by the state machine (or restored from a snapshot).
    applied: u64,
    /// Confirmed reads (op id, read index) waiting for the applied index to reach theirs.
    reads: Vec<(u64, u64)>,
}

struct InFlight {
    deliver_at: u64,
    msg: Message,
}

/// What the durable runs exercised, so that a sweep can tell it tested something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DurableStats {
    /// Power cuts of a node on `WalStorage`.
    crashes: usize,
    /// Power cuts after which the reopened storage held less than before (a shorter log or an
    /// older hard state): unsynced writes were lost.
    lossy_crashes: usize,
    /// The most segment files one node's log held at once.
    max_segments: usize,
    /// Power cuts that also flipped a bit in a record of the node's log.
    flips: usize,
    /// Power cuts that also deleted a sealed segment of the node's log.
    deletes: usize,
    /// Damage after which the reopened storage reported a repair state.
    repairs: usize,
    /// Damage targets the open refused (a vote may have been lost), replaced by another.
    refused: usize,
}

struct Sim {
    rng: Rng,
    seed: u64,
    backend: Backend,
    /// `WalOptions::read_footers` of the run's nodes.
    read_footers: bool,
    stats: DurableStats,
    now: u64,
    nodes: BTreeMap<u64, SimNode>,
    net: Vec<InFlight>,
    /// Groups that can talk; nodes in different groups cannot. Empty: fully connected.
    partition: BTreeMap<u64, u8>,
    /// Every applied index: (term, data), and the highest term in the cluster when first seen.
    committed: BTreeMap<u64, (u64, Bytes, u64)>,
    /// Leader of each term.
    leaders: BTreeMap<u64, u64>,
    /// Result of each operation, as the first node to apply it computed.
    results: BTreeMap<u64, String>,
    next_op: u64,
    /// Every client operation, by id.
    history: BTreeMap<u64, HistOp>,
    /// Logical clock of invocations and returns.
    clock: u64,
    /// What happened, for the failure message.
    trace: Vec<String>,
}

/// The configuration of every node of a run; the seed's bits vary the options and limits.
fn config(id: u64, seed: u64, applied: u64) -> Config {
    // Mixed so that a short range of seeds covers every combination.
    let b = Rng::new(seed ^ 0xC0_F1C0).next_u64();
    // One entry per append, a few, or many.
    let max_size_per_msg = [256, 0, 4096][((b >> 3) % 3) as usize];
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        applied,
        max_size_per_msg,
        max_inflight_msgs: [8, 1, 3][((b >> 5) % 3) as usize],
        max_inflight_bytes: if (b >> 7) & 1 == 1 { 4096 } else { 0 },
        max_committed_size_per_ready: if (b >> 8) & 1 == 1 { 1 } else { 0 },
        max_uncommitted_entries_size: if (b >> 9) & 1 == 1 { 64 } else { 0 },
        check_quorum: (b >> 1) & 1 == 0,
        pre_vote: !(b >> 10).is_multiple_of(3),
        step_down_on_removal: (b >> 2) & 1 == 1,
        seed,
        ..Config::default()
    }
}

impl Sim {
    fn new(seed: u64, size: u64) -> Sim {
        let ids: Vec<u64> = (1..=size).collect();
        let cs = ConfState { voters: ids.clone(), ..ConfState::default() };
        let mut nodes = BTreeMap::new();
        let backend = backend(seed);
        let read_footers = reads_footers(seed);
        for id in &ids {
            let fs = CrashFs::new();
            let store = Arc::new(open_store(backend, &fs, read_footers));
            // Every storage starts from an index-0 snapshot carrying the membership.
            store.apply_snapshot(Snapshot {
                metadata: SnapshotMetadata { conf_state: cs.clone(), ..Default::default() },
                data: Bytes::new(),
            });
            let raw = RawNode::new(&config(*id, seed, 0), store.clone()).unwrap();
            nodes.insert(
                *id,
                SimNode {
                    raw: Some(raw),
                    store,
                    fs,
                    kv: Kv::default(),
                    conf_state: cs.clone(),
                    applied: 0,
                    reads: Vec::new(),
                },
            );
        }
        Sim {
            rng: Rng::new(seed ^ 0x5EED),
            seed,
            backend,
            read_footers,
            stats: DurableStats::default(),
            now: 0,
            nodes,
            net: Vec::new(),
            partition: BTreeMap::new(),
            committed: BTreeMap::new(),
            leaders: BTreeMap::new(),
            results: BTreeMap::new(),
            next_op: 1,
            history: BTreeMap::new(),
            clock: 0,
            trace: Vec::new(),
        }
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn live(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.raw.is_some()).map(|(id, _)| *id).collect()
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        self.partition.get(&a).copied().unwrap_or(0) == self.partition.get(&b).copied().unwrap_or(0)
    }

    /// The highest persisted term. A leader persists its term before it sends the appends
    /// that commit anything, so an entry applied now was committed in a term at most this.
    fn max_term(&self) -> u64 {
        self.nodes.values().map(|n| n.store.hard_state().term).max().unwrap_or(0)
    }

    /// Handles one Ready of node `id`: persist, send, apply, advance.
    fn handle_ready(&mut self, id: u64, faults: bool) -> bool {
        let max_term = self.max_term();
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(raw) = node.raw.as_mut() else {
            return false;
        };
        if !raw.has_ready() {
            return false;
        }
        let rd = raw.ready();
        if std::env::var_os("RAFTWAL_SIM_DEBUG").is_some()
            && let Some(ss) = rd.soft_state
        {
            eprintln!("t{} node {id} soft {ss:?} term {}", self.now, raw.status().hard_state.term);
        }
        // 1. Persist: the snapshot, then entries and hard state in one save, then the sync
        //    the policy leaves to the application.
        if let Some(s) = &rd.snapshot {
            node.store.apply_snapshot(s.clone());
        }
        node.store.save(rd.hard_state, &rd.entries);
        if faults && self.backend != Backend::Memory && self.rng.chance(1) {
            // The process dies after writing and before syncing: nothing of this Ready was
            // sent or applied, and the power cut decides what of its writes survives.
            self.trace.push(format!("t{} crash {id} before syncing a Ready", self.now));
            self.crash(id, true);
            return true;
        }
        if self.backend == Backend::Wal(SyncMode::NeverExplicitSync) && rd.must_sync {
            node.store.sync();
        }
        // 2. Apply the snapshot to the state machine (the messages go out below, after the
        //    committed entries are applied: both only after step 1).
        if let Some(s) = &rd.snapshot {
            node.kv = Kv::decode(&s.data);
            node.conf_state = s.metadata.conf_state.clone();
            assert!(
                s.metadata.index >= node.applied,
                "node {id}: snapshot {} is behind applied {}",
                s.metadata.index,
                node.applied
            );
            node.applied = s.metadata.index;
        }
        let mut out = Vec::new();
        let repairing = raw.status().repairing;
        for m in &rd.messages {
            // A node whose log is short of what it acknowledged grants no vote: the repair
            // ends only at an advance, so a grant in this Ready was made while repairing.
            let vote = matches!(m.msg_type, MessageType::MsgVoteResp | MessageType::MsgPreVoteResp);
            assert!(
                !(vote && !m.reject && repairing.is_some()),
                "node {id} grants {:?} to {} in term {} while repairing {repairing:?}",
                m.msg_type,
                m.to,
                m.term
            );
            out.push(Message::decode(&m.encode()).unwrap());
        }
        for rs in &rd.read_states {
            let op_id: u64 = std::str::from_utf8(&rs.request_ctx).unwrap().parse().unwrap();
            node.reads.push((op_id, rs.index));
            if std::env::var_os("RAFTWAL_SIM_DEBUG").is_some() {
                eprintln!(
                    "t{} node {id} read {op_id} confirmed at index {} (applied {}, commit {})",
                    self.now,
                    rs.index,
                    node.applied,
                    raw.status().hard_state.commit
                );
            }
        }
        let mut returned: Vec<(u64, String)> = Vec::new();
        let mut applied_now = Vec::new();
        for e in &rd.committed_entries {
            assert_eq!(
                e.index,
                node.applied + 1,
                "node {id}: applied {} then {}: a gap",
                node.applied,
                e.index
            );
            node.applied = e.index;
            applied_now.push(e.clone());
            match e.entry_type {
                EntryType::Normal if !e.data.is_empty() => {
                    let (op_id, op) = Op::decode(&e.data);
                    if let Some(result) = node.kv.apply(op_id, &op) {
                        match self.results.get(&op_id) {
                            Some(r) => assert_eq!(
                                r, &result,
                                "node {id}: op {op_id} gave a different result"
                            ),
                            None => {
                                if std::env::var_os("RAFTWAL_SIM_DEBUG").is_some() {
                                    eprintln!(
                                        "t{} node {id} applies op {op_id} {op:?} at index {} term {}",
                                        self.now, e.index, e.term
                                    );
                                }
                                self.results.insert(op_id, result.clone());
                                returned.push((op_id, result));
                            }
                        }
                    }
                }
                EntryType::Normal => {}
                EntryType::ConfChange => {
                    let cc = ConfChange::decode(&e.data).unwrap();
                    node.conf_state = raw.apply_conf_change(&cc);
                    if std::env::var_os("RAFTWAL_SIM_DEBUG").is_some() {
                        eprintln!(
                            "t{} node {id} applies {cc:?} at {} -> {:?}",
                            self.now, e.index, node.conf_state
                        );
                    }
                }
                EntryType::ConfChangeV2 => {
                    let cc = ConfChangeV2::decode(&e.data).unwrap();
                    node.conf_state = raw.apply_conf_change(&cc);
                    if std::env::var_os("RAFTWAL_SIM_DEBUG").is_some() {
                        eprintln!(
                            "t{} node {id} applies {cc:?} at {} -> {:?}",
                            self.now, e.index, node.conf_state
                        );
                    }
                }
            }
        }
        raw.advance(rd);
        // Once the core holds the repair done, the application ends the storage's too (a
        // repair of unknown extent ends only so).
        if node.store.repairing().is_some() && raw.status().repairing.is_none() {
            self.trace.push(format!("t{} node {id} repaired", self.now));
            node.store.clear_repair();
        }
        // Serve the reads whose index is applied, from this node's state machine.
        let applied = node.applied;
        let kv = &node.kv;
        let history = &self.history;
        node.reads.retain(|(op_id, index)| {
            if *index > applied {
                return true;
            }
            if let Some(Op::Read(k)) = history.get(op_id).map(|h| &h.op) {
                returned.push((*op_id, kv.data.get(k).cloned().unwrap_or_default()));
            }
            false
        });
        for (op_id, result) in returned {
            self.clock += 1;
            if let Some(h) = self.history.get_mut(&op_id)
                && h.ret.is_none()
            {
                h.ret = Some(self.clock);
                h.result = Some(result);
            }
        }
        for e in applied_now {
            match self.committed.get(&e.index) {
                Some((term, data, _)) => {
                    assert!(
                        *term == e.term && *data == e.data,
                        "node {id} applied index {} term {} but term {} was applied before",
                        e.index,
                        e.term,
                        term
                    );
                }
                None => {
                    self.committed.insert(e.index, (e.term, e.data.clone(), max_term));
                }
            }
        }
        for m in out {
            self.send(m, faults);
        }
        true
    }

    fn send(&mut self, m: Message, faults: bool) {
        if self.net.len() >= MAX_IN_FLIGHT {
            return;
        }
        let (drop, dup, delay) = if faults {
            (self.rng.chance(5), self.rng.chance(3), self.rng.below(4))
        } else {
            (false, false, self.rng.below(2))
        };
        if drop {
            self.snapshot_outcome(&m, false);
            return;
        }
        if dup {
            let delay2 = self.rng.below(6);
            self.net.push(InFlight { deliver_at: self.now + delay2, msg: m.clone() });
        }
        self.net.push(InFlight { deliver_at: self.now + delay, msg: m });
    }

    /// The transport tells a snapshot's sender how sending went.
    fn snapshot_outcome(&mut self, m: &Message, ok: bool) {
        if m.msg_type != MessageType::MsgSnap {
            return;
        }
        if let Some(raw) = self.nodes.get_mut(&m.from).and_then(|n| n.raw.as_mut()) {
            let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
            raw.report_snapshot(m.to, status);
        }
    }

    /// Delivers due messages in random order.
    fn deliver(&mut self) {
        let mut due: Vec<InFlight> = Vec::new();
        let mut later = Vec::new();
        for f in self.net.drain(..) {
            if f.deliver_at <= self.now {
                due.push(f);
            } else {
                later.push(f);
            }
        }
        self.net = later;
        // Fisher-Yates shuffle: reordering.
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        for f in due {
            let m = f.msg;
            let ok = self.connected(m.from, m.to)
                && self.nodes.get(&m.to).is_some_and(|n| n.raw.is_some());
            if !ok {
                self.snapshot_outcome(&m, false);
                continue;
            }
            let raw = self.nodes.get_mut(&m.to).unwrap().raw.as_mut().unwrap();
            let snap = m.clone();
            let _ = raw.step(m);
            self.snapshot_outcome(&snap, true);
        }
    }

    fn settle(&mut self, faults: bool) {
        for _ in 0..MAX_ROUNDS_PER_STEP {
            let mut busy = false;
            for id in self.live() {
                busy |= self.handle_ready(id, faults);
            }
            if !busy {
                break;
            }
            // Zero-delay messages go out within the step.
            self.deliver();
        }
    }

    /// The node's process dies; on `WalStorage` its machine loses power too: the unsynced
    /// writes are kept, lost or torn (chosen by the run's generator), and the storage is reopened
    /// from what survived, as the restarted process will find it. With `damage`, the power cut
    /// may also damage durable bytes of the node's log (see [`Sim::damage`]).
    fn crash(&mut self, id: u64, damage: bool) {
        self.trace.push(format!("t{} crash {id}", self.now));
        let backend = self.backend;
        let crash_seed = self.rng.next_u64();
        let n = self.nodes.get_mut(&id).unwrap();
        n.raw = None;
        if backend != Backend::Memory {
            // The process's handles go with it (nothing else holds the storage now).
            assert_eq!(Arc::strong_count(&n.store), 1, "node {id}: storage still shared");
            let before = (n.store.last_index().unwrap(), n.store.hard_state());
            let own_change = damage && pending_conf_change(&n.store, n.applied);
            n.store = Arc::new(SimStore::Memory(Box::default()));
            n.fs.crash(crash_seed);
            let damaged = damage
                && self.rng.chance(DAMAGE_PERCENT)
                && self.may_damage(id, own_change)
                && self.damage(id);
            let n = self.nodes.get_mut(&id).unwrap();
            if !damaged {
                n.store = Arc::new(open_store(backend, &n.fs, self.read_footers));
            }
            let after = (n.store.last_index().unwrap(), n.store.hard_state());
            if std::env::var_os("RAFTWAL_SIM_DEBUG").is_some() {
                eprintln!(
                    "t{} node {id} power cut: (last index, hard state) {before:?} -> {after:?}, \
                     snapshot {}",
                    self.now,
                    n.store.snapshot().unwrap().metadata.index
                );
            }
            self.stats.crashes += 1;
            if after != before {
                self.stats.lossy_crashes += 1;
            }
        }
        // In-flight messages to it are lost with it.
        self.net.retain(|f| f.msg.to != id);
    }

    /// Whether node `id` may be damaged now: the nodes repairing, it included, must leave a
    /// majority of healthy voters in the smallest voter set in use. Repairing nodes grant no
    /// vote, so without a healthy majority of a configuration no election succeeds and, once
    /// its leader is gone, nothing repairs them. The voter set must not shrink below that
    /// while a node repairs: `random_membership_change` removes no healthy voter then, and no
    /// log may hold an unapplied membership change (`own_change`: whether node `id`'s log held
    /// one before its power cut).
    fn may_damage(&self, id: u64, own_change: bool) -> bool {
        let repairing = self
            .nodes
            .iter()
            .filter(|(other, n)| **other != id && n.store.repairing().is_some())
            .count();
        let smallest = self
            .nodes
            .values()
            .flat_map(|n| [n.conf_state.voters.len(), n.conf_state.voters_outgoing.len()])
            .filter(|len| *len > 0)
            .min()
            .unwrap_or(self.nodes.len());
        let changing = self
            .nodes
            .iter()
            .any(|(other, n)| *other != id && pending_conf_change(&n.store, n.applied));
        // The healthy voters, without this node, must remain a majority of every voter set.
        repairing < (smallest - 1) / 2 && !changing && !own_change
    }

    /// Damages node `id`'s log, just after its power cut: a bit flips inside the payload of
    /// a record, or a sealed segment is deleted. The
    /// node's storage is reopened from the damaged disk, with `RecoveryMode::Repairable`: it
    /// cuts the log at the damage and reports a repair state until the log holds again what
    /// it had. Returns whether the damage was done (the storage is then open); false leaves
    /// the disk as the power cut left it.
    fn damage(&mut self, id: u64) -> bool {
        let backend = self.backend;
        // Bounded: each attempt picks a new target.
        for _ in 0..DAMAGE_ATTEMPTS {
            let fs = &self.nodes[&id].fs;
            let Some(damage) = pick_damage(fs, &mut self.rng, self.read_footers) else {
                return false;
            };
            // Tried on a copy, so that a refused open leaves the node's disk untouched (the
            // power cut made everything durable: the copy is the whole disk).
            let trial = fs.power_cut_copy();
            apply_damage(&trial, &damage);
            match try_open_store(backend, &trial, self.read_footers) {
                Ok(store) => {
                    self.trace.push(format!("t{} damage {id}: {damage:?}", self.now));
                    match damage {
                        Damage::Flip { .. } => self.stats.flips += 1,
                        Damage::Delete { .. } => self.stats.deletes += 1,
                    }
                    if store.repairing().is_some() {
                        self.stats.repairs += 1;
                    }
                    if std::env::var_os("RAFTWAL_SIM_DEBUG").is_some() {
                        eprintln!(
                            "t{} node {id} damage {damage:?}: last index {}, repair {:?}",
                            self.now,
                            store.last_index().unwrap(),
                            store.repairing()
                        );
                    }
                    let n = self.nodes.get_mut(&id).unwrap();
                    n.fs = trial;
                    n.store = Arc::new(store);
                    return true;
                }
                Err(Error::Corruption { kind: CorruptionKind::Malformed(why), .. })
                    if why.contains("vote") =>
                {
                    self.stats.refused += 1;
                }
                Err(e) => panic!("node {id}: the open refused {damage:?}: {e}"),
            }
        }
        false
    }

    fn restart(&mut self, id: u64) {
        self.trace.push(format!("t{} restart {id}", self.now));
        let seed = self.seed;
        let n = self.nodes.get_mut(&id).unwrap();
        // The state machine restarts from the stored snapshot and replays the log after it.
        let snap = n.store.snapshot().unwrap();
        n.kv = Kv::decode(&snap.data);
        n.conf_state = snap.metadata.conf_state.clone();
        n.applied = snap.metadata.index;
        // Reads confirmed before the crash are lost with the process.
        n.reads.clear();
        let raw = RawNode::new(&config(id, seed, snap.metadata.index), n.store.clone()).unwrap();
        assert_eq!(
            raw.status().repairing,
            n.store.repairing(),
            "node {id}: the core must take the storage's repair state"
        );
        n.raw = Some(raw);
    }

    fn compact(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        let snap_index = n.store.snapshot().unwrap().metadata.index;
        if n.applied <= snap_index {
            return;
        }
        self.trace.push(format!("t{} snapshot {id} at {}", self.now, n.applied));
        n.store.create_snapshot(n.applied, n.conf_state.clone(), n.kv.encode());
        // Keep a few entries so that slightly lagging followers need no snapshot.
        let keep = 5;
        if n.applied > snap_index + keep {
            n.store.compact(n.applied - keep);
        }
    }

    fn client(&mut self, id: u64) {
        let key = format!("k{}", self.rng.below(3));
        let per_key = self.history.values().filter(|h| h.op.key() == key).count();
        if per_key >= MAX_OPS_PER_KEY {
            return;
        }
        let val = format!("v{}", self.rng.below(5));
        let op = match self.rng.below(4) {
            0 => Op::Put(key, val),
            1 => Op::Get(key),
            2 => Op::Read(key),
            _ => Op::Cas(key, format!("v{}", self.rng.below(5)), val),
        };
        let op_id = self.next_op;
        self.next_op += 1;
        self.clock += 1;
        self.history
            .insert(op_id, HistOp { op: op.clone(), call: self.clock, ret: None, result: None });
        if let Some(raw) = self.nodes.get_mut(&id).unwrap().raw.as_mut() {
            match op {
                Op::Read(_) => raw.read_index(Bytes::from(op_id.to_string())),
                op => {
                    let _ = raw.propose(op.encode(op_id));
                }
            }
        }
    }

    /// Checks the whole history for linearizability, key by key (linearizability is local).
    ///
    /// Called at the end of a run, once every node applied the final operation: an operation
    /// not applied by then was lost (its proposal dropped, its leader deposed) and will never
    /// take effect, and a read never served returned nothing; both are left out, which is one
    /// of the choices linearizability allows for operations that never return.
    fn check_linearizable(&self) {
        let mut by_key: BTreeMap<&str, Vec<HistOp>> = BTreeMap::new();
        for h in self.history.values().filter(|h| h.ret.is_some()) {
            by_key.entry(h.op.key()).or_default().push(h.clone());
        }
        for (key, ops) in by_key {
            assert!(linearizable(&ops), "history of {key} is not linearizable: {ops:?}");
        }
    }

    fn check(&mut self, full: bool) {
        // Election safety.
        for id in self.live() {
            let st = self.nodes[&id].raw.as_ref().unwrap().status();
            if st.soft_state.raft_state == StateRole::Leader {
                let term = st.hard_state.term;
                let prev = *self.leaders.entry(term).or_insert(id);
                assert_eq!(prev, id, "two leaders in term {term}: {prev} and {id}");
            }
        }
        for id in self.ids() {
            let n = &self.nodes[&id];
            if let SimStore::Wal(w) = n.store.as_ref() {
                self.stats.max_segments = self.stats.max_segments.max(w.wal().segment_count());
            }
            let hs = n.store.hard_state();
            let (first, last) = (n.store.first_index().unwrap(), n.store.last_index().unwrap());
            // Log matching on the committed prefix.
            let hi = hs.commit.min(last);
            let lo = if full { first } else { first.max(hi.saturating_sub(RECENT_CHECKED)) };
            if hi >= lo {
                for e in n.store.entries(lo, hi + 1, u64::MAX).unwrap() {
                    if let Some((term, data, _)) = self.committed.get(&e.index) {
                        assert!(
                            *term == e.term && *data == e.data,
                            "node {id} stores committed index {} with term {} instead of {}",
                            e.index,
                            e.term,
                            term
                        );
                    }
                }
            }
            // Leader completeness.
            let Some(raw) = n.raw.as_ref() else { continue };
            let st = raw.status();
            // A node repairing its log never campaigns.
            assert!(
                st.repairing.is_none() || st.soft_state.raft_state == StateRole::Follower,
                "node {id} is {:?} while repairing {:?}",
                st.soft_state.raft_state,
                st.repairing
            );
            if st.soft_state.raft_state != StateRole::Leader {
                continue;
            }
            let snap_index = n.store.snapshot().unwrap().metadata.index;
            for (index, (term, _, seen_at)) in &self.committed {
                if st.hard_state.term <= *seen_at || *index <= snap_index {
                    continue;
                }
                let has = n.store.term(*index).is_ok_and(|t| t == *term);
                assert!(
                    has,
                    "leader {id} of term {} lacks committed index {index} (term {term})",
                    st.hard_state.term
                );
            }
        }
    }

    /// The live leader of the highest term, if any (a deposed leader may not know yet).
    fn leader(&self) -> Option<u64> {
        self.live()
            .into_iter()
            .filter_map(|id| {
                let st = self.nodes[&id].raw.as_ref().unwrap().status();
                (st.soft_state.raft_state == StateRole::Leader).then_some((st.hard_state.term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    fn propose_change(&mut self, leader: u64, changes: Vec<ConfChangeSingle>, v1: bool) {
        let transition = match self.rng.below(3) {
            0 => ConfChangeTransition::Auto,
            1 => ConfChangeTransition::Implicit,
            _ => ConfChangeTransition::Explicit,
        };
        self.trace.push(format!(
            "t{} leader {leader} proposes {changes:?} ({})",
            self.now,
            if v1 { "v1".to_string() } else { format!("{transition:?}") }
        ));
        let raw = self.nodes.get_mut(&leader).unwrap().raw.as_mut().unwrap();
        let _ = if v1 {
            raw.propose_conf_change(ConfChange {
                change_type: changes[0].change_type,
                node_id: changes[0].node_id,
                context: Bytes::new(),
            })
        } else {
            raw.propose_conf_change(ConfChangeV2 { transition, changes, context: Bytes::new() })
        };
    }

    /// A random membership change among the cluster's nodes: add, remove, demote, promote,
    /// one at a time or several through joint consensus, or leaving a joint state.
    fn random_membership_change(&mut self) {
        let Some(leader) = self.leader() else { return };
        let cs = self.nodes[&leader].raw.as_ref().unwrap().status().conf_state;
        if !cs.voters_outgoing.is_empty() {
            if !cs.auto_leave {
                self.propose_change(leader, Vec::new(), false);
            }
            return;
        }
        let single = |change_type, node_id| ConfChangeSingle { change_type, node_id };
        // While nodes repair, the voter set loses only them: removing healthy voters could
        // leave the repairing ones a majority, which nothing could elect around.
        let repairing: Vec<u64> = self
            .ids()
            .into_iter()
            .filter(|id| self.nodes[id].store.repairing().is_some())
            .collect();
        let mut options = Vec::new();
        for id in self.ids() {
            let (voter, learner) = (cs.voters.contains(&id), cs.learners.contains(&id));
            if !voter && !learner {
                options.push(single(ConfChangeType::AddNode, id));
                options.push(single(ConfChangeType::AddLearnerNode, id));
            } else if learner {
                options.push(single(ConfChangeType::AddNode, id));
                options.push(single(ConfChangeType::RemoveNode, id));
            } else if cs.voters.len() > 2
                && id != leader
                && (repairing.is_empty() || repairing.contains(&id))
            {
                // Like a server, move leadership away before removing or demoting the leader
                // (see `hand_off_if_removed` for a leader that is removed anyway).
                options.push(single(ConfChangeType::RemoveNode, id));
                options.push(single(ConfChangeType::AddLearnerNode, id));
            }
        }
        if options.is_empty() {
            return;
        }
        let first = options[self.rng.below(options.len() as u64) as usize];
        let mut changes = vec![first];
        if self.rng.chance(40) {
            let others: Vec<_> = options.iter().filter(|c| c.node_id != first.node_id).collect();
            if !others.is_empty() {
                changes.push(*others[self.rng.below(others.len() as u64) as usize]);
            }
        }
        let v1 = changes.len() == 1 && self.rng.chance(50);
        self.propose_change(leader, changes, v1);
    }

    /// A leader removed from (or demoted in) the configuration cannot propose, and without
    /// `step_down_on_removal` it keeps leading; the application hands leadership to a voter,
    /// as a server would before shutting the removed member down.
    fn hand_off_if_removed(&mut self) {
        let Some(leader) = self.leader() else { return };
        let raw = self.nodes.get_mut(&leader).unwrap().raw.as_mut().unwrap();
        let st = raw.status();
        let cs = st.conf_state;
        if cs.voters.contains(&leader) || cs.voters_outgoing.contains(&leader) {
            return;
        }
        if let Some(to) = cs.voters.first()
            && st.lead_transferee.is_none()
        {
            self.trace.push(format!("t{} removed leader {leader} hands off to {to}", self.now));
            raw.transfer_leader(*to);
        }
    }

    /// In calm conditions, brings every node back as a voter, one change at a time.
    fn repair_membership(&mut self) {
        let Some(leader) = self.leader() else { return };
        let cs = self.nodes[&leader].raw.as_ref().unwrap().status().conf_state;
        if !cs.voters_outgoing.is_empty() {
            if !cs.auto_leave {
                self.propose_change(leader, Vec::new(), false);
            }
            return;
        }
        if let Some(id) = self.ids().into_iter().find(|id| !cs.voters.contains(id)) {
            let change = ConfChangeSingle { change_type: ConfChangeType::AddNode, node_id: id };
            self.propose_change(leader, vec![change], true);
        }
    }

    fn full_membership(&self) -> bool {
        let ids = self.ids();
        self.nodes.values().all(|n| {
            n.conf_state.voters == ids
                && n.conf_state.learners.is_empty()
                && n.conf_state.voters_outgoing.is_empty()
        })
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            let st = n.raw.as_ref().map(|r| r.status());
            out.push_str(&format!(
                "\n  {id}: applied {} conf {:?} store [{}, {}] snap {} {:?}",
                n.applied,
                n.conf_state,
                n.store.first_index().unwrap(),
                n.store.last_index().unwrap(),
                n.store.snapshot().unwrap().metadata.index,
                st.map(|s| (s.soft_state, s.hard_state, s.progress)),
            ));
        }
        out
    }

    fn step(&mut self, faults: bool) {
        self.now += 1;
        if faults {
            let ids = self.ids();
            let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
            if self.rng.chance(2) {
                let id = pick(&mut self.rng);
                if self.nodes[&id].raw.is_some() {
                    self.crash(id, true);
                } else {
                    self.restart(id);
                }
            }
            if self.rng.chance(3) {
                if self.partition.is_empty() {
                    for id in &ids {
                        let g = self.rng.below(2) as u8;
                        self.partition.insert(*id, g);
                    }
                    self.trace.push(format!("t{} partition {:?}", self.now, self.partition));
                } else {
                    self.partition.clear();
                    self.trace.push(format!("t{} heal", self.now));
                }
            }
            if self.rng.chance(3) {
                let id = pick(&mut self.rng);
                if self.nodes[&id].raw.is_some() {
                    self.compact(id);
                }
            }
            // A down node comes back eventually.
            for id in ids.iter().copied() {
                if self.nodes[&id].raw.is_none() && self.rng.chance(5) {
                    self.restart(id);
                }
            }
        }
        for id in self.live() {
            // Clocks drift: a node misses a tick now and then.
            if !faults || self.rng.chance(90) {
                self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap().tick();
            }
        }
        if self.rng.chance(30) {
            let live = self.live();
            if !live.is_empty() {
                let id = live[self.rng.below(live.len() as u64) as usize];
                self.client(id);
            }
        }
        if faults && self.rng.chance(3) {
            self.random_membership_change();
        }
        if faults && self.rng.chance(2) {
            // Leadership transfers, to any node (a transfer to itself or a down node must be
            // harmless).
            let ids = self.ids();
            let to = ids[self.rng.below(ids.len() as u64) as usize];
            for id in self.live() {
                let raw = self.nodes.get_mut(&id).unwrap().raw.as_mut().unwrap();
                if raw.status().soft_state.raft_state == StateRole::Leader {
                    self.trace.push(format!("t{} transfer {id} -> {to}", self.now));
                    raw.transfer_leader(to);
                }
            }
        }
        self.settle(faults);
        self.deliver();
        self.settle(faults);
        self.hand_off_if_removed();
        let full = self.now.is_multiple_of(50);
        self.check(full);
    }

    fn run(&mut self) {
        for _ in 0..FAULT_STEPS {
            self.step(true);
        }
        // Calm: heal, bring everyone back, and require progress.
        self.partition.clear();
        for id in self.ids() {
            if self.nodes[&id].raw.is_some() {
                self.crash(id, false);
            }
            self.restart(id);
        }
        self.trace.push(format!("t{} calm", self.now));
        let final_id = self.next_op;
        self.next_op += 1;
        let mut proposed = false;
        for step in 0..CALM_STEPS {
            self.step(false);
            if step % 10 == 5 && !self.full_membership() {
                self.repair_membership();
            }
            // Snapshots go on, so that a node re-added after the last snapshot can still be
            // caught up by one that includes it.
            if step % 25 == 0 {
                for id in self.live() {
                    self.compact(id);
                }
            }
            let live = self.live();
            let leader = live.iter().copied().find(|id| {
                self.nodes[id].raw.as_ref().unwrap().status().soft_state.raft_state
                    == StateRole::Leader
            });
            // A client retries (with the same operation id) until the operation is applied:
            // an accepted proposal can still be lost when its leader is deposed.
            let applied_somewhere = self.nodes.values().any(|n| n.kv.seen.contains(&final_id));
            if let Some(l) = leader
                && !applied_somewhere
                && (!proposed || step % 20 == 0)
            {
                let raw = self.nodes.get_mut(&l).unwrap().raw.as_mut().unwrap();
                let op = Op::Put("final".into(), "x".into());
                proposed |= raw.propose(op.encode(final_id)).is_ok();
            }
            if proposed
                && self.full_membership()
                && self.nodes.values().all(|n| n.kv.seen.contains(&final_id))
                && self.nodes.values().all(|n| n.store.repairing().is_none())
            {
                break;
            }
        }
        assert!(
            proposed,
            "no leader emerged in {CALM_STEPS} calm steps; nodes: {}",
            self.describe()
        );
        for (id, n) in &self.nodes {
            assert!(
                n.kv.seen.contains(&final_id),
                "node {id} did not apply the final operation in {CALM_STEPS} calm steps; \
                 nodes: {}",
                self.describe()
            );
        }
        assert!(
            self.full_membership(),
            "membership not restored in {CALM_STEPS} calm steps; nodes: {}",
            self.describe()
        );
        // Every damaged node was repaired by a leader (liveness).
        for (id, n) in &self.nodes {
            assert_eq!(
                n.store.repairing(),
                None,
                "node {id} still repairing after {CALM_STEPS} calm steps; nodes: {}",
                self.describe()
            );
        }
        self.check(true);
        self.check_linearizable();
        // With everything applied, every replica holds the same state.
        let kvs: Vec<&Kv> = self.nodes.values().map(|n| &n.kv).collect();
        let applied: Vec<u64> = self.nodes.values().map(|n| n.applied).collect();
        if applied.windows(2).all(|w| w[0] == w[1]) {
            assert!(kvs.windows(2).all(|w| w[0] == w[1]), "replicas diverged at equal applied");
        }
    }
}

fn run_seed(seed: u64) -> (usize, usize, DurableStats) {
    let size = if seed.is_multiple_of(2) { 3 } else { 5 };
    let mut sim = Sim::new(seed, size);
    let outcome = catch_unwind(AssertUnwindSafe(|| sim.run()));
    if let Err(panic) = outcome {
        eprintln!(
            "raft simulation failed: seed {seed} ({size} nodes, {:?}, read_footers {}) at step {}. \
             Last events: {:?}\n\
             replay with: RAFTWAL_SIM_SEED={seed} cargo test --test integration raft_sim",
            sim.backend,
            sim.read_footers,
            sim.now,
            sim.trace.iter().rev().take(12).collect::<Vec<_>>()
        );
        resume_unwind(panic);
    }
    (sim.committed.len(), sim.results.len(), sim.stats)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")))
}

#[test]
fn seeded_cluster_simulation_keeps_raft_invariants() {
    let seeds: Vec<u64> = match env_u64("RAFTWAL_SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env_u64("RAFTWAL_SIM_FIRST_SEED").unwrap_or(0);
            (first..first + env_u64("RAFTWAL_SIM_SEEDS").unwrap_or(200)).collect()
        }
    };
    let (mut entries, mut ops) = (0, 0);
    let mut durable = DurableStats::default();
    let mut damaged_seeds = 0;
    for seed in &seeds {
        let (e, o, stats) = run_seed(*seed);
        entries += e;
        ops += o;
        durable.crashes += stats.crashes;
        durable.lossy_crashes += stats.lossy_crashes;
        durable.max_segments = durable.max_segments.max(stats.max_segments);
        durable.flips += stats.flips;
        durable.deletes += stats.deletes;
        durable.repairs += stats.repairs;
        durable.refused += stats.refused;
        damaged_seeds += usize::from(stats.flips + stats.deletes > 0);
    }
    eprintln!("raft_sim: {} seeds, {damaged_seeds} with damage to a log; {durable:?}", seeds.len());
    if seeds.len() >= 50 {
        // A sweep exercises the durable storage: crashes that lose unsynced writes, logs that
        // span several segments, and damage of both kinds that nodes repaired from their peers.
        assert!(durable.crashes > seeds.len(), "only {durable:?} over {} seeds", seeds.len());
        assert!(durable.lossy_crashes > 0, "no crash lost an unsynced write: {durable:?}");
        assert!(durable.max_segments >= 2, "no log rolled over: {durable:?}");
        assert!(durable.flips > 0, "no bit of a log flipped: {durable:?}");
        assert!(durable.deletes > 0, "no sealed segment deleted: {durable:?}");
        assert!(durable.repairs > 0, "no damage left a node repairing: {durable:?}");
    }
    // The runs must have done real work, not idled through the faults.
    assert!(
        entries > seeds.len() * 5,
        "only {entries} entries committed over {} seeds",
        seeds.len()
    );
    assert!(ops > seeds.len(), "only {ops} operations completed over {} seeds", seeds.len());
}

/// Seeds whose histories found library bugs, replayed on every run (as long as the
/// simulator draws the same histories from them).
#[test]
fn seeds_that_found_repair_bugs_keep_raft_invariants() {
    // 265: a Repairable cut in a recycled segment erased its records past the cut only up to
    // the first durable witness; once the segment was sealed, a later open took the records
    // left for witnesses of zeroed durable data (row R5) and cut acknowledged entries and
    // snapshot markers, then refused to open over a snapshot file retention had removed.
    // 288: a cut brought back entries that a lost write had replaced, and the commit index
    // from past the cut counted them committed (the log matching check caught it).
    // 61: a cut of the index-0 bootstrap snapshot's marker opened without the node's first
    // membership, which no leader resends.
    for seed in [61, 265, 288] {
        run_seed(seed);
    }
}

/// Seeds whose histories find a library bug not yet fixed: a Repairable cut can bring back
/// entries that a lost write had replaced, so the surviving log is not a prefix of what the
/// node acknowledged. 626: the lost entries reached no further than the surviving log, so the
/// node did not repair, and a heartbeat's commit index made it apply a replaced entry. 965: the
/// node repaired, and the heartbeat's commit index, capped at the last index held, still
/// counted replaced entries (1253 too).
#[test]
fn seeds_where_a_cut_brings_back_replaced_entries_keep_raft_invariants() {
    for seed in [626, 965, 1253] {
        run_seed(seed);
    }
}

#[test]
fn the_same_seed_replays_the_same_history() {
    let run = |seed| {
        let mut sim = Sim::new(seed, 3);
        sim.run();
        (sim.committed.clone(), sim.results.clone(), sim.now, sim.stats)
    };
    // One seed of each backend, crashes of the durable ones included.
    let backends = [
        Backend::Memory,
        Backend::Wal(SyncMode::Always),
        Backend::Wal(SyncMode::AlwaysMustSyncRule),
        Backend::Wal(SyncMode::NeverExplicitSync),
    ];
    for b in backends {
        let seed = (0..64).find(|s| backend(*s) == b).expect("every backend within 64 seeds");
        assert_eq!(run(seed), run(seed), "seed {seed} ({b:?})");
    }
}

#[test]
fn kv_snapshot_encoding_round_trips() {
    let mut kv = Kv::default();
    kv.apply(1, &Op::Put("a".into(), "1".into()));
    kv.apply(2, &Op::Cas("a".into(), "1".into(), "2".into()));
    assert_eq!(kv.apply(2, &Op::Put("a".into(), "9".into())), None, "dedup by op id");
    assert_eq!(Kv::decode(&kv.encode()), kv);
    let e = Entry::new(1, 1, Op::Get("a".into()).encode(7));
    assert_eq!(Op::decode(&e.data), (7, Op::Get("a".into())));
}

#[test]
fn linearizability_checker_rejects_stale_reads_and_accepts_overlaps() {
    let h = |op: Op, call, ret, result: &str| HistOp {
        op,
        call,
        ret: Some(ret),
        result: Some(result.to_string()),
    };
    let put = || Op::Put("k".into(), "v1".into());
    let read = || Op::Read("k".into());
    // The write returned before the read began, yet the read missed it.
    assert!(!linearizable(&[h(put(), 1, 2, "ok"), h(read(), 3, 4, "")]));
    // Overlapping, either order is possible.
    assert!(linearizable(&[h(put(), 1, 4, "ok"), h(read(), 2, 3, "")]));
    assert!(linearizable(&[h(put(), 1, 4, "ok"), h(read(), 2, 3, "v1")]));
    // A compare-and-swap must see the value the history implies.
    let cas = Op::Cas("k".into(), "v1".into(), "v2".into());
    assert!(linearizable(&[h(put(), 1, 2, "ok"), h(cas.clone(), 3, 4, "swapped")]));
    assert!(!linearizable(&[h(put(), 1, 2, "ok"), h(cas, 3, 4, "failed:")]));
    // An operation that never returned may have taken effect, or not.
    let pending = HistOp { op: put(), call: 1, ret: None, result: None };
    assert!(linearizable(&[pending.clone(), h(read(), 2, 3, "v1")]));
    assert!(linearizable(&[pending, h(read(), 2, 3, "")]));
}
