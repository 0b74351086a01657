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
///
/// Build one with [`NodeIdentity::new`]: it also holds the machine ID's [`MachineKey`] (never
/// sent: the wire carries the three public fields only), computed once, which foca compares instead
/// of the IDs. Do not assign `machine_id` afterwards (build a new identity).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// Derived from `machine_id` (first, so that two different identities usually compare unequal
    /// on it alone).
    key: MachineKey,
    /// The machine this node runs on. Two identities with the same machine ID are two lives of one
    /// member: the one with the larger incarnation wins.
    pub machine_id: MachineId,
    /// Where the node's QUIC endpoint listens (datagrams and streams).
    pub addr: SocketAddr,
    /// The life of this machine's node; larger is newer.
    pub incarnation: u64,
}

impl NodeIdentity {
    /// The identity of life `incarnation` of machine `machine_id`, listening at `addr`.
    pub fn new(machine_id: MachineId, addr: SocketAddr, incarnation: u64) -> Self {
        NodeIdentity {
            key: MachineKey::of(&machine_id),
            machine_id,
            addr,
            incarnation,
        }
    }

    /// The key foca compares for this identity's machine ([`foca::Identity::addr`]).
    pub fn key(&self) -> MachineKey {
        self.key
    }
}

/// What foca compares to tell whether two identities are lives of one machine
/// ([`foca::Identity::addr`]): a 64-bit keyed hash of the machine ID (SipHash, as the standard
/// library's `HashMap` uses, under a key drawn at random once per process).
///
/// foca finds a member by walking its whole list and comparing each member's `addr()` with the one
/// sought, for every membership update and every datagram's sender. Returning the [`MachineId`]
/// itself cost two reference-count updates and a string comparison per step of that walk; this key
/// is copied and compared as one integer. Two different machine IDs get the same key with
/// probability 2⁻⁶⁴ per pair (about 3·10⁻¹² for some pair among 10,000 machines), and since the
/// hash key is secret to the process and drawn anew by each one, a peer cannot choose a machine
/// ID that collides with another machine's. The key is never sent, and nothing is ordered by it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MachineKey(u64);

impl MachineKey {
    /// The key of `id` in this process.
    pub fn of(id: &MachineId) -> Self {
        use std::hash::BuildHasher;
        static HASHER: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        MachineKey(HASHER.get_or_init(Default::default).hash_one(id.as_str()))
    }
}

impl std::fmt::Debug for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Different in every process: left out of what is printed.
        f.write_str("MachineKey(..)")
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // As derived, without the key (different in every process).
        f.debug_struct("NodeIdentity")
            .field("machine_id", &self.machine_id)
            .field("addr", &self.addr)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

/// What the wire carries of a [`NodeIdentity`] (as a struct of that name: the encoding is the one
/// the derived impls gave, byte for byte).
#[derive(Serialize)]
#[serde(rename = "NodeIdentity")]
struct WireIdentityRef<'a> {
    machine_id: &'a MachineId,
    addr: &'a SocketAddr,
    incarnation: &'a u64,
}

#[derive(Deserialize)]
#[serde(rename = "NodeIdentity")]
struct WireIdentity {
    machine_id: MachineId,
    addr: SocketAddr,
    incarnation: u64,
}

