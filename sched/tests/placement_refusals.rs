//! Machines that refuse unit names (a unit fleet does not manage has that name there): such a unit is
//! never placed there, global or not, claimed there or not, and when every machine it may run on refuses
//! it, the reason says so. Deterministic cases, then random clusters checked by `Plan::violations`.

use fleet_sched::{
    schedule, Decision, DesiredState, MachineId, MachineInfo, Plan, Reason, Requirements, UnitFile,
    UnitInfo, UnitName,
};
use proptest::prelude::*;

fn id(s: &str) -> MachineId {
    MachineId::parse(s).unwrap()
}

fn name(s: &str) -> UnitName {
    UnitName::parse(s).unwrap()
}

fn unit(n: &str, xfleet: &str) -> UnitInfo {
    let file = UnitFile::parse(&format!(
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}"
    ))
    .unwrap();
    let req = Requirements::from_unit(&name(n), &file).unwrap();
    UnitInfo::new(name(n), req, DesiredState::Launched)
}

fn run(ms: &[MachineInfo], us: &[UnitInfo]) -> Plan {
    let plan = schedule(ms, us);
    let v = plan.violations(ms, us);
    assert!(v.is_empty(), "violations: {v:#?}\nplan: {plan:#?}");
    plan
}

const HOST: &str = "/usr/lib/systemd/system/ssh.service exists there";

#[test]
fn a_refused_name_goes_to_another_machine_even_from_its_claim() {
    let ms = vec![
        MachineInfo::new(id("m1")).refusing(name("ssh.service"), HOST),
        MachineInfo::new(id("m2")),
    ];
    for u in [
        unit("ssh.service", ""),
        unit("ssh.service", "").claimed_by(id("m1")),
    ] {
        let plan = run(&ms, &[u]);
        assert_eq!(
            plan.decision(&name("ssh.service")),
            Some(&Decision::On(id("m2")))
        );
    }
    // Global: every machine but the one that refuses it.
    let plan = run(&ms, &[unit("ssh.service", "Global=true")]);
    assert_eq!(
        plan.decision(&name("ssh.service")),
        Some(&Decision::Global(vec![id("m2")]))
    );
}

#[test]
fn a_name_refused_everywhere_it_may_run_is_unplaceable_with_the_reason() {
    let ms = vec![
        MachineInfo::new(id("m1"))
            .with_metadata("role", "web")
            .refusing(name("ssh.service"), HOST),
        MachineInfo::new(id("m2")),
    ];
    let cases = [
        unit("ssh.service", "MachineID=m1"),
        unit("ssh.service", "MachineMetadata=role=web"),
        unit("ssh.service", "Global=true\nMachineMetadata=role=web"),
    ];
    for u in cases {
        let plan = run(&ms, std::slice::from_ref(&u));
        match plan.decision(&name("ssh.service")) {
            Some(Decision::Unplaceable(
                r @ Reason::NameRefused {
                    machines,
                    machine,
                    why,
                },
            )) => {
                assert_eq!((*machines, machine.as_str(), why.as_str()), (1, "m1", HOST));
                assert!(r.to_string().contains(HOST), "{r}");
            }
            d => panic!("{:?}: {d:?}", u.requirements),
        }
    }
    // MachineOf a unit on the refusing machine.
    let plan = run(
        &ms,
        &[
            unit("anchor.service", "MachineID=m1"),
            unit("ssh.service", "MachineOf=anchor.service"),
        ],
    );
    assert!(matches!(
        plan.decision(&name("ssh.service")),
        Some(Decision::Unplaceable(Reason::NameRefused { .. }))
    ));
    // Other reasons keep their priority: no machine matches the metadata at all.
    let plan = run(&ms, &[unit("ssh.service", "MachineMetadata=role=db")]);
    assert!(matches!(
        plan.decision(&name("ssh.service")),
        Some(Decision::Unplaceable(Reason::MetadataUnmatched { .. }))
    ));
}

const IDS: &[&str] = &["m1", "m2", "m3", "m4"];
const UNITS: &[&str] = &["a.service", "b.service", "c.service", "d.service"];

fn cluster() -> impl Strategy<Value = (Vec<MachineInfo>, Vec<UnitInfo>)> {
    let machines = prop::collection::vec(prop::sample::subsequence(UNITS, 0..=2), IDS.len())
        .prop_map(|refusals| {
            IDS.iter()
                .zip(refusals)
                .map(|(m, rs)| {
                    rs.iter().fold(MachineInfo::new(id(m)), |mi, u| {
                        mi.refusing(name(u), "exists outside fleet")
                    })
                })
                .collect::<Vec<_>>()
        });
    let xfleet = prop::sample::select(vec![
        "",
        "",
        "Global=true",
        "MachineID=m1",
        "Conflicts=a.service",
        "MachineOf=a.service",
    ]);
    let units = prop::collection::vec((xfleet, prop::option::of(0..IDS.len())), UNITS.len())
        .prop_map(|us| {
            UNITS
                .iter()
                .zip(us)
                .map(|(n, (x, claim))| {
                    let u = unit(n, x);
                    match claim {
                        Some(c) => u.claimed_by(id(IDS[c])),
                        None => u,
                    }
                })
                .collect::<Vec<_>>()
        });
    (machines, units)
}

proptest! {
    #[test]
    fn no_unit_is_ever_placed_on_a_machine_that_refuses_its_name((ms, us) in cluster()) {
        let plan = schedule(&ms, &us);
        let v = plan.violations(&ms, &us);
        prop_assert!(v.is_empty(), "violations: {v:#?}");
        for m in &ms {
            for u in plan.units_on(&m.id) {
                prop_assert!(!m.refused.contains_key(u), "{u} on {}", m.id);
            }
        }
        // Stable: fed back as claims, nothing moves.
        let again: Vec<UnitInfo> = us
            .iter()
            .map(|u| match plan.decision(&u.name) {
                Some(Decision::On(m)) => u.clone().claimed_by(m.clone()),
                _ => u.clone(),
            })
            .collect();
        prop_assert_eq!(schedule(&ms, &again), plan);
    }
}
