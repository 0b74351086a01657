//! `Node::share_copies` (the simulator's nodes hold each machine's metadata once between them)
//! changes where copies live, not what any node does: the same seeded cluster run with and without
//! sharing gives every node the same view at every check, the sharing nodes hold one copy of each
//! machine's metadata (the very same `Arc`), a node that does not share holds its own, and a
//! replaced value is dropped from the shared copies once no node holds it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_gossip::core::Config;
use fleet_gossip::testing::{rack_metadata as metadata, VirtualNet};
use fleet_gossip::{Liveness, MachineId, Metadata, Shared};

const NODES: usize = 5;
/// The node that does not share.
const LONER: usize = 4;

/// What one node's view shows of each machine.
type Seen = BTreeMap<MachineId, (Liveness, Option<Arc<Metadata>>)>;

fn seen(net: &mut VirtualNet, i: usize) -> Seen {
    // The view fleetd's driver answers, whose metadata is the store's copy.
    let view = net.node(i).expect("running").shared_view();
    view.machines
        .iter()
        .map(|(id, m)| (id.clone(), (m.liveness, m.metadata.clone())))
        .collect()
}

/// Five nodes form and publish metadata; after 5 s node 0 publishes another. Returns every node's
/// view after 5 s and after 8 s.
fn run(shared: Option<&Shared>) -> [Vec<Seen>; 2] {
    let mut net = VirtualNet::new(11, Config::default());
    // Every node exists and shares before any metadata is published (a node that joins takes
    // its seed's state at once: it would take it in before sharing).
    let first = net.add_node(&[]);
    for _ in 1..NODES {
        net.add_node(&[first]);
    }
    for n in 0..NODES {
        net.with_node(n, |node, now| {
            if let Some(s) = shared.filter(|_| n != LONER) {
                node.share_copies(s);
            }
            node.set_local_metadata(now, metadata(&format!("r{n}")));
        });
    }
    net.run_for(Duration::from_secs(5));
    let before = (0..NODES).map(|i| seen(&mut net, i)).collect();
    net.with_node(0, |node, now| {
        node.set_local_metadata(now, metadata("moved"))
    });
    net.run_for(Duration::from_secs(3));
    let after = (0..NODES).map(|i| seen(&mut net, i)).collect();
    [before, after]
}

fn values(all: &[Seen]) -> Vec<BTreeMap<MachineId, (Liveness, Option<Metadata>)>> {
    all.iter()
        .map(|s| {
            s.iter()
                .map(|(id, (l, m))| (id.clone(), (*l, m.as_deref().cloned())))
                .collect()
        })
        .collect()
}

#[test]
fn sharing_copies_changes_no_view_and_holds_each_value_once() {
    let shared = Shared::default();
    let with = run(Some(&shared));
    let without = run(None);
    for (w, wo) in with.iter().zip(&without) {
        assert_eq!(values(w), values(wo), "sharing changed what a node sees");
    }
    for (phase, all) in with.iter().enumerate() {
        for origin in 0..NODES {
            let id = VirtualNet::machine_id(origin);
            let copy = |i: usize| {
                let (_, m) = &all[i][&id];
                m.clone()
                    .unwrap_or_else(|| panic!("node {i} lacks {id}'s metadata"))
            };
            let sharing: Vec<usize> = (0..NODES).filter(|&i| i != origin && i != LONER).collect();
            for &i in &sharing[1..] {
                assert!(
                    Arc::ptr_eq(&copy(sharing[0]), &copy(i)),
                    "phase {phase}: nodes {} and {i} hold separate copies of {id}'s metadata",
                    sharing[0]
                );
            }
            if origin != LONER {
                assert!(
                    !Arc::ptr_eq(&copy(sharing[0]), &copy(LONER)),
                    "phase {phase}: the node that does not share holds the shared copy of {id}'s"
                );
            }
        }
    }
    assert_eq!(
        with[1][1][&VirtualNet::machine_id(0)].1.as_deref(),
        Some(&metadata("moved"))
    );
    // Views hold the copies above until dropped here: one value per machine (node 0's old one is
    // held by no node).
    drop(with);
    assert_eq!(shared.metadata_held(), 0);
}
