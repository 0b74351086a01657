//! One pass of the planner: steps 1 and 2 of `schedule` on the machines whose inputs changed, the replay
//! of step 3 for the unreserved units and their groups, and the plan entries that changed. Each rule below
//! is the one of `engine` (`place_globals`, `can_reserve`, `place_non_globals`, `decide`, `retry`,
//! `blocked_reason`), on unit and machine slots instead of sorted indexes.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use super::super::engine::{cycles, key, render_metadata, Dec, FxMap, FxSet, NONE, SMALL_CLASS};
use super::super::{Decision, Reason};
use super::{PassStats, Planner, Pool};
use crate::{MachineId, UnitName};

/// The unit's place in `schedule`'s reservation queue (a FIFO topological order of `MachineOf=`):
/// its depth and the target it waits for last.
#[derive(Clone, Copy)]
struct Depth {
    level: u32,
    last: u32,
}

impl Planner {
    pub(super) fn pass(&mut self) -> PassStats {
        self.settle_relations();
        self.place_new_globals();
        let mut dirty: Vec<u32> = self
            .dirty
            .iter()
            .chain(&self.dirty_globals)
            .copied()
            .filter(|&m| self.ms[m as usize].is_some())
            .collect();
        dirty.sort_unstable();
        dirty.dedup();
        self.dirty.clear();
        let dirty_globals = std::mem::take(&mut self.dirty_globals);
        let globals: Vec<u32> = self.globals.values().copied().collect();
        // Many machines (a new planner, a global unit with Conflicts= on most machines): the ordered
        // sets are rebuilt once afterwards instead of being kept up to date at every placement.
        self.bulk = dirty.len() > 64 && dirty.len() * 4 > self.order.len();
        for &m in &dirty {
            self.recompute_machine(m, dirty_globals.contains(&m).then_some(&globals[..]));
        }
        if self.bulk {
            self.rebuild_pools();
        }
        let units = self.replay(&globals);
        self.touched.clear();
        self.global_moves.clear();
        PassStats {
            changes: std::mem::take(&mut self.changes),
            machines: dirty.len(),
            units,
            global_moves: std::mem::take(&mut self.direct_moves),
        }
    }

    /// Global units that joined: placed directly on every machine they fit when they have no
    /// `Conflicts=` relation (then nothing else on those machines changes), otherwise those machines are
    /// recomputed.
    fn place_new_globals(&mut self) {
        for g in std::mem::take(&mut self.new_globals) {
            if !self.us[g as usize]
                .as_ref()
                .is_some_and(|x| x.active && x.global)
            {
                continue;
            }
            let unit = self.unit(g);
            if unit.invalid.is_some() || unit.info.name.is_template() {
                continue;
            }
            let candidates = self.static_candidates(g);
            if self.has_conflict_relations(g) {
                self.dirty_globals.extend(candidates);
                continue;
            }
            for m in candidates {
                if !self.dirty_globals.contains(&m) && !self.unit(g).global_on.contains(&m) {
                    self.place(g, m);
                    self.direct_moves += 1;
                }
            }
        }
    }

    // ---- Placement state ------------------------------------------------------------------------

    fn set_load(&mut self, m: u32, new: u32) {
        let bulk = self.bulk;
        let mach = self.machine_mut(m);
        let old = mach.load;
        mach.load = new;
        if bulk {
            return;
        }
        let k = mach.key.clone();
        let pools = std::mem::take(&mut mach.pools);
        for &p in std::iter::once(&0).chain(&pools) {
            let set = self.pools[p as usize].as_mut().expect("pool");
            set.remove(&(old, k.clone(), m));
            set.insert((new, k.clone(), m));
        }
        self.machine_mut(m).pools = pools;
    }

    pub(super) fn place(&mut self, u: u32, m: u32) {
        self.set_load(m, self.machine(m).load + 1);
        self.machine_mut(m).on.push(u);
        self.count(u, m, true);
        let unit = self.unit_mut(u);
        if unit.global {
            unit.global_on.insert(m);
        } else {
            unit.at = m;
        }
        if self.recording {
            self.undo.push((u, m, true));
        }
    }

    pub(super) fn unplace(&mut self, u: u32, m: u32) {
        self.set_load(m, self.machine(m).load - 1);
        self.machine_mut(m).on.retain(|&w| w != u);
        self.count(u, m, false);
        let unit = self.unit_mut(u);
        if unit.global {
            unit.global_on.remove(&m);
        } else {
            unit.at = NONE;
        }
        if self.recording {
            self.undo.push((u, m, false));
        }
    }

