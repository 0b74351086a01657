//! The sans-IO gossip node: foca's SWIM membership, state dissemination by pushes of its own, and
//! anti-entropy.
//!
//! size: one state machine, [`Node`]: foca's runtime, the state pushes, anti-entropy and the
//! timers share its private state; to be split along those lines when no other change edits it.
//!
//! A [`Node`] never touches a socket or a clock. Its driver feeds it datagrams
//! ([`Node::handle_datagram_from`]), wakes it at [`Node::poll_timeout`] ([`Node::handle_timeout`]),
//! and carries out what it asks for: datagrams to send ([`Node::poll_transmit`]) and state syncs to
//! run over a stream ([`Node::poll_sync`], then [`Node::sync_offer_to`]). [`Node::poll_event`]
//! reports what changed. Every method that may make the node want to send or schedule something
//! takes `now`; after calling one, drain `poll_transmit`, `poll_sync` and `poll_event`, and re-read
//! `poll_timeout`.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use fleet_gossip::core::{Config, Node};
//! use fleet_gossip::{MachineId, NodeIdentity};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! let now = Instant::now();
//! let id = NodeIdentity {
//!     machine_id: MachineId::parse("a").unwrap(),
//!     addr: "127.0.0.1:4000".parse().unwrap(),
//!     incarnation: 1,
//! };
//! let mut node = Node::new(Config::default(), id, StdRng::seed_from_u64(7), now);
//! node.join(now, &["127.0.0.1:4001".parse().unwrap()]);
//! // The driver now opens a stream to the seed and runs the sync exchange.
//! let seed = node.poll_sync().unwrap();
//! assert_eq!(seed, "127.0.0.1:4001".parse().unwrap());
//! let offer = node.sync_offer_to(seed);
//! assert!(!offer.is_summary(), "a join is a full sync");
//! // ... send `offer.encode()`, answer with the peer's `handle_sync_offer_from`, and so on.
//! assert!(node.poll_timeout().unwrap() > now);
//! # let _ = Duration::ZERO;
//! ```
//!
//! # Dissemination
//! Membership travels in foca's SWIM packets. Every change of a machine's state (its metadata, one
//! unit's state) is a versioned update that the node pushes to `gossip_fanout` random live members,
//! and that every member that learns it as news passes on the same way, each at most
//! `max_transmissions` times ([`crate::outbox`]): a change costs each member a bounded number of
//! small datagrams, and nothing when nothing changes.
//!
//! # Sync exchange (three messages on one stream)
//! 1. The initiator sends [`Node::sync_offer_to`]: a summary of its state digest (periodic
//!    anti-entropy: a few hundred bytes whatever the cluster's size), or its whole membership and
//!    digest (a join through a seed, a retry while isolated, a heal with a member seen down).
//! 2. The peer answers ([`Node::handle_sync_offer_from`]): to a summary, which buckets differ and
//!    its digest of their origins; to a full offer, its membership, digest and the state the
//!    initiator lacks.
//! 3. The initiator merges the answer ([`Node::handle_sync_answer_from`]) and sends back the state
//!    the peer lacks, which the peer merges ([`Node::merge_from`]).
//!
//! A summary exchange repairs what the peer lacks (push); what the initiator lacks, the peer's own
//! syncs repair. Joining is a full exchange with a seed address: the seed learns the joiner from
//! the offer, the joiner learns the whole cluster from the answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, PostcardCodec, State, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

pub use crate::config::Config;
use crate::lifeguard::{Lifeguard, TimerKey};
use crate::outbox::Outbox;
use crate::roster::Roster;
use crate::store::{Change, Entry, Store, Update};
use crate::types::{Liveness, MachineId, MachineView, Metadata, NodeIdentity, UnitState, View};
pub use crate::wire::{FullState, StatePush, SyncAnswer, SyncOffer};
use crate::wire::{Packet, DATAGRAM_STATE, DATAGRAM_SWIM};

