//! The raft-rs adapter: three raft-rs `RawNode`s in one process, each on a `WalStorage` on its own
//! `CrashFs`, elect a leader and replicate; one node is cut off, restarted from its durable image
//! after a power cut, and must catch up (through the log, or through a snapshot when the leader
//! has compacted the entries it misses).

use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use raft::eraftpb::{ConfState, Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole, Storage as _};
use raftwal::adapters::raft_rs::{RaftRsStorage, slog};
use raftwal::io::{CrashFs, Fs};
use raftwal::{WalOptions, WalStorage};

const NODE_IDS: [u64; 3] = [1, 2, 3];
/// Upper bound on delivery rounds of one `settle`: each round handles every ready and delivers
/// every message sent in the round before.
const MAX_ROUNDS: usize = 200;
/// Upper bound on ticks while waiting for a node to catch up.
const MAX_TICKS: usize = 200;

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 8192,
        max_record_bytes: 4096,
        prepare_in_background: false,
        cache_bytes: 4096,
        ..WalOptions::default()
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn open_storage(fs: &CrashFs) -> RaftRsStorage {
    let fs: Fs = Arc::new(fs.clone());
    RaftRsStorage::new(WalStorage::open_with_fs(fs, Path::new("/node"), options()).unwrap())
}

/// The application's state machine: the proposals applied, in order.
fn encode_applied(applied: &[Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    for value in applied {
        out.put_u32_le(u32::try_from(value.len()).unwrap());
        out.put_slice(value);
    }
    out.freeze()
}

fn decode_applied(mut image: &[u8]) -> Vec<Bytes> {
    let mut applied = Vec::new();
    while !image.is_empty() {
        let len = u32::from_le_bytes(image[..4].try_into().unwrap()) as usize;
        applied.push(Bytes::copy_from_slice(&image[4..4 + len]));
        image = &image[4 + len..];
    }
    applied
}

struct Node {
    id: u64,
    fs: CrashFs,
    storage: RaftRsStorage,
    raw: RawNode<RaftRsStorage>,
    applied: Vec<Bytes>,
}

impl Node {
    /// A node on `fs`, restoring its state machine from the storage's snapshot (the log after it
    /// is applied again as raft-rs hands the committed entries out).
    fn start(id: u64, fs: CrashFs) -> Node {
        let storage = open_storage(&fs);
        if storage.is_empty() {
            let cs = ConfState { voters: NODE_IDS.to_vec(), ..Default::default() };
            storage.initialize_with_conf_state(&cs).unwrap();
        }
        let snapshot = storage.snapshot(0, id).unwrap();
        let applied = decode_applied(&snapshot.data);
        let config = Config { id, election_tick: 10, heartbeat_tick: 3, ..Config::default() };
        config.validate().unwrap();
        let raw = RawNode::new(&config, storage.clone(), &logger()).unwrap();
        Node { id, fs, storage, raw, applied }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            assert_eq!(entry.get_entry_type(), EntryType::EntryNormal, "no membership changes");
            if !entry.data.is_empty() {
                self.applied.push(entry.data.clone());
            }
        }
    }

    /// Handles one `Ready` as raft-rs prescribes; returns the messages to send.
    fn handle_ready(&mut self) -> Vec<Message> {
        if !self.raw.has_ready() {
            return Vec::new();
        }
        let mut ready = self.raw.ready();
        let mut out = ready.take_messages();
        if !ready.snapshot().is_empty() {
            self.applied = decode_applied(&ready.snapshot().data);
        }
        let committed = ready.take_committed_entries();
        self.apply(committed);
        self.storage.persist_ready(&ready).unwrap();
        out.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        self.storage.persist_light_ready(&light).unwrap();
        out.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed);
        self.raw.advance_apply();
        out
    }
}

struct Cluster {
    nodes: Vec<Node>,
    // Whether the node at the same position receives and sends messages.
    up: Vec<bool>,
}

