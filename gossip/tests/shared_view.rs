//! `Node::shared_view` (what fleetd's gossip driver answers) is always the view built from scratch.
//!
//! The shared view is rebuilt only when `Node::view_generation` moves (or the node's identity
//! changes), and then only the entries of the machines that the roster and the store list as
//! changed; each machine's metadata and units are the store's shared copies, rebuilt only after
//! that machine's data changed. A change that moved neither would leave fleetd with a
//! stale view: a unit state, a suspicion, a metadata change it never sees. Here a small cluster goes
//! through joins, unit state changes and removals at random, metadata changes, a freeze (suspicion,
//! refutation), a partition, a crash (down, then forgotten) and a restart with a new life; after
//! every 20 ms step, every node's shared view (and `Node::view`) must equal
//! `Node::view_from_scratch`, the view as it was built before anything was shared: every machine's
//! metadata and units copied from the store's entries, its version found by a walk of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_gossip::core::{Config, Node};
use fleet_gossip::testing::{rack_metadata as metadata, running_unit, VirtualNet};
use fleet_gossip::{Liveness, View};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Default)]
struct Seen {
    /// Steps at which a node's shared view was the previous one (a pointer copy) / a new one.
    reused: usize,
    rebuilt: usize,
    /// (node, step) pairs whose view held a suspect, a down member, a unit in each state.
    suspects: usize,
    down: usize,
    /// Machines' entries of a rebuilt view that shared their units with the previous view.
    units_shared: usize,
}

/// Compares node `i`'s shared view with one built from scratch.
fn check(i: usize, node: &mut Node, last: &mut BTreeMap<usize, Arc<View>>, seen: &mut Seen) {
    let shared = node.shared_view();
    let fresh = node.view_from_scratch();
    assert_eq!(
        *shared, fresh,
        "node {i}: its shared view differs from the one built from scratch"
    );
    assert_eq!(node.view(), fresh, "node {i}: Node::view");
    if let Some(prev) = last.get(&i) {
        if Arc::ptr_eq(prev, &shared) {
            seen.reused += 1;
        } else {
            seen.rebuilt += 1;
            seen.units_shared += shared
                .machines
                .iter()
                .filter(|(id, m)| {
                    !m.units.is_empty()
                        && prev
                            .machines
                            .get(*id)
                            .is_some_and(|p| Arc::ptr_eq(&p.units, &m.units))
                })
                .count();
        }
    }
    let count = |l| shared.machines.values().filter(|m| m.liveness == l).count();
    seen.suspects += count(Liveness::Suspect).min(1);
    seen.down += count(Liveness::Down).min(1);
    last.insert(i, shared);
}

/// Steps the network for `d` in 20 ms steps; at each, with probability `p` each, a random running
/// node changes or removes one of its units' state; then every node's view is checked.
fn steps(
    net: &mut VirtualNet,
    rng: &mut StdRng,
    last: &mut BTreeMap<usize, Arc<View>>,
    seen: &mut Seen,
    d: Duration,
    p: f64,
) {
    let step = Duration::from_millis(20);
    let mut done = Duration::ZERO;
    while done < d {
        if rng.random_bool(p) {
            let nodes = net.running();
            let i = nodes[rng.random_range(0..nodes.len())];
            let unit = format!("u{}.service", rng.random_range(0..4));
            let state = match rng.random_range(0..3) {
                0 => None,
                k => {
                    let mut s = running_unit(i);
                    if k == 2 {
                        s.active_state = "failed".into();
                    }
                    Some(s)
                }
            };
            net.with_node(i, |node, now| node.set_local_unit_state(now, &unit, state));
        }
        net.run_for(step);
        done += step;
        for i in net.running() {
            if let Some(node) = net.node(i) {
                check(i, node, last, seen);
            }
        }
    }
}

#[test]
// long: the scenario in order (formation, metadata, quiet, freeze, partition, crash, restart), then the checks that it was not vacuous
fn the_shared_view_is_always_the_view_built_from_scratch() {
    let config = Config {
        remove_down_after: Duration::from_secs(6),
        ..Config::default()
    };
    let mut net = VirtualNet::new(11, config);
    let mut rng = StdRng::seed_from_u64(5);
    let mut last = BTreeMap::new();
    let mut seen = Seen::default();
    let n = 6;
    net.add_node(&[]);
    for _ in 1..n {
        net.add_node(&[0]);
        steps(
            &mut net,
            &mut rng,
            &mut last,
            &mut seen,
            Duration::from_millis(100),
            0.3,
        );
    }
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_secs(3),
        0.3,
    );
    // Metadata set, changed, the same again, and a machine that cannot take units.
    for (i, v) in [(1, "a"), (2, "b"), (1, "c"), (1, "c")] {
        net.with_node(i, |node, now| node.set_local_metadata(now, metadata(v)));
        steps(
            &mut net,
            &mut rng,
            &mut last,
            &mut seen,
            Duration::from_millis(400),
            0.2,
        );
    }
    net.with_node(2, |node, now| {
        let mut md = metadata("b");
        md.set_cannot_take_units(true);
        node.set_local_metadata(now, md)
    });
    // Quiet: nothing changes, the shared view is reused.
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_secs(2),
        0.0,
    );
    // A freeze long enough for suspicion, then a thaw (refutation).
    net.freeze(3);
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_millis(1500),
        0.2,
    );
    net.thaw(3);
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_secs(3),
        0.2,
    );
    // A partition and its repair.
    net.partition(&[4]);
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_secs(4),
        0.2,
    );
    net.repair();
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_secs(4),
        0.2,
    );
    // A crash: suspected, down, forgotten after remove_down_after; a restart with a new life.
    net.kill(5);
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_secs(10),
        0.2,
    );
    net.kill(2);
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_millis(200),
        0.2,
    );
    net.start(2, 2, &[0]);
    steps(
        &mut net,
        &mut rng,
        &mut last,
        &mut seen,
        Duration::from_secs(5),
        0.3,
    );
    // Not vacuous: views were reused and rebuilt, rebuilt ones shared unchanged machines' units,
    // and suspects and down members were seen.
    let Seen {
        reused,
        rebuilt,
        suspects,
        down,
        units_shared,
    } = seen;
    println!("reused {reused}, rebuilt {rebuilt}, units shared {units_shared}, suspects {suspects}, down {down}");
    assert!(reused > 1000, "shared view reused {reused} times");
    assert!(rebuilt > 500, "shared view rebuilt {rebuilt} times");
    assert!(units_shared > 1000, "units shared {units_shared} times");
    assert!(suspects > 0, "no suspect ever seen");
    assert!(down > 0, "no down member ever seen");
}
