//! The node: one thread owns the `RawNode`, the `WalStorage` and the state machine, and runs
//! the Ready loop. Everything else (peer connections, HTTP requests) reaches it as an
//! [`Event`] on one queue, and HTTP requests wait on a reply channel of their own.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use raftwal::raft::{
    ConfChange, ConfChangeType, ConfChangeV2, Config, Message, MessageType, RawNode,
    SnapshotStatus, StateRole,
};
use raftwal::{ConfState, Entry, EntryType, Snapshot, Storage, WalOptions, WalStorage};
use serde::Serialize;
use tracing::{info, warn};

use crate::kv::{Command, KvState, MemberContext, Op, RequestId};
use crate::transport::Peer;

/// What a waiting HTTP request gets back: a value (or none) once its entry is applied or its
/// read confirmed, or why it could not be served.
pub type Reply = Result<Option<String>, String>;

/// Everything the node thread reacts to.
pub enum Event {
    /// A message from a peer.
    Message(Box<Message>),
    /// A message to this peer could not be sent.
    Unreachable(u64),
    /// Sending a snapshot to this peer succeeded (true) or failed.
    SnapshotStatus(u64, bool),
    /// Propose a change to the map; answered once it is applied.
    Propose(Op, Sender<Reply>),
    /// A linearizable read of a key.
    Read(String, Sender<Reply>),
    /// Add a voter at a Raft address; answered once the change is applied.
    AddMember(u64, String, Sender<Reply>),
    /// Remove a member; answered once the change is applied.
    RemoveMember(u64, Sender<Reply>),
    /// The node's status as JSON.
    Status(Sender<String>),
    /// Bring the gauges of the storage and the node up to date (before `GET /metrics`).
    RefreshMetrics(Sender<()>),
}

/// How the node is set up (from the command line).
pub struct Options {
    /// This node's id.
    pub id: u64,
    /// Raft addresses by node id, this node's included.
    pub peers: BTreeMap<u64, String>,
    /// Whether this node joins a running cluster (starts empty, without bootstrapping).
    pub join: bool,
    /// Wall-clock length of one Raft tick.
    pub tick: Duration,
    /// Ticks of the election timeout.
    pub election_ticks: usize,
    /// A snapshot of the map is taken every this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log below a snapshot, for followers that lag a little.
    pub compact_keep: u64,
    /// How long a proposal or read may wait before it is dropped.
    pub request_timeout: Duration,
}

/// Events handled per round before the node looks at its Ready again.
const MAX_EVENTS_PER_ROUND: usize = 1024;
/// Ready/advance cycles per round.
const MAX_READY_PER_ROUND: usize = 64;
/// Requests (writes and reads) waiting at once; more are refused with 503.
const MAX_PENDING_REQUESTS: usize = 10_000;

#[derive(Serialize)]
struct StatusReport {
    id: u64,
    leader: u64,
    term: u64,
    role: String,
    commit: u64,
    applied: u64,
    first_index: u64,
    last_index: u64,
    snapshot_index: u64,
    snapshots_received: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    keys: usize,
}

/// A request waiting for its entry to be applied or its read to be served.
struct Waiter {
    /// When it arrived (read latency is measured from here).
    started: Instant,
    deadline: Instant,
    reply: Sender<Reply>,
    /// For a read: the key.
    key: Option<String>,
}

/// The node thread's state.
pub struct Node {
    id: u64,
    options: Options,
    raw: RawNode<Arc<WalStorage>>,
    storage: Arc<WalStorage>,
    kv: KvState,
    conf_state: ConfState,
    /// Highest index applied to `kv` (or covered by the snapshot it was restored from).
    applied: u64,
    /// Index of the newest snapshot in storage.
    snapshot_index: u64,
    /// Snapshots received from a leader since this process started.
    snapshots_received: u64,
    /// A membership change was applied since the last snapshot: take one now. A node accepts
    /// a snapshot only if its membership names the node, so a node just added can be caught
    /// up only from a snapshot taken after its addition.
    snapshot_due: bool,
    peers: BTreeMap<u64, Peer>,
    events: Sender<Event>,
    incarnation: u64,
    next_seq: u64,
    /// Writes and membership changes by request id; reads by their `read_index` context.
    waiting: HashMap<RequestId, Waiter>,
    /// Reads confirmed by the leader: (read index, context), served once applied reaches it.
    confirmed: Vec<(u64, Bytes)>,
    /// The leader last seen (to count leader changes).
    leader: u64,
}

