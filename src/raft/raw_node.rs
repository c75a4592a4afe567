//! [`RawNode`]: the application's handle on the Raft core, with the Ready/Advance interface.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use bytes::Bytes;

use super::config::Config;
use super::core::Raft;
use super::message::{
    AnyConfChange, ConfChange, ConfChangeType, Message, MessageType, ReadState, SnapshotStatus,
    SoftState, StateRole,
};
use super::tracker::Progress;
use crate::contract::Storage;
use crate::error::{Error, Result};
use crate::types::{ConfState, Entry, EntryType, HardState, RepairState, Snapshot};

/// Anything `propose` and `read_index` accept as a payload: owned buffers are taken without
/// copying, borrowed ones are copied.
pub trait Payload {
    /// The payload as `Bytes`.
    fn into_payload(self) -> Bytes;
}

impl Payload for Bytes {
    fn into_payload(self) -> Bytes {
        self
    }
}

impl Payload for Vec<u8> {
    fn into_payload(self) -> Bytes {
        Bytes::from(self)
    }
}

impl Payload for String {
    fn into_payload(self) -> Bytes {
        Bytes::from(self)
    }
}

impl<const N: usize> Payload for [u8; N] {
    fn into_payload(self) -> Bytes {
        Bytes::copy_from_slice(&self)
    }
}

impl<T: AsRef<[u8]> + ?Sized> Payload for &T {
    fn into_payload(self) -> Bytes {
        Bytes::copy_from_slice(self.as_ref())
    }
}

/// What the application must do next: persist, send, apply. See [`RawNode::ready`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// The new leader and role, if either changed. Need not be persisted.
    pub soft_state: Option<SoftState>,
    /// The hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Linearizable reads now confirmed: serve each once the applied index reaches its index.
    pub read_states: Vec<ReadState>,
    /// Entries to append to storage (replacing any suffix from their first index on).
    pub entries: Vec<Entry>,
    /// A snapshot to apply to storage, if one arrived.
    pub snapshot: Option<Snapshot>,
    /// Committed entries to apply to the state machine, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages to send, only after `entries`, `hard_state` and `snapshot` are persisted.
    pub messages: Vec<Message>,
    /// Whether persisting this Ready needs an fsync: new entries, or a changed term or vote.
    /// (A changed commit index alone may be written lazily: it can be recomputed.)
    pub must_sync: bool,
}

/// A snapshot of the node's state for inspection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: u64,
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Leader and role.
    pub soft_state: SoftState,
    /// The applied index.
    pub applied: u64,
    /// The index of the last log entry.
    pub last_index: u64,
    /// The current membership.
    pub conf_state: ConfState,
    /// On a leader, every peer's progress; empty otherwise.
    pub progress: BTreeMap<u64, Progress>,
    /// The peer leadership is being transferred to, if any.
    pub lead_transferee: Option<u64>,
    /// Set while the node repairs a log that lost entries it had made durable: it neither
    /// votes nor campaigns until its persisted log reaches `index` again.
    pub repairing: Option<RepairState>,
}

/// A Raft node driven by the application: `tick` / `step` / `propose` feed it, `ready` says
/// what to persist, send and apply, and `advance` acknowledges that it was done.
///
/// # The Ready contract
///
/// For each [`Ready`], in this order:
/// 1. persist `snapshot` (if any), then append `entries`, then store `hard_state` (if any);
///    fsync if `must_sync`;
/// 2. send `messages` (never before step 1: some acknowledge the state persisted there);
/// 3. apply `snapshot` and `committed_entries` to the state machine, calling
///    [`RawNode::apply_conf_change`] for membership entries;
/// 4. call [`RawNode::advance`] with the Ready.
///
/// Do not call `ready` again before `advance`.
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft_state: SoftState,
    prev_hard_state: HardState,
}

impl<S: Storage> RawNode<S> {
    /// A node over `store`, which holds whatever it persisted before (or nothing).
    pub fn new(config: &Config, store: S) -> Result<RawNode<S>> {
        let raft = Raft::new(config, store)?;
        let prev_soft_state = raft.soft_state();
        let mut prev_hard_state = raft.hard_state();
        if raft.repair_state().is_some() {
            // A repairing node may start in a term above the stored one (the damage took hard
            // states with it): compare with what is stored, so the first Ready persists it.
            let stored = raft.raft_log.store.initial_state()?.hard_state;
            if stored.term != prev_hard_state.term {
                prev_hard_state = stored;
            }
        }
        Ok(RawNode { raft, prev_soft_state, prev_hard_state })
    }

