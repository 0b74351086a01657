//! Copies that nodes in one process may share: for simulators, which run a whole cluster of nodes
//! in one process.
//!
//! Every node keeps every machine's metadata, so a cluster of n nodes holds n² copies: about
//! 0.6 kB each, 640 MB of the 2 GB that 1,000 simulated machines take to form (heaptrack, see
//! docs/benchmarks.md). Most of the time every node holds the same value of a machine's metadata,
//! and no node changes its copy in place (it replaces its `Arc`), so the nodes of a simulator can
//! hold one copy. A real fleetd runs one node and shares nothing: it never calls
//! [`crate::Node::share_copies`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::types::{MachineId, Metadata};

/// What the nodes given the same `Shared` ([`crate::Node::share_copies`]) hold once between them.
/// Cloning it gives another handle on the same copies.
#[derive(Clone, Debug, Default)]
pub struct Shared {
    /// Per machine, the value of its metadata a node took in last. Keyed by machine alone, not by
    /// stamp: a machine may publish the same value again under a new stamp (the stamp is kept
    /// apart, in each node's store), and while a new value spreads, nodes that still take in the
    /// old one get copies of their own (one entry per machine, so nothing needs sweeping).
    metadata: Arc<Mutex<HashMap<MachineId, Weak<Metadata>, foldhash::fast::RandomState>>>,
}

impl Shared {
    /// The copy of `origin`'s metadata `m`: the one another node took in last if it is the same
    /// value (compared), a new one otherwise.
    pub(crate) fn metadata(&self, origin: &MachineId, m: &Metadata) -> Arc<Metadata> {
        let mut copies = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = copies.get(origin).and_then(Weak::upgrade) {
            if *held == *m {
                return held;
            }
        }
        let fresh = Arc::new(m.clone());
        copies.insert(origin.clone(), Arc::downgrade(&fresh));
        fresh
    }

    /// How many of the shared copies some node holds now.
    pub fn metadata_held(&self) -> usize {
        let copies = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        copies.values().filter(|w| w.strong_count() > 0).count()
    }
}

impl crate::Node {
    /// Holds the copies `shared` names once with every other node given it (a simulator's nodes;
    /// see the module docs). What the node does is unchanged: only where its copies live.
    pub fn share_copies(&mut self, shared: &Shared) {
        self.store.shared = Some(shared.clone());
    }
}
