//! Placement for the agent: one [`Planner`] kept across passes, fed only what changed since the last
//! pass.
//!
//! Every pass hands [`AgentPlanner::update`] the live machines and the registry's active units (with the
//! claim the agent counts for each). It compares them with what it fed the planner last (content hash,
//! desired state and claim per unit; the whole [`MachineInfo`] per machine), parses the `[X-Fleet]`
//! requirements of new or changed content only, and applies the differences as one batch
//! ([`Planner::apply`]): the plan is exactly [`fleet_sched::placement::schedule`]'s on the same inputs
//! (the planner's property tests), at a cost proportional to what changed plus one comparison per unit
//! and machine.
//!
//! Coalescing, with a bound on the delay: the agent runs a pass 5 ms after the first event that wakes it
//! (etcd watch, gossip, systemd), and whatever arrived since the previous pass (any number of changes,
//! also those that arrived while that pass ran) is one batch here. A change therefore waits at most 5 ms
//! plus the pass in progress.

use std::collections::{BTreeSet, HashMap};

use fleet_sched::placement::{Change, MachineInfo, PassStats, Plan, Planner, UnitInfo};
use fleet_sched::{DesiredState, MachineId, Requirements, UnitFile, UnitHash, UnitName};

/// Keeps of the live `machines` those the plan is made over (`fleet_decide::plan`): this machine `me`,
/// not the `suspects` (their units' taker polls their lease), and not the machines that said they
/// cannot take units (`refusing`: their lease does not vouch for them) while at least half of the
/// others can.
pub fn plan_machines(
    machines: &mut Vec<MachineInfo>,
    me: &MachineId,
    suspects: &BTreeSet<MachineId>,
    refusing: &BTreeSet<MachineId>,
) {
    let view: Vec<fleet_decide::Standing> = machines
        .iter()
        .map(|m| fleet_decide::Standing {
            itself: m.id == *me,
            suspected: suspects.contains(&m.id),
            refuses: refusing.contains(&m.id),
        })
        .collect();
    let mut keep = fleet_decide::plan_over(&view).into_iter();
    machines.retain(|_| keep.next().unwrap_or(false));
}

/// One active unit of the registry, as the agent reads it for placement.
pub struct UnitInput<'a> {
    /// Its name.
    pub name: &'a UnitName,
    /// The hash of its content.
    pub hash: UnitHash,
    /// Its content (parsed for its requirements when the hash is new).
    pub file: &'a UnitFile,
    /// What the user asked for.
    pub desired: DesiredState,
    /// The live machine whose claim counts for placement, if any.
    pub claim: Option<MachineId>,
}

/// What was fed to the planner for one unit.
struct Fed {
    hash: UnitHash,
    desired: DesiredState,
    claim: Option<MachineId>,
    /// Whether its requirements are valid (an invalid unit is not placed and not fed).
    valid: bool,
    /// The update that last saw it.
    seen: u64,
}

/// The agent's placement state; see the [module documentation](self).
#[derive(Default)]
pub struct AgentPlanner {
    planner: Option<Planner>,
    units: HashMap<UnitName, Fed>,
    machines: HashMap<MachineId, MachineInfo>,
    epoch: u64,
}

impl AgentPlanner {
    /// An empty one: the first update builds the planner from the whole inputs.
    pub fn new() -> AgentPlanner {
        AgentPlanner::default()
    }

