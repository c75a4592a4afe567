//! Elections: randomized timeouts, pre-vote, check-quorum, the leader's no-op, election safety.

use std::collections::BTreeSet;

use raftwal::raft::{Config, RawNode, StateRole};
use raftwal::{EntryType, MemoryStorage};

use crate::raft_net::{Network, config, voters};

#[test]
fn single_node_elects_itself_and_commits_its_noop() {
    let mut net = Network::new(&[1]);
    net.campaign(1);
    let n = net.node(1);
    assert_eq!(n.state(), StateRole::Leader);
    assert_eq!(n.term(), 1);
    assert_eq!(n.committed(), 1, "the leader's no-op commits at once");
    assert_eq!(n.applied.len(), 1);
    assert!(n.applied[0].data.is_empty(), "the no-op has no payload");
    assert_eq!(n.applied[0].term, 1);
}

#[test]
fn three_nodes_elect_one_leader_whose_first_entry_is_an_empty_entry_of_its_term() {
    let mut net = Network::new(&[1, 2, 3]);
    let leader = net.elect(100);
    let term = net.node(leader).term();
    for id in [1, 2, 3] {
        let n = net.node(id);
        assert_eq!(n.term(), term);
        assert_eq!(n.raw.status().soft_state.leader_id, leader);
        let log = n.log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].term, term);
        assert_eq!(log[0].entry_type, EntryType::Normal);
        assert!(log[0].data.is_empty());
        assert_eq!(n.committed(), 1);
    }
}

#[test]
fn election_timeout_is_randomized_within_one_to_two_election_ticks() {
    let mut seen = BTreeSet::new();
    for seed in 0..60u64 {
        let store = MemoryStorage::new();
        store
            .apply_snapshot(raftwal::Snapshot {
                metadata: raftwal::SnapshotMetadata {
                    conf_state: voters(&[1, 2, 3]),
                    ..Default::default()
                },
                data: Default::default(),
            })
            .unwrap();
        let cfg = Config { seed, ..config(1) };
        let mut node = RawNode::new(&cfg, store).unwrap();
        let mut ticks = 0;
        while node.status().soft_state.raft_state == StateRole::Follower {
            node.tick();
            ticks += 1;
            assert!(ticks < 100, "no campaign after {ticks} ticks");
        }
        assert!(
            (10..20).contains(&ticks),
            "seed {seed}: campaigned after {ticks} ticks, outside [10, 20)"
        );
        seen.insert(ticks);
    }
    assert!(seen.len() >= 5, "timeouts are not spread: {seen:?}");
}

#[test]
fn a_node_votes_at_most_once_per_term() {
    let mut net = Network::new(&[1, 2, 3]);
    // 1 and 3 both campaign in term 1 while isolated from each other; 2 gets both requests.
    net.cut.insert((1, 3));
    net.cut.insert((3, 1));
    net.node(1).raw.campaign().unwrap();
    net.node(3).raw.campaign().unwrap();
    net.stabilize();
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "only one of them may win term 1: {leaders:?}");
    let voted = net.node(2).store.hard_state().vote;
    assert_eq!(voted, leaders[0], "2 persisted its single vote");
}

#[test]
fn a_candidate_with_a_stale_log_loses() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.isolate(3);
    net.propose(1, "x").unwrap();
    net.heal();
    // 3 missed "x": its log is behind, so 1 and 2 refuse to vote for it.
    net.node(3).raw.campaign().unwrap();
    net.stabilize();
    assert_ne!(net.node(3).state(), StateRole::Leader);
    assert!(net.leaders().len() <= 1);
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_raising_its_term() {
    let cfg = |id| Config { pre_vote: true, check_quorum: true, ..config(id) };
    let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
    net.campaign(1);
    let term = net.node(1).term();
    net.isolate(3);
    for _ in 0..100 {
        net.tick_all();
    }
    assert_eq!(net.node(3).term(), term, "pre-vote never won, so the term stayed");
    assert_eq!(net.node(3).state(), StateRole::PreCandidate);
    net.heal();
    for _ in 0..5 {
        net.tick_all();
    }
    assert_eq!(net.leaders(), vec![1], "the rejoining node did not disrupt the leader");
    assert_eq!(net.node(1).term(), term);
}

#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_leader() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    let term = net.node(1).term();
    net.isolate(3);
    for _ in 0..50 {
        net.tick_all();
    }
    assert!(net.node(3).term() > term, "3 kept campaigning and raised its term");
    net.heal();
    // 3 ignores the old leader's heartbeats and campaigns again at its next timeout.
    for _ in 0..30 {
        net.tick_all();
    }
    assert!(net.node(1).term() > term, "the old leader saw the higher term");
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let cfg = |id| Config { check_quorum: true, ..config(id) };
    let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
    net.campaign(1);
    net.isolate(1);
    for _ in 0..25 {
        net.node(1).raw.tick();
        net.stabilize();
    }
    assert_eq!(
        net.node(1).state(),
        StateRole::Follower,
        "no quorum heard within an election timeout"
    );
}

#[test]
fn without_check_quorum_an_isolated_leader_stays_leader() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.isolate(1);
    for _ in 0..25 {
        net.node(1).raw.tick();
        net.stabilize();
    }
    assert_eq!(net.node(1).state(), StateRole::Leader);
}

#[test]
fn check_quorum_followers_ignore_vote_requests_while_the_leader_is_alive() {
    let cfg = |id| Config { check_quorum: true, ..config(id) };
    let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
    net.campaign(1);
    let term = net.node(1).term();
    net.node(3).raw.campaign().unwrap();
    net.stabilize();
    assert_eq!(net.node(1).state(), StateRole::Leader);
    assert_eq!(net.node(2).term(), term, "2 ignored the vote request within its lease");
    assert_eq!(net.node(3).state(), StateRole::Candidate);
}

#[test]
fn learners_never_campaign() {
    let cs = raftwal::ConfState { voters: vec![1, 2], learners: vec![3], ..Default::default() };
    let mut net = Network::with_conf(&[1, 2, 3], &cs, config);
    net.isolate(1);
    net.isolate(2);
    for _ in 0..100 {
        net.node(3).raw.tick();
        net.stabilize();
    }
    assert_eq!(net.node(3).state(), StateRole::Follower);
    assert_eq!(net.node(3).term(), 0);
}
