//! The sans-IO gossip node: foca's SWIM membership, state dissemination by pushes of its own, and
//! anti-entropy.
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
//! let id = NodeIdentity::new(
//!     MachineId::parse("a").unwrap(),
//!     "127.0.0.1:4000".parse().unwrap(),
//!     1,
//! );
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
//! `max_transmissions` times (the `outbox` module): a change costs each member a bounded number of
//! small datagrams, and nothing when nothing changes.
//!
//! # Sync exchange (three messages on one stream)
//! 1. The initiator sends [`Node::sync_offer_to`]: a summary of its state digest (periodic
//!    anti-entropy: a few hundred bytes whatever the cluster's size), or, for a join through a
//!    seed, a retry while isolated or a heal with a member seen down, its whole membership and
//!    digest when it has no live member, a *whole summary* (the summary at 256 buckets and its
//!    whole digest) when it has some.
//! 2. The peer answers ([`Node::handle_sync_offer_from`]): to a summary, which buckets differ (at
//!    most 8 detailed; every one for a whole summary) and its members and digest of those
//!    buckets, plus, to a whole summary, the state of those buckets the initiator lacks; to a
//!    full offer, the members the offer did not list as the peer holds them (the others would be
//!    no-ops), its digest and the state the initiator lacks.
//! 3. The initiator merges the answer ([`Node::handle_sync_answer_from`]) and sends back the state
//!    the peer lacks, which the peer merges ([`Node::merge_from`]).
//!
//! A summary exchange repairs what the peer lacks (push); what the initiator lacks, the peer's own
//! syncs repair. Joining is a full exchange with a seed address: the seed learns the joiner from
//! the offer, the joiner learns the whole cluster from the answer.
//!
//! # Where the code is
//! This file holds the node's nouns and its public API; `core/input.rs` takes datagrams in and
//! drains foca's runtime (its datagrams, timers and notifications); `core/push.rs` disseminates
//! state updates; `core/view.rs` builds and shares the node's view; `core/timers.rs` runs the timers (foca's, anti-entropy, join retries, checks of
//! new lives) and the reconnection of forgotten members; `sync.rs` the sync exchange.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, Member, PostcardCodec, State, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

pub use crate::config::Config;
use crate::lifeguard::Lifeguard;
use crate::outbox::Outbox;
use crate::roster::Roster;
use crate::store::Store;
use crate::types::{Liveness, MachineId, Metadata, NodeIdentity, UnitState, View};
pub use crate::wire::{FullState, StatePush, SyncAnswer, SyncOffer};
use crate::wire::{DATAGRAM_STATE, DATAGRAM_SWIM};

mod input;
mod push;
mod timers;
mod view;

