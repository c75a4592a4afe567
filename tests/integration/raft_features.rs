//! Leadership transfer, read index (safe and lease-based), proposal forwarding, uncommitted
//! size limits, forget_leader.

use bytes::Bytes;
use raftwal::Error;
use raftwal::raft::{Config, MessageType, ReadOnlyOption, StateRole};

use crate::raft_net::{Network, config, voters};

#[test]
fn leadership_moves_to_an_up_to_date_follower() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    let term = net.node(1).term();
    net.node(1).raw.transfer_leader(2);
    net.stabilize();
    assert_eq!(net.node(2).state(), StateRole::Leader);
    assert_eq!(net.node(2).term(), term + 1);
    assert_eq!(net.node(1).state(), StateRole::Follower);
    assert!(net.delivered.iter().any(|m| m.msg_type == MessageType::MsgTimeoutNow && m.to == 2));
}

#[test]
fn leadership_transfer_first_catches_the_target_up() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.isolate(3);
    for k in 0..5 {
        net.propose(1, &format!("v{k}")).unwrap();
    }
    net.heal();
    net.node(1).raw.transfer_leader(3);
    net.stabilize();
    assert_eq!(net.node(3).state(), StateRole::Leader);
    assert_eq!(net.node(3).applied_data().len(), 5);
}

#[test]
fn proposals_are_dropped_during_a_transfer_until_it_is_abandoned() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.isolate(3);
    net.node(1).raw.transfer_leader(3);
    net.stabilize();
    assert_eq!(net.node(1).raw.status().lead_transferee, Some(3));
    assert!(matches!(net.propose(1, "x"), Err(Error::ProposalDropped)));
    // After an election timeout without success the transfer is abandoned.
    for _ in 0..10 {
        net.node(1).raw.tick();
        net.stabilize();
    }
    assert_eq!(net.node(1).raw.status().lead_transferee, None);
    assert!(net.propose(1, "y").is_ok());
    assert_eq!(net.node(2).applied_data(), vec![Bytes::from("y")]);
}

#[test]
fn a_transfer_overrides_the_check_quorum_lease() {
    let cfg = |id| Config { check_quorum: true, pre_vote: true, ..config(id) };
    let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
    net.campaign(1);
    net.node(1).raw.transfer_leader(2);
    net.stabilize();
    assert_eq!(net.node(2).state(), StateRole::Leader, "followers in lease still voted");
}

#[test]
fn safe_read_index_is_confirmed_by_a_heartbeat_quorum() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(1, "a").unwrap();
    let committed = net.node(1).committed();
    net.node(1).raw.read_index(Bytes::from("r1"));
    net.stabilize();
    let rs = net.node(1).read_states.clone();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].index, committed);
    assert_eq!(rs[0].request_ctx, Bytes::from("r1"));

    // From a follower: forwarded to the leader, answered back.
    net.node(2).raw.read_index(Bytes::from("r2"));
    net.stabilize();
    let rs = net.node(2).read_states.clone();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].index, committed);
    assert_eq!(rs[0].request_ctx, Bytes::from("r2"));
}

#[test]
fn safe_read_index_is_not_answered_by_an_isolated_leader() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.isolate(1);
    net.node(1).raw.read_index(Bytes::from("r"));
    net.stabilize();
    assert!(net.node(1).read_states.is_empty(), "no quorum confirmed leadership");
    net.heal();
    net.node(1).raw.tick();
    net.stabilize();
    assert_eq!(net.node(1).read_states.len(), 1, "answered once heartbeats get through");
}

#[test]
fn lease_based_read_index_needs_no_round_trip() {
    let cfg = |id| Config {
        check_quorum: true,
        read_only_option: ReadOnlyOption::LeaseBased,
        ..config(id)
    };
    let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
    net.campaign(1);
    net.isolate(1);
    net.delivered.clear();
    net.node(1).raw.read_index(Bytes::from("r"));
    net.stabilize();
    assert_eq!(net.node(1).read_states.len(), 1, "served from the lease");
    assert!(net.delivered.is_empty(), "no message was needed");
}

