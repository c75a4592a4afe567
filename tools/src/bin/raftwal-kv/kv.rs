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

/// The state machine, and its snapshot image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    /// The replicated map.
    pub data: BTreeMap<String, String>,
    /// Raft addresses of the nodes added through membership changes, so that a node restored
    /// from a snapshot can reach members the command line does not name.
    pub addrs: BTreeMap<u64, String>,
}

impl KvState {
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
}
