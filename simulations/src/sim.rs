//! The discrete-event simulator: one event queue, a simulated clock, and every machine's systemd, fence
//! guard, fleetd (gossip node and agent) and clock.
//!
//! What runs for real: [`fleet_gossip::core::Node`] (foca SWIM, dissemination, anti-entropy; in
//! `gossip_mode = "real"`), the agent's decision core ([`fleet_decide`]: quorum, fence deadline, per-unit
//! verdicts; see [`crate::agent`]), [`fleet_sched::placement::Planner`] (as fleetd's agent),
//! [`fleet_sched::reconcile::reconcile`], unit file parsing and [`fleet_sched::Requirements::from_unit`].
//! What is modelled: the agent's event loop that carries the verdicts out, etcd ([`crate::etcd`]), systemd
//! (a start and a stop delay, a failure probability), the fence guard, the network ([`crate::net`]), and
//! in `gossip_mode = "model"` the SWIM layer itself ([`crate::model`]). The invariants are checked by
//! [`crate::check`], which reads only the simulated systemd's truth.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use fleet_decide::Time;
use fleet_decide::{OwnLease, Timing, Witness};
use fleet_gossip::core::{Config as GossipConfig, Event, FullState, Node, SyncAnswer, SyncOffer};
use fleet_gossip::{NodeIdentity, UnitState as GossipUnitState};
use fleet_sched::placement::{Decision, MachineInfo, Planner, UnitInfo};
use fleet_sched::reconcile::{reconcile, ActiveState, CurrentUnit, TargetUnit, Task};
use fleet_sched::{DesiredState, MachineId, Requirements, UnitFile, UnitHash, UnitName};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::agent::{Agent, Ask, Req, Resp};
use crate::check::{Checker, MachineTruth};
use crate::etcd::Etcd;
use crate::model::SwimModel;
use crate::net::{Effect, Net};
use crate::outcome::Observer;
use crate::report::Metrics;
use crate::scenario::{Fault, FaultKind, GossipMode, Scenario, Selector, UnitDesired};

/// A datagram in flight.
type Data = Vec<u8>;

/// A machine's metadata before a `set_metadata` fault changed it.
type SavedMetadata = (usize, BTreeMap<String, String>);

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The units folder could not be read.
    #[error("reading units folder {path}: {source}")]
    UnitsDir {
        /// The folder.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A unit file is not valid.
    #[error("unit {name}: {message}")]
    Unit {
        /// File or instance name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Two machines have the same ID, or an ID is not valid.
    #[error("machine {0}: {1}")]
    Machine(String, String),
    /// A selector names no machine the scenario has, or is malformed.
    #[error("fault {0}: {1}")]
    Fault(usize, String),
}

/// One unit of the scenario.
#[derive(Clone, Debug)]
pub struct UnitDef {
    /// Its name.
    pub name: UnitName,
    /// Its content hash.
    pub hash: UnitHash,
    /// `Global=true`.
    pub global: bool,
}

/// A machine's clock: local time runs at `rate` since the anchor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    anchor_g: u64,
    anchor_l: u64,
    rate: f64,
}

