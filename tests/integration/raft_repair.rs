//! Repairing nodes: a node whose log lost entries it had made durable (and so may have
//! acknowledged) neither votes nor campaigns until its persisted log holds them again, from a
//! leader or a snapshot (DESIGN.md, "Repairing nodes").

use std::sync::Arc;

use bytes::Bytes;
use raftwal::raft::{Config, Message, MessageType, RawNode, StateRole};
use raftwal::{Entry, HardState, MemoryStorage, RepairState, Snapshot, SnapshotMetadata, Storage};

use crate::raft_net::{Network, config, voters};

type Raw = RawNode<Arc<MemoryStorage>>;

/// The repair state of the lone nodes below: the log had made entries up to 6 durable, in
/// term 2, and now holds 1..=3.
const LOST: RepairState = RepairState { index: 6, term: 2 };

/// A storage holding only the founding membership {1, 2, 3} (the index-0 snapshot).
fn founded() -> Arc<MemoryStorage> {
    let store = Arc::new(MemoryStorage::new());
    store
        .apply_snapshot(Snapshot {
            metadata: SnapshotMetadata { index: 0, term: 0, conf_state: voters(&[1, 2, 3]) },
            data: Bytes::new(),
        })
        .unwrap();
    store
}

/// Node 3 of {1, 2, 3} alone, over a storage holding entries 1..=3 of term 2, hard state
/// (term 2, no vote, commit 3) and `repair`.
fn lone(repair: Option<RepairState>, pre_vote: bool) -> (Raw, Arc<MemoryStorage>) {
    let store = founded();
    let es: Vec<Entry> = (1..=3).map(|i| Entry::new(i, 2, Bytes::new())).collect();
    store.append(&es).unwrap();
    store.set_hard_state(HardState { term: 2, vote: 0, commit: 3 }).unwrap();
    store.set_repair_state(repair).unwrap();
    let cfg = Config { pre_vote, ..config(3) };
    let node = RawNode::new(&cfg, store.clone()).unwrap();
    (node, store)
}

/// Handles every Ready of `node` by the contract (persist, then advance) and returns the
/// messages it sent.
fn drain(node: &mut Raw, store: &MemoryStorage) -> Vec<Message> {
    let mut out = Vec::new();
    // A lone node settles within a few Readies.
    for _ in 0..16 {
        if !node.has_ready() {
            return out;
        }
        let rd = node.ready();
        if let Some(s) = &rd.snapshot {
            store.apply_snapshot(s.clone()).unwrap();
        }
        store.append(&rd.entries).unwrap();
        if let Some(hs) = rd.hard_state {
            store.set_hard_state(hs).unwrap();
        }
        out.extend(rd.messages.iter().cloned());
        node.advance(rd);
    }
    panic!("node did not settle");
}

fn vote_request(t: MessageType, term: u64) -> Message {
    // A candidate whose log is ahead of the lone node's: a healthy node grants it whenever
    // it may vote at all.
    Message { msg_type: t, from: 2, to: 3, term, index: 10, log_term: 2, ..Message::default() }
}

fn is_vote_request(m: &Message) -> bool {
    matches!(m.msg_type, MessageType::MsgVote | MessageType::MsgPreVote)
}

#[test]
fn a_repairing_node_grants_no_vote_or_pre_vote_at_any_term() {
    use MessageType::{MsgPreVote, MsgVote};
    // (request, term; whether a healthy node grants it). The node is at term 2 with no vote
    // and no leader; a lower-term MsgVote gets no answer at all (as in etcd-raft).
    let cases = [
        (MsgVote, 1, None),
        (MsgVote, 2, Some(true)),
        (MsgVote, 3, Some(true)),
        (MsgPreVote, 1, Some(false)),
        (MsgPreVote, 2, Some(true)),
        (MsgPreVote, 3, Some(true)),
    ];
    for pre_vote in [false, true] {
        for (t, term, healthy_grants) in cases {
            let what = format!("{t:?} at term {term}, pre_vote {pre_vote}");
            for repair in [None, Some(LOST)] {
                let (mut node, store) = lone(repair, pre_vote);
                drain(&mut node, &store);
                node.step(vote_request(t, term)).unwrap();
                let out = drain(&mut node, &store);
                let answers: Vec<&Message> = out.iter().filter(|m| m.to == 2).collect();
                let Some(grants) = healthy_grants else {
                    assert!(answers.is_empty(), "{what}, {repair:?}: {out:?}");
                    continue;
                };
                assert_eq!(answers.len(), 1, "{what}, {repair:?}: {out:?}");
                let a = answers[0];
                assert_eq!(a.msg_type, t.vote_response(), "{what}, {repair:?}");
                // A refusal carries the responder's term (after any bump), as in etcd-raft.
                let term_now = node.status().hard_state.term;
                if repair.is_some() {
                    assert!(a.reject, "{what}: a repairing node granted {a:?}");
                    assert_eq!(a.term, term_now, "{what}");
                    assert_eq!(store.hard_state().vote, 0, "{what}: no vote persisted");
                } else {
                    assert_eq!(!a.reject, grants, "{what}: healthy node answered {a:?}");
                }
                // Term handling is the same for both: only a higher-term MsgVote moves it.
                let want_term = if t == MsgVote && term > 2 { term } else { 2 };
                assert_eq!(term_now, want_term, "{what}, {repair:?}");
                assert_eq!(store.hard_state().term, want_term, "{what}, {repair:?}: persisted");
                assert_eq!(node.status().repairing, repair, "{what}: a vote ends no repair");
            }
        }
    }
}

