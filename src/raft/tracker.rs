//! What the leader knows about each peer: its [`Progress`] (how far its log matches, what is in
//! flight to it) and the [`ProgressTracker`] that holds the configuration and every progress.
//!
//! Depends only on [`super::quorum`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::quorum::{JointConfig, VoteResult};
use crate::types::ConfState;

/// A bounded window of append messages sent to a follower and not yet acknowledged.
///
/// The leader stops sending when either the count or the byte limit is reached, so a slow
/// follower cannot make the leader buffer an unbounded amount of data for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflights {
    // (last index of the message, bytes of its entries), in increasing index order.
    // Invariant: len <= max_count; bytes == sum of the second components.
    queue: VecDeque<(u64, u64)>,
    bytes: u64,
    max_count: usize,
    max_bytes: u64,
}

impl Inflights {
    /// An empty window of at most `max_count` messages and `max_bytes` bytes (0: no byte limit).
    pub fn new(max_count: usize, max_bytes: u64) -> Inflights {
        assert!(max_count > 0, "max inflight messages must be positive");
        Inflights { queue: VecDeque::new(), bytes: 0, max_count, max_bytes }
    }

    /// Records a message whose last entry is `index` and whose entries total `bytes`.
    ///
    /// # Panics
    /// If the window is full or `index` does not increase: the caller must check
    /// [`Inflights::full`] and send in log order.
    pub fn add(&mut self, index: u64, bytes: u64) {
        assert!(
            !self.full(),
            "cannot add index {index} to full inflights ({} msgs, {} bytes)",
            self.queue.len(),
            self.bytes
        );
        if let Some(&(last, _)) = self.queue.back() {
            assert!(index > last, "inflight index {index} must be above the last one {last}");
        }
        self.queue.push_back((index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at most `to` (they were acknowledged).
    pub fn free_le(&mut self, to: u64) {
        while let Some(&(index, bytes)) = self.queue.front() {
            if index > to {
                break;
            }
            self.queue.pop_front();
            self.bytes -= bytes;
        }
        debug_assert_eq!(self.bytes, self.queue.iter().map(|(_, b)| b).sum::<u64>());
    }

    /// Whether no more messages may be sent.
    pub fn full(&self) -> bool {
        self.queue.len() >= self.max_count || (self.max_bytes != 0 && self.bytes >= self.max_bytes)
    }

    /// Messages in flight.
    pub fn count(&self) -> usize {
        self.queue.len()
    }

    /// Bytes in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Forgets every message.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

/// How the leader sends to a follower.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: one append at a time, each
    /// waiting for its answer (or a heartbeat response) before the next.
    #[default]
    Probe,
    /// The follower's log matches up to `matched`: appends are pipelined, bounded by inflights.
    Replicate,
    /// The follower needs a snapshot, which is being sent; nothing else is sent until it is
    /// reported done or failed.
    Snapshot,
}

/// The leader's view of one follower (or of itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The highest index known to match the leader's log.
    // Invariant: matched < next_idx.
    pub matched: u64,
    /// The index of the next entry to send.
    pub next_idx: u64,
    /// How entries are sent.
    pub state: ProgressState,
    /// In `Snapshot` state, the index of the snapshot being sent; otherwise 0.
    pub pending_snapshot: u64,
    /// Whether the peer was heard from since the last check-quorum round.
    pub recent_active: bool,
    /// In `Probe` state, whether a probe is outstanding; in `Replicate` state, whether the
    /// inflight window is full.
    pub msg_app_flow_paused: bool,
    /// Appends sent and not yet acknowledged (used in `Replicate` state).
    pub inflights: Inflights,
    /// Whether the peer is a learner.
    pub is_learner: bool,
}

impl Progress {
    /// A progress in `Probe` state that will send from `next_idx`.
    pub fn new(next_idx: u64, max_inflight: usize, max_inflight_bytes: u64) -> Progress {
        assert!(next_idx > 0, "next index must be positive");
        Progress {
            matched: 0,
            next_idx,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            msg_app_flow_paused: false,
            inflights: Inflights::new(max_inflight, max_inflight_bytes),
            is_learner: false,
        }
    }

    fn check(&self) {
        assert!(
            self.matched < self.next_idx,
            "progress invariant broken: match {} must be below next {}",
            self.matched,
            self.next_idx
        );
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.msg_app_flow_paused = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    /// Enters `Probe` state. Coming from `Snapshot` state, the follower is assumed to hold the
    /// snapshot it was sent, so the next probe starts after it.
    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next_idx = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next_idx = self.matched + 1;
        }
        self.check();
    }

    /// Enters `Replicate` state: send right after the matched index, pipelined.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_idx = self.matched + 1;
        self.check();
    }

