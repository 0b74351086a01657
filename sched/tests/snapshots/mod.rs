//! Helpers of the table tests over cluster snapshots (`placement_cases`, `placement_stability`):
//! machines and units written briefly, and a plan checked by the brute-force [`Plan::violations`].

// Each test crate uses a part of it.
#![allow(dead_code)]

pub use fleet_sched::{
    schedule, Decision, DesiredState, MachineId, MachineInfo, Plan, Reason, Requirements, UnitFile,
    UnitInfo, UnitName,
};

pub fn id(s: &str) -> MachineId {
    MachineId::parse(s).unwrap()
}

pub fn machine(name: &str, metadata: &[(&str, &str)]) -> MachineInfo {
    metadata
        .iter()
        .fold(MachineInfo::new(id(name)), |m, (k, v)| {
            m.with_metadata(k, v)
        })
}

pub fn machines(names: &[&str]) -> Vec<MachineInfo> {
    names.iter().map(|n| machine(n, &[])).collect()
}

/// A launched unit whose `[X-Fleet]` section is `xfleet`, read the way the registry reads it.
pub fn unit(name: &str, xfleet: &str) -> UnitInfo {
    let name = UnitName::parse(name).unwrap();
    let file = UnitFile::parse(&format!(
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}"
    ))
    .unwrap();
    let req = Requirements::from_unit(&name, &file).unwrap();
    UnitInfo::new(name, req, DesiredState::Launched)
}

pub fn claimed(name: &str, xfleet: &str, on: &str) -> UnitInfo {
    unit(name, xfleet).claimed_by(id(on))
}

pub fn run(ms: &[MachineInfo], us: &[UnitInfo]) -> Plan {
    let plan = schedule(ms, us);
    let v = plan.violations(ms, us);
    assert!(v.is_empty(), "violations: {v:#?}\nplan: {plan:#?}");
    plan
}

pub fn decision<'a>(plan: &'a Plan, unit: &str) -> &'a Decision {
    plan.decision(&UnitName::parse(unit).unwrap())
        .unwrap_or_else(|| panic!("no decision for {unit}: {plan:#?}"))
}

/// The machine a non-global unit is on, or `None` when unplaceable.
pub fn on(plan: &Plan, unit: &str) -> Option<String> {
    match decision(plan, unit) {
        Decision::On(m) => Some(m.to_string()),
        Decision::Unplaceable(_) => None,
        d => panic!("{unit}: unexpected {d:?}"),
    }
}

pub fn reason(plan: &Plan, unit: &str) -> Reason {
    match decision(plan, unit) {
        Decision::Unplaceable(r) => r.clone(),
        d => panic!("{unit} should be unplaceable, got {d:?}"),
    }
}

pub fn global(plan: &Plan, unit: &str) -> Vec<String> {
    match decision(plan, unit) {
        Decision::Global(ms) => ms.iter().map(|m| m.to_string()).collect(),
        d => panic!("{unit} should be global, got {d:?}"),
    }
}

pub fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}