    /// Brings the planner to these inputs (machines sorted by ID or not; one entry per unit name) in
    /// one batch, and returns what the pass did.
    pub fn update<'a>(
        &mut self,
        machines: Vec<MachineInfo>,
        units: impl IntoIterator<Item = UnitInput<'a>>,
    ) -> PassStats {
        self.epoch += 1;
        let epoch = self.epoch;
        let mut changes = Vec::new();

        // Machines: the first entry of a repeated ID counts.
        let mut live: HashMap<MachineId, MachineInfo> = HashMap::with_capacity(machines.len());
        for m in machines {
            live.entry(m.id.clone()).or_insert(m);
        }
        self.machines.retain(|id, _| {
            let kept = live.contains_key(id);
            if !kept {
                changes.push(Change::MachineGone(id.clone()));
            }
            kept
        });
        for (id, m) in live {
            if self.machines.get(&id) != Some(&m) {
                changes.push(Change::Machine(m.clone()));
                self.machines.insert(id, m);
            }
        }

        // Units: parse only new content; a unit absent from this update is gone.
        let mut seen = 0usize;
        for u in units {
            let fed = match self.units.get_mut(u.name) {
                Some(f) if f.seen == epoch => continue, // repeated name: the first counts
                Some(f) if f.hash == u.hash && f.desired == u.desired => {
                    f.seen = epoch;
                    seen += 1;
                    if f.claim != u.claim {
                        if f.valid {
                            changes.push(Change::Claim {
                                unit: u.name.clone(),
                                machine: u.claim.clone(),
                            });
                        }
                        f.claim = u.claim;
                    }
                    continue;
                }
                Some(f) => Some(f.valid),
                None => None,
            };
            seen += 1;
            let valid = match Requirements::from_unit(u.name, u.file) {
                Ok(req) => {
                    let mut info = UnitInfo::new(u.name.clone(), req, u.desired);
                    info.claim = u.claim.clone();
                    changes.push(Change::Unit(info));
                    true
                }
                Err(e) => {
                    tracing::warn!(unit = %u.name, "invalid requirements, not placed: {e}");
                    if fed == Some(true) {
                        changes.push(Change::UnitGone(u.name.clone()));
                    }
                    false
                }
            };
            self.units.insert(
                u.name.clone(),
                Fed {
                    hash: u.hash,
                    desired: u.desired,
                    claim: u.claim,
                    valid,
                    seen: epoch,
                },
            );
        }
        if seen != self.units.len() {
            self.units.retain(|name, f| {
                let kept = f.seen == epoch;
                if !kept && f.valid {
                    changes.push(Change::UnitGone(name.clone()));
                }
                kept
            });
        }

        match &mut self.planner {
            Some(p) => p.apply(changes),
            None => {
                // The first pass: build from the whole inputs (the changes are exactly those).
                let mut p = Planner::new(&[], &[]);
                let stats = p.apply(changes);
                self.planner = Some(p);
                stats
            }
        }
    }

    /// The plan for the inputs of the last update (empty before the first).
    pub fn plan(&self) -> &Plan {
        static EMPTY: std::sync::OnceLock<Plan> = std::sync::OnceLock::new();
        match &self.planner {
            Some(p) => p.plan(),
            None => EMPTY.get_or_init(Plan::default),
        }
    }

    /// Whether the unit was placed with valid requirements in the last update (an invalid one is
    /// neither placed nor run).
    pub fn placeable(&self, name: &UnitName) -> bool {
        self.units.get(name).is_some_and(|f| f.valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_sched::placement::{schedule, Decision};

    fn id(s: &str) -> MachineId {
        MachineId::parse(s).unwrap()
    }

    fn file(xfleet: &str) -> UnitFile {
        UnitFile::parse(&format!(
            "[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}"
        ))
        .unwrap()
    }

    struct Input {
        name: UnitName,
        file: UnitFile,
        desired: DesiredState,
        claim: Option<MachineId>,
    }

    fn input(name: &str, xfleet: &str) -> Input {
        Input {
            name: UnitName::parse(name).unwrap(),
            file: file(xfleet),
            desired: DesiredState::Launched,
            claim: None,
        }
    }

    fn feed(p: &mut AgentPlanner, ms: &[MachineInfo], us: &[Input]) -> PassStats {
        p.update(
            ms.to_vec(),
            us.iter().map(|u| UnitInput {
                name: &u.name,
                hash: u.file.hash(),
                file: &u.file,
                desired: u.desired,
                claim: u.claim.clone(),
            }),
        )
    }

    /// What `schedule` gives on the same inputs (invalid units left out, as the agent does).
    fn expected(ms: &[MachineInfo], us: &[Input]) -> Plan {
        let infos: Vec<UnitInfo> = us
            .iter()
            .filter_map(|u| {
                let req = Requirements::from_unit(&u.name, &u.file).ok()?;
                let mut i = UnitInfo::new(u.name.clone(), req, u.desired);
                i.claim = u.claim.clone();
                Some(i)
            })
            .collect();
        schedule(ms, &infos)
    }

    #[test]
    fn every_update_gives_schedule_s_plan_and_only_changes_are_applied() {
        let mut ms = vec![
            MachineInfo::new(id("m1")),
            MachineInfo::new(id("m2")).with_metadata("role", "db"),
            MachineInfo::new(id("m3")),
        ];
        let mut us = vec![
            input("a.service", ""),
            input("b.service", "Conflicts=a.service"),
            input("db.service", "MachineMetadata=role=db"),
            input("g.service", "Global=true"),
            input("bad.service", "Global=true\nMachineOf=a.service"),
        ];
        let mut p = AgentPlanner::new();
        let first = feed(&mut p, &ms, &us);
        assert_eq!(p.plan(), &expected(&ms, &us));
        assert!(first.changes >= ms.len() + 4);
        assert!(
            !p.placeable(&us[4].name),
            "invalid requirements are not placed"
        );
        assert!(p.placeable(&us[0].name));

        // Nothing changed: an empty batch.
        let again = feed(&mut p, &ms, &us);
        assert_eq!(again.changes, 0);
        assert_eq!(p.plan(), &expected(&ms, &us));

        // Claims follow the plan: only claims are applied.
        for u in us.iter_mut() {
            if let Some(Decision::On(m)) = p.plan().decision(&u.name).cloned() {
                u.claim = Some(m);
            }
        }
        let claims = feed(&mut p, &ms, &us);
        assert_eq!(claims.changes, 3);
        assert_eq!(p.plan(), &expected(&ms, &us));

        // A machine dies, a unit's content changes, one is destroyed, one is submitted.
        let dead = ms.remove(0);
        for u in us.iter_mut() {
            if u.claim.as_ref() == Some(&dead.id) {
                u.claim = None;
            }
        }
        us[1] = Input {
            claim: us[1].claim.clone(),
            ..input("b.service", "MachineMetadata=role=db")
        };
        us.remove(2);
        us.push(input("c.service", "Conflicts=b.service"));
        feed(&mut p, &ms, &us);
        assert_eq!(p.plan(), &expected(&ms, &us));
        assert!(p
            .plan()
            .decision(&UnitName::parse("db.service").unwrap())
            .is_none());

        // Metadata change and refused names come with the machine.
        ms[0] = MachineInfo::new(id("m2"))
            .refusing(UnitName::parse("c.service").unwrap(), "the host has one");
        ms.push(MachineInfo::new(id("m4")).with_metadata("role", "db"));
        feed(&mut p, &ms, &us);
        assert_eq!(p.plan(), &expected(&ms, &us));

        // The invalid unit fixed, then made inactive (left out by the caller): placed, then gone.
        us[3] = input("bad.service", "Global=true");
        feed(&mut p, &ms, &us);
        assert!(p.placeable(&us[3].name));
        assert_eq!(p.plan(), &expected(&ms, &us));
        us.remove(3);
        feed(&mut p, &ms, &us);
        assert_eq!(p.plan(), &expected(&ms, &us));
        assert!(p
            .plan()
            .decision(&UnitName::parse("bad.service").unwrap())
            .is_none());
    }
}
