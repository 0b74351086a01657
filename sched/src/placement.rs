//! Placement: which machine each unit runs on, decided the same way by every agent.
//!
//! There is no leader. Every agent calls [`schedule`] with the same inputs (the units stored in etcd with
//! their current claims, the live machines and their metadata from gossip) and claims, with an etcd
//! transaction, the units the [`Plan`] puts on itself. The function is therefore pure and deterministic:
//! no clock, no randomness, no dependence on the order of the input slices, and stable: a claim on a live
//! machine that still satisfies every requirement is kept (units are never rebalanced).
//!
//! ```
//! use fleet_sched::{schedule, Decision, DesiredState, MachineId, MachineInfo, Requirements};
//! use fleet_sched::{UnitFile, UnitInfo, UnitName};
//!
//! let m = |id: &str| MachineId::parse(id).unwrap();
//! let machines = vec![
//!     MachineInfo::new(m("m1")).with_metadata("role", "web"),
//!     MachineInfo::new(m("m2")).with_metadata("role", "db"),
//! ];
//! let unit = |name: &str, xfleet: &str| {
//!     let name = UnitName::parse(name).unwrap();
//!     let file = UnitFile::parse(&format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}")).unwrap();
//!     let req = Requirements::from_unit(&name, &file).unwrap();
//!     UnitInfo::new(name, req, DesiredState::Launched)
//! };
//! let units = vec![
//!     unit("db.service", "MachineMetadata=role=db\n"),
//!     unit("web.service", "Conflicts=db.service\n").claimed_by(m("m1")),
//!     unit("agent.service", "Global=true\n"),
//! ];
//! let plan = schedule(&machines, &units);
//! assert_eq!(plan.decision(&UnitName::parse("db.service").unwrap()), Some(&Decision::On(m("m2"))));
//! // What the agent on m1 claims (global units need no claim):
//! let (m1, m2) = (m("m1"), m("m2"));
//! let mine: Vec<&str> = plan.claims_of(&m1).map(|u| u.as_str()).collect();
//! assert_eq!(mine, ["web.service"]);
//! assert_eq!(plan.units_on(&m2).count(), 2);
//! ```
//!
//! # Rules (fleet v1's, see `spec/fleet-compat.md`)
//! - Units whose desired state is `inactive` are ignored: not placed, no load, absent from the plan.
//! - Machines are tried by load (units placed there, global units included), ties broken by machine ID;
//!   the first machine that satisfies every requirement wins.
//! - `MachineID=`: only the machine whose full or 8-character short ID matches.
//! - `MachineMetadata=`: values of one key are OR'ed, keys AND'ed, exact match.
//! - `MachineOf=`: only the machine where every named unit is placed (a global target counts on every
//!   machine it runs on). Followers are decided after their targets, so they move with them. Units in a
//!   `MachineOf` cycle are unschedulable; so are their followers.
//! - `Conflicts=`: globs, checked both ways against every unit on the machine (global ones included).
//! - `Global=true`: every machine whose metadata (and `MachineID=`, if any) matches, unless a global unit
//!   decided before it (by name) conflicts there. Global units are decided first and never yield to
//!   non-global ones: a non-global unit avoids the machines where a conflicting global unit runs, and an
//!   existing claim that now conflicts with a global unit is moved.
//! - `Replaces=`: the replacing unit and the replaced one never share a machine; the replacing unit is
//!   decided before the units it replaces and first tries the machine they are claimed on (when they are
//!   free to move, i.e. have no `MachineOf=`/`MachineID=`), so it takes that machine and the replaced unit
//!   moves to the least loaded other machine. A mutual or circular `Replaces=` (a replaces b, b replaces
//!   a, or longer rings) is ignored, and so is a `Replaces=` that matches a global unit or the unit
//!   itself.
//!
//! # Order and stability
//! Global units are decided first, by name. Then every claim that can be kept is *reserved*: a claim on
//! a live machine that its `MachineID=`/`MachineMetadata=` accept, whose `MachineOf=` targets are
//! reserved on the same machine, and that no global unit or earlier reservation blocks. Every unit decided
//! afterwards is checked against the reservations (and counts them in the load), so a newcomer never takes
//! a claimed unit's place: existing placements are never rebalanced. A unit that replaces a reserved one
//! ignores that reservation while it is decided; if it takes that machine, the replaced unit and its
//! followers lose their reservations and are decided anew.
//!
//! The other non-global units are then decided one at a time, in an order that depends only on the inputs:
//! 1. `MachineOf` targets before their followers, and units that others replace after those (unless only
//!    such units are left, which happens only with `MachineOf`/`Replaces` cycles; then by name);
//! 2. units claimed on a live machine, then units that replace a claimed unit, then the rest; a unit that
//!    others wait for is promoted to their rank;
//! 3. by name.
//!
//! A unit first tries its own claim (if on a live machine), then the claims of the units it replaces, then
//! every candidate machine by load. So a claim is moved only when a rule requires it (a requirement it no
//! longer meets, a conflict with another claim or a global unit, a unit that replaces it, a `MachineOf=`
//! target that moved), and re-running [`schedule`] with the plan's decisions as claims yields the same
//! plan (a property test checks both).
//!
//! An unplaceable unit's reason is computed once every unit is decided (for a conflict: the first
//! blocking unit by name on the first candidate machine by ID), so it too depends only on the inputs.
//!
//! Global units count toward the load of every machine they are placed on (fleet counted them on every
//! machine whose metadata matched, ignoring conflicts).
//!
//! # Cost
//! Roughly `O((M + U) log M)` for `M` machines and `U` units in common clusters: a `(load, machine)`
//! ordered set per distinct `MachineMetadata=` requirement matched by many machines, a machine index per
//! metadata pair, and per-machine counters per distinct `Conflicts=` pattern, so that a conflict check costs
//! as many hash lookups as the unit has patterns (each pattern is matched against unit names once, using
//! its literal prefix to narrow the names, or a name lookup when it has no glob characters).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::requirements::glob_match;
use crate::{DesiredState, MachineId, RequirementError, Requirements, UnitName};

