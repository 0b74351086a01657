//! The node's timers: foca's (run when Lifeguard says), pushes, anti-entropy, join retries and
//! direct checks of a machine's new life; and the retries of forgotten members' addresses, which
//! merge back a partition that outlived `remove_down_after`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foca::{State, Timer};
use rand::RngExt;

use super::{Node, TimerKind};
use crate::lifeguard::TimerKey;
use crate::types::{MachineId, NodeIdentity};

/// How often at most this node asks one machine directly about a new life it heard of.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// The roster is reconciled with foca's list every this many anti-entropy intervals (one minute
/// with the defaults): an O(n) walk, a safety net (the roster follows foca's notifications).
const RECONCILE_EVERY: u64 = 12;
/// How long the address of a member forgotten after `remove_down_after` is still tried now and
/// then (a partition that outlived `remove_down_after` heals through it; Serf's
/// `reconnect_timeout` is the same idea, 24 h by default there too).
const LOST_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);
/// At most this many forgotten addresses are kept (the oldest go first): one reachable member of
/// the other side is enough to merge back, since a full sync exchanges whole memberships.
const LOST_MAX: usize = 1024;

impl Node {
    pub(super) fn request_sync(&mut self, addr: SocketAddr, full: bool) {
        self.counters.syncs_requested += 1;
        if full {
            self.full_syncs.insert(addr);
        }
        self.syncs.push_back(addr);
    }

    pub(super) fn schedule(&mut self, at: Instant, timer: TimerKind) -> TimerKey {
        // foca wants a probe's indirect stage handled before the next probe when both are due.
        let prio = match timer {
            TimerKind::Foca(Timer::SendIndirectProbe { .. }) => 0,
            _ => 1,
        };
        self.timer_seq += 1;
        let key = (at, prio, self.timer_seq);
        self.timers.insert(key, timer);
        key
    }

    /// Schedules one of foca's timers; returns its key.
    pub(crate) fn schedule_keyed(&mut self, at: Instant, timer: Timer<NodeIdentity>) -> TimerKey {
        self.schedule(at, TimerKind::Foca(timer))
    }

    /// Removes a scheduled foca timer and returns it.
    pub(crate) fn take_timer(&mut self, key: TimerKey) -> Option<Timer<NodeIdentity>> {
        match self.timers.remove(&key) {
            Some(TimerKind::Foca(t)) => Some(t),
            Some(other) => {
                self.timers.insert(key, other);
                None
            }
            None => None,
        }
    }

    /// Cancels a scheduled foca timer.
    pub(crate) fn cancel_timer(&mut self, key: TimerKey) {
        let _ = self.take_timer(key);
    }

    // long: the one dispatch of every timer of the protocol core, a match arm per timer.
    pub(super) fn fire(&mut self, timer: TimerKind) {
        match timer {
            TimerKind::Foca(t) => {
                let forget = match &t {
                    Timer::RemoveDown(id) => Some(id.clone()),
                    _ => None,
                };
                if let Timer::ChangeSuspectToDown {
                    member_id,
                    incarnation,
                    ..
                } = &t
                {
                    self.suspicion_ends(member_id, *incarnation);
                    if !self.still_suspected(member_id, *incarnation) {
                        // Refuted (or renamed, or already down): foca would still send the member
                        // a "you are down" courtesy message (it checks the incarnation only for
                        // its own verdict), which makes a live member rejoin for nothing.
                        return;
                    }
                }
                let probe_round = matches!(t, Timer::ProbeRandomMember(_));
                if probe_round {
                    self.lifeguard.probe_failed = false;
                }
                if let Err(e) = self.foca.handle_timer(t, &mut self.runtime) {
                    tracing::debug!(error = %e, "foca timer failed");
                }
                self.drain_runtime();
                if probe_round {
                    self.probe_round_done();
                }
                // foca keeps this node's earlier identities (after a renewal) as down members: the
                // end of such a past life forgets nothing of this machine.
                let own = forget
                    .as_ref()
                    .is_some_and(|id| id.machine_id == self.identity().machine_id);
                if let Some(id) = forget.filter(|_| !own) {
                    self.roster.forget(&id);
                    if self.roster.get(&id.machine_id).is_none() {
                        self.store.forget(&id.machine_id);
                        self.certs.forget(&id.machine_id);
                        self.remember_lost(id);
                    }
                }
            }
            TimerKind::Push => {
                self.push_at = None;
                self.push_now();
            }
            TimerKind::AntiEntropy => {
                // The roster follows foca's notifications; re-read foca's list now and then so
                // that it never drifts (an O(n) walk about once a minute, off the hot paths).
                if self.anti_entropy_ticks.is_multiple_of(RECONCILE_EVERY) {
                    let fixed = self
                        .roster
                        .reconcile(self.foca.iter_membership_state(), self.now);
                    if fixed > 0 {
                        tracing::debug!(fixed, "roster reconciled with foca");
                    }
                }
                self.anti_entropy_ticks += 1;
                let now = self.now;
                self.checked.retain(|_, at| now < *at + CHECK_EVERY);
                self.prune_claims();
                self.prune_held();
                self.budgets.prune(now);
                // A summary sync with one random live member, and a full one with one random
                // member we saw die: if it was only cut off (a healed partition), the sync makes
                // both sides renew and rejoin.
                if let Some(pick) = self.roster.random_live(&mut self.rng, 1, None).pop() {
                    if let Some(k) = self.roster.get(&pick) {
                        let addr = k.identity.addr;
                        self.request_sync(addr, false);
                    }
                }
                if let Some(addr) = self.random_down(1).pop() {
                    self.request_sync(addr, true);
                }
                // A partition longer than `remove_down_after` leaves no down member to heal
                // through: each side forgot the other. Like Serf's reconnect of failed members,
                // retry one seed or forgotten address that is no known member's, with probability
                // (such addresses / live members): about one attempt per interval cluster-wide for
                // one dead machine, one per node per interval on a side that lost more than it kept.
                self.reconnect();
                self.schedule(
                    self.now + self.config.anti_entropy_interval,
                    TimerKind::AntiEntropy,
                );
            }
            TimerKind::JoinRetry => {
                if self.foca.num_members() == 0 {
                    // Isolated: retry the seeds, and a few members we saw die (they may only have
                    // been cut off; a sync makes both sides renew and rejoin each other).
                    let mut targets: Vec<SocketAddr> = self.seeds.iter().copied().collect();
                    for addr in self.random_down(3) {
                        if !self.seeds.contains(&addr) {
                            targets.push(addr);
                        }
                    }
                    let mut lost = self.reconnect_candidates();
                    lost.retain(|a| !self.seeds.contains(a));
                    for _ in 0..3 {
                        if lost.is_empty() {
                            break;
                        }
                        let i = self.rng.random_range(0..lost.len());
                        targets.push(lost.swap_remove(i));
                    }
                    for addr in targets {
                        self.request_sync(addr, true);
                    }
                }
                self.schedule(
                    self.now + self.config.join_retry_interval,
                    TimerKind::JoinRetry,
                );
            }
            TimerKind::Check(machine) => {
                if let Some(k) = self.roster.get(&machine) {
                    // foca accepts an announce addressed to any life of its machine and answers
                    // with a feed from its current identity, which this node then hears first-hand.
                    let dst = k.identity.clone();
                    if let Err(e) = self.foca.announce(dst, &mut self.runtime) {
                        tracing::debug!(error = %e, "announce failed");
                    }
                    self.drain_runtime();
                }
            }
        }
    }

