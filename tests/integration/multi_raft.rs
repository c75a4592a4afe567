//! `MultiRaft`: many groups per node on one `LogEngine`, over an in-process network of three
//! nodes, each on its own engine over its own `CrashFs`. Every batch crosses the network as
//! bytes (`Batch::encode` / `decode`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use raftwal::io::{CrashFs, Fs};
use raftwal::raft::{
    Batch, ConfChange, ConfChangeType, Config, Heartbeat, MultiRaft, ReadOnlyOption, StateRole,
};
use raftwal::rng::Rng;
use raftwal::{ConfState, EntryType, LogEngine, Storage, SyncPolicy, WalOptions};

/// Limit on delivery rounds in `stabilize`; a correct cluster goes quiet long before.
const MAX_ROUNDS: usize = 1_000;
/// Limit on ticks while waiting for something that needs a few election timeouts.
const MAX_TICKS: usize = 200;

const NODES: [u64; 3] = [1, 2, 3];

fn options() -> WalOptions {
    WalOptions {
        // Large enough that no test rolls a segment over (a seal is a sync of its own).
        segment_size_bytes: 4 << 20,
        prepare_in_background: false,
        ..WalOptions::default()
    }
}

fn open_engine(fs: &CrashFs, id: u64, options: &WalOptions) -> LogEngine {
    let shared: Fs = Arc::new(fs.clone());
    LogEngine::open_with_fs(shared, Path::new(&format!("/node{id}")), options.clone()).unwrap()
}

fn config(id: u64) -> Config {
    Config { id, election_tick: 10, heartbeat_tick: 1, seed: 7, ..Config::default() }
}

fn voters() -> ConfState {
    ConfState { voters: NODES.to_vec(), ..ConfState::default() }
}

/// A committed entry as handed out: index, term, data.
type Committed = (u64, u64, Bytes);

struct Cluster {
    nodes: BTreeMap<u64, MultiRaft>,
    /// Each node's file system, kept across restarts.
    fs: BTreeMap<u64, CrashFs>,
    options: WalOptions,
    /// Every group's configuration but the id.
    template: Config,
    /// Every committed entry handed out, per (node, group): index, term and data.
    committed: BTreeMap<(u64, u64), Vec<Committed>>,
    /// Nodes cut off from every other.
    isolated: BTreeSet<u64>,
    /// Payloads of applied normal entries, per (node, group).
    applied: BTreeMap<(u64, u64), Vec<Bytes>>,
    /// Confirmed reads, per (node, group).
    reads: BTreeMap<(u64, u64), Vec<Bytes>>,
    /// Snapshots installed, per (node, group): index and data.
    snapshots: BTreeMap<(u64, u64), Vec<(u64, Bytes)>>,
    /// Drops the quiesce heartbeats of the next batch for this node that has any.
    lose_quiesce_to: Option<u64>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with_options(options())
    }

    fn with_options(options: WalOptions) -> Cluster {
        let mut nodes = BTreeMap::new();
        let mut fs = BTreeMap::new();
        for id in NODES {
            fs.insert(id, CrashFs::new());
            nodes.insert(id, MultiRaft::new(id, open_engine(&fs[&id], id, &options)).unwrap());
        }
        Cluster {
            nodes,
            fs,
            options,
            template: config(0),
            committed: BTreeMap::new(),
            isolated: BTreeSet::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            lose_quiesce_to: None,
        }
    }

    /// Groups `groups` on every node, all with the three nodes as voters.
    fn create(&mut self, groups: impl IntoIterator<Item = u64> + Clone) {
        for (id, node) in self.nodes.iter_mut() {
            for g in groups.clone() {
                let cfg = Config { id: *id, ..self.template.clone() };
                node.create_group(g, cfg, Some(voters())).unwrap();
            }
        }
    }

    /// Cuts node `id`'s power (unsynced writes lost or kept as `seed` picks) and restarts it
    /// with every group its engine holds.
    fn power_cut(&mut self, id: u64, seed: u64) {
        drop(self.nodes.remove(&id));
        self.fs[&id].crash(seed);
        let mut node = MultiRaft::new(id, open_engine(&self.fs[&id], id, &self.options)).unwrap();
        for g in node.engine().group_ids() {
            node.create_group(g, Config { id, ..self.template.clone() }, None).unwrap();
        }
        self.nodes.insert(id, node);
        // Applied nothing yet: the restarted node is handed its committed entries again.
        self.applied.retain(|(node, _), _| *node != id);
        self.committed.retain(|(node, _), _| *node != id);
    }

    fn node(&mut self, id: u64) -> &mut MultiRaft {
        self.nodes.get_mut(&id).unwrap()
    }

    /// One ready cycle on every node with something to do; the batches they handed out,
    /// through their encoding.
    fn cycle(&mut self) -> Vec<Batch> {
        let mut out = Vec::new();
        for (id, node) in self.nodes.iter_mut() {
            if !node.has_ready() {
                continue;
            }
            let rd = node.ready().unwrap();
            for g in rd.groups {
                if let Some(snap) = &g.snapshot {
                    let installed = (snap.metadata.index, snap.data.clone());
                    self.snapshots.entry((*id, g.group)).or_default().push(installed);
                }
                let committed = self.committed.entry((*id, g.group)).or_default();
                committed
                    .extend(g.committed_entries.iter().map(|e| (e.index, e.term, e.data.clone())));
                for e in &g.committed_entries {
                    if e.entry_type == EntryType::Normal && !e.data.is_empty() {
                        self.applied.entry((*id, g.group)).or_default().push(e.data.clone());
                    }
                }
                for rs in g.read_states {
                    self.reads.entry((*id, g.group)).or_default().push(rs.request_ctx);
                }
            }
            for b in rd.batches {
                assert_eq!(b.from, *id);
                out.push(Batch::decode(&b.encode()).unwrap());
            }
        }
        out
    }

    fn deliver(&mut self, batches: Vec<Batch>) {
        for mut b in batches {
            if self.lose_quiesce_to == Some(b.to) && b.heartbeats.iter().any(|hb| hb.quiesce) {
                b.heartbeats.retain(|hb| !hb.quiesce);
                self.lose_quiesce_to = None;
            }
            if self.isolated.contains(&b.from) || self.isolated.contains(&b.to) {
                continue;
            }
            self.nodes.get_mut(&b.to).unwrap().step(b).unwrap();
        }
    }

    /// Cycles and delivers until no node has anything to do.
    fn stabilize(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let batches = self.cycle();
            if batches.is_empty() && self.nodes.values().all(|n| !n.has_ready()) {
                return;
            }
            self.deliver(batches);
        }
        panic!("the cluster did not go quiet within {MAX_ROUNDS} rounds");
    }

    fn tick_all(&mut self) {
        for node in self.nodes.values_mut() {
            node.tick();
        }
    }

    fn elect(&mut self, group: u64, leader: u64) {
        // A node campaigns only once its bootstrap entries are applied.
        self.stabilize();
        self.node(leader).campaign(group).unwrap();
        self.stabilize();
        for id in NODES {
            let st = self.nodes[&id].status(group).unwrap();
            assert_eq!(st.leader, leader, "group {group} on node {id}");
        }
    }

    fn applied(&self, node: u64, group: u64) -> Vec<Bytes> {
        self.applied.get(&(node, group)).cloned().unwrap_or_default()
    }

    fn all_quiesced(&self, groups: &[u64], nodes: &[u64]) -> bool {
        nodes.iter().all(|n| groups.iter().all(|g| self.nodes[n].is_quiesced(*g)))
    }

    /// Ticks (delivering everything after each tick) until every group is quiesced on every
    /// node.
    fn quiesce(&mut self, groups: &[u64]) {
        for _ in 0..MAX_TICKS {
            if self.all_quiesced(groups, &NODES) {
                return;
            }
            self.tick_all();
            self.stabilize();
        }
        panic!("groups {groups:?} did not quiesce within {MAX_TICKS} ticks");
    }
}

