//! The node's own index of the membership: foca keeps its members in a list it scans linearly, so
//! every lookup by machine ID, every random choice and every liveness question the node asks goes
//! here instead, in O(1).
//!
//! The roster follows foca: foca's notifications (up, down, renamed) are exact, and the suspicion
//! changes foca does not notify (a member suspected, or refuting) are applied here by SWIM's order
//! of precedence as the node passes the same updates to foca. [`Roster::reconcile`] re-reads foca's
//! list every anti-entropy interval and corrects any drift, so the roster is a cache of foca's state,
//! never a second source of truth.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use foca::{Incarnation, Member, State};
use rand::rngs::StdRng;
use rand::RngExt;

use crate::dense::Dense;
use crate::store::{bucket_of, member_contribution, BUCKETS};
use crate::types::{MachineId, NodeIdentity};

/// What the node knows of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    /// The member's current identity (its life).
    pub(crate) identity: NodeIdentity,
    /// foca's incarnation (bumped by the member to refute suspicion).
    pub(crate) incarnation: Incarnation,
    /// Alive, suspect or down.
    pub(crate) state: State,
    /// When `state` (or the identity) last changed, on this node's clock.
    pub(crate) since: Instant,
}

/// Every member foca knows (never this node), by machine ID, plus the live ones in a vector for
/// uniform random choice.
///
/// Members are found by a hash of their machine ID, which every datagram, membership update and
/// push looks up, and walked in machine-ID order, so that a seeded run makes the same choices every
/// time ([`Dense`]). No hashed map is ever walked.
#[derive(Debug)]
pub(crate) struct Roster {
    known: Dense<Known>,
    live: Vec<MachineId>,
    live_at: HashMap<MachineId, usize, foldhash::fast::RandomState>,
    /// Per bucket (of the store's [`BUCKETS`]), the wrapping sum of its members' contributions:
    /// anti-entropy compares memberships with it.
    sums: Vec<u64>,
    /// Counts the changes of what [`crate::core::Node::liveness`] shows: a member's identity, state
    /// or `since`, a member added or forgotten.
    generation: u64,
    /// The members in state suspect, in machine-ID order (kept with every change, so that a reader
    /// of the suspects does not walk the whole membership).
    suspects: BTreeSet<MachineId>,
    /// The members whose entry changed (with `generation`) since [`Roster::take_changed`].
    changed: crate::types::Changed,
}

impl Default for Roster {
    fn default() -> Self {
        Roster {
            known: Dense::default(),
            live: Vec::new(),
            live_at: HashMap::default(),
            sums: vec![0; BUCKETS],
            generation: 0,
            suspects: BTreeSet::new(),
            changed: Default::default(),
        }
    }
}

fn contribution(k: &Known) -> u64 {
    member_contribution(
        &k.identity.machine_id,
        k.identity.incarnation,
        k.state == State::Down,
    )
}

/// SWIM's order of precedence (the paper's section 4.2, which foca implements): may a member in
/// `state` at `incarnation` move to `to` at `to_inc`?
pub(crate) fn precedes(
    state: State,
    incarnation: Incarnation,
    to: State,
    to_inc: Incarnation,
) -> bool {
    match (state, to) {
        (State::Down, _) => false,
        (_, State::Down) => true,
        (State::Alive, State::Alive) => to_inc > incarnation,
        (State::Alive, State::Suspect) => to_inc >= incarnation,
        (State::Suspect, _) => to_inc > incarnation,
    }
}

impl Roster {
    pub(crate) fn get(&self, id: &MachineId) -> Option<&Known> {
        self.known.get(id)
    }

    /// The membership's per-bucket sums (this node itself not included).
    pub(crate) fn sums(&self) -> &[u64] {
        &self.sums
    }

    /// The members in `buckets` (of `count`), as foca members.
    /// In machine-ID order; only those buckets' members are visited.
    pub(crate) fn members_of(&self, buckets: &[u16], count: usize) -> Vec<Member<NodeIdentity>> {
        self.known
            .in_buckets(buckets, count)
            .into_iter()
            .map(|(_, k)| Member::new(k.identity.clone(), k.incarnation, k.state))
            .collect()
    }

