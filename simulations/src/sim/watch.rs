//! etcd as the agents see it: reachability, watch notifications and their retries, agent passes, and the
//! placement plan shared by agents that see the same inputs.

use super::*;

impl Sim {
    pub(crate) fn etcd_reachable(&self, m: u32) -> bool {
        let e = self.net.etcd();
        self.etcd_up && !self.net.blocked(m as usize, e) && !self.net.blocked(e, m as usize)
    }

    pub(crate) fn notify_watchers(&mut self) {
        if !self.watch_pending {
            self.watch_pending = true;
            self.push(self.now + self.sc.config.watch_delay.0, Ev::WatchFlush);
        }
    }

    /// Delivers the changes so far to every agent that can hear etcd; forgets history no mirror needs.
    pub(super) fn watch_flush(&mut self) {
        self.watch_pending = false;
        let rev = self.etcd.revision();
        let mut oldest = rev;
        for i in 0..self.machines.len() as u32 {
            let reachable = self.etcd_reachable(i);
            let mm = &self.machines[i as usize];
            let Some(a) = mm.agent.as_ref() else { continue };
            if a.mirror_rev == 0 {
                continue;
            }
            // A lossy link delays the watch stream (TCP retransmits): the batch waits for a later one.
            let e = self.net.etcd();
            let loss = self.net.loss(e, i as usize, 0.0);
            let lost = loss > 0.0 && self.rng.random_bool(loss.min(1.0));
            let mm = &self.machines[i as usize];
            let Some(a) = mm.agent.as_ref() else { continue };
            if mm.agent_runs() && reachable && a.mirror_rev < rev && !lost {
                self.etcd.ops.watch_deliveries += 1;
                self.advance_mirror(i, rev);
                self.request_pass(i);
            } else {
                oldest = oldest.min(a.mirror_rev);
            }
        }
        self.etcd.compact(oldest);
        if oldest < rev {
            // Agents behind (a lossy link, a pause) get the next batch soon.
            self.watch_retry();
        }
    }

    pub(super) fn watch_retry(&mut self) {
        if !self.watch_pending {
            self.watch_pending = true;
            self.push(
                self.now + 4 * self.sc.config.watch_delay.0.max(1),
                Ev::WatchFlush,
            );
        }
    }

    // ------------------------------------------------------------------------------------------
    // The agent's pass scheduling and plan.

    pub(crate) fn request_pass(&mut self, m: u32) {
        let c = &self.sc.config;
        let q = c.pass_quantum.0;
        let at = (self.now + c.coalesce.0).div_ceil(q) * q;
        self.request_pass_at(m, at);
    }

    pub(crate) fn request_pass_at(&mut self, m: u32, at: u64) {
        let mm = &mut self.machines[m as usize];
        if !mm.agent_runs() {
            return;
        }
        let gen = mm.gen;
        let Some(a) = mm.agent.as_mut() else { return };
        if a.pass_at.is_some_and(|p| p <= at) {
            return;
        }
        a.pass_at = Some(at);
        self.push(at, Ev::Pass { m, gen });
    }

    /// The machines' metadata changed: plans made before are void.
    pub(super) fn inputs_changed(&mut self) {
        self.plans.clear();
        self.inputs_version += 1;
    }

    /// The plan for this set of machines at registry revision `rev` (shared between agents with the
    /// same inputs).
    pub(crate) fn plan_for(&mut self, live: &[u32], hash: u64, rev: i64) -> Rc<PlanIndex> {
        let key = (hash, rev);
        if let Some(p) = self.plans.get(&key) {
            return p.clone();
        }
        self.plan_computations += 1;
        // fleetd's agent keeps one incremental Planner (the same plan as `schedule`); so does the
        // simulator, moved from one agent's inputs to the next by their differences: the machines that
        // differ, and the units whose claim (counted only on a live machine) differs.
        let changes = match (&self.planner, self.planner_at.take()) {
            (Some(_), Some((live0, version))) if version == self.inputs_version => {
                Some(self.plan_changes(&live0, live, rev))
            }
            _ => None,
        };
        match (changes, self.planner.as_mut()) {
            (Some(changes), Some(planner)) => {
                planner.apply(changes);
            }
            _ => self.sync_planner(live, rev),
        }
        self.planner_at = Some((live.to_vec(), self.inputs_version));
        let p = Rc::new(self.plan_index());
        if self.plans.len() >= 64 {
            self.plans.clear();
        }
        self.plans.insert(key, p.clone());
        p
    }

    /// Brings the planner (made if there is none) to all its inputs: the live machines, every unit
    /// with its claim at `rev` counted only on a live machine.
    fn sync_planner(&mut self, live: &[u32], rev: i64) {
        let machines: Vec<MachineInfo> = live
            .iter()
            .map(|&j| self.machine_infos[j as usize].clone())
            .collect();
        let live_set: BTreeSet<u32> = live.iter().copied().collect();
        self.planner_claims = (0..self.base_infos.len() as u32)
            .map(|u| {
                self.etcd
                    .claim_at(u, rev)
                    .map(|c| c.machine)
                    .filter(|j| live_set.contains(j))
            })
            .collect();
        let infos: Vec<UnitInfo> = self
            .base_infos
            .iter()
            .zip(&self.planner_claims)
            .map(|(info, claim)| {
                let mut info = info.clone();
                if let Some(j) = claim {
                    info.claim = Some(self.machine_infos[*j as usize].id.clone());
                }
                info
            })
            .collect();
        match self.planner.as_mut() {
            Some(p) => {
                p.sync(&machines, &infos);
            }
            None => {
                self.planner = Some(Planner::new(&machines, &infos));
            }
        }
    }

