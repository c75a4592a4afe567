//! Reads confirmed by the right heartbeat round, memberships compared as sets, probing that
//! returns to pipelining, new members probed at once, and restarts with the applied index
//! above the stored commit index.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use raftwal::raft::tracker::ProgressState;
use raftwal::raft::{ConfChange, ConfChangeType, Config, Message, MessageType, RawNode, StateRole};
use raftwal::{ConfState, Entry, Error, HardState, MemoryStorage, Snapshot, SnapshotMetadata};

use crate::raft_net::{Network, config, entry, voters};

/// A storage starting from an index-0 snapshot of membership `cs`.
fn store_with(cs: ConfState) -> Arc<MemoryStorage> {
    let s = Arc::new(MemoryStorage::new());
    s.apply_snapshot(Snapshot {
        metadata: SnapshotMetadata { conf_state: cs, ..SnapshotMetadata::default() },
        data: Bytes::new(),
    })
    .unwrap();
    s
}

/// Messages of type `t` that `from` has queued, removed from the network's queue.
fn take_queued(net: &mut Network, from: u64, t: MessageType) -> Vec<Message> {
    let (taken, kept): (Vec<Message>, Vec<Message>) =
        net.queue.drain(..).partition(|m| m.from == from && m.msg_type == t);
    net.queue.extend(kept);
    taken
}

// ---- reads ------------------------------------------------------------------------------------

#[test]
fn a_deposed_leader_does_not_release_a_duplicated_read_with_acks_of_an_old_round() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(1, "a").unwrap();
    let old_commit = net.node(1).committed();

    // A read from 2, forwarded to 1 and confirmed by a heartbeat round.
    net.delivered.clear();
    net.node(2).raw.read_index(Bytes::from("r"));
    net.stabilize();
    assert_eq!(net.node(2).read_states.len(), 1, "the first read is answered");
    let request = net
        .delivered
        .iter()
        .find(|m| m.msg_type == MessageType::MsgReadIndex && m.to == 1)
        .cloned()
        .expect("2 forwarded its read to 1");
    let old_acks: Vec<Message> = net
        .delivered
        .iter()
        .filter(|m| m.msg_type == MessageType::MsgHeartbeatResp && !m.context.is_empty())
        .cloned()
        .collect();
    assert_eq!(old_acks.len(), 2, "2 and 3 acknowledged the round");

    // 1 is cut off; 2 and 3 move on under a new leader and commit more.
    net.isolate(1);
    net.campaign(2);
    net.propose(2, "b").unwrap();
    let new_commit = net.node(2).committed();
    assert!(new_commit > old_commit);
    assert_eq!(net.node(1).state(), StateRole::Leader, "1 does not know it was deposed");

    // The network delivers a duplicate of the read request, then late duplicates of the
    // acknowledgements of the round that confirmed the first read.
    net.node(1).raw.step(request).unwrap();
    for ack in old_acks {
        net.node(1).raw.step(ack).unwrap();
    }
    net.handle_ready(1);
    let answers = take_queued(&mut net, 1, MessageType::MsgReadIndexResp);
    assert!(
        answers.is_empty(),
        "deposed leader released a read at index {:?}; the cluster committed {new_commit}",
        answers.iter().map(|m| m.index).collect::<Vec<_>>()
    );
}

/// A read-index request that follower `from` forwarded to leader `to`, as it is on the wire.
fn forwarded_read(from: u64, to: u64, ctx: &'static str) -> Message {
    Message {
        msg_type: MessageType::MsgReadIndex,
        from,
        to,
        entries: vec![Entry { data: Bytes::from(ctx), ..Entry::default() }],
        ..Message::default()
    }
}

