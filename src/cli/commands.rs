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

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use fleet_sched::{
    schedule, Decision, DesiredState, MachineId, MachineInfo, Requirements, UnitFile, UnitInfo,
    UnitName,
};

use super::args::{
    BlockFlags, JournalArgs, ListMachinesArgs, ListUnitFilesArgs, ListUnitsArgs, SshArgs,
};
use super::client::{Api, Transport};
use super::names;
use super::table::Table;
use fleet_api_types::{Machine, Unit, UnitState};

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

/// Desired/current state words.
const INACTIVE: &str = "inactive";
const LOADED: &str = "loaded";
const LAUNCHED: &str = "launched";

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
    fn may_replace(self, desired: &str) -> bool {
        match self {
            CreateVerb::Submit => desired == INACTIVE,
            CreateVerb::Load => desired == INACTIVE || desired == LOADED,
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
    machines: Option<BTreeMap<String, Machine>>,
    /// Whether `machines` was refetched because of an unknown ID (done at most once).
    machines_refreshed: bool,
    /// Time between two state checks while blocking.
    pub poll_interval: Duration,
}

/// What a run knows of the cluster's units: a listing when many units are named, and the units it is
/// about to create.
struct Known {
    snapshot: Option<BTreeMap<String, Unit>>,
    planned: BTreeMap<String, Unit>,
}

/// Ok when nothing `failed`; the error itself when one did; otherwise each is printed to `err` and
/// the result says how many `what`.
fn batch_result(err: &mut dyn Write, mut failed: Vec<anyhow::Error>, what: &str) -> Result<()> {
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
        n => {
            for e in &failed {
                let _ = writeln!(err, "{e:#}");
            }
            bail!("Error: {n} {what}")
        }
    }
}

/// A unit file and where it came from (for messages).
struct Found {
    file: UnitFile,
    origin: String,
}

/// Write a line, ignoring failures of the terminal (a closed pipe must not turn success into failure
/// halfway through; the final table write reports its error).
macro_rules! say {
    ($w:expr, $($arg:tt)*) => {{
        let _ = writeln!($w, $($arg)*);
        let _ = $w.flush();
    }};
}

/// Parse the unit name an argument refers to.
pub fn unit_name(arg: &str) -> Result<UnitName> {
    let name = names::unit_name_of(arg);
    UnitName::parse(&name).map_err(|e| anyhow!("Error: invalid unit name {name:?}: {e}"))
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

fn requirements_of(u: &Unit) -> Option<Requirements> {
    let name = UnitName::parse(&u.name).ok()?;
    let file = UnitFile::from_options(u.options.clone()).ok()?;
    Requirements::from_unit(&name, &file).ok()
}

/// Read and parse a local unit file; `Ok(None)` when there is no such file.
fn read_unit_file(path: &Path) -> Result<Option<UnitFile>> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("Error reading unit file {}: {e}", path.display())),
    };
    let text = String::from_utf8(text)
        .map_err(|_| anyhow!("Error reading unit file {}: not UTF-8 text", path.display()))?;
    UnitFile::parse(&text)
        .map(Some)
        .map_err(|e| anyhow!("Error reading unit file {}: {e}", path.display()))
}

/// `id8...` or the full ID.
pub fn machine_id_legend(id: &str, full: bool) -> String {
    if full {
        id.to_string()
    } else {
        let short: String = id
            .chars()
            .take(fleet_sched::machine::SHORT_ID_LEN)
            .collect();
        format!("{short}...")
    }
}

/// `id8.../IP` (or the full ID with `--full`); just the ID legend when the IP is unknown.
pub fn machine_full_legend(id: &str, machine: Option<&Machine>, full: bool) -> String {
    let legend = machine_id_legend(id, full);
    match machine {
        Some(m) if !m.primary_ip.is_empty() => format!("{legend}/{}", m.primary_ip),
        _ => legend,
    }
}

/// Metadata as sorted `k=v,k=v`, `-` when empty.
pub fn format_metadata(metadata: &BTreeMap<String, String>) -> String {
    if metadata.is_empty() {
        return "-".to_string();
    }
    metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// Split and check `--fields` against the valid names.
fn parse_fields<'a>(fields: &'a str, valid: &[&str]) -> Result<Vec<&'a str>> {
    if fields.is_empty() {
        bail!("Error: must define output format (--fields)");
    }
    let cols: Vec<&str> = fields.split(',').collect();
    for c in &cols {
        if !valid.contains(c) {
            bail!(
                "Error: invalid key in output format: {c:?} (valid: {})",
                valid.join(",")
            );
        }
    }
    Ok(cols)
}

/// Valid `list-unit-files` fields.
pub const UNIT_FILE_FIELDS: &[&str] = &[
    "unit", "hash", "dstate", "state", "target", "desc", "global", "tmachine",
];
/// Valid `list-units` fields.
pub const UNIT_FIELDS: &[&str] = &["unit", "machine", "active", "sub", "hash", "load"];
/// Valid `list-machines` fields.
pub const MACHINE_FIELDS: &[&str] = &["machine", "ip", "metadata"];

/// The `list-unit-files` table for `units` (sorted here by name).
pub fn unit_files_table(
    units: &[Unit],
    machines: &BTreeMap<String, Machine>,
    cols: &[&str],
    full: bool,
    legend: bool,
) -> Table {
    let mut sorted: Vec<&Unit> = units.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut t = Table::new();
    if legend {
        t.header(cols);
    }
    for u in sorted {
        let file = UnitFile::from_options(u.options.clone()).ok();
        let global = requirements_of(u).is_some_and(|r| r.global);
        let target = || {
            if global {
                "global".to_string()
            } else if u.machine_id.is_empty() {
                "-".to_string()
            } else {
                machine_full_legend(&u.machine_id, machines.get(&u.machine_id), full)
            }
        };
        let row = cols
            .iter()
            .map(|c| match *c {
                "unit" => u.name.clone(),
                "hash" => match &file {
                    Some(f) if full => f.hash().to_string(),
                    Some(f) => f.hash().short(),
                    None => "-".to_string(),
                },
                "dstate" if u.damaged.is_some() => format!("{} (damaged)", dash(&u.desired_state)),
                "dstate" => dash(&u.desired_state),
                "state" if global => "-".to_string(),
                "state" => dash(&u.current_state),
                "target" | "tmachine" => target(),
                "desc" => file
                    .as_ref()
                    .and_then(|f| f.description().map(str::to_string))
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "-".to_string()),
                "global" => global.to_string(),
                other => unreachable!("field {other} was validated"),
            })
            .collect();
        t.row(row);
    }
    t
}

/// The `list-units` table for `states` (sorted here by unit, then machine).
pub fn units_table(
    states: &[UnitState],
    machines: &BTreeMap<String, Machine>,
    cols: &[&str],
    full: bool,
    legend: bool,
) -> Table {
    let mut sorted: Vec<&UnitState> = states.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    let mut t = Table::new();
    if legend {
        t.header(cols);
    }
    for s in sorted {
        let row = cols
            .iter()
            .map(|c| match *c {
                "unit" => dash(&s.name),
                "machine" if s.machine_id.is_empty() => "-".to_string(),
                "machine" => machine_full_legend(&s.machine_id, machines.get(&s.machine_id), full),
                "active" => dash(&s.systemd_active_state),
                "sub" => dash(&s.systemd_sub_state),
                "load" => dash(&s.systemd_load_state),
                "hash" if s.hash.is_empty() => "-".to_string(),
                "hash" if full => s.hash.clone(),
                "hash" => s.hash.chars().take(7).collect(),
                other => unreachable!("field {other} was validated"),
            })
            .collect();
        t.row(row);
    }
    t
}

/// The `list-machines` table (sorted here by ID).
pub fn machines_table(machines: &[Machine], cols: &[&str], full: bool, legend: bool) -> Table {
    let mut sorted: Vec<&Machine> = machines.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut t = Table::new();
    if legend {
        t.header(cols);
    }
    for m in sorted {
        let row = cols
            .iter()
            .map(|c| match *c {
                "machine" => machine_id_legend(&m.id, full),
                "ip" => dash(&m.primary_ip),
                "metadata" => format_metadata(&m.metadata),
                other => unreachable!("field {other} was validated"),
            })
            .collect();
        t.row(row);
    }
    t
}

/// `Some(s)` as a JSON string, `null` when empty.
fn json_str(s: &str) -> serde_json::Value {
    if s.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(s.to_string())
    }
}

/// `list-unit-files --json`: one object per unit (sorted by name), keyed by `cols`, with the values
/// `--full` shows (`null` for `-`, `global` a boolean).
pub fn unit_files_json(
    units: &[Unit],
    machines: &BTreeMap<String, Machine>,
    cols: &[&str],
) -> serde_json::Value {
    use serde_json::Value;
    let mut sorted: Vec<&Unit> = units.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let rows = sorted.into_iter().map(|u| {
        let file = UnitFile::from_options(u.options.clone()).ok();
        let global = requirements_of(u).is_some_and(|r| r.global);
        let obj = cols.iter().map(|c| {
            let v = match *c {
                "unit" => json_str(&u.name),
                "hash" => file
                    .as_ref()
                    .map_or(Value::Null, |f| Value::String(f.hash().to_string())),
                "dstate" => json_str(&u.desired_state),
                "state" if global => Value::Null,
                "state" => json_str(&u.current_state),
                "target" | "tmachine" if global => Value::String("global".into()),
                "target" | "tmachine" if u.machine_id.is_empty() => Value::Null,
                "target" | "tmachine" => Value::String(machine_full_legend(
                    &u.machine_id,
                    machines.get(&u.machine_id),
                    true,
                )),
                "desc" => json_str(file.as_ref().and_then(|f| f.description()).unwrap_or("")),
                "global" => Value::Bool(global),
                other => unreachable!("field {other} was validated"),
            };
            (c.to_string(), v)
        });
        Value::Object(obj.collect())
    });
    Value::Array(rows.collect())
}

