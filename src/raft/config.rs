//! [`Config`]: how a Raft node is set up.

use crate::error::{Error, Result};

/// How a leader confirms that it may serve a linearizable read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// Confirm leadership with a round of heartbeats to a quorum for each read (batched).
    #[default]
    Safe,
    /// Trust the leader lease that check-quorum maintains: no round trip, but correct only if
    /// clocks do not drift by more than the election timeout. Requires `check_quorum`.
    LeaseBased,
}

/// The parameters of a Raft node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; never 0.
    pub id: u64,
    /// Ticks without hearing from a leader before a follower campaigns. The actual timeout is
    /// drawn at random from `[election_tick, 2 * election_tick)` at each term change.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats. Must be below `election_tick`.
    pub heartbeat_tick: usize,
    /// The last index the application applied before restarting; committed entries up to it
    /// are not handed out again. It may be above the stored commit index (a commit-only hard
    /// state need not be synced), which is then raised to it; it may not be above the last
    /// index of the log.
    pub applied: u64,
    /// Bytes (of [`crate::Entry::encoded_len`]) of entries in one append message; at least one
    /// entry is always sent.
    pub max_size_per_msg: u64,
    /// Bytes of committed entries in one `Ready`; 0 means `max_size_per_msg`.
    pub max_committed_size_per_ready: u64,
    /// Bytes of entry payload a leader holds uncommitted before it drops proposals; 0 means
    /// no limit.
    pub max_uncommitted_entries_size: u64,
    /// Append messages in flight to one follower in Replicate state.
    pub max_inflight_msgs: usize,
    /// Bytes in flight to one follower; 0 means no limit besides `max_inflight_msgs`.
    pub max_inflight_bytes: u64,
    /// Whether a leader steps down when it has not heard from a quorum for an election
    /// timeout (and followers ignore vote requests while they hear from a leader).
    pub check_quorum: bool,
    /// Whether a node first asks whether it could win (pre-vote) before raising its term.
    pub pre_vote: bool,
    /// How linearizable reads are confirmed.
    pub read_only_option: ReadOnlyOption,
    /// Whether followers drop proposals instead of forwarding them to the leader.
    pub disable_proposal_forwarding: bool,
    /// Whether a leader removed from (or demoted in) the configuration steps down when the
    /// change is applied.
    pub step_down_on_removal: bool,
    /// Mixed with `id` to seed the generator of randomized election timeouts, so that runs
    /// are reproducible and simulations can vary them.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: 0,
            election_tick: 10,
            heartbeat_tick: 1,
            applied: 0,
            max_size_per_msg: 1 << 20,
            max_committed_size_per_ready: 0,
            max_uncommitted_entries_size: 0,
            max_inflight_msgs: 256,
            max_inflight_bytes: 0,
            check_quorum: false,
            pre_vote: false,
            read_only_option: ReadOnlyOption::Safe,
            disable_proposal_forwarding: false,
            step_down_on_removal: false,
            seed: 0,
        }
    }
}

impl Config {
    /// A default configuration for node `id`.
    pub fn new(id: u64) -> Config {
        Config { id, ..Config::default() }
    }

    /// Checks that the parameters make sense together.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidConfig(why.to_string()));
        if self.id == 0 {
            return bad("id must not be 0");
        }
        if self.heartbeat_tick == 0 {
            return bad("heartbeat tick must be greater than 0");
        }
        if self.election_tick <= self.heartbeat_tick {
            return bad("election tick must be greater than heartbeat tick");
        }
        if self.max_inflight_msgs == 0 {
            return bad("max inflight messages must be greater than 0");
        }
        if self.read_only_option == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return bad("lease-based reads require check_quorum");
        }
        if self.max_inflight_bytes != 0 && self.max_inflight_bytes < self.max_size_per_msg {
            return bad("max inflight bytes must be at least max size per message");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_each_inconsistency() {
        assert!(Config::new(1).validate().is_ok());
        let cases = [
            Config::default(),
            Config { heartbeat_tick: 0, ..Config::new(1) },
            Config { election_tick: 1, heartbeat_tick: 1, ..Config::new(1) },
            Config { max_inflight_msgs: 0, ..Config::new(1) },
            Config { read_only_option: ReadOnlyOption::LeaseBased, ..Config::new(1) },
            Config { max_inflight_bytes: 10, max_size_per_msg: 100, ..Config::new(1) },
        ];
        for (k, c) in cases.iter().enumerate() {
            assert!(
                matches!(c.validate(), Err(Error::InvalidConfig(_))),
                "case {k} must be rejected"
            );
        }
        let lease = Config {
            read_only_option: ReadOnlyOption::LeaseBased,
            check_quorum: true,
            ..Config::new(1)
        };
        assert!(lease.validate().is_ok());
    }
}