/// etcd's TestReadOnlyDuplicateRequest: a read on a deposed leader, queued before a
/// duplicate of an earlier read, is not released by late acknowledgements of the round that
/// confirmed the earlier one.
#[test]
fn late_acks_of_a_duplicated_read_release_no_read_queued_before_it() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(1, "a").unwrap();
    let min_a = net.node(1).committed();
    let read_a = forwarded_read(2, 1, "A");

    // The first round's acknowledgements are held back until the end.
    let delayed = Rc::new(RefCell::new(Vec::new()));
    let held = delayed.clone();
    net.filter = Some(Box::new(move |m: &Message| {
        let hold = m.msg_type == MessageType::MsgHeartbeatResp;
        if hold {
            held.borrow_mut().push(m.clone());
        }
        hold
    }));
    net.node(1).raw.step(read_a.clone()).unwrap();
    net.stabilize();
    net.filter = None;
    assert!(!delayed.borrow().is_empty());
    // The next heartbeat round confirms A.
    net.node(1).raw.tick();
    net.stabilize();
    assert_eq!(net.node(2).read_states.len(), 1, "A is answered");

    // 1 is cut off; 2 leads and commits more; a read B on 1 waits.
    net.isolate(1);
    net.campaign(2);
    net.propose(2, "someOp").unwrap();
    let min_b = net.node(2).committed();
    net.node(1).raw.read_index(Bytes::from("B"));
    net.stabilize();

    // The duplicate of A arrives, then the held acknowledgements.
    net.heal();
    net.node(1).raw.step(read_a).unwrap();
    for m in delayed.borrow().iter() {
        net.node(1).raw.step(m.clone()).unwrap();
    }
    net.stabilize();
    for id in [1, 2, 3] {
        for rs in &net.node(id).read_states {
            let min = if rs.request_ctx == "A" { min_a } else { min_b };
            assert!(
                rs.index >= min,
                "node {id}: read {:?} at index {}, below {min}",
                rs.request_ctx,
                rs.index
            );
        }
    }
}

#[test]
fn two_followers_reading_with_the_same_context_are_both_answered() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(1, "a").unwrap();
    let committed = net.node(1).committed();
    net.node(2).raw.read_index(Bytes::from("same"));
    net.node(3).raw.read_index(Bytes::from("same"));
    net.stabilize();
    for id in [2, 3] {
        let rs = net.node(id).read_states.clone();
        assert_eq!(rs.len(), 1, "node {id} got no answer");
        assert_eq!((rs[0].index, rs[0].request_ctx.clone()), (committed, Bytes::from("same")));
    }
}

#[test]
fn a_duplicated_read_request_is_answered_twice_at_the_same_index() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(1, "a").unwrap();
    let committed = net.node(1).committed();
    let read = forwarded_read(2, 1, "dup");
    net.node(1).raw.step(read.clone()).unwrap();
    net.node(1).raw.step(read).unwrap();
    net.stabilize();
    let rs = net.node(2).read_states.clone();
    assert_eq!(rs.len(), 2);
    assert!(rs.iter().all(|r| r.index == committed && r.request_ctx == "dup"));
    assert_eq!(net.node(1).raw.status().hard_state.commit, committed);
}

/// Rounds of ten proposals on node 1, each followed by a read on the round's reader, which
/// must be answered once, at the commit index that includes every proposal before it.
fn read_rounds(net: &mut Network, readers: &[u64], base: u64) {
    for (round, &reader) in readers.iter().enumerate() {
        for k in 0..10 {
            net.propose(1, &format!("p{round}.{k}")).unwrap();
        }
        let ctx = Bytes::from(format!("ctx{round}"));
        net.node(reader).raw.read_index(ctx.clone());
        net.stabilize();
        let rs = std::mem::take(&mut net.node(reader).read_states);
        assert_eq!(rs.len(), 1, "round {round}: node {reader} got no answer");
        assert_eq!(rs[0].index, base + 10 * (round as u64 + 1), "round {round}");
        assert_eq!(rs[0].request_ctx, ctx);
    }
}

/// etcd's TestReadOnlyOptionSafe: rounds of proposals, each followed by a read on a different
/// node, which must see every proposal before it.
#[test]
fn safe_reads_on_every_node_see_the_commit_index_of_their_round() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    let base = net.node(1).committed();
    read_rounds(&mut net, &[1, 2, 3, 1, 2, 3], base);
    assert_eq!(net.node(1).raw.status().hard_state.commit, base + 60, "every proposal committed");
}

/// etcd's TestReadOnlyWithLearner: a learner's read is forwarded to the leader, which (as the
/// only voter) answers at once.
#[test]
fn a_learner_reads_through_the_leader() {
    let cs = ConfState { voters: vec![1], learners: vec![2], ..ConfState::default() };
    let mut net = Network::with_conf(&[1, 2], &cs, config);
    net.campaign(1);
    assert_eq!(net.node(1).state(), StateRole::Leader);
    let base = net.node(1).committed();
    read_rounds(&mut net, &[1, 2, 1, 2], base);
}