/// At most this many full syncs are asked for at once by one [`Node::join`] call (the other new
/// addresses are retried at a bounded rate, as seeds).
pub const JOIN_AT_ONCE: usize = 3;
/// How often at most this node asks one machine directly about a new life it heard of.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// The roster is reconciled with foca's list every this many anti-entropy intervals (one minute
/// with the defaults): an O(n) walk, a safety net (the roster follows foca's notifications).
const RECONCILE_EVERY: u64 = 12;
/// How long the address of a member forgotten after `remove_down_after` is still tried now and
/// then (a partition that outlived `remove_down_after` heals through it; Serf's
/// `reconnect_timeout` is the same idea, 24 h by default there too).
const LOST_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);
/// At most this many forgotten addresses are kept (the oldest go first): one reachable member of
/// the other side is enough to merge back, since a full sync exchanges whole memberships.
const LOST_MAX: usize = 1024;

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
    /// A datagram was garbage (undecodable, too large, of an unknown kind, or refused by foca). It
    /// was dropped and counted in [`Counters::garbage_dropped`]; the node's state is unaffected.
    #[error("dropped garbage datagram from {from}: {source}")]
    Garbage {
        /// Where the datagram came from.
        from: SocketAddr,
        /// What was wrong with it.
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
    /// State pushes sent (datagrams of their own, counted in `datagrams_out` too).
    pub pushes_out: u64,
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
    /// State updates (and suspicion claims) refused because they do not carry their origin's
    /// signature: forged in another machine's name, or damaged.
    pub signatures_refused: u64,
    /// State updates refused for now because this node does not hold their origin's certificate
    /// yet (expected for a moment after a machine joins; anti-entropy brings them again).
    pub state_unverified: u64,
    /// Certificates refused: not signed by the cluster CA, expired, or naming another machine.
    pub certificates_refused: u64,
    /// Relayed membership updates held because they raise a member's foca incarnation beyond
    /// what the member vouched for (a refutation that outran the member's vouch, or a forged
    /// one: [`crate::vouch`]).
    pub refutations_held: u64,
    /// Held refutations refused as forged: the member was declared down without ever vouching
    /// for them.
    pub refutations_refused: u64,
    /// Inputs dropped unchecked because their peer's budget of refusals was spent
    /// ([`crate::budget`]): state updates, certificates and rumours about other machines.
    pub over_budget_dropped: u64,
}

#[derive(Debug)]
enum TimerKind {
    Foca(Timer<NodeIdentity>),
    AntiEntropy,
    JoinRetry,
    /// Push pending state updates.
    Push,
    /// Ask this machine directly who it is now (a third party told us of a new life).
    Check(MachineId),
}

type FocaNode = Foca<NodeIdentity, PostcardCodec, StdRng, foca::NoCustomBroadcast>;

