//! `Node::members_generation` moves whenever what a reader of the membership sees changes.
//!
//! fleetd's suspects and the simulator read a node's whole membership (`Node::liveness`, each
//! member's `Node::metadata_of`) only when the generation moved since their last read. A change the
//! generation missed would leave them with a stale view: a suspect planned onto, a machine that
//! cannot take units given some. Here a small cluster goes through joins, metadata changes, a crash,
//! a freeze, a partition, a restart and the forgetting of a dead member; after every 20 ms step each
//! node's membership and metadata are compared with the previous step's, and any difference must come
//! with a new generation, and the suspects and the machines that cannot take units that the node keeps
//! (`Node::suspects`, `Node::refusing_units`) must be what a walk of its membership finds.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_gossip::core::{Config, Node};
use fleet_gossip::testing::VirtualNet;
use fleet_gossip::{Liveness, MachineId, Metadata};

type Seen = Vec<(MachineId, Liveness, Option<Metadata>)>;

/// Steps at which some node held a suspect, or a machine that cannot take units (the kept sets'
/// checks are not vacuous).
static SUSPECTS_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static REFUSING_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn seen(node: &Node) -> Seen {
    node.liveness()
        .map(|(id, l)| (id.clone(), l, node.metadata_of(id).cloned()))
        .collect()
}

fn metadata(k: &str, v: &str) -> Metadata {
    Metadata {
        public_ip: String::new(),
        metadata: BTreeMap::from([(k.to_string(), v.to_string())]),
        version: "test".into(),
        unit_count: 0,
    }
}

/// Steps the network in 20 ms steps for `d`, checking every node after each step; returns how many
/// (node, step) pairs saw their membership change.
fn steps(net: &mut VirtualNet, last: &mut BTreeMap<usize, (u64, Seen)>, d: Duration) -> usize {
    let mut changes = 0;
    let step = Duration::from_millis(20);
    let mut done = Duration::ZERO;
    while done < d {
        net.run_for(step);
        done += step;
        for i in net.running() {
            let Some(node) = net.node_ref(i) else {
                continue;
            };
            let now = (node.members_generation(), seen(node));
            // The kept sets are what a walk of the membership finds.
            let suspects: Vec<&MachineId> = now
                .1
                .iter()
                .filter(|(_, l, _)| *l == Liveness::Suspect)
                .map(|(id, _, _)| id)
                .collect();
            assert_eq!(
                node.suspects().collect::<Vec<_>>(),
                suspects,
                "node {i}: suspects"
            );
            let refusing: Vec<&MachineId> = now
                .1
                .iter()
                .filter(|(_, l, md)| {
                    *l != Liveness::Down && md.as_ref().is_some_and(|m| m.cannot_take_units())
                })
                .map(|(id, _, _)| id)
                .collect();
            assert_eq!(
                node.refusing_units().collect::<Vec<_>>(),
                refusing,
                "node {i}: machines that cannot take units"
            );
            if !refusing.is_empty() {
                REFUSING_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if !suspects.is_empty() {
                SUSPECTS_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some((generation, before)) = last.get(&i) {
                if *before != now.1 {
                    changes += 1;
                    assert_ne!(
                        *generation,
                        now.0,
                        "node {i} at +{:?}: its membership changed from {before:?} to {:?} and the generation stayed {generation}",
                        net.elapsed(),
                        now.1
                    );
                }
            }
            last.insert(i, now);
        }
    }
    changes
}

#[test]
fn every_change_of_the_membership_or_metadata_moves_the_generation() {
    let config = Config {
        remove_down_after: Duration::from_secs(6),
        ..Config::default()
    };
    let mut net = VirtualNet::new(7, config);
    let n = 6;
    let mut last = BTreeMap::new();
    let mut changes = 0;
    net.add_node(&[]);
    for _ in 1..n {
        net.add_node(&[0]);
        changes += steps(&mut net, &mut last, Duration::from_millis(100));
    }
    changes += steps(&mut net, &mut last, Duration::from_secs(3));
    let formed = changes;
    // Metadata set, changed, and the same again (no change); a machine says it cannot take units,
    // then can again, then cannot (kept through the faults below).
    for (i, v) in [(1, "a"), (2, "b"), (1, "c"), (1, "c")] {
        net.with_node(i, |node, now| {
            node.set_local_metadata(now, metadata("rack", v))
        });
        changes += steps(&mut net, &mut last, Duration::from_millis(600));
    }
    for cannot in [true, false, true] {
        net.with_node(2, |node, now| {
            let mut md = metadata("rack", "b");
            md.set_cannot_take_units(cannot);
            node.set_local_metadata(now, md)
        });
        changes += steps(&mut net, &mut last, Duration::from_millis(600));
    }
    let with_metadata = changes;
    // A freeze long enough for suspicion, then a thaw (refutation).
    net.freeze(3);
    changes += steps(&mut net, &mut last, Duration::from_millis(1500));
    net.thaw(3);
    changes += steps(&mut net, &mut last, Duration::from_secs(3));
    // A partition and its repair.
    net.partition(&[4]);
    changes += steps(&mut net, &mut last, Duration::from_secs(4));
    net.repair();
    changes += steps(&mut net, &mut last, Duration::from_secs(4));
    // A crash, down, forgotten after remove_down_after; a restart of another node with a new life.
    net.kill(5);
    changes += steps(&mut net, &mut last, Duration::from_secs(10));
    net.kill(2);
    changes += steps(&mut net, &mut last, Duration::from_millis(200));
    net.start(2, 2, &[0]);
    changes += steps(&mut net, &mut last, Duration::from_secs(5));
    // Not vacuous: every phase changed what the nodes see.
    assert!(formed >= n, "formation: {formed} changes seen");
    assert!(
        with_metadata > formed,
        "metadata: no change seen ({with_metadata})"
    );
    assert!(
        changes > with_metadata + 10,
        "faults: {changes} changes seen"
    );
    let forgotten = net
        .running()
        .into_iter()
        .filter(|&i| {
            net.node_ref(i).is_some_and(|node| {
                !node
                    .liveness()
                    .any(|(id, _)| *id == VirtualNet::machine_id(5))
            })
        })
        .count();
    assert!(forgotten > 0, "no node forgot the dead member");
    let ordering = std::sync::atomic::Ordering::Relaxed;
    assert!(SUSPECTS_SEEN.load(ordering) > 0, "no suspect ever seen");
    assert!(
        REFUSING_SEEN.load(ordering) > 0,
        "no refusing machine ever seen"
    );
}
