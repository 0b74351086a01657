//! The incremental planner against `schedule`: after every batch of random changes (machines joining,
//! leaving or changing metadata; units submitted, changed, destroyed; claims moving, following the plan
//! or pointing at dead machines; machines refusing unit names), the planner's plan equals `schedule` on the same inputs, the planner's
//! inputs equal the ones the test tracks on its own, and the plan breaks no rule.

use std::collections::BTreeMap;

use fleet_sched::placement::{Change, Planner};
use fleet_sched::testing::{assignment_of, check_assignment, CheckMachine, CheckUnit};
use fleet_sched::{
    schedule, Decision, DesiredState, MachineId, MachineInfo, Requirements, UnitInfo, UnitName,
};
use proptest::prelude::*;

mod common;
use common::{
    big_requirements, claim, desired, machine, made_valid, requirements, unit, units, words,
    MACHINE_IDS, UNIT_NAMES,
};

/// `m` refusing none, one or both of the first and third unit names (bits of `mask`).
fn refusing(mut m: MachineInfo, names: &[String], mask: u8) -> MachineInfo {
    for (bit, i) in [(1u8, 0usize), (2, 2)] {
        if mask & bit != 0 {
            let name = UnitName::parse(&names[i]).unwrap();
            m = m.refusing(name, "a unit fleet does not manage has that name there");
        }
    }
    m
}

/// Which names a machine refuses: mostly none.
fn refusal_mask() -> impl Strategy<Value = u8> + Clone {
    prop_oneof![4 => Just(0u8), 1 => 1..4u8]
}

/// A change before it is made concrete against the current state.
#[derive(Clone, Debug)]
enum Op {
    MachineUp(usize, usize, bool, u8),
    MachineGone(usize),
    Unit(usize, Requirements, DesiredState, Option<String>),
    UnitGone(usize),
    Claim(usize, Option<String>),
    /// The unit's claim becomes what the current plan says (what the agents do).
    FollowPlan(usize),
    /// Every unit's claim follows the plan.
    Converge,
    /// Only the desired state changes.
    Desired(usize, DesiredState),
}

fn op<R, C>(machines: usize, names: usize, req: R, claim: C) -> impl Strategy<Value = Op>
where
    R: Strategy<Value = Requirements> + Clone + 'static,
    C: Strategy<Value = Option<String>> + Clone + 'static,
{
    prop_oneof![
        3 => (0..machines, 0..3usize, any::<bool>(), refusal_mask())
            .prop_map(|(i, r, s, x)| Op::MachineUp(i, r, s, x)),
        2 => (0..machines).prop_map(Op::MachineGone),
        4 => (0..names, req, desired(4), claim.clone()).prop_map(|(i, r, d, c)| Op::Unit(i, r, d, c)),
        1 => (0..names).prop_map(Op::UnitGone),
        3 => (0..names, claim).prop_map(|(i, c)| Op::Claim(i, c)),
        4 => (0..names).prop_map(Op::FollowPlan),
        2 => Just(Op::Converge),
        1 => (0..names, desired(4)).prop_map(|(i, d)| Op::Desired(i, d)),
    ]
}

/// The inputs as the test tracks them, independently of the planner.
#[derive(Default, Debug)]
struct Model {
    machines: BTreeMap<MachineId, MachineInfo>,
    units: BTreeMap<UnitName, UnitInfo>,
}

impl Model {
    fn apply(&mut self, c: &Change) {
        match c {
            Change::Machine(m) => {
                self.machines.insert(m.id.clone(), m.clone());
            }
            Change::MachineGone(id) => {
                self.machines.remove(id);
            }
            Change::Unit(u) => {
                self.units.insert(u.name.clone(), u.clone());
            }
            Change::UnitGone(n) => {
                self.units.remove(n);
            }
            Change::Claim { unit, machine } => {
                if let Some(u) = self.units.get_mut(unit) {
                    u.claim = machine.clone();
                }
            }
        }
    }