/// A live machine as gossip reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInfo {
    /// The machine's ID.
    pub id: MachineId,
    /// Its `k=v` metadata (fleetd's `metadata` setting, or changed at run time through the API).
    pub metadata: BTreeMap<String, String>,
}

impl MachineInfo {
    /// A machine without metadata.
    pub fn new(id: MachineId) -> MachineInfo {
        MachineInfo {
            id,
            metadata: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) one metadata pair.
    pub fn with_metadata(mut self, key: &str, value: &str) -> MachineInfo {
        self.metadata.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// A unit as stored in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    /// The unit's name; names must be unique (for a repeated name, the first entry is used).
    pub name: UnitName,
    /// Its `[X-Fleet]` requirements, from [`Requirements::from_unit`].
    pub requirements: Requirements,
    /// What the user asked for; `inactive` units are ignored.
    pub desired: DesiredState,
    /// The machine currently holding its claim, if any. A machine that is not in the machine list (dead)
    /// counts as no claim. Ignored for global units.
    pub claim: Option<MachineId>,
}

impl UnitInfo {
    /// An unclaimed unit.
    pub fn new(name: UnitName, requirements: Requirements, desired: DesiredState) -> UnitInfo {
        UnitInfo {
            name,
            requirements,
            desired,
            claim: None,
        }
    }

    /// The same unit, claimed by `machine`.
    pub fn claimed_by(mut self, machine: MachineId) -> UnitInfo {
        self.claim = Some(machine);
        self
    }
}

/// Where one unit goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A non-global unit placed (or kept) on this machine.
    On(MachineId),
    /// A global unit: every eligible machine, sorted by ID (never empty).
    Global(Vec<MachineId>),
    /// The unit cannot run anywhere now, and why.
    Unplaceable(Reason),
}

impl Decision {
    /// The machines this decision puts the unit on (none when unplaceable).
    pub fn machines(&self) -> &[MachineId] {
        match self {
            Decision::On(m) => std::slice::from_ref(m),
            Decision::Global(ms) => ms,
            Decision::Unplaceable(_) => &[],
        }
    }

    /// `true` if the unit runs on `machine`.
    pub fn is_on(&self, machine: &MachineId) -> bool {
        match self {
            Decision::On(m) => m == machine,
            Decision::Global(ms) => ms.binary_search(machine).is_ok(),
            Decision::Unplaceable(_) => false,
        }
    }

    /// The reason, when unplaceable.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Decision::Unplaceable(r) => Some(r),
            _ => None,
        }
    }
}

