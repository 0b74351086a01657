//! A deterministic virtual network for [`Node`]s: a virtual clock, datagram latency and loss, crashes,
//! in-process sync exchanges, and certificates (each node's inputs carry the machine ID of the
//! sender's certificate, as the QUIC transport's do; [`VirtualNet::add_impostor`] adds a node whose
//! certificate is another machine's). Used by the tests and by `examples/detection.rs`; the cluster
//! simulator has its own, richer network.
//!
//! ```
//! use std::time::Duration;
//! use fleet_gossip::testing::VirtualNet;
//! use fleet_gossip::core::Config;
//!
//! let mut net = VirtualNet::new(42, Config::default());
//! let a = net.add_node(&[]);
//! let b = net.add_node(&[a]);
//! net.run_for(Duration::from_secs(2));
//! assert!(net.sees_alive(a, b) && net.sees_alive(b, a));
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::core::{Config, Event, FullState, Node, SyncAnswer, SyncOffer};
use crate::types::{Liveness, MachineId, NodeIdentity, View};

/// Index of a node in the [`VirtualNet`].
pub type NodeIndex = usize;

struct Slot {
    node: Option<Node>,
    addr: SocketAddr,
    /// The machine ID the node claims.
    id: MachineId,
    /// The machine ID of its certificate.
    cert: MachineId,
    events: Vec<(Duration, Event)>,
}

/// Nodes exchanging datagrams and syncs over a virtual network, with a virtual clock.
pub struct VirtualNet {
    rng: StdRng,
    config: Config,
    base: Instant,
    now: Instant,
    slots: Vec<Slot>,
    by_addr: BTreeMap<SocketAddr, NodeIndex>,
    // Each node's next timer, indexed: finding the next event is O(log n), not a walk of all nodes.
    next_at: Vec<Option<Instant>>,
    due: std::collections::BTreeSet<(Instant, NodeIndex)>,
    // Whether nodes sign their state (`ToyCredentials`).
    signed: bool,
    // Nodes handed out by `node()`: their timers may have changed.
    dirty: std::collections::BTreeSet<NodeIndex>,
    // Frozen nodes: no timer runs, datagrams wait for the thaw.
    frozen: std::collections::BTreeMap<NodeIndex, Vec<(SocketAddr, Bytes)>>,
    // Extra one-way latency of datagrams from or to a node (a starved process answers late).
    slow: BTreeMap<NodeIndex, Duration>,
    // (delivery time, sequence) -> (to, from, data)
    in_flight: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Bytes)>,
    seq: u64,
    /// One-way datagram latency.
    pub latency: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Datagrams lost so far (random loss and partitions).
    pub lost: u64,
    // Nodes cut off from the rest: traffic crosses only between nodes on the same side.
    cut: std::collections::BTreeSet<NodeIndex>,
    /// Bytes moved by sync exchanges so far.
    pub sync_bytes: u64,
    // Nodes whose state pushes are lost (their state travels by sync only).
    mute_pushes: std::collections::BTreeSet<NodeIndex>,
    // Whether datagrams across the cut wait for the repair instead of being lost.
    hold_across_cut: bool,
    // Datagrams held at the cut: (to, from, data), in the order they were sent.
    held: Vec<(SocketAddr, SocketAddr, Bytes)>,
}

impl VirtualNet {
    /// An empty network; every random choice derives from `seed`.
    pub fn new(seed: u64, config: Config) -> Self {
        let base = Instant::now();
        VirtualNet {
            rng: StdRng::seed_from_u64(seed),
            config,
            base,
            now: base,
            slots: Vec::new(),
            by_addr: BTreeMap::new(),
            next_at: Vec::new(),
            due: Default::default(),
            dirty: Default::default(),
            frozen: Default::default(),
            slow: Default::default(),
            in_flight: BTreeMap::new(),
            seq: 0,
            latency: Duration::from_micros(500),
            loss: 0.0,
            lost: 0,
            cut: Default::default(),
            sync_bytes: 0,
            signed: true,
            mute_pushes: Default::default(),
            hold_across_cut: false,
            held: Vec::new(),
        }
    }

