//! raftwal's Raft core against raft-rs 0.7 on the same cycle (feature `raft-rs`): a client
//! proposes one entry to the leader, every node persists its Ready to an in-memory storage
//! (raftwal's `MemoryStorage`, raft-rs's `MemStorage`), messages are handed over in memory,
//! committed entries applied, nodes advanced, until the cluster is quiet. One and three voters.
//! After criterion's figures it prints the time ratio raftwal / raft-rs of interleaved rounds.

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cycle::Cluster;
use criterion::{BenchmarkId, Criterion, criterion_group};
use raft::eraftpb::{ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use raftwal::MemoryStorage;
use raftwal::adapters::raft_rs::slog;

/// Bytes of each proposed entry.
const PAYLOAD_BYTES: usize = 128;
/// Limit on Ready/deliver rounds of one cycle.
const MAX_ROUNDS: usize = 64;
/// Cycles per round of the ratio measurement, and rounds (alternating the two cores).
const RATIO_CYCLES: usize = 2_000;
const RATIO_ROUNDS: usize = 5;

struct RsNode {
    raw: RawNode<MemStorage>,
    store: MemStorage,
    applied_entries: u64,
}

/// The same cluster on raft-rs, driven by raft-rs's documented Ready loop.
struct RsCluster {
    nodes: Vec<RsNode>,
    queue: Vec<Message>,
}

impl RsCluster {
    fn new(voters: u64) -> RsCluster {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let ids: Vec<u64> = (1..=voters).collect();
        let nodes = ids
            .iter()
            .map(|id| {
                let store = MemStorage::new_with_conf_state(ConfState::from((ids.clone(), vec![])));
                let config = Config {
                    id: *id,
                    election_tick: 10,
                    heartbeat_tick: 1,
                    max_inflight_msgs: 256,
                    ..Config::default()
                };
                let raw = RawNode::new(&config, store.clone(), &logger).expect("new node");
                RsNode { raw, store, applied_entries: 0 }
            })
            .collect();
        let mut cluster = RsCluster { nodes, queue: Vec::new() };
        cluster.nodes[0].raw.campaign().expect("campaign");
        cluster.stabilize();
        assert_eq!(cluster.nodes[0].raw.raft.state, StateRole::Leader);
        cluster
    }

    fn propose_and_commit(&mut self, data: &Bytes) {
        let before = self.nodes[0].applied_entries;
        self.nodes[0].raw.propose(Vec::new(), data.to_vec()).expect("propose");
        self.stabilize();
        assert_eq!(self.nodes[0].applied_entries, before + 1, "the entry committed and applied");
    }

    fn stabilize(&mut self) {
        fn apply(node: &mut RsNode, entries: Vec<Entry>) {
            for e in entries {
                if e.get_entry_type() == EntryType::EntryNormal && !e.get_data().is_empty() {
                    node.applied_entries += 1;
                }
            }
        }
        for _ in 0..MAX_ROUNDS {
            let mut busy = false;
            for node in &mut self.nodes {
                if !node.raw.has_ready() {
                    continue;
                }
                busy = true;
                let mut rd = node.raw.ready();
                // Messages raft-rs allows to go before persisting (a leader's appends).
                self.queue.extend(rd.take_messages());
                if !rd.snapshot().is_empty() {
                    node.store.wl().apply_snapshot(rd.snapshot().clone()).expect("snapshot");
                }
                apply(node, rd.take_committed_entries());
                node.store.wl().append(rd.entries()).expect("append");
                if let Some(hs) = rd.hs() {
                    node.store.wl().set_hardstate(hs.clone());
                }
                self.queue.extend(rd.take_persisted_messages());
                let mut light = node.raw.advance(rd);
                if let Some(commit) = light.commit_index() {
                    node.store.wl().mut_hard_state().set_commit(commit);
                }
                self.queue.extend(light.take_messages());
                apply(node, light.take_committed_entries());
                node.raw.advance_apply();
            }
            for m in std::mem::take(&mut self.queue) {
                let to = m.get_to() as usize - 1;
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

fn raftwal_cluster(voters: usize) -> Cluster<MemoryStorage> {
    Cluster::new((0..voters).map(|_| Arc::new(MemoryStorage::new())).collect())
}

fn raft_cycle_vs_raft_rs(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_cycle_vs_raft_rs");
    let data = common::payload(PAYLOAD_BYTES);
    for voters in [1usize, 3] {
        let mut ours = raftwal_cluster(voters);
        group.bench_function(BenchmarkId::new("raftwal", voters), |b| {
            b.iter(|| ours.propose_and_commit(&data))
        });
        let mut theirs = RsCluster::new(voters as u64);
        group.bench_function(BenchmarkId::new("raft-rs", voters), |b| {
            b.iter(|| theirs.propose_and_commit(&data))
        });
    }
    group.finish();
}

/// The ratio of raftwal's time to raft-rs's on the cycle, from interleaved rounds on fresh
/// clusters (the median round of each).
fn print_ratio() {
    let data = common::payload(PAYLOAD_BYTES);
    for voters in [1usize, 3] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..RATIO_ROUNDS {
            let mut cluster = raftwal_cluster(voters);
            let start = Instant::now();
            for _ in 0..RATIO_CYCLES {
                cluster.propose_and_commit(&data);
            }
            ours.push(start.elapsed());
            let mut cluster = RsCluster::new(voters as u64);
            let start = Instant::now();
            for _ in 0..RATIO_CYCLES {
                cluster.propose_and_commit(&data);
            }
            theirs.push(start.elapsed());
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (a, b) = (median(&mut ours), median(&mut theirs));
        let per = |d: Duration| d.as_nanos() as f64 / RATIO_CYCLES as f64 / 1000.0;
        println!(
            "ratio {voters} voter(s): raftwal {:.2} us/cycle, raft-rs {:.2} us/cycle, \
             raftwal / raft-rs = {:.2}",
            per(a),
            per(b),
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
}

criterion_group! { name = benches; config = common::criterion(); targets = raft_cycle_vs_raft_rs }

fn main() {
    benches();
    // Not under `cargo test --benches`, which runs each bench once as a smoke test.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        print_ratio();
    }
    Criterion::default().configure_from_args().final_summary();
}