/// Why a unit cannot be placed; its `Display` is a sentence for `fleetctl start`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// There is no live machine at all.
    #[error("no machine is available in the cluster")]
    NoMachines,
    /// The unit's requirements are an invalid combination (normally rejected on submit).
    #[error("its [X-Fleet] requirements are invalid: {0}")]
    Invalid(RequirementError),
    /// A template (`foo@.service`) is never placed; only its instances are.
    #[error("a template unit cannot be placed; start an instance of it instead")]
    Template,
    /// `MachineID=` names no live machine.
    #[error("no live machine has MachineID={0}")]
    MachineIdNotFound(String),
    /// No candidate machine has the required metadata.
    #[error("none of the {considered} candidate machine(s) matches MachineMetadata {requirement}")]
    MetadataUnmatched {
        /// The requirement, e.g. `disk=ssd, region=east or region=west`.
        requirement: String,
        /// How many machines were left after `MachineID=`/`MachineOf=` (all live machines otherwise).
        considered: usize,
    },
    /// A `MachineOf=` unit is unknown, inactive or itself not placed.
    #[error("MachineOf={0} is not placed on any machine")]
    MachineOfNotPlaced(String),
    /// The unit is part of a `MachineOf=` cycle (each must follow another).
    #[error("MachineOf forms a cycle: {}", names(.0))]
    MachineOfCycle(Vec<UnitName>),
    /// The `MachineOf=` units run on no common machine.
    #[error("its MachineOf units are on different machines: {}", .0.join(", "))]
    MachineOfApart(Vec<String>),
    /// Every machine allowed by the other requirements runs a unit it conflicts with (or replaces, or is
    /// replaced by).
    #[error(
        "every one of the {machines} machine(s) it may run on has a unit it {} (e.g. {unit} on {machine})",
        verb(.replaces)
    )]
    ConflictsEverywhere {
        /// How many machines satisfied the other requirements.
        machines: usize,
        /// One blocking unit, on the first such machine.
        unit: UnitName,
        /// That machine.
        machine: MachineId,
        /// The block is a `Replaces=` relation, not `Conflicts=`.
        replaces: bool,
    },
    /// None of the machines allowed by the other requirements can take it (a fallback that the
    /// scheduler is not expected to produce: it names a blocking unit when it can).
    #[error("none of the {machines} machine(s) it may run on can take it")]
    NoRoom {
        /// How many machines satisfied the other requirements.
        machines: usize,
    },
}

fn verb(replaces: &bool) -> &'static str {
    if *replaces {
        "replaces or is replaced by"
    } else {
        "conflicts with"
    }
}

fn names(units: &[UnitName]) -> String {
    units
        .iter()
        .map(UnitName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The result of [`schedule`]: one decision per active unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every unit whose desired state is not `inactive`, by name.
    pub decisions: BTreeMap<UnitName, Decision>,
}

impl Plan {
    /// The decision for `unit` (`None` for inactive or unknown units).
    pub fn decision(&self, unit: &UnitName) -> Option<&Decision> {
        self.decisions.get(unit)
    }

    /// Units that run on `machine`, non-global and global, by name.
    pub fn units_on<'a>(
        &'a self,
        machine: &'a MachineId,
    ) -> impl Iterator<Item = &'a UnitName> + 'a {
        self.decisions
            .iter()
            .filter(move |(_, d)| d.is_on(machine))
            .map(|(n, _)| n)
    }

    /// Non-global units placed on `machine`: what that machine's agent must claim.
    pub fn claims_of<'a>(
        &'a self,
        machine: &'a MachineId,
    ) -> impl Iterator<Item = &'a UnitName> + 'a {
        self.decisions
            .iter()
            .filter(move |(_, d)| matches!(d, Decision::On(m) if m == machine))
            .map(|(n, _)| n)
    }

    /// Units that cannot be placed, with the reason.
    pub fn unplaceable(&self) -> impl Iterator<Item = (&UnitName, &Reason)> {
        self.decisions
            .iter()
            .filter_map(|(n, d)| d.reason().map(|r| (n, r)))
    }

    /// Number of units on each machine that runs at least one.
    pub fn load(&self) -> BTreeMap<&MachineId, usize> {
        let mut load = BTreeMap::new();
        for d in self.decisions.values() {
            for m in d.machines() {
                *load.entry(m).or_insert(0) += 1;
            }
        }
        load
    }
}

