//! What the API knows about machines and the runtime state of units.
//!
//! In the design both come from gossip. Until the gossip layer exists, [`LocalCluster`] answers
//! with this fleetd's own machine (from its configuration) and no unit states; metadata changed
//! with `PATCH /fleet/v1/machines` is kept in memory for the local machine only (lost on restart).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::RwLock;

use fleet_sched::systemd_state::{ActiveState, LoadState, SubState};
use fleet_sched::{MachineId, UnitHash, UnitName};

/// A machine as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    /// Its ID.
    pub id: MachineId,
    /// Its public (primary) IP, if known.
    pub public_ip: Option<IpAddr>,
    /// Its metadata (configuration merged with run-time changes).
    pub metadata: BTreeMap<String, String>,
}

/// What a machine reports about one unit (systemd's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStateInfo {
    /// The unit.
    pub name: UnitName,
    /// Hash of the content the machine runs.
    pub hash: UnitHash,
    /// The reporting machine.
    pub machine_id: MachineId,
    /// systemd LoadState (`loaded`, `not-found`, ...).
    pub load_state: LoadState,
    /// systemd ActiveState (`active`, `inactive`, `failed`, ...).
    pub active_state: ActiveState,
    /// systemd SubState (`running`, `dead`, ...).
    pub sub_state: SubState,
}

/// One validated metadata change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataOp {
    /// Set `key` to `value` on `machine` (`add` and `replace`).
    Set {
        /// The machine.
        machine: MachineId,
        /// The key (`[A-Za-z0-9_.-]+`).
        key: String,
        /// The value (non-empty).
        value: String,
    },
    /// Remove `key` from `machine`.
    Remove {
        /// The machine.
        machine: MachineId,
        /// The key.
        key: String,
    },
}

impl MetadataOp {
    fn machine(&self) -> &MachineId {
        match self {
            MetadataOp::Set { machine, .. } | MetadataOp::Remove { machine, .. } => machine,
        }
    }
}

/// Why metadata ops were refused (none was applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// An op names a machine this fleetd cannot change.
    #[error("machine {0} does not exist")]
    UnknownMachine(MachineId),
}

/// The API's source of machines and unit states (gossip, eventually).
pub trait ClusterView: Send + Sync + 'static {
    /// Live machines, sorted by ID.
    fn machines(&self) -> Vec<MachineInfo>;
    /// Unit states reported by machines, sorted by unit name then machine.
    fn unit_states(&self) -> Vec<UnitStateInfo>;
    /// Applies every op or none.
    fn apply_metadata(&self, ops: &[MetadataOp]) -> Result<(), MetadataError>;
    /// `Some(message)` while this fleetd must not serve: another live agent holds its machine ID.
    fn identity_conflict(&self) -> Option<String> {
        None
    }
}

/// This fleetd's own machine only, with run-time metadata kept in memory.
#[derive(Debug)]
pub struct LocalCluster {
    id: MachineId,
    inner: RwLock<LocalInner>,
}

#[derive(Debug)]
struct LocalInner {
    public_ip: Option<IpAddr>,
    configured: BTreeMap<String, String>,
    /// Run-time changes: `Some(v)` set, `None` removed (hides a configured key too).
    changes: BTreeMap<String, Option<String>>,
}

impl LocalCluster {
    /// The local machine `id` with its configured IP and metadata.
    pub fn new(
        id: MachineId,
        public_ip: Option<IpAddr>,
        metadata: BTreeMap<String, String>,
    ) -> LocalCluster {
        LocalCluster {
            id,
            inner: RwLock::new(LocalInner {
                public_ip,
                configured: metadata,
                changes: BTreeMap::new(),
            }),
        }
    }

    /// Takes a reloaded configuration (SIGHUP); run-time metadata changes stay on top of it.
    pub fn reconfigure(&self, public_ip: Option<IpAddr>, metadata: BTreeMap<String, String>) {
        let mut i = self.inner.write().unwrap_or_else(|e| e.into_inner());
        i.public_ip = public_ip;
        i.configured = metadata;
    }

    /// The run-time metadata changes (`Some(v)` set, `None` removed), to persist them.
    pub fn metadata_changes(&self) -> BTreeMap<String, Option<String>> {
        let i = self.inner.read().unwrap_or_else(|e| e.into_inner());
        i.changes.clone()
    }

    /// Restores run-time metadata changes saved by an earlier fleetd (see [`Self::metadata_changes`]).
    pub fn restore_metadata_changes(&self, changes: BTreeMap<String, Option<String>>) {
        let mut i = self.inner.write().unwrap_or_else(|e| e.into_inner());
        i.changes = changes;
    }

    /// The local machine's ID.
    pub fn id(&self) -> &MachineId {
        &self.id
    }

    /// The local machine as shown by the API.
    pub fn local(&self) -> MachineInfo {
        let i = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut metadata = i.configured.clone();
        for (k, v) in &i.changes {
            match v {
                Some(v) => {
                    metadata.insert(k.clone(), v.clone());
                }
                None => {
                    metadata.remove(k);
                }
            }
        }
        MachineInfo {
            id: self.id.clone(),
            public_ip: i.public_ip,
            metadata,
        }
    }
}

impl ClusterView for LocalCluster {
    fn machines(&self) -> Vec<MachineInfo> {
        vec![self.local()]
    }

    fn unit_states(&self) -> Vec<UnitStateInfo> {
        Vec::new()
    }

    fn apply_metadata(&self, ops: &[MetadataOp]) -> Result<(), MetadataError> {
        if let Some(op) = ops.iter().find(|op| *op.machine() != self.id) {
            return Err(MetadataError::UnknownMachine(op.machine().clone()));
        }
        let mut i = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            match op {
                MetadataOp::Set { key, value, .. } => {
                    i.changes.insert(key.clone(), Some(value.clone()));
                }
                MetadataOp::Remove { key, .. } => {
                    i.changes.insert(key.clone(), None);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_metadata_overlays_configuration_and_survives_reload() {
        let id = MachineId::parse("m1").unwrap();
        let c = LocalCluster::new(
            id,
            None,
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
        );
        c.apply_metadata(&[
            MetadataOp::Set {
                machine: MachineId::parse("m1").unwrap(),
                key: "a".into(),
                value: "9".into(),
            },
            MetadataOp::Remove {
                machine: MachineId::parse("m1").unwrap(),
                key: "b".into(),
            },
        ])
        .unwrap();
        assert_eq!(
            c.local().metadata,
            BTreeMap::from([("a".into(), "9".into())])
        );
        c.reconfigure(None, BTreeMap::from([("c".into(), "3".into())]));
        assert_eq!(
            c.local().metadata,
            BTreeMap::from([("a".into(), "9".into()), ("c".into(), "3".into())])
        );
    }

    #[test]
    fn an_op_on_another_machine_applies_nothing() {
        let c = LocalCluster::new(MachineId::parse("m1").unwrap(), None, BTreeMap::new());
        let r = c.apply_metadata(&[
            MetadataOp::Set {
                machine: MachineId::parse("m1").unwrap(),
                key: "a".into(),
                value: "1".into(),
            },
            MetadataOp::Set {
                machine: MachineId::parse("m2").unwrap(),
                key: "a".into(),
                value: "1".into(),
            },
        ]);
        assert_eq!(
            r,
            Err(MetadataError::UnknownMachine(
                MachineId::parse("m2").unwrap()
            ))
        );
        assert!(c.local().metadata.is_empty());
    }
}
