//! This machine's fence deadline: until when it may run the units it claims.
//!
//! The deadline is recomputed on every pass and written where the fence guard (a process of its own,
//! watched by systemd) reads it; when it passes, the agent or the guard kills every claimed unit.
//! It is the latest of:
//! - `fence_after` after the last lease confirmation that the registry mirror has caught up with
//!   (a confirmation the mirror has not reached yet may hide a takeover of our units, so it only counts
//!   once the mirror shows what etcd held when it was answered);
//! - `support_validity` after the support of the witness committee ([`crate::committee`]): the
//!   `n − m + 1`-th most recent support request that a witness granted (a witness that is this machine
//!   supports it now), so that the witnesses that did not support it could not form a majority;
//!
//! and never later than the slow bound: shortly before etcd may expire the lease (a TTL after the last
//! renewal it received), when the claims vanish and anyone may claim the units.

use std::time::Duration;

use std::collections::BTreeMap;

use fleet_sched::MachineId;

use crate::committee::Committee;
use crate::time::Time;
use crate::timing::Timing;

/// One keep-alive (or grant) that etcd answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirmation {
    /// When the request was sent (etcd renewed the lease at or after this moment).
    pub sent: Time,
    /// The etcd revision in the answer's header (what etcd held when it answered).
    pub revision: i64,
}

/// This machine's lease as the agent knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnLease {
    /// The lease ID (0: none yet).
    pub id: i64,
    /// The TTL etcd granted.
    pub ttl: Duration,
    /// The most recent confirmations, oldest first (a handful is enough: the mirror lags by milliseconds).
    pub confirmations: Vec<Confirmation>,
}

impl OwnLease {
    /// The latest confirmation whose revision the mirror (at `mirror_revision`) has reached.
    pub fn confirmed_at(&self, mirror_revision: i64) -> Option<Time> {
        self.confirmations
            .iter()
            .filter(|c| c.revision <= mirror_revision)
            .map(|c| c.sent)
            .max()
    }

    /// The latest confirmation at all (for the slow bound: etcd renewed the lease then, whatever the
    /// mirror shows).
    pub fn last_confirmed(&self) -> Option<Time> {
        self.confirmations.iter().map(|c| c.sent).max()
    }

    /// Records a confirmation, keeping the last few.
    pub fn confirm(&mut self, c: Confirmation) {
        self.confirmations.push(c);
        if self.confirmations.len() > 8 {
            self.confirmations.remove(0);
        }
    }
}

/// Why the deadline is where it is (logged and shown in metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vouch {
    /// A recent lease confirmation (the mirror has caught up with it).
    Lease,
    /// The lease is unconfirmed, but enough witnesses support this machine.
    Support,
    /// Nothing vouches any more: the deadline is the last one either gave.
    Nothing,
}

/// The witness committee's support of this machine.
#[derive(Clone, Copy, Debug)]
pub struct Support<'a> {
    /// The committee.
    pub committee: &'a Committee,
    /// This machine (a witness supports itself).
    pub me: &'a MachineId,
    /// For each witness, when this machine sent the latest support request the witness granted.
    pub granted: &'a BTreeMap<MachineId, Time>,
}

impl Support<'_> {
    /// Until when the committee's support lets this machine run its units (`None`: not enough support).
    pub fn until(&self, timing: &Timing, now: Time) -> Option<Time> {
        let need = self.committee.support_needed();
        if need == 0 {
            // No committee: nobody can take anything over before the lease expires.
            return Some(Time::from_micros(u64::MAX));
        }
        let mut times: Vec<Time> = self
            .committee
            .witnesses
            .iter()
            .filter_map(|w| {
                if w == self.me {
                    Some(now)
                } else {
                    self.granted.get(w).copied()
                }
            })
            .collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(need - 1).map(|t| *t + timing.support_validity())
    }
}

/// The fence deadline and what set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    /// Until when claimed units may run (`None`: no lease was ever confirmed; nothing may run).
    pub deadline: Option<Time>,
    /// What vouches for the machine now.
    pub vouch: Vouch,
    /// Whether a lease confirmation the mirror has reached is less than `fence_after` old.
    pub lease_fresh: bool,
}

impl Guard {
    /// Whether claimed units must be stopped at `now`.
    pub fn fenced(&self, now: Time) -> bool {
        self.deadline.is_none_or(|d| now >= d)
    }

    /// Whether the lease (confirmed and seen by the mirror) vouches for this machine: only then may it
    /// start a claimed unit that is not running (keeping a running one needs only `!fenced`).
    pub fn may_start(&self, now: Time) -> bool {
        self.lease_fresh && !self.fenced(now)
    }
}

