//! Quorum arithmetic: which index a configuration has committed and how an election stands.
//!
//! This module is pure: it imports nothing else from `raft/` and knows nothing of progress,
//! messages or logs. Callers describe what each voter has acknowledged through a closure, so the
//! same code serves the leader's match indices, the read-index acknowledgements and the votes.

use std::collections::BTreeSet;

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not enough votes yet, but enough voters have not answered that it can still be won.
    Pending,
    /// Enough rejections that the election cannot be won.
    Lost,
    /// A quorum voted yes.
    Won,
}

/// A set of voters of which a strict majority forms a quorum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    voters: BTreeSet<u64>,
}

impl MajorityConfig {
    /// A configuration of the given voters.
    pub fn new(voters: BTreeSet<u64>) -> MajorityConfig {
        MajorityConfig { voters }
    }

    /// The voters.
    pub fn ids(&self) -> &BTreeSet<u64> {
        &self.voters
    }

    /// Mutable access to the voters, for the configuration changer.
    pub fn ids_mut(&mut self) -> &mut BTreeSet<u64> {
        &mut self.voters
    }

    /// Whether `id` is a voter.
    pub fn contains(&self, id: u64) -> bool {
        self.voters.contains(&id)
    }

    /// Whether there are no voters.
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    /// The number of voters.
    pub fn len(&self) -> usize {
        self.voters.len()
    }

    /// The highest index that a majority has acknowledged; `acked(id)` is the index voter `id`
    /// acknowledged, `None` counting as 0.
    ///
    /// An empty configuration answers `u64::MAX`, so that in a joint configuration with an
    /// empty half the other half alone decides (the minimum of the two).
    pub fn committed_index(&self, acked: &dyn Fn(u64) -> Option<u64>) -> u64 {
        if self.voters.is_empty() {
            return u64::MAX;
        }
        // Sort the acknowledged indices in decreasing order; the quorum-th largest is the
        // highest index at least a majority holds.
        let mut indices: Vec<u64> = self.voters.iter().map(|id| acked(*id).unwrap_or(0)).collect();
        indices.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = self.voters.len() / 2 + 1;
        indices[quorum - 1]
    }

