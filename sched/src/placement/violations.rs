//! [`Plan::violations`]: the scheduler's brute-force self-check (feature `testing`).

use std::collections::BTreeMap;

use super::{Decision, MachineInfo, Plan, UnitInfo};
use crate::{DesiredState, MachineId, UnitName};

impl Plan {
    /// Checks this plan against `machines` and `units` by brute force, independently of how [`schedule`]
    /// works, and describes every broken rule (empty when the plan is sound). Meant for tests and
    /// simulations; it costs `O(units² + units × machines)`.
    ///
    /// Checked: every active unit (and no other) has a decision; a placed unit is on a live machine that
    /// satisfies `MachineID=`, `MachineMetadata=` and `MachineOf=` and does not refuse its name, and shares it with no unit it conflicts
    /// with (either way) or replaces (either way, circular `Replaces=` ignored); a global unit is on exactly
    /// the eligible machines minus those where a unit it conflicts with runs; an unplaceable unit without
    /// `MachineOf=` could not have been put on any machine.
    pub fn violations(&self, machines: &[MachineInfo], units: &[UnitInfo]) -> Vec<String> {
        // Long on purpose: one brute-force pass over the rules, written to be read against the spec
        // top to bottom (its closures are the rules); splitting it would scatter them.
        let mut out = Vec::new();
        let live: BTreeMap<&MachineId, &MachineInfo> =
            machines.iter().map(|m| (&m.id, m)).collect();
        let mut active: BTreeMap<&UnitName, &UnitInfo> = BTreeMap::new();
        for u in units.iter().filter(|u| u.desired != DesiredState::Inactive) {
            active.entry(&u.name).or_insert(u);
        }
        for name in self.decisions.keys() {
            if !active.contains_key(name) {
                out.push(format!("{name} is not active but has a decision"));
            }
        }
        // Replaces edges between valid non-global units; an edge on a cycle does not count.
        let edge = |a: &UnitInfo, b: &UnitInfo| {
            a.name != b.name
                && !a.requirements.global
                && !b.requirements.global
                && a.requirements.validate().is_ok()
                && b.requirements.validate().is_ok()
                && a.requirements.replaces_unit(b.name.as_str())
        };
        let graph: BTreeMap<&UnitName, Vec<&UnitName>> = active
            .iter()
            .map(|(a, ua)| {
                let to = active
                    .iter()
                    .filter(|(_, ub)| edge(ua, ub))
                    .map(|(b, _)| *b)
                    .collect();
                (*a, to)
            })
            .collect();
        let reaches = |from: &UnitName, to: &UnitName| {
            let mut seen = std::collections::BTreeSet::new();
            let mut stack = vec![from];
            while let Some(x) = stack.pop() {
                if x == to {
                    return true;
                }
                if seen.insert(x) {
                    stack.extend(graph.get(x).into_iter().flatten().copied());
                }
            }
            false
        };
        let replaces = |a: &UnitInfo, b: &UnitInfo| edge(a, b) && !reaches(&b.name, &a.name);
        // Whether `u` may share `m` with the units the plan puts there; `Err` names the first blocker.
        let shares = |u: &UnitInfo, m: &MachineId| -> Result<(), String> {
            for other in self.units_on(m) {
                if *other == u.name {
                    continue;
                }
                let o = active[other];
                if u.requirements.conflicts_with(other.as_str())
                    || o.requirements.conflicts_with(u.name.as_str())
                {
                    return Err(format!("conflicts with {other}"));
                }
                if replaces(u, o) || replaces(o, u) {
                    return Err(format!("is in a Replaces relation with {other}"));
                }
            }
            Ok(())
        };
        let statically_ok = |u: &UnitInfo, m: &MachineInfo| {
            u.requirements
                .required_machine()
                .is_none_or(|id| m.id.matches(id))
                && u.requirements.metadata_matches(&m.metadata)
                && !m.refused.contains_key(&u.name)
        };
        for (name, u) in &active {
            let Some(d) = self.decisions.get(*name) else {
                out.push(format!("{name} is active but has no decision"));
                continue;
            };
            let req = &u.requirements;
            match d {
                Decision::On(m) => {
                    if req.global {
                        out.push(format!("global unit {name} is placed on one machine"));
                    }
                    let Some(info) = live.get(m) else {
                        out.push(format!("{name} is placed on {m}, which is not live"));
                        continue;
                    };
                    if !statically_ok(u, info) {
                        out.push(format!(
                            "{name} is on {m}, whose ID or metadata it does not accept"
                        ));
                    }
                    for t in &req.machine_of {
                        let with = UnitName::parse(t)
                            .ok()
                            .and_then(|t| self.decisions.get(&t))
                            .is_some_and(|d| d.is_on(m));
                        if !with {
                            out.push(format!("{name} is on {m} but its MachineOf {t} is not"));
                        }
                    }
                    if let Err(e) = shares(u, m) {
                        out.push(format!("{name} on {m} {e}"));
                    }
                }
                Decision::Global(ms) => {
                    if !req.global {
                        out.push(format!("non-global unit {name} has a global decision"));
                    }
                    if ms.is_empty() || ms.windows(2).any(|w| w[0] >= w[1]) {
                        out.push(format!("{name}'s machines are empty or not sorted: {ms:?}"));
                    }
                    for info in machines {
                        let on = ms.contains(&info.id);
                        let eligible = statically_ok(u, info);
                        if on && !eligible {
                            out.push(format!(
                                "{name} is on {} whose ID or metadata it does not accept",
                                info.id
                            ));
                        }
                        if on {
                            if let Err(e) = shares(u, &info.id) {
                                out.push(format!("{name} on {} {e}", info.id));
                            }
                        }
                        if !on && eligible && shares(u, &info.id).is_ok() {
                            out.push(format!(
                                "{name} could run on {} but is not placed there",
                                info.id
                            ));
                        }
                    }
                }
                Decision::Unplaceable(reason) => {
                    if reason.to_string().is_empty() {
                        out.push(format!("{name} is unplaceable without a reason"));
                    }
                    let checkable =
                        req.machine_of.is_empty() && req.validate().is_ok() && !name.is_template();
                    if checkable {
                        for info in machines {
                            if statically_ok(u, info) && shares(u, &info.id).is_ok() {
                                out.push(format!(
                                    "{name} is unplaceable ({reason}) but fits on {}",
                                    info.id
                                ));
                            }
                        }
                    }
                }
            }
        }
        out
    }
}
