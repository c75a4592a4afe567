//! [`MultiRaft`]: many Raft groups of one node on one [`LogEngine`], driven by one ready cycle.
//!
//! Each group is a [`RawNode`] over its [`GroupStorage`]; the node has one id in every group.
//! One call to [`MultiRaft::ready`] collects the Ready of every group, persists all of them as
//! one [`WriteBatch`] (at most one sync whatever the number of groups; an installed snapshot
//! syncs on its own), hands back the messages as one [`Batch`] per destination node and the
//! committed entries per group, and advances every group.
//!
//! Two things keep a node with many mostly idle groups cheap:
//!
//! - **Coalesced heartbeats.** A group's `MsgHeartbeat` and `MsgHeartbeatResp` carry only a
//!   term, a commit index and a context; they travel as small [`Heartbeat`] /
//!   [`HeartbeatResp`] items in the batch for their node, and the receiver expands them back
//!   into the same messages. A tick costs one batch per destination node, not one message per
//!   group.
//! - **Quiescence.** A leader whose group has nothing to do (every peer holds the whole log,
//!   everything is committed and applied, no read or transfer pending) stops ticking and sends
//!   its followers one last heartbeat marked `quiesce`; a follower that finds its log complete
//!   then stops ticking too, so it neither expects heartbeats nor campaigns. A proposal, a read,
//!   any message other than a heartbeat answer, or a peer reported unreachable wakes the group.
//!   DESIGN.md §11.2 "MultiRaft" gives the rules and why they are safe.
//!
//! # Wire encoding of a [`Batch`]
//!
//! Every integer little-endian, through [`crate::codec`]:
//!
//! | item | layout |
//! |---|---|
//! | `Batch` | version u8 (1) · from u64 · to u64 · messages (count u32, each: group u64, len u32, a [`Message`] encoding) · heartbeats (count u32, each: group u64, term u64, commit u64, quiesce u8, context (len u32, bytes)) · heartbeat answers (count u32, each: group u64, term u64, context (len u32, bytes)) · wakes (count u32, each a group u64) |

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::config::{Config, ReadOnlyOption};
use super::core::conf_change_of;
use super::message::{
    AnyConfChange, Message, MessageType, ReadState, SnapshotStatus, SoftState, StateRole,
};
use super::raw_node::{Payload, RawNode, Ready};
use crate::codec::{DecodeError, Decoder, put_u32, put_u64};
use crate::contract::Storage;
use crate::error::{Error, Result};
use crate::storage::{GroupStorage, LogEngine};
use crate::types::{ConfState, Entry, Snapshot, SnapshotMetadata};
use crate::wal::WriteBatch;

/// Idle ticks before a leader quiesces its group, by default.
const DEFAULT_QUIESCE_AFTER_TICKS: usize = 6;

/// Version byte leading every [`Batch`] encoding.
const BATCH_VERSION: u8 = 1;

/// Smallest encodings of a batch's items, bounding decoded counts by the bytes left.
const MIN_MESSAGE_ITEM_BYTES: usize = 8 + 4;
const MIN_HEARTBEAT_BYTES: usize = 8 + 8 + 8 + 1 + 4;
const MIN_HEARTBEAT_RESP_BYTES: usize = 8 + 8 + 4;
const WAKE_BYTES: usize = 8;

/// A leader's heartbeat for one group, coalesced into the batch for the follower's node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// The group.
    pub group: u64,
    /// The leader's term.
    pub term: u64,
    /// The leader's commit index, bounded by what the follower is known to hold.
    pub commit: u64,
    /// The leader has quiesced the group: the follower should stop ticking if its log is
    /// complete.
    pub quiesce: bool,
    /// The read-index round the heartbeat confirms (empty for a plain heartbeat).
    pub context: Bytes,
}

/// A follower's answer to a [`Heartbeat`], coalesced the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatResp {
    /// The group.
    pub group: u64,
    /// The follower's term.
    pub term: u64,
    /// The context of the heartbeat answered.
    pub context: Bytes,
}

/// Everything one node sends another in one ready cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The sending node.
    pub from: u64,
    /// The receiving node.
    pub to: u64,
    /// Raft messages other than plain heartbeats, with their group.
    pub messages: Vec<(u64, Message)>,
    /// Coalesced heartbeats.
    pub heartbeats: Vec<Heartbeat>,
    /// Coalesced heartbeat answers.
    pub heartbeat_resps: Vec<HeartbeatResp>,
    /// Groups a follower asks its (quiesced) leader to wake.
    pub wakes: Vec<u64>,
}

fn put_bytes(out: &mut Vec<u8>, data: &[u8]) {
    let len = u32::try_from(data.len()).expect("batch items must be below 4 GiB");
    put_u32(out, len);
    out.extend_from_slice(data);
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    put_u32(out, u32::try_from(count).expect("a batch holds fewer than 2^32 items"));
}

fn get_bytes(dec: &mut Decoder<'_>, what: &'static str) -> std::result::Result<Bytes, DecodeError> {
    let len = dec.u32(what)? as usize;
    Ok(Bytes::copy_from_slice(dec.bytes(len, what)?))
}

/// Reads a count and refuses one that the bytes left cannot hold.
fn get_count(
    dec: &mut Decoder<'_>,
    min_item_bytes: usize,
    what: &'static str,
) -> std::result::Result<usize, DecodeError> {
    let count = dec.u32(what)? as usize;
    if count.saturating_mul(min_item_bytes) > dec.remaining() {
        return Err(DecodeError { what });
    }
    Ok(count)
}

