//! The cost of fleetd's copy of its gossip view (issue 14, per-machine cost at scale), in-process:
//! one real `fleet_gossip::core::Node` holding a formed cluster (`synthetic_cluster`: `n` members,
//! each with metadata and `UNITS` unit states) and the agent's `AgentCluster`.
//!
//!     cargo bench -p fleet --bench view                       # 1,000 and 10,000 members x 10 units
//!     SIZES=1000 UNITS=10 CHURN=1000 SECS=10 REPS=200 cargo bench -p fleet --bench view
//!
//! A refresh is what `spawn_view_refresh` (src/agent/view.rs) does: the gossip driver answers
//! `GossipHandle::view` (`Command::View`, in the driver's task: the driver handles no datagram
//! meanwhile) and the agent stores the answer (`AgentCluster::set_view`). Printed per size, as the
//! calling thread's CPU time (so a loaded host inflates it less than wall time), per refresh:
//!
//! - [a] idle: nothing changed since the previous refresh (the 500 ms tick of an idle cluster);
//! - [b] after one unit state change of one other machine (what one gossip event brings).
//!
//! Then [c], how many refreshes fleetd does: idle, its view is refreshed every 500 ms (2/s) and on
//! every gossip event, and an idle formed cluster emits none. During a burst of `CHURN` unit state
//! changes per second in the whole cluster for `SECS` simulated seconds, the node receives each
//! change `max_transmissions` times in state pushes from random relays (spread over the gossip
//! rounds, as rumour mongering delivers them: the model of `gossip/benches/scale.rs`); the first copy
//! is news and makes the node emit `Event::UnitStatesChanged(origin)` (one event per origin whose
//! units an input changed). The node's timers are not run (no probes: no liveness events; the burst
//! alone). Counted: events, inputs that emitted at least one, and the refreshes of fleetd's loop
//! (it wakes on an event or the tick, takes every event already queued, then refreshes; modelled
//! here with each refresh taking the CPU measured in [b], events arriving meanwhile waiting for the
//! next one); their CPU per second, and the share of it spent in the driver's task.
//!
//! Prints figures, asserts nothing about time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleet::agent::AgentCluster;
use fleet::api::cluster::LocalCluster;
use fleet::registry::{Registry, RegistryOptions};
use fleet_gossip::core::{Config, Node};
use fleet_gossip::testing::{env_or as env, thread_cpu};
use fleet_gossip::testing::{running_unit, synthetic_cluster};
use fleet_gossip::wire::DATAGRAM_STATE;
use fleet_gossip::{Entry, Metadata, NodeIdentity, Stamp, UnitState, Update};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// One-way LAN latency of the model.
const RTT: Duration = Duration::from_micros(250);

/// What the driver answers to `Command::View`.
fn driver_view(node: &mut Node) -> std::sync::Arc<fleet_gossip::View> {
    node.shared_view()
}

/// One refresh: the driver's answer, then the agent's `set_view`; the CPU of each part.
fn refresh(node: &mut Node, cluster: &AgentCluster) -> (Duration, Duration) {
    let t0 = thread_cpu();
    let view = driver_view(node);
    let t1 = thread_cpu();
    cluster.set_view(view);
    let t2 = thread_cpu();
    (t1 - t0, t2 - t1)
}

struct Bench {
    ids: Vec<NodeIdentity>,
    node: Node,
    rng: StdRng,
    /// Each origin's next unit state version.
    versions: Vec<u64>,
    units: usize,
}