impl Serialize for NodeIdentity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireIdentityRef {
            machine_id: &self.machine_id,
            addr: &self.addr,
            incarnation: &self.incarnation,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeIdentity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireIdentity::deserialize(d)?;
        Ok(NodeIdentity::new(w.machine_id, w.addr, w.incarnation))
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = MachineKey;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            key: self.key,
            machine_id: self.machine_id.clone(),
            addr: self.addr,
            incarnation: self.incarnation.checked_add(1)?,
        })
    }

    fn addr(&self) -> MachineKey {
        self.key
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

impl Metadata {
    /// The key, in [`Metadata::metadata`], of the machine's word that it cannot take units now (its
    /// lease does not vouch for it: `fleet_decide::takes_units`; value `"1"`). The placement plans of
    /// the others leave such a machine out (`fleet_decide::in_plan`).
    ///
    /// It rides in the `k=v` map, not in a field of its own, so that the wire stays the same: state
    /// is postcard-encoded, which has no optional fields, and a new field would make an older fleetd
    /// fail to decode every update and sync that carries metadata. An older fleetd reads it as one
    /// more `k=v` pair (and ignores it: its plan still counts the machine, as before). No operator
    /// can set it: `:` is not allowed in a metadata key (`[A-Za-z0-9_.-]+`, checked by fleetd's
    /// configuration and by the relay of `PATCH /fleet/v1/machines`). [`Metadata::user`] leaves it
    /// out (the API, `MachineMetadata=` requirements).
    pub const CANNOT_TAKE_UNITS: &'static str = "fleet:cannot-take-units";

    /// Whether the machine said it cannot take units now ([`Metadata::CANNOT_TAKE_UNITS`]).
    pub fn cannot_take_units(&self) -> bool {
        self.metadata.contains_key(Self::CANNOT_TAKE_UNITS)
    }

    /// Sets or clears [`Metadata::CANNOT_TAKE_UNITS`].
    pub fn set_cannot_take_units(&mut self, cannot: bool) {
        if cannot {
            self.metadata
                .insert(Self::CANNOT_TAKE_UNITS.to_string(), "1".to_string());
        } else {
            self.metadata.remove(Self::CANNOT_TAKE_UNITS);
        }
    }

    /// The operator's `k=v` metadata: [`Metadata::metadata`] without fleet's own keys.
    pub fn user(&self) -> BTreeMap<String, String> {
        let mut m = self.metadata.clone();
        m.remove(Self::CANNOT_TAKE_UNITS);
        m
    }
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
    /// The metadata the machine published, if it has reached us yet. Shared with the node's
    /// store and every other view until the machine publishes another.
    pub metadata: Option<std::sync::Arc<Metadata>>,
    /// The runtime state of each unit the machine reports, by unit name. Shared with every other
    /// view taken while this machine's state is unchanged (an unchanged machine costs a view a
    /// pointer copy).
    pub units: std::sync::Arc<BTreeMap<String, UnitState>>,
    /// The newest version of the machine's state that this node has (metadata or units).
    pub version: Stamp,
}

/// A view's machines by ID: a persistent ordered map (`imbl::OrdMap`), so that a view that differs
/// from the previous one in a few machines shares everything else with it (a clone is a pointer
/// copy, an insertion copies one path of the tree).
pub type Machines = imbl::OrdMap<MachineId, MachineView>;

/// A node's view of the cluster, itself included (with [`Liveness::Alive`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// This node's machine ID.
    pub local: MachineId,
    /// Every machine the membership knows (alive, suspect, or down and not yet forgotten).
    pub machines: Machines,
    /// The node's `view_generation` when the view was taken: two views of one node with the same
    /// generation are the same.
    pub generation: u64,
    /// The node's `members_generation` when the view was taken: two views of one node with the
    /// same one show the same members with the same liveness, identities, `liveness_since` and
    /// metadata (their units and versions may differ).
    pub members_generation: u64,
}

/// The machines whose entry of a view may have changed since the last [`Changed::take`]: listed,
/// up to [`Changed::CAP`] marks, then "all" (a reader rebuilds the whole view; nothing is listed
/// any more until then, so a node whose view nobody reads keeps no list).
#[derive(Debug, Default)]
pub(crate) struct Changed {
    pub(crate) ids: Vec<MachineId>,
    pub(crate) all: bool,
}

impl Changed {
    /// Beyond this many marks between two reads, a whole rebuild costs about the same.
    pub(crate) const CAP: usize = 1024;

    pub(crate) fn mark(&mut self, id: &MachineId) {
        if self.all {
            return;
        }
        if self.ids.len() >= Self::CAP {
            self.mark_all();
        } else {
            self.ids.push(id.clone());
        }
    }

    pub(crate) fn mark_all(&mut self) {
        self.all = true;
        self.ids = Vec::new();
    }

