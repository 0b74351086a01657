//! Failover benchmark (issues 5 and 11), on a 5-machine cluster lab running the fleetd of this build
//! profile with fleetd's default settings (`fence_after` 700 ms, `agent_ttl` 30 s; docs/configuration.md).
//!
//! - Steady state: gossip (QUIC, UDP port 7479) and etcd (TCP 2379) bytes per machine per second,
//!   counted by an nftables table of the bench in every machine's netns (fleetd exposes no counters).
//! - Crash rounds (`BENCH_ROUNDS`, 20): `BENCH_UNITS` (5) plain sleep services run somewhere; the bench
//!   SIGKILLs a machine running at least one of them (the bench sends SIGKILL to the machine's PID 1,
//!   so the kernel kills everything in it; `Lab::kill` then waits until it is gone and cleans up)
//!   and measures the time until all of its units are active on survivors: systemd's
//!   `ActiveEnterTimestampMonotonic` on the survivor minus the monotonic clock just before the
//!   SIGKILL.
//!   Pollers (one thread per machine, `systemctl show` every ~20 ms) see the takeover end (and any
//!   moment a unit is seen active on two machines). The machine is then booted again and the bench
//!   waits until every machine lists every machine and every unit is active exactly once, and until
//!   5 s after the boot (a fresh fleetd's witness is quiet for 2.93 s by default) before the next round.
//! - Partition rounds (`BENCH_PARTITION_ROUNDS`, 3): `Lab::drop` (nftables drops all of the victim's
//!   traffic, etcd's included). The victim must fence (`fence_after` after its last lease
//!   confirmation) and the survivors take its units over once the witnesses voted and the lease proof
//!   holds (docs/safety.md); the bench waits for both, then `Lab::undrop` and settles.
//! - Overlap of two copies, exact: every machine's journal is kept on its lab disk (so a killed
//!   machine's journal survives), and at the end each unit's runs (systemd's "Started" line to its end
//!   line, or to the kill of its machine) are compared on the host's clock
//!   (`support::journal`, the technique of `tests/lab_safety.rs`). Goal: zero.
//!
//! Prints figures, asserts no timing. Root only (skips with a message otherwise). Build the binaries
//! of the bench profile first: `cargo build --release --bins && cargo bench --bench failover`
//! (or `scripts/bench-lab.sh failover`). Knobs: `BENCH_ROUNDS`, `BENCH_PARTITION_ROUNDS`,
//! `BENCH_UNITS`, `BENCH_AGENT_TTL`, `BENCH_FENCE_AFTER`, `BENCH_RECONCILE_INTERVAL` (fleetd's
//! defaults when unset), `BENCH_GOSSIP_SECS` (10).

#[path = "../tests/lab/mod.rs"]
mod lab;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::FleetLab;
use support::journal::{self, now_us, Timeline};
use support::{knob, knob_str, mono_us, placement, show_units, summary_ms, ts};

const MACHINES: usize = 5;
const POLL: Duration = Duration::from_millis(20);
const GOSSIP_PORT: u16 = 7479;
const SETTLE: Duration = Duration::from_secs(120);
/// fleetd's log filter in the bench: its default (`info`) plus gossip's suspicion and membership
/// events, which date the phases of a takeover.
const PHASE_LOG: &str =
    "info,fleet_gossip::lifeguard=debug,fleet_gossip::core=debug,fleet::agent::timing=debug";

/// A fault the bench injected: its kind, victim, and when it began and was undone (host clock, µs).
struct Fault {
    kind: &'static str,
    round: usize,
    victim: usize,
    from: u64,
    to: u64,
}

