//! `MultiRaft` on three nodes in one process, batches handed from node to node in memory (no
//! encoding), every log in a temp directory under `SyncPolicy::Always`. One thread drives all
//! three nodes, so their fdatasyncs run one after another, in both variants alike.
//!
//! - `proposals`: 128-byte proposals to random groups of 1,000 (each at its leader, leaders
//!   spread over the nodes), [`PROPOSALS_PER_ROUND`] at a time, ready cycles run until the
//!   cluster is quiet. `multi_raft` puts every group of a node on one engine (one write and one
//!   fdatasync per node per cycle); `per_group_wal` is the same cluster with one `RawNode` over
//!   its own `WalStorage` per group, each Ready persisted (and synced) on its own storage.
//! - `idle`: 10,000 idle groups, one tick of every node and the cycles it causes per iteration,
//!   with quiescence and coalesced heartbeats (`quiesced`) and with every group ticking
//!   (`ticking`, `set_quiescence(false)`). The time reported is the thread's CPU time (Linux
//!   `/proc/thread-self/schedstat`; wall time elsewhere).
//!
//! Each prints, at its end, what criterion does not: fsyncs per second, and messages per tick.
//! `RAFTWAL_BENCH_QUICK=1` runs 100 groups for `proposals` and 1,000 for `idle`: setting up the
//! per-group baseline costs about ten fdatasyncs per group and node.

#![allow(missing_docs)] // criterion_group! defines an undocumented function.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use raftwal::raft::{ConfChange, Config, Message, MultiRaft, RawNode, StateRole};
use raftwal::rng::Rng;
use raftwal::{ConfState, EntryType, LogEngine, SyncPolicy, WalOptions, WalStorage};

/// Bytes of each proposed entry.
const PAYLOAD_BYTES: usize = 128;
/// Proposals in flight at once: the load of many clients, spread over random groups.
const PROPOSALS_PER_ROUND: usize = 64;
const NODES: [u64; 3] = [1, 2, 3];
/// Limit on ready/deliver rounds until the cluster is quiet; a round of proposals needs a
/// handful, an election a few more.
const MAX_ROUNDS: usize = 64;
/// Limit on ticks until every idle group is quiesced (the default waits 6 idle ticks).
const MAX_QUIESCE_TICKS: usize = 100;

fn quick() -> bool {
    std::env::var_os("RAFTWAL_BENCH_QUICK").is_some()
}

fn config(id: u64) -> Config {
    Config { election_tick: 10, heartbeat_tick: 1, max_inflight_msgs: 256, ..Config::new(id) }
}

/// The node each group's leader is elected on: spread evenly.
fn leader_of(group: u64) -> u64 {
    NODES[(group % NODES.len() as u64) as usize]
}

/// Whether `e` is a client's entry (not a membership change, not a leader's empty entry).
fn is_proposal(e: &raftwal::Entry) -> bool {
    e.entry_type == EntryType::Normal && !e.data.is_empty()
}

/// What a run of iterations did, summed over the runs criterion made.
#[derive(Default)]
struct Tally {
    elapsed: Duration,
    proposals: u64,
    syncs: u64,
    ticks: u64,
    batches: u64,
    items: u64,
}

/// Three `MultiRaft` nodes, each on its own engine.
struct MultiCluster {
    nodes: Vec<MultiRaft>,
    /// Client entries applied by their group's leader.
    applied: u64,
    /// Batches and their items delivered.
    batches: u64,
    items: u64,
    _dir: tempfile::TempDir,
}

impl MultiCluster {
    /// Groups `1..=groups` on every node, each leader elected.
    fn new(groups: u64) -> MultiCluster {
        let dir = common::temp_dir();
        let options = WalOptions { sync_policy: SyncPolicy::Always, ..WalOptions::default() };
        let nodes = NODES
            .iter()
            .map(|id| {
                let path = dir.path().join(format!("node{id}"));
                let engine = LogEngine::open(path, options.clone()).expect("open the engine");
                let mut node = MultiRaft::new(*id, engine).expect("new node");
                let voters = ConfState { voters: NODES.to_vec(), ..ConfState::default() };
                for g in 1..=groups {
                    node.create_group(g, config(*id), Some(voters.clone())).expect("create");
                }
                node
            })
            .collect();
        let mut c = MultiCluster { nodes, applied: 0, batches: 0, items: 0, _dir: dir };
        // A node campaigns only once its bootstrap entries are applied.
        c.stabilize();
        for g in 1..=groups {
            c.node(leader_of(g)).campaign(g).expect("campaign");
        }
        c.stabilize();
        for g in 1..=groups {
            let st = c.nodes[0].status(g).expect("hosted");
            assert_eq!(st.leader, leader_of(g), "group {g} elected its leader");
        }
        c
    }

