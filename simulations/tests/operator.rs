//! The operator's questions, asked on the command line: faults named by metadata selector and machine
//! ID, and a report that answers which units move where, which cannot be placed and why, how long
//! each ran nowhere and which machines take the load, in text and JSON.
//!
//! The cluster (tests/scenarios/operator.toml): a1, a2 (eu-west, rack a), b1 (eu-west, rack b,
//! disk=ssd), b2 (eu-west, rack b), c1 (us-east, rack b). `db.service` needs disk=ssd (b1 only);
//! `web.service` needs rack=b and conflicts with db (so b2 or c1; c1 runs the two us-east units, so
//! the least loaded b2 takes it). Killing `region=eu-west,rack=b` (b1 and b2, not c1: the pairs AND)
//! must move web to c1, leave db unplaced with the scheduler's reason, and move only units from b1 and
//! b2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleet_sim::scenario::{Fault, Scenario};
use fleet_sim::sim::Sim;
use serde_json::Value;

fn scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/operator.toml")
}

fn fleet_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .arg("run")
        .arg(scenario())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("fleet-sim runs")
}

fn ok(args: &[&str]) -> String {
    let out = fleet_sim(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "fleet-sim {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs with bad arguments: the error (stderr) must name `what`, and no report is printed.
fn refused(args: &[&str], what: &[&str]) {
    let out = fleet_sim(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(out.stdout.is_empty(), "{args:?} printed a report");
    for w in what {
        assert!(
            stderr.contains(w),
            "{args:?}: {stderr:?} does not say {w:?}"
        );
    }
}

const KILL: &[&str] = &["--at", "12s", "--kill", "region=eu-west,rack=b"];

/// The operator's answers after the kill, as JSON (`outcome`), checked against what the cluster must do.
fn check_outcome(r: &Value) {
    let o = &r["outcome"];
    assert_eq!(o["first_fault_s"], 12.0);
    let moves = o["moves"].as_array().expect("moves");
    assert!(!moves.is_empty());
    for m in moves {
        let (from, to) = (m["from"].as_str().unwrap(), m["to"].as_str().unwrap());
        assert!(
            from == "b1" || from == "b2",
            "{m}: only units of the killed machines move"
        );
        assert!(to != "b1" && to != "b2", "{m}: moved onto a dead machine");
        assert!(
            m["gap_s"].as_f64().unwrap() > 0.0,
            "{m}: a move without a gap"
        );
        assert!(m["at_s"].as_f64().unwrap() > 12.0);
        let unit = m["unit"].as_str().unwrap();
        assert!(
            !unit.starts_with("us@") && unit != "db.service",
            "{m}: this unit cannot move"
        );
    }
    assert!(
        moves
            .iter()
            .any(|m| m["unit"] == "web.service" && m["from"] == "b2" && m["to"] == "c1"),
        "web.service must move from b2 to c1: {moves:#?}"
    );
    let unplaced = o["unplaced"].as_array().expect("unplaced");
    assert_eq!(unplaced.len(), 1, "{unplaced:#?}");
    assert_eq!(unplaced[0]["unit"], "db.service");
    assert_eq!(unplaced[0]["last_on"], "b1");
    assert_eq!(
        unplaced[0]["reason"],
        "it cannot be placed: none of the 3 candidate machine(s) matches MachineMetadata disk=ssd"
    );
    // Time running nowhere: db from the kill to the end; every moved unit for its gap.
    let down = o["downtime"].as_array().expect("downtime");
    let db = down.iter().find(|d| d["unit"] == "db.service").expect("db");
    assert_eq!(db["nowhere_s"], 28.0);
    assert_eq!(db["still_down"], true);
    for m in moves {
        let d = down
            .iter()
            .find(|d| d["unit"] == m["unit"])
            .unwrap_or_else(|| panic!("no downtime for {m}"));
        assert_eq!(d["nowhere_s"], m["gap_s"]);
        assert_eq!(d["still_down"], false);
    }
    assert_eq!(down.len(), moves.len() + 1, "{down:#?}");
    // c1 took web: its load rose; only survivors' loads rise, by the moves they received.
    let load = o["load_rises"].as_array().expect("load");
    for l in load {
        let m = l["machine"].as_str().unwrap();
        let received = moves.iter().filter(|x| x["to"] == m).count() as u64;
        assert_eq!(
            l["after"].as_u64().unwrap() - l["before"].as_u64().unwrap(),
            received,
            "{l}"
        );
    }
    assert!(load.iter().any(|l| l["machine"] == "c1"));
    // Safety.
    assert_eq!(r["double_runs"]["episodes"], 0);
    assert_eq!(r["violations"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_metadata_kill_moves_known_units_and_leaves_db_unplaced_in_json() {
    for seed in ["1", "2", "3"] {
        let mut args = KILL.to_vec();
        args.extend(["--format", "json", "--seed", seed]);
        let r: Value = serde_json::from_str(&ok(&args)).expect("JSON report");
        check_outcome(&r);
        let faults = r["faults"].as_array().unwrap();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0][0], 12.0);
    }
}

#[test]
fn the_text_report_answers_first() {
    let svg = std::env::temp_dir().join(format!("fleet-sim-operator-{}.svg", std::process::id()));
    let mut args = KILL.to_vec();
    args.extend(["--svg", svg.to_str().unwrap()]);
    let text = ok(&args);
    // The SVG timeline draws where the disrupted units ran: web on b2, then on c1; db on b1 only.
    let picture = std::fs::read_to_string(&svg).expect("the SVG was written");
    let _ = std::fs::remove_file(&svg);
    for run in [
        "web.service on b2 ",
        "web.service on c1 ",
        "db.service on b1 ",
    ] {
        assert!(picture.contains(run), "the SVG lacks {run:?}");
    }
    assert!(!picture.contains("db.service on c1"));
    let pos = |what: &str| {
        text.find(what)
            .unwrap_or_else(|| panic!("{what:?} not in the report:\n{text}"))
    };
    let web = text
        .lines()
        .find(|l| l.trim_start().starts_with("web.service") && l.contains("->"))
        .unwrap_or_else(|| panic!("no move of web.service:\n{text}"));
    assert!(web.contains("b2 -> c1"), "{web}");
    let db = text
        .lines()
        .find(|l| l.trim_start().starts_with("db.service") && l.contains("cannot be placed"))
        .unwrap_or_else(|| panic!("db.service not unplaced:\n{text}"));
    assert!(
        db.contains("none of the 3 candidate machine(s) matches MachineMetadata disk=ssd"),
        "{db}"
    );
    assert!(db.contains("last on b1"), "{db}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("db.service")
                && l.contains("28.000s")
                && l.contains("still down")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("c1") && l.contains("(+")),
        "{text}"
    );
    // The answers, then safety, then the details.
    assert!(pos("units that moved:") < pos("units that cannot be placed: 1"));
    assert!(pos("units that cannot be placed: 1") < pos("time units ran nowhere:"));
    assert!(pos("time units ran nowhere:") < pos("machines whose load rises most"));
    assert!(pos("machines whose load rises most") < pos("safety:"));
    assert!(pos("safety:") < pos("invariants                all held"));
    assert!(pos("invariants                all held") < pos("detection"));
}

/// The same fault written in the scenario file (`kind = "kill"`, the same selector) gives the same
/// answers as the command line.
#[test]
fn a_fault_in_the_file_is_the_flag() {
    let mut sc = Scenario::load(&scenario()).unwrap();
    let f: Fault =
        toml::from_str("at = \"12s\"\nkind = \"kill\"\nmachines = \"region=eu-west, rack=b\"")
            .expect("a kill fault");
    sc.faults.push(f);
    sc.validate().unwrap();
    let lib = Sim::new(&sc, 1).unwrap().run();
    let lib: Value = serde_json::from_str(&lib.to_json()).unwrap();
    check_outcome(&lib);
    let mut args = KILL.to_vec();
    args.extend(["--format", "json"]);
    let cli: Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(lib["outcome"], cli["outcome"]);
}

#[test]
fn each_flag_takes_the_time_and_duration_of_its_at() {
    // Flags before the first --at take its time; --for applies to its --at's faults.
    let args = [
        "--cut-etcd",
        "a1",
        "--at",
        "10s",
        "--for",
        "5s",
        "--partition",
        "rack=a|c1",
        "--at",
        "20s",
        "--freeze",
        "id:c1",
        "--format",
        "json",
    ];
    let r: Value = serde_json::from_str(&ok(&args)).unwrap();
    let marks: Vec<(f64, String)> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f[0].as_f64().unwrap(), f[1].as_str().unwrap().to_string()))
        .collect();
    let at = |what: &str| -> Vec<f64> {
        marks
            .iter()
            .filter(|(_, f)| f.starts_with(what))
            .map(|(t, _)| *t)
            .collect()
    };
    assert_eq!(
        at("Partition from a1 to etcd for 5s"),
        vec![10.0],
        "{marks:?}"
    );
    assert_eq!(
        at("Partition from rack=a to c1 for 5s"),
        vec![10.0],
        "{marks:?}"
    );
    assert_eq!(at("end of Partition"), vec![15.0, 15.0], "{marks:?}");
    assert_eq!(at("Freeze id:c1"), vec![20.0], "{marks:?}");
    assert!(at("end of Freeze").is_empty(), "{marks:?}");
}

#[test]
fn bad_selectors_and_flags_are_named() {
    refused(
        &["--at", "12s", "--kill", "rack=z"],
        &[
            "--kill rack=z",
            "no machine has metadata rack=z",
            "rack is a or b",
        ],
    );
    // The pairs AND: no us-east machine is in rack a.
    refused(
        &["--at", "12s", "--kill", "region=us-east,rack=a"],
        &["--kill region=us-east,rack=a", "no machine has metadata"],
    );
    refused(
        &["--at", "12s", "--kill", "b"],
        &["--kill b", "machine ID prefix \"b\" is ambiguous", "b1, b2"],
    );
    refused(
        &["--at", "12s", "--cut-etcd", "x9"],
        &["--cut-etcd x9", "no machine ID is or starts with \"x9\""],
    );
    refused(
        &["--at", "12s", "--kill", "9"],
        &["--kill 9", "machine index 9 goes past the last machine"],
    );
    refused(&["--kill", "b1"], &["--kill b1", "no time given", "--at"]);
    refused(
        &["--at", "soon", "--kill", "b1"],
        &["--at soon", "invalid duration"],
    );
    refused(
        &["--at", "12s", "--partition", "a1|a2|b1"],
        &["--partition 'a1|a2|b1'", "two sides"],
    );
    refused(
        &["--at", "12s", "--for", "3s", "--for", "4s", "--kill", "b1"],
        &["--for 4s", "one --for per --at"],
    );
    refused(
        &["--at", "12s", "--kill", "b1", "--at", "20s"],
        &["--at 20s", "no fault flag"],
    );
    refused(
        &["--at", "90s", "--kill", "b1"],
        &["--at 90s", "after the end"],
    );
    refused(
        &["--at", "12s", "--fault", "kind=\"loss\", from=\"a1\""],
        &["--fault", "needs rate"],
    );
    refused(
        &[
            "--at",
            "12s",
            "--fault",
            "kind=\"crash\", machines=\"etcd\"",
        ],
        &["--fault", "etcd is not a machine"],
    );
    refused(
        &["--at", "12s", "--kill", "a1;b1"],
        &["--kill 'a1;b1'", "unknown selector term"],
    );
}