fn leader_of(group: u64) -> u64 {
    NODES[(group % 3) as usize]
}

#[test]
fn groups_on_one_engine_elect_replicate_and_report_status() {
    let mut c = Cluster::new();
    let groups: Vec<u64> = (1..=6).collect();
    c.create(groups.clone());
    for g in &groups {
        c.elect(*g, leader_of(*g));
    }
    for g in &groups {
        c.node(leader_of(*g)).propose(*g, format!("v{g}")).unwrap();
    }
    c.stabilize();
    for id in NODES {
        assert_eq!(c.nodes[&id].engine().group_ids(), groups, "node {id} stores every group");
        for g in &groups {
            assert_eq!(
                c.applied(id, *g),
                vec![Bytes::from(format!("v{g}"))],
                "node {id} group {g}"
            );
            let st = c.nodes[&id].status(*g).unwrap();
            // Indexes 1 to 3: the membership (term 1); 4: the new leader's empty entry (term 2);
            // 5: the proposal.
            assert_eq!(st.leader, leader_of(*g));
            assert_eq!(
                st.role,
                if id == leader_of(*g) { StateRole::Leader } else { StateRole::Follower }
            );
            assert_eq!(st.term, 2);
            assert_eq!(st.commit, 5);
            assert_eq!(st.applied, 5);
            assert_eq!(st.first_index, 1);
            assert_eq!(st.last_index, 5);
        }
    }
}

#[test]
fn one_sync_per_cycle_whatever_the_number_of_groups() {
    // The write syncs (Always), or the cycle syncs once after it (Never).
    for policy in [SyncPolicy::Always, SyncPolicy::Never] {
        one_sync_per_cycle(policy);
    }
}