    fn machines(&self) -> Vec<MachineInfo> {
        self.machines.values().cloned().collect()
    }

    fn units(&self) -> Vec<UnitInfo> {
        self.units.values().cloned().collect()
    }
}

fn plan_claim(plan: &fleet_sched::Plan, name: &UnitName) -> Option<MachineId> {
    match plan.decision(name) {
        Some(Decision::On(m)) => Some(m.clone()),
        _ => None,
    }
}

/// Makes `op` concrete against the model and the planner's current plan.
fn changes(
    op: &Op,
    model: &Model,
    planner: &Planner,
    ids: &[String],
    names: &[String],
) -> Vec<Change> {
    let id = |s: &str| MachineId::parse(s).unwrap();
    let name = |i: usize| UnitName::parse(&names[i]).unwrap();
    match op {
        Op::MachineUp(i, role, ssd, refused) => vec![Change::Machine(refusing(
            machine(&ids[*i], *role, *ssd),
            names,
            *refused,
        ))],
        Op::MachineGone(i) => vec![Change::MachineGone(id(&ids[*i]))],
        Op::Unit(i, req, desired, claim) => vec![Change::Unit(UnitInfo {
            name: name(*i),
            requirements: req.clone(),
            desired: *desired,
            claim: claim.as_deref().map(id),
        })],
        Op::UnitGone(i) => vec![Change::UnitGone(name(*i))],
        Op::Claim(i, claim) => vec![Change::Claim {
            unit: name(*i),
            machine: claim.as_deref().map(id),
        }],
        Op::FollowPlan(i) => vec![Change::Claim {
            unit: name(*i),
            machine: plan_claim(planner.plan(), &name(*i)),
        }],
        Op::Converge => model
            .units
            .keys()
            .map(|n| Change::Claim {
                unit: n.clone(),
                machine: plan_claim(planner.plan(), n),
            })
            .collect(),
        Op::Desired(i, d) => match model.units.get(&name(*i)) {
            Some(u) => {
                let mut u = u.clone();
                u.desired = *d;
                vec![Change::Unit(u)]
            }
            None => Vec::new(),
        },
    }
}

/// The inputs as the independent checker reads them: machines, and units with their `[X-Fleet]` lines.
fn for_checker(ms: &[MachineInfo], us: &[UnitInfo]) -> (Vec<CheckMachine>, Vec<CheckUnit>) {
    let machines = ms
        .iter()
        .map(|m| CheckMachine {
            id: m.id.to_string(),
            metadata: m.metadata.clone(),
        })
        .collect();
    let units = us
        .iter()
        .map(|u| {
            let r = &u.requirements;
            let mut x: Vec<(String, String)> = Vec::new();
            let mut add = |k: &str, v: &str| x.push((k.to_string(), v.to_string()));
            if let Some(id) = &r.machine_id {
                add("MachineID", id);
            }
            for t in &r.machine_of {
                add("MachineOf", t);
            }
            for (k, vs) in &r.metadata {
                for v in vs {
                    add("MachineMetadata", &format!("{k}={v}"));
                }
            }
            for c in &r.conflicts {
                add("Conflicts", c);
            }
            for p in &r.replaces {
                add("Replaces", p);
            }
            if r.global {
                add("Global", "true");
            }
            CheckUnit {
                name: u.name.to_string(),
                active: u.desired != DesiredState::Inactive,
                xfleet: x,
            }
        })
        .collect();
    (machines, units)
}

