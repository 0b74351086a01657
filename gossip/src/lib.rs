//! Gossip for fleet, sans-IO: membership and liveness (SWIM via foca) and the dissemination of each
//! machine's metadata and unit runtime states. The QUIC transport and TLS that carry it in fleetd are
//! the separate crate `fleet-gossip-quic`; the simulator drives this crate directly.
//!
//! # Map
//! - [`core`]: the sans-IO [`core::Node`]. Inputs are datagrams, sync messages, timers and `now`;
//!   outputs are datagrams, sync requests and [`core::Event`]s.
//! - [`types`]: machine IDs, identities, metadata, unit states, the view.
//! - [`crypto`]: the [`crypto::Credentials`] the core signs and checks state with (implemented in
//!   `fleet-gossip-quic` with the machine's TLS key and the cluster CA), and how certificates
//!   travel with the state.
//! - [`wire`]: datagrams (a kind byte, then a foca packet or a state push) and sync messages, with
//!   their size caps.
//! - `store` (versioned state, bucketed digest), `outbox` (updates being passed on), `roster`
//!   (the node's index of foca's membership), `trust` (who may say what), [`vouch`] (refutations
//!   only in the refuted machine's signed word), [`budget`] (a budget of refused input per peer),
//!   `lifeguard`, `sync`, `config`.
//! - `testing` (cargo feature `testing`): a deterministic virtual network of nodes (the crate's
//!   tests, `examples/detection.rs`, `examples/phases.rs`).
//!
//! # Invariants
//! - The crate reads no clock, opens no socket and draws no ambient randomness: time is passed in,
//!   the RNG is seeded by the caller. Cargo enforces it: no tokio, quinn or rustls among its
//!   dependencies (checked by `tests/boundaries.rs` at the workspace root).
//! - Every piece of a machine's state carries a [`Stamp`] (epoch, version) set by that machine, and
//!   a stamp only ever replaces a smaller one: the newer always wins, whatever the delivery order.
//!   A restarted machine starts a larger epoch, so its fresh state replaces its previous life's.
//! - A node's `synced` stamp for an origin promises it holds the newest value of every entry of that
//!   origin up to that stamp. Each change of an origin has the next version; a push advances
//!   `synced` only over contiguous versions, and complete anti-entropy deltas advance it to the
//!   sender's. This is what lets a digest exchange fill every gap.
//! - Per protocol period a node's work and bytes do not grow with the cluster when nothing
//!   changes: probes go to one member, pushes only carry changes, and the periodic anti-entropy
//!   compares bucket sums (at most 256 × 4 bytes) and details only the differing buckets. Only
//!   joins and heals exchange whole memberships.
//! - Garbage from a peer (datagram, stream frame, sync message) is an `Err` and a counter, never a
//!   panic, and never changes state.
//! - A peer speaks only for itself: with the machine ID its transport authenticated (the
//!   `*_from` methods), an input whose sender claims another machine is refused whole. A rumour
//!   never installs a new identity of a machine the node knows (the node asks that machine
//!   directly), and a machine's state is accepted only up to the epoch of its known identity.
//!   Rumours about others can only lower their liveness: a relayed update that raises a member's
//!   foca incarnation (a refutation) reaches foca only up to the incarnation the member itself
//!   vouched for in a signed entry ([`vouch`]); until then it is held, and a node whose own probe
//!   of the member failed asks the member directly.
//! - A peer whose input keeps being refused (forged signatures, certificates, refutations) costs a
//!   bounded amount of checking: beyond its budget its relayed input is dropped unchecked
//!   ([`budget`]).
//! - A machine's state is stored or passed on only with its origin's signature: every update
//!   (metadata, a unit, a suspicion claim) carries one, checked against the origin's certificate
//!   (checked in turn against the cluster CA) through [`crypto::Credentials`], whoever relays it;
//!   a sync's `synced` stamp is taken only up to the newest checked entry. The checks run only on
//!   news, so replays cost no signature check. [`crypto::Unsigned`] (the insecure development
//!   mode, the simulator) signs and checks nothing.
//! - [`core::Node`] looks members up in its own index (`roster`), never by walking foca's list on
//!   a hot path; the roster is reconciled with foca's list every anti-entropy interval.
//!
//! # Decisions
//! - **Identity** = machine ID + advertised address + incarnation; foca's `Addr` is the machine ID,
//!   so a newer incarnation of a machine replaces the old identity at once (restart), and
//!   [`foca::Identity::renew`] lets a node wrongly declared down rejoin by itself.
//! - **Dissemination**: membership in foca's SWIM packets; state outside foca's broadcast queue
//!   (which walks its whole backlog on every send): each changed entry (metadata, or one unit) is
//!   an update of about 100 bytes that the node pushes in datagrams of its own to `gossip_fanout`
//!   random live members per `gossip_interval`, and that every member passes on at most
//!   `max_transmissions` times when it is news (news learnt by a sync only when it is a few updates:
//!   a joiner does not push on the cluster's state). Removed units travel as tombstones. Anti-entropy
//!   (three messages on one QUIC stream) repairs losses every `anti_entropy_interval`: a summary
//!   of the state digest, then details of the differing buckets, then what the peer lacks. A join
//!   is a full exchange (membership, digest, state) with a seed address, so a joiner learns
//!   everything at once and seeds need no machine ID.
//! - **Transport** (`fleet-gossip-quic`): SWIM packets need only fit `max_packet_size` (1100 fits a
//!   QUIC datagram before path MTU discovery); sync messages are byte strings the driver carries
//!   over a stream.
//! - **Failure detection**: see [`core::Config`] for the defaults and their reasoning (probe every
//!   400 ms, 80 ms ack timeout, 3 indirect probes, suspicion 1.5 s shrinking to 500 ms with
//!   confirmations) and `lifeguard` for Lifeguard on top of foca (local health, dynamic suspicion,
//!   refutation priority), done by choosing when foca's timers run.
//!
//! # Known limits
//! - Relayed rumours that lower a known identity's liveness (suspect, down) follow SWIM's rules and
//!   are not signed: any member can make a live machine rejoin by declaring it down. A machine
//!   everyone forgot can be re-introduced by anyone for one detection time.
//! - Signatures cost: 70-72 bytes per update on the wire and in the store (ECDSA P-256), one
//!   signature check per update that is news, and a joiner checks every entry it learns.
//! - Tombstones of removed units are kept for the life (epoch) of their origin.
//! - The event stream is unbounded; fleetd must keep reading it.

pub mod budget;
mod config;
pub mod core;
pub mod crypto;
mod dense;
mod lifeguard;
mod outbox;
mod roster;
mod shared;
mod store;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod trust;
pub mod types;
pub mod vouch;
pub mod wire;

/// foca, whose `Member` and packet layout appear in this crate's API ([`wire::FullState::new`])
/// and which tests use to build SWIM packets of their own.
pub use foca;

pub use crate::core::{Config, Counters, Event, Node};
pub use crate::crypto::{Credentials, Unsigned};
pub use crate::shared::Shared;
pub use crate::store::{Entry, EntryKey, OriginDelta, Update};
pub use crate::types::{
    Liveness, MachineId, MachineKey, MachineView, Machines, Metadata, NodeIdentity, Stamp,
    UnitState, View,
};