/// etcd's TestReadOnlyForNewLeader: a read held until the new leader's first commit is
/// answered then, and a later read with the same context is answered again.
#[test]
fn a_new_leader_answers_held_reads_and_repeats_of_their_context() {
    let mut net = Network::new(&[1, 2, 3]);
    net.ignored.insert(MessageType::MsgApp.to_u8());
    net.campaign(1);
    assert_eq!(net.node(1).state(), StateRole::Leader);
    net.node(1).raw.read_index(Bytes::from("ctx"));
    net.stabilize();
    assert!(net.node(1).read_states.is_empty(), "nothing of term 1 is committed");
    net.heal();
    // A heartbeat round gets the no-op through; its commit releases the held read.
    net.node(1).raw.tick();
    net.stabilize();
    assert_eq!(net.node(1).committed(), 1, "the no-op of term 1");
    let rs = net.node(1).read_states.clone();
    assert_eq!(rs.len(), 1, "the held read is answered after the first commit");
    assert_eq!((rs[0].index, rs[0].request_ctx.clone()), (1, Bytes::from("ctx")));
    net.propose(1, "x").unwrap();
    net.node(1).raw.read_index(Bytes::from("ctx"));
    net.stabilize();
    let rs = net.node(1).read_states.clone();
    assert_eq!(rs.len(), 2, "the same context again is a new read");
    assert_eq!((rs[1].index, rs[1].request_ctx.clone()), (2, Bytes::from("ctx")));
}

// ---- membership compared as sets ----------------------------------------------------------

#[test]
fn a_node_restarts_on_a_stored_membership_listed_out_of_order() {
    let store = store_with(ConfState { voters: vec![3, 1, 2], ..ConfState::default() });
    let node = RawNode::new(&config(1), store).expect("an unsorted membership is valid");
    assert_eq!(node.status().conf_state, voters(&[1, 2, 3]));
    // A joint one too, each list out of order.
    let joint = ConfState {
        voters: vec![4, 2, 1],
        learners: vec![6, 5],
        voters_outgoing: vec![3, 2, 1],
        learners_next: vec![3],
        auto_leave: true,
    };
    let node = RawNode::new(&config(1), store_with(joint)).unwrap();
    let cs = node.status().conf_state;
    assert_eq!((cs.voters, cs.learners), (vec![1, 2, 4], vec![5, 6]));
    assert_eq!((cs.voters_outgoing, cs.learners_next), (vec![1, 2, 3], vec![3]));
}

#[test]
fn a_stored_membership_that_cannot_be_restored_is_an_error_not_a_panic() {
    // 2 is both voter and learner.
    let bad = ConfState { voters: vec![1, 2], learners: vec![2], ..ConfState::default() };
    let r = RawNode::new(&config(1), store_with(bad));
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "{:?}", r.err());
}

fn snapshot_message(to: u64, term: u64, index: u64, cs: ConfState) -> Message {
    Message {
        msg_type: MessageType::MsgSnap,
        from: 1,
        to,
        term,
        snapshot: Some(Snapshot {
            metadata: SnapshotMetadata { index, term, conf_state: cs },
            data: Bytes::from("image"),
        }),
        ..Message::default()
    }
}

#[test]
fn a_follower_restores_a_snapshot_whose_voters_are_out_of_order() {
    let mut net = Network::new(&[2]);
    let cs = ConfState { voters: vec![3, 1, 2], ..ConfState::default() };
    net.node(2).raw.step(snapshot_message(2, 11, 11, cs)).unwrap();
    net.handle_ready(2);
    let resp = take_queued(&mut net, 2, MessageType::MsgAppResp);
    assert_eq!(resp.len(), 1);
    assert_eq!((resp[0].index, resp[0].reject), (11, false));
    assert_eq!(net.node(2).raw.status().conf_state, voters(&[1, 2, 3]));
    assert_eq!(net.node(2).snapshot_index, 11);
}

