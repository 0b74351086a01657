//! The sans-IO gossip node: foca's SWIM membership plus versioned state dissemination and anti-entropy.
//!
//! A [`Node`] never touches a socket or a clock. Its driver feeds it datagrams
//! ([`Node::handle_datagram`]), wakes it at [`Node::poll_timeout`] ([`Node::handle_timeout`]), and
//! carries out what it asks for: datagrams to send ([`Node::poll_transmit`]) and state syncs to run
//! over a stream ([`Node::poll_sync`]). [`Node::poll_event`] reports what changed. Every method that
//! may make the node want to send or schedule something takes `now`; after calling one, drain
//! `poll_transmit`, `poll_sync` and `poll_event`, and re-read `poll_timeout`.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use fleet_gossip::core::{Config, Node};
//! use fleet_gossip::{MachineId, NodeIdentity};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! let now = Instant::now();
//! let id = NodeIdentity {
//!     machine_id: MachineId::new("a"),
//!     addr: "127.0.0.1:4000".parse().unwrap(),
//!     incarnation: 1,
//! };
//! let mut node = Node::new(Config::default(), id, StdRng::seed_from_u64(7), now);
//! node.join(now, &["127.0.0.1:4001".parse().unwrap()]);
//! // The driver now opens a stream to the seed and runs the sync exchange.
//! let seed = node.poll_sync().unwrap();
//! assert_eq!(seed, "127.0.0.1:4001".parse().unwrap());
//! let offer = node.sync_offer();
//! // ... send `offer.encode()`, answer with the peer's `handle_sync_offer`, and so on.
//! # let _ = offer;
//! assert!(node.poll_timeout().unwrap() > now);
//! # let _ = Duration::ZERO;
//! ```
//!
//! # Anti-entropy exchange (push-pull, three messages on one stream)
//! 1. The initiator sends [`Node::sync_offer`]: its membership and a digest of its state versions.
//! 2. The peer answers with [`Node::handle_sync_offer`]: its membership, its digest, and the state
//!    the initiator lacks.
//! 3. The initiator merges the answer ([`Node::handle_sync_answer`]) and sends back the state the peer
//!    lacks, which the peer merges with [`Node::merge`].
//!
//! Joining is this exchange with a seed address: the seed learns the joiner from the offer, the joiner
//! learns the whole cluster from the answer.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, PostcardCodec, State, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::store::{Change, Handler, OriginDelta, SharedStore, Store, Update};
use crate::types::{
    Liveness, MachineId, MachineView, Metadata, NodeIdentity, Stamp, UnitState, View,
};

