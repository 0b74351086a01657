//! Thaw → kill benchmark (issue 11, deliver 2; docs/safety.md, "A whole machine frozen and thawed").
//!
//! A whole machine frozen with the cgroup freezer past its fence deadline resumes its units in the same
//! instant as its fence guard: no design reaches zero overlap there, and the bound is the time from the
//! thaw to the units it no longer holds being dead. Each round, on a lab of `BENCH_MACHINES` (3)
//! machines running fleetd's default settings with `BENCH_UNITS` (6) plain sleep services:
//! - the bench freezes the machine holding the most units (writes `1` to its `cgroup.freeze` and
//!   waits for `cgroup.events` to say `frozen 1`);
//! - waits until every one of its units is active on another machine (the takeover, which needs the
//!   frozen holder's fence deadline to have passed), then `BENCH_FROZEN_EXTRA_MS` (500) more;
//! - thaws it (writes `0` to `cgroup.freeze`; the clock starts right before the write, which itself
//!   resumes the tasks, so a guard may kill before it returns; also printed: from its end) and polls
//!   each taken-over unit's cgroup on the thawed machine (`cgroup.procs`, from the host, every ~0.2 ms)
//!   until it holds no process: that is the thaw → kill time of the unit;
//! - waits until the cluster settled (every machine lists every machine, every unit active once).
//!
//! `BENCH_HOG` (0) threads spin on the host for the whole run (the chaos bench's conditions: a host
//! busier than its cores). Prints p50/max of the thaw → kill times; asserts no timing. Root only.
//! Run with the profile whose fleetd you want measured, e.g. `cargo bench --bench freeze` after
//! `cargo build --release --bins`, or `cargo bench --profile dev --bench freeze` after `cargo build`.

#[path = "../tests/lab/mod.rs"]
mod lab;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lab::FleetLab;
use support::{knob, machine_cgroup, mono_us, percentile, show_units};

const WAIT: Duration = Duration::from_secs(60);

/// Threads spinning on the host until dropped.
struct Hog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hog {
    fn start(n: usize) -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x: u64 = 1;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(1),
                            );
                        }
                    }
                })
            })
            .collect();
        Hog { stop, threads }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Writes `value` to machine `i`'s `cgroup.freeze`; when freezing, waits until the kernel says it is
