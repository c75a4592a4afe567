//! Membership changes: single-step, learners, joint consensus, one change at a time,
//! removal of the leader; and bootstrap.

use std::sync::Arc;

use bytes::Bytes;
use raftwal::raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Config,
    RawNode, StateRole,
};
use raftwal::{ConfState, EntryType, MemoryStorage};

use crate::raft_net::{Network, config, voters};

fn cc(change_type: ConfChangeType, node_id: u64) -> ConfChange {
    ConfChange { change_type, node_id, context: Bytes::new() }
}

fn single(change_type: ConfChangeType, node_id: u64) -> ConfChangeSingle {
    ConfChangeSingle { change_type, node_id }
}

fn propose_cc(net: &mut Network, id: u64, change: ConfChange) {
    net.node(id).raw.propose_conf_change(change).unwrap();
    net.stabilize();
}

#[test]
fn adding_a_voter_brings_it_the_log_and_the_membership() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(1, "before").unwrap();
    propose_cc(&mut net, 1, cc(ConfChangeType::AddNode, 4));
    net.start_new_member(1, 4);
    net.node(1).raw.tick();
    net.stabilize();
    let want = voters(&[1, 2, 3, 4]);
    for id in 1..=4 {
        assert_eq!(net.node(id).conf_state, want, "node {id}");
    }
    assert_eq!(net.node(4).log(), net.node(1).log());
    assert_eq!(net.node(4).raw.status().last_index, net.node(1).raw.status().last_index);
    net.propose(1, "after").unwrap();
    assert_eq!(net.node(4).applied_data(), vec![Bytes::from("after")]);
    // The quorum is now 3 of 4: with 3 and 4 cut off nothing commits.
    net.isolate(3);
    net.isolate(4);
    let before = net.node(1).committed();
    net.propose(1, "stuck").unwrap();
    assert_eq!(net.node(1).committed(), before, "2 of 4 is not a quorum");
}

#[test]
fn removing_a_voter_shrinks_the_quorum() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    propose_cc(&mut net, 1, cc(ConfChangeType::RemoveNode, 3));
    assert_eq!(net.node(1).conf_state, voters(&[1, 2]));
    assert_eq!(net.node(2).conf_state, voters(&[1, 2]));
    net.isolate(3);
    net.propose(1, "x").unwrap();
    assert_eq!(net.node(2).applied_data(), vec![Bytes::from("x")]);
    assert!(!net.node(1).raw.status().progress.contains_key(&3));
}

#[test]
fn a_learner_receives_the_log_but_never_counts_toward_commit() {
    let cs = ConfState { voters: vec![1, 2], learners: vec![3], ..ConfState::default() };
    let mut net = Network::with_conf(&[1, 2, 3], &cs, config);
    net.campaign(1);
    net.propose(1, "a").unwrap();
    assert_eq!(net.node(3).applied_data(), vec![Bytes::from("a")]);
    net.isolate(2);
    let before = net.node(1).committed();
    net.propose(1, "b").unwrap();
    assert_eq!(
        net.node(3).raw.status().last_index,
        net.node(1).raw.status().last_index,
        "the learner holds the entry"
    );
    assert_eq!(net.node(1).committed(), before, "the learner's ack does not count");
}

#[test]
fn a_learner_can_be_added_and_promoted() {
    let mut net = Network::new(&[1, 2]);
    net.campaign(1);
    propose_cc(&mut net, 1, cc(ConfChangeType::AddLearnerNode, 3));
    net.start_new_member(1, 3);
    net.node(1).raw.tick();
    net.stabilize();
    assert_eq!(net.node(3).conf_state.learners, vec![3]);
    assert_eq!(net.node(3).raw.status().progress.len(), 0);
    propose_cc(&mut net, 1, cc(ConfChangeType::AddNode, 3));
    for id in 1..=3 {
        assert_eq!(net.node(id).conf_state, voters(&[1, 2, 3]), "node {id}");
    }
    // Now a voter, 3 can win an election.
    net.campaign(3);
    assert_eq!(net.node(3).state(), StateRole::Leader);
}

