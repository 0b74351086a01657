//! Helpers shared by the lab benchmarks: the monotonic clock (the same clock systemd's
//! `*TimestampMonotonic` properties use: lab machines have no time namespace), percentiles, reading
//! unit properties and process memory inside a machine, knobs from the environment.
#![allow(dead_code)]

pub mod journal;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::lab::FleetLab;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// `CLOCK_MONOTONIC` on Linux.
const CLOCK_MONOTONIC: i32 = 1;

/// `CLOCK_MONOTONIC` in microseconds: directly comparable with systemd's
/// `ActiveEnterTimestampMonotonic` read inside a lab machine.
pub fn mono_us() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec (two 64-bit fields on 64-bit Linux) to a valid pointer.
    let rc = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// A knob from the environment (`name`), or `default`.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

/// A string knob from the environment.
pub fn knob_str(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `p50 X ms, p90 Y ms, p99 Z ms, min, max (n samples)` of durations in milliseconds.
pub fn summary_ms(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms ({} samples)",
        percentile(&s, 50.0),
        percentile(&s, 90.0),
        percentile(&s, 99.0),
        s[0],
        s[s.len() - 1],
        s.len()
    )
}

/// A tiny deterministic RNG (xorshift64*) for pauses between measurements; the seed is printed.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Properties of several units in machine `i` with one `systemctl show` (keyed by unit `Id`).
/// `None` when the machine is not running or the command fails.
pub fn show_units(
    fl: &FleetLab,
    i: usize,
    units: &[String],
    props: &[&str],
) -> Option<BTreeMap<String, BTreeMap<String, String>>> {
    let mut cmd: Vec<String> = vec!["systemctl".into(), "show".into(), "-p".into(), "Id".into()];
    for p in props {
        cmd.push("-p".into());
        cmd.push((*p).into());
    }
    cmd.extend(units.iter().cloned());
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = fl.lab.sh(i, &args).ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut all = BTreeMap::new();
    for block in text.split("\n\n") {
        let mut props = BTreeMap::new();
        for line in block.lines() {
            if let Some((k, v)) = line.split_once('=') {
                props.insert(k.to_string(), v.to_string());
            }
        }
        if let Some(id) = props.get("Id").cloned() {
            all.insert(id, props);
        }
    }
    Some(all)
}

/// A monotonic timestamp property in microseconds (0 = never).
pub fn ts(props: &BTreeMap<String, String>, key: &str) -> u64 {
    props.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Memory of fleetd in machine `i`: (VmRSS, VmHWM) in KiB, read from `/proc/<MainPID>/status`
/// inside the machine.
pub fn fleetd_memory_kib(fl: &FleetLab, i: usize) -> (u64, u64, u32) {
    let pid = fl.show(i, "fleet.service", "MainPID");
    let status = fl
        .lab
        .sh_ok(i, &["cat", &format!("/proc/{pid}/status")])
        .unwrap_or_else(|e| panic!("reading fleetd's /proc/{pid}/status in m{i}: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in fleetd's status:\n{status}"))
    };
    (
        field("VmRSS:"),
        field("VmHWM:"),
        pid.parse().unwrap_or_default(),
    )
}

/// Like [`FleetLab::up`] (`n` machines running this profile's fleetd, gossip in insecure mode, waits
/// until every agent is listed), but with fleetd's default settings unless given (no test
/// overrides), and the `FLEET_*` settings as `Environment=` lines of the fleet unit, which stay the
/// same across `Lab::boot` whatever the lab does with its env file. `None` (with a message) when not
/// root.
pub fn fleet_lab_up(n: usize, settings: &[(&str, &str)]) -> Option<FleetLab> {
    if !fleet_lab::require_root() {
        return None;
    }
    let mut unit = crate::lab::FLEET_UNIT.trim_end().to_string();
    assert!(
        unit.rsplit("\n[")
            .next()
            .is_some_and(|s| s.starts_with("Service]")),
        "the lab's fleet.service no longer ends with its [Service] section"
    );
    unit.push('\n');
    for (k, v) in [("FLEET_GOSSIP_INSECURE", "true")].iter().chain(settings) {
        assert!(!v.contains(char::is_whitespace), "{k}={v:?}");
        unit.push_str(&format!("Environment={k}={v}\n"));
    }
    let opts = fleet_lab::LabOptions::new()
        .bind(bin_dir(), fleet_lab::FLEET_BIN_DIR, true)
        .unit("fleet.service", unit);
    let fl = FleetLab {
        lab: fleet_lab::Lab::up(n, opts).expect("lab up"),
    };
    fl.wait_for("every machine announced", Duration::from_secs(60), |fl| {
        let out = fl.fleetctl(1, &["list-machines", "--no-legend"]);
        (out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == n)
            .then_some(())
    });
    Some(fl)
}

/// The directory whose `fleetd` and `fleetctl` the lab's machines run: this bench binary's own cargo
/// profile directory, or with `BENCH_PROFILE=<profile>` that profile's sibling directory
/// (`BENCH_PROFILE=release` runs `target/release`'s binaries from a bench built in debug:
/// `cargo build --release -p fleet -p fleetctl --bins`).
pub fn bin_dir() -> std::path::PathBuf {
    let dir = fleet_lab::cargo_profile_dir().expect("cargo profile dir");
    match std::env::var("BENCH_PROFILE") {
        Ok(p) if !p.is_empty() => {
            let name = if p == "dev" { "debug" } else { p.as_str() };
            dir.parent().expect("target dir").join(name)
        }
        _ => dir,
    }
}