/// A node whose damage left it no term (term 0, no entries: the loss of a log that had barely
/// started) and a repair of unknown extent: a pre-vote, which moves no term, gets no answer (a
/// response needs a term, and this node has none to give), and a vote request is refused at
/// the term it brings.
#[test]
fn a_repairing_node_without_a_term_refuses_votes_without_answering_at_term_0() {
    use MessageType::{MsgPreVote, MsgVote};
    for t in [MsgPreVote, MsgVote] {
        let store = founded();
        let repair = RepairState { index: u64::MAX, term: 0 };
        store.set_repair_state(Some(repair)).unwrap();
        let mut node =
            RawNode::new(&Config { pre_vote: true, ..config(3) }, store.clone()).unwrap();
        drain(&mut node, &store);
        node.step(vote_request(t, 1)).unwrap();
        let out = drain(&mut node, &store);
        let answers: Vec<&Message> = out.iter().filter(|m| m.to == 2).collect();
        match t {
            MsgPreVote => assert!(answers.is_empty(), "{t:?}: {out:?}"),
            _ => {
                assert_eq!(answers.len(), 1, "{t:?}: {out:?}");
                assert!(answers[0].reject && answers[0].term == 1, "{t:?}: {:?}", answers[0]);
            }
        }
        assert_eq!(store.hard_state().vote, 0, "{t:?}: no vote persisted");
        assert_eq!(node.status().repairing, Some(repair));
    }
}

#[test]
fn a_repairing_node_never_campaigns() {
    for pre_vote in [false, true] {
        for repair in [None, Some(LOST)] {
            let what = format!("pre_vote {pre_vote}, {repair:?}");
            // Election timeouts.
            let (mut node, store) = lone(repair, pre_vote);
            let mut sent = Vec::new();
            // Five election timeouts: a healthy node campaigns within two.
            for _ in 0..5 * config(3).election_tick {
                node.tick();
                sent.extend(drain(&mut node, &store));
            }
            let campaigned = sent.iter().any(is_vote_request);
            assert_eq!(campaigned, repair.is_none(), "{what}: ticks sent {sent:?}");
            // campaign().
            let (mut node, store) = lone(repair, pre_vote);
            node.campaign().unwrap();
            let sent = drain(&mut node, &store);
            assert_eq!(sent.iter().any(is_vote_request), repair.is_none(), "{what}: {sent:?}");
            // MsgTimeoutNow: a leader handing over leadership.
            let (mut node, store) = lone(repair, pre_vote);
            let m = Message {
                msg_type: MessageType::MsgTimeoutNow,
                from: 1,
                to: 3,
                term: 2,
                ..Message::default()
            };
            node.step(m).unwrap();
            let sent = drain(&mut node, &store);
            assert_eq!(sent.iter().any(is_vote_request), repair.is_none(), "{what}: {sent:?}");
            if repair.is_some() {
                let st = node.status();
                assert_eq!(st.soft_state.raft_state, StateRole::Follower, "{what}");
                assert_eq!((st.hard_state.term, st.hard_state.vote), (2, 0), "{what}");
                assert_eq!(st.repairing, repair, "{what}");
            }
        }
    }
}

