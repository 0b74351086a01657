//! One pass of the agent: the decision core asked about every unit the plan puts here, every claim
//! this machine holds or held and every unit loaded here; its verdicts carried out.

use std::collections::{BTreeMap, BTreeSet};

use fleet_decide::{
    Case, Claim as DClaim, Ctx, Handoff, LeasePoll, Peer, Placement, Signals, Time, Write,
};

use super::{micros, Req};
use crate::etcd::Txn;
use crate::sim::Sim;

impl Sim {
    pub(crate) fn pass(&mut self, m: u32) {
        if !self.machines[m as usize].agent_runs() {
            return;
        }
        let now = self.local(m);
        let timing = self.timing.clone();
        // Promises about leases that are gone are forgotten (as of this mirror).
        {
            let mm = &mut self.machines[m as usize];
            if let Some(a) = mm.agent.as_ref() {
                if a.mirror_rev != 0 {
                    let infos = &self.machine_infos;
                    let by_id = &self.by_id;
                    let anns = &a.anns;
                    mm.witness.retain(&timing, Time(now), |id, l| {
                        by_id
                            .get(id)
                            .and_then(|j| anns.get(j))
                            .is_some_and(|ann| ann.lease == l)
                    });
                    let _ = infos;
                }
            }
        }
        let guard = self.guard_of(m, now);
        self.write_guard(m, guard.deadline.map(|t| t.0));
        self.tell_takes_units(m, &guard, now);
        let (mirror_rev, conflict, announced) = {
            let a = self.agent_mut(m);
            (a.mirror_rev, a.conflict, a.announced)
        };
        let fenced = guard.fenced(Time(now));
        let was = std::mem::replace(&mut self.agent_mut(m).fenced, fenced);
        if fenced {
            // As fleetd: a fence past a deadline (not for want of a first confirmation) under the
            // current lease is remembered until the lease changes (`fleet_decide::Signals::fenced`).
            let lease = self.machines[m as usize].lease.id;
            if guard.deadline.is_some() && lease != 0 {
                self.agent_mut(m).fenced_under = Some(lease);
            }
            if !was {
                self.metrics.fencings += 1;
            }
            self.kill_fenced(m, false);
            return;
        }
        if let Some(d) = guard.deadline.filter(|d| d.0 > now) {
            // Look again at the deadline (to stop what it no longer covers).
            let at = self.machines[m as usize].clock.global(d.0);
            self.request_pass_at(m, at);
        }
        let lease = self.machines[m as usize].lease.id;
        if mirror_rev == 0 {
            return;
        }
        // The identity check: announce this machine under the lease (refused if another agent holds
        // the ID); until it is announced under the current lease, touch nothing (claim nothing, start
        // nothing, stop nothing).
        if lease == 0 || announced != Some(lease) {
            let sent = self.agent_mut(m).announce_sent;
            if lease != 0 && !self.in_flight(sent) {
                self.agent_mut(m).announce_sent = Some(self.now);
                self.etcd_send(m, Req::Announce(lease));
            }
            return;
        }
        if conflict || !self.submitted {
            return;
        }
        let committee = self.committee_of(m, now).unwrap_or_default();
        self.run_votes(m, &committee, now);
        // The plan over the machines this agent's gossip shows alive, and itself, through the decision
        // core's rule (`fleet_decide::plan`: suspects, and machines that said they cannot take units,
        // are left out).
        let me = self.machines[m as usize].ident;
        self.refresh_suspects(m);
        let (hash, live) = {
            let a = self.machines[m as usize].agent.as_ref().expect("runs");
            let others: Vec<u32> = a.live.iter().collect();
            let mut view: Vec<fleet_decide::Standing> = others
                .iter()
                .map(|&j| fleet_decide::Standing {
                    itself: j == me,
                    suspected: a.suspects.contains(&j),
                    refuses: if j == me {
                        a.told_cannot_take
                    } else {
                        self.refuses_units(m, j)
                    },
                })
                .collect();
            if !a.live.contains(me) {
                view.push(fleet_decide::Standing {
                    itself: true,
                    suspected: false,
                    refuses: a.told_cannot_take,
                });
            }
            let keep = fleet_decide::plan_over(&view);
            let mut hash = a.live_hash;
            let mut live: Vec<u32> = Vec::with_capacity(others.len() + 1);
            for (&j, kept) in others.iter().zip(keep) {
                if kept {
                    live.push(j);
                } else {
                    hash ^= crate::sim::mix(j as u64);
                }
            }
            live.push(me);
            live.sort_unstable();
            (hash, live)
        };
        let plan = self.plan_for(&live, hash, mirror_rev);
        let mut here: BTreeMap<u32, bool> = BTreeMap::new();
        here.extend(plan.on(me).iter().copied());
        let mut candidates: BTreeSet<u32> = here.keys().copied().collect();
        candidates.extend(self.machines[m as usize].units.keys().copied());
        candidates.extend(self.etcd.claims_of(me));
        candidates.extend(self.etcd.handoffs_from(me));
        let me_id = self.machine_infos[me as usize].id.clone();
        let claims: Vec<(u32, Option<crate::etcd::Claim>, Option<DClaim>)> = candidates
            .iter()
            .map(|&u| {
                let claim = self.etcd.claim_at(u, mirror_rev);
                (u, claim, claim.map(|c| self.dclaim(c)))
            })
            .collect();
        // This machine's own leases (as fleetd, every pass with the registry snapshot): a new lease
        // when the current one may have been voted away, the replaced one let go once nothing rests
        // on it. The mirror's claims of this machine and of handovers from it are all among `claims`.
        self.replace_or_retire(m, &me_id, lease, claims.iter().filter_map(|c| c.2.as_ref()));
        let mut target = BTreeSet::new();
        let mut wake: Option<u64> = None;
        let mut writes = Vec::new();
        let mut polls = Vec::new();
        let mut votes = Vec::new();
        {
            let a = self.machines[m as usize].agent.as_ref().expect("runs");
            let ctx = Ctx {
                timing: &timing,
                me: &me_id,
                lease,
                guard: &guard,
                committee: &committee,
                now: Time(now),
            };
            for (u, claim, dclaim) in claims {
                let placement = match here.get(&u) {
                    Some(true) => Placement::GlobalHere,
                    Some(false) => Placement::Here,
                    None => Placement::NotHere,
                };
                // The peer this unit's verdict is about: the holder, or the previous holder of a
                // handover this machine started.
                let peer_of = claim.and_then(|c| {
                    if c.machine != me {
                        Some((c.machine, c.lease))
                    } else {
                        c.handoff
                    }
                });
                let empty: &[LeasePoll] = &[];
                let peer = match peer_of {
                    Some((j, l)) => Peer {
                        alive: a.live.contains(j),
                        suspect: a.suspects.contains(&j),
                        down: a.down_since.contains_key(&j),
                        votes: a.votes.get(&(j, l)).map_or(0, |v| {
                            v.iter()
                                .filter(|w| {
                                    **w != j
                                        && committee.contains(&self.machine_infos[**w as usize].id)
                                })
                                .count()
                        }),
                        restarting: false,
                        polls: a.polls.get(&l).map_or(empty, |v| v.as_slice()),
                    },
                    None => Peer::default(),
                };
                let sys = self.machines[m as usize].units.get(&u);
                let case = Case {
                    placement,
                    claim: dclaim.as_ref(),
                    loaded: sys.is_some(),
                    running: sys.is_some_and(|s| s.started || s.active.is_up()),
                    peer,
                    superseded_at: Time(a.superseded_at.get(&u).copied().unwrap_or(a.started_at)),
                };
                let v = fleet_decide::decide(&ctx, &case);
                if self.trace == Some(u) {
                    eprintln!(
                        "{:>10.3}s {} {:?} claim {:?} peer alive {} down {} votes {} polls {:?} -> {:?} (guard {:?})",
                        self.now as f64 / 1e6,
                        me_id,
                        placement,
                        claim,
                        case.peer.alive,
                        case.peer.down,
                        case.peer.votes,
                        case.peer.polls.iter().map(|p| (p.sent.0 / 1000, p.answer)).collect::<Vec<_>>(),
                        v,
                        guard.deadline
                    );
                }
                if v.run {
                    target.insert(u);
                }
                if let Some(w) = v.write {
                    writes.push((u, w));
                }
                if let Some(l) = v.poll {
                    polls.push(l);
                }
                if let Some(h) = v.votes {
                    if let Some(&j) = self.by_id.get(&h.machine) {
                        votes.push((j, h.lease));
                    }
                }
                if let Some(t) = v.wake_at {
                    wake = Some(wake.map_or(t.0, |w: u64| w.min(t.0)));
                }
            }
        }
        self.apply(m, &target);
        for (u, w) in writes {
            self.send_write(m, u, w, lease);
        }
        polls.sort_unstable();
        polls.dedup();
        for l in polls {
            self.poll_lease(m, l, now);
        }
        if !votes.is_empty() {
            let a = self.agent_mut(m);
            a.votes_wanted.extend(votes);
            // The votes are asked at the next pass.
            let at = self.now + self.sc.config.pass_quantum.0;
            self.request_pass_at(m, at);
        }
        if let Some(t) = wake {
            let at = self.machines[m as usize].clock.global(t).max(self.now);
            self.request_pass_at(m, at);
        }
    }

