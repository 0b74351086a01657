//! Chaos benchmark (issue 11), on a 5-machine cluster lab running the fleetd of this build profile
//! with fleetd's default settings, and 30 plain sleep services.
//!
//! A nemesis injects random faults for a given time, each healed after a random time: SIGKILL of a
//! machine (booted again at heal), SIGKILL of fleetd (restarted by systemd, or kept down by a runtime
//! `Restart=no` until heal), SIGSTOP/SIGCONT of fleetd, cgroup freeze/thaw of a whole machine, link
//! cut/heal, all traffic dropped, packet loss, etcd unreachable for a machine, and partitions of the
//! lab network (1|4 or 2|3, etcd reachable from both sides, the majority or the minority). At most
//! `--max-faults` machines are faulted at once (a partition is alone). The plan is drawn from the seed
//! before the run (`--plan` prints it), so a seed always gives the same faults at the same times.
//!
//! The checker: one thread per machine asks its systemd every 100 ms which units are active; at the
//! end, every machine's journal (kept on its lab disk, so that a killed machine's survives) gives each
//! copy of each unit exactly, on the host's clock (`support::journal`): the longest overlap of two
//! copies (goal 0 ms; a frozen machine's copies do not execute until it is thawed, and what follows a
//! thaw is reported apart, counted from right before the nemesis's write that thaws the machine, with
//! where its time goes: docs/safety.md bounds it by thaw → kill), the longest time a unit ran
//! nowhere, and the failover time of every fault that must move units (from the fault to the last of
//! the victim's units started elsewhere, when that happened before the heal). The samplers' own longest
//! stretches per unit are printed beside them, and a machine whose journal begins after the chaos did
//! (it lost its beginning: those copies are missing from every journal figure) is named. On any overlap it writes
//! the evidence (faults around it, both machines' journals) to `--out`; so it does for a unit that
//! never ran again until the end (or ran nowhere for 60 s or more; when none did, for the run's longest
//! stretch nowhere if it lasted 10 s or more): the faults under way around its stop, and every machine's
//! journal about it (all of fleetd's lines around the stop, then the lines naming the unit); for a thaw
//! that ended in an overlap but whose guard logged no kill within 5 s (`thaw-no-kill-<fault>.txt`: the
//! thawed machine's lines about those units around the thaw); and so it does for every unit that a fault which must move nothing (fleetd
//! restarted, etcd loss, partition with etcd on both sides or with the minority) saw start elsewhere by
//! 5 s after its heal: the fault, the unit, both machines, the times, the faults under way, and both
//! machines' journals around it. Such a move counts as needless only when no other fault on the unit's
//! machine was under way between the injection and the move (`needless-K-<unit>.txt`); otherwise it is
//! that other fault's (a crash of the machine right after an etcd loss healed moves its units too) and
//! is listed apart (`other-fault-K-<unit>.txt`). A fault that cannot be injected or healed, a lab command that fails (even one
//! that panics) or a sampler that stops is recorded, and the run goes on (a failed heal is tried
//! again once the nemesis ends); the report lists every error at the end. No fault touches a
//! machine whose fleetd started less than 5 s before (a fresh witness is quiet for 4.14 s); the plan
//! (`plan.rs`, unit-tested in `tests/bench_chaos.rs`) keeps such a machine counted as faulted.
//!
//! Run as root: `scripts/bench-chaos.sh --duration 30m` (or `cargo build --release --bins &&
//! cargo bench --bench chaos -- --duration 2m --seed 7`). Options: `--duration` (2m; `90s`, `30m`,
//! `1h`), `--seed` (the clock when absent; printed), `--max-faults` (2), `--units` (30), `--out` (a
//! directory; `target/chaos/<seed>`), `--plan` (print the fault plan and exit). Settings: `BENCH_AGENT_TTL`,
//! `BENCH_FENCE_AFTER` (fleetd's defaults when unset), `BENCH_RUST_LOG` (fleetd's `RUST_LOG`, e.g.
//! `info,fleet::agent=debug`: the evidence then shows the agent's fence state). Prints figures, asserts no timing. Tears the lab
//! down at the end, on a panic, and on SIGINT/SIGTERM (the run stops early, heals, and still reports).

