//! Gossip for fleet: membership and liveness (SWIM via foca), dissemination of each machine's
//! metadata and unit runtime states, and the QUIC transport that carries it.
//!
//! - [`core`]: the sans-IO [`core::Node`]. Inputs are datagrams, sync messages, timers and `now`;
//!   outputs are datagrams, sync requests and [`core::Event`]s. The simulator drives it directly.
//! - [`transport`]: the tokio/quinn driver fleetd uses: [`transport::Gossip::start`].
//! - [`tls`]: mutual TLS with a cluster CA, certificate minting, and the insecure development mode.
//! - [`types`]: machine IDs, identities, metadata, unit states, the view.

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
