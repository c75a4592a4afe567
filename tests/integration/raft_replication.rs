//! Replication: the paper's Figures 7 and 8, fast backtracking, flow control, snapshots.

use std::sync::Arc;

use bytes::Bytes;
use raftwal::raft::{Config, MessageType, RawNode, SnapshotStatus, StateRole};
use raftwal::{
    ConfState, Entry, Error, HardState, MemoryStorage, Result, Snapshot, SnapshotMetadata, Storage,
};

use crate::raft_net::{Network, config, entry, voters};

/// A storage preloaded with entries of the given terms (index 1, 2, ...) and a hard state.
fn preloaded(cs: &ConfState, terms: &[u64], term: u64) -> Arc<MemoryStorage> {
    let s = Arc::new(MemoryStorage::new());
    s.apply_snapshot(Snapshot {
        metadata: SnapshotMetadata { conf_state: cs.clone(), ..Default::default() },
        data: Bytes::new(),
    })
    .unwrap();
    let es: Vec<Entry> = terms.iter().enumerate().map(|(k, t)| entry(k as u64 + 1, *t)).collect();
    s.append(&es).unwrap();
    s.set_hard_state(HardState { term, vote: 0, commit: 0 }).unwrap();
    s
}

fn network_of(logs: &[&[u64]], term: u64, cfg: impl Fn(u64) -> Config) -> Network {
    let ids: Vec<u64> = (1..=logs.len() as u64).collect();
    let cs = voters(&ids);
    let mut net = Network::with_conf(&[], &cs, &cfg);
    for (k, terms) in logs.iter().enumerate() {
        let id = k as u64 + 1;
        net.add_node(id, preloaded(&cs, terms, term), cfg(id));
    }
    net
}

fn terms_of(log: &[Entry]) -> Vec<u64> {
    log.iter().map(|e| e.term).collect()
}

#[test]
fn figure_7_follower_logs_converge_to_the_leaders() {
    let leader: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing entries
        &[1, 1, 1, 4],                         // (b) missing a lot
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) an extra uncommitted entry
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra entries of a later term
        &[1, 1, 1, 4, 4, 4, 4],                // (e) extra and missing
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) many entries of terms never committed
    ];
    let mut logs = vec![leader];
    logs.extend(followers);
    let mut net = network_of(&logs, 7, config);
    net.campaign(1);
    assert_eq!(net.node(1).state(), StateRole::Leader);
    assert_eq!(net.node(1).term(), 8);
    let want = net.node(1).log();
    assert_eq!(terms_of(&want), vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 8]);
    for id in 2..=7 {
        assert_eq!(net.node(id).log(), want, "follower {id} converged");
        assert_eq!(net.node(id).committed(), 11);
    }
    // Each follower needed at most one rejection per term it had to skip: fast backtracking.
    for id in 2..=7u64 {
        let rejections = net
            .delivered
            .iter()
            .filter(|m| m.msg_type == MessageType::MsgAppResp && m.reject && m.from == id)
            .count();
        assert!(rejections <= 2, "follower {id} needed {rejections} rejections");
    }
}

#[test]
fn backtracking_skips_a_whole_term_per_round_trip() {
    // The follower holds 50 entries of term 2 that the leader (term 3 entries) never had.
    let leader: Vec<u64> = [vec![1; 5], vec![3; 50]].concat();
    let follower: Vec<u64> = [vec![1; 5], vec![2; 60]].concat();
    let mut net = network_of(&[&leader, &follower, &leader], 3, config);
    net.cut.insert((1, 3));
    net.cut.insert((3, 1));
    // 3 is cut from 1 but has the same log, so 1 wins with 2's vote.
    net.campaign(1);
    assert_eq!(net.node(1).state(), StateRole::Leader);
    let rejections = net
        .delivered
        .iter()
        .filter(|m| m.msg_type == MessageType::MsgAppResp && m.reject && m.from == 2)
        .count();
    assert_eq!(rejections, 1, "one probe per term, not one per entry");
    assert_eq!(net.node(2).log(), net.node(1).log());
}