fn one_sync_per_cycle(policy: SyncPolicy) {
    let mut c = Cluster::with_options(WalOptions { sync_policy: policy, ..options() });
    let groups: Vec<u64> = (1..=16).collect();
    c.create(groups.clone());
    for g in &groups {
        c.elect(*g, 1);
    }
    for g in &groups {
        c.node(1).propose(*g, format!("p{g}")).unwrap();
    }
    let before = c.nodes[&1].engine().metrics();
    let rd = c.node(1).ready().unwrap();
    let after = c.nodes[&1].engine().metrics();
    assert_eq!(after.syncs - before.syncs, 1, "{policy:?}: one sync for the 16 groups' entries");
    assert_eq!(after.entries_written - before.entries_written, 16);
    assert_eq!(rd.batches.len(), 2, "one batch per follower node");
    for b in &rd.batches {
        assert_eq!(b.messages.len(), 16, "an append per group in the batch for node {}", b.to);
    }
    // The followers append the 16 groups' entries with one sync each, and answer in one
    // batch.
    for b in rd.batches {
        let to = b.to;
        c.node(to).step(Batch::decode(&b.encode()).unwrap()).unwrap();
        let before = c.nodes[&to].engine().metrics();
        let rd = c.node(to).ready().unwrap();
        let after = c.nodes[&to].engine().metrics();
        assert_eq!(after.syncs - before.syncs, 1, "{policy:?}: node {to}");
        assert_eq!(after.entries_written - before.entries_written, 16, "node {to}");
        assert_eq!(rd.batches.len(), 1, "node {to} answers node 1 in one batch");
        assert_eq!(rd.batches[0].messages.len(), 16);
        c.deliver(rd.batches);
    }
    c.stabilize();
    for id in NODES {
        for g in &groups {
            assert_eq!(c.applied(id, *g), vec![Bytes::from(format!("p{g}"))]);
        }
    }
}

/// Batches and items sent in one heartbeat round (tick, heartbeats, answers) of `count`
/// groups led round-robin by the three nodes, quiescence off.
fn heartbeat_round(count: u64) -> (usize, usize, usize, usize) {
    let mut c = Cluster::new();
    let groups: Vec<u64> = (1..=count).collect();
    c.create(groups.clone());
    for node in c.nodes.values_mut() {
        node.set_quiescence(false);
    }
    for g in &groups {
        c.elect(*g, leader_of(*g));
    }
    c.tick_all();
    let beats = c.cycle();
    let beat_batches = beats.len();
    let heartbeats: usize = beats.iter().map(|b| b.heartbeats.len()).sum();
    assert!(beats.iter().all(|b| b.messages.is_empty() && b.heartbeat_resps.is_empty()));
    c.deliver(beats);
    let answers = c.cycle();
    let answer_batches = answers.len();
    let resps: usize = answers.iter().map(|b| b.heartbeat_resps.len()).sum();
    assert!(answers.iter().all(|b| b.messages.is_empty() && b.heartbeats.is_empty()));
    c.deliver(answers);
    assert!(c.cycle().is_empty(), "caught-up followers need nothing more");
    (beat_batches, heartbeats, answer_batches, resps)
}

#[test]
fn heartbeats_cost_one_batch_per_node_pair_whatever_the_number_of_groups() {
    // Every node leads some groups: each sends one batch to each other node, and each answers
    // with one batch, for 3 groups as for 60.
    assert_eq!(heartbeat_round(3), (6, 6, 6, 6));
    assert_eq!(heartbeat_round(60), (6, 120, 6, 120));
}

#[test]
fn an_idle_group_quiesces_stays_silent_and_wakes_for_work() {
    let mut c = Cluster::new();
    let groups: Vec<u64> = (1..=6).collect();
    c.create(groups.clone());
    for g in &groups {
        c.elect(*g, leader_of(*g));
    }
    c.quiesce(&groups);
    let terms: Vec<u64> = groups.iter().map(|g| c.nodes[&1].status(*g).unwrap().term).collect();
    // Quiesced: ticks send nothing at all, and nobody campaigns.
    for _ in 0..5 * 10 {
        c.tick_all();
        assert!(c.cycle().is_empty(), "a tick of quiesced groups sent something");
    }
    for g in &groups {
        assert_eq!(c.nodes[&2].status(*g).unwrap().term, terms[(*g - 1) as usize]);
    }
    // A proposal at the leader wakes the group and commits everywhere.
    c.node(leader_of(2)).propose(2, "woken").unwrap();
    assert!(!c.nodes[&leader_of(2)].is_quiesced(2));
    c.stabilize();
    for id in NODES {
        assert_eq!(c.applied(id, 2), vec![Bytes::from("woken")], "node {id}");
    }
    // A proposal at a follower is forwarded, and the forwarded proposal wakes the leader.
    let follower = NODES.iter().copied().find(|n| *n != leader_of(3)).unwrap();
    c.node(follower).propose(3, "forwarded").unwrap();
    c.stabilize();
    for id in NODES {
        assert_eq!(c.applied(id, 3), vec![Bytes::from("forwarded")], "node {id}");
    }
    // The other groups slept through it.
    for g in [1, 4, 5, 6] {
        assert!(c.all_quiesced(&[g], &NODES), "group {g}");
    }
    // A read wakes a quiesced leader, is confirmed by a heartbeat round, and the group then
    // quiesces again.
    c.quiesce(&groups);
    c.node(leader_of(4)).read_index(4, "r").unwrap();
    c.stabilize();
    c.tick_all();
    c.stabilize();
    assert_eq!(c.reads.get(&(leader_of(4), 4)), Some(&vec![Bytes::from("r")]));
    c.quiesce(&groups);
}