/// frozen.
fn set_frozen(fl: &FleetLab, i: usize, frozen: bool) {
    let cg = machine_cgroup(fl, i);
    std::fs::write(cg.join("cgroup.freeze"), if frozen { "1" } else { "0" })
        .unwrap_or_else(|e| panic!("{}: {e}", cg.display()));
    if frozen {
        let t = Instant::now();
        while !std::fs::read_to_string(cg.join("cgroup.events"))
            .unwrap_or_default()
            .contains("frozen 1")
        {
            assert!(t.elapsed() < WAIT, "m{i} never froze");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The processes in a unit's cgroup (`None`: no such cgroup).
fn procs(cg: &std::path::Path) -> Option<usize> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .ok()
        .map(|s| s.lines().count())
}

/// Which of `units` are active on which of `machines`.
fn active_on(fl: &FleetLab, machines: &[usize], units: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut on: BTreeMap<String, Vec<usize>> = units.iter().map(|u| (u.clone(), vec![])).collect();
    for &i in machines {
        if let Some(states) = show_units(fl, i, units, &["ActiveState"]) {
            for (u, p) in states {
                if p.get("ActiveState").map(String::as_str) == Some("active") {
                    on.entry(u).or_default().push(i);
                }
            }
        }
    }
    on
}

/// The host's wall clock in µs since the epoch (the lab machines' journals use it).
fn now_wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Machine `i`'s journal lines of the guard and of `units` since `from` (wall µs), as ms after the thaw.
fn print_journal(fl: &FleetLab, i: usize, units: &[String], from: u64, thawed: u64) {
    let since = format!("@{}.{:06}", from / 1_000_000, from % 1_000_000);
    let mut cmd = vec![
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        "--output-fields=MESSAGE,__REALTIME_TIMESTAMP,_SYSTEMD_UNIT,UNIT",
        "--since",
        &since,
        "-u",
        "fleet-guard.service",
    ];
    for u in units {
        cmd.extend(["-u", u.as_str()]);
    }
    let Ok(out) = fl.lab.sh(i, &cmd) else { return };
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let t: i64 = v["__REALTIME_TIMESTAMP"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let who = v["UNIT"]
            .as_str()
            .or(v["_SYSTEMD_UNIT"].as_str())
            .unwrap_or("?");
        println!(
            "    {:+9.1} ms {who}: {}",
            (t - thawed as i64) as f64 / 1000.0,
            v["MESSAGE"].as_str().unwrap_or("")
        );
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn summary(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms ({} samples)",
        percentile(&s, 50.0),
        percentile(&s, 90.0),
        s[0],
        s[s.len() - 1],
        s.len()
    )
}

// long: the bench top to bottom: its settings, the lab, the rounds (freeze, takeover, thaw, kill) and the report
fn main() {
    if !fleet_lab::require_root() {
        println!("bench freeze skipped: needs root and the cluster lab's tools (see above)");
        return;
    }
    support::require_binaries();
    support::print_header("freeze");
    let rounds: usize = knob("BENCH_ROUNDS", 10);
    let n_units: usize = knob("BENCH_UNITS", 6);
    let machines: usize = knob("BENCH_MACHINES", 3);
    let hog: usize = knob("BENCH_HOG", 0);
    let verbose = knob("BENCH_VERBOSE", 0) != 0;
    let extra = Duration::from_millis(knob("BENCH_FROZEN_EXTRA_MS", 500));
    println!(
        "{machines} machines, {n_units} units, {rounds} rounds, {hog} hog threads on the host, frozen {} ms past the takeover",
        extra.as_millis()
    );
    let Some(fl) = support::fleet_lab_up(machines, &[]) else {
        return;
    };
    // New members count toward takeover quorums only after a TTL.
    std::thread::sleep(Duration::from_secs(5));
    let units: Vec<String> = (0..n_units).map(|k| format!("frz-{k}.service")).collect();
    let mut paths = vec![];
    for u in &units {
        let p = format!("/tmp/{u}");
        fl.write_file(1, &p, "[Service]\nExecStart=/bin/sleep 100000\n");
        paths.push(p);
    }
    let mut args = vec!["start"];
    args.extend(paths.iter().map(String::as_str));
    fl.fleetctl_ok(1, &args);
    if let Err(e) = support::settle(&fl, machines, &units, WAIT) {
        panic!("units never all ran: {e}");
    }
    let _hog = Hog::start(hog);
    let all: Vec<usize> = (1..=machines).collect();
    let mut kills = vec![];
    let mut worst = vec![];
    let mut takeovers = vec![];
    let mut not_killed = 0;
    let mut after_write = vec![];
    let mut writes = vec![];
    for round in 1..=rounds {
        let on = active_on(&fl, &all, &units);
        let mut count: BTreeMap<usize, usize> = BTreeMap::new();
        for m in on.values().flatten() {
            *count.entry(*m).or_default() += 1;
        }
        let (&victim, _) = count
            .iter()
            .max_by_key(|(m, c)| (**c, std::cmp::Reverse(**m)))
            .expect("units run somewhere");
        let held: Vec<String> = on
            .iter()
            .filter(|(_, m)| m.contains(&victim))
            .map(|(u, _)| u.clone())
            .collect();
        let cgs: Vec<PathBuf> = held
            .iter()
            .map(|u| machine_cgroup(&fl, victim).join("system.slice").join(u))
            .collect();
        let others: Vec<usize> = all.iter().copied().filter(|m| *m != victim).collect();
        let frozen_at = mono_us();
        let frozen_wall = now_wall_us();
        set_frozen(&fl, victim, true);
        let t = Instant::now();
        loop {
            let on = active_on(&fl, &others, &held);
            if on.values().all(|m| m.len() == 1) {
                break;
            }
            assert!(
                t.elapsed() < WAIT,
                "round {round}: m{victim}'s units not taken over: {on:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        takeovers.push(ms(mono_us() - frozen_at));
        std::thread::sleep(extra);
        let before: Vec<Option<usize>> = cgs.iter().map(|c| procs(c)).collect();
        // The write itself thaws the tasks (a guard may run before it returns): the clock starts
        // before it; how long it took is printed.
        let thawed = mono_us();
        set_frozen(&fl, victim, false);
        let write_us = mono_us() - thawed;
        let thawed_wall = now_wall_us();
        let mut gone: Vec<Option<u64>> = before
            .iter()
            .map(|p| (p.unwrap_or(0) == 0).then_some(0))
            .collect();
        while gone.iter().any(Option::is_none) && mono_us() - thawed < 10_000_000 {
            for (k, cg) in cgs.iter().enumerate() {
                if gone[k].is_none() && procs(cg).unwrap_or(0) == 0 {
                    gone[k] = Some(mono_us() - thawed);
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let round_kills: Vec<f64> = gone.iter().flatten().map(|&us| ms(us)).collect();
        after_write.extend(
            gone.iter()
                .flatten()
                .map(|&us| ms(us.saturating_sub(write_us))),
        );
        writes.push(ms(write_us));
        not_killed += gone.iter().filter(|g| g.is_none()).count();
        let max = round_kills.iter().copied().fold(0.0, f64::max);
        println!(
            "round {round}: froze m{victim} holding {} units ({:?} processes), taken over {:.0} ms after the freeze; thaw -> dead: {:?} ms{}",
            held.len(),
            before,
            takeovers.last().unwrap(),
            round_kills.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
            if gone.iter().any(Option::is_none) { " (some NOT dead within 10 s)" } else { "" }
        );
        if verbose {
            print_journal(&fl, victim, &held, frozen_wall, thawed_wall);
        }
        kills.extend(round_kills);
        worst.push(max);
        if let Err(e) = support::settle(&fl, machines, &units, Duration::from_secs(120)) {
            panic!("round {round}: {e}");
        }
        // A fresh witness is quiet for a few seconds after a thaw: let it count again.
        std::thread::sleep(Duration::from_secs(5));
    }
    println!(
        "freeze -> every unit active elsewhere: {}",
        summary(&takeovers)
    );
    println!(
        "thaw -> unit's processes gone, every unit: {}",
        summary(&kills)
    );
    println!("thaw -> all of a round's units gone: {}", summary(&worst));
    println!(
        "the same from the end of the thaw's write, every unit: {}",
        summary(&after_write)
    );
    println!(
        "the thaw's write (cgroup.freeze = 0) took: {}",
        summary(&writes)
    );
    println!("units not dead within 10 s of the thaw: {not_killed}");
    let log = fl.journals(200);
    let fences = log.matches("fence deadline passed").count();
    println!("guard fencing lines in the last 200 lines of the journals: {fences}");
}
