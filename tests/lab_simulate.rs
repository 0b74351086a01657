//! End-to-end (root only): the simulator's prediction matches the real cluster (issue 16).
//!
//! A 5-machine lab cluster (racks a and b) runs plain, `Conflicts=`, `MachineOf=`,
//! `MachineMetadata=` and `Global=` units. `fleetctl simulate capture` writes it as a scenario; the
//! operator's one edit is the lab's fleetd settings (`agent_ttl = "3s"`, `reconcile_interval = "1s"`,
//! which the API does not expose); `fleet-sim run --at 20s --kill ID --kill ID` predicts, over seeds
//! 1-5, where every unit ends and how long each unit of the killed machines runs nowhere. Then the same
//! two machines are killed in the lab (SIGKILL of their PID 1: every process dies at once).
//!
//! Checked: the lab ends in one of the outcomes the seeds predicted, every unit on the machine that
//! outcome names (the seeds draw gossip's probe order, so the survivors may learn of the two deaths in
//! either order: each order is one outcome), and each moved unit's measured time running nowhere is
//! within the predicted range, widened by [`SLACK`].
//! Measured: from the host's `CLOCK_MONOTONIC` just before the kill of the unit's machine to systemd's
//! `InactiveExitTimestampMonotonic` of the unit on its new machine (the moment its start job began:
//! the simulator counts a unit as running from its start job too); the machines share the host's
//! monotonic clock (no time namespace).

mod lab;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lab::FleetLab;

/// How far the measured time may lie outside the simulator's range over the seeds: the lab's fleetd
/// runs on a shared, loaded host (its passes, D-Bus calls and etcd round trips take longer than the
/// simulator's models of them), and one lab run is one draw of gossip's random probe order. Measured
/// on 2026-12-06: the lab was 0.4-1.6 s slower than the simulator's range in 6 runs (load 4-25), every
/// time on the slow side: the simulator is optimistic by about a second (its models of fleetd's passes,
/// D-Bus and etcd round trips are faster than a loaded lab).
const SLACK: Duration = Duration::from_millis(2500);

/// Simulated seeds.
const SEEDS: u64 = 5;

/// Prints every machine's fleetd journal when the test panics (dropped before the lab goes down).
struct JournalsOnPanic<'a>(&'a FleetLab);

impl Drop for JournalsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fleetd journals:\n{}", self.0.journals(60));
        }
    }
}

const UNITS: &[(&str, &str)] = &[
    ("web-1.service", ""),
    ("web-2.service", ""),
    ("web-3.service", ""),
    ("db-a.service", "Conflicts=db-*.service\n"),
    ("db-b.service", "Conflicts=db-*.service\n"),
    ("backup.service", "MachineOf=db-a.service\n"),
    ("cache.service", "MachineMetadata=rack=b\n"),
    ("agent.service", "Global=true\n"),
];

fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Unit name → lab machines (1-based) where it is active.
fn placement(fl: &FleetLab, alive: &[usize]) -> BTreeMap<String, Vec<usize>> {
    UNITS
        .iter()
        .map(|(u, _)| {
            let on = alive
                .iter()
                .copied()
                .filter(|i| fl.active_state(*i, u) == "active")
                .collect();
            (u.to_string(), on)
        })
        .collect()
}

/// What one `fleet-sim run` predicts: unit → machine IDs at the end, and unit → seconds it ran nowhere
/// (its move's gap).
struct Prediction {
    end: BTreeMap<String, Vec<String>>,
    gap_s: BTreeMap<String, f64>,
}

/// The kill schedules the lab's two kills may amount to as the survivors see them: both at once, or
/// either one a second before the other. The lab kills one machine after the other, and on a loaded
/// host the survivors may learn of the first death a pass before the second, and place its units
/// while the other machine still counts (CI24: m1's units went where only the "m1 first" order sends
/// them, an outcome no seed of the simultaneous kill predicted).
fn schedules(kill: &[String]) -> Vec<Vec<(&'static str, String)>> {
    let together = kill.iter().map(|id| ("20s", id.clone())).collect();
    let mut out = vec![together];
    if let [a, b] = kill {
        out.push(vec![("20s", a.clone()), ("21s", b.clone())]);
        out.push(vec![("20s", b.clone()), ("21s", a.clone())]);
    }
    out
}