    /// Nodes started from now on sign nothing and check nothing ([`crate::crypto::Unsigned`],
    /// the insecure development mode); by default each node signs its state with the
    /// [`ToyCredentials`] of its certificate's machine.
    pub fn unsigned(&mut self) {
        self.signed = false;
    }

    /// Virtual time since the network was created.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Adds a node that joins through the given nodes' addresses; returns its index.
    pub fn add_node(&mut self, seeds: &[NodeIndex]) -> NodeIndex {
        let index = self.slots.len();
        self.add_slot(Self::machine_id(index), Self::machine_id(index), 1, seeds)
    }

    /// Adds a node with machine ID `id` (a benchmark uses fleetd's 32-hex-digit IDs, whose size
    /// counts in every packet) that joins through `seeds`. Returns its index.
    pub fn add_node_with_id(&mut self, id: MachineId, seeds: &[NodeIndex]) -> NodeIndex {
        self.add_slot(id.clone(), id, 1, seeds)
    }

    /// Adds a node that claims to be machine `claims` (with incarnation `incarnation`) while its
    /// certificate is machine `cert_of`'s, as a second fleetd started with a stolen certificate
    /// and another machine's ID would; it joins through `seeds`. Returns its index.
    pub fn add_impostor(
        &mut self,
        claims: NodeIndex,
        cert_of: NodeIndex,
        incarnation: u64,
        seeds: &[NodeIndex],
    ) -> NodeIndex {
        let id = self.slots[claims].id.clone();
        let cert = self.slots[cert_of].cert.clone();
        self.add_slot(id, cert, incarnation, seeds)
    }

