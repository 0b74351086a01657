//! The verbs: each one a method of [`Ctx`], talking to fleetd through [`Api`] and writing what fleet's
//! fleetctl wrote.
//!
//! Differences from fleet v1.0.0, each the obvious fix (also in `fleetctl --help`):
//! - `load`/`start`/`stop`/`unload` wait at most `--block-attempts` checks (default 10, 500 ms apart)
//!   instead of forever; when the state is not reached they say why (no machine, no machine matching the
//!   requirements, the machine has not reported the unit...) and exit 1. The desired state stays recorded.
//! - `stop`, `unload`, `load` and `start` of a unit that does not exist (and has no local file) are errors;
//!   fleet silently skipped them. `destroy` of a missing unit still succeeds silently, as in fleet.
//! - Whether a unit can be stopped is decided from its desired state, not its current one: fleet refused to
//!   stop a unit whose machine had not reported it yet.
//! - `[X-Fleet]` problems are checked before anything is sent: unknown keys are warnings, rejected
//!   combinations are errors.
//! - `status` and `journal` need no SSH: fleetd asks the agent of the unit's machine (API extension
//!   `units/{name}/status` and `/journal`). `status` and `journal` of a global unit show every machine
//!   running it, each headed by the machine (fleet refused); `--machine` picks one.
//! - `restart` really restarts (fleet extension `POST units/{name}/restart`: systemd's `RestartUnit` on
//!   every machine running the unit); fleet v1's only cycled the desired state.
//! - `list-units`, `list-unit-files` and `list-machines` take `--json`.
//!
//! Files: `lifecycle` (submit, load, start, stop, unload, destroy, cat, restart), `wait` (waiting
//! for desired states, and why a unit is not there), `remote` (status, journal, ssh targets),
//! `lists` (the list verbs; their tables and JSON are in [`crate::render`]).
/// Write a line, ignoring failures of the terminal (a closed pipe must not turn success into failure
/// halfway through; the final table write reports its error).
macro_rules! say {
    ($w:expr, $($arg:tt)*) => {{
        let _ = writeln!($w, $($arg)*);
        let _ = $w.flush();
    }};
}

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use fleet_api_types::{Machine, Unit};
use fleet_sched::{DesiredState, MachineId, Requirements, UnitFile, UnitName};

use crate::client::{Api, Transport};
use crate::names;

mod lifecycle;
mod lists;
mod remote;
mod simulate;
#[cfg(test)]
pub(crate) mod testutil;
mod wait;

pub use crate::render::*;
pub use simulate::{capture, placement_differences};
pub use wait::explain_unplaced;

/// Time between two checks of a unit's state while blocking (fleet's `defaultSleepTime`).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Journal lines `status` shows (systemctl's default).
pub const STATUS_LINES: u32 = 10;

/// Most lines one read of `journal --follow` asks for.
pub const FOLLOW_BATCH: u32 = 1000;

/// Every this many polls, `journal --follow` of a global unit looks for machines newly running it.
pub const FOLLOW_REFRESH: u32 = 20;

/// How long `journal --follow` keeps retrying a machine that does not answer before it gives up.
pub const FOLLOW_PATIENCE: Duration = Duration::from_secs(30);

/// Above this many units, a check lists all units (100 a page) instead of fetching each one.
const BULK_THRESHOLD: usize = 20;

/// The verb that creates units lazily (decides which states `--replace` may cross).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateVerb {
    /// `submit`: replace only inactive units.
    Submit,
    /// `load`: replace inactive or loaded units.
    Load,
    /// `start`: replace units in any state.
    Start,
}

impl CreateVerb {
    /// Whether a unit stored with `desired` (`None`: fleetd gave none) may be replaced.
    fn may_replace(self, desired: Option<DesiredState>) -> bool {
        use DesiredState::{Inactive, Loaded};
        match self {
            CreateVerb::Submit => desired == Some(Inactive),
            CreateVerb::Load => matches!(desired, Some(Inactive | Loaded)),
            CreateVerb::Start => true,
        }
    }

    fn word(self) -> &'static str {
        match self {
            CreateVerb::Submit => "submit",
            CreateVerb::Load => "load",
            CreateVerb::Start => "start",
        }
    }
}

/// One fleetctl invocation: the API, where output goes, and what was learnt about machines.
pub struct Ctx<T> {
    /// The API client.
    pub api: Api<T>,
    out: Box<dyn Write>,
    err: Box<dyn Write>,
    /// Machines by ID, fetched at most once unless an unknown ID shows up.
    machines: Option<BTreeMap<MachineId, Machine>>,
    /// Whether `machines` was refetched because of an unknown ID (done at most once).
    machines_refreshed: bool,
    /// Time between two state checks while blocking.
    pub poll_interval: Duration,
}

