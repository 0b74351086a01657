//! Refutations only in the refuted machine's own word.
//!
//! SWIM lets any member relay that a suspected member is alive again at a higher (foca)
//! incarnation: that is how a refutation spreads. Unchecked, a member with a valid certificate
//! could forge "X alive at incarnation N+1" for a dead X every time X is suspected, and X would
//! never be declared down. So a machine vouches for its own foca incarnation: whenever its
//! incarnation changes (it refuted a suspicion), it publishes a signed [`crate::Entry::Incarnation`],
//! which travels and is stored like its state (pushed at once, passed on, repaired by
//! anti-entropy), and a node lets a relayed membership update raise a member's incarnation only as
//! far as that member vouched for it:
//!
//! - updates that do not raise the incarnation this node knows (suspect at the known incarnation,
//!   down at any) pass, as SWIM's rules allow; so do the machine's own words about itself (a
//!   packet's sender), and introductions of machines this node does not know;
//! - a raise that the machine did not vouch for (yet) is **held**, one per machine (the highest),
//!   and handed to foca as soon as the vouch arrives: the refutation and the vouch race each
//!   other through the cluster, and the refutation arriving first must not be lost;
//! - if this node's own probe of the machine failed (its suspicion timer runs, so its verdict is
//!   at stake), it also asks the machine directly (a foca announce: the answer carries the
//!   machine's current incarnation first-hand), so a live machine refutes in time even if its
//!   vouch is slow;
//! - a held raise that is still unvouched when the machine is declared down was forged: it is
//!   counted in [`crate::Counters::refutations_refused`], logged at WARN naming the relay, and
//!   charged to the relay's budget ([`crate::budget`]).
//!
//! Nothing changes in the insecure development mode ([`crate::Unsigned`]: nothing is signed,
//! every relay is believed) or in the timing of verdicts: a suspicion timer runs out as before.

use std::collections::BTreeMap;
use std::time::Instant;

use foca::{Codec, Member, PostcardCodec, State};

use crate::core::Node;
use crate::types::{MachineId, NodeIdentity};

/// A raise of a member's incarnation that its machine has not vouched for yet.
#[derive(Debug)]
struct Held {
    member: Member<NodeIdentity>,
    /// The member that relayed it.
    relayed_by: MachineId,
}

/// The node's bookkeeping of vouches: its own, and the raises it holds.
#[derive(Debug, Default)]
pub(crate) struct Vouches {
    held: BTreeMap<MachineId, Held>,
    /// When this node last asked each machine directly about a held raise.
    asked: BTreeMap<MachineId, Instant>,
    /// Set when this node heard itself suspected: the foca incarnation in the next datagram it
    /// sends says whether it refuted.
    watch_own: bool,
    /// The highest foca incarnation of ours seen in the datagrams sent since.
    seen_own: Option<u16>,
}

impl Node {
    /// Whether a relayed update about a life of a third machine that this node knows, at foca
    /// incarnation `known` here, may reach foca now; a raise the machine did not vouch for is held.
    pub(crate) fn vouched_for(
        &mut self,
        sender: &NodeIdentity,
        update: &Member<NodeIdentity>,
        known: u16,
        known_state: State,
    ) -> bool {
        if update.state() == State::Down
            || known_state == State::Down
            || update.incarnation() <= known
            || !self.credentials.required()
        {
            return true;
        }
        let id = update.id();
        let vouched = self.store.origin(&id.machine_id).and_then(|o| o.vouched());
        if vouched.is_some_and(|(life, inc)| life == id.incarnation && update.incarnation() <= inc)
        {
            return true;
        }
        // The roster learns a member's incarnation from the updates it follows, and may not know
        // the one foca introduced it with: ask foca (a walk of its list, only for a raise).
        let in_foca = self
            .foca
            .iter_membership_state()
            .find(|m| m.id() == id)
            .map(|m| (m.incarnation(), m.state()));
        if in_foca.is_some_and(|(inc, state)| state == State::Down || update.incarnation() <= inc) {
            return true;
        }
        self.counters.refutations_held += 1;
        let keep = match self.vouches.held.get(&id.machine_id) {
            Some(h) => {
                h.member.id() != id
                    || update.incarnation() > h.member.incarnation()
                    || (update.incarnation() == h.member.incarnation()
                        && update.state() == State::Suspect)
            }
            None => true,
        };
        if keep {
            self.vouches.held.insert(
                id.machine_id.clone(),
                Held {
                    member: update.clone(),
                    relayed_by: sender.machine_id.clone(),
                },
            );
        }
        tracing::debug!(relayed_by = %sender.machine_id, member = ?id, incarnation = update.incarnation(), vouched = ?vouched, "a raise of a member's incarnation it has not vouched for: held");
        if self.suspecting(id) {
            self.ask_directly(id);
        }
        false
    }

    /// This node's probe of `id` failed: if it holds a raise of `id`'s incarnation that `id`
    /// has not vouched for yet, it asks `id` directly (its verdict is now at stake).
    pub(crate) fn suspicion_started(&mut self, id: &NodeIdentity) {
        if self
            .vouches
            .held
            .get(&id.machine_id)
            .is_some_and(|h| h.member.id() == id)
        {
            self.ask_directly(id);
        }
    }

