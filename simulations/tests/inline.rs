//! Scenarios that carry their units inline (`[[units.unit]]`, what `fleetctl simulate capture`
//! writes): the TOML round trip keeps every byte of a unit file, and the simulated cluster runs them.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_sched::DesiredState;
use fleet_sim::scenario::{
    Dur, Fault, FaultKind, InlineUnit, MachineEntry, Machines, Scenario, Units,
};
use fleet_sim::sim::Sim;

const ID_A: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
const ID_B: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";
const ID_C: &str = "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c";

fn unit(name: &str, state: DesiredState, file: &str) -> InlineUnit {
    InlineUnit {
        name: name.into(),
        state,
        running_on: Vec::new(),
        file: file.into(),
    }
}

fn scenario(units: Vec<InlineUnit>) -> Scenario {
    let machine = |id: &str, rack: &str| MachineEntry {
        id: Some(id.into()),
        metadata: BTreeMap::from([("rack".to_string(), rack.to_string())]),
    };
    Scenario {
        name: "captured".into(),
        description: "a cluster as captured".into(),
        duration: Dur::secs(30),
        machines: Machines {
            list: vec![machine(ID_A, "a"), machine(ID_B, "a"), machine(ID_C, "b")],
            ..Machines::default()
        },
        units: Units {
            inline: units,
            ..Units::default()
        },
        config: Default::default(),
        invariants: Default::default(),
        faults: vec![Fault {
            at: Dur::secs(15),
            kind: FaultKind::Crash,
            for_: None,
            machines: Some("rack=b".into()),
            from: None,
            to: None,
            oneway: false,
            rate: None,
            extra: None,
            agent_only: false,
            set: BTreeMap::new(),
            unset: Vec::new(),
        }],
        base_dir: Path::new(".").to_path_buf(),
    }
}

/// Unit files with what a TOML writer could get wrong: quotes, backslashes, tabs, trailing spaces,
/// a `"""` inside, line continuations, no final newline.
fn tricky() -> Vec<InlineUnit> {
    vec![
        unit(
            "web.service",
            DesiredState::Launched,
            "[Unit]\nDescription=web \"quoted\" \\ back\n\n[Service]\nExecStart=/bin/sh -c 'echo \"\"\" ; sleep 1d'\t\nEnvironment=A=1   \n",
        ),
        unit(
            "db.service",
            DesiredState::Launched,
            "[Service]\nExecStart=/usr/bin/sleep infinity\n\n[X-Fleet]\nConflicts=web.service\nMachineMetadata=rack=a",
        ),
        unit(
            "agent.service",
            DesiredState::Launched,
            "[Service]\nExecStart=/usr/bin/sleep infinity\n[X-Fleet]\nGlobal=true\n",
        ),
        unit(
            "off.service",
            DesiredState::Inactive,
            "[Service]\nExecStart=/usr/bin/true\n",
        ),
    ]
}

#[test]
fn a_scenario_with_inline_units_writes_and_reads_back_the_same() {
    let mut sc = scenario(tricky());
    sc.units.inline[0].running_on = vec![ID_A.into()];
    sc.units.inline[2].running_on = vec![ID_A.into(), ID_B.into(), ID_C.into()];
    let text = sc.to_toml().expect("serializes");
    let back = Scenario::from_toml(&text, Path::new(".")).expect("parses");
    assert_eq!(back, sc, "round trip changed the scenario:\n{text}");
    for u in &sc.units.inline {
        let b = back.units.inline.iter().find(|b| b.name == u.name).unwrap();
        assert_eq!(b.file.as_bytes(), u.file.as_bytes(), "{} changed", u.name);
    }
    // Settings at their defaults are left out: the file follows fleetd's defaults.
    assert!(!text.contains("[config]"), "{text}");
    assert!(!text.contains("[invariants]"), "{text}");
    assert!(!text.contains("dir ="), "{text}");
    // And a changed setting is kept.
    let mut sc2 = sc.clone();
    sc2.config.agent_ttl = Dur::secs(10);
    let text2 = sc2.to_toml().unwrap();
    assert!(text2.contains("agent_ttl"), "{text2}");
    assert_eq!(Scenario::from_toml(&text2, Path::new(".")).unwrap(), sc2);
}

