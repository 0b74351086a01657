//! The scheduler behind [`super::schedule`]: indexes over machines, metadata and `Conflicts=` patterns,
//! load counting, global units and the reasons of unplaceable units. The reservations of kept claims are
//! in [`order`]; the order in which the other units are decided, shared with the planner, in
//! `placement/decide.rs`.

mod order;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::decide::cycles;
use super::{Decision, MachineInfo, Plan, Reason, UnitInfo};
use crate::requirements::glob_match;
use crate::{DesiredState, RequirementError, Requirements, UnitName};

// ---------------------------------------------------------------------------------------------------------
// Implementation.

/// FxHash (rustc's): a fast hasher for the integer and short-string keys used here. Not DoS-resistant,
/// which does not matter for data that is already trusted cluster state.
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 59));
    }
    fn write_u8(&mut self, n: u8) {
        self.add(n as u64)
    }
    fn write_u32(&mut self, n: u32) {
        self.add(n as u64)
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n)
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64)
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub(super) type FxSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

/// No machine / not placed.
pub(super) const NONE: u32 = u32::MAX;
/// Classes matched by at most this many machines are scanned instead of kept in an ordered set.
pub(super) const SMALL_CLASS: usize = 32;

/// A distinct `MachineMetadata=` requirement and the machines that satisfy it.
struct Class {
    /// Matching machines by index (sorted); `None` when every machine matches.
    eligible: Option<Vec<u32>>,
    /// Index in `Scheduler::pools` once an ordered set exists for it.
    pool: Option<usize>,
}

/// A decision under construction (machines by index).
pub(super) enum Dec {
    On(u32),
    Global(Vec<u32>),
    Unplaceable(Reason),
    /// Every one of `machines` candidates is blocked; the reason names a blocker on `machine` once every
    /// unit is decided, so that it does not depend on the order of decisions.
    Blocked {
        machine: u32,
        machines: usize,
    },
}

pub(super) struct Scheduler<'a> {
    machines: Vec<&'a MachineInfo>,
    /// Machines by 8-character short ID.
    short_ids: FxMap<&'a str, Vec<u32>>,
    /// Machines by metadata pair.
    meta_index: FxMap<&'a str, FxMap<&'a str, Vec<u32>>>,
    /// Active units, sorted by name.
    units: Vec<&'a UnitInfo>,
    by_name: FxMap<&'a str, u32>,
    invalid: Vec<Option<RequirementError>>,
    class_of: Vec<u32>,
    classes: Vec<Class>,
    /// `Conflicts=` patterns of each unit (interned), and the patterns that match each unit's name.
    conflict_pats: Vec<Vec<u32>>,
    matched_by: Vec<Vec<u32>>,
    /// Units each unit replaces (not circularly), and the units that replace it.
    replaces: Vec<Vec<u32>>,
    replaced_by: Vec<Vec<u32>>,
    /// Claim on a live machine, or `NONE`.
    claim: Vec<u32>,
    /// Machines that refuse each unit's name (sorted; empty for almost every unit).
    refused: Vec<Vec<u32>>,
    decision: Vec<Option<Dec>>,
    /// Machine of each placed non-global unit, or `NONE`.
    at: Vec<u32>,
    load: Vec<u32>,
    /// Ordered `(load, machine)` sets: pool 0 holds every machine, the others one class each.
    pools: Vec<BTreeSet<(u32, u32)>>,
    /// Pools other than 0 each machine belongs to.
    machine_pools: Vec<Vec<usize>>,
    /// Per `(pattern, machine)`: units there that match the pattern / that own it.
    cnt_match: FxMap<u64, u32>,
    cnt_own: FxMap<u64, u32>,
    /// Per `(pattern, pool)`: machines of the pool holding a unit that matches the pattern, one that owns
    /// it, and either.
    pool_touched: FxMap<u64, [u32; 3]>,
    /// Units on each machine, in the order they were placed.
    on_machine: Vec<Vec<u32>>,
}

pub(super) fn key(pattern: u32, machine: u32) -> u64 {
    ((pattern as u64) << 32) | machine as u64
}

pub(super) fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '[', '\\'])
}