    fn node(&mut self, id: u64) -> &mut MultiRaft {
        &mut self.nodes[id as usize - 1]
    }

    /// Cycles and delivers until no node has anything to do. One `has_ready` per node per round,
    /// as an application calls it after each tick.
    fn stabilize(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let mut busy = false;
            let mut batches = Vec::new();
            for node in &mut self.nodes {
                if !node.has_ready() {
                    continue;
                }
                busy = true;
                let id = node.id();
                let rd = node.ready().expect("ready");
                for g in &rd.groups {
                    if leader_of(g.group) == id {
                        self.applied +=
                            g.committed_entries.iter().filter(|e| is_proposal(e)).count() as u64;
                    }
                }
                batches.extend(rd.batches);
            }
            if !busy {
                return;
            }
            for b in batches {
                self.batches += 1;
                self.items += b.item_count() as u64;
                let to = b.to as usize - 1;
                self.nodes[to].step(b).expect("step");
            }
        }
        panic!("the cluster did not go quiet within {MAX_ROUNDS} rounds");
    }

    fn propose_and_commit(&mut self, rng: &mut Rng, groups: u64, data: &Bytes) {
        let before = self.applied;
        for _ in 0..PROPOSALS_PER_ROUND {
            let g = 1 + rng.below(groups);
            self.node(leader_of(g)).propose(g, data.clone()).expect("propose");
        }
        self.stabilize();
        assert_eq!(self.applied, before + PROPOSALS_PER_ROUND as u64, "every proposal applied");
    }

    fn syncs(&self) -> u64 {
        self.nodes.iter().map(|n| n.engine().metrics().syncs).sum()
    }

    fn tick(&mut self) {
        for node in &mut self.nodes {
            node.tick();
        }
        self.stabilize();
    }

    fn all_quiesced(&self, groups: u64) -> bool {
        self.nodes.iter().all(|n| (1..=groups).all(|g| n.is_quiesced(g)))
    }
}

/// One group on one node: its own `RawNode` over its own `WalStorage`.
struct Replica {
    raw: RawNode<Arc<WalStorage>>,
    store: Arc<WalStorage>,
}

/// The same cluster as [`MultiCluster`], with one storage per group and node.
struct PerGroupCluster {
    /// `nodes[node - 1][group - 1]`.
    nodes: Vec<Vec<Replica>>,
    applied: u64,
    /// Messages to deliver, with their group.
    queue: Vec<(u64, Message)>,
    _dir: tempfile::TempDir,
}

impl PerGroupCluster {
    fn new(groups: u64) -> PerGroupCluster {
        let dir = common::temp_dir();
        let options = WalOptions {
            sync_policy: SyncPolicy::Always,
            // Thousands of logs: small segments (no group fills one here) and no preparing
            // thread per log.
            segment_size_bytes: 256 << 10,
            prepare_in_background: false,
            ..WalOptions::default()
        };
        let nodes = NODES
            .iter()
            .map(|id| {
                (1..=groups)
                    .map(|g| {
                        let path = dir.path().join(format!("node{id}/group{g}"));
                        let store = Arc::new(open_wal(&path, &options));
                        let mut raw = RawNode::new(&config(*id), store.clone()).expect("new node");
                        raw.bootstrap(NODES).expect("bootstrap");
                        Replica { raw, store }
                    })
                    .collect()
            })
            .collect();
        let mut c = PerGroupCluster { nodes, applied: 0, queue: Vec::new(), _dir: dir };
        c.stabilize();
        for g in 1..=groups {
            c.replica(leader_of(g), g).raw.campaign().expect("campaign");
        }
        c.stabilize();
        for g in 1..=groups {
            let role = c.replica(leader_of(g), g).raw.status().soft_state.raft_state;
            assert_eq!(role, StateRole::Leader, "group {g} elected its leader");
        }
        c
    }