/// Runs the batches; fails at the first batch after which the planner and `schedule` disagree.
fn check(
    initial_machines: Vec<MachineInfo>,
    initial_units: Vec<UnitInfo>,
    batches: Vec<Vec<Op>>,
    ids: &[String],
    names: &[String],
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for m in &initial_machines {
        model.apply(&Change::Machine(m.clone()));
    }
    for u in &initial_units {
        model.apply(&Change::Unit(u.clone()));
    }
    let mut planner = Planner::new(&initial_machines, &initial_units);
    let expected = schedule(&model.machines(), &model.units());
    prop_assert_eq!(planner.plan(), &expected, "initial plan");
    let mut log = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let mut cs = Vec::new();
        for op in batch {
            let c = changes(op, &model, &planner, ids, names);
            for c in &c {
                model.apply(c);
            }
            cs.extend(c);
        }
        log.push(cs.clone());
        planner.apply(cs);
        let (ms, us) = (model.machines(), model.units());
        prop_assert_eq!(
            planner.inputs(),
            (ms.clone(), us.clone()),
            "inputs after batch {}",
            b
        );
        let expected = schedule(&ms, &us);
        prop_assert_eq!(
            planner.plan(),
            &expected,
            "after batch {} of {:#?}\nmachines {:#?}\nunits {:#?}",
            b,
            log,
            ms,
            us
        );
        prop_assert_eq!(
            planner.kept_state(),
            Planner::new(&ms, &us).kept_state(),
            "kept state after batch {} of {:#?}",
            b,
            log
        );
        let v = expected.violations(&ms, &us);
        prop_assert!(v.is_empty(), "{v:#?}");
        // The independent checker knows nothing of refused names (a refused global unit would look
        // missing there): only without refusals.
        if ms.iter().any(|m| !m.refused.is_empty()) {
            continue;
        }
        let (cms, cus) = for_checker(&ms, &us);
        let v = check_assignment(&cms, &cus, &assignment_of(planner.plan()));
        prop_assert!(v.is_empty(), "checker: {v:#?}\nunits {us:#?}");
    }
    Ok(())
}

fn initial_machines() -> impl Strategy<Value = Vec<MachineInfo>> {
    prop::sample::subsequence(MACHINE_IDS, 0..=MACHINE_IDS.len()).prop_flat_map(|ids| {
        let n = ids.len();
        (
            Just(ids),
            prop::collection::vec((0..3usize, any::<bool>(), refusal_mask()), n),
        )
            .prop_map(|(ids, md)| {
                let names = strings(UNIT_NAMES);
                ids.iter()
                    .zip(md)
                    .map(|(id, (role, ssd, refused))| {
                        refusing(machine(id, role, ssd), &names, refused)
                    })
                    .collect()
            })
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

proptest! {
    // 500 cases by default (the large ones: 50); PROPTEST_CASES=N for a longer campaign.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(500)
    ))]

    #[test]
    fn the_planner_gives_schedule_s_plan_after_every_batch(
        ms in initial_machines(),
        us in units(2, 4),
        batches in prop::collection::vec(
            prop::collection::vec(op(MACHINE_IDS.len(), UNIT_NAMES.len(), requirements(2), claim()), 1..4),
            1..12,
        ),
    ) {
        check(ms, us, batches, &strings(MACHINE_IDS), &strings(UNIT_NAMES))?;
    }
}

// ---- Dense: three machines, units tied by MachineOf/Replaces/Conflicts, claims that follow the plan, so
// that several claims on one machine interact (reservation order, cycles formed elsewhere).

const DENSE_MACHINES: &[&str] = &["m1", "m2", "m3"];
const DENSE_NAMES: &[&str] = &[
    "a.service",
    "b.service",
    "c.service",
    "d.service",
    "e.service",
    "f.service",
    "g.service",
];