    /// Records the address of a member just forgotten (see [`LOST_KEPT_FOR`], [`LOST_MAX`]).
    fn remember_lost(&mut self, id: NodeIdentity) {
        self.lost.insert(id.machine_id, (id.addr, self.now));
        while self.lost.len() > LOST_MAX {
            let oldest = self
                .lost
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(m, _)| m.clone());
            match oldest {
                Some(m) => self.lost.remove(&m),
                None => break,
            };
        }
    }

    /// Addresses worth a full sync to merge back a partition: the seeds and the addresses of
    /// forgotten members, less our own and those of the members this node knows (whatever their
    /// state: a member seen down is retried by the anti-entropy already). Drops the forgotten
    /// members that came back or were forgotten over [`LOST_KEPT_FOR`] ago. An O(n) walk, run
    /// once per anti-entropy interval (and per join retry while isolated).
    fn reconnect_candidates(&mut self) -> Vec<SocketAddr> {
        let now = self.now;
        let roster = &self.roster;
        self.lost
            .retain(|m, (_, at)| roster.get(m).is_none() && now < *at + LOST_KEPT_FOR);
        if self.seeds.is_empty() && self.lost.is_empty() {
            return Vec::new();
        }
        let own = self.identity().addr;
        let known: BTreeSet<SocketAddr> = self
            .roster
            .iter()
            .map(|(_, k)| k.identity.addr)
            .chain(std::iter::once(own))
            .collect();
        let mut out: BTreeSet<SocketAddr> = self.seeds.clone();
        out.extend(self.lost.values().map(|(a, _)| *a));
        out.retain(|a| !known.contains(a));
        out.into_iter().collect()
    }

    /// One full sync with a random [`Node::reconnect_candidates`] address, with probability
    /// (candidates / live members), capped at 1.
    fn reconnect(&mut self) {
        let candidates = self.reconnect_candidates();
        if candidates.is_empty() {
            return;
        }
        let live = self.roster.live_count();
        if candidates.len() < live {
            let p = candidates.len() as f64 / live as f64;
            if !self.rng.random_bool(p) {
                return;
            }
        }
        let i = self.rng.random_range(0..candidates.len());
        self.request_sync(candidates[i], true);
    }

    /// Up to `k` addresses of members seen down, chosen at random (an O(n) walk: used every few
    /// seconds at most).
    fn random_down(&mut self, k: usize) -> Vec<SocketAddr> {
        let mut down: Vec<SocketAddr> = self
            .roster
            .iter()
            .filter(|(_, m)| m.state == State::Down)
            .map(|(_, m)| m.identity.addr)
            .collect();
        let mut out = Vec::new();
        while out.len() < k && !down.is_empty() {
            let i = self.rng.random_range(0..down.len());
            out.push(down.swap_remove(i));
        }
        out
    }

    /// Asks `machine` directly who it is now (soon, spread at random so that a machine that
    /// restarts is not asked by every member at once), at most every [`CHECK_EVERY`].
    pub(crate) fn want_check(&mut self, machine: MachineId) {
        if let Some(at) = self.checked.get(&machine) {
            if self.now < *at + CHECK_EVERY {
                return;
            }
        }
        self.checked.insert(machine.clone(), self.now);
        let spread = self.config.probe_period.as_micros().max(1) as u64;
        let delay = Duration::from_micros(self.rng.random_range(0..spread));
        self.schedule(self.now + delay, TimerKind::Check(machine));
    }
}