impl Batch {
    /// An empty batch from `from` to `to`.
    pub fn new(from: u64, to: u64) -> Batch {
        Batch { from, to, ..Batch::default() }
    }

    /// Whether the batch carries nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.heartbeats.is_empty()
            && self.heartbeat_resps.is_empty()
            && self.wakes.is_empty()
    }

    /// Per-group items in the batch (messages, heartbeats, answers, wakes).
    pub fn item_count(&self) -> usize {
        self.messages.len() + self.heartbeats.len() + self.heartbeat_resps.len() + self.wakes.len()
    }

    /// Adds a group's message, as a coalesced heartbeat (or answer) when it is one that carries
    /// nothing else, as a whole message otherwise.
    fn push(&mut self, group: u64, m: Message) {
        let only_term_commit_context = m.index == 0
            && m.log_term == 0
            && m.entries.is_empty()
            && m.snapshot.is_none()
            && !m.reject
            && m.reject_hint == 0;
        debug_assert_eq!(m.to, self.to, "message for {} in the batch for {}", m.to, self.to);
        match m.msg_type {
            MessageType::MsgHeartbeat if only_term_commit_context => {
                self.heartbeats.push(Heartbeat {
                    group,
                    term: m.term,
                    commit: m.commit,
                    quiesce: false,
                    context: m.context,
                });
            }
            MessageType::MsgHeartbeatResp if only_term_commit_context && m.commit == 0 => {
                self.heartbeat_resps.push(HeartbeatResp {
                    group,
                    term: m.term,
                    context: m.context,
                });
            }
            _ => self.messages.push((group, m)),
        }
    }

    /// The batch as bytes (see the module's table).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(BATCH_VERSION);
        put_u64(&mut out, self.from);
        put_u64(&mut out, self.to);
        put_count(&mut out, self.messages.len());
        for (group, m) in &self.messages {
            put_u64(&mut out, *group);
            put_bytes(&mut out, &m.encode());
        }
        put_count(&mut out, self.heartbeats.len());
        for hb in &self.heartbeats {
            put_u64(&mut out, hb.group);
            put_u64(&mut out, hb.term);
            put_u64(&mut out, hb.commit);
            out.push(u8::from(hb.quiesce));
            put_bytes(&mut out, &hb.context);
        }
        put_count(&mut out, self.heartbeat_resps.len());
        for resp in &self.heartbeat_resps {
            put_u64(&mut out, resp.group);
            put_u64(&mut out, resp.term);
            put_bytes(&mut out, &resp.context);
        }
        put_count(&mut out, self.wakes.len());
        for group in &self.wakes {
            put_u64(&mut out, *group);
        }
        out
    }

    /// Decodes bytes written by [`Batch::encode`]; every byte must be used. Damaged input gives
    /// `Error::Decode`, never a panic or an allocation larger than the input.
    pub fn decode(buf: &[u8]) -> Result<Batch> {
        Ok(Batch::decode_inner(buf)?)
    }

    fn decode_inner(buf: &[u8]) -> std::result::Result<Batch, DecodeError> {
        let mut dec = Decoder::new(buf);
        if dec.u8("batch version")? != BATCH_VERSION {
            return Err(DecodeError { what: "batch version" });
        }
        let mut batch = Batch::new(dec.u64("batch from")?, dec.u64("batch to")?);
        let count = get_count(&mut dec, MIN_MESSAGE_ITEM_BYTES, "batch message count")?;
        for _ in 0..count {
            let group = dec.u64("batch message group")?;
            let len = dec.u32("batch message length")? as usize;
            let m = Message::decode(dec.bytes(len, "batch message")?)
                .map_err(|_| DecodeError { what: "batch message" })?;
            batch.messages.push((group, m));
        }
        let count = get_count(&mut dec, MIN_HEARTBEAT_BYTES, "batch heartbeat count")?;
        for _ in 0..count {
            let group = dec.u64("heartbeat group")?;
            let term = dec.u64("heartbeat term")?;
            let commit = dec.u64("heartbeat commit")?;
            let quiesce = match dec.u8("heartbeat quiesce")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError { what: "heartbeat quiesce" }),
            };
            let context = get_bytes(&mut dec, "heartbeat context")?;
            batch.heartbeats.push(Heartbeat { group, term, commit, quiesce, context });
        }
        let count = get_count(&mut dec, MIN_HEARTBEAT_RESP_BYTES, "batch answer count")?;
        for _ in 0..count {
            let group = dec.u64("heartbeat answer group")?;
            let term = dec.u64("heartbeat answer term")?;
            let context = get_bytes(&mut dec, "heartbeat answer context")?;
            batch.heartbeat_resps.push(HeartbeatResp { group, term, context });
        }
        let count = get_count(&mut dec, WAKE_BYTES, "batch wake count")?;
        for _ in 0..count {
            batch.wakes.push(dec.u64("wake group")?);
        }
        dec.finish("batch")?;
        Ok(batch)
    }
}

/// What one group hands the application in a cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupReady {
    /// The group.
    pub group: u64,
    /// The new leader and role, if either changed.
    pub soft_state: Option<SoftState>,
    /// A snapshot installed in the group's storage: restore the state machine from it before
    /// applying `committed_entries`.
    pub snapshot: Option<Snapshot>,
    /// Committed entries to apply, in order. Membership changes among them were already
    /// applied to the group's Raft node.
    pub committed_entries: Vec<Entry>,
    /// The membership after the changes among `committed_entries`, if there were any.
    pub conf_state: Option<ConfState>,
    /// Confirmed linearizable reads: serve each once the applied index reaches its index.
    pub read_states: Vec<ReadState>,
}

