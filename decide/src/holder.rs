//! When another machine has provably stopped a unit: from what etcd says about its lease and what the
//! witness committee promises.
//!
//! A holder `H` keeps a claimed unit only until its fence deadline (see [`crate::fence`]), which it sets
//! either `fence_after` after a lease confirmation or `support_validity` after witnesses' support. Both
//! are bounded from outside:
//! - **the lease:** a confirmation that counts was answered before etcd's last renewal of the lease, so
//!   the deadline it gives is at most `t_k + F`, where `t_k` is that last renewal. etcd reports a lease's
//!   remaining TTL in whole seconds (truncated), so a `LeaseTimeToLive` answer of `R` seconds received at
//!   `t` proves `t_k < t - (granted - R - 1) s`; polling a few times a second pins `t_k` down to the poll
//!   period as soon as the reported value ticks.
//! - **the committee:** a majority of the witnesses (not counting `H`) voted that `H`'s lease may be taken
//!   over: each had not supported it for `support_validity` (stretched) plus the kill allowance, and never
//!   will again. `H` cannot have the support it needs without one of them ([`crate::committee`]).
//!
//! `H` is fenced from the lease bound, stretched by the clock-rate bound, plus the kill allowance, once the
//! votes are in. The latest observation must be taken *after* the claim was superseded: a renewal before
//! the supersede that an earlier poll missed is then seen, and a renewal after it shows `H` a mirror that
//! contains the supersede, so `H` stops the unit itself. An answer from before the supersede only
//! tightens that bound, under the rule that chains answers (below): when the latest bound lies before the
//! earlier poll was sent, the last renewal came before that poll too, and that poll saw it. (The TTL
//! etcd reports is truncated to whole seconds, so the answer after a supersede alone often proves the
//! holder stopped only about `fenced_after − 1 s` later; the polls during the suspicion, a few a second,
//! usually pinned the renewal down already.)

use std::time::Duration;

use crate::time::Time;
use crate::timing::Timing;

/// What etcd answered to `LeaseTimeToLive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// The lease exists: `ttl` whole seconds remain of `granted`.
    Remaining {
        /// Remaining seconds, truncated (etcd's `TTL`).
        ttl: i64,
        /// The TTL the lease was granted with (etcd's `grantedTTL`).
        granted: i64,
    },
    /// The lease expired or was revoked (etcd's `TTL: -1`): keys bound to it are gone.
    NotFound,
}

/// One `LeaseTimeToLive` round trip, timed on this machine's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasePoll {
    /// When the request was sent.
    pub sent: Time,
    /// When the answer arrived.
    pub received: Time,
    /// The answer.
    pub answer: LeaseAnswer,
}

impl LeasePoll {
    /// An upper bound on the lease's last renewal as of this answer (`None` for a lease that is gone).
    pub fn renewed_before(&self, timing: &Timing) -> Option<Time> {
        match self.answer {
            LeaseAnswer::NotFound => None,
            LeaseAnswer::Remaining { ttl, granted } => {
                let elapsed_secs = (granted - ttl - 1).max(0) as u64;
                Some(self.received - timing.shrink(Duration::from_secs(elapsed_secs)))
            }
        }
    }
}

impl LeasePoll {
    /// Whether the answer shows the lease unrenewed for at least a whole second (or gone): only then
    /// does a takeover ask the witnesses to vote it away (a vote ends their support of the lease for
    /// good, so a holder that keeps renewing is never voted against on a stale or false down verdict).
    pub fn lapsing(&self) -> bool {
        match self.answer {
            LeaseAnswer::NotFound => true,
            LeaseAnswer::Remaining { ttl, granted } => granted - ttl > 1,
        }
    }
}

/// What this machine can prove about a holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderState {
    /// The holder's lease is gone (expired or revoked), so are its claims: it stopped its units before.
    Gone,
    /// The holder's units are provably stopped from this time on (this machine's clock).
    FencedBy(Time),
    /// Not provable yet: no observation of its lease after `after`, or not enough votes.
    Unknown,
}

