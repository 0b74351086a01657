//! Step 3 of a pass: the unreserved units and their `MachineOf=`/`Replaces=` groups decided again by the
//! shared [`decide`](super::super::decide) module on top of the kept reservations, the plan entries that
//! may have changed written, and the replay undone.

use super::super::decide::Graph;
use super::super::engine::{Dec, FxMap, FxSet};
use super::super::Decision;
use super::rules::Group;
use super::Planner;
use crate::MachineId;

impl Planner {
    /// Replays step 3 for the unreserved units and their `MachineOf=`/`Replaces=` groups, writes the
    /// plan entries that may have changed, and undoes the replay. Returns the number of units decided.
    pub(super) fn replay(&mut self, globals: &[u32]) -> usize {
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
    pub(super) fn flush_writes(&mut self) {
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
    pub(super) fn write_global(&mut self, g: u32) {
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
}

impl Planner {
    /// `schedule`'s step 3 (after the reservations, with the retry) for the units `s` (sorted by name,
    /// closed under `MachineOf=`/`Replaces=`), on top of the kept reservations.
    pub(super) fn decide_group(&mut self, s: &[u32]) -> Vec<Dec> {
        let index: FxMap<u32, u32> = s.iter().enumerate().map(|(i, &u)| (u, i as u32)).collect();
        let local = |list: &[u32]| -> Vec<u32> { list.iter().map(|u| index[u]).collect() };
        let targets: Vec<Vec<u32>> = s.iter().map(|&u| local(&self.unit(u).targets)).collect();
        let replaces: Vec<Vec<u32>> = s.iter().map(|&u| local(&self.unit(u).replaces)).collect();
        let replaced_by: Vec<Vec<u32>> = s
            .iter()
            .map(|&u| local(&self.unit(u).replaced_by))
            .collect();
        let reserved: Vec<bool> = s.iter().map(|&u| self.unit(u).reserved).collect();
        let mut decision: Vec<Option<Dec>> = (0..s.len()).map(|_| None).collect();
        let mut group = Group {
            planner: self,
            units: s,
            index,
        };
        let graph = Graph::new(&group, targets, replaces, replaced_by, &mut decision);
        graph.decide_all(&mut group, reserved, &mut decision);
        decision
            .into_iter()
            .map(|d| d.expect("every unit is decided"))
            .collect()
    }
}
