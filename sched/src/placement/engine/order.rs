//! The order of decisions: reservations of kept claims, `MachineOf`/`Replaces` dependencies, ranks,
//! and the decision of one unit.

use super::*;

impl<'a> Scheduler<'a> {
    /// Non-global units in dependency order (see the module documentation).
    pub(super) fn place_non_globals(&mut self) {
        // Long on purpose: the ordering described in the module docs (reservations, dependency edges,
        // ranks, the queue) is one algorithm over shared local state; its steps are commented below.
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
        for members in cycles(&targets) {
            let mut names: Vec<UnitName> = members
                .iter()
                .map(|&u| self.units[u as usize].name.clone())
                .collect();
            names.sort();
            for &u in &members {
                self.decision[u as usize] =
                    Some(Dec::Unplaceable(Reason::MachineOfCycle(names.clone())));
            }
        }
        let mut followers: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut waiting = vec![0u32; n];
        for (u, ts) in targets.iter().enumerate() {
            if self.decision[u].is_some() {
                continue;
            }
            for &t in ts {
                if self.decision[t as usize].is_none() {
                    followers[t as usize].push(u as u32);
                    waiting[u] += 1;
                }
            }
        }
        // Reserve, targets first, every claim that can be kept, so that every unit decided later sees it:
        // on a live machine that its MachineID/MachineMetadata accept, its MachineOf targets reserved on
        // (or, global, running on) the same machine, and nothing already there (global units, earlier
        // reservations) blocking it. Everything placed later is checked against it, so it stays, unless a
        // unit that replaces it takes its machine (then it and its followers are decided anew).
        let mut reserved = vec![false; n];
        let mut freed = false;
        let mut left = waiting.clone();
        let mut queue: std::collections::VecDeque<u32> = (0..n as u32)
            .filter(|&u| self.decision[u as usize].is_none() && left[u as usize] == 0)
            .collect();
        while let Some(u) = queue.pop_front() {
            if self.can_reserve(u, &reserved) {
                self.place(u, self.claim[u as usize]);
                reserved[u as usize] = true;
            }
            for &f in &followers[u as usize] {
                left[f as usize] -= 1;
                if left[f as usize] == 0 {
                    queue.push_back(f);
                }
            }
        }
        // Replaced units wait for the units that replace them.
        let mut pending: Vec<u32> = (0..n)
            .map(|v| {
                self.replaced_by[v]
                    .iter()
                    .filter(|&&u| self.decision[u as usize].is_none())
                    .count() as u32
            })
            .collect();
        // A unit that others wait for inherits their class, so that a claim is never held back behind a
        // newcomer by what it waits for (its MachineOf targets, the units replacing it, and theirs).
        let mut class: Vec<u8> = (0..n as u32).map(|u| self.class(u, &reserved)).collect();
        let mut work: Vec<u32> = (0..n as u32).filter(|&u| class[u as usize] < 2).collect();
        while let Some(w) = work.pop() {
            let c = class[w as usize];
            let waits_for = targets[w as usize]
                .iter()
                .chain(&self.replaced_by[w as usize]);
            for &u in waits_for {
                if class[u as usize] > c {
                    class[u as usize] = c;
                    work.push(u);
                }
            }
        }
        let key = |u: u32| (class[u as usize], u);
        // Ready: every wait is over. Deferred: only waiting for replacing units; taken by name when nothing
        // is ready, which only MachineOf/Replaces cycles cause (by name only, so that claims do not change
        // how such a cycle is broken).
        let mut ready: BTreeSet<(u8, u32)> = BTreeSet::new();
        let mut deferred: BTreeSet<u32> = BTreeSet::new();
        for u in 0..n as u32 {
            if self.decision[u as usize].is_none() && waiting[u as usize] == 0 {
                if pending[u as usize] == 0 {
                    ready.insert(key(u));
                } else {
                    deferred.insert(u);
                }
            }
        }
        while let Some(u) = ready
            .pop_first()
            .map(|(_, u)| u)
            .or_else(|| deferred.pop_first())
        {
            let dec = if reserved[u as usize] {
                Dec::On(self.at[u as usize])
            } else {
                // A unit may take the machine of the units it replaces: their reservations do not count
                // while it is decided, and stay only where it did not go.
                let released: Vec<u32> = self.replaces[u as usize]
                    .iter()
                    .copied()
                    .filter(|&v| reserved[v as usize] && self.decision[v as usize].is_none())
                    .collect();
                for &v in &released {
                    self.unplace(v);
                }
                self.ensure_pool(u);
                let dec = self.decide(u);
                if let Dec::On(m) = dec {
                    self.place(u, m);
                }
                // Reserve again, targets before followers, those that still can be; the others (and
                // their followers) are decided anew.
                let mut back = released;
                loop {
                    let before = back.len();
                    let mut i = 0;
                    while i < back.len() {
                        let v = back[i];
                        if self.can_reserve(v, &reserved) {
                            self.place(v, self.claim[v as usize]);
                            back.remove(i);
                        } else {
                            i += 1;
                        }
                    }
                    if back.len() == before {
                        break;
                    }
                }
                for v in back {
                    reserved[v as usize] = false;
                    self.release_followers(v, &followers, &mut reserved);
                    freed = true;
                }
                dec
            };
            self.decision[u as usize] = Some(dec);
            for &f in &followers[u as usize] {
                waiting[f as usize] -= 1;
                if waiting[f as usize] == 0 {
                    if pending[f as usize] == 0 {
                        ready.insert(key(f));
                    } else {
                        deferred.insert(f);
                    }
                }
            }
            for &v in &self.replaces[u as usize] {
                pending[v as usize] -= 1;
                if pending[v as usize] == 0 && deferred.remove(&v) {
                    ready.insert(key(v));
                }
            }
        }
        debug_assert!(self.decision.iter().all(Option::is_some));
        if freed {
            self.retry();
        }
    }