impl Bench {
    /// A push of one new unit state of a random other member, `copies` times from random relays;
    /// returns the datagrams with when they arrive.
    fn change(&mut self, now: Instant, config: &Config, copies: u8) -> Vec<(Instant, Vec<u8>)> {
        let origin = self.rng.random_range(1..self.ids.len());
        self.versions[origin] += 1;
        let v = self.versions[origin];
        let unit = self.rng.random_range(0..self.units.max(1));
        let update = Update {
            origin: self.ids[origin].machine_id.clone(),
            stamp: Stamp {
                epoch: self.ids[origin].incarnation,
                version: v,
            },
            entry: Entry::Unit {
                name: format!("app-{unit:04}.service"),
                state: Some(UnitState {
                    load_state: "loaded".into(),
                    active_state: ["failed", "active"][(v & 1) as usize].into(),
                    sub_state: "dead".into(),
                    unit_hash: [0; 20],
                }),
            },
            // Unsigned node: the signature is not checked.
            signature: vec![0; 71],
        };
        (0..copies)
            .map(|k| {
                let relay = self.rng.random_range(1..self.ids.len());
                let mut push = vec![DATAGRAM_STATE];
                push.extend(postcard::to_allocvec(&self.ids[relay]).unwrap());
                push.extend(postcard::to_allocvec(&1usize).unwrap());
                push.extend(postcard::to_allocvec(&update).unwrap());
                let at = now + config.gossip_interval * u32::from(k / 3) + RTT;
                (at, push)
            })
            .collect()
    }

    /// Hands a datagram to the node; returns how many events it emitted (outputs dropped).
    fn deliver(&mut self, now: Instant, data: &[u8]) -> usize {
        let from = self.ids[1].addr;
        let _ = self.node.handle_datagram(now, from, data);
        while self.node.poll_transmit().is_some() {}
        while self.node.poll_sync().is_some() {}
        let mut events = 0;
        while self.node.poll_event().is_some() {
            events += 1;
        }
        events
    }
}

/// A node holding a formed cluster of `n` members with `units` units each, this machine's own
/// state published, and an agent's `AgentCluster` that has taken its first view.
fn setup(n: usize, units: usize, config: &Config) -> (Bench, AgentCluster, Instant) {
    let (ids, snapshot) = synthetic_cluster(n.max(3), units);
    let start = Instant::now();
    let mut node = Node::new(
        config.clone(),
        ids[0].clone(),
        StdRng::seed_from_u64(1),
        start,
    );
    node.merge(start, snapshot).expect("snapshot");
    node.set_local_metadata(
        start,
        Metadata {
            public_ip: ids[0].addr.ip().to_string(),
            metadata: [("rack".to_string(), "r0".to_string())].into(),
            version: "0.1.0".into(),
            unit_count: units as u32,
        },
    );
    let states = (0..units)
        .map(|u| (format!("app-{u:04}.service"), running_unit(0)))
        .collect();
    node.set_local_unit_states(start, &states);
    while node.poll_event().is_some() {}
    while node.poll_transmit().is_some() {}
    while node.poll_sync().is_some() {}
    let cluster = AgentCluster::new(
        LocalCluster::new(ids[0].machine_id.clone(), None, BTreeMap::new()),
        // Never reached: the runtime is not driven, so its task never runs.
        Registry::start(RegistryOptions::new(
            vec!["http://127.0.0.1:9".into()],
            "/fleet/",
        )),
        None,
    );
    let mut b = Bench {
        versions: vec![1 + units as u64; ids.len()],
        ids,
        node,
        rng: StdRng::seed_from_u64(3),
        units,
    };
    // The first refresh (a new node's view): not counted.
    refresh(&mut b.node, &cluster);
    (b, cluster, start)
}

/// [a] and [b]: the mean CPU of a refresh's two parts, idle and after one change each; and the
/// virtual time reached.
fn per_refresh(
    b: &mut Bench,
    cluster: &AgentCluster,
    config: &Config,
    mut now: Instant,
    reps: u32,
) -> ([(Duration, Duration); 2], Instant) {
    let (mut va, mut sa) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..reps {
        let (v, s) = refresh(&mut b.node, cluster);
        va += v;
        sa += s;
    }
    let (mut vb, mut sb) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..reps {
        now += Duration::from_millis(1);
        for (_, push) in b.change(now, config, 1) {
            b.deliver(now, &push);
        }
        let (v, s) = refresh(&mut b.node, cluster);
        vb += v;
        sb += s;
    }
    ([(va / reps, sa / reps), (vb / reps, sb / reps)], now)
}

