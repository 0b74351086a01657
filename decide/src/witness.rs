//! What a witness promises ([`crate::committee`]): it supports a machine's lease (lets it keep its units
//! for `support_validity` without etcd) and votes that a lease may be taken over, but never both: it votes
//! only when it has not supported the lease for `support_validity` stretched by the clock-rate bound plus
//! the kill allowance, and after a vote it refuses that lease's support for good.
//!
//! The state is saved by fleetd (in its runtime directory) so that a restarted witness keeps its promises;
//! a witness that starts without it neither supports nor votes until a full support period has passed.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_sched::MachineId;

use crate::time::Time;
use crate::timing::Timing;

/// What a witness remembers about one lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Promise {
    /// When it last supported the lease (its clock).
    pub supported_at: Option<Time>,
    /// It voted that the lease may be taken over: no more support, ever.
    pub refused: bool,
}

/// A witness's promises, by machine and lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Witness {
    /// Promises per (machine, lease).
    pub promises: BTreeMap<(MachineId, i64), Promise>,
    /// Until when this witness neither supports nor votes (it started without its saved promises).
    pub quiet_until: Time,
}

impl Witness {
    /// A witness that starts at `now` without saved promises: quiet for one support period.
    pub fn fresh(timing: &Timing, now: Time) -> Witness {
        Witness {
            promises: BTreeMap::new(),
            quiet_until: now + timing.vote_after_support(),
        }
    }

    /// A request from `machine` for support of its `lease`: granted unless the lease was voted away.
    pub fn support(&mut self, machine: &MachineId, lease: i64, now: Time) -> bool {
        if now < self.quiet_until {
            return false;
        }
        let p = self.promises.entry((machine.clone(), lease)).or_default();
        if p.refused {
            return false;
        }
        p.supported_at = Some(now);
        true
    }

    /// Whether this witness voted `machine`'s `lease` away (it refuses the lease's support for good):
    /// a support request it turns down for this reason is answered so, and the machine takes a new
    /// lease ([`crate::lease`]).
    pub fn voted_away(&self, machine: &MachineId, lease: i64) -> bool {
        self.promises
            .get(&(machine.clone(), lease))
            .is_some_and(|p| p.refused)
    }

    /// A request for a vote that `machine`'s `lease` may be taken over. Granted when this witness's own
    /// gossip does not see `machine` alive and unsuspected (`seen_alive`: a takeover is wanted only then,
    /// and a peer, or a stolen certificate, cannot vote a healthy machine's lease away, which would leave
    /// it without support at its next etcd outage; refusing only delays a takeover) and it has not
    /// supported the lease for [`Timing::vote_after_support`]; from then on it refuses its support.
    pub fn vote(
        &mut self,
        timing: &Timing,
        machine: &MachineId,
        lease: i64,
        seen_alive: bool,
        now: Time,
    ) -> bool {
        if seen_alive {
            return false;
        }
        if now < self.quiet_until {
            return false;
        }
        let p = self.promises.entry((machine.clone(), lease)).or_default();
        if p.supported_at
            .is_some_and(|t| now.since(t) < timing.vote_after_support())
        {
            return false;
        }
        p.refused = true;
        true
    }

    /// Forgets leases that are gone (`alive` says which still exist, from the registry mirror: the
    /// announced ones), keeping the rest, and keeping any promise of support that could still bind a
    /// vote ([`Timing::vote_after_support`]): a machine asks support for a lease it was just granted
    /// (to replace one, or after one expired) before this witness's mirror shows it announced under it,
    /// and a support forgotten then would let this witness vote on that lease while the machine counts
    /// on the support.
    pub fn retain(
        &mut self,
        timing: &Timing,
        now: Time,
        mut alive: impl FnMut(&MachineId, i64) -> bool,
    ) {
        let binding = timing.vote_after_support();
        self.promises.retain(|(m, l), p| {
            alive(m, *l) || p.supported_at.is_some_and(|t| now.since(t) < binding)
        });
    }

    /// How long until this witness may vote on `machine`'s `lease` (zero when it may now).
    pub fn vote_wait(
        &self,
        timing: &Timing,
        machine: &MachineId,
        lease: i64,
        now: Time,
    ) -> Duration {
        let quiet = self.quiet_until.since(now);
        let support = self
            .promises
            .get(&(machine.clone(), lease))
            .and_then(|p| p.supported_at)
            .map(|t| (t + timing.vote_after_support()).since(now))
            .unwrap_or_default();
        quiet.max(support)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Time {
        Time::from_micros(x * 1000)
    }

    fn m(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    #[test]
    fn a_witness_never_supports_what_it_voted_away_nor_votes_on_what_it_supported_recently() {
        let t = Timing::default();
        let mut w = Witness::default();
        assert!(w.support(&m("h"), 7, ms(1000)));
        assert!(!w.vote(&t, &m("h"), 7, false, ms(1500)));
        let after = ms(1000) + t.vote_after_support();
        assert!(w.vote(&t, &m("h"), 7, false, after));
        assert!(!w.support(&m("h"), 7, after + Duration::from_millis(1)));
        assert!(w.voted_away(&m("h"), 7));
        assert!(!w.voted_away(&m("h"), 8));
        // Another lease of the same machine is another matter.
        assert!(w.support(&m("h"), 8, after));
    }

    #[test]
    fn a_support_not_yet_announced_is_kept_while_it_binds_a_vote() {
        let t = Timing::default();
        let mut w = Witness::default();
        assert!(w.support(&m("h"), 8, ms(1000)));
        assert!(w.vote(&t, &m("h"), 7, false, ms(1000)));
        // The mirror shows neither lease announced: the refusal of 7 goes, the support of 8 stays.
        w.retain(&t, ms(1500), |_, _| false);
        assert!(
            !w.vote(&t, &m("h"), 8, false, ms(1500)),
            "voted on a supported lease"
        );
        assert!(!w.voted_away(&m("h"), 7));
        // Once it binds no vote any more, it goes too.
        let later = ms(1000) + t.vote_after_support();
        w.retain(&t, later, |_, _| false);
        assert!(w.promises.is_empty());
    }

    #[test]
    fn a_fresh_witness_is_quiet_for_a_support_period() {
        let t = Timing::default();
        let mut w = Witness::fresh(&t, ms(0));
        assert!(!w.support(&m("h"), 7, ms(10)));
        assert!(!w.vote(&t, &m("h"), 7, false, ms(10)));
        let later = ms(0) + t.vote_after_support();
        assert!(!w.vote(&t, &m("h"), 7, true, later));
        assert!(w.vote(&t, &m("h"), 7, false, later));
    }
}