#[test]
fn joint_consensus_with_auto_leave_replaces_a_voter() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(1, "x").unwrap();
    let change = ConfChangeV2 {
        transition: ConfChangeTransition::Auto,
        changes: vec![single(ConfChangeType::AddNode, 4), single(ConfChangeType::RemoveNode, 3)],
        context: Bytes::new(),
    };
    net.node(1).raw.propose_conf_change(change).unwrap();
    net.stabilize();
    // 4 starts once it is a member (in the incoming half); 1, 2 and 3 run the joint state.
    assert!(
        net.node(1).conf_state.voters_outgoing.is_empty(),
        "with 4 absent the joint config (needing 2 of 1, 2, 4) was left: 1 and 2 suffice"
    );
    net.start_new_member(1, 4);
    for _ in 0..3 {
        net.tick_all();
    }
    let want = voters(&[1, 2, 4]);
    for id in [1, 2, 4] {
        assert_eq!(net.node(id).conf_state, want, "node {id} left the joint state");
    }
    let v2: Vec<ConfChangeV2> = net
        .node(1)
        .applied
        .iter()
        .filter(|e| e.entry_type == EntryType::ConfChangeV2)
        .map(|e| ConfChangeV2::decode(&e.data).unwrap())
        .collect();
    assert_eq!(v2.len(), 2, "the change and the automatic leave");
    assert!(v2[1].changes.is_empty(), "the leave is an empty change");
}

#[test]
fn explicit_joint_consensus_waits_for_the_leave() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    let change = ConfChangeV2 {
        transition: ConfChangeTransition::Explicit,
        changes: vec![single(ConfChangeType::AddLearnerNode, 3)],
        context: Bytes::new(),
    };
    net.node(1).raw.propose_conf_change(change).unwrap();
    for _ in 0..3 {
        net.tick_all();
    }
    let joint = net.node(1).conf_state.clone();
    assert_eq!(joint.voters, vec![1, 2]);
    assert_eq!(joint.voters_outgoing, vec![1, 2, 3]);
    assert_eq!(joint.learners_next, vec![3]);
    assert!(!joint.auto_leave);
    // While joint, a new change other than leaving is refused.
    let other = ConfChangeV2 {
        changes: vec![single(ConfChangeType::AddNode, 5)],
        ..ConfChangeV2::default()
    };
    net.node(1).raw.propose_conf_change(other).unwrap();
    net.stabilize();
    assert_eq!(net.node(1).conf_state, joint, "the change became an empty entry");
    net.node(1).raw.propose_conf_change(ConfChangeV2::default()).unwrap();
    net.stabilize();
    for id in 1..=3 {
        let cs = &net.node(id).conf_state;
        assert_eq!(cs.voters, vec![1, 2], "node {id}");
        assert_eq!(cs.learners, vec![3]);
        assert!(cs.voters_outgoing.is_empty());
    }
}

#[test]
fn only_one_membership_change_may_be_pending() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.node(1).raw.propose_conf_change(cc(ConfChangeType::RemoveNode, 3)).unwrap();
    // Not applied yet: the second change is replaced by an empty entry.
    net.node(1).raw.propose_conf_change(cc(ConfChangeType::RemoveNode, 2)).unwrap();
    net.stabilize();
    assert_eq!(net.node(1).conf_state, voters(&[1, 2]));
    let last = net.node(1).log().last().unwrap().clone();
    assert_eq!(last.entry_type, EntryType::Normal, "the refused change is a no-op");
    assert!(last.data.is_empty());
}

#[test]
fn a_removed_leader_steps_down_when_configured_to() {
    for step_down in [true, false] {
        let cfg = |id| Config { step_down_on_removal: step_down, ..config(id) };
        let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
        net.campaign(1);
        propose_cc(&mut net, 1, cc(ConfChangeType::RemoveNode, 1));
        assert_eq!(net.node(2).conf_state, voters(&[2, 3]));
        let want = if step_down { StateRole::Follower } else { StateRole::Leader };
        assert_eq!(net.node(1).state(), want, "step_down_on_removal = {step_down}");
        if step_down {
            let leaders = net.leaders();
            assert_eq!(leaders.len(), 1, "leadership was handed to a remaining voter");
            assert!(leaders[0] == 2 || leaders[0] == 3);
            net.propose(leaders[0], "after").unwrap();
            assert_eq!(net.node(2).applied_data(), vec![Bytes::from("after")]);
        }
    }
}