    fn replica(&mut self, node: u64, group: u64) -> &mut Replica {
        &mut self.nodes[node as usize - 1][group as usize - 1]
    }

    /// Persists (one save, one fdatasync), sends, applies and advances every Ready, and
    /// delivers, until no replica has anything to do.
    fn stabilize(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let mut busy = false;
            for (node, replicas) in self.nodes.iter_mut().enumerate() {
                let id = node as u64 + 1;
                for (k, r) in replicas.iter_mut().enumerate() {
                    if !r.raw.has_ready() {
                        continue;
                    }
                    busy = true;
                    let group = k as u64 + 1;
                    let mut rd = r.raw.ready();
                    if let Some(s) = &rd.snapshot {
                        r.store.apply_snapshot(s.clone()).expect("apply snapshot");
                    }
                    r.store.save(rd.hard_state.as_ref(), &rd.entries).expect("save");
                    self.queue.extend(rd.messages.drain(..).map(|m| (group, m)));
                    for e in &rd.committed_entries {
                        if e.entry_type == EntryType::ConfChange {
                            let cc = ConfChange::decode(&e.data).expect("a membership change");
                            r.raw.apply_conf_change(cc);
                        } else if is_proposal(e) && leader_of(group) == id {
                            self.applied += 1;
                        }
                    }
                    r.raw.advance(rd);
                }
            }
            for (group, m) in std::mem::take(&mut self.queue) {
                busy = true;
                let to = m.to;
                self.replica(to, group).raw.step(m).expect("step");
            }
            if !busy {
                return;
            }
        }
        panic!("the cluster did not go quiet within {MAX_ROUNDS} rounds");
    }

    fn propose_and_commit(&mut self, rng: &mut Rng, groups: u64, data: &Bytes) {
        let before = self.applied;
        for _ in 0..PROPOSALS_PER_ROUND {
            let g = 1 + rng.below(groups);
            self.replica(leader_of(g), g).raw.propose(data.clone()).expect("propose");
        }
        self.stabilize();
        assert_eq!(self.applied, before + PROPOSALS_PER_ROUND as u64, "every proposal applied");
    }

    fn syncs(&self) -> u64 {
        self.nodes.iter().flatten().map(|r| r.store.metrics().syncs).sum()
    }
}

fn open_wal(path: &Path, options: &WalOptions) -> WalStorage {
    WalStorage::open(path, options.clone()).expect("open the log")
}

fn report_proposals(name: &str, t: &Tally) {
    let secs = t.elapsed.as_secs_f64();
    if secs == 0.0 {
        return;
    }
    eprintln!(
        "proposals/{name}: {:.0} proposals/s, {:.0} fsyncs/s, {:.3} fsyncs per proposal \
         ({} proposals in {secs:.2} s)",
        t.proposals as f64 / secs,
        t.syncs as f64 / secs,
        t.syncs as f64 / t.proposals.max(1) as f64,
        t.proposals,
    );
}

fn proposals(c: &mut Criterion) {
    let groups: u64 = if quick() { 100 } else { 1_000 };
    let data = common::payload(PAYLOAD_BYTES);
    let mut group = c.benchmark_group("proposals");
    // An iteration of the per-group cluster takes hundreds of fdatasyncs: as few as criterion
    // allows.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(PROPOSALS_PER_ROUND as u64));

    // Each cluster is set up on the first call of its bench's closure: a filtered run skips
    // it.
    let mut cluster = None;
    let mut rng = Rng::new(1);
    let mut tally = Tally::default();
    group.bench_function(BenchmarkId::new("multi_raft", groups), |b| {
        let cluster = cluster.get_or_insert_with(|| MultiCluster::new(groups));
        b.iter_custom(|iters| {
            let syncs = cluster.syncs();
            let start = Instant::now();
            for _ in 0..iters {
                cluster.propose_and_commit(&mut rng, groups, &data);
            }
            let elapsed = start.elapsed();
            tally.elapsed += elapsed;
            tally.proposals += iters * PROPOSALS_PER_ROUND as u64;
            tally.syncs += cluster.syncs() - syncs;
            elapsed
        })
    });
    drop(cluster);
    let multi = tally;

    let mut cluster = None;
    let mut tally = Tally::default();
    group.bench_function(BenchmarkId::new("per_group_wal", groups), |b| {
        let cluster = cluster.get_or_insert_with(|| PerGroupCluster::new(groups));
        b.iter_custom(|iters| {
            let syncs = cluster.syncs();
            let start = Instant::now();
            for _ in 0..iters {
                cluster.propose_and_commit(&mut rng, groups, &data);
            }
            let elapsed = start.elapsed();
            tally.elapsed += elapsed;
            tally.proposals += iters * PROPOSALS_PER_ROUND as u64;
            tally.syncs += cluster.syncs() - syncs;
            elapsed
        })
    });
    group.finish();
    report_proposals(&format!("multi_raft/{groups}"), &multi);
    report_proposals(&format!("per_group_wal/{groups}"), &tally);
}