/// The fence deadline at `now`.
///
/// `support` is the committee's support (`None` before the agent knows the committee, which vouches for
/// nothing). A restarted agent passes the confirmations its previous life saved.
pub fn guard(
    timing: &Timing,
    lease: &OwnLease,
    mirror_revision: i64,
    support: Option<&Support<'_>>,
    now: Time,
) -> Guard {
    let Some(last) = lease.last_confirmed() else {
        return Guard {
            deadline: None,
            vouch: Vouch::Nothing,
            lease_fresh: false,
        };
    };
    let ttl = Timing {
        ttl: lease.ttl.max(Duration::from_secs(1)),
        ..timing.clone()
    };
    let slow = last + ttl.slow_fence_after();
    let vouched = if mutated!(FenceAfterTtl) {
        ttl.ttl
    } else {
        timing.fence_after
    };
    let by_lease = lease.confirmed_at(mirror_revision).map(|t| t + vouched);
    let by_view = support
        .and_then(|s| s.until(timing, now))
        .filter(|t| *t > now);
    let (deadline, vouch) = match (by_lease, by_view) {
        (Some(l), Some(v)) if l > now && l >= v => (l, Vouch::Lease),
        (Some(l), None) if l > now => (l, Vouch::Lease),
        (l, Some(v)) => (l.map_or(v, |l| l.max(v)), Vouch::Support),
        (Some(l), None) => (l, Vouch::Nothing),
        (None, None) => (last + timing.fence_after, Vouch::Nothing),
    };
    Guard {
        deadline: Some(deadline.min(slow)),
        vouch: if now >= slow { Vouch::Nothing } else { vouch },
        lease_fresh: by_lease.is_some_and(|l| l > now) && now < slow,
    }
}