#[test]
fn figure_8_an_old_term_entry_is_never_committed_by_counting_replicas() {
    // S1 led term 2 and replicated index 2 to S2; S5 led term 3 and wrote index 2 alone.
    let cfg = |id| Config {
        // One entry per append, so the old-term entry can reach a majority alone.
        max_size_per_msg: 0,
        ..config(id)
    };
    let mut net = network_of(&[&[1, 2], &[1, 2], &[1], &[1], &[1, 3]], 3, cfg);
    for id in 1..=5 {
        net.node(id).store.set_hard_state(HardState { term: 3, vote: 0, commit: 1 }).unwrap();
        net.restart(id);
    }
    net.isolate(5);
    // S1 becomes leader of term 4. Every append carrying a term-4 entry (its no-op) is lost,
    // except the first probe to S3 and to S4, which they reject (they lack index 2); that
    // makes S1 send them index 2 alone.
    let allowed = std::cell::Cell::new([3u64, 4]);
    net.filter = Some(Box::new(move |m| {
        if m.msg_type != MessageType::MsgApp || m.entries.iter().all(|e| e.term != 4) {
            return false;
        }
        let mut a = allowed.get();
        if let Some(slot) = a.iter_mut().find(|t| **t == m.to) {
            *slot = 0;
            allowed.set(a);
            return false;
        }
        true
    }));
    net.campaign(1);
    assert_eq!(net.node(1).state(), StateRole::Leader);
    assert_eq!(net.node(1).term(), 4);
    for id in [1, 3, 4] {
        assert_eq!(net.node(id).log()[1].term, 2, "S{id} holds index 2 of term 2");
    }
    let progress = net.node(1).raw.status().progress;
    assert_eq!(progress[&3].matched, 2);
    assert_eq!(progress[&4].matched, 2, "S1 knows a majority holds index 2");
    assert_eq!(net.node(1).committed(), 1, "but it is not committed by counting");

    // S1 crashes; S5 comes back and wins term 5 with S2, S3, S4 (its last term 3 beats 2).
    net.heal();
    net.isolate(1);
    // Its first campaign (term 4) finds the votes of term 4 taken; the next one wins.
    for _ in 0..3 {
        if net.node(5).state() != StateRole::Leader {
            net.campaign(5);
        }
    }
    assert_eq!(net.node(5).state(), StateRole::Leader);
    assert_eq!(net.node(5).term(), 5);
    for id in 2..=5 {
        let log = net.node(id).log();
        assert_eq!(log[1].term, 3, "S{id}: index 2 overwritten by S5's entry");
        assert!(
            net.node(id).applied.iter().all(|e| !(e.index == 2 && e.term == 2)),
            "S{id} never applied the overwritten entry"
        );
    }
}

#[test]
fn a_new_leader_commits_old_entries_through_its_own_noop() {
    let mut net = network_of(&[&[1, 2, 2], &[1, 2, 2], &[1]], 2, config);
    net.campaign(1);
    assert_eq!(net.node(1).committed(), 4, "old entries commit with the term-3 no-op");
    for id in 1..=3 {
        let applied: Vec<u64> = net.node(id).applied.iter().map(|e| e.term).collect();
        assert_eq!(applied, vec![1, 2, 2, 3]);
    }
}

#[test]
fn heartbeats_carry_the_commit_index_to_followers() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    // 3 gets no appends, only heartbeats; its commit can only come from them.
    net.ignored.insert(MessageType::MsgApp.to_u8());
    net.propose(1, "a").unwrap();
    assert_eq!(net.node(1).committed(), 1, "appends were all lost");
    net.heal();
    net.cut.insert((1, 3));
    net.propose(1, "a").unwrap();
    assert_eq!(net.node(1).committed(), 3);
    net.heal();
    net.node(1).raw.tick();
    net.stabilize();
    assert_eq!(net.node(3).committed(), 3, "heartbeat and catch-up brought the commit");
    assert_eq!(net.node(3).applied_data(), vec![Bytes::from("a"), Bytes::from("a")]);
}