mod evidence;
#[path = "../../tests/lab/mod.rs"]
mod lab;
mod moves;
mod nemesis;
mod plan;
mod report;
mod sampler;
#[path = "../support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lab::FleetLab;
use nemesis::{States, FROZEN};
use plan::{Done, Fault, Kind};
use support::journal::{self, now_us};

const MACHINES: usize = 5;

struct Args {
    duration: Duration,
    seed: u64,
    max_faults: usize,
    units: usize,
    out: Option<PathBuf>,
    plan_only: bool,
}

fn parse_duration(s: &str) -> Duration {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .unwrap_or_else(|_| panic!("--duration {s:?}: a number and s, m or h (90s, 30m)"));
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => panic!("--duration {s:?}: unknown unit {unit:?} (s, m or h)"),
    };
    Duration::from_secs_f64(secs)
}

fn parse_args() -> Args {
    let mut args = Args {
        duration: parse_duration(&support::knob_str("BENCH_DURATION", "2m")),
        seed: support::knob("BENCH_SEED", now_us() % 1_000_000),
        max_faults: 2,
        units: 30,
        out: None,
        plan_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| panic!("{key} needs a value"))
        };
        match key.as_str() {
            "--duration" => args.duration = parse_duration(&value()),
            "--seed" => args.seed = value().parse().expect("--seed: a number"),
            "--max-faults" => args.max_faults = value().parse().expect("--max-faults: a number"),
            "--units" => args.units = value().parse().expect("--units: a number"),
            "--out" => args.out = Some(PathBuf::from(value())),
            "--plan" => args.plan_only = true,
            "--bench" => {} // cargo bench passes it
            other => panic!(
                "unknown argument {other:?} (--duration, --seed, --max-faults, --units, --out, --plan)"
            ),
        }
    }
    assert!((1..=64).contains(&args.units), "--units: 1 to 64");
    assert!(
        (1..MACHINES).contains(&args.max_faults),
        "--max-faults: 1 to {}",
        MACHINES - 1
    );
    args
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// Thaws every frozen machine when dropped (before the lab: a frozen machine cannot be torn down).
struct ThawOnDrop<'a> {
    fl: &'a FleetLab,
    states: &'a States,
}

impl Drop for ThawOnDrop<'_> {
    fn drop(&mut self) {
        for i in 1..=MACHINES {
            if self.states.get(i) == FROZEN {
                let _ = self.fl.lab.thaw(i);
            }
        }
    }
}

