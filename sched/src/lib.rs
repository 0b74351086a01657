//! fleet's pure core: the unit model ([X-Fleet] requirements), placement and reconcile.
//!
//! This crate does no I/O: no sockets, no clock, no randomness of its own.
//!
//! - [`name`]: validated unit names ([`UnitName`]) and specifier expansion.
//! - [`unitfile`]: systemd unit file syntax ([`UnitFile`]), serialized and hashed exactly as fleet v1 did.
//! - [`requirements`]: `[X-Fleet]` options ([`Requirements`]) and the combinations fleet rejects.
//! - [`state`]: the desired state a user sets ([`DesiredState`]).
//! - [`machine`]: machine identities ([`MachineId`]).
//! - [`placement`]: where units run ([`schedule`] gives a [`Plan`]), decided identically by every agent.
//! - `testing` (feature `testing`): test oracles, among them an independent placement checker.
//! - `mutation` (feature `mutations`, fleet-sim's tests only): planted placement bugs.

pub mod machine;
#[cfg(feature = "mutations")]
pub mod mutation;
pub mod name;
pub mod placement;
pub mod reconcile;
pub mod requirements;
pub mod state;
pub mod systemd_state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unitfile;

pub use machine::{MachineId, MachineIdError};
pub use name::{NameError, UnitName};
pub use placement::{schedule, Decision, MachineInfo, Plan, Reason, UnitInfo};
pub use requirements::{glob_match, RequirementError, Requirements};
pub use state::{DesiredState, StateError};
pub use unitfile::{ParseError, UnitFile, UnitHash, UnitOption};
