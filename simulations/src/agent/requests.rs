//! etcd requests: a request reaches etcd after half the round trip (plus `etcd_slow`) and is
//! applied; the answer comes back after the other half if the link is up; fleetd drops an answer later
//! than its timeout.

use fleet_decide::{Confirmation, LeaseAnswer, LeasePoll, Time};

use super::{RandomBool, Req, Resp};
use crate::etcd::Txn;
use crate::sim::{Ev, Sim};

/// Keeps the last few `LeaseTimeToLive` answers per lease.
const POLLS_KEPT: usize = 8;

impl Sim {
    /// Sends `req` from machine `m`'s fleetd.
    pub(crate) fn etcd_send(&mut self, m: u32, req: Req) {
        let mm = &self.machines[m as usize];
        if !mm.agent_runs() {
            return;
        }
        let gen = mm.gen;
        let sent = self.local(m);
        if !self.etcd_reachable(m) || !self.lossless_to_etcd(m) {
            self.etcd.ops.unavailable += 1;
            return;
        }
        let at = self.now + self.sc.config.etcd_rtt.0 / 2 + self.etcd_extra;
        let sent_g = self.now;
        self.push(
            at,
            Ev::EtcdArrive {
                m,
                gen,
                req,
                sent,
                sent_g,
            },
        );
    }

    fn lossless_to_etcd(&mut self, m: u32) -> bool {
        let e = self.net.etcd();
        let loss = self.net.loss(m as usize, e, 0.0);
        !(loss > 0.0 && self.rng.random_bool_(loss))
    }

    /// The request reaches etcd: it is applied, and the answer sent back.
    pub(crate) fn etcd_arrive(&mut self, m: u32, gen: u32, req: Req, sent: u64, sent_g: u64) {
        if !self.etcd_up {
            self.etcd.ops.unavailable += 1;
            return;
        }
        let now = self.now;
        let ident = self.machines[m as usize].ident;
        let addr = m;
        let resp = match &req {
            Req::Sync => Resp::Synced,
            Req::Grant => {
                let id = self.etcd.grant(m, self.sc.config.agent_ttl.0, now);
                Resp::Granted(id, self.etcd.revision())
            }
            Req::Keepalive(l) => {
                if self.etcd.keepalive(*l, now) {
                    Resp::Kept(self.etcd.revision())
                } else {
                    Resp::LeaseGone
                }
            }
            Req::Revoke(l) => {
                if self.etcd.revoke(*l) {
                    self.notify_watchers();
                }
                Resp::Revoked
            }
            Req::TimeToLive(l) => Resp::Ttl(self.etcd.time_to_live(*l, now)),
            Req::Announce(l) => {
                let ok = self.etcd.announce(ident, *l, addr).is_ok();
                if ok {
                    self.notify_watchers();
                }
                Resp::Announced(ok)
            }
            Req::Txn { unit, lease, txn } => {
                let r = self.etcd.txn(*unit, ident, *lease, *txn);
                if r.is_some() {
                    if self.machines[m as usize].impostor {
                        self.checker.impostor_claim(now, m, *unit);
                    }
                    if matches!(txn, Txn::Supersede { .. }) {
                        self.metrics.takeovers += 1;
                    }
                    self.notify_watchers();
                }
                Resp::Txn(r)
            }
        };
        // The answer travels back.
        let e = self.net.etcd();
        let back_loss = self.net.loss(e, m as usize, 0.0);
        if self.net.blocked(e, m as usize) || (back_loss > 0.0 && self.rng.random_bool_(back_loss))
        {
            self.etcd.ops.unavailable += 1;
            return;
        }
        let at = self.now + self.sc.config.etcd_rtt.0 / 2;
        self.push(
            at,
            Ev::EtcdAnswer {
                m,
                gen,
                req,
                resp,
                sent,
                sent_g,
            },
        );
    }