    fn add_slot(
        &mut self,
        id: MachineId,
        cert: MachineId,
        incarnation: u64,
        seeds: &[NodeIndex],
    ) -> NodeIndex {
        let index = self.slots.len();
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                10,
                0,
                (index / 250) as u8,
                (index % 250) as u8 + 1,
            )),
            4000,
        );
        self.by_addr.insert(addr, index);
        self.next_at.push(None);
        self.slots.push(Slot {
            node: None,
            addr,
            id,
            cert,
            events: Vec::new(),
        });
        self.start(index, incarnation, seeds);
        index
    }

    /// (Re)starts node `index` with this incarnation, joining through `seeds`.
    pub fn start(&mut self, index: NodeIndex, incarnation: u64, seeds: &[NodeIndex]) {
        let identity = NodeIdentity::new(
            self.slots[index].id.clone(),
            self.slots[index].addr,
            incarnation,
        );
        let rng = StdRng::from_rng(&mut self.rng);
        let mut node = Node::new(self.config.clone(), identity, rng, self.now);
        if self.signed {
            let credentials = ToyCredentials::new(self.slots[index].cert.clone());
            node.set_credentials(self.now, std::sync::Arc::new(credentials));
        }
        let seed_addrs: Vec<SocketAddr> = seeds.iter().map(|s| self.slots[*s].addr).collect();
        node.join(self.now, &seed_addrs);
        self.slots[index].node = Some(node);
        self.flush(index);
    }

    /// The machine ID node `index` uses.
    pub fn machine_id(index: NodeIndex) -> MachineId {
        MachineId::parse(&format!("m{index:04}")).expect("m and digits is a valid machine ID")
    }

    /// Crashes node `index`: it stops without a word.
    pub fn kill(&mut self, index: NodeIndex) {
        self.slots[index].node = None;
        self.refresh(index);
    }

    /// Freezes node `index` (a SIGSTOP, a cgroup freezer): its timers stop and datagrams to it
    /// wait, in order, until [`VirtualNet::thaw`].
    pub fn freeze(&mut self, index: NodeIndex) {
        self.frozen.entry(index).or_default();
        self.refresh(index);
    }

    /// Thaws node `index`: it handles what arrived meanwhile, then every overdue timer at once.
    pub fn thaw(&mut self, index: NodeIndex) {
        let Some(backlog) = self.frozen.remove(&index) else {
            return;
        };
        let now = self.now;
        for (from, data) in backlog {
            let cert = self.index_of(from).map(|f| self.slots[f].cert.clone());
            if let Some(node) = self.slots[index].node.as_mut() {
                let _ = node.handle_datagram_from(now, from, cert.as_ref(), &data);
            }
        }
        if let Some(node) = self.slots[index].node.as_mut() {
            node.handle_timeout(now);
        }
        self.flush(index);
    }

    /// Every datagram from or to node `index` takes `extra` longer (`Duration::ZERO` ends it).
    pub fn slow_down(&mut self, index: NodeIndex, extra: Duration) {
        if extra.is_zero() {
            self.slow.remove(&index);
        } else {
            self.slow.insert(index, extra);
        }
    }

    /// Loses (`true`) or delivers again (`false`) the state pushes node `index` sends: its state,
    /// and its vouches for its incarnation, then reach others by anti-entropy only, well after
    /// its membership updates.
    pub fn mute_pushes(&mut self, index: NodeIndex, mute: bool) {
        if mute {
            self.mute_pushes.insert(index);
        } else {
            self.mute_pushes.remove(&index);
        }
    }

    /// Re-reads node `index`'s next timer into the index.
    fn refresh(&mut self, index: NodeIndex) {
        if let Some(at) = self.next_at[index].take() {
            self.due.remove(&(at, index));
        }
        if self.frozen.contains_key(&index) {
            return;
        }
        let next = self.slots[index]
            .node
            .as_ref()
            .and_then(|n| n.poll_timeout());
        if let Some(at) = next {
            self.due.insert((at, index));
        }
        self.next_at[index] = next;
    }

    /// Partitions the network: `side` on one side, everyone else on the other. Datagrams and syncs
    /// across are lost until [`VirtualNet::repair`].
    pub fn partition(&mut self, side: &[NodeIndex]) {
        self.cut = side.iter().copied().collect();
    }

    /// Partitions the network like [`VirtualNet::partition`], except that datagrams across the
    /// cut are not lost: they wait, in order, and all arrive just after [`VirtualNet::repair`], as
    /// a QUIC connection's queued datagrams do once its path works again. Syncs across are lost.
    pub fn partition_holding(&mut self, side: &[NodeIndex]) {
        self.partition(side);
        self.hold_across_cut = true;
    }

    /// Ends the partition (and delivers the datagrams it held, see
    /// [`VirtualNet::partition_holding`]).
    pub fn repair(&mut self) {
        self.cut.clear();
        self.hold_across_cut = false;
        let at = self.now + self.latency;
        for (to, from, data) in std::mem::take(&mut self.held) {
            self.seq += 1;
            self.in_flight.insert((at, self.seq), (to, from, data));
        }
    }

    fn linked(&self, a: NodeIndex, b: NodeIndex) -> bool {
        self.cut.contains(&a) == self.cut.contains(&b)
    }

    /// Node `index`, unless crashed.
    pub fn node(&mut self, index: NodeIndex) -> Option<&mut Node> {
        self.dirty.insert(index);
        self.slots[index].node.as_mut()
    }

    /// Node `index`, unless crashed, to read only.
    pub fn node_ref(&self, index: NodeIndex) -> Option<&Node> {
        self.slots[index].node.as_ref()
    }

    /// The address of node `index`.
    pub fn addr(&self, index: NodeIndex) -> SocketAddr {
        self.slots[index].addr
    }

    /// Events node `index` reported, with their virtual time.
    pub fn events(&self, index: NodeIndex) -> &[(Duration, Event)] {
        &self.slots[index].events
    }

    /// How `observer` sees `target`, if it knows it.
    pub fn liveness(&self, observer: NodeIndex, target: NodeIndex) -> Option<Liveness> {
        let node = self.slots[observer].node.as_ref()?;
        node.view()
            .machines
            .get(&self.slots[target].id)
            .map(|m| m.liveness)
    }

    /// Node `index`'s view, unless crashed.
    pub fn view(&self, index: NodeIndex) -> Option<View> {
        self.slots[index].node.as_ref().map(|n| n.view())
    }

    /// True if `observer` is running and holds a state (not a tombstone) of unit `unit` of
    /// machine `origin`.
    pub fn holds_unit(&self, observer: NodeIndex, origin: &MachineId, unit: &str) -> bool {
        self.slots[observer].node.as_ref().is_some_and(|n| {
            n.store
                .origin(origin)
                .is_some_and(|o| o.units().any(|(name, _)| name == unit))
        })
    }

    /// True if `observer` is running and sees `target` alive (or suspect).
    pub fn sees_alive(&self, observer: NodeIndex, target: NodeIndex) -> bool {
        matches!(
            self.liveness(observer, target),
            Some(Liveness::Alive | Liveness::Suspect)
        )
    }

    /// Indices of the running nodes.
    pub fn running(&self) -> Vec<NodeIndex> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].node.is_some())
            .collect()
    }

    /// Calls `f` on node `index` at the current virtual time, then sends what it produced.
    pub fn with_node(&mut self, index: NodeIndex, f: impl FnOnce(&mut Node, Instant)) {
        let now = self.now;
        if let Some(node) = self.slots[index].node.as_mut() {
            f(node, now);
        }
        self.flush(index);
    }

    /// Runs until virtual time has advanced by `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until_time(end);
    }

    /// `n` nodes, each joined through the first, run until every node sees every other alive (at most
    /// 10 s of virtual time); `None` if they did not all see each other by then.
    pub fn formed(seed: u64, n: usize, config: Config) -> Option<Self> {
        let mut net = VirtualNet::new(seed, config);
        let first = net.add_node(&[]);
        for _ in 1..n {
            net.add_node(&[first]);
        }
        let all: Vec<NodeIndex> = (0..n).collect();
        let joined = net.run_until(Duration::from_secs(10), |net| {
            all.iter()
                .all(|a| all.iter().all(|b| a == b || net.sees_alive(*a, *b)))
        });
        joined.then_some(net)
    }

    /// Runs until `done(net)` holds (checked after each step) or `limit` passes; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            match self.next_instant() {
                Some(t) if t <= end => self.step_to(t),
                _ => {
                    self.now = end;
                    return done(self);
                }
            }
        }
    }

    fn run_until_time(&mut self, end: Instant) {
        while let Some(t) = self.next_instant() {
            if t > end {
                break;
            }
            self.step_to(t);
        }
        self.now = end;
    }

    fn next_instant(&mut self) -> Option<Instant> {
        for i in std::mem::take(&mut self.dirty) {
            self.refresh(i);
        }
        let timers = self.due.first().map(|(at, _)| *at);
        let deliveries = self.in_flight.keys().next().map(|(t, _)| *t);
        timers.into_iter().chain(deliveries).min()
    }

    fn step_to(&mut self, t: Instant) {
        self.now = self.now.max(t);
        let now = self.now;
        // Deliver every datagram due.
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (to, from, data) = entry.remove();
            let linked = match (self.index_of(to), self.index_of(from)) {
                (Some(t), Some(f)) => self.linked(t, f),
                _ => true,
            };
            if !linked {
                if self.hold_across_cut {
                    self.held.push((to, from, data));
                } else {
                    self.lost += 1;
                }
                continue;
            }
            let cert = self.index_of(from).map(|f| self.slots[f].cert.clone());
            if let Some(i) = self.index_of(to) {
                if let Some(backlog) = self.frozen.get_mut(&i) {
                    backlog.push((from, data));
                    continue;
                }
                if let Some(node) = self.slots[i].node.as_mut() {
                    // Errors are counted by the node; the network just moves on.
                    let _ = node.handle_datagram_from(now, from, cert.as_ref(), &data);
                    self.flush(i);
                }
            }
        }
        for i in std::mem::take(&mut self.dirty) {
            self.refresh(i);
        }
        while let Some(&(at, i)) = self.due.first() {
            if at > now {
                break;
            }
            if let Some(node) = self.slots[i].node.as_mut() {
                node.handle_timeout(now);
            }
            self.flush(i);
        }
    }

    fn index_of(&self, addr: SocketAddr) -> Option<NodeIndex> {
        self.by_addr.get(&addr).copied()
    }

    /// Moves node `index`'s outputs into the network: datagrams, syncs (run at once), events.
    fn flush(&mut self, index: NodeIndex) {
        let now = self.now;
        let elapsed = self.elapsed();
        let mut syncs = Vec::new();
        let src = self.slots[index].addr;
        let slow_src = self.slow.get(&index).copied().unwrap_or_default();
        let muted = self.mute_pushes.contains(&index);
        let slot = &mut self.slots[index];
        if let Some(node) = slot.node.as_mut() {
            while let Some(t) = node.poll_transmit() {
                if muted && t.data.first() == Some(&crate::wire::DATAGRAM_STATE) {
                    self.lost += 1;
                    continue;
                }
                if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                    self.lost += 1;
                    continue;
                }
                self.seq += 1;
                let slow_dst = self
                    .by_addr
                    .get(&t.dst)
                    .and_then(|d| self.slow.get(d))
                    .copied()
                    .unwrap_or_default();
                let at = now + self.latency + slow_src + slow_dst;
                self.in_flight.insert((at, self.seq), (t.dst, src, t.data));
            }
            while let Some(peer) = node.poll_sync() {
                syncs.push(peer);
            }
            while let Some(e) = node.poll_event() {
                slot.events.push((elapsed, e));
            }
        }
        for peer in syncs {
            if let Some(p) = self.index_of(peer) {
                self.sync(index, p);
            }
        }
        self.refresh(index);
    }

    /// Runs the three-message sync exchange between two nodes, through the wire encoding.
    fn sync(&mut self, initiator: NodeIndex, peer: NodeIndex) {
        let now = self.now;
        if initiator == peer
            || self.slots[peer].node.is_none()
            || !self.linked(initiator, peer)
            || self.frozen.contains_key(&peer)
        {
            return;
        }
        let peer_addr = self.slots[peer].addr;
        let Some(offer) = self.slots[initiator]
            .node
            .as_mut()
            .map(|n| n.sync_offer_to(peer_addr).encode())
        else {
            return;
        };
        self.sync_bytes += offer.len() as u64;
        let (initiator_cert, peer_cert) = (
            self.slots[initiator].cert.clone(),
            self.slots[peer].cert.clone(),
        );
        let answer = {
            let node = self.slots[peer].node.as_mut().expect("checked above");
            let offer = SyncOffer::decode(&offer).expect("own encoding decodes");
            match node.handle_sync_offer_from(now, Some(&initiator_cert), offer) {
                Ok(a) => a.encode(),
                Err(_) => return,
            }
        };
        self.flush(peer);
        self.sync_bytes += answer.len() as u64;
        let delta = {
            let Some(node) = self.slots[initiator].node.as_mut() else {
                return;
            };
            let answer = SyncAnswer::decode(&answer).expect("own encoding decodes");
            match node.handle_sync_answer_from(now, Some(&peer_cert), answer) {
                Ok(d) => d.encode(),
                Err(_) => return,
            }
        };
        self.flush(initiator);
        self.sync_bytes += delta.len() as u64;
        if let Some(node) = self.slots[peer].node.as_mut() {
            let delta = FullState::decode(&delta).expect("own encoding decodes");
            let _ = node.merge_from(now, Some(&initiator_cert), delta);
        }
        self.flush(peer);
    }
}

