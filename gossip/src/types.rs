//! The nouns gossip talks about: machines, their identities, metadata and unit states.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use fleet_sched::systemd_state::{ActiveState, LoadState, SubState};
use serde::{Deserialize, Serialize};

/// A machine's ID: the workspace's one type, from `fleet_sched` (validated at construction, shared as
/// an `Arc<str>` so foca's frequent clones and comparisons do not allocate). A peer's message naming
/// an invalid ID fails to decode.
pub use fleet_sched::MachineId;

/// The identity a node has in the SWIM membership: its machine ID, the address it listens on, and an
/// incarnation.
///
/// The incarnation tells two lives of the same machine apart. A restarted fleetd starts with a larger
/// incarnation (the transport uses the start time in milliseconds since the Unix epoch), so the cluster
/// replaces the old identity at once instead of waiting for it to be declared down and forgotten. When
/// the cluster declares a running node down (a false positive, or a partition that healed), foca calls
/// [`foca::Identity::renew`], which bumps the incarnation, and the node rejoins by itself.
///
/// This incarnation is not foca's own `Incarnation` (the counter a member bumps to refute suspicion).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The machine this node runs on. Two identities with the same machine ID are two lives of one
    /// member: the one with the larger incarnation wins.
    pub machine_id: MachineId,
    /// Where the node's QUIC endpoint listens (datagrams and streams).
    pub addr: SocketAddr,
    /// The life of this machine's node; larger is newer.
    pub incarnation: u64,
}

impl foca::Identity for NodeIdentity {
    type Addr = MachineId;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            machine_id: self.machine_id.clone(),
            addr: self.addr,
            incarnation: self.incarnation.checked_add(1)?,
        })
    }

    fn addr(&self) -> MachineId {
        self.machine_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// What a machine tells the cluster about itself (fleet's `MachineState` minus the ID).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The public IP fleetctl shows (`--public-ip`); may be empty.
    pub public_ip: String,
    /// The `k=v` metadata (`--metadata`), used by `MachineMetadata=` requirements.
    pub metadata: BTreeMap<String, String>,
    /// The fleetd version running on the machine.
    pub version: String,
    /// How many units the machine runs (its load, for placement).
    pub unit_count: u32,
}

/// The runtime state a machine reports for one of its units (what `fleetctl list-units` shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// systemd's `LoadState` (`loaded`, `not-found`, ...).
    pub load_state: LoadState,
    /// systemd's `ActiveState` (`active`, `inactive`, `failed`, ...).
    pub active_state: ActiveState,
    /// systemd's `SubState` (`running`, `dead`, ...).
    pub sub_state: SubState,
    /// The SHA-1 of the unit file the machine runs (the bytes of `fleet_sched::UnitHash`).
    pub unit_hash: [u8; 20],
}

/// The version of one piece of a machine's state. Ordered: the larger stamp always wins.
///
/// `epoch` is the life of the origin's data (the incarnation it started with), `version` counts the
/// origin's changes within that life. A restarted machine starts a larger epoch, so its fresh state
/// wins over whatever the cluster still remembers from its previous life.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stamp {
    /// The origin's life (its incarnation when it started).
    pub epoch: u64,
    /// The origin's change counter within that life.
    pub version: u64,
}

/// How this node sees a member's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Liveness {
    /// Answers probes.
    Alive,
    /// Failed a probe; declared down unless it refutes in time. Treat as alive.
    Suspect,
    /// Declared down (failed, or left). Its last known state is kept until it is forgotten.
    Down,
}

/// One machine as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineView {
    /// The member's current identity (machine ID, address, incarnation).
    pub identity: NodeIdentity,
    /// Alive, suspect or down. A quorum should count only `Alive`: a suspect may be dead already.
    pub liveness: Liveness,
    /// When this node saw `liveness` (or the identity) last change, on this node's clock (its own
    /// entry: when the node started).
    pub liveness_since: std::time::Instant,
    /// The metadata the machine published, if it has reached us yet.
    pub metadata: Option<Metadata>,
    /// The runtime state of each unit the machine reports, by unit name.
    pub units: BTreeMap<String, UnitState>,
    /// The newest version of the machine's state that this node has (metadata or units).
    pub version: Stamp,
}

/// A node's view of the cluster, itself included (with [`Liveness::Alive`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// This node's machine ID.
    pub local: MachineId,
    /// Every machine the membership knows (alive, suspect, or down and not yet forgotten).
    pub machines: BTreeMap<MachineId, MachineView>,
}

impl View {
    /// The machines that are alive or suspect (suspects count as alive until declared down).
    pub fn live(&self) -> impl Iterator<Item = &MachineView> {
        self.machines
            .values()
            .filter(|m| m.liveness != Liveness::Down)
    }
}