#[test]
fn repair_ends_only_once_the_entries_are_persisted() {
    let (mut node, store) = lone(Some(LOST), false);
    drain(&mut node, &store);
    let app = |index: u64, hi: u64| Message {
        msg_type: MessageType::MsgApp,
        from: 1,
        to: 3,
        term: 2,
        index,
        log_term: 2,
        commit: 3,
        entries: (index + 1..=hi).map(|i| Entry::new(i, 2, Bytes::new())).collect(),
        ..Message::default()
    };
    // Entries up to 5: persisted, but short of 6.
    node.step(app(3, 5)).unwrap();
    let out = drain(&mut node, &store);
    assert!(out.iter().any(|m| m.msg_type == MessageType::MsgAppResp && !m.reject && m.index == 5));
    assert_eq!(node.status().repairing, Some(LOST));
    // Entries up to 7: in a Ready, not yet persisted.
    node.step(app(5, 7)).unwrap();
    let rd = node.ready();
    assert_eq!(rd.entries.last().map(|e| e.index), Some(7));
    assert_eq!(node.status().last_index, 7);
    assert_eq!(node.status().repairing, Some(LOST), "unstable entries do not end it");
    // A vote request arriving now is still refused.
    node.step(vote_request(MessageType::MsgVote, 3)).unwrap();
    store.append(&rd.entries).unwrap();
    if let Some(hs) = rd.hard_state {
        store.set_hard_state(hs).unwrap();
    }
    assert_eq!(store.repair_state().unwrap(), None, "the storage holds 7 now");
    assert_eq!(node.status().repairing, Some(LOST), "the core learns it at advance");
    node.advance(rd);
    assert_eq!(node.status().repairing, None, "persisted up to 7 >= 6");
    let out = drain(&mut node, &store);
    let answer: Vec<&Message> =
        out.iter().filter(|m| m.msg_type == MessageType::MsgVoteResp).collect();
    assert_eq!(answer.len(), 1, "{out:?}");
    assert!(answer[0].reject, "the request came before the advance");
    // Repaired: it votes again.
    node.step(vote_request(MessageType::MsgVote, 4)).unwrap();
    let out = drain(&mut node, &store);
    let answer: Vec<&Message> =
        out.iter().filter(|m| m.msg_type == MessageType::MsgVoteResp).collect();
    assert_eq!(answer.len(), 1, "{out:?}");
    assert!(!answer[0].reject, "{:?}", answer[0]);
    assert_eq!(store.hard_state().vote, 2);
}

#[test]
fn a_persisted_snapshot_covering_the_index_ends_repair_and_a_shorter_one_does_not() {
    let snap = |index: u64| Message {
        msg_type: MessageType::MsgSnap,
        from: 1,
        to: 3,
        term: 2,
        snapshot: Some(Snapshot {
            metadata: SnapshotMetadata { index, term: 2, conf_state: voters(&[1, 2, 3]) },
            data: Bytes::from_static(b"image"),
        }),
        ..Message::default()
    };
    let (mut node, store) = lone(Some(LOST), false);
    drain(&mut node, &store);
    node.step(snap(LOST.index - 1)).unwrap();
    drain(&mut node, &store);
    assert_eq!(node.status().last_index, LOST.index - 1);
    assert_eq!(node.status().repairing, Some(LOST), "the snapshot stops short of 6");
    node.step(snap(LOST.index)).unwrap();
    let rd = node.ready();
    assert_eq!(rd.snapshot.as_ref().map(|s| s.metadata.index), Some(LOST.index));
    assert_eq!(node.status().repairing, Some(LOST), "not persisted yet");
    store.apply_snapshot(rd.snapshot.clone().unwrap()).unwrap();
    node.advance(rd);
    assert_eq!(node.status().repairing, None);
    assert_eq!(store.repair_state().unwrap(), None);
}

