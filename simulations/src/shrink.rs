//! Shrinking: the shortest fault timeline that still breaks an invariant with the same seed.
//!
//! Greedy delta debugging over the faults: drop one fault at a time and keep the drop whenever the
//! run still violates an invariant of the same kind; then try to shorten each remaining fault's
//! `for` by halves. Each try is a whole run (stopped at the first violation), so shrink small
//! scenarios.

use crate::report::ViolationKind;
use crate::scenario::{Dur, Fault, Scenario};
use crate::sim::{Sim, SimError};

/// The first violation kind a run of `sc` with `seed` produces, if any.
pub fn first_violation(sc: &Scenario, seed: u64) -> Result<Option<ViolationKind>, SimError> {
    let mut sim = Sim::new(sc, seed)?;
    sim.stop_on_violation(true);
    let end = sc.duration.0;
    sim.run_until(end);
    let report = sim.finish();
    Ok(report.violations.first().map(|v| v.kind))
}

/// The result of shrinking.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The minimal timeline.
    pub faults: Vec<Fault>,
    /// The violation it reproduces.
    pub kind: ViolationKind,
    /// Runs tried.
    pub runs: usize,
}

/// Shrinks the fault timeline of `sc` for `seed`; `None` if the run does not fail.
pub fn shrink(sc: &Scenario, seed: u64) -> Result<Option<Shrunk>, SimError> {
    let Some(kind) = first_violation(sc, seed)? else {
        return Ok(None);
    };
    let mut runs = 1;
    let mut cur = sc.clone();
    let fails = |s: &Scenario, runs: &mut usize| -> Result<bool, SimError> {
        *runs += 1;
        Ok(first_violation(s, seed)? == Some(kind))
    };
    // Drop faults.
    let mut progress = true;
    while progress {
        progress = false;
        let mut i = 0;
        while i < cur.faults.len() {
            let mut t = cur.clone();
            t.faults.remove(i);
            if fails(&t, &mut runs)? {
                cur = t;
                progress = true;
            } else {
                i += 1;
            }
        }
    }
    // Shorten durations.
    for i in 0..cur.faults.len() {
        while let Some(d) = cur.faults[i].for_ {
            if d.0 < 200_000 {
                break;
            }
            let mut t = cur.clone();
            t.faults[i].for_ = Some(Dur(d.0 / 2));
            if fails(&t, &mut runs)? {
                cur = t;
            } else {
                break;
            }
        }
    }
    Ok(Some(Shrunk {
        faults: cur.faults,
        kind,
        runs,
    }))
}