#[test]
fn bootstrap_commits_one_add_node_entry_per_peer() {
    let mut nodes: Vec<RawNode<Arc<MemoryStorage>>> = Vec::new();
    let mut stores = Vec::new();
    for id in 1..=3u64 {
        let store = Arc::new(MemoryStorage::new());
        let mut n = RawNode::new(&config(id), store.clone()).unwrap();
        n.bootstrap([1u64, 2, 3]).unwrap();
        nodes.push(n);
        stores.push(store);
    }
    for (n, store) in nodes.iter_mut().zip(&stores) {
        let rd = n.ready();
        assert_eq!(rd.entries.len(), 3);
        assert_eq!(rd.committed_entries.len(), 3);
        assert_eq!(rd.hard_state.unwrap().commit, 3);
        assert!(rd.must_sync);
        store.append(&rd.entries).unwrap();
        store.set_hard_state(rd.hard_state.unwrap()).unwrap();
        let mut cs = ConfState::default();
        for e in &rd.committed_entries {
            cs = n.apply_conf_change(ConfChange::decode(&e.data).unwrap());
        }
        assert_eq!(cs, voters(&[1, 2, 3]));
        n.advance(rd);
        assert!(!n.has_ready());
    }
    // Bootstrapping twice is refused.
    assert!(nodes[0].bootstrap([1u64]).is_err());
}

#[test]
fn a_joint_configuration_needs_both_majorities() {
    let cs = ConfState { voters: vec![1, 2, 3], learners: vec![4, 5], ..ConfState::default() };
    let mut net = Network::with_conf(&[1, 2, 3, 4, 5], &cs, config);
    net.campaign(1);
    let change = ConfChangeV2 {
        transition: ConfChangeTransition::Explicit,
        changes: vec![
            single(ConfChangeType::AddNode, 4),
            single(ConfChangeType::AddNode, 5),
            single(ConfChangeType::RemoveNode, 2),
            single(ConfChangeType::RemoveNode, 3),
        ],
        context: Bytes::new(),
    };
    net.node(1).raw.propose_conf_change(change).unwrap();
    net.stabilize();
    let joint = net.node(1).conf_state.clone();
    assert_eq!(joint.voters, vec![1, 4, 5]);
    assert_eq!(joint.voters_outgoing, vec![1, 2, 3]);

    // The incoming majority alone (1, 4, 5) cannot commit.
    net.isolate(2);
    net.isolate(3);
    let before = net.node(1).committed();
    net.propose(1, "needs-both").unwrap();
    assert_eq!(net.node(1).committed(), before, "the outgoing half has only 1 of 3");
    // Nor the outgoing one alone (1, 2, 3): 2 and 3 get both entries, 4 and 5 only the
    // first, so the first commits and the second does not.
    net.heal();
    net.isolate(4);
    net.isolate(5);
    net.propose(1, "second").unwrap();
    let second = net.node(1).raw.status().last_index;
    net.node(1).raw.tick();
    net.stabilize();
    assert_eq!(
        net.node(1).committed(),
        second - 1,
        "the incoming half has only 1 of 3 for the second"
    );
    net.heal();
    net.node(1).raw.tick();
    net.stabilize();
    assert!(net.node(1).committed() > before, "both halves: committed");

    // After leaving, 1, 4 and 5 suffice.
    net.node(1).raw.propose_conf_change(ConfChangeV2::default()).unwrap();
    net.stabilize();
    assert_eq!(net.node(1).conf_state, voters(&[1, 4, 5]));
    net.isolate(2);
    net.isolate(3);
    net.propose(1, "new-config").unwrap();
    assert_eq!(net.node(4).applied_data().last(), Some(&Bytes::from("new-config")));
}
