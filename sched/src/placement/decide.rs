//! Step 3 of `schedule`, written once: the order in which the non-global units left after the
//! reservations are decided (`MachineOf=` targets first, units that others replace after those, then by
//! class and name), the decision of one unit, and the retry after a reservation was given up.
//!
//! Two callers run it: [`engine`](super::engine) over every unit of a full plan, and the
//! [`planner`](super::planner) over the `MachineOf=`/`Replaces=` groups of the units it replays. Each
//! states how to read and change its own state through [`Host`]; units are the caller's handles (unit
//! indexes or unit slots), and the lists below hold *local* indexes (positions in the caller's units,
//! sorted by name).

use std::collections::BTreeSet;

use super::engine::{render_metadata, Dec, NONE};
use super::Reason;
use crate::{Requirements, UnitName};

/// What a `MachineOf=` name refers to.
pub(super) enum Target {
    /// No active unit has that name.
    Missing,
    /// An active global unit.
    Global(u32),
    /// An active non-global unit (always one of the units being decided).
    Unit(u32),
}

/// The state `schedule`'s rules read and change. `u` is a unit handle, `m` a machine handle.
pub(super) trait Host {
    /// The unit at local index `i`, and the local index of unit `u`.
    fn unit_at(&self, i: usize) -> u32;
    fn local(&self, u: u32) -> usize;
    fn req(&self, u: u32) -> &Requirements;
    fn name(&self, u: u32) -> &UnitName;
    /// Its claim if on a live machine, or `NONE`.
    fn claim(&self, u: u32) -> u32;
    /// The machine it is placed on, or `NONE`.
    fn at(&self, u: u32) -> u32;
    /// The units it replaces (not circularly), by name.
    fn replaces(&self, u: u32) -> &[u32];
    fn target(&self, name: &str) -> Target;
    /// Whether global unit `g` runs anywhere, and on `m`.
    fn global_placed(&self, g: u32, decision: &[Option<Dec>]) -> bool;
    fn global_on(&self, g: u32, m: u32, decision: &[Option<Dec>]) -> bool;
    fn place(&mut self, u: u32, m: u32);
    /// Takes a placed non-global unit off its machine.
    fn unplace(&mut self, u: u32);
    /// Creates the ordered set of the unit's `MachineMetadata=` class if it needs one.
    fn ensure_pool(&mut self, u: u32);
    /// Reasons that need no machine to be examined.
    fn precheck(&self, u: u32) -> Option<Reason>;
    /// `MachineID=` and `MachineMetadata=` allow `m`.
    fn requirements_allow(&self, u: u32, m: u32) -> bool;
    /// Whether machine `m` refuses the name of `u`.
    fn refuses(&self, m: u32, u: u32) -> bool;
    /// `requirements_allow` and not `refuses`.
    fn static_ok(&self, u: u32, m: u32) -> bool {
        self.requirements_allow(u, m) && !self.refuses(m, u)
    }
    /// Whether a unit on `m` conflicts with `u`, or is in a `Replaces=` relation with it.
    fn blocked(&self, u: u32, m: u32) -> bool;
    /// Why `u` cannot go to any of `allowed` (sorted by ID, not empty), which all refuse its name.
    fn refused_reason(&self, u: u32, allowed: &[u32]) -> Reason;
    /// Machines whose full or short ID is `id`, sorted by ID.
    fn id_matches(&self, id: &str) -> Vec<u32>;
    /// The first of `ms` by (load, ID) that `fits`.
    fn by_load(&self, ms: Vec<u32>, fits: &dyn Fn(u32) -> bool) -> Option<u32>;
    /// The first machine by (load, ID) of the unit's `MachineMetadata=` class (every machine without
    /// one) that `fits`.
    fn least_loaded(&self, u: u32, fits: &dyn Fn(u32) -> bool) -> Option<u32>;
    /// Live machines sorted by ID.
    fn machines_by_id(&self) -> Vec<u32>;
    /// The first (by ID) of the machines the static checks allow, and their number.
    fn static_span(&self, u: u32) -> (Option<u32>, usize);
    /// Why `u` fits none of the machines of `span`.
    fn unplaceable_span(&self, u: u32, span: (Option<u32>, usize)) -> Dec;
}