    /// The planner's plan, indexed by machine.
    fn plan_index(&self) -> PlanIndex {
        let plan = self.planner.as_ref().expect("a plan was made").plan();
        let machine = |mid: &MachineId| {
            self.by_ptr
                .get(&(mid.as_str().as_ptr() as usize))
                .or_else(|| self.by_id.get(mid))
                .copied()
        };
        let mut placed: Vec<(u32, u32, bool)> = Vec::with_capacity(plan.decisions.len());
        // Decisions come in name order; when every unit has one, the k-th is the k-th unit by name.
        let all = plan.decisions.len() == self.units_by_name.len();
        for (k, (name, d)) in plan.decisions.iter().enumerate() {
            let u = if all {
                self.units_by_name[k]
            } else {
                match self.unit_index.get(name) {
                    Some(&u) => u,
                    None => continue,
                }
            };
            debug_assert_eq!(self.units[u as usize].name, *name);
            match d {
                Decision::On(mid) => {
                    if let Some(j) = machine(mid) {
                        debug_assert_eq!(self.by_id.get(mid), Some(&j));
                        placed.push((j, u, false));
                    }
                }
                Decision::Global(ms) => {
                    for mid in ms {
                        if let Some(j) = machine(mid) {
                            placed.push((j, u, true));
                        }
                    }
                }
                Decision::Unplaceable(_) => {}
            }
        }
        PlanIndex::new(self.machines.len(), placed)
    }

    /// What moves the planner's inputs from the live machines `live0` (sorted) to `live` (sorted) at
    /// revision `rev`: machines gone and come, and each unit whose claim differs from the one the
    /// planner holds (`planner_claims`, updated), a claim counting only on a live machine as
    /// [`Sim::plan_for`]'s full inputs count it. The unit files and the machines' metadata are the same
    /// (`inputs_version`).
    fn plan_changes(
        &mut self,
        live0: &[u32],
        live: &[u32],
        rev: i64,
    ) -> Vec<fleet_sched::placement::Change> {
        use fleet_sched::placement::Change;
        let mut changes = Vec::new();
        let size = self.machines.len();
        let (mut in0, mut in1) = (Bits::new(size), Bits::new(size));
        for &j in live0 {
            in0.insert(j);
        }
        for &j in live {
            in1.insert(j);
        }
        for &j in live0 {
            if !in1.contains(j) {
                changes.push(Change::MachineGone(
                    self.machine_infos[j as usize].id.clone(),
                ));
            }
        }
        for &j in live {
            if !in0.contains(j) {
                changes.push(Change::Machine(self.machine_infos[j as usize].clone()));
            }
        }
        for u in 0..self.base_infos.len() as u32 {
            let claim = self
                .etcd
                .claim_at(u, rev)
                .map(|c| c.machine)
                .filter(|&j| in1.contains(j));
            if self.planner_claims[u as usize] != claim {
                self.planner_claims[u as usize] = claim;
                changes.push(Change::Claim {
                    unit: self.base_infos[u as usize].name.clone(),
                    machine: claim.map(|j| self.machine_infos[j as usize].id.clone()),
                });
            }
        }
        changes
    }

    // ------------------------------------------------------------------------------------------
    // systemd.
}

/// A plan, indexed by machine: the units placed on each machine (and whether as a global unit), in
/// name order, one flat vector for all.
pub(crate) struct PlanIndex {
    /// Machine `j`'s units are `units[starts[j]..starts[j + 1]]`.
    starts: Vec<u32>,
    units: Vec<(u32, bool)>,
}

impl PlanIndex {
    /// From `(machine, unit, global)` triples; `machines` is the number of machines.
    pub(crate) fn new(machines: usize, placed: Vec<(u32, u32, bool)>) -> PlanIndex {
        let mut starts = vec![0u32; machines + 1];
        for &(j, _, _) in &placed {
            starts[j as usize + 1] += 1;
        }
        for j in 0..machines {
            starts[j + 1] += starts[j];
        }
        let mut next = starts.clone();
        let mut units = vec![(0, false); placed.len()];
        for (j, u, global) in placed {
            let at = &mut next[j as usize];
            units[*at as usize] = (u, global);
            *at += 1;
        }
        PlanIndex { starts, units }
    }

    /// The units the plan puts on machine `j`.
    pub(crate) fn on(&self, j: u32) -> &[(u32, bool)] {
        let j = j as usize;
        match (self.starts.get(j), self.starts.get(j + 1)) {
            (Some(&a), Some(&b)) => &self.units[a as usize..b as usize],
            _ => &[],
        }
    }
}

/// Hashes a machine ID's string address (see `Sim::by_ptr`): one multiplication.
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
