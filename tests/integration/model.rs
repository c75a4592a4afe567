//! A naive reference for the `Storage` contract, and random operation sequences to drive it.
//!
//! The model keeps the log in a `BTreeMap` and writes each rule out plainly, with no shared code
//! from the crate, so that a mistake in raftwal's shared argument checks shows up as a
//! difference.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use raftwal::{ConfState, Entry, HardState, RaftState, Snapshot, SnapshotMetadata, Storage};

pub use raftwal::fuzzing::Outcome;

#[derive(Debug, Default, Clone)]
pub struct Model {
    pub hard_state: HardState,
    pub snapshot: Snapshot,
    pub dummy: (u64, u64),
    pub log: BTreeMap<u64, Entry>,
}

impl Model {
    pub fn last(&self) -> u64 {
        self.log.keys().next_back().copied().unwrap_or(self.dummy.0)
    }

    pub fn append(&mut self, es: &[Entry]) -> Outcome<()> {
        if es.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Outcome::ContractViolation;
        }
        let kept: Vec<&Entry> = es.iter().filter(|e| e.index > self.dummy.0).collect();
        let Some(head) = kept.first() else {
            return Outcome::Ok(());
        };
        if head.index > self.last() + 1 {
            return Outcome::ContractViolation;
        }
        self.log.retain(|&i, _| i < head.index);
        for e in kept {
            self.log.insert(e.index, e.clone());
        }
        Outcome::Ok(())
    }

    pub fn compact(&mut self, index: u64) -> Outcome<()> {
        if index <= self.dummy.0 {
            return Outcome::Compacted;
        }
        if index > self.last() {
            return Outcome::ContractViolation;
        }
        self.dummy = (index, self.log[&index].term);
        self.log.retain(|&i, _| i > index);
        Outcome::Ok(())
    }

    pub fn create_snapshot(
        &mut self,
        index: u64,
        cs: Option<ConfState>,
        data: Bytes,
    ) -> Outcome<Snapshot> {
        if index <= self.snapshot.metadata.index {
            return Outcome::SnapshotOutOfDate;
        }
        let term = match self.term(index) {
            Outcome::Ok(t) => t,
            Outcome::Unavailable => return Outcome::ContractViolation,
            Outcome::Compacted => return Outcome::Compacted,
            other => panic!("model term gave {other:?}"),
        };
        let conf_state = cs.unwrap_or_else(|| self.snapshot.metadata.conf_state.clone());
        self.snapshot = Snapshot { metadata: SnapshotMetadata { index, term, conf_state }, data };
        Outcome::Ok(self.snapshot.clone())
    }

    pub fn apply_snapshot(&mut self, s: Snapshot) -> Outcome<()> {
        let current = self.snapshot.metadata.index;
        // Index 0 (a membership only) bootstraps a log that never held an entry or a snapshot,
        // and never wipes or replaces one.
        let held = self.snapshot.metadata != SnapshotMetadata::default();
        let wipes = s.metadata.index == 0 && (self.last() != 0 || held);
        if wipes || (current != 0 && current >= s.metadata.index) {
            return Outcome::SnapshotOutOfDate;
        }
        self.dummy = (s.metadata.index, s.metadata.term);
        self.log.clear();
        self.snapshot = s;
        Outcome::Ok(())
    }

    pub fn term(&self, index: u64) -> Outcome<u64> {
        if index < self.dummy.0 {
            Outcome::Compacted
        } else if index == self.dummy.0 {
            Outcome::Ok(self.dummy.1)
        } else {
            self.log.get(&index).map_or(Outcome::Unavailable, |e| Outcome::Ok(e.term))
        }
    }

    pub fn entries(&self, lo: u64, hi: u64, max: u64) -> Outcome<Vec<Entry>> {
        if lo <= self.dummy.0 {
            return Outcome::Compacted;
        }
        if hi > self.last() + 1 || lo > hi {
            return Outcome::ContractViolation;
        }
        if self.log.is_empty() {
            return Outcome::Unavailable;
        }
        let mut out = Vec::new();
        let mut total = 0u64;
        for e in self.log.range(lo..hi).map(|(_, e)| e) {
            total += e.encoded_len();
            if !out.is_empty() && total > max {
                break;
            }
            out.push(e.clone());
        }
        Outcome::Ok(out)
    }

    pub fn initial_state(&self) -> RaftState {
        RaftState {
            hard_state: self.hard_state,
            conf_state: self.snapshot.metadata.conf_state.clone(),
        }
    }
}

/// One step of a random workload. Indices are relative: each is resolved against the current
/// log when it runs, so most steps land near the log and exercise the interesting cases.
#[derive(Clone, Debug)]
pub enum Op {
    /// Append `len` entries starting `back` before last+1 (negative: a gap), with term bump `bump`.
    Append {
        back: i64,
        len: u64,
        bump: u64,
        size: usize,
    },
    SetHardState {
        term: u64,
        vote: u64,
        commit: u64,
    },
    /// Compact at last - `back`.
    Compact {
        back: u64,
    },
    /// Snapshot at last - `back`, with or without a new conf state.
    CreateSnapshot {
        back: u64,
        voters: Option<Vec<u64>>,
    },
    /// Apply a snapshot `ahead` past the current last index (may be 0 or behind: refused).
    ApplySnapshot {
        ahead: i64,
        term_bump: u64,
    },
    /// Close and reopen (a no-op for in-memory subjects).
    Reopen,
}