    /// How an election stands given `vote(id)`: `Some(true)` granted, `Some(false)` rejected,
    /// `None` not yet answered. An empty configuration wins (by convention, like joint halves).
    pub fn vote_result(&self, vote: &dyn Fn(u64) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut yes, mut missing) = (0usize, 0usize);
        for id in &self.voters {
            match vote(*id) {
                Some(true) => yes += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let quorum = self.voters.len() / 2 + 1;
        if yes >= quorum {
            VoteResult::Won
        } else if yes + missing >= quorum {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// Two majority configurations that must both agree: the incoming and the outgoing one of a
/// joint-consensus change. Outside a joint change the outgoing half is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    /// The incoming (or only) configuration.
    pub incoming: MajorityConfig,
    /// The outgoing configuration; empty unless in a joint configuration.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// A non-joint configuration of the given voters.
    pub fn new(voters: BTreeSet<u64>) -> JointConfig {
        JointConfig { incoming: MajorityConfig::new(voters), outgoing: MajorityConfig::default() }
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Every voter of either half.
    pub fn ids(&self) -> BTreeSet<u64> {
        self.incoming.ids().union(self.outgoing.ids()).copied().collect()
    }

    /// Whether `id` votes in either half.
    pub fn contains(&self, id: u64) -> bool {
        self.incoming.contains(id) || self.outgoing.contains(id)
    }

    /// The highest index both halves have committed.
    pub fn committed_index(&self, acked: &dyn Fn(u64) -> Option<u64>) -> u64 {
        let i = self.incoming.committed_index(acked);
        let o = self.outgoing.committed_index(acked);
        i.min(o)
    }

    /// Won when both halves won, lost when either lost, pending otherwise.
    pub fn vote_result(&self, vote: &dyn Fn(u64) -> Option<bool>) -> VoteResult {
        let i = self.incoming.vote_result(vote);
        let o = self.outgoing.vote_result(vote);
        match (i, o) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// The naive definition: the largest index `i` such that more than half of the voters
    /// acknowledged at least `i`, found by trying every candidate.
    fn naive_committed(voters: &BTreeSet<u64>, acked: &BTreeMap<u64, u64>) -> u64 {
        if voters.is_empty() {
            return u64::MAX;
        }
        let get = |id: &u64| acked.get(id).copied().unwrap_or(0);
        let mut candidates: Vec<u64> = voters.iter().map(get).collect();
        candidates.push(0);
        candidates
            .into_iter()
            .filter(|c| voters.iter().filter(|v| get(v) >= *c).count() * 2 > voters.len())
            .max()
            .unwrap()
    }

    fn naive_vote(voters: &BTreeSet<u64>, votes: &BTreeMap<u64, bool>) -> VoteResult {
        if voters.is_empty() {
            return VoteResult::Won;
        }
        let yes = voters.iter().filter(|v| votes.get(v) == Some(&true)).count();
        let no = voters.iter().filter(|v| votes.get(v) == Some(&false)).count();
        if yes * 2 > voters.len() {
            VoteResult::Won
        } else if no * 2 >= voters.len() {
            // Even if every remaining voter says yes, yes stays at most half.
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    #[test]
    fn majority_of_three_commits_the_median() {
        let c = MajorityConfig::new(set(&[1, 2, 3]));
        let acked = BTreeMap::from([(1, 10), (2, 5), (3, 7)]);
        assert_eq!(c.committed_index(&|id| acked.get(&id).copied()), 7);
        // A voter that never answered counts as 0.
        let acked = BTreeMap::from([(1, 10)]);
        assert_eq!(c.committed_index(&|id| acked.get(&id).copied()), 0);
    }

    #[test]
    fn even_sized_config_needs_more_than_half() {
        let c = MajorityConfig::new(set(&[1, 2, 3, 4]));
        let acked = BTreeMap::from([(1, 10), (2, 9), (3, 1), (4, 1)]);
        assert_eq!(c.committed_index(&|id| acked.get(&id).copied()), 1);
        let votes = BTreeMap::from([(1, true), (2, true), (3, false), (4, false)]);
        assert_eq!(c.vote_result(&|id| votes.get(&id).copied()), VoteResult::Lost);
    }

    #[test]
    fn joint_config_takes_the_smaller_half() {
        let j = JointConfig {
            incoming: MajorityConfig::new(set(&[1, 2, 3])),
            outgoing: MajorityConfig::new(set(&[3, 4, 5])),
        };
        let acked = BTreeMap::from([(1, 9), (2, 9), (3, 4), (4, 2), (5, 1)]);
        assert_eq!(j.committed_index(&|id| acked.get(&id).copied()), 2);
        // Winning the incoming half alone is not enough.
        let votes = BTreeMap::from([(1, true), (2, true)]);
        assert_eq!(j.vote_result(&|id| votes.get(&id).copied()), VoteResult::Pending);
        let votes = BTreeMap::from([(1, true), (2, true), (4, false), (5, false)]);
        assert_eq!(j.vote_result(&|id| votes.get(&id).copied()), VoteResult::Lost);
    }

    #[test]
    fn empty_configs_do_not_constrain() {
        let empty = MajorityConfig::default();
        assert_eq!(empty.committed_index(&|_| Some(3)), u64::MAX);
        assert_eq!(empty.vote_result(&|_| None), VoteResult::Won);
        let j = JointConfig::new(set(&[1]));
        assert_eq!(j.committed_index(&|_| Some(3)), 3);
        assert!(!j.is_joint());
    }

    fn arb_acked() -> impl Strategy<Value = (BTreeSet<u64>, BTreeMap<u64, u64>)> {
        (
            proptest::collection::btree_set(1u64..10, 0..8),
            proptest::collection::btree_map(1u64..10, 0u64..20, 0..10),
        )
    }

    fn arb_votes() -> impl Strategy<Value = (BTreeSet<u64>, BTreeMap<u64, bool>)> {
        (
            proptest::collection::btree_set(1u64..10, 0..8),
            proptest::collection::btree_map(1u64..10, any::<bool>(), 0..10),
        )
    }

    proptest! {
        #[test]
        fn majority_committed_index_matches_naive((voters, acked) in arb_acked()) {
            let c = MajorityConfig::new(voters.clone());
            prop_assert_eq!(
                c.committed_index(&|id| acked.get(&id).copied()),
                naive_committed(&voters, &acked)
            );
        }

        #[test]
        fn joint_committed_index_matches_naive(
            (incoming, acked) in arb_acked(),
            outgoing in proptest::collection::btree_set(1u64..10, 0..8),
        ) {
            let j = JointConfig {
                incoming: MajorityConfig::new(incoming.clone()),
                outgoing: MajorityConfig::new(outgoing.clone()),
            };
            let want = naive_committed(&incoming, &acked).min(naive_committed(&outgoing, &acked));
            prop_assert_eq!(j.committed_index(&|id| acked.get(&id).copied()), want);
        }

        #[test]
        fn majority_vote_matches_naive((voters, votes) in arb_votes()) {
            let c = MajorityConfig::new(voters.clone());
            prop_assert_eq!(c.vote_result(&|id| votes.get(&id).copied()), naive_vote(&voters, &votes));
        }

        #[test]
        fn joint_vote_matches_naive(
            (incoming, votes) in arb_votes(),
            outgoing in proptest::collection::btree_set(1u64..10, 0..8),
        ) {
            let j = JointConfig {
                incoming: MajorityConfig::new(incoming.clone()),
                outgoing: MajorityConfig::new(outgoing.clone()),
            };
            let (i, o) = (naive_vote(&incoming, &votes), naive_vote(&outgoing, &votes));
            let want = if i == VoteResult::Lost || o == VoteResult::Lost {
                VoteResult::Lost
            } else if i == VoteResult::Won && o == VoteResult::Won {
                VoteResult::Won
            } else {
                VoteResult::Pending
            };
            prop_assert_eq!(j.vote_result(&|id| votes.get(&id).copied()), want);
        }
    }
}
