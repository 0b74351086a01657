//! The invariants, written from fleet's specification (`[X-Fleet]` semantics of fleet v1) and the safety
//! goal, independently of the code they check: nothing here calls `fleet_decide` or `fleet_sched`'s
//! placement or requirement code. They read only the simulated systemd's truth (which machine runs which
//! unit's process at each instant) and the fault timeline.
//!
//! 1. **No double run**: a non-global unit's process never runs on two machines at the same simulated
//!    instant for any positive time (bound 0 by default). A unit counts as running from its start job
//!    (`activating`) until its stop completes or it is killed; a frozen machine's processes do not run.
//! 2. **`[X-Fleet]` requirements** of every running unit: `MachineID=`, `MachineMetadata=` (OR within a
//!    key, AND across keys), `Conflicts=` (globs, both directions: two conflicting units never run on one
//!    machine for a positive time), `MachineOf=` (a follower runs where its targets run; a follower may
//!    run alone for at most the `machine_of` bound while its target starts or moves), `Global=` units
//!    only where their metadata matches.
//! 3. **Placement within the bound**: a unit that some healthy machine could run (its requirements hold
//!    there, given what runs where) runs somewhere within the `placement` bound.
//! 4. **Bounded churn**: a unit moves (its process starts on another machine than the one it last ran
//!    on) at most once per fault that concerns it, and only while a fault concerns the machine it ran on
//!    (or within a settling time after it ended): never away from a machine that is alive and reachable.
//! 5. **Identity**: an agent started with another live machine's ID writes no claim and runs no unit.
//! 6. **No needless fence**: a machine whose units are killed for want of a fence deadline (by its
//!    guard or its agent) must have had a reason beyond losing etcd. It is a violation when, over the
//!    whole window before the kill (`window`: the witnesses' support period plus 2 s), the machine was
//!    *clean*: powered, not frozen, its fleetd running, concerned by no fault but etcd ones (an etcd
//!    outage or slowness, a partition, loss or delay between it and etcd only), and it and a majority
//!    of the cluster's machines were up (powered, not frozen, fleetd running) and connected to each
//!    other (no partition, loss or delay rule between any two of them), while its etcd link was down
//!    for less than `etcd_grace` (half the lease TTL: a machine out of etcd's sight for longer may
//!    legitimately stop its units before its lease can expire) or not down at all. The simulator feeds
//!    these facts from its fault timeline and network ([`Checker::clean`], [`Checker::etcd_link`]).

use std::collections::{BTreeMap, BTreeSet};

use fleet_sched::UnitFile;

use crate::report::{Violation, ViolationKind};

mod fences;
use fences::Fences;

/// One unit's `[X-Fleet]` requirements, read from its file by this module's own reading of fleet's
/// specification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spec {
    /// `Global=true`.
    pub global: bool,
    /// `MachineID=`.
    pub machine_id: Option<String>,
    /// `MachineOf=`: unit names.
    pub machine_of: Vec<String>,
    /// `MachineMetadata=`: key → accepted values.
    pub metadata: BTreeMap<String, Vec<String>>,
    /// `Conflicts=`: globs.
    pub conflicts: Vec<String>,
}

impl Spec {
    /// Reads the `[X-Fleet]` section of `file` for unit `name`.
    pub fn read(name: &str, file: &UnitFile) -> Spec {
        let mut s = Spec::default();
        for o in file.options().iter().filter(|o| o.section == "X-Fleet") {
            let words = words(&expand(name, &o.value));
            match o.name.as_str() {
                "Global" => {
                    s.global = matches!(
                        o.value.trim().to_ascii_lowercase().as_str(),
                        "true" | "yes" | "1" | "on" | "t"
                    )
                }
                "MachineID" | "X-ConditionMachineID" if s.machine_id.is_none() => {
                    s.machine_id = words.into_iter().next();
                }
                "MachineOf" | "X-ConditionMachineOf" => s.machine_of.extend(words),
                "MachineMetadata" | "X-ConditionMachineMetadata" => {
                    for w in words {
                        if let Some((k, v)) = w.split_once('=') {
                            s.metadata
                                .entry(k.to_string())
                                .or_default()
                                .push(v.to_string());
                        }
                    }
                }
                "Conflicts" | "X-Conflicts" => s.conflicts.extend(words),
                _ => {}
            }
        }
        s
    }