#[test]
fn lease_based_groups_never_quiesce() {
    let mut c = Cluster::new();
    for (id, node) in c.nodes.iter_mut() {
        let cfg = Config {
            check_quorum: true,
            read_only_option: ReadOnlyOption::LeaseBased,
            ..config(*id)
        };
        node.create_group(1, cfg, Some(voters())).unwrap();
        node.create_group(2, config(*id), Some(voters())).unwrap();
    }
    c.elect(1, 1);
    c.elect(2, 1);
    c.quiesce(&[2]);
    for _ in 0..30 {
        c.tick_all();
        c.stabilize();
        assert!(!c.nodes[&1].is_quiesced(1), "a leader trusting its lease must keep its clock");
    }
    assert_eq!(c.nodes[&2].status(1).unwrap().leader, 1);
}

/// Groups each node's `tick` and `ready` looked at so far.
fn visits(c: &Cluster) -> BTreeMap<u64, u64> {
    c.nodes.iter().map(|(id, n)| (*id, n.stats().group_visits)).collect()
}

/// Groups `tick` and `ready` looked at on each node since `before`.
fn visits_since(c: &Cluster, before: &BTreeMap<u64, u64>) -> BTreeMap<u64, u64> {
    visits(c).into_iter().map(|(id, v)| (id, v - before[&id])).collect()
}

#[test]
fn ticks_and_cycles_visit_no_quiesced_group_and_a_message_wakes_one() {
    let mut c = Cluster::new();
    let groups: Vec<u64> = (1..=12).collect();
    c.create(groups.clone());
    for g in &groups {
        c.elect(*g, leader_of(*g));
    }
    c.quiesce(&groups);
    // Three election timeouts of ticks and cycles: no group looked at, nothing to do.
    let before = visits(&c);
    for _ in 0..3 * 10 {
        c.tick_all();
        for id in NODES {
            assert!(!c.nodes[&id].has_ready(), "node {id} has a Ready with every group quiesced");
        }
        c.stabilize();
    }
    let none: BTreeMap<u64, u64> = NODES.iter().map(|id| (*id, 0)).collect();
    assert_eq!(visits_since(&c, &before), none);
    assert!(c.all_quiesced(&groups, &NODES));

    // A proposal at a follower of group 5: the follower alone has one group to look at.
    let (group, leader) = (5, leader_of(5));
    let follower = NODES.iter().copied().find(|n| *n != leader).unwrap();
    c.node(follower).propose(group, "via a message").unwrap();
    let before = visits(&c);
    c.tick_all();
    let mut one_on_follower = none.clone();
    one_on_follower.insert(follower, 1);
    assert_eq!(visits_since(&c, &before), one_on_follower, "a tick after the proposal");
    // The forwarded proposal is a message that wakes the quiesced leader: it then ticks that
    // one group and no other.
    let batches = c.cycle();
    assert!(c.nodes[&leader].is_quiesced(group), "woken before the message arrived");
    c.deliver(batches);
    assert!(!c.nodes[&leader].is_quiesced(group), "the forwarded proposal wakes the leader");
    let before = visits(&c);
    c.node(leader).tick();
    assert_eq!(visits_since(&c, &before)[&leader], 1, "the leader ticks the woken group alone");
    c.stabilize();
    for id in NODES {
        assert_eq!(c.applied(id, group), vec![Bytes::from("via a message")], "node {id}");
    }
    for g in groups.iter().filter(|g| **g != group) {
        assert!(c.all_quiesced(&[*g], &NODES), "group {g} slept through it");
    }
    // Quiesced again, the group leaves the walks too.
    c.quiesce(&groups);
    c.stabilize();
    let before = visits(&c);
    c.tick_all();
    c.stabilize();
    assert_eq!(visits_since(&c, &before), none);
}

#[test]
fn a_change_made_through_raw_node_to_a_quiesced_group_is_handed_out() {
    let mut c = Cluster::new();
    c.create([1, 2]);
    c.elect(1, 1);
    c.elect(2, 1);
    c.quiesce(&[1, 2]);
    let term = c.nodes[&2].status(2).unwrap().term;
    // No wake: the group stays quiesced, but the cycle must still send its vote requests.
    c.node(2).raw_node(2).unwrap().campaign().unwrap();
    assert!(c.nodes[&2].is_quiesced(2));
    assert!(c.nodes[&2].has_ready(), "the campaign's Ready is not seen");
    c.stabilize();
    for id in NODES {
        let st = c.nodes[&id].status(2).unwrap();
        assert_eq!((st.leader, st.term), (2, term + 1), "node {id}");
    }
}

