//! What comes into the node: SWIM datagrams (checked, then handed to foca) and state pushes; and
//! what foca's runtime asks for after each input (datagrams, timers, notifications).

use std::net::SocketAddr;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Member, OwnedNotification, State};

use super::{Error, Event, Node, StatePush, Transmit};
use crate::store::Change;
use crate::types::{MachineId, NodeIdentity};
use crate::wire::{Packet, DATAGRAM_SWIM};

impl Node {
    pub(super) fn handle_swim(
        &mut self,
        from: SocketAddr,
        certified: Option<&MachineId>,
        data: &[u8],
    ) -> Result<(), Error> {
        let packet = match Packet::parse(data) {
            Ok(p) => p,
            Err(e) => return Err(self.garbage(from, foca::Error::Decode(Box::new(e)))),
        };
        let sender = packet.header.src.clone();
        self.check_sender(from, certified, &sender)?;
        if !self.foca_accepts(&packet.header) {
            // foca drops the whole packet (see `foca_accepts`): nothing in it may reach the
            // roster, the vouches or Lifeguard either.
            let result = self.foca.handle_data(data, &mut self.runtime);
            self.drain_runtime();
            return result.map_err(|e| self.garbage(from, e));
        }
        let mut kept = Vec::with_capacity(packet.updates.len());
        // A peer whose budget of refusals is spent speaks only for itself.
        let over = self.budget_left(&sender.machine_id) == 0;
        let mut dropped = 0;
        for u in &packet.updates {
            if over && u.id().machine_id != sender.machine_id && *u.id() != *self.identity() {
                dropped += 1;
                continue;
            }
            if self.admit(&sender, u) {
                kept.push(u.clone());
            }
        }
        self.over_budget(&sender.machine_id, dropped);
        // Judged against the roster as foca holds the members now, before either takes anything.
        let news = self.without_swim_no_ops(&sender, &kept);
        self.observe_datagram(
            &Member::new(sender.clone(), packet.header.src_incarnation, State::Alive),
            &kept,
        );
        let result = if news.len() == packet.updates.len() {
            self.foca.handle_data(data, &mut self.runtime)
        } else {
            let rewritten = packet.rewrite(&news, data);
            self.foca.handle_data(&rewritten, &mut self.runtime)
        };
        self.drain_runtime();
        result.map_err(|e| self.garbage(from, e))
    }

    /// `updates` without those foca would ignore: an update about the very identity foca holds
    /// for its machine, in a state and incarnation that do not take precedence over what it
    /// holds. foca finds each update's member by a walk of its whole list (its `Members::apply`),
    /// so during a cluster's formation, when SWIM datagrams carry many updates a node already
    /// knows, those walks were most of a node's work; the roster (the exact cache of foca's list)
    /// answers in O(log n). foca does nothing for an ignored update (no state, broadcast, timer,
    /// notification or random draw), so what it applies and does is unchanged, and the roster
    /// still observes every update (it ignores the same ones). Kept whatever the roster says:
    /// updates about this machine (foca's refutations and renewals), about the sender's machine
    /// (foca first applies the sender alive, which may change what it holds), and every update
    /// after the first kept one about the same machine.
    fn without_swim_no_ops(
        &self,
        sender: &NodeIdentity,
        updates: &[Member<NodeIdentity>],
    ) -> Vec<Member<NodeIdentity>> {
        let me = &self.identity().machine_id;
        let mut touched: Vec<&MachineId> = Vec::new();
        let mut out = Vec::with_capacity(updates.len());
        for m in updates {
            let id = &m.id().machine_id;
            let no_op = id != me
                && *id != sender.machine_id
                && !touched.contains(&id)
                && self.roster.get(id).is_some_and(|k| {
                    k.identity == *m.id()
                        && !crate::roster::precedes(
                            k.state,
                            k.incarnation,
                            m.state(),
                            m.incarnation(),
                        )
                });
            if !no_op {
                touched.push(id);
                out.push(m.clone());
            }
        }
        out
    }

