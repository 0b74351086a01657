//! Incremental placement: a [`Planner`] keeps the inputs of [`schedule`](super::schedule) and its plan,
//! takes changes in batches, and recomputes only what they can affect, with exactly the plan `schedule`
//! gives on the same inputs (a property test compares them after every batch of random changes).
//!
//! ```
//! use fleet_sched::placement::{Change, Planner};
//! use fleet_sched::{Decision, DesiredState, MachineId, MachineInfo, Requirements, UnitInfo, UnitName};
//!
//! let m = |id: &str| MachineId::parse(id).unwrap();
//! let unit = |name: &str| {
//!     UnitInfo::new(UnitName::parse(name).unwrap(), Requirements::default(), DesiredState::Launched)
//! };
//! let mut planner = Planner::new(&[MachineInfo::new(m("m1")), MachineInfo::new(m("m2"))], &[unit("a.service")]);
//! let a = UnitName::parse("a.service").unwrap();
//! assert_eq!(planner.plan().decision(&a), Some(&Decision::On(m("m1"))));
//! // m1 claims it, then dies: the unit moves to m2.
//! planner.apply([Change::Claim { unit: a.clone(), machine: Some(m("m1")) }]);
//! let stats = planner.apply([Change::MachineGone(m("m1"))]);
//! assert_eq!(planner.plan().decision(&a), Some(&Decision::On(m("m2"))));
//! assert_eq!(stats.units, 1); // only the moved unit was decided again
//! ```
//!
//! # Why a change stays local
//! `schedule` works in three steps (see the [module documentation](super)):
//! 1. global units, by name, on every eligible machine where no earlier global unit conflicts: what lands
//!    on a machine depends only on that machine and the global units;
//! 2. the *reservations*, in `MachineOf=` dependency order: every claim that can be kept. Whether a claim
//!    on machine `m` is kept depends only on `m`, the global units on `m` and the other units claimed on
//!    `m` (a `MachineOf=` target must be reserved on the same machine, a unit that blocks it must be there
//!    too), so claims on different machines never interact;
//! 3. every other unit (the *unreserved*: new units, claims on dead machines or that no longer fit,
//!    unplaceable units) is decided one at a time, by class and name, against the loads and units that the
//!    first two steps left. A reserved unit is decided where it is reserved unless a unit linked to it by
//!    `MachineOf=`/`Replaces=` is unreserved (a unit that replaces it may take its machine; its followers
//!    follow it), and the order in which step 3 decides the units of such linked groups does not depend on
//!    the units outside them.
//!
//! So the planner keeps the result of steps 1 and 2 (loads, conflict counters, reservations) and redoes
//! them only on the machines whose inputs changed; then it replays step 3 for the unreserved units and the
//! `MachineOf=`/`Replaces=` groups they belong to, in `schedule`'s order, on top of the kept state, and
//! undoes that replay afterwards, so the kept state is always "steps 1 and 2 only". In a steady cluster
//! almost every unit is reserved, so a pass costs about the units being moved or unplaceable plus the
//! machines touched. A global unit lands on every machine it fits, and is placed or removed there
//! directly, in one batch: on a machine where nothing placed conflicts with it, step 1 places it and
//! changes nothing else (the global units after it by name and the reservations there did not conflict
//! with it), so only the machines where something does are recomputed; when it goes, only the machines
//! where an unreserved claim conflicts with it are (all of its machines if another global unit conflicts
//! with it). A batch that adds one to the load of every machine of an ordered set (a pool) moves the
//! pool's base instead of its entries, so a global unit on every machine costs about one hash-set insert
//! and one plan entry per machine.
//!
//! Batching: [`Planner::apply`] takes any number of changes and runs one pass; the agent coalesces what
//! arrives within a bounded delay and applies it at once.

mod pass;
mod relations;
mod replay;
mod rules;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::engine::{FxMap, FxSet, NONE};
use super::{MachineInfo, Plan, UnitInfo};
use crate::{DesiredState, MachineId, RequirementError, UnitName};