impl Cluster {
    fn new() -> Cluster {
        let nodes: Vec<Node> = NODE_IDS.iter().map(|&id| Node::start(id, CrashFs::new())).collect();
        let up = vec![true; nodes.len()];
        Cluster { nodes, up }
    }

    fn position(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    /// Handles readies and delivers messages until nothing moves (bounded).
    fn settle(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let mut messages = Vec::new();
            for (node, up) in self.nodes.iter_mut().zip(&self.up) {
                if *up {
                    messages.extend(node.handle_ready());
                }
            }
            if messages.is_empty() {
                return;
            }
            for message in messages {
                let to = self.position(message.to);
                if self.up[to] {
                    self.nodes[to].raw.step(message).unwrap();
                }
            }
        }
        panic!("the cluster did not settle within {MAX_ROUNDS} rounds");
    }

    fn tick(&mut self) {
        for (node, up) in self.nodes.iter_mut().zip(&self.up) {
            if *up {
                node.raw.tick();
            }
        }
        self.settle();
    }

    fn leader(&self) -> usize {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.up[i] && self.nodes[i].raw.raft.state == StateRole::Leader)
            .collect();
        assert_eq!(leaders.len(), 1, "exactly one leader among the running nodes");
        leaders[0]
    }

    fn propose(&mut self, values: impl IntoIterator<Item = String>) -> Vec<Bytes> {
        let leader = self.leader();
        let mut proposed = Vec::new();
        for value in values {
            self.nodes[leader].raw.propose(vec![], value.clone().into_bytes()).unwrap();
            proposed.push(Bytes::from(value));
            self.settle();
        }
        proposed
    }

    /// Drops node `pos` and its storage, cuts the power of its file system, and starts it again
    /// from what survived.
    fn restart(&mut self, pos: usize, seed: u64) {
        let (id, fs) = (self.nodes[pos].id, self.nodes[pos].fs.clone());
        // The RawNode holds a clone of the storage; both go before the directory is reopened.
        let old = std::mem::replace(&mut self.nodes[pos], placeholder());
        drop(old);
        fs.crash(seed);
        self.nodes[pos] = Node::start(id, fs);
    }
}

/// A node on a throwaway file system, standing in while a node restarts.
fn placeholder() -> Node {
    Node::start(NODE_IDS[0], CrashFs::new())
}

/// Elects node 1 and replicates `count` proposals; every node applies them all.
fn elected_cluster_with(count: usize) -> (Cluster, Vec<Bytes>) {
    let mut cluster = Cluster::new();
    cluster.nodes[0].raw.campaign().unwrap();
    cluster.settle();
    assert_eq!(cluster.leader(), 0, "node 1 campaigned alone and won");
    let proposed = cluster.propose((0..count).map(|i| format!("value-{i}")));
    for node in &cluster.nodes {
        assert_eq!(node.applied, proposed, "node {} applied every proposal in order", node.id);
    }
    (cluster, proposed)
}

/// Ticks until node `pos` has applied `expected` and holds the leader's log (bounded).
fn wait_caught_up(cluster: &mut Cluster, pos: usize, expected: &[Bytes]) {
    for _ in 0..MAX_TICKS {
        if cluster.nodes[pos].applied == expected {
            break;
        }
        cluster.tick();
    }
    assert_eq!(cluster.nodes[pos].applied, expected, "the restarted node applied every proposal");
    let leader = cluster.leader();
    let (lead, node) = (&cluster.nodes[leader].storage, &cluster.nodes[pos].storage);
    let last = lead.last_index().unwrap();
    assert_eq!(node.last_index().unwrap(), last, "same last index as the leader");
    assert_eq!(node.term(last).unwrap(), lead.term(last).unwrap(), "same last term");
    let hs = node.initial_state().unwrap().hard_state;
    assert_eq!(hs.commit, last, "the restarted node persisted the leader's commit index");
}

