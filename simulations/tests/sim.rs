//! End-to-end tests of the simulator on small scenarios (fast in debug builds).

use std::path::{Path, PathBuf};

use fleet_sim::report::ViolationKind;
use fleet_sim::scenario::Scenario;
use fleet_sim::sim::Sim;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn scenario(text: &str) -> Scenario {
    Scenario::from_toml(text, &units_dir()).expect("test scenario parses")
}

fn small(mode: &str, faults: &str, extra_config: &str) -> Scenario {
    scenario(&format!(
        r#"
name = "small"
duration = "45s"
[machines]
count = 10
racks = 2
[units]
dir = "units"
only = ["web@.service", "api@.service", "monitor.service"]
instances = {{ "web@.service" = 30, "api@.service" = 5 }}
[config]
gossip_mode = "{mode}"
agent_ttl = "10s"
units_at = "3s"
{extra_config}
[invariants]
converge = "10s"
{faults}
"#
    ))
}

#[test]
fn the_same_seed_gives_a_byte_identical_report() {
    let sc = Scenario::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/small-crash.toml"),
    )
    .expect("scenario loads");
    let a = Sim::new(&sc, 7).unwrap().run();
    let b = Sim::new(&sc, 7).unwrap().run();
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.to_text(), b.to_text());
    assert_eq!(a.to_svg(), b.to_svg());
    // And the seed matters: another seed draws other gossip choices.
    let mut model = sc.clone();
    model.config.gossip_mode = fleet_sim::scenario::GossipMode::Model;
    let m1 = Sim::new(&model, 7).unwrap().run();
    let m2 = Sim::new(&model, 7).unwrap().run();
    assert_eq!(
        m1.to_json(),
        m2.to_json(),
        "model mode is deterministic too"
    );
    let mut c = Sim::new(&sc, 8).unwrap().run();
    c.seed = a.seed;
    assert_ne!(
        a.to_json(),
        c.to_json(),
        "different seeds should not give the same run"
    );
}

#[test]
fn a_crashed_machine_is_detected_and_its_units_move() {
    for mode in ["real", "model"] {
        let sc = small(
            mode,
            r#"
[[fault]]
at = "15s"
kind = "crash"
machines = "4"
"#,
            "",
        );
        let r = Sim::new(&sc, 3).unwrap().run();
        assert!(r.violations.is_empty(), "{mode}: {:#?}", r.violations);
        assert_eq!(r.failures, 1);
        assert_eq!(r.first_detection.count, 1, "{mode}: the crash is detected");
        assert!(
            r.first_detection.max < 3.0,
            "{mode}: detected in {}s",
            r.first_detection.max
        );
        assert!(r.takeovers > 0, "{mode}: its units are taken over");
        assert!(
            r.reschedule.count > 0 && r.reschedule.max < 10.0,
            "{mode}: {:?}",
            r.reschedule
        );
        assert_eq!(r.double_runs.episodes, 0, "{mode}");
    }
}

/// A machine back 1 s after a crash, before every observer's verdict on its previous life: a verdict
/// that arrives after the reboot is about the life that crashed (the identity the observer holds), so
/// it counts as a late detection, never as a false verdict. Counting by machine alone made 9 false
/// verdicts in seeds 3, 6 and 7 of these 10.
#[test]
fn a_verdict_about_a_life_that_crashed_is_no_false_verdict_after_the_reboot() {
    let sc = small(
        "real",
        r#"
[[fault]]
at = "15s"
kind = "crash"
machines = "4"
for = "1s"
"#,
        "",
    );
    let mut late = 0;
    for seed in 1..=10 {
        let r = Sim::new(&sc, seed).unwrap().run();
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        assert_eq!(r.false_down_verdicts, 0, "seed {seed}");
        if r.detection.max >= 1.0 {
            late += 1;
        }
    }
    assert!(
        late > 0,
        "no verdict came after the reboot: the test shows nothing"
    );
}

#[test]
fn a_partition_etcd_outage_and_skew_keep_every_invariant() {
    let sc = small(
        "real",
        r#"
[[fault]]
at = "10s"
kind = "partition"
from = "rack=r00"
to = "rack=r01"
for = "4s"
[[fault]]
at = "16s"
kind = "etcd_outage"
for = "5s"
[[fault]]
at = "12s"
kind = "clock_skew"
machines = "1"
rate = 1.008
for = "10s"
[[fault]]
at = "18s"
kind = "freeze"
machines = "6"
for = "2s"
"#,
        "",
    );
    let r = Sim::new(&sc, 11).unwrap().run();
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert!(r.partition_down_verdicts > 0, "the partition was seen");
    assert_eq!(
        r.fencings, 0,
        "an etcd outage for everyone: every view vouches, nobody fences"
    );
}