/// The `MachineOf=` and `Replaces=` graph of the units being decided, in local indexes.
pub(super) struct Graph {
    /// `MachineOf=` targets (non-global), and the inverse outside cycles.
    targets: Vec<Vec<u32>>,
    pub(super) followers: Vec<Vec<u32>>,
    /// Number of undecided targets of each unit.
    pub(super) waiting: Vec<u32>,
    replaces: Vec<Vec<u32>>,
    replaced_by: Vec<Vec<u32>>,
}

impl Graph {
    /// The graph of `targets`, `replaces` and `replaced_by` (local indexes); units in a `MachineOf=`
    /// cycle are decided unplaceable here, and do not wait or get waited for.
    pub(super) fn new<H: Host>(
        h: &H,
        targets: Vec<Vec<u32>>,
        replaces: Vec<Vec<u32>>,
        replaced_by: Vec<Vec<u32>>,
        decision: &mut [Option<Dec>],
    ) -> Graph {
        let n = targets.len();
        for members in cycles(&targets) {
            let mut names: Vec<UnitName> = members
                .iter()
                .map(|&i| h.name(h.unit_at(i as usize)).clone())
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
        Graph {
            targets,
            followers,
            waiting,
            replaces,
            replaced_by,
        }
    }

    /// Decides every undecided unit, on top of the reservations (`reserved`, local indexes): the order
    /// of `schedule`'s module documentation, then the retry if a reservation was given up.
    pub(super) fn decide_all<H: Host>(
        mut self,
        h: &mut H,
        mut reserved: Vec<bool>,
        decision: &mut [Option<Dec>],
    ) {
        // Long on purpose: the ordering described in the module docs (the queue of ready and deferred
        // units, the reservations released and taken back) is one algorithm over shared local state.
        let n = self.targets.len();
        let mut freed = false;
        // Replaced units wait for the units that replace them.
        let mut pending: Vec<u32> = (0..n)
            .map(|v| {
                self.replaced_by[v]
                    .iter()
                    .filter(|&&u| decision[u as usize].is_none())
                    .count() as u32
            })
            .collect();
        // A unit that others wait for inherits their class, so that a claim is never held back behind a
        // newcomer by what it waits for (its MachineOf targets, the units replacing it, and theirs).
        let mut class: Vec<u8> = (0..n)
            .map(|i| self::class(h, h.unit_at(i), reserved[i]))
            .collect();
        let mut work: Vec<u32> = (0..n as u32).filter(|&u| class[u as usize] < 2).collect();
        while let Some(w) = work.pop() {
            let c = class[w as usize];
            let waits_for = self.targets[w as usize]
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
            if decision[u as usize].is_none() && self.waiting[u as usize] == 0 {
                if pending[u as usize] == 0 {
                    ready.insert(key(u));
                } else {
                    deferred.insert(u);
                }
            }
        }
        while let Some(i) = ready
            .pop_first()
            .map(|(_, u)| u)
            .or_else(|| deferred.pop_first())
        {
            let ui = i as usize;
            let u = h.unit_at(ui);
            let dec = if reserved[ui] {
                Dec::On(h.at(u))
            } else {
                // A unit may take the machine of the units it replaces: their reservations do not count
                // while it is decided, and stay only where it did not go.
                // Through a chain too: a replaced unit would take the machine of the ones it replaces.
                let released: Vec<u32> =
                    replaced_chain(&self.replaces[ui], |v| &self.replaces[v as usize])
                        .into_iter()
                        .filter(|&v| reserved[v as usize] && decision[v as usize].is_none())
                        .collect();
                for &v in &released {
                    h.unplace(h.unit_at(v as usize));
                }
                h.ensure_pool(u);
                let dec = decide(h, u, decision);
                if let Dec::On(m) = dec {
                    h.place(u, m);
                }
                // Reserve again, targets before followers, those that still can be; the others (and
                // their followers) are decided anew.
                let mut back = released;
                loop {
                    let before = back.len();
                    let mut k = 0;
                    while k < back.len() {
                        let v = h.unit_at(back[k] as usize);
                        if can_reserve(h, v, &reserved, decision) {
                            h.place(v, h.claim(v));
                            back.remove(k);
                        } else {
                            k += 1;
                        }
                    }
                    if back.len() == before {
                        break;
                    }
                }
                for v in back {
                    reserved[v as usize] = false;
                    self.release_followers(h, v, &mut reserved, decision);
                    freed = true;
                }
                dec
            };
            decision[ui] = Some(dec);
            for &f in &self.followers[ui] {
                self.waiting[f as usize] -= 1;
                if self.waiting[f as usize] == 0 {
                    if pending[f as usize] == 0 {
                        ready.insert(key(f));
                    } else {
                        deferred.insert(f);
                    }
                }
            }
            for &v in &self.replaces[ui] {
                pending[v as usize] -= 1;
                if pending[v as usize] == 0 && deferred.remove(&v) {
                    ready.insert(key(v));
                }
            }
        }
        debug_assert!(decision.iter().all(Option::is_some));
        if freed {
            retry(h, decision);
        }
    }

    /// Drops the reservations of the units that follow `v` (and of theirs): `v` is moving.
    fn release_followers<H: Host>(
        &self,
        h: &mut H,
        v: u32,
        reserved: &mut [bool],
        decision: &[Option<Dec>],
    ) {
        let mut stack = vec![v];
        while let Some(t) = stack.pop() {
            for &f in &self.followers[t as usize] {
                if reserved[f as usize] && decision[f as usize].is_none() {
                    let u = h.unit_at(f as usize);
                    if h.at(u) != NONE {
                        h.unplace(u);
                    }
                    reserved[f as usize] = false;
                    stack.push(f);
                }
            }
        }
    }
}

/// After a reservation was given up, units decided earlier may have been kept off a machine by it:
/// those that are blocked, or follow a unit that was not placed, are decided again (by name, until
/// nothing changes). From here on units are only added, so what is still blocked stays blocked.
fn retry<H: Host>(h: &mut H, decision: &mut [Option<Dec>]) {
    loop {
        let mut changed = false;
        for i in 0..decision.len() {
            let again = matches!(
                decision[i],
                Some(Dec::Blocked { .. }) | Some(Dec::Unplaceable(Reason::MachineOfNotPlaced(_)))
            );
            let u = h.unit_at(i);
            if !again || h.req(u).global {
                continue;
            }
            h.ensure_pool(u);
            let dec = decide(h, u, decision);
            if let Dec::On(m) = dec {
                h.place(u, m);
                changed = true;
            }
            decision[i] = Some(dec);
        }
        if !changed {
            return;
        }
    }
}

/// Whether the live claim of `u` can be reserved: on a live machine that its `MachineID=`/
/// `MachineMetadata=` accept and that does not refuse it, its `MachineOf=` targets reserved on (or,
/// global, running on) the same machine, and nothing already there blocking it.
pub(super) fn can_reserve<H: Host>(
    h: &H,
    u: u32,
    reserved: &[bool],
    decision: &[Option<Dec>],
) -> bool {
    let m = h.claim(u);
    if m == NONE || h.req(u).global || h.precheck(u).is_some() || !h.static_ok(u, m) {
        return false;
    }
    let with_targets = h.req(u).machine_of.iter().all(|t| match h.target(t) {
        Target::Missing => false,
        Target::Global(g) => h.global_on(g, m, decision),
        Target::Unit(t) => {
            let i = h.local(t);
            decision[i].is_none() && reserved[i] && h.at(t) == m
        }
    });
    with_targets && !h.blocked(u, m)
}

/// Processing class of a non-global unit once nothing it waits for is pending (lower first, then by
/// name):
/// 0. without a reservation, and it replaces a claimed unit that is free to move: it may take that
///    machine, so it goes before anything could be blocked by the reservation it may end;
/// 1. claimed on a live machine;
/// 2. everything else (new units, claims on dead machines).
fn class<H: Host>(h: &H, u: u32, reserved: bool) -> u8 {
    if !reserved && h.replaces(u).iter().any(|&v| movable_claim(h, v).is_some()) {
        0
    } else if h.claim(u) != NONE {
        1
    } else {
        2
    }
}

/// The units `direct` names and, depth first, the units each of those replaces, each once: a unit
/// that replaces `v` takes the place `v` would take, which may be the claim of a unit `v` replaces.
/// `Replaces=` cycles are already left out of `next`, so the walk ends.
fn replaced_chain<'a>(direct: &'a [u32], next: impl Fn(u32) -> &'a [u32]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let mut stack: Vec<&[u32]> = vec![direct];
    while let Some(top) = stack.last_mut() {
        let Some((&v, rest)) = top.split_first() else {
            stack.pop();
            continue;
        };
        *top = rest;
        if !out.contains(&v) {
            out.push(v);
            stack.push(next(v));
        }
    }
    out
}

