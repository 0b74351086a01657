//! `schedule`'s step 2 (the reservations of kept claims, in `MachineOf=` dependency order) and its step
//! 3 through the shared [`decide`](super::super::decide) module, with [`Host`] over the scheduler's
//! indexes (units by name, machines by ID).

use super::super::decide::{can_reserve, Graph, Host, Target};
use super::*;

impl<'a> Scheduler<'a> {
    /// Non-global units in dependency order (see the module documentation).
    pub(super) fn place_non_globals(&mut self) {
        let n = self.units.len();
        // MachineOf edges between non-global active units: target -> followers.
        let mut targets: Vec<Vec<u32>> = vec![Vec::new(); n];
        for u in 0..n as u32 {
            if self.is_global(u) || self.invalid[u as usize].is_some() {
                continue;
            }
            for t in &self.req(u).machine_of {
                if let Some(&t) = self.by_name.get(t.as_str()) {
                    if !self.is_global(t) && !targets[u as usize].contains(&t) {
                        targets[u as usize].push(t);
                    }
                }
            }
        }
        let mut decision = std::mem::take(&mut self.decision);
        let graph = Graph::new(
            self,
            targets,
            self.replaces.clone(),
            self.replaced_by.clone(),
            &mut decision,
        );
        // Reserve, targets first, every claim that can be kept, so that every unit decided later sees it:
        // on a live machine that its MachineID/MachineMetadata accept, its MachineOf targets reserved on
        // (or, global, running on) the same machine, and nothing already there (global units, earlier
        // reservations) blocking it. Everything placed later is checked against it, so it stays, unless a
        // unit that replaces it takes its machine (then it and its followers are decided anew).
        let mut reserved = vec![false; n];
        let mut left = graph.waiting.clone();
        let mut queue: std::collections::VecDeque<u32> = (0..n as u32)
            .filter(|&u| decision[u as usize].is_none() && left[u as usize] == 0)
            .collect();
        while let Some(u) = queue.pop_front() {
            if can_reserve(self, u, &reserved, &decision) {
                self.place(u, self.claim[u as usize]);
                reserved[u as usize] = true;
            }
            for &f in &graph.followers[u as usize] {
                left[f as usize] -= 1;
                if left[f as usize] == 0 {
                    queue.push_back(f);
                }
            }
        }
        graph.decide_all(self, reserved, &mut decision);
        self.decision = decision;
    }

    /// Creates the ordered set of a class matched by many (not all) machines, once, before it is needed.
    pub(super) fn ensure_pool(&mut self, u: u32) {
        let c = self.class_of[u as usize] as usize;
        if self.classes[c].pool.is_some() || self.req(u).required_machine().is_some() {
            return;
        }
        let Some(e) = &self.classes[c].eligible else {
            return;
        };
        if e.len() <= SMALL_CLASS {
            return;
        }
        let p = self.pools.len();
        let set: BTreeSet<(u32, u32)> = e.iter().map(|&m| (self.load[m as usize], m)).collect();
        let mut touched: FxMap<u64, [u32; 3]> = FxMap::default();
        for &m in e {
            self.machine_pools[m as usize].push(p);
            let mut ps: Vec<u32> = self.on_machine[m as usize]
                .iter()
                .flat_map(|&w| self.touched_patterns(w))
                .collect();
            ps.sort_unstable();
            ps.dedup();
            for q in ps {
                let [matched, owned] = self.pattern_state(q, m);
                let c = touched.entry(key(q, p as u32)).or_default();
                c[0] += matched as u32;
                c[1] += owned as u32;
                c[2] += (matched || owned) as u32;
            }
        }
        self.pool_touched.extend(touched);
        self.pools.push(set);
        self.classes[c].pool = Some(p);
    }
}

impl Host for Scheduler<'_> {
    fn unit_at(&self, i: usize) -> u32 {
        i as u32
    }

    fn local(&self, u: u32) -> usize {
        u as usize
    }

    fn req(&self, u: u32) -> &Requirements {
        Scheduler::req(self, u)
    }

    fn name(&self, u: u32) -> &UnitName {
        &self.units[u as usize].name
    }

    fn claim(&self, u: u32) -> u32 {
        self.claim[u as usize]
    }

    fn at(&self, u: u32) -> u32 {
        self.at[u as usize]
    }

    fn replaces(&self, u: u32) -> &[u32] {
        &self.replaces[u as usize]
    }

    fn target(&self, name: &str) -> Target {
        match self.by_name.get(name) {
            None => Target::Missing,
            Some(&t) if self.is_global(t) => Target::Global(t),
            Some(&t) => Target::Unit(t),
        }
    }

    fn global_placed(&self, g: u32, decision: &[Option<Dec>]) -> bool {
        matches!(decision[g as usize], Some(Dec::Global(_)))
    }

    fn global_on(&self, g: u32, m: u32, decision: &[Option<Dec>]) -> bool {
        matches!(&decision[g as usize], Some(Dec::Global(ms)) if ms.binary_search(&m).is_ok())
    }

    fn place(&mut self, u: u32, m: u32) {
        Scheduler::place(self, u, m)
    }

    fn unplace(&mut self, u: u32) {
        Scheduler::unplace(self, u)
    }

    fn ensure_pool(&mut self, u: u32) {
        Scheduler::ensure_pool(self, u)
    }

    fn precheck(&self, u: u32) -> Option<Reason> {
        Scheduler::precheck(self, u)
    }

    fn requirements_allow(&self, u: u32, m: u32) -> bool {
        Scheduler::requirements_allow(self, u, m)
    }

    fn refuses(&self, m: u32, u: u32) -> bool {
        Scheduler::refuses(self, m, u)
    }

    fn blocked(&self, u: u32, m: u32) -> bool {
        Scheduler::blocked(self, u, m)
    }

    fn refused_reason(&self, u: u32, allowed: &[u32]) -> Reason {
        Scheduler::refused_reason(self, u, allowed)
    }

    fn id_matches(&self, id: &str) -> Vec<u32> {
        Scheduler::id_matches(self, id)
    }

    fn by_load(&self, mut ms: Vec<u32>, fits: &dyn Fn(u32) -> bool) -> Option<u32> {
        ms.sort_unstable_by_key(|&m| (self.load[m as usize], m));
        ms.into_iter().find(|&m| fits(m))
    }

    fn least_loaded(&self, u: u32, fits: &dyn Fn(u32) -> bool) -> Option<u32> {
        let class = &self.classes[self.class_of[u as usize] as usize];
        let pool = match (&class.eligible, class.pool) {
            (None, _) => 0,
            (Some(_), Some(p)) => p,
            (Some(e), None) => return self.by_load(e.clone(), fits),
        };
        if self.pool_blocked(u, pool) {
            return None;
        }
        self.pools[pool].iter().map(|&(_, m)| m).find(|&m| fits(m))
    }

    fn machines_by_id(&self) -> Vec<u32> {
        (0..self.machines.len() as u32).collect()
    }

    fn static_span(&self, u: u32) -> (Option<u32>, usize) {
        Scheduler::static_span(self, u)
    }

    fn unplaceable_span(&self, u: u32, span: (Option<u32>, usize)) -> Dec {
        Scheduler::unplaceable_span(self, u, span)
    }
}
