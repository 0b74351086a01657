//! `schedule`'s rules on the planner's slots: what a unit's requirements allow, what blocks it, the
//! reasons of unplaceable units; and [`Host`] for the units of a replayed group, so that step 3 runs the
//! shared [`decide`](super::super::decide) module.

use super::super::decide::{Host, Target};
use super::super::engine::{key, render_metadata, Dec, FxMap, NONE};
use super::super::Reason;
use super::Planner;
use crate::{Requirements, UnitName};

impl Planner {
    /// `MachineID=` and `MachineMetadata=` allow `m`, and `m` does not refuse the unit's name.
    pub(super) fn static_ok(&self, u: u32, m: u32) -> bool {
        self.requirements_allow(u, m) && !self.refuses(m, u)
    }

    /// Whether machine `m` refuses the name of unit `u`.
    pub(super) fn refuses(&self, m: u32, u: u32) -> bool {
        let refused = &self.machine(m).info.refused;
        !refused.is_empty() && refused.contains_key(&self.unit(u).info.name)
    }

    /// Live machines that refuse the name of `u`, sorted by ID.
    pub(super) fn refusing(&self, u: u32) -> &[u32] {
        self.refusals
            .get(&self.unit(u).info.name)
            .map_or(&[], |v| v.as_slice())
    }

    /// Why `u` cannot go to any of `allowed` (machines its requirements allow, sorted by ID, not
    /// empty), which all refuse its name.
    pub(super) fn refused_reason(&self, u: u32, allowed: &[u32]) -> Reason {
        let m = self.machine(allowed[0]);
        Reason::NameRefused {
            machines: allowed.len(),
            machine: m.info.id.clone(),
            why: m
                .info
                .refused
                .get(&self.unit(u).info.name)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Every machine `MachineID=` and `MachineMetadata=` allow and that does not refuse the name,
    /// sorted by ID.
    pub(super) fn static_candidates(&self, u: u32) -> Vec<u32> {
        let mut ms = self.allowed_machines(u);
        if !self.refusing(u).is_empty() {
            ms.retain(|&m| !self.refuses(m, u));
        }
        ms
    }

    /// Every machine `MachineID=` and `MachineMetadata=` allow, sorted by ID.
    pub(super) fn allowed_machines(&self, u: u32) -> Vec<u32> {
        let unit = self.unit(u);
        match unit.info.requirements.required_machine() {
            Some(id) => self
                .id_matches(id)
                .into_iter()
                .filter(|&m| self.requirements_allow(u, m))
                .collect(),
            None if unit.class == NONE => self.order.clone(),
            None => self.classes[unit.class as usize]
                .as_ref()
                .expect("class")
                .sorted
                .clone(),
        }
    }

    /// `MachineID=` and `MachineMetadata=` allow `m`.
    pub(super) fn requirements_allow(&self, u: u32, m: u32) -> bool {
        let unit = self.unit(u);
        if let Some(id) = unit.info.requirements.required_machine() {
            if !self.machine(m).info.id.matches(id) {
                return false;
            }
        }
        unit.class == NONE
            || self.classes[unit.class as usize]
                .as_ref()
                .expect("class")
                .member
                .get(m as usize)
                .copied()
                .unwrap_or(false)
    }

    /// Whether a unit on `m` conflicts with `u`, or is in a `Replaces` relation with it.
    pub(super) fn blocked(&self, u: u32, m: u32) -> bool {
        let unit = self.unit(u);
        let count = |map: &FxMap<u64, u32>, p: u32| map.contains_key(&key(p, m));
        unit.conflict_pats
            .iter()
            .any(|&p| count(&self.cnt_match, p))
            || unit.matched_by.iter().any(|&p| count(&self.cnt_own, p))
            || unit
                .replaces
                .iter()
                .chain(&unit.replaced_by)
                .any(|&v| self.unit(v).at == m)
    }

    /// Machines whose full or short ID is `id`, sorted by ID.
    pub(super) fn id_matches(&self, id: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self.short_ids.get(id).cloned().unwrap_or_default();
        if let Some(&m) = self.by_id.get(id) {
            out.push(m);
        }
        out.sort_unstable_by(|&a, &b| self.machine(a).info.id.cmp(&self.machine(b).info.id));
        out.dedup();
        out
    }

    /// Reasons that need no machine to be examined.
    pub(super) fn precheck(&self, u: u32) -> Option<Reason> {
        let unit = self.unit(u);
        if let Some(e) = &unit.invalid {
            return Some(Reason::Invalid(e.clone()));
        }
        if unit.info.name.is_template() {
            return Some(Reason::Template);
        }
        if self.order.is_empty() {
            return Some(Reason::NoMachines);
        }
        if let Some(id) = unit.info.requirements.required_machine() {
            if self.id_matches(id).is_empty() {
                return Some(Reason::MachineIdNotFound(id.to_owned()));
            }
        }
        None
    }

    /// The first (by ID) of the machines `MachineID=` and `MachineMetadata=` allow and that do not
    /// refuse the name, and their number.
    pub(super) fn static_span(&self, u: u32) -> (Option<u32>, usize) {
        let unit = self.unit(u);
        if unit.info.requirements.required_machine().is_some() || !self.refusing(u).is_empty() {
            let ids = self.static_candidates(u);
            return (ids.first().copied(), ids.len());
        }
        if unit.class == NONE {
            return (self.order.first().copied(), self.order.len());
        }
        let class = self.classes[unit.class as usize].as_ref().expect("class");
        (class.sorted.first().copied(), class.sorted.len())
    }

    pub(super) fn unplaceable_span(&self, u: u32, (first, count): (Option<u32>, usize)) -> Dec {
        let Some(m) = first else {
            if !self.refusing(u).is_empty() {
                let allowed = self.allowed_machines(u);
                if !allowed.is_empty() {
                    return Dec::Unplaceable(self.refused_reason(u, &allowed));
                }
            }
            let req = &self.unit(u).info.requirements;
            let considered = match req.required_machine() {
                Some(id) => self.id_matches(id).len(),
                None => self.order.len(),
            };
            return Dec::Unplaceable(Reason::MetadataUnmatched {
                requirement: render_metadata(&req.metadata),
                considered,
            });
        };
        Dec::Blocked {
            machine: m,
            machines: count,
        }
    }

    /// Names the unit on `m` that blocks `u`: the first by name, in the final placement.
    pub(super) fn blocked_reason(&self, u: u32, m: u32, machines: usize) -> Reason {
        let me = self.unit(u);
        let conflicts = |w: u32| {
            let other = self.unit(w);
            me.info
                .requirements
                .conflicts_with(other.info.name.as_str())
                || other
                    .info
                    .requirements
                    .conflicts_with(me.info.name.as_str())
        };
        let related = |w: u32| me.replaces.contains(&w) || me.replaced_by.contains(&w);
        let blocker = self
            .machine(m)
            .on
            .iter()
            .copied()
            .filter(|&w| w != u && (conflicts(w) || related(w)))
            .min_by(|&a, &b| self.name(a).cmp(self.name(b)));
        let Some(blocker) = blocker else {
            debug_assert!(false, "no unit blocks {} on machine {m}", me.info.name);
            return Reason::NoRoom { machines };
        };
        Reason::ConflictsEverywhere {
            machines,
            unit: self.unit(blocker).info.name.clone(),
            machine: self.machine(m).info.id.clone(),
            replaces: !conflicts(blocker),
        }
    }
}

/// The units of a replayed group (sorted by name) and their local indexes, over the planner.
pub(super) struct Group<'p> {
    pub(super) planner: &'p mut Planner,
    pub(super) units: &'p [u32],
    pub(super) index: FxMap<u32, u32>,
}

impl Host for Group<'_> {
    fn unit_at(&self, i: usize) -> u32 {
        self.units[i]
    }