/// Runs fleet-sim on `scenario` with `seed`, killing each machine of `kill` at its time.
fn simulate(scenario: &Path, seed: u64, kill: &[(&str, String)]) -> Prediction {
    let mut cmd = Command::new(lab::bins::fleet_sim());
    cmd.arg("run")
        .arg(scenario)
        .args([
            "--seed",
            &seed.to_string(),
            "--format",
            "json",
            "--no-shrink",
        ])
        .args(["--duration", "50s"]);
    for (at, id) in kill {
        cmd.args(["--at", at, "--kill", id]);
    }
    let out = cmd.output().expect("run fleet-sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fleet-sim seed {seed} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("fleet-sim JSON report");
    let outcome = &report["outcome"];
    assert_eq!(
        outcome["unplaced"].as_array().map(Vec::len),
        Some(0),
        "seed {seed}: units left unplaced: {}",
        outcome["unplaced"]
    );
    let end_s = report["simulated_s"].as_f64().expect("simulated_s");
    let mut end: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in outcome["timelines"].as_array().expect("timelines") {
        let unit = t["unit"].as_str().unwrap().to_string();
        for r in t["runs"].as_array().unwrap() {
            if r["to_s"].as_f64().unwrap() >= end_s - 1e-6 {
                end.entry(unit.clone())
                    .or_default()
                    .push(r["machine"].as_str().unwrap().to_string());
            }
        }
    }
    // A unit moves only away from a killed machine. With staggered kills it may move twice: the
    // first victim's unit placed on the second victim before that one dies, then away again. Its
    // time running nowhere is then the sum of its moves' gaps (the lab measures from the kill to
    // its start on its last machine).
    let mut gap_s: BTreeMap<String, f64> = BTreeMap::new();
    for m in outcome["moves"].as_array().expect("moves") {
        let unit = m["unit"].as_str().unwrap().to_string();
        let from = m["from"].as_str().unwrap();
        assert!(
            kill.iter().any(|(_, id)| id == from),
            "seed {seed}: {unit} moved away from {from}, which was not killed: {}",
            outcome["moves"]
        );
        *gap_s.entry(unit).or_default() += m["gap_s"].as_f64().unwrap();
    }
    Prediction { end, gap_s }
}

#[test]
// long: one lab scenario: capture, simulate, then the same faults in the lab, compared step by step
fn the_simulator_predicts_where_units_go_and_how_long_they_are_down() {
    let Some(fl) = FleetLab::up(5, &[]) else {
        return;
    };
    let _journals = JournalsOnPanic(&fl);
    let ids: Vec<String> = (1..=5).map(|i| fl.machine_id(i)).collect();
    let rack = |i: usize| if i <= 2 { "a" } else { "b" };
    for i in 1..=5 {
        fl.patch_metadata(i, "rack", Some(rack(i)));
    }
    for i in 1..=5 {
        fl.wait_metadata(i, &format!("rack={}", rack(i)));
    }

    // The units, started in one command.
    let mut paths = Vec::new();
    for (name, x_fleet) in UNITS {
        let path = format!("/tmp/units/{name}");
        fl.write_file(
            1,
            &path,
            &format!("[Service]\nExecStart=/bin/sleep 100000\n\n[X-Fleet]\n{x_fleet}"),
        );
        paths.push(path);
    }
    let mut args = vec!["start"];
    args.extend(paths.iter().map(String::as_str));
    fl.fleetctl_ok(1, &args);
    let all: Vec<usize> = (1..=5).collect();
    let before = fl.wait_for(
        "every unit active (the global one on all 5 machines)",
        Duration::from_secs(60),
        |fl| {
            let p = placement(fl, &all);
            p.iter()
                .all(|(u, on)| on.len() == if u == "agent.service" { 5 } else { 1 })
                .then_some(p)
        },
    );
    eprintln!("lab placement before: {before:?}");

    // Capture, until the cluster's unit states (carried by gossip) show every unit where it runs: the
    // capture's check then finds the simulated cluster places each one there too.
    let capture = fl.wait_for(
        "a capture whose check finds every unit where it runs",
        Duration::from_secs(30),
        |fl| {
            let out = fl.fleetctl(1, &["simulate", "capture", "-o", "/tmp/cluster.toml"]);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "capture failed: {err}");
            if err.contains("runs every unit where it runs now") {
                Some(err)
            } else {
                eprintln!("capture: {err}");
                None
            }
        },
    );
    eprintln!("capture: {capture}");
    let root = fl.lab.machine_root(1).expect("machine root");
    let captured = std::fs::read_to_string(root.join("tmp/cluster.toml")).expect("captured file");
    for (name, x_fleet) in UNITS {
        assert!(
            captured.contains(&format!("name = \"{name}\"")) && captured.contains(x_fleet.trim()),
            "{name} missing from the capture:\n{captured}"
        );
    }
    for id in &ids {
        assert!(captured.contains(id), "machine {id} missing:\n{captured}");
    }

    // The operator's edit: the lab's fleetd settings.
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("cluster.toml");
    std::fs::write(
        &scenario,
        format!("{captured}\n[config]\nagent_ttl = \"3s\"\nreconcile_interval = \"1s\"\n"),
    )
    .unwrap();

    // Kill the machine of db-a (with backup, by MachineOf=) and the rack-b machine of cache (or, if
    // that is the same machine, another rack-b machine running a plain unit).
    let db_a = before["db-a.service"][0];
    let mut victims = vec![db_a];
    let cache = before["cache.service"][0];
    let second = if cache != db_a {
        cache
    } else {
        (3..=5)
            .filter(|i| *i != db_a)
            .max_by_key(|i| before.values().filter(|on| on == &&vec![*i]).count())
            .unwrap()
    };
    victims.push(second);
    let kill_ids: Vec<String> = victims.iter().map(|i| ids[i - 1].clone()).collect();
    eprintln!("killing lab machines {victims:?} ({kill_ids:?})");

    // The prediction, over seeds and kill schedules. Placement is deterministic on the same inputs,
    // but the survivors may learn of the two deaths in either order (the seeds draw gossip's probe
    // order; the schedules stagger the kills), and a unit placed after the first death keeps its new
    // machine (stability): each order is one possible outcome. Reality must end in one of the
    // predicted outcomes.
    let mut predictions: Vec<Prediction> = Vec::new();
    for (k, schedule) in schedules(&kill_ids).iter().enumerate() {
        let seeds = if k == 0 { SEEDS } else { 2 };
        predictions.extend((1..=seeds).map(|seed| simulate(&scenario, seed, schedule)));
    }
    let mut outcomes: Vec<BTreeMap<String, Vec<String>>> = Vec::new();
    for p in &predictions {
        if !outcomes.contains(&p.end) {
            outcomes.push(p.end.clone());
        }
    }
    eprintln!(
        "{} distinct predicted outcome(s) over {} runs",
        outcomes.len(),
        predictions.len()
    );
    let moved: Vec<String> = predictions[0].gap_s.keys().cloned().collect();
    let mut range: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for p in &predictions {
        assert_eq!(
            p.gap_s.keys().cloned().collect::<Vec<_>>(),
            moved,
            "the seeds move different units"
        );
        for (u, g) in &p.gap_s {
            let r = range.entry(u.clone()).or_insert((*g, *g));
            r.0 = r.0.min(*g);
            r.1 = r.1.max(*g);
        }
    }
    eprintln!("predicted ends: {outcomes:?}\npredicted time running nowhere: {range:?}");
    // Every unit of a killed machine moves (but the global one).
    for (u, on) in &before {
        if u != "agent.service" && victims.contains(&on[0]) {
            assert!(
                moved.contains(u),
                "{u} was on a killed machine: not predicted to move"
            );
        }
    }

    // Reality: the same two machines die, at least 5 s after fleetd started (long since).
    let mut killed_at = BTreeMap::new();
    for v in &victims {
        killed_at.insert(*v, monotonic_us());
        fl.lab.kill(*v).expect("kill a lab machine");
    }
    let alive: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !victims.contains(i))
        .collect();
    let id_of = |i: usize| ids[i - 1].clone();
    // The report's timelines cover the units that moved or ran nowhere; every other unit stays where
    // it was (the global one on the survivors).
    let wants: Vec<BTreeMap<String, Vec<usize>>> = outcomes
        .iter()
        .map(|predicted_end| {
            before
                .iter()
                .map(|(u, was)| {
                    let mut idx: Vec<usize> = match predicted_end.get(u) {
                        Some(on) => on
                            .iter()
                            .map(|id| ids.iter().position(|x| x == id).expect("a lab machine") + 1)
                            .collect(),
                        None => was.iter().copied().filter(|i| alive.contains(i)).collect(),
                    };
                    idx.sort();
                    (u.clone(), idx)
                })
                .collect()
        })
        .collect();
    eprintln!("expected in the lab, one of: {wants:?}");
    let after = fl.wait_for(
        "every unit on the machine the simulator predicted",
        Duration::from_secs(60),
        |fl| {
            let p = placement(fl, &alive);
            for (u, on) in &p {
                assert!(
                    u == "agent.service" || on.len() <= 1,
                    "{u} active on {on:?} at once"
                );
            }
            if wants.contains(&p) {
                Some(p)
            } else {
                eprintln!("lab now: {p:?}");
                None
            }
        },
    );
    // And it stays there.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(placement(&fl, &alive), after, "units moved again");

    let mut lines = Vec::new();
    for u in &moved {
        let to = after[u][0];
        let from = before[u][0];
        let started: u64 = fl
            .show(to, u, "InactiveExitTimestampMonotonic")
            .parse()
            .expect("InactiveExitTimestampMonotonic");
        let measured = (started.saturating_sub(killed_at[&from])) as f64 / 1e6;
        let (lo, hi) = range[u];
        lines.push(format!(
            "{u}: m{from} -> m{to} ({}), ran nowhere {measured:.3}s measured, {lo:.3}-{hi:.3}s predicted",
            &id_of(to)[..8]
        ));
        let slack = SLACK.as_secs_f64();
        assert!(
            measured >= lo - slack && measured <= hi + slack,
            "{u}: measured {measured:.3}s outside the predicted {lo:.3}-{hi:.3}s (slack {slack}s)\n{}",
            lines.join("\n")
        );
    }
    eprintln!("{}", lines.join("\n"));
}
