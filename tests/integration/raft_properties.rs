//! The safety properties of the Raft paper (Figure 3), each checked after every step of
//! randomized runs: nodes campaign, clients propose, links are cut and healed, nodes
//! restart from their storage.

use std::collections::BTreeMap;

use raftwal::Entry;
use raftwal::raft::StateRole;
use raftwal::rng::Rng;

use crate::raft_net::Network;

/// Seeds per property; each run is short.
const SEEDS: u64 = 12;
const STEPS: usize = 120;

/// What a checker sees after each step.
struct View<'a> {
    net: &'a mut Network,
    /// Leader of each term seen so far.
    leaders: &'a mut BTreeMap<u64, u64>,
}

/// Runs a randomized history over a five-node cluster and calls `check` after every step.
fn explore(seed: u64, mut check: impl FnMut(&mut View<'_>)) {
    let ids = [1u64, 2, 3, 4, 5];
    let mut net = Network::new(&ids);
    let mut rng = Rng::new(seed);
    let mut leaders = BTreeMap::new();
    for step in 0..STEPS {
        match rng.below(10) {
            0 => {
                net.heal();
                // Cut a random minority or majority off.
                for id in ids {
                    if rng.below(3) == 0 {
                        net.isolate(id);
                    }
                }
            }
            1 => net.heal(),
            2 => {
                let id = ids[rng.below(5) as usize];
                net.restart(id);
            }
            3 => {
                let id = ids[rng.below(5) as usize];
                let _ = net.node(id).raw.campaign();
            }
            _ => {
                let id = ids[rng.below(5) as usize];
                let _ = net.node(id).raw.propose(format!("s{seed}-{step}"));
            }
        }
        for _ in 0..rng.below(3) {
            for id in ids {
                net.node(id).raw.tick();
            }
        }
        net.stabilize();
        check(&mut View { net: &mut net, leaders: &mut leaders });
    }
}

fn log_terms(log: &[Entry]) -> BTreeMap<u64, &Entry> {
    log.iter().map(|e| (e.index, e)).collect()
}

#[test]
fn election_safety_at_most_one_leader_per_term() {
    for seed in 0..SEEDS {
        explore(seed, |v| {
            for (id, n) in &v.net.nodes {
                if n.state() == StateRole::Leader {
                    let prev = *v.leaders.entry(n.term()).or_insert(*id);
                    assert_eq!(prev, *id, "seed {seed}: term {} has two leaders", n.term());
                }
            }
        });
    }
}

#[test]
fn leader_append_only_a_leader_never_overwrites_or_deletes_its_entries() {
    for seed in 0..SEEDS {
        // (leader, term) -> its log when last seen.
        let mut seen: BTreeMap<(u64, u64), Vec<Entry>> = BTreeMap::new();
        explore(seed, |v| {
            for (id, n) in &v.net.nodes {
                if n.state() != StateRole::Leader {
                    continue;
                }
                let log = n.log();
                if let Some(before) = seen.get(&(*id, n.term())) {
                    assert!(
                        log.len() >= before.len() && log[..before.len()] == before[..],
                        "seed {seed}: leader {id} of term {} changed its log",
                        n.term()
                    );
                }
                seen.insert((*id, n.term()), log);
            }
        });
    }
}

#[test]
fn log_matching_same_index_and_term_means_same_prefix() {
    for seed in 0..SEEDS {
        explore(seed, |v| {
            let logs: Vec<(u64, Vec<Entry>)> =
                v.net.nodes.iter().map(|(id, n)| (*id, n.log())).collect();
            for (a, la) in &logs {
                for (b, lb) in &logs {
                    if a >= b {
                        continue;
                    }
                    let mb = log_terms(lb);
                    // Find the highest index where both hold the same term...
                    let top = la
                        .iter()
                        .rev()
                        .find(|e| mb.get(&e.index).is_some_and(|o| o.term == e.term));
                    let Some(top) = top else { continue };
                    // ...then every entry both hold up to it must be identical.
                    for e in la.iter().filter(|e| e.index <= top.index) {
                        if let Some(o) = mb.get(&e.index) {
                            assert_eq!(
                                *o, e,
                                "seed {seed}: nodes {a} and {b} agree at {} but differ at {}",
                                top.index, e.index
                            );
                        }
                    }
                }
            }
        });
    }
}

#[test]
fn leader_completeness_committed_entries_are_in_every_later_leaders_log() {
    for seed in 0..SEEDS {
        // index -> (entry, highest term in the cluster when it was first seen applied)
        let mut committed: BTreeMap<u64, (Entry, u64)> = BTreeMap::new();
        explore(seed, |v| {
            let max_term = v.net.nodes.values().map(|n| n.term()).max().unwrap();
            for n in v.net.nodes.values() {
                for e in &n.applied {
                    committed.entry(e.index).or_insert((e.clone(), max_term));
                }
            }
            for (id, n) in &v.net.nodes {
                if n.state() != StateRole::Leader {
                    continue;
                }
                let log: BTreeMap<u64, Entry> = n.log().into_iter().map(|e| (e.index, e)).collect();
                for (index, (e, seen_at)) in &committed {
                    if n.term() > *seen_at {
                        assert_eq!(
                            log.get(index),
                            Some(e),
                            "seed {seed}: leader {id} of term {} lacks committed {index}",
                            n.term()
                        );
                    }
                }
            }
        });
    }
}

#[test]
fn state_machine_safety_applied_sequences_are_prefixes_of_each_other() {
    for seed in 0..SEEDS {
        let mut applied_any = false;
        explore(seed, |v| {
            let seqs: Vec<&Vec<Entry>> = v.net.nodes.values().map(|n| &n.applied).collect();
            for a in &seqs {
                for b in &seqs {
                    let k = a.len().min(b.len());
                    assert_eq!(a[..k], b[..k], "seed {seed}: applied sequences diverge");
                }
            }
            applied_any |= seqs.iter().any(|s| s.len() > 1);
        });
        assert!(applied_any, "seed {seed}: nothing was ever applied");
    }
}
