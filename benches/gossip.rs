//! Gossip benchmark (issue 4), on a 5-machine cluster lab whose fleetds run gossip with mutual TLS
//! ([`FleetLab::up_with_tls`]: certificates minted by `fleetctl gen-certs`).
//!
//! - Steady state: gossip bytes per machine per second (UDP port 7479, both directions: SWIM
//!   datagrams, anti-entropy syncs, QUIC and TLS overhead, IP headers), counted by an nftables table
//!   of the bench in every machine's netns. fleetd itself exposes no gossip counters.
//! - Detection (`BENCH_ROUNDS`, 30): the bench SIGKILLs a machine's PID 1 (the kernel kills everything
//!   in it; the victim rotates over the machines) and measures the time until *every* survivor's
//!   `GET /fleet/v1/machines` no longer lists it (also: until the *first* survivor drops it). One
//!   poller thread per survivor asks its API every 10 ms over a TCP forwarder into the machine. Then
//!   the machine boots again, and the time until every machine lists every machine is printed
//!   (rejoin), from the start of its fleetd (systemd's `ExecMainStartTimestampMonotonic`, the host's
//!   monotonic clock) and from the start of the boot.
//! - Joins (`BENCH_JOINS`, 3): `add_machine` (boot a new machine, which starts its fleetd), then the
//!   time until it lists everyone and everyone lists it, from its fleetd's start and from the start
//!   of `add_machine`. The cluster grows by one machine per join.
//!
//! Prints figures, asserts no timing. Root only (skips with a message otherwise). Build the binaries
//! of the bench profile first: `cargo build --release --bins && cargo bench --bench gossip`.
//! Knobs: `BENCH_ROUNDS`, `BENCH_JOINS`, `BENCH_GOSSIP_SECS` (10).

#[path = "../tests/lab/mod.rs"]
mod lab;
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_lab::Netns;
use lab::{FleetLab, TlsFleetLab};
use support::{knob, mono_us, summary_ms};