    pub(super) fn handle_push(
        &mut self,
        from: SocketAddr,
        certified: Option<&MachineId>,
        data: &[u8],
    ) -> Result<(), Error> {
        let push = match StatePush::decode(data) {
            Ok(p) => p,
            Err(e) => {
                return Err(self.garbage(from, foca::Error::Decode(Box::new(e))));
            }
        };
        self.check_sender(from, certified, &push.from)?;
        // The sender speaks for itself: its own state may come up to its identity's epoch.
        self.store
            .allow_epoch(&push.from.machine_id, push.from.incarnation);
        // Each update is taken only with its origin's signature (`crate::crypto`).
        let news = self.take_push(&push.from.machine_id, push.updates);
        self.pass_on(news);
        self.drain_changes();
        self.release_vouched();
        Ok(())
    }

    pub(crate) fn garbage(&mut self, from: SocketAddr, source: foca::Error) -> Error {
        self.counters.garbage_dropped += 1;
        tracing::debug!(%from, error = %source, "dropped datagram");
        Error::Garbage { from, source }
    }

    pub(crate) fn drain_runtime(&mut self) {
        let now = self.now;
        let mut drained = self.send_foca_datagrams();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            drained += 1;
            self.lifeguard_schedule(after, timer);
        }
        // A suspicion that just started may have asked its suspect something directly.
        drained += self.send_foca_datagrams();
        if let Some(vouch) = self.own_vouch() {
            self.publish(vec![vouch]);
        }
        while let Some(n) = self.runtime.to_notify() {
            drained += 1;
            let event = match n {
                OwnedNotification::MemberUp(id) => {
                    self.roster.up(&id, now);
                    self.store.allow_epoch(&id.machine_id, id.incarnation);
                    Event::MemberUp(id.machine_id)
                }
                OwnedNotification::MemberDown(id) => {
                    self.roster.down(&id, now);
                    self.held_at_down(&id);
                    Event::MemberDown(id.machine_id)
                }
                OwnedNotification::Rename(_, new) => {
                    // A walk of foca's list, but renames are rare (restarts, renewals).
                    let held = self
                        .foca
                        .iter_membership_state()
                        .find(|m| *m.id() == new)
                        .map(|m| (m.state(), m.incarnation()));
                    self.roster.renamed(&new, held, now);
                    self.store.allow_epoch(&new.machine_id, new.incarnation);
                    Event::MemberRestarted(new.machine_id)
                }
                OwnedNotification::Active => Event::Connected,
                OwnedNotification::Idle => Event::Isolated,
                OwnedNotification::Defunct => Event::Defunct,
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        incarnation = id.incarnation,
                        "the cluster declared this node down: rejoined with a renewed identity"
                    );
                    Event::Rejoined(id)
                }
            };
            tracing::debug!(?event, "gossip event");
            self.events.push_back(event);
        }
        if drained > crate::core::QUEUE_ROOM_KEPT && self.runtime.backlog() == 0 {
            // foca's queues keep the room of their longest moment and cannot give it back: a
            // drained runtime is a new one.
            self.runtime = AccumulatingRuntime::new();
        }
        self.drain_changes();
    }

    /// Frames foca's datagrams as transmits; returns how many.
    fn send_foca_datagrams(&mut self) -> usize {
        let mut n = 0;
        while let Some((to, data)) = self.runtime.to_send() {
            n += 1;
            self.note_own_incarnation(&data);
            let data = self.with_suspicion(&to, data);
            let mut framed = Vec::with_capacity(data.len() + 1);
            framed.push(DATAGRAM_SWIM);
            framed.extend_from_slice(&data);
            self.transmits.push_back(Transmit {
                dst: to.addr,
                dst_id: to.machine_id,
                data: Bytes::from(framed),
            });
        }
        n
    }

    pub(crate) fn drain_changes(&mut self) {
        let changes = self.store.take_changes();
        for (origin, change) in changes {
            self.events.push_back(match change {
                Change::Metadata => Event::MetadataChanged(origin),
                Change::Units => Event::UnitStatesChanged(origin),
            });
        }
    }
}
