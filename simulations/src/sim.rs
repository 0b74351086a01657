//! The discrete-event simulator: one event queue, a simulated clock, and every machine's gossip node,
//! agent and systemd.
//!
//! What runs for real: [`fleet_gossip::core::Node`] (foca SWIM, dissemination, anti-entropy; in
//! `gossip_mode = "real"`), [`fleet_sched::placement::schedule`], [`fleet_sched::reconcile::reconcile`],
//! unit file parsing and [`fleet_sched::Requirements::from_unit`]. What is modelled: the agent's event
//! loop (its rules are re-stated here from `src/agent`), etcd ([`crate::etcd`]), systemd (a start and a
//! stop delay, a failure probability), the network ([`crate::net`]), and in `gossip_mode = "model"`
//! the SWIM layer itself ([`crate::model`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes_like::Data;
use fleet_gossip::core::{Config as GossipConfig, Event, FullState, Node, SyncAnswer, SyncOffer};
use fleet_gossip::{MachineId as GossipId, NodeIdentity, UnitState as GossipUnitState};
use fleet_sched::placement::{schedule, Decision, MachineInfo, UnitInfo};
use fleet_sched::reconcile::{reconcile, ActiveState, CurrentUnit, TargetUnit, Task};
use fleet_sched::{DesiredState, MachineId, Requirements, UnitFile, UnitHash, UnitName};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::etcd::Etcd;
use crate::model::SwimModel;
use crate::net::{Effect, Net};
use crate::report::{Metrics, Violation, ViolationKind};
use crate::scenario::{Fault, FaultKind, GossipMode, Scenario, Selector};

mod bytes_like {
    /// A datagram in flight.
    pub type Data = Vec<u8>;
}

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
struct Clock {
    anchor_g: u64,
    anchor_l: u64,
    rate: f64,
}