#[test]
fn reads_wait_for_the_leaders_first_commit_in_its_term() {
    let mut net = Network::new(&[1, 2, 3]);
    // 1 wins, but the acknowledgements of its no-op are lost.
    net.ignored.insert(MessageType::MsgAppResp.to_u8());
    net.campaign(1);
    assert_eq!(net.node(1).state(), StateRole::Leader);
    assert_eq!(net.node(1).committed(), 0);
    net.node(1).raw.read_index(Bytes::from("early"));
    net.stabilize();
    assert!(net.node(1).read_states.is_empty(), "no entry of this term committed yet");
    net.heal();
    net.node(1).raw.tick();
    net.stabilize();
    let rs = net.node(1).read_states.clone();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].index, 1, "the read index includes the no-op");
}

#[test]
fn followers_forward_proposals_unless_disabled() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(2, "via-2").unwrap();
    assert_eq!(net.node(1).applied_data(), vec![Bytes::from("via-2")]);

    let cfg = |id| Config { disable_proposal_forwarding: true, ..config(id) };
    let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
    net.campaign(1);
    assert!(matches!(net.propose(2, "x"), Err(Error::ProposalDropped)));
    assert!(net.node(1).applied_data().is_empty());
}

#[test]
fn proposals_without_a_leader_are_dropped() {
    let mut net = Network::new(&[1, 2, 3]);
    assert!(matches!(net.propose(2, "x"), Err(Error::ProposalDropped)));
}

#[test]
fn the_uncommitted_log_is_bounded() {
    let cfg = |id| Config { max_uncommitted_entries_size: 100, ..config(id) };
    let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
    net.campaign(1);
    net.isolate(1);
    assert!(net.propose(1, &"a".repeat(60)).is_ok(), "the first entry always fits");
    assert!(
        matches!(net.propose(1, &"b".repeat(60)), Err(Error::ProposalDropped)),
        "120 bytes would be uncommitted"
    );
    net.heal();
    net.node(1).raw.tick();
    net.stabilize();
    assert!(net.propose(1, &"c".repeat(60)).is_ok(), "room again after commit");
}

#[test]
fn forget_leader_lets_a_follower_vote_within_the_lease() {
    let cfg = |id| Config { check_quorum: true, ..config(id) };
    let mut net = Network::with_conf(&[1, 2, 3], &voters(&[1, 2, 3]), cfg);
    net.campaign(1);
    net.isolate(1);
    net.node(2).raw.forget_leader().unwrap();
    assert_eq!(net.node(2).raw.status().soft_state.leader_id, 0);
    net.campaign(3);
    assert_eq!(net.node(3).state(), StateRole::Leader, "2 granted its vote at once");
}

#[test]
fn a_leader_removed_from_a_one_voter_config_does_not_serve_reads_alone() {
    let mut net = Network::new(&[1, 2]);
    net.campaign(1);
    net.node(1)
        .raw
        .propose_conf_change(raftwal::raft::ConfChange {
            change_type: raftwal::raft::ConfChangeType::RemoveNode,
            node_id: 1,
            context: Bytes::new(),
        })
        .unwrap();
    net.stabilize();
    assert_eq!(net.node(2).conf_state, voters(&[2]));
    assert_eq!(net.node(1).state(), StateRole::Leader, "no step-down configured");
    // 2, the only voter, takes over and commits more while 1 is cut off.
    net.isolate(1);
    net.campaign(2);
    net.propose(2, "newer").unwrap();
    let committed = net.node(2).committed();
    // 1 still believes it leads; a one-voter configuration whose voter is not itself must
    // not let it answer a read from its own (stale) commit index.
    net.node(1).raw.read_index(Bytes::from("stale?"));
    net.stabilize();
    let rs = &net.node(1).read_states;
    assert!(
        rs.iter().all(|r| r.index >= committed),
        "stale read index {rs:?}, the cluster committed {committed}"
    );
    assert!(rs.is_empty(), "no confirmation can come from the cut-off voter");
}
