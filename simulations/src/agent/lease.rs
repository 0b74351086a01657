//! The lease keeper (a keep-alive every `Timing::keepalive_period`, a new lease when etcd says the
//! old one is gone or when `fleet_decide::replace` says it may have been voted away, the replaced
//! lease kept alive until it retires) and the guard writer (the fence deadline for the guard, support
//! requests).

use fleet_decide::{OwnLease, Support, Time};

use super::{micros, Ask, Req};
use crate::sim::{Ev, Sim};

impl Sim {
    pub(crate) fn keepalive(&mut self, m: u32, gen: u32) {
        let mm = &self.machines[m as usize];
        if mm.gen != gen || !mm.powered || mm.agent.is_none() {
            return;
        }
        if mm.frozen || mm.agent_frozen {
            return; // thaw re-arms it
        }
        let period = micros(self.timing.keepalive_period());
        let next = self.local_after(m, period);
        self.push(next, Ev::Keepalive { m, gen });
        let lease = self.machines[m as usize].lease.id;
        if lease != 0 {
            self.etcd_send(m, Req::Keepalive(lease));
        } else {
            self.grant(m);
        }
        // The lease it replaced keeps its own keep-alives until it retires.
        if let Some(old) = self.machines[m as usize].retiring.as_ref().map(|l| l.id) {
            self.etcd_send(m, Req::Keepalive(old));
        }
        self.guard_tick(m);
    }

    /// Asks etcd for a new lease unless a grant is in flight.
    pub(super) fn grant(&mut self, m: u32) {
        let grant_sent = self.agent_mut(m).grant_sent;
        if !self.in_flight(grant_sent) {
            self.agent_mut(m).grant_sent = Some(self.now);
            self.etcd_send(m, Req::Grant);
        }
    }

    /// Makes `lease` machine `m`'s current lease. On a change of its ID, what was about the previous
    /// one goes: the witnesses' grants (they never count for another lease), the fence and refusal
    /// signals, the announcement (written again under the new lease).
    pub(super) fn set_lease(&mut self, m: u32, lease: OwnLease) {
        let mm = &mut self.machines[m as usize];
        let changed = mm.lease.id != lease.id;
        mm.lease = lease;
        if changed {
            let a = self.agent_mut(m);
            a.granted.clear();
            a.fenced_under = None;
            a.refused = None;
            a.announced = None;
        }
    }

    /// Lets the replaced lease go: revoked (best effort; its keys go at once), no more keep-alives.
    pub(super) fn retire(&mut self, m: u32) {
        if let Some(old) = self.machines[m as usize].retiring.take() {
            self.metrics.leases_retired += 1;
            self.etcd_send(m, Req::Revoke(old.id));
        }
    }

    /// The fence deadline of machine `m` now.
    pub(super) fn guard_of(&mut self, m: u32, now: u64) -> fleet_decide::Guard {
        let committee = self.committee_of(m, now);
        let me = self.machine_infos[self.machines[m as usize].ident as usize]
            .id
            .clone();
        let mm = &self.machines[m as usize];
        let a = mm.agent.as_ref().expect("the agent runs");
        let support = committee.as_ref().map(|c| Support {
            committee: c,
            me: &me,
            granted: &a.granted,
        });
        fleet_decide::guard_retiring(
            &self.timing,
            &mm.lease,
            mm.retiring.as_ref(),
            a.mirror_rev,
            support.as_ref(),
            Time(now),
        )
    }

    /// fleetd's guard writer, every keep-alive period and on every grant: the deadline for the guard, and
    /// once a keep-alive answer is late, support requests to the witnesses (every `V/3`, or every
    /// keep-alive period while the support falls short).
    pub(super) fn guard_tick(&mut self, m: u32) {
        let now = self.local(m);
        let g = self.guard_of(m, now);
        self.write_guard(m, g.deadline.map(|t| t.0));
        let timing = self.timing.clone();
        let lease = self.machines[m as usize].lease.clone();
        let me = self.machines[m as usize].ident;
        let a = self.machines[m as usize]
            .agent
            .as_mut()
            .expect("the agent runs");
        // As fleetd: one keep-alive answer late, ask for support, every V/3, or every keep-alive
        // period while the support falls short.
        let unconfirmed = lease
            .confirmed_at(a.mirror_rev)
            .is_none_or(|t| Time(now).since(t) > timing.keepalive_period() * 3 / 2);
        let short = g.vouch != fleet_decide::Vouch::Support;
        let round = micros(if short {
            timing.keepalive_period()
        } else {
            timing.support_validity() / 3
        });
        if lease.id != 0 && unconfirmed && a.support_round.is_none_or(|t| now >= t + round) {
            a.support_round = Some(now);
            let by_id = &self.by_id;
            let witnesses: Vec<u32> = a
                .committee
                .as_ref()
                .map(|c| {
                    c.witnesses
                        .iter()
                        .filter_map(|w| by_id.get(w).copied())
                        .filter(|&w| w != me)
                        .collect()
                })
                .unwrap_or_default();
            for w in witnesses {
                self.ask(m, w, Ask::Support(lease.id));
            }
        }
        // The agent runs a pass when fenced or may-start changes.
        let state = (g.fenced(Time(now)), g.may_start(Time(now)));
        let a = self.agent_mut(m);
        if a.guard_state != Some(state) {
            a.guard_state = Some(state);
            self.request_pass(m);
        }
    }
}
