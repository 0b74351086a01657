//! What the planner derives from the units: `MachineMetadata=` classes, interned `Conflicts=` and
//! `Replaces=` patterns, the `MachineOf=` and `Replaces=` graphs and their cycles, kept up to date as units
//! come, change and go. The definitions are `schedule`'s (`engine::Scheduler::new` and
//! `place_non_globals`).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::super::decide::cycles;
use super::super::engine::{is_literal, FxSet, NONE};
use super::{Class, Pattern, Planner};
use crate::{glob_match, UnitName};

/// `schedule`'s pattern matching: a pattern without glob characters names one unit.
fn pattern_matches(text: &str, literal: bool, name: &str) -> bool {
    if literal {
        text == name
    } else {
        glob_match(text, name)
    }
}

impl Planner {
    /// Makes a stored unit take part in placement (if its desired state is not `inactive`).
    pub(super) fn attach(&mut self, u: u32) {
        self.touched.insert(u);
        self.affected.insert(u);
        let name = self.name(u).to_owned();
        // Units that name it in MachineOf, and units whose Replaces match it, see it appear.
        self.affect_neighbours_of_name(&name);
        let unit = self.unit(u);
        if unit.info.desired == crate::DesiredState::Inactive {
            return;
        }
        let req = unit.info.requirements.clone();
        let invalid = req.validate().err();
        let valid = invalid.is_none();
        {
            let unit = self.unit_mut(u);
            unit.active = true;
            unit.global = req.global;
            unit.invalid = invalid;
        }
        self.active.insert(name.clone(), u);
        for t in &req.machine_of {
            self.machine_of_index.entry(t.clone()).or_default().push(u);
        }
        if !req.metadata.is_empty() {
            let c = self.intern_class(&req.metadata);
            self.unit_mut(u).class = c;
        }
        // Conflicts: first the patterns already there that match it, then its own.
        let matched: Vec<u32> = self.conflict_patterns_matching(&name);
        self.unit_mut(u).matched_by = matched;
        if valid {
            let mut own = Vec::new();
            #[cfg(feature = "mutations")]
            let ignore = crate::mutation::on(crate::mutation::Mutation::IgnoreConflicts);
            #[cfg(not(feature = "mutations"))]
            let ignore = false;
            for text in req.conflicts.iter().filter(|_| !ignore) {
                let p = self.intern_pattern(text);
                if !own.contains(&p) {
                    own.push(p);
                    self.add_conflict_owner(p);
                }
            }
            self.unit_mut(u).conflict_pats = own;
            if !req.global && !req.replaces.is_empty() {
                let mut own = Vec::new();
                for text in &req.replaces {
                    let p = self.intern_pattern(text);
                    if !own.contains(&p) {
                        own.push(p);
                        self.pat_mut(p).replace_owners.push(u);
                    }
                }
                self.unit_mut(u).replace_pats = own;
            }
        }
        if req.global {
            self.globals.insert(name.clone(), u);
            self.new_globals.push(u);
            self.dirty_followers_of(&name);
        } else {
            self.unreserved.insert(u);
        }
        self.resolve_claim(u);
    }

