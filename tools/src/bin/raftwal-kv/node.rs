//! The node: one thread owns the `MultiRaft` (every region's Raft group on one `LogEngine`),
//! the regions' state machines, and runs the ready cycle. Everything else (peer connections,
//! HTTP requests) reaches it as an [`Event`] on one queue, and HTTP requests wait on a reply
//! channel of their own.
//!
//! The key space is split into `--regions` regions by [`region_of`]; region `r` is Raft group
//! `r + 1` over the same members. A membership change is proposed in every region and answered
//! once every region applied it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use raftwal::raft::{
    Batch, ConfChange, ConfChangeType, ConfChangeV2, Config, GroupReady, MultiRaft, SnapshotStatus,
    StateRole,
};
use raftwal::{
    ConfState, Entry, EntryType, GroupStorage, LogEngine, RecoveryMode, RepairState, Snapshot,
    Storage, WalOptions,
};
use serde::Serialize;
use tracing::{info, warn};

use crate::kv::{Command, KvState, MemberContext, Op, RequestId};
use crate::transport::{self, Peer};

/// What a waiting HTTP request gets back: a value (or none) once its entry is applied or its
/// read confirmed, or why it could not be served.
pub type Reply = Result<Option<String>, String>;

/// Everything the node thread reacts to.
pub enum Event {
    /// What a peer's regions sent this node in one of its ready cycles.
    Batch(Box<Batch>),
    /// A batch to this peer could not be sent.
    Unreachable(u64),
    /// Sending a snapshot of a group (second) to a peer (first) succeeded (true) or failed.
    SnapshotStatus(u64, u64, bool),
    /// Propose a change to the map; answered once it is applied.
    Propose(Op, Sender<Reply>),
    /// A linearizable read of a key.
    Read(String, Sender<Reply>),
    /// Add a voter at a Raft address; answered once the change is applied in every region.
    AddMember(u64, String, Sender<Reply>),
    /// Remove a member; answered once the change is applied in every region.
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
    /// Regions the key space is split into (at least 1; the same on every node and start).
    pub regions: u64,
    /// Wall-clock length of one Raft tick.
    pub tick: Duration,
    /// Ticks of the election timeout.
    pub election_ticks: usize,
    /// A snapshot of a region's map is taken every this many entries applied in the region.
    pub snapshot_every: u64,
    /// Entries kept in a region's log below a snapshot, for followers that lag a little.
    pub compact_keep: u64,
    /// How long a proposal or read may wait before it is dropped.
    pub request_timeout: Duration,
    /// What opening the engine does with damaged durable records (`--repair`).
    pub recovery_mode: RecoveryMode,
}

/// Most regions a node hosts: every region is a Raft group ticking on the node's one thread.
pub const MAX_REGIONS: u64 = 1024;
/// Events handled per round before the node looks at its Ready again.
const MAX_EVENTS_PER_ROUND: usize = 1024;
/// Ready cycles per round.
const MAX_READY_PER_ROUND: usize = 64;
/// Requests (writes and reads) waiting at once; more are refused with 503.
const MAX_PENDING_REQUESTS: usize = 10_000;

/// The region of a key: FNV-1a (64 bits) of its UTF-8 bytes, modulo the region count. Stable
/// across processes, builds and platforms, unlike `std`'s randomly seeded hasher.
pub fn region_of(key: &str, regions: u64) -> u64 {
    assert!(regions >= 1, "at least one region");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % regions
}

/// The Raft group of region `region`: group 0 is left unused, so that `raftwal dump` shows
/// region `r` as group `r + 1` whatever the region count.
fn group_of(region: usize) -> u64 {
    region as u64 + 1
}

