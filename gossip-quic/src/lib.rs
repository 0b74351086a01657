//! fleet's gossip over QUIC: the tokio/quinn driver of the sans-IO [`fleet_gossip`] core, and the
//! mutual TLS that authenticates peers.
//!
//! # Map
//! - [`transport`]: the driver fleetd uses: [`transport::Gossip::start`] returns a
//!   [`transport::GossipHandle`] and the event stream.
//! - [`frame`]: stream framing without I/O (kind bytes, caps, the length check before a read).
//! - [`seal`]: sealed datagrams without I/O (layout, signed bytes, the replay window).
//! - [`tls`]: mutual TLS with a cluster CA, certificate minting, and the insecure development mode.
//! - [`credentials`]: the core's signer and checker of state updates (the machine's TLS key, the
//!   cluster CA; rustls and ring), so that no peer can pass on state in another machine's name.
//!
//! # Invariants
//! - The protocol's rules live in `fleet_gossip`; this crate only moves bytes, reads the clock and
//!   authenticates. Only `transport` knows quinn and tokio; `tls` builds the rustls (and quinn
//!   crypto) configurations.
//! - Garbage from a peer (stream kind, oversized or undecodable frame) is an error and a counter,
//!   never a panic.
//!
//! # Decisions
//! - **Transport**: one UDP port. SWIM packets are QUIC datagrams; syncs and requests use
//!   bidirectional streams framed as a kind byte, then 4-byte length-prefixed frames. Connections
//!   are opened on demand and kept until idle for 60 s, without path MTU discovery (datagrams fit
//!   QUIC's minimum MTU; its probes were 70% of a connection set-up's bytes).
//! - **Sealed datagrams**: with mutual TLS, a SWIM packet, push or summary offer for a member
//!   without an open connection goes as a plain UDP datagram on the same port, signed with the
//!   machine's key and checked against the sender's certificate that travels with the state
//!   ([`seal`], `transport/sealed.rs`): in a cluster of 1,000 or more most contacts found no open
//!   connection, and a set-up (2.6 + 1.6 kB) was 90% of each member's bytes.
//! - **TLS**: TLS 1.3 with the ring provider (explicitly, so it does not depend on which rustls
//!   features the rest of the binary enables). All certificates carry the name `fleet`; each names
//!   its machine (URI `urn:fleet:machine:<ID>`, and the common name). The transport hands the core
//!   the machine each connection's certificate names with every datagram and sync, and the core
//!   refuses a sender that claims another machine.

pub mod credentials;
pub mod frame;
pub mod seal;
pub mod tls;
pub mod transport;
