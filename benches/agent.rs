//! Agent benchmark (issue 3), on a 1-machine cluster lab running the fleetd of this build profile:
//!
//! 1. start latency: `fleetctl start --no-block <unit>` of a submitted (inactive) unit until systemd
//!    reports it `active`. Measured with timestamps, not by polling: the monotonic clock just before
//!    the fleetctl process is spawned vs the unit's `ActiveEnterTimestampMonotonic` (lab machines share
//!    the host's `CLOCK_MONOTONIC`). Includes fleetctl's process start and its API round trips, the
//!    etcd write and watch, placement, the claim transaction, writing + linking the unit file, systemd's
//!    reload and the start job. Units are started one at a time, with a random pause between them.
//! 2. fleetd's resident memory (VmRSS, VmHWM from `/proc/<pid>/status` inside the machine) with no
//!    units, then with `BENCH_MEM_UNITS` units loaded, then with them all launched.
//!
//! 3. etcd transactions (etcd's own count of `Txn` requests) while those units are submitted, loaded and
//!    started: the API's unit writes and the agent's claims; and, from fleetd's `/metrics`, how many
//!    of its own agent transactions (claims, announcements) the load took and their time.
//!
//! Prints figures, asserts no timing. Root only (skips with a message otherwise). Build the binaries
//! of the bench profile first: `cargo build --release --bins && cargo bench --bench agent`
//! (or `scripts/bench-lab.sh`). Knobs: `BENCH_LATENCY_UNITS` (50), `BENCH_MEM_UNITS` (500),
//! `BENCH_RECONCILE_INTERVAL` (`2s`, fleetd's default), `BENCH_SEED`, `BENCH_JOURNAL` (a file to
//! write m1's whole journal to at the end: fleetd, systemd and dbus-daemon), `BENCH_PROFILE` (run
//! the fleetd and fleetctl of another profile directory than the bench's own, e.g. `release` from a
//! debug bench: `cargo build --release -p fleet -p fleetctl --bins`, then
//! `BENCH_PROFILE=release target/debug/deps/agent-<hash>`).

#[path = "../tests/lab/mod.rs"]
mod lab;
mod support;

use std::time::{Duration, Instant};

use lab::FleetLab;
use support::{fleetd_memory_kib, knob, knob_str, mono_us, show_units, summary_ms, Rng};