/// One change to the inputs of placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A machine joined, or its metadata changed.
    Machine(MachineInfo),
    /// A machine left (dead or gone); claims on it count as none until it comes back.
    MachineGone(MachineId),
    /// A unit was submitted or changed (requirements, desired state, claim).
    Unit(UnitInfo),
    /// A unit was destroyed.
    UnitGone(UnitName),
    /// Only the claim of a unit changed (`None`: released). Ignored for an unknown unit.
    Claim {
        /// The unit.
        unit: UnitName,
        /// The machine now holding its claim.
        machine: Option<MachineId>,
    },
}

/// What one pass of [`Planner::apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Changes applied.
    pub changes: usize,
    /// Machines whose reservations (and, for a new machine, new metadata or a global unit with
    /// `Conflicts=` relations, global units) were recomputed.
    pub machines: usize,
    /// Units decided by replaying the last step of `schedule` (unreserved ones and their groups).
    pub units: usize,
    /// Machines a global unit without `Conflicts=` relations was placed on or taken off directly.
    pub global_moves: usize,
}

/// The machines of a pool (the whole cluster, or one `MachineMetadata=` requirement) ordered by
/// `(load, ID)`. Entries hold `load - base`: a change that adds the same to the load of every member (a
/// global unit placed on all of them) moves `base` and no entry.
/// Entries also hold the ID's first 8 bytes as a number, which orders them like the ID does and spares
/// reading the ID itself (another allocation) in almost every comparison.
#[derive(Default)]
struct Pool {
    set: BTreeSet<(i64, u64, Arc<str>, u32)>,
    base: i64,
}

