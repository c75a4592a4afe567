//! An in-process network of Raft nodes over `MemoryStorage`, for the scenario tests.
//!
//! Every message is sent as bytes (`Message::encode` / `decode`), so the wire encoding is
//! exercised by every scenario. Each node follows the Ready contract literally: persist,
//! then send, then apply, then advance.

// Shared by every scenario file; not each file uses every helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use raftwal::raft::{
    ConfChange, ConfChangeV2, Config, Message, MessageType, RawNode, ReadState, SnapshotStatus,
    StateRole,
};
use raftwal::{ConfState, Entry, EntryType, MemoryStorage, Snapshot, SnapshotMetadata, Storage};

/// Limit on delivery rounds in `stabilize`; a correct cluster goes quiet long before.
const MAX_ROUNDS: usize = 10_000;

pub struct Node {
    pub raw: RawNode<Arc<MemoryStorage>>,
    pub store: Arc<MemoryStorage>,
    /// Every entry handed out as committed, in order (including empty and conf entries).
    pub applied: Vec<Entry>,
    pub conf_state: ConfState,
    pub read_states: Vec<ReadState>,
    pub config: Config,
    /// Index of the last snapshot restored from the leader (0: none).
    pub snapshot_index: u64,
}

impl Node {
    pub fn state(&self) -> StateRole {
        self.raw.status().soft_state.raft_state
    }

    pub fn term(&self) -> u64 {
        self.raw.status().hard_state.term
    }

    pub fn committed(&self) -> u64 {
        self.raw.status().hard_state.commit
    }

    /// The persisted log, from the first index on.
    pub fn log(&self) -> Vec<Entry> {
        let (first, last) = (self.store.first_index().unwrap(), self.store.last_index().unwrap());
        if last < first {
            return Vec::new();
        }
        self.store.entries(first, last + 1, u64::MAX).unwrap()
    }

    /// Data of applied normal entries with a payload.
    pub fn applied_data(&self) -> Vec<Bytes> {
        self.applied
            .iter()
            .filter(|e| e.entry_type == EntryType::Normal && !e.data.is_empty())
            .map(|e| e.data.clone())
            .collect()
    }
}

/// A predicate on messages: true drops the message.
pub type Filter = Box<dyn Fn(&Message) -> bool>;

pub struct Network {
    pub nodes: BTreeMap<u64, Node>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(u64, u64)>,
    /// Message types dropped on every link.
    pub ignored: BTreeSet<MessageTypeKey>,
    pub queue: VecDeque<Message>,
    /// Every message delivered, for tests that count.
    pub delivered: Vec<Message>,
    /// Drops every message for which it returns true.
    pub filter: Option<Filter>,
}

/// `MessageType` is not `Ord`; tests name ignored types by their wire byte.
pub type MessageTypeKey = u8;

pub fn config(id: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        max_inflight_msgs: 256,
        seed: 7,
        ..Config::default()
    }
}

pub fn voters(ids: &[u64]) -> ConfState {
    ConfState { voters: ids.to_vec(), ..ConfState::default() }
}

impl Network {
    /// A cluster whose storages start with the membership `cs` (an index-0 snapshot).
    pub fn with_conf(ids: &[u64], cs: &ConfState, cfg: impl Fn(u64) -> Config) -> Network {
        let mut net = Network {
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            ignored: BTreeSet::new(),
            queue: VecDeque::new(),
            delivered: Vec::new(),
            filter: None,
        };
        for id in ids {
            let store = Arc::new(MemoryStorage::new());
            store
                .apply_snapshot(Snapshot {
                    metadata: SnapshotMetadata { index: 0, term: 0, conf_state: cs.clone() },
                    data: Bytes::new(),
                })
                .unwrap();
            net.add_node(*id, store, cfg(*id));
        }
        net
    }

    pub fn new(ids: &[u64]) -> Network {
        Network::with_conf(ids, &voters(ids), config)
    }

    /// Adds (or restarts) a node over `store`.
    pub fn add_node(&mut self, id: u64, store: Arc<MemoryStorage>, cfg: Config) {
        let raw = RawNode::new(&cfg, store.clone()).unwrap();
        let conf_state = store.initial_state().unwrap().conf_state;
        self.nodes.insert(
            id,
            Node {
                raw,
                store,
                applied: Vec::new(),
                conf_state,
                read_states: Vec::new(),
                config: cfg,
                snapshot_index: 0,
            },
        );
    }

    /// Starts node `id`, already added to the membership by a change `leader` applied, with
    /// an empty storage. The leader first compacts its log at its applied index, so the new
    /// node starts from a snapshot that carries the membership (as a real deployment would:
    /// the log alone does not hold the initial membership).
    pub fn start_new_member(&mut self, leader: u64, id: u64) {
        let applied = self.node(leader).applied.last().unwrap().index;
        assert!(
            self.node(leader).conf_state.voters.contains(&id)
                || self.node(leader).conf_state.learners.contains(&id),
            "{id} must be a member before it starts"
        );
        self.compact(leader, applied);
        self.add_empty_node(id);
    }

