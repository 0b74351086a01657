//! The incremental planner on hand-written sequences: each step is compared with `schedule` on the same
//! inputs, and the planner's kept state with a planner built from scratch.

use fleet_sched::placement::{Change, PassStats, Planner};
use fleet_sched::{
    schedule, Decision, DesiredState, MachineId, MachineInfo, Requirements, UnitInfo, UnitName,
};

fn id(s: &str) -> MachineId {
    MachineId::parse(s).unwrap()
}

fn name(s: &str) -> UnitName {
    UnitName::parse(s).unwrap()
}

fn unit(n: &str, req: Requirements, claim: Option<&str>) -> UnitInfo {
    UnitInfo {
        name: name(n),
        requirements: req,
        desired: DesiredState::Launched,
        claim: claim.map(id),
    }
}

fn replaces(p: &str) -> Requirements {
    Requirements {
        replaces: vec![p.into()],
        ..Requirements::default()
    }
}

/// Applies `changes` to the planner and checks it against `schedule` and a fresh planner.
fn step(planner: &mut Planner, changes: Vec<Change>) -> PassStats {
    let stats = planner.apply(changes);
    let (ms, us) = planner.inputs();
    assert_eq!(planner.plan(), &schedule(&ms, &us));
    assert_eq!(planner.kept_state(), Planner::new(&ms, &us).kept_state());
    stats
}

fn on<'a>(planner: &'a Planner, unit: &str) -> Option<&'a str> {
    match planner.plan().decision(&name(unit)) {
        Some(Decision::On(m)) => Some(m.as_str()),
        _ => None,
    }
}

#[test]
fn a_replaces_cycle_closed_elsewhere_frees_two_units_sharing_a_machine() {
    let machines = [MachineInfo::new(id("m1")), MachineInfo::new(id("m2"))];
    // a replaces b: both claim m1, a keeps it (first by name), b must move.
    let units = [
        unit("a.service", replaces("b.service"), Some("m1")),
        unit("b.service", replaces("c.service"), Some("m1")),
    ];
    let mut planner = Planner::new(&machines, &units);
    assert_eq!(on(&planner, "a.service"), Some("m1"));
    assert_eq!(on(&planner, "b.service"), Some("m2"));
    // c (on m2) replaces a: a -> b -> c -> a is a cycle, so these Replaces= are ignored and b may stay
    // on m1, although only m2 saw a unit change.
    step(
        &mut planner,
        vec![Change::Unit(unit(
            "c.service",
            replaces("a.service"),
            Some("m2"),
        ))],
    );
    assert_eq!(on(&planner, "b.service"), Some("m1"));
}

#[test]
fn a_dead_machine_moves_only_its_units() {
    let machines: Vec<MachineInfo> = (1..=4)
        .map(|i| MachineInfo::new(id(&format!("m{i}"))))
        .collect();
    let units: Vec<UnitInfo> = (0..12)
        .map(|i| unit(&format!("u{i:02}.service"), Requirements::default(), None))
        .collect();
    let mut planner = Planner::new(&machines, &units);
    // The agents claim what the plan says.
    let claims: Vec<Change> = planner
        .plan()
        .decisions
        .iter()
        .map(|(n, d)| Change::Claim {
            unit: n.clone(),
            machine: d.machines().first().cloned(),
        })
        .collect();
    step(&mut planner, claims);
    let on_m2: Vec<UnitName> = planner.plan().claims_of(&id("m2")).cloned().collect();
    assert_eq!(on_m2.len(), 3);
    let stats = step(&mut planner, vec![Change::MachineGone(id("m2"))]);
    assert_eq!(stats.units, 3, "only the dead machine's units are decided");
    assert_eq!(stats.machines, 0);
    for n in &on_m2 {
        assert_ne!(on(&planner, n.as_str()), Some("m2"));
    }
    // It comes back: the moved units stay where the plan put them once claimed there.
    let claims: Vec<Change> = on_m2
        .iter()
        .map(|n| Change::Claim {
            unit: n.clone(),
            machine: planner
                .plan()
                .decision(n)
                .unwrap()
                .machines()
                .first()
                .cloned(),
        })
        .collect();
    step(&mut planner, claims);
    let stats = step(
        &mut planner,
        vec![Change::Machine(MachineInfo::new(id("m2")))],
    );
    assert_eq!(stats.units, 0);
    assert_eq!(planner.plan().claims_of(&id("m2")).count(), 0);
}