/// CPU time of this thread, where the platform tells it; otherwise `None`.
fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Runs `f` and returns the CPU time it took (wall time where the CPU time is unknown).
fn cpu_time_of(f: impl FnOnce()) -> Duration {
    let wall = Instant::now();
    let cpu = thread_cpu_time();
    f();
    match (cpu, thread_cpu_time()) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => wall.elapsed(),
    }
}

fn report_idle(name: &str, t: &Tally) {
    if t.ticks == 0 {
        return;
    }
    let per_tick = t.elapsed / t.ticks as u32;
    // One tick every 100 ms (heartbeat_tick 1, election_tick 10: etcd's defaults), so ten per
    // second; the cluster's CPU time split over its three nodes.
    let core_per_node = per_tick.as_secs_f64() * 10.0 / NODES.len() as f64;
    eprintln!(
        "idle/{name}: {:.3} us CPU per tick of 3 nodes, {:.2e} % of one core per node at 10 \
         ticks/s, {:.2} batches and {:.1} items per tick ({} ticks)",
        per_tick.as_secs_f64() * 1e6,
        core_per_node * 100.0,
        t.batches as f64 / t.ticks as f64,
        t.items as f64 / t.ticks as f64,
        t.ticks,
    );
}

/// `groups` groups on three nodes, every one quiesced.
fn quiesced_cluster(groups: u64) -> MultiCluster {
    let mut cluster = MultiCluster::new(groups);
    for _ in 0..MAX_QUIESCE_TICKS {
        if cluster.all_quiesced(groups) {
            break;
        }
        cluster.tick();
    }
    assert!(cluster.all_quiesced(groups), "every group quiesced within {MAX_QUIESCE_TICKS} ticks");
    cluster
}

fn idle(c: &mut Criterion) {
    let groups: u64 = if quick() { 1_000 } else { 10_000 };
    let mut group = c.benchmark_group("idle");
    group.throughput(Throughput::Elements(1));
    // Set up on the first call of a bench's closure (a filtered run skips it), shared by both.
    let mut cluster = None;
    let mut tallies = Vec::new();
    for (name, quiescence) in [("quiesced", true), ("ticking", false)] {
        let mut tally = Tally::default();
        let mut configured = false;
        group.bench_function(BenchmarkId::new(name, groups), |b| {
            let cluster = cluster.get_or_insert_with(|| quiesced_cluster(groups));
            if !configured {
                configured = true;
                for node in &mut cluster.nodes {
                    node.set_quiescence(quiescence);
                }
                // Delivers the wakes of turning quiescence off.
                cluster.stabilize();
            }
            b.iter_custom(|iters| {
                let (batches, items) = (cluster.batches, cluster.items);
                let cpu = cpu_time_of(|| {
                    for _ in 0..iters {
                        cluster.tick();
                    }
                });
                tally.elapsed += cpu;
                tally.ticks += iters;
                tally.batches += cluster.batches - batches;
                tally.items += cluster.items - items;
                cpu
            })
        });
        if let Some(cluster) = &cluster
            && quiescence
        {
            assert!(cluster.all_quiesced(groups), "idle groups stayed quiesced");
        }
        tallies.push((format!("{name}/{groups}"), tally));
    }
    group.finish();
    for (name, tally) in &tallies {
        report_idle(name, tally);
    }
}

criterion_group! { name = benches; config = common::criterion(); targets = proposals, idle }
criterion_main!(benches);
