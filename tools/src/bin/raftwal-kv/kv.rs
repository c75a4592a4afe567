//! The replicated state machine: a map from keys to values, the commands that change it (the
//! data of `Normal` log entries), the context of membership changes, and the snapshot image.
//!
//! Everything here is JSON (serde_json): entries and snapshots are small, and a person reading
//! `raftwal dump` output can see what was proposed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Identifies one client request, so that the node which proposed it can answer the waiting
/// HTTP request when the entry is applied. `incarnation` tells a restarted process's requests
/// from those of its previous run, which may still commit after the restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// The node that proposed the request.
    pub node: u64,
    /// The proposing process's start time (nanoseconds since the epoch).
    pub incarnation: u64,
    /// A counter within the process.
    pub seq: u64,
}

/// A change to the map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Removes `key` (a no-op if it is absent).
    Delete {
        /// The key.
        key: String,
    },
}

/// The data of a `Normal` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Who waits for this command.
    pub req: RequestId,
    /// What it does.
    pub op: Op,
}

/// The context of a membership change: who waits for it and, for an added node, the address
/// its peers reach it at. The changes `RawNode::bootstrap` writes carry an empty context (the
/// first members' addresses come from the command line).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberContext {
    /// Who waits for this change.
    pub req: Option<RequestId>,
    /// The Raft address of the added node.
    pub addr: Option<String>,
}

/// Requests of one node applied lately, so that a node which catches up by snapshot can answer
/// the requests it was waiting for whose entries the snapshot covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRequests {
    /// The proposing process; requests of an older one are forgotten (nobody waits for them).
    pub incarnation: u64,
    /// Outcome by sequence number: whether the request took effect (a membership change can be
    /// refused). Holds the newest [`REMEMBERED_REQUESTS`].
    pub outcomes: BTreeMap<u64, bool>,
}

/// Applied requests remembered per node. A request waits at most the request timeout; one that
/// a node proposed this many requests ago has been answered or given up long since (and if not,
/// its client gets the 503 of a timeout, as for any request whose outcome the node cannot tell).
pub const REMEMBERED_REQUESTS: usize = 1024;

/// The state machine, and its snapshot image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    /// The replicated map.
    pub data: BTreeMap<String, String>,
    /// Raft addresses of the nodes added through membership changes, so that a node restored
    /// from a snapshot can reach members the command line does not name.
    pub addrs: BTreeMap<u64, String>,
    /// Recently applied requests by proposing node.
    #[serde(default)]
    pub applied: BTreeMap<u64, AppliedRequests>,
}

impl KvState {
    /// Records that request `req` was applied, with its outcome.
    pub fn record(&mut self, req: RequestId, took_effect: bool) {
        let node = self.applied.entry(req.node).or_default();
        if req.incarnation < node.incarnation {
            return; // A request of a process that has restarted since: nobody waits for it.
        }
        if req.incarnation > node.incarnation {
            *node = AppliedRequests { incarnation: req.incarnation, outcomes: BTreeMap::new() };
        }
        node.outcomes.insert(req.seq, took_effect);
        // Bounded: the oldest requests go first.
        while node.outcomes.len() > REMEMBERED_REQUESTS {
            node.outcomes.pop_first();
        }
    }

    /// The outcome of request `req`, if it was applied and is still remembered.
    pub fn outcome(&self, req: &RequestId) -> Option<bool> {
        let node = self.applied.get(&req.node).filter(|n| n.incarnation == req.incarnation)?;
        node.outcomes.get(&req.seq).copied()
    }

    /// Applies one command.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Put { key, value } => {
                self.data.insert(key.clone(), value.clone());
            }
            Op::Delete { key } => {
                self.data.remove(key);
            }
        }
    }

    /// The snapshot image.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map of strings serializes")
    }

    /// The state an image stands for; the empty image (no snapshot yet) is the empty state.
    pub fn decode(image: &[u8]) -> Result<KvState, serde_json::Error> {
        if image.is_empty() {
            return Ok(KvState::default());
        }
        serde_json::from_slice(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_round_trips_and_empty_image_is_empty_state() {
        let mut kv = KvState::default();
        kv.apply(&Op::Put { key: "a".into(), value: "1".into() });
        kv.apply(&Op::Put { key: "b".into(), value: "2".into() });
        kv.apply(&Op::Delete { key: "a".into() });
        kv.addrs.insert(4, "127.0.0.1:1".into());
        assert_eq!(KvState::decode(&kv.encode()).unwrap(), kv);
        assert_eq!(kv.data.get("a"), None);
        assert_eq!(kv.data.get("b").map(String::as_str), Some("2"));
        assert_eq!(KvState::decode(b"").unwrap(), KvState::default());
        assert!(KvState::decode(b"{not json").is_err());
    }

    #[test]
    fn applied_requests_are_remembered_per_node_within_the_bound() {
        let req = |incarnation, seq| RequestId { node: 1, incarnation, seq };
        let mut kv = KvState::default();
        kv.record(req(5, 1), true);
        kv.record(req(5, 2), false);
        assert_eq!(kv.outcome(&req(5, 1)), Some(true));
        assert_eq!(kv.outcome(&req(5, 2)), Some(false));
        assert_eq!(kv.outcome(&req(5, 3)), None);
        assert_eq!(KvState::decode(&kv.encode()).unwrap(), kv, "the image carries them");
        // An older process's request is not recorded; a newer process replaces the older's.
        kv.record(req(4, 9), true);
        assert_eq!(kv.outcome(&req(4, 9)), None);
        kv.record(req(6, 1), true);
        assert_eq!((kv.outcome(&req(5, 1)), kv.outcome(&req(6, 1))), (None, Some(true)));
        for seq in 2..=REMEMBERED_REQUESTS as u64 + 1 {
            kv.record(req(6, seq), true);
        }
        assert_eq!(kv.applied[&1].outcomes.len(), REMEMBERED_REQUESTS);
        assert_eq!(kv.outcome(&req(6, 1)), None, "the oldest is forgotten first");
        assert_eq!(kv.outcome(&req(6, 2)), Some(true));
        // An image written before requests were recorded still decodes.
        assert!(KvState::decode(br#"{"data":{},"addrs":{}}"#).unwrap().applied.is_empty());
    }
}