/// What one ready cycle produced, everything already persisted and every group advanced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MultiReady {
    /// One batch per destination node, in node order; safe to send at once.
    pub batches: Vec<Batch>,
    /// The groups with something for the application, in group order.
    pub groups: Vec<GroupReady>,
}

/// One group's state, for inspection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: u64,
    /// The leader this node knows of (0: none).
    pub leader: u64,
    /// This node's role in the group.
    pub role: StateRole,
    /// The current term.
    pub term: u64,
    /// The commit index.
    pub commit: u64,
    /// The applied index.
    pub applied: u64,
    /// The first index held in the group's storage.
    pub first_index: u64,
    /// The last index of the group's log.
    pub last_index: u64,
    /// Whether the group is quiesced (not ticking).
    pub quiesced: bool,
    /// Set while the group's log is repairing (see [`super::Status::repairing`]).
    pub repairing: Option<crate::types::RepairState>,
}

/// Counters of what a [`MultiRaft`] did since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MultiStats {
    /// Ready cycles that persisted something.
    pub writes: u64,
    /// Batches handed out for sending.
    pub batches_sent: u64,
    /// Whole Raft messages in those batches.
    pub messages_sent: u64,
    /// Coalesced heartbeats in those batches.
    pub heartbeats_sent: u64,
    /// Coalesced heartbeat answers in those batches.
    pub heartbeat_resps_sent: u64,
    /// Times a group quiesced (as leader or follower).
    pub quiesces: u64,
    /// Times a quiesced group woke.
    pub wakes: u64,
    /// Received items dropped: unknown or removed group, wrong address, or refused by the group.
    pub dropped: u64,
    /// Groups `tick` and `ready` looked at, summed over their calls: the active groups (awake,
    /// or with something to hand out), never the quiesced rest.
    pub group_visits: u64,
}

/// Decides whether a message for a group this node does not host creates it: returns the
/// group's configuration (its `id` must be the node's), or `None` to drop the message.
pub type GroupFactory = Box<dyn FnMut(u64, &Message) -> Option<Config> + Send>;

struct Group {
    node: RawNode<GroupStorage>,
    storage: GroupStorage,
    config: Config,
    // Not ticking: see DESIGN.md §11.2 "MultiRaft".
    quiesced: bool,
    // Reads this node accepted as leader and has not answered yet: a leader with one waiting
    // must keep heartbeating. An over-count only delays quiescence; reset when the role or
    // leader changes (the core drops a lost leadership's reads).
    pending_reads: usize,
    // Consecutive ticks at which the group was idle as rule Q1 has it (leader only).
    idle_ticks: usize,
}

impl Group {
    /// Whether a leader may quiesce this group now (DESIGN.md §11.2 "MultiRaft", rule Q1).
    fn can_quiesce(&self) -> bool {
        // A lease-based read trusts the leader's clock; a leader that does not tick would
        // never notice that its lease ran out.
        if self.config.read_only_option == ReadOnlyOption::LeaseBased {
            return false;
        }
        if self.pending_reads > 0 || self.node.has_ready() {
            return false;
        }
        // Read in place: a `status()` clones the membership and every peer's progress.
        let r = self.node.core();
        let last = r.raft_log.last_index();
        r.state == StateRole::Leader
            && r.lead_transferee.is_none()
            && r.raft_log.committed == last
            && r.raft_log.applied == last
            && r.prs.progress.values().all(|p| p.matched == last)
    }

    fn leader(&self) -> u64 {
        self.node.core().leader_id
    }

    fn role(&self) -> StateRole {
        self.node.core().state
    }

    fn has_member(&self, node: u64) -> bool {
        // The tracker holds a progress for exactly the members: voters (incoming and outgoing,
        // so the next learners too) and learners.
        self.node.core().prs.progress.contains_key(&node)
    }
}

/// The Raft groups one node hosts, on one [`LogEngine`], driven together.
///
/// The application calls [`MultiRaft::tick`] at a fixed interval, [`MultiRaft::step`] with
/// every [`Batch`] received, [`MultiRaft::propose`] and friends for clients, and
/// [`MultiRaft::ready`] whenever [`MultiRaft::has_ready`]: it sends the batches it returns and
/// applies the committed entries.
pub struct MultiRaft {
    id: u64,
    engine: LogEngine,
    groups: BTreeMap<u64, Group>,
    // The groups `tick`, `has_ready` and `ready` look at, so that their cost follows the
    // groups at work, not the groups hosted. Invariant: a hosted group not in it is quiesced
    // and has no Ready. A group enters when it is created, woken, stepped, or handed out
    // through `raw_node` or a local call; it leaves when a tick quiesces it or a cycle finds it
    // quiesced with nothing to do. Bounded by the hosted groups.
    active: BTreeSet<u64>,
    // Groups removed here: a late message must not create them again. Grows by one per
    // removal; `create_group` takes an id back.
    removed: BTreeSet<u64>,
    factory: Option<GroupFactory>,
    quiescence: bool,
    // Idle ticks a leader waits before it quiesces (at least 1).
    quiesce_after_ticks: usize,
    // What tick and step produced outside a Ready (quiesce heartbeats, wakes), sent with the
    // next cycle; at most one batch per peer node.
    outbox: BTreeMap<u64, Batch>,
    write: WriteBatch,
    // A cycle failed after taking Readies: the groups' state is no longer known to match the
    // log, so every later call is refused.
    poisoned: bool,
    stats: MultiStats,
}