fn main() {
    if !fleet_lab::require_root() {
        println!("bench agent skipped: needs root and the cluster lab's tools (see above)");
        return;
    }
    support::require_binaries();
    support::print_header("agent");
    let n_lat: usize = knob("BENCH_LATENCY_UNITS", 50);
    let n_mem: usize = knob("BENCH_MEM_UNITS", 500);
    let interval = knob_str("BENCH_RECONCILE_INTERVAL", "2s");
    let seed: u64 = knob("BENCH_SEED", mono_us());
    println!(
        "1 machine, engine_reconcile_interval={interval}, {n_lat} latency units, {n_mem} memory units, seed {seed}"
    );
    let t = Instant::now();
    let Some(fl) = support::fleet_lab_up(1, &[("FLEET_ENGINE_RECONCILE_INTERVAL", &interval)])
    else {
        return;
    };
    println!("lab up in {:.1} s", t.elapsed().as_secs_f64());

    // Memory at rest.
    support::sleep(Duration::from_secs(3));
    let (rss0, hwm0, pid) = fleetd_memory_kib(&fl, 1);

    start_latency(&fl, n_lat, &mut Rng::new(seed));
    destroy_all(&fl, "lat-", n_lat);

    let (rss_loaded, hwm_loaded, rss_launched, hwm_launched) = memory(&fl, n_mem);
    let (_, _, pid_end) = fleetd_memory_kib(&fl, 1);
    let journal_file = knob_str("BENCH_JOURNAL", "");
    if !journal_file.is_empty() {
        let out = fl
            .lab
            .sh(1, &["journalctl", "--no-pager", "-o", "short-precise"])
            .expect("journalctl");
        std::fs::write(&journal_file, &out.stdout).expect("writing BENCH_JOURNAL");
        println!("fleetd journal written to {journal_file}");
    }
    println!();
    println!(
        "fleetd memory (pid {pid}; the same process throughout: {}):",
        pid == pid_end
    );
    println!(
        "  0 units:             VmRSS {:.1} MiB (VmHWM {:.1} MiB)",
        mib(rss0),
        mib(hwm0)
    );
    println!(
        "  {n_mem} units loaded:    VmRSS {:.1} MiB (VmHWM {:.1} MiB)   goal < 30 MB",
        mib(rss_loaded),
        mib(hwm_loaded)
    );
    println!(
        "  {n_mem} units launched:  VmRSS {:.1} MiB (VmHWM {:.1} MiB)",
        mib(rss_launched),
        mib(hwm_launched)
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn unit_text(name: &str) -> String {
    format!("[Unit]\nDescription=bench {name}\n\n[Service]\nExecStart=/bin/sleep 1000000\n")
}

/// Where the unit files of `prefix` are written inside the machine.
fn dir(prefix: &str) -> String {
    format!("/tmp/bench-{}", prefix.trim_end_matches('-'))
}

/// Submits `n` units `prefix000..` from files written into the machine's /tmp/<prefix>/.
fn submit(fl: &FleetLab, prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|k| format!("{prefix}{k:03}.service")).collect();
    for name in &names {
        fl.write_file(1, &format!("{}/{name}", dir(prefix)), &unit_text(name));
    }
    let cmd = format!(
        "cd {} && /opt/fleet/bin/fleetctl submit ./*.service >/dev/null",
        dir(prefix)
    );
    let out = fl.lab.sh(1, &["sh", "-c", &cmd]).expect("fleetctl submit");
    assert!(
        out.status.success(),
        "fleetctl submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    names
}

fn start_latency(fl: &FleetLab, n: usize, rng: &mut Rng) {
    let names = submit(fl, "lat-", n);
    let mut total = Vec::with_capacity(n);
    let mut cli = Vec::with_capacity(n);
    let mut after_cli = Vec::with_capacity(n);
    for name in &names {
        support::sleep(Duration::from_millis(100 + rng.below(400)));
        let t0 = mono_us();
        let out = fl.fleetctl(1, &["start", "--no-block", name]);
        let t1 = mono_us();
        assert!(
            out.status.success(),
            "fleetctl start {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let entered = loop {
            let props = show_units(
                fl,
                1,
                std::slice::from_ref(name),
                &["ActiveEnterTimestampMonotonic"],
            )
            .and_then(|mut m| m.remove(name))
            .unwrap_or_default();
            let ts = support::ts(&props, "ActiveEnterTimestampMonotonic");
            if ts != 0 {
                break ts;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not active 30 s after fleetctl start"
            );
            support::sleep(Duration::from_millis(5));
        };
        assert!(
            entered >= t0 && entered <= mono_us(),
            "{name}: ActiveEnterTimestampMonotonic {entered} outside [{t0}, now]: the machine's clock is not the host's"
        );
        total.push((entered - t0) as f64 / 1000.0);
        cli.push((t1 - t0) as f64 / 1000.0);
        after_cli.push(entered.saturating_sub(t1) as f64 / 1000.0);
    }
    println!();
    println!("start latency, `fleetctl start --no-block` of a submitted unit -> systemd active ({n} units, one at a time):");
    println!(
        "  total:                         {}   goal p50 < 300 ms",
        summary_ms(&total)
    );
    println!("  of which fleetctl (until exit): {}", summary_ms(&cli));
    println!(
        "  of which agent (exit->active):  {}",
        summary_ms(&after_cli)
    );
    println!("  first unit: {:.0} ms", total[0]);
}

/// Destroys the units and waits until systemd has stopped them. Waits a second first, so that the
/// agent has seen the last start (destroying a unit whose start the agent has not yet seen leaves it
/// running: reported, see docs/benchmarks.md); units still active after 30 s are reported, not fatal.
fn destroy_all(fl: &FleetLab, prefix: &str, n: usize) {
    support::sleep(Duration::from_secs(1));
    let names: Vec<String> = (0..n).map(|k| format!("{prefix}{k:03}.service")).collect();
    let mut args = vec!["destroy"];
    args.extend(names.iter().map(String::as_str));
    fl.fleetctl_ok(1, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = show_units(fl, 1, &names, &["ActiveState"]).unwrap_or_default();
        let active: Vec<&String> = states
            .iter()
            .filter(|(_, p)| p.get("ActiveState").map(String::as_str) == Some("active"))
            .map(|(u, _)| u)
            .collect();
        if active.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            println!("BUG: destroyed units still active in systemd 30 s after `fleetctl destroy`: {active:?}");
            return;
        }
        support::sleep(Duration::from_millis(100));
    }
}

/// Counts `prefix*` unit files systemd knows as linked (loaded by fleet) and `prefix*` units active.
fn linked_and_active(fl: &FleetLab, prefix: &str) -> (usize, usize) {
    let pattern = format!("{prefix}*");
    // The links LinkUnitFiles made, counted on disk: `systemctl list-unit-files` costs systemd a scan
    // of every link per unit file (quadratic), and polling it every 500 ms kept PID 1 busy enough to
    // make 1,000 starts several times slower than they are.
    let links = fl
        .lab
        .sh_ok(
            1,
            &[
                "find",
                "/run/systemd/system",
                "-maxdepth",
                "1",
                "-type",
                "l",
                "-name",
                &pattern,
            ],
        )
        .unwrap_or_default();
    let linked = links.lines().count();
    let units = fl
        .lab
        .sh_ok(
            1,
            &[
                "systemctl",
                "list-units",
                "--no-legend",
                "--no-pager",
                "--state=active",
                &pattern,
            ],
        )
        .unwrap_or_default();
    (linked, units.lines().count())
}

/// fleetd's agent transactions on machine `i` so far (`fleet_etcd_request_duration_seconds` with
/// `op="claim_txn"`: claim writes and announcements): how many, and their time in seconds.
fn agent_txns(fl: &FleetLab, i: usize) -> Option<(u64, f64)> {
    let (_, body) = fl.api(i, "GET", "/metrics", None, 10);
    let value = |name: &str| {
        let prefix = format!("fleet_etcd_request_duration_seconds_{name}{{op=\"claim_txn\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((value("count")? as u64, value("sum")?))
}

/// Polls `done` every 500 ms (listing hundreds of units keeps systemd busy: the observer must not
/// slow down what it observes); panics after 10 minutes naming `what`.
fn wait_slowly(fl: &FleetLab, what: &str, mut done: impl FnMut(&FleetLab) -> bool) {
    let t = Instant::now();
    while !done(fl) {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "timed out after 10 minutes waiting for: {what}"
        );
        support::sleep(Duration::from_millis(500));
    }
}

/// Returns (rss, hwm) with `n` units loaded, then (rss, hwm) with them launched, in KiB.
fn memory(fl: &FleetLab, n: usize) -> (u64, u64, u64, u64) {
    let txns = || support::etcd_txns(fl, 1);
    let tx0 = txns();
    let agent0 = agent_txns(fl, 1);
    let t = Instant::now();
    submit(fl, "mem-", n);
    let submitted = t.elapsed();
    let tx_submitted = txns();
    let cmd = format!(
        "/opt/fleet/bin/fleetctl load --no-block {}/*.service >/dev/null",
        dir("mem-")
    );
    let t = Instant::now();
    let out = fl.lab.sh(1, &["sh", "-c", &cmd]).expect("fleetctl load");
    assert!(
        out.status.success(),
        "fleetctl load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_slowly(fl, &format!("{n} units linked"), |fl| {
        linked_and_active(fl, "mem-").0 >= n
    });
    let loaded = t.elapsed();
    let tx_loaded = txns();
    let agent_loaded = agent_txns(fl, 1);
    support::sleep(Duration::from_secs(5));
    let (rss_l, hwm_l, _) = fleetd_memory_kib(fl, 1);
    let tx_rested = txns();

    let cmd = format!(
        "/opt/fleet/bin/fleetctl start --no-block {}/*.service >/dev/null",
        dir("mem-")
    );
    let t = Instant::now();
    let out = fl.lab.sh(1, &["sh", "-c", &cmd]).expect("fleetctl start");
    assert!(
        out.status.success(),
        "fleetctl start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_slowly(fl, &format!("{n} units active"), |fl| {
        linked_and_active(fl, "mem-").1 >= n
    });
    let launched = t.elapsed();
    let tx_launched = txns();
    support::sleep(Duration::from_secs(5));
    let (rss_a, hwm_a, _) = fleetd_memory_kib(fl, 1);
    println!();
    println!(
        "{n} units: submit {:.1} s, load until all linked in systemd {:.1} s, start until all active {:.1} s",
        submitted.as_secs_f64(),
        loaded.as_secs_f64(),
        launched.as_secs_f64()
    );
    let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => (b - a).to_string(),
        _ => "?".into(),
    };
    println!(
        "etcd transactions for them: submit {}, load until all linked {}, start until all active {}",
        delta(tx0, tx_submitted),
        delta(tx_submitted, tx_loaded),
        delta(tx_rested, tx_launched)
    );
    if let (Some((n0, s0)), Some((n1, s1))) = (agent0, agent_loaded) {
        println!(
            "  of which fleetd's agent transactions (claims, announcements) until all linked: {} taking {:.0} ms in all",
            n1 - n0,
            (s1 - s0) * 1000.0
        );
    }
    (rss_l, hwm_l, rss_a, hwm_a)
}
