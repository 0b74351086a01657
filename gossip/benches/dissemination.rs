//! How fast a burst of state updates reaches every node, and what it costs (issue 14, items 1 and
//! 3), with real nodes in a `VirtualNet` (0.5 ms latency, no loss, signed state, today's defaults):
//!
//!     cargo bench -p fleet-gossip --features testing --bench dissemination
//!     NODES=200 UPDATES=2000 TRIALS=20 SEED=7 LIMIT=600 cargo bench -p fleet-gossip \
//!         --features testing --bench dissemination
//!
//! A cluster of `NODES` forms through one seed and settles (every outbox empty). Then:
//! [1] `TRIALS` single updates, one at a time in the quiet cluster, each by another node: the time
//!     until every node holds it (exact: checked after every step of the network);
//! [2] a burst: `UPDATES` new unit states at once, spread evenly over the nodes (each node
//!     publishes its share in one call, as fleetd publishes a pass's changes). Printed: per update,
//!     the time until every node holds it (p50, p90, max) and per (node, update) the time it
//!     arrived (p50); when the last one arrived; the datagrams and bytes each node sent until quiet
//!     (every outbox empty) and in the burst's first 12 s; the sync bytes; the run's CPU time (this
//!     thread's, so a loaded host inflates it less than wall time would).
//!
//! Nothing is asserted: `gossip/tests/dissemination.rs` checks that a burst converges.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleet_gossip::core::{Config, Event};
use fleet_gossip::testing::running_unit as running;
use fleet_gossip::testing::VirtualNet;
use fleet_gossip::testing::{env_or as env, thread_cpu};
use fleet_gossip::UnitState;

/// Datagrams, push datagrams and bytes sent by every node so far.
fn sent(net: &VirtualNet, n: usize) -> (u64, u64, u64) {
    (0..n)
        .filter_map(|i| net.node_ref(i).map(|node| node.counters()))
        .fold((0, 0, 0), |(d, p, b), c| {
            (d + c.datagrams_out, p + c.pushes_out, b + c.bytes_out)
        })
}