#[test]
fn bad_scenarios_say_what_is_wrong() {
    let err = Scenario::from_toml(
        "name='x'\nduration='1s'\n[machines]\ncount=1\n[units]\ndir='units'\n[[fault]]\nat='1s'\nkind='crash'\nmachines='rack.b'\n",
        &units_dir(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown selector"), "{err}");
    // A bare word is a machine ID prefix: one that no machine has is an error naming it.
    let sc = scenario(
        "name='x'\nduration='1s'\n[machines]\ncount=2\n[units]\ndir='units'\n[[fault]]\nat='1s'\nkind='crash'\nmachines='rack'\n",
    );
    let err = Sim::new(&sc, 1).err().expect("no such machine").to_string();
    assert!(
        err.contains("no machine ID is or starts with \"rack\""),
        "{err}"
    );
    let err = Scenario::from_toml(
        "name='x'\nduration='1s'\n[machines]\ncount=1\n[units]\ndir='units'\n[[fault]]\nat='1s'\nkind='loss'\n",
        &units_dir(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs rate"), "{err}");
    let sc = scenario("name='x'\nduration='1s'\n[machines]\ncount=2\n[units]\ndir='nope'\n");
    let err = Sim::new(&sc, 1).err().expect("missing folder").to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn example_scenarios_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 5);
}

#[test]
fn units_that_cannot_start_break_the_placement_bound_and_an_etcd_outage_does_not() {
    // Every start fails: healthy machines could run the units, none does.
    let mut sc = small("real", "", "start_failure = 1.0");
    sc.invariants.placement = fleet_sim::scenario::Dur::secs(10);
    let r = Sim::new(&sc, 2).unwrap().run();
    assert!(
        r.violations
            .iter()
            .any(|v| v.kind == ViolationKind::NotPlaced),
        "{:#?}",
        r.violations
    );
    // etcd is gone for 8 s (less than the TTL) and a machine crashes: its units cannot move while
    // no machine can claim anything, and that is not a placement violation; the others keep
    // running (every view vouches), nobody fences; the units move once etcd is back.
    let mut sc = small(
        "real",
        r#"
[[fault]]
at = "12s"
kind = "etcd_outage"
for = "8s"
[[fault]]
at = "13s"
kind = "crash"
machines = "4"
"#,
        "",
    );
    sc.invariants.placement = fleet_sim::scenario::Dur::secs(10);
    let r = Sim::new(&sc, 2).unwrap().run();
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!(r.fencings, 0);
    assert!(r.moves >= 1, "{r:#?}");
    assert_eq!(
        r.moves, r.reschedule.count as u64,
        "only the crashed machine's units moved"
    );
    assert!(
        r.reschedule.p50 >= 7.0,
        "they waited for etcd: {:?}",
        r.reschedule
    );
}

#[test]
fn a_partition_that_never_heals_breaks_convergence() {
    let sc = small(
        "model",
        r#"
[[fault]]
at = "10s"
kind = "partition"
from = "rack=r00"
to = "rack=r01"
"#,
        "",
    );
    let r = Sim::new(&sc, 4).unwrap().run();
    assert!(
        r.violations
            .iter()
            .any(|v| v.kind == ViolationKind::NoConvergence),
        "{:#?}",
        r.violations
    );
}

#[test]
fn durations_and_selectors_parse() {
    use fleet_sim::scenario::{Dur, Selector};
    assert_eq!(Dur::parse("250ms"), Ok(Dur(250_000)));
    assert_eq!(Dur::parse("2m"), Ok(Dur::secs(120)));
    assert_eq!(Dur::parse("1.5s"), Ok(Dur(1_500_000)));
    assert!(Dur::parse("3 parsecs").is_err());
    assert_eq!(Dur::secs(30).to_string(), "30s");
    assert_eq!(Selector::parse("0-9"), Ok(Selector::Range(0, 9)));
    let meta = |pairs: &[(&str, &[&str])]| {
        Selector::Meta(
            pairs
                .iter()
                .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
                .collect(),
        )
    };
    assert_eq!(
        Selector::parse("3,rack=r1"),
        Ok(Selector::Union(vec![
            Selector::Range(3, 3),
            meta(&[("rack", &["r1"])])
        ]))
    );
    // Metadata pairs AND (the same key twice: either value, as MachineMetadata=).
    assert_eq!(
        Selector::parse("region=eu-west, rack=b,rack=c"),
        Ok(meta(&[("rack", &["b", "c"]), ("region", &["eu-west"])]))
    );
    assert_eq!(Selector::parse("3f9a"), Ok(Selector::Id("3f9a".into())));
    assert_eq!(Selector::parse("id:42"), Ok(Selector::Id("42".into())));
    assert!(Selector::parse("").is_err());
    assert!(Selector::parse("rack=").is_err());
    assert!(Selector::parse("9-3").is_err());
    assert!(Selector::parse("a.b").is_err());
}

/// Issue 14.3: a cluster of the product's real gossip and decision cores forms from scratch (every
/// machine boots at 0 and joins; fleetd joins the machines announced in etcd), every view holds
/// every machine after a few simulated seconds, and forming costs each machine a bounded amount of
/// anti-entropy (a storm of full syncs, one per announced machine, cost each O(n) exchanges of O(n)).
/// At 200 machines every membership converges within the 3 s bound; 1,000 machines form in
/// `a_thousand_machines_of_real_cores_form_take_units_and_survive_a_crash` (checked at its end).
const FORMATION_MACHINES: usize = 200;
/// Anti-entropy bytes per machine and second while forming, at most (9.1 kB/s measured at 200
/// machines, seed 1, release build of 14bfe9a).
const SYNC_BOUND: f64 = 50_000.0;

#[test]
fn a_cluster_of_real_cores_forms_from_scratch() {
    forms_from_scratch(1);
}

/// The same formation over seeds 2 to 20 (about 15 s each in a debug build):
/// `cargo test -p fleet-sim --test sim -- --ignored forms_from_scratch_over_seeds`. With
/// `fence_after` 700 ms, 9 of seeds 1-20 failed before a join named again asked the machines it
/// had not asked yet (`Node::join`).
#[test]
#[ignore]
fn a_cluster_of_real_cores_forms_from_scratch_over_seeds() {
    for seed in 2..=20 {
        forms_from_scratch(seed);
    }
}

/// Issue 14.3, in CI: 1,000 machines of the product's real gossip and decision cores (no model)
/// form from scratch, take 320 units at 3 s, and one machine (holding one of them)
/// crashes at 5 s. Every invariant holds, the crash is seen by every other machine and its units
/// run elsewhere, and by the end every view holds exactly the 999 live machines. The cores run
/// optimised in the dev profile (Cargo.toml) for this; the same run in a release build:
/// `fleet-sim run simulations/tests/scenarios/thousand-real.toml` (docs/benchmarks.md).
#[test]
fn a_thousand_machines_of_real_cores_form_take_units_and_survive_a_crash() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/thousand-real.toml");
    let sc = Scenario::load(&path).expect("scenario loads");
    let r = Sim::new(&sc, 1).unwrap().run();
    assert_eq!(r.gossip_mode, "real");
    assert_eq!(r.machines, 1000);
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!(r.double_runs.episodes, 0);
    assert_eq!(r.failures, 1);
    assert_eq!(r.false_down_verdicts, 0);
    // Every live machine's own view saw the crash (999 observers), within the failover bound.
    assert_eq!(r.detection.count, 999, "{:?}", r.detection);
    assert!(r.detection.max < 5.0, "{:?}", r.detection);
    assert!(
        r.takeovers >= 1,
        "the crashed machine's units are taken over"
    );
    assert!(
        r.reschedule.count >= 1 && r.reschedule.max < 5.0,
        "{:?}",
        r.reschedule
    );
    assert_eq!(r.initial_placement.count, 320, "{:?}", r.initial_placement);
    let last = r.series.last().expect("samples");
    assert_eq!(last.live_machines, 999);
    assert_eq!(
        last.wrong_views, 0,
        "every view holds the 999 live machines"
    );
    assert_eq!(last.unavailable_units, 0);
    assert_eq!(last.double_running_units, 0);
}

fn forms_from_scratch(seed: u64) {
    let n = FORMATION_MACHINES;
    let sc = scenario(&format!(
        r#"
name = "formation"
duration = "4s"
[machines]
count = {n}
racks = 10
[units]
dir = "units"
only = ["monitor.service"]
[config]
gossip_mode = "real"
units_at = "1s"
[invariants]
converge = "3s"
"#
    ));
    let r = Sim::new(&sc, seed).unwrap().run();
    assert_eq!(r.gossip_mode, "real");
    assert_eq!(r.machines, n);
    assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
    let last = r.series.last().expect("samples");
    assert_eq!(last.live_machines, n);
    assert_eq!(
        last.wrong_views, 0,
        "seed {seed}: every view holds every machine"
    );
    let sync = r.gossip.sync_bytes_per_machine_s;
    assert!(
        sync < SYNC_BOUND,
        "seed {seed}: {sync} B/s of anti-entropy per machine while forming"
    );
}