fn main() {
    if !fleet_lab::require_root() {
        println!("bench failover skipped: needs root and the cluster lab's tools (see above)");
        return;
    }
    support::require_binaries();
    support::print_header("failover");
    journal::self_check();
    let rounds: usize = knob("BENCH_ROUNDS", 20);
    let partitions: usize = knob("BENCH_PARTITION_ROUNDS", 3);
    let n_units: usize = knob("BENCH_UNITS", 5);
    let gossip_secs: u64 = knob("BENCH_GOSSIP_SECS", 10);
    let mut env: Vec<(&str, String)> = vec![];
    let mut shown = vec![];
    for (knob_name, setting) in [
        ("BENCH_AGENT_TTL", "FLEET_AGENT_TTL"),
        ("BENCH_FENCE_AFTER", "FLEET_FENCE_AFTER"),
        (
            "BENCH_RECONCILE_INTERVAL",
            "FLEET_ENGINE_RECONCILE_INTERVAL",
        ),
    ] {
        let v = knob_str(knob_name, "");
        shown.push(format!(
            "{}={}",
            setting.trim_start_matches("FLEET_").to_lowercase(),
            if v.is_empty() { "default" } else { &v }
        ));
        if !v.is_empty() {
            env.push((setting, v));
        }
    }
    let settings = shown.join(", ");
    // The phases of each takeover come from fleetd's journal: gossip's suspicions and down verdicts
    // are debug lines (a handful per fault); everything else stays at fleetd's default level.
    env.push(("RUST_LOG", PHASE_LOG.to_string()));
    println!(
        "{MACHINES} machines, {n_units} units, {rounds} crash rounds, {partitions} partition rounds, {settings}"
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let t = Instant::now();
    let Some(fl) = support::fleet_lab_up(MACHINES, &env) else {
        return;
    };
    for i in 1..=MACHINES {
        journal::keep_journals(&fl, i).expect("persistent journal");
    }
    fl.wait_for("every machine lists every machine", SETTLE, |fl| {
        support::all_list_all(fl, MACHINES).then_some(())
    });
    println!("lab up in {:.1} s", t.elapsed().as_secs_f64());

    let units: Vec<String> = (1..=n_units).map(|k| format!("fo-{k}.service")).collect();
    for u in &units {
        fl.write_file(1, &format!("/tmp/bench-fo/{u}"), &unit_text(u));
    }
    let out = fl
        .lab
        .sh(
            1,
            &[
                "sh",
                "-c",
                "/opt/fleet/bin/fleetctl start /tmp/bench-fo/*.service >/dev/null",
            ],
        )
        .expect("fleetctl start");
    assert!(
        out.status.success(),
        "fleetctl start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle(&fl, &units);

    gossip_bytes(&fl, gossip_secs);

    let mut faults = Vec::new();
    let mut recoveries = Vec::new();
    let mut after_kill = Vec::new(); // from the victim's death
    let mut phases: Vec<Phases> = Vec::new();
    let mut doubles_polled = 0usize;
    let mut failed = 0usize;
    for round in 0..rounds {
        match crash_round(&fl, &units, round, &mut faults) {
            Some(r) => {
                recoveries.push(r.recovery_ms);
                after_kill.push(r.after_kill_ms);
                doubles_polled += r.double_polled;
                phases.extend(r.phases);
            }
            None => failed += 1,
        }
    }
    let mut takeovers = Vec::new();
    for round in 0..partitions {
        if let Some(ms) = partition_round(&fl, &units, round, &mut faults) {
            takeovers.push(ms);
        }
    }

    // Exact overlaps, from every machine's journal.
    let mut tl = Timeline::read(&fl, MACHINES, "fo-").expect("reading the journals");
    for f in faults.iter().filter(|f| f.kind == "crash") {
        tl.kills.entry(f.victim).or_default().push(f.from);
    }
    let overlaps = tl.overlaps();
    let mut longest: BTreeMap<&str, f64> = BTreeMap::from([("crash", 0.0), ("partition", 0.0)]);
    for o in &overlaps {
        // The round during which (or within 5 s after which) the copies overlapped.
        let fault = faults
            .iter()
            .filter(|f| f.from <= o.from + 1_000_000 && o.from <= f.to + 5_000_000)
            .max_by_key(|f| f.from);
        let (kind, round) = fault
            .map(|f| (f.kind, f.round + 1))
            .unwrap_or(("between", 0));
        println!(
            "  OVERLAP ({kind} round {round}): {} on m{} and m{} at once for {:.1} ms",
            o.unit,
            o.a.0,
            o.b.0,
            o.ms()
        );
        if let Some(f) = fault {
            println!(
                "    victim m{}; m{}'s copy started at +{:.1} ms, m{}'s at +{:.1} ms after the fault",
                f.victim,
                o.a.0,
                (o.a.1 as f64 - f.from as f64) / 1000.0,
                o.b.0,
                (o.b.1 as f64 - f.from as f64) / 1000.0
            );
        }
        let l = longest.entry(kind).or_insert(0.0);
        *l = l.max(o.ms());
    }
    let runs = tl.runs.len();

    println!();
    println!("== failover summary ({settings})");
    println!(
        "crash -> all of the victim's units active on survivors: {}   goal p50 <= 1500 ms, p99 <= 2500 ms",
        summary_ms(&recoveries)
    );
    println!(
        "  the same from the victim's death (its PID 1 exited: every process in it gone): {}",
        summary_ms(&after_kill)
    );
    print_phases(&phases);
    if failed > 0 {
        println!(
            "  {failed} crash rounds did not recover within the time-out (not in the figures)"
        );
    }
    println!(
        "partition (drop) -> all of the victim's units active on survivors: {}",
        summary_ms(&takeovers)
    );
    println!(
        "overlap of two copies (journals, {runs} runs of {n_units} units checked): {} overlaps; longest in crash rounds {:.1} ms, in partition rounds {:.1} ms   goal 0",
        overlaps.len(),
        longest["crash"],
        longest["partition"]
    );
    println!(
        "unit seen active on two machines by the pollers during crash rounds: {doubles_polled} observations"
    );
}

fn unit_text(name: &str) -> String {
    format!(
        "[Unit]\nDescription=failover bench {name}\n\n[Service]\nExecStart=/bin/sleep 1000000\n"
    )
}

fn running(fl: &FleetLab, i: usize) -> bool {
    fl.lab
        .machine_pid(i)
        .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Waits until every machine lists every machine and every unit is active on exactly one machine; on
/// time-out prints what is wrong with the fleetd journals and panics (unwinding tears the lab down).
fn settle(fl: &FleetLab, units: &[String]) -> Duration {
    match support::settle(fl, MACHINES, units, SETTLE) {
        Ok(d) => d,
        Err(e) => {
            println!("{e}\n{}", fl.journals(60));
            panic!("cluster did not settle (see above)");
        }
    }
}
/// One observation of one machine: the units seen active by a `systemctl show` that ran between
/// `t0` and `t1` (monotonic µs).
#[derive(Clone, Debug)]
struct Sample {
    machine: usize,
    t0: u64,
    t1: u64,
    active: BTreeSet<String>,
}

/// Samples of every running machine, taken by one thread per machine every [`POLL`].
struct Pollers<'a> {
    fl: &'a FleetLab,
    units: &'a [String],
    samples: Mutex<Vec<Sample>>,
    stop: AtomicBool,
}

impl<'a> Pollers<'a> {
    /// Runs `f` while pollers sample every machine; returns its result and all samples.
    fn run<R>(
        fl: &'a FleetLab,
        units: &'a [String],
        f: impl FnOnce(&Pollers<'a>) -> R,
    ) -> (R, Vec<Sample>) {
        let p = Pollers {
            fl,
            units,
            samples: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        };
        let r = std::thread::scope(|s| {
            for i in 1..=MACHINES {
                let p = &p;
                s.spawn(move || p.poll(i));
            }
            let r = f(&p);
            p.stop.store(true, Ordering::SeqCst);
            r
        });
        let mut samples = p.samples.into_inner().unwrap();
        samples.sort_by_key(|s| s.t1);
        (r, samples)
    }

    fn poll(&self, i: usize) {
        while !self.stop.load(Ordering::SeqCst) {
            let start = Instant::now();
            if running(self.fl, i) {
                let t0 = mono_us();
                if let Some(states) = show_units(self.fl, i, self.units, &["ActiveState"]) {
                    let t1 = mono_us();
                    let active = states
                        .into_iter()
                        .filter(|(_, p)| p.get("ActiveState").map(String::as_str) == Some("active"))
                        .map(|(u, _)| u)
                        .collect();
                    self.samples.lock().unwrap().push(Sample {
                        machine: i,
                        t0,
                        t1,
                        active,
                    });
                }
            }
            if let Some(rest) = POLL.checked_sub(start.elapsed()) {
                support::sleep(rest);
            }
        }
    }

    /// The latest sample of machine `i` taken entirely after `since`.
    fn latest(&self, i: usize, since: u64) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.machine == i && s.t0 >= since)
            .cloned()
    }

    /// Waits (up to `timeout`) until `done(latest samples since `since` per machine)` holds.
    fn wait(
        &self,
        since: u64,
        timeout: Duration,
        mut done: impl FnMut(&BTreeMap<usize, Sample>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let latest: BTreeMap<usize, Sample> = (1..=MACHINES)
                .filter_map(|i| self.latest(i, since).map(|s| (i, s)))
                .collect();
            if done(&latest) {
                return true;
            }
            support::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Polled double runs: samples in which a unit is active while the latest earlier sample of another
/// machine (taken within the last 200 ms, and that machine not excluded at that time) shows it too.
fn polled_doubles(samples: &[Sample], excluded: impl Fn(usize, u64) -> bool) -> Vec<(String, u64)> {
    let mut latest: BTreeMap<usize, &Sample> = BTreeMap::new();
    let mut found = Vec::new();
    for s in samples {
        latest.insert(s.machine, s);
        for u in &s.active {
            let other = latest.values().any(|o| {
                o.machine != s.machine
                    && !excluded(o.machine, s.t0)
                    && s.t0.saturating_sub(o.t1) < 200_000
                    && o.active.contains(u)
            });
            if other && !excluded(s.machine, s.t0) {
                found.push((u.clone(), s.t1));
            }
        }
    }
    found
}

struct CrashResult {
    recovery_ms: f64,
    /// The same from the victim's death (its PID 1 exited, so every process in it was gone).
    after_kill_ms: f64,
    double_polled: usize,
    phases: Option<Phases>,
}

/// Where the time of one crash round went, in ms after the SIGKILL (host clock, from the
/// survivors' fleetd journals; `None` where no line was found).
#[derive(Clone, Debug, Default)]
struct Phases {
    /// The first survivor's suspicion of the victim (its own probe failed; Lifeguard's timer starts).
    suspected: Option<f64>,
    /// How many independent confirmations the survivors heard in all.
    confirmations: usize,
    /// The first down verdict about the victim, anywhere.
    down: Option<f64>,
    /// The last unit's taker: when its gossip declared the victim down.
    taker_down: Option<f64>,
    /// ... when its agent first placed the unit there (waiting for votes and the lease proof).
    placed: Option<f64>,
    /// ... when it took the claim over (votes in, lease proof held).
    claimed: Option<f64>,
    /// ... when its agent began to load the unit (write, link; the log line before the batch).
    loading: Option<f64>,
    /// ... when its agent began to queue the unit's start job (the proof held after the supersede).
    starting: Option<f64>,
    /// ... its agent's timing lines after its down verdict (`fleet::agent::timing`: lease polls, unit
    /// loads, start jobs, passes that changed something), with when they were logged.
    timings: Vec<(String, f64)>,
    /// ... when the unit was active there.
    active: f64,
}

/// fleetd's journal lines on machine `i` from `since` (host clock, µs): (time, message).
fn fleetd_lines(fl: &FleetLab, i: usize, since: u64) -> Vec<(u64, String)> {
    let since_arg = format!("@{}", since / 1_000_000);
    let out = fl.lab.sh(
        i,
        &[
            "journalctl",
            "-u",
            "fleet",
            "--no-pager",
            "-o",
            "json",
            "--output-fields=MESSAGE",
            "--since",
            &since_arg,
        ],
    );
    let Ok(out) = out else {
        return vec![];
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let t: u64 = v["__REALTIME_TIMESTAMP"].as_str()?.parse().ok()?;
            let m = v["MESSAGE"].as_str()?.to_string();
            (t >= since).then_some((t, m))
        })
        .collect()
}

/// The phases of a crash round whose last unit became active on `taker` at `active_ms`.
fn phases_of(
    fl: &FleetLab,
    victim: usize,
    unit: &str,
    taker: usize,
    kill_rt: u64,
    active_ms: f64,
) -> Phases {
    let id = support::machine_id(fl, victim);
    let ms = |t: u64| (t as f64 - kill_rt as f64) / 1000.0;
    let mut p = Phases {
        active: active_ms,
        ..Phases::default()
    };
    let earliest = |a: Option<f64>, b: f64| Some(a.map_or(b, |a: f64| a.min(b)));
    for i in (1..=MACHINES).filter(|&i| i != victim && running(fl, i)) {
        for (t, m) in fleetd_lines(fl, i, kill_rt) {
            if m.contains("suspicion started") && m.contains(&id) {
                p.suspected = earliest(p.suspected, ms(t));
            } else if m.contains("suspicion confirmed") && m.contains(&id) {
                p.confirmations += 1;
            } else if m.contains("MemberDown") && m.contains(&id) {
                p.down = earliest(p.down, ms(t));
                if i == taker {
                    p.taker_down = earliest(p.taker_down, ms(t));
                }
            } else if i == taker && m.contains(&format!("unit={unit}")) {
                if m.contains("placed here, not running yet") {
                    p.placed = earliest(p.placed, ms(t));
                } else if m.contains("took the claim over") {
                    p.claimed = earliest(p.claimed, ms(t));
                }
            } else if i == taker && m.contains(&format!("load {unit} (")) {
                p.loading = earliest(p.loading, ms(t));
            } else if i == taker && m.contains(&format!("start {unit}:")) {
                p.starting = earliest(p.starting, ms(t));
            } else if i == taker
                && p.taker_down.is_some_and(|d| ms(t) >= d)
                && m.contains("fleet::agent::timing")
            {
                p.timings.push((compact(&m), ms(t)));
            }
        }
    }
    p
}

/// A fleetd timing line without its timestamp and level: from the target on.
fn compact(m: &str) -> String {
    m.find("fleet::agent::timing")
        .map_or(m, |i| {
            &m[i + "fleet::agent::timing: ".len().min(m.len() - i)..]
        })
        .to_string()
}

fn fmt_ms(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("+{x:.0}"))
}

/// Medians of the phases over the crash rounds, each in ms after the SIGKILL.
fn print_phases(phases: &[Phases]) {
    if phases.is_empty() {
        return;
    }
    let median = |f: fn(&Phases) -> Option<f64>| -> String {
        let mut xs: Vec<f64> = phases.iter().filter_map(f).collect();
        if xs.is_empty() {
            return "-".into();
        }
        xs.sort_by(f64::total_cmp);
        format!("+{:.0}", support::percentile(&xs, 50.0))
    };
    println!(
        "  phases, medians over {} rounds (ms after the SIGKILL): first suspicion {}, first down verdict {}; \
         the last unit's taker: down verdict {}, placed there {}, claim taken over {}, load begun {}, \
         start begun {}, active {}",
        phases.len(),
        median(|p| p.suspected),
        median(|p| p.down),
        median(|p| p.taker_down),
        median(|p| p.placed),
        median(|p| p.claimed),
        median(|p| p.loading),
        median(|p| p.starting),
        median(|p| Some(p.active)),
    );
    let gap = |f: fn(&Phases) -> Option<(f64, f64)>| -> String {
        let mut xs: Vec<f64> = phases.iter().filter_map(f).map(|(a, b)| b - a).collect();
        if xs.is_empty() {
            return "-".into();
        }
        xs.sort_by(f64::total_cmp);
        format!(
            "p50 {:.0}, max {:.0}",
            support::percentile(&xs, 50.0),
            xs[xs.len() - 1]
        )
    };
    println!(
        "  the last unit's taker, per round (ms): down verdict -> claim taken over {}; claim taken over -> \
         start begun {}; start begun -> active (poller) {}; claim taken over -> active {}",
        gap(|p| p.taker_down.zip(p.claimed)),
        gap(|p| p.claimed.zip(p.starting)),
        gap(|p| p.starting.map(|s| (s, p.active))),
        gap(|p| p.claimed.map(|c| (c, p.active))),
    );
    let mut confirmations: Vec<f64> = phases.iter().map(|p| p.confirmations as f64).collect();
    confirmations.sort_by(f64::total_cmp);
    println!(
        "  first down verdict after the kill: {}; suspicion confirmations heard per round: median {:.0}",
        support::summary_ms(&phases.iter().filter_map(|p| p.down).collect::<Vec<_>>()),
        support::percentile(&confirmations, 50.0)
    );
}

fn live_peer(fl: &FleetLab, not: usize) -> usize {
    (1..=MACHINES)
        .find(|&i| i != not && running(fl, i))
        .expect("a running machine")
}

/// A machine running at least one unit (rotating with `round`), and its units.
fn pick_victim(fl: &FleetLab, units: &[String], round: usize) -> (usize, Vec<String>) {
    let on = placement(fl, units);
    let mut candidates: Vec<usize> = on.values().flatten().copied().collect();
    candidates.sort();
    candidates.dedup();
    let victim = candidates[round % candidates.len()];
    let lost = on
        .iter()
        .filter(|(_, m)| m.contains(&victim))
        .map(|(u, _)| u.clone())
        .collect();
    (victim, lost)
}

/// When each of `lost` became active on a machine other than `victim` since `since` (monotonic µs):
/// (unit, machine, ActiveEnterTimestampMonotonic) of its first activation there.
fn enters_elsewhere(
    fl: &FleetLab,
    lost: &[String],
    victim: usize,
    since: u64,
) -> Vec<(String, usize, u64)> {
    let mut first: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for i in (1..=MACHINES).filter(|&i| i != victim && running(fl, i)) {
        let props = show_units(fl, i, lost, &["ActiveEnterTimestampMonotonic"]).unwrap_or_default();
        for (u, p) in props {
            let enter = ts(&p, "ActiveEnterTimestampMonotonic");
            if enter >= since && first.get(&u).is_none_or(|(_, e)| enter < *e) {
                first.insert(u, (i, enter));
            }
        }
    }
    first.into_iter().map(|(u, (i, e))| (u, i, e)).collect()
}

/// Waits until process `pid` has exited (a zombie, or reaped), polling every millisecond.
fn wait_exited(pid: libc::pid_t) {
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&stat) {
            // The state follows the command name, which ends with the last ')'.
            Ok(s)
                if !s
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')) => {}
            _ => return,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("PID {pid} still runs 30 s after SIGKILL");
}

fn crash_round(
    fl: &FleetLab,
    units: &[String],
    round: usize,
    faults: &mut Vec<Fault>,
) -> Option<CrashResult> {
    let (victim, lost) = pick_victim(fl, units, round);
    let mut kill_rt = 0;
    let ((t_kill, t_killed, killed_rt, recovered), samples) = Pollers::run(fl, units, |p| {
        support::sleep(Duration::from_millis(200));
        // The bench sends the SIGKILL to the machine's PID 1 itself, so that the round starts at the
        // instant the kill is delivered (the kernel then kills everything in the machine), not before
        // the lab script's own start-up (tens to hundreds of ms under load); `Lab::kill` then finds
        // it dead, waits until the machine is gone and cleans up, as when it kills.
        let pid = fl.lab.machine_pid(victim).expect("the victim's PID 1");
        let pid = libc::pid_t::try_from(pid).expect("a PID fits pid_t");
        kill_rt = now_us();
        let t_kill = mono_us();
        // SAFETY: kill(2) takes no pointers; the PID is the lab machine's systemd, read just now.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "SIGKILL to m{victim}'s PID 1 ({pid}) failed");
        // Every process of the machine is gone once its PID 1 is a zombie or reaped (the kernel
        // kills and reaps the rest of a PID namespace before its init exits): the overlap check
        // counts the victim's copies as running until then.
        wait_exited(pid);
        let t_killed = mono_us();
        let killed_rt = now_us();
        fl.lab.kill(victim).expect("kill");
        let recovered = p.wait(t_killed, Duration::from_secs(60), |latest| {
            lost.iter().all(|u| {
                latest
                    .iter()
                    .any(|(&i, s)| i != victim && s.active.contains(u))
            })
        });
        support::sleep(Duration::from_secs(1)); // catch late duplicates
        (t_kill, t_killed, killed_rt, recovered)
    });
    let polled = polled_doubles(&samples, |m, t| m == victim && t >= t_kill);
    for (u, t) in polled.iter().take(5) {
        println!(
            "  DOUBLE (polled): {u} at +{:.0} ms",
            (*t as f64 - t_kill as f64) / 1000.0
        );
    }
    let enters = enters_elsewhere(fl, &lost, victim, t_kill);
    let result = if recovered && enters.len() == lost.len() {
        let last = enters.iter().map(|e| e.2).max().unwrap();
        let ms = (last - t_kill) as f64 / 1000.0;
        let detail: Vec<String> = enters
            .iter()
            .map(|(u, i, e)| {
                format!(
                    "{}->m{i} {:.0} ms",
                    u.trim_end_matches(".service"),
                    (e - t_kill) as f64 / 1000.0
                )
            })
            .collect();
        println!(
            "crash round {:2}: killed m{victim} ({} units, dead {:.1} ms after the SIGKILL): recovered in {ms:.0} ms [{}]",
            round + 1,
            lost.len(),
            (t_killed - t_kill) as f64 / 1000.0,
            detail.join(", ")
        );
        let (u, i, _) = enters.iter().max_by_key(|e| e.2).unwrap();
        let ph = phases_of(fl, victim, u, *i, kill_rt, ms);
        println!(
            "  phases (ms after the SIGKILL): first suspicion {} ({} confirmations), first down verdict {}, \
             on m{i} (taker of {}): down {}, placed {}, claim taken {}, load {}, start {}, active +{:.0}",
            fmt_ms(ph.suspected),
            ph.confirmations,
            fmt_ms(ph.down),
            u.trim_end_matches(".service"),
            fmt_ms(ph.taker_down),
            fmt_ms(ph.placed),
            fmt_ms(ph.claimed),
            fmt_ms(ph.loading),
            fmt_ms(ph.starting),
            ph.active
        );
        for (line, at) in ph.timings.iter().filter(|(_, at)| *at <= ph.active + 50.0) {
            println!("    m{i} +{at:.0}: {line}");
        }

        if ms > 2500.0 {
            let (u, i, _) = enters.iter().max_by_key(|e| e.2).unwrap();
            println!(
                "  slow: {u} on m{i}; its fleetd journal:\n{}",
                fl.journal(*i, 40)
            );
        }
        Some(CrashResult {
            recovery_ms: ms,
            after_kill_ms: ms - (t_killed - t_kill) as f64 / 1000.0,
            double_polled: polled.len(),
            phases: Some(ph),
        })
    } else {
        println!(
            "crash round {:2}: killed m{victim} ({lost:?}): NOT recovered within 60 s; placement now {:?}",
            round + 1,
            placement(fl, units)
        );
        println!("{}", fl.journal(live_peer(fl, victim), 60));
        None
    };

    let t = Instant::now();
    fl.lab.boot(victim).expect("boot");
    let booted = t.elapsed();
    faults.push(Fault {
        kind: "crash",
        round,
        victim,
        from: killed_rt,
        to: now_us(),
    });
    let settled = settle(fl, units);
    println!(
        "  m{victim} booted in {:.1} s, cluster settled {:.1} s later",
        booted.as_secs_f64(),
        settled.as_secs_f64()
    );
    // The next round's fault comes at least FRESH after the booted machine's fleetd started (it
    // started before the boot returned): a fresh witness is quiet for 2.93 s by default.
    if let Some(rest) = FRESH.checked_sub(t.elapsed() - booted) {
        support::sleep(rest);
    }
    result
}

/// No fault within this time of a fleetd start (a fresh fleetd's witness is quiet for 2.93 s by default).
const FRESH: Duration = Duration::from_secs(5);

/// Drops all of a machine's traffic until it fenced and its units run elsewhere; returns the time from
/// the drop until the last of them was active on a survivor (ms).
fn partition_round(
    fl: &FleetLab,
    units: &[String],
    round: usize,
    faults: &mut Vec<Fault>,
) -> Option<f64> {
    let (victim, lost) = pick_victim(fl, units, round);
    let ((t_drop, from, done), _) = Pollers::run(fl, units, |p| {
        support::sleep(Duration::from_millis(200));
        let t_drop = mono_us();
        let from = now_us();
        fl.lab.drop(victim).expect("drop");
        let done = p.wait(mono_us(), Duration::from_secs(60), |latest| {
            let fenced = latest
                .get(&victim)
                .is_some_and(|s| lost.iter().all(|u| !s.active.contains(u)));
            let taken = lost.iter().all(|u| {
                latest
                    .iter()
                    .any(|(&i, s)| i != victim && s.active.contains(u))
            });
            fenced && taken
        });
        support::sleep(Duration::from_secs(1));
        (t_drop, from, done)
    });
    let enters = enters_elsewhere(fl, &lost, victim, t_drop);
    let ms = (done && enters.len() == lost.len())
        .then(|| (enters.iter().map(|e| e.2).max().unwrap() - t_drop) as f64 / 1000.0);
    let vprops =
        show_units(fl, victim, &lost, &["ActiveExitTimestampMonotonic"]).unwrap_or_default();
    let detail: Vec<String> = lost
        .iter()
        .map(|u| {
            let exit = vprops
                .get(u)
                .map(|p| ts(p, "ActiveExitTimestampMonotonic"))
                .filter(|&e| e >= t_drop);
            let enter = enters.iter().find(|e| &e.0 == u);
            format!(
                "{}: fenced at {}, started on {}",
                u.trim_end_matches(".service"),
                exit.map(|e| format!("+{:.0} ms", (e - t_drop) as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                enter
                    .map(|(_, i, e)| format!("m{i} at +{:.0} ms", (e - t_drop) as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into())
            )
        })
        .collect();
    println!(
        "partition round {}: dropped m{victim} ({} units){}: {}",
        round + 1,
        lost.len(),
        if done {
            ""
        } else {
            ", NOT fenced and taken over within 60 s"
        },
        detail.join("; ")
    );
    if !done {
        println!("victim journal:\n{}", fl.journal(victim, 40));
    }
    fl.lab.undrop(victim).expect("undrop");
    faults.push(Fault {
        kind: "partition",
        round,
        victim,
        from,
        to: now_us(),
    });
    let settled = settle(fl, units);
    println!(
        "  undrop m{victim}: cluster settled in {:.1} s",
        settled.as_secs_f64()
    );
    ms
}

/// Steady-state gossip (UDP 7479) and etcd (TCP 2379) traffic per machine, counted by nftables.
fn gossip_bytes(fl: &FleetLab, secs: u64) {
    let rules = format!(
        "table inet fleetbench\ndelete table inet fleetbench\ntable inet fleetbench {{\n\
         chain in {{ type filter hook input priority -5; udp dport {GOSSIP_PORT} counter; udp sport {GOSSIP_PORT} udp dport != {GOSSIP_PORT} counter; tcp sport 2379 counter; }}\n\
         chain out {{ type filter hook output priority -5; udp sport {GOSSIP_PORT} counter; udp dport {GOSSIP_PORT} udp sport != {GOSSIP_PORT} counter; tcp dport 2379 counter; }}\n}}\n"
    );
    let script = format!("nft -f - <<'EOF'\n{rules}EOF\n");
    let read = |i: usize| -> Vec<u64> {
        let out = fl
            .lab
            .sh_ok(i, &["nft", "list", "table", "inet", "fleetbench"])
            .expect("nft list");
        out.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "bytes")
            .map(|w| w[1].parse().unwrap_or(0))
            .collect()
    };
    for i in 1..=MACHINES {
        if let Err(e) = fl.lab.sh_ok(i, &["sh", "-c", &script]) {
            println!("gossip bytes: skipped (nftables counters not available: {e})");
            return;
        }
    }
    let before: Vec<Vec<u64>> = (1..=MACHINES).map(read).collect();
    let t = Instant::now();
    support::sleep(Duration::from_secs(secs));
    let after: Vec<Vec<u64>> = (1..=MACHINES).map(read).collect();
    let dt = t.elapsed().as_secs_f64();
    println!();
    println!("steady state traffic over {dt:.1} s ({MACHINES} machines, idle units), bytes/s per machine (IP packets):");
    let mut gossip_total = 0.0;
    for i in 0..MACHINES {
        let d: Vec<f64> = after[i]
            .iter()
            .zip(&before[i])
            .map(|(a, b)| (a - b) as f64 / dt)
            .collect();
        if d.len() != 6 {
            println!("  m{}: unexpected counters {:?}", i + 1, after[i]);
            continue;
        }
        let (g_in, e_in, g_out, e_out) = (d[0] + d[1], d[2], d[3] + d[4], d[5]);
        gossip_total += g_in + g_out;
        println!(
            "  m{}: gossip in {g_in:.0} B/s, out {g_out:.0} B/s; etcd in {e_in:.0} B/s, out {e_out:.0} B/s",
            i + 1
        );
    }
    println!(
        "  gossip (in + out) per machine: {:.0} B/s on average",
        gossip_total / MACHINES as f64
    );
    for i in 1..=MACHINES {
        let _ = fl
            .lab
            .sh(i, &["nft", "delete", "table", "inet", "fleetbench"]);
    }
}