    /// Takes a reserved unit off its machine (it becomes unreserved).
    pub(super) fn unreserve(&mut self, u: u32) {
        if !self.unit(u).reserved {
            return;
        }
        self.unplace(u, self.unit(u).at);
        self.unit_mut(u).reserved = false;
        self.unreserved.insert(u);
        self.touched.insert(u);
    }

    fn count(&mut self, u: u32, m: u32, add: bool) {
        for i in 0..self.unit(u).conflict_pats.len() {
            let p = self.unit(u).conflict_pats[i];
            self.adjust(p, m, true, add);
        }
        for i in 0..self.unit(u).matched_by.len() {
            let p = self.unit(u).matched_by[i];
            self.adjust(p, m, false, add);
        }
    }

    /// One unit more (or less) on `m` that owns (or matches) pattern `p`, with the pools' counts of
    /// machines where `p` is matched, owned, either.
    pub(super) fn adjust(&mut self, p: u32, m: u32, own: bool, add: bool) {
        let k = key(p, m);
        let before = self.pattern_state(p, m);
        let map = if own {
            &mut self.cnt_own
        } else {
            &mut self.cnt_match
        };
        if add {
            *map.entry(k).or_insert(0) += 1;
        } else {
            let c = map.get_mut(&k).expect("counted");
            *c -= 1;
            if *c == 0 {
                map.remove(&k);
            }
        }
        let after = self.pattern_state(p, m);
        if before == after || self.bulk {
            return;
        }
        let bits = |s: [bool; 2]| [s[0], s[1], s[0] || s[1]];
        let (before, after) = (bits(before), bits(after));
        let pools = std::mem::take(&mut self.machine_mut(m).pools);
        for &pool in std::iter::once(&0).chain(&pools) {
            let e = self.pool_touched.entry(key(p, pool)).or_default();
            for i in 0..3 {
                if before[i] != after[i] {
                    if after[i] {
                        e[i] += 1;
                    } else {
                        e[i] -= 1;
                    }
                }
            }
            if *e == [0; 3] {
                self.pool_touched.remove(&key(p, pool));
            }
        }
        self.machine_mut(m).pools = pools;
    }

