//! Scenario files: the machines, their units, the settings and a timeline of faults (TOML).
//!
//! ```toml
//! name = "rack-loss"
//! duration = "90s"
//!
//! [machines]
//! count = 1000
//! racks = 20            # metadata rack=r00..r19, contiguous blocks of machines
//!
//! [units]
//! dir = "units"         # real .service files with [X-Fleet] sections, relative to this file
//! instances = { "web@.service" = 2000 }
//!
//! [config]
//! agent_ttl = "10s"
//!
//! [[fault]]
//! at = "30s"
//! kind = "crash"
//! machines = "rack=r03"
//! ```
//!
//! Units can also be written out in the file itself, one `[[units.unit]]` table each with its whole
//! unit file (what `fleetctl simulate capture` writes; `dir` may then be left out):
//!
//! ```toml
//! [[units.unit]]
//! name = "db.service"
//! state = "launched"                 # launched (default), loaded (refused), inactive (not submitted)
//! running_on = ["2c0ffee..."]        # where it was active when captured: claimed there at start
//! file = """
//! [Service]
//! ExecStart=/usr/bin/sleep infinity
//! """
//! ```
//!
//! Selectors (`machines`, `from`, `to`) are the operator's terms ([`crate::selector`]): metadata
//! `region=eu-west,rack=b` (every pair must hold), a machine ID or ID prefix `3f9a`, an index `7`, a
//! range `0-99`, `all`, `random:50`, and `etcd` (the etcd cluster, as a side of a partition).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use fleet_sched::DesiredState;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::selector::Selector;

/// A duration written as `250ms`, `30s`, `2m`, `1h` or `1500us` (stored in microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub u64);

impl Dur {
    /// From milliseconds.
    pub const fn ms(ms: u64) -> Dur {
        Dur(ms * 1000)
    }
    /// From seconds.
    pub const fn secs(s: u64) -> Dur {
        Dur(s * 1_000_000)
    }
    /// As a `std` duration.
    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0)
    }
    /// In seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    /// Parses `250ms`, `30s`, `2m`, `1h`, `1500us` (a bare number is seconds).
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 30s, 2m"))?;
        let mult = match unit.trim() {
            "us" => 1.0,
            "ms" => 1e3,
            "" | "s" => 1e6,
            "m" | "min" => 60e6,
            "h" => 3600e6,
            other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
        };
        Ok(Dur((n * mult).round() as u64))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1000) {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{us}us")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(u64),
            F(f64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => Dur::parse(&s).map_err(serde::de::Error::custom),
            Raw::I(n) => Ok(Dur::secs(n)),
            Raw::F(x) => Ok(Dur((x * 1e6).round() as u64)),
        }
    }
}

/// A whole scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in reports.
    pub name: String,
    /// What the scenario shows.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Simulated time to run.
    pub duration: Dur,
    /// The machines.
    pub machines: Machines,
    /// The units submitted (all `launched`).
    pub units: Units,
    /// Timers, TTLs and the models of network, etcd and systemd.
    #[serde(default, skip_serializing_if = "is_default")]
    pub config: Config,
    /// Bounds the invariant checker enforces.
    #[serde(default, skip_serializing_if = "is_default")]
    pub invariants: Bounds,
    /// The fault timeline.
    #[serde(default, rename = "fault", skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// Where relative paths (the units folder) are resolved; set by [`Scenario::load`].
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// The machines of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machines {
    /// How many machines (IDs `m00000`, `m00001`, ...), in addition to `list`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub count: usize,
    /// Split the counted machines into this many racks: metadata `rack=r00`, ... (contiguous blocks).
    #[serde(default, skip_serializing_if = "is_default")]
    pub racks: usize,
    /// Metadata every counted machine has.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Machines listed one by one (their indices follow the counted machines').
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub list: Vec<MachineEntry>,
}

/// One listed machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineEntry {
    /// Its ID (ASCII letters and digits); default `m<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its `k=v` metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The units: a folder of unit files and how many instances of each template, and/or units written
/// in the scenario itself (`[[units.unit]]`, what `fleetctl simulate capture` writes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Units {
    /// Folder of `.service` files (relative to the scenario file). Non-template files are submitted
    /// as they are; templates only through `instances`. Optional when `unit` lists the units.
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub dir: PathBuf,
    /// Template file name → number of instances (`web@1.service` ... `web@N.service`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, usize>,
    /// Only these files of the folder (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// Units written out in the scenario, each with its whole unit file.
    #[serde(default, rename = "unit", skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<InlineUnit>,
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// A written-out unit's desired state when the scenario gives none.
fn launched() -> DesiredState {
    DesiredState::Launched
}