    pub(crate) fn take(&mut self) -> Changed {
        std::mem::take(self)
    }
}

impl View {
    /// The machines that are alive or suspect (suspects count as alive until declared down).
    pub fn live(&self) -> impl Iterator<Item = &MachineView> {
        self.machines
            .values()
            .filter(|m| m.liveness != Liveness::Down)
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(machine: &str, port: u16, incarnation: u64) -> NodeIdentity {
        NodeIdentity::new(
            MachineId::parse(machine).unwrap(),
            SocketAddr::from(([10, 0, 0, 1], port)),
            incarnation,
        )
    }

    /// A machine's word that it cannot take units travels in the `k=v` map: a fleetd that knows no
    /// such flag (its `Metadata` as of git ab4af1d, declared here as it was) decodes the same bytes,
    /// flag and all, and the operator's metadata leaves it out.
    #[test]
    fn the_cannot_take_units_flag_decodes_in_an_older_fleetd() {
        #[derive(Debug, Deserialize)]
        struct OlderMetadata {
            public_ip: String,
            metadata: BTreeMap<String, String>,
            version: String,
            unit_count: u32,
        }
        let mut m = Metadata {
            public_ip: "10.0.0.2".into(),
            metadata: BTreeMap::from([("role".to_string(), "web".to_string())]),
            version: "0.1.0".into(),
            unit_count: 3,
        };
        assert!(!m.cannot_take_units());
        m.set_cannot_take_units(true);
        assert!(m.cannot_take_units());
        let bytes = postcard::to_stdvec(&(m.clone(), 7u8)).unwrap();
        let (old, next): (OlderMetadata, u8) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(next, 7, "what follows the metadata is read where it was");
        assert_eq!(
            (old.public_ip.as_str(), old.version.as_str(), old.unit_count),
            ("10.0.0.2", "0.1.0", 3)
        );
        assert_eq!(old.metadata.get(Metadata::CANNOT_TAKE_UNITS).unwrap(), "1");
        assert_eq!(m.user(), BTreeMap::from([("role".into(), "web".into())]));
        m.set_cannot_take_units(false);
        assert!(!m.cannot_take_units());
        assert_eq!(m.metadata, m.user());
    }

    /// The encoding is the three public fields' (what the derived impls sent before the key), and
    /// decoding computes the key: foca tells machines apart by it, so a decoded identity must have
    /// the key of its machine ID, never a default one shared by all.
    #[test]
    fn identity_wire_is_its_three_fields_and_decoding_derives_the_key() {
        #[derive(Serialize)]
        struct Plain {
            machine_id: MachineId,
            addr: SocketAddr,
            incarnation: u64,
        }
        let a = id("a1", 4000, 7);
        let plain = Plain {
            machine_id: a.machine_id.clone(),
            addr: a.addr,
            incarnation: a.incarnation,
        };
        let bytes = postcard::to_allocvec(&a).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&plain).unwrap());
        let b = id("b2", 4000, 7);
        let decoded: Vec<NodeIdentity> =
            postcard::from_bytes(&postcard::to_allocvec(&vec![a.clone(), b.clone()]).unwrap())
                .unwrap();
        assert_eq!(decoded, vec![a.clone(), b.clone()]);
        assert_eq!(decoded[0].addr(), a.addr());
        assert_ne!(decoded[0].addr(), decoded[1].addr());
    }

    /// Lives of one machine share the key (foca's rename), other machines do not; the key is left
    /// out of what is printed.
    #[test]
    fn the_key_follows_the_machine_id_only() {
        let a = id("a1", 4000, 7);
        assert_eq!(a.addr(), id("a1", 5000, 9).addr());
        assert_eq!(a.addr(), a.renew().unwrap().addr());
        for other in ["a2", "b1", "a", "a10", "A1"] {
            assert_ne!(a.addr(), id(other, 4000, 7).addr(), "{other}");
        }
        assert_eq!(
            format!("{a:?}"),
            "NodeIdentity { machine_id: MachineId(\"a1\"), addr: 10.0.0.1:4000, incarnation: 7 }"
        );
    }
}
