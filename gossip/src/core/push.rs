//! State dissemination outside foca: every update goes to `gossip_fanout` random live members,
//! each node passing it on at most `max_transmissions` times ([`crate::outbox`]). A unit state
//! learnt from others is passed on only for `push_max_wait`; a node that drops rumours before
//! they made half their transmissions (a burst larger than its pushes carry: others likely lack
//! them) asks for extra anti-entropy exchanges for a while
//! (`REPAIR_EVERY`, `REPAIR_FOR`), which carry the rest in bulk.
//! `benches/dissemination.rs` measures both (figures in docs/benchmarks.md).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Node, TimerKind, Transmit};
use crate::store::{Entry, Update};

/// While this node drops rumours before they made half their transmissions, it asks for an anti-entropy exchange with a random live
/// member (which repairs what the member lacks) at most this often, besides the periodic one.
pub(crate) const REPAIR_EVERY: Duration = Duration::from_secs(1);
/// How long after it last dropped a rumour this node keeps asking for those repairs.
pub(crate) const REPAIR_FOR: Duration = Duration::from_secs(10);

impl Node {
    /// How many updates wait in this node's outbox (for tests and benchmarks: a quiet cluster's
    /// outboxes are empty).
    #[cfg(any(test, feature = "testing"))]
    pub fn pending_pushes(&self) -> usize {
        self.outbox.len()
    }

    /// How many times each node passes `update` on: state `max_transmissions` times; suspicion
    /// claims (which matter only while a suspicion lasts, and of which a partition makes many) a
    /// third of that.
    fn transmissions(&self, update: &Update) -> u8 {
        match update.entry {
            Entry::Suspicion { .. } => (self.config.max_transmissions / 3).max(2),
            _ => self.config.max_transmissions,
        }
    }

    /// Until when a rumour learnt from others is passed on: unit states for `push_max_wait`
    /// (beyond, anti-entropy carries them); everything else (metadata, suspicion claims,
    /// vouches, certificates: few, and failure detection needs them) until sent.
    fn expiry(&self, update: &Update) -> Option<Instant> {
        match update.entry {
            Entry::Unit { .. } if update.origin != self.identity().machine_id => {
                Some(self.now + self.config.push_max_wait)
            }
            _ => None,
        }
    }

    /// This node dropped rumours before they made half their transmissions: others likely lack
    /// them. A summary exchange with a
    /// random live member repairs what that member lacks (in the buckets where they differ), at
    /// most once per `REPAIR_EVERY`.
    fn repair(&mut self) {
        let now = self.now;
        if self
            .outbox
            .repaired_at
            .is_some_and(|at| now < at + REPAIR_EVERY)
        {
            return;
        }
        let Some(pick) = self.roster.random_live(&mut self.rng, 1, None).pop() else {
            return;
        };
        if let Some(addr) = self.roster.get(&pick).map(|k| k.identity.addr) {
            self.outbox.repaired_at = Some(now);
            self.request_sync(addr, false);
        }
    }

    /// Our own suspicion claim: pushed at once.
    pub(crate) fn publish_claim(&mut self, claim: Update) {
        self.publish(vec![claim]);
    }

    /// Local changes: pushed at once.
    pub(super) fn publish(&mut self, updates: Vec<Update>) {
        if self.left || updates.is_empty() {
            return;
        }
        for u in &updates {
            self.outbox.add(u, self.transmissions(u), None);
        }
        self.push_now();
    }

    /// News learnt from others: passed on with the next push.
    pub(crate) fn pass_on(&mut self, news: Vec<Update>) {
        if self.left || news.is_empty() {
            return;
        }
        for u in &news {
            let expires = self.expiry(u);
            self.outbox.add(u, self.transmissions(u), expires);
        }
        let at = self.now + self.config.gossip_interval;
        self.schedule_push(at);
    }

    pub(super) fn push_now(&mut self) {
        self.push();
        if !self.outbox.is_empty() {
            let at = self.now + self.config.gossip_interval;
            self.schedule_push(at);
        } else if let Some(until) = self.outbox.repair_until.filter(|u| self.now < *u) {
            // Nothing to push, but repairs to ask for.
            let next = self
                .outbox
                .repaired_at
                .map_or(self.now, |at| at + REPAIR_EVERY)
                .max(self.now + self.config.gossip_interval);
            if next < until {
                self.schedule_push(next);
            }
        }
    }

    fn schedule_push(&mut self, at: Instant) {
        if self.push_at.is_some_and(|p| p <= at) {
            return;
        }
        self.push_at = Some(at);
        self.schedule(at, TimerKind::Push);
    }

    /// One push round: a datagram of pending updates to each of `gossip_fanout` random live
    /// members.
    fn push(&mut self) {
        if self.outbox.expire(self.now) > 0 {
            self.outbox.repair_until = Some(self.now + REPAIR_FOR);
        }
        if self.outbox.repair_until.is_some_and(|at| self.now < at) {
            self.repair();
        }
        let me = self.identity().clone();
        let room = self
            .config
            .max_packet_size
            .max(256)
            .saturating_sub(crate::wire::state_header_len(&me));
        let targets =
            self.roster
                .random_live(&mut self.rng, self.config.gossip_fanout.max(1), None);
        for target in targets {
            if self.outbox.is_empty() {
                break;
            }
            let Some(dst) = self.roster.get(&target).map(|k| k.identity.addr) else {
                continue;
            };
            let (bytes, count) = self.outbox.fill(room);
            if count == 0 {
                break;
            }
            self.counters.pushes_out += 1;
            self.transmits.push_back(Transmit {
                dst,
                dst_id: target,
                data: Bytes::from(crate::wire::state_datagram(&me, count, &bytes)),
            });
        }
    }
}