/// One unit written out in the scenario (`[[units.unit]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineUnit {
    /// Its name (`web.service`, `web@1.service`).
    pub name: String,
    /// Its desired state, as fleet's API words it (default `launched`).
    #[serde(default = "launched")]
    pub state: DesiredState,
    /// Where it was active when captured (machine IDs; several for a global unit). The simulated
    /// cluster starts from it: a non-global unit active on one machine is claimed there when the
    /// units are submitted (the claim etcd held), and placement, stable like fleetd's, keeps it there
    /// unless its requirements say otherwise. `fleetctl simulate capture` names every unit the
    /// simulated cluster still runs elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running_on: Vec<String>,
    /// The unit file, exactly as the cluster stores it (`fleetctl cat`).
    pub file: String,
}

/// How the gossip layer is simulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GossipMode {
    /// The real `fleet_gossip::core::Node` (foca) for every machine.
    #[default]
    Real,
    /// A SWIM model (probes, indirect probes, suspicion, epidemic dissemination) for large clusters.
    Model,
}

/// Settings. Defaults follow fleetd's defaults where fleetd has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Real gossip core or the SWIM model.
    pub gossip_mode: GossipMode,
    /// Model mode only: every machine learns a verdict (or a rejoin) at the same moment, when the
    /// last observer would have, so that agents share one placement view and one plan per change.
    /// Detection times are still drawn per observer. Reschedule times become pessimistic by the
    /// spread of dissemination (about one second). Needed for 10,000 machines; see the README.
    pub sync_views: bool,
    /// Gossip: probe period (400ms, fleetd's default).
    pub probe_period: Dur,
    /// Gossip: direct ack timeout (80ms).
    pub probe_rtt: Dur,
    /// Gossip: indirect probes (3).
    pub num_indirect_probes: usize,
    /// Gossip: shortest suspicion timeout (450ms: the gossip core's default, derived from a blip
    /// tolerance of 700 ms, fleetd's default `fence_after`; with real cores Lifeguard starts it at
    /// 1.05s and shrinks it with independent confirmations; the model uses this one).
    pub suspect_to_down_after: Dur,
    /// Gossip: dissemination round period (100ms).
    pub gossip_interval: Dur,
    /// Gossip: members per round (3).
    pub gossip_fanout: usize,
    /// Gossip: transmissions per update (12).
    pub max_transmissions: u8,
    /// Gossip: anti-entropy period (5s).
    pub anti_entropy_interval: Dur,
    /// Agent: lease TTL (`agent_ttl`, 30s).
    pub agent_ttl: Dur,
    /// Gossip: how long a down member is remembered (`remove_down_after`, 600s).
    pub remove_down_after: Dur,
    /// Agent: `fence_after` (F, 700ms, as fleetd): the one setting of the safety rules (`fleet_decide::Timing`).
    pub fence_after: Dur,
    /// Agent: periodic full pass (`engine_reconcile_interval`, 2s).
    pub reconcile_interval: Dur,
    /// Agent: how often fleetd reads its gossip view besides on gossip's events (500ms); a change of
    /// the machines gossip suspects wakes the agent (its plan leaves them out).
    pub view_refresh: Dur,
    /// Fence guard: how often it reads the deadline (20ms).
    pub guard_poll: Dur,
    /// Agent: fleetd's etcd request timeout (1s): later answers are dropped.
    pub etcd_timeout: Dur,
    /// Agent: a pass runs this long after what triggered it (fleetd coalesces for 5ms).
    pub coalesce: Dur,
    /// Simulator: passes are aligned to this grid so that agents share plans (see the README).
    pub pass_quantum: Dur,
    /// When the units are submitted (after membership formed).
    pub units_at: Dur,
    /// Network: one-way latency between machines.
    pub latency: Dur,
    /// Network: uniform jitter added to the latency.
    pub jitter: Dur,
    /// Network: loss probability on every link.
    pub loss: f64,
    /// etcd: round trip of one request.
    pub etcd_rtt: Dur,
    /// etcd: delay from a commit to its watch event reaching agents.
    pub watch_delay: Dur,
    /// systemd: time from StartUnit to active.
    pub start_delay: Dur,
    /// systemd: time from StopUnit to inactive.
    pub stop_delay: Dur,
    /// systemd: probability that a start fails (the unit ends `failed`).
    pub start_failure: f64,
    /// Report: sampling period of the time series.
    pub sample_interval: Dur,
}