fn main() {
    let args = parse_args();
    let plan = plan::plan(args.seed, args.duration, MACHINES, args.max_faults);
    if args.plan_only {
        println!(
            "seed {}: {} faults over {:?}",
            args.seed,
            plan.len(),
            args.duration
        );
        for f in &plan {
            println!(
                "+{:7.1} s  {} for {:.1} s",
                f.at.as_secs_f64(),
                f.describe(),
                (f.heal - f.at).as_secs_f64()
            );
        }
        return;
    }
    if !fleet_lab::require_root() {
        println!("bench chaos skipped: needs root and the cluster lab's tools (see above)");
        return;
    }
    support::require_binaries();
    support::print_header("chaos");
    journal::self_check();
    catch_signals();
    let mut env: Vec<(&str, String)> = vec![];
    let mut shown = vec![];
    for (knob, setting) in [
        ("BENCH_AGENT_TTL", "FLEET_AGENT_TTL"),
        ("BENCH_FENCE_AFTER", "FLEET_FENCE_AFTER"),
        ("BENCH_RUST_LOG", "RUST_LOG"),
    ] {
        let v = support::knob_str(knob, "");
        shown.push(format!(
            "{}={}",
            setting.trim_start_matches("FLEET_").to_lowercase(),
            if v.is_empty() { "default" } else { &v }
        ));
        if !v.is_empty() {
            env.push((setting, v));
        }
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/chaos"))
            .join(args.seed.to_string())
    });
    println!(
        "seed {}, {:?} of faults, {MACHINES} machines, {} units, at most {} machines faulted at once, {}; evidence to {}",
        args.seed,
        args.duration,
        args.units,
        args.max_faults,
        shown.join(", "),
        out.display()
    );
    let mut planned: std::collections::BTreeMap<&str, usize> = Default::default();
    for f in &plan {
        *planned.entry(f.kind.name()).or_default() += 1;
    }
    println!("plan: {} faults {planned:?}", plan.len());

    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let t = Instant::now();
    let Some(fl) = support::fleet_lab_up(MACHINES, &env) else {
        return;
    };
    for i in 1..=MACHINES {
        journal::keep_journals(&fl, i).expect("persistent journal");
    }
    fl.wait_for(
        "every machine lists every machine",
        Duration::from_secs(120),
        |fl| support::all_list_all(fl, MACHINES).then_some(()),
    );
    let units: Vec<String> = (1..=args.units)
        .map(|k| format!("ch-{k:02}.service"))
        .collect();
    for u in &units {
        fl.write_file(
            1,
            &format!("/tmp/bench-chaos/{u}"),
            &format!(
                "[Unit]\nDescription=chaos bench {u}\n\n[Service]\nExecStart=/bin/sleep 1000000\n"
            ),
        );
    }
    let started = fl.lab.sh(
        1,
        &[
            "sh",
            "-c",
            "/opt/fleet/bin/fleetctl start /tmp/bench-chaos/*.service >/dev/null",
        ],
    );
    assert!(
        started.as_ref().is_ok_and(|o| o.status.success()),
        "fleetctl start failed: {started:?}"
    );
    if let Err(e) = support::settle(&fl, MACHINES, &units, Duration::from_secs(120)) {
        panic!(
            "the cluster did not settle before the chaos: {e}\n{}",
            fl.journals(40)
        );
    }
    println!(
        "lab up and {} units placed in {:.1} s",
        units.len(),
        t.elapsed().as_secs_f64()
    );

    let states = States::new(MACHINES);
    let _thaw = ThawOnDrop {
        fl: &fl,
        states: &states,
    };
    let sampler = sampler::Sampler::new(&fl, &states, &units, "ch-*.service");
    let chaos_from = now_us();
    let sampler_errors = std::sync::Mutex::new(Vec::new());
    let (done, chaos_to, settled) = std::thread::scope(|s| {
        for i in 1..=MACHINES {
            let (sampler, errors) = (&sampler, &sampler_errors);
            s.spawn(move || {
                if let Err(e) = guarded(|| {
                    sampler.run(i);
                    Ok(())
                }) {
                    let msg = format!("the sampler of m{i} stopped at {} µs: {e}", now_us());
                    println!("{msg}");
                    errors.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
                }
            });
        }
        let done = execute(&fl, &states, &plan, Instant::now(), chaos_from);
        let chaos_to = now_us();
        println!("all faults healed; waiting for the cluster to settle");
        let settled = guarded(|| support::settle(&fl, MACHINES, &units, Duration::from_secs(180)));
        sampler.stop.store(true, Ordering::SeqCst);
        (done, chaos_to, settled)
    });
    report::report(report::Input {
        fl: &fl,
        machines: MACHINES,
        units: &units,
        done: &done,
        samples: &sampler.samples.lock().unwrap_or_else(|e| e.into_inner()),
        sample_failures: &sampler.failures.lock().unwrap_or_else(|e| e.into_inner()),
        sampler_errors: &sampler_errors.lock().unwrap_or_else(|e| e.into_inner()),
        chaos: (chaos_from, chaos_to),
        settled,
        seed: args.seed,
        out: &out,
        interrupted: INTERRUPTED.load(Ordering::SeqCst),
    });
}

/// A fleetd (re)started less than this ago is not faulted again (its witness is quiet for 4.14 s).
const FRESH_FLEETD: Duration = Duration::from_secs(5);