/// The fence deadline at `now` while this machine keeps a lease it replaced (`retiring`,
/// [`crate::lease`]) besides its current one: the earlier of the two leases' deadlines, the retiring
/// one's from its own confirmations only (no witness is asked to support it; see [`crate::lease`]).
/// Without a retiring lease, [`guard`].
pub fn guard_retiring(
    timing: &Timing,
    lease: &OwnLease,
    retiring: Option<&OwnLease>,
    mirror_revision: i64,
    support: Option<&Support<'_>>,
    now: Time,
) -> Guard {
    let current = guard(timing, lease, mirror_revision, support, now);
    let Some(old) = retiring else {
        return current;
    };
    let old = guard(timing, old, mirror_revision, None, now);
    let deadline = match (current.deadline, old.deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => None,
    };
    Guard {
        deadline,
        vouch: if old.deadline < current.deadline {
            old.vouch
        } else {
            current.vouch
        },
        lease_fresh: current.lease_fresh && old.lease_fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::committee::Seat;

    fn ms(x: u64) -> Time {
        Time::from_micros(x * 1000)
    }

    fn timing() -> Timing {
        Timing::new(Duration::from_millis(500), Duration::from_secs(10))
    }

    fn lease(confs: &[(u64, i64)]) -> OwnLease {
        OwnLease {
            id: 7,
            ttl: Duration::from_secs(10),
            confirmations: confs
                .iter()
                .map(|&(t, r)| Confirmation {
                    sent: ms(t),
                    revision: r,
                })
                .collect(),
        }
    }

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    /// A committee of `n` machines `m0..`, this machine being `m0`.
    fn committee(n: usize) -> Committee {
        let seats: Vec<Seat> = (0..n)
            .map(|i| Seat {
                id: id(&format!("m{i}")),
                since: i as i64,
                departed_at: None,
            })
            .collect();
        Committee::choose(&seats, Duration::from_secs(10), Time::ZERO)
    }

    fn grants(g: &[(&str, u64)]) -> BTreeMap<MachineId, Time> {
        g.iter().map(|(w, t)| (id(w), ms(*t))).collect()
    }

    fn g(n: usize, granted: &[(&str, u64)], confs: &[(u64, i64)], mirror: i64, now: u64) -> Guard {
        let c = committee(n);
        let me = id("m0");
        let gr = grants(granted);
        let s = Support {
            committee: &c,
            me: &me,
            granted: &gr,
        };
        guard(&timing(), &lease(confs), mirror, Some(&s), ms(now))
    }

    #[test]
    fn a_confirmed_lease_vouches_for_fence_after() {
        let x = g(5, &[], &[(1000, 5)], 5, 1200);
        assert_eq!(x.deadline, Some(ms(1500)));
        assert_eq!(x.vouch, Vouch::Lease);
        assert!(!x.fenced(ms(1499)));
        assert!(x.fenced(ms(1500)));
        assert!(x.may_start(ms(1200)));
    }

    #[test]
    fn a_confirmation_the_mirror_has_not_reached_does_not_count() {
        // Confirmed at 1000 (revision 9), but the mirror is at revision 5: only the older one counts.
        let x = g(5, &[], &[(600, 5), (1000, 9)], 5, 1200);
        assert_eq!(x.deadline, Some(ms(1100)));
        assert!(x.fenced(ms(1200)));
    }

    #[test]
    fn without_support_a_machine_fences_fence_after_after_its_last_confirmation() {
        // Three machines, cut off from the other two: only its own support.
        let x = g(3, &[], &[(1000, 5)], 5, 1600);
        assert_eq!(x.deadline, Some(ms(1500)));
        assert!(x.fenced(ms(1600)));
        assert_eq!(x.vouch, Vouch::Nothing);
    }

    #[test]
    fn support_of_enough_witnesses_keeps_the_units_until_the_slow_bound() {
        let t = timing();
        // Five witnesses (m0 is this machine): m0 + two more make three.
        let x = g(5, &[("m1", 4000), ("m2", 4200)], &[(1000, 5)], 5, 4500);
        assert_eq!(x.deadline, Some(ms(4000) + t.support_validity()));
        assert_eq!(x.vouch, Vouch::Support);
        // One supporter short: nothing.
        let x = g(5, &[("m1", 4000)], &[(1000, 5)], 5, 4500);
        assert!(x.fenced(ms(4500)));
        // Near the lease's expiry the slow bound wins, whatever the support.
        let late = ms(1000) + t.slow_fence_after();
        let x = g(
            5,
            &[("m1", 9000), ("m2", 9000)],
            &[(1000, 5)],
            5,
            late.as_micros() / 1000 - 100,
        );
        assert_eq!(x.deadline, Some(late));
    }

    #[test]
    fn two_machines_cut_apart_keep_running() {
        let x = g(2, &[], &[(1000, 5)], 5, 9000);
        assert!(!x.fenced(ms(9000)));
        assert!(
            !x.may_start(ms(9000)),
            "no new starts without a confirmed lease"
        );
    }

    #[test]
    fn without_a_committee_known_only_the_lease_vouches() {
        let x = guard(&timing(), &lease(&[(1000, 5)]), 5, None, ms(1700));
        assert!(x.fenced(ms(1700)));
    }

    #[test]
    fn no_confirmation_ever_means_nothing_may_run() {
        let x = g(5, &[("m1", 10), ("m2", 10)], &[], 0, 10);
        assert_eq!(x.deadline, None);
        assert!(x.fenced(ms(10)));
    }

    #[test]
    fn a_retiring_lease_bounds_the_deadline_by_its_own_confirmations() {
        let t = timing();
        let c = committee(3);
        let me = id("m0");
        let gr = grants(&[("m1", 4000)]);
        let s = Support {
            committee: &c,
            me: &me,
            granted: &gr,
        };
        // The new lease is supported until 4000 + V; the old one, confirmed at 3900, only until 3900 + F.
        let new = lease(&[(1000, 5)]);
        let old = lease(&[(3900, 5)]);
        let x = guard_retiring(&t, &new, Some(&old), 5, Some(&s), ms(4100));
        assert_eq!(x.deadline, Some(ms(4400)));
        assert_eq!(x.vouch, Vouch::Lease);
        assert!(!x.may_start(ms(4100)), "the new lease is not fresh");
        assert!(x.fenced(ms(4400)));
        // Both fresh: the earlier confirmation wins, and starts are allowed.
        let new = lease(&[(4000, 5)]);
        let x = guard_retiring(&t, &new, Some(&old), 5, Some(&s), ms(4100));
        assert_eq!(x.deadline, Some(ms(4400)));
        assert!(x.may_start(ms(4100)));
        // The old lease's support is never counted: the same grants do not lift it.
        let alone = guard(&t, &old, 5, Some(&s), ms(4500));
        assert!(!alone.fenced(ms(4500)), "support alone would keep it");
        let x = guard_retiring(&t, &new, Some(&old), 5, Some(&s), ms(4500));
        assert!(x.fenced(ms(4500)));
        // Without a retiring lease, the plain guard.
        assert_eq!(
            guard_retiring(&t, &new, None, 5, Some(&s), ms(4100)),
            guard(&t, &new, 5, Some(&s), ms(4100))
        );
    }

    #[test]
    fn confirmations_keep_only_the_last_few() {
        let mut l = OwnLease::default();
        for i in 0..20 {
            l.confirm(Confirmation {
                sent: ms(i),
                revision: i as i64,
            });
        }
        assert_eq!(l.confirmations.len(), 8);
        assert_eq!(l.last_confirmed(), Some(ms(19)));
        assert_eq!(l.confirmed_at(14), Some(ms(14)));
    }
}