impl Clock {
    fn local(&self, g: u64) -> u64 {
        if self.rate == 1.0 {
            return self.anchor_l + (g - self.anchor_g);
        }
        self.anchor_l + ((g - self.anchor_g) as f64 * self.rate) as u64
    }
    /// Earliest global time at which local time reaches `l`.
    fn global(&self, l: u64) -> u64 {
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
struct SysUnit {
    hash: UnitHash,
    active: ActiveState,
    started: bool,
    job: u32,
    unload_after_stop: bool,
}

struct Machine {
    id: MachineId,
    gid: GossipId,
    addr: SocketAddr,
    running: bool,
    frozen: bool,
    /// Frozen with `agent_only`: units keep running.
    agent_only: bool,
    epoch: u32,
    incarnation: u64,
    node: Option<Node>,
    wake: Option<u64>,
    clock: Clock,
    /// Machines this agent's gossip view holds alive or suspect (itself excluded).
    live: Bits,
    live_hash: u64,
    /// Machines declared down less than `takeover_grace` ago (global µs of the verdict).
    grace: BTreeMap<u32, u64>,
    lease: u64,
    lease_gen: u64,
    announced_gen: u64,
    confirmed_at: Option<u64>,
    fenced: bool,
    pass_at: Option<u64>,
    units: BTreeMap<u32, SysUnit>,
    globals_here: BTreeSet<u32>,
    /// systemd jobs that finished while the machine was paused.
    deferred: Vec<(u32, u32, bool)>,
}

impl Machine {
    /// Whether its units execute (not crashed, not paused as a whole).
    fn units_run(&self) -> bool {
        self.running && (!self.frozen || self.agent_only)
    }
    fn agent_runs(&self) -> bool {
        self.running && !self.frozen
    }
}

#[derive(Clone, Debug)]
enum Ev {
    SubmitUnits,
    Deliver {
        to: u32,
        from: u32,
        data: Data,
    },
    NodeWake {
        m: u32,
        epoch: u32,
    },
    Pass {
        m: u32,
        epoch: u32,
    },
    Tick {
        m: u32,
        epoch: u32,
    },
    Keepalive {
        m: u32,
        epoch: u32,
    },
    GraceEnd {
        m: u32,
        epoch: u32,
    },
    UnitDone {
        m: u32,
        epoch: u32,
        unit: u32,
        job: u32,
        start: bool,
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
struct PlanIndex {
    on: HashMap<u32, Vec<(u32, bool)>>,
    placeable: Vec<bool>,
}

fn mix(x: u64) -> u64 {
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
    base: Instant,
    machines: Vec<Machine>,
    pub(crate) units: Vec<UnitDef>,
    base_infos: Vec<UnitInfo>,
    machine_infos: Vec<MachineInfo>,
    by_id: HashMap<MachineId, u32>,
    unit_index: HashMap<UnitName, u32>,
    pub(crate) etcd: Etcd,
    etcd_up: bool,
    etcd_extra: u64,
    pub(crate) net: Net,
    plans: HashMap<(u64, u64), Rc<PlanIndex>>,
    pub(crate) plan_computations: u64,
    watch_pending: bool,
    /// What the agents' registry mirrors hold: the claims as of the last watch delivery (agents
    /// that cannot reach etcd do not reconcile, so one shared mirror stands for all).
    mirror: Vec<Option<crate::etcd::Claim>>,
    mirror_rev: u64,
    submitted: bool,
    /// Active (counted) machines per unit.
    active: Vec<u16>,
    pub(crate) metrics: Metrics,
    gossip_cfg: GossipConfig,
    model: Option<SwimModel>,
    /// When each machine failed (crash or pause), for detection times.
    failed_at: Vec<Option<u64>>,
    events_processed: u64,
    stop_on_violation: bool,
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
        let n = ids.len();
        let n0 = n;
        let mut by_id = HashMap::new();
        let mut machine_infos = Vec::new();
        let mut machines = Vec::new();
        for (i, (id, meta)) in ids.into_iter().zip(metas).enumerate() {
            let mid =
                MachineId::parse(&id).map_err(|e| SimError::Machine(id.clone(), e.to_string()))?;
            if by_id.insert(mid.clone(), i as u32).is_some() {
                return Err(SimError::Machine(id, "listed twice".into()));
            }
            machine_infos.push(MachineInfo {
                id: mid.clone(),
                metadata: meta,
                refused: Default::default(),
            });
            machines.push(Machine {
                id: mid,
                gid: GossipId::new(id),
                addr: addr_of(i as u32),
                running: false,
                frozen: false,
                agent_only: false,
                epoch: 0,
                incarnation: 0,
                node: None,
                wake: None,
                clock: Clock {
                    anchor_g: 0,
                    anchor_l: 0,
                    rate: 1.0,
                },
                live: Bits::new(n0),
                live_hash: 0,
                grace: BTreeMap::new(),
                lease: 0,
                lease_gen: 0,
                announced_gen: 0,
                confirmed_at: None,
                fenced: false,
                pass_at: None,
                units: BTreeMap::new(),
                globals_here: BTreeSet::new(),
                deferred: Vec::new(),
            });
        }
        let (units, base_infos) = load_units(&sc)?;
        let c = &sc.config;
        let gossip_cfg = GossipConfig {
            probe_period: c.probe_period.std(),
            probe_rtt: c.probe_rtt.std(),
            num_indirect_probes: c.num_indirect_probes,
            suspect_to_down_after: c.suspect_to_down_after.std(),
            max_transmissions: c.max_transmissions,
            gossip_interval: c.gossip_interval.std(),
            gossip_fanout: c.gossip_fanout,
            anti_entropy_interval: c.anti_entropy_interval.std(),
            ..GossipConfig::default()
        };
        // Check fault selectors up front.
        for (k, f) in sc.faults.iter().enumerate() {
            for s in [&f.machines, &f.from, &f.to].into_iter().flatten() {
                let sel = Selector::parse(s).map_err(|e| SimError::Fault(k, e))?;
                if resolve(&sel, &machine_infos, &mut StdRng::seed_from_u64(seed)).is_empty()
                    && sel != Selector::Etcd
                {
                    return Err(SimError::Fault(
                        k,
                        format!("selector {s:?} matches no machine"),
                    ));
                }
            }
        }
        let model =
            (sc.config.gossip_mode == GossipMode::Model).then(|| SwimModel::new(n, &sc.config));
        let nunits = units.len();
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
            plan_computations: 0,
            watch_pending: false,
            mirror: vec![None; nunits],
            mirror_rev: 0,
            submitted: false,
            active: vec![0; nunits],
            metrics: Metrics::new(n, nunits),
            gossip_cfg,
            model,
            failed_at: vec![None; n],
            events_processed: 0,
            stop_on_violation: false,
            sc,
        };
        for i in 0..n as u32 {
            sim.boot(i);
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
        if let Some(m) = sim.model.take() {
            let mut m = m;
            m.start(&mut sim);
            sim.model = Some(m);
        }
        Ok(sim)
    }

    /// Stop at the first invariant violation (used by the shrinker).
    pub fn stop_on_violation(&mut self, yes: bool) {
        self.stop_on_violation = yes;
    }

    /// Number of machines.
    pub fn machine_count(&self) -> usize {
        self.machines.len()
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

    fn push(&mut self, at: u64, ev: Ev) {
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
            self.now = item.at;
            self.events_processed += 1;
            self.handle(item.ev);
            if self.stop_on_violation && !self.metrics.violations.is_empty() {
                return false;
            }
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
        self.now = self.now.max(self.sc.duration.0.min(self.now));
        let gossip = self.gossip_totals();
        crate::report::Report::build(
            &self.sc,
            self.seed,
            self.now,
            &mut self.metrics,
            &self.etcd.ops,
            gossip,
            self.plan_computations,
            self.model.is_some(),
        )
    }

    fn gossip_totals(&self) -> crate::report::GossipTotals {
        let mut t = crate::report::GossipTotals::default();
        for m in &self.machines {
            if let Some(n) = &m.node {
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
                for u in 0..self.units.len() {
                    if !self.units[u].global {
                        self.metrics.unit_down(u as u32, self.now, false);
                    }
                }
                self.notify_watchers();
            }
            Ev::Deliver { to, from, data } => self.deliver(to, from, data),
            Ev::NodeWake { m, epoch } => self.node_wake(m, epoch),
            Ev::Pass { m, epoch } => {
                let mm = &mut self.machines[m as usize];
                if mm.epoch == epoch && mm.pass_at == Some(self.now) {
                    mm.pass_at = None;
                    self.pass(m);
                }
            }
            Ev::Tick { m, epoch } => {
                if self.machines[m as usize].epoch != epoch {
                    return;
                }
                self.request_pass(m);
                let at = self.local_after(m, self.sc.config.reconcile_interval.0);
                self.push(at, Ev::Tick { m, epoch });
            }
            Ev::Keepalive { m, epoch } => self.keepalive(m, epoch),
            Ev::GraceEnd { m, epoch } => {
                let grace = self.sc.config.takeover_grace.0;
                let now = self.now;
                let mm = &mut self.machines[m as usize];
                if mm.epoch != epoch {
                    return;
                }
                let before = mm.grace.len();
                mm.grace.retain(|_, since| now < *since + grace);
                if mm.grace.len() != before {
                    self.request_pass(m);
                }
            }
            Ev::UnitDone {
                m,
                epoch,
                unit,
                job,
                start,
            } => self.unit_done(m, epoch, unit, job, start),
            Ev::EtcdTick => {
                if self.etcd.expire(self.now) {
                    self.notify_watchers();
                }
                self.push(self.now + 100_000, Ev::EtcdTick);
            }
            Ev::WatchFlush => {
                self.watch_pending = false;
                if self.mirror_rev != self.etcd.revision() {
                    self.mirror.clear();
                    self.mirror.extend_from_slice(self.etcd.claims());
                    self.mirror_rev = self.etcd.revision();
                }
                for i in 0..self.machines.len() as u32 {
                    if self.machines[i as usize].agent_runs() && self.etcd_reachable(i) {
                        self.etcd.ops.watch_deliveries += 1;
                        self.request_pass(i);
                    }
                }
            }
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
    // Machines: boot, crash, freeze.

    fn local_after(&self, m: u32, local_delay: u64) -> u64 {
        let c = &self.machines[m as usize].clock;
        c.global(c.local(self.now) + local_delay)
    }

    fn instant(&self, m: u32) -> Instant {
        self.base + Duration::from_micros(self.machines[m as usize].clock.local(self.now))
    }

    fn boot(&mut self, i: u32) {
        let now = self.now;
        let seeds: Vec<SocketAddr> = self.seeds_for(i);
        let mm = &mut self.machines[i as usize];
        mm.running = true;
        mm.frozen = false;
        mm.agent_only = false;
        mm.epoch += 1;
        mm.incarnation += 1;
        mm.live.clear();
        mm.grace.clear();
        mm.live_hash = mix(i as u64);
        mm.lease = 0;
        mm.confirmed_at = None;
        mm.fenced = false;
        mm.pass_at = None;
        mm.wake = None;
        mm.deferred.clear();
        let epoch = mm.epoch;
        self.failed_at[i as usize] = None;
        if self.model.is_none() {
            let identity = NodeIdentity {
                machine_id: self.machines[i as usize].gid.clone(),
                addr: self.machines[i as usize].addr,
                incarnation: self.machines[i as usize].incarnation,
            };
            let rng = StdRng::from_rng(&mut self.rng);
            let at = self.instant(i);
            let mut node = Node::new(self.gossip_cfg.clone(), identity, rng, at);
            node.join(at, &seeds);
            node.set_local_metadata(
                at,
                fleet_gossip::Metadata {
                    public_ip: String::new(),
                    metadata: self.machine_infos[i as usize].metadata.clone(),
                    version: "sim".into(),
                    unit_count: 0,
                },
            );
            self.machines[i as usize].node = Some(node);
            self.flush(i);
        } else if let Some(mut model) = self.model.take() {
            model.on_boot(self, i);
            self.model = Some(model);
        }
        let jitter = self.rng.random_range(0..200_000u64);
        self.push(now + jitter, Ev::Keepalive { m: i, epoch });
        let jitter = self
            .rng
            .random_range(0..self.sc.config.reconcile_interval.0.max(1));
        self.push(now + jitter, Ev::Tick { m: i, epoch });
    }

    /// Seeds: three machines (the first ones, or after a restart three with a live lease: fleetd
    /// joins through the gossip addresses announced in etcd).
    fn seeds_for(&mut self, i: u32) -> Vec<SocketAddr> {
        let n = self.machines.len() as u32;
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
            .filter(|&j| j != i && self.machines[j as usize].lease != 0)
            .collect();
        for _ in 0..3.min(candidates.len()) {
            let j = candidates[self.rng.random_range(0..candidates.len())];
            out.push(addr_of(j));
        }
        out
    }

    fn crash(&mut self, i: u32) {
        if !self.machines[i as usize].running {
            return;
        }
        let now = self.now;
        let units: Vec<u32> = self.machines[i as usize].units.keys().copied().collect();
        for u in &units {
            self.set_unit(i, *u, None);
        }
        if let Some(node) = &self.machines[i as usize].node {
            let c = node.counters();
            self.metrics.gossip_dead_datagrams += c.datagrams_out;
            self.metrics.gossip_dead_bytes += c.bytes_out;
        }
        let mm = &mut self.machines[i as usize];
        mm.running = false;
        mm.frozen = false;
        mm.node = None;
        mm.epoch += 1;
        mm.units.clear();
        mm.live.clear();
        mm.grace.clear();
        mm.pass_at = None;
        mm.wake = None;
        self.failed_at[i as usize] = Some(now);
        self.metrics.failures += 1;
        if let Some(mut model) = self.model.take() {
            model.on_stop(self, i);
            self.model = Some(model);
        }
    }

    fn freeze(&mut self, i: u32, agent_only: bool) {
        let mm = &self.machines[i as usize];
        if !mm.running || mm.frozen {
            return;
        }
        let counted: Vec<u32> = if agent_only {
            Vec::new()
        } else {
            mm.units
                .iter()
                .filter(|(_, s)| counts(&s.active))
                .map(|(u, _)| *u)
                .collect()
        };
        for u in counted {
            self.count(u, -1);
        }
        let mm = &mut self.machines[i as usize];
        mm.frozen = true;
        mm.agent_only = agent_only;
        mm.wake = None;
        mm.pass_at = None;
        self.failed_at[i as usize] = Some(self.now);
        self.metrics.failures += 1;
        if let Some(mut model) = self.model.take() {
            model.on_stop(self, i);
            self.model = Some(model);
        }
    }

    fn thaw(&mut self, i: u32) {
        let mm = &self.machines[i as usize];
        if !mm.running || !mm.frozen {
            return;
        }
        let agent_only = mm.agent_only;
        let counted: Vec<u32> = mm
            .units
            .iter()
            .filter(|(_, s)| counts(&s.active))
            .map(|(u, _)| *u)
            .collect();
        let mm = &mut self.machines[i as usize];
        mm.frozen = false;
        mm.agent_only = false;
        let deferred = std::mem::take(&mut mm.deferred);
        let epoch = mm.epoch;
        if !agent_only {
            for u in counted {
                self.count(u, 1);
            }
        }
        self.failed_at[i as usize] = None;
        for (unit, job, start) in deferred {
            self.unit_done(i, epoch, unit, job, start);
        }
        self.push(self.now, Ev::NodeWake { m: i, epoch });
        self.push(self.now, Ev::Keepalive { m: i, epoch });
        self.request_pass(i);
        if let Some(mut model) = self.model.take() {
            model.on_resume(self, i);
            self.model = Some(model);
        }
    }

    // ------------------------------------------------------------------------------------------
    // The real gossip node.

    fn node_wake(&mut self, m: u32, epoch: u32) {
        let mm = &mut self.machines[m as usize];
        if mm.epoch != epoch || mm.wake != Some(self.now) {
            return;
        }
        mm.wake = None;
        if !mm.agent_runs() {
            return;
        }
        let at = self.instant(m);
        if let Some(node) = self.machines[m as usize].node.as_mut() {
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
        if let Some(node) = self.machines[to as usize].node.as_mut() {
            // Garbage is counted by the node; the network moves on.
            let _ = node.handle_datagram(at, from_addr, &data);
        }
        self.flush(to);
    }

    /// Sends what node `m` produced, runs its syncs, handles its events, and re-arms its wake-up.
    fn flush(&mut self, m: u32) {
        let Some(mut node) = self.machines[m as usize].node.take() else {
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
        self.machines[m as usize].node = Some(node);
        for e in events {
            self.gossip_event(m, e);
        }
        if let Some(next) = next {
            let local = next.saturating_duration_since(self.base).as_micros() as u64;
            let g = self.machines[m as usize].clock.global(local).max(self.now);
            let mm = &mut self.machines[m as usize];
            if mm.wake.is_none_or(|w| g < w) {
                mm.wake = Some(g);
                let epoch = mm.epoch;
                self.push(g, Ev::NodeWake { m, epoch });
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
        let Some(offer) = self.machines[ai]
            .node
            .as_ref()
            .map(|n| n.sync_offer().encode())
        else {
            return;
        };
        self.metrics.sync_bytes += offer.len() as u64;
        let answer = {
            let Some(node) = self.machines[bi].node.as_mut() else {
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
            let Some(node) = self.machines[ai].node.as_mut() else {
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
        if let Some(node) = self.machines[bi].node.as_mut() {
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

    fn index_gid(&self, id: &GossipId) -> Option<u32> {
        MachineId::parse(id.as_str())
            .ok()
            .and_then(|mid| self.by_id.get(&mid).copied())
    }

    /// Observer `m` now holds `j` alive.
    pub(crate) fn learn_up(&mut self, m: u32, j: u32) {
        if m == j {
            return;
        }
        let mm = &mut self.machines[m as usize];
        if mm.live.insert(j) {
            mm.live_hash ^= mix(j as u64);
            mm.grace.remove(&j);
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
                if self.machines[b].running && (self.net.blocked(a, b) || self.net.blocked(b, a)) {
                    self.metrics.partition_verdicts += 1;
                } else if self.machines[b].running {
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
        let now = self.now;
        let grace = self.sc.config.takeover_grace.0;
        let mm = &mut self.machines[m as usize];
        if !mm.live.remove(j) {
            return false;
        }
        mm.live_hash ^= mix(j as u64);
        mm.grace.insert(j, now);
        let epoch = mm.epoch;
        self.push(now + grace, Ev::GraceEnd { m, epoch });
        self.request_pass(m);
        true
    }

    /// Whether machine `m` is up for the model (running, not paused).
    pub(crate) fn is_responsive(&self, m: u32) -> bool {
        self.machines[m as usize].agent_runs()
    }

    /// Whether observer `m` holds `j` live (model mode).
    pub(crate) fn view_has(&self, m: u32, j: u32) -> bool {
        self.machines[m as usize].live.contains(j)
    }

    /// How many machines observer `m` holds live, itself excluded.
    pub(crate) fn view_len(&self, m: u32) -> usize {
        self.machines[m as usize].live.len()
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
        let n = self.machines.len() as u32;
        let all = (0..n).fold(0u64, |h, j| h ^ mix(j as u64));
        for i in 0..n {
            let mm = &mut self.machines[i as usize];
            mm.live = Bits::full(n as usize);
            mm.live.remove(i);
            mm.live_hash = all;
        }
    }

    // ------------------------------------------------------------------------------------------
    // etcd access and the lease keeper.

    pub(crate) fn etcd_reachable(&self, m: u32) -> bool {
        let e = self.net.etcd();
        self.etcd_up && !self.net.blocked(m as usize, e) && !self.net.blocked(e, m as usize)
    }

    fn etcd_request_ok(&mut self, m: u32) -> bool {
        if !self.etcd_reachable(m) {
            self.etcd.ops.unavailable += 1;
            return false;
        }
        // fleetd's etcd_request_timeout is 1s.
        if self.sc.config.etcd_rtt.0 + self.etcd_extra > 1_000_000 {
            self.etcd.ops.unavailable += 1;
            return false;
        }
        let e = self.net.etcd();
        let loss = 1.0
            - (1.0 - self.net.loss(m as usize, e, 0.0)) * (1.0 - self.net.loss(e, m as usize, 0.0));
        if loss > 0.0 && self.rng.random_bool(loss.min(1.0)) {
            self.etcd.ops.unavailable += 1;
            return false;
        }
        true
    }

    fn keepalive(&mut self, m: u32, epoch: u32) {
        let mm = &self.machines[m as usize];
        if mm.epoch != epoch || !mm.running {
            return;
        }
        let ttl = self.sc.config.agent_ttl.0;
        let period = (ttl / 3).clamp(200_000, 2_000_000);
        if mm.frozen {
            return; // thaw re-arms it
        }
        let next = self.local_after(m, period);
        self.push(next, Ev::Keepalive { m, epoch });
        if !self.etcd_request_ok(m) {
            return;
        }
        let now = self.now;
        let local = self.machines[m as usize].clock.local(now);
        let lease = self.machines[m as usize].lease;
        let expired = self.machines[m as usize]
            .confirmed_at
            .is_none_or(|c| local >= c + ttl);
        let rtt = self.sc.config.etcd_rtt.0 + self.etcd_extra;
        if lease != 0 && self.etcd.keepalive(lease, now + rtt / 2) {
            // The keep-alive answer must come within max(period, 500ms).
            if rtt <= period.max(500_000) {
                self.machines[m as usize].confirmed_at = Some(local);
                self.request_pass(m);
            }
            return;
        }
        if lease == 0 || expired || !self.etcd.keepalive(lease, now) {
            let id = self.etcd.grant(m, ttl, now + rtt / 2);
            let mm = &mut self.machines[m as usize];
            mm.lease_gen += u64::from(mm.lease != 0);
            mm.lease = id;
            mm.confirmed_at = Some(local);
            self.request_pass(m);
        }
    }

    fn notify_watchers(&mut self) {
        if !self.watch_pending {
            self.watch_pending = true;
            self.push(self.now + self.sc.config.watch_delay.0, Ev::WatchFlush);
        }
    }

    // ------------------------------------------------------------------------------------------
    // The agent.

    fn request_pass(&mut self, m: u32) {
        let c = &self.sc.config;
        let q = c.pass_quantum.0;
        let at = (self.now + c.coalesce.0).div_ceil(q) * q;
        let mm = &mut self.machines[m as usize];
        if !mm.agent_runs() {
            return;
        }
        if mm.pass_at.is_some_and(|p| p <= at) {
            return;
        }
        mm.pass_at = Some(at);
        let epoch = mm.epoch;
        self.push(at, Ev::Pass { m, epoch });
    }

    /// The plan for this effective live set at the current etcd revision (shared between agents).
    fn plan_for(&mut self, live: &[u32], hash: u64) -> Rc<PlanIndex> {
        let key = (hash, self.mirror_rev);
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
                if let Some(c) = self.mirror[u] {
                    if live_set.contains(&c.machine) {
                        info.claim = Some(self.machines[c.machine as usize].id.clone());
                    }
                }
                info
            })
            .collect();
        let plan = schedule(&machines, &infos);
        let mut on: HashMap<u32, Vec<(u32, bool)>> = HashMap::new();
        let mut placeable = vec![false; self.units.len()];
        for (name, d) in &plan.decisions {
            let Some(&u) = self.unit_index.get(name) else {
                continue;
            };
            match d {
                Decision::On(mid) => {
                    placeable[u as usize] = true;
                    if let Some(&j) = self.by_id.get(mid) {
                        on.entry(j).or_default().push((u, false));
                    }
                }
                Decision::Global(ms) => {
                    placeable[u as usize] = true;
                    for mid in ms {
                        if let Some(&j) = self.by_id.get(mid) {
                            on.entry(j).or_default().push((u, true));
                        }
                    }
                }
                Decision::Unplaceable(_) => {}
            }
        }
        let p = Rc::new(PlanIndex { on, placeable });
        if self.plans.len() >= 64 {
            self.plans.clear();
        }
        self.plans.insert(key, p.clone());
        p
    }

    fn pass(&mut self, m: u32) {
        if !self.machines[m as usize].agent_runs() {
            return;
        }
        let now = self.now;
        let ttl = self.sc.config.agent_ttl.0;
        let local = self.machines[m as usize].clock.local(now);
        let mm = &self.machines[m as usize];
        // As src/agent: a machine on the minority side of its gossip view whose lease etcd has not
        // confirmed for min(TTL, 2 s) fences; on the majority side an unconfirmed lease stops nothing.
        let limit = ttl.min(2_000_000);
        let majority = self.in_majority(m);
        if mm.lease != 0 && !majority && mm.confirmed_at.is_none_or(|c| local >= c + limit) {
            if self.sc.config.fencing {
                self.fence(m);
            }
            return;
        }
        self.machines[m as usize].fenced = false;
        if !self.etcd_reachable(m) || !self.submitted {
            return;
        }
        let lease = self.machines[m as usize].lease;
        if lease == 0 {
            return;
        }
        let mut requests = 0u64;
        if self.machines[m as usize].announced_gen != self.machines[m as usize].lease_gen + 1 {
            self.etcd.ops.announces += 1;
            requests += 1;
            let mm = &mut self.machines[m as usize];
            mm.announced_gen = mm.lease_gen + 1;
        }
        // Effective live set: gossip's live machines, itself, and those in takeover grace.
        let mm = &self.machines[m as usize];
        let mut hash = mm.live_hash;
        for &j in mm.grace.keys() {
            hash ^= mix(j as u64);
        }
        let plan = match self.plans.get(&(hash, self.mirror_rev)) {
            Some(p) => p.clone(),
            None => {
                let mm = &self.machines[m as usize];
                let mut live: Vec<u32> = mm.live.iter().collect();
                live.push(m);
                live.extend(mm.grace.keys().copied());
                live.sort_unstable();
                self.plan_for(&live, hash)
            }
        };
        let empty = Vec::new();
        let mine = plan.on.get(&m).unwrap_or(&empty);
        let mut target_units: BTreeSet<u32> = BTreeSet::new();
        let mut globals = BTreeSet::new();
        let mut changed = false;
        for &(u, global) in mine {
            if global {
                target_units.insert(u);
                globals.insert(u);
                continue;
            }
            // Read-your-writes: a claim this agent just won counts even before the watch
            // delivers it to the mirror.
            if self
                .etcd
                .claim(u)
                .is_some_and(|c| c.machine == m && c.lease == lease)
            {
                target_units.insert(u);
                continue;
            }
            requests += 1;
            let won = self.etcd_request_ok(m)
                && match self.mirror[u as usize] {
                    // Held by a machine that is not live here (placement ignored it), or our own
                    // claim under an old lease: supersede at the revision we saw.
                    // A live holder releases a moved unit itself; a minority never takes over.
                    Some(c) if c.machine != m && (self.sees_live(m, c.machine) || !majority) => {
                        false
                    }
                    Some(c) => {
                        let ok = self.etcd.supersede(u, c.mod_revision, m, lease);
                        if ok && c.machine != m {
                            self.metrics.takeovers += 1;
                        }
                        ok
                    }
                    None => self.etcd.claim_if_absent(u, m, lease),
                };
            if won {
                target_units.insert(u);
                changed = true;
            }
        }
        // Claims won since the mirror's revision: the agent's own plan would keep them (stable
        // placement keeps a live machine's claims).
        if self.mirror_rev != self.etcd.revision() {
            let own: Vec<u32> = self
                .etcd
                .claims_of(m)
                .filter(|&u| self.etcd.claim(u).is_some_and(|c| c.lease == lease))
                .collect();
            target_units.extend(own);
        }
        self.machines[m as usize].globals_here = globals;
        let delay = requests * (self.sc.config.etcd_rtt.0 + self.etcd_extra);
        self.apply(m, &target_units, delay, false);
        // Release claims of units we no longer run.
        let stale: Vec<u32> = self
            .etcd
            .claims_of(m)
            .filter(|u| {
                !target_units.contains(u) && !self.machines[m as usize].units.contains_key(u)
            })
            .collect();
        for u in stale {
            if let Some(c) = self.etcd.claim(u) {
                if self.etcd_request_ok(m) && self.etcd.release(u, c.mod_revision) {
                    changed = true;
                }
            }
        }
        if changed {
            self.notify_watchers();
        }
    }

    /// Reconciles machine `m`'s systemd with `target` (all launched); with `stops_only`, only
    /// stops and unloads (fencing).
    fn apply(&mut self, m: u32, target: &BTreeSet<u32>, delay: u64, stops_only: bool) {
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
        let c = self.sc.config.clone();
        let epoch = self.machines[m as usize].epoch;
        for task in tasks {
            if stops_only && !matches!(task, Task::Stop(..) | Task::Unload(..)) {
                continue;
            }
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
                    self.set_active(m, u, ActiveState::Deactivating);
                    self.push(
                        self.now + delay + c.stop_delay.0,
                        Ev::UnitDone {
                            m,
                            epoch,
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
                        Some(_) => self.set_unit(m, u, None),
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
                Task::ReloadDaemon(_) => {}
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
                        self.now + delay + c.start_delay.0,
                        Ev::UnitDone {
                            m,
                            epoch,
                            unit: u,
                            job,
                            start: true,
                        },
                    );
                }
            }
        }
    }

    /// Whether `m` sees a strict majority of the cluster's machines (itself included) as live.
    fn in_majority(&self, m: u32) -> bool {
        let mm = &self.machines[m as usize];
        let live = mm.live.len() + usize::from(!mm.live.contains(m));
        live * 2 > self.machines.len().max(1)
    }

    /// Whether `m`'s view counts `j` as live (gossip live, or in the takeover grace).
    fn sees_live(&self, m: u32, j: u32) -> bool {
        let mm = &self.machines[m as usize];
        j == m || mm.live.contains(j) || mm.grace.contains_key(&j)
    }

    fn fence(&mut self, m: u32) {
        if !self.machines[m as usize].fenced {
            self.metrics.fencings += 1;
        }
        self.machines[m as usize].fenced = true;
        let globals = self.machines[m as usize].globals_here.clone();
        self.apply(m, &globals, 0, true);
    }

    fn unit_done(&mut self, m: u32, epoch: u32, unit: u32, job: u32, start: bool) {
        let mm = &mut self.machines[m as usize];
        if mm.epoch != epoch || !mm.running {
            return;
        }
        if mm.frozen && !mm.agent_only {
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
            self.set_unit(m, unit, None);
        } else {
            self.set_active(m, unit, ActiveState::Inactive);
        }
        self.request_pass(m);
    }

    fn set_active(&mut self, m: u32, u: u32, state: ActiveState) {
        let Some(s) = self.machines[m as usize].units.get_mut(&u) else {
            return;
        };
        let was = counts(&s.active);
        let is = counts(&state);
        s.active = state;
        if self.machines[m as usize].units_run() && was != is {
            self.count(u, if is { 1 } else { -1 });
        }
        self.publish_unit(m, u);
    }

    /// Removes unit `u` from machine `m` (`None`).
    fn set_unit(&mut self, m: u32, u: u32, _state: Option<()>) {
        let Some(s) = self.machines[m as usize].units.remove(&u) else {
            return;
        };
        if self.machines[m as usize].units_run() && counts(&s.active) {
            self.count(u, -1);
        }
        if self.machines[m as usize].running {
            self.publish_unit(m, u);
        }
    }

    /// Tells gossip the unit's state (real dissemination traffic).
    fn publish_unit(&mut self, m: u32, u: u32) {
        if let Some(model) = self.model.as_mut() {
            model.unit_update();
            return;
        }
        let at = self.instant(m);
        let mm = &mut self.machines[m as usize];
        let Some(node) = mm.node.as_mut() else { return };
        let state = mm.units.get(&u).map(|s| GossipUnitState {
            load_state: "loaded".into(),
            active_state: s.active.as_str().to_string(),
            sub_state: if s.active == ActiveState::Active {
                "running".into()
            } else {
                "dead".into()
            },
            unit_hash: *s.hash.as_bytes(),
        });
        node.set_local_unit_state(at, self.units[u as usize].name.as_str(), state);
        if mm.agent_runs() {
            self.flush(m);
        }
    }

    fn count(&mut self, u: u32, delta: i32) {
        if self.units[u as usize].global {
            return;
        }
        let before = self.active[u as usize];
        let after = (before as i32 + delta).max(0) as u16;
        self.active[u as usize] = after;
        let now = self.now;
        if before == 0 && after > 0 {
            self.metrics.unit_up(u, now);
        } else if before > 0 && after == 0 && self.submitted {
            self.metrics.unit_down(u, now, true);
        }
        if before < 2 && after >= 2 {
            self.metrics.double_start(u, now);
        } else if before >= 2 && after < 2 {
            self.metrics.double_end(u, now);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Faults.

    /// The machines a selector of fault `k` picks; random selectors draw from a per-fault seed, so
    /// undoing a fault picks the same machines.
    fn select(&self, k: usize, s: &Option<String>) -> (Vec<usize>, bool) {
        let sel = Selector::parse(s.as_deref().unwrap_or("all")).unwrap_or(Selector::All);
        let etcd = contains_etcd(&sel);
        let mut rng = StdRng::seed_from_u64(self.seed ^ mix(k as u64 + 1));
        (resolve(&sel, &self.machine_infos, &mut rng), etcd)
    }

    fn apply_fault(&mut self, k: usize) {
        let f: Fault = self.sc.faults[k].clone();
        let (ms, _) = self.select(k, &f.machines);
        match f.kind {
            FaultKind::Crash => ms.iter().for_each(|&i| self.crash(i as u32)),
            FaultKind::Restart => ms.iter().for_each(|&i| {
                if !self.machines[i].running {
                    self.boot(i as u32)
                }
            }),
            FaultKind::Freeze => ms.iter().for_each(|&i| self.freeze(i as u32, f.agent_only)),
            FaultKind::Thaw => ms.iter().for_each(|&i| self.thaw(i as u32)),
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
                if ea {
                    a.push(self.net.etcd());
                }
                if eb {
                    b.push(self.net.etcd());
                }
                if f.to.is_none() && f.kind == FaultKind::Partition {
                    // `from` against everybody else, etcd included.
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
            FaultKind::Heal => self.net.clear(),
            FaultKind::EtcdOutage => self.etcd_up = false,
            FaultKind::EtcdSlow => self.etcd_extra += f.extra.map(|d| d.0).unwrap_or(0),
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
                if !self.machines[i].running {
                    self.boot(i as u32)
                }
            }),
            FaultKind::Freeze => ms.iter().for_each(|&i| self.thaw(i as u32)),
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
                self.notify_watchers();
            }
            FaultKind::EtcdSlow => {
                self.etcd_extra = self
                    .etcd_extra
                    .saturating_sub(f.extra.map(|d| d.0).unwrap_or(0))
            }
            FaultKind::Restart | FaultKind::Thaw | FaultKind::Heal => {}
        }
        self.metrics
            .fault_marks
            .push((self.now, format!("end of {:?}", f.kind)));
    }

    // ------------------------------------------------------------------------------------------
    // Invariants and sampling.

    /// Ground truth: machines whose agent runs.
    fn truth(&self) -> (Vec<u32>, u64) {
        let mut hash = 0;
        let mut live = Vec::new();
        for (i, m) in self.machines.iter().enumerate() {
            if m.agent_runs() {
                hash ^= mix(i as u64);
                live.push(i as u32);
            }
        }
        (live, hash ^ 0x5151)
    }

    fn check(&mut self) {
        let now = self.now;
        let bound = self.sc.double_run_bound().0;
        for (u, since) in self.metrics.doubles_over(now, bound) {
            let machines: Vec<String> = self
                .machines
                .iter()
                .filter(|m| m.units_run() && m.units.get(&u).is_some_and(|s| counts(&s.active)))
                .map(|m| m.id.to_string())
                .collect();
            self.metrics.violation(Violation {
                kind: ViolationKind::DoubleRun,
                at: now,
                subject: self.units[u as usize].name.to_string(),
                detail: format!(
                    "active on {} since {:.3}s (bound {})",
                    machines.join(" and "),
                    since as f64 / 1e6,
                    crate::scenario::Dur(bound)
                ),
            });
        }
        let pbound = self.sc.invariants.placement.0;
        let late = self.metrics.down_over(now, pbound);
        if !late.is_empty() {
            let (live, hash) = self.truth();
            if live.is_empty() {
                return;
            }
            let plan = self.plan_for(&live, hash);
            for (u, since) in late {
                if plan.placeable[u as usize] {
                    self.metrics.mark_down_reported(u);
                    self.metrics.violation(Violation {
                        kind: ViolationKind::NotPlaced,
                        at: now,
                        subject: self.units[u as usize].name.to_string(),
                        detail: format!(
                            "placeable but active nowhere since {:.3}s (bound {})",
                            since as f64 / 1e6,
                            crate::scenario::Dur(pbound)
                        ),
                    });
                }
            }
        }
    }

    fn check_convergence(&mut self) {
        let (live, _) = self.truth();
        let truth: BTreeSet<u32> = live.iter().copied().collect();
        let mut wrong = Vec::new();
        for &i in &live {
            let mm = &self.machines[i as usize];
            let mut seen: BTreeSet<u32> = mm.live.iter().collect();
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
            self.metrics.violation(Violation {
                kind: ViolationKind::NoConvergence,
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
        let (live, _) = self.truth();
        let wrong_views = live
            .iter()
            .filter(|&&i| self.machines[i as usize].live.len() + 1 != live.len())
            .count();
        self.metrics
            .sample(self.now, live.len(), wrong_views, self.submitted);
    }
}

fn counts(s: &ActiveState) -> bool {
    matches!(
        s,
        ActiveState::Active | ActiveState::Deactivating | ActiveState::Reloading
    )
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
    if let Some(d) = f.for_ {
        parts.push(format!("for {d}"));
    }
    parts.join(" ")
}

fn contains_etcd(s: &Selector) -> bool {
    match s {
        Selector::Etcd => true,
        Selector::Union(v) => v.iter().any(contains_etcd),
        _ => false,
    }
}

/// Machine indices a selector picks (etcd excluded).
pub(crate) fn resolve(s: &Selector, machines: &[MachineInfo], rng: &mut StdRng) -> Vec<usize> {
    let n = machines.len();
    let mut out: BTreeSet<usize> = BTreeSet::new();
    match s {
        Selector::All => out.extend(0..n),
        Selector::Etcd => {}
        Selector::Range(a, b) => out.extend((*a..=*b).filter(|i| *i < n)),
        Selector::Meta(k, v) => out.extend(
            machines
                .iter()
                .enumerate()
                .filter(|(_, m)| m.metadata.get(k) == Some(v))
                .map(|(i, _)| i),
        ),
        Selector::Random(k) => {
            let mut all: Vec<usize> = (0..n).collect();
            for i in 0..(*k).min(n) {
                let j = rng.random_range(i..n);
                all.swap(i, j);
                out.insert(all[i]);
            }
        }
        Selector::Union(v) => {
            for s in v {
                out.extend(resolve(s, machines, rng));
            }
        }
    }
    out.into_iter().collect()
}

fn addr_of(i: u32) -> SocketAddr {
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

fn load_units(sc: &Scenario) -> Result<(Vec<UnitDef>, Vec<UnitInfo>), SimError> {
    let dir = sc.base_dir.join(&sc.units.dir);
    let rd = std::fs::read_dir(&dir).map_err(|source| SimError::UnitsDir {
        path: dir.clone(),
        source,
    })?;
    let mut files: BTreeMap<String, UnitFile> = BTreeMap::new();
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
        files.insert(name, file);
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
            name: dir.display().to_string(),
            message: "no unit to submit".into(),
        });
    }
    Ok((defs, infos))
}

/// A fixed-size set of machine indices.
#[derive(Clone, Debug)]
struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    fn new(n: usize) -> Bits {
        Bits {
            words: vec![0; n.div_ceil(64)],
            len: 0,
        }
    }
    fn full(n: usize) -> Bits {
        let mut b = Bits::new(n);
        for i in 0..n as u32 {
            b.insert(i);
        }
        b
    }
    fn contains(&self, i: u32) -> bool {
        self.words[i as usize / 64] & (1 << (i % 64)) != 0
    }
    fn insert(&mut self, i: u32) -> bool {
        let w = &mut self.words[i as usize / 64];
        let bit = 1u64 << (i % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.len += 1;
        true
    }
    fn remove(&mut self, i: u32) -> bool {
        let w = &mut self.words[i as usize / 64];
        let bit = 1u64 << (i % 64);
        if *w & bit == 0 {
            return false;
        }
        *w &= !bit;
        self.len -= 1;
        true
    }
    fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.len = 0;
    }
    fn len(&self) -> usize {
        self.len
    }
    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
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
