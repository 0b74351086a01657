//! This machine's fence deadline: until when it may run the units it claims.
//!
//! The deadline is recomputed on every pass and written where the fence guard (a process of its own,
//! watched by systemd) reads it; when it passes, the agent or the guard kills every claimed unit.
//! It is the latest of:
//! - `fence_after` after the last lease confirmation that the registry mirror has caught up with
//!   (a confirmation the mirror has not reached yet may hide a takeover of our units, so it only counts
//!   once the mirror shows what etcd held when it was answered);
//! - `fence_after` from now, while the members this machine does not see up could not form a quorum
//!   (no other side can take anything over, so a lost lease alone stops nothing);
//!
//! and never later than the slow bound: shortly before etcd may expire the lease (a TTL after the last
//! renewal it received), when the claims vanish and anyone may claim the units.

use std::time::Duration;

use crate::quorum::Quorum;
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
    /// The lease is unconfirmed, but no other side could form a quorum.
    View,
    /// Nothing vouches any more: the deadline is the last one either gave.
    Nothing,
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
/// `quorum` is this machine's count over the membership (`None` while it has no gossip view yet, which
/// vouches for nothing). A restarted agent passes the confirmations its previous life saved.
pub fn guard(
    timing: &Timing,
    lease: &OwnLease,
    mirror_revision: i64,
    quorum: Option<&Quorum>,
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
    let by_lease = lease
        .confirmed_at(mirror_revision)
        .map(|t| t + timing.fence_after);
    let by_view = quorum
        .filter(|q| !q.others_could_take_over())
        .map(|_| now + timing.fence_after);
    let (deadline, vouch) = match (by_lease, by_view) {
        (Some(l), Some(v)) if l > now && l >= v => (l, Vouch::Lease),
        (Some(l), None) if l > now => (l, Vouch::Lease),
        (l, Some(v)) => (l.map_or(v, |l| l.max(v)), Vouch::View),
        (Some(l), None) => (l, Vouch::Nothing),
        (None, None) => (last + timing.fence_after, Vouch::Nothing),
    };
    Guard {
        deadline: Some(deadline.min(slow)),
        vouch: if now >= slow { Vouch::Nothing } else { vouch },
        lease_fresh: by_lease.is_some_and(|l| l > now) && now < slow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Time {
        Time::from_micros(x * 1000)
    }

    fn timing() -> Timing {
        Timing::new(
            Duration::from_millis(500),
            Duration::from_secs(10),
            Duration::from_millis(480),
        )
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

    const MINORITY: Quorum = Quorum {
        size: 3,
        up: 1,
        alive: 1,
    };
    const MAJORITY: Quorum = Quorum {
        size: 3,
        up: 2,
        alive: 2,
    };
    const PAIR_CUT: Quorum = Quorum {
        size: 2,
        up: 1,
        alive: 1,
    };

    #[test]
    fn a_confirmed_lease_vouches_for_fence_after() {
        let g = guard(
            &timing(),
            &lease(&[(1000, 5)]),
            5,
            Some(&MINORITY),
            ms(1200),
        );
        assert_eq!(g.deadline, Some(ms(1500)));
        assert_eq!(g.vouch, Vouch::Lease);
        assert!(!g.fenced(ms(1499)));
        assert!(g.fenced(ms(1500)));
        assert!(g.may_start(ms(1200)));
    }

    #[test]
    fn a_confirmation_the_mirror_has_not_reached_does_not_count() {
        // Confirmed at 1000 (revision 9), but the mirror is at revision 5: only the older one counts.
        let g = guard(
            &timing(),
            &lease(&[(600, 5), (1000, 9)]),
            5,
            Some(&MINORITY),
            ms(1200),
        );
        assert_eq!(g.deadline, Some(ms(1100)));
        assert!(g.fenced(ms(1200)));
    }

    #[test]
    fn a_minority_without_etcd_fences_fence_after_after_its_last_confirmation() {
        let g = guard(
            &timing(),
            &lease(&[(1000, 5)]),
            5,
            Some(&MINORITY),
            ms(1600),
        );
        assert_eq!(g.deadline, Some(ms(1500)));
        assert!(g.fenced(ms(1600)));
        assert_eq!(g.vouch, Vouch::Nothing);
    }

    #[test]
    fn a_majority_without_etcd_keeps_its_units_until_the_slow_bound() {
        let t = timing();
        let l = lease(&[(1000, 5)]);
        let g = guard(&t, &l, 5, Some(&MAJORITY), ms(5000));
        assert_eq!(g.deadline, Some(ms(5500)));
        assert_eq!(g.vouch, Vouch::View);
        assert!(!g.fenced(ms(5000)));
        // Near the lease's expiry the slow bound wins, whatever the view says.
        let late = ms(1000) + t.slow_fence_after();
        let g = guard(
            &t,
            &l,
            5,
            Some(&MAJORITY),
            late - Duration::from_millis(100),
        );
        assert_eq!(g.deadline, Some(late));
        let g = guard(&t, &l, 5, Some(&MAJORITY), late);
        assert!(g.fenced(late));
    }

    #[test]
    fn two_machines_cut_apart_keep_running() {
        let g = guard(
            &timing(),
            &lease(&[(1000, 5)]),
            5,
            Some(&PAIR_CUT),
            ms(9000),
        );
        assert!(!g.fenced(ms(9000)));
        assert!(
            !g.may_start(ms(9000)),
            "no new starts without a confirmed lease"
        );
    }

    #[test]
    fn without_a_view_only_the_lease_vouches() {
        let g = guard(&timing(), &lease(&[(1000, 5)]), 5, None, ms(1700));
        assert!(g.fenced(ms(1700)));
    }

    #[test]
    fn no_confirmation_ever_means_nothing_may_run() {
        let g = guard(&timing(), &OwnLease::default(), 0, Some(&MAJORITY), ms(10));
        assert_eq!(g.deadline, None);
        assert!(g.fenced(ms(10)));
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
