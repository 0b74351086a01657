//! The gossip transport's bytes on the wire per member, measured on loopback with real nodes
//! (`Gossip::start`, mutual TLS with certificates minted as `fleetctl gen-certs` mints them, 32-hex-digit
//! machine IDs, idle after formation), in three runs of the same cluster:
//!
//! - **quic, connections kept**: nothing sealed, 60 s idle timeout: in a small cluster every pair
//!   keeps its connection (the lab's regime).
//! - **quic, a set-up per contact**: nothing sealed, 1 s idle timeout: almost every contact needs a
//!   new connection, as in a cluster of 1,000 or more where a member rarely meets the same peer
//!   within 60 s (`gossip/benches/scale.rs` [2]).
//! - **sealed, every datagram**: `SealedMode::Always`, what a member of a large cluster sends
//!   instead (there, a contact rarely finds an open connection).
//! - **sealed without a connection**: today's default (`SealedMode::WithoutConnection`) with the
//!   1 s idle timeout: in a cluster this small the connections opened in the first seconds stay
//!   open (a pair meets more often than every second) and carry most datagrams.
//!
//! Per run: the mean per member of UDP bytes each way per second (`Stats::udp_bytes_*`: QUIC,
//! TLS, set-ups and sealed datagrams), sealed datagrams per second, and the process's CPU per
//! member. This calibrates `SEAL_OVERHEAD` and the sealed model of the scale bench.
//!
//!     cargo run --release -p fleet-gossip-quic --example sealed_cost
//!     # knobs: NODES (10), WARMUP (15 s), SECS (30), RUNS (1,2,3,4)

use std::time::{Duration, Instant};

use fleet_gossip::MachineId;
use fleet_gossip_quic::tls::{mint_ca, TlsConfig};
use fleet_gossip_quic::transport::{Gossip, GossipConfig, GossipHandle, SealedMode, Stats};

mod support;

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of this process (all threads).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let ticks: u64 = rest
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // Clock ticks of 10 ms (USER_HZ is 100 on Linux).
    Duration::from_millis(10 * ticks)
}

async fn run(label: &str, tls: &[TlsConfig], sealed: SealedMode, idle: Duration) {
    let (nodes, warmup, secs) = (tls.len(), env("WARMUP", 15u64), env("SECS", 30u64));
    let mut handles: Vec<GossipHandle> = Vec::new();
    let mut events = Vec::new();
    for (i, tls) in tls.iter().enumerate() {
        let mut config = GossipConfig::new(
            MachineId::parse(&format!("{i:032x}")).expect("machine ID"),
            "127.0.0.1:0".parse().expect("addr"),
        );
        config.tls = tls.clone();
        config.sealed = sealed;
        config.sealed_after = Duration::from_secs(5);
        config.idle_timeout = idle;
        config.seeds = handles
            .first()
            .map(|h| h.local_addr())
            .into_iter()
            .collect();
        let (h, e) = Gossip::start(config).await.expect("start");
        handles.push(h);
        events.push(e);
    }
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let stats = |hs: &[GossipHandle]| {
        let hs = hs.to_vec();
        async move {
            let mut v: Vec<Stats> = Vec::new();
            for h in &hs {
                v.push(h.stats().await.expect("stats"));
            }
            v
        }
    };
    let (s0, c0, t0) = (stats(&handles).await, process_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (s1, c1, t) = (stats(&handles).await, process_cpu(), t0.elapsed());
    // Every member should list every other one alive (a formed cluster throughout).
    let mut fewest = usize::MAX;
    for h in &handles {
        let alive = h.view().await.map_or(0, |v| {
            v.machines
                .values()
                .filter(|m| m.liveness == fleet_gossip::Liveness::Alive)
                .count()
        });
        fewest = fewest.min(alive);
    }
    let per = |f: &dyn Fn(&Stats) -> u64| {
        s0.iter()
            .zip(&s1)
            .map(|(a, b)| (f(b) - f(a)) as f64)
            .sum::<f64>()
            / nodes as f64
            / t.as_secs_f64()
    };
    println!(
        "{label:<32} {:>9.0} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>9.3} {fewest:>9}",
        per(&|s| s.udp_bytes_in),
        per(&|s| s.udp_bytes_out),
        per(&|s| s.sealed_in),
        per(&|s| s.sealed_out),
        per(&|s| s.sealed_refused + s.sealed_unverifiable),
        100.0 * (c1 - c0).as_secs_f64() / t.as_secs_f64() / nodes as f64,
    );
    for h in &handles {
        let _ = h.abort().await;
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).expect("mint CA");
    let nodes = env("NODES", 10usize);
    let tls: Vec<TlsConfig> = (0..nodes)
        .map(|i| support::machine_tls(d, &i.to_string(), &format!("{i:032x}")))
        .collect();
    println!(
        "{nodes} nodes on loopback, idle, mutual TLS; per member, {} s after {} s:",
        env("SECS", 30u64),
        env("WARMUP", 15u64)
    );
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "run", "B/s in", "B/s out", "sealed/s", "sealed/s", "refused/s", "cpu %", "alive"
    );
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "(UDP)", "(UDP)", "in", "out", "", "(1 core)", "(fewest)"
    );
    let short = Duration::from_secs(1);
    // RUNS (1,2,3,4): which runs, in this order.
    let runs: String = env("RUNS", "1,2,3,4".to_string());
    for r in runs.split(',') {
        match r.trim() {
            "1" => {
                let kept = Duration::from_secs(60);
                run("quic, connections kept", &tls, SealedMode::Off, kept).await
            }
            "2" => run("quic, a set-up per contact", &tls, SealedMode::Off, short).await,
            "3" => run("sealed, every datagram", &tls, SealedMode::Always, short).await,
            "4" => {
                let mode = SealedMode::WithoutConnection;
                run("sealed without a connection", &tls, mode, short).await
            }
            _ => {}
        }
    }
}