impl Node {
    /// Opens the storage in `dir`, rebuilds the map from the newest snapshot (the committed
    /// entries after it are handed out again by the first Readys) and, for a new cluster,
    /// bootstraps it with the members of `--peers`.
    pub fn open(options: Options, dir: &Path, events: Sender<Event>) -> Fallible<Node> {
        let id = options.id;
        let storage = Arc::new(WalStorage::open(dir, WalOptions::default())?);
        let snap = storage.snapshot()?;
        let kv = KvState::decode(&snap.data)?;
        let state = storage.initial_state()?;
        let fresh = state.hard_state.is_empty() && storage.last_index()? == 0;
        let config = Config {
            id,
            election_tick: options.election_ticks,
            heartbeat_tick: 1,
            applied: snap.metadata.index,
            check_quorum: true,
            pre_vote: true,
            ..Config::new(id)
        };
        let mut raw = RawNode::new(&config, storage.clone())?;
        if fresh && !options.join {
            raw.bootstrap(options.peers.keys())?;
        }
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let mut node = Node {
            id,
            raw,
            storage,
            kv,
            conf_state: snap.metadata.conf_state.clone(),
            applied: snap.metadata.index,
            snapshot_index: snap.metadata.index,
            snapshots_received: 0,
            snapshot_due: false,
            peers: BTreeMap::new(),
            events,
            incarnation,
            next_seq: 0,
            waiting: HashMap::new(),
            confirmed: Vec::new(),
            leader: 0,
            options,
        };
        let known: Vec<(u64, String)> = node
            .kv
            .addrs
            .iter()
            .chain(node.options.peers.iter())
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        for (peer, addr) in known {
            node.ensure_peer(peer, &addr);
        }
        Ok(node)
    }