#[test]
fn a_repairing_node_starts_whatever_the_damage_left_of_its_hard_state() {
    // The hard state says commit 6 and term 2, but the log ends at 3 and had seen term 5.
    let store = founded();
    let es: Vec<Entry> = (1..=3).map(|i| Entry::new(i, 2, Bytes::new())).collect();
    store.append(&es).unwrap();
    store.set_hard_state(HardState { term: 2, vote: 1, commit: 6 }).unwrap();
    let repair = RepairState { index: 6, term: 5 };
    store.set_repair_state(Some(repair)).unwrap();
    let mut node = RawNode::new(&config(3), store.clone()).unwrap();
    let st = node.status();
    assert_eq!(st.repairing, Some(repair));
    assert_eq!(st.hard_state, HardState { term: 5, vote: 0, commit: 3 });
    let rd = node.ready();
    assert_eq!(rd.hard_state.map(|h| h.term), Some(5), "the raised term is persisted");
    assert!(rd.must_sync);
    node.advance(rd);
    // A leader of term 4 (below what the log had seen) cannot repair it.
    let stale = Message {
        msg_type: MessageType::MsgApp,
        from: 1,
        to: 3,
        term: 4,
        index: 3,
        log_term: 2,
        entries: (4..=7).map(|i| Entry::new(i, 4, Bytes::new())).collect(),
        ..Message::default()
    };
    node.step(stale).unwrap();
    drain(&mut node, &store);
    assert_eq!(node.status().last_index, 3);
    assert_eq!(node.status().repairing, Some(repair));
    // A heartbeat whose commit counts the lost entries does not break the node.
    let hb = Message {
        msg_type: MessageType::MsgHeartbeat,
        from: 1,
        to: 3,
        term: 5,
        commit: 6,
        ..Message::default()
    };
    node.step(hb).unwrap();
    let out = drain(&mut node, &store);
    assert!(out.iter().any(|m| m.msg_type == MessageType::MsgHeartbeatResp), "{out:?}");
    assert_eq!(node.status().hard_state.commit, 3);
}

/// Replaces node `id` by one whose storage lost every entry after `keep`: the same
/// membership snapshot and hard state, and the repair state (old last index, term).
fn lose_tail(net: &mut Network, id: u64, keep: u64) -> RepairState {
    let old = net.nodes.remove(&id).unwrap();
    let store = Arc::new(MemoryStorage::new());
    let snapshot = old.store.snapshot().unwrap();
    let applied = snapshot.metadata.index;
    store.apply_snapshot(snapshot).unwrap();
    let kept: Vec<Entry> = old.log().into_iter().filter(|e| e.index <= keep).collect();
    store.append(&kept).unwrap();
    let hs = old.store.hard_state();
    store.set_hard_state(hs).unwrap();
    let repair = RepairState { index: old.store.last_index().unwrap(), term: hs.term };
    store.set_repair_state(Some(repair)).unwrap();
    net.add_node(id, store, Config { applied, ..old.config.clone() });
    assert_eq!(net.node(id).raw.status().repairing, Some(repair));
    repair
}

fn same_entry(a: &Entry, b: &Entry) -> bool {
    (a.index, a.term, a.entry_type, &a.data) == (b.index, b.term, b.entry_type, &b.data)
}

#[test]
fn a_node_that_lost_acknowledged_entries_does_not_elect_a_leader_lacking_them() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    // 2 misses the next entries; they commit with 3's acknowledgements.
    net.isolate(2);
    for d in ["a", "b", "c"] {
        net.propose(1, d).unwrap();
    }
    let committed = net.node(1).log();
    assert_eq!(committed.len(), 4);
    assert_eq!(net.node(1).committed(), 4, "committed by 1 and 3");
    assert_eq!(net.node(3).log().len(), 4);
    assert_eq!(net.node(2).log().len(), 1);

    // 3 loses the three entries; 1 is cut off; 2 campaigns.
    net.heal();
    net.isolate(1);
    let repair = lose_tail(&mut net, 3, 1);
    assert_eq!(repair, RepairState { index: 4, term: 1 });
    net.campaign(2);
    assert_ne!(net.node(2).state(), StateRole::Leader, "3's vote would elect 2, lacking a..c");
    assert_eq!(net.node(3).term(), net.node(2).term(), "3 moved to the candidate's term");
    assert_eq!(net.node(3).store.hard_state().vote, 0, "without voting");
    for _ in 0..50 {
        net.tick_all();
        let leaders = net.leaders();
        assert!(!leaders.contains(&2) && !leaders.contains(&3), "{leaders:?}");
    }
    assert_eq!(net.node(3).raw.status().repairing, Some(repair));

    // 1 returns: it is the only node that may lead, and it repairs 3.
    net.heal();
    let leader = net.elect(500);
    assert_eq!(leader, 1);
    assert!(net.node(1).term() > repair.term, "a new term, which probes every follower");
    for _ in 0..3 {
        net.tick_all();
    }
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.node(3).raw.status().repairing, None, "3 holds index 4 again");
    assert_eq!(net.node(3).store.repair_state().unwrap(), None);
    for id in [1, 3] {
        let log = net.node(id).log();
        for e in &committed {
            let got = log.iter().find(|g| g.index == e.index);
            assert!(got.is_some_and(|g| same_entry(g, e)), "node {id} lacks {e:?}: {log:?}");
        }
    }
    assert_eq!(net.node(3).applied_data(), vec!["a", "b", "c"]);

    // Repaired, 3 votes again: with 1 cut off, 2 (caught up by now) wins only with 3's vote.
    assert_eq!(net.node(2).log().len(), net.node(1).log().len());
    net.isolate(1);
    net.campaign(2);
    assert_eq!(net.node(2).state(), StateRole::Leader);
    assert_eq!(net.node(3).store.hard_state().vote, 2);
}