/// Runs the plan from `start`: each fault injected and healed at its time (or as soon as the previous
/// operation let it, and not before a victim's fleetd has run for [`FRESH_FLEETD`]: lateness is
/// printed), until the plan ends or SIGINT/SIGTERM; then heals whatever is still injected, and tries
/// each heal that failed once more. A fault that cannot be injected or healed (an error, even a panic
/// of the lab code) is recorded in its [`Done`] and the run goes on; the report lists them all.
fn execute(
    fl: &FleetLab,
    states: &States,
    plan: &[Fault],
    start: Instant,
    origin: u64,
) -> Vec<Done> {
    let mut events: Vec<(Duration, bool, usize)> = Vec::new();
    for (k, f) in plan.iter().enumerate() {
        events.push((f.at, false, k));
        if f.kind != Kind::FleetdKill {
            events.push((f.heal, true, k));
        }
    }
    // At the same instant, heals first.
    events.sort_by_key(|&(t, heal, k)| (t, !heal, k));
    let mut done: Vec<Option<Done>> = plan.iter().map(|_| None).collect();
    // Per machine: when its fleetd was last (re)started by the nemesis.
    let mut fleetd_started: Vec<Option<Instant>> = vec![None; MACHINES + 1];
    let rel = |t: u64, origin: u64| (t as f64 - origin as f64) / 1e6;
    let mut latest_ms = 0.0f64;
    let interrupted = || INTERRUPTED.load(Ordering::SeqCst);
    for (at, is_heal, k) in events {
        let f = &plan[k];
        let mut due = start + at;
        if !is_heal {
            let victims: Vec<usize> = match f.kind {
                Kind::Partition(_) => (1..=MACHINES).collect(),
                _ => f.machines.clone(),
            };
            for m in victims {
                if let Some(t) = fleetd_started[m] {
                    due = due.max(t + FRESH_FLEETD);
                }
            }
        }
        while Instant::now() < due && !interrupted() {
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
        }
        if interrupted() {
            println!("interrupted: stopping the nemesis, healing what is injected");
            break;
        }
        latest_ms = latest_ms.max(Instant::now().duration_since(start + at).as_secs_f64() * 1e3);
        if !is_heal {
            let before = now_us();
            let r = guarded(|| nemesis::inject(fl, states, f, MACHINES));
            let after = now_us();
            println!(
                "+{:7.2} s  inject {} for {:.1} s{}",
                rel(before, origin),
                f.describe(),
                (f.heal - f.at).as_secs_f64(),
                r.as_ref()
                    .err()
                    .map(|e| format!(": FAILED {e}"))
                    .unwrap_or_default()
            );
            if r.is_ok() && f.kind == Kind::FleetdKill {
                fleetd_started[f.machines[0]] = Some(Instant::now());
            }
            done[k] = Some(Done {
                fault: f.clone(),
                before,
                after,
                healed: (f.kind == Kind::FleetdKill).then_some((after, after)),
                error: r.err(),
                heal_error: None,
                retried: None,
            });
        } else if let Some(d) = done[k].as_mut().filter(|d| d.error.is_none()) {
            heal_one(fl, states, d, origin);
            if d.heal_error.is_none() && f.kind.restarts_fleetd() {
                fleetd_started[f.machines[0]] = Some(Instant::now());
            }
        }
    }
    // Whatever is still injected (interrupted), in reverse order.
    for d in done.iter_mut().rev().flatten() {
        if d.error.is_none() && d.healed.is_none() {
            heal_one(fl, states, d, origin);
        }
    }
    println!("nemesis done; the latest operation ran {latest_ms:.0} ms after its planned time");
    // Heals that failed: once more, so that the cluster can settle.
    for d in done.iter_mut().flatten() {
        if d.heal_error.is_some() {
            let before = now_us();
            let r = guarded(|| nemesis::heal(fl, states, &d.fault, MACHINES));
            println!(
                "+{:7.2} s  heal   {} again (its heal failed): {}",
                rel(before, origin),
                d.fault.describe(),
                r.as_ref()
                    .err()
                    .map(|e| format!("FAILED {e}"))
                    .unwrap_or_else(|| "ok".into())
            );
            d.retried = Some((before, r.err()));
        }
    }
    done.into_iter().flatten().collect()
}

fn heal_one(fl: &FleetLab, states: &States, d: &mut Done, origin: u64) {
    let called = now_us();
    let r = guarded(|| nemesis::heal(fl, states, &d.fault, MACHINES));
    let after = now_us();
    let before = r.as_ref().ok().copied().flatten().unwrap_or(called);
    let r = r.map(|_| ());
    println!(
        "+{:7.2} s  heal   {}{}",
        (before as f64 - origin as f64) / 1e6,
        d.fault.describe(),
        r.as_ref()
            .err()
            .map(|e| format!(": FAILED {e}"))
            .unwrap_or_default()
    );
    d.healed = Some((before, after));
    d.heal_error = r.err();
}

/// Runs a lab operation; a panic in it becomes an error (the run must go on).
pub fn guarded<T>(op: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(op)) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into())
        )),
    }
}