fn quiet(net: &VirtualNet, n: usize) -> bool {
    (0..n).all(|i| {
        net.node_ref(i)
            .is_none_or(|node| node.pending_pushes() == 0)
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

// long: one benchmark's steps in order, each printing its figures
fn main() {
    let n: usize = env("NODES", 200);
    let updates: usize = env("UPDATES", 2000);
    let trials: usize = env("TRIALS", 20);
    let seed: u64 = env("SEED", 7);
    let limit = Duration::from_secs(env("LIMIT", 600));
    let mut config = Config::default();
    if let Some(ms) = std::env::var("PUSH_MAX_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.push_max_wait = Duration::from_millis(ms);
    }
    println!(
        "dissemination: {n} nodes (VirtualNet, 0.5 ms latency, no loss, signed state), seed {seed}; \
         push_max_wait {:?}, max_transmissions {}, gossip_fanout {}, gossip_interval {:?}, \
         max_packet_size {}, anti_entropy_interval {:?}",
        config.push_max_wait,
        config.max_transmissions,
        config.gossip_fanout,
        config.gossip_interval,
        config.max_packet_size,
        config.anti_entropy_interval
    );
    let cpu = thread_cpu();
    let mut net = VirtualNet::formed(seed, n, config).expect("the cluster formed");
    net.run_until(Duration::from_secs(60), |net| quiet(net, n));
    net.run_for(Duration::from_secs(5));
    println!(
        "formed and settled at {:.1} s simulated, {:.1} s CPU",
        net.elapsed().as_secs_f64(),
        (thread_cpu() - cpu).as_secs_f64()
    );
    let idle = Duration::from_secs(10);
    let (d0, _, b0) = sent(&net, n);
    let s0 = net.sync_bytes;
    net.run_for(idle);
    let (d1, _, b1) = sent(&net, n);
    let per_s = |x: u64, d: Duration| x as f64 / n as f64 / d.as_secs_f64();
    println!(
        "idle: {:.1} datagrams/s, {:.0} B/s of datagrams and {:.0} B/s of syncs per node",
        per_s(d1 - d0, idle),
        per_s(b1 - b0, idle),
        per_s(net.sync_bytes - s0, idle)
    );

    // [1] Single updates in the quiet cluster.
    let mut own: Vec<BTreeMap<String, UnitState>> = vec![BTreeMap::new(); n];
    let mut singles = Vec::new();
    for k in 0..trials {
        let origin = (k * 37 + 1) % n;
        let name = format!("single-{k:03}.service");
        own[origin].insert(name.clone(), running(origin));
        let units = own[origin].clone();
        let id = VirtualNet::machine_id(origin);
        let t0 = net.elapsed();
        net.with_node(origin, |node, now| node.set_local_unit_states(now, &units));
        let all = net.run_until(Duration::from_secs(60), |net| {
            (0..n).all(|i| i == origin || net.holds_unit(i, &id, &name))
        });
        assert!(all, "single update {k} did not reach every node in 60 s");
        singles.push(net.elapsed() - t0);
        net.run_until(Duration::from_secs(60), |net| quiet(net, n));
        net.run_for(Duration::from_secs(1));
    }
    singles.sort();
    println!(
        "[1] a single update in the quiet cluster, {trials} trials: every node holds it after \
         p50 {}, max {}",
        ms(percentile(&singles, 0.5)),
        ms(percentile(&singles, 1.0))
    );

    // [2] The burst.
    let mut pending: Vec<HashMap<usize, Vec<(usize, String)>>> = vec![HashMap::new(); n];
    for u in 0..updates {
        let origin = u % n;
        let name = format!("burst-{u:05}.service");
        own[origin].insert(name.clone(), running(origin));
        for (i, p) in pending.iter_mut().enumerate() {
            if i != origin {
                p.entry(origin).or_default().push((u, name.clone()));
            }
        }
    }
    let mut left = updates * (n - 1);
    let mut arrivals: Vec<Vec<Duration>> = vec![Vec::new(); updates];
    let mut seen = vec![0usize; n];
    let (d0, p0, b0) = sent(&net, n);
    let s0 = net.sync_bytes;
    let cpu = thread_cpu();
    let t0 = net.elapsed();
    let early = Duration::from_secs(12);
    let mut at_early = None;
    for (origin, units) in own.iter().enumerate() {
        let units = units.clone();
        net.with_node(origin, |node, now| node.set_local_unit_states(now, &units));
    }
    for (i, s) in seen.iter_mut().enumerate() {
        *s = net.events(i).len();
    }
    let ids: Vec<_> = (0..n).map(VirtualNet::machine_id).collect();
    let index: HashMap<_, _> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i))
        .collect();
    let converged = net.run_until(limit, |net| {
        let at = net.elapsed() - t0;
        if at_early.is_none() && at >= early {
            at_early = Some((sent(net, n), net.sync_bytes, at));
        }
        for i in 0..n {
            let events = net.events(i);
            if events.len() == seen[i] {
                continue;
            }
            let mut origins: Vec<usize> = events[seen[i]..]
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::UnitStatesChanged(o) => index.get(o).copied(),
                    _ => None,
                })
                .collect();
            seen[i] = events.len();
            origins.sort_unstable();
            origins.dedup();
            for o in origins {
                let Some(list) = pending[i].get_mut(&o) else {
                    continue;
                };
                let before = list.len();
                list.retain(|(u, name)| {
                    if net.holds_unit(i, &ids[o], name) {
                        arrivals[*u].push(at);
                        false
                    } else {
                        true
                    }
                });
                left -= before - list.len();
            }
        }
        left == 0
    });
    let last = net.elapsed() - t0;
    let quieted = net.run_until(limit, |net| {
        let at = net.elapsed() - t0;
        if at_early.is_none() && at >= early {
            at_early = Some((sent(net, n), net.sync_bytes, at));
        }
        quiet(net, n)
    });
    let quiet_after = net.elapsed() - t0;
    let burst_cpu = thread_cpu() - cpu;
    let (d1, p1, b1) = sent(&net, n);
    let sync = net.sync_bytes - s0;
    // The same window for every variant: traffic in the burst's first 12 and 30 s.
    let window = Duration::from_secs(30);
    if net.elapsed() - t0 < window {
        let left = window - (net.elapsed() - t0);
        net.run_until(left, |net| {
            let at = net.elapsed() - t0;
            if at_early.is_none() && at >= early {
                at_early = Some((sent(net, n), net.sync_bytes, at));
            }
            false
        });
    }
    let at_window = (sent(&net, n), net.sync_bytes, net.elapsed() - t0);
    let mut per_update: Vec<Duration> = arrivals
        .iter()
        .map(|a| a.iter().copied().max().unwrap_or(Duration::MAX))
        .collect();
    per_update.sort();
    let mut pairs: Vec<Duration> = arrivals.iter().flatten().copied().collect();
    pairs.sort();
    println!(
        "[2] a burst of {updates} unit-state updates ({} per node) at {:.1} s:",
        updates / n,
        t0.as_secs_f64()
    );
    if converged {
        println!(
            "    every node holds every update after {} (the last arrival); per update, every \
             node holds it after p50 {}, p90 {}, max {}; per (node, update) p50 {}",
            ms(last),
            ms(percentile(&per_update, 0.5)),
            ms(percentile(&per_update, 0.9)),
            ms(percentile(&per_update, 1.0)),
            ms(percentile(&pairs, 0.5))
        );
    } else {
        println!(
            "    NOT converged within {limit:?}: {left} (node, update) pairs missing; {} of {} \
             arrived",
            pairs.len(),
            updates * (n - 1)
        );
    }
    println!(
        "    quiet (every outbox empty) {}after {}; until then, per node: {:.0} datagrams out \
         ({:.0} pushes), {:.0} kB of datagrams, {:.0} kB of syncs",
        if quieted { "" } else { "NOT " },
        ms(quiet_after),
        (d1 - d0) as f64 / n as f64,
        (p1 - p0) as f64 / n as f64,
        (b1 - b0) as f64 / n as f64 / 1000.0,
        sync as f64 / n as f64 / 1000.0
    );
    for ((d, _, b), s, at) in at_early.into_iter().chain([at_window]) {
        println!(
            "    first {:.0} s, per node: {:.1} datagrams/s, {:.0} B/s of datagrams, {:.0} B/s \
             of syncs",
            at.as_secs_f64(),
            per_s(d - d0, at),
            per_s(b - b0, at),
            per_s(s - s0, at)
        );
    }
    println!(
        "    CPU time of the burst's run (all {n} nodes, until quiet): {:.2} s",
        burst_cpu.as_secs_f64()
    );
}
