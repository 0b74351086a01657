//! Checking the invariants against the simulated systemd's truth, convergence, and the metrics samples.

use super::*;

impl Sim {
    /// Ground truth: machines of the cluster whose fleetd runs.
    pub(super) fn truth(&self) -> Vec<u32> {
        (0..self.cluster as u32)
            .filter(|&i| self.machines[i as usize].agent_runs())
            .collect()
    }

    pub(super) fn check(&mut self) {
        // A machine can run a unit only with a lease: it must reach etcd.
        let reach: Vec<bool> = (0..self.machines.len() as u32)
            .map(|i| self.etcd_reachable(i))
            .collect();
        let truths: Vec<MachineTruth<'_>> = self
            .machines
            .iter()
            .zip(reach)
            .map(|(m, reach)| MachineTruth {
                id: m.id.as_str(),
                metadata: &self.machine_infos[m.ident as usize].metadata,
                healthy: m.agent_runs() && !m.impostor && reach,
            })
            .collect();
        self.checker.periodic(
            self.now,
            &truths,
            self.sc.invariants.placement.0,
            self.sc.invariants.machine_of.0,
        );
    }

    /// Feeds the no-needless-fence invariant the ground truth after the faults changed it: which
    /// machines are clean (powered, not frozen, fleetd running, concerned by no fault but etcd ones
    /// and connected to every machine, with a majority of the cluster up and connected to each other)
    /// and whose etcd link is up (reachable, not slowed, lossless).
    pub(super) fn track_fence_truth(&mut self) {
        let n = self.cluster;
        let up: Vec<bool> = (0..n)
            .map(|i| {
                let mm = &self.machines[i];
                mm.powered && !mm.frozen && !mm.agent_frozen && mm.agent.is_some()
            })
            .collect();
        let links = self.net.machine_links_clean(n);
        // A majority up and connected to each other: those with no rule on their links, or every
        // machine that is up if no rule separates any two of them.
        let free = (0..n).filter(|&i| up[i] && links[i]).count();
        let majority = 2 * free > n || {
            let count = up.iter().filter(|&&u| u).count();
            2 * count > n && self.net.connects_all(&up)
        };
        let e = self.net.etcd();
        for i in 0..n {
            let clean = majority && up[i] && links[i] && self.other_faults[i] == 0;
            self.checker.clean(self.now, i as u32, clean);
            let etcd = self.etcd_reachable(i as u32)
                && self.etcd_extra == 0
                && self.net.loss(i, e, 0.0) == 0.0
                && self.net.loss(e, i, 0.0) == 0.0
                && self.net.delay(i, e) == 0
                && self.net.delay(e, i) == 0;
            self.checker.etcd_link(self.now, i as u32, etcd);
        }
    }

    pub(super) fn check_convergence(&mut self) {
        let live = self.truth();
        let truth: BTreeSet<u32> = live.iter().copied().collect();
        let mut wrong = Vec::new();
        for &i in &live {
            let mm = &self.machines[i as usize];
            let mut seen: BTreeSet<u32> = mm
                .agent
                .as_ref()
                .map(|a| a.live.iter().collect())
                .unwrap_or_default();
            seen.insert(i);
            if seen != truth {
                wrong.push(format!(
                    "{} sees {} live of {}",
                    mm.id,
                    seen.len(),
                    truth.len()
                ));
            }
        }
        if !wrong.is_empty() {
            let n = wrong.len();
            wrong.truncate(3);
            self.checker.violations.push(crate::report::Violation {
                kind: crate::report::ViolationKind::NoConvergence,
                at: self.now,
                subject: format!("{n} machine(s)"),
                detail: format!(
                    "membership not converged {} after the last fault: {}",
                    self.sc.invariants.converge,
                    wrong.join("; ")
                ),
            });
        }
        self.metrics.converged_checked = true;
    }

    pub(super) fn sample(&mut self) {
        let live = self.truth();
        let wrong_views = live
            .iter()
            .filter(|&&i| {
                self.machines[i as usize]
                    .agent
                    .as_ref()
                    .is_none_or(|a| a.live.len() + 1 != live.len())
            })
            .count();
        let unavailable = if self.submitted {
            self.checker.unavailable()
        } else {
            0
        };
        self.metrics.sample(
            self.now,
            live.len(),
            wrong_views,
            unavailable,
            self.checker.double_running(),
        );
    }
}
