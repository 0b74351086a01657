//! Measures `schedule` on a large cluster: a cold start (nothing claimed), the steady state (every unit
//! claimed where the previous plan put it, which is what every agent recomputes on each change), a machine
//! failure, and a self-conflicting group larger than the machines it may use. Then the incremental
//! `Planner` on the same cluster in the steady state: one pass per change for a mix of realistic changes
//! (machines dying and coming back, the moved units' claims arriving one by one, units submitted and
//! destroyed, metadata changing, a unit's requirements changing, global units submitted and destroyed: on
//! every machine, on half of them, with `Conflicts=`), each pass's
//! time, and its plan compared with `schedule`'s on the same inputs (outside the timed part). Prints
//! figures; asserts nothing about timing.
//!
//!     cargo run --release -p fleet-sched --example placement_bench [machines] [units] [repeat]
//!
//! `repeat` > 0 only runs the cold start that many times (for a profiler). `BENCH_DEBUG=1` prints every
//! incremental pass over 1 ms and the units left unreserved.

use std::collections::BTreeMap;
use std::time::Instant;

// The helpers the placement property tests share (`with_plan_claims`).
#[path = "../tests/common/mod.rs"]
mod common;
use common::with_plan_claims;

use fleet_sched::placement::{Change, PassStats, Planner};
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