    /// Runs the node until the event queue closes (it does not while the process lives: the
    /// node holds a sender for its transport).
    pub fn run(mut self, events: &Receiver<Event>) -> Fallible<()> {
        let tick = self.options.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match events.recv_timeout(wait) {
                Ok(ev) => self.handle(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            for _ in 0..MAX_EVENTS_PER_ROUND {
                match events.try_recv() {
                    Ok(ev) => self.handle(ev),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                // After a stall, tick once and resume the rhythm rather than catching up.
                next_tick = (next_tick + tick).max(now);
                self.expire(now);
            }
            self.process_ready()?;
        }
    }

    fn next_request(&mut self) -> RequestId {
        self.next_seq += 1;
        RequestId { node: self.id, incarnation: self.incarnation, seq: self.next_seq }
    }

    fn ensure_peer(&mut self, id: u64, addr: &str) {
        if id == self.id || self.peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        match Peer::start(id, addr.to_string(), self.events.clone()) {
            Ok(peer) => {
                self.peers.insert(id, peer);
            }
            Err(e) => warn!(node = self.id, peer = id, error = %e, "cannot start the sender"),
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Message(m) => {
                // Messages from removed or unknown peers are refused by the core; nothing to do.
                let _ = self.raw.step(*m);
            }
            Event::Unreachable(id) => self.raw.report_unreachable(id),
            Event::SnapshotStatus(id, ok) => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.raw.report_snapshot(id, status);
            }
            Event::Propose(op, reply) => {
                let req = self.next_request();
                let data = serde_json::to_vec(&Command { req, op }).expect("serializes");
                let proposed = self.raw.propose(data);
                self.wait(req, proposed.map_err(|e| e.to_string()), reply, None);
            }
            Event::Read(key, reply) => {
                let req = self.next_request();
                if self.waiting.len() >= MAX_PENDING_REQUESTS {
                    let _ = reply.send(Err("too many requests waiting".into()));
                    return;
                }
                self.raw.read_index(serde_json::to_vec(&req).expect("serializes"));
                self.wait(req, Ok(()), reply, Some(key));
            }
            Event::AddMember(id, addr, reply) => {
                let req = self.next_request();
                let context = MemberContext { req: Some(req), addr: Some(addr) };
                let cc = ConfChange {
                    change_type: ConfChangeType::AddNode,
                    node_id: id,
                    context: serde_json::to_vec(&context).expect("serializes").into(),
                };
                let proposed = self.raw.propose_conf_change(cc);
                self.wait(req, proposed.map_err(|e| e.to_string()), reply, None);
            }
            Event::RemoveMember(id, reply) => {
                let req = self.next_request();
                let context = MemberContext { req: Some(req), addr: None };
                let cc = ConfChange {
                    change_type: ConfChangeType::RemoveNode,
                    node_id: id,
                    context: serde_json::to_vec(&context).expect("serializes").into(),
                };
                let proposed = self.raw.propose_conf_change(cc);
                self.wait(req, proposed.map_err(|e| e.to_string()), reply, None);
            }
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::RefreshMetrics(reply) => {
                self.refresh_metrics();
                let _ = reply.send(());
            }
        }
    }

    /// Sets the gauges: the storage's (sizes) and the node's (term, commit, applied, role).
    /// Counters and histograms are updated where their events happen.
    fn refresh_metrics(&self) {
        self.storage.metrics();
        let st = self.raw.status();
        metrics::gauge!("raftwal_kv_term").set(st.hard_state.term as f64);
        metrics::gauge!("raftwal_kv_commit_index").set(st.hard_state.commit as f64);
        metrics::gauge!("raftwal_kv_applied_index").set(self.applied as f64);
        metrics::gauge!("raftwal_kv_last_index").set(st.last_index as f64);
        metrics::gauge!("raftwal_kv_leader_id").set(st.soft_state.leader_id as f64);
        let leading = st.soft_state.raft_state == StateRole::Leader;
        metrics::gauge!("raftwal_kv_is_leader").set(if leading { 1.0 } else { 0.0 });
        metrics::gauge!("raftwal_kv_requests_waiting").set(self.waiting.len() as f64);
    }

    fn wait(
        &mut self,
        req: RequestId,
        proposed: Result<(), String>,
        reply: Sender<Reply>,
        key: Option<String>,
    ) {
        if let Err(e) = proposed {
            metrics::counter!("raftwal_kv_proposals_dropped_total").increment(1);
            let _ = reply.send(Err(format!("not proposed: {e}")));
            return;
        }
        if self.waiting.len() >= MAX_PENDING_REQUESTS {
            // Proposed already: it may still take effect, but nobody will be told.
            let _ = reply.send(Err("too many requests waiting".into()));
            return;
        }
        let started = Instant::now();
        let deadline = started + self.options.request_timeout;
        self.waiting.insert(req, Waiter { started, deadline, reply, key });
    }

    /// Drops requests whose HTTP side has given up (it answers 503 on its own timeout).
    fn expire(&mut self, now: Instant) {
        let before = self.waiting.len();
        self.waiting.retain(|_, w| w.deadline > now);
        let expired = before - self.waiting.len();
        metrics::counter!("raftwal_kv_requests_expired_total").increment(expired as u64);
        let waiting = &self.waiting;
        self.confirmed.retain(|(_, ctx)| {
            serde_json::from_slice::<RequestId>(ctx).is_ok_and(|req| waiting.contains_key(&req))
        });
    }

    fn status(&self) -> String {
        let st = self.raw.status();
        let report = StatusReport {
            id: self.id,
            leader: st.soft_state.leader_id,
            term: st.hard_state.term,
            role: format!("{:?}", st.soft_state.raft_state),
            commit: st.hard_state.commit,
            applied: self.applied,
            first_index: self.storage.first_index().unwrap_or_default(),
            last_index: st.last_index,
            snapshot_index: self.snapshot_index,
            snapshots_received: self.snapshots_received,
            voters: st.conf_state.voters,
            learners: st.conf_state.learners,
            keys: self.kv.data.len(),
        };
        serde_json::to_string(&report).expect("serializes")
    }

    /// The Ready loop: persist, send, apply, advance; then serve confirmed reads and take a
    /// snapshot if one is due.
    fn process_ready(&mut self) -> Fallible<()> {
        for _ in 0..MAX_READY_PER_ROUND {
            if !self.raw.has_ready() {
                return Ok(());
            }
            let mut rd = self.raw.ready();
            if let Some(ss) = rd.soft_state {
                if ss.leader_id != self.leader {
                    self.leader = ss.leader_id;
                    metrics::counter!("raftwal_kv_leader_changes_total").increment(1);
                }
                if ss.raft_state == StateRole::Leader {
                    let term = self.raw.status().hard_state.term;
                    info!(node = self.id, term, "became leader");
                }
            }
            // 1. Persist: the snapshot, then entries and hard state in one synced write.
            if let Some(s) = &rd.snapshot {
                self.storage.apply_snapshot(s.clone())?;
            }
            if !rd.entries.is_empty() || rd.hard_state.is_some() {
                self.storage.save(rd.hard_state.as_ref(), &rd.entries)?;
            }
            // 2. Send, only now. Failures are reported to the core after `advance`.
            let mut failed = Vec::new();
            for m in std::mem::take(&mut rd.messages) {
                self.send(m, &mut failed);
            }
            // 3. Apply.
            if let Some(s) = &rd.snapshot {
                self.restore(s)?;
            }
            for rs in &rd.read_states {
                self.confirmed.push((rs.index, rs.request_ctx.clone()));
            }
            for e in &rd.committed_entries {
                self.apply(e)?;
            }
            // 4. Acknowledge.
            self.raw.advance(rd);
            for ev in failed {
                self.handle(ev);
            }
            self.serve_reads();
            self.maybe_snapshot()?;
        }
        Ok(())
    }

    fn send(&mut self, m: Message, failed: &mut Vec<Event>) {
        let (to, is_snap) = (m.to, m.msg_type == MessageType::MsgSnap);
        let queued = self.peers.get(&to).is_some_and(|p| p.send(m));
        if !queued {
            failed.push(if is_snap {
                Event::SnapshotStatus(to, false)
            } else {
                Event::Unreachable(to)
            });
        }
    }

    /// Replaces the map with a snapshot received from the leader (already in storage).
    fn restore(&mut self, s: &Snapshot) -> Fallible<()> {
        assert!(
            s.metadata.index > self.applied,
            "node {}: snapshot at {} is not past applied {}",
            self.id,
            s.metadata.index,
            self.applied
        );
        self.kv = KvState::decode(&s.data)?;
        self.conf_state = s.metadata.conf_state.clone();
        self.applied = s.metadata.index;
        self.snapshot_index = s.metadata.index;
        self.snapshots_received += 1;
        let addrs: Vec<(u64, String)> =
            self.kv.addrs.iter().map(|(id, a)| (*id, a.clone())).collect();
        for (id, addr) in addrs {
            self.ensure_peer(id, &addr);
        }
        self.answer_covered();
        metrics::counter!("raftwal_kv_snapshots_received_total").increment(1);
        info!(node = self.id, index = s.metadata.index, "restored from a snapshot");
        Ok(())
    }

    /// Answers the writes and membership changes whose entries the snapshot just restored
    /// covers: this node never applies those entries itself, so their outcome is the one the
    /// snapshot's state machine recorded. The others keep waiting (they may commit later).
    fn answer_covered(&mut self) {
        let covered: Vec<(RequestId, bool)> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.key.is_none())
            .filter_map(|(req, _)| self.kv.outcome(req).map(|took_effect| (*req, took_effect)))
            .collect();
        for (req, took_effect) in covered {
            let reply = if took_effect {
                Ok(None)
            } else {
                Err("refused by the membership (applied through a snapshot)".into())
            };
            self.answer(Some(req), reply);
        }
    }