impl Default for Config {
    fn default() -> Self {
        // The gossip settings are the gossip core's defaults (fleetd builds them in).
        let g = fleet_gossip::core::Config::default();
        let d = |d: std::time::Duration| Dur(d.as_micros() as u64);
        Config {
            gossip_mode: GossipMode::Real,
            sync_views: false,
            probe_period: d(g.probe_period),
            probe_rtt: d(g.probe_rtt),
            num_indirect_probes: g.num_indirect_probes,
            suspect_to_down_after: d(g.suspect_to_down_after),
            gossip_interval: d(g.gossip_interval),
            gossip_fanout: g.gossip_fanout,
            max_transmissions: g.max_transmissions,
            anti_entropy_interval: d(g.anti_entropy_interval),
            remove_down_after: d(g.remove_down_after),
            agent_ttl: Dur::secs(30),
            fence_after: d(fleet_decide::Timing::DEFAULT_FENCE_AFTER),
            reconcile_interval: Dur::secs(2),
            view_refresh: Dur::ms(500),
            guard_poll: Dur::ms(20),
            etcd_timeout: Dur::secs(1),
            coalesce: Dur::ms(5),
            pass_quantum: Dur::ms(20),
            units_at: Dur::secs(5),
            latency: Dur(500),
            jitter: Dur(200),
            loss: 0.0,
            etcd_rtt: Dur::ms(2),
            watch_delay: Dur::ms(10),
            start_delay: Dur::ms(200),
            stop_delay: Dur::ms(100),
            start_failure: 0.0,
            sample_interval: Dur::secs(1),
        }
    }
}

/// Bounds checked at every step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bounds {
    /// A non-global unit's process may run on two machines at once at most this long (0: never).
    pub double_run: Dur,
    /// A placeable launched unit must run somewhere within this long (30s).
    pub placement: Dur,
    /// Membership must converge this long after the last fault healed (30s).
    pub converge: Dur,
    /// A `MachineOf=` follower may run without its target on its machine at most this long (5s: the
    /// target may start a moment later, or be stopping after a move).
    pub machine_of: Dur,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            double_run: Dur(0),
            placement: Dur::secs(30),
            converge: Dur::secs(30),
            machine_of: Dur::secs(5),
        }
    }
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Machines lose power: fleetd and its units stop. With `for`, they boot again after it.
    /// (`kill` in a file, `--kill` on the command line.)
    #[serde(alias = "kill")]
    Crash,
    /// Crashed machines boot (fleetd starts with a new incarnation, systemd runs nothing).
    Restart,
    /// Machines pause (a VM pause; with `agent_only`, only fleetd: its units keep running). With
    /// `for`, they resume after it.
    Freeze,
    /// Frozen machines resume.
    Thaw,
    /// Traffic from `from` to `to` is dropped (both ways unless `oneway`). `etcd` may be a side.
    Partition,
    /// Ends every partition, loss and delay rule.
    Heal,
    /// Datagrams (and etcd requests) from `from` to `to` are lost with probability `rate`.
    Loss,
    /// Traffic from `from` to `to` takes `extra` longer.
    Delay,
    /// etcd answers nothing (lost quorum / leader).
    EtcdOutage,
    /// Every etcd request takes `extra` longer.
    EtcdSlow,
    /// The machines' clocks run at `rate` (1.005 = 0.5% fast; the safety rules assume rates within
    /// `fleet_decide::Timing::clock_rate_ppm`, 1%).
    ClockSkew,
    /// fleetd dies on the machines (its units, its fence guard and its saved lease stay). With `for`,
    /// systemd starts it again after that long; without, it stays dead.
    AgentCrash,
    /// A second fleetd starts with the machine ID of each of the machines (on another address). With
    /// `for`, it stops after that long.
    Impostor,
    /// Machine metadata changes at run time: `set` pairs are added or replaced, `unset` keys removed.
    /// With `for`, the old metadata comes back after that long.
    SetMetadata,
}

