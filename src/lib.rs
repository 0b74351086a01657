//! fleet: fleetd (the agent and the HTTP API server). fleetctl is the `fleetctl` package.
//!
//! Only this crate knows etcd, HTTP, the command line, configuration files and signals.

pub mod agent;
pub mod api;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod reserved;
pub mod runtime_lock;
