//! Which machines the placement plan made on this machine is made over.
//!
//! The plan places units over the machines this machine's gossip shows alive, and this machine itself,
//! but not over a machine gossip suspects (alive, failed a probe, not refuted yet): a suspect gets no new
//! units, and its units are planned where they go once it is declared down. Their taker does not run them
//! yet ([`crate::decide`] waits for a suspected holder, `Why::HolderSuspect`) but asks etcd about the
//! holder's lease, so that the down verdict finds the lease proof ready (docs/safety.md, "Cost"). A
//! refuted suspicion puts the machine back in the plan, where its claims keep its units.
//!
//! fleetd's agent (`src/agent/units.rs`) and the simulator's (`fleet-sim`) both filter their gossip view
//! through [`in_plan`].

/// Whether a machine that this machine's gossip shows alive takes part in this machine's placement
/// plan: `itself` when it is this machine (never left out of its own plan), `suspected` when gossip
/// suspects it.
pub fn in_plan(itself: bool, suspected: bool) -> bool {
    itself || !suspected
}

#[cfg(test)]
mod tests {
    use super::in_plan;

    #[test]
    fn a_suspect_is_left_out_but_never_this_machine() {
        assert!(in_plan(false, false));
        assert!(!in_plan(false, true));
        assert!(in_plan(true, false));
        assert!(in_plan(true, true));
    }
}