/// What this machine can prove about a holder from `polls` of its lease, given whether a majority of
/// the committee voted that its lease may be taken over (`voted`): the latest poll sent must have been
/// sent at or after `after`; earlier ones only tighten its bound.
pub fn holder_state(timing: &Timing, voted: bool, polls: &[LeasePoll], after: Time) -> HolderState {
    if mutated!(IgnoreHolderProof) && voted {
        return HolderState::FencedBy(Time::ZERO);
    }
    // In the order they were sent (answers may arrive out of order).
    let mut polls = polls.to_vec();
    polls.sort_by_key(|p| p.sent);
    let later = polls.iter().filter(|p| p.sent >= after);
    if later.clone().any(|p| p.answer == LeaseAnswer::NotFound) {
        return HolderState::Gone;
    }
    if later.count() == 0 {
        return HolderState::Unknown;
    }
    // Each answer bounds the last renewal *before etcd handled it*; the holder may have renewed since
    // an earlier answer, so the bound is the latest answer's. An earlier answer (before `after` too)
    // tightens it only when the latest bound lies before that earlier poll was sent: then the last
    // renewal came before that poll too, and that poll bounds it as well.
    let mut renewed: Option<Time> = None;
    for p in polls.iter().rev() {
        let Some(b) = p.renewed_before(timing) else {
            continue;
        };
        renewed = match renewed {
            None => Some(b),
            Some(r) if r <= p.sent => Some(r.min(b)),
            keep => keep,
        };
    }
    match renewed {
        Some(renewed) if voted => HolderState::FencedBy(renewed + timing.fenced_after()),
        _ => HolderState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Time {
        Time::from_micros(x * 1000)
    }

    fn timing() -> Timing {
        Timing {
            clock_rate_ppm: 0,
            ..Timing::new(Duration::from_millis(500), Duration::from_secs(10))
        }
    }

    fn poll(sent: u64, ttl: i64) -> LeasePoll {
        LeasePoll {
            sent: ms(sent),
            received: ms(sent + 2),
            answer: LeaseAnswer::Remaining { ttl, granted: 10 },
        }
    }

    #[test]
    fn a_truncated_ttl_bounds_the_last_renewal_within_a_second() {
        // Renewed at 0 (expiry 10 s): at 1.5 s etcd says 8 (8.5 truncated).
        let p = poll(1498, 8);
        assert_eq!(p.renewed_before(&timing()), Some(ms(500)));
        // Right after the tick to 7 (at 2.0 s) the bound is tight.
        let p = poll(2001, 7);
        assert_eq!(p.renewed_before(&timing()), Some(ms(3)));
    }

    #[test]
    fn fenced_by_the_lease_bound_once_the_committee_voted() {
        let t = timing();
        // Crash at 0, last renewal just before.
        let polls = [poll(900, 8), poll(2001, 7)];
        // The later answer (renewed before 3 ms) shows no renewal since the earlier poll, which bounds it
        // tighter (before 0): fenced by 600.
        assert_eq!(
            holder_state(&t, true, &polls, ms(0)),
            HolderState::FencedBy(ms(600))
        );
        // Without the votes, nothing is proven whatever the lease says.
        assert_eq!(holder_state(&t, false, &polls, ms(0)), HolderState::Unknown);
    }

    #[test]
    fn a_lease_still_renewed_keeps_pushing_the_bound() {
        let t = timing();
        // The holder is cut off from us but renews its lease: every poll says ~10 s remain.
        let polls = [poll(5000, 9), poll(6000, 9)];
        match holder_state(&t, true, &polls, ms(0)) {
            HolderState::FencedBy(at) => assert!(at > ms(5500), "{at}"),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn only_polls_after_the_supersede_count() {
        let t = timing();
        let polls = [poll(900, 8)];
        assert_eq!(
            holder_state(&t, true, &polls, ms(1200)),
            HolderState::Unknown
        );
    }

    #[test]
    fn a_poll_before_the_supersede_tightens_the_bound_of_one_after_it() {
        let t = timing();
        // Renewed at 0, then the holder died. Polled during the suspicion right after the TTL ticked
        // (renewed before 3 ms); superseded at 1500; the answer after it says only "before 602".
        let polls = [poll(1001, 8), poll(1600, 8)];
        assert_eq!(
            holder_state(&t, true, &polls, ms(1500)),
            HolderState::FencedBy(ms(3) + t.fenced_after())
        );
        // A renewal between the two (the later answer's bound lies after the earlier poll): the
        // earlier answer says nothing about it.
        let polls = [poll(1001, 8), poll(1600, 9)];
        assert_eq!(
            holder_state(&t, true, &polls, ms(1500)),
            HolderState::FencedBy(ms(1602) + t.fenced_after())
        );
        // Still nothing without an answer after the supersede.
        assert_eq!(
            holder_state(&t, true, &polls[..1], ms(1500)),
            HolderState::Unknown
        );
    }

    #[test]
    fn a_gone_lease_is_gone() {
        let t = timing();
        let gone = LeasePoll {
            sent: ms(10),
            received: ms(11),
            answer: LeaseAnswer::NotFound,
        };
        assert_eq!(holder_state(&t, false, &[gone], ms(0)), HolderState::Gone);
    }

    #[test]
    fn a_lease_alone_never_proves_a_holder_stopped() {
        let t = timing();
        assert_eq!(
            holder_state(&t, false, &[poll(5000, 1)], ms(0)),
            HolderState::Unknown
        );
    }
}