/// A running unit's state as member `i` of the tests' and benchmarks' clusters reports it.
pub fn running_unit(i: usize) -> crate::types::UnitState {
    crate::types::UnitState {
        load_state: "loaded".into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        unit_hash: [i as u8; 20],
    }
}

/// A formed cluster of `n` members, for benchmarks at sizes a [`VirtualNet`] cannot hold: their
/// identities (32-hex-digit machine IDs as fleetd uses, distinct addresses, incarnation 1) and a
/// full state as a member of it would send to a joiner (every member alive; each with metadata
/// and `units` unit states). Merging it into a [`Node`] whose identity is one of them makes that
/// node a member of the formed cluster.
pub fn synthetic_cluster(n: usize, units: usize) -> (Vec<NodeIdentity>, FullState) {
    use crate::store::{Entry, OriginDelta};
    use crate::types::{Metadata, Stamp};
    let ids: Vec<NodeIdentity> = (0..n)
        .map(|i| {
            NodeIdentity::new(
                MachineId::parse(&format!("{i:032x}")).unwrap(),
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)),
                    4001,
                ),
                1,
            )
        })
        .collect();
    let state = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let stamp = |version| Stamp { epoch: 1, version };
            let mut entries = vec![(
                stamp(1),
                Entry::Metadata(Metadata {
                    public_ip: id.addr.ip().to_string(),
                    metadata: [("rack".to_string(), format!("r{}", i % 40))].into(),
                    version: "0.1.0".into(),
                    unit_count: units as u32,
                }),
                Vec::new(),
            )];
            for u in 0..units {
                entries.push((
                    stamp(2 + u as u64),
                    Entry::Unit {
                        name: format!("app-{u:04}.service"),
                        state: Some(running_unit(i)),
                    },
                    Vec::new(),
                ));
            }
            OriginDelta {
                origin: id.machine_id.clone(),
                synced: stamp(1 + units as u64),
                entries,
                certificate: None,
            }
        })
        .collect();
    let members = ids.iter().cloned().map(foca::Member::alive).collect();
    let from = ids[n - 1].clone();
    (
        ids,
        FullState {
            from,
            members,
            state,
        },
    )
}