    fn local(&self, u: u32) -> usize {
        self.index[&u] as usize
    }

    fn req(&self, u: u32) -> &Requirements {
        &self.planner.unit(u).info.requirements
    }

    fn name(&self, u: u32) -> &UnitName {
        &self.planner.unit(u).info.name
    }

    fn claim(&self, u: u32) -> u32 {
        self.planner.unit(u).claim
    }

    fn at(&self, u: u32) -> u32 {
        self.planner.unit(u).at
    }

    fn replaces(&self, u: u32) -> &[u32] {
        &self.planner.unit(u).replaces
    }

    fn target(&self, name: &str) -> Target {
        match self.planner.active.get(name) {
            None => Target::Missing,
            Some(&t) if self.planner.unit(t).global => Target::Global(t),
            Some(&t) => Target::Unit(t),
        }
    }

    fn global_placed(&self, g: u32, _: &[Option<Dec>]) -> bool {
        !self.planner.unit(g).global_on.is_empty()
    }

    fn global_on(&self, g: u32, m: u32, _: &[Option<Dec>]) -> bool {
        self.planner.unit(g).global_on.contains(&m)
    }

    fn place(&mut self, u: u32, m: u32) {
        self.planner.place(u, m)
    }

    fn unplace(&mut self, u: u32) {
        let m = self.planner.unit(u).at;
        self.planner.unplace(u, m)
    }

    fn ensure_pool(&mut self, u: u32) {
        self.planner.ensure_pool(u)
    }

    fn precheck(&self, u: u32) -> Option<Reason> {
        self.planner.precheck(u)
    }

    fn requirements_allow(&self, u: u32, m: u32) -> bool {
        self.planner.requirements_allow(u, m)
    }

    fn refuses(&self, m: u32, u: u32) -> bool {
        self.planner.refuses(m, u)
    }

    fn blocked(&self, u: u32, m: u32) -> bool {
        self.planner.blocked(u, m)
    }

    fn refused_reason(&self, u: u32, allowed: &[u32]) -> Reason {
        self.planner.refused_reason(u, allowed)
    }

    fn id_matches(&self, id: &str) -> Vec<u32> {
        self.planner.id_matches(id)
    }

    fn by_load(&self, mut ms: Vec<u32>, fits: &dyn Fn(u32) -> bool) -> Option<u32> {
        let p = &*self.planner;
        ms.sort_unstable_by(|&a, &b| {
            let (x, y) = (p.machine(a), p.machine(b));
            (x.load, &x.key).cmp(&(y.load, &y.key))
        });
        ms.into_iter().find(|&m| fits(m))
    }

    fn least_loaded(&self, u: u32, fits: &dyn Fn(u32) -> bool) -> Option<u32> {
        let p = &*self.planner;
        let c = p.unit(u).class;
        let pool = if c == NONE {
            0
        } else {
            let class = p.classes[c as usize].as_ref().expect("class");
            if class.pool == NONE {
                return self.by_load(class.sorted.clone(), fits);
            }
            class.pool
        };
        if p.pool_blocked(u, pool) {
            return None;
        }
        let set = p.pools[pool as usize].as_ref().expect("pool");
        set.machines().find(|&m| fits(m))
    }

    fn machines_by_id(&self) -> Vec<u32> {
        self.planner.order.clone()
    }

    fn static_span(&self, u: u32) -> (Option<u32>, usize) {
        self.planner.static_span(u)
    }

    fn unplaceable_span(&self, u: u32, span: (Option<u32>, usize)) -> Dec {
        self.planner.unplaceable_span(u, span)
    }
}