    /// The answer reaches fleetd (if it still runs, and before its timeout).
    pub(crate) fn etcd_answer(
        &mut self,
        m: u32,
        gen: u32,
        req: Req,
        resp: Resp,
        sent: u64,
        sent_g: u64,
    ) {
        let mm = &self.machines[m as usize];
        if mm.gen != gen || !mm.agent_runs() {
            return;
        }
        if self.now.saturating_sub(sent_g) > self.sc.config.etcd_timeout.0 {
            self.etcd.ops.unavailable += 1;
            self.clear_inflight(m, &req);
            return;
        }
        self.clear_inflight(m, &req);
        let local = self.local(m);
        match (req, resp) {
            (Req::Sync, Resp::Synced) if self.agent_mut(m).mirror_rev == 0 => {
                // The registry as of now (the watch continues from there).
                let rev = self.etcd.revision();
                self.advance_mirror(m, rev);
            }
            (Req::Grant, Resp::Granted(id, rev)) => {
                let lease = fleet_decide::OwnLease {
                    id,
                    ttl: self.sc.config.agent_ttl.std(),
                    confirmations: vec![Confirmation {
                        sent: Time(sent),
                        revision: rev,
                    }],
                };
                // A replacement: the lease it replaces retires (kept alive, confirmed) while claims,
                // handovers or the announcement rest on it.
                let replacing = self.agent_mut(m).replacing.take();
                let mm = &mut self.machines[m as usize];
                if replacing.is_some_and(|r| r == mm.lease.id) && mm.retiring.is_none() {
                    mm.retiring = Some(std::mem::take(&mut mm.lease));
                    self.metrics.leases_replaced += 1;
                }
                self.set_lease(m, lease);
            }
            (Req::Keepalive(l), Resp::Kept(rev)) => {
                let mm = &mut self.machines[m as usize];
                let c = Confirmation {
                    sent: Time(sent),
                    revision: rev,
                };
                if mm.lease.id == l {
                    mm.lease.confirm(c);
                } else if let Some(old) = mm.retiring.as_mut().filter(|o| o.id == l) {
                    old.confirm(c);
                }
            }
            (Req::Keepalive(l), Resp::LeaseGone) => {
                let mm = &mut self.machines[m as usize];
                if mm.lease.id == l {
                    // etcd expired it (and the claims with it): start over with a new one.
                    self.set_lease(m, fleet_decide::OwnLease::default());
                    self.metrics.leases_lost += 1;
                    let gen = self.machines[m as usize].gen;
                    self.push(self.now, Ev::Keepalive { m, gen });
                } else if mm.retiring.as_ref().is_some_and(|o| o.id == l) {
                    // The replaced lease is gone: nothing to keep alive any more.
                    mm.retiring = None;
                }
            }
            (Req::TimeToLive(l), Resp::Ttl(answer)) => {
                let poll = LeasePoll {
                    sent: Time(sent),
                    received: Time(local),
                    answer: match answer {
                        Some((ttl, granted)) => LeaseAnswer::Remaining { ttl, granted },
                        None => LeaseAnswer::NotFound,
                    },
                };
                let polls = self.agent_mut(m).polls.entry(l).or_default();
                polls.push(poll);
                if polls.len() > POLLS_KEPT {
                    polls.remove(0);
                }
            }
            (Req::Announce(l), Resp::Announced(ok)) => {
                let alive = self.etcd.lease_alive(l);
                let a = self.agent_mut(m);
                if ok {
                    a.announced = Some(l);
                    a.conflict = false;
                } else if alive {
                    let first = !a.conflict;
                    a.conflict = true;
                    if first {
                        self.metrics.identity_conflicts += 1;
                    }
                }
            }
            (Req::Txn { unit, txn, .. }, Resp::Txn(Some(_))) => {
                if matches!(txn, Txn::Supersede { .. }) {
                    self.agent_mut(m).superseded_at.insert(unit, local);
                }
            }
            _ => {}
        }
        self.request_pass(m);
    }

    fn clear_inflight(&mut self, m: u32, req: &Req) {
        let a = self.agent_mut(m);
        match req {
            Req::Grant => a.grant_sent = None,
            Req::Announce(_) => a.announce_sent = None,
            Req::Txn { unit, .. } => {
                a.txn_sent.remove(unit);
            }
            Req::TimeToLive(l) => {
                a.poll_sent.remove(l);
            }
            _ => {}
        }
    }
}
