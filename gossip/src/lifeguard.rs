//! Lifeguard (Dadgar et al., "Lifeguard: Local Health Awareness for More Accurate Failure
//! Detection", 2018) on top of foca, through the timers foca asks its driver to run: foca is used as
//! published, the node only chooses *when* the timers fire.
//!
//! - **Local health awareness**: a score from 0 to `max_local_health`. A probe of ours that fails
//!   adds one, one that succeeds takes one away, hearing that others suspect us adds one. foca's
//!   probe period and ack timeout run `score + 1` times slower: a node whose own packets are late
//!   (CPU starvation, a saturated NIC) stops accusing healthy members.
//! - **Dynamic suspicion**: when a probe of ours fails, foca asks for a timer that turns the suspect
//!   into a down member. The node runs it `suspicion_max` after the suspicion started, shortened
//!   logarithmically by each *independent* confirmation down to `suspect_to_down_after`. A
//!   confirmation is another member's own suspicion of the same life at the same incarnation: each
//!   member that suspects by its own failed probe publishes a claim (a state update of its own,
//!   pushed and passed on like any other), because foca's membership updates do not say who
//!   suspected first, so counting their relayers would count one suspicion many times.
//! - **Refutation priority** (the buddy system): a ping to a member this node suspects carries that
//!   suspicion, so the suspect learns of it from the first probe that reaches it and refutes at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{Incarnation, Member, Message, State, Timer};

use crate::core::Node;
use crate::store::{Entry, Update};
use crate::types::{MachineId, NodeIdentity, Stamp};
use crate::wire::Packet;

/// A timer's key in the node's timer map.
pub(crate) type TimerKey = (Instant, u8, u64);

/// One suspicion of ours (our probe of the member failed), with its timer.
#[derive(Debug)]
struct Suspicion {
    identity: NodeIdentity,
    incarnation: Incarnation,
    start: Instant,
    confirmers: BTreeSet<MachineId>,
    timer: TimerKey,
}

/// Lifeguard's state in a node.
#[derive(Debug, Default)]
pub(crate) struct Lifeguard {
    /// The local health score.
    pub(crate) health: u8,
    /// Set when foca schedules a suspicion while running a probe round: that round's probe failed.
    pub(crate) probe_failed: bool,
    suspicions: BTreeMap<MachineId, Suspicion>,
    /// Who claimed to suspect which life at which incarnation (including claims heard before our
    /// own probe failed: they count once we suspect too).
    claims: BTreeMap<(MachineId, u64, Incarnation), BTreeSet<MachineId>>,
    /// The highest incarnation of ours we heard suspected (counted once in the health score).
    self_suspected: Option<Incarnation>,
}

