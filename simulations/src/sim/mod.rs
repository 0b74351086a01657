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

use crate::agent::{Agent, Ask, Reply, Req, Resp};
use crate::check::{Checker, MachineTruth};
use crate::etcd::Etcd;
use crate::model::SwimModel;
use crate::net::{Effect, Net};
use crate::outcome::Observer;
use crate::report::Metrics;
use crate::scenario::{Fault, FaultKind, GossipMode, Scenario, Selector};

mod build;
mod checks;
mod faults;
mod gossip;
mod load;
mod machines;
mod systemd;
mod watch;

use faults::fault_rng;
use load::load_units;
pub(crate) use watch::{AddrHasher, PlanIndex};

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
    /// The lease fleetd replaced (`fleet_decide::replace`) and still renews until
    /// `fleet_decide::may_retire`, with its confirmations; saved like `lease`.
    pub(crate) retiring: Option<OwnLease>,
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
    ViewRefresh {
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
        reply: Reply,
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
    /// `by_id` by the address of each machine's ID string in `machine_infos` (the plans' IDs are
    /// clones of those, sharing the string): a plan's machines are found without hashing their IDs;
    /// an ID with another string is looked up in `by_id`.
    by_ptr: HashMap<usize, u32, std::hash::BuildHasherDefault<AddrHasher>>,
    unit_index: HashMap<UnitName, u32>,
    pub(crate) etcd: Etcd,
    pub(crate) etcd_up: bool,
    pub(crate) etcd_extra: u64,
    pub(crate) net: Net,
    plans: HashMap<(u64, i64), Rc<PlanIndex>>,
    /// The incremental planner behind `plans` (fleetd's agent keeps one too).
    planner: Option<Planner>,
    /// What `planner` was last moved to: the live machines (sorted) and `inputs_version` then.
    planner_at: Option<(Vec<u32>, u64)>,
    /// The claim `planner` holds for each unit (a live machine's, as `plan_for` counts them).
    planner_claims: Vec<Option<u32>>,
    /// Counts the changes of the machines' metadata (the planner's other inputs).
    inputs_version: u64,
    /// The units' indices in name order (the order of a plan's decisions).
    units_by_name: Vec<u32>,
    pub(crate) plan_computations: u64,
    watch_pending: bool,
    pub(crate) submitted: bool,
    pub(crate) metrics: Metrics,
    pub(crate) checker: Checker,
    /// What each machine's systemd ran, for the operator's answers (moves, downtime, load).
    observer: Observer,
    pub(crate) timing: Timing,
    gossip_cfg: GossipConfig,
    /// What the real gossip cores hold once between them (each machine's metadata): the same
    /// values, one copy ([`fleet_gossip::Shared`]).
    gossip_shared: fleet_gossip::Shared,
    pub(crate) model: Option<SwimModel>,
    /// When each machine failed (crash, pause, fleetd death), for detection times.
    failed_at: Vec<Option<u64>>,
    /// When each machine's previous life (its fleetd's gossip identity) ended by a failure, kept
    /// once it is back: a verdict about that life that arrives after the new one started is a late
    /// detection, not a false verdict.
    life_ended_at: Vec<Option<u64>>,
    /// Per machine of the cluster: faults under way that concern it and are neither about etcd nor
    /// about its power, pauses, fleetd or network (clock skew, metadata, a second agent with its ID),
    /// for the no-needless-fence invariant.
    other_faults: Vec<u32>,
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
        self.report()
    }

    /// [`Sim::finish`] without freeing the run's memory, for a process that exits next: at 1,000
    /// machines, freeing every node's membership and state took 6% of a 24-second run's CPU.
    pub fn finish_and_exit_soon(self) -> crate::report::Report {
        std::mem::ManuallyDrop::new(self).report()
    }

    fn report(&mut self) -> crate::report::Report {
        self.checker.settle(self.now);
        let gossip = self.gossip_totals();
        let violations = std::mem::take(&mut self.checker.violations);
        self.metrics.moves = self.checker.total_moves;
        let outcome = self.outcome();
        let placeable_nowhere = self.checker.longest_placeable_nowhere;
        let mut report = crate::report::Report::build(
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
        );
        report.placeable_nowhere_s = placeable_nowhere as f64 / 1e6;
        report
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
            Ev::ViewRefresh { m, gen } => {
                if self.machines[m as usize].gen != gen {
                    return;
                }
                if self.refresh_view(m) {
                    self.request_pass(m);
                }
                let at = self.local_after(m, self.sc.config.view_refresh.0);
                self.push(at, Ev::ViewRefresh { m, gen });
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
                reply,
                sent,
                sent_g,
            } => self.witness_granted(m, gen, from, ask, reply, sent, sent_g),
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