    /// Enters `Snapshot` state for a snapshot at `snapshot_index`.
    pub fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
        self.next_idx = self.next_idx.max(snapshot_index + 1);
        self.check();
    }

    /// Records that an append of `entries` entries totalling `bytes` bytes, starting at
    /// `next_idx`, was sent.
    pub fn sent_entries(&mut self, entries: usize, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    let last = self.next_idx + entries as u64 - 1;
                    self.next_idx = last + 1;
                    self.inflights.add(last, bytes);
                }
                self.msg_app_flow_paused = self.inflights.full();
            }
            ProgressState::Probe => {
                // One probe at a time: wait for its answer (or a heartbeat response).
                if entries > 0 {
                    self.msg_app_flow_paused = true;
                }
            }
            ProgressState::Snapshot => panic!(
                "sending entries to a follower in snapshot state (pending snapshot {})",
                self.pending_snapshot
            ),
        }
        self.check();
    }

    /// Records that the follower matches up to `n`; returns whether `matched` grew. A stale
    /// acknowledgement changes nothing.
    pub fn maybe_update(&mut self, n: u64) -> bool {
        let updated = self.matched < n;
        if updated {
            self.matched = n;
            self.msg_app_flow_paused = false;
        }
        self.next_idx = self.next_idx.max(n + 1);
        self.check();
        updated
    }

    /// Handles a rejection of an append whose previous index was `rejected`, with the
    /// follower's hint that its log matches at most up to `match_hint`. Returns false when the
    /// rejection is stale (answers an earlier probe) and changed nothing.
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            // Pipelined appends above `matched` may all be rejected; only the first rejection
            // above the match point means anything.
            if rejected <= self.matched {
                return false;
            }
            self.next_idx = self.matched + 1;
            self.check();
            return true;
        }
        // In probe state only the answer to the outstanding probe (at next - 1) counts.
        if self.next_idx - 1 != rejected {
            return false;
        }
        self.next_idx = rejected.min(match_hint + 1).max(self.matched + 1);
        self.msg_app_flow_paused = false;
        self.check();
        true
    }

    /// Handles a rejection of an append at `rejected` from a follower whose log lost entries
    /// it had acknowledged (a repairing node marks its rejections so). A rejection at or below
    /// `matched` is then news, not a stale answer: the match falls below it, to the hint, and
    /// probing resumes there. Without this `next` never goes below `matched + 1` and the same
    /// append is rejected forever. Lowering the match is safe: the commit index never moves
    /// back, and the follower acknowledges again whatever it holds. Returns whether anything
    /// changed (an append should go out).
    pub fn lost_entries(&mut self, rejected: u64, match_hint: u64) -> bool {
        if rejected > self.matched || self.state == ProgressState::Snapshot {
            return self.maybe_decr_to(rejected, match_hint);
        }
        // Index 0 always matches: a rejection there is not a follower's answer.
        if rejected == 0 {
            return false;
        }
        self.matched = match_hint.min(rejected - 1);
        self.become_probe();
        true
    }

    /// Whether the leader must not send appends to this peer now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe | ProgressState::Replicate => self.msg_app_flow_paused,
            ProgressState::Snapshot => true,
        }
    }
}

/// A configuration: the voters (possibly joint), the learners, and what happens on leaving a
/// joint configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    /// Voters of the incoming and, while joint, outgoing configuration.
    pub voters: JointConfig,
    /// Learners. Invariant: disjoint from both halves of `voters`.
    pub learners: BTreeSet<u64>,
    /// Outgoing voters that become learners when the joint configuration is left.
    /// Invariant: each is an outgoing voter and not an incoming one.
    pub learners_next: BTreeSet<u64>,
    /// Whether the joint configuration is left automatically once committed.
    pub auto_leave: bool,
}

impl Configuration {
    /// The membership as the shared `ConfState` type.
    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.ids().iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            voters_outgoing: self.voters.outgoing.ids().iter().copied().collect(),
            learners_next: self.learners_next.iter().copied().collect(),
            auto_leave: self.auto_leave,
        }
    }
}

/// Every peer's progress, the configuration, and the votes of the current election.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    /// The current configuration.
    pub conf: Configuration,
    /// Progress of every voter and learner. Invariant: has exactly their ids.
    pub progress: BTreeMap<u64, Progress>,
    votes: BTreeMap<u64, bool>,
    /// Limit on appends in flight per follower.
    pub max_inflight: usize,
    /// Limit on bytes in flight per follower (0: none).
    pub max_inflight_bytes: u64,
}

impl ProgressTracker {
    /// An empty tracker.
    pub fn new(max_inflight: usize, max_inflight_bytes: u64) -> ProgressTracker {
        ProgressTracker {
            conf: Configuration::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            max_inflight,
            max_inflight_bytes,
        }
    }