/// [c] The burst from `t0` for `secs` simulated seconds at `churn` changes/s: events, inputs that
/// emitted one, and the refreshes of fleetd's loop when each takes `cost`.
fn burst(
    b: &mut Bench,
    config: &Config,
    t0: Instant,
    secs: u64,
    churn: f64,
    cost: Duration,
) -> (u64, u64, u64) {
    let end = t0 + Duration::from_secs(secs);
    let mut queue: BTreeMap<(Instant, u64), Vec<u8>> = BTreeMap::new();
    let mut seq = 0u64;
    let mut next_change = t0;
    let gap = Duration::from_secs_f64(1.0 / churn.max(1e-9));
    let (mut events, mut inputs, mut refreshes) = (0u64, 0u64, 0u64);
    // fleetd's loop: when its current refresh ends, and whether events wait for the next one,
    // which starts as soon as the current one ends.
    let mut busy_until = t0;
    let mut waiting = false;
    let mut next_tick = t0;
    loop {
        let next_push = queue.keys().next().map(|(at, _)| *at);
        let at = [Some(next_change), next_push, Some(next_tick)]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        if at >= end {
            break;
        }
        if waiting && busy_until <= at {
            refreshes += 1;
            busy_until += cost;
            waiting = false;
        }
        if at == next_change {
            let jitter = b.rng.random_range(0.5..1.5);
            next_change = at + gap.mul_f64(jitter);
            for (when, push) in b.change(at, config, config.max_transmissions) {
                seq += 1;
                queue.insert((when, seq), push);
            }
        } else if Some(at) == next_push {
            let (_, push) = queue.pop_first().unwrap();
            let e = b.deliver(at, &push);
            if e > 0 {
                events += e as u64;
                inputs += 1;
                waiting = true;
            }
        } else {
            next_tick = at + Duration::from_millis(500);
            waiting = true;
        }
        if waiting && busy_until <= at {
            refreshes += 1;
            busy_until = at + cost;
            waiting = false;
        }
    }
    (events, inputs, refreshes)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let units: usize = env("UNITS", 10);
    let churn: f64 = env("CHURN", 1000.0);
    let secs: u64 = env("SECS", 10);
    let reps: u32 = env("REPS", 200);
    let config = Config::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    println!(
        "view refresh: {units} units per member, {reps} refreshes per case, burst {churn} unit changes/s for {secs} s, max_transmissions {}",
        config.max_transmissions
    );
    println!(
        "{:>7} | {:>10} {:>10} | {:>10} {:>10} | {:>8} {:>9} {:>9} {:>8} {:>9}",
        "members",
        "[a] view",
        "set_view",
        "[b] view",
        "set_view",
        "events/s",
        "inputs/s",
        "refresh/s",
        "CPU %",
        "driver %"
    );
    for &n in &sizes {
        let (mut b, cluster, start) = setup(n, units, &config);
        let ([(view_a, set_a), (view_b, set_b)], now) =
            per_refresh(&mut b, &cluster, &config, start, reps);
        let cost = view_b + set_b;
        let t0 = now + Duration::from_secs(1);
        let (events, inputs, refreshes) = burst(&mut b, &config, t0, secs, churn, cost);
        let s = secs as f64;
        let rate = refreshes as f64 / s;
        let us = |d: Duration| format!("{:.1} us", d.as_secs_f64() * 1e6);
        println!(
            "{:>7} | {:>10} {:>10} | {:>10} {:>10} | {:>8.0} {:>9.0} {:>9.1} {:>7.1}% {:>8.1}%",
            n,
            us(view_a),
            us(set_a),
            us(view_b),
            us(set_b),
            events as f64 / s,
            inputs as f64 / s,
            rate,
            rate * cost.as_secs_f64() * 100.0,
            rate * view_b.as_secs_f64() * 100.0,
        );
    }
    println!(
        "CPU % and driver %: one core's share spent refreshing during the burst (all of it; the driver's task's part)."
    );
}
