//! The systemd Manager over D-Bus (zbus, tokio): what fleet's agent does to the local systemd.
//!
//! - [`Systemd::load_unit`] writes a unit file (marked as fleet's: [`OWNER_MARKER`]) into the units directory (default
//!   `/run/fleet/units`), links it as a runtime unit (`linked-runtime`), enables it at runtime when
//!   it has an `[Install]` section (`enabled-runtime`) and reloads; [`Systemd::unload_unit`] undoes it.
//! - [`Systemd::start_unit`] / [`Systemd::stop_unit`] / [`Systemd::restart_unit`] queue jobs with
//!   mode `replace`; the `*_and_wait` variants wait for the job's `JobRemoved`.
//! - [`Systemd::unit_state`] / [`Systemd::list_units`] / [`Systemd::list_fleet_units`] read states.
//! - [`Systemd::subscribe`] streams [`Event`]s pushed by systemd; nothing here polls.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fleet_systemd::Error> {
//! use fleet_systemd::{Bus, Event, Systemd};
//! let sd = Systemd::connect_bus(Bus::System).await?;
//! let mut events = sd.subscribe().await?;
//! let unit = "[Service]\nExecStart=/bin/sleep 1000\n";
//! sd.load_unit("hello.service", unit, fleet_systemd::has_install_section(unit)).await?;
//! sd.start_unit("hello.service").await?;
//! while let Some(ev) = events.next().await {
//!     match ev {
//!         Event::UnitChanged { name, state } if name == "hello.service" => {
//!             if state.active_state == fleet_systemd::ActiveState::Active {
//!                 break;
//!             }
//!         }
//!         Event::Disconnected => { /* sd.reconnect_with_backoff(..), subscribe, resync */ }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Architecture invariant: this crate is the only one that knows D-Bus; it knows nothing of
//! etcd, gossip or scheduling.

mod error;
mod events;
mod fence;
mod manager;
mod names;
mod owner;
mod state;

pub use error::{Error, Result};
pub use events::{Event, Subscription, MAX_BACKLOG};
pub use fence::{cgroup2_root, kill_unit_cgroups, CgroupKill, FENCE_DROPIN, GUARD_UNIT};
pub use manager::{
    Bus, Config, Job, LoadSpec, ReloadPolicy, Systemd, DEFAULT_CALL_TIMEOUT,
    DEFAULT_UNITS_DIRECTORY, START_PIPELINE,
};
pub use names::{
    escape_bus_label, has_install_section, unescape_bus_label, unit_name_from_path,
    unit_object_path, validate_unit_name,
};
pub use owner::{is_marked, written_by_fleet, HostUnits, OWNER_MARKER};
pub use state::{ActiveState, JobResult, LoadState, SubState, UnitState};
