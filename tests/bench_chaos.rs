//! The chaos bench's parts that need no lab (`benches/chaos/`): its fault plan and which stretches of
//! a run get evidence. The bench itself runs in the lab (`scripts/bench-chaos.sh`).

#[path = "../benches/chaos/evidence.rs"]
mod evidence;
mod lab;
#[path = "../benches/chaos/plan.rs"]
mod plan;
#[path = "../benches/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use evidence::{attribute, faults_around, stalls, Move, Stall};
use plan::{plan, Done, EtcdSide, Fault, Kind, FRESH, RECOVER};
use support::journal::{Run, Timeline};

const MACHINES: usize = 5;

fn seeds() -> impl Iterator<Item = u64> {
    [1, 7, 42, 20261206, 987_654_321].into_iter()
}

#[test]
fn a_seed_always_gives_the_same_plan() {
    let a = plan(20261206, Duration::from_secs(1800), MACHINES, 2);
    let b = plan(20261206, Duration::from_secs(1800), MACHINES, 2);
    assert_eq!(a, b);
    let c = plan(20261207, Duration::from_secs(1800), MACHINES, 2);
    assert_ne!(a, c, "another seed, another plan");
    // 30 minutes: hundreds of faults (0.5-4 s apart when machines are free).
    assert!(a.len() > 200, "{} faults in 30 min", a.len());
}

#[test]
fn faults_are_numbered_in_order_and_healed_within_the_run() {
    for seed in seeds() {
        for length in [
            Duration::from_secs(20),
            Duration::from_secs(300),
            Duration::from_secs(1800),
        ] {
            let p = plan(seed, length, MACHINES, 2);
            let end = length - Duration::from_secs(1);
            for (k, f) in p.iter().enumerate() {
                assert_eq!(f.id, k + 1);
                assert!(f.at >= Duration::from_secs(2), "{f:?}");
                assert!(f.at <= f.heal && f.heal <= end, "seed {seed}: {f:?}");
                if f.kind == Kind::FleetdKill {
                    assert_eq!(f.at, f.heal, "an instant fault");
                }
                assert!(!f.machines.is_empty());
                assert!(f.machines.iter().all(|m| (1..=MACHINES).contains(m)));
            }
            assert!(p.windows(2).all(|w| w[0].at < w[1].at), "seed {seed}");
        }
    }
}

/// The machines counted as faulted at `t`: every victim from the injection to the heal plus its
/// quiet time (3 s; 6 s after a fleetd restart). Written from the bench's rules, not from `plan`.
fn faulted_at(p: &[Fault], t: Duration) -> BTreeSet<usize> {
    p.iter()
        .filter(|f| {
            let quiet = match f.kind {
                Kind::Crash | Kind::FleetdKill | Kind::FleetdKillDown => Duration::from_secs(6),
                _ => Duration::from_secs(3),
            };
            f.at <= t && t < f.heal + quiet
        })
        .flat_map(|f| f.machines.clone())
        .collect()
}

#[test]
fn at_most_max_faults_machines_are_faulted_at_once_and_a_partition_is_alone() {
    assert_eq!(RECOVER, Duration::from_secs(3));
    assert_eq!(FRESH, Duration::from_secs(6));
    for seed in seeds() {
        for max in 1..MACHINES {
            let p = plan(seed, Duration::from_secs(900), MACHINES, max);
            for f in &p {
                let before: Vec<&Fault> = p.iter().filter(|g| g.id < f.id).collect();
                let others: Vec<Fault> = before.into_iter().cloned().collect();
                let busy = faulted_at(&others, f.at);
                if let Kind::Partition(_) = f.kind {
                    assert!(
                        busy.is_empty(),
                        "seed {seed}: {f:?} begins while {busy:?} are faulted"
                    );
                    assert!(
                        p.iter().all(|g| g.id <= f.id || g.at >= f.heal + RECOVER),
                        "seed {seed}: {f:?} is not alone"
                    );
                    continue;
                }
                assert!(
                    !busy.contains(&f.machines[0]),
                    "seed {seed}: {f:?} on a machine still faulted or with a fresh fleetd"
                );
                assert!(
                    busy.len() < max,
                    "seed {seed}, max {max}: {f:?} while {busy:?} are faulted"
                );
            }
        }
    }
}

