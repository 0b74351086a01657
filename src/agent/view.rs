//! What this fleetd knows about the cluster: machines, this machine's unit states, the last plan.
//!
//! Machines come from the lease-bound `machines/<id>` keys in the registry mirror (an interim source until
//! gossip carries membership); unit states are this machine's own, as its agent last read them from
//! systemd. The HTTP API reads this through [`ClusterView`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use fleet_sched::placement::{self, Decision, Plan, Reason};
use fleet_sched::{MachineId, UnitHash, UnitName};
use fleet_systemd::UnitState;

use crate::api::cluster::{
    ClusterView, LocalCluster, MachineInfo, MetadataError, MetadataOp, UnitStateInfo,
};
use crate::registry::Registry;

/// This machine's units as its agent sees them: content hash on disk and systemd's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalReport {
    /// Per loaded unit: the hash of its file and systemd's state (None before the first read).
    pub units: BTreeMap<UnitName, (UnitHash, Option<UnitState>)>,
}

/// The cluster as this fleetd sees it.
pub struct AgentCluster {
    local: LocalCluster,
    registry: Registry,
    inner: RwLock<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    report: LocalReport,
    globals_here: BTreeSet<UnitName>,
    unplaceable: BTreeMap<UnitName, Reason>,
}

impl AgentCluster {
    /// The view of machine `local` over `registry`.
    pub fn new(local: LocalCluster, registry: Registry) -> AgentCluster {
        AgentCluster {
            local,
            registry,
            inner: RwLock::new(Inner::default()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// The local machine (configuration plus run-time metadata changes).
    pub fn local_machine(&self) -> MachineInfo {
        self.local.local()
    }

    /// The local machine's view (for SIGHUP reconfiguration).
    pub fn local_cluster(&self) -> &LocalCluster {
        &self.local
    }

    /// Notified when the local machine's metadata changes (the agent announces it again).
    pub fn subscribe_local_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Marks the local machine's metadata as changed.
    pub fn local_changed(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Live machines for placement, sorted by ID. The local machine is always included, with its
    /// current metadata.
    pub fn live_machines(&self) -> Vec<placement::MachineInfo> {
        let local = self.local.local();
        let mut out: BTreeMap<MachineId, placement::MachineInfo> = BTreeMap::new();
        if let Ok(snap) = self.registry.snapshot() {
            for (id, m) in snap.machines {
                out.insert(
                    id.clone(),
                    placement::MachineInfo {
                        id,
                        metadata: m.record.metadata,
                    },
                );
            }
        }
        out.insert(
            local.id.clone(),
            placement::MachineInfo {
                id: local.id,
                metadata: local.metadata,
            },
        );
        out.into_values().collect()
    }

    /// Stores this machine's unit states.
    pub fn set_local_report(&self, report: LocalReport) {
        self.write().report = report;
    }

    /// Stores what the last plan says about this machine and about unplaceable units.
    pub fn set_plan(&self, plan: &Plan) {
        let me = self.local.id().clone();
        let mut globals = BTreeSet::new();
        let mut unplaceable = BTreeMap::new();
        for (name, d) in &plan.decisions {
            match d {
                Decision::Global(ms) if ms.contains(&me) => {
                    globals.insert(name.clone());
                }
                Decision::Unplaceable(r) => {
                    unplaceable.insert(name.clone(), r.clone());
                }
                _ => {}
            }
        }
        let mut i = self.write();
        i.globals_here = globals;
        i.unplaceable = unplaceable;
    }

    /// Global units the last plan put on this machine.
    pub fn global_units_here(&self) -> BTreeSet<UnitName> {
        self.read().globals_here.clone()
    }

    /// Why `unit` could not be placed in the last plan, if it could not.
    pub fn unplaceable_reason(&self, unit: &UnitName) -> Option<String> {
        self.read().unplaceable.get(unit).map(|r| r.to_string())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClusterView for AgentCluster {
    fn machines(&self) -> Vec<MachineInfo> {
        let local = self.local.local();
        let mut out: BTreeMap<MachineId, MachineInfo> = BTreeMap::new();
        if let Ok(snap) = self.registry.snapshot() {
            for (id, m) in snap.machines {
                out.insert(
                    id.clone(),
                    MachineInfo {
                        id,
                        public_ip: m.record.public_ip,
                        metadata: m.record.metadata,
                    },
                );
            }
        }
        out.insert(local.id.clone(), local);
        out.into_values().collect()
    }

    fn unit_states(&self) -> Vec<UnitStateInfo> {
        let me = self.local.id().clone();
        self.read()
            .report
            .units
            .iter()
            .filter_map(|(name, (hash, state))| {
                let s = state.as_ref()?;
                Some(UnitStateInfo {
                    name: name.clone(),
                    hash: *hash,
                    machine_id: me.clone(),
                    load_state: s.load_state.to_string(),
                    active_state: s.active_state.to_string(),
                    sub_state: s.sub_state.clone(),
                })
            })
            .collect()
    }

    fn apply_metadata(&self, ops: &[MetadataOp]) -> Result<(), MetadataError> {
        self.local.apply_metadata(ops)?;
        self.local_changed();
        Ok(())
    }
}