    fn answer(&mut self, req: Option<RequestId>, reply: Reply) {
        if let Some(w) = req.and_then(|r| self.waiting.remove(&r)) {
            let _ = w.reply.send(reply);
        }
    }

    fn apply(&mut self, e: &Entry) -> Fallible<()> {
        if e.index <= self.applied {
            return Ok(()); // covered by the snapshot the map was restored from
        }
        assert_eq!(
            e.index,
            self.applied + 1,
            "node {}: applied {} then {}: a gap in the committed entries",
            self.id,
            self.applied,
            e.index
        );
        self.applied = e.index;
        match e.entry_type {
            EntryType::Normal if e.data.is_empty() => {} // a new leader's empty entry
            EntryType::Normal => {
                let cmd: Command = serde_json::from_slice(&e.data)?;
                self.kv.apply(&cmd.op);
                self.kv.record(cmd.req, true);
                self.answer(Some(cmd.req), Ok(None));
            }
            EntryType::ConfChange => {
                let cc = ConfChange::decode(&e.data)?;
                let context = member_context(&cc.context);
                self.conf_state = self.raw.apply_conf_change(&cc);
                self.member_changed(cc.change_type, cc.node_id, context);
            }
            EntryType::ConfChangeV2 => {
                let cc = ConfChangeV2::decode(&e.data)?;
                let context = member_context(&cc.context);
                self.conf_state = self.raw.apply_conf_change(&cc);
                for c in &cc.changes {
                    self.member_changed(c.change_type, c.node_id, context.clone());
                }
            }
        }
        Ok(())
    }