/// `list-units --json`: one object per unit and machine (sorted), keyed by `cols`, with the values
/// `--full` shows (`null` for `-`).
pub fn units_json(
    states: &[UnitState],
    machines: &BTreeMap<String, Machine>,
    cols: &[&str],
) -> serde_json::Value {
    use serde_json::Value;
    let mut sorted: Vec<&UnitState> = states.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    let rows = sorted.into_iter().map(|s| {
        let obj = cols.iter().map(|c| {
            let v = match *c {
                "unit" => json_str(&s.name),
                "machine" if s.machine_id.is_empty() => Value::Null,
                "machine" => Value::String(machine_full_legend(
                    &s.machine_id,
                    machines.get(&s.machine_id),
                    true,
                )),
                "active" => json_str(&s.systemd_active_state),
                "sub" => json_str(&s.systemd_sub_state),
                "load" => json_str(&s.systemd_load_state),
                "hash" => json_str(&s.hash),
                other => unreachable!("field {other} was validated"),
            };
            (c.to_string(), v)
        });
        Value::Object(obj.collect())
    });
    Value::Array(rows.collect())
}

/// `list-machines --json`: one object per machine (sorted by ID), keyed by `cols`: `machine` the full
/// ID, `ip` (`null` when unknown), `metadata` an object.
pub fn machines_json(machines: &[Machine], cols: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    let mut sorted: Vec<&Machine> = machines.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let rows = sorted.into_iter().map(|m| {
        let obj = cols.iter().map(|c| {
            let v = match *c {
                "machine" => json_str(&m.id),
                "ip" => json_str(&m.primary_ip),
                "metadata" => Value::Object(
                    m.metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
                other => unreachable!("field {other} was validated"),
            };
            (c.to_string(), v)
        });
        Value::Object(obj.collect())
    });
    Value::Array(rows.collect())
}

/// Pretty JSON and a newline.
fn json_text(v: &serde_json::Value) -> String {
    let mut t = serde_json::to_string_pretty(v).expect("a JSON value always serializes");
    t.push('\n');
    t
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

    async fn machine_map(&mut self, refresh: bool) -> Result<&BTreeMap<String, Machine>> {
        if refresh || self.machines.is_none() {
            let list = self
                .api
                .machines()
                .await
                .context("Error retrieving list of machines")?;
            self.machines = Some(list.into_iter().map(|m| (m.id.clone(), m)).collect());
        }
        Ok(self.machines.as_ref().expect("just filled"))
    }

    /// `id8.../IP` for a machine, refreshing the machine list once when the ID is unknown; best effort.
    async fn legend(&mut self, id: &str) -> String {
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
            .with_context(|| format!("Error retrieving unit {name} from fleetd"))
    }

    /// `submit`.
    pub async fn submit(&mut self, args: &[String], replace: bool) -> Result<()> {
        self.lazy_create(args, replace, CreateVerb::Submit).await?;
        Ok(())
    }

    /// Make sure every argument's unit exists in the cluster (fleet's `lazyCreateUnits`), creating it from
    /// the local file or a template. Returns the unit names.
    async fn lazy_create(
        &mut self,
        args: &[String],
        replace: bool,
        verb: CreateVerb,
    ) -> Result<Vec<UnitName>> {
        let parsed = args
            .iter()
            .map(|a| unit_name(a).map(|n| (a.as_str(), n)))
            .collect::<Result<Vec<_>>>()?;
        // Many units: list the cluster's units once instead of one lookup per argument.
        let snapshot = if parsed.len() > BULK_THRESHOLD {
            let all = self
                .api
                .units()
                .await
                .context("Error retrieving list of units from fleetd")?;
            Some(all.into_iter().map(|u| (u.name.clone(), u)).collect())
        } else {
            None
        };
        let mut known = Known {
            snapshot,
            planned: BTreeMap::new(),
        };
        let mut names = Vec::with_capacity(parsed.len());
        let mut seen = std::collections::BTreeSet::new();
        let mut to_create: Vec<(UnitName, UnitFile)> = Vec::new();
        for (arg, name) in parsed {
            // A unit named twice is handled once.
            if seen.insert(name.clone()) {
                if let Some(file) = self.ensure_unit(arg, &name, replace, verb, &known).await? {
                    known.planned.insert(
                        name.to_string(),
                        Unit {
                            name: name.to_string(),
                            options: file.options().to_vec(),
                            desired_state: INACTIVE.to_string(),
                            ..Unit::default()
                        },
                    );
                    to_create.push((name.clone(), file));
                }
                names.push(name);
            }
        }
        self.create_units(to_create).await?;
        Ok(names)
    }

    /// A unit about to be created in this run, else from the snapshot when there is one, else from
    /// fleetd.
    async fn lookup(&mut self, name: &UnitName, known: &Known) -> Result<Option<Unit>> {
        if let Some(u) = known.planned.get(name.as_str()) {
            return Ok(Some(u.clone()));
        }
        match &known.snapshot {
            Some(map) => Ok(map.get(name.as_str()).cloned()),
            None => self.get_unit(name).await,
        }
    }

    /// What `arg` needs: `Some(file)` to create (or replace) unit `name` with, `None` when the stored
    /// unit stays as it is (with fleet's warnings when the local file differs).
    async fn ensure_unit(
        &mut self,
        arg: &str,
        name: &UnitName,
        replace: bool,
        verb: CreateVerb,
        known: &Known,
    ) -> Result<Option<UnitFile>> {
        let local_path = names::local_path_of(arg);
        let existing = self.lookup(name, known).await?;
        let file = match existing {
            Some(stored) => {
                let stored_hash = stored_file(&stored)?.hash();
                let local = self.local_file(&local_path, name)?;
                let differs = local
                    .as_ref()
                    .map(|f| f.file.hash() != stored_hash)
                    .unwrap_or(false);
                if !replace {
                    if let (true, Some(f)) = (differs, &local) {
                        say!(
                            self.err,
                            "WARNING: Unit {name} in registry differs from local unit file {}. Add --replace to override.",
                            f.origin
                        );
                    }
                    return Ok(None);
                }
                let Some(local) = local else {
                    bail!(
                        "Error: cannot replace unit {name}: no local unit file {} (or template next to it)",
                        local_path.display()
                    );
                };
                if !differs {
                    say!(
                        self.out,
                        "Found same Unit({name}) in Registry, nothing to do"
                    );
                    return Ok(None);
                }
                if !verb.may_replace(&stored.desired_state) {
                    say!(
                        self.err,
                        "Warning: can not replace Unit({name}) in state '{}' with {}, use the appropriate command",
                        stored.desired_state,
                        verb.word()
                    );
                    return Ok(None);
                }
                local.file
            }
            None => self.find_new_unit_file(&local_path, name, known).await?,
        };
        Ok(Some(file))
    }

    /// The local file to compare a stored unit with: the argument's file, else (for an instance) the
    /// template file next to it.
    fn local_file(&self, path: &Path, name: &UnitName) -> Result<Option<Found>> {
        if let Some(file) = read_unit_file(path)? {
            return Ok(Some(Found {
                file,
                origin: path.display().to_string(),
            }));
        }
        if let Some(template) = name.template() {
            let tpath = names::template_path_next_to(path, template.as_str());
            if let Some(file) = read_unit_file(&tpath)? {
                return Ok(Some(Found {
                    file,
                    origin: tpath.display().to_string(),
                }));
            }
        }
        Ok(None)
    }

    /// Where a unit that is not in the cluster comes from: the local file, else the template in the
    /// cluster, else the template file next to the argument.
    async fn find_new_unit_file(
        &mut self,
        path: &Path,
        name: &UnitName,
        known: &Known,
    ) -> Result<UnitFile> {
        if let Some(file) = read_unit_file(path)? {
            return Ok(file);
        }
        let Some(template) = name.template() else {
            bail!(
                "Error: unable to find unit {name} in the cluster or on the filesystem (no file {})",
                path.display()
            );
        };
        let tpath: PathBuf = names::template_path_next_to(path, template.as_str());
        if let Some(stored) = self.lookup(&template, known).await? {
            let file = stored_file(&stored)?;
            if let Ok(Some(local)) = read_unit_file(&tpath) {
                if local.hash() != file.hash() {
                    say!(
                        self.err,
                        "WARNING: Unit {template} in registry differs from local template unit file {}. Add --replace to override.",
                        tpath.display()
                    );
                }
            }
            return Ok(file);
        }
        match read_unit_file(&tpath)? {
            Some(file) => Ok(file),
            None => bail!(
                "Error: unable to find unit {name} or its template {template} in the cluster or on the filesystem (no file {} or {})",
                path.display(),
                tpath.display()
            ),
        }
    }

    /// Check every unit's `[X-Fleet]` (any error stops everything before a request is sent), print
    /// their warnings, PUT them all at once ([`Api::put_units`]), print `Unit X inactive` for each in
    /// order. Units that could not be created are reported after the others.
    async fn create_units(&mut self, units: Vec<(UnitName, UnitFile)>) -> Result<()> {
        let mut api_units = Vec::with_capacity(units.len());
        for (name, file) in units {
            let req = Requirements::from_unit(&name, &file).map_err(|e| {
                anyhow!("Error creating unit {name}: invalid [X-Fleet] options: {e}")
            })?;
            for w in &req.warnings {
                say!(self.err, "WARNING: Unit {name}: {w}");
            }
            api_units.push(Unit {
                name: name.to_string(),
                options: file.into_options(),
                ..Unit::default()
            });
        }
        let results = self.api.put_units(&api_units).await;
        let mut failed = Vec::new();
        for (u, r) in api_units.iter().zip(results) {
            match r {
                Ok(()) => say!(self.out, "Unit {} inactive", u.name),
                Err(e) => failed
                    .push(anyhow::Error::new(e).context(format!("Error creating unit {}", u.name))),
            }
        }
        batch_result(&mut self.err, failed, "units could not be created")
    }

    /// `load` (`target` = loaded) and `start` (`target` = launched).
    pub async fn activate(
        &mut self,
        args: &[String],
        replace: bool,
        block: &BlockFlags,
        verb: CreateVerb,
    ) -> Result<()> {
        let (target, word) = match verb {
            CreateVerb::Load => (LOADED, "load"),
            CreateVerb::Start => (LAUNCHED, "start"),
            CreateVerb::Submit => unreachable!("submit does not activate"),
        };
        // A template can never be loaded or launched: say so before creating anything.
        for arg in args {
            let name = unit_name(arg)?;
            if name.is_template() {
                bail!(
                    "Error: unit {name} is a template: it can be submitted but not {target}; {word} an instance such as {}@1.{}",
                    name.prefix(),
                    name.suffix()
                );
            }
        }
        let names = self.lazy_create(args, replace, verb).await?;
        self.set_states(&names, target).await?;
        if block.no_block {
            for name in &names {
                say!(self.out, "Triggered unit {name} {word}");
            }
            return Ok(());
        }
        self.wait_for(&names, target, block.block_attempts).await
    }

    /// Sets the desired state of every unit of `names` to `target`, all at once.
    async fn set_states(&mut self, names: &[UnitName], target: &str) -> Result<()> {
        let strs: Vec<&str> = names.iter().map(UnitName::as_str).collect();
        let results = self.api.set_desired_states(&strs, target).await;
        let failed: Vec<anyhow::Error> = names
            .iter()
            .zip(results)
            .filter_map(|(name, r)| {
                r.err().map(|e| {
                    anyhow::Error::new(e).context(format!(
                        "Error setting target state of unit {name} to {target}"
                    ))
                })
            })
            .collect();
        batch_result(&mut self.err, failed, "desired states could not be set")
    }

    /// Look up every argument's unit; all must exist.
    async fn existing_units(&mut self, args: &[String]) -> Result<Vec<Unit>> {
        let mut units = Vec::with_capacity(args.len());
        for arg in args {
            let name = unit_name(arg)?;
            match self.get_unit(&name).await? {
                Some(u) => units.push(u),
                None => bail!("Error: unit {name} does not exist in the cluster"),
            }
        }
        Ok(units)
    }

    /// `stop`: desired state loaded; an inactive unit cannot be stopped.
    pub async fn stop(&mut self, args: &[String], block: &BlockFlags) -> Result<()> {
        let units = self.existing_units(args).await?;
        for u in &units {
            if u.desired_state == INACTIVE && !is_global(u) {
                bail!(
                    "Error: unable to stop unit {} in state inactive (it is not loaded; nothing to stop)",
                    u.name
                );
            }
        }
        self.change_state(units, LOADED, "stop", block).await
    }

    /// `unload`: desired state inactive.
    pub async fn unload(&mut self, args: &[String], block: &BlockFlags) -> Result<()> {
        let units = self.existing_units(args).await?;
        self.change_state(units, INACTIVE, "unload", block).await
    }

    async fn change_state(
        &mut self,
        units: Vec<Unit>,
        target: &str,
        word: &str,
        block: &BlockFlags,
    ) -> Result<()> {
        let mut change: Vec<(UnitName, bool)> = Vec::new();
        for u in units {
            let global = is_global(&u);
            if !global && u.desired_state == target && u.current_state == target {
                continue; // already there
            }
            let name = UnitName::parse(&u.name)
                .map_err(|e| anyhow!("fleetd returned an invalid unit name {:?}: {e}", u.name))?;
            change.push((name, global));
        }
        let names: Vec<UnitName> = change.iter().map(|(n, _)| n.clone()).collect();
        self.set_states(&names, target).await?;
        let mut wait = Vec::new();
        for (name, global) in change {
            if global {
                say!(self.out, "Triggered global unit {name} {word}");
            } else if block.no_block {
                say!(self.out, "Triggered unit {name} {word}");
            } else {
                wait.push(name);
            }
        }
        if wait.is_empty() {
            return Ok(());
        }
        self.wait_for(&wait, target, block.block_attempts).await
    }

    /// Poll until every unit reports `target`, at most `attempts` times (0: no limit). Prints
    /// `Unit X <state> on <machine>` as each one gets there; on time-out, prints why each remaining unit
    /// is not there and fails.
    async fn wait_for(&mut self, names: &[UnitName], target: &str, attempts: u32) -> Result<()> {
        let started = Instant::now();
        let mut pending: Vec<UnitName> = names.to_vec();
        let mut attempt: u32 = 0;
        let mut gone = Vec::new();
        loop {
            attempt += 1;
            let mut still = Vec::new();
            // Many units: one paged listing per check instead of one request per unit.
            let mut listed: Option<BTreeMap<String, Unit>> = None;
            if pending.len() > BULK_THRESHOLD {
                let all = self
                    .api
                    .units()
                    .await
                    .context("Error retrieving list of units from fleetd")?;
                listed = Some(all.into_iter().map(|u| (u.name.clone(), u)).collect());
            }
            for name in pending {
                let found = match &mut listed {
                    Some(map) => map.remove(name.as_str()),
                    None => self.get_unit(&name).await?,
                };
                let Some(u) = found else {
                    gone.push(name);
                    continue;
                };
                let global = is_global(&u);
                let state = if global {
                    &u.desired_state
                } else {
                    &u.current_state
                };
                if state != target {
                    still.push(name);
                    continue;
                }
                if !global && !u.machine_id.is_empty() {
                    let legend = self.legend(&u.machine_id).await;
                    say!(self.out, "Unit {name} {target} on {legend}");
                } else {
                    say!(self.out, "Unit {name} {target}");
                }
            }
            pending = still;
            if pending.is_empty() && gone.is_empty() {
                return Ok(());
            }
            if pending.is_empty() || (attempts != 0 && attempt >= attempts) {
                break;
            }
            if attempts == 0 && attempt.is_multiple_of(20) {
                let list = join(&pending);
                say!(
                    self.err,
                    "Still waiting for {list} to be {target} ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(self.poll_interval).await;
        }
        let waited = started.elapsed().as_secs_f64();
        for name in &gone {
            say!(
                self.err,
                "Unit {name} was destroyed while waiting for it to be {target}"
            );
        }
        let checks = if attempt == 1 { "check" } else { "checks" };
        for name in &pending {
            let why = self.why_not(name, target).await;
            say!(
                self.err,
                "Unit {name}: desired state {target} is recorded but was not reached after {attempt} {checks} ({waited:.1} s): {why}"
            );
        }
        let failed = pending.len() + gone.len();
        Err(anyhow!(
            "Error waiting for units: {failed} of {} did not reach state {target} (the desired state stays recorded; --block-attempts=0 waits without limit, --no-block does not wait)",
            names.len()
        ))
    }

    /// A plain explanation of why `name` is not in state `target` (best effort: API failures are named).
    async fn why_not(&mut self, name: &UnitName, target: &str) -> String {
        let unit = match self.api.unit(name.as_str()).await {
            Ok(Some(u)) => u,
            Ok(None) => return "the unit no longer exists".to_string(),
            Err(e) => return format!("cannot read the unit from fleetd: {e}"),
        };
        let machines = match self.machine_map(true).await {
            Ok(m) => m.clone(),
            Err(e) => return format!("cannot list machines: {e:#}"),
        };
        if machines.is_empty() {
            return "no machine has joined the cluster (no fleetd agent is running), so nothing can be scheduled".to_string();
        }
        if unit.machine_id.is_empty() {
            return match self.api.units().await {
                Ok(units) => explain_unplaced(name, &units, &machines),
                Err(e) => format!("it is not placed on a machine yet (cannot list units: {e})"),
            };
        }
        let legend = machine_full_legend(&unit.machine_id, machines.get(&unit.machine_id), false);
        if !machines.contains_key(&unit.machine_id) {
            return format!("it is placed on {legend}, which is no longer a member of the cluster");
        }
        let states = self
            .api
            .unit_states(Some(name.as_str()))
            .await
            .unwrap_or_default();
        match states.iter().find(|s| s.machine_id == unit.machine_id) {
            None => format!("it is placed on {legend}, which has not reported the unit yet (current state {})", dash(&unit.current_state)),
            Some(s) => format!(
                "it is placed on {legend}, where systemd reports load={} active={} sub={} (current state {}, wanted {target})",
                dash(&s.systemd_load_state),
                dash(&s.systemd_active_state),
                dash(&s.systemd_sub_state),
                dash(&unit.current_state)
            ),
        }
    }

    /// `destroy`: missing units are skipped silently, as in fleet.
    pub async fn destroy(&mut self, args: &[String]) -> Result<()> {
        let names = args
            .iter()
            .map(|a| unit_name(a))
            .collect::<Result<Vec<_>>>()?;
        for name in names {
            if self
                .api
                .destroy_unit(name.as_str())
                .await
                .with_context(|| format!("Error destroying unit {name}"))?
            {
                say!(self.out, "Destroyed {name}");
            }
        }
        Ok(())
    }

    /// `cat`: the stored unit file, exactly as fleet serializes it.
    pub async fn cat(&mut self, arg: &str) -> Result<()> {
        let name = unit_name(arg)?;
        let Some(u) = self.get_unit(&name).await? else {
            bail!("Error: unit {name} not found");
        };
        let text = stored_file(&u)?.serialize();
        self.write_out(&text)
    }

    /// `status`: `systemctl status` of each unit, from the machine running it (every machine running
    /// it, for a global unit, unless `machine` picks one), an empty line between units as in fleet.
    /// Returns systemctl's last non-zero exit code (fleet exited with it), else 0.
    pub async fn status(&mut self, args: &[String], machine: Option<&str>) -> Result<i32> {
        let names = args
            .iter()
            .map(|a| unit_name(a))
            .collect::<Result<Vec<_>>>()?;
        let mut code = 0;
        for (i, name) in names.iter().enumerate() {
            let Some(u) = self.get_unit(name).await? else {
                bail!("Error: unit {name} does not exist");
            };
            let machines: Vec<Option<String>> = match machine {
                Some(m) => vec![Some(m.to_string())],
                None if is_global(&u) => {
                    let mut ids: Vec<String> = self
                        .api
                        .unit_states(Some(name.as_str()))
                        .await
                        .with_context(|| format!("Error retrieving the machines running {name}"))?
                        .into_iter()
                        .map(|s| s.machine_id)
                        .filter(|m| !m.is_empty())
                        .collect();
                    ids.dedup();
                    if ids.is_empty() {
                        vec![None]
                    } else {
                        ids.into_iter().map(Some).collect()
                    }
                }
                None => vec![None],
            };
            for (j, m) in machines.iter().enumerate() {
                if i > 0 || j > 0 {
                    say!(self.out, "");
                }
                let o = self
                    .api
                    .unit_status(name.as_str(), STATUS_LINES, m.as_deref())
                    .await
                    .with_context(|| format!("Error retrieving the status of {name}"))?;
                if machines.len() > 1 {
                    let legend = self.legend(&o.machine_id).await;
                    say!(self.out, "{name} on {legend}:");
                }
                self.write_out(&o.text)?;
                if let Some(c) = o.exit_code.filter(|c| *c != 0) {
                    code = c;
                }
            }
        }
        Ok(code)
    }

    /// `journal`: the last `--lines` lines of the unit's journal, read on its machine; with
    /// `--follow`, then every poll interval the lines logged since, until `stop` resolves (Ctrl-C).
    /// While following, a machine that does not answer is retried (with one warning) for
    /// [`FOLLOW_PATIENCE`]; when the unit moves to another machine, following continues there.
    pub async fn journal(
        &mut self,
        a: &JournalArgs,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let name = unit_name(&a.unit)?;
        if a.output != "short" {
            bail!("Error: --output {} is not supported (only short)", a.output);
        }
        let what = || format!("Error reading the journal of {name}");
        let first = match self
            .api
            .unit_journal(name.as_str(), a.lines, None, a.machine.as_deref())
            .await
        {
            Ok(o) => o,
            Err(e) if e.api_status() == Some(409) && e.to_string().contains("machineID=") => {
                // A global unit on several machines: read it on each of them.
                let machines = self.machines_running(&name).await?;
                if machines.len() < 2 {
                    bail!("{}: {e}; pick one with --machine ID", what())
                }
                return self.journal_many(&name, a, machines, stop).await;
            }
            Err(e) => return Err(e).with_context(what),
        };
        self.write_out(&first.text)?;
        if !a.follow {
            return Ok(());
        }
        tokio::pin!(stop);
        let mut cursor = first.cursor;
        // Follow the journal of one machine: a cursor means nothing on another one.
        let mut on = Some(first.machine_id);
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
            let machine = a.machine.as_deref().or(on.as_deref());
            let res = tokio::select! {
                _ = &mut stop => return Ok(()),
                r = self.api.unit_journal(name.as_str(), FOLLOW_BATCH, cursor.as_deref(), machine) => r,
            };
            match res {
                Ok(o) => {
                    failing_since = None;
                    self.write_out(&o.text)?;
                    if on.as_deref() != Some(o.machine_id.as_str()) {
                        on = Some(o.machine_id);
                    }
                    if o.cursor.is_some() {
                        cursor = o.cursor;
                    }
                }
                Err(e) if e.api_status() == Some(404) => return Err(e).with_context(what),
                Err(e) => {
                    if e.api_status() == Some(409) && a.machine.is_none() && on.is_some() {
                        // Not on that machine any more: follow it wherever it runs now.
                        say!(
                            self.err,
                            "{name} left machine {}: {e}",
                            on.unwrap_or_default()
                        );
                        on = None;
                        cursor = None;
                    }
                    let first_failure = failing_since.is_none();
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= FOLLOW_PATIENCE {
                        return Err(e).with_context(what);
                    }
                    if first_failure {
                        say!(self.err, "WARNING: {e}; retrying");
                    }
                }
            }
        }
    }

    /// The machines that report `name` (sorted, each once).
    async fn machines_running(&mut self, name: &UnitName) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .api
            .unit_states(Some(name.as_str()))
            .await
            .with_context(|| format!("Error retrieving the machines running {name}"))?
            .into_iter()
            .map(|s| s.machine_id)
            .filter(|m| !m.is_empty())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// `journal` of a global unit on several machines: each machine's last lines under a heading;
    /// with `--follow`, every poll interval each machine's new lines, under a heading whenever the
    /// machine changes, until `stop` resolves. Machines that start running the unit are picked up
    /// (every [`FOLLOW_REFRESH`] polls); one that fails is warned about once and retried.
    async fn journal_many(
        &mut self,
        name: &UnitName,
        a: &JournalArgs,
        machines: Vec<String>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(stop);
        let what = || format!("Error reading the journal of {name}");
        // Per machine: the cursor to continue from (None before the first answer), whether it failed.
        let mut cursors: BTreeMap<String, (Option<String>, bool)> =
            machines.into_iter().map(|m| (m, (None, false))).collect();
        let mut last_shown: Option<String> = None;
        let mut first_round = true;
        let mut polls = 0u32;
        loop {
            if !first_round {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(self.poll_interval) => {}
                }
                polls += 1;
                if polls.is_multiple_of(FOLLOW_REFRESH) {
                    if let Ok(now) = self.machines_running(name).await {
                        for m in now {
                            cursors.entry(m).or_insert((None, false));
                        }
                    }
                }
            }
            let ids: Vec<String> = cursors.keys().cloned().collect();
            for m in ids {
                let (cursor, _) = cursors.get(&m).cloned().unwrap_or_default();
                let lines = if cursor.is_some() {
                    FOLLOW_BATCH
                } else {
                    a.lines
                };
                let res = tokio::select! {
                    _ = &mut stop => return Ok(()),
                    r = self.api.unit_journal(name.as_str(), lines, cursor.as_deref(), Some(&m)) => r,
                };
                match res {
                    Ok(o) => {
                        let entry = cursors.entry(m.clone()).or_default();
                        entry.1 = false;
                        if o.cursor.is_some() {
                            entry.0 = o.cursor;
                        }
                        let heading = first_round || !o.text.is_empty();
                        if heading && last_shown.as_deref() != Some(m.as_str()) {
                            if last_shown.is_some() {
                                say!(self.out, "");
                            }
                            let legend = self.legend(&m).await;
                            say!(self.out, "{name} on {legend}:");
                            last_shown = Some(m.clone());
                        }
                        self.write_out(&o.text)?;
                    }
                    Err(e) if e.api_status() == Some(404) => return Err(e).with_context(what),
                    Err(e) if !a.follow => return Err(e).with_context(what),
                    Err(e) => {
                        let entry = cursors.entry(m.clone()).or_default();
                        if !entry.1 {
                            say!(self.err, "WARNING: {e}; retrying");
                        }
                        entry.1 = true;
                    }
                }
            }
            if !a.follow {
                return Ok(());
            }
            first_round = false;
        }
    }

    /// `restart`: a launched unit is restarted by systemd on every machine running it (only `machine`,
    /// when given), printing `Restarted unit X on ID.../IP` per machine; failures are printed per
    /// machine and make the result an error. A unit that is loaded or inactive is started instead
    /// (as fleet's restart did), waiting as `start` does.
    pub async fn restart(
        &mut self,
        args: &[String],
        machine: Option<&str>,
        block: &BlockFlags,
    ) -> Result<()> {
        let mut names = Vec::with_capacity(args.len());
        let mut to_start = Vec::new();
        for u in self.existing_units(args).await? {
            let name = UnitName::parse(&u.name)
                .map_err(|e| anyhow!("fleetd returned an invalid unit name {:?}: {e}", u.name))?;
            // As fleet's restart: a unit that is not meant to run is started.
            if u.desired_state == LAUNCHED {
                names.push(name);
            } else {
                to_start.push(name);
            }
        }
        for name in &to_start {
            self.api
                .set_desired_state(name.as_str(), LAUNCHED)
                .await
                .with_context(|| {
                    format!("Error setting target state of unit {name} to launched")
                })?;
        }
        if block.no_block {
            for name in &to_start {
                say!(self.out, "Triggered unit {name} start");
            }
        } else if !to_start.is_empty() {
            self.wait_for(&to_start, LAUNCHED, block.block_attempts)
                .await?;
        }
        let mut failed = 0;
        for name in &names {
            let results = match self.api.restart_unit(name.as_str(), machine).await {
                Ok(r) => r,
                Err(e) if e.api_status() == Some(404) => {
                    bail!("Error: unit {name} does not exist")
                }
                Err(e) => return Err(e).with_context(|| format!("Error restarting {name}")),
            };
            for r in results {
                let legend = self.legend(&r.machine_id).await;
                match r.error {
                    None => say!(self.out, "Restarted unit {name} on {legend}"),
                    Some(e) => {
                        failed += 1;
                        say!(self.err, "Error restarting unit {name} on {legend}: {e}");
                    }
                }
            }
        }
        if failed > 0 {
            let plural = if failed == 1 { "" } else { "s" };
            bail!("Error: {failed} restart{plural} failed");
        }
        Ok(())
    }

    /// `ssh`: the IP address to connect to and the remote command, from `--machine`, `--unit` or the
    /// first argument (a machine ID prefix, else a unit).
    pub async fn ssh_target(&mut self, a: &SshArgs) -> Result<(String, Vec<String>)> {
        let (machine, command) = if let Some(m) = &a.machine {
            (self.machine_by_prefix(m).await?, a.args.clone())
        } else if let Some(u) = &a.unit {
            let name = unit_name(u)?;
            let Some(m) = self.machine_of_unit(&name).await? else {
                bail!("Error: unit {name} does not exist");
            };
            (m, a.args.clone())
        } else {
            let Some((target, command)) = a.args.split_first() else {
                bail!("Error: one machine or unit must be provided");
            };
            let machine = match self.machine_by_prefix(target).await {
                Ok(m) => m,
                Err(not_a_machine) => {
                    let found = match unit_name(target) {
                        Ok(n) => self.machine_of_unit(&n).await?,
                        Err(_) => None,
                    };
                    found.ok_or_else(|| {
                        not_a_machine
                            .context(format!("Error: {target:?} is neither a machine nor a unit"))
                    })?
                }
            };
            (machine, command.to_vec())
        };
        if machine.primary_ip.is_empty() {
            bail!("Error: machine {} has no known IP address", machine.id);
        }
        Ok((machine.primary_ip, command))
    }

    /// The one machine whose ID starts with `prefix`.
    async fn machine_by_prefix(&mut self, prefix: &str) -> Result<Machine> {
        let found: Vec<Machine> = self
            .machine_map(false)
            .await?
            .values()
            .filter(|m| !prefix.is_empty() && m.id.starts_with(prefix))
            .cloned()
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("Error: no machine ID starts with {prefix:?}"),
            many => bail!(
                "Error: {prefix:?} matches {} machines ({}): give more of the ID",
                many.len(),
                many.iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The machine `name` runs on (a global unit: only when it runs on exactly one); `None` when
    /// there is no such unit.
    async fn machine_of_unit(&mut self, name: &UnitName) -> Result<Option<Machine>> {
        let Some(u) = self.get_unit(name).await? else {
            return Ok(None);
        };
        let id = if is_global(&u) {
            match self.machines_running(name).await?.as_slice() {
                [one] => one.clone(),
                [] => bail!("Error: global unit {name} is not running on any machine"),
                many => bail!(
                    "Error: global unit {name} runs on {} machines ({}): pick one with --machine",
                    many.len(),
                    many.join(", ")
                ),
            }
        } else if u.machine_id.is_empty() {
            bail!("Error: unit {name} is not running on any machine");
        } else {
            u.machine_id
        };
        let known = self.machine_map(false).await?.get(&id).cloned();
        match known {
            Some(m) => Ok(Some(m)),
            None => self
                .machine_map(true)
                .await?
                .get(&id)
                .cloned()
                .map(Some)
                .ok_or_else(|| anyhow!("Error: unit {name} is on machine {id}, which is gone")),
        }
    }

    fn write_out(&mut self, text: &str) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|_| self.out.flush())
            .context("Error writing output")
    }

    /// `list-unit-files`.
    pub async fn list_unit_files(&mut self, a: &ListUnitFilesArgs) -> Result<()> {
        let cols = parse_fields(&a.fields, UNIT_FILE_FIELDS)?;
        let units = self
            .api
            .units()
            .await
            .context("Error retrieving list of units from fleetd")?;
        let needs_machines = cols.iter().any(|c| *c == "target" || *c == "tmachine")
            && units.iter().any(|u| !u.machine_id.is_empty());
        let machines = if needs_machines {
            self.machine_map(false).await?.clone()
        } else {
            BTreeMap::new()
        };
        if a.list.json {
            return self.write_out(&json_text(&unit_files_json(&units, &machines, &cols)));
        }
        let t = unit_files_table(&units, &machines, &cols, a.list.full, !a.list.no_legend);
        self.write_out(&t.render())?;
        for u in &units {
            if let Some(why) = &u.damaged {
                say!(
                    self.err,
                    "WARNING: Unit {} is damaged in etcd ({why}); shown and run as its last good value until it is fixed",
                    u.name
                );
            }
        }
        Ok(())
    }

    /// `list-units`.
    pub async fn list_units(&mut self, a: &ListUnitsArgs) -> Result<()> {
        let cols = parse_fields(&a.fields, UNIT_FIELDS)?;
        let states = self
            .api
            .unit_states(None)
            .await
            .context("Error retrieving list of units from fleetd")?;
        let machines = if cols.contains(&"machine") && !states.is_empty() {
            self.machine_map(false).await?.clone()
        } else {
            BTreeMap::new()
        };
        if a.list.json {
            return self.write_out(&json_text(&units_json(&states, &machines, &cols)));
        }
        let t = units_table(&states, &machines, &cols, a.list.full, !a.list.no_legend);
        self.write_out(&t.render())
    }

    /// `list-machines`.
    pub async fn list_machines(&mut self, a: &ListMachinesArgs) -> Result<()> {
        let cols = parse_fields(&a.fields, MACHINE_FIELDS)?;
        let machines = self
            .api
            .machines()
            .await
            .context("Error retrieving list of machines from fleetd")?;
        if a.list.json {
            return self.write_out(&json_text(&machines_json(&machines, &cols)));
        }
        let t = machines_table(&machines, &cols, a.list.full, !a.list.no_legend);
        self.write_out(&t.render())
    }
}

/// Why an unplaced unit is not placed: the placement function every agent runs ([`schedule`]), applied
/// to the cluster as the API shows it.
pub fn explain_unplaced(
    name: &UnitName,
    units: &[Unit],
    machines: &BTreeMap<String, Machine>,
) -> String {
    let infos: Vec<MachineInfo> = machines
        .values()
        .filter_map(|m| {
            let id = MachineId::parse(&m.id).ok()?;
            let mut info = MachineInfo::new(id);
            info.metadata = m.metadata.clone();
            Some(info)
        })
        .collect();
    let units: Vec<UnitInfo> = units
        .iter()
        .filter_map(|u| {
            let name = UnitName::parse(&u.name).ok()?;
            let file = UnitFile::from_options(u.options.clone()).ok()?;
            let req = Requirements::from_unit(&name, &file).ok()?;
            let desired = u.desired_state.parse::<DesiredState>().ok()?;
            let info = UnitInfo::new(name, req, desired);
            Some(match MachineId::parse(&u.machine_id) {
                Ok(m) => info.claimed_by(m),
                Err(_) => info,
            })
        })
        .collect();
    let count = infos.len();
    let plural = if count == 1 { "" } else { "s" };
    match schedule(&infos, &units).decision(name) {
        Some(Decision::Unplaceable(reason)) => format!("it cannot be placed: {reason}"),
        Some(Decision::On(m)) => format!(
            "it is not placed yet, though it fits on {} ({count} machine{plural} in the cluster): no agent has claimed it",
            machine_full_legend(m.as_str(), machines.get(m.as_str()), false)
        ),
        Some(Decision::Global(_)) | None => {
            format!("it is not placed on any of the {count} machine{plural} yet")
        }
    }
}

fn join(names: &[UnitName]) -> String {
    names
        .iter()
        .map(UnitName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::ListFlags;
    use crate::cli::client::fake::Scripted;
    use crate::cli::table::expand_tabs;
    use fleet_sched::UnitOption;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn machine(id: &str, ip: &str, meta: &[(&str, &str)]) -> Machine {
        Machine {
            id: id.into(),
            primary_ip: ip.into(),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn unit(name: &str, opts: &[(&str, &str, &str)], d: &str, c: &str, m: &str) -> Unit {
        Unit {
            name: name.into(),
            options: opts
                .iter()
                .map(|(s, n, v)| UnitOption::new(*s, *n, *v))
                .collect(),
            desired_state: d.into(),
            current_state: c.into(),
            machine_id: m.into(),
            damaged: None,
        }
    }

    const M1: &str = "113f16a7c5e44a1cb2e8a6e8b8f4d7a1";
    const M2: &str = "2cb2e8a6e8b8f4d7a1113f16a7c5e44a";

    fn machines() -> BTreeMap<String, Machine> {
        [
            machine(M1, "10.0.0.1", &[("region", "us"), ("disk", "ssd")]),
            machine(M2, "", &[]),
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect()
    }

    fn sample_units() -> Vec<Unit> {
        vec![
            unit(
                "world.service",
                &[("Service", "ExecStart", "/bin/true")],
                "loaded",
                "inactive",
                "",
            ),
            unit(
                "hello.service",
                &[
                    ("Unit", "Description", "Hello World"),
                    ("Service", "ExecStart", "/bin/sh -c 'echo hi; sleep 1d'"),
                ],
                "launched",
                "launched",
                M1,
            ),
            unit(
                "everywhere.service",
                &[
                    ("Service", "ExecStart", "/bin/true"),
                    ("X-Fleet", "Global", "true"),
                ],
                "launched",
                "",
                "",
            ),
            unit(
                "nomachine.service",
                &[("Service", "ExecStart", "/bin/false")],
                "launched",
                "loaded",
                M2,
            ),
        ]
    }

    #[test]
    fn list_unit_files_default_columns() {
        let units = sample_units();
        let h = |n: usize| stored_file(&units[n]).unwrap().hash().short();
        let cols = parse_fields("unit,hash,dstate,state,target", UNIT_FILE_FIELDS).unwrap();
        let out = unit_files_table(&units, &machines(), &cols, false, true).render();
        let expected = format!(
            "UNIT\t\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
             everywhere.service\t{}\tlaunched\t-\t\tglobal\n\
             hello.service\t\t{}\tlaunched\tlaunched\t113f16a7.../10.0.0.1\n\
             nomachine.service\t{}\tlaunched\tloaded\t\t2cb2e8a6...\n\
             world.service\t\t{}\tloaded\t\tinactive\t-\n",
            h(2),
            h(1),
            h(3),
            h(0)
        );
        assert_eq!(out, expected);
        assert!(expand_tabs(&out).starts_with(
            "UNIT                    HASH    DSTATE          STATE           TARGET\n"
        ));
    }

    #[test]
    fn list_unit_files_extra_columns_full_and_no_legend() {
        let units = sample_units();
        let cols = parse_fields("unit,desc,global,tmachine,hash", UNIT_FILE_FIELDS).unwrap();
        let out = unit_files_table(&units[1..2], &machines(), &cols, true, false).render();
        let hash = stored_file(&units[1]).unwrap().hash().to_string();
        assert_eq!(hash.len(), 40);
        assert_eq!(
            out,
            format!("hello.service\tHello World\tfalse\t{M1}/10.0.0.1\t{hash}\n")
        );
        let out =
            unit_files_table(&units[0..1], &machines(), &["desc", "global"], false, false).render();
        assert_eq!(out, "-\tfalse\n");
    }

    #[test]
    fn the_hash_is_the_sha1_of_the_serialized_unit() {
        // sha1("[Service]\nExecStart=/bin/true\n")
        let u = unit(
            "a.service",
            &[("Service", "ExecStart", "/bin/true")],
            "",
            "",
            "",
        );
        let out = unit_files_table(&[u], &BTreeMap::new(), &["hash"], true, false).render();
        let expected = {
            use std::process::Command;
            let o = Command::new("sh")
                .args([
                    "-c",
                    "printf '[Service]\\nExecStart=/bin/true\\n' | sha1sum",
                ])
                .output()
                .unwrap();
            String::from_utf8(o.stdout).unwrap()[..40].to_string()
        };
        assert_eq!(out, format!("{expected}\n"));
    }

    #[test]
    fn list_units_rows_are_sorted_by_unit_then_machine() {
        let st = |n: &str, m: &str, a: &str| UnitState {
            name: n.into(),
            hash: "e55c0ae1234567890abcdef1234567890abcdef0".into(),
            machine_id: m.into(),
            systemd_load_state: "loaded".into(),
            systemd_active_state: a.into(),
            systemd_sub_state: if a == "active" { "running" } else { "dead" }.into(),
        };
        let states = vec![
            st("hello.service", M2, "active"),
            st("b.service", M1, "inactive"),
            st("hello.service", M1, "active"),
        ];
        let cols = parse_fields("unit,machine,active,sub", UNIT_FIELDS).unwrap();
        let out = units_table(&states, &machines(), &cols, false, true).render();
        assert_eq!(
            out,
            "UNIT\t\tMACHINE\t\t\tACTIVE\t\tSUB\n\
             b.service\t113f16a7.../10.0.0.1\tinactive\tdead\n\
             hello.service\t113f16a7.../10.0.0.1\tactive\t\trunning\n\
             hello.service\t2cb2e8a6...\t\tactive\t\trunning\n"
        );
        assert_eq!(
            expand_tabs(&out).lines().nth(2).unwrap(),
            "hello.service   113f16a7.../10.0.0.1    active          running"
        );
        let cols = parse_fields("hash,load", UNIT_FIELDS).unwrap();
        let out = units_table(&states[..1], &machines(), &cols, false, false).render();
        assert_eq!(out, "e55c0ae\tloaded\n");
        let out = units_table(&states[..1], &machines(), &["hash"], true, false).render();
        assert_eq!(out, "e55c0ae1234567890abcdef1234567890abcdef0\n");
    }

    #[test]
    fn list_machines_shows_short_ids_and_sorted_metadata() {
        let ms: Vec<Machine> = machines().into_values().rev().collect();
        let cols = parse_fields("machine,ip,metadata", MACHINE_FIELDS).unwrap();
        let out = machines_table(&ms, &cols, false, true).render();
        assert_eq!(
            out,
            "MACHINE\t\tIP\t\tMETADATA\n\
             113f16a7...\t10.0.0.1\tdisk=ssd,region=us\n\
             2cb2e8a6...\t-\t\t-\n"
        );
        let out = machines_table(&ms[..1], &["machine"], true, false).render();
        assert_eq!(out, format!("{M2}\n"));
    }

    #[test]
    fn unknown_or_empty_fields_are_rejected() {
        let e = parse_fields("unit,bogus", UNIT_FIELDS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"bogus\""), "{e}");
        assert!(parse_fields("", UNIT_FIELDS).is_err());
        assert!(parse_fields("unit,", UNIT_FIELDS).is_err());
    }

    #[test]
    fn unplaced_units_are_explained_by_the_agents_placement_function() {
        let conflicts = [
            ("Service", "ExecStart", "/bin/true"),
            ("X-Fleet", "Conflicts", "web@*.service"),
        ];
        let units = vec![
            unit("web@1.service", &conflicts, "launched", "", M1),
            unit("web@2.service", &conflicts, "launched", "", ""),
            unit(
                "eu.service",
                &[
                    ("Service", "ExecStart", "/bin/true"),
                    ("X-Fleet", "MachineMetadata", "region=eu"),
                ],
                "launched",
                "",
                "",
            ),
            unit(
                "free.service",
                &[("Service", "ExecStart", "/bin/true")],
                "launched",
                "",
                "",
            ),
        ];
        let one: BTreeMap<_, _> = machines().into_iter().take(1).collect();
        let why = |n: &str, ms: &BTreeMap<String, Machine>| {
            explain_unplaced(&UnitName::parse(n).unwrap(), &units, ms)
        };
        let w = why("web@2.service", &one);
        assert!(
            w.starts_with("it cannot be placed: ") && w.contains("web@1.service"),
            "{w}"
        );
        let w = why("eu.service", &one);
        assert!(
            w.contains("MachineMetadata") && w.contains("region=eu"),
            "{w}"
        );
        let w = why("free.service", &one);
        assert!(w.contains("fits on 113f16a7.../10.0.0.1"), "{w}");
        let w = why("free.service", &BTreeMap::new());
        assert!(w.contains("no machine"), "{w}");
    }

    #[test]
    fn short_machine_ids_are_shown_whole() {
        assert_eq!(machine_id_legend("abc", false), "abc...");
        assert_eq!(machine_full_legend("abc", None, false), "abc...");
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buf(Rc<RefCell<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.borrow().clone()).unwrap()
        }
    }

    fn ctx(answers: &[(u16, &str)]) -> (Ctx<Scripted>, Buf, Buf) {
        let (out, err) = (Buf::default(), Buf::default());
        let mut c = Ctx::new(
            Api::new(Scripted::new(answers)),
            Box::new(out.clone()),
            Box::new(err.clone()),
        );
        c.poll_interval = Duration::from_millis(1);
        (c, out, err)
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn start_without_machines_gives_up_after_the_block_attempts_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello.service");
        std::fs::write(&path, "[Service]\nExecStart=/bin/true\n").unwrap();
        let inactive = r#"{"name":"hello.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"launched","currentState":"inactive"}"#;
        let (mut c, out, err) = ctx(&[
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (201, ""),
            (204, ""),
            (200, inactive),
            (200, inactive),
            (200, inactive),
            (200, r#"{"machines":[]}"#),
        ]);
        let flags = BlockFlags {
            no_block: false,
            block_attempts: 2,
        };
        let args = [path.display().to_string()];
        let e = block(c.activate(&args, false, &flags, CreateVerb::Start)).unwrap_err();
        assert!(
            e.to_string()
                .contains("1 of 1 did not reach state launched"),
            "{e}"
        );
        assert_eq!(out.text(), "Unit hello.service inactive\n");
        let err = err.text();
        assert!(
            err.contains("desired state launched is recorded but was not reached after 2 checks")
                && err.contains("no machine has joined the cluster"),
            "{err}"
        );
        let reqs: Vec<_> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.clone())
            .collect();
        assert_eq!(
            reqs,
            [
                "GET /fleet/v1/units/hello.service",
                "PUT /fleet/v1/units/hello.service",
                "PUT /fleet/v1/units/hello.service",
                "GET /fleet/v1/units/hello.service",
                "GET /fleet/v1/units/hello.service",
                "GET /fleet/v1/units/hello.service",
                "GET /fleet/v1/machines",
            ]
        );
        let create: serde_json::Value =
            serde_json::from_str(c.api.transport().requests[1].1.as_deref().unwrap()).unwrap();
        assert_eq!(
            create,
            serde_json::json!({"name":"hello.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]})
        );
    }

    #[test]
    fn start_reports_the_machine_once_the_unit_is_launched() {
        let launched = format!(
            r#"{{"name":"a.service","options":[{{"section":"Service","name":"ExecStart","value":"/bin/true"}}],"desiredState":"launched","currentState":"launched","machineID":"{M1}"}}"#
        );
        let machines = format!(r#"{{"machines":[{{"id":"{M1}","primaryIP":"10.0.0.1"}}]}}"#);
        let (mut c, out, _) = ctx(&[
            (200, &launched),
            (204, ""),
            (200, &launched),
            (200, &machines),
        ]);
        let flags = BlockFlags {
            no_block: false,
            block_attempts: 1,
        };
        block(c.activate(&["a".into()], false, &flags, CreateVerb::Start)).unwrap();
        assert_eq!(
            out.text(),
            "Unit a.service launched on 113f16a7.../10.0.0.1\n"
        );
    }

    #[test]
    fn no_block_only_triggers() {
        let stored = r#"{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"inactive"}"#;
        let (mut c, out, _) = ctx(&[(200, stored), (204, "")]);
        let flags = BlockFlags {
            no_block: true,
            block_attempts: 10,
        };
        block(c.activate(&["a".into()], false, &flags, CreateVerb::Load)).unwrap();
        assert_eq!(out.text(), "Triggered unit a.service load\n");
    }

    #[test]
    fn templates_cannot_be_started_and_bad_names_are_refused_before_any_request() {
        let (mut c, _, _) = ctx(&[]);
        let flags = BlockFlags {
            no_block: true,
            block_attempts: 1,
        };
        let e = block(c.activate(&["web@.service".into()], false, &flags, CreateVerb::Start))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a template"), "{e}");
        let e = block(c.submit(&["bad$name".into()], false))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Error: invalid unit name \"bad$name.service\""),
            "{e}"
        );
        assert!(c.api.transport().requests.is_empty());
    }

    #[test]
    fn api_errors_are_printed_with_what_was_being_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.service");
        std::fs::write(&path, "[Service]\nExecStart=/bin/true\n").unwrap();
        let (mut c, out, _) = ctx(&[
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (
                503,
                r#"{"error":{"code":503,"message":"fleet server unable to communicate with etcd"}}"#,
            ),
        ]);
        let e = block(c.submit(&[path.display().to_string()], false)).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "Error creating unit a.service: fleet server unable to communicate with etcd"
        );
        assert_eq!(out.text(), "");
    }

    #[test]
    fn stopping_an_inactive_unit_is_an_error() {
        let stored = r#"{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"inactive","currentState":"inactive"}"#;
        let (mut c, _, _) = ctx(&[(200, stored)]);
        let flags = BlockFlags {
            no_block: false,
            block_attempts: 1,
        };
        let e = block(c.stop(&["a".into()], &flags))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unable to stop unit a.service in state inactive"),
            "{e}"
        );
        assert_eq!(c.api.transport().requests.len(), 1);
    }

    #[test]
    fn submit_warns_when_the_local_file_differs_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.service");
        std::fs::write(&path, "[Service]\nExecStart=/bin/false\n").unwrap();
        let stored = r#"{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"inactive"}"#;
        let (mut c, out, err) = ctx(&[(200, stored)]);
        block(c.submit(&[path.display().to_string()], false)).unwrap();
        assert_eq!(out.text(), "");
        assert!(
            err.text().contains("differs from local unit file") && err.text().contains("--replace"),
            "{}",
            err.text()
        );
    }

    #[test]
    fn submit_of_an_instance_uses_the_template_file_next_to_it_and_warns_about_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web@.service"),
            "[Service]\nExecStart=/bin/echo %i\n[X-Fleet]\nFoo=bar\n",
        )
        .unwrap();
        let (mut c, out, err) = ctx(&[
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (201, ""),
        ]);
        let arg = dir.path().join("web@1").display().to_string();
        block(c.submit(&[arg], false)).unwrap();
        assert_eq!(out.text(), "Unit web@1.service inactive\n");
        assert!(err.text().contains("\"Foo\""), "{}", err.text());
        let reqs: Vec<_> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.clone())
            .collect();
        assert_eq!(
            reqs,
            [
                "GET /fleet/v1/units/web%401.service",
                "GET /fleet/v1/units/web%40.service",
                "PUT /fleet/v1/units/web%401.service",
            ]
        );
    }

    #[test]
    fn rejected_x_fleet_combinations_fail_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.service");
        std::fs::write(
            &path,
            "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=abc\nGlobal=true\n",
        )
        .unwrap();
        let (mut c, out, _) = ctx(&[(
            404,
            r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
        )]);
        let e = block(c.submit(&[path.display().to_string()], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MachineID cannot be used with Global"), "{e}");
        assert_eq!(out.text(), "");
        assert_eq!(c.api.transport().requests.len(), 1);
    }

    const UNIT_A: &str = r#"{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/a"}],"desiredState":"launched","machineID":"m2"}"#;
    const UNIT_B: &str = r#"{"name":"b.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/b"}],"desiredState":"loaded","machineID":"m2"}"#;

    fn journal_args(follow: bool) -> JournalArgs {
        JournalArgs {
            lines: 3,
            follow,
            output: "short".into(),
            machine: None,
            sudo: false,
            unit: "a".into(),
        }
    }

    #[test]
    fn status_prints_each_units_status_and_returns_systemctls_last_failure() {
        let (mut c, out, _) = ctx(&[
            (200, UNIT_A),
            (
                200,
                r#"{"machineID":"m2","text":"A is running\n","exitCode":0}"#,
            ),
            (200, UNIT_B),
            (
                200,
                r#"{"machineID":"m2","text":"B is dead\n","exitCode":3}"#,
            ),
        ]);
        let code = block(c.status(&["a".into(), "b".into()], None)).unwrap();
        assert_eq!(code, 3);
        assert_eq!(out.text(), "A is running\n\nB is dead\n");
        let paths: Vec<&str> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "GET /fleet/v1/units/a.service",
                "GET /fleet/v1/units/a.service/status?lines=10",
                "GET /fleet/v1/units/b.service",
                "GET /fleet/v1/units/b.service/status?lines=10",
            ]
        );
    }

    #[test]
    fn status_of_a_missing_unit_is_an_error() {
        let (mut c, out, _) = ctx(&[(
            404,
            r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
        )]);
        let e = block(c.status(&["nope".into()], None)).unwrap_err();
        assert_eq!(format!("{e:#}"), "Error: unit nope.service does not exist");
        assert_eq!(out.text(), "");
    }

    #[test]
    fn journal_prints_the_last_lines_once_without_follow() {
        let (mut c, out, _) = ctx(&[(
            200,
            r#"{"machineID":"m2","text":"l1\nl2\nl3\n","cursor":"c3"}"#,
        )]);
        block(c.journal(&journal_args(false), std::future::pending())).unwrap();
        assert_eq!(out.text(), "l1\nl2\nl3\n");
        assert_eq!(
            c.api.transport().requests[0].0,
            "GET /fleet/v1/units/a.service/journal?lines=3"
        );
    }

    #[test]
    fn follow_continues_from_the_last_cursor_on_the_same_machine_and_stops_when_told() {
        let (mut c, out, _) = ctx(&[(200, r#"{"machineID":"m2","text":"l1\n","cursor":"c1"}"#)]);
        block(c.journal(&journal_args(true), std::future::ready(()))).unwrap();
        assert_eq!(out.text(), "l1\n");
        assert_eq!(c.api.transport().requests.len(), 1);

        let conflict = r#"{"error":{"code":409,"message":"unit is not running on machine m2"}}"#;
        let (mut c, out, err) = ctx(&[
            (200, r#"{"machineID":"m2","text":"l1\n","cursor":"c1"}"#),
            (200, r#"{"machineID":"m2","text":""}"#),
            (200, r#"{"machineID":"m2","text":"l2\nl3\n","cursor":"c3"}"#),
            (
                504,
                r#"{"error":{"code":504,"message":"machine m2 did not answer in time"}}"#,
            ),
            (200, r#"{"machineID":"m2","text":"l4\n","cursor":"c4"}"#),
            (409, conflict),
            (200, r#"{"machineID":"m3","text":"n1\n","cursor":"d1"}"#),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ]);
        let e = block(c.journal(&journal_args(true), std::future::pending())).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "Error reading the journal of a.service: unit does not exist"
        );
        assert_eq!(out.text(), "l1\nl2\nl3\nl4\nn1\n");
        assert!(err
            .text()
            .contains("WARNING: machine m2 did not answer in time; retrying"));
        assert!(
            err.text().contains("a.service left machine m2"),
            "{}",
            err.text()
        );
        let paths: Vec<String> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| {
                r.0.trim_start_matches("GET /fleet/v1/units/a.service/journal?")
                    .to_string()
            })
            .collect();
        assert_eq!(
            paths,
            [
                "lines=3",
                "lines=1000&cursor=c1&machineID=m2",
                "lines=1000&cursor=c1&machineID=m2",
                "lines=1000&cursor=c3&machineID=m2",
                "lines=1000&cursor=c3&machineID=m2",
                "lines=1000&cursor=c4&machineID=m2",
                "lines=1000",
                "lines=1000&cursor=d1&machineID=m3",
            ]
        );
    }

    #[test]
    fn json_lists_carry_the_requested_fields_with_full_values_and_nulls() {
        let m = machines();
        let cols = ["unit", "hash", "state", "target", "desc", "global"];
        let v = unit_files_json(&sample_units(), &m, &cols);
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 4);
        // Sorted by name, keyed by field.
        assert_eq!(rows[0]["unit"], "everywhere.service");
        assert_eq!(rows[0]["target"], "global");
        assert_eq!(rows[0]["state"], serde_json::Value::Null);
        assert_eq!(rows[0]["global"], true);
        assert_eq!(rows[1]["unit"], "hello.service");
        assert_eq!(rows[1]["target"], format!("{M1}/10.0.0.1"));
        assert_eq!(rows[1]["desc"], "Hello World");
        assert_eq!(rows[1]["hash"].as_str().map(str::len), Some(40));
        assert_eq!(rows[2]["target"], M2, "no IP known: the bare full ID");
        assert_eq!(rows[3]["target"], serde_json::Value::Null);
        assert_eq!(rows[3]["desc"], serde_json::Value::Null);
        assert_eq!(rows[3].as_object().unwrap().len(), cols.len());

        let states = vec![
            UnitState {
                name: "b.service".into(),
                machine_id: M1.into(),
                hash: "a".repeat(40),
                systemd_active_state: "active".into(),
                ..Default::default()
            },
            UnitState {
                name: "a.service".into(),
                ..Default::default()
            },
        ];
        let v = units_json(&states, &m, &["unit", "machine", "active", "sub", "hash"]);
        assert_eq!(
            v,
            serde_json::json!([
                {"unit": "a.service", "machine": null, "active": null, "sub": null, "hash": null},
                {"unit": "b.service", "machine": format!("{M1}/10.0.0.1"), "active": "active",
                 "sub": null, "hash": "a".repeat(40)},
            ])
        );

        let list: Vec<Machine> = m.values().cloned().collect();
        let v = machines_json(&list, &["machine", "ip", "metadata"]);
        assert_eq!(
            v,
            serde_json::json!([
                {"machine": M1, "ip": "10.0.0.1", "metadata": {"disk": "ssd", "region": "us"}},
                {"machine": M2, "ip": null, "metadata": {}},
            ])
        );
    }

    #[test]
    fn list_machines_json_is_printed_instead_of_the_table() {
        let (mut c, out, _) = ctx(&[(
            200,
            r#"{"machines":[{"id":"m1","primaryIP":"10.0.0.1","metadata":{"a":"b"}}]}"#,
        )]);
        let a = ListMachinesArgs {
            fields: "machine,ip".into(),
            list: ListFlags {
                full: false,
                no_legend: false,
                json: true,
            },
        };
        block(c.list_machines(&a)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out.text()).unwrap();
        assert_eq!(v, serde_json::json!([{"machine": "m1", "ip": "10.0.0.1"}]));
    }

    const MACHINES_2: &str = r#"{"machines":[{"id":"113f16a7aa","primaryIP":"10.0.0.1"},{"id":"113f99bbcc","primaryIP":"10.0.0.2"},{"id":"2cb2e8a6ee","primaryIP":"10.0.0.3"}]}"#;

    #[test]
    fn restart_prints_every_machine_and_fails_when_one_failed() {
        let block_flags = BlockFlags {
            no_block: false,
            block_attempts: 3,
        };
        let (mut c, out, err) = ctx(&[
            (200, r#"{"name":"g.service","desiredState":"launched"}"#),
            (
                200,
                r#"{"restarts":[{"machineID":"113f16a7aa"},{"machineID":"2cb2e8a6ee","error":"the restart failed: job failed"}]}"#,
            ),
            (200, MACHINES_2),
        ]);
        let e = block(c.restart(&["g".into()], None, &block_flags)).unwrap_err();
        assert_eq!(format!("{e:#}"), "Error: 1 restart failed");
        assert_eq!(
            out.text(),
            "Restarted unit g.service on 113f16a7.../10.0.0.1\n"
        );
        assert_eq!(
            err.text(),
            "Error restarting unit g.service on 2cb2e8a6.../10.0.0.3: the restart failed: job failed\n"
        );
        assert_eq!(
            c.api.transport().requests[1].0,
            "POST /fleet/v1/units/g.service/restart"
        );

        let (mut c, _, _) = ctx(&[
            (200, r#"{"name":"x.service","desiredState":"launched"}"#),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ]);
        let e = block(c.restart(&["x".into()], Some("m1"), &block_flags)).unwrap_err();
        assert_eq!(format!("{e:#}"), "Error: unit x.service does not exist");
        assert_eq!(
            c.api.transport().requests[1].0,
            "POST /fleet/v1/units/x.service/restart?machineID=m1"
        );
        let (mut c, _, _) = ctx(&[(
            404,
            r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
        )]);
        let e = block(c.restart(&["x".into()], None, &block_flags)).unwrap_err();
        assert!(
            format!("{e:#}").contains("x.service does not exist"),
            "{e:#}"
        );
    }

    #[test]
    fn restart_starts_a_unit_that_is_loaded_or_inactive() {
        let block_flags = BlockFlags {
            no_block: false,
            block_attempts: 3,
        };
        let (mut c, out, _) = ctx(&[
            (200, r#"{"name":"a.service","desiredState":"loaded"}"#),
            (204, ""),
            (
                200,
                r#"{"name":"a.service","desiredState":"launched","currentState":"launched","machineID":"113f16a7aa"}"#,
            ),
            (200, MACHINES_2),
        ]);
        block(c.restart(&["a".into()], None, &block_flags)).unwrap();
        assert_eq!(
            out.text(),
            "Unit a.service launched on 113f16a7.../10.0.0.1\n"
        );
        let reqs: Vec<&str> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(reqs[1], "PUT /fleet/v1/units/a.service");
        assert!(!reqs.iter().any(|r| r.ends_with("/restart")), "{reqs:?}");
        let (mut c, out, _) = ctx(&[
            (200, r#"{"name":"a.service","desiredState":"inactive"}"#),
            (204, ""),
        ]);
        let no_block = BlockFlags {
            no_block: true,
            block_attempts: 3,
        };
        block(c.restart(&["a".into()], None, &no_block)).unwrap();
        assert_eq!(out.text(), "Triggered unit a.service start\n");
    }

    fn ssh_args(args: &[&str]) -> SshArgs {
        SshArgs {
            machine: None,
            unit: None,
            forward_agent: false,
            ssh_port: 22,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn ssh_finds_a_machine_by_unique_id_prefix_and_keeps_the_command() {
        let (mut c, _, _) = ctx(&[(200, MACHINES_2)]);
        let (ip, cmd) = block(c.ssh_target(&ssh_args(&["2cb", "ls", "-l"]))).unwrap();
        assert_eq!(
            (ip.as_str(), cmd),
            ("10.0.0.3", vec!["ls".into(), "-l".into()])
        );

        // An ambiguous prefix names the candidates (and is no unit either).
        let (mut c, _, _) = ctx(&[
            (200, MACHINES_2),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ]);
        let e = block(c.ssh_target(&ssh_args(&["113f"]))).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("matches 2 machines (113f16a7aa, 113f99bbcc)"),
            "{msg}"
        );
    }

    #[test]
    fn ssh_to_a_unit_goes_to_its_machine_and_a_global_one_needs_a_machine() {
        let placed = r#"{"name":"web.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/a"}],"desiredState":"launched","machineID":"2cb2e8a6ee"}"#;
        let (mut c, _, _) = ctx(&[(200, MACHINES_2), (200, placed)]);
        let (ip, cmd) = block(c.ssh_target(&ssh_args(&["web", "hostname"]))).unwrap();
        assert_eq!(
            (ip.as_str(), cmd),
            ("10.0.0.3", vec!["hostname".to_string()])
        );

        // --unit: every argument is the command.
        let (mut c, _, _) = ctx(&[(200, placed), (200, MACHINES_2)]);
        let mut a = ssh_args(&["2cb", "x"]);
        a.unit = Some("web".into());
        let (_, cmd) = block(c.ssh_target(&a)).unwrap();
        assert_eq!(cmd, ["2cb", "x"]);

        let global = r#"{"name":"g.service","options":[{"section":"X-Fleet","name":"Global","value":"true"}],"desiredState":"launched"}"#;
        let states = r#"{"states":[{"name":"g.service","machineID":"113f16a7aa"},{"name":"g.service","machineID":"2cb2e8a6ee"}]}"#;
        let (mut c, _, _) = ctx(&[(200, global), (200, states)]);
        let mut a = ssh_args(&[]);
        a.unit = Some("g".into());
        let e = block(c.ssh_target(&a)).unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("runs on 2 machines (113f16a7aa, 2cb2e8a6ee): pick one with --machine"),
            "{e:#}"
        );
        let e = block(ctx(&[]).0.ssh_target(&ssh_args(&[]))).unwrap_err();
        assert!(format!("{e:#}").contains("one machine or unit"), "{e:#}");
    }

    #[test]
    fn journal_of_a_global_unit_reads_each_machine_under_a_heading_and_follows_them_all() {
        let several = r#"{"error":{"code":409,"message":"global unit a.service runs on 2 machines (113f16a7aa, 2cb2e8a6ee); choose one with machineID="}}"#;
        let states = r#"{"states":[{"name":"a.service","machineID":"2cb2e8a6ee"},{"name":"a.service","machineID":"113f16a7aa"}]}"#;
        let (mut c, out, err) = ctx(&[
            (409, several),
            (200, states),
            (
                200,
                r#"{"machineID":"113f16a7aa","text":"a1\n","cursor":"a1"}"#,
            ),
            (200, MACHINES_2),
            (
                200,
                r#"{"machineID":"2cb2e8a6ee","text":"b1\n","cursor":"b1"}"#,
            ),
            // Following: nothing new on the first, two lines on the second, then the first again.
            (200, r#"{"machineID":"113f16a7aa","text":""}"#),
            (
                200,
                r#"{"machineID":"2cb2e8a6ee","text":"b2\nb3\n","cursor":"b3"}"#,
            ),
            (
                200,
                r#"{"machineID":"113f16a7aa","text":"a2\n","cursor":"a2"}"#,
            ),
            (
                504,
                r#"{"error":{"code":504,"message":"machine 2cb2e8a6ee did not answer in time"}}"#,
            ),
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ]);
        let e = block(c.journal(&journal_args(true), std::future::pending())).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "Error reading the journal of a.service: unit does not exist"
        );
        assert_eq!(
            out.text(),
            "a.service on 113f16a7.../10.0.0.1:\na1\n\n\
             a.service on 2cb2e8a6.../10.0.0.3:\nb1\nb2\nb3\n\n\
             a.service on 113f16a7.../10.0.0.1:\na2\n"
        );
        assert_eq!(
            err.text(),
            "WARNING: machine 2cb2e8a6ee did not answer in time; retrying\n"
        );
        let paths: Vec<&str> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(
            paths[2],
            "GET /fleet/v1/units/a.service/journal?lines=3&machineID=113f16a7aa"
        );
        assert_eq!(
            paths[6],
            "GET /fleet/v1/units/a.service/journal?lines=1000&cursor=b1&machineID=2cb2e8a6ee"
        );

        // Without --follow: each machine once, then done.
        let (mut c, out, _) = ctx(&[
            (409, several),
            (200, states),
            (200, r#"{"machineID":"113f16a7aa","text":"a1\n"}"#),
            (200, MACHINES_2),
            (200, r#"{"machineID":"2cb2e8a6ee","text":""}"#),
        ]);
        block(c.journal(&journal_args(false), std::future::pending())).unwrap();
        assert_eq!(
            out.text(),
            "a.service on 113f16a7.../10.0.0.1:\na1\n\na.service on 2cb2e8a6.../10.0.0.3:\n"
        );
    }
}