/// Failure detection and dissemination settings.
///
/// The defaults aim at a LAN (sub-millisecond RTT): a crashed machine is declared down by every live
/// member within about 2 s (p99, measured by `examples/detection.rs`), at a cost of a few small
/// datagrams per second per member. Roughly, detection takes the wait until some member probes the
/// dead one (each member probes one random member per `probe_period`; the chance that nobody probes a
/// given member in one period is about 1/e, so p99 is about 4.6 periods in a large cluster), plus one
/// `probe_period` (direct probe, then indirect probes through `num_indirect_probes` members), plus
/// `suspect_to_down_after`, plus the spread of the verdict (`gossip_interval` rounds to
/// `gossip_fanout` members, piggybacked on probes too).
///
/// Accuracy: a live member that is suspected refutes as soon as it hears the suspicion (foca gossips
/// its refutation immediately), so a false "down" needs it to stay unreachable, or paused, for
/// `probe_period + suspect_to_down_after`. A member wrongly declared down rejoins by itself with a
/// renewed identity (see [`NodeIdentity`]). For lossy or loaded networks, raise `probe_rtt` and
/// `suspect_to_down_after` first.
///
/// Not implemented (foca has no hook for them), noted for later: Lifeguard's local health awareness
/// (a member that misses its own acks slows its probing and lengthens its suspicion timeouts) and its
/// dynamic suspicion timeout (start long, shrink as independent members confirm the suspicion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How often this node probes one member. Default 400 ms.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking other members to probe indirectly. Must be
    /// less than `probe_period`. Default 80 ms.
    pub probe_rtt: Duration,
    /// How many members to ask for an indirect probe. Default 3.
    pub num_indirect_probes: usize,
    /// How long a suspect has to refute before it is declared down. Default 400 ms.
    pub suspect_to_down_after: Duration,
    /// How long a down member is remembered (and its last state kept) before it is forgotten; a
    /// machine cannot rejoin with the same identity before then (restarts use a new one). Default
    /// 10 min.
    pub remove_down_after: Duration,
    /// How many times each node passes on each membership update and state update. A member misses
    /// an update only if none of the roughly `n · max_transmissions` sends reach it, so the chance
    /// that some member of `n` misses one is about `n · e^(-max_transmissions)` (then anti-entropy
    /// delivers it within `anti_entropy_interval`). Default 12: about 0.06% for 100 machines, 0.6%
    /// for 1000; raise it for larger clusters.
    pub max_transmissions: u8,
    /// Largest datagram, in bytes. Must fit in one QUIC datagram: 1100 is safe before path MTU
    /// discovery (QUIC's minimum is 1200-byte packets). Default 1100.
    pub max_packet_size: usize,
    /// How often to push pending updates to `gossip_fanout` random members. Default 100 ms.
    pub gossip_interval: Duration,
    /// How many members each gossip round goes to. Default 3.
    pub gossip_fanout: usize,
    /// How often to announce ourselves to one random member (heals partitions). Default 5 s.
    pub announce_interval: Duration,
    /// How often to run anti-entropy (push-pull state sync) with one random live member, and with
    /// one random member seen down (which heals partitions: both sides renew and rejoin). Default 5 s.
    pub anti_entropy_interval: Duration,
    /// While no member is alive, how often to retry joining through the seeds and a few members
    /// last seen down. Default 1 s.
    pub join_retry_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_period: Duration::from_millis(400),
            probe_rtt: Duration::from_millis(80),
            num_indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(400),
            remove_down_after: Duration::from_secs(600),
            max_transmissions: 12,
            max_packet_size: 1100,
            gossip_interval: Duration::from_millis(100),
            gossip_fanout: 3,
            announce_interval: Duration::from_secs(5),
            anti_entropy_interval: Duration::from_secs(5),
            join_retry_interval: Duration::from_secs(1),
        }
    }
}

impl Config {
    fn foca(&self) -> foca::Config {
        let one = NonZeroUsize::MIN;
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: NonZeroUsize::new(self.num_indirect_probes).unwrap_or(one),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(self.remove_down_after),
            max_packet_size: NonZeroUsize::new(self.max_packet_size.max(256)).unwrap_or(one),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: self.announce_interval,
                num_members: one,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_interval * 3,
                num_members: one,
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: NonZeroUsize::new(self.gossip_fanout).unwrap_or(one),
            }),
        }
    }
}

/// Something the node learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A machine joined (or came back) and is alive.
    MemberUp(MachineId),
    /// A machine was declared down (failed or left).
    MemberDown(MachineId),
    /// A machine's node restarted: a newer identity replaced the old one.
    MemberRestarted(MachineId),
    /// A remote machine's metadata changed (or was first learned, or dropped with its old life).
    MetadataChanged(MachineId),
    /// A remote machine's unit states changed.
    UnitStatesChanged(MachineId),
    /// This node has live members again (it had none: start, or isolation).
    Connected,
    /// This node has no live member left: it is alone or cut off.
    Isolated,
    /// The cluster declared this node down; it rejoined with this renewed identity.
    Rejoined(NodeIdentity),
    /// The cluster declared this node down and it cannot rejoin (after [`Node::leave`]).
    Defunct,
}

/// A datagram the driver must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer's address.
    pub dst: SocketAddr,
    /// The peer's machine ID.
    pub dst_id: MachineId,
    /// The datagram.
    pub data: Bytes,
}

/// What went wrong handling an input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A datagram was garbage (undecodable, too large, forged, or a bad state update). It was dropped
    /// and counted in [`Counters::garbage_dropped`]; the node's state is unaffected.
    #[error("dropped garbage datagram from {from}: {source}")]
    Garbage {
        /// Where the datagram came from.
        from: SocketAddr,
        /// What foca found wrong with it.
        source: foca::Error,
    },
    /// A sync message could not be decoded. Nothing was merged.
    #[error("undecodable sync message: {0}")]
    Decode(#[from] postcard::Error),
    /// The node has left the cluster and takes no more input.
    #[error("the node has left the cluster")]
    Left,
    /// The membership protocol failed on our own data (an encoding failure or a foca invariant);
    /// foca may be left inconsistent, which it repairs over the next probe cycles.
    #[error("membership protocol error: {0}")]
    Protocol(foca::Error),
}

