//! fleet-sim: a deterministic discrete-event simulator of a fleet cluster.
//!
//! It drives the real sans-IO cores for many machines in one process: the gossip node
//! ([`fleet_gossip::core::Node`], foca SWIM), placement (fleetd's incremental [`fleet_sched::placement::Planner`], the plan of `schedule`) and
//! reconcile ([`fleet_sched::reconcile::reconcile`]), with a simulated clock, network, etcd and
//! systemd, under a timeline of faults read from a scenario file. A seed reproduces a run exactly.
//!
//! # Map
//! - [`scenario`]: the TOML scenario format (machines, units folder, settings, faults).
//! - [`selector`]: which machines a fault concerns (metadata, ID prefix, index...), strictly resolved.
//! - [`sim`]: the event loop, the machines (gossip node, agent rules, systemd model), faults and the
//!   invariant checks.
//! - [`etcd`]: the in-memory etcd (claim keys, leases, revisions, the agents' transactions).
//! - [`net`]: link rules (partitions, loss, delay).
//! - [`model`]: the SWIM model used instead of real gossip cores for very large clusters.
//! - [`outcome`]: the operator's answers (moves, units that cannot be placed and why, time running
//!   nowhere, load), derived from what the simulated systemd ran.
//! - [`report`]: metrics and the report (text, JSON, SVG).
//! - [`shrink`]: reduce a failing fault timeline to a minimal one.
//!
//! # Invariants
//! - No wall clock, no ambient randomness: every random choice comes from the seed, every
//!   iteration order is fixed, so the same scenario and seed give a byte-identical report.
//! - The report says what was real code and what was modelled (`gossip_mode`, `gossip.source`).
//!
//! ```no_run
//! use fleet_sim::{scenario::Scenario, sim::Sim};
//! let sc = Scenario::load(std::path::Path::new("scenarios/rack-loss.toml")).unwrap();
//! let report = Sim::new(&sc, 42).unwrap().run();
//! println!("{}", report.to_text());
//! ```

pub mod agent;
pub mod check;
pub mod etcd;
pub mod model;
pub mod net;
pub mod outcome;
pub mod report;
pub mod scenario;
pub mod selector;
pub mod shrink;
pub mod sim;