fn measure(what: &str, machines: &[MachineInfo], units: &[UnitInfo]) -> Plan {
    // Best of three, so that a busy shared machine disturbs the figure less; wall time for the
    // placements/s, and the thread's CPU time to compare with the incremental passes.
    let mut best = f64::INFINITY;
    let mut best_cpu = f64::INFINITY;
    let mut plan = Plan::default();
    for _ in 0..3 {
        let (start, cpu) = (Instant::now(), thread_cpu());
        plan = schedule(machines, units);
        best = best.min(start.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu, thread_cpu()) {
            best_cpu = best_cpu.min(b - a);
        }
    }
    let placed = plan
        .decisions
        .values()
        .filter(|d| !matches!(d, Decision::Unplaceable(_)))
        .count();
    println!(
        "{what:<34} {:>6} machines {:>7} units {:>8.1} ms ({:.1} ms CPU) {:>10.0} placements/s  ({placed} placed, {} unplaceable)",
        machines.len(),
        units.len(),
        best * 1e3,
        best_cpu * 1e3,
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
    let claimed = with_plan_claims(&units, &plan);
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

    incremental(&machines, &claimed, &plan);
}

/// Pass times of one kind of change.
#[derive(Default)]
struct Kind {
    ms: Vec<f64>,
    units: usize,
    machines: usize,
    global_moves: usize,
}

impl Kind {
    fn add(&mut self, secs: f64, stats: PassStats) {
        self.ms.push(secs * 1e3);
        self.units += stats.units;
        self.machines += stats.machines;
        self.global_moves += stats.global_moves;
    }

    fn print(&mut self, what: &str) {
        self.ms.sort_by(f64::total_cmp);
        let n = self.ms.len();
        let pct = |p: f64| self.ms[((n as f64 - 1.0) * p).round() as usize];
        println!(
            "{what:<44} {n:>5} passes  p50 {:>7.3} ms  p90 {:>7.3}  max {:>7.3}  {:>6.1} units/pass {:>8.1} machines/pass {:>8.1} global moves/pass",
            pct(0.5),
            pct(0.9),
            pct(1.0),
            self.units as f64 / n as f64,
            self.machines as f64 / n as f64,
            self.global_moves as f64 / n as f64,
        );
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time of this thread (`CLOCK_THREAD_CPUTIME_ID`), in seconds.
fn thread_cpu() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, which lives for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// One pass, timed in thread CPU time when available (wall time otherwise).
fn timed(planner: &mut Planner, kind: &mut Kind, changes: Vec<Change>) {
    let label = if std::env::var("BENCH_DEBUG").is_ok() {
        format!("{:.150}", format!("{:?}", changes.first()))
    } else {
        String::new()
    };
    let (wall, before) = (Instant::now(), thread_cpu());
    let stats = planner.apply(changes);
    let secs = match (before, thread_cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => wall.elapsed().as_secs_f64(),
    };
    if !label.is_empty() && secs > 1e-3 {
        println!("slow pass {:.3} ms {stats:?}: {label}", secs * 1e3);
    }
    kind.add(secs, stats);
}

type Claims = std::collections::HashMap<UnitName, Option<MachineId>>;

/// What the agents do after a pass: claim where the plan moved units (the difference is computed outside
/// the timed part), one claim per pass as the writes arrive.
fn converge(planner: &mut Planner, kind: &mut Kind, claims: &mut Claims) {
    let moved: Vec<(UnitName, Option<MachineId>)> = planner
        .plan()
        .decisions
        .iter()
        .filter(|(_, d)| !matches!(d, Decision::Global(_)))
        .map(|(n, d)| {
            let to = match d {
                Decision::On(m) => Some(m.clone()),
                _ => None,
            };
            (n.clone(), to)
        })
        .filter(|(n, to)| claims.get(n).cloned().flatten() != *to)
        .collect();
    for (n, to) in moved {
        claims.insert(n.clone(), to.clone());
        timed(
            planner,
            kind,
            vec![Change::Claim {
                unit: n,
                machine: to,
            }],
        );
    }
}

/// The kinds of change the incremental planner is timed on.
const KINDS: &[&str] = &[
    "machine dies",
    "machine comes back",
    "unit submitted",
    "unit destroyed",
    "machine metadata changes (and back)",
    "unit requirements change (claimed unit)",
    "100 claims in one pass",
    "claim written after a move (one per pass)",
    "global unit submitted / destroyed",
    "global unit with MachineMetadata= submitted / destroyed",
    "global unit with Conflicts= submitted / destroyed",
];

/// The incremental planner in the steady state of the same cluster.
fn incremental(machines: &[MachineInfo], claimed: &[UnitInfo], plan: &Plan) {
    println!();
    let rss = rss_mib();
    let start = Instant::now();
    let mut planner = Planner::new(machines, claimed);
    println!(
        "Planner::new, steady state: {:.1} ms, +{:.0} MiB RSS",
        start.elapsed().as_secs_f64() * 1e3,
        rss_mib() - rss
    );
    assert_eq!(planner.plan(), plan, "the planner gives schedule's plan");
    let cpu = thread_cpu().is_some();
    let mut checks = 0;
    let mut check = |planner: &Planner| {
        let (ms, us) = planner.inputs();
        assert_eq!(
            planner.plan(),
            &schedule(&ms, &us),
            "the planner gives schedule's plan"
        );
        checks += 1;
    };
    let mut claims: Claims = claimed
        .iter()
        .map(|u| (u.name.clone(), u.claim.clone()))
        .collect();
    let mut kinds: Vec<(&str, Kind)> = KINDS.iter().map(|&k| (k, Kind::default())).collect();
    let k = |name: &str| KINDS.iter().position(|x| *x == name).unwrap();
    let claim_kind = k("claim written after a move (one per pass)");
    let rounds = 20;
    for r in 0..rounds {
        // A machine dies, its units move; later it comes back.
        let victim = machines[(r * 977 + 13) % machines.len()].clone();
        timed(
            &mut planner,
            &mut kinds[k("machine dies")].1,
            vec![Change::MachineGone(victim.id.clone())],
        );
        if r < 3 {
            check(&planner);
        }
        converge(&mut planner, &mut kinds[claim_kind].1, &mut claims);
        timed(
            &mut planner,
            &mut kinds[k("machine comes back")].1,
            vec![Change::Machine(victim.clone())],
        );
        converge(&mut planner, &mut kinds[claim_kind].1, &mut claims);

        // A unit is submitted (half of them with metadata); another is destroyed.
        let metadata_req = if r % 2 == 0 {
            md(&[("region", &["eu"])])
        } else {
            BTreeMap::new()
        };
        let new = unit(
            format!("bench-new{r}.service"),
            Requirements {
                metadata: metadata_req,
                ..Requirements::default()
            },
        );
        timed(
            &mut planner,
            &mut kinds[k("unit submitted")].1,
            vec![Change::Unit(new)],
        );
        converge(&mut planner, &mut kinds[claim_kind].1, &mut claims);
        let gone = UnitName::parse(&format!("app{}.service", r * 131)).unwrap();
        claims.remove(&gone);
        timed(
            &mut planner,
            &mut kinds[k("unit destroyed")].1,
            vec![Change::UnitGone(gone)],
        );

        // A machine's metadata changes (role web -> batch): units requiring role=web move off it; then
        // it changes back (nothing moves back).
        let changed = machines[(r * 499 + 7) % machines.len()].clone();
        let mut other = changed.clone();
        other.metadata.insert("role".into(), "batch".into());
        timed(
            &mut planner,
            &mut kinds[k("machine metadata changes (and back)")].1,
            vec![Change::Machine(other)],
        );
        if r < 3 {
            check(&planner);
        }
        converge(&mut planner, &mut kinds[claim_kind].1, &mut claims);
        timed(
            &mut planner,
            &mut kinds[k("machine metadata changes (and back)")].1,
            vec![Change::Machine(changed)],
        );
        converge(&mut planner, &mut kinds[claim_kind].1, &mut claims);

        // A placed unit's requirements change: it now conflicts with the db units.
        let target = UnitName::parse(&format!("app{}.service", r * 131 + 3)).unwrap();
        let req = Requirements {
            conflicts: vec!["db*.service".into()],
            ..Requirements::default()
        };
        let u = UnitInfo {
            name: target.clone(),
            requirements: req,
            desired: DesiredState::Launched,
            claim: claims.get(&target).cloned().flatten(),
        };
        timed(
            &mut planner,
            &mut kinds[k("unit requirements change (claimed unit)")].1,
            vec![Change::Unit(u)],
        );
        converge(&mut planner, &mut kinds[claim_kind].1, &mut claims);

        // 100 claims written again at once (a batch of the agents' writes, nothing moves).
        let same: Vec<Change> = claims
            .iter()
            .skip(r * 4000)
            .take(100)
            .map(|(n, m)| Change::Claim {
                unit: n.clone(),
                machine: m.clone(),
            })
            .collect();
        timed(
            &mut planner,
            &mut kinds[k("100 claims in one pass")].1,
            same,
        );

        // Global units submitted, then destroyed: on every machine; on half of them (role=web: the pools
        // of other classes, and of every machine, are updated machine by machine); with a Conflicts=
        // glob matching nothing here (placed directly where nothing conflicts with it: everywhere).
        let globals = [
            (
                "global unit submitted / destroyed",
                5,
                Requirements::default(),
            ),
            (
                "global unit with MachineMetadata= submitted / destroyed",
                5,
                Requirements {
                    metadata: md(&[("role", &["web"])]),
                    ..Requirements::default()
                },
            ),
            (
                "global unit with Conflicts= submitted / destroyed",
                2,
                Requirements {
                    conflicts: vec!["bench-none*.service".into()],
                    ..Requirements::default()
                },
            ),
        ];
        for (i, (kind, times, req)) in globals.into_iter().enumerate() {
            if r >= times {
                continue;
            }
            let g = unit(
                format!("bench-global{i}-{r}.service"),
                Requirements {
                    global: true,
                    ..req
                },
            );
            let g_name = g.name.clone();
            let kind = k(kind);
            timed(&mut planner, &mut kinds[kind].1, vec![Change::Unit(g)]);
            if r == 0 && i > 0 {
                check(&planner);
            }
            converge(&mut planner, &mut kinds[claim_kind].1, &mut claims);
            timed(
                &mut planner,
                &mut kinds[kind].1,
                vec![Change::UnitGone(g_name)],
            );
            converge(&mut planner, &mut kinds[claim_kind].1, &mut claims);
        }
        if r == rounds - 1 {
            check(&planner);
        }
    }
    println!(
        "incremental passes at {} machines x {} units, {} ({rounds} rounds; plans checked against schedule {checks} times):",
        machines.len(),
        claimed.len(),
        if cpu { "thread CPU time" } else { "wall time" },
    );
    for (name, kind) in &mut kinds {
        kind.print(name);
    }
    let all: Vec<f64> = kinds
        .iter()
        .filter(|(n, _)| !n.starts_with("global"))
        .flat_map(|(_, k)| k.ms.iter().copied())
        .collect();
    let mut all = all;
    all.sort_by(f64::total_cmp);
    println!(
        "all passes but global units: {} passes, mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        all.len(),
        all.iter().sum::<f64>() / all.len() as f64,
        all[all.len() / 2],
        all[(all.len() - 1) * 99 / 100],
        all[all.len() - 1],
    );
}