#[test]
fn three_nodes_elect_replicate_and_survive_a_restart() {
    let (mut cluster, mut expected) = elected_cluster_with(10);

    // Every node's log is durable: node 2 restarted after a power cut holds all of it.
    cluster.restart(1, 7);
    let restored = &cluster.nodes[1];
    let state = restored.storage.initial_state().unwrap();
    assert_eq!(state.conf_state.voters, NODE_IDS.to_vec());
    assert!(
        state.hard_state.commit >= 11,
        "bootstrap snapshot at 1, then 10 proposals and a no-op"
    );
    wait_caught_up(&mut cluster, 1, &expected);

    // Node 3 misses proposals while cut off, then restarts from disk and catches up by the log.
    cluster.up[2] = false;
    expected.extend(cluster.propose((10..20).map(|i| format!("value-{i}"))));
    let behind = cluster.nodes[2].storage.last_index().unwrap();
    let leader_last = cluster.nodes[cluster.leader()].storage.last_index().unwrap();
    assert!(behind + 10 <= leader_last, "node 3 missed the last ten entries");
    cluster.restart(2, 11);
    cluster.up[2] = true;
    wait_caught_up(&mut cluster, 2, &expected);
    let first = cluster.nodes[cluster.leader()].storage.first_index().unwrap();
    assert_eq!(first, 2, "nothing was compacted: node 3 caught up through the log");
}

#[test]
fn a_restarted_node_behind_the_compacted_log_catches_up_by_snapshot() {
    let (mut cluster, mut expected) = elected_cluster_with(5);
    cluster.up[2] = false;
    expected.extend(cluster.propose((5..15).map(|i| format!("value-{i}"))));
    let behind = cluster.nodes[2].storage.last_index().unwrap();

    // Every running node snapshots its state machine and compacts (raft-rs semantics: entries
    // before `applied` go, `applied` stays the first readable entry).
    for pos in [0, 1] {
        let node = &cluster.nodes[pos];
        let applied = node.raw.raft.raft_log.applied;
        let snapshot =
            node.storage.create_snapshot(applied, None, encode_applied(&node.applied)).unwrap();
        assert_eq!(snapshot.get_metadata().index, applied);
        node.storage.compact(applied).unwrap();
        assert_eq!(node.storage.first_index().unwrap(), applied, "compact(i) keeps entry i");
        let dummy_term = node.storage.term(applied - 1).unwrap();
        assert!(dummy_term >= 1, "term(first_index - 1) still answers");
        assert!(
            matches!(
                node.storage.term(applied - 2),
                Err(raft::Error::Store(raft::StorageError::Compacted))
            ),
            "below the dummy is compacted"
        );
    }
    let leader = cluster.leader();
    assert!(behind + 1 < cluster.nodes[leader].storage.first_index().unwrap(), "node 3 lags");

    cluster.restart(2, 3);
    cluster.up[2] = true;
    wait_caught_up(&mut cluster, 2, &expected);
    let node = &cluster.nodes[2].storage;
    let snapshot = node.snapshot(0, 3).unwrap();
    assert!(snapshot.get_metadata().index > behind, "node 3 installed the leader's snapshot");
    assert_eq!(node.first_index().unwrap(), snapshot.get_metadata().index + 1);

    // And that snapshot survives another restart.
    cluster.restart(2, 5);
    assert_eq!(cluster.nodes[2].applied, expected[..cluster.nodes[2].applied.len()]);
    wait_caught_up(&mut cluster, 2, &expected);
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: Bytes::from(format!("e{index}")), ..Default::default() }
}

fn storage_error(result: raft::Result<impl std::fmt::Debug>) -> raft::StorageError {
    match result {
        Err(raft::Error::Store(e)) => e,
        other => panic!("expected a storage error, got {other:?}"),
    }
}