    /// Keeps the address book and the peer connections in step with an applied change.
    fn member_changed(&mut self, change: ConfChangeType, node: u64, context: MemberContext) {
        let cs = &self.conf_state;
        let member = cs.voters.contains(&node) || cs.learners.contains(&node);
        let took_effect = match change {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => member,
            ConfChangeType::RemoveNode => !member,
        };
        match change {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(addr) = &context.addr {
                    self.kv.addrs.insert(node, addr.clone());
                    self.ensure_peer(node, addr);
                }
            }
            ConfChangeType::RemoveNode => {
                self.kv.addrs.remove(&node);
                if node == self.id {
                    info!(node = self.id, "removed from the cluster");
                }
            }
        }
        self.snapshot_due = true;
        if let Some(req) = context.req {
            self.kv.record(req, took_effect);
        }
        let reply = if took_effect {
            Ok(None)
        } else {
            Err(format!("change {change:?} of node {node} refused by the membership"))
        };
        self.answer(context.req, reply);
    }

    fn serve_reads(&mut self) {
        let applied = self.applied;
        let mut ready = Vec::new();
        self.confirmed.retain(|(index, ctx)| {
            if *index > applied {
                return true;
            }
            ready.push(ctx.clone());
            false
        });
        for ctx in ready {
            let Ok(req) = serde_json::from_slice::<RequestId>(&ctx) else { continue };
            if let Some(w) = self.waiting.remove(&req) {
                let took = w.started.elapsed().as_secs_f64();
                metrics::histogram!("raftwal_kv_read_index_duration_seconds").record(took);
                let key = w.key.as_deref().unwrap_or_default();
                let _ = w.reply.send(Ok(self.kv.data.get(key).cloned()));
            }
        }
    }

    /// Every `snapshot_every` applied entries, and after a membership change: a snapshot of the
    /// map, then compaction of the log up to `compact_keep` entries below it.
    fn maybe_snapshot(&mut self) -> Fallible<()> {
        let due = self.applied >= self.snapshot_index + self.options.snapshot_every
            || (self.snapshot_due && self.applied > self.snapshot_index);
        if !due {
            return Ok(());
        }
        self.snapshot_due = false;
        let image = Bytes::from(self.kv.encode());
        self.storage.create_snapshot(self.applied, Some(self.conf_state.clone()), image)?;
        self.snapshot_index = self.applied;
        let target = self.applied.saturating_sub(self.options.compact_keep);
        if target >= self.storage.first_index()? {
            self.storage.compact(target)?;
        }
        Ok(())
    }
}

fn member_context(context: &[u8]) -> MemberContext {
    if context.is_empty() {
        return MemberContext::default();
    }
    serde_json::from_slice(context).unwrap_or_default()
}

/// The node's fatal failures: storage errors, undecodable entries or snapshots.
pub type Fallible<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{TryRecvError, channel};

    use raftwal::SnapshotMetadata;

    use super::*;

    fn single_node(dir: &Path) -> Node {
        let options = Options {
            id: 1,
            peers: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
            join: false,
            tick: Duration::from_millis(10),
            election_ticks: 10,
            snapshot_every: 1000,
            compact_keep: 10,
            request_timeout: Duration::from_secs(60),
        };
        let (events, _) = channel();
        Node::open(options, dir, events).unwrap()
    }

    /// A leader's snapshot at `index` whose state machine applied `applied` (with outcomes).
    fn leader_snapshot(index: u64, applied: &[(RequestId, Op, bool)]) -> Snapshot {
        let mut kv = KvState::default();
        for (req, op, took_effect) in applied {
            kv.apply(op);
            kv.record(*req, *took_effect);
        }
        Snapshot {
            metadata: SnapshotMetadata {
                index,
                term: 3,
                conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
            },
            data: Bytes::from(kv.encode()),
        }
    }

    #[test]
    fn a_write_covered_by_a_received_snapshot_is_answered_with_its_outcome() {
        let tmp = tempfile::tempdir().unwrap();
        let mut node = single_node(tmp.path());
        let put = Op::Put { key: "k".into(), value: "v".into() };
        let (covered, later, refused) =
            (node.next_request(), node.next_request(), node.next_request());
        let (tx_covered, rx_covered) = channel();
        let (tx_later, rx_later) = channel();
        let (tx_refused, rx_refused) = channel();
        node.wait(covered, Ok(()), tx_covered, None);
        node.wait(later, Ok(()), tx_later, None);
        node.wait(refused, Ok(()), tx_refused, None);

        // The leader applied `covered` and refused the membership change `refused`; `later`
        // is not in the snapshot (it may still commit after it).
        let snapshot = leader_snapshot(
            40,
            &[(covered, put.clone(), true), (refused, Op::Delete { key: "x".into() }, false)],
        );
        node.restore(&snapshot).unwrap();

        assert_eq!(rx_covered.try_recv(), Ok(Ok(None)), "the write took effect");
        assert!(matches!(rx_refused.try_recv(), Ok(Err(_))), "the change was refused");
        assert_eq!(rx_later.try_recv(), Err(TryRecvError::Empty), "still waiting");
        assert_eq!(node.kv.data.get("k").map(String::as_str), Some("v"));
    }
}
