//! Measures `schedule` on a large cluster: a cold start (nothing claimed), the steady state (every unit
//! claimed where the previous plan put it, which is what every agent recomputes on each change), a machine
//! failure, and a self-conflicting group larger than the machines it may use. Prints figures; asserts
//! nothing about timing.
//!
//!     cargo run --release -p fleet-sched --example placement_bench [machines] [units] [repeat]
//!
//! `repeat` > 0 only runs the cold start that many times (for a profiler).

use std::collections::BTreeMap;
use std::time::Instant;

use fleet_sched::{
    schedule, Decision, DesiredState, MachineId, MachineInfo, Plan, Requirements, UnitInfo,
    UnitName,
};

/// A 32-hex-digit machine ID, scattered like real ones.
fn machine_id(i: usize) -> MachineId {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    let y = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    MachineId::parse(&format!("{x:016x}{y:016x}")).unwrap()
}

fn cluster(n: usize) -> Vec<MachineInfo> {
    (0..n)
        .map(|i| {
            let role = match i % 10 {
                0..=4 => "web",
                5 | 6 => "db",
                _ => "batch",
            };
            let mut m = MachineInfo::new(machine_id(i))
                .with_metadata("region", ["us-east", "us-west", "eu"][i % 3])
                .with_metadata("role", role);
            if i % 5 < 2 {
                m = m.with_metadata("disk", "ssd");
            }
            m
        })
        .collect()
}

fn md(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect()
}

fn unit(name: String, req: Requirements) -> UnitInfo {
    UnitInfo::new(UnitName::parse(&name).unwrap(), req, DesiredState::Launched)
}

/// The unit mix: plain units (some with metadata), a self-conflicting template per role, MachineOf
/// pairs, MachineID pins, Replaces pairs and a few global units.
fn workload(machines: &[MachineInfo], n: usize) -> Vec<UnitInfo> {
    let mut us = Vec::with_capacity(n);
    let web_machines = machines.len() / 2;
    for i in 0..20 {
        let metadata = if i % 2 == 0 {
            BTreeMap::new()
        } else {
            md(&[("role", &["web"])])
        };
        us.push(unit(
            format!("global-{i}.service"),
            Requirements {
                global: true,
                metadata,
                ..Requirements::default()
            },
        ));
    }
    // A web instance per web machine at most (80% of them).
    for i in 0..(web_machines * 4 / 5).min(n / 10) {
        us.push(unit(
            format!("web@{i}.service"),
            Requirements {
                metadata: md(&[("role", &["web"])]),
                conflicts: vec!["web@*.service".into()],
                ..Requirements::default()
            },
        ));
    }
    // Instances that must not share a machine, 80% of the cluster.
    for i in 0..(machines.len() * 4 / 5).min(n / 10) {
        us.push(unit(
            format!("solo@{i}.service"),
            Requirements {
                conflicts: vec!["solo@*.service".into()],
                ..Requirements::default()
            },
        ));
    }
    for i in 0..n / 20 {
        us.push(unit(format!("db{i}.service"), Requirements::default()));
        us.push(unit(
            format!("db{i}-backup.service"),
            Requirements {
                machine_of: vec![format!("db{i}.service")],
                ..Requirements::default()
            },
        ));
    }
    for i in 0..n / 50 {
        us.push(unit(
            format!("pin{i}.service"),
            Requirements {
                machine_id: Some(machines[(i * 7) % machines.len()].id.short().to_string()),
                ..Requirements::default()
            },
        ));
    }
    for i in 0..n / 100 {
        us.push(unit(format!("old{i}.service"), Requirements::default()));
        us.push(unit(
            format!("new{i}.service"),
            Requirements {
                replaces: vec![format!("old{i}.service")],
                ..Requirements::default()
            },
        ));
    }
    let mut i = 0;
    while us.len() < n {
        let metadata = match i % 10 {
            0 => md(&[("region", &["us-east"])]),
            1 => md(&[("region", &["us-west", "eu"])]),
            2 => md(&[("role", &["db"]), ("disk", &["ssd"])]),
            _ => BTreeMap::new(),
        };
        us.push(unit(
            format!("app{i}.service"),
            Requirements {
                metadata,
                ..Requirements::default()
            },
        ));
        i += 1;
    }
    us
}

fn claims_from(units: &[UnitInfo], plan: &Plan) -> Vec<UnitInfo> {
    units
        .iter()
        .map(|u| {
            let mut u = u.clone();
            u.claim = match plan.decision(&u.name) {
                Some(Decision::On(m)) => Some(m.clone()),
                _ => None,
            };
            u
        })
        .collect()
}

fn measure(what: &str, machines: &[MachineInfo], units: &[UnitInfo]) -> Plan {
    // Best of three, so that a busy shared machine disturbs the figure less.
    let mut best = f64::INFINITY;
    let mut plan = Plan::default();
    for _ in 0..3 {
        let start = Instant::now();
        plan = schedule(machines, units);
        best = best.min(start.elapsed().as_secs_f64());
    }
    let placed = plan
        .decisions
        .values()
        .filter(|d| !matches!(d, Decision::Unplaceable(_)))
        .count();
    println!(
        "{what:<34} {:>6} machines {:>7} units {:>8.1} ms {:>10.0} placements/s  ({placed} placed, {} unplaceable)",
        machines.len(),
        units.len(),
        best * 1e3,
        units.len() as f64 / best,
        units.len() - placed,
    );
    plan
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    let (m, n) = (arg(1, 10_000), arg(2, 100_000));
    let machines = cluster(m);
    let units = workload(&machines, n);
    let repeat = arg(3, 0);
    if repeat > 0 {
        let start = Instant::now();
        for _ in 0..repeat {
            std::hint::black_box(schedule(&machines, &units));
        }
        let secs = start.elapsed().as_secs_f64() / repeat as f64;
        println!(
            "cold start: {:.1} ms, {:.0} placements/s",
            secs * 1e3,
            n as f64 / secs
        );
        return;
    }

    let plan = measure("cold start (no claims)", &machines, &units);
    let claimed = claims_from(&units, &plan);
    let again = measure("steady state (all claimed)", &machines, &claimed);
    assert_eq!(again, plan, "the plan fed back as claims must not change");

    // One machine dies: its units (and their MachineOf followers) move.
    let dead = &machines[m / 2].id;
    let on_dead = plan.claims_of(dead).count();
    let survivors: Vec<MachineInfo> = machines.iter().filter(|x| &x.id != dead).cloned().collect();
    let after = measure(
        &format!("one machine dead ({on_dead} units)"),
        &survivors,
        &claimed,
    );
    let moved = plan
        .decisions
        .iter()
        .filter(|(name, d)| matches!(d, Decision::On(_)) && after.decision(name) != Some(d))
        .count();
    println!("  units moved: {moved}");

    // A self-conflicting group 50% larger than the machines it may use: the surplus is unplaceable.
    let mut overflow = units.clone();
    for i in 0..m * 3 / 4 {
        overflow.push(unit(
            format!("spread@{i}.service"),
            Requirements {
                metadata: md(&[("role", &["web"])]),
                conflicts: vec!["spread@*.service".into()],
                ..Requirements::default()
            },
        ));
    }
    measure("+ oversubscribed conflict group", &machines, &overflow);
}
