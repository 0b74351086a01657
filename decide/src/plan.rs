//! Which machines the placement plan made on this machine is made over.
//!
//! The plan places units over the machines this machine's gossip shows alive, and this machine itself,
//! but not over a machine gossip suspects (alive, failed a probe, not refuted yet): a suspect gets no new
//! units, and its units are planned where they go once it is declared down. Their taker does not run them
//! yet ([`crate::decide`] waits for a suspected holder, `Why::HolderSuspect`) but asks etcd about the
//! holder's lease, so that the down verdict finds the lease proof ready (docs/safety.md, "Cost"). A
//! refuted suspicion puts the machine back in the plan, where its claims keep its units.
//!
//! Nor over a machine that says, in its gossip metadata, that it cannot take units ([`takes_units`]
//! false: its lease does not vouch for it, typically because it lost etcd while its peers did not). Such a
//! machine cannot claim (a claim is an etcd transaction) and could not start what it claimed (starting
//! needs a fresh confirmation, `Guard::may_start`); with it in the plan, a plan that gave it the units of
//! a crashed machine left them running nowhere until its etcd came back (18.4 s in the 30-minute lab chaos
//! run; fleet-sim's `idle-loses-etcd`). Its own units are planned elsewhere too, as a suspect's, but
//! their holder is alive: the others wait (`Why::HolderAlive`) and it keeps them by its own plan, which
//! always holds itself; once it takes units again, its claims keep them where they are.
//!
//! Only while at least half of the candidates (the live machines of the view that are not suspected,
//! this machine included) take units ([`leave_out_refusing`]): when etcd is lost by all or most of the
//! cluster (an etcd outage or election), leaving them out would plan a dead machine's units, and every
//! unit whose claim lapsed, on the few machines that get etcd back first (or, while nobody has it, each
//! machine would plan them all on itself and poll the dead machine's lease), and placement keeps what
//! was claimed where it was claimed. Nobody can claim then anyway, and the plan stays as it was.
//!
//! fleetd's agent (`src/agent/plan.rs`) and the simulator's (`fleet-sim`) both filter their gossip view
//! through [`plan_over`] (which applies [`in_plan`] to each machine), and both publish [`takes_units`] in
//! their metadata.

use crate::fence::Guard;
use crate::time::Time;

/// Whether a machine that this machine's gossip shows alive takes part in this machine's placement
/// plan: `itself` when it is this machine (never left out of its own plan), `suspected` when gossip
/// suspects it, `refuses` when its gossip metadata says it cannot take units now ([`takes_units`]).
pub fn in_plan(itself: bool, suspected: bool, refuses: bool) -> bool {
    if mutated!(PlanMachinesWithoutEtcd) {
        return itself || !suspected;
    }
    itself || !(suspected || refuses)
}

/// How one machine of a view stands for the plan: whether it is `itself` (this machine), `suspected`
/// by gossip, and whether it `refuses` units (said it cannot take them: [`takes_units`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub itself: bool,
    pub suspected: bool,
    pub refuses: bool,
}

/// Which machines of a view the plan is made over, in the order given (this machine among them):
/// [`in_plan`] for each, the refusing ones left out only while [`leave_out_refusing`] holds over the
/// candidates (the machines not suspected). fleetd's agent and fleet-sim's both call it.
pub fn plan_over(view: &[Standing]) -> Vec<bool> {
    let candidates = view.iter().filter(|s| !s.suspected);
    let refused = candidates.clone().filter(|s| s.refuses).count();
    let leave_out = leave_out_refusing(candidates.count(), refused);
    view.iter()
        .map(|s| in_plan(s.itself, s.suspected, leave_out && s.refuses))
        .collect()
}

/// Whether the plan leaves out the machines that said they cannot take units ([`takes_units`]), given
/// how many `candidates` the view has (live machines that are not suspected, this machine included)
/// and how many of them said so: only while at least half of the candidates take units.
pub fn leave_out_refusing(candidates: usize, refusing: usize) -> bool {
    refusing.min(candidates) * 2 <= candidates
}

