//! This machine's own leases: when it takes a new one, and when the one it replaced may go.
//!
//! A witness that voted that a lease may be taken over never supports that lease again
//! ([`crate::witness`]). A machine whose units were taken over on such votes, and that came back within
//! the TTL, would otherwise go on renewing the voted-away lease and fence `fence_after` into its next
//! etcd outage, however well its peers see it: a needless fence. So once its lease may have been voted
//! away ([`replace`]) it takes a new lease, which every witness supports afresh, re-binds its claims
//! to it ([`crate::Write::Rebind`], made by [`crate::decide`] for every claim of this machine under
//! another lease), re-announces itself under it, and keeps renewing the old lease until nothing rests
//! on it ([`may_retire`]): a taker's proof about a claim still bound to the old lease rests on the old
//! lease's renewals. Meanwhile the fence deadline is the earlier of the two leases' deadlines
//! ([`crate::fence::guard_retiring`]), the old one's from its own confirmations only: no witness is
//! asked to support the old lease, and a supporter that forgot its vote (the lease is no longer the
//! announced one) cannot extend it.
//!
//! Once no claim of this machine is bound to the old lease, no claim records a handover from it (every
//! unit taken from it was stopped and acknowledged), and the announcement is under the new lease, the
//! old lease is let go (revoked): no key rests on it, so its expiry takes nothing with it.

use fleet_sched::MachineId;

use crate::unit::Claim;

/// Why this machine takes a new lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// A claim records a handover from this machine under its current lease: a majority of the
    /// witnesses voted that lease away.
    TakenOver,
    /// This machine was fenced under its current lease after it had been confirmed: it was out of
    /// sight of etcd and of the witnesses' support, which is when takers ask for votes (they may have
    /// got them without completing a takeover).
    Fenced,
    /// A witness answered a support request that it voted the current lease away.
    Refused,
}

/// What this machine knows about its current lease beyond the registry mirror.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// It was fenced under the current lease (with a deadline that had passed, not for want of a first
    /// confirmation) and is no longer.
    pub fenced: bool,
    /// A witness answered that it voted the current lease away.
    pub refused: bool,
}

/// Whether this machine takes a new lease now, and why: its `current` lease may have been voted away
/// (`claims` are the registry mirror's). Never while it still keeps a lease it replaced (`retiring`):
/// that one goes first.
pub fn replace<'a>(
    me: &MachineId,
    current: i64,
    retiring: Option<i64>,
    claims: impl IntoIterator<Item = &'a Claim>,
    signals: Signals,
) -> Option<Replace> {
    if current == 0 || retiring.is_some() || mutated!(KeepVotedLease) {
        return None;
    }
    let taken = claims.into_iter().any(|c| {
        c.handoff
            .as_ref()
            .is_some_and(|h| h.machine == *me && h.lease == current)
    });
    if taken {
        Some(Replace::TakenOver)
    } else if signals.refused {
        Some(Replace::Refused)
    } else if signals.fenced {
        Some(Replace::Fenced)
    } else {
        None
    }
}

/// Whether the lease `old` that this machine replaced may go: the mirror shows its announcement under
/// another lease (`announced`), no claim of this machine bound to `old`, and no claim recording a
/// handover from this machine under `old`.
pub fn may_retire<'a>(
    me: &MachineId,
    old: i64,
    announced: Option<i64>,
    claims: impl IntoIterator<Item = &'a Claim>,
) -> bool {
    if announced.is_none_or(|l| l == old) {
        return false;
    }
    !claims.into_iter().any(|c| {
        (c.machine == *me && c.lease == old)
            || c.handoff
                .as_ref()
                .is_some_and(|h| h.machine == *me && h.lease == old)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::Handoff;

    fn m(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    fn claim(holder: &str, lease: i64, from: Option<(&str, i64)>) -> Claim {
        Claim {
            machine: m(holder),
            lease,
            mod_revision: 1,
            handoff: from.map(|(f, l)| Handoff {
                machine: m(f),
                lease: l,
            }),
        }
    }

    #[test]
    fn a_handover_from_the_current_lease_replaces_it() {
        let me = m("a");
        let claims = [claim("b", 20, Some(("a", 7))), claim("a", 7, None)];
        assert_eq!(
            replace(&me, 7, None, &claims, Signals::default()),
            Some(Replace::TakenOver)
        );
        // A handover from an older lease of ours, or from another machine, says nothing about this one.
        let claims = [
            claim("b", 20, Some(("a", 6))),
            claim("c", 30, Some(("b", 7))),
        ];
        assert_eq!(replace(&me, 7, None, &claims, Signals::default()), None);
    }

    #[test]
    fn a_fence_or_a_refusal_replaces_it_too() {
        let me = m("a");
        let fenced = Signals {
            fenced: true,
            refused: false,
        };
        let refused = Signals {
            fenced: false,
            refused: true,
        };
        assert_eq!(replace(&me, 7, None, &[], fenced), Some(Replace::Fenced));
        assert_eq!(replace(&me, 7, None, &[], refused), Some(Replace::Refused));
    }

    #[test]
    fn nothing_is_replaced_without_a_lease_or_while_an_old_one_is_kept() {
        let me = m("a");
        let claims = [claim("b", 20, Some(("a", 7)))];
        let s = Signals {
            fenced: true,
            refused: true,
        };
        assert_eq!(replace(&me, 0, None, &claims, s), None);
        assert_eq!(replace(&me, 7, Some(6), &claims, s), None);
    }

    #[test]
    fn the_old_lease_goes_only_once_nothing_rests_on_it() {
        let me = m("a");
        // Announced under the new lease, every claim re-bound: it may go.
        let done = [claim("a", 8, None), claim("b", 20, None)];
        assert!(may_retire(&me, 7, Some(8), &done));
        // A claim still bound to it.
        let bound = [claim("a", 7, None), claim("a", 8, None)];
        assert!(!may_retire(&me, 7, Some(8), &bound));
        // A unit taken from it, not acknowledged (it may still run here).
        let open = [claim("b", 20, Some(("a", 7)))];
        assert!(!may_retire(&me, 7, Some(8), &open));
        // The announcement not moved yet, or not seen.
        assert!(!may_retire(&me, 7, Some(7), &done));
        assert!(!may_retire(&me, 7, None, &done));
        // Another machine's claims under a lease with the same number are not ours.
        let theirs = [claim("b", 7, Some(("c", 7)))];
        assert!(may_retire(&me, 7, Some(8), &theirs));
    }
}