#[test]
fn a_fresh_fleetd_is_not_faulted_for_5_s() {
    for seed in seeds() {
        let p = plan(seed, Duration::from_secs(1800), MACHINES, 2);
        let mut restarts = 0;
        for f in p.iter().filter(|f| f.kind.restarts_fleetd()) {
            restarts += 1;
            let m = f.machines[0];
            for g in p.iter().filter(|g| g.id > f.id && g.machines.contains(&m)) {
                assert!(
                    g.at >= f.heal + Duration::from_secs(5),
                    "seed {seed}: {g:?} {} ms after fleetd restarted ({f:?})",
                    (g.at - f.heal).as_millis()
                );
            }
            for g in p.iter().filter(|g| matches!(g.kind, Kind::Partition(_))) {
                assert!(
                    g.at < f.at || g.at >= f.heal + Duration::from_secs(5),
                    "seed {seed}: partition {g:?} right after {f:?}"
                );
            }
        }
        assert!(
            restarts > 20,
            "seed {seed}: {restarts} fleetd restarts in 30 min"
        );
    }
}

#[test]
fn thirty_minutes_draw_every_kind_of_fault() {
    let p = plan(20261206, Duration::from_secs(1800), MACHINES, 2);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &p {
        *kinds.entry(f.kind.name()).or_default() += 1;
        match f.kind {
            Kind::Partition(_) => assert!(
                (1..=2).contains(&f.machines.len()),
                "a minority of 1 or 2: {f:?}"
            ),
            Kind::Loss(pct) => assert!((10..=60).contains(&pct), "{f:?}"),
            _ => assert_eq!(f.machines.len(), 1, "{f:?}"),
        }
    }
    for k in [
        Kind::Crash,
        Kind::FleetdKill,
        Kind::FleetdKillDown,
        Kind::FleetdStop,
        Kind::Freeze,
        Kind::Cut,
        Kind::Drop,
        Kind::Loss(10),
        Kind::EtcdLoss,
        Kind::Partition(EtcdSide::Both),
        Kind::Partition(EtcdSide::Majority),
        Kind::Partition(EtcdSide::Minority),
    ] {
        assert!(kinds.contains_key(k.name()), "no {} in {kinds:?}", k.name());
    }
}

fn run(machine: usize, unit: &str, start: u64, end: Option<u64>) -> Run {
    Run {
        machine,
        unit: unit.to_string(),
        start,
        end,
    }
}

fn units(n: usize) -> Vec<String> {
    (1..=n).map(|k| format!("u{k}")).collect()
}

/// A timeline in seconds (as µs) from 0 to 1000 s.
fn timeline(runs: Vec<Run>, kills: &[(usize, u64)], freezes: &[(usize, u64, u64)]) -> Timeline {
    let mut tl = Timeline {
        runs,
        end: 1000,
        ..Timeline::default()
    };
    for &(m, t) in kills {
        tl.kills.entry(m).or_default().push(t);
    }
    for &(m, f, t) in freezes {
        tl.freezes.entry(m).or_default().push((f, t));
    }
    tl.runs.sort_by_key(|r| r.start);
    tl
}

#[test]
fn a_unit_that_never_runs_again_gets_evidence_and_others_do_not() {
    let tl = timeline(
        vec![
            // u1 moves from m1 to m2 with a short gap: nothing to report.
            run(1, "u1", 0, Some(400)),
            run(2, "u1", 402, None),
            // u2 stops on m3 at 600 and never runs again.
            run(3, "u2", 0, Some(600)),
            // u3 runs on m4, which is killed at 700 (no end line): never again.
            run(4, "u3", 0, None),
            // u4 is nowhere from 100 to 300 (long), then runs until the end.
            run(5, "u4", 0, Some(100)),
            run(1, "u4", 300, None),
            // u5 ends 5 before the end: within the slack, not reported.
            run(2, "u5", 0, Some(995)),
        ],
        &[(4, 700)],
        &[],
    );
    let got = stalls(&tl, &units(6), 0, 150, 10);
    let want = vec![
        // u6 never ran at all: nowhere from the start.
        Stall {
            unit: "u6".into(),
            from: 0,
            to: 1000,
            never_restarted: true,
            last_on: None,
        },
        Stall {
            unit: "u2".into(),
            from: 600,
            to: 1000,
            never_restarted: true,
            last_on: Some(3),
        },
        Stall {
            unit: "u3".into(),
            from: 700,
            to: 1000,
            never_restarted: true,
            last_on: Some(4),
        },
        Stall {
            unit: "u4".into(),
            from: 100,
            to: 300,
            never_restarted: false,
            last_on: Some(5),
        },
    ];
    assert_eq!(got, want);
    // A higher bar for long stretches leaves out u4, never the units that never restarted.
    let got = stalls(&tl, &units(6), 0, 250, 10);
    assert_eq!(got.iter().filter(|s| s.never_restarted).count(), 3);
    assert!(got.iter().all(|s| s.unit != "u4"));
}