fn dense_requirements() -> impl Strategy<Value = Requirements> + Clone {
    let names = DENSE_NAMES;
    (
        words(names, 2),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => words(&["a.service", "b.service", "[cd].service", "e*", "f.service"], 1),
        ],
        prop_oneof![
            3 => Just(Vec::new()),
            1 => words(&["a.service", "c.service", "[bd].service", "g*"], 1),
        ],
        prop::bool::weighted(0.08),
        prop_oneof![
            5 => Just(BTreeMap::new()),
            1 => Just([("role".to_string(), vec!["web".to_string()])].into()),
        ],
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(machine_of, conflicts, replaces, global, metadata, pinned)| {
                let r = Requirements {
                    machine_of,
                    conflicts,
                    replaces,
                    global,
                    metadata,
                    machine_id: pinned.then(|| "m2".to_string()),
                    ..Requirements::default()
                };
                made_valid(
                    r,
                    &[
                        |r| r.machine_id = None,
                        |r| r.global = false,
                        |r| r.replaces.clear(),
                        |r| r.conflicts.clear(),
                        |r| r.machine_of.clear(),
                    ],
                )
            },
        )
}

fn dense_claim() -> impl Strategy<Value = Option<String>> + Clone {
    prop_oneof![
        1 => Just(None),
        4 => prop::sample::select(&["m1", "m1", "m2", "m3"][..]).prop_map(|s| Some(s.to_string())),
    ]
}

fn dense_units() -> impl Strategy<Value = Vec<UnitInfo>> {
    prop::sample::subsequence(DENSE_NAMES, 0..=DENSE_NAMES.len()).prop_flat_map(|names| {
        let n = names.len();
        (
            Just(names),
            prop::collection::vec((dense_requirements(), dense_claim()), n),
        )
            .prop_map(|(names, specs)| {
                names
                    .iter()
                    .zip(specs)
                    .map(|(name, (req, claim))| unit(name, req, DesiredState::Launched, claim))
                    .collect()
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(500)
    ))]

    #[test]
    fn dense_groups_on_few_machines_give_schedule_s_plan(
        roles in prop::collection::vec((0..3usize, any::<bool>()), 3),
        us in dense_units(),
        batches in prop::collection::vec(
            prop::collection::vec(op(DENSE_MACHINES.len(), DENSE_NAMES.len(), dense_requirements(), dense_claim()), 1..4),
            1..12,
        ),
    ) {
        let ms = DENSE_MACHINES.iter().zip(roles).map(|(id, (r, s))| machine(id, r, s)).collect();
        check(ms, us, batches, &strings(DENSE_MACHINES), &strings(DENSE_NAMES))?;
    }
}

// ---- Large: more machines than the size from which a metadata requirement gets its own ordered set, and
// self-conflicting instance groups (the shortcuts of `decide`).

fn big_ids() -> Vec<String> {
    (0..60).map(|i| format!("m{i:03}")).collect()
}

fn big_names() -> Vec<String> {
    (0..25)
        .map(|i| format!("web@{i}.service"))
        .chain((0..25).map(|i| format!("app{i}.service")))
        .collect()
}

fn big_claim() -> impl Strategy<Value = Option<String>> + Clone {
    prop_oneof![
        2 => Just(None),
        2 => (0..60usize).prop_map(|i| Some(format!("m{i:03}"))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(500) / 10
    ))]

    #[test]
    fn large_clusters_give_schedule_s_plan(
        n in 33..60usize,
        roles in prop::collection::vec((0..3usize, any::<bool>()), 60),
        specs in prop::collection::vec((big_requirements(big_names(), 0.03), big_claim()), 50),
        chosen in prop::collection::vec(any::<bool>(), 50),
        batches in prop::collection::vec(
            prop::collection::vec(op(60, 50, big_requirements(big_names(), 0.03), big_claim()), 1..6),
            1..10,
        ),
    ) {
        let ids = big_ids();
        let names = big_names();
        let ms: Vec<MachineInfo> = (0..n).map(|i| machine(&ids[i], roles[i].0, roles[i].1)).collect();
        let us: Vec<UnitInfo> = names
            .iter()
            .zip(specs)
            .zip(chosen)
            .filter(|(_, c)| *c)
            .map(|((name, (req, claim)), _)| unit(name, req, DesiredState::Launched, claim))
            .collect();
        check(ms, us, batches, &ids, &names)?;
    }
}