    /// The highest index a quorum of voters has matched.
    pub fn committed(&self) -> u64 {
        let prs = &self.progress;
        self.conf.voters.committed_index(&|id| prs.get(&id).map(|p| p.matched))
    }

    /// Whether `id` votes (in either half).
    pub fn is_voter(&self, id: u64) -> bool {
        self.conf.voters.contains(id)
    }

    /// Whether the only voter is a single node.
    pub fn is_singleton(&self) -> bool {
        self.conf.voters.incoming.len() == 1 && self.conf.voters.outgoing.is_empty()
    }

    /// Forgets the votes of the previous election.
    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records `id`'s vote, keeping the first answer of each voter.
    pub fn record_vote(&mut self, id: u64, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    /// Granted and rejected counts among voters, and the election's outcome.
    pub fn tally_votes(&self) -> (usize, usize, VoteResult) {
        let (mut granted, mut rejected) = (0, 0);
        for id in self.conf.voters.ids() {
            match self.votes.get(&id) {
                Some(true) => granted += 1,
                Some(false) => rejected += 1,
                None => {}
            }
        }
        let votes = &self.votes;
        let result = self.conf.voters.vote_result(&|id| votes.get(&id).copied());
        (granted, rejected, result)
    }

    /// Whether a quorum of voters was recently active (for check-quorum).
    pub fn quorum_active(&self) -> bool {
        let prs = &self.progress;
        let result = self.conf.voters.vote_result(&|id| prs.get(&id).map(|p| p.recent_active));
        result == VoteResult::Won
    }

    /// The membership as a `ConfState`.
    pub fn conf_state(&self) -> ConfState {
        self.conf.to_conf_state()
    }

    /// Asserts the tracker's invariants: progress exists exactly for members, learners are not
    /// voters, `is_learner` agrees with the configuration.
    pub fn check_invariants(&self) {
        let voters = self.conf.voters.ids();
        for id in &self.conf.learners {
            assert!(!voters.contains(id), "peer {id} is both learner and voter");
        }
        for id in &self.conf.learners_next {
            assert!(
                self.conf.voters.outgoing.contains(*id),
                "next learner {id} is not an outgoing voter"
            );
        }
        let members: BTreeSet<u64> = voters.union(&self.conf.learners).copied().collect();
        let tracked: BTreeSet<u64> = self.progress.keys().copied().collect();
        assert_eq!(members, tracked, "progress must exist exactly for members");
        for (id, pr) in &self.progress {
            assert_eq!(
                pr.is_learner,
                self.conf.learners.contains(id),
                "peer {id}: is_learner disagrees with the configuration"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn inflights_are_bounded_by_count() {
        let mut inf = Inflights::new(3, 0);
        inf.add(1, 10);
        inf.add(2, 10);
        assert!(!inf.full());
        inf.add(3, 10);
        assert!(inf.full(), "three messages fill a window of three");
        inf.free_le(1);
        assert!(!inf.full());
        assert_eq!(inf.count(), 2);
        assert_eq!(inf.bytes(), 20);
        inf.free_le(10);
        assert_eq!(inf.count(), 0);
        assert_eq!(inf.bytes(), 0);
    }

    #[test]
    fn inflights_are_bounded_by_bytes() {
        let mut inf = Inflights::new(100, 100);
        inf.add(1, 60);
        assert!(!inf.full());
        inf.add(2, 40);
        assert!(inf.full(), "100 bytes fill a 100-byte window");
        inf.free_le(1);
        assert!(!inf.full());
        assert_eq!(inf.bytes(), 40);
    }

    #[test]
    fn inflights_free_ignores_stale_and_partial_acks() {
        let mut inf = Inflights::new(10, 0);
        for i in [5, 7, 9] {
            inf.add(i, 1);
        }
        inf.free_le(4);
        assert_eq!(inf.count(), 3);
        inf.free_le(8);
        assert_eq!(inf.count(), 1);
        inf.reset();
        assert_eq!(inf.count(), 0);
    }

    #[test]
    #[should_panic(expected = "full inflights")]
    fn adding_to_a_full_window_panics() {
        let mut inf = Inflights::new(1, 0);
        inf.add(1, 1);
        inf.add(2, 1);
    }

    #[test]
    fn maybe_update_keeps_match_below_next_and_ignores_stale_acks() {
        let mut pr = Progress::new(5, 10, 0);
        pr.matched = 3;
        assert!(pr.maybe_update(4));
        assert_eq!((pr.matched, pr.next_idx), (4, 5));
        assert!(!pr.maybe_update(2), "a stale ack must not move match back");
        assert_eq!((pr.matched, pr.next_idx), (4, 5));
        assert!(pr.maybe_update(9));
        assert_eq!((pr.matched, pr.next_idx), (9, 10));
    }

    #[test]
    fn probe_pauses_after_one_append_until_answered() {
        let mut pr = Progress::new(5, 10, 0);
        assert!(!pr.is_paused());
        pr.sent_entries(3, 30);
        assert!(pr.is_paused(), "a probe waits for its answer");
        assert_eq!(pr.next_idx, 5, "probe does not advance next optimistically");
        assert!(pr.maybe_decr_to(4, 2));
        assert!(!pr.is_paused());
        assert_eq!(pr.next_idx, 3, "next jumps to the follower's hint + 1");
    }

    #[test]
    fn probe_ignores_rejections_of_older_probes() {
        let mut pr = Progress::new(10, 10, 0);
        assert!(!pr.maybe_decr_to(5, 0), "only the probe at next - 1 counts");
        assert_eq!(pr.next_idx, 10);
        assert!(pr.maybe_decr_to(9, 100), "a hint above the probe keeps next at the probe");
        assert_eq!(pr.next_idx, 9);
    }

    #[test]
    fn a_follower_that_lost_entries_lowers_its_match_to_the_hint() {
        let mut pr = Progress::new(1, 10, 0);
        pr.matched = 4;
        pr.become_replicate();
        pr.sent_entries(2, 20);
        assert_eq!(pr.next_idx, 7);
        // An unmarked rejection at the match index looks stale.
        assert!(!pr.maybe_decr_to(4, 1));
        assert!(pr.lost_entries(4, 1), "a marked one is news");
        assert_eq!((pr.state, pr.matched, pr.next_idx), (ProgressState::Probe, 1, 2));
        assert!(!pr.is_paused(), "the next probe goes out at once");
        // A hint at or above the rejected index still moves below it.
        let mut pr = Progress::new(1, 10, 0);
        pr.matched = 4;
        pr.become_probe();
        assert!(pr.lost_entries(4, 9));
        assert_eq!((pr.matched, pr.next_idx), (3, 4));
        // Above the match it is an ordinary rejection.
        let mut pr = Progress::new(1, 10, 0);
        pr.matched = 4;
        pr.become_probe();
        pr.next_idx = 8;
        assert!(pr.lost_entries(7, 2));
        assert_eq!((pr.matched, pr.next_idx), (4, 5));
        assert!(!pr.lost_entries(0, 0));
    }

    #[test]
    fn replicate_pipelines_and_falls_back_to_match_on_rejection() {
        let mut pr = Progress::new(1, 2, 0);
        pr.matched = 4;
        pr.become_replicate();
        assert_eq!(pr.next_idx, 5);
        pr.sent_entries(2, 10);
        assert_eq!(pr.next_idx, 7);
        assert!(!pr.is_paused());
        pr.sent_entries(1, 10);
        assert!(pr.is_paused(), "two messages fill the window of two");
        assert!(!pr.maybe_decr_to(3, 3), "rejections at or below match are stale");
        assert!(pr.maybe_decr_to(6, 5));
        assert_eq!(pr.next_idx, 5);
    }

    #[test]
    fn snapshot_state_pauses_and_probe_resumes_after_the_snapshot() {
        let mut pr = Progress::new(3, 10, 0);
        pr.matched = 2;
        pr.become_snapshot(20);
        assert!(pr.is_paused());
        assert_eq!(pr.pending_snapshot, 20);
        pr.become_probe();
        assert_eq!(pr.next_idx, 21, "after a snapshot the follower is assumed to hold it");
        assert_eq!(pr.pending_snapshot, 0);
        assert_eq!(pr.state, ProgressState::Probe);
    }

    #[test]
    fn tracker_counts_votes_and_commits_only_voters() {
        let mut t = ProgressTracker::new(10, 0);
        t.conf.voters = JointConfig::new(BTreeSet::from([1, 2, 3]));
        t.conf.learners = BTreeSet::from([4]);
        for id in 1..=4 {
            let mut pr = Progress::new(1, 10, 0);
            pr.is_learner = id == 4;
            t.progress.insert(id, pr);
        }
        t.check_invariants();
        t.progress.get_mut(&4).unwrap().maybe_update(100);
        t.progress.get_mut(&1).unwrap().maybe_update(7);
        assert_eq!(t.committed(), 0, "a learner's match never counts");
        t.progress.get_mut(&2).unwrap().maybe_update(5);
        assert_eq!(t.committed(), 5);

        t.record_vote(1, true);
        t.record_vote(4, true);
        assert_eq!(t.tally_votes(), (1, 0, VoteResult::Pending), "learner votes are ignored");
        t.record_vote(2, false);
        t.record_vote(2, true);
        assert_eq!(t.tally_votes(), (1, 1, VoteResult::Pending), "first answer sticks");
        t.record_vote(3, true);
        assert_eq!(t.tally_votes().2, VoteResult::Won);
    }
}