    /// Takes a unit out of placement (before it changes or goes): unplaced, relations dropped.
    pub(super) fn detach(&mut self, u: u32) {
        self.touched.insert(u);
        let name = self.unit(u).info.name.clone();
        self.plan.decisions.remove(&name);
        if !self.unit(u).active {
            return;
        }
        self.affected.insert(u);
        self.affect_neighbours_of_name(name.as_str());
        if self.unit(u).global {
            let on: Vec<u32> = self.unit(u).global_on.iter().copied().collect();
            if self.has_conflict_relations(u) && self.conflicts_with_a_global(u) {
                self.dirty_globals.extend(on.iter().copied());
            } else {
                // No other global unit was kept off a machine by it: only claims there that it blocked
                // may be kept now.
                self.dirty_claims_blocked_by(u);
                self.direct_moves += on.len();
            }
            self.unplace_global(u, &on);
            self.globals.remove(name.as_str());
            self.dirty_followers_of(name.as_str());
        } else {
            self.unreserve(u);
            self.unreserved.remove(&u);
        }
        let claim = self.unit(u).claim;
        if claim != NONE {
            self.machine_mut(claim).claimed.retain(|&x| x != u);
            self.dirty.insert(claim);
            self.unit_mut(u).claim = NONE;
        }
        // Graph edges, both ways; the neighbours' lists are recomputed with the relations.
        let unit = self.unit_mut(u);
        let targets = std::mem::take(&mut unit.targets);
        let followers = std::mem::take(&mut unit.followers);
        let replaces = std::mem::take(&mut unit.replaces_raw);
        let replaced_by = std::mem::take(&mut unit.replaced_by_raw);
        unit.replaces.clear();
        unit.replaced_by.clear();
        unit.cycle = None;
        for t in targets {
            self.unit_mut(t).followers.retain(|&x| x != u);
            self.affected.insert(t);
        }
        for f in followers {
            self.unit_mut(f).targets.retain(|&x| x != u);
            self.affected.insert(f);
        }
        for v in replaces {
            self.unit_mut(v).replaced_by_raw.retain(|&x| x != u);
            self.affected.insert(v);
        }
        for o in replaced_by {
            self.unit_mut(o).replaces_raw.retain(|&x| x != u);
            self.affected.insert(o);
        }
        for p in std::mem::take(&mut self.unit_mut(u).conflict_pats) {
            self.remove_conflict_owner(p);
        }
        for p in std::mem::take(&mut self.unit_mut(u).replace_pats) {
            self.pat_mut(p).replace_owners.retain(|&x| x != u);
            self.release_pattern(p);
        }
        self.unit_mut(u).matched_by.clear();
        let c = std::mem::replace(&mut self.unit_mut(u).class, NONE);
        if c != NONE {
            self.release_class(c);
        }
        for t in self.unit(u).info.requirements.machine_of.clone() {
            if let Some(list) = self.machine_of_index.get_mut(&t) {
                list.retain(|&x| x != u);
                if list.is_empty() {
                    self.machine_of_index.remove(&t);
                }
            }
        }
        self.active.remove(name.as_str());
        let unit = self.unit_mut(u);
        unit.active = false;
        unit.global = false;
        unit.invalid = None;
    }

    /// Whether global unit `g` and another global unit conflict (either way).
    fn conflicts_with_a_global(&self, g: u32) -> bool {
        self.globals
            .values()
            .any(|&h| h != g && self.conflict_related(g, h))
    }

    /// Whether `a` and `b` conflict, either way.
    fn conflict_related(&self, a: u32, b: u32) -> bool {
        let (a, b) = (self.unit(a), self.unit(b));
        a.conflict_pats.iter().any(|p| b.matched_by.contains(p))
            || a.matched_by.iter().any(|p| b.conflict_pats.contains(p))
    }

    /// Global unit `g` goes: the machines it runs on where a unit claimed there is not reserved and
    /// conflicts with it must have their reservations recomputed.
    fn dirty_claims_blocked_by(&mut self, g: u32) {
        if !self.has_conflict_relations(g) {
            return;
        }
        let machines: Vec<u32> = self
            .unreserved
            .iter()
            .map(|&w| (w, self.unit(w).claim))
            .filter(|&(w, m)| {
                m != NONE && self.unit(g).global_on.contains(&m) && self.conflict_related(g, w)
            })
            .map(|(_, m)| m)
            .collect();
        self.dirty.extend(machines);
    }

    /// Whether a unit owns a `Conflicts=` pattern or is matched by one.
    pub(super) fn has_conflict_relations(&self, u: u32) -> bool {
        let unit = self.unit(u);
        !unit.conflict_pats.is_empty() || !unit.matched_by.is_empty()
    }

    /// A global unit named `name` comes or goes: the claims of units with `MachineOf=` it must be
    /// checked again (they are kept only where it runs).
    fn dirty_followers_of(&mut self, name: &str) {
        for &f in self.machine_of_index.get(name).into_iter().flatten() {
            let claim = self.unit(f).claim;
            if claim != NONE {
                self.dirty.insert(claim);
            }
        }
    }