/// One gossip member: SWIM membership (foca), state dissemination and anti-entropy, without I/O.
pub struct Node {
    pub(crate) foca: FocaNode,
    pub(crate) store: Store,
    pub(crate) runtime: AccumulatingRuntime<NodeIdentity>,
    pub(crate) rng: StdRng,
    pub(crate) config: Config,
    timers: BTreeMap<(Instant, u8, u64), TimerKind>,
    timer_seq: u64,
    pub(crate) now: Instant,
    seeds: BTreeSet<SocketAddr>,
    /// Members forgotten after `remove_down_after`: their last address and when they were
    /// forgotten (see [`Node::reconnect_candidates`]).
    lost: BTreeMap<MachineId, (SocketAddr, Instant)>,
    transmits: VecDeque<Transmit>,
    /// Syncs to run: the peer, and whether the exchange is a full one.
    syncs: VecDeque<SocketAddr>,
    pub(crate) full_syncs: BTreeSet<SocketAddr>,
    events: VecDeque<Event>,
    pub(crate) counters: Counters,
    pub(crate) left: bool,
    pub(crate) roster: Roster,
    outbox: Outbox,
    push_at: Option<Instant>,
    /// When each (certificate, claimed identity) pair was last logged.
    pub(crate) warned: BTreeMap<(MachineId, MachineId), Instant>,
    /// When this node last asked each machine directly about a new life.
    checked: BTreeMap<MachineId, Instant>,
    /// Anti-entropy ticks so far (the roster is reconciled with foca's list every
    /// `RECONCILE_EVERY`-th).
    anti_entropy_ticks: u64,
    pub(crate) lifeguard: Lifeguard,
    started: Instant,
    /// Signs this node's state and checks others' ([`crate::crypto`]).
    pub(crate) credentials: std::sync::Arc<dyn crate::crypto::Credentials>,
    /// The checked certificates of the origins this node knows.
    pub(crate) certs: crate::crypto::Certificates,
    /// When each (relay, origin) pair's refused state was last logged.
    pub(crate) warned_state: BTreeMap<(MachineId, MachineId), Instant>,
    /// Vouches for foca incarnations: raises held until vouched ([`crate::vouch`]).
    pub(crate) vouches: crate::vouch::Vouches,
    /// Each peer's budget of refused input ([`crate::budget`]).
    pub(crate) budgets: crate::budget::Budgets,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", self.foca.identity())
            .field("members", &self.roster.len())
            .field("live", &self.roster.live_count())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with this identity, alone until [`Node::join`] or a peer contacts it.
    ///
    /// `rng` drives every random choice (foca's and the node's), so a seed reproduces a run. The
    /// state this node publishes is stamped with `identity.incarnation` as its epoch.
    pub fn new(config: Config, identity: NodeIdentity, mut rng: StdRng, now: Instant) -> Self {
        let store = Store::new(identity.machine_id.clone(), identity.incarnation);
        let foca_rng = StdRng::from_rng(&mut rng);
        let foca = Foca::new(identity, config.foca(), foca_rng, PostcardCodec);
        let mut node = Node {
            foca,
            store,
            runtime: AccumulatingRuntime::new(),
            rng,
            timers: BTreeMap::new(),
            timer_seq: 0,
            now,
            seeds: BTreeSet::new(),
            lost: BTreeMap::new(),
            transmits: VecDeque::new(),
            syncs: VecDeque::new(),
            full_syncs: BTreeSet::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            left: false,
            roster: Roster::default(),
            outbox: Outbox::default(),
            push_at: None,
            warned: BTreeMap::new(),
            checked: BTreeMap::new(),
            anti_entropy_ticks: 0,
            lifeguard: Lifeguard::default(),
            started: now,
            credentials: std::sync::Arc::new(crate::crypto::Unsigned),
            certs: crate::crypto::Certificates::default(),
            warned_state: BTreeMap::new(),
            vouches: Default::default(),
            budgets: Default::default(),
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
            state_refused: self.store.refused(),
            ..self.counters
        }
    }

    /// Lifeguard's local health score: 0 when this node's probes succeed, up to
    /// `max_local_health` when its own packets are late (it then probes that many times slower).
    pub fn local_health(&self) -> u8 {
        self.lifeguard.health
    }