/// What a run knows of the cluster's units: a listing when many units are named, and the units it is
/// about to create.
pub(crate) struct Known {
    snapshot: Option<BTreeMap<String, Unit>>,
    planned: BTreeMap<String, Unit>,
}

/// Ok when nothing `failed`; the error itself when one did; otherwise each is printed to `err` and
/// the result says how many `what`.
pub(crate) fn batch_result(
    err: &mut dyn Write,
    mut failed: Vec<anyhow::Error>,
    what: &str,
) -> Result<()> {
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
        n => {
            for e in &failed {
                let _ = writeln!(err, "{e:#}");
            }
            fail!("Error: {n} {what}")
        }
    }
}

/// A unit file and where it came from (for messages).
pub(crate) struct Found {
    file: UnitFile,
    origin: String,
}

/// Parse the unit name an argument refers to.
pub fn unit_name(arg: &str) -> Result<UnitName> {
    let name = names::unit_name_of(arg);
    UnitName::parse(&name).map_err(|e| worded_err!("Error: invalid unit name {name:?}: {e}"))
}

/// The unit file of a stored unit.
pub fn stored_file(u: &Unit) -> Result<UnitFile> {
    UnitFile::from_options(u.options.clone()).with_context(|| {
        format!(
            "unit {} as stored by fleetd is not a valid unit file",
            u.name
        )
    })
}

/// Whether a stored unit is global (`[X-Fleet] Global=true`).
pub fn is_global(u: &Unit) -> bool {
    requirements_of(u).is_some_and(|r| r.global)
}

pub(crate) fn requirements_of(u: &Unit) -> Option<Requirements> {
    let name = UnitName::parse(&u.name).ok()?;
    let file = UnitFile::from_options(u.options.clone()).ok()?;
    Requirements::from_unit(&name, &file).ok()
}

/// Read and parse a local unit file; `Ok(None)` when there is no such file.
pub(crate) fn read_unit_file(path: &Path) -> Result<Option<UnitFile>> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(worded_err!(
                "Error reading unit file {}: {e}",
                path.display()
            ))
        }
    };
    let text = String::from_utf8(text)
        .map_err(|_| worded_err!("Error reading unit file {}: not UTF-8 text", path.display()))?;
    UnitFile::parse(&text)
        .map(Some)
        .map_err(|e| worded_err!("Error reading unit file {}: {e}", path.display()))
}

impl<T: Transport> Ctx<T> {
    /// A context writing to `out` (results) and `err` (warnings, progress on failure).
    pub fn new(api: Api<T>, out: Box<dyn Write>, err: Box<dyn Write>) -> Self {
        Ctx {
            api,
            out,
            err,
            machines: None,
            machines_refreshed: false,
            poll_interval: POLL_INTERVAL,
        }
    }

    async fn machine_map(&mut self, refresh: bool) -> Result<&BTreeMap<MachineId, Machine>> {
        if refresh || self.machines.is_none() {
            let list = self
                .api
                .machines()
                .await
                .context(worded!("Error retrieving list of machines"))?;
            self.machines = Some(list.into_iter().map(|m| (m.id.clone(), m)).collect());
        }
        Ok(self.machines.as_ref().expect("just filled"))
    }

    /// `id8.../IP` for a machine, refreshing the machine list once when the ID is unknown; best effort.
    async fn legend(&mut self, id: &MachineId) -> String {
        let known = matches!(&self.machines, Some(m) if m.contains_key(id));
        if !known && (self.machines.is_none() || !self.machines_refreshed) {
            let refresh = self.machines.is_some();
            self.machines_refreshed |= refresh;
            let _ = self.machine_map(refresh).await;
        }
        let m = self.machines.as_ref().and_then(|m| m.get(id));
        machine_full_legend(id, m, false)
    }

    async fn get_unit(&mut self, name: &UnitName) -> Result<Option<Unit>> {
        self.api
            .unit(name.as_str())
            .await
            .with_context(|| worded!("Error retrieving unit {name} from fleetd"))
    }

    fn write_out(&mut self, text: &str) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|_| self.out.flush())
            .context(worded!("Error writing output"))
    }
}

pub(crate) fn join(names: &[UnitName]) -> String {
    names
        .iter()
        .map(UnitName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
