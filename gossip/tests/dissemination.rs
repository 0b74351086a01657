//! Dissemination of state updates on a virtual network (seeded, virtual clock): a burst of unit
//! states larger than the pushes carry reaches every node (anti-entropy carries what the pushes
//! leave), and a single update in a quiet cluster reaches every node within a few push rounds (so
//! fast only by pushes). The figures are printed by `benches/dissemination.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_gossip::core::Config;
use fleet_gossip::testing::running_unit as running;
use fleet_gossip::testing::VirtualNet;
use fleet_gossip::{Metadata, UnitState};

fn quiet(net: &VirtualNet, n: usize) -> bool {
    (0..n).all(|i| {
        net.node_ref(i)
            .is_none_or(|node| node.pending_pushes() == 0)
    })
}

fn formed(seed: u64, n: usize) -> VirtualNet {
    let mut net = VirtualNet::formed(seed, n, Config::default())
        .unwrap_or_else(|| panic!("seed {seed}: {n} nodes did not all see each other"));
    assert!(net.run_until(Duration::from_secs(60), |net| quiet(net, n)));
    net.run_for(Duration::from_secs(2));
    net
}

/// Whether every node holds every unit of `units` (per origin).
fn all_hold(net: &VirtualNet, units: &[BTreeMap<String, UnitState>]) -> bool {
    (0..units.len()).all(|i| {
        units.iter().enumerate().all(|(o, own)| {
            o == i
                || own
                    .keys()
                    .all(|u| net.holds_unit(i, &VirtualNet::machine_id(o), u))
        })
    })
}

/// 40 nodes, each publishing 15 new unit states at once (600 updates: far more than the pushes
/// carry in a few rounds, so most of them travel by anti-entropy): every node holds every one
/// within a generous 60 s of simulated time, and every outbox empties. Meanwhile one node's new
/// metadata (pushed, never dropped) reaches every node within a few seconds.
#[test]
fn a_burst_of_unit_states_reaches_every_node() {
    let (n, per) = (40, 15);
    for seed in [3, 4] {
        let mut net = formed(seed, n);
        let units: Vec<BTreeMap<String, UnitState>> = (0..n)
            .map(|i| {
                (0..per)
                    .map(|u| (format!("burst-{i:02}-{u:02}.service"), running(i)))
                    .collect()
            })
            .collect();
        let start = net.elapsed();
        for (i, own) in units.iter().enumerate() {
            net.with_node(i, |node, now| node.set_local_unit_states(now, own));
        }
        net.run_for(Duration::from_millis(500));
        let meta = Metadata {
            version: "burst".into(),
            ..Metadata::default()
        };
        net.with_node(7, |node, now| node.set_local_metadata(now, meta.clone()));
        let published = net.elapsed();
        let id = VirtualNet::machine_id(7);
        assert!(
            net.run_until(Duration::from_secs(5), |net| {
                (0..n).all(|i| {
                    i == 7
                        || net
                            .node_ref(i)
                            .is_some_and(|node| node.metadata_of(&id) == Some(&meta))
                })
            }),
            "seed {seed}: metadata published during the burst did not reach every node in 5 s"
        );
        println!(
            "seed {seed}: metadata during the burst everywhere after {:?}",
            net.elapsed() - published
        );
        let converged = net.run_until(Duration::from_secs(60), |net| all_hold(net, &units));
        assert!(
            converged,
            "seed {seed}: the burst did not reach every node within 60 s"
        );
        println!(
            "seed {seed}: burst of {} updates everywhere after {:?}",
            n * per,
            net.elapsed() - start
        );
        assert!(
            net.run_until(Duration::from_secs(60), |net| quiet(net, n)),
            "seed {seed}: outboxes still not empty 60 s after the burst converged"
        );
    }
}

/// A single unit state in a quiet 40-node cluster reaches every node within 2 s: well before any
/// anti-entropy (one exchange per node per 5 s) could carry it, so by the pushes.
#[test]
fn a_single_update_reaches_every_node_within_a_few_push_rounds() {
    let n = 40;
    let mut net = formed(5, n);
    for k in 0..5 {
        let origin = k * 7 + 1;
        let name = format!("single-{k}.service");
        let units = BTreeMap::from([(name.clone(), running(origin))]);
        let start = net.elapsed();
        net.with_node(origin, |node, now| node.set_local_unit_states(now, &units));
        let id = VirtualNet::machine_id(origin);
        assert!(
            net.run_until(Duration::from_secs(2), |net| {
                (0..n).all(|i| i == origin || net.holds_unit(i, &id, &name))
            }),
            "update {k} did not reach every node within 2 s"
        );
        println!("update {k}: everywhere after {:?}", net.elapsed() - start);
        assert!(net.run_until(Duration::from_secs(30), |net| quiet(net, n)));
        net.run_for(Duration::from_secs(1));
        // The next update is another unit: this one stays.
        let _ = start;
    }
}