/// Credentials for the virtual network, with the shape of the real ones (a "CA" vouches for each
/// machine's "certificate", each machine signs with its own "key") but **no cryptography at all**:
/// the "signatures" are keyed hashes whose keys anyone can compute. They only let tests tell a
/// node that signs with the right machine's credentials from one that does not.
#[derive(Clone, Debug)]
pub struct ToyCredentials {
    machine: MachineId,
    certificate: Vec<u8>,
}

const TOY_CA: u64 = 0x6ca5_3d1e_0f1e_e7c4;
const TOY_KEYS: u64 = 0x5ee0_1357_9bdf_2468;

impl ToyCredentials {
    /// The credentials of `machine`: its toy certificate, and its toy key.
    pub fn new(machine: MachineId) -> Self {
        let certificate = Self::certificate_of(&machine, TOY_CA);
        ToyCredentials {
            machine,
            certificate,
        }
    }

    /// A toy certificate of `machine` vouched for by the "CA" `ca` (tests mint ones of another
    /// CA to see them refused).
    pub fn certificate_of(machine: &MachineId, ca: u64) -> Vec<u8> {
        let mut cert = b"toy-cert:".to_vec();
        cert.extend_from_slice(&crate::store::mix(machine.as_str().as_bytes(), ca).to_le_bytes());
        cert.extend_from_slice(machine.as_str().as_bytes());
        cert
    }

