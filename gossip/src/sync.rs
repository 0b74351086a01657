//! The sync exchange (see the module docs of [`crate::core`]): full offers for joins and heals,
//! summaries of the state digest for the periodic anti-entropy.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::Instant;

use foca::{Incarnation, Member, State};
use rand::RngExt;

use crate::core::{Error, FullState, Node, SyncAnswer, SyncOffer};
use crate::store::{bucket_of, member_contribution, summary_count, OriginDelta};
use crate::types::{MachineId, MachineKey, NodeIdentity};

/// At most this many differing buckets are detailed in one summary answer (the rest waits for
/// the next sync), which bounds the answer's size.
const MAX_DETAILED_BUCKETS: usize = 8;
/// At most this many updates learnt in one sync are passed on in pushes (see `merge_state`).
const PASS_ON_AFTER_SYNC: usize = 32;

/// A map keyed by [`MachineKey`], which is already a keyed hash of the machine ID: taken as its
/// own hash. Looked up only, never walked (its order would differ in every process).
type KeyMap<V> = HashMap<MachineKey, V, BuildHasherDefault<KeyHasher>>;

/// The hasher of [`KeyMap`]: the key's 64 bits as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected (a `MachineKey`); anything else is folded in, still exact.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// Whether foca, holding `held`, ignores the update `m`: the same identity, whose (incarnation,
/// state) cannot replace the held one by SWIM's order of precedence.
fn ignored_by(held: &Member<NodeIdentity>, m: &Member<NodeIdentity>) -> bool {
    held.id() == m.id()
        && !crate::roster::precedes(held.state(), held.incarnation(), m.state(), m.incarnation())
}

impl Node {
    /// A full offer: this node's membership and its whole digest. See [`Node::sync_offer_to`].
    pub fn sync_offer(&self) -> SyncOffer {
        SyncOffer {
            from: self.identity().clone(),
            members: self.membership(),
            digest: self.store.digest(),
            summary: None,
        }
    }

    /// Step 1 of the sync with `peer` that [`Node::poll_sync`] asked for: a full offer for a join,
    /// a retry or a heal, a summary of the state digest otherwise.
    ///
    /// A full sync asked for while this node has live members (a join through a second seed, a
    /// join of a machine announced in etcd, a heal) is a *whole summary*: the summary at the
    /// finest grain (`BUCKETS`, 256 buckets) with the whole state digest, and the peer
    /// details every bucket that differs (see [`Node::handle_sync_offer_from`]). Both ends learn
    /// what a full exchange would teach them, the members and state of every bucket where they
    /// differ, without the peer walking the initiator's whole membership. A node with no live
    /// member (a first join, a retry while isolated) sends the full offer, which lists itself.
    pub fn sync_offer_to(&mut self, peer: SocketAddr) -> SyncOffer {
        if self.full_syncs.remove(&peer) {
            if self.roster.live_count() == 0 {
                return self.sync_offer();
            }
            return SyncOffer {
                from: self.identity().clone(),
                members: Vec::new(),
                digest: self.store.digest(),
                summary: Some(
                    self.store
                        .summary(crate::store::BUCKETS, &self.member_sums()),
                ),
            };
        }
        // About 16 origins per bucket, between 8 and 256 buckets: a few hundred bytes.
        let count = (self.store.len() / 16).clamp(8, crate::store::BUCKETS);
        SyncOffer {
            from: self.identity().clone(),
            members: Vec::new(),
            digest: Vec::new(),
            summary: Some(self.store.summary(count, &self.member_sums())),
        }
    }

    /// The membership's per-bucket sums, this node included.
    fn member_sums(&self) -> Vec<u64> {
        let me = self.identity();
        let mut sums = self.roster.sums().to_vec();
        let b = bucket_of(&me.machine_id);
        sums[b] = sums[b].wrapping_add(member_contribution(&me.machine_id, me.incarnation, false));
        sums
    }