#[test]
fn pipelining_is_bounded_by_the_inflight_count() {
    let cfg = |id| Config { max_inflight_msgs: 3, ..config(id) };
    let mut net = Network::with_conf(&[1, 2], &voters(&[1, 2]), cfg);
    net.campaign(1);
    // 2 stops answering; the leader may have at most 3 appends outstanding to it.
    net.cut.insert((2, 1));
    net.delivered.clear();
    for k in 0..10 {
        let _ = net.propose(1, &format!("p{k}"));
    }
    let apps =
        net.delivered.iter().filter(|m| m.msg_type == MessageType::MsgApp && m.to == 2).count();
    assert_eq!(apps, 3, "the inflight window of 3 is full");
    net.heal();
    for _ in 0..3 {
        net.tick_all();
    }
    assert_eq!(net.node(2).applied_data().len(), 10, "the rest follows once acked");
}

#[test]
fn pipelining_is_bounded_by_inflight_bytes() {
    let cfg = |id| Config {
        max_inflight_msgs: 100,
        max_size_per_msg: 100,
        max_inflight_bytes: 250,
        ..config(id)
    };
    let mut net = Network::with_conf(&[1, 2], &voters(&[1, 2]), cfg);
    net.campaign(1);
    net.cut.insert((2, 1));
    net.delivered.clear();
    for _ in 0..10 {
        let _ = net.propose(1, &"x".repeat(79)); // 100 encoded bytes each
    }
    let apps =
        net.delivered.iter().filter(|m| m.msg_type == MessageType::MsgApp && m.to == 2).count();
    assert_eq!(apps, 3, "250 bytes admit three 100-byte messages (the third fills it)");
}

#[test]
fn appends_are_batched_up_to_max_size_per_msg() {
    let cfg = |id| Config { max_size_per_msg: 250, ..config(id) };
    let mut net = Network::with_conf(&[1, 2], &voters(&[1, 2]), cfg);
    net.campaign(1);
    net.isolate(2);
    for _ in 0..10 {
        net.propose(1, &"x".repeat(79)).unwrap();
    }
    net.heal();
    net.delivered.clear();
    net.node(1).raw.tick();
    net.stabilize();
    let sizes: Vec<usize> = net
        .delivered
        .iter()
        .filter(|m| m.msg_type == MessageType::MsgApp && !m.entries.is_empty())
        .map(|m| m.entries.len())
        .collect();
    assert!(!sizes.is_empty());
    assert!(sizes.iter().all(|n| *n <= 2), "at most 250 bytes per append: {sizes:?}");
    assert_eq!(net.node(2).applied_data().len(), 10);
}

#[test]
fn a_lagging_follower_catches_up_through_a_snapshot() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.isolate(3);
    for k in 0..20 {
        net.propose(1, &format!("v{k}")).unwrap();
    }
    let applied = net.node(1).applied.last().unwrap().index;
    net.compact(1, applied);
    net.heal();
    net.node(1).raw.tick();
    net.stabilize();
    let n3 = net.node(3);
    assert_eq!(n3.snapshot_index, applied, "3 restored the leader's snapshot");
    assert_eq!(n3.store.snapshot().unwrap().data, Bytes::from(format!("image@{applied}")));
    assert_eq!(n3.committed(), applied);
    // And replication continues after it.
    net.propose(1, "after").unwrap();
    assert_eq!(net.node(3).applied_data(), vec![Bytes::from("after")]);
    assert_eq!(net.node(3).log(), net.node(1).log());
}

#[test]
fn a_failed_snapshot_is_retried_after_report_snapshot() {
    let mut net = Network::new(&[1, 2, 3]);
    net.campaign(1);
    net.isolate(3);
    for k in 0..5 {
        net.propose(1, &format!("v{k}")).unwrap();
    }
    let applied = net.node(1).applied.last().unwrap().index;
    net.compact(1, applied);
    net.heal();
    // The first snapshot is lost (the harness reports Failure), the next one goes through.
    net.ignored.insert(MessageType::MsgSnap.to_u8());
    net.node(1).raw.tick();
    net.stabilize();
    assert_eq!(net.node(3).snapshot_index, 0);
    net.heal();
    for _ in 0..3 {
        net.tick_all();
    }
    assert_eq!(net.node(3).snapshot_index, applied);
}

/// A storage whose snapshot is not ready until told so.
struct SlowSnapshot {
    inner: Arc<MemoryStorage>,
    ready: std::sync::atomic::AtomicBool,
}