#[test]
fn a_global_unit_with_conflicts_recomputes_only_the_machines_where_something_conflicts() {
    let machines: Vec<MachineInfo> = (1..=3)
        .map(|i| MachineInfo::new(id(&format!("m{i}"))).with_metadata("role", "web"))
        .collect();
    let units = [
        unit("a.service", Requirements::default(), Some("m1")),
        unit(
            "b.service",
            Requirements {
                conflicts: vec!["agent.service".into()],
                ..Requirements::default()
            },
            Some("m2"),
        ),
    ];
    let mut planner = Planner::new(&machines, &units);
    let global = Requirements {
        global: true,
        ..Requirements::default()
    };
    let stats = step(
        &mut planner,
        vec![Change::Unit(unit("agent.service", global, None))],
    );
    // Placed directly on m1 and m3; m2, where b (which conflicts with it) is reserved, is recomputed.
    assert_eq!((stats.machines, stats.global_moves), (1, 2));
    // b conflicts with the global unit, which never yields: b moves nowhere (every machine runs it).
    assert_eq!(on(&planner, "b.service"), None);
    // It goes: taken off every machine directly; only m2, where b's claim is, is recomputed.
    let stats = step(&mut planner, vec![Change::UnitGone(name("agent.service"))]);
    assert_eq!((stats.machines, stats.global_moves), (1, 3));
    assert_eq!(on(&planner, "b.service"), Some("m2"));
    // With a global unit that conflicts with it, another global unit's machines are recomputed.
    let g = |name: &str, conflicts: &str| {
        let req = Requirements {
            global: true,
            conflicts: vec![conflicts.into()],
            ..Requirements::default()
        };
        unit(name, req, None)
    };
    step(
        &mut planner,
        vec![Change::Unit(g("g1.service", "g2.service"))],
    );
    let stats = step(
        &mut planner,
        vec![Change::Unit(g("g2.service", "none.service"))],
    );
    assert_eq!((stats.machines, stats.global_moves), (3, 0));
    assert!(matches!(
        planner.plan().decision(&name("g2.service")),
        Some(Decision::Unplaceable(_))
    ));
    let stats = step(&mut planner, vec![Change::UnitGone(name("g1.service"))]);
    assert_eq!(stats.machines, 3);
    let g2 = planner.plan().decision(&name("g2.service")).unwrap();
    assert_eq!(g2.machines().len(), 3);
}

#[test]
fn a_global_unit_without_conflicts_is_placed_directly() {
    let machines: Vec<MachineInfo> = (1..=4)
        .map(|i| MachineInfo::new(id(&format!("m{i}"))).with_metadata("role", ["web", "db"][i % 2]))
        .collect();
    let web = Requirements {
        global: true,
        metadata: [("role".to_string(), vec!["web".to_string()])].into(),
        ..Requirements::default()
    };
    let follower = Requirements {
        machine_of: vec!["agent.service".into()],
        ..Requirements::default()
    };
    let units = [
        unit("a.service", Requirements::default(), Some("m1")),
        unit("sidecar.service", follower, Some("m2")),
    ];
    let mut planner = Planner::new(&machines, &units);
    assert_eq!(on(&planner, "sidecar.service"), None);
    let stats = step(
        &mut planner,
        vec![Change::Unit(unit("agent.service", web, None))],
    );
    // On the two web machines; only the follower's machine is recomputed (its claim may now be kept).
    assert_eq!((stats.machines, stats.global_moves), (1, 2));
    assert_eq!(on(&planner, "sidecar.service"), Some("m2"));
    let stats = step(&mut planner, vec![Change::UnitGone(name("agent.service"))]);
    assert_eq!((stats.machines, stats.global_moves), (1, 2));
    assert_eq!(on(&planner, "sidecar.service"), None);
}

#[test]
fn metadata_change_moves_the_units_that_no_longer_match() {
    let machines = [
        MachineInfo::new(id("m1")).with_metadata("disk", "ssd"),
        MachineInfo::new(id("m2")).with_metadata("disk", "ssd"),
    ];
    let ssd = Requirements {
        metadata: [("disk".to_string(), vec!["ssd".to_string()])].into(),
        ..Requirements::default()
    };
    let units = [
        unit("db.service", ssd.clone(), Some("m1")),
        unit(
            "db-backup.service",
            Requirements {
                machine_of: vec!["db.service".into()],
                ..Requirements::default()
            },
            Some("m1"),
        ),
        unit("web.service", Requirements::default(), Some("m1")),
    ];
    let mut planner = Planner::new(&machines, &units);
    step(
        &mut planner,
        vec![Change::Machine(
            MachineInfo::new(id("m1")).with_metadata("disk", "hdd"),
        )],
    );
    assert_eq!(on(&planner, "db.service"), Some("m2"));
    assert_eq!(on(&planner, "db-backup.service"), Some("m2"));
    assert_eq!(on(&planner, "web.service"), Some("m1"));
}