impl MultiRaft {
    /// A node with id `id` (its id in every group) storing its groups in `engine`. No group is
    /// hosted until [`MultiRaft::create_group`] or a message the factory accepts.
    pub fn new(id: u64, engine: LogEngine) -> Result<MultiRaft> {
        if id == 0 {
            return Err(Error::InvalidConfig("node id 0 is reserved".into()));
        }
        Ok(MultiRaft {
            id,
            engine,
            groups: BTreeMap::new(),
            active: BTreeSet::new(),
            removed: BTreeSet::new(),
            factory: None,
            quiescence: true,
            quiesce_after_ticks: DEFAULT_QUIESCE_AFTER_TICKS,
            outbox: BTreeMap::new(),
            write: WriteBatch::new(),
            poisoned: false,
            stats: MultiStats::default(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The engine underneath.
    pub fn engine(&self) -> &LogEngine {
        &self.engine
    }

    /// Sets what decides whether a message for an unknown group creates it (by default none
    /// does).
    pub fn set_group_factory(&mut self, factory: GroupFactory) {
        self.factory = Some(factory);
    }

    /// Turns quiescence on (the default) or off. Turning it off wakes every group (and, as any
    /// wake, the leaders of those this node follows).
    pub fn set_quiescence(&mut self, on: bool) {
        self.quiescence = on;
        if !on {
            // Bounded by the hosted groups.
            for group in self.group_ids() {
                self.wake_group(group, None);
            }
        }
    }

    /// Sets how many consecutive ticks a leader's group must be idle (rule Q1) before it
    /// quiesces; at least 1. Waking costs a round of messages, so a group that is busy every
    /// few ticks is better left awake. The default is 6.
    pub fn set_quiesce_after_ticks(&mut self, ticks: usize) {
        self.quiesce_after_ticks = ticks.max(1);
    }

    /// Hosts group `group` with `config` over its storage in the engine. With `initial`, the
    /// storage must be empty and the group starts with that membership (every peer of a new
    /// group passes the same one): a voters-only membership is written into the log as
    /// committed entries (etcd's bootstrap), so that a node added later learns it by
    /// replaying the log; one with learners or a joint configuration is stored as an index-0
    /// snapshot, which a node added later must receive (the leader sends it once the log is
    /// compacted past its first entry). Without `initial`, the group continues from what its
    /// storage holds (a restart), or starts empty and learns its membership from the leader.
    pub fn create_group(
        &mut self,
        group: u64,
        config: Config,
        initial: Option<ConfState>,
    ) -> Result<()> {
        self.check_poisoned()?;
        if self.groups.contains_key(&group) {
            return Err(Error::InvalidConfig(format!("group {group} is hosted already")));
        }
        if config.id != self.id {
            return Err(Error::InvalidConfig(format!(
                "group {group} configured for node {}, but this node is {}",
                config.id, self.id
            )));
        }
        let storage = self.engine.group(group)?;
        let voters_only = initial.as_ref().is_some_and(|cs| {
            cs.learners.is_empty()
                && cs.voters_outgoing.is_empty()
                && cs.learners_next.is_empty()
                && !cs.auto_leave
        });
        let mut bootstrap = None;
        match initial {
            // The membership goes into the log (one committed AddNode entry per voter, persisted
            // by the next cycle), so that a node added later learns it by replaying the log.
            Some(cs) if voters_only => bootstrap = Some(cs.voters),
            // Learners or a joint configuration: only a snapshot can carry it.
            Some(conf_state) => storage.apply_snapshot(Snapshot {
                metadata: SnapshotMetadata { index: 0, term: 0, conf_state },
                data: Bytes::new(),
            })?,
            None => {}
        }
        let mut node = RawNode::new(&config, storage.clone())?;
        if let Some(voters) = bootstrap {
            node.bootstrap(voters)?;
        }
        self.removed.remove(&group);
        self.groups.insert(
            group,
            Group { node, storage, config, quiesced: false, pending_reads: 0, idle_ticks: 0 },
        );
        self.active.insert(group);
        Ok(())
    }

    /// Stops hosting `group` and removes its state from the engine, durably. A leader should
    /// hand leadership over first (or the group waits an election timeout for a new one).
    pub fn remove_group(&mut self, group: u64) -> Result<()> {
        self.check_poisoned()?;
        if self.groups.remove(&group).is_none() {
            return Err(Error::InvalidConfig(format!("group {group} is not hosted")));
        }
        self.active.remove(&group);
        self.removed.insert(group);
        for batch in self.outbox.values_mut() {
            batch.heartbeats.retain(|hb| hb.group != group);
            batch.wakes.retain(|g| *g != group);
        }
        self.engine.remove_group(group)
    }

    /// The hosted groups, sorted.
    pub fn group_ids(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    /// The group's Raft node, for what this type does not offer (its status, leadership
    /// hints). Calls on it do not wake a quiesced group: use [`MultiRaft::wake`] after a change
    /// that needs the group to run (the next cycle still hands out what they produce). Never
    /// call its `ready` or `advance`: the cycle does.
    pub fn raw_node(&mut self, group: u64) -> Option<&mut RawNode<GroupStorage>> {
        let g = self.groups.get_mut(&group)?;
        // Whatever the caller does may give the group a Ready.
        self.active.insert(group);
        Some(&mut g.node)
    }

    /// The storage of `group`, if hosted: for snapshots and compaction by the application.
    pub fn storage(&self, group: u64) -> Option<&GroupStorage> {
        self.groups.get(&group).map(|g| &g.storage)
    }

    /// The state of `group`, if hosted.
    pub fn status(&self, group: u64) -> Option<GroupStatus> {
        let g = self.groups.get(&group)?;
        let st = g.node.status();
        Some(GroupStatus {
            group,
            leader: st.soft_state.leader_id,
            role: st.soft_state.raft_state,
            term: st.hard_state.term,
            commit: st.hard_state.commit,
            applied: st.applied,
            first_index: g.storage.first_index().unwrap_or(0),
            last_index: st.last_index,
            quiesced: g.quiesced,
            repairing: st.repairing,
        })
    }

    /// What this node did so far.
    pub fn stats(&self) -> MultiStats {
        self.stats
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned { Err(Error::Poisoned) } else { Ok(()) }
    }

    /// The group, for a call that may give it a Ready (so it joins the active groups).
    fn group_mut(&mut self, group: u64) -> Result<&mut Group> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or_else(|| Error::InvalidConfig(format!("group {group} is not hosted")))?;
        self.active.insert(group);
        Ok(g)
    }

    /// Wakes a quiesced group. A follower woken by anything but its leader asks the leader to
    /// wake too, so that heartbeats resume rather than the follower timing out and campaigning
    /// against a live leader; `skip_leader_wake` names a node not to ask (the leader itself,
    /// when its own message woke the group).
    fn wake_group(&mut self, group: u64, skip_leader_wake: Option<u64>) {
        let id = self.id;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if !g.quiesced {
            return;
        }
        g.quiesced = false;
        self.active.insert(group);
        self.stats.wakes += 1;
        let leader = g.leader();
        // A leader's quiesce heartbeats not yet sent are dropped when the cycle sends the
        // outbox (they would put the followers to sleep again).
        if leader != id && leader != 0 && Some(leader) != skip_leader_wake {
            self.outbox.entry(leader).or_insert_with(|| Batch::new(id, leader)).wakes.push(group);
        }
    }

    /// Wakes `group` if it is quiesced (for changes made through [`MultiRaft::raw_node`]).
    pub fn wake(&mut self, group: u64) {
        self.wake_group(group, None);
    }

    /// Whether `group` is quiesced.
    pub fn is_quiesced(&self, group: u64) -> bool {
        self.groups.get(&group).is_some_and(|g| g.quiesced)
    }

    /// Proposes `data` in `group` (waking it).
    pub fn propose(&mut self, group: u64, data: impl Payload) -> Result<()> {
        self.check_poisoned()?;
        self.wake_group(group, None);
        self.group_mut(group)?.node.propose(data)
    }

    /// Proposes a membership change in `group` (waking it).
    pub fn propose_conf_change(&mut self, group: u64, cc: impl AnyConfChange) -> Result<()> {
        self.check_poisoned()?;
        self.wake_group(group, None);
        self.group_mut(group)?.node.propose_conf_change(cc)
    }

    /// Requests a linearizable read in `group` (waking it); the answer comes back in a later
    /// [`GroupReady::read_states`].
    pub fn read_index(&mut self, group: u64, ctx: impl Payload) -> Result<()> {
        self.check_poisoned()?;
        self.wake_group(group, None);
        let g = self.group_mut(group)?;
        if g.role() == StateRole::Leader {
            g.pending_reads += 1;
        }
        g.node.read_index(ctx);
        Ok(())
    }

    /// Starts an election in `group` now (waking it).
    pub fn campaign(&mut self, group: u64) -> Result<()> {
        self.check_poisoned()?;
        self.wake_group(group, None);
        self.group_mut(group)?.node.campaign()
    }

    /// Asks the leader of `group` to hand leadership to `to` (waking it).
    pub fn transfer_leader(&mut self, group: u64, to: u64) -> Result<()> {
        self.check_poisoned()?;
        self.wake_group(group, None);
        self.group_mut(group)?.node.transfer_leader(to);
        Ok(())
    }

    /// Reports how sending a snapshot of `group` to `node` went.
    pub fn report_snapshot(&mut self, group: u64, node: u64, status: SnapshotStatus) -> Result<()> {
        self.check_poisoned()?;
        self.wake_group(group, None);
        self.group_mut(group)?.node.report_snapshot(node, status);
        Ok(())
    }

    /// Reports that the batch for `node` could not be delivered: every group it is a member of
    /// hears of it, and those quiesced wake (so that followers of a lost leader tick, time
    /// out and campaign).
    pub fn report_unreachable(&mut self, node: u64) {
        let hit: Vec<u64> = self
            .groups
            .iter()
            .filter(|(_, g)| g.has_member(node))
            .map(|(group, _)| *group)
            .collect();
        // Bounded by the hosted groups.
        for group in hit {
            // The wake is sent to the leader even when it is the node reported: if the report
            // was wrong (a transient failure), its heartbeats resume and spare the group an
            // election; if not, the wake is lost like everything else sent there.
            self.wake_group(group, None);
            if let Some(g) = self.groups.get_mut(&group) {
                g.node.report_unreachable(node);
            }
        }
    }

    /// Advances every group that is not quiesced by one tick; a leader whose group has nothing
    /// to do quiesces instead (and tells its followers in the next cycle's batches).
    pub fn tick(&mut self) {
        let id = self.id;
        let quiescence = self.quiescence;
        let quiesce_after_ticks = self.quiesce_after_ticks;
        let groups = &mut self.groups;
        let stats = &mut self.stats;
        let outbox = &mut self.outbox;
        stats.group_visits += self.active.len() as u64;
        // Bounded by the active groups; a quiesced group that is not among them does not tick.
        self.active.retain(|&group| {
            let g = groups.get_mut(&group).expect("an active group is hosted");
            if g.quiesced {
                // Stepped or handed out while quiesced: kept until a cycle takes its Ready.
                return g.node.has_ready();
            }
            if !(quiescence && g.can_quiesce()) {
                g.idle_ticks = 0;
            } else if g.idle_ticks + 1 < quiesce_after_ticks {
                g.idle_ticks += 1;
            } else {
                g.idle_ticks = 0;
                g.quiesced = true;
                stats.quiesces += 1;
                let r = g.node.core();
                let (term, commit) = (r.term, r.raft_log.committed);
                // What the followers check against their own log (rule Q2).
                assert_eq!(
                    commit,
                    r.raft_log.last_index(),
                    "group {group}: quiescing leader with commit below its last index"
                );
                // Bounded by the group's members.
                for (peer, pr) in &r.prs.progress {
                    if *peer == id {
                        continue;
                    }
                    // The same heartbeat the core sends, marked.
                    let hb = Heartbeat {
                        group,
                        term,
                        commit: pr.matched.min(commit),
                        quiesce: true,
                        context: Bytes::new(),
                    };
                    outbox
                        .entry(*peer)
                        .or_insert_with(|| Batch::new(id, *peer))
                        .heartbeats
                        .push(hb);
                }
                // Rule Q1 found no Ready: nothing left for a cycle to do.
                return false;
            }
            g.node.tick();
            true
        });
        self.check_active();
    }

    /// Feeds a batch received from a peer node. Items for groups this node does not host are
    /// dropped unless the factory creates the group; what a peer sends never fails the call.
    pub fn step(&mut self, batch: Batch) -> Result<()> {
        self.check_poisoned()?;
        if batch.to != self.id || batch.from == self.id || batch.from == 0 {
            self.stats.dropped += batch.item_count() as u64;
            return Ok(());
        }
        let from = batch.from;
        // Each loop is bounded by the batch's items.
        for (group, m) in batch.messages {
            if m.to != self.id || m.from != from || m.msg_type.is_local() {
                self.stats.dropped += 1;
                continue;
            }
            self.step_message(group, m, false);
        }
        for hb in batch.heartbeats {
            let m = Message {
                msg_type: MessageType::MsgHeartbeat,
                to: self.id,
                from,
                term: hb.term,
                commit: hb.commit,
                context: hb.context,
                ..Message::default()
            };
            let group = hb.group;
            if self.step_message(group, m, hb.quiesce) && hb.quiesce {
                self.quiesce_follower(group, from, hb.term, hb.commit);
            }
        }
        for resp in batch.heartbeat_resps {
            let m = Message {
                msg_type: MessageType::MsgHeartbeatResp,
                to: self.id,
                from,
                term: resp.term,
                context: resp.context,
                ..Message::default()
            };
            self.step_message(resp.group, m, true);
        }
        for group in batch.wakes {
            if self.groups.contains_key(&group) {
                self.wake_group(group, Some(from));
            } else {
                self.stats.dropped += 1;
            }
        }
        Ok(())
    }

    /// Steps one message into its group, creating the group if the factory allows and waking
    /// it unless `keep_asleep`. Returns whether the group took it.
    fn step_message(&mut self, group: u64, m: Message, keep_asleep: bool) -> bool {
        if !self.groups.contains_key(&group) && !self.create_on_message(group, &m) {
            self.stats.dropped += 1;
            return false;
        }
        // A message from the leader that brings nothing new may be a stale one, reordered
        // behind the quiesce heartbeat, from a leader that sleeps now: it leaves the follower
        // asleep (woken alone, the follower would tick to an election in an idle group). One
        // that brings news was sent after the quiescence, by a leader that is awake: it wakes
        // the follower without a wake sent back.
        // Asked of quiesced groups only: an awake one has nothing to wake.
        let asleep = self.groups.get(&group).filter(|g| g.quiesced);
        if let Some(g) = asleep.filter(|_| !keep_asleep) {
            let from_leader = g.leader() == m.from;
            if !from_leader || brings_news(g.node.core(), &m) {
                self.wake_group(group, Some(m.from).filter(|_| from_leader));
            }
        }
        let g = self.groups.get_mut(&group).expect("created or hosted");
        let read = m.msg_type == MessageType::MsgReadIndex;
        let leading = g.role() == StateRole::Leader;
        let stepped = g.node.step(m);
        // A message that leaves the group asleep may still give it a Ready (a follower's
        // answer to a heartbeat); a leader's group that steps that answer usually has none, and
        // stays out of the walks.
        if !g.quiesced || g.node.has_ready() {
            self.active.insert(group);
        }
        match stepped {
            Ok(()) => {
                if read && leading {
                    g.pending_reads += 1;
                }
                true
            }
            Err(_) => {
                self.stats.dropped += 1;
                false
            }
        }
    }

    fn create_on_message(&mut self, group: u64, m: &Message) -> bool {
        // Answers never create a group: it would have sent the request.
        if m.msg_type.is_response() || self.removed.contains(&group) {
            return false;
        }
        let Some(factory) = self.factory.as_mut() else {
            return false;
        };
        let Some(config) = factory(group, m) else {
            return false;
        };
        self.create_group(group, config, None).is_ok()
    }

    /// A follower that stepped a quiesce heartbeat stops ticking if its log is complete and it
    /// follows that leader in that term (rule Q2); otherwise, unless the heartbeat is of an
    /// older term, it stays awake and asks the leader to wake.
    fn quiesce_follower(&mut self, group: u64, leader: u64, term: u64, commit: u64) {
        let id = self.id;
        let quiescence = self.quiescence;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let r = g.node.core();
        if term < r.term {
            // A deposed leader's heartbeat, late: the core's answer tells it the newer term;
            // this node's own leader is not concerned.
            return;
        }
        let complete = quiescence
            && r.state == StateRole::Follower
            && r.leader_id == leader
            && r.term == term
            && r.raft_log.committed == commit
            && r.raft_log.last_index() == commit
            && g.pending_reads == 0;
        if complete {
            if !g.quiesced {
                g.quiesced = true;
                self.stats.quiesces += 1;
            }
        } else {
            g.quiesced = false;
            // Stepped just before, so active already; kept so by the invariant's letter.
            self.active.insert(group);
            self.outbox.entry(leader).or_insert_with(|| Batch::new(id, leader)).wakes.push(group);
        }
    }

    /// Whether [`MultiRaft::ready`] has anything to do.
    pub fn has_ready(&self) -> bool {
        // Bounded by the active groups: the others have no Ready.
        !self.outbox.is_empty()
            || self.active.iter().any(|group| self.groups[group].node.has_ready())
    }

    /// One ready cycle for every group: persists every group's snapshot (through its storage),
    /// entries and hard state, the entries and hard states as one [`WriteBatch`] with at most
    /// one sync; then applies committed membership changes, advances every group, and returns
    /// the batches to send and what the application must apply.
    ///
    /// An error while persisting leaves the groups' state unknown: this and every later call
    /// fail, and the node must be restarted from its storage.
    pub fn ready(&mut self) -> Result<MultiReady> {
        self.check_poisoned()?;
        let mut readies: Vec<(u64, Ready)> = Vec::new();
        // Quiesced groups with nothing more to hand out: they leave the active groups.
        let mut leaving: Vec<u64> = Vec::new();
        self.stats.group_visits += self.active.len() as u64;
        // Bounded by the active groups (in group order); the others have no Ready.
        for group in &self.active {
            let g = self.groups.get_mut(group).expect("an active group is hosted");
            if g.node.has_ready() {
                readies.push((*group, g.node.ready()));
            } else if g.quiesced {
                leaving.push(*group);
            }
        }
        if let Err(e) = self.persist(&readies) {
            self.poisoned = true;
            return Err(e);
        }
        let mut out = MultiReady::default();
        let id = self.id;
        for (group, mut rd) in readies {
            let g = self.groups.get_mut(&group).expect("taken above");
            // `advance` needs neither the messages nor the reads: moved out, not copied.
            let messages = std::mem::take(&mut rd.messages);
            let read_states = std::mem::take(&mut rd.read_states);
            let answered = read_states.len()
                + messages.iter().filter(|m| m.msg_type == MessageType::MsgReadIndexResp).count();
            for m in messages {
                let batch = self.outbox.entry(m.to).or_insert_with(|| Batch::new(id, m.to));
                batch.push(group, m);
            }
            g.pending_reads = g.pending_reads.saturating_sub(answered);
            if rd.soft_state.is_some() {
                g.pending_reads = 0;
            }
            let mut conf_state = None;
            for e in &rd.committed_entries {
                if e.entry_type == crate::types::EntryType::Normal {
                    continue;
                }
                // A change that does not decode is ignored, identically on every node (the
                // core ignores invalid changes the same way).
                if let Ok(cc) = conf_change_of(e) {
                    conf_state = Some(g.node.apply_conf_change(cc));
                }
            }
            let app = GroupReady {
                group,
                soft_state: rd.soft_state,
                snapshot: rd.snapshot.clone(),
                committed_entries: rd.committed_entries.clone(),
                conf_state,
                read_states,
            };
            let was_repairing = g.node.core().repair_state().is_some();
            g.node.advance(rd);
            if was_repairing && g.node.core().repair_state().is_none() {
                // The core ended the repair (by a rule the storage cannot see alone): make it
                // durable, or the next start repairs again (safe, but slower).
                g.storage.clear_repair()?;
            }
            if g.quiesced && !g.node.has_ready() {
                leaving.push(group);
            }
            if app.soft_state.is_some()
                || app.snapshot.is_some()
                || !app.committed_entries.is_empty()
                || !app.read_states.is_empty()
            {
                out.groups.push(app);
            }
        }
        // Bounded by the active groups.
        for group in &leaving {
            self.active.remove(group);
        }
        self.check_active();
        out.batches = std::mem::take(&mut self.outbox).into_values().collect();
        for b in out.batches.iter_mut() {
            // A quiesce heartbeat of a group that woke since the tick that queued it would put
            // the followers to sleep while the leader runs.
            let groups = &self.groups;
            b.heartbeats
                .retain(|hb| !hb.quiesce || groups.get(&hb.group).is_some_and(|g| g.quiesced));
            // Each step can queue a wake for a group; one is enough.
            b.wakes.sort_unstable();
            b.wakes.dedup();
        }
        out.batches.retain(|b| !b.is_empty());
        for b in &out.batches {
            self.stats.batches_sent += 1;
            self.stats.messages_sent += b.messages.len() as u64;
            self.stats.heartbeats_sent += b.heartbeats.len() as u64;
            self.stats.heartbeat_resps_sent += b.heartbeat_resps.len() as u64;
        }
        Ok(out)
    }

    /// Asserts the invariant of `active` (a hosted group not in it is quiesced and has no
    /// Ready). A walk over every group, the cost `active` saves: debug builds only (the
    /// benches build the `testing` feature too).
    fn check_active(&self) {
        #[cfg(debug_assertions)]
        for (group, g) in &self.groups {
            if !self.active.contains(group) {
                assert!(g.quiesced, "group {group} is awake but not among the active groups");
                assert!(!g.node.has_ready(), "group {group} has a Ready but is not active");
            }
        }
    }

    /// Step 1 of the Ready contract for every group at once.
    fn persist(&mut self, readies: &[(u64, Ready)]) -> Result<()> {
        let mut must_sync = false;
        for (group, rd) in readies {
            if let Some(s) = &rd.snapshot {
                // Durable on return (the snapshot's own commit point).
                self.groups[group].storage.apply_snapshot(s.clone())?;
            }
            self.write.save(*group, rd.hard_state.as_ref(), &rd.entries)?;
            must_sync |= rd.must_sync;
        }
        if self.write.is_empty() {
            return Ok(());
        }
        self.stats.writes += 1;
        self.engine.write(&mut self.write)?;
        assert!(self.write.is_empty(), "a written batch is emptied, ready for the next cycle");
        if must_sync {
            // Covered already under SyncPolicy::Always (no second fdatasync); the one sync
            // under SyncPolicy::Never.
            self.engine.sync()?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for MultiRaft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiRaft")
            .field("id", &self.id)
            .field("groups", &self.groups.len())
            .field("poisoned", &self.poisoned)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Whether `m`, from the leader `r` follows, carries anything `r` lacks: a newer term, entries
/// past its log, a commit index past its own. Heartbeats and appends that repeat what a
/// quiesced follower holds do not.
fn brings_news<S: crate::contract::Storage>(r: &super::core::Raft<S>, m: &Message) -> bool {
    if m.term != r.term {
        return true;
    }
    match m.msg_type {
        MessageType::MsgHeartbeat => m.commit > r.raft_log.committed,
        MessageType::MsgApp => {
            let last = m.entries.last().map_or(m.index, |e| e.index);
            last > r.raft_log.last_index() || m.commit > r.raft_log.committed
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        let mut m = Message::new(MessageType::MsgApp, 1, 2);
        m.term = 3;
        m.index = 4;
        m.entries = vec![Entry::new(5, 3, "x")];
        Batch {
            from: 1,
            to: 2,
            messages: vec![(7, m)],
            heartbeats: vec![
                Heartbeat { group: 7, term: 3, commit: 4, quiesce: false, context: Bytes::new() },
                Heartbeat {
                    group: 9,
                    term: 1,
                    commit: 2,
                    quiesce: true,
                    context: Bytes::from_static(b"ctx"),
                },
            ],
            heartbeat_resps: vec![HeartbeatResp {
                group: 8,
                term: 2,
                context: Bytes::from_static(b"c"),
            }],
            wakes: vec![11, 12],
        }
    }

    #[test]
    fn batch_encoding_round_trips() {
        let b = sample();
        assert_eq!(Batch::decode(&b.encode()).unwrap(), b);
        let empty = Batch::new(3, 4);
        assert_eq!(Batch::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn every_truncation_and_extension_of_a_batch_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                matches!(Batch::decode(&bytes[..len]), Err(Error::Decode(_))),
                "a batch cut to {len} bytes decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Batch::decode(&longer), Err(Error::Decode(_))));
        let mut bad_flag = Batch::new(1, 2);
        bad_flag.heartbeats.push(Heartbeat::default());
        let mut bytes = bad_flag.encode();
        // The quiesce flag follows version, from, to, the message count, and group, term and
        // commit of the one heartbeat.
        let flag_at = 1 + 8 + 8 + 4 + 4 + 8 + 8 + 8;
        bytes[flag_at] = 2;
        assert!(matches!(Batch::decode(&bytes), Err(Error::Decode(_))));
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut bytes = vec![BATCH_VERSION];
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Batch::decode(&bytes), Err(Error::Decode(_))));
    }

    #[test]
    fn only_plain_heartbeats_are_coalesced() {
        let mut b = Batch::new(1, 2);
        let mut hb = Message::new(MessageType::MsgHeartbeat, 1, 2);
        hb.term = 4;
        hb.commit = 9;
        hb.context = Bytes::from_static(b"r");
        b.push(5, hb.clone());
        let mut resp = Message::new(MessageType::MsgHeartbeatResp, 1, 2);
        resp.term = 4;
        b.push(5, resp.clone());
        assert_eq!(
            b.heartbeats,
            vec![Heartbeat { group: 5, term: 4, commit: 9, quiesce: false, context: hb.context }]
        );
        assert_eq!(
            b.heartbeat_resps,
            vec![HeartbeatResp { group: 5, term: 4, context: Bytes::new() }]
        );
        assert!(b.messages.is_empty());
        // A field the compact form cannot carry keeps the whole message.
        let mut odd = Message::new(MessageType::MsgHeartbeat, 1, 2);
        odd.index = 1;
        b.push(6, odd.clone());
        resp.commit = 3;
        b.push(6, resp.clone());
        assert_eq!(b.messages, vec![(6, odd), (6, resp)]);
    }
}