impl Clock {
    pub(crate) fn local(&self, g: u64) -> u64 {
        if self.rate == 1.0 {
            return self.anchor_l + (g - self.anchor_g);
        }
        self.anchor_l + ((g - self.anchor_g) as f64 * self.rate) as u64
    }
    /// Earliest global time at which local time reaches `l`.
    pub(crate) fn global(&self, l: u64) -> u64 {
        if l <= self.anchor_l {
            return self.anchor_g;
        }
        if self.rate == 1.0 {
            return self.anchor_g + (l - self.anchor_l);
        }
        let mut g = self.anchor_g + ((l - self.anchor_l) as f64 / self.rate).ceil() as u64;
        while self.local(g) < l {
            g += 1;
        }
        g
    }
    fn set_rate(&mut self, g: u64, rate: f64) {
        self.anchor_l = self.local(g);
        self.anchor_g = g;
        self.rate = rate;
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SysUnit {
    pub(crate) hash: UnitHash,
    pub(crate) active: ActiveState,
    pub(crate) started: bool,
    job: u32,
    unload_after_stop: bool,
}

impl SysUnit {
    /// Its process exists: from the start job until the stop completes.
    pub(crate) fn process(&self) -> bool {
        matches!(
            self.active,
            ActiveState::Activating
                | ActiveState::Active
                | ActiveState::Reloading
                | ActiveState::Deactivating
        )
    }
}

pub(crate) struct Machine {
    /// The machine ID its fleetd runs with.
    pub(crate) id: MachineId,
    pub(crate) addr: SocketAddr,
    /// The machine whose ID this is: itself, or for a second agent with a taken ID, the original.
    pub(crate) ident: u32,
    /// A second agent started with another machine's ID (an `impostor` fault's slot).
    pub(crate) impostor: bool,
    /// Powered on (not crashed).
    pub(crate) powered: bool,
    /// Paused as a whole (VM pause, cgroup freezer of everything): units, guard and fleetd.
    pub(crate) frozen: bool,
    /// Boot count: systemd jobs and guard checks of an earlier boot are void.
    pub(crate) boot: u32,
    pub(crate) clock: Clock,
    pub(crate) units: BTreeMap<u32, SysUnit>,
    /// systemd jobs that finished while the machine was paused.
    deferred: Vec<(u32, u32, bool)>,
    /// The fence deadline fleetd last wrote for its guard (`None`: nothing written yet this boot;
    /// `Some(None)`: nothing may run).
    pub(crate) guard: Option<Option<u64>>,
    /// When the guard's next check is scheduled (global µs).
    guard_check: Option<u64>,
    /// fleetd's saved lease and confirmations (its state directory: kept across fleetd restarts, lost
    /// with a reboot, whose monotonic clock starts over).
    pub(crate) lease: OwnLease,
    /// This machine as a witness: its promises (kept across fleetd restarts, lost with a reboot).
    pub(crate) witness: Witness,
    /// The committee's seats as fleetd knows them: announcement `create_revision`, when it vanished
    /// (local µs); kept across fleetd restarts, lost with a reboot.
    pub(crate) seats: BTreeMap<u32, (i64, Option<u64>)>,
    pub(crate) incarnation: u64,
    /// fleetd, while it runs.
    pub(crate) agent: Option<Box<Agent>>,
    /// fleetd's life count: events of an earlier life are void.
    pub(crate) gen: u32,
    /// fleetd alone is paused (SIGSTOP): units and guard go on.
    pub(crate) agent_frozen: bool,
}

impl Machine {
    /// Whether its units' processes execute (powered, not paused as a whole).
    pub(crate) fn units_run(&self) -> bool {
        self.powered && !self.frozen
    }
    /// Whether fleetd (agent and gossip node) executes.
    pub(crate) fn agent_runs(&self) -> bool {
        self.powered && !self.frozen && !self.agent_frozen && self.agent.is_some()
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Ev {
    SubmitUnits,
    Deliver {
        to: u32,
        from: u32,
        data: Data,
    },
    NodeWake {
        m: u32,
        gen: u32,
    },
    Pass {
        m: u32,
        gen: u32,
    },
    Tick {
        m: u32,
        gen: u32,
    },
    Keepalive {
        m: u32,
        gen: u32,
    },
    UnitDone {
        m: u32,
        boot: u32,
        unit: u32,
        job: u32,
        start: bool,
    },
    GuardCheck {
        m: u32,
        boot: u32,
    },
    EtcdArrive {
        m: u32,
        gen: u32,
        req: Req,
        sent: u64,
        sent_g: u64,
    },
    EtcdAnswer {
        m: u32,
        gen: u32,
        req: Req,
        resp: Resp,
        sent: u64,
        sent_g: u64,
    },
    Ask {
        from: u32,
        gen: u32,
        to: u32,
        ask: Ask,
        sent: u64,
        sent_g: u64,
    },
    Answer {
        m: u32,
        gen: u32,
        from: u32,
        ask: Ask,
        granted: bool,
        sent: u64,
        sent_g: u64,
    },
    EtcdTick,
    WatchFlush,
    Fault(usize),
    Undo(usize),
    Check,
    Sample,
    Converge,
    Model(crate::model::ModelEv),
}

struct QItem {
    at: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for QItem {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for QItem {}
impl PartialOrd for QItem {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for QItem {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// A plan, indexed by machine.
pub(crate) struct PlanIndex {
    pub(crate) on: HashMap<u32, Vec<(u32, bool)>>,
}

pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One simulation run.
pub struct Sim {
    pub(crate) sc: Scenario,
    pub(crate) seed: u64,
    pub(crate) now: u64,
    queue: BinaryHeap<Reverse<QItem>>,
    seq: u64,
    pub(crate) rng: StdRng,
    pub(crate) base: Instant,
    pub(crate) machines: Vec<Machine>,
    /// Machines of the cluster (impostor slots come after them).
    pub(crate) cluster: usize,
    pub(crate) units: Vec<UnitDef>,
    base_infos: Vec<UnitInfo>,
    pub(crate) machine_infos: Vec<MachineInfo>,
    pub(crate) by_id: HashMap<MachineId, u32>,
    unit_index: HashMap<UnitName, u32>,
    pub(crate) etcd: Etcd,
    pub(crate) etcd_up: bool,
    pub(crate) etcd_extra: u64,
    pub(crate) net: Net,
    plans: HashMap<(u64, i64), Rc<PlanIndex>>,
    /// The incremental planner behind `plans` (fleetd's agent keeps one too).
    planner: Option<Planner>,
    pub(crate) plan_computations: u64,
    watch_pending: bool,
    pub(crate) submitted: bool,
    pub(crate) metrics: Metrics,
    pub(crate) checker: Checker,
    /// What each machine's systemd ran, for the operator's answers (moves, downtime, load).
    observer: Observer,
    pub(crate) timing: Timing,
    gossip_cfg: GossipConfig,
    pub(crate) model: Option<SwimModel>,
    /// When each machine failed (crash, pause, fleetd death), for detection times.
    failed_at: Vec<Option<u64>>,
    /// Metadata before a `set_metadata` fault, per fault.
    saved_metadata: HashMap<usize, Vec<SavedMetadata>>,
    events_processed: u64,
    last_at: u64,
    stop_on_violation: bool,
    /// A unit whose verdicts are printed on stderr (`FLEET_SIM_TRACE=<unit name>`, for debugging).
    pub(crate) trace: Option<u32>,
}

const CHECK_EVERY: u64 = 100_000;

impl Sim {
    /// Sets up a run of `sc` with `seed`: loads the units, creates the machines (all booting at 0).
    pub fn new(sc: &Scenario, seed: u64) -> Result<Sim, SimError> {
        let sc = sc.clone();
        let rng = StdRng::seed_from_u64(seed);
        // Machines.
        let mut ids = Vec::new();
        let mut metas = Vec::new();
        let per_rack = if sc.machines.racks > 0 {
            sc.machines.count.div_ceil(sc.machines.racks)
        } else {
            0
        };
        for i in 0..sc.machines.count {
            let mut meta = sc.machines.metadata.clone();
            if let Some(rack) = i.checked_div(per_rack) {
                meta.insert("rack".into(), format!("r{rack:02}"));
            }
            ids.push(format!("m{i:05}"));
            metas.push(meta);
        }
        for (k, e) in sc.machines.list.iter().enumerate() {
            let i = sc.machines.count + k;
            ids.push(e.id.clone().unwrap_or_else(|| format!("m{i:05}")));
            metas.push(e.metadata.clone());
        }
        let cluster = ids.len();
        let mut by_id = HashMap::new();
        let mut machine_infos = Vec::new();
        for (i, (id, meta)) in ids.iter().zip(metas).enumerate() {
            let mid =
                MachineId::parse(id).map_err(|e| SimError::Machine(id.clone(), e.to_string()))?;
            if by_id.insert(mid.clone(), i as u32).is_some() {
                return Err(SimError::Machine(id.clone(), "listed twice".into()));
            }
            machine_infos.push(MachineInfo {
                id: mid,
                metadata: meta,
                refused: Default::default(),
            });
        }
        // Check fault selectors up front; impostor faults get machine slots of their own.
        let mut impostors = Vec::new();
        for (k, f) in sc.faults.iter().enumerate() {
            for (field, s) in [("machines", &f.machines), ("from", &f.from), ("to", &f.to)] {
                let Some(s) = s else { continue };
                let bad = |e: String| SimError::Fault(k, format!("{field} = {s:?}: {e}"));
                let sel = Selector::parse(s).map_err(bad)?;
                if field == "machines" && sel.has_etcd() {
                    return Err(bad(
                        "etcd is not a machine; it can only be a side of a partition, loss or delay"
                            .into(),
                    ));
                }
                let picked = sel
                    .resolve(&machine_infos, &mut fault_rng(seed, k), true)
                    .map_err(bad)?;
                if picked.is_empty() && !sel.has_etcd() {
                    return Err(bad("matches no machine".into()));
                }
                if f.kind == FaultKind::Impostor && Some(s) == f.machines.as_ref() {
                    impostors.extend(picked.into_iter().map(|i| (k, i)));
                }
            }
        }
        let mut machines = Vec::new();
        let slots = (0..cluster).map(|i| (i, false)).chain(
            impostors
                .iter()
                .map(|&(_, orig)| (orig, true))
                .collect::<Vec<_>>(),
        );
        for (slot, (ident, impostor)) in slots.enumerate() {
            let id = machine_infos[ident].id.clone();
            machines.push(Machine {
                id,
                addr: addr_of(slot as u32),
                ident: ident as u32,
                impostor,
                powered: false,
                frozen: false,
                boot: 0,
                clock: Clock {
                    anchor_g: 0,
                    anchor_l: 0,
                    rate: 1.0,
                },
                units: BTreeMap::new(),
                deferred: Vec::new(),
                guard: None,
                guard_check: None,
                lease: OwnLease::default(),
                witness: Witness::default(),
                seats: BTreeMap::new(),
                incarnation: 0,
                agent: None,
                gen: 0,
                agent_frozen: false,
            });
        }
        let n = machines.len();
        let (units, base_infos, files) = load_units(&sc)?;
        let c = &sc.config;
        let gossip_cfg = GossipConfig {
            probe_period: c.probe_period.std(),
            probe_rtt: c.probe_rtt.std(),
            num_indirect_probes: c.num_indirect_probes,
            suspect_to_down_after: c.suspect_to_down_after.std(),
            remove_down_after: c.remove_down_after.std(),
            max_transmissions: c.max_transmissions,
            gossip_interval: c.gossip_interval.std(),
            gossip_fanout: c.gossip_fanout,
            anti_entropy_interval: c.anti_entropy_interval.std(),
            ..GossipConfig::default()
        };
        let timing = sc.timing();
        // A move long after a fault ended is not caused by it: allow the slow paths (a lease that
        // expires a TTL after the fault, a claim that follows) plus some slack.
        let settle = 2 * sc.config.agent_ttl.0 + 10_000_000;
        let mut checker = Checker::new(
            &files,
            machines.iter().map(|m| m.id.to_string()).collect(),
            settle,
        );
        for (i, m) in machines.iter().enumerate() {
            if m.impostor {
                checker.impostor(i as u32);
            }
        }
        let model = (sc.config.gossip_mode == GossipMode::Model)
            .then(|| SwimModel::new(cluster, &sc.config));
        let nunits = units.len();
        let observer = Observer::new(
            units
                .iter()
                .map(|u| (u.name.as_str().to_string(), u.global))
                .collect(),
            machine_infos.iter().map(|m| m.id.to_string()).collect(),
            machines.iter().map(|m| m.ident as usize).collect(),
        );
        let unit_index = units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i as u32))
            .collect();
        let mut sim = Sim {
            seed,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            rng,
            base: Instant::now(),
            machines,
            cluster,
            units,
            base_infos,
            machine_infos,
            by_id,
            unit_index,
            etcd: Etcd::new(nunits),
            etcd_up: true,
            etcd_extra: 0,
            net: Net::new(n),
            plans: HashMap::new(),
            planner: None,
            plan_computations: 0,
            watch_pending: false,
            submitted: false,
            metrics: Metrics::new(cluster, nunits),
            checker,
            observer,
            timing,
            gossip_cfg,
            model,
            failed_at: vec![None; n],
            saved_metadata: HashMap::new(),
            events_processed: 0,
            last_at: 0,
            stop_on_violation: false,
            trace: None,
            sc,
        };
        if let Ok(name) = std::env::var("FLEET_SIM_TRACE") {
            sim.trace = sim
                .units
                .iter()
                .position(|u| u.name.as_str() == name)
                .map(|u| u as u32);
        }
        for i in 0..cluster as u32 {
            sim.power_on(i);
        }
        sim.push(sim.sc.config.units_at.0, Ev::SubmitUnits);
        sim.push(0, Ev::EtcdTick);
        sim.push(CHECK_EVERY, Ev::Check);
        sim.push(0, Ev::Sample);
        for k in 0..sim.sc.faults.len() {
            sim.push(sim.sc.faults[k].at.0, Ev::Fault(k));
        }
        if let Some(t) = sim.converge_time() {
            sim.push(t, Ev::Converge);
        }
        if let Some(mut m) = sim.model.take() {
            m.start(&mut sim);
            sim.model = Some(m);
        }
        Ok(sim)
    }

    /// Stop at the first invariant violation (used by the shrinker).
    pub fn stop_on_violation(&mut self, yes: bool) {
        self.stop_on_violation = yes;
    }

    /// Number of machines of the cluster.
    pub fn machine_count(&self) -> usize {
        self.cluster
    }

    /// Where each submitted unit is active now (systemd's `active`, on a powered machine that is
    /// not paused): unit name → machine IDs, in machine order; a unit active nowhere has no entry.
    pub fn active_units(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in self.machines.iter().filter(|m| m.powered && !m.frozen) {
            for (&u, s) in &m.units {
                if s.active == ActiveState::Active {
                    out.entry(self.units[u as usize].name.to_string())
                        .or_default()
                        .push(m.id.to_string());
                }
            }
        }
        out
    }

    /// A captured cluster starts where it ran: each non-global unit with one `running_on` machine
    /// (`[[units.unit]]`) is claimed there as the units are submitted (the claim etcd held), bound to
    /// that machine's lease; the agents then plan around it like fleetd around an existing claim.
    /// Skipped when the machine is not in the scenario or has no lease yet.
    fn claim_captured(&mut self) {
        let mut claims = Vec::new();
        for u in &self.sc.units.inline {
            let [machine] = u.running_on.as_slice() else {
                continue;
            };
            let Ok(name) = UnitName::parse(&u.name) else {
                continue;
            };
            let Some(&unit) = self.unit_index.get(&name) else {
                continue;
            };
            if self.units[unit as usize].global {
                continue;
            }
            let Some(&m) = MachineId::parse(machine)
                .ok()
                .and_then(|id| self.by_id.get(&id))
            else {
                continue;
            };
            let lease = self.machines[m as usize].lease.id;
            if lease != 0 {
                claims.push((unit, m, lease));
            }
        }
        for (unit, m, lease) in claims {
            self.etcd.txn(unit, m, lease, crate::etcd::Txn::Claim);
        }
    }

    /// Current simulated time (µs).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Events handled so far.
    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    /// When membership must have converged: the last fault's end plus the bound (None if past the end).
    fn converge_time(&self) -> Option<u64> {
        let end = self
            .sc
            .faults
            .iter()
            .map(|f| f.at.0 + f.for_.map(|d| d.0).unwrap_or(0))
            .max()
            .unwrap_or(0)
            .max(self.sc.config.units_at.0);
        let t = end + self.sc.invariants.converge.0;
        (t <= self.sc.duration.0).then_some(t)
    }

    pub(crate) fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(QItem {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    pub(crate) fn push_model(&mut self, at: u64, ev: crate::model::ModelEv) {
        self.push(at, Ev::Model(ev));
    }

    /// Runs until simulated time `until` (µs); returns false if stopped early by a violation.
    pub fn run_until(&mut self, until: u64) -> bool {
        while let Some(Reverse(top)) = self.queue.peek() {
            if top.at > until {
                break;
            }
            let Reverse(item) = self.queue.pop().expect("peeked");
            if item.at > self.last_at {
                // Every event of the instant `last_at` is done: what holds now held for a while.
                self.checker.settle(self.last_at);
                self.last_at = item.at;
            }
            self.now = item.at;
            self.events_processed += 1;
            self.handle(item.ev);
            if self.stop_on_violation && !self.checker.violations.is_empty() {
                return false;
            }
        }
        if until > self.last_at {
            self.checker.settle(self.last_at);
            self.last_at = until;
        }
        self.now = self.now.max(until);
        true
    }

    /// Runs the whole scenario and returns the report.
    pub fn run(mut self) -> crate::report::Report {
        let end = self.sc.duration.0;
        self.run_until(end);
        self.finish()
    }

    /// Ends the run (closes open intervals) and builds the report.
    pub fn finish(mut self) -> crate::report::Report {
        self.checker.settle(self.now);
        let gossip = self.gossip_totals();
        let violations = std::mem::take(&mut self.checker.violations);
        self.metrics.moves = self.checker.total_moves;
        let outcome = self.outcome();
        crate::report::Report::build(
            &self.sc,
            self.seed,
            self.now,
            &mut self.metrics,
            &self.etcd.ops,
            gossip,
            self.plan_computations,
            self.model.is_some(),
            violations,
            outcome,
        )
    }

    /// The operator's answers from the observations; the reason a unit runs nowhere is the
    /// scheduler's, for the machines whose fleetd runs at the end and the claims etcd holds then.
    fn outcome(&self) -> crate::outcome::Outcome {
        let mut plan = None;
        self.observer.outcome(self.now, |u| {
            let plan = plan.get_or_insert_with(|| {
                let live = self.truth();
                let machines: Vec<MachineInfo> = live
                    .iter()
                    .map(|&j| self.machine_infos[j as usize].clone())
                    .collect();
                let infos: Vec<UnitInfo> = self
                    .base_infos
                    .iter()
                    .enumerate()
                    .map(|(u, info)| {
                        let mut info = info.clone();
                        if let Some(c) = self.etcd.claim(u as u32) {
                            if live.contains(&c.machine) {
                                info.claim =
                                    Some(self.machine_infos[c.machine as usize].id.clone());
                            }
                        }
                        info
                    })
                    .collect();
                Planner::new(&machines, &infos).plan().decisions.clone()
            });
            match plan.get(&self.units[u as usize].name) {
                Some(Decision::Unplaceable(r)) => format!("it cannot be placed: {r}"),
                Some(d) => format!(
                    "not running at the end, though the scheduler places it on {}",
                    d.machines()
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "the scheduler does not know it".to_string(),
            }
        })
    }

    fn gossip_totals(&self) -> crate::report::GossipTotals {
        let mut t = crate::report::GossipTotals::default();
        for m in &self.machines {
            if let Some(n) = m.agent.as_ref().and_then(|a| a.node.as_ref()) {
                let c = n.counters();
                t.datagrams += c.datagrams_out;
                t.bytes += c.bytes_out;
            }
        }
        t.datagrams += self.metrics.gossip_dead_datagrams;
        t.bytes += self.metrics.gossip_dead_bytes + self.metrics.sync_bytes;
        t.sync_bytes = self.metrics.sync_bytes;
        if let Some(m) = &self.model {
            let (d, b, s) = m.traffic();
            t.datagrams += d;
            t.bytes += b;
            t.sync_bytes += s;
        }
        t
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::SubmitUnits => {
                self.submitted = true;
                self.checker.submitted(self.now);
                self.claim_captured();
                self.observer.submitted(self.now);
                for u in 0..self.units.len() {
                    if !self.units[u].global {
                        self.metrics.unit_down(u as u32, self.now, false);
                    }
                }
                self.notify_watchers();
            }
            Ev::Deliver { to, from, data } => self.deliver(to, from, data),
            Ev::NodeWake { m, gen } => self.node_wake(m, gen),
            Ev::Pass { m, gen } => {
                let now = self.now;
                let mm = &mut self.machines[m as usize];
                if mm.gen == gen {
                    if let Some(a) = mm.agent.as_mut() {
                        if a.pass_at == Some(now) {
                            a.pass_at = None;
                            self.pass(m);
                        }
                    }
                }
            }
            Ev::Tick { m, gen } => {
                if self.machines[m as usize].gen != gen {
                    return;
                }
                self.request_pass(m);
                self.rejoin_announced(m);
                let at = self.local_after(m, self.sc.config.reconcile_interval.0);
                self.push(at, Ev::Tick { m, gen });
            }
            Ev::Keepalive { m, gen } => self.keepalive(m, gen),
            Ev::UnitDone {
                m,
                boot,
                unit,
                job,
                start,
            } => self.unit_done(m, boot, unit, job, start),
            Ev::GuardCheck { m, boot } => self.guard_check(m, boot),
            Ev::EtcdArrive {
                m,
                gen,
                req,
                sent,
                sent_g,
            } => self.etcd_arrive(m, gen, req, sent, sent_g),
            Ev::EtcdAnswer {
                m,
                gen,
                req,
                resp,
                sent,
                sent_g,
            } => self.etcd_answer(m, gen, req, resp, sent, sent_g),
            Ev::Ask {
                from,
                gen,
                to,
                ask,
                sent,
                sent_g,
            } => self.witness_answer(from, gen, to, ask, sent, sent_g),
            Ev::Answer {
                m,
                gen,
                from,
                ask,
                granted,
                sent,
                sent_g,
            } => self.witness_granted(m, gen, from, ask, granted, sent, sent_g),
            Ev::EtcdTick => {
                if self.etcd_up && self.etcd.expire(self.now) {
                    self.notify_watchers();
                }
                self.push(self.now + 100_000, Ev::EtcdTick);
            }
            Ev::WatchFlush => self.watch_flush(),
            Ev::Fault(k) => self.apply_fault(k),
            Ev::Undo(k) => self.undo_fault(k),
            Ev::Check => {
                self.check();
                self.push(self.now + CHECK_EVERY, Ev::Check);
            }
            Ev::Sample => {
                self.sample();
                self.push(self.now + self.sc.config.sample_interval.0, Ev::Sample);
            }
            Ev::Converge => self.check_convergence(),
            Ev::Model(ev) => {
                if let Some(mut model) = self.model.take() {
                    model.handle(self, ev);
                    self.model = Some(model);
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Machines: power, crash, freeze; fleetd's life.

    pub(crate) fn local(&self, m: u32) -> u64 {
        self.machines[m as usize].clock.local(self.now)
    }

    pub(crate) fn local_after(&self, m: u32, local_delay: u64) -> u64 {
        let c = &self.machines[m as usize].clock;
        c.global(c.local(self.now) + local_delay)
    }

    pub(crate) fn instant(&self, m: u32) -> Instant {
        self.base + Duration::from_micros(self.local(m))
    }

    /// Boots machine `i`: systemd starts empty, fleetd starts with no saved state.
    fn power_on(&mut self, i: u32) {
        let mm = &mut self.machines[i as usize];
        mm.powered = true;
        mm.frozen = false;
        mm.boot += 1;
        mm.guard = None;
        mm.guard_check = None;
        mm.lease = OwnLease::default();
        mm.seats.clear();
        mm.deferred.clear();
        let now = Time(mm.clock.local(self.now));
        mm.witness = Witness::fresh(&self.timing, now);
        self.failed_at[i as usize] = None;
        self.start_agent(i);
    }

    /// Starts fleetd on machine `i` (at boot, or restarted by systemd after it died): it keeps the saved
    /// lease, joins gossip with a new incarnation, and reads the registry.
    pub(crate) fn start_agent(&mut self, i: u32) {
        let mm = &self.machines[i as usize];
        if !mm.powered || mm.agent.is_some() {
            return;
        }
        let seeds: Vec<SocketAddr> = self.seeds_for(i);
        let local = self.local(i);
        let n = self.machines.len();
        let mm = &mut self.machines[i as usize];
        mm.gen += 1;
        mm.incarnation += 1;
        mm.agent_frozen = false;
        let gen = mm.gen;
        mm.agent = Some(Box::new(Agent::new(local, n, i)));
        if !mm.impostor {
            self.failed_at[i as usize] = None;
            self.join_gossip(i, &seeds);
        }
        let jitter = self.rng.random_range(0..20_000u64);
        self.push(self.now + jitter, Ev::Keepalive { m: i, gen });
        let jitter = self
            .rng
            .random_range(0..self.sc.config.reconcile_interval.0.max(1));
        self.push(self.now + jitter, Ev::Tick { m: i, gen });
        self.etcd_send(i, Req::Sync);
    }

    fn join_gossip(&mut self, i: u32, seeds: &[SocketAddr]) {
        if self.model.is_none() {
            let mm = &self.machines[i as usize];
            let identity = NodeIdentity {
                machine_id: mm.id.clone(),
                addr: mm.addr,
                incarnation: mm.incarnation,
            };
            let rng = StdRng::from_rng(&mut self.rng);
            let at = self.instant(i);
            let mut node = Node::new(self.gossip_cfg.clone(), identity, rng, at);
            node.join(at, seeds);
            node.set_local_metadata(
                at,
                fleet_gossip::Metadata {
                    public_ip: String::new(),
                    metadata: self.machine_infos[i as usize].metadata.clone(),
                    version: "sim".into(),
                    unit_count: 0,
                },
            );
            if let Some(a) = self.machines[i as usize].agent.as_mut() {
                a.node = Some(node);
            }
            self.flush(i);
        } else if let Some(mut model) = self.model.take() {
            model.on_boot(self, i);
            self.model = Some(model);
        }
    }

    /// Seeds: three machines (the first ones at time 0, later three with an announcement in etcd:
    /// fleetd joins through the gossip addresses announced there).
    fn seeds_for(&mut self, i: u32) -> Vec<SocketAddr> {
        let n = self.cluster as u32;
        let mut out = Vec::new();
        if self.now == 0 {
            for j in 0..n.min(4) {
                if j != i {
                    out.push(addr_of(j));
                }
                if out.len() == 3 {
                    break;
                }
            }
            return out;
        }
        let candidates: Vec<u32> = (0..n)
            .filter(|&j| j != i && self.etcd.announcement(j).is_some())
            .collect();
        for _ in 0..3.min(candidates.len()) {
            let j = candidates[self.rng.random_range(0..candidates.len())];
            out.push(addr_of(j));
        }
        out
    }

    /// fleetd dies on machine `i` (its units and guard stay).
    fn stop_agent(&mut self, i: u32) {
        let Some(agent) = self.machines[i as usize].agent.take() else {
            return;
        };
        if let Some(node) = &agent.node {
            let c = node.counters();
            self.metrics.gossip_dead_datagrams += c.datagrams_out;
            self.metrics.gossip_dead_bytes += c.bytes_out;
        }
        let mm = &mut self.machines[i as usize];
        mm.gen += 1;
        mm.agent_frozen = false;
        if !mm.impostor {
            self.failed_at[i as usize].get_or_insert(self.now);
            self.metrics.failures += 1;
            if let Some(mut model) = self.model.take() {
                model.on_stop(self, i);
                self.model = Some(model);
            }
        }
    }

    fn crash(&mut self, i: u32) {
        if !self.machines[i as usize].powered {
            return;
        }
        let units: Vec<u32> = self.machines[i as usize].units.keys().copied().collect();
        for u in units {
            self.remove_unit(i, u);
        }
        if self.machines[i as usize].agent.is_some() {
            self.stop_agent(i);
        } else {
            self.metrics.failures += 1;
        }
        let mm = &mut self.machines[i as usize];
        mm.powered = false;
        mm.frozen = false;
        mm.boot += 1;
        mm.guard = None;
        self.failed_at[i as usize].get_or_insert(self.now);
    }

    fn freeze(&mut self, i: u32, agent_only: bool) {
        let mm = &self.machines[i as usize];
        if !mm.powered || mm.frozen || (agent_only && mm.agent_frozen) {
            return;
        }
        if agent_only {
            self.machines[i as usize].agent_frozen = true;
        } else {
            // Every process stops executing: units stop counting as running.
            let running: Vec<u32> = mm
                .units
                .iter()
                .filter(|(_, s)| s.process())
                .map(|(u, _)| *u)
                .collect();
            for u in running {
                self.ran(i, u, false);
            }
            self.machines[i as usize].frozen = true;
        }
        let mm = &mut self.machines[i as usize];
        if let Some(a) = mm.agent.as_mut() {
            a.wake = None;
            a.pass_at = None;
        }
        if !mm.impostor {
            self.failed_at[i as usize] = Some(self.now);
            self.metrics.failures += 1;
            if let Some(mut model) = self.model.take() {
                model.on_stop(self, i);
                self.model = Some(model);
            }
        }
    }

    fn thaw(&mut self, i: u32) {
        let mm = &self.machines[i as usize];
        if !mm.powered || !(mm.frozen || mm.agent_frozen) {
            return;
        }
        let whole = mm.frozen;
        let mm = &mut self.machines[i as usize];
        mm.frozen = false;
        mm.agent_frozen = false;
        if whole {
            // The guard resumes with the units: a passed deadline kills them before they run again.
            let boot = mm.boot;
            self.guard_check(i, boot);
            let running: Vec<u32> = self.machines[i as usize]
                .units
                .iter()
                .filter(|(_, s)| s.process())
                .map(|(u, _)| *u)
                .collect();
            for u in running {
                self.ran(i, u, true);
            }
            let deferred = std::mem::take(&mut self.machines[i as usize].deferred);
            let boot = self.machines[i as usize].boot;
            for (unit, job, start) in deferred {
                self.unit_done(i, boot, unit, job, start);
            }
        }
        if self.machines[i as usize].agent.is_none() {
            return;
        }
        self.failed_at[i as usize] = None;
        let gen = self.machines[i as usize].gen;
        self.push(self.now, Ev::NodeWake { m: i, gen });
        self.push(self.now, Ev::Keepalive { m: i, gen });
        self.request_pass(i);
        self.notify_watchers();
        if let Some(mut model) = self.model.take() {
            model.on_resume(self, i);
            self.model = Some(model);
        }
    }

    // ------------------------------------------------------------------------------------------
    // The real gossip node.

    fn node_wake(&mut self, m: u32, gen: u32) {
        let now = self.now;
        let mm = &mut self.machines[m as usize];
        if mm.gen != gen || !mm.agent_runs() {
            return;
        }
        let Some(a) = mm.agent.as_mut() else { return };
        if a.wake != Some(now) {
            return;
        }
        a.wake = None;
        let at = self.instant(m);
        if let Some(node) = self.machines[m as usize]
            .agent
            .as_mut()
            .and_then(|a| a.node.as_mut())
        {
            node.handle_timeout(at);
        }
        self.flush(m);
    }

    fn deliver(&mut self, to: u32, from: u32, data: Data) {
        if !self.machines[to as usize].agent_runs() {
            return;
        }
        let at = self.instant(to);
        let from_addr = addr_of(from);
        if let Some(node) = self.node_mut(to) {
            // Garbage is counted by the node; the network moves on.
            let _ = node.handle_datagram(at, from_addr, &data);
        }
        self.flush(to);
    }

    fn node_mut(&mut self, m: u32) -> Option<&mut Node> {
        self.machines[m as usize]
            .agent
            .as_mut()
            .and_then(|a| a.node.as_mut())
    }

    /// [`Sim::flush`], for the agent model.
    pub(crate) fn flush_node(&mut self, m: u32) {
        self.flush(m);
    }

    /// Sends what node `m` produced, runs its syncs, handles its events, and re-arms its wake-up.
    fn flush(&mut self, m: u32) {
        let Some(mut node) = self.machines[m as usize].agent.as_mut().and_then(|a| {
            a.gossip_inputs += 1;
            a.node.take()
        }) else {
            return;
        };
        let mut syncs = Vec::new();
        let mut events = Vec::new();
        while let Some(t) = node.poll_transmit() {
            if let Some(dst) = index_of(t.dst) {
                self.send(m, dst, t.data.to_vec());
            }
        }
        while let Some(peer) = node.poll_sync() {
            syncs.push(peer);
        }
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
        let next = node.poll_timeout();
        if let Some(a) = self.machines[m as usize].agent.as_mut() {
            a.node = Some(node);
        }
        for e in events {
            self.gossip_event(m, e);
        }
        if let Some(next) = next {
            let local = next.saturating_duration_since(self.base).as_micros() as u64;
            let g = self.machines[m as usize].clock.global(local).max(self.now);
            let gen = self.machines[m as usize].gen;
            if let Some(a) = self.machines[m as usize].agent.as_mut() {
                if a.wake.is_none_or(|w| g < w) {
                    a.wake = Some(g);
                    self.push(g, Ev::NodeWake { m, gen });
                }
            }
        }
        for peer in syncs {
            if let Some(p) = index_of(peer) {
                self.sync(m, p);
            }
        }
    }

    fn send(&mut self, from: u32, to: u32, data: Data) {
        let (a, b) = (from as usize, to as usize);
        if to as usize >= self.machines.len() || self.net.blocked(a, b) {
            self.metrics.datagrams_lost += 1;
            return;
        }
        let loss = self.net.loss(a, b, self.sc.config.loss);
        if loss > 0.0 && self.rng.random_bool(loss.min(1.0)) {
            self.metrics.datagrams_lost += 1;
            return;
        }
        let c = &self.sc.config;
        let jitter = if c.jitter.0 > 0 {
            self.rng.random_range(0..c.jitter.0)
        } else {
            0
        };
        let at = self.now + c.latency.0 + jitter + self.net.delay(a, b);
        self.push(at, Ev::Deliver { to, from, data });
    }

    /// The three-message anti-entropy exchange, through the wire encoding, if both ends can talk.
    fn sync(&mut self, a: u32, b: u32) {
        let (ai, bi) = (a as usize, b as usize);
        if a == b
            || bi >= self.machines.len()
            || !self.machines[bi].agent_runs()
            || self.net.blocked(ai, bi)
            || self.net.blocked(bi, ai)
        {
            return;
        }
        let loss = self.net.loss(ai, bi, self.sc.config.loss);
        if loss > 0.0 && self.rng.random_bool(loss.min(1.0)) {
            return;
        }
        let (ta, tb) = (self.instant(a), self.instant(b));
        let Some(offer) = self.node_mut(a).map(|n| n.sync_offer().encode()) else {
            return;
        };
        self.metrics.sync_bytes += offer.len() as u64;
        let answer = {
            let Some(node) = self.node_mut(b) else {
                return;
            };
            let Ok(offer) = SyncOffer::decode(&offer) else {
                return;
            };
            match node.handle_sync_offer(tb, offer) {
                Ok(x) => x.encode(),
                Err(_) => return,
            }
        };
        self.flush(b);
        self.metrics.sync_bytes += answer.len() as u64;
        let delta = {
            let Some(node) = self.node_mut(a) else {
                return;
            };
            let Ok(answer) = SyncAnswer::decode(&answer) else {
                return;
            };
            match node.handle_sync_answer(ta, answer) {
                Ok(d) => d.encode(),
                Err(_) => return,
            }
        };
        self.flush(a);
        self.metrics.sync_bytes += delta.len() as u64;
        if let Some(node) = self.node_mut(b) {
            if let Ok(d) = FullState::decode(&delta) {
                let _ = node.merge(tb, d);
            }
        }
        self.flush(b);
    }

    fn gossip_event(&mut self, m: u32, e: Event) {
        match e {
            Event::MemberUp(id) | Event::MemberRestarted(id) => {
                if let Some(j) = self.index_gid(&id) {
                    self.learn_up(m, j);
                }
            }
            Event::MemberDown(id) => {
                if let Some(j) = self.index_gid(&id) {
                    self.learn_down(m, j);
                }
            }
            _ => {}
        }
    }

    fn index_gid(&self, id: &MachineId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Observer `m` now holds `j` alive.
    pub(crate) fn learn_up(&mut self, m: u32, j: u32) {
        if m == j {
            return;
        }
        let Some(a) = self.machines[m as usize].agent.as_mut() else {
            return;
        };
        a.down_since.remove(&j);
        if a.live.insert(j) {
            a.live_hash ^= mix(j as u64);
            self.request_pass(m);
        }
    }

    /// Records observer `m`'s down verdict about `j` at time `at` in the detection metrics (the
    /// model with `sync_views` applies verdicts later than it draws them).
    pub(crate) fn record_verdict(&mut self, m: u32, j: u32, at: u64) {
        match self.failed_at[j as usize] {
            Some(t0) if at >= t0 => self.metrics.detection(j, at - t0),
            Some(_) => {}
            None => {
                let (a, b) = (m as usize, j as usize);
                if self.machines[b].powered && (self.net.blocked(a, b) || self.net.blocked(b, a)) {
                    self.metrics.partition_verdicts += 1;
                } else if self.machines[b].powered {
                    self.metrics.false_verdicts += 1;
                }
            }
        }
    }

    /// Observer `m` declared `j` down (recorded in the metrics).
    pub(crate) fn learn_down(&mut self, m: u32, j: u32) {
        if self.learn_down_quiet(m, j) {
            self.record_verdict(m, j, self.now);
        }
    }

    /// Observer `m` declared `j` down; returns whether its view changed.
    pub(crate) fn learn_down_quiet(&mut self, m: u32, j: u32) -> bool {
        if m == j {
            return false;
        }
        let local = self.local(m);
        let Some(a) = self.machines[m as usize].agent.as_mut() else {
            return false;
        };
        a.down_since.entry(j).or_insert(local);
        if !a.live.remove(j) {
            return false;
        }
        a.live_hash ^= mix(j as u64);
        self.request_pass(m);
        true
    }

    /// Whether machine `m`'s gossip layer runs (model).
    pub(crate) fn is_responsive(&self, m: u32) -> bool {
        self.machines[m as usize].agent_runs() && !self.machines[m as usize].impostor
    }

    /// Whether observer `m` holds `j` live (model mode).
    pub(crate) fn view_has(&self, m: u32, j: u32) -> bool {
        self.machines[m as usize]
            .agent
            .as_ref()
            .is_some_and(|a| a.live.contains(j))
    }

    /// How many machines observer `m` holds live, itself excluded.
    pub(crate) fn view_len(&self, m: u32) -> usize {
        self.machines[m as usize]
            .agent
            .as_ref()
            .map_or(0, |a| a.live.len())
    }

    /// Whether `a` and `b` can exchange traffic (no partition either way).
    pub(crate) fn linked(&self, a: u32, b: u32) -> bool {
        !self.net.blocked(a as usize, b as usize) && !self.net.blocked(b as usize, a as usize)
    }

    /// Loss probability from `a` to `b`.
    pub(crate) fn link_loss(&self, a: u32, b: u32) -> f64 {
        self.net.loss(a as usize, b as usize, self.sc.config.loss)
    }

    /// Model mode, time 0: every machine starts with the whole cluster in its view (formed cluster).
    pub(crate) fn preform_views(&mut self) {
        let n = self.cluster as u32;
        let all = (0..n).fold(0u64, |h, j| h ^ mix(j as u64));
        let size = self.machines.len();
        for i in 0..n {
            if let Some(a) = self.machines[i as usize].agent.as_mut() {
                a.live = Bits::new(size);
                for j in 0..n {
                    if j != i {
                        a.live.insert(j);
                    }
                }
                a.live_hash = all ^ mix(i as u64);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Reachability of etcd, and its watch.

    pub(crate) fn etcd_reachable(&self, m: u32) -> bool {
        let e = self.net.etcd();
        self.etcd_up && !self.net.blocked(m as usize, e) && !self.net.blocked(e, m as usize)
    }

    pub(crate) fn notify_watchers(&mut self) {
        if !self.watch_pending {
            self.watch_pending = true;
            self.push(self.now + self.sc.config.watch_delay.0, Ev::WatchFlush);
        }
    }

    /// Delivers the changes so far to every agent that can hear etcd; forgets history no mirror needs.
    fn watch_flush(&mut self) {
        self.watch_pending = false;
        let rev = self.etcd.revision();
        let mut oldest = rev;
        for i in 0..self.machines.len() as u32 {
            let reachable = self.etcd_reachable(i);
            let mm = &self.machines[i as usize];
            let Some(a) = mm.agent.as_ref() else { continue };
            if a.mirror_rev == 0 {
                continue;
            }
            // A lossy link delays the watch stream (TCP retransmits): the batch waits for a later one.
            let e = self.net.etcd();
            let loss = self.net.loss(e, i as usize, 0.0);
            let lost = loss > 0.0 && self.rng.random_bool(loss.min(1.0));
            let mm = &self.machines[i as usize];
            let Some(a) = mm.agent.as_ref() else { continue };
            if mm.agent_runs() && reachable && a.mirror_rev < rev && !lost {
                self.etcd.ops.watch_deliveries += 1;
                self.advance_mirror(i, rev);
                self.request_pass(i);
            } else {
                oldest = oldest.min(a.mirror_rev);
            }
        }
        self.etcd.compact(oldest);
        if oldest < rev {
            // Agents behind (a lossy link, a pause) get the next batch soon.
            self.watch_retry();
        }
    }

    fn watch_retry(&mut self) {
        if !self.watch_pending {
            self.watch_pending = true;
            self.push(
                self.now + 4 * self.sc.config.watch_delay.0.max(1),
                Ev::WatchFlush,
            );
        }
    }

    // ------------------------------------------------------------------------------------------
    // The agent's pass scheduling and plan.

    pub(crate) fn request_pass(&mut self, m: u32) {
        let c = &self.sc.config;
        let q = c.pass_quantum.0;
        let at = (self.now + c.coalesce.0).div_ceil(q) * q;
        self.request_pass_at(m, at);
    }

    pub(crate) fn request_pass_at(&mut self, m: u32, at: u64) {
        let mm = &mut self.machines[m as usize];
        if !mm.agent_runs() {
            return;
        }
        let gen = mm.gen;
        let Some(a) = mm.agent.as_mut() else { return };
        if a.pass_at.is_some_and(|p| p <= at) {
            return;
        }
        a.pass_at = Some(at);
        self.push(at, Ev::Pass { m, gen });
    }

    /// The plan for this set of machines at registry revision `rev` (shared between agents with the
    /// same inputs).
    pub(crate) fn plan_for(&mut self, live: &[u32], hash: u64, rev: i64) -> Rc<PlanIndex> {
        let key = (hash, rev);
        if let Some(p) = self.plans.get(&key) {
            return p.clone();
        }
        self.plan_computations += 1;
        let machines: Vec<MachineInfo> = live
            .iter()
            .map(|&j| self.machine_infos[j as usize].clone())
            .collect();
        let live_set: BTreeSet<u32> = live.iter().copied().collect();
        let infos: Vec<UnitInfo> = self
            .base_infos
            .iter()
            .enumerate()
            .map(|(u, info)| {
                let mut info = info.clone();
                if let Some(c) = self.etcd.claim_at(u as u32, rev) {
                    if live_set.contains(&c.machine) {
                        info.claim = Some(self.machine_infos[c.machine as usize].id.clone());
                    }
                }
                info
            })
            .collect();
        // fleetd's agent keeps one incremental Planner (the same plan as `schedule`); so does the
        // simulator, moved to each agent's inputs by their differences.
        let planner = match self.planner.as_mut() {
            Some(p) => {
                p.sync(&machines, &infos);
                p
            }
            None => self.planner.insert(Planner::new(&machines, &infos)),
        };
        let plan = planner.plan();
        let mut on: HashMap<u32, Vec<(u32, bool)>> = HashMap::new();
        for (name, d) in &plan.decisions {
            let Some(&u) = self.unit_index.get(name) else {
                continue;
            };
            match d {
                Decision::On(mid) => {
                    if let Some(&j) = self.by_id.get(mid) {
                        on.entry(j).or_default().push((u, false));
                    }
                }
                Decision::Global(ms) => {
                    for mid in ms {
                        if let Some(&j) = self.by_id.get(mid) {
                            on.entry(j).or_default().push((u, true));
                        }
                    }
                }
                Decision::Unplaceable(_) => {}
            }
        }
        let p = Rc::new(PlanIndex { on });
        if self.plans.len() >= 64 {
            self.plans.clear();
        }
        self.plans.insert(key, p.clone());
        p
    }

    // ------------------------------------------------------------------------------------------
    // systemd.

    /// Reconciles machine `m`'s systemd with `target` (all launched), starting and stopping through
    /// jobs that take `start_delay` and `stop_delay`.
    pub(crate) fn apply(&mut self, m: u32, target: &BTreeSet<u32>) {
        // Shortcut with the same outcome as `reconcile`: every target unit is loaded with its
        // content and already started, and nothing else is loaded, so there is no task.
        let units = &self.machines[m as usize].units;
        if units.len() == target.len()
            && target.iter().all(|u| {
                units
                    .get(u)
                    .is_some_and(|s| s.started && s.hash == self.units[*u as usize].hash)
            })
        {
            return;
        }
        let target_map: BTreeMap<UnitName, TargetUnit> = target
            .iter()
            .map(|&u| {
                (
                    self.units[u as usize].name.clone(),
                    TargetUnit {
                        hash: self.units[u as usize].hash,
                        state: DesiredState::Launched,
                    },
                )
            })
            .collect();
        let mut idx: BTreeMap<UnitName, u32> = BTreeMap::new();
        let current: BTreeMap<UnitName, CurrentUnit> = self.machines[m as usize]
            .units
            .iter()
            .map(|(&u, s)| {
                idx.insert(self.units[u as usize].name.clone(), u);
                (
                    self.units[u as usize].name.clone(),
                    CurrentUnit {
                        hash: s.hash,
                        active: s.active.clone(),
                        started: s.started,
                    },
                )
            })
            .collect();
        for &u in target {
            idx.insert(self.units[u as usize].name.clone(), u);
        }
        let tasks = reconcile(&target_map, &current);
        let (start_delay, stop_delay) = (self.sc.config.start_delay.0, self.sc.config.stop_delay.0);
        let boot = self.machines[m as usize].boot;
        for task in tasks {
            let Some(&u) = task.unit().and_then(|n| idx.get(n)) else {
                continue;
            };
            match task {
                Task::Stop(..) => {
                    let Some(s) = self.machines[m as usize].units.get_mut(&u) else {
                        continue;
                    };
                    s.job += 1;
                    s.started = false;
                    let job = s.job;
                    let was = s.process();
                    self.set_active(m, u, ActiveState::Deactivating);
                    let at = if was { self.now + stop_delay } else { self.now };
                    self.push(
                        at,
                        Ev::UnitDone {
                            m,
                            boot,
                            unit: u,
                            job,
                            start: false,
                        },
                    );
                }
                Task::Unload(..) => {
                    let mm = &mut self.machines[m as usize];
                    match mm.units.get_mut(&u) {
                        Some(s) if s.active == ActiveState::Deactivating => {
                            s.unload_after_stop = true
                        }
                        Some(_) => self.remove_unit(m, u),
                        None => {}
                    }
                }
                Task::Load(_, hash, _) => {
                    self.machines[m as usize].units.insert(
                        u,
                        SysUnit {
                            hash,
                            active: ActiveState::Inactive,
                            started: false,
                            job: 0,
                            unload_after_stop: false,
                        },
                    );
                    self.publish_unit(m, u);
                }
                Task::Start(..) => {
                    let Some(s) = self.machines[m as usize].units.get_mut(&u) else {
                        continue;
                    };
                    s.job += 1;
                    s.started = true;
                    self.metrics.unit_starts += 1;
                    let job = s.job;
                    self.set_active(m, u, ActiveState::Activating);
                    self.push(
                        self.now + start_delay,
                        Ev::UnitDone {
                            m,
                            boot,
                            unit: u,
                            job,
                            start: true,
                        },
                    );
                }
            }
        }
    }

    /// SIGKILL of every non-global unit of machine `m` (and `StopUnit`, so that `Restart=` does not bring
    /// them back): the fence guard's or the fenced agent's act.
    pub(crate) fn kill_fenced(&mut self, m: u32, by_guard: bool) {
        let victims: Vec<u32> = self.machines[m as usize]
            .units
            .iter()
            .filter(|(u, s)| !self.units[**u as usize].global && (s.process() || s.started))
            .map(|(u, _)| *u)
            .collect();
        if victims.is_empty() {
            return;
        }
        if by_guard {
            self.metrics.guard_kills += victims.len() as u64;
        } else {
            self.metrics.agent_kills += victims.len() as u64;
        }
        for u in victims {
            if let Some(s) = self.machines[m as usize].units.get_mut(&u) {
                s.job += 1;
                s.started = false;
                let unload = s.unload_after_stop;
                self.set_active(m, u, ActiveState::Inactive);
                if unload {
                    self.remove_unit(m, u);
                }
            }
        }
        self.request_pass(m);
    }

    fn unit_done(&mut self, m: u32, boot: u32, unit: u32, job: u32, start: bool) {
        let mm = &mut self.machines[m as usize];
        if mm.boot != boot || !mm.powered {
            return;
        }
        if mm.frozen {
            mm.deferred.push((unit, job, start));
            return;
        }
        let Some(s) = mm.units.get(&unit) else { return };
        if s.job != job {
            return;
        }
        if start {
            let fail = self.sc.config.start_failure > 0.0
                && self.rng.random_bool(self.sc.config.start_failure);
            if fail {
                self.metrics.start_failures += 1;
            }
            self.set_active(
                m,
                unit,
                if fail {
                    ActiveState::Failed
                } else {
                    ActiveState::Active
                },
            );
        } else if s.unload_after_stop {
            self.set_active(m, unit, ActiveState::Inactive);
            self.remove_unit(m, unit);
        } else {
            self.set_active(m, unit, ActiveState::Inactive);
        }
        self.request_pass(m);
    }

    fn set_active(&mut self, m: u32, u: u32, state: ActiveState) {
        let Some(s) = self.machines[m as usize].units.get_mut(&u) else {
            return;
        };
        let was = s.process();
        s.active = state;
        let is = s.process();
        if self.machines[m as usize].units_run() && was != is {
            self.ran(m, u, is);
        }
        self.publish_unit(m, u);
    }

    /// Removes unit `u` from machine `m`'s systemd (its process, if any, is gone).
    fn remove_unit(&mut self, m: u32, u: u32) {
        let Some(s) = self.machines[m as usize].units.remove(&u) else {
            return;
        };
        if self.machines[m as usize].units_run() && s.process() {
            self.ran(m, u, false);
        }
        if self.machines[m as usize].powered {
            self.publish_unit(m, u);
        }
    }

    /// Unit `u`'s process started (`true`) or stopped on machine slot `m`: the checker, the
    /// observations and the statistics learn it.
    fn ran(&mut self, m: u32, u: u32, running: bool) {
        self.checker
            .set_running(self.now, m, u, running, self.submitted);
        self.observer.set_running(self.now, m, u, running);
        self.metrics_running(u);
    }

    /// Feeds the availability and double-run statistics after unit `u` changed somewhere.
    fn metrics_running(&mut self, u: u32) {
        if self.units[u as usize].global {
            return;
        }
        let n = self.checker.running_on(u).len();
        let now = self.now;
        self.metrics.running(u, n, now, self.submitted);
    }

    /// Tells gossip the unit's state (real dissemination traffic).
    fn publish_unit(&mut self, m: u32, u: u32) {
        if let Some(model) = self.model.as_mut() {
            model.unit_update();
            return;
        }
        if !self.machines[m as usize].agent_runs() {
            return;
        }
        let at = self.instant(m);
        let state = self.machines[m as usize]
            .units
            .get(&u)
            .map(|s| GossipUnitState {
                load_state: "loaded".into(),
                active_state: s.active.clone(),
                sub_state: if s.active == ActiveState::Active {
                    "running".into()
                } else {
                    "dead".into()
                },
                unit_hash: *s.hash.as_bytes(),
            });
        let name = self.units[u as usize].name.as_str().to_string();
        if let Some(node) = self.node_mut(m) {
            node.set_local_unit_state(at, &name, state);
            self.flush(m);
        }
    }

    // ------------------------------------------------------------------------------------------
    // The fence guard.

    /// fleetd wrote a new fence deadline (local µs; `None`: nothing may run).
    pub(crate) fn write_guard(&mut self, m: u32, deadline: Option<u64>) {
        let mm = &mut self.machines[m as usize];
        mm.guard = Some(deadline);
        let due = match deadline {
            None => self.now,
            Some(d) => mm.clock.global(d),
        };
        if mm.guard_check.is_none_or(|c| due < c) {
            self.schedule_guard(m, due);
        }
    }

    fn schedule_guard(&mut self, m: u32, due: u64) {
        let poll = self.sc.config.guard_poll.0.max(1);
        let at = due + self.rng.random_range(0..poll);
        let mm = &mut self.machines[m as usize];
        mm.guard_check = Some(at);
        let boot = mm.boot;
        self.push(at, Ev::GuardCheck { m, boot });
    }

    /// The guard reads the deadline: past it, it kills every non-global unit.
    fn guard_check(&mut self, m: u32, boot: u32) {
        let now = self.now;
        let mm = &mut self.machines[m as usize];
        if mm.boot != boot || !mm.powered {
            return;
        }
        if mm.guard_check.is_some_and(|c| c <= now) {
            mm.guard_check = None;
        }
        if mm.frozen {
            return; // thaw checks at once
        }
        let local = mm.clock.local(now);
        match mm.guard {
            None => {}
            Some(Some(d)) if local < d => {
                let due = mm.clock.global(d);
                if mm.guard_check.is_none_or(|c| due < c) {
                    self.schedule_guard(m, due);
                }
            }
            Some(_) => self.kill_fenced(m, true),
        }
    }

    // ------------------------------------------------------------------------------------------
    // Faults.

    /// The machines a selector of fault `k` picks; random selectors draw from a per-fault seed, so
    /// undoing a fault picks the same machines.
    fn select(&self, k: usize, s: &Option<String>) -> (Vec<usize>, bool) {
        let sel = Selector::parse(s.as_deref().unwrap_or("all")).unwrap_or(Selector::All);
        let picked = sel
            .resolve(&self.machine_infos, &mut fault_rng(self.seed, k), false)
            .unwrap_or_default();
        (picked, sel.has_etcd())
    }

    /// The impostor slots of fault `k`.
    fn impostor_slots(&self, k: usize) -> Vec<u32> {
        let (orig, _) = self.select(k, &self.sc.faults[k].machines);
        // Slots are allocated in fault order, one per picked machine.
        let mut slot = self.cluster;
        for (j, f) in self.sc.faults.iter().enumerate() {
            if f.kind != FaultKind::Impostor {
                continue;
            }
            let (picked, _) = self.select(j, &f.machines);
            if j == k {
                return (slot..slot + picked.len()).map(|s| s as u32).collect();
            }
            slot += picked.len();
        }
        let _ = orig;
        Vec::new()
    }

    fn apply_fault(&mut self, k: usize) {
        let f: Fault = self.sc.faults[k].clone();
        self.observer.fault(self.now);
        let (ms, _) = self.select(k, &f.machines);
        let mut concerned: Vec<u32> = ms.iter().map(|&i| i as u32).collect();
        match f.kind {
            FaultKind::Crash => ms.iter().for_each(|&i| self.crash(i as u32)),
            FaultKind::Restart => ms.iter().for_each(|&i| {
                if !self.machines[i].powered {
                    self.power_on(i as u32)
                }
            }),
            FaultKind::Freeze => ms.iter().for_each(|&i| self.freeze(i as u32, f.agent_only)),
            FaultKind::Thaw => ms.iter().for_each(|&i| self.thaw(i as u32)),
            FaultKind::AgentCrash => ms.iter().for_each(|&i| self.stop_agent(i as u32)),
            FaultKind::Impostor => {
                for s in self.impostor_slots(k) {
                    let mm = &mut self.machines[s as usize];
                    mm.powered = true;
                    mm.boot += 1;
                    self.start_agent(s);
                }
            }
            FaultKind::SetMetadata => {
                let mut saved = Vec::new();
                for &i in &ms {
                    let meta = &mut self.machine_infos[i].metadata;
                    saved.push((i, meta.clone()));
                    for key in &f.unset {
                        meta.remove(key);
                    }
                    for (key, v) in &f.set {
                        meta.insert(key.clone(), v.clone());
                    }
                }
                self.saved_metadata.insert(k, saved);
                self.plans.clear();
                for &i in &ms {
                    self.republish_metadata(i as u32);
                }
            }
            FaultKind::ClockSkew => {
                let rate = f.rate.unwrap_or(1.0);
                for &i in &ms {
                    let now = self.now;
                    self.machines[i].clock.set_rate(now, rate);
                }
            }
            FaultKind::Partition | FaultKind::Loss | FaultKind::Delay => {
                let (mut a, ea) = self.select(k, &f.from);
                let (mut b, eb) = self.select(k, &f.to);
                concerned = a.iter().map(|&i| i as u32).collect();
                if f.to.is_some() {
                    concerned.extend(b.iter().map(|&i| i as u32));
                }
                if ea {
                    a.push(self.net.etcd());
                }
                if eb {
                    b.push(self.net.etcd());
                }
                if f.to.is_none() && f.kind == FaultKind::Partition {
                    // `from` against everybody else, etcd and impostor slots included.
                    let inside: BTreeSet<usize> = a.iter().copied().collect();
                    b = (0..=self.machines.len())
                        .filter(|i| !inside.contains(i))
                        .collect();
                }
                let effect = match f.kind {
                    FaultKind::Partition => Effect::Block,
                    FaultKind::Loss => Effect::Loss(f.rate.unwrap_or(0.0)),
                    _ => Effect::Delay(f.extra.map(|d| d.0).unwrap_or(0)),
                };
                self.net.add(k, &a, &b, effect);
                if !(f.kind == FaultKind::Partition && f.oneway) {
                    self.net.add(k, &b, &a, effect);
                }
            }
            FaultKind::Heal => {
                self.net.clear();
                concerned.clear();
            }
            FaultKind::EtcdOutage => {
                self.etcd_up = false;
                concerned = (0..self.cluster as u32).collect();
            }
            FaultKind::EtcdSlow => {
                self.etcd_extra += f.extra.map(|d| d.0).unwrap_or(0);
                concerned = (0..self.cluster as u32).collect();
            }
        }
        if f.kind == FaultKind::Thaw {
            concerned.clear();
        }
        self.checker.fault(self.now, k, &concerned);
        if f.for_.is_none() && matches!(f.kind, FaultKind::Thaw | FaultKind::Restart) {
            self.checker.fault_end(self.now, k);
        }
        self.metrics
            .fault_marks
            .push((self.now, format!("{:?} {}", f.kind, describe(&f))));
        if let Some(d) = f.for_ {
            self.push(self.now + d.0, Ev::Undo(k));
        }
        if matches!(
            f.kind,
            FaultKind::Partition | FaultKind::Heal | FaultKind::EtcdOutage
        ) {
            // Reachability changed: agents notice at their next pass.
            self.notify_watchers();
        }
    }

    fn undo_fault(&mut self, k: usize) {
        let f: Fault = self.sc.faults[k].clone();
        let (ms, _) = self.select(k, &f.machines);
        match f.kind {
            FaultKind::Crash => ms.iter().for_each(|&i| {
                if !self.machines[i].powered {
                    self.power_on(i as u32)
                }
            }),
            FaultKind::Freeze => ms.iter().for_each(|&i| self.thaw(i as u32)),
            FaultKind::AgentCrash => ms.iter().for_each(|&i| {
                if self.machines[i].powered && self.machines[i].agent.is_none() {
                    self.start_agent(i as u32)
                }
            }),
            FaultKind::Impostor => {
                for s in self.impostor_slots(k) {
                    self.stop_agent(s);
                    self.machines[s as usize].powered = false;
                }
            }
            FaultKind::SetMetadata => {
                for (i, meta) in self.saved_metadata.remove(&k).unwrap_or_default() {
                    self.machine_infos[i].metadata = meta;
                    self.republish_metadata(i as u32);
                }
                self.plans.clear();
            }
            FaultKind::ClockSkew => {
                for &i in &ms {
                    let now = self.now;
                    self.machines[i].clock.set_rate(now, 1.0);
                }
            }
            FaultKind::Partition | FaultKind::Loss | FaultKind::Delay => {
                self.net.remove(k);
                self.notify_watchers();
            }
            FaultKind::EtcdOutage => {
                self.etcd_up = true;
                // A new leader extends every lease by its TTL.
                self.etcd.promote(self.now);
                self.notify_watchers();
            }
            FaultKind::EtcdSlow => {
                self.etcd_extra = self
                    .etcd_extra
                    .saturating_sub(f.extra.map(|d| d.0).unwrap_or(0))
            }
            FaultKind::Restart | FaultKind::Thaw | FaultKind::Heal => {}
        }
        self.checker.fault_end(self.now, k);
        self.metrics
            .fault_marks
            .push((self.now, format!("end of {:?}", f.kind)));
    }

    /// Machine `i`'s metadata changed: its gossip node publishes it, every agent replans.
    fn republish_metadata(&mut self, i: u32) {
        let at = self.instant(i);
        let meta = self.machine_infos[i as usize].metadata.clone();
        if let Some(node) = self.node_mut(i) {
            node.set_local_metadata(
                at,
                fleet_gossip::Metadata {
                    public_ip: String::new(),
                    metadata: meta,
                    version: "sim".into(),
                    unit_count: 0,
                },
            );
            self.flush(i);
        }
        for j in 0..self.cluster as u32 {
            self.request_pass(j);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Invariants and sampling.

    /// Ground truth: machines of the cluster whose fleetd runs.
    fn truth(&self) -> Vec<u32> {
        (0..self.cluster as u32)
            .filter(|&i| self.machines[i as usize].agent_runs())
            .collect()
    }

    fn check(&mut self) {
        // A machine can run a unit only with a lease: it must reach etcd.
        let reach: Vec<bool> = (0..self.machines.len() as u32)
            .map(|i| self.etcd_reachable(i))
            .collect();
        let truths: Vec<MachineTruth<'_>> = self
            .machines
            .iter()
            .zip(reach)
            .map(|(m, reach)| MachineTruth {
                id: m.id.as_str(),
                metadata: &self.machine_infos[m.ident as usize].metadata,
                healthy: m.agent_runs() && !m.impostor && reach,
            })
            .collect();
        self.checker.periodic(
            self.now,
            &truths,
            self.sc.invariants.placement.0,
            self.sc.invariants.machine_of.0,
        );
    }

    fn check_convergence(&mut self) {
        let live = self.truth();
        let truth: BTreeSet<u32> = live.iter().copied().collect();
        let mut wrong = Vec::new();
        for &i in &live {
            let mm = &self.machines[i as usize];
            let mut seen: BTreeSet<u32> = mm
                .agent
                .as_ref()
                .map(|a| a.live.iter().collect())
                .unwrap_or_default();
            seen.insert(i);
            if seen != truth {
                wrong.push(format!(
                    "{} sees {} live of {}",
                    mm.id,
                    seen.len(),
                    truth.len()
                ));
            }
        }
        if !wrong.is_empty() {
            let n = wrong.len();
            wrong.truncate(3);
            self.checker.violations.push(crate::report::Violation {
                kind: crate::report::ViolationKind::NoConvergence,
                at: self.now,
                subject: format!("{n} machine(s)"),
                detail: format!(
                    "membership not converged {} after the last fault: {}",
                    self.sc.invariants.converge,
                    wrong.join("; ")
                ),
            });
        }
        self.metrics.converged_checked = true;
    }

    fn sample(&mut self) {
        let live = self.truth();
        let wrong_views = live
            .iter()
            .filter(|&&i| {
                self.machines[i as usize]
                    .agent
                    .as_ref()
                    .is_none_or(|a| a.live.len() + 1 != live.len())
            })
            .count();
        let unavailable = if self.submitted {
            self.checker.unavailable()
        } else {
            0
        };
        self.metrics.sample(
            self.now,
            live.len(),
            wrong_views,
            unavailable,
            self.checker.double_running(),
        );
    }
}

fn fault_rng(seed: u64, k: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ mix(k as u64 + 1))
}

fn describe(f: &Fault) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &f.machines {
        parts.push(m.clone());
    }
    if let Some(m) = &f.from {
        parts.push(format!("from {m}"));
    }
    if let Some(m) = &f.to {
        parts.push(format!("to {m}"));
    }
    if let Some(r) = f.rate {
        parts.push(format!("rate {r}"));
    }
    if let Some(e) = f.extra {
        parts.push(format!("+{e}"));
    }
    if f.agent_only {
        parts.push("agent only".into());
    }
    for (k, v) in &f.set {
        parts.push(format!("{k}={v}"));
    }
    for k in &f.unset {
        parts.push(format!("-{k}"));
    }
    if let Some(d) = f.for_ {
        parts.push(format!("for {d}"));
    }
    parts.join(" ")
}

pub(crate) fn addr_of(i: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)),
        4000,
    )
}

fn index_of(a: SocketAddr) -> Option<u32> {
    match a.ip() {
        IpAddr::V4(v) => {
            let o = v.octets();
            Some(((o[1] as u32) << 16) | ((o[2] as u32) << 8) | o[3] as u32)
        }
        IpAddr::V6(_) => None,
    }
}

type Loaded = (Vec<UnitDef>, Vec<UnitInfo>, Vec<(String, UnitFile)>);

fn load_units(sc: &Scenario) -> Result<Loaded, SimError> {
    let mut files: BTreeMap<String, UnitFile> = BTreeMap::new();
    // Units written out in the scenario: launched ones are submitted, inactive ones are not (fleet
    // does not schedule them), loaded ones are refused (the systemd model only runs launched units).
    for u in &sc.units.inline {
        let file = UnitFile::parse(&u.file).map_err(|err| SimError::Unit {
            name: u.name.clone(),
            message: err.to_string(),
        })?;
        match u.state {
            UnitDesired::Launched => {}
            UnitDesired::Inactive => continue,
            UnitDesired::Loaded => {
                return Err(SimError::Unit {
                    name: u.name.clone(),
                    message: "desired state loaded: fleet-sim runs launched units only (edit its \
                              state to launched or inactive)"
                        .into(),
                })
            }
        }
        if UnitName::parse(&u.name).is_ok_and(|n| n.is_template()) {
            return Err(SimError::Unit {
                name: u.name.clone(),
                message: "a template is not a unit (write its instances)".into(),
            });
        }
        if files.insert(u.name.clone(), file).is_some() {
            return Err(SimError::Unit {
                name: u.name.clone(),
                message: "listed twice".into(),
            });
        }
    }
    let dir = sc.base_dir.join(&sc.units.dir);
    let rd: Vec<_> = if sc.units.dir.as_os_str().is_empty() {
        Vec::new()
    } else {
        std::fs::read_dir(&dir)
            .map_err(|source| SimError::UnitsDir {
                path: dir.clone(),
                source,
            })?
            .collect()
    };
    for e in rd {
        let e = e.map_err(|source| SimError::UnitsDir {
            path: dir.clone(),
            source,
        })?;
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with(".service") {
            continue;
        }
        if !sc.units.only.is_empty() && !sc.units.only.contains(&name) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).map_err(|source| SimError::UnitsDir {
            path: e.path(),
            source,
        })?;
        let file = UnitFile::parse(&text).map_err(|err| SimError::Unit {
            name: name.clone(),
            message: err.to_string(),
        })?;
        if files.insert(name.clone(), file).is_some() {
            return Err(SimError::Unit {
                name,
                message: format!("both in [[units.unit]] and in {}", dir.display()),
            });
        }
    }
    for t in sc.units.instances.keys() {
        if !files.contains_key(t) {
            return Err(SimError::Unit {
                name: t.clone(),
                message: format!("no such template in {}", dir.display()),
            });
        }
    }
    let mut defs = Vec::new();
    let mut infos = Vec::new();
    let mut raw = Vec::new();
    let mut add = |name: String, file: &UnitFile| -> Result<(), SimError> {
        let un = UnitName::parse(&name).map_err(|e| SimError::Unit {
            name: name.clone(),
            message: e.to_string(),
        })?;
        let req = Requirements::from_unit(&un, file).map_err(|e| SimError::Unit {
            name: name.clone(),
            message: e.to_string(),
        })?;
        defs.push(UnitDef {
            name: un.clone(),
            hash: file.hash(),
            global: req.global,
        });
        infos.push(UnitInfo::new(un, req, DesiredState::Launched));
        raw.push((name, file.clone()));
        Ok(())
    };
    for (name, file) in &files {
        let un = UnitName::parse(name).map_err(|e| SimError::Unit {
            name: name.clone(),
            message: e.to_string(),
        })?;
        if un.is_template() {
            let count = sc.units.instances.get(name).copied().unwrap_or(0);
            let (prefix, suffix) = name.split_once("@.").expect("a template has @.");
            for k in 1..=count {
                add(format!("{prefix}@{k}.{suffix}"), file)?;
            }
        } else {
            add(name.clone(), file)?;
        }
    }
    if defs.is_empty() {
        return Err(SimError::Unit {
            name: if sc.units.dir.as_os_str().is_empty() {
                "[[units.unit]]".into()
            } else {
                dir.display().to_string()
            },
            message: "no launched unit to submit (inactive units are not submitted)".into(),
        });
    }
    Ok((defs, infos, raw))
}

/// A fixed-size set of machine indices.
#[derive(Clone, Debug)]
pub(crate) struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    pub(crate) fn new(n: usize) -> Bits {
        Bits {
            words: vec![0; n.div_ceil(64)],
            len: 0,
        }
    }
    pub(crate) fn contains(&self, i: u32) -> bool {
        self.words
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub(crate) fn insert(&mut self, i: u32) -> bool {
        let w = &mut self.words[i as usize / 64];
        let bit = 1u64 << (i % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.len += 1;
        true
    }
    pub(crate) fn remove(&mut self, i: u32) -> bool {
        let w = &mut self.words[i as usize / 64];
        let bit = 1u64 << (i % 64);
        if *w & bit == 0 {
            return false;
        }
        *w &= !bit;
        self.len -= 1;
        true
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(k, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(k as u32 * 64 + b)
            })
        })
    }
}