    /// Units whose relations depend on whether a unit named `name` takes part: those naming it in
    /// `MachineOf=`, and the owners of `Replaces=` patterns matching it.
    fn affect_neighbours_of_name(&mut self, name: &str) {
        if let Some(list) = self.machine_of_index.get(name) {
            self.affected.extend(list.iter().copied());
        }
        for p in self.patterns_matching(name) {
            let owners = &self.pats[p as usize]
                .as_ref()
                .expect("pattern")
                .replace_owners;
            self.affected.extend(owners.iter().copied());
        }
    }

    // ---- Patterns ---------------------------------------------------------------------------------

    fn pat(&self, p: u32) -> &Pattern {
        self.pats[p as usize].as_ref().expect("pattern")
    }

    fn pat_mut(&mut self, p: u32) -> &mut Pattern {
        self.pats[p as usize].as_mut().expect("pattern")
    }

    /// Interned patterns (of any kind) that match `name`.
    fn patterns_matching(&self, name: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .pat_ids
            .get(name)
            .copied()
            .filter(|&p| self.pat(p).literal)
            .into_iter()
            .collect();
        out.extend(
            self.globs
                .iter()
                .copied()
                .filter(|&p| glob_match(&self.pat(p).text, name)),
        );
        out
    }

    fn conflict_patterns_matching(&self, name: &str) -> Vec<u32> {
        let mut ps = self.patterns_matching(name);
        ps.retain(|&p| self.pat(p).conflict_owners > 0);
        ps
    }