    /// Starts a new cluster of `peers` (which must include this node) on an empty storage:
    /// the log receives one committed `AddNode` entry per peer at term 1, handed out in the
    /// next Ready like any other entries. Every peer of a new cluster bootstraps with the
    /// same list.
    pub fn bootstrap<I>(&mut self, peers: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<u64>,
    {
        let peers: Vec<u64> = peers.into_iter().map(|p| *p.borrow()).collect();
        if peers.is_empty() {
            return Err(Error::InvalidConfig("bootstrap needs at least one peer".into()));
        }
        if self.raft.raft_log.last_index() != 0 || !self.raft.hard_state().is_empty() {
            return Err(Error::InvalidConfig("bootstrap needs an empty storage".into()));
        }
        self.raft.become_follower(1, 0);
        let entries: Vec<Entry> = peers
            .iter()
            .enumerate()
            .map(|(k, id)| {
                let cc = ConfChange {
                    change_type: ConfChangeType::AddNode,
                    node_id: *id,
                    context: Bytes::new(),
                };
                Entry {
                    index: k as u64 + 1,
                    term: 1,
                    entry_type: EntryType::ConfChange,
                    data: cc.encode().into(),
                }
            })
            .collect();
        self.raft.raft_log.append(&entries);
        // Committed by fiat: every peer starts with the same entries.
        self.raft.raft_log.committed = entries.len() as u64;
        for id in &peers {
            let cc = ConfChange {
                change_type: ConfChangeType::AddNode,
                node_id: *id,
                context: Bytes::new(),
            };
            self.raft.apply_conf_change(&cc.as_v2());
        }
        Ok(())
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (with pre-vote if configured).
    pub fn campaign(&mut self) -> Result<()> {
        self.raft.step(Message::new(MessageType::MsgHup, 0, 0))
    }

    /// Proposes `data` to be appended to the log. Fails with [`Error::ProposalDropped`] when
    /// the proposal certainly was not accepted; success does not mean it will commit.
    pub fn propose(&mut self, data: impl Payload) -> Result<()> {
        let m = Message {
            msg_type: MessageType::MsgProp,
            from: self.raft.id,
            entries: vec![Entry { data: data.into_payload(), ..Entry::default() }],
            ..Message::default()
        };
        self.raft.step(m)
    }

    /// Proposes a membership change ([`ConfChange`] or [`super::ConfChangeV2`]). Once it
    /// commits, the application applies it with [`RawNode::apply_conf_change`].
    pub fn propose_conf_change(&mut self, cc: impl AnyConfChange) -> Result<()> {
        let (entry_type, data) = cc.to_entry_data();
        let m = Message {
            msg_type: MessageType::MsgProp,
            from: self.raft.id,
            entries: vec![Entry { entry_type, data, ..Entry::default() }],
            ..Message::default()
        };
        self.raft.step(m)
    }

    /// Feeds a message received from a peer.
    pub fn step(&mut self, m: Message) -> Result<()> {
        if m.msg_type.is_local() {
            return Err(Error::StepLocalMsg);
        }
        if m.msg_type.is_response() && !self.raft.prs.progress.contains_key(&m.from) {
            return Err(Error::StepPeerNotFound);
        }
        self.raft.step(m)
    }

    /// Applies a committed membership change and returns the new membership, which the
    /// application stores with its next snapshot. A change that is invalid for the current
    /// membership is ignored (identically on every node) and the membership returned as is.
    pub fn apply_conf_change(&mut self, cc: impl AnyConfChange) -> ConfState {
        self.raft.apply_conf_change(&cc.as_v2())
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        let m =
            Message { msg_type: MessageType::MsgTransferLeader, from: to, ..Message::default() };
        let _ = self.raft.step(m);
    }

    /// Forgets the current leader (follower only), so that this node grants votes at once
    /// rather than waiting out its election timeout; useful when the application knows the
    /// leader is gone.
    pub fn forget_leader(&mut self) -> Result<()> {
        self.raft.forget_leader();
        Ok(())
    }

    /// Requests a linearizable read identified by `ctx` (unique per request). The answer
    /// comes back as a [`ReadState`] in a later Ready.
    pub fn read_index(&mut self, ctx: impl Payload) {
        let m = Message {
            msg_type: MessageType::MsgReadIndex,
            from: self.raft.id,
            entries: vec![Entry { data: ctx.into_payload(), ..Entry::default() }],
            ..Message::default()
        };
        let _ = self.raft.step(m);
    }

    /// Reports that the last message to `id` could not be delivered.
    pub fn report_unreachable(&mut self, id: u64) {
        let _ = self.raft.step(Message::new(MessageType::MsgUnreachable, id, 0));
    }

    /// Reports how sending a snapshot to `id` went; until then the leader sends it nothing.
    pub fn report_snapshot(&mut self, id: u64, status: SnapshotStatus) {
        let m = Message {
            msg_type: MessageType::MsgSnapStatus,
            from: id,
            reject: status == SnapshotStatus::Failure,
            ..Message::default()
        };
        let _ = self.raft.step(m);
    }

    /// The node's state.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            hard_state: r.hard_state(),
            soft_state: r.soft_state(),
            applied: r.raft_log.applied,
            last_index: r.raft_log.last_index(),
            conf_state: r.prs.conf_state(),
            progress: if r.state == StateRole::Leader {
                r.prs.progress.clone()
            } else {
                BTreeMap::new()
            },
            lead_transferee: r.lead_transferee,
            repairing: r.repair_state(),
        }
    }

