//! The phases of a crash's detection with the default `Config`, on the virtual LAN: per trial, a formed
//! cluster of `n` members runs a few seconds, one member crashes, and every step records when any
//! survivor first holds it suspect, when any first holds it down, and when all do. Prints p50, p90,
//! p99, max and min of each (ms after the crash), and of first suspicion → first down verdict (the
//! suspicion's length: `suspect_to_down_after` with two confirmations, `suspicion_max` with none;
//! 450 ms and 1.05 s by default).
//!
//! `cargo run -p fleet-gossip --example phases -- [trials] [n] [tolerance_ms]` (defaults 100, 5 and
//! the default blip tolerance, fleetd's default `fence_after`; seeds 0..trials)

use std::time::Duration;

use fleet_gossip::core::Config;
use fleet_gossip::testing::VirtualNet;
use fleet_gossip::Liveness;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let trials: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100);
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let config = match args.get(2).and_then(|a| a.parse().ok()) {
        Some(ms) => Config::default().with_blip_tolerance(Duration::from_millis(ms)),
        None => Config::default(),
    };
    let (mut first_s, mut first_d, mut all_d, mut length) = (vec![], vec![], vec![], vec![]);
    for seed in 0..trials {
        let Some(mut net) = VirtualNet::formed(seed, n, config.clone()) else {
            println!("seed {seed}: the cluster did not form");
            continue;
        };
        net.run_for(Duration::from_millis(3000 + (seed * 37) % 1000));
        let victim = (seed as usize * 7 + 1) % n;
        net.kill(victim);
        let others = net.running();
        let start = net.elapsed();
        let (mut fs, mut fd) = (None, None);
        let done = net.run_until(Duration::from_secs(10), |net| {
            let t = net.elapsed() - start;
            for o in &others {
                match net.liveness(*o, victim) {
                    Some(Liveness::Suspect) => {
                        fs.get_or_insert(t);
                    }
                    Some(Liveness::Down) => {
                        fs.get_or_insert(t);
                        fd.get_or_insert(t);
                    }
                    _ => {}
                }
            }
            others
                .iter()
                .all(|o| net.liveness(*o, victim) == Some(Liveness::Down))
        });
        let (Some(fs), Some(fd), true) = (fs, fd, done) else {
            println!("seed {seed}: not declared down everywhere within 10 s");
            continue;
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        first_s.push(ms(fs));
        first_d.push(ms(fd));
        all_d.push(ms(net.elapsed() - start));
        length.push(ms(fd) - ms(fs));
    }
    println!(
        "{n} members, {} crashes, suspicion {:?} to {:?}, ms after the crash:",
        first_s.len(),
        config.suspect_to_down_after,
        config.suspicion_max
    );
    for (name, v) in [
        ("first suspicion", &mut first_s),
        ("first down verdict", &mut first_d),
        ("down everywhere", &mut all_d),
        ("suspicion -> first down", &mut length),
    ] {
        if v.is_empty() {
            continue;
        }
        println!(
            "{name:24} p50 {:5.0}  p90 {:5.0}  p99 {:5.0}  max {:5.0}  min {:5.0}",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0),
            pct(v, 0.0)
        );
    }
}