/// At most this many full syncs are asked for at once by one [`Node::join`] call (the other new
/// addresses are asked when given again, at most this many per `join_retry_interval`, and
/// retried at a bounded rate, as seeds).
pub const JOIN_AT_ONCE: usize = 3;

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
    /// When [`Node::join`] last asked for syncs (it asks again about addresses given before no
    /// sooner than `join_retry_interval` after).
    joined_at: Option<Instant>,
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
    pub(crate) started: Instant,
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
    /// The last view [`Node::shared_view`] built.
    pub(crate) view_cache: Option<std::sync::Arc<View>>,
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
            joined_at: None,
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
            view_cache: None,
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

    /// Joins through these addresses (configured seeds, or bootstrap addresses read from etcd): asks
    /// for a full sync now with up to [`JOIN_AT_ONCE`] new ones (chosen at random). Addresses
    /// accumulate across calls. An address given again that is still no known member's (its sync
    /// was not picked, failed, or taught nothing of that machine, and rumour has not brought it
    /// since) is asked again, up to [`JOIN_AT_ONCE`] at random, once `join_retry_interval` has
    /// passed since this node's last join syncs: fleetd joins the machines announced in etcd that
    /// its membership does not know on every pass, so a machine announced during a cluster-wide
    /// start is learnt within about `join_retry_interval`, not only when the anti-entropy's
    /// reconnection happens to pick its address. Our own address is skipped. The seeds are retried
    /// every `join_retry_interval` while no member is alive too (along with a few members last seen
    /// down or forgotten, so that a healed partition merges back), and, along with the addresses of
    /// members it forgot, at a bounded rate otherwise, see [`Config::anti_entropy_interval`].
    ///
    /// One full sync teaches the whole membership of the peer, so a few are enough; a full sync with
    /// every address given would cost a node O(n) exchanges of O(n) each when a whole cluster starts
    /// at once and every fleetd joins every machine announced in etcd that it does not know yet.
    pub fn join(&mut self, now: Instant, addrs: &[SocketAddr]) {
        self.now = now;
        let own = self.identity().addr;
        let mut fresh = Vec::new();
        let mut again = Vec::new();
        for a in addrs.iter().copied().filter(|a| *a != own) {
            if self.seeds.insert(a) {
                fresh.push(a);
            } else {
                again.push(a);
            }
        }
        let retry = self
            .joined_at
            .is_none_or(|at| now >= at + self.config.join_retry_interval);
        if fresh.is_empty() && retry && !again.is_empty() {
            // An O(n) walk, at most once per `join_retry_interval`.
            let known: BTreeSet<SocketAddr> =
                self.roster.iter().map(|(_, k)| k.identity.addr).collect();
            again.retain(|a| !known.contains(a));
            again.sort_unstable();
            again.dedup();
            fresh = again;
        }
        if fresh.len() > JOIN_AT_ONCE {
            for k in 0..JOIN_AT_ONCE {
                let i = self.rng.random_range(k..fresh.len());
                fresh.swap(k, i);
            }
            fresh.truncate(JOIN_AT_ONCE);
        }
        if !fresh.is_empty() {
            self.joined_at = Some(now);
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
        let t = pop_or_release(&mut self.transmits)?;
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += t.data.len() as u64;
        Some(t)
    }

    /// The next peer to run a sync exchange with (see the module docs); build the offer with
    /// [`Node::sync_offer_to`]. The driver runs it when it can; a sync that fails is simply lost
    /// (the next periodic one repairs).
    pub fn poll_sync(&mut self) -> Option<SocketAddr> {
        pop_or_release(&mut self.syncs)
    }

    /// The next event. Events report what the node learned about the cluster and itself; the
    /// node's own `set_local_*` calls produce none.
    pub fn poll_event(&mut self) -> Option<Event> {
        pop_or_release(&mut self.events)
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

    /// A count that changes whenever what [`Node::liveness`] or [`Node::metadata_of`] shows may have
    /// changed: a member's liveness, identity or the time it took that state, a member added or
    /// forgotten, any origin's metadata. A caller that reads the whole membership after every input
    /// (fleetd's suspects, the simulator's) reads it again only when this moved: most inputs (probes,
    /// acks, unit states) change neither.
    pub fn members_generation(&self) -> u64 {
        self.roster
            .generation()
            .wrapping_add(self.store.metadata_generation())
    }

    /// The members this node suspects (alive, failed a probe, not refuted yet), in machine-ID order:
    /// those [`Node::liveness`] shows as [`Liveness::Suspect`], without walking the membership.
    pub fn suspects(&self) -> impl Iterator<Item = &MachineId> + '_ {
        self.roster.suspects()
    }

    /// The members, alive or suspect, whose metadata says they cannot take units now
    /// ([`Metadata::cannot_take_units`]), in machine-ID order: what a walk of [`Node::liveness`] and
    /// [`Node::metadata_of`] finds, without walking the membership.
    pub fn refusing_units(&self) -> impl Iterator<Item = &MachineId> + '_ {
        let me = &self.identity().machine_id;
        self.store.refusing().filter(move |id| {
            *id != me && self.roster.get(id).is_some_and(|k| k.state != State::Down)
        })
    }

    /// The metadata machine `id` published, as this node holds it (without copying anyone's state,
    /// unlike [`Node::view`]).
    pub fn metadata_of(&self, id: &MachineId) -> Option<&Metadata> {
        self.store.origin(id).and_then(|d| d.metadata())
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
}

/// A queue's room beyond which it is given back once drained: a join, a merge or a heal fills a
/// node's queues with one item per member of the cluster for a moment, and a queue keeps the room of
/// its longest moment for good (1,000 simulated nodes of a forming cluster kept 190 MB of it).
pub(crate) const QUEUE_ROOM_KEPT: usize = 256;

/// Gives the drained `queue`'s room back when it is over [`QUEUE_ROOM_KEPT`].
fn release_if_large<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > QUEUE_ROOM_KEPT {
        *queue = VecDeque::new();
    }
}

/// The queue's next item; once it is drained, its room goes back ([`release_if_large`]).
fn pop_or_release<T>(queue: &mut VecDeque<T>) -> Option<T> {
    let item = queue.pop_front();
    if item.is_none() {
        release_if_large(queue);
    }
    item
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn a_drained_queue_gives_back_only_a_large_room() {
        let mut q: VecDeque<u32> = (0..1_000).collect();
        release_if_large(&mut q);
        assert_eq!(q.len(), 1_000, "a queue with items is left alone");
        q.clear();
        release_if_large(&mut q);
        assert_eq!(q.capacity(), 0, "a drained large queue gives its room back");
        let mut small: VecDeque<u32> = VecDeque::with_capacity(16);
        release_if_large(&mut small);
        assert!(
            small.capacity() >= 16,
            "a small room is kept for the next items"
        );
    }
}