#[test]
fn a_partitioned_leader_of_a_quiesced_group_is_replaced_once_reported() {
    let mut c = Cluster::new();
    let groups = [1, 2, 3];
    c.create(groups);
    for g in groups {
        c.elect(g, 1);
    }
    c.quiesce(&groups);
    let old_term = c.nodes[&2].status(1).unwrap().term;
    c.isolated.insert(1);
    // Unnoticed, the partition changes nothing: quiesced followers do not tick, so they
    // neither time out nor campaign.
    for _ in 0..5 * 10 {
        c.tick_all();
        c.stabilize();
    }
    for id in [2, 3] {
        for g in groups {
            let st = c.nodes[&id].status(g).unwrap();
            assert!(st.quiesced, "node {id} group {g}");
            assert_eq!((st.leader, st.term), (1, old_term), "node {id} group {g}");
        }
    }
    // Once the transport reports node 1 unreachable, the followers wake and elect one of
    // them.
    c.node(2).report_unreachable(1);
    c.node(3).report_unreachable(1);
    let mut elected = false;
    for _ in 0..MAX_TICKS {
        c.tick_all();
        c.stabilize();
        elected = groups.iter().all(|g| {
            let (s2, s3) = (c.nodes[&2].status(*g).unwrap(), c.nodes[&3].status(*g).unwrap());
            s2.leader != 1 && s2.leader != 0 && s2.leader == s3.leader && s2.term > old_term
        });
        if elected {
            break;
        }
    }
    assert!(elected, "no new leader within {MAX_TICKS} ticks");
    for g in groups {
        let leader = c.nodes[&2].status(g).unwrap().leader;
        c.node(leader).propose(g, "after").unwrap();
    }
    c.stabilize();
    for id in [2, 3] {
        for g in groups {
            assert_eq!(c.applied(id, g), vec![Bytes::from("after")], "node {id} group {g}");
        }
    }
}

#[test]
fn a_message_creates_an_allowed_group_and_no_other() {
    let mut c = Cluster::new();
    for id in [2, 3] {
        c.node(id).set_group_factory(Box::new(move |group, _m| (group == 40).then(|| config(id))));
    }
    for g in [40, 41] {
        c.node(1).create_group(g, config(1), Some(voters())).unwrap();
    }
    c.stabilize();
    for g in [40, 41] {
        c.node(1).campaign(g).unwrap();
    }
    c.stabilize();
    for id in [2, 3] {
        assert_eq!(c.nodes[&id].group_ids(), vec![40], "node {id}");
        assert!(c.nodes[&id].stats().dropped > 0, "node {id} dropped the votes for group 41");
    }
    assert_eq!(c.nodes[&1].status(40).unwrap().role, StateRole::Leader);
    assert_ne!(c.nodes[&1].status(41).unwrap().role, StateRole::Leader);
    c.node(1).propose(40, "x").unwrap();
    c.stabilize();
    for id in NODES {
        assert_eq!(c.applied(id, 40), vec![Bytes::from("x")], "node {id}");
        assert_eq!(c.nodes[&id].status(40).unwrap().commit, 5);
        // The membership came with the log.
        let voters = c.node(id).raw_node(40).unwrap().status().conf_state.voters;
        assert_eq!(voters, NODES.to_vec(), "node {id}");
    }
}

#[test]
fn a_node_added_to_a_group_learns_the_whole_membership_from_the_log() {
    let mut c = Cluster::new();
    c.node(3).set_group_factory(Box::new(|_group, _m| Some(config(3))));
    let two = ConfState { voters: vec![1, 2], ..ConfState::default() };
    for id in [1, 2] {
        c.node(id).create_group(5, config(id), Some(two.clone())).unwrap();
    }
    c.stabilize();
    c.node(1).campaign(5).unwrap();
    c.stabilize();
    let add =
        ConfChange { change_type: ConfChangeType::AddNode, node_id: 3, context: Bytes::new() };
    c.node(1).propose_conf_change(5, add).unwrap();
    c.stabilize();
    for _ in 0..3 {
        c.tick_all();
        c.stabilize();
    }
    assert_eq!(c.nodes[&3].group_ids(), vec![5], "the leader's append created the group");
    for id in NODES {
        let voters = c.node(id).raw_node(5).unwrap().status().conf_state.voters;
        assert_eq!(voters, NODES.to_vec(), "node {id}");
    }
    // Node 3 knows every voter: it can be elected, by a quorum of the three.
    c.elect(5, 3);
    c.node(3).propose(5, "from 3").unwrap();
    c.stabilize();
    for id in NODES {
        assert_eq!(c.applied(id, 5), vec![Bytes::from("from 3")], "node {id}");
    }
}