    /// Test oracle: where this node's roster (its index of the membership, which [`Node::view`]
    /// and the choices of peers read) disagrees with foca's list, this machine's own entries
    /// aside: one line per member that differs, naming both versions. Empty when the roster is
    /// the exact cache of foca it must be.
    #[cfg(feature = "testing")]
    pub fn roster_drift(&self) -> Vec<String> {
        let me = &self.identity().machine_id;
        let foca: BTreeMap<&MachineId, &Member<NodeIdentity>> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().machine_id != *me)
            .map(|m| (&m.id().machine_id, m))
            .collect();
        let mut out = Vec::new();
        for (id, m) in &foca {
            let held = (m.id(), m.state(), m.incarnation());
            match self.roster.get(id) {
                Some(k) if (&k.identity, k.state, k.incarnation) == held => {}
                other => out.push(format!(
                    "{id}: foca {held:?}, roster {:?}",
                    other.map(|k| (&k.identity, k.state, k.incarnation))
                )),
            }
        }
        for (id, k) in self.roster.iter() {
            if !foca.contains_key(id) {
                out.push(format!(
                    "{id}: foca none, roster {:?}",
                    (&k.identity, k.state, k.incarnation)
                ));
            }
        }
        out
    }

    /// Whether this node counts its own machine among the forgotten members (a test oracle; its
    /// certificate and state would have gone with it). Must stay false: foca keeps this node's
    /// earlier identities as down members, and their removal concerns a past life, not this machine.
    #[cfg(feature = "testing")]
    pub fn forgot_itself(&self) -> bool {
        self.lost.contains_key(&self.identity().machine_id)
    }

    /// True once [`Node::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Joins through these addresses (configured seeds, or bootstrap addresses read from etcd): asks
    /// for a full sync now with up to [`JOIN_AT_ONCE`] new ones (chosen at random), and again every
    /// `join_retry_interval` while no member is alive (along with a few members last seen down or
    /// forgotten, so that a healed partition merges back). Our own address is skipped. Addresses
    /// accumulate across calls: while some are not the address of a member this node knows, it also
    /// retries them (and the addresses of members it forgot) at a bounded rate, see
    /// [`Config::anti_entropy_interval`].
    ///
    /// One full sync teaches the whole membership of the peer, so a few are enough; a full sync with
    /// every address given would cost a node O(n) exchanges of O(n) each when a whole cluster starts
    /// at once and every fleetd joins every machine announced in etcd that it does not know yet.
    pub fn join(&mut self, now: Instant, addrs: &[SocketAddr]) {
        self.now = now;
        let own = self.identity().addr;
        let mut fresh: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| *a != own && self.seeds.insert(*a))
            .collect();
        if fresh.len() > JOIN_AT_ONCE {
            for k in 0..JOIN_AT_ONCE {
                let i = self.rng.random_range(k..fresh.len());
                fresh.swap(k, i);
            }
            fresh.truncate(JOIN_AT_ONCE);
        }
        for addr in fresh {
            self.request_sync(addr, true);
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
    /// - State updates are accepted up to the epoch of their machine's known identity.
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
        if data.len() > self.config.max_packet_size.max(256) {
            return Err(self.garbage(from, foca::Error::DataTooBig));
        }
        match data.split_first() {
            Some((&DATAGRAM_SWIM, packet)) => self.handle_swim(from, certified, packet),
            Some((&DATAGRAM_STATE, push)) => self.handle_push(from, certified, push),
            _ => Err(self.garbage(from, foca::Error::MalformedPacket)),
        }
    }

    fn handle_swim(
        &mut self,
        from: SocketAddr,
        certified: Option<&MachineId>,
        data: &[u8],
    ) -> Result<(), Error> {
        let packet = match Packet::parse(data) {
            Ok(p) => p,
            Err(e) => return Err(self.garbage(from, foca::Error::Decode(Box::new(e)))),
        };
        let sender = packet.header.src.clone();
        self.check_sender(from, certified, &sender)?;
        if !self.foca_accepts(&packet.header) {
            // foca drops the whole packet (see `foca_accepts`): nothing in it may reach the
            // roster, the vouches or Lifeguard either.
            let result = self.foca.handle_data(data, &mut self.runtime);
            self.drain_runtime();
            return result.map_err(|e| self.garbage(from, e));
        }
        let mut kept = Vec::with_capacity(packet.updates.len());
        // A peer whose budget of refusals is spent speaks only for itself.
        let over = self.budget_left(&sender.machine_id) == 0;
        let mut dropped = 0;
        for u in &packet.updates {
            if over && u.id().machine_id != sender.machine_id && *u.id() != *self.identity() {
                dropped += 1;
                continue;
            }
            if self.admit(&sender, u) {
                kept.push(u.clone());
            }
        }
        self.over_budget(&sender.machine_id, dropped);
        self.observe_datagram(
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

    fn handle_push(
        &mut self,
        from: SocketAddr,
        certified: Option<&MachineId>,
        data: &[u8],
    ) -> Result<(), Error> {
        let push = match StatePush::decode(data) {
            Ok(p) => p,
            Err(e) => {
                return Err(self.garbage(from, foca::Error::Decode(Box::new(e))));
            }
        };
        self.check_sender(from, certified, &push.from)?;
        // The sender speaks for itself: its own state may come up to its identity's epoch.
        self.store
            .allow_epoch(&push.from.machine_id, push.from.incarnation);
        // Each update is taken only with its origin's signature (`crate::crypto`).
        let news = self.take_push(&push.from.machine_id, push.updates);
        self.pass_on(news);
        self.drain_changes();
        self.release_vouched();
        Ok(())
    }

    pub(crate) fn garbage(&mut self, from: SocketAddr, source: foca::Error) -> Error {
        self.counters.garbage_dropped += 1;
        tracing::debug!(%from, error = %source, "dropped datagram");
        Error::Garbage { from, source }
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

    /// The next peer to run a sync exchange with (see the module docs); build the offer with
    /// [`Node::sync_offer_to`]. The driver runs it when it can; a sync that fails is simply lost
    /// (the next periodic one repairs).
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
        let update = self.store.set_local_metadata(metadata, &*self.credentials);
        self.publish(update.into_iter().collect());
    }

    /// Publishes the runtime states of all this machine's units: units missing from `units` are
    /// reported as removed. Only the units that changed are disseminated.
    pub fn set_local_unit_states(&mut self, now: Instant, units: &BTreeMap<String, UnitState>) {
        self.now = now;
        let updates = self.store.set_local_units(units, &*self.credentials);
        self.publish(updates);
    }

    /// Publishes one unit's runtime state, or its removal (`None`).
    pub fn set_local_unit_state(&mut self, now: Instant, unit: &str, state: Option<UnitState>) {
        self.now = now;
        let update = self.store.set_local_unit(unit, state, &*self.credentials);
        self.publish(update.into_iter().collect());
    }

    /// This node's view of the cluster, itself included.
    pub fn view(&self) -> View {
        let me = self.identity().clone();
        let store = &self.store;
        let entry = |identity: NodeIdentity, liveness: Liveness, since: Instant| {
            let data = store.origin(&identity.machine_id);
            MachineView {
                identity,
                liveness,
                liveness_since: since,
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
        }
    }

    /// Each member this node knows (itself excluded) and how it holds it: what [`Node::view`]
    /// says of liveness, without copying anyone's state.
    pub fn liveness(&self) -> impl Iterator<Item = (&MachineId, Liveness)> + '_ {
        let me = &self.identity().machine_id;
        self.roster
            .iter()
            .filter(move |(id, _)| *id != me)
            .map(|(id, k)| {
                let liveness = match k.state {
                    State::Alive => Liveness::Alive,
                    State::Suspect => Liveness::Suspect,
                    State::Down => Liveness::Down,
                };
                (id, liveness)
            })
    }

    /// Same as [`Node::view`].
    pub fn members(&self) -> View {
        self.view()
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

    pub(crate) fn membership(&self) -> Vec<Member<NodeIdentity>> {
        self.foca
            .iter_membership_state()
            .cloned()
            .chain(std::iter::once(Member::alive(self.identity().clone())))
            .collect()
    }

    /// How many times each node passes `update` on: state `max_transmissions` times; suspicion
    /// claims (which matter only while a suspicion lasts, and of which a partition makes many) a
    /// third of that.
    fn transmissions(&self, update: &Update) -> u8 {
        match update.entry {
            Entry::Suspicion { .. } => (self.config.max_transmissions / 3).max(2),
            _ => self.config.max_transmissions,
        }
    }

    /// Our own suspicion claim: pushed at once.
    pub(crate) fn publish_claim(&mut self, claim: Update) {
        self.publish(vec![claim]);
    }

    /// Local changes: pushed at once.
    fn publish(&mut self, updates: Vec<Update>) {
        if self.left || updates.is_empty() {
            return;
        }
        for u in &updates {
            self.outbox.add(u, self.transmissions(u));
        }
        self.push_now();
    }

    /// News learnt from others: passed on with the next push.
    pub(crate) fn pass_on(&mut self, news: Vec<Update>) {
        if self.left || news.is_empty() {
            return;
        }
        for u in &news {
            self.outbox.add(u, self.transmissions(u));
        }
        let at = self.now + self.config.gossip_interval;
        self.schedule_push(at);
    }

    fn push_now(&mut self) {
        self.push();
        if !self.outbox.is_empty() {
            let at = self.now + self.config.gossip_interval;
            self.schedule_push(at);
        }
    }

    fn schedule_push(&mut self, at: Instant) {
        if self.push_at.is_some_and(|p| p <= at) {
            return;
        }
        self.push_at = Some(at);
        self.schedule(at, TimerKind::Push);
    }

    /// One push round: a datagram of pending updates to each of `gossip_fanout` random live
    /// members.
    fn push(&mut self) {
        let me = self.identity().clone();
        let room = self
            .config
            .max_packet_size
            .max(256)
            .saturating_sub(crate::wire::state_header_len(&me));
        let targets =
            self.roster
                .random_live(&mut self.rng, self.config.gossip_fanout.max(1), None);
        for target in targets {
            if self.outbox.is_empty() {
                break;
            }
            let Some(dst) = self.roster.get(&target).map(|k| k.identity.addr) else {
                continue;
            };
            let (bytes, count) = self.outbox.fill(room);
            if count == 0 {
                break;
            }
            self.counters.pushes_out += 1;
            self.transmits.push_back(Transmit {
                dst,
                dst_id: target,
                data: Bytes::from(crate::wire::state_datagram(&me, count, &bytes)),
            });
        }
    }

    fn request_sync(&mut self, addr: SocketAddr, full: bool) {
        self.counters.syncs_requested += 1;
        if full {
            self.full_syncs.insert(addr);
        }
        self.syncs.push_back(addr);
    }

    fn schedule(&mut self, at: Instant, timer: TimerKind) -> TimerKey {
        // foca wants a probe's indirect stage handled before the next probe when both are due.
        let prio = match timer {
            TimerKind::Foca(Timer::SendIndirectProbe { .. }) => 0,
            _ => 1,
        };
        self.timer_seq += 1;
        let key = (at, prio, self.timer_seq);
        self.timers.insert(key, timer);
        key
    }

    /// Schedules one of foca's timers; returns its key.
    pub(crate) fn schedule_keyed(&mut self, at: Instant, timer: Timer<NodeIdentity>) -> TimerKey {
        self.schedule(at, TimerKind::Foca(timer))
    }

    /// Removes a scheduled foca timer and returns it.
    pub(crate) fn take_timer(&mut self, key: TimerKey) -> Option<Timer<NodeIdentity>> {
        match self.timers.remove(&key) {
            Some(TimerKind::Foca(t)) => Some(t),
            Some(other) => {
                self.timers.insert(key, other);
                None
            }
            None => None,
        }
    }

    /// Cancels a scheduled foca timer.
    pub(crate) fn cancel_timer(&mut self, key: TimerKey) {
        let _ = self.take_timer(key);
    }

    fn fire(&mut self, timer: TimerKind) {
        match timer {
            TimerKind::Foca(t) => {
                let forget = match &t {
                    Timer::RemoveDown(id) => Some(id.clone()),
                    _ => None,
                };
                if let Timer::ChangeSuspectToDown {
                    member_id,
                    incarnation,
                    ..
                } = &t
                {
                    self.suspicion_ends(member_id, *incarnation);
                    if !self.still_suspected(member_id, *incarnation) {
                        // Refuted (or renamed, or already down): foca would still send the member
                        // a "you are down" courtesy message (it checks the incarnation only for
                        // its own verdict), which makes a live member rejoin for nothing.
                        return;
                    }
                }
                let probe_round = matches!(t, Timer::ProbeRandomMember(_));
                if probe_round {
                    self.lifeguard.probe_failed = false;
                }
                if let Err(e) = self.foca.handle_timer(t, &mut self.runtime) {
                    tracing::debug!(error = %e, "foca timer failed");
                }
                self.drain_runtime();
                if probe_round {
                    self.probe_round_done();
                }
                // foca keeps this node's earlier identities (after a renewal) as down members: the
                // end of such a past life forgets nothing of this machine.
                let own = forget
                    .as_ref()
                    .is_some_and(|id| id.machine_id == self.identity().machine_id);
                if let Some(id) = forget.filter(|_| !own) {
                    self.roster.forget(&id);
                    if self.roster.get(&id.machine_id).is_none() {
                        self.store.forget(&id.machine_id);
                        self.certs.forget(&id.machine_id);
                        self.remember_lost(id);
                    }
                }
            }
            TimerKind::Push => {
                self.push_at = None;
                self.push_now();
            }
            TimerKind::AntiEntropy => {
                // The roster follows foca's notifications; re-read foca's list now and then so
                // that it never drifts (an O(n) walk about once a minute, off the hot paths).
                if self.anti_entropy_ticks.is_multiple_of(RECONCILE_EVERY) {
                    let fixed = self
                        .roster
                        .reconcile(self.foca.iter_membership_state(), self.now);
                    if fixed > 0 {
                        tracing::debug!(fixed, "roster reconciled with foca");
                    }
                }
                self.anti_entropy_ticks += 1;
                let now = self.now;
                self.checked.retain(|_, at| now < *at + CHECK_EVERY);
                self.prune_claims();
                self.prune_held();
                self.budgets.prune(now);
                // A summary sync with one random live member, and a full one with one random
                // member we saw die: if it was only cut off (a healed partition), the sync makes
                // both sides renew and rejoin.
                if let Some(pick) = self.roster.random_live(&mut self.rng, 1, None).pop() {
                    if let Some(k) = self.roster.get(&pick) {
                        let addr = k.identity.addr;
                        self.request_sync(addr, false);
                    }
                }
                if let Some(addr) = self.random_down(1).pop() {
                    self.request_sync(addr, true);
                }
                // A partition longer than `remove_down_after` leaves no down member to heal
                // through: each side forgot the other. Like Serf's reconnect of failed members,
                // retry one seed or forgotten address that is no known member's, with probability
                // (such addresses / live members): about one attempt per interval cluster-wide for
                // one dead machine, one per node per interval on a side that lost more than it kept.
                self.reconnect();
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
                    let mut lost = self.reconnect_candidates();
                    lost.retain(|a| !self.seeds.contains(a));
                    for _ in 0..3 {
                        if lost.is_empty() {
                            break;
                        }
                        let i = self.rng.random_range(0..lost.len());
                        targets.push(lost.swap_remove(i));
                    }
                    for addr in targets {
                        self.request_sync(addr, true);
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

    /// Records the address of a member just forgotten (see [`LOST_KEPT_FOR`], [`LOST_MAX`]).
    fn remember_lost(&mut self, id: NodeIdentity) {
        self.lost.insert(id.machine_id, (id.addr, self.now));
        while self.lost.len() > LOST_MAX {
            let oldest = self
                .lost
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(m, _)| m.clone());
            match oldest {
                Some(m) => self.lost.remove(&m),
                None => break,
            };
        }
    }

    /// Addresses worth a full sync to merge back a partition: the seeds and the addresses of
    /// forgotten members, less our own and those of the members this node knows (whatever their
    /// state: a member seen down is retried by the anti-entropy already). Drops the forgotten
    /// members that came back or were forgotten over [`LOST_KEPT_FOR`] ago. An O(n) walk, run
    /// once per anti-entropy interval (and per join retry while isolated).
    fn reconnect_candidates(&mut self) -> Vec<SocketAddr> {
        let now = self.now;
        let roster = &self.roster;
        self.lost
            .retain(|m, (_, at)| roster.get(m).is_none() && now < *at + LOST_KEPT_FOR);
        if self.seeds.is_empty() && self.lost.is_empty() {
            return Vec::new();
        }
        let own = self.identity().addr;
        let known: BTreeSet<SocketAddr> = self
            .roster
            .iter()
            .map(|(_, k)| k.identity.addr)
            .chain(std::iter::once(own))
            .collect();
        let mut out: BTreeSet<SocketAddr> = self.seeds.clone();
        out.extend(self.lost.values().map(|(a, _)| *a));
        out.retain(|a| !known.contains(a));
        out.into_iter().collect()
    }

    /// One full sync with a random [`Node::reconnect_candidates`] address, with probability
    /// (candidates / live members), capped at 1.
    fn reconnect(&mut self) {
        let candidates = self.reconnect_candidates();
        if candidates.is_empty() {
            return;
        }
        let live = self.roster.live_count();
        if candidates.len() < live {
            let p = candidates.len() as f64 / live as f64;
            if !self.rng.random_bool(p) {
                return;
            }
        }
        let i = self.rng.random_range(0..candidates.len());
        self.request_sync(candidates[i], true);
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

    pub(crate) fn drain_runtime(&mut self) {
        let now = self.now;
        self.send_foca_datagrams();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.lifeguard_schedule(after, timer);
        }
        // A suspicion that just started may have asked its suspect something directly.
        self.send_foca_datagrams();
        if let Some(vouch) = self.own_vouch() {
            self.publish(vec![vouch]);
        }
        while let Some(n) = self.runtime.to_notify() {
            let event = match n {
                OwnedNotification::MemberUp(id) => {
                    self.roster.up(&id, now);
                    self.store.allow_epoch(&id.machine_id, id.incarnation);
                    Event::MemberUp(id.machine_id)
                }
                OwnedNotification::MemberDown(id) => {
                    self.roster.down(&id, now);
                    self.held_at_down(&id);
                    Event::MemberDown(id.machine_id)
                }
                OwnedNotification::Rename(_, new) => {
                    // A walk of foca's list, but renames are rare (restarts, renewals).
                    let held = self
                        .foca
                        .iter_membership_state()
                        .find(|m| *m.id() == new)
                        .map(|m| (m.state(), m.incarnation()));
                    self.roster.renamed(&new, held, now);
                    self.store.allow_epoch(&new.machine_id, new.incarnation);
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

    fn send_foca_datagrams(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.note_own_incarnation(&data);
            let data = self.with_suspicion(&to, data);
            let mut framed = Vec::with_capacity(data.len() + 1);
            framed.push(DATAGRAM_SWIM);
            framed.extend_from_slice(&data);
            self.transmits.push_back(Transmit {
                dst: to.addr,
                dst_id: to.machine_id,
                data: Bytes::from(framed),
            });
        }
    }

    pub(crate) fn drain_changes(&mut self) {
        let changes = self.store.take_changes();
        for (origin, change) in changes {
            self.events.push_back(match change {
                Change::Metadata => Event::MetadataChanged(origin),
                Change::Units => Event::UnitStatesChanged(origin),
            });
        }
    }

    /// Asks `machine` directly who it is now (soon, spread at random so that a machine that
    /// restarts is not asked by every member at once), at most every [`CHECK_EVERY`].
    pub(crate) fn want_check(&mut self, machine: MachineId) {
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
}
