//! Runs N gossip nodes on loopback (real quinn, mutual TLS with minted certificates), measures
//! steady-state traffic per node, then crashes nodes one at a time and measures how long until every
//! survivor has declared the crashed one down.
//!
//! `cargo run --release -p fleet-gossip-quic --example loopback_bench -- [nodes=10] [kills=3]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleet_gossip::{Liveness, MachineId, Metadata, UnitState};
use fleet_gossip_quic::tls::{mint_ca, mint_machine_cert, TlsConfig};
use fleet_gossip_quic::transport::{Gossip, GossipConfig, GossipHandle};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10).max(3);
    let kills = args.get(1).copied().unwrap_or(3).min(n - 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    mint_ca(&d.join("ca.pem"), &d.join("ca.key")).expect("mint CA");

    let mut nodes: Vec<(String, GossipHandle)> = Vec::new();
    for i in 0..n {
        let name = format!("{i:032x}");
        let cert = d.join(format!("{i}.pem"));
        let key = d.join(format!("{i}.key"));
        mint_machine_cert(&d.join("ca.pem"), &d.join("ca.key"), &name, &cert, &key)
            .expect("mint machine cert");
        let mut config = GossipConfig::new(
            MachineId::parse(&name).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        );
        config.tls = TlsConfig::Mutual {
            ca_cert: d.join("ca.pem"),
            cert,
            key,
        };
        config.seeds = nodes
            .first()
            .map(|(_, h)| vec![h.local_addr()])
            .unwrap_or_default();
        let (handle, events) = Gossip::start(config).await.expect("start");
        drop(events);
        nodes.push((name, handle));
    }
    println!("config: {:?}", fleet_gossip::core::Config::default());
    let t0 = Instant::now();
    loop {
        let mut ok = true;
        for (_, h) in &nodes {
            ok &= h.view().await.unwrap().live().count() == n;
        }
        if ok {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            println!("cluster did not converge in 30 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{n} nodes: full membership everywhere after {:?}",
        t0.elapsed()
    );

    // Publish some state: metadata plus 20 units per node.
    for (i, (_, h)) in nodes.iter().enumerate() {
        h.set_metadata(Metadata {
            public_ip: format!("10.0.0.{i}"),
            metadata: BTreeMap::from([("role".to_string(), "worker".to_string())]),
            version: "0.1.0".into(),
            unit_count: 20,
        })
        .unwrap();
        let units = (0..20)
            .map(|u| {
                (
                    format!("app-{u}.service"),
                    UnitState {
                        load_state: "loaded".into(),
                        active_state: "active".into(),
                        sub_state: "running".into(),
                        unit_hash: [u as u8; 20],
                    },
                )
            })
            .collect();
        h.set_unit_states(units).unwrap();
    }
    // Traffic while the new state spreads, then once it has settled.
    measure(&nodes, "first 10 s after publishing (dissemination)").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    measure(&nodes, "steady state (20-30 s after publishing)").await;

    let mut times = Vec::new();
    for k in 0..kills {
        let victim_index = n - 1 - k;
        let (victim, handle) = nodes.remove(victim_index);
        let start = Instant::now();
        handle.abort().await.unwrap();
        let victim = MachineId::parse(&victim).unwrap();
        loop {
            let mut all = true;
            for (_, h) in &nodes {
                let v = h.view().await.unwrap();
                all &= v
                    .machines
                    .get(&victim)
                    .is_some_and(|m| m.liveness == Liveness::Down);
            }
            if all {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                println!("crash {k}: not detected by all within 30 s");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = start.elapsed();
        times.push(took);
        println!(
            "crash {k}: declared down by all {} survivors after {took:?}",
            nodes.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    times.sort();
    println!(
        "detection by all: min {:?} median {:?} max {:?} over {} crashes",
        times.first().unwrap(),
        times[times.len() / 2],
        times.last().unwrap(),
        times.len()
    );
    let garbage: u64 = stats(&nodes)
        .await
        .iter()
        .map(|s| s.core.garbage_dropped)
        .sum();
    println!("garbage datagrams dropped across the cluster: {garbage}");
    for (_, h) in &nodes {
        h.leave().await.unwrap();
    }
}

async fn stats(nodes: &[(String, GossipHandle)]) -> Vec<fleet_gossip_quic::transport::Stats> {
    let mut out = Vec::new();
    for (_, h) in nodes {
        out.push(h.stats().await.unwrap());
    }
    out
}

async fn measure(nodes: &[(String, GossipHandle)], label: &str) {
    let window = Duration::from_secs(10);
    let before = stats(nodes).await;
    tokio::time::sleep(window).await;
    let after = stats(nodes).await;
    let secs = window.as_secs_f64();
    let per = |f: fn(&fleet_gossip_quic::transport::Stats) -> u64| {
        let v: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (f(a) - f(b)) as f64 / secs)
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let max = v.iter().cloned().fold(0.0, f64::max);
        (mean, max)
    };
    let (swim_mean, swim_max) = per(|s| s.core.bytes_out);
    let (udp_mean, udp_max) = per(|s| s.udp_bytes_out);
    let (stream_mean, _) = per(|s| s.stream_bytes_out);
    println!(
        "{label}, per node: SWIM payload out {swim_mean:.0} B/s (max {swim_max:.0}), \
         UDP out incl. QUIC {udp_mean:.0} B/s (max {udp_max:.0}), sync streams out {stream_mean:.0} B/s"
    );
}