    /// Whether a machine with this ID and metadata may run the unit (ignoring other units).
    pub fn machine_ok(&self, id: &str, metadata: &BTreeMap<String, String>) -> bool {
        if let Some(want) = &self.machine_id {
            let short = want.len() == 8 && id.starts_with(want.as_str());
            if want != id && !short {
                return false;
            }
        }
        self.metadata
            .iter()
            .all(|(k, vs)| metadata.get(k).is_some_and(|v| vs.contains(v)))
    }

    /// Whether this unit and unit `other` (its name) conflict, in either direction.
    pub fn conflicts_with(&self, name: &str, other: &Spec, other_name: &str) -> bool {
        self.conflicts.iter().any(|g| glob(g, other_name))
            || other.conflicts.iter().any(|g| glob(g, name))
    }
}

/// Expands `%n %N %p %i` in an `[X-Fleet]` value for unit `name`.
fn expand(name: &str, value: &str) -> String {
    let stem = name.rsplit_once('.').map_or(name, |(a, _)| a);
    let (prefix, instance) = match stem.split_once('@') {
        Some((p, i)) => (p, i),
        None => (stem, ""),
    };
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') | Some('N') => out.push_str(name),
            Some('p') => out.push_str(prefix),
            Some('i') => out.push_str(instance),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Splits a value into words: quoted words if it starts and ends with `"`, else whitespace-separated.
fn words(value: &str) -> Vec<String> {
    let v = value.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v.split('"')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    } else {
        v.split_whitespace().map(String::from).collect()
    }
}

/// Shell-style glob (as Go's `path.Match`): `*` any run of characters, `?` one, `[...]` a class.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p[0] == '['; returns (matches, length of the class).
        let mut i = 1;
        let negate = p.get(1) == Some(&'^') || p.get(1) == Some(&'!');
        if negate {
            i += 1;
        }
        let mut hit = false;
        let start = i;
        while i < p.len() && (p[i] != ']' || i == start) {
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((hit != negate, i + 1))
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => match (n.first(), class(p, *n.first().unwrap_or(&'\0'))) {
                (Some(_), Some((true, len))) => go(&p[len..], &n[1..]),
                _ => false,
            },
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

/// A machine as the checks see it.
#[derive(Clone, Debug)]
pub struct MachineTruth<'a> {
    /// Its ID.
    pub id: &'a str,
    /// Its metadata now.
    pub metadata: &'a BTreeMap<String, String>,
    /// Powered, not frozen, its agent running and not paused, not a second agent with a taken ID: it
    /// could start a unit now.
    pub healthy: bool,
}

/// A window during which a fault concerned a machine: `[start, end)`, `end` unknown while it lasts.
#[derive(Clone, Copy, Debug)]
struct Window {
    fault: usize,
    start: u64,
    end: Option<u64>,
}

/// The checker's state.
pub struct Checker {
    names: Vec<String>,
    specs: Vec<Spec>,
    by_name: BTreeMap<String, u32>,
    machines: Vec<String>,
    /// Per unit: machines where its process runs.
    on: Vec<Vec<u32>>,
    /// Per machine: units whose process runs there.
    here: Vec<BTreeSet<u32>>,
    /// Units running on two machines or more, and whether this episode was reported.
    doubles: BTreeMap<u32, (u64, bool)>,
    /// Conflicting pairs (machine, a, b) running together, and whether reported.
    conflicts: BTreeMap<(u32, u32, u32), (u64, bool)>,
    /// Followers running without a target: (machine, unit) → since, reported.
    alone: BTreeMap<(u32, u32), (u64, bool)>,
    /// Per unit: where it last ran, since when.
    home: Vec<Option<(u32, u64)>>,
    moves: Vec<u32>,
    allowance: Vec<u32>,
    windows: Vec<Vec<Window>>,
    settle: u64,
    /// Per unit: running nowhere since (after having been submitted), reported.
    nowhere: BTreeMap<u32, (u64, bool)>,
    /// Per unit running nowhere: since when some healthy machine could run it.
    placeable_since: BTreeMap<u32, u64>,
    /// The longest time a unit ran nowhere while a healthy machine could run it (µs, as of the last
    /// periodic check): what the placement invariant bounds.
    pub longest_placeable_nowhere: u64,
    impostors: BTreeSet<u32>,
    /// Invariant 6's facts.
    fences: Fences,
    /// Violations found.
    pub violations: Vec<Violation>,
    /// Moves (a unit's process started on another machine than the one it last ran on).
    pub total_moves: u64,
}