#[cfg(feature = "testing")]
impl Plan {
    /// Checks this plan against `machines` and `units` by brute force, independently of how [`schedule`]
    /// works, and describes every broken rule (empty when the plan is sound). Meant for tests and
    /// simulations; it costs `O(units² + units × machines)`.
    ///
    /// Checked: every active unit (and no other) has a decision; a placed unit is on a live machine that
    /// satisfies `MachineID=`, `MachineMetadata=` and `MachineOf=`, and shares it with no unit it conflicts
    /// with (either way) or replaces (either way, circular `Replaces=` ignored); a global unit is on exactly
    /// the eligible machines minus those where a unit it conflicts with runs; an unplaceable unit without
    /// `MachineOf=` could not have been put on any machine.
    pub fn violations(&self, machines: &[MachineInfo], units: &[UnitInfo]) -> Vec<String> {
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

/// Decides where every active unit runs. Pure and deterministic: the same machines and units, in any
/// order, give the same plan. See the [module documentation](self) for the rules.
pub fn schedule(machines: &[MachineInfo], units: &[UnitInfo]) -> Plan {
    Scheduler::new(machines, units).run()
}

// ---------------------------------------------------------------------------------------------------------
// Implementation.

/// FxHash (rustc's): a fast hasher for the integer and short-string keys used here. Not DoS-resistant,
/// which does not matter for data that is already trusted cluster state.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

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

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// No machine / not placed.
const NONE: u32 = u32::MAX;
/// Classes matched by at most this many machines are scanned instead of kept in an ordered set.
const SMALL_CLASS: usize = 32;

/// A distinct `MachineMetadata=` requirement and the machines that satisfy it.
struct Class {
    /// Matching machines by index (sorted); `None` when every machine matches.
    eligible: Option<Vec<u32>>,
    /// Index in `Scheduler::pools` once an ordered set exists for it.
    pool: Option<usize>,
}

/// A decision under construction (machines by index).
enum Dec {
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

struct Scheduler<'a> {
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

fn key(pattern: u32, machine: u32) -> u64 {
    ((pattern as u64) << 32) | machine as u64
}

fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '[', '\\'])
}

fn render_metadata(md: &BTreeMap<String, Vec<String>>) -> String {
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
    fn new(machines_in: &'a [MachineInfo], units_in: &'a [UnitInfo]) -> Scheduler<'a> {
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

    fn run(mut self) -> Plan {
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

    /// `MachineID=` and `MachineMetadata=` allow `m`.
    fn static_ok(&self, u: u32, m: u32) -> bool {
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

    /// Every machine `MachineID=` and `MachineMetadata=` allow, sorted.
    fn static_candidates(&self, u: u32) -> Vec<u32> {
        if let Some(id) = self.req(u).required_machine() {
            let mut ids = self.id_matches(id);
            ids.retain(|&m| self.static_ok(u, m));
            return ids;
        }
        match &self.classes[self.class_of[u as usize] as usize].eligible {
            None => (0..self.machines.len() as u32).collect(),
            Some(e) => e.clone(),
        }
    }

    /// The first (by ID) of the machines `MachineID=` and `MachineMetadata=` allow, and their number.
    fn static_span(&self, u: u32) -> (Option<u32>, usize) {
        if self.req(u).required_machine().is_some() {
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

    /// Non-global units in dependency order (see the module documentation).
    fn place_non_globals(&mut self) {
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
    fn retry(&mut self) {
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
    fn release_followers(&mut self, v: u32, followers: &[Vec<u32>], reserved: &mut [bool]) {
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
    fn can_reserve(&self, u: u32, reserved: &[bool]) -> bool {
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
    fn class(&self, u: u32, reserved: &[bool]) -> u8 {
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
    fn movable_claim(&self, v: u32) -> Option<u32> {
        let req = self.req(v);
        let m = self.claim[v as usize];
        (m != NONE && req.machine_of.is_empty() && req.required_machine().is_none()).then_some(m)
    }

    /// Decides one non-global unit; its MachineOf targets are already decided.
    fn decide(&self, u: u32) -> Dec {
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
    fn ensure_pool(&mut self, u: u32) {
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
fn cycles(targets: &[Vec<u32>]) -> Vec<Vec<u32>> {
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
