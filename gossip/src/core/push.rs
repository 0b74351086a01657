//! State dissemination outside foca: every update goes to `gossip_fanout` random live members,
//! each node passing it on at most `max_transmissions` times ([`crate::outbox`]).

use std::time::Instant;

use bytes::Bytes;

use super::{Node, TimerKind, Transmit};
use crate::store::{Entry, Update};

impl Node {
    /// How many times each node passes `update` on: state `max_transmissions` times; suspicion
    /// claims (which matter only while a suspicion lasts, and of which a partition makes many) a
    /// third of that.
    fn transmissions(&self, update: &Update) -> u8 {
        match update.entry {
            Entry::Suspicion { .. } => (self.config.max_transmissions / 3).max(2),
            _ => self.config.max_transmissions,
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
            self.outbox.add(u, self.transmissions(u));
        }
        self.push_now();
    }

    /// News learnt from others: passed on with the next push.
    pub(crate) fn pass_on(&mut self, news: Vec<Update>) {
        if self.left || news.is_empty() {
            return;
        }
        for u in &news {
            self.outbox.add(u, self.transmissions(u));
        }
        let at = self.now + self.config.gossip_interval;
        self.schedule_push(at);
    }

    pub(super) fn push_now(&mut self) {
        self.push();
        if !self.outbox.is_empty() {
            let at = self.now + self.config.gossip_interval;
            self.schedule_push(at);
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