#[test]
fn inline_units_are_simulated_inactive_ones_are_not_submitted() {
    let sc = scenario(tricky());
    let mut sim = Sim::new(&sc, 7).expect("sets up");
    sim.run_until(Dur::secs(14).0);
    let active = sim.active_units();
    assert_eq!(active["agent.service"], vec![ID_A, ID_B, ID_C]);
    // MachineMetadata=rack=a, and not next to web.
    let db = &active["db.service"];
    assert_eq!(db.len(), 1);
    assert!(db[0] == ID_A || db[0] == ID_B, "{active:?}");
    assert_eq!(active["web.service"].len(), 1);
    assert_ne!(active["web.service"], *db, "Conflicts= ignored: {active:?}");
    assert!(!active.contains_key("off.service"), "{active:?}");
    // rack b crashes at 15s: everything ends on rack a, the global unit on both of its machines.
    sim.run_until(Dur::secs(30).0);
    let after = sim.active_units();
    assert_eq!(after["agent.service"], vec![ID_A, ID_B]);
    for u in ["web.service", "db.service"] {
        assert!(
            after[u].len() == 1 && after[u][0] != ID_C,
            "{u} after the crash: {after:?}"
        );
    }
    let report = sim.finish();
    assert!(!report.failed(), "{}", report.to_text());
}

#[test]
fn bad_inline_units_are_refused_naming_the_unit() {
    let mut bad = tricky();
    bad[1].file = "[Service\nExecStart=/bin/true\n".into();
    let err = Sim::new(&scenario(bad), 1)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("db.service"), "{err}");

    let mut loaded = tricky();
    loaded[0].state = DesiredState::Loaded;
    let err = Sim::new(&scenario(loaded), 1)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("web.service") && err.contains("loaded"),
        "{err}"
    );

    let text = "name = \"x\"\nduration = \"10s\"\n[machines]\ncount = 1\n[units]\n";
    let err = Scenario::from_toml(text, Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no dir and no [[units.unit]]"), "{err}");

    let text = "name = \"x\"\nduration = \"10s\"\n[machines]\ncount = 1\n[[units.unit]]\nname = \"a.service\"\nstate = \"running\"\nfile = \"\"\n";
    let err = Scenario::from_toml(text, Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(err.contains("running"), "{err}");
}

#[test]
fn the_simulated_cluster_starts_where_the_units_were_captured() {
    // Fresh placement spreads three plain units over three machines; captured all on C, they stay
    // on C (placement keeps a claim whose requirements hold), and move when C crashes.
    let plain = "[Service]\nExecStart=/usr/bin/sleep infinity\n";
    let units: Vec<InlineUnit> = ["a.service", "b.service", "c.service"]
        .into_iter()
        .map(|n| InlineUnit {
            running_on: vec![ID_C.into()],
            ..unit(n, DesiredState::Launched, plain)
        })
        .collect();
    let sc = scenario(units.clone());
    let mut sim = Sim::new(&sc, 3).unwrap();
    sim.run_until(Dur::secs(14).0);
    for u in &units {
        assert_eq!(sim.active_units()[&u.name], vec![ID_C], "{}", u.name);
    }
    sim.run_until(Dur::secs(30).0);
    let after = sim.active_units();
    for u in &units {
        assert!(
            after[&u.name].len() == 1 && after[&u.name][0] != ID_C,
            "{after:?}"
        );
    }
    // Without the capture's placement, they spread.
    let fresh: Vec<InlineUnit> = units
        .into_iter()
        .map(|u| InlineUnit {
            running_on: vec![],
            ..u
        })
        .collect();
    let mut sim = Sim::new(&scenario(fresh), 3).unwrap();
    sim.run_until(Dur::secs(14).0);
    let on: std::collections::BTreeSet<Vec<String>> = sim.active_units().into_values().collect();
    assert_eq!(on.len(), 3, "{on:?}");
}