    /// A node that starts with an empty storage.
    pub fn add_empty_node(&mut self, id: u64) {
        let store = Arc::new(MemoryStorage::new());
        self.add_node(id, store, config(id));
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Handles one Ready of node `id` following the contract; queues its messages.
    pub fn handle_ready(&mut self, id: u64) -> bool {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.raw.has_ready() {
            return false;
        }
        let rd = node.raw.ready();
        if let Some(s) = &rd.snapshot {
            node.store.apply_snapshot(s.clone()).unwrap();
            node.conf_state = s.metadata.conf_state.clone();
            node.snapshot_index = s.metadata.index;
        }
        node.store.append(&rd.entries).unwrap();
        if let Some(hs) = rd.hard_state {
            node.store.set_hard_state(hs).unwrap();
        }
        for m in &rd.messages {
            // Every message crosses the wire as bytes.
            let decoded = Message::decode(&m.encode()).unwrap();
            assert_eq!(&decoded, m);
            self.queue.push_back(decoded);
        }
        node.read_states.extend(rd.read_states.iter().cloned());
        for e in &rd.committed_entries {
            match e.entry_type {
                EntryType::ConfChange => {
                    let cc = ConfChange::decode(&e.data).unwrap();
                    node.conf_state = node.raw.apply_conf_change(&cc);
                }
                EntryType::ConfChangeV2 => {
                    let cc = ConfChangeV2::decode(&e.data).unwrap();
                    node.conf_state = node.raw.apply_conf_change(&cc);
                }
                EntryType::Normal => {}
            }
            node.applied.push(e.clone());
        }
        node.raw.advance(rd);
        true
    }

    fn deliverable(&self, m: &Message) -> bool {
        !self.cut.contains(&(m.from, m.to))
            && !self.ignored.contains(&message_key(m.msg_type))
            && self.nodes.contains_key(&m.to)
            && !self.filter.as_ref().is_some_and(|f| f(m))
    }

    /// Handles every Ready and delivers every message until the cluster is quiet.
    pub fn stabilize(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            let mut busy = false;
            for id in ids {
                busy |= self.handle_ready(id);
            }
            while let Some(m) = self.queue.pop_front() {
                busy = true;
                let is_snap = m.msg_type == MessageType::MsgSnap;
                let (from, to) = (m.from, m.to);
                if !self.deliverable(&m) {
                    if is_snap && let Some(leader) = self.nodes.get_mut(&from) {
                        leader.raw.report_snapshot(to, SnapshotStatus::Failure);
                    }
                    continue;
                }
                self.delivered.push(m.clone());
                let _ = self.nodes.get_mut(&to).unwrap().raw.step(m);
                if is_snap && let Some(leader) = self.nodes.get_mut(&from) {
                    // The transport tells the sender how the snapshot went.
                    leader.raw.report_snapshot(to, SnapshotStatus::Finish);
                }
            }
            if !busy {
                return;
            }
        }
        panic!("cluster did not go quiet within {MAX_ROUNDS} rounds");
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Snapshots node `id`'s state at `index` (which it applied) and compacts its log there.
    pub fn compact(&mut self, id: u64, index: u64) {
        let n = self.node(id);
        let cs = n.conf_state.clone();
        n.store.create_snapshot(index, Some(cs), Bytes::from(format!("image@{index}"))).unwrap();
        n.store.compact(index).unwrap();
    }

    /// Restarts node `id` from its storage, as after a crash that lost nothing persisted.
    pub fn restart(&mut self, id: u64) {
        let old = self.nodes.remove(&id).unwrap();
        // The state machine restarts from the stored snapshot and replays the log after it,
        // re-applying membership changes on the way.
        let applied = old.store.snapshot().unwrap().metadata.index;
        let cfg = Config { applied, ..old.config.clone() };
        self.add_node(id, old.store.clone(), cfg);
        let n = self.node(id);
        n.applied = old.applied.into_iter().filter(|e| e.index <= applied).collect();
        n.snapshot_index = old.snapshot_index;
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.ignored.clear();
        self.filter = None;
    }

    pub fn campaign(&mut self, id: u64) {
        self.node(id).raw.campaign().unwrap();
        self.stabilize();
    }

    pub fn propose(&mut self, id: u64, data: &str) -> raftwal::Result<()> {
        let r = self.node(id).raw.propose(Bytes::from(data.to_string()));
        self.stabilize();
        r
    }

    /// Ticks every node once, then stabilizes.
    pub fn tick_all(&mut self) {
        for n in self.nodes.values_mut() {
            n.raw.tick();
        }
        self.stabilize();
    }

    pub fn leaders(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.state() == StateRole::Leader)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ticks until exactly one leader is known, at most `max_ticks` times.
    pub fn elect(&mut self, max_ticks: usize) -> u64 {
        for _ in 0..max_ticks {
            self.tick_all();
            let leaders = self.leaders();
            if leaders.len() == 1 {
                return leaders[0];
            }
        }
        panic!("no single leader after {max_ticks} ticks: {:?}", self.leaders());
    }
}

pub fn message_key(t: MessageType) -> MessageTypeKey {
    t.to_u8()
}

/// A normal entry for storage preloads.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry::new(index, term, Bytes::new())
}