#[derive(Serialize)]
struct RegionReport {
    region: usize,
    group: u64,
    leader: u64,
    term: u64,
    /// The candidate this node voted for in `term` (0: none).
    vote: u64,
    /// While the region's log is repairing: the index it must reach again (`u64::MAX` if the
    /// extent of the loss is unknown); null otherwise.
    repairing_until: Option<u64>,
    role: String,
    commit: u64,
    applied: u64,
    first_index: u64,
    last_index: u64,
    snapshot_index: u64,
    snapshots_received: u64,
    keys: usize,
}

#[derive(Serialize)]
struct StatusReport {
    id: u64,
    // Region 0's, the only region with `--regions 1`.
    leader: u64,
    term: u64,
    vote: u64,
    repairing_until: Option<u64>,
    role: String,
    commit: u64,
    applied: u64,
    first_index: u64,
    last_index: u64,
    snapshot_index: u64,
    // Sums over the regions.
    snapshots_received: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    keys: usize,
    /// Regions this node leads.
    leading: usize,
    regions: Vec<RegionReport>,
}

/// A request waiting for its entry to be applied or its read to be served.
struct Waiter {
    /// When it arrived (read latency is measured from here).
    started: Instant,
    deadline: Instant,
    reply: Sender<Reply>,
    /// For a read: the key.
    key: Option<String>,
    /// Regions that have not applied the request yet: one for a write or read, every region
    /// for a membership change.
    regions: BTreeSet<usize>,
}

/// One region: its Raft group's storage and its state machine.
struct Region {
    group: u64,
    storage: GroupStorage,
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
    /// Reads confirmed by the leader: (read index, context), served once applied reaches it.
    confirmed: Vec<(u64, Bytes)>,
    /// The leader last seen (to count leader changes).
    leader: u64,
    /// The repair the Raft core reported last (see `RecoveryMode::Repairable`): set from the
    /// start until a leader gave the region's log back what damage cut from it.
    repairing: Option<RepairState>,
}

/// The node thread's state.
pub struct Node {
    id: u64,
    options: Options,
    multi: MultiRaft,
    /// Indexed by region; `regions[r].group == group_of(r)`.
    regions: Vec<Region>,
    peers: BTreeMap<u64, Peer>,
    events: Sender<Event>,
    incarnation: u64,
    next_seq: u64,
    /// Writes and membership changes by request id; reads by their `read_index` context.
    waiting: HashMap<RequestId, Waiter>,
    /// Ticks since start (leadership is rebalanced about every election timeout).
    ticks: u64,
}