#[test]
fn a_removed_group_loses_its_state_and_is_not_recreated() {
    let mut c = Cluster::new();
    for id in [2, 3] {
        c.node(id).set_group_factory(Box::new(move |_group, _m| Some(config(id))));
    }
    c.create([1, 2]);
    c.elect(1, 1);
    c.elect(2, 1);
    c.node(3).remove_group(2).unwrap();
    assert_eq!(c.nodes[&3].engine().group_ids(), vec![1]);
    assert_eq!(c.nodes[&3].group_ids(), vec![1]);
    let dropped = c.nodes[&3].stats().dropped;
    // The leader's next heartbeat for group 2 reaches node 3, which drops it.
    for node in c.nodes.values_mut() {
        node.set_quiescence(false);
    }
    c.tick_all();
    c.stabilize();
    assert_eq!(c.nodes[&3].group_ids(), vec![1], "a late message does not recreate group 2");
    assert!(c.nodes[&3].stats().dropped > dropped);
    // Both groups still commit: group 2 with the two nodes left.
    c.node(1).propose(1, "a").unwrap();
    c.node(1).propose(2, "b").unwrap();
    c.stabilize();
    assert_eq!(c.applied(3, 1), vec![Bytes::from("a")]);
    assert_eq!(c.applied(2, 2), vec![Bytes::from("b")]);
    assert!(c.applied(3, 2).is_empty());
}

#[test]
fn a_wrong_unreachable_report_costs_no_election() {
    let mut c = Cluster::new();
    let groups = [1, 2];
    c.create(groups);
    for g in groups {
        c.elect(g, 1);
    }
    c.quiesce(&groups);
    let term = c.nodes[&2].status(1).unwrap().term;
    // Node 1 is alive: the woken follower's wake reaches it, its heartbeats resume, and the
    // follower never times out.
    c.node(2).report_unreachable(1);
    assert!(!c.nodes[&2].is_quiesced(1));
    for _ in 0..5 * 10 {
        c.tick_all();
        c.stabilize();
    }
    for id in NODES {
        for g in groups {
            let st = c.nodes[&id].status(g).unwrap();
            assert_eq!((st.leader, st.term), (1, term), "node {id} group {g}");
        }
    }
    assert!(c.all_quiesced(&groups, &NODES), "the group quiesces again");
}

#[test]
fn a_lagging_follower_catches_up_from_a_snapshot() {
    let mut c = Cluster::new();
    c.create([1, 2]);
    c.elect(1, 1);
    c.elect(2, 1);
    c.isolated.insert(3);
    for k in 0..5 {
        c.node(1).propose(1, format!("e{k}")).unwrap();
        c.node(1).propose(2, format!("e{k}")).unwrap();
        c.stabilize();
    }
    // Node 1 snapshots group 1 at its applied index and compacts the log under it.
    let applied = c.nodes[&1].status(1).unwrap().applied;
    let storage = c.nodes[&1].storage(1).unwrap();
    storage.create_snapshot(applied, Some(voters()), Bytes::from("state")).unwrap();
    storage.compact(applied).unwrap();
    c.isolated.clear();
    for _ in 0..3 {
        c.tick_all();
        c.stabilize();
    }
    assert_eq!(c.snapshots.get(&(3, 1)), Some(&vec![(applied, Bytes::from("state"))]));
    let st = c.nodes[&3].status(1).unwrap();
    assert_eq!((st.first_index, st.applied), (applied + 1, applied));
    // Group 2 caught up from the log, in the same cycles.
    assert_eq!(c.applied(3, 2).len(), 5);
    assert!(!c.snapshots.contains_key(&(3, 2)));
    c.node(1).propose(1, "after").unwrap();
    c.stabilize();
    assert_eq!(c.applied(3, 1), vec![Bytes::from("after")]);
    assert_eq!(c.nodes[&3].storage(1).unwrap().first_index().unwrap(), applied + 1);
}

#[test]
fn a_lost_quiesce_heartbeat_costs_no_term_with_pre_vote_and_check_quorum() {
    let mut c = Cluster::new();
    for (id, node) in c.nodes.iter_mut() {
        let cfg = Config { pre_vote: true, check_quorum: true, ..config(*id) };
        node.create_group(1, cfg, Some(voters())).unwrap();
    }
    c.elect(1, 1);
    let term = c.nodes[&1].status(1).unwrap().term;
    c.lose_quiesce_to = Some(3);
    for _ in 0..MAX_TICKS {
        if c.nodes[&1].is_quiesced(1) {
            break;
        }
        c.tick_all();
        c.stabilize();
    }
    assert!(c.lose_quiesce_to.is_none(), "a quiesce heartbeat for node 3 was lost");
    assert!(!c.nodes[&3].is_quiesced(1));
    let wakes = |c: &Cluster, id: u64| c.nodes[&id].stats().wakes;
    let before = (wakes(&c, 1), wakes(&c, 2));
    // Node 3 times out and asks for pre-votes; the others, within their lease, refuse, and
    // their wakes bring the leader's heartbeats back.
    for _ in 0..5 * 10 {
        c.tick_all();
        c.stabilize();
    }
    for id in NODES {
        let st = c.nodes[&id].status(1).unwrap();
        assert_eq!((st.leader, st.term), (1, term), "node {id}");
    }
    assert!(wakes(&c, 1) > before.0, "the pre-vote request woke the leader");
    assert!(wakes(&c, 2) > before.1, "the pre-vote request woke the other follower");
    c.quiesce(&[1]);
}