    /// After a reservation was given up, units decided earlier may have been kept off a machine by it:
    /// those that are blocked, or follow a unit that was not placed, are decided again (by name, until
    /// nothing changes). From here on units are only added, so what is still blocked stays blocked.
    pub(super) fn retry(&mut self) {
        loop {
            let mut changed = false;
            for u in 0..self.units.len() as u32 {
                let again = matches!(
                    self.decision[u as usize],
                    Some(Dec::Blocked { .. })
                        | Some(Dec::Unplaceable(Reason::MachineOfNotPlaced(_)))
                );
                if !again || self.is_global(u) {
                    continue;
                }
                self.ensure_pool(u);
                let dec = self.decide(u);
                if let Dec::On(m) = dec {
                    self.place(u, m);
                    changed = true;
                }
                self.decision[u as usize] = Some(dec);
            }
            if !changed {
                return;
            }
        }
    }

    /// Drops the reservations of the units that follow `v` (and of theirs): `v` is moving.
    pub(super) fn release_followers(
        &mut self,
        v: u32,
        followers: &[Vec<u32>],
        reserved: &mut [bool],
    ) {
        let mut stack = vec![v];
        while let Some(t) = stack.pop() {
            for &f in &followers[t as usize] {
                if reserved[f as usize] && self.decision[f as usize].is_none() {
                    if self.at[f as usize] != NONE {
                        self.unplace(f);
                    }
                    reserved[f as usize] = false;
                    stack.push(f);
                }
            }
        }
    }

    /// Whether the live claim of `u` can be reserved (see `place_non_globals`).
    pub(super) fn can_reserve(&self, u: u32, reserved: &[bool]) -> bool {
        let m = self.claim[u as usize];
        if m == NONE || self.is_global(u) || self.precheck(u).is_some() || !self.static_ok(u, m) {
            return false;
        }
        let with_targets = self.req(u).machine_of.iter().all(|t| {
            let Some(&t) = self.by_name.get(t.as_str()) else {
                return false;
            };
            match &self.decision[t as usize] {
                Some(Dec::Global(ms)) => ms.binary_search(&m).is_ok(),
                Some(_) => false,
                None => reserved[t as usize] && self.at[t as usize] == m,
            }
        });
        with_targets && !self.blocked(u, m)
    }

