//! Failover benchmark (issue 5), on a 5-machine cluster lab running the fleetd of this build profile.
//!
//! - Steady state: gossip (QUIC, UDP port 7479) and etcd (TCP 2379) bytes per machine per second,
//!   counted by an nftables table of the bench in every machine's netns (fleetd exposes no counters).
//! - Crash rounds (`BENCH_ROUNDS`, 10): `BENCH_UNITS` (5) plain sleep services run somewhere; the bench
//!   SIGKILLs a machine running at least one of them (`Lab::kill`) and measures the time until all of
//!   its units are active on survivors: systemd's `ActiveEnterTimestampMonotonic` on the survivor minus
//!   the monotonic clock just before the kill. Pollers (one thread per machine, `systemctl show` every
//!   ~20 ms) detect completion and any moment a unit is active on two machines; the machine is then
//!   booted again and the cluster left to settle.
//! - Partition rounds (`BENCH_PARTITION_ROUNDS`, 3): `Lab::drop` (nftables drop of all the machine's
//!   traffic, etcd included). The victim runs its units until it fences (gossip minority and lease
//!   unconfirmed for `min(agent_ttl, 2 s)`, see docs/safety.md), the survivors take them over after the gossip verdict + `takeover_grace`; the bench prints how long two
//!   copies of a unit were active (victim's `ActiveExitTimestampMonotonic` minus the survivor's
//!   `ActiveEnterTimestampMonotonic`), then `Lab::undrop` and the time to settle.
//!
//! Prints figures, asserts no timing. Root only (skips with a message otherwise). Build the binaries
//! of the bench profile first: `cargo build --release --bins && cargo bench --bench failover`
//! (or `scripts/bench-lab.sh`). Knobs: `BENCH_ROUNDS`, `BENCH_PARTITION_ROUNDS`, `BENCH_UNITS`,
//! `BENCH_AGENT_TTL` (fleetd's default when unset), `BENCH_TAKEOVER_GRACE` (fleetd's default when unset),
//! `BENCH_RECONCILE_INTERVAL` (fleetd's default when unset), `BENCH_GOSSIP_SECS` (10).

#[path = "../tests/lab/mod.rs"]
mod lab;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::FleetLab;
use support::{knob, knob_str, mono_us, show_units, summary_ms, ts};

const MACHINES: usize = 5;
const POLL: Duration = Duration::from_millis(20);
const GOSSIP_PORT: u16 = 7479;