#[test]
fn a_node_keeps_every_entry_it_acknowledged_across_a_power_cut() {
    for seed in 0..4 {
        // Durability comes from the cycle's own sync alone.
        let mut c =
            Cluster::with_options(WalOptions { sync_policy: SyncPolicy::Never, ..options() });
        let groups: Vec<u64> = (1..=4).collect();
        c.create(groups.clone());
        for g in &groups {
            c.elect(*g, 1);
        }
        // Node 3 is away: node 1 commits with node 2's acknowledgements alone.
        c.isolated.insert(3);
        for g in &groups {
            c.node(1).propose(*g, format!("s{seed}g{g}")).unwrap();
        }
        let appends = c.cycle();
        c.deliver(appends);
        let acks = c.cycle();
        assert_eq!(acks.len(), 1, "node 2 answers every group in one batch");
        c.deliver(acks);
        let last: Vec<u64> =
            groups.iter().map(|g| c.nodes[&2].status(*g).unwrap().last_index).collect();
        for g in &groups {
            assert_eq!(c.nodes[&1].status(*g).unwrap().commit, 5, "seed {seed} group {g}");
        }
        c.power_cut(2, seed);
        for (g, last) in groups.iter().zip(&last) {
            let st = c.nodes[&2].status(*g).unwrap();
            assert_eq!(
                st.last_index, *last,
                "seed {seed}: node 2 lost group {g}'s acknowledged entries"
            );
        }
        c.isolated.clear();
        for _ in 0..3 {
            c.tick_all();
            c.stabilize();
        }
        for id in NODES {
            for g in &groups {
                assert_eq!(c.applied(id, *g), vec![Bytes::from(format!("s{seed}g{g}"))]);
            }
        }
    }
}

#[test]
fn a_late_quiesce_heartbeat_of_a_deposed_leader_changes_nothing() {
    let mut c = Cluster::new();
    c.create([1]);
    c.elect(1, 1);
    let old_term = c.nodes[&3].status(1).unwrap().term;
    c.elect(1, 2);
    c.quiesce(&[1]);
    let late = Batch {
        from: 1,
        to: 3,
        heartbeats: vec![Heartbeat {
            group: 1,
            term: old_term,
            commit: 1,
            quiesce: true,
            ..Heartbeat::default()
        }],
        ..Batch::default()
    };
    c.node(3).step(Batch::decode(&late.encode()).unwrap()).unwrap();
    assert!(c.nodes[&3].is_quiesced(1), "a stale heartbeat does not wake node 3");
    let rd = c.node(3).ready().unwrap();
    assert_eq!(rd.batches.len(), 1, "node 3 answers node 1 with its term, and no one else");
    assert_eq!(rd.batches[0].to, 1);
    assert!(rd.batches[0].wakes.is_empty());
    assert_eq!(rd.batches[0].messages.len(), 1);
    assert!(rd.batches[0].messages[0].1.term > old_term);
}

#[test]
fn a_leader_quiesces_only_after_enough_idle_ticks() {
    let mut c = Cluster::new();
    c.create([1]);
    c.node(1).set_quiesce_after_ticks(3);
    c.elect(1, 1);
    for round in 0..2 {
        for tick in 1..=3 {
            assert!(
                !c.nodes[&1].is_quiesced(1),
                "round {round}: quiesced after {} ticks",
                tick - 1
            );
            c.tick_all();
            c.stabilize();
        }
        assert!(c.all_quiesced(&[1], &NODES), "round {round}: quiesced at the third idle tick");
        // Work resets the count.
        c.node(1).propose(1, format!("r{round}")).unwrap();
        c.stabilize();
    }
    assert_eq!(c.applied(2, 1), vec![Bytes::from("r0"), Bytes::from("r1")]);
}

/// Checks that no two nodes were handed different entries at one index of one group.
fn check_committed(c: &Cluster, seed: u64, step: usize) {
    let mut seen: BTreeMap<(u64, u64), (u64, &Bytes, u64)> = BTreeMap::new();
    for ((node, group), entries) in &c.committed {
        for (k, (index, term, data)) in entries.iter().enumerate() {
            if k > 0 {
                assert_eq!(
                    entries[k - 1].0 + 1,
                    *index,
                    "seed {seed} step {step}: node {node} group {group} skipped"
                );
            }
            match seen.get(&(*group, *index)) {
                None => {
                    seen.insert((*group, *index), (*term, data, *node));
                }
                Some((t, d, other)) => assert!(
                    (*t, *d) == (*term, data),
                    "seed {seed} step {step}: group {group} index {index}: node {node} applied \
                     term {term}, node {other} term {t}"
                ),
            }
        }
    }
}

