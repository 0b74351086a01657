//! fleet: fleetd (the agent) and fleetctl (the CLI).
//!
//! Only this crate knows etcd, HTTP, the command line, configuration files and signals.

pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod registry;