    fn add_sum(&mut self, k: &Known, sign: bool) {
        let b = bucket_of(&k.identity.machine_id);
        let c = contribution(k);
        self.sums[b] = if sign {
            self.sums[b].wrapping_add(c)
        } else {
            self.sums[b].wrapping_sub(c)
        };
    }

    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Every member, in machine-ID order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&MachineId, &Known)> {
        self.known.iter()
    }

    /// Up to `k` distinct live members chosen uniformly at random, none of them `except`.
    pub(crate) fn random_live(
        &self,
        rng: &mut StdRng,
        k: usize,
        except: Option<&MachineId>,
    ) -> Vec<MachineId> {
        let n = self.live.len();
        let mut out: Vec<MachineId> = Vec::with_capacity(k.min(n));
        if n == 0 || k == 0 {
            return out;
        }
        // A few rejection-sampled draws are O(k) for k much smaller than n; small sets are walked.
        if n <= 2 * k + 2 {
            let mut all: Vec<&MachineId> =
                self.live.iter().filter(|m| Some(*m) != except).collect();
            while !all.is_empty() && out.len() < k {
                let i = rng.random_range(0..all.len());
                out.push(all.swap_remove(i).clone());
            }
            return out;
        }
        let mut tries = 0;
        while out.len() < k && tries < 8 * k {
            tries += 1;
            let pick = &self.live[rng.random_range(0..n)];
            if Some(pick) != except && !out.contains(pick) {
                out.push(pick.clone());
            }
        }
        out
    }

    fn set_live(&mut self, id: &MachineId, live: bool) {
        match (live, self.live_at.get(id).copied()) {
            (true, None) => {
                self.live_at.insert(id.clone(), self.live.len());
                self.live.push(id.clone());
            }
            (false, Some(i)) => {
                self.live_at.remove(id);
                self.live.swap_remove(i);
                if let Some(moved) = self.live.get(i) {
                    self.live_at.insert(moved.clone(), i);
                }
            }
            _ => {}
        }
    }

    /// How many times a member's identity, state or `since` changed, or a member came or went (the
    /// count goes on across [`Roster::reconcile`]'s rebuild).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The members whose identity, state or `since` changed, or that came or went, since the last
    /// call (each such change also moves [`Roster::generation`]).
    pub(crate) fn take_changed(&mut self) -> crate::types::Changed {
        self.changed.take()
    }

    /// The members in state suspect, in machine-ID order.
    pub(crate) fn suspects(&self) -> impl Iterator<Item = &MachineId> {
        self.suspects.iter()
    }

    fn put(&mut self, known: Known) {
        let id = known.identity.machine_id.clone();
        let differs = self.known.get(&id).is_none_or(|old| {
            old.identity != known.identity || old.state != known.state || old.since != known.since
        });
        if differs {
            self.generation += 1;
            self.changed.mark(&id);
        }
        if known.state == State::Suspect {
            self.suspects.insert(id.clone());
        } else {
            self.suspects.remove(&id);
        }
        self.set_live(&id, known.state != State::Down);
        self.add_sum(&known, true);
        if let Some(old) = self.known.insert(id, known) {
            self.add_sum(&old, false);
        }
    }

    /// An update the node passes to foca, applied by SWIM's rules to the same identity only: foca
    /// resolves a change of identity itself and notifies it ([`Roster::renamed`]). Members first
    /// learned as down are recorded here too (foca notifies only members that come up). Returns
    /// true if the member's liveness changed.
    pub(crate) fn observe(&mut self, update: &Member<NodeIdentity>, now: Instant) -> bool {
        let id = update.id();
        match self.get(&id.machine_id) {
            Some(k) if k.identity == *id => {
                if precedes(k.state, k.incarnation, update.state(), update.incarnation()) {
                    let changed = k.state != update.state();
                    let mut next = k.clone();
                    next.incarnation = update.incarnation();
                    if changed {
                        next.state = update.state();
                        next.since = now;
                    }
                    self.put(next);
                    changed
                } else {
                    false
                }
            }
            Some(_) => false,
            None => {
                if update.state() == State::Down {
                    self.put(Known {
                        identity: id.clone(),
                        incarnation: update.incarnation(),
                        state: State::Down,
                        since: now,
                    });
                }
                false
            }
        }
    }

    /// foca notified that `id` is up (new, back, or a new life).
    pub(crate) fn up(&mut self, id: &NodeIdentity, now: Instant) {
        let incarnation = match self.get(&id.machine_id) {
            Some(k) if k.identity == *id => k.incarnation,
            _ => 0,
        };
        self.put(Known {
            identity: id.clone(),
            incarnation,
            state: State::Alive,
            since: now,
        });
    }

    /// foca notified that `id` is down.
    pub(crate) fn down(&mut self, id: &NodeIdentity, now: Instant) {
        let incarnation = match self.get(&id.machine_id) {
            Some(k) if k.identity == *id => k.incarnation,
            _ => 0,
        };
        self.put(Known {
            identity: id.clone(),
            incarnation,
            state: State::Down,
            since: now,
        });
    }

    /// foca notified that `new` replaced `old` (a restart or a renewal). foca gives the new life
    /// the state and incarnation of the update that introduced it, `held` (what foca holds for
    /// `new` now, if the caller looked): the old life's state is not the new one's (a suspected
    /// life replaced by its successor's own word is not suspected any more).
    pub(crate) fn renamed(
        &mut self,
        new: &NodeIdentity,
        held: Option<(State, Incarnation)>,
        now: Instant,
    ) {
        match self.get(&new.machine_id) {
            Some(k) => {
                let mut next = k.clone();
                next.identity = new.clone();
                if let Some((state, incarnation)) = held {
                    next.state = state;
                    next.incarnation = incarnation;
                }
                next.since = now;
                self.put(next);
            }
            None => self.up(new, now),
        }
    }

    /// This node suspects `id` (its probe failed).
    pub(crate) fn suspect(&mut self, id: &NodeIdentity, incarnation: Incarnation, now: Instant) {
        self.observe(&Member::new(id.clone(), incarnation, State::Suspect), now);
    }

    /// foca forgot `id` (down for `remove_down_after`).
    pub(crate) fn forget(&mut self, id: &NodeIdentity) {
        if self.get(&id.machine_id).is_some_and(|k| k.identity == *id) {
            self.set_live(&id.machine_id, false);
            if let Some(old) = self.known.remove(&id.machine_id) {
                self.add_sum(&old, false);
                self.generation += 1;
                self.changed.mark(&id.machine_id);
                self.suspects.remove(&id.machine_id);
            }
        }
    }

    /// Replaces the roster's content with foca's list (an O(n) walk, run rarely), keeping the
    /// `since` of members whose state did not change. Returns how many entries were corrected.
    pub(crate) fn reconcile<'a>(
        &mut self,
        members: impl Iterator<Item = &'a Member<NodeIdentity>>,
        now: Instant,
    ) -> usize {
        // Usually nothing drifted: one lookup per member (identities compare by pointer first,
        // their IDs being shared `Arc`s) and no rebuild. At 10,000 members the rebuild was a
        // quarter of an idle node's CPU.
        let members: Vec<&Member<NodeIdentity>> = members.collect();
        let same = members.len() == self.len()
            && members.iter().all(|m| {
                self.get(&m.id().machine_id).is_some_and(|k| {
                    k.identity == *m.id()
                        && k.state == m.state()
                        && k.incarnation == m.incarnation()
                })
            });
        if same {
            return 0;
        }
        let mut fixed = 0;
        let mut fresh: BTreeMap<MachineId, Known> = BTreeMap::new();
        for m in members {
            let id = m.id();
            // foca may hold an old life next to a new one briefly; the newer identity wins.
            if fresh
                .get(&id.machine_id)
                .is_some_and(|k| k.identity.incarnation >= id.incarnation)
            {
                continue;
            }
            let since = match self.get(&id.machine_id) {
                Some(k) if k.identity == *id && k.state == m.state() => {
                    if k.incarnation != m.incarnation() {
                        fixed += 1;
                    }
                    k.since
                }
                _ => {
                    fixed += 1;
                    now
                }
            };
            fresh.insert(
                id.machine_id.clone(),
                Known {
                    identity: id.clone(),
                    incarnation: m.incarnation(),
                    state: m.state(),
                    since,
                },
            );
        }
        fixed += self
            .known
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .count();
        // Rebuilt in machine-ID order: the same sums, and the live members in the same order.
        let generation = self.generation;
        *self = Roster::default();
        self.generation = generation + 1;
        self.changed.mark_all();
        for k in fresh.into_values() {
            self.put(k);
        }
        fixed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ident(id: &str, inc: u64) -> NodeIdentity {
        NodeIdentity::new(
            MachineId::parse(id).unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            inc,
        )
    }

    #[test]
    fn follows_swim_precedence_for_one_identity() {
        let now = Instant::now();
        let mut r = Roster::default();
        r.up(&ident("a", 1), now);
        assert!(r.observe(&Member::new(ident("a", 1), 0, State::Suspect), now));
        assert_eq!(
            r.get(&MachineId::parse("a").unwrap()).unwrap().state,
            State::Suspect
        );
        // A refutation needs a larger incarnation.
        assert!(!r.observe(&Member::new(ident("a", 1), 0, State::Alive), now));
        assert!(r.observe(&Member::new(ident("a", 1), 1, State::Alive), now));
        // Another life is foca's business (renamed), not a state change.
        assert!(!r.observe(&Member::new(ident("a", 2), 5, State::Down), now));
        assert_eq!(r.live_count(), 1);
        r.down(&ident("a", 1), now);
        assert_eq!(r.live_count(), 0);
        assert!(!r.observe(&Member::new(ident("a", 1), 9, State::Alive), now));
    }

    #[test]
    fn random_choice_is_distinct_and_skips_the_excluded() {
        let now = Instant::now();
        let mut r = Roster::default();
        for i in 0..100 {
            r.up(&ident(&format!("m{i}"), 1), now);
        }
        let mut rng = StdRng::seed_from_u64(1);
        let except = MachineId::parse("m7").unwrap();
        for k in [1, 3, 10, 99, 150] {
            let pick = r.random_live(&mut rng, k, Some(&except));
            let mut dedup = pick.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), pick.len());
            assert!(!pick.contains(&except));
            assert!(pick.len() <= k.min(99));
        }
        r.forget(&ident("m3", 1));
        r.down(&ident("m4", 1), now);
        assert_eq!(r.live_count(), 98);
        assert_eq!(r.len(), 99);
    }

    /// Slots are reused after a member is forgotten; lookups find each member's own entry and
    /// walks go in machine-ID order whatever the slots' order.
    #[test]
    fn lookups_and_walks_hold_across_forgetting_and_slot_reuse() {
        let now = Instant::now();
        let mut r = Roster::default();
        for (id, inc) in [("d", 1), ("b", 2), ("a", 3)] {
            r.up(&ident(id, inc), now);
        }
        r.down(&ident("b", 2), now);
        r.forget(&ident("b", 2));
        r.up(&ident("c", 4), now);
        r.up(&ident("e", 5), now);
        assert_eq!(r.known.slots(), 4, "b's slot went to c");
        let walk: Vec<(String, u64)> = r
            .iter()
            .map(|(id, k)| (id.to_string(), k.identity.incarnation))
            .collect();
        let expected = [("a", 3), ("c", 4), ("d", 1), ("e", 5)];
        assert_eq!(
            walk,
            expected.map(|(id, inc)| (id.to_string(), inc)).to_vec()
        );
        for (id, inc) in expected {
            let k = r.get(&MachineId::parse(id).unwrap()).unwrap();
            assert_eq!(k.identity, ident(id, inc));
        }
        assert!(r.get(&MachineId::parse("b").unwrap()).is_none());
        assert_eq!((r.len(), r.live_count()), (4, 4));
    }

    #[test]
    fn sums_follow_every_change() {
        let now = Instant::now();
        let mut r = Roster::default();
        let scratch = |r: &Roster| {
            let mut sums = vec![0u64; BUCKETS];
            for (id, k) in r.iter() {
                let b = bucket_of(id);
                sums[b] = sums[b].wrapping_add(contribution(k));
            }
            sums
        };
        r.up(&ident("a", 1), now);
        r.up(&ident("b", 1), now);
        r.observe(&Member::new(ident("a", 1), 0, State::Suspect), now);
        r.renamed(&ident("b", 2), None, now);
        r.down(&ident("a", 1), now);
        assert_eq!(r.sums, scratch(&r));
        r.forget(&ident("a", 1));
        assert_eq!(r.sums, scratch(&r));
        let truth = [Member::new(ident("c", 1), 0, State::Alive)];
        r.reconcile(truth.iter(), now);
        assert_eq!(r.sums, scratch(&r));
        assert_eq!(r.members_of(&[0, 1, 2, 3, 4, 5, 6, 7], 8).len(), 1);
    }

    #[test]
    fn reconcile_repairs_drift() {
        let now = Instant::now();
        let mut r = Roster::default();
        r.up(&ident("a", 1), now);
        r.up(&ident("gone", 1), now);
        let truth = [
            Member::new(ident("a", 1), 3, State::Suspect),
            Member::new(ident("b", 2), 0, State::Alive),
        ];
        assert_eq!(r.reconcile(truth.iter(), now), 3);
        assert_eq!(
            r.get(&MachineId::parse("a").unwrap()).unwrap().incarnation,
            3
        );
        assert!(r.get(&MachineId::parse("gone").unwrap()).is_none());
        assert_eq!(r.live_count(), 2);
        assert_eq!(r.reconcile(truth.iter(), now), 0);
    }

    /// Over random ups, downs, suspicions, refutations, new lives, forgotten members and
    /// reconciliations, the members of a few buckets, which visit only those buckets' members,
    /// are what a whole walk of the roster finds and then filters by bucket, in the same
    /// (machine-ID) order.
    #[test]
    fn members_of_buckets_equal_the_whole_walk_filtered() {
        use crate::dense::tests::{bucket_questions, in_buckets_slow};

        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(14);
        let mut r = Roster::default();
        let mut checked = 0;
        for step in 0..3000 {
            let name = format!("m{:02}", rng.random_range(0..80));
            let life = rng.random_range(1..4);
            let id = ident(&name, life);
            match rng.random_range(0..7) {
                0 => r.up(&id, now),
                1 => r.down(&id, now),
                2 => {
                    r.suspect(&id, rng.random_range(0..3), now);
                }
                3 => {
                    r.observe(&Member::new(id, rng.random_range(0..3), State::Alive), now);
                }
                4 => r.renamed(&id, None, now),
                5 => r.forget(&id),
                _ if step % 50 == 0 => {
                    // foca's list: the roster's, some members dropped, one added.
                    let mut truth: Vec<Member<NodeIdentity>> = r
                        .iter()
                        .filter(|_| rng.random_bool(0.9))
                        .map(|(_, k)| Member::new(k.identity.clone(), k.incarnation, k.state))
                        .collect();
                    truth.push(Member::alive(id));
                    r.reconcile(truth.iter(), now);
                }
                _ => {}
            }
            let (count, buckets) = bucket_questions(&mut rng);
            let slow: Vec<Member<NodeIdentity>> = in_buckets_slow(r.iter(), &buckets, count)
                .into_iter()
                .map(|(_, k)| Member::new(k.identity.clone(), k.incarnation, k.state))
                .collect();
            let fast = r.members_of(&buckets, count);
            assert_eq!(
                fast, slow,
                "step {step}: count {count}, buckets {buckets:?}"
            );
            checked += fast.len();
        }
        assert!(checked > 1000, "the questions found members: {checked}");
    }
}
