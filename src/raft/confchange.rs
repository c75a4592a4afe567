//! Membership changes: computing the configuration and progress map that result from a
//! change, without touching the live tracker until the result is known to be valid.
//!
//! Depends on [`super::tracker`] (and the change types of [`super::message`]).

use std::collections::{BTreeMap, BTreeSet};

use super::message::{ConfChangeSingle, ConfChangeType};
use super::tracker::{Configuration, Progress, ProgressTracker};
use crate::types::ConfState;

/// A configuration and the progress of its members, as a change produces them.
pub type ChangeResult = Result<(Configuration, BTreeMap<u64, Progress>), String>;

/// Applies changes to a copy of a tracker's configuration.
pub struct Changer<'a> {
    /// The tracker whose configuration is the starting point.
    pub tracker: &'a ProgressTracker,
    /// The leader's last log index; new peers are probed at it.
    pub last_index: u64,
}

impl Changer<'_> {
    /// Enters a joint configuration: the current voters become the outgoing half and the
    /// changes are applied to the incoming half.
    pub fn enter_joint(&self, auto_leave: bool, changes: &[ConfChangeSingle]) -> ChangeResult {
        let (mut cfg, mut prs) = self.copy();
        if cfg.voters.is_joint() {
            return Err("configuration is already joint".into());
        }
        if cfg.voters.incoming.is_empty() {
            return Err("cannot make a zero-voter configuration joint".into());
        }
        cfg.voters.outgoing = cfg.voters.incoming.clone();
        self.apply(&mut cfg, &mut prs, changes)?;
        cfg.auto_leave = auto_leave;
        check(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    /// Leaves a joint configuration: the outgoing half is dropped, next learners become
    /// learners, and peers in neither the incoming half nor the learners lose their progress.
    pub fn leave_joint(&self) -> ChangeResult {
        let (mut cfg, mut prs) = self.copy();
        if !cfg.voters.is_joint() {
            return Err("cannot leave a non-joint configuration".into());
        }
        for id in std::mem::take(&mut cfg.learners_next) {
            cfg.learners.insert(id);
            prs.get_mut(&id).expect("a next learner has progress").is_learner = true;
        }
        let outgoing = std::mem::take(cfg.voters.outgoing.ids_mut());
        for id in outgoing {
            if !cfg.voters.incoming.contains(id) && !cfg.learners.contains(&id) {
                prs.remove(&id);
            }
        }
        cfg.auto_leave = false;
        check(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    /// Applies changes directly, outside joint consensus; at most one voter may change.
    pub fn simple(&self, changes: &[ConfChangeSingle]) -> ChangeResult {
        let (mut cfg, mut prs) = self.copy();
        if cfg.voters.is_joint() {
            return Err("cannot apply a simple change in a joint configuration".into());
        }
        self.apply(&mut cfg, &mut prs, changes)?;
        let before = self.tracker.conf.voters.incoming.ids();
        let after = cfg.voters.incoming.ids();
        if before.symmetric_difference(after).count() > 1 {
            return Err("more than one voter changed without entering a joint configuration".into());
        }
        check(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    fn copy(&self) -> (Configuration, BTreeMap<u64, Progress>) {
        (self.tracker.conf.clone(), self.tracker.progress.clone())
    }

    fn apply(
        &self,
        cfg: &mut Configuration,
        prs: &mut BTreeMap<u64, Progress>,
        changes: &[ConfChangeSingle],
    ) -> Result<(), String> {
        for cc in changes {
            // Id 0 marks a change the application decided not to carry out.
            if cc.node_id == 0 {
                continue;
            }
            match cc.change_type {
                ConfChangeType::AddNode => self.make_voter(cfg, prs, cc.node_id),
                ConfChangeType::AddLearnerNode => self.make_learner(cfg, prs, cc.node_id),
                ConfChangeType::RemoveNode => remove(cfg, prs, cc.node_id),
            }
        }
        if cfg.voters.incoming.is_empty() {
            return Err("removed all voters".into());
        }
        Ok(())
    }

    fn init_progress(
        &self,
        cfg: &mut Configuration,
        prs: &mut BTreeMap<u64, Progress>,
        id: u64,
        learner: bool,
    ) {
        if learner {
            cfg.learners.insert(id);
        } else {
            cfg.voters.incoming.ids_mut().insert(id);
        }
        // Probe from the last entry rather than after it: the first append then carries an
        // entry and goes out as soon as the change is applied, instead of being an empty
        // message that waits for the next heartbeat. The new peer most likely has no log and
        // rejects it, which starts the backtracking (or a snapshot) at once.
        let mut pr = Progress::new(
            self.last_index.max(1),
            self.tracker.max_inflight,
            self.tracker.max_inflight_bytes,
        );
        pr.is_learner = learner;
        // A new peer counts as active so that check-quorum does not immediately depose a
        // leader that just added it.
        pr.recent_active = true;
        prs.insert(id, pr);
    }

    fn make_voter(&self, cfg: &mut Configuration, prs: &mut BTreeMap<u64, Progress>, id: u64) {
        let Some(pr) = prs.get_mut(&id) else {
            self.init_progress(cfg, prs, id, false);
            return;
        };
        pr.is_learner = false;
        cfg.learners.remove(&id);
        cfg.learners_next.remove(&id);
        cfg.voters.incoming.ids_mut().insert(id);
    }

    fn make_learner(&self, cfg: &mut Configuration, prs: &mut BTreeMap<u64, Progress>, id: u64) {
        let Some(pr) = prs.get(&id) else {
            self.init_progress(cfg, prs, id, true);
            return;
        };
        if pr.is_learner {
            return;
        }
        let mut pr = pr.clone();
        // Drop it as an incoming voter, keeping its progress.
        remove(cfg, prs, id);
        if cfg.voters.outgoing.contains(id) {
            // Still an outgoing voter: it becomes a learner when the joint state is left.
            cfg.learners_next.insert(id);
        } else {
            pr.is_learner = true;
            cfg.learners.insert(id);
        }
        prs.insert(id, pr);
    }
}

fn remove(cfg: &mut Configuration, prs: &mut BTreeMap<u64, Progress>, id: u64) {
    if !prs.contains_key(&id) {
        return;
    }
    cfg.voters.incoming.ids_mut().remove(&id);
    cfg.learners.remove(&id);
    cfg.learners_next.remove(&id);
    // An outgoing voter keeps its progress until the joint state is left.
    if !cfg.voters.outgoing.contains(id) {
        prs.remove(&id);
    }
}

fn check(cfg: &Configuration, prs: &BTreeMap<u64, Progress>) -> Result<(), String> {
    for id in cfg.voters.ids().iter().chain(&cfg.learners).chain(&cfg.learners_next) {
        if !prs.contains_key(id) {
            return Err(format!("no progress for member {id}"));
        }
    }
    for id in &cfg.learners_next {
        if !cfg.voters.outgoing.contains(*id) {
            return Err(format!("next learner {id} is not an outgoing voter"));
        }
        if prs[id].is_learner {
            return Err(format!("next learner {id} is already marked learner"));
        }
    }
    for id in &cfg.learners {
        if cfg.voters.contains(*id) {
            return Err(format!("learner {id} is also a voter"));
        }
        if !prs[id].is_learner {
            return Err(format!("learner {id} is not marked learner"));
        }
    }
    if !cfg.voters.is_joint() {
        if !cfg.learners_next.is_empty() {
            return Err("next learners outside a joint configuration".into());
        }
        if cfg.auto_leave {
            return Err("auto leave outside a joint configuration".into());
        }
    }
    Ok(())
}

/// Whether two memberships are the same: each list compared as a set (a `ConfState` stored
/// or sent by another implementation need not be sorted), and `auto_leave` equal.
pub fn equivalent(a: &ConfState, b: &ConfState) -> bool {
    let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
    set(&a.voters) == set(&b.voters)
        && set(&a.learners) == set(&b.learners)
        && set(&a.voters_outgoing) == set(&b.voters_outgoing)
        && set(&a.learners_next) == set(&b.learners_next)
        && a.auto_leave == b.auto_leave
}

/// Builds the configuration a `ConfState` describes, as a sequence of valid changes from an
/// empty tracker: the outgoing voters one by one, then (if joint) entering the joint state.
/// A `ConfState` that no valid configuration matches (a learner that is also a voter, no
/// voter, a next learner that is not an outgoing voter, ...) is an error, whoever sent it.
pub fn restore(tracker: &ProgressTracker, last_index: u64, cs: &ConfState) -> ChangeResult {
    let single = |change_type, node_id| ConfChangeSingle { change_type, node_id };
    let mut incoming = Vec::new();
    let mut outgoing = Vec::new();
    for id in &cs.voters_outgoing {
        outgoing.push(single(ConfChangeType::AddNode, *id));
        incoming.push(single(ConfChangeType::RemoveNode, *id));
    }
    for id in &cs.voters {
        incoming.push(single(ConfChangeType::AddNode, *id));
    }
    for id in cs.learners.iter().chain(&cs.learners_next) {
        incoming.push(single(ConfChangeType::AddLearnerNode, *id));
    }
    let mut t = ProgressTracker::new(tracker.max_inflight, tracker.max_inflight_bytes);
    let step = |t: &mut ProgressTracker, r: ChangeResult| -> Result<(), String> {
        let (cfg, prs) = r?;
        t.conf = cfg;
        t.progress = prs;
        Ok(())
    };
    if outgoing.is_empty() {
        for cc in &incoming {
            let r = Changer { tracker: &t, last_index }.simple(std::slice::from_ref(cc));
            step(&mut t, r)?;
        }
    } else {
        for cc in &outgoing {
            let r = Changer { tracker: &t, last_index }.simple(std::slice::from_ref(cc));
            step(&mut t, r)?;
        }
        let r = Changer { tracker: &t, last_index }.enter_joint(cs.auto_leave, &incoming);
        step(&mut t, r)?;
    }
    // The changes above are each valid, but their sum may not be what `cs` says (a voter
    // also listed as learner ends up a learner only).
    let got = t.conf.to_conf_state();
    if !equivalent(&got, cs) {
        return Err(format!("{cs:?} is not a valid configuration (it restores as {got:?})"));
    }
    Ok((t.conf, t.progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: u64) -> ConfChangeSingle {
        ConfChangeSingle { change_type: ConfChangeType::AddNode, node_id: id }
    }
    fn learner(id: u64) -> ConfChangeSingle {
        ConfChangeSingle { change_type: ConfChangeType::AddLearnerNode, node_id: id }
    }
    fn rm(id: u64) -> ConfChangeSingle {
        ConfChangeSingle { change_type: ConfChangeType::RemoveNode, node_id: id }
    }

    fn tracker_of(cs: &ConfState) -> ProgressTracker {
        let mut t = ProgressTracker::new(16, 0);
        let (cfg, prs) = restore(&t, 10, cs).unwrap();
        t.conf = cfg;
        t.progress = prs;
        t.check_invariants();
        t
    }

    #[test]
    fn restore_round_trips_simple_and_joint_states() {
        let simple = ConfState { voters: vec![1, 2, 3], learners: vec![4], ..ConfState::default() };
        assert_eq!(tracker_of(&simple).conf_state(), simple);
        let joint = ConfState {
            voters: vec![1, 2, 5],
            learners: vec![4],
            voters_outgoing: vec![1, 2, 3],
            learners_next: vec![3],
            auto_leave: true,
        };
        assert_eq!(tracker_of(&joint).conf_state(), joint);
    }

    #[test]
    fn restore_accepts_lists_in_any_order_and_refuses_impossible_ones() {
        let unsorted = ConfState {
            voters: vec![5, 2, 1],
            learners: vec![6, 4],
            voters_outgoing: vec![3, 1, 2],
            learners_next: vec![3],
            auto_leave: true,
        };
        let cs = tracker_of(&unsorted).conf_state();
        assert!(equivalent(&cs, &unsorted));
        assert_eq!(cs.voters, vec![1, 2, 5], "held sorted");
        assert_eq!(cs.learners, vec![4, 6]);
        assert_eq!(cs.voters_outgoing, vec![1, 2, 3]);

        let t = ProgressTracker::new(16, 0);
        let impossible = [
            ConfState { voters: vec![1, 2], learners: vec![2], ..ConfState::default() },
            ConfState { learners: vec![2], ..ConfState::default() },
            ConfState {
                voters: vec![1],
                voters_outgoing: vec![1],
                learners_next: vec![3],
                ..ConfState::default()
            },
            ConfState { voters: vec![1], auto_leave: true, ..ConfState::default() },
        ];
        for cs in impossible {
            assert!(restore(&t, 10, &cs).is_err(), "{cs:?}");
        }
    }

    #[test]
    fn equivalence_compares_each_list_as_a_set_and_auto_leave() {
        let a = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
        let b = ConfState { voters: vec![3, 1, 2], ..ConfState::default() };
        assert!(equivalent(&a, &b));
        let moved = ConfState { voters: vec![1, 2], learners: vec![3], ..ConfState::default() };
        assert!(!equivalent(&a, &moved), "a voter is not a learner");
        let joint = ConfState { voters_outgoing: vec![1, 2, 3], ..b.clone() };
        assert!(!equivalent(&a, &joint));
        assert!(!equivalent(&joint, &ConfState { auto_leave: true, ..joint.clone() }));
    }

    #[test]
    fn simple_change_of_two_voters_is_refused() {
        let t = tracker_of(&ConfState { voters: vec![1], ..ConfState::default() });
        let c = Changer { tracker: &t, last_index: 5 };
        assert!(c.simple(&[add(2)]).is_ok());
        let err = c.simple(&[add(2), add(3)]).unwrap_err();
        assert!(err.contains("more than one voter"), "{err}");
        // Adding learners does not change voters.
        assert!(c.simple(&[learner(2), learner(3)]).is_ok());
    }

    #[test]
    fn removing_every_voter_is_refused() {
        let t = tracker_of(&ConfState { voters: vec![1], ..ConfState::default() });
        let c = Changer { tracker: &t, last_index: 5 };
        assert_eq!(c.simple(&[rm(1)]).unwrap_err(), "removed all voters");
    }

    #[test]
    fn joint_demotion_goes_through_learners_next() {
        let mut t = tracker_of(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() });
        let (cfg, prs) = Changer { tracker: &t, last_index: 5 }
            .enter_joint(false, &[learner(3), add(4)])
            .unwrap();
        t.conf = cfg;
        t.progress = prs;
        t.check_invariants();
        let cs = t.conf_state();
        assert_eq!(cs.voters, vec![1, 2, 4]);
        assert_eq!(cs.voters_outgoing, vec![1, 2, 3]);
        assert_eq!(cs.learners_next, vec![3]);
        assert!(cs.learners.is_empty(), "3 still votes in the outgoing half");
        assert!(
            Changer { tracker: &t, last_index: 5 }.enter_joint(true, &[]).is_err(),
            "cannot enter joint twice"
        );

        let (cfg, prs) = Changer { tracker: &t, last_index: 5 }.leave_joint().unwrap();
        t.conf = cfg;
        t.progress = prs;
        t.check_invariants();
        let cs = t.conf_state();
        assert_eq!(cs.voters, vec![1, 2, 4]);
        assert_eq!(cs.learners, vec![3]);
        assert!(cs.voters_outgoing.is_empty());
        assert!(t.progress[&3].is_learner);
    }

    #[test]
    fn leaving_joint_drops_removed_voters_progress() {
        let mut t = tracker_of(&ConfState { voters: vec![1, 2, 3], ..ConfState::default() });
        let (cfg, prs) =
            Changer { tracker: &t, last_index: 5 }.enter_joint(true, &[rm(3)]).unwrap();
        assert!(prs.contains_key(&3), "an outgoing voter keeps its progress");
        t.conf = cfg;
        t.progress = prs;
        let (cfg, prs) = Changer { tracker: &t, last_index: 5 }.leave_joint().unwrap();
        assert!(!prs.contains_key(&3));
        assert!(!cfg.auto_leave);
        assert!(
            Changer { tracker: &t, last_index: 5 }.simple(&[add(9)]).is_err(),
            "no simple change while joint"
        );
    }
}