/// One fault of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When it starts.
    pub at: Dur,
    /// What it does.
    pub kind: FaultKind,
    /// How long until it is undone (restart, thaw, heal, end of outage...); forever when absent.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<Dur>,
    /// The machines concerned (crash, restart, freeze, thaw, clock_skew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<String>,
    /// One side of a partition, loss or delay (default `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The other side (default `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Partition: only from `from` to `to`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oneway: bool,
    /// Loss probability; clock rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Extra delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Dur>,
    /// Freeze only fleetd, not its units.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent_only: bool,
    /// `set_metadata`: pairs to add or replace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// `set_metadata`: keys to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset: Vec<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The scenario file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The TOML did not match the scenario format.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("scenario {name}: {message}")]
    Invalid {
        /// The scenario.
        name: String,
        /// What is wrong.
        message: String,
    },
}

impl Scenario {
    /// Reads a scenario file; relative paths inside resolve against its folder.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Scenario::from_toml(&text, &base).map_err(|e| match e {
            ScenarioError::Toml { source, .. } => ScenarioError::Toml {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses a scenario from TOML text; relative paths resolve against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Toml {
            path: PathBuf::from("<scenario>"),
            source,
        })?;
        s.base_dir = base_dir.to_path_buf();
        s.validate()?;
        Ok(s)
    }

    /// The scenario as TOML, in the format [`Scenario::from_toml`] reads (settings left at their
    /// defaults are left out, so that the file follows fleetd's defaults).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The fault timeline as TOML (`[[fault]]` tables), for reproducing a run.
    pub fn faults_toml(faults: &[Fault]) -> String {
        #[derive(Serialize)]
        struct T<'a> {
            fault: &'a [Fault],
        }
        toml::to_string(&T { fault: faults }).unwrap_or_default()
    }

    fn invalid(&self, message: String) -> ScenarioError {
        ScenarioError::Invalid {
            name: self.name.clone(),
            message,
        }
    }

    /// Checks the settings and the fault timeline (selectors are resolved against the machines when
    /// a run starts).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.machines.count + self.machines.list.len() == 0 {
            return Err(self.invalid("no machines".into()));
        }
        if is_empty_path(&self.units.dir) && self.units.inline.is_empty() {
            return Err(self.invalid("units: no dir and no [[units.unit]]".into()));
        }
        if self.config.probe_rtt >= self.config.probe_period {
            return Err(self.invalid("probe_rtt must be less than probe_period".into()));
        }
        if !(0.0..=1.0).contains(&self.config.loss)
            || !(0.0..=1.0).contains(&self.config.start_failure)
        {
            return Err(self.invalid("loss and start_failure are probabilities (0..1)".into()));
        }
        if self.config.pass_quantum.0 == 0
            || self.config.sample_interval.0 == 0
            || self.config.view_refresh.0 == 0
        {
            return Err(self.invalid(
                "pass_quantum, sample_interval and view_refresh must be positive".into(),
            ));
        }
        self.timing()
            .check()
            .map_err(|e| self.invalid(format!("fence_after and agent_ttl: {e}")))?;
        for (i, f) in self.faults.iter().enumerate() {
            let need = |what: &str, ok: bool| {
                if ok {
                    Ok(())
                } else {
                    Err(self.invalid(format!("fault {i} ({:?}) needs {what}", f.kind)))
                }
            };
            match f.kind {
                FaultKind::Crash
                | FaultKind::Restart
                | FaultKind::Freeze
                | FaultKind::Thaw
                | FaultKind::AgentCrash
                | FaultKind::Impostor => need("machines", f.machines.is_some())?,
                FaultKind::SetMetadata => {
                    need("machines", f.machines.is_some())?;
                    need("set or unset", !f.set.is_empty() || !f.unset.is_empty())?
                }
                FaultKind::ClockSkew => {
                    need("machines", f.machines.is_some())?;
                    need("a positive rate", f.rate.is_some_and(|r| r > 0.0))?
                }
                FaultKind::Loss => need(
                    "rate (0..1)",
                    f.rate.is_some_and(|r| (0.0..=1.0).contains(&r)),
                )?,
                FaultKind::Delay | FaultKind::EtcdSlow => need("extra", f.extra.is_some())?,
                FaultKind::Partition | FaultKind::Heal | FaultKind::EtcdOutage => {}
            }
            for sel in [&f.machines, &f.from, &f.to].into_iter().flatten() {
                Selector::parse(sel).map_err(|e| self.invalid(format!("fault {i}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The double-run bound in force.
    pub fn double_run_bound(&self) -> Dur {
        self.invariants.double_run
    }

    /// The timings of the safety rules for these settings (the decision core's own type).
    pub fn timing(&self) -> fleet_decide::Timing {
        let c = &self.config;
        fleet_decide::Timing::new(c.fence_after.std(), c.agent_ttl.std())
    }
}