/// The same appends and compactions on raft-rs's `MemStorage` and on the adapter give the same
/// first and last index, terms and entries, where raft-rs's contract defines them.
#[test]
fn compaction_and_reads_match_raft_rs_mem_storage() {
    let theirs = raft::storage::MemStorage::new();
    let ours = open_storage(&CrashFs::new());
    let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 4)).collect();
    theirs.wl().append(&entries).unwrap();
    ours.append(&entries).unwrap();
    // raft-rs compact(i): entries before i go; at or below first_index it is a no-op.
    for compact in [1, 4, 4, 3, 7] {
        theirs.wl().compact(compact).unwrap();
        ours.compact(compact).unwrap();
        let first = theirs.first_index().unwrap();
        assert_eq!(ours.first_index().unwrap(), first, "first index after compact({compact})");
        assert_eq!(ours.last_index().unwrap(), theirs.last_index().unwrap());
        for index in first..=10 {
            assert_eq!(ours.term(index).unwrap(), theirs.term(index).unwrap(), "term({index})");
        }
        // raft-rs's contract: term(first_index - 1) answers (MemStorage only at a snapshot).
        let dummy_term = if first == 1 { 0 } else { entries[(first - 2) as usize].term };
        assert_eq!(ours.term(first - 1).unwrap(), dummy_term);
        if first >= 3 {
            let below = storage_error(ours.term(first - 2));
            assert_eq!(below, raft::StorageError::Compacted, "below the dummy");
        }
        let ctx = || raft::GetEntriesContext::empty(false);
        assert_eq!(
            ours.entries(first, 11, None, ctx()).unwrap(),
            theirs.entries(first, 11, None, ctx()).unwrap()
        );
        let compacted = storage_error(ours.entries(first - 1, 11, None, ctx()));
        assert_eq!(compacted, raft::StorageError::Compacted);
        assert_eq!(storage_error(ours.term(11)), raft::StorageError::Unavailable);
    }
    // compact(last + 1) is allowed (nothing readable is left); beyond it is refused.
    let refused = storage_error(ours.compact(12));
    assert!(matches!(refused, raft::StorageError::Other(_)), "{refused:?}");
    ours.compact(11).unwrap();
    assert_eq!(ours.first_index().unwrap(), 11);
    assert_eq!(ours.last_index().unwrap(), 10);
    assert_eq!(ours.term(10).unwrap(), entries[9].term, "the last entry is now the dummy");
}

#[test]
fn snapshot_requests_initialization_and_a_crash_between_snapshot_and_hard_state() {
    let fs = CrashFs::new();
    let storage = open_storage(&fs);
    let cs = ConfState { voters: vec![1, 2], ..Default::default() };
    storage.initialize_with_conf_state(&cs).unwrap();
    let again = storage_error(storage.initialize_with_conf_state(&cs));
    assert!(matches!(again, raft::StorageError::Other(_)), "initialized twice: {again:?}");
    let state = storage.initial_state().unwrap();
    assert_eq!(state.conf_state, cs);
    assert!(state.initialized());
    assert_eq!(storage.first_index().unwrap(), 2);
    assert_eq!(storage.term(1).unwrap(), 1, "the initial snapshot's term");

    // A snapshot older than the one asked for is not there yet.
    let asked = storage_error(storage.snapshot(5, 2));
    assert_eq!(asked, raft::StorageError::SnapshotTemporarilyUnavailable);
    assert_eq!(storage.snapshot(1, 2).unwrap().get_metadata().index, 1);

    // A leader's snapshot applied, then a power cut before the hard state that goes with it:
    // the commit index still covers the snapshot.
    let mut snapshot =
        raft::eraftpb::Snapshot { data: Bytes::from_static(b"image"), ..Default::default() };
    snapshot.mut_metadata().index = 20;
    snapshot.mut_metadata().term = 3;
    snapshot.mut_metadata().set_conf_state(cs.clone());
    storage.apply_snapshot(&snapshot).unwrap();
    let stale = storage_error(storage.apply_snapshot(&snapshot));
    assert_eq!(stale, raft::StorageError::SnapshotOutOfDate);
    drop(storage);
    fs.crash(9);
    let storage = open_storage(&fs);
    let state = storage.initial_state().unwrap();
    assert_eq!(state.hard_state.commit, 20, "commit raised to the snapshot's index");
    assert_eq!(storage.first_index().unwrap(), 21);
    assert_eq!(storage.term(20).unwrap(), 3);
    assert_eq!(storage.snapshot(0, 2).unwrap(), snapshot);
}