/// Traffic and error counters of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed to [`Node::handle_datagram`].
    pub datagrams_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Datagrams returned by [`Node::poll_transmit`].
    pub datagrams_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Datagrams dropped as garbage.
    pub garbage_dropped: u64,
    /// Sync exchanges requested through [`Node::poll_sync`].
    pub syncs_requested: u64,
    /// Sync messages merged (offers, answers and deltas).
    pub syncs_merged: u64,
}

/// Step 1 of a sync: the initiator's membership and state digest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncOffer {
    from: NodeIdentity,
    members: Vec<Member<NodeIdentity>>,
    digest: Vec<(MachineId, Stamp)>,
}

/// Step 2 of a sync: the peer's membership, digest, and what the initiator lacks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncAnswer {
    from: NodeIdentity,
    members: Vec<Member<NodeIdentity>>,
    digest: Vec<(MachineId, Stamp)>,
    state: Vec<OriginDelta>,
}

/// A membership list plus state: step 3 of a sync (what the peer lacks), or a full snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FullState {
    from: NodeIdentity,
    members: Vec<Member<NodeIdentity>>,
    state: Vec<OriginDelta>,
}

macro_rules! wire {
    ($t:ty) => {
        impl $t {
            /// Encodes for the wire (postcard).
            pub fn encode(&self) -> Vec<u8> {
                postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
            }

            /// Decodes from the wire; trailing bytes are an error.
            pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
                let (value, rest) = postcard::take_from_bytes::<Self>(bytes)?;
                if rest.is_empty() {
                    Ok(value)
                } else {
                    Err(Error::Decode(postcard::Error::DeserializeUnexpectedEnd))
                }
            }

            /// The sender's identity.
            pub fn from(&self) -> &NodeIdentity {
                &self.from
            }
        }
    };
}
wire!(SyncOffer);
wire!(SyncAnswer);
wire!(FullState);

#[derive(Debug)]
enum TimerKind {
    Foca(Timer<NodeIdentity>),
    AntiEntropy,
    JoinRetry,
}

type FocaNode = Foca<NodeIdentity, PostcardCodec, StdRng, Handler>;

/// One gossip member: SWIM membership (foca), state dissemination and anti-entropy, without I/O.
pub struct Node {
    foca: FocaNode,
    store: SharedStore,
    runtime: AccumulatingRuntime<NodeIdentity>,
    rng: StdRng,
    config: Config,
    timers: BTreeMap<(Instant, u8, u64), TimerKind>,
    timer_seq: u64,
    now: Instant,
    seeds: BTreeSet<SocketAddr>,
    transmits: VecDeque<Transmit>,
    syncs: VecDeque<SocketAddr>,
    events: VecDeque<Event>,
    counters: Counters,
    left: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", self.foca.identity())
            .field("members", &self.foca.num_members())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with this identity, alone until [`Node::join`] or a peer contacts it.
    ///
    /// `rng` drives every random choice (foca's and the node's), so a seed reproduces a run. The
    /// state this node publishes is stamped with `identity.incarnation` as its epoch.
    pub fn new(config: Config, identity: NodeIdentity, mut rng: StdRng, now: Instant) -> Self {
        let store = SharedStore::new(Store::new(
            identity.machine_id.clone(),
            identity.incarnation,
        ));
        let foca_rng = StdRng::from_rng(&mut rng);
        let foca = Foca::with_custom_broadcast(
            identity,
            config.foca(),
            foca_rng,
            PostcardCodec,
            Handler {
                store: store.clone(),
            },
        );
        let mut node = Node {
            foca,
            store,
            runtime: AccumulatingRuntime::new(),
            rng,
            timers: BTreeMap::new(),
            timer_seq: 0,
            now,
            seeds: BTreeSet::new(),
            transmits: VecDeque::new(),
            syncs: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            left: false,
            config,
        };
        node.schedule(
            now + node.config.anti_entropy_interval,
            TimerKind::AntiEntropy,
        );
        node.schedule(now + node.config.join_retry_interval, TimerKind::JoinRetry);
        node
    }