impl Node {
    /// Opens the engine in `dir`, rebuilds every region's map from its newest snapshot (the
    /// committed entries after it are handed out again by the first cycles) and, for a new
    /// cluster, bootstraps every region with the members of `--peers`.
    pub fn open(options: Options, dir: &Path, events: Sender<Event>) -> Fallible<Node> {
        let id = options.id;
        let n = options.regions;
        assert!((1..=MAX_REGIONS).contains(&n), "{n} regions: checked by the caller");
        let wal_options =
            WalOptions { recovery_mode: options.recovery_mode, ..WalOptions::default() };
        let engine = LogEngine::open(dir, wal_options)?;
        if let Some(g) = engine.group_ids().into_iter().find(|g| *g == 0 || *g > n) {
            return Err(format!(
                "{} holds group {g}, which {n} region(s) do not have: start the node with the \
                 --regions it was created with",
                dir.display()
            )
            .into());
        }
        let mut multi = MultiRaft::new(id, engine)?;
        // A quiesced follower hears nothing from a leader that died, and this example has no
        // failure detector to wake it: every group ticks (heartbeats are coalesced per node).
        multi.set_quiescence(false);
        let mut regions = Vec::new();
        for r in 0..n as usize {
            let group = group_of(r);
            let storage = multi.engine().group(group)?;
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
            let initial = (fresh && !options.join).then(|| ConfState {
                voters: options.peers.keys().copied().collect(),
                ..ConfState::default()
            });
            multi.create_group(group, config, initial)?;
            let repairing = multi.status(group).and_then(|s| s.repairing);
            if let Some(repair) = repairing {
                info!(
                    node = id,
                    region = r,
                    index = repair.index,
                    term = repair.term,
                    last_index = storage.last_index()?,
                    "repairing: damage cut the log; neither voting nor campaigning until a \
                     leader gives it back"
                );
            }
            regions.push(Region {
                group,
                storage,
                kv,
                conf_state: snap.metadata.conf_state.clone(),
                applied: snap.metadata.index,
                snapshot_index: snap.metadata.index,
                snapshots_received: 0,
                snapshot_due: false,
                confirmed: Vec::new(),
                leader: 0,
                repairing,
            });
        }
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let mut node = Node {
            id,
            multi,
            regions,
            peers: BTreeMap::new(),
            events,
            incarnation,
            next_seq: 0,
            waiting: HashMap::new(),
            ticks: 0,
            options,
        };
        let known: Vec<(u64, String)> = node
            .regions
            .iter()
            .flat_map(|r| r.kv.addrs.iter())
            .chain(node.options.peers.iter())
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        for (peer, addr) in known {
            node.ensure_peer(peer, &addr);
        }
        // Ask for the regions this node should lead. A campaign while the region has a live
        // leader loses its pre-vote and costs nothing; leaders hand the rest over (`rebalance`).
        if n > 1 {
            for r in 0..node.regions.len() {
                if node.preferred_leader(r) == Some(id) {
                    node.multi.campaign(group_of(r))?;
                }
            }
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
                self.multi.tick();
                self.ticks += 1;
                // Not every election timeout: a leader's check-quorum clears every peer's
                // `recent_active` once per election timeout, and a fixed phase could always
                // look right after that clearing. One tick more shifts the phase every round.
                if self.ticks.is_multiple_of(self.options.election_ticks as u64 + 1) {
                    self.rebalance()?;
                }
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

    /// The node that should lead region `r`: the voter at position `r % voters` of its sorted
    /// membership, so that leaderships spread evenly over the members.
    fn preferred_leader(&mut self, r: usize) -> Option<u64> {
        let raw = self.multi.raw_node(group_of(r))?;
        let mut voters = raw.status().conf_state.voters;
        voters.sort_unstable();
        (!voters.is_empty()).then(|| voters[r % voters.len()])
    }

    /// With more than one region: a leader hands each region it leads but should not over to
    /// the node that should, once that node is active (answered since the last check-quorum
    /// round: a dead node would hold the region without a leader for an election timeout) and
    /// holds the whole log (so the transfer is immediate). A restarted node gets its regions back once it caught up.
    fn rebalance(&mut self) -> Fallible<()> {
        if self.regions.len() < 2 {
            return Ok(()); // one leader cannot be spread
        }
        // Bounded by the regions.
        for r in 0..self.regions.len() {
            let Some(preferred) = self.preferred_leader(r) else { continue };
            let group = group_of(r);
            let Some(raw) = self.multi.raw_node(group) else { continue };
            let st = raw.status();
            if preferred == self.id
                || st.soft_state.raft_state != StateRole::Leader
                || st.lead_transferee.is_some()
            {
                continue;
            }
            let ready = st
                .progress
                .get(&preferred)
                .is_some_and(|p| p.recent_active && p.matched == st.last_index);
            if ready {
                info!(node = self.id, region = r, to = preferred, "handing leadership over");
                self.multi.transfer_leader(group, preferred)?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Batch(b) => {
                // Items from removed or unknown peers are dropped by the core; an error means
                // the node is poisoned, which the next cycle reports.
                let _ = self.multi.step(*b);
            }
            Event::Unreachable(id) => self.multi.report_unreachable(id),
            Event::SnapshotStatus(id, group, ok) => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                let _ = self.multi.report_snapshot(group, id, status);
            }
            Event::Propose(op, reply) => {
                let key = match &op {
                    Op::Put { key, .. } | Op::Delete { key } => key,
                };
                let r = region_of(key, self.options.regions) as usize;
                let req = self.next_request();
                let data = serde_json::to_vec(&Command { req, op }).expect("serializes");
                let proposed = self.multi.propose(group_of(r), data);
                self.wait(req, proposed.map_err(|e| e.to_string()), reply, None, [r].into());
            }
            Event::Read(key, reply) => {
                let r = region_of(&key, self.options.regions) as usize;
                let req = self.next_request();
                if self.waiting.len() >= MAX_PENDING_REQUESTS {
                    let _ = reply.send(Err("too many requests waiting".into()));
                    return;
                }
                let ctx = serde_json::to_vec(&req).expect("serializes");
                let asked = self.multi.read_index(group_of(r), ctx);
                self.wait(req, asked.map_err(|e| e.to_string()), reply, Some(key), [r].into());
            }
            Event::AddMember(id, addr, reply) => {
                let req = self.next_request();
                let context = MemberContext { req: Some(req), addr: Some(addr) };
                self.change_members(req, ConfChangeType::AddNode, id, &context, reply);
            }
            Event::RemoveMember(id, reply) => {
                let req = self.next_request();
                let context = MemberContext { req: Some(req), addr: None };
                self.change_members(req, ConfChangeType::RemoveNode, id, &context, reply);
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

    /// Proposes one membership change in every region (each region is a Raft group of the
    /// same members). A region that refuses the proposal fails the request at once; the
    /// regions that took it may still apply it, as any request answered 503 may.
    fn change_members(
        &mut self,
        req: RequestId,
        change_type: ConfChangeType,
        node_id: u64,
        context: &MemberContext,
        reply: Sender<Reply>,
    ) {
        let cc = ConfChange {
            change_type,
            node_id,
            context: serde_json::to_vec(context).expect("serializes").into(),
        };
        let mut proposed = Ok(());
        // Bounded by the regions.
        for r in 0..self.regions.len() {
            if let Err(e) = self.multi.propose_conf_change(group_of(r), cc.clone()) {
                proposed = Err(format!("region {r}: {e}"));
                break;
            }
        }
        let all = (0..self.regions.len()).collect();
        self.wait(req, proposed, reply, None, all);
    }

    /// Sets the gauges: the storage's (sizes) and the node's (region 0's term, commit, applied,
    /// role; regions led). Counters and histograms are updated where their events happen.
    fn refresh_metrics(&mut self) {
        self.multi.engine().metrics();
        let applied = self.regions[0].applied;
        let leading = self.leading();
        let Some(raw) = self.multi.raw_node(group_of(0)) else { return };
        let st = raw.status();
        metrics::gauge!("raftwal_kv_term").set(st.hard_state.term as f64);
        metrics::gauge!("raftwal_kv_commit_index").set(st.hard_state.commit as f64);
        metrics::gauge!("raftwal_kv_applied_index").set(applied as f64);
        metrics::gauge!("raftwal_kv_last_index").set(st.last_index as f64);
        metrics::gauge!("raftwal_kv_leader_id").set(st.soft_state.leader_id as f64);
        let leads = st.soft_state.raft_state == StateRole::Leader;
        metrics::gauge!("raftwal_kv_is_leader").set(if leads { 1.0 } else { 0.0 });
        metrics::gauge!("raftwal_kv_regions_led").set(leading as f64);
        metrics::gauge!("raftwal_kv_requests_waiting").set(self.waiting.len() as f64);
    }

    fn leading(&self) -> usize {
        (0..self.regions.len())
            .filter(|r| {
                self.multi.status(group_of(*r)).is_some_and(|s| s.role == StateRole::Leader)
            })
            .count()
    }

    fn wait(
        &mut self,
        req: RequestId,
        proposed: Result<(), String>,
        reply: Sender<Reply>,
        key: Option<String>,
        regions: BTreeSet<usize>,
    ) {
        assert!(!regions.is_empty(), "a request waits for at least one region");
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
        self.waiting.insert(req, Waiter { started, deadline, reply, key, regions });
    }

    /// Drops requests whose HTTP side has given up (it answers 503 on its own timeout).
    fn expire(&mut self, now: Instant) {
        let before = self.waiting.len();
        self.waiting.retain(|_, w| w.deadline > now);
        let expired = before - self.waiting.len();
        metrics::counter!("raftwal_kv_requests_expired_total").increment(expired as u64);
        let waiting = &self.waiting;
        for region in &mut self.regions {
            region.confirmed.retain(|(_, ctx)| {
                serde_json::from_slice::<RequestId>(ctx).is_ok_and(|req| waiting.contains_key(&req))
            });
        }
    }

    fn status(&mut self) -> String {
        let mut reports = Vec::new();
        for (r, region) in self.regions.iter().enumerate() {
            let st = self.multi.status(region.group).unwrap_or_default();
            let vote = self
                .multi
                .raw_node(region.group)
                .map(|raw| raw.status().hard_state.vote)
                .unwrap_or_default();
            reports.push(RegionReport {
                region: r,
                group: region.group,
                leader: st.leader,
                term: st.term,
                vote,
                repairing_until: st.repairing.map(|repair| repair.index),
                role: format!("{:?}", st.role),
                commit: st.commit,
                applied: region.applied,
                first_index: region.storage.first_index().unwrap_or_default(),
                last_index: st.last_index,
                snapshot_index: region.snapshot_index,
                snapshots_received: region.snapshots_received,
                keys: region.kv.data.len(),
            });
        }
        let first = &reports[0];
        let report = StatusReport {
            id: self.id,
            leader: first.leader,
            term: first.term,
            vote: first.vote,
            repairing_until: first.repairing_until,
            role: first.role.clone(),
            commit: first.commit,
            applied: first.applied,
            first_index: first.first_index,
            last_index: first.last_index,
            snapshot_index: first.snapshot_index,
            snapshots_received: reports.iter().map(|r| r.snapshots_received).sum(),
            voters: self.regions[0].conf_state.voters.clone(),
            learners: self.regions[0].conf_state.learners.clone(),
            keys: reports.iter().map(|r| r.keys).sum(),
            leading: reports.iter().filter(|r| r.leader == self.id).count(),
            regions: reports,
        };
        serde_json::to_string(&report).expect("serializes")
    }

    /// The ready cycle: `MultiRaft::ready` persisted every region's Ready and advanced them;
    /// send the batches (one per peer), apply, then serve confirmed reads and take the
    /// snapshots that are due.
    fn process_ready(&mut self) -> Fallible<()> {
        for _ in 0..MAX_READY_PER_ROUND {
            if !self.multi.has_ready() {
                return Ok(());
            }
            let rd = self.multi.ready()?;
            for b in rd.batches {
                self.send(b);
            }
            for gr in rd.groups {
                self.apply_group(gr)?;
            }
            self.note_repairs_ended();
            self.serve_reads();
            self.maybe_snapshot()?;
        }
        Ok(())
    }

    /// Logs the regions whose repair the last cycle ended: the core ends it at the `advance`
    /// that persisted what the log lost (`MultiRaft` then clears it in storage, durably).
    fn note_repairs_ended(&mut self) {
        // Bounded by the regions; usually none is repairing.
        for (r, region) in self.regions.iter_mut().enumerate() {
            let Some(was) = region.repairing else { continue };
            let st = self.multi.status(region.group).unwrap_or_default();
            if st.repairing.is_none() {
                info!(
                    node = self.id,
                    region = r,
                    index = was.index,
                    last_index = st.last_index,
                    "repair ended: a leader gave back what damage cut from the log; voting again"
                );
            }
            region.repairing = st.repairing;
        }
    }

    fn send(&mut self, b: Batch) {
        let to = b.to;
        let failed = match self.peers.get(&to) {
            Some(p) => p.send(b).err(),
            None => Some(b),
        };
        if let Some(b) = failed {
            // The queue holds failures reported by the senders too; the node thread is the
            // only reader, so report through it rather than re-entering the core here.
            let _ = transport::report(to, &b, false, &self.events);
        }
    }

    fn apply_group(&mut self, gr: GroupReady) -> Fallible<()> {
        let r = usize::try_from(gr.group - 1).expect("region index fits usize");
        assert!(r < self.regions.len(), "group {} is not a region's", gr.group);
        if let Some(ss) = gr.soft_state {
            let region = &mut self.regions[r];
            if ss.leader_id != region.leader {
                region.leader = ss.leader_id;
                metrics::counter!("raftwal_kv_leader_changes_total").increment(1);
            }
            if ss.raft_state == StateRole::Leader {
                let term = self.multi.status(gr.group).map(|s| s.term).unwrap_or_default();
                info!(node = self.id, region = r, term, "became leader");
            }
        }
        if let Some(s) = &gr.snapshot {
            self.restore(r, s)?;
        }
        for rs in &gr.read_states {
            self.regions[r].confirmed.push((rs.index, rs.request_ctx.clone()));
        }
        for e in &gr.committed_entries {
            self.apply(r, e, gr.conf_state.as_ref())?;
        }
        Ok(())
    }

    /// Replaces region `r`'s map with a snapshot received from the leader (already in storage).
    fn restore(&mut self, r: usize, s: &Snapshot) -> Fallible<()> {
        let region = &mut self.regions[r];
        assert!(
            s.metadata.index > region.applied,
            "node {} region {r}: snapshot at {} is not past applied {}",
            self.id,
            s.metadata.index,
            region.applied
        );
        region.kv = KvState::decode(&s.data)?;
        region.conf_state = s.metadata.conf_state.clone();
        region.applied = s.metadata.index;
        region.snapshot_index = s.metadata.index;
        region.snapshots_received += 1;
        let addrs: Vec<(u64, String)> =
            region.kv.addrs.iter().map(|(id, a)| (*id, a.clone())).collect();
        for (id, addr) in addrs {
            self.ensure_peer(id, &addr);
        }
        self.answer_covered(r);
        metrics::counter!("raftwal_kv_snapshots_received_total").increment(1);
        info!(node = self.id, region = r, index = s.metadata.index, "restored from a snapshot");
        Ok(())
    }

    /// Answers the writes and membership changes whose entries the snapshot just restored in
    /// region `r` covers: this node never applies those entries itself, so their outcome is
    /// the one the snapshot's state machine recorded. The others keep waiting (they may commit
    /// later).
    fn answer_covered(&mut self, r: usize) {
        let kv = &self.regions[r].kv;
        let covered: Vec<(RequestId, bool)> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.key.is_none() && w.regions.contains(&r))
            .filter_map(|(req, _)| kv.outcome(req).map(|took_effect| (*req, took_effect)))
            .collect();
        for (req, took_effect) in covered {
            let reply = if took_effect {
                Ok(None)
            } else {
                Err("refused by the membership (applied through a snapshot)".into())
            };
            self.answer(Some(req), r, reply);
        }
    }

    /// Region `r` is done with `req`: a failure is answered at once, a success once every
    /// region the request waits for is done.
    fn answer(&mut self, req: Option<RequestId>, r: usize, reply: Reply) {
        let Some(req) = req else { return };
        let Some(w) = self.waiting.get_mut(&req) else { return };
        w.regions.remove(&r);
        if reply.is_ok() && !w.regions.is_empty() {
            return;
        }
        if let Some(w) = self.waiting.remove(&req) {
            let _ = w.reply.send(reply);
        }
    }

    /// Applies one committed entry of region `r`. `conf_state` is the group's membership after
    /// the changes of the cycle (`MultiRaft` applied them to the Raft node already).
    fn apply(&mut self, r: usize, e: &Entry, conf_state: Option<&ConfState>) -> Fallible<()> {
        let region = &mut self.regions[r];
        if e.index <= region.applied {
            return Ok(()); // covered by the snapshot the map was restored from
        }
        assert_eq!(
            e.index,
            region.applied + 1,
            "node {} region {r}: applied {} then {}: a gap in the committed entries",
            self.id,
            region.applied,
            e.index
        );
        region.applied = e.index;
        match e.entry_type {
            EntryType::Normal if e.data.is_empty() => {} // a new leader's empty entry
            EntryType::Normal => {
                let cmd: Command = serde_json::from_slice(&e.data)?;
                region.kv.apply(&cmd.op);
                region.kv.record(cmd.req, true);
                self.answer(Some(cmd.req), r, Ok(None));
            }
            EntryType::ConfChange => {
                let cc = ConfChange::decode(&e.data)?;
                let context = member_context(&cc.context);
                if let Some(cs) = conf_state {
                    region.conf_state = cs.clone();
                }
                self.member_changed(r, cc.change_type, cc.node_id, context);
            }
            EntryType::ConfChangeV2 => {
                let cc = ConfChangeV2::decode(&e.data)?;
                let context = member_context(&cc.context);
                if let Some(cs) = conf_state {
                    region.conf_state = cs.clone();
                }
                for c in &cc.changes {
                    self.member_changed(r, c.change_type, c.node_id, context.clone());
                }
            }
        }
        Ok(())
    }

    /// Keeps the address book and the peer connections in step with a change applied in
    /// region `r`.
    fn member_changed(
        &mut self,
        r: usize,
        change: ConfChangeType,
        node: u64,
        context: MemberContext,
    ) {
        let region = &mut self.regions[r];
        let cs = &region.conf_state;
        let member = cs.voters.contains(&node) || cs.learners.contains(&node);
        let took_effect = match change {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => member,
            ConfChangeType::RemoveNode => !member,
        };
        match change {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(addr) = &context.addr {
                    region.kv.addrs.insert(node, addr.clone());
                    let addr = addr.clone();
                    self.ensure_peer(node, &addr);
                }
            }
            ConfChangeType::RemoveNode => {
                region.kv.addrs.remove(&node);
                if node == self.id {
                    info!(node = self.id, region = r, "removed from the region");
                }
            }
        }
        let region = &mut self.regions[r];
        region.snapshot_due = true;
        if let Some(req) = context.req {
            region.kv.record(req, took_effect);
        }
        let reply = if took_effect {
            Ok(None)
        } else {
            Err(format!("change {change:?} of node {node} refused by the membership"))
        };
        self.answer(context.req, r, reply);
    }

    fn serve_reads(&mut self) {
        // Bounded by the regions, then by each region's confirmed reads.
        for region in &mut self.regions {
            let applied = region.applied;
            let mut ready = Vec::new();
            region.confirmed.retain(|(index, ctx)| {
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
                    let _ = w.reply.send(Ok(region.kv.data.get(key).cloned()));
                }
            }
        }
    }

    /// Per region, every `snapshot_every` applied entries and after a membership change: a
    /// snapshot of the region's map, then compaction of its log up to `compact_keep` entries
    /// below it.
    fn maybe_snapshot(&mut self) -> Fallible<()> {
        let (every, keep) = (self.options.snapshot_every, self.options.compact_keep);
        // Bounded by the regions.
        for region in &mut self.regions {
            let due = region.applied >= region.snapshot_index + every
                || (region.snapshot_due && region.applied > region.snapshot_index);
            if !due {
                continue;
            }
            region.snapshot_due = false;
            let image = Bytes::from(region.kv.encode());
            region.storage.create_snapshot(
                region.applied,
                Some(region.conf_state.clone()),
                image,
            )?;
            region.snapshot_index = region.applied;
            let target = region.applied.saturating_sub(keep);
            if target >= region.storage.first_index()? {
                region.storage.compact(target)?;
            }
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
        single_node_with_regions(dir, 1)
    }

    fn single_node_with_regions(dir: &Path, regions: u64) -> Node {
        let options = Options {
            id: 1,
            peers: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
            join: false,
            regions,
            tick: Duration::from_millis(10),
            election_ticks: 10,
            snapshot_every: 1000,
            compact_keep: 10,
            request_timeout: Duration::from_secs(60),
            recovery_mode: RecoveryMode::Strict,
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
        node.wait(covered, Ok(()), tx_covered, None, [0].into());
        node.wait(later, Ok(()), tx_later, None, [0].into());
        node.wait(refused, Ok(()), tx_refused, None, [0].into());

        // The leader applied `covered` and refused the membership change `refused`; `later`
        // is not in the snapshot (it may still commit after it).
        let snapshot = leader_snapshot(
            40,
            &[(covered, put.clone(), true), (refused, Op::Delete { key: "x".into() }, false)],
        );
        node.restore(0, &snapshot).unwrap();

        assert_eq!(rx_covered.try_recv(), Ok(Ok(None)), "the write took effect");
        assert!(matches!(rx_refused.try_recv(), Ok(Err(_))), "the change was refused");
        assert_eq!(rx_later.try_recv(), Err(TryRecvError::Empty), "still waiting");
        assert_eq!(node.regions[0].kv.data.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn region_of_is_stable_and_spreads_keys_over_every_region() {
        // FNV-1a of "" is the offset basis; of "a" a published test vector (both below
        // u64::MAX, which leaves them whole).
        assert_eq!(region_of("", u64::MAX), 0xcbf2_9ce4_8422_2325);
        assert_eq!(region_of("a", u64::MAX), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(region_of("anything", 1), 0, "one region holds every key");
        let mut hits = [0u32; 8];
        for k in 0..800 {
            hits[region_of(&format!("key{k}"), 8) as usize] += 1;
        }
        assert!(hits.iter().all(|h| *h >= 50), "800 keys over 8 regions: {hits:?}");
    }

    #[test]
    fn a_membership_change_is_answered_once_every_region_applied_it_and_a_refusal_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut node = single_node_with_regions(tmp.path(), 3);
        let (change, refused) = (node.next_request(), node.next_request());
        let (tx_change, rx_change) = channel();
        let (tx_refused, rx_refused) = channel();
        node.wait(change, Ok(()), tx_change, None, [0, 1, 2].into());
        node.wait(refused, Ok(()), tx_refused, None, [0, 1, 2].into());

        node.answer(Some(change), 0, Ok(None));
        node.answer(Some(change), 2, Ok(None));
        node.answer(Some(change), 2, Ok(None)); // the same region twice counts once
        assert_eq!(rx_change.try_recv(), Err(TryRecvError::Empty), "region 1 has not applied it");
        node.answer(Some(change), 1, Ok(None));
        assert_eq!(rx_change.try_recv(), Ok(Ok(None)), "every region applied it");

        node.answer(Some(refused), 1, Err("refused".into()));
        assert_eq!(rx_refused.try_recv(), Ok(Err("refused".into())), "a refusal is final");
        assert!(node.waiting.is_empty(), "both answered");
    }

    #[test]
    fn a_directory_holding_a_group_beyond_the_regions_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut node = single_node_with_regions(tmp.path(), 3);
        // The first cycle writes every region's bootstrap entries.
        node.process_ready().unwrap();
        drop(node);
        let options = Options {
            id: 1,
            peers: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
            join: false,
            regions: 2,
            tick: Duration::from_millis(10),
            election_ticks: 10,
            snapshot_every: 1000,
            compact_keep: 10,
            request_timeout: Duration::from_secs(60),
            recovery_mode: RecoveryMode::Strict,
        };
        let (events, _) = channel();
        let err = Node::open(options, tmp.path(), events).err().expect("refused");
        assert!(err.to_string().contains("holds group 3"), "{err}");
    }
}
