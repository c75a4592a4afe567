//! What the seeded Raft simulations share: the key-value state machine their clusters serve,
//! its operations, and the Wing-Gong-Lowe linearizability check of a history of them against a
//! register model.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

/// The replicated state machine: a few keys, plus the ids of applied operations so that an
/// operation proposed twice (a duplicated forward) takes effect once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Kv {
    pub(crate) data: BTreeMap<String, String>,
    pub(crate) seen: BTreeSet<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Put(String, String),
    /// A read through the log.
    Get(String),
    Cas(String, String, String),
    /// A read through `read_index`, served locally once the read index is applied.
    Read(String),
}

impl Op {
    pub(crate) fn encode(&self, id: u64) -> Bytes {
        let s = match self {
            Op::Put(k, v) => format!("{id} put {k} {v}"),
            Op::Get(k) => format!("{id} get {k}"),
            Op::Cas(k, e, v) => format!("{id} cas {k} {e} {v}"),
            Op::Read(_) => unreachable!("reads do not go through the log"),
        };
        Bytes::from(s)
    }

    pub(crate) fn decode(data: &[u8]) -> (u64, Op) {
        let s = std::str::from_utf8(data).unwrap();
        let p: Vec<&str> = s.split(' ').collect();
        let id = p[0].parse().unwrap();
        let op = match p[1] {
            "put" => Op::Put(p[2].into(), p[3].into()),
            "get" => Op::Get(p[2].into()),
            "cas" => Op::Cas(p[2].into(), p[3].into(), p[4].into()),
            other => panic!("unknown op {other}"),
        };
        (id, op)
    }
}

impl Kv {
    /// Applies an operation; returns its result, or None if it was applied before.
    pub(crate) fn apply(&mut self, id: u64, op: &Op) -> Option<String> {
        if !self.seen.insert(id) {
            return None;
        }
        let get = |d: &BTreeMap<String, String>, k: &str| d.get(k).cloned().unwrap_or_default();
        Some(match op {
            Op::Put(k, v) => {
                self.data.insert(k.clone(), v.clone());
                "ok".into()
            }
            Op::Get(k) | Op::Read(k) => get(&self.data, k),
            Op::Cas(k, e, v) => {
                let cur = get(&self.data, k);
                if &cur == e {
                    self.data.insert(k.clone(), v.clone());
                    "swapped".into()
                } else {
                    format!("failed:{cur}")
                }
            }
        })
    }

    pub(crate) fn encode(&self) -> Bytes {
        let mut s = String::new();
        for (k, v) in &self.data {
            s.push_str(&format!("{k}={v};"));
        }
        s.push('|');
        for id in &self.seen {
            s.push_str(&format!("{id},"));
        }
        Bytes::from(s)
    }

    pub(crate) fn decode(b: &[u8]) -> Kv {
        let s = std::str::from_utf8(b).unwrap();
        let mut kv = Kv::default();
        if s.is_empty() {
            return kv;
        }
        let (data, seen) = s.split_once('|').unwrap();
        for pair in data.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            kv.data.insert(k.into(), v.into());
        }
        for id in seen.split(',').filter(|p| !p.is_empty()) {
            kv.seen.insert(id.parse().unwrap());
        }
        kv
    }
}

/// One client operation as the checker sees it: when it was invoked and when (and with what
/// result) it returned, on a logical clock that counts events.
#[derive(Clone, Debug)]
pub(crate) struct HistOp {
    pub(crate) op: Op,
    pub(crate) call: u64,
    pub(crate) ret: Option<u64>,
    pub(crate) result: Option<String>,
}

impl Op {
    pub(crate) fn key(&self) -> &str {
        match self {
            Op::Put(k, _) | Op::Get(k) | Op::Cas(k, _, _) | Op::Read(k) => k,
        }
    }
}

/// The register model of one key: the state after `op` if `op` could return `result` (None:
/// the op never returned, any result goes) from `state`.
pub(crate) fn model_step(state: &str, op: &Op, result: Option<&str>) -> Option<String> {
    let allows = |want: &str| result.is_none_or(|r| r == want);
    match op {
        Op::Put(_, v) => allows("ok").then(|| v.clone()),
        Op::Get(_) | Op::Read(_) => allows(state).then(|| state.to_string()),
        Op::Cas(_, e, v) if state == e => allows("swapped").then(|| v.clone()),
        Op::Cas(..) => allows(&format!("failed:{state}")).then(|| state.to_string()),
    }
}

/// Limit on operations per key in one history: the search tracks them in a `u128`.
pub(crate) const MAX_OPS_PER_KEY: usize = 120;
/// Limit on search states per key; far above what the histories here need.
const MAX_SEARCH_STATES: usize = 1 << 20;

/// Wing and Gong's search with Lowe's memoization: is there an order of the operations,
/// consistent with real time (an op returned before another was called comes first), in
/// which every returned result is what the register model gives? Ops that never returned
/// may take effect at any point after their call, or never.
pub(crate) fn linearizable(ops: &[HistOp]) -> bool {
    assert!(ops.len() <= MAX_OPS_PER_KEY, "{} ops exceed the checker's limit", ops.len());
    fn search(
        ops: &[HistOp],
        done: u128,
        state: String,
        memo: &mut std::collections::HashSet<(u128, String)>,
    ) -> bool {
        let open = |i: usize| done & (1u128 << i) == 0;
        // The earliest return among ops not yet placed: only ops called before it can come
        // next.
        let Some(min_ret) = (0..ops.len()).filter(|i| open(*i)).filter_map(|i| ops[i].ret).min()
        else {
            return true; // every returned op is placed
        };
        for (i, o) in ops.iter().enumerate() {
            if !open(i) || o.call > min_ret {
                continue;
            }
            let Some(next) = model_step(&state, &o.op, o.result.as_deref()) else {
                continue;
            };
            let placed = done | (1u128 << i);
            assert!(memo.len() < MAX_SEARCH_STATES, "linearizability search too large");
            if memo.insert((placed, next.clone())) && search(ops, placed, next, memo) {
                return true;
            }
        }
        false
    }
    search(ops, 0, String::new(), &mut std::collections::HashSet::new())
}