#[test]
fn a_frozen_copy_does_not_count_as_running() {
    // u1's only copy is on m2, frozen from 500 to the end of the observation (its thaw at 1000).
    let tl = timeline(vec![run(2, "u1", 0, None)], &[], &[(2, 500, 1000)]);
    let got = stalls(&tl, &units(1), 0, 150, 10);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].from, got[0].to, got[0].never_restarted),
        (500, 1000, true)
    );
    // Thawed at 900, it ran again: a long stretch nowhere, not a stall to the end.
    let tl = timeline(vec![run(2, "u1", 0, None)], &[], &[(2, 500, 900)]);
    let got = stalls(&tl, &units(1), 0, 150, 10);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].from, got[0].to, got[0].never_restarted),
        (500, 900, false)
    );
}

fn done(id: usize, before: u64, healed: Option<u64>) -> Done {
    Done {
        fault: Fault {
            id,
            kind: Kind::Cut,
            machines: vec![1],
            at: Duration::ZERO,
            heal: Duration::ZERO,
        },
        before,
        after: before + 1,
        healed: healed.map(|h| (h, h + 1)),
        error: None,
        heal_error: None,
        retried: None,
    }
}

#[test]
fn the_faults_around_a_stall_include_those_still_under_way() {
    let mut faults = vec![
        done(1, 10, Some(20)),   // over long before
        done(2, 50, Some(200)),  // began before the window, healed inside
        done(3, 120, Some(130)), // inside
        done(4, 180, None),      // injected, never healed (interrupted): lasts to the end
        done(5, 400, Some(410)), // after
    ];
    // #6 failed to be injected at 90: it did nothing after 91.
    let mut failed = done(6, 90, None);
    failed.error = Some("nft: no such table".into());
    faults.push(failed);
    // #7's heal failed at 60 and worked when tried again at 500: under way until 500.
    let mut unhealed = done(7, 40, Some(60));
    unhealed.heal_error = Some("boot: timed out".into());
    unhealed.retried = Some((500, None));
    faults.push(unhealed);
    let ids = |v: Vec<&Done>| v.iter().map(|d| d.fault.id).collect::<Vec<_>>();
    assert_eq!(
        ids(faults_around(&faults, 100, 300, 1000)),
        vec![7, 2, 3, 4]
    );
    assert_eq!(ids(faults_around(&faults, 0, 15, 1000)), vec![1]);
    assert_eq!(ids(faults_around(&faults, 85, 95, 1000)), vec![7, 2, 6]);
}

fn on(mut d: Done, kind: Kind, machines: &[usize]) -> Done {
    d.fault.kind = kind;
    d.fault.machines = machines.to_vec();
    d
}

/// A move during a fault that must not move units counts against it only when no other fault on the
/// moved unit's machine was under way from the injection to the move: faults on other machines do not
/// excuse it, one on the same machine (begun before the move, or still under way) or a partition does.
#[test]
fn a_move_counts_against_a_fault_only_without_another_fault_on_its_machine() {
    let faults = vec![
        on(done(1, 100, Some(200)), Kind::EtcdLoss, &[3]),
        // Another machine crashed meanwhile: no excuse for a move away from m3.
        on(done(2, 120, Some(180)), Kind::Crash, &[4]),
        // m3 itself is cut right after the etcd loss's heal.
        on(done(3, 230, Some(260)), Kind::Cut, &[3]),
        // A partition later on.
        on(
            done(4, 400, Some(450)),
            Kind::Partition(EtcdSide::Both),
            &[1],
        ),
        // An injection that failed did nothing.
        {
            let mut f = on(done(5, 150, None), Kind::Freeze, &[3]);
            f.error = Some("freeze: no such cgroup".into());
            f
        },
    ];
    let mv = |unit: &str, at: u64| Move {
        fault: &faults[0],
        unit: unit.to_string(),
        from: 3,
        to: 1,
        at,
    };
    let (needless, other) = attribute(
        &faults,
        vec![
            mv("during", 160),
            mv("after-cut", 240),
            mv("before-cut", 210),
        ],
        1000,
    );
    let names = |v: &[Move]| v.iter().map(|m| m.unit.clone()).collect::<Vec<_>>();
    assert_eq!(names(&needless), ["during", "before-cut"]);
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].0.unit, "after-cut");
    assert_eq!(
        other[0].1.iter().map(|d| d.fault.id).collect::<Vec<_>>(),
        [3]
    );
    // A move during a partition is the partition's too (it concerns every machine).
    let late = Move {
        fault: &faults[0],
        unit: "late".into(),
        from: 3,
        to: 1,
        at: 420,
    };
    let (needless, other) = attribute(&faults, vec![late], 1000);
    assert!(needless.is_empty());
    assert_eq!(
        other[0].1.iter().map(|d| d.fault.id).collect::<Vec<_>>(),
        [3, 4]
    );
}

/// The overlap checker on its made-up timeline (the benches run it before every run too): planted
/// overlaps, both thaw cases, a killed copy and a gap are found, and nothing else.
#[test]
fn the_overlap_checker_finds_the_planted_overlaps_and_the_thaw_cases() {
    support::journal::self_check();
}
