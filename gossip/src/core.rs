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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{
    AccumulatingRuntime, Codec, Foca, Header, Member, Message, OwnedNotification, PostcardCodec,
    State, Timer,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::roster::Roster;
use crate::store::{Change, Handler, OriginDelta, SharedStore, Store, Update};
use crate::types::{
    Liveness, MachineId, MachineView, Metadata, NodeIdentity, Stamp, UnitState, View,
};

/// How often one (certificate, claimed identity) pair is logged at most.
const IMPERSONATION_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often at most this node asks one machine directly about a new life it heard of.
const CHECK_EVERY: Duration = Duration::from_secs(2);

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
    /// The peer's certificate names one machine and its message claims to come from another. The
    /// whole input was refused and counted in [`Counters::impersonations_refused`].
    #[error(
        "refused: the peer's certificate is for machine {certified} but it claims to be {claimed}"
    )]
    Impersonation {
        /// The machine ID in the peer's certificate.
        certified: MachineId,
        /// The machine ID its message claims.
        claimed: MachineId,
    },
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
    /// Inputs refused because the sender claimed another machine's identity than its
    /// certificate's.
    pub impersonations_refused: u64,
    /// Membership rumours refused: a third party announcing a machine's new identity (learnt
    /// from the machine itself instead).
    pub rumours_refused: u64,
    /// State updates refused: a newer epoch for a machine than the identity the membership holds.
    pub state_refused: u64,
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
    /// Ask this machine directly who it is now (a third party told us of a new life).
    Check(MachineId),
}

/// A foca packet taken apart with foca's own codec: the header, the membership updates it
/// piggybacks, and where the rest (custom broadcasts) starts.
struct Packet {
    header: Header<NodeIdentity>,
    updates: Vec<Member<NodeIdentity>>,
    has_updates: bool,
    rest: usize,
}

impl Packet {
    /// foca's packet layout: a header, then (unless the message is a custom broadcast and if at
    /// least two bytes follow) a big-endian `u16` count of updates and the updates, then custom
    /// broadcasts.
    fn parse(data: &[u8]) -> Result<Packet, postcard::Error> {
        let mut codec = PostcardCodec;
        let mut buf = data;
        let header: Header<NodeIdentity> = codec.decode_header(&mut buf)?;
        let mut updates = Vec::new();
        let has_updates = buf.len() >= 2 && header.message != Message::Broadcast;
        if has_updates {
            let count = u16::from_be_bytes([buf[0], buf[1]]);
            buf = &buf[2..];
            for _ in 0..count {
                updates.push(codec.decode_member(&mut buf)?);
            }
        }
        Ok(Packet {
            header,
            updates,
            has_updates,
            rest: data.len() - buf.len(),
        })
    }

    /// The same packet with only `kept` as its updates.
    fn rewrite(&self, kept: &[Member<NodeIdentity>], data: &[u8]) -> Vec<u8> {
        let mut codec = PostcardCodec;
        let mut out = Vec::with_capacity(data.len());
        codec
            .encode_header(&self.header, &mut out)
            .expect("encoding to a Vec cannot fail");
        if self.has_updates {
            out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
            for m in kept {
                codec
                    .encode_member(m, &mut out)
                    .expect("encoding to a Vec cannot fail");
            }
        }
        out.extend_from_slice(&data[self.rest..]);
        out
    }
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
    roster: Roster,
    /// When each (certificate, claimed identity) pair was last logged.
    warned: BTreeMap<(MachineId, MachineId), Instant>,
    /// When this node last asked each machine directly about a new life.
    checked: BTreeMap<MachineId, Instant>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", self.foca.identity())
            .field("members", &self.roster.len())
            .field("live", &self.roster.live_count())
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
            roster: Roster::default(),
            warned: BTreeMap::new(),
            checked: BTreeMap::new(),
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
        Counters {
            state_refused: self.store.lock().refused(),
            ..self.counters
        }
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