impl Node {
    /// foca asks for `timer` in `after`: Lifeguard decides when it runs.
    pub(crate) fn lifeguard_schedule(&mut self, after: Duration, timer: Timer<NodeIdentity>) {
        let now = self.now;
        let slow = u32::from(self.lifeguard.health) + 1;
        match &timer {
            Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                self.schedule_keyed(now + after * slow, timer);
            }
            Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } => {
                // foca suspects a member only after its own probe of it failed.
                let (id, inc) = (member_id.clone(), *incarnation);
                self.lifeguard.probe_failed = true;
                self.roster.suspect(&id, inc, now);
                self.start_suspicion(id, inc, timer);
            }
            _ => {
                self.schedule_keyed(now + after, timer);
            }
        }
    }

    fn start_suspicion(&mut self, id: NodeIdentity, inc: Incarnation, timer: Timer<NodeIdentity>) {
        let me = self.identity().machine_id.clone();
        if let Some(s) = self.lifeguard.suspicions.get(&id.machine_id) {
            if s.identity == id && s.incarnation == inc {
                // Another failed probe of the same suspicion: its timer already runs.
                return;
            }
            let old = s.timer;
            self.cancel_timer(old);
        }
        let confirmers: BTreeSet<MachineId> = self
            .lifeguard
            .claims
            .get(&(id.machine_id.clone(), id.incarnation, inc))
            .map(|c| c.iter().filter(|m| **m != me).cloned().collect())
            .unwrap_or_default();
        let start = self.now;
        let deadline = start + self.suspicion_timeout(confirmers.len());
        let key = self.schedule_keyed(deadline, timer);
        tracing::debug!(suspect = %id.machine_id, confirmations = confirmers.len(), timeout = ?(deadline - start), "suspicion started");
        self.suspicion_started(&id);
        self.lifeguard.suspicions.insert(
            id.machine_id.clone(),
            Suspicion {
                identity: id.clone(),
                incarnation: inc,
                start,
                confirmers,
                timer: key,
            },
        );
        // Our claim, for the other members that suspect it too.
        let stamp = Stamp {
            epoch: self.identity().incarnation,
            version: 0,
        };
        let entry = Entry::Suspicion {
            target: id,
            incarnation: inc,
        };
        let signature = self
            .credentials
            .sign(&crate::crypto::signed_message(&me, stamp, &entry));
        let claim = Update {
            origin: me,
            stamp,
            entry,
            signature,
        };
        self.publish_claim(claim);
    }

    /// Lifeguard's suspicion timeout after `k` independent confirmations.
    pub(crate) fn suspicion_timeout(&self, k: usize) -> Duration {
        let min = self.config.suspect_to_down_after;
        let max = self.config.suspicion_max.max(min);
        // Other live members that could confirm (the roster holds the suspect, not this node).
        let expected = self
            .config
            .suspicion_confirmations
            .min(self.roster.live_count().saturating_sub(1));
        if expected == 0 || k >= expected {
            return min;
        }
        let frac = ((k + 1) as f64).ln() / ((expected + 1) as f64).ln();
        let t = max - (max - min).mul_f64(frac.clamp(0.0, 1.0));
        // Whole milliseconds: drivers that keep time in coarser units than `Instant` (the
        // simulator counts microseconds) must be able to wake the node at exactly its deadline.
        Duration::from_millis(t.as_millis() as u64).max(min)
    }

    /// A member's claim that it suspects `target` at `inc`. Returns true if it was news.
    pub(crate) fn heard_claim(
        &mut self,
        origin: &MachineId,
        target: &NodeIdentity,
        inc: Incarnation,
    ) -> bool {
        let me = self.identity().machine_id.clone();
        if *origin == me
            || !self
                .roster
                .get(origin)
                .is_some_and(|k| k.state != State::Down)
        {
            return false;
        }
        let news = self
            .lifeguard
            .claims
            .entry((target.machine_id.clone(), target.incarnation, inc))
            .or_default()
            .insert(origin.clone());
        if !news {
            return false;
        }
        let Some(s) = self.lifeguard.suspicions.get_mut(&target.machine_id) else {
            return true;
        };
        if s.identity != *target || s.incarnation != inc || !s.confirmers.insert(origin.clone()) {
            return true;
        }
        let (start, k, old) = (s.start, s.confirmers.len(), s.timer);
        let deadline = (start + self.suspicion_timeout(k)).max(self.now);
        if deadline < old.0 {
            if let Some(timer) = self.take_timer(old) {
                let key = self.schedule_keyed(deadline, timer);
                if let Some(s) = self.lifeguard.suspicions.get_mut(&target.machine_id) {
                    s.timer = key;
                }
            }
        }
        tracing::debug!(suspect = %target.machine_id, by = %origin, confirmations = k, "suspicion confirmed");
        true
    }

    /// foca is about to run a suspicion's timer: the suspicion ends either way.
    pub(crate) fn suspicion_ends(&mut self, member: &NodeIdentity, inc: Incarnation) {
        if self
            .lifeguard
            .suspicions
            .get(&member.machine_id)
            .is_some_and(|s| s.identity == *member && s.incarnation == inc)
        {
            self.lifeguard.suspicions.remove(&member.machine_id);
        }
    }

    /// Whether this node's own probe of `member` failed and its suspicion timer runs.
    pub(crate) fn suspecting(&self, member: &NodeIdentity) -> bool {
        self.lifeguard
            .suspicions
            .get(&member.machine_id)
            .is_some_and(|s| s.identity == *member)
    }

    /// Whether foca still holds `member` suspect at `inc` (a walk of foca's list: only when a
    /// suspicion timer runs out).
    pub(crate) fn still_suspected(&self, member: &NodeIdentity, inc: Incarnation) -> bool {
        self.foca
            .iter_membership_state()
            .any(|m| m.id() == member && m.state() == State::Suspect && m.incarnation() == inc)
    }

    /// A probe round ran: its probe failed if foca started a suspicion meanwhile.
    pub(crate) fn probe_round_done(&mut self) {
        let lg = &mut self.lifeguard;
        if std::mem::take(&mut lg.probe_failed) {
            lg.health = (lg.health + 1).min(self.config.max_local_health);
        } else {
            lg.health = lg.health.saturating_sub(1);
        }
    }

    /// Someone suspects this node at foca incarnation `inc` (counted once per incarnation).
    pub(crate) fn heard_self_suspected(&mut self, inc: Incarnation) {
        let lg = &mut self.lifeguard;
        let fresh = match lg.self_suspected {
            Some(seen) => inc > seen,
            None => true,
        };
        if fresh {
            lg.self_suspected = Some(inc);
            lg.health = (lg.health + 1).min(self.config.max_local_health);
        }
    }

    /// Drops claims about lives that are no longer suspected at that incarnation.
    pub(crate) fn prune_claims(&mut self) {
        let roster = &self.roster;
        self.lifeguard.claims.retain(|(id, life, inc), _| {
            roster.get(id).is_some_and(|k| {
                k.identity.incarnation == *life
                    && k.incarnation == *inc
                    && k.state == State::Suspect
            })
        });
    }

    /// The buddy system: a ping to a member this node suspects carries the suspicion.
    pub(crate) fn with_suspicion(&self, to: &NodeIdentity, data: Bytes) -> Bytes {
        let Some(k) = self.roster.get(&to.machine_id) else {
            return data;
        };
        if k.state != State::Suspect || k.identity != *to {
            return data;
        }
        let Ok(packet) = Packet::parse(&data) else {
            return data;
        };
        if !matches!(packet.header.message, Message::Ping(_)) || !packet.has_updates() {
            return data;
        }
        if packet
            .updates
            .iter()
            .any(|u| u.id() == to && u.state() == State::Suspect)
        {
            return data;
        }
        let mut updates = vec![Member::new(to.clone(), k.incarnation, State::Suspect)];
        updates.extend(packet.updates.iter().cloned());
        let rewritten = packet.rewrite(&updates, &data);
        if rewritten.len() <= self.config.foca_max_packet() {
            Bytes::from(rewritten)
        } else {
            data
        }
    }
}