    /// The toy signature of `message` by `machine`'s key.
    pub fn signature(machine: &MachineId, message: &[u8]) -> Vec<u8> {
        let key = crate::store::mix(machine.as_str().as_bytes(), TOY_KEYS);
        crate::store::mix(message, key).to_le_bytes().to_vec()
    }

    fn named(certificate: &[u8]) -> Option<MachineId> {
        let rest = certificate.strip_prefix(b"toy-cert:")?;
        let name = std::str::from_utf8(rest.get(8..)?).ok()?;
        // A toy certificate naming an invalid machine ID names no machine (it is refused).
        let id = MachineId::parse(name).ok()?;
        (Self::certificate_of(&id, TOY_CA) == certificate).then_some(id)
    }
}

impl crate::crypto::Credentials for ToyCredentials {
    fn required(&self) -> bool {
        true
    }
    fn certificate(&self) -> &[u8] {
        &self.certificate
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        Self::signature(&self.machine, message)
    }
    fn check_certificate(&self, machine: &MachineId, certificate: &[u8]) -> Result<(), String> {
        match Self::named(certificate) {
            Some(id) if id == *machine => Ok(()),
            Some(id) => Err(format!("the certificate names machine {id}")),
            None => Err("not signed by the cluster CA".to_string()),
        }
    }
    fn verify(&self, certificate: &[u8], message: &[u8], signature: &[u8]) -> bool {
        Self::named(certificate).is_some_and(|id| Self::signature(&id, message) == signature)
    }
}

/// Metadata with one `k=v` pair, `rack=<rack>`, for tests that publish some and watch it spread.
pub fn rack_metadata(rack: &str) -> crate::types::Metadata {
    crate::types::Metadata {
        public_ip: String::new(),
        metadata: BTreeMap::from([("rack".to_string(), rack.to_string())]),
        version: "test".into(),
        unit_count: 0,
    }
}

/// The benchmarks' knobs: environment variable `key` parsed, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`): what the benchmarks measure on a
/// shared machine, where wall time means little.
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