#[test]
fn a_leader_repairs_a_node_with_a_snapshot_when_it_compacted_the_lost_entries() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    for d in ["a", "b", "c"] {
        net.propose(1, d).unwrap();
    }
    let committed = net.node(1).log();
    let repair = lose_tail(&mut net, 3, 1);
    assert_eq!(repair.index, 4);
    // 2 compacts everything it applied and takes over: a new leader probes every follower
    // afresh, and the entries 3 needs are gone from its log.
    assert_eq!(net.node(2).applied.last().map(|e| e.index), Some(4));
    net.compact(2, 4);
    net.node(1).raw.transfer_leader(2);
    net.stabilize();
    assert_eq!(net.node(2).state(), StateRole::Leader);
    for _ in 0..3 {
        net.tick_all();
    }
    let n3 = net.node(3);
    assert_eq!(n3.snapshot_index, 4, "repaired by the snapshot");
    assert_eq!(n3.raw.status().repairing, None);
    let log = net.node(1).log();
    for e in &committed {
        assert!(log.iter().any(|g| same_entry(g, e)), "1 lacks {e:?}");
    }
}

#[test]
fn a_leader_that_kept_its_term_repairs_a_node_at_its_next_write() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    for d in ["a", "b", "c"] {
        net.propose(1, d).unwrap();
    }
    let committed = net.node(1).log();
    // 3 restarts with a damaged log while 1 stays leader: 1 believes 3 holds index 4.
    let repair = lose_tail(&mut net, 3, 1);
    net.tick_all();
    assert_eq!(net.node(3).raw.status().repairing, Some(repair), "heartbeats repair nothing");
    assert_eq!(net.node(3).committed(), 1, "a heartbeat's commit is capped at its log");
    // The next write: 3 rejects the leader's probe at what it had acknowledged, and the
    // leader probes lower instead of resending the same probe forever.
    net.propose(1, "d").unwrap();
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.node(1).term(), 1, "no election was needed");
    assert_eq!(net.node(3).raw.status().repairing, None);
    let log = net.node(3).log();
    for e in &committed {
        assert!(log.iter().any(|g| same_entry(g, e)), "3 lacks {e:?}");
    }
    assert_eq!(net.node(3).applied_data(), vec!["a", "b", "c", "d"]);
}

#[test]
fn a_loss_of_unknown_extent_ends_once_the_log_matches_a_leaders_commit_of_its_term() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    for d in ["a", "b", "c"] {
        net.propose(1, d).unwrap();
    }
    let committed = net.node(1).log();
    let known = lose_tail(&mut net, 3, 1);
    // The storage could not tell how far the log had gone.
    let unknown = RepairState { index: u64::MAX, term: known.term };
    net.node(3).store.set_repair_state(Some(unknown)).unwrap();
    let id3 = net.node(3).config.clone();
    let store = net.nodes.remove(&3).unwrap().store;
    net.add_node(3, store, id3);
    assert_eq!(net.node(3).raw.status().repairing, Some(unknown));
    // The same leader's writes do not end it: that leader may still count an acknowledgement
    // 3 sent for an entry it lost.
    net.propose(1, "d").unwrap();
    net.tick_all();
    assert_eq!(net.node(3).raw.status().repairing, Some(unknown), "same term: still repairing");
    // A leader of a later term, once it committed an entry of its own term that 3 holds.
    net.node(1).raw.transfer_leader(2);
    net.stabilize();
    assert_eq!(net.node(2).state(), StateRole::Leader);
    assert!(net.node(2).term() > unknown.term);
    net.tick_all();
    assert_eq!(net.node(3).raw.status().repairing, None, "matched the new leader's commit");
    let log = net.node(3).log();
    for e in &committed {
        assert!(log.iter().any(|g| same_entry(g, e)), "3 lacks {e:?}");
    }
}