const MACHINES: usize = 5;
const GOSSIP_PORT: u16 = 7479;
const API_PORT: u16 = 49153;
const POLL: Duration = Duration::from_millis(10);
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    if !fleet_lab::require_root() {
        println!("bench gossip skipped: needs root and the cluster lab's tools (see above)");
        return;
    }
    support::require_binaries();
    support::print_header("gossip");
    let rounds: usize = knob("BENCH_ROUNDS", 30);
    let joins: usize = knob("BENCH_JOINS", 3);
    let gossip_secs: u64 = knob("BENCH_GOSSIP_SECS", 10);
    println!(
        "{MACHINES} machines, mutual TLS, {rounds} kill rounds, {joins} joins, fleetd defaults for failure detection"
    );
    let api_tcp = format!("0.0.0.0:{API_PORT}");
    let t = Instant::now();
    let fl = FleetLab::up_with_tls(
        MACHINES,
        &[
            ("FLEET_API_TCP", api_tcp.as_str()),
            // Plain HTTP on the lab network (a key of newer fleetds; older ones ignore it).
            ("FLEET_API_TCP_INSECURE", "true"),
        ],
    )
    .expect("root was checked");
    println!("lab up in {:.1} s", t.elapsed().as_secs_f64());
    let mut apis: Vec<SocketAddr> = Vec::new();
    for i in 1..=MACHINES {
        apis.push(api_of(&fl, i));
    }

    gossip_bytes(&fl, gossip_secs);

    let mut all = Vec::new();
    let mut first = Vec::new();
    let mut rejoin = Vec::new();
    let mut rejoin_fleetd = Vec::new();
    for round in 0..rounds {
        let victim = 1 + round % MACHINES;
        match kill_round(&fl, &apis, victim) {
            Some((f, a)) => {
                first.push(f);
                all.push(a);
            }
            None => {
                println!("  round {round}: m{victim} not dropped everywhere within {TIMEOUT:?}")
            }
        }
        let t = Instant::now();
        fl.boot(victim);
        match wait_converged(&apis) {
            Some(at) => {
                rejoin.push(t.elapsed().as_secs_f64() * 1e3);
                rejoin_fleetd.push(since_fleetd_start(&fl, victim, at));
            }
            None => {
                println!("  round {round}: m{victim} did not rejoin everywhere within {TIMEOUT:?}")
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    println!();
    println!("detection after SIGKILL (victim gone from survivors' /fleet/v1/machines):");
    println!("  every survivor: {}", summary_ms(&all));
    println!("  first survivor: {}", summary_ms(&first));
    println!("rejoin (every machine lists every machine again):");
    println!("  after its fleetd started: {}", summary_ms(&rejoin_fleetd));
    println!("  after boot began: {}", summary_ms(&rejoin));

    let mut join_total = Vec::new();
    let mut join_fleetd = Vec::new();
    for _ in 0..joins {
        let t = Instant::now();
        let j = fl.add_machine();
        apis.push(api_of(&fl, j));
        match wait_converged(&apis) {
            Some(at) => {
                let total = t.elapsed().as_secs_f64() * 1e3;
                let after_start = since_fleetd_start(&fl, j, at);
                join_total.push(total);
                join_fleetd.push(after_start);
                println!(
                    "  join m{j}: converged {after_start:.0} ms after its fleetd started, {total:.0} ms after add_machine began ({} machines)",
                    apis.len()
                );
            }
            None => println!("  join m{j}: not converged within {TIMEOUT:?}"),
        }
    }
    println!("join (the joiner lists everyone, everyone lists it):");
    println!("  after its fleetd started: {}", summary_ms(&join_fleetd));
    println!("  after add_machine began: {}", summary_ms(&join_total));
    drop(fl);
}

/// A host address forwarded to machine `i`'s API (TCP).
fn api_of(fl: &TlsFleetLab, i: usize) -> SocketAddr {
    let target = SocketAddr::from((fleet_lab::machine_ip(i), API_PORT));
    fl.lab
        .forward_tcp(Netns::Machine(i), target)
        .expect("forward to the machine's API")
}

/// Machine IDs in `GET /fleet/v1/machines` of the API at `addr`; `None` when it does not answer.
fn machines(addr: SocketAddr) -> Option<BTreeSet<String>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /fleet/v1/machines HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    if !raw.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&raw[end + 4..]).ok()?;
    Some(
        v["machines"]
            .as_array()?
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Kills machine `victim` and waits until every survivor's API stops listing it. Returns (first
/// survivor, every survivor) in milliseconds after the SIGKILL.
fn kill_round(fl: &TlsFleetLab, apis: &[SocketAddr], victim: usize) -> Option<(f64, f64)> {
    let id = fl.machine_id(victim);
    let survivors: Vec<SocketAddr> = (1..=apis.len())
        .filter(|i| *i != victim && fl.lab.machine_pid(*i).is_ok())
        .map(|i| apis[i - 1])
        .collect();
    for a in &survivors {
        assert!(
            machines(*a).is_some_and(|l| l.contains(&id)),
            "m{victim} must be listed before the kill"
        );
    }
    let pid = fl.lab.machine_pid(victim).expect("victim runs");
    let t0 = Instant::now();
    let ok = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -KILL {pid} (m{victim}'s systemd) failed");
    let times: Vec<Option<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = survivors
            .iter()
            .map(|a| {
                let id = &id;
                s.spawn(move || {
                    while t0.elapsed() < TIMEOUT {
                        if machines(*a).is_some_and(|l| !l.contains(id)) {
                            return Some(t0.elapsed());
                        }
                        std::thread::sleep(POLL);
                    }
                    None
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The lab's own kill: reaps the machine (cgroup, pid files) so that it can boot again.
    fl.lab.kill(victim).expect("lab kill");
    let times: Option<Vec<Duration>> = times.into_iter().collect();
    let times = times?;
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let first = times.iter().map(ms).fold(f64::INFINITY, f64::min);
    let all = times.iter().map(ms).fold(0.0, f64::max);
    Some((first, all))
}

/// Waits until every running machine's API lists exactly the running machines (`apis[i-1]` is
/// machine `i`). Returns the host's `CLOCK_MONOTONIC` (µs) when that was seen; `None` after
/// [`TIMEOUT`].
fn wait_converged(apis: &[SocketAddr]) -> Option<u64> {
    let t0 = Instant::now();
    while t0.elapsed() < TIMEOUT {
        let views: Vec<Option<BTreeSet<String>>> = apis.iter().map(|a| machines(*a)).collect();
        if let Some(first) = views.first().cloned().flatten() {
            if first.len() == apis.len() && views.iter().all(|v| v.as_ref() == Some(&first)) {
                return Some(mono_us());
            }
        }
        std::thread::sleep(POLL);
    }
    None
}

/// Milliseconds from the start of fleetd in machine `i` (systemd's `ExecMainStartTimestampMonotonic`:
/// lab machines share the host's monotonic clock) to `at_us`.
fn since_fleetd_start(fl: &FleetLab, i: usize, at_us: u64) -> f64 {
    let started: u64 = fl
        .show(i, "fleet.service", "ExecMainStartTimestampMonotonic")
        .parse()
        .unwrap_or_else(|e| panic!("fleet.service start time in m{i}: {e}"));
    (at_us as f64 - started as f64) / 1e3
}

/// Steady-state gossip traffic (UDP 7479, both directions) per machine, counted by nftables.
fn gossip_bytes(fl: &FleetLab, secs: u64) {
    let rules = format!(
        "table inet gossipbench\ndelete table inet gossipbench\ntable inet gossipbench {{\n\
         chain in {{ type filter hook input priority -5; udp dport {GOSSIP_PORT} counter; udp sport {GOSSIP_PORT} udp dport != {GOSSIP_PORT} counter; }}\n\
         chain out {{ type filter hook output priority -5; udp sport {GOSSIP_PORT} counter; udp dport {GOSSIP_PORT} udp sport != {GOSSIP_PORT} counter; }}\n}}\n"
    );
    let script = format!("nft -f - <<'EOF'\n{rules}EOF\n");
    let read = |i: usize| -> Vec<(u64, u64)> {
        let out = fl
            .lab
            .sh_ok(i, &["nft", "list", "table", "inet", "gossipbench"])
            .expect("nft list");
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(4)
            .filter(|w| w[0] == "packets" && w[2] == "bytes")
            .map(|w| (w[1].parse().unwrap_or(0), w[3].parse().unwrap_or(0)))
            .collect()
    };
    for i in 1..=MACHINES {
        if let Err(e) = fl.lab.sh_ok(i, &["sh", "-c", &script]) {
            println!("gossip bytes: skipped (nftables counters not available: {e})");
            return;
        }
    }
    let before: Vec<_> = (1..=MACHINES).map(read).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<_> = (1..=MACHINES).map(read).collect();
    let dt = t.elapsed().as_secs_f64();
    println!();
    println!("steady-state gossip over {dt:.1} s ({MACHINES} idle machines), per machine (IP packets on UDP {GOSSIP_PORT}):");
    let mut total = 0.0;
    for i in 0..MACHINES {
        if after[i].len() != 4 || before[i].len() != 4 {
            println!("  m{}: unexpected counters {:?}", i + 1, after[i]);
            continue;
        }
        let d: Vec<(f64, f64)> = after[i]
            .iter()
            .zip(&before[i])
            .map(|(a, b)| ((a.0 - b.0) as f64 / dt, (a.1 - b.1) as f64 / dt))
            .collect();
        let (p_in, b_in) = (d[0].0 + d[1].0, d[0].1 + d[1].1);
        let (p_out, b_out) = (d[2].0 + d[3].0, d[2].1 + d[3].1);
        total += b_in + b_out;
        println!(
            "  m{}: in {b_in:.0} B/s ({p_in:.1} pkt/s), out {b_out:.0} B/s ({p_out:.1} pkt/s)",
            i + 1
        );
    }
    println!(
        "  in + out per machine: {:.0} B/s on average",
        total / MACHINES as f64
    );
    for i in 1..=MACHINES {
        let _ = fl
            .lab
            .sh(i, &["nft", "delete", "table", "inet", "gossipbench"]);
    }
}