    /// An etcd claim as the decision core reads it.
    fn dclaim(&self, c: crate::etcd::Claim) -> DClaim {
        DClaim {
            machine: self.machine_infos[c.machine as usize].id.clone(),
            lease: c.lease,
            mod_revision: c.mod_revision,
            handoff: c.handoff.map(|(h, l)| Handoff {
                machine: self.machine_infos[h as usize].id.clone(),
                lease: l,
            }),
        }
    }

    /// fleetd's lease keeper, each pass: asks [`fleet_decide::replace`] whether the current `lease` may
    /// have been voted away (a handover from it in `claims`, a fence under it, a witness's refusal),
    /// and if so grants a new one (which becomes current on the answer, the old one retiring); asks
    /// [`fleet_decide::may_retire`] whether the retiring lease may go, and if so revokes it.
    fn replace_or_retire<'a>(
        &mut self,
        m: u32,
        me: &fleet_sched::MachineId,
        lease: i64,
        claims: impl Iterator<Item = &'a DClaim> + Clone,
    ) {
        let ident = self.machines[m as usize].ident;
        let retiring = self.machines[m as usize].retiring.as_ref().map(|l| l.id);
        let a = self.machines[m as usize].agent.as_ref().expect("runs");
        let signals = Signals {
            fenced: a.fenced_under == Some(lease),
            refused: a.refused == Some(lease),
        };
        let announced = a.anns.get(&ident).map(|ann| ann.lease);
        if let Some(why) = fleet_decide::replace(me, lease, retiring, claims.clone(), signals) {
            if std::env::var_os("FLEET_SIM_TRACE").is_some_and(|v| v == "leases") {
                eprintln!(
                    "{:>10.3}s {me} replaces lease {lease:x}: {why:?}",
                    self.now as f64 / 1e6
                );
            }
            self.agent_mut(m).replacing = Some(lease);
            self.grant(m);
        }
        if let Some(old) = retiring {
            if fleet_decide::may_retire(me, old, announced, claims) {
                if std::env::var_os("FLEET_SIM_TRACE").is_some_and(|v| v == "leases") {
                    eprintln!(
                        "{:>10.3}s {me} retires lease {old:x}",
                        self.now as f64 / 1e6
                    );
                }
                self.retire(m);
            }
        }
    }

    fn send_write(&mut self, m: u32, unit: u32, w: Write, lease: i64) {
        let sent = self.agent_mut(m).txn_sent.get(&unit).copied();
        if self.in_flight(sent) {
            return;
        }
        let idx = |s: &Sim, id: &fleet_sched::MachineId| s.by_id.get(id).copied().unwrap_or(0);
        let txn = match w {
            Write::Claim => Txn::Claim,
            Write::Supersede { mod_revision, from } => Txn::Supersede {
                seen: mod_revision,
                from: (idx(self, &from.machine), from.lease),
            },
            Write::Rebind { mod_revision } => Txn::Rebind { seen: mod_revision },
            Write::Release { mod_revision } => Txn::Release { seen: mod_revision },
            Write::Ack { mod_revision } => Txn::Ack { seen: mod_revision },
        };
        let now = self.now;
        self.agent_mut(m).txn_sent.insert(unit, now);
        self.etcd_send(m, Req::Txn { unit, lease, txn });
    }

    /// Asks etcd about `lease` unless an answer is pending or the last ask is recent; looks again at
    /// the next poll time.
    fn poll_lease(&mut self, m: u32, lease: i64, now: u64) {
        let period = micros(self.timing.lease_poll_period());
        let a = self.agent_mut(m);
        let last = a.last_poll.get(&lease).copied();
        let pending = a.poll_sent.get(&lease).copied();
        if self.in_flight(pending) {
            return;
        }
        if let Some(last) = last.filter(|&l| now < l + period) {
            let at = self.machines[m as usize].clock.global(last + period);
            self.request_pass_at(m, at);
            return;
        }
        let g = self.now;
        let a = self.agent_mut(m);
        a.last_poll.insert(lease, now);
        a.poll_sent.insert(lease, g);
        self.metrics.lease_polls += 1;
        self.etcd_send(m, Req::TimeToLive(lease));
        let at = self.local_after(m, period);
        self.request_pass_at(m, at);
    }
}