impl Storage for SlowSnapshot {
    fn initial_state(&self) -> Result<raftwal::RaftState> {
        self.inner.initial_state()
    }
    fn entries(&self, lo: u64, hi: u64, max: u64) -> Result<Vec<Entry>> {
        self.inner.entries(lo, hi, max)
    }
    fn term(&self, i: u64) -> Result<u64> {
        self.inner.term(i)
    }
    fn first_index(&self) -> Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self) -> Result<Snapshot> {
        if self.ready.load(std::sync::atomic::Ordering::SeqCst) {
            self.inner.snapshot()
        } else {
            Err(Error::SnapshotTemporarilyUnavailable)
        }
    }
}

#[test]
fn the_leader_waits_while_the_snapshot_is_temporarily_unavailable() {
    // Leader log compacted at 5 (term 1); follower 2 has nothing: it needs the snapshot.
    let cs = voters(&[1, 2]);
    let inner = preloaded(&cs, &[1; 6], 1);
    inner.set_hard_state(HardState { term: 1, vote: 0, commit: 5 }).unwrap();
    inner.create_snapshot(5, Some(cs.clone()), Bytes::from("img")).unwrap();
    inner.compact(5).unwrap();
    let store = Arc::new(SlowSnapshot { inner, ready: false.into() });
    let mut leader = RawNode::new(&config(1), store.clone()).unwrap();
    leader.campaign().unwrap();
    let rd = leader.ready();
    let vote_req = rd.messages.iter().find(|m| m.msg_type == MessageType::MsgVote).unwrap();
    let mut grant = raftwal::raft::Message::new(MessageType::MsgVoteResp, 2, 1);
    grant.term = vote_req.term;
    leader.advance(rd);
    leader.step(grant).unwrap();
    assert_eq!(leader.status().soft_state.raft_state, StateRole::Leader);
    // The probe is rejected with a hint at 0: entries from 1 are needed, compacted.
    let rd = leader.ready();
    let app = rd.messages.iter().find(|m| m.msg_type == MessageType::MsgApp).unwrap().clone();
    leader.advance(rd);
    let mut reject = raftwal::raft::Message::new(MessageType::MsgAppResp, 2, 1);
    reject.term = app.term;
    reject.index = app.index;
    reject.reject = true;
    leader.step(reject.clone()).unwrap();
    let rd = leader.ready();
    assert!(
        rd.messages.iter().all(|m| m.msg_type != MessageType::MsgSnap),
        "no snapshot while it is unavailable"
    );
    leader.advance(rd);
    store.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut hb = raftwal::raft::Message::new(MessageType::MsgHeartbeatResp, 2, 1);
    hb.term = app.term;
    leader.step(hb).unwrap();
    let rd = leader.ready();
    let snap = rd.messages.iter().find(|m| m.msg_type == MessageType::MsgSnap);
    assert!(snap.is_some(), "sent once available");
    assert_eq!(snap.unwrap().snapshot.as_ref().unwrap().metadata.index, 5);
    leader.advance(rd);
    // Paused until the snapshot is reported.
    leader.propose(Bytes::from("x")).unwrap();
    let rd = leader.ready();
    assert!(
        rd.messages.iter().all(|m| m.to != 2 || m.msg_type != MessageType::MsgApp),
        "a follower receiving a snapshot gets no appends"
    );
    leader.advance(rd);
    leader.report_snapshot(2, SnapshotStatus::Finish);
    assert_eq!(
        leader.status().progress[&2].next_idx,
        6,
        "after the snapshot the follower is probed right after it"
    );
}

#[test]
fn a_stale_snapshot_is_ignored() {
    let mut net = Network::new(&[1, 2]);
    net.campaign(1);
    for k in 0..5 {
        net.propose(1, &format!("v{k}")).unwrap();
    }
    let committed = net.node(2).committed();
    let old = Snapshot {
        metadata: SnapshotMetadata { index: 2, term: 1, conf_state: voters(&[1, 2]) },
        data: Bytes::from("old"),
    };
    let term = net.node(1).term();
    let mut m = raftwal::raft::Message::new(MessageType::MsgSnap, 1, 2);
    m.term = term;
    m.snapshot = Some(old);
    net.node(2).raw.step(m).unwrap();
    net.stabilize();
    assert_eq!(net.node(2).snapshot_index, 0, "a snapshot below commit is not restored");
    assert_eq!(net.node(2).committed(), committed);
    assert_eq!(net.node(2).log(), net.node(1).log());
}