    /// The core, read-only: for callers in `raft` that need a field or two of [`Status`]
    /// without building (and allocating) a whole one.
    pub(super) fn core(&self) -> &Raft<S> {
        &self.raft
    }

    /// Whether [`RawNode::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.soft_state() != self.prev_soft_state
            || r.hard_state() != self.prev_hard_state
            || r.raft_log.unstable.snapshot.is_some()
            || !r.msgs.is_empty()
            || !r.raft_log.unstable_entries().is_empty()
            || r.raft_log.has_next_committed_entries()
            || !r.read_states.is_empty()
    }

    /// What to persist, send and apply now. Call [`RawNode::advance`] with it when done.
    pub fn ready(&mut self) -> Ready {
        let r = &mut self.raft;
        let soft = r.soft_state();
        let hard = r.hard_state();
        let entries = r.raft_log.unstable_entries().to_vec();
        let snapshot = r.raft_log.unstable.snapshot.clone();
        let committed_entries = r.raft_log.next_committed_entries();
        let must_sync = !entries.is_empty()
            || snapshot.is_some()
            || hard.term != self.prev_hard_state.term
            || hard.vote != self.prev_hard_state.vote;
        let rd = Ready {
            soft_state: (soft != self.prev_soft_state).then_some(soft),
            hard_state: (hard != self.prev_hard_state).then_some(hard),
            read_states: std::mem::take(&mut r.read_states),
            entries,
            snapshot,
            committed_entries,
            messages: std::mem::take(&mut r.msgs),
            must_sync,
        };
        if let Some(ss) = rd.soft_state {
            self.prev_soft_state = ss;
        }
        rd
    }

    /// Acknowledges that everything in `rd` was persisted, sent and applied.
    pub fn advance(&mut self, rd: Ready) {
        let r = &mut self.raft;
        if let Some(hs) = rd.hard_state {
            self.prev_hard_state = hs;
        }
        if let Some(s) = &rd.snapshot {
            r.raft_log.stable_snap_to(s.metadata.index);
            r.applied_to(s.metadata.index);
        }
        if let Some(last) = rd.entries.last() {
            r.raft_log.stable_to(last.index, last.term);
        }
        // Only now are the entries persisted: a repair ends on persisted entries alone.
        r.maybe_end_repair();
        if let Some(last) = rd.committed_entries.last() {
            r.reduce_uncommitted_size(&rd.committed_entries);
            r.applied_to(last.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use std::sync::Arc;

    type Node = RawNode<Arc<MemoryStorage>>;

    fn persist(store: &MemoryStorage, rd: &Ready) {
        store.append(&rd.entries).unwrap();
        if let Some(hs) = rd.hard_state {
            store.set_hard_state(hs).unwrap();
        }
    }

    fn single() -> (Node, Arc<MemoryStorage>) {
        let store = Arc::new(MemoryStorage::new());
        let n = RawNode::new(&Config::new(1), store.clone()).unwrap();
        (n, store)
    }

    fn handle(n: &mut Node, store: &MemoryStorage) -> Ready {
        let rd = n.ready();
        persist(store, &rd);
        for e in &rd.committed_entries {
            if e.entry_type == EntryType::ConfChange {
                n.apply_conf_change(ConfChange::decode(&e.data).unwrap());
            }
        }
        n.advance(rd.clone());
        rd
    }

    #[test]
    fn propose_accepts_owned_and_borrowed_payloads() {
        let (mut n, store) = single();
        n.bootstrap([1u64]).unwrap();
        handle(&mut n, &store);
        n.campaign().unwrap();
        handle(&mut n, &store);
        let buf = vec![1u8, 2];
        n.propose(Bytes::from_static(b"a")).unwrap();
        n.propose(buf.clone()).unwrap();
        n.propose(&buf).unwrap();
        n.propose(&buf[..]).unwrap();
        n.propose("text").unwrap();
        n.propose(String::from("owned")).unwrap();
        n.propose(*b"xy").unwrap();
        n.propose(b"xy").unwrap();
        let rd = n.ready();
        let data: Vec<&[u8]> = rd.entries.iter().map(|e| e.data.as_ref()).collect();
        let want: [&[u8]; 8] = [b"a", &[1, 2], &[1, 2], &[1, 2], b"text", b"owned", b"xy", b"xy"];
        assert_eq!(data, want);
    }

    #[test]
    fn committed_entries_are_handed_out_in_size_limited_batches() {
        let store = Arc::new(MemoryStorage::new());
        let cfg = Config { max_committed_size_per_ready: 1, ..Config::new(1) };
        let mut n = RawNode::new(&cfg, store.clone()).unwrap();
        n.bootstrap([1u64]).unwrap();
        let rd = handle(&mut n, &store);
        assert_eq!(rd.committed_entries.len(), 1, "the one bootstrap entry");
        assert!(!n.has_ready());
        n.campaign().unwrap();
        handle(&mut n, &store);
        for k in 0..3u8 {
            n.propose(vec![k]).unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..10 {
            if !n.has_ready() {
                break;
            }
            let rd = handle(&mut n, &store);
            assert!(rd.committed_entries.len() <= 1, "at most one entry per Ready");
            seen.extend(rd.committed_entries.iter().map(|e| e.data.clone()));
        }
        assert_eq!(seen, vec![Bytes::from(vec![0]), Bytes::from(vec![1]), Bytes::from(vec![2])]);
    }

    #[test]
    fn ready_reports_only_changes_and_must_sync_for_entries_or_votes() {
        let (mut n, store) = single();
        assert!(!n.has_ready(), "a fresh node has nothing to do");
        n.bootstrap([1u64]).unwrap();
        let rd = handle(&mut n, &store);
        assert!(rd.must_sync);
        assert_eq!(rd.hard_state.map(|h| h.term), Some(1));
        assert!(!n.has_ready());
        n.campaign().unwrap();
        let rd = handle(&mut n, &store);
        assert_eq!(
            rd.soft_state.map(|s| s.raft_state),
            Some(StateRole::Leader),
            "a single voter wins at once"
        );
        assert!(rd.must_sync, "new term, vote and the no-op");
        assert_eq!(rd.committed_entries.len(), 1, "the no-op commits at once");
        assert!(!n.has_ready());
        assert_eq!(n.status().applied, 2);
        assert!(
            matches!(n.step(Message::new(MessageType::MsgHup, 1, 1)), Err(Error::StepLocalMsg)),
            "local messages are refused from the outside"
        );
        let mut resp = Message::new(MessageType::MsgAppResp, 9, 1);
        resp.term = 2;
        assert!(matches!(n.step(resp), Err(Error::StepPeerNotFound)));
    }
}