    /// The members in `buckets` (of `count`) as this node knows them, itself included.
    fn members_of(&self, buckets: &[u16], count: usize) -> Vec<Member<NodeIdentity>> {
        let me = self.identity();
        let mut members = self.roster.members_of(buckets, count);
        let mask = summary_count(count) - 1;
        if buckets.contains(&((bucket_of(&me.machine_id) & mask) as u16)) {
            members.push(Member::alive(me.clone()));
        }
        members
    }

    /// Step 2 of a sync, on the peer: merges the offer's membership and returns the answer. The
    /// sender is taken at its word; see [`Node::handle_sync_offer_from`].
    pub fn handle_sync_offer(
        &mut self,
        now: Instant,
        offer: SyncOffer,
    ) -> Result<SyncAnswer, Error> {
        self.handle_sync_offer_from(now, None, offer)
    }

    /// Step 2 of a sync from a peer whose certificate names machine `certified`: refused whole
    /// if the offer claims to come from another machine (see [`Node::handle_datagram_from`]).
    pub fn handle_sync_offer_from(
        &mut self,
        now: Instant,
        certified: Option<&MachineId>,
        offer: SyncOffer,
    ) -> Result<SyncAnswer, Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.check_sender(offer.from.addr, certified, &offer.from)?;
        let from = self.identity().clone();
        if let Some(summary) = &offer.summary {
            let whole = offer.is_whole();
            if whole {
                // As for a full offer: the initiator is learnt alive at once (counted there).
                self.apply_members(offer.from.clone(), Vec::new())?;
            } else {
                self.counters.syncs_merged += 1;
            }
            let mut differ = self.store.differing(summary, &self.member_sums());
            // Detail a bounded, random choice of the differing buckets (every one of them for a
            // whole summary: a join or a heal, bounded by the cluster like a full answer).
            while !whole && differ.len() > MAX_DETAILED_BUCKETS {
                let i = self.rng.random_range(0..differ.len());
                differ.swap_remove(i);
            }
            differ.sort_unstable();
            let count = summary.len();
            // A whole summary carries the initiator's whole digest: the state it lacks goes
            // in this answer (only the differing buckets can have any).
            let state = if whole {
                self.store
                    .delta_for_buckets(&offer.digest, &differ, count, &|id| self.certificate_of(id))
            } else {
                Vec::new()
            };
            return Ok(SyncAnswer {
                from,
                members: self.members_of(&differ, count),
                digest: self.store.digest_of(&differ, count),
                state,
                buckets: differ,
                bucket_count: count as u16,
            });
        }
        // The initiator gave its whole membership: the answer carries only the members it does
        // not hold as this node does (the rest would be no-ops there), so a join between two
        // nodes that mostly agree costs the initiator the difference, not the whole list.
        let offered: HashMap<NodeIdentity, (Incarnation, State)> = offer
            .members
            .iter()
            .map(|m| (m.id().clone(), (m.incarnation(), m.state())))
            .collect();
        self.apply_members(offer.from, offer.members)?;
        let news =
            |m: &Member<NodeIdentity>| offered.get(m.id()) != Some(&(m.incarnation(), m.state()));
        let members = self
            .foca
            .iter_membership_state()
            .filter(|m| news(m))
            .cloned()
            .chain(std::iter::once(Member::alive(self.identity().clone())).filter(|m| news(m)))
            .collect();
        Ok(SyncAnswer {
            from,
            members,
            digest: self.store.digest(),
            state: self
                .store
                .delta_for(&offer.digest, &|id| self.certificate_of(id)),
            buckets: Vec::new(),
            bucket_count: 0,
        })
    }

    /// Step 3 of a sync, on the initiator: merges the answer and returns what the peer lacks. The
    /// sender is taken at its word; see [`Node::handle_sync_answer_from`].
    pub fn handle_sync_answer(
        &mut self,
        now: Instant,
        answer: SyncAnswer,
    ) -> Result<FullState, Error> {
        self.handle_sync_answer_from(now, None, answer)
    }

    /// Step 3 of a sync from a peer whose certificate names machine `certified`.
    pub fn handle_sync_answer_from(
        &mut self,
        now: Instant,
        certified: Option<&MachineId>,
        answer: SyncAnswer,
    ) -> Result<FullState, Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.check_sender(answer.from.addr, certified, &answer.from)?;
        let from = self.identity().clone();
        if answer.bucket_count > 0 {
            // The peer's members in the differing buckets (it learns ours from the delta).
            let count = usize::from(answer.bucket_count);
            let (buckets, digest) = (answer.buckets, answer.digest);
            let sender = answer.from.machine_id.clone();
            self.apply_members(answer.from, answer.members)?;
            if !answer.state.is_empty() {
                // The answer to a whole summary: the state this node lacks.
                self.merge_state(&sender, answer.state);
            }
            let state = self
                .store
                .delta_for_buckets(&digest, &buckets, count, &|id| self.certificate_of(id));
            return Ok(FullState {
                from,
                members: self.members_of(&buckets, count),
                state,
            });
        }
        let sender = answer.from.machine_id.clone();
        self.apply_members(answer.from, answer.members)?;
        self.merge_state(&sender, answer.state);
        Ok(FullState {
            from,
            members: Vec::new(),
            state: self
                .store
                .delta_for(&answer.digest, &|id| self.certificate_of(id)),
        })
    }

    /// Everything this node knows: membership and all state.
    pub fn snapshot(&self) -> FullState {
        FullState {
            from: self.identity().clone(),
            members: self.membership(),
            state: self.store.delta_for(&[], &|id| self.certificate_of(id)),
        }
    }

    /// Merges a snapshot, or step 3 of a sync (on the peer). The sender is taken at its word; see
    /// [`Node::merge_from`].
    pub fn merge(&mut self, now: Instant, state: FullState) -> Result<(), Error> {
        self.merge_from(now, None, state)
    }

    /// Merges step 3 of a sync from a peer whose certificate names machine `certified`.
    pub fn merge_from(
        &mut self,
        now: Instant,
        certified: Option<&MachineId>,
        state: FullState,
    ) -> Result<(), Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.check_sender(state.from.addr, certified, &state.from)?;
        let sender = state.from.machine_id.clone();
        self.apply_members(state.from, state.members)?;
        self.merge_state(&sender, state.state);
        Ok(())
    }

    fn apply_members(
        &mut self,
        from: NodeIdentity,
        members: Vec<Member<NodeIdentity>>,
    ) -> Result<(), Error> {
        self.counters.syncs_merged += 1;
        let own = self.identity().clone();
        let mut kept = Vec::with_capacity(members.len() + 1);
        for m in members {
            if !self.admit(&from, &m) {
                continue;
            }
            // A down verdict is only news about an identity we know. Learning verdicts about
            // identities we already forgot would keep dead members alive in everyone's lists
            // forever, each node re-teaching the others after its own `remove_down_after`.
            let known = self
                .roster
                .get(&m.id().machine_id)
                .is_some_and(|k| k.identity == *m.id());
            if m.state() != State::Down || known || *m.id() == own {
                kept.push(m);
            }
        }
        let sender = Member::alive(from);
        self.observe_sync(&sender, &kept);
        kept.push(sender);
        // Like state (see `merge_state`): a few membership changes are news foca passes on; a
        // whole membership (a join, a heal) is not re-broadcast by the node that catches up.
        let broadcast = kept.len() <= PASS_ON_AFTER_SYNC;
        let kept = self.without_no_ops(kept);
        let result = self
            .foca
            .apply_many(kept.into_iter(), broadcast, &mut self.runtime);
        self.drain_runtime();
        result.map_err(Error::Protocol)
    }

    /// `members` without the updates foca's `apply_many` would ignore: those about an identity
    /// foca holds whose (incarnation, state) cannot replace the held one by SWIM's order of
    /// precedence. foca finds each member by a walk of its whole list, so a whole membership
    /// (a join, a heal) costs it O(n) per member; one walk here makes that O(n) in all. The walk
    /// looks each of foca's members up among the batch's machines by [`MachineKey`] (an integer,
    /// already a keyed hash: hashed no further), so it neither hashes a machine ID nor builds a
    /// map of the whole membership per sync. foca does nothing for an ignored update (no state,
    /// broadcast, timer, notification or random draw), so what it applies and does is unchanged.
    /// Updates about this node's own machine, and every update after the first kept one about the
    /// same machine, are kept (two machines whose keys collided would only keep more).
    fn without_no_ops(&self, members: Vec<Member<NodeIdentity>>) -> Vec<Member<NodeIdentity>> {
        // Below this, foca's walks cost less than the walk here.
        const MIN_BATCH: usize = 16;
        if members.len() < MIN_BATCH {
            return members;
        }
        let mut held: KeyMap<Option<&Member<NodeIdentity>>> =
            KeyMap::with_capacity_and_hasher(members.len(), Default::default());
        for m in &members {
            held.insert(m.id().key(), None);
        }
        for h in self.foca.iter_membership_state() {
            if let Some(slot) = held.get_mut(&h.id().key()) {
                *slot = Some(h);
            }
        }
        let me = &self.identity().machine_id;
        let mut touched: KeyMap<()> = KeyMap::default();
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            let key = m.id().key();
            let no_op = m.id().machine_id != *me
                && !touched.contains_key(&key)
                && held
                    .get(&key)
                    .copied()
                    .flatten()
                    .is_some_and(|h| ignored_by(h, &m));
            if !no_op {
                touched.insert(key, ());
                out.push(m);
            }
        }
        out
    }

    /// Merges state from a sync. A few updates that were news are passed on (a fresh change that
    /// rumour mongering missed here likely missed others too); a large batch is a node catching up
    /// (a joiner's full exchange, a healed partition) and is not: pushing it would cost every
    /// joiner `max_transmissions` times the whole cluster's state in bytes (1.3 M updates at
    /// 10,000 members), long after it joined. The others repair by their own anti-entropy.
    ///
    /// Every entry is taken only with its origin's signature (`crate::crypto`); `sender` is named
    /// in the log of what is refused.
    fn merge_state(&mut self, sender: &MachineId, state: Vec<OriginDelta>) {
        let news = self.take_deltas(sender, state);
        if news.len() <= PASS_ON_AFTER_SYNC {
            self.pass_on(news);
        }
        self.drain_changes();
        self.release_vouched();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use std::collections::{HashMap, HashSet};

    use foca::{Member, State};
    use rand::RngExt;

    use crate::core::{Config, FullState, Node, SyncAnswer, SyncOffer};
    use crate::testing::synthetic_cluster;
    use crate::types::{Liveness, MachineId, Metadata, NodeIdentity, Stamp};

    /// A node of identity `id`, default configuration, its RNG seeded with `seed`.
    fn node(id: &NodeIdentity, seed: u64, now: Instant) -> Node {
        Node::new(
            Config::default(),
            id.clone(),
            StdRng::seed_from_u64(seed),
            now,
        )
    }

    /// A synthetic cluster of `n` machines (2 units each) and two nodes of it, the first two, each
    /// holding the whole cluster's state.
    fn pair(n: usize, now: Instant) -> (Node, Node) {
        let (ids, state) = synthetic_cluster(n, 2);
        let (mut a, mut b) = (node(&ids[0], 1, now), node(&ids[1], 2, now));
        a.merge(now, state.clone()).unwrap();
        b.merge(now, state).unwrap();
        (a, b)
    }

    /// The answer to a full offer lists only the members the offer did not list as the peer
    /// holds them: nothing but the changes for a node that knows the cluster, everything for a
    /// newcomer, which then knows the cluster as the peer does.
    #[test]
    fn a_full_answer_carries_only_the_members_the_offer_lacks() {
        let now = Instant::now();
        let (a, mut b) = pair(40, now);
        let members = b.membership().len();
        assert!(members >= 40, "b holds the cluster: {members}");

        let answer = b.handle_sync_offer(now, a.sync_offer()).unwrap();
        assert!(
            answer.members.len() <= 2,
            "a offered the membership b holds; b answered {} of {members} members",
            answer.members.len()
        );

        let newcomer = NodeIdentity::new(
            MachineId::parse("newcomer").unwrap(),
            "10.9.9.9:4001".parse().unwrap(),
            1,
        );
        let mut c = node(&newcomer, 3, now);
        let answer = b.handle_sync_offer(now, c.sync_offer()).unwrap();
        assert_eq!(b.membership().len(), 41, "b learnt c");
        assert_eq!(
            answer.members.len(),
            40,
            "b's membership but c as c offered itself"
        );
        c.handle_sync_answer(now, answer).unwrap();
        assert_eq!(c.roster.len(), 40, "c learnt the 40 members of the cluster");
    }

    /// Runs the sync exchange `a` asked for with `b` (through the wire encoding); returns
    /// whether `a`'s offer was a whole summary and how many members `b`'s answer listed.
    fn exchange(now: Instant, a: &mut Node, b: &mut Node) -> (bool, usize) {
        let peer = a.poll_sync().expect("a sync was asked for");
        assert_eq!(peer, b.identity().addr);
        let offer = a.sync_offer_to(peer);
        let whole = offer.is_whole();
        if whole {
            assert!(
                offer.encode_summary().is_none(),
                "a whole summary goes on a stream"
            );
        }
        let offer = SyncOffer::decode(&offer.encode()).unwrap();
        let answer = b.handle_sync_offer(now, offer).unwrap();
        let listed = answer.members.len();
        let answer = SyncAnswer::decode(&answer.encode()).unwrap();
        let delta = a.handle_sync_answer(now, answer).unwrap();
        b.merge(now, FullState::decode(&delta.encode()).unwrap())
            .unwrap();
        (whole, listed)
    }

    /// What a node holds of every machine but `a` and `b` (whose own state the synthetic
    /// cluster's differs from): identity, liveness and newest state.
    fn held(n: &Node, a: &Node, b: &Node) -> Vec<(NodeIdentity, Liveness, Stamp)> {
        let skip = [&a.identity().machine_id, &b.identity().machine_id];
        n.view()
            .machines
            .values()
            .filter(|m| !skip.contains(&&m.identity.machine_id))
            .map(|m| (m.identity.clone(), m.liveness, m.version))
            .collect()
    }

    /// A full sync asked for by a node that has live members (here a join through a second
    /// seed) is a whole summary: the peer does not walk the initiator's membership, every
    /// differing bucket is detailed (far more than a periodic summary's 8), and both ends then
    /// hold what a full exchange would have taught them: each other's members and their state.
    #[test]
    fn a_join_by_a_node_with_live_members_is_a_whole_summary_that_teaches_both_ends() {
        let now = Instant::now();
        let (mut a, mut b) = pair(60, now);
        // 12 newcomers join through a only, 12 others through b only, each with its metadata:
        // a first join (no live member) is a full offer.
        for k in 0..24u8 {
            let id = NodeIdentity::new(
                MachineId::parse(&format!("newcomer{k}")).unwrap(),
                format!("10.9.9.{k}:4001").parse().unwrap(),
                1,
            );
            let mut c = node(&id, 10 + u64::from(k), now);
            c.set_local_metadata(
                now,
                Metadata {
                    version: format!("v{k}"),
                    ..Metadata::default()
                },
            );
            let seed = if k < 12 { &mut a } else { &mut b };
            c.join(now, &[seed.identity().addr]);
            let (whole, _) = exchange(now, &mut c, seed);
            assert!(!whole, "a node with no live member sends a full offer");
        }
        assert_ne!(held(&a, &a, &b), held(&b, &a, &b));
        assert_eq!(a.membership().len(), 72);

        a.join(now, &[b.identity().addr]);
        let (whole, listed) = exchange(now, &mut a, &mut b);
        assert!(whole, "a has live members: its join is a whole summary");
        assert!(
            listed < 60,
            "b listed {listed} members: only the differing buckets"
        );
        assert_eq!(a.membership().len(), 84, "a learnt b's 12 newcomers");
        assert_eq!(b.membership().len(), 84, "b learnt a's 12 newcomers");
        let (ha, hb) = (held(&a, &a, &b), held(&b, &a, &b));
        assert_eq!(ha.len(), 82);
        assert!(ha == hb, "both hold the same members and state");
    }

    /// The filter as it was (foca's whole list into a map by machine ID, per batch): the slow
    /// reference of `without_no_ops`.
    fn without_no_ops_slow(
        n: &Node,
        members: Vec<Member<NodeIdentity>>,
    ) -> Vec<Member<NodeIdentity>> {
        if members.len() < 16 {
            return members;
        }
        let held: HashMap<&MachineId, &Member<NodeIdentity>> = n
            .foca
            .iter_membership_state()
            .map(|m| (&m.id().machine_id, m))
            .collect();
        let me = &n.identity().machine_id;
        let mut touched: HashSet<MachineId> = HashSet::new();
        let mut out = Vec::new();
        for m in members {
            let id = &m.id().machine_id;
            let no_op = id != me
                && !touched.contains(id)
                && held.get(id).is_some_and(|h| super::ignored_by(h, &m));
            if !no_op {
                touched.insert(id.clone());
                out.push(m);
            }
        }
        out
    }

    /// Over random batches (members foca holds, in their held or other states and incarnations,
    /// older and newer lives, newcomers, this node, repeats), applied as they come so that what
    /// foca holds changes, the no-op filter keeps exactly what the whole-map filter kept.
    #[test]
    fn the_no_op_filter_keeps_what_a_map_of_focas_whole_list_keeps() {
        let now = Instant::now();
        let (ids, state) = synthetic_cluster(120, 1);
        let mut a = node(&ids[0], 1, now);
        a.merge(now, state).unwrap();
        let mut rng = StdRng::seed_from_u64(14);
        let (mut kept, mut dropped) = (0, 0);
        for round in 0..300 {
            let len = rng.random_range(0..60);
            let batch: Vec<Member<NodeIdentity>> = (0..len)
                .map(|_| {
                    let id = match rng.random_range(0..10) {
                        0 => a.identity().clone(),
                        1 => NodeIdentity::new(
                            MachineId::parse(&format!("new{}", rng.random_range(0..20))).unwrap(),
                            "10.9.9.9:4001".parse().unwrap(),
                            1,
                        ),
                        k => {
                            let mut id = ids[rng.random_range(1..ids.len())].clone();
                            if k == 2 {
                                id = NodeIdentity::new(
                                    id.machine_id.clone(),
                                    id.addr,
                                    rng.random_range(0..4),
                                );
                            }
                            id
                        }
                    };
                    let st = [State::Alive, State::Alive, State::Suspect, State::Down]
                        [rng.random_range(0..4)];
                    Member::new(id, rng.random_range(0..3), st)
                })
                .collect();
            let fast = a.without_no_ops(batch.clone());
            let slow = without_no_ops_slow(&a, batch.clone());
            assert_eq!(fast, slow, "round {round}");
            if len >= 16 {
                kept += fast.len();
                dropped += len - fast.len();
            }
            let _ = a.apply_members(ids[1].clone(), batch);
        }
        assert!(
            kept > 500 && dropped > 500,
            "kept {kept}, dropped {dropped}"
        );
    }
}