/// The first 8 bytes of `id`, big-endian, zero-padded: ordered like `id` wherever they differ.
fn id_prefix(id: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = id.len().min(8);
    b[..n].copy_from_slice(&id.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

impl Pool {
    fn insert(&mut self, load: u32, key: Arc<str>, m: u32) {
        let prefix = id_prefix(&key);
        self.set.insert((load as i64 - self.base, prefix, key, m));
    }

    fn remove(&mut self, load: u32, key: &Arc<str>, m: u32) {
        let entry = (load as i64 - self.base, id_prefix(key), key.clone(), m);
        self.set.remove(&entry);
    }

    fn clear(&mut self) {
        self.set.clear();
        self.base = 0;
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    /// Members by (load, ID).
    fn machines(&self) -> impl Iterator<Item = u32> + '_ {
        self.set.iter().map(|&(_, _, _, m)| m)
    }
}

/// A live machine and what is placed on it by steps 1 and 2 (and, during a pass, by step 3).
struct Machine {
    info: MachineInfo,
    /// The ID, cheap to clone into pool keys.
    key: Arc<str>,
    load: u32,
    /// Units placed here (global and non-global).
    on: Vec<u32>,
    /// Pools other than 0 the machine belongs to.
    pools: Vec<u32>,
    /// Active non-global units whose claim is this machine.
    claimed: Vec<u32>,
}

/// A distinct `MachineMetadata=` requirement.
struct Class {
    metadata: BTreeMap<String, Vec<String>>,
    /// Active units with it.
    refs: u32,
    /// Whether each machine slot matches.
    member: Vec<bool>,
    /// Matching machines, sorted by ID.
    sorted: Vec<u32>,
    /// Its pool, once one was needed, or `NONE`.
    pool: u32,
}

/// A `Conflicts=` or `Replaces=` glob of at least one active, valid unit.
struct Pattern {
    text: String,
    literal: bool,
    /// Active valid units with it in `Conflicts=`.
    conflict_owners: u32,
    /// Active valid non-global units with it in `Replaces=`.
    replace_owners: Vec<u32>,
}

/// A unit and what is derived from it. Relations hold unit slots.
struct Unit {
    info: UnitInfo,
    /// Desired state other than `inactive`: the unit takes part in placement.
    active: bool,
    invalid: Option<RequirementError>,
    /// Active and `Global=true`.
    global: bool,
    /// Its `MachineMetadata=` class, or `NONE` (no requirement).
    class: u32,
    /// Interned `Conflicts=` patterns (active valid units) and `Replaces=` patterns (active valid
    /// non-global units).
    conflict_pats: Vec<u32>,
    replace_pats: Vec<u32>,
    /// `Conflicts=` patterns of other units that match this unit's name.
    matched_by: Vec<u32>,
    /// `MachineOf=` targets (active, non-global) of an active valid non-global unit, and the inverse.
    targets: Vec<u32>,
    followers: Vec<u32>,
    /// Units matched by its `Replaces=` patterns (active, valid, non-global, not itself), by name, and
    /// the inverse.
    replaces_raw: Vec<u32>,
    replaced_by_raw: Vec<u32>,
    /// The same without the relations inside a `Replaces=` cycle (which are ignored), by name.
    replaces: Vec<u32>,
    replaced_by: Vec<u32>,
    /// The members of its `MachineOf=` cycle, by name, if it is in one.
    cycle: Option<Vec<UnitName>>,
    /// Its claim if on a live machine (active non-global units only), or `NONE`.
    claim: u32,
    /// Reserved on `at` by step 2.
    reserved: bool,
    /// The machine of a placed non-global unit, or `NONE`.
    at: u32,
    /// The machines of a placed global unit.
    global_on: FxSet<u32>,
}

impl Unit {
    fn new(info: UnitInfo) -> Unit {
        Unit {
            info,
            active: false,
            invalid: None,
            global: false,
            class: NONE,
            conflict_pats: Vec::new(),
            replace_pats: Vec::new(),
            matched_by: Vec::new(),
            targets: Vec::new(),
            followers: Vec::new(),
            replaces_raw: Vec::new(),
            replaced_by_raw: Vec::new(),
            replaces: Vec::new(),
            replaced_by: Vec::new(),
            cycle: None,
            claim: NONE,
            reserved: false,
            at: NONE,
            global_on: FxSet::default(),
        }
    }
}

/// Incremental placement with the same result as [`schedule`](super::schedule): it keeps the result of
/// the per-machine steps and replays the last step for what a batch of changes affects (how, and why that
/// gives the same plan: `docs/scheduling.md`).
pub struct Planner {
    ms: Vec<Option<Machine>>,
    free_ms: Vec<u32>,
    by_id: FxMap<MachineId, u32>,
    /// Live machines sorted by ID.
    order: Vec<u32>,
    /// Machines by 8-character short ID.
    short_ids: FxMap<String, Vec<u32>>,
    /// Live machines that refuse a unit name ([`MachineInfo::refused`]), sorted by ID.
    refusals: FxMap<UnitName, Vec<u32>>,
    classes: Vec<Option<Class>>,
    free_classes: Vec<u32>,
    class_ids: FxMap<BTreeMap<String, Vec<String>>, u32>,
    /// Pool 0 holds every machine.
    pools: Vec<Option<Pool>>,
    free_pools: Vec<u32>,

    us: Vec<Option<Unit>>,
    free_us: Vec<u32>,
    /// Every unit (inactive ones included) by name.
    names: FxMap<String, u32>,
    /// Active units by name (for glob prefixes).
    active: BTreeMap<String, u32>,
    /// Active global units by name.
    globals: BTreeMap<String, u32>,
    pats: Vec<Option<Pattern>>,
    free_pats: Vec<u32>,
    pat_ids: FxMap<String, u32>,
    /// Patterns with glob characters (the others are looked up by name).
    globs: BTreeSet<u32>,
    /// Units by the names their `MachineOf=` lists.
    machine_of_index: FxMap<String, Vec<u32>>,
    /// Units by the machine their claim names (live or not).
    claims_by_id: FxMap<MachineId, Vec<u32>>,
    /// Active non-global units not reserved.
    unreserved: FxSet<u32>,

    /// Per `(pattern, machine)`: units there that match the pattern / that own it.
    cnt_match: FxMap<u64, u32>,
    cnt_own: FxMap<u64, u32>,
    /// Per `(pattern, pool)`: machines of the pool holding a unit that matches the pattern, one that
    /// owns it, and either.
    pool_touched: FxMap<u64, [u32; 3]>,

    // Work of the current batch.
    /// Machines whose reservations must be recomputed, and those whose global units must be too.
    dirty: FxSet<u32>,
    dirty_globals: FxSet<u32>,
    /// Global units that joined.
    new_globals: Vec<u32>,
    /// Global units placed or removed directly.
    direct_moves: usize,
    /// Units whose relations must be recomputed.
    affected: FxSet<u32>,
    /// Units whose plan entry must be written again.
    touched: FxSet<u32>,
    /// Global units whose machines changed: `(machine, added)`, in order.
    global_moves: FxMap<u32, Vec<(MachineId, bool)>>,
    /// Units the last replay decided.
    last_decided: Vec<u32>,
    /// Placements made by the replay, undone at the end of the pass: `(unit, machine, placed)`.
    undo: Vec<(u32, u32, bool)>,
    recording: bool,
    changes: usize,
    /// Plan entries of the pass, written at its end.
    writes: Vec<(UnitName, super::Decision)>,
    /// Loads and counters are kept, the ordered sets not (rebuilt before they are read).
    bulk: bool,

    plan: Plan,
}

impl Planner {
    /// A planner for these inputs, with the plan [`schedule`](super::schedule) gives for them (the same
    /// rules for repeated machine IDs and unit names).
    pub fn new(machines: &[MachineInfo], units: &[UnitInfo]) -> Planner {
        let mut p = Planner {
            ms: Vec::new(),
            free_ms: Vec::new(),
            by_id: FxMap::default(),
            order: Vec::new(),
            short_ids: FxMap::default(),
            refusals: FxMap::default(),
            classes: Vec::new(),
            free_classes: Vec::new(),
            class_ids: FxMap::default(),
            pools: vec![Some(Pool::default())],
            free_pools: Vec::new(),
            us: Vec::new(),
            free_us: Vec::new(),
            names: FxMap::default(),
            active: BTreeMap::new(),
            globals: BTreeMap::new(),
            pats: Vec::new(),
            free_pats: Vec::new(),
            pat_ids: FxMap::default(),
            globs: BTreeSet::new(),
            machine_of_index: FxMap::default(),
            claims_by_id: FxMap::default(),
            unreserved: FxSet::default(),
            cnt_match: FxMap::default(),
            cnt_own: FxMap::default(),
            pool_touched: FxMap::default(),
            dirty: FxSet::default(),
            dirty_globals: FxSet::default(),
            new_globals: Vec::new(),
            direct_moves: 0,
            affected: FxSet::default(),
            touched: FxSet::default(),
            global_moves: FxMap::default(),
            last_decided: Vec::new(),
            undo: Vec::new(),
            recording: false,
            changes: 0,
            writes: Vec::new(),
            bulk: false,
            plan: Plan::default(),
        };
        p.sync(machines, units);
        p
    }

    /// The plan for the current inputs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Applies a batch of changes (in order) and updates the plan in one pass.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> PassStats {
        for change in changes {
            self.changes += 1;
            match change {
                Change::Machine(info) => self.upsert_machine(info),
                Change::MachineGone(id) => self.remove_machine(&id),
                Change::Unit(info) => self.upsert_unit(info),
                Change::UnitGone(name) => self.remove_unit(&name),
                Change::Claim { unit, machine } => {
                    if let Some(&u) = self.names.get(unit.as_str()) {
                        self.set_claim(u, machine);
                    }
                }
            }
        }
        self.pass()
    }

    /// Brings the inputs to exactly `machines` and `units` (as [`schedule`](super::schedule) reads them:
    /// the greatest metadata of a repeated machine ID, the first of a repeated unit name) by applying only
    /// the differences, in one pass. Costs a comparison per machine and unit; an agent that knows what
    /// changed should call [`Planner::apply`] instead.
    pub fn sync(&mut self, machines: &[MachineInfo], units: &[UnitInfo]) -> PassStats {
        let mut changes = Vec::new();
        let mut want_m: FxMap<&MachineId, &MachineInfo> = FxMap::default();
        for m in machines {
            let e = want_m.entry(&m.id).or_insert(m);
            if m.metadata > e.metadata {
                *e = m;
            }
        }
        for (id, &slot) in &self.by_id {
            if !want_m.contains_key(id) {
                changes.push(Change::MachineGone(id.clone()));
            } else if want_m[id] != &self.machine(slot).info {
                changes.push(Change::Machine(want_m[id].clone()));
            }
        }
        for (id, m) in &want_m {
            if !self.by_id.contains_key(*id) {
                changes.push(Change::Machine((*m).clone()));
            }
        }
        // By name (the first of a repeated name wins): indexes by name grow in order.
        let mut sorted: Vec<&UnitInfo> = units.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut seen: FxSet<&str> = FxSet::default();
        for u in sorted {
            if !seen.insert(u.name.as_str()) {
                continue;
            }
            match self.names.get(u.name.as_str()) {
                Some(&slot) if self.unit(slot).info == *u => {}
                Some(&slot) if self.same_but_claim(slot, u) => changes.push(Change::Claim {
                    unit: u.name.clone(),
                    machine: u.claim.clone(),
                }),
                _ => changes.push(Change::Unit(u.clone())),
            }
        }
        for name in self.names.keys() {
            if !seen.contains(name.as_str()) {
                changes.push(Change::UnitGone(
                    UnitName::parse(name).expect("stored name"),
                ));
            }
        }
        self.apply(changes)
    }

    /// The current inputs: live machines by ID and units by name.
    pub fn inputs(&self) -> (Vec<MachineInfo>, Vec<UnitInfo>) {
        let machines = self
            .order
            .iter()
            .map(|&m| self.machine(m).info.clone())
            .collect();
        let mut units: Vec<UnitInfo> = self.us.iter().flatten().map(|u| u.info.clone()).collect();
        units.sort_by(|a, b| a.name.cmp(&b.name));
        (machines, units)
    }

    /// The kept state (test oracle, feature `testing`): each reserved unit's machine and each live
    /// machine's load from global units and reservations. A planner built from scratch on the same
    /// inputs must have the same.
    #[cfg(feature = "testing")]
    pub fn kept_state(&self) -> (BTreeMap<UnitName, MachineId>, BTreeMap<MachineId, u32>) {
        let reserved = self
            .us
            .iter()
            .flatten()
            .filter(|u| u.reserved)
            .map(|u| (u.info.name.clone(), self.machine(u.at).info.id.clone()))
            .collect();
        let loads = self
            .order
            .iter()
            .map(|&m| (self.machine(m).info.id.clone(), self.machine(m).load))
            .collect();
        (reserved, loads)
    }

    fn same_but_claim(&self, u: u32, info: &UnitInfo) -> bool {
        let old = &self.unit(u).info;
        old.requirements == info.requirements && old.desired == info.desired
    }

    fn machine(&self, m: u32) -> &Machine {
        self.ms[m as usize].as_ref().expect("live machine")
    }

    fn machine_mut(&mut self, m: u32) -> &mut Machine {
        self.ms[m as usize].as_mut().expect("live machine")
    }

    fn unit(&self, u: u32) -> &Unit {
        self.us[u as usize].as_ref().expect("stored unit")
    }

    fn unit_mut(&mut self, u: u32) -> &mut Unit {
        self.us[u as usize].as_mut().expect("stored unit")
    }

    fn name(&self, u: u32) -> &str {
        self.unit(u).info.name.as_str()
    }

    // ---- Machines -------------------------------------------------------------------------------

    fn upsert_machine(&mut self, info: MachineInfo) {
        if let Some(&m) = self.by_id.get(&info.id) {
            let old = &self.machine(m).info;
            if old.metadata == info.metadata && old.refused == info.refused {
                return;
            }
            // Emptied first, so that leaving and joining pools changes no counter.
            self.clear_machine(m);
            self.set_refusals(m, false);
            self.machine_mut(m).info = info;
            self.set_refusals(m, true);
            self.update_memberships(m);
            self.dirty.insert(m);
            self.dirty_globals.insert(m);
            return;
        }
        let m = match self.free_ms.pop() {
            Some(m) => m,
            None => {
                self.ms.push(None);
                (self.ms.len() - 1) as u32
            }
        };
        let key: Arc<str> = Arc::from(info.id.as_str());
        let pos = self
            .order
            .partition_point(|&o| self.machine(o).info.id < info.id);
        self.order.insert(pos, m);
        self.by_id.insert(info.id.clone(), m);
        self.short_ids
            .entry(info.id.short().to_owned())
            .or_default()
            .push(m);
        self.pools[0]
            .as_mut()
            .expect("pool 0")
            .insert(0, key.clone(), m);
        let id = info.id.clone();
        self.ms[m as usize] = Some(Machine {
            info,
            key,
            load: 0,
            on: Vec::new(),
            pools: Vec::new(),
            claimed: Vec::new(),
        });
        self.set_refusals(m, true);
        self.update_memberships(m);
        for u in self.claims_by_id.get(&id).cloned().unwrap_or_default() {
            self.resolve_claim(u);
        }
        self.dirty.insert(m);
        self.dirty_globals.insert(m);
    }

    fn remove_machine(&mut self, id: &MachineId) {
        let Some(m) = self.by_id.remove(id) else {
            return;
        };
        self.clear_machine(m);
        self.set_refusals(m, false);
        for u in std::mem::take(&mut self.machine_mut(m).claimed) {
            self.unit_mut(u).claim = NONE;
            self.touched.insert(u);
        }
        let mach = self.ms[m as usize].take().expect("live machine");
        self.order.retain(|&o| o != m);
        let short = mach.info.id.short();
        if let Some(list) = self.short_ids.get_mut(short) {
            list.retain(|&o| o != m);
            if list.is_empty() {
                self.short_ids.remove(short);
            }
        }
        for p in std::iter::once(0).chain(mach.pools.iter().copied()) {
            if let Some(pool) = self.pools[p as usize].as_mut() {
                pool.remove(0, &mach.key, m);
            }
        }
        for c in 0..self.classes.len() {
            if let Some(class) = self.classes[c].as_mut() {
                if class.member.get(m as usize).copied().unwrap_or(false) {
                    class.member[m as usize] = false;
                    class.sorted.retain(|&o| o != m);
                }
            }
        }
        self.dirty.remove(&m);
        self.dirty_globals.remove(&m);
        self.free_ms.push(m);
    }

    /// Adds (or removes) live machine `m` to the index of the names it refuses.
    fn set_refusals(&mut self, m: u32, add: bool) {
        let names: Vec<UnitName> = self.machine(m).info.refused.keys().cloned().collect();
        let id = self.machine(m).info.id.clone();
        for name in names {
            let list = self.refusals.entry(name.clone()).or_default();
            let pos = list.partition_point(|&o| {
                self.ms[o as usize].as_ref().expect("live machine").info.id < id
            });
            if add {
                list.insert(pos, m);
            } else {
                if list.get(pos) == Some(&m) {
                    list.remove(pos);
                }
                if list.is_empty() {
                    self.refusals.remove(&name);
                }
            }
        }
    }

    /// Makes the class memberships (and class pools) of an empty machine `m` follow its metadata.
    fn update_memberships(&mut self, m: u32) {
        for c in 0..self.classes.len() as u32 {
            let Some(class) = self.classes[c as usize].as_ref() else {
                continue;
            };
            let now = metadata_matches(&class.metadata, &self.machine(m).info.metadata);
            let was = class.member.get(m as usize).copied().unwrap_or(false);
            if now != was {
                self.set_member(c, m, now);
            }
        }
    }

    /// Adds (or removes) the empty machine `m` to class `c` and its pool.
    fn set_member(&mut self, c: u32, m: u32, member: bool) {
        let key = self.machine(m).key.clone();
        let id = self.machine(m).info.id.clone();
        let pos = {
            let class = self.classes[c as usize].as_ref().expect("class");
            class
                .sorted
                .partition_point(|&o| self.machine(o).info.id < id)
        };
        let class = self.classes[c as usize].as_mut().expect("class");
        if class.member.len() <= m as usize {
            class.member.resize(m as usize + 1, false);
        }
        class.member[m as usize] = member;
        if member {
            class.sorted.insert(pos, m);
        } else {
            class.sorted.remove(pos);
        }
        let pool = class.pool;
        if pool != NONE {
            let set = self.pools[pool as usize].as_mut().expect("pool");
            let mach = self.ms[m as usize].as_mut().expect("live machine");
            if member {
                set.insert(0, key, m);
                mach.pools.push(pool);
            } else {
                set.remove(0, &key, m);
                mach.pools.retain(|&p| p != pool);
            }
        }
    }

    // ---- Units ------------------------------------------------------------------------------------

    fn upsert_unit(&mut self, info: UnitInfo) {
        let Some(&u) = self.names.get(info.name.as_str()) else {
            let u = match self.free_us.pop() {
                Some(u) => u,
                None => {
                    self.us.push(None);
                    (self.us.len() - 1) as u32
                }
            };
            self.names.insert(info.name.as_str().to_owned(), u);
            let claim = info.claim.clone();
            let mut unit = Unit::new(info);
            unit.info.claim = None;
            self.us[u as usize] = Some(unit);
            self.attach(u);
            self.set_claim(u, claim);
            return;
        };
        if self.same_but_claim(u, &info) {
            self.set_claim(u, info.claim);
            return;
        }
        let was_active = self.unit(u).active;
        let now_active = info.desired != DesiredState::Inactive;
        if was_active && now_active && self.unit(u).info.requirements == info.requirements {
            // Launched <-> loaded: nothing placement reads.
            self.unit_mut(u).info.desired = info.desired;
            self.set_claim(u, info.claim);
            return;
        }
        self.detach(u);
        let claim = info.claim.clone();
        let old_claim = self.unit(u).info.claim.clone();
        {
            let unit = self.unit_mut(u);
            unit.info = info;
            unit.info.claim = old_claim;
        }
        self.attach(u);
        self.set_claim(u, claim);
    }

    fn remove_unit(&mut self, name: &UnitName) {
        let Some(u) = self.names.remove(name.as_str()) else {
            return;
        };
        self.set_claim(u, None);
        self.detach(u);
        self.us[u as usize] = None;
        self.touched.remove(&u);
        self.free_us.push(u);
    }

    /// Sets the claim a unit's input names, and the live claim derived from it.
    fn set_claim(&mut self, u: u32, claim: Option<MachineId>) {
        if self.unit(u).info.claim == claim {
            return;
        }
        if let Some(old) = self.unit_mut(u).info.claim.take() {
            if let Some(list) = self.claims_by_id.get_mut(&old) {
                list.retain(|&x| x != u);
                if list.is_empty() {
                    self.claims_by_id.remove(&old);
                }
            }
        }
        if let Some(new) = &claim {
            self.claims_by_id.entry(new.clone()).or_default().push(u);
        }
        self.unit_mut(u).info.claim = claim;
        self.resolve_claim(u);
    }

    /// Recomputes the live claim of `u` (machines dirty where it changed).
    fn resolve_claim(&mut self, u: u32) {
        let unit = self.unit(u);
        let live = match &unit.info.claim {
            Some(id) if unit.active && !unit.global => self.by_id.get(id).copied().unwrap_or(NONE),
            _ => NONE,
        };
        let old = unit.claim;
        if live == old {
            return;
        }
        self.unreserve(u);
        if old != NONE {
            self.machine_mut(old).claimed.retain(|&x| x != u);
            self.dirty.insert(old);
        }
        if live != NONE {
            self.machine_mut(live).claimed.push(u);
            self.dirty.insert(live);
        }
        self.unit_mut(u).claim = live;
        self.touched.insert(u);
    }
}

/// `MachineMetadata=`: for every key, the machine's value is one of the listed ones.
fn metadata_matches(
    md: &BTreeMap<String, Vec<String>>,
    machine: &BTreeMap<String, String>,
) -> bool {
    md.iter()
        .all(|(k, vs)| machine.get(k).is_some_and(|v| vs.contains(v)))
}
