//! One pass of the planner: steps 1 and 2 of `schedule` on the machines whose inputs changed, then the
//! replay of step 3 (`replay`). Step 2 is `engine`'s reservation queue, per machine.

use std::cmp::Ordering;

use super::super::engine::{FxMap, NONE};
use super::{PassStats, Planner};

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

    /// Global units that joined: placed directly on every machine they may run on where nothing placed
    /// conflicts with them; the machines where something does are recomputed.
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
            // Where no unit placed there conflicts with it, step 1 places it and changes nothing else
            // (the global units after it by name and the reservations there do not conflict with
            // it); the machines where one does are recomputed.
            let mut direct = Vec::new();
            for m in self.static_candidates(g) {
                if self.dirty_globals.contains(&m) || self.unit(g).global_on.contains(&m) {
                    continue;
                }
                if self.blocked(g, m) {
                    self.dirty_globals.insert(m);
                } else {
                    direct.push(m);
                }
            }
            self.direct_moves += direct.len();
            self.place_global(g, &direct);
        }
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
}