    /// This node's current identity (it changes when the node rejoins after being declared down).
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// The settings in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Traffic and error counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// True once [`Node::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Joins through these addresses (configured seeds, or bootstrap addresses read from etcd): asks
    /// for a sync with each now, and again every `join_retry_interval` while no member is alive
    /// (along with a few members last seen down, so that a healed partition merges back).
    /// Our own address is skipped. Addresses accumulate across calls.
    pub fn join(&mut self, now: Instant, addrs: &[SocketAddr]) {
        self.now = now;
        let own = self.identity().addr;
        let fresh: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| *a != own && self.seeds.insert(*a))
            .collect();
        for addr in fresh {
            self.request_sync(addr);
        }
    }

    /// Handles a datagram received from `from`.
    ///
    /// Garbage returns [`Error::Garbage`] and is counted; it never changes the node's state.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), Error> {
        self.now = now;
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += data.len() as u64;
        if self.left {
            return Ok(());
        }
        let result = self.foca.handle_data(data, &mut self.runtime);
        self.drain_runtime();
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.counters.garbage_dropped += 1;
                tracing::debug!(%from, error = %e, "dropped datagram");
                Err(Error::Garbage { from, source: e })
            }
        }
    }

    /// When the node next wants [`Node::handle_timeout`] called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _, _)| *at)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.fire(timer);
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += t.data.len() as u64;
        Some(t)
    }

    /// The next peer to run a sync exchange with (see the module docs). The driver runs it when it
    /// can; a sync that fails is simply lost (the next periodic one repairs).
    pub fn poll_sync(&mut self) -> Option<SocketAddr> {
        self.syncs.pop_front()
    }

    /// The next event. Events report what the node learned about the cluster and itself; the
    /// node's own `set_local_*` calls produce none.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Publishes this machine's metadata (disseminated if it changed).
    pub fn set_local_metadata(&mut self, now: Instant, metadata: Metadata) {
        self.now = now;
        let update = self.store.lock().set_local_metadata(metadata);
        self.publish(update.into_iter().collect());
    }

    /// Publishes the runtime states of all this machine's units: units missing from `units` are
    /// reported as removed. Only the units that changed are disseminated.
    pub fn set_local_unit_states(&mut self, now: Instant, units: &BTreeMap<String, UnitState>) {
        self.now = now;
        let updates = self.store.lock().set_local_units(units);
        self.publish(updates);
    }

    /// Publishes one unit's runtime state, or its removal (`None`).
    pub fn set_local_unit_state(&mut self, now: Instant, unit: &str, state: Option<UnitState>) {
        self.now = now;
        let update = self.store.lock().set_local_unit(unit, state);
        self.publish(update.into_iter().collect());
    }

    /// This node's view of the cluster, itself included.
    pub fn view(&self) -> View {
        let me = self.identity().clone();
        let mut idents: BTreeMap<MachineId, (NodeIdentity, Liveness)> = BTreeMap::new();
        for m in self.foca.iter_membership_state() {
            let liveness = match m.state() {
                State::Alive => Liveness::Alive,
                State::Suspect => Liveness::Suspect,
                State::Down => Liveness::Down,
            };
            let id = m.id();
            if id.machine_id == me.machine_id {
                continue;
            }
            match idents.get(&id.machine_id) {
                Some((known, _)) if known.incarnation >= id.incarnation => {}
                _ => {
                    idents.insert(id.machine_id.clone(), (id.clone(), liveness));
                }
            }
        }
        idents.insert(me.machine_id.clone(), (me.clone(), Liveness::Alive));
        let store = self.store.lock();
        let machines = idents
            .into_iter()
            .map(|(mid, (identity, liveness))| {
                let data = store.origin(&mid);
                let view = MachineView {
                    identity,
                    liveness,
                    metadata: data.and_then(|d| d.metadata().cloned()),
                    units: data
                        .map(|d| d.units().map(|(n, s)| (n.clone(), s.clone())).collect())
                        .unwrap_or_default(),
                    version: data.map(|d| d.newest()).unwrap_or_default(),
                };
                (mid, view)
            })
            .collect();
        View {
            local: me.machine_id,
            machines,
        }
    }

    /// Same as [`Node::view`].
    pub fn members(&self) -> View {
        self.view()
    }

    /// Step 1 of a sync, on the initiator: what to send to the peer.
    pub fn sync_offer(&self) -> SyncOffer {
        SyncOffer {
            from: self.identity().clone(),
            members: self.membership(),
            digest: self.store.lock().digest(),
        }
    }

    /// Step 2 of a sync, on the peer: merges the offer's membership and returns the answer.
    pub fn handle_sync_offer(
        &mut self,
        now: Instant,
        offer: SyncOffer,
    ) -> Result<SyncAnswer, Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.apply_members(offer.from, offer.members)?;
        let store = self.store.lock();
        Ok(SyncAnswer {
            from: self.foca.identity().clone(),
            members: self.membership(),
            digest: store.digest(),
            state: store.delta_for(&offer.digest),
        })
    }

    /// Step 3 of a sync, on the initiator: merges the answer and returns what the peer lacks.
    pub fn handle_sync_answer(
        &mut self,
        now: Instant,
        answer: SyncAnswer,
    ) -> Result<FullState, Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.apply_members(answer.from, answer.members)?;
        self.merge_state(answer.state);
        let store = self.store.lock();
        Ok(FullState {
            from: self.foca.identity().clone(),
            members: Vec::new(),
            state: store.delta_for(&answer.digest),
        })
    }

    /// Everything this node knows: membership and all state.
    pub fn snapshot(&self) -> FullState {
        FullState {
            from: self.identity().clone(),
            members: self.membership(),
            state: self.store.lock().delta_for(&[]),
        }
    }

    /// Merges a snapshot, or step 3 of a sync (on the peer).
    pub fn merge(&mut self, now: Instant, state: FullState) -> Result<(), Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.apply_members(state.from, state.members)?;
        self.merge_state(state.state);
        Ok(())
    }

    /// Leaves the cluster: tells a few members that we are down, then takes no more input. Send the
    /// resulting datagrams before shutting the driver down.
    pub fn leave(&mut self, now: Instant) {
        self.now = now;
        if self.left {
            return;
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(error = %e, "leave_cluster failed");
        }
        self.drain_runtime();
        self.left = true;
        self.timers.clear();
        self.syncs.clear();
    }

    fn membership(&self) -> Vec<Member<NodeIdentity>> {
        self.foca
            .iter_membership_state()
            .cloned()
            .chain(std::iter::once(Member::alive(self.identity().clone())))
            .collect()
    }

    fn apply_members(
        &mut self,
        from: NodeIdentity,
        mut members: Vec<Member<NodeIdentity>>,
    ) -> Result<(), Error> {
        self.counters.syncs_merged += 1;
        // A down verdict is only news about an identity we know. Learning verdicts about identities
        // we already forgot would keep dead members alive in everyone's lists forever, each node
        // re-teaching the others after its own `remove_down_after`.
        let known: HashSet<&NodeIdentity> =
            self.foca.iter_membership_state().map(|m| m.id()).collect();
        let own = self.identity();
        members.retain(|m| m.state() != State::Down || known.contains(m.id()) || m.id() == own);
        drop(known);
        members.push(Member::alive(from));
        let result = self
            .foca
            .apply_many(members.into_iter(), true, &mut self.runtime);
        self.drain_runtime();
        result.map_err(Error::Protocol)
    }

    fn merge_state(&mut self, state: Vec<OriginDelta>) {
        self.store.lock().merge(state);
        self.drain_changes();
    }

    fn publish(&mut self, updates: Vec<Update>) {
        if self.left || updates.is_empty() {
            return;
        }
        for update in updates {
            let bytes = postcard::to_allocvec(&update).expect("encoding to a Vec cannot fail");
            if let Err(e) = self.foca.add_broadcast(&bytes) {
                // Too large to piggyback: anti-entropy still carries it.
                tracing::debug!(error = %e, len = bytes.len(), "state update not broadcast");
            }
        }
        if let Err(e) = self.foca.broadcast(&mut self.runtime) {
            tracing::debug!(error = %e, "broadcast failed");
        }
        self.drain_runtime();
    }

    fn request_sync(&mut self, addr: SocketAddr) {
        self.counters.syncs_requested += 1;
        self.syncs.push_back(addr);
    }

    fn schedule(&mut self, at: Instant, timer: TimerKind) {
        // foca wants a probe's indirect stage handled before the next probe when both are due.
        let prio = match timer {
            TimerKind::Foca(Timer::SendIndirectProbe { .. }) => 0,
            _ => 1,
        };
        self.timer_seq += 1;
        self.timers.insert((at, prio, self.timer_seq), timer);
    }

    fn fire(&mut self, timer: TimerKind) {
        match timer {
            TimerKind::Foca(t) => {
                let forget = matches!(t, Timer::RemoveDown(_));
                if let Err(e) = self.foca.handle_timer(t, &mut self.runtime) {
                    tracing::debug!(error = %e, "foca timer failed");
                }
                self.drain_runtime();
                if forget {
                    let known: BTreeSet<MachineId> = self
                        .foca
                        .iter_membership_state()
                        .map(|m| m.id().machine_id.clone())
                        .collect();
                    self.store.lock().retain(|id| known.contains(id));
                }
            }
            TimerKind::AntiEntropy => {
                // One random live member for state, and one random member we saw die: if it was
                // only cut off (a healed partition), the sync makes both sides renew and rejoin.
                let mut live = Vec::new();
                let mut down = Vec::new();
                for m in self.foca.iter_membership_state() {
                    match m.state() {
                        State::Down => down.push(m.id().addr),
                        _ => live.push(m.id().addr),
                    }
                }
                for candidates in [live, down] {
                    if !candidates.is_empty() {
                        let pick = candidates[self.rng.random_range(0..candidates.len())];
                        self.request_sync(pick);
                    }
                }
                self.schedule(
                    self.now + self.config.anti_entropy_interval,
                    TimerKind::AntiEntropy,
                );
            }
            TimerKind::JoinRetry => {
                if self.foca.num_members() == 0 {
                    // Isolated: retry the seeds, and a few members we saw die (they may only have
                    // been cut off; a sync makes both sides renew and rejoin each other).
                    let mut targets: Vec<SocketAddr> = self.seeds.iter().copied().collect();
                    let mut down: Vec<SocketAddr> = self
                        .foca
                        .iter_membership_state()
                        .filter(|m| m.state() == State::Down)
                        .map(|m| m.id().addr)
                        .filter(|a| !self.seeds.contains(a))
                        .collect();
                    for _ in 0..down.len().min(3) {
                        let i = self.rng.random_range(0..down.len());
                        targets.push(down.swap_remove(i));
                    }
                    for addr in targets {
                        self.request_sync(addr);
                    }
                }
                self.schedule(
                    self.now + self.config.join_retry_interval,
                    TimerKind::JoinRetry,
                );
            }
        }
    }

    fn drain_runtime(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.transmits.push_back(Transmit {
                dst: to.addr,
                dst_id: to.machine_id,
                data,
            });
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.schedule(self.now + after, TimerKind::Foca(timer));
        }
        while let Some(n) = self.runtime.to_notify() {
            let event = match n {
                OwnedNotification::MemberUp(id) => Event::MemberUp(id.machine_id),
                OwnedNotification::MemberDown(id) => Event::MemberDown(id.machine_id),
                OwnedNotification::Rename(_, new) => Event::MemberRestarted(new.machine_id),
                OwnedNotification::Active => Event::Connected,
                OwnedNotification::Idle => Event::Isolated,
                OwnedNotification::Defunct => Event::Defunct,
                OwnedNotification::Rejoin(id) => Event::Rejoined(id),
            };
            tracing::debug!(?event, "gossip event");
            self.events.push_back(event);
        }
        self.drain_changes();
    }

    fn drain_changes(&mut self) {
        let changes = self.store.lock().take_changes();
        for (origin, change) in changes {
            self.events.push_back(match change {
                Change::Metadata => Event::MetadataChanged(origin),
                Change::Units => Event::UnitStatesChanged(origin),
            });
        }
    }
}
