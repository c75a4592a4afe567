//! The Raft state machine: roles, elections, replication, membership, reads and leadership
//! transfer. It consumes messages and ticks and produces messages and log changes; it never
//! does I/O. [`super::RawNode`] wraps it with the Ready/Advance interface.

use bytes::Bytes;

use super::confchange::{self, Changer};
use super::config::{Config, ReadOnlyOption};
use super::log::RaftLog;
use super::message::{
    ConfChange, ConfChangeV2, Message, MessageType, ReadState, SoftState, StateRole,
};
use super::quorum::VoteResult;
use super::read_only::ReadOnly;
use super::tracker::{Configuration, Progress, ProgressState, ProgressTracker};
use crate::contract::Storage;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::types::{ConfState, Entry, EntryType, HardState, RepairState, Snapshot};

/// Context of a vote request that a leadership transfer started: voters grant it even while
/// they believe a leader is alive.
pub const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

/// Context of an append rejection from a node whose log lost entries it had acknowledged: the
/// leader lowers its match index for that node rather than taking the rejection as stale.
pub const REPAIRING_LOG: &[u8] = b"RepairingLog";

/// Limit on read requests a leader holds until its first commit in a term.
const MAX_PENDING_READ_INDEX_MESSAGES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CampaignType {
    PreElection,
    Election,
    Transfer,
}

fn payload_size(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.data.len() as u64).sum()
}

/// Decodes the membership change an entry carries, as a `ConfChangeV2`.
pub fn conf_change_of(entry: &Entry) -> Result<ConfChangeV2> {
    use super::message::AnyConfChange;
    match entry.entry_type {
        EntryType::ConfChange => Ok(ConfChange::decode(&entry.data)?.as_v2()),
        EntryType::ConfChangeV2 => ConfChangeV2::decode(&entry.data),
        EntryType::Normal => Err(Error::InvalidConfig(format!(
            "entry {} is not a configuration change",
            entry.index
        ))),
    }
}

/// The Raft state machine of one node.
pub struct Raft<S: Storage> {
    /// This node's id.
    pub id: u64,
    /// The current term.
    pub term: u64,
    /// Whom this node voted for in `term` (0: nobody).
    pub vote: u64,
    /// Reads confirmed and waiting to be handed to the application.
    pub read_states: Vec<ReadState>,
    /// The log.
    pub raft_log: RaftLog<S>,
    /// Configuration and progress of every peer.
    pub prs: ProgressTracker,
    /// This node's role.
    pub state: StateRole,
    /// Messages to send, in order.
    pub msgs: Vec<Message>,
    /// The leader of `term` as far as this node knows (0: none).
    pub leader_id: u64,
    /// The peer leadership is being transferred to, if any.
    pub lead_transferee: Option<u64>,
    /// Index of the latest membership change this leader appended; a new change may be
    /// proposed only once the applied index reaches it.
    pub pending_conf_index: u64,
    uncommitted_size: u64,
    read_only: ReadOnly,
    pending_read_index_messages: Vec<Message>,
    election_elapsed: usize,
    heartbeat_elapsed: usize,
    randomized_election_timeout: usize,
    // Election timeouts: seeded, so a seed reproduces a run exactly.
    rng: Rng,
    max_msg_size: u64,
    max_uncommitted_size: u64,
    check_quorum: bool,
    pre_vote: bool,
    read_only_option: ReadOnlyOption,
    heartbeat_timeout: usize,
    election_timeout: usize,
    disable_proposal_forwarding: bool,
    step_down_on_removal: bool,
    // Set while the log is short of entries it made durable (and may have acknowledged)
    // before damage: the node neither votes nor campaigns. Invariant: once `None`, never
    // `Some` again for this node's lifetime.
    repairing: Option<RepairState>,
    // While repairing: a leader's commit index (and that leader's term) that this log matches
    // through, the entry there being of the leader's term. Once persisted, it ends the repair
    // (see `maybe_end_repair`).
    repair_commit: Option<(u64, u64)>,
}

impl<S: Storage> Raft<S> {
    /// A node over `store`, restoring its hard state and membership from it.
    pub fn new(c: &Config, store: S) -> Result<Raft<S>> {
        c.validate()?;
        let committed_limit = if c.max_committed_size_per_ready == 0 {
            c.max_size_per_msg
        } else {
            c.max_committed_size_per_ready
        };
        let raft_log = RaftLog::new(store, committed_limit)?;
        let rs = raft_log.store.initial_state()?;
        let repairing = raft_log.store.repair_state()?;
        let mut r = Raft {
            id: c.id,
            term: 0,
            vote: 0,
            read_states: Vec::new(),
            raft_log,
            prs: ProgressTracker::new(c.max_inflight_msgs, c.max_inflight_bytes),
            state: StateRole::Follower,
            msgs: Vec::new(),
            leader_id: 0,
            lead_transferee: None,
            pending_conf_index: 0,
            uncommitted_size: 0,
            read_only: ReadOnly::default(),
            pending_read_index_messages: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            rng: Rng::new(c.seed ^ c.id.wrapping_mul(0xA076_1D64_78BD_642F)),
            max_msg_size: c.max_size_per_msg,
            max_uncommitted_size: if c.max_uncommitted_entries_size == 0 {
                u64::MAX
            } else {
                c.max_uncommitted_entries_size
            },
            check_quorum: c.check_quorum,
            pre_vote: c.pre_vote,
            read_only_option: c.read_only_option,
            heartbeat_timeout: c.heartbeat_tick,
            election_timeout: c.election_tick,
            disable_proposal_forwarding: c.disable_proposal_forwarding,
            step_down_on_removal: c.step_down_on_removal,
            repairing,
            repair_commit: None,
        };
        let last = r.raft_log.last_index();
        let (cfg, prs) = confchange::restore(&r.prs, last, &rs.conf_state)
            .map_err(|e| Error::InvalidConfig(format!("stored configuration: {e}")))?;
        let cs = r.switch_to_config(cfg, prs);
        debug_assert!(confchange::equivalent(&cs, &rs.conf_state), "{cs:?} != {:?}", rs.conf_state);
        if !rs.hard_state.is_empty() {
            r.load_state(&rs.hard_state)?;
        }
        if let Some(rep) = r.repairing
            && rep.term > r.term
        {
            // The damage took hard states with it: the term never goes back. A leader of a
            // lower term may lack entries this log acknowledged, and must not repair it.
            r.term = rep.term;
            r.vote = 0;
        }
        if c.applied > 0 {
            let last = r.raft_log.last_index();
            if c.applied > last {
                return Err(Error::InvalidConfig(format!(
                    "applied {} is beyond the last index {last}: the log lost entries the \
                     application applied",
                    c.applied
                )));
            }
            // Only committed entries are applied, so everything up to `applied` is committed
            // even if the stored commit index is lower: a hard state whose only change is the
            // commit index need not be synced (the MustSync rule), while the application may
            // record its applied index durably. etcd refuses this start.
            r.raft_log.commit_to(c.applied);
            r.raft_log.applied_to(c.applied.max(r.raft_log.applied));
        }
        let term = r.term;
        r.become_follower(term, 0);
        Ok(r)
    }

    fn load_state(&mut self, hs: &HardState) -> Result<()> {
        let (committed, last) = (self.raft_log.committed, self.raft_log.last_index());
        let mut hs = *hs;
        if self.repairing.is_some() && hs.commit > last {
            // The damage took committed entries with it: this node knows them committed but
            // no longer holds them. It learns the commit index again from the leader that
            // repairs it; a commit index beyond the log would break `committed <= last`.
            hs.commit = last;
        }
        if hs.commit > last {
            return Err(Error::InvalidConfig(format!(
                "stored commit {} is out of range [{committed}, {last}]",
                hs.commit
            )));
        }
        // `committed` starts at the snapshot's index: a snapshot holds only committed entries.
        // A stored commit index below it is one a crash lost, not an error (etcd panics): a
        // hard state whose only change is the commit index need not be synced (the MustSync
        // rule), while the snapshot installed in the same Ready is.
        self.raft_log.committed = hs.commit.max(committed);
        self.term = hs.term;
        self.vote = hs.vote;
        Ok(())
    }

    /// The volatile state worth reporting.
    pub fn soft_state(&self) -> SoftState {
        SoftState { leader_id: self.leader_id, raft_state: self.state }
    }