/// etcd transactions (`Txn` RPCs, etcd's own `grpc_server_started_total`) the lab's etcd has
/// received so far, read from its metrics inside machine `i`; `None` when unreadable.
pub fn etcd_txns(fl: &FleetLab, i: usize) -> Option<u64> {
    let url = format!("{}/metrics", fleet_lab::ETCD_IN_LAB);
    let out = fl
        .lab
        .sh_ok(i, &["curl", "-sS", "--max-time", "10", &url])
        .ok()?;
    out.lines()
        .find(|l| l.starts_with("grpc_server_started_total{") && l.contains("grpc_method=\"Txn\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Sleeps `d`.
pub fn sleep(d: Duration) {
    std::thread::sleep(d);
}

/// The exact command line and build that produced the figures (printed at the top of a run).
pub fn print_header(name: &str) {
    let rev = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let profile = bin_dir().display().to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "== bench {name}: git {rev}, fleetd from {profile}, {cores} cores, loadavg {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Fails early with a clear message when the lab binaries are missing from the profile dir.
pub fn require_binaries() {
    let dir = bin_dir();
    for bin in ["fleetd", "fleetctl"] {
        let p = dir.join(bin);
        assert!(
            p.is_file(),
            "{} is missing: build it first (`cargo build --release --bins`, or run scripts/bench-lab.sh)",
            p.display()
        );
    }
}

/// Machine `i`'s machine ID, read from its lab disk (also while the machine is down).
/// Machine `i`'s cgroup on the host (the root of its cgroup namespace), as `lab/cluster-lab.sh` makes it.
pub fn machine_cgroup(fl: &FleetLab, i: usize) -> std::path::PathBuf {
    let root = if std::fs::read_dir("/sys/fs/cgroup/unified").is_ok() {
        "/sys/fs/cgroup/unified/fleettest"
    } else {
        "/sys/fs/cgroup/fleettest"
    };
    std::path::PathBuf::from(root)
        .join(fl.lab.prefix())
        .join(format!("m{i}"))
}

pub fn machine_id(fl: &FleetLab, i: usize) -> String {
    let p = fl
        .lab
        .state_dir()
        .join(format!("m{i}/upper/etc/machine-id"));
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Full machine IDs machine `i` lists (`fleetctl list-machines`), `None` when fleetctl fails there.
pub fn listed(fl: &FleetLab, i: usize) -> Option<BTreeSet<String>> {
    fl.listed_machines(i)
}

/// True when every running machine lists every machine of the lab (`n` of them).
pub fn all_list_all(fl: &FleetLab, n: usize) -> bool {
    let want: BTreeSet<String> = (1..=n).map(|i| machine_id(fl, i)).collect();
    let running: Vec<usize> = fl.running().collect();
    running.len() == n
        && running
            .iter()
            .all(|&i| listed(fl, i).as_ref() == Some(&want))
}

/// Which machines have each of `units` active (one `systemctl show` per running machine).
pub fn placement(fl: &FleetLab, units: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut on: BTreeMap<String, Vec<usize>> = units.iter().map(|u| (u.clone(), vec![])).collect();
    let machines: Vec<usize> = fl.running().collect();
    for i in machines {
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

/// Waits (up to `timeout`) until every machine lists every machine and each of `units` is active on
/// exactly one machine, twice in a row a second apart. Returns how long it took, or what was still
/// wrong at the time-out.
pub fn settle(
    fl: &FleetLab,
    n: usize,
    units: &[String],
    timeout: Duration,
) -> Result<Duration, String> {
    let t = std::time::Instant::now();
    let mut stable = 0;
    loop {
        let listed = all_list_all(fl, n);
        let on = placement(fl, units);
        if listed && on.values().all(|m| m.len() == 1) {
            stable += 1;
        } else {
            stable = 0;
        }
        if stable >= 2 {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            let listings: Vec<String> = fl
                .running()
                .map(|i| {
                    format!(
                        "m{i} lists {}",
                        listed_short(fl, i).unwrap_or_else(|| "nothing (fleetctl failed)".into())
                    )
                })
                .collect();
            let wrong: BTreeMap<&String, &Vec<usize>> =
                on.iter().filter(|(_, m)| m.len() != 1).collect();
            return Err(format!(
                "not settled after {timeout:?}: every machine lists every machine: {listed} ({}); units not active exactly once: {wrong:?}",
                listings.join("; ")
            ));
        }
        sleep(Duration::from_millis(900));
    }
}

/// What machine `i` lists, as lab machine numbers (`m1,m3`).
fn listed_short(fl: &FleetLab, i: usize) -> Option<String> {
    let ids = listed(fl, i)?;
    let names: Vec<String> = (1..=fl.lab.machines())
        .filter(|&j| ids.contains(&machine_id(fl, j)))
        .map(|j| format!("m{j}"))
        .collect();
    Some(names.join(","))
}