pub fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (-1i64..6, 0u64..6, 0u64..2, 0usize..300)
            .prop_map(|(back, len, bump, size)| Op::Append { back, len, bump, size }),
        1 => (0u64..10, 0u64..4, 0u64..20)
            .prop_map(|(term, vote, commit)| Op::SetHardState { term, vote, commit }),
        2 => (0u64..6).prop_map(|back| Op::Compact { back }),
        2 => (0u64..6, proptest::option::of(proptest::collection::vec(1u64..6, 1..4)))
            .prop_map(|(back, voters)| Op::CreateSnapshot { back, voters }),
        1 => (-3i64..4, 0u64..3).prop_map(|(ahead, term_bump)| Op::ApplySnapshot { ahead, term_bump }),
        1 => Just(Op::Reopen),
    ]
}

/// Resolves a relative op against the model's current state into concrete arguments, so that
/// the model and the subject receive exactly the same call.
#[derive(Clone, Debug)]
pub enum Call {
    Append(Vec<Entry>),
    SetHardState(HardState),
    Compact(u64),
    CreateSnapshot(u64, Option<ConfState>, Bytes),
    ApplySnapshot(Snapshot),
    Reopen,
}

pub fn resolve(op: &Op, model: &Model, step: usize) -> Call {
    let last = model.last();
    let last_term = model.term(last).into_ok().unwrap_or(0);
    match op {
        Op::Append { back, len, bump, size } => {
            let start = (last as i64 + 1 - back).max(0) as u64;
            let term = last_term + bump;
            let es = (start..start + len)
                .map(|i| {
                    let byte = (i as u8) ^ (step as u8);
                    Entry::new(i, term, vec![byte; (size + i as usize) % 300])
                })
                .collect();
            Call::Append(es)
        }
        Op::SetHardState { term, vote, commit } => {
            Call::SetHardState(HardState { term: *term, vote: *vote, commit: *commit })
        }
        Op::Compact { back } => Call::Compact(last.saturating_sub(*back)),
        Op::CreateSnapshot { back, voters } => Call::CreateSnapshot(
            last.saturating_sub(*back),
            voters.as_ref().map(|v| ConfState { voters: v.clone(), ..ConfState::default() }),
            Bytes::from(format!("state at step {step}")),
        ),
        Op::ApplySnapshot { ahead, term_bump } => {
            let index = (last as i64 + ahead).max(0) as u64;
            Call::ApplySnapshot(Snapshot {
                metadata: SnapshotMetadata {
                    index,
                    term: last_term + term_bump,
                    conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
                },
                data: Bytes::from(vec![step as u8; step % 50]),
            })
        }
        Op::Reopen => Call::Reopen,
    }
}

/// Asserts that every `Storage` answer of `subject` equals the model's, over every index from
/// below the dummy to past the end and a spread of ranges and size limits.
pub fn assert_same_answers(model: &Model, subject: &dyn Storage, context: &str) {
    if let Err(difference) = same_answers(model, subject) {
        panic!("{difference} {context}");
    }
}

/// The first answer where `subject` and the model differ, if any.
pub fn same_answers(model: &Model, subject: &dyn Storage) -> Result<(), String> {
    fn check<T: PartialEq + std::fmt::Debug>(what: String, got: T, want: T) -> Result<(), String> {
        if got == want { Ok(()) } else { Err(format!("{what}: got {got:?}, want {want:?}")) }
    }
    check(
        "first_index".into(),
        Outcome::from(subject.first_index()),
        Outcome::Ok(model.dummy.0 + 1),
    )?;
    check("last_index".into(), Outcome::from(subject.last_index()), Outcome::Ok(model.last()))?;
    check(
        "snapshot".into(),
        Outcome::from(subject.snapshot()),
        Outcome::Ok(model.snapshot.clone()),
    )?;
    check(
        "initial_state".into(),
        Outcome::from(subject.initial_state()),
        Outcome::Ok(model.initial_state()),
    )?;
    let lo_bound = model.dummy.0.saturating_sub(2);
    let hi_bound = model.last() + 3;
    for i in lo_bound..hi_bound {
        check(format!("term({i})"), Outcome::from(subject.term(i)), model.term(i))?;
    }
    for lo in lo_bound..hi_bound {
        for hi in [lo, lo + 1, lo + 3, model.last() + 1, model.last() + 2] {
            for max in [0, 100, 500, u64::MAX] {
                check(
                    format!("entries({lo}, {hi}, {max})"),
                    Outcome::from(subject.entries(lo, hi, max)),
                    model.entries(lo, hi, max),
                )?;
            }
        }
    }
    Ok(())
}

/// Runs `ops` on `subject` and on the naive model side by side, checking that every call answers
/// the same and that every `Storage` answer agrees after every step.
pub fn run_against_model(subject: &mut dyn crate::etcd_cases::Subject, ops: &[Op]) {
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let call = resolve(op, &model, step);
        let (got, want): (Outcome<()>, Outcome<()>) = match call.clone() {
            Call::Append(es) => (subject.append(&es).into(), model.append(&es)),
            Call::SetHardState(hs) => {
                model.hard_state = hs;
                (subject.set_hard_state(hs).into(), Outcome::Ok(()))
            }
            Call::Compact(i) => (subject.compact(i).into(), model.compact(i)),
            Call::CreateSnapshot(i, cs, data) => {
                let got = Outcome::from(subject.create_snapshot(i, cs.clone(), data.clone()));
                let want = model.create_snapshot(i, cs, data);
                assert_eq!(got, want, "step {step} {call:?}");
                (Outcome::Ok(()), Outcome::Ok(()))
            }
            Call::ApplySnapshot(s) => {
                (subject.apply_snapshot(s.clone()).into(), model.apply_snapshot(s))
            }
            Call::Reopen => {
                subject.reopen();
                (Outcome::Ok(()), Outcome::Ok(()))
            }
        };
        assert_eq!(got, want, "step {step} {call:?}");
        assert_same_answers(&model, subject.storage(), &format!("after step {step} {call:?}"));
    }
}
