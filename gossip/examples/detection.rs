//! Failure-detection figures of the gossip core with the default `Config`, on a virtual LAN
//! (0.5 ms one-way latency): for several cluster sizes, crash one node per trial and measure how long
//! until every other member has declared it down. Also prints steady-state datagram bytes/s per node.
//!
//! `cargo run --release -p fleet-gossip --example detection -- [trials] [sizes...]`
//! With `LOSS=0.05` in the environment, every datagram is lost with that probability (the false
//! downs column then measures accuracy).

use std::time::Duration;

use fleet_gossip::core::Config;
use fleet_gossip::testing::VirtualNet;
use fleet_gossip::Liveness;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let trials: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(200);
    let sizes: Vec<usize> = if args.len() > 1 {
        args[1..].iter().filter_map(|a| a.parse().ok()).collect()
    } else {
        vec![5, 20, 100]
    };
    let config = Config::default();
    let loss: f64 = std::env::var("LOSS")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    println!("config: {config:?}");
    println!("datagram loss: {loss}");
    println!("trials per size: {trials}; seeds 0..{trials}");
    for n in sizes {
        let mut times = Vec::new();
        let mut bytes_per_sec = Vec::new();
        let mut false_downs = 0usize;
        let mut undetected = 0usize;
        for seed in 0..trials {
            let mut net = VirtualNet::new(seed, config.clone());
            net.loss = loss;
            let first = net.add_node(&[]);
            for _ in 1..n {
                net.add_node(&[first]);
            }
            net.run_for(Duration::from_secs(5));
            // Steady state traffic over 5 s.
            let before: Vec<u64> = (0..n)
                .map(|i| net.node(i).map(|x| x.counters().bytes_out).unwrap_or(0))
                .collect();
            net.run_for(Duration::from_secs(5));
            for (i, b) in before.iter().enumerate() {
                let after = net.node(i).map(|x| x.counters().bytes_out).unwrap_or(0);
                bytes_per_sec.push((after - b) as f64 / 5.0);
            }
            false_downs += (0..n)
                .map(|i| {
                    net.events(i)
                        .iter()
                        .filter(|(_, e)| matches!(e, fleet_gossip::Event::MemberDown(_)))
                        .count()
                })
                .sum::<usize>();
            let victim = (seed as usize * 7 + 1) % n;
            net.kill(victim);
            let others = net.running();
            let start = net.elapsed();
            let ok = net.run_until(Duration::from_secs(20), |net| {
                others
                    .iter()
                    .all(|o| net.liveness(*o, victim) == Some(Liveness::Down))
            });
            if ok {
                let took = net.elapsed() - start;
                if std::env::var_os("VERBOSE").is_some() && took > Duration::from_secs(2) {
                    let late: Vec<_> = others
                        .iter()
                        .filter_map(|o| {
                            net.events(*o)
                                .iter()
                                .find(|(_, e)| {
                                    *e == fleet_gossip::Event::MemberDown(VirtualNet::machine_id(
                                        victim,
                                    ))
                                })
                                .map(|(t, _)| (*o, *t - start))
                        })
                        .filter(|(_, t)| *t > Duration::from_secs(2))
                        .collect();
                    println!(
                        "  n={n} seed={seed} victim={victim}: {took:?}; late observers {late:?}"
                    );
                }
                times.push(took);
            } else {
                undetected += 1;
            }
        }
        times.sort();
        let pct = |p: f64| {
            times
                .get(((times.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        bytes_per_sec.sort_by(|a, b| a.total_cmp(b));
        let mean_bps = bytes_per_sec.iter().sum::<f64>() / bytes_per_sec.len().max(1) as f64;
        println!(
            "n={n:4}: detection by all p50={:?} p90={:?} p99={:?} max={:?} undetected={undetected}; \
             false downs before crash={false_downs}; datagram bytes/s per node mean={mean_bps:.0} max={:.0}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            times.last().copied().unwrap_or_default(),
            bytes_per_sec.last().copied().unwrap_or_default(),
        );
    }
}