    /// Asks `id` who it is now (at most once per probe period per machine): its answer carries its
    /// current foca incarnation in its own header.
    fn ask_directly(&mut self, id: &NodeIdentity) {
        let now = self.now;
        if self
            .vouches
            .asked
            .get(&id.machine_id)
            .is_some_and(|at| now < *at + self.config.probe_period)
        {
            return;
        }
        if self.vouches.asked.len() >= 1024 {
            self.vouches.asked.clear();
        }
        self.vouches.asked.insert(id.machine_id.clone(), now);
        if let Err(e) = self.foca.announce(id.clone(), &mut self.runtime) {
            tracing::debug!(error = %e, "announce failed");
        }
    }

    /// Hands foca the held raises that their machines have vouched for since.
    pub(crate) fn release_vouched(&mut self) {
        if self.vouches.held.is_empty() {
            return;
        }
        let store = &self.store;
        let ready: Vec<MachineId> = self
            .vouches
            .held
            .iter()
            .filter(|(m, h)| {
                store
                    .origin(m)
                    .and_then(|o| o.vouched())
                    .is_some_and(|(life, inc)| {
                        life == h.member.id().incarnation && h.member.incarnation() <= inc
                    })
            })
            .map(|(m, _)| m.clone())
            .collect();
        if ready.is_empty() {
            return;
        }
        let now = self.now;
        let mut members = Vec::with_capacity(ready.len());
        for m in ready {
            let Some(h) = self.vouches.held.remove(&m) else {
                continue;
            };
            if self
                .roster
                .get(&m)
                .is_some_and(|k| k.identity == *h.member.id())
            {
                self.roster.observe(&h.member, now);
                members.push(h.member);
            }
        }
        if members.is_empty() {
            return;
        }
        if let Err(e) = self
            .foca
            .apply_many(members.into_iter(), true, &mut self.runtime)
        {
            tracing::debug!(error = %e, "applying vouched refutations failed");
        }
        self.drain_runtime();
    }

    /// `id` was declared down: a raise of its incarnation still held was never vouched for by the
    /// machine, so its relay forged it.
    pub(crate) fn held_at_down(&mut self, id: &NodeIdentity) {
        let Some(h) = self.vouches.held.remove(&id.machine_id) else {
            return;
        };
        let reached = self
            .roster
            .get(&id.machine_id)
            .filter(|k| k.identity == *id)
            .map(|k| k.incarnation);
        if h.member.id() != id || reached.is_some_and(|inc| inc >= h.member.incarnation()) {
            return;
        }
        self.counters.refutations_refused += 1;
        self.charge(&h.relayed_by);
        let relay = h.relayed_by.clone();
        let machine = id.machine_id.clone();
        if self.log_due(&relay, &machine) {
            tracing::warn!(
                relayed_by = %relay,
                machine = %machine,
                incarnation = h.member.incarnation(),
                refused = self.counters.refutations_refused,
                "refused a refutation of machine {machine} relayed by {relay}: {machine} never \
                 vouched for incarnation {} and was declared down",
                h.member.incarnation()
            );
        }
    }

    /// `sender` spoke for itself at foca incarnation `incarnation`: a raise up to it is no longer
    /// held (it is true, whoever relayed it).
    pub(crate) fn heard_first_hand(&mut self, sender: &NodeIdentity, incarnation: u16) {
        if self
            .vouches
            .held
            .get(&sender.machine_id)
            .is_some_and(|h| h.member.id() == sender && h.member.incarnation() <= incarnation)
        {
            self.vouches.held.remove(&sender.machine_id);
        }
    }

    /// Drops held raises that no longer matter (the member's life changed, it is gone, or this
    /// node learnt an incarnation at least as high first-hand). Run every anti-entropy interval.
    pub(crate) fn prune_held(&mut self) {
        let roster = &self.roster;
        self.vouches.held.retain(|m, h| {
            roster.get(m).is_some_and(|k| {
                k.identity == *h.member.id()
                    && k.state != State::Down
                    && k.incarnation < h.member.incarnation()
            })
        });
        let now = self.now;
        let period = self.config.probe_period;
        self.vouches.asked.retain(|_, at| now < *at + period);
    }

    /// This node heard itself suspected: watch whether it refutes.
    pub(crate) fn heard_self_suspicion(&mut self) {
        if self.credentials.required() {
            self.vouches.watch_own = true;
        }
    }

    /// Reads this node's foca incarnation from the header of a datagram foca is sending, while
    /// watching for a refutation.
    pub(crate) fn note_own_incarnation(&mut self, data: &[u8]) {
        if !self.vouches.watch_own {
            return;
        }
        let mut buf = data;
        let decoded: Result<foca::Header<NodeIdentity>, _> = PostcardCodec.decode_header(&mut buf);
        if let Ok(header) = decoded {
            let seen = &mut self.vouches.seen_own;
            *seen = Some(seen.map_or(header.src_incarnation, |s| s.max(header.src_incarnation)));
        }
    }

    /// After a batch of datagrams: the vouch to publish if this node's incarnation changed (a
    /// refutation). Every life starts at 0, which needs no vouch.
    pub(crate) fn own_vouch(&mut self) -> Option<crate::store::Update> {
        let seen = self.vouches.seen_own.take()?;
        self.vouches.watch_own = false;
        if seen == 0 {
            return None;
        }
        let life = self.identity().incarnation;
        self.store
            .set_local_incarnation(life, seen, &*self.credentials)
    }

    /// How many raises this node holds (tests).
    pub fn refutations_held_now(&self) -> usize {
        self.vouches.held.len()
    }
}