fn main() {
    if !fleet_lab::require_root() {
        println!("bench failover skipped: needs root and the cluster lab's tools (see above)");
        return;
    }
    support::require_binaries();
    support::print_header("failover");
    let rounds: usize = knob("BENCH_ROUNDS", 10);
    let partitions: usize = knob("BENCH_PARTITION_ROUNDS", 3);
    let n_units: usize = knob("BENCH_UNITS", 5);
    let ttl = knob_str("BENCH_AGENT_TTL", "");
    let grace = knob_str("BENCH_TAKEOVER_GRACE", "");
    let gossip_secs: u64 = knob("BENCH_GOSSIP_SECS", 10);
    let mut env = vec![];
    if !ttl.is_empty() {
        env.push(("FLEET_AGENT_TTL", ttl.as_str()));
    }
    let ttl = if ttl.is_empty() { "default" } else { &ttl };
    if !grace.is_empty() {
        env.push(("FLEET_TAKEOVER_GRACE", grace.as_str()));
    }
    let interval = knob_str("BENCH_RECONCILE_INTERVAL", "");
    if !interval.is_empty() {
        env.push(("FLEET_ENGINE_RECONCILE_INTERVAL", interval.as_str()));
    }
    println!(
        "{MACHINES} machines, {n_units} units, {rounds} crash rounds, {partitions} partition rounds, agent_ttl={ttl}, takeover_grace={}",
        if grace.is_empty() { "default" } else { &grace }
    );
    let t = Instant::now();
    let Some(fl) = support::fleet_lab_up(MACHINES, &env) else {
        return;
    };
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
    settle(&fl, &units, None);

    gossip_bytes(&fl, gossip_secs);

    let mut recoveries = Vec::new();
    let mut doubles_exact = 0usize;
    let mut doubles_polled = 0usize;
    let mut failed = 0usize;
    for round in 0..rounds {
        match crash_round(&fl, &units, round) {
            Some(r) => {
                recoveries.push(r.recovery_ms);
                doubles_exact += r.double_exact;
                doubles_polled += r.double_polled;
            }
            None => failed += 1,
        }
    }
    let mut overlaps = Vec::new();
    for round in 0..partitions {
        if let Some(o) = partition_round(&fl, &units, round) {
            overlaps.push(o);
        }
    }

    println!();
    println!("== failover summary (agent_ttl={ttl})");
    println!(
        "crash -> all of the victim's units active on survivors: {}   goal p50 <= 2000 ms, p99 <= 4000 ms",
        summary_ms(&recoveries)
    );
    if failed > 0 {
        println!(
            "  {failed} crash rounds did not recover within the time-out (not in the figures)"
        );
    }
    println!(
        "unit active on two machines during crash rounds: {doubles_exact} (systemd timestamps), {doubles_polled} polled observations   goal 0"
    );
    for (k, o) in overlaps.iter().enumerate() {
        println!("partition round {}: longest double run {o:.0} ms", k + 1);
    }
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

/// Which machines have each unit active (one `systemctl show` per running machine).
fn placement(fl: &FleetLab, units: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut on: BTreeMap<String, Vec<usize>> = units.iter().map(|u| (u.clone(), vec![])).collect();
    for i in 1..=MACHINES {
        if !running(fl, i) {
            continue;
        }
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

/// Waits until every machine is listed by fleetctl and every unit is active on exactly one machine,
/// twice in a row one second apart. Returns how long it took; on time-out prints what is wrong
/// (placement, and the fleetd journal of every machine not listed) and exits.
fn settle(fl: &FleetLab, units: &[String], from: Option<usize>) -> Duration {
    let t = Instant::now();
    let mut stable = 0;
    loop {
        let i = from.unwrap_or(1);
        let out = fl.fleetctl(i, &["list-machines", "--no-legend"]);
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        let on = placement(fl, units);
        if listed.lines().count() == MACHINES && on.values().all(|m| m.len() == 1) {
            stable += 1;
        } else {
            stable = 0;
        }
        if stable >= 2 {
            return t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(120) {
            println!("cluster did not settle within 120 s: placement {on:?}, list-machines on m{i}:\n{listed}");
            for m in 1..=MACHINES {
                let ip = fleet_lab::machine_ip(m).to_string();
                if !listed.contains(&ip) {
                    println!(
                        "m{m} is not listed; its fleetd journal:\n{}",
                        journal(fl, m, 60)
                    );
                }
            }
            panic!("cluster did not settle (see above)"); // unwinding tears the lab down
        }
        support::sleep(Duration::from_millis(900));
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
    double_exact: usize,
    double_polled: usize,
}

fn live_peer(fl: &FleetLab, not: usize) -> usize {
    (1..=MACHINES)
        .find(|&i| i != not && running(fl, i))
        .expect("a running machine")
}

fn journal(fl: &FleetLab, i: usize, lines: usize) -> String {
    fl.lab
        .sh(
            i,
            &[
                "journalctl",
                "-u",
                "fleet",
                "--no-pager",
                "-o",
                "short-monotonic",
                "-n",
                &lines.to_string(),
            ],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn crash_round(fl: &FleetLab, units: &[String], round: usize) -> Option<CrashResult> {
    let on = placement(fl, units);
    let mut candidates: Vec<usize> = on.values().flatten().copied().collect();
    candidates.sort();
    candidates.dedup();
    let victim = candidates[round % candidates.len()];
    let lost: Vec<String> = on
        .iter()
        .filter(|(_, m)| m.contains(&victim))
        .map(|(u, _)| u.clone())
        .collect();

    let ((t_kill, t_killed, recovered), samples) = Pollers::run(fl, units, |p| {
        support::sleep(Duration::from_millis(200));
        let t_kill = mono_us();
        fl.lab.kill(victim).expect("kill");
        let t_killed = mono_us();
        let recovered = p.wait(t_killed, Duration::from_secs(60), |latest| {
            lost.iter().all(|u| {
                latest
                    .iter()
                    .any(|(&i, s)| i != victim && s.active.contains(u))
            })
        });
        support::sleep(Duration::from_secs(1)); // catch late duplicates
        (t_kill, t_killed, recovered)
    });

    // Exact: each survivor's last activation of the lost units (Enter..Exit, or until now).
    let now = mono_us();
    let mut intervals: BTreeMap<String, Vec<(usize, u64, u64)>> = BTreeMap::new();
    for i in (1..=MACHINES).filter(|&i| i != victim) {
        let props = show_units(
            fl,
            i,
            &lost,
            &[
                "ActiveState",
                "ActiveEnterTimestampMonotonic",
                "ActiveExitTimestampMonotonic",
            ],
        )
        .unwrap_or_default();
        for (u, p) in props {
            let enter = ts(&p, "ActiveEnterTimestampMonotonic");
            if enter < t_kill {
                continue; // not started since the crash
            }
            let exit = ts(&p, "ActiveExitTimestampMonotonic");
            let active = p.get("ActiveState").map(String::as_str) == Some("active");
            let end = if active || exit < enter { now } else { exit };
            intervals.entry(u).or_default().push((i, enter, end));
        }
    }
    let mut double_exact = 0;
    for (u, iv) in &intervals {
        for (a, x) in iv.iter().enumerate() {
            for y in &iv[a + 1..] {
                if x.1.max(y.1) < x.2.min(y.2) {
                    double_exact += 1;
                    println!(
                        "  DOUBLE: {u} active on m{} and m{} for {:.0} ms",
                        x.0,
                        y.0,
                        (x.2.min(y.2) - x.1.max(y.1)) as f64 / 1000.0
                    );
                }
            }
        }
    }
    let polled = polled_doubles(&samples, |m, t| m == victim && t >= t_kill);
    for (u, t) in polled.iter().take(5) {
        println!(
            "  DOUBLE (polled): {u} at +{:.0} ms",
            (*t as f64 - t_kill as f64) / 1000.0
        );
    }

    let enters: Vec<(String, usize, u64)> = lost
        .iter()
        .filter_map(|u| {
            intervals
                .get(u)?
                .iter()
                .min_by_key(|x| x.1)
                .map(|x| (u.clone(), x.0, x.1))
        })
        .collect();
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
            "crash round {:2}: killed m{victim} ({} units, kill took {:.0} ms): recovered in {ms:.0} ms [{}]",
            round + 1,
            lost.len(),
            (t_killed - t_kill) as f64 / 1000.0,
            detail.join(", ")
        );
        if ms > 4000.0 {
            let (u, i, _) = enters.iter().max_by_key(|e| e.2).unwrap();
            println!(
                "  slow: {u} on m{i}; its fleetd journal:\n{}",
                journal(fl, *i, 40)
            );
        }
        Some(CrashResult {
            recovery_ms: ms,
            double_exact,
            double_polled: polled.len(),
        })
    } else {
        println!(
            "crash round {:2}: killed m{victim} ({lost:?}): NOT recovered within 60 s; placement now {:?}",
            round + 1,
            placement(fl, units)
        );
        println!("{}", journal(fl, live_peer(fl, victim), 60));
        None
    };

    let t = Instant::now();
    fl.lab.boot(victim).expect("boot");
    let booted = t.elapsed();
    let settled = settle(fl, units, Some(live_peer(fl, victim)));
    println!(
        "  m{victim} booted in {:.1} s, cluster settled {:.1} s later",
        booted.as_secs_f64(),
        settled.as_secs_f64()
    );
    result
}

/// Returns the longest double run in ms (0 when none).
fn partition_round(fl: &FleetLab, units: &[String], round: usize) -> Option<f64> {
    let on = placement(fl, units);
    let mut candidates: Vec<usize> = on.values().flatten().copied().collect();
    candidates.sort();
    candidates.dedup();
    let victim = candidates[round % candidates.len()];
    let lost: Vec<String> = on
        .iter()
        .filter(|(_, m)| m.contains(&victim))
        .map(|(u, _)| u.clone())
        .collect();

    let ((t_drop, done), samples) = Pollers::run(fl, units, |p| {
        support::sleep(Duration::from_millis(200));
        let t_drop = mono_us();
        fl.lab.drop(victim).expect("drop");
        let done = p.wait(mono_us(), Duration::from_secs(120), |latest| {
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
        (t_drop, done)
    });
    let rel = |t: u64| (t as f64 - t_drop as f64) / 1000.0;

    // Victim: when each lost unit stopped (systemd timestamp, else the first polled sample without it).
    let vprops = show_units(
        fl,
        victim,
        &lost,
        &["ActiveExitTimestampMonotonic", "ActiveState"],
    )
    .unwrap_or_default();
    let mut longest: f64 = 0.0;
    let mut lines = Vec::new();
    for u in &lost {
        let exit = vprops
            .get(u)
            .map(|p| ts(p, "ActiveExitTimestampMonotonic"))
            .filter(|&e| e >= t_drop)
            .or_else(|| {
                samples
                    .iter()
                    .find(|s| s.machine == victim && s.t0 >= t_drop && !s.active.contains(u))
                    .map(|s| s.t1)
            });
        let mut enter = None;
        for i in (1..=MACHINES).filter(|&i| i != victim) {
            if let Some(p) = show_units(
                fl,
                i,
                std::slice::from_ref(u),
                &["ActiveEnterTimestampMonotonic"],
            )
            .and_then(|mut m| m.remove(u))
            {
                let e = ts(&p, "ActiveEnterTimestampMonotonic");
                if e >= t_drop {
                    enter = Some((i, e));
                }
            }
        }
        match (exit, enter) {
            (Some(x), Some((i, e))) => {
                let overlap = (x as f64 - e as f64) / 1000.0;
                longest = longest.max(overlap);
                lines.push(format!(
                    "{u}: victim stopped it at +{:.0} ms, m{i} started it at +{:.0} ms, double run {:.0} ms",
                    rel(x),
                    rel(e),
                    overlap.max(0.0)
                ));
            }
            _ => lines.push(format!(
                "{u}: victim stop {:?}, survivor start {:?} (incomplete)",
                exit.map(rel),
                enter.map(|(i, e)| (i, rel(e)))
            )),
        }
    }
    println!(
        "partition round {}: dropped m{victim} ({} units){}",
        round + 1,
        lost.len(),
        if done {
            ""
        } else {
            ": NOT fenced and taken over within 120 s"
        }
    );
    for l in &lines {
        println!("  {l}");
    }
    if !done {
        println!("victim journal:\n{}", journal(fl, victim, 40));
    }

    fl.lab.undrop(victim).expect("undrop");
    let settled = settle(fl, units, Some(live_peer(fl, victim)));
    println!(
        "  undrop m{victim}: cluster settled in {:.1} s, placement {:?}",
        settled.as_secs_f64(),
        placement(fl, units)
    );
    done.then_some(longest.max(0.0))
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