    /// The state to persist.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.raft_log.committed }
    }

    /// The state of the repair this node is in, if its log lost entries it had made durable:
    /// until it holds them again it grants no vote and never campaigns.
    pub fn repair_state(&self) -> Option<RepairState> {
        self.repairing
    }

    /// Called after the application persisted entries or a snapshot: ends the repair once
    /// the persisted log reaches the index the log had made durable before the damage.
    ///
    /// Only *persisted* entries count. Unstable entries are in memory only: a crash before
    /// they are written loses them again, and a vote granted on their strength would have been
    /// granted by a node whose durable log still lacks what it acknowledged.
    pub fn maybe_end_repair(&mut self) {
        let Some(rep) = self.repairing else {
            return;
        };
        if self.raft_log.unstable.snapshot.is_some() {
            return;
        }
        // Every entry below the unstable offset is persisted (a pending snapshot, checked
        // above, would not be): the persisted log ends just before it.
        let persisted_last = self.raft_log.unstable.offset - 1;
        // The second way out, for a loss of unknown extent: the persisted log matches, through
        // its commit index, a leader of a term above the damaged log's, which has committed an
        // entry of its own term there. The acknowledgements this log sent before the damage
        // were sent in terms up to `rep.term`, and a leader of a later term never counts them
        // (only its own term's). Every entry committed by a leader of those terms is in the new
        // leader's log (leader completeness), below its first entry of its own term, so below
        // that commit index: this log holds it. A leader of `rep.term` itself may still count
        // an acknowledgement of an entry this log lost, so it cannot end the repair this way.
        let caught_up = self.repair_commit.is_some_and(|(index, term)| {
            term > rep.term
                && persisted_last >= index
                && self.raft_log.term(index).is_ok_and(|t| t == term)
        });
        if persisted_last < rep.index && !caught_up {
            return;
        }
        #[cfg(feature = "tracing")]
        tracing::info!(
            id = self.id,
            index = rep.index,
            persisted_last,
            "the log holds again what it lost: repair done, the node may vote"
        );
        self.repairing = None;
    }

    /// Whether this node can become leader: a voter with no snapshot still to persist.
    pub fn promotable(&self) -> bool {
        self.prs.progress.get(&self.id).is_some_and(|p| !p.is_learner)
            && self.raft_log.unstable.snapshot.is_none()
    }

    fn send(&mut self, mut m: Message) {
        if m.from == 0 {
            m.from = self.id;
        }
        match m.msg_type {
            MessageType::MsgVote
            | MessageType::MsgVoteResp
            | MessageType::MsgPreVote
            | MessageType::MsgPreVoteResp => {
                // The term of a vote message is chosen by the caller (a pre-vote carries the
                // term it would campaign in).
                assert_ne!(m.term, 0, "vote message {:?} must carry a term", m.msg_type);
            }
            _ => {
                assert_eq!(m.term, 0, "term of {:?} is set on sending", m.msg_type);
                // Proposals and read requests are forwarded to the leader like local
                // messages; they carry no term.
                if m.msg_type != MessageType::MsgProp && m.msg_type != MessageType::MsgReadIndex {
                    m.term = self.term;
                }
            }
        }
        self.msgs.push(m);
    }

    // ---- replication ----------------------------------------------------------------------

    fn send_append(&mut self, to: u64) {
        self.maybe_send_append(to, true);
    }

    /// Sends entries (or a snapshot) to `to` if its progress allows; with `send_if_empty`
    /// an empty append is sent too (it carries the commit index). Returns whether a message
    /// was sent.
    fn maybe_send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let Some(pr) = self.prs.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next_idx;
        let recent_active = pr.recent_active;
        // A full window in Replicate state still allows an empty append: if every message in
        // flight was lost, its answer (prompted by a heartbeat response) clears the window.
        let throttled = pr.state == ProgressState::Replicate && pr.inflights.full();
        let prev_index = next - 1;
        let prev_term = self.raft_log.term(prev_index);
        let ents =
            if throttled { Ok(Vec::new()) } else { self.raft_log.entries(next, self.max_msg_size) };
        if let (Ok(prev_term), Ok(ents)) = (&prev_term, &ents) {
            if ents.is_empty() && !send_if_empty {
                return false;
            }
            let bytes = ents.iter().map(Entry::encoded_len).sum();
            let count = ents.len();
            let m = Message {
                msg_type: MessageType::MsgApp,
                to,
                index: prev_index,
                log_term: *prev_term,
                entries: ents.clone(),
                commit: self.raft_log.committed,
                ..Message::default()
            };
            self.prs.progress.get_mut(&to).expect("checked above").sent_entries(count, bytes);
            self.send(m);
            return true;
        }
        // The entries the follower needs are compacted: send a snapshot instead.
        if !recent_active {
            return false;
        }
        let snapshot = match self.raft_log.snapshot() {
            Ok(s) => s,
            Err(Error::SnapshotTemporarilyUnavailable) => return false,
            Err(e) => panic!("leader {} cannot read its snapshot: {e}", self.id),
        };
        assert!(
            !snapshot.is_empty(),
            "entries before {next} are compacted but the snapshot is empty"
        );
        let sindex = snapshot.metadata.index;
        self.prs.progress.get_mut(&to).expect("checked above").become_snapshot(sindex);
        self.send(Message {
            msg_type: MessageType::MsgSnap,
            to,
            snapshot: Some(snapshot),
            ..Message::default()
        });
        true
    }

    fn send_heartbeat(&mut self, to: u64, context: Bytes) {
        // Never tell a follower to commit beyond what it is known to hold.
        let matched = self.prs.progress.get(&to).map_or(0, |p| p.matched);
        let commit = matched.min(self.raft_log.committed);
        self.send(Message {
            msg_type: MessageType::MsgHeartbeat,
            to,
            commit,
            context,
            ..Message::default()
        });
    }

    fn peers(&self) -> Vec<u64> {
        self.prs.progress.keys().copied().filter(|id| *id != self.id).collect()
    }

    /// Sends appends (possibly empty, to carry the commit index) to every peer.
    pub fn bcast_append(&mut self) {
        for id in self.peers() {
            self.send_append(id);
        }
    }

    fn bcast_heartbeat(&mut self) {
        let ctx = self.read_only.heartbeat_ctx();
        self.bcast_heartbeat_with_ctx(ctx);
    }

    fn bcast_heartbeat_with_ctx(&mut self, ctx: Bytes) {
        for id in self.peers() {
            self.send_heartbeat(id, ctx.clone());
        }
    }

    /// Advances the commit index to what a quorum has matched, if that entry is of the
    /// current term. Returns whether it advanced.
    pub fn maybe_commit(&mut self) -> bool {
        let mci = self.prs.committed();
        self.raft_log.maybe_commit(mci, self.term)
    }

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = 0;
        }
        self.leader_id = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.lead_transferee = None;
        self.prs.reset_votes();
        let last = self.raft_log.last_index();
        let (max_inflight, max_bytes) = (self.prs.max_inflight, self.prs.max_inflight_bytes);
        for (id, pr) in self.prs.progress.iter_mut() {
            let is_learner = pr.is_learner;
            *pr = Progress::new(last + 1, max_inflight, max_bytes);
            pr.is_learner = is_learner;
            if *id == self.id {
                pr.matched = last;
            }
        }
        self.pending_conf_index = 0;
        self.uncommitted_size = 0;
        self.read_only = ReadOnly::default();
        self.pending_read_index_messages.clear();
    }

    fn append_entry(&mut self, mut es: Vec<Entry>) -> bool {
        let last = self.raft_log.last_index();
        for (k, e) in es.iter_mut().enumerate() {
            e.term = self.term;
            e.index = last + 1 + k as u64;
        }
        if !self.increase_uncommitted_size(&es) {
            return false;
        }
        let last = self.raft_log.append(&es);
        if let Some(pr) = self.prs.progress.get_mut(&self.id) {
            pr.maybe_update(last);
        }
        self.maybe_commit();
        true
    }

    fn increase_uncommitted_size(&mut self, es: &[Entry]) -> bool {
        let s = payload_size(es);
        // An empty or first batch is always accepted so a leader can make progress even with
        // a limit smaller than one entry.
        if self.uncommitted_size > 0
            && s > 0
            && self.uncommitted_size + s > self.max_uncommitted_size
        {
            return false;
        }
        self.uncommitted_size += s;
        true
    }

    /// Called with the entries handed out as committed, to release their uncommitted budget.
    pub fn reduce_uncommitted_size(&mut self, es: &[Entry]) {
        self.uncommitted_size = self.uncommitted_size.saturating_sub(payload_size(es));
    }

    // ---- roles ----------------------------------------------------------------------------

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        match self.state {
            StateRole::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    fn past_election_timeout(&self) -> bool {
        self.election_elapsed >= self.randomized_election_timeout
    }

    fn reset_randomized_election_timeout(&mut self) {
        let spread = self.election_timeout as u64;
        self.randomized_election_timeout = self.election_timeout + self.rng.below(spread) as usize;
        debug_assert!(
            self.randomized_election_timeout >= self.election_timeout
                && self.randomized_election_timeout < 2 * self.election_timeout
        );
    }

    /// The current randomized election timeout, in ticks.
    pub fn randomized_election_timeout(&self) -> usize {
        self.randomized_election_timeout
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.past_election_timeout() {
            self.election_elapsed = 0;
            let _ = self.step(Message::new(MessageType::MsgHup, self.id, 0));
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout {
            self.election_elapsed = 0;
            if self.check_quorum {
                let _ = self.step(Message::new(MessageType::MsgCheckQuorum, self.id, 0));
            }
            // A transfer that did not finish within an election timeout is abandoned.
            if self.state == StateRole::Leader && self.lead_transferee.is_some() {
                self.lead_transferee = None;
                if self.step_down_on_removal && !self.is_voter() {
                    // A removed leader keeps trying to hand off to another voter.
                    self.start_hand_off();
                }
            }
        }
        if self.state != StateRole::Leader {
            return;
        }
        if self.heartbeat_elapsed >= self.heartbeat_timeout {
            self.heartbeat_elapsed = 0;
            let _ = self.step(Message::new(MessageType::MsgBeat, self.id, 0));
        }
    }

    /// Becomes a follower of `leader_id` (0: unknown) in `term`.
    pub fn become_follower(&mut self, term: u64, leader_id: u64) {
        #[cfg(feature = "tracing")]
        if self.state != StateRole::Follower || term != self.term {
            tracing::info!(id = self.id, term, leader = leader_id, "became follower");
        }
        self.reset(term);
        self.leader_id = leader_id;
        self.state = StateRole::Follower;
    }

    fn become_candidate(&mut self) {
        assert_ne!(
            self.state,
            StateRole::Leader,
            "invalid transition [leader -> candidate] at term {}",
            self.term
        );
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.state = StateRole::Candidate;
        #[cfg(feature = "tracing")]
        tracing::info!(id = self.id, term, "became candidate");
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.state,
            StateRole::Leader,
            "invalid transition [leader -> pre-candidate] at term {}",
            self.term
        );
        // Neither the term nor the vote changes: a pre-campaign must not disturb anyone.
        self.prs.reset_votes();
        self.state = StateRole::PreCandidate;
        self.leader_id = 0;
        #[cfg(feature = "tracing")]
        tracing::info!(id = self.id, term = self.term, "became pre-candidate");
    }

    fn become_leader(&mut self) {
        assert_ne!(
            self.state,
            StateRole::Follower,
            "invalid transition [follower -> leader] at term {}",
            self.term
        );
        let term = self.term;
        self.reset(term);
        self.leader_id = self.id;
        self.state = StateRole::Leader;
        #[cfg(feature = "tracing")]
        tracing::info!(id = self.id, term, "became leader");
        let last = self.raft_log.last_index();
        if let Some(pr) = self.prs.progress.get_mut(&self.id) {
            // The leader's own log trivially matches; it never waits on itself.
            pr.become_replicate();
            pr.recent_active = true;
        }
        // Conservatively treat every entry of earlier terms as a possibly pending membership
        // change, so no new change is accepted until they are applied.
        self.pending_conf_index = last;
        // The no-op lets the leader commit (by counting) an entry of its own term, which
        // commits every earlier entry with it.
        assert!(
            self.append_entry(vec![Entry::default()]),
            "the empty entry of a new leader is never dropped"
        );
    }

    fn hup(&mut self, t: CampaignType) {
        if self.state == StateRole::Leader {
            return;
        }
        if let Some(_rep) = self.repairing {
            // An election timeout, a campaign request or a transfer: a node repairing its log
            // may miss committed entries it acknowledged, so it must not lead.
            #[cfg(feature = "tracing")]
            tracing::debug!(
                id = self.id,
                campaign = ?t,
                repair_index = _rep.index,
                "repairing: not campaigning"
            );
            return;
        }
        if !self.promotable() {
            return;
        }
        // A membership change committed but not yet applied could change who votes; wait.
        if self.raft_log.committed > self.raft_log.applied {
            let lo = (self.raft_log.applied + 1).max(self.raft_log.first_index());
            if let Ok(es) = self.raft_log.slice(lo, self.raft_log.committed + 1, u64::MAX)
                && es.iter().any(|e| e.entry_type != EntryType::Normal)
            {
                return;
            }
        }
        self.campaign(t);
    }

    fn campaign(&mut self, t: CampaignType) {
        assert!(
            self.repairing.is_none(),
            "node {} campaigns while repairing its log: {:?}",
            self.id,
            self.repairing
        );
        if !self.promotable() {
            return;
        }
        let (vote_msg, term) = if t == CampaignType::PreElection {
            self.become_pre_candidate();
            // A pre-vote asks about the term this node would campaign in.
            (MessageType::MsgPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::MsgVote, self.term)
        };
        if self.poll(self.id, true) == VoteResult::Won {
            // A single voter wins at once.
            if t == CampaignType::PreElection {
                self.campaign(CampaignType::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let context = if t == CampaignType::Transfer {
            Bytes::from_static(CAMPAIGN_TRANSFER)
        } else {
            Bytes::new()
        };
        let (last_index, last_term) = (self.raft_log.last_index(), self.raft_log.last_term());
        for id in self.prs.conf.voters.ids() {
            if id == self.id {
                continue;
            }
            self.send(Message {
                msg_type: vote_msg,
                to: id,
                term,
                index: last_index,
                log_term: last_term,
                context: context.clone(),
                ..Message::default()
            });
        }
    }

    fn poll(&mut self, id: u64, granted: bool) -> VoteResult {
        self.prs.record_vote(id, granted);
        self.prs.tally_votes().2
    }

    // ---- step -----------------------------------------------------------------------------

    /// Feeds one message to the state machine.
    pub fn step(&mut self, m: Message) -> Result<()> {
        if matches!(m.msg_type, MessageType::MsgVoteResp | MessageType::MsgPreVoteResp) {
            // Whatever its term, the answer says which entry the voter knows committed.
            self.learn_commit(m.commit, m.log_term);
        }
        if m.term == 0 {
            // Local message or a forwarded proposal / read.
        } else if m.term > self.term {
            if matches!(m.msg_type, MessageType::MsgVote | MessageType::MsgPreVote) {
                let force = m.context.as_ref() == CAMPAIGN_TRANSFER;
                let in_lease = self.check_quorum
                    && self.leader_id != 0
                    && self.election_elapsed < self.election_timeout;
                if !force && in_lease {
                    #[cfg(feature = "tracing")]
                    tracing::info!(
                        id = self.id,
                        term = self.term,
                        leader = self.leader_id,
                        candidate = m.from,
                        candidate_term = m.term,
                        "{:?} ignored: the leader's lease has not run out",
                        m.msg_type
                    );
                    // While this node hears from a leader it does not help depose it: this
                    // keeps a partitioned node that rejoins from disrupting the cluster.
                    return Ok(());
                }
            }
            match m.msg_type {
                MessageType::MsgPreVote => {}
                MessageType::MsgPreVoteResp if !m.reject => {
                    // The term is the one we would campaign in; it is raised only if we win.
                }
                MessageType::MsgApp | MessageType::MsgHeartbeat | MessageType::MsgSnap => {
                    self.become_follower(m.term, m.from);
                }
                _ => self.become_follower(m.term, 0),
            }
        } else if m.term < self.term {
            if matches!(m.msg_type, MessageType::MsgHeartbeat | MessageType::MsgApp) {
                // Tell a stale leader about the newer term, as the paper's rule has it. etcd
                // does this only with check-quorum or pre-vote, counting otherwise on this
                // node's vote requests to reach the leader; but a node whose (stale)
                // configuration does not include the leader never sends it one, and a leader
                // that cannot reach a node it needs would then wait forever. Removed nodes
                // are not disturbed by this: a leader sends them nothing.
                self.send(Message::new(MessageType::MsgAppResp, 0, m.from));
            } else if m.msg_type == MessageType::MsgPreVote {
                let (commit, commit_term) = self.commit_marker();
                self.send(Message {
                    msg_type: MessageType::MsgPreVoteResp,
                    to: m.from,
                    term: self.term,
                    reject: true,
                    commit,
                    log_term: commit_term,
                    ..Message::default()
                });
            }
            return Ok(());
        }

        match m.msg_type {
            MessageType::MsgHup => {
                if self.pre_vote {
                    self.hup(CampaignType::PreElection);
                } else {
                    self.hup(CampaignType::Election);
                }
                Ok(())
            }
            MessageType::MsgVote | MessageType::MsgPreVote => {
                let can_vote = self.vote == m.from
                    || (self.vote == 0 && self.leader_id == 0)
                    || (m.msg_type == MessageType::MsgPreVote && m.term > self.term);
                let resp = m.msg_type.vote_response();
                // A repairing node refuses every vote and pre-vote: its log may lack entries
                // it acknowledged, so "up to date" compared with it proves nothing. The term
                // was handled above as for any node: a higher term is adopted, without a vote.
                let repairing = self.repairing.is_some();
                let granted =
                    can_vote && !repairing && self.raft_log.is_up_to_date(m.index, m.log_term);
                #[cfg(feature = "tracing")]
                tracing::info!(
                    id = self.id,
                    term = self.term,
                    vote = self.vote,
                    last_index = self.raft_log.last_index(),
                    last_term = self.raft_log.last_term(),
                    candidate = m.from,
                    candidate_term = m.term,
                    candidate_index = m.index,
                    candidate_log_term = m.log_term,
                    granted,
                    "{:?}",
                    m.msg_type
                );
                if granted {
                    // Answer with the request's term: a pre-vote grant is for a future term
                    // that this node has not entered.
                    let (commit, commit_term) = self.commit_marker();
                    self.send(Message {
                        msg_type: resp,
                        to: m.from,
                        term: m.term,
                        commit,
                        log_term: commit_term,
                        ..Message::default()
                    });
                    if m.msg_type == MessageType::MsgVote {
                        self.election_elapsed = 0;
                        self.vote = m.from;
                    }
                } else if self.term == 0 {
                    // Only a pre-vote reaches here at term 0 (a vote's term was adopted above),
                    // refused by a repairing node (a healthy one at term 0 has an empty log,
                    // which any candidate's is up to date with): a response needs a term, and
                    // this node has none to give. The candidate's round goes on without it, as
                    // if the message was lost.
                    debug_assert_eq!(m.msg_type, MessageType::MsgPreVote);
                } else {
                    #[cfg(feature = "tracing")]
                    if repairing {
                        tracing::debug!(
                            id = self.id,
                            candidate = m.from,
                            term = m.term,
                            "repairing: vote refused"
                        );
                    }
                    let (commit, commit_term) = self.commit_marker();
                    self.send(Message {
                        msg_type: resp,
                        to: m.from,
                        term: self.term,
                        reject: true,
                        commit,
                        log_term: commit_term,
                        ..Message::default()
                    });
                }
                Ok(())
            }
            _ => match self.state {
                StateRole::Leader => self.step_leader(m),
                StateRole::Candidate | StateRole::PreCandidate => self.step_candidate(m),
                StateRole::Follower => self.step_follower(m),
            },
        }
    }

    /// The commit index and the term of the entry there, which vote responses carry.
    fn commit_marker(&self) -> (u64, u64) {
        let commit = self.raft_log.committed;
        // The entry at the commit index may be compacted only down to the dummy, whose term
        // is kept; an unreadable term (0) makes the marker useless, never wrong.
        (commit, self.raft_log.term(commit).unwrap_or(0))
    }

    /// Adopts another node's commit index if this log holds the same entry there.
    ///
    /// Beyond etcd-raft: the configuration in force is the last one *applied*, so a voter
    /// that has not learned that a membership change is committed still counts the old
    /// members. If they left and hold a longer log (entries the old leader appended after the
    /// change), they refuse their vote, and no one could ever be elected. An entry with the
    /// same index and term is the same entry (log matching), and a committed entry stays
    /// committed, so learning the commit index from any node is safe.
    fn learn_commit(&mut self, commit: u64, term: u64) {
        if commit > self.raft_log.committed && term != 0 && self.raft_log.match_term(commit, term) {
            self.raft_log.commit_to(commit);
        }
    }

    fn committed_entry_in_current_term(&self) -> bool {
        self.raft_log.term(self.raft_log.committed).is_ok_and(|t| t == self.term)
    }

    fn response_to_read_index_req(&mut self, req: Message, read_index: u64) -> Option<Message> {
        if req.from == 0 || req.from == self.id {
            self.read_states
                .push(ReadState { index: read_index, request_ctx: req.entries[0].data.clone() });
            return None;
        }
        Some(Message {
            msg_type: MessageType::MsgReadIndexResp,
            to: req.from,
            index: read_index,
            entries: req.entries,
            ..Message::default()
        })
    }

    fn send_read_index_response(&mut self, m: Message) {
        let committed = self.raft_log.committed;
        match self.read_only_option {
            ReadOnlyOption::Safe => {
                if !self.read_only.add_request(committed, m) {
                    return;
                }
                // A round numbered after this read: only its acknowledgements confirm it.
                let ctx = self.read_only.heartbeat_ctx();
                self.read_only.recv_ack(self.id, &ctx);
                self.bcast_heartbeat_with_ctx(ctx);
            }
            ReadOnlyOption::LeaseBased => {
                if let Some(resp) = self.response_to_read_index_req(m, committed) {
                    self.send(resp);
                }
            }
        }
    }

    fn release_pending_read_index_messages(&mut self) {
        if !self.committed_entry_in_current_term() {
            return;
        }
        for m in std::mem::take(&mut self.pending_read_index_messages) {
            self.send_read_index_response(m);
        }
    }

    fn step_leader(&mut self, mut m: Message) -> Result<()> {
        match m.msg_type {
            MessageType::MsgBeat => {
                self.bcast_heartbeat();
                return Ok(());
            }
            MessageType::MsgCheckQuorum => {
                if !self.prs.quorum_active() {
                    let term = self.term;
                    self.become_follower(term, 0);
                }
                // Start a new round: every peer must be heard from again.
                let id = self.id;
                for (pid, pr) in self.prs.progress.iter_mut() {
                    if *pid != id {
                        pr.recent_active = false;
                    }
                }
                return Ok(());
            }
            MessageType::MsgProp => {
                if m.entries.is_empty() {
                    return Err(Error::InvalidConfig("proposal without entries".into()));
                }
                if !self.prs.progress.contains_key(&self.id) {
                    // Removed from the configuration: it cannot commit anything.
                    return Err(Error::ProposalDropped);
                }
                if self.lead_transferee.is_some() {
                    return Err(Error::ProposalDropped);
                }
                let last = self.raft_log.last_index();
                for (k, e) in m.entries.iter_mut().enumerate() {
                    if e.entry_type == EntryType::Normal {
                        continue;
                    }
                    let Ok(cc) = conf_change_of(e) else {
                        return Err(Error::ProposalDropped);
                    };
                    let already_pending = self.pending_conf_index > self.raft_log.applied;
                    let already_joint = self.prs.conf.voters.is_joint();
                    let wants_leave_joint = cc.leave_joint();
                    let refused = already_pending
                        || (already_joint && !wants_leave_joint)
                        || (!already_joint && wants_leave_joint);
                    if refused {
                        // Keep the position (other entries of the batch stay valid) but drop
                        // the change.
                        *e = Entry::default();
                    } else {
                        self.pending_conf_index = last + k as u64 + 1;
                    }
                }
                if !self.append_entry(m.entries) {
                    return Err(Error::ProposalDropped);
                }
                self.bcast_append();
                return Ok(());
            }
            MessageType::MsgReadIndex => {
                // The only voter needs no confirmation. That voter must be this node: a
                // leader removed from a one-voter configuration may still believe it leads
                // while that voter has been elected and has committed more.
                if self.prs.is_singleton() && self.prs.is_voter(self.id) {
                    let committed = self.raft_log.committed;
                    if let Some(resp) = self.response_to_read_index_req(m, committed) {
                        self.send(resp);
                    }
                    return Ok(());
                }
                // Until an entry of this term commits, the leader does not know the true
                // commit index; hold the read.
                if !self.committed_entry_in_current_term() {
                    if self.pending_read_index_messages.len() < MAX_PENDING_READ_INDEX_MESSAGES {
                        self.pending_read_index_messages.push(m);
                    }
                    return Ok(());
                }
                self.send_read_index_response(m);
                return Ok(());
            }
            _ => {}
        }

        if !self.prs.progress.contains_key(&m.from) {
            return Ok(());
        }
        match m.msg_type {
            MessageType::MsgAppResp => self.handle_append_response(&m),
            MessageType::MsgHeartbeatResp => self.handle_heartbeat_response(&m),
            MessageType::MsgSnapStatus => {
                let pr = self.prs.progress.get_mut(&m.from).expect("checked");
                if pr.state != ProgressState::Snapshot {
                    return Ok(());
                }
                if m.reject {
                    pr.pending_snapshot = 0;
                }
                pr.become_probe();
                // Wait for a heartbeat response before probing: the snapshot may still be
                // being applied.
                pr.msg_app_flow_paused = true;
            }
            MessageType::MsgUnreachable => {
                let pr = self.prs.progress.get_mut(&m.from).expect("checked");
                // Optimistic pipelining assumed delivery; fall back to probing.
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
            }
            MessageType::MsgTransferLeader => {
                let transferee = m.from;
                if self.prs.progress[&transferee].is_learner {
                    return Ok(());
                }
                if let Some(last) = self.lead_transferee {
                    if last == transferee {
                        return Ok(());
                    }
                    self.lead_transferee = None;
                }
                if transferee == self.id {
                    return Ok(());
                }
                // The transfer must finish within one election timeout.
                self.election_elapsed = 0;
                self.lead_transferee = Some(transferee);
                if self.prs.progress[&transferee].matched == self.raft_log.last_index() {
                    self.send_timeout_now(transferee);
                } else {
                    self.send_append(transferee);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn send_timeout_now(&mut self, to: u64) {
        self.send(Message::new(MessageType::MsgTimeoutNow, 0, to));
    }

    fn handle_append_response(&mut self, m: &Message) {
        let last_index = self.raft_log.last_index();
        let first_index = self.raft_log.first_index();
        let from = m.from;
        {
            let pr = self.prs.progress.get_mut(&from).expect("checked");
            pr.recent_active = true;
        }
        if m.reject {
            // The follower's hint (index, term) is the last entry that may match. Skip every
            // entry of ours whose term is above the hint's term: they cannot match either,
            // so one round trip eliminates a whole term.
            let mut next_probe = m.reject_hint;
            if m.log_term > 0 {
                next_probe = self
                    .raft_log
                    .find_conflict_by_term(m.reject_hint.min(last_index), m.log_term)
                    .0;
            }
            let pr = self.prs.progress.get_mut(&from).expect("checked");
            let changed = if m.context.as_ref() == REPAIRING_LOG {
                pr.lost_entries(m.index, next_probe)
            } else {
                pr.maybe_decr_to(m.index, next_probe)
            };
            if changed {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from);
            }
            return;
        }
        let pr = self.prs.progress.get_mut(&from).expect("checked");
        let old_paused = pr.is_paused();
        // A probe answered at exactly the match index also counts: the follower is caught up
        // (the empty probe a heartbeat response prompts), and without this it would stay in
        // Probe, costing a round trip per heartbeat. Not in Snapshot state: there an answer
        // at the match index says nothing about the pending snapshot.
        let progressed =
            pr.maybe_update(m.index) || (pr.matched == m.index && pr.state == ProgressState::Probe);
        if !progressed {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched + 1 >= first_index => {
                // The follower caught up through the snapshot (or entries it already had).
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_le(m.index),
        }
        if self.maybe_commit() {
            self.release_pending_read_index_messages();
            self.bcast_append();
        } else if old_paused {
            // The follower was waiting; send it what it missed (and our commit index).
            self.send_append(from);
        }
        // Fill the pipeline; bounded by the inflight window.
        for _ in 0..self.prs.max_inflight {
            if !self.maybe_send_append(from, false) {
                break;
            }
        }
        if Some(from) == self.lead_transferee
            && self.prs.progress[&from].matched == self.raft_log.last_index()
        {
            self.send_timeout_now(from);
            self.finish_hand_off();
        }
    }

    /// Whether this node is a voter (in either half) of its configuration.
    fn is_voter(&self) -> bool {
        self.prs.progress.get(&self.id).is_some_and(|p| !p.is_learner) && self.prs.is_voter(self.id)
    }

    /// A leader removed from the voters hands leadership to the most up-to-date voter: it
    /// keeps replicating (and sending its commit index) until that voter holds its whole log,
    /// then tells it to campaign and steps down. Stepping down at once could leave the
    /// remaining voters unable to elect anyone: until they learn that the change is
    /// committed they still count this node, and a voter missing the last entries gets no
    /// votes from the nodes that have them.
    fn start_hand_off(&mut self) {
        let best = self
            .prs
            .progress
            .iter()
            .filter(|(id, _)| **id != self.id && self.prs.conf.voters.contains(**id))
            // Prefer a voter that stays after a joint configuration is left.
            .max_by_key(|(id, pr)| {
                let stays = self.prs.conf.voters.incoming.contains(**id);
                (stays, pr.matched, std::cmp::Reverse(**id))
            })
            .map(|(id, pr)| (*id, pr.matched));
        let Some((to, matched)) = best else {
            let term = self.term;
            self.become_follower(term, 0);
            return;
        };
        self.election_elapsed = 0;
        self.lead_transferee = Some(to);
        if matched == self.raft_log.last_index() {
            self.send_timeout_now(to);
            self.finish_hand_off();
        } else {
            self.send_append(to);
        }
    }

    fn finish_hand_off(&mut self) {
        if self.step_down_on_removal && !self.is_voter() && self.state == StateRole::Leader {
            let term = self.term;
            self.become_follower(term, 0);
        }
    }

    fn handle_heartbeat_response(&mut self, m: &Message) {
        let last_index = self.raft_log.last_index();
        let pr = self.prs.progress.get_mut(&m.from).expect("checked");
        pr.recent_active = true;
        pr.msg_app_flow_paused = false;
        if pr.matched < last_index || pr.state == ProgressState::Probe {
            self.send_append(m.from);
        }
        if self.read_only_option != ReadOnlyOption::Safe || m.context.is_empty() {
            return;
        }
        self.read_only.recv_ack(m.from, &m.context);
        for rs in self.read_only.maybe_advance(&self.prs.conf.voters) {
            if let Some(resp) = self.response_to_read_index_req(rs.req, rs.index) {
                self.send(resp);
            }
        }
    }

    fn step_candidate(&mut self, m: Message) -> Result<()> {
        let my_resp = if self.state == StateRole::PreCandidate {
            MessageType::MsgPreVoteResp
        } else {
            MessageType::MsgVoteResp
        };
        match m.msg_type {
            MessageType::MsgProp => return Err(Error::ProposalDropped),
            MessageType::MsgApp => {
                self.become_follower(m.term, m.from);
                self.handle_append_entries(&m);
            }
            MessageType::MsgHeartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::MsgSnap => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            t if t == my_resp => match self.poll(m.from, !m.reject) {
                VoteResult::Won => {
                    if self.state == StateRole::PreCandidate {
                        self.campaign(CampaignType::Election);
                    } else {
                        self.become_leader();
                        self.bcast_append();
                    }
                }
                VoteResult::Lost => {
                    // A pre-candidate's rejection may carry a newer term than ours; the
                    // term was handled above, so stay in ours.
                    let term = self.term;
                    self.become_follower(term, 0);
                }
                VoteResult::Pending => {}
            },
            _ => {}
        }
        Ok(())
    }

    fn step_follower(&mut self, mut m: Message) -> Result<()> {
        match m.msg_type {
            MessageType::MsgProp => {
                if self.leader_id == 0 || self.disable_proposal_forwarding {
                    return Err(Error::ProposalDropped);
                }
                m.to = self.leader_id;
                self.send(m);
            }
            MessageType::MsgApp => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_append_entries(&m);
            }
            MessageType::MsgHeartbeat => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_heartbeat(m);
            }
            MessageType::MsgSnap => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m);
            }
            MessageType::MsgTransferLeader | MessageType::MsgReadIndex => {
                if self.leader_id == 0 {
                    return Ok(());
                }
                m.to = self.leader_id;
                self.send(m);
            }
            MessageType::MsgTimeoutNow => {
                // A transfer never uses pre-vote: the leader asked, so no partition is
                // being recovered from.
                self.hup(CampaignType::Transfer);
            }
            MessageType::MsgReadIndexResp if m.entries.len() == 1 => {
                self.read_states
                    .push(ReadState { index: m.index, request_ctx: m.entries[0].data.clone() });
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append_entries(&mut self, m: &Message) {
        if m.index < self.raft_log.committed {
            // Everything up to our commit index matches the leader's log already.
            let committed = self.raft_log.committed;
            self.send(Message {
                msg_type: MessageType::MsgAppResp,
                to: m.from,
                index: committed,
                ..Message::default()
            });
            return;
        }
        if let Some(last_new) =
            self.raft_log.maybe_append(m.index, m.log_term, m.commit, &m.entries)
        {
            if self.repairing.is_some()
                && m.commit > 0
                && self.raft_log.committed == m.commit
                && self.raft_log.term(m.commit).is_ok_and(|t| t == self.term)
            {
                // This log now matches the leader's through the leader's commit index, at an
                // entry of the leader's term: once persisted, that ends the repair.
                self.repair_commit = Some((m.commit, self.term));
            }
            self.send(Message {
                msg_type: MessageType::MsgAppResp,
                to: m.from,
                index: last_new,
                ..Message::default()
            });
            return;
        }
        // Our log does not contain (m.index, m.log_term). Find the last entry that could
        // still match: the largest index at or below both m.index and our last index whose
        // term is at most m.log_term. Entries above it cannot match since the leader's terms
        // there are all at least m.log_term and ours are greater or missing.
        let hint = m.index.min(self.raft_log.last_index());
        let (hint_index, hint_term) = self.raft_log.find_conflict_by_term(hint, m.log_term);
        // A repairing node may reject an entry it had acknowledged: the leader must not take
        // the rejection for a stale one, or it would resend the same append forever.
        let context =
            if self.repairing.is_some() { Bytes::from_static(REPAIRING_LOG) } else { Bytes::new() };
        self.send(Message {
            msg_type: MessageType::MsgAppResp,
            to: m.from,
            index: m.index,
            reject: true,
            reject_hint: hint_index,
            log_term: hint_term,
            context,
            ..Message::default()
        });
    }

    fn handle_heartbeat(&mut self, m: Message) {
        let mut commit = m.commit;
        if self.repairing.is_some() {
            // The leader sends `min(match, commit)`, and its match index for this node may
            // count entries the damage took. The entries this log still holds are what
            // survived of those it acknowledged to this leader (the term never went back, so
            // no other leader came between) and entries this leader sent since: they match
            // its log, and committing up to the last of them is safe. Elsewhere a commit index
            // beyond the log is a broken invariant.
            commit = commit.min(self.raft_log.last_index());
        }
        self.raft_log.commit_to(commit);
        self.send(Message {
            msg_type: MessageType::MsgHeartbeatResp,
            to: m.from,
            context: m.context,
            ..Message::default()
        });
    }

    fn handle_snapshot(&mut self, m: Message) {
        let Some(snapshot) = m.snapshot else {
            return;
        };
        let index = if self.restore(snapshot) {
            self.raft_log.last_index()
        } else {
            self.raft_log.committed
        };
        self.send(Message {
            msg_type: MessageType::MsgAppResp,
            to: m.from,
            index,
            ..Message::default()
        });
    }

    /// Restores the log and membership from `s` if it is newer than what this node has
    /// committed. Returns false for a stale snapshot (or one whose entries we already hold,
    /// in which case only the commit index moves), and for one whose membership excludes
    /// this node or is not a valid configuration; those change nothing else.
    pub fn restore(&mut self, s: Snapshot) -> bool {
        let (sindex, sterm) = (s.metadata.index, s.metadata.term);
        if sindex <= self.raft_log.committed {
            return false;
        }
        if self.state != StateRole::Follower {
            // Only a leader of a higher term sends snapshots; be safe if one arrives anyway.
            let term = self.term + 1;
            self.become_follower(term, 0);
            return false;
        }
        let cs = &s.metadata.conf_state;
        let found = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|id| *id == self.id);
        if !found {
            // Much of the core assumes this node has a progress entry.
            return false;
        }
        if self.raft_log.match_term(sindex, sterm) {
            // We already have the snapshot's last entry: just commit up to it.
            self.raft_log.commit_to(sindex);
            return false;
        }
        // Build the membership before touching the log: a snapshot whose membership no valid
        // configuration matches is refused (it came from a peer; never panic on it). The log
        // will end at the snapshot's index.
        let fresh = ProgressTracker::new(self.prs.max_inflight, self.prs.max_inflight_bytes);
        let Ok((cfg, prs)) = confchange::restore(&fresh, sindex, cs) else {
            return false;
        };
        let cs = cs.clone();
        self.raft_log.restore(s);
        assert_eq!(self.raft_log.last_index(), sindex, "a restored log ends at the snapshot");
        self.prs = fresh;
        let got = self.switch_to_config(cfg, prs);
        debug_assert!(confchange::equivalent(&got, &cs), "{got:?} != {cs:?}");
        true
    }

    // ---- membership -----------------------------------------------------------------------

    /// Applies a committed membership change and returns the resulting membership. An
    /// invalid change (every node refuses it identically) leaves the membership unchanged.
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> ConfState {
        let changer = Changer { tracker: &self.prs, last_index: self.raft_log.last_index() };
        let result = if cc.leave_joint() {
            changer.leave_joint()
        } else if let Some(auto_leave) = cc.enter_joint() {
            changer.enter_joint(auto_leave, &cc.changes)
        } else {
            changer.simple(&cc.changes)
        };
        match result {
            Ok((cfg, prs)) => self.switch_to_config(cfg, prs),
            Err(_) => self.prs.conf_state(),
        }
    }

    fn switch_to_config(
        &mut self,
        cfg: Configuration,
        prs: std::collections::BTreeMap<u64, Progress>,
    ) -> ConfState {
        self.prs.conf = cfg;
        self.prs.progress = prs;
        self.prs.check_invariants();
        let cs = self.prs.conf_state();
        let is_member_voter = self.prs.progress.get(&self.id).is_some_and(|p| !p.is_learner);
        if !is_member_voter && self.state == StateRole::Leader {
            // Removed or demoted. Without step-down it keeps replicating (without counting
            // itself) until the application stops it.
            if self.step_down_on_removal {
                // Tell every peer the commit index, then hand off (see `start_hand_off`).
                self.bcast_append();
                self.bcast_heartbeat();
                self.start_hand_off();
            }
            return cs;
        }
        if self.state != StateRole::Leader || cs.voters.is_empty() {
            return cs;
        }
        if self.maybe_commit() {
            // A smaller quorum may already have everything.
            self.bcast_append();
        } else {
            // Probe new peers right away rather than at the next heartbeat.
            for id in self.peers() {
                self.maybe_send_append(id, false);
            }
        }
        if let Some(t) = self.lead_transferee
            && !self.prs.conf.voters.contains(t)
        {
            self.lead_transferee = None;
        }
        cs
    }

    /// Records that the application applied up to `index`; a leader in a joint
    /// configuration with auto-leave then proposes leaving it.
    pub fn applied_to(&mut self, index: u64) {
        let new_applied = index.max(self.raft_log.applied);
        self.raft_log.applied_to(new_applied);
        if self.prs.conf.auto_leave
            && new_applied >= self.pending_conf_index
            && self.state == StateRole::Leader
        {
            let data = Bytes::from(ConfChangeV2::default().encode());
            let m = Message {
                msg_type: MessageType::MsgProp,
                from: self.id,
                entries: vec![Entry {
                    entry_type: EntryType::ConfChangeV2,
                    data,
                    ..Entry::default()
                }],
                ..Message::default()
            };
            // May be dropped during a leadership transfer; it is retried at the next apply.
            let _ = self.step(m);
        }
    }

    /// Forgets the leader (follower only, and not with lease-based reads, whose safety
    /// depends on followers not voting while they believe in a leader).
    pub fn forget_leader(&mut self) {
        if self.state == StateRole::Follower && self.read_only_option != ReadOnlyOption::LeaseBased
        {
            self.leader_id = 0;
        }
    }

    /// Reads pending on the leader.
    pub fn pending_read_count(&self) -> usize {
        self.read_only.pending_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use crate::types::SnapshotMetadata;

    /// A node over a storage holding entries of the given terms and membership {1, 2, 3}.
    fn node(
        id: u64,
        terms: &[u64],
        term: u64,
        cfg: impl FnOnce(&mut Config),
    ) -> Raft<MemoryStorage> {
        node_of(id, &[1, 2, 3], terms, term, cfg)
    }

    /// A node over a storage holding entries of the given terms and membership `voters`.
    fn node_of(
        id: u64,
        voters: &[u64],
        terms: &[u64],
        term: u64,
        cfg: impl FnOnce(&mut Config),
    ) -> Raft<MemoryStorage> {
        let s = MemoryStorage::new();
        s.apply_snapshot(Snapshot {
            metadata: SnapshotMetadata {
                conf_state: ConfState { voters: voters.to_vec(), ..ConfState::default() },
                ..SnapshotMetadata::default()
            },
            data: Bytes::new(),
        })
        .unwrap();
        let es: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(k, t)| Entry::new(k as u64 + 1, *t, Bytes::new()))
            .collect();
        s.append(&es).unwrap();
        s.set_hard_state(HardState { term, vote: 0, commit: 0 }).unwrap();
        let mut c = Config::new(id);
        cfg(&mut c);
        Raft::new(&c, s).unwrap()
    }

    fn msg(t: MessageType, from: u64, to: u64, term: u64) -> Message {
        Message { msg_type: t, from, to, term, ..Message::default() }
    }

    fn take(r: &mut Raft<MemoryStorage>) -> Vec<Message> {
        std::mem::take(&mut r.msgs)
    }

    #[test]
    fn votes_go_only_to_candidates_at_least_as_up_to_date() {
        let mut r = node(1, &[1, 2], 2, |_| {});
        // Candidate 2 with last (1, term 2) is behind our (2, term 2).
        let mut m = msg(MessageType::MsgVote, 2, 1, 3);
        m.index = 1;
        m.log_term = 2;
        r.step(m).unwrap();
        let out = take(&mut r);
        assert!(out[0].reject, "a shorter log of the same term is rejected");
        assert_eq!(r.vote, 0);
        // Candidate 3 with a higher last term wins the vote even with a shorter log.
        let mut m = msg(MessageType::MsgVote, 3, 1, 3);
        m.index = 1;
        m.log_term = 3;
        r.step(m).unwrap();
        let out = take(&mut r);
        assert!(!out[0].reject);
        assert_eq!(r.vote, 3);
        // And not to anyone else in the same term.
        let mut m = msg(MessageType::MsgVote, 2, 1, 3);
        m.index = 10;
        m.log_term = 3;
        r.step(m).unwrap();
        assert!(take(&mut r)[0].reject, "one vote per term");
    }

    #[test]
    fn a_pre_vote_changes_neither_term_nor_vote() {
        let mut r = node(1, &[1], 1, |c| c.pre_vote = true);
        let mut m = msg(MessageType::MsgPreVote, 2, 1, 5);
        m.index = 1;
        m.log_term = 1;
        r.step(m).unwrap();
        let out = take(&mut r);
        assert_eq!(out[0].msg_type, MessageType::MsgPreVoteResp);
        assert!(!out[0].reject);
        assert_eq!(out[0].term, 5, "the grant carries the future term");
        assert_eq!((r.term, r.vote), (1, 0));

        // Its own pre-campaign does not raise its term either.
        r.step(msg(MessageType::MsgHup, 0, 0, 0)).unwrap();
        assert_eq!(r.state, StateRole::PreCandidate);
        assert_eq!(r.term, 1);
        let out = take(&mut r);
        assert!(out.iter().all(|m| m.msg_type == MessageType::MsgPreVote && m.term == 2));
    }

    #[test]
    fn a_rejected_append_carries_a_term_skipping_hint() {
        // Follower log terms: 1 1 2 2 2 2; the leader probes at (6, term 4).
        let mut r = node(2, &[1, 1, 2, 2, 2, 2], 4, |_| {});
        let mut m = msg(MessageType::MsgApp, 1, 2, 4);
        m.index = 6;
        m.log_term = 4;
        r.step(m).unwrap();
        let out = take(&mut r);
        assert!(out[0].reject);
        assert_eq!(out[0].index, 6);
        assert_eq!(
            (out[0].reject_hint, out[0].log_term),
            (6, 2),
            "the last entry with a term at most 4"
        );
        // A probe past the follower's end gets a hint at its last entry.
        let mut m = msg(MessageType::MsgApp, 1, 2, 4);
        m.index = 9;
        m.log_term = 1;
        r.step(m).unwrap();
        let out = take(&mut r);
        assert_eq!((out[0].reject_hint, out[0].log_term), (2, 1));
    }

    #[test]
    fn a_stale_leader_learns_the_new_term_from_its_followers() {
        let mut r = node(2, &[1], 5, |c| c.check_quorum = true);
        r.step(msg(MessageType::MsgHeartbeat, 1, 2, 3)).unwrap();
        let out = take(&mut r);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].msg_type, MessageType::MsgAppResp);
        assert_eq!(out[0].term, 5, "the answer tells the old leader about term 5");
        // Also without them (unlike etcd): a node with a stale configuration may never send
        // the old leader a vote request that would tell it.
        let mut r = node(2, &[1], 5, |_| {});
        r.step(msg(MessageType::MsgApp, 1, 2, 3)).unwrap();
        let out = take(&mut r);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].msg_type, out[0].term), (MessageType::MsgAppResp, 5));
    }

    #[test]
    fn a_leader_commits_only_entries_of_its_term_by_counting() {
        let mut r = node(1, &[1, 1], 1, |_| {});
        r.step(msg(MessageType::MsgHup, 0, 0, 0)).unwrap();
        let mut grant = msg(MessageType::MsgVoteResp, 2, 1, 2);
        grant.reject = false;
        r.step(grant).unwrap();
        assert_eq!(r.state, StateRole::Leader);
        assert_eq!(r.raft_log.last_index(), 3, "the no-op of term 2");
        take(&mut r);
        // Follower 2 acknowledges the old entries only: a majority holds index 2 of term 1.
        let mut ack = msg(MessageType::MsgAppResp, 2, 1, 2);
        ack.index = 2;
        r.step(ack).unwrap();
        assert_eq!(r.raft_log.committed, 0);
        let mut ack = msg(MessageType::MsgAppResp, 2, 1, 2);
        ack.index = 3;
        r.step(ack).unwrap();
        assert_eq!(r.raft_log.committed, 3, "the no-op commits, and everything before it");
    }

    #[test]
    fn vote_responses_carry_the_commit_index_and_candidates_adopt_matching_ones() {
        let mut voter = node(2, &[1, 1, 1], 1, |_| {});
        voter.raft_log.commit_to(3);
        let mut m = msg(MessageType::MsgVote, 1, 2, 2);
        m.index = 2;
        m.log_term = 1;
        voter.step(m).unwrap();
        let out = take(&mut voter);
        assert!(out[0].reject, "the candidate's log is shorter");
        assert_eq!((out[0].commit, out[0].log_term), (3, 1));

        let mut candidate = node(1, &[1, 1, 1], 1, |_| {});
        candidate.step(msg(MessageType::MsgHup, 0, 0, 0)).unwrap();
        assert_eq!(candidate.raft_log.committed, 0);
        let mut resp = msg(MessageType::MsgVoteResp, 2, 1, 2);
        resp.reject = true;
        resp.commit = 3;
        resp.log_term = 9;
        candidate.step(resp.clone()).unwrap();
        assert_eq!(candidate.raft_log.committed, 0, "a different entry at 3: ignored");
        resp.log_term = 1;
        candidate.step(resp).unwrap();
        assert_eq!(candidate.raft_log.committed, 3, "the same entry: committed");
    }

    #[test]
    fn conf_change_proposals_are_refused_while_one_is_pending() {
        let mut r = node(1, &[], 0, |_| {});
        r.step(msg(MessageType::MsgHup, 0, 0, 0)).unwrap();
        r.step(msg(MessageType::MsgVoteResp, 2, 1, 1)).unwrap();
        assert_eq!(r.state, StateRole::Leader);
        let cc = |node_id| Entry {
            entry_type: EntryType::ConfChange,
            data: ConfChange {
                change_type: super::super::message::ConfChangeType::AddNode,
                node_id,
                context: Bytes::new(),
            }
            .encode()
            .into(),
            ..Entry::default()
        };
        let mut prop = msg(MessageType::MsgProp, 1, 0, 0);
        prop.entries = vec![cc(4), cc(5)];
        r.step(prop).unwrap();
        let es = r.raft_log.unstable_entries();
        let n = es.len();
        assert_eq!(es[n - 2].entry_type, EntryType::ConfChange);
        assert_eq!(es[n - 1].entry_type, EntryType::Normal, "the second became a no-op");
        assert!(es[n - 1].data.is_empty());
        assert_eq!(r.pending_conf_index, es[n - 2].index);
    }

    /// Node 1 elected leader of `voters` at term 1, its no-op acknowledged by every peer (so
    /// committed, and every peer in Replicate state), with no message left to read.
    fn leader_of(voters: &[u64]) -> Raft<MemoryStorage> {
        let mut r = node_of(1, voters, &[], 0, |_| {});
        r.step(msg(MessageType::MsgHup, 0, 0, 0)).unwrap();
        for id in voters.iter().copied().filter(|id| *id != 1) {
            if r.state != StateRole::Leader {
                r.step(msg(MessageType::MsgVoteResp, id, 1, 1)).unwrap();
            }
        }
        assert_eq!(r.state, StateRole::Leader);
        let last = r.raft_log.last_index();
        for id in voters.iter().copied().filter(|id| *id != 1) {
            let mut ack = msg(MessageType::MsgAppResp, id, 1, 1);
            ack.index = last;
            r.step(ack).unwrap();
        }
        assert_eq!(r.raft_log.committed, last);
        take(&mut r);
        r
    }

    fn read_request(from: u64, ctx: &'static [u8]) -> Message {
        let mut m = msg(MessageType::MsgReadIndex, from, 1, 0);
        m.entries = vec![Entry { data: Bytes::from_static(ctx), ..Entry::default() }];
        m
    }

    fn heartbeat_ack(from: u64, context: &Bytes) -> Message {
        let mut m = msg(MessageType::MsgHeartbeatResp, from, 1, 1);
        m.context = context.clone();
        m
    }

    fn of_type(out: &[Message], t: MessageType) -> Vec<&Message> {
        out.iter().filter(|m| m.msg_type == t).collect()
    }

    // etcd's TestRaftFreesReadOnlyMem.
    #[test]
    fn a_confirmed_read_is_no_longer_held() {
        let mut r = leader_of(&[1, 2]);
        r.step(read_request(2, b"ctx")).unwrap();
        let out = take(&mut r);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].msg_type, MessageType::MsgHeartbeat);
        assert_eq!(r.pending_read_count(), 1);
        r.step(heartbeat_ack(2, &out[0].context)).unwrap();
        assert_eq!(r.pending_read_count(), 0);
        let out = take(&mut r);
        let answers = of_type(&out, MessageType::MsgReadIndexResp);
        assert_eq!(answers.len(), 1);
        assert_eq!((answers[0].to, answers[0].index), (2, 1));
    }

    #[test]
    fn acks_of_a_round_sent_before_a_read_do_not_confirm_it() {
        let mut r = leader_of(&[1, 2, 3]);
        r.step(read_request(2, b"x")).unwrap();
        let first_round = take(&mut r)[0].context.clone();
        r.step(heartbeat_ack(2, &first_round)).unwrap();
        let out = take(&mut r);
        assert_eq!(of_type(&out, MessageType::MsgReadIndexResp).len(), 1, "first read confirmed");

        // The same request again (a duplicate): only a later round may confirm it.
        r.step(read_request(2, b"x")).unwrap();
        let second_round = take(&mut r)[0].context.clone();
        assert_ne!(second_round, first_round, "each round is told apart");
        r.step(heartbeat_ack(2, &first_round)).unwrap();
        r.step(heartbeat_ack(3, &first_round)).unwrap();
        let out = take(&mut r);
        assert!(of_type(&out, MessageType::MsgReadIndexResp).is_empty(), "{out:?}");
        assert_eq!(r.pending_read_count(), 1);
        r.step(heartbeat_ack(3, &second_round)).unwrap();
        let out = take(&mut r);
        assert_eq!(of_type(&out, MessageType::MsgReadIndexResp).len(), 1, "second read confirmed");
        assert_eq!(r.pending_read_count(), 0);
    }

    #[test]
    fn heartbeat_acks_with_a_context_never_sent_are_ignored() {
        let mut r = leader_of(&[1, 2, 3]);
        r.step(read_request(2, b"x")).unwrap();
        let round = take(&mut r)[0].context.clone();
        for bogus in [
            Bytes::from_static(b"abc"),
            Bytes::from(u64::MAX.to_le_bytes().to_vec()),
            Bytes::from(vec![7u8; 16]),
        ] {
            r.step(heartbeat_ack(2, &bogus)).unwrap();
            r.step(heartbeat_ack(3, &bogus)).unwrap();
            let out = take(&mut r);
            assert!(of_type(&out, MessageType::MsgReadIndexResp).is_empty(), "{bogus:?}");
        }
        assert_eq!(r.pending_read_count(), 1);
        r.step(heartbeat_ack(3, &round)).unwrap();
        assert_eq!(r.pending_read_count(), 0, "the real round still confirms it");
    }

    // etcd's TestSendAppendForProgressProbe.
    #[test]
    fn a_probing_leader_sends_one_append_per_heartbeat_response() {
        let mut r = leader_of(&[1, 2]);
        r.prs.progress.get_mut(&2).unwrap().become_probe();
        let sent_from = r.prs.progress[&2].next_idx - 1;
        for round in 0..3 {
            if round == 0 {
                assert!(r.append_entry(vec![Entry::new(0, 0, Bytes::from("data"))]));
                r.send_append(2);
                let out = take(&mut r);
                assert_eq!(out.len(), 1);
                assert_eq!((out[0].msg_type, out[0].index), (MessageType::MsgApp, sent_from));
            }
            assert!(r.prs.progress[&2].msg_app_flow_paused);
            for _ in 0..10 {
                assert!(r.append_entry(vec![Entry::new(0, 0, Bytes::from("data"))]));
                r.send_append(2);
                assert!(take(&mut r).is_empty(), "round {round}: the probe is outstanding");
            }
            r.step(msg(MessageType::MsgBeat, 1, 1, 0)).unwrap();
            assert!(r.prs.progress[&2].msg_app_flow_paused);
            let out = take(&mut r);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].msg_type, MessageType::MsgHeartbeat);
        }
        // A heartbeat response lets one more probe go.
        r.step(msg(MessageType::MsgHeartbeatResp, 2, 1, 1)).unwrap();
        let out = take(&mut r);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].msg_type, out[0].index), (MessageType::MsgApp, sent_from));
        assert!(r.prs.progress[&2].msg_app_flow_paused);
    }

    // etcd's TestSendAppendForProgressReplicate.
    #[test]
    fn a_replicating_leader_pipelines_appends() {
        let mut r = leader_of(&[1, 2]);
        assert_eq!(r.prs.progress[&2].state, ProgressState::Replicate);
        for k in 0..10 {
            assert!(r.append_entry(vec![Entry::new(0, 0, Bytes::from("data"))]));
            r.send_append(2);
            assert_eq!(take(&mut r).len(), 1, "#{k}");
        }
    }

    // etcd's TestSendAppendForProgressSnapshot.
    #[test]
    fn a_leader_sends_nothing_while_a_snapshot_is_in_flight() {
        let mut r = leader_of(&[1, 2]);
        r.prs.progress.get_mut(&2).unwrap().become_snapshot(10);
        for k in 0..10 {
            assert!(r.append_entry(vec![Entry::new(0, 0, Bytes::from("data"))]));
            r.send_append(2);
            assert!(take(&mut r).is_empty(), "#{k}");
        }
    }

    // etcd's TestHandleHeartbeatResp.
    #[test]
    fn heartbeat_responses_resend_appends_until_the_follower_is_caught_up() {
        let mut r = leader_of(&[1, 2]);
        for _ in 0..3 {
            assert!(r.append_entry(vec![Entry::new(0, 0, Bytes::from("data"))]));
        }
        let last = r.raft_log.last_index();
        for k in 0..2 {
            r.step(msg(MessageType::MsgHeartbeatResp, 2, 1, 1)).unwrap();
            let out = take(&mut r);
            assert_eq!(out.len(), 1, "#{k}: {out:?}");
            assert_eq!(out[0].msg_type, MessageType::MsgApp, "#{k}");
        }
        let mut ack = msg(MessageType::MsgAppResp, 2, 1, 1);
        ack.index = last;
        r.step(ack).unwrap();
        take(&mut r);
        r.step(msg(MessageType::MsgHeartbeatResp, 2, 1, 1)).unwrap();
        assert!(take(&mut r).is_empty(), "a caught-up follower needs no append");
    }

    // etcd's TestMsgAppRespWaitReset.
    #[test]
    fn an_acknowledgement_ends_the_probe_wait_of_that_follower_only() {
        let mut r = node(1, &[], 0, |_| {});
        r.step(msg(MessageType::MsgHup, 0, 0, 0)).unwrap();
        r.step(msg(MessageType::MsgVoteResp, 2, 1, 1)).unwrap();
        assert_eq!(r.state, StateRole::Leader);
        take(&mut r);
        // 2 acknowledges the no-op, which commits.
        let mut ack = msg(MessageType::MsgAppResp, 2, 1, 1);
        ack.index = 1;
        r.step(ack).unwrap();
        assert_eq!(r.raft_log.committed, 1);
        take(&mut r);
        // A new entry goes to 2 only: 3 still waits for the answer to its probe.
        let mut prop = msg(MessageType::MsgProp, 1, 1, 0);
        prop.entries = vec![Entry::default()];
        r.step(prop).unwrap();
        let out = take(&mut r);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].msg_type, out[0].to), (MessageType::MsgApp, 2));
        assert_eq!(out[0].entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2]);
        // 3 acknowledges the no-op: the wait ends and entry 2 goes out.
        let mut ack = msg(MessageType::MsgAppResp, 3, 1, 1);
        ack.index = 1;
        r.step(ack).unwrap();
        let out = take(&mut r);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].msg_type, out[0].to), (MessageType::MsgApp, 3));
        assert_eq!(out[0].entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_probe_answered_at_the_match_index_returns_to_replicate() {
        let mut r = leader_of(&[1, 2]);
        let last = r.raft_log.last_index();
        r.prs.progress.get_mut(&2).unwrap().become_probe();
        r.step(msg(MessageType::MsgHeartbeatResp, 2, 1, 1)).unwrap();
        let out = take(&mut r);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].msg_type, out[0].index), (MessageType::MsgApp, last));
        assert!(out[0].entries.is_empty(), "2 is caught up: the probe is empty");
        let mut ack = msg(MessageType::MsgAppResp, 2, 1, 1);
        ack.index = last;
        r.step(ack).unwrap();
        let pr = &r.prs.progress[&2];
        assert_eq!(pr.state, ProgressState::Replicate, "{pr:?}");
        assert_eq!((pr.matched, pr.next_idx), (last, last + 1));
    }

    fn add(change_type: super::super::message::ConfChangeType, node_id: u64) -> ConfChangeV2 {
        use super::super::message::AnyConfChange;
        ConfChange { change_type, node_id, context: Bytes::new() }.as_v2()
    }

    // etcd's TestAddNode and TestAddLearner.
    #[test]
    fn added_voters_and_learners_get_the_right_progress() {
        use super::super::message::ConfChangeType::{AddLearnerNode, AddNode};
        let mut r = node_of(1, &[1], &[], 0, |_| {});
        let cs = r.apply_conf_change(&add(AddNode, 2));
        assert_eq!(cs.voters, vec![1, 2]);

        let mut r = node_of(1, &[1], &[], 0, |_| {});
        let cs = r.apply_conf_change(&add(AddLearnerNode, 2));
        assert_eq!((cs.voters, cs.learners), (vec![1], vec![2]));
        assert!(r.prs.progress[&2].is_learner);
        assert!(r.promotable());
        r.apply_conf_change(&add(AddNode, 2));
        assert!(!r.prs.progress[&2].is_learner, "promoted");
        r.apply_conf_change(&add(AddLearnerNode, 1));
        assert!(r.prs.progress[&1].is_learner, "demoted itself");
        assert!(!r.promotable());
        r.apply_conf_change(&add(AddNode, 1));
        assert!(!r.prs.progress[&1].is_learner);
        assert!(r.promotable());
    }

    #[test]
    fn a_new_member_is_probed_in_the_step_that_adds_it() {
        use super::super::message::ConfChangeType::{AddLearnerNode, AddNode};
        for change in [AddNode, AddLearnerNode] {
            let mut r = node_of(1, &[1], &[], 0, |_| {});
            r.step(msg(MessageType::MsgHup, 0, 0, 0)).unwrap();
            assert_eq!(r.state, StateRole::Leader);
            let last = r.raft_log.last_index();
            take(&mut r);
            r.apply_conf_change(&add(change, 2));
            let pr = &r.prs.progress[&2];
            assert_eq!(
                (pr.matched, pr.next_idx),
                (0, last),
                "{change:?}: probed at the last entry"
            );
            let out = take(&mut r);
            let apps = of_type(&out, MessageType::MsgApp);
            assert_eq!(apps.len(), 1, "{change:?}: {out:?}");
            assert_eq!(apps[0].to, 2);
            assert_eq!(apps[0].index, last - 1);
            assert_eq!(apps[0].entries.len(), 1);
        }
    }

    // etcd's TestAddNodeCheckQuorum.
    #[test]
    fn a_new_member_counts_as_active_for_one_check_quorum_round() {
        use super::super::message::ConfChangeType::AddNode;
        let mut r = node_of(1, &[1], &[], 0, |c| c.check_quorum = true);
        r.step(msg(MessageType::MsgHup, 0, 0, 0)).unwrap();
        assert_eq!(r.state, StateRole::Leader);
        let timeout = r.election_timeout;
        for _ in 0..timeout - 1 {
            r.tick();
        }
        r.apply_conf_change(&add(AddNode, 2));
        // This tick reaches the election timeout: a quorum check, which 2 passes.
        r.tick();
        assert_eq!(r.state, StateRole::Leader);
        // Another timeout without hearing from 2: 1 of 2 voters is no quorum.
        for _ in 0..timeout {
            r.tick();
        }
        assert_eq!(r.state, StateRole::Follower);
    }

    fn snapshot(index: u64, term: u64, conf_state: ConfState) -> Snapshot {
        Snapshot {
            metadata: SnapshotMetadata { index, term, conf_state },
            data: Bytes::from_static(b"image"),
        }
    }

    // etcd's TestRestoreWithVotersOutgoing, with the lists also out of order.
    #[test]
    fn an_outgoing_voter_restores_a_joint_snapshot() {
        let sorted = ConfState {
            voters: vec![2, 3, 4],
            voters_outgoing: vec![1, 2, 3],
            ..ConfState::default()
        };
        let unsorted = ConfState {
            voters: vec![4, 3, 2],
            voters_outgoing: vec![3, 1, 2],
            ..ConfState::default()
        };
        for cs in [sorted.clone(), unsorted] {
            let mut r = node_of(1, &[1, 2], &[], 0, |_| {});
            let s = snapshot(11, 11, cs.clone());
            assert!(r.restore(s.clone()), "{cs:?}");
            assert_eq!(r.raft_log.last_index(), 11);
            assert_eq!(r.raft_log.term(11).unwrap(), 11);
            let ids: Vec<u64> = r.prs.conf.voters.ids().into_iter().collect();
            assert_eq!(ids, vec![1, 2, 3, 4]);
            assert_eq!(r.prs.conf_state(), sorted);
            assert!(!r.restore(s), "already restored");
            // Not before the snapshot is persisted and applied.
            for _ in 0..2 * r.randomized_election_timeout() {
                r.tick();
            }
            assert_eq!(r.state, StateRole::Follower);
        }
    }

    #[test]
    fn a_snapshot_with_an_impossible_membership_is_refused_and_changes_nothing() {
        let bad = ConfState { voters: vec![1, 2], learners: vec![2], ..ConfState::default() };
        let mut r = node_of(2, &[1, 2], &[1, 1], 1, |_| {});
        assert!(!r.restore(snapshot(11, 11, bad)));
        assert_eq!(r.raft_log.last_index(), 2);
        assert!(r.raft_log.unstable.snapshot.is_none());
        assert_eq!(r.prs.conf_state().voters, vec![1, 2]);
    }
}