#[test]
fn a_snapshot_whose_membership_cannot_be_restored_is_refused_without_a_panic() {
    let bad = [
        // 2 is both voter and learner.
        ConfState { voters: vec![1, 2], learners: vec![2], ..ConfState::default() },
        // No voter at all.
        ConfState { learners: vec![2], ..ConfState::default() },
        // A next learner that is not an outgoing voter.
        ConfState {
            voters: vec![1, 2],
            voters_outgoing: vec![1, 2],
            learners_next: vec![3],
            ..ConfState::default()
        },
    ];
    for (k, cs) in bad.into_iter().enumerate() {
        let mut net = Network::new(&[2]);
        net.node(2).raw.step(snapshot_message(2, 11, 11, cs)).unwrap();
        net.handle_ready(2);
        let resp = take_queued(&mut net, 2, MessageType::MsgAppResp);
        assert_eq!(resp.len(), 1, "case {k}");
        assert_eq!(resp[0].index, 0, "case {k}: answered with the unchanged commit index");
        let status = net.node(2).raw.status();
        assert_eq!(status.last_index, 0, "case {k}: the log is untouched");
        assert_eq!(status.conf_state, voters(&[2]), "case {k}: the membership is untouched");
        assert_eq!(net.node(2).snapshot_index, 0, "case {k}: nothing to persist");
    }
}

// ---- flow control -------------------------------------------------------------------------

#[test]
fn a_caught_up_probing_follower_returns_to_replicate_after_a_heartbeat() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.propose(1, "a").unwrap();
    assert_eq!(net.node(1).raw.status().progress[&2].state, ProgressState::Replicate);
    // The transport reports 2 unreachable: the leader falls back to probing it.
    net.node(1).raw.report_unreachable(2);
    assert_eq!(net.node(1).raw.status().progress[&2].state, ProgressState::Probe);
    // One heartbeat round: 2 answers, the leader probes with an empty append at 2's match
    // index, and 2 acknowledges exactly that index.
    net.node(1).raw.tick();
    net.stabilize();
    let pr = net.node(1).raw.status().progress[&2].clone();
    assert_eq!(pr.matched, net.node(1).raw.status().last_index);
    assert_eq!(pr.state, ProgressState::Replicate, "{pr:?}");
}

#[test]
fn a_new_member_is_probed_when_the_change_is_applied() {
    let mut net = Network::new(&[1, 2, 3]);
    // 4 runs already, with the membership it will have.
    net.add_node(4, store_with(voters(&[1, 2, 3, 4])), config(4));
    net.campaign(1);
    net.propose(1, "a").unwrap();
    net.delivered.clear();
    net.node(1)
        .raw
        .propose_conf_change(ConfChange {
            change_type: ConfChangeType::AddNode,
            node_id: 4,
            context: Bytes::new(),
        })
        .unwrap();
    // No tick: only the change itself may make the leader contact 4.
    net.stabilize();
    assert_eq!(net.node(1).conf_state, voters(&[1, 2, 3, 4]));
    assert!(
        net.delivered.iter().any(|m| m.msg_type == MessageType::MsgApp && m.to == 4),
        "the leader did not contact 4 before a heartbeat"
    );
    assert_eq!(net.node(4).log(), net.node(1).log(), "4 caught up without a heartbeat");
    let pr = net.node(1).raw.status().progress[&4].clone();
    assert_eq!(pr.state, ProgressState::Replicate, "{pr:?}");
}

// ---- restart --------------------------------------------------------------------------------

#[test]
fn a_restart_with_applied_above_the_stored_commit_raises_the_commit_index() {
    let store = store_with(voters(&[1, 2, 3]));
    store.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
    // The commit index saved last was 2, but the application durably applied up to 4: the
    // hard state carrying commit 4 was a commit-only change, written without a sync.
    store.set_hard_state(HardState { term: 1, vote: 1, commit: 2 }).unwrap();
    let cfg = Config { applied: 4, ..config(1) };
    let mut node = RawNode::new(&cfg, store.clone()).expect("applied 4 <= last index 5");
    let status = node.status();
    assert_eq!((status.hard_state.commit, status.applied), (4, 4));
    assert_eq!(status.hard_state.term, 1);
    // Nothing up to 4 is handed out again.
    if node.has_ready() {
        let rd = node.ready();
        assert!(rd.committed_entries.iter().all(|e| e.index > 4), "{:?}", rd.committed_entries);
    }

    // Entries the log does not hold cannot have been applied.
    let cfg = Config { applied: 6, ..config(1) };
    let r = RawNode::new(&cfg, store);
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "{:?}", r.err());
}
