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
//! # Rules (fleet v1's, as `docs/scheduling.md` and the README describe them)
//! - Units whose desired state is `inactive` are ignored: not placed, no load, absent from the plan.
//! - Machines are tried by load (units placed there, global units included), ties broken by machine ID;
//!   the first machine that satisfies every requirement wins.
//! - `MachineID=`: only the machine whose full or 8-character short ID matches.
//! - A machine that refuses the unit's name ([`MachineInfo::refused`]: a unit fleet does not manage has
//!   that name there) never gets it, global or not, claimed there or not.
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
//!   moves to the least loaded other machine. Along a chain (c replaces b, b replaces a claimed a), the
//!   head takes the machine: b would take a's, so c tries a's claim too. A mutual or circular
//!   `Replaces=` (a replaces b, b replaces a, or longer rings) is ignored, and so is a `Replaces=` that
//!   matches a global unit or the unit itself.
//!
//! # Order and stability
//! Global units are decided first, by name. Then every claim that can be kept is *reserved*: a claim on
//! a live machine that its `MachineID=`/`MachineMetadata=` accept, whose `MachineOf=` targets are
//! reserved on the same machine, and that no global unit or earlier reservation blocks. Every unit decided
//! afterwards is checked against the reservations (and counts them in the load), so a newcomer never takes
//! a claimed unit's place: existing placements are never rebalanced. A unit that replaces a reserved one
//! ignores that reservation (and those of the units it replaces through a chain) while it is decided;
//! if it takes that machine, the replaced unit and its followers lose their reservations and are decided
//! anew.
//!
//! The other non-global units are then decided one at a time, in an order that depends only on the inputs:
//! 1. `MachineOf` targets before their followers, and units that others replace after those (unless only
//!    such units are left, which happens only with `MachineOf`/`Replaces` cycles; then by name);
//! 2. units claimed on a live machine, then units that replace a claimed unit, then the rest; a unit that
//!    others wait for is promoted to their rank;
//! 3. by name.
//!
//! A unit first tries its own claim (if on a live machine), then the claims of the units it replaces
//! (each followed, depth first, by those of the units that one replaces), then every candidate machine
//! by load. So a claim is moved only when a rule requires it (a requirement it no
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
//!
//! # Layout
//! This file is the API ([`schedule`], its inputs and its [`Plan`]); `engine` is the scheduler itself
//! (indexes, load, conflict counters, globals, reasons) and `engine::order` the reservations of kept
//! claims; `decide` the order in which the other non-global units are decided and the decision of one
//! unit, run by both `engine` and the incremental [`Planner`] (`planner`).

mod decide;
mod engine;
mod planner;
#[cfg(feature = "testing")]
mod violations;

pub use planner::{Change, PassStats, Planner};

use std::collections::BTreeMap;

use crate::{DesiredState, MachineId, RequirementError, Requirements, UnitName};

/// A live machine as gossip reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInfo {
    /// The machine's ID.
    pub id: MachineId,
    /// Its `k=v` metadata (fleetd's `metadata` setting, or changed at run time through the API).
    pub metadata: BTreeMap<String, String>,
    /// Unit names this machine refuses, and why: a unit fleet does not manage has that name there (a
    /// distro service, the machine's own units, fleetd's own), or the name is reserved. Its agent
    /// announces them (in etcd, so that every agent plans with the same set); no unit of such a name is
    /// placed there.
    pub refused: BTreeMap<UnitName, String>,
}

impl MachineInfo {
    /// A machine without metadata.
    pub fn new(id: MachineId) -> MachineInfo {
        MachineInfo {
            id,
            metadata: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    /// Adds a unit name this machine refuses, and why.
    pub fn refusing(mut self, unit: UnitName, why: &str) -> MachineInfo {
        self.refused.insert(unit, why.to_owned());
        self
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
    /// Every machine allowed by the other requirements refuses the unit's name (a unit fleet does not
    /// manage has that name there, or the name is reserved).
    #[error("every one of the {machines} machine(s) it may run on refuses its name (e.g. {machine}: {why})")]
    NameRefused {
        /// How many machines satisfied the other requirements.
        machines: usize,
        /// The first of them, by ID.
        machine: MachineId,
        /// Why it refuses the name.
        why: String,
    },
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

/// Decides where every active unit runs. Pure and deterministic: the same machines and units, in any
/// order, give the same plan. See the [module documentation](self) for the rules.
pub fn schedule(machines: &[MachineInfo], units: &[UnitInfo]) -> Plan {
    engine::Scheduler::new(machines, units).run()
}