    /// Processing class of a non-global unit once nothing it waits for is pending (lower first, then by
    /// name):
    /// 0. without a reservation, and it replaces a claimed unit that is free to move: it may take that
    ///    machine, so it goes before anything could be blocked by the reservation it may end;
    /// 1. claimed on a live machine;
    /// 2. everything else (new units, claims on dead machines).
    pub(super) fn class(&self, u: u32, reserved: &[bool]) -> u8 {
        let ui = u as usize;
        if !reserved[ui]
            && self.replaces[ui]
                .iter()
                .any(|&v| self.movable_claim(v).is_some())
        {
            0
        } else if self.claim[ui] != NONE {
            1
        } else {
            2
        }
    }

    /// The live claim of `v` if it is free to move (no `MachineOf=`, no `MachineID=`).
    pub(super) fn movable_claim(&self, v: u32) -> Option<u32> {
        let req = self.req(v);
        let m = self.claim[v as usize];
        (m != NONE && req.machine_of.is_empty() && req.required_machine().is_none()).then_some(m)
    }

    /// Decides one non-global unit; its MachineOf targets are already decided.
    pub(super) fn decide(&self, u: u32) -> Dec {
        // Long on purpose: the candidate order of one unit (own claim, replaced claims, then by load, per
        // candidate pool) is one loop with early exits; the reason of a failure is computed elsewhere.
        if let Some(reason) = self.precheck(u) {
            return Dec::Unplaceable(reason);
        }
        // MachineOf: the one machine of the non-global targets, within the machines of the global ones.
        let mut fixed: Option<(u32, &str)> = None;
        let mut within: Vec<&[u32]> = Vec::new();
        for t in &self.req(u).machine_of {
            let placed = self
                .by_name
                .get(t.as_str())
                .and_then(|&t| self.decision[t as usize].as_ref());
            match placed {
                Some(Dec::On(m)) => match fixed {
                    Some((other, name)) if other != *m => {
                        return Dec::Unplaceable(Reason::MachineOfApart(vec![
                            name.to_owned(),
                            t.clone(),
                        ]))
                    }
                    _ => fixed = Some((*m, t.as_str())),
                },
                Some(Dec::Global(ms)) => within.push(ms),
                _ => return Dec::Unplaceable(Reason::MachineOfNotPlaced(t.clone())),
            }
        }
        let allowed = |m: u32| {
            !matches!(fixed, Some((f, _)) if f != m)
                && within.iter().all(|ms| ms.binary_search(&m).is_ok())
                && self.static_ok(u, m)
        };
        let fits = |m: u32| allowed(m) && !self.blocked(u, m);

        // Its own claim, then the claims of the units it replaces (when they are free to move).
        let own = self.claim[u as usize];
        if own != NONE && fits(own) {
            return Dec::On(own);
        }
        for &v in &self.replaces[u as usize] {
            match self.movable_claim(v) {
                Some(vm) if self.at[v as usize] == NONE && fits(vm) => return Dec::On(vm),
                _ => {}
            }
        }

        // Every candidate by (load, ID).
        let by_load = |mut ms: Vec<u32>| {
            ms.sort_unstable_by_key(|&m| (self.load[m as usize], m));
            ms.into_iter().find(|&m| fits(m))
        };
        let found = if let Some((m, _)) = fixed {
            by_load(vec![m])
        } else if let Some(id) = self.req(u).required_machine() {
            by_load(self.id_matches(id))
        } else {
            let class = &self.classes[self.class_of[u as usize] as usize];
            match (&class.eligible, class.pool) {
                (None, _) if self.pool_blocked(u, 0) => None,
                (None, _) => self.pools[0].iter().map(|&(_, m)| m).find(|&m| fits(m)),
                (Some(_), Some(p)) if self.pool_blocked(u, p) => None,
                (Some(_), Some(p)) => self.pools[p].iter().map(|&(_, m)| m).find(|&m| fits(m)),
                (Some(e), None) => by_load(e.clone()),
            }
        };
        if let Some(m) = found {
            return Dec::On(m);
        }

        // Not placeable: say why.
        let in_within = |m: u32| within.iter().all(|ms| ms.binary_search(&m).is_ok());
        let apart = || {
            let mut of = self.req(u).machine_of.clone();
            of.sort();
            Dec::Unplaceable(Reason::MachineOfApart(of))
        };
        if let Some((m, _)) = fixed {
            if !in_within(m) {
                return apart();
            }
            if self.requirements_allow(u, m) && self.refuses(m, u) {
                return Dec::Unplaceable(self.refused_reason(u, &[m]));
            }
            if !self.static_ok(u, m) {
                return Dec::Unplaceable(Reason::MetadataUnmatched {
                    requirement: render_metadata(&self.req(u).metadata),
                    considered: 1,
                });
            }
            return Dec::Blocked {
                machine: m,
                machines: 1,
            };
        }
        if !within.is_empty() {
            let shared: Vec<u32> = (0..self.machines.len() as u32)
                .filter(|&m| in_within(m))
                .collect();
            if shared.is_empty() {
                return apart();
            }
            let candidates: Vec<u32> = shared
                .iter()
                .copied()
                .filter(|&m| self.static_ok(u, m))
                .collect();
            let allowed: Vec<u32> = shared
                .iter()
                .copied()
                .filter(|&m| self.requirements_allow(u, m))
                .collect();
            if candidates.is_empty() && !allowed.is_empty() {
                return Dec::Unplaceable(self.refused_reason(u, &allowed));
            }
            if candidates.is_empty() {
                return Dec::Unplaceable(Reason::MetadataUnmatched {
                    requirement: render_metadata(&self.req(u).metadata),
                    considered: shared.len(),
                });
            }
            return self.unplaceable(u, &candidates);
        }
        self.unplaceable_span(u, self.static_span(u))
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

/// Strongly connected components of a graph (`MachineOf` follower -> targets, or replacing -> replaced)
/// that are cycles (more than one unit, or a unit pointing at itself). Iterative Tarjan, so long chains do not exhaust the stack.
pub(in crate::placement) fn cycles(targets: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let n = targets.len();
    let mut index = vec![u32::MAX; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut next = 0u32;
    let mut out = Vec::new();
    let mut call: Vec<(u32, usize)> = Vec::new();
    for root in 0..n as u32 {
        if index[root as usize] != u32::MAX {
            continue;
        }
        call.push((root, 0));
        index[root as usize] = next;
        low[root as usize] = next;
        next += 1;
        stack.push(root);
        on_stack[root as usize] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            let vi = v as usize;
            if *i < targets[vi].len() {
                let w = targets[vi][*i];
                *i += 1;
                let wi = w as usize;
                if index[wi] == u32::MAX {
                    index[wi] = next;
                    low[wi] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[wi] = true;
                    call.push((w, 0));
                } else if on_stack[wi] {
                    low[vi] = low[vi].min(index[wi]);
                }
                continue;
            }
            call.pop();
            if let Some(&(parent, _)) = call.last() {
                low[parent as usize] = low[parent as usize].min(low[vi]);
            }
            if low[vi] == index[vi] {
                let mut members = Vec::new();
                loop {
                    let w = stack.pop().expect("tarjan stack");
                    on_stack[w as usize] = false;
                    members.push(w);
                    if w == v {
                        break;
                    }
                }
                if members.len() > 1 || targets[vi].contains(&v) {
                    members.sort_unstable();
                    out.push(members);
                }
            }
        }
    }
    out
}
