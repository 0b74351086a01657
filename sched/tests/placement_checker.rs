//! The independent placement checker (`fleet_sched::testing::check_assignment`) against the scheduler:
//! every plan `schedule` makes passes it, and placements with a planted bug (one rule ignored) fail it.

use std::collections::BTreeSet;

use fleet_sched::testing::{
    assignment_of, check_assignment, Assignment, CheckMachine, CheckUnit, Rule,
};
use fleet_sched::{
    schedule, DesiredState, MachineId, MachineInfo, Requirements, UnitFile, UnitInfo, UnitName,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const MACHINES: &[&str] = &["aaaaaaaa01", "aaaaaaaa02", "m1", "m2", "m3", "m4"];
const NAMES: &[&str] = &[
    "a.service",
    "b.service",
    "c.service",
    "web@1.service",
    "web@2.service",
    "web@3.service",
    "web@.service",
    "db.socket",
];
/// `[X-Fleet]` lines a unit may carry (several may be combined; rejected combinations are dropped).
const XFLEET: &[&str] = &[
    "Conflicts=web@*.service",
    "Conflicts=a.service b.service",
    "Conflicts=%p@*.service",
    "Conflicts=*",
    "MachineOf=a.service",
    "MachineOf=db.socket",
    "MachineMetadata=role=web",
    "MachineMetadata=role=db role=web",
    "MachineMetadata=\"disk=ssd\" \"role=db\"",
    "MachineID=m2",
    "MachineID=aaaaaaaa",
    "Global=true",
    "Replaces=a.service",
    "Replaces=web@*.service",
];

/// A cluster for both sides: the scheduler's types and the checker's plain data.
#[derive(Debug, Clone)]
struct Case {
    machines: Vec<MachineInfo>,
    units: Vec<UnitInfo>,
    check_machines: Vec<CheckMachine>,
    check_units: Vec<CheckUnit>,
}

fn build(
    machines: Vec<(String, Vec<(&str, &str)>)>,
    units: Vec<(String, Vec<String>, bool, Option<usize>)>,
) -> Case {
    let mut case = Case {
        machines: Vec::new(),
        units: Vec::new(),
        check_machines: Vec::new(),
        check_units: Vec::new(),
    };
    for (id, md) in &machines {
        let mut m = MachineInfo::new(MachineId::parse(id).unwrap());
        for (k, v) in md {
            m = m.with_metadata(k, v);
        }
        case.check_machines.push(CheckMachine {
            id: id.clone(),
            metadata: m.metadata.clone(),
        });
        case.machines.push(m);
    }
    let mut seen = BTreeSet::new();
    for (name, lines, active, claim) in units {
        if !seen.insert(name.clone()) {
            continue;
        }
        let text = format!(
            "[Service]\nExecStart=/bin/true\n[X-Fleet]\n{}\n",
            lines.join("\n")
        );
        let file = UnitFile::parse(&text).unwrap();
        let un = UnitName::parse(&name).unwrap();
        // Rejected combinations never reach placement (the API refuses them).
        let Ok(req) = Requirements::from_unit(&un, &file) else {
            continue;
        };
        let desired = if active {
            DesiredState::Launched
        } else {
            DesiredState::Inactive
        };
        let mut u = UnitInfo::new(un, req, desired);
        if let Some(i) = claim.filter(|i| *i < machines.len()) {
            u = u.claimed_by(MachineId::parse(&machines[i].0).unwrap());
        }
        case.units.push(u);
        case.check_units
            .push(CheckUnit::from_file(&name, active, &file));
    }
    case
}

fn cases() -> impl Strategy<Value = Case> {
    let machines = prop::sample::subsequence(MACHINES, 1..=MACHINES.len()).prop_flat_map(|ids| {
        let n = ids.len();
        (
            Just(ids),
            prop::collection::vec((0..3usize, any::<bool>()), n),
        )
    });
    let units = prop::collection::vec(
        (
            prop::sample::select(NAMES),
            prop::sample::subsequence(XFLEET, 0..3),
            prop::bool::weighted(0.85),
            prop::option::of(0..6usize),
        ),
        0..10,
    );
    (machines, units).prop_map(|((ids, md), units)| {
        let ms = ids
            .iter()
            .zip(md)
            .map(|(id, (role, ssd))| {
                let mut kv = Vec::new();
                if role > 0 {
                    kv.push(("role", ["web", "db"][role - 1]));
                }
                if ssd {
                    kv.push(("disk", "ssd"));
                }
                (id.to_string(), kv)
            })
            .collect();
        let us = units
            .into_iter()
            .map(|(n, x, a, c)| {
                (
                    n.to_string(),
                    x.iter().map(|s| s.to_string()).collect(),
                    a,
                    c,
                )
            })
            .collect();
        build(ms, us)
    })
}

fn check(case: &Case, a: &Assignment) -> Vec<fleet_sched::testing::Violation> {
    check_assignment(&case.check_machines, &case.check_units, a)
}

/// The placement of a scheduler with one rule removed from every unit's requirements.
fn mutant(case: &Case, strip: impl Fn(&mut Requirements)) -> Assignment {
    let units: Vec<UnitInfo> = case
        .units
        .iter()
        .cloned()
        .map(|mut u| {
            strip(&mut u.requirements);
            u
        })
        .collect();
    assignment_of(&schedule(&case.machines, &units))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Whatever the scheduler decides obeys every rule, as the independent checker reads the spec.
    #[test]
    fn every_plan_passes_the_independent_checker(case in cases()) {
        let plan = schedule(&case.machines, &case.units);
        let v = check(&case, &assignment_of(&plan));
        prop_assert!(v.is_empty(), "{:#?}\nplan: {:#?}\ncase: {:#?}", v, plan, case.check_units);
    }
}

fn rule_caught_in_random_cases(rule: Rule, strip: impl Fn(&mut Requirements) + Copy) {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut caught = 0;
    let mut changed = 0;
    for _ in 0..400 {
        let case = cases().new_tree(&mut runner).unwrap().current();
        let good = assignment_of(&schedule(&case.machines, &case.units));
        let bad = mutant(&case, strip);
        if bad == good {
            continue;
        }
        changed += 1;
        if check(&case, &bad).iter().any(|v| v.rule == rule) {
            caught += 1;
        }
    }
    assert!(
        changed > 10,
        "{rule:?}: the mutation changed only {changed} plans"
    );
    assert!(
        caught * 2 > changed,
        "{rule:?}: the checker caught {caught} of {changed} placements that ignore the rule"
    );
}

#[test]
fn a_placement_that_ignores_conflicts_is_caught() {
    // One machine, two units that conflict: ignoring Conflicts= puts both on it.
    let case = build(
        vec![("m1".into(), vec![])],
        vec![
            (
                "web@1.service".into(),
                vec!["Conflicts=web@*.service".into()],
                true,
                None,
            ),
            (
                "web@2.service".into(),
                vec!["Conflicts=web@*.service".into()],
                true,
                None,
            ),
        ],
    );
    let bad = mutant(&case, |r| r.conflicts.clear());
    let v = check(&case, &bad);
    assert!(v.iter().any(|v| v.rule == Rule::Conflicts), "{v:#?}");
    assert!(check(
        &case,
        &assignment_of(&schedule(&case.machines, &case.units))
    )
    .is_empty());
    rule_caught_in_random_cases(Rule::Conflicts, |r| r.conflicts.clear());
}

#[test]
fn placements_that_ignore_metadata_machine_of_or_machine_id_are_caught() {
    rule_caught_in_random_cases(Rule::Metadata, |r| r.metadata.clear());
    rule_caught_in_random_cases(Rule::MachineOf, |r| r.machine_of.clear());
    rule_caught_in_random_cases(Rule::MachineId, |r| r.machine_id = None);
}

#[test]
fn a_global_unit_missing_from_a_machine_and_an_idle_unit_are_caught() {
    let case = build(
        vec![("m1".into(), vec![("role", "web")]), ("m2".into(), vec![])],
        vec![
            ("g.service".into(), vec!["Global=true".into()], true, None),
            (
                "a.service".into(),
                vec!["MachineMetadata=role=web".into()],
                true,
                None,
            ),
        ],
    );
    let good = assignment_of(&schedule(&case.machines, &case.units));
    assert!(check(&case, &good).is_empty());
    let mut bad = good.clone();
    bad.get_mut("g.service").unwrap().remove("m2");
    let v = check(&case, &bad);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(
        (v[0].rule, v[0].machine.as_deref()),
        (Rule::GlobalMissing, Some("m2"))
    );
    let mut bad = good.clone();
    bad.remove("a.service");
    assert_eq!(check(&case, &bad)[0].rule, Rule::UnplacedButFits);
    let mut bad = good;
    bad.insert("a.service".into(), ["m2".to_string()].into());
    assert_eq!(check(&case, &bad)[0].rule, Rule::Metadata);
    // A template, an inactive unit, a second machine, a dead machine.
    let case = build(
        vec![("m1".into(), vec![])],
        vec![
            ("web@.service".into(), vec![], true, None),
            ("b.service".into(), vec![], false, None),
            ("c.service".into(), vec![], true, None),
        ],
    );
    let one = |m: &str| -> BTreeSet<String> { [m.to_string()].into() };
    let bad: Assignment = [
        ("web@.service".to_string(), one("m1")),
        ("b.service".to_string(), one("m1")),
        (
            "c.service".to_string(),
            ["m1".to_string(), "m9".to_string()].into(),
        ),
    ]
    .into();
    let rules: Vec<Rule> = check(&case, &bad).iter().map(|v| v.rule).collect();
    assert_eq!(
        rules,
        [
            Rule::Unknown,
            Rule::MustNotRun,
            Rule::MustNotRun,
            Rule::OneMachine
        ],
        "{rules:?}"
    );
}