    /// Rebuilds the ordered sets and their pattern counts from the loads and counters (after a bulk
    /// recomputation).
    fn rebuild_pools(&mut self) {
        self.bulk = false;
        for (p, pool) in self.pools.iter_mut().enumerate() {
            if let Some(pool) = pool {
                pool.clear();
                if p == 0 {
                    for &m in &self.order {
                        let x = self.ms[m as usize].as_ref().expect("live machine");
                        pool.insert((x.load, x.key.clone(), m));
                    }
                }
            }
        }
        for class in self.classes.iter().flatten() {
            if class.pool != NONE {
                let pool = self.pools[class.pool as usize].as_mut().expect("pool");
                for &m in &class.sorted {
                    let x = self.ms[m as usize].as_ref().expect("live machine");
                    pool.insert((x.load, x.key.clone(), m));
                }
            }
        }
        self.pool_touched.clear();
        let mut keys: Vec<u64> = self
            .cnt_match
            .keys()
            .chain(self.cnt_own.keys())
            .copied()
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            let (p, m) = ((k >> 32) as u32, k as u32);
            let [matched, owned] = self.pattern_state(p, m);
            let bits = [matched, owned, matched || owned];
            let pools = &self.ms[m as usize].as_ref().expect("live machine").pools;
            for &pool in std::iter::once(&0).chain(pools) {
                let e = self.pool_touched.entry(key(p, pool)).or_default();
                for i in 0..3 {
                    e[i] += bits[i] as u32;
                }
            }
        }
    }

    fn pattern_state(&self, p: u32, m: u32) -> [bool; 2] {
        let k = key(p, m);
        [
            self.cnt_match.contains_key(&k),
            self.cnt_own.contains_key(&k),
        ]
    }

    // ---- Rules -------------------------------------------------------------------------------------

    /// `MachineID=` and `MachineMetadata=` allow `m`, and `m` does not refuse the unit's name.
    fn static_ok(&self, u: u32, m: u32) -> bool {
        self.requirements_allow(u, m) && !self.refuses(m, u)
    }

    /// Whether machine `m` refuses the name of unit `u`.
    fn refuses(&self, m: u32, u: u32) -> bool {
        let refused = &self.machine(m).info.refused;
        !refused.is_empty() && refused.contains_key(&self.unit(u).info.name)
    }

    /// Live machines that refuse the name of `u`, sorted by ID.
    fn refusing(&self, u: u32) -> &[u32] {
        self.refusals
            .get(&self.unit(u).info.name)
            .map_or(&[], |v| v.as_slice())
    }

    /// Why `u` cannot go to any of `allowed` (machines its requirements allow, sorted by ID, not
    /// empty), which all refuse its name.
    fn refused_reason(&self, u: u32, allowed: &[u32]) -> Reason {
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
    fn static_candidates(&self, u: u32) -> Vec<u32> {
        let mut ms = self.allowed_machines(u);
        if !self.refusing(u).is_empty() {
            ms.retain(|&m| !self.refuses(m, u));
        }
        ms
    }

    /// Every machine `MachineID=` and `MachineMetadata=` allow, sorted by ID.
    fn allowed_machines(&self, u: u32) -> Vec<u32> {
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
    fn requirements_allow(&self, u: u32, m: u32) -> bool {
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
    fn blocked(&self, u: u32, m: u32) -> bool {
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
    fn id_matches(&self, id: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self.short_ids.get(id).cloned().unwrap_or_default();
        if let Some(&m) = MachineId::parse(id).ok().and_then(|x| self.by_id.get(&x)) {
            out.push(m);
        }
        out.sort_unstable_by(|&a, &b| self.machine(a).info.id.cmp(&self.machine(b).info.id));
        out.dedup();
        out
    }

    /// Reasons that need no machine to be examined.
    fn precheck(&self, u: u32) -> Option<Reason> {
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
    fn static_span(&self, u: u32) -> (Option<u32>, usize) {
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

    fn unplaceable_span(&self, u: u32, (first, count): (Option<u32>, usize)) -> Dec {
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
    fn blocked_reason(&self, u: u32, m: u32, machines: usize) -> Reason {
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

    /// `true` if a single `Conflicts=` pattern already blocks every machine of `pool` for `u`.
    fn pool_blocked(&self, u: u32, pool: u32) -> bool {
        let size = self.pools[pool as usize].as_ref().expect("pool").len() as u32;
        let unit = self.unit(u);
        let counts = |p: u32| {
            self.pool_touched
                .get(&key(p, pool))
                .copied()
                .unwrap_or_default()
        };
        unit.conflict_pats.iter().any(|&p| {
            let both = unit.matched_by.contains(&p);
            counts(p)[if both { 2 } else { 0 }] == size
        }) || unit.matched_by.iter().any(|&p| counts(p)[1] == size)
    }

    /// Creates the ordered set of the class of `u` when it is matched by many machines, once.
    fn ensure_pool(&mut self, u: u32) {
        let unit = self.unit(u);
        let c = unit.class;
        if c == NONE || unit.info.requirements.required_machine().is_some() {
            return;
        }
        self.ensure_class_pool(c);
    }

    /// Creates the ordered set of class `c` if it is matched by many machines and has none yet: when
    /// the class appears (so that no later change pays for it), or when it grows past the threshold.
    pub(super) fn ensure_class_pool(&mut self, c: u32) {
        let class = self.classes[c as usize].as_ref().expect("class");
        if class.pool != NONE || class.sorted.len() <= SMALL_CLASS {
            return;
        }
        let members = class.sorted.clone();
        let set: Pool = members
            .iter()
            .map(|&m| (self.machine(m).load, self.machine(m).key.clone(), m))
            .collect();
        let p = match self.free_pools.pop() {
            Some(p) => p,
            None => {
                self.pools.push(None);
                (self.pools.len() - 1) as u32
            }
        };
        let mut touched: FxMap<u64, [u32; 3]> = FxMap::default();
        for &m in &members {
            let mut ps: Vec<u32> = self
                .machine(m)
                .on
                .iter()
                .flat_map(|&w| {
                    let x = self.unit(w);
                    x.conflict_pats.iter().chain(&x.matched_by).copied()
                })
                .collect();
            ps.sort_unstable();
            ps.dedup();
            for q in ps {
                let [matched, owned] = self.pattern_state(q, m);
                let e = touched.entry(key(q, p)).or_default();
                e[0] += matched as u32;
                e[1] += owned as u32;
                e[2] += (matched || owned) as u32;
            }
            self.machine_mut(m).pools.push(p);
        }
        self.pool_touched
            .extend(touched.into_iter().filter(|(_, v)| *v != [0; 3]));
        self.pools[p as usize] = Some(set);
        self.classes[c as usize].as_mut().expect("class").pool = p;
    }

    // ---- Steps 1 and 2, per machine --------------------------------------------------------------

    /// Empties machine `m` of everything steps 1 and 2 put there.
    pub(super) fn clear_machine(&mut self, m: u32) {
        for u in self.machine(m).on.clone() {
            if self.unit(u).global {
                self.unplace(u, m);
                let id = self.machine(m).info.id.clone();
                self.global_moves.entry(u).or_default().push((id, false));
            } else {
                self.unreserve(u);
            }
        }
    }

    /// Steps 1 and 2 on `m`: global units by name (when `globals` is given: all of them, by name),
    /// then the claims there that can be kept, in the order of `schedule`'s reservation queue.
    fn recompute_machine(&mut self, m: u32, globals: Option<&[u32]>) {
        for u in self.machine(m).on.clone() {
            if !self.unit(u).global {
                self.unreserve(u);
            }
        }
        if let Some(globals) = globals {
            self.recompute_globals(m, globals);
        }
        let mut claimed: Vec<u32> = self
            .machine(m)
            .claimed
            .iter()
            .copied()
            .filter(|&u| self.unit(u).cycle.is_none())
            .collect();
        if claimed.iter().any(|&u| !self.unit(u).targets.is_empty()) {
            let mut depth = FxMap::default();
            for &u in &claimed {
                self.depth(u, &mut depth);
            }
            claimed.sort_by(|&a, &b| self.queue_cmp(a, b, &depth));
        } else {
            claimed.sort_by(|&a, &b| self.name(a).cmp(self.name(b)));
        }
        for u in claimed {
            if self.can_reserve(u, m) {
                self.place(u, m);
                self.unit_mut(u).reserved = true;
                self.unreserved.remove(&u);
                self.touched.insert(u);
            }
        }
    }

    /// Step 1 on `m` (which holds no reservation): every global unit, by name, that fits.
    fn recompute_globals(&mut self, m: u32, globals: &[u32]) {
        let before: Vec<u32> = self.machine(m).on.clone();
        for &g in &before {
            self.unplace(g, m);
        }
        for &g in globals {
            let unit = self.unit(g);
            if unit.invalid.is_none()
                && !unit.info.name.is_template()
                && self.static_ok(g, m)
                && !self.blocked(g, m)
            {
                self.place(g, m);
            }
        }
        let id = self.machine(m).info.id.clone();
        for &g in &before {
            if !self.unit(g).global_on.contains(&m) {
                self.global_moves
                    .entry(g)
                    .or_default()
                    .push((id.clone(), false));
            }
        }
        for &g in globals {
            if self.unit(g).global_on.contains(&m) && !before.contains(&g) {
                self.global_moves
                    .entry(g)
                    .or_default()
                    .push((id.clone(), true));
            }
        }
    }

    /// Whether the claim of `u` on `m` is kept by step 2 (`schedule`'s `can_reserve` before any unit
    /// is decided).
    fn can_reserve(&self, u: u32, m: u32) -> bool {
        let unit = self.unit(u);
        if unit.global
            || unit.invalid.is_some()
            || unit.info.name.is_template()
            || !self.static_ok(u, m)
        {
            return false;
        }
        let with_targets = unit.info.requirements.machine_of.iter().all(|t| {
            let Some(&t) = self.active.get(t) else {
                return false;
            };
            let target = self.unit(t);
            if target.global {
                target.global_on.contains(&m)
            } else {
                target.cycle.is_none() && target.reserved && target.at == m
            }
        });
        with_targets && !self.blocked(u, m)
    }

    /// The depth of `u` (and of its targets) in the reservation queue. Units in a `MachineOf=` cycle
    /// are not in the queue, and targets in one are not waited for.
    fn depth(&self, root: u32, depth: &mut FxMap<u32, Depth>) {
        let mut stack = vec![(root, false)];
        while let Some((u, expanded)) = stack.pop() {
            if depth.contains_key(&u) {
                continue;
            }
            let targets = self
                .unit(u)
                .targets
                .iter()
                .copied()
                .filter(|&t| self.unit(t).cycle.is_none());
            if !expanded {
                stack.push((u, true));
                stack.extend(
                    targets
                        .filter(|t| !depth.contains_key(t))
                        .map(|t| (t, false)),
                );
                continue;
            }
            let mut best: Option<u32> = None;
            for t in targets {
                if best.is_none_or(|b| self.queue_cmp(t, b, depth) == Ordering::Greater) {
                    best = Some(t);
                }
            }
            let d = match best {
                Some(t) => Depth {
                    level: depth[&t].level + 1,
                    last: t,
                },
                None => Depth {
                    level: 0,
                    last: NONE,
                },
            };
            depth.insert(u, d);
        }
    }

    /// Order of two units in the reservation queue (Kahn's algorithm, FIFO, roots by name): by depth,
    /// then by the position of the target each waited for last, then by name.
    fn queue_cmp(&self, a: u32, b: u32, depth: &FxMap<u32, Depth>) -> Ordering {
        let chain = |mut u: u32| {
            let mut c = vec![u];
            while depth[&u].last != NONE {
                u = depth[&u].last;
                c.push(u);
            }
            c.reverse();
            c
        };
        depth[&a].level.cmp(&depth[&b].level).then_with(|| {
            let (ca, cb) = (chain(a), chain(b));
            ca.iter()
                .map(|&u| self.name(u))
                .cmp(cb.iter().map(|&u| self.name(u)))
        })
    }

    // ---- Step 3 --------------------------------------------------------------------------------------

    /// Replays step 3 for the unreserved units and their `MachineOf=`/`Replaces=` groups, writes the
    /// plan entries that may have changed, and undoes the replay. Returns the number of units decided.
    fn replay(&mut self, globals: &[u32]) -> usize {
        let start: Vec<u32> = self.unreserved.iter().copied().collect();
        let mut s = self.group(&start, |p, u| {
            let x = p.unit(u);
            x.targets
                .iter()
                .chain(&x.followers)
                .chain(&x.replaces_raw)
                .chain(&x.replaced_by_raw)
                .copied()
                .collect()
        });
        s.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
        self.recording = true;
        let dec = self.decide_group(&s);
        // Plan entries, with reasons read from the final placement (before the undo).
        for (i, d) in dec.iter().enumerate() {
            let u = s[i];
            let d = match d {
                Dec::On(m) => Decision::On(self.machine(*m).info.id.clone()),
                Dec::Global(_) => unreachable!("global units are not replayed"),
                Dec::Unplaceable(r) => Decision::Unplaceable(r.clone()),
                Dec::Blocked { machine, machines } => {
                    Decision::Unplaceable(self.blocked_reason(u, *machine, *machines))
                }
            };
            let name = self.unit(u).info.name.clone();
            self.writes.push((name, d));
        }
        for &g in globals {
            self.write_global(g);
        }
        self.recording = false;
        while let Some((u, m, placed)) = self.undo.pop() {
            if placed {
                self.unplace(u, m);
            } else {
                self.place(u, m);
            }
        }
        // Reserved units whose entry may be stale: decided where they are reserved.
        let decided: FxSet<u32> = s.iter().copied().collect();
        let mut stale: Vec<u32> = self.touched.iter().copied().collect();
        stale.extend(self.last_decided.iter().copied());
        for u in stale {
            let Some(unit) = self.us[u as usize].as_ref() else {
                continue;
            };
            if !unit.active || unit.global || decided.contains(&u) {
                continue;
            }
            debug_assert!(
                unit.reserved,
                "{} is neither reserved nor replayed",
                unit.info.name
            );
            let d = Decision::On(self.machine(unit.at).info.id.clone());
            let name = unit.info.name.clone();
            self.writes.push((name, d));
        }
        self.flush_writes();
        let n = s.len();
        self.last_decided = s;
        n
    }

    /// Writes the pass's plan entries, by name (a new plan is built at once).
    fn flush_writes(&mut self) {
        let mut writes = std::mem::take(&mut self.writes);
        if self.plan.decisions.is_empty() {
            self.plan.decisions = writes.into_iter().collect();
            return;
        }
        writes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, d) in writes {
            match self.plan.decisions.get_mut(&name) {
                Some(e) if *e == d => {}
                Some(e) => *e = d,
                None => {
                    self.plan.decisions.insert(name, d);
                }
            }
        }
    }

    /// The plan entry of a global unit: its machines by ID, or why it runs nowhere.
    fn write_global(&mut self, g: u32) {
        let moves = self.global_moves.remove(&g).unwrap_or_default();
        let name = self.unit(g).info.name.clone();
        if self.unit(g).global_on.is_empty() {
            let d = match self.precheck(g) {
                Some(r) => Dec::Unplaceable(r),
                None => self.unplaceable_span(g, self.static_span(g)),
            };
            let d = match d {
                Dec::Blocked { machine, machines } => {
                    Decision::Unplaceable(self.blocked_reason(g, machine, machines))
                }
                Dec::Unplaceable(r) => Decision::Unplaceable(r),
                _ => unreachable!("a global unit placed nowhere"),
            };
            self.writes.push((name, d));
            return;
        }
        let fresh = self.touched.contains(&g);
        if let (false, Some(Decision::Global(ids))) = (fresh, self.plan.decisions.get_mut(&name)) {
            for (id, added) in moves {
                match (ids.binary_search(&id), added) {
                    (Err(i), true) => ids.insert(i, id),
                    (Ok(i), false) => {
                        ids.remove(i);
                    }
                    _ => {}
                }
            }
            return;
        }
        let on = &self.unit(g).global_on;
        let ids: Vec<MachineId> = if on.len() * 8 > self.order.len() {
            self.order
                .iter()
                .filter(|m| on.contains(m))
                .map(|&m| self.machine(m).info.id.clone())
                .collect()
        } else {
            let mut ids: Vec<MachineId> = on
                .iter()
                .map(|&m| self.machine(m).info.id.clone())
                .collect();
            ids.sort();
            ids
        };
        self.writes.push((name, Decision::Global(ids)));
    }

    /// `schedule`'s step 3 (`place_non_globals` after the reservations, and `retry`) for the units `s`
    /// (sorted by name, closed under `MachineOf=`/`Replaces=`), on top of the kept reservations.
    fn decide_group(&mut self, s: &[u32]) -> Vec<Dec> {
        // Long on purpose: the same single algorithm as `place_non_globals`, on local indexes.
        let n = s.len();
        let index: FxMap<u32, u32> = s.iter().enumerate().map(|(i, &u)| (u, i as u32)).collect();
        let local = |list: &[u32]| -> Vec<u32> { list.iter().map(|u| index[u]).collect() };
        let targets: Vec<Vec<u32>> = s.iter().map(|&u| local(&self.unit(u).targets)).collect();
        let replaces: Vec<Vec<u32>> = s.iter().map(|&u| local(&self.unit(u).replaces)).collect();
        let replaced_by: Vec<Vec<u32>> = s
            .iter()
            .map(|&u| local(&self.unit(u).replaced_by))
            .collect();
        let mut decision: Vec<Option<Dec>> = (0..n).map(|_| None).collect();
        for members in cycles(&targets) {
            let mut names: Vec<UnitName> = members
                .iter()
                .map(|&i| self.unit(s[i as usize]).info.name.clone())
                .collect();
            names.sort();
            for &i in &members {
                decision[i as usize] =
                    Some(Dec::Unplaceable(Reason::MachineOfCycle(names.clone())));
            }
        }
        let mut followers: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut waiting = vec![0u32; n];
        for (u, ts) in targets.iter().enumerate() {
            if decision[u].is_some() {
                continue;
            }
            for &t in ts {
                if decision[t as usize].is_none() {
                    followers[t as usize].push(u as u32);
                    waiting[u] += 1;
                }
            }
        }
        let mut reserved: Vec<bool> = s.iter().map(|&u| self.unit(u).reserved).collect();
        let mut freed = false;
        let mut pending: Vec<u32> = (0..n)
            .map(|v| {
                replaced_by[v]
                    .iter()
                    .filter(|&&u| decision[u as usize].is_none())
                    .count() as u32
            })
            .collect();
        let mut class: Vec<u8> = (0..n).map(|i| self.class(s[i], reserved[i])).collect();
        let mut work: Vec<u32> = (0..n as u32).filter(|&u| class[u as usize] < 2).collect();
        while let Some(w) = work.pop() {
            let c = class[w as usize];
            for &u in targets[w as usize].iter().chain(&replaced_by[w as usize]) {
                if class[u as usize] > c {
                    class[u as usize] = c;
                    work.push(u);
                }
            }
        }
        let key = |u: u32| (class[u as usize], u);
        let mut ready: BTreeSet<(u8, u32)> = BTreeSet::new();
        let mut deferred: BTreeSet<u32> = BTreeSet::new();
        for u in 0..n as u32 {
            if decision[u as usize].is_none() && waiting[u as usize] == 0 {
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
            let ui = u as usize;
            let dec = if reserved[ui] {
                Dec::On(self.unit(s[ui]).at)
            } else {
                let released: Vec<u32> = replaces[ui]
                    .iter()
                    .copied()
                    .filter(|&v| reserved[v as usize] && decision[v as usize].is_none())
                    .collect();
                for &v in &released {
                    self.unplace(s[v as usize], self.unit(s[v as usize]).at);
                }
                self.ensure_pool(s[ui]);
                let dec = self.decide(s[ui], &decision, &index);
                if let Dec::On(m) = dec {
                    self.place(s[ui], m);
                }
                let mut back = released;
                loop {
                    let before = back.len();
                    let mut i = 0;
                    while i < back.len() {
                        let v = back[i];
                        if self.can_re_reserve(s[v as usize], &reserved, &decision, &index) {
                            self.place(s[v as usize], self.unit(s[v as usize]).claim);
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
                    self.release_followers(v, s, &followers, &mut reserved, &decision);
                    freed = true;
                }
                dec
            };
            decision[ui] = Some(dec);
            for &f in &followers[ui] {
                waiting[f as usize] -= 1;
                if waiting[f as usize] == 0 {
                    if pending[f as usize] == 0 {
                        ready.insert(key(f));
                    } else {
                        deferred.insert(f);
                    }
                }
            }
            for &v in &replaces[ui] {
                pending[v as usize] -= 1;
                if pending[v as usize] == 0 && deferred.remove(&v) {
                    ready.insert(key(v));
                }
            }
        }
        if freed {
            loop {
                let mut changed = false;
                for i in 0..n {
                    let again = matches!(
                        decision[i],
                        Some(Dec::Blocked { .. })
                            | Some(Dec::Unplaceable(Reason::MachineOfNotPlaced(_)))
                    );
                    if !again {
                        continue;
                    }
                    self.ensure_pool(s[i]);
                    let dec = self.decide(s[i], &decision, &index);
                    if let Dec::On(m) = dec {
                        self.place(s[i], m);
                        changed = true;
                    }
                    decision[i] = Some(dec);
                }
                if !changed {
                    break;
                }
            }
        }
        decision
            .into_iter()
            .map(|d| d.expect("every unit is decided"))
            .collect()
    }

    /// Drops the reservations of the units that follow `v` (and of theirs): `v` is moving.
    fn release_followers(
        &mut self,
        v: u32,
        s: &[u32],
        followers: &[Vec<u32>],
        reserved: &mut [bool],
        decision: &[Option<Dec>],
    ) {
        let mut stack = vec![v];
        while let Some(t) = stack.pop() {
            for &f in &followers[t as usize] {
                if reserved[f as usize] && decision[f as usize].is_none() {
                    let at = self.unit(s[f as usize]).at;
                    if at != NONE {
                        self.unplace(s[f as usize], at);
                    }
                    reserved[f as usize] = false;
                    stack.push(f);
                }
            }
        }
    }

    /// `schedule`'s `can_reserve` during step 3, for a unit whose reservation a replacing unit released.
    fn can_re_reserve(
        &self,
        u: u32,
        reserved: &[bool],
        decision: &[Option<Dec>],
        index: &FxMap<u32, u32>,
    ) -> bool {
        let unit = self.unit(u);
        let m = unit.claim;
        if m == NONE || unit.global || self.precheck(u).is_some() || !self.static_ok(u, m) {
            return false;
        }
        let with_targets = unit.info.requirements.machine_of.iter().all(|t| {
            let Some(&t) = self.active.get(t) else {
                return false;
            };
            let target = self.unit(t);
            if target.global {
                return target.global_on.contains(&m);
            }
            let i = index[&t] as usize;
            match &decision[i] {
                Some(_) => false,
                None => reserved[i] && target.at == m,
            }
        });
        with_targets && !self.blocked(u, m)
    }

    /// Processing class (see `engine::order`): 0 replaces a movable claim and is not reserved, 1 has a
    /// live claim, 2 the rest.
    fn class(&self, u: u32, reserved: bool) -> u8 {
        let unit = self.unit(u);
        if !reserved
            && unit
                .replaces
                .iter()
                .any(|&v| self.movable_claim(v).is_some())
        {
            0
        } else if unit.claim != NONE {
            1
        } else {
            2
        }
    }

    /// The live claim of `v` if it is free to move (no `MachineOf=`, no `MachineID=`).
    fn movable_claim(&self, v: u32) -> Option<u32> {
        let unit = self.unit(v);
        let req = &unit.info.requirements;
        (unit.claim != NONE && req.machine_of.is_empty() && req.required_machine().is_none())
            .then_some(unit.claim)
    }

    /// Decides one non-global unit of the replay; its `MachineOf=` targets are already decided.
    fn decide(&self, u: u32, decision: &[Option<Dec>], index: &FxMap<u32, u32>) -> Dec {
        // Long on purpose: `engine::Scheduler::decide`, rule for rule.
        if let Some(reason) = self.precheck(u) {
            return Dec::Unplaceable(reason);
        }
        let unit = self.unit(u);
        let req = &unit.info.requirements;
        let mut fixed: Option<(u32, &str)> = None;
        let mut within: Vec<u32> = Vec::new();
        for t in &req.machine_of {
            enum Placed {
                On(u32),
                Global(u32),
                Not,
            }
            let placed = match self.active.get(t) {
                None => Placed::Not,
                Some(&g) if self.unit(g).global => {
                    if self.unit(g).global_on.is_empty() {
                        Placed::Not
                    } else {
                        Placed::Global(g)
                    }
                }
                Some(&t) => match &decision[index[&t] as usize] {
                    Some(Dec::On(m)) => Placed::On(*m),
                    _ => Placed::Not,
                },
            };
            match placed {
                Placed::On(m) => match fixed {
                    Some((other, name)) if other != m => {
                        return Dec::Unplaceable(Reason::MachineOfApart(vec![
                            name.to_owned(),
                            t.clone(),
                        ]))
                    }
                    _ => fixed = Some((m, t.as_str())),
                },
                Placed::Global(g) => within.push(g),
                Placed::Not => return Dec::Unplaceable(Reason::MachineOfNotPlaced(t.clone())),
            }
        }
        let in_within = |m: u32| within.iter().all(|&g| self.unit(g).global_on.contains(&m));
        let allowed = |m: u32| {
            !matches!(fixed, Some((f, _)) if f != m) && in_within(m) && self.static_ok(u, m)
        };
        let fits = |m: u32| allowed(m) && !self.blocked(u, m);

        let own = unit.claim;
        if own != NONE && fits(own) {
            return Dec::On(own);
        }
        for &v in &unit.replaces {
            match self.movable_claim(v) {
                Some(vm) if self.unit(v).at == NONE && fits(vm) => return Dec::On(vm),
                _ => {}
            }
        }

        let by_load = |mut ms: Vec<u32>| {
            ms.sort_unstable_by(|&a, &b| {
                let (x, y) = (self.machine(a), self.machine(b));
                (x.load, &x.key).cmp(&(y.load, &y.key))
            });
            ms.into_iter().find(|&m| fits(m))
        };
        let in_pool = |p: u32| {
            let set = self.pools[p as usize].as_ref().expect("pool");
            set.iter().map(|&(_, _, m)| m).find(|&m| fits(m))
        };
        let found = if let Some((m, _)) = fixed {
            by_load(vec![m])
        } else if let Some(id) = req.required_machine() {
            by_load(self.id_matches(id))
        } else if unit.class == NONE {
            (!self.pool_blocked(u, 0)).then(|| in_pool(0)).flatten()
        } else {
            let class = self.classes[unit.class as usize].as_ref().expect("class");
            if class.pool != NONE {
                (!self.pool_blocked(u, class.pool))
                    .then(|| in_pool(class.pool))
                    .flatten()
            } else {
                by_load(class.sorted.clone())
            }
        };
        if let Some(m) = found {
            return Dec::On(m);
        }

        // Not placeable: say why.
        let apart = || {
            let mut of = req.machine_of.clone();
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
                    requirement: render_metadata(&req.metadata),
                    considered: 1,
                });
            }
            return Dec::Blocked {
                machine: m,
                machines: 1,
            };
        }
        if !within.is_empty() {
            let shared: Vec<u32> = self
                .order
                .iter()
                .copied()
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
            if candidates.is_empty() {
                let allowed: Vec<u32> = shared
                    .iter()
                    .copied()
                    .filter(|&m| self.requirements_allow(u, m))
                    .collect();
                if !allowed.is_empty() {
                    return Dec::Unplaceable(self.refused_reason(u, &allowed));
                }
                return Dec::Unplaceable(Reason::MetadataUnmatched {
                    requirement: render_metadata(&req.metadata),
                    considered: shared.len(),
                });
            }
            return self.unplaceable_span(u, (candidates.first().copied(), candidates.len()));
        }
        self.unplaceable_span(u, self.static_span(u))
    }
}