#[test]
fn randomized_runs_stay_safe_and_recover() {
    const STEPS: usize = 300;
    const GROUPS: u64 = 6;
    // Steps at which some group was quiesced on some node, and the highest term reached: the
    // runs must exercise quiescence and elections, not only steady leaders.
    let (mut quiesced_steps, mut max_term) = (0, 0);
    for seed in 0..24 {
        let mut rng = Rng::new(seed);
        let mut c = Cluster::with_options(WalOptions {
            sync_policy: SyncPolicy::Never,
            // Small segments: rollovers and purges happen under the runs too.
            segment_size_bytes: 64 << 10,
            ..options()
        });
        c.template =
            Config { pre_vote: seed % 2 == 1, check_quorum: seed % 2 == 1, seed, ..config(0) };
        let groups: Vec<u64> = (1..=GROUPS).collect();
        c.create(groups.clone());
        for node in c.nodes.values_mut() {
            node.set_quiesce_after_ticks(1 + (seed % 3) as usize);
        }
        for step in 0..STEPS {
            let node = NODES[rng.below(3) as usize];
            let group = 1 + rng.below(GROUPS);
            match rng.below(100) {
                0..45 => c.tick_all(),
                45..70 => {
                    // Refused while there is no leader: a client would retry.
                    let _ = c.node(node).propose(group, format!("s{seed}-{step}"));
                }
                70..75 => {
                    c.node(node).read_index(group, format!("r{step}")).unwrap();
                }
                75..80 if c.isolated.is_empty() => {
                    c.isolated.insert(node);
                }
                80..86 => c.isolated.clear(),
                86..89 => c.power_cut(node, rng.next_u64()),
                _ => {}
            }
            let batches = c.cycle();
            for b in batches {
                if c.isolated.contains(&b.from) || c.isolated.contains(&b.to) {
                    // The transport notices the failed send.
                    c.node(b.from).report_unreachable(b.to);
                } else if !rng.chance(5) {
                    c.node(b.to).step(b).unwrap();
                }
            }
            check_committed(&c, seed, step);
            if groups.iter().any(|g| NODES.iter().any(|n| c.nodes[n].is_quiesced(*g))) {
                quiesced_steps += 1;
            }
        }
        // Liveness: once the network heals, every group elects a leader and commits.
        c.isolated.clear();
        let mut leaders = BTreeMap::new();
        for _ in 0..MAX_TICKS {
            c.tick_all();
            c.stabilize();
            leaders.clear();
            for g in &groups {
                let st: Vec<_> = NODES.iter().map(|n| c.nodes[n].status(*g).unwrap()).collect();
                let leader = st[0].leader;
                if leader != 0 && st.iter().all(|s| s.leader == leader && s.term == st[0].term) {
                    leaders.insert(*g, leader);
                }
            }
            if leaders.len() == groups.len() {
                break;
            }
        }
        assert_eq!(leaders.len(), groups.len(), "seed {seed}: groups without a leader");
        for (g, leader) in &leaders {
            c.node(*leader).propose(*g, format!("final{g}")).unwrap();
        }
        c.stabilize();
        check_committed(&c, seed, STEPS);
        for id in NODES {
            for g in &groups {
                let last = c.applied(id, *g).last().cloned();
                assert_eq!(
                    last,
                    Some(Bytes::from(format!("final{g}"))),
                    "seed {seed} node {id} group {g}"
                );
                max_term = max_term.max(c.nodes[&id].status(*g).unwrap().term);
            }
        }
    }
    eprintln!(
        "randomized runs: {quiesced_steps} steps with a quiesced group, highest term {max_term}"
    );
    assert!(quiesced_steps > 0);
    assert!(max_term > 2);
}

#[test]
fn a_leader_woken_before_the_cycle_does_not_send_its_quiesce_heartbeats() {
    let mut c = Cluster::new();
    c.create([1]);
    c.node(1).set_quiesce_after_ticks(1);
    c.elect(1, 1);
    c.node(1).tick();
    assert!(c.nodes[&1].is_quiesced(1));
    // Woken before the cycle that would send the quiesce heartbeats.
    c.node(1).propose(1, "x").unwrap();
    let rd = c.node(1).ready().unwrap();
    assert_eq!(rd.batches.len(), 2);
    for b in &rd.batches {
        assert!(b.heartbeats.iter().all(|hb| !hb.quiesce), "to node {}", b.to);
        assert_eq!(b.messages.len(), 1, "the append, to node {}", b.to);
    }
    c.deliver(rd.batches);
    c.stabilize();
    for id in NODES {
        assert!(!c.nodes[&id].is_quiesced(1), "node {id}");
        assert_eq!(c.applied(id, 1), vec![Bytes::from("x")]);
    }
}

#[test]
fn a_restarted_follower_of_a_quiesced_group_costs_no_term_with_pre_vote_and_check_quorum() {
    let mut c = Cluster::new();
    c.template = Config { pre_vote: true, check_quorum: true, ..config(0) };
    c.create([1, 2]);
    c.elect(1, 1);
    c.elect(2, 1);
    c.quiesce(&[1, 2]);
    let term = c.nodes[&2].status(1).unwrap().term;
    c.power_cut(2, 7);
    assert!(!c.nodes[&2].is_quiesced(1), "a restarted node's groups start awake");
    for _ in 0..5 * 10 {
        c.tick_all();
        c.stabilize();
    }
    for id in NODES {
        for g in [1, 2] {
            let st = c.nodes[&id].status(g).unwrap();
            assert_eq!((st.leader, st.term), (1, term), "node {id} group {g}");
        }
    }
    c.quiesce(&[1, 2]);
}