/// Whether this machine can take units now, as it tells the cluster (fleetd and fleet-sim publish it in
/// the machine's gossip metadata; [`in_plan`] leaves a machine that cannot out of everyone's plan): only
/// while its lease vouches for it, that is, while it may start a claimed unit ([`Guard::may_start`]: a
/// lease confirmation the registry mirror has reached, less than `fence_after` old, and not fenced).
///
/// A machine whose lease was never confirmed (`guard.deadline` is `None`: fleetd just started) is not
/// left out: it is about to take units, and a cluster starting at once would otherwise plan every unit
/// on the first machine whose lease is confirmed, and keep them there (placement is stable).
pub fn takes_units(guard: &Guard, now: Time) -> bool {
    guard.deadline.is_none() || guard.may_start(now)
}

#[cfg(test)]
mod tests {
    use super::{in_plan, leave_out_refusing, takes_units};
    use crate::fence::{Guard, Vouch};
    use crate::time::Time;

    #[test]
    fn a_suspect_is_left_out_but_never_this_machine() {
        assert!(in_plan(false, false, false));
        assert!(!in_plan(false, true, false));
        assert!(in_plan(true, false, false));
        assert!(in_plan(true, true, false));
    }

    #[test]
    fn a_machine_that_cannot_take_units_is_left_out_but_never_this_machine() {
        assert!(!in_plan(false, false, true));
        assert!(!in_plan(false, true, true));
        assert!(
            in_plan(true, false, true),
            "this machine keeps its own units"
        );
        assert!(in_plan(true, true, true));
    }

    #[test]
    fn machines_that_cannot_take_units_are_left_out_only_while_half_of_the_rest_can() {
        // One of five lost etcd (the lab chaos run's stall): left out.
        assert!(leave_out_refusing(5, 1));
        assert!(leave_out_refusing(5, 2));
        // Most or all lost it (etcd down, an election): nobody is left out.
        assert!(!leave_out_refusing(5, 3));
        assert!(!leave_out_refusing(5, 5));
        // Two machines, one without etcd: the other takes the units.
        assert!(leave_out_refusing(2, 1));
        assert!(!leave_out_refusing(2, 2));
        assert!(leave_out_refusing(1, 0));
        assert!(!leave_out_refusing(1, 1));
        assert!(leave_out_refusing(0, 0));
    }

    #[test]
    fn the_plan_is_made_over_the_candidates_leaving_out_refusers_only_while_half_can() {
        use super::{plan_over, Standing};
        let s = |itself, suspected, refuses| Standing {
            itself,
            suspected,
            refuses,
        };
        // Five machines, one refusing, one suspected: both left out, never this machine.
        let view = [
            s(true, false, false),
            s(false, false, true),
            s(false, true, false),
            s(false, false, false),
            s(false, false, false),
        ];
        assert_eq!(plan_over(&view), [true, false, false, true, true]);
        // Of the 3 candidates (the suspect does not count), 2 refuse, this machine among them:
        // nobody is left out for refusing, the suspect still is.
        let view = [
            s(true, false, true),
            s(false, false, true),
            s(false, true, false),
            s(false, false, false),
        ];
        assert_eq!(plan_over(&view), [true, true, false, true]);
    }

    #[test]
    fn a_machine_takes_units_only_while_its_lease_vouches_for_it() {
        let now = Time(10_000_000);
        let guard = |deadline: Option<u64>, lease_fresh: bool| Guard {
            deadline: deadline.map(Time),
            vouch: Vouch::Support,
            lease_fresh,
        };
        assert!(takes_units(&guard(Some(11_000_000), true), now));
        // Kept alive by its witnesses' support only (etcd lost): it keeps what runs, takes nothing.
        assert!(!takes_units(&guard(Some(12_000_000), false), now));
        // Fenced past a deadline.
        assert!(!takes_units(&guard(Some(9_000_000), true), now));
        assert!(!takes_units(&guard(Some(9_000_000), false), now));
        // Never confirmed: starting, about to take units; not left out.
        assert!(takes_units(&guard(None, false), now));
    }
}
