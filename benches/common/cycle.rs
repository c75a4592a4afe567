//! The cycle the Raft benches measure, on raftwal's `RawNode`: a client proposes one entry to the
//! leader, then every node's Ready is persisted, its messages delivered, its committed entries
//! applied and the node advanced, until the cluster is quiet and the leader applied the entry.
//! Messages are handed over in memory (no encoding), so the cycle measures the core and the
//! storage.

use std::sync::Arc;

use bytes::Bytes;
use raftwal::raft::{ConfChange, Config, Message, RawNode, Ready, StateRole};
use raftwal::{EntryType, MemoryStorage, Storage, WalStorage};

/// Limit on Ready/deliver rounds of one cycle; a cycle needs a handful.
const MAX_ROUNDS: usize = 64;

/// How a storage persists a Ready: snapshot, then entries and hard state.
pub trait Persist: Storage {
    /// Persists what `rd` asks to persist (synced per the storage's policy).
    fn persist(&self, rd: &Ready);
}

impl Persist for MemoryStorage {
    fn persist(&self, rd: &Ready) {
        if let Some(s) = &rd.snapshot {
            self.apply_snapshot(s.clone()).expect("apply snapshot");
        }
        self.append(&rd.entries).expect("append");
        if let Some(hs) = rd.hard_state {
            self.set_hard_state(hs).expect("hard state");
        }
    }
}

impl Persist for WalStorage {
    fn persist(&self, rd: &Ready) {
        if let Some(s) = &rd.snapshot {
            self.apply_snapshot(s.clone()).expect("apply snapshot");
        }
        // One write and, under SyncPolicy::Always, one fdatasync.
        self.save(rd.hard_state.as_ref(), &rd.entries).expect("save");
    }
}

struct Node<S: Persist> {
    raw: RawNode<Arc<S>>,
    store: Arc<S>,
    applied_entries: u64,
}

/// 1 or 3 voters in one process, node 1 the leader.
pub struct Cluster<S: Persist> {
    nodes: Vec<Node<S>>,
    queue: Vec<Message>,
}

impl<S: Persist> Cluster<S> {
    /// A new cluster with one node per store (each empty), its leader elected.
    pub fn new(stores: Vec<Arc<S>>) -> Cluster<S> {
        let ids: Vec<u64> = (1..=stores.len() as u64).collect();
        let nodes = stores
            .into_iter()
            .zip(&ids)
            .map(|(store, id)| {
                let config = Config {
                    election_tick: 10,
                    heartbeat_tick: 1,
                    max_inflight_msgs: 256,
                    ..Config::new(*id)
                };
                let mut raw = RawNode::new(&config, store.clone()).expect("new node");
                raw.bootstrap(&ids).expect("bootstrap");
                Node { raw, store, applied_entries: 0 }
            })
            .collect();
        let mut cluster = Cluster { nodes, queue: Vec::new() };
        cluster.stabilize();
        cluster.nodes[0].raw.campaign().expect("campaign");
        cluster.stabilize();
        assert_eq!(cluster.nodes[0].raw.status().soft_state.raft_state, StateRole::Leader);
        cluster
    }

    /// Proposes `data` to the leader and runs the cluster until it is quiet.
    pub fn propose_and_commit(&mut self, data: &Bytes) {
        let before = self.nodes[0].applied_entries;
        self.nodes[0].raw.propose(data.clone()).expect("propose");
        self.stabilize();
        assert_eq!(self.nodes[0].applied_entries, before + 1, "the entry committed and applied");
    }

    /// Handles Readies and delivers messages until no node has anything to do.
    fn stabilize(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let mut busy = false;
            for node in &mut self.nodes {
                if !node.raw.has_ready() {
                    continue;
                }
                busy = true;
                let mut rd = node.raw.ready();
                // Persist, then send, then apply, then advance.
                node.store.persist(&rd);
                self.queue.append(&mut rd.messages);
                for e in &rd.committed_entries {
                    match e.entry_type {
                        EntryType::ConfChange => {
                            let cc = ConfChange::decode(&e.data).expect("a membership change");
                            node.raw.apply_conf_change(cc);
                        }
                        EntryType::Normal if !e.data.is_empty() => node.applied_entries += 1,
                        _ => {}
                    }
                }
                node.raw.advance(rd);
            }
            for m in std::mem::take(&mut self.queue) {
                let to = m.to as usize - 1;
                self.nodes[to].raw.step(m).expect("step");
                busy = true;
            }
            if !busy {
                return;
            }
        }
        panic!("the cluster did not go quiet in {MAX_ROUNDS} rounds");
    }
}