pub(super) fn render_metadata(md: &BTreeMap<String, Vec<String>>) -> String {
    md.iter()
        .map(|(k, vs)| {
            vs.iter()
                .map(|v| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" or ")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sorted union of sorted lists.
fn union_sorted(lists: &[&[u32]]) -> Vec<u32> {
    let mut out: Vec<u32> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

impl<'a> Scheduler<'a> {
    pub(super) fn new(machines_in: &'a [MachineInfo], units_in: &'a [UnitInfo]) -> Scheduler<'a> {
        // Long on purpose: it builds the indexes in one place, in the order they depend on each other.
        // Machines sorted by ID; for a repeated ID the greatest metadata wins, whatever the input order.
        let mut machines: Vec<&MachineInfo> = machines_in.iter().collect();
        machines.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| b.metadata.cmp(&a.metadata)));
        machines.dedup_by(|later, first| later.id == first.id);
        let mut short_ids: FxMap<&str, Vec<u32>> = FxMap::default();
        let mut meta_index: FxMap<&str, FxMap<&str, Vec<u32>>> = FxMap::default();
        for (i, m) in machines.iter().enumerate() {
            short_ids.entry(m.id.short()).or_default().push(i as u32);
            for (k, v) in &m.metadata {
                meta_index
                    .entry(k.as_str())
                    .or_default()
                    .entry(v.as_str())
                    .or_default()
                    .push(i as u32);
            }
        }
        let machine_index: FxMap<&str, u32> = machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), i as u32))
            .collect();

        // Active units sorted by name; the first entry of a repeated name wins.
        let mut units: Vec<&UnitInfo> = units_in
            .iter()
            .filter(|u| u.desired != DesiredState::Inactive)
            .collect();
        units.sort_by(|a, b| a.name.cmp(&b.name));
        units.dedup_by(|later, first| later.name == first.name);
        let n = units.len();
        let by_name: FxMap<&str, u32> = units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i as u32))
            .collect();

        let invalid = units
            .iter()
            .map(|u| u.requirements.validate().err())
            .collect();
        let mut refused = vec![Vec::new(); n];
        for (mi, m) in machines.iter().enumerate() {
            for name in m.refused.keys() {
                if let Some(&u) = by_name.get(name.as_str()) {
                    refused[u as usize].push(mi as u32);
                }
            }
        }
        let claim = units
            .iter()
            .map(|u| match &u.claim {
                Some(id) if !u.requirements.global => {
                    machine_index.get(id.as_str()).copied().unwrap_or(NONE)
                }
                _ => NONE,
            })
            .collect();

        let mut s = Scheduler {
            short_ids,
            meta_index,
            invalid,
            class_of: Vec::with_capacity(n),
            classes: Vec::new(),
            conflict_pats: vec![Vec::new(); n],
            matched_by: vec![Vec::new(); n],
            replaces: vec![Vec::new(); n],
            replaced_by: vec![Vec::new(); n],
            claim,
            refused,
            decision: (0..n).map(|_| None).collect(),
            at: vec![NONE; n],
            load: vec![0; machines.len()],
            pools: vec![machines
                .iter()
                .enumerate()
                .map(|(i, _)| (0, i as u32))
                .collect()],
            machine_pools: vec![Vec::new(); machines.len()],
            cnt_match: FxMap::default(),
            cnt_own: FxMap::default(),
            pool_touched: FxMap::default(),
            on_machine: vec![Vec::new(); machines.len()],
            machines,
            units,
            by_name,
        };
        s.build_classes();
        s.build_conflicts();
        s.build_replaces();
        s
    }

    fn req(&self, u: u32) -> &'a Requirements {
        &self.units[u as usize].requirements
    }

    fn is_global(&self, u: u32) -> bool {
        self.req(u).global
    }

    /// Interns each distinct `MachineMetadata=` requirement and computes its matching machines.
    fn build_classes(&mut self) {
        let mut ids: FxMap<&BTreeMap<String, Vec<String>>, u32> = FxMap::default();
        for i in 0..self.units.len() {
            let md = &self.units[i].requirements.metadata;
            let next = self.classes.len() as u32;
            let c = *ids.entry(md).or_insert(next);
            if c == next {
                // A requirement every machine meets is the same as none.
                let eligible = self
                    .match_metadata(md)
                    .filter(|e| e.len() < self.machines.len());
                self.classes.push(Class {
                    eligible,
                    pool: None,
                });
            }
            self.class_of.push(c);
        }
    }

    fn match_metadata(&self, md: &BTreeMap<String, Vec<String>>) -> Option<Vec<u32>> {
        if md.is_empty() {
            return None;
        }
        // Start from the key whose values index the fewest machines, then check the other keys.
        let lists = |k: &String, vs: &Vec<String>| self.indexed(k, vs);
        let (k, vs) = md
            .iter()
            .min_by_key(|(k, vs)| lists(k, vs).iter().map(|l| l.len()).sum::<usize>())
            .expect("non-empty metadata");
        let mut eligible = union_sorted(&lists(k, vs));
        if md.len() > 1 {
            eligible.retain(|&m| {
                md.iter().all(|(k, vs)| {
                    self.machines[m as usize]
                        .metadata
                        .get(k)
                        .is_some_and(|v| vs.contains(v))
                })
            });
        }
        Some(eligible)
    }

    /// Machines indexed under `key=value` for each of `values`.
    fn indexed<'s>(&'s self, key: &str, values: &[String]) -> Vec<&'s [u32]> {
        let Some(by_value) = self.meta_index.get(key) else {
            return Vec::new();
        };
        values
            .iter()
            .filter_map(|v| by_value.get(v.as_str()))
            .map(Vec::as_slice)
            .collect()
    }

    /// Active units whose name matches `pattern`.
    fn pattern_matches(&self, pattern: &str) -> Vec<u32> {
        if is_literal(pattern) {
            return self.by_name.get(pattern).copied().into_iter().collect();
        }
        let prefix = &pattern[..pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len())];
        let lo = self.units.partition_point(|u| u.name.as_str() < prefix);
        let hi = lo + self.units[lo..].partition_point(|u| u.name.as_str().starts_with(prefix));
        (lo..hi)
            .filter(|&u| glob_match(pattern, self.units[u].name.as_str()))
            .map(|u| u as u32)
            .collect()
    }

    fn build_conflicts(&mut self) {
        #[cfg(feature = "mutations")]
        if crate::mutation::on(crate::mutation::Mutation::IgnoreConflicts) {
            return;
        }
        let mut ids: FxMap<&'a str, u32> = FxMap::default();
        let mut matches: Vec<Vec<u32>> = Vec::new();
        for u in 0..self.units.len() {
            if self.invalid[u].is_some() {
                continue;
            }
            for p in &self.units[u].requirements.conflicts {
                let next = matches.len() as u32;
                let id = *ids.entry(p.as_str()).or_insert(next);
                if id == next {
                    matches.push(self.pattern_matches(p));
                }
                if !self.conflict_pats[u].contains(&id) {
                    self.conflict_pats[u].push(id);
                }
            }
        }
        for (p, ms) in matches.iter().enumerate() {
            for &u in ms {
                self.matched_by[u as usize].push(p as u32);
            }
        }
    }

    fn build_replaces(&mut self) {
        let mut cache: FxMap<&'a str, Vec<u32>> = FxMap::default();
        for u in 0..self.units.len() {
            let req = &self.units[u].requirements;
            if req.replaces.is_empty() || req.global || self.invalid[u].is_some() {
                continue;
            }
            let mut targets = Vec::new();
            for p in &req.replaces {
                if !cache.contains_key(p.as_str()) {
                    let m = self.pattern_matches(p);
                    cache.insert(p.as_str(), m);
                }
                targets.extend(cache[p.as_str()].iter().copied());
            }
            targets.sort_unstable();
            targets.dedup();
            targets.retain(|&v| {
                v as usize != u && !self.is_global(v) && self.invalid[v as usize].is_none()
            });
            self.replaces[u] = targets;
        }
        // A mutual or circular Replaces (a replaces b ... replaces a) is ignored.
        let mut scc = vec![NONE; self.units.len()];
        for (i, members) in cycles(&self.replaces).into_iter().enumerate() {
            for u in members {
                scc[u as usize] = i as u32;
            }
        }
        for (u, targets) in self.replaces.iter_mut().enumerate() {
            if scc[u] != NONE {
                targets.retain(|&v| scc[v as usize] != scc[u]);
            }
        }
        for u in 0..self.units.len() {
            for i in 0..self.replaces[u].len() {
                let v = self.replaces[u][i];
                self.replaced_by[v as usize].push(u as u32);
            }
        }
    }

    pub(super) fn run(mut self) -> Plan {
        if !self.machines.is_empty() {
            self.place_globals();
        }
        self.place_non_globals();
        let decisions = self
            .units
            .iter()
            .zip(&self.decision)
            .enumerate()
            .map(|(i, (u, d))| {
                let d = match d.as_ref().expect("every unit is decided") {
                    Dec::On(m) => Decision::On(self.machines[*m as usize].id.clone()),
                    Dec::Global(ms) => Decision::Global(
                        ms.iter()
                            .map(|&m| self.machines[m as usize].id.clone())
                            .collect(),
                    ),
                    Dec::Unplaceable(r) => Decision::Unplaceable(r.clone()),
                    Dec::Blocked { machine, machines } => {
                        Decision::Unplaceable(self.blocked_reason(i as u32, *machine, *machines))
                    }
                };
                (u.name.clone(), d)
            })
            .collect();
        Plan { decisions }
    }

    /// Machines whose full or short ID is `id`, sorted.
    fn id_matches(&self, id: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self.short_ids.get(id).cloned().unwrap_or_default();
        if let Ok(i) = self.machines.binary_search_by(|m| m.id.as_str().cmp(id)) {
            out.push(i as u32);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether machine `m` refuses the name of unit `u`.
    fn refuses(&self, m: u32, u: u32) -> bool {
        self.refused[u as usize].binary_search(&m).is_ok()
    }

    /// Why `u` cannot go to any of `allowed` (machines its requirements allow, sorted, not empty),
    /// which all refuse its name.
    fn refused_reason(&self, u: u32, allowed: &[u32]) -> Reason {
        let m = allowed[0];
        let unit = &self.units[u as usize].name;
        Reason::NameRefused {
            machines: allowed.len(),
            machine: self.machines[m as usize].id.clone(),
            why: self.machines[m as usize]
                .refused
                .get(unit)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// `MachineID=` and `MachineMetadata=` allow `m`.
    fn requirements_allow(&self, u: u32, m: u32) -> bool {
        if let Some(id) = self.req(u).required_machine() {
            if !self.machines[m as usize].id.matches(id) {
                return false;
            }
        }
        match &self.classes[self.class_of[u as usize] as usize].eligible {
            None => true,
            Some(e) => e.binary_search(&m).is_ok(),
        }
    }

    /// Whether a unit already on `m` conflicts with `u`, or is in a `Replaces` relation with it.
    fn blocked(&self, u: u32, m: u32) -> bool {
        let ui = u as usize;
        let count = |map: &FxMap<u64, u32>, p: u32| map.get(&key(p, m)).is_some_and(|&c| c > 0);
        self.conflict_pats[ui]
            .iter()
            .any(|&p| count(&self.cnt_match, p))
            || self.matched_by[ui].iter().any(|&p| count(&self.cnt_own, p))
            || self.replaces[ui]
                .iter()
                .chain(&self.replaced_by[ui])
                .any(|&v| self.at[v as usize] == m)
    }

    fn set_load(&mut self, m: u32, new: u32) {
        let old = self.load[m as usize];
        self.pools[0].remove(&(old, m));
        self.pools[0].insert((new, m));
        for &p in &self.machine_pools[m as usize] {
            self.pools[p].remove(&(old, m));
            self.pools[p].insert((new, m));
        }
        self.load[m as usize] = new;
    }

    fn place(&mut self, u: u32, m: u32) {
        self.set_load(m, self.load[m as usize] + 1);
        self.on_machine[m as usize].push(u);
        self.count(u, m, true);
        if !self.is_global(u) {
            self.at[u as usize] = m;
        }
    }

    /// Takes a reserved non-global unit off its machine again.
    fn unplace(&mut self, u: u32) {
        let m = self.at[u as usize];
        self.set_load(m, self.load[m as usize] - 1);
        self.on_machine[m as usize].retain(|&w| w != u);
        self.count(u, m, false);
        self.at[u as usize] = NONE;
    }

    /// Adds (or removes) `u` on `m` to the pattern counters.
    fn count(&mut self, u: u32, m: u32, add: bool) {
        let ui = u as usize;
        let before: Vec<(u32, [bool; 2])> = self
            .touched_patterns(u)
            .into_iter()
            .map(|p| (p, self.pattern_state(p, m)))
            .collect();
        let step = |c: &mut u32| {
            if add {
                *c += 1
            } else {
                *c -= 1
            }
        };
        for &p in &self.conflict_pats[ui] {
            step(self.cnt_own.entry(key(p, m)).or_insert(0));
        }
        for &p in &self.matched_by[ui] {
            step(self.cnt_match.entry(key(p, m)).or_insert(0));
        }
        for (p, was) in before {
            let now = self.pattern_state(p, m);
            // Machines of each pool where the pattern became (or stopped being) matched, owned, either.
            let (from, to) = if add { (was, now) } else { (now, was) };
            let delta = [
                to[0] && !from[0],
                to[1] && !from[1],
                (to[0] || to[1]) && !(from[0] || from[1]),
            ];
            if delta == [false; 3] {
                continue;
            }
            for i in 0..=self.machine_pools[m as usize].len() {
                let pool = if i == 0 {
                    0
                } else {
                    self.machine_pools[m as usize][i - 1]
                };
                let c = self.pool_touched.entry(key(p, pool as u32)).or_default();
                for k in 0..3 {
                    if delta[k] {
                        step(&mut c[k]);
                    }
                }
            }
        }
    }

    /// `Conflicts=` patterns that `u` owns or matches, without repeats.
    fn touched_patterns(&self, u: u32) -> Vec<u32> {
        let mut ps: Vec<u32> = self.conflict_pats[u as usize]
            .iter()
            .chain(&self.matched_by[u as usize])
            .copied()
            .collect();
        ps.sort_unstable();
        ps.dedup();
        ps
    }

    /// Whether machine `m` holds a unit that matches pattern `p`, and one that owns it.
    fn pattern_state(&self, p: u32, m: u32) -> [bool; 2] {
        let k = key(p, m);
        [
            self.cnt_match.get(&k).is_some_and(|&c| c > 0),
            self.cnt_own.get(&k).is_some_and(|&c| c > 0),
        ]
    }

    /// `true` if a single `Conflicts=` pattern already blocks every machine of `pool` for `u` (an
    /// oversubscribed group such as `Conflicts=web@*.service`), which spares scanning the pool.
    fn pool_blocked(&self, u: u32, pool: usize) -> bool {
        let size = self.pools[pool].len() as u32;
        let ui = u as usize;
        let counts = |p: u32| {
            self.pool_touched
                .get(&key(p, pool as u32))
                .copied()
                .unwrap_or_default()
        };
        self.conflict_pats[ui].iter().any(|&p| {
            // Owning p blocks machines holding a match; being matched too also those holding an owner.
            let both = self.matched_by[ui].contains(&p);
            counts(p)[if both { 2 } else { 0 }] == size
        }) || self.matched_by[ui].iter().any(|&p| counts(p)[1] == size)
    }

    /// Global units, by name: every eligible machine where no earlier global unit conflicts.
    fn place_globals(&mut self) {
        for g in 0..self.units.len() as u32 {
            if !self.is_global(g) {
                continue;
            }
            let dec = match self.precheck(g) {
                Some(reason) => Dec::Unplaceable(reason),
                None => {
                    let candidates = self.static_candidates(g);
                    let chosen: Vec<u32> = candidates
                        .iter()
                        .copied()
                        .filter(|&m| !self.blocked(g, m))
                        .collect();
                    if chosen.is_empty() {
                        self.unplaceable(g, &candidates)
                    } else {
                        for &m in &chosen {
                            self.place(g, m);
                        }
                        Dec::Global(chosen)
                    }
                }
            };
            self.decision[g as usize] = Some(dec);
        }
    }

    /// Reasons that need no machine to be examined.
    fn precheck(&self, u: u32) -> Option<Reason> {
        if let Some(e) = &self.invalid[u as usize] {
            return Some(Reason::Invalid(e.clone()));
        }
        if self.units[u as usize].name.is_template() {
            return Some(Reason::Template);
        }
        if self.machines.is_empty() {
            return Some(Reason::NoMachines);
        }
        if let Some(id) = self.req(u).required_machine() {
            if self.id_matches(id).is_empty() {
                return Some(Reason::MachineIdNotFound(id.to_owned()));
            }
        }
        None
    }

    /// Every machine `MachineID=` and `MachineMetadata=` allow and that does not refuse the name, sorted.
    fn static_candidates(&self, u: u32) -> Vec<u32> {
        let mut ms = self.allowed_machines(u);
        if !self.refused[u as usize].is_empty() {
            ms.retain(|&m| !self.refuses(m, u));
        }
        ms
    }

    /// Every machine `MachineID=` and `MachineMetadata=` allow, sorted.
    fn allowed_machines(&self, u: u32) -> Vec<u32> {
        if let Some(id) = self.req(u).required_machine() {
            let mut ids = self.id_matches(id);
            ids.retain(|&m| self.requirements_allow(u, m));
            return ids;
        }
        match &self.classes[self.class_of[u as usize] as usize].eligible {
            None => (0..self.machines.len() as u32).collect(),
            Some(e) => e.clone(),
        }
    }

    /// The first (by ID) of the machines `MachineID=` and `MachineMetadata=` allow and that do not refuse
    /// the name, and their number.
    fn static_span(&self, u: u32) -> (Option<u32>, usize) {
        if self.req(u).required_machine().is_some() || !self.refused[u as usize].is_empty() {
            let ids = self.static_candidates(u);
            return (ids.first().copied(), ids.len());
        }
        match &self.classes[self.class_of[u as usize] as usize].eligible {
            None => (
                (!self.machines.is_empty()).then_some(0),
                self.machines.len(),
            ),
            Some(e) => (e.first().copied(), e.len()),
        }
    }

    /// Why `u` fits none of `candidates` (machines that pass every static check).
    fn unplaceable(&self, u: u32, candidates: &[u32]) -> Dec {
        self.unplaceable_span(u, (candidates.first().copied(), candidates.len()))
    }

    /// [`Scheduler::unplaceable`] from the first candidate and the number of candidates.
    fn unplaceable_span(&self, u: u32, (first, count): (Option<u32>, usize)) -> Dec {
        let Some(m) = first else {
            if !self.refused[u as usize].is_empty() {
                let allowed = self.allowed_machines(u);
                if !allowed.is_empty() {
                    return Dec::Unplaceable(self.refused_reason(u, &allowed));
                }
            }
            let considered = match self.req(u).required_machine() {
                Some(id) => self.id_matches(id).len(),
                None => self.machines.len(),
            };
            return Dec::Unplaceable(Reason::MetadataUnmatched {
                requirement: render_metadata(&self.req(u).metadata),
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
        let me = self.units[u as usize];
        let conflicts = |w: u32| {
            let other = self.units[w as usize];
            me.requirements.conflicts_with(other.name.as_str())
                || other.requirements.conflicts_with(me.name.as_str())
        };
        let related = |w: u32| {
            self.replaces[u as usize].contains(&w) || self.replaced_by[u as usize].contains(&w)
        };
        let blocker = self.on_machine[m as usize]
            .iter()
            .copied()
            .filter(|&w| w != u && (conflicts(w) || related(w)))
            .min();
        let Some(blocker) = blocker else {
            // Not expected: once placed, units stay, and blocked units are retried when a reservation
            // is given up.
            debug_assert!(false, "no unit blocks {} on machine {m}", me.name);
            return Reason::NoRoom { machines };
        };
        Reason::ConflictsEverywhere {
            machines,
            unit: self.units[blocker as usize].name.clone(),
            machine: self.machines[m as usize].id.clone(),
            replaces: !conflicts(blocker),
        }
    }
}