/// The live claim of `v` if it is free to move (no `MachineOf=`, no `MachineID=`).
fn movable_claim<H: Host>(h: &H, v: u32) -> Option<u32> {
    let req = h.req(v);
    let m = h.claim(v);
    (m != NONE && req.machine_of.is_empty() && req.required_machine().is_none()).then_some(m)
}

/// Decides one non-global unit; its `MachineOf=` targets are already decided.
pub(super) fn decide<H: Host>(h: &H, u: u32, decision: &[Option<Dec>]) -> Dec {
    // Long on purpose: the candidate order of one unit (own claim, replaced claims, then by load, per
    // candidate pool) is one loop with early exits, then why it fits nowhere.
    if let Some(reason) = h.precheck(u) {
        return Dec::Unplaceable(reason);
    }
    let req = h.req(u);
    // MachineOf: the one machine of the non-global targets, within the machines of the global ones.
    let mut fixed: Option<(u32, &str)> = None;
    let mut within: Vec<u32> = Vec::new();
    for t in &req.machine_of {
        let placed = match h.target(t) {
            Target::Missing => None,
            Target::Global(g) => h.global_placed(g, decision).then_some(Err(g)),
            Target::Unit(v) => match &decision[h.local(v)] {
                Some(Dec::On(m)) => Some(Ok(*m)),
                _ => None,
            },
        };
        match placed {
            Some(Ok(m)) => match fixed {
                Some((other, name)) if other != m => {
                    return Dec::Unplaceable(Reason::MachineOfApart(vec![
                        name.to_owned(),
                        t.clone(),
                    ]))
                }
                _ => fixed = Some((m, t.as_str())),
            },
            Some(Err(g)) => within.push(g),
            None => return Dec::Unplaceable(Reason::MachineOfNotPlaced(t.clone())),
        }
    }
    let in_within = |m: u32| within.iter().all(|&g| h.global_on(g, m, decision));
    let allowed =
        |m: u32| !matches!(fixed, Some((f, _)) if f != m) && in_within(m) && h.static_ok(u, m);
    let fits = |m: u32| allowed(m) && !h.blocked(u, m);

    // Its own claim, then the claims of the units it replaces, directly or through a chain (when they
    // are free to move).
    let own = h.claim(u);
    if own != NONE && fits(own) {
        return Dec::On(own);
    }
    for v in replaced_chain(h.replaces(u), |v| h.replaces(v)) {
        match movable_claim(h, v) {
            Some(vm) if h.at(v) == NONE && fits(vm) => return Dec::On(vm),
            _ => {}
        }
    }

    // Every candidate by (load, ID).
    let found = if let Some((m, _)) = fixed {
        h.by_load(vec![m], &fits)
    } else if let Some(id) = req.required_machine() {
        h.by_load(h.id_matches(id), &fits)
    } else {
        h.least_loaded(u, &fits)
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
        if h.requirements_allow(u, m) && h.refuses(m, u) {
            return Dec::Unplaceable(h.refused_reason(u, &[m]));
        }
        if !h.static_ok(u, m) {
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
        let shared: Vec<u32> = h
            .machines_by_id()
            .into_iter()
            .filter(|&m| in_within(m))
            .collect();
        if shared.is_empty() {
            return apart();
        }
        let candidates: Vec<u32> = shared
            .iter()
            .copied()
            .filter(|&m| h.static_ok(u, m))
            .collect();
        if candidates.is_empty() {
            let allowed: Vec<u32> = shared
                .iter()
                .copied()
                .filter(|&m| h.requirements_allow(u, m))
                .collect();
            if !allowed.is_empty() {
                return Dec::Unplaceable(h.refused_reason(u, &allowed));
            }
            return Dec::Unplaceable(Reason::MetadataUnmatched {
                requirement: render_metadata(&req.metadata),
                considered: shared.len(),
            });
        }
        return h.unplaceable_span(u, (candidates.first().copied(), candidates.len()));
    }
    h.unplaceable_span(u, h.static_span(u))
}

/// Strongly connected components of a graph (`MachineOf` follower -> targets, or replacing -> replaced)
/// that are cycles (more than one unit, or a unit pointing at itself). Iterative Tarjan, so long chains
/// do not exhaust the stack.
pub(super) fn cycles(targets: &[Vec<u32>]) -> Vec<Vec<u32>> {
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
