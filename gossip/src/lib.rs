//! Gossip for fleet: membership and liveness (SWIM via foca), dissemination of each machine's
//! metadata and unit runtime states, and the QUIC transport that carries it.
//!
//! # Map
//! - [`core`]: the sans-IO [`core::Node`]. Inputs are datagrams, sync messages, timers and `now`;
//!   outputs are datagrams, sync requests and [`core::Event`]s. The simulator drives it directly.
//! - [`transport`]: the tokio/quinn driver fleetd uses: [`transport::Gossip::start`] returns a
//!   [`transport::GossipHandle`] and the event stream.
//! - [`tls`]: mutual TLS with a cluster CA, certificate minting, and the insecure development mode.
//! - [`types`]: machine IDs, identities, metadata, unit states, the view.
//! - [`testing`]: a deterministic virtual network of nodes (tests, `examples/detection.rs`).
//!
//! # Invariants
//! - `core` reads no clock, opens no socket and draws no ambient randomness: time is passed in, the
//!   RNG is seeded by the caller. Only `transport` knows quinn and tokio; only `tls` knows rustls.
//! - Every piece of a machine's state carries a [`Stamp`] (epoch, version) set by that machine, and
//!   a stamp only ever replaces a smaller one: the newer always wins, whatever the delivery order.
//!   A restarted machine starts a larger epoch, so its fresh state replaces its previous life's.
//! - A node's `synced` stamp for an origin promises it holds the newest value of every entry of that
//!   origin up to that stamp. Out-of-order broadcasts never advance it; the origin itself and
//!   complete anti-entropy deltas do. This is what lets a digest exchange fill every gap.
//! - Garbage from a peer (datagram, stream frame, sync message) is an `Err` and a counter, never a
//!   panic, and never changes state.
//!
//! # Decisions
//! - **Identity** = machine ID + advertised address + incarnation; foca's `Addr` is the machine ID,
//!   so a newer incarnation of a machine replaces the old identity at once (restart), and
//!   [`foca::Identity::renew`] lets a node wrongly declared down rejoin by itself.
//! - **Dissemination**: each changed entry (metadata, or one unit) is one foca custom broadcast of
//!   about 100 bytes, so a change costs bytes in proportion to what changed. Removed units travel
//!   as tombstones. Anti-entropy (push-pull, three messages on one QUIC stream: membership + digest,
//!   then what each side lacks) repairs losses every `anti_entropy_interval` and is how a joiner
//!   learns everything at once: joining *is* a sync with a seed address, so seeds need no machine ID.
//! - **Transport**: one UDP port. SWIM packets are QUIC datagrams (`max_packet_size` 1100 fits before
//!   path MTU discovery); syncs and requests use bidirectional streams framed as a kind byte, then
//!   4-byte length-prefixed frames capped at 64 MiB. Connections are opened on demand and kept
//!   until idle for 60 s.
//! - **TLS**: TLS 1.3 with the ring provider (explicitly, so it does not depend on which rustls
//!   features the rest of the binary enables). All certificates carry the name `fleet`; the machine
//!   ID is the certificate's common name.
//! - **Failure detection**: see [`core::Config`] for the defaults and their reasoning (probe every
//!   400 ms, 80 ms ack timeout, 3 indirect probes, 400 ms suspicion). Lifeguard's local health
//!   awareness and dynamic suspicion timeouts are not implemented (foca offers no hook).
//!
//! # Known limits
//! - The identity inside a SWIM packet is not checked against the sender's certificate: any holder
//!   of a cluster certificate can speak for any machine. The CA is the trust boundary.
//! - Tombstones of removed units are kept for the life (epoch) of their origin.
//! - The event stream is unbounded; fleetd must keep reading it.

pub mod core;
mod store;
pub mod testing;
pub mod tls;
pub mod transport;
pub mod types;

pub use crate::core::{Config, Counters, Event, Node};
pub use crate::store::BroadcastError;
pub use crate::types::{
    Liveness, MachineId, MachineView, Metadata, NodeIdentity, Stamp, UnitState, View,
};