    /// Active units whose name a pattern matches, by name.
    pub(super) fn units_matching(&self, p: u32) -> Vec<u32> {
        let pat = self.pat(p);
        if pat.literal {
            return self.active.get(&pat.text).copied().into_iter().collect();
        }
        let text = pat.text.as_str();
        let prefix = &text[..text.find(['*', '?', '[', '\\']).unwrap_or(text.len())];
        self.active
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(n, _)| n.starts_with(prefix))
            .filter(|(n, _)| pattern_matches(text, false, n))
            .map(|(_, &u)| u)
            .collect()
    }

    fn intern_pattern(&mut self, text: &str) -> u32 {
        if let Some(&p) = self.pat_ids.get(text) {
            return p;
        }
        let pat = Pattern {
            text: text.to_owned(),
            literal: is_literal(text),
            conflict_owners: 0,
            replace_owners: Vec::new(),
        };
        let literal = pat.literal;
        let p = match self.free_pats.pop() {
            Some(p) => {
                self.pats[p as usize] = Some(pat);
                p
            }
            None => {
                self.pats.push(Some(pat));
                (self.pats.len() - 1) as u32
            }
        };
        self.pat_ids.insert(text.to_owned(), p);
        if !literal {
            self.globs.insert(p);
        }
        p
    }

    /// Frees a pattern nobody owns any more.
    fn release_pattern(&mut self, p: u32) {
        let pat = self.pat(p);
        if pat.conflict_owners > 0 || !pat.replace_owners.is_empty() {
            return;
        }
        let pat = self.pats[p as usize].take().expect("pattern");
        self.pat_ids.remove(&pat.text);
        self.globs.remove(&p);
        self.free_pats.push(p);
    }

    /// One more active valid unit has `p` in `Conflicts=`; the first one makes it a conflict pattern for
    /// the units it matches (and their counters where they are placed).
    fn add_conflict_owner(&mut self, p: u32) {
        self.pat_mut(p).conflict_owners += 1;
        if self.pat(p).conflict_owners > 1 {
            return;
        }
        for w in self.units_matching(p) {
            self.unit_mut(w).matched_by.push(p);
            for m in self.placements(w) {
                self.adjust(p, m, false, true);
            }
        }
    }

    fn remove_conflict_owner(&mut self, p: u32) {
        self.pat_mut(p).conflict_owners -= 1;
        if self.pat(p).conflict_owners == 0 {
            for w in self.units_matching(p) {
                self.unit_mut(w).matched_by.retain(|&x| x != p);
                for m in self.placements(w) {
                    self.adjust(p, m, false, false);
                }
            }
        }
        self.release_pattern(p);
    }

    /// The machines a unit is placed on now.
    fn placements(&self, u: u32) -> Vec<u32> {
        let unit = self.unit(u);
        if unit.global {
            unit.global_on.iter().copied().collect()
        } else if unit.at != NONE {
            vec![unit.at]
        } else {
            Vec::new()
        }
    }

    // ---- Classes ----------------------------------------------------------------------------------

    fn intern_class(&mut self, md: &BTreeMap<String, Vec<String>>) -> u32 {
        if let Some(&c) = self.class_ids.get(md) {
            self.classes[c as usize].as_mut().expect("class").refs += 1;
            return c;
        }
        let mut member = vec![false; self.ms.len()];
        let mut sorted = Vec::new();
        for &m in &self.order {
            if super::metadata_matches(md, &self.machine(m).info.metadata) {
                member[m as usize] = true;
                sorted.push(m);
            }
        }
        let class = Class {
            metadata: md.clone(),
            refs: 1,
            member,
            sorted,
            pool: NONE,
        };
        let c = match self.free_classes.pop() {
            Some(c) => {
                self.classes[c as usize] = Some(class);
                c
            }
            None => {
                self.classes.push(Some(class));
                (self.classes.len() - 1) as u32
            }
        };
        self.class_ids.insert(md.clone(), c);
        self.ensure_class_pool(c);
        c
    }

    fn release_class(&mut self, c: u32) {
        let class = self.classes[c as usize].as_mut().expect("class");
        class.refs -= 1;
        if class.refs > 0 {
            return;
        }
        let class = self.classes[c as usize].take().expect("class");
        self.class_ids.remove(&class.metadata);
        self.free_classes.push(c);
        if class.pool != NONE {
            let p = class.pool;
            for &m in &class.sorted {
                self.machine_mut(m).pools.retain(|&x| x != p);
            }
            self.pools[p as usize] = None;
            self.pool_touched
                .retain(|&k, _| (k & u32::MAX as u64) as u32 != p);
            self.free_pools.push(p);
        }
    }

    // ---- Graphs -----------------------------------------------------------------------------------

    /// `MachineOf=` targets of `u`: active non-global units, for an active valid non-global unit.
    fn compute_targets(&self, u: u32) -> Vec<u32> {
        let unit = self.unit(u);
        let mut out = Vec::new();
        if !unit.active || unit.global || unit.invalid.is_some() {
            return out;
        }
        for t in &unit.info.requirements.machine_of {
            if let Some(&t) = self.active.get(t) {
                if !self.unit(t).global && !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Units `u` replaces (before cycles are ignored), by name.
    fn compute_replaces(&self, u: u32) -> Vec<u32> {
        let unit = self.unit(u);
        let mut out: Vec<u32> = Vec::new();
        for &p in &unit.replace_pats {
            out.extend(self.units_matching(p));
        }
        out.retain(|&v| {
            let w = self.unit(v);
            v != u && !w.global && w.invalid.is_none()
        });
        out.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
        out.dedup();
        out
    }

    /// Recomputes the relations of the affected units and, in their `MachineOf=` and `Replaces=`
    /// groups, the cycles; the machines claimed by units whose relations changed must be recomputed.
    pub(super) fn settle_relations(&mut self) {
        let affected: Vec<u32> = std::mem::take(&mut self.affected)
            .into_iter()
            .filter(|&u| self.us[u as usize].as_ref().is_some_and(|x| x.active))
            .collect();
        if affected.is_empty() {
            return;
        }
        let mut changed: FxSet<u32> = FxSet::default();
        for &u in &affected {
            let targets = self.compute_targets(u);
            if targets != self.unit(u).targets {
                let old = std::mem::replace(&mut self.unit_mut(u).targets, targets.clone());
                for t in old {
                    self.unit_mut(t).followers.retain(|&x| x != u);
                }
                for t in targets {
                    self.unit_mut(t).followers.push(u);
                }
                changed.insert(u);
            }
            let replaces = self.compute_replaces(u);
            if replaces != self.unit(u).replaces_raw {
                let old = std::mem::replace(&mut self.unit_mut(u).replaces_raw, replaces.clone());
                for v in old {
                    self.unit_mut(v).replaced_by_raw.retain(|&x| x != u);
                }
                for v in replaces {
                    self.unit_mut(v).replaced_by_raw.push(u);
                }
            }
        }
        // A unit without edges is in no cycle and replaces nothing: only the others need their groups.
        let (mut linked, mut alone) = (Vec::new(), Vec::new());
        let mut rep_linked = Vec::new();
        for &u in &affected {
            let x = self.unit(u);
            if x.targets.is_empty() && x.followers.is_empty() {
                alone.push(u);
            } else {
                linked.push(u);
            }
            if !x.replaces_raw.is_empty() || !x.replaced_by_raw.is_empty() {
                rep_linked.push(u);
            } else if !x.replaces.is_empty() || !x.replaced_by.is_empty() {
                let x = self.unit_mut(u);
                x.replaces.clear();
                x.replaced_by.clear();
                changed.insert(u);
            }
        }
        for u in alone {
            if self.unit(u).cycle.is_some() {
                self.unit_mut(u).cycle = None;
                changed.insert(u);
            }
        }
        let affected = linked;
        // MachineOf cycles in the groups of the affected units.
        let group = self.group(&affected, |p, u| {
            let x = p.unit(u);
            x.targets.iter().chain(&x.followers).copied().collect()
        });
        let local = |g: &[u32]| -> super::super::engine::FxMap<u32, u32> {
            g.iter().enumerate().map(|(i, &u)| (u, i as u32)).collect()
        };
        let index = local(&group);
        let edges: Vec<Vec<u32>> = group
            .iter()
            .map(|&u| self.unit(u).targets.iter().map(|t| index[t]).collect())
            .collect();
        let mut cycle: Vec<Option<Vec<UnitName>>> = vec![None; group.len()];
        for members in cycles(&edges) {
            let mut names: Vec<UnitName> = members
                .iter()
                .map(|&i| self.unit(group[i as usize]).info.name.clone())
                .collect();
            names.sort();
            for &i in &members {
                cycle[i as usize] = Some(names.clone());
            }
        }
        for (i, c) in cycle.into_iter().enumerate() {
            let u = group[i];
            if self.unit(u).cycle != c {
                self.unit_mut(u).cycle = c;
                changed.insert(u);
            }
        }
        // Replaces: relations inside a cycle are ignored.
        let group = self.group(&rep_linked, |p, u| {
            let x = p.unit(u);
            x.replaces_raw
                .iter()
                .chain(&x.replaced_by_raw)
                .copied()
                .collect()
        });
        let index = local(&group);
        let edges: Vec<Vec<u32>> = group
            .iter()
            .map(|&u| self.unit(u).replaces_raw.iter().map(|v| index[v]).collect())
            .collect();
        let mut scc = vec![NONE; group.len()];
        for (i, members) in cycles(&edges).into_iter().enumerate() {
            for u in members {
                scc[u as usize] = i as u32;
            }
        }
        let mut replaced_by: Vec<Vec<u32>> = vec![Vec::new(); group.len()];
        let mut replaces: Vec<Vec<u32>> = vec![Vec::new(); group.len()];
        for (i, out) in replaces.iter_mut().enumerate() {
            for (&v, &j) in self.unit(group[i]).replaces_raw.iter().zip(&edges[i]) {
                if scc[i] == NONE || scc[i] != scc[j as usize] {
                    out.push(v);
                }
            }
        }
        for (i, out) in replaces.iter().enumerate() {
            for v in out {
                replaced_by[index[v] as usize].push(group[i]);
            }
        }
        for (i, (rs, mut rb)) in replaces.into_iter().zip(replaced_by).enumerate() {
            let u = group[i];
            rb.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
            if self.unit(u).replaces != rs || self.unit(u).replaced_by != rb {
                let unit = self.unit_mut(u);
                unit.replaces = rs;
                unit.replaced_by = rb;
                changed.insert(u);
            }
        }
        for u in changed {
            let claim = self.unit(u).claim;
            if claim != NONE {
                self.dirty.insert(claim);
            }
        }
    }

    /// Every unit connected to `start` by `next` (both directions must be in `next`).
    pub(super) fn group(
        &self,
        start: &[u32],
        next: impl Fn(&Planner, u32) -> Vec<u32>,
    ) -> Vec<u32> {
        let mut seen: FxSet<u32> = start.iter().copied().collect();
        let mut out: Vec<u32> = start.to_vec();
        let mut i = 0;
        while i < out.len() {
            for v in next(self, out[i]) {
                if seen.insert(v) {
                    out.push(v);
                }
            }
            i += 1;
        }
        out
    }
}