impl Checker {
    /// A checker for these units (name, file) and machines (IDs, impostor slots included); `settle` is how
    /// long after a fault ends a move away from its machine still counts as caused by it.
    pub fn new(units: &[(String, UnitFile)], machines: Vec<String>, settle: u64) -> Checker {
        let n = machines.len();
        Checker {
            specs: units.iter().map(|(n, f)| Spec::read(n, f)).collect(),
            by_name: units
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (n.clone(), i as u32))
                .collect(),
            names: units.iter().map(|(n, _)| n.clone()).collect(),
            on: vec![Vec::new(); units.len()],
            here: vec![BTreeSet::new(); n],
            doubles: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            alone: BTreeMap::new(),
            home: vec![None; units.len()],
            moves: vec![0; units.len()],
            allowance: vec![0; units.len()],
            windows: vec![Vec::new(); n],
            settle,
            nowhere: BTreeMap::new(),
            placeable_since: BTreeMap::new(),
            longest_placeable_nowhere: 0,
            impostors: BTreeSet::new(),
            fences: Fences::new(n),
            violations: Vec::new(),
            total_moves: 0,
            machines,
        }
    }

    /// The spec of unit `u`.
    pub fn spec(&self, u: u32) -> &Spec {
        &self.specs[u as usize]
    }

    /// Marks machine slot `m` as a second agent with a taken ID.
    pub fn impostor(&mut self, m: u32) {
        self.impostors.insert(m);
    }

    fn violation(&mut self, kind: ViolationKind, at: u64, subject: String, detail: String) {
        self.violations.push(Violation {
            kind,
            at,
            subject,
            detail,
        });
    }

    /// Machines running unit `u` now.
    pub fn running_on(&self, u: u32) -> &[u32] {
        &self.on[u as usize]
    }

    /// All units were submitted at `now`: each non-global one runs nowhere yet.
    pub fn submitted(&mut self, now: u64) {
        for u in 0..self.names.len() as u32 {
            if !self.specs[u as usize].global && self.on[u as usize].is_empty() {
                self.nowhere.entry(u).or_insert((now, false));
            }
        }
    }

    /// Unit `u`'s process starts (`true`) or stops running on machine `m` at `now`.
    pub fn set_running(&mut self, now: u64, m: u32, u: u32, running: bool, submitted: bool) {
        let ui = u as usize;
        if running {
            if self.on[ui].contains(&m) {
                return;
            }
            self.on[ui].push(m);
            self.here[m as usize].insert(u);
            self.started(now, m, u);
        } else {
            let Some(i) = self.on[ui].iter().position(|&x| x == m) else {
                return;
            };
            self.on[ui].swap_remove(i);
            self.here[m as usize].remove(&u);
            self.conflicts
                .retain(|(mm, a, b), _| !(*mm == m && (*a == u || *b == u)));
            self.alone.remove(&(m, u));
            if self.on[ui].len() < 2 {
                self.doubles.remove(&u);
            }
            if self.on[ui].is_empty() && submitted && !self.specs[ui].global {
                self.nowhere.entry(u).or_insert((now, false));
                if std::env::var_os("FLEET_SIM_TRACE").is_some_and(|v| v == "moves") {
                    eprintln!(
                        "{:>10.3}s down {} (last on {})",
                        now as f64 / 1e6,
                        self.names[ui],
                        self.machines[m as usize]
                    );
                }
            }
        }
    }

    fn started(&mut self, now: u64, m: u32, u: u32) {
        let ui = u as usize;
        let spec = self.specs[ui].clone();
        let name = self.names[ui].clone();
        self.nowhere.remove(&u);
        if self.impostors.contains(&m) {
            self.violation(
                ViolationKind::Identity,
                now,
                name.clone(),
                format!(
                    "started by the second agent with machine ID {}",
                    self.machines[m as usize]
                ),
            );
        }
        if spec.global {
            return;
        }
        if self.on[ui].len() >= 2 {
            self.doubles.entry(u).or_insert((now, false));
        }
        // Conflicts with what already runs here.
        let others: Vec<u32> = self.here[m as usize]
            .iter()
            .copied()
            .filter(|&o| o != u)
            .collect();
        for o in others {
            let os = &self.specs[o as usize];
            if spec.conflicts_with(&name, os, &self.names[o as usize]) {
                let key = (m, u.min(o), u.max(o));
                self.conflicts.entry(key).or_insert((now, false));
            }
        }
        // Churn.
        match self.home[ui] {
            Some((from, since)) if from != m => {
                self.moves[ui] += 1;
                self.total_moves += 1;
                if std::env::var_os("FLEET_SIM_TRACE").is_some_and(|v| v == "moves") {
                    eprintln!(
                        "{:>10.3}s move {} {} -> {}",
                        now as f64 / 1e6,
                        name,
                        self.machines[from as usize],
                        self.machines[m as usize]
                    );
                }
                // A fault concerned the machine it ran on, and still does (or ended within the
                // settling time); the fault may predate its arrival there.
                let _ = since;
                let caused = self.windows[from as usize]
                    .iter()
                    .any(|w| w.start <= now && w.end.is_none_or(|e| e + self.settle >= now));
                if !caused {
                    self.violation(
                        ViolationKind::Churn,
                        now,
                        name.clone(),
                        format!(
                            "moved from {} to {} while no fault concerned {}",
                            self.machines[from as usize],
                            self.machines[m as usize],
                            self.machines[from as usize]
                        ),
                    );
                } else if self.moves[ui] > self.allowance[ui] {
                    self.violation(
                        ViolationKind::Churn,
                        now,
                        name.clone(),
                        format!(
                            "moved {} times (now from {} to {}) for {} fault(s) that concerned it",
                            self.moves[ui],
                            self.machines[from as usize],
                            self.machines[m as usize],
                            self.allowance[ui]
                        ),
                    );
                }
                // Faults in progress on the new machine concern it too.
                self.allowance[ui] += self.windows[m as usize]
                    .iter()
                    .filter(|w| w.end.is_none())
                    .count() as u32;
            }
            None => {
                self.allowance[ui] += self.windows[m as usize]
                    .iter()
                    .filter(|w| w.end.is_none())
                    .count() as u32;
            }
            _ => {}
        }
        self.home[ui] = Some((m, now));
    }

    /// Fault `fault` starts at `now`, concerning `machines`.
    pub fn fault(&mut self, now: u64, fault: usize, machines: &[u32]) {
        for &m in machines {
            self.windows[m as usize].push(Window {
                fault,
                start: now,
                end: None,
            });
        }
        let set: BTreeSet<u32> = machines.iter().copied().collect();
        for (u, home) in self.home.iter().enumerate() {
            if home.is_some_and(|(m, _)| set.contains(&m)) {
                self.allowance[u] += 1;
            }
        }
    }

    /// Fault `fault` was undone at `now`.
    pub fn fault_end(&mut self, now: u64, fault: usize) {
        for ws in &mut self.windows {
            for w in ws
                .iter_mut()
                .filter(|w| w.fault == fault && w.end.is_none())
            {
                w.end = Some(now);
            }
        }
    }

    /// An impostor's claim transaction succeeded.
    pub fn impostor_claim(&mut self, now: u64, m: u32, unit: u32) {
        let name = self.names[unit as usize].clone();
        self.violation(
            ViolationKind::Identity,
            now,
            name,
            format!(
                "claimed by the second agent with machine ID {}",
                self.machines[m as usize]
            ),
        );
    }

    /// End of the simulated instant `t`: what still holds now held for a positive time.
    pub fn settle(&mut self, t: u64) {
        let doubles: Vec<u32> = self
            .doubles
            .iter()
            .filter(|(_, (_, reported))| !reported)
            .map(|(u, _)| *u)
            .collect();
        for u in doubles {
            let (since, _) = self.doubles[&u];
            self.doubles.insert(u, (since, true));
            let on: Vec<String> = self.on[u as usize]
                .iter()
                .map(|&m| self.machines[m as usize].clone())
                .collect();
            self.violation(
                ViolationKind::DoubleRun,
                t,
                self.names[u as usize].clone(),
                format!("running on {} at once", on.join(" and ")),
            );
        }
        let pairs: Vec<(u32, u32, u32)> = self
            .conflicts
            .iter()
            .filter(|(_, (_, r))| !r)
            .map(|(k, _)| *k)
            .collect();
        for (m, a, b) in pairs {
            self.conflicts.insert((m, a, b), (t, true));
            self.violation(
                ViolationKind::Requirement,
                t,
                self.names[a as usize].clone(),
                format!(
                    "runs on {} together with {}, which it conflicts with",
                    self.machines[m as usize], self.names[b as usize]
                ),
            );
        }
    }

    /// The periodic checks at `now`: requirements that need time (MachineOf, metadata that changed),
    /// placement within `placement`, followers alone within `machine_of`.
    pub fn periodic(
        &mut self,
        now: u64,
        machines: &[MachineTruth<'_>],
        placement: u64,
        machine_of: u64,
    ) {
        // Machine and metadata requirements of every running unit (metadata may change at run time:
        // the unit must have moved within the placement bound).
        for u in 0..self.names.len() {
            let on = self.on[u].clone();
            for m in on {
                let t = &machines[m as usize];
                if !self.specs[u].machine_ok(t.id, t.metadata) {
                    let key = (m, u as u32);
                    let e = self.alone.entry(key).or_insert((now, false));
                    let bound = if self.specs[u].machine_id.is_some() {
                        0
                    } else {
                        placement
                    };
                    if now - e.0 >= bound && !e.1 {
                        e.1 = true;
                        let detail =
                            format!("runs on {} whose ID or metadata it does not accept", t.id);
                        let name = self.names[u].clone();
                        self.violation(ViolationKind::Requirement, now, name, detail);
                    }
                    continue;
                }
                // MachineOf: every target runs here.
                let missing = self.specs[u].machine_of.iter().any(|t| {
                    self.by_name
                        .get(t)
                        .is_none_or(|&tu| !self.on[tu as usize].contains(&m))
                });
                let key = (m, u as u32);
                if missing {
                    let e = self.alone.entry(key).or_insert((now, false));
                    if now - e.0 > machine_of && !e.1 {
                        e.1 = true;
                        let detail = format!(
                            "runs on {} without its MachineOf target(s) {:?} since {:.3}s",
                            machines[m as usize].id,
                            self.specs[u].machine_of,
                            e.0 as f64 / 1e6
                        );
                        let name = self.names[u].clone();
                        self.violation(ViolationKind::Requirement, now, name, detail);
                    }
                } else {
                    self.alone.remove(&key);
                }
            }
        }
        // Placement: a unit running nowhere that a healthy machine could run, for longer than the
        // bound (counted from when both were true).
        let down: Vec<(u32, u64, bool)> = self
            .nowhere
            .iter()
            .map(|(u, (since, reported))| (*u, *since, *reported))
            .collect();
        self.placeable_since
            .retain(|u, _| self.nowhere.contains_key(u));
        for (u, since, reported) in down {
            let Some(m) = self.placeable_on(u, machines) else {
                self.placeable_since.remove(&u);
                continue;
            };
            let from = *self.placeable_since.entry(u).or_insert(now);
            let waited = now - since.max(from);
            self.longest_placeable_nowhere = self.longest_placeable_nowhere.max(waited);
            if !reported && waited > placement {
                self.nowhere.insert(u, (since, true));
                let detail = format!(
                    "running nowhere since {:.3}s, though {} could run it since {:.3}s",
                    since as f64 / 1e6,
                    machines[m].id,
                    from.max(since) as f64 / 1e6
                );
                let name = self.names[u as usize].clone();
                self.violation(ViolationKind::NotPlaced, now, name, detail);
            }
        }
    }

    /// A healthy machine where unit `u` could run now: its ID and metadata fit, its MachineOf targets run
    /// there, and nothing running there conflicts with it.
    fn placeable_on(&self, u: u32, machines: &[MachineTruth<'_>]) -> Option<usize> {
        let spec = &self.specs[u as usize];
        let name = &self.names[u as usize];
        machines.iter().enumerate().position(|(m, t)| {
            t.healthy
                && spec.machine_ok(t.id, t.metadata)
                && spec.machine_of.iter().all(|target| {
                    self.by_name
                        .get(target)
                        .is_some_and(|&tu| self.on[tu as usize].contains(&(m as u32)))
                })
                && self.here[m].iter().all(|&o| {
                    !spec.conflicts_with(name, &self.specs[o as usize], &self.names[o as usize])
                })
        })
    }

    /// Units running nowhere now (after submission).
    pub fn unavailable(&self) -> usize {
        self.nowhere.len()
    }

    /// Non-global units running on two machines or more now.
    pub fn double_running(&self) -> usize {
        self.doubles.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, xfleet: &str) -> Spec {
        let text = format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}\n");
        Spec::read(name, &UnitFile::parse(&text).unwrap())
    }

    #[test]
    fn globs_match_as_path_match_does() {
        assert!(glob("api@*.service", "api@3.service"));
        assert!(!glob("api@*.service", "web@3.service"));
        assert!(glob("web@?.service", "web@3.service"));
        assert!(!glob("web@?.service", "web@31.service"));
        assert!(glob("db@[0-4].service", "db@3.service"));
        assert!(!glob("db@[!0-4].service", "db@3.service"));
    }

    #[test]
    fn specs_read_every_requirement() {
        let s = spec(
            "side@7.service",
            "MachineOf=web@%i.service\nMachineMetadata=disk=ssd disk=nvme\nMachineMetadata=rack=r1\nConflicts=\"side@*.service\" \"db@*.service\"",
        );
        assert_eq!(s.machine_of, vec!["web@7.service"]);
        assert_eq!(s.metadata["disk"], vec!["ssd", "nvme"]);
        assert_eq!(s.conflicts, vec!["side@*.service", "db@*.service"]);
        let m = |d: &str, r: &str| {
            BTreeMap::from([
                ("disk".to_string(), d.to_string()),
                ("rack".into(), r.into()),
            ])
        };
        assert!(s.machine_ok("x", &m("nvme", "r1")));
        assert!(!s.machine_ok("x", &m("hdd", "r1")));
        assert!(!s.machine_ok("x", &m("ssd", "r2")));
        let g = spec("mon.service", "Global=yes\nMachineID=abcdef01");
        assert!(g.global);
        assert!(g.machine_ok("abcdef0123456789", &BTreeMap::new()));
        assert!(!g.machine_ok("abcdef0223456789", &BTreeMap::new()));
    }

    fn checker() -> Checker {
        let f = |x: &str| {
            UnitFile::parse(&format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{x}\n")).unwrap()
        };
        Checker::new(
            &[
                ("api@1.service".into(), f("Conflicts=api@*.service")),
                ("api@2.service".into(), f("Conflicts=api@*.service")),
            ],
            vec!["a".into(), "b".into(), "c".into()],
            1_000,
        )
    }

    #[test]
    fn a_double_run_counts_only_when_it_lasts() {
        let mut c = checker();
        c.set_running(10, 0, 0, true, true);
        c.fault(15, 0, &[0, 1, 2]);
        // B starts and A stops in the same instant: no time with both running.
        c.set_running(20, 1, 0, true, true);
        c.set_running(20, 0, 0, false, true);
        c.settle(20);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        c.set_running(30, 2, 0, true, true);
        c.settle(30);
        assert_eq!(c.violations.len(), 1);
        assert_eq!(c.violations[0].kind, ViolationKind::DoubleRun);
    }

    #[test]
    fn conflicts_on_one_machine_and_moves_without_a_fault_are_caught() {
        let mut c = checker();
        c.set_running(10, 0, 0, true, true);
        c.set_running(10, 0, 1, true, true);
        c.settle(10);
        assert_eq!(c.violations[0].kind, ViolationKind::Requirement);
        let mut c = checker();
        c.set_running(10, 0, 0, true, true);
        c.set_running(20, 0, 0, false, true);
        c.set_running(20, 1, 0, true, true);
        assert_eq!(c.violations[0].kind, ViolationKind::Churn);
        // With a fault on machine 0, one move is fine, a second one (back) is not.
        let mut c = checker();
        c.set_running(10, 0, 0, true, true);
        c.fault(15, 0, &[0]);
        c.set_running(20, 0, 0, false, true);
        c.set_running(20, 1, 0, true, true);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        c.fault_end(30, 0);
        c.set_running(5_000, 1, 0, false, true);
        c.set_running(5_000, 0, 0, true, true);
        assert_eq!(c.violations[0].kind, ViolationKind::Churn);
    }
}
