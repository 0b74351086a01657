//! The node's view of the cluster ([`Node::view`]) and the shared one fleetd's driver answers
//! ([`Node::shared_view`]): rebuilt only when [`Node::view_generation`] moved, and then only the
//! entries of the machines that changed, everything else shared with the previous view.

use std::time::Instant;

use foca::State;

use super::Node;
use crate::types::{Liveness, MachineId, MachineView, NodeIdentity, View};

impl Node {
    /// This node's view of the cluster, itself included. Built anew (a walk of the membership),
    /// but each machine's metadata and units are the store's shared copies: see
    /// [`Node::shared_view`] for the view a reader that asks often should take.
    pub fn view(&self) -> View {
        let me = self.identity();
        let mut machines: crate::types::Machines = self
            .roster
            .iter()
            .filter(|(id, _)| **id != me.machine_id)
            .map(|(id, k)| {
                let entry = self.machine_entry(k.identity.clone(), liveness_of(k.state), k.since);
                (id.clone(), entry)
            })
            .collect();
        machines.insert(
            me.machine_id.clone(),
            self.machine_entry(me.clone(), Liveness::Alive, self.started),
        );
        View {
            local: me.machine_id.clone(),
            machines,
            generation: self.view_generation(),
            members_generation: self.members_generation(),
        }
    }

    /// A machine's entry of the view: its identity, liveness and `since` as given, its metadata,
    /// units and version as the store's shared copies.
    fn machine_entry(
        &self,
        identity: NodeIdentity,
        liveness: Liveness,
        since: Instant,
    ) -> MachineView {
        let data = self.store.origin(&identity.machine_id);
        let shown = data.map(|d| d.shown());
        MachineView {
            identity,
            liveness,
            liveness_since: since,
            metadata: data.and_then(|d| d.metadata_shared().cloned()),
            units: shown.map(|s| s.units.clone()).unwrap_or_default(),
            version: shown.map(|s| s.newest).unwrap_or_default(),
        }
    }

    /// Machine `id`'s entry of the view now, if the view shows it.
    fn machine_view(&self, id: &MachineId) -> Option<MachineView> {
        let me = self.identity();
        if *id == me.machine_id {
            return Some(self.machine_entry(me.clone(), Liveness::Alive, self.started));
        }
        let k = self.roster.get(id)?;
        Some(self.machine_entry(k.identity.clone(), liveness_of(k.state), k.since))
    }

    /// This node's view of the cluster, as [`Node::view`] builds it, shared: the same one (a
    /// pointer copy) until [`Node::view_generation`] moves or this node's identity changes. What
    /// fleetd's gossip driver answers to every view request.
    ///
    /// When it moved, the new view is the previous one with the entries of the machines that
    /// changed since replaced (the roster and the store list them, up to `Changed::CAP` between
    /// two calls): a copy of the tree's paths to them, everything else shared. Past the cap, or
    /// when this node's identity changed, it is built anew ([`Node::view`]).
    pub fn shared_view(&mut self) -> std::sync::Arc<View> {
        let generation = self.view_generation();
        let roster = self.roster.take_changed();
        let store = self.store.take_changed();
        if let Some(v) = &self.view_cache {
            let me = self.foca.identity();
            let same_me = v
                .machines
                .get(&me.machine_id)
                .is_some_and(|m| m.identity == *me);
            if same_me && v.generation == generation {
                return v.clone();
            }
            if same_me && !roster.all && !store.all {
                let mut next = View::clone(v);
                for id in roster.ids.iter().chain(&store.ids) {
                    match self.machine_view(id) {
                        Some(m) => {
                            next.machines.insert(id.clone(), m);
                        }
                        None => {
                            next.machines.remove(id);
                        }
                    }
                }
                next.generation = generation;
                next.members_generation = self.members_generation();
                let next = std::sync::Arc::new(next);
                self.view_cache = Some(next.clone());
                return next;
            }
        }
        let v = std::sync::Arc::new(self.view());
        self.view_cache = Some(v.clone());
        v
    }

    /// A count that moves whenever what [`Node::view`] shows may have changed, but for this node's
    /// own identity: the membership's changes ([`Node::members_generation`]'s roster part) and
    /// every change of any machine's state the store holds (metadata, units, their versions),
    /// an origin added or forgotten.
    pub fn view_generation(&self) -> u64 {
        self.roster
            .generation()
            .wrapping_add(self.store.generation())
    }

    /// Test oracle: [`Node::view`] as it was built before views shared anything: every machine's
    /// metadata and units copied from the store's entries, its version found by a walk of them.
    /// A view from [`Node::shared_view`] must equal it after any input.
    #[cfg(feature = "testing")]
    pub fn view_from_scratch(&self) -> View {
        let me = self.identity().clone();
        let store = &self.store;
        let entry = |identity: NodeIdentity, liveness: Liveness, since: Instant| {
            let data = store.origin(&identity.machine_id);
            MachineView {
                identity,
                liveness,
                liveness_since: since,
                metadata: data.and_then(|d| d.metadata().cloned().map(std::sync::Arc::new)),
                units: std::sync::Arc::new(
                    data.map(|d| d.units().map(|(n, s)| (n.to_owned(), s.clone())).collect())
                        .unwrap_or_default(),
                ),
                version: data.map(|d| d.newest()).unwrap_or_default(),
            }
        };
        let mut machines: crate::types::Machines = self
            .roster
            .iter()
            .filter(|(id, _)| **id != me.machine_id)
            .map(|(id, k)| {
                let liveness = match k.state {
                    State::Alive => Liveness::Alive,
                    State::Suspect => Liveness::Suspect,
                    State::Down => Liveness::Down,
                };
                (id.clone(), entry(k.identity.clone(), liveness, k.since))
            })
            .collect();
        machines.insert(
            me.machine_id.clone(),
            entry(me.clone(), Liveness::Alive, self.started),
        );
        View {
            local: me.machine_id,
            machines,
            generation: self.view_generation(),
            members_generation: self.members_generation(),
        }
    }
}

/// How a view shows a member in foca's state `state`.
fn liveness_of(state: State) -> Liveness {
    match state {
        State::Alive => Liveness::Alive,
        State::Suspect => Liveness::Suspect,
        State::Down => Liveness::Down,
    }
}