    /// Handles a datagram received from `from`, with no certificate to hold its sender to (the
    /// insecure development mode, simulations): the sender is taken at its word. See
    /// [`Node::handle_datagram_from`].
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), Error> {
        self.handle_datagram_from(now, from, None, data)
    }

    /// Handles a datagram received from `from`, whose transport authenticated the sender as machine
    /// `certified` (the ID in its TLS certificate), if any.
    ///
    /// - A datagram whose sender claims another machine's identity than `certified` is refused
    ///   whole ([`Error::Impersonation`], counted, logged at most every 10 s per pair).
    /// - A rumour (a membership update about a third machine) that announces a new identity of a
    ///   machine this node knows is dropped: a new life is learnt from the machine itself, which
    ///   this node then asks directly (so a restarted machine is still recognised at once).
    ///   Rumours about known identities follow SWIM's rules (suspicion, refutation, down).
    ///
    /// Garbage returns [`Error::Garbage`] and is counted; it never changes the node's state.
    pub fn handle_datagram_from(
        &mut self,
        now: Instant,
        from: SocketAddr,
        certified: Option<&MachineId>,
        data: &[u8],
    ) -> Result<(), Error> {
        self.now = now;
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += data.len() as u64;
        if self.left {
            return Ok(());
        }
        if data.len() > self.foca_max_packet() {
            return Err(self.garbage(from, foca::Error::DataTooBig));
        }
        let packet = match Packet::parse(data) {
            Ok(p) => p,
            Err(e) => return Err(self.garbage(from, foca::Error::Decode(Box::new(e)))),
        };
        let sender = packet.header.src.clone();
        if let Some(cert) = certified {
            if sender.machine_id != *cert {
                return Err(self.impersonation(from, cert, &sender));
            }
        }
        let mut kept = Vec::with_capacity(packet.updates.len());
        for u in &packet.updates {
            if self.admit(&sender, u) {
                kept.push(u.clone());
            }
        }
        self.observe_input(
            &Member::new(sender.clone(), packet.header.src_incarnation, State::Alive),
            &kept,
        );
        let result = if kept.len() == packet.updates.len() {
            self.foca.handle_data(data, &mut self.runtime)
        } else {
            let rewritten = packet.rewrite(&kept, data);
            self.foca.handle_data(&rewritten, &mut self.runtime)
        };
        self.drain_runtime();
        result.map_err(|e| self.garbage(from, e))
    }

    fn foca_max_packet(&self) -> usize {
        self.config.max_packet_size.max(256)
    }

    fn garbage(&mut self, from: SocketAddr, source: foca::Error) -> Error {
        self.counters.garbage_dropped += 1;
        tracing::debug!(%from, error = %source, "dropped datagram");
        Error::Garbage { from, source }
    }

    fn impersonation(
        &mut self,
        from: SocketAddr,
        certified: &MachineId,
        claimed: &NodeIdentity,
    ) -> Error {
        self.counters.impersonations_refused += 1;
        let key = (certified.clone(), claimed.machine_id.clone());
        let due = match self.warned.get(&key) {
            Some(at) => self.now >= *at + IMPERSONATION_LOG_EVERY,
            None => true,
        };
        if due {
            if self.warned.len() >= 1024 {
                self.warned.clear();
            }
            self.warned.insert(key, self.now);
            tracing::warn!(
                %from,
                certificate = %certified,
                claims = %claimed.machine_id,
                advertised = %claimed.addr,
                refused = self.counters.impersonations_refused,
                "refused gossip from a peer that claims another machine's identity: its \
                 certificate is for machine {certified}, it claims to be {}",
                claimed.machine_id
            );
        }
        Error::Impersonation {
            certified: certified.clone(),
            claimed: claimed.machine_id.clone(),
        }
    }

    /// Whether a membership update that `sender` passes on may reach foca. A sender speaks for
    /// itself (its own present or past lives), and news about this node is foca's to judge
    /// (refute, or rejoin). About a third machine, a sender may only relay what concerns the life
    /// of it this node already knows, or introduce a machine this node does not know at all
    /// (that is how joins spread); a different life of a known machine is refused, and the
    /// machine is asked directly.
    fn admit(&mut self, sender: &NodeIdentity, update: &Member<NodeIdentity>) -> bool {
        let id = update.id();
        if id.machine_id == self.identity().machine_id {
            return true;
        }
        if id.machine_id == sender.machine_id {
            return id.incarnation <= sender.incarnation;
        }
        let Some(known) = self.roster.get(&id.machine_id) else {
            return true;
        };
        if known.identity == *id {
            return true;
        }
        if id.incarnation > known.identity.incarnation {
            self.counters.rumours_refused += 1;
            tracing::debug!(relayed_by = %sender.machine_id, claimed = ?id, known = ?known.identity, "rumour of a new life refused; asking the machine");
            let machine = id.machine_id.clone();
            self.want_check(machine);
        }
        false
    }

    /// Asks `machine` directly who it is now (soon, spread at random so that a machine that
    /// restarts is not asked by every member at once), at most every [`CHECK_EVERY`].
    fn want_check(&mut self, machine: MachineId) {
        if let Some(at) = self.checked.get(&machine) {
            if self.now < *at + CHECK_EVERY {
                return;
            }
        }
        self.checked.insert(machine.clone(), self.now);
        let spread = self.config.probe_period.as_micros().max(1) as u64;
        let delay = Duration::from_micros(self.rng.random_range(0..spread));
        self.schedule(self.now + delay, TimerKind::Check(machine));
    }

    /// Follows in the roster what foca is about to apply: the sender is alive (at its
    /// incarnation), and, if foca holds it active, the updates it passes on. State that these
    /// identities publish may now be accepted up to their epochs.
    fn observe_input(&mut self, sender: &Member<NodeIdentity>, updates: &[Member<NodeIdentity>]) {
        let now = self.now;
        let me = self.identity().machine_id.clone();
        self.roster.observe(sender, now);
        let mut store = self.store.lock();
        store.allow_epoch(&sender.id().machine_id, sender.id().incarnation);
        let sender_down = self
            .roster
            .get(&sender.id().machine_id)
            .is_some_and(|k| k.identity == *sender.id() && k.state == State::Down);
        if sender_down {
            return;
        }
        for u in updates {
            if u.id().machine_id == me {
                continue;
            }
            self.roster.observe(u, now);
            if u.state() != State::Down {
                store.allow_epoch(&u.id().machine_id, u.id().incarnation);
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
        let store = self.store.lock();
        let entry = |identity: NodeIdentity, liveness: Liveness| {
            let data = store.origin(&identity.machine_id);
            MachineView {
                identity,
                liveness,
                metadata: data.and_then(|d| d.metadata().cloned()),
                units: data
                    .map(|d| d.units().map(|(n, s)| (n.clone(), s.clone())).collect())
                    .unwrap_or_default(),
                version: data.map(|d| d.newest()).unwrap_or_default(),
            }
        };
        let mut machines: BTreeMap<MachineId, MachineView> = self
            .roster
            .iter()
            .filter(|(id, _)| **id != me.machine_id)
            .map(|(id, k)| {
                let liveness = match k.state {
                    State::Alive => Liveness::Alive,
                    State::Suspect => Liveness::Suspect,
                    State::Down => Liveness::Down,
                };
                (id.clone(), entry(k.identity.clone(), liveness))
            })
            .collect();
        machines.insert(me.machine_id.clone(), entry(me.clone(), Liveness::Alive));
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

    /// Step 2 of a sync, on the peer: merges the offer's membership and returns the answer. The
    /// sender is taken at its word; see [`Node::handle_sync_offer_from`].
    pub fn handle_sync_offer(
        &mut self,
        now: Instant,
        offer: SyncOffer,
    ) -> Result<SyncAnswer, Error> {
        self.handle_sync_offer_from(now, None, offer)
    }

    /// Step 2 of a sync from a peer whose certificate names machine `certified`: refused whole
    /// if the offer claims to come from another machine (see [`Node::handle_datagram_from`]).
    pub fn handle_sync_offer_from(
        &mut self,
        now: Instant,
        certified: Option<&MachineId>,
        offer: SyncOffer,
    ) -> Result<SyncAnswer, Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.check_sender(certified, &offer.from)?;
        self.apply_members(offer.from, offer.members)?;
        let store = self.store.lock();
        Ok(SyncAnswer {
            from: self.foca.identity().clone(),
            members: self.membership(),
            digest: store.digest(),
            state: store.delta_for(&offer.digest),
        })
    }

    /// Step 3 of a sync, on the initiator: merges the answer and returns what the peer lacks. The
    /// sender is taken at its word; see [`Node::handle_sync_answer_from`].
    pub fn handle_sync_answer(
        &mut self,
        now: Instant,
        answer: SyncAnswer,
    ) -> Result<FullState, Error> {
        self.handle_sync_answer_from(now, None, answer)
    }

    /// Step 3 of a sync from a peer whose certificate names machine `certified`.
    pub fn handle_sync_answer_from(
        &mut self,
        now: Instant,
        certified: Option<&MachineId>,
        answer: SyncAnswer,
    ) -> Result<FullState, Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.check_sender(certified, &answer.from)?;
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

    /// Merges a snapshot, or step 3 of a sync (on the peer). The sender is taken at its word; see
    /// [`Node::merge_from`].
    pub fn merge(&mut self, now: Instant, state: FullState) -> Result<(), Error> {
        self.merge_from(now, None, state)
    }

    /// Merges step 3 of a sync from a peer whose certificate names machine `certified`.
    pub fn merge_from(
        &mut self,
        now: Instant,
        certified: Option<&MachineId>,
        state: FullState,
    ) -> Result<(), Error> {
        self.now = now;
        if self.left {
            return Err(Error::Left);
        }
        self.check_sender(certified, &state.from)?;
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

    fn check_sender(
        &mut self,
        certified: Option<&MachineId>,
        from: &NodeIdentity,
    ) -> Result<(), Error> {
        match certified {
            Some(cert) if from.machine_id != *cert => {
                Err(self.impersonation(from.addr, cert, from))
            }
            _ => Ok(()),
        }
    }

    fn apply_members(
        &mut self,
        from: NodeIdentity,
        members: Vec<Member<NodeIdentity>>,
    ) -> Result<(), Error> {
        self.counters.syncs_merged += 1;
        let own = self.identity().clone();
        let mut kept = Vec::with_capacity(members.len() + 1);
        for m in members {
            if !self.admit(&from, &m) {
                continue;
            }
            // A down verdict is only news about an identity we know. Learning verdicts about
            // identities we already forgot would keep dead members alive in everyone's lists
            // forever, each node re-teaching the others after its own `remove_down_after`.
            let known = self
                .roster
                .get(&m.id().machine_id)
                .is_some_and(|k| k.identity == *m.id());
            if m.state() != State::Down || known || *m.id() == own {
                kept.push(m);
            }
        }
        let sender = Member::alive(from);
        self.observe_input(&sender, &kept);
        kept.push(sender);
        let result = self
            .foca
            .apply_many(kept.into_iter(), true, &mut self.runtime);
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
                let forget = match &t {
                    Timer::RemoveDown(id) => Some(id.clone()),
                    _ => None,
                };
                if let Err(e) = self.foca.handle_timer(t, &mut self.runtime) {
                    tracing::debug!(error = %e, "foca timer failed");
                }
                self.drain_runtime();
                if let Some(id) = forget {
                    self.roster.forget(&id);
                    if self.roster.get(&id.machine_id).is_none() {
                        self.store.lock().forget(&id.machine_id);
                    }
                }
            }
            TimerKind::AntiEntropy => {
                // The roster follows foca's notifications; re-read foca's list now and then so
                // that it never drifts (an O(n) walk every few seconds, off the hot paths).
                let fixed = self
                    .roster
                    .reconcile(self.foca.iter_membership_state(), self.now);
                if fixed > 0 {
                    tracing::debug!(fixed, "roster reconciled with foca");
                }
                let now = self.now;
                self.checked.retain(|_, at| now < *at + CHECK_EVERY);
                // One random live member for state, and one random member we saw die: if it was
                // only cut off (a healed partition), the sync makes both sides renew and rejoin.
                if let Some(pick) = self.roster.random_live(&mut self.rng, 1, None).pop() {
                    if let Some(k) = self.roster.get(&pick) {
                        let addr = k.identity.addr;
                        self.request_sync(addr);
                    }
                }
                if let Some(addr) = self.random_down(1).pop() {
                    self.request_sync(addr);
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
                    for addr in self.random_down(3) {
                        if !self.seeds.contains(&addr) {
                            targets.push(addr);
                        }
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
            TimerKind::Check(machine) => {
                if let Some(k) = self.roster.get(&machine) {
                    // foca accepts an announce addressed to any life of its machine and answers
                    // with a feed from its current identity, which this node then hears first-hand.
                    let dst = k.identity.clone();
                    if let Err(e) = self.foca.announce(dst, &mut self.runtime) {
                        tracing::debug!(error = %e, "announce failed");
                    }
                    self.drain_runtime();
                }
            }
        }
    }

    /// Up to `k` addresses of members seen down, chosen at random (an O(n) walk: used every few
    /// seconds at most).
    fn random_down(&mut self, k: usize) -> Vec<SocketAddr> {
        let mut down: Vec<SocketAddr> = self
            .roster
            .iter()
            .filter(|(_, m)| m.state == State::Down)
            .map(|(_, m)| m.identity.addr)
            .collect();
        let mut out = Vec::new();
        while out.len() < k && !down.is_empty() {
            let i = self.rng.random_range(0..down.len());
            out.push(down.swap_remove(i));
        }
        out
    }

    fn drain_runtime(&mut self) {
        let now = self.now;
        while let Some((to, data)) = self.runtime.to_send() {
            self.transmits.push_back(Transmit {
                dst: to.addr,
                dst_id: to.machine_id,
                data,
            });
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            if let Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } = &timer
            {
                // foca suspects a member only after its own probe of it failed.
                self.roster.suspect(member_id, *incarnation, now);
            }
            self.schedule(now + after, TimerKind::Foca(timer));
        }
        while let Some(n) = self.runtime.to_notify() {
            let event = match n {
                OwnedNotification::MemberUp(id) => {
                    self.roster.up(&id, now);
                    self.store
                        .lock()
                        .allow_epoch(&id.machine_id, id.incarnation);
                    Event::MemberUp(id.machine_id)
                }
                OwnedNotification::MemberDown(id) => {
                    self.roster.down(&id, now);
                    Event::MemberDown(id.machine_id)
                }
                OwnedNotification::Rename(_, new) => {
                    self.roster.renamed(&new, now);
                    self.store
                        .lock()
                        .allow_epoch(&new.machine_id, new.incarnation);
                    Event::MemberRestarted(new.machine_id)
                }
                OwnedNotification::Active => Event::Connected,
                OwnedNotification::Idle => Event::Isolated,
                OwnedNotification::Defunct => Event::Defunct,
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        incarnation = id.incarnation,
                        "the cluster declared this node down: rejoined with a renewed identity"
                    );
                    Event::Rejoined(id)
                }
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
